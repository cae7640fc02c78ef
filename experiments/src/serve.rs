//! RL rollouts on an inference server (`[rollout] server`, `reload` and `server_cmd`): the
//! run's policy reaches the server before every RL step that samples on it, and is sampled
//! through [`ServerPolicy`].
//!
//! Before each RL step the served policy must be the trainer's. When it is not (the first step
//! of an invocation, or any step after an update), [`Served::policy`] hands it over, as
//! `[rollout] reload` says:
//! - **`restart`** (llama.cpp's `llama-server`): writes the trainer's weights to
//!   `<run>/serving/policy.gguf` with [`rollout::gguf::save_gguf_like`] (F32 tensors,
//!   `model.dir`'s metadata), stops the server process it started before (if any), starts
//!   `server_cmd` with `{model}` replaced by that file (through `sh -c 'exec …'`, so stopping it
//!   stops the server itself) and waits until `GET /health` answers 200 (at most
//!   `rollout.timeout_s`). Restarting costs a model load per RL step (about a second for a
//!   135M model).
//! - **`sglang`** and **`vllm`**: write the trainer's weights as a model directory,
//!   `<run>/serving/policy-<V>/` (`V` = SFT + RL steps; `config.json`, `model.safetensors` in
//!   f32 and the model's tokenizer files, as in a checkpoint), and ask the running server to
//!   load it: SGLang's `POST /update_weights_from_disk` (`model_path`, `flush_cache`; the
//!   answer's `success` must be true), or vLLM's `POST /collective_rpc` with `reload_weights`
//!   and `weights_path` (vLLM serves it only with `VLLM_SERVER_DEV_MODE=1`) followed by
//!   `POST /reset_prefix_cache`, since that reload keeps the prefix cache. With `server_cmd`,
//!   arbor starts the server once, on the first directory; without it the server must already
//!   run. The directories of earlier policies are removed once the new one is served.
//!
//! Either way the server is then **probed**: the greedy next token after the first held-out
//! prompt, whose logprob the server reports, against the engine's logprob of that token with
//! the same weights. More than `rollout.probe_tolerance` ([`PROBE_TOLERANCE`] by default)
//! apart is an error: the server is not serving the trained policy (a reload that did not
//! happen, or one from stale files). The files are f32: serve them in f32 (SGLang's and vLLM's
//! `--dtype float32`), or loosen the tolerance for a server that computes in bf16 or f16.
//!
//! The last policy's file or directory stays in `<run>/serving/` when the run ends.
//!
//! A server process arbor started is stopped when the run is dropped. Tested: llama-server
//! (`experiments/tests/pretrained.rs`), and the SGLang and vLLM reload protocols against an
//! in-process server that loads the directories it is given into arbor's engine
//! (`experiments/tests/reload.rs`); a real SGLang or vLLM needs a GPU, which the development
//! machine lacks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rollout::engine::Engine;
use rollout::policy::{DecodeRequest, Policy, SamplingParams};
use rollout::server::{ServerConfig, ServerPolicy};
use serde_json::{Value, json};

use crate::config::{ServerReload, TrainConfig};

/// Largest |server − engine| logprob of the probe token accepted as the same policy by
/// default (`rollout.probe_tolerance`). The
/// served file holds the trained f32 weights, so only the summation order of llama.cpp's
/// kernels and the engine's differs; the end-to-end test of `experiments/tests/pretrained.rs`
/// passes this probe after every restart. For scale: serving the Q4_1 original instead (8-bit
/// activations) moves greedy logprobs by up to 0.09 (`rollout/tests/server.rs`).
pub const PROBE_TOLERANCE: f32 = 1e-2;

/// The served policy of a run (see the module docs).
pub struct Served {
    url: String,
    reload: ServerReload,
    command: Option<String>,
    /// The GGUF file the run started from (`restart`).
    source: Option<PathBuf>,
    /// The model directory's files besides the weights (`sglang`, `vllm`).
    files: Vec<(String, Vec<u8>)>,
    /// `<run>/serving`.
    dir: PathBuf,
    in_flight: usize,
    timeout: Duration,
    probe_tolerance: f32,
    child: Option<Child>,
    policy: Option<ServerPolicy>,
    /// The trainer version (SFT + RL steps) the server holds.
    version: Option<u64>,
}

impl Served {
    /// The served policy `cfg` asks for, if any (`dir` is the run directory, `files` the
    /// model directory's files besides the weights: `LoadedModel::files`).
    pub fn new(
        cfg: &TrainConfig,
        dir: &Path,
        files: &[(String, Vec<u8>)],
    ) -> anyhow::Result<Option<Served>> {
        let r = &cfg.rollout;
        let Some(url) = &r.server else {
            return Ok(None);
        };
        if cfg.rl.steps == 0 {
            return Ok(None); // no RL rollouts to serve
        }
        let source = match r.reload {
            ServerReload::Restart if r.server_cmd.is_none() => return Ok(None),
            ServerReload::Restart => Some(
                cfg.model
                    .dir
                    .clone()
                    .context("rollout.server_cmd needs model.dir to be a GGUF file")?,
            ),
            ServerReload::Sglang | ServerReload::Vllm if files.is_empty() => bail!(
                "rollout.reload = \"{}\" needs a model with a Hugging Face form (model.dir)",
                r.reload.name()
            ),
            ServerReload::Sglang | ServerReload::Vllm => None,
        };
        Ok(Some(Served {
            url: url.clone(),
            reload: r.reload,
            command: r.server_cmd.clone(),
            source,
            files: files.to_vec(),
            dir: dir.join("serving"),
            in_flight: r.in_flight,
            timeout: Duration::from_secs_f64(r.timeout_s),
            probe_tolerance: r.probe_tolerance,
            child: None,
            policy: None,
            version: None,
        }))
    }

    /// The server's policy, made the trainer's first when `version` is new: `weights` gives
    /// the trainer's weights, `engine` holds the same weights for the probe, `probe` is a
    /// prompt's tokens.
    pub fn policy(
        &mut self,
        version: u64,
        weights: impl FnOnce() -> rollout::engine::Weights,
        engine: &Engine,
        probe: &[u32],
    ) -> anyhow::Result<&mut ServerPolicy> {
        if self.version != Some(version) || self.policy.is_none() {
            self.version = None;
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
            match self.reload {
                ServerReload::Restart => {
                    self.stop();
                    let file = self.dir.join("policy.gguf");
                    let source = self.source.as_ref().expect("restart has a source");
                    rollout::gguf::save_gguf_like(source, &file, &weights())
                        .context("writing the served policy")?;
                    self.start(&file)?;
                }
                ServerReload::Sglang | ServerReload::Vllm => {
                    let dir = self.dir.join(format!("policy-{version}"));
                    remove_dir(&dir)?;
                    rollout::hf::write_model_dir(&dir, &weights(), &self.files)
                        .context("writing the served policy")?;
                    let dir = dir
                        .canonicalize()
                        .with_context(|| format!("resolving {}", dir.display()))?;
                    match (&self.policy, &self.command) {
                        (None, Some(_)) => {
                            self.stop();
                            self.start(&dir)?;
                        }
                        (None, None) => {
                            self.connect()?;
                            self.load(&dir)?;
                        }
                        (Some(_), _) => self.load(&dir)?,
                    }
                    // Earlier policies' directories, a resumed run's among them.
                    let current = format!("policy-{version}");
                    let listing = || format!("reading {}", self.dir.display());
                    for entry in std::fs::read_dir(&self.dir).with_context(listing)? {
                        let path = entry.with_context(listing)?.path();
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        if name.starts_with("policy-") && name != current {
                            remove_dir(&path)?;
                        }
                    }
                }
            }
            let policy = self.policy.as_mut().expect("started");
            check_probe(policy, engine, probe, self.probe_tolerance)?;
            self.version = Some(version);
        }
        Ok(self.policy.as_mut().expect("started"))
    }

    /// Asks the running server to load the model directory `dir` (`sglang`, `vllm`).
    fn load(&self, dir: &Path) -> anyhow::Result<()> {
        let call = |path: &str, body: Value| {
            rollout::server::call(
                &self.url,
                "POST",
                path,
                Some(&body.to_string()),
                self.timeout,
            )
        };
        let dir = dir.to_string_lossy();
        match self.reload {
            ServerReload::Sglang => {
                let answer = call(
                    "/update_weights_from_disk",
                    json!({"model_path": dir, "flush_cache": true}),
                )
                .context("SGLang did not load the new policy")?;
                let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                if v.get("success").and_then(Value::as_bool) != Some(true) {
                    let message = v.get("message").and_then(Value::as_str).unwrap_or(&answer);
                    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
                    if let Some((cut, _)) = line.char_indices().nth(300) {
                        line.truncate(cut);
                    }
                    bail!("SGLang did not load the new policy from {dir}: {line}");
                }
            }
            ServerReload::Vllm => {
                call(
                    "/collective_rpc",
                    json!({"method": "reload_weights", "kwargs": {"weights_path": dir}}),
                )
                .context(
                    "vLLM did not load the new policy (its /collective_rpc endpoint needs \
                     VLLM_SERVER_DEV_MODE=1 and a vLLM whose reload_weights takes weights_path)",
                )?;
                call("/reset_prefix_cache", json!({}))
                    .context("vLLM did not reset its prefix cache after the reload")?;
            }
            ServerReload::Restart => unreachable!("restart reloads by restarting"),
        }
        Ok(())
    }

    /// Starts `server_cmd` on `model` (a file or a directory) and connects once it answers.
    fn start(&mut self, model: &Path) -> anyhow::Result<()> {
        let command = self
            .command
            .as_ref()
            .expect("start needs server_cmd")
            .replace("{model}", &shell_quote(&model.to_string_lossy()));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start rollout.server_cmd `{command}`"))?;
        self.child = Some(child);
        let started = Instant::now();
        let endpoint = rollout::server::Endpoint::parse(&self.url).map_err(anyhow::Error::msg)?;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("rollout.server_cmd `{command}` exited ({status}) before serving");
            }
            if health(&endpoint) {
                break;
            }
            if started.elapsed() > self.timeout {
                self.stop();
                bail!(
                    "rollout server {} did not answer GET /health within {:.0} s of starting \
                     `{command}`",
                    self.url,
                    self.timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.connect()
    }

    /// Connects the policy to the server.
    fn connect(&mut self) -> anyhow::Result<()> {
        self.policy = Some(ServerPolicy::connect(ServerConfig {
            url: self.url.clone(),
            in_flight: self.in_flight,
            timeout_s: self.timeout.as_secs_f64(),
            ..ServerConfig::default()
        })?);
        Ok(())
    }

    fn stop(&mut self) {
        self.policy = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes `dir` and everything in it, if it exists.
fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET /health` answers 200.
fn health(endpoint: &rollout::server::Endpoint) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "GET {}/health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        endpoint.prefix, endpoint.host
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// `'text'` for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The server's greedy next token after `probe` and its logprob against the engine's logprob
/// of that token (see the module docs).
fn check_probe(
    policy: &mut ServerPolicy,
    engine: &Engine,
    probe: &[u32],
    tolerance: f32,
) -> anyhow::Result<()> {
    let seq = policy.start(probe)?;
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let served = policy.decode(&[DecodeRequest { seq, rng_key: 0 }], &greedy);
    policy.release(seq);
    let served = served?[0];
    let logits = engine.forward_full(probe);
    let row = logits.row(probe.len() - 1);
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    let ours = row
        .get(served.token as usize)
        .map(|&x| x - lse)
        .with_context(|| {
            format!(
                "the server's token {} is outside the vocabulary",
                served.token
            )
        })?;
    let gap = (ours - served.logprob).abs();
    if gap.is_nan() || gap > tolerance {
        bail!(
            "the rollout server does not serve the trained policy: probe token {} has logprob \
             {:.5} there and {ours:.5} in the engine",
            served.token,
            served.logprob
        );
    }
    Ok(())
}
