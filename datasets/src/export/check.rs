//! [`check_run_files`]: the DESIGN §9 invariants over the exported files of a run directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rollout::tree::NodeKind;

use super::metrics::{METRICS_FILE, read_metrics};
use super::read::{read_nodes, read_trajectories};
use super::rollouts::{NODES_FILE, TRAJECTORIES_FILE};
use super::rows::{NodeRow, TrajectoryRow};
use crate::error::DatasetError;

/// What [`check_run_files`] found in a run directory whose files pass every check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunFileSummary {
    /// The run id every row carries (`None` when both files are empty).
    pub run_id: Option<String>,
    /// Distinct steps in `trajectories.parquet`.
    pub steps: usize,
    /// Distinct `(step, task_id)` task groups in `trajectories.parquet`.
    pub groups: usize,
    /// Rows of `trajectories.parquet`.
    pub trajectories: usize,
    /// Rows of `nodes.parquet`.
    pub nodes: usize,
    /// Rows of `metrics.parquet`, when the file exists.
    pub metrics_rows: Option<usize>,
    /// A last step present in `nodes.parquet` but not yet in `trajectories.parquet`: the run
    /// stopped between publishing the two files of that step (nodes are published first). Its
    /// node rows are checked for structure only.
    pub partial_step: Option<u64>,
}

/// Relative tolerance of the `value` check: the stored value is an f32 mean of f32 rewards
/// (rounding ≈ 6e-8 relative per operation); 1e-5 leaves room for any summation order.
const VALUE_TOLERANCE: f64 = 1e-5;

/// Checks the exported files of the run directory `dir` (DESIGN §9) and summarises them.
///
/// `trajectories.parquet` and `nodes.parquet` must exist and have the DESIGN §9 columns;
/// `metrics.parquet` is read (schema and rows) when present. Per task group `(step, task_id)`:
/// - **budget**: the action tokens summed over the group's unique nodes are ≤ the group's
///   `budget` (one value for all its trajectories);
/// - **parents**: node ids are unique; every `parent_id` exists in the group, in the same
///   tree, one level up, and is not a leaf; top nodes have depth 0;
/// - **transcripts**: `prompt` + the texts of the nodes along `node_path` == `text`; the path
///   runs from a top node down parent links to `leaf_node`, a leaf of the same tree;
/// - **counts**: one trajectory per leaf node (no leaf twice, none missing); `action_tokens`
///   and `turns` recount from the path; `leaves_below` recounts from the leaves and `value`
///   is the mean reward of the trajectories below (relative tolerance 1e-5);
/// - **kinds**: action nodes have one logprob and one entropy per token, observation nodes
///   have null `logprobs`/`entropies` and are never leaves;
/// - one `run_id` throughout.
///
/// Groups in `nodes.parquet` without trajectories are allowed only in one last step that
/// `trajectories.parquet` lacks entirely (a run stopped between the two files); see
/// [`RunFileSummary::partial_step`].
///
/// Reads both files whole (this is a checking tool, not the training path). The first
/// violation is returned as [`DatasetError::Invariant`], unreadable files as
/// [`DatasetError::BadRunFile`].
pub fn check_run_files(dir: impl AsRef<Path>) -> Result<RunFileSummary, DatasetError> {
    let dir = dir.as_ref();
    let traj_path = dir.join(TRAJECTORIES_FILE);
    let nodes_path = dir.join(NODES_FILE);
    let trajectories = read_trajectories(&traj_path)?;
    let nodes = read_nodes(&nodes_path)?;
    let metrics_path = dir.join(METRICS_FILE);
    let metrics_rows = if metrics_path.exists() {
        Some(read_metrics(&metrics_path)?.len())
    } else {
        None
    };
    let mut checker = Checker {
        traj_path,
        nodes_path,
        run_id: None,
    };
    let partial_step = checker.check(&trajectories, &nodes)?;
    let groups: HashSet<(u64, u64)> = trajectories.iter().map(|t| (t.step, t.task_id)).collect();
    let steps: HashSet<u64> = trajectories.iter().map(|t| t.step).collect();
    Ok(RunFileSummary {
        run_id: checker.run_id,
        steps: steps.len(),
        groups: groups.len(),
        trajectories: trajectories.len(),
        nodes: nodes.len(),
        metrics_rows,
        partial_step,
    })
}

struct Checker {
    traj_path: PathBuf,
    nodes_path: PathBuf,
    run_id: Option<String>,
}

/// The nodes of one task group, by id.
type Group<'a> = HashMap<u32, &'a NodeRow>;

impl Checker {
    fn fail(&self, in_nodes: bool, step: u64, task_id: u64, reason: String) -> DatasetError {
        DatasetError::Invariant {
            path: if in_nodes {
                self.nodes_path.clone()
            } else {
                self.traj_path.clone()
            },
            step,
            task_id,
            reason,
        }
    }

    fn check_run_id(
        &mut self,
        in_nodes: bool,
        id: &str,
        step: u64,
        task: u64,
    ) -> Result<(), DatasetError> {
        match &self.run_id {
            None => self.run_id = Some(id.to_string()),
            Some(run) if run != id => {
                return Err(self.fail(
                    in_nodes,
                    step,
                    task,
                    format!("run_id '{id}' differs from '{run}'"),
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Returns the partial last step, if any.
    fn check(
        &mut self,
        trajectories: &[TrajectoryRow],
        nodes: &[NodeRow],
    ) -> Result<Option<u64>, DatasetError> {
        // Nodes by group, structure first.
        let mut groups: BTreeMap<(u64, u64), Group<'_>> = BTreeMap::new();
        for n in nodes {
            self.check_run_id(true, &n.run_id, n.step, n.task_id)?;
            let group = groups.entry((n.step, n.task_id)).or_default();
            if group.insert(n.node_id, n).is_some() {
                return Err(self.fail(
                    true,
                    n.step,
                    n.task_id,
                    format!("node_id {} appears twice", n.node_id),
                ));
            }
        }
        for (&(step, task), group) in &groups {
            self.check_group_nodes(step, task, group)?;
        }

        // Trajectories by group.
        let mut traj_groups: BTreeMap<(u64, u64), Vec<&TrajectoryRow>> = BTreeMap::new();
        for t in trajectories {
            self.check_run_id(false, &t.run_id, t.step, t.task_id)?;
            traj_groups.entry((t.step, t.task_id)).or_default().push(t);
        }
        for (&(step, task), trajs) in &traj_groups {
            let Some(group) = groups.get(&(step, task)) else {
                return Err(self.fail(
                    false,
                    step,
                    task,
                    "the task group has trajectories but no nodes".to_string(),
                ));
            };
            self.check_group_trajectories(step, task, group, trajs)?;
        }

        // Groups with nodes but no trajectories: only in one last step missing entirely from
        // the trajectories file.
        let traj_steps: HashSet<u64> = traj_groups.keys().map(|&(s, _)| s).collect();
        let last_traj_step = traj_steps.iter().copied().max();
        let mut partial = None;
        for &(step, task) in groups.keys() {
            if traj_groups.contains_key(&(step, task)) {
                continue;
            }
            let allowed = !traj_steps.contains(&step)
                && last_traj_step.is_none_or(|last| step > last)
                && partial.is_none_or(|p| p == step);
            if !allowed {
                return Err(self.fail(
                    true,
                    step,
                    task,
                    "the task group has nodes but no trajectories".to_string(),
                ));
            }
            partial = Some(step);
        }
        Ok(partial)
    }

    /// Ids, parents, depths, trees, kinds and `leaves_below` of one group's nodes.
    fn check_group_nodes(
        &self,
        step: u64,
        task: u64,
        group: &Group<'_>,
    ) -> Result<(), DatasetError> {
        let fail = |reason: String| self.fail(true, step, task, reason);
        let mut leaves_below: HashMap<u32, u32> = HashMap::new();
        for n in group.values() {
            let id = n.node_id;
            match n.kind {
                NodeKind::Action => {
                    let lp = n.logprobs.as_ref().map(Vec::len);
                    let en = n.entropies.as_ref().map(Vec::len);
                    if lp != Some(n.tokens.len()) || en != Some(n.tokens.len()) {
                        return Err(fail(format!(
                            "action node {id} has {} tokens but {lp:?} logprobs and {en:?} \
                             entropies",
                            n.tokens.len()
                        )));
                    }
                }
                NodeKind::Observation => {
                    if n.logprobs.is_some() || n.entropies.is_some() {
                        return Err(fail(format!(
                            "observation node {id} has logprobs or entropies (must be null)"
                        )));
                    }
                    if n.is_leaf {
                        return Err(fail(format!("observation node {id} is a leaf")));
                    }
                }
            }
            match n.parent_id {
                None if n.depth != 0 => {
                    return Err(fail(format!(
                        "top node {id} has depth {} (expected 0)",
                        n.depth
                    )));
                }
                None => {}
                Some(p) => {
                    let Some(parent) = group.get(&p) else {
                        return Err(fail(format!(
                            "node {id} names parent_id {p}, which does not exist in the group"
                        )));
                    };
                    if parent.tree != n.tree {
                        return Err(fail(format!(
                            "node {id} is in tree {}, its parent {p} in tree {}",
                            n.tree, parent.tree
                        )));
                    }
                    if n.depth != parent.depth + 1 {
                        return Err(fail(format!(
                            "node {id} has depth {}, its parent {p} depth {}",
                            n.depth, parent.depth
                        )));
                    }
                    if parent.is_leaf {
                        return Err(fail(format!("node {id} has the leaf {p} as parent")));
                    }
                }
            }
        }
        for n in group.values().filter(|n| n.is_leaf) {
            // Walk up; every parent exists and depths strictly decrease (checked above for
            // every node), so the walk ends after depth + 1 nodes.
            let mut cur = Some(n.node_id);
            while let Some(c) = cur {
                *leaves_below.entry(c).or_default() += 1;
                cur = group.get(&c).and_then(|x| x.parent_id);
            }
        }
        for n in group.values() {
            let want = leaves_below.get(&n.node_id).copied().unwrap_or(0);
            if n.leaves_below != want {
                return Err(fail(format!(
                    "node {} has leaves_below {}, but {want} leaves are below it",
                    n.node_id, n.leaves_below
                )));
            }
            if want == 0 {
                return Err(fail(format!(
                    "node {} has no leaf below it (a dropped trajectory)",
                    n.node_id
                )));
            }
        }
        Ok(())
    }

    /// Budget, paths, transcripts, counts and values of one group's trajectories.
    fn check_group_trajectories(
        &self,
        step: u64,
        task: u64,
        group: &Group<'_>,
        trajs: &[&TrajectoryRow],
    ) -> Result<(), DatasetError> {
        let fail = |reason: String| self.fail(false, step, task, reason);
        let budget = trajs[0].budget;
        if let Some(t) = trajs.iter().find(|t| t.budget != budget) {
            return Err(fail(format!(
                "trajectories of one group name budgets {budget} and {}",
                t.budget
            )));
        }
        let used: u64 = group
            .values()
            .filter(|n| n.kind == NodeKind::Action)
            .map(|n| n.tokens.len() as u64)
            .sum();
        if used > u64::from(budget) {
            return Err(fail(format!(
                "{used} action tokens over the group's unique nodes exceed the budget {budget}"
            )));
        }
        let mut seen_leaves = HashSet::new();
        let mut reward_sums: HashMap<u32, f64> = HashMap::new();
        for t in trajs {
            let leaf = t.leaf_node;
            if !seen_leaves.insert(leaf) {
                return Err(fail(format!("leaf_node {leaf} has two trajectories")));
            }
            if t.node_path.last() != Some(&leaf) {
                return Err(fail(format!(
                    "trajectory of leaf {leaf}: node_path {:?} does not end at the leaf",
                    t.node_path
                )));
            }
            let mut text = t.prompt.clone();
            let mut action_tokens = 0u64;
            let mut turns = 0u32;
            let mut in_action = false;
            let mut parent: Option<u32> = None;
            for &id in &t.node_path {
                let Some(n) = group.get(&id) else {
                    return Err(fail(format!(
                        "trajectory of leaf {leaf}: node_path names node {id}, which does not \
                         exist in the group"
                    )));
                };
                if n.parent_id != parent || n.tree != t.tree {
                    return Err(fail(format!(
                        "trajectory of leaf {leaf}: node_path {:?} is not a path from the top \
                         of tree {} (node {id} has parent {:?}, tree {})",
                        t.node_path, t.tree, n.parent_id, n.tree
                    )));
                }
                parent = Some(id);
                text.push_str(&n.text);
                let is_action = n.kind == NodeKind::Action;
                if is_action {
                    action_tokens += n.tokens.len() as u64;
                    if !in_action {
                        turns += 1;
                    }
                }
                in_action = is_action;
                *reward_sums.entry(id).or_default() += f64::from(t.reward);
            }
            if !group[&leaf].is_leaf {
                return Err(fail(format!(
                    "trajectory ends at node {leaf}, which is not a leaf"
                )));
            }
            if text != t.text {
                return Err(fail(format!(
                    "trajectory of leaf {leaf}: prompt + node texts along node_path differ from \
                     its text"
                )));
            }
            if action_tokens != u64::from(t.action_tokens) || turns != t.turns {
                return Err(fail(format!(
                    "trajectory of leaf {leaf}: action_tokens {} and turns {} recount as \
                     {action_tokens} and {turns}",
                    t.action_tokens, t.turns
                )));
            }
        }
        let leaves = group.values().filter(|n| n.is_leaf).count();
        if leaves != trajs.len() {
            return Err(fail(format!(
                "{} trajectories for {leaves} leaf nodes",
                trajs.len()
            )));
        }
        for n in group.values() {
            let mean =
                reward_sums.get(&n.node_id).copied().unwrap_or(0.0) / f64::from(n.leaves_below);
            if (f64::from(n.value) - mean).abs() > VALUE_TOLERANCE * mean.abs().max(1.0) {
                return Err(self.fail(
                    true,
                    step,
                    task,
                    format!(
                        "node {} has value {}, but the mean reward of the trajectories below \
                         it is {mean}",
                        n.node_id, n.value
                    ),
                ));
            }
        }
        Ok(())
    }
}
