//! [`ServerPolicy`]: a [`Policy`] on an OpenAI-compatible completions endpoint
//! (`POST /v1/completions`), the second implementation of the sampler seam (DESIGN §11).
//!
//! # How the seam maps onto the endpoint
//! Sequences live here, as token ids: `start`, `fork`, `fork_at`, `append` and `release` touch
//! no server. [`Policy::decode`] sends one request per sequence with its **full context as a
//! token-id prompt** and `max_tokens = 1`; the server's prefix cache (llama.cpp's prompt cache,
//! vLLM's automatic prefix caching, SGLang's RadixAttention) turns the repeated prefix into cache
//! reads, so a tree's branches share their prefix on the server as they do in the engine's
//! paged KV. A request asks for the sampled token's id and logprob and the `top_logprobs` most
//! likely alternatives, with a per-request `seed` (the caller's `rng_key`), and sets every
//! server-side sampler that arbor's [`SamplingParams`] do not have to its neutral value (no
//! min-p, typical-p, repetition or presence penalty), so the server samples the policy's own
//! distribution.
//!
//! # What the numbers mean
//! - **Logprobs** are the server's: llama.cpp's `llama-server` reports `log softmax(logits)`
//!   of the sampled token, before temperature and truncation. That is arbor's behaviour logprob
//!   ([`crate::policy::Sampled::logprob`]) only at scoring temperature 1, so a temperature other
//!   than 0 (greedy, scored at 1) or 1 is refused rather than silently mis-scored.
//! - **Entropy** is computed from the `top_logprobs` alternatives only: a lower bound of the
//!   true entropy that tightens as [`ServerConfig::top_logprobs`] grows (the mass outside the top
//!   `k` is left out). Entropy-guided branching therefore sees a truncated entropy.
//! - **Counters**: `computed_tokens` adds the prompt tokens the server did not read from its
//!   cache plus the generated ones, `cached_tokens` the ones it did (`usage.prompt_tokens`,
//!   `usage.prompt_tokens_details.cached_tokens`, `usage.completion_tokens`).
//!
//! # Tokens that end inside a character
//! A byte-level BPE vocabulary has tokens that hold part of a multi-byte UTF-8 character.
//! llama.cpp's server withholds such a token until the character is complete, so an answer of
//! `max_tokens = 1` that drew one carries no id and no logprob (an answer that reports one
//! generated token without its logprob is taken for such a draw). Such a draw
//! is redrawn with a seed derived from the request's (at most 16 times in a row): tokens that
//! end inside a character are then never sampled through this policy, which conditions the
//! behaviour distribution on the rest (their mass is tiny in the environments' ASCII text;
//! the logprobs reported stay the policy's own).
//!
//! # Failures
//! Up to [`ServerConfig::in_flight`] requests run at once. A connection failure, timeout, 5xx or
//! 429 answer is retried [`ServerConfig::retries`] times with exponential backoff; a 4xx answer,
//! malformed JSON, or an answer without logprobs fails at once. A decode call is all or
//! nothing: the sequences grow only after every request of the batch has its token, so a failed
//! call leaves every sequence (and so every tree and the sampler's budget) as it was, and the
//! error says which server and what went wrong.
//!
//! # Answer formats
//! Two forms of the sampled token are read, whichever the answer has:
//! - llama.cpp's `logprobs.content[0]`: `id`, `logprob`, `top_logprobs: [{id, logprob}]`;
//! - OpenAI's legacy completions form, as vLLM and SGLang write it: `logprobs.token_logprobs[0]`
//!   and `logprobs.top_logprobs[0]` (`{token: logprob}`), with the token's id from
//!   `choices[0].token_ids` (the request's `return_token_ids`, SGLang and recent vLLM) or from a
//!   `token_id:N` token (`return_tokens_as_token_ids`, vLLM). Both flags are sent with every
//!   request; servers that do not know them ignore them.
//!
//! The context window comes from llama.cpp's `GET /props` (`n_ctx`), else from
//! `GET /v1/models` (`max_model_len`, vLLM and SGLang). Weight reloads between RL steps are the
//! caller's ([`call`] sends them; `experiments::serve` uses it).
//!
//! # Tested servers
//! llama.cpp's C++ `llama-server` (token-id prompts, per-token ids, logprobs and top-k logprobs,
//! cached-token counts): `rollout/tests/server.rs`, when `ARBOR_LLAMA_SERVER` names its binary.
//! The same file drives the sampler through a scripted in-process server with injected
//! failures. vLLM's and SGLang's answer forms are unit-tested here, and their reload protocols
//! end to end against an in-process server in `experiments/tests/reload.rs`; neither server
//! ran here (both need a GPU). llama-cpp-python's server rejects token-id prompts and cannot be
//! used.

mod http;

use std::time::Duration;

use serde_json::{Value, json};

pub use http::Endpoint;
use http::{HttpError, request};

use crate::Error;
use crate::policy::{
    Contexts, DecodeRequest, Policy, PolicyStats, Sampled, SamplingParams, SeqHandle,
};

/// Settings of a [`ServerPolicy`] (`[rollout]` of a run's TOML, `--rollout-server URL`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Base URL, `http://host:port` (the endpoint is `<url>/v1/completions`).
    pub url: String,
    /// The `model` field of each request (servers that host one model ignore it). Default:
    /// none.
    pub model: Option<String>,
    /// The context window in tokens; 0 asks the server (`GET /props`, llama.cpp). Default: 0.
    pub max_len: usize,
    /// Requests in flight at once. Default: 8.
    pub in_flight: usize,
    /// Seconds before a request is abandoned (and retried). Default: 60.
    pub timeout_s: f64,
    /// Retries of a request after a transient failure. Default: 3.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds; it doubles with each further one.
    /// Default: 100.
    pub backoff_ms: u64,
    /// Alternatives asked for per token (the entropy's support, see the module docs).
    /// Default: 20.
    pub top_logprobs: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            url: String::new(),
            model: None,
            max_len: 0,
            in_flight: 8,
            timeout_s: 60.0,
            retries: 3,
            backoff_ms: 100,
            top_logprobs: 20,
        }
    }
}

/// A policy served by an inference server (see the module docs).
#[derive(Debug)]
pub struct ServerPolicy {
    config: ServerConfig,
    endpoint: Endpoint,
    contexts: Contexts,
    stats: PolicyStats,
}

/// One decoded token and the server's counters for its request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Answer {
    sampled: Sampled,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
}

impl ServerPolicy {
    /// Connects to `config.url`: checks the settings and, unless `config.max_len` is set, reads
    /// the context window from the server (an unreachable server is an error here, not at the
    /// first decode).
    pub fn connect(config: ServerConfig) -> Result<Self, Error> {
        let backend = |m: String| Error::Backend(format!("rollout server {}: {m}", config.url));
        let endpoint = Endpoint::parse(&config.url).map_err(&backend)?;
        if config.in_flight == 0 || !config.timeout_s.is_finite() || config.timeout_s <= 0.0 {
            return Err(backend(
                "in_flight must be at least 1 and timeout_s a positive number".into(),
            ));
        }
        let max_len = match config.max_len {
            0 => context_window(&endpoint, Duration::from_secs_f64(config.timeout_s))
                .map_err(&backend)?,
            n => n,
        };
        Ok(ServerPolicy {
            config,
            endpoint,
            contexts: Contexts::new(max_len),
            stats: PolicyStats::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The request body for one token after `context`.
    fn body(&self, context: &[u32], params: &SamplingParams, rng_key: u64) -> String {
        let mut body = json!({
            "prompt": context,
            "max_tokens": 1,
            "temperature": params.temperature.max(0.0),
            "top_k": params.top_k,
            "top_p": params.top_p,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "logprobs": self.config.top_logprobs.max(1),
            "seed": rng_key,
            "cache_prompt": true,
            "stream": false,
            "return_token_ids": true,
            "return_tokens_as_token_ids": true,
        });
        if let Some(model) = &self.config.model {
            body["model"] = json!(model);
        }
        body.to_string()
    }

    /// One token after `context`, with retries (see the module docs on partial characters).
    fn complete(
        &self,
        context: &[u32],
        params: &SamplingParams,
        rng_key: u64,
    ) -> Result<Answer, String> {
        let timeout = Duration::from_secs_f64(self.config.timeout_s);
        let (mut attempt, mut redraws) = (0, 0u64);
        loop {
            // A redraw after a token that ends inside a character gets a seed of its own.
            let key = match redraws {
                0 => rng_key,
                n => envs::rng::derive(&[rng_key, PARTIAL_CHARACTER_STREAM, n]),
            };
            let body = self.body(context, params, key);
            let outcome = request(
                &self.endpoint,
                "POST",
                "/v1/completions",
                Some(&body),
                timeout,
            )
            .and_then(|text| {
                parse_answer(&text).map_err(|m| HttpError {
                    transient: false,
                    message: m,
                })
            });
            match outcome {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) if redraws < MAX_REDRAWS => redraws += 1,
                Ok(None) => {
                    return Err(format!(
                        "{MAX_REDRAWS} draws in a row ended inside a UTF-8 character, and the \
                         server reports no token for those"
                    ));
                }
                Err(e) if e.transient && attempt < self.config.retries => {
                    let wait = self.config.backoff_ms.saturating_mul(1 << attempt.min(6));
                    std::thread::sleep(Duration::from_millis(wait));
                    attempt += 1;
                }
                Err(e) => {
                    return Err(match e.transient {
                        true => format!("{} (after {} tries)", e.message, attempt + 1),
                        false => e.message,
                    });
                }
            }
        }
    }
}

/// Sends `method path` (with an optional JSON `body`) to the server at `url` once and returns
/// the body of a 2xx answer: for the endpoints besides completions, such as a weight reload.
/// Errors name the server and say what went wrong, HTTP status and answer included.
pub fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String, Error> {
    let backend = |m: String| Error::Backend(format!("rollout server {url}: {m}"));
    let endpoint = Endpoint::parse(url).map_err(&backend)?;
    request(&endpoint, method, path, body, timeout).map_err(|e| backend(e.message))
}

/// The server's context window: llama.cpp's `GET /props` (`n_ctx`), else `GET /v1/models`
/// (`max_model_len`: vLLM, SGLang).
fn context_window(endpoint: &Endpoint, timeout: Duration) -> Result<usize, String> {
    let read = |path: &str, pointers: &[&str]| -> Result<Option<u64>, String> {
        let text = request(endpoint, "GET", path, None, timeout).map_err(|e| e.message)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("GET {path}: malformed JSON: {e}"))?;
        Ok(pointers
            .iter()
            .find_map(|p| v.pointer(p).and_then(Value::as_u64)))
    };
    if let Ok(Some(n)) = read("/props", &["/default_generation_settings/n_ctx", "/n_ctx"]) {
        return Ok(n as usize);
    }
    match read("/v1/models", &["/data/0/max_model_len"]) {
        Ok(Some(n)) => Ok(n as usize),
        Ok(None) => Err(
            "neither GET /props nor GET /v1/models names its context window: set the context \
             window (max_len)"
                .into(),
        ),
        Err(e) => Err(format!("cannot read its context window: {e}")),
    }
}

/// The start of an answer, for error messages.
fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Stream tag of the seeds of redraws (`envs::rng::derive(&[rng_key, tag, n])`).
const PARTIAL_CHARACTER_STREAM: u64 = 0x5554_4638; // "UTF8"

/// Redraws of one token before a run of partial characters is an error.
const MAX_REDRAWS: u64 = 16;

/// Reads the first generated token of a `/v1/completions` answer, in either format (module
/// docs); `None` for an answer whose one token ended inside a UTF-8 character (llama.cpp then
/// returns neither text nor logprobs).
fn parse_answer(text: &str) -> Result<Option<Answer>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON answer: {e}"))?;
    let choice = v.pointer("/choices/0").ok_or("the answer has no choices")?;
    let generated = v
        .pointer("/usage/completion_tokens")
        .and_then(Value::as_u64);
    let legacy = choice
        .pointer("/logprobs/token_logprobs")
        .is_some_and(|l| !l.is_null());
    let sampled = if legacy {
        legacy_token(choice)?
    } else {
        let empty = choice
            .pointer("/logprobs/content")
            .is_none_or(|c| c.is_null() || c.as_array().is_some_and(Vec::is_empty));
        // The text is then empty or U+FFFD, depending on the server's version.
        if empty && generated == Some(1) {
            return Ok(None);
        }
        llama_token(choice, text)?
    };
    let count = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok(Some(Answer {
        sampled,
        prompt_tokens: count("/usage/prompt_tokens"),
        cached_tokens: count("/usage/prompt_tokens_details/cached_tokens"),
        completion_tokens: count("/usage/completion_tokens"),
    }))
}

/// llama.cpp's per-token form: `logprobs.content[0]` with `id`, `logprob` and `top_logprobs`
/// (`[{id, logprob}]`).
fn llama_token(choice: &Value, text: &str) -> Result<Sampled, String> {
    let token = choice.pointer("/logprobs/content/0").ok_or_else(|| {
        format!(
            "the answer has no per-token logprobs (the server must return `logprobs.content`, \
             as llama.cpp's llama-server does, or OpenAI's `logprobs.token_logprobs`): {}",
            excerpt(text)
        )
    })?;
    let id = token
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("the answer's token has no id (the server must report token ids)")?;
    let logprob = token
        .get("logprob")
        .and_then(Value::as_f64)
        .ok_or("the answer's token has no logprob")?;
    let top = token.get("top_logprobs").and_then(Value::as_array);
    let alternatives = top
        .into_iter()
        .flatten()
        .filter_map(|alt| alt.get("logprob").and_then(Value::as_f64));
    sampled(id, logprob, alternatives)
}

/// OpenAI's legacy completions form (vLLM, SGLang): `logprobs.token_logprobs[0]` and
/// `logprobs.top_logprobs[0]` (`{token: logprob}`), the id from `token_ids[0]` (SGLang's and
/// vLLM's `return_token_ids`) or from a `token_id:N` token (vLLM's
/// `return_tokens_as_token_ids`).
fn legacy_token(choice: &Value) -> Result<Sampled, String> {
    let logprob = choice
        .pointer("/logprobs/token_logprobs/0")
        .and_then(Value::as_f64)
        .ok_or("the answer's token has no logprob")?;
    let id = choice
        .pointer("/token_ids/0")
        .and_then(Value::as_u64)
        .or_else(|| {
            let token = choice.pointer("/logprobs/tokens/0")?.as_str()?;
            token.strip_prefix("token_id:")?.parse().ok()
        })
        .ok_or(
            "the answer's token has no id (the server must report token ids: `token_ids`, or \
             `token_id:N` tokens)",
        )?;
    let top = choice
        .pointer("/logprobs/top_logprobs/0")
        .and_then(Value::as_object);
    let alternatives = top.into_iter().flatten().filter_map(|(_, lp)| lp.as_f64());
    sampled(id, logprob, alternatives)
}

/// A sampled token with the entropy of its reported alternatives (module docs).
fn sampled(
    id: u64,
    logprob: f64,
    alternatives: impl Iterator<Item = f64>,
) -> Result<Sampled, String> {
    let entropy: f64 = alternatives
        .filter(|lp| lp.is_finite())
        .map(|lp| -lp.exp() * lp)
        .sum();
    Ok(Sampled {
        token: u32::try_from(id).map_err(|_| format!("token id {id} out of range"))?,
        logprob: logprob as f32,
        entropy: entropy.max(0.0) as f32,
    })
}

impl Policy for ServerPolicy {
    fn max_len(&self) -> usize {
        self.contexts.max_len()
    }

    fn start(&mut self, tokens: &[u32]) -> Result<SeqHandle, Error> {
        self.contexts.start(tokens)
    }

    // Cache reads are counted when the server reports them, at the next request.
    fn fork(&mut self, seq: SeqHandle) -> Result<SeqHandle, Error> {
        self.contexts.fork(seq)
    }

    fn fork_at(&mut self, seq: SeqHandle, len: usize) -> Result<SeqHandle, Error> {
        self.contexts.fork_at(seq, len)
    }

    fn append(&mut self, seq: SeqHandle, tokens: &[u32]) -> Result<(), Error> {
        self.contexts.append(seq, tokens)
    }

    fn decode(
        &mut self,
        requests: &[DecodeRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Sampled>, Error> {
        let t = params.temperature;
        if t.is_finite() && t > 0.0 && t != 1.0 {
            return Err(Error::Backend(format!(
                "rollout server {}: temperature {t}: the server reports untempered logprobs, \
                 so only temperature 1 (or 0, greedy) gives the behaviour logprobs PPO needs",
                self.config.url
            )));
        }
        self.contexts.check_decode(requests)?;
        let jobs = requests
            .iter()
            .map(|r| Ok((self.contexts.get(r.seq)?, r.rng_key)))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut answers: Vec<Result<Answer, String>> = Vec::with_capacity(jobs.len());
        for wave in jobs.chunks(self.config.in_flight) {
            let this = &*self;
            let results: Vec<Result<Answer, String>> = std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|&(context, key)| s.spawn(move || this.complete(context, params, key)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("a request thread panicked".into()))
                    })
                    .collect()
            });
            answers.extend(results);
        }
        // All or nothing: no sequence grows unless every request has its token.
        let answers = answers
            .into_iter()
            .collect::<Result<Vec<Answer>, String>>()
            .map_err(|m| Error::Backend(format!("rollout server {}: {m}", self.config.url)))?;
        let mut out = Vec::with_capacity(answers.len());
        for (r, a) in requests.iter().zip(answers) {
            self.contexts.push(r.seq, a.sampled.token)?;
            let cached = a.cached_tokens.min(a.prompt_tokens);
            self.stats.computed_tokens += a.prompt_tokens - cached + a.completion_tokens;
            self.stats.cached_tokens += cached;
            out.push(a.sampled);
        }
        Ok(out)
    }

    fn seq_len(&self, seq: SeqHandle) -> Result<usize, Error> {
        Ok(self.contexts.get(seq)?.len())
    }

    fn release(&mut self, seq: SeqHandle) {
        self.contexts.release(seq);
    }

    fn stats(&self) -> PolicyStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        let kv = self.stats.kv_bytes;
        self.stats = PolicyStats {
            kv_bytes: kv,
            ..PolicyStats::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_or_say_what_is_missing() {
        let ok = r#"{"choices":[{"text":"a","logprobs":{"content":[{"id":97,"logprob":-0.5,
            "top_logprobs":[{"id":97,"logprob":-0.5},{"id":98,"logprob":-1.2}]}]}}],
            "usage":{"prompt_tokens":10,"completion_tokens":1,
            "prompt_tokens_details":{"cached_tokens":7}}}"#;
        let a = parse_answer(ok).unwrap().unwrap();
        assert_eq!(a.sampled.token, 97);
        assert_eq!(a.sampled.logprob, -0.5);
        let h = -(-0.5f64).exp() * -0.5 - (-1.2f64).exp() * -1.2;
        assert!((a.sampled.entropy as f64 - h).abs() < 1e-6);
        assert_eq!(
            (a.prompt_tokens, a.cached_tokens, a.completion_tokens),
            (10, 7, 1)
        );
        let partial = r#"{"choices":[{"text":"","logprobs":null,"finish_reason":"length"}],
            "usage":{"prompt_tokens":10,"completion_tokens":1}}"#;
        assert_eq!(parse_answer(partial).unwrap(), None);
        for (bad, says) in [
            ("{", "malformed JSON"),
            (r#"{"choices":[]}"#, "no choices"),
            (
                r#"{"choices":[{"text":"a","logprobs":null}]}"#,
                "no per-token logprobs",
            ),
            (
                r#"{"choices":[{"logprobs":{"content":[{"logprob":-1}]}}]}"#,
                "no id",
            ),
            (
                r#"{"choices":[{"logprobs":{"tokens":["a"],"token_logprobs":[-1.0]}}]}"#,
                "no id",
            ),
            (
                r#"{"choices":[{"token_ids":[5],"logprobs":{"token_logprobs":[null]}}]}"#,
                "no logprob",
            ),
        ] {
            let e = parse_answer(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// OpenAI's legacy form as vLLM (`token_id:N` tokens) and SGLang (`token_ids`) write it.
    #[test]
    fn openai_legacy_answers_parse() {
        let vllm = r#"{"choices":[{"index":0,"text":"a","logprobs":{"text_offset":[0],
            "token_logprobs":[-0.5],"tokens":["token_id:97"],
            "top_logprobs":[{"token_id:97":-0.5,"token_id:98":-1.2}]},"finish_reason":"length"}],
            "usage":{"prompt_tokens":10,"completion_tokens":1,
            "prompt_tokens_details":{"cached_tokens":8}}}"#;
        let sglang = r#"{"choices":[{"index":0,"text":"a","token_ids":[97],"logprobs":{
            "text_offset":[0],"token_logprobs":[-0.5],"tokens":["a"],
            "top_logprobs":[{"a":-0.5,"b":-1.2}]}}],
            "usage":{"prompt_tokens":10,"completion_tokens":1}}"#;
        let h = -(-0.5f64).exp() * -0.5 - (-1.2f64).exp() * -1.2;
        for (text, cached) in [(vllm, 8), (sglang, 0)] {
            let a = parse_answer(text).unwrap().unwrap();
            assert_eq!((a.sampled.token, a.sampled.logprob), (97, -0.5));
            assert!((a.sampled.entropy as f64 - h).abs() < 1e-6);
            assert_eq!(
                (a.prompt_tokens, a.cached_tokens, a.completion_tokens),
                (10, cached, 1)
            );
        }
    }
}
