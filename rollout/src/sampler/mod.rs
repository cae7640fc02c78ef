//! Chain and tree samplers under a hard per-task token budget (DESIGN §4–§5).
//!
//! # Map
//! - [`SamplerConfig`] — chain or tree, budget, M/N/L, granularity, branching policy, sampling.
//! - [`sample`] — grows the trajectories of a batch of tasks with one [`Policy`], pushes each
//!   finished task group into a [`TreeSink`] and returns the step's [`SamplerStats`].
//! - `branching` (private) — the branching policies: which fork points a tree round picks.
//! - `spans`, `schedule`, `arena` (private) — the working state (spans, live branches, task
//!   groups), the budget-bounded schedule of chains, rounds and branches, and the cut of a
//!   finished group into the tree arena; `stats` — [`SamplerStats`] and [`Error`].
//!
//! # How a step runs
//! Every task keeps a list of *spans*: a span is the run of tokens one branch added after its
//! fork point (its prefix is shared with the span it forked from, or is the prompt). All live
//! spans of all tasks decode together, one [`Policy::decode`] batch per token. When an action ends
//! (`<eos>` or `max_action_tokens`), its environment steps (rayon across the finished actions);
//! the observation is appended to the span's sequence, and the environment state is kept at that
//! turn start so that later branches can continue from a clone of it.
//!
//! - `chain`: `initial_chains` trajectories start at once; whenever one ends, new ones start
//!   while the remaining budget, minus what the live ones are still expected to use, covers the
//!   mean cost of a finished trajectory.
//! - `tree`: `initial_chains` (M) trees grow one chain each, and with `root_share` > 0 more
//!   chains (each a new tree) start, scheduled like the chain sampler, until that share of the
//!   budget is committed; then, round after round, the
//!   branching policy proposes fork points per tree and up to `branches_per_round` (N) of them
//!   start, each only if the remaining budget covers its expected cost: the mean number of action
//!   tokens the finished trajectories through that point generated after it. A round starts when
//!   the task's previous round has finished; a task stops when a round can start nothing, or after
//!   `max_rounds`.
//!
//! # Choosing the defaults
//! The tree defaults (`branch = entropy`, `root_share = 0.5`, M = 2, N = 2, step granularity
//! for the turn-start candidates, `tree-grpo`) were chosen by held-out learning curves against
//! generated RL tokens (`arbor sweep --eval-every`; README, "Tree vs chain"). On 2-hop
//! multihop, 3 seeds from one SFT policy (held-out success 0.50-0.59), the tree at a quarter of
//! the chain's budget (B/4 = 128 against B = 512) reached the chain's final success (0.892)
//! with 0.32 ± 0.03 of the chain's generated tokens with entropy forks (2 of 3 seeds within 50
//! steps) and 0.42 ± 0.06 with random forks (3 of 3); the chain at B/4 stalled at 0.64. At
//! B = 512 entropy forks ended highest (0.909 ± 0.010, random 0.889 ± 0.024, chain
//! 0.892 ± 0.022). A single-seed ablation before it (20 steps) put root share 0.5 ahead of
//! M = 2 trees only (0.887 against 0.859 at B/4 with entropy forks). The evidence between the two
//! branching policies is within noise at B/4; entropy is the default because it ended highest
//! at B and spends forks where the policy is undecided. Why these levers:
//! - `root_share`: with M = 2 trees the decisive first action (search or give up) is sampled
//!   only twice plus the root forks; spending half the budget on independent trees samples it
//!   about as often as the chain does, and the other half still buys cheap shared-prefix forks.
//! - `entropy`: a confident policy resampling a whole turn from a random turn start mostly
//!   repeats itself; forking at the highest-entropy tokens (TreeRL's EPTree) puts the forks
//!   where the policy is undecided. Its token-level nodes cost little in training (tree-packed
//!   attention is linear in the number of spans): 1.6 s per RL step against 1.5 s for random
//!   forks at B = 512 in those runs.
//!
//! # The budget (DESIGN §4)
//! Before each decode, a task with `r` tokens of budget left decodes at most `r` of its live
//! spans; the others are cut (`truncated`, reward 0, kept and reported). A span that had generated
//! nothing when it was cut is dropped: it holds no trajectory. Prompt and observation tokens are
//! `prefill_tokens`, not budget. Forks reuse the prefix's KV cache ([`Policy::fork_at`]), so
//! `cached_tokens` counts the context tokens a branch did not recompute.
//!
//! # Determinism
//! The token at position `p` of span `s` of task `t` is drawn with the key
//! `derive(seed, step, t, s, p)`, and branching draws with `derive(seed, step, t, tag, round)`.
//! A task's spans are numbered in the order its own schedule creates them, which depends only on
//! its own results; so a step is a pure function of (config, seed, step, tasks, weights), whatever
//! the batch composition or thread count.
//!
//! # From spans to the tree arena
//! When a task group finishes, its spans are cut into [`crate::tree::Node`]s at every action /
//! observation change, at every fork point and (with `segment` granularity) at every segment
//! boundary, in span creation order, so parents always precede children. Cuts inside an action
//! fall only before tokens where [`Tokenizer::can_split_before`] holds, so node texts add up to
//! exactly the text the environment received.

mod arena;
mod branching;
mod config;
mod schedule;
mod spans;
mod stats;

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use envs::Env;
use envs::rng::derive;
use rayon::prelude::*;

pub use config::{BranchPolicy, Granularity, MAX_BUDGET, MAX_COUNT, SamplerConfig, SamplerKind};

use crate::policy::{DecodeRequest, Policy, SeqHandle};
use crate::tokenizer::Tokenizer;
use crate::tree::{LeafInfo, NodeId, NodeKind, TaskRollout, TreeSink};

use crate::Error;
use arena::*;
use schedule::*;
use spans::*;
pub use stats::SamplerStats;

/// Grows trajectories for `tasks` with `policy` under `cfg`, pushes each finished task group into
/// `sink`, and returns the step's counters. See the module docs for the schedule, the budget and
/// determinism.
///
/// `tasks` are `(task_id, environment at its start)`; `step` and `seed` feed the RNG keys.
pub fn sample<E, P, S>(
    cfg: &SamplerConfig,
    policy: &mut P,
    tokenizer: &dyn Tokenizer,
    tasks: &[(u64, E)],
    seed: u64,
    step: u64,
    sink: &mut S,
) -> Result<SamplerStats, Error>
where
    E: Env,
    P: Policy + ?Sized,
    S: TreeSink + ?Sized,
{
    cfg.validate()?;
    let started = Instant::now();
    let stats_before = policy.stats();
    let mut stats = SamplerStats::default();
    let mut states = Vec::with_capacity(tasks.len());
    for (task_id, env) in tasks {
        let mut prompt_tokens = tokenizer.encode_prompt(env.prompt());
        if prompt_tokens.is_empty() {
            // A tree needs a root token: an empty prompt without BOS gets one anyway.
            prompt_tokens.push(tokenizer.bos());
        }
        if prompt_tokens.len() >= policy.max_len() {
            return Err(Error::PromptTooLong {
                task_id: *task_id,
                len: prompt_tokens.len(),
                max: policy.max_len(),
            });
        }
        let prompt_seq = policy.start(&prompt_tokens)?;
        stats.prefill_tokens += prompt_tokens.len() as u64;
        states.push(TaskState {
            task_id: *task_id,
            env: env.clone(),
            prompt_tokens,
            prompt_seq,
            spans: Vec::new(),
            live: Vec::new(),
            generated: 0,
            rounds: 0,
            round_start_generated: 0,
            started_initial: false,
            roots_done: false,
            finished: false,
            used: BTreeSet::new(),
        });
    }

    let result = run_loop(cfg, policy, tokenizer, &mut states, seed, step, &mut stats);
    // Free every sequence, also on error.
    for st in &mut states {
        policy.release(st.prompt_seq);
        for span in &mut st.spans {
            if let Some(seq) = span.seq.take() {
                policy.release(seq);
            }
        }
    }
    result?;

    for st in &states {
        let rollout = to_rollout(st, cfg, tokenizer)?;
        let leaves = rollout.leaves();
        stats.groups += 1;
        stats.generated_tokens += u64::from(st.generated);
        stats.trajectories += leaves.len() as u64;
        stats.distinct_trajectories += rollout.distinct_trajectories() as u64;
        let mut successes = 0;
        for &l in &leaves {
            let Some(info) = rollout.node(l).leaf.as_ref() else {
                continue;
            };
            stats.truncated += u64::from(info.truncated);
            successes += u64::from(info.success);
            stats.reward_sum += f64::from(info.reward);
            stats.reward_sq_sum += f64::from(info.reward) * f64::from(info.reward);
            let len = rollout.path_action_tokens(l) as u64;
            stats.response_tokens += len;
            stats.response_tokens_max = stats.response_tokens_max.max(len);
        }
        stats.successes += successes;
        stats.solved_groups += u64::from(successes > 0);
        stats.zero_adv_groups += u64::from(crate::advantage::zero_adv_group(&rollout));
        sink.accept(step, &rollout);
    }
    let after = policy.stats();
    stats.cached_tokens = after.cached_tokens - stats_before.cached_tokens;
    stats.computed_tokens = after.computed_tokens - stats_before.computed_tokens;
    stats.wall_ms = started.elapsed().as_millis() as u64;
    Ok(stats)
}

/// One action that just ended and waits for its environment step.
struct PendingStep<E> {
    task: usize,
    live: usize,
    env: E,
    text: String,
}

fn run_loop<E, P>(
    cfg: &SamplerConfig,
    policy: &mut P,
    tokenizer: &dyn Tokenizer,
    states: &mut [TaskState<E>],
    seed: u64,
    step: u64,
    stats: &mut SamplerStats,
) -> Result<(), Error>
where
    E: Env,
    P: Policy + ?Sized,
{
    let eos = tokenizer.eos();
    let max_len = policy.max_len();
    loop {
        for st in states.iter_mut() {
            if !st.finished {
                schedule(cfg, policy, tokenizer, st, seed, step)?;
            }
        }
        // One decode batch over every live span of every task, within each task's budget.
        let mut requests = Vec::new();
        let mut owners = Vec::new();
        for (t, st) in states.iter_mut().enumerate() {
            // Cut what the budget or the context window cannot extend, then decode the rest.
            let mut allowed = cfg.budget.saturating_sub(st.generated) as usize;
            let mut keep = Vec::with_capacity(st.live.len());
            for live in &st.live {
                let seq = st.spans[live.span].seq.expect("live spans hold a sequence");
                let fits = policy.seq_len(seq)? < max_len;
                keep.push(fits && allowed > 0);
                if fits && allowed > 0 {
                    allowed -= 1;
                }
            }
            for l in (0..st.live.len()).rev() {
                if !keep[l] {
                    let live = st.live.remove(l);
                    truncate(policy, &mut st.spans[live.span]);
                }
            }
            for (l, live) in st.live.iter().enumerate() {
                let span = &st.spans[live.span];
                st.generated += 1;
                requests.push(DecodeRequest {
                    seq: span.seq.expect("live spans hold a sequence"),
                    rng_key: derive(&[seed, step, st.task_id, live.span as u64, span.end() as u64]),
                });
                owners.push((t, l));
            }
        }
        if requests.is_empty() {
            if states.iter().all(|s| s.finished) {
                return Ok(());
            }
            continue;
        }
        let sampled = policy.decode(&requests, &cfg.sampling)?;

        // Append the tokens; collect actions that ended.
        let mut ended: Vec<(usize, usize)> = Vec::new();
        for (&(t, l), s) in owners.iter().zip(&sampled) {
            let st = &mut states[t];
            let live = &mut st.live[l];
            let span = &mut st.spans[live.span];
            span.tokens.push(s.token);
            span.is_action.push(true);
            span.logprobs.push(s.logprob);
            span.entropies.push(s.entropy);
            live.turn_tokens.push(s.token);
            if s.token == eos || live.turn_tokens.len() >= cfg.max_action_tokens {
                ended.push((t, l));
            }
        }
        if ended.is_empty() {
            continue;
        }
        // Environment steps, in parallel across the ended actions.
        let mut pending: Vec<PendingStep<E>> = ended
            .iter()
            .map(|&(t, l)| {
                let live = &states[t].live[l];
                PendingStep {
                    task: t,
                    live: l,
                    env: live.env.clone(),
                    text: turn_text(tokenizer, &live.turn_tokens, &live.turn_cuts),
                }
            })
            .collect();
        let steps: Vec<envs::Step> = pending
            .par_iter_mut()
            .map(|p| p.env.step(&p.text))
            .collect();
        // Apply in reverse live order per task so removals keep indices valid.
        let mut order: Vec<usize> = (0..pending.len()).collect();
        order.sort_by_key(|&i| (pending[i].task, std::cmp::Reverse(pending[i].live)));
        let mut pending: Vec<Option<PendingStep<E>>> = pending.into_iter().map(Some).collect();
        for i in order {
            let p = pending[i]
                .take()
                .expect("each pending step is applied once");
            let outcome = &steps[i];
            let st = &mut states[p.task];
            let reward = st.live[p.live].reward + outcome.reward;
            let span_idx = st.live[p.live].span;
            if outcome.done {
                st.spans[span_idx].leaf = Some(LeafInfo::finished(reward, outcome.outcome));
                st.live.remove(p.live);
                continue;
            }
            let seq = st.spans[span_idx].seq.expect("live spans hold a sequence");
            let obs_tokens = tokenizer.encode(&outcome.observation);
            let fits = policy.seq_len(seq)? + obs_tokens.len() < max_len;
            if st.generated >= cfg.budget || !fits {
                st.spans[span_idx].leaf = Some(LeafInfo::truncated(Some(outcome.outcome)));
                st.live.remove(p.live);
                continue;
            }
            policy.append(seq, &obs_tokens)?;
            stats.prefill_tokens += obs_tokens.len() as u64;
            let span = &mut st.spans[span_idx];
            let obs_start = span.end();
            let n = obs_tokens.len();
            span.tokens.extend(obs_tokens);
            span.is_action.extend(std::iter::repeat_n(false, n));
            span.logprobs.extend(std::iter::repeat_n(0.0, n));
            span.entropies.extend(std::iter::repeat_n(0.0, n));
            span.observations
                .push((obs_start, obs_start + n, outcome.observation.clone()));
            span.turn_starts.push(TurnStart {
                pos: obs_start + n,
                env: p.env.clone(),
                reward,
            });
            let live = &mut st.live[p.live];
            live.env = p.env;
            live.reward = reward;
            live.turn_tokens.clear();
            live.turn_cuts.clear();
        }
    }
}

/// Cuts a live span: a truncated leaf, or dropped if it never generated anything. A span whose
/// last run is an observation gives that observation back, so its leaf is an action.
fn truncate<E, P: Policy + ?Sized>(policy: &mut P, span: &mut Span<E>) {
    if let Some(&(obs_start, obs_end, _)) = span.observations.last()
        && obs_end == span.end()
    {
        let keep = span.at(obs_start);
        span.tokens.truncate(keep);
        span.is_action.truncate(keep);
        span.logprobs.truncate(keep);
        span.entropies.truncate(keep);
        span.observations.pop();
        span.turn_starts.pop();
    }
    if span.tokens.is_empty() {
        span.dropped = true;
        if let Some(seq) = span.seq.take() {
            policy.release(seq);
        }
    } else {
        span.leaf = Some(LeafInfo::truncated(None));
    }
}

#[cfg(test)]
mod tests;
