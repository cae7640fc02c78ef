//! The sweep's summary: one row per run (`summary.parquet` / `.csv`), read from the run's own
//! files, and the printed table.

use super::*;

/// File name of the sweep table.
pub const SUMMARY_FILE: &str = "summary.parquet";
/// File name of its CSV copy.
pub const SUMMARY_CSV_FILE: &str = "summary.csv";

/// A value type of a summary column: its Arrow type, array and CSV cell.
pub(super) trait Cell: Sized {
    /// Arrow type of the column.
    fn data_type() -> DataType;
    /// Whether the column may hold nulls.
    fn nullable() -> bool {
        false
    }
    /// The column of `values`.
    fn array(values: impl Iterator<Item = Self>) -> ArrayRef;
    /// Row `i` of `column`.
    fn read(column: &ArrayRef, i: usize) -> Option<Self>;
    /// The CSV cell (numbers in Rust's shortest round-trip form, `NaN` when undefined).
    fn csv(&self) -> String;
    /// The value as text for people (the CSV cell without CSV quoting).
    fn text(&self) -> String {
        self.csv()
    }
}

impl Cell for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn array(values: impl Iterator<Item = Self>) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(values))
    }
    fn read(column: &ArrayRef, i: usize) -> Option<Self> {
        let a = column.as_any().downcast_ref::<StringArray>()?;
        (!a.is_null(i)).then(|| a.value(i).to_string())
    }
    fn csv(&self) -> String {
        if self.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", self.replace('"', "\"\""))
        } else {
            self.clone()
        }
    }
    fn text(&self) -> String {
        self.clone()
    }
}

impl Cell for Option<String> {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn nullable() -> bool {
        true
    }
    fn array(values: impl Iterator<Item = Self>) -> ArrayRef {
        Arc::new(StringArray::from_iter(values))
    }
    fn read(column: &ArrayRef, i: usize) -> Option<Self> {
        let a = column.as_any().downcast_ref::<StringArray>()?;
        Some((!a.is_null(i)).then(|| a.value(i).to_string()))
    }
    fn csv(&self) -> String {
        self.as_ref().map(Cell::csv).unwrap_or_default()
    }
    fn text(&self) -> String {
        self.clone().unwrap_or_default()
    }
}

macro_rules! number_cell {
    ($ty:ty, $data_type:expr, $array:ty) => {
        impl Cell for $ty {
            fn data_type() -> DataType {
                $data_type
            }
            fn array(values: impl Iterator<Item = Self>) -> ArrayRef {
                Arc::new(<$array>::from_iter_values(values))
            }
            fn read(column: &ArrayRef, i: usize) -> Option<Self> {
                let a = column.as_any().downcast_ref::<$array>()?;
                (!a.is_null(i)).then(|| a.value(i))
            }
            fn csv(&self) -> String {
                self.to_string()
            }
        }
    };
}
number_cell!(u32, DataType::UInt32, UInt32Array);
number_cell!(u64, DataType::UInt64, UInt64Array);
number_cell!(f64, DataType::Float64, Float64Array);

/// Declares [`SummaryRow`] and derives everything that lists its columns (schema, Arrow
/// batch, reading a row back, CSV cells) from the one field list, in its order.
macro_rules! summary_columns {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty,)*) => {
        /// One row of `summary.parquet`: one run (or test-time point) of the grid.
        #[derive(Debug, Clone, PartialEq)]
        pub struct SummaryRow {
            $($(#[doc = $doc])* pub $name: $ty,)*
        }

        impl SummaryRow {
            /// The column names, in file order.
            pub const COLUMNS: &[&str] = &[$(stringify!($name)),*];

            /// Row `i` of a batch with [`summary_schema`].
            fn read(batch: &RecordBatch, i: usize) -> anyhow::Result<SummaryRow> {
                Ok(SummaryRow {
                    $($name: {
                        let name = stringify!($name);
                        let column = batch
                            .column_by_name(name)
                            .ok_or_else(|| anyhow!("missing column '{name}'"))?;
                        <$ty as Cell>::read(column, i)
                            .ok_or_else(|| anyhow!("column '{name}' has the wrong type or a null"))?
                    },)*
                })
            }

            /// The row's CSV cells.
            fn csv_cells(&self) -> Vec<String> {
                vec![$(Cell::csv(&self.$name)),*]
            }

            /// The row's values as text, in column order.
            pub fn cells(&self) -> Vec<String> {
                vec![$(Cell::text(&self.$name)),*]
            }
        }

        /// The Arrow schema of `summary.parquet`: strings `Utf8` (`branch` nullable),
        /// `budget` `UInt32`, counts `UInt64`, rates and ratios `Float64`.
        pub fn summary_schema() -> SchemaRef {
            Arc::new(Schema::new(vec![
                $(Field::new(stringify!($name), <$ty as Cell>::data_type(), <$ty as Cell>::nullable()),)*
            ]))
        }

        pub(super) fn summary_batch(rows: &[SummaryRow]) -> anyhow::Result<RecordBatch> {
            let columns: Vec<ArrayRef> = vec![
                $(<$ty as Cell>::array(rows.iter().map(|r| r.$name.clone())),)*
            ];
            Ok(RecordBatch::try_new(summary_schema(), columns)?)
        }
    };
}

summary_columns! {
    /// Environment name.
    env: String,
    /// The model's label: a preset, or a model file's or directory's name.
    model: String,
    /// Sampler (`chain` or `tree`).
    sampler: String,
    /// Branching policy of the tree sampler; `None` for chain.
    branch: Option<String>,
    /// Advantage estimator.
    estimator: String,
    /// Per-task token budget.
    budget: u32,
    /// Seed of the run.
    seed: u64,
    /// Held-out success before RL (after the shared SFT).
    success_before: f64,
    /// Held-out success after RL (equal to `success_before` without RL).
    success_after: f64,
    /// Tokens generated by RL sampling (sum over steps).
    generated_tokens: u64,
    /// Generated tokens per solved task group over all RL steps (NaN when none was solved).
    tokens_per_success: f64,
    /// Distinct trajectories per 1000 generated tokens over all RL steps.
    distinct_per_1k: f64,
    /// Mean over RL steps of the share of context served from the prefix cache.
    cache_read_share: f64,
    /// Trajectories cut by the budget (sum over steps).
    truncated: u64,
    /// Wall time of the run in seconds (SFT excluded: it is shared).
    wall_s: f64,
    /// RL tokens generated before the run's first held-out evaluation at or above the chain
    /// reference's final success (module docs); NaN if it never reached it.
    tokens_to_chain_final: f64,
    /// `tokens_to_chain_final` over the chain reference's mean total RL tokens.
    reach_ratio: f64,
    /// Share of the held-out tasks the final policy solves with one rollout of this run's
    /// sampler at this budget (any trajectory solved; [`crate::evaluate::evaluate_at_budget`]).
    budget_success: f64,
    /// Tokens that budgeted evaluation generated per solved task (NaN when none was solved).
    budget_tokens_per_solved: f64,
    /// Tokens that budgeted evaluation generated over all held-out tasks.
    budget_tokens: u64,
    /// The run directory (the shared SFT run's for a test-time point).
    run_dir: String,
}

/// Reads the numbers of a finished run from its `summary.json` and `metrics.parquet`.
pub(super) fn summary_row(point: &GridPoint, env: &str, dir: &Path) -> anyhow::Result<SummaryRow> {
    let summary = Summary::load(dir)?;
    let metrics = read_metrics(dir.join(METRICS_FILE))?;
    let rl: Vec<_> = metrics.iter().filter(|m| m.phase == "rl").collect();
    let generated: u64 = rl.iter().map(|m| m.generated_tokens).sum();
    // Solved groups per step, recovered exactly from tokens_per_success = generated / solved.
    let solved: f64 = rl
        .iter()
        .filter(|m| m.tokens_per_success.is_finite() && m.tokens_per_success > 0.0)
        .map(|m| (m.generated_tokens as f64 / m.tokens_per_success).round())
        .sum();
    let distinct: u64 = rl.iter().map(|m| m.distinct_trajectories).sum();
    let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { f64::NAN };
    Ok(SummaryRow {
        success_before: summary.success_before,
        success_after: summary.success_after,
        generated_tokens: generated,
        tokens_per_success: ratio(generated as f64, solved),
        distinct_per_1k: ratio(1000.0 * distinct as f64, generated as f64),
        cache_read_share: ratio(rl.iter().map(|m| m.cache_read_share).sum(), rl.len() as f64),
        truncated: rl.iter().map(|m| m.truncated).sum(),
        wall_s: summary.wall_s,
        ..point_row(point, env, dir)
    })
}

/// The row of `point` with its name columns and `run_dir` set and no measurements (NaN rates,
/// zero counts).
pub(super) fn point_row(point: &GridPoint, env: &str, run_dir: &Path) -> SummaryRow {
    SummaryRow {
        env: env.to_string(),
        model: point.model.label.clone(),
        sampler: point.sampler.to_string(),
        branch: point.branch.map(|b| b.to_string()),
        estimator: point.estimator.to_string(),
        budget: point.budget,
        seed: point.seed,
        success_before: f64::NAN,
        success_after: f64::NAN,
        generated_tokens: 0,
        tokens_per_success: f64::NAN,
        distinct_per_1k: f64::NAN,
        cache_read_share: f64::NAN,
        truncated: 0,
        wall_s: 0.0,
        tokens_to_chain_final: f64::NAN,
        reach_ratio: f64::NAN,
        budget_success: f64::NAN,
        budget_tokens_per_solved: f64::NAN,
        budget_tokens: 0,
        run_dir: run_dir.display().to_string(),
    }
}

/// Writes `rows` to `path` as a zstd Parquet file (one row group), atomically.
pub fn write_summary(path: &Path, rows: &[SummaryRow]) -> anyhow::Result<()> {
    let write = || -> anyhow::Result<()> {
        let batch = summary_batch(rows)?;
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, summary_schema(), Some(writer_properties()))?;
        w.write(&batch)?;
        w.close()?;
        write_atomic(path, &bytes)?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Reads a `summary.parquet` written by [`write_summary`].
pub fn read_summary(path: &Path) -> anyhow::Result<Vec<SummaryRow>> {
    let read = || -> anyhow::Result<Vec<SummaryRow>> {
        let file = std::fs::File::open(path)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch?;
            for i in 0..batch.num_rows() {
                rows.push(SummaryRow::read(&batch, i)?);
            }
        }
        Ok(rows)
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}

/// The CSV text of the sweep table: a header, then one line per run; `branch` is empty for
/// chain runs, numbers use Rust's shortest round-trip formatting (`NaN` when undefined).
pub fn summary_csv(rows: &[SummaryRow]) -> String {
    let mut out = SummaryRow::COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.csv_cells().join(","));
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// table and plots

/// Mean and sample standard deviation of the finite values (std 0 for one value; NaN mean for
/// none).
pub(super) fn mean_std(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() == 1 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The printed table: one line per run, then (with several seeds) mean ± std per line and
/// budget.
pub fn table(rows: &[SummaryRow]) -> String {
    let width = |get: fn(&SummaryRow) -> &str, title: &str| {
        rows.iter()
            .map(|r| get(r).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let wp = width(|r| &r.model, "model");
    let ws = width(|r| &r.sampler, "sampler");
    let wb = width(|r| r.branch.as_deref().unwrap_or("-"), "branch");
    let we = width(|r| &r.estimator, "estimator");
    let num = |v: f64, prec: usize| {
        if v.is_finite() {
            format!("{v:.prec$}")
        } else {
            "-".into()
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>4} {:>6} {:>6} {:>10} {:>11} {:>11} {:>6} {:>6} {:>7} {:>11} {:>9} {:>10}",
        "model",
        "sampler",
        "branch",
        "estimator",
        "budget",
        "seed",
        "before",
        "after",
        "gen_tokens",
        "tok/success",
        "distinct/1k",
        "cache",
        "trunc",
        "wall_s",
        "reach_ratio",
        "in_budget",
        "tok/solved"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>4} {:>6.3} {:>6.3} {:>10} {:>11} {:>11} {:>6} {:>6} {:>7.1} {:>11} {:>9} {:>10}",
            r.model,
            r.sampler,
            r.branch.as_deref().unwrap_or("-"),
            r.estimator,
            r.budget,
            r.seed,
            r.success_before,
            r.success_after,
            r.generated_tokens,
            num(r.tokens_per_success, 1),
            num(r.distinct_per_1k, 2),
            num(r.cache_read_share, 3),
            r.truncated,
            r.wall_s,
            num(r.reach_ratio, 2),
            num(r.budget_success, 3),
            num(r.budget_tokens_per_solved, 0)
        );
    }
    let mut seeds: Vec<u64> = rows.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    if seeds.len() > 1 {
        let _ = writeln!(out, "\nmean ± std over {} seeds", seeds.len());
        let _ = writeln!(
            out,
            "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>15} {:>15} {:>11} {:>21}",
            "model",
            "sampler",
            "branch",
            "estimator",
            "budget",
            "after",
            "distinct/1k",
            "tok/success",
            "reach_ratio (seeds)"
        );
        let mut groups: Vec<(SeriesKey, u32)> = Vec::new();
        for r in rows {
            let g = (series_key(r), r.budget);
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        for (key, budget) in groups {
            let of: Vec<&SummaryRow> = rows
                .iter()
                .filter(|r| series_key(r) == key && r.budget == budget)
                .collect();
            let stat = |get: fn(&SummaryRow) -> f64, prec: usize| {
                let (m, s) = mean_std(&of.iter().map(|r| get(r)).collect::<Vec<_>>());
                if m.is_finite() {
                    format!("{m:.prec$} ± {s:.prec$}")
                } else {
                    "-".into()
                }
            };
            let (tps, _) = mean_std(&of.iter().map(|r| r.tokens_per_success).collect::<Vec<_>>());
            let reached = of.iter().filter(|r| r.reach_ratio.is_finite()).count();
            let reach = format!("{} ({reached}/{})", stat(|r| r.reach_ratio, 2), of.len());
            let _ = writeln!(
                out,
                "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>15} {:>15} {:>11} {:>21}",
                key.0,
                key.1,
                key.2.as_deref().unwrap_or("-"),
                key.3,
                budget,
                stat(|r| r.success_after, 3),
                stat(|r| r.distinct_per_1k, 2),
                num(tps, 1),
                reach
            );
        }
    }
    out
}
