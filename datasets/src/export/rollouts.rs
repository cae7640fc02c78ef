//! [`RolloutWriter`]: `trajectories.parquet` and `nodes.parquet`, one row group per step.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{SchemaRef, UInt64Type};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use rollout::advantage::AdvantageOutput;
use rollout::tree::TaskRollout;

use super::rows::{
    NodeRow, TrajectoryRow, nodes_batch, nodes_schema, trajectories_batch, trajectories_schema,
};
use super::snapshot::{SnapshotError, SnapshotFile};
use super::writer_properties;
use crate::error::DatasetError;

/// File name of the trajectories table in a run directory.
pub const TRAJECTORIES_FILE: &str = "trajectories.parquet";
/// File name of the nodes table in a run directory.
pub const NODES_FILE: &str = "nodes.parquet";

/// What a step's rows share: the columns of DESIGN §9 that do not come from the trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo<'a> {
    /// Training step.
    pub step: u64,
    /// Phase (`"rl"`, `"eval"`, `"rollout"`, …).
    pub phase: &'a str,
    /// Environment name (`EnvSpec::name`).
    pub env: &'a str,
    /// Sampler name (`"tree"`, `"chain"`).
    pub sampler: &'a str,
    /// Token budget per task group.
    pub budget: u32,
    /// Estimator name (`Estimator::name`); must match the estimator of every
    /// [`AdvantageOutput`] given. Use `""` for rollouts without advantages.
    pub estimator: &'a str,
}

/// Counts of what a [`RolloutWriter`] has published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    /// Calls of [`RolloutWriter::write_step`] that wrote rows.
    pub steps: u64,
    /// Rows of `trajectories.parquet`.
    pub trajectories: u64,
    /// Rows of `nodes.parquet`.
    pub nodes: u64,
    /// Bytes written to disk so far by both files (row groups, catch-up copies and footers):
    /// the cost of keeping the files complete after every step.
    pub bytes_written: u64,
}

/// Streams rollouts of a run to `trajectories.parquet` and `nodes.parquet` in its directory,
/// one row group per step in each, so that after every [`RolloutWriter::write_step`] both files
/// at their final paths are complete Parquet files holding every step so far (see the
/// [module docs](super) for how, and what it costs).
///
/// Sampling hands groups to a [`rollout::tree::TreeSink`] (a `Vec<TaskRollout>`) first; the
/// advantages are computed after sampling, so the writer takes groups and advantages together
/// in one explicit call per step instead of being a sink itself.
///
/// Dropping the writer without [`RolloutWriter::finish`] (or a crash, or SIGKILL) leaves both
/// files complete for the steps written. One writer per run directory at a time.
pub struct RolloutWriter {
    run_id: String,
    nodes: SnapshotFile,
    trajectories: SnapshotFile,
    /// `(step, task_id)` pairs written: a group may be written once (node ids are unique only
    /// within a group, and `nodes` has no phase column).
    written: HashSet<(u64, u64)>,
    steps: u64,
}

impl std::fmt::Debug for RolloutWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutWriter")
            .field("run_id", &self.run_id)
            .field("trajectories", &self.trajectories.path())
            .field("nodes", &self.nodes.path())
            .field("summary", &self.summary())
            .finish()
    }
}

fn write_error(path: &Path, e: SnapshotError) -> DatasetError {
    DatasetError::WriteRunFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn open_snapshot(path: &Path, schema: SchemaRef) -> Result<SnapshotFile, DatasetError> {
    SnapshotFile::new(path, schema, writer_properties()).map_err(|e| write_error(path, e))
}

impl RolloutWriter {
    /// Starts both files in `dir` (which must exist) for run `run_id`, publishing them empty
    /// (zero rows) and replacing existing ones atomically.
    pub fn create(dir: &Path, run_id: &str) -> Result<Self, DatasetError> {
        let mut w = RolloutWriter::open(dir, run_id)?;
        w.commit()?;
        Ok(w)
    }

    /// Continues the files in `dir` (for `--resume`): keeps the rows of steps before
    /// `before_step` (with the `run_id` they carry) and drops the rest, including the nodes of a
    /// step whose trajectories were never published; then goes on as [`RolloutWriter::create`].
    /// The kept rows are read and re-encoded one row group (step) at a time and published once,
    /// when the copy is complete: until then the old files stay untouched at their paths, and
    /// memory holds the kept files' encoded (compressed) bytes. A missing file counts as empty;
    /// a file whose columns differ from this version's is a [`DatasetError::BadRunFile`].
    pub fn resume(dir: &Path, run_id: &str, before_step: u64) -> Result<Self, DatasetError> {
        let mut w = RolloutWriter::open(dir, run_id)?;
        let nodes_path = dir.join(NODES_FILE);
        let traj_path = dir.join(TRAJECTORIES_FILE);
        // Trajectories first: their groups decide which node rows to keep, so the nodes of a
        // step whose trajectories never got published (a crash between the two files) go too.
        let mut keys = HashSet::new();
        copy_steps(
            &traj_path,
            &trajectories_schema(),
            before_step,
            None,
            &mut w.trajectories,
            &mut keys,
        )?;
        let mut node_keys = HashSet::new();
        copy_steps(
            &nodes_path,
            &nodes_schema(),
            before_step,
            Some(&keys),
            &mut w.nodes,
            &mut node_keys,
        )?;
        w.steps = keys
            .iter()
            .map(|&(step, _)| step)
            .collect::<HashSet<_>>()
            .len() as u64;
        w.written = keys;
        w.commit()?;
        Ok(w)
    }

    fn open(dir: &Path, run_id: &str) -> Result<Self, DatasetError> {
        Ok(RolloutWriter {
            run_id: run_id.to_string(),
            nodes: open_snapshot(&dir.join(NODES_FILE), nodes_schema())?,
            trajectories: open_snapshot(&dir.join(TRAJECTORIES_FILE), trajectories_schema())?,
            written: HashSet::new(),
            steps: 0,
        })
    }

    /// Publishes both files: nodes first, so every trajectory on disk has its nodes on disk.
    fn commit(&mut self) -> Result<(), DatasetError> {
        self.nodes
            .commit()
            .map_err(|e| write_error(self.nodes.path(), e))?;
        self.trajectories
            .commit()
            .map_err(|e| write_error(self.trajectories.path(), e))
    }

    /// Appends one step: one row per leaf to `trajectories.parquet` and one row per node to
    /// `nodes.parquet` (a row group in each), then publishes both files (`nodes` first). When
    /// it returns, both files at their final paths hold every step written so far.
    ///
    /// `groups` pairs each task group with the advantages it was trained with (`None` for
    /// rollouts that were not trained on, such as evaluation: advantage columns are then null
    /// and `value` is computed from the tree).
    ///
    /// Nothing is written when a group is rejected ([`DatasetError::BadRollout`]): a tree that
    /// fails [`TaskRollout::validate`], advantages of another task, shape or estimator, or a
    /// `(step, task_id)` that was already written. An I/O failure
    /// ([`DatasetError::WriteRunFile`]) leaves both files as the previous step left them (or
    /// `nodes` one step ahead) and makes every later call fail.
    pub fn write_step(
        &mut self,
        info: &StepInfo<'_>,
        groups: &[(&TaskRollout, Option<&AdvantageOutput>)],
    ) -> Result<(), DatasetError> {
        let (trajectories, nodes) = step_rows(&self.run_id, info, groups)?;
        let mut keys = HashSet::new();
        for (group, _) in groups {
            let key = (info.step, group.task_id);
            if self.written.contains(&key) || !keys.insert(key) {
                return Err(DatasetError::BadRollout {
                    step: info.step,
                    task_id: group.task_id,
                    reason: "this (step, task_id) was already written".to_string(),
                });
            }
        }
        if nodes.is_empty() && trajectories.is_empty() {
            return Ok(());
        }
        let nodes = nodes_batch(&nodes)?;
        let trajectories = trajectories_batch(&trajectories)?;
        self.nodes
            .write(&nodes)
            .map_err(|e| write_error(self.nodes.path(), e))?;
        self.trajectories
            .write(&trajectories)
            .map_err(|e| write_error(self.trajectories.path(), e))?;
        self.commit()?;
        self.written.extend(keys);
        self.steps += 1;
        Ok(())
    }

    /// What has been published so far.
    pub fn summary(&self) -> ExportSummary {
        ExportSummary {
            steps: self.steps,
            trajectories: self.trajectories.rows(),
            nodes: self.nodes.rows(),
            bytes_written: self.trajectories.bytes_written() + self.nodes.bytes_written(),
        }
    }

    /// Path of `trajectories.parquet`.
    pub fn trajectories_path(&self) -> &Path {
        self.trajectories.path()
    }

    /// Path of `nodes.parquet`.
    pub fn nodes_path(&self) -> &Path {
        self.nodes.path()
    }

    /// Closes both files: writes their final footers (with page indexes), publishes them and
    /// removes the temp files. Afterwards each file is exactly what a single Arrow writer
    /// streaming every step would have written.
    pub fn finish(self) -> Result<ExportSummary, DatasetError> {
        let mut summary = self.summary();
        let RolloutWriter {
            nodes,
            trajectories,
            ..
        } = self;
        let nodes_path = nodes.path().to_path_buf();
        let traj_path = trajectories.path().to_path_buf();
        let (n_rows, n_bytes) = nodes.finish().map_err(|e| write_error(&nodes_path, e))?;
        let (t_rows, t_bytes) = trajectories
            .finish()
            .map_err(|e| write_error(&traj_path, e))?;
        summary.nodes = n_rows;
        summary.trajectories = t_rows;
        summary.bytes_written = n_bytes + t_bytes;
        Ok(summary)
    }
}

/// Copies the row groups of the file at `path` into `out`, keeping rows with
/// `step < before_step` (and, with `only`, whose `(step, task_id)` is in it) and recording
/// their `(step, task_id)`; a missing file is empty.
fn copy_steps(
    path: &Path,
    want: &SchemaRef,
    before_step: u64,
    only: Option<&HashSet<(u64, u64)>>,
    out: &mut SnapshotFile,
    keys: &mut HashSet<(u64, u64)>,
) -> Result<(), DatasetError> {
    let bad = |reason: String| DatasetError::BadRunFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bad(format!("cannot open: {e}"))),
    };
    let meta = ArrowReaderMetadata::load(&file, Default::default())
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    if meta.schema().fields() != want.fields() {
        return Err(bad(
            "cannot resume: its columns are not those this version writes".to_string(),
        ));
    }
    for rg in 0..meta.metadata().num_row_groups() {
        let input = file
            .try_clone()
            .map_err(|e| bad(format!("cannot open: {e}")))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta.clone())
            .with_row_groups(vec![rg])
            .build()
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        let mut wrote = false;
        for batch in reader {
            let batch = batch.map_err(|e| bad(format!("corrupt data: {e}")))?;
            let steps = batch
                .column_by_name("step")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                .ok_or_else(|| bad("column \"step\" is unreadable".to_string()))?;
            let tasks = batch
                .column_by_name("task_id")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                .ok_or_else(|| bad("column \"task_id\" is unreadable".to_string()))?;
            if steps.null_count() > 0 || tasks.null_count() > 0 {
                return Err(bad("null step or task_id".to_string()));
            }
            let keep: BooleanArray = steps
                .values()
                .iter()
                .zip(tasks.values().iter())
                .map(|(&s, &t)| {
                    let kept = s < before_step && only.is_none_or(|o| o.contains(&(s, t)));
                    if kept {
                        keys.insert((s, t));
                    }
                    Some(kept)
                })
                .collect();
            let kept = filter_record_batch(&batch, &keep).map_err(|e| bad(e.to_string()))?;
            if kept.num_rows() > 0 {
                let kept = kept
                    .with_schema(want.clone())
                    .map_err(|e| bad(e.to_string()))?;
                out.write(&kept).map_err(|e| write_error(out.path(), e))?;
                wrote = true;
            }
        }
        if wrote {
            out.end_row_group()
                .map_err(|e| write_error(out.path(), e))?;
        }
    }
    Ok(())
}

/// The rows one [`RolloutWriter::write_step`] call writes: trajectory rows (one per leaf, groups
/// in the order given, leaves in id order) and node rows (one per node, in id order). Checks the
/// groups as `write_step` does, except for repeated `(step, task_id)` pairs.
pub fn step_rows(
    run_id: &str,
    info: &StepInfo<'_>,
    groups: &[(&TaskRollout, Option<&AdvantageOutput>)],
) -> Result<(Vec<TrajectoryRow>, Vec<NodeRow>), DatasetError> {
    let mut trajectories = Vec::new();
    let mut nodes = Vec::new();
    for &(group, adv) in groups {
        let bad = |reason: String| DatasetError::BadRollout {
            step: info.step,
            task_id: group.task_id,
            reason,
        };
        group
            .validate()
            .map_err(|e| bad(format!("invalid rollout tree: {e}")))?;
        let n = group.nodes.len();
        if let Some(a) = adv {
            if a.task_id != group.task_id {
                return Err(bad(format!("advantages are for task {}", a.task_id)));
            }
            if a.estimator.name() != info.estimator {
                return Err(bad(format!(
                    "advantages come from estimator '{}', the step names '{}'",
                    a.estimator.name(),
                    info.estimator
                )));
            }
            let lens = [
                a.leaf_adv.len(),
                a.node_adv.len(),
                a.value.len(),
                a.leaves_below.len(),
            ];
            if lens.iter().any(|&l| l != n) {
                return Err(bad(format!(
                    "advantages have {lens:?} entries (leaf_adv, node_adv, value, leaves_below) \
                     for {n} nodes"
                )));
            }
        }
        let counts = group.leaf_counts();
        let values = match adv {
            Some(a) => a.value.clone(),
            None => mean_leaf_rewards(group, &counts),
        };
        for node in &group.nodes {
            let i = node.id as usize;
            let is_action = node.is_action();
            nodes.push(NodeRow {
                run_id: run_id.to_string(),
                step: info.step,
                task_id: group.task_id,
                tree: node.tree,
                node_id: node.id,
                parent_id: node.parent,
                depth: node.depth,
                kind: node.kind,
                tokens: node.tokens.clone(),
                text: node.text.clone(),
                logprobs: is_action.then(|| node.logprobs.clone()),
                entropies: is_action.then(|| node.entropies.clone()),
                leaves_below: counts[i],
                value: values[i],
                advantage: adv.map(|a| a.node_adv[i]),
                is_leaf: node.is_leaf(),
            });
        }
        for leaf in group.leaves() {
            let node = group.node(leaf);
            let Some(info_leaf) = node.leaf else {
                continue;
            };
            let action_tokens = u32::try_from(group.path_action_tokens(leaf))
                .map_err(|_| bad(format!("leaf {leaf} has more than 2^32 action tokens")))?;
            trajectories.push(TrajectoryRow {
                run_id: run_id.to_string(),
                step: info.step,
                phase: info.phase.to_string(),
                task_id: group.task_id,
                env: info.env.to_string(),
                sampler: info.sampler.to_string(),
                budget: info.budget,
                tree: node.tree,
                leaf_node: leaf,
                node_path: group.path(leaf),
                prompt: group.prompt.clone(),
                text: group.transcript(leaf),
                reward: info_leaf.reward,
                success: info_leaf.success,
                truncated: info_leaf.truncated,
                action_tokens,
                turns: group.turns(leaf),
                advantage: adv.and_then(|a| a.leaf_adv[leaf as usize]),
                estimator: info.estimator.to_string(),
            });
        }
    }
    Ok((trajectories, nodes))
}

/// `V(s)`: the mean reward of the leaves below each node (0 for a node without leaves, which a
/// valid finished tree does not have). Sums in f64, in reverse id order (children follow
/// parents).
///
/// # Shapes
/// `counts: [nodes]`; returns `[nodes]`.
fn mean_leaf_rewards(group: &TaskRollout, counts: &[u32]) -> Vec<f32> {
    let mut sums = vec![0f64; group.nodes.len()];
    for node in group.nodes.iter().rev() {
        let i = node.id as usize;
        if let Some(info) = node.leaf {
            sums[i] += f64::from(info.reward);
        }
        if let Some(p) = node.parent {
            sums[p as usize] += sums[i];
        }
    }
    sums.iter()
        .zip(counts)
        .map(|(&s, &c)| {
            if c == 0 {
                0.0
            } else {
                (s / f64::from(c)) as f32
            }
        })
        .collect()
}
