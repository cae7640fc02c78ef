//! `qa-file` — question/answer tasks from user data, single-turn or with tools.
//!
//! The pairs come from a file read by the `datasets` crate (JSONL or Parquet with `prompt` and
//! `answer` columns) and are handed to [`QaConfig::new`]. Task ids wrap around the number of
//! pairs. The prompt the policy sees is the question with trailing whitespace removed, then a line
//! with the action format:
//!
//! ```text
//! What is 6 times 7?
//! Reply answer[...].
//! ```
//!
//! # Actions
//! `answer[text]` — ends the episode: reward 1 and [`Outcome::Solved`] if the [`Verifier`] accepts
//! the text, otherwise [`Outcome::Failed`]. Text that does not parse, or another tool, is
//! [`Outcome::Malformed`] and also ends the episode. `max_turns` is 1.
//!
//! # Tools (multi-turn rows)
//! A row may give tools ([`QaPair::tools`]): each a name and a table from argument to the
//! observation returned. The prompt then ends with `Tools: <names>, answer.`; `name[argument]`
//! returns the table's text for the (trimmed) argument, or `No result for '<argument>'.`, and
//! the episode goes on; an unknown tool or unparsable text is [`Outcome::Malformed`] and spends
//! the turn. The turn limit is `2 × (solution length + 1)` (room to recover), and the turn that
//! uses the last one ends the episode ([`Outcome::OutOfTurns`] unless it answered).
//!
//! # Knobs
//! - `verifier` (default `exact`) — `exact` (trimmed strings equal) or `numeric` (both parse as
//!   numbers and agree within 1e-6 relative; see [`Verifier::Numeric`]).
//!
//! # Expert
//! Makes the row's tool calls ([`QaPair::solution`]) in order, then answers the reference
//! answer. There is no recoverable mistake.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::grammar::clip;
use crate::knobs::{KnobInfo, Knobs};
use crate::{Env, EnvError, Expert, Outcome, Step, parse_action};

/// One question/answer row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QaPair {
    /// The question shown to the policy.
    pub prompt: String,
    /// The reference answer.
    pub answer: String,
    /// Tools the policy may call before answering: tool name → (argument → observation text).
    /// Empty: a single-turn question (module docs).
    pub tools: BTreeMap<String, BTreeMap<String, String>>,
    /// The expert's tool calls before its answer, `name[argument]`, for SFT demonstrations.
    pub solution: Vec<String>,
}

/// How an answer is checked against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verifier {
    /// The answer and the reference are equal after trimming surrounding whitespace
    /// (case-sensitive). The default.
    #[default]
    Exact,
    /// Both parse as `f64` (after trimming) and `|a - b| <= 1e-6 * max(1, |b|)`, where `b` is the
    /// reference. A reference that is not a finite number falls back to [`Verifier::Exact`].
    Numeric,
}

impl Verifier {
    /// The verifier's name as written in configs: `exact` or `numeric`.
    pub fn name(self) -> &'static str {
        match self {
            Verifier::Exact => "exact",
            Verifier::Numeric => "numeric",
        }
    }

    /// The verifier called `name` (`exact` or `numeric`).
    pub fn from_name(name: &str) -> Option<Verifier> {
        match name.trim() {
            "exact" => Some(Verifier::Exact),
            "numeric" => Some(Verifier::Numeric),
            _ => None,
        }
    }

    /// Whether `given` is accepted as the reference answer `expected`.
    pub fn accepts(self, given: &str, expected: &str) -> bool {
        let (given, expected) = (given.trim(), expected.trim());
        match self {
            Verifier::Exact => given == expected,
            Verifier::Numeric => match expected.parse::<f64>() {
                Ok(b) if b.is_finite() => given
                    .parse::<f64>()
                    .is_ok_and(|a| (a - b).abs() <= 1e-6 * b.abs().max(1.0)),
                _ => given == expected,
            },
        }
    }
}

/// A set of question/answer tasks and how to verify them (the `qa-file` configuration).
///
/// `Default` is an empty set with the exact verifier; it exists so that [`Knobs`] can be
/// implemented, real sets come from [`QaConfig::new`]. Tasks of an empty set have an empty
/// question and accept only an empty answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QaConfig {
    pairs: Arc<[QaPair]>,
    /// How answers are checked.
    pub verifier: Verifier,
}

impl QaConfig {
    /// A task set over `pairs`; [`EnvError::EmptyTaskSet`] when there are none.
    pub fn new(pairs: Vec<QaPair>, verifier: Verifier) -> Result<QaConfig, EnvError> {
        if pairs.is_empty() {
            return Err(EnvError::EmptyTaskSet);
        }
        Ok(QaConfig {
            pairs: pairs.into(),
            verifier,
        })
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the set has no tasks.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs, in task-id order.
    pub fn pairs(&self) -> &[QaPair] {
        &self.pairs
    }

    /// Task `task_id`; ids wrap around [`QaConfig::len`].
    pub fn task(&self, task_id: u64) -> QaTask {
        let index = if self.pairs.is_empty() {
            None
        } else {
            Some((task_id % self.pairs.len() as u64) as usize)
        };
        let question = index.map_or("", |i| self.pairs[i].prompt.trim_end());
        let row = index.map(|i| &self.pairs[i]);
        let (prompt, max_turns) = match row.filter(|r| !r.tools.is_empty()) {
            None => (format!("{question}\nReply answer[...].\n"), 1),
            Some(r) => {
                let names: Vec<&str> = r.tools.keys().map(String::as_str).collect();
                let prompt = format!("{question}\nTools: {}, answer.\n", names.join(", "));
                (prompt, 2 * (r.solution.len() + 1))
            }
        };
        QaTask {
            pairs: Arc::clone(&self.pairs),
            index,
            prompt: Arc::from(prompt),
            verifier: self.verifier,
            done: false,
            turns: 0,
            max_turns,
        }
    }
}

impl Knobs for QaConfig {
    const KNOBS: &'static [KnobInfo] = &[KnobInfo {
        name: "verifier",
        default: "exact",
        doc: "how answers are checked: exact (trimmed strings equal) or numeric (within 1e-6 \
              relative)",
    }];

    fn set_knob(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "verifier" => {
                self.verifier =
                    Verifier::from_name(value).ok_or_else(|| "exact or numeric".to_string())?;
                Ok(())
            }
            _ => Err(format!("unknown knob '{name}'")),
        }
    }

    fn knob_values(&self) -> Vec<(&'static str, String)> {
        vec![("verifier", self.verifier.name().to_string())]
    }
}

/// One `qa-file` task.
#[derive(Debug, Clone)]
pub struct QaTask {
    pairs: Arc<[QaPair]>,
    /// Index of the pair (`None` for a task of an empty set).
    index: Option<usize>,
    prompt: Arc<str>,
    verifier: Verifier,
    done: bool,
    /// Actions taken.
    turns: usize,
    max_turns: usize,
}

impl QaTask {
    /// The reference answer (empty for a task of an empty set).
    pub fn answer(&self) -> &str {
        self.index.map_or("", |i| self.pairs[i].answer.as_str())
    }

    fn row(&self) -> Option<&QaPair> {
        self.index.map(|i| &self.pairs[i])
    }
}

const USAGE: &str = "Reply answer[...].";

impl Env for QaTask {
    fn prompt(&self) -> &str {
        &self.prompt
    }

    fn step(&mut self, action: &str) -> Step {
        let (observation, reward, outcome) = if self.done {
            (
                "\nThe episode is over.\n".to_string(),
                0.0,
                Outcome::Finished,
            )
        } else {
            self.turns += 1;
            let tools = self.row().map(|r| &r.tools).filter(|t| !t.is_empty());
            let usage = if tools.is_some() {
                "Reply tool[argument] or answer[...]."
            } else {
                USAGE
            };
            match parse_action(action) {
                Err(reason) => (format!("\n{reason}. {usage}\n"), 0.0, Outcome::Malformed),
                Ok(p) if p.name == "answer" => {
                    if self.verifier.accepts(p.arg, self.answer()) {
                        ("\nCorrect.\n".to_string(), 1.0, Outcome::Solved)
                    } else {
                        ("\nWrong answer.\n".to_string(), 0.0, Outcome::Failed)
                    }
                }
                Ok(p) => match tools.and_then(|t| t.get(p.name)) {
                    Some(table) => {
                        let arg = p.arg.trim();
                        let text = match table.get(arg) {
                            Some(result) => result.trim_end().to_string(),
                            None => format!("No result for '{}'.", clip(arg)),
                        };
                        (format!("\n{text}\n"), 0.0, Outcome::Continue)
                    }
                    None => (
                        format!("\nUnknown tool '{}'. {usage}\n", clip(p.name)),
                        0.0,
                        Outcome::Malformed,
                    ),
                },
            }
        };
        let ended = matches!(
            outcome,
            Outcome::Solved | Outcome::Failed | Outcome::Finished
        );
        let out_of_turns = !ended && self.turns >= self.max_turns;
        let outcome = match (out_of_turns, outcome) {
            // A single-turn question ends with its one action, as before.
            (true, o) if self.max_turns == 1 => o,
            (true, _) => Outcome::OutOfTurns,
            (false, o) => o,
        };
        let done = ended || out_of_turns;
        self.done |= done;
        Step {
            observation,
            reward,
            done,
            outcome,
        }
    }

    fn max_turns(&self) -> usize {
        self.max_turns
    }
}

impl Expert for QaTask {
    fn expert_action(&self) -> String {
        match self.row().and_then(|r| r.solution.get(self.turns)) {
            Some(call) => call.clone(),
            None => format!("answer[{}]", self.answer().trim()),
        }
    }

    fn mistake_action(&self, _seed: u64) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(prompt: &str, answer: &str) -> QaPair {
        QaPair {
            prompt: prompt.to_string(),
            answer: answer.to_string(),
            ..Default::default()
        }
    }

    /// A row with tools is a multi-turn task: the expert's calls return the table's text, the
    /// answer ends it; unknown arguments, unknown tools and the turn limit behave as documented.
    #[test]
    fn tool_rows_are_multi_turn() {
        let row = QaPair {
            prompt: "Who founded the maker of Zorp?".into(),
            answer: "Ada".into(),
            tools: BTreeMap::from([(
                "search".to_string(),
                BTreeMap::from([
                    ("Zorp".to_string(), "Zorp is made by Quux.".to_string()),
                    ("Quux".to_string(), "Quux was founded by Ada.".to_string()),
                ]),
            )]),
            solution: vec!["search[Zorp]".into(), "search[Quux]".into()],
        };
        let cfg = QaConfig::new(vec![row], Verifier::Exact).unwrap();
        let mut task = cfg.task(0);
        assert!(task.prompt().ends_with("\nTools: search, answer.\n"));
        assert_eq!(task.max_turns(), 6);
        let first = task.step(&task.expert_action());
        assert_eq!(first.observation, "\nZorp is made by Quux.\n");
        assert_eq!((first.outcome, first.done), (Outcome::Continue, false));
        assert_eq!(task.expert_action(), "search[Quux]");
        task.step(&task.expert_action());
        assert_eq!(task.expert_action(), "answer[Ada]");
        let last = task.step("answer[Ada]");
        assert_eq!(
            (last.outcome, last.done, last.reward),
            (Outcome::Solved, true, 1.0)
        );
        // Misses spend turns; the last turn ends the episode.
        let mut task = cfg.task(0);
        let miss = task.step("search[Nobody]");
        assert_eq!(miss.observation, "\nNo result for 'Nobody'.\n");
        assert_eq!(task.step("lookup[Zorp]").outcome, Outcome::Malformed);
        for _ in 0..3 {
            assert!(!task.step("search[Zorp]").done);
        }
        let out = task.step("search[Zorp]");
        assert_eq!((out.outcome, out.done), (Outcome::OutOfTurns, true));
    }

    #[test]
    fn empty_set_is_an_error_and_ids_wrap() {
        assert_eq!(
            QaConfig::new(vec![], Verifier::Exact),
            Err(EnvError::EmptyTaskSet)
        );
        let cfg = QaConfig::new(vec![pair("a?", "1"), pair("b?", "2")], Verifier::Exact).unwrap();
        assert_eq!(cfg.len(), 2);
        assert!(!cfg.is_empty());
        assert_eq!(cfg.task(5).prompt(), cfg.task(1).prompt());
        assert_eq!(cfg.task(4).prompt(), "a?\nReply answer[...].\n");
        // The default (empty) set never panics.
        let mut t = QaConfig::default().task(3);
        assert_eq!(t.step("answer[]").outcome, Outcome::Solved);
    }

    #[test]
    fn verifiers() {
        assert!(Verifier::Exact.accepts(" Paris ", "Paris"));
        assert!(!Verifier::Exact.accepts("paris", "Paris"));
        assert!(!Verifier::Exact.accepts("42.0", "42"));
        assert!(Verifier::Numeric.accepts("42.0", "42"));
        assert!(Verifier::Numeric.accepts("1e3", "1000"));
        assert!(Verifier::Numeric.accepts("1000000.5", "1000000"));
        assert!(!Verifier::Numeric.accepts("1000002", "1000000"));
        assert!(!Verifier::Numeric.accepts("0.00001", "0"));
        assert!(!Verifier::Numeric.accepts("NaN", "1"));
        assert!(!Verifier::Numeric.accepts("forty-two", "42"));
        assert!(Verifier::Numeric.accepts("blue", "blue"));
        // A reference that is not a finite number is compared exactly.
        assert!(Verifier::Numeric.accepts("NaN", "NaN"));
        assert!(!Verifier::Numeric.accepts("nan", "NaN"));
    }

    #[test]
    fn steps() {
        let cfg = QaConfig::new(vec![pair("6*7?", "42")], Verifier::Numeric).unwrap();
        let mut t = cfg.task(0);
        let s = t.step("answer[42.000]");
        assert_eq!((s.reward, s.outcome, s.done), (1.0, Outcome::Solved, true));
        let s = t.step("answer[42]");
        assert_eq!(
            (s.reward, s.outcome, s.done),
            (0.0, Outcome::Finished, true)
        );
        let mut t = cfg.task(0);
        assert_eq!(t.step("answer[41]").outcome, Outcome::Failed);
        let mut t = cfg.task(0);
        assert_eq!(t.step("42").outcome, Outcome::Malformed);
        let mut t = cfg.task(0);
        assert_eq!(t.step("search[42]").outcome, Outcome::Malformed);
    }
}
