//! Training sequences: tree-packed and flattened policy-gradient batches, and SFT batches
//! (DESIGN §8).
//!
//! Every loss in this crate reads the same host-side structure, a [`PackedSequence`]: tokens,
//! RoPE positions, an attention structure, and a list of [`Target`]s. A target names the token to
//! score, the position whose logits score it (its *source*), its behaviour logprob and three
//! weights `P`, `N`, `W` (see [`crate::loss`]). Sequences of one mini-batch are padded into a
//! [`TrainBatch`], whose tensors a model consumes.
//!
//! # Tree packing ([`pack_trees`])
//! Each task group ([`TaskRollout`]) becomes one sequence: the prompt once, then the nodes of its
//! trees in depth-first order, tree after tree (children in id order); all trees of a group
//! share the prompt, so it is forwarded once. A token's RoPE position is its position on its own
//! root-to-node path (prompt tokens `0..p`, a top node continues at `p`, a child continues where
//! its parent ended), and it attends to the prompt, to the tokens of its ancestor nodes and to the
//! earlier tokens of its own node — exactly the context it had when it was sampled. So a shared
//! prefix is forwarded and back-propagated once, and the cost grows with unique tokens.
//!
//! Each action token `t` of node `s` is one target. Its source is the previous token on the path:
//! the previous token of `s`, or for the first token of `s` the last token of the nearest
//! ancestor with tokens (or of the prompt). With `a(s, l)` the advantage of `s`'s tokens in the
//! trajectory ending at leaf `l` ([`AdvantageOutput::token_advantage`]) and `c_l` the loss weight
//! of trajectory `l` (below), the weights sum over the leaves below `s`:
//! - `P_s = Σ_l c_l · max(a(s,l), 0)`, `N_s = Σ_l c_l · min(a(s,l), 0)`, `W_s = Σ_l c_l`.
//!
//! Because a token's probability ratio is the same in every trajectory through it,
//! `Σ_l c_l · min(r·a, clip(r)·a) = P·min(r, clip r) + N·max(r, clip r)`: the packed loss equals
//! the per-trajectory loss.
//!
//! ## Rows and attention cost ([`pack_trees_capped`])
//! A packed row is scored with the sparse attention layout of [`crate::attn`]: each block of
//! queries gathers only the keys its queries' paths reach, so a row's attention cost follows
//! the tree (unique tokens × path length), not the square of the row length. Rows can therefore
//! be long: [`minibatches`] joins the groups of a mini-batch (longest first, each into the
//! shortest row it fits) into at least [`DEFAULT_SHARDS`] rows of up to
//! [`PACKED_ROW_TOKENS`] tokens (more if one trajectory is longer), so each data-parallel
//! shard of the trainer gets about the same number of tokens and almost nothing of the padded
//! batch is padding. Each part keeps its own root span, so no part attends another.
//!
//! A group longer than the cap is cut into several rows: nodes are placed in DFS order, and a
//! node that would push the row past the cap starts a new row holding the prompt and the
//! node's ancestors again, as context only (no targets), then the node and the rest of the DFS.
//! Every target is still scored exactly once with the same weights, so the loss and gradients do
//! not change; only some ancestor tokens are forwarded twice.
//!
//! # Flattened ([`flatten_trees`])
//! One sequence per leaf: the prompt and the tokens on the leaf's path, positions `0..`, causal
//! attention; each action token of node `s` has `P = c_l·max(a(s,l), 0)`, `N = c_l·min(a(s,l), 0)`,
//! `W = c_l`. This is the reference the packed batch must match, and the chain-sampling baseline.
//!
//! # Loss aggregation ([`LossAgg`])
//! With `n_l` the action tokens on trajectory `l`'s path and `L` the number of trajectories with
//! at least one action token, over all groups passed to one builder call (one mini-batch);
//! masked trajectories ([`AdvantageOutput::masked`], budget-truncated) have `c_l = 0` and count
//! in neither:
//! - `token-mean`: `c_l = 1 / Σ_l n_l` (every action token of the batch weighs the same);
//! - `seq-mean-token-mean`: `c_l = 1 / (L · n_l)` (mean over trajectories of their token mean).
//!
//! Either way `Σ_targets W = 1` for the flattened batch and the packed batch alike.
//! Prompt and observation tokens are never targets.
//!
//! # Files
//! This module holds the shared structures and weights ([`LossAgg`], [`Target`],
//! [`PackedSequence`], [`minibatches`]); `tree` the tree packing and its row cap, `flat` the
//! flattened reference, `batch` the padded [`TrainBatch`] and its device tensors.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rollout::advantage::AdvantageOutput;
use rollout::tree::{NodeId, TaskRollout};

use crate::TrainerError;
use crate::attn::{AttentionLayout, AttentionMask, LayoutChoice};

mod batch;
mod flat;
mod tree;

pub use batch::{DeviceBatch, TrainBatch};
pub use flat::flatten_trees;
use tree::*;
pub use tree::{PACKED_ROW_TOKENS, longest_trajectory, pack_trees, pack_trees_capped};

/// How per-token losses are averaged (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LossAgg {
    /// Every action token of the batch has the same weight (the default, as in verl/DAPO).
    #[default]
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Mean over trajectories of each trajectory's token mean (GRPO's original aggregation).
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
}

impl LossAgg {
    /// The name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            LossAgg::TokenMean => "token-mean",
            LossAgg::SeqMeanTokenMean => "seq-mean-token-mean",
        }
    }
}

impl fmt::Display for LossAgg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LossAgg {
    type Err = TrainerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [LossAgg::TokenMean, LossAgg::SeqMeanTokenMean]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| TrainerError::Config {
                reason: format!(
                    "unknown loss aggregation '{s}' (known: token-mean, seq-mean-token-mean)"
                ),
            })
    }
}

/// One scored token of a [`PackedSequence`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Index (in the sequence) of the position whose logits score the token.
    pub source: u32,
    /// The token id being scored.
    pub token: u32,
    /// Behaviour logprob of the token (from the engine at sampling time; 0 for SFT).
    pub old_logprob: f32,
    /// `P`: weight of the positive-advantage part of the PPO objective.
    pub pos_weight: f32,
    /// `N`: weight of the negative-advantage part (≤ 0).
    pub neg_weight: f32,
    /// `W`: weight of the KL, entropy and cross-entropy terms.
    pub weight: f32,
}

/// One training sequence (see the module docs).
///
/// Attention structure: every token belongs to a *span* (span 0 is the prompt, then one span per
/// tree node); span `k > 0` has a parent span `span_parent[k]` and token `i` may attend token
/// `j` iff `j ≤ i` and `span[j]` is `span[i]` or one of its ancestors. A flattened or SFT
/// sequence is a single span: plain causal attention.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedSequence {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// RoPE position of each token.
    pub positions: Vec<u32>,
    /// Span of each token.
    pub span: Vec<u32>,
    /// Parent of each span (`None` for a root: span 0, and the first span of each part joined
    /// by [`PackedSequence::append`]).
    pub span_parent: Vec<Option<u32>>,
    /// Scored tokens.
    pub targets: Vec<Target>,
}

impl PackedSequence {
    /// A causal single-span sequence with positions `0..len`.
    pub fn causal(tokens: Vec<u32>, targets: Vec<Target>) -> Self {
        let n = tokens.len();
        PackedSequence {
            positions: (0..n as u32).collect(),
            span: vec![0; n],
            span_parent: vec![None],
            tokens,
            targets,
        }
    }

    /// Appends `other` after this sequence as an independent part: its spans keep their
    /// structure (its root span stays a root), so no token of one part attends the other.
    pub fn append(&mut self, other: PackedSequence) {
        let (tok_off, span_off) = (self.tokens.len() as u32, self.span_parent.len() as u32);
        self.tokens.extend(other.tokens);
        self.positions.extend(other.positions);
        self.span.extend(other.span.iter().map(|s| s + span_off));
        self.span_parent
            .extend(other.span_parent.iter().map(|p| p.map(|p| p + span_off)));
        self.targets
            .extend(other.targets.into_iter().map(|t| Target {
                source: t.source + tok_off,
                ..t
            }));
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the sequence has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The row as attention sees it: each token's span and each span's parent.
    pub fn spans(&self) -> crate::attn::RowSpans<'_> {
        crate::attn::RowSpans {
            span: &self.span,
            span_parent: &self.span_parent,
        }
    }

    /// Whether token `i` may attend token `j`.
    pub fn attends(&self, i: usize, j: usize) -> bool {
        if j > i {
            return false;
        }
        let target = self.span[j];
        let mut cur = Some(self.span[i]);
        while let Some(m) = cur {
            if m == target {
                return true;
            }
            cur = self.span_parent[m as usize];
        }
        false
    }
}

/// Default [`crate::trainer::TrainerConfig::shards`]: the two cores of the reference machine
/// (burn's CPU kernels run many small operations on one thread, so two shards use both cores).
/// Tree packing joins rows into at least this many, so each shard gets one.
pub const DEFAULT_SHARDS: usize = 2;

/// [`leaf_weights`] of groups that pass [`check_group`].
pub(super) fn checked_leaf_weights(
    groups: &[(&TaskRollout, &AdvantageOutput)],
    agg: LossAgg,
) -> Result<Vec<Vec<f64>>, TrainerError> {
    for (r, a) in groups {
        check_group(r, a)?;
    }
    Ok(leaf_weights(groups, agg))
}

/// Per-leaf loss weights `c_l` for the leaves of all groups (see [`LossAgg`]).
fn leaf_weights(groups: &[(&TaskRollout, &AdvantageOutput)], agg: LossAgg) -> Vec<Vec<f64>> {
    let counts: Vec<Vec<usize>> = groups
        .iter()
        .map(|(r, adv)| {
            r.nodes
                .iter()
                .map(|n| {
                    // A masked (budget-truncated) trajectory carries no loss and does not count
                    // in the aggregation.
                    if n.is_leaf() && !adv.masked[n.id as usize] {
                        r.path_action_tokens(n.id)
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect();
    let total: usize = counts.iter().flatten().sum();
    let trajectories = counts.iter().flatten().filter(|&&n| n > 0).count();
    counts
        .iter()
        .map(|per_node| {
            per_node
                .iter()
                .map(|&n| match (n, agg) {
                    (0, _) => 0.0,
                    (_, LossAgg::TokenMean) => 1.0 / total as f64,
                    (_, LossAgg::SeqMeanTokenMean) => 1.0 / (trajectories as f64 * n as f64),
                })
                .collect()
        })
        .collect()
}

/// Checks the group's structure against what packing relies on.
pub(super) fn check_group(
    rollout: &TaskRollout,
    adv: &AdvantageOutput,
) -> Result<(), TrainerError> {
    let n = rollout.nodes.len();
    if adv.leaf_adv.len() != n || adv.node_adv.len() != n || adv.masked.len() != n {
        return Err(TrainerError::batch(format!(
            "task {}: advantages cover {} nodes, the rollout has {n}",
            rollout.task_id,
            adv.node_adv.len()
        )));
    }
    if rollout.prompt_tokens.is_empty() {
        return Err(TrainerError::batch(format!(
            "task {}: empty prompt (the first action token needs a source position)",
            rollout.task_id
        )));
    }
    for (index, node) in rollout.nodes.iter().enumerate() {
        let parent_ok = node.parent.is_none_or(|p| p < node.id);
        if !parent_ok || node.id as usize != index {
            return Err(TrainerError::batch(format!(
                "task {}: node at index {index} has id {} and parent {:?}; ids must be arena \
                 indices and parents must precede children",
                rollout.task_id, node.id, node.parent
            )));
        }
        if node.is_action() && node.logprobs.len() != node.tokens.len() {
            return Err(TrainerError::batch(format!(
                "task {}: action node {} has {} tokens but {} logprobs",
                rollout.task_id,
                node.id,
                node.tokens.len(),
                node.logprobs.len()
            )));
        }
    }
    Ok(())
}

/// `(P, N, W)` of every node of a group, summed over the leaves below it (module docs).
pub(super) fn node_weights(
    rollout: &TaskRollout,
    adv: &AdvantageOutput,
    c: &[f64],
) -> Vec<[f64; 3]> {
    let mut w = vec![[0.0f64; 3]; rollout.nodes.len()];
    for leaf in rollout.nodes.iter().filter(|n| n.is_leaf()) {
        let cl = c[leaf.id as usize];
        if cl == 0.0 {
            continue;
        }
        for s in rollout.path(leaf.id) {
            if !rollout.node(s).is_action() {
                continue;
            }
            let a = adv.token_advantage(s, leaf.id) as f64;
            let e = &mut w[s as usize];
            e[0] += cl * a.max(0.0);
            e[1] += cl * a.min(0.0);
            e[2] += cl;
        }
    }
    w
}

/// How trajectories become training rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// Tree packing ([`pack_trees_capped`]), groups joined into rows of up to
    /// [`PACKED_ROW_TOKENS`] tokens (at least the longest trajectory); the default.
    #[default]
    Tree,
    /// One causal row per trajectory ([`flatten_trees`]).
    Flat,
}

/// Splits `groups` into mini-batches of at most `groups_per_batch` task groups (in order) and
/// builds each one; the aggregation weights are computed per mini-batch, as its loss is.
/// Mini-batches without targets are dropped.
pub fn minibatches(
    groups: &[(&TaskRollout, &AdvantageOutput)],
    groups_per_batch: usize,
    agg: LossAgg,
    packing: Packing,
) -> Result<Vec<TrainBatch>, TrainerError> {
    if groups_per_batch == 0 {
        return Err(TrainerError::Config {
            reason: "groups_per_batch must be at least 1".into(),
        });
    }
    let mut out = Vec::new();
    for chunk in groups.chunks(groups_per_batch) {
        let seqs = match packing {
            Packing::Tree => {
                let cap = longest_trajectory(chunk).max(PACKED_ROW_TOKENS);
                join_rows(group_rows(chunk, agg, cap)?, cap, DEFAULT_SHARDS)
            }
            Packing::Flat => flatten_trees(chunk, agg)?,
        };
        // A mini-batch whose trajectories are all masked (budget-truncated) has targets of
        // weight 0 only when tree-packed: skip it, as the flattened batch (no rows) is skipped.
        if seqs.iter().flat_map(|s| &s.targets).any(|t| t.weight > 0.0) {
            out.push(TrainBatch::new(seqs));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout::advantage::{grpo, treerl};
    use rollout::tree::LeafInfo;

    /// prompt [1,2]; tree 0: a(3,4) -> o(5) -> {b(6) leaf r=1, c(7,8) leaf r=0}; tree 1: d(9) leaf.
    fn sample() -> TaskRollout {
        let mut r = TaskRollout::new(0, "p", vec![1, 2]);
        let t0 = r.new_tree();
        let a = r
            .add_action(None, t0, vec![3, 4], "a", vec![-0.1, -0.2], vec![0.0; 2])
            .unwrap();
        let o = r.add_observation(a, vec![5], "o").unwrap();
        let b = r
            .add_action(Some(o), t0, vec![6], "b", vec![-0.3], vec![0.0])
            .unwrap();
        let c = r
            .add_action(Some(o), t0, vec![7, 8], "c", vec![-0.4, -0.5], vec![0.0; 2])
            .unwrap();
        let t1 = r.new_tree();
        let d = r
            .add_action(None, t1, vec![9], "d", vec![-0.6], vec![0.0])
            .unwrap();
        r.set_leaf(b, LeafInfo::finished(1.0, envs::Outcome::Solved))
            .unwrap();
        r.set_leaf(c, LeafInfo::finished(0.0, envs::Outcome::Failed))
            .unwrap();
        r.set_leaf(d, LeafInfo::finished(1.0, envs::Outcome::Solved))
            .unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn packed_layout_positions_sources_and_mask() {
        let r = sample();
        let adv = grpo(&r);
        let seqs = pack_trees(&[(&r, &adv)], LossAgg::TokenMean).unwrap();
        assert_eq!(seqs.len(), 1, "one row per task group");
        let s = &seqs[0];
        // DFS: prompt, tree 0 (a, o, b, c), tree 1 (d).
        assert_eq!(s.tokens, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(s.positions, vec![0, 1, 2, 3, 4, 5, 5, 6, 2]);
        // Targets: 3 (src 1), 4 (src 2), 6 (src 4 = observation), 7 (src 4), 8 (src 6),
        // 9 (src 1 = the prompt's last token).
        let src: Vec<(u32, u32)> = s.targets.iter().map(|t| (t.token, t.source)).collect();
        assert_eq!(src, vec![(3, 1), (4, 2), (6, 4), (7, 4), (8, 6), (9, 1)]);
        // c's tokens (7 at index 6) do not see b's token (index 5); d sees only the prompt.
        assert!(!s.attends(6, 5));
        assert!(s.attends(6, 4) && s.attends(7, 6) && s.attends(5, 0));
        assert!(!s.attends(4, 5));
        assert!(s.attends(8, 1) && s.attends(8, 0));
        assert!((2..8).all(|j| !s.attends(8, j)));
        // A cap of 6 tokens: c starts a row with prompt, a and o as context; d starts another.
        let capped = pack_trees_capped(&[(&r, &adv)], LossAgg::TokenMean, 6).unwrap();
        // (Longest row first; no two rows fit together under the cap.)
        let rows: Vec<&Vec<u32>> = capped.iter().map(|s| &s.tokens).collect();
        assert_eq!(
            rows,
            [
                &vec![1, 2, 3, 4, 5, 7, 8],
                &vec![1, 2, 3, 4, 5, 6],
                &vec![1, 2, 9]
            ]
        );
        let src: Vec<Vec<(u32, u32)>> = capped
            .iter()
            .map(|s| s.targets.iter().map(|t| (t.token, t.source)).collect())
            .collect();
        assert_eq!(
            src,
            [
                vec![(7, 4), (8, 5)],
                vec![(3, 1), (4, 2), (6, 4)],
                vec![(9, 1)]
            ]
        );
        assert_eq!(capped[0].positions, vec![0, 1, 2, 3, 4, 5, 6]);
        // Two groups of 9 tokens under a cap of 20 share one row; the second part starts at
        // index 9 with its own root and sees nothing of the first.
        let adv2 = grpo(&r);
        let two = [(&r, &adv), (&r, &adv2)];
        let joined = pack_trees_capped(&two, LossAgg::TokenMean, 20).unwrap();
        assert_eq!(joined.len(), 1);
        let j = &joined[0];
        assert_eq!(j.len(), 18);
        assert_eq!(&j.tokens[9..], &s.tokens[..]);
        assert_eq!(&j.positions[9..], &s.positions[..]);
        assert!((9..18).all(|i| (0..9).all(|k| !j.attends(i, k))));
        assert!(j.attends(17, 10) && j.attends(17, 9));
        let sources: Vec<u32> = j.targets[6..].iter().map(|t| t.source).collect();
        let expected: Vec<u32> = s.targets.iter().map(|t| t.source + 9).collect();
        assert_eq!(sources, expected);
        // Token-mean: 3 + 4 + 1 = 8 trajectory tokens; `a` is below two leaves.
        let wa = s.targets[0].weight;
        assert!((wa - 2.0 / 8.0).abs() < 1e-7);
        let total_w: f32 = seqs.iter().flat_map(|s| &s.targets).map(|t| t.weight).sum();
        assert!((total_w - 1.0).abs() < 1e-6);
        let flat = flatten_trees(&[(&r, &adv)], LossAgg::TokenMean).unwrap();
        assert_eq!(flat.len(), 3);
        assert_eq!(flat[1].tokens, vec![1, 2, 3, 4, 5, 7, 8]);
        let flat_w: f32 = flat.iter().flat_map(|s| &s.targets).map(|t| t.weight).sum();
        assert!((flat_w - 1.0).abs() < 1e-6);
    }

    #[test]
    fn packed_weights_sum_flattened_weights() {
        let r = sample();
        for adv in [grpo(&r), treerl(&r)] {
            for agg in [LossAgg::TokenMean, LossAgg::SeqMeanTokenMean] {
                let packed = pack_trees(&[(&r, &adv)], agg).unwrap();
                let flat = flatten_trees(&[(&r, &adv)], agg).unwrap();
                let sum = |seqs: &[PackedSequence], f: fn(&Target) -> f32| -> f64 {
                    seqs.iter()
                        .flat_map(|s| &s.targets)
                        .map(|t| f(t) as f64)
                        .sum()
                };
                for f in [
                    (|t: &Target| t.pos_weight) as fn(&Target) -> f32,
                    |t| t.neg_weight,
                    |t| t.weight,
                ] {
                    assert!((sum(&packed, f) - sum(&flat, f)).abs() < 1e-6);
                }
            }
        }
    }

    /// A mini-batch of masked trajectories only trains nothing, packed or flattened.
    #[test]
    fn all_masked_minibatches_are_skipped() {
        let mut r = sample();
        for id in [2, 3, 4] {
            r.nodes[id].leaf = Some(LeafInfo::truncated(None));
        }
        let (masked, fine) = (grpo(&r), grpo(&sample()));
        let good = sample();
        let groups = [(&r, &masked), (&good, &fine)];
        for packing in [Packing::Tree, Packing::Flat] {
            let mbs = minibatches(&groups, 1, LossAgg::TokenMean, packing).unwrap();
            assert_eq!(mbs.len(), 1, "{packing:?}");
        }
    }

    /// A budget-truncated leaf (masked by default) carries no loss: no flattened row, zero
    /// weights on its own tokens, and it does not count in the token mean.
    #[test]
    fn truncated_leaves_carry_no_loss() {
        let mut r = sample();
        r.nodes[3].leaf = Some(LeafInfo::truncated(None)); // c = [7, 8] cut by the budget
        let adv = grpo(&r);
        assert!(adv.masked[3]);
        let flat = flatten_trees(&[(&r, &adv)], LossAgg::TokenMean).unwrap();
        assert_eq!(flat.len(), 2, "rows for b and d only");
        let packed = pack_trees(&[(&r, &adv)], LossAgg::TokenMean).unwrap();
        let targets: Vec<&Target> = packed.iter().flat_map(|s| &s.targets).collect();
        // a (2 tokens) is on b's path only now: token mean over a, b (3) and d (1) = 4 tokens.
        let w = |token: u32| targets.iter().find(|t| t.token == token).unwrap().weight;
        assert!((w(3) - 0.25).abs() < 1e-7 && (w(9) - 0.25).abs() < 1e-7);
        for t in targets.iter().filter(|t| t.token == 7 || t.token == 8) {
            assert_eq!((t.pos_weight, t.neg_weight, t.weight), (0.0, 0.0, 0.0));
        }
        let total: f32 = targets.iter().map(|t| t.weight).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn minibatches_normalise_each_batch() {
        let (r1, r2) = (sample(), sample());
        let (a1, a2) = (grpo(&r1), grpo(&r2));
        let groups = [(&r1, &a1), (&r2, &a2)];
        for packing in [Packing::Tree, Packing::Flat] {
            let mbs = minibatches(&groups, 1, LossAgg::TokenMean, packing).unwrap();
            assert_eq!(mbs.len(), 2);
            for mb in &mbs {
                let w: f32 = mb
                    .sequences
                    .iter()
                    .flat_map(|s| &s.targets)
                    .map(|t| t.weight)
                    .sum();
                assert!((w - 1.0).abs() < 1e-6);
            }
        }
        assert!(minibatches(&groups, 0, LossAgg::TokenMean, Packing::Tree).is_err());
    }

    #[test]
    fn device_batch_masks_padding() {
        let r = sample();
        let adv = grpo(&r);
        let batch =
            TrainBatch::new(pack_trees_capped(&[(&r, &adv)], LossAgg::TokenMean, 6).unwrap());
        let db = batch
            .to_device_with(&Device::flex(), LayoutChoice::Dense)
            .unwrap();
        let AttentionMask::Dense(mask) = db.attention else {
            panic!("a dense layout was asked for");
        };
        let mask: Vec<bool> = mask.into_data().try_into_vec().unwrap();
        let t = batch.padded_len();
        assert_eq!(t, 7);
        // Row 2 is prompt + d (3 tokens): position 5 is padding and sees only itself.
        let row = |b: usize, i: usize| &mask[(b * t + i) * t..(b * t + i + 1) * t];
        assert_eq!(row(2, 5).iter().filter(|&&m| !m).count(), 1);
        assert!(!row(2, 5)[5]);
        assert!(row(2, 2)[5], "real tokens never see padding");
        let src: Vec<i64> = db
            .source
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(src.last(), Some(&(2 * t as i64 + 1)));
    }
}
