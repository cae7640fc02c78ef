//! Advantage estimators: pure functions from a task group's tree structure and leaf rewards to
//! per-node (hence per-token) advantages (DESIGN §6, STYLE §7).
//!
//! One enum, [`Estimator`], selects an estimator by name; [`estimate`] runs it on a batch of
//! task groups (batch-level because `treepo` whitens over the whole batch) and returns one
//! [`AdvantageOutput`] per group, indexed by node id. Each estimator is also a pub function
//! ([`grpo`], [`tree_grpo`], [`treerl`], [`treepo`], [`rloo`]) whose docs cite the equation it
//! implements. Nothing here holds trainer state.
//!
//! # Conventions (all estimators)
//! - The trajectories of a task are the leaves of its [`TaskRollout`] (all its trees).
//! - **Budget-truncated leaves are masked** by default ([`EstimateOptions::mask_truncated`],
//!   DESIGN §6): a leaf cut by the token budget or the context window is the sampler's
//!   scheduling, not the policy's failure, so it takes no part in any group, baseline or
//!   `treerl` value, its `leaf_adv` is `None`, [`AdvantageOutput::masked`] marks it, and its tokens
//!   carry no loss (a node whose leaves are all masked has zero advantage and weight). With
//!   masking off, a truncated leaf takes part with its reward 0.
//! - ε = [`EPSILON`] = 1e-6; "std" is the unbiased sample standard deviation (divides by n − 1);
//!   a z-score is `(R − mean) / (std + ε)`.
//! - **A group of size 1 has mean 0 and std 1** (DESIGN §6, as verl's GRPO does), so a lone
//!   trajectory's z-score is `R / (1 + ε)`: it keeps the sign of its own reward instead of being
//!   zeroed. This rule applies to every *normalising group* (the z-scores of `grpo` and the
//!   task term of `tree-grpo`, the whitening of `treepo`, and `treepo`'s root subgroup, as in
//!   TreePO's code). The one exception is `tree-grpo`'s intra-tree term: a tree with a single
//!   leaf has nothing to compare with, so its intra term is 0 and chains (one leaf per tree)
//!   get plain GRPO.
//!   It does not apply to `treerl`'s values, which are plain means (a leaf's value is its own
//!   reward); `rloo` gives a lone trajectory 0 (no other trajectory to compare with).
//!   An empty group (a task without leaves) has mean 0 and std 1 as well; it produces nothing.
//! - Computation is in f64; outputs are f32.
//!
//! # Trajectory-level and node-level estimators
//! A trajectory-level estimator (`grpo`, `tree-grpo`, `treepo`, `rloo`) gives each leaf l one
//! advantage `A(l)`, and every token on l's path is trained with it *in that trajectory*: a token
//! of node s belongs to every leaf below s (DESIGN §6). A node-level estimator (`treerl`) gives
//! each node s one advantage `A(s)` that all its tokens carry in every trajectory through s.
//! Either way, writing `a(s, l)` for the advantage of node s's tokens in the trajectory ending at
//! leaf l, [`AdvantageOutput`] holds for each node s:
//! - `node_adv[s]` = `A(s)` (node-level) or `Σ_{l below s} A(l)` (trajectory-level): the DESIGN §9
//!   `nodes.advantage` column;
//! - `pos_sum[s]` = `Σ_{l below s} max(a(s,l), 0)` and
//!   `neg_sum[s]` = `Σ_{l below s} min(a(s,l), 0)`.
//!   The flattened PPO-clip loss of a token of s, summed over the trajectories through s, is
//!   `−(P·min(r, clip(r)) + N·max(r, clip(r)))` with `P = pos_sum[s]`, `N = neg_sum[s]` and r the
//!   token's probability ratio, because `min(r·a, clip(r)·a)` is `a·min(r, clip r)` for a ≥ 0 and
//!   `a·max(r, clip r)` for a < 0. This is what lets tree-packed training (DESIGN §8) equal the
//!   per-trajectory loss.
//!
//! Observation nodes carry no loss: their `node_adv`, `pos_sum` and `neg_sum` are 0. Their
//! `value` and `leaves_below` are filled like any node's.
//!
//! # Example
//! ```
//! use rollout::advantage::{estimate, Estimator};
//! use rollout::tree::{LeafInfo, TaskRollout};
//! use envs::Outcome;
//!
//! let mut group = TaskRollout::new(0, "p", vec![]);
//! let t = group.new_tree();
//! for reward in [1.0, 0.0] {
//!     let a = group.add_action(None, t, vec![1], "a", vec![-0.1], vec![0.3])?;
//!     let outcome = if reward > 0.0 { Outcome::Solved } else { Outcome::Failed };
//!     group.set_leaf(a, LeafInfo::finished(reward, outcome))?;
//! }
//! let est: Estimator = "rloo".parse()?;
//! let out = estimate(est, &[group])?;
//! assert_eq!(out[0].leaf_adv, vec![Some(1.0), Some(-1.0)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::tree::{NodeId, TaskRollout};

/// ε in every z-score and in `treepo`'s whitening: `(x − mean) / (std + ε)`.
pub const EPSILON: f32 = 1e-6;

/// An advantage estimator, selected by name (`"grpo"`, `"tree-grpo"`, `"treerl"`, `"treepo"`,
/// `"rloo"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Estimator {
    /// [`grpo`]: z-score of each leaf's reward over the task's leaves.
    #[serde(rename = "grpo")]
    Grpo,
    /// [`tree_grpo`]: intra-tree + inter-tree z-scores. The default (DESIGN §10: `arbor train`
    /// runs tree-GRPO).
    #[default]
    #[serde(rename = "tree-grpo")]
    TreeGrpo,
    /// [`treerl`]: node-level global + local value differences.
    #[serde(rename = "treerl")]
    #[cfg_attr(feature = "clap", value(name = "treerl"))]
    TreeRl,
    /// [`treepo`]: size-weighted ancestor-subgroup baselines, whitened over the batch.
    #[serde(rename = "treepo")]
    #[cfg_attr(feature = "clap", value(name = "treepo"))]
    TreePo,
    /// [`rloo`]: leave-one-out baseline over the task's leaves.
    #[serde(rename = "rloo")]
    Rloo,
}

impl Estimator {
    /// Every estimator, in documentation order.
    pub const ALL: [Estimator; 5] = [
        Estimator::Grpo,
        Estimator::TreeGrpo,
        Estimator::TreeRl,
        Estimator::TreePo,
        Estimator::Rloo,
    ];

    /// The name used in configs, on the command line and in exports.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Grpo => "grpo",
            Estimator::TreeGrpo => "tree-grpo",
            Estimator::TreeRl => "treerl",
            Estimator::TreePo => "treepo",
            Estimator::Rloo => "rloo",
        }
    }

    /// Whether advantages are per node (`treerl`) rather than per trajectory. For node-level
    /// estimators [`AdvantageOutput::leaf_adv`] is all `None` (DESIGN §9: the trajectory
    /// `advantage` column is null).
    pub fn is_node_level(self) -> bool {
        self == Estimator::TreeRl
    }
}

impl fmt::Display for Estimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Estimator {
    type Err = Error;

    /// Parses an estimator name (exact, lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Estimator::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| Error::UnknownEstimator {
                name: s.to_string(),
                known: Estimator::ALL.map(Estimator::name).join(", "),
            })
    }
}

/// The advantages of one task group, every vector indexed by node id (see the module docs for
/// the meaning of `a(s, l)`).
///
/// # Shapes
/// every `Vec`: `[rollout.nodes.len()]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdvantageOutput {
    /// The task group's id.
    pub task_id: u64,
    /// The estimator that produced these values.
    pub estimator: Estimator,
    /// Whether each node is a masked leaf (budget-truncated, with
    /// [`EstimateOptions::mask_truncated`]): it takes part in no group and carries no loss.
    pub masked: Vec<bool>,
    /// The trajectory-level advantage `A(l)` at each leaf l; `None` at non-leaves, at masked
    /// leaves and for node-level estimators.
    pub leaf_adv: Vec<Option<f32>>,
    /// DESIGN §9 `nodes.advantage`: `A(s)` for node-level estimators, the sum of the advantages
    /// of the leaves below s for trajectory-level ones; 0 for observation nodes.
    pub node_adv: Vec<f32>,
    /// `Σ_{l below s} max(a(s,l), 0)`; 0 for observation nodes.
    pub pos_sum: Vec<f32>,
    /// `Σ_{l below s} min(a(s,l), 0)`; 0 for observation nodes.
    pub neg_sum: Vec<f32>,
    /// Number of leaves in the subtree of s (s included), masked ones included (DESIGN §9
    /// `nodes.leaves_below`: a description of the tree, not of the estimate).
    pub leaves_below: Vec<u32>,
    /// Mean reward of all leaves below s, truncated ones with their reward 0 (DESIGN §9
    /// `nodes.value`). `treerl`'s `V(s)` masks truncated leaves and may differ from it.
    pub value: Vec<f32>,
}

impl AdvantageOutput {
    /// `a(s, l)`: the advantage the tokens of action node `node` carry in the trajectory ending at
    /// `leaf` (`node` must be on `leaf`'s path; this is not checked). For observation nodes the
    /// trainer masks the loss regardless.
    ///
    /// Tokens in a masked trajectory carry no loss: the advantage is 0 for a masked `leaf`.
    ///
    /// # Panics
    /// If `node` or `leaf` is out of range, or, for a trajectory-level estimator, `leaf` is not a
    /// leaf.
    pub fn token_advantage(&self, node: NodeId, leaf: NodeId) -> f32 {
        if self.masked[leaf as usize] {
            0.0
        } else if self.estimator.is_node_level() {
            self.node_adv[node as usize]
        } else {
            self.leaf_adv[leaf as usize].expect("token_advantage: `leaf` is not a leaf")
        }
    }
}

/// How the estimators treat a batch (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EstimateOptions {
    /// Budget-truncated leaves take no part in groups and baselines and carry no loss.
    /// By default, this is enabled (DESIGN §6).
    pub mask_truncated: bool,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        EstimateOptions {
            mask_truncated: true,
        }
    }
}

/// Runs `estimator` on a batch of task groups with the default [`EstimateOptions`] (truncated
/// leaves masked); one output per group, in order.
///
/// Every group is checked with [`TaskRollout::validate`] first, so the estimators never see a
/// malformed tree. (The per-estimator functions skip this check and may panic on one.)
pub fn estimate(
    estimator: Estimator,
    rollouts: &[TaskRollout],
) -> Result<Vec<AdvantageOutput>, Error> {
    estimate_with(estimator, rollouts, EstimateOptions::default())
}

/// [`estimate`] with explicit options.
pub fn estimate_with(
    estimator: Estimator,
    rollouts: &[TaskRollout],
    opts: EstimateOptions,
) -> Result<Vec<AdvantageOutput>, Error> {
    for r in rollouts {
        r.validate().map_err(|source| Error::InvalidRollout {
            task_id: r.task_id,
            source: Box::new(source),
        })?;
    }
    let mask = opts.mask_truncated;
    Ok(match estimator {
        Estimator::TreePo => treepo_scans(rollouts, mask),
        e => rollouts
            .iter()
            .map(|r| {
                let scan = Scan::new(r, mask);
                match e {
                    Estimator::Grpo => grpo_scan(r, &scan),
                    Estimator::TreeGrpo => tree_grpo_scan(r, &scan),
                    Estimator::TreeRl => treerl_scan(r, &scan),
                    Estimator::Rloo => rloo_scan(r, &scan),
                    Estimator::TreePo => unreachable!("handled above"),
                }
            })
            .collect(),
    })
}

/// GRPO (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, §4.1.2, outcome supervision:
/// `Â_{i,t} = (r_i − mean(r)) / std(r)`):
/// `A(l) = (R_l − mean(R)) / (std(R) + ε)` over all leaves of the task (all its trees).
///
/// Truncated leaves are masked (the default [`EstimateOptions`]); expects a rollout that
/// passes [`TaskRollout::validate`].
pub fn grpo(rollout: &TaskRollout) -> AdvantageOutput {
    grpo_scan(rollout, &Scan::new(rollout, true))
}

fn grpo_scan(rollout: &TaskRollout, scan: &Scan) -> AdvantageOutput {
    let adv = z_scores(&scan.rewards);
    scan.trajectory_output(rollout, Estimator::Grpo, &adv)
}

/// Tree-GRPO (Ji et al. 2025, "Tree Search for LLM Agent Reinforcement Learning",
/// arXiv:2509.21240, the tree-based group-relative advantage `Â = Â_intra-tree + Â_inter-tree`):
/// `A(l) = z(R_l within l's tree) + z(R_l within the task)`.
///
/// A tree with a single (unmasked) leaf has nothing to compare its leaf with: its intra-tree
/// term is **0** (DESIGN §6), not the size-1 z-score `R / (1 + ε)`. So with one leaf per tree
/// (the chain sampler) `tree-grpo` equals [`grpo`] exactly, and a chain baseline is plain GRPO
/// whatever estimator is configured.
///
/// Truncated leaves are masked (the default [`EstimateOptions`]); expects a rollout that
/// passes [`TaskRollout::validate`].
pub fn tree_grpo(rollout: &TaskRollout) -> AdvantageOutput {
    tree_grpo_scan(rollout, &Scan::new(rollout, true))
}

fn tree_grpo_scan(rollout: &TaskRollout, scan: &Scan) -> AdvantageOutput {
    let mut adv = z_scores(&scan.rewards);
    let mut by_tree: Vec<Vec<usize>> = vec![Vec::new(); rollout.num_trees as usize];
    for (i, &l) in scan.leaves.iter().enumerate() {
        by_tree[rollout.node(l).tree as usize].push(i);
    }
    for members in by_tree {
        if members.len() < 2 {
            continue;
        }
        let rewards: Vec<f64> = members.iter().map(|&i| scan.rewards[i]).collect();
        for (&i, z) in members.iter().zip(z_scores(&rewards)) {
            adv[i] += z;
        }
    }
    scan.trajectory_output(rollout, Estimator::TreeGrpo, &adv)
}

/// TreeRL (Hou et al. 2025, "TreeRL: LLM Reinforcement Learning with On-Policy Tree Search",
/// arXiv:2506.11902, the process signal of EPTree nodes `R(s) = (GA(s) + LA(s)) / sqrt(|L(s)|)`):
/// `V(s)` = mean reward of the leaves below s; `GA(s) = V(s) − V(root)`;
/// `LA(s) = V(s) − V(fork(s))`; `A(s) = (GA(s) + LA(s)) / sqrt(|L(s)|)` on every token of s.
///
/// `fork(s)` is the *last fork point* above s: the nearest ancestor with more leaves than s
/// (TreeRL's local term compares a segment with the branch point it came from). A node whose
/// parent has the same leaves (an action followed by its observation, a turn cut into segments)
/// thus keeps its local advantage instead of getting `V(s) − V(s) = 0`. When no ancestor has
/// more leaves, `fork(s)` is the root.
///
/// The root is the task: `V(root)` is the mean over all leaves of the task (all trees).
/// Observation nodes get `A = 0` (no loss), but count as ancestors like any node. `V` is a
/// plain mean (no size-1 rule), so a lone trajectory gets 0 and equal rewards give 0
/// everywhere. Node-level: `leaf_adv` is all `None`, and `pos_sum`/`neg_sum` are
/// `|L(s)|·max(A(s), 0)` / `|L(s)|·min(A(s), 0)`.
///
/// Truncated leaves are masked (the default [`EstimateOptions`]); expects a rollout that
/// passes [`TaskRollout::validate`].
pub fn treerl(rollout: &TaskRollout) -> AdvantageOutput {
    treerl_scan(rollout, &Scan::new(rollout, true))
}

fn treerl_scan(rollout: &TaskRollout, scan: &Scan) -> AdvantageOutput {
    let v_root = plain_mean(&scan.rewards);
    let mut out = scan.empty_output(rollout, Estimator::TreeRl);
    // The last fork point above each node (None: the root); parents precede children.
    let mut fork: Vec<Option<NodeId>> = vec![None; rollout.nodes.len()];
    for node in &rollout.nodes {
        if let Some(p) = node.parent {
            fork[node.id as usize] = if scan.counts[p as usize] > scan.counts[node.id as usize] {
                Some(p)
            } else {
                fork[p as usize]
            };
        }
    }
    for node in &rollout.nodes {
        let s = node.id as usize;
        let count = scan.counts[s];
        if !node.is_action() || count == 0 {
            continue;
        }
        let v = scan.value[s];
        let v_parent = fork[s].map_or(v_root, |p| scan.value[p as usize]);
        let a = ((v - v_root) + (v - v_parent)) / f64::from(count).sqrt();
        out.node_adv[s] = a as f32;
        out.pos_sum[s] = (f64::from(count) * a.max(0.0)) as f32;
        out.neg_sum[s] = (f64::from(count) * a.min(0.0)) as f32;
    }
    out
}

/// TreePO for one task group *before* the batch whitening (useful to inspect; the estimator is
/// [`treepo`]). See [`treepo`] for the definition.
///
/// Expects a rollout that passes [`TaskRollout::validate`].
pub fn treepo_unwhitened(rollout: &TaskRollout) -> AdvantageOutput {
    let scan = Scan::new(rollout, true);
    let adv = treepo_raw(rollout, &scan);
    scan.trajectory_output(rollout, Estimator::TreePo, &adv)
}

/// TreePO (Li et al. 2025, "TreePO: Bridging the Gap of Policy Optimization and Efficacy and
/// Inference Efficiency with Heuristic Tree-based Modeling", arXiv:2508.17445, tree-based
/// segment-level advantage estimation with subgroup-size-weighted aggregation):
///
/// `A_raw(l) = Σ_{G ∈ 𝒢(l)} |G| · (R_l − mean(G)) / Σ_{G ∈ 𝒢(l)} |G|`, then
/// `A(l) = (A_raw(l) − mean_batch) / (std_batch + ε)` over all leaves of all task groups in
/// `rollouts` (each leaf counts once; verl's `masked_whiten` weights by tokens instead).
///
/// **Subgroups 𝒢(l)** are the sets of leaves that share a prefix with l, one per distinct set:
/// - the whole task (all leaves of all trees), always included; if it has one leaf its mean is 0
///   (size-1 rule; TreePO's code does the same for its depth-0 group);
/// - for each strict ancestor s of l (top node down to l's parent), the leaves below s, included
///   only if it has at least 2 leaves and is *smaller* than the last included subgroup.
///
/// Sets along a path are nested, so "smaller" means "different": a node with a single child
/// (an action followed by its observation, or a turn split into segments) adds nothing, which
/// makes the result independent of node granularity. TreePO's reference code groups by segment
/// depth and also skips subgroups of size 1 ("only itself"); with its fixed-divergence trees
/// every level branches, and both definitions agree. The leaf's own node is never a subgroup
/// (it would be `{l}`, of size 1). Trees are not subgroups of their own: all trees of a task
/// share only the prompt, which is the task subgroup already.
///
/// Truncated leaves are masked (the default [`EstimateOptions`]); expects rollouts that pass
/// [`TaskRollout::validate`].
pub fn treepo(rollouts: &[TaskRollout]) -> Vec<AdvantageOutput> {
    treepo_scans(rollouts, true)
}

fn treepo_scans(rollouts: &[TaskRollout], mask: bool) -> Vec<AdvantageOutput> {
    let scans: Vec<Scan> = rollouts.iter().map(|r| Scan::new(r, mask)).collect();
    let raws: Vec<Vec<f64>> = rollouts
        .iter()
        .zip(&scans)
        .map(|(r, s)| treepo_raw(r, s))
        .collect();
    let all: Vec<f64> = raws.iter().flatten().copied().collect();
    let (mean, std) = mean_std(&all);
    let eps = f64::from(EPSILON);
    rollouts
        .iter()
        .zip(&scans)
        .zip(&raws)
        .map(|((r, scan), raw)| {
            let adv: Vec<f64> = raw.iter().map(|a| (a - mean) / (std + eps)).collect();
            scan.trajectory_output(r, Estimator::TreePo, &adv)
        })
        .collect()
}

/// RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
/// Learning from Human Feedback in LLMs", arXiv:2402.14740, the REINFORCE leave-one-out
/// baseline):
/// `A(l) = R_l − (1 / (n − 1)) Σ_{j ≠ l} R_j` over the n leaves of the task; 0 when n = 1.
///
/// Truncated leaves are masked (the default [`EstimateOptions`]); expects a rollout that
/// passes [`TaskRollout::validate`].
pub fn rloo(rollout: &TaskRollout) -> AdvantageOutput {
    rloo_scan(rollout, &Scan::new(rollout, true))
}

fn rloo_scan(rollout: &TaskRollout, scan: &Scan) -> AdvantageOutput {
    let n = scan.rewards.len();
    let total: f64 = scan.rewards.iter().sum();
    let adv: Vec<f64> = if n < 2 {
        vec![0.0; n]
    } else {
        let others = (n - 1) as f64;
        scan.rewards
            .iter()
            .map(|r| r - (total - r) / others)
            .collect()
    };
    scan.trajectory_output(rollout, Estimator::Rloo, &adv)
}

/// Whether all rewards of the group's finished (not truncated) leaves are equal (also true with
/// 0 or 1 of them): the groups whose group-relative advantages carry no signal once truncated
/// leaves are masked (DESIGN §9 `metrics.zero_adv_groups_frac`).
pub fn zero_adv_group(rollout: &TaskRollout) -> bool {
    let mut rewards = rollout
        .nodes
        .iter()
        .filter_map(|n| n.leaf.filter(|l| !l.truncated).map(|l| l.reward));
    match rewards.next() {
        None => true,
        Some(first) => rewards.all(|r| r == first),
    }
}

/// The share of groups for which [`zero_adv_group`] holds (0 for an empty batch).
pub fn zero_adv_groups_frac(rollouts: &[TaskRollout]) -> f32 {
    if rollouts.is_empty() {
        return 0.0;
    }
    let zero = rollouts.iter().filter(|r| zero_adv_group(r)).count();
    zero as f32 / rollouts.len() as f32
}

/// Mean and unbiased std of a normalising group; a group of size 0 or 1 has mean 0 and std 1.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.len() < 2 {
        return (0.0, 1.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// `(x − mean) / (std + ε)` over the group, with [`mean_std`].
fn z_scores(xs: &[f64]) -> Vec<f64> {
    let (mean, std) = mean_std(xs);
    let eps = f64::from(EPSILON);
    xs.iter().map(|x| (x - mean) / (std + eps)).collect()
}

/// The arithmetic mean (0 for an empty slice); no size-1 rule.
fn plain_mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// TreePO's per-leaf advantage before whitening, in `scan.leaves` order (see [`treepo`]).
fn treepo_raw(rollout: &TaskRollout, scan: &Scan) -> Vec<f64> {
    let n = scan.rewards.len();
    let root_size = n as f64;
    // Size-1 rule for the task subgroup: a lone leaf is compared with 0.
    let root_mean = if n < 2 {
        0.0
    } else {
        plain_mean(&scan.rewards)
    };
    scan.leaves
        .iter()
        .zip(&scan.rewards)
        .map(|(&leaf, &r)| {
            let mut weighted = root_size * (r - root_mean);
            let mut weights = root_size;
            let mut last = n as u32;
            let path = rollout.path(leaf);
            for &s in &path[..path.len() - 1] {
                let count = scan.counts[s as usize];
                if count >= 2 && count < last {
                    let size = f64::from(count);
                    weighted += size * (r - scan.value[s as usize]);
                    weights += size;
                    last = count;
                }
            }
            weighted / weights
        })
        .collect()
}

/// Leaves, rewards, leaf counts and values of a task group, computed once per estimator call.
struct Scan {
    /// Ids of the leaves that take part, in id order.
    leaves: Vec<NodeId>,
    /// Masked (budget-truncated) leaves, which take part in nothing.
    masked: Vec<NodeId>,
    /// Reward of each leaf, in `leaves` order.
    rewards: Vec<f64>,
    /// Leaves below each node.
    counts: Vec<u32>,
    /// Mean leaf reward below each node (0 where there are none).
    value: Vec<f64>,
    /// `counts` and `value` over every leaf, masked ones included (the exported columns).
    all_counts: Vec<u32>,
    all_value: Vec<f64>,
}

/// Leaves below each node and their mean reward (0 where there are none), over `leaves`.
fn counts_and_values(
    rollout: &TaskRollout,
    leaves: &[NodeId],
    rewards: &[f64],
) -> (Vec<u32>, Vec<f64>) {
    let n = rollout.nodes.len();
    let mut counts = vec![0u32; n];
    let mut sums = vec![0f64; n];
    for (&leaf, &r) in leaves.iter().zip(rewards) {
        for s in rollout.path(leaf) {
            counts[s as usize] += 1;
            sums[s as usize] += r;
        }
    }
    let value = sums
        .iter()
        .zip(&counts)
        .map(|(&sum, &c)| if c == 0 { 0.0 } else { sum / f64::from(c) })
        .collect();
    (counts, value)
}

impl Scan {
    fn new(rollout: &TaskRollout, mask_truncated: bool) -> Self {
        let (masked, leaves): (Vec<NodeId>, Vec<NodeId>) = rollout
            .leaves()
            .into_iter()
            .partition(|&l| mask_truncated && rollout.node(l).leaf.is_some_and(|i| i.truncated));
        let rewards: Vec<f64> = leaves
            .iter()
            .map(|&l| f64::from(rollout.node(l).leaf.map_or(0.0, |i| i.reward)))
            .collect();
        let (counts, value) = counts_and_values(rollout, &leaves, &rewards);
        // The exported statistics describe the whole tree: masked leaves count, with reward 0.
        let (all_counts, all_value) = if masked.is_empty() {
            (counts.clone(), value.clone())
        } else {
            let all = rollout.leaves();
            let all_rewards: Vec<f64> = all
                .iter()
                .map(|&l| f64::from(rollout.node(l).leaf.map_or(0.0, |i| i.reward)))
                .collect();
            counts_and_values(rollout, &all, &all_rewards)
        };
        Scan {
            leaves,
            masked,
            rewards,
            counts,
            value,
            all_counts,
            all_value,
        }
    }

    fn empty_output(&self, rollout: &TaskRollout, estimator: Estimator) -> AdvantageOutput {
        let n = rollout.nodes.len();
        let mut masked = vec![false; n];
        for &l in &self.masked {
            masked[l as usize] = true;
        }
        AdvantageOutput {
            task_id: rollout.task_id,
            estimator,
            masked,
            leaf_adv: vec![None; n],
            node_adv: vec![0.0; n],
            pos_sum: vec![0.0; n],
            neg_sum: vec![0.0; n],
            leaves_below: self.all_counts.clone(),
            value: self.all_value.iter().map(|&v| v as f32).collect(),
        }
    }

    /// Output of a trajectory-level estimator from one advantage per leaf (`scan.leaves` order):
    /// sums over the leaves below each action node.
    fn trajectory_output(
        &self,
        rollout: &TaskRollout,
        estimator: Estimator,
        adv: &[f64],
    ) -> AdvantageOutput {
        let n = rollout.nodes.len();
        let mut out = self.empty_output(rollout, estimator);
        let mut sum = vec![0f64; n];
        let mut pos = vec![0f64; n];
        let mut neg = vec![0f64; n];
        for (&leaf, &a) in self.leaves.iter().zip(adv) {
            out.leaf_adv[leaf as usize] = Some(a as f32);
            for s in rollout.path(leaf) {
                if !rollout.node(s).is_action() {
                    continue;
                }
                let s = s as usize;
                sum[s] += a;
                pos[s] += a.max(0.0);
                neg[s] += a.min(0.0);
            }
        }
        out.node_adv = sum.into_iter().map(|x| x as f32).collect();
        out.pos_sum = pos.into_iter().map(|x| x as f32).collect();
        out.neg_sum = neg.into_iter().map(|x| x as f32).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::LeafInfo;
    use envs::Outcome;

    /// Outputs are f32 computed in f64: the expected values below are written to 6 decimals, so
    /// agreement within 2e-6 is exact up to the rounding of the written constants.
    const TOL: f32 = 2e-6;

    fn close(got: f32, want: f64) {
        assert!(
            (f64::from(got) - want).abs() <= f64::from(TOL),
            "got {got}, want {want}"
        );
    }

    fn close_all(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            close(*g, *w);
        }
    }

    fn close_leaves(got: &[Option<f32>], want: &[Option<f64>]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => close(*g, *w),
                (None, None) => {}
                _ => panic!("node {i}: got {g:?}, want {w:?}"),
            }
        }
    }

    fn act(g: &mut TaskRollout, parent: Option<NodeId>, tree: u32, len: usize) -> NodeId {
        let tokens = (0..len as u32).map(|t| 100 + t).collect();
        g.add_action(parent, tree, tokens, "a", vec![-1.0; len], vec![0.5; len])
            .unwrap()
    }

    fn obs(g: &mut TaskRollout, parent: NodeId) -> NodeId {
        g.add_observation(parent, vec![7], "o").unwrap()
    }

    fn leaf(g: &mut TaskRollout, id: NodeId, reward: f32) {
        let outcome = if reward > 0.0 {
            Outcome::Solved
        } else {
            Outcome::Failed
        };
        g.set_leaf(id, LeafInfo::finished(reward, outcome)).unwrap();
    }

    /// The reference task: tree 0 = a0 -> o1 -> {a2 (R=1), a3 (R=0)}; tree 1 = a4 (R=1).
    /// Task leaves R = [1, 0, 1]: mean 2/3, var = ((1/3)² + (2/3)² + (1/3)²)/2 = 1/3,
    /// std = sqrt(1/3) = 0.577350.
    fn reference() -> TaskRollout {
        let mut g = TaskRollout::new(5, "p", vec![1]);
        let (t0, t1) = (g.new_tree(), g.new_tree());
        let a0 = act(&mut g, None, t0, 2);
        let o1 = obs(&mut g, a0);
        let a2 = act(&mut g, Some(o1), t0, 1);
        let a3 = act(&mut g, Some(o1), t0, 2);
        let a4 = act(&mut g, None, t1, 1);
        leaf(&mut g, a2, 1.0);
        leaf(&mut g, a3, 0.0);
        leaf(&mut g, a4, 1.0);
        g.validate().unwrap();
        g
    }

    fn check_common(out: &AdvantageOutput) {
        assert_eq!(out.task_id, 5);
        assert_eq!(out.leaves_below, vec![2, 2, 1, 1, 1]);
        close_all(&out.value, &[0.5, 0.5, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn grpo_reference() {
        let out = grpo(&reference());
        check_common(&out);
        // z(1) = (1 − 2/3)/(0.577350 + 1e-6) = 0.577349; z(0) = (0 − 2/3)/0.577351 = −1.154699.
        let (hi, lo) = (0.577349, -1.154699);
        close_leaves(&out.leaf_adv, &[None, None, Some(hi), Some(lo), Some(hi)]);
        // a0 = a2 + a3 = 0.577349 − 1.154699 = −0.577349 (−0.5773493 before rounding);
        // o1 is an observation: 0.
        close_all(&out.node_adv, &[-0.577349, 0.0, hi, lo, hi]);
        close_all(&out.pos_sum, &[0.577349, 0.0, hi, 0.0, hi]);
        close_all(&out.neg_sum, &[-1.154699, 0.0, 0.0, lo, 0.0]);
    }

    #[test]
    fn tree_grpo_reference() {
        let out = tree_grpo(&reference());
        check_common(&out);
        // Tree 0 leaves [1, 0]: mean 0.5, std = sqrt((0.25 + 0.25)/1) = 0.707107,
        //   intra z = ±0.5/0.707108 = ±0.707106.
        // Tree 1 has one leaf: nothing to compare with, intra term 0 (DESIGN §6).
        // Inter (task) z as in grpo: 0.577349 / −1.154699.
        // a2 = 0.707106 + 0.577349 = 1.284455; a3 = −0.707106 − 1.154699 = −1.861804;
        // a4 = 0 + 0.577349 = 0.577349.
        let (a2, a3, a4) = (1.284455, -1.861804, 0.577349);
        close_leaves(&out.leaf_adv, &[None, None, Some(a2), Some(a3), Some(a4)]);
        // a0 = 1.284455 − 1.861804 = −0.577349.
        close_all(&out.node_adv, &[-0.577349, 0.0, a2, a3, a4]);
        close_all(&out.pos_sum, &[a2, 0.0, a2, 0.0, a4]);
        close_all(&out.neg_sum, &[a3, 0.0, 0.0, a3, 0.0]);
    }

    /// Chains: every tree has one leaf, so tree-GRPO's intra term vanishes and it equals GRPO
    /// bit for bit (the chain baseline is plain GRPO whatever estimator is configured).
    #[test]
    fn tree_grpo_on_one_leaf_trees_is_grpo_exactly() {
        let mut g = TaskRollout::new(4, "p", vec![1]);
        for (i, r) in [1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0].into_iter().enumerate() {
            let t = g.new_tree();
            let a0 = act(&mut g, None, t, 1 + i % 3);
            let o1 = obs(&mut g, a0);
            let a2 = act(&mut g, Some(o1), t, 2);
            leaf(&mut g, a2, r);
        }
        let batch = [g];
        let tg = estimate(Estimator::TreeGrpo, &batch).unwrap().remove(0);
        let gr = estimate(Estimator::Grpo, &batch).unwrap().remove(0);
        assert_eq!(tg.leaf_adv, gr.leaf_adv);
        assert_eq!(tg.node_adv, gr.node_adv);
        assert_eq!((tg.pos_sum, tg.neg_sum), (gr.pos_sum, gr.neg_sum));
    }

    #[test]
    fn treerl_reference() {
        let out = treerl(&reference());
        check_common(&out);
        assert_eq!(out.leaf_adv, vec![None; 5]);
        // V(root) = 2/3; V(a0) = V(o1) = 0.5; V(a2) = 1, V(a3) = 0, V(a4) = 1.
        // a0 (top, parent = root): ((0.5 − 2/3) + (0.5 − 2/3))/sqrt(2) = −1/3/1.414214 = −0.235702
        // o1: observation, 0.
        // a2: ((1 − 2/3) + (1 − V(o1) = 0.5))/sqrt(1) = 1/3 + 1/2 = 0.833333
        // a3: ((0 − 2/3) + (0 − 0.5))/1 = −1.166667
        // a4 (top): ((1 − 2/3) + (1 − 2/3))/1 = 0.666667
        close_all(
            &out.node_adv,
            &[-0.235702, 0.0, 0.833333, -1.166667, 0.666667],
        );
        // pos/neg = |L(s)|·max/min(A(s), 0): a0 has 2 leaves: 2 · −0.235702 = −0.471405.
        close_all(&out.pos_sum, &[0.0, 0.0, 0.833333, 0.0, 0.666667]);
        close_all(&out.neg_sum, &[-0.471405, 0.0, 0.0, -1.166667, 0.0]);
        assert_eq!(out.token_advantage(0, 2), out.node_adv[0]);
    }

    #[test]
    fn treepo_reference() {
        let g = reference();
        let raw = treepo_unwhitened(&g);
        check_common(&raw);
        // Task subgroup: {a2, a3, a4}, size 3, mean 2/3.
        // a2: path a0 (2 leaves, mean 0.5: included), o1 (same 2 leaves: skipped).
        //   (3·(1 − 2/3) + 2·(1 − 0.5)) / (3 + 2) = (1 + 1)/5 = 0.4
        // a3: (3·(0 − 2/3) + 2·(0 − 0.5)) / 5 = (−2 − 1)/5 = −0.6
        // a4: top node, task subgroup only: 3·(1 − 2/3)/3 = 1/3
        close_leaves(
            &raw.leaf_adv,
            &[None, None, Some(0.4), Some(-0.6), Some(0.333333)],
        );
        close_all(&raw.node_adv, &[-0.2, 0.0, 0.4, -0.6, 0.333333]);
        // Whitening over the batch (this task only): mean = (0.4 − 0.6 + 1/3)/3 = 0.044444;
        // deviations 0.355556, −0.644444, 0.288889; var = (0.126420 + 0.415309 + 0.083457)/2
        // = 0.312593; std = 0.559100.
        // a2 = 0.355556/0.559101 = 0.635942; a3 = −1.152644; a4 = 0.516703.
        let out = &treepo(std::slice::from_ref(&g))[0];
        check_common(out);
        let (a2, a3, a4) = (0.635942, -1.152644, 0.516703);
        close_leaves(&out.leaf_adv, &[None, None, Some(a2), Some(a3), Some(a4)]);
        // a0 = 0.635942 − 1.152644 = −0.516702.
        close_all(&out.node_adv, &[-0.516702, 0.0, a2, a3, a4]);
        close_all(&out.pos_sum, &[a2, 0.0, a2, 0.0, a4]);
        close_all(&out.neg_sum, &[a3, 0.0, 0.0, a3, 0.0]);
    }

    #[test]
    fn treepo_whitens_over_the_whole_batch() {
        // Batch = reference (raw 0.4, −0.6, 1/3) + a one-leaf task with R = 1 (task subgroup of
        // size 1: mean 0, so raw = 1). All raw: [0.4, −0.6, 0.333333, 1]:
        // mean = 1.133333/4 = 0.283333; deviations 0.116667, −0.883333, 0.050000, 0.716667;
        // var = (0.013611 + 0.780278 + 0.002500 + 0.513611)/3 = 0.436667; std = 0.660808.
        // → 0.176551, −1.336746, 0.075665, 1.084530.
        let mut single = TaskRollout::new(9, "q", vec![]);
        let t = single.new_tree();
        let a = act(&mut single, None, t, 3);
        leaf(&mut single, a, 1.0);
        let out = treepo(&[reference(), single]);
        close_leaves(
            &out[0].leaf_adv,
            &[None, None, Some(0.176551), Some(-1.336746), Some(0.075665)],
        );
        close_leaves(&out[1].leaf_adv, &[Some(1.084530)]);
        assert_eq!(out[1].task_id, 9);
    }

    #[test]
    fn treepo_skips_repeated_and_singleton_subgroups() {
        // One tree: a0 -> o1 -> { a2 -> o3 -> {a4 (1), a5 (1)}, a6 (0) }, plus a second top
        // node a7 (0) in the same tree (root branching).
        let mut g = TaskRollout::new(1, "p", vec![]);
        let t = g.new_tree();
        let a0 = act(&mut g, None, t, 1);
        let o1 = obs(&mut g, a0);
        let a2 = act(&mut g, Some(o1), t, 1);
        let o3 = obs(&mut g, a2);
        let a4 = act(&mut g, Some(o3), t, 1);
        let a5 = act(&mut g, Some(o3), t, 1);
        let a6 = act(&mut g, Some(o1), t, 1);
        let a7 = act(&mut g, None, t, 1);
        for (id, r) in [(a4, 1.0), (a5, 1.0), (a6, 0.0), (a7, 0.0)] {
            leaf(&mut g, id, r);
        }
        g.validate().unwrap();
        let raw = treepo_unwhitened(&g);
        // Task subgroup: 4 leaves, mean 0.5. a0/o1: 3 leaves, mean 2/3. a2/o3: 2 leaves, mean 1.
        // a4, a5: (4·0.5 + 3·(1/3) + 2·0)/(4 + 3 + 2) = 3/9 = 0.333333
        //   (counting o1 and o3 again would give 4/14 = 0.285714).
        // a6: (4·(−0.5) + 3·(−2/3))/(4 + 3) = −4/7 = −0.571429
        // a7: the task subgroup only: −0.5
        let want = [0.333333, 0.333333, -0.571429, -0.5];
        for (l, w) in [a4, a5, a6, a7].into_iter().zip(want) {
            close(raw.leaf_adv[l as usize].unwrap(), w);
        }
        // Whitened: mean = −0.101190, std = 0.502592 →
        // 0.864565, 0.864565, −0.935625, −0.793505.
        let out = &treepo(&[g])[0];
        let want = [0.864565, 0.864565, -0.935625, -0.793505];
        for (l, w) in [a4, a5, a6, a7].into_iter().zip(want) {
            close(out.leaf_adv[l as usize].unwrap(), w);
        }
    }

    #[test]
    fn rloo_reference() {
        let out = rloo(&reference());
        check_common(&out);
        // a2: 1 − (0 + 1)/2 = 0.5; a3: 0 − (1 + 1)/2 = −1; a4: 1 − (1 + 0)/2 = 0.5.
        close_leaves(
            &out.leaf_adv,
            &[None, None, Some(0.5), Some(-1.0), Some(0.5)],
        );
        close_all(&out.node_adv, &[-0.5, 0.0, 0.5, -1.0, 0.5]);
        close_all(&out.pos_sum, &[0.5, 0.0, 0.5, 0.0, 0.5]);
        close_all(&out.neg_sum, &[-1.0, 0.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn group_of_size_one() {
        // One trajectory a0 -> o1 -> a2 with R = 1.
        let mut g = TaskRollout::new(3, "p", vec![]);
        let t = g.new_tree();
        let a0 = act(&mut g, None, t, 2);
        let o1 = obs(&mut g, a0);
        let a2 = act(&mut g, Some(o1), t, 1);
        leaf(&mut g, a2, 1.0);
        let batch = [g];
        let one = |e: Estimator| estimate(e, &batch).unwrap().remove(0);
        // grpo: mean 0, std 1 → 1/(1 + 1e-6) = 0.999999 on the leaf and on a0.
        let out = one(Estimator::Grpo);
        close_leaves(&out.leaf_adv, &[None, None, Some(0.999999)]);
        close_all(&out.node_adv, &[0.999999, 0.0, 0.999999]);
        // tree-grpo: the task term is a group of size 1 (0.999999); a one-leaf tree has intra
        // term 0.
        let out = one(Estimator::TreeGrpo);
        close_leaves(&out.leaf_adv, &[None, None, Some(0.999999)]);
        // rloo: no other trajectory, 0.
        let out = one(Estimator::Rloo);
        close_leaves(&out.leaf_adv, &[None, None, Some(0.0)]);
        // treerl: V(root) = V(a0) = V(o1) = V(a2) = 1 → all differences 0.
        let out = one(Estimator::TreeRl);
        close_all(&out.node_adv, &[0.0, 0.0, 0.0]);
        close_all(&out.value, &[1.0, 1.0, 1.0]);
        // treepo: task subgroup of size 1 (mean 0): raw = 1; whitening a batch of one leaf
        // (mean 0, std 1): 1/(1 + 1e-6) = 0.999999.
        let out = one(Estimator::TreePo);
        close_leaves(&out.leaf_adv, &[None, None, Some(0.999999)]);
        assert!(zero_adv_group(&batch[0]));
    }

    #[test]
    fn equal_rewards_give_zero_advantages() {
        let mut g = reference();
        g.nodes[3].leaf = Some(LeafInfo::finished(1.0, Outcome::Solved));
        assert!(zero_adv_group(&g));
        let batch = [g];
        // tree-grpo too: tree 1's single leaf has intra term 0, not 1/(1 + ε).
        for e in Estimator::ALL {
            let out = estimate(e, &batch).unwrap().remove(0);
            assert!(out.node_adv.iter().all(|&a| a == 0.0), "{e}: {out:?}");
            assert!(out.pos_sum.iter().all(|&a| a == 0.0), "{e}");
            assert!(out.neg_sum.iter().all(|&a| a == 0.0), "{e}");
        }
    }

    #[test]
    fn treerl_observation_values_are_parent_values() {
        // An action answered by two different observations (the arena allows it, e.g. for a
        // stochastic environment): a0 -> {o1 -> {a3 (1), a4 (1)}, o2 -> {a5 (0)}}.
        let mut g = TaskRollout::new(2, "p", vec![]);
        let t = g.new_tree();
        let a0 = act(&mut g, None, t, 1);
        let o1 = obs(&mut g, a0);
        let o2 = obs(&mut g, a0);
        let a3 = act(&mut g, Some(o1), t, 1);
        let a4 = act(&mut g, Some(o1), t, 1);
        let a5 = act(&mut g, Some(o2), t, 1);
        leaf(&mut g, a3, 1.0);
        leaf(&mut g, a4, 1.0);
        leaf(&mut g, a5, 0.0);
        let out = estimate(Estimator::TreeRl, &[g]).unwrap().remove(0);
        // V(root) = V(a0) = 2/3; V(o1) = 1; V(o2) = 0.
        close_all(&out.value, &[0.666667, 1.0, 0.0, 1.0, 1.0, 0.0]);
        // a0: (0 + 0)/sqrt(3) = 0. o1, o2: observations, 0 (and no pos/neg mass).
        // a3, a4: o1 has 2 leaves, more than a3's 1: the fork point is o1.
        //   ((1 − 2/3) + (1 − V(o1) = 1))/1 = 0.333333 (with V(a0) it would be 0.666667).
        // a5: o2 has a5's single leaf, a0 has 3: the fork point is a0.
        //   ((0 − 2/3) + (0 − V(a0) = 2/3))/1 = −1.333333 (with V(o2) it would be −0.666667).
        close_all(
            &out.node_adv,
            &[0.0, 0.0, 0.0, 0.333333, 0.333333, -1.333333],
        );
        close_all(&out.pos_sum, &[0.0, 0.0, 0.0, 0.333333, 0.333333, 0.0]);
        close_all(&out.neg_sum, &[0.0, 0.0, 0.0, 0.0, 0.0, -1.333333]);
        assert_eq!(out.leaves_below, vec![3, 2, 1, 1, 1, 1]);
    }

    /// TreeRL's local term on a chain forked at the root: tree 0 = a0 -> o1 -> a2 (R = 1) and
    /// a second top node a3 (R = 0). a2's parent o1 (and o1's parent a0) have a2's single leaf,
    /// so its last fork point is the root.
    #[test]
    fn treerl_local_term_uses_the_last_fork_point() {
        let mut g = TaskRollout::new(6, "p", vec![1]);
        let t = g.new_tree();
        let a0 = act(&mut g, None, t, 2);
        let o1 = obs(&mut g, a0);
        let a2 = act(&mut g, Some(o1), t, 3);
        let a3 = act(&mut g, None, t, 1);
        leaf(&mut g, a2, 1.0);
        leaf(&mut g, a3, 0.0);
        let out = treerl(&g);
        // V(root) = 0.5; V(a0) = V(o1) = V(a2) = 1; V(a3) = 0.
        // a0: ((1 − 0.5) + (1 − 0.5))/1 = 1.
        // a2: ((1 − 0.5) + (1 − V(root) = 0.5))/1 = 1 (parent-based LA would give 0.5).
        // a3: ((0 − 0.5) + (0 − 0.5))/1 = −1.
        close_all(&out.node_adv, &[1.0, 0.0, 1.0, -1.0]);
        close_all(&out.value, &[1.0, 1.0, 1.0, 0.0]);
    }

    /// The reference tree with a4 cut by the budget instead of R = 1.
    fn reference_truncated() -> TaskRollout {
        let mut g = TaskRollout::new(5, "p", vec![1]);
        let (t0, t1) = (g.new_tree(), g.new_tree());
        let a0 = act(&mut g, None, t0, 2);
        let o1 = obs(&mut g, a0);
        let a2 = act(&mut g, Some(o1), t0, 1);
        let a3 = act(&mut g, Some(o1), t0, 2);
        let a4 = act(&mut g, None, t1, 1);
        leaf(&mut g, a2, 1.0);
        leaf(&mut g, a3, 0.0);
        g.set_leaf(a4, LeafInfo::truncated(None)).unwrap();
        g
    }

    #[test]
    fn truncated_leaves_are_masked_by_default() {
        let batch = [reference_truncated()];
        for e in Estimator::ALL {
            let out = estimate(e, &batch).unwrap().remove(0);
            assert_eq!(out.masked, vec![false, false, false, false, true], "{e}");
            assert_eq!(out.leaf_adv[4], None, "{e}");
            assert_eq!(
                (out.node_adv[4], out.pos_sum[4], out.neg_sum[4]),
                (0.0, 0.0, 0.0)
            );
            assert_eq!(out.token_advantage(4, 4), 0.0, "{e}");
            assert_eq!(out.leaves_below, vec![2, 2, 1, 1, 1], "{e}");
        }
        // grpo over the two finished leaves [1, 0]: mean 0.5, std 0.707107 → ±0.707106.
        let z = 0.5 / (0.5f64.sqrt() + 1e-6);
        let out = estimate(Estimator::Grpo, &batch).unwrap().remove(0);
        close_leaves(&out.leaf_adv, &[None, None, Some(z), Some(-z), None]);
        // rloo: 1 − 0 = 1, 0 − 1 = −1.
        let out = estimate(Estimator::Rloo, &batch).unwrap().remove(0);
        close_leaves(&out.leaf_adv, &[None, None, Some(1.0), Some(-1.0), None]);
        // treerl: V(root) = 0.5 = V(a0): a0 gets 0; a2 = (0.5 + 0.5)/1 = 1.
        let out = estimate(Estimator::TreeRl, &batch).unwrap().remove(0);
        close_all(&out.node_adv, &[0.0, 0.0, 1.0, -1.0, 0.0]);
        // The truncated leaf is not an outcome: [1, 0] is a mixed group.
        let mut equal = reference_truncated();
        equal.nodes[3].leaf = Some(LeafInfo::finished(1.0, Outcome::Solved));
        assert!(zero_adv_group(&equal));
    }

    #[test]
    fn unmasked_truncated_leaves_count_with_reward_zero() {
        let batch = [reference_truncated()];
        let off = EstimateOptions {
            mask_truncated: false,
        };
        // grpo: rewards [1, 0, 0]: mean 1/3, std = sqrt(((2/3)² + 2·(1/3)²)/2) = 0.577350:
        // a2 = (2/3)/0.577351 = 1.154699, a3 = a4 = (−1/3)/0.577351 = −0.577349.
        let out = estimate_with(Estimator::Grpo, &batch, off)
            .unwrap()
            .remove(0);
        close_leaves(
            &out.leaf_adv,
            &[None, None, Some(1.154699), Some(-0.577349), Some(-0.577349)],
        );
        assert!(out.masked.iter().all(|&m| !m));
        // rloo: a4 = 0 − (1 + 0)/2 = −0.5.
        let out = estimate_with(Estimator::Rloo, &batch, off)
            .unwrap()
            .remove(0);
        close(out.leaf_adv[4].unwrap(), -0.5);
        // treerl: V(root) = 1/3, a4 (top): 2·(0 − 1/3)/1 = −0.666667.
        let out = estimate_with(Estimator::TreeRl, &batch, off)
            .unwrap()
            .remove(0);
        close(out.node_adv[4], -0.666667);
        close(out.value[4], 0.0);
    }

    /// A larger tree with mixed rewards, for structural identities.
    fn bushy() -> TaskRollout {
        let mut g = TaskRollout::new(11, "p", vec![]);
        let rewards = [1.0, 0.0, 0.5, 0.0, 1.0, 0.25, 0.0];
        let mut next = rewards.iter();
        let mut leaf_next = |g: &mut TaskRollout, id| leaf(g, id, *next.next().unwrap());
        let t0 = g.new_tree();
        let a0 = act(&mut g, None, t0, 3);
        let o1 = obs(&mut g, a0);
        let a2 = act(&mut g, Some(o1), t0, 2);
        let a3 = act(&mut g, Some(a2), t0, 2); // a turn split into two segments
        let o4 = obs(&mut g, a3);
        for _ in 0..3 {
            let a = act(&mut g, Some(o4), t0, 1);
            leaf_next(&mut g, a);
        }
        let a = act(&mut g, Some(o1), t0, 4);
        leaf_next(&mut g, a);
        let t1 = g.new_tree();
        let b0 = act(&mut g, None, t1, 2);
        let p1 = obs(&mut g, b0);
        let b = act(&mut g, Some(p1), t1, 1);
        leaf_next(&mut g, b);
        let b = act(&mut g, Some(p1), t1, 1);
        leaf_next(&mut g, b);
        let b = act(&mut g, None, t1, 5);
        leaf_next(&mut g, b);
        g.validate().unwrap();
        g
    }

    #[test]
    fn pos_and_neg_sums_add_up_over_leaves_below() {
        let batch = [bushy(), reference()];
        for e in Estimator::ALL {
            for (g, out) in batch.iter().zip(estimate(e, &batch).unwrap()) {
                assert_eq!(out.estimator, e);
                for node in &g.nodes {
                    let s = node.id as usize;
                    let below = g.leaves_below(node.id);
                    assert_eq!(out.leaves_below[s] as usize, below.len());
                    assert!(
                        out.pos_sum[s] >= 0.0 && out.neg_sum[s] <= 0.0,
                        "{e} node {s}"
                    );
                    if !node.is_action() {
                        assert_eq!(
                            (out.node_adv[s], out.pos_sum[s], out.neg_sum[s]),
                            (0.0, 0.0, 0.0)
                        );
                        continue;
                    }
                    let total: f32 = below.iter().map(|&l| out.token_advantage(node.id, l)).sum();
                    close(out.pos_sum[s] + out.neg_sum[s], f64::from(total));
                    if e.is_node_level() {
                        close(total, f64::from(out.node_adv[s]) * below.len() as f64);
                    } else {
                        close(out.node_adv[s], f64::from(total));
                    }
                }
                for l in g.leaves() {
                    assert_eq!(out.leaf_adv[l as usize].is_some(), !e.is_node_level());
                }
                for node in g.nodes.iter().filter(|n| !n.is_leaf()) {
                    assert_eq!(out.leaf_adv[node.id as usize], None);
                }
            }
        }
    }

    #[test]
    fn trajectory_estimators_are_zero_mean_where_they_should_be() {
        // GRPO z-scores and RLOO advantages sum to 0 over a task's leaves; TreePO's whitened
        // advantages sum to 0 over the batch.
        let batch = [bushy(), reference()];
        for e in [Estimator::Grpo, Estimator::Rloo] {
            for out in estimate(e, &batch).unwrap() {
                let s: f32 = out.leaf_adv.iter().flatten().sum();
                assert!(s.abs() < 1e-5, "{e}: {s}");
            }
        }
        let s: f32 = estimate(Estimator::TreePo, &batch)
            .unwrap()
            .iter()
            .flat_map(|o| o.leaf_adv.iter().flatten())
            .sum();
        assert!(s.abs() < 1e-5, "treepo: {s}");
    }

    #[test]
    fn estimator_names_round_trip() {
        use serde::Deserialize;
        use serde::de::value::{Error, StrDeserializer};
        for e in Estimator::ALL {
            assert_eq!(e.to_string().parse::<Estimator>(), Ok(e));
            let de = StrDeserializer::<Error>::new(e.name());
            assert_eq!(Estimator::deserialize(de), Ok(e));
            assert_eq!(e.is_node_level(), e == Estimator::TreeRl);
        }
        let names: Vec<_> = Estimator::ALL.iter().map(|e| e.to_string()).collect();
        assert_eq!(names, ["grpo", "tree-grpo", "treerl", "treepo", "rloo"]);
        assert_eq!(
            "ppo".parse::<Estimator>(),
            Err(crate::Error::UnknownEstimator {
                name: "ppo".into(),
                known: "grpo, tree-grpo, treerl, treepo, rloo".into(),
            })
        );
        assert_eq!(Estimator::default(), Estimator::TreeGrpo);
    }

    #[test]
    fn estimate_rejects_invalid_rollouts() {
        let mut g = reference();
        g.nodes[3].leaf = None; // a dropped trajectory
        assert_eq!(
            estimate(Estimator::Grpo, &[reference(), g]),
            Err(Error::InvalidRollout {
                task_id: 5,
                source: Box::new(Error::Dangling { node: 3 }),
            })
        );
    }

    #[test]
    fn zero_adv_share() {
        let mut equal = reference();
        equal.nodes[3].leaf = Some(LeafInfo::finished(1.0, Outcome::Solved));
        let empty = TaskRollout::new(0, "p", vec![]);
        assert!(!zero_adv_group(&reference()));
        assert!(zero_adv_group(&empty));
        assert_eq!(zero_adv_groups_frac(&[reference(), equal]), 0.5);
        assert_eq!(zero_adv_groups_frac(&[]), 0.0);
        // An empty group produces empty outputs.
        let out = estimate(Estimator::TreePo, &[empty]).unwrap();
        assert!(out[0].leaf_adv.is_empty());
    }
}
