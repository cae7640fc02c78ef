//! [`ModelConfig`]: the architecture of the policy transformer, shared with the burn trainer.

use crate::Error;
use serde::{Deserialize, Serialize};

/// Architecture of a Llama-style decoder-only transformer (pre-norm RMSNorm, RoPE, grouped-query
/// causal attention with optional q/k/v biases, SwiGLU MLP, final norm, LM head): the
/// architecture of Hugging Face Llama, Qwen2 and Mistral checkpoints (see [`crate::hf`]).
///
/// The trainer's burn model is built from the same struct, so both sides agree on every size.
/// Build one from a preset ([`ModelConfig::tiny`], [`ModelConfig::small`],
/// [`ModelConfig::preset`]) or field by field, then call [`ModelConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Number of token ids (259 for the byte tokenizer).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Number of query heads; the head dimension is `d_model / n_heads`.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention); `n_heads % n_kv_heads == 0`.
    /// The presets use `n_kv_heads == n_heads` (plain multi-head attention).
    pub n_kv_heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub d_ff: usize,
    /// Context window in tokens.
    pub max_seq_len: usize,
    /// RoPE base. By default 10000.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    /// RMSNorm epsilon. By default 1e-5.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f32,
    /// Whether the LM head reuses the token embedding (no `lm_head.weight` tensor).
    /// By default false.
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Whether the q, k and v projections carry a bias (`q_proj.bias`, `k_proj.bias`,
    /// `v_proj.bias`, as in Qwen2); the output projection never does. By default false.
    #[serde(default)]
    pub qkv_bias: bool,
    /// Frequency-dependent RoPE scaling ([`RopeScaling`]); `None` is plain RoPE. By default
    /// none. Serialized only when present, in the Hugging Face `rope_scaling` layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

/// RoPE frequency scaling, in the Hugging Face `rope_scaling` layout (`rope_type` names the
/// variant). Engine and trainer both take their frequencies from
/// [`ModelConfig::rope_inv_freqs`], so they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama 3.1 scaling (`rope_type = "llama3"`): with wavelength `λ_i = 2π / inv_freq_i`,
    /// low frequencies (`λ_i > original_max_position_embeddings / low_freq_factor`) are divided
    /// by `factor`, high frequencies (`λ_i < original_max_position_embeddings /
    /// high_freq_factor`) are kept, and those in between are interpolated with
    /// `s = (original_max_position_embeddings / λ_i − low_freq_factor) / (high_freq_factor −
    /// low_freq_factor)`: `(1 − s) · inv_freq_i / factor + s · inv_freq_i`.
    Llama3 {
        /// Divisor of the low frequencies (8 in Llama 3.1, 32 in Llama 3.2).
        factor: f32,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// Context length of the original pre-training (8192 in Llama 3).
        original_max_position_embeddings: usize,
    },
}

fn default_rope_theta() -> f32 {
    10_000.0
}

fn default_norm_eps() -> f32 {
    1e-5
}

impl ModelConfig {
    /// The `tiny` preset: d=128, 4 layers, 4 heads, ff 512, context 1024, byte vocabulary
    /// (1.12 M parameters).
    pub fn tiny() -> Self {
        ModelConfig {
            vocab_size: crate::tokenizer::ByteTokenizer::VOCAB,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 4,
            d_ff: 512,
            max_seq_len: 1024,
            rope_theta: default_rope_theta(),
            norm_eps: default_norm_eps(),
            tie_embeddings: false,
            qkv_bias: false,
            rope_scaling: None,
        }
    }

    /// The `small` preset: d=256, 6 layers, 8 heads, ff 1024, context 1024, byte vocabulary
    /// (6.43 M parameters).
    pub fn small() -> Self {
        ModelConfig {
            d_model: 256,
            n_layers: 6,
            n_heads: 8,
            n_kv_heads: 8,
            d_ff: 1024,
            ..Self::tiny()
        }
    }

    /// The names [`ModelConfig::preset`] accepts.
    pub const PRESETS: [&'static str; 2] = ["tiny", "small"];

    /// A preset by name (`tiny` or `small`).
    pub fn preset(name: &str) -> Result<Self, Error> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            _ => Err(Error::UnknownPreset {
                name: name.to_string(),
            }),
        }
    }

    /// Per-head width, `d_model / n_heads`.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Checks that the sizes fit together: everything positive, `d_model` divisible by
    /// `n_heads` into an even head dimension, `n_heads` divisible by `n_kv_heads`, finite
    /// positive `rope_theta` and `norm_eps`, consistent `rope_scaling` parameters.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return bad("vocab_size", "must fit token ids in u32".into());
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(
                "n_heads",
                format!("{} does not divide d_model {}", self.n_heads, self.d_model),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(
                "n_heads",
                format!("head dimension {} must be even for RoPE", self.head_dim()),
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                format!(
                    "{} does not divide n_heads {}",
                    self.n_kv_heads, self.n_heads
                ),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            );
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(
                "norm_eps",
                format!("{} is not a positive number", self.norm_eps),
            );
        }
        match self.rope_scaling {
            None => {}
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let positive = |v: f32| v.is_finite() && v > 0.0;
                if !(positive(factor)
                    && positive(low_freq_factor)
                    && positive(high_freq_factor)
                    && low_freq_factor < high_freq_factor
                    && original_max_position_embeddings > 0)
                {
                    return bad(
                        "rope_scaling",
                        format!(
                            "llama3 scaling needs positive factor ({factor}), \
                             0 < low_freq_factor ({low_freq_factor}) < high_freq_factor \
                             ({high_freq_factor}) and original_max_position_embeddings \
                             ({original_max_position_embeddings}) >= 1"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// RoPE inverse frequencies, one per rotated pair (`head_dim / 2` values): pair `i` of a
    /// head at position `p` turns by `p · inv_freq[i]`. Plain RoPE is
    /// `inv_freq[i] = 1 / rope_theta^(2i / head_dim)`; [`ModelConfig::rope_scaling`] then
    /// rescales them.
    ///
    /// Computed in f32 in the order Hugging Face's PyTorch code uses (`1.0 / tensor` and
    /// `scalar / tensor` are a reciprocal times the scalar there), so that angles round the same
    /// way; engine and trainer both use this function.
    ///
    /// # Shapes
    /// Returns `[head_dim / 2]`.
    pub fn rope_inv_freqs(&self) -> Vec<f32> {
        let hd = self.head_dim();
        let plain = (0..hd / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / hd as f32));
        match self.rope_scaling {
            None => plain.collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old_len = original_max_position_embeddings as f32;
                // Python floats (f64) in the reference, rounded to f32 when they meet a tensor.
                let low_freq_wavelen =
                    (original_max_position_embeddings as f64 / low_freq_factor as f64) as f32;
                let high_freq_wavelen =
                    (original_max_position_embeddings as f64 / high_freq_factor as f64) as f32;
                let two_pi = std::f64::consts::TAU as f32;
                let span = (high_freq_factor as f64 - low_freq_factor as f64) as f32;
                plain
                    .map(|inv_freq| {
                        let wavelen = (1.0 / inv_freq) * two_pi;
                        let scaled = if wavelen > low_freq_wavelen {
                            inv_freq / factor
                        } else {
                            inv_freq
                        };
                        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                        if medium {
                            let smooth = ((1.0 / wavelen) * old_len - low_freq_factor) / span;
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }

    /// Number of scalar parameters (the sum of all tensor sizes in
    /// [`super::Weights::expected_shapes`]).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let hd = self.head_dim();
        let q = self.n_heads * hd;
        let kv = self.n_kv_heads * hd;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        let per_layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * self.d_ff + bias;
        let lm_head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * per_layer + d + lm_head
    }

    /// Parameters that take part in a matrix product per token: every projection plus the LM
    /// head (also when tied), without the embedding lookup, the norms and the biases.
    pub fn matmul_params(&self) -> usize {
        let d = self.d_model;
        let hd = self.head_dim();
        let q = self.n_heads * hd;
        let kv = self.n_kv_heads * hd;
        self.n_layers * (d * q + 2 * d * kv + q * d + 3 * d * self.d_ff) + self.vocab_size * d
    }

    /// Floating-point operations to push one token through the model when it attends to
    /// `context_len` positions (itself included): 2 per multiply-add of every projection and the
    /// LM head, plus 4 · n_heads · head_dim · context_len per layer for the attention scores and
    /// the weighted sum of values. Norms, RoPE, softmax and activations are not counted.
    pub fn flops_per_token(&self, context_len: usize) -> u64 {
        let attn = 4 * self.n_heads * self.head_dim() * context_len * self.n_layers;
        (2 * self.matmul_params() + attn) as u64
    }
}
