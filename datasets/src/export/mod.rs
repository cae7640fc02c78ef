//! Parquet export and import of a run's rollouts and metrics (DESIGN §9).
//!
//! # Map
//! - [`RolloutWriter`] — streams `trajectories.parquet` (one row per leaf trajectory) and
//!   `nodes.parquet` (one row per tree node), one row group per step, from
//!   [`TaskRollout`](rollout::tree::TaskRollout)s and their
//!   [`AdvantageOutput`](rollout::advantage::AdvantageOutput)s; [`StepInfo`] carries the
//!   per-step columns, [`step_rows`] builds the rows without writing them.
//! - [`MetricsWriter`] — `metrics.parquet` + `metrics.csv`, one [`MetricsRow`] per step and
//!   phase ([`MetricsRow::from_sampler`] fills the sampling columns from
//!   [`SamplerStats`](rollout::sampler::SamplerStats)).
//! - [`read_trajectories`], [`read_nodes`], [`read_metrics`] — the files back as plain rows
//!   ([`TrajectoryRow`], [`NodeRow`], [`MetricsRow`]).
//! - [`check_run_files`] — the DESIGN §9 invariants over a run directory (budget, parent ids,
//!   transcripts, counts), returning a [`RunFileSummary`].
//! - [`trajectories_schema`], [`nodes_schema`], [`metrics_schema`] — the Arrow schemas, column
//!   for column as DESIGN §9 lists them: `u32` columns are `UInt32`, `task_id` and `step`
//!   `UInt64`, `f32` columns `Float32`, lists `List<UInt32>`/`List<Float32>` (non-null items),
//!   strings `Utf8`, flags `Boolean`. Nullable are only `trajectories.advantage` (node-level
//!   estimators, or no advantages), `nodes.parent_id` (top nodes), `nodes.logprobs` and
//!   `nodes.entropies` (observations) and `nodes.advantage` (no advantages). Metrics columns are
//!   `UInt64` for `step` and counters, `Utf8` for `phase`, `Float64` otherwise.
//!
//! All files are zstd-compressed, carry no timestamps or random ids (the `run_id` is the
//! caller's), and are therefore byte-identical for identical input. They are readable by
//! pyarrow, polars and DuckDB.
//!
//! # Files appear only complete
//! A Parquet footer is written when a file is closed, yet the rollout files must be streamed
//! while training (rows are not kept until the end) and be complete, readable files at their
//! final paths after every step, and after a SIGKILL at any moment. Each of the two rollout
//! files works as follows.
//!
//! - One Arrow writer encodes the file as a single byte stream (`PAR1`, row group of step 1,
//!   row group of step 2, …). It writes into memory that keeps only the bytes produced since the
//!   previous step, so memory holds about one step's encoded rows.
//! - Two inodes take turns holding the file: the *published* one at the final path
//!   (`trajectories.parquet`), and a *shadow* at the temp path (`.trajectories.parquet.tmp`)
//!   holding the file as it was one step earlier.
//! - After each step the shadow is brought up to date **in place**: it gets the previous step's
//!   row group (copied from the published file), the new one, and a fresh footer listing every
//!   row group so far; then it is fsynced. Both inodes hold byte-identical prefixes of the same
//!   stream, so the offsets in the footer are right in either.
//! - A hard link keeps the published inode alive as `.trajectories.parquet.prev`, one `rename`
//!   moves the shadow over the final path (atomic), and the old published inode becomes the
//!   next shadow; the directory is fsynced.
//!
//! So a file at a final path is never written in place: a crash at any moment leaves it holding
//! the last published step, complete and readable. `nodes.parquet` is published before
//! `trajectories.parquet`, so a crash between the two leaves `nodes` one step ahead, never
//! behind ([`check_run_files`] reports that step as [`RunFileSummary::partial_step`]).
//! [`RolloutWriter::finish`] ends the stream with the writer's own footer and page indexes and
//! removes the temp files; dropping the writer instead leaves the last published files (also
//! complete) and removes the temp files.
//!
//! ## Cost
//! Per step each file writes the last two steps' row groups plus a footer that lists every row
//! group so far (about 1.4 KiB per step per file with these schemas): O(step) + O(steps so far)
//! small bytes, never the whole file. Rewriting a complete copy every step would cost O(file)
//! per step, O(steps²) per run. Measured with `cargo run --release -p datasets --example
//! export_cost -- STEPS` (100 trajectories × 300 tokens per step in 10 groups of 2 trees ×
//! 5 leaves, 340 nodes; ext4, two shared cores, times vary with load):
//!
//! | steps | files at the end | rolling (this scheme): written, time | rewrite every step: written, time | plain writer, no completeness |
//! |---|---|---|---|---|
//! | 50 | 9.0 MiB | 21 MiB, 0.3–0.8 s (6–22 ms per step) | 231 MiB, 3.8–5.3 s (143–183 ms for the last step) | 0.16 s |
//! | 200 | 35.9 MiB | 124 MiB, 1.5 s (9 ms for the last step) | 3.6 GiB, 57 s (565 ms for the last step) | 0.62 s |
//!
//! Most of the rolling time is the fsyncs. The footer term grows linearly, so a 1,000-step run
//! of this size writes about 1.4 GiB of footers in all (~1.4 MiB per file and step at the end)
//! against ~180 MiB of files: still small next to a training step.
//! [`ExportSummary::bytes_written`] reports the bytes a run actually wrote.
//!
//! ## Limits
//! - Unix semantics are assumed (rename over an existing file; open handles keep inodes).
//!   Where hard links fail, the next shadow is a fresh file filled by copying the published one:
//!   still correct, but O(file) per step.
//! - The shadow is an inode that was published one step earlier. A reader that opened the file
//!   more than one step ago and reads its footer only now may see the new bytes and fail; open
//!   the file again. Readers that open, read and close within a step are unaffected.
//! - One writer per run directory.
//!
//! # Example
//! ```
//! use datasets::export::{RolloutWriter, StepInfo, check_run_files, read_trajectories};
//! use envs::Outcome;
//! use rollout::advantage::{Estimator, estimate};
//! use rollout::tree::{LeafInfo, TaskRollout};
//!
//! let mut group = TaskRollout::new(7, "Q: ", vec![0]);
//! let t = group.new_tree();
//! let a = group.add_action(None, t, vec![1, 2], "search[x]", vec![-0.1; 2], vec![0.5; 2])?;
//! let o = group.add_observation(a, vec![3], " x is 4. ")?;
//! for (answer, reward, outcome) in [("answer[4]", 1.0, Outcome::Solved), ("answer[5]", 0.0, Outcome::Failed)] {
//!     let b = group.add_action(Some(o), t, vec![4], answer, vec![-0.3], vec![0.1])?;
//!     group.set_leaf(b, LeafInfo::finished(reward, outcome))?;
//! }
//! let adv = estimate(Estimator::Grpo, std::slice::from_ref(&group))?;
//!
//! let dir = std::env::temp_dir().join(format!("arbor-export-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut writer = RolloutWriter::create(&dir, "demo")?;
//! let info = StepInfo { step: 0, phase: "rl", env: "multihop", sampler: "tree", budget: 64, estimator: "grpo" };
//! writer.write_step(&info, &[(&group, Some(&adv[0]))])?;
//! // Complete and readable already, before `finish`:
//! let rows = read_trajectories(dir.join("trajectories.parquet"))?;
//! assert_eq!(rows[0].text, "Q: search[x] x is 4. answer[4]");
//! writer.finish()?;
//! assert_eq!(check_run_files(&dir)?.trajectories, 2);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod check;
mod metrics;
mod read;
mod rollouts;
mod rows;
mod snapshot;
pub mod tensorboard;
#[cfg(test)]
mod tests;

use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

pub use check::{RunFileSummary, check_run_files};
pub use metrics::{
    METRICS_CSV_FILE, METRICS_FILE, MetricsRow, MetricsWriter, metrics_csv, metrics_events,
    metrics_schema, read_metrics,
};
pub use read::{read_nodes, read_trajectories};
pub use rollouts::{
    ExportSummary, NODES_FILE, RolloutWriter, StepInfo, TRAJECTORIES_FILE, step_rows,
};
pub use rows::{
    NodeRow, TrajectoryRow, nodes_batch, nodes_schema, trajectories_batch, trajectories_schema,
};

/// The Parquet settings of every run file: zstd level 3, otherwise the parquet crate's defaults
/// (dictionary encoding, page statistics truncated to 64 bytes, at most 1,048,576 rows per row
/// group, which only a step larger than that splits). `created_by` is the crate's fixed
/// version string, so files carry no time or host.
pub fn writer_properties() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()));
    for column in NO_STATISTICS {
        b = b.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    b.build()
}

/// Columns whose min/max statistics no query uses (long texts, token and float lists, the run
/// id): without them every row group's footer entry is smaller, and the footer is rewritten
/// after every step.
const NO_STATISTICS: [&str; 7] = [
    "prompt",
    "text",
    "node_path.list.element",
    "tokens.list.element",
    "logprobs.list.element",
    "entropies.list.element",
    "run_id",
];
