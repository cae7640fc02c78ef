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
//! rayon tasks split the panels (or, for a weight of at most 512 KiB and enough rows, the rows).
//! Attention runs on rayon, one task per token (per (token, head) for small batches), reading the
//! token's own blocks: pass 1 scores a query against the 16 keys of a block as 16 independent
//! lanes (keys are stored transposed per block, dimensions summed in four interleaved chains),
//! pass 2 sums the values 32 dimensions at a time. The hot loops run under `pulp`'s run-time
//! dispatch, so they compile for AVX2 + FMA on CPUs that have them (plain code elsewhere); parallel
//! loops too small to pay for a task stay on the calling thread.
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
//! Measured with `perf record` on `arbor bench engine` (two cores, AVX2 + FMA dispatch), after
//! the packed GEMM replaced matrixmultiply:
//! - SmolLM2-135M, decode at batch 64: the GEMM kernel takes most of the time (the lm_head alone
//!   is 57% of the model's multiply-adds at d = 576, vocabulary 49,152) and runs near the machine's
//!   GEMM peak; batch 1 is a stream of the 540 MB of f32 weights per token, bound by memory
//!   bandwidth (63 tokens/s, 34 GB/s).
//! - `small` and `tiny`, decode at batch 64 with distinct prompts: about half the samples are in
//!   the GEMM kernel, a quarter in attention (64 contexts of 161 tokens: 10-40 MB of keys and
//!   values per step, beyond the L2 caches), and 15-20% in the kernel's scheduler: with d = 128
//!   or 256, a layer is a few hundred microseconds of work split into about ten parallel loops, and
//!   a core waits for the other at each join. With one shared prompt (`decode_shared`, the tree
//!   sampler's case) the keys and values stay in cache and the same models reach 35-55%.

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
