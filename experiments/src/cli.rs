//! The `arbor` command line.

use clap::{Args, Parser, Subcommand};

/// arbor: reinforcement learning of text agent policies with shared-prefix tree rollouts.
#[derive(Debug, Parser)]
#[command(name = "arbor", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List environments and their knobs, or show one expert episode.
    Envs(EnvsArgs),
    /// Train a policy: SFT warm start, then tree/chain RL (not built yet).
    Train(Placeholder),
    /// Sweep token budgets x samplers x seeds (not built yet).
    Sweep(Placeholder),
    /// Sample rollouts with a checkpoint and export them (not built yet).
    Rollout(Placeholder),
    /// Evaluate a checkpoint on held-out tasks (not built yet).
    Eval(Placeholder),
    /// Benchmarks that print ratios measured in one run: engine, sampler, train.
    Bench(BenchArgs),
    /// Summarise a run directory (not built yet).
    Inspect(Placeholder),
}

/// Arguments of a command that is not built yet (accepts anything, does nothing).
#[derive(Debug, Args)]
pub struct Placeholder {
    /// Ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

/// `arbor envs [show ENV]`.
#[derive(Debug, Args)]
pub struct EnvsArgs {
    /// `show ENV` prints one expert episode of ENV; without it, lists the environments.
    #[command(subcommand)]
    pub action: Option<EnvsAction>,
}

/// `arbor envs` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvsAction {
    /// Print one expert episode as the policy sees it (prompt, actions, observations, reward).
    Show(ShowArgs),
}

/// `arbor envs show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Environment name (multihop, countdown, maze; qa-file needs --tasks).
    pub env: String,
    /// Task id (the seed the task is generated from).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Difficulty knob, `name=value`; repeat for several (see `arbor envs`).
    #[arg(long = "knob", short = 'k', value_name = "NAME=VALUE")]
    pub knobs: Vec<String>,
    /// Task file for qa-file (JSONL or Parquet with prompt/answer columns).
    #[arg(long)]
    pub tasks: Option<std::path::PathBuf>,
    /// Let the expert make one recoverable mistake when the environment offers one.
    #[arg(long)]
    pub mistake: bool,
}

/// `arbor bench engine|sampler|train`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub which: BenchWhich,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchWhich {
    /// Engine decode tokens/s and GFLOP/s by batch size, prefill tokens/s, and the GEMM peak.
    Engine(EngineBenchArgs),
    /// Chain vs tree sampling on multihop at equal budgets: trajectories, distinct per 1k tokens,
    /// cache share, wall time.
    Sampler(SamplerBenchArgs),
}

/// `arbor bench engine`.
#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A seconds-long smoke run (tiny preset, small batches).
    #[arg(long)]
    pub quick: bool,
    /// Model presets to measure.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    pub presets: Vec<String>,
}

/// `arbor bench sampler`.
#[derive(Debug, Args)]
pub struct SamplerBenchArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Per-task token budgets.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub budgets: Vec<u32>,
    /// Tasks (held-out multihop tasks) per budget and sampler.
    #[arg(long, default_value_t = 8)]
    pub tasks: usize,
    /// multihop hops.
    #[arg(long, default_value_t = 3)]
    pub hops: u32,
    /// Model preset of the seeded random policy (used without --checkpoint).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Seed of the random weights and of sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}
