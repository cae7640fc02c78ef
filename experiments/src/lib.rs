//! arbor's experiments: the training [`run::Run`] as a library, and the `arbor` command built
//! on it (its `main.rs` only parses flags and calls [`dispatch`]).
//!
//! # Map
//! - [`cli`] — the clap command line (one subcommand per module below).
//! - [`envs_cmd`] — `arbor envs`: list environments and show expert episodes.
//! - [`config`] — the TOML run configuration and its defaults.
//! - [`eval_cmd`] — `arbor eval`: held-out success of a checkpoint.
//! - [`run`] — [`run::Run`]: a training run in its directory (create/resume, SFT, evaluate, RL
//!   steps, finish), its files and its checkpoints.
//! - [`serve`] — RL rollouts on an inference server that arbor restarts on each new policy
//!   (`[rollout] server`, `server_cmd`).
//! - [`evaluate`] — held-out evaluation with Wilson intervals.
//! - [`train`] — `arbor train`: resolves the config and drives a [`run::Run`].
//! - [`bench`] — `arbor bench`: engine and sampler benchmarks (ratios measured in one run).
//! - [`sweep`] — `arbor sweep`: a grid of runs from a shared SFT checkpoint, summary table,
//!   `summary.parquet` and plots ([`plots`] draws them).
//! - [`rollout_cmd`] — `arbor rollout`: sample with a checkpoint and export, no training.
//! - [`inspect`] — `arbor inspect`: summarise a run directory and draw one rollout tree.
//! - [`export_cmd`] — `arbor export`: a checkpoint as a Hugging Face model directory.
//! - [`report`] — `arbor report`: one self-contained HTML page of a run or a sweep.
//! - [`preflight`] — checks of a task set against a command's needs, before any work.
//!
//! Errors: every command returns `anyhow::Result`; `main` prints the error chain on one line and
//! exits with status 1 (2 for usage errors, from clap). Nothing panics on bad input.

pub mod alloc;
pub mod bench;
pub mod cli;
pub mod config;
pub mod envs_cmd;
pub mod eval_cmd;
pub mod evaluate;
pub mod export_cmd;
pub mod inspect;
pub mod plots;
pub mod preflight;
pub mod report;
pub mod rollout_cmd;
pub mod run;
pub mod serve;
pub mod sweep;
pub mod train;

/// Runs one parsed `arbor` command.
pub fn dispatch(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Envs(args) => envs_cmd::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::Train(args) => train::run(args),
        cli::Command::Eval(args) => eval_cmd::run(args),
        cli::Command::Sweep(args) => sweep::run(args),
        cli::Command::Rollout(args) => rollout_cmd::run(args),
        cli::Command::Inspect(args) => inspect::run(args),
        cli::Command::Export(args) => export_cmd::run(args),
        cli::Command::Report(args) => report::run(args),
    }
}
