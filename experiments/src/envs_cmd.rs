//! `arbor envs`: list environments, show an expert episode.

use anyhow::bail;
use envs::{Env, EnvSpec, Expert};

use crate::cli::{EnvsAction, EnvsArgs, ShowArgs};

/// Runs `arbor envs`.
pub fn run(args: EnvsArgs) -> anyhow::Result<()> {
    match args.action {
        None => {
            list();
            Ok(())
        }
        Some(EnvsAction::Show(show)) => show_episode(&show),
    }
}

fn list() {
    for name in envs::registry::all_names() {
        match envs::registry::lookup(name) {
            Some(reg) => println!("{name}  ({}; registered)", reg.about),
            None => println!("{name}"),
        }
        for knob in EnvSpec::knobs_of(name).unwrap_or(&[]) {
            println!(
                "    {:<12} default {:<6} {}",
                knob.name, knob.default, knob.doc
            );
        }
    }
    println!(
        "\nThe default run of `arbor train`: {}.\nShow an expert episode: arbor envs show \
         multihop --seed 7 --knob hops=3",
        crate::config::default_run_line()
    );
}

fn show_episode(args: &ShowArgs) -> anyhow::Result<()> {
    if args.env == "qa-file" && args.tasks.is_none() {
        bail!("qa-file needs --tasks FILE (JSONL or Parquet with prompt/answer columns)");
    }
    // The environment as a run would build it from the same name, knobs and task file.
    let section = crate::config::EnvSection {
        name: args.env.clone(),
        knobs: crate::config::parse_knobs(&args.knobs)?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tasks: args.tasks.clone(),
    };
    let cfg = crate::config::TrainConfig {
        env: section,
        ..Default::default()
    };
    let spec = cfg.env_spec()?;
    if let Some(rows) = spec.task_count()
        && args.seed >= rows
    {
        bail!(
            "--seed {} is no task of this file: it has {rows} rows (0..{rows})",
            args.seed
        );
    }
    let mut env = spec.make(args.seed);
    println!("== {} task {} ==", spec.name(), args.seed);
    print!("[prompt]{}", env.prompt());
    let mut total = 0.0;
    let mut mistake_left = args.mistake;
    for turn in 0..env.max_turns() {
        let action = match (mistake_left, env.mistake_action(args.seed ^ turn as u64)) {
            (true, Some(m)) => {
                mistake_left = false;
                m
            }
            _ => env.expert_action(),
        };
        let step = env.step(&action);
        total += step.reward;
        println!("[action {}] {action}", turn + 1);
        print!("[observation]{}", step.observation);
        if step.done {
            println!("[done] outcome {:?}, reward {total}", step.outcome);
            return Ok(());
        }
    }
    println!("[turn limit] reward {total}");
    Ok(())
}
