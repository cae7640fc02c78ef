//! [`ScriptedPolicy`]: a cheap, model-free [`Policy`] for testing samplers and pipelines.
//!
//! Its next-token distribution is a pure function of the context, so it forks for free and
//! behaves like a remote backend would (it shares nothing with the engine). The current action
//! is the text after the last `'\n'` of the context (prompts and observations end with one).
//! Given that action prefix it puts `1 - noise` of the mass on continuing one of its `phrases`
//! (spread evenly over the phrases the prefix can still become, or on `<eos>` once the prefix is
//! a whole phrase) and `noise` on lower-case letters and `<eos>`. Logprobs and entropies are
//! exact for that distribution, so estimators and trainers can be fed honest numbers.

use crate::Error;
use crate::policy::{
    Contexts, DecodeRequest, Policy, PolicyStats, Sampled, SamplingParams, SeqHandle,
};
use crate::tokenizer::{ByteTokenizer, Tokenizer};

/// A phrase-emitting policy over the byte tokenizer (see the module docs).
#[derive(Debug, Clone)]
pub struct ScriptedPolicy {
    phrases: Vec<Vec<u32>>,
    noise: f32,
    contexts: Contexts,
    stats: PolicyStats,
    released: Vec<Vec<u32>>,
}

impl ScriptedPolicy {
    /// A policy that writes `phrases` (e.g. `["move[up]", "move[left]"]`) with `noise` of its
    /// mass on random letters, within a context window of `max_len` tokens.
    pub fn new(phrases: &[&str], noise: f32, max_len: usize) -> Self {
        let tok = ByteTokenizer;
        ScriptedPolicy {
            phrases: phrases.iter().map(|p| tok.encode(p)).collect(),
            noise: noise.clamp(0.0, 1.0),
            contexts: Contexts::new(max_len),
            stats: PolicyStats::default(),
            released: Vec::new(),
        }
    }

    /// Token sequences of every released sequence, in release order (for tests that check what
    /// contexts a sampler really built).
    pub fn released(&self) -> &[Vec<u32>] {
        &self.released
    }

    /// Number of live sequences.
    pub fn live(&self) -> usize {
        self.contexts.live()
    }

    /// The next-token distribution after `context`.
    ///
    /// # Shapes
    /// returns `[ByteTokenizer::VOCAB]` probabilities summing to 1.
    pub fn distribution(&self, context: &[u32]) -> Vec<f32> {
        let action_start = context
            .iter()
            .rposition(|&t| t == u32::from(b'\n'))
            .map_or(0, |i| i + 1);
        let action = &context[action_start..];
        let mut probs = vec![0.0f32; ByteTokenizer::VOCAB];
        let mut scripted: Vec<u32> = Vec::new();
        for p in &self.phrases {
            if p.len() >= action.len() && &p[..action.len()] == action {
                scripted.push(p.get(action.len()).copied().unwrap_or(ByteTokenizer::EOS));
            }
        }
        let noise_targets: Vec<u32> = (u32::from(b'a')..=u32::from(b'z'))
            .chain([ByteTokenizer::EOS])
            .collect();
        let noise = if scripted.is_empty() { 1.0 } else { self.noise };
        for &t in &noise_targets {
            probs[t as usize] += noise / noise_targets.len() as f32;
        }
        for &t in &scripted {
            probs[t as usize] += (1.0 - noise) / scripted.len() as f32;
        }
        probs
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), Error> {
        match tokens.iter().find(|&&t| t as usize >= ByteTokenizer::VOCAB) {
            Some(&token) => Err(Error::BadToken {
                token,
                vocab: ByteTokenizer::VOCAB,
            }),
            None => Ok(()),
        }
    }
}

impl Policy for ScriptedPolicy {
    fn max_len(&self) -> usize {
        self.contexts.max_len()
    }

    fn start(&mut self, tokens: &[u32]) -> Result<SeqHandle, Error> {
        self.check_tokens(tokens)?;
        let seq = self.contexts.start(tokens)?;
        self.stats.computed_tokens += tokens.len() as u64;
        Ok(seq)
    }

    fn fork(&mut self, seq: SeqHandle) -> Result<SeqHandle, Error> {
        let forked = self.contexts.fork(seq)?;
        self.stats.cached_tokens += self.contexts.get(seq)?.len() as u64;
        Ok(forked)
    }

    fn fork_at(&mut self, seq: SeqHandle, len: usize) -> Result<SeqHandle, Error> {
        let forked = self.contexts.fork_at(seq, len)?;
        // Like the engine: the prefix but its last token is served from cache.
        self.stats.cached_tokens += len as u64 - 1;
        self.stats.computed_tokens += 1;
        Ok(forked)
    }

    fn append(&mut self, seq: SeqHandle, tokens: &[u32]) -> Result<(), Error> {
        self.check_tokens(tokens)?;
        self.contexts.append(seq, tokens)?;
        self.stats.computed_tokens += tokens.len() as u64;
        Ok(())
    }

    fn decode(
        &mut self,
        requests: &[DecodeRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Sampled>, Error> {
        self.contexts.check_decode(requests)?;
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let probs = self.distribution(self.contexts.get(r.seq)?);
            let token = if params.temperature == 0.0 {
                // Greedy; ties go to the lowest id.
                probs
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |best, (i, &p)| if p > best.1 { (i, p) } else { best },
                    )
                    .0 as u32
            } else {
                let u = envs::rng::uniform(&[r.rng_key]) as f32;
                let mut acc = 0.0;
                let mut pick = ByteTokenizer::EOS;
                for (i, &p) in probs.iter().enumerate() {
                    if p > 0.0 {
                        pick = i as u32;
                        acc += p;
                        if u < acc {
                            break;
                        }
                    }
                }
                pick
            };
            let entropy: f32 = probs
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| -p * p.ln())
                .sum();
            out.push(Sampled {
                token,
                logprob: probs[token as usize].ln(),
                entropy,
            });
            self.contexts.push(r.seq, token)?;
            self.stats.computed_tokens += 1;
        }
        Ok(out)
    }

    fn seq_len(&self, seq: SeqHandle) -> Result<usize, Error> {
        Ok(self.contexts.get(seq)?.len())
    }

    fn release(&mut self, seq: SeqHandle) {
        if let Some(tokens) = self.contexts.release(seq) {
            self.released.push(tokens);
        }
    }

    fn stats(&self) -> PolicyStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = PolicyStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_follows_phrases_and_sums_to_one() {
        let p = ScriptedPolicy::new(&["move[up]", "move[left]"], 0.1, 64);
        let tok = ByteTokenizer;
        let mut ctx = tok.encode("maze\n");
        let d = p.distribution(&ctx);
        assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(d[b'm' as usize] > 0.9);
        ctx.extend(tok.encode("move[u"));
        let d = p.distribution(&ctx);
        assert!(d[b'p' as usize] > 0.9);
        ctx.extend(tok.encode("p]"));
        let d = p.distribution(&ctx);
        assert!(d[ByteTokenizer::EOS as usize] > 0.9);
        // Off-script: only noise.
        let d = p.distribution(&tok.encode("zz"));
        assert!((d[b'q' as usize] - 1.0 / 27.0).abs() < 1e-6);
    }

    #[test]
    fn decode_is_a_function_of_context_and_key() {
        let mut p = ScriptedPolicy::new(&["ab", "ac"], 0.2, 64);
        let a = p.start(&[257, b'\n' as u32]).unwrap();
        let b = p.fork(a).unwrap();
        let params = SamplingParams::default();
        let ra = p
            .decode(&[DecodeRequest { seq: a, rng_key: 5 }], &params)
            .unwrap();
        let rb = p
            .decode(
                &[
                    DecodeRequest { seq: a, rng_key: 9 },
                    DecodeRequest { seq: b, rng_key: 5 },
                ],
                &params,
            )
            .unwrap();
        assert_eq!(ra[0], rb[1]);
        assert_eq!(p.seq_len(a).unwrap(), 4);
        assert_eq!(p.stats().cached_tokens, 2);
    }
}
