//! Sampler configuration and its validation.

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::policy::SamplingParams;

/// Which sampler grows the trajectories (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SamplerKind {
    /// Independent trajectories from the prompt until the budget is spent (the GRPO baseline).
    /// Each trajectory is a tree of its own.
    Chain,
    /// Tree-GRPO style: `initial_chains` chains (one tree each), then rounds that pick
    /// `branches_per_round` fork points per tree with the branching policy.
    Tree,
}

/// Where a tree may fork (DESIGN §5 node granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Granularity {
    /// At agent-turn boundaries only (after an observation) and at the prompt (Tree-GRPO).
    Step,
    /// Also every `segment_len` action tokens inside a turn (TreePO).
    Segment,
    /// At any action token (TreeRL).
    Token,
}

/// How fork points are chosen each round (DESIGN §5). New policies are one match arm in
/// `branching.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BranchPolicy {
    /// Uniform over the fork points the granularity allows, the prompt included (Tree-GRPO).
    Random,
    /// The positions whose sampled token had the highest entropy, not forked before (TreeRL
    /// EPTree). Forks at token positions whatever the granularity.
    Entropy,
    /// Segment boundaries (every `segment_len` action tokens) followed by the least confident
    /// segment, i.e. the lowest mean logprob (a TreePO-style heuristic). Uses segment boundaries
    /// whatever the granularity.
    Segment,
    /// After a tool observation where the entropy of the next action's first tokens rises above
    /// that of the previous action (ARPO-like); remaining slots are filled at random.
    Adaptive,
}

macro_rules! names {
    ($ty:ty, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            /// The name used in configs and on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(<$ty>::$variant),)+
                    _ => Err(format!(
                        "unknown value '{s}' (expected one of: {})",
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
    };
}

names!(SamplerKind, Chain => "chain", Tree => "tree");
names!(Granularity, Step => "step", Segment => "segment", Token => "token");
names!(BranchPolicy, Random => "random", Entropy => "entropy", Segment => "segment", Adaptive => "adaptive");

/// Everything a sampler needs besides the policy, the tasks and the seed.
///
/// Build it with struct-update syntax from [`SamplerConfig::default`] and check it with
/// [`SamplerConfig::validate`] (samplers call it too).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Chain or tree. Default: tree.
    pub kind: SamplerKind,
    /// Hard cap on policy-generated tokens per task group, shared prefixes counted once
    /// (DESIGN §4). Default: 1024.
    pub budget: u32,
    /// Longest action in tokens; an action that reaches it without `<eos>` ends there.
    /// Default: 48.
    pub max_action_tokens: usize,
    /// Temperature / top-k / top-p. Default: temperature 1, no truncation.
    pub sampling: SamplingParams,
    /// Chains started first: the M trees of the tree sampler, and the chains the chain sampler
    /// starts before it has a cost estimate. Default: 2.
    pub initial_chains: usize,
    /// Tree sampler: share of the budget spent on independent chains from the prompt (each a
    /// tree of its own) before branching starts; they are scheduled like the chain sampler, so
    /// the number of trees grows with the budget instead of staying at `initial_chains`. The
    /// rest of the budget goes to forks. 0 keeps exactly `initial_chains` trees. Default: 0.5
    /// (see "Choosing the defaults" in [`crate::sampler`]).
    pub root_share: f32,
    /// Fork points chosen per tree and round (N). Default: 2.
    pub branches_per_round: usize,
    /// Most expansion rounds (L); `0` means "until the budget is spent". Default: 0.
    pub max_rounds: usize,
    /// Where trees may fork. Default: step.
    pub granularity: Granularity,
    /// Segment length in action tokens for `segment` granularity and policy. Default: 16.
    pub segment_len: usize,
    /// How fork points are chosen. Default: entropy (see "Choosing the defaults" in
    /// [`crate::sampler`]).
    pub branch: BranchPolicy,
    /// Most trajectories per task group (`0`: no limit, the budget decides). Evaluation uses
    /// `1` with the chain sampler: one episode per task. Default: 0.
    pub max_trajectories: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            kind: SamplerKind::Tree,
            budget: 1024,
            max_action_tokens: 48,
            sampling: SamplingParams::default(),
            initial_chains: 2,
            root_share: 0.5,
            branches_per_round: 2,
            max_rounds: 0,
            granularity: Granularity::Step,
            segment_len: 16,
            branch: BranchPolicy::Entropy,
            max_trajectories: 0,
        }
    }
}

/// Largest per-task token budget (and token length setting) a config may ask for: 2^24.
pub const MAX_BUDGET: usize = 1 << 24;
/// Largest count of chains, fork points or trajectories per task a config may ask for: 2^16.
pub const MAX_COUNT: usize = 1 << 16;

impl SamplerConfig {
    /// Checks every field; the first problem is returned.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |field, reason: &str| {
            Err(Error::SamplerConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.budget == 0 {
            return fail("budget", "must be at least 1 token");
        }
        // Limits far above any use, below what would exhaust memory or run for days: every
        // count below sizes allocations (trajectories, chains, fork points) of its own.
        let limits = [
            ("budget", self.budget as usize, MAX_BUDGET),
            ("max_action_tokens", self.max_action_tokens, MAX_BUDGET),
            ("initial_chains", self.initial_chains, MAX_COUNT),
            ("branches_per_round", self.branches_per_round, MAX_COUNT),
            ("max_trajectories", self.max_trajectories, MAX_COUNT),
            ("segment_len", self.segment_len, MAX_BUDGET),
        ];
        for (field, value, max) in limits {
            if value > max {
                return Err(Error::SamplerConfig {
                    field,
                    reason: format!("is {value}, above the supported {max}"),
                });
            }
        }
        if self.max_action_tokens == 0 {
            return fail("max_action_tokens", "must be at least 1");
        }
        if self.initial_chains == 0 {
            return fail("initial_chains", "must be at least 1");
        }
        if self.kind == SamplerKind::Tree && self.branches_per_round == 0 {
            return fail(
                "branches_per_round",
                "must be at least 1 for the tree sampler",
            );
        }
        if !(0.0..=1.0).contains(&self.root_share) {
            return fail("root_share", "must be in [0, 1]");
        }
        if self.segment_len == 0 {
            return fail("segment_len", "must be at least 1");
        }
        let s = &self.sampling;
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return fail("sampling.temperature", "must be a finite number >= 0");
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return fail("sampling.top_p", "must be in (0, 1]");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in [SamplerKind::Chain, SamplerKind::Tree] {
            assert_eq!(k.as_str().parse::<SamplerKind>().unwrap(), k);
        }
        for g in [Granularity::Step, Granularity::Segment, Granularity::Token] {
            assert_eq!(g.to_string().parse::<Granularity>().unwrap(), g);
        }
        for b in [
            BranchPolicy::Random,
            BranchPolicy::Entropy,
            BranchPolicy::Segment,
            BranchPolicy::Adaptive,
        ] {
            assert_eq!(b.as_str().parse::<BranchPolicy>().unwrap(), b);
        }
        assert!(
            "forest"
                .parse::<SamplerKind>()
                .unwrap_err()
                .contains("chain, tree")
        );
    }

    #[test]
    fn validation_names_the_field() {
        assert!(SamplerConfig::default().validate().is_ok());
        let bad = SamplerConfig {
            budget: 0,
            ..Default::default()
        };
        let field = |e: Error| match e {
            Error::SamplerConfig { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(bad.validate().unwrap_err()), "budget");
        let bad = SamplerConfig {
            sampling: SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(field(bad.validate().unwrap_err()), "sampling.top_p");
    }
}
