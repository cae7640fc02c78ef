//! `arbor report`: the page of a run and of a sweep is one file that needs no network, and its
//! data are the run's own numbers and trees.

mod common;
use common::{arbor, assert_one_line_error, ok, scratch, tiny_config};

use std::path::Path;

/// The page's embedded data.
fn page_data(html: &str) -> serde_json::Value {
    let start = html
        .find(r#"<script type="application/json" id="arbor-data">"#)
        .expect("the data element");
    let json = &html[start..];
    let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
    serde_json::from_str(json).expect("the embedded data is JSON")
}

/// Asserts a whole HTML document that fetches nothing: no URL at all besides the SVG namespace
/// name (an identifier, never fetched), and every script inline.
fn assert_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    let without_ns = html.replace("http://www.w3.org/2000/svg", "");
    for needle in ["http://", "https://", "//cdn", "src=", "@import", "url("] {
        assert!(!without_ns.contains(needle), "found {needle}");
    }
    assert_eq!(
        html.matches("<script").count(),
        html.matches("</script>").count()
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn run_report_holds_every_metrics_row_and_the_exported_trees() {
    let dir = scratch("report");
    let cfg = tiny_config(&dir, 2);
    ok(&arbor(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "run",
        "--set",
        "eval.every=1",
        "--quiet",
    ]));
    let run = dir.join("run");
    let (stdout, _) = ok(&arbor(&["report", run.to_str().unwrap()]));
    assert!(stdout.contains("report.html"), "{stdout}");
    let html = read(&run.join("report.html"));
    assert_self_contained(&html);
    let data = page_data(&html);
    assert_eq!(data["kind"], "run");
    assert_eq!(data["run_id"], "run");
    assert_eq!(data["arbor_version"], env!("CARGO_PKG_VERSION"));
    assert!(html.contains(&format!("written by arbor {}", env!("CARGO_PKG_VERSION"))));
    // Every RL and evaluation row of metrics.parquet, with its numbers.
    let metrics = datasets::export::read_metrics(run.join("metrics.parquet")).unwrap();
    let want: Vec<_> = metrics.iter().filter(|m| m.phase != "sft").collect();
    let got = data["metrics"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(want.iter().filter(|m| m.phase == "eval").count() >= 3);
    for (g, m) in got.iter().zip(&want) {
        assert_eq!(g["step"], m.step);
        assert_eq!(g["phase"], m.phase.as_str());
        assert_eq!(g["generated_tokens"], m.generated_tokens);
        assert_eq!(g["success_rate"].as_f64().unwrap(), m.success_rate);
        if m.phase == "eval" {
            let ci = g["success_ci"].as_array().unwrap();
            let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
            assert!(lo <= m.success_rate && m.success_rate <= hi && hi > lo);
        }
    }
    // Every exported tree, node for node, with leaf outcomes from trajectories.parquet.
    let nodes = datasets::export::read_nodes(run.join("nodes.parquet")).unwrap();
    let trees = data["trees"].as_array().unwrap();
    let page_nodes: usize = trees
        .iter()
        .map(|t| t["nodes"].as_array().unwrap().len())
        .sum();
    assert_eq!(page_nodes, nodes.len());
    let trajectories =
        datasets::export::read_trajectories(run.join("trajectories.parquet")).unwrap();
    let leaves: usize = trees
        .iter()
        .flat_map(|t| t["nodes"].as_array().unwrap())
        .filter(|n| !n["leaf"].is_null())
        .count();
    assert_eq!(leaves, trajectories.len());
    let first = &nodes[0];
    let tree = trees
        .iter()
        .find(|t| t["step"] == first.step && t["task_id"] == first.task_id)
        .unwrap();
    let node = &tree["nodes"][0];
    assert_eq!(node["id"], first.node_id);
    assert_eq!(node["tokens"], first.tokens.len());
    assert_eq!(node["text"], first.text.as_str());

    // --max-nodes keeps the newest steps whole and names the others.
    let small = dir.join("small.html");
    let per_step = nodes.iter().filter(|n| n.step == 1).count();
    ok(&arbor(&[
        "report",
        run.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
        "--max-nodes",
        &per_step.to_string(),
    ]));
    let data = page_data(&read(&small));
    let steps: Vec<u64> = data["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["step"].as_u64().unwrap())
        .collect();
    assert!(steps.iter().all(|&s| s == 1), "{steps:?}");
    assert_eq!(data["steps_left_out"], serde_json::json!([0]));

    assert_one_line_error(
        &arbor(&["report", dir.join("nope").to_str().unwrap()]),
        "is not a directory",
    );
    assert_one_line_error(&arbor(&["report", dir.to_str().unwrap()]), "neither a run");
}

#[test]
fn sweep_report_holds_the_table_and_the_plots() {
    let dir = scratch("report-sweep");
    let cfg = tiny_config(&dir, 1);
    let sweep = dir.join("sweep");
    ok(&arbor(&[
        "sweep",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        sweep.to_str().unwrap(),
        "--budgets",
        "48,64",
        "--samplers",
        "chain,tree",
        "--seeds",
        "0",
        "--rl-steps",
        "0",
        "--quiet",
    ]));
    let out = dir.join("sweep.html");
    ok(&arbor(&[
        "report",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let html = read(&out);
    assert_self_contained(&html);
    let data = page_data(&html);
    assert_eq!(data["kind"], "sweep");
    let (header, rows) = (&data["table"][0], &data["table"][1]);
    assert_eq!(header[1], "model");
    assert_eq!(rows.as_array().unwrap().len(), 4);
    let plots = data["plots"].as_array().unwrap();
    assert!(
        plots
            .iter()
            .any(|p| p[0] == "budget_success_vs_budget"
                && p[1].as_str().unwrap().starts_with("<svg"))
    );
}
