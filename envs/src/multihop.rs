//! `multihop` — k-hop questions over a small synthetic knowledge graph (the headline agentic
//! environment).
//!
//! Each task id generates a world of invented entities: organisations ("Velora") and people
//! ("Kelda Morr"), joined by typed, directed relations. Every entity has at most one fact per
//! relation, so the question has exactly one answer:
//!
//! ```text
//! Who is the mentor of the sibling of the founder of [Velora]? Tools: search, answer.
//! ```
//!
//! Names are written in brackets wherever they appear (question and facts), the way web
//! environments show clickable elements: `[Kelda Morr]` in the text becomes `search[Kelda Morr]`
//! in an action. (A byte-level policy then copies a name by matching the `[` before it, which a
//! small transformer learns far sooner than locating a bare word.)
//!
//! Relations (subject → object): organisations have `founder`, `head` and `backer` (people)
//! and `partner` and `supplier` (organisations); people have `mentor`, `sibling`, `rival` and
//! `spouse` (people) and `employer` (an organisation).
//!
//! # Actions
//! - `search[name]` — the facts of that entity, e.g. `"\nKelda Morr: mentor [Brisa Kel]; rival
//!   [Dara Quill].\n"`: the fact on the question's chain plus `distractors` facts about other relations, in
//!   a fixed shuffled order. Names match case-insensitively with runs of spaces collapsed. A name
//!   that is no entity is a valid call that finds nothing ([`Outcome::Continue`]).
//! - `answer[name]` — ends the episode: reward 1 and [`Outcome::Solved`] if the argument, trimmed,
//!   equals the answer's name exactly (**case-sensitive**), else [`Outcome::Failed`].
//!
//! Anything else (text that does not parse, another tool) is [`Outcome::Malformed`] and costs a
//! turn. A search or malformed action on the last turn ends the episode; a search then reports
//! [`Outcome::OutOfTurns`], a malformed action keeps [`Outcome::Malformed`] (with `done = true`).
//!
//! # Knobs
//! - `hops` (default 2, 1..=5) — relations on the question's chain, i.e. searches the expert needs.
//! - `distractors` (default 2, 0..=4) — extra facts per entity besides the chain fact.
//! - `max_turns` (default 0 = auto: `hops + 2`, which leaves one spare turn beyond the expert's
//!   `hops + 1`) — the turn limit.
//!
//! # Expert
//! Searches the chain entity by entity (the first chain entity not yet searched), then answers.
//! Its mistake is a search for a distractor entity named in the last observation (before any
//! search, or when that observation names none, a search for a phrase of the question such as
//! `search[founder of Velora]`, which finds nothing); offered only when a turn is left to spare.
//! An explicit `max_turns` below `hops + 1` makes tasks unsolvable, even for the expert.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::grammar::clip;
use crate::knobs::{KnobInfo, Knobs};
use crate::rng::derive;
use crate::{Env, Expert, Outcome, Step, parse_action};

/// Seed tag for multihop worlds ("multihop" in ASCII, truncated).
const SEED_TAG: u64 = 0x6d75_6c74_6968_6f70;

/// Configuration of the `multihop` environment; see the module docs for each knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultihopConfig {
    /// Relations on the question's chain (1..=5). Default 2.
    pub hops: usize,
    /// Distractor facts per entity besides the chain fact (0..=4). Default 2.
    pub distractors: usize,
    /// Turn limit; 0 means auto (`hops + 2`). Default 0.
    pub max_turns: usize,
}

impl Default for MultihopConfig {
    fn default() -> Self {
        MultihopConfig {
            hops: 2,
            distractors: 2,
            max_turns: 0,
        }
    }
}

impl MultihopConfig {
    /// The turn limit this configuration gives (resolving auto).
    pub fn resolved_max_turns(&self) -> usize {
        if self.max_turns == 0 {
            self.hops + 2
        } else {
            self.max_turns
        }
    }
}

fn parse_in(value: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("an integer in {lo}..={hi}")),
    }
}

impl Knobs for MultihopConfig {
    const KNOBS: &'static [KnobInfo] = &[
        KnobInfo {
            name: "hops",
            default: "2",
            doc: "relations on the question's chain, 1..=5 (the horizon)",
        },
        KnobInfo {
            name: "distractors",
            default: "2",
            doc: "distractor facts per entity besides the chain fact, 0..=4",
        },
        KnobInfo {
            name: "max_turns",
            default: "0",
            doc: "turn limit, 0..=64; 0 = auto (hops + 2)",
        },
    ];

    fn set_knob(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "hops" => self.hops = parse_in(value, 1, 5)?,
            "distractors" => self.distractors = parse_in(value, 0, 4)?,
            "max_turns" => self.max_turns = parse_in(value, 0, 64)?,
            _ => return Err(format!("unknown knob '{name}'")),
        }
        Ok(())
    }

    fn knob_values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("hops", self.hops.to_string()),
            ("distractors", self.distractors.to_string()),
            ("max_turns", self.max_turns.to_string()),
        ]
    }
}

/// Entity kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Org,
    Person,
}

/// The relations: (name, subject kind, object kind).
const RELATIONS: [(&str, Kind, Kind); 10] = [
    ("founder", Kind::Org, Kind::Person),
    ("head", Kind::Org, Kind::Person),
    ("backer", Kind::Org, Kind::Person),
    ("partner", Kind::Org, Kind::Org),
    ("supplier", Kind::Org, Kind::Org),
    ("mentor", Kind::Person, Kind::Person),
    ("sibling", Kind::Person, Kind::Person),
    ("rival", Kind::Person, Kind::Person),
    ("spouse", Kind::Person, Kind::Person),
    ("employer", Kind::Person, Kind::Org),
];

fn relations_of(kind: Kind) -> Vec<usize> {
    (0..RELATIONS.len())
        .filter(|&r| RELATIONS[r].1 == kind)
        .collect()
}

const ONSETS: [&str; 18] = [
    "b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "z", "br", "tr", "th", "sh", "g", "f", "p",
];
const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "a"];
const CODAS: [&str; 8] = ["n", "r", "l", "s", "th", "rr", "sk", "x"];

fn syllable(rng: &mut StdRng, coda_p: f64) -> String {
    let mut s = String::new();
    s.push_str(ONSETS[rng.random_range(0..ONSETS.len())]);
    s.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
    if rng.random_bool(coda_p) {
        s.push_str(CODAS[rng.random_range(0..CODAS.len())]);
    }
    s
}

fn capitalise(s: String) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => s,
    }
}

fn invent_name(rng: &mut StdRng, kind: Kind) -> String {
    match kind {
        Kind::Person => {
            let first = syllable(rng, 0.4) + &syllable(rng, 0.0);
            let last = if rng.random_bool(0.5) {
                syllable(rng, 1.0)
            } else {
                syllable(rng, 0.0) + &syllable(rng, 1.0)
            };
            format!("{} {}", capitalise(first), capitalise(last))
        }
        Kind::Org => {
            let n = rng.random_range(2..=3);
            let mut s = String::new();
            for i in 0..n {
                s.push_str(&syllable(rng, if i + 1 == n { 0.5 } else { 0.2 }));
            }
            capitalise(s)
        }
    }
}

/// An entity of the world: its name and its facts, already rendered as an observation.
#[derive(Debug)]
struct Entity {
    name: String,
    /// Lowercase, whitespace-collapsed name used for lookup.
    key: String,
    /// Entities named in its facts (indices into `World::entities`).
    mentions: Vec<usize>,
    /// The observation `search[name]` returns.
    facts: String,
}

/// The static part of a task: shared between clones.
#[derive(Debug)]
struct World {
    /// Chain entities come first: `entities[0]` is the question's subject, `entities[hops]` the
    /// answer.
    entities: Vec<Entity>,
    hops: usize,
    /// The question's innermost phrase, used for the no-distractor mistake.
    phrase: String,
    prompt: String,
    max_turns: usize,
}

fn normalise(name: &str) -> String {
    let mut key = String::new();
    for (i, w) in name.split_whitespace().enumerate() {
        if i > 0 {
            key.push(' ');
        }
        key.push_str(&w.to_lowercase());
    }
    key
}

impl World {
    fn generate(cfg: &MultihopConfig, task_id: u64) -> World {
        let hops = cfg.hops.clamp(1, 5);
        let distractors = cfg.distractors.min(4);
        let mut rng = StdRng::seed_from_u64(derive(&[
            SEED_TAG,
            task_id,
            hops as u64,
            distractors as u64,
        ]));
        let mut used = BTreeSet::new();
        // Short names keep observations short (every byte is a token for the policy).
        let mut fresh = |rng: &mut StdRng, kind: Kind| loop {
            let name = invent_name(rng, kind);
            let limit = if kind == Kind::Person { 11 } else { 8 };
            if name.len() <= limit && used.insert(normalise(&name)) {
                break name;
            }
        };

        // The chain: kinds[i] is the kind of chain entity i, chain_rel[i] the relation from i to
        // i + 1.
        let mut kinds = vec![Kind::Org];
        let mut chain_rel = Vec::with_capacity(hops);
        for i in 0..hops {
            let options = relations_of(kinds[i]);
            let r = options[rng.random_range(0..options.len())];
            chain_rel.push(r);
            kinds.push(RELATIONS[r].2);
        }
        let mut names: Vec<String> = kinds.iter().map(|&k| fresh(&mut rng, k)).collect();
        let mut entity_kinds = kinds.clone();
        // facts[e] = (relation, object entity)
        let mut facts: Vec<Vec<(usize, usize)>> = vec![Vec::new(); hops + 1];
        for i in 0..hops {
            facts[i].push((chain_rel[i], i + 1));
            let mut others: Vec<usize> = relations_of(kinds[i])
                .into_iter()
                .filter(|&r| r != chain_rel[i])
                .collect();
            others.shuffle(&mut rng);
            for &r in others.iter().take(distractors) {
                let kind = RELATIONS[r].2;
                names.push(fresh(&mut rng, kind));
                entity_kinds.push(kind);
                facts.push(Vec::new());
                facts[i].push((r, names.len() - 1));
            }
        }
        // The answer and the distractor entities get facts pointing at other entities of the
        // world (never themselves), so every name a search reveals can be searched in turn.
        for e in hops..names.len() {
            let mut rels = relations_of(entity_kinds[e]);
            rels.shuffle(&mut rng);
            for &r in rels.iter().take(distractors.max(1)) {
                let kind = RELATIONS[r].2;
                let pool: Vec<usize> = (0..names.len())
                    .filter(|&o| o != e && entity_kinds[o] == kind)
                    .collect();
                if !pool.is_empty() {
                    facts[e].push((r, pool[rng.random_range(0..pool.len())]));
                }
            }
        }
        let entities = names
            .iter()
            .enumerate()
            .map(|(e, name)| {
                let mut fs = facts[e].clone();
                fs.shuffle(&mut rng);
                let mut text = format!("\n{name}:");
                if fs.is_empty() {
                    text.push_str(" no known facts.\n");
                } else {
                    for (j, &(r, o)) in fs.iter().enumerate() {
                        let sep = if j == 0 { "" } else { ";" };
                        let _ = write!(text, "{sep} {} [{}]", RELATIONS[r].0, names[o]);
                    }
                    text.push_str(".\n");
                }
                Entity {
                    name: name.clone(),
                    key: normalise(name),
                    mentions: fs.iter().map(|&(_, o)| o).collect(),
                    facts: text,
                }
            })
            .collect();

        let mut question = String::new();
        for i in (0..hops).rev() {
            let _ = write!(question, "the {} of ", RELATIONS[chain_rel[i]].0);
        }
        let _ = write!(question, "[{}]", names[0]);
        let wh = if kinds[hops] == Kind::Person {
            "Who"
        } else {
            "What"
        };
        let prompt = format!("{wh} is {question}? Tools: search, answer.\n");
        let phrase = format!("{} of {}", RELATIONS[chain_rel[0]].0, names[0]);
        World {
            entities,
            hops,
            phrase,
            prompt,
            max_turns: cfg.resolved_max_turns(),
        }
    }

    fn find(&self, query: &str) -> Option<usize> {
        let key = normalise(query);
        self.entities.iter().position(|e| e.key == key)
    }
}

/// One `multihop` task: a shared world plus the episode state (turns, searched chain entities).
#[derive(Debug, Clone)]
pub struct Multihop {
    world: Arc<World>,
    turn: usize,
    done: bool,
    /// Bit i set: chain entity i has been searched.
    searched: u8,
    /// The entity whose facts were the last observation (`None`: only the prompt so far).
    last: Option<usize>,
}

impl Multihop {
    /// Builds task `task_id` of the family `cfg`, deterministically.
    pub fn generate(cfg: &MultihopConfig, task_id: u64) -> Multihop {
        Multihop {
            world: Arc::new(World::generate(cfg, task_id)),
            turn: 0,
            done: false,
            searched: 0,
            last: None,
        }
    }

    /// The answer's name.
    pub fn answer(&self) -> &str {
        &self.world.entities[self.world.hops].name
    }

    /// Turns taken so far.
    pub fn turns_taken(&self) -> usize {
        self.turn
    }

    /// The first chain entity not yet searched (`None`: all of them have been).
    fn next_chain(&self) -> Option<usize> {
        (0..self.world.hops).find(|&i| self.searched & (1 << i) == 0)
    }

    /// Turns the expert still needs from here.
    fn expert_turns_needed(&self) -> usize {
        let unsearched = (0..self.world.hops)
            .filter(|&i| self.searched & (1 << i) == 0)
            .count();
        unsearched + 1
    }

    fn finish(&mut self, observation: String, reward: f32, outcome: Outcome) -> Step {
        self.turn += 1;
        self.done = true;
        Step {
            observation,
            reward,
            done: true,
            outcome,
        }
    }

    /// Counts the turn of a non-final action; the last turn ends the episode.
    fn go_on(&mut self, mut observation: String, outcome: Outcome) -> Step {
        self.turn += 1;
        if self.turn >= self.world.max_turns {
            self.done = true;
            observation.push_str("Out of turns.\n");
            let outcome = if outcome == Outcome::Malformed {
                Outcome::Malformed
            } else {
                Outcome::OutOfTurns
            };
            return Step {
                observation,
                reward: 0.0,
                done: true,
                outcome,
            };
        }
        Step {
            observation,
            reward: 0.0,
            done: false,
            outcome,
        }
    }
}

const USAGE: &str = "Use search[name] or answer[name].";

impl Env for Multihop {
    fn prompt(&self) -> &str {
        &self.world.prompt
    }

    fn step(&mut self, action: &str) -> Step {
        if self.done {
            return Step {
                observation: "\nThe episode is over.\n".to_string(),
                reward: 0.0,
                done: true,
                outcome: Outcome::Finished,
            };
        }
        let parsed = match parse_action(action) {
            Ok(p) => p,
            Err(reason) => {
                return self.go_on(format!("\n{reason}. {USAGE}\n"), Outcome::Malformed);
            }
        };
        match parsed.name {
            "search" => match self.world.find(parsed.arg) {
                Some(e) => {
                    if e < self.world.hops {
                        self.searched |= 1 << e;
                    }
                    self.last = Some(e);
                    let obs = self.world.entities[e].facts.clone();
                    self.go_on(obs, Outcome::Continue)
                }
                None => {
                    let obs = format!("\nNo entity named '{}'.\n", clip(parsed.arg));
                    self.go_on(obs, Outcome::Continue)
                }
            },
            "answer" => {
                if parsed.arg == self.answer() {
                    self.finish("\nCorrect.\n".to_string(), 1.0, Outcome::Solved)
                } else {
                    self.finish("\nWrong answer.\n".to_string(), 0.0, Outcome::Failed)
                }
            }
            other => {
                let obs = format!("\nUnknown tool '{}'. {USAGE}\n", clip(other));
                self.go_on(obs, Outcome::Malformed)
            }
        }
    }

    fn max_turns(&self) -> usize {
        self.world.max_turns
    }
}

impl Expert for Multihop {
    fn expert_action(&self) -> String {
        match self.next_chain() {
            Some(i) => format!("search[{}]", self.world.entities[i].name),
            None => format!("answer[{}]", self.answer()),
        }
    }

    fn mistake_action(&self, seed: u64) -> Option<String> {
        let turns_left = self.world.max_turns.saturating_sub(self.turn);
        if self.done || turns_left <= self.expert_turns_needed() {
            return None;
        }
        let hops = self.world.hops;
        let mentioned: Vec<usize> = match self.last {
            Some(e) => self.world.entities[e].mentions.clone(),
            None => Vec::new(),
        };
        // Distractors named in the last observation; before any search, those named in the
        // subject's facts are unknown to the policy, so fall back to a question phrase.
        let candidates: Vec<usize> = mentioned.into_iter().filter(|&o| o > hops).collect();
        if candidates.is_empty() {
            return Some(format!("search[{}]", self.world.phrase));
        }
        let pick =
            candidates[(derive(&[seed, self.turn as u64]) % candidates.len() as u64) as usize];
        Some(format!("search[{}]", self.world.entities[pick].name))
    }

    /// Before any turn: `answer[unknown]`, a demonstrator giving up without looking anything up
    /// (no entity is called that: names are capitalised).
    fn guess_action(&self) -> Option<String> {
        (self.turn == 0 && !self.done).then(|| "answer[unknown]".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_and_facts_are_short_and_well_formed() {
        for hops in 1..=5 {
            let cfg = MultihopConfig {
                hops,
                distractors: 4,
                max_turns: 0,
            };
            for id in 0..50 {
                let env = Multihop::generate(&cfg, id);
                let p = env.prompt();
                assert!(p.ends_with('\n') && p.len() <= 125, "{p:?}");
                if hops <= 3 {
                    assert!(p.len() <= 105, "{p:?}");
                }
                for e in &env.world.entities {
                    assert!(e.facts.starts_with('\n') && e.facts.ends_with('\n'));
                    assert!(e.facts.len() <= 135, "{:?}", e.facts);
                }
                let default = Multihop::generate(&MultihopConfig::default(), id);
                for e in &default.world.entities {
                    assert!(e.facts.len() <= 95, "{:?}", e.facts);
                }
            }
        }
    }

    #[test]
    fn each_entity_has_at_most_one_fact_per_relation() {
        let cfg = MultihopConfig {
            hops: 5,
            distractors: 4,
            max_turns: 0,
        };
        for id in 0..50 {
            let w = World::generate(&cfg, id);
            for e in &w.entities {
                let rels: Vec<&str> = e
                    .facts
                    .trim()
                    .split(": ")
                    .nth(1)
                    .unwrap_or("")
                    .split("; ")
                    .filter_map(|f| f.split(' ').next())
                    .collect();
                let set: BTreeSet<&&str> = rels.iter().collect();
                assert_eq!(set.len(), rels.len(), "{}", e.facts);
            }
        }
    }

    #[test]
    fn search_is_case_and_space_insensitive_answer_is_exact() {
        let env = Multihop::generate(&MultihopConfig::default(), 3);
        let subject = env.world.entities[0].name.clone();
        let mut e = env.clone();
        let s = e.step(&format!("search[  {}  ]", subject.to_uppercase()));
        assert_eq!(s.outcome, Outcome::Continue);
        assert_eq!(s.observation, env.world.entities[0].facts);
        let mut e = env.clone();
        let s = e.step(&format!("answer[{}]", env.answer().to_lowercase()));
        assert_eq!(s.outcome, Outcome::Failed);
        let mut e = env.clone();
        let s = e.step(&format!("answer[ {} ]", env.answer()));
        assert_eq!(s.outcome, Outcome::Solved);
        assert_eq!(s.reward, 1.0);
    }

    #[test]
    fn a_guess_ends_the_episode_unsolved_and_is_only_offered_first() {
        for hops in 1..=3 {
            let cfg = MultihopConfig {
                hops,
                distractors: 1,
                max_turns: 0,
            };
            for id in 0..200 {
                let env = Multihop::generate(&cfg, id);
                let guess = env.guess_action().expect("offered at the first turn");
                assert_eq!(guess, "answer[unknown]");
                let mut e = env.clone();
                let s = e.step(&guess);
                assert!(s.done);
                assert_eq!(s.outcome, Outcome::Failed);
                let mut e = env.clone();
                e.step(&e.expert_action());
                assert_eq!(e.guess_action(), None);
            }
        }
    }

    #[test]
    fn mid_episode_mistake_searches_a_distractor_from_the_last_observation() {
        let cfg = MultihopConfig {
            hops: 3,
            distractors: 2,
            max_turns: 0,
        };
        for id in 0..200 {
            let mut env = Multihop::generate(&cfg, id);
            let first = env.step(&env.expert_action());
            let mistake = env.mistake_action(id).expect("a spare turn is left");
            let name = mistake
                .strip_prefix("search[")
                .and_then(|m| m.strip_suffix(']'))
                .unwrap();
            assert!(first.observation.contains(name), "{mistake} {first:?}");
            assert!(env.world.find(name).is_some_and(|e| e > cfg.hops));
            let s = env.step(&mistake);
            assert_eq!(s.outcome, Outcome::Continue);
            // The spare turn is spent: no further mistake, and the expert still solves.
            assert_eq!(env.mistake_action(id), None);
            let mut last = s;
            while !last.done {
                last = env.step(&env.expert_action());
            }
            assert_eq!(last.outcome, Outcome::Solved);
        }
    }
}
