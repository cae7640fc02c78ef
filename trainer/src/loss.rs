//! Losses on a [`DeviceBatch`]: PPO-clip policy loss with optional K3 KL and entropy terms, and
//! SFT cross-entropy (DESIGN §8).
//!
//! Every target `k` has a new logprob `new_k` (log-softmax of the logits at its source position,
//! gathered at its token), a behaviour logprob `old_k` and weights `P_k`, `N_k`, `W_k` (see
//! [`crate::pack`]). With `r = exp(new − old)` and `clip(r) = clamp(r, 1 − ε, 1 + ε)`:
//!
//! ```text
//! loss = Σ_k −(P·min(r, clip r) + N·max(r, clip r))        PPO-clip, summed over leaves by P/N
//!      + kl_coef · Σ_k W · (exp(ref − new) − (ref − new) − 1)   K3 KL to the reference (optional)
//!      − entropy_coef · Σ_k W · H_k                              entropy bonus (optional)
//! ```
//!
//! The same function computes the tree-packed and the flattened loss; only the weights differ.
//! SFT is `−Σ_k W · new_k` ([`sft_loss`]).

use burn::tensor::activation::log_softmax;
use burn::tensor::Tensor;

use crate::model::{PolicyModel, to_f32_vec};
use crate::pack::DeviceBatch;

/// PPO loss settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            clip_eps: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.0,
            entropy_stats: true,
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
    /// Number of targets.
    pub targets: usize,
}

/// Log-probabilities of every target under `model`, and the full log-softmax rows they come from.
///
/// # Shapes
/// - returns `(logprobs: [K], log_softmax rows: [K, vocab])`
pub fn target_logprobs(model: &PolicyModel, batch: &DeviceBatch) -> (Tensor<1>, Tensor<2>) {
    let logits = model.forward(
        batch.tokens.clone(),
        batch.positions.clone(),
        batch.mask.clone(),
    );
    let [b, t, v] = logits.dims();
    let rows = logits.reshape([b * t, v]).select(0, batch.source.clone());
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

fn scalar(t: Tensor<1>) -> f32 {
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
    let (new, logp_rows) = target_logprobs(model, batch);
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
        let ent = (w.clone() * row_entropy(logp_rows)).sum();
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

/// SFT cross-entropy `−Σ_k W_k · logp_k` (token-mean when the batch comes from
/// [`crate::pack::sft_sequences`]).
///
/// # Shapes
/// - returns a loss of shape `[1]`
pub fn sft_loss(model: &PolicyModel, batch: &DeviceBatch) -> (Tensor<1>, LossStats) {
    let (logp, _) = target_logprobs(model, batch);
    let loss = (batch.weight.clone() * logp).sum().neg();
    let stats = LossStats {
        loss: scalar(loss.clone().detach()),
        targets: batch.source.dims()[0],
        ..LossStats::default()
    };
    (loss, stats)
}
