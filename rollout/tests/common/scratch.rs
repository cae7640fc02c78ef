//! A test's scratch directory that removes itself. Included with `#[path]` by the test files of
//! `rollout` and `experiments`.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};

/// A fresh, empty directory unique to this test process and `tag`, under cargo's scratch
/// folder for integration tests (`target/tmp`, on the build's disk rather than a possibly small
/// `/tmp`). It is removed when the guard drops, after a failure as well: runs of the real model
/// write gigabytes, and a test suite must not fill the disk it runs on.
pub fn scratch(tag: &str) -> Scratch {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("arbor-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A test's scratch directory, deleted on drop (see [`scratch`]).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
