//! Trains a policy through the library API: a tiny model on 1-hop multihop, a short SFT warm
//! start, then tree RL. `cargo run --release --example train_tiny [OUT_DIR]`

use experiments::config::TrainConfig;
use experiments::run::Run;

fn main() -> anyhow::Result<()> {
    let mut cfg = TrainConfig::default();
    if let Some(out) = std::env::args().nth(1) {
        cfg.out = out.into();
    }
    (cfg.sft.steps, cfg.rl.steps, cfg.rl.tasks_per_step) = (200, 4, 4);
    cfg.eval.episodes = 16;

    let mut run = Run::create(cfg)?;
    let before = run.sft()?;
    println!(
        "after SFT: success {:.3} on {} tasks",
        before.success, before.episodes
    );
    while run.rl_steps_left() > 0 {
        let step = run.rl_step()?;
        let row = &step.row;
        println!(
            "rl step {}: reward {:.3}, {} tokens, {} trajectories",
            step.step, row.reward_mean, row.generated_tokens, row.trajectories
        );
    }
    let done = run.finish()?;
    let (lo, hi) = done.after.ci95;
    let dir = done.dir.display();
    println!(
        "after RL: success {:.3} (95% CI {lo:.3}..{hi:.3}) in {dir}",
        done.after.success
    );
    Ok(())
}
