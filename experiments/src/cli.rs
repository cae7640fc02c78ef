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
    /// Train a policy: SFT warm start, then tree (or chain) RL, with held-out evaluation before
    /// and after RL. With no flags: multihop (2 hops), tiny model, tree-GRPO.
    Train(TrainArgs),
    /// Sweep token budgets x samplers x seeds (not built yet).
    Sweep(Placeholder),
    /// Sample rollouts with a checkpoint and export them (not built yet).
    Rollout(Placeholder),
    /// Success of a checkpoint on held-out tasks, with a 95% interval.
    Eval(EvalArgs),
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
    /// Time per RL update, tree-packed vs flattened, on the same trees; and the trees'
    /// total/unique token ratio.
    Train(TrainBenchArgs),
}

/// `arbor bench train`.
#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Per-task token budget of the sampled trees.
    #[arg(long, default_value_t = 512)]
    pub budget: u32,
    /// Task groups in the batch.
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// Timed updates per mode (the mean is reported, after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// A run or checkpoint directory whose policy samples the trees [default: seeded random
    /// weights of the tiny preset].
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
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

/// `arbor train`. Every flag overrides the key of the TOML config named in its help; defaults are
/// those of the config (shown here).
#[derive(Debug, Args, Default)]
pub struct TrainArgs {
    /// TOML config file (every key optional).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// `env.name`: multihop, countdown, maze or qa-file [default: multihop].
    #[arg(long)]
    pub env: Option<String>,
    /// `env.knobs`: difficulty knob `name=value`, repeatable [default for multihop: hops=2].
    #[arg(long = "knob", short = 'k', value_name = "NAME=VALUE")]
    pub knobs: Vec<String>,
    /// `env.tasks`: task file for qa-file (JSONL or Parquet with prompt/answer columns).
    #[arg(long)]
    pub tasks: Option<std::path::PathBuf>,
    /// `model.preset`: tiny or small [default: tiny].
    #[arg(long)]
    pub preset: Option<String>,
    /// `sampler.kind`: tree or chain [default: tree].
    #[arg(long)]
    pub sampler: Option<String>,
    /// `sampler.branch`: random, entropy, segment or adaptive [default: random].
    #[arg(long)]
    pub branch: Option<String>,
    /// `sampler.granularity`: step, segment or token [default: step].
    #[arg(long)]
    pub granularity: Option<String>,
    /// `rl.estimator`: grpo, tree-grpo, treerl, treepo or rloo [default: tree-grpo].
    #[arg(long)]
    pub advantage: Option<String>,
    /// `sampler.budget`: generated tokens per task group [default: 512].
    #[arg(long)]
    pub budget: Option<u32>,
    /// `sft.steps` [default: 300].
    #[arg(long)]
    pub sft_steps: Option<usize>,
    /// `rl.steps` [default: 40].
    #[arg(long)]
    pub steps: Option<usize>,
    /// `seed` [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// `out`: parent directory of run directories [default: runs].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// `name`: run directory name [default: <env>-<sampler>, made unique].
    #[arg(long)]
    pub name: Option<String>,
    /// `eval.episodes`: held-out episodes before and after RL [default: 256].
    #[arg(long)]
    pub episodes: Option<usize>,
    /// `rl.export_rollouts`: every, last or none [default: every].
    #[arg(long)]
    pub export_rollouts: Option<String>,
    /// Continue the run in `out/name` from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress bars or per-step lines.
    #[arg(long)]
    pub quiet: bool,
}

/// `arbor eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory (`runs/<name>`: its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Environment [default: the run's].
    #[arg(long)]
    pub env: Option<String>,
    /// Difficulty knob `name=value`, repeatable [default: the run's].
    #[arg(long = "knob", short = 'k', value_name = "NAME=VALUE")]
    pub knobs: Vec<String>,
    /// Task file for qa-file.
    #[arg(long)]
    pub tasks: Option<std::path::PathBuf>,
    /// Held-out tasks, one episode each.
    #[arg(long, default_value_t = 256)]
    pub episodes: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Seed of the episodes' sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the transcripts of the first N episodes.
    #[arg(long, default_value_t = 0)]
    pub show: usize,
}
