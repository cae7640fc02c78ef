//! A training run as a library type: [`Run`] owns a run directory and walks it through SFT,
//! held-out evaluation and RL steps, each callable on its own, with the crash safety of
//! checkpoints (see `trainer::checkpoint`) and exact resumption.
//!
//! ```no_run
//! use experiments::config::TrainConfig;
//! use experiments::run::Run;
//! # fn main() -> anyhow::Result<()> {
//! let mut run = Run::create(TrainConfig::default())?;
//! run.sft()?;
//! while run.rl_steps_left() > 0 {
//!     run.rl_step()?;
//! }
//! let outcome = run.finish()?;
//! println!("{:.3} -> {:.3}", outcome.before.success, outcome.after.success);
//! # Ok(())
//! # }
//! ```
//!
//! # Files (all written atomically; typed here and read back through the same types)
//! - `config.toml`: the [`TrainConfig`], written once when the run is created, never rewritten.
//! - `checkpoints/step-N/run_state.json`: the run's counters ([`RunState`]), inside each
//!   checkpoint so the two never disagree.
//! - `summary.json`: the [`Summary`], written by [`Run::finish`].
//! - `metrics.parquet` / `metrics.csv`, `trajectories.parquet`, `nodes.parquet` (`datasets`).
//! - `run.lock`: held while a process writes the run ([`RunLock`]).
//!
//! # Decisions
//! - The checkpoint at the end of SFT also holds the evaluation before RL, so every step tag
//!   has one checkpoint; [`Run::sft`] therefore evaluates before it saves.
//! - [`Run::evaluate`] evaluates the current policy on the fixed held-out episodes and records a
//!   `phase = "eval"` row at the current RL step; the periodic evaluations of `eval.every` are
//!   such calls, and the last one is reused by [`Run::finish`] when it falls on the last step
//!   (same weights, same episodes: the same result).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use datasets::atomic::write_atomic;
use datasets::export::{MetricsRow, MetricsWriter, RolloutWriter, StepInfo};
use datasets::{DemoOptions, Split, TaskSet, demonstrations};
use envs::{AnyEnv, EnvSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rollout::advantage::{EstimateOptions, estimate_with};
use rollout::engine::{Engine, ModelConfig, Weights};
use rollout::sampler::{SamplerStats, sample};
use rollout::tokenizer::Tokenizer;
use rollout::tree::TaskRollout;
use serde::{Deserialize, Serialize};
use trainer::checkpoint;
use trainer::device::{DeviceChoice, training_device};
use trainer::loss::PpoConfig;
use trainer::optim::AdamWConfig;
use trainer::pack::{Packing, minibatches};
use trainer::sft::sft_batch;
use trainer::trainer::{Trainer, TrainerConfig, TrainerState};

use crate::config::TrainConfig;
use crate::evaluate::{EvalResult, evaluate_with_stats};

/// What a resumed run needs besides the checkpoint: written atomically with every checkpoint.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Held-out success before RL (once evaluated).
    pub before: Option<EvalResult>,
    /// RL tokens generated so far.
    pub generated_tokens: u64,
    /// Wall time spent in SFT, over all invocations.
    pub sft_wall_s: f64,
    /// Wall time spent in RL, over all invocations.
    pub rl_wall_s: f64,
    /// Wall time of the run up to the last save, over all invocations.
    pub wall_s: f64,
}

impl RunState {
    /// Its file name inside a checkpoint directory.
    pub const FILE: &'static str = "run_state.json";

    /// The state saved with the checkpoint `ckpt`. Runs written before the state moved into
    /// the checkpoint directory kept it in the run directory `run`.
    fn load(ckpt: &Path, run: &Path) -> anyhow::Result<RunState> {
        let inside = ckpt.join(Self::FILE);
        let path = if inside.exists() {
            inside
        } else {
            run.join(Self::FILE)
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot resume: {} is missing", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("cannot resume: {} is corrupt", path.display()))
    }

    /// Saves a checkpoint of `trainer` with this state inside it, visible as a whole in one
    /// step (`checkpoint::save_with`): a crash never separates the two. Returns the step tag.
    /// `model_files` (the model directory's files, `LoadedModel::files`) go in too.
    fn save_with(
        &self,
        dir: &Path,
        trainer: &Trainer,
        model_files: &[(String, Vec<u8>)],
    ) -> anyhow::Result<u64> {
        let st = trainer.state();
        let tag = st.sft_steps + st.rl_steps;
        let json = serde_json::to_string(self)?;
        let mut extra: Vec<(&str, &[u8])> = model_files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        extra.push((Self::FILE, json.as_bytes()));
        checkpoint::save_with(&dir.join("checkpoints"), tag, trainer, &extra)?;
        Ok(tag)
    }
}

/// Whether the run directory `dir` holds a complete checkpoint with its run state, so that
/// `--resume` can continue it.
pub fn is_resumable(dir: &Path) -> bool {
    checkpoint::latest(&dir.join("checkpoints"))
        .is_ok_and(|ckpt| ckpt.join(RunState::FILE).is_file() || dir.join(RunState::FILE).is_file())
}

/// `summary.json` of a finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Held-out success before RL.
    pub success_before: f64,
    /// Held-out success after RL.
    pub success_after: f64,
    /// Standard error of `success_before`.
    pub stderr_before: f64,
    /// Standard error of `success_after`.
    pub stderr_after: f64,
    /// Held-out episodes of each evaluation.
    pub eval_episodes: usize,
    /// `sft.steps` of the run.
    pub sft_steps: usize,
    /// `rl.steps` of the run.
    pub steps: usize,
    /// RL tokens generated.
    pub generated_tokens: u64,
    /// Wall time over all invocations, in seconds.
    pub wall_s: f64,
    /// Of which SFT.
    pub sft_wall_s: f64,
    /// Of which RL.
    pub rl_wall_s: f64,
    /// The run's configuration.
    pub config: TrainConfig,
}

impl Summary {
    /// File name in a run directory.
    pub const FILE: &'static str = "summary.json";

    /// Reads the summary of the run directory `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Summary> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.join(Self::FILE), json.as_bytes())?;
        Ok(())
    }
}

/// How [`Run::open`] starts a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Continue the run directory `out/name` from its latest checkpoint (`--resume`); a run
    /// stopped before its first checkpoint starts over from its own config.
    pub resume: bool,
    /// No progress bars or per-step lines.
    pub quiet: bool,
}

/// What [`Run::finish`] reports about a finished run (also in its `summary.json`).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run directory.
    pub dir: PathBuf,
    /// Held-out success before RL.
    pub before: EvalResult,
    /// Held-out success after RL.
    pub after: EvalResult,
    /// Wall time of the run over all invocations, in seconds.
    pub wall_s: f64,
}

/// What one [`Run::rl_step`] did: its metrics row (the same as in `metrics.parquet`).
#[derive(Debug, Clone)]
pub struct RlStep {
    /// The RL step (0-based).
    pub step: u64,
    /// Its `phase = "rl"` metrics row.
    pub row: MetricsRow,
    /// The periodic held-out evaluation after it (`eval.every`), if one was due.
    pub eval: Option<EvalResult>,
}

/// Everything about `cfg` that can be checked without a run directory: the values, the
/// environment and its task set, the model (loaded: a bad model directory leaves no trace), and
/// that the task set can feed the run (`preflight`). Returns the environment and the model.
pub fn check(cfg: &TrainConfig) -> anyhow::Result<(EnvSpec, crate::config::LoadedModel)> {
    cfg.validate()?;
    // The environment (and its task file) first: a bad one fails before the model loads.
    let spec = cfg.env_spec()?;
    let model = cfg.model.load()?;
    let spec = model.render(spec);
    let needs = crate::preflight::TaskNeeds {
        train_per_step: if cfg.rl.steps > 0 {
            cfg.rl.tasks_per_step
        } else {
            0
        },
        eval_episodes: cfg.eval.episodes,
        seed: cfg.seed,
    };
    let max_len = model.config.max_seq_len;
    crate::preflight::check_tasks(&spec, model.tokenizer.as_ref(), max_len, needs)?;
    Ok((spec, model))
}

/// A training run in its directory; see the [module docs](self).
pub struct Run {
    cfg: TrainConfig,
    dir: PathBuf,
    _lock: RunLock,
    spec: EnvSpec,
    tokenizer: Box<dyn Tokenizer>,
    /// The model directory's files every checkpoint carries (`LoadedModel::files`).
    model_files: Vec<(String, Vec<u8>)>,
    trainer: Trainer,
    engine: Engine,
    /// The inference server that samples RL rollouts (`[rollout]`), if any.
    served: Option<crate::serve::Served>,
    state: RunState,
    metrics: MetricsWriter,
    rollouts: Option<RolloutWriter>,
    train_set: TaskSet,
    eval_ids: Vec<u64>,
    /// Step tag of the newest checkpoint this run has (the end saves only what is new).
    saved: Option<u64>,
    /// When this invocation started, and the run's wall time before it.
    started: Instant,
    prior_wall: f64,
    /// Start of the RL time not yet added to `state.rl_wall_s`.
    rl_since: Option<Instant>,
    /// The last periodic evaluation (RL step, result).
    last_eval: Option<(u64, EvalResult)>,
    quiet: bool,
}

impl Run {
    /// Creates a new run directory for `cfg` (`cfg.out/cfg.name`, or a fresh
    /// `<env>-<sampler>[-k]` when the name is empty) and a policy from `model.init`, the model
    /// directory or the preset's seeded weights. Everything that can be checked (config, task
    /// set, model, init checkpoint) is checked before the directory exists. Quiet.
    pub fn create(cfg: TrainConfig) -> anyhow::Result<Run> {
        Run::open(
            cfg,
            &RunOptions {
                resume: false,
                quiet: true,
            },
        )
    }

    /// Continues the run in `dir` from its latest checkpoint with its own `config.toml`. Quiet.
    pub fn resume(dir: &Path) -> anyhow::Result<Run> {
        let path = dir.join("config.toml");
        let mut cfg = TrainConfig::load(&path)
            .with_context(|| format!("cannot resume: {} is not a run directory", dir.display()))?;
        cfg.name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cfg.out = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.validate()?;
        Run::open(
            cfg,
            &RunOptions {
                resume: true,
                quiet: true,
            },
        )
    }

    /// Creates (or with `opts.resume`, continues) the run of a resolved config: what
    /// `arbor train` does after parsing its flags.
    pub fn open(mut cfg: TrainConfig, opts: &RunOptions) -> anyhow::Result<Run> {
        cfg.resolve_defaults();
        let (spec, model) = check(&cfg)?;
        let tcfg = trainer_config(&cfg);
        // Likewise a bad `init` checkpoint.
        let mut init_trainer = match &cfg.model.init {
            Some(init) if !opts.resume => Some(trainer_from(
                init,
                &model.config,
                tcfg,
                cfg.model.device.primary(),
            )?),
            _ => None,
        };
        let (dir, lock) = run_dir(&mut cfg, opts.resume)?;
        // A resumed run keeps the config.toml it was started with (never rewritten).
        if !opts.resume {
            write_atomic(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        }
        let quiet = opts.quiet;
        let say = |line: String| {
            if !quiet {
                eprintln!("{line}");
            }
        };
        say(format!(
            "arbor train: {} ({}), {} model, sampler {} budget {}, estimator {}, run dir {}",
            spec.name(),
            spec.knob_values()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            cfg.model
                .dir
                .as_ref()
                .map_or(cfg.model.preset.clone(), |d| d.display().to_string()),
            cfg.sampler.kind,
            cfg.sampler.budget,
            cfg.rl.estimator,
            dir.display()
        ));
        let model_cfg = model.config.clone();
        let resume_from = match opts.resume {
            false => None,
            // Stopped before its first checkpoint: nothing to keep, so the run starts over
            // (from its own config.toml, `model.init` included).
            true => match checkpoint::latest(&dir.join("checkpoints")) {
                Err(trainer::TrainerError::MissingFile { .. }) => {
                    say("no checkpoint yet: starting the run over".into());
                    if let Some(init) = &cfg.model.init {
                        init_trainer = Some(trainer_from(
                            init,
                            &model_cfg,
                            tcfg,
                            cfg.model.device.primary(),
                        )?);
                    }
                    None
                }
                other => Some(other.context("cannot resume: no complete checkpoint")?),
            },
        };
        let resume = resume_from.is_some();
        let device = training_device(cfg.model.device.primary())?;
        let (mut trainer, state) = if let Some(latest) = resume_from {
            let trainer = resume_trainer(&latest, &cfg, &model_cfg)
                .with_context(|| format!("cannot resume from {}", latest.display()))?;
            let state = RunState::load(&latest, &dir)?;
            let (sft_done, rl_done) = (trainer.state().sft_steps, trainer.state().rl_steps);
            say(format!(
                "resuming {} after {sft_done} SFT and {rl_done} RL steps",
                latest.display()
            ));
            (trainer, state)
        } else if let Some(trainer) = init_trainer {
            (trainer, RunState::default())
        } else if let Some(w) = &model.weights {
            let trainer = Trainer::from_weights(&model_cfg, w, tcfg, &device)?;
            (trainer, RunState::default())
        } else {
            let weights = Weights::random(&model_cfg, tcfg.seed);
            let trainer = Trainer::from_weights(&model_cfg, &weights, tcfg, &device)?;
            (trainer, RunState::default())
        };
        trainer.set_data_parallel(&cfg.model.device)?;
        let (sft_done, rl_done) = (trainer.state().sft_steps, trainer.state().rl_steps);
        let metrics = if resume {
            MetricsWriter::resume(&dir, |m| {
                (m.phase == "sft" && m.step < sft_done)
                    || (m.phase == "rl" && m.step < rl_done)
                    || (m.phase == "eval" && m.step <= rl_done)
            })?
        } else {
            MetricsWriter::create(&dir)?
        };
        let metrics = match cfg.log.tensorboard {
            true => metrics.with_tensorboard(&dir)?,
            false => metrics,
        };
        let rollouts = match (cfg.rl.export_rollouts.as_str(), resume) {
            ("none", _) => None,
            (_, false) => Some(RolloutWriter::create(&dir, &cfg.name)?),
            (_, true) => Some(RolloutWriter::resume(&dir, &cfg.name, rl_done)?),
        };
        let mut engine = Engine::new(model_cfg, &trainer.weights())?;
        engine.set_kv_precision(cfg.rollout.kv_cache);
        let served = crate::serve::Served::new(&cfg, &dir, &model.files)?;
        let train_set = TaskSet::new(spec.clone(), Split::Train);
        let eval_ids = train_set.eval_ids(cfg.eval.episodes);
        Ok(Run {
            prior_wall: state.wall_s,
            saved: resume.then_some(sft_done + rl_done),
            cfg,
            dir,
            _lock: lock,
            spec,
            tokenizer: model.tokenizer,
            model_files: model.files,
            trainer,
            engine,
            served,
            state,
            metrics,
            rollouts,
            train_set,
            eval_ids,
            started: Instant::now(),
            rl_since: None,
            last_eval: None,
            quiet,
        })
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The trainer (policy weights, optimizer, counters).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// The run's counters.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The metrics rows so far (as in `metrics.parquet`).
    pub fn metrics(&self) -> &[MetricsRow] {
        self.metrics.rows()
    }

    /// RL steps of `rl.steps` not done yet.
    pub fn rl_steps_left(&self) -> u64 {
        (self.cfg.rl.steps as u64).saturating_sub(self.trainer.state().rl_steps)
    }

    fn say(&self, line: String) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    fn wall(&self) -> f64 {
        self.prior_wall + self.started.elapsed().as_secs_f64()
    }

    /// Checkpoints the trainer with the run state (one step, see `trainer::checkpoint`).
    fn save(&mut self) -> anyhow::Result<()> {
        if let Some(since) = self.rl_since.take() {
            self.state.rl_wall_s += since.elapsed().as_secs_f64();
            self.rl_since = Some(Instant::now());
        }
        self.state.wall_s = self.wall();
        self.saved = Some(
            self.state
                .save_with(&self.dir, &self.trainer, &self.model_files)?,
        );
        checkpoint::prune(&self.dir.join("checkpoints"), self.cfg.checkpoint.keep)?;
        Ok(())
    }

    /// Whether the newest checkpoint is of the current step.
    fn is_saved(&self) -> bool {
        let st = self.trainer.state();
        self.saved == Some(st.sft_steps + st.rl_steps)
    }

    /// Runs the SFT steps of `sft.steps` not done yet (checkpointing every
    /// `sft.checkpoint_every`), then the evaluation before RL, and checkpoints. Returns the
    /// held-out result before RL. Nothing to train (a resumed run past SFT) only evaluates
    /// when that result is missing.
    pub fn sft(&mut self) -> anyhow::Result<EvalResult> {
        let sft_done = self.trainer.state().sft_steps as usize;
        if sft_done < self.cfg.sft.steps {
            self.sft_steps(sft_done)?;
        }
        self.before_rl()
    }

    fn sft_steps(&mut self, sft_done: usize) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let started = Instant::now();
        let ids = self.train_set.sample(u64::MAX, cfg.sft.demos, cfg.seed);
        let opts = DemoOptions {
            mistake_rate: cfg.sft.mistake_rate,
            guess_rate: cfg.sft.guess_rate,
            seed: cfg.seed,
        };
        let demos = demonstrations(&self.spec, &ids, &opts);
        if demos.is_empty() {
            bail!(
                "the expert produced no successful demonstration for {}",
                self.spec.name()
            );
        }
        let encoded: Vec<_> = demos
            .iter()
            .map(|d| d.encode(self.tokenizer.as_ref()))
            .collect();
        let (steps, batch, every) = (cfg.sft.steps, cfg.sft.batch, cfg.sft.checkpoint_every);
        let bar = Progress::new(steps as u64, "sft", self.quiet);
        bar.set_position(sft_done as u64);
        let mut order = SftOrder::new(encoded.len(), cfg.seed);
        let mut rows = Vec::new();
        let mut since_save = Instant::now();
        for step in sft_done..steps {
            let chunk: Vec<_> = order
                .batch(step, batch)
                .map(|i| encoded[i].clone())
                .collect();
            self.trainer.set_lr(sft_lr(&self.cfg, step));
            let t0 = Instant::now();
            let stats = self.trainer.sft_step(&sft_batch(&chunk)?)?;
            let wall = t0.elapsed();
            bar.inc(format!("loss {:.3}", stats.loss));
            rows.push(MetricsRow {
                loss: f64::from(stats.loss),
                grad_norm: f64::from(stats.grad_norm),
                lr: stats.lr,
                tokens_per_s: stats.tokens as f64 / wall.as_secs_f64().max(1e-9),
                wall_ms: wall.as_millis() as u64,
                ..MetricsRow::new(step as u64, "sft")
            });
            let done = step + 1;
            // The checkpoint at the end of SFT waits for the evaluation before RL (module docs).
            if done < steps && every > 0 && done.is_multiple_of(every) {
                // The metrics first: a crash before the checkpoint is visible resumes from the
                // previous one and drops these rows again (`MetricsWriter::resume`).
                self.metrics.extend(std::mem::take(&mut rows))?;
                self.state.sft_wall_s += since_save.elapsed().as_secs_f64();
                since_save = Instant::now();
                self.save()?;
            }
        }
        bar.finish();
        self.metrics.extend(rows)?;
        self.state.sft_wall_s += since_save.elapsed().as_secs_f64();
        self.engine.load_weights(&self.trainer.weights())?;
        let final_loss = self
            .metrics
            .rows()
            .iter()
            .rfind(|m| m.phase == "sft")
            .map_or(0.0, |m| m.loss);
        self.say(format!(
            "sft: {steps} steps in {:.1}s, final loss {final_loss:.3}",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The evaluation before RL (once per run) and the checkpoint that holds it.
    fn before_rl(&mut self) -> anyhow::Result<EvalResult> {
        let before = match self.state.before {
            Some(b) => b,
            None => {
                let b = self.evaluate()?;
                self.state.before = Some(b);
                self.say(format!(
                    "eval before RL: success {:.3} ± {:.3} over {} held-out tasks",
                    b.success, b.stderr, b.episodes
                ));
                b
            }
        };
        if !self.is_saved() {
            self.save()?;
        }
        Ok(before)
    }

    /// Evaluates the current policy on the run's fixed held-out episodes and records it as a
    /// `phase = "eval"` metrics row at the current RL step (once per step).
    pub fn evaluate(&mut self) -> anyhow::Result<EvalResult> {
        let (result, stats) = evaluate_with_stats(
            &mut self.engine,
            self.tokenizer.as_ref(),
            &self.spec,
            &self.eval_ids,
            &self.cfg,
            self.cfg.seed,
        )?;
        let at = self.trainer.state().rl_steps;
        let row = eval_row(at, &result, &stats, self.state.generated_tokens);
        push_eval(&mut self.metrics, row)?;
        Ok(result)
    }

    /// One RL step: sample the step's tasks, estimate advantages, export the rollouts (when
    /// due), update the policy, evaluate (when `eval.every` is due) and checkpoint (when
    /// `rl.checkpoint_every` is due, and at the last step). SFT and the evaluation before RL
    /// come first if they have not happened. An error after `rl.steps` steps.
    pub fn rl_step(&mut self) -> anyhow::Result<RlStep> {
        if self.rl_steps_left() == 0 {
            bail!("the run has done all its rl.steps = {}", self.cfg.rl.steps);
        }
        if self.rl_since.is_none() {
            // The first RL step of this invocation: whatever SFT and the evaluation before RL
            // have left undone comes first (nothing, for a run resumed inside RL).
            self.sft()?;
            self.start_rl()?;
        }
        let cfg = &self.cfg;
        let t0 = Instant::now();
        let step = self.trainer.state().rl_steps;
        let ids = self.train_set.sample(step, cfg.rl.tasks_per_step, cfg.seed);
        let tasks: Vec<(u64, AnyEnv)> = ids.iter().map(|&id| (id, self.spec.make(id))).collect();
        let mut rollouts: Vec<TaskRollout> = Vec::new();
        let policy: &mut dyn rollout::policy::Policy = match self.served.as_mut() {
            None => &mut self.engine,
            Some(served) => {
                let probe = self
                    .tokenizer
                    .encode_prompt(envs::Env::prompt(&self.spec.make(self.eval_ids[0])));
                let version = self.trainer.state().sft_steps + self.trainer.state().rl_steps;
                let trainer = &self.trainer;
                served.policy(version, || trainer.weights(), &self.engine, &probe)?
            }
        };
        let stats = sample(
            &cfg.sampler,
            policy,
            self.tokenizer.as_ref(),
            &tasks,
            cfg.seed,
            step,
            &mut rollouts,
        )?;
        self.state.generated_tokens += stats.generated_tokens;
        let opts = EstimateOptions {
            mask_truncated: cfg.rl.mask_truncated,
        };
        let advantages = estimate_with(cfg.rl.estimator, &rollouts, opts)?;
        let groups: Vec<_> = rollouts.iter().zip(advantages.iter()).collect();
        let last = step + 1 == cfg.rl.steps as u64;
        let due = match cfg.rl.export_rollouts.as_str() {
            "every" => step.is_multiple_of(cfg.rl.export_every.max(1) as u64) || last,
            "last" => last,
            _ => false,
        };
        if let (Some(w), true) = (self.rollouts.as_mut(), due) {
            let info = StepInfo {
                step,
                phase: "rl",
                env: self.spec.name(),
                sampler: cfg.sampler.kind.as_str(),
                budget: cfg.sampler.budget,
                estimator: cfg.rl.estimator.name(),
            };
            let with_adv: Vec<_> = groups.iter().map(|&(r, a)| (r, Some(a))).collect();
            w.write_step(&info, &with_adv)?;
        }
        let per_batch = groups.len().div_ceil(cfg.rl.minibatches).max(1);
        let packing = if cfg.rl.packed {
            Packing::Tree
        } else {
            Packing::Flat
        };
        let minibatches = minibatches(&groups, per_batch, cfg.loss_agg()?, packing)?;
        let epochs = cfg.rl.epochs;
        let train = if minibatches.is_empty() {
            self.trainer.skip_rl_step();
            None
        } else {
            Some(self.trainer.rl_step(&minibatches, epochs)?)
        };
        self.engine.load_weights(&self.trainer.weights())?;
        let wall = t0.elapsed();
        let mut row = rl_row(step, &stats, train.as_ref(), wall.as_millis() as u64);
        row.cumulative_generated_tokens = self.state.generated_tokens;
        self.metrics.push(row.clone())?;
        let done = step + 1;
        let every = self.cfg.eval.every as u64;
        let eval = if every > 0 && done.is_multiple_of(every) {
            let e = self.evaluate()?;
            self.last_eval = Some((done, e));
            Some(e)
        } else {
            None
        };
        let every = self.cfg.rl.checkpoint_every as u64;
        if last || (every > 0 && done.is_multiple_of(every)) {
            self.save()?;
        }
        Ok(RlStep { step, row, eval })
    }

    /// Prepares the trainer for RL: the KL reference, fresh optimizer moments at RL step 0 (a
    /// run resumed inside RL continues its checkpoint's), the RL learning rate.
    fn start_rl(&mut self) -> anyhow::Result<()> {
        if self.cfg.rl.kl_coef > 0.0 && self.trainer.reference_weights().is_none() {
            // Not stored in checkpoints when it is the run's initial weights (a run without
            // SFT steps of its own, such as a sweep point starting from the shared SFT
            // checkpoint): `initial_weights` restores it on resume.
            let initial = initial_weights(&self.cfg, self.trainer.model_config())?;
            self.trainer.freeze_reference_of_initial(&initial);
        }
        if self.trainer.state().rl_steps == 0 {
            self.trainer.reset_optimizer();
        }
        self.trainer.set_lr(self.cfg.rl_lr());
        self.rl_since = Some(Instant::now());
        Ok(())
    }

    /// Ends the run (after any number of RL steps): checkpoints the current step, evaluates
    /// the held-out set after RL, writes `summary.json` and returns the outcome.
    pub fn finish(mut self) -> anyhow::Result<RunOutcome> {
        let before = match self.state.before {
            Some(b) => b,
            None => self.sft()?,
        };
        if let Some(w) = self.rollouts.take() {
            w.finish()?;
        }
        if !self.is_saved() {
            self.save()?;
        }
        if let Some(since) = self.rl_since.take() {
            self.state.rl_wall_s += since.elapsed().as_secs_f64();
        }
        let steps_done = self.trainer.state().rl_steps;
        let after = match self.last_eval {
            Some((at, e)) if at == steps_done => e,
            _ => self.evaluate()?,
        };
        self.say(format!(
            "eval after RL:  success {:.3} ± {:.3} over {} held-out tasks",
            after.success, after.stderr, after.episodes
        ));
        let summary = Summary {
            success_before: before.success,
            success_after: after.success,
            stderr_before: before.stderr,
            stderr_after: after.stderr,
            eval_episodes: after.episodes,
            sft_steps: self.cfg.sft.steps,
            steps: self.cfg.rl.steps,
            generated_tokens: self.state.generated_tokens,
            wall_s: self.wall(),
            sft_wall_s: self.state.sft_wall_s,
            rl_wall_s: self.state.rl_wall_s,
            config: self.cfg.clone(),
        };
        summary.save(&self.dir)?;
        Ok(RunOutcome {
            wall_s: summary.wall_s,
            dir: self.dir,
            before,
            after,
        })
    }
}

/// A checkpoint directory and the run configuration it belongs to (if found).
pub struct Resolved {
    /// The `step-N` directory holding `model.safetensors`.
    pub checkpoint: PathBuf,
    /// The run's resolved config, when `DIR` is (inside) a run directory.
    pub run_config: Option<TrainConfig>,
}

/// Accepts a run directory (`runs/<name>`), a checkpoints root (`.../checkpoints`) or one
/// checkpoint (`.../checkpoints/step-N`).
pub fn resolve_checkpoint(dir: &Path) -> anyhow::Result<Resolved> {
    if !dir.exists() {
        bail!("checkpoint {} does not exist", dir.display());
    }
    let (checkpoint, run_dir) = if dir.join("checkpoints").is_dir() {
        (
            checkpoint::latest(&dir.join("checkpoints"))?,
            Some(dir.to_path_buf()),
        )
    } else if dir.join("latest").is_file() {
        (
            checkpoint::latest(dir)?,
            dir.parent().map(Path::to_path_buf),
        )
    } else if dir.join("model.safetensors").is_file() {
        let run = dir.parent().and_then(Path::parent).map(Path::to_path_buf);
        (dir.to_path_buf(), run)
    } else {
        bail!(
            "no checkpoint in {}: expected a run directory, a checkpoints directory or a \
             step directory with model.safetensors",
            dir.display()
        );
    };
    let run_config = match run_dir.map(|d| d.join("config.toml")) {
        Some(path) if path.is_file() => Some(TrainConfig::load(&path)?),
        _ => None,
    };
    Ok(Resolved {
        checkpoint,
        run_config,
    })
}

/// Progress on stderr: a bar on a terminal; off a terminal (a run under `nohup`, a log file)
/// one line per `1/20` of the work, and at the end, so a log shows how far a run is; nothing
/// under `--quiet`.
pub struct Progress {
    bar: ProgressBar,
    lines: bool,
    label: String,
    every: u64,
    started: Instant,
}

impl Progress {
    /// Progress over `len` units labelled `label`.
    pub fn new(len: u64, label: &str, quiet: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::new(len);
        if quiet || !terminal {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{prefix:>5} [{bar:30}] {pos}/{len} {elapsed} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress {
            bar,
            lines: !quiet && !terminal,
            label: label.to_string(),
            every: len.div_ceil(20).max(1),
            started: Instant::now(),
        }
    }

    /// A bar only: the caller prints its own line per unit.
    pub fn bar_only(len: u64, label: &str, quiet: bool) -> Progress {
        Progress {
            lines: false,
            ..Progress::new(len, label, quiet)
        }
    }

    /// Units already done (a resumed run).
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// One more unit done; `msg` describes it.
    pub fn inc(&self, msg: String) {
        self.bar.inc(1);
        let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
        if self.lines && (pos.is_multiple_of(self.every) || pos == len) {
            let secs = self.started.elapsed().as_secs_f64();
            eprintln!("{} {pos}/{len} ({secs:.0}s) {msg}", self.label);
        }
        self.bar.set_message(msg);
    }

    /// Runs `f` (which prints) without the bar in the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Picks the run directory: the configured name, or `<env>-<sampler>` made unique.
fn run_dir(cfg: &mut TrainConfig, resume: bool) -> anyhow::Result<(PathBuf, RunLock)> {
    if resume {
        if cfg.name.is_empty() {
            bail!("--resume needs --name (the run directory to continue)");
        }
        let dir = cfg.out.join(&cfg.name);
        if !dir.is_dir() {
            bail!(
                "cannot resume: run directory {} does not exist",
                dir.display()
            );
        }
        let lock = RunLock::try_acquire(&dir)?;
        return Ok((dir, lock));
    }
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    // The run directory is created exclusively (one atomic mkdir): of two runs started together
    // with the same name, exactly one gets it and the other stops with one line.
    let auto = cfg.name.is_empty();
    let base = format!("{}-{}", cfg.env.name, cfg.sampler.kind);
    let mut k = 1;
    loop {
        let name = match (auto, k) {
            (false, _) => cfg.name.clone(),
            (true, 1) => base.clone(),
            (true, _) => format!("{base}-{k}"),
        };
        let dir = cfg.out.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                cfg.name = name;
                let lock = RunLock::acquire(&dir)?;
                return Ok((dir, lock));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && auto => k += 1,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "run directory {} exists; pass --resume to continue it or --name for a new run",
                dir.display()
            ),
            Err(e) => bail!("creating {}: {e}", dir.display()),
        }
    }
}

/// `run.lock` in a run directory, locked (an OS advisory lock, released when the process ends
/// however it ends) for as long as a process writes the run: a second `--resume` of a run in
/// progress stops with one line instead of interleaving its writes.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    const FILE: &'static str = "run.lock";

    fn open(dir: &Path) -> anyhow::Result<std::fs::File> {
        let path = dir.join(Self::FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Locks the run directory that this process has just created (waiting out a `--resume`
    /// that looked at it in between).
    fn acquire(dir: &Path) -> anyhow::Result<RunLock> {
        let file = Self::open(dir)?;
        file.lock()
            .with_context(|| format!("cannot lock {}", dir.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Locks an existing run directory, or says that another process holds it.
    fn try_acquire(dir: &Path) -> anyhow::Result<RunLock> {
        let file = Self::open(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "run directory {} is in use by another arbor process",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", dir.display()))
            }
        }
    }
}

/// The weights `cfg`'s run starts from, before any update of its own: its `model.init`
/// checkpoint's, its model file's or directory's, or its preset's seeded initialisation.
fn initial_weights(cfg: &TrainConfig, model_cfg: &ModelConfig) -> anyhow::Result<Weights> {
    if let Some(init) = &cfg.model.init {
        let dir = resolve_checkpoint(init)?.checkpoint;
        let ckpt = checkpoint::load(&dir)
            .with_context(|| format!("cannot load checkpoint {}", dir.display()))?;
        return Ok(ckpt.weights);
    }
    Ok(match cfg.model.load()?.weights {
        Some(weights) => weights,
        None => Weights::random(model_cfg, trainer_config(cfg).seed),
    })
}

/// The trainer of the run checkpoint `latest` of `cfg`'s run, its KL reference read back from
/// the run's initial weights when the checkpoint did not store it.
fn resume_trainer(
    latest: &Path,
    cfg: &TrainConfig,
    model_cfg: &ModelConfig,
) -> anyhow::Result<Trainer> {
    let mut ckpt = checkpoint::load(latest)?;
    ckpt.check_model(model_cfg)?;
    if ckpt.reference_is_initial {
        ckpt.reference = Some(initial_weights(cfg, model_cfg)?);
    }
    Ok(ckpt.into_trainer(&training_device(cfg.model.device.primary())?)?)
}

/// A trainer continuing the checkpoint in `dir` under a new run's settings (see
/// [`crate::config::ModelSection::init`]): no reference weights are taken over (RL freezes its own).
fn trainer_from(
    dir: &Path,
    model_cfg: &ModelConfig,
    tcfg: TrainerConfig,
    device: DeviceChoice,
) -> anyhow::Result<Trainer> {
    let dir = &resolve_checkpoint(dir)?.checkpoint;
    let ckpt = checkpoint::load(dir)
        .with_context(|| format!("cannot load checkpoint {}", dir.display()))?;
    if ckpt.model_config != *model_cfg {
        bail!(
            "checkpoint {} holds a different model than the configured preset",
            dir.display()
        );
    }
    let state = TrainerState {
        seed: tcfg.seed,
        sft_steps: ckpt.state.sft_steps,
        rl_steps: 0,
        phase: ckpt.state.phase,
    };
    let trainer = Trainer::restore(
        model_cfg,
        tcfg,
        &ckpt.weights,
        None,
        &ckpt.optimizer,
        state,
        &training_device(device)?,
    )?;
    Ok(trainer)
}

/// The trainer settings of a run.
pub fn trainer_config(cfg: &TrainConfig) -> TrainerConfig {
    TrainerConfig {
        optim: AdamWConfig {
            lr: cfg.sft.lr,
            ..AdamWConfig::default()
        },
        ppo: PpoConfig {
            clip_eps: cfg.rl.clip_eps,
            kl_coef: cfg.rl.kl_coef,
            entropy_coef: cfg.rl.entropy_coef,
            // Score the tempered distribution the sampler draws from (on-policy at T ≠ 1).
            temperature: cfg.sampler.sampling.scoring_temperature(),
            ..PpoConfig::default()
        },
        seed: cfg.seed,
        shuffle_minibatches: true,
        gradient_checkpointing: cfg.model.gradient_checkpointing,
        parallel_shards: cfg.model.parallel_shards,
        ..TrainerConfig::default()
    }
}

/// The order in which SFT visits the demonstrations: a seeded shuffle (by pass number) of the
/// previous order at every step whose batch starts a new pass. A resumed run replays the
/// shuffles of the steps before it, so its batches are the uninterrupted run's.
struct SftOrder {
    order: Vec<usize>,
    seed: u64,
    /// Steps whose shuffles `order` includes.
    replayed: usize,
}

impl SftOrder {
    fn new(len: usize, seed: u64) -> Self {
        SftOrder {
            order: (0..len).collect(),
            seed,
            replayed: 0,
        }
    }

    /// Demonstration indices of SFT step `step` (a batch wraps around the end of a pass).
    fn batch(&mut self, step: usize, batch: usize) -> impl Iterator<Item = usize> + '_ {
        use rand::seq::SliceRandom;
        let len = self.order.len();
        while self.replayed <= step {
            let s = self.replayed;
            if (s * batch) % len < batch {
                let pass = (s * batch / len) as u64;
                self.order
                    .shuffle(&mut envs::rng::rng_for(&[self.seed, 0x5F7, pass]));
            }
            self.replayed += 1;
        }
        let start = (step * batch) % len;
        (0..batch).map(move |i| self.order[(start + i) % len])
    }
}

/// SFT learning rate at `step`: linear warm-up over `sft.warmup` steps, then cosine decay to
/// `sft.min_lr_ratio` of the peak at the last step.
fn sft_lr(cfg: &TrainConfig, step: usize) -> f64 {
    let peak = cfg.sft.lr;
    let warm = ((step + 1) as f64 / cfg.sft.warmup.max(1) as f64).min(1.0);
    let progress = step as f64 / cfg.sft.steps.max(1) as f64;
    let floor = cfg.sft.min_lr_ratio;
    let cosine = floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * warm * cosine
}

fn rl_row(
    step: u64,
    s: &SamplerStats,
    train: Option<&trainer::trainer::StepStats>,
    wall_ms: u64,
) -> MetricsRow {
    let mut row = MetricsRow::from_sampler(step, "rl", s);
    if let Some(t) = train {
        row.loss = f64::from(t.loss);
        row.kl = f64::from(t.kl);
        row.entropy = f64::from(t.entropy);
        row.clip_frac = f64::from(t.clip_frac);
        row.grad_norm = f64::from(t.grad_norm);
        row.lr = t.lr;
    }
    row.wall_ms = wall_ms;
    row.tokens_per_s = s.generated_tokens as f64 * 1000.0 / (wall_ms as f64).max(1.0);
    row
}

/// The `phase = "eval"` metrics row of a held-out evaluation after `rl_steps` RL steps, with
/// `cumulative` RL tokens generated before it.
fn eval_row(rl_steps: u64, e: &EvalResult, stats: &SamplerStats, cumulative: u64) -> MetricsRow {
    MetricsRow {
        success_rate: e.success,
        success_stderr: e.stderr,
        cumulative_generated_tokens: cumulative,
        ..MetricsRow::from_sampler(rl_steps, "eval", stats)
    }
}

/// Appends an eval row unless the table has one for that step already (a resumed run that
/// evaluates the same weights again: the same fixed episodes give the same result).
fn push_eval(metrics: &mut MetricsWriter, row: MetricsRow) -> anyhow::Result<()> {
    let seen = metrics
        .rows()
        .iter()
        .any(|m| m.phase == "eval" && m.step == row.step);
    if !seen {
        metrics.push(row)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SftOrder;

    /// A run resumed at any SFT step sees the batches of the uninterrupted run, whether or not
    /// the batch size divides the number of demonstrations, and when it exceeds it.
    #[test]
    fn sft_order_resumes_with_the_same_batches() {
        for (len, batch) in [(16, 4), (10, 4), (3, 4), (7, 7)] {
            let mut full = SftOrder::new(len, 9);
            let want: Vec<Vec<usize>> = (0..12).map(|s| full.batch(s, batch).collect()).collect();
            // Each pass is a permutation (so the shuffles really happened and differ).
            assert_ne!(want[0], (0..batch).map(|i| i % len).collect::<Vec<_>>());
            for start in 1..12 {
                let mut resumed = SftOrder::new(len, 9);
                for (s, w) in want.iter().enumerate().skip(start) {
                    let got: Vec<usize> = resumed.batch(s, batch).collect();
                    assert_eq!(&got, w, "len {len} batch {batch} resumed at {start}");
                }
            }
        }
    }
}
