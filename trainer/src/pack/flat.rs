//! Flattened sequences: one per leaf, the reference the packed batch must match.

use super::*;

/// Flattened sequences: one per leaf trajectory with at least one action token, in group then
/// leaf-id order (module docs). `groups` is one mini-batch.
pub fn flatten_trees(
    groups: &[(&TaskRollout, &AdvantageOutput)],
    agg: LossAgg,
) -> Result<Vec<PackedSequence>, TrainerError> {
    let c = checked_leaf_weights(groups, agg)?;
    let mut out = Vec::new();
    for ((rollout, adv), c) in groups.iter().zip(&c) {
        for leaf in rollout.nodes.iter().filter(|n| n.is_leaf()) {
            let cl = c[leaf.id as usize];
            if cl == 0.0 {
                continue;
            }
            let mut tokens = rollout.prompt_tokens.clone();
            let mut targets = Vec::new();
            for s in rollout.path(leaf.id) {
                let node = rollout.node(s);
                if node.is_action() {
                    let a = adv.token_advantage(s, leaf.id) as f64;
                    for (k, &token) in node.tokens.iter().enumerate() {
                        targets.push(Target {
                            source: (tokens.len() + k - 1) as u32,
                            token,
                            old_logprob: node.logprobs[k],
                            pos_weight: (cl * a.max(0.0)) as f32,
                            neg_weight: (cl * a.min(0.0)) as f32,
                            weight: cl as f32,
                        });
                    }
                }
                tokens.extend_from_slice(&node.tokens);
            }
            out.push(PackedSequence::causal(tokens, targets));
        }
    }
    Ok(out)
}
