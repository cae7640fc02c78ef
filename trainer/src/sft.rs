//! Supervised warm start (DESIGN §8): cross-entropy on the action tokens of encoded expert
//! demonstrations.
//!
//! A demonstration is `(tokens, loss_mask)` (`rollout::tokenizer::Encoded`, built by `datasets`): `loss_mask[i]` marks
//! `tokens[i]` as a target (action tokens and their closing `<eos>`; prompt and observation tokens
//! are never targets). Each target is scored from the previous position under plain causal
//! attention, and the loss is the token mean over all targets of the batch:
//! `−(1 / #targets) · Σ log p(target)`. Rows are padded to the longest one (see
//! [`TrainBatch::to_device`]).

use burn::tensor::Tensor;
use rollout::tokenizer::Encoded;

use crate::TrainerError;
use crate::loss::{LossStats, scalar, target_logprobs_from};
use crate::model::PolicyModel;
use crate::pack::{DeviceBatch, PackedSequence, Target, TrainBatch};

/// SFT sequences from tokenized demonstrations: `(tokens, loss_mask)` pairs where
/// `loss_mask[i]` marks `tokens[i]` as a target (e.g. `datasets::Encoded`). Targets are scored
/// from the previous position with weight `W = 1 / (targets in all examples)` (token-mean);
/// a masked first token has no previous position and is skipped.
pub fn sft_sequences<'a>(
    examples: impl IntoIterator<Item = (&'a [u32], &'a [bool])>,
) -> Result<Vec<PackedSequence>, TrainerError> {
    let mut out = Vec::new();
    for (i, (tokens, mask)) in examples.into_iter().enumerate() {
        if tokens.len() != mask.len() {
            return Err(TrainerError::batch(format!(
                "demonstration {i}: {} tokens but {} mask entries",
                tokens.len(),
                mask.len()
            )));
        }
        let targets = (1..tokens.len())
            .filter(|&t| mask[t])
            .map(|t| Target {
                source: t as u32 - 1,
                token: tokens[t],
                old_logprob: 0.0,
                pos_weight: 0.0,
                neg_weight: 0.0,
                weight: 1.0,
            })
            .collect();
        out.push(PackedSequence::causal(tokens.to_vec(), targets));
    }
    let total: usize = out.iter().map(|s| s.targets.len()).sum();
    for t in out.iter_mut().flat_map(|s| s.targets.iter_mut()) {
        t.weight = 1.0 / total as f32;
    }
    Ok(out)
}

/// One padded SFT batch from encoded demonstrations (token-mean over all their targets).
pub fn sft_batch(demos: &[Encoded]) -> Result<TrainBatch, TrainerError> {
    let seqs = sft_sequences(
        demos
            .iter()
            .map(|d| (d.tokens.as_slice(), d.loss_mask.as_slice())),
    )?;
    Ok(TrainBatch::new(seqs))
}

/// SFT cross-entropy `−Σ_k W_k · logp_k` (token-mean when the batch comes from
/// [`sft_sequences`] / [`sft_batch`]).
///
/// # Shapes
/// - returns a loss of shape `[1]`
pub fn sft_loss(model: &PolicyModel, batch: &DeviceBatch) -> (Tensor<1>, LossStats) {
    let hidden = model.hidden_with(
        batch.tokens.clone(),
        batch.positions.clone(),
        &batch.attention,
    );
    sft_loss_from(model, hidden, batch)
}

/// [`sft_loss`] from the final hidden states of `batch` (see
/// [`crate::loss::target_logprobs_from`]).
pub fn sft_loss_from(
    model: &PolicyModel,
    hidden: Tensor<3>,
    batch: &DeviceBatch,
) -> (Tensor<1>, LossStats) {
    let (logp, _) = target_logprobs_from(model, hidden, batch, 1.0);
    let loss = (batch.weight.clone() * logp).sum().neg();
    let stats = LossStats {
        loss: scalar(loss.clone().detach()),
        weight: scalar(batch.weight.clone().sum()),
        targets: batch.source.dims()[0],
        ..LossStats::default()
    };
    (loss, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_masked_tokens_scored_from_the_previous_position() {
        let tokens = [257u32, 10, 11, 12, 258, 13];
        let mask = [false, false, true, true, true, false];
        let seqs = sft_sequences([(&tokens[..], &mask[..])]).unwrap();
        let got: Vec<(u32, u32)> = seqs[0]
            .targets
            .iter()
            .map(|t| (t.source, t.token))
            .collect();
        assert_eq!(got, vec![(1, 11), (2, 12), (3, 258)]);
        assert!(
            seqs[0]
                .targets
                .iter()
                .all(|t| (t.weight - 1.0 / 3.0).abs() < 1e-7)
        );
        assert!(sft_sequences([(&tokens[..], &mask[..2])]).is_err());
    }
}
