//! Run configuration: a TOML file whose every key has a default, overridden by command-line
//! flags. The resolved configuration is written to `runs/<name>/config.toml` and is all a rerun
//! needs.
//!
//! ```toml
//! name = "multihop-tree"   # run directory name (default: <env>-<sampler>, made unique)
//! out = "runs"
//! seed = 0
//!
//! [env]
//! name = "multihop"
//! knobs = { hops = "2" }
//! # tasks = "qa.jsonl"     # qa-file only
//!
//! [model]
//! preset = "tiny"
//!
//! [sft]
//! steps = 300
//!
//! [rl]
//! steps = 40
//! estimator = "tree-grpo"
//!
//! [sampler]
//! kind = "tree"
//! budget = 512
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use envs::EnvSpec;
use rollout::advantage::Estimator;
use rollout::engine::ModelConfig;
use rollout::sampler::SamplerConfig;
use serde::{Deserialize, Serialize};

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Run directory name under `out`. Empty: `<env>-<sampler>`, with `-2`, `-3`, ... appended
    /// if that directory exists.
    pub name: String,
    /// Parent directory of run directories. Default: `runs`.
    pub out: PathBuf,
    /// Seed of everything random in the run (weights, task draws, sampling, shuffles).
    pub seed: u64,
    /// The environment.
    pub env: EnvSection,
    /// The policy model.
    pub model: ModelSection,
    /// Supervised warm start.
    pub sft: SftSection,
    /// Reinforcement learning.
    pub rl: RlSection,
    /// Rollout sampling during RL. Keys a `[sampler]` table leaves out take the run's defaults
    /// ([`run_sampler_default`]: budget 512), not the sampler's own (budget 1024).
    #[serde(deserialize_with = "sampler_over_run_defaults")]
    pub sampler: SamplerConfig,
    /// Held-out evaluation before and after RL.
    pub eval: EvalSection,
    /// Checkpoint retention.
    pub checkpoint: CheckpointSection,
    /// Logs besides `metrics.parquet`.
    pub log: LogSection,
    /// Where RL rollouts are sampled: the in-process engine, or an inference server.
    pub rollout: RolloutSection,
}

/// `[rollout]`: the in-process engine's KV cache format, or an inference server that samples
/// the RL rollouts instead of the engine (`rollout::server`; the held-out evaluations stay on
/// the engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSection {
    /// An OpenAI-compatible completions server, `http://host:port`, that accepts token-id
    /// prompts and returns token ids with logprobs (llama.cpp's `llama-server`, vLLM, SGLang).
    /// Default: none (the engine samples).
    pub server: Option<String>,
    /// How each new policy reaches `server` before an RL step samples on it (`crate::serve`):
    /// `restart` (llama.cpp: the policy written as a GGUF file and `server_cmd` restarted on
    /// it), `sglang` (a model directory loaded through `POST /update_weights_from_disk`) or
    /// `vllm` (a model directory loaded through `POST /collective_rpc` `reload_weights`, which
    /// needs `VLLM_SERVER_DEV_MODE=1`, then `POST /reset_prefix_cache`). A logprob probe then
    /// checks that the server serves the trained weights. Default: `restart`.
    pub reload: ServerReload,
    /// The command that serves the policy at `server`, with `{model}` where its file (GGUF,
    /// `reload = "restart"`) or directory goes, e.g. `llama-server -m {model} --port 8080 -c
    /// 4096`. With `restart`, required for RL (arbor writes the policy to
    /// `<run>/serving/policy.gguf`, F32 with `model.dir`'s metadata, and restarts this command
    /// on every new policy; `model.dir` must be a GGUF file). With `sglang` or `vllm`, optional:
    /// arbor starts it once, on the first policy's directory, and reloads from then on; without
    /// it the server must already run, on a model of the same architecture. Run through
    /// `sh -c`; stopped when the run ends. Default: none.
    pub server_cmd: Option<String>,
    /// Largest |server − engine| logprob of the probe token after each new policy reached the
    /// server (`crate::serve`). The default suits a server computing in f32 on the f32 weights
    /// arbor writes (llama-server; SGLang and vLLM with `--dtype float32`); a server that
    /// computes in bf16 or f16 needs a looser bound (not measured here; for scale, llama-server
    /// on SmolLM2-135M's Q4_1 file, with 8-bit activations, moved greedy logprobs by up to
    /// 0.09). Default: 0.01.
    pub probe_tolerance: f32,
    /// Requests in flight at once. Default: 8.
    pub in_flight: usize,
    /// Seconds the server may take to answer once started (and one request to complete).
    /// Default: 120.
    pub timeout_s: f64,
    /// Number format of the engine's KV cache in a run and in a sweep's test-time points: `f32`
    /// (exact) or `bf16` (half the memory, logits within a tested tolerance:
    /// `rollout::engine::KvPrecision`). Default: `f32`.
    pub kv_cache: rollout::engine::KvPrecision,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            server: None,
            reload: ServerReload::Restart,
            server_cmd: None,
            probe_tolerance: crate::serve::PROBE_TOLERANCE,
            in_flight: 8,
            timeout_s: 120.0,
            kv_cache: rollout::engine::KvPrecision::F32,
        }
    }
}

/// How a new policy reaches the rollout server (`[rollout] reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServerReload {
    /// Restart `server_cmd` on the policy written as a GGUF file (llama.cpp's `llama-server`).
    #[default]
    Restart,
    /// SGLang's `POST /update_weights_from_disk` with the policy as a model directory.
    Sglang,
    /// vLLM's `POST /collective_rpc` (`reload_weights` with `weights_path`) with the policy as
    /// a model directory, then `POST /reset_prefix_cache`.
    Vllm,
}

impl ServerReload {
    /// The name in a config file.
    pub fn name(self) -> &'static str {
        match self {
            ServerReload::Restart => "restart",
            ServerReload::Sglang => "sglang",
            ServerReload::Vllm => "vllm",
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Also write the metrics as a TensorBoard events file, `tb/events.out.tfevents.arbor` in
    /// the run directory (`tensorboard --logdir runs`), rewritten with every metrics write.
    /// Default: false.
    pub tensorboard: bool,
}

/// `[checkpoint]` (when to save is `sft.checkpoint_every` and `rl.checkpoint_every`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Keep the newest this many checkpoints of a run and remove older ones after each save
    /// (0: keep all). The newest is always kept; a checkpoint another run starts from
    /// (`model.init`) should be copied or kept with 0. A real model's checkpoint holds weights,
    /// AdamW moments and the KL reference (about 2 GB for 135M parameters). Default: 3.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection { keep: 3 }
    }
}

/// `[env]`.
///
/// Knobs resolve the same way from a file, from `--knob` and from `--set env.knobs.K=V`: given
/// knobs are laid over the default run's knobs while the environment is the default run's
/// (`multihop`), and over the environment's own defaults (`arbor envs`) for any other
/// environment. Knob values may be written as strings or as TOML numbers and booleans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "EnvSectionFile")]
pub struct EnvSection {
    /// Environment name. Default: `multihop`.
    pub name: String,
    /// Difficulty knobs as text (`arbor envs` lists them). Default for multihop: `hops = "1"`,
    /// `distractors = "0"` (what the tiny byte-level model learns within the default run).
    pub knobs: BTreeMap<String, String>,
    /// Task file for `qa-file` (JSONL or Parquet with `prompt`/`answer`).
    pub tasks: Option<PathBuf>,
}

impl EnvSection {
    /// `name (knob=value ...)`, or the name alone without knobs.
    pub fn label(&self) -> String {
        let knobs: Vec<String> = self.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if knobs.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, knobs.join(" "))
        }
    }
}

/// `[env]` as written in a file, before the knob rule of [`EnvSection`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvSectionFile {
    name: Option<String>,
    #[serde(default)]
    knobs: BTreeMap<String, KnobValue>,
    tasks: Option<PathBuf>,
}

/// A knob value: text, or a TOML number or boolean taken as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum KnobValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl KnobValue {
    fn into_text(self) -> String {
        match self {
            KnobValue::Text(s) => s,
            KnobValue::Int(i) => i.to_string(),
            KnobValue::Float(f) => f.to_string(),
            KnobValue::Bool(b) => b.to_string(),
        }
    }
}

impl From<EnvSectionFile> for EnvSection {
    fn from(file: EnvSectionFile) -> Self {
        let default = EnvSection::default();
        let name = file.name.unwrap_or_else(|| default.name.clone());
        let mut knobs = if name == default.name {
            default.knobs
        } else {
            BTreeMap::new()
        };
        knobs.extend(file.knobs.into_iter().map(|(k, v)| (k, v.into_text())));
        EnvSection {
            name,
            knobs,
            tasks: file.tasks,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Preset: `tiny` or `small` (random initial weights, byte tokenizer). Default: `tiny`.
    pub preset: String,
    /// A local Hugging Face model directory of the Llama family (`config.json`,
    /// `*.safetensors`, `tokenizer.json`) or a GGUF file (`*.gguf`, see `rollout::gguf`);
    /// overrides `preset`: its weights and tokenizer are used.
    pub dir: Option<PathBuf>,
    /// Caps the context window of a `dir` model (its RoPE tables and KV cache are sized by it),
    /// 16..=2^20; a preset keeps its own window. Default: 2048.
    pub max_seq_len: usize,
    /// Use the model's chat template (GGUF `tokenizer.chat_template`, or `chat_template` of a
    /// model directory's `tokenizer_config.json`) when it has one: prompts and observations
    /// become chat turns (`rollout::chat`). Presets have none. Default: true.
    pub chat: bool,
    /// The device training runs on: `cpu`, `cuda[:N]` or `wgpu[:N]` (the last two need arbor
    /// built with `--features cuda` / `wgpu`; `trainer::device`), or several CUDA devices,
    /// `cuda:0,cuda:1,…`, for data-parallel training (burn's all-reduce collective sums their
    /// gradients; `trainer::trainer::Trainer::set_data_parallel`). Rollouts stay on the CPU
    /// engine or go to `[rollout] server`. Default: `cpu`.
    pub device: trainer::device::DeviceSet,
    /// Keep only each decoder layer's input in the forward pass and re-run one layer at a time
    /// in the backward pass (`trainer::trainer::TrainerConfig::gradient_checkpointing`): the
    /// same updates, bit for bit, at the activation memory of one layer, for about one more
    /// forward pass of compute; for models that do not fit otherwise. Default: false.
    pub gradient_checkpointing: bool,
    /// How many of an update's shards train at the same time (0: all, the two of the
    /// default): 1 keeps one shard's activations in memory at a time, at about twice the
    /// update time; the same updates, bit for bit. Default: 0.
    pub parallel_shards: usize,
    /// Start from this checkpoint (a `checkpoints/step-N` directory, or a run directory for its
    /// latest) instead of `preset`'s random or `dir`'s weights: its weights, optimizer moments
    /// and SFT step count carry over, so SFT runs only the steps it lacks; RL counters start at
    /// 0 and this config supplies every setting. Kept in the run's `config.toml`, so a resumed
    /// run that had no checkpoint of its own yet starts from it again. Default: none.
    pub init: Option<PathBuf>,
}

/// The policy a run starts from.
pub struct LoadedModel {
    /// Architecture.
    pub config: ModelConfig,
    /// Initial weights (`None`: the preset's seeded random initialisation).
    pub weights: Option<rollout::engine::Weights>,
    /// Tokenizer.
    pub tokenizer: Box<dyn rollout::tokenizer::Tokenizer>,
    /// The chat rendering of the model's template (`model.chat`), if any.
    pub chat: Option<rollout::chat::ChatFormat>,
    /// The files besides the weights that make a checkpoint of this model a Hugging Face model
    /// directory (`rollout::hf::model_files`: `config.json` with the model's own keys, its
    /// tokenizer files and generation config); none for a preset.
    pub files: Vec<(String, Vec<u8>)>,
}

impl LoadedModel {
    /// `spec` as this model sees it: rendered through its chat format when it has one.
    pub fn render(&self, spec: EnvSpec) -> EnvSpec {
        match &self.chat {
            Some(format) => rollout::chat::chat_spec(spec, format.clone()),
            None => spec,
        }
    }
}

/// The chat format of `template` for `tokenizer` (`None` without a template or with
/// `model.chat = false`).
fn chat_format(
    use_chat: bool,
    template: Option<String>,
    tokenizer: &rollout::tokenizer::HfTokenizer,
) -> anyhow::Result<Option<rollout::chat::ChatFormat>> {
    use rollout::tokenizer::Tokenizer;
    let Some(template) = template.filter(|_| use_chat) else {
        return Ok(None);
    };
    let text = |id| tokenizer.id_to_token(id).unwrap_or_default();
    let bos = text(tokenizer.bos());
    let format = rollout::chat::ChatFormat::new(&template, &bos, &text(tokenizer.eos()))
        .context("the model's chat template cannot be used (set model.chat = false)")?;
    // The tokenizer adds the BOS itself where it adds one (`Tokenizer::add_bos`).
    Ok(Some(if tokenizer.add_bos() {
        format.without_leading(&bos)
    } else {
        format
    }))
}

impl ModelSection {
    /// Loads the configured model: a preset with the byte tokenizer, or a Hugging Face
    /// directory with its weights and tokenizer.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        match &self.dir {
            None => Ok(LoadedModel {
                config: ModelConfig::preset(&self.preset)?,
                weights: None,
                tokenizer: Box::new(rollout::tokenizer::ByteTokenizer),
                chat: None,
                files: Vec::new(),
            }),
            Some(file)
                if file
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf")) =>
            {
                let g = rollout::gguf::load_gguf(file)
                    .with_context(|| format!("cannot load model file {}", file.display()))?;
                let mut config = g.config.clone();
                config.max_seq_len = config.max_seq_len.min(self.max_seq_len.max(16));
                let files = rollout::hf::model_files(&g.hf_meta(), &config, &g.tokenizer)?;
                let chat = chat_format(self.chat, g.chat_template, &g.tokenizer)?;
                Ok(LoadedModel {
                    config,
                    weights: Some(g.weights),
                    tokenizer: Box::new(g.tokenizer),
                    chat,
                    files,
                })
            }
            Some(dir) => {
                let hf = rollout::hf::load_model_dir(dir)
                    .with_context(|| format!("cannot load model directory {}", dir.display()))?;
                let mut config = hf.config.clone();
                config.max_seq_len = config.max_seq_len.min(self.max_seq_len.max(16));
                let files = rollout::hf::model_files(&hf.meta, &config, &hf.tokenizer)?;
                let chat = chat_format(self.chat, hf.meta.chat_template(), &hf.tokenizer)?;
                Ok(LoadedModel {
                    config,
                    weights: Some(hf.weights),
                    tokenizer: Box::new(hf.tokenizer),
                    chat,
                    files,
                })
            }
        }
    }
}

/// `[sft]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftSection {
    /// Optimizer steps (0 skips the warm start). Default: 1500.
    pub steps: usize,
    /// Demonstrations per step. Default: 8.
    pub batch: usize,
    /// Distinct demonstrations generated (cycled through). Default: 2000.
    pub demos: usize,
    /// Peak learning rate. Default: 1e-3.
    pub lr: f64,
    /// Linear warm-up steps before the peak. Default: 20.
    pub warmup: usize,
    /// Cosine decay from the peak to this share of it at the last step (1: constant after the
    /// warm-up). Default: 1. The tiny model learns to copy names late and at a seed-dependent
    /// step; with a decay to 0.1, seeds 1 and 2 of the default run had not learned it by step
    /// 1500 (held-out success 0.000 and 0.074; 0.051 and 0.320 at a constant rate).
    pub min_lr_ratio: f64,
    /// Share of turns where the expert makes a recoverable mistake. Default: 0 (with mistakes
    /// the tiny default model needs far longer to learn to copy names).
    pub mistake_rate: f32,
    /// Share of demonstrations that are a failing guess instead of the expert's episode (an
    /// imperfect demonstrator that gives up, see `datasets::demos`). Default: 0.3. The SFT
    /// policy learns to give up about as often, a decision RL unlearns from the reward; with
    /// perfect demonstrations (0) the tiny default policy's failures are copy errors that RL did
    /// not reduce within minutes (README, "Measured").
    pub guess_rate: f32,
    /// Save a checkpoint (with the SFT metrics so far) every this many SFT steps, so a crash
    /// loses at most this many steps (0: only at the end of SFT). Default: 250.
    pub checkpoint_every: usize,
}

/// `[rl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlSection {
    /// RL steps (each: sample, estimate, update). Default: 15.
    pub steps: usize,
    /// Tasks (prompt groups) per step. Default: 8.
    pub tasks_per_step: usize,
    /// Advantage estimator. Default: `tree-grpo`.
    pub estimator: Estimator,
    /// Learning rate (RL starts with fresh AdamW moments). Default: 1e-4 for a preset trained
    /// from scratch, 1e-6 for a pretrained model (`model.dir`, as verl's default); a run's
    /// `config.toml` records the value it used. With perfect demonstrations, 3e-4 collapsed the
    /// default policy and 1e-4 lowered its held-out success slightly; 1e-5 to 3e-5 left it
    /// unchanged, even over 40-120 steps. On SmolLM2-135M, 1e-4 moved every weight by about
    /// 1e-4 in the first AdamW step: the K3 KL to the reference reached 4e5 and the policy
    /// collapsed; 1e-6 kept it at 1e-3.
    pub lr: Option<f64>,
    /// Passes over each step's batch. Default: 1.
    pub epochs: usize,
    /// Mini-batches per pass (one optimizer update each). Default: 4 (four PPO updates per
    /// sampled batch, the setting of the tree-vs-chain curves in the README).
    pub minibatches: usize,
    /// PPO clip range. Default: 0.2.
    pub clip_eps: f32,
    /// K3 KL coefficient to the SFT policy (0 disables the reference). Default: 0.001.
    pub kl_coef: f32,
    /// Entropy bonus coefficient. Default: 0.
    pub entropy_coef: f32,
    /// Loss aggregation: `token-mean` or `seq-mean-token-mean`. Default: `token-mean`.
    pub loss_agg: String,
    /// Train each tree as one packed sequence (true) or one row per trajectory. Default: true.
    pub packed: bool,
    /// Budget-truncated trajectories carry no loss and take no part in any group or baseline
    /// (they stay in the export with `truncated = true` and a null advantage). Default: true
    /// (DESIGN §6): a cut is the sampler's scheduling, not the policy's failure.
    pub mask_truncated: bool,
    /// Save a checkpoint every this many RL steps (0: only at the end). Default: 10.
    pub checkpoint_every: usize,
    /// Which RL steps' rollouts go to `trajectories.parquet` / `nodes.parquet`: `every`
    /// (every `export_every` steps and the last), `last` or `none`. Default: `every`.
    pub export_rollouts: String,
    /// Export period for `export_rollouts = "every"`. Default: 1.
    pub export_every: usize,
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Held-out tasks, one episode each. Default: 256.
    pub episodes: usize,
    /// Sampling temperature of the episodes (0: greedy). Default: 1, the distribution RL trains.
    pub temperature: f32,
    /// Evaluate the held-out set every this many RL steps as well (0: only before and after
    /// RL). Every evaluation is a `phase = "eval"` row of `metrics.parquet` with `success_rate`,
    /// `success_stderr` and `cumulative_generated_tokens`: the learning curve. Default: 0.
    pub every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: String::new(),
            out: PathBuf::from("runs"),
            seed: 0,
            env: EnvSection::default(),
            model: ModelSection::default(),
            sft: SftSection::default(),
            rl: RlSection::default(),
            sampler: run_sampler_default(),
            eval: EvalSection::default(),
            checkpoint: CheckpointSection::default(),
            log: LogSection::default(),
            rollout: RolloutSection::default(),
        }
    }
}

/// The sampler settings of a run whose config sets none: [`SamplerConfig::default`] with a
/// budget of 512 (the default run's budget, half the sampler's own default).
pub fn run_sampler_default() -> SamplerConfig {
    SamplerConfig {
        budget: 512,
        ..SamplerConfig::default()
    }
}

/// Reads a `[sampler]` table over [`run_sampler_default`], so that a config setting only, say,
/// `initial_chains` keeps the run's budget.
fn sampler_over_run_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SamplerConfig, D::Error> {
    use serde::de::Error;
    let given = toml::Table::deserialize(d)?;
    let mut merged = match toml::Value::try_from(run_sampler_default()).map_err(D::Error::custom)? {
        toml::Value::Table(t) => t,
        _ => return Err(D::Error::custom("sampler defaults are not a table")),
    };
    merged.extend(given);
    SamplerConfig::deserialize(toml::Value::Table(merged)).map_err(D::Error::custom)
}

impl Default for EnvSection {
    fn default() -> Self {
        EnvSection {
            name: "multihop".into(),
            knobs: BTreeMap::from([
                ("hops".to_string(), "1".to_string()),
                ("distractors".to_string(), "0".to_string()),
            ]),
            tasks: None,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            preset: "tiny".into(),
            dir: None,
            max_seq_len: 2048,
            chat: true,
            device: trainer::device::DeviceSet::default(),
            gradient_checkpointing: false,
            parallel_shards: 0,
            init: None,
        }
    }
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            steps: 1500,
            batch: 8,
            demos: 2000,
            lr: 1e-3,
            warmup: 20,
            min_lr_ratio: 1.0,
            mistake_rate: 0.0,
            guess_rate: 0.3,
            checkpoint_every: 250,
        }
    }
}

impl Default for RlSection {
    fn default() -> Self {
        RlSection {
            steps: 15,
            tasks_per_step: 8,
            estimator: Estimator::TreeGrpo,
            lr: None,
            epochs: 1,
            minibatches: 4,
            clip_eps: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.0,
            loss_agg: "token-mean".into(),
            packed: true,
            mask_truncated: true,
            checkpoint_every: 10,
            export_rollouts: "every".into(),
            export_every: 1,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            episodes: 256,
            temperature: 1.0,
            every: 0,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file (unknown keys are errors, missing keys take their defaults).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("bad config {}: {}", path.display(), toml_error(&text, &e))
        })?;
        Ok(cfg)
    }

    /// The resolved configuration as TOML.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("serialising the config")
    }

    /// The RL learning rate: `rl.lr`, or its default for the model (see [`RlSection::lr`]).
    pub fn rl_lr(&self) -> f64 {
        self.rl.lr.unwrap_or(match self.model.dir {
            Some(_) => 1e-6,
            None => 1e-4,
        })
    }

    /// Fills the defaults that depend on other settings (`rl.lr`), so that the config a run
    /// writes says what it used.
    pub fn resolve_defaults(&mut self) {
        self.rl.lr = Some(self.rl_lr());
    }

    /// `[rollout]`: a server for RL needs the command that gives it the trained weights.
    fn validate_rollout(&self) -> anyhow::Result<()> {
        let r = &self.rollout;
        if r.in_flight == 0 || !r.timeout_s.is_finite() || r.timeout_s <= 0.0 {
            bail!("rollout.in_flight must be at least 1 and rollout.timeout_s a positive number");
        }
        if !(r.probe_tolerance.is_finite() && r.probe_tolerance > 0.0) {
            bail!("rollout.probe_tolerance must be a positive number");
        }
        match (&r.server, &r.server_cmd, r.reload) {
            (None, Some(_), _) => {
                bail!("rollout.server_cmd is set but rollout.server (its URL) is not")
            }
            (Some(_), None, ServerReload::Restart) if self.rl.steps > 0 => bail!(
                "rollout.server without rollout.server_cmd cannot receive the trained weights: \
                 set rollout.server_cmd (arbor restarts the server on each new policy), or \
                 rollout.reload = \"sglang\" or \"vllm\" for a server that reloads them"
            ),
            (Some(_), cmd, ServerReload::Restart) => {
                if cmd.as_ref().is_some_and(|c| !c.contains("{model}")) {
                    bail!("rollout.server_cmd must contain {{model}} (the policy's GGUF file)");
                }
                let gguf = self.model.dir.as_ref().is_some_and(|d| {
                    d.extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                });
                if cmd.is_some() && !gguf {
                    bail!(
                        "rollout.server_cmd needs model.dir to be a GGUF file (the served policy \
                         is written in its format)"
                    );
                }
                Ok(())
            }
            (Some(_), cmd, _) => {
                if cmd.as_ref().is_some_and(|c| !c.contains("{model}")) {
                    bail!(
                        "rollout.server_cmd must contain {{model}} (the policy's model directory)"
                    );
                }
                if self.model.dir.is_none() && self.rl.steps > 0 {
                    bail!(
                        "rollout.reload = \"{}\" serves the policy as a model directory, which \
                         needs model.dir (a GGUF file or a model directory; presets have no \
                         tokenizer files)",
                        r.reload.name()
                    );
                }
                Ok(())
            }
            (None, None, _) => Ok(()),
        }
    }

    /// Checks every value a run depends on; the first problem is the error.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut parts = Path::new(&self.name).components();
        let plain = matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        );
        if !self.name.is_empty() && !plain {
            bail!(
                "config name '{}' must be a plain directory name inside `out` (no '/', '..' or \
                 absolute path)",
                self.name
            );
        }
        self.sampler.validate()?;
        self.validate_rollout()?;
        for &device in self.model.device.devices() {
            trainer::device::check_available(device)?;
        }
        if self.model.dir.is_none() {
            ModelConfig::preset(&self.model.preset)?;
        }
        self.loss_agg()?;
        let positive = [
            ("sft.batch", self.sft.batch),
            ("sft.demos", self.sft.demos),
            ("rl.tasks_per_step", self.rl.tasks_per_step),
            ("rl.epochs", self.rl.epochs),
            ("rl.minibatches", self.rl.minibatches),
            ("eval.episodes", self.eval.episodes),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("config {key} must be at least 1");
            }
        }
        if !["every", "last", "none"].contains(&self.rl.export_rollouts.as_str()) {
            bail!(
                "config rl.export_rollouts '{}' is not every, last or none",
                self.rl.export_rollouts
            );
        }
        // AdamW steps move each weight by about lr: above 1 every run diverges.
        let learning_rates = [("sft.lr", self.sft.lr), ("rl.lr", self.rl_lr())];
        for (key, v) in learning_rates {
            if !(v > 0.0 && v <= 1.0) {
                bail!("config {key} must be a learning rate in (0, 1] (got {v:e})");
            }
        }
        if !(self.sft.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&self.sft.min_lr_ratio)) {
            bail!("config sft.min_lr_ratio must be in [0, 1]");
        }
        if !(self.rl.clip_eps > 0.0 && self.rl.clip_eps < 1.0) {
            bail!("config rl.clip_eps must be in (0, 1)");
        }
        if !(self.rl.kl_coef.is_finite() && self.rl.kl_coef >= 0.0) {
            bail!("config rl.kl_coef must be a finite number >= 0");
        }
        if !self.rl.entropy_coef.is_finite() {
            bail!("config rl.entropy_coef must be a finite number");
        }
        // Sizes far beyond anything a run can hold are refused here, with one line, instead of
        // ending in an allocation failure.
        let limits = [
            ("sft.batch", self.sft.batch, 1 << 16),
            ("sft.demos", self.sft.demos, 1 << 24),
            ("sft.steps", self.sft.steps, 1 << 32),
            ("rl.steps", self.rl.steps, 1 << 32),
            ("rl.tasks_per_step", self.rl.tasks_per_step, 1 << 16),
            ("rl.minibatches", self.rl.minibatches, 1 << 16),
            ("rl.epochs", self.rl.epochs, 1 << 16),
            ("eval.episodes", self.eval.episodes, 1 << 24),
        ];
        for (key, v, max) in limits {
            if v > max {
                bail!("config {key} = {v} is larger than the supported {max}");
            }
        }
        if !(16..=1 << 20).contains(&self.model.max_seq_len) {
            bail!(
                "config model.max_seq_len must be in 16..={} (got {})",
                1 << 20,
                self.model.max_seq_len
            );
        }
        if !(0.0..=1.0).contains(&self.sft.mistake_rate) {
            bail!("config sft.mistake_rate must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.sft.guess_rate) {
            bail!("config sft.guess_rate must be in [0, 1]");
        }
        if self.eval.temperature < 0.0 || !self.eval.temperature.is_finite() {
            bail!("config eval.temperature must be a finite number >= 0");
        }
        Ok(())
    }

    /// The loss aggregation.
    pub fn loss_agg(&self) -> anyhow::Result<trainer::pack::LossAgg> {
        use trainer::pack::LossAgg;
        match self.rl.loss_agg.as_str() {
            "token-mean" => Ok(LossAgg::TokenMean),
            "seq-mean-token-mean" => Ok(LossAgg::SeqMeanTokenMean),
            other => bail!("config rl.loss_agg '{other}' is not token-mean or seq-mean-token-mean"),
        }
    }

    /// The environment family.
    /// The environment family as `model` sees it: [`TrainConfig::env_spec`], rendered through
    /// the model's chat template when it has one (`model.chat`).
    pub fn task_spec(&self, model: &LoadedModel) -> anyhow::Result<EnvSpec> {
        Ok(model.render(self.env_spec()?))
    }

    /// The environment family of `[env]`.
    pub fn env_spec(&self) -> anyhow::Result<EnvSpec> {
        if self.env.name != "qa-file"
            && let Some(path) = &self.env.tasks
        {
            bail!(
                "env.tasks ({}) is a task file for qa-file, not for {}",
                path.display(),
                self.env.name
            );
        }
        if self.env.name == "qa-file" {
            let Some(path) = &self.env.tasks else {
                bail!("env qa-file needs a task file (--tasks FILE)");
            };
            if let Some(k) = self.env.knobs.keys().find(|k| *k != "verifier") {
                bail!("environment 'qa-file' has no knob '{k}' (knobs: verifier)");
            }
            let name = self
                .env
                .knobs
                .get("verifier")
                .map_or("exact", String::as_str);
            let Some(verifier) = envs::qa::Verifier::from_name(name) else {
                bail!("unknown qa-file verifier '{name}' (expected exact or numeric)");
            };
            return Ok(datasets::qa_spec_from_file(path, verifier)?);
        }
        let knobs: Vec<(&str, &str)> = self
            .env
            .knobs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Ok(EnvSpec::from_name(&self.env.name, &knobs)?)
    }
}

/// The first key whose value differs between two configs, as `key: found X, expected Y`.
pub fn first_difference(found: &TrainConfig, want: &TrainConfig) -> Option<String> {
    fn walk(prefix: &str, a: &toml::Value, b: &toml::Value) -> Option<String> {
        match (a, b) {
            (toml::Value::Table(ta), toml::Value::Table(tb)) => {
                let keys: std::collections::BTreeSet<&String> =
                    ta.keys().chain(tb.keys()).collect();
                keys.into_iter().find_map(|k| {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match (ta.get(k), tb.get(k)) {
                        (Some(x), Some(y)) => walk(&key, x, y),
                        (x, y) => Some(format!(
                            "{key}: found {}, expected {}",
                            x.map_or("nothing".into(), ToString::to_string),
                            y.map_or("nothing".into(), ToString::to_string)
                        )),
                    }
                })
            }
            _ if a == b => None,
            _ => Some(format!("{prefix}: found {a}, expected {b}")),
        }
    }
    let a = toml::Value::try_from(found).ok()?;
    let b = toml::Value::try_from(want).ok()?;
    walk("", &a, &b)
}

/// The default run of `arbor train`, in one line, from [`TrainConfig::default`]: what
/// `arbor train --help`, `--knob`'s help and `arbor envs` say, so they cannot disagree.
pub fn default_run_line() -> String {
    let cfg = TrainConfig::default();
    format!(
        "{}, {} model, {} sampler at budget {}, estimator {}, {} SFT + {} RL steps",
        cfg.env.label(),
        cfg.model.preset,
        cfg.sampler.kind,
        cfg.sampler.budget,
        cfg.rl.estimator,
        cfg.sft.steps,
        cfg.rl.steps
    )
}

/// Applies `--set section.key=value` assignments (in order) to `cfg`: any key of the TOML
/// config, nested tables by dots (`sampler.sampling.temperature=0.7`, `env.knobs.hops=2`). The
/// value is read as a TOML value (`0.5`, `true`, `"text"`, `[1, 2]`) and, when it is none, as
/// text (`rl.estimator=grpo`). The result goes through the same reading as a file: an unknown
/// key is an error naming the closest known one, and knobs follow the rule of [`EnvSection`].
pub fn apply_sets(cfg: &mut TrainConfig, sets: &[String]) -> anyhow::Result<()> {
    if sets.is_empty() {
        return Ok(());
    }
    let mut root = match toml::Value::try_from(&*cfg)? {
        toml::Value::Table(t) => t,
        _ => bail!("the config is not a table"),
    };
    for set in sets {
        let Some((key, text)) = set.split_once('=') else {
            bail!("--set {set}: expected section.key=value");
        };
        let path: Vec<&str> = key.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("--set {set}: the key `{}` has an empty part", key.trim());
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {text}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(text.to_string()));
        // A new environment starts from its own knobs (as `--env` does).
        if path == ["env", "name"]
            && value.as_str() != root.get("env").and_then(|e| e.get("name")?.as_str())
            && let Some(toml::Value::Table(env)) = root.get_mut("env")
        {
            env.remove("knobs");
        }
        let (last, parents) = path.split_last().expect("split gives one part at least");
        let mut table = &mut root;
        for (depth, part) in parents.iter().enumerate() {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => bail!(
                    "--set {set}: `{}` is a value, not a table",
                    path[..=depth].join(".")
                ),
            };
        }
        table.insert(last.to_string(), value);
    }
    let joined = sets.join(" ");
    *cfg = TrainConfig::deserialize(toml::Value::Table(root))
        .map_err(|e| anyhow::anyhow!("--set {joined}: {}", toml_error("", &e)))?;
    Ok(())
}

/// One line for a TOML error: where (line and column), what, and for an unknown key the closest
/// known one.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let at = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("line {line}, column {column}: ")
    });
    let hint = closest_known_key(&msg)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    format!("{}{msg}{hint}", at.unwrap_or_default())
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`"): the
/// expected name closest to `x` in edit distance, when it is close enough to be a typo.
fn closest_known_key(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let names = expected.split('`').skip(1).step_by(2);
    let (best, d) = names
        .map(|n| (n, edit_distance(unknown, n)))
        .min_by_key(|&(_, d)| d)?;
    (d <= unknown.len().max(best.len()) / 2).then(|| best.to_string())
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Splits `name=value` knob arguments.
pub fn parse_knobs(knobs: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    knobs
        .iter()
        .map(|k| match k.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() => Ok((n.trim(), v.trim())),
            _ => bail!("knob '{k}' is not of the form name=value"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrainConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// A misspelled key, in a file or in `--set`, is an error naming it and the closest known
    /// key (with its line in a file).
    #[test]
    fn unknown_keys_name_the_closest_known_key() {
        let text = "[rl]\nlr = 1e-4\nklcoef = 2\n";
        let err = toml_error(text, &parse(text).unwrap_err());
        assert!(
            err.starts_with("line 3, column 1: unknown field `klcoef`"),
            "{err}"
        );
        assert!(err.ends_with("(did you mean `kl_coef`?)"), "{err}");
        assert!(!err.contains('\n'));
        let err = toml_error("[rll]\n", &parse("[rll]\n").unwrap_err());
        assert!(err.contains("did you mean `rl`?"), "{err}");
        // Nothing close: no suggestion.
        let err = toml_error("zzzzzzzz = 1\n", &parse("zzzzzzzz = 1\n").unwrap_err());
        assert!(!err.contains("did you mean"), "{err}");
        let mut cfg = TrainConfig::default();
        let err = apply_sets(&mut cfg, &["sampler.sampling.temprature=0.5".into()]).unwrap_err();
        assert!(
            err.to_string().contains("did you mean `temperature`?"),
            "{err}"
        );
        assert_eq!(
            cfg,
            TrainConfig::default(),
            "a refused --set changes nothing"
        );
    }

    /// `[rollout] kv_cache` takes `f32` or `bf16`; anything else is an error naming the
    /// accepted values.
    #[test]
    fn the_kv_cache_format_is_f32_or_bf16() {
        use rollout::engine::KvPrecision;
        assert_eq!(TrainConfig::default().rollout.kv_cache, KvPrecision::F32);
        let cfg = parse("[rollout]\nkv_cache = \"bf16\"\n").unwrap();
        assert_eq!(cfg.rollout.kv_cache, KvPrecision::Bf16);
        let text = "[rollout]\nkv_cache = \"f16\"\n";
        let err = toml_error(text, &parse(text).unwrap_err());
        assert!(err.contains("f32") && err.contains("bf16"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    /// `model.device` is one device or several CUDA devices (data parallelism); each must be
    /// built in; other lists are one-line errors.
    #[test]
    fn the_training_devices_are_one_or_several_cuda_devices() {
        use trainer::device::DeviceChoice;
        let cfg = parse("[model]\ndevice = \"cuda:0,cuda:1\"\n").unwrap();
        assert_eq!(cfg.model.device.primary(), DeviceChoice::Cuda(0));
        assert_eq!(cfg.model.device.replicas(), [DeviceChoice::Cuda(1)]);
        if !cfg!(feature = "cuda") {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        let text = "[model]\ndevice = \"wgpu:0,wgpu:1\"\n";
        let err = toml_error(text, &parse(text).unwrap_err());
        assert!(err.contains("CUDA") && !err.contains('\n'), "{err}");
    }

    /// RL on a server needs a way for the trained weights to reach it: a restart command with
    /// `{model}` in it and a GGUF model, or a reload protocol and a model with a directory form;
    /// each gap is a one-line error naming the key.
    #[test]
    fn a_rollout_server_for_rl_needs_a_way_to_receive_the_weights() {
        let with = |sets: &[&str]| {
            let mut cfg = TrainConfig::default();
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            apply_sets(&mut cfg, &sets).unwrap();
            cfg.validate().map_err(|e| e.to_string())
        };
        let url = r#"rollout.server="http://127.0.0.1:8080""#;
        let err = with(&[url]).unwrap_err();
        assert!(err.contains("rollout.server_cmd"), "{err}");
        assert!(
            with(&[url, "rl.steps=0"]).is_ok(),
            "sampling only needs no weights"
        );
        let err = with(&[url, r#"rollout.server_cmd="llama-server -m x""#]).unwrap_err();
        assert!(err.contains("{model}"), "{err}");
        let cmd = r#"rollout.server_cmd="llama-server -m {model} --port 8080""#;
        let err = with(&[url, cmd]).unwrap_err();
        assert!(err.contains("GGUF"), "{err}");
        assert!(with(&[url, cmd, r#"model.dir="m.gguf""#]).is_ok());
        let err = with(&[cmd]).unwrap_err();
        assert!(err.contains("rollout.server "), "{err}");
        let e = with(&[url, "rl.steps=0", "rollout.in_flight=0"]).unwrap_err();
        assert!(e.contains("in_flight") && !e.contains('\n'), "{e}");
        // Servers that reload a model directory need no command, but a model with one.
        let err = with(&[url]).unwrap_err();
        assert!(err.contains("rollout.reload"), "{err}");
        for how in ["sglang", "vllm"] {
            let reload = format!("rollout.reload={how}");
            let err = with(&[url, &reload]).unwrap_err();
            assert!(err.contains("model.dir") && err.contains(how), "{err}");
            assert!(with(&[url, &reload, r#"model.dir="m.gguf""#]).is_ok());
            assert!(with(&[url, &reload, r#"model.dir="hf-dir""#]).is_ok());
            let err = with(&[
                url,
                &reload,
                r#"model.dir="d""#,
                r#"rollout.server_cmd="s""#,
            ])
            .unwrap_err();
            assert!(err.contains("{model}"), "{err}");
        }
        let e = with(&[url, "rl.steps=0", "rollout.probe_tolerance=0"]).unwrap_err();
        assert!(e.contains("probe_tolerance"), "{e}");
        let mut cfg = TrainConfig::default();
        let err = apply_sets(&mut cfg, &["rollout.reload=reboot".into()]).unwrap_err();
        assert!(err.to_string().contains("sglang"), "{err}");
    }

    /// RL's learning rate defaults to 1e-4 from scratch and 1e-6 for a pretrained model; a set
    /// value wins, and the resolved config records it.
    #[test]
    fn the_rl_learning_rate_defaults_by_model() {
        let mut cfg = TrainConfig::default();
        assert_eq!(cfg.rl_lr(), 1e-4);
        cfg.model.dir = Some("m.gguf".into());
        assert_eq!(cfg.rl_lr(), 1e-6);
        cfg.resolve_defaults();
        assert_eq!(cfg.rl.lr, Some(1e-6));
        let text = cfg.to_toml().unwrap();
        assert_eq!(parse(&text).unwrap().rl.lr, Some(1e-6), "{text}");
        apply_sets(&mut cfg, &["rl.lr=3e-5".into()]).unwrap();
        assert_eq!(cfg.rl_lr(), 3e-5);
    }

    /// `--set` reaches every key, nested tables included, with TOML values or plain text.
    #[test]
    fn set_reaches_any_key() {
        let mut cfg = TrainConfig::default();
        let sets = [
            "rl.lr=3e-5",
            "rl.kl_coef=0",
            "rl.estimator=grpo",
            "sampler.sampling.top_p=0.9",
            "sampler.kind=\"chain\"",
            "sft.checkpoint_every=7",
            "model.init=runs/x/checkpoints/step-3",
            "eval.every=5",
        ];
        apply_sets(&mut cfg, &sets.map(String::from)).unwrap();
        assert_eq!(cfg.rl.lr, Some(3e-5));
        assert_eq!(cfg.rl.kl_coef, 0.0);
        assert_eq!(cfg.rl.estimator.name(), "grpo");
        assert_eq!(cfg.sampler.sampling.top_p, 0.9);
        assert_eq!(
            cfg.sampler.sampling.temperature, 1.0,
            "the rest of the table stays"
        );
        assert_eq!(cfg.sampler.kind.as_str(), "chain");
        assert_eq!(cfg.sampler.budget, 512);
        assert_eq!(cfg.sft.checkpoint_every, 7);
        assert_eq!(
            cfg.model.init,
            Some(PathBuf::from("runs/x/checkpoints/step-3"))
        );
        assert_eq!(cfg.eval.every, 5);
        for bad in ["rl.lr", "rl.lr.x=1", "rl..lr=1", "rl.lr=\"fast\""] {
            assert!(apply_sets(&mut cfg, &[bad.into()]).is_err(), "{bad}");
        }
    }

    /// Knobs resolve the same from a file, from `--set` and from `--knob`: over the default
    /// run's knobs for its environment, over the environment's own for another one; numbers
    /// are accepted as knob values.
    #[test]
    fn knobs_resolve_identically_from_file_and_command_line() {
        let mut by_flag = TrainConfig::default();
        by_flag.env.knobs.insert("hops".into(), "2".into());
        let by_file = parse("[env]\nknobs = { hops = \"2\" }\n").unwrap();
        let by_number = parse("[env]\nknobs = { hops = 2 }\n").unwrap();
        let mut by_set = TrainConfig::default();
        apply_sets(&mut by_set, &["env.knobs.hops=2".into()]).unwrap();
        assert_eq!(by_file, by_flag);
        assert_eq!(by_number, by_flag);
        assert_eq!(by_set, by_flag);
        assert_eq!(by_flag.env.knobs["distractors"], "0");
        // Another environment starts from its own defaults.
        let maze = parse("[env]\nname = \"maze\"\n").unwrap();
        assert!(maze.env.knobs.is_empty());
        maze.env_spec().unwrap();
        let mut maze_set = TrainConfig::default();
        apply_sets(&mut maze_set, &["env.name=maze".into()]).unwrap();
        assert_eq!(maze_set.env, maze.env);
        // A stored config reads back to itself.
        let stored = parse(&by_flag.to_toml().unwrap()).unwrap();
        assert_eq!(stored, by_flag);
    }

    /// Help and `arbor envs` print this line: it is the default config.
    #[test]
    fn the_default_run_line_is_the_default_config() {
        let line = default_run_line();
        let cfg = TrainConfig::default();
        assert!(
            line.starts_with("multihop (distractors=0 hops=1), tiny model"),
            "{line}"
        );
        assert!(line.contains(&format!("budget {}", cfg.sampler.budget)));
        assert!(line.contains(&format!("{} SFT + {} RL", cfg.sft.steps, cfg.rl.steps)));
    }

    #[test]
    fn a_partial_sampler_table_keeps_the_run_defaults() {
        let cfg = parse("[sampler]\ninitial_chains = 6\n").unwrap();
        assert_eq!(cfg.sampler.budget, 512);
        assert_eq!(cfg.sampler.initial_chains, 6);
        assert_eq!(parse("").unwrap().sampler, run_sampler_default());
        let cfg = parse("[sampler]\nbudget = 2048\nkind = \"chain\"\n").unwrap();
        assert_eq!(cfg.sampler.budget, 2048);
        assert_eq!(cfg.sampler.kind.as_str(), "chain");
    }

    #[test]
    fn unknown_or_mistyped_sampler_keys_are_errors() {
        let err = parse("[sampler]\nbudgett = 5\n").unwrap_err().to_string();
        assert!(err.contains("budgett"), "{err}");
        assert!(parse("[sampler]\nbudget = \"many\"\n").is_err());
    }

    /// Non-finite, negative or absurd values are refused by `validate`, naming the key, before
    /// a run directory exists.
    #[test]
    fn out_of_range_values_name_their_key() {
        let cases = [
            ("[rl]\nlr = inf\n", "rl.lr"),
            ("[rl]\nclip_eps = nan\n", "rl.clip_eps"),
            ("[rl]\nkl_coef = -5.0\n", "rl.kl_coef"),
            ("[sft]\nmin_lr_ratio = nan\n", "sft.min_lr_ratio"),
            ("[sft]\nlr = 0.0\n", "sft.lr"),
            ("[eval]\nepisodes = 1000000000000\n", "eval.episodes"),
            ("name = \"../up\"\n", "plain directory name"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn the_resolved_config_reads_back_equal() {
        let cfg = parse("[sampler]\ninitial_chains = 3\n[sft]\nguess_rate = 0.1\n").unwrap();
        let again = parse(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(cfg, again);
    }
}
