//! `arbor sweep`: one training run per point of a grid of budgets × samplers × branching
//! policies × estimators × model presets × seeds, a summary table and plots (DESIGN §10).
//!
//! # Layout
//! ```text
//! <out>/sft-<preset>/        the shared SFT checkpoint of a preset: a run directory made by
//!                            the `arbor train` code with `rl.steps = 0`
//! <out>/runs/<run>/          one ordinary run directory per grid point, named
//!                            <preset>_<sampler>[-<branch>]_<estimator>_b<budget>_s<seed>
//! <out>/summary.parquet      one row per grid point (columns: [`SummaryRow`]); + summary.csv
//! <out>/curves.csv           every held-out evaluation of every run (the learning curves)
//! <out>/reach.csv            per run, the RL tokens it needed to first reach each success level
//! <out>/plots/success_vs_budget.{svg,png}, distinct_per_1k_vs_budget.{svg,png},
//!             success_vs_tokens.{svg,png}
//! ```
//!
//! # Learning curves and the tokens-to-reach question
//! With `eval.every = K` (`--eval-every K`) each run evaluates the held-out set every K RL
//! steps; `success_vs_tokens` draws held-out success against cumulative generated RL tokens,
//! one line per (sampler, branch, estimator, budget), mean over seeds with a ± std band (x is
//! the mean cumulative token count of the seeds at each evaluation).
//!
//! The **chain reference** is the chain sampler at the largest budget of the sweep (with the
//! `grpo` estimator when the sweep has it): its *final* held-out success, averaged over seeds,
//! is the level every run is measured against, per model preset. For each run,
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
//! - **One SFT checkpoint per preset**, trained once with the base config (its seed) and reused
//!   by every run and every later invocation with the same base settings. Each run continues
//!   it (`model.init`, [`crate::config::ModelSection::init`]): same weights and optimizer moments, its own seed for
//!   RL task draws, sampling, mini-batch order and the held-out evaluation stream. The spread
//!   over seeds therefore measures RL, not SFT. A run whose seed is the base seed equals
//!   `arbor train` with the same settings. With `sft.steps = 0` runs start from random weights.
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

/// File name of the sweep table.
pub const SUMMARY_FILE: &str = "summary.parquet";
/// File name of its CSV copy.
pub const SUMMARY_CSV_FILE: &str = "summary.csv";

/// One row of `summary.parquet`: one run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Environment name.
    pub env: String,
    /// Model preset.
    pub preset: String,
    /// Sampler (`chain` or `tree`).
    pub sampler: String,
    /// Branching policy of the tree sampler; `None` for chain.
    pub branch: Option<String>,
    /// Advantage estimator.
    pub estimator: String,
    /// Per-task token budget.
    pub budget: u32,
    /// Seed of the run.
    pub seed: u64,
    /// Held-out success before RL (after the shared SFT).
    pub success_before: f64,
    /// Held-out success after RL.
    pub success_after: f64,
    /// Tokens generated by RL sampling (sum over steps).
    pub generated_tokens: u64,
    /// Generated tokens per solved task group over all RL steps (NaN when none was solved).
    pub tokens_per_success: f64,
    /// Distinct trajectories per 1000 generated tokens over all RL steps.
    pub distinct_per_1k: f64,
    /// Mean over RL steps of the share of context served from the prefix cache.
    pub cache_read_share: f64,
    /// Trajectories cut by the budget (sum over steps).
    pub truncated: u64,
    /// Wall time of the run in seconds (SFT excluded: it is shared).
    pub wall_s: f64,
    /// RL tokens generated before the run's first held-out evaluation at or above the chain
    /// reference's final success (module docs); NaN if it never reached it.
    pub tokens_to_chain_final: f64,
    /// `tokens_to_chain_final` over the chain reference's mean total RL tokens.
    pub reach_ratio: f64,
    /// The run directory.
    pub run_dir: String,
}

/// One held-out evaluation of a run (a `phase = "eval"` row of its metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// RL steps completed before the evaluation.
    pub rl_step: u64,
    /// RL tokens generated before it.
    pub tokens: u64,
    /// Held-out success.
    pub success: f64,
    /// Its standard error.
    pub stderr: f64,
}

/// The learning curve of a run, from its `metrics.parquet`, in step order.
fn curve(dir: &Path) -> anyhow::Result<Vec<CurvePoint>> {
    let mut points: Vec<CurvePoint> = read_metrics(dir.join(METRICS_FILE))?
        .iter()
        .filter(|m| m.phase == "eval")
        .map(|m| CurvePoint {
            rl_step: m.step,
            tokens: m.cumulative_generated_tokens,
            success: m.success_rate,
            stderr: m.success_stderr,
        })
        .collect();
    points.sort_by_key(|p| p.rl_step);
    Ok(points)
}

/// RL tokens at which `curve` first reaches `level`: the first evaluation after at least one
/// RL step whose success is at least `level`, linearly interpolated in tokens from the
/// evaluation before it (so runs evaluated at different token intervals, such as budgets B and
/// B/4 with the same `eval.every`, are measured alike). The evaluation before RL does not count
/// as reaching a level: a level the SFT policy already meets is not reached by RL at no cost.
fn tokens_to_reach(curve: &[CurvePoint], level: f64) -> Option<f64> {
    let mut prev: Option<&CurvePoint> = None;
    for p in curve {
        if p.rl_step > 0 && p.success >= level - 1e-12 {
            let at = match prev {
                Some(q) if q.success < level && p.success > q.success => {
                    let share = (level - q.success) / (p.success - q.success);
                    q.tokens as f64 + share * (p.tokens as f64 - q.tokens as f64)
                }
                _ => p.tokens as f64,
            };
            return Some(at);
        }
        prev = Some(p);
    }
    None
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq)]
struct GridPoint {
    preset: String,
    sampler: SamplerKind,
    branch: Option<BranchPolicy>,
    estimator: Estimator,
    budget: u32,
    seed: u64,
}

impl GridPoint {
    /// The run directory name.
    fn name(&self) -> String {
        let branch = self.branch.map(|b| format!("-{b}")).unwrap_or_default();
        format!(
            "{}_{}{branch}_{}_b{}_s{}",
            self.preset, self.sampler, self.estimator, self.budget, self.seed
        )
    }

    /// The run's config: the base with this point's values (and its budget's RL steps from
    /// `--budget-steps`, if given).
    fn config(
        &self,
        base: &TrainConfig,
        runs_dir: &Path,
        budget_steps: &BTreeMap<u32, usize>,
    ) -> anyhow::Result<TrainConfig> {
        let mut cfg = base.clone();
        if let Some(&steps) = budget_steps.get(&self.budget) {
            cfg.rl.steps = steps;
        }
        cfg.model.preset = self.preset.clone();
        cfg.sampler.kind = self.sampler;
        if let Some(b) = self.branch {
            cfg.sampler.branch = b;
        }
        cfg.rl.estimator = self.estimator;
        cfg.sampler.budget = self.budget;
        cfg.seed = self.seed;
        cfg.out = runs_dir.to_path_buf();
        cfg.name = self.name();
        cfg.validate()
            .with_context(|| format!("run {}", cfg.name))?;
        Ok(cfg)
    }
}

/// Parses `--budget-steps` entries `BUDGET=STEPS`.
fn parse_budget_steps(entries: &[String]) -> anyhow::Result<BTreeMap<u32, usize>> {
    let mut out = BTreeMap::new();
    for e in entries {
        let parsed = e
            .split_once('=')
            .and_then(|(b, s)| Some((b.trim().parse().ok()?, s.trim().parse().ok()?)));
        let (budget, steps) =
            parsed.ok_or_else(|| anyhow!("--budget-steps: '{e}' is not BUDGET=STEPS"))?;
        if out.insert(budget, steps).is_some_and(|s| s != steps) {
            bail!("--budget-steps gives budget {budget} two step counts");
        }
    }
    Ok(out)
}

/// Parses a comma-separated axis, dropping repeats (first occurrence kept).
fn axis<T: PartialEq, E: std::fmt::Display>(
    flag: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, E>,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for v in values {
        let v = v.trim();
        let parsed = parse(v).map_err(|e| anyhow!("--{flag}: {e}"))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

fn dedup<T: PartialEq + Clone>(values: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// The grid, in run order: preset, seed, estimator, sampler, branch, budget (so the runs of
/// one seed complete a whole table before the next seed starts).
fn grid(args: &SweepArgs, base: &TrainConfig) -> anyhow::Result<Vec<GridPoint>> {
    let samplers = dedup(&args.samplers);
    let branches = if args.branches.is_empty() {
        vec![base.sampler.branch]
    } else {
        dedup(&args.branches)
    };
    let estimators = if args.estimators.is_empty() {
        vec![base.rl.estimator]
    } else {
        dedup(&args.estimators)
    };
    let presets = if args.presets.is_empty() {
        vec![base.model.preset.clone()]
    } else {
        axis("presets", &args.presets, |p| {
            rollout::engine::ModelConfig::preset(p).map(|_| p.to_string())
        })?
    };
    let budgets = dedup(&args.budgets);
    let seeds = dedup(&args.seeds);
    for (flag, empty) in [
        ("budgets", budgets.is_empty()),
        ("samplers", samplers.is_empty()),
        ("seeds", seeds.is_empty()),
    ] {
        if empty {
            bail!("--{flag} needs at least one value");
        }
    }
    let mut points = Vec::new();
    for preset in &presets {
        for &seed in &seeds {
            for &estimator in &estimators {
                for &sampler in &samplers {
                    let branch_axis: Vec<Option<BranchPolicy>> = match sampler {
                        SamplerKind::Chain => vec![None],
                        SamplerKind::Tree => branches.iter().copied().map(Some).collect(),
                    };
                    for branch in branch_axis {
                        for &budget in &budgets {
                            points.push(GridPoint {
                                preset: preset.clone(),
                                sampler,
                                branch,
                                estimator,
                                budget,
                                seed,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(points)
}

/// The config of a preset's shared SFT run: the base config's SFT, environment, model, seed
/// and evaluation settings, no RL ([`sft_view`]).
fn sft_config(base: &TrainConfig, preset: &str, sweep_dir: &Path) -> anyhow::Result<TrainConfig> {
    let mut cfg = sft_view(base);
    cfg.model.preset = preset.to_string();
    cfg.out = sweep_dir.to_path_buf();
    cfg.name = format!("sft-{preset}");
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

/// Reads the numbers of a finished run from its `summary.json` and `metrics.parquet`.
fn summary_row(point: &GridPoint, env: &str, dir: &Path) -> anyhow::Result<SummaryRow> {
    let summary = Summary::load(dir)?;
    let metrics = read_metrics(dir.join(METRICS_FILE))?;
    let rl: Vec<_> = metrics.iter().filter(|m| m.phase == "rl").collect();
    let generated: u64 = rl.iter().map(|m| m.generated_tokens).sum();
    // Solved groups per step, recovered exactly from tokens_per_success = generated / solved.
    let solved: f64 = rl
        .iter()
        .filter(|m| m.tokens_per_success.is_finite() && m.tokens_per_success > 0.0)
        .map(|m| (m.generated_tokens as f64 / m.tokens_per_success).round())
        .sum();
    let distinct: u64 = rl.iter().map(|m| m.distinct_trajectories).sum();
    let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { f64::NAN };
    Ok(SummaryRow {
        env: env.to_string(),
        preset: point.preset.clone(),
        sampler: point.sampler.to_string(),
        branch: point.branch.map(|b| b.to_string()),
        estimator: point.estimator.to_string(),
        budget: point.budget,
        seed: point.seed,
        success_before: summary.success_before,
        success_after: summary.success_after,
        generated_tokens: generated,
        tokens_per_success: ratio(generated as f64, solved),
        distinct_per_1k: ratio(1000.0 * distinct as f64, generated as f64),
        cache_read_share: ratio(rl.iter().map(|m| m.cache_read_share).sum(), rl.len() as f64),
        truncated: rl.iter().map(|m| m.truncated).sum(),
        wall_s: summary.wall_s,
        tokens_to_chain_final: f64::NAN,
        reach_ratio: f64::NAN,
        run_dir: dir.display().to_string(),
    })
}

/// The chain reference of a sweep's runs of model `preset` (module docs): its final success
/// level (mean over seeds) and mean total RL tokens; `None` without a chain run.
fn chain_reference(
    rows: &[SummaryRow],
    curves: &[Vec<CurvePoint>],
    preset: &str,
) -> Option<(f64, f64)> {
    let chains: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].sampler == "chain" && rows[i].preset == preset)
        .collect();
    let budget = chains.iter().map(|&i| rows[i].budget).max()?;
    let at_budget: Vec<usize> = chains
        .into_iter()
        .filter(|&i| rows[i].budget == budget)
        .collect();
    let grpo: Vec<usize> = at_budget
        .iter()
        .copied()
        .filter(|&i| rows[i].estimator == "grpo")
        .collect();
    let refs = if grpo.is_empty() { at_budget } else { grpo };
    let finals: Vec<f64> = refs
        .iter()
        .map(|&i| {
            curves[i]
                .last()
                .map_or(rows[i].success_after, |p| p.success)
        })
        .collect();
    let tokens: Vec<f64> = refs
        .iter()
        .map(|&i| rows[i].generated_tokens as f64)
        .collect();
    let (level, _) = mean_std(&finals);
    let (total, _) = mean_std(&tokens);
    Some((level, total))
}

/// The presets of the rows, in order of first appearance.
fn presets_of(rows: &[SummaryRow]) -> Vec<String> {
    dedup(&rows.iter().map(|r| r.preset.clone()).collect::<Vec<_>>())
}

/// The chain reference of every preset that has one, by preset.
fn chain_references(
    rows: &[SummaryRow],
    curves: &[Vec<CurvePoint>],
) -> BTreeMap<String, (f64, f64)> {
    presets_of(rows)
        .into_iter()
        .filter_map(|p| chain_reference(rows, curves, &p).map(|r| (p, r)))
        .collect()
}

/// Fills `tokens_to_chain_final` and `reach_ratio` of every row (against its preset's chain
/// reference).
fn fill_reach(rows: &mut [SummaryRow], curves: &[Vec<CurvePoint>]) {
    let refs = chain_references(rows, curves);
    for (r, c) in rows.iter_mut().zip(curves) {
        let Some(&(level, total)) = refs.get(&r.preset) else {
            continue;
        };
        if let Some(t) = tokens_to_reach(c, level) {
            r.tokens_to_chain_final = t;
            r.reach_ratio = if total > 0.0 { t / total } else { f64::NAN };
        }
    }
}

/// The columns that name a run in `curves.csv` and `reach.csv`: env, preset, sampler, branch,
/// estimator, budget, seed.
fn run_columns(r: &SummaryRow) -> String {
    format!(
        "{},{},{},{},{},{},{}",
        r.env,
        r.preset,
        r.sampler,
        r.branch.as_deref().unwrap_or(""),
        r.estimator,
        r.budget,
        r.seed
    )
}

/// `curves.csv`: one line per held-out evaluation of every run.
fn curves_csv(rows: &[SummaryRow], curves: &[Vec<CurvePoint>]) -> String {
    let mut out = String::from(
        "env,preset,sampler,branch,estimator,budget,seed,rl_step,cumulative_generated_tokens,\
         success,stderr\n",
    );
    for (r, c) in rows.iter().zip(curves) {
        for p in c {
            let _ = writeln!(
                out,
                "{},{},{},{},{}",
                run_columns(r),
                p.rl_step,
                p.tokens,
                p.success,
                p.stderr
            );
        }
    }
    out
}

/// `reach.csv`: per run and level (`chain_final` first, then `--reach` levels), the RL tokens
/// it needed to first reach the level (empty if never) and their ratio to the chain
/// reference's mean total RL tokens.
fn reach_csv(rows: &[SummaryRow], curves: &[Vec<CurvePoint>], levels: &[f64]) -> String {
    let mut out = String::from(
        "env,preset,sampler,branch,estimator,budget,seed,level_name,level,tokens,ratio_to_chain\n",
    );
    let refs = chain_references(rows, curves);
    for (r, c) in rows.iter().zip(curves) {
        let reference = refs.get(&r.preset).copied();
        let mut named: Vec<(String, f64)> = Vec::new();
        if let Some((level, _)) = reference {
            named.push(("chain_final".into(), level));
        }
        named.extend(levels.iter().map(|&l| (format!("{l}"), l)));
        let total = reference.map_or(f64::NAN, |(_, t)| t);
        let ratio = |t: f64| {
            if total > 0.0 {
                format!("{}", t / total)
            } else {
                String::new()
            }
        };
        for (name, level) in &named {
            let tokens = tokens_to_reach(c, *level);
            let _ = writeln!(
                out,
                "{},{},{},{},{}",
                run_columns(r),
                name,
                level,
                tokens.map_or(String::new(), |t| format!("{t:.0}")),
                tokens.map_or(String::new(), ratio),
            );
        }
    }
    out
}

/// `success_vs_tokens`: held-out success against cumulative generated RL tokens, one line per
/// (sampler, branch, estimator, budget), mean ± std over seeds at each evaluation, and the
/// chain reference's final success as a dashed line.
fn curve_chart(rows: &[SummaryRow], curves: &[Vec<CurvePoint>], over: &str) -> LineChart {
    let mut groups: Vec<(SeriesKey, u32)> = Vec::new();
    for r in rows {
        let g = (series_key(r), r.budget);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut series: Vec<Series> = groups
        .iter()
        .map(|(key, budget)| {
            let members: Vec<&Vec<CurvePoint>> = rows
                .iter()
                .zip(curves)
                .filter(|(r, _)| series_key(r) == *key && r.budget == *budget)
                .map(|(_, c)| c)
                .collect();
            let mut by_step: BTreeMap<u64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
            for c in &members {
                for p in c.iter() {
                    let e = by_step.entry(p.rl_step).or_default();
                    e.0.push(p.tokens as f64);
                    e.1.push(p.success);
                }
            }
            let points = by_step
                .into_values()
                .map(|(tokens, success)| {
                    let (mean, std) = mean_std(&success);
                    Point {
                        x: mean_std(&tokens).0,
                        mean,
                        std,
                    }
                })
                .collect();
            Series {
                label: format!("{} B={budget}", series_label(key, rows)),
                points,
                reference: false,
            }
        })
        .collect();
    let refs = chain_references(rows, curves);
    for (preset, &(level, _)) in &refs {
        let x_max = curves
            .iter()
            .flatten()
            .map(|p| p.tokens as f64)
            .fold(0.0, f64::max);
        let of = if presets_of(rows).len() > 1 {
            format!(" [{preset}]")
        } else {
            String::new()
        };
        series.push(Series {
            label: format!("chain final{of} {level:.3}"),
            points: [0.0, x_max]
                .iter()
                .map(|&x| Point {
                    x,
                    mean: level,
                    std: 0.0,
                })
                .collect(),
            reference: true,
        });
    }
    LineChart {
        title: format!("held-out success vs generated RL tokens{over}"),
        x_label: "cumulative generated RL tokens".into(),
        y_label: "held-out success rate".into(),
        log2_x: false,
        y_range: Some((0.0, 1.0)),
        band: true,
        series,
    }
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
    let presets = dedup(&points.iter().map(|p| p.preset.clone()).collect::<Vec<_>>());
    let sft_configs = presets
        .iter()
        .map(|p| sft_config(&base, p, &sweep_dir).map(|c| (p.clone(), c)))
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
    for (preset, cfg) in &sft_configs {
        if cfg.sft.steps > 0 {
            sft_states.insert(preset.clone(), dir_state(cfg, sft_view)?);
        }
    }
    let states = configs
        .iter()
        .map(|c| dir_state(c, TrainConfig::clone))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;

    let quiet = args.quiet;
    let say = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let done = states.iter().filter(|s| **s == DirState::Done).count();
    say(format!(
        "arbor sweep: {} runs of {} RL steps{} ({done} already finished) into {}",
        points.len(),
        base.rl.steps,
        budget_steps
            .iter()
            .map(|(b, s)| format!(", {s} at budget {b}"))
            .collect::<String>(),
        sweep_dir.display()
    ));
    let mut inits: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for (preset, cfg) in &sft_configs {
        let init = match sft_states.get(preset) {
            Some(state) => Some(ensure_sft(cfg, state, &say)?),
            None => None,
        };
        inits.insert(preset.clone(), init);
    }

    let bar = Progress::bar_only(points.len() as u64, "sweep", quiet);
    let mut rows = Vec::with_capacity(points.len());
    let mut curves = Vec::with_capacity(points.len());
    for (i, ((point, cfg), state)) in points.iter().zip(&configs).zip(&states).enumerate() {
        let init = inits.get(&point.preset).cloned().flatten();
        let dir = ensure_run(cfg, state, init.as_deref())?;
        let row = summary_row(point, &base.env.name, &dir)?;
        curves.push(curve(&dir)?);
        if !quiet {
            let how = match state {
                DirState::Done => "reused",
                DirState::Resume => "resumed",
                DirState::New | DirState::Restart => "trained",
            };
            bar.suspend(|| {
                eprintln!(
                    "[{}/{}] {} ({how}): success {:.3} -> {:.3}, {} tokens, {:.0}s",
                    i + 1,
                    points.len(),
                    cfg.name,
                    row.success_before,
                    row.success_after,
                    row.generated_tokens,
                    row.wall_s
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

/// The Arrow schema of `summary.parquet`: strings `Utf8` (`branch` nullable), `budget`
/// `UInt32`, `seed`, `generated_tokens` and `truncated` `UInt64`, the rest `Float64`.
pub fn summary_schema() -> SchemaRef {
    let f = |name: &str, ty: DataType| Field::new(name, ty, name == "branch");
    Arc::new(Schema::new(vec![
        f("env", DataType::Utf8),
        f("preset", DataType::Utf8),
        f("sampler", DataType::Utf8),
        f("branch", DataType::Utf8),
        f("estimator", DataType::Utf8),
        f("budget", DataType::UInt32),
        f("seed", DataType::UInt64),
        f("success_before", DataType::Float64),
        f("success_after", DataType::Float64),
        f("generated_tokens", DataType::UInt64),
        f("tokens_per_success", DataType::Float64),
        f("distinct_per_1k", DataType::Float64),
        f("cache_read_share", DataType::Float64),
        f("truncated", DataType::UInt64),
        f("wall_s", DataType::Float64),
        f("tokens_to_chain_final", DataType::Float64),
        f("reach_ratio", DataType::Float64),
        f("run_dir", DataType::Utf8),
    ]))
}

fn summary_batch(rows: &[SummaryRow]) -> anyhow::Result<RecordBatch> {
    let s = |get: fn(&SummaryRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(get)))
    };
    let f = |get: fn(&SummaryRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(get)))
    };
    let u = |get: fn(&SummaryRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(get)))
    };
    let columns: Vec<ArrayRef> = vec![
        s(|r| &r.env),
        s(|r| &r.preset),
        s(|r| &r.sampler),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.branch.as_deref()).collect::<Vec<_>>(),
        )),
        s(|r| &r.estimator),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.budget))),
        u(|r| r.seed),
        f(|r| r.success_before),
        f(|r| r.success_after),
        u(|r| r.generated_tokens),
        f(|r| r.tokens_per_success),
        f(|r| r.distinct_per_1k),
        f(|r| r.cache_read_share),
        u(|r| r.truncated),
        f(|r| r.wall_s),
        f(|r| r.tokens_to_chain_final),
        f(|r| r.reach_ratio),
        s(|r| &r.run_dir),
    ];
    Ok(RecordBatch::try_new(summary_schema(), columns)?)
}

/// Writes `rows` to `path` as a zstd Parquet file (one row group), atomically.
pub fn write_summary(path: &Path, rows: &[SummaryRow]) -> anyhow::Result<()> {
    let write = || -> anyhow::Result<()> {
        let batch = summary_batch(rows)?;
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, summary_schema(), Some(writer_properties()))?;
        w.write(&batch)?;
        w.close()?;
        write_atomic(path, &bytes)?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Reads a `summary.parquet` written by [`write_summary`].
pub fn read_summary(path: &Path) -> anyhow::Result<Vec<SummaryRow>> {
    let read = || -> anyhow::Result<Vec<SummaryRow>> {
        let file = std::fs::File::open(path)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| anyhow!("missing column '{name}'"))
            };
            let typed = |name: &str| -> anyhow::Result<&dyn Array> { Ok(col(name)?.as_ref()) };
            macro_rules! get {
                ($name:literal, $ty:ty) => {
                    typed($name)?
                        .as_any()
                        .downcast_ref::<$ty>()
                        .ok_or_else(|| anyhow!("column '{}' has the wrong type", $name))?
                };
            }
            let (env, preset, sampler, branch, estimator, run_dir) = (
                get!("env", StringArray),
                get!("preset", StringArray),
                get!("sampler", StringArray),
                get!("branch", StringArray),
                get!("estimator", StringArray),
                get!("run_dir", StringArray),
            );
            let (budget, seed, generated, truncated) = (
                get!("budget", UInt32Array),
                get!("seed", UInt64Array),
                get!("generated_tokens", UInt64Array),
                get!("truncated", UInt64Array),
            );
            let (before, after, tps, distinct, cache, wall) = (
                get!("success_before", Float64Array),
                get!("success_after", Float64Array),
                get!("tokens_per_success", Float64Array),
                get!("distinct_per_1k", Float64Array),
                get!("cache_read_share", Float64Array),
                get!("wall_s", Float64Array),
            );
            let (to_final, ratio) = (
                get!("tokens_to_chain_final", Float64Array),
                get!("reach_ratio", Float64Array),
            );
            for i in 0..batch.num_rows() {
                rows.push(SummaryRow {
                    env: env.value(i).to_string(),
                    preset: preset.value(i).to_string(),
                    sampler: sampler.value(i).to_string(),
                    branch: (!branch.is_null(i)).then(|| branch.value(i).to_string()),
                    estimator: estimator.value(i).to_string(),
                    budget: budget.value(i),
                    seed: seed.value(i),
                    success_before: before.value(i),
                    success_after: after.value(i),
                    generated_tokens: generated.value(i),
                    tokens_per_success: tps.value(i),
                    distinct_per_1k: distinct.value(i),
                    cache_read_share: cache.value(i),
                    truncated: truncated.value(i),
                    wall_s: wall.value(i),
                    tokens_to_chain_final: to_final.value(i),
                    reach_ratio: ratio.value(i),
                    run_dir: run_dir.value(i).to_string(),
                });
            }
        }
        Ok(rows)
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}

/// The CSV text of the sweep table: a header, then one line per run; `branch` is empty for
/// chain runs, numbers use Rust's shortest round-trip formatting (`NaN` when undefined).
pub fn summary_csv(rows: &[SummaryRow]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let names: Vec<String> = summary_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut out = names.join(",");
    out.push('\n');
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            quote(&r.env),
            quote(&r.preset),
            r.sampler,
            r.branch.as_deref().unwrap_or(""),
            r.estimator,
            r.budget,
            r.seed,
            r.success_before,
            r.success_after,
            r.generated_tokens,
            r.tokens_per_success,
            r.distinct_per_1k,
            r.cache_read_share,
            r.truncated,
            r.wall_s,
            r.tokens_to_chain_final,
            r.reach_ratio,
            quote(&r.run_dir)
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// table and plots

/// Mean and sample standard deviation of the finite values (std 0 for one value; NaN mean for
/// none).
fn mean_std(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() == 1 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The configuration of a run without its budget and seed: one line of a plot.
type SeriesKey = (String, String, Option<String>, String);

fn series_key(r: &SummaryRow) -> SeriesKey {
    (
        r.preset.clone(),
        r.sampler.clone(),
        r.branch.clone(),
        r.estimator.clone(),
    )
}

/// Legend text of a line: the sampler, plus the axes that take more than one value.
fn series_label(key: &SeriesKey, rows: &[SummaryRow]) -> String {
    // Whether an axis takes more than one value (chain runs have no branch: not a value).
    let varies = |get: fn(&SummaryRow) -> Option<&str>| {
        let mut seen: Vec<&str> = rows.iter().filter_map(get).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() > 1
    };
    let (preset, sampler, branch, estimator) = key;
    let mut label = sampler.clone();
    if let Some(b) = branch
        && varies(|r| r.branch.as_deref())
    {
        let _ = write!(label, " ({b})");
    }
    if varies(|r| Some(r.estimator.as_str())) {
        let _ = write!(label, " {estimator}");
    }
    if varies(|r| Some(r.preset.as_str())) {
        let _ = write!(label, " [{preset}]");
    }
    label
}

/// One point per budget: mean ± std of its values.
fn points(by_budget: BTreeMap<u32, Vec<f64>>) -> Vec<Point> {
    by_budget
        .into_iter()
        .map(|(b, v)| {
            let (mean, std) = mean_std(&v);
            Point {
                x: f64::from(b),
                mean,
                std,
            }
        })
        .collect()
}

/// Groups rows into lines (in order of first appearance) with one point per budget: mean ± std
/// over seeds of `value`.
fn lines(rows: &[SummaryRow], value: fn(&SummaryRow) -> f64) -> Vec<Series> {
    let mut keys: Vec<SeriesKey> = Vec::new();
    for r in rows {
        let k = series_key(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.iter()
        .map(|key| {
            let mut by_budget: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for r in rows.iter().filter(|r| series_key(r) == *key) {
                by_budget.entry(r.budget).or_default().push(value(r));
            }
            Series {
                label: series_label(key, rows),
                points: points(by_budget),
                reference: false,
            }
        })
        .collect()
}

/// Writes `success_vs_budget`, `distinct_per_1k_vs_budget` and, when the runs evaluated
/// during RL, `success_vs_tokens` (SVG and PNG) into `dir`.
fn write_plots(
    dir: &Path,
    rows: &[SummaryRow],
    curves: &[Vec<CurvePoint>],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let seeds = {
        let mut s: Vec<u64> = rows.iter().map(|r| r.seed).collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    let over = if seeds > 1 {
        format!(" (mean ± std over {seeds} seeds)")
    } else {
        String::new()
    };
    let mut success = lines(rows, |r| r.success_after);
    // The shared SFT policy as a reference line per preset (its runs differ only in the seed
    // of the evaluation stream).
    let presets = dedup(&rows.iter().map(|r| r.preset.clone()).collect::<Vec<_>>());
    for preset in &presets {
        let mut by_budget: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.preset == *preset) {
            by_budget
                .entry(r.budget)
                .or_default()
                .push(r.success_before);
        }
        success.push(Series {
            label: if presets.len() > 1 {
                format!("before RL [{preset}]")
            } else {
                "before RL (SFT)".into()
            },
            points: points(by_budget),
            reference: true,
        });
    }
    let mut charts = vec![
        (
            "success_vs_budget",
            LineChart {
                title: format!("held-out success vs token budget{over}"),
                x_label: "token budget per task".into(),
                y_label: "held-out success rate".into(),
                log2_x: true,
                y_range: Some((0.0, 1.0)),
                band: false,
                series: success,
            },
        ),
        (
            "distinct_per_1k_vs_budget",
            LineChart {
                title: format!("distinct trajectories per 1k tokens{over}"),
                x_label: "token budget per task".into(),
                y_label: "distinct trajectories / 1k generated tokens".into(),
                log2_x: true,
                y_range: None,
                band: false,
                series: lines(rows, |r| r.distinct_per_1k),
            },
        ),
    ];
    if curves.iter().any(|c| c.len() > 2) {
        charts.push(("success_vs_tokens", curve_chart(rows, curves, &over)));
    }
    let mut written = Vec::new();
    for (stem, chart) in &charts {
        written.extend(write_chart(chart, &dir.join(stem))?);
    }
    Ok(written)
}

/// The printed table: one line per run, then (with several seeds) mean ± std per line and
/// budget.
pub fn table(rows: &[SummaryRow]) -> String {
    let width = |get: fn(&SummaryRow) -> &str, title: &str| {
        rows.iter()
            .map(|r| get(r).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let wp = width(|r| &r.preset, "preset");
    let ws = width(|r| &r.sampler, "sampler");
    let wb = width(|r| r.branch.as_deref().unwrap_or("-"), "branch");
    let we = width(|r| &r.estimator, "estimator");
    let num = |v: f64, prec: usize| {
        if v.is_finite() {
            format!("{v:.prec$}")
        } else {
            "-".into()
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>4} {:>6} {:>6} {:>10} {:>11} {:>11} {:>6} {:>6} {:>7} {:>11}",
        "preset",
        "sampler",
        "branch",
        "estimator",
        "budget",
        "seed",
        "before",
        "after",
        "gen_tokens",
        "tok/success",
        "distinct/1k",
        "cache",
        "trunc",
        "wall_s",
        "reach_ratio"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>4} {:>6.3} {:>6.3} {:>10} {:>11} {:>11} {:>6} {:>6} {:>7.1} {:>11}",
            r.preset,
            r.sampler,
            r.branch.as_deref().unwrap_or("-"),
            r.estimator,
            r.budget,
            r.seed,
            r.success_before,
            r.success_after,
            r.generated_tokens,
            num(r.tokens_per_success, 1),
            num(r.distinct_per_1k, 2),
            num(r.cache_read_share, 3),
            r.truncated,
            r.wall_s,
            num(r.reach_ratio, 2)
        );
    }
    let mut seeds: Vec<u64> = rows.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    if seeds.len() > 1 {
        let _ = writeln!(out, "\nmean ± std over {} seeds", seeds.len());
        let _ = writeln!(
            out,
            "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>15} {:>15} {:>11} {:>21}",
            "preset",
            "sampler",
            "branch",
            "estimator",
            "budget",
            "after",
            "distinct/1k",
            "tok/success",
            "reach_ratio (seeds)"
        );
        let mut groups: Vec<(SeriesKey, u32)> = Vec::new();
        for r in rows {
            let g = (series_key(r), r.budget);
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        for (key, budget) in groups {
            let of: Vec<&SummaryRow> = rows
                .iter()
                .filter(|r| series_key(r) == key && r.budget == budget)
                .collect();
            let stat = |get: fn(&SummaryRow) -> f64, prec: usize| {
                let (m, s) = mean_std(&of.iter().map(|r| get(r)).collect::<Vec<_>>());
                if m.is_finite() {
                    format!("{m:.prec$} ± {s:.prec$}")
                } else {
                    "-".into()
                }
            };
            let (tps, _) = mean_std(&of.iter().map(|r| r.tokens_per_success).collect::<Vec<_>>());
            let reached = of.iter().filter(|r| r.reach_ratio.is_finite()).count();
            let reach = format!("{} ({reached}/{})", stat(|r| r.reach_ratio, 2), of.len());
            let _ = writeln!(
                out,
                "{:<wp$} {:<ws$} {:<wb$} {:<we$} {:>6} {:>15} {:>15} {:>11} {:>21}",
                key.0,
                key.1,
                key.2.as_deref().unwrap_or("-"),
                key.3,
                budget,
                stat(|r| r.success_after, 3),
                stat(|r| r.distinct_per_1k, 2),
                num(tps, 1),
                reach
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sampler: &str, budget: u32, seed: u64, after: f64) -> SummaryRow {
        SummaryRow {
            env: "multihop".into(),
            preset: "tiny".into(),
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
        assert_eq!(lines[0].split(',').count(), 18);
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
            preset: "tiny".into(),
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
