//! Crate layering (DESIGN §1): `envs` and `rollout` never depend on burn, directly or through
//! any dependency. Checked on the lockfile's resolved graph (includes dev-dependencies, so it is
//! stricter than `cargo tree`).

use std::collections::{BTreeMap, BTreeSet};

/// Package name (with version when the lockfile disambiguates) -> its dependency entries.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let text = std::fs::read_to_string(path).expect("Cargo.lock at the workspace root");
    let mut graph = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let mut name = String::new();
        let mut version = String::new();
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("name = ") {
                name = v.trim_matches('"').to_string();
            } else if let Some(v) = line.strip_prefix("version = ") {
                version = v.trim_matches('"').to_string();
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                deps.push(line.trim_end_matches(',').trim_matches('"').to_string());
            }
        }
        graph.insert(format!("{name} {version}"), deps.clone());
        graph.entry(name).or_insert(deps);
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(p) = stack.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        for d in graph.get(&p).into_iter().flatten() {
            stack.push(d.clone());
        }
    }
    seen
}

#[test]
fn envs_and_rollout_do_not_depend_on_burn_or_higher_crates() {
    let graph = lock_graph();
    for root in ["envs", "rollout"] {
        let deps = closure(&graph, root);
        assert!(deps.len() > 3, "{root} resolved in the lockfile");
        for bad in [
            "burn",
            "trainer",
            "datasets",
            "experiments",
            "arrow",
            "parquet",
        ] {
            let hit: Vec<_> = deps.iter().filter(|d| d.starts_with(bad)).collect();
            assert!(hit.is_empty(), "{root} depends on {hit:?}");
        }
    }
    // The check can fail: the trainer does depend on burn.
    assert!(
        closure(&graph, "trainer")
            .iter()
            .any(|d| d.starts_with("burn"))
    );
}
