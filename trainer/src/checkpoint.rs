//! Checkpoints: weights, optimizer state and counters in a directory, written atomically
//! (DESIGN §8, §9, §11).
//!
//! # Layout
//! ```text
//! <root>/step-<N>/model.safetensors      policy weights
//! <root>/step-<N>/reference.safetensors  frozen KL reference (only when the trainer has one
//!                                        that is not its run's initial weights)
//! <root>/step-<N>/optimizer.safetensors  AdamW moments: `exp_avg.<name>`, `exp_avg_sq.<name>`;
//!                                        metadata `step` = updates applied
//! <root>/step-<N>/config.json            the architecture in the Hugging Face schema (Llama or
//!                                        Qwen2 `config.json`; arbor's own `ModelConfig` JSON in
//!                                        checkpoints of earlier versions is still read)
//! <root>/step-<N>/state.json             counters, seed, phase, trainer settings
//! <root>/step-<N>/<extra>                 the caller's files saved with it ([`save_with`]), e.g.
//!                                        a run's counters (`run_state.json`)
//! <root>/latest                          text file: the name of the newest complete checkpoint
//! ```
//! A checkpoint saved again at a step that `latest` already names (the same weights with new
//! caller state) goes to `step-<N>.1` (or back to `step-<N>`), so the one `latest` names is
//! never touched while the new one is written.
//!
//! # A checkpoint is a model directory
//! `config.json` (written by [`rollout::hf::config_file`]) and `model.safetensors` make every
//! checkpoint a Hugging Face model directory: `transformers.LlamaForCausalLM.from_pretrained`
//! (or `Qwen2ForCausalLM` for a config with q/k/v biases) and [`rollout::hf::load_model_dir`]
//! load it once it also holds a tokenizer. A run of a GGUF file or model directory passes its
//! model's files to [`save_with`] (`config.json` with the model's own keys and special tokens,
//! `tokenizer.json`, `tokenizer_config.json` with the chat template, `generation_config.json`:
//! [`rollout::hf::model_files`]), so its checkpoints are complete model directories; a preset
//! run's byte tokenizer has no `tokenizer.json`. arbor's own state stays in its own files
//! (`optimizer.safetensors`, `reference.safetensors`, `state.json`, the caller's).
//!
//! # Weights (`model.safetensors`, `reference.safetensors`)
//! f32 tensors under the Hugging Face Llama names in PyTorch `[out, in]` layout, with header
//! metadata `format = "pt"`. Tensors:
//!
//! | name | shape |
//! |---|---|
//! | `model.embed_tokens.weight` | `[vocab_size, d_model]` |
//! | `model.layers.{i}.input_layernorm.weight` | `[d_model]` |
//! | `model.layers.{i}.self_attn.q_proj.weight` | `[n_heads·head_dim, d_model]` |
//! | `model.layers.{i}.self_attn.k_proj.weight` | `[n_kv_heads·head_dim, d_model]` |
//! | `model.layers.{i}.self_attn.v_proj.weight` | `[n_kv_heads·head_dim, d_model]` |
//! | `model.layers.{i}.self_attn.{q,k,v}_proj.bias` | `[n_heads·head_dim]`, `[n_kv_heads·head_dim]` ×2 (only with `qkv_bias`) |
//! | `model.layers.{i}.self_attn.o_proj.weight` | `[d_model, n_heads·head_dim]` |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `[d_model]` |
//! | `model.layers.{i}.mlp.gate_proj.weight` | `[d_ff, d_model]` |
//! | `model.layers.{i}.mlp.up_proj.weight` | `[d_ff, d_model]` |
//! | `model.layers.{i}.mlp.down_proj.weight` | `[d_model, d_ff]` |
//! | `model.norm.weight` | `[d_model]` |
//! | `lm_head.weight` | `[vocab_size, d_model]` (absent when `tie_embeddings`) |
//!
//! The optimizer moments use the same names and layouts (PyTorch AdamW's `exp_avg` and
//! `exp_avg_sq`), prefixed by `exp_avg.` and `exp_avg_sq.`.
//!
//! # Atomicity
//! A checkpoint becomes visible as a whole, in one step. [`save_with`] writes every file
//! (temporary file, fsync, rename) into a hidden directory `.step-<N>.tmp`, fsyncs it, renames
//! it to its final name, fsyncs the root, and only then points `latest` at it (again temporary
//! file, fsync, rename, fsync). A crash at any instant therefore leaves `latest` naming either
//! the previous complete checkpoint, with the caller's files of that checkpoint, or the new one
//! (or no `latest` at all before the first save); leftovers of an interrupted save are hidden
//! or unnamed and are removed by the next save.
//!
//! For tests of exactly that, the environment variable `ARBOR_CRASH_AT=k` makes the process
//! exit (status 137, no destructors, like `kill -9`) at the `k`-th crash point of checkpoint
//! writing: after each temporary file is created, after it is filled and fsynced, after each
//! rename, and after each directory change of [`save_with`]. [`CRASH_POINTS_PER_FILE`] and
//! [`CRASH_POINTS_PER_SAVE`] say how many there are.
//!
//! # Loading
//! [`load`] checks that every file is present and parses, that every tensor is f32 with the shape
//! `config.json` implies and that no tensor is missing or extra, and returns typed errors
//! ([`TrainerError::MissingFile`], [`TrainerError::CorruptFile`], [`TrainerError::MissingTensor`],
//! [`TrainerError::ShapeMismatch`], [`TrainerError::UnexpectedTensor`]). [`resume`] also compares
//! the stored architecture with the one the run expects ([`TrainerError::ConfigMismatch`]).
//! Resuming is exact: weights, moments and counters round-trip bit-for-bit, so k steps + save +
//! load + m steps equals k + m uninterrupted steps.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use rollout::engine::{ModelConfig, Weights};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::TrainerError;
use crate::optim::AdamWState;
use crate::trainer::{Trainer, TrainerConfig, TrainerState};

/// File name of the policy weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the frozen reference weights.
pub const REFERENCE_FILE: &str = "reference.safetensors";
/// File name of the optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the architecture.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the counters and settings.
pub const STATE_FILE: &str = "state.json";
/// Name of the pointer to the newest checkpoint in a checkpoint root.
pub const LATEST_FILE: &str = "latest";

/// Version of the `state.json` layout.
const FORMAT_VERSION: u32 = 1;

/// Contents of `state.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct StateFile {
    format_version: u32,
    state: TrainerState,
    trainer_config: TrainerConfig,
    has_reference: bool,
    /// The reference is the run's initial weights and has no file (absent in checkpoints of
    /// earlier versions: false).
    #[serde(default)]
    reference_is_initial: bool,
}

/// Everything a checkpoint directory holds, verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The architecture.
    pub model_config: ModelConfig,
    /// The trainer settings of the run that wrote it.
    pub trainer_config: TrainerConfig,
    /// Policy weights.
    pub weights: Weights,
    /// Frozen reference weights, if the trainer had a reference and it is stored (see
    /// [`Checkpoint::reference_is_initial`]).
    pub reference: Option<Weights>,
    /// The trainer's reference was the weights its run started from
    /// ([`Trainer::freeze_reference_of_initial`]): the checkpoint does not store it, `load`
    /// leaves [`Checkpoint::reference`] empty, and [`Checkpoint::into_trainer`] needs it put
    /// back there (the run that resumes knows its initial weights).
    pub reference_is_initial: bool,
    /// Optimizer moments and step count.
    pub optimizer: AdamWState,
    /// Counters, seed, phase.
    pub state: TrainerState,
}

impl Checkpoint {
    /// The checkpoint's trainer state, taken from `trainer`.
    pub fn from_trainer(trainer: &Trainer) -> Self {
        Checkpoint {
            model_config: trainer.model_config().clone(),
            trainer_config: *trainer.config(),
            weights: trainer.weights(),
            reference: match trainer.reference_is_initial() {
                true => None,
                false => trainer.reference_weights(),
            },
            reference_is_initial: trainer.reference_is_initial(),
            optimizer: trainer.optimizer_state(),
            state: *trainer.state(),
        }
    }

    /// A trainer continuing this checkpoint on `device` with the stored settings. A checkpoint
    /// whose reference is the run's initial weights needs them in [`Checkpoint::reference`]
    /// (an error otherwise).
    pub fn into_trainer(self, device: &Device) -> Result<Trainer, TrainerError> {
        if self.reference_is_initial && self.reference.is_none() {
            return Err(TrainerError::Config {
                reason: "the checkpoint's KL reference is its run's initial weights, which \
                         were not given"
                    .into(),
            });
        }
        let mut trainer = Trainer::restore(
            &self.model_config,
            self.trainer_config,
            &self.weights,
            self.reference.as_ref(),
            &self.optimizer,
            self.state,
            device,
        )?;
        if let (true, Some(initial)) = (self.reference_is_initial, &self.reference) {
            trainer.set_initial_reference(initial)?;
        }
        Ok(trainer)
    }

    /// Checks that the checkpoint holds the `expected` architecture.
    pub fn check_model(&self, expected: &ModelConfig) -> Result<(), TrainerError> {
        if &self.model_config != expected {
            let json = |c: &ModelConfig| serde_json::to_string(c).expect("plain data serializes");
            return Err(TrainerError::ConfigMismatch {
                expected: json(expected),
                found: json(&self.model_config),
            });
        }
        Ok(())
    }
}

/// Crash points of one [`write_atomic`] call (see the module docs).
pub const CRASH_POINTS_PER_FILE: u64 = 3;
/// Crash points of one [`save_with`] call besides those of its files (see the module docs).
pub const CRASH_POINTS_PER_SAVE: u64 = 4;

/// The test hook of the module docs: exits the process at the `ARBOR_CRASH_AT`-th call.
fn crash_point() {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        std::env::var("ARBOR_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(at) = *at
        && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == at
    {
        std::process::exit(137);
    }
}

/// Writes `bytes` to `dir/name` atomically (temporary file, fsync, rename, fsync of `dir`).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TrainerError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        crash_point();
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        crash_point();
        fs::rename(&tmp, &path)?;
        crash_point();
        File::open(dir)?.sync_all()
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        TrainerError::io(&path, source)
    })
}

/// Serializes named tensors (with optional name prefix) to safetensors bytes.
fn safetensors_bytes(sets: &[(&str, &Weights)], metadata: HashMap<String, String>) -> Vec<u8> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, weights) in sets {
        for (name, t) in weights.iter() {
            let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            owned.push((format!("{prefix}{name}"), t.shape.clone(), bytes));
        }
    }
    // `Weights` keeps `data.len() == product(shape)`, so describing and serializing cannot fail.
    let views = owned.iter().map(|(name, shape, bytes)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .expect("Weights keeps data and shape consistent");
        (name.as_str(), view)
    });
    safetensors::serialize(views, Some(metadata)).expect("consistent tensors serialize")
}

/// Writes `trainer`'s checkpoint into `dir` (created if needed); see the module docs.
pub fn save_dir(dir: &Path, trainer: &Trainer) -> Result<(), TrainerError> {
    let ckpt = Checkpoint::from_trainer(trainer);
    fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(
        dir,
        MODEL_FILE,
        &safetensors_bytes(&[("", &ckpt.weights)], pt.clone()),
    )?;
    if let Some(reference) = &ckpt.reference {
        write_atomic(
            dir,
            REFERENCE_FILE,
            &safetensors_bytes(&[("", reference)], pt),
        )?;
    } else {
        match fs::remove_file(dir.join(REFERENCE_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TrainerError::io(dir.join(REFERENCE_FILE), e)),
        }
    }
    let opt_meta = HashMap::from([("step".to_string(), ckpt.optimizer.step.to_string())]);
    let opt = safetensors_bytes(
        &[
            ("exp_avg.", &ckpt.optimizer.exp_avg),
            ("exp_avg_sq.", &ckpt.optimizer.exp_avg_sq),
        ],
        opt_meta,
    );
    write_atomic(dir, OPTIMIZER_FILE, &opt)?;
    let config = rollout::hf::config_file(
        &rollout::hf::HfMeta::for_config(&ckpt.model_config),
        &ckpt.model_config,
        None,
    )?;
    write_atomic(dir, CONFIG_FILE, &config)?;
    let state = StateFile {
        format_version: FORMAT_VERSION,
        state: ckpt.state,
        trainer_config: ckpt.trainer_config,
        has_reference: ckpt.reference.is_some() || ckpt.reference_is_initial,
        reference_is_initial: ckpt.reference_is_initial,
    };
    write_atomic(dir, STATE_FILE, to_json(&state).as_bytes())?;
    Ok(())
}

/// Pretty JSON of plain data (maps with string keys only, so serialization cannot fail).
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain data serializes") + "\n"
}

/// Saves `trainer` as `root/step-<step>` and then points `root/latest` at it. Returns the
/// checkpoint directory. Same as [`save_with`] without extra files.
pub fn save(root: &Path, step: u64, trainer: &Trainer) -> Result<PathBuf, TrainerError> {
    save_with(root, step, trainer, &[])
}

/// Saves `trainer` and the caller's `extra` files (name, contents) as one checkpoint of `root`
/// that becomes visible atomically as a whole (see the module docs), and returns its directory
/// (`step-<step>`, or `step-<step>.1` when `latest` already names `step-<step>`).
pub fn save_with(
    root: &Path,
    step: u64,
    trainer: &Trainer,
    extra: &[(&str, &[u8])],
) -> Result<PathBuf, TrainerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| TrainerError::io(path, e)
    };
    fs::create_dir_all(root).map_err(io(root))?;
    let base = format!("step-{step}");
    let current = latest(root).ok();
    let name = if current.as_deref() == Some(root.join(&base).as_path()) {
        format!("{base}.1")
    } else {
        base.clone()
    };
    // Build the whole checkpoint out of sight.
    let tmp = root.join(format!(".{name}.tmp"));
    remove_dir_if_exists(&tmp)?;
    save_dir(&tmp, trainer)?;
    for (file, bytes) in extra {
        write_atomic(&tmp, file, bytes)?;
    }
    File::open(&tmp)
        .and_then(|d| d.sync_all())
        .map_err(io(&tmp))?;
    crash_point();
    // Whatever holds the final name is an unfinished or superseded save (never what `latest`
    // names): replace it.
    let dir = root.join(&name);
    remove_dir_if_exists(&dir)?;
    crash_point();
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io(root))?;
    crash_point();
    // The one step that makes it visible.
    write_atomic(root, LATEST_FILE, format!("{name}\n").as_bytes())?;
    // The checkpoint just superseded at the same step is no longer named by anything.
    if let Some(old) = current.filter(|c| c != &dir && c.starts_with(root)) {
        let same_step = old
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == base || n == format!("{base}.1"));
        if same_step {
            remove_dir_if_exists(&old)?;
        }
    }
    crash_point();
    Ok(dir)
}

/// Removes all but the newest `keep` checkpoints of `root` (by step; `keep = 0` keeps all).
/// The one `latest` names is never removed. Returns the removed directories.
pub fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>, TrainerError> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let current = latest(root).ok();
    let entries = fs::read_dir(root).map_err(|e| TrainerError::io(root, e))?;
    let mut steps: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("step-")?;
            let step = rest.split('.').next()?.parse().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    steps.sort();
    let mut removed = Vec::new();
    let excess = steps.len().saturating_sub(keep);
    for (_, dir) in steps.into_iter().take(excess) {
        if Some(&dir) != current.as_ref() {
            remove_dir_if_exists(&dir)?;
            removed.push(dir);
        }
    }
    Ok(removed)
}

/// Removes the directory `dir` and everything in it; nothing to do when it does not exist.
fn remove_dir_if_exists(dir: &Path) -> Result<(), TrainerError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrainerError::io(dir, e)),
    }
}

/// The checkpoint directory `root/latest` points at.
pub fn latest(root: &Path) -> Result<PathBuf, TrainerError> {
    let text = read(&root.join(LATEST_FILE))?;
    let name = String::from_utf8(text)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(['/', '\\']) && s != "..")
        .ok_or_else(|| TrainerError::CorruptFile {
            path: root.join(LATEST_FILE),
            reason: "expected the name of a checkpoint directory".into(),
        })?;
    Ok(root.join(name))
}

fn read(path: &Path) -> Result<Vec<u8>, TrainerError> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TrainerError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => TrainerError::io(path, e),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainerError> {
    serde_json::from_slice(&read(path)?).map_err(|e| TrainerError::CorruptFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The architecture in a checkpoint's `config.json`: the Hugging Face schema (it has a
/// `model_type`), or arbor's own `ModelConfig` JSON of checkpoints written before it.
fn read_model_config(path: &Path) -> Result<ModelConfig, TrainerError> {
    let value: serde_json::Value = read_json(path)?;
    let corrupt = |reason: String| TrainerError::CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    match value.as_object() {
        Some(map) if map.contains_key("model_type") => {
            rollout::hf::config_from_json(path, map).map_err(|e| corrupt(e.to_string()))
        }
        _ => serde_json::from_value(value).map_err(|e| corrupt(e.to_string())),
    }
}

/// Reads a safetensors file: its tensors (split by name prefix) and metadata.
fn read_safetensors(
    path: &Path,
    prefixes: &[&str],
) -> Result<(Vec<Weights>, HashMap<String, String>), TrainerError> {
    let bytes = read(path)?;
    let corrupt = |reason: String| TrainerError::CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut sets = vec![Weights::new(); prefixes.len()];
    for (name, view) in tensors.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor `{name}` is {:?}, not F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let Some((k, rest)) = prefixes
            .iter()
            .enumerate()
            .find_map(|(k, p)| name.strip_prefix(p).map(|rest| (k, rest)))
        else {
            return Err(TrainerError::UnexpectedTensor { name });
        };
        sets[k]
            .insert(rest, view.shape().to_vec(), data)
            .map_err(|e| corrupt(e.to_string()))?;
    }
    Ok((sets, metadata.metadata().clone().unwrap_or_default()))
}

/// Checks names and shapes of a weight set against `cfg`. With `partial`, missing tensors are
/// allowed (optimizer moments of parameters that never had a gradient).
fn check_shapes(weights: &Weights, cfg: &ModelConfig, partial: bool) -> Result<(), TrainerError> {
    let expected = Weights::expected_shapes(cfg);
    for (name, shape) in &expected {
        match weights.get(name) {
            None if partial => {}
            None => return Err(TrainerError::MissingTensor { name: name.clone() }),
            Some(t) if &t.shape != shape => {
                return Err(TrainerError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if let Some((name, _)) = weights
        .iter()
        .find(|(name, _)| !expected.iter().any(|(n, _)| n == name))
    {
        return Err(TrainerError::UnexpectedTensor {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Reads and verifies the checkpoint in `dir` (see the module docs).
pub fn load(dir: &Path) -> Result<Checkpoint, TrainerError> {
    let model_config = read_model_config(&dir.join(CONFIG_FILE))?;
    model_config.validate()?;
    let state_path = dir.join(STATE_FILE);
    let state: StateFile = read_json(&state_path)?;
    if state.format_version != FORMAT_VERSION {
        return Err(TrainerError::CorruptFile {
            path: state_path,
            reason: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        });
    }
    let (mut sets, _) = read_safetensors(&dir.join(MODEL_FILE), &[""])?;
    let weights = sets.remove(0);
    check_shapes(&weights, &model_config, false)?;
    let reference = if state.has_reference && !state.reference_is_initial {
        let (mut sets, _) = read_safetensors(&dir.join(REFERENCE_FILE), &[""])?;
        let reference = sets.remove(0);
        check_shapes(&reference, &model_config, false)?;
        Some(reference)
    } else {
        None
    };
    let opt_path = dir.join(OPTIMIZER_FILE);
    let (mut sets, metadata) = read_safetensors(&opt_path, &["exp_avg_sq.", "exp_avg."])?;
    let (exp_avg_sq, exp_avg) = (sets.remove(0), sets.remove(0));
    check_shapes(&exp_avg, &model_config, true)?;
    check_shapes(&exp_avg_sq, &model_config, true)?;
    let step = metadata
        .get("step")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| TrainerError::CorruptFile {
            path: opt_path,
            reason: "metadata `step` missing or not a number".into(),
        })?;
    Ok(Checkpoint {
        model_config,
        trainer_config: state.trainer_config,
        weights,
        reference,
        reference_is_initial: state.has_reference && state.reference_is_initial,
        optimizer: AdamWState {
            step,
            exp_avg,
            exp_avg_sq,
        },
        state: state.state,
    })
}

/// Loads `dir`, checks that its architecture is `expected`, and returns a trainer continuing it
/// on `device` with the stored trainer settings.
pub fn resume(
    dir: &Path,
    expected: &ModelConfig,
    device: &Device,
) -> Result<Trainer, TrainerError> {
    let ckpt = load(dir)?;
    ckpt.check_model(expected)?;
    ckpt.into_trainer(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::small_config;
    use crate::trainer::default_device;
    use crate::trainer::tests::{config, run_steps};

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("arbor-trainer-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// k steps + save + load + m steps equals k + m uninterrupted steps, bit for bit (weights,
    /// reference, optimizer moments, counters and step statistics).
    #[test]
    fn resume_is_exact() {
        let cfg = small_config();
        let root = tempdir("resume");
        let mut a = Trainer::new(&cfg, config(5)).unwrap();
        run_steps(&mut a, 0, 3); // 2 SFT + 1 RL, the reference is frozen
        let dir = save(&root, 3, &a).unwrap();
        assert_eq!(latest(&root).unwrap(), dir);
        let mut b = resume(&latest(&root).unwrap(), &cfg, &default_device()).unwrap();
        assert_eq!(Checkpoint::from_trainer(&b), Checkpoint::from_trainer(&a));
        let sa = run_steps(&mut a, 3, 5);
        let sb = run_steps(&mut b, 3, 5);
        assert_eq!(sa, sb);
        assert_eq!(Checkpoint::from_trainer(&a), Checkpoint::from_trainer(&b));
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        // A newer checkpoint moves `latest`.
        let newer = save(&root, 5, &a).unwrap();
        assert_eq!(latest(&root).unwrap(), newer);
        fs::remove_dir_all(&root).unwrap();
    }

    /// A reference that is the run's initial weights is not written: a checkpoint of an RL step
    /// holds no `reference.safetensors`, loads without a reference, refuses to become a trainer
    /// without the initial weights, and with them resumes exactly (the reference stays
    /// unwritten in later checkpoints). A reference frozen after an update is written.
    #[test]
    fn an_initial_reference_is_not_written_and_resumes_exactly() {
        let cfg = small_config();
        let root = tempdir("initial-ref");
        let initial = Weights::random(&cfg, 5);
        let mut a = Trainer::from_weights(&cfg, &initial, config(5), &default_device()).unwrap();
        assert!(a.freeze_reference_of_initial(&initial));
        run_steps(&mut a, 2, 3); // one RL step against the initial reference
        let dir = save(&root, 3, &a).unwrap();
        assert!(!dir.join(REFERENCE_FILE).exists());
        assert!(dir.join(MODEL_FILE).exists());
        let mut ckpt = load(&dir).unwrap();
        assert!(ckpt.reference_is_initial && ckpt.reference.is_none());
        assert!(ckpt.clone().into_trainer(&default_device()).is_err());
        assert!(resume(&dir, &cfg, &default_device()).is_err());
        ckpt.reference = Some(initial.clone());
        let mut b = ckpt.into_trainer(&default_device()).unwrap();
        assert!(b.reference_is_initial());
        assert_eq!(
            b.reference_weights().unwrap(),
            a.reference_weights().unwrap()
        );
        assert_eq!(run_steps(&mut a, 3, 5), run_steps(&mut b, 3, 5));
        assert_eq!(Checkpoint::from_trainer(&a), Checkpoint::from_trainer(&b));
        let again = save(&root, 5, &b).unwrap();
        assert!(!again.join(REFERENCE_FILE).exists());
        // After an update the policy is no longer the initial weights: the reference is stored.
        let mut c = Trainer::from_weights(&cfg, &initial, config(5), &default_device()).unwrap();
        run_steps(&mut c, 0, 1);
        assert!(!c.freeze_reference_of_initial(&initial));
        let stored = save(&root, 9, &c).unwrap();
        assert!(stored.join(REFERENCE_FILE).exists());
        assert!(load(&stored).unwrap().reference.is_some());
        fs::remove_dir_all(&root).unwrap();
    }

    /// Extra files travel inside the checkpoint; saving again at the step `latest` names writes
    /// a second directory and then retires the first, so `latest` never names a directory
    /// being written; leftovers of an interrupted save are replaced.
    #[test]
    fn save_with_keeps_extra_files_and_never_rewrites_the_latest() {
        let cfg = small_config();
        let root = tempdir("extra");
        let trainer = Trainer::new(&cfg, config(5)).unwrap();
        let first = save_with(&root, 7, &trainer, &[("run.json", b"one")]).unwrap();
        assert_eq!(first, root.join("step-7"));
        assert_eq!(fs::read(first.join("run.json")).unwrap(), b"one");
        let second = save_with(&root, 7, &trainer, &[("run.json", b"two")]).unwrap();
        assert_eq!(second, root.join("step-7.1"));
        assert_eq!(latest(&root).unwrap(), second);
        assert!(!first.exists(), "the superseded checkpoint is removed");
        assert_eq!(fs::read(second.join("run.json")).unwrap(), b"two");
        // A half-written leftover under the next name is replaced, not trusted.
        fs::create_dir_all(root.join("step-7")).unwrap();
        fs::write(root.join("step-7").join(MODEL_FILE), b"torn").unwrap();
        fs::create_dir_all(root.join(".step-9.tmp")).unwrap();
        let third = save_with(&root, 7, &trainer, &[("run.json", b"three")]).unwrap();
        assert_eq!(third, root.join("step-7"));
        assert_eq!(load(&third).unwrap(), Checkpoint::from_trainer(&trainer));
        assert!(!second.exists());
        let later = save_with(&root, 9, &trainer, &[]).unwrap();
        assert_eq!(latest(&root).unwrap(), later);
        assert!(!root.join(".step-9.tmp").exists());
        assert!(third.exists(), "checkpoints of other steps are kept");
        fs::remove_dir_all(&root).unwrap();
    }

    /// Pruning keeps the newest `keep` checkpoints by step (10 after 9), never the one
    /// `latest` names, and nothing with `keep = 0`.
    #[test]
    fn prune_keeps_the_newest() {
        let cfg = small_config();
        let root = tempdir("prune");
        let trainer = Trainer::new(&cfg, config(5)).unwrap();
        for step in [1, 2, 9, 10] {
            save(&root, step, &trainer).unwrap();
        }
        assert!(prune(&root, 0).unwrap().is_empty());
        let removed = prune(&root, 2).unwrap();
        assert_eq!(removed, vec![root.join("step-1"), root.join("step-2")]);
        assert!(root.join("step-9").is_dir() && root.join("step-10").is_dir());
        // `latest` pointing at an older step (a re-save) is kept whatever its age.
        fs::write(root.join(LATEST_FILE), "step-9\n").unwrap();
        assert!(prune(&root, 1).unwrap().is_empty());
        assert_eq!(latest(&root).unwrap(), root.join("step-9"));
        fs::remove_dir_all(&root).unwrap();
    }

    /// Resuming stays exact with q/k/v biases and Llama 3 RoPE scaling: bias weights and their
    /// optimizer moments round-trip under the standard names.
    #[test]
    fn resume_is_exact_with_biases_and_rope_scaling() {
        let cfg = ModelConfig {
            qkv_bias: true,
            rope_scaling: Some(rollout::engine::RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 32,
            }),
            ..small_config()
        };
        let root = tempdir("bias");
        let mut a = Trainer::new(&cfg, config(6)).unwrap();
        run_steps(&mut a, 0, 3);
        let dir = save(&root, 3, &a).unwrap();
        let mut b = resume(&dir, &cfg, &default_device()).unwrap();
        assert_eq!(Checkpoint::from_trainer(&b), Checkpoint::from_trainer(&a));
        let moments = &Checkpoint::from_trainer(&b).optimizer.exp_avg;
        assert!(
            moments
                .get("model.layers.1.self_attn.q_proj.bias")
                .is_some()
        );
        assert_eq!(run_steps(&mut a, 3, 5), run_steps(&mut b, 3, 5));
        assert_eq!(Checkpoint::from_trainer(&a), Checkpoint::from_trainer(&b));
        let bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let view = st.tensor("model.layers.0.self_attn.k_proj.bias").unwrap();
        assert_eq!(view.shape(), [cfg.n_kv_heads * cfg.head_dim()].as_slice());
        fs::remove_dir_all(&root).unwrap();
    }

    /// A Hugging Face directory (bf16, q/k/v biases, tied embeddings) → trainer → checkpoint
    /// → load gives the loaded weights bit for bit; after a training step, the trainer's
    /// weights saved as a Hugging Face directory load back bit for bit too.
    #[test]
    fn hugging_face_weights_round_trip_through_trainer_and_checkpoints() {
        use rollout::hf::fixture::{StoreDtype, TinyModel, tiny_config};
        use rollout::tokenizer::Tokenizer;
        let cfg = ModelConfig {
            qkv_bias: true,
            tie_embeddings: true,
            ..tiny_config()
        };
        let root = tempdir("hf");
        let mut spec = TinyModel::new(cfg.clone());
        spec.dtype = StoreDtype::Bf16;
        spec.write(&root.join("src")).unwrap();
        let hf = rollout::hf::load_model_dir(&root.join("src")).unwrap();
        let mut trainer =
            Trainer::from_weights(&hf.config, &hf.weights, config(3), &default_device()).unwrap();
        assert_eq!(trainer.weights(), hf.weights);
        let dir = save(&root.join("ckpt"), 0, &trainer).unwrap();
        let ckpt = load(&dir).unwrap();
        assert_eq!(ckpt.model_config, hf.config);
        let bits = |w: &Weights| -> Vec<(String, Vec<u32>)> {
            w.iter()
                .map(|(n, t)| (n.to_string(), t.data.iter().map(|v| v.to_bits()).collect()))
                .collect()
        };
        assert_eq!(bits(&ckpt.weights), bits(&hf.weights));

        // One SFT step on text encoded by the model's own tokenizer.
        let tok = &hf.tokenizer;
        let mut tokens = vec![tok.bos()];
        tokens.extend(tok.encode("Who mentors Kelda? "));
        let prompt_len = tokens.len();
        tokens.extend(tok.encode("answer[Tovin]"));
        tokens.push(tok.eos());
        let mask: Vec<bool> = (0..tokens.len()).map(|i| i >= prompt_len).collect();
        let batch = crate::pack::TrainBatch::new(
            crate::sft::sft_sequences([(&tokens[..], &mask[..])]).unwrap(),
        );
        let stats = trainer.sft_step(&batch).unwrap();
        assert!(stats.loss.is_finite() && stats.grad_norm > 0.0);
        let trained = trainer.weights();
        assert_ne!(trained, hf.weights);
        hf.save_with_weights(&root.join("out"), &trained).unwrap();
        let back = rollout::hf::load_model_dir(&root.join("out")).unwrap();
        assert_eq!(back.config, hf.config);
        assert_eq!(bits(&back.weights), bits(&trained));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn load_reports_broken_checkpoints() {
        let cfg = small_config();
        let root = tempdir("broken");
        let trainer = Trainer::new(&cfg, config(1)).unwrap();
        let fresh = |name: &str| {
            let dir = root.join(name);
            save_dir(&dir, &trainer).unwrap();
            dir
        };

        // Truncated weights.
        let dir = fresh("truncated");
        let path = dir.join(MODEL_FILE);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(&dir).unwrap_err();
        assert!(matches!(err, TrainerError::CorruptFile { .. }), "{err}");

        // Missing file.
        let dir = fresh("missing");
        fs::remove_file(dir.join(OPTIMIZER_FILE)).unwrap();
        let err = load(&dir).unwrap_err();
        assert!(
            matches!(err, TrainerError::MissingFile { ref path } if path.ends_with(OPTIMIZER_FILE))
        );

        // A tensor with the wrong shape.
        let dir = fresh("shape");
        let mut weights = trainer.weights();
        weights
            .insert(
                "model.norm.weight",
                vec![cfg.d_model + 1],
                vec![1.0; cfg.d_model + 1],
            )
            .unwrap();
        let bytes = safetensors_bytes(&[("", &weights)], HashMap::new());
        write_atomic(&dir, MODEL_FILE, &bytes).unwrap();
        let err = load(&dir).unwrap_err();
        assert!(
            matches!(err, TrainerError::ShapeMismatch { ref name, .. } if name == "model.norm.weight")
        );

        // Architecture mismatch.
        let dir = fresh("config");
        let other = ModelConfig {
            n_layers: cfg.n_layers + 1,
            ..cfg.clone()
        };
        let err = resume(&dir, &other, &default_device()).unwrap_err();
        assert!(matches!(err, TrainerError::ConfigMismatch { .. }), "{err}");
        // Unparseable state and a dangling `latest`.
        fs::write(dir.join(STATE_FILE), b"{ not json").unwrap();
        assert!(matches!(
            load(&dir).unwrap_err(),
            TrainerError::CorruptFile { .. }
        ));
        assert!(matches!(
            latest(&root).unwrap_err(),
            TrainerError::MissingFile { .. }
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn weights_file_is_plain_safetensors_with_hugging_face_names() {
        let cfg = small_config();
        let root = tempdir("format");
        let trainer = Trainer::new(&cfg, config(2)).unwrap();
        save_dir(&root, &trainer).unwrap();
        let bytes = fs::read(root.join(MODEL_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let expected = Weights::expected_shapes(&cfg);
        assert_eq!(st.names().len(), expected.len());
        for (name, shape) in expected {
            let view = st.tensor(&name).unwrap();
            assert_eq!(view.dtype(), Dtype::F32);
            assert_eq!(view.shape(), shape.as_slice());
        }
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        // config.json is in the Hugging Face schema and gives the architecture back.
        let stored: serde_json::Value =
            serde_json::from_slice(&fs::read(root.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(stored["model_type"], "llama");
        assert_eq!(stored["hidden_size"], cfg.d_model);
        assert_eq!(read_model_config(&root.join(CONFIG_FILE)).unwrap(), cfg);
        fs::remove_dir_all(&root).unwrap();
    }
}
