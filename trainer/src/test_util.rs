//! Shared test fixtures: a small model configuration, random rollout trees, gradient readback.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use envs::Outcome;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rollout::engine::ModelConfig;
use rollout::tree::{LeafInfo, NodeId, TaskRollout};

use crate::model::{PolicyModel, to_f32_vec};

/// A model small enough for gradient tests to run in milliseconds, with grouped-query attention.
pub fn small_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 48,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 64,
        max_seq_len: 512,
        ..ModelConfig::tiny()
    }
}

fn random_tokens(rng: &mut StdRng, vocab: usize, max_len: usize) -> Vec<u32> {
    let n = rng.random_range(1..=max_len);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn grow(
    r: &mut TaskRollout,
    rng: &mut StdRng,
    vocab: usize,
    parent: Option<NodeId>,
    tree: u32,
    depth: u32,
) {
    let tokens = random_tokens(rng, vocab, 5);
    // Behaviour logprobs near the uniform distribution's, so that ratios land on both sides of
    // the clip range.
    let uniform = -(vocab as f32).ln();
    let logprobs = tokens
        .iter()
        .map(|_| uniform + rng.random_range(-0.6f32..0.6))
        .collect();
    let entropies = vec![0.0; tokens.len()];
    let a = r
        .add_action(parent, tree, tokens, "", logprobs, entropies)
        .unwrap();
    if depth >= 3 || rng.random_bool(0.35) {
        let reward = rng.random::<f32>();
        r.set_leaf(a, LeafInfo::finished(reward, Outcome::Failed))
            .unwrap();
        return;
    }
    // Step granularity (an observation between turns) or a segment boundary (action → action).
    let next = if rng.random_bool(0.7) {
        r.add_observation(a, random_tokens(rng, vocab, 4), "")
            .unwrap()
    } else {
        a
    };
    for _ in 0..rng.random_range(1..=3) {
        grow(r, rng, vocab, Some(next), tree, depth + 1);
    }
}

/// A random task group: a prompt of 1–6 tokens and 1–2 trees with 1–2 top nodes each, random
/// branching (1–3 children), random token lengths, depth ≤ 4, random rewards in `[0, 1)`.
pub fn random_rollout(task_id: u64, seed: u64, vocab: usize) -> TaskRollout {
    let mut rng = StdRng::seed_from_u64(seed);
    let prompt = random_tokens(&mut rng, vocab, 6);
    let mut r = TaskRollout::new(task_id, "", prompt);
    for _ in 0..rng.random_range(1..=2u32) {
        let tree = r.new_tree();
        for _ in 0..rng.random_range(1..=2u32) {
            grow(&mut r, &mut rng, vocab, None, tree, 0);
        }
    }
    r.validate().unwrap();
    r
}

/// Collects the gradient (or `None`) of every parameter, in visiting order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(
            self.grads
                .get::<D>(param.id)
                .map(|g| to_f32_vec(g.into_data())),
        );
    }
}

/// The gradient of every parameter of `model`, in canonical order.
pub fn param_grads(model: &PolicyModel, grads: &GradientsParams) -> Vec<Option<Vec<f32>>> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// An RL mini-batch (tree-packed, token-mean, tree-GRPO) of two random task groups.
pub fn rl_batch(seed: u64) -> crate::pack::TrainBatch {
    let vocab = small_config().vocab_size;
    let rollouts: Vec<_> = (0..2)
        .map(|task| random_rollout(task, seed * 7 + task, vocab))
        .collect();
    let advs =
        rollout::advantage::estimate(rollout::advantage::Estimator::TreeGrpo, &rollouts).unwrap();
    let groups: Vec<_> = rollouts.iter().zip(&advs).collect();
    crate::pack::TrainBatch::new(
        crate::pack::pack_trees(&groups, crate::pack::LossAgg::TokenMean).unwrap(),
    )
}

/// An SFT batch of three random demonstrations (`<bos>`-like prompt, then alternating action
/// (targets) and observation spans).
pub fn sft_demo_batch(seed: u64) -> crate::pack::TrainBatch {
    let vocab = small_config().vocab_size;
    let mut rng = StdRng::seed_from_u64(seed);
    let demos: Vec<(Vec<u32>, Vec<bool>)> = (0..3)
        .map(|_| {
            let mut tokens = random_tokens(&mut rng, vocab, 5);
            let mut mask = vec![false; tokens.len()];
            for turn in 0..rng.random_range(1..=3) {
                let action = random_tokens(&mut rng, vocab, 6);
                mask.extend(std::iter::repeat_n(true, action.len()));
                tokens.extend(action);
                if turn < 2 {
                    let obs = random_tokens(&mut rng, vocab, 4);
                    mask.extend(std::iter::repeat_n(false, obs.len()));
                    tokens.extend(obs);
                }
            }
            (tokens, mask)
        })
        .collect();
    let seqs =
        crate::sft::sft_sequences(demos.iter().map(|(t, m)| (t.as_slice(), m.as_slice()))).unwrap();
    crate::pack::TrainBatch::new(seqs)
}
