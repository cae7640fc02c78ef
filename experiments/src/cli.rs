//! The `arbor` command line.

use clap::{Args, Parser, Subcommand};
use rollout::advantage::Estimator;
use rollout::sampler::{BranchPolicy, Granularity, SamplerKind};

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
    /// and after RL.
    #[command(after_help = format!("With no flags: {}.", crate::config::default_run_line()))]
    Train(TrainArgs),
    /// Train one run per point of a grid (budgets x samplers x branching policies x
    /// estimators x models x seeds) from a shared SFT checkpoint per model; write
    /// summary.parquet/.csv, a table and plots of success and distinct trajectories per 1k
    /// tokens against the budget.
    Sweep(SweepArgs),
    /// Sample rollouts with a checkpoint (no training) and export trajectories.parquet,
    /// nodes.parquet and metrics.parquet.
    Rollout(RolloutArgs),
    /// Success of a checkpoint on held-out tasks, with a 95% interval.
    Eval(EvalArgs),
    /// Benchmarks that print ratios measured in one run: engine, sampler, train.
    Bench(BenchArgs),
    /// Summarise a run directory: config, summary, last metrics, file checks and one rollout
    /// tree drawn as text.
    Inspect(InspectArgs),
    /// Write a run's checkpoint as a Hugging Face model directory (runs started from a GGUF
    /// file or a model directory).
    Export(ExportArgs),
    /// Write one self-contained HTML page of a run (learning curves, budget use, a rollout-tree
    /// viewer) or of a sweep (its table and plots).
    Report(ReportArgs),
}

/// `arbor export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory inside a run.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// The model directory to write (new or empty).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// `arbor report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A run directory, an `arbor rollout` output or a sweep directory.
    pub dir: std::path::PathBuf,
    /// The HTML file to write [default: DIR/report.html].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// At most this many tree nodes in the page: trees are taken from the last exported step
    /// backwards until the next step would pass it.
    #[arg(long, default_value_t = 200_000)]
    pub max_nodes: usize,
}

/// The environment flags shared by train, sweep, eval and rollout (`[env]` of the config).
#[derive(Debug, Args, Default, Clone)]
pub struct EnvArgs {
    /// `env.name`: multihop, countdown, maze or qa-file (`arbor envs` lists them) [default:
    /// the config's, or the run's].
    #[arg(long)]
    pub env: Option<String>,
    /// `env.knobs`: difficulty knob `name=value`, repeatable; laid over the default run's knobs
    /// for its environment, over the environment's own (`arbor envs`) for any other.
    #[arg(long = "knob", short = 'k', value_name = "NAME=VALUE")]
    pub knobs: Vec<String>,
    /// `env.tasks`: task file for qa-file (JSONL or Parquet with prompt/answer columns).
    #[arg(long)]
    pub tasks: Option<std::path::PathBuf>,
}

/// The sampling flags of `arbor train` and `arbor rollout`; each replaces its config key
/// (defaults: `arbor train` the config's, `arbor rollout` the run's).
#[derive(Debug, Args, Default, Clone)]
pub struct SamplingArgs {
    /// `sampler.kind`.
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// `sampler.branch`: the tree sampler's branching policy.
    #[arg(long, value_enum)]
    pub branch: Option<BranchPolicy>,
    /// `sampler.granularity`: where the tree sampler may fork.
    #[arg(long, value_enum)]
    pub granularity: Option<Granularity>,
    /// `rl.estimator`: the advantage estimator.
    #[arg(long, value_enum)]
    pub advantage: Option<Estimator>,
    /// `sampler.budget`: generated tokens per task group.
    #[arg(long)]
    pub budget: Option<u32>,
}

impl SamplingArgs {
    /// Lays the given flags over `cfg`.
    pub fn apply(&self, cfg: &mut crate::config::TrainConfig) {
        if let Some(s) = self.sampler {
            cfg.sampler.kind = s;
        }
        if let Some(b) = self.branch {
            cfg.sampler.branch = b;
        }
        if let Some(g) = self.granularity {
            cfg.sampler.granularity = g;
        }
        if let Some(a) = self.advantage {
            cfg.rl.estimator = a;
        }
        if let Some(b) = self.budget {
            cfg.sampler.budget = b;
        }
    }
}

impl EnvArgs {
    /// Lays these flags over `env`: a new environment name starts from that environment's own
    /// knobs, then the given knobs and task file replace their keys.
    pub fn apply(&self, env: &mut crate::config::EnvSection) -> anyhow::Result<()> {
        if let Some(name) = &self.env
            && *name != env.name
        {
            env.name = name.clone();
            env.knobs.clear();
        }
        for (k, v) in crate::config::parse_knobs(&self.knobs)? {
            env.knobs.insert(k.to_string(), v.to_string());
        }
        if let Some(t) = &self.tasks {
            env.tasks = Some(t.clone());
        }
        Ok(())
    }
}

/// Which rows `rl.export_rollouts` writes to the Parquet exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportMode {
    /// Every `rl.export_every` steps and the last.
    Every,
    /// The last step only.
    Last,
    /// None.
    None,
}

impl ExportMode {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportMode::Every => "every",
            ExportMode::Last => "last",
            ExportMode::None => "none",
        }
    }
}

/// A task split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// The held-out tasks.
    Eval,
    /// The training tasks.
    Train,
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
    /// Timed updates per mode, the modes taking turns (the median is reported, after one
    /// untimed warm-up each).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// A run or checkpoint directory whose policy samples the trees and is trained (in its
    /// run's environment, with its tokenizer and chat rendering) [default: seeded random
    /// weights of the tiny preset].
    #[arg(long, conflicts_with = "model")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// A Hugging Face model directory or GGUF file to sample with and train, in 2-hop
    /// multihop (an instruct model that was not fine-tuned may fill every budget: then pass a
    /// --checkpoint of a run that was).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Branching policy of the sampled trees (`entropy` forks inside actions: many small
    /// token-level nodes).
    #[arg(long, value_enum, default_value = "random")]
    pub branch: BranchPolicy,
    /// Node granularity of the sampled trees.
    #[arg(long, value_enum, default_value = "step")]
    pub granularity: Granularity,
    /// Time only the `packed` mode (what training uses).
    #[arg(long)]
    pub packed_only: bool,
    /// Train with gradient checkpointing (`model.gradient_checkpointing`).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Shards trained at the same time (`model.parallel_shards`; 0: all).
    #[arg(long, default_value_t = 0)]
    pub parallel_shards: usize,
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
    /// Measure a local Hugging Face model directory or GGUF file instead of the presets.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Decode batch sizes (sequences per decode step).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub batches: Vec<usize>,
    /// KV cache number formats to measure, each in its own rows: `f32` (exact) and `bf16`.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub kv: Vec<rollout::engine::KvPrecision>,
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
    /// Other multihop knob `name=value`, repeatable (e.g. `distractors=0` to match a policy
    /// trained without distractor facts) [default: the env's defaults].
    #[arg(long = "knob", short = 'k', value_name = "NAME=VALUE")]
    pub knobs: Vec<String>,
    /// Model preset of the seeded random policy (used without --checkpoint).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// A run or checkpoint directory whose policy samples [default: seeded random weights].
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Seed of the random weights and of sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tree `sampler.granularity` [default: the sampler default].
    #[arg(long, value_enum)]
    pub granularity: Option<Granularity>,
    /// Tree branching policies, comma separated: one tree row per policy, each compared with
    /// the chain [default: random].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub branch: Vec<BranchPolicy>,
    /// `sampler.initial_chains` (M) [default: the sampler default].
    #[arg(long)]
    pub initial_chains: Option<usize>,
    /// `sampler.root_share`: share of the budget spent on independent trees before branching
    /// [default: the sampler default].
    #[arg(long)]
    pub root_share: Option<f32>,
    /// `sampler.branches_per_round` (N) [default: the sampler default].
    #[arg(long)]
    pub branches_per_round: Option<usize>,
    /// A Hugging Face model directory or GGUF file whose policy samples (its tokenizer and chat
    /// rendering; instead of --checkpoint or the seeded random preset).
    #[arg(long, conflicts_with = "checkpoint")]
    pub model: Option<std::path::PathBuf>,
    /// Sample through the OpenAI-compatible completions endpoint at this URL (e.g.
    /// llama.cpp's `llama-server` serving the --model or --checkpoint policy) instead of the
    /// in-process engine; the `cache` column is then the share of prompt tokens the server
    /// read from its prefix cache.
    #[arg(long, value_name = "URL")]
    pub rollout_server: Option<String>,
}

/// `arbor train`. Every flag overrides the key of the TOML config named in its help; defaults are
/// those of the config (shown here).
#[derive(Debug, Args, Default)]
pub struct TrainArgs {
    /// TOML config file (every key optional).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Any config key, `section.key=value` (e.g. `rl.lr=3e-5`, `sampler.sampling.top_p=0.9`,
    /// `env.knobs.hops=2`), repeatable; applied after --config and before the flags below.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The environment.
    #[command(flatten)]
    pub env: EnvArgs,
    /// `model.preset`: tiny or small [default: tiny].
    #[arg(long)]
    pub preset: Option<String>,
    /// `model.dir`: a local Hugging Face Llama-family model directory (config.json,
    /// *.safetensors, tokenizer.json) or a GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1) to start
    /// from instead of a preset.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Sampler, branching, estimator and budget.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// `sft.steps` [default: 1500].
    #[arg(long)]
    pub sft_steps: Option<usize>,
    /// `rl.steps` [default: 15].
    #[arg(long)]
    pub steps: Option<usize>,
    /// `model.device`: train on `cpu`, `cuda[:N]` or `wgpu[:N]` (GPU backends need arbor built
    /// with `--features cuda` / `wgpu`), or data-parallel on `cuda:0,cuda:1,…`
    /// [default: cpu].
    #[arg(long)]
    pub device: Option<trainer::device::DeviceSet>,
    /// `rollout.server`: sample RL rollouts on the OpenAI-compatible completions endpoint at
    /// this URL (`http://host:port`) instead of the in-process engine.
    #[arg(long, value_name = "URL")]
    pub rollout_server: Option<String>,
    /// `rollout.server_cmd`: the command that serves the policy's GGUF file or directory
    /// (`{model}`) at --rollout-server; with the `restart` reload arbor restarts it on each new
    /// policy, e.g. `llama-server -m {model} --port 8080`.
    #[arg(long, value_name = "CMD")]
    pub rollout_server_cmd: Option<String>,
    /// `rollout.reload`: how each new policy reaches --rollout-server [default: restart].
    #[arg(long, value_name = "HOW")]
    pub rollout_server_reload: Option<crate::config::ServerReload>,
    /// `seed` [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// `out`: parent directory of run directories [default: runs].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// `name`: run directory name [default: <env>-<sampler>, made unique].
    #[arg(long)]
    pub name: Option<String>,
    /// `eval.episodes`: held-out episodes before and after RL [default: 128].
    #[arg(long)]
    pub episodes: Option<usize>,
    /// `rl.export_rollouts` [default: every].
    #[arg(long, value_enum)]
    pub export_rollouts: Option<ExportMode>,
    /// Continue the run in `out/name` from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start from this checkpoint (a `checkpoints/step-N` directory, or a run directory for its
    /// latest one) instead of fresh weights: its weights and SFT step count carry over, so SFT
    /// runs only the steps it lacks. Ignored with --resume.
    #[arg(long, value_name = "CHECKPOINT")]
    pub init: Option<std::path::PathBuf>,
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
    /// The environment [default: the run's].
    #[command(flatten)]
    pub env: EnvArgs,
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

/// `arbor sweep`. Every axis takes a comma-separated list; the grid is their product (the
/// chain sampler ignores the branching axis). Runs start from one SFT checkpoint per model,
/// trained once with the base config and kept in `OUT/sft-<model>/`; finished runs in
/// `OUT/runs/` are reused, interrupted ones resumed, so a sweep can be rerun or extended.
/// Every point also measures its final policy on the held-out tasks with one rollout of its
/// sampler at its budget (`OUT/budget/`); with `--rl-steps 0` that is all it does.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Per-task token budgets.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048")]
    pub budgets: Vec<u32>,
    /// Samplers.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "chain,tree")]
    pub samplers: Vec<SamplerKind>,
    /// Branching policies of the tree sampler [default: the base config's].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub branches: Vec<BranchPolicy>,
    /// Advantage estimators [default: the base config's].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub estimators: Vec<Estimator>,
    /// Models: presets (tiny, small), Hugging Face model directories and GGUF files, each
    /// optionally `=SFT_STEPS` for its own shared SFT length (e.g. `tiny=1500,model.gguf=8`)
    /// [default: the base config's].
    #[arg(long, alias = "presets", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Seeds of the RL runs (task draws, sampling, held-out evaluation stream). The SFT
    /// checkpoint is shared: it uses the base config's seed.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Base TOML config of every run (every key optional; see `arbor train --help`).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Any key of the base config, `section.key=value`, repeatable (as `arbor train --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The environment of the base config.
    #[command(flatten)]
    pub env: EnvArgs,
    /// `rl.steps` of every run; 0 measures the shared SFT policies at each budget only
    /// (test-time mode).
    #[arg(long, alias = "rl-steps")]
    pub steps: Option<usize>,
    /// `sft.steps` of the shared SFT checkpoint.
    #[arg(long)]
    pub sft_steps: Option<usize>,
    /// `eval.episodes`: held-out episodes before and after RL.
    #[arg(long)]
    pub episodes: Option<usize>,
    /// `eval.every`: evaluate the held-out set every K RL steps (the learning curves of
    /// `success_vs_tokens` and `curves.csv`).
    #[arg(long, value_name = "K")]
    pub eval_every: Option<usize>,
    /// `rl.steps` for the runs of one budget, `BUDGET=STEPS`, comma separated (e.g. `128=50`:
    /// runs at a quarter budget learn for more steps; curves are compared on generated tokens).
    #[arg(long, value_delimiter = ',')]
    pub budget_steps: Vec<String>,
    /// Success levels whose RL token cost `reach.csv` reports per run (besides the chain
    /// reference's final success).
    #[arg(long, value_delimiter = ',')]
    pub reach: Vec<f64>,
    /// Sweep directory [default: sweeps/<env>].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// No progress bar or per-run lines (the table is still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// `arbor rollout`: sample with a checkpoint and export, no training.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// A run directory (`runs/<name>`: its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Directory to write (created; must be new or empty).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// The environment [default: the run's].
    #[command(flatten)]
    pub env: EnvArgs,
    /// Sampler, branching, estimator of the exported advantages and budget.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Task groups per step [default: the run's rl.tasks_per_step].
    #[arg(long)]
    pub tasks_per_step: Option<usize>,
    /// Sampling steps (one row group per step in each file).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Seed of the task draws and of sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which tasks.
    #[arg(long, value_enum, default_value = "eval")]
    pub split: SplitArg,
    /// Sample through the OpenAI-compatible completions endpoint at this URL
    /// (`http://host:port`, e.g. llama.cpp's `llama-server` serving the checkpoint's model)
    /// instead of the in-process engine; the checkpoint still gives the tokenizer, the chat
    /// rendering and the environment (`rollout::server`).
    #[arg(long, value_name = "URL")]
    pub rollout_server: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `arbor inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A run directory (`runs/<name>`) or an `arbor rollout` output directory.
    pub dir: std::path::PathBuf,
    /// Last rows of metrics.parquet to show.
    #[arg(long, default_value_t = 5)]
    pub rows: usize,
    /// Step of the drawn tree [default: the last exported step].
    #[arg(long)]
    pub step: Option<u64>,
    /// Task of the drawn tree [default: the step's first task].
    #[arg(long)]
    pub task: Option<u64>,
    /// Tree (within the task group) to draw [default: the group's first].
    #[arg(long)]
    pub tree: Option<u32>,
    /// Most tree nodes drawn.
    #[arg(long, default_value_t = 60)]
    pub max_nodes: usize,
}
