//! Hugging Face model directories: load a local Llama-family checkpoint (Llama 2/3.x, Qwen2/2.5,
//! Mistral, SmolLM2 and the like) into an engine [`ModelConfig`], [`Weights`] and an
//! [`HfTokenizer`], and write one back that both arbor and `transformers` read as the same model.
//!
//! # Map
//! - [`load_model_dir`] → [`HfModel`]: everything below in one call, checked against each other.
//! - [`load_config`] — `config.json` → [`ModelConfig`] + [`HfMeta`] (what saving needs to write
//!   the directory back) + the special token ids it names.
//! - [`load_weights`] — `model.safetensors` or the shards listed in
//!   `model.safetensors.index.json` → [`Weights`] (f32, f16 and bf16 converted to f32).
//! - [`load_tokenizer`] — `tokenizer.json` (+ special tokens from `config.json` or
//!   `tokenizer_config.json`) → [`HfTokenizer`].
//! - [`save_model_dir`] / [`HfModel::save`] — `config.json`, `model.safetensors` (f32) and the
//!   tokenizer files.
//! - `fixture` (feature `test-util`) — tiny random model directories written in code, for tests.
//! - [`Error`] (the crate's) — one variant per kind of malformed directory, each naming the file, field or
//!   tensor to fix.
//!
//! # `config.json`
//! | key | arbor | notes |
//! |---|---|---|
//! | `model_type` | — | `llama`, `qwen2` or `mistral`; anything else is [`Error::UnsupportedModelType`] |
//! | `hidden_size` | `d_model` | required |
//! | `num_hidden_layers` | `n_layers` | required |
//! | `num_attention_heads` | `n_heads` | required |
//! | `num_key_value_heads` | `n_kv_heads` | default `num_attention_heads` |
//! | `intermediate_size` | `d_ff` | required |
//! | `vocab_size` | `vocab_size` | required; must be at least the tokenizer's vocabulary |
//! | `max_position_embeddings` | `max_seq_len` | default 2048 (llama), 32768 (qwen2), 131072 (mistral); capped by an active sliding window |
//! | `rope_theta` | `rope_theta` | default 10000 (also read from `rope_parameters`) |
//! | `rope_scaling` | `rope_scaling` | `null`, `default` or `llama3`; others are unsupported |
//! | `rms_norm_eps` | `norm_eps` | default 1e-6 |
//! | `tie_word_embeddings` | `tie_embeddings` | default false |
//! | — | `qkv_bias` | true exactly for `qwen2` |
//! | `head_dim` | — | optional; must equal `hidden_size / num_attention_heads` |
//! | `hidden_act` | — | must be `silu` (the default) |
//! | `attention_bias`, `mlp_bias` (llama) | — | must be false (Llama's attention bias includes `o_proj.bias`) |
//! | `sliding_window` (mistral), `use_sliding_window` + `sliding_window` (qwen2) | `max_seq_len` | an active window caps the context: below the window, sliding-window attention is plain causal attention |
//! | `quantization_config`, `rope_interleaved: true` | — | unsupported |
//! | `bos_token_id`, `eos_token_id`, `pad_token_id` | tokenizer | an id or a list (the first id is used) |
//!
//! Other keys are ignored on load and kept on save. Dropout settings are ignored (arbor trains
//! without dropout).
//!
//! # Weights
//! Tensors are matched by their standard names ([`Weights::expected_shapes`]): a missing tensor,
//! an extra one, a misshapen one or one in an unsupported dtype is an error that
//! names it and its file (with a shard index, a tensor in a file the index does not assign it
//! to is an index error, which also covers a tensor stored twice). Tolerated: `*.rotary_emb.inv_freq` buffers (recomputed from the
//! config, so ignored) and, with tied embeddings, an `lm_head.weight` bit-identical to the
//! embedding (dropped). Non-finite values are an error. Files are read whole (no memory
//! mapping: the workspace forbids `unsafe`), one shard at a time, so loading needs about the
//! file size plus the f32 weights in memory.
//!
//! # Special tokens
//! BOS, EOS and padding come from `config.json` (`bos_token_id`, `eos_token_id`,
//! `pad_token_id`; with a list, its first id), else from the token names in
//! `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`). Without a BOS the EOS is
//! used (Qwen2 style: transcripts start with `<|endoftext|>`); without a padding token, the EOS.
//! No EOS anywhere is an error: actions end with it. Every id must lie inside the embedding.
//! No chat template is applied: prompts are the environment's plain text, encoded as they are.
//!
//! # Saving
//! [`save_model_dir`] writes `config.json` (the loaded one with the architecture keys rewritten
//! from the [`ModelConfig`], `torch_dtype = "float32"`), `model.safetensors` (f32, metadata
//! `format = "pt"`, one file; a stale `model.safetensors.index.json` in `dir` is removed), the
//! verbatim `tokenizer.json` and any `tokenizer_config.json`, `special_tokens_map.json` and
//! `generation_config.json` read at load time. Each file is written atomically (temporary file,
//! fsync, rename); the directory as a whole is not. Loading the result gives the same
//! config and bit-identical weights (f16/bf16 sources were converted to f32 once, exactly).

mod config;
#[cfg(any(test, feature = "test-util"))]
pub mod fixture;
mod weights;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::Error;
use crate::engine::{ModelConfig, Weights};
use crate::tokenizer::{HfTokenizer, SpecialTokens, Tokenizer};

pub use config::SUPPORTED_MODEL_TYPES;
pub use weights::load_weights;

/// File name of the architecture.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// File name of the tokenizer settings (special token names).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// File name of single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the shard index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Small files copied verbatim when a loaded model is saved again.
const SIDE_FILES: [&str; 3] = [
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "generation_config.json",
];

/// What a model directory holds besides the architecture, the weights and the tokenizer: the
/// `model_type`, the full `config.json` object (its other keys are written back on save) and
/// small side files.
#[derive(Debug, Clone, PartialEq)]
pub struct HfMeta {
    /// `llama`, `qwen2` or `mistral`.
    pub model_type: String,
    config_json: Map<String, Value>,
    side_files: Vec<(String, Vec<u8>)>,
}

impl HfMeta {
    /// The same metadata with one more file written verbatim on save (e.g.
    /// `tokenizer_config.json`), replacing one of that name.
    pub fn with_side_file(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.side_files.retain(|(n, _)| n != name);
        self.side_files.push((name.to_string(), bytes));
        self
    }

    /// `chat_template` of `tokenizer_config.json`, when it is one template (a string).
    pub fn chat_template(&self) -> Option<String> {
        let (_, bytes) = self
            .side_files
            .iter()
            .find(|(name, _)| name == TOKENIZER_CONFIG_FILE)?;
        let json: Value = serde_json::from_slice(bytes).ok()?;
        json.get("chat_template")?.as_str().map(str::to_string)
    }

    /// Metadata for a model that was not loaded from a directory: `qwen2` when the config has
    /// q/k/v biases, else `llama`; no other keys, no side files.
    pub fn for_config(cfg: &ModelConfig) -> Self {
        HfMeta {
            model_type: if cfg.qkv_bias { "qwen2" } else { "llama" }.to_string(),
            config_json: Map::new(),
            side_files: Vec::new(),
        }
    }

    /// The `config.json` object as loaded (empty for [`HfMeta::for_config`]).
    pub fn config_json(&self) -> &Map<String, Value> {
        &self.config_json
    }
}

/// A loaded model directory. Engine: `Engine::new(model.config.clone(), &model.weights)`;
/// trainer: `Trainer::from_weights(&model.config, …, &model.weights)`; samplers take
/// `&model.tokenizer` as their `&dyn Tokenizer`.
#[derive(Debug, Clone)]
pub struct HfModel {
    /// The architecture.
    pub config: ModelConfig,
    /// The weights, f32, under the standard names.
    pub weights: Weights,
    /// The tokenizer with the model's special tokens.
    pub tokenizer: HfTokenizer,
    /// What saving needs to write the directory back.
    pub meta: HfMeta,
}

impl HfModel {
    /// Writes this model to `dir` ([`save_model_dir`]).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        save_model_dir(
            dir,
            &self.meta,
            &self.config,
            &self.weights,
            &self.tokenizer,
        )
    }

    /// Writes this model's directory with other weights for the same architecture (e.g. the
    /// trainer's after fine-tuning), without cloning the model.
    pub fn save_with_weights(&self, dir: &Path, weights: &Weights) -> Result<(), Error> {
        save_model_dir(dir, &self.meta, &self.config, weights, &self.tokenizer)
    }
}

/// What [`load_config`] reads from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    /// The architecture.
    pub config: ModelConfig,
    /// Model type, the raw object and side files.
    pub meta: HfMeta,
    /// `bos_token_id`, if set.
    pub bos: Option<u32>,
    /// `eos_token_id` (first of a list), if set.
    pub eos: Option<u32>,
    /// `pad_token_id`, if set.
    pub pad: Option<u32>,
}

/// Loads the model directory `dir`: `config.json`, `tokenizer.json` (and
/// `tokenizer_config.json` if present) and the safetensors weights, checked against each other
/// (see the [module docs](self)). Cheap checks come first: a bad config or tokenizer fails
/// before any weight is read.
pub fn load_model_dir(dir: &Path) -> Result<HfModel, Error> {
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir.to_path_buf(),
            what: "the model directory",
        });
    }
    let loaded = load_config(dir)?;
    let tokenizer = load_tokenizer(dir, &loaded)?;
    let weights = load_weights(dir, &loaded.config)?;
    Ok(HfModel {
        config: loaded.config,
        weights,
        tokenizer,
        meta: loaded.meta,
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            what,
        },
        _ => Error::io(path, e),
    })
}

/// Reads a JSON object file.
fn read_json_object(path: &Path, what: &'static str) -> Result<Map<String, Value>, Error> {
    let bytes = read(path, what)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::InvalidJson {
            path: path.to_path_buf(),
            reason: "expected a JSON object".into(),
        }),
        Err(e) => Err(Error::InvalidJson {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Reads `dir/config.json` into a [`ModelConfig`] (see the table in the [module docs](self))
/// and collects the side files saving copies back.
pub fn load_config(dir: &Path) -> Result<LoadedConfig, Error> {
    let path = dir.join(CONFIG_FILE);
    let map = read_json_object(&path, "the model's config.json")?;
    let parsed = config::parse(&path, &map)?;
    let mut side_files = Vec::new();
    for name in SIDE_FILES {
        match fs::read(dir.join(name)) {
            Ok(bytes) => side_files.push((name.to_string(), bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir.join(name), e)),
        }
    }
    Ok(LoadedConfig {
        config: parsed.config,
        meta: HfMeta {
            model_type: parsed.model_type,
            config_json: map,
            side_files,
        },
        bos: parsed.bos,
        eos: parsed.eos,
        pad: parsed.pad,
    })
}

/// A special token's name in `tokenizer_config.json`: a string or `{"content": …}`.
fn named_token(tc: &Map<String, Value>, key: &str) -> Option<String> {
    match tc.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Reads `dir/tokenizer.json` and resolves the special tokens (see the
/// [module docs](self#special-tokens)); checks that the embedding covers the tokenizer's
/// vocabulary and the special ids.
pub fn load_tokenizer(dir: &Path, loaded: &LoadedConfig) -> Result<HfTokenizer, Error> {
    let path = dir.join(TOKENIZER_FILE);
    let bytes = read(&path, "the model's tokenizer.json")?;
    let json = String::from_utf8(bytes).map_err(|_| Error::Tokenizer {
        path: path.clone(),
        reason: "not UTF-8 text".into(),
    })?;
    let tc_path = dir.join(TOKENIZER_CONFIG_FILE);
    let tc = if tc_path.is_file() {
        read_json_object(&tc_path, "tokenizer settings")?
    } else {
        Map::new()
    };
    // Parse once without specials to look names up, then build with the resolved ids.
    let probe = HfTokenizer::from_json(
        &json,
        SpecialTokens {
            bos: u32::MAX,
            eos: u32::MAX,
            pad: u32::MAX,
        },
        &path,
    )?;
    if probe.vocab_size() > loaded.config.vocab_size {
        return Err(Error::VocabTooSmall {
            embedding: loaded.config.vocab_size,
            tokenizer: probe.vocab_size(),
        });
    }
    let by_name = |which: &'static str, key: &str| -> Result<Option<u32>, Error> {
        match named_token(&tc, key) {
            None => Ok(None),
            Some(name) => probe
                .token_to_id(&name)
                .map(Some)
                .ok_or(Error::SpecialToken {
                    which,
                    reason: format!(
                        "{TOKENIZER_CONFIG_FILE} names {name:?} as {key}, which is not in \
                     {TOKENIZER_FILE}"
                    ),
                }),
        }
    };
    let eos = match loaded.eos {
        Some(id) => id,
        None => by_name("eos", "eos_token")?.ok_or(Error::SpecialToken {
            which: "eos",
            reason: format!(
                "neither {CONFIG_FILE} (eos_token_id) nor {TOKENIZER_CONFIG_FILE} (eos_token) \
                 names one; actions end with it"
            ),
        })?,
    };
    let bos = match loaded.bos {
        Some(id) => id,
        None => by_name("bos", "bos_token")?.unwrap_or(eos),
    };
    let pad = match loaded.pad {
        Some(id) => id,
        None => by_name("pad", "pad_token")?.unwrap_or(eos),
    };
    let embedding = loaded.config.vocab_size;
    for (which, id) in [("bos", bos), ("eos", eos), ("pad", pad)] {
        if id as usize >= embedding {
            return Err(Error::SpecialToken {
                which,
                reason: format!("id {id} is outside the embedding (vocab_size {embedding})"),
            });
        }
    }
    // `add_bos_token: false` (as a GGUF export writes for SmolLM2): no BOS before prompts.
    let add_bos = tc.get("add_bos_token").and_then(Value::as_bool) != Some(false);
    Ok(probe
        .with_special_tokens(SpecialTokens { bos, eos, pad })
        .with_add_bos(add_bos))
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let result = write(&tmp).and_then(|()| {
        let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all());
        sync(&tmp).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync(dir).map_err(|e| Error::io(dir, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(path, |tmp| {
        File::create(tmp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io(tmp, e))
    })
}

/// Writes a model directory that [`load_model_dir`] and `transformers` load back as the same
/// model (see the [module docs](self#saving)). `weights` are checked against `cfg` first and
/// the tokenizer against the embedding; `dir` is created if needed.
pub fn save_model_dir(
    dir: &Path,
    meta: &HfMeta,
    cfg: &ModelConfig,
    weights: &Weights,
    tokenizer: &HfTokenizer,
) -> Result<(), Error> {
    weights.validate(cfg).map_err(|source| Error::Weights {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(Error::VocabTooSmall {
            embedding: cfg.vocab_size,
            tokenizer: tokenizer.vocab_size(),
        });
    }
    let files = model_files(meta, cfg, tokenizer)?;
    write_model_dir(dir, weights, &files)
}

/// Writes `weights` (f32 safetensors) and the model's other `files` ([`model_files`]: name,
/// contents) into `dir`, each file atomically: a model directory other tools load.
pub fn write_model_dir(
    dir: &Path,
    weights: &Weights,
    files: &[(String, Vec<u8>)],
) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(&dir.join(WEIGHTS_FILE), |tmp| {
        weights::write_f32(tmp, weights, metadata)
    })?;
    // A shard index left from an earlier save would take precedence over the new file.
    match fs::remove_file(dir.join(WEIGHTS_INDEX_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&dir.join(WEIGHTS_INDEX_FILE), e)),
    }
    for (name, bytes) in files {
        write_bytes_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// The `config.json` (Hugging Face schema) of `cfg`, as file contents: `meta`'s other keys
/// kept, special token ids written when `special` gives them. An error when `cfg` would not
/// load back from it exactly.
pub fn config_file(
    meta: &HfMeta,
    cfg: &ModelConfig,
    special: Option<SpecialTokens>,
) -> Result<Vec<u8>, Error> {
    let config_json = config::to_json(meta, cfg, special)?;
    let text = serde_json::to_string_pretty(&Value::Object(config_json))
        .expect("a JSON value serializes")
        + "\n";
    Ok(text.into_bytes())
}

/// The architecture a `config.json` object (Hugging Face schema) describes; `path` names the
/// file in errors.
pub fn config_from_json(path: &Path, map: &Map<String, Value>) -> Result<ModelConfig, Error> {
    Ok(config::parse(path, map)?.config)
}

/// Every file of a model directory except the weights, as (name, contents): `config.json`,
/// `tokenizer.json` and the side files (`tokenizer_config.json` with the chat template,
/// `special_tokens_map.json`, `generation_config.json`). What a training checkpoint adds to its
/// weights to be a model directory other tools load.
pub fn model_files(
    meta: &HfMeta,
    cfg: &ModelConfig,
    tokenizer: &HfTokenizer,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut files = vec![
        (
            CONFIG_FILE.to_string(),
            config_file(meta, cfg, Some(tokenizer.special_tokens()))?,
        ),
        (
            TOKENIZER_FILE.to_string(),
            tokenizer.json().as_bytes().to_vec(),
        ),
    ];
    files.extend(meta.side_files.iter().cloned());
    Ok(files)
}
