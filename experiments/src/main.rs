//! `arbor`: train token-level agent policies with shared-prefix tree rollouts.
//!
//! # Map
//! - [`cli`] — the clap command line (one subcommand per module below).
//! - [`envs_cmd`] — `arbor envs`: list environments and show expert episodes.
//! - [`config`] — the TOML run configuration and its defaults.
//! - [`eval_cmd`] — `arbor eval`: held-out success of a checkpoint.
//! - [`train`] — `arbor train`: SFT, evaluation, RL, run directory.
//! - [`bench`] — `arbor bench`: engine and sampler benchmarks (ratios measured in one run).
//! - [`sweep`] — `arbor sweep`: a grid of runs from a shared SFT checkpoint, summary table,
//!   `summary.parquet` and plots ([`plots`] draws them).
//! - [`rollout_cmd`] — `arbor rollout`: sample with a checkpoint and export, no training.
//! - [`inspect`] — `arbor inspect`: summarise a run directory and draw one rollout tree.
//! - [`preflight`] — checks of a task set against a command's needs, before any work.
//!
//! Errors: every command returns `anyhow::Result`; `main` prints the error chain on one line and
//! exits with status 1 (2 for usage errors, from clap). Nothing panics on bad input.

mod alloc;
mod bench;
mod cli;
mod config;
mod envs_cmd;
mod eval_cmd;
mod inspect;
mod plots;
mod preflight;
mod rollout_cmd;
mod sweep;
mod train;

use clap::Parser;

fn main() {
    alloc::keep_freed_memory();
    let cli = cli::Cli::parse();
    if let Err(err) = run(cli) {
        // One line: the error and its causes, outermost first.
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Envs(args) => envs_cmd::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::Train(args) => train::run(args),
        cli::Command::Eval(args) => eval_cmd::run(args),
        cli::Command::Sweep(args) => sweep::run(args),
        cli::Command::Rollout(args) => rollout_cmd::run(args),
        cli::Command::Inspect(args) => inspect::run(args),
    }
}
