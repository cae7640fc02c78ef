//! Held-out evaluation: one episode per fixed held-out task with the chain sampler, its success
//! rate, standard error and Wilson interval.

use envs::{AnyEnv, EnvSpec};
use rollout::engine::Engine;
use rollout::policy::SamplingParams;
use rollout::sampler::{SamplerConfig, SamplerKind, SamplerStats, sample};
use rollout::tokenizer::Tokenizer;
use rollout::tree::TaskRollout;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

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

/// [`evaluate_episodes`] without the episodes.
pub fn evaluate_with_stats(
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

/// What a policy achieves on the held-out tasks when each task gets one budgeted rollout with
/// the run's sampler (tree or chain) at its training temperature: a task counts as solved when
/// any of its trajectories succeeds, so this is success *under a token budget*, the test-time
/// side of the capability × budget question (`arbor sweep --rl-steps 0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetResult {
    /// Held-out tasks.
    pub tasks: u64,
    /// Tasks with at least one successful trajectory.
    pub solved: u64,
    /// `solved / tasks`.
    pub success: f64,
    /// 95% Wilson interval of `success`.
    pub ci95: (f64, f64),
    /// Tokens generated over all tasks.
    pub generated_tokens: u64,
    /// Trajectories (leaves) sampled.
    pub trajectories: u64,
    /// Trajectories cut by the budget or the context.
    pub truncated: u64,
}

impl BudgetResult {
    /// Generated tokens per solved task (NaN when none was solved).
    pub fn tokens_per_solved(&self) -> f64 {
        match self.solved {
            0 => f64::NAN,
            s => self.generated_tokens as f64 / s as f64,
        }
    }
}

/// Samples each task of `ids` once with `sampler` (its kind, budget and temperature) and
/// counts the tasks solved by any trajectory.
pub fn evaluate_at_budget(
    engine: &mut Engine,
    tokenizer: &dyn Tokenizer,
    spec: &EnvSpec,
    ids: &[u64],
    sampler: &SamplerConfig,
    seed: u64,
) -> anyhow::Result<BudgetResult> {
    let tasks: Vec<(u64, AnyEnv)> = ids.iter().map(|&id| (id, spec.make(id))).collect();
    let mut sink: Vec<TaskRollout> = Vec::new();
    // Stream u64::MAX - 1: apart from training steps and the fixed evaluation stream.
    let stats = sample(
        sampler,
        engine,
        tokenizer,
        &tasks,
        seed,
        u64::MAX - 1,
        &mut sink,
    )?;
    let solved = sink
        .iter()
        .filter(|r| {
            r.leaves()
                .iter()
                .any(|&l| r.node(l).leaf.is_some_and(|i| i.success))
        })
        .count() as u64;
    let n = sink.len() as u64;
    Ok(BudgetResult {
        tasks: n,
        solved,
        success: if n == 0 {
            0.0
        } else {
            solved as f64 / n as f64
        },
        ci95: wilson95(solved, n),
        generated_tokens: stats.generated_tokens,
        trajectories: stats.trajectories,
        truncated: stats.truncated,
    })
}
