//! `arbor inspect`: what a run directory holds, in one screen.
//!
//! Prints, from the files of a run (or `arbor rollout`) directory:
//! - **config**: the key facts of `config.toml` (environment, model, SFT, RL, sampler);
//! - **summary**: `summary.json` (success before/after RL) or `rollout.json`, when present;
//! - **metrics**: the last rows of `metrics.parquet`;
//! - **files**: the result of [`check_run_files`] (the DESIGN §9 invariants);
//! - **tree**: one rollout tree from `nodes.parquet` drawn as indented text, one node a line:
//!   `#id kind "text" tokens, leaves below, value, advantage` (by default the last exported
//!   step's first task and its first tree).
//!
//! A sweep directory (with `summary.parquet` and no `config.toml`) prints its table instead.
//! A missing directory, a directory that is not a run, or an unreadable file is a one-line
//! error; a failed invariant check is printed and then returned as the error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use datasets::export::{
    METRICS_FILE, MetricsRow, NODES_FILE, NodeRow, TRAJECTORIES_FILE, TrajectoryRow,
    check_run_files, read_metrics, read_nodes, read_trajectories,
};
use rollout::tree::NodeKind;

use crate::cli::InspectArgs;
use crate::config::TrainConfig;
use crate::run::Summary;
use crate::sweep::{SUMMARY_FILE, read_summary, table};

/// Runs `arbor inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if !dir.exists() {
        bail!("{} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let config_path = dir.join("config.toml");
    if !config_path.is_file() {
        if dir.join(SUMMARY_FILE).is_file() {
            let rows = read_summary(&dir.join(SUMMARY_FILE))?;
            println!("sweep      {} ({} runs)", dir.display(), rows.len());
            print!("{}", table(&rows));
            return Ok(());
        }
        bail!(
            "{} is not a run directory (no config.toml): expected runs/<name>, an `arbor \
             rollout` output or a sweep directory",
            dir.display()
        );
    }
    let cfg = TrainConfig::load(&config_path)?;
    let mut out = String::new();
    let _ = writeln!(out, "run        {}", dir.display());
    config_facts(&mut out, &cfg);
    summary_facts(&mut out, dir)?;

    let metrics_path = dir.join(METRICS_FILE);
    if metrics_path.is_file() {
        let rows = read_metrics(&metrics_path)?;
        metrics_table(&mut out, &rows, args.rows);
    } else {
        let _ = writeln!(out, "metrics    none (no {METRICS_FILE})");
    }

    let has_rollouts = dir.join(TRAJECTORIES_FILE).is_file() || dir.join(NODES_FILE).is_file();
    let mut check_error = None;
    if !has_rollouts {
        let _ = writeln!(
            out,
            "files      no {TRAJECTORIES_FILE} or {NODES_FILE} (rl.steps = {}, rl.export_rollouts \
             = \"{}\")",
            cfg.rl.steps, cfg.rl.export_rollouts
        );
    } else {
        match check_run_files(dir) {
            Ok(s) => {
                let _ = write!(
                    out,
                    "files      check ok: {} steps, {} task groups, {} trajectories, {} nodes",
                    s.steps, s.groups, s.trajectories, s.nodes
                );
                if let Some(m) = s.metrics_rows {
                    let _ = write!(out, ", {m} metrics rows");
                }
                if let Some(p) = s.partial_step {
                    let _ = write!(
                        out,
                        " (step {p} only in {NODES_FILE}: the run stopped there)"
                    );
                }
                out.push('\n');
            }
            Err(e) => {
                let _ = writeln!(out, "files      check FAILED: {e}");
                check_error = Some(e);
            }
        }
        if check_error.is_none() {
            let nodes = read_nodes(dir.join(NODES_FILE))?;
            let trajectories = read_trajectories(dir.join(TRAJECTORIES_FILE))?;
            draw_tree(&mut out, &nodes, &trajectories, &args)?;
        }
    }
    print!("{out}");
    if let Some(e) = check_error {
        return Err(e).context(format!("{} fails the run-file checks", dir.display()));
    }
    Ok(())
}

fn config_facts(out: &mut String, cfg: &TrainConfig) {
    let mut env = cfg.env.label();
    if let Some(t) = &cfg.env.tasks {
        let _ = write!(env, ", tasks {}", t.display());
    }
    let s = &cfg.sampler;
    let sampler = match s.kind {
        rollout::sampler::SamplerKind::Tree => format!(
            "tree (branch {}, {} nodes, {} initial chains, {} branches per round)",
            s.branch, s.granularity, s.initial_chains, s.branches_per_round
        ),
        rollout::sampler::SamplerKind::Chain => "chain".to_string(),
    };
    let _ = writeln!(
        out,
        "config     {env}; {} model; seed {}",
        cfg.model.preset, cfg.seed
    );
    let _ = writeln!(
        out,
        "           sft {} steps (batch {}, lr {}); rl {} steps x {} tasks, estimator {}, lr {}, \
         kl {}",
        cfg.sft.steps,
        cfg.sft.batch,
        cfg.sft.lr,
        cfg.rl.steps,
        cfg.rl.tasks_per_step,
        cfg.rl.estimator,
        cfg.rl_lr(),
        cfg.rl.kl_coef
    );
    let _ = writeln!(
        out,
        "           sampler {sampler}, budget {}, max {} tokens per action",
        s.budget, s.max_action_tokens
    );
}

fn summary_facts(out: &mut String, dir: &Path) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<Option<serde_json::Value>> {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        Ok(Some(value))
    };
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let f = |x: Option<f64>, prec: usize| x.map_or("?".to_string(), |x| format!("{x:.prec$}"));
    if dir.join(Summary::FILE).is_file() {
        let s = Summary::load(dir)?;
        let _ = writeln!(
            out,
            "summary    success {:.3} ± {:.3} before RL -> {:.3} ± {:.3} after ({} held-out \
             tasks); {} generated tokens; {:.0}s",
            s.success_before,
            s.stderr_before,
            s.success_after,
            s.stderr_after,
            s.eval_episodes,
            s.generated_tokens,
            s.wall_s,
        );
    } else if let Some(r) = read("rollout.json")? {
        let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let _ = writeln!(
            out,
            "rollout    {} steps x {} tasks of the {} split from {}: {} trajectories, success \
             {}, {} generated tokens; {}s",
            f(num(&r, "steps"), 0),
            f(num(&r, "tasks_per_step"), 0),
            text("split"),
            text("checkpoint"),
            f(num(&r, "trajectories"), 0),
            f(num(&r, "success_rate"), 3),
            f(num(&r, "generated_tokens"), 0),
            f(num(&r, "wall_s"), 1),
        );
    } else {
        let _ = writeln!(out, "summary    none yet (the run has not finished)");
    }
    Ok(())
}

fn metrics_table(out: &mut String, rows: &[MetricsRow], last: usize) {
    let shown = &rows[rows.len().saturating_sub(last)..];
    let _ = writeln!(out, "metrics    {} rows; last {}:", rows.len(), shown.len());
    if shown.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:<7} {:>5} {:>7} {:>7} {:>8} {:>7} {:>7} {:>8} {:>6} {:>8} {:>5} {:>6} {:>7}",
        "phase",
        "step",
        "reward",
        "success",
        "loss",
        "kl",
        "entropy",
        "gen_tok",
        "traj",
        "distinct",
        "trunc",
        "cache",
        "wall_ms"
    );
    for m in shown {
        let _ = writeln!(
            out,
            "  {:<7} {:>5} {:>7.3} {:>7.3} {:>8.4} {:>7.4} {:>7.3} {:>8} {:>6} {:>8} {:>5} {:>6.3} {:>7}",
            m.phase,
            m.step,
            m.reward_mean,
            m.success_rate,
            m.loss,
            m.kl,
            m.entropy,
            m.generated_tokens,
            m.trajectories,
            m.distinct_trajectories,
            m.truncated,
            m.cache_read_share,
            m.wall_ms
        );
    }
}

/// Node text on one line: control characters escaped, at most `max` characters (then `…`).
fn short_text(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// One node as a line (without the tree-drawing prefix).
fn node_line(n: &NodeRow) -> String {
    let kind = match n.kind {
        NodeKind::Action => "action",
        NodeKind::Observation => "obs",
    };
    let mut line = format!(
        "#{} {kind} \"{}\" {} tok, leaves {}, V {:.3}",
        n.node_id,
        short_text(&n.text, 48),
        n.tokens.len(),
        n.leaves_below,
        n.value
    );
    match (n.kind, n.advantage) {
        (NodeKind::Action, Some(a)) => {
            let _ = write!(line, ", A {a:+.3}");
        }
        (NodeKind::Action, None) => line.push_str(", A -"),
        _ => {}
    }
    if n.is_leaf {
        let _ = write!(line, "  [leaf, reward {:.2}]", n.value);
    }
    line
}

/// Draws one tree of the chosen task group (see [`InspectArgs`]) under a line for the prompt
/// (a tree may branch at the prompt, so it can have several top nodes).
fn draw_tree(
    out: &mut String,
    nodes: &[NodeRow],
    trajectories: &[TrajectoryRow],
    args: &InspectArgs,
) -> anyhow::Result<()> {
    let Some(last_step) = nodes.iter().map(|n| n.step).max() else {
        let _ = writeln!(out, "tree       none ({NODES_FILE} has no rows)");
        return Ok(());
    };
    let step = args.step.unwrap_or(last_step);
    let at_step: Vec<&NodeRow> = nodes.iter().filter(|n| n.step == step).collect();
    let Some(first_task) = at_step.first().map(|n| n.task_id) else {
        let mut steps: Vec<u64> = nodes.iter().map(|n| n.step).collect();
        steps.dedup();
        bail!("no step {step} in {NODES_FILE} (steps: {})", span(&steps));
    };
    let task = args.task.unwrap_or(first_task);
    let group: Vec<&NodeRow> = at_step.into_iter().filter(|n| n.task_id == task).collect();
    if group.is_empty() {
        bail!("no task {task} at step {step} in {NODES_FILE}");
    }
    let mut trees: Vec<u32> = group.iter().map(|n| n.tree).collect();
    trees.sort_unstable();
    trees.dedup();
    let tree = args.tree.unwrap_or(trees[0]);
    if !trees.contains(&tree) {
        bail!(
            "no tree {tree} in task {task} at step {step} (trees: {})",
            span(&trees.iter().map(|&t| u64::from(t)).collect::<Vec<_>>())
        );
    }
    let in_tree: Vec<&NodeRow> = group.iter().copied().filter(|n| n.tree == tree).collect();
    let leaves = group.iter().filter(|n| n.is_leaf).count();
    let _ = writeln!(
        out,
        "tree       step {step}, task {task}, tree {tree} ({} trees, {leaves} leaves in the \
         group; V = mean leaf reward below, A = advantage):",
        trees.len()
    );
    let mut children: BTreeMap<Option<u32>, Vec<&NodeRow>> = BTreeMap::new();
    for n in &in_tree {
        children.entry(n.parent_id).or_default().push(n);
    }
    for list in children.values_mut() {
        list.sort_by_key(|n| n.node_id);
    }
    let prompt = trajectories
        .iter()
        .find(|t| t.step == step && t.task_id == task)
        .map_or(String::new(), |t| {
            format!(" \"{}\"", short_text(&t.prompt, 60))
        });
    let _ = writeln!(out, "  prompt{prompt}");
    let mut budget = args.max_nodes;
    let roots = children.get(&None).cloned().unwrap_or_default();
    let count = roots.len();
    for (i, root) in roots.into_iter().enumerate() {
        draw_node(out, root, &children, "  ", i + 1 == count, &mut budget);
    }
    if budget == 0 && in_tree.len() > args.max_nodes {
        let _ = writeln!(
            out,
            "  … {} more nodes (--max-nodes to show more)",
            in_tree.len() - args.max_nodes
        );
    }
    Ok(())
}

/// Draws `node` and its subtree; `last`: whether `node` is the last child of its parent.
fn draw_node(
    out: &mut String,
    node: &NodeRow,
    children: &BTreeMap<Option<u32>, Vec<&NodeRow>>,
    prefix: &str,
    last: bool,
    budget: &mut usize,
) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    let (branch, deeper) = if last {
        ("└─ ", format!("{prefix}   "))
    } else {
        ("├─ ", format!("{prefix}│  "))
    };
    let _ = writeln!(out, "{prefix}{branch}{}", node_line(node));
    let kids = children
        .get(&Some(node.node_id))
        .cloned()
        .unwrap_or_default();
    let count = kids.len();
    for (i, child) in kids.into_iter().enumerate() {
        draw_node(out, child, children, &deeper, i + 1 == count, budget);
    }
}

/// A short description of a sorted list of numbers: `0..=39` when contiguous, else the list.
fn span(values: &[u64]) -> String {
    match (values.first(), values.last()) {
        (Some(a), Some(b)) if values.len() as u64 == b - a + 1 && values.len() > 2 => {
            format!("{a}..={b}")
        }
        _ => values
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_escapes_and_truncates() {
        assert_eq!(short_text("a\nb\t\"c\"", 20), "a\\nb\\t\\\"c\\\"");
        assert_eq!(short_text("abcdef", 3), "abc…");
        assert_eq!(short_text("abc", 3), "abc");
    }

    #[test]
    fn span_is_compact() {
        assert_eq!(span(&[0, 1, 2, 3]), "0..=3");
        assert_eq!(span(&[1, 5]), "1, 5");
    }
}
