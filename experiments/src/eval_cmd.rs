//! `arbor eval`: success of a checkpoint on held-out tasks, with a 95% interval.

use anyhow::{Context, bail};
use datasets::{Split, TaskSet};
use envs::EnvSpec;
use rollout::engine::Engine;
use trainer::checkpoint;

use crate::cli::{EnvArgs, EvalArgs};
use crate::config::TrainConfig;
use crate::evaluate::evaluate_episodes;
use crate::run::resolve_checkpoint;

/// The environment: from the flags if given, else the run's.
pub fn env_for(env: &EnvArgs, run: Option<&TrainConfig>) -> anyhow::Result<(EnvSpec, TrainConfig)> {
    let mut cfg = run.cloned().unwrap_or_default();
    if env.env.is_none() && run.is_none() {
        bail!("--env is needed: the checkpoint is not inside a run");
    }
    env.apply(&mut cfg.env)?;
    let spec = cfg.env_spec()?;
    Ok((spec, cfg))
}

/// Runs `arbor eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let resolved = resolve_checkpoint(&args.checkpoint)?;
    let (_, mut cfg) = env_for(&args.env, resolved.run_config.as_ref())?;
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    cfg.eval.episodes = args.episodes;
    cfg.eval.temperature = args.temperature;
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    // The limits of a run's config hold here too (`--episodes` within `eval.episodes`'s).
    cfg.validate()?;
    let ckpt = checkpoint::load(&resolved.checkpoint)
        .with_context(|| format!("cannot load checkpoint {}", resolved.checkpoint.display()))?;
    let model = cfg.model.load()?;
    let spec = cfg.task_spec(&model)?;
    let tokenizer = model.tokenizer;
    let needs = crate::preflight::TaskNeeds {
        train_per_step: 0,
        eval_episodes: args.episodes,
        seed: args.seed,
    };
    let max_len = ckpt.model_config.max_seq_len;
    crate::preflight::check_tasks(&spec, tokenizer.as_ref(), max_len, needs)?;
    let mut engine = Engine::new(ckpt.model_config.clone(), &ckpt.weights)?;
    let ids = TaskSet::new(spec.clone(), Split::Eval).eval_ids(args.episodes);
    let (r, episodes, _) = evaluate_episodes(
        &mut engine,
        tokenizer.as_ref(),
        &spec,
        &ids,
        &cfg,
        args.seed,
    )?;
    for ep in episodes.iter().take(args.show) {
        for leaf in ep.leaves() {
            let info = ep.node(leaf).leaf.expect("leaves carry their outcome");
            println!(
                "--- task {} (reward {}) ---\n{}",
                ep.task_id,
                info.reward,
                ep.transcript(leaf)
            );
        }
    }
    println!(
        "{} on {} ({} held-out tasks, temperature {}): success {:.3} (95% CI {:.3}..{:.3}), \
         {:.1} generated tokens per episode",
        resolved.checkpoint.display(),
        spec.name(),
        r.episodes,
        args.temperature,
        r.success,
        r.ci95.0,
        r.ci95.1,
        r.tokens_per_episode
    );
    Ok(())
}
