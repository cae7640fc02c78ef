//! Sampler tests against the scripted policy (fast, model-free) on real environments.

use envs::rng::rng_for;
use envs::{AnyEnv, Env, EnvSpec};
use rand::RngExt;

use super::*;
use crate::Error;
use crate::policy::SamplingParams;
use crate::scripted::ScriptedPolicy;
use crate::tokenizer::ByteTokenizer;
use crate::tree::TaskRollout;

const MAZE_PHRASES: [&str; 4] = ["move[up]", "move[down]", "move[left]", "move[right]"];

fn maze_tasks(n: u64, size: &str) -> Vec<(u64, AnyEnv)> {
    let spec = EnvSpec::from_name("maze", &[("size", size)]).unwrap();
    (0..n).map(|i| (i, spec.make(i))).collect()
}

fn run(
    cfg: &SamplerConfig,
    policy: &mut ScriptedPolicy,
    tasks: &[(u64, AnyEnv)],
    seed: u64,
) -> (SamplerStats, Vec<TaskRollout>) {
    let mut sink: Vec<TaskRollout> = Vec::new();
    let stats = sample(cfg, policy, &ByteTokenizer, tasks, seed, 3, &mut sink).unwrap();
    (stats, sink)
}

/// Splits a leaf's path into turns and replays them in a fresh copy of the task: observations
/// must match the observation nodes and the final reward the leaf's reward.
fn replay(rollout: &TaskRollout, leaf: NodeId, mut env: AnyEnv) {
    let path = rollout.path(leaf);
    let mut action = String::new();
    let mut reward = 0.0;
    let mut last_done = false;
    for (i, &id) in path.iter().enumerate() {
        let node = rollout.node(id);
        match node.kind {
            NodeKind::Action => action.push_str(&node.text),
            NodeKind::Observation => {
                let step = env.step(&action);
                assert_eq!(step.observation, node.text, "observation replays");
                assert!(!step.done);
                reward += step.reward;
                action.clear();
            }
        }
        if i + 1 == path.len() {
            let info = node.leaf.as_ref().unwrap();
            if !info.truncated {
                let step = env.step(&action);
                reward += step.reward;
                last_done = step.done;
                assert_eq!(reward, info.reward, "leaf {leaf} reward replays");
                assert_eq!(info.success, step.outcome.is_success());
            }
        }
    }
    let info = rollout.node(leaf).leaf.as_ref().unwrap();
    assert!(
        info.truncated || last_done,
        "a finished leaf ended its episode"
    );
}

#[test]
fn budget_is_a_hard_cap_and_accounting_matches_a_recount() {
    // 10,000 random (config, seed, budget) cases on three environments.
    let specs = [
        EnvSpec::from_name("maze", &[("size", "3")]).unwrap(),
        EnvSpec::from_name("multihop", &[("hops", "1")]).unwrap(),
        EnvSpec::from_name("countdown", &[]).unwrap(),
    ];
    let kinds = [SamplerKind::Chain, SamplerKind::Tree];
    let grans = [Granularity::Step, Granularity::Segment, Granularity::Token];
    let branches = [
        BranchPolicy::Random,
        BranchPolicy::Entropy,
        BranchPolicy::Segment,
        BranchPolicy::Adaptive,
    ];
    for case in 0..10_000u64 {
        let mut rng = rng_for(&[0xCA5E, case]);
        let spec = &specs[rng.random_range(0..specs.len())];
        let cfg = SamplerConfig {
            kind: kinds[rng.random_range(0..2)],
            budget: rng.random_range(1..400),
            max_action_tokens: rng.random_range(1..24),
            initial_chains: rng.random_range(1..4),
            root_share: [0.0, 0.5, 1.0][rng.random_range(0..3)],
            branches_per_round: rng.random_range(1..4),
            max_rounds: rng.random_range(0..4),
            granularity: grans[rng.random_range(0..3)],
            segment_len: rng.random_range(1..8),
            branch: branches[rng.random_range(0..4)],
            sampling: SamplingParams::default(),
            max_trajectories: rng.random_range(0..6),
        };
        let max_len = rng.random_range(140..400);
        let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, rng.random_range(0.0..0.5), max_len);
        let tasks: Vec<(u64, AnyEnv)> = (0..rng.random_range(1..3u64))
            .map(|i| (case * 7 + i, spec.make(case * 7 + i)))
            .collect();
        let mut sink: Vec<TaskRollout> = Vec::new();
        let stats = sample(
            &cfg,
            &mut policy,
            &ByteTokenizer,
            &tasks,
            case,
            0,
            &mut sink,
        )
        .unwrap_or_else(|e| panic!("case {case}: {e}"));
        let mut recount = 0;
        for r in &sink {
            r.validate().unwrap();
            let unique = r.action_tokens_unique();
            assert!(
                unique <= cfg.budget as usize,
                "case {case}: {unique} > {}",
                cfg.budget
            );
            recount += unique as u64;
            if cfg.max_trajectories > 0 {
                assert!(
                    r.num_leaves() <= cfg.max_trajectories,
                    "case {case}: trajectory cap"
                );
            }
            for leaf in r.leaves() {
                assert!(r.path_tokens(leaf).len() + r.prompt_tokens.len() <= max_len);
            }
        }
        assert_eq!(stats.generated_tokens, recount, "case {case}: accounting");
        assert_eq!(policy.live(), 0, "case {case}: every sequence released");
    }
}

#[test]
fn leaves_replay_and_nodes_continue_their_parents_context() {
    for (granularity, branch) in [
        (Granularity::Step, BranchPolicy::Random),
        (Granularity::Token, BranchPolicy::Random),
        (Granularity::Segment, BranchPolicy::Segment),
        (Granularity::Step, BranchPolicy::Entropy),
        (Granularity::Step, BranchPolicy::Adaptive),
    ] {
        let cfg = SamplerConfig {
            budget: 600,
            granularity,
            branch,
            segment_len: 4,
            ..Default::default()
        };
        let tasks = maze_tasks(6, "3");
        let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.05, 1024);
        let (stats, rollouts) = run(&cfg, &mut policy, &tasks, 11);
        assert!(
            stats.successes > 0,
            "{granularity} {branch}: some random walk solves a maze"
        );
        assert!(
            stats.trajectories > 6 * 2,
            "{granularity} {branch}: branches were added"
        );
        for (r, (_, env)) in rollouts.iter().zip(&tasks) {
            r.validate().unwrap();
            for leaf in r.leaves() {
                replay(r, leaf, env.clone());
                // The leaf's context is exactly what the policy had in one of its sequences.
                let mut context = r.prompt_tokens.clone();
                context.extend(r.path_tokens(leaf));
                assert!(
                    policy
                        .released()
                        .iter()
                        .any(|s| s.len() >= context.len() && s[..context.len()] == context[..]),
                    "leaf {leaf} of task {} was never a policy context",
                    r.task_id
                );
            }
        }
    }
}

#[test]
fn token_granularity_forks_inside_actions() {
    let cfg = SamplerConfig {
        budget: 400,
        granularity: Granularity::Token,
        ..Default::default()
    };
    let tasks = maze_tasks(4, "4");
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.05, 1024);
    let (_, rollouts) = run(&cfg, &mut policy, &tasks, 5);
    // Some action node has an action child: a fork inside a turn.
    let inside = rollouts.iter().any(|r| {
        r.nodes.iter().any(|n| {
            n.kind == NodeKind::Action
                && n.children
                    .iter()
                    .any(|&c| r.node(c).kind == NodeKind::Action)
        })
    });
    assert!(inside);
}

#[test]
fn tree_buys_more_trajectories_than_chain_at_equal_budget() {
    let tasks = maze_tasks(8, "4");
    let mut totals = Vec::new();
    for kind in [SamplerKind::Chain, SamplerKind::Tree] {
        let cfg = SamplerConfig {
            kind,
            budget: 512,
            ..Default::default()
        };
        let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.05, 1024);
        let (stats, _) = run(&cfg, &mut policy, &tasks, 1);
        assert!(stats.generated_tokens <= 8 * 512);
        totals.push(stats);
    }
    let (chain, tree) = (&totals[0], &totals[1]);
    assert!(
        tree.trajectories as f64 >= 1.3 * chain.trajectories as f64,
        "tree {} vs chain {}",
        tree.trajectories,
        chain.trajectories
    );
    assert!(tree.cache_read_share() > chain.cache_read_share());
}

/// With `root_share`, the tree sampler starts trees like the chain sampler until that share of
/// the budget is committed, then branches: more trees than `initial_chains`, more
/// trajectories than the chain sampler, and the hard cap holds.
#[test]
fn root_share_grows_the_number_of_trees_with_the_budget() {
    let tasks = maze_tasks(8, "4");
    let trees = |root_share: f32, budget: u32| {
        let cfg = SamplerConfig {
            kind: SamplerKind::Tree,
            budget,
            root_share,
            ..Default::default()
        };
        let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.05, 1024);
        let (stats, sink) = run(&cfg, &mut policy, &tasks, 1);
        assert!(stats.generated_tokens <= 8 * u64::from(budget));
        let trees: u32 = sink.iter().map(|r| r.num_trees).sum();
        (trees, stats.trajectories)
    };
    let (fixed, _) = trees(0.0, 1024);
    assert_eq!(fixed, 8 * 2, "root_share 0: initial_chains trees per task");
    let (half_small, _) = trees(0.5, 256);
    let (half, half_leaves) = trees(0.5, 1024);
    assert!(
        half > fixed && half > half_small,
        "{half} vs {fixed} / {half_small}"
    );
    let chain = {
        let cfg = SamplerConfig {
            kind: SamplerKind::Chain,
            budget: 1024,
            ..Default::default()
        };
        let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.05, 1024);
        run(&cfg, &mut policy, &tasks, 1).0.trajectories
    };
    assert!(half_leaves > chain, "{half_leaves} vs chain {chain}");
}

#[test]
fn same_seed_same_trees_with_one_or_two_threads() {
    let tasks = maze_tasks(5, "4");
    let cfg = SamplerConfig {
        budget: 300,
        granularity: Granularity::Token,
        ..Default::default()
    };
    let sample_with = |threads: usize, seed: u64| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.1, 1024);
            run(&cfg, &mut policy, &tasks, seed).1
        })
    };
    let one = sample_with(1, 9);
    assert_eq!(one, sample_with(2, 9));
    assert_ne!(one, sample_with(1, 10));
    // A task's tree does not depend on which other tasks share the batch.
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.1, 1024);
    let alone = run(&cfg, &mut policy, &tasks[2..3], 9).1;
    assert_eq!(alone[0], one[2]);
}

#[test]
fn tiny_budget_and_small_context_truncate_but_never_drop_trajectories() {
    let tasks = maze_tasks(3, "5");
    let cfg = SamplerConfig {
        kind: SamplerKind::Chain,
        budget: 5,
        initial_chains: 2,
        ..Default::default()
    };
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.0, 1024);
    let (stats, rollouts) = run(&cfg, &mut policy, &tasks, 0);
    assert_eq!(stats.generated_tokens, 15);
    assert_eq!(stats.truncated, stats.trajectories);
    for r in &rollouts {
        assert!(
            r.leaves()
                .iter()
                .all(|&l| r.node(l).leaf.as_ref().unwrap().truncated)
        );
    }
    // A context window just above the prompt: every trajectory is cut by the window.
    let prompt_len = 1 + tasks[0].1.prompt().len();
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.0, prompt_len + 12);
    let cfg = SamplerConfig::default();
    let mut sink: Vec<TaskRollout> = Vec::new();
    let stats = sample(
        &cfg,
        &mut policy,
        &ByteTokenizer,
        &tasks[..1],
        0,
        0,
        &mut sink,
    )
    .unwrap();
    assert!(stats.truncated > 0);
    sink[0].validate().unwrap();
}

#[test]
fn bad_config_and_oversized_prompt_are_errors() {
    let tasks = maze_tasks(1, "5");
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.0, 1024);
    let mut sink: Vec<TaskRollout> = Vec::new();
    let cfg = SamplerConfig {
        budget: 0,
        ..Default::default()
    };
    let err = sample(&cfg, &mut policy, &ByteTokenizer, &tasks, 0, 0, &mut sink).unwrap_err();
    assert!(matches!(err, Error::SamplerConfig { .. }));
    let mut small = ScriptedPolicy::new(&MAZE_PHRASES, 0.0, 8);
    let err = sample(
        &SamplerConfig::default(),
        &mut small,
        &ByteTokenizer,
        &tasks,
        0,
        0,
        &mut sink,
    )
    .unwrap_err();
    assert!(matches!(err, Error::PromptTooLong { .. }));
    assert!(sink.is_empty());
}

#[test]
fn max_trajectories_caps_each_group() {
    let tasks = maze_tasks(4, "4");
    for kind in [SamplerKind::Chain, SamplerKind::Tree] {
        let cfg = SamplerConfig {
            kind,
            budget: 4096,
            initial_chains: 1,
            max_trajectories: 1,
            ..Default::default()
        };
        let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, 0.05, 1024);
        let (stats, rollouts) = run(&cfg, &mut policy, &tasks, 2);
        assert_eq!(stats.trajectories, 4, "{kind}");
        assert!(rollouts.iter().all(|r| r.num_leaves() == 1));
    }
}

#[test]
fn node_texts_add_up_to_what_the_env_received_even_mid_character() {
    // A random-weight engine samples arbitrary bytes, so branches forked inside an action often
    // begin with a UTF-8 continuation byte: the environment must receive exactly the
    // concatenation of the node texts, so every leaf still replays.
    use crate::engine::{Engine, ModelConfig, Weights};
    let cfg = ModelConfig {
        n_layers: 2,
        ..ModelConfig::tiny()
    };
    let spec = EnvSpec::from_name("multihop", &[("hops", "1")]).unwrap();
    let tasks: Vec<(u64, AnyEnv)> = (0..4).map(|i| (i, spec.make(i))).collect();
    let sc = SamplerConfig {
        budget: 300,
        max_action_tokens: 16,
        granularity: Granularity::Token,
        ..SamplerConfig::default()
    };
    let mut engine = Engine::new(cfg.clone(), &Weights::random(&cfg, 3)).unwrap();
    let mut sink: Vec<TaskRollout> = Vec::new();
    sample(&sc, &mut engine, &ByteTokenizer, &tasks, 3, 0, &mut sink).unwrap();
    let mut mid_char_forks = 0;
    for (r, (_, env)) in sink.iter().zip(&tasks) {
        for n in &r.nodes {
            if n.kind == NodeKind::Action && (0x80..=0xBF).contains(&n.tokens[0]) {
                mid_char_forks += 1;
            }
        }
        for leaf in r.leaves() {
            replay(r, leaf, env.clone());
        }
    }
    assert!(mid_char_forks > 0, "the case under test occurred");
}

#[test]
fn chain_sampler_does_not_start_a_wave_of_chains_it_cannot_finish() {
    // One-turn episodes of two lengths: a short answer (12 tokens) or a long one (48). The
    // first chain to finish is usually a short one; trusting it starts far more chains than the
    // budget can finish, and the whole cohort is cut at the end.
    let spec = EnvSpec::from_name("multihop", &[("hops", "1")]).unwrap();
    let tasks: Vec<(u64, AnyEnv)> = (0..8).map(|i| (i, spec.make(i))).collect();
    let phrases = [
        "answer[Zed]",
        "answer[Zed Zed Zed Zed Zed Zed Zed Zed Zed Ze]",
    ];
    let cfg = SamplerConfig {
        kind: SamplerKind::Chain,
        budget: 1000,
        ..Default::default()
    };
    let (mut trajectories, mut truncated, mut generated) = (0, 0, 0);
    for seed in 0..4 {
        let mut policy = ScriptedPolicy::new(&phrases, 0.0, 4096);
        let (stats, _) = run(&cfg, &mut policy, &tasks, seed);
        trajectories += stats.trajectories;
        truncated += stats.truncated;
        generated += stats.generated_tokens;
    }
    // Few cut chains (trusting the first completions cut about half of them), and nearly all
    // of the budget still spent.
    assert!(
        truncated * 10 <= trajectories,
        "{truncated} of {trajectories} trajectories truncated"
    );
    let budget = 4 * 8 * u64::from(cfg.budget);
    assert!(
        generated as f64 >= 0.9 * budget as f64,
        "{generated} of {budget} tokens used"
    );
}
