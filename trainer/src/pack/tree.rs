//! Tree packing: one sequence per task group, rows joined or cut at a token cap (module docs
//! of `pack`, "Tree packing" and "Rows and attention cost").

use super::*;

/// Tree-packed sequences: one per task group, in group order (module docs); a group without
/// action tokens has nothing to train and is skipped. `groups` is one mini-batch: the
/// aggregation weights `c_l` are computed over all of it.
pub fn pack_trees(
    groups: &[(&TaskRollout, &AdvantageOutput)],
    agg: LossAgg,
) -> Result<Vec<PackedSequence>, TrainerError> {
    pack_trees_capped(groups, agg, usize::MAX)
}

/// Like [`pack_trees`], but a group whose packed sequence would be longer than `max_len` tokens
/// is cut into several rows (see the module docs, "Rows and attention cost"). Every target still appears exactly
/// once, so the loss and gradients are those of [`pack_trees`].
pub fn pack_trees_capped(
    groups: &[(&TaskRollout, &AdvantageOutput)],
    agg: LossAgg,
    max_len: usize,
) -> Result<Vec<PackedSequence>, TrainerError> {
    let rows = group_rows(groups, agg, max_len)?;
    if max_len == usize::MAX {
        return Ok(rows);
    }
    Ok(join_rows(rows, max_len, 1))
}

/// The rows of every group (cut at `max_len`), not yet joined.
pub(super) fn group_rows(
    groups: &[(&TaskRollout, &AdvantageOutput)],
    agg: LossAgg,
    max_len: usize,
) -> Result<Vec<PackedSequence>, TrainerError> {
    let c = checked_leaf_weights(groups, agg)?;
    let mut out = Vec::new();
    for ((rollout, adv), c) in groups.iter().zip(&c) {
        let w = node_weights(rollout, adv, c);
        out.extend(
            pack_group(rollout, &w, max_len)
                .into_iter()
                .filter(|seq| !seq.targets.is_empty()),
        );
    }
    Ok(out)
}

/// Joins packed rows into shared rows of at most `cap` tokens (each part keeps its own root
/// span, so no part attends another), balanced: longest first, each row opens one of the first
/// `min_rows` bins or goes to the shortest bin it fits in (a new bin if none).
pub(super) fn join_rows(
    rows: Vec<PackedSequence>,
    cap: usize,
    min_rows: usize,
) -> Vec<PackedSequence> {
    let mut rows = rows;
    rows.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut bins: Vec<PackedSequence> = Vec::new();
    for seq in rows {
        let fit = (0..bins.len())
            .filter(|&k| bins[k].len() + seq.len() <= cap)
            .min_by_key(|&k| (bins[k].len(), k));
        match fit {
            Some(k) if bins.len() >= min_rows => bins[k].append(seq),
            _ => bins.push(seq),
        }
    }
    bins
}

/// Row length [`minibatches`] packs trees into (module docs, "Rows and attention cost").
/// Sparse attention makes a row's cost linear in its length for tree-shaped masks, so the cap
/// only bounds the memory of one row's activations.
pub const PACKED_ROW_TOKENS: usize = 16_384;

/// Length of the longest flattened trajectory (prompt + path) of `groups`: no packed row is
/// cut shorter than this.
pub fn longest_trajectory(groups: &[(&TaskRollout, &AdvantageOutput)]) -> usize {
    groups
        .iter()
        .flat_map(|(r, _)| {
            r.nodes.iter().filter(|n| n.is_leaf()).map(|leaf| {
                r.prompt_tokens.len()
                    + r.path(leaf.id)
                        .iter()
                        .map(|&s| r.node(s).tokens.len())
                        .sum::<usize>()
            })
        })
        .max()
        .unwrap_or(0)
}

/// Where a node's tokens sit in the row being built: its span and the index of the last token
/// on its path (its own last token, or its parent's if it has none).
#[derive(Clone, Copy)]
pub(super) struct Placed {
    span: u32,
    last: u32,
    depth: u32,
}

/// Rows of one task group. Nodes are visited in DFS order, tree after tree; when a node does not
/// fit in the current row (and the row already scores something), a new row starts with the
/// prompt and the node's ancestors as context-only spans.
pub(super) fn pack_group(
    rollout: &TaskRollout,
    w: &[[f64; 3]],
    max_len: usize,
) -> Vec<PackedSequence> {
    let prompt = &rollout.prompt_tokens;
    let new_row = || PackedSequence {
        tokens: prompt.clone(),
        positions: (0..prompt.len() as u32).collect(),
        span: vec![0; prompt.len()],
        span_parent: vec![None],
        targets: Vec::new(),
    };
    let root = Placed {
        span: 0,
        last: prompt.len() as u32 - 1,
        depth: prompt.len() as u32,
    };
    // Appends node `id` below `parent`, scoring its action tokens when `score`.
    let place = |seq: &mut PackedSequence, id: NodeId, parent: Placed, score: bool| -> Placed {
        let node = rollout.node(id);
        let span = seq.span_parent.len() as u32;
        seq.span_parent.push(Some(parent.span));
        let [p, n, wt] = w[id as usize];
        let mut last = parent.last;
        for (k, &token) in node.tokens.iter().enumerate() {
            let index = seq.tokens.len() as u32;
            if score && node.is_action() {
                seq.targets.push(Target {
                    source: last,
                    token,
                    old_logprob: node.logprobs[k],
                    pos_weight: p as f32,
                    neg_weight: n as f32,
                    weight: wt as f32,
                });
            }
            seq.tokens.push(token);
            seq.positions.push(parent.depth + k as u32);
            seq.span.push(span);
            last = index;
        }
        Placed {
            span,
            last,
            depth: parent.depth + node.tokens.len() as u32,
        }
    };
    let mut rows = Vec::new();
    let mut seq = new_row();
    // Placement of each node, by node id, stamped with the row it was placed in (so starting a
    // row invalidates every entry without touching them).
    let mut placed: Vec<Option<(usize, Placed)>> = vec![None; rollout.nodes.len()];
    let mut tops: Vec<(u32, NodeId)> = rollout
        .nodes
        .iter()
        .filter(|n| n.parent.is_none())
        .map(|n| (n.tree, n.id))
        .collect();
    tops.sort_unstable();
    let mut stack: Vec<NodeId> = tops.into_iter().rev().map(|(_, id)| id).collect();
    while let Some(id) = stack.pop() {
        let node = rollout.node(id);
        if seq.len() + node.tokens.len() > max_len && !seq.targets.is_empty() {
            rows.push(std::mem::replace(&mut seq, new_row()));
            // The ancestors again, as context: top node first.
            let mut ancestors: Vec<NodeId> =
                std::iter::successors(node.parent, |&a| rollout.node(a).parent).collect();
            ancestors.reverse();
            let mut at = root;
            for a in ancestors {
                at = place(&mut seq, a, at, false);
                placed[a as usize] = Some((rows.len(), at));
            }
        }
        let parent = match node.parent {
            None => root,
            Some(p) => match placed[p as usize] {
                Some((row, at)) if row == rows.len() => at,
                _ => unreachable!("DFS order keeps the parent in the current row"),
            },
        };
        placed[id as usize] = Some((rows.len(), place(&mut seq, id, parent, true)));
        for &child in node.children.iter().rev() {
            stack.push(child);
        }
    }
    rows.push(seq);
    rows
}
