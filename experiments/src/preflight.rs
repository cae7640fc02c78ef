//! Checks of a task set against what a command will ask of it, made before any directory is
//! created or any step runs: a run that cannot finish should not start.

use anyhow::bail;
use datasets::{Split, TaskSet};
use envs::{Env, EnvSpec};
use rollout::tokenizer::Tokenizer;

/// What a command will draw from a task set.
#[derive(Debug, Clone, Copy)]
pub struct TaskNeeds {
    /// Distinct training tasks per step (0: none, e.g. no RL steps).
    pub train_per_step: usize,
    /// Held-out episodes (0: none).
    pub eval_episodes: usize,
    /// The run's seed (which training tasks the first step draws).
    pub seed: u64,
}

/// Generated tasks whose prompts are measured (a sample: their prompts are short and bounded by
/// the knobs; every row of a task file is measured).
const GENERATED_SAMPLE: usize = 64;

/// Checks that `spec` has the tasks `needs` asks for and that their prompts fit a context
/// window of `max_len` tokens (with `<bos>` and room for one generated token).
pub fn check_tasks(
    spec: &EnvSpec,
    tokenizer: &dyn Tokenizer,
    max_len: usize,
    needs: TaskNeeds,
) -> anyhow::Result<()> {
    let train = TaskSet::new(spec.clone(), Split::Train);
    let eval = TaskSet::new(spec.clone(), Split::Eval);
    if needs.eval_episodes > 0 && eval.is_empty() {
        bail!(
            "the held-out split of {} has no tasks (a task file needs at least 2 rows)",
            spec.name()
        );
    }
    if (train.len() as u128) < needs.train_per_step as u128 {
        bail!(
            "rl.tasks_per_step is {} but the training split of {} has {} tasks; lower it or \
             add rows",
            needs.train_per_step,
            spec.name(),
            train.len()
        );
    }
    let ids: Vec<u64> = match spec.task_count() {
        Some(_) => {
            let mut all = train.first(usize::MAX);
            all.extend(eval.first(usize::MAX));
            all
        }
        None => {
            let mut some = eval.first(needs.eval_episodes.min(GENERATED_SAMPLE));
            some.extend(train.sample(0, needs.train_per_step.min(GENERATED_SAMPLE), needs.seed));
            some
        }
    };
    for id in ids {
        let env = spec.make(id);
        let len = 1 + tokenizer.encode(env.prompt()).len();
        if len >= max_len {
            bail!(
                "task {id} of {}: its prompt of {len} tokens does not fit the model's context \
                 window of {max_len}",
                spec.name()
            );
        }
    }
    Ok(())
}
