//! `metrics.parquet` and `metrics.csv`: one row per step and phase (DESIGN §9).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use rollout::sampler::SamplerStats;

use super::read::read_table;
use super::rows::Columns;
use super::writer_properties;
use crate::atomic::write_atomic;
use crate::error::DatasetError;

/// File name of the metrics table in a run directory.
pub const METRICS_FILE: &str = "metrics.parquet";
/// File name of the CSV copy of the metrics table.
pub const METRICS_CSV_FILE: &str = "metrics.csv";

/// One row of `metrics.parquet` / `metrics.csv`: one step of one phase (DESIGN §9). Counters are
/// `u64`, everything else `f64`. A value that does not apply to a phase is 0 (for example `kl`
/// in SFT) and a ratio without a denominator is NaN (`tokens_per_success` with no success).
///
/// Phases: `sft` and `rl` rows are training steps; `eval` rows are held-out evaluations
/// (`success_rate` is the held-out success, `success_stderr` its standard error, and
/// `cumulative_generated_tokens` the RL tokens generated before it), so a learning curve
/// against generated tokens is one query.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    /// Step within the phase (for `eval`: the RL steps completed before the evaluation).
    pub step: u64,
    /// Phase (`"sft"`, `"rl"`, `"eval"`, …; the caller's word).
    pub phase: String,
    /// Mean leaf reward.
    pub reward_mean: f64,
    /// Share of trajectories that succeeded.
    pub success_rate: f64,
    /// Standard error of `success_rate` (eval rows; 0 elsewhere).
    pub success_stderr: f64,
    /// Share of task groups with at least one successful trajectory.
    pub task_success: f64,
    /// Standard deviation of the leaf rewards.
    pub reward_std: f64,
    /// Training loss.
    pub loss: f64,
    /// KL to the reference policy.
    pub kl: f64,
    /// Mean policy entropy.
    pub entropy: f64,
    /// Weighted share of trained tokens whose PPO ratio was clipped.
    pub clip_frac: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate.
    pub lr: f64,
    /// Policy-generated tokens (shared prefixes counted once).
    pub generated_tokens: u64,
    /// RL-generated tokens of the run up to and including this row (eval rows: before it).
    pub cumulative_generated_tokens: u64,
    /// Prompt and observation tokens pushed through the policy.
    pub prefill_tokens: u64,
    /// Context tokens served from the shared-prefix cache.
    pub cached_tokens: u64,
    /// `cached / (cached + computed)`.
    pub cache_read_share: f64,
    /// Leaf trajectories.
    pub trajectories: u64,
    /// Leaf trajectories with distinct token sequences.
    pub distinct_trajectories: u64,
    /// Trajectories cut by the budget or the context window.
    pub truncated: u64,
    /// Share of task groups whose finished trajectories all have the same reward.
    pub zero_adv_groups_frac: f64,
    /// Generated tokens per solved task group (NaN when none was solved).
    pub tokens_per_success: f64,
    /// Mean action tokens on a trajectory's path.
    pub response_len_mean: f64,
    /// Action tokens on the longest trajectory's path.
    pub response_len_max: u64,
    /// Generated (or, for SFT, trained) tokens per second.
    pub tokens_per_s: f64,
    /// Wall time of the step in milliseconds.
    pub wall_ms: u64,
}

impl MetricsRow {
    /// A row with every metric 0 except `tokens_per_success` (NaN: nothing solved).
    pub fn new(step: u64, phase: impl Into<String>) -> Self {
        MetricsRow {
            step,
            phase: phase.into(),
            reward_mean: 0.0,
            success_rate: 0.0,
            success_stderr: 0.0,
            task_success: 0.0,
            reward_std: 0.0,
            loss: 0.0,
            kl: 0.0,
            entropy: 0.0,
            clip_frac: 0.0,
            grad_norm: 0.0,
            lr: 0.0,
            generated_tokens: 0,
            cumulative_generated_tokens: 0,
            prefill_tokens: 0,
            cached_tokens: 0,
            cache_read_share: 0.0,
            trajectories: 0,
            distinct_trajectories: 0,
            truncated: 0,
            zero_adv_groups_frac: 0.0,
            tokens_per_success: f64::NAN,
            response_len_mean: 0.0,
            response_len_max: 0,
            tokens_per_s: 0.0,
            wall_ms: 0,
        }
    }

    /// A row with the sampling metrics of `stats` filled in (training metrics 0):
    /// `tokens_per_success` = generated tokens / solved groups (NaN when none),
    /// `zero_adv_groups_frac` = zero-advantage groups / groups, `tokens_per_s` and `wall_ms`
    /// from the sampler's wall time (overwrite both with the whole step's time if preferred).
    /// `cumulative_generated_tokens` is left at 0 for the caller.
    pub fn from_sampler(step: u64, phase: impl Into<String>, stats: &SamplerStats) -> Self {
        let per = |num: f64, den: u64| {
            if den == 0 { f64::NAN } else { num / den as f64 }
        };
        MetricsRow {
            reward_mean: stats.reward_mean(),
            success_rate: stats.success_rate(),
            task_success: stats.task_success_rate(),
            reward_std: stats.reward_std(),
            generated_tokens: stats.generated_tokens,
            prefill_tokens: stats.prefill_tokens,
            cached_tokens: stats.cached_tokens,
            cache_read_share: stats.cache_read_share(),
            trajectories: stats.trajectories,
            distinct_trajectories: stats.distinct_trajectories,
            truncated: stats.truncated,
            zero_adv_groups_frac: if stats.groups == 0 {
                0.0
            } else {
                stats.zero_adv_groups as f64 / stats.groups as f64
            },
            tokens_per_success: per(stats.generated_tokens as f64, stats.solved_groups),
            response_len_mean: stats.response_len_mean(),
            response_len_max: stats.response_tokens_max,
            tokens_per_s: stats.generated_tokens as f64 * 1000.0 / (stats.wall_ms as f64).max(1.0),
            wall_ms: stats.wall_ms,
            ..MetricsRow::new(step, phase)
        }
    }
}

/// How one numeric column is read from and written to a row.
#[derive(Clone, Copy)]
enum Access {
    /// A `UInt64` column.
    U64(fn(&MetricsRow) -> u64, fn(&mut MetricsRow, u64)),
    /// A `Float64` column.
    F64(fn(&MetricsRow) -> f64, fn(&mut MetricsRow, f64)),
}

/// One [`NUMERIC`] entry: the field's name and its getter and setter.
macro_rules! column {
    ($field:ident, $kind:ident) => {
        (
            stringify!($field),
            Access::$kind(|r| r.$field, |r, v| r.$field = v),
        )
    };
}

/// The numeric columns after `step` and `phase`, in file order: the one place that lists them
/// (schema, Parquet batch, CSV and reader all walk it).
const NUMERIC: &[(&str, Access)] = &[
    column!(reward_mean, F64),
    column!(success_rate, F64),
    column!(success_stderr, F64),
    column!(task_success, F64),
    column!(reward_std, F64),
    column!(loss, F64),
    column!(kl, F64),
    column!(entropy, F64),
    column!(clip_frac, F64),
    column!(grad_norm, F64),
    column!(lr, F64),
    column!(generated_tokens, U64),
    column!(cumulative_generated_tokens, U64),
    column!(prefill_tokens, U64),
    column!(cached_tokens, U64),
    column!(cache_read_share, F64),
    column!(trajectories, U64),
    column!(distinct_trajectories, U64),
    column!(truncated, U64),
    column!(zero_adv_groups_frac, F64),
    column!(tokens_per_success, F64),
    column!(response_len_mean, F64),
    column!(response_len_max, U64),
    column!(tokens_per_s, F64),
    column!(wall_ms, U64),
];

/// The numeric columns, in file order.
fn numeric() -> impl Iterator<Item = (&'static str, Access)> {
    NUMERIC.iter().copied()
}

/// The TensorBoard events file of `rows` ([`super::tensorboard`]): one event per row, tags
/// `<phase>/<column>`, wall time the sum of the rows' `wall_ms` up to it.
pub fn metrics_events(rows: &[MetricsRow]) -> Vec<u8> {
    let mut wall_ms = 0u64;
    let events: Vec<_> = rows
        .iter()
        .map(|row| {
            wall_ms += row.wall_ms;
            super::tensorboard::Scalars {
                step: row.step,
                wall_s: wall_ms as f64 / 1000.0,
                values: numeric_values(row)
                    .map(|(column, v)| (format!("{}/{column}", row.phase), v))
                    .collect(),
            }
        })
        .collect();
    super::tensorboard::events_bytes(&events)
}

/// Every numeric column of `row` with its value as f64, in file order.
fn numeric_values(row: &MetricsRow) -> impl Iterator<Item = (&'static str, f64)> + '_ {
    numeric().map(move |(name, access)| {
        let value = match access {
            Access::U64(get, _) => get(row) as f64,
            Access::F64(get, _) => get(row),
        };
        (name, value)
    })
}

/// Columns added after the first release of the table: a file without them (an older run)
/// still reads, with these values at their [`MetricsRow::new`] defaults.
const ADDED_LATER: [&str; 7] = [
    "success_stderr",
    "task_success",
    "reward_std",
    "clip_frac",
    "cumulative_generated_tokens",
    "response_len_mean",
    "response_len_max",
];

/// The column names of the metrics table, in order.
pub fn metrics_columns() -> Vec<&'static str> {
    ["step", "phase"]
        .into_iter()
        .chain(numeric().map(|(n, _)| n))
        .collect()
}

/// The Arrow schema of `metrics.parquet` (DESIGN §9): `step` UInt64, `phase` Utf8, the counters
/// UInt64, everything else Float64; no column is nullable.
pub fn metrics_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("phase", DataType::Utf8, false),
    ];
    fields.extend(numeric().map(|(name, access)| {
        let ty = match access {
            Access::U64(..) => DataType::UInt64,
            Access::F64(..) => DataType::Float64,
        };
        Field::new(name, ty, false)
    }));
    Arc::new(Schema::new(fields))
}

pub(super) fn metrics_batch(rows: &[MetricsRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.step))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.phase.as_str()),
        )),
    ];
    for (_, access) in numeric() {
        columns.push(match access {
            Access::U64(get, _) => Arc::new(UInt64Array::from_iter_values(rows.iter().map(get))),
            Access::F64(get, _) => Arc::new(Float64Array::from_iter_values(rows.iter().map(get))),
        });
    }
    RecordBatch::try_new(metrics_schema(), columns)
}

/// The CSV text of the metrics table: a header with the column names, then one line per row.
/// Numbers use Rust's shortest round-trip formatting (`0.1`, `3`, `NaN`, `inf`); phases are
/// written as given (they never contain commas or quotes in arbor; a phase that does is quoted).
pub fn metrics_csv(rows: &[MetricsRow]) -> String {
    let mut out = metrics_columns().join(",");
    out.push('\n');
    for r in rows {
        let _ = write!(out, "{},", r.step);
        if r.phase.contains([',', '"', '\n', '\r']) {
            let _ = write!(out, "\"{}\"", r.phase.replace('"', "\"\""));
        } else {
            out.push_str(&r.phase);
        }
        for (_, access) in numeric() {
            let _ = match access {
                Access::U64(get, _) => write!(out, ",{}", get(r)),
                Access::F64(get, _) => write!(out, ",{}", get(r)),
            };
        }
        out.push('\n');
    }
    out
}

/// Writes `metrics.parquet` and `metrics.csv` of a run directory. The table is small (one row
/// per step and phase), so it is kept in memory and both files are rewritten atomically (temp
/// file, fsync, rename) on every [`MetricsWriter::push`]/[`MetricsWriter::extend`]: after each
/// call both files hold every row so far, and a crash leaves the previous complete versions.
/// `metrics.parquet` is zstd-compressed with a single row group (a row group per one-row step
/// would only bloat the footer).
///
/// Cost: each call rewrites the whole table — about 200 bytes per row before compression — so
/// for long SFT phases push rows in batches (for example once per phase or every 100 steps).
#[derive(Debug)]
pub struct MetricsWriter {
    parquet_path: PathBuf,
    csv_path: PathBuf,
    rows: Vec<MetricsRow>,
    /// Also write the TensorBoard events file ([`super::tensorboard`]) here.
    tensorboard: Option<PathBuf>,
}

impl MetricsWriter {
    /// Starts an empty table in `dir` (which must exist), writing both files with no rows and
    /// replacing existing ones.
    pub fn create(dir: &Path) -> Result<Self, DatasetError> {
        let mut w = MetricsWriter {
            parquet_path: dir.join(METRICS_FILE),
            csv_path: dir.join(METRICS_CSV_FILE),
            rows: Vec::new(),
            tensorboard: None,
        };
        w.write()?;
        Ok(w)
    }

    /// Continues the table in `dir` (for `--resume`): reads `metrics.parquet` if it exists,
    /// keeps the rows for which `keep` is true (e.g. `|r| r.phase == "sft" || r.step < 120`),
    /// and rewrites both files with them.
    pub fn resume(dir: &Path, keep: impl FnMut(&MetricsRow) -> bool) -> Result<Self, DatasetError> {
        let parquet_path = dir.join(METRICS_FILE);
        let mut rows = if parquet_path.exists() {
            read_metrics(&parquet_path)?
        } else {
            Vec::new()
        };
        rows.retain(keep);
        let mut w = MetricsWriter {
            parquet_path,
            csv_path: dir.join(METRICS_CSV_FILE),
            rows,
            tensorboard: None,
        };
        w.write()?;
        Ok(w)
    }

    /// Also writes the rows as a TensorBoard events file (`tb/` in the run directory, see
    /// [`super::tensorboard`]), now and with every later write.
    pub fn with_tensorboard(mut self, dir: &Path) -> Result<Self, DatasetError> {
        let path = super::tensorboard::events_path(dir);
        let parent = path.parent().expect("the events file is inside tb/");
        std::fs::create_dir_all(parent).map_err(|e| DatasetError::WriteRunFile {
            path: parent.to_path_buf(),
            reason: e.to_string(),
        })?;
        self.tensorboard = Some(path);
        self.write()?;
        Ok(self)
    }

    /// Appends one row and rewrites both files.
    pub fn push(&mut self, row: MetricsRow) -> Result<(), DatasetError> {
        self.extend([row])
    }

    /// Appends rows and rewrites both files once.
    pub fn extend(
        &mut self,
        rows: impl IntoIterator<Item = MetricsRow>,
    ) -> Result<(), DatasetError> {
        self.rows.extend(rows);
        self.write()
    }

    /// Every row so far, in the order pushed.
    pub fn rows(&self) -> &[MetricsRow] {
        &self.rows
    }

    /// Path of `metrics.parquet`.
    pub fn path(&self) -> &Path {
        &self.parquet_path
    }

    fn write(&mut self) -> Result<(), DatasetError> {
        let fail = |path: &Path, reason: String| DatasetError::WriteRunFile {
            path: path.to_path_buf(),
            reason,
        };
        let p = &self.parquet_path;
        let batch = metrics_batch(&self.rows).map_err(|e| fail(p, e.to_string()))?;
        let mut bytes = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut bytes, metrics_schema(), Some(writer_properties()))
                .map_err(|e| fail(p, e.to_string()))?;
        writer.write(&batch).map_err(|e| fail(p, e.to_string()))?;
        writer.close().map_err(|e| fail(p, e.to_string()))?;
        write_atomic(p, &bytes).map_err(|e| fail(p, e.to_string()))?;
        let csv = metrics_csv(&self.rows);
        write_atomic(&self.csv_path, csv.as_bytes())
            .map_err(|e| fail(&self.csv_path, e.to_string()))?;
        if let Some(tb) = &self.tensorboard {
            let bytes = metrics_events(&self.rows);
            write_atomic(tb, &bytes).map_err(|e| fail(tb, e.to_string()))?;
        }
        Ok(())
    }
}

/// Reads `metrics.parquet` (or any file with the [`metrics_schema`] columns) into rows, in file
/// order.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<MetricsRow>, DatasetError> {
    let full = metrics_schema();
    let required: Vec<_> = full
        .fields()
        .iter()
        .filter(|f| !ADDED_LATER.contains(&f.name().as_str()))
        .cloned()
        .collect();
    read_table(path.as_ref(), &Schema::new(required), |c, out| {
        metrics_from_batch(c, out)
    })
}

fn metrics_from_batch(c: &Columns<'_>, out: &mut Vec<MetricsRow>) -> Result<(), DatasetError> {
    let step = c.u64("step")?;
    let phase = c.str("phase")?;
    let first = out.len();
    for i in 0..c.batch.num_rows() {
        out.push(MetricsRow::new(step.value(i), phase.value(i)));
    }
    for (name, access) in numeric() {
        if ADDED_LATER.contains(&name) && c.batch.column_by_name(name).is_none() {
            continue;
        }
        match access {
            Access::U64(_, set) => {
                let col = c.u64(name)?;
                for (i, row) in out[first..].iter_mut().enumerate() {
                    set(row, col.value(i));
                }
            }
            Access::F64(_, set) => {
                let col = c.f64(name)?;
                for (i, row) in out[first..].iter_mut().enumerate() {
                    set(row, col.value(i));
                }
            }
        }
    }
    Ok(())
}
