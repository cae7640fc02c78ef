//! End-to-end tests of `arbor sweep`, `arbor rollout` and `arbor inspect` on tiny configs.

mod common;
use common::{arbor, assert_one_line_error, ok, scratch, tiny_config};

use std::path::Path;
use std::time::SystemTime;

use arrow::array::{Array, StringArray, UInt32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// (sampler, budget) of every row of a summary.parquet.
fn summary_rows(path: &Path) -> Vec<(String, u32)> {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for column in [
            "env",
            "model",
            "sampler",
            "branch",
            "estimator",
            "budget",
            "seed",
            "success_before",
            "success_after",
            "generated_tokens",
            "tokens_per_success",
            "distinct_per_1k",
            "cache_read_share",
            "truncated",
            "wall_s",
            "budget_success",
            "budget_tokens_per_solved",
            "budget_tokens",
            "run_dir",
        ] {
            assert!(batch.column_by_name(column).is_some(), "column {column}");
        }
        let sampler = batch.column_by_name("sampler").unwrap();
        let sampler = sampler.as_any().downcast_ref::<StringArray>().unwrap();
        let budget = batch.column_by_name("budget").unwrap();
        let budget = budget.as_any().downcast_ref::<UInt32Array>().unwrap();
        for i in 0..batch.num_rows() {
            rows.push((sampler.value(i).to_string(), budget.value(i)));
        }
    }
    rows
}

fn model_bytes(run: &Path) -> Vec<u8> {
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join("latest")).unwrap();
    std::fs::read(root.join(latest.trim()).join("model.safetensors")).unwrap()
}

/// A sweep trains its SFT checkpoint once, writes the table and plots, reuses finished runs;
/// `arbor rollout` exports files that pass the DESIGN §9 checks; `arbor inspect` draws a tree.
#[test]
fn sweep_rollout_inspect() {
    let dir = scratch("flow");
    let cfg = tiny_config(&dir, 1);
    let sweep = dir.join("sweep");
    let (cfg_s, sweep_s) = (cfg.to_str().unwrap(), sweep.to_str().unwrap());
    let grid = [
        "sweep",
        "--config",
        cfg_s,
        "--out",
        sweep_s,
        "--budgets",
        "64,96",
        "--samplers",
        "chain,tree",
        "--seeds",
        "0",
        "--steps",
        "1",
    ];
    let (stdout, stderr) = ok(&arbor(&grid));
    assert!(
        stderr.contains("training the shared SFT checkpoint"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("(trained)").count(), 4, "{stderr}");
    assert!(stdout.starts_with("model"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("tiny ")).count(), 4);
    let mut rows = summary_rows(&sweep.join("summary.parquet"));
    rows.sort();
    let want: Vec<(String, u32)> = [("chain", 64), ("chain", 96), ("tree", 64), ("tree", 96)]
        .iter()
        .map(|&(s, b)| (s.to_string(), b))
        .collect();
    assert_eq!(rows, want);
    let csv = std::fs::read_to_string(sweep.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    for stem in ["success_vs_budget", "distinct_per_1k_vs_budget"] {
        let svg = std::fs::read_to_string(sweep.join("plots").join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("chain") && svg.contains("tree"), "{stem}");
        let png = std::fs::read(sweep.join("plots").join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    // A run whose seed is the SFT seed equals `arbor train` with the same settings.
    let (_, _) = ok(&arbor(&[
        "train",
        "--config",
        cfg_s,
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "plain",
        "--sampler",
        "chain",
        "--budget",
        "64",
        "--quiet",
    ]));
    let swept = sweep.join("runs").join("tiny_chain_tree-grpo_b64_s0");
    assert_eq!(model_bytes(&dir.join("plain")), model_bytes(&swept));

    // A new grid point reuses the SFT checkpoint (not retrained: same files, same mtimes).
    let sft_model = {
        let root = sweep.join("sft-tiny").join("checkpoints");
        let latest = std::fs::read_to_string(root.join("latest")).unwrap();
        root.join(latest.trim()).join("model.safetensors")
    };
    let sft_time = mtime(&sft_model);
    let (_, stderr) = ok(&arbor(&[
        "sweep",
        "--config",
        cfg_s,
        "--out",
        sweep_s,
        "--budgets",
        "48",
        "--samplers",
        "chain",
        "--seeds",
        "0",
        "--steps",
        "1",
    ]));
    assert!(stderr.contains("reusing the SFT checkpoint"), "{stderr}");
    assert!(!stderr.contains("training the shared SFT"), "{stderr}");
    assert_eq!(mtime(&sft_model), sft_time);
    assert_eq!(summary_rows(&sweep.join("summary.parquet")).len(), 1);
    // The first grid again: every run is reused.
    let summary_time = mtime(&swept.join("summary.json"));
    let (_, stderr) = ok(&arbor(&grid));
    assert_eq!(stderr.matches("(reused)").count(), 4, "{stderr}");
    assert_eq!(mtime(&swept.join("summary.json")), summary_time);
    assert_eq!(summary_rows(&sweep.join("summary.parquet")).len(), 4);
    // Other settings for an existing run directory: a clear error, nothing changed.
    let mut other = grid.to_vec();
    other.extend(["--episodes", "5"]);
    assert_one_line_error(&arbor(&other), "eval.episodes: found 4, expected 5");

    // Rollout with the swept run's checkpoint.
    let ro = dir.join("ro");
    let (stdout, _) = ok(&arbor(&[
        "rollout",
        "--checkpoint",
        swept.to_str().unwrap(),
        "--out",
        ro.to_str().unwrap(),
        "--sampler",
        "tree",
        "--budget",
        "96",
        "--steps",
        "2",
        "--tasks-per-step",
        "2",
        "--quiet",
    ]));
    assert!(stdout.contains("trajectories in 4 task groups"), "{stdout}");
    let check = datasets::export::check_run_files(&ro).unwrap();
    assert_eq!((check.steps, check.groups), (2, 4));
    assert_eq!(check.metrics_rows, Some(2));
    let trajectories =
        datasets::export::read_trajectories(ro.join("trajectories.parquet")).unwrap();
    assert!(trajectories.iter().all(|t| t.phase == "rollout"
        && t.sampler == "tree"
        && t.estimator == "tree-grpo"
        && t.advantage.is_some() != t.truncated));
    assert_one_line_error(
        &arbor(&[
            "rollout",
            "--checkpoint",
            swept.to_str().unwrap(),
            "--out",
            ro.to_str().unwrap(),
        ]),
        "not empty",
    );

    // Inspect the rollout directory and the swept run.
    for target in [&ro, &swept] {
        let (stdout, _) = ok(&arbor(&["inspect", target.to_str().unwrap()]));
        for needle in [
            "config     multihop (distractors=0 hops=1)",
            "metrics",
            "files      check ok",
            "tree       step",
        ] {
            assert!(stdout.contains(needle), "'{needle}' not in:\n{stdout}");
        }
        let tree: Vec<&str> = stdout
            .lines()
            .skip_while(|l| !l.starts_with("tree"))
            .skip(1)
            .collect();
        assert!(tree[0].starts_with("  prompt \""), "{stdout}");
        assert!(
            tree[1].starts_with("  └─ #") || tree[1].starts_with("  ├─ #"),
            "{stdout}"
        );
        assert!(tree[1].contains(" action \""), "{stdout}");
        assert!(tree.iter().any(|l| l.contains("[leaf, reward")), "{stdout}");
    }
    let (stdout, _) = ok(&arbor(&["inspect", sweep_s]));
    assert!(stdout.starts_with("sweep"), "{stdout}");
    // A corrupt file is a one-line error.
    let nodes = ro.join("nodes.parquet");
    let bytes = std::fs::read(&nodes).unwrap();
    std::fs::write(&nodes, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(&arbor(&["inspect", ro.to_str().unwrap()]), "nodes.parquet");
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = scratch("bad");
    let cfg = tiny_config(&dir, 1);
    let sweep = dir.join("sweep");
    let (cfg_s, sweep_s) = (cfg.to_str().unwrap(), sweep.to_str().unwrap());
    let sweep_with = |extra: &[&str]| {
        let mut args = vec!["sweep", "--config", cfg_s, "--out", sweep_s, "--seeds", "0"];
        args.extend(extra);
        arbor(&args)
    };
    assert_one_line_error(&sweep_with(&["--samplers", "chain,forest"]), "forest");
    assert_one_line_error(&sweep_with(&["--budgets", "64,0"]), "budget");
    assert_one_line_error(&sweep_with(&["--branches", "sideways"]), "sideways");
    assert_one_line_error(&sweep_with(&["--estimators", "ppo"]), "ppo");
    assert_one_line_error(&sweep_with(&["--presets", "huge"]), "huge");
    assert_one_line_error(&sweep_with(&["--models", "tiny=many"]), "SFT_STEPS");
    assert_one_line_error(&sweep_with(&["--models", "tiny,tiny=3"]), "two models");
    assert!(!sweep.exists(), "a rejected sweep creates nothing");

    let missing = dir.join("missing");
    assert_one_line_error(
        &arbor(&["inspect", missing.to_str().unwrap()]),
        "does not exist",
    );
    assert_one_line_error(
        &arbor(&["inspect", dir.to_str().unwrap()]),
        "not a run directory",
    );
    let out = dir.join("out");
    assert_one_line_error(
        &arbor(&[
            "rollout",
            "--checkpoint",
            missing.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        "does not exist",
    );
    assert!(!out.exists());
}

/// With `--eval-every`, every run evaluates during RL: its metrics hold `eval` rows at steps
/// 0, 1, 2 with the RL tokens generated before each, and the sweep writes the learning curves
/// (`curves.csv`, `success_vs_tokens`) and the tokens-to-reach table.
#[test]
fn sweep_learning_curves() {
    let dir = scratch("curves");
    let cfg = tiny_config(&dir, 2);
    let sweep = dir.join("sweep");
    let (cfg_s, sweep_s) = (cfg.to_str().unwrap(), sweep.to_str().unwrap());
    let (stdout, _) = ok(&arbor(&[
        "sweep",
        "--config",
        cfg_s,
        "--out",
        sweep_s,
        "--budgets",
        "64",
        "--samplers",
        "chain,tree",
        "--seeds",
        "0",
        "--eval-every",
        "1",
        "--reach",
        "0.5",
    ]));
    assert!(stdout.contains("reach_ratio"), "{stdout}");
    let run = sweep
        .join("runs")
        .join("tiny_tree-entropy_tree-grpo_b64_s0");
    let metrics = datasets::export::read_metrics(run.join("metrics.parquet")).unwrap();
    let rl_tokens: Vec<u64> = metrics
        .iter()
        .filter(|m| m.phase == "rl")
        .map(|m| m.generated_tokens)
        .collect();
    assert_eq!(rl_tokens.len(), 2);
    let evals: Vec<(u64, u64)> = metrics
        .iter()
        .filter(|m| m.phase == "eval")
        .map(|m| (m.step, m.cumulative_generated_tokens))
        .collect();
    let want = vec![(0, 0), (1, rl_tokens[0]), (2, rl_tokens[0] + rl_tokens[1])];
    assert_eq!(evals, want);
    let curves = std::fs::read_to_string(sweep.join("curves.csv")).unwrap();
    assert_eq!(curves.lines().count(), 1 + 2 * 3, "{curves}");
    let reach = std::fs::read_to_string(sweep.join("reach.csv")).unwrap();
    // Two runs × (chain_final, 0.5).
    assert_eq!(reach.lines().count(), 1 + 2 * 2, "{reach}");
    assert!(
        reach.lines().nth(1).unwrap().contains(",chain_final,"),
        "{reach}"
    );
    let svg = std::fs::read_to_string(sweep.join("plots").join("success_vs_tokens.svg")).unwrap();
    assert!(svg.contains("B=64") && svg.contains("chain final"), "{svg}");
}

/// `--rl-steps 0` measures each model's shared SFT policy at every budget with each sampler
/// (a preset and a Hugging Face directory side by side), trains no runs, and reuses its
/// measurements when rerun.
#[test]
fn test_time_sweep_measures_models_at_each_budget() {
    use rollout::hf::fixture::{TinyModel, tiny_config as tiny_model};
    let dir = scratch("testtime");
    let cfg = tiny_config(&dir, 1);
    let hf = dir.join("tiny-llama");
    TinyModel::new(tiny_model()).write(&hf).unwrap();
    let sweep = dir.join("sweep");
    let models = format!("tiny=2,{}=1", hf.display());
    let args = [
        "sweep",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        sweep.to_str().unwrap(),
        "--models",
        &models,
        "--budgets",
        "48,96",
        "--samplers",
        "chain,tree",
        "--seeds",
        "0",
        "--rl-steps",
        "0",
    ];
    let (stdout, stderr) = ok(&arbor(&args));
    assert_eq!(stderr.matches("(test-time)").count(), 8, "{stderr}");
    assert!(stdout.starts_with("model"), "{stdout}");
    // Each model has its own SFT run with its own step count; no RL run directories.
    for (label, steps) in [("tiny", 2), ("tiny-llama", 1)] {
        let sft = sweep.join(format!("sft-{label}"));
        let state = trainer::checkpoint::load(
            &trainer::checkpoint::latest(&sft.join("checkpoints")).unwrap(),
        )
        .unwrap()
        .state;
        assert_eq!(state.sft_steps, steps, "{label}");
    }
    let runs = sweep.join("runs");
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0);
    let csv = std::fs::read_to_string(sweep.join("summary.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 8);
    let mut labels: Vec<&str> = rows.iter().map(|r| r[col("model")]).collect();
    labels.dedup();
    assert_eq!(labels, ["tiny", "tiny-llama"]);
    for r in &rows {
        let budget: u64 = r[col("budget")].parse().unwrap();
        let tokens: u64 = r[col("budget_tokens")].parse().unwrap();
        let success: f64 = r[col("budget_success")].parse().unwrap();
        // 4 held-out tasks, each under its budget; no RL tokens.
        assert!(tokens > 0 && tokens <= 4 * budget, "{r:?}");
        assert!((0.0..=1.0).contains(&success), "{r:?}");
        assert_eq!(r[col("generated_tokens")], "0");
    }
    for stem in ["budget_success_vs_budget", "tokens_per_solved_vs_budget"] {
        let svg = std::fs::read_to_string(sweep.join("plots").join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("tiny-llama"), "{stem}");
    }
    assert!(!sweep.join("plots").join("success_vs_budget.svg").exists());
    // A rerun measures nothing again.
    let kept = mtime(
        &sweep
            .join("budget")
            .join("tiny_tree-entropy_tree-grpo_b96_s0.json"),
    );
    let (_, again) = ok(&arbor(&args));
    assert!(again.contains("reusing the SFT checkpoint"), "{again}");
    assert_eq!(
        mtime(
            &sweep
                .join("budget")
                .join("tiny_tree-entropy_tree-grpo_b96_s0.json")
        ),
        kept
    );
    assert_eq!(
        std::fs::read_to_string(sweep.join("summary.csv")).unwrap(),
        csv
    );
}
