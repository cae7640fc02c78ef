//! Learning curves of a sweep's runs: held-out success against RL tokens, the chain
//! reference and the tokens each run needs to reach it (`curves.csv`, `reach.csv`).

use super::*;

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
pub(super) fn curve(dir: &Path) -> anyhow::Result<Vec<CurvePoint>> {
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
pub(super) fn tokens_to_reach(curve: &[CurvePoint], level: f64) -> Option<f64> {
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

/// The chain reference of a sweep's runs of model `model` (module docs): its final success
/// level (mean over seeds) and mean total RL tokens; `None` without a chain run.
pub(super) fn chain_reference(
    rows: &[SummaryRow],
    curves: &[Vec<CurvePoint>],
    model: &str,
) -> Option<(f64, f64)> {
    let chains: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].sampler == "chain" && rows[i].model == model)
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

/// The models of the rows, in order of first appearance.
pub(super) fn models_of(rows: &[SummaryRow]) -> Vec<String> {
    dedup(&rows.iter().map(|r| r.model.clone()).collect::<Vec<_>>())
}

/// The chain reference of every model that has one, by model label.
pub(super) fn chain_references(
    rows: &[SummaryRow],
    curves: &[Vec<CurvePoint>],
) -> BTreeMap<String, (f64, f64)> {
    models_of(rows)
        .into_iter()
        .filter_map(|p| chain_reference(rows, curves, &p).map(|r| (p, r)))
        .collect()
}

/// Fills `tokens_to_chain_final` and `reach_ratio` of every row (against its model's chain
/// reference).
pub(super) fn fill_reach(rows: &mut [SummaryRow], curves: &[Vec<CurvePoint>]) {
    let refs = chain_references(rows, curves);
    for (r, c) in rows.iter_mut().zip(curves) {
        let Some(&(level, total)) = refs.get(&r.model) else {
            continue;
        };
        if let Some(t) = tokens_to_reach(c, level) {
            r.tokens_to_chain_final = t;
            r.reach_ratio = if total > 0.0 { t / total } else { f64::NAN };
        }
    }
}

/// The columns that name a run in `curves.csv` and `reach.csv`: env, model, sampler, branch,
/// estimator, budget, seed.
pub(super) fn run_columns(r: &SummaryRow) -> String {
    format!(
        "{},{},{},{},{},{},{}",
        r.env,
        r.model,
        r.sampler,
        r.branch.as_deref().unwrap_or(""),
        r.estimator,
        r.budget,
        r.seed
    )
}

/// `curves.csv`: one line per held-out evaluation of every run.
pub(super) fn curves_csv(rows: &[SummaryRow], curves: &[Vec<CurvePoint>]) -> String {
    let mut out = String::from(
        "env,model,sampler,branch,estimator,budget,seed,rl_step,cumulative_generated_tokens,\
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
pub(super) fn reach_csv(rows: &[SummaryRow], curves: &[Vec<CurvePoint>], levels: &[f64]) -> String {
    let mut out = String::from(
        "env,model,sampler,branch,estimator,budget,seed,level_name,level,tokens,ratio_to_chain\n",
    );
    let refs = chain_references(rows, curves);
    for (r, c) in rows.iter().zip(curves) {
        let reference = refs.get(&r.model).copied();
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
pub(super) fn curve_chart(
    rows: &[SummaryRow],
    curves: &[Vec<CurvePoint>],
    over: &str,
) -> LineChart {
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
    for (model, &(level, _)) in &refs {
        let x_max = curves
            .iter()
            .flatten()
            .map(|p| p.tokens as f64)
            .fold(0.0, f64::max);
        let of = if models_of(rows).len() > 1 {
            format!(" [{model}]")
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
