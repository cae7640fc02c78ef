//! Environments for arbor: plain-Rust worlds that a text policy acts in.
//!
//! # Map
//! - [`Env`] — the contract every environment fulfils: a prompt, `step(action text) -> Step`, and a
//!   turn limit. Environments are `Clone` so that a rollout tree can branch mid-episode: the tree
//!   stores a clone at each step boundary and a branch continues from a clone of that clone.
//! - [`Expert`] — a scripted solver for an environment (for SFT demonstrations and tests), with an
//!   optional recoverable mistake so demonstrations can show a correction.
//! - [`Step`] / [`Outcome`] — what one action did.
//! - [`EnvSpec`] — a named, configured family of tasks ("multihop with 3 hops"); `make(task_id)`
//!   builds the task with that id deterministically. [`AnyEnv`] is the enum of all environments,
//!   which is what samplers and trainers hold.
//! - [`multihop`], [`countdown`], [`maze`], [`qa`] — the environments, each documenting its action
//!   grammar and its difficulty knobs.
//! - [`registry`] — open environments: one defined outside this crate registers itself by name
//!   with its knobs and is built, listed, sampled and trained like the built-in ones.
//! - [`rng`] — how every random draw in arbor derives its seed from (seed, step, task, node, ...).
//!
//! # Action grammar
//! Actions are short tool calls in text, `name[argument]`: `search[Kelda Morr]`, `answer[Tovin]`,
//! `move[up]`. Text that does not parse is never an error of the program: the environment answers
//! with an observation that says what was wrong, gives reward 0 and counts the turn.
//!
//! # Example
//! ```
//! use envs::{Env, EnvSpec, Expert};
//! let spec = EnvSpec::from_name("multihop", &[("hops", "2")]).unwrap();
//! let mut env = spec.make(7);
//! let mut reward = 0.0;
//! for _ in 0..env.max_turns() {
//!     let step = env.step(&env.expert_action());
//!     reward += step.reward;
//!     if step.done { break; }
//! }
//! assert_eq!(reward, 1.0);
//! ```

pub mod countdown;
mod grammar;
mod knobs;
pub mod maze;
pub mod multihop;
pub mod qa;
pub mod registry;
pub mod rng;
mod spec;

pub use grammar::{ParsedAction, parse_action};
pub use knobs::{KnobInfo, Knobs};
pub use spec::{AnyEnv, EnvSpec};

/// An environment a text policy acts in (DESIGN §3).
///
/// Implementations must be cheap to clone (static parts behind an `Arc`): the tree sampler clones
/// the environment at every branch point.
pub trait Env: Clone + Send + Sync {
    /// The initial observation: the task as the policy first sees it.
    fn prompt(&self) -> &str;
    /// Parses `action` and acts on it. Never panics, whatever the text; after the episode is over
    /// it answers with `done = true`, reward 0 and [`Outcome::Finished`].
    fn step(&mut self, action: &str) -> Step;
    /// The most actions an episode may take; the step that uses the last turn ends the episode.
    fn max_turns(&self) -> usize;
}

/// A scripted solver that acts from the environment's current state.
pub trait Expert: Env {
    /// The expert's next action from the current state (it may be called after a mistake and
    /// recovers from there).
    fn expert_action(&self) -> String;
    /// A plausible wrong action that the expert can recover from (for demonstrations with
    /// mistakes), chosen with `seed`; `None` when the environment has none to offer here (for
    /// example in a single-turn task, where any mistake is fatal).
    fn mistake_action(&self, seed: u64) -> Option<String>;
    /// A final answer given at the start of an episode without doing the work (a guess that
    /// ends the episode unsolved), for demonstrations from an imperfect demonstrator; `None`
    /// when the environment has none (the default).
    fn guess_action(&self) -> Option<String> {
        None
    }
}

/// The result of one action.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Text returned to the policy (appended to its context, never trained on).
    pub observation: String,
    /// Reward for this step (the benchmarks give 1.0 on success at the final step, else 0.0).
    pub reward: f32,
    /// Whether the episode is over.
    pub done: bool,
    /// What the action did.
    pub outcome: Outcome,
}

/// What one action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action was understood and the episode goes on.
    Continue,
    /// The action did not parse or named an unknown tool; the observation says why. The turn is
    /// spent; the episode goes on unless that was the last turn. (A well-formed tool call that
    /// finds nothing, such as a search for an unknown name, is [`Outcome::Continue`].)
    Malformed,
    /// The episode ended in success.
    Solved,
    /// The episode ended without success (a wrong answer or an impossible final move).
    Failed,
    /// The turn limit ran out before the task was solved.
    OutOfTurns,
    /// The episode was already over before this action; nothing changed.
    Finished,
}

impl Outcome {
    /// Whether this outcome ends the episode in success.
    pub fn is_success(self) -> bool {
        self == Outcome::Solved
    }
}

/// Errors raised while configuring environments (never while stepping them).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    /// The environment name is not one arbor knows.
    #[error("unknown environment '{name}' (known: {known})")]
    UnknownEnv {
        /// The name given.
        name: String,
        /// The names arbor knows, comma separated.
        known: String,
    },
    /// A knob name is not one of the environment's knobs.
    #[error("environment '{env}' has no knob '{knob}' (knobs: {known})")]
    UnknownKnob {
        /// The environment.
        env: String,
        /// The knob given.
        knob: String,
        /// The knobs this environment has.
        known: String,
    },
    /// A knob value is not valid for that knob.
    #[error("bad value '{value}' for {env} knob '{knob}': {reason}")]
    BadKnob {
        /// The environment.
        env: String,
        /// The knob.
        knob: String,
        /// The value given.
        value: String,
        /// What the knob accepts.
        reason: String,
    },
    /// `qa-file` tasks come from a file, which `EnvSpec::from_name` cannot read.
    #[error(
        "environment 'qa-file' needs a task file (JSONL or Parquet with prompt/answer columns)"
    )]
    NeedsTaskFile,
    /// A `qa-file` task set with no tasks in it.
    #[error("the qa task set is empty")]
    EmptyTaskSet,
}
