//! Branching policies: which fork points a tree round starts (DESIGN §5).
//!
//! A fork point is a prefix of some finished trajectory, named by the span that owns its last
//! token and the absolute position of the first token the new branch samples. Candidates:
//! - the prompt of each tree (position 0);
//! - turn starts: right after an observation (Tree-GRPO's nodes at `step` granularity);
//! - inside an action: segment boundaries (`segment`) or any token (`token`), only before tokens
//!   where a text cut is safe ([`crate::tokenizer::Tokenizer::can_split_before`]).
//!
//! Each policy orders the candidates of a tree; the round then walks the trees round-robin and
//! starts up to `branches_per_round` per tree, each only if its expected cost still fits the
//! remaining budget.

use std::collections::BTreeSet;

use envs::Env;
use envs::rng::rng_for;
use rand::seq::SliceRandom;

use super::{BranchPolicy, Granularity, SamplerConfig, TaskState, path_actions, turn_context};

/// RNG tag for branching draws ("branch").
const BRANCH_TAG: u64 = 0x6272_616e_6368;
/// Action tokens after a turn start that the adaptive policy averages.
const ADAPTIVE_WINDOW: usize = 8;

/// A fork point chosen for this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pick {
    /// Span owning the prefix's last token (`None`: the prompt).
    pub owner: Option<usize>,
    /// Absolute position of the first token the branch samples.
    pub pos: usize,
    /// Tree the branch belongs to.
    pub tree: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Root,
    TurnStart,
    Segment,
    Token,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    owner: Option<usize>,
    pos: usize,
    tree: u32,
    kind: Kind,
    score: f64,
}

/// Chooses this round's fork points for a task (empty: the task is done).
pub(super) fn choose<E: Env>(
    cfg: &SamplerConfig,
    st: &TaskState<E>,
    remaining: i64,
    max_len: usize,
    can_split: &dyn Fn(u32) -> bool,
    seed: u64,
    step: u64,
) -> Vec<Pick> {
    if remaining <= 0 {
        return Vec::new();
    }
    let mut rng = rng_for(&[seed, step, st.task_id, BRANCH_TAG, st.rounds as u64]);
    let trees: BTreeSet<u32> = st
        .spans
        .iter()
        .filter(|s| !s.dropped)
        .map(|s| s.tree)
        .collect();
    let mut queues: Vec<Vec<Candidate>> = Vec::new();
    for &tree in &trees {
        let mut cands = candidates(cfg, st, tree, can_split);
        cands.retain(|c| st.prompt_tokens.len() + c.pos + 1 < max_len);
        match cfg.branch {
            BranchPolicy::Random => cands.shuffle(&mut rng),
            BranchPolicy::Entropy | BranchPolicy::Segment => {
                cands.retain(|c| !st.used.contains(&(c.owner.unwrap_or(usize::MAX), c.pos)));
                sort_by_score(&mut cands);
            }
            BranchPolicy::Adaptive => {
                let (mut rising, mut rest): (Vec<_>, Vec<_>) = cands.into_iter().partition(|c| {
                    c.kind == Kind::TurnStart
                        && c.score > 0.0
                        && !st.used.contains(&(c.owner.unwrap_or(usize::MAX), c.pos))
                });
                sort_by_score(&mut rising);
                rest.shuffle(&mut rng);
                rising.extend(rest);
                cands = rising;
            }
        }
        // Queues are consumed from the back.
        cands.reverse();
        queues.push(cands);
    }
    let mut picks = Vec::new();
    let mut taken = vec![0usize; queues.len()];
    let mut committed = 0.0f64;
    loop {
        let mut progressed = false;
        for (q, queue) in queues.iter_mut().enumerate() {
            while taken[q] < cfg.branches_per_round {
                let Some(c) = queue.pop() else { break };
                let Some(cost) = expected_cost(st, c.owner, c.pos, c.tree) else {
                    continue;
                };
                if committed + cost > remaining as f64 {
                    continue;
                }
                committed += cost;
                taken[q] += 1;
                picks.push(Pick {
                    owner: c.owner,
                    pos: c.pos,
                    tree: c.tree,
                });
                progressed = true;
                break;
            }
        }
        if !progressed {
            return picks;
        }
    }
}

fn sort_by_score(cands: &mut [Candidate]) {
    cands.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.owner.cmp(&b.owner))
            .then(a.pos.cmp(&b.pos))
    });
}

/// The fork points of `tree` that the configured granularity and policy allow, with scores.
fn candidates<E: Env>(
    cfg: &SamplerConfig,
    st: &TaskState<E>,
    tree: u32,
    can_split: &dyn Fn(u32) -> bool,
) -> Vec<Candidate> {
    let (segments, tokens) = match cfg.branch {
        BranchPolicy::Entropy => (false, true),
        BranchPolicy::Segment => (true, false),
        BranchPolicy::Adaptive => (false, false),
        BranchPolicy::Random => (
            cfg.granularity == Granularity::Segment,
            cfg.granularity == Granularity::Token,
        ),
    };
    let mut out = Vec::new();
    let first = st
        .spans
        .iter()
        .position(|s| !s.dropped && s.tree == tree && s.parent.is_none());
    if let Some(first) = first {
        let span = &st.spans[first];
        out.push(Candidate {
            owner: None,
            pos: 0,
            tree,
            kind: Kind::Root,
            score: score(cfg, span, 0, Kind::Root),
        });
    }
    for (s, span) in st.spans.iter().enumerate() {
        if span.dropped || span.tree != tree {
            continue;
        }
        for ts in &span.turn_starts {
            if ts.pos < span.end() {
                out.push(Candidate {
                    owner: Some(s),
                    pos: ts.pos,
                    tree,
                    kind: Kind::TurnStart,
                    score: score(cfg, span, ts.pos, Kind::TurnStart),
                });
            }
        }
        if !(segments || tokens) {
            continue;
        }
        let mut offset = if span.parent.is_some() {
            let (_, _, turn_start) = turn_context(st, s, span.start);
            span.start - turn_start
        } else {
            0
        };
        for i in 0..span.tokens.len() {
            if !span.is_action[i] {
                offset = 0;
                continue;
            }
            let inside = i > 0 && span.is_action[i - 1];
            let at_segment = offset > 0 && offset % cfg.segment_len == 0;
            if inside && can_split(span.tokens[i]) && (tokens || at_segment) {
                let kind = if at_segment {
                    Kind::Segment
                } else {
                    Kind::Token
                };
                let pos = span.start + i;
                out.push(Candidate {
                    owner: Some(s),
                    pos,
                    tree,
                    kind,
                    score: score(cfg, span, pos, kind),
                });
            }
            offset += 1;
        }
    }
    out
}

/// Policy score of forking at absolute position `pos` of `span` (higher forks first). For the
/// root, `span` is the tree's first span and `pos` is 0.
fn score<E>(cfg: &SamplerConfig, span: &super::Span<E>, pos: usize, kind: Kind) -> f64 {
    let i = pos - span.start;
    // Action tokens of the current turn from `i` on.
    let run = |len: usize| {
        span.is_action[i..]
            .iter()
            .take_while(|&&a| a)
            .count()
            .min(len)
    };
    let mean = |v: &[f32]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64
        }
    };
    match cfg.branch {
        BranchPolicy::Random => 0.0,
        BranchPolicy::Entropy => span.entropies.get(i).map_or(0.0, |&e| f64::from(e)),
        BranchPolicy::Segment => -mean(&span.logprobs[i..i + run(cfg.segment_len)]),
        BranchPolicy::Adaptive => {
            if kind != Kind::TurnStart {
                return 0.0;
            }
            let after = mean(&span.entropies[i..i + run(ADAPTIVE_WINDOW)]);
            // The action before the observation that ends at `pos`.
            let obs_start = (0..i).rev().find(|&j| span.is_action[j]).map(|j| j + 1);
            let before = obs_start.map_or(0.0, |end| {
                let start = (0..end)
                    .rev()
                    .find(|&j| !span.is_action[j])
                    .map_or(0, |j| j + 1);
                mean(&span.entropies[start..end])
            });
            after - before
        }
    }
}

/// Mean action tokens that the finished trajectories through the fork point generated after
/// it: the expected cost of a new branch there (`None` when no trajectory passes through it).
fn expected_cost<E>(st: &TaskState<E>, owner: Option<usize>, pos: usize, tree: u32) -> Option<f64> {
    let spans = &st.spans;
    let before = owner.map_or(0, |o| path_actions(spans, o, pos));
    let mut total = 0usize;
    let mut count = 0usize;
    for (y, span) in spans.iter().enumerate() {
        if span.dropped || span.leaf.is_none() || span.tree != tree {
            continue;
        }
        let below = match owner {
            None => true,
            Some(x) => is_below(spans, y, x, pos),
        };
        if below {
            total += path_actions(spans, y, usize::MAX) - before;
            count += 1;
        }
    }
    (count > 0).then(|| (total as f64 / count as f64).max(1.0))
}

/// Whether span `y`'s path contains the prefix of span `x` up to absolute position `pos`.
fn is_below<E>(spans: &[super::Span<E>], y: usize, x: usize, pos: usize) -> bool {
    let mut cur = y;
    loop {
        if cur == x {
            return true;
        }
        match spans[cur].parent {
            Some(p) if p == x => return spans[cur].start >= pos,
            Some(p) => cur = p,
            None => return false,
        }
    }
}
