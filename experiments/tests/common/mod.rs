//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../rollout/tests/common/scratch.rs"]
mod scratch_dir;
pub use scratch_dir::scratch;

/// Runs the `arbor` binary with `args`.
pub fn arbor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .output()
        .expect("the arbor binary runs")
}

/// Asserts success and returns (stdout, stderr).
pub fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// Writes a config small enough for a test (a few SFT steps, `rl_steps` RL steps on 1-hop
/// multihop) into `dir` and returns its path.
pub fn tiny_config(dir: &Path, rl_steps: usize) -> PathBuf {
    let path = dir.join("tiny.toml");
    let text = format!(
        r#"
[env]
name = "multihop"
knobs = {{ hops = "1" }}
[sft]
steps = 3
batch = 4
demos = 16
[rl]
steps = {rl_steps}
tasks_per_step = 2
checkpoint_every = 1
[sampler]
budget = 96
max_action_tokens = 24
[eval]
episodes = 4
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts a failed run whose stderr is exactly one `error: ...` line containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
