//! End-to-end tests of the `arbor` binary: bad input gives one clear line and a non-zero exit,
//! and a resumed run ends exactly where the uninterrupted run ends.

mod common;
use common::{arbor, assert_one_line_error, ok, scratch, tiny_config};

use std::path::Path;
use std::process::Command;

#[test]
fn bad_input_is_one_clear_line() {
    let dir = scratch("bad");
    let out_dir = dir.to_str().unwrap();
    assert_one_line_error(
        &arbor(&["train", "--env", "nope", "--out", out_dir]),
        "unknown environment 'nope'",
    );
    assert_one_line_error(
        &arbor(&["train", "--budget", "0", "--out", out_dir]),
        "budget",
    );
    // A run name is one directory inside --out: no way out of it.
    for name in ["../escaped", "/tmp/arbor-abs-escape", "a/b"] {
        assert_one_line_error(
            &arbor(&["train", "--name", name, "--out", out_dir]),
            "plain directory name",
        );
    }
    assert!(!dir.parent().unwrap().join("escaped").exists());
    assert!(!Path::new("/tmp/arbor-abs-escape").exists());
    let missing = dir.join("missing.toml");
    assert_one_line_error(
        &arbor(&[
            "train",
            "--config",
            missing.to_str().unwrap(),
            "--out",
            out_dir,
        ]),
        "cannot read config",
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[sft]\nstepz = 3\n").unwrap();
    assert_one_line_error(
        &arbor(&["train", "--config", bad.to_str().unwrap(), "--out", out_dir]),
        "stepz",
    );
    assert_one_line_error(
        &arbor(&["train", "--sampler", "forest", "--out", out_dir]),
        "forest",
    );
    assert_one_line_error(
        &arbor(&["train", "--env", "qa-file", "--out", out_dir]),
        "needs a task file",
    );
    let nowhere = dir.join("no-such-checkpoint");
    assert_one_line_error(
        &arbor(&[
            "train",
            "--init",
            nowhere.to_str().unwrap(),
            "--out",
            out_dir,
        ]),
        "does not exist",
    );
    // Nothing was created for rejected runs.
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn resumed_run_equals_uninterrupted_run_and_corrupt_checkpoint_is_an_error() {
    let dir = scratch("resume");
    let cfg = tiny_config(&dir, 3);
    let (cfg, out_dir) = (cfg.to_str().unwrap(), dir.to_str().unwrap());
    let full = arbor(&[
        "train", "--config", cfg, "--out", out_dir, "--name", "full", "--quiet",
    ]);
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    // Kill the same run after its first RL checkpoint, then resume it from its own
    // config.toml alone (no --config: the run's file is the configuration).
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args([
            "train", "--config", cfg, "--out", out_dir, "--name", "part", "--quiet",
        ])
        .spawn()
        .unwrap();
    let latest = dir.join("part").join("checkpoints").join("latest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        // tiny_config: 3 SFT steps, so step-4 is the first RL checkpoint.
        let tag = std::fs::read_to_string(&latest).unwrap_or_default();
        if tag
            .trim()
            .strip_prefix("step-")
            .and_then(|n| n.parse::<u32>().ok())
            >= Some(4)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !dir.join("part").join("summary.json").exists(),
        "killed before the end"
    );
    let config_before = std::fs::read(dir.join("part").join("config.toml")).unwrap();
    let again = arbor(&[
        "train", "--config", cfg, "--out", out_dir, "--name", "part", "--quiet",
    ]);
    assert_one_line_error(&again, "exists");
    // A resume that would change a setting is refused and changes nothing.
    let conflict = arbor(&[
        "train", "--out", out_dir, "--name", "part", "--resume", "--preset", "small", "--quiet",
    ]);
    assert_one_line_error(&conflict, "model.preset");
    let resumed = arbor(&[
        "train", "--out", out_dir, "--name", "part", "--resume", "--quiet",
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        config_before,
        std::fs::read(dir.join("part").join("config.toml")).unwrap(),
        "a resumed run never rewrites its config.toml"
    );
    let weights = |run: &str| {
        let root = dir.join(run).join("checkpoints");
        let latest = std::fs::read_to_string(root.join("latest")).unwrap();
        std::fs::read(root.join(latest.trim()).join("model.safetensors")).unwrap()
    };
    assert_eq!(
        weights("full"),
        weights("part"),
        "resumed weights equal uninterrupted weights"
    );
    // The exported rollouts and metrics agree too, and pass the DESIGN §9 invariants.
    for run in ["full", "part"] {
        datasets::export::check_run_files(dir.join(run)).unwrap();
    }
    let read = |run: &str| {
        let t = datasets::export::read_trajectories(dir.join(run).join("trajectories.parquet"));
        let n = datasets::export::read_nodes(dir.join(run).join("nodes.parquet"));
        (t.unwrap().len(), n.unwrap().len())
    };
    assert_eq!(read("full"), read("part"));
    let summary = std::fs::read_to_string(dir.join("part").join("summary.json")).unwrap();
    assert!(summary.contains("\"success_after\""));

    // Corrupt the latest checkpoint's weights: resuming is a clear error and changes nothing.
    let root = dir.join("part").join("checkpoints");
    let latest = std::fs::read_to_string(root.join("latest")).unwrap();
    let model = root.join(latest.trim()).join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let metrics_before = std::fs::read(dir.join("part").join("metrics.csv")).unwrap();
    let out = arbor(&[
        "train", "--config", cfg, "--out", out_dir, "--name", "part", "--resume", "--quiet",
    ]);
    assert_one_line_error(&out, "cannot resume");
    assert_eq!(
        metrics_before,
        std::fs::read(dir.join("part").join("metrics.csv")).unwrap()
    );
}

#[test]
fn sigkill_mid_run_leaves_complete_parquet_files() {
    let dir = scratch("kill");
    let cfg = tiny_config(&dir, 3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .args(["--name", "killed", "--steps", "200", "--quiet"])
        .spawn()
        .unwrap();
    // Wait until some RL steps are exported, then kill without warning.
    let metrics = dir.join("killed").join("trajectories.parquet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let steps = datasets::export::read_trajectories(&metrics)
            .map(|rows| rows.iter().map(|r| r.step).max().map_or(0, |s| s + 1))
            .unwrap_or(0);
        if steps >= 2 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // While it runs, the run is locked: a second process cannot resume it.
    let out_dir = dir.to_str().unwrap();
    let second = arbor(&[
        "train", "--out", out_dir, "--name", "killed", "--resume", "--quiet",
    ]);
    assert_one_line_error(&second, "in use by another arbor process");
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let summary = datasets::export::check_run_files(dir.join("killed")).unwrap();
    assert!(summary.trajectories > 0, "{summary:?}");
    datasets::export::read_metrics(dir.join("killed").join("metrics.parquet")).unwrap();
}

#[test]
fn train_starts_from_a_hugging_face_model_directory() {
    use rollout::hf::fixture::{TinyModel, tiny_config as tiny_model};
    let dir = scratch("hf");
    let model = dir.join("tiny-llama");
    TinyModel::new(tiny_model()).write(&model).unwrap();
    let bench = arbor(&[
        "bench",
        "engine",
        "--quick",
        "--json",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let rows = String::from_utf8_lossy(&bench.stdout).into_owned();
    assert!(rows.contains("\"preset\":\"tiny-llama\""), "{rows}");
    let cfg = tiny_config(&dir, 3);
    let out = arbor(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "hf",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The checkpoint keeps the model's architecture and loads back.
    let ckpt = trainer::checkpoint::load(
        &trainer::checkpoint::latest(&dir.join("hf").join("checkpoints")).unwrap(),
    )
    .unwrap();
    assert_eq!(ckpt.model_config.vocab_size, tiny_model().vocab_size);
    datasets::export::check_run_files(dir.join("hf")).unwrap();
    // Exported as a Hugging Face directory, the trained weights load back with the model's
    // tokenizer.
    let exported = dir.join("exported");
    ok(&arbor(&[
        "export",
        "--checkpoint",
        dir.join("hf").to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]));
    let back = rollout::hf::load_model_dir(&exported).unwrap();
    assert_eq!(back.weights, ckpt.weights);
    assert_eq!(back.config.vocab_size, ckpt.model_config.vocab_size);
    let again = arbor(&[
        "export",
        "--checkpoint",
        dir.join("hf").to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_one_line_error(&again, "exists and is not empty");
    // A directory that is not a model is a one-line error.
    let out = arbor(&[
        "train",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "cannot load model directory");
}

#[test]
fn same_config_and_seed_give_byte_identical_rollout_files() {
    let dir = scratch("determinism");
    let cfg = tiny_config(&dir, 2);
    for out in ["a", "b"] {
        let out_dir = dir.join(out);
        let run = arbor(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--name",
            "same",
            "--quiet",
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    for file in ["trajectories.parquet", "nodes.parquet"] {
        let a = std::fs::read(dir.join("a").join("same").join(file)).unwrap();
        let b = std::fs::read(dir.join("b").join("same").join(file)).unwrap();
        assert!(!a.is_empty());
        assert!(
            a == b,
            "{file} differs between two runs of the same config and seed"
        );
    }
}

#[test]
fn bench_sampler_samples_with_the_given_checkpoint() {
    let dir = scratch("bench");
    let cfg = tiny_config(&dir, 1);
    let (cfg, out_dir) = (cfg.to_str().unwrap(), dir.to_str().unwrap());
    let run = arbor(&[
        "train", "--config", cfg, "--out", out_dir, "--name", "r", "--quiet",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "sampler",
            "--json",
            "--tasks",
            "2",
            "--budgets",
            "64",
        ];
        args.extend_from_slice(extra);
        let out = arbor(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run_dir = dir.join("r");
    let trained = bench(&["--checkpoint", run_dir.to_str().unwrap()]);
    let random = bench(&[]);
    assert!(trained.contains("checkpoints"), "{trained}");
    assert!(random.contains("seeded random weights"), "{random}");
    assert_eq!(trained.lines().count(), 2, "chain and tree rows");
}

/// Two runs started together with the same name: exactly one gets the run directory, the other
/// stops with one line, and the directory holds one run's files.
#[test]
fn concurrent_starts_with_one_name_leave_one_run() {
    let dir = scratch("race");
    let cfg = tiny_config(&dir, 1);
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["train", "--config", cfg.to_str().unwrap()])
            .args(["--out", dir.to_str().unwrap(), "--name", "same", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one run succeeds");
    let failed = outs.iter().find(|o| !o.status.success()).unwrap();
    assert_one_line_error(failed, "exists");
    datasets::export::check_run_files(dir.join("same")).unwrap();
}

#[test]
fn init_starts_a_new_run_from_a_checkpoint_without_redoing_sft() {
    let dir = scratch("init");
    let cfg = tiny_config(&dir, 0);
    let (cfg, out_dir) = (cfg.to_str().unwrap(), dir.to_str().unwrap());
    let base = arbor(&[
        "train", "--config", cfg, "--out", out_dir, "--name", "base", "--quiet",
    ]);
    assert!(
        base.status.success(),
        "{}",
        String::from_utf8_lossy(&base.stderr)
    );
    let next = arbor(&[
        "train",
        "--config",
        cfg,
        "--out",
        out_dir,
        "--name",
        "next",
        "--steps",
        "1",
        "--init",
        dir.join("base").to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    let summary = |run: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(run).join("summary.json")).unwrap())
            .unwrap()
    };
    // Same weights, same held-out episodes: the new run's pre-RL success is the base's final one.
    assert_eq!(
        summary("next")["success_before"],
        summary("base")["success_after"]
    );
    // SFT was not repeated: the new run's metrics hold only its RL step, between the held-out
    // evaluations before and after RL.
    let metrics = std::fs::read_to_string(dir.join("next").join("metrics.csv")).unwrap();
    let phases: Vec<&str> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(phases, ["eval", "rl", "eval"]);
}

/// The files of a finished run that must not depend on how often it was interrupted: the final
/// weights, the rollout exports (bytes), and the metrics without their timings.
fn run_fingerprint(run: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>, String) {
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join("latest")).unwrap();
    let weights = std::fs::read(root.join(latest.trim()).join("model.safetensors")).unwrap();
    let trajectories = std::fs::read(run.join("trajectories.parquet")).unwrap();
    let nodes = std::fs::read(run.join("nodes.parquet")).unwrap();
    let mut rows = datasets::export::read_metrics(run.join("metrics.parquet")).unwrap();
    for r in &mut rows {
        (r.wall_ms, r.tokens_per_s) = (0, 0.0);
    }
    // summary.json agrees with the metrics file it sits beside.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let last = rows.iter().map(|r| r.cumulative_generated_tokens).max();
    assert_eq!(
        summary["generated_tokens"].as_u64(),
        last,
        "{}",
        run.display()
    );
    (weights, trajectories, nodes, format!("{rows:?}"))
}

/// A crash at any point of writing a checkpoint (`ARBOR_CRASH_AT`: the process exits there like
/// `kill -9`) leaves a run that `--resume` finishes with the uninterrupted run's files: every
/// point of one SFT checkpoint and of one RL checkpoint (with the KL reference), and the first
/// and last points of the very first checkpoint (a run with no checkpoint yet starts over).
#[test]
fn a_crash_anywhere_in_checkpoint_writing_resumes_to_the_same_files() {
    use trainer::checkpoint::{CRASH_POINTS_PER_FILE as F, CRASH_POINTS_PER_SAVE as S};
    let dir = scratch("crash");
    let cfg = tiny_config(&dir, 2);
    // An SFT checkpoint after every step as well (3 SFT steps: saves after steps 1, 2 and,
    // with the evaluation before RL, 3; then one per RL step).
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("demos = 16", "demos = 16\ncheckpoint_every = 1"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    // Every run is `<out>/run`: the run name is in the exported rows.
    let train = |out: &str, crash_at: Option<u64>, resume: bool| {
        let out = dir.join(out);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbor"));
        cmd.args(["train", "--name", "run", "--quiet", "--out"]);
        cmd.arg(&out);
        if resume {
            cmd.arg("--resume");
        } else {
            cmd.args(["--config", cfg]);
        }
        if let Some(k) = crash_at {
            cmd.env("ARBOR_CRASH_AT", k.to_string());
        }
        cmd.output().unwrap()
    };
    ok(&train("full", None, false));
    let want = run_fingerprint(&dir.join("full").join("run"));
    // Files per save: model, optimizer, config, state, run_state, then `latest` (+ reference).
    let sft_save = 6 * F + S;
    let rl_save = 7 * F + S;
    let total = 3 * sft_save + 2 * rl_save;
    // The count is right: the last point is a crash, one more is none.
    let last = train("count-last", Some(total), false);
    assert_eq!(last.status.code(), Some(137));
    ok(&train("count-past", Some(total + 1), false));
    let mut points = vec![1, sft_save];
    points.extend(sft_save + 1..=2 * sft_save);
    points.extend(3 * sft_save + 1..=3 * sft_save + rl_save);
    let points = std::sync::Mutex::new(points);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let next = || points.lock().unwrap().pop();
                while let Some(k) = next() {
                    let out = format!("crash-{k}");
                    let run = dir.join(&out).join("run");
                    let crashed = train(&out, Some(k), false);
                    assert_eq!(crashed.status.code(), Some(137), "point {k}");
                    assert!(!run.join("summary.json").exists());
                    let resumed = train(&out, None, true);
                    assert!(
                        resumed.status.success(),
                        "point {k}: {}",
                        String::from_utf8_lossy(&resumed.stderr)
                    );
                    assert!(
                        run_fingerprint(&run) == want,
                        "crash at point {k} resumed to other files"
                    );
                    std::fs::remove_dir_all(dir.join(&out)).unwrap();
                }
            });
        }
    });
}

/// Every check that the config, the task set and the model allow is made before any work and
/// leaves nothing behind: too few task-file rows for a step, a prompt longer than the context,
/// an empty held-out split, sizes no run can hold (in every command), a misspelled key.
#[test]
fn hostile_inputs_fail_before_any_work() {
    let dir = scratch("hostile");
    let out_dir = dir.join("out");
    let out = out_dir.to_str().unwrap();
    let write = |name: &str, lines: Vec<String>| {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        path.to_str().unwrap().to_string()
    };
    let qa = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    r#"{{"prompt": "What is {i} plus {i}?", "answer": {}}}"#,
                    2 * i
                )
            })
            .collect::<Vec<_>>()
    };
    let few = write("few.jsonl", qa(5));
    let mut long_rows = qa(30);
    long_rows.push(format!(
        r#"{{"prompt": "{}", "answer": 1}}"#,
        "x".repeat(5000)
    ));
    let long = write("long.jsonl", long_rows);
    let one = write("one.jsonl", qa(1));
    let typo = write("typo.toml", vec!["[rl]".into(), "klcoef = 0.1".into()]);
    let qa_train = |tasks: &str| {
        arbor(&[
            "train", "--env", "qa-file", "--tasks", tasks, "--out", out, "--quiet",
        ])
    };
    assert_one_line_error(&qa_train(&few), "rl.tasks_per_step is 8");
    assert_one_line_error(&qa_train(&long), "does not fit the model's context window");
    assert_one_line_error(&qa_train(&one), "held-out split of qa-file has no tasks");
    let bad_key = arbor(&["train", "--config", &typo, "--out", out]);
    assert_one_line_error(&bad_key, "did you mean `kl_coef`?");
    let huge = "1000000000000";
    assert_one_line_error(
        &arbor(&["train", "--episodes", huge, "--out", out]),
        "eval.episodes",
    );
    assert_one_line_error(
        &arbor(&["train", "--budget", "4000000000", "--out", out]),
        "budget is 4000000000, above the supported",
    );
    assert_one_line_error(
        &arbor(&["bench", "sampler", "--tasks", huge, "--budgets", "64"]),
        "--tasks must be in",
    );
    assert_one_line_error(
        &arbor(&["bench", "train", "--tasks", huge]),
        "--tasks must be in",
    );
    assert!(!out_dir.exists(), "a rejected run creates nothing");

    // A checkpoint for the commands that read one.
    let cfg = tiny_config(&dir, 1);
    let runs = dir.join("runs");
    ok(&arbor(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
        "--name",
        "r",
        "--quiet",
    ]));
    let ckpt = runs.join("r");
    let ckpt = ckpt.to_str().unwrap();
    assert_one_line_error(
        &arbor(&["eval", "--checkpoint", ckpt, "--episodes", huge]),
        "eval.episodes",
    );
    let eval_one = [
        "eval",
        "--checkpoint",
        ckpt,
        "--env",
        "qa-file",
        "--tasks",
        &one,
    ];
    assert_one_line_error(&arbor(&eval_one), "held-out split of qa-file has no tasks");
    let rollout_out = dir.join("rollouts");
    let rollout_out = rollout_out.to_str().unwrap();
    for (extra, needle) in [
        (["--budget", "4000000000"], "budget is 4000000000"),
        (["--tasks-per-step", huge], "rl.tasks_per_step"),
    ] {
        let mut args = vec!["rollout", "--checkpoint", ckpt, "--out", rollout_out];
        args.extend(extra);
        assert_one_line_error(&arbor(&args), needle);
    }
    let long_rollout = [
        "rollout",
        "--checkpoint",
        ckpt,
        "--env",
        "qa-file",
        "--tasks",
        &long,
        "--out",
        rollout_out,
    ];
    assert_one_line_error(&arbor(&long_rollout), "context window");
    assert!(
        !Path::new(rollout_out).exists(),
        "a rejected rollout creates nothing"
    );
}

/// The defects of a hostile pass over every command, each now a one-line error before any
/// work (or, for a copied run, a resume in its own directory).
#[test]
fn hostile_pass_cases_are_handled() {
    let dir = scratch("hostile2");
    let d = |p: &str| dir.join(p).to_str().unwrap().to_string();
    let cfg = tiny_config(&dir, 1);
    let cfg = cfg.to_str().unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
        d(name)
    };
    let qa = write(
        "qa.jsonl",
        &(0..6)
            .map(|i| format!(r#"{{"prompt": "q{i}?", "answer": "{i}"}}"#))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let qa2 = write(
        "qa2.jsonl",
        "{\"prompt\": \"a?\", \"answer\": \"1\"}\n{\"prompt\": \"b?\", \"answer\": \"2\"}\n",
    );
    let lr = write("lr.toml", "[sft]\nlr = 1e300\n");
    let msl = write("msl.toml", "[model]\nmax_seq_len = 0\n");
    let out = d("out");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--config", &lr, "--out", &out],
            "sft.lr must be a learning rate",
        ),
        (
            vec!["train", "--config", &msl, "--out", &out],
            "model.max_seq_len must be in",
        ),
        (
            vec!["train", "--tasks", "/nonexistent.jsonl", "--out", &out],
            "is a task file for qa-file, not for multihop",
        ),
        (
            vec![
                "train", "--env", "qa-file", "--tasks", &qa, "-k", "bogus=1", "--out", &out,
            ],
            "no knob 'bogus'",
        ),
        (
            vec!["envs", "show", "qa-file", "--tasks", &qa, "--seed", "99"],
            "is no task",
        ),
        (
            vec!["bench", "engine", "--quick", "--presets", "huge"],
            "unknown model preset",
        ),
        (
            vec![
                "sweep",
                "--config",
                cfg,
                "--budgets",
                "64",
                "--budget-steps",
                "64=1,64=2",
            ],
            "two step counts",
        ),
        (
            vec![
                "sweep",
                "--config",
                cfg,
                "--env",
                "qa-file",
                "--tasks",
                &qa2,
                "--budgets",
                "64",
                "--seeds",
                "0",
                "--samplers",
                "chain",
                "--out",
                &out,
            ],
            "rl.tasks_per_step is 2 but the training split of qa-file has 1",
        ),
    ];
    for (args, needle) in &cases {
        assert_one_line_error(&arbor(args), needle);
    }
    assert!(
        !dir.join("out").exists(),
        "rejected commands create nothing"
    );

    // A copied run resumes in its own directory, not in the one its config.toml was named for.
    let runs = d("runs");
    ok(&arbor(&[
        "train", "--config", cfg, "--out", &runs, "--name", "r", "--quiet",
    ]));
    let summary = dir.join("runs/r/summary.json");
    let before = std::fs::read(&summary).unwrap();
    let copy = dir.join("runs/copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in [
        "config.toml",
        "metrics.parquet",
        "trajectories.parquet",
        "nodes.parquet",
    ] {
        std::fs::copy(dir.join("runs/r").join(f), copy.join(f)).unwrap();
    }
    let resumed = arbor(&[
        "train", "--out", &runs, "--name", "copy", "--resume", "--quiet",
    ]);
    let (stdout, _) = ok(&resumed);
    assert!(stdout.contains("runs/copy/summary.json"), "{stdout}");
    assert_eq!(
        std::fs::read(&summary).unwrap(),
        before,
        "the original run is untouched"
    );
    // A preset run has no Hugging Face form.
    let export = arbor(&[
        "export",
        "--checkpoint",
        &d("runs/r"),
        "--out",
        &d("hf-out"),
    ]);
    assert_one_line_error(&export, "has no Hugging Face form");
    assert!(!dir.join("hf-out").exists());
}

/// Off a terminal (a log under `nohup`) a run prints a line per step of its progress.
#[test]
fn a_run_off_a_terminal_logs_its_steps() {
    let dir = scratch("log");
    let cfg = tiny_config(&dir, 2);
    let out = dir.to_str().unwrap();
    let run = arbor(&["train", "--config", cfg.to_str().unwrap(), "--out", out]);
    let (_, stderr) = ok(&run);
    for needle in [
        "sft 3/3 (",
        "rl 1/2 (",
        "rl 2/2 (",
        "reward ",
        "eval after RL",
    ] {
        assert!(stderr.contains(needle), "'{needle}' not in:\n{stderr}");
    }
}
