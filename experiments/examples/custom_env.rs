//! An environment defined outside arbor, in one file, and an `arbor` binary that knows it.
//!
//! `lock`: a combination lock hides a number in `0..=max`; each `try[N]` is answered with
//! `higher`, `lower` or `open` (reward 1). The expert bisects. Every command works with it:
//! `cargo run --release --example custom_env -- envs show lock --seed 3`, or
//! `cargo run --release --example custom_env -- train --env lock -k max=15 --sft-steps 300`.

use clap::Parser;
use envs::{Env, Expert, KnobInfo, Knobs, Outcome, Step, parse_action, rng};

/// The knobs of `lock`.
#[derive(Debug, Clone)]
pub struct LockConfig {
    max: u32,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig { max: 15 }
    }
}

impl Knobs for LockConfig {
    const KNOBS: &'static [KnobInfo] = &[KnobInfo {
        name: "max",
        default: "15",
        doc: "largest code, 1..=999 (the horizon is log2 of it)",
    }];
    fn set_knob(&mut self, name: &str, value: &str) -> Result<(), String> {
        match (name, value.parse::<u32>()) {
            ("max", Ok(v)) if (1..=999).contains(&v) => {
                self.max = v;
                Ok(())
            }
            _ => Err("an integer in 1..=999".into()),
        }
    }
    fn knob_values(&self) -> Vec<(&'static str, String)> {
        vec![("max", self.max.to_string())]
    }
}

/// One lock: its code, what the expert knows so far, and the turns left.
#[derive(Debug, Clone)]
pub struct Lock {
    prompt: String,
    code: u32,
    range: (u32, u32),
    turns: usize,
    turns_left: usize,
}

impl Lock {
    fn new(cfg: &LockConfig, id: u64) -> Lock {
        let code = (rng::derive(&[0x10C, id]) % u64::from(cfg.max + 1)) as u32;
        let turns = (32 - cfg.max.leading_zeros()) as usize + 1;
        Lock {
            prompt: format!("Open the lock: a code in 0..={}. Tools: try.\n", cfg.max),
            code,
            range: (0, cfg.max),
            turns,
            turns_left: turns,
        }
    }
}

impl Env for Lock {
    fn prompt(&self) -> &str {
        &self.prompt
    }
    fn step(&mut self, action: &str) -> Step {
        let (reward, done, outcome, observation) = if self.turns_left == 0 {
            (
                0.0,
                true,
                Outcome::Finished,
                "the lock is closed for good".to_string(),
            )
        } else {
            self.turns_left -= 1;
            match parse_action(action).map(|a| (a.name, a.arg.parse::<u32>())) {
                Ok(("try", Ok(n))) if n == self.code => (1.0, true, Outcome::Solved, "open".into()),
                Ok(("try", Ok(n))) => {
                    let hint = if n < self.code { "higher" } else { "lower" };
                    if n < self.code {
                        self.range.0 = self.range.0.max(n + 1);
                    } else {
                        self.range.1 = self.range.1.min(n.saturating_sub(1));
                    }
                    let out = if self.turns_left == 0 {
                        Outcome::OutOfTurns
                    } else {
                        Outcome::Continue
                    };
                    (0.0, self.turns_left == 0, out, hint.to_string())
                }
                Ok(_) => (
                    0.0,
                    self.turns_left == 0,
                    Outcome::Malformed,
                    "use try[N]".into(),
                ),
                Err(why) => (0.0, self.turns_left == 0, Outcome::Malformed, why),
            }
        };
        Step {
            observation: format!("{observation}\n"),
            reward,
            done,
            outcome,
        }
    }
    fn max_turns(&self) -> usize {
        self.turns
    }
}

impl Expert for Lock {
    fn expert_action(&self) -> String {
        format!("try[{}]", (self.range.0 + self.range.1) / 2)
    }
    fn mistake_action(&self, _seed: u64) -> Option<String> {
        None
    }
}

/// Registers `lock` (once; later calls change nothing).
pub fn register() {
    envs::registry::register("lock", "find a code by bisection", Lock::new);
}

#[allow(dead_code)] // the library test includes this file for `register` alone
fn main() {
    register();
    if let Err(err) = experiments::dispatch(experiments::cli::Cli::parse()) {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
