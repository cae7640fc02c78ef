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
    /// Benchmarks: engine, sampler, train (not built yet).
    Bench(Placeholder),
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
