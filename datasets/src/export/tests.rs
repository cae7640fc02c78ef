//! Tests of the export module: schema, exact rows, round trips, determinism, completeness after
//! every step and after simulated crashes, invariant checks, metrics, resume.

use std::fs::{self, File};
use std::path::Path;

use envs::{AnyEnv, EnvSpec, Outcome};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use rollout::advantage::{AdvantageOutput, Estimator, estimate};
use rollout::sampler::{SamplerConfig, sample};
use rollout::scripted::ScriptedPolicy;
use rollout::tokenizer::ByteTokenizer;
use rollout::tree::{LeafInfo, NodeKind, TaskRollout};

use super::*;
use crate::atomic::temp_path;
use crate::error::DatasetError;
use crate::testutil::TempDir;

const MAZE_PHRASES: [&str; 4] = ["move[up]", "move[down]", "move[left]", "move[right]"];

/// Tree 0: a0 -> o1 -> {a2 (leaf, 1), a3 (leaf, 0)}; tree 1: a4 (leaf, truncated).
fn hand_group(task_id: u64) -> TaskRollout {
    let mut g = TaskRollout::new(task_id, "P:", vec![0, 9]);
    let t0 = g.new_tree();
    let t1 = g.new_tree();
    let a0 = g
        .add_action(
            None,
            t0,
            vec![1, 2],
            "search[a]",
            vec![-0.5, -0.25],
            vec![1.0, 0.5],
        )
        .unwrap();
    let o1 = g.add_observation(a0, vec![3], "|obs|").unwrap();
    let a2 = g
        .add_action(Some(o1), t0, vec![4], "answer[x]", vec![-0.125], vec![0.25])
        .unwrap();
    let a3 = g
        .add_action(
            Some(o1),
            t0,
            vec![5, 6],
            "answer[y]",
            vec![-1.0, -2.0],
            vec![0.0, 3.0],
        )
        .unwrap();
    let a4 = g
        .add_action(None, t1, vec![7], "sea", vec![-0.75], vec![2.0])
        .unwrap();
    g.set_leaf(a2, LeafInfo::finished(1.0, Outcome::Solved))
        .unwrap();
    g.set_leaf(a3, LeafInfo::finished(0.0, Outcome::Failed))
        .unwrap();
    g.set_leaf(a4, LeafInfo::truncated(None)).unwrap();
    g
}

fn info(step: u64, estimator: &str) -> StepInfo<'_> {
    StepInfo {
        step,
        phase: "rl",
        env: "maze",
        sampler: "tree",
        budget: 1024,
        estimator,
    }
}

/// Sampled task groups (scripted policy on maze tasks) for `steps` steps, with tree-GRPO
/// advantages.
fn sampled_steps(steps: u64, tasks: u64) -> Vec<(Vec<TaskRollout>, Vec<AdvantageOutput>)> {
    let spec = EnvSpec::from_name("maze", &[("size", "3")]).unwrap();
    let cfg = SamplerConfig {
        budget: 600,
        max_rounds: 2,
        ..SamplerConfig::default()
    };
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.2, 400);
    (0..steps)
        .map(|step| {
            let envs: Vec<(u64, AnyEnv)> = (0..tasks)
                .map(|i| (step * 100 + i, spec.make(step * 100 + i)))
                .collect();
            let mut groups: Vec<TaskRollout> = Vec::new();
            sample(
                &cfg,
                &mut policy,
                &ByteTokenizer,
                &envs,
                7,
                step,
                &mut groups,
            )
            .unwrap();
            let adv = estimate(Estimator::TreeGrpo, &groups).unwrap();
            (groups, adv)
        })
        .collect()
}

fn pairs<'a>(
    groups: &'a [TaskRollout],
    adv: &'a [AdvantageOutput],
) -> Vec<(&'a TaskRollout, Option<&'a AdvantageOutput>)> {
    groups.iter().zip(adv.iter().map(Some)).collect()
}

fn sampled_info(step: u64) -> StepInfo<'static> {
    StepInfo {
        step,
        phase: "rl",
        env: "maze",
        sampler: "tree",
        budget: 600,
        estimator: "tree-grpo",
    }
}

/// Writes every step of `data` into `dir` and returns the writer (not finished).
fn write_all(dir: &Path, data: &[(Vec<TaskRollout>, Vec<AdvantageOutput>)]) -> RolloutWriter {
    let mut w = RolloutWriter::create(dir, "run-a").unwrap();
    for (step, (groups, adv)) in data.iter().enumerate() {
        w.write_step(&sampled_info(step as u64), &pairs(groups, adv))
            .unwrap();
    }
    w
}

fn row_groups(path: &Path) -> usize {
    SerializedFileReader::new(File::open(path).unwrap())
        .unwrap()
        .metadata()
        .num_row_groups()
}

/// `(name, type, nullable)` of every column of a Parquet file, as Arrow reads it.
fn columns(path: &Path) -> Vec<(String, String, bool)> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable()))
        .collect()
}

fn col(name: &str, ty: &str, nullable: bool) -> (String, String, bool) {
    (name.to_string(), ty.to_string(), nullable)
}

#[test]
fn schemas_are_exactly_design_section_9() {
    let dir = TempDir::new("export-schema");
    let g = hand_group(3);
    let adv = estimate(Estimator::Grpo, std::slice::from_ref(&g)).unwrap();
    let mut w = RolloutWriter::create(&dir.0, "run").unwrap();
    w.write_step(&info(0, "grpo"), &[(&g, Some(&adv[0]))])
        .unwrap();
    w.finish().unwrap();
    let mut m = MetricsWriter::create(&dir.0).unwrap();
    m.push(MetricsRow::new(0, "rl")).unwrap();

    let list_u32 = r#"List(non-null UInt32)"#;
    let list_f32 = r#"List(non-null Float32)"#;
    assert_eq!(
        columns(&dir.0.join("trajectories.parquet")),
        vec![
            col("run_id", "Utf8", false),
            col("step", "UInt64", false),
            col("phase", "Utf8", false),
            col("task_id", "UInt64", false),
            col("env", "Utf8", false),
            col("sampler", "Utf8", false),
            col("budget", "UInt32", false),
            col("tree", "UInt32", false),
            col("leaf_node", "UInt32", false),
            col("node_path", list_u32, false),
            col("prompt", "Utf8", false),
            col("text", "Utf8", false),
            col("reward", "Float32", false),
            col("success", "Boolean", false),
            col("truncated", "Boolean", false),
            col("action_tokens", "UInt32", false),
            col("turns", "UInt32", false),
            col("advantage", "Float32", true),
            col("estimator", "Utf8", false),
        ]
    );
    assert_eq!(
        columns(&dir.0.join("nodes.parquet")),
        vec![
            col("run_id", "Utf8", false),
            col("step", "UInt64", false),
            col("task_id", "UInt64", false),
            col("tree", "UInt32", false),
            col("node_id", "UInt32", false),
            col("parent_id", "UInt32", true),
            col("depth", "UInt32", false),
            col("kind", "Utf8", false),
            col("tokens", list_u32, false),
            col("text", "Utf8", false),
            col("logprobs", list_f32, true),
            col("entropies", list_f32, true),
            col("leaves_below", "UInt32", false),
            col("value", "Float32", false),
            col("advantage", "Float32", true),
            col("is_leaf", "Boolean", false),
        ]
    );
    let mut metrics = vec![col("step", "UInt64", false), col("phase", "Utf8", false)];
    for (name, counter) in [
        ("reward_mean", false),
        ("success_rate", false),
        ("success_stderr", false),
        ("task_success", false),
        ("reward_std", false),
        ("loss", false),
        ("kl", false),
        ("entropy", false),
        ("clip_frac", false),
        ("grad_norm", false),
        ("lr", false),
        ("generated_tokens", true),
        ("cumulative_generated_tokens", true),
        ("prefill_tokens", true),
        ("cached_tokens", true),
        ("cache_read_share", false),
        ("trajectories", true),
        ("distinct_trajectories", true),
        ("truncated", true),
        ("zero_adv_groups_frac", false),
        ("tokens_per_success", false),
        ("response_len_mean", false),
        ("response_len_max", true),
        ("tokens_per_s", false),
        ("wall_ms", true),
    ] {
        metrics.push(col(name, if counter { "UInt64" } else { "Float64" }, false));
    }
    assert_eq!(columns(&dir.0.join("metrics.parquet")), metrics);

    // zstd on every column chunk of every file.
    for name in ["trajectories.parquet", "nodes.parquet", "metrics.parquet"] {
        let reader = SerializedFileReader::new(File::open(dir.0.join(name)).unwrap()).unwrap();
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                assert!(
                    matches!(c.compression(), Compression::ZSTD(_)),
                    "{name}: {:?}",
                    c.compression()
                );
            }
        }
    }
}

#[test]
fn hand_built_rows_are_exact() {
    let dir = TempDir::new("export-exact");
    let g = hand_group(42);
    let grpo = estimate(Estimator::Grpo, std::slice::from_ref(&g)).unwrap();
    let treerl = estimate(Estimator::TreeRl, std::slice::from_ref(&g)).unwrap();
    let mut w = RolloutWriter::create(&dir.0, "exact").unwrap();
    w.write_step(&info(5, "grpo"), &[(&g, Some(&grpo[0]))])
        .unwrap();
    let mut g7 = hand_group(7);
    g7.prompt = "Q,\"é\"\n".to_string();
    w.write_step(&info(6, "treerl"), &[(&g7, Some(&treerl[0]))])
        .unwrap_err(); // advantages of task 42 for task 7
    let treerl7 = estimate(Estimator::TreeRl, std::slice::from_ref(&g7)).unwrap();
    w.write_step(&info(6, "treerl"), &[(&g7, Some(&treerl7[0]))])
        .unwrap();
    w.write_step(&info(7, ""), &[(&g, None)]).unwrap();
    let summary = w.finish().unwrap();
    assert_eq!(
        (summary.steps, summary.trajectories, summary.nodes),
        (3, 9, 15)
    );

    let t = read_trajectories(dir.0.join("trajectories.parquet")).unwrap();
    let n = read_nodes(dir.0.join("nodes.parquet")).unwrap();
    assert_eq!(t.len(), 9);
    assert_eq!(n.len(), 15);
    // Step 5, grpo: rewards [1, 0]; the third trajectory is truncated, so it is masked
    // (no advantage): mean 1/2, std sqrt(1/2).
    let std = 0.5f64.sqrt();
    let z = |r: f64| ((r - 0.5) / (std + 1e-6)) as f32;
    let a3 = &t[1];
    assert_eq!(
        a3,
        &TrajectoryRow {
            run_id: "exact".into(),
            step: 5,
            phase: "rl".into(),
            task_id: 42,
            env: "maze".into(),
            sampler: "tree".into(),
            budget: 1024,
            tree: 0,
            leaf_node: 3,
            node_path: vec![0, 1, 3],
            prompt: "P:".into(),
            text: "P:search[a]|obs|answer[y]".into(),
            reward: 0.0,
            success: false,
            truncated: false,
            action_tokens: 4,
            turns: 2,
            advantage: Some(grpo[0].leaf_adv[3].unwrap()),
            estimator: "grpo".into(),
        }
    );
    assert!((a3.advantage.unwrap() - z(0.0)).abs() < 1e-6);
    assert_eq!(t[2].node_path, vec![4]);
    assert!(t[2].truncated && !t[2].success && t[2].text == "P:sea");
    assert_eq!(
        t[2].advantage, None,
        "a masked trajectory has a null advantage"
    );
    assert_eq!(
        n[1],
        NodeRow {
            run_id: "exact".into(),
            step: 5,
            task_id: 42,
            tree: 0,
            node_id: 1,
            parent_id: Some(0),
            depth: 1,
            kind: NodeKind::Observation,
            tokens: vec![3],
            text: "|obs|".into(),
            logprobs: None,
            entropies: None,
            leaves_below: 2,
            value: 0.5,
            advantage: Some(0.0),
            is_leaf: false,
        }
    );
    assert_eq!(n[0].parent_id, None);
    assert_eq!(n[0].logprobs, Some(vec![-0.5, -0.25]));
    assert_eq!(n[0].entropies, Some(vec![1.0, 0.5]));
    // nodes.advantage of a trajectory-level estimator: sum over the leaves below.
    let sum = grpo[0].leaf_adv[2].unwrap() + grpo[0].leaf_adv[3].unwrap();
    assert!((n[0].advantage.unwrap() - sum).abs() < 1e-6);
    // Step 6, treerl (node-level): trajectory advantage null, node advantage A(s).
    assert!(t[3..6].iter().all(|r| r.advantage.is_none()));
    assert_eq!(t[3].prompt, "Q,\"é\"\n");
    assert_eq!(t[3].estimator, "treerl");
    for (row, want) in n[5..10].iter().zip(&treerl7[0].node_adv) {
        assert_eq!(row.advantage, Some(*want));
    }
    // Step 7, no advantages: null advantages, values from the tree.
    assert!(
        t[6..]
            .iter()
            .all(|r| r.advantage.is_none() && r.estimator.is_empty())
    );
    assert!(n[10..].iter().all(|r| r.advantage.is_none()));
    assert_eq!(
        n[10..].iter().map(|r| r.value).collect::<Vec<_>>(),
        vec![0.5, 0.5, 1.0, 0.0, 0.0]
    );
    let check = check_run_files(&dir.0).unwrap();
    assert_eq!(
        check,
        RunFileSummary {
            run_id: Some("exact".into()),
            steps: 3,
            groups: 3,
            trajectories: 9,
            nodes: 15,
            metrics_rows: None,
            partial_step: None,
        }
    );
}

#[test]
fn sampled_rollouts_round_trip_and_pass_the_invariants() {
    let dir = TempDir::new("export-roundtrip");
    let data = sampled_steps(3, 3);
    let w = write_all(&dir.0, &data);
    let summary = w.finish().unwrap();
    let mut want_t = Vec::new();
    let mut want_n = Vec::new();
    for (step, (groups, adv)) in data.iter().enumerate() {
        let (t, n) = step_rows("run-a", &sampled_info(step as u64), &pairs(groups, adv)).unwrap();
        want_t.extend(t);
        want_n.extend(n);
    }
    assert!(want_t.len() >= 9, "{} trajectories", want_t.len());
    assert_eq!(summary.trajectories, want_t.len() as u64);
    assert_eq!(summary.nodes, want_n.len() as u64);
    assert_eq!(
        read_trajectories(dir.0.join(TRAJECTORIES_FILE)).unwrap(),
        want_t
    );
    assert_eq!(read_nodes(dir.0.join(NODES_FILE)).unwrap(), want_n);
    assert_eq!(row_groups(&dir.0.join(TRAJECTORIES_FILE)), 3);
    assert_eq!(row_groups(&dir.0.join(NODES_FILE)), 3);
    let s = check_run_files(&dir.0).unwrap();
    assert_eq!((s.steps, s.groups), (3, 9));
    assert_eq!(s.trajectories, want_t.len());
    // Trajectory advantages are the tree-GRPO leaf advantages (null for masked, truncated
    // trajectories).
    let adv_leaf: Vec<Option<f32>> = data[0].0[0]
        .leaves()
        .into_iter()
        .map(|l| data[0].1[0].leaf_adv[l as usize])
        .collect();
    let rows_0: Vec<Option<f32>> = want_t
        .iter()
        .filter(|r| r.step == 0 && r.task_id == data[0].0[0].task_id)
        .map(|r| r.advantage)
        .collect();
    assert_eq!(rows_0, adv_leaf);
    for r in &want_t {
        assert_eq!(r.advantage.is_none(), r.truncated, "{r:?}");
    }
}

/// The bytes of a plain ArrowWriter streaming the same steps into one file (a row group per
/// step).
fn plain_file(data: &[(Vec<TaskRollout>, Vec<AdvantageOutput>)], nodes: bool) -> Vec<u8> {
    let schema = if nodes {
        nodes_schema()
    } else {
        trajectories_schema()
    };
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(writer_properties())).unwrap();
    for (step, (groups, adv)) in data.iter().enumerate() {
        let (t, n) = step_rows("run-a", &sampled_info(step as u64), &pairs(groups, adv)).unwrap();
        let batch = if nodes {
            nodes_batch(&n).unwrap()
        } else {
            trajectories_batch(&t).unwrap()
        };
        w.write(&batch).unwrap();
        w.flush().unwrap();
    }
    w.close().unwrap();
    out
}

#[test]
fn files_are_complete_after_every_step_and_identical_for_identical_input() {
    let data = sampled_steps(4, 2);
    let a = TempDir::new("export-det-a");
    let b = TempDir::new("export-det-b");
    let mut wa = RolloutWriter::create(&a.0, "run-a").unwrap();
    let mut wb = RolloutWriter::create(&b.0, "run-a").unwrap();
    // Complete and empty before the first step.
    assert!(
        read_trajectories(a.0.join(TRAJECTORIES_FILE))
            .unwrap()
            .is_empty()
    );
    assert!(read_nodes(a.0.join(NODES_FILE)).unwrap().is_empty());
    let mut want_t = 0;
    for (step, (groups, adv)) in data.iter().enumerate() {
        let info = sampled_info(step as u64);
        wa.write_step(&info, &pairs(groups, adv)).unwrap();
        wb.write_step(&info, &pairs(groups, adv)).unwrap();
        want_t += groups.iter().map(TaskRollout::num_leaves).sum::<usize>();
        for name in [TRAJECTORIES_FILE, NODES_FILE] {
            let (fa, fb) = (a.0.join(name), b.0.join(name));
            assert_eq!(fs::read(&fa).unwrap(), fs::read(&fb).unwrap(), "{name}");
            assert_eq!(row_groups(&fa), step + 1);
        }
        let t = read_trajectories(a.0.join(TRAJECTORIES_FILE)).unwrap();
        assert_eq!(t.len(), want_t);
        assert_eq!(t.last().unwrap().step, step as u64);
        let s = check_run_files(&a.0).unwrap();
        assert_eq!((s.steps, s.trajectories), (step + 1, want_t));
        // The temp files are the previous version.
        assert!(temp_path(&a.0.join(NODES_FILE)).exists() || step == 0);
    }
    let sa = wa.finish().unwrap();
    wb.finish().unwrap();
    for (name, nodes) in [(TRAJECTORIES_FILE, false), (NODES_FILE, true)] {
        let bytes = fs::read(a.0.join(name)).unwrap();
        assert_eq!(bytes, fs::read(b.0.join(name)).unwrap());
        // After finish, exactly the file a plain ArrowWriter writes.
        assert_eq!(bytes, plain_file(&data, nodes), "{name}");
    }
    // No temp files left.
    let mut left: Vec<String> = fs::read_dir(&a.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec![NODES_FILE, TRAJECTORIES_FILE]);
    assert!(sa.bytes_written > 0);
}

#[test]
fn a_crash_leaves_complete_files_with_the_published_steps() {
    let data = sampled_steps(4, 2);
    let leaves = |k: usize| -> usize {
        data[..k]
            .iter()
            .flat_map(|(g, _)| g)
            .map(TaskRollout::num_leaves)
            .sum()
    };

    // SIGKILL-like: the writer vanishes without Drop, after 3 steps.
    let dir = TempDir::new("export-crash-forget");
    let w = write_all(&dir.0, &data[..3]);
    std::mem::forget(w);
    assert_eq!(
        read_trajectories(dir.0.join(TRAJECTORIES_FILE))
            .unwrap()
            .len(),
        leaves(3)
    );
    let s = check_run_files(&dir.0).unwrap();
    assert_eq!(s.steps, 3);
    // Temp files of the dead writer are left behind; garbage in them changes nothing.
    for name in [TRAJECTORIES_FILE, NODES_FILE] {
        let tmp = temp_path(&dir.0.join(name));
        assert!(tmp.exists());
        fs::write(&tmp, b"garbage, not parquet").unwrap();
    }
    assert_eq!(check_run_files(&dir.0).unwrap(), s);
    // A new writer in the same directory starts cleanly over the leftovers.
    let w = write_all(&dir.0, &data);
    w.finish().unwrap();
    assert_eq!(check_run_files(&dir.0).unwrap().steps, 4);

    // Dropped without finish: complete files, temp files removed.
    let dir = TempDir::new("export-crash-drop");
    let w = write_all(&dir.0, &data[..2]);
    drop(w);
    assert_eq!(
        read_nodes(dir.0.join(NODES_FILE))
            .unwrap()
            .iter()
            .map(|n| n.step)
            .max(),
        Some(1)
    );
    assert_eq!(check_run_files(&dir.0).unwrap().trajectories, leaves(2));
    assert!(!temp_path(&dir.0.join(NODES_FILE)).exists());

    // Killed between publishing nodes and trajectories of step 2: nodes one step ahead.
    let ahead = TempDir::new("export-crash-ahead");
    let behind = TempDir::new("export-crash-behind");
    write_all(&ahead.0, &data[..3]).finish().unwrap();
    write_all(&behind.0, &data[..2]).finish().unwrap();
    fs::copy(ahead.0.join(NODES_FILE), behind.0.join(NODES_FILE)).unwrap();
    let s = check_run_files(&behind.0).unwrap();
    assert_eq!((s.steps, s.partial_step), (2, Some(2)));
    // The other way round (trajectories ahead of nodes) is never written, and is an error.
    fs::copy(ahead.0.join(TRAJECTORIES_FILE), ahead.0.join("t.tmp")).unwrap();
    write_all(&ahead.0, &data[..2]).finish().unwrap();
    fs::rename(ahead.0.join("t.tmp"), ahead.0.join(TRAJECTORIES_FILE)).unwrap();
    assert!(matches!(
        check_run_files(&ahead.0),
        Err(DatasetError::Invariant { step: 2, .. })
    ));
}

#[test]
fn write_step_rejects_bad_input_and_writes_nothing() {
    let dir = TempDir::new("export-reject");
    let g = hand_group(1);
    let adv = estimate(Estimator::Grpo, std::slice::from_ref(&g)).unwrap();
    let mut w = RolloutWriter::create(&dir.0, "r").unwrap();
    w.write_step(&info(0, "grpo"), &[(&g, Some(&adv[0]))])
        .unwrap();
    let before = fs::read(dir.0.join(TRAJECTORIES_FILE)).unwrap();
    let before_nodes = fs::read(dir.0.join(NODES_FILE)).unwrap();
    let reason = |r: Result<(), DatasetError>| match r {
        Err(DatasetError::BadRollout { reason, .. }) => reason,
        other => panic!("expected BadRollout, got {other:?}"),
    };
    // The same (step, task) again, or twice in one call.
    assert!(reason(w.write_step(&info(0, "grpo"), &[(&g, Some(&adv[0]))])).contains("already"));
    assert!(
        reason(w.write_step(
            &info(1, "grpo"),
            &[(&g, Some(&adv[0])), (&g, Some(&adv[0]))]
        ))
        .contains("already")
    );
    // Estimator mismatch.
    assert!(reason(w.write_step(&info(1, "rloo"), &[(&g, Some(&adv[0]))])).contains("estimator"));
    // Advantages of the wrong shape.
    let mut short = adv[0].clone();
    short.value.pop();
    assert!(reason(w.write_step(&info(1, "grpo"), &[(&g, Some(&short))])).contains("entries"));
    // A dangling node (dropped trajectory).
    let mut broken = hand_group(2);
    broken.nodes[3].leaf = None;
    assert!(reason(w.write_step(&info(1, ""), &[(&broken, None)])).contains("invalid rollout"));
    assert_eq!(fs::read(dir.0.join(TRAJECTORIES_FILE)).unwrap(), before);
    assert_eq!(fs::read(dir.0.join(NODES_FILE)).unwrap(), before_nodes);
    // The writer still works, and an empty step writes nothing.
    w.write_step(&info(1, ""), &[]).unwrap();
    assert_eq!(fs::read(dir.0.join(NODES_FILE)).unwrap(), before_nodes);
    w.write_step(&info(1, ""), &[(&g, None)]).unwrap();
    assert_eq!(w.summary().steps, 2);
    // A missing directory is a write error naming the file.
    let err = RolloutWriter::create(&dir.0.join("missing"), "r").unwrap_err();
    assert!(
        matches!(&err, DatasetError::WriteRunFile { path, .. } if path.ends_with("nodes.parquet")),
        "{err}"
    );
}

/// Writes rows directly (bypassing the writer's checks), for invariant tests.
fn write_rows(dir: &Path, t: &[TrajectoryRow], n: &[NodeRow]) {
    for (name, batch) in [
        (TRAJECTORIES_FILE, trajectories_batch(t).unwrap()),
        (NODES_FILE, nodes_batch(n).unwrap()),
    ] {
        let mut w =
            ArrowWriter::try_new(File::create(dir.join(name)).unwrap(), batch.schema(), None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

#[test]
fn check_run_files_catches_each_violation() {
    let dir = TempDir::new("export-violations");
    let g = hand_group(9);
    let adv = estimate(Estimator::Grpo, std::slice::from_ref(&g)).unwrap();
    let (t, n) = step_rows("r", &info(3, "grpo"), &[(&g, Some(&adv[0]))]).unwrap();
    write_rows(&dir.0, &t, &n);
    check_run_files(&dir.0).unwrap();
    type Edit = fn(&mut Vec<TrajectoryRow>, &mut Vec<NodeRow>);
    let cases: [(Edit, &str); 12] = [
        (
            |t, _| t.iter_mut().for_each(|r| r.budget = 5),
            "exceed the budget 5",
        ),
        (
            |_, n| n[2].parent_id = Some(17),
            "parent_id 17, which does not exist",
        ),
        (|t, _| t[0].text.push('!'), "differ from its text"),
        (|t, _| t[0].node_path = vec![0, 2], "not a path"),
        (|t, _| t[1].action_tokens = 9, "recount"),
        (
            |t, _| {
                t.pop();
            },
            "2 trajectories for 3 leaf nodes",
        ),
        (
            |_, n| n[1].logprobs = Some(vec![0.0]),
            "observation node 1 has logprobs",
        ),
        (|_, n| n[0].entropies = None, "action node 0 has 2 tokens"),
        (|_, n| n[3].node_id = 2, "node_id 2 appears twice"),
        (|_, n| n[1].leaves_below = 1, "leaves_below 1, but 2"),
        (|_, n| n[0].value = 0.25, "value 0.25"),
        (
            |t, _| t[2].run_id = "other".into(),
            "run_id 'other' differs",
        ),
    ];
    for (edit, want) in cases {
        let (mut t2, mut n2) = (t.clone(), n.clone());
        edit(&mut t2, &mut n2);
        write_rows(&dir.0, &t2, &n2);
        match check_run_files(&dir.0) {
            Err(DatasetError::Invariant {
                step: 3,
                task_id: 9,
                reason,
                ..
            }) => assert!(reason.contains(want), "want '{want}', got '{reason}'"),
            other => panic!("want '{want}', got {other:?}"),
        }
    }
    // Unreadable files are BadRunFile errors naming the problem.
    fs::write(dir.0.join(NODES_FILE), b"not parquet").unwrap();
    assert!(matches!(
        check_run_files(&dir.0),
        Err(DatasetError::BadRunFile { reason, .. }) if reason.contains("not a readable Parquet")
    ));
    fs::remove_file(dir.0.join(NODES_FILE)).unwrap();
    assert!(matches!(
        check_run_files(&dir.0),
        Err(DatasetError::BadRunFile { reason, .. }) if reason == "not found"
    ));
    let mut m = MetricsWriter::create(&dir.0).unwrap();
    m.push(MetricsRow::new(0, "rl")).unwrap();
    let err = read_trajectories(dir.0.join(METRICS_FILE)).unwrap_err();
    assert!(
        err.to_string().contains("missing column \"run_id\""),
        "{err}"
    );
}

fn same_metrics(a: &[MetricsRow], b: &[MetricsRow]) -> bool {
    // NaN-aware: compare the CSV renderings, which print every value exactly.
    metrics_csv(a) == metrics_csv(b)
}

#[test]
fn metrics_round_trip_with_csv_copy_and_resume() {
    let dir = TempDir::new("export-metrics");
    let mut m = MetricsWriter::create(&dir.0).unwrap();
    assert!(read_metrics(dir.0.join(METRICS_FILE)).unwrap().is_empty());
    let stats = rollout::sampler::SamplerStats {
        groups: 4,
        generated_tokens: 1000,
        prefill_tokens: 300,
        cached_tokens: 100,
        computed_tokens: 300,
        trajectories: 20,
        distinct_trajectories: 18,
        truncated: 1,
        successes: 5,
        reward_sum: 5.0,
        zero_adv_groups: 1,
        solved_groups: 2,
        reward_sq_sum: 5.0,
        response_tokens: 600,
        response_tokens_max: 70,
        wall_ms: 250,
    };
    let mut rows = vec![MetricsRow {
        loss: 2.5,
        lr: 1e-4,
        ..MetricsRow::new(0, "sft")
    }];
    rows.push(MetricsRow {
        loss: -0.125,
        kl: 0.001,
        ..MetricsRow::from_sampler(0, "rl", &stats)
    });
    let r = &rows[1];
    assert_eq!(
        (r.reward_mean, r.success_rate, r.cache_read_share),
        (0.25, 0.25, 0.25)
    );
    assert_eq!(
        (r.tokens_per_success, r.zero_adv_groups_frac, r.tokens_per_s),
        (500.0, 0.25, 4000.0)
    );
    // Rewards 0/1 with mean 0.25: std sqrt(0.25 − 0.0625) = 0.433013; 2 of 4 groups solved;
    // 600 response tokens over 20 trajectories.
    assert!((r.reward_std - 0.1875f64.sqrt()).abs() < 1e-12);
    assert_eq!(
        (r.task_success, r.response_len_mean, r.response_len_max),
        (0.5, 30.0, 70)
    );
    m.push(rows[0].clone()).unwrap();
    m.extend(rows[1..].iter().cloned()).unwrap();
    let back = read_metrics(dir.0.join(METRICS_FILE)).unwrap();
    assert!(same_metrics(&back, &rows));
    assert!(back[0].tokens_per_success.is_nan());
    let csv = fs::read_to_string(dir.0.join(METRICS_CSV_FILE)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("step,phase,reward_mean,success_rate,success_stderr,"));
    assert!(lines[0].ends_with(",response_len_mean,response_len_max,tokens_per_s,wall_ms"));
    assert_eq!(
        lines[1],
        "0,sft,0,0,0,0,0,2.5,0,0,0,0,0.0001,0,0,0,0,0,0,0,0,0,NaN,0,0,0,0"
    );
    assert_eq!(
        lines[2],
        "0,rl,0.25,0.25,0,0.5,0.4330127018922193,-0.125,0.001,0,0,0,0,1000,0,300,100,0.25,20,18,1,\
         0.25,500,30,70,4000,250"
    );
    assert!(!temp_path(&dir.0.join(METRICS_FILE)).exists());
    // Resume keeps what the filter keeps and rewrites both files.
    let m = MetricsWriter::resume(&dir.0, |r| r.phase == "sft").unwrap();
    assert!(same_metrics(m.rows(), &rows[..1]));
    assert!(same_metrics(
        &read_metrics(dir.0.join(METRICS_FILE)).unwrap(),
        &rows[..1]
    ));
    assert_eq!(
        fs::read_to_string(dir.0.join(METRICS_CSV_FILE))
            .unwrap()
            .lines()
            .count(),
        2
    );
    let s = check_run_files_after_rollouts(&dir.0);
    assert_eq!(s.metrics_rows, Some(1));
}

fn check_run_files_after_rollouts(dir: &Path) -> RunFileSummary {
    RolloutWriter::create(dir, "r").unwrap().finish().unwrap();
    check_run_files(dir).unwrap()
}

#[test]
fn resume_keeps_earlier_steps_and_continues() {
    let data = sampled_steps(4, 2);
    let full = TempDir::new("export-resume-full");
    write_all(&full.0, &data).finish().unwrap();

    let dir = TempDir::new("export-resume");
    let w = write_all(&dir.0, &data);
    std::mem::forget(w); // crashed after step 3; resume from step 2
    let mut w = RolloutWriter::resume(&dir.0, "run-a", 2).unwrap();
    assert_eq!(w.summary().steps, 2);
    let t = read_trajectories(dir.0.join(TRAJECTORIES_FILE)).unwrap();
    assert_eq!(t.iter().map(|r| r.step).max(), Some(1));
    assert_eq!(row_groups(&dir.0.join(NODES_FILE)), 2);
    // Rewriting a kept step is refused; the dropped ones are written again.
    let (groups, adv) = &data[1];
    assert!(w.write_step(&sampled_info(1), &pairs(groups, adv)).is_err());
    for (step, (groups, adv)) in data.iter().enumerate().skip(2) {
        w.write_step(&sampled_info(step as u64), &pairs(groups, adv))
            .unwrap();
    }
    w.finish().unwrap();
    assert_eq!(
        read_trajectories(dir.0.join(TRAJECTORIES_FILE)).unwrap(),
        read_trajectories(full.0.join(TRAJECTORIES_FILE)).unwrap()
    );
    assert_eq!(
        read_nodes(dir.0.join(NODES_FILE)).unwrap(),
        read_nodes(full.0.join(NODES_FILE)).unwrap()
    );
    assert_eq!(check_run_files(&dir.0).unwrap().steps, 4);
    // After a crash between the two files (nodes of step 3 published, trajectories not),
    // resuming drops the orphaned nodes.
    let partial = TempDir::new("export-resume-partial");
    write_all(&partial.0, &data[..3]).finish().unwrap();
    fs::copy(full.0.join(NODES_FILE), partial.0.join(NODES_FILE)).unwrap();
    assert_eq!(check_run_files(&partial.0).unwrap().partial_step, Some(3));
    let w = RolloutWriter::resume(&partial.0, "run-a", 10).unwrap();
    assert_eq!(w.summary().steps, 3);
    w.finish().unwrap();
    let s = check_run_files(&partial.0).unwrap();
    assert_eq!((s.steps, s.partial_step), (3, None));
    assert_eq!(
        read_nodes(partial.0.join(NODES_FILE)).unwrap(),
        read_nodes(full.0.join(NODES_FILE))
            .unwrap()
            .into_iter()
            .filter(|n| n.step < 3)
            .collect::<Vec<_>>()
    );
    // Resuming where there is nothing starts empty.
    let empty = TempDir::new("export-resume-empty");
    let w = RolloutWriter::resume(&empty.0, "x", 10).unwrap();
    let s = w.summary();
    assert_eq!((s.steps, s.trajectories, s.nodes), (0, 0, 0));
    drop(w);
    assert!(read_nodes(empty.0.join(NODES_FILE)).unwrap().is_empty());
}

/// Environment variable that turns [`sigkill_child_writer`] on (it is the child process of
/// [`sigkill_at_any_moment_leaves_complete_files`]).
const CHILD_DIR_VAR: &str = "ARBOR_EXPORT_SIGKILL_CHILD_DIR";

/// Child process: writes steps (rollouts, then a metrics row) until it is killed. Does nothing
/// unless started by the parent test.
#[test]
#[ignore = "child process of sigkill_at_any_moment_leaves_complete_files"]
fn sigkill_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut w = RolloutWriter::create(&dir, "killed").unwrap();
    let mut m = MetricsWriter::create(&dir).unwrap();
    for step in 0..1_000_000u64 {
        let groups = [hand_group(2 * step), hand_group(2 * step + 1)];
        let adv = estimate(Estimator::Rloo, &groups).unwrap();
        w.write_step(&info(step, "rloo"), &pairs(&groups, &adv))
            .unwrap();
        m.push(MetricsRow::new(step, "rl")).unwrap();
    }
}

#[test]
fn sigkill_at_any_moment_leaves_complete_files() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe().unwrap();
    for trial in 0..6u64 {
        let dir = TempDir::new("export-sigkill");
        let mut child = Command::new(&exe)
            .args([
                "export::tests::sigkill_child_writer",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, &dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until a few steps are published (reads may race a step; retry), then kill at a
        // trial-dependent moment within a step.
        let want_steps = 1 + 2 * trial as usize;
        let started = Instant::now();
        loop {
            let steps = read_trajectories(dir.0.join(TRAJECTORIES_FILE))
                .map(|t| t.iter().map(|r| r.step).max().map_or(0, |s| s as usize + 1))
                .unwrap_or(0);
            if steps >= want_steps {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the child wrote {steps} steps in 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(137 * trial));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let s = check_run_files(&dir.0).unwrap();
        assert!(s.steps >= want_steps, "trial {trial}: {s:?}");
        assert_eq!(s.trajectories, 3 * 2 * s.steps, "trial {trial}: {s:?}");
        let metrics = read_metrics(dir.0.join(METRICS_FILE)).unwrap();
        assert!(metrics.len() + 1 >= s.steps, "trial {trial}: {s:?}");
        // A new writer starts cleanly over whatever the killed one left.
        RolloutWriter::create(&dir.0, "next")
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(check_run_files(&dir.0).unwrap().trajectories, 0);
    }
}

/// A `metrics.parquet` written before the learning-curve columns existed still reads (so older
/// runs resume and sweeps reuse them), with those columns at their defaults.
#[test]
fn metrics_without_the_later_columns_still_read() {
    let dir = TempDir::new("export-old-metrics");
    let row = MetricsRow {
        loss: 1.5,
        success_stderr: 0.25,
        ..MetricsRow::new(3, "rl")
    };
    let batch = super::metrics::metrics_batch(std::slice::from_ref(&row)).unwrap();
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.schema().field(i).name() != "success_stderr")
        .collect();
    let old = batch.project(&keep).unwrap();
    let path = dir.0.join(METRICS_FILE);
    let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), old.schema(), None).unwrap();
    w.write(&old).unwrap();
    w.close().unwrap();
    let back = read_metrics(&path).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].step, back[0].loss, back[0].success_stderr),
        (3, 1.5, 0.0)
    );
}
