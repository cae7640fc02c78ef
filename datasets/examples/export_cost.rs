//! What keeping the rollout files complete after every step costs (a program, not a test:
//! STYLE §14).
//!
//! Writes `STEPS` steps (default 50) of synthetic rollouts — 10 task groups per step, each of 2
//! trees × 5 leaves (100 trajectories per step), every trajectory 300 tokens (260 action, 40
//! observation) — three ways, and prints time and bytes written:
//! - `rolling`: [`RolloutWriter`] (complete files at the final paths after every step);
//! - `rewrite`: a complete copy of each file re-encoded and written atomically after every step
//!   (the simple alternative, O(file) per step);
//! - `stream`: one plain Arrow writer per file, footer only at the end (no completeness; the
//!   lower bound).
//!
//! `cargo run --release -p datasets --example export_cost -- [STEPS] [KEEP_DIR]`; with
//! `KEEP_DIR`, the `rolling` writer's directory is left there *without* `finish` (as after a
//! crash) for other readers to open.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datasets::atomic::write_atomic;
use datasets::export::{
    NODES_FILE, RolloutWriter, StepInfo, TRAJECTORIES_FILE, check_run_files, nodes_batch,
    nodes_schema, step_rows, trajectories_batch, trajectories_schema, writer_properties,
};
use envs::Outcome;
use parquet::arrow::ArrowWriter;
use rollout::advantage::{AdvantageOutput, Estimator, estimate};
use rollout::tree::{LeafInfo, TaskRollout};

const GROUPS: u64 = 10;

/// A deterministic pseudo-random stream (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    fn tokens(&mut self, n: usize) -> (Vec<u32>, String) {
        let tokens: Vec<u32> = (0..n).map(|_| 97 + self.next() % 26).collect();
        let text = tokens.iter().map(|&t| char::from(t as u8)).collect();
        (tokens, text)
    }

    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| -((self.next() % 10_000) as f32) / 1000.0)
            .collect()
    }
}

fn group(task_id: u64, rng: &mut Lcg) -> TaskRollout {
    let (pt, prompt) = rng.tokens(80);
    let mut g = TaskRollout::new(task_id, prompt, pt);
    for _ in 0..2 {
        let t = g.new_tree();
        let action = |g: &mut TaskRollout, rng: &mut Lcg, parent, n| {
            let (tokens, text) = rng.tokens(n);
            g.add_action(parent, t, tokens, text, rng.floats(n), rng.floats(n))
                .unwrap()
        };
        let a0 = action(&mut g, rng, None, 60);
        let (ot, otext) = rng.tokens(20);
        let o0 = g.add_observation(a0, ot, otext).unwrap();
        for _ in 0..5 {
            let a1 = action(&mut g, rng, Some(o0), 60);
            let (ot, otext) = rng.tokens(20);
            let o1 = g.add_observation(a1, ot, otext).unwrap();
            let leaf = action(&mut g, rng, Some(o1), 140);
            let solved = rng.next().is_multiple_of(2);
            let (reward, outcome) = if solved {
                (1.0, Outcome::Solved)
            } else {
                (0.0, Outcome::Failed)
            };
            g.set_leaf(leaf, LeafInfo::finished(reward, outcome))
                .unwrap();
        }
    }
    g
}

fn step_data(step: u64) -> (Vec<TaskRollout>, Vec<AdvantageOutput>) {
    let mut rng = Lcg(step + 1);
    let groups: Vec<TaskRollout> = (0..GROUPS)
        .map(|i| group(step * GROUPS + i, &mut rng))
        .collect();
    let adv = estimate(Estimator::TreeGrpo, &groups).unwrap();
    (groups, adv)
}

fn info(step: u64) -> StepInfo<'static> {
    StepInfo {
        step,
        phase: "rl",
        env: "multihop",
        sampler: "tree",
        budget: 2400,
        estimator: "tree-grpo",
    }
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: u64 = args.get(1).map_or(50, |s| s.parse().expect("STEPS"));
    let keep: Option<PathBuf> = args.get(2).map(PathBuf::from);
    let base = std::env::temp_dir().join(format!("arbor-export-cost-{}", std::process::id()));
    let data: Vec<_> = (0..steps).map(step_data).collect();
    let rows = |s: usize| {
        let (g, a) = &data[s];
        let pairs: Vec<_> = g.iter().zip(a.iter().map(Some)).collect();
        step_rows("cost", &info(s as u64), &pairs).unwrap()
    };

    // rolling
    let dir = keep.clone().unwrap_or_else(|| base.join("rolling"));
    fresh(&dir);
    let t0 = Instant::now();
    let mut w = RolloutWriter::create(&dir, "cost").unwrap();
    let mut last_step_ms = 0.0;
    for (s, (g, a)) in data.iter().enumerate() {
        let pairs: Vec<_> = g.iter().zip(a.iter().map(Some)).collect();
        let ts = Instant::now();
        w.write_step(&info(s as u64), &pairs).unwrap();
        last_step_ms = ts.elapsed().as_secs_f64() * 1e3;
    }
    let rolling_summary = w.summary();
    let rolling_s = t0.elapsed().as_secs_f64();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let file_bytes = size(&dir.join(TRAJECTORIES_FILE)) + size(&dir.join(NODES_FILE));
    if keep.is_some() {
        std::mem::forget(w); // as after SIGKILL: no finish, temp files left
    } else {
        w.finish().unwrap();
    }
    let check = check_run_files(&dir).unwrap();

    // rewrite: the whole file re-encoded and written atomically after every step
    let dir = base.join("rewrite");
    fresh(&dir);
    let t0 = Instant::now();
    let (mut all_t, mut all_n) = (Vec::new(), Vec::new());
    let mut rewrite_bytes = 0u64;
    let mut rewrite_last_ms = 0.0;
    for s in 0..data.len() {
        let ts = Instant::now();
        let (t, n) = rows(s);
        all_t.push(trajectories_batch(&t).unwrap());
        all_n.push(nodes_batch(&n).unwrap());
        for (name, schema, batches) in [
            (TRAJECTORIES_FILE, trajectories_schema(), &all_t),
            (NODES_FILE, nodes_schema(), &all_n),
        ] {
            let mut bytes = Vec::new();
            let mut pw =
                ArrowWriter::try_new(&mut bytes, schema, Some(writer_properties())).unwrap();
            for b in batches.iter() {
                pw.write(b).unwrap();
                pw.flush().unwrap();
            }
            pw.close().unwrap();
            rewrite_bytes += bytes.len() as u64;
            write_atomic(&dir.join(name), &bytes).unwrap();
        }
        rewrite_last_ms = ts.elapsed().as_secs_f64() * 1e3;
    }
    let rewrite_s = t0.elapsed().as_secs_f64();

    // stream: plain writers, no completeness until the end
    let dir = base.join("stream");
    fresh(&dir);
    let t0 = Instant::now();
    let mut tw = ArrowWriter::try_new(
        File::create(dir.join(TRAJECTORIES_FILE)).unwrap(),
        trajectories_schema(),
        Some(writer_properties()),
    )
    .unwrap();
    let mut nw = ArrowWriter::try_new(
        File::create(dir.join(NODES_FILE)).unwrap(),
        nodes_schema(),
        Some(writer_properties()),
    )
    .unwrap();
    for s in 0..data.len() {
        let (t, n) = rows(s);
        nw.write(&nodes_batch(&n).unwrap()).unwrap();
        nw.flush().unwrap();
        tw.write(&trajectories_batch(&t).unwrap()).unwrap();
        tw.flush().unwrap();
    }
    nw.close().unwrap();
    tw.close().unwrap();
    let stream_s = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&base);

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{steps} steps, {} trajectories and {} nodes per step; files {:.2} MiB after the last step",
        check.trajectories / steps as usize,
        rolling_summary.nodes / steps,
        mib(file_bytes)
    );
    println!(
        "rolling: {rolling_s:.3} s total, {last_step_ms:.1} ms for the last step, {:.2} MiB written",
        mib(rolling_summary.bytes_written)
    );
    println!(
        "rewrite: {rewrite_s:.3} s total, {rewrite_last_ms:.1} ms for the last step, {:.2} MiB written",
        mib(rewrite_bytes)
    );
    println!("stream:  {stream_s:.3} s total (footer only at the end)");
    println!(
        "ratios: rolling/stream time {:.2}, rewrite/rolling time {:.2}, rewrite/rolling bytes {:.2}, rolling bytes/file {:.2}",
        rolling_s / stream_s,
        rewrite_s / rolling_s,
        rewrite_bytes as f64 / rolling_summary.bytes_written as f64,
        rolling_summary.bytes_written as f64 / file_bytes as f64
    );
}
