//! Drawing a token from next-token logits.

use crate::policy::{Sampled, SamplingParams};

/// Log-partition `ln Σ exp(l)` and entropy (nats) of `softmax(logits)`, both in f64 with a fixed
/// summation order (deterministic).
///
/// # Shapes
/// `logits`: `[vocab]`.
pub fn log_partition_and_entropy(logits: &[f32]) -> (f64, f64) {
    tempered_partition_and_entropy(logits, 1.0)
}

/// [`log_partition_and_entropy`] of the tempered logits `logits / temperature`, without
/// materialising them (the decode hot path samples one token per sequence and step).
///
/// # Shapes
/// `logits`: `[vocab]`.
fn tempered_partition_and_entropy(logits: &[f32], temperature: f32) -> (f64, f64) {
    Partition::new(logits, temperature).lse_and_entropy()
}

/// The sums behind the tempered softmax `p_i = w_i / z` with `w_i = exp(l_i / T − m)`, `m` the
/// largest tempered logit, in f64, token-id order.
struct Partition {
    /// `1 / T`.
    inv: f64,
    /// The largest tempered logit.
    m: f64,
    /// `z = Σ w_i`.
    z: f64,
    /// `Σ w_i (l_i / T − m)`.
    zl: f64,
}

impl Partition {
    fn new(logits: &[f32], temperature: f32) -> Self {
        let inv = 1.0 / temperature as f64;
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64 * inv;
        let (mut z, mut zl) = (0.0f64, 0.0f64);
        for &l in logits {
            let x = l as f64 * inv - m;
            let e = x.exp();
            z += e;
            zl += e * x;
        }
        Partition { inv, m, z, zl }
    }

    /// `w_i` of a logit.
    fn weight(&self, l: f32) -> f64 {
        (l as f64 * self.inv - self.m).exp()
    }

    fn lse_and_entropy(&self) -> (f64, f64) {
        let lse = self.m + self.z.ln();
        // H = -Σ p (l - lse) = lse - Σ p l = ln z - Σ e (l - m) / z.
        let entropy = self.z.ln() - self.zl / self.z;
        (lse, entropy.max(0.0))
    }
}

/// The index of the largest logit; ties go to the lowest index.
///
/// # Shapes
/// `logits`: `[vocab]`.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Samples a token from `logits` with `params`, using only `rng_key` as the source of randomness
/// (one uniform draw `envs::rng::uniform(&[rng_key])`, inverse CDF).
///
/// - `temperature` ≤ 0 (or NaN), or `top_k == 1`: greedy, ties to the lowest token id.
/// - otherwise the logits are divided by `temperature`; `top_k > 0` keeps the k most likely
///   tokens; `top_p < 1` then keeps the smallest most-likely-first prefix whose renormalised
///   probability reaches `top_p` (at least one token; `top_p` ≤ 0 keeps exactly one). Candidates
///   are ordered by logit, ties by lower token id, so the result is deterministic.
///
/// The returned `logprob` and `entropy` are those of the tempered distribution
/// `softmax(logits / T)` without top-k / top-p truncation (T = 1 when greedy), as [`Sampled`]
/// requires: the trainer divides its logits by the same T, so sampling stays on-policy.
///
/// # Shapes
/// `logits`: `[vocab]`.
pub fn sample_from_logits(logits: &[f32], params: &SamplingParams, rng_key: u64) -> Sampled {
    let t = params.scoring_temperature();
    let partition = Partition::new(logits, t);
    let token = choose(logits, params, rng_key, &partition);
    let (lse, entropy) = partition.lse_and_entropy();
    let logprob = logits[token] as f64 / t as f64 - lse;
    Sampled {
        token: token as u32,
        logprob: logprob as f32,
        entropy: entropy as f32,
    }
}

/// The token `params` draws with `rng_key`; `partition` holds the sums of the tempered softmax
/// at the sampling temperature (whenever this samples rather than takes the argmax).
fn choose(logits: &[f32], params: &SamplingParams, rng_key: u64, partition: &Partition) -> usize {
    let t = params.temperature;
    if t.is_nan() || t <= 0.0 || params.top_k == 1 || logits.len() == 1 {
        return argmax(logits);
    }
    // The caller's partition is at the scoring temperature, which is `t` unless `t` is
    // infinite (sampling then is uniform; the scores use T = 1).
    let own;
    let partition = if t == params.scoring_temperature() {
        partition
    } else {
        own = Partition::new(logits, t);
        &own
    };
    let weight = |l: f32| partition.weight(l);
    let truncate_k = params.top_k > 0 && params.top_k < logits.len();
    let truncate_p = params.top_p < 1.0;
    let u = envs::rng::uniform(&[rng_key]);

    if !truncate_k && !truncate_p {
        // Full distribution: inverse CDF in token-id order, no sort needed. The total is the
        // partition's (the same weights summed in the same order), so one scan that stops at
        // the drawn token computes the rest: half the exponentials of two full passes.
        let total = partition.z;
        let target = u * total;
        let mut acc = 0.0;
        for (i, &l) in logits.iter().enumerate() {
            acc += weight(l);
            if target < acc {
                return i;
            }
        }
        // Rounding left the target past the last bucket: take the last token with weight.
        return logits.iter().rposition(|&l| weight(l) > 0.0).unwrap_or(0);
    }

    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if truncate_k {
        order.truncate(params.top_k);
    }
    let weights: Vec<f64> = order.iter().map(|&i| weight(logits[i])).collect();
    let mut keep = weights.len();
    if truncate_p {
        let total: f64 = weights.iter().sum();
        let need = params.top_p.max(0.0) as f64 * total;
        let mut acc = 0.0;
        for (n, w) in weights.iter().enumerate() {
            acc += w;
            if acc >= need {
                keep = n + 1;
                break;
            }
        }
    }
    let total: f64 = weights[..keep].iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    for (n, w) in weights[..keep].iter().enumerate() {
        acc += w;
        if target < acc {
            return order[n];
        }
    }
    order[keep - 1]
}
