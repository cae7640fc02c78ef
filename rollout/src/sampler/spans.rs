//! The sampler's working state: spans (the tokens one branch added after its fork point),
//! live branches, turn starts and the state of one task group (module docs of `sampler`, "How a
//! step runs").

use super::*;

/// The environment state at the start of a turn inside a span.
#[derive(Clone)]
pub(super) struct TurnStart<E> {
    /// Absolute position (tokens after the prompt) of the turn's first action token.
    pub(super) pos: usize,
    /// Environment after the previous turn.
    pub(super) env: E,
    /// Reward collected before this turn.
    pub(super) reward: f32,
}

/// The tokens one branch added after its fork point.
pub(super) struct Span<E> {
    pub(super) tree: u32,
    /// `(owner span, fork position)`: this span shares the owner's path up to the fork position.
    pub(super) parent: Option<usize>,
    /// Absolute position of the first own token (the fork position).
    pub(super) start: usize,
    pub(super) tokens: Vec<u32>,
    pub(super) is_action: Vec<bool>,
    pub(super) logprobs: Vec<f32>,
    pub(super) entropies: Vec<f32>,
    /// Observation runs: absolute `[start, end)` and their exact text.
    pub(super) observations: Vec<(usize, usize, String)>,
    pub(super) turn_starts: Vec<TurnStart<E>>,
    /// Absolute positions where other spans fork off this one.
    pub(super) forks: BTreeSet<usize>,
    pub(super) leaf: Option<LeafInfo>,
    pub(super) seq: Option<SeqHandle>,
    pub(super) dropped: bool,
}

impl<E> Span<E> {
    pub(super) fn end(&self) -> usize {
        self.start + self.tokens.len()
    }
    pub(super) fn at(&self, pos: usize) -> usize {
        pos - self.start
    }
}

/// A live branch: a span being extended.
pub(super) struct Live<E> {
    pub(super) span: usize,
    pub(super) env: E,
    pub(super) reward: f32,
    /// Action tokens of the current turn so far (may begin in an ancestor span).
    pub(super) turn_tokens: Vec<u32>,
    /// Offsets in `turn_tokens` where the path enters another span. The environment receives
    /// the concatenation of each piece decoded on its own, which is exactly the concatenation of
    /// the node texts (nodes are cut at span starts, and elsewhere only at safe boundaries), even
    /// when a branch's first token continues a character.
    pub(super) turn_cuts: Vec<usize>,
}

/// The text of a turn: each span piece decoded on its own, concatenated.
pub(super) fn turn_text(tokenizer: &dyn Tokenizer, tokens: &[u32], cuts: &[usize]) -> String {
    let mut text = String::new();
    let mut lo = 0;
    for &hi in cuts.iter().chain(std::iter::once(&tokens.len())) {
        if hi > lo {
            text.push_str(&tokenizer.decode(&tokens[lo..hi]));
            lo = hi;
        }
    }
    text
}

/// Sampling state of one task group.
pub(super) struct TaskState<E> {
    pub(super) task_id: u64,
    pub(super) env: E,
    pub(super) prompt_tokens: Vec<u32>,
    pub(super) prompt_seq: SeqHandle,
    pub(super) spans: Vec<Span<E>>,
    pub(super) live: Vec<Live<E>>,
    pub(super) generated: u32,
    pub(super) rounds: usize,
    /// `generated` when the current round started.
    pub(super) round_start_generated: u32,
    /// Chains started so far (chain sampler) / whether initial chains are out (tree).
    pub(super) started_initial: bool,
    /// Tree sampler: the root phase (independent chains up to `root_share` of the budget) is
    /// over.
    pub(super) roots_done: bool,
    pub(super) finished: bool,
    /// Fork points already used (owner span, position), for policies that avoid repeats.
    pub(super) used: BTreeSet<(usize, usize)>,
}
