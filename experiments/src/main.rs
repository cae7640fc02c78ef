//! `arbor`: train token-level agent policies with shared-prefix tree rollouts. The commands
//! live in the `experiments` library; this parses the command line and prints errors.
//!
//! Errors: every command returns `anyhow::Result`; `main` prints the error chain on one line and
//! exits with status 1; a usage error (clap's) is also one line, with status 2. Nothing panics
//! on bad input.

use clap::Parser;
use clap::error::ErrorKind;
use experiments::{alloc, cli, dispatch};

fn main() {
    alloc::keep_freed_memory();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors on one line too (status 2); help and version print as clap writes them.
        Err(err)
            if err.use_stderr()
                && err.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            let text = err.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", parts.join(" "));
            std::process::exit(2);
        }
        Err(err) => err.exit(),
    };
    if let Err(err) = dispatch(cli) {
        // One line: the error and its causes, outermost first.
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
