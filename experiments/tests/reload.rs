//! RL steps whose rollouts an inference server samples, each new policy reaching it through the
//! reload protocol of SGLang (`POST /update_weights_from_disk`) or vLLM (`POST /collective_rpc`
//! with `reload_weights`, then `POST /reset_prefix_cache`). The server here is in-process: it
//! speaks each protocol and OpenAI's completions format, and serves the model directory it was
//! last told to load with arbor's engine, so the run's logprob probe sees whether the trained
//! weights arrived. (A real SGLang or vLLM needs a GPU.)

mod common;

#[path = "../../rollout/tests/common/http_server.rs"]
mod http_server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{arbor, assert_one_line_error, ok, scratch, tiny_config};
use rand::RngExt;
use rollout::engine::Engine;
use serde_json::{Value, json};

/// Which server the in-process one imitates.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Sglang,
    Vllm,
}

struct State {
    flavor: Flavor,
    /// Acknowledges reloads without loading anything.
    stale: bool,
    engine: Engine,
    /// `POST` paths with the directory of reload requests, in order.
    calls: Vec<String>,
    completions: u64,
}

/// Starts the server on 127.0.0.1 serving the model directory `model`; returns its URL and
/// state.
fn start_server(flavor: Flavor, stale: bool, model: &Path) -> (String, Arc<Mutex<State>>) {
    let state = Arc::new(Mutex::new(State {
        flavor,
        stale,
        engine: load(model),
        calls: Vec::new(),
        completions: 0,
    }));
    let shared = state.clone();
    let url = http_server::serve(move |method, path, body| {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (status, answer) = handle(&mut shared.lock().unwrap(), method, path, &body);
        (status, answer.to_string())
    });
    (url, state)
}

fn load(dir: &Path) -> Engine {
    let model = rollout::hf::load_model_dir(dir).unwrap();
    Engine::new(model.config, &model.weights).unwrap()
}

fn handle(state: &mut State, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let flavor = state.flavor;
    match (method, path, flavor) {
        ("GET", "/v1/models", _) => (
            200,
            json!({"data": [{"id": "policy", "max_model_len": 256}]}),
        ),
        ("POST", "/v1/completions", _) => {
            state.completions += 1;
            (200, complete(&state.engine, body, flavor))
        }
        ("POST", "/update_weights_from_disk", Flavor::Sglang) => {
            let dir = body["model_path"].as_str().unwrap().to_string();
            reload(state, path, &dir);
            (
                200,
                json!({"success": true, "message": "Succeeded", "num_paused_requests": 0}),
            )
        }
        ("POST", "/collective_rpc", Flavor::Vllm) => {
            assert_eq!(body["method"], "reload_weights");
            let dir = body["kwargs"]["weights_path"].as_str().unwrap().to_string();
            reload(state, path, &dir);
            (200, json!({"results": [null]}))
        }
        ("POST", "/reset_prefix_cache", Flavor::Vllm) => {
            state.calls.push(path.to_string());
            (200, json!({"success": true}))
        }
        _ => (404, json!({"detail": "Not Found"})),
    }
}

fn reload(state: &mut State, path: &str, dir: &str) {
    state.calls.push(format!("{path} {dir}"));
    if !state.stale {
        state.engine = load(Path::new(dir));
    }
}

/// One token after the prompt: drawn from the served model's distribution with the request's
/// seed (greedy at temperature 0), in OpenAI's legacy logprobs form with the id where each
/// server puts it.
fn complete(engine: &Engine, req: &Value, flavor: Flavor) -> Value {
    let prompt = http_server::one_token_prompt(req);
    let logits = engine.forward_full(&prompt);
    let row: Vec<f64> = logits
        .row(prompt.len() - 1)
        .iter()
        .map(|&x| x as f64)
        .collect();
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let logprobs: Vec<f64> = row.iter().map(|x| x - lse).collect();
    let token = if req["temperature"].as_f64() == Some(0.0) {
        (0..logprobs.len())
            .max_by(|&a, &b| logprobs[a].total_cmp(&logprobs[b]))
            .unwrap()
    } else {
        let mut rng = envs::rng::rng_for(&[req["seed"].as_u64().unwrap()]);
        let mut u: f64 = rng.random();
        let mut pick = logprobs.len() - 1;
        for (i, lp) in logprobs.iter().enumerate() {
            u -= lp.exp();
            if u <= 0.0 {
                pick = i;
                break;
            }
        }
        pick
    };
    let name = |id: usize| match flavor {
        Flavor::Vllm => format!("token_id:{id}"),
        Flavor::Sglang => format!("<{id}>"),
    };
    let mut top: Vec<usize> = (0..logprobs.len()).collect();
    top.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
    let top: serde_json::Map<String, Value> = top
        .iter()
        .take(5)
        .map(|&i| (name(i), json!(logprobs[i])))
        .collect();
    let mut choice = json!({
        "index": 0,
        "text": "",
        "logprobs": {"text_offset": [0], "tokens": [name(token)],
                     "token_logprobs": [logprobs[token]], "top_logprobs": [top]},
        "finish_reason": "length",
    });
    if flavor == Flavor::Sglang {
        choice["token_ids"] = json!([token]);
    }
    json!({
        "choices": [choice],
        "usage": {"prompt_tokens": prompt.len(), "completion_tokens": 1},
    })
}

/// A model directory and a run config in `dir`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    use rollout::hf::fixture::{TinyModel, tiny_config as tiny_model};
    let model = dir.join("tiny-llama");
    TinyModel::new(tiny_model()).write(&model).unwrap();
    (model, tiny_config(dir, 2))
}

fn train(cfg: &Path, model: &Path, out: &Path, url: &str, reload: &str) -> std::process::Output {
    arbor(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--rollout-server",
        url,
        "--rollout-server-reload",
        reload,
        "--out",
        out.to_str().unwrap(),
        "--name",
        "served",
        "--quiet",
    ])
}

/// Each RL step samples on the server after it loaded that step's policy: the policy after SFT
/// (3 steps), then after the first RL update; vLLM's prefix cache is reset after each reload;
/// the probe passes; only the last policy's directory is left.
#[test]
fn rl_steps_sample_on_servers_that_reload_each_new_policy() {
    for (flavor, reload) in [(Flavor::Sglang, "sglang"), (Flavor::Vllm, "vllm")] {
        let root = scratch(reload);
        let (model, cfg) = setup(&root);
        let (url, state) = start_server(flavor, false, &model);
        ok(&train(&cfg, &model, &root, &url, reload));
        let run = root.join("served");
        let serving = run.join("serving").canonicalize().unwrap();
        let dir = |v: u64| serving.join(format!("policy-{v}")).display().to_string();
        let state = state.lock().unwrap();
        let expected: Vec<String> = match flavor {
            Flavor::Sglang => vec![
                format!("/update_weights_from_disk {}", dir(3)),
                format!("/update_weights_from_disk {}", dir(4)),
            ],
            Flavor::Vllm => vec![
                format!("/collective_rpc {}", dir(3)),
                "/reset_prefix_cache".into(),
                format!("/collective_rpc {}", dir(4)),
                "/reset_prefix_cache".into(),
            ],
        };
        assert_eq!(state.calls, expected, "{reload}");
        assert!(state.completions > 0, "{reload}");
        let summary: Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["steps"], 2, "{reload}");
        // The served directory is a model directory of the policy after the first update.
        let left: Vec<String> = std::fs::read_dir(&serving)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["policy-4"], "{reload}");
        let served = rollout::hf::load_model_dir(&serving.join("policy-4")).unwrap();
        let start = rollout::hf::load_model_dir(&model).unwrap();
        assert_ne!(served.weights, start.weights, "{reload}");
    }
}

/// A server that acknowledges the reload but keeps its weights fails the probe; a server
/// without the asked-for endpoint (vLLM without its developer mode) is named: one-line errors.
#[test]
fn servers_that_do_not_reload_fail_the_run_with_one_line() {
    let root = scratch("stale");
    let (model, cfg) = setup(&root);
    let (url, _) = start_server(Flavor::Sglang, true, &model);
    let out = train(&cfg, &model, &root, &url, "sglang");
    assert_one_line_error(&out, "does not serve the trained policy");
    let (url, _) = start_server(Flavor::Sglang, false, &model);
    let out = train(&cfg, &model, &root.join("x"), &url, "vllm");
    assert_one_line_error(&out, "VLLM_SERVER_DEV_MODE");
    // A preset has no model directory to serve.
    let out = arbor(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--rollout-server",
        &url,
        "--rollout-server-reload",
        "vllm",
        "--out",
        root.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "needs model.dir");
}
