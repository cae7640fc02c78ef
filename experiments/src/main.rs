//! `arbor`: train token-level agent policies with shared-prefix tree rollouts.
//!
//! # Map
//! - [`cli`] — the clap command line (one subcommand per module below).
//! - [`envs_cmd`] — `arbor envs`: list environments and show expert episodes.
//! - [`config`] — the TOML run configuration and its defaults.
//! - [`eval_cmd`] — `arbor eval`: held-out success of a checkpoint.
//! - [`train`] — `arbor train`: SFT, evaluation, RL, run directory.
//! - [`bench`] — `arbor bench`: engine and sampler benchmarks (ratios measured in one run).
//!
//! Errors: every command returns `anyhow::Result`; `main` prints the error chain on one line and
//! exits with status 1 (2 for usage errors, from clap). Nothing panics on bad input.

mod bench;
mod cli;
mod config;
mod envs_cmd;
mod eval_cmd;
mod train;

use clap::Parser;

fn main() {
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
        cli::Command::Sweep(_) | cli::Command::Rollout(_) | cli::Command::Inspect(_) => {
            anyhow::bail!("this command is not built yet; see `arbor --help` for what is")
        }
    }
}
