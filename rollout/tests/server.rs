//! The sampler on an inference server: `ServerPolicy` against a scripted in-process server (with
//! injected failures), and against llama.cpp's `llama-server` serving SmolLM2 when
//! `ARBOR_LLAMA_SERVER` names its binary (required when `ARBOR_REQUIRE_LLAMA_SERVER` is set, as
//! in CI).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envs::{AnyEnv, EnvSpec};
use rollout::policy::{DecodeRequest, Policy, SamplingParams};
use rollout::sampler::{SamplerConfig, SamplerKind, SamplerStats, sample};
use rollout::scripted::ScriptedPolicy;
use rollout::server::{ServerConfig, ServerPolicy};
use rollout::tokenizer::ByteTokenizer;
use rollout::tree::TaskRollout;
use serde_json::{Value, json};

const MAZE_PHRASES: [&str; 4] = ["move[up]", "move[down]", "move[left]", "move[right]"];
const NOISE: f32 = 0.05;
const CONTEXT: usize = 1024;

/// How the scripted server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Completions from the scripted policy; every `n`-th request (0: none) first gets a 503.
    Scripted { fail_every: u64 },
    /// Every completion is a 200 with a body that is not JSON.
    Garbage,
    /// Every completion is a 503.
    Down,
}

/// A server on 127.0.0.1 answering `/props` and `/v1/completions` from `ScriptedPolicy` (whose
/// next token is a function of the context and the request's seed alone). Returns its URL and
/// the count of completion requests it received.
fn scripted_server(mode: Mode) -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let url = http_server::serve(move |_, path, body| match path {
        "/props" => (
            200,
            json!({"default_generation_settings": {"n_ctx": CONTEXT}}).to_string(),
        ),
        "/v1/completions" => {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            match mode {
                Mode::Scripted { fail_every } if fail_every > 0 && n.is_multiple_of(fail_every) => {
                    (503, "busy".to_string())
                }
                Mode::Scripted { .. } => (200, complete(body)),
                Mode::Garbage => (200, "<html>not json".to_string()),
                Mode::Down => (503, "down".to_string()),
            }
        }
        _ => (404, "no such path".to_string()),
    });
    (url, count)
}

/// One token after the request's prompt, sampled by the scripted policy with the request's seed.
fn complete(body: &[u8]) -> String {
    let req: Value = serde_json::from_slice(body).unwrap();
    let prompt = http_server::one_token_prompt(&req);
    let seed = req["seed"].as_u64().unwrap();
    let mut policy = ScriptedPolicy::new(&MAZE_PHRASES, NOISE, CONTEXT);
    let seq = policy.start(&prompt).unwrap();
    let s = policy
        .decode(
            &[DecodeRequest { seq, rng_key: seed }],
            &SamplingParams::default(),
        )
        .unwrap()[0];
    json!({
        "choices": [{"text": "", "logprobs": {"content": [{
            "id": s.token, "logprob": s.logprob,
            "top_logprobs": [{"id": s.token, "logprob": s.logprob}],
        }]}}],
        "usage": {"prompt_tokens": prompt.len(), "completion_tokens": 1,
                  "prompt_tokens_details": {"cached_tokens": prompt.len() - 1}},
    })
    .to_string()
}

fn maze_tasks(n: u64) -> Vec<(u64, AnyEnv)> {
    let spec = EnvSpec::from_name("maze", &[("size", "3")]).unwrap();
    (0..n).map(|i| (i, spec.make(i))).collect()
}

fn run<P: Policy>(policy: &mut P, cfg: &SamplerConfig) -> (SamplerStats, Vec<TaskRollout>) {
    let mut sink: Vec<TaskRollout> = Vec::new();
    let stats = sample(cfg, policy, &ByteTokenizer, &maze_tasks(4), 7, 2, &mut sink).unwrap();
    (stats, sink)
}

/// A node without its entropies: parent, tokens, logprobs, whether it is a leaf.
type NodeShape = (Option<u32>, Vec<u32>, Vec<f32>, bool);

/// What a tree is, without the entropies (the server reports them from its top-k alternatives).
fn shape(rollouts: &[TaskRollout]) -> Vec<Vec<NodeShape>> {
    rollouts
        .iter()
        .map(|r| {
            r.nodes
                .iter()
                .map(|n| {
                    (
                        n.parent,
                        n.tokens.clone(),
                        n.logprobs.clone(),
                        n.leaf.is_some(),
                    )
                })
                .collect()
        })
        .collect()
}

fn server(url: &str) -> ServerPolicy {
    ServerPolicy::connect(ServerConfig {
        url: url.into(),
        in_flight: 4,
        retries: 2,
        backoff_ms: 1,
        timeout_s: 10.0,
        ..ServerConfig::default()
    })
    .unwrap()
}

/// Through a server that fails every third request once, the tree and chain samplers build the
/// very trees they build on the policy in process: same nodes, tokens and logprobs, the same
/// budget spent (never more than the budget per task), and the retried requests recovered.
#[test]
fn samplers_on_a_flaky_server_build_the_in_process_trees() {
    let (url, requests) = scripted_server(Mode::Scripted { fail_every: 3 });
    for kind in [SamplerKind::Tree, SamplerKind::Chain] {
        let cfg = SamplerConfig {
            budget: 160,
            kind,
            ..SamplerConfig::default()
        };
        let mut remote = server(&url);
        assert_eq!(remote.max_len(), CONTEXT);
        let (remote_stats, remote_trees) = run(&mut remote, &cfg);
        let mut local = ScriptedPolicy::new(&MAZE_PHRASES, NOISE, CONTEXT);
        let (local_stats, local_trees) = run(&mut local, &cfg);
        assert_eq!(shape(&remote_trees), shape(&local_trees), "{kind:?}");
        assert_eq!(remote_stats.generated_tokens, local_stats.generated_tokens);
        assert!(remote_stats.generated_tokens > 0);
        for r in &remote_trees {
            r.validate().unwrap();
            let generated: usize = r
                .nodes
                .iter()
                .filter(|n| n.logprobs.len() == n.tokens.len() && !n.tokens.is_empty())
                .filter(|n| n.kind == rollout::tree::NodeKind::Action)
                .map(|n| n.tokens.len())
                .sum();
            assert!(
                generated <= cfg.budget as usize,
                "{kind:?}: {generated} > {}",
                cfg.budget
            );
        }
        assert!(
            remote.stats().cached_tokens > 0,
            "the server reported cache reads"
        );
    }
    let n = requests.load(Ordering::SeqCst);
    assert!(n > 30, "{n} requests");
}

/// A server that is down, answers garbage or cannot be reached gives a one-line error naming
/// it, and a failed decode leaves the sequences as they were.
#[test]
fn server_failures_are_errors_and_change_nothing() {
    let (url, _) = scripted_server(Mode::Down);
    let mut down = server(&url);
    let seq = down.start(&[10, 20, 30]).unwrap();
    let err = down
        .decode(
            &[DecodeRequest { seq, rng_key: 1 }],
            &SamplingParams::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&url) && err.contains("503") && err.contains("3 tries"),
        "{err}"
    );
    assert_eq!(down.seq_len(seq).unwrap(), 3);

    let (url, _) = scripted_server(Mode::Garbage);
    let mut garbage = server(&url);
    let seq = garbage.start(&[10, 20]).unwrap();
    let err = garbage
        .decode(
            &[DecodeRequest { seq, rng_key: 1 }],
            &SamplingParams::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed JSON"), "{err}");
    assert_eq!(garbage.seq_len(seq).unwrap(), 2);

    // A tempered temperature cannot be scored from untempered server logprobs.
    let hot = SamplingParams {
        temperature: 0.7,
        ..SamplingParams::default()
    };
    let err = garbage
        .decode(&[DecodeRequest { seq, rng_key: 1 }], &hot)
        .unwrap_err()
        .to_string();
    assert!(err.contains("temperature 0.7"), "{err}");

    // Nothing listens on a port just freed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = ServerPolicy::connect(ServerConfig {
        url: url.clone(),
        timeout_s: 2.0,
        ..ServerConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&url) && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[path = "common/smollm2.rs"]
mod smollm2;

#[path = "common/http_server.rs"]
mod http_server;

/// `llama-server` started on a free local port, stopped when dropped.
struct LlamaServer {
    child: std::process::Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_llama_server(binary: &std::path::Path, model: &std::path::Path) -> LlamaServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(binary)
        .args(["-m", model.to_str().unwrap()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-c", "4096", "-np", "4", "-t", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let server = LlamaServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // Ready when /health answers 200 (503 while the model loads).
    let started = std::time::Instant::now();
    loop {
        let ok = TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut s| {
                write!(
                    s,
                    "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .ok()?;
                let mut answer = String::new();
                s.read_to_string(&mut answer).ok()?;
                Some(answer.starts_with("HTTP/1.1 200"))
            });
        if ok == Some(true) {
            return server;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "llama-server did not become ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The real server: llama.cpp's `llama-server` serving SmolLM2-135M-Instruct (Q4_1).
///
/// - Greedy decoding through the server, teacher-forced through arbor's engine on the same
///   dequantized weights: every server logprob is within 0.15 nats of the engine's, and the
///   server's greedy token is the engine's argmax or within 0.15 nats of it. The tolerance is
///   the server's arithmetic, not a bug: llama.cpp multiplies Q4_1 weights with activations
///   quantized to 8 bits (Q8_1) per block of 32, where the engine dequantizes the weights to f32
///   and keeps f32 activations.
/// - The tree and chain samplers on 3-hop multihop in SmolLM2's chat rendering: valid trees,
///   never more generated tokens than the budget per task, and prefix-cache reads reported by
///   the server.
#[test]
fn llama_server_serves_the_samplers() {
    let (Some(binary), Some(model)) = (smollm2::llama_server(), smollm2::model()) else {
        return;
    };
    let gguf = rollout::gguf::load_gguf(&model).unwrap();
    let server = start_llama_server(&binary, &model);
    let mut remote = ServerPolicy::connect(ServerConfig {
        url: server.url.clone(),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(
        remote.max_len(),
        1024,
        "a slot's share of -c 4096 over -np 4"
    );

    // Greedy tokens from the server, scored by the engine.
    use rollout::tokenizer::Tokenizer;
    let format = rollout::chat::ChatFormat::new(
        gguf.chat_template.as_deref().unwrap(),
        &gguf
            .tokenizer
            .id_to_token(gguf.tokenizer.bos())
            .unwrap_or_default(),
        &gguf
            .tokenizer
            .id_to_token(gguf.tokenizer.eos())
            .unwrap_or_default(),
    )
    .unwrap();
    let prompt = format.prompt("What is the capital of France? Answer in one word.");
    let prompt_ids = gguf.tokenizer.encode(&prompt);
    let seq = remote.start(&prompt_ids).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut generated = Vec::new();
    for i in 0..8 {
        let s = remote
            .decode(&[DecodeRequest { seq, rng_key: i }], &greedy)
            .unwrap()[0];
        generated.push(s);
    }
    let engine = rollout::engine::Engine::new(gguf.config.clone(), &gguf.weights).unwrap();
    let mut all = prompt_ids.clone();
    all.extend(generated.iter().map(|s| s.token));
    let logits = engine.forward_full(&all);
    let (mut worst, mut worst_argmax) = (0.0f32, 0.0f32);
    for (k, s) in generated.iter().enumerate() {
        let row = logits.row(prompt_ids.len() - 1 + k);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
        let engine_lp = row[s.token as usize] - lse;
        worst = worst.max((engine_lp - s.logprob).abs());
        worst_argmax = worst_argmax.max(max - row[s.token as usize]);
    }
    eprintln!(
        "llama-server greedy: {:?}; max |server - engine| logprob {worst:.4}, greedy token \
         below the engine's argmax by at most {worst_argmax:.4}",
        gguf.tokenizer.decode(&all[prompt_ids.len()..])
    );
    assert!(worst < 0.15, "{worst}");
    assert!(worst_argmax < 0.15, "{worst_argmax}");

    // The samplers on chat-rendered multihop tasks.
    let spec = rollout::chat::chat_spec(
        EnvSpec::from_name("multihop", &[("hops", "3")]).unwrap(),
        format,
    );
    let tasks: Vec<(u64, AnyEnv)> = (0..2).map(|i| (i, spec.make(i))).collect();
    for kind in [SamplerKind::Tree, SamplerKind::Chain] {
        let cfg = SamplerConfig {
            budget: 192,
            kind,
            ..SamplerConfig::default()
        };
        remote.reset_stats();
        let mut sink: Vec<TaskRollout> = Vec::new();
        let stats = sample(&cfg, &mut remote, &gguf.tokenizer, &tasks, 3, 0, &mut sink).unwrap();
        assert_eq!(sink.len(), 2);
        for r in &sink {
            r.validate().unwrap();
            let generated: usize = r
                .nodes
                .iter()
                .filter(|n| n.kind == rollout::tree::NodeKind::Action)
                .map(|n| n.tokens.len())
                .sum();
            assert!(generated <= cfg.budget as usize, "{kind:?}: {generated}");
        }
        assert!(stats.generated_tokens > 0);
        assert!(
            remote.stats().cached_tokens > 0,
            "{kind:?}: no cache reads reported"
        );
        eprintln!(
            "{kind:?}: {} generated tokens, {} trajectories, cache-read share {:.3}",
            stats.generated_tokens,
            stats.trajectories,
            remote.stats().cached_tokens as f64
                / (remote.stats().cached_tokens + remote.stats().computed_tokens).max(1) as f64
        );
    }
    drop(server);
}
