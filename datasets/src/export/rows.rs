//! The DESIGN §9 tables as plain Rust rows, their Arrow schemas, and conversions between rows and
//! Arrow record batches.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float32Array, Float32Builder,
    Float64Array, ListArray, ListBuilder, StringArray, StringBuilder, UInt32Array, UInt32Builder,
    UInt64Array, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Schema, SchemaRef, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use rollout::tree::NodeKind;

use crate::error::DatasetError;

/// One row of `trajectories.parquet`: one leaf trajectory of one task group at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryRow {
    /// The run's name, as given to [`RolloutWriter::create`](super::RolloutWriter::create).
    pub run_id: String,
    /// Training step.
    pub step: u64,
    /// Phase of the run that sampled it (`"rl"`, `"eval"`, …; the caller's word).
    pub phase: String,
    /// Task id (as given to `EnvSpec::make`).
    pub task_id: u64,
    /// Environment name.
    pub env: String,
    /// Sampler name (`"tree"`, `"chain"`).
    pub sampler: String,
    /// Token budget of the task group (DESIGN §4).
    pub budget: u32,
    /// The tree of the group it belongs to.
    pub tree: u32,
    /// Node id of its leaf.
    pub leaf_node: u32,
    /// Node ids from the top of its tree down to the leaf (root first).
    pub node_path: Vec<u32>,
    /// The prompt (the implicit root of every tree).
    pub prompt: String,
    /// Full transcript: `prompt` followed by the texts of the nodes along `node_path`.
    pub text: String,
    /// Return (0 when truncated).
    pub reward: f32,
    /// Whether the task was solved.
    pub success: bool,
    /// Whether the budget or the context window cut it.
    pub truncated: bool,
    /// Policy-generated tokens on its path.
    pub action_tokens: u32,
    /// Agent turns on its path (runs of consecutive action nodes).
    pub turns: u32,
    /// The trajectory-level advantage it was trained with; `None` for node-level estimators
    /// (`treerl`) and for rollouts written without advantages.
    pub advantage: Option<f32>,
    /// Estimator name (empty when written without advantages, unless the caller names one).
    pub estimator: String,
}

/// One row of `nodes.parquet`: one node of one task group at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// The run's name.
    pub run_id: String,
    /// Training step.
    pub step: u64,
    /// Task id.
    pub task_id: u64,
    /// The tree of the group it belongs to.
    pub tree: u32,
    /// Node id, unique within the task group (`(step, task_id)`).
    pub node_id: u32,
    /// Parent node id; `None` for a tree's top node (whose parent is the prompt).
    pub parent_id: Option<u32>,
    /// Number of ancestor nodes (0 at the top).
    pub depth: u32,
    /// Action (sampled, `"action"`) or observation (env text, `"observation"`).
    pub kind: NodeKind,
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Decoded text.
    pub text: String,
    /// Behaviour log-probability of each token; `None` for observations.
    /// # Shapes
    /// `[tokens.len()]` when present.
    pub logprobs: Option<Vec<f32>>,
    /// Entropy (nats) of the policy at each token; `None` for observations.
    /// # Shapes
    /// `[tokens.len()]` when present.
    pub entropies: Option<Vec<f32>>,
    /// Number of leaves in its subtree (itself included).
    pub leaves_below: u32,
    /// Mean reward of the leaves below it.
    pub value: f32,
    /// The advantage each of its tokens was trained with before loss normalisation: `A(s)` for
    /// node-level estimators, the sum of the advantages of the leaves below for
    /// trajectory-level ones, 0 for observations; `None` when written without advantages.
    pub advantage: Option<f32>,
    /// Whether it ends a trajectory.
    pub is_leaf: bool,
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// The Arrow schema of `trajectories.parquet` (DESIGN §9, in this column order). Only
/// `advantage` is nullable; list items are non-null.
pub fn trajectories_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        Field::new("run_id", Utf8, false),
        Field::new("step", UInt64, false),
        Field::new("phase", Utf8, false),
        Field::new("task_id", UInt64, false),
        Field::new("env", Utf8, false),
        Field::new("sampler", Utf8, false),
        Field::new("budget", UInt32, false),
        Field::new("tree", UInt32, false),
        Field::new("leaf_node", UInt32, false),
        Field::new("node_path", list_of(UInt32), false),
        Field::new("prompt", Utf8, false),
        Field::new("text", Utf8, false),
        Field::new("reward", Float32, false),
        Field::new("success", Boolean, false),
        Field::new("truncated", Boolean, false),
        Field::new("action_tokens", UInt32, false),
        Field::new("turns", UInt32, false),
        Field::new("advantage", Float32, true),
        Field::new("estimator", Utf8, false),
    ]))
}

/// The Arrow schema of `nodes.parquet` (DESIGN §9, in this column order). `parent_id`,
/// `logprobs`, `entropies` and `advantage` are nullable; list items are non-null.
pub fn nodes_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        Field::new("run_id", Utf8, false),
        Field::new("step", UInt64, false),
        Field::new("task_id", UInt64, false),
        Field::new("tree", UInt32, false),
        Field::new("node_id", UInt32, false),
        Field::new("parent_id", UInt32, true),
        Field::new("depth", UInt32, false),
        Field::new("kind", Utf8, false),
        Field::new("tokens", list_of(UInt32), false),
        Field::new("text", Utf8, false),
        Field::new("logprobs", list_of(Float32), true),
        Field::new("entropies", list_of(Float32), true),
        Field::new("leaves_below", UInt32, false),
        Field::new("value", Float32, false),
        Field::new("advantage", Float32, true),
        Field::new("is_leaf", Boolean, false),
    ]))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn u64s(values: impl Iterator<Item = u64>) -> ArrayRef {
    let mut b = UInt64Builder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn u32s(values: impl Iterator<Item = Option<u32>>) -> ArrayRef {
    let mut b = UInt32Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn f32s(values: impl Iterator<Item = Option<f32>>) -> ArrayRef {
    let mut b = Float32Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn bools(values: impl Iterator<Item = bool>) -> ArrayRef {
    let mut b = BooleanBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn u32_lists<'a>(values: impl Iterator<Item = &'a [u32]>) -> ArrayRef {
    let mut b = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::UInt32,
        false,
    )));
    for v in values {
        b.values().append_slice(v);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn f32_lists<'a>(values: impl Iterator<Item = Option<&'a [f32]>>) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Float32,
        false,
    )));
    for v in values {
        match v {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

/// Trajectory rows as one record batch of [`trajectories_schema`] (for tools that write rows
/// themselves; [`RolloutWriter`](super::RolloutWriter) uses it per step).
pub fn trajectories_batch(rows: &[TrajectoryRow]) -> Result<RecordBatch, DatasetError> {
    let r = rows;
    let columns = vec![
        strings(r.iter().map(|x| x.run_id.as_str())),
        u64s(r.iter().map(|x| x.step)),
        strings(r.iter().map(|x| x.phase.as_str())),
        u64s(r.iter().map(|x| x.task_id)),
        strings(r.iter().map(|x| x.env.as_str())),
        strings(r.iter().map(|x| x.sampler.as_str())),
        u32s(r.iter().map(|x| Some(x.budget))),
        u32s(r.iter().map(|x| Some(x.tree))),
        u32s(r.iter().map(|x| Some(x.leaf_node))),
        u32_lists(r.iter().map(|x| x.node_path.as_slice())),
        strings(r.iter().map(|x| x.prompt.as_str())),
        strings(r.iter().map(|x| x.text.as_str())),
        f32s(r.iter().map(|x| Some(x.reward))),
        bools(r.iter().map(|x| x.success)),
        bools(r.iter().map(|x| x.truncated)),
        u32s(r.iter().map(|x| Some(x.action_tokens))),
        u32s(r.iter().map(|x| Some(x.turns))),
        f32s(r.iter().map(|x| x.advantage)),
        strings(r.iter().map(|x| x.estimator.as_str())),
    ];
    RecordBatch::try_new(trajectories_schema(), columns).map_err(|e| DatasetError::BadRollout {
        step: rows.first().map_or(0, |x| x.step),
        task_id: rows.first().map_or(0, |x| x.task_id),
        reason: format!("cannot build the trajectories batch: {e}"),
    })
}

/// Node rows as one record batch of [`nodes_schema`].
pub fn nodes_batch(rows: &[NodeRow]) -> Result<RecordBatch, DatasetError> {
    let r = rows;
    let columns = vec![
        strings(r.iter().map(|x| x.run_id.as_str())),
        u64s(r.iter().map(|x| x.step)),
        u64s(r.iter().map(|x| x.task_id)),
        u32s(r.iter().map(|x| Some(x.tree))),
        u32s(r.iter().map(|x| Some(x.node_id))),
        u32s(r.iter().map(|x| x.parent_id)),
        u32s(r.iter().map(|x| Some(x.depth))),
        strings(r.iter().map(|x| x.kind.as_str())),
        u32_lists(r.iter().map(|x| x.tokens.as_slice())),
        strings(r.iter().map(|x| x.text.as_str())),
        f32_lists(r.iter().map(|x| x.logprobs.as_deref())),
        f32_lists(r.iter().map(|x| x.entropies.as_deref())),
        u32s(r.iter().map(|x| Some(x.leaves_below))),
        f32s(r.iter().map(|x| Some(x.value))),
        f32s(r.iter().map(|x| x.advantage)),
        bools(r.iter().map(|x| x.is_leaf)),
    ];
    RecordBatch::try_new(nodes_schema(), columns).map_err(|e| DatasetError::BadRollout {
        step: rows.first().map_or(0, |x| x.step),
        task_id: rows.first().map_or(0, |x| x.task_id),
        reason: format!("cannot build the nodes batch: {e}"),
    })
}

/// Typed access to the columns of a batch whose schema was checked against the expected one;
/// a mismatch that slipped through is an error, never a panic.
pub(crate) struct Columns<'a> {
    pub(crate) path: &'a Path,
    pub(crate) batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn column(&self, name: &str) -> Result<&'a ArrayRef, DatasetError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| self.bad(format!("missing column \"{name}\"")))
    }

    pub(crate) fn bad(&self, reason: String) -> DatasetError {
        DatasetError::BadRunFile {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn wrong(&self, name: &str) -> DatasetError {
        self.bad(format!("column \"{name}\" has an unexpected type"))
    }

    /// Fails if a non-nullable column holds a null.
    fn no_nulls(&self, name: &str, array: &dyn Array) -> Result<(), DatasetError> {
        if array.null_count() > 0 {
            return Err(self.bad(format!("column \"{name}\" holds nulls")));
        }
        Ok(())
    }

    pub(crate) fn str(&self, name: &str) -> Result<&'a StringArray, DatasetError> {
        let a = self
            .column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| self.wrong(name))?;
        self.no_nulls(name, a)?;
        Ok(a)
    }

    pub(crate) fn u64(&self, name: &str) -> Result<&'a UInt64Array, DatasetError> {
        let a = self
            .column(name)?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| self.wrong(name))?;
        self.no_nulls(name, a)?;
        Ok(a)
    }

    /// A `UInt32` column; nulls allowed (check with [`Columns::u32`] when they are not).
    pub(crate) fn u32_opt(&self, name: &str) -> Result<&'a UInt32Array, DatasetError> {
        self.column(name)?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| self.wrong(name))
    }

    pub(crate) fn u32(&self, name: &str) -> Result<&'a UInt32Array, DatasetError> {
        let a = self.u32_opt(name)?;
        self.no_nulls(name, a)?;
        Ok(a)
    }

    pub(crate) fn f32_opt(&self, name: &str) -> Result<&'a Float32Array, DatasetError> {
        self.column(name)?
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| self.wrong(name))
    }

    pub(crate) fn f32(&self, name: &str) -> Result<&'a Float32Array, DatasetError> {
        let a = self.f32_opt(name)?;
        self.no_nulls(name, a)?;
        Ok(a)
    }

    pub(crate) fn f64(&self, name: &str) -> Result<&'a Float64Array, DatasetError> {
        let a = self
            .column(name)?
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| self.wrong(name))?;
        self.no_nulls(name, a)?;
        Ok(a)
    }

    pub(crate) fn bool(&self, name: &str) -> Result<&'a BooleanArray, DatasetError> {
        let a = self
            .column(name)?
            .as_boolean_opt()
            .ok_or_else(|| self.wrong(name))?;
        self.no_nulls(name, a)?;
        Ok(a)
    }

    /// A list column; nulls allowed.
    pub(crate) fn list(&self, name: &str) -> Result<&'a ListArray, DatasetError> {
        self.column(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| self.wrong(name))
    }

    /// Row `i` of a `List<UInt32>` column (`None` when null).
    pub(crate) fn u32_list(
        &self,
        list: &ListArray,
        name: &str,
        i: usize,
    ) -> Result<Option<Vec<u32>>, DatasetError> {
        if list.is_null(i) {
            return Ok(None);
        }
        let values = list.value(i);
        let values = values
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| self.wrong(name))?;
        self.no_nulls(name, values)?;
        Ok(Some(values.values().to_vec()))
    }

    /// Row `i` of a `List<Float32>` column (`None` when null).
    pub(crate) fn f32_list(
        &self,
        list: &ListArray,
        name: &str,
        i: usize,
    ) -> Result<Option<Vec<f32>>, DatasetError> {
        if list.is_null(i) {
            return Ok(None);
        }
        let values = list.value(i);
        let values = values
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| self.wrong(name))?;
        self.no_nulls(name, values)?;
        Ok(Some(values.values().to_vec()))
    }
}

fn opt<T: Copy, A>(array: &A, i: usize, value: impl Fn(&A, usize) -> T) -> Option<T>
where
    A: Array,
{
    if array.is_null(i) {
        None
    } else {
        Some(value(array, i))
    }
}

/// Appends the rows of a batch of [`trajectories_schema`] to `out`.
pub(crate) fn trajectories_from_batch(
    c: &Columns<'_>,
    out: &mut Vec<TrajectoryRow>,
) -> Result<(), DatasetError> {
    let run_id = c.str("run_id")?;
    let step = c.u64("step")?;
    let phase = c.str("phase")?;
    let task_id = c.u64("task_id")?;
    let env = c.str("env")?;
    let sampler = c.str("sampler")?;
    let budget = c.u32("budget")?;
    let tree = c.u32("tree")?;
    let leaf_node = c.u32("leaf_node")?;
    let node_path = c.list("node_path")?;
    let prompt = c.str("prompt")?;
    let text = c.str("text")?;
    let reward = c.f32("reward")?;
    let success = c.bool("success")?;
    let truncated = c.bool("truncated")?;
    let action_tokens = c.u32("action_tokens")?;
    let turns = c.u32("turns")?;
    let advantage = c.f32_opt("advantage")?;
    let estimator = c.str("estimator")?;
    for i in 0..c.batch.num_rows() {
        out.push(TrajectoryRow {
            run_id: run_id.value(i).to_string(),
            step: step.value(i),
            phase: phase.value(i).to_string(),
            task_id: task_id.value(i),
            env: env.value(i).to_string(),
            sampler: sampler.value(i).to_string(),
            budget: budget.value(i),
            tree: tree.value(i),
            leaf_node: leaf_node.value(i),
            node_path: c
                .u32_list(node_path, "node_path", i)?
                .ok_or_else(|| c.bad("column \"node_path\" holds nulls".to_string()))?,
            prompt: prompt.value(i).to_string(),
            text: text.value(i).to_string(),
            reward: reward.value(i),
            success: success.value(i),
            truncated: truncated.value(i),
            action_tokens: action_tokens.value(i),
            turns: turns.value(i),
            advantage: opt(advantage, i, Float32Array::value),
            estimator: estimator.value(i).to_string(),
        });
    }
    Ok(())
}

/// Appends the rows of a batch of [`nodes_schema`] to `out`.
pub(crate) fn nodes_from_batch(
    c: &Columns<'_>,
    out: &mut Vec<NodeRow>,
) -> Result<(), DatasetError> {
    let run_id = c.str("run_id")?;
    let step = c.u64("step")?;
    let task_id = c.u64("task_id")?;
    let tree = c.u32("tree")?;
    let node_id = c.u32("node_id")?;
    let parent_id = c.u32_opt("parent_id")?;
    let depth = c.u32("depth")?;
    let kind = c.str("kind")?;
    let tokens = c.list("tokens")?;
    let text = c.str("text")?;
    let logprobs = c.list("logprobs")?;
    let entropies = c.list("entropies")?;
    let leaves_below = c.u32("leaves_below")?;
    let value = c.f32("value")?;
    let advantage = c.f32_opt("advantage")?;
    let is_leaf = c.bool("is_leaf")?;
    for i in 0..c.batch.num_rows() {
        let kind = match kind.value(i) {
            "action" => NodeKind::Action,
            "observation" => NodeKind::Observation,
            other => {
                return Err(c.bad(format!(
                    "column \"kind\" holds '{other}' (expected \"action\" or \"observation\")"
                )));
            }
        };
        out.push(NodeRow {
            run_id: run_id.value(i).to_string(),
            step: step.value(i),
            task_id: task_id.value(i),
            tree: tree.value(i),
            node_id: node_id.value(i),
            parent_id: opt(parent_id, i, UInt32Array::value),
            depth: depth.value(i),
            kind,
            tokens: c
                .u32_list(tokens, "tokens", i)?
                .ok_or_else(|| c.bad("column \"tokens\" holds nulls".to_string()))?,
            text: text.value(i).to_string(),
            logprobs: c.f32_list(logprobs, "logprobs", i)?,
            entropies: c.f32_list(entropies, "entropies", i)?,
            leaves_below: leaves_below.value(i),
            value: value.value(i),
            advantage: opt(advantage, i, Float32Array::value),
            is_leaf: is_leaf.value(i),
        });
    }
    Ok(())
}
