//! The grid of a sweep: its axes, their points in run order, and each point's config.

use super::*;

/// One model of the `--models` axis: a preset, a Hugging Face model directory or a GGUF file,
/// with its own SFT step count when given as `MODEL=STEPS`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ModelChoice {
    /// The name in run directories, tables and plots: the preset, or the file or directory
    /// name without `.gguf` (characters other than `[A-Za-z0-9._-]` become `-`).
    pub(super) label: String,
    /// The preset (`None` for a path).
    pub(super) preset: Option<String>,
    /// The model directory or GGUF file (`model.dir`).
    pub(super) dir: Option<PathBuf>,
    /// `sft.steps` of this model's shared SFT checkpoint (`None`: the base config's).
    pub(super) sft_steps: Option<usize>,
}

impl ModelChoice {
    /// The base config's model.
    pub(super) fn of_config(base: &TrainConfig) -> ModelChoice {
        match &base.model.dir {
            Some(dir) => ModelChoice {
                label: path_label(dir),
                preset: None,
                dir: Some(dir.clone()),
                sft_steps: None,
            },
            None => ModelChoice {
                label: base.model.preset.clone(),
                preset: Some(base.model.preset.clone()),
                dir: None,
                sft_steps: None,
            },
        }
    }

    /// Parses one `--models` entry: `tiny`, `small`, a path, each optionally `=SFT_STEPS`.
    pub(super) fn parse(entry: &str) -> anyhow::Result<ModelChoice> {
        let entry = entry.trim();
        let (spec, sft_steps) = match entry.rsplit_once('=') {
            Some((m, n)) => {
                let n = n.trim().parse::<usize>().map_err(|_| {
                    anyhow!("'{entry}' is not MODEL or MODEL=SFT_STEPS (SFT_STEPS a whole number)")
                })?;
                (m.trim(), Some(n))
            }
            None => (entry, None),
        };
        if spec.is_empty() {
            bail!("'{entry}' names no model");
        }
        if rollout::engine::ModelConfig::preset(spec).is_ok() {
            return Ok(ModelChoice {
                label: spec.to_string(),
                preset: Some(spec.to_string()),
                dir: None,
                sft_steps,
            });
        }
        let path = PathBuf::from(spec);
        if !path.exists() {
            bail!(
                "'{spec}' is neither a preset (tiny, small) nor an existing model directory or \
                 GGUF file"
            );
        }
        Ok(ModelChoice {
            label: path_label(&path),
            preset: None,
            dir: Some(path),
            sft_steps,
        })
    }

    /// `cfg` with this model (and its SFT step count).
    pub(super) fn apply(&self, cfg: &mut TrainConfig) {
        if let Some(p) = &self.preset {
            cfg.model.preset = p.clone();
        }
        cfg.model.dir = self.dir.clone();
        if let Some(n) = self.sft_steps {
            cfg.sft.steps = n;
        }
    }
}

/// The label of a model path: its file or directory name without `.gguf`, made safe for
/// directory names and CSV.
fn path_label(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = name.strip_suffix(".gguf").unwrap_or(&name);
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect()
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GridPoint {
    pub(super) model: ModelChoice,
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
            self.model.label, self.sampler, self.estimator, self.budget, self.seed
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
        self.model.apply(&mut cfg);
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

/// The grid, in run order: model, seed, estimator, sampler, branch, budget (so the runs of
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
    let models = if args.models.is_empty() {
        vec![ModelChoice::of_config(base)]
    } else {
        axis("models", &args.models, ModelChoice::parse)?
    };
    for (i, m) in models.iter().enumerate() {
        if models[..i].iter().any(|o| o.label == m.label) {
            bail!(
                "--models: two models are labelled '{}'; rename one of the files",
                m.label
            );
        }
    }
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
    for model in &models {
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
                                model: model.clone(),
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
