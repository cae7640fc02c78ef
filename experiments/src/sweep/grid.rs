//! The grid of a sweep: its axes, their points in run order, and each point's config.

use super::*;

/// One point of the grid.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GridPoint {
    pub(super) preset: String,
    pub(super) sampler: SamplerKind,
    pub(super) branch: Option<BranchPolicy>,
    pub(super) estimator: Estimator,
    pub(super) budget: u32,
    pub(super) seed: u64,
}

impl GridPoint {
    /// The run directory name.
    pub(super) fn name(&self) -> String {
        let branch = self.branch.map(|b| format!("-{b}")).unwrap_or_default();
        format!(
            "{}_{}{branch}_{}_b{}_s{}",
            self.preset, self.sampler, self.estimator, self.budget, self.seed
        )
    }

    /// The run's config: the base with this point's values (and its budget's RL steps from
    /// `--budget-steps`, if given).
    pub(super) fn config(
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
pub(super) fn parse_budget_steps(entries: &[String]) -> anyhow::Result<BTreeMap<u32, usize>> {
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
pub(super) fn axis<T: PartialEq, E: std::fmt::Display>(
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

pub(super) fn dedup<T: PartialEq + Clone>(values: &[T]) -> Vec<T> {
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
pub(super) fn grid(args: &SweepArgs, base: &TrainConfig) -> anyhow::Result<Vec<GridPoint>> {
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
