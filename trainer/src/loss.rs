//! Losses on a [`DeviceBatch`]: PPO-clip policy loss with optional K3 KL and entropy terms, and
//! SFT cross-entropy (DESIGN §8).
//!
//! Every target `k` has a new logprob `new_k` (log-softmax of the logits at its source position
//! divided by the sampling temperature, gathered at its token), a behaviour logprob `old_k` and weights `P_k`, `N_k`, `W_k` (see
//! [`crate::pack`]). With `r = exp(new − old)` and `clip(r) = clamp(r, 1 − ε, 1 + ε)`:
//!
//! ```text
//! loss = Σ_k −(P·min(r, clip r) + N·max(r, clip r))        PPO-clip, summed over leaves by P/N
//!      + kl_coef · Σ_k W · (exp(ref − new) − (ref − new) − 1)   K3 KL to the reference (optional)
//!      − entropy_coef · Σ_k W · H_k                              entropy bonus (optional)
//! ```
//!
//! The same function computes the tree-packed and the flattened loss; only the weights differ.
//! The SFT loss is in [`crate::sft`].

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::model::{PolicyModel, to_f32_vec};
use crate::pack::DeviceBatch;

/// PPO loss settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Clip range ε of the ratio. By default, this is 0.2.
    pub clip_eps: f32,
    /// Coefficient of the K3 KL to the reference model (used only when the trainer has one).
    /// By default, this is 0.001 (as in Tree-GRPO).
    pub kl_coef: f32,
    /// Coefficient of the entropy bonus. By default, this is 0 (off); computing the entropy is
    /// skipped when it is 0 unless [`PpoConfig::entropy_stats`] asks for it.
    pub entropy_coef: f32,
    /// Whether to compute the entropy statistic even when `entropy_coef` is 0 (one more
    /// softmax-sized tensor per batch). By default, this is enabled.
    pub entropy_stats: bool,
    /// Sampling temperature T of the rollouts: the policy (and the reference) are scored with
    /// `log_softmax(logits / T)`, the distribution the engine's behaviour logprobs refer to
    /// ([`rollout::policy::SamplingParams::scoring_temperature`]), as verl and TRL do. Set it to
    /// the sampler's scoring temperature. By default, this is 1.
    pub temperature: f32,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            clip_eps: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.0,
            entropy_stats: true,
            temperature: 1.0,
        }
    }
}

impl PpoConfig {
    /// Checks the ranges: `0 < clip_eps < 1`, finite coefficients, `kl_coef ≥ 0`, a finite
    /// positive temperature.
    pub fn validate(&self) -> Result<(), crate::TrainerError> {
        let ok = self.temperature.is_finite()
            && self.temperature > 0.0
            && self.clip_eps > 0.0
            && self.clip_eps < 1.0
            && self.kl_coef.is_finite()
            && self.kl_coef >= 0.0
            && self.entropy_coef.is_finite();
        if ok {
            Ok(())
        } else {
            Err(crate::TrainerError::Config {
                reason: format!("PPO settings out of range: {self:?}"),
            })
        }
    }
}

/// Statistics of one loss evaluation. Weighted means use `W` (so they are per-token means under
/// the batch's aggregation).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    /// The loss value.
    pub loss: f32,
    /// W-weighted mean K3 KL to the reference (0 without a reference).
    pub kl: f32,
    /// W-weighted mean entropy (nats) of the policy at the targets (0 if not computed).
    pub entropy: f32,
    /// W-weighted fraction of targets whose ratio is outside `[1 − ε, 1 + ε]`.
    pub clip_frac: f32,
    /// `Σ W` over the targets: the weight of the means above when statistics of several parts
    /// of one batch are merged ([`LossStats::merge`]).
    pub weight: f32,
    /// Number of targets.
    pub targets: usize,
}

impl LossStats {
    /// Statistics of a batch from those of two disjoint parts of it: the losses and target
    /// counts add (each part's loss is its share of the batch loss), the means are
    /// `W`-weighted.
    pub fn merge(&self, other: &LossStats) -> LossStats {
        let weight = self.weight + other.weight;
        let mean = |a: f32, b: f32| {
            if weight > 0.0 {
                (a * self.weight + b * other.weight) / weight
            } else {
                0.0
            }
        };
        LossStats {
            loss: self.loss + other.loss,
            kl: mean(self.kl, other.kl),
            entropy: mean(self.entropy, other.entropy),
            clip_frac: mean(self.clip_frac, other.clip_frac),
            weight,
            targets: self.targets + other.targets,
        }
    }
}

/// Log-probabilities of every target under `model` at temperature `temperature`
/// (`log_softmax(logits / T)`; 1 for SFT), and the full log-softmax rows they come from.
///
/// # Shapes
/// - returns `(logprobs: [K], log_softmax rows: [K, vocab])`
pub fn target_logprobs(
    model: &PolicyModel,
    batch: &DeviceBatch,
    temperature: f32,
) -> (Tensor<1>, Tensor<2>) {
    let hidden = model.hidden_with(
        batch.tokens.clone(),
        batch.positions.clone(),
        &batch.attention,
    );
    target_logprobs_from(model, hidden, batch, temperature)
}

/// [`target_logprobs`] from the final hidden states of `batch` (from
/// [`PolicyModel::hidden_with`] or the last layer of a recomputing backward pass).
///
/// # Shapes
/// - `hidden: [B, T, d_model]`; returns as [`target_logprobs`]
pub fn target_logprobs_from(
    model: &PolicyModel,
    hidden: Tensor<3>,
    batch: &DeviceBatch,
    temperature: f32,
) -> (Tensor<1>, Tensor<2>) {
    let [b, t, d] = hidden.dims();
    // Only the target rows go through the LM head.
    let mut rows = model.head(hidden.reshape([b * t, d]).select(0, batch.source.clone()));
    if temperature != 1.0 {
        rows = rows.div_scalar(temperature as f64);
    }
    let logp_rows = log_softmax(rows, 1);
    let k = batch.source.dims()[0];
    let logp = logp_rows
        .clone()
        .gather(1, batch.target.clone().reshape([k, 1]))
        .reshape([k]);
    (logp, logp_rows)
}

/// Entropy of each row of a log-softmax matrix.
///
/// # Shapes
/// - `logp_rows: [K, vocab]` → `[K]`
fn row_entropy(logp_rows: Tensor<2>) -> Tensor<1> {
    let k = logp_rows.dims()[0];
    (logp_rows.clone().exp() * logp_rows)
        .sum_dim(1)
        .reshape([k])
        .neg()
}

pub(crate) fn scalar(t: Tensor<1>) -> f32 {
    to_f32_vec(t.into_data())[0]
}

/// The PPO-clip policy loss of a batch (module docs), with `ref_logprob` the reference model's
/// logprobs of the targets when a KL term is wanted.
///
/// # Shapes
/// - `ref_logprob: [K]`
/// - returns a loss of shape `[1]`
pub fn policy_loss(
    model: &PolicyModel,
    batch: &DeviceBatch,
    ref_logprob: Option<&Tensor<1>>,
    cfg: &PpoConfig,
) -> (Tensor<1>, LossStats) {
    let hidden = model.hidden_with(
        batch.tokens.clone(),
        batch.positions.clone(),
        &batch.attention,
    );
    policy_loss_from(model, hidden, batch, ref_logprob, cfg)
}

/// [`policy_loss`] from the final hidden states of `batch` (see [`target_logprobs_from`]).
pub fn policy_loss_from(
    model: &PolicyModel,
    hidden: Tensor<3>,
    batch: &DeviceBatch,
    ref_logprob: Option<&Tensor<1>>,
    cfg: &PpoConfig,
) -> (Tensor<1>, LossStats) {
    let (new, logp_rows) = target_logprobs_from(model, hidden, batch, cfg.temperature);
    let eps = cfg.clip_eps as f64;
    let ratio = (new.clone() - batch.old_logprob.clone()).exp();
    let clipped = ratio.clone().clamp(1.0 - eps, 1.0 + eps);
    let pg = (batch.pos_weight.clone() * ratio.clone().min_pair(clipped.clone())
        + batch.neg_weight.clone() * ratio.clone().max_pair(clipped))
    .neg();
    let mut loss = pg.sum();
    let w = batch.weight.clone();
    let w_total = scalar(w.clone().sum()).max(f32::MIN_POSITIVE);
    let mut stats = LossStats {
        targets: batch.source.dims()[0],
        weight: w_total,
        ..LossStats::default()
    };
    if let Some(reference) = ref_logprob {
        let delta = reference.clone() - new.clone();
        let k3 = delta.clone().exp() - delta - 1.0;
        let kl = (w.clone() * k3).sum();
        stats.kl = scalar(kl.clone().detach()) / w_total;
        if cfg.kl_coef != 0.0 {
            loss = loss + kl.mul_scalar(cfg.kl_coef as f64);
        }
    }
    if cfg.entropy_coef != 0.0 || cfg.entropy_stats {
        // Only differentiated when it is part of the loss: a statistic alone must not leave
        // its `[K, vocab]` intermediates in the autodiff graph.
        let rows = match cfg.entropy_coef != 0.0 {
            true => logp_rows,
            false => logp_rows.detach(),
        };
        let ent = (w.clone() * row_entropy(rows)).sum();
        stats.entropy = scalar(ent.clone().detach()) / w_total;
        if cfg.entropy_coef != 0.0 {
            loss = loss - ent.mul_scalar(cfg.entropy_coef as f64);
        }
    }
    let outside = (ratio.detach() - 1.0).abs().greater_elem(eps).float();
    stats.clip_frac = scalar((outside * w).sum()) / w_total;
    stats.loss = scalar(loss.clone().detach());
    (loss, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attn::LayoutChoice;
    use crate::pack::{LossAgg, TrainBatch, flatten_trees, longest_trajectory, pack_trees_capped};
    use crate::test_util::{norm, param_grads, random_rollout, small_config};
    use burn::optim::GradientsParams;
    use burn::tensor::Device;
    use rollout::advantage::{Estimator, estimate};
    use rollout::engine::Weights;

    /// Loss value, stats and per-parameter gradients of one batch.
    fn loss_and_grads(
        model: &PolicyModel,
        reference: &PolicyModel,
        batch: &TrainBatch,
        layout: LayoutChoice,
        cfg: &PpoConfig,
    ) -> (f32, LossStats, Vec<Option<Vec<f32>>>) {
        let device = Device::flex().autodiff();
        let db = batch.to_device_with(&device, layout).unwrap();
        let plain = batch.to_device_with(&Device::flex(), layout).unwrap();
        let (ref_lp, _) = target_logprobs(reference, &plain, cfg.temperature);
        let (loss, stats) = policy_loss(model, &db, Some(&ref_lp.autodiff()), cfg);
        let value = scalar(loss.clone().detach());
        let grads = GradientsParams::from_grads(loss.backward(), model);
        (value, stats, param_grads(model, &grads))
    }

    /// The tree-packed loss equals the flattened (per-trajectory) loss, and so does every
    /// parameter gradient, on random trees, for both aggregations and for a trajectory-level
    /// (tree-GRPO) and the node-level (TreeRL) estimator, with the KL and entropy terms on.
    /// The packed batch is scored with a dense mask and with the sparse layout (query blocks of
    /// 1, 4 and 7 positions, so blocks straddle node and row boundaries); the flattened
    /// reference always with a dense mask.
    ///
    /// Tolerance: both sides compute the same sums in f32, in different orders (a shared-prefix
    /// token's gradient is accumulated once in the packed row, from several rows in the flattened
    /// batch; masked attention entries contribute exact zeros). Rounding of such reorderings is a
    /// few f32 ulps relative to the size of the result, so we require, per parameter tensor,
    /// `‖g_packed − g_flat‖ ≤ 1e-5 · ‖g_flat‖` (norm-relative, so that entries that are zero up
    /// to cancellation do not need an absolute threshold); `‖g_flat‖` is floored at 1e-12 for
    /// parameters with no gradient signal (exactly zero on both sides, e.g. unused embedding
    /// rows are part of a larger tensor and never alone).
    #[test]
    fn packed_loss_and_gradients_equal_flattened() {
        let cfg = small_config();
        let ppo = PpoConfig {
            kl_coef: 0.05,
            entropy_coef: 0.01,
            ..PpoConfig::default()
        };
        let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
        let mut clip_seen = (false, false);
        for seed in 0..2u64 {
            let rollouts: Vec<_> = (0..2)
                .map(|task| random_rollout(task, seed * 10 + task, cfg.vocab_size))
                .collect();
            let device = Device::flex().autodiff();
            let model = PolicyModel::from_weights(
                &cfg,
                &Weights::random_with_std(&cfg, seed, 0.1),
                &device,
            )
            .unwrap();
            let reference = PolicyModel::from_weights(
                &cfg,
                &Weights::random_with_std(&cfg, seed + 100, 0.1),
                &Device::flex(),
            )
            .unwrap();
            for estimator in [Estimator::TreeGrpo, Estimator::TreeRl] {
                let advs = estimate(estimator, &rollouts).unwrap();
                let groups: Vec<_> = rollouts.iter().zip(&advs).collect();
                // Whole trees, rows capped at the longest trajectory, and a cap so small that
                // every node starts a new row (the most context repeated).
                let caps = [usize::MAX, longest_trajectory(&groups), 1];
                for (agg, cap) in [LossAgg::TokenMean, LossAgg::SeqMeanTokenMean]
                    .into_iter()
                    .flat_map(|agg| caps.map(|cap| (agg, cap)))
                {
                    let packed = TrainBatch::new(pack_trees_capped(&groups, agg, cap).unwrap());
                    let flat = TrainBatch::new(flatten_trees(&groups, agg).unwrap());
                    if cap == usize::MAX {
                        assert!(packed.num_tokens() < flat.num_tokens());
                    } else {
                        assert!(packed.padded_len() <= cap.max(longest_trajectory(&groups)));
                    }
                    if cap == 1 {
                        assert!(
                            packed.rows() > rollouts.iter().map(|r| r.num_trees as usize).sum()
                        );
                    }
                    let (lf, sf, gf) =
                        loss_and_grads(&model, &reference, &flat, LayoutChoice::Dense, &ppo);
                    for layout in [
                        LayoutChoice::Dense,
                        LayoutChoice::Sparse { block: 1 },
                        LayoutChoice::Sparse { block: 4 },
                        LayoutChoice::Sparse { block: 7 },
                    ] {
                        let (lp, sp, gp) =
                            loss_and_grads(&model, &reference, &packed, layout, &ppo);
                        let rel = ((lp - lf) as f64).abs() / (lf as f64).abs().max(1e-12);
                        assert!(
                            rel <= 1e-5,
                            "{estimator} {agg} cap {cap} {layout:?}: loss {lp} vs {lf}"
                        );
                        worst_loss = worst_loss.max(rel);
                        for (stat_p, stat_f) in [(sp.kl, sf.kl), (sp.entropy, sf.entropy)] {
                            assert!((stat_p - stat_f).abs() <= 1e-5 * stat_f.abs().max(1e-6));
                        }
                        clip_seen.0 |= sf.clip_frac > 0.0;
                        clip_seen.1 |= sf.clip_frac < 1.0;
                        assert_eq!(gp.len(), gf.len());
                        for (k, (p, f)) in gp.iter().zip(&gf).enumerate() {
                            let (p, f) = (p.as_ref().unwrap(), f.as_ref().unwrap());
                            let diff: Vec<f32> = p.iter().zip(f).map(|(a, b)| a - b).collect();
                            let rel = norm(&diff) / norm(f).max(1e-12);
                            assert!(
                                rel <= 1e-5,
                                "{estimator} {agg} cap {cap} {layout:?}: parameter {k} rel diff {rel}"
                            );
                            worst_grad = worst_grad.max(rel);
                        }
                    }
                }
            }
        }
        assert!(clip_seen.0 && clip_seen.1, "both PPO branches exercised");
        eprintln!(
            "packed vs flattened: max loss rel diff {worst_loss:e}, max grad rel diff {worst_grad:e}"
        );
    }

    /// Layer-wise recomputation gives the gradients of one backward pass through the whole
    /// graph, bit for bit: a tied-embedding, grouped-query model on tree-packed rows, with a
    /// dense mask and with the sparse layout, with the KL and entropy terms on.
    #[test]
    fn checkpointed_gradients_equal_whole_graph_gradients() {
        let cfg = rollout::engine::ModelConfig {
            tie_embeddings: true,
            ..small_config()
        };
        let ppo = PpoConfig {
            kl_coef: 0.05,
            entropy_coef: 0.01,
            ..PpoConfig::default()
        };
        let device = Device::flex().autodiff();
        let model =
            PolicyModel::from_weights(&cfg, &Weights::random_with_std(&cfg, 5, 0.1), &device)
                .unwrap();
        let rollouts: Vec<_> = (0..2)
            .map(|task| random_rollout(task, 40 + task, cfg.vocab_size))
            .collect();
        let advs = estimate(Estimator::TreeGrpo, &rollouts).unwrap();
        let groups: Vec<_> = rollouts.iter().zip(&advs).collect();
        let batch =
            TrainBatch::new(pack_trees_capped(&groups, LossAgg::TokenMean, usize::MAX).unwrap());
        for layout in [LayoutChoice::Dense, LayoutChoice::Sparse { block: 4 }] {
            let db = batch.to_device_with(&device, layout).unwrap();
            let reference = db.old_logprob.clone() - 0.01;
            let loss_of = |hidden| policy_loss_from(&model, hidden, &db, Some(&reference), &ppo);
            let hidden = model.hidden_with(db.tokens.clone(), db.positions.clone(), &db.attention);
            let (loss, whole_stats) = loss_of(hidden);
            let whole = GradientsParams::from_grads(loss.backward(), &model);
            let (checkpointed, stats) = model.checkpointed_grads(
                db.tokens.clone(),
                db.positions.clone(),
                &db.attention,
                loss_of,
            );
            assert_eq!(stats, whole_stats, "{layout:?}");
            let (a, b) = (
                param_grads(&model, &whole),
                param_grads(&model, &checkpointed),
            );
            assert!(
                a.iter().all(Option::is_some),
                "every parameter has a gradient"
            );
            assert_eq!(a, b, "{layout:?}");
        }
    }
}
