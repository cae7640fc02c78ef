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
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    /// Step within the phase.
    pub step: u64,
    /// Phase (`"sft"`, `"rl"`, `"eval"`, …; the caller's word).
    pub phase: String,
    /// Mean leaf reward.
    pub reward_mean: f64,
    /// Share of trajectories that succeeded.
    pub success_rate: f64,
    /// Training loss.
    pub loss: f64,
    /// KL to the reference policy.
    pub kl: f64,
    /// Mean policy entropy.
    pub entropy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate.
    pub lr: f64,
    /// Policy-generated tokens (shared prefixes counted once).
    pub generated_tokens: u64,
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
    /// Share of task groups whose rewards are all equal.
    pub zero_adv_groups_frac: f64,
    /// Generated tokens per solved task group (NaN when none was solved).
    pub tokens_per_success: f64,
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
            loss: 0.0,
            kl: 0.0,
            entropy: 0.0,
            grad_norm: 0.0,
            lr: 0.0,
            generated_tokens: 0,
            prefill_tokens: 0,
            cached_tokens: 0,
            cache_read_share: 0.0,
            trajectories: 0,
            distinct_trajectories: 0,
            truncated: 0,
            zero_adv_groups_frac: 0.0,
            tokens_per_success: f64::NAN,
            tokens_per_s: 0.0,
            wall_ms: 0,
        }
    }

    /// A row with the sampling metrics of `stats` filled in (training metrics 0):
    /// `tokens_per_success` = generated tokens / solved groups (NaN when none),
    /// `zero_adv_groups_frac` = zero-advantage groups / groups, `tokens_per_s` and `wall_ms`
    /// from the sampler's wall time (overwrite both with the whole step's time if preferred).
    pub fn from_sampler(step: u64, phase: impl Into<String>, stats: &SamplerStats) -> Self {
        let per = |num: f64, den: u64| {
            if den == 0 { f64::NAN } else { num / den as f64 }
        };
        MetricsRow {
            reward_mean: stats.reward_mean(),
            success_rate: stats.success_rate(),
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
            tokens_per_s: stats.generated_tokens as f64 * 1000.0 / (stats.wall_ms as f64).max(1.0),
            wall_ms: stats.wall_ms,
            ..MetricsRow::new(step, phase)
        }
    }
}

/// The column names of the metrics table, in order.
const COLUMNS: [&str; 20] = [
    "step",
    "phase",
    "reward_mean",
    "success_rate",
    "loss",
    "kl",
    "entropy",
    "grad_norm",
    "lr",
    "generated_tokens",
    "prefill_tokens",
    "cached_tokens",
    "cache_read_share",
    "trajectories",
    "distinct_trajectories",
    "truncated",
    "zero_adv_groups_frac",
    "tokens_per_success",
    "tokens_per_s",
    "wall_ms",
];

/// Columns stored as `UInt64` (besides `step`); the rest after `phase` are `Float64`.
const COUNTERS: [&str; 7] = [
    "generated_tokens",
    "prefill_tokens",
    "cached_tokens",
    "trajectories",
    "distinct_trajectories",
    "truncated",
    "wall_ms",
];

/// The Arrow schema of `metrics.parquet` (DESIGN §9): `step` UInt64, `phase` Utf8, the counters
/// UInt64, everything else Float64; no column is nullable.
pub fn metrics_schema() -> SchemaRef {
    let fields = COLUMNS
        .iter()
        .map(|&name| {
            let ty = match name {
                "phase" => DataType::Utf8,
                "step" => DataType::UInt64,
                n if COUNTERS.contains(&n) => DataType::UInt64,
                _ => DataType::Float64,
            };
            Field::new(name, ty, false)
        })
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}

/// One value of a row as the CSV writes it.
enum Cell<'a> {
    U64(u64),
    F64(f64),
    Str(&'a str),
}

fn cells(r: &MetricsRow) -> [Cell<'_>; 20] {
    use Cell::*;
    [
        U64(r.step),
        Str(&r.phase),
        F64(r.reward_mean),
        F64(r.success_rate),
        F64(r.loss),
        F64(r.kl),
        F64(r.entropy),
        F64(r.grad_norm),
        F64(r.lr),
        U64(r.generated_tokens),
        U64(r.prefill_tokens),
        U64(r.cached_tokens),
        F64(r.cache_read_share),
        U64(r.trajectories),
        U64(r.distinct_trajectories),
        U64(r.truncated),
        F64(r.zero_adv_groups_frac),
        F64(r.tokens_per_success),
        F64(r.tokens_per_s),
        U64(r.wall_ms),
    ]
}

fn metrics_batch(rows: &[MetricsRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let f = |get: fn(&MetricsRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(get)))
    };
    let u = |get: fn(&MetricsRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(get)))
    };
    let columns = vec![
        u(|r| r.step),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.phase.as_str()),
        )),
        f(|r| r.reward_mean),
        f(|r| r.success_rate),
        f(|r| r.loss),
        f(|r| r.kl),
        f(|r| r.entropy),
        f(|r| r.grad_norm),
        f(|r| r.lr),
        u(|r| r.generated_tokens),
        u(|r| r.prefill_tokens),
        u(|r| r.cached_tokens),
        f(|r| r.cache_read_share),
        u(|r| r.trajectories),
        u(|r| r.distinct_trajectories),
        u(|r| r.truncated),
        f(|r| r.zero_adv_groups_frac),
        f(|r| r.tokens_per_success),
        f(|r| r.tokens_per_s),
        u(|r| r.wall_ms),
    ];
    RecordBatch::try_new(metrics_schema(), columns)
}

/// The CSV text of the metrics table: a header with the column names, then one line per row.
/// Numbers use Rust's shortest round-trip formatting (`0.1`, `3`, `NaN`, `inf`); phases are
/// written as given (they never contain commas or quotes in arbor; a phase that does is quoted).
pub fn metrics_csv(rows: &[MetricsRow]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        for (i, cell) in cells(r).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = match cell {
                Cell::U64(v) => write!(out, "{v}"),
                Cell::F64(v) => write!(out, "{v}"),
                Cell::Str(s) if s.contains([',', '"', '\n', '\r']) => {
                    write!(out, "\"{}\"", s.replace('"', "\"\""))
                }
                Cell::Str(s) => write!(out, "{s}"),
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
}

impl MetricsWriter {
    /// Starts an empty table in `dir` (which must exist), writing both files with no rows and
    /// replacing existing ones.
    pub fn create(dir: &Path) -> Result<Self, DatasetError> {
        let mut w = MetricsWriter {
            parquet_path: dir.join(METRICS_FILE),
            csv_path: dir.join(METRICS_CSV_FILE),
            rows: Vec::new(),
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
        };
        w.write()?;
        Ok(w)
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
            .map_err(|e| fail(&self.csv_path, e.to_string()))
    }
}

/// Reads `metrics.parquet` (or any file with the [`metrics_schema`] columns) into rows, in file
/// order.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<MetricsRow>, DatasetError> {
    read_table(path.as_ref(), &metrics_schema(), |c, out| {
        metrics_from_batch(c, out)
    })
}

fn metrics_from_batch(c: &Columns<'_>, out: &mut Vec<MetricsRow>) -> Result<(), DatasetError> {
    let step = c.u64("step")?;
    let phase = c.str("phase")?;
    let f = |name| c.f64(name);
    let u = |name| c.u64(name);
    let (reward_mean, success_rate, loss, kl, entropy, grad_norm, lr) = (
        f("reward_mean")?,
        f("success_rate")?,
        f("loss")?,
        f("kl")?,
        f("entropy")?,
        f("grad_norm")?,
        f("lr")?,
    );
    let (generated, prefill, cached, share) = (
        u("generated_tokens")?,
        u("prefill_tokens")?,
        u("cached_tokens")?,
        f("cache_read_share")?,
    );
    let (trajectories, distinct, truncated) = (
        u("trajectories")?,
        u("distinct_trajectories")?,
        u("truncated")?,
    );
    let (zero_adv, per_success, per_s, wall) = (
        f("zero_adv_groups_frac")?,
        f("tokens_per_success")?,
        f("tokens_per_s")?,
        u("wall_ms")?,
    );
    for i in 0..c.batch.num_rows() {
        out.push(MetricsRow {
            step: step.value(i),
            phase: phase.value(i).to_string(),
            reward_mean: reward_mean.value(i),
            success_rate: success_rate.value(i),
            loss: loss.value(i),
            kl: kl.value(i),
            entropy: entropy.value(i),
            grad_norm: grad_norm.value(i),
            lr: lr.value(i),
            generated_tokens: generated.value(i),
            prefill_tokens: prefill.value(i),
            cached_tokens: cached.value(i),
            cache_read_share: share.value(i),
            trajectories: trajectories.value(i),
            distinct_trajectories: distinct.value(i),
            truncated: truncated.value(i),
            zero_adv_groups_frac: zero_adv.value(i),
            tokens_per_success: per_success.value(i),
            tokens_per_s: per_s.value(i),
            wall_ms: wall.value(i),
        });
    }
    Ok(())
}
