//! Workspace-level integration tests live in the `[[test]]` targets of this crate.
