//! The trainer scores exactly what the engine sampled: on freshly sampled trees, the burn
//! policy's logprob of every action token equals the behaviour logprob the engine recorded, for
//! tree-packed and flattened rows alike. Before any update the PPO ratio is therefore 1. At a
//! sampling temperature T ≠ 1 (with top-p truncation too) both sides score the tempered
//! distribution `softmax(logits / T)`, so the ratio stays 1.

use burn::tensor::Device;
use envs::{AnyEnv, EnvSpec};
use rollout::advantage::{Estimator, estimate};
use rollout::engine::{Engine, ModelConfig, Weights};
use rollout::policy::SamplingParams;
use rollout::sampler::{Granularity, SamplerConfig, SamplerKind, sample};
use rollout::tokenizer::ByteTokenizer;
use rollout::tree::TaskRollout;
use trainer::loss::target_logprobs;
use trainer::model::PolicyModel;
use trainer::pack::{LossAgg, Packing, minibatches};

#[test]
fn burn_logprobs_of_sampled_tokens_equal_the_behaviour_logprobs() {
    let cfg = ModelConfig {
        n_layers: 2,
        ..ModelConfig::tiny()
    };
    let weights = Weights::random(&cfg, 11);
    let spec = EnvSpec::from_name("multihop", &[("hops", "2")]).unwrap();
    let tasks: Vec<(u64, AnyEnv)> = (0..3).map(|i| (i, spec.make(i))).collect();
    let device = Device::flex();
    let model = PolicyModel::from_weights(&cfg, &weights, &device).unwrap();
    let tempered = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 0,
    };
    for (kind, granularity, sampling) in [
        (
            SamplerKind::Tree,
            Granularity::Step,
            SamplingParams::default(),
        ),
        (
            SamplerKind::Tree,
            Granularity::Token,
            SamplingParams::default(),
        ),
        (
            SamplerKind::Chain,
            Granularity::Step,
            SamplingParams::default(),
        ),
        (SamplerKind::Tree, Granularity::Step, tempered),
    ] {
        let scfg = SamplerConfig {
            kind,
            granularity,
            budget: 200,
            max_action_tokens: 24,
            sampling,
            ..SamplerConfig::default()
        };
        let temperature = sampling.scoring_temperature();
        let mut engine = Engine::new(cfg.clone(), &weights).unwrap();
        let mut sink: Vec<TaskRollout> = Vec::new();
        sample(&scfg, &mut engine, &ByteTokenizer, &tasks, 5, 0, &mut sink).unwrap();
        let adv = estimate(Estimator::Grpo, &sink).unwrap();
        let groups: Vec<_> = sink.iter().zip(adv.iter()).collect();
        for packing in [Packing::Tree, Packing::Flat] {
            let batches = minibatches(&groups, 8, LossAgg::TokenMean, packing).unwrap();
            assert!(!batches.is_empty());
            let mut n = 0;
            let mut max_diff = 0f32;
            for b in &batches {
                let db = b.to_device(&device).unwrap();
                let (logp, _) = target_logprobs(&model, &db, temperature);
                let new: Vec<f32> = logp.into_data().try_into_vec().unwrap();
                let old: Vec<f32> = b
                    .sequences
                    .iter()
                    .flat_map(|s| s.targets.iter().map(|t| t.old_logprob))
                    .collect();
                assert_eq!(new.len(), old.len());
                for (a, b) in new.iter().zip(&old) {
                    max_diff = max_diff.max((a - b).abs());
                }
                n += old.len();
            }
            assert!(n > 100, "{kind:?} {granularity:?}: only {n} targets");
            assert!(
                max_diff <= 1e-4,
                "{kind:?} {granularity:?} {packing:?} T={temperature}: behaviour vs burn logprob max diff {max_diff} over {n} targets"
            );
        }
    }
}
