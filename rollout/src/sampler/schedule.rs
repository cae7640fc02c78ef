//! Scheduling under the budget: starting chains, tree rounds and branches, each only when
//! the remaining budget covers its expected cost (module docs of `sampler`).

use super::*;
use crate::Error;

/// Starts new work for a task whose live spans allow it (see the module docs).
pub(super) fn schedule<E, P>(
    cfg: &SamplerConfig,
    policy: &mut P,
    tokenizer: &dyn Tokenizer,
    st: &mut TaskState<E>,
    seed: u64,
    step: u64,
) -> Result<(), Error>
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
pub(super) fn start_chains<E, P>(
    cfg: &SamplerConfig,
    policy: &mut P,
    st: &mut TaskState<E>,
    remaining: i64,
) -> Result<bool, Error>
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

pub(super) fn next_tree<E>(st: &TaskState<E>) -> u32 {
    st.spans.iter().map(|s| s.tree + 1).max().unwrap_or(0)
}

/// Starts a span of `tree` that forks off `owner` at absolute position `pos` (or from the prompt).
pub(super) fn start_branch<E, P>(
    policy: &mut P,
    st: &mut TaskState<E>,
    tree: u32,
    owner: Option<usize>,
    pos: usize,
) -> Result<(), Error>
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

/// Action tokens of each finished trajectory of a task.
pub(super) fn finished_costs<E>(st: &TaskState<E>) -> Vec<f64> {
    (0..st.spans.len())
        .filter(|&s| st.spans[s].leaf.is_some())
        .map(|s| path_actions(&st.spans, s, usize::MAX) as f64)
        .collect()
}
