//! From spans to the tree arena: cutting a finished task group's spans into nodes (module
//! docs of `sampler`, "From spans to the tree arena").

use super::*;
use crate::Error;

/// Offsets (relative to `from`) of the span starts strictly inside `(from, to)` on the path of
/// span `s`, in increasing order.
pub(super) fn span_starts<E>(spans: &[Span<E>], s: usize, from: usize, to: usize) -> Vec<usize> {
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
pub(super) fn turn_context<E: Env>(st: &TaskState<E>, s: usize, pos: usize) -> (E, f32, usize) {
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
pub(super) fn path_tokens<E>(spans: &[Span<E>], s: usize, from: usize, to: usize) -> Vec<u32> {
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
pub(super) fn path_actions<E>(spans: &[Span<E>], s: usize, to: usize) -> usize {
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

/// Converts a finished task's spans into the tree arena.
pub(super) fn to_rollout<E: Env>(
    st: &TaskState<E>,
    cfg: &SamplerConfig,
    tokenizer: &dyn Tokenizer,
) -> Result<TaskRollout, Error> {
    let err = |source: Error| Error::Tree {
        task_id: st.task_id,
        source: Box::new(source),
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
