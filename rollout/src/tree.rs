//! The rollout-tree arena every sampler fills (DESIGN §5, §9).
//!
//! One [`TaskRollout`] holds everything sampled for one task group (one prompt): all of its trees,
//! as a flat arena of [`Node`]s indexed by [`NodeId`]. It is plain data: no environment, no engine,
//! no RNG. Samplers build it with [`TaskRollout::add_action`], [`TaskRollout::add_observation`] and
//! [`TaskRollout::set_leaf`], then hand the finished group to a caller-supplied [`TreeSink`]
//! (STYLE §10). The advantage estimators ([`crate::advantage`]), the trainer's tree packing and
//! the Parquet export read it.
//!
//! # Conventions
//! - **The root is the prompt and is implicit.** Every tree of a task shares it. Nodes directly
//!   under the prompt ("top nodes") have `parent: None` and name their tree with `tree`
//!   (`0..num_trees`); every other node inherits its parent's tree. A tree may have several top
//!   nodes (Tree-GRPO's random branching may branch at the root).
//! - **Ids are arena indices** (`nodes[id].id == id`), unique within the task group, and a parent's
//!   id is always smaller than its children's: the arena is append-only, so id order is a
//!   topological order and `children` lists are in increasing id order.
//! - **Depth** is the number of ancestor nodes: top nodes have depth 0.
//! - **Kinds.** An [`NodeKind::Action`] node holds policy-generated tokens with their behaviour
//!   logprobs and entropies (same length as `tokens`); an [`NodeKind::Observation`] node holds
//!   env text appended after an action (no logprobs, no entropies). An observation always follows
//!   an action (never at the top, never after an observation). An action may follow an
//!   observation (a new turn) or another action: with `segment` or `token` node granularity
//!   (DESIGN §5) one turn is split into several consecutive action nodes. With the default `step`
//!   granularity nodes therefore alternate action → observation → action ….
//! - **Leaves** are action nodes that ended their trajectory: the episode finished (`done`), or
//!   the trajectory was cut by the token budget or the context window (`truncated`: reward 0,
//!   success false, DESIGN §4). A leaf has no children and an observation is never a leaf.
//!   In a finished group every childless node is a leaf: nothing is silently dropped.
//!
//! # Example
//! ```
//! use rollout::tree::{LeafInfo, TaskRollout};
//! use envs::Outcome;
//!
//! let mut group = TaskRollout::new(7, "Q: 2+2?\n", vec![1, 2, 3]);
//! let t = group.new_tree();
//! let a = group.add_action(None, t, vec![10, 11], "search[x]", vec![-0.1, -0.2], vec![0.5, 0.4])?;
//! let o = group.add_observation(a, vec![12], "x is 4\n")?;
//! let b = group.add_action(Some(o), t, vec![13], "answer[4]", vec![-0.3], vec![0.1])?;
//! group.set_leaf(b, LeafInfo::finished(1.0, Outcome::Solved))?;
//! group.validate()?;
//! assert_eq!(group.leaves(), vec![b]);
//! assert_eq!(group.transcript(b), "Q: 2+2?\nsearch[x]x is 4\nanswer[4]");
//! assert_eq!(group.action_tokens_unique(), 3);
//! # Ok::<(), rollout::Error>(())
//! ```

use std::collections::HashSet;

use crate::Error;
use envs::Outcome;

/// Index of a node in its [`TaskRollout::nodes`], unique within the task group.
pub type NodeId = u32;

/// What a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Tokens sampled by the policy (trained on).
    Action,
    /// Text returned by the environment (appended to the context, never trained on).
    Observation,
}

impl NodeKind {
    /// The name used in exports: `"action"` or `"observation"` (DESIGN §9 `nodes.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Action => "action",
            NodeKind::Observation => "observation",
        }
    }
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a trajectory ended; set on its last action node (the leaf).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeafInfo {
    /// The trajectory's return (sum of the step rewards along its path; the benchmarks give it
    /// at the final step). Always 0 for a truncated trajectory.
    pub reward: f32,
    /// Whether the task was solved. Always false for a truncated trajectory.
    pub success: bool,
    /// Whether the trajectory was cut by the token budget or the context window instead of
    /// ending in the environment (DESIGN §4).
    pub truncated: bool,
    /// What the last action did in the environment; `None` when the environment never saw it
    /// (an action cut mid-generation).
    pub outcome: Option<Outcome>,
}

impl LeafInfo {
    /// A trajectory the environment ended (`done`), with its return; success is
    /// [`Outcome::is_success`].
    pub fn finished(reward: f32, outcome: Outcome) -> Self {
        LeafInfo {
            reward,
            success: outcome.is_success(),
            truncated: false,
            outcome: Some(outcome),
        }
    }

    /// A trajectory cut by the budget or the context window: reward 0, no success. `outcome` is
    /// what the environment answered to the last action, if it saw it.
    pub fn truncated(outcome: Option<Outcome>) -> Self {
        LeafInfo {
            reward: 0.0,
            success: false,
            truncated: true,
            outcome,
        }
    }
}

/// One node of a rollout tree: a span of tokens on a trajectory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// This node's index in the arena.
    pub id: NodeId,
    /// The parent node; `None` for a top node (whose parent is the implicit prompt root).
    pub parent: Option<NodeId>,
    /// The tree of the task group this node belongs to (`0..num_trees`).
    pub tree: u32,
    /// Number of ancestor nodes (0 for top nodes).
    pub depth: u32,
    /// Action (sampled) or observation (env text).
    pub kind: NodeKind,
    /// Token ids of this span.
    pub tokens: Vec<u32>,
    /// Decoded text of this span (what the transcript shows).
    pub text: String,
    /// Behaviour log-probability of each token (action nodes; empty for observations).
    /// # Shapes
    /// `logprobs: [tokens.len()]` for actions, `[0]` for observations.
    pub logprobs: Vec<f32>,
    /// Entropy (nats) of the policy's distribution at each token (action nodes; empty for
    /// observations).
    /// # Shapes
    /// `entropies: [tokens.len()]` for actions, `[0]` for observations.
    pub entropies: Vec<f32>,
    /// Child node ids, in increasing order.
    pub children: Vec<NodeId>,
    /// Set when the node ends a trajectory.
    pub leaf: Option<LeafInfo>,
}

impl Node {
    /// Whether the node ends a trajectory.
    pub fn is_leaf(&self) -> bool {
        self.leaf.is_some()
    }

    /// Whether the node holds policy-generated tokens.
    pub fn is_action(&self) -> bool {
        self.kind == NodeKind::Action
    }
}

/// Everything sampled for one task group (one prompt): all its trees. See the module docs for
/// the conventions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskRollout {
    /// The task id (as given to `EnvSpec::make`).
    pub task_id: u64,
    /// The prompt (the environment's initial observation); the implicit root of every tree.
    pub prompt: String,
    /// The prompt's tokens as the policy saw them (including `<bos>` where the tokenizer adds it).
    pub prompt_tokens: Vec<u32>,
    /// The arena; `nodes[i].id == i`.
    pub nodes: Vec<Node>,
    /// Number of trees; every node's `tree` is below it and every tree has a top node.
    pub num_trees: u32,
}

impl TaskRollout {
    /// An empty group (no trees yet) for `task_id` with its prompt.
    pub fn new(task_id: u64, prompt: impl Into<String>, prompt_tokens: Vec<u32>) -> Self {
        TaskRollout {
            task_id,
            prompt: prompt.into(),
            prompt_tokens,
            nodes: Vec::new(),
            num_trees: 0,
        }
    }

    /// Opens a new tree and returns its index. Give it a top node before the group is
    /// validated (an empty tree is an error).
    pub fn new_tree(&mut self) -> u32 {
        self.num_trees += 1;
        self.num_trees - 1
    }

    /// Appends an action node (policy-generated tokens) and returns its id.
    ///
    /// `parent: None` makes a top node of `tree`; otherwise `tree` must be the parent's tree and
    /// the parent must not be a leaf.
    ///
    /// # Shapes
    /// `tokens`, `logprobs`, `entropies`: `[n]` (the same `n`).
    pub fn add_action(
        &mut self,
        parent: Option<NodeId>,
        tree: u32,
        tokens: Vec<u32>,
        text: impl Into<String>,
        logprobs: Vec<f32>,
        entropies: Vec<f32>,
    ) -> Result<NodeId, Error> {
        let id = self.next_id()?;
        if tokens.len() != logprobs.len() || tokens.len() != entropies.len() {
            return Err(Error::LengthMismatch {
                node: id,
                kind: NodeKind::Action,
                tokens: tokens.len(),
                logprobs: logprobs.len(),
                entropies: entropies.len(),
            });
        }
        let depth = match parent {
            None => {
                if tree >= self.num_trees {
                    return Err(Error::TreeOutOfRange {
                        node: id,
                        tree,
                        num_trees: self.num_trees,
                    });
                }
                0
            }
            Some(p) => {
                let pn = self.growable_parent(p)?;
                if pn.tree != tree {
                    return Err(Error::TreeMismatch {
                        node: id,
                        tree,
                        parent_tree: pn.tree,
                    });
                }
                pn.depth + 1
            }
        };
        Ok(self.push(Node {
            id,
            parent,
            tree,
            depth,
            kind: NodeKind::Action,
            tokens,
            text: text.into(),
            logprobs,
            entropies,
            children: Vec::new(),
            leaf: None,
        }))
    }

    /// Appends an observation node (env text) under the action node `parent` and returns its id.
    /// It inherits the parent's tree.
    pub fn add_observation(
        &mut self,
        parent: NodeId,
        tokens: Vec<u32>,
        text: impl Into<String>,
    ) -> Result<NodeId, Error> {
        let id = self.next_id()?;
        let pn = self.growable_parent(parent)?;
        if pn.kind == NodeKind::Observation {
            return Err(Error::ObservationAfterObservation { node: id, parent });
        }
        let (tree, depth) = (pn.tree, pn.depth + 1);
        Ok(self.push(Node {
            id,
            parent: Some(parent),
            tree,
            depth,
            kind: NodeKind::Observation,
            tokens,
            text: text.into(),
            logprobs: Vec::new(),
            entropies: Vec::new(),
            children: Vec::new(),
            leaf: None,
        }))
    }

    /// Marks the action node `id` as the end of a trajectory.
    ///
    /// Fails if `id` is unknown, an observation, has children, is already a leaf, or if `info`
    /// is inconsistent (non-finite reward; truncated with a reward or a success).
    pub fn set_leaf(&mut self, id: NodeId, info: LeafInfo) -> Result<(), Error> {
        let len = self.nodes.len();
        let node = self
            .nodes
            .get_mut(id as usize)
            .ok_or(Error::UnknownNode { node: id, len })?;
        if node.kind != NodeKind::Action {
            return Err(Error::LeafNotAction { node: id });
        }
        if !node.children.is_empty() {
            return Err(Error::LeafWithChildren { node: id });
        }
        if node.leaf.is_some() {
            return Err(Error::AlreadyLeaf { node: id });
        }
        check_leaf_info(id, &info)?;
        node.leaf = Some(info);
        Ok(())
    }

    /// The node with id `id`.
    ///
    /// # Panics
    /// If `id` is not in the arena.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// All leaves, in id order.
    pub fn leaves(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.is_leaf())
            .map(|n| n.id)
            .collect()
    }

    /// The leaves of tree `tree`, in id order.
    pub fn tree_leaves(&self, tree: u32) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.is_leaf() && n.tree == tree)
            .map(|n| n.id)
            .collect()
    }

    /// Number of leaves (trajectories) in the group.
    pub fn num_leaves(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_leaf()).count()
    }

    /// The nodes from the top of `id`'s tree down to `id` itself (root first; the implicit prompt
    /// root is not a node and is not included). DESIGN §9 `node_path`.
    ///
    /// # Panics
    /// If `id` or an ancestor is not in the arena, or a parent does not precede its child (a
    /// rollout that fails [`TaskRollout::validate`]).
    pub fn path(&self, id: NodeId) -> Vec<NodeId> {
        let mut path = vec![id];
        let mut cur = id;
        while let Some(p) = self.nodes[cur as usize].parent {
            assert!(
                p < cur,
                "node {cur} names parent {p}, which does not precede it"
            );
            path.push(p);
            cur = p;
        }
        path.reverse();
        path
    }

    /// The leaves in the subtree of `id` (including `id` if it is a leaf), in id order.
    ///
    /// # Panics
    /// If `id` or a listed child is not in the arena.
    pub fn leaves_below(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            let node = &self.nodes[n as usize];
            if node.is_leaf() {
                out.push(n);
            }
            stack.extend(node.children.iter().copied());
        }
        out.sort_unstable();
        out
    }

    /// The number of leaves in the subtree of every node, indexed by node id (DESIGN §9
    /// `nodes.leaves_below`). One pass in reverse id order (children follow parents).
    ///
    /// # Panics
    /// If a parent id is not in the arena (a rollout that fails [`TaskRollout::validate`]).
    ///
    /// # Shapes
    /// returns `[nodes.len()]`.
    pub fn leaf_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        for node in self.nodes.iter().rev() {
            let i = node.id as usize;
            if node.is_leaf() {
                counts[i] += 1;
            }
            if let Some(p) = node.parent {
                counts[p as usize] += counts[i];
            }
        }
        counts
    }

    /// Policy-generated tokens in the group with shared prefixes counted once: the sum of the
    /// token counts of all action nodes. This is the budget recount (DESIGN §4): it must not
    /// exceed the task's budget.
    pub fn action_tokens_unique(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_action())
            .map(|n| n.tokens.len())
            .sum()
    }

    /// Environment tokens in the group (observation nodes, each counted once; the prompt is not
    /// included).
    pub fn observation_tokens_unique(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !n.is_action())
            .map(|n| n.tokens.len())
            .sum()
    }

    /// Policy-generated tokens on the path to `leaf` (DESIGN §9 `trajectories.action_tokens`).
    ///
    /// # Panics
    /// As [`TaskRollout::path`].
    pub fn path_action_tokens(&self, leaf: NodeId) -> usize {
        self.path(leaf)
            .into_iter()
            .map(|n| self.node(n))
            .filter(|n| n.is_action())
            .map(|n| n.tokens.len())
            .sum()
    }

    /// All tokens on the path to `leaf` (actions and observations, the prompt excluded), in order.
    ///
    /// # Panics
    /// As [`TaskRollout::path`].
    pub fn path_tokens(&self, leaf: NodeId) -> Vec<u32> {
        self.path(leaf)
            .into_iter()
            .flat_map(|n| self.node(n).tokens.iter().copied())
            .collect()
    }

    /// The full transcript of the trajectory ending at `leaf`: the prompt followed by the texts of
    /// the nodes on its path (DESIGN §9 invariant `text = prompt + texts along node_path`).
    ///
    /// # Panics
    /// As [`TaskRollout::path`].
    pub fn transcript(&self, leaf: NodeId) -> String {
        let path = self.path(leaf);
        let len = self.prompt.len() + path.iter().map(|&n| self.node(n).text.len()).sum::<usize>();
        let mut text = String::with_capacity(len);
        text.push_str(&self.prompt);
        for n in path {
            text.push_str(&self.node(n).text);
        }
        text
    }

    /// The action nodes on the path to `leaf`, root first.
    ///
    /// # Panics
    /// As [`TaskRollout::path`].
    pub fn path_actions(&self, leaf: NodeId) -> Vec<NodeId> {
        self.path(leaf)
            .into_iter()
            .filter(|&n| self.node(n).is_action())
            .collect()
    }

    /// The number of agent turns on the path to `leaf` (DESIGN §9 `trajectories.turns`): maximal
    /// runs of consecutive action nodes, so a turn split into several nodes (`segment`/`token`
    /// granularity) counts once. With `step` granularity this is the number of action nodes.
    ///
    /// # Panics
    /// As [`TaskRollout::path`].
    pub fn turns(&self, leaf: NodeId) -> u32 {
        let mut turns = 0;
        let mut in_action = false;
        for n in self.path(leaf) {
            let is_action = self.node(n).is_action();
            if is_action && !in_action {
                turns += 1;
            }
            in_action = is_action;
        }
        turns
    }

    /// The number of leaves whose token sequences (actions and observations along the path) are
    /// distinct: two leaves that produced the same tokens count once (DESIGN §9
    /// `metrics.distinct_trajectories`).
    pub fn distinct_trajectories(&self) -> usize {
        self.leaves()
            .into_iter()
            .map(|l| self.path_tokens(l))
            .collect::<HashSet<_>>()
            .len()
    }

    /// Checks every convention of the module docs and returns the first violation:
    /// ids are indices; parents exist and precede their children; `children` lists match the
    /// parents; trees are in range, match their parent's, and none is empty; depths count
    /// ancestors; observations follow actions; action logprobs/entropies have one entry per token
    /// and observations have none; leaves are childless actions with a finite reward, and a
    /// truncated leaf has reward 0 and no success; every childless node is a leaf.
    pub fn validate(&self) -> Result<(), Error> {
        let len = self.nodes.len();
        let mut expected_children: Vec<Vec<NodeId>> = vec![Vec::new(); len];
        let mut tree_has_top = vec![false; self.num_trees as usize];
        for (index, node) in self.nodes.iter().enumerate() {
            if node.id as usize != index {
                return Err(Error::IdMismatch { index, id: node.id });
            }
            let id = node.id;
            if node.tree >= self.num_trees {
                return Err(Error::TreeOutOfRange {
                    node: id,
                    tree: node.tree,
                    num_trees: self.num_trees,
                });
            }
            let expected_depth = match node.parent {
                None => {
                    if node.kind == NodeKind::Observation {
                        return Err(Error::ObservationAtTop { node: id });
                    }
                    tree_has_top[node.tree as usize] = true;
                    0
                }
                Some(p) => {
                    if p >= id {
                        return Err(Error::BadParent {
                            node: id,
                            parent: p,
                        });
                    }
                    let pn = &self.nodes[p as usize];
                    if pn.tree != node.tree {
                        return Err(Error::TreeMismatch {
                            node: id,
                            tree: node.tree,
                            parent_tree: pn.tree,
                        });
                    }
                    if node.kind == NodeKind::Observation && pn.kind == NodeKind::Observation {
                        return Err(Error::ObservationAfterObservation {
                            node: id,
                            parent: p,
                        });
                    }
                    expected_children[p as usize].push(id);
                    pn.depth + 1
                }
            };
            if node.depth != expected_depth {
                return Err(Error::BadDepth {
                    node: id,
                    depth: node.depth,
                    expected: expected_depth,
                });
            }
            let want = match node.kind {
                NodeKind::Action => node.tokens.len(),
                NodeKind::Observation => 0,
            };
            if node.logprobs.len() != want || node.entropies.len() != want {
                return Err(Error::LengthMismatch {
                    node: id,
                    kind: node.kind,
                    tokens: node.tokens.len(),
                    logprobs: node.logprobs.len(),
                    entropies: node.entropies.len(),
                });
            }
        }
        if let Some(tree) = tree_has_top.iter().position(|&has| !has) {
            return Err(Error::EmptyTree { tree: tree as u32 });
        }
        for (node, expected) in self.nodes.iter().zip(&expected_children) {
            if node.children != *expected {
                return Err(Error::BadChildren { node: node.id });
            }
            match &node.leaf {
                Some(info) => {
                    if node.kind != NodeKind::Action {
                        return Err(Error::LeafNotAction { node: node.id });
                    }
                    if !node.children.is_empty() {
                        return Err(Error::LeafWithChildren { node: node.id });
                    }
                    check_leaf_info(node.id, info)?;
                }
                None if node.children.is_empty() => {
                    return Err(Error::Dangling { node: node.id });
                }
                None => {}
            }
        }
        Ok(())
    }

    fn next_id(&self) -> Result<NodeId, Error> {
        NodeId::try_from(self.nodes.len()).map_err(|_| Error::TooManyNodes {
            max: u64::from(NodeId::MAX),
        })
    }

    /// The parent a new node may be attached to: it exists and is not a leaf.
    fn growable_parent(&self, parent: NodeId) -> Result<&Node, Error> {
        let pn = self.nodes.get(parent as usize).ok_or(Error::UnknownNode {
            node: parent,
            len: self.nodes.len(),
        })?;
        if pn.is_leaf() {
            return Err(Error::LeafWithChildren { node: parent });
        }
        Ok(pn)
    }

    fn push(&mut self, node: Node) -> NodeId {
        let id = node.id;
        if let Some(p) = node.parent {
            self.nodes[p as usize].children.push(id);
        }
        self.nodes.push(node);
        id
    }
}

fn check_leaf_info(node: NodeId, info: &LeafInfo) -> Result<(), Error> {
    let reason = if !info.reward.is_finite() {
        "reward is not finite"
    } else if info.truncated && info.reward != 0.0 {
        "a truncated trajectory keeps reward 0"
    } else if info.truncated && info.success {
        "a truncated trajectory cannot be a success"
    } else {
        return Ok(());
    };
    Err(Error::BadLeaf { node, reason })
}

/// Receives finished task groups from a sampler (STYLE §10): a Parquet writer, a metrics
/// collector, a test. Samplers call [`TreeSink::accept`] once per task group and step, after the
/// group is complete, so no I/O sits inside the sampling loop.
///
/// `accept` cannot fail: a sink that does I/O keeps its first error and reports it from its own
/// `finish`/`flush` method, so the sampler's loop stays free of sink concerns.
pub trait TreeSink {
    /// Takes one finished task group of training step `step`.
    fn accept(&mut self, step: u64, rollout: &TaskRollout);
}

/// Collects clones of every group (the step is dropped).
impl TreeSink for Vec<TaskRollout> {
    fn accept(&mut self, _step: u64, rollout: &TaskRollout) {
        self.push(rollout.clone());
    }
}

/// Collects clones of every group with its step.
impl TreeSink for Vec<(u64, TaskRollout)> {
    fn accept(&mut self, step: u64, rollout: &TaskRollout) {
        self.push((step, rollout.clone()));
    }
}

/// A mutable reference to a sink is a sink, so a sampler can take `impl TreeSink` by value.
impl<S: TreeSink + ?Sized> TreeSink for &mut S {
    fn accept(&mut self, step: u64, rollout: &TaskRollout) {
        (**self).accept(step, rollout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(
        g: &mut TaskRollout,
        parent: Option<NodeId>,
        tree: u32,
        tokens: &[u32],
        text: &str,
    ) -> NodeId {
        let n = tokens.len();
        g.add_action(
            parent,
            tree,
            tokens.to_vec(),
            text,
            vec![-0.5; n],
            vec![1.0; n],
        )
        .unwrap()
    }

    /// Tree 0: a0 -> o1 -> {a2 (leaf, 1), a3 (leaf, 0)}; tree 1: a4 (leaf, truncated).
    fn sample() -> TaskRollout {
        let mut g = TaskRollout::new(42, "P:", vec![0, 9]);
        let t0 = g.new_tree();
        let t1 = g.new_tree();
        let a0 = act(&mut g, None, t0, &[1, 2], "search[a]");
        let o1 = g.add_observation(a0, vec![3], "|obs|").unwrap();
        let a2 = act(&mut g, Some(o1), t0, &[4], "answer[x]");
        let a3 = act(&mut g, Some(o1), t0, &[5, 6], "answer[y]");
        let a4 = act(&mut g, None, t1, &[7], "sea");
        g.set_leaf(a2, LeafInfo::finished(1.0, Outcome::Solved))
            .unwrap();
        g.set_leaf(a3, LeafInfo::finished(0.0, Outcome::Failed))
            .unwrap();
        g.set_leaf(a4, LeafInfo::truncated(None)).unwrap();
        g
    }

    #[test]
    fn builds_structure_by_hand() {
        let g = sample();
        g.validate().unwrap();
        assert_eq!(g.nodes.len(), 5);
        assert_eq!(g.node(0).children, vec![1]);
        assert_eq!(g.node(1).children, vec![2, 3]);
        assert_eq!(
            g.nodes.iter().map(|n| n.depth).collect::<Vec<_>>(),
            vec![0, 1, 2, 2, 0]
        );
        assert_eq!(
            g.nodes.iter().map(|n| n.tree).collect::<Vec<_>>(),
            vec![0, 0, 0, 0, 1]
        );
        assert_eq!(g.leaves(), vec![2, 3, 4]);
        assert_eq!(g.tree_leaves(0), vec![2, 3]);
        assert_eq!(g.tree_leaves(1), vec![4]);
        assert_eq!(g.num_leaves(), 3);
        assert!(g.node(4).leaf.unwrap().truncated);
        assert_eq!(g.node(4).leaf.unwrap().reward, 0.0);
        assert!(g.node(2).leaf.unwrap().success);
    }

    #[test]
    fn paths_transcripts_and_counts() {
        let g = sample();
        assert_eq!(g.path(3), vec![0, 1, 3]);
        assert_eq!(g.path(4), vec![4]);
        assert_eq!(g.path(1), vec![0, 1]);
        assert_eq!(g.transcript(3), "P:search[a]|obs|answer[y]");
        assert_eq!(g.transcript(4), "P:sea");
        assert_eq!(g.leaves_below(0), vec![2, 3]);
        assert_eq!(g.leaves_below(1), vec![2, 3]);
        assert_eq!(g.leaves_below(2), vec![2]);
        assert_eq!(g.leaves_below(4), vec![4]);
        assert_eq!(g.leaf_counts(), vec![2, 2, 1, 1, 1]);
        // Action tokens: a0 2 + a2 1 + a3 2 + a4 1 = 6 (a0 counted once).
        assert_eq!(g.action_tokens_unique(), 6);
        assert_eq!(g.observation_tokens_unique(), 1);
        assert_eq!(g.path_action_tokens(3), 4); // a0 2 + a3 2
        assert_eq!(g.path_action_tokens(2), 3); // a0 2 + a2 1
        assert_eq!(g.path_tokens(3), vec![1, 2, 3, 5, 6]);
        assert_eq!(g.path_actions(3), vec![0, 3]);
        assert_eq!(g.turns(3), 2);
        assert_eq!(g.turns(4), 1);
    }

    #[test]
    fn turns_merge_consecutive_action_segments() {
        // One turn split into two segments (a0 -> a1), then an observation and a second turn.
        let mut g = TaskRollout::new(1, "", vec![]);
        let t = g.new_tree();
        let a0 = act(&mut g, None, t, &[1], "sea");
        let a1 = act(&mut g, Some(a0), t, &[2], "rch[x]");
        let o = g.add_observation(a1, vec![3], ".").unwrap();
        let a2 = act(&mut g, Some(o), t, &[4], "answer[x]");
        g.set_leaf(a2, LeafInfo::finished(1.0, Outcome::Solved))
            .unwrap();
        g.validate().unwrap();
        assert_eq!(g.turns(a2), 2);
        assert_eq!(g.path_actions(a2), vec![0, 1, 3]);
        assert_eq!(g.transcript(a2), "search[x].answer[x]");
    }

    #[test]
    fn distinct_trajectories_count_identical_token_paths_once() {
        let mut g = sample();
        assert_eq!(g.distinct_trajectories(), 3);
        // A second top node in tree 1 repeating a4's tokens: the same trajectory again.
        let a5 = act(&mut g, None, 1, &[7], "sea");
        g.set_leaf(a5, LeafInfo::truncated(None)).unwrap();
        // A sibling of a2 under o1 repeating its tokens.
        let a6 = act(&mut g, Some(1), 0, &[4], "answer[x]");
        g.set_leaf(a6, LeafInfo::finished(1.0, Outcome::Solved))
            .unwrap();
        g.validate().unwrap();
        assert_eq!(g.num_leaves(), 5);
        assert_eq!(g.distinct_trajectories(), 3);
        // Same tokens split differently across nodes still count as the same trajectory:
        // [1,2]+[3]+[5,6] (a3) vs a new top node [1,2,3,5,6] in tree 1.
        let a7 = act(&mut g, None, 1, &[1, 2, 3, 5, 6], "x");
        g.set_leaf(a7, LeafInfo::finished(0.0, Outcome::Failed))
            .unwrap();
        assert_eq!(g.distinct_trajectories(), 3);
        let a8 = act(&mut g, None, 1, &[1, 2, 3, 5], "x");
        g.set_leaf(a8, LeafInfo::finished(0.0, Outcome::Failed))
            .unwrap();
        assert_eq!(g.distinct_trajectories(), 4);
    }

    #[test]
    fn add_rejects_bad_requests() {
        let mut g = sample();
        assert_eq!(
            g.add_action(Some(9), 0, vec![], "", vec![], vec![]),
            Err(Error::UnknownNode { node: 9, len: 5 })
        );
        assert_eq!(
            g.add_action(None, 2, vec![], "", vec![], vec![]),
            Err(Error::TreeOutOfRange {
                node: 5,
                tree: 2,
                num_trees: 2
            })
        );
        assert_eq!(
            g.add_action(Some(1), 1, vec![], "", vec![], vec![]),
            Err(Error::TreeMismatch {
                node: 5,
                tree: 1,
                parent_tree: 0
            })
        );
        assert_eq!(
            g.add_action(Some(1), 0, vec![1, 2], "", vec![0.0], vec![0.0, 0.0]),
            Err(Error::LengthMismatch {
                node: 5,
                kind: NodeKind::Action,
                tokens: 2,
                logprobs: 1,
                entropies: 2
            })
        );
        assert_eq!(
            g.add_action(Some(2), 0, vec![], "", vec![], vec![]),
            Err(Error::LeafWithChildren { node: 2 })
        );
        assert_eq!(
            g.add_observation(1, vec![], ""),
            Err(Error::ObservationAfterObservation { node: 5, parent: 1 })
        );
        assert_eq!(
            g.set_leaf(1, LeafInfo::finished(1.0, Outcome::Solved)),
            Err(Error::LeafNotAction { node: 1 })
        );
        assert_eq!(
            g.set_leaf(0, LeafInfo::finished(1.0, Outcome::Solved)),
            Err(Error::LeafWithChildren { node: 0 })
        );
        assert_eq!(
            g.set_leaf(2, LeafInfo::finished(1.0, Outcome::Solved)),
            Err(Error::AlreadyLeaf { node: 2 })
        );
        // Nothing was added by the failed calls.
        assert_eq!(g.nodes.len(), 5);
        g.validate().unwrap();
        let mut bad = LeafInfo::truncated(None);
        bad.reward = 1.0;
        let a = act(&mut g, None, 1, &[8], "");
        assert!(matches!(
            g.set_leaf(a, bad),
            Err(Error::BadLeaf { node: 5, .. })
        ));
    }

    #[test]
    fn validate_detects_broken_trees() {
        let check = |edit: &dyn Fn(&mut TaskRollout), want: Error| {
            let mut g = sample();
            edit(&mut g);
            assert_eq!(g.validate(), Err(want));
        };
        check(
            &|g| g.nodes[2].id = 7,
            Error::IdMismatch { index: 2, id: 7 },
        );
        // Parent after child: point a2 at a later node.
        check(
            &|g| g.nodes[2].parent = Some(3),
            Error::BadParent { node: 2, parent: 3 },
        );
        check(
            &|g| g.nodes[3].depth = 5,
            Error::BadDepth {
                node: 3,
                depth: 5,
                expected: 2,
            },
        );
        check(
            &|g| g.nodes[1].children = vec![2],
            Error::BadChildren { node: 1 },
        );
        check(
            &|g| g.nodes[3].logprobs.pop().map(|_| ()).unwrap(),
            Error::LengthMismatch {
                node: 3,
                kind: NodeKind::Action,
                tokens: 2,
                logprobs: 1,
                entropies: 2,
            },
        );
        check(
            &|g| g.nodes[1].logprobs = vec![0.0],
            Error::LengthMismatch {
                node: 1,
                kind: NodeKind::Observation,
                tokens: 1,
                logprobs: 1,
                entropies: 0,
            },
        );
        check(
            &|g| {
                g.nodes[1].leaf = Some(LeafInfo::finished(0.0, Outcome::Failed));
            },
            Error::LeafNotAction { node: 1 },
        );
        check(
            &|g| g.nodes[0].leaf = Some(LeafInfo::finished(0.0, Outcome::Failed)),
            Error::LeafWithChildren { node: 0 },
        );
        check(&|g| g.nodes[3].leaf = None, Error::Dangling { node: 3 });
        check(
            &|g| g.nodes[4].kind = NodeKind::Observation,
            Error::ObservationAtTop { node: 4 },
        );
        check(&|g| g.nodes[4].tree = 0, Error::EmptyTree { tree: 1 });
        check(
            &|g| g.num_trees = 1,
            Error::TreeOutOfRange {
                node: 4,
                tree: 1,
                num_trees: 1,
            },
        );
        check(
            &|g| g.nodes[2].tree = 1,
            Error::TreeMismatch {
                node: 2,
                tree: 1,
                parent_tree: 0,
            },
        );
        check(
            &|g| g.nodes[4].leaf.as_mut().unwrap().reward = f32::NAN,
            Error::BadLeaf {
                node: 4,
                reason: "reward is not finite",
            },
        );
        check(
            &|g| g.nodes[4].leaf.as_mut().unwrap().success = true,
            Error::BadLeaf {
                node: 4,
                reason: "a truncated trajectory cannot be a success",
            },
        );
        // a2 turned into an observation directly after the observation o1.
        check(
            &|g| g.nodes[2].kind = NodeKind::Observation,
            Error::ObservationAfterObservation { node: 2, parent: 1 },
        );
    }

    #[test]
    fn empty_group_is_valid() {
        let g = TaskRollout::new(0, "p", vec![]);
        g.validate().unwrap();
        assert!(g.leaves().is_empty());
        assert_eq!(g.distinct_trajectories(), 0);
        assert_eq!(g.action_tokens_unique(), 0);
    }

    #[test]
    fn sinks_collect_groups() {
        let g = sample();
        let mut plain: Vec<TaskRollout> = Vec::new();
        let mut stepped: Vec<(u64, TaskRollout)> = Vec::new();
        fn feed(mut sink: impl TreeSink, g: &TaskRollout) {
            sink.accept(3, g);
            sink.accept(4, g);
        }
        feed(&mut plain, &g);
        feed(&mut stepped, &g);
        assert_eq!(plain.len(), 2);
        assert_eq!(plain[0], g);
        assert_eq!(stepped[1].0, 4);
        assert_eq!(stepped[1].1, g);
    }
}
