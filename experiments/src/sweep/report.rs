//! The sweep's plots against the budget.

use super::*;

/// The configuration of a run without its budget and seed: one line of a plot.
pub(super) type SeriesKey = (String, String, Option<String>, String);

pub(super) fn series_key(r: &SummaryRow) -> SeriesKey {
    (
        r.model.clone(),
        r.sampler.clone(),
        r.branch.clone(),
        r.estimator.clone(),
    )
}

/// Legend text of a line: the sampler, plus the axes that take more than one value.
pub(super) fn series_label(key: &SeriesKey, rows: &[SummaryRow]) -> String {
    // Whether an axis takes more than one value (chain runs have no branch: not a value).
    let varies = |get: fn(&SummaryRow) -> Option<&str>| {
        let mut seen: Vec<&str> = rows.iter().filter_map(get).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() > 1
    };
    let (model, sampler, branch, estimator) = key;
    let mut label = sampler.clone();
    if let Some(b) = branch
        && varies(|r| r.branch.as_deref())
    {
        let _ = write!(label, " ({b})");
    }
    if varies(|r| Some(r.estimator.as_str())) {
        let _ = write!(label, " {estimator}");
    }
    if varies(|r| Some(r.model.as_str())) {
        let _ = write!(label, " [{model}]");
    }
    label
}

/// One point per budget: mean ± std of its values.
pub(super) fn points(by_budget: BTreeMap<u32, Vec<f64>>) -> Vec<Point> {
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
pub(super) fn lines(rows: &[SummaryRow], value: fn(&SummaryRow) -> f64) -> Vec<Series> {
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

/// Writes `budget_success_vs_budget` and `tokens_per_solved_vs_budget` (the held-out tasks
/// solved within each budget and their cost) and, for RL runs, `success_vs_budget`,
/// `distinct_per_1k_vs_budget` and, when the runs evaluated during RL, `success_vs_tokens`
/// (SVG and PNG) into `dir`.
pub(super) fn write_plots(
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
    // The shared SFT policy as a reference line per model (its runs differ only in the seed
    // of the evaluation stream).
    let models = dedup(&rows.iter().map(|r| r.model.clone()).collect::<Vec<_>>());
    for model in &models {
        let mut by_budget: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.model == *model) {
            by_budget
                .entry(r.budget)
                .or_default()
                .push(r.success_before);
        }
        success.push(Series {
            label: if models.len() > 1 {
                format!("before RL [{model}]")
            } else {
                "before RL (SFT)".into()
            },
            points: points(by_budget),
            reference: true,
        });
    }
    // Test-time points (no RL) have no training curves or RL counters to draw.
    let any_rl = rows.iter().any(|r| r.generated_tokens > 0);
    let mut charts = Vec::new();
    charts.push((
        "budget_success_vs_budget",
        LineChart {
            title: "held-out tasks solved within the budget (one rollout per task)".into(),
            x_label: "token budget per task".into(),
            y_label: "share of tasks solved by any trajectory".into(),
            log2_x: true,
            y_range: Some((0.0, 1.0)),
            band: false,
            series: lines(rows, |r| r.budget_success),
        },
    ));
    charts.push((
        "tokens_per_solved_vs_budget",
        LineChart {
            title: "generated tokens per solved held-out task".into(),
            x_label: "token budget per task".into(),
            y_label: "generated tokens / solved task".into(),
            log2_x: true,
            y_range: None,
            band: false,
            series: lines(rows, |r| r.budget_tokens_per_solved),
        },
    ));
    if !any_rl {
        let mut written = Vec::new();
        for (stem, chart) in &charts {
            written.extend(write_chart(chart, &dir.join(stem))?);
        }
        return Ok(written);
    }
    charts.extend([
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
    ]);
    if curves.iter().any(|c| c.len() > 2) {
        charts.push(("success_vs_tokens", curve_chart(rows, curves, &over)));
    }
    let mut written = Vec::new();
    for (stem, chart) in &charts {
        written.extend(write_chart(chart, &dir.join(stem))?);
    }
    Ok(written)
}
