//! Cross-environment properties: experts solve every task, mistakes are recoverable, arbitrary
//! text never breaks an environment, clones are independent, tasks are deterministic, and specs
//! reject bad names and knobs.

use std::collections::BTreeSet;

use envs::qa::{QaConfig, QaPair, Verifier};
use envs::{AnyEnv, Env, EnvError, EnvSpec, Expert, Knobs, Outcome};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The specs every property is checked on: each difficulty setting of each environment.
fn specs() -> Vec<EnvSpec> {
    let mut specs = Vec::new();
    for hops in 1..=5 {
        for distractors in [0, 2, 4] {
            let (h, d) = (hops.to_string(), distractors.to_string());
            let knobs = [("hops", h.as_str()), ("distractors", d.as_str())];
            specs.push(EnvSpec::from_name("multihop", &knobs).unwrap());
        }
    }
    for numbers in 2..=6 {
        let n = numbers.to_string();
        specs.push(EnvSpec::from_name("countdown", &[("numbers", &n)]).unwrap());
    }
    specs
        .push(EnvSpec::from_name("countdown", &[("numbers", "4"), ("max_number", "100")]).unwrap());
    for size in [3, 5, 8, 12] {
        let s = size.to_string();
        specs.push(EnvSpec::from_name("maze", &[("size", &s)]).unwrap());
    }
    specs.push(EnvSpec::from_name("maze", &[("size", "8"), ("walls", "0.4")]).unwrap());
    specs.push(EnvSpec::from_name("maze", &[("size", "6"), ("walls", "0")]).unwrap());
    specs.push(EnvSpec::QaFile(qa_set(Verifier::Exact)));
    specs.push(EnvSpec::QaFile(qa_set(Verifier::Numeric)));
    specs
}

fn qa_set(verifier: Verifier) -> QaConfig {
    let pairs = [
        ("What is 6 times 7?", "42"),
        ("Capital of France?", "Paris"),
        ("Half of 3?", "1.5"),
        ("  Spaces around  ", "  padded answer "),
        ("Brackets?", "a] b [c]"),
        ("Unicode?", "Zürich ✓"),
        ("Empty answer?", ""),
        ("Multi\nline question", "x"),
    ];
    let pairs = pairs
        .iter()
        .map(|(p, a)| QaPair {
            prompt: p.to_string(),
            answer: a.to_string(),
            ..Default::default()
        })
        .collect();
    QaConfig::new(pairs, verifier).unwrap()
}

/// An episode's record: the transcript (prompt + actions + observations), the total reward and
/// the final outcome.
struct Episode {
    transcript: String,
    reward: f32,
    outcome: Outcome,
}

/// Runs `env` to the end with the expert. With `mistakes = Some(seed)`, takes the expert's
/// mistake whenever one is offered (at most `max_mistakes` times).
fn run(env: &mut AnyEnv, mistakes: Option<u64>, max_mistakes: usize) -> Episode {
    let mut transcript = String::new();
    let mut reward = 0.0;
    let mut outcome = Outcome::Continue;
    let mut made = 0;
    for turn in 0..env.max_turns() {
        let mistake = match mistakes {
            Some(seed) if made < max_mistakes => env.mistake_action(seed ^ turn as u64),
            _ => None,
        };
        let action = match mistake {
            Some(a) => {
                made += 1;
                a
            }
            None => env.expert_action(),
        };
        let step = env.step(&action);
        check_observation(&step.observation);
        transcript.push_str(&action);
        transcript.push_str(&step.observation);
        reward += step.reward;
        outcome = step.outcome;
        if step.done {
            break;
        }
    }
    Episode {
        transcript,
        reward,
        outcome,
    }
}

fn check_observation(obs: &str) {
    assert!(obs.starts_with('\n') && obs.ends_with('\n'), "{obs:?}");
    assert!(obs.len() <= 200, "{obs:?}");
}

const TASKS: u64 = 1000;

#[test]
fn expert_solves_every_task() {
    for spec in specs() {
        for id in 0..TASKS {
            let mut env = spec.make(id);
            assert!(env.prompt().ends_with('\n'));
            let ep = run(&mut env, None, 0);
            assert_eq!(
                (ep.reward, ep.outcome),
                (1.0, Outcome::Solved),
                "{spec:?} task {id}:\n{}{}",
                env.prompt(),
                ep.transcript
            );
            // A done env answers Finished and stays as it was.
            let before = format!("{env:?}");
            let s = env.step(&env.expert_action());
            assert_eq!(
                (s.done, s.reward, s.outcome),
                (true, 0.0, Outcome::Finished)
            );
            assert_eq!(format!("{env:?}"), before);
        }
    }
}

#[test]
fn expert_recovers_from_mistakes() {
    for spec in specs() {
        let recoverable = matches!(spec, EnvSpec::Multihop(_) | EnvSpec::Maze(_));
        let mut offered = 0;
        for id in 0..TASKS {
            let env = spec.make(id);
            if !recoverable {
                assert_eq!(env.mistake_action(id), None);
                continue;
            }
            // A mistake at the first turn is on offer under the auto turn limit, except in a maze
            // whose start has every move on a shortest path (rare; see the maze unit tests).
            let Some(first) = env.mistake_action(id) else {
                assert!(matches!(spec, EnvSpec::Maze(_)), "{spec:?} {id}");
                continue;
            };
            offered += 1;
            assert_ne!(first, env.expert_action());
            let mut one = env.clone();
            let ep = run(&mut one, Some(id), 1);
            assert_eq!(
                ep.outcome,
                Outcome::Solved,
                "{spec:?} {id}: {}",
                ep.transcript
            );
            // Taking every mistake offered (they are only offered while recoverable) still solves.
            let mut many = env.clone();
            let ep = run(&mut many, Some(id.wrapping_mul(7)), usize::MAX);
            assert_eq!(
                ep.outcome,
                Outcome::Solved,
                "{spec:?} {id}: {}",
                ep.transcript
            );
            assert_eq!(ep.reward, 1.0);
        }
        if recoverable {
            assert!(offered >= 990, "{spec:?}: {offered}");
        }
    }
}

/// 200 seeded random byte strings (lengths 0..200) decoded lossily, plus a few adversarial ones.
fn garbage() -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(0x6a75_6e6b);
    let mut out: Vec<String> = (0..200)
        .map(|_| {
            let len = rng.random_range(0..200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect();
    out.extend([
        String::new(),
        "]".repeat(100_000),
        format!("answer[{}]", "(".repeat(100_000)),
        format!("answer[{}1{}]", "(".repeat(50), ")".repeat(50)),
        format!("search[{}]", "é".repeat(50_000)),
        format!("move[{}]", "\u{0}".repeat(1000)),
        "answer[99999999999999999999*99999999999999999]".to_string(),
        "answer[1/0]".to_string(),
        "search[]".to_string(),
        "move[]".to_string(),
        "answer[\u{1F600}]".to_string(),
        "ANSWER[1]".to_string(),
        "answer[1] trailing".to_string(),
    ]);
    out
}

#[test]
fn arbitrary_text_never_breaks_an_env() {
    let garbage = garbage();
    for spec in specs() {
        for id in 0..3 {
            let fresh = spec.make(id);
            // From the start and from mid-episode (after one expert step, if not already done).
            let mut mid = fresh.clone();
            let first = mid.step(&mid.expert_action());
            let starts: Vec<AnyEnv> = if first.done {
                vec![fresh]
            } else {
                vec![fresh, mid]
            };
            for start in &starts {
                for g in &garbage {
                    let mut env = start.clone();
                    let s = env.step(g);
                    check_observation(&s.observation);
                    if s.done {
                        assert_ne!(s.outcome, Outcome::Finished);
                        let again = env.step(g);
                        assert_eq!(again.outcome, Outcome::Finished);
                        assert!(again.done && again.reward == 0.0);
                    } else {
                        assert!(matches!(s.outcome, Outcome::Continue | Outcome::Malformed));
                        let ep = run(&mut env, None, 0);
                        assert_eq!(ep.outcome, Outcome::Solved, "{spec:?} after {g:?}");
                    }
                    // Random text never wins.
                    assert_eq!(s.reward, 0.0, "{spec:?} {g:?}");
                    // A fresh clone of the start state is untouched and still solvable.
                    let mut clone = start.clone();
                    assert_eq!(format!("{clone:?}"), format!("{start:?}"));
                    assert_eq!(run(&mut clone, None, 0).outcome, Outcome::Solved);
                }
            }
        }
    }
}

#[test]
fn a_sequence_of_garbage_runs_out_of_turns() {
    for spec in specs() {
        let mut env = spec.make(11);
        let mut last = None;
        for _ in 0..env.max_turns() {
            let s = env.step("not an action");
            assert_eq!(s.reward, 0.0);
            last = Some(s);
        }
        let last = last.unwrap();
        assert!(last.done);
        assert_eq!(last.outcome, Outcome::Malformed);
        assert_eq!(env.step("x").outcome, Outcome::Finished);
    }
}

#[test]
fn clones_are_independent() {
    for spec in specs() {
        for id in 0..20 {
            let mut original = spec.make(id);
            if spec.make(id).max_turns() > 1 {
                original.step(&original.expert_action());
            }
            let prompt = original.prompt().to_string();
            let snapshot = format!("{original:?}");
            let reference = original.clone();
            let mut branch = original.clone();
            branch.step("garbage");
            if let Some(m) = branch.mistake_action(3) {
                branch.step(&m);
            }
            run(&mut branch, None, 0);
            branch.step("answer[nothing]");
            assert_eq!(original.prompt(), prompt);
            assert_eq!(format!("{original:?}"), snapshot);
            let mut reference = reference;
            let a = run(&mut original, None, 0);
            let b = run(&mut reference, None, 0);
            assert_eq!(a.transcript, b.transcript);
            assert_eq!(a.outcome, b.outcome);
        }
    }
}

#[test]
fn tasks_are_deterministic_and_distinct() {
    for spec in specs() {
        let rebuilt = spec.clone();
        let mut prompts = BTreeSet::new();
        let mut transcripts = BTreeSet::new();
        for id in 0..100 {
            let (mut a, mut b) = (spec.make(id), rebuilt.make(id));
            assert_eq!(a.prompt(), b.prompt());
            let (ta, tb) = (run(&mut a, None, 0), run(&mut b, None, 0));
            assert_eq!(ta.transcript, tb.transcript);
            prompts.insert(a.prompt().to_string());
            transcripts.insert(format!("{}{}", a.prompt(), ta.transcript));
        }
        let expected = match &spec {
            EnvSpec::QaFile(c) => c.len(),
            // An open 6x6 grid has few layouts: only start and goal vary.
            EnvSpec::Maze(c) if c.walls == 0.0 => 80,
            _ => 90,
        };
        assert!(
            prompts.len() >= expected,
            "{spec:?}: {} distinct",
            prompts.len()
        );
        assert!(transcripts.len() >= expected);
    }
    // Different knobs give different tasks for the same id.
    let a = EnvSpec::from_name("multihop", &[("hops", "2")])
        .unwrap()
        .make(0);
    let b = EnvSpec::from_name("multihop", &[("hops", "3")])
        .unwrap()
        .make(0);
    assert_ne!(a.prompt(), b.prompt());
}

#[test]
fn from_name_rejects_unknown_envs() {
    let err = EnvSpec::from_name("chess", &[]).unwrap_err();
    assert!(matches!(err, EnvError::UnknownEnv { ref name, .. } if name == "chess"));
    assert!(err.to_string().contains("multihop"));
    assert_eq!(EnvSpec::knobs_of("chess"), None);
}

#[test]
fn from_name_rejects_unknown_knobs() {
    for env in ["multihop", "countdown", "maze"] {
        let err = EnvSpec::from_name(env, &[("speed", "1")]).unwrap_err();
        assert!(
            matches!(err, EnvError::UnknownKnob { ref knob, .. } if knob == "speed"),
            "{err}"
        );
    }
}

#[test]
fn from_name_rejects_bad_knob_values() {
    let bad = [
        ("multihop", "hops", "0"),
        ("multihop", "hops", "6"),
        ("multihop", "hops", "two"),
        ("multihop", "distractors", "5"),
        ("multihop", "max_turns", "-1"),
        ("countdown", "numbers", "1"),
        ("countdown", "numbers", "7"),
        ("countdown", "max_number", "1"),
        ("countdown", "max_number", "1e3"),
        ("maze", "size", "2"),
        ("maze", "size", "13"),
        ("maze", "walls", "0.5"),
        ("maze", "walls", "NaN"),
        ("maze", "walls", "-0.1"),
        ("maze", "max_turns", "x"),
    ];
    for (env, knob, value) in bad {
        let err = EnvSpec::from_name(env, &[(knob, value)]).unwrap_err();
        assert!(
            matches!(err, EnvError::BadKnob { knob: ref k, value: ref v, .. } if k == knob && v == value),
            "{env} {knob}={value}: {err:?}"
        );
    }
    let mut qa = QaConfig::default();
    assert!(qa.set_knob("verifier", "fuzzy").is_err());
    assert!(qa.set_knob("verifier", "numeric").is_ok());
    assert_eq!(qa.knob_values(), vec![("verifier", "numeric".to_string())]);
    assert_eq!(
        EnvSpec::from_name("qa-file", &[]).unwrap_err(),
        EnvError::NeedsTaskFile
    );
}

#[test]
fn knob_defaults_are_documented_and_round_trip() {
    for name in ["multihop", "countdown", "maze"] {
        let spec = EnvSpec::from_name(name, &[]).unwrap();
        let infos = EnvSpec::knobs_of(name).unwrap();
        let values = spec.knob_values();
        assert_eq!(infos.len(), values.len());
        for (info, (k, v)) in infos.iter().zip(&values) {
            assert_eq!(info.name, *k);
            assert_eq!(info.default, v, "{name} {k}");
            assert!(!info.doc.is_empty());
        }
    }
    let spec = EnvSpec::from_name("maze", &[("size", "7"), ("walls", "0.1")]).unwrap();
    let values = spec.knob_values();
    let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(EnvSpec::from_name("maze", &pairs).unwrap(), spec);
    assert_eq!(EnvSpec::knobs_of("qa-file").unwrap()[0].default, "exact");
}

#[test]
fn qa_ids_wrap_and_count() {
    let spec = EnvSpec::QaFile(qa_set(Verifier::Exact));
    assert_eq!(spec.task_count(), Some(8));
    assert_eq!(spec.make(3).prompt(), spec.make(11).prompt());
    assert_eq!(EnvSpec::from_name("maze", &[]).unwrap().task_count(), None);
}

/// Prints one prompt and expert transcript per environment (`cargo test -- --nocapture`).
#[test]
fn print_examples() {
    let examples = [
        EnvSpec::from_name("multihop", &[]).unwrap(),
        EnvSpec::from_name("countdown", &[]).unwrap(),
        EnvSpec::from_name("maze", &[]).unwrap(),
        EnvSpec::QaFile(qa_set(Verifier::Numeric)),
    ];
    for spec in examples {
        let mut env = spec.make(7);
        let prompt = env.prompt().to_string();
        let ep = run(&mut env, None, 0);
        println!("=== {} (task 7)\n{prompt}{}", spec.name(), ep.transcript);
        let mut env = spec.make(7);
        if env.mistake_action(1).is_some() {
            let ep = run(&mut env, Some(1), 1);
            println!(
                "=== {} (task 7, one mistake)\n{prompt}{}",
                spec.name(),
                ep.transcript
            );
        }
    }
}
