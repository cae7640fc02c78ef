//! Expert demonstrations for the SFT warm start.
//!
//! [`demonstrations`] runs each environment's [`Expert`] on the given tasks until the episode ends
//! and records every turn. With [`DemoOptions::mistake_rate`] above zero a demonstration may contain
//! one recoverable mistake followed by the expert's correction, so the policy also sees how to get
//! back on track.
//!
//! # Mistakes
//! At turn `t` of task `id`, the RNG `rng_for(&[seed, id, t])` first draws a uniform `u` in
//! `[0, 1)`; when `u < mistake_rate`, no mistake has been made yet in this episode, and the
//! environment offers one ([`Expert::mistake_action`], seeded with the next `u64` of the same RNG),
//! the mistake is taken instead of the expert's action — but only if the expert, run on a clone of
//! the environment from the state after the mistake, still solves the task. A mistake that would
//! lose the episode (the last turn, a wrong final answer) is never taken. So there is **at most one
//! mistake per episode**, `mistake_rate = 1` puts it at the first turn where a recoverable one is
//! offered, and `mistake_rate = 0` gives the pure expert.
//!
//! # Guesses (imperfect demonstrations)
//! With [`DemoOptions::guess_rate`] above zero, the RNG `rng_for(&[seed, id, GUESS_SALT])` draws
//! a uniform `u` per task; when `u < guess_rate` and the environment offers one
//! ([`Expert::guess_action`]: multihop answers `unknown`), the demonstration is
//! that single guess, which ends the episode **unsolved**. This models SFT data from an imperfect
//! demonstrator: the SFT policy learns to skip the work at about that rate, a decision that
//! reinforcement learning, which sees the reward, can unlearn.
//!
//! # Which demonstrations are kept
//! Successful episodes ([`Outcome::is_success`] on the final step) and guesses are returned, in
//! the order of `task_ids`; a task whose expert fails is left out, so the result can be shorter
//! than the input (the benchmark experts solve every task, which the `envs` tests check).
//!
//! # Tokens
//! [`Demonstration::encode`] lays a demonstration out as the transcript of DESIGN §2:
//!
//! ```text
//! <bos> prompt  action_1 <eos> observation_1  action_2 <eos> observation_2 ... action_n <eos>
//! ```
//!
//! The observation after the final, episode-ending action is left out (the policy never reads it),
//! in [`Demonstration::transcript`] too. The loss mask is aligned with the tokens and marks
//! **targets**: `loss_mask[t]` is true when token `t` is trained as the prediction made from
//! `tokens[..t]`, which holds exactly for action tokens and the `<eos>` closing each action.
//! `loss_mask[0]` (`<bos>`) is always false; a trainer that computes logits at position `t - 1` for
//! target `t` shifts the mask by one together with the tokens.

use envs::rng::rng_for;
use envs::{AnyEnv, Env, EnvSpec, Expert, Outcome};
use rand::RngExt;
use rollout::tokenizer::{Encoded, Tokenizer};

/// How demonstrations are generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoOptions {
    /// Chance per turn of taking a recoverable mistake (at most one per episode, see the
    /// [module docs](self)). `0` or less never, `1` or more at the first chance. Default 0.0.
    pub mistake_rate: f32,
    /// Share of tasks whose demonstration is a guess that fails (see the
    /// [module docs](self)). Default 0.0.
    pub guess_rate: f32,
    /// Seed of the mistake and guess draws. Default 0.
    pub seed: u64,
}

/// Salt of the per-task guess draw (distinct from any turn index of the mistake draws).
const GUESS_SALT: u64 = 0x6775_6573_7321;

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            mistake_rate: 0.0,
            guess_rate: 0.0,
            seed: 0,
        }
    }
}

/// One turn of a demonstration: the action taken and what the environment answered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    /// The action text (without `<eos>`).
    pub action: String,
    /// The environment's observation after the action.
    pub observation: String,
}

/// A recorded expert episode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Demonstration {
    /// The task id within its environment family.
    pub task_id: u64,
    /// The environment name (`multihop`, ...).
    pub env: String,
    /// The environment's prompt.
    pub prompt: String,
    /// Every turn, in order; the last one ended the episode.
    pub turns: Vec<Turn>,
    /// Sum of the step rewards.
    pub reward: f32,
    /// Whether the episode ended in success (true for what [`demonstrations`] returns, guesses
    /// excepted).
    pub success: bool,
    /// Mistakes taken (0 or 1).
    pub mistakes: u32,
    /// Whether this is a guess (a single failing turn, see the [module docs](self)).
    #[serde(default)]
    pub guessed: bool,
}

impl Demonstration {
    /// Observations that are part of the transcript: all but the one after the final action.
    fn turn_parts(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        let last = self.turns.len().saturating_sub(1);
        self.turns.iter().enumerate().map(move |(i, turn)| {
            let observation = (i < last).then_some(turn.observation.as_str());
            (turn.action.as_str(), observation)
        })
    }

    /// The transcript text: prompt, then each action followed by its observation, without the
    /// observation after the final action (see the [module docs](self)).
    pub fn transcript(&self) -> String {
        let mut text = self.prompt.clone();
        for (action, observation) in self.turn_parts() {
            text.push_str(action);
            text.push_str(observation.unwrap_or(""));
        }
        text
    }

    /// Tokens and target mask for SFT (layout and mask convention in the [module docs](self)).
    ///
    /// # Shapes
    /// Returns `tokens: [len]` and `loss_mask: [len]`, with `len = b + |prompt| + Σ (|action| + 1)
    /// + Σ |observation|` over the transcript's parts, `b = 1` when the tokenizer adds a BOS
    /// ([`Tokenizer::add_bos`]), else 0.
    pub fn encode(&self, tok: &dyn Tokenizer) -> Encoded {
        let mut tokens = tok.encode_prompt(&self.prompt);
        let mut loss_mask = vec![false; tokens.len()];
        for (action, observation) in self.turn_parts() {
            let start = tokens.len();
            tokens.extend(tok.encode(action));
            tokens.push(tok.eos());
            loss_mask.resize(start, false);
            loss_mask.resize(tokens.len(), true);
            if let Some(observation) = observation {
                tokens.extend(tok.encode(observation));
                loss_mask.resize(tokens.len(), false);
            }
        }
        Encoded { tokens, loss_mask }
    }
}

/// Runs the expert on each task of `task_ids` and returns the successful episodes, in order (see
/// the [module docs](self) for mistakes and filtering). A pure function of its arguments.
pub fn demonstrations(spec: &EnvSpec, task_ids: &[u64], opts: &DemoOptions) -> Vec<Demonstration> {
    task_ids
        .iter()
        .map(|&id| demonstrate(spec, id, opts))
        .filter(|demo| demo.success || demo.guessed)
        .collect()
}

/// Whether the expert solves the task from `env`'s current state.
fn expert_solves(mut env: AnyEnv) -> bool {
    // The turn limit bounds any episode; the extra iteration covers an env that reports `done` one
    // step late.
    for _ in 0..=env.max_turns() {
        let step = env.step(&env.expert_action());
        if step.done {
            return step.outcome.is_success();
        }
    }
    false
}

fn demonstrate(spec: &EnvSpec, task_id: u64, opts: &DemoOptions) -> Demonstration {
    let mut env = spec.make(task_id);
    let prompt = env.prompt().to_string();
    let mut turns = Vec::new();
    let mut reward = 0.0f32;
    let mut mistakes = 0u32;
    let mut outcome = Outcome::Continue;
    // A guess is the first action and ends the episode (`Expert::guess_action`).
    let mut guess = (opts.guess_rate > 0.0
        && rng_for(&[opts.seed, task_id, GUESS_SALT]).random::<f32>() < opts.guess_rate)
        .then(|| env.guess_action())
        .flatten();
    let guessed = guess.is_some();
    for turn in 0..=env.max_turns() {
        let mut action = guess.take();
        if action.is_none() && mistakes == 0 {
            let mut rng = rng_for(&[opts.seed, task_id, turn as u64]);
            if rng.random::<f32>() < opts.mistake_rate {
                action = env.mistake_action(rng.random::<u64>()).filter(|mistake| {
                    let mut after = env.clone();
                    let step = after.step(mistake);
                    !step.done && expert_solves(after)
                });
                mistakes += u32::from(action.is_some());
            }
        }
        let action = action.unwrap_or_else(|| env.expert_action());
        let step = env.step(&action);
        reward += step.reward;
        outcome = step.outcome;
        turns.push(Turn {
            action,
            observation: step.observation,
        });
        if step.done {
            break;
        }
    }
    Demonstration {
        task_id,
        env: spec.name().to_string(),
        prompt,
        turns,
        reward,
        success: outcome.is_success(),
        mistakes,
        guessed,
    }
}

#[cfg(test)]
mod tests {
    use rollout::tokenizer::ByteTokenizer;

    use super::*;

    fn multihop(hops: &str) -> EnvSpec {
        EnvSpec::from_name("multihop", &[("hops", hops)]).unwrap()
    }

    fn ids() -> Vec<u64> {
        (0..40).collect()
    }

    #[test]
    fn same_inputs_give_identical_demos_and_encodings() {
        for rate in [0.0, 0.5] {
            let opts = DemoOptions {
                mistake_rate: rate,
                seed: 9,
                ..DemoOptions::default()
            };
            let spec = multihop("3");
            let a = demonstrations(&spec, &ids(), &opts);
            let b = demonstrations(&spec, &ids(), &opts);
            assert_eq!(a.len(), ids().len());
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap()
            );
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.encode(&ByteTokenizer), y.encode(&ByteTokenizer));
            }
        }
    }

    #[test]
    fn guesses_are_single_failing_turns_at_about_the_rate() {
        let spec = multihop("2");
        let ids: Vec<u64> = (0..400).collect();
        let opts = DemoOptions {
            guess_rate: 0.25,
            seed: 5,
            ..DemoOptions::default()
        };
        let demos = demonstrations(&spec, &ids, &opts);
        assert_eq!(demos.len(), ids.len(), "guesses are kept");
        let guesses: Vec<_> = demos.iter().filter(|d| d.guessed).collect();
        assert!(
            (70..=130).contains(&guesses.len()),
            "{} guesses",
            guesses.len()
        );
        for g in &guesses {
            assert_eq!(g.turns.len(), 1);
            assert!(g.turns[0].action.starts_with("answer["));
            assert!(!g.success);
            assert_eq!(g.reward, 0.0);
        }
        for d in demos.iter().filter(|d| !d.guessed) {
            assert!(d.success);
        }
        // The draw is per task: the same seed guesses on the same tasks.
        let again = demonstrations(&spec, &ids, &opts);
        assert_eq!(demos, again);
        assert!(
            demonstrations(&spec, &ids, &DemoOptions::default())
                .iter()
                .all(|d| !d.guessed)
        );
    }

    #[test]
    fn zero_rate_is_the_pure_expert() {
        let spec = multihop("2");
        let demos = demonstrations(&spec, &ids(), &DemoOptions::default());
        assert_eq!(demos.len(), ids().len());
        for demo in &demos {
            assert_eq!(demo.mistakes, 0);
            assert!(demo.success);
            assert_eq!(demo.reward, 1.0);
            assert_eq!(demo.turns.len(), 3, "two searches and an answer");
            assert_eq!(demo.env, "multihop");
        }
    }

    #[test]
    fn full_rate_makes_exactly_one_recoverable_mistake() {
        let opts = DemoOptions {
            mistake_rate: 1.0,
            seed: 3,
            ..DemoOptions::default()
        };
        for hops in ["1", "2", "4"] {
            let spec = multihop(hops);
            let clean = demonstrations(&spec, &ids(), &DemoOptions::default());
            let noisy = demonstrations(&spec, &ids(), &opts);
            assert_eq!(
                noisy.len(),
                ids().len(),
                "hops {hops}: every demo still succeeds"
            );
            let mut with_mistake = 0;
            for (c, n) in clean.iter().zip(&noisy) {
                assert_eq!(c.task_id, n.task_id);
                let spare = spec.make(c.task_id).max_turns() > c.turns.len();
                if spare {
                    assert_eq!(n.mistakes, 1, "hops {hops}, task {}", n.task_id);
                    assert_eq!(n.turns.len(), c.turns.len() + 1);
                    with_mistake += 1;
                } else {
                    assert_eq!(n, c);
                }
                assert!(n.success && n.reward == 1.0);
            }
            assert!(
                with_mistake > 0,
                "hops {hops}: default max_turns leaves a spare turn"
            );
        }
        // Without a spare turn no mistake can be recovered from, so none is taken.
        let tight = EnvSpec::from_name("multihop", &[("hops", "2"), ("max_turns", "3")]).unwrap();
        for demo in demonstrations(&tight, &ids(), &opts) {
            assert_eq!(demo.mistakes, 0);
        }
    }

    #[test]
    fn mask_covers_exactly_actions_and_their_eos() {
        let tok = ByteTokenizer;
        let opts = DemoOptions {
            mistake_rate: 1.0,
            seed: 1,
            ..DemoOptions::default()
        };
        for demo in demonstrations(&multihop("3"), &ids(), &opts) {
            let enc = demo.encode(&tok);
            assert_eq!(enc.tokens.len(), enc.loss_mask.len());
            // Rebuild the expected layout piece by piece.
            let mut want_tokens = vec![tok.bos()];
            let mut want_mask = vec![false];
            let push = |tokens: &mut Vec<u32>, mask: &mut Vec<bool>, text: &str, train: bool| {
                let ids = tok.encode(text);
                mask.extend(std::iter::repeat_n(train, ids.len()));
                tokens.extend(ids);
            };
            push(&mut want_tokens, &mut want_mask, &demo.prompt, false);
            for (i, turn) in demo.turns.iter().enumerate() {
                push(&mut want_tokens, &mut want_mask, &turn.action, true);
                want_tokens.push(tok.eos());
                want_mask.push(true);
                if i + 1 < demo.turns.len() {
                    push(&mut want_tokens, &mut want_mask, &turn.observation, false);
                }
            }
            assert_eq!(enc.tokens, want_tokens);
            assert_eq!(enc.loss_mask, want_mask);
            // Trained tokens are the action bytes plus one eos per turn, nothing else.
            let trained: Vec<u32> = enc
                .tokens
                .iter()
                .zip(&enc.loss_mask)
                .filter(|(_, m)| **m)
                .map(|(t, _)| *t)
                .collect();
            let mut want_trained = Vec::new();
            for turn in &demo.turns {
                want_trained.extend(tok.encode(&turn.action));
                want_trained.push(tok.eos());
            }
            assert_eq!(trained, want_trained);
            // Prompt and observations are masked out; the sequence ends on the final eos.
            let prompt_end = 1 + tok.encode(&demo.prompt).len();
            assert!(enc.loss_mask[..prompt_end].iter().all(|m| !m));
            assert_eq!(*enc.tokens.last().unwrap(), tok.eos());
            assert!(*enc.loss_mask.last().unwrap());
            // The unmasked-out text decodes to the transcript.
            assert_eq!(tok.decode(&enc.tokens), demo.transcript());
        }
    }

    #[test]
    fn every_env_yields_successful_demos() {
        let dir = crate::testutil::TempDir::new("demos");
        let file = dir.file(
            "qa.jsonl",
            concat!(
                "{\"prompt\":\"6 x 7?\",\"answer\":42}\n",
                "{\"prompt\":\"Capital of Zed?\",\"answer\":\"Zo\"}\n"
            )
            .as_bytes(),
        );
        let specs = [
            multihop("2"),
            EnvSpec::from_name("countdown", &[]).unwrap(),
            EnvSpec::from_name("maze", &[]).unwrap(),
            crate::qa_spec_from_file(&file, envs::qa::Verifier::Exact).unwrap(),
        ];
        let opts = DemoOptions {
            mistake_rate: 0.5,
            seed: 4,
            ..DemoOptions::default()
        };
        for spec in &specs {
            let ids: Vec<u64> = (0..12).collect();
            let demos = demonstrations(spec, &ids, &opts);
            assert_eq!(
                demos.len(),
                ids.len(),
                "{}: the expert solves every task",
                spec.name()
            );
            for (demo, id) in demos.iter().zip(&ids) {
                assert_eq!(demo.task_id, *id);
                assert_eq!(demo.env, spec.name());
                assert!(demo.success && demo.reward == 1.0 && demo.mistakes <= 1);
                assert!(demo.turns.len() <= spec.make(*id).max_turns());
                if spec.name() == "qa-file" || spec.name() == "countdown" {
                    assert_eq!((demo.turns.len(), demo.mistakes), (1, 0), "single turn");
                }
            }
        }
    }

    #[test]
    fn transcript_drops_only_the_final_observation() {
        let demo = Demonstration {
            task_id: 0,
            env: "multihop".into(),
            prompt: "P|".into(),
            turns: vec![
                Turn {
                    action: "a1".into(),
                    observation: "|o1|".into(),
                },
                Turn {
                    action: "a2".into(),
                    observation: "|final|".into(),
                },
            ],
            reward: 1.0,
            success: true,
            mistakes: 0,
            guessed: false,
        };
        assert_eq!(demo.transcript(), "P|a1|o1|a2");
        let tok = ByteTokenizer;
        let enc = demo.encode(&tok);
        let e = tok.eos();
        let want: Vec<u32> = [tok.bos()]
            .into_iter()
            .chain(tok.encode("P|"))
            .chain(tok.encode("a1"))
            .chain([e])
            .chain(tok.encode("|o1|"))
            .chain(tok.encode("a2"))
            .chain([e])
            .collect();
        assert_eq!(enc.tokens, want);
        let m = |n: usize, v: bool| std::iter::repeat_n(v, n);
        let want_mask: Vec<bool> = m(3, false)
            .chain(m(3, true))
            .chain(m(4, false))
            .chain(m(3, true))
            .collect();
        assert_eq!(enc.loss_mask, want_mask);
    }
}
