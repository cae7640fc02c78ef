//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

use envs::EnvError;

/// Where in a task file a problem sits.
///
/// JSONL positions are 1-based line numbers (as an editor shows them, blank lines counted);
/// Parquet positions are 0-based row indices over the whole file (as pyarrow, polars and DuckDB
/// index rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line of a JSONL file.
    Line(usize),
    /// A 0-based row index of a Parquet file.
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(line) => write!(f, "line {line}"),
            Location::Row(row) => write!(f, "row {row} (0-based)"),
        }
    }
}

/// Everything that can go wrong in this crate. Each message is one line that names the file and,
/// where it applies, the line/row and the field, so a user can fix the input.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The task file does not exist.
    #[error("task file {} not found", .path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The task file exists but cannot be read (permissions, a directory, an I/O error).
    #[error("cannot read task file {}: {reason}", .path.display())]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The file extension does not name a format arbor reads.
    #[error(
        "task file {}: unknown format '{extension}' (expected .jsonl, .json or .parquet)",
        .path.display()
    )]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
        /// The extension found (empty when there is none).
        extension: String,
    },
    /// The file holds no tasks (no non-blank JSONL line, or a Parquet file with zero rows).
    #[error("task file {} has no tasks", .path.display())]
    Empty {
        /// The path given.
        path: PathBuf,
    },
    /// A JSONL line is not valid UTF-8.
    #[error("task file {}: {at}: not valid UTF-8", .path.display())]
    BadUtf8 {
        /// The path given.
        path: PathBuf,
        /// The line.
        at: Location,
    },
    /// A JSONL line is not valid JSON.
    #[error("task file {}: {at}: invalid JSON: {reason}", .path.display())]
    BadJson {
        /// The path given.
        path: PathBuf,
        /// The line.
        at: Location,
        /// The JSON parser's reason.
        reason: String,
    },
    /// A JSONL line holds valid JSON that is not an object.
    #[error(
        "task file {}: {at}: expected a JSON object with \"prompt\" and \"answer\", found {found}",
        .path.display()
    )]
    NotAnObject {
        /// The path given.
        path: PathBuf,
        /// The line.
        at: Location,
        /// The JSON type found (`array`, `string`, ...).
        found: String,
    },
    /// A JSONL object lacks a required field.
    #[error("task file {}: {at}: missing field \"{field}\"", .path.display())]
    MissingField {
        /// The path given.
        path: PathBuf,
        /// The line.
        at: Location,
        /// The field (`prompt` or `answer`).
        field: String,
    },
    /// A Parquet file lacks a required column.
    #[error(
        "task file {}: missing column \"{column}\" (columns: {found})",
        .path.display()
    )]
    MissingColumn {
        /// The path given.
        path: PathBuf,
        /// The column (`prompt` or `answer`).
        column: String,
        /// The columns the file has, comma separated.
        found: String,
    },
    /// A JSONL field has a type that cannot be read as text.
    #[error(
        "task file {}: {at}: field \"{field}\" must be {expected}, found {found}",
        .path.display()
    )]
    WrongType {
        /// The path given.
        path: PathBuf,
        /// The line.
        at: Location,
        /// The field.
        field: String,
        /// What the field accepts.
        expected: String,
        /// The JSON type found.
        found: String,
    },
    /// A Parquet column has a type that cannot be read as text.
    #[error(
        "task file {}: column \"{column}\" must be {expected}, found type {found}",
        .path.display()
    )]
    WrongColumnType {
        /// The path given.
        path: PathBuf,
        /// The column.
        column: String,
        /// What the column accepts.
        expected: String,
        /// The Arrow type found.
        found: String,
    },
    /// A required value is null (JSON `null`, or a null cell in Parquet).
    #[error("task file {}: {at}: \"{field}\" is null", .path.display())]
    NullValue {
        /// The path given.
        path: PathBuf,
        /// The line or row.
        at: Location,
        /// The field or column.
        field: String,
    },
    /// A prompt or answer is empty (or only whitespace): no task to pose or to check.
    #[error("task file {}: {at}: \"{field}\" is empty", .path.display())]
    EmptyValue {
        /// The path given.
        path: PathBuf,
        /// The line or row.
        at: Location,
        /// The field or column.
        field: String,
    },
    /// The file is not a Parquet file, or it is corrupt.
    #[error("task file {}: not a readable Parquet file: {reason}", .path.display())]
    BadParquet {
        /// The path given.
        path: PathBuf,
        /// The Parquet reader's reason.
        reason: String,
    },
    /// An eval fraction outside `(0, 1)`.
    #[error("eval fraction must be in (0, 1), got {fraction}")]
    BadEvalFraction {
        /// The fraction given.
        fraction: f64,
    },
    /// Writing a run file (`trajectories.parquet`, `nodes.parquet`, `metrics.parquet`,
    /// `metrics.csv`) failed: an I/O error (disk full, permissions, a missing run directory) or
    /// a Parquet encoding error. The file at the final path still holds every step published
    /// before the failure; the writer that failed refuses further writes.
    #[error("cannot write run file {}: {reason}", .path.display())]
    WriteRunFile {
        /// The run file (its final path).
        path: PathBuf,
        /// The operating system's or the Parquet writer's reason.
        reason: String,
    },
    /// A run file is missing, unreadable, not Parquet, or its columns are not the DESIGN §9
    /// schema.
    #[error("run file {}: {reason}", .path.display())]
    BadRunFile {
        /// The run file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A rollout handed to the exporter cannot be written: the tree fails its validation, the
    /// advantages do not belong to it, or its `(step, task_id)` was already written.
    #[error("step {step}, task {task_id}: cannot export rollout: {reason}")]
    BadRollout {
        /// The training step.
        step: u64,
        /// The task group.
        task_id: u64,
        /// What is wrong.
        reason: String,
    },
    /// Exported run files break a DESIGN §9 invariant (budget, parent ids, transcripts, counts).
    #[error("run file {}: step {step}, task {task_id}: {reason}", .path.display())]
    Invariant {
        /// The file holding the offending row.
        path: PathBuf,
        /// The training step.
        step: u64,
        /// The task group.
        task_id: u64,
        /// The invariant broken, with the values found.
        reason: String,
    },
    /// The environment rejected the tasks (for example an empty `qa-file` task set).
    #[error("{source}")]
    Env {
        /// The environment's error.
        #[from]
        source: EnvError,
    },
}
