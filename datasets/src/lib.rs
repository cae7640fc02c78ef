//! Data for arbor: which tasks a run trains and evaluates on, user task files, and expert
//! demonstrations for the SFT warm start (DESIGN §9).
//!
//! # Map
//! - [`tasks`] — [`TaskSet`]: one [`Split`] (train or eval) of an environment family. Seeded
//!   training batches ([`TaskSet::sample`]) and fixed, seed-independent eval tasks
//!   ([`TaskSet::eval_ids`]). Generated environments split ids by range (train `[0, 2^32)`, eval
//!   `[2^32, 2^33)`); `qa-file` splits row indices by a hash of the index.
//! - [`taskfile`] — [`load_qa_file`] reads question/answer pairs from JSONL or Parquet, and
//!   [`qa_spec_from_file`] turns a file into a `qa-file` [`envs::EnvSpec`]. Malformed files give a
//!   [`DatasetError`] whose one-line message names the file, the line or row, and the field.
//! - [`demos`] — [`demonstrations`] runs each environment's expert (optionally with one
//!   recoverable mistake) into [`Demonstration`]s, and [`Demonstration::encode`] lays one out as
//!   tokens with the SFT loss mask (action tokens and their `<eos>` only).
//! - [`export`] — Parquet export/import of a run's rollouts and metrics:
//!   [`export::RolloutWriter`] streams `trajectories.parquet` and `nodes.parquet` (one row group
//!   per step, complete at their final paths after every step and after a crash),
//!   [`export::MetricsWriter`] writes `metrics.parquet` + `metrics.csv`, `read_*` give the rows
//!   back, and [`export::check_run_files`] checks the DESIGN §9 invariants of a run directory.
//! - [`atomic`] — [`atomic::write_atomic`]: temp file, fsync, rename (every file arbor writes).
//! - [`DatasetError`] — the crate's error type; [`Location`] is a line (JSONL) or row (Parquet).
//!
//! # Example
//! ```
//! use datasets::{DemoOptions, Split, TaskSet, demonstrations};
//! use envs::EnvSpec;
//! use rollout::tokenizer::ByteTokenizer;
//!
//! let spec = EnvSpec::from_name("multihop", &[("hops", "2")]).unwrap();
//! let train = TaskSet::new(spec.clone(), Split::Train);
//! let batch = train.sample(0, 4, 42); // step 0, 4 tasks, seed 42
//! let held_out = train.eval_ids(2); // the same for every seed
//! assert!(batch.iter().all(|id| !held_out.contains(id)));
//!
//! let demos = demonstrations(&spec, &batch, &DemoOptions::default());
//! let encoded = demos[0].encode(&ByteTokenizer);
//! assert_eq!(encoded.tokens.len(), encoded.loss_mask.len());
//! assert!(!encoded.loss_mask[0]); // <bos> is never a target
//! ```

pub mod atomic;
pub mod demos;
mod error;
pub mod export;
pub mod taskfile;
pub mod tasks;
#[cfg(test)]
mod testutil;

pub use demos::{DemoOptions, Demonstration, Turn, demonstrations};
pub use error::{DatasetError, Location};
pub use rollout::tokenizer::Encoded;
pub use taskfile::{load_qa_file, qa_spec_from_file};
pub use tasks::{Split, TaskSet};
