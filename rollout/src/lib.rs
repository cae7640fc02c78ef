//! Rollouts for arbor: token budgets, rollout trees, samplers, branching policies, advantage
//! estimators, and a CPU inference engine with a shared-prefix KV cache.
//!
//! # Map
//! - [`tokenizer`] — [`tokenizer::Tokenizer`], the default byte-level tokenizer and
//!   [`tokenizer::HfTokenizer`] (a Hugging Face `tokenizer.json`).
//! - [`policy`] — the [`policy::Policy`] trait samplers drive (start, fork, append, decode a batch).
//! - [`tree`] — [`tree::TaskRollout`], the arena of rollout trees every sampler fills (one per task
//!   group: nodes, tokens, logprobs, leaves), and [`tree::TreeSink`], where finished groups go.
//! - [`advantage`] — the advantage estimators ([`advantage::Estimator`]: grpo, tree-grpo, treerl,
//!   treepo, rloo) as pure functions from a group's tree and leaf rewards to per-node advantages.
//! - [`sampler`] — chain and tree samplers under a hard per-task token budget, branching policies,
//!   step counters.
//! - [`scripted`] — [`scripted::ScriptedPolicy`], a model-free policy for testing samplers.
//! - [`server`] — [`server::ServerPolicy`], a policy on an OpenAI-compatible completions
//!   endpoint (llama.cpp's `llama-server`): token-id prompts, the server's prefix cache.
//! - [`engine`] — the in-process ndarray transformer implementing [`policy::Policy`], with a paged,
//!   reference-counted, prefix-shared KV cache.
//! - [`hf`] — Hugging Face model directories (Llama, Qwen2, Mistral): `config.json`,
//!   safetensors weights and `tokenizer.json` in, the same layout out.
//! - [`gguf`] and [`chat`] — GGUF model files and chat-template rendering.
//! - [`error`] — [`Error`], the crate's one error enum (every fallible function returns it), and
//!   [`Result`].

pub mod advantage;
pub mod chat;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod policy;
pub mod sampler;
pub mod scripted;
pub mod server;
pub mod tokenizer;
pub mod tree;

pub use error::{Error, Result};
