//! `arbor train`: resolves the configuration from the TOML file, `--set` and the flags (or,
//! with `--resume`, from the run's own `config.toml`) and drives a [`Run`] through SFT,
//! evaluation and RL.

use std::path::PathBuf;

use anyhow::bail;

use crate::cli::TrainArgs;
use crate::config::{TrainConfig, first_difference};
use crate::run::{Run, RunOptions, RunOutcome};

/// The configuration of `arbor train`: the TOML file (or the defaults) with the command-line
/// overrides; with `--resume`, the run's own `config.toml` (see [`resolve_resume`]).
pub fn resolve(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    if args.resume {
        return resolve_resume(args);
    }
    let mut cfg = match &args.config {
        Some(path) => TrainConfig::load(path)?,
        None => TrainConfig::default(),
    };
    apply_overrides(&mut cfg, args)?;
    cfg.validate()?;
    Ok(cfg)
}

/// `--resume`: the configuration is the run's own `config.toml` (`--out`/`--name` locate the
/// run). Other flags, and a `--config` file, may repeat its values but not change them: a
/// resumed run continues exactly what was started, so a conflicting setting is a one-line error
/// naming the first differing key, and the run's files are left untouched.
pub fn resolve_resume(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let Some(name) = &args.name else {
        bail!("--resume needs --name (the run directory to continue)");
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let dir = out.join(name);
    let path = dir.join("config.toml");
    if !path.is_file() {
        bail!("cannot resume: {} has no config.toml", dir.display());
    }
    let stored = TrainConfig::load(&path)?;
    let mut want = match &args.config {
        Some(file) => TrainConfig::load(file)?,
        None => stored.clone(),
    };
    apply_overrides(&mut want, args)?;
    want.resolve_defaults();
    want.name = stored.name.clone();
    want.out = stored.out.clone();
    if let Some(diff) = first_difference(&stored, &want) {
        bail!(
            "--resume continues {} with its own config.toml; the command line would change {diff}",
            dir.display()
        );
    }
    // The run directory is where the command line says, whatever `out` and `name` it was
    // created with (a copied or renamed run continues in its own directory).
    let mut cfg = stored;
    cfg.out = out;
    cfg.name = name.clone();
    cfg.validate()?;
    Ok(cfg)
}

/// Applies the command-line overrides to a config.
fn apply_overrides(cfg: &mut TrainConfig, args: &TrainArgs) -> anyhow::Result<()> {
    crate::config::apply_sets(cfg, &args.sets)?;
    args.env.apply(&mut cfg.env)?;
    if let Some(p) = &args.preset {
        cfg.model.preset = p.clone();
    }
    if let Some(d) = &args.model {
        cfg.model.dir = Some(d.clone());
    }
    args.sampling.apply(cfg);
    if let Some(device) = &args.device {
        cfg.model.device = device.clone();
    }
    if let Some(url) = &args.rollout_server {
        cfg.rollout.server = Some(url.clone());
    }
    if let Some(cmd) = &args.rollout_server_cmd {
        cfg.rollout.server_cmd = Some(cmd.clone());
    }
    if let Some(reload) = args.rollout_server_reload {
        cfg.rollout.reload = reload;
    }
    if let Some(s) = args.sft_steps {
        cfg.sft.steps = s;
    }
    if let Some(s) = args.steps {
        cfg.rl.steps = s;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(o) = &args.out {
        cfg.out = o.clone();
    }
    if let Some(n) = &args.name {
        cfg.name = n.clone();
    }
    if let Some(e) = args.export_rollouts {
        cfg.rl.export_rollouts = e.as_str().to_string();
    }
    if let Some(e) = args.episodes {
        cfg.eval.episodes = e;
    }
    if let Some(i) = &args.init {
        cfg.model.init = Some(i.clone());
    }
    Ok(())
}

/// Runs `arbor train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = resolve(&args)?;
    let opts = RunOptions {
        resume: args.resume,
        quiet: args.quiet,
    };
    let out = run_config(cfg, &opts)?;
    println!(
        "success before RL {:.3} ± {:.3}, after RL {:.3} ± {:.3} ({} held-out tasks); {:.0}s; {}",
        out.before.success,
        out.before.stderr,
        out.after.success,
        out.after.stderr,
        out.after.episodes,
        out.wall_s,
        out.dir.join("summary.json").display()
    );
    Ok(())
}

/// Runs one training run of a resolved config (what `arbor train` does after parsing flags):
/// SFT, the evaluation before RL, every RL step, the evaluation after RL and `summary.json`.
pub fn run_config(cfg: TrainConfig, opts: &RunOptions) -> anyhow::Result<RunOutcome> {
    let quiet = opts.quiet;
    let mut run = Run::open(cfg, opts)?;
    run.sft()?;
    let bar = crate::run::Progress::new(run.config().rl.steps as u64, "rl", quiet);
    bar.set_position(run.trainer().state().rl_steps);
    while run.rl_steps_left() > 0 {
        let step = run.rl_step()?;
        let row = &step.row;
        let eval = step
            .eval
            .map(|e| format!(" held-out {:.3}", e.success))
            .unwrap_or_default();
        bar.inc(format!(
            "reward {:.3} traj {} trunc {} tokens {}{eval}",
            row.reward_mean, row.trajectories, row.truncated, row.generated_tokens
        ));
    }
    bar.finish();
    run.finish()
}
