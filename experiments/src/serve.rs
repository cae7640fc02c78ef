//! RL rollouts on an inference server (`[rollout] server` and `server_cmd`): the run's policy
//! is written as a GGUF file, served by a command arbor starts (llama.cpp's `llama-server`),
//! and sampled through [`ServerPolicy`].
//!
//! Before each RL step the served policy must be the trainer's. When it is not (the first step
//! of an invocation, or any step after an update), [`Served::policy`]:
//! 1. writes the trainer's weights to `<run>/serving/policy.gguf` with
//!    [`rollout::gguf::save_gguf_like`] (F32 tensors, `model.dir`'s metadata);
//! 2. stops the server process it started before (if any) and starts `server_cmd` with
//!    `{model}` replaced by that file (through `sh -c 'exec …'`, so stopping it stops the
//!    server itself);
//! 3. waits until `GET /health` answers 200 (at most `rollout.timeout_s`);
//! 4. **probes** it: the greedy next token after the first held-out prompt, whose logprob the
//!    server reports, against the engine's logprob of that token with the same weights. More
//!    than [`PROBE_TOLERANCE`] apart is an error: the server is not serving the trained policy.
//!
//! The server process is stopped when the run is dropped. Restarting costs a model load per RL
//! step (about a second for a 135M model); servers with a weight-reload endpoint (SGLang's
//! `update_weights_from_disk`, vLLM's reload) could skip the restart, but none is tested here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rollout::engine::Engine;
use rollout::policy::{DecodeRequest, Policy, SamplingParams};
use rollout::server::{ServerConfig, ServerPolicy};

use crate::config::TrainConfig;

/// Largest |server − engine| logprob of the probe token accepted as the same policy. The
/// served file holds the trained f32 weights, so only the summation order of llama.cpp's
/// kernels and the engine's differs; the end-to-end test of `experiments/tests/pretrained.rs`
/// passes this probe after every restart. For scale: serving the Q4_1 original instead (8-bit
/// activations) moves greedy logprobs by up to 0.09 (`rollout/tests/server.rs`).
pub const PROBE_TOLERANCE: f32 = 1e-2;

/// The served policy of a run (see the module docs).
pub struct Served {
    url: String,
    command: String,
    source: PathBuf,
    file: PathBuf,
    in_flight: usize,
    timeout: Duration,
    child: Option<Child>,
    policy: Option<ServerPolicy>,
    /// The trainer version (SFT + RL steps) the server holds.
    version: Option<u64>,
}

impl Served {
    /// The served policy `cfg` asks for, if any (`dir` is the run directory).
    pub fn new(cfg: &TrainConfig, dir: &Path) -> anyhow::Result<Option<Served>> {
        let r = &cfg.rollout;
        let (Some(url), Some(command)) = (&r.server, &r.server_cmd) else {
            return Ok(None);
        };
        let source = cfg
            .model
            .dir
            .clone()
            .context("rollout.server_cmd needs model.dir to be a GGUF file")?;
        Ok(Some(Served {
            url: url.clone(),
            command: command.clone(),
            source,
            file: dir.join("serving").join("policy.gguf"),
            in_flight: r.in_flight,
            timeout: Duration::from_secs_f64(r.timeout_s),
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
            self.stop();
            self.version = None;
            let dir = self.file.parent().expect("the file is inside serving/");
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            rollout::gguf::save_gguf_like(&self.source, &self.file, &weights())
                .context("writing the served policy")?;
            self.start()?;
            let policy = self.policy.as_mut().expect("started");
            check_probe(policy, engine, probe)?;
            self.version = Some(version);
        }
        Ok(self.policy.as_mut().expect("started"))
    }

    /// Starts `server_cmd` on the policy file and connects once it answers.
    fn start(&mut self) -> anyhow::Result<()> {
        let command = self
            .command
            .replace("{model}", &shell_quote(&self.file.to_string_lossy()));
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
fn check_probe(policy: &mut ServerPolicy, engine: &Engine, probe: &[u32]) -> anyhow::Result<()> {
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
    if gap.is_nan() || gap > PROBE_TOLERANCE {
        bail!(
            "the rollout server does not serve the trained policy: probe token {} has logprob \
             {:.5} there and {ours:.5} in the engine",
            served.token,
            served.logprob
        );
    }
    Ok(())
}
