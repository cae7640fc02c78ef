//! `arbor rollout`: sample trees with a checkpoint's policy and export them, without training.
//! With `--rollout-server URL` an inference server serving that policy samples instead of the
//! in-process engine ([`rollout::server::ServerPolicy`]).
//!
//! The output directory reads like a run directory (`arbor inspect` and [`check_run_files`]
//! accept it):
//! ```text
//! <out>/config.toml          the resolved settings (environment, sampler, estimator, seed)
//! <out>/rollout.json         the checkpoint, task split, steps and totals
//! <out>/trajectories.parquet one row per leaf trajectory, phase "rollout", with advantages
//! <out>/nodes.parquet        one row per tree node
//! <out>/metrics.parquet      one row per sampling step (+ metrics.csv)
//! ```
//! Step `s` samples `tasks_per_step` tasks of the chosen split with
//! `TaskSet::sample(s, tasks_per_step, seed)` and the sampler seed `seed`, exactly as RL step
//! `s` of a run with that seed would (on the train split); advantages use the configured
//! estimator. Everything is validated before the directory is created, and an existing
//! non-empty directory is never written into.
//!
//! [`check_run_files`]: datasets::export::check_run_files

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use datasets::atomic::write_atomic;
use datasets::export::{MetricsRow, MetricsWriter, RolloutWriter, StepInfo};
use datasets::{Split, TaskSet};
use envs::AnyEnv;
use rollout::advantage::estimate;
use rollout::engine::Engine;
use rollout::policy::Policy;
use rollout::sampler::{SamplerStats, sample};
use rollout::server::{ServerConfig, ServerPolicy};
use rollout::tree::TaskRollout;
use serde::Serialize;
use trainer::checkpoint;

use crate::cli::{RolloutArgs, SplitArg};
use crate::eval_cmd::env_for;
use crate::run::resolve_checkpoint;

/// Contents of `rollout.json`.
#[derive(Debug, Serialize)]
struct RolloutInfo {
    checkpoint: String,
    /// The inference server that sampled (`--rollout-server`), if not the engine.
    rollout_server: Option<String>,
    split: &'static str,
    steps: usize,
    tasks_per_step: usize,
    seed: u64,
    trajectories: u64,
    task_groups: u64,
    generated_tokens: u64,
    success_rate: f64,
    wall_s: f64,
}

/// Runs `arbor rollout`.
pub fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let resolved = resolve_checkpoint(&args.checkpoint)?;
    let (_, mut cfg) = env_for(&args.env, resolved.run_config.as_ref())?;
    let model = cfg.model.load()?;
    let spec = cfg.task_spec(&model)?;
    let tokenizer = model.tokenizer;
    args.sampling.apply(&mut cfg);
    if let Some(n) = args.tasks_per_step {
        cfg.rl.tasks_per_step = n;
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let split = match args.split {
        SplitArg::Eval => Split::Eval,
        SplitArg::Train => Split::Train,
    };
    cfg.seed = args.seed;
    cfg.rl.steps = args.steps;
    let out = &args.out;
    cfg.name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rollout".into());
    cfg.out = out.parent().map(Path::to_path_buf).unwrap_or_default();
    cfg.validate()?;
    let ckpt = checkpoint::load(&resolved.checkpoint)
        .with_context(|| format!("cannot load checkpoint {}", resolved.checkpoint.display()))?;
    let (train, eval) = match split {
        Split::Train => (cfg.rl.tasks_per_step, 0),
        Split::Eval => (0, cfg.rl.tasks_per_step),
    };
    let needs = crate::preflight::TaskNeeds {
        train_per_step: train,
        eval_episodes: eval,
        seed: cfg.seed,
    };
    let max_len = ckpt.model_config.max_seq_len;
    crate::preflight::check_tasks(&spec, tokenizer.as_ref(), max_len, needs)?;
    let mut policy: Box<dyn Policy> = match &args.rollout_server {
        None => Box::new(Engine::new(ckpt.model_config.clone(), &ckpt.weights)?),
        Some(url) => Box::new(ServerPolicy::connect(ServerConfig {
            url: url.clone(),
            ..ServerConfig::default()
        })?),
    };
    drop(ckpt);
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("--out {} is not a readable directory", out.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "--out {} exists and is not empty; choose a new directory",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;

    let started = Instant::now();
    let tasks = TaskSet::new(spec.clone(), split);
    let mut writer = RolloutWriter::create(out, &cfg.name)?;
    let mut metrics = MetricsWriter::create(out)?;
    let bar = crate::run::Progress::new(args.steps as u64, "roll", args.quiet);
    let mut total = SamplerStats::default();
    for step in 0..args.steps as u64 {
        let ids = tasks.sample(step, cfg.rl.tasks_per_step, cfg.seed);
        if ids.is_empty() {
            bail!("the {split:?} split of {} has no tasks", spec.name());
        }
        let envs: Vec<(u64, AnyEnv)> = ids.iter().map(|&id| (id, spec.make(id))).collect();
        let mut rollouts: Vec<TaskRollout> = Vec::new();
        let stats = sample(
            &cfg.sampler,
            policy.as_mut(),
            tokenizer.as_ref(),
            &envs,
            cfg.seed,
            step,
            &mut rollouts,
        )?;
        let advantages = estimate(cfg.rl.estimator, &rollouts)?;
        let groups: Vec<_> = rollouts
            .iter()
            .zip(advantages.iter())
            .map(|(r, a)| (r, Some(a)))
            .collect();
        let info = StepInfo {
            step,
            phase: "rollout",
            env: spec.name(),
            sampler: cfg.sampler.kind.as_str(),
            budget: cfg.sampler.budget,
            estimator: cfg.rl.estimator.name(),
        };
        writer.write_step(&info, &groups)?;
        metrics.push(MetricsRow::from_sampler(step, "rollout", &stats))?;
        total.merge(&stats);
        bar.inc(format!(
            "success {:.3} traj {}",
            stats.success_rate(),
            stats.trajectories
        ));
    }
    bar.finish();
    writer.finish()?;
    let info = RolloutInfo {
        checkpoint: resolved.checkpoint.display().to_string(),
        rollout_server: args.rollout_server.clone(),
        split: match split {
            Split::Eval => "eval",
            Split::Train => "train",
        },
        steps: args.steps,
        tasks_per_step: cfg.rl.tasks_per_step,
        seed: cfg.seed,
        trajectories: total.trajectories,
        task_groups: total.groups,
        generated_tokens: total.generated_tokens,
        success_rate: total.success_rate(),
        wall_s: started.elapsed().as_secs_f64(),
    };
    write_atomic(
        &out.join("rollout.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    println!(
        "{} trajectories in {} task groups ({} {}, budget {}, {} steps): success {:.3}, {} \
         generated tokens, {} distinct trajectories; {:.1}s; {}",
        total.trajectories,
        total.groups,
        spec.name(),
        cfg.sampler.kind,
        cfg.sampler.budget,
        args.steps,
        total.success_rate(),
        total.generated_tokens,
        total.distinct_trajectories,
        info.wall_s,
        out.display()
    );
    Ok(())
}
