//! `arbor sweep`: one training run per point of a grid of budgets × samplers × branching
//! policies × estimators × models × seeds, a summary table and plots (DESIGN §10).
//!
//! # Layout
//! ```text
//! <out>/sft-<model>/         the shared SFT checkpoint of a model: a run directory made by
//!                            the `arbor train` code with `rl.steps = 0`
//! <out>/runs/<run>/          one ordinary run directory per grid point, named
//!                            <model>_<sampler>[-<branch>]_<estimator>_b<budget>_s<seed>
//! <out>/budget/<run>.json    the point's budgeted held-out measurement (below)
//! <out>/summary.parquet      one row per grid point (columns: [`SummaryRow`]); + summary.csv
//! <out>/curves.csv           every held-out evaluation of every run (the learning curves)
//! <out>/reach.csv            per run, the RL tokens it needed to first reach each success level
//! <out>/plots/budget_success_vs_budget.{svg,png}, tokens_per_solved_vs_budget.{svg,png},
//!             and with RL success_vs_budget, distinct_per_1k_vs_budget, success_vs_tokens
//! ```
//!
//! # Modules
//! - this one: the command (`run`) and the run directories (which to train, resume or reuse).
//! - `grid`: the axes and their points in run order, each point's config.
//! - `summary`: one row per run, `summary.parquet` / `.csv`, the printed table.
//! - `curves`: learning curves, the chain reference, tokens to reach a level.
//! - `report`: the plots against the budget.
//!
//! # Models and the capability × budget question
//! `--models tiny,small,DIR,FILE.gguf` puts presets, Hugging Face model directories and GGUF
//! files on one axis; `MODEL=N` gives a model its own SFT length (a pretrained instruct model
//! needs a few steps where a random preset needs thousands). A model is named by its *label*:
//! the preset, or the file or directory name without `.gguf`.
//!
//! Every point also measures its final policy (the run's last checkpoint, or the shared SFT
//! checkpoint) on the held-out tasks with **one rollout of its own sampler at its own budget**
//! per task, at the training temperature: `budget_success` is the share of tasks that any
//! trajectory solved, `budget_tokens_per_solved` what a solved task cost. With
//! `--rl-steps 0` this is the whole point (test-time mode: no run directory, no RL columns),
//! so one sweep answers whether a more capable model or a bigger budget solves more tasks per
//! token. Measurements are kept in `budget/` with the policy and settings they used and reused
//! when those match.
//!
//! # Learning curves and the tokens-to-reach question
//! With `eval.every = K` (`--eval-every K`) each run evaluates the held-out set every K RL
//! steps; `success_vs_tokens` draws held-out success against cumulative generated RL tokens,
//! one line per (sampler, branch, estimator, budget), mean over seeds with a ± std band (x is
//! the mean cumulative token count of the seeds at each evaluation).
//!
//! The **chain reference** is the chain sampler at the largest budget of the sweep (with the
//! `grpo` estimator when the sweep has it): its *final* held-out success, averaged over seeds,
//! is the level every run is measured against, per model. For each run,
//! `tokens_to_chain_final` is the cumulative RL token count at which its curve first reaches
//! that level (the first evaluation after RL began at or above it, linearly interpolated in
//! tokens from the evaluation before; NaN if it never gets there), and `reach_ratio` is that
//! count over the chain reference's mean total RL tokens: a tree that reaches the chain's final
//! success with a quarter of its tokens has a ratio of 0.25. Levels given with
//! `--reach 0.5,0.6` are measured the same way and listed in `reach.csv`. Evaluations are one
//! episode per held-out task at the eval temperature, so a level is reached when the success
//! rate of that fixed set is at or above it: no smoothing. `--budget-steps 128=50` gives the
//! runs of one budget another number of RL steps (a quarter budget may learn for longer).
//!
//! # Decisions
//! - **One SFT checkpoint per model**, trained once with the base config (its seed) and reused
//!   by every run and every later invocation with the same base settings. Each run continues
//!   it (`model.init`, [`crate::config::ModelSection::init`]): same weights and optimizer
//!   moments, its own seed for RL task draws, sampling, mini-batch order and the held-out
//!   evaluation stream. The spread over seeds therefore measures RL, not SFT. A run whose seed
//!   is the base seed equals `arbor train` with the same settings. With `sft.steps = 0` runs start from random weights.
//! - **Reruns are incremental.** A run directory with `summary.json` is reused, one that was
//!   interrupted after its first checkpoint is resumed, one interrupted earlier is started
//!   again. A directory written with different settings is an error (it names the first
//!   differing key) rather than silently mixed into the table.
//! - The chain sampler has no branching policy: it runs once per (budget, estimator, ...) and
//!   its `branch` column is null.
//! - Per-run numbers come from the run's own files: `summary.json` (success before/after RL,
//!   wall time) and the `rl` rows of `metrics.parquet`: `generated_tokens` and `truncated` are
//!   sums over RL steps, `tokens_per_success` = generated tokens / solved task groups,
//!   `distinct_per_1k` = distinct trajectories per 1000 generated tokens, `cache_read_share`
//!   the mean of the steps' shares.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datasets::atomic::write_atomic;
use datasets::export::{METRICS_FILE, read_metrics, writer_properties};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rollout::advantage::Estimator;
use rollout::sampler::{BranchPolicy, SamplerConfig, SamplerKind};
use trainer::checkpoint;

use crate::cli::{SweepArgs, TrainArgs};
use crate::config::{ModelSection, RlSection, TrainConfig, first_difference};
use crate::plots::{LineChart, Point, Series, write_chart};
use crate::run::{Progress, RunOptions, Summary, is_resumable};
use crate::train;

mod curves;
mod grid;
mod report;
mod summary;

use curves::*;
use grid::*;
use report::*;
use summary::*;
pub use summary::{
    SUMMARY_CSV_FILE, SUMMARY_FILE, SummaryRow, read_summary, summary_csv, summary_schema, table,
    write_summary,
};

/// The config of a model's shared SFT run: the base config's SFT, environment, seed and
/// evaluation settings with this model (and its SFT steps), no RL ([`sft_view`]).
fn sft_config(
    base: &TrainConfig,
    model: &ModelChoice,
    sweep_dir: &Path,
) -> anyhow::Result<TrainConfig> {
    let mut cfg = sft_view(base);
    model.apply(&mut cfg);
    cfg.out = sweep_dir.to_path_buf();
    cfg.name = format!("sft-{}", model.label);
    cfg.validate()?;
    Ok(cfg)
}

/// `cfg` with everything that changes neither the SFT weights nor their evaluation (the RL
/// section, the sampler except `max_action_tokens`) set to today's defaults, and no RL steps:
/// two SFT runs are interchangeable when their views are equal, so changing RL settings (or
/// their defaults) reuses the checkpoint.
fn sft_view(cfg: &TrainConfig) -> TrainConfig {
    let mut view = cfg.clone();
    view.rl = RlSection {
        steps: 0,
        export_rollouts: "none".into(),
        ..RlSection::default()
    };
    view.eval.every = 0;
    view.sampler = SamplerConfig {
        max_action_tokens: cfg.sampler.max_action_tokens,
        ..TrainConfig::default().sampler
    };
    view
}

/// What a run directory holds, relative to the config it should have.
#[derive(Debug, PartialEq)]
enum DirState {
    /// Nothing there: train it.
    New,
    /// A start interrupted before its first checkpoint (nothing worth keeping): remove it and
    /// train again.
    Restart,
    /// An interrupted run with a checkpoint: resume it.
    Resume,
    /// A finished run with these settings: reuse it.
    Done,
}

/// What to do with the run directory of `want` (see [`DirState`]); changes nothing. A
/// directory written with other settings is an error; `view` maps both configs to the
/// settings that matter before they are compared.
fn dir_state(
    want: &TrainConfig,
    view: impl Fn(&TrainConfig) -> TrainConfig,
) -> anyhow::Result<DirState> {
    let dir = want.out.join(&want.name);
    if !dir.exists() {
        return Ok(DirState::New);
    }
    let found = TrainConfig::load(&dir.join("config.toml")).with_context(|| {
        format!(
            "{} exists but is not a run of this sweep; remove it or choose another --out",
            dir.display()
        )
    })?;
    // The shared SFT checkpoint a run starts from is the sweep's choice, not a setting.
    let found = TrainConfig {
        model: ModelSection {
            init: None,
            ..found.model
        },
        ..found
    };
    let want = &TrainConfig {
        rl: crate::config::RlSection {
            lr: Some(want.rl_lr()),
            ..want.rl.clone()
        },
        ..want.clone()
    };
    let (found, want) = (view(&found), view(want));
    if found != want {
        let diff = first_difference(&found, &want).unwrap_or_else(|| "settings differ".into());
        bail!(
            "{} was made with other settings ({diff}); remove it or choose another --out",
            dir.display()
        );
    }
    if dir.join("summary.json").is_file() {
        return Ok(DirState::Done);
    }
    Ok(if is_resumable(&dir) {
        DirState::Resume
    } else {
        DirState::Restart
    })
}

/// Trains, resumes or reuses the run of `cfg` as `state` says; returns its directory.
fn ensure_run(cfg: &TrainConfig, state: &DirState, init: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut cfg = cfg.clone();
    cfg.model.init = init.map(Path::to_path_buf);
    let dir = cfg.out.join(&cfg.name);
    if *state == DirState::Restart {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the incomplete run {}", dir.display()))?;
    }
    if *state != DirState::Done {
        let opts = RunOptions {
            resume: *state == DirState::Resume,
            quiet: true,
        };
        train::run_config(cfg.clone(), &opts).with_context(|| format!("run {}", cfg.name))?;
    }
    Ok(dir)
}

/// Makes sure the shared SFT checkpoint of `cfg` exists and loads; returns its `step-N`
/// directory.
fn ensure_sft(
    cfg: &TrainConfig,
    state: &DirState,
    say: &dyn Fn(String),
) -> anyhow::Result<PathBuf> {
    let dir = cfg.out.join(&cfg.name);
    match state {
        DirState::Done => say(format!("{}: reusing the SFT checkpoint", dir.display())),
        _ => say(format!(
            "{}: training the shared SFT checkpoint ({} steps)",
            dir.display(),
            cfg.sft.steps
        )),
    }
    let dir = ensure_run(cfg, state, None)?;
    let latest = checkpoint::latest(&dir.join("checkpoints"))
        .with_context(|| format!("SFT checkpoint in {}", dir.display()))?;
    let ckpt = checkpoint::load(&latest).with_context(|| {
        format!(
            "SFT checkpoint {} does not load; remove {} to retrain it",
            latest.display(),
            dir.display()
        )
    })?;
    if ckpt.state.sft_steps != cfg.sft.steps as u64 {
        bail!(
            "SFT checkpoint {} has {} SFT steps, expected {}; remove {} to retrain it",
            latest.display(),
            ckpt.state.sft_steps,
            cfg.sft.steps,
            dir.display()
        );
    }
    Ok(latest)
}

/// The row of a test-time point (no RL): the held-out success of its model's shared SFT run
/// before and after (NaN without SFT), no RL counters; the budget columns are filled by the
/// caller.
fn test_time_row(point: &GridPoint, env: &str, sft: &TrainConfig) -> anyhow::Result<SummaryRow> {
    let sft_dir = sft.out.join(&sft.name);
    let (success, dir) = match sft.sft.steps {
        0 => (f64::NAN, PathBuf::new()),
        _ => (Summary::load(&sft_dir)?.success_after, sft_dir),
    };
    Ok(SummaryRow {
        success_before: success,
        success_after: success,
        ..point_row(point, env, &dir)
    })
}

/// `budget/<run>.json`: a budgeted evaluation and what it was measured with.
#[derive(serde::Serialize, serde::Deserialize)]
struct BudgetFile {
    /// The policy and settings (`Debug` text of the checkpoint path and its weights' write
    /// time, sampler, environment, model, episodes and seed): a file with another key is
    /// measured again.
    key: String,
    result: crate::evaluate::BudgetResult,
}

/// The held-out tasks solved by `cfg`'s sampler at its budget with the policy in `policy` (a
/// checkpoint; `None`: the model's initial weights), measured once and kept in `dir`.
fn budget_eval(
    cfg: &TrainConfig,
    policy: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<crate::evaluate::BudgetResult> {
    // A retrained checkpoint at the same path has new weights: their file's time is in the key.
    let written = policy.and_then(|p| {
        std::fs::metadata(p.join(checkpoint::MODEL_FILE))
            .and_then(|m| m.modified())
            .ok()
    });
    let key = format!(
        "{policy:?} {written:?} {:?} {:?} {:?} {} {}",
        cfg.sampler, cfg.env, cfg.model, cfg.eval.episodes, cfg.seed
    );
    let path = dir.join(format!("{}.json", cfg.name));
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(found) = serde_json::from_str::<BudgetFile>(&text)
        && found.key == key
    {
        return Ok(found.result);
    }
    let model = cfg.model.load()?;
    let spec = cfg.task_spec(&model)?;
    let (model_config, weights) = match policy {
        Some(p) => {
            let ckpt = checkpoint::load(p)
                .with_context(|| format!("cannot load checkpoint {}", p.display()))?;
            (ckpt.model_config, ckpt.weights)
        }
        None => match &model.weights {
            Some(w) => (model.config.clone(), w.clone()),
            None => {
                let t = trainer::Trainer::new(&model.config, crate::run::trainer_config(cfg))?;
                (model.config.clone(), t.weights())
            }
        },
    };
    let mut engine = rollout::engine::Engine::new(model_config, &weights)?;
    engine.set_kv_precision(cfg.rollout.kv_cache);
    let ids =
        datasets::TaskSet::new(spec.clone(), datasets::Split::Train).eval_ids(cfg.eval.episodes);
    let result = crate::evaluate::evaluate_at_budget(
        &mut engine,
        model.tokenizer.as_ref(),
        &spec,
        &ids,
        &cfg.sampler,
        cfg.seed,
    )?;
    let file = BudgetFile { key, result };
    write_atomic(&path, serde_json::to_string_pretty(&file)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(result)
}

/// Runs `arbor sweep`.
pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let targs = TrainArgs {
        config: args.config.clone(),
        sets: args.sets.clone(),
        env: args.env.clone(),
        steps: args.steps,
        sft_steps: args.sft_steps,
        episodes: args.episodes,
        quiet: true,
        ..TrainArgs::default()
    };
    let mut base = train::resolve(&targs)?;
    if let Some(k) = args.eval_every {
        base.eval.every = k;
    }
    if args.reach.iter().any(|l| !(0.0..=1.0).contains(l)) {
        bail!("--reach levels must be success rates in [0, 1]");
    }
    let sweep_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweeps").join(&base.env.name));
    let runs_dir = sweep_dir.join("runs");
    let points = grid(&args, &base)?;
    let budget_steps = parse_budget_steps(&args.budget_steps)?;
    if let Some(b) = budget_steps.keys().find(|b| !args.budgets.contains(b)) {
        bail!("--budget-steps names budget {b}, which is not in --budgets");
    }
    // Validate every run's config before anything is written.
    let configs = points
        .iter()
        .map(|p| p.config(&base, &runs_dir, &budget_steps))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let models = dedup(&points.iter().map(|p| p.model.clone()).collect::<Vec<_>>());
    let sft_configs = models
        .iter()
        .map(|m| sft_config(&base, m, &sweep_dir).map(|c| (m.label.clone(), c)))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    base.env_spec()?;
    // Every run (and shared SFT run) must be able to run: task set and model, once per
    // distinct environment, model and task needs.
    let mut checked = std::collections::BTreeSet::new();
    for cfg in configs.iter().chain(sft_configs.values()) {
        let key = format!(
            "{:?} {:?} {} {} {}",
            cfg.env,
            cfg.model,
            cfg.rl.steps > 0,
            cfg.rl.tasks_per_step,
            cfg.eval.episodes
        );
        if checked.insert(key) {
            crate::run::check(cfg).with_context(|| format!("run {}", cfg.name))?;
        }
    }
    // Check every existing directory before training anything.
    let mut sft_states = BTreeMap::new();
    for (label, cfg) in &sft_configs {
        if cfg.sft.steps > 0 {
            sft_states.insert(label.clone(), dir_state(cfg, sft_view)?);
        }
    }
    // A point without RL steps is test-time only: it measures its model's shared SFT policy
    // at its budget and has no run directory.
    let states = configs
        .iter()
        .map(|c| match c.rl.steps {
            0 => Ok(DirState::Done),
            _ => dir_state(c, TrainConfig::clone),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;

    let quiet = args.quiet;
    let say = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let done = (states.iter().zip(&configs))
        .filter(|(s, c)| **s == DirState::Done && c.rl.steps > 0)
        .count();
    say(format!(
        "arbor sweep: {} points of {} RL steps{} ({done} runs already finished) into {}",
        points.len(),
        base.rl.steps,
        budget_steps
            .iter()
            .map(|(b, s)| format!(", {s} at budget {b}"))
            .collect::<String>(),
        sweep_dir.display()
    ));
    let mut inits: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for (label, cfg) in &sft_configs {
        let init = match sft_states.get(label) {
            Some(state) => Some(ensure_sft(cfg, state, &say)?),
            None => None,
        };
        inits.insert(label.clone(), init);
    }
    let budget_dir = sweep_dir.join("budget");
    std::fs::create_dir_all(&budget_dir)
        .with_context(|| format!("creating {}", budget_dir.display()))?;

    let bar = Progress::bar_only(points.len() as u64, "sweep", quiet);
    let mut rows = Vec::with_capacity(points.len());
    let mut curves = Vec::with_capacity(points.len());
    for (i, ((point, cfg), state)) in points.iter().zip(&configs).zip(&states).enumerate() {
        let init = inits.get(&point.model.label).cloned().flatten();
        let sft = &sft_configs[&point.model.label];
        let (mut row, policy) = if cfg.rl.steps == 0 {
            let row = test_time_row(point, &base.env.name, sft)?;
            curves.push(Vec::new());
            (row, init.clone())
        } else {
            let dir = ensure_run(cfg, state, init.as_deref())?;
            curves.push(curve(&dir)?);
            let latest = checkpoint::latest(&dir.join("checkpoints"))
                .with_context(|| format!("final checkpoint of {}", dir.display()))?;
            (summary_row(point, &base.env.name, &dir)?, Some(latest))
        };
        let measured = budget_eval(cfg, policy.as_deref(), &budget_dir)?;
        row.budget_success = measured.success;
        row.budget_tokens_per_solved = measured.tokens_per_solved();
        row.budget_tokens = measured.generated_tokens;
        if !quiet {
            let how = match state {
                _ if cfg.rl.steps == 0 => "test-time",
                DirState::Done => "reused",
                DirState::Resume => "resumed",
                DirState::New | DirState::Restart => "trained",
            };
            bar.suspend(|| {
                eprintln!(
                    "[{}/{}] {} ({how}): success {:.3} -> {:.3}, {} tokens, {:.0}s; within \
                     the budget {}/{} held-out tasks, {} tokens",
                    i + 1,
                    points.len(),
                    cfg.name,
                    row.success_before,
                    row.success_after,
                    row.generated_tokens,
                    row.wall_s,
                    measured.solved,
                    measured.tasks,
                    measured.generated_tokens
                )
            });
        }
        rows.push(row);
        bar.inc(cfg.name.clone());
    }
    bar.finish();
    fill_reach(&mut rows, &curves);

    write_summary(&sweep_dir.join(SUMMARY_FILE), &rows)?;
    for (name, text) in [
        ("curves.csv", curves_csv(&rows, &curves)),
        ("reach.csv", reach_csv(&rows, &curves, &args.reach)),
    ] {
        write_atomic(&sweep_dir.join(name), text.as_bytes())
            .with_context(|| format!("writing {}", sweep_dir.join(name).display()))?;
    }
    write_atomic(
        &sweep_dir.join(SUMMARY_CSV_FILE),
        summary_csv(&rows).as_bytes(),
    )
    .with_context(|| format!("writing {}", sweep_dir.join(SUMMARY_CSV_FILE).display()))?;
    let plots = write_plots(&sweep_dir.join("plots"), &rows, &curves)?;
    print!("{}", table(&rows));
    println!(
        "wrote {}, {} and {} plots in {}",
        sweep_dir.join(SUMMARY_FILE).display(),
        SUMMARY_CSV_FILE,
        plots.len(),
        sweep_dir.join("plots").display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// summary.parquet / summary.csv

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sampler: &str, budget: u32, seed: u64, after: f64) -> SummaryRow {
        SummaryRow {
            env: "multihop".into(),
            model: "tiny".into(),
            sampler: sampler.into(),
            branch: (sampler == "tree").then(|| "random".to_string()),
            estimator: "tree-grpo".into(),
            budget,
            seed,
            success_before: 0.25,
            success_after: after,
            generated_tokens: 1000,
            tokens_per_success: f64::NAN,
            distinct_per_1k: 4.5,
            cache_read_share: 0.1,
            truncated: 2,
            wall_s: 3.5,
            tokens_to_chain_final: f64::NAN,
            reach_ratio: f64::NAN,
            budget_success: 0.5,
            budget_tokens_per_solved: f64::NAN,
            budget_tokens: 7,
            run_dir: "sweeps/x/runs/a,b".into(),
        }
    }

    #[test]
    fn summary_round_trips_through_parquet_and_csv() {
        let rows = vec![row("chain", 256, 0, 0.5), row("tree", 512, 1, 0.75)];
        let dir = std::env::temp_dir().join(format!("arbor-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(SUMMARY_FILE);
        write_summary(&path, &rows).unwrap();
        let back = read_summary(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].branch, None);
        assert_eq!(back[1].branch.as_deref(), Some("random"));
        assert!(back[0].tokens_per_success.is_nan());
        assert_eq!(back[1].success_after, 0.75);
        let csv = summary_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0].split(',').count(), SummaryRow::COLUMNS.len());
        assert_eq!(SummaryRow::COLUMNS.len(), summary_schema().fields().len());
        // Every column survives Parquet (NaN included: the CSV texts are equal).
        assert_eq!(summary_csv(&back), csv);
        assert!(lines[1].starts_with("multihop,tiny,chain,,tree-grpo,256,0,0.25,0.5,1000,NaN,"));
        assert!(lines[1].ends_with(",\"sweeps/x/runs/a,b\""), "{}", lines[1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mean_std_is_the_sample_std() {
        assert_eq!(mean_std(&[1.0]), (1.0, 0.0));
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!(m, 2.0);
        assert_eq!(s, 1.0);
        assert!(mean_std(&[]).0.is_nan());
    }

    #[test]
    fn lines_average_over_seeds() {
        let rows = vec![
            row("chain", 256, 0, 0.5),
            row("chain", 256, 1, 0.7),
            row("tree", 256, 0, 0.9),
            row("tree", 256, 1, 0.9),
        ];
        let l = lines(&rows, |r| r.success_after);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].label, "chain");
        assert!((l[0].points[0].mean - 0.6).abs() < 1e-12);
        assert!((l[0].points[0].std - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(l[1].label, "tree");
        assert_eq!(l[1].points[0].std, 0.0);
        let t = table(&rows);
        assert!(t.contains("mean ± std over 2 seeds"), "{t}");
    }

    fn pt(rl_step: u64, tokens: u64, success: f64) -> CurvePoint {
        CurvePoint {
            rl_step,
            tokens,
            success,
            stderr: 0.0,
        }
    }

    /// The chain reference is the chain at the largest budget (grpo preferred): its final
    /// success averaged over seeds; each run's tokens to first reach it, over the reference's
    /// mean total tokens.
    #[test]
    fn reach_is_measured_against_the_chain_reference() {
        let mut rows = vec![
            row("chain", 512, 0, 0.6),
            row("chain", 512, 1, 0.6),
            row("tree", 128, 0, 0.7),
            row("tree", 128, 1, 0.5),
            row("chain", 128, 0, 0.9),
        ];
        for r in &mut rows[..2] {
            r.estimator = "grpo".into();
            r.generated_tokens = 4000;
        }
        let curves = vec![
            vec![pt(0, 0, 0.3), pt(5, 2000, 0.5), pt(10, 4000, 0.6)],
            vec![pt(0, 0, 0.3), pt(5, 2000, 0.7), pt(10, 4000, 0.8)],
            // Reference level (0.6 + 0.8)/2 = 0.7, mean total 4000 tokens.
            vec![pt(0, 0, 0.3), pt(5, 500, 0.69), pt(10, 1000, 0.7)],
            vec![pt(0, 0, 0.3), pt(5, 500, 0.4), pt(10, 1000, 0.5)],
            vec![pt(0, 0, 0.3), pt(5, 500, 0.9)],
        ];
        assert_eq!(chain_reference(&rows, &curves, "tiny"), Some((0.7, 4000.0)));
        assert_eq!(chain_reference(&rows, &curves, "small"), None);
        // The evaluation before RL never counts as reaching a level; crossings interpolate.
        assert_eq!(tokens_to_reach(&curves[3], 0.3), Some(500.0));
        assert_eq!(tokens_to_reach(&curves[3], 0.45), Some(750.0));
        fill_reach(&mut rows, &curves);
        // 0.69 at 500 tokens, 0.7 at 1000: the crossing is at 1000.
        assert_eq!(rows[2].tokens_to_chain_final, 1000.0);
        assert_eq!(rows[2].reach_ratio, 0.25);
        assert!(rows[3].reach_ratio.is_nan());
        // 0.3 at 0 tokens, 0.7 at 2000: exactly at the second evaluation.
        assert_eq!(rows[1].tokens_to_chain_final, 2000.0);
        let csv = reach_csv(&rows, &curves, &[0.5]);
        assert!(
            csv.contains("tree,random,tree-grpo,128,0,chain_final,0.7,1000,0.25"),
            "{csv}"
        );
        assert!(
            csv.contains("tree,random,tree-grpo,128,1,0.5,0.5,1000,0.25"),
            "{csv}"
        );
        assert!(
            csv.contains("tree,random,tree-grpo,128,1,chain_final,0.7,,"),
            "{csv}"
        );
        let chart = curve_chart(&rows, &curves, "");
        let tree = chart
            .series
            .iter()
            .find(|s| s.label.contains("B=128"))
            .unwrap();
        assert!(tree.label.starts_with("tree"));
        assert_eq!(tree.points[1].x, 500.0);
        assert!((tree.points[1].mean - 0.545).abs() < 1e-12);
        assert!(chart.series.last().unwrap().reference);
        assert!(
            table(&rows).contains("0.25 ± 0.00 (1/2)"),
            "{}",
            table(&rows)
        );
    }

    #[test]
    fn budget_steps_parse_and_reject_garbage() {
        let m = parse_budget_steps(&["128=50".into(), " 512 = 25".into()]).unwrap();
        assert_eq!(m, BTreeMap::from([(128, 50), (512, 25)]));
        let err = parse_budget_steps(&["128:50".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BUDGET=STEPS"), "{err}");
        let base = TrainConfig::default();
        let p = GridPoint {
            model: ModelChoice::of_config(&base),
            sampler: SamplerKind::Tree,
            branch: None,
            estimator: Estimator::Grpo,
            budget: 128,
            seed: 0,
        };
        let cfg = p.config(&base, Path::new("runs"), &m).unwrap();
        assert_eq!(cfg.rl.steps, 50);
    }

    #[test]
    fn first_difference_names_the_key() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        b.rl.steps += 1;
        let d = first_difference(&a, &b).unwrap();
        let want = format!("rl.steps: found {}, expected {}", a.rl.steps, b.rl.steps);
        assert_eq!(d, want);
        assert_eq!(first_difference(&a, &a), None);
    }
}
