//! `arbor`: train token-level agent policies with shared-prefix tree rollouts. The commands
//! live in the `experiments` library; this parses the command line and prints errors.
//!
//! Errors: every command returns `anyhow::Result`; `main` prints the error chain on one line and
//! exits with status 1 (2 for usage errors, from clap). Nothing panics on bad input.

use clap::Parser;
use experiments::{alloc, cli, dispatch};

fn main() {
    alloc::keep_freed_memory();
    let cli = cli::Cli::parse();
    if let Err(err) = dispatch(cli) {
        // One line: the error and its causes, outermost first.
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
