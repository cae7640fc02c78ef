//! CPU inference engine: a Llama-style transformer on ndarray with a paged, prefix-shared KV
//! cache (DESIGN §7).
//!
//! # Map
//! - [`ModelConfig`] — architecture sizes (presets `tiny`, `small`), shared with the trainer.
//! - [`Weights`] — named f32 tensors with Hugging Face Llama names (below); seeded random init,
//!   validation against a config.
//! - [`Engine`] — owns packed weights and live sequences; implements [`crate::policy::Policy`]
//!   (start, fork, fork_at, append, batched decode) and offers [`Engine::forward_full`], the
//!   cache-free reference forward pass.
//! - [`sample_from_logits`] — temperature / top-k / top-p sampling keyed by one `rng_key`.
//! - [`bench`](mod@bench) — decode / prefill throughput and the GEMM peak, returned as rows.
//! - [`Error`] — configuration and weight errors. Runtime errors of the policy calls are
//!   [`crate::Error`]s.
//!
//! ```
//! use rollout::engine::{Engine, ModelConfig, Weights};
//! use rollout::policy::{DecodeRequest, Policy, SamplingParams};
//!
//! let cfg = ModelConfig { n_layers: 1, ..ModelConfig::tiny() };
//! let mut engine = Engine::new(cfg.clone(), &Weights::random(&cfg, 7)).unwrap();
//! let root = engine.start(&[257, b'h' as u32, b'i' as u32]).unwrap();
//! let branch = engine.fork(root).unwrap(); // shares the root's KV blocks
//! let reqs = [
//!     DecodeRequest { seq: root, rng_key: 1 },
//!     DecodeRequest { seq: branch, rng_key: 2 },
//! ];
//! let out = engine.decode(&reqs, &SamplingParams::default()).unwrap(); // one batch
//! assert_eq!(out.len(), 2);
//! assert_eq!(engine.seq_len(branch).unwrap(), 4);
//! ```
//!
//! # Architecture
//! Exactly Hugging Face `LlamaForCausalLM` in f32: `x = embed[tokens]`; per layer
//! `h = x + o_proj(attn(rmsnorm(x) · w_in))`, `x = h + down(silu(gate(n)) * up(n))` with
//! `n = rmsnorm(h) · w_post`; then `logits = lm_head(rmsnorm(x) · w_final)`.
//! RMSNorm is `x / sqrt(mean(x²) + eps) · w`. RoPE uses the "rotate half" convention: pair
//! `(i, i + head_dim/2)` rotates by `pos · inv_freq_i` with `inv_freq_i = theta^(-2i/head_dim)`
//! (optionally rescaled, [`RopeScaling`]; see [`ModelConfig::rope_inv_freqs`]), where `pos` is
//! the token's index in its sequence; inverse frequencies, angles, cos and sin are computed in
//! f32 like Hugging Face does. Attention is causal softmax with scale
//! `1/sqrt(head_dim)`; with grouped-query attention, query head `h` reads kv head
//! `h / (n_heads / n_kv_heads)`.
//!
//! # Tensor names (Hugging Face Llama; PyTorch `[out, in]` layout for linear weights)
//! | name | shape |
//! |---|---|
//! | `model.embed_tokens.weight` | `[vocab_size, d_model]` |
//! | `model.layers.{i}.input_layernorm.weight` | `[d_model]` |
//! | `model.layers.{i}.self_attn.q_proj.weight` | `[n_heads·head_dim, d_model]` |
//! | `model.layers.{i}.self_attn.k_proj.weight` | `[n_kv_heads·head_dim, d_model]` |
//! | `model.layers.{i}.self_attn.v_proj.weight` | `[n_kv_heads·head_dim, d_model]` |
//! | `model.layers.{i}.self_attn.{q,k,v}_proj.bias` | `[n_heads·head_dim]`, `[n_kv_heads·head_dim]` ×2 (only with `qkv_bias`) |
//! | `model.layers.{i}.self_attn.o_proj.weight` | `[d_model, n_heads·head_dim]` |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `[d_model]` |
//! | `model.layers.{i}.mlp.gate_proj.weight` | `[d_ff, d_model]` |
//! | `model.layers.{i}.mlp.up_proj.weight` | `[d_ff, d_model]` |
//! | `model.layers.{i}.mlp.down_proj.weight` | `[d_model, d_ff]` |
//! | `model.norm.weight` | `[d_model]` |
//! | `lm_head.weight` | `[vocab_size, d_model]` (absent when `tie_embeddings`) |
//!
//! Only the q, k and v projections may have biases (Qwen2, [`ModelConfig::qkv_bias`]); they are
//! added before RoPE. [`Weights::expected_shapes`] lists the tensors for a config, in canonical
//! order (each bias right after its weight).
//!
//! # KV cache
//! Paged in blocks of [`BLOCK_SIZE`] = 16 positions (all layers and kv heads in one block). A
//! sequence holds a list of reference-counted blocks; [`crate::policy::Policy::fork`] copies the
//! list (O(blocks)), so KV memory grows with unique tokens, not with trajectories. Full blocks are
//! never written again; a partly filled block shared by several sequences is copied by the first
//! one that writes to it (copy-on-write), so a fork never aliases mutable memory.
//! [`crate::policy::Policy::fork_at`] shares the blocks of the first `len - 1` tokens and
//! recomputes token `len - 1` to get its next-token distribution (counted as `len - 1` cached
//! tokens and 1 computed token); `fork_at` at the full length is a plain `fork`.
//! `PolicyStats::kv_bytes` counts each distinct live block once.
//!
//! # Batching and determinism
//! `decode` pushes all requested sequences through the model as one batch (one GEMM per fused
//! projection: qkv, o, gate+up, down, lm_head); prefill (`start`, `append`) runs in chunks of
//! [`Engine::prefill_chunk`] tokens. Weights are packed once, when they are loaded, into panels of
//! 16 output columns, and every product runs one 6 × 16 register-tile kernel with fused
//! multiply-adds (`gemm`, private): each weight is one contiguous stream, no call re-packs it, and
//! rayon tasks split the panels, so a weight is read once per call whatever the batch.
//! Attention runs on rayon, one task per token (per (token, head) for small batches), reading the
//! token's own blocks: pass 1 scores a query against the 16 keys of a block as 16 independent
//! lanes (keys are stored transposed per block, dimensions summed in four interleaved chains),
//! pass 2 sums the values 32 dimensions at a time. The hot loops run under `pulp`'s run-time
//! dispatch, so they compile for AVX2 + FMA on CPUs that have them (plain code elsewhere); parallel
//! loops too small to pay for a task stay on the calling thread, and a whole forward pass runs on
//! a rayon worker, so that its parallel loops do not each block and wake the caller's thread.
//!
//! Every token's arithmetic is independent of the other tokens in the batch: each output of a
//! product is one chain of fused multiply-adds over the inputs in order, whatever the batch, the
//! tile width or the thread split, and attention reads only the token's own sequence. Hence a
//! token's logits are bitwise identical whether it was decoded alone, in a batch of any size, in a
//! prefill chunk of any size, on 1 or many threads, or recomputed by `fork_at` (tests check all of
//! these). Samples depend only on the logits and the `rng_key`.
//!
//! # KV cache precision
//! [`KvPrecision::F32`] by default (exact); [`Engine::set_kv_precision`] with
//! [`KvPrecision::Bf16`] stores keys and values as bfloat16 (half the memory and the bytes
//! attention streams) at a tested cost in logits, stated on [`KvPrecision`]. All invariances above
//! hold in either format.
//!
//! # Where the time goes
//! `perf record` of `arbor bench engine --batches 64` on two cores with AVX2 + FMA, after the
//! packed GEMM (`experiments/assets/engine/`, with the before and after tables):
//! - SmolLM2-135M: the GEMM kernel takes 70% of the samples, attention 10%, sampling's `exp`
//!   over the 49,152-token vocabulary about 6% (since halved: one partition pass serves the
//!   draw and the scores). Batch 64 decodes at 60-64% of the GEMM peak. Batch 1 streams the
//!   540 MB of f32 weights once per token: 74-83 tokens/s is 40-45 GB/s.
//! - `small` (d = 256) and `tiny` (d = 128): GEMM 53% and 38%, attention 20% each, the
//!   scheduler and rayon 7-10%. A timer around the phases of a `tiny` batch-64 decode step put
//!   attention at 38-46%. Attention per token costs more at batch 64 than at batch 8, with the
//!   same context. It does not get cheaper with bf16 keys and values, so it is bound by the
//!   latency of reaching 64 × 11 paged blocks per layer, not by bandwidth. One shared prompt
//!   (`decode_shared`, the tree sampler's case) keeps the blocks in cache: 33-61% of the peak
//!   over four runs (medians 47% for `tiny`, 58% for `small`).

mod config;
mod gemm;
mod kv;
mod model;
mod runtime;
mod sampling;
mod weights;

pub mod bench;

#[cfg(test)]
mod tests;

pub use config::{ModelConfig, RopeScaling};
pub use kv::{BLOCK_SIZE, KvPrecision};
pub use runtime::Engine;
pub use sampling::{argmax, log_partition_and_entropy, sample_from_logits};
pub use weights::{INIT_STD, WeightTensor, Weights};
