//! The seam between samplers and models (DESIGN §11).
//!
//! A sampler drives a policy only through [`Policy`]: start a sequence from tokens, fork it, append
//! observation tokens, decode a batch of next tokens. The in-process ndarray engine
//! ([`crate::engine::Engine`]) is one implementation; an OpenAI-compatible inference server with
//! prefix caching is the planned second one. Nothing here assumes the model is in-process: handles
//! are opaque ids, and every call can fail with a [`Error`].

use crate::Error;

/// An opaque handle to a live sequence (a context the policy can extend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqHandle(pub u64);

/// Sampling settings for one decode call. A TOML table may give any subset of the keys; the
/// others keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
    pub top_p: f32,
}

impl SamplingParams {
    /// The temperature T of the distribution the logprobs refer to: `softmax(logits / T)`,
    /// without top-k / top-p truncation (as verl and TRL score the behaviour policy). It is
    /// `temperature` when that is a positive number, and 1 for greedy decoding. The trainer
    /// divides its logits by the same T, so sampling at T ≠ 1 stays on-policy.
    pub fn scoring_temperature(&self) -> f32 {
        if self.temperature.is_finite() && self.temperature > 0.0 {
            self.temperature
        } else {
            1.0
        }
    }
}

impl Default for SamplingParams {
    /// Temperature 1, no top-k, no top-p: samples from the policy's own distribution, so the
    /// returned logprobs are exactly the behaviour logprobs the trainer needs.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

/// One sequence to extend by one sampled token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRequest {
    /// The sequence.
    pub seq: SeqHandle,
    /// Seed for this token's draw, derived by the caller from (seed, step, task, node, position):
    /// the sample depends on nothing else (not the batch, not the thread count).
    pub rng_key: u64,
}

/// A sampled token with the statistics the sampler and trainer need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Log-probability of the token under the policy's tempered distribution
    /// `softmax(logits / T)` with T = [`SamplingParams::scoring_temperature`], without top-k /
    /// top-p truncation: the behaviour logprob for PPO.
    pub logprob: f32,
    /// Entropy (nats) of that tempered next-token distribution at this position.
    pub entropy: f32,
}

/// Token counters of a policy since its creation (or the last [`Policy::reset_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Tokens pushed through the model (prefill + decode).
    pub computed_tokens: u64,
    /// Context tokens served from the shared-prefix cache at forks instead of being recomputed.
    pub cached_tokens: u64,
    /// Bytes of KV cache currently held by live sequences (shared blocks counted once).
    pub kv_bytes: u64,
}

/// A policy the samplers can drive. See the module docs.
pub trait Policy: Send {
    /// The context window in tokens.
    fn max_len(&self) -> usize;
    /// Starts a sequence from `tokens` (non-empty, usually `<bos>` + prompt) and computes the
    /// distribution of its next token.
    fn start(&mut self, tokens: &[u32]) -> Result<SeqHandle, Error>;
    /// A new sequence with the same context as `seq`; both can be extended independently.
    fn fork(&mut self, seq: SeqHandle) -> Result<SeqHandle, Error>;
    /// A new sequence whose context is the first `len` tokens of `seq` (`1 <= len <= len(seq)`).
    fn fork_at(&mut self, seq: SeqHandle, len: usize) -> Result<SeqHandle, Error>;
    /// Appends tokens that were not sampled (observations) to `seq` (chunked prefill).
    fn append(&mut self, seq: SeqHandle, tokens: &[u32]) -> Result<(), Error>;
    /// For each request, samples the next token of its sequence, appends it, and computes the
    /// distribution after it. All requests are served in one batch; results are in request order.
    /// A sequence may appear at most once per call.
    fn decode(
        &mut self,
        requests: &[DecodeRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Sampled>, Error>;
    /// The number of tokens in `seq`.
    fn seq_len(&self, seq: SeqHandle) -> Result<usize, Error>;
    /// Frees `seq` (its shared KV blocks stay alive while other sequences use them).
    fn release(&mut self, seq: SeqHandle);
    /// Counters since creation or the last reset.
    fn stats(&self) -> PolicyStats;
    /// Zeroes the token counters (KV bytes are a gauge and stay).
    fn reset_stats(&mut self);
}

/// The contexts of a policy that holds its sequences as plain token lists (a model-free policy,
/// or one whose model runs elsewhere, such as [`crate::server::ServerPolicy`]): handles, and the
/// checks of [`Policy`]'s contract on lengths, the context window and decode requests. Token
/// counters stay with the policy, which knows what its model computes.
#[derive(Debug, Clone, Default)]
pub struct Contexts {
    seqs: std::collections::HashMap<SeqHandle, Vec<u32>>,
    next: u64,
    max_len: usize,
}

impl Contexts {
    /// No sequences, a context window of `max_len` tokens.
    pub fn new(max_len: usize) -> Self {
        Contexts {
            max_len,
            ..Contexts::default()
        }
    }

    /// The context window.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Number of live sequences.
    pub fn live(&self) -> usize {
        self.seqs.len()
    }

    /// The tokens of `seq`.
    pub fn get(&self, seq: SeqHandle) -> Result<&[u32], Error> {
        self.seqs
            .get(&seq)
            .map(Vec::as_slice)
            .ok_or(Error::UnknownSequence(seq))
    }

    fn insert(&mut self, tokens: Vec<u32>) -> SeqHandle {
        let handle = SeqHandle(self.next);
        self.next += 1;
        self.seqs.insert(handle, tokens);
        handle
    }

    /// [`Policy::start`]: `tokens` non-empty and within the window.
    pub fn start(&mut self, tokens: &[u32]) -> Result<SeqHandle, Error> {
        if tokens.is_empty() {
            return Err(Error::BadLength { len: 0, have: 0 });
        }
        if tokens.len() > self.max_len {
            return Err(Error::ContextOverflow {
                len: tokens.len(),
                max: self.max_len,
            });
        }
        Ok(self.insert(tokens.to_vec()))
    }

    /// [`Policy::fork`].
    pub fn fork(&mut self, seq: SeqHandle) -> Result<SeqHandle, Error> {
        let tokens = self.get(seq)?.to_vec();
        Ok(self.insert(tokens))
    }

    /// [`Policy::fork_at`]: `1 <= len <= len(seq)`.
    pub fn fork_at(&mut self, seq: SeqHandle, len: usize) -> Result<SeqHandle, Error> {
        let tokens = self.get(seq)?;
        if len == 0 || len > tokens.len() {
            return Err(Error::BadLength {
                len,
                have: tokens.len(),
            });
        }
        let prefix = tokens[..len].to_vec();
        Ok(self.insert(prefix))
    }

    /// [`Policy::append`], within the window.
    pub fn append(&mut self, seq: SeqHandle, tokens: &[u32]) -> Result<(), Error> {
        let have = self.get(seq)?.len();
        if have + tokens.len() > self.max_len {
            return Err(Error::ContextOverflow {
                len: have + tokens.len(),
                max: self.max_len,
            });
        }
        self.seqs
            .get_mut(&seq)
            .expect("checked above")
            .extend_from_slice(tokens);
        Ok(())
    }

    /// Checks a decode batch before anything changes: every sequence live, none twice, each
    /// with room for one more token.
    pub fn check_decode(&self, requests: &[DecodeRequest]) -> Result<(), Error> {
        for (i, r) in requests.iter().enumerate() {
            let have = self.get(r.seq)?.len();
            if requests[..i].iter().any(|o| o.seq == r.seq) {
                return Err(Error::Backend(format!(
                    "sequence {:?} appears twice in one decode call",
                    r.seq
                )));
            }
            if have + 1 > self.max_len {
                return Err(Error::ContextOverflow {
                    len: have + 1,
                    max: self.max_len,
                });
            }
        }
        Ok(())
    }

    /// Appends a decoded token to `seq` (after [`Contexts::check_decode`]).
    pub fn push(&mut self, seq: SeqHandle, token: u32) -> Result<(), Error> {
        self.seqs
            .get_mut(&seq)
            .ok_or(Error::UnknownSequence(seq))?
            .push(token);
        Ok(())
    }

    /// [`Policy::release`]: the sequence's tokens, if it was live.
    pub fn release(&mut self, seq: SeqHandle) -> Option<Vec<u32>> {
        self.seqs.remove(&seq)
    }
}
