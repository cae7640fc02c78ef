//! [`ModelConfig`]: the architecture of the policy transformer, shared with the burn trainer.

use serde::{Deserialize, Serialize};

use super::EngineError;

/// Architecture of a Llama-style decoder-only transformer (pre-norm RMSNorm, RoPE, grouped-query
/// causal attention, SwiGLU MLP, final norm, LM head).
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
    pub fn preset(name: &str) -> Result<Self, EngineError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            _ => Err(EngineError::UnknownPreset {
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
    /// positive `rope_theta` and `norm_eps`.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad =
            |field: &'static str, reason: String| Err(EngineError::InvalidConfig { field, reason });
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
        Ok(())
    }

    /// Number of scalar parameters (the sum of all tensor sizes in
    /// [`super::Weights::expected_shapes`]).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let hd = self.head_dim();
        let q = self.n_heads * hd;
        let kv = self.n_kv_heads * hd;
        let per_layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * self.d_ff;
        let lm_head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * per_layer + d + lm_head
    }

    /// Parameters that take part in a matrix product per token: every projection plus the LM
    /// head (also when tied), without the embedding lookup and the norms.
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
