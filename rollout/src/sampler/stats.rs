//! What a sampling step reports: its counters.

/// Counters of one sampling step over all its task groups (DESIGN §4, §9 metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerStats {
    /// Task groups sampled.
    pub groups: u64,
    /// Policy-generated tokens (the budget currency), shared prefixes counted once.
    pub generated_tokens: u64,
    /// Prompt and observation tokens pushed through the policy.
    pub prefill_tokens: u64,
    /// Context tokens served from the shared-prefix cache at forks.
    pub cached_tokens: u64,
    /// Tokens the policy computed (prefill + decode + fork recomputation).
    pub computed_tokens: u64,
    /// Leaf trajectories.
    pub trajectories: u64,
    /// Leaf trajectories with distinct token sequences (summed over groups).
    pub distinct_trajectories: u64,
    /// Trajectories cut by the budget or the context window.
    pub truncated: u64,
    /// Trajectories that solved their task.
    pub successes: u64,
    /// Sum of leaf rewards.
    pub reward_sum: f64,
    /// Groups whose finished (not truncated) leaves all have the same reward (no learning signal
    /// for group baselines once truncated leaves are masked).
    pub zero_adv_groups: u64,
    /// Groups with at least one success.
    pub solved_groups: u64,
    /// Sum of squared leaf rewards (with `reward_sum`, the reward spread).
    pub reward_sq_sum: f64,
    /// Action tokens on the paths of all leaf trajectories (the response lengths, summed).
    pub response_tokens: u64,
    /// Action tokens on the longest leaf trajectory's path.
    pub response_tokens_max: u64,
    /// Wall time of the step in milliseconds.
    pub wall_ms: u64,
}

impl SamplerStats {
    /// `cached / (cached + computed)`: the share of context served from the prefix cache.
    pub fn cache_read_share(&self) -> f64 {
        let total = self.cached_tokens + self.computed_tokens;
        if total == 0 {
            0.0
        } else {
            self.cached_tokens as f64 / total as f64
        }
    }

    /// Mean leaf reward.
    pub fn reward_mean(&self) -> f64 {
        if self.trajectories == 0 {
            0.0
        } else {
            self.reward_sum / self.trajectories as f64
        }
    }

    /// Share of trajectories that succeeded.
    pub fn success_rate(&self) -> f64 {
        if self.trajectories == 0 {
            0.0
        } else {
            self.successes as f64 / self.trajectories as f64
        }
    }

    /// Standard deviation of the leaf rewards (population, over all trajectories of the step).
    pub fn reward_std(&self) -> f64 {
        if self.trajectories == 0 {
            return 0.0;
        }
        let n = self.trajectories as f64;
        let mean = self.reward_sum / n;
        (self.reward_sq_sum / n - mean * mean).max(0.0).sqrt()
    }

    /// Share of task groups with at least one successful trajectory (per-task success).
    pub fn task_success_rate(&self) -> f64 {
        if self.groups == 0 {
            0.0
        } else {
            self.solved_groups as f64 / self.groups as f64
        }
    }

    /// Mean action tokens on a trajectory's path (response length).
    pub fn response_len_mean(&self) -> f64 {
        if self.trajectories == 0 {
            0.0
        } else {
            self.response_tokens as f64 / self.trajectories as f64
        }
    }

    /// Distinct trajectories per 1,000 generated tokens.
    pub fn distinct_per_1k(&self) -> f64 {
        if self.generated_tokens == 0 {
            0.0
        } else {
            self.distinct_trajectories as f64 * 1000.0 / self.generated_tokens as f64
        }
    }

    /// Adds another step's counters (wall time added too).
    pub fn merge(&mut self, other: &SamplerStats) {
        self.groups += other.groups;
        self.generated_tokens += other.generated_tokens;
        self.prefill_tokens += other.prefill_tokens;
        self.cached_tokens += other.cached_tokens;
        self.computed_tokens += other.computed_tokens;
        self.trajectories += other.trajectories;
        self.distinct_trajectories += other.distinct_trajectories;
        self.truncated += other.truncated;
        self.successes += other.successes;
        self.reward_sum += other.reward_sum;
        self.zero_adv_groups += other.zero_adv_groups;
        self.solved_groups += other.solved_groups;
        self.reward_sq_sum += other.reward_sq_sum;
        self.response_tokens += other.response_tokens;
        self.response_tokens_max = self.response_tokens_max.max(other.response_tokens_max);
        self.wall_ms += other.wall_ms;
    }
}
