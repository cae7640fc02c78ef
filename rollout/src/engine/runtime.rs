//! [`Engine`]: live sequences over a packed model, implementing [`Policy`].

use std::collections::{HashMap, HashSet};

use ndarray::{Array2, ArrayView1};
use rayon::prelude::*;

use super::gemm::min_tasks_len;
use super::kv::{self, KvPrecision, SeqState};
use super::model::{Model, RowGroup};
use super::sampling::sample_from_logits;
use super::{ModelConfig, Weights};
use crate::Error;
use crate::policy::{DecodeRequest, Policy, PolicyStats, Sampled, SamplingParams, SeqHandle};

/// Default prefill chunk length in tokens.
const DEFAULT_PREFILL_CHUNK: usize = 64;

/// The in-process CPU inference engine. See the [module docs](crate::engine).
///
/// Owns the configuration, the weights (packed for the forward pass) and the live sequences.
/// Weights are immutable while sequences are live; [`Engine::load_weights`] swaps them and drops
/// every sequence.
#[derive(Debug, Clone)]
pub struct Engine {
    model: Model,
    seqs: HashMap<u64, SeqState>,
    next_id: u64,
    computed: u64,
    cached: u64,
    prefill_chunk: usize,
}

impl Engine {
    /// An engine for `cfg` with `weights` (validated against `cfg`).
    pub fn new(cfg: ModelConfig, weights: &Weights) -> Result<Self, Error> {
        Ok(Engine {
            model: Model::new(&cfg, weights)?,
            seqs: HashMap::new(),
            next_id: 0,
            computed: 0,
            cached: 0,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        })
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    /// Replaces the weights (the in-memory weight sync from the trainer after each update).
    ///
    /// On success every live sequence is dropped: its cached keys and values came from the old
    /// weights, so its handle now answers [`Error::UnknownSequence`]. Samplers sync weights
    /// between steps, when no sequence is live. On error nothing changes.
    pub fn load_weights(&mut self, weights: &Weights) -> Result<(), Error> {
        let mut model = Model::new(&self.model.cfg, weights)?;
        model.kv_precision = self.model.kv_precision;
        self.model = model;
        self.seqs.clear();
        Ok(())
    }

    /// The number format of the KV cache ([`KvPrecision::F32`] unless set).
    pub fn kv_precision(&self) -> KvPrecision {
        self.model.kv_precision
    }

    /// Sets the number format of the KV cache. Every live sequence is dropped when it changes
    /// (their blocks are in the old format), as with [`Engine::load_weights`].
    pub fn set_kv_precision(&mut self, precision: KvPrecision) {
        if precision != self.model.kv_precision {
            self.model.kv_precision = precision;
            self.seqs.clear();
        }
    }

    /// Tokens pushed through the model per prefill chunk (`start`, `append`). By default 64.
    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    /// Sets the prefill chunk length (at least 1). Results do not depend on it (bitwise); only
    /// speed and peak scratch memory do.
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// Full forward pass over `tokens` without any cache: the plain reference implementation
    /// (dense causal attention, `f32::exp`) the cached path is tested against, and the one to
    /// compare with the trainer's burn model.
    ///
    /// # Shapes
    /// `tokens`: `[len]`; returns logits `[len, vocab]`, row `i` being the distribution of the
    /// token after `tokens[..=i]`.
    ///
    /// # Panics
    /// If a token is outside the vocabulary or `len > max_seq_len`.
    pub fn forward_full(&self, tokens: &[u32]) -> Array2<f32> {
        assert!(
            tokens.len() <= self.model.cfg.max_seq_len,
            "{} tokens exceed the context window {}",
            tokens.len(),
            self.model.cfg.max_seq_len
        );
        if let Err(e) = self.check_tokens(tokens) {
            panic!("{e}");
        }
        self.model.forward_full(tokens)
    }

    /// The next-token logits of a live sequence (what the next `decode` samples from).
    ///
    /// # Shapes
    /// Returns `[vocab]`.
    pub fn next_logits(&self, seq: SeqHandle) -> Result<ArrayView1<'_, f32>, Error> {
        Ok(ArrayView1::from(self.state(seq)?.logits.as_slice()))
    }

    /// The tokens of a live sequence.
    pub fn tokens(&self, seq: SeqHandle) -> Result<&[u32], Error> {
        Ok(&self.state(seq)?.tokens)
    }

    /// Number of live sequences.
    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Bytes of one KV block (keys and values of [`super::BLOCK_SIZE`] positions, all layers).
    pub fn kv_block_bytes(&self) -> usize {
        self.model.kv_dims().block_bytes()
    }

    /// Number of distinct KV blocks held by live sequences.
    pub fn kv_blocks(&self) -> usize {
        kv::unique_blocks(self.seqs.values().map(|s| s.blocks.as_slice()))
    }

    fn state(&self, seq: SeqHandle) -> Result<&SeqState, Error> {
        self.seqs.get(&seq.0).ok_or(Error::UnknownSequence(seq))
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), Error> {
        let vocab = self.model.cfg.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&token) => Err(Error::BadToken { token, vocab }),
            None => Ok(()),
        }
    }

    fn check_room(&self, len: usize) -> Result<(), Error> {
        let max = self.model.cfg.max_seq_len;
        if len > max {
            Err(Error::ContextOverflow { len, max })
        } else {
            Ok(())
        }
    }

    fn insert(&mut self, state: SeqState) -> SeqHandle {
        let id = self.next_id;
        self.next_id += 1;
        self.seqs.insert(id, state);
        SeqHandle(id)
    }
}

/// Pushes `tokens` through the model in chunks, extending `state` (chunked prefill).
fn prefill(model: &Model, chunk: usize, state: &mut SeqState, tokens: &[u32]) {
    for part in tokens.chunks(chunk) {
        let start = state.tokens.len();
        let logits = model.forward_rows(&mut [RowGroup {
            blocks: &mut state.blocks,
            start,
            tokens: part,
        }]);
        state.tokens.extend_from_slice(part);
        state.logits.clear();
        state.logits.extend(logits.row(0).iter());
    }
}

impl Policy for Engine {
    fn max_len(&self) -> usize {
        self.model.cfg.max_seq_len
    }

    fn start(&mut self, tokens: &[u32]) -> Result<SeqHandle, Error> {
        if tokens.is_empty() {
            return Err(Error::BadLength { len: 0, have: 0 });
        }
        self.check_room(tokens.len())?;
        self.check_tokens(tokens)?;
        let mut state = SeqState {
            tokens: Vec::with_capacity(tokens.len()),
            blocks: Vec::new(),
            logits: Vec::new(),
        };
        prefill(&self.model, self.prefill_chunk, &mut state, tokens);
        self.computed += tokens.len() as u64;
        Ok(self.insert(state))
    }

    fn fork(&mut self, seq: SeqHandle) -> Result<SeqHandle, Error> {
        let state = self.state(seq)?.clone();
        self.cached += state.tokens.len() as u64;
        Ok(self.insert(state))
    }

    fn fork_at(&mut self, seq: SeqHandle, len: usize) -> Result<SeqHandle, Error> {
        let parent = self.state(seq)?;
        let have = parent.tokens.len();
        if len == 0 || len > have {
            return Err(Error::BadLength { len, have });
        }
        if len == have {
            return self.fork(seq);
        }
        let keep = len - 1;
        let last = parent.tokens[keep];
        let mut state = SeqState {
            tokens: parent.tokens[..keep].to_vec(),
            blocks: parent.blocks[..kv::blocks_for(keep)].to_vec(),
            logits: Vec::new(),
        };
        prefill(&self.model, 1, &mut state, &[last]);
        self.cached += keep as u64;
        self.computed += 1;
        Ok(self.insert(state))
    }

    fn append(&mut self, seq: SeqHandle, tokens: &[u32]) -> Result<(), Error> {
        let have = self.state(seq)?.tokens.len();
        if tokens.is_empty() {
            return Ok(());
        }
        self.check_room(have + tokens.len())?;
        self.check_tokens(tokens)?;
        let state = self
            .seqs
            .get_mut(&seq.0)
            .ok_or(Error::UnknownSequence(seq))?;
        prefill(&self.model, self.prefill_chunk, state, tokens);
        self.computed += tokens.len() as u64;
        Ok(())
    }

    fn decode(
        &mut self,
        requests: &[DecodeRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Sampled>, Error> {
        // Validate everything before changing anything.
        let mut seen = HashSet::with_capacity(requests.len());
        for r in requests {
            let len = self.state(r.seq)?.tokens.len();
            self.check_room(len + 1)?;
            if !seen.insert(r.seq) {
                return Err(Error::Backend(format!(
                    "sequence {:?} appears more than once in one decode batch",
                    r.seq
                )));
            }
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let sampled: Vec<Sampled> = requests
            .par_iter()
            .with_min_len(min_tasks_len(self.model.cfg.vocab_size))
            .map(|r| sample_from_logits(&self.seqs[&r.seq.0].logits, params, r.rng_key))
            .collect();
        let tokens: Vec<u32> = sampled.iter().map(|s| s.token).collect();

        // Take the states out of the map so that all of them can be borrowed mutably at once.
        let mut states: Vec<SeqState> = requests
            .iter()
            .filter_map(|r| self.seqs.remove(&r.seq.0))
            .collect();
        let logits = {
            let mut groups: Vec<RowGroup<'_>> = states
                .iter_mut()
                .zip(&tokens)
                .map(|(s, t)| RowGroup {
                    start: s.tokens.len(),
                    blocks: &mut s.blocks,
                    tokens: std::slice::from_ref(t),
                })
                .collect();
            self.model.forward_rows(&mut groups)
        };
        for ((r, mut state), (&t, row)) in requests
            .iter()
            .zip(states)
            .zip(tokens.iter().zip(logits.rows()))
        {
            state.tokens.push(t);
            state.logits.clear();
            state.logits.extend(row.iter());
            self.seqs.insert(r.seq.0, state);
        }
        self.computed += requests.len() as u64;
        Ok(sampled)
    }

    fn seq_len(&self, seq: SeqHandle) -> Result<usize, Error> {
        Ok(self.state(seq)?.tokens.len())
    }

    fn release(&mut self, seq: SeqHandle) {
        self.seqs.remove(&seq.0);
    }

    fn stats(&self) -> PolicyStats {
        PolicyStats {
            computed_tokens: self.computed,
            cached_tokens: self.cached,
            kv_bytes: (self.kv_blocks() * self.kv_block_bytes()) as u64,
        }
    }

    fn reset_stats(&mut self) {
        self.computed = 0;
        self.cached = 0;
    }
}
