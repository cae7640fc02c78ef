//! Chain and tree samplers under a hard per-task token budget (DESIGN §4–§5).
//!
//! # Map
//! - [`SamplerConfig`] — chain or tree, budget, M/N/L, granularity, branching policy, sampling.
//! - [`sample`] — grows the trajectories of a batch of tasks with one [`Policy`], pushes each
//!   finished task group into a [`TreeSink`] and returns the step's [`SamplerStats`].
//! - `branching` (private) — the branching policies: which fork points a tree round picks.
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

mod branching;
mod config;

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use envs::Env;
use envs::rng::derive;
use rayon::prelude::*;

pub use config::{
    BranchPolicy, ConfigError, Granularity, MAX_BUDGET, MAX_COUNT, SamplerConfig, SamplerKind,
};

use crate::policy::{DecodeRequest, Policy, PolicyError, SeqHandle};
use crate::tokenizer::Tokenizer;
use crate::tree::{LeafInfo, NodeId, NodeKind, TaskRollout, TreeError, TreeSink};

/// Errors of a sampling step.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy backend failed (other than a context overflow, which truncates).
    #[error("policy failed while sampling: {0}")]
    Policy(#[from] PolicyError),
    /// A task's prompt does not fit the policy's context window.
    #[error("task {task_id}: prompt of {len} tokens does not fit the context window of {max}")]
    PromptTooLong {
        /// The task.
        task_id: u64,
        /// Prompt length in tokens (with `<bos>`).
        len: usize,
        /// The policy's context window.
        max: usize,
    },
    /// Internal consistency check of the produced tree failed (a bug; please report).
    #[error("task {task_id}: sampler produced an invalid tree: {source}")]
    Tree {
        /// The task.
        task_id: u64,
        /// What was wrong.
        source: TreeError,
    },
}

/// Counters of one sampling step over all its task groups (DESIGN §4, §9 metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerStats {
    /// Task groups sampled.
    pub groups: u64,
    /// Policy-generated tokens (the budget currency), shared prefixes counted once.
    pub generated_tokens: u64,
    /// Prompt and observation tokens pushed through the policy.
    pub prefill_tokens: u64,
    /// Context tokens served from the shared-prefix cache at forks.
    pub cached_tokens: u64,
    /// Tokens the policy computed (prefill + decode + fork recomputation).
    pub computed_tokens: u64,
    /// Leaf trajectories.
    pub trajectories: u64,
    /// Leaf trajectories with distinct token sequences (summed over groups).
    pub distinct_trajectories: u64,
    /// Trajectories cut by the budget or the context window.
    pub truncated: u64,
    /// Trajectories that solved their task.
    pub successes: u64,
    /// Sum of leaf rewards.
    pub reward_sum: f64,
    /// Groups whose finished (not truncated) leaves all have the same reward (no learning signal
    /// for group baselines once truncated leaves are masked).
    pub zero_adv_groups: u64,
    /// Groups with at least one success.
    pub solved_groups: u64,
    /// Sum of squared leaf rewards (with `reward_sum`, the reward spread).
    pub reward_sq_sum: f64,
    /// Action tokens on the paths of all leaf trajectories (the response lengths, summed).
    pub response_tokens: u64,
    /// Action tokens on the longest leaf trajectory's path.
    pub response_tokens_max: u64,
    /// Wall time of the step in milliseconds.
    pub wall_ms: u64,
}

impl SamplerStats {
    /// `cached / (cached + computed)`: the share of context served from the prefix cache.
    pub fn cache_read_share(&self) -> f64 {
        let total = self.cached_tokens + self.computed_tokens;
        if total == 0 {
            0.0
        } else {
            self.cached_tokens as f64 / total as f64
        }
    }

    /// Mean leaf reward.
    pub fn reward_mean(&self) -> f64 {
        if self.trajectories == 0 {
            0.0
        } else {
            self.reward_sum / self.trajectories as f64
        }
    }

    /// Share of trajectories that succeeded.
    pub fn success_rate(&self) -> f64 {
        if self.trajectories == 0 {
            0.0
        } else {
            self.successes as f64 / self.trajectories as f64
        }
    }

    /// Standard deviation of the leaf rewards (population, over all trajectories of the step).
    pub fn reward_std(&self) -> f64 {
        if self.trajectories == 0 {
            return 0.0;
        }
        let n = self.trajectories as f64;
        let mean = self.reward_sum / n;
        (self.reward_sq_sum / n - mean * mean).max(0.0).sqrt()
    }

    /// Share of task groups with at least one successful trajectory (per-task success).
    pub fn task_success_rate(&self) -> f64 {
        if self.groups == 0 {
            0.0
        } else {
            self.solved_groups as f64 / self.groups as f64
        }
    }

    /// Mean action tokens on a trajectory's path (response length).
    pub fn response_len_mean(&self) -> f64 {
        if self.trajectories == 0 {
            0.0
        } else {
            self.response_tokens as f64 / self.trajectories as f64
        }
    }

    /// Distinct trajectories per 1,000 generated tokens.
    pub fn distinct_per_1k(&self) -> f64 {
        if self.generated_tokens == 0 {
            0.0
        } else {
            self.distinct_trajectories as f64 * 1000.0 / self.generated_tokens as f64
        }
    }

    /// Adds another step's counters (wall time added too).
    pub fn merge(&mut self, other: &SamplerStats) {
        self.groups += other.groups;
        self.generated_tokens += other.generated_tokens;
        self.prefill_tokens += other.prefill_tokens;
        self.cached_tokens += other.cached_tokens;
        self.computed_tokens += other.computed_tokens;
        self.trajectories += other.trajectories;
        self.distinct_trajectories += other.distinct_trajectories;
        self.truncated += other.truncated;
        self.successes += other.successes;
        self.reward_sum += other.reward_sum;
        self.zero_adv_groups += other.zero_adv_groups;
        self.solved_groups += other.solved_groups;
        self.reward_sq_sum += other.reward_sq_sum;
        self.response_tokens += other.response_tokens;
        self.response_tokens_max = self.response_tokens_max.max(other.response_tokens_max);
        self.wall_ms += other.wall_ms;
    }
}

/// The environment state at the start of a turn inside a span.
#[derive(Clone)]
struct TurnStart<E> {
    /// Absolute position (tokens after the prompt) of the turn's first action token.
    pos: usize,
    /// Environment after the previous turn.
    env: E,
    /// Reward collected before this turn.
    reward: f32,
}

/// The tokens one branch added after its fork point.
struct Span<E> {
    tree: u32,
    /// `(owner span, fork position)`: this span shares the owner's path up to the fork position.
    parent: Option<usize>,
    /// Absolute position of the first own token (the fork position).
    start: usize,
    tokens: Vec<u32>,
    is_action: Vec<bool>,
    logprobs: Vec<f32>,
    entropies: Vec<f32>,
    /// Observation runs: absolute `[start, end)` and their exact text.
    observations: Vec<(usize, usize, String)>,
    turn_starts: Vec<TurnStart<E>>,
    /// Absolute positions where other spans fork off this one.
    forks: BTreeSet<usize>,
    leaf: Option<LeafInfo>,
    seq: Option<SeqHandle>,
    dropped: bool,
}

impl<E> Span<E> {
    fn end(&self) -> usize {
        self.start + self.tokens.len()
    }
    fn at(&self, pos: usize) -> usize {
        pos - self.start
    }
}

/// A live branch: a span being extended.
struct Live<E> {
    span: usize,
    env: E,
    reward: f32,
    /// Action tokens of the current turn so far (may begin in an ancestor span).
    turn_tokens: Vec<u32>,
    /// Offsets in `turn_tokens` where the path enters another span. The environment receives
    /// the concatenation of each piece decoded on its own, which is exactly the concatenation of
    /// the node texts (nodes are cut at span starts, and elsewhere only at safe boundaries), even
    /// when a branch's first token continues a character.
    turn_cuts: Vec<usize>,
}

/// The text of a turn: each span piece decoded on its own, concatenated.
fn turn_text(tokenizer: &dyn Tokenizer, tokens: &[u32], cuts: &[usize]) -> String {
    let mut text = String::new();
    let mut lo = 0;
    for &hi in cuts.iter().chain(std::iter::once(&tokens.len())) {
        if hi > lo {
            text.push_str(&tokenizer.decode(&tokens[lo..hi]));
            lo = hi;
        }
    }
    text
}

/// Sampling state of one task group.
struct TaskState<E> {
    task_id: u64,
    env: E,
    prompt_tokens: Vec<u32>,
    prompt_seq: SeqHandle,
    spans: Vec<Span<E>>,
    live: Vec<Live<E>>,
    generated: u32,
    rounds: usize,
    /// `generated` when the current round started.
    round_start_generated: u32,
    /// Chains started so far (chain sampler) / whether initial chains are out (tree).
    started_initial: bool,
    /// Tree sampler: the root phase (independent chains up to `root_share` of the budget) is
    /// over.
    roots_done: bool,
    finished: bool,
    /// Fork points already used (owner span, position), for policies that avoid repeats.
    used: BTreeSet<(usize, usize)>,
}

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
) -> Result<SamplerStats, SamplerError>
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
            return Err(SamplerError::PromptTooLong {
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
) -> Result<(), SamplerError>
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

/// Starts new work for a task whose live spans allow it (see the module docs).
fn schedule<E, P>(
    cfg: &SamplerConfig,
    policy: &mut P,
    tokenizer: &dyn Tokenizer,
    st: &mut TaskState<E>,
    seed: u64,
    step: u64,
) -> Result<(), SamplerError>
where
    E: Env,
    P: Policy + ?Sized,
{
    if !st.started_initial {
        st.started_initial = true;
        let initial = match cfg.max_trajectories {
            0 => cfg.initial_chains,
            cap => cfg.initial_chains.min(cap),
        };
        for _ in 0..initial {
            let tree = next_tree(st);
            start_branch(policy, st, tree, None, 0)?;
        }
        return Ok(());
    }
    let remaining = i64::from(cfg.budget) - i64::from(st.generated);
    match cfg.kind {
        SamplerKind::Chain => {
            start_chains(cfg, policy, st, remaining)?;
            if st.live.is_empty() {
                st.finished = true;
            }
        }
        SamplerKind::Tree => {
            if !st.roots_done {
                // Root phase: independent chains (each a new tree) until `root_share` of the
                // budget is committed, scheduled like the chain sampler.
                let share = f64::from(cfg.root_share) * f64::from(cfg.budget);
                let cap = share.floor() as i64 - i64::from(st.generated);
                if start_chains(cfg, policy, st, cap)? || !st.live.is_empty() {
                    return Ok(());
                }
                st.roots_done = true;
            }
            if !st.live.is_empty() {
                return Ok(());
            }
            if cfg.max_rounds > 0 && st.rounds >= cfg.max_rounds {
                st.finished = true;
                return Ok(());
            }
            // A round that generated nothing (every branch cut at once) ends the task.
            if st.rounds > 0 && st.generated == st.round_start_generated {
                st.finished = true;
                return Ok(());
            }
            let split = |t: u32| tokenizer.can_split_before(t);
            let picks = branching::choose(cfg, st, remaining, policy.max_len(), &split, seed, step);
            st.rounds += 1;
            st.round_start_generated = st.generated;
            if picks.is_empty() {
                st.finished = true;
                return Ok(());
            }
            let room = match cfg.max_trajectories {
                0 => usize::MAX,
                cap => cap.saturating_sub(st.spans.len()),
            };
            if room == 0 {
                st.finished = true;
                return Ok(());
            }
            for pick in picks.into_iter().take(room) {
                st.used.insert((pick.owner.unwrap_or(usize::MAX), pick.pos));
                start_branch(policy, st, pick.tree, pick.owner, pick.pos)?;
            }
        }
    }
    Ok(())
}

/// Chain scheduling (see the module docs) with `remaining` tokens of budget left: starts new
/// chains (each a new tree) while the remaining budget, minus what the live chains are still
/// expected to use, covers the longest finished chain. Returns whether it started any.
fn start_chains<E, P>(
    cfg: &SamplerConfig,
    policy: &mut P,
    st: &mut TaskState<E>,
    remaining: i64,
) -> Result<bool, SamplerError>
where
    E: Env,
    P: Policy + ?Sized,
{
    let costs = finished_costs(st);
    if costs.is_empty() {
        return Ok(false);
    }
    // Commit, for each new chain, the longest chain seen (finished, or live: a live chain will
    // cost more than it has generated), and for a live chain that has generated `g` tokens the
    // longest `c - g` over finished chains longer than `g` (or that longest chain again). Means
    // would trust the chains that finish first, the short ones: the first completion then
    // starts a wave of chains whose tail the budget cannot finish, and truncated chains are
    // tokens spent on no complete trajectory.
    let live_lengths: Vec<f64> = st
        .live
        .iter()
        .map(|l| path_actions(&st.spans, l.span, usize::MAX) as f64)
        .collect();
    let cost = costs
        .iter()
        .chain(&live_lengths)
        .copied()
        .fold(0.0, f64::max);
    let expected_rest = |g: f64| {
        costs
            .iter()
            .filter(|&&c| c > g)
            .map(|c| c - g)
            .reduce(f64::max)
            .unwrap_or(cost)
    };
    let mut committed: f64 = live_lengths.iter().map(|&g| expected_rest(g)).sum();
    let under_cap =
        |st: &TaskState<E>| cfg.max_trajectories == 0 || st.spans.len() < cfg.max_trajectories;
    // Slow start: the estimate rests on few finished chains at first, so the number of live
    // chains may at most double per completion (bounded by what has finished).
    let max_live = 2 * (costs.len() + cfg.initial_chains);
    let mut started = false;
    while remaining as f64 - committed >= cost && under_cap(st) && st.live.len() < max_live {
        let tree = next_tree(st);
        start_branch(policy, st, tree, None, 0)?;
        committed += cost;
        started = true;
    }
    Ok(started)
}

fn next_tree<E>(st: &TaskState<E>) -> u32 {
    st.spans.iter().map(|s| s.tree + 1).max().unwrap_or(0)
}

/// Starts a span of `tree` that forks off `owner` at absolute position `pos` (or from the prompt).
fn start_branch<E, P>(
    policy: &mut P,
    st: &mut TaskState<E>,
    tree: u32,
    owner: Option<usize>,
    pos: usize,
) -> Result<(), SamplerError>
where
    E: Env,
    P: Policy + ?Sized,
{
    let (seq, env, reward, turn_tokens, turn_cuts) = match owner {
        None => (
            policy.fork(st.prompt_seq)?,
            st.env.clone(),
            0.0,
            Vec::new(),
            Vec::new(),
        ),
        Some(o) => {
            let src = st.spans[o].seq.expect("finished spans keep their sequence");
            let seq = policy.fork_at(src, st.prompt_tokens.len() + pos)?;
            let (env, reward, turn_start) = turn_context(st, o, pos);
            let turn_tokens = path_tokens(&st.spans, o, turn_start, pos);
            let mut cuts = span_starts(&st.spans, o, turn_start, pos);
            cuts.push(turn_tokens.len());
            let cuts = cuts.into_iter().map(|p| p.min(turn_tokens.len())).collect();
            (seq, env, reward, turn_tokens, cuts)
        }
    };
    if let Some(o) = owner {
        st.spans[o].forks.insert(pos);
    }
    st.spans.push(Span {
        tree,
        parent: owner,
        start: pos,
        tokens: Vec::new(),
        is_action: Vec::new(),
        logprobs: Vec::new(),
        entropies: Vec::new(),
        observations: Vec::new(),
        turn_starts: Vec::new(),
        forks: BTreeSet::new(),
        leaf: None,
        seq: Some(seq),
        dropped: false,
    });
    st.live.push(Live {
        span: st.spans.len() - 1,
        env,
        reward,
        turn_tokens,
        turn_cuts,
    });
    Ok(())
}

/// Offsets (relative to `from`) of the span starts strictly inside `(from, to)` on the path of
/// span `s`, in increasing order.
fn span_starts<E>(spans: &[Span<E>], s: usize, from: usize, to: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut span = s;
    loop {
        let sp = &spans[span];
        if sp.start > from && sp.start < to {
            out.push(sp.start - from);
        }
        match sp.parent {
            Some(p) if sp.start > from => span = p,
            _ => break,
        }
    }
    out.reverse();
    out
}

/// The environment, reward so far and turn start position in force at absolute position `pos`
/// on the path of span `s`.
fn turn_context<E: Env>(st: &TaskState<E>, s: usize, pos: usize) -> (E, f32, usize) {
    let mut span = s;
    let mut limit = pos;
    loop {
        let sp = &st.spans[span];
        if let Some(ts) = sp.turn_starts.iter().rev().find(|t| t.pos <= limit) {
            return (ts.env.clone(), ts.reward, ts.pos);
        }
        match sp.parent {
            Some(p) => {
                limit = sp.start;
                span = p;
            }
            None => return (st.env.clone(), 0.0, 0),
        }
    }
}

/// The tokens at absolute positions `[from, to)` on the path of span `s`.
fn path_tokens<E>(spans: &[Span<E>], s: usize, from: usize, to: usize) -> Vec<u32> {
    let mut pieces = Vec::new();
    let mut span = s;
    let mut hi = to;
    loop {
        let sp = &spans[span];
        let lo = from.max(sp.start);
        if lo < hi {
            pieces.push(&sp.tokens[sp.at(lo)..sp.at(hi)]);
        }
        match sp.parent {
            Some(p) if from < sp.start => {
                hi = sp.start;
                span = p;
            }
            _ => break,
        }
    }
    pieces.into_iter().rev().flatten().copied().collect()
}

/// Action tokens on the path of span `s` at absolute positions below `to` (`usize::MAX`: all).
fn path_actions<E>(spans: &[Span<E>], s: usize, to: usize) -> usize {
    let mut count = 0;
    let mut span = s;
    let mut hi = to;
    loop {
        let sp = &spans[span];
        let end = hi.min(sp.end());
        if end > sp.start {
            count += sp.is_action[..sp.at(end)].iter().filter(|&&a| a).count();
        }
        match sp.parent {
            Some(p) => {
                hi = sp.start;
                span = p;
            }
            None => return count,
        }
    }
}

/// Action tokens of each finished trajectory of a task.
fn finished_costs<E>(st: &TaskState<E>) -> Vec<f64> {
    (0..st.spans.len())
        .filter(|&s| st.spans[s].leaf.is_some())
        .map(|s| path_actions(&st.spans, s, usize::MAX) as f64)
        .collect()
}

/// Converts a finished task's spans into the tree arena.
fn to_rollout<E: Env>(
    st: &TaskState<E>,
    cfg: &SamplerConfig,
    tokenizer: &dyn Tokenizer,
) -> Result<TaskRollout, SamplerError> {
    let err = |source| SamplerError::Tree {
        task_id: st.task_id,
        source,
    };
    let prompt = tokenizer.decode(&st.prompt_tokens);
    let mut out = TaskRollout::new(st.task_id, prompt, st.prompt_tokens.clone());
    // Trees are renumbered densely in order of first use (a chain whose only span was dropped
    // leaves no tree behind).
    let mut tree_ids: HashMap<u32, u32> = HashMap::new();
    // (span, absolute end position) -> node ending there.
    let mut node_at: HashMap<(usize, usize), NodeId> = HashMap::new();
    let segment_cuts = cfg.granularity == Granularity::Segment;
    for (s, span) in st.spans.iter().enumerate() {
        if span.dropped {
            continue;
        }
        let tree = *tree_ids.entry(span.tree).or_insert_with(|| out.new_tree());
        let mut parent = span.parent.map(|o| node_at[&(o, span.start)]);
        // Cut points: kind changes, fork points, segment boundaries.
        let mut cuts: BTreeSet<usize> = span.forks.clone();
        let mut turn_offset = if span.parent.is_some() {
            let (_, _, turn_start) = turn_context(st, s, span.start);
            span.start - turn_start
        } else {
            0
        };
        for i in 0..span.tokens.len() {
            let pos = span.start + i;
            if i > 0 && span.is_action[i] != span.is_action[i - 1] {
                cuts.insert(pos);
            }
            if span.is_action[i] {
                if segment_cuts
                    && turn_offset > 0
                    && turn_offset % cfg.segment_len == 0
                    && tokenizer.can_split_before(span.tokens[i])
                {
                    cuts.insert(pos);
                }
                turn_offset += 1;
            } else {
                turn_offset = 0;
            }
        }
        cuts.insert(span.end());
        let mut lo = span.start;
        for &hi in cuts.range(span.start + 1..=span.end()) {
            let (a, b) = (span.at(lo), span.at(hi));
            let id = if span.is_action[a] {
                let tokens = span.tokens[a..b].to_vec();
                let text = tokenizer.decode(&tokens);
                out.add_action(
                    parent,
                    tree,
                    tokens,
                    text,
                    span.logprobs[a..b].to_vec(),
                    span.entropies[a..b].to_vec(),
                )
                .map_err(err)?
            } else {
                let text = span
                    .observations
                    .iter()
                    .find(|o| o.0 == lo)
                    .map(|o| o.2.clone())
                    .unwrap_or_default();
                let p = parent.expect("an observation always follows an action");
                out.add_observation(p, span.tokens[a..b].to_vec(), text)
                    .map_err(err)?
            };
            node_at.insert((s, hi), id);
            parent = Some(id);
            lo = hi;
        }
        let leaf = parent.expect("a kept span has at least one node");
        let info = span.leaf.unwrap_or(LeafInfo::truncated(None));
        debug_assert_eq!(out.node(leaf).kind, NodeKind::Action);
        out.set_leaf(leaf, info).map_err(err)?;
    }
    out.validate().map_err(err)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
