//! Training for arbor policies (DESIGN §8): a burn model with the engine's architecture, SFT and
//! tree-packed PPO losses, AdamW, checkpoints, and weight sync to the engine.
//!
//! # Map
//! - [`model`] — [`model::PolicyModel`], the policy as burn modules (embedding, RMSNorm, RoPE at
//!   explicit positions, grouped-query causal attention, SwiGLU), built from the engine's
//!   [`rollout::engine::ModelConfig`]; [`model::PolicyModel::from_weights`] /
//!   [`model::PolicyModel::to_weights`] convert from / to engine [`rollout::engine::Weights`]
//!   (Hugging Face names, `[out, in]` matrices).
//! - [`pack`] — training sequences: [`pack::pack_trees`] (one packed sequence per task group's trees:
//!   DFS order, path positions, ancestors-only attention, per-token weights summed over the
//!   leaves below), [`pack::flatten_trees`] (one causal row per trajectory, the reference), loss
//!   aggregation [`pack::LossAgg`], padded mini-batches [`pack::TrainBatch`] and
//!   [`pack::minibatches`] to split a batch of task groups.
//! - [`attn`] — attention layouts of a batch: dense masks, and query-block sparse attention
//!   whose cost follows a tree-packed row's mask (each block gathers only the keys on its
//!   queries' paths), chosen per batch by [`attn::AttentionLayout::plan`].
//! - [`loss`] — [`loss::policy_loss`]: PPO-clip with optional K3 KL to a frozen reference and
//!   entropy bonus; the same function scores packed and flattened batches.
//! - [`sft`] — cross-entropy on the action tokens of encoded demonstrations.
//! - [`optim`] — AdamW with global gradient-norm clipping and a name-keyed, checkpointable state.
//! - [`device`] — [`device::DeviceChoice`]: `cpu`, `cuda[:N]` or `wgpu[:N]` (features `cuda`,
//!   `wgpu`), the device training runs on; [`device::DeviceSet`]: several CUDA devices for
//!   data-parallel training ([`Trainer::set_data_parallel`]).
//! - [`trainer`] — [`Trainer`]: policy + reference + optimizer + counters;
//!   [`Trainer::sft_step`], [`Trainer::rl_step`], [`Trainer::weights`] for engine sync. Each
//!   update splits its batch into [`TrainerConfig::shards`] token-balanced shards (default 2)
//!   whose gradients are computed on separate threads and summed: burn's CPU kernels leave most
//!   small operations on one thread, so this is what uses the second core.
//! - [`checkpoint`] — atomic checkpoint directories (safetensors weights readable by PyTorch,
//!   optimizer moments, `config.json`, `state.json`, `latest`) and exact resume.
//! - [`TrainerError`] — the crate's error type.
//!
//! Training runs on `Device::flex().autodiff()` ([`trainer::default_device`]); nothing here
//! assumes a CPU, so another burn device can be passed to [`Trainer::from_weights`].
//!
//! # Example
//! ```
//! use rollout::engine::{Engine, ModelConfig};
//! use trainer::pack::TrainBatch;
//! use trainer::{Trainer, TrainerConfig, sft};
//!
//! let cfg = ModelConfig { d_model: 32, n_layers: 1, n_heads: 2, n_kv_heads: 2, d_ff: 64,
//!                         ..ModelConfig::tiny() };
//! let mut trainer = Trainer::new(&cfg, TrainerConfig::default())?;
//! // One demonstration: <bos> "hi" then the action "ok" + <eos> as targets.
//! let tokens = [257, 104, 105, 111, 107, 258];
//! let mask = [false, false, false, true, true, true];
//! let batch = TrainBatch::new(sft::sft_sequences([(&tokens[..], &mask[..])])?);
//! let stats = trainer.sft_step(&batch)?;
//! assert!(stats.loss > 0.0 && stats.grad_norm > 0.0);
//! // Weight sync to the inference engine, in memory.
//! let engine = Engine::new(cfg.clone(), &trainer.weights())?;
//! assert_eq!(engine.forward_full(&tokens).dim(), (6, cfg.vocab_size));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod attn;
pub mod checkpoint;
pub mod device;
mod error;
pub mod loss;
pub mod model;
pub mod optim;
pub mod pack;
pub mod sft;
#[cfg(test)]
mod test_util;
pub mod trainer;

pub use error::TrainerError;
pub use model::PolicyModel;
pub use trainer::{Phase, StepStats, Trainer, TrainerConfig, TrainerState};
