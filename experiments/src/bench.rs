//! `arbor bench`: benchmarks are programs that print ratios measured in one run (STYLE §14).

use anyhow::Context;
use envs::{AnyEnv, EnvSpec};
use rollout::engine::bench::{BenchOptions, EngineBenchRow};
use rollout::engine::{Engine, ModelConfig, Weights};
use rollout::sampler::{BranchPolicy, SamplerConfig, SamplerKind, SamplerStats, sample};
use rollout::tokenizer::ByteTokenizer;
use rollout::tree::TaskRollout;
use serde::Serialize;

use crate::cli::{BenchArgs, BenchWhich, EngineBenchArgs, SamplerBenchArgs, TrainBenchArgs};

/// Runs `arbor bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        BenchWhich::Engine(a) => engine(&a),
        BenchWhich::Sampler(a) => sampler(&a),
        BenchWhich::Train(a) => train(&a),
    }
}

fn engine(args: &EngineBenchArgs) -> anyhow::Result<()> {
    let mut opts = if args.quick {
        BenchOptions::quick()
    } else {
        BenchOptions::default()
    };
    for preset in &args.presets {
        ModelConfig::preset(preset)?;
    }
    if args.presets.is_empty() {
        anyhow::bail!("--presets names no preset");
    }
    if !args.quick {
        opts.presets = args.presets.clone();
        opts.batches = args.batches.clone();
    }
    if args.batches.is_empty() || args.batches.contains(&0) {
        anyhow::bail!("--batches takes batch sizes of at least 1");
    }
    if args.kv.is_empty() {
        anyhow::bail!("--kv names no KV cache precision");
    }
    opts.kv = args.kv.clone();
    let rows = match &args.model {
        None => rollout::engine::bench::run(&opts)?,
        Some(dir) => {
            let section = crate::config::ModelSection {
                dir: Some(dir.clone()),
                ..Default::default()
            };
            let model = section.load()?;
            let weights = model.weights.expect("a model directory carries weights");
            let name = dir
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into());
            rollout::engine::bench::run_models(&opts, vec![(name, model.config, weights)])?
        }
    };
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(&engine_json(r))?);
        }
        return Ok(());
    }
    println!(
        "{:<13} {:<7} {:<4} {:>6} {:>8} {:>12} {:>9} {:>9}",
        "bench", "preset", "kv", "batch", "context", "tokens/s", "GFLOP/s", "of peak"
    );
    for r in &rows {
        println!(
            "{:<13} {:<7} {:<4} {:>6} {:>8} {:>12.0} {:>9.1} {:>8.1}%",
            r.bench,
            r.preset,
            r.kv,
            r.batch,
            r.context_len,
            r.tokens_per_s,
            r.gflops,
            100.0 * r.gflops / r.peak_gflops
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct EngineJson<'a> {
    bench: &'a str,
    preset: &'a str,
    kv: &'a str,
    batch: usize,
    tokens_per_s: f64,
    gflops: f64,
    peak_gflops: f64,
}

fn engine_json(r: &EngineBenchRow) -> EngineJson<'_> {
    EngineJson {
        bench: &r.bench,
        preset: &r.preset,
        kv: &r.kv,
        batch: r.batch,
        tokens_per_s: r.tokens_per_s,
        gflops: r.gflops,
        peak_gflops: r.peak_gflops,
    }
}

#[derive(Serialize)]
struct SamplerRow {
    bench: &'static str,
    sampler: &'static str,
    /// Branching policy of a tree row (`None` for the chain).
    branch: Option<&'static str>,
    budget: u32,
    policy: String,
    generated_tokens: u64,
    trajectories: u64,
    distinct_per_1k: f64,
    cache_read_share: f64,
    truncated: u64,
    success_rate: f64,
    /// Share of task groups whose finished trajectories do not all have the same reward (the
    /// groups that carry a group-relative learning signal).
    mixed_groups: f64,
    wall_ms: u64,
    /// Generated tokens per second of sampling.
    tokens_per_s: f64,
}

/// Largest `--tasks` of a benchmark (the limit of `rl.tasks_per_step`).
const MAX_BENCH_TASKS: usize = 1 << 16;
/// Largest `--repeats` of `bench train`.
const MAX_REPEATS: usize = 1000;

/// A count flag within `1..=max`, or one line naming it.
fn check_count(flag: &str, value: usize, max: usize) -> anyhow::Result<()> {
    if value == 0 || value > max {
        anyhow::bail!("{flag} must be in 1..={max} (got {value})");
    }
    Ok(())
}

fn sampler(args: &SamplerBenchArgs) -> anyhow::Result<()> {
    check_count("--tasks", args.tasks, MAX_BENCH_TASKS)?;
    let hops = args.hops.to_string();
    let mut knobs = vec![("hops", hops.as_str())];
    knobs.extend(crate::config::parse_knobs(&args.knobs)?);
    let mut spec = EnvSpec::from_name("multihop", &knobs)?;
    // A model file or directory samples in its own chat rendering.
    let model = match &args.model {
        Some(path) => {
            let section = crate::config::ModelSection {
                dir: Some(path.clone()),
                ..Default::default()
            };
            let loaded = section.load()?;
            spec = loaded.render(spec);
            Some(loaded)
        }
        None => None,
    };
    // Held-out task ids (the eval range), the same for every budget and sampler.
    let tasks: Vec<(u64, AnyEnv)> = (0..args.tasks as u64)
        .map(|i| {
            let id = (1u64 << 32) + i;
            (id, spec.make(id))
        })
        .collect();
    let (cfg, weights, tokenizer, policy_name) = match (&args.checkpoint, model) {
        (Some(dir), _) => {
            let p = bench_policy(Some(dir), None)?;
            (p.config, p.weights, p.tokenizer, p.label)
        }
        (None, Some(loaded)) => {
            let path = args.model.as_ref().expect("loaded from --model");
            // With a server the engine is not built.
            let weights = match args.rollout_server {
                None => loaded.weights.unwrap_or_default(),
                Some(_) => Weights::new(),
            };
            (
                loaded.config,
                weights,
                loaded.tokenizer,
                path.display().to_string(),
            )
        }
        (None, None) => {
            let cfg = ModelConfig::preset(&args.preset)?;
            let weights = Weights::random(&cfg, args.seed);
            let name = format!(
                "{} with seeded random weights (seed {})",
                args.preset, args.seed
            );
            let byte: Box<dyn rollout::tokenizer::Tokenizer> = Box::new(ByteTokenizer);
            (cfg, weights, byte, name)
        }
    };
    let mut base = SamplerConfig::default();
    if let Some(g) = args.granularity {
        base.granularity = g;
    }
    let branches = if args.branch.is_empty() {
        vec![base.branch]
    } else {
        args.branch.clone()
    };
    if let Some(m) = args.initial_chains {
        base.initial_chains = m;
    }
    if let Some(n) = args.branches_per_round {
        base.branches_per_round = n;
    }
    if let Some(r) = args.root_share {
        base.root_share = r;
    }
    base.validate()?;
    let tree_settings = format!(
        "M={} root_share={} N={} granularity {}",
        base.initial_chains, base.root_share, base.branches_per_round, base.granularity
    );
    let mut policy: Box<dyn rollout::policy::Policy> = match &args.rollout_server {
        None => Box::new(Engine::new(cfg, &weights).context("building the engine")?),
        Some(url) => Box::new(rollout::server::ServerPolicy::connect(
            rollout::server::ServerConfig {
                url: url.clone(),
                ..Default::default()
            },
        )?),
    };
    drop(weights);
    let policy_name = match &args.rollout_server {
        Some(url) => format!("{policy_name} served by {url}"),
        None => policy_name,
    };
    let mut rows = Vec::new();
    for &budget in &args.budgets {
        let arms = std::iter::once((SamplerKind::Chain, None))
            .chain(branches.iter().map(|&b| (SamplerKind::Tree, Some(b))));
        for (kind, branch) in arms {
            let sc = SamplerConfig {
                kind,
                budget,
                branch: branch.unwrap_or(base.branch),
                ..base.clone()
            };
            let mut sink: Vec<TaskRollout> = Vec::new();
            let stats: SamplerStats = sample(
                &sc,
                policy.as_mut(),
                tokenizer.as_ref(),
                &tasks,
                args.seed,
                0,
                &mut sink,
            )?;
            rows.push(SamplerRow {
                bench: "sampler",
                sampler: kind.as_str(),
                branch: branch.map(BranchPolicy::as_str),
                budget,
                policy: policy_name.clone(),
                generated_tokens: stats.generated_tokens,
                trajectories: stats.trajectories,
                distinct_per_1k: stats.distinct_per_1k(),
                cache_read_share: stats.cache_read_share(),
                truncated: stats.truncated,
                success_rate: stats.success_rate(),
                mixed_groups: 1.0 - stats.zero_adv_groups as f64 / stats.groups.max(1) as f64,
                wall_ms: stats.wall_ms,
                tokens_per_s: stats.generated_tokens as f64 * 1000.0 / stats.wall_ms.max(1) as f64,
            });
        }
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "policy: {policy_name}; multihop {}, {} held-out tasks, temperature 1; tree: {}",
        spec.knob_values()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        args.tasks,
        tree_settings
    );
    println!(
        "{:>6} {:<15} {:>9} {:>6} {:>10} {:>7} {:>6} {:>8} {:>6} {:>8} {:>7}",
        "budget",
        "sampler",
        "generated",
        "traj",
        "distinct/1k",
        "cache",
        "trunc",
        "success",
        "mixed",
        "wall ms",
        "tok/s"
    );
    for r in &rows {
        let name = match r.branch {
            Some(b) => format!("{} ({b})", r.sampler),
            None => r.sampler.to_string(),
        };
        println!(
            "{:>6} {:<15} {:>9} {:>6} {:>11.2} {:>7.3} {:>6} {:>8.3} {:>6.2} {:>8} {:>7.1}",
            r.budget,
            name,
            r.generated_tokens,
            r.trajectories,
            r.distinct_per_1k,
            r.cache_read_share,
            r.truncated,
            r.success_rate,
            r.mixed_groups,
            r.wall_ms,
            r.tokens_per_s
        );
    }
    println!("\nratios tree / chain at equal budget:");
    for group in rows.chunks(1 + branches.len()) {
        let c = &group[0];
        for t in &group[1..] {
            println!(
                "  budget {:>5} {:<9}: distinct/1k x{:.2}, trajectories x{:.2}, wall x{:.2}",
                c.budget,
                t.branch.unwrap_or_default(),
                t.distinct_per_1k / c.distinct_per_1k.max(1e-9),
                t.trajectories as f64 / (c.trajectories as f64).max(1e-9),
                t.wall_ms as f64 / (c.wall_ms as f64).max(1e-9),
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct TrainRow {
    bench: &'static str,
    mode: &'static str,
    ms_per_step: f64,
    total_tokens: usize,
    unique_tokens: usize,
    rows: usize,
    padded_len: usize,
    /// `ms_per_step` per 1000 generated tokens of the sampled batch.
    ms_per_1k_generated: f64,
    /// Tokens of the batch's rows (padding excluded) per second of update.
    train_tokens_per_s: f64,
    /// 6 × matmul parameters × those tokens per second, in GFLOP/s.
    gflops: f64,
    /// The f32 GEMM peak measured in the same run.
    peak_gflops: f64,
    /// Peak resident memory of the process during this mode's updates (MiB; every mode's
    /// trainer is resident, so use `--packed-only` for one trainer's figure).
    peak_rss_mib: Option<f64>,
}

/// The policy `arbor bench train` samples its batch with, and trains.
struct BenchPolicy {
    config: ModelConfig,
    weights: Weights,
    tokenizer: Box<dyn rollout::tokenizer::Tokenizer>,
    /// The environment as the policy sees it (its chat rendering, if any).
    spec: EnvSpec,
    label: String,
}

/// A checkpoint's policy (with its run's environment, tokenizer and chat rendering when the
/// checkpoint belongs to a run), a model directory or GGUF file, or seeded random tiny weights;
/// the last two act in 2-hop multihop.
fn bench_policy(
    checkpoint: Option<&std::path::Path>,
    model: Option<&std::path::Path>,
) -> anyhow::Result<BenchPolicy> {
    let multihop = || EnvSpec::from_name("multihop", &[("hops", "2")]);
    if let Some(dir) = checkpoint {
        let resolved = crate::run::resolve_checkpoint(dir)?;
        let ckpt = trainer::checkpoint::load(&resolved.checkpoint)?;
        let label = resolved.checkpoint.display().to_string();
        let (tokenizer, spec) = match &resolved.run_config {
            Some(cfg) => {
                let loaded = cfg.model.load()?;
                let spec = cfg.task_spec(&loaded)?;
                (loaded.tokenizer, spec)
            }
            None => (
                Box::new(ByteTokenizer) as Box<dyn rollout::tokenizer::Tokenizer>,
                multihop()?,
            ),
        };
        return Ok(BenchPolicy {
            config: ckpt.model_config,
            weights: ckpt.weights,
            tokenizer,
            spec,
            label,
        });
    }
    if let Some(path) = model {
        let cfg = crate::config::TrainConfig {
            model: crate::config::ModelSection {
                dir: Some(path.to_path_buf()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut cfg = cfg;
        cfg.env.knobs.insert("hops".into(), "2".into());
        let loaded = cfg.model.load()?;
        let spec = cfg.task_spec(&loaded)?;
        let weights = loaded
            .weights
            .ok_or_else(|| anyhow::anyhow!("{} carries no weights", path.display()))?;
        return Ok(BenchPolicy {
            config: loaded.config,
            weights,
            tokenizer: loaded.tokenizer,
            spec,
            label: path.display().to_string(),
        });
    }
    let config = ModelConfig::tiny();
    let weights = Weights::random(&config, 0);
    Ok(BenchPolicy {
        config,
        weights,
        tokenizer: Box::new(ByteTokenizer),
        spec: multihop()?,
        label: "tiny with seeded random weights (seed 0)".into(),
    })
}

/// Peak resident memory of this process (Linux: `VmHWM` of `/proc/self/status`), and its reset
/// (`/proc/self/clear_refs`), so a window of work can be measured; `None` where unavailable.
mod peak_rss {
    /// Starts a new window: the peak becomes the current resident size.
    pub fn reset() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// The peak resident size since the last [`reset`], in MiB.
    pub fn mib() -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

fn train(args: &TrainBenchArgs) -> anyhow::Result<()> {
    use rollout::advantage::{Estimator, estimate};
    use trainer::attn::LayoutChoice;
    use trainer::pack::{
        LossAgg, Packing, TrainBatch, longest_trajectory, minibatches, pack_trees_capped,
    };
    use trainer::trainer::{Trainer, TrainerConfig, default_device};

    check_count("--tasks", args.tasks, MAX_BENCH_TASKS)?;
    check_count("--repeats", args.repeats, MAX_REPEATS)?;
    let BenchPolicy {
        config: cfg,
        weights,
        tokenizer,
        spec,
        label: policy,
    } = bench_policy(args.checkpoint.as_deref(), args.model.as_deref())?;
    let tasks: Vec<(u64, AnyEnv)> = (0..args.tasks as u64).map(|i| (i, spec.make(i))).collect();
    let mut engine = Engine::new(cfg.clone(), &weights)?;
    let sc = SamplerConfig {
        budget: args.budget,
        branch: args.branch,
        granularity: args.granularity,
        ..SamplerConfig::default()
    };
    let mut rollouts: Vec<TaskRollout> = Vec::new();
    let stats = sample(
        &sc,
        &mut engine,
        tokenizer.as_ref(),
        &tasks,
        0,
        0,
        &mut rollouts,
    )?;
    // Only training is measured from here: the engine's weights and KV cache go.
    drop(engine);
    let advs = estimate(Estimator::TreeGrpo, &rollouts)?;
    let groups: Vec<_> = rollouts.iter().zip(advs.iter()).collect();
    let mut rows = Vec::new();
    // `flattened` and `packed` are what training uses (attention layout chosen by the planner:
    // sparse where it saves enough); the `-dense` modes force dense masks, with packed rows cut
    // at the longest trajectory so they are never wider than the flattened rows (the layout
    // before sparse attention); `packed-whole` is one row per task group.
    // Rows: `Ok(packing)` as training builds them, `Err(cap)` tree-packed rows cut at `cap`.
    let longest = longest_trajectory(&groups);
    let all_modes = [
        ("flattened", Ok(Packing::Flat), LayoutChoice::Auto),
        ("packed", Ok(Packing::Tree), LayoutChoice::Auto),
        ("flattened-dense", Ok(Packing::Flat), LayoutChoice::Dense),
        ("packed-dense", Err(longest), LayoutChoice::Dense),
        ("packed-whole", Err(usize::MAX), LayoutChoice::Auto),
    ];
    let modes: Vec<_> = if args.packed_only {
        all_modes.into_iter().filter(|m| m.0 == "packed").collect()
    } else {
        all_modes.into_iter().collect()
    };
    let nodes: usize = rollouts.iter().map(|r| r.nodes.len()).sum();
    let generated = stats.generated_tokens;
    // Modes are timed in turn, one update each per round, and each reports its median round:
    // a slow spell of the machine then hits every mode alike instead of whichever ran during it.
    let mut setups = Vec::new();
    for (mode, rows, layout) in modes {
        let mut batches = match rows {
            Ok(packing) => minibatches(&groups, groups.len().max(1), LossAgg::TokenMean, packing)?,
            Err(cap) => vec![TrainBatch::new(pack_trees_capped(
                &groups,
                LossAgg::TokenMean,
                cap,
            )?)],
        };
        if batches.is_empty() {
            anyhow::bail!(
                "at budget {} every sampled trajectory was cut by the budget or the context \
                 (masked): nothing to train; use a larger --budget, or a --checkpoint of a run \
                 whose policy finishes its episodes",
                args.budget
            );
        }
        for b in &mut batches {
            b.layout = layout;
        }
        let tc = TrainerConfig {
            gradient_checkpointing: args.gradient_checkpointing,
            parallel_shards: args.parallel_shards,
            ..TrainerConfig::default()
        };
        let mut trainer = Trainer::from_weights(&cfg, &weights, tc, &default_device())?;
        // As a run's RL does with the default `rl.kl_coef`: a frozen copy of the policy is the
        // KL reference (its forward pass and memory are part of every update).
        if tc.ppo.kl_coef > 0.0 {
            trainer.freeze_reference();
        }
        trainer.rl_step(&batches, 1)?; // warm-up
        setups.push((mode, batches, trainer, Vec::new(), None::<f64>));
    }
    // The trainers hold their own copies: the loaded weights are not part of an update.
    drop(weights);
    let (_, peak_gflops) = rollout::engine::bench::gemm_peak(512, 3);
    for _ in 0..args.repeats.max(1) {
        for (_, batches, trainer, times, peak) in &mut setups {
            peak_rss::reset();
            let t0 = std::time::Instant::now();
            trainer.rl_step(batches, 1)?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            *peak = match (*peak, peak_rss::mib()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    for (mode, batches, _, mut times, peak) in setups {
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        let tokens: usize = batches.iter().map(|b| b.num_tokens()).sum();
        // Forward and backward: about 6 FLOPs per matmul parameter and token.
        let gflops = 6.0 * cfg.matmul_params() as f64 * tokens as f64 / (ms / 1000.0) / 1e9;
        rows.push(TrainRow {
            bench: "train",
            mode,
            train_tokens_per_s: tokens as f64 / (ms / 1000.0),
            gflops,
            peak_gflops,
            peak_rss_mib: peak,
            ms_per_step: ms,
            total_tokens: batches.iter().map(|b| b.num_tokens()).sum(),
            unique_tokens: 0,
            rows: batches.iter().map(|b| b.rows()).sum(),
            padded_len: batches.iter().map(|b| b.padded_len()).max().unwrap_or(0),
            ms_per_1k_generated: 0.0,
        });
    }
    for r in &mut rows {
        r.ms_per_1k_generated = r.ms_per_step * 1000.0 / (generated.max(1) as f64);
    }
    let header = format!(
        "policy: {policy}; {} multihop task groups, tree sampler ({} branching, {} \
         granularity), budget {}: {generated} generated tokens, {nodes} tree nodes; gradient \
         checkpointing {}, shards at a time {}, KL reference on",
        args.tasks,
        args.branch,
        args.granularity,
        args.budget,
        if args.gradient_checkpointing {
            "on"
        } else {
            "off"
        },
        match args.parallel_shards {
            0 => "all".to_string(),
            n => n.to_string(),
        }
    );
    let print_rows = |rows: &[TrainRow]| {
        println!("{header}");
        for r in rows {
            let rss = r
                .peak_rss_mib
                .map_or("-".into(), |m| format!("{:.2} GiB", m / 1024.0));
            println!(
                "{:<15} {:>9.1} ms/update  {:>7.1} ms per 1k generated  rows {:>3}  padded len \
                 {:>5}  {:>8.0} train tok/s  {:>6.1} GFLOP/s ({:>4.1}% of GEMM peak {:.1})  peak \
                 RSS {rss}",
                r.mode,
                r.ms_per_step,
                r.ms_per_1k_generated,
                r.rows,
                r.padded_len,
                r.train_tokens_per_s,
                r.gflops,
                100.0 * r.gflops / r.peak_gflops,
                r.peak_gflops
            );
        }
    };
    if args.packed_only {
        if args.json {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            print_rows(&rows);
        }
        return Ok(());
    }
    // The flattened batch forwards every trajectory's full context (total tokens); a whole
    // packed tree forwards each unique token once (the capped rows repeat some context).
    let (total, unique) = (rows[0].total_tokens, rows[4].total_tokens);
    for r in &mut rows {
        r.total_tokens = total;
        r.unique_tokens = unique;
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    print_rows(&rows);
    let ratio = total as f64 / unique.max(1) as f64;
    let speedup = rows[0].ms_per_step / rows[1].ms_per_step.max(1e-9);
    let dense = rows[2].ms_per_step / rows[3].ms_per_step.max(1e-9);
    println!(
        "total/unique tokens {total}/{unique} = {ratio:.2}; packed speedup x{speedup:.2} \
         (= {:.2} of the token ratio); with dense masks x{dense:.2} (= {:.2})",
        speedup / ratio,
        dense / ratio
    );
    Ok(())
}
