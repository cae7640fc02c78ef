//! Padding sequences into a [`TrainBatch`] and its device tensors.

use super::*;

/// A padded mini-batch of sequences, ready for [`TrainBatch::to_device`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    /// The sequences (rows).
    pub sequences: Vec<PackedSequence>,
    /// Which attention layout [`TrainBatch::to_device`] may use (planner's choice by default).
    pub layout: LayoutChoice,
}

impl TrainBatch {
    /// A batch of the given sequences.
    pub fn new(sequences: Vec<PackedSequence>) -> Self {
        TrainBatch {
            sequences,
            layout: LayoutChoice::Auto,
        }
    }

    /// The rows split into at most `n` shards with targets, balanced by tokens (longest row
    /// first, each to the shard with the fewest tokens so far; rows keep their order within a
    /// shard). Target weights are kept, so the shards' losses sum to the batch loss.
    pub fn shards(&self, n: usize) -> Vec<TrainBatch> {
        let n = n.clamp(1, self.rows().max(1));
        let mut order: Vec<usize> = (0..self.rows()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.sequences[i].len()));
        let mut load = vec![0usize; n];
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in order {
            let k = (0..n).min_by_key(|&k| (load[k], k)).expect("n >= 1");
            load[k] += self.sequences[i].len();
            members[k].push(i);
        }
        members
            .into_iter()
            .filter_map(|mut rows| {
                rows.sort_unstable();
                let seqs: Vec<PackedSequence> =
                    rows.iter().map(|&i| self.sequences[i].clone()).collect();
                let has_targets = seqs.iter().any(|s| !s.targets.is_empty());
                has_targets.then_some(TrainBatch {
                    sequences: seqs,
                    layout: self.layout,
                })
            })
            .collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.sequences.len()
    }

    /// Padded row length (the longest sequence).
    pub fn padded_len(&self) -> usize {
        self.sequences.iter().map(|s| s.len()).max().unwrap_or(0)
    }

    /// Total number of targets.
    pub fn num_targets(&self) -> usize {
        self.sequences.iter().map(|s| s.targets.len()).sum()
    }

    /// Non-padding tokens (what a forward pass really computes).
    pub fn num_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.len()).sum()
    }

    /// Pads the rows to a common length and uploads everything, with the attention layout
    /// [`AttentionLayout::plan`] picks under [`TrainBatch::layout`] (dense or sparse, see
    /// [`crate::attn`]). Padding tokens
    /// are id 0 at position 0, attend only to themselves, are attended by nobody, and are never
    /// targets.
    pub fn to_device(&self, device: &Device) -> Result<DeviceBatch, TrainerError> {
        self.to_device_with(device, self.layout)
    }

    /// [`TrainBatch::to_device`] with the layout choice given here instead of the batch's.
    pub fn to_device_with(
        &self,
        device: &Device,
        choice: LayoutChoice,
    ) -> Result<DeviceBatch, TrainerError> {
        if self.rows() == 0 || self.padded_len() == 0 {
            return Err(TrainerError::batch("empty batch"));
        }
        let spans: Vec<_> = self.sequences.iter().map(PackedSequence::spans).collect();
        let (layout, t) = AttentionLayout::plan(&spans, choice);
        let b = self.rows();
        let mut tokens = vec![0i64; b * t];
        let mut positions = vec![0i64; b * t];
        let mut src = Vec::new();
        let mut tgt = Vec::new();
        let mut cols: [Vec<f32>; 4] = Default::default();
        for (row, seq) in self.sequences.iter().enumerate() {
            let n = seq.len();
            for i in 0..n {
                tokens[row * t + i] = seq.tokens[i] as i64;
                positions[row * t + i] = seq.positions[i] as i64;
            }
            for target in &seq.targets {
                if target.source as usize >= n {
                    return Err(TrainerError::batch(format!(
                        "target source {} outside a sequence of {n} tokens",
                        target.source
                    )));
                }
                src.push((row * t) as i64 + target.source as i64);
                tgt.push(target.token as i64);
                cols[0].push(target.old_logprob);
                cols[1].push(target.pos_weight);
                cols[2].push(target.neg_weight);
                cols[3].push(target.weight);
            }
        }
        let k = src.len();
        if k == 0 {
            return Err(TrainerError::batch("batch has no targets"));
        }
        let int2 = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, t]), device);
        let int1 = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [k]), device);
        let float1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [k]), device);
        let [old, pos, neg, weight] = cols;
        Ok(DeviceBatch {
            tokens: int2(tokens),
            positions: int2(positions),
            attention: layout.to_device(b, t, device),
            source: int1(src),
            target: int1(tgt),
            old_logprob: float1(old),
            pos_weight: float1(pos),
            neg_weight: float1(neg),
            weight: float1(weight),
        })
    }
}

/// A [`TrainBatch`] on a device. `K` is the number of targets.
///
/// # Shapes
/// - `tokens`, `positions: [B, T]`; `attention`: see [`AttentionMask`]
/// - `source: [K]` (flat index `row·T + position` into `[B·T]`), `target: [K]`
/// - `old_logprob`, `pos_weight`, `neg_weight`, `weight: [K]`
#[derive(Debug, Clone)]
pub struct DeviceBatch {
    /// Token ids.
    pub tokens: Tensor<2, Int>,
    /// RoPE positions.
    pub positions: Tensor<2, Int>,
    /// Which keys each position attends.
    pub attention: AttentionMask,
    /// Flat logit source index of each target.
    pub source: Tensor<1, Int>,
    /// Target token ids.
    pub target: Tensor<1, Int>,
    /// Behaviour logprobs.
    pub old_logprob: Tensor<1>,
    /// `P` weights.
    pub pos_weight: Tensor<1>,
    /// `N` weights.
    pub neg_weight: Tensor<1>,
    /// `W` weights.
    pub weight: Tensor<1>,
}
