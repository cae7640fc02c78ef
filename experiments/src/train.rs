//! `arbor train`: SFT warm start, held-out evaluation, RL with tree (or chain) rollouts,
//! evaluation again, and a run directory with the resolved config, metrics and a summary.

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
use rollout::engine::{Engine, ModelConfig};
use rollout::policy::SamplingParams;
use rollout::sampler::{SamplerConfig, SamplerKind, SamplerStats, sample};
use rollout::tokenizer::Tokenizer;
use rollout::tree::TaskRollout;
use serde::{Deserialize, Serialize};
use trainer::checkpoint;
use trainer::loss::PpoConfig;
use trainer::optim::AdamWConfig;
use trainer::pack::{Packing, minibatches};
use trainer::sft::sft_batch;
use trainer::trainer::{Trainer, TrainerConfig, TrainerState, default_device};

use crate::cli::TrainArgs;
use crate::config::{TrainConfig, first_difference};
use crate::envs_cmd::parse_knobs;

/// Held-out success of a policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EvalResult {
    /// Episodes run.
    pub episodes: usize,
    /// Share solved.
    pub success: f64,
    /// Standard error of `success` (binomial, sqrt(p(1-p)/n)).
    pub stderr: f64,
    /// 95% Wilson score interval (inside [0, 1], and not empty at 0 or n successes).
    pub ci95: (f64, f64),
    /// Mean generated tokens per episode.
    pub tokens_per_episode: f64,
}

/// What a resumed run needs besides the checkpoint: written atomically with every checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RunState {
    before: Option<EvalResult>,
    generated_tokens: u64,
    sft_wall_s: f64,
    rl_wall_s: f64,
    /// Wall time of the run up to the last save, over all invocations.
    wall_s: f64,
}

impl RunState {
    const FILE: &'static str = "run_state.json";

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
    fn save_with(&self, dir: &Path, trainer: &Trainer) -> anyhow::Result<u64> {
        let st = trainer.state();
        let tag = st.sft_steps + st.rl_steps;
        let json = serde_json::to_string(self)?;
        checkpoint::save_with(
            &dir.join("checkpoints"),
            tag,
            trainer,
            &[(Self::FILE, json.as_bytes())],
        )?;
        Ok(tag)
    }
}

/// Whether the run directory `dir` holds a complete checkpoint with its run state, so that
/// `--resume` can continue it.
pub fn is_resumable(dir: &Path) -> bool {
    checkpoint::latest(&dir.join("checkpoints"))
        .is_ok_and(|ckpt| ckpt.join(RunState::FILE).is_file() || dir.join(RunState::FILE).is_file())
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    success_before: f64,
    success_after: f64,
    stderr_before: f64,
    stderr_after: f64,
    eval_episodes: usize,
    sft_steps: usize,
    steps: usize,
    generated_tokens: u64,
    wall_s: f64,
    sft_wall_s: f64,
    rl_wall_s: f64,
    config: &'a TrainConfig,
}

/// The configuration of `arbor train`: the TOML file (or the defaults) with the command-line
/// overrides; with `--resume`, the run's own `config.toml` (see [`resolve_resume`]).
pub fn resolve(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    if args.resume {
        return resolve_resume(args);
    }
    let mut cfg = match &args.config {
        Some(path) => TrainConfig::load(path)?,
        None => TrainConfig::default(),
    };
    apply_overrides(&mut cfg, args)?;
    cfg.validate()?;
    Ok(cfg)
}

/// `--resume`: the configuration is the run's own `config.toml` (`--out`/`--name` locate the
/// run). Other flags, and a `--config` file, may repeat its values but not change them: a
/// resumed run continues exactly what was started, so a conflicting setting is a one-line error
/// naming the first differing key, and the run's files are left untouched.
pub fn resolve_resume(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let Some(name) = &args.name else {
        bail!("--resume needs --name (the run directory to continue)");
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let dir = out.join(name);
    let path = dir.join("config.toml");
    if !path.is_file() {
        bail!("cannot resume: {} has no config.toml", dir.display());
    }
    let stored = TrainConfig::load(&path)?;
    let mut want = match &args.config {
        Some(file) => TrainConfig::load(file)?,
        None => stored.clone(),
    };
    apply_overrides(&mut want, args)?;
    want.name = stored.name.clone();
    want.out = stored.out.clone();
    if let Some(diff) = first_difference(&stored, &want) {
        bail!(
            "--resume continues {} with its own config.toml; the command line would change {diff}",
            dir.display()
        );
    }
    // The run directory is where the command line says, whatever `out` it was created with.
    let mut cfg = stored;
    cfg.out = out;
    cfg.validate()?;
    Ok(cfg)
}

/// Applies the command-line overrides to a config.
fn apply_overrides(cfg: &mut TrainConfig, args: &TrainArgs) -> anyhow::Result<()> {
    crate::config::apply_sets(cfg, &args.sets)?;
    if let Some(env) = &args.env
        && *env != cfg.env.name
    {
        cfg.env.name = env.clone();
        cfg.env.knobs.clear();
    }
    for (k, v) in parse_knobs(&args.knobs)? {
        cfg.env.knobs.insert(k.to_string(), v.to_string());
    }
    if let Some(t) = &args.tasks {
        cfg.env.tasks = Some(t.clone());
    }
    if let Some(p) = &args.preset {
        cfg.model.preset = p.clone();
    }
    if let Some(d) = &args.model {
        cfg.model.dir = Some(d.clone());
    }
    if let Some(s) = &args.sampler {
        cfg.sampler.kind = s.parse().map_err(|e| anyhow::anyhow!("--sampler: {e}"))?;
    }
    if let Some(b) = &args.branch {
        cfg.sampler.branch = b.parse().map_err(|e| anyhow::anyhow!("--branch: {e}"))?;
    }
    if let Some(g) = &args.granularity {
        cfg.sampler.granularity = g
            .parse()
            .map_err(|e| anyhow::anyhow!("--granularity: {e}"))?;
    }
    if let Some(a) = &args.advantage {
        cfg.rl.estimator = a.parse().map_err(|e| anyhow::anyhow!("--advantage: {e}"))?;
    }
    if let Some(b) = args.budget {
        cfg.sampler.budget = b;
    }
    if let Some(s) = args.sft_steps {
        cfg.sft.steps = s;
    }
    if let Some(s) = args.steps {
        cfg.rl.steps = s;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(o) = &args.out {
        cfg.out = o.clone();
    }
    if let Some(n) = &args.name {
        cfg.name = n.clone();
    }
    if let Some(e) = &args.export_rollouts {
        cfg.rl.export_rollouts = e.clone();
    }
    if let Some(e) = args.episodes {
        cfg.eval.episodes = e;
    }
    if let Some(i) = &args.init {
        cfg.model.init = Some(i.clone());
    }
    Ok(())
}

/// A progress bar on stderr, hidden under `--quiet` or when stderr is not a terminal.
pub fn progress(len: u64, label: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix:>5} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
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

/// How [`run_config`] starts a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Continue the run directory `out/name` from its latest checkpoint (`--resume`); a run
    /// stopped before its first checkpoint starts over from its own config.
    pub resume: bool,
    /// No progress bars or per-step lines.
    pub quiet: bool,
}

/// What [`run_config`] reports about a finished run (also in its `summary.json`).
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

/// Runs `arbor train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = resolve(&args)?;
    let opts = RunOptions {
        resume: args.resume,
        quiet: args.quiet,
    };
    let out = run_config(cfg, &opts)?;
    println!(
        "success before RL {:.3} ± {:.3}, after RL {:.3} ± {:.3} ({} held-out tasks); {:.0}s; {}",
        out.before.success,
        out.before.stderr,
        out.after.success,
        out.after.stderr,
        out.after.episodes,
        out.wall_s,
        out.dir.join("summary.json").display()
    );
    Ok(())
}

/// A trainer continuing the checkpoint in `dir` under a new run's settings (see
/// [`crate::config::ModelSection::init`]): no reference weights are taken over (RL freezes its own).
fn trainer_from(
    dir: &Path,
    model_cfg: &ModelConfig,
    tcfg: TrainerConfig,
) -> anyhow::Result<Trainer> {
    let dir = &crate::eval_cmd::resolve_checkpoint(dir)?.checkpoint;
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
        &default_device(),
    )?;
    Ok(trainer)
}

/// The trainer settings of a run.
fn trainer_config(cfg: &TrainConfig) -> TrainerConfig {
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
        ..TrainerConfig::default()
    }
}

/// Runs one training run of a resolved config (what `arbor train` does after parsing flags):
/// picks and fills the run directory, trains, evaluates and writes `summary.json`.
pub fn run_config(mut cfg: TrainConfig, opts: &RunOptions) -> anyhow::Result<RunOutcome> {
    let spec = cfg.env_spec()?;
    // Load the model before creating anything, so a bad model directory leaves no trace.
    let model = cfg.model.load()?;
    // And check that the task set can feed this run.
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
    // Likewise a bad `init` checkpoint.
    let init_trainer = match &cfg.model.init {
        Some(init) if !opts.resume => {
            Some(trainer_from(init, &model.config, trainer_config(&cfg))?)
        }
        _ => None,
    };
    let (dir, _lock) = run_dir(&mut cfg, opts.resume)?;
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
    let started = Instant::now();
    let model_cfg = model.config.clone();
    let tokenizer = model.tokenizer.as_ref();
    let tcfg = trainer_config(&cfg);
    let resume_from = match opts.resume {
        false => None,
        // Stopped before its first checkpoint: nothing to keep, so the run starts over (from
        // its own config.toml, `model.init` included).
        true => match checkpoint::latest(&dir.join("checkpoints")) {
            Err(trainer::TrainerError::MissingFile { .. }) => {
                say("no checkpoint yet: starting the run over".into());
                None
            }
            other => Some(other.context("cannot resume: no complete checkpoint")?),
        },
    };
    let init_trainer = match (&cfg.model.init, &resume_from, init_trainer) {
        (_, _, Some(t)) => Some(t),
        (Some(init), None, None) => Some(trainer_from(init, &model_cfg, tcfg)?),
        _ => None,
    };
    let resume = resume_from.is_some();
    let (mut trainer, mut run_state) = if let Some(latest) = resume_from {
        let trainer = checkpoint::resume(&latest, &model_cfg, &default_device())
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
        let trainer = Trainer::from_weights(&model_cfg, w, tcfg, &default_device())?;
        (trainer, RunState::default())
    } else {
        (Trainer::new(&model_cfg, tcfg)?, RunState::default())
    };
    let prior_wall = run_state.wall_s;
    let (sft_done, rl_done) = (trainer.state().sft_steps, trainer.state().rl_steps);
    let mut metrics = if resume {
        MetricsWriter::resume(&dir, |m| {
            (m.phase == "sft" && m.step < sft_done)
                || (m.phase == "rl" && m.step < rl_done)
                || (m.phase == "eval" && m.step <= rl_done)
        })?
    } else {
        MetricsWriter::create(&dir)?
    };
    let export = cfg.rl.export_rollouts.as_str();
    let mut rollout_writer = match (export, resume) {
        ("none", _) => None,
        (_, false) => Some(RolloutWriter::create(&dir, &cfg.name)?),
        (_, true) => Some(RolloutWriter::resume(&dir, &cfg.name, rl_done)?),
    };
    let mut engine = Engine::new(model_cfg.clone(), &trainer.weights())?;
    let train_set = TaskSet::new(spec.clone(), Split::Train);

    // --- SFT warm start ---
    let sft_started = Instant::now();
    let sft_done = sft_done as usize;
    let mut sft_rows = Vec::new();
    // The step tag of the newest checkpoint this run has (so the end saves only what is new).
    let mut saved = resume.then_some(sft_done as u64 + rl_done);
    if sft_done < cfg.sft.steps {
        let ids = train_set.sample(u64::MAX, cfg.sft.demos, cfg.seed);
        let opts = DemoOptions {
            mistake_rate: cfg.sft.mistake_rate,
            guess_rate: cfg.sft.guess_rate,
            seed: cfg.seed,
        };
        let demos = demonstrations(&spec, &ids, &opts);
        if demos.is_empty() {
            bail!(
                "the expert produced no successful demonstration for {}",
                spec.name()
            );
        }
        let encoded: Vec<_> = demos.iter().map(|d| d.encode(tokenizer)).collect();
        let bar = progress(cfg.sft.steps as u64, "sft", quiet);
        bar.set_position(sft_done as u64);
        let mut order = SftOrder::new(encoded.len(), cfg.seed);
        let every = cfg.sft.checkpoint_every;
        let mut since_save = Instant::now();
        for step in sft_done..cfg.sft.steps {
            let chunk: Vec<_> = order
                .batch(step, cfg.sft.batch)
                .map(|i| encoded[i].clone())
                .collect();
            trainer.set_lr(sft_lr(&cfg, step));
            let t0 = Instant::now();
            let stats = trainer.sft_step(&sft_batch(&chunk)?)?;
            let wall = t0.elapsed();
            bar.set_message(format!("loss {:.3}", stats.loss));
            bar.inc(1);
            sft_rows.push(MetricsRow {
                loss: f64::from(stats.loss),
                grad_norm: f64::from(stats.grad_norm),
                lr: stats.lr,
                tokens_per_s: stats.tokens as f64 / wall.as_secs_f64().max(1e-9),
                wall_ms: wall.as_millis() as u64,
                ..MetricsRow::new(step as u64, "sft")
            });
            let done = step + 1;
            // The checkpoint at the end of SFT waits for the evaluation before RL, so that it
            // holds that result too (one checkpoint per step tag).
            if done < cfg.sft.steps && every > 0 && done % every == 0 {
                // The metrics first: a crash before the checkpoint is visible resumes from the
                // previous one and drops these rows again (`MetricsWriter::resume`).
                metrics.extend(std::mem::take(&mut sft_rows))?;
                run_state.sft_wall_s += since_save.elapsed().as_secs_f64();
                since_save = Instant::now();
                run_state.wall_s = prior_wall + started.elapsed().as_secs_f64();
                saved = Some(run_state.save_with(&dir, &trainer)?);
            }
        }
        bar.finish_and_clear();
        metrics.extend(std::mem::take(&mut sft_rows))?;
        run_state.sft_wall_s += since_save.elapsed().as_secs_f64();
        engine.load_weights(&trainer.weights())?;
        let final_loss = metrics
            .rows()
            .iter()
            .rfind(|m| m.phase == "sft")
            .map_or(0.0, |m| m.loss);
        say(format!(
            "sft: {} steps in {:.1}s, final loss {:.3}",
            cfg.sft.steps,
            sft_started.elapsed().as_secs_f64(),
            final_loss
        ));
    }

    // --- evaluation before RL ---
    let eval_ids = train_set.eval_ids(cfg.eval.episodes);
    let before = match run_state.before {
        Some(b) => b,
        None => {
            let (b, eval_stats) =
                evaluate_with_stats(&mut engine, tokenizer, &spec, &eval_ids, &cfg, cfg.seed)?;
            push_eval(&mut metrics, eval_row(0, &b, &eval_stats, 0))?;
            run_state.before = Some(b);
            b
        }
    };
    let st = trainer.state();
    if saved != Some(st.sft_steps + st.rl_steps) {
        run_state.wall_s = prior_wall + started.elapsed().as_secs_f64();
        saved = Some(run_state.save_with(&dir, &trainer)?);
    }
    say(format!(
        "eval before RL: success {:.3} ± {:.3} over {} held-out tasks",
        before.success, before.stderr, before.episodes
    ));

    // --- RL ---
    let mut rl_started = Instant::now();
    if cfg.rl.kl_coef > 0.0 && trainer.reference_weights().is_none() {
        trainer.freeze_reference();
    }
    if trainer.state().rl_steps == 0 {
        // RL starts with fresh optimizer moments (see `Trainer::reset_optimizer`); a run
        // resumed inside RL continues the moments of its checkpoint.
        trainer.reset_optimizer();
    }
    trainer.set_lr(cfg.rl.lr);
    let agg = cfg.loss_agg()?;
    let bar = progress(cfg.rl.steps as u64, "rl", quiet);
    let rl_done = trainer.state().rl_steps;
    // The last periodic evaluation (`eval.every`), reused as the final one when it falls on the
    // last step (same weights, same fixed episodes: the same result).
    let mut last_eval: Option<(u64, EvalResult)> = None;
    bar.set_position(rl_done);
    for step in rl_done..cfg.rl.steps as u64 {
        let t0 = Instant::now();
        let ids = train_set.sample(step, cfg.rl.tasks_per_step, cfg.seed);
        let tasks: Vec<(u64, AnyEnv)> = ids.iter().map(|&id| (id, spec.make(id))).collect();
        let mut rollouts: Vec<TaskRollout> = Vec::new();
        let stats = sample(
            &cfg.sampler,
            &mut engine,
            tokenizer,
            &tasks,
            cfg.seed,
            step,
            &mut rollouts,
        )?;
        run_state.generated_tokens += stats.generated_tokens;
        let opts = EstimateOptions {
            mask_truncated: cfg.rl.mask_truncated,
        };
        let advantages = estimate_with(cfg.rl.estimator, &rollouts, opts)?;
        let groups: Vec<_> = rollouts.iter().zip(advantages.iter()).collect();
        let last = step + 1 == cfg.rl.steps as u64;
        let due = match export {
            "every" => step % cfg.rl.export_every.max(1) as u64 == 0 || last,
            "last" => last,
            _ => false,
        };
        if let (Some(w), true) = (rollout_writer.as_mut(), due) {
            let info = StepInfo {
                step,
                phase: "rl",
                env: spec.name(),
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
        let minibatches = minibatches(&groups, per_batch, agg, packing)?;
        let train = if minibatches.is_empty() {
            trainer.skip_rl_step();
            None
        } else {
            Some(trainer.rl_step(&minibatches, cfg.rl.epochs)?)
        };
        engine.load_weights(&trainer.weights())?;
        let wall = t0.elapsed();
        let mut row = rl_row(step, &stats, train.as_ref(), wall.as_millis() as u64);
        row.cumulative_generated_tokens = run_state.generated_tokens;
        bar.set_message(format!(
            "reward {:.3} traj {} trunc {}",
            row.reward_mean, row.trajectories, row.truncated
        ));
        bar.inc(1);
        metrics.push(row)?;
        let done = step + 1;
        if cfg.eval.every > 0 && done % cfg.eval.every as u64 == 0 {
            let (e, eval_stats) =
                evaluate_with_stats(&mut engine, tokenizer, &spec, &eval_ids, &cfg, cfg.seed)?;
            push_eval(
                &mut metrics,
                eval_row(done, &e, &eval_stats, run_state.generated_tokens),
            )?;
            last_eval = Some((done, e));
        }
        let every = cfg.rl.checkpoint_every as u64;
        if last || (every > 0 && (step + 1) % every == 0) {
            run_state.rl_wall_s += rl_started.elapsed().as_secs_f64();
            rl_started = Instant::now();
            run_state.wall_s = prior_wall + started.elapsed().as_secs_f64();
            saved = Some(run_state.save_with(&dir, &trainer)?);
        }
    }
    bar.finish_and_clear();
    if let Some(w) = rollout_writer {
        w.finish()?;
    }
    let st = trainer.state();
    if saved != Some(st.sft_steps + st.rl_steps) {
        run_state.wall_s = prior_wall + started.elapsed().as_secs_f64();
        run_state.save_with(&dir, &trainer)?;
    }

    let steps_done = trainer.state().rl_steps;
    let after = match last_eval {
        Some((at, e)) if at == steps_done => e,
        _ => {
            let (e, eval_stats) =
                evaluate_with_stats(&mut engine, tokenizer, &spec, &eval_ids, &cfg, cfg.seed)?;
            let row = eval_row(steps_done, &e, &eval_stats, run_state.generated_tokens);
            push_eval(&mut metrics, row)?;
            e
        }
    };
    say(format!(
        "eval after RL:  success {:.3} ± {:.3} over {} held-out tasks",
        after.success, after.stderr, after.episodes
    ));
    let summary = Summary {
        success_before: before.success,
        success_after: after.success,
        stderr_before: before.stderr,
        stderr_after: after.stderr,
        eval_episodes: after.episodes,
        sft_steps: cfg.sft.steps,
        steps: cfg.rl.steps,
        generated_tokens: run_state.generated_tokens,
        wall_s: prior_wall + started.elapsed().as_secs_f64(),
        sft_wall_s: run_state.sft_wall_s,
        rl_wall_s: run_state.rl_wall_s,
        config: &cfg,
    };
    let json = serde_json::to_string_pretty(&summary)?;
    write_atomic(&dir.join("summary.json"), json.as_bytes())?;
    Ok(RunOutcome {
        wall_s: summary.wall_s,
        dir,
        before,
        after,
    })
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

/// [`evaluate_episodes`] without the episodes.
fn evaluate_with_stats(
    engine: &mut Engine,
    tokenizer: &dyn Tokenizer,
    spec: &EnvSpec,
    ids: &[u64],
    cfg: &TrainConfig,
    seed: u64,
) -> anyhow::Result<(EvalResult, SamplerStats)> {
    evaluate_episodes(engine, tokenizer, spec, ids, cfg, seed).map(|(r, _, s)| (r, s))
}

/// The 95% Wilson score interval of `successes / n` (z = 1.96).
pub fn wilson95(successes: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n) = (1.96f64, n as f64);
    let p = successes as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One episode per held-out task with the chain sampler (no budget pressure), at the eval
/// temperature: the result, the episodes (one single-leaf tree per task) and the sampler's
/// counters.
pub fn evaluate_episodes(
    engine: &mut Engine,
    tokenizer: &dyn Tokenizer,
    spec: &EnvSpec,
    ids: &[u64],
    cfg: &TrainConfig,
    seed: u64,
) -> anyhow::Result<(EvalResult, Vec<TaskRollout>, SamplerStats)> {
    let tasks: Vec<(u64, AnyEnv)> = ids.iter().map(|&id| (id, spec.make(id))).collect();
    let max_turns = tasks
        .iter()
        .map(|(_, e)| envs::Env::max_turns(e))
        .max()
        .unwrap_or(1);
    let sc = SamplerConfig {
        kind: SamplerKind::Chain,
        budget: (max_turns * cfg.sampler.max_action_tokens) as u32,
        initial_chains: 1,
        max_trajectories: 1,
        max_action_tokens: cfg.sampler.max_action_tokens,
        sampling: SamplingParams {
            temperature: cfg.eval.temperature,
            ..SamplingParams::default()
        },
        ..SamplerConfig::default()
    };
    let mut sink: Vec<TaskRollout> = Vec::new();
    // A fixed evaluation stream: the same episodes' randomness before and after RL.
    let stats = sample(&sc, engine, tokenizer, &tasks, seed, u64::MAX, &mut sink)?;
    let n = sink.len().max(1) as f64;
    let p = stats.successes as f64 / n;
    let se = (p * (1.0 - p) / n).sqrt();
    let result = EvalResult {
        episodes: sink.len(),
        success: p,
        stderr: se,
        ci95: wilson95(stats.successes, sink.len() as u64),
        tokens_per_episode: stats.generated_tokens as f64 / n,
    };
    Ok((result, sink, stats))
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
