//! The RL loop moves the policy towards reward: sampling from the engine, advantages,
//! tree packing, the PPO update and the weight sync back to the engine, end to end on a bandit.
//!
//! Each task is a fixed prompt; an action is one token, sampled from the engine's next-token
//! distribution; the reward is 1 when the token's parity is the rewarded one. Every step samples
//! eight actions per prompt as one tree, runs GRPO, trains one update, and loads the new weights
//! into the engine. The exact probability of the rewarded parity (summed softmax, no sampling
//! noise) must rise by a clear margin whichever parity is rewarded, so a sign error, a
//! misaligned target or a lost weight sync fails the test.

use envs::Outcome;
use rand::{RngExt, SeedableRng};
use rollout::advantage::{Estimator, estimate};
use rollout::engine::{Engine, ModelConfig, Weights};
use rollout::tokenizer::{ByteTokenizer, Tokenizer};
use rollout::tree::{LeafInfo, TaskRollout};
use trainer::optim::AdamWConfig;
use trainer::pack::{LossAgg, Packing, minibatches};
use trainer::trainer::{Trainer, TrainerConfig};

const PROMPTS: [&str; 4] = ["pick:", "choose one>", "token?", "go "];

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = row.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn next_token_probs(engine: &Engine, prompt: &[u32]) -> Vec<f64> {
    let logits = engine.forward_full(prompt);
    let last = logits.row(prompt.len() - 1).to_vec();
    softmax(&last)
}

/// Mean over the prompts of the probability of a token of parity `parity`.
fn parity_prob(engine: &Engine, prompts: &[Vec<u32>], parity: u32) -> f64 {
    let total: f64 = prompts
        .iter()
        .map(|p| {
            next_token_probs(engine, p)
                .iter()
                .enumerate()
                .filter(|(t, _)| *t as u32 % 2 == parity)
                .map(|(_, q)| q)
                .sum::<f64>()
        })
        .sum();
    total / prompts.len() as f64
}

/// Trains `steps` bandit RL steps rewarding `parity`; returns the rewarded parity's
/// probability before and after.
fn train(parity: u32, steps: u64) -> (f64, f64) {
    let cfg = ModelConfig {
        n_layers: 2,
        ..ModelConfig::tiny()
    };
    let weights = Weights::random(&cfg, 21);
    let mut engine = Engine::new(cfg.clone(), &weights).unwrap();
    let config = TrainerConfig {
        optim: AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
        seed: 21,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(&cfg, config).unwrap();
    let tok = ByteTokenizer;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| {
            let mut t = vec![tok.bos()];
            t.extend(tok.encode(p));
            t
        })
        .collect();
    let before = parity_prob(&engine, &prompts, parity);
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(parity) + 7);
    for _ in 0..steps {
        let mut groups = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let probs = next_token_probs(&engine, prompt);
            let mut group = TaskRollout::new(i as u64, PROMPTS[i], prompt.clone());
            let tree = group.new_tree();
            for _ in 0..8 {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let token = probs
                    .iter()
                    .position(|&q| {
                        acc += q;
                        u < acc
                    })
                    .unwrap_or(probs.len() - 1) as u32;
                let logprob = probs[token as usize].ln() as f32;
                let entropy = -probs.iter().map(|q| q * q.max(1e-30).ln()).sum::<f64>() as f32;
                let id = group
                    .add_action(None, tree, vec![token], "", vec![logprob], vec![entropy])
                    .unwrap();
                let win = token % 2 == parity;
                let (reward, outcome) = if win {
                    (1.0, Outcome::Solved)
                } else {
                    (0.0, Outcome::Failed)
                };
                group
                    .set_leaf(id, LeafInfo::finished(reward, outcome))
                    .unwrap();
            }
            groups.push(group);
        }
        let adv = estimate(Estimator::Grpo, &groups).unwrap();
        let pairs: Vec<_> = groups.iter().zip(adv.iter()).collect();
        let batches = minibatches(&pairs, pairs.len(), LossAgg::TokenMean, Packing::Tree).unwrap();
        trainer.rl_step(&batches, 1).unwrap();
        engine.load_weights(&trainer.weights()).unwrap();
    }
    (before, parity_prob(&engine, &prompts, parity))
}

#[test]
fn rl_raises_the_probability_of_the_rewarded_choice() {
    for parity in [0, 1] {
        let (before, after) = train(parity, 40);
        eprintln!("rewarding parity {parity}: P {before:.3} -> {after:.3}");
        assert!(
            after > before + 0.25,
            "rewarding parity {parity}: P {before:.3} -> {after:.3}"
        );
    }
}
