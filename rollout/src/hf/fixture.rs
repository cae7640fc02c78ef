//! Tiny Hugging Face model directories written in code (nothing is downloaded), for tests of
//! arbor and of programs built on it: random weights in the standard layout, a `config.json`,
//! and a `tokenizer.json` built here.
//!
//! - [`TinyModel`] — what to write (architecture, stored dtype, shards, tokenizer kind, seed);
//!   [`TinyModel::write`] returns the weights exactly as stored, i.e. what loading must give.
//! - [`tiny_config`] — a 2-layer grouped-query config whose vocabulary covers both tokenizers.
//! - [`byte_level_bpe_json`] and [`sentencepiece_json`] — the two tokenizers: a GPT-2-style
//!   byte-level BPE (the scheme of Llama 3, Qwen2, SmolLM2) and a Llama 2-style SentencePiece
//!   BPE with byte fallback.
//!
//! Compiled only for arbor's own tests and with the `test-util` feature.
//!
//! ```
//! use rollout::engine::Engine;
//! use rollout::hf::{fixture::{TinyModel, tiny_config}, load_model_dir};
//! use rollout::tokenizer::Tokenizer;
//!
//! let dir = std::env::temp_dir().join(format!("arbor-hf-doc-{}", std::process::id()));
//! TinyModel::new(tiny_config()).write(&dir)?;
//! let model = load_model_dir(&dir)?;
//! let engine = Engine::new(model.config.clone(), &model.weights)?;
//! let mut prompt = vec![model.tokenizer.bos()];
//! prompt.extend(model.tokenizer.encode("search[Kelda]"));
//! assert_eq!(engine.forward_full(&prompt).nrows(), prompt.len());
//! // Samplers take `&dyn Tokenizer`: pass `&model.tokenizer`.
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Map, Value, json};

use super::{CONFIG_FILE, HfMeta, TOKENIZER_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, config};
use crate::Error;
use crate::engine::{ModelConfig, Weights};
use crate::tokenizer::SpecialTokens;

/// How [`TinyModel::write`] stores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    /// 32-bit floats (exact).
    F32,
    /// IEEE half precision (values rounded to nearest even).
    F16,
    /// bfloat16 (values rounded to nearest even).
    Bf16,
}

/// Which tokenizer [`TinyModel::write`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyTokenizer {
    /// [`byte_level_bpe_json`].
    ByteLevelBpe,
    /// [`sentencepiece_json`].
    SentencePiece,
}

/// A tiny model directory to write. Build with [`TinyModel::new`] and adjust the fields.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyModel {
    /// The architecture (its `vocab_size` should cover the tokenizer: 512 does for both).
    pub config: ModelConfig,
    /// `llama`, `qwen2` or `mistral`; by default `qwen2` when the config has q/k/v biases,
    /// else `llama`.
    pub model_type: String,
    /// Stored dtype. By default F32.
    pub dtype: StoreDtype,
    /// Number of weight files: 1 writes `model.safetensors`, more write
    /// `model-0000k-of-0000n.safetensors` and `model.safetensors.index.json`. By default 1.
    pub shards: usize,
    /// Weight seed. By default 0.
    pub seed: u64,
    /// Standard deviation of the random matrices and biases. By default 0.08, so that logits
    /// spread over O(1) and a wrong component would show in comparisons.
    pub std: f32,
    /// The tokenizer. By default byte-level BPE.
    pub tokenizer: TinyTokenizer,
}

/// A small grouped-query config for fixtures: vocabulary 512, d=64, 2 layers, 4 query heads on
/// 2 kv heads, ff 96, context 256, `rope_theta` 10000, `rms_norm_eps` 1e-6, untied, no biases.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 512,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 96,
        max_seq_len: 256,
        rope_theta: 10_000.0,
        norm_eps: 1e-6,
        tie_embeddings: false,
        qkv_bias: false,
        rope_scaling: None,
    }
}

impl TinyModel {
    /// A model with `config` and the defaults documented on the fields.
    pub fn new(config: ModelConfig) -> Self {
        TinyModel {
            model_type: HfMeta::for_config(&config).model_type,
            config,
            dtype: StoreDtype::F32,
            shards: 1,
            seed: 0,
            std: 0.08,
            tokenizer: TinyTokenizer::ByteLevelBpe,
        }
    }

    /// Writes `config.json`, `tokenizer.json` and the weights into `dir` (created if needed)
    /// and returns the weights as stored (rounded to the stored dtype, as f32).
    pub fn write(&self, dir: &Path) -> Result<Weights, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (tokenizer, special) = match self.tokenizer {
            TinyTokenizer::ByteLevelBpe => byte_level_bpe_json(),
            TinyTokenizer::SentencePiece => sentencepiece_json(),
        };
        let meta = HfMeta {
            model_type: self.model_type.clone(),
            config_json: Map::new(),
            side_files: Vec::new(),
        };
        let mut cfg_json = config::to_json(&meta, &self.config, Some(special))?;
        let dtype_name = match self.dtype {
            StoreDtype::F32 => "float32",
            StoreDtype::F16 => "float16",
            StoreDtype::Bf16 => "bfloat16",
        };
        cfg_json.insert("torch_dtype".into(), json!(dtype_name));
        let text = serde_json::to_string_pretty(&Value::Object(cfg_json)).expect("JSON") + "\n";
        write(&dir.join(CONFIG_FILE), text.as_bytes())?;
        write(&dir.join(TOKENIZER_FILE), tokenizer.as_bytes())?;

        let random = Weights::random_with_std(&self.config, self.seed, self.std);
        let mut stored = Weights::new();
        let mut encoded: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape) in Weights::expected_shapes(&self.config) {
            let values = &random.get(&name).expect("random weights are complete").data;
            let (round, bytes): (Vec<f32>, Vec<u8>) = match self.dtype {
                StoreDtype::F32 => (
                    values.clone(),
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                StoreDtype::F16 => {
                    let h: Vec<half::f16> =
                        values.iter().map(|&v| half::f16::from_f32(v)).collect();
                    (
                        h.iter().map(|v| v.to_f32()).collect(),
                        h.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
                    )
                }
                StoreDtype::Bf16 => {
                    let h: Vec<half::bf16> =
                        values.iter().map(|&v| half::bf16::from_f32(v)).collect();
                    (
                        h.iter().map(|v| v.to_f32()).collect(),
                        h.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
                    )
                }
            };
            stored
                .insert(name.clone(), shape.clone(), round)
                .expect("shape from the config");
            encoded.push((name, shape, bytes));
        }
        let dtype = match self.dtype {
            StoreDtype::F32 => Dtype::F32,
            StoreDtype::F16 => Dtype::F16,
            StoreDtype::Bf16 => Dtype::BF16,
        };
        let shards = self.shards.clamp(1, encoded.len());
        let per_shard = encoded.len().div_ceil(shards);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let mut weight_map = Map::new();
        for (k, chunk) in encoded.chunks(per_shard).enumerate() {
            let file = if shards == 1 {
                WEIGHTS_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, shards)
            };
            let views = chunk.iter().map(|(name, shape, bytes)| {
                let view = TensorView::new(dtype, shape.clone(), bytes).expect("consistent");
                (name.clone(), view)
            });
            let bytes = safetensors::serialize(views, Some(metadata.clone())).map_err(|e| {
                Error::CorruptWeights {
                    path: dir.join(&file),
                    reason: e.to_string(),
                }
            })?;
            write(&dir.join(&file), &bytes)?;
            for (name, _, _) in chunk {
                weight_map.insert(name.clone(), json!(file));
            }
        }
        if shards > 1 {
            let index = json!({ "metadata": {}, "weight_map": weight_map });
            let text = serde_json::to_string_pretty(&index).expect("JSON") + "\n";
            write(&dir.join(WEIGHTS_INDEX_FILE), text.as_bytes())?;
        }
        Ok(stored)
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Adds `pieces` (each a list of vocabulary symbols) to a BPE vocabulary as left-to-right
/// merges: `a + b`, then `ab + c`, … Each new symbol gets the next id.
fn add_prefix_merges(
    pieces: &[Vec<String>],
    vocab: &mut Map<String, Value>,
    merges: &mut Vec<Value>,
) {
    for symbols in pieces {
        let mut acc = symbols[0].clone();
        for s in &symbols[1..] {
            let merged = format!("{acc}{s}");
            if !vocab.contains_key(&merged) {
                let id = vocab.len();
                vocab.insert(merged.clone(), json!(id));
                merges.push(json!([acc, s]));
            }
            acc = merged;
        }
    }
}

/// An added-token entry of `tokenizer.json`.
fn added_token(id: usize, content: &str) -> Value {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    })
}

/// A GPT-2-style byte-level BPE `tokenizer.json` and its special tokens: ids 0..=255 are the
/// bytes (in the byte-level alphabet), then merged symbols for a few words of the built-in
/// environments (`search`, `answer`, ` the`, …) and some deliberately awkward ones (`aÃ` ends
/// inside `é`, `©b` starts inside it), then `<|begin_of_text|>` (BOS), `<|end_of_text|>` (EOS)
/// and `<|pad|>`, all special. Pre-tokenizer and decoder are `ByteLevel`.
pub fn byte_level_bpe_json() -> (String, SpecialTokens) {
    let alphabet = crate::tokenizer::byte_level_chars();
    let spell = |text: &str| -> Vec<String> {
        text.bytes()
            .map(|b| alphabet[b as usize].to_string())
            .collect()
    };
    let mut vocab = Map::new();
    for b in 0..=255u8 {
        vocab.insert(alphabet[b as usize].to_string(), json!(b));
    }
    let mut merges = Vec::new();
    let mut pieces: Vec<Vec<String>> = Vec::new();
    // Tokens that cut a character: "a" + first byte of "é", and its second byte + "b".
    pieces.push(spell("a\u{e9}")[..2].to_vec());
    pieces.push(vec![spell("\u{e9}")[1].clone(), "b".to_string()]);
    for word in [
        "search", "answer", "move", "up", "down", "left", "right", " the", " of", " is", "ing",
        "Kelda", "Tovin", "\u{e9}", "\u{20ac}", " [", "]\n", "ent", "er", "on",
    ] {
        pieces.push(spell(word));
    }
    add_prefix_merges(&pieces, &mut vocab, &mut merges);
    let bos = vocab.len();
    let added = vec![
        added_token(bos, "<|begin_of_text|>"),
        added_token(bos + 1, "<|end_of_text|>"),
        added_token(bos + 2, "<|pad|>"),
    ];
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    let special = SpecialTokens {
        bos: bos as u32,
        eos: bos as u32 + 1,
        pad: bos as u32 + 2,
    };
    (
        serde_json::to_string_pretty(&tokenizer).expect("JSON"),
        special,
    )
}

/// A Llama 2-style SentencePiece BPE `tokenizer.json` and its special tokens: `<unk>` = 0,
/// `<s>` = 1 (BOS), `</s>` = 2 (EOS, also padding), byte-fallback tokens `<0x00>`..`<0xFF>`
/// = 3..=258, `▁`, the printable ASCII characters, then merged pieces (`▁search`, `ing`, …).
/// The normalizer prepends `▁` and turns spaces into `▁`; the decoder turns `▁` back into
/// spaces, joins byte runs, and strips the leading space.
pub fn sentencepiece_json() -> (String, SpecialTokens) {
    const SPACE: &str = "\u{2581}";
    let mut vocab = Map::new();
    for (id, tok) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
    }
    for b in 0..=255u32 {
        let id = vocab.len();
        vocab.insert(format!("<0x{b:02X}>"), json!(id));
    }
    let id = vocab.len();
    vocab.insert(SPACE.to_string(), json!(id));
    for c in '!'..='~' {
        let id = vocab.len();
        vocab.insert(c.to_string(), json!(id));
    }
    let mut merges = Vec::new();
    let spell = |word: &str| -> Vec<String> {
        word.chars()
            .map(|c| {
                if c == ' ' {
                    SPACE.to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let pieces: Vec<Vec<String>> = [
        " search", " answer", " move", " up", " down", " the", " of", " is", "ing", " Kelda",
        "Tovin", "ent", "er", "on", "[", "]",
    ]
    .iter()
    .map(|w| spell(w))
    .collect();
    add_prefix_merges(&pieces, &mut vocab, &mut merges);
    let added = vec![
        added_token(0, "<unk>"),
        added_token(1, "<s>"),
        added_token(2, "</s>"),
    ];
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    let special = SpecialTokens {
        bos: 1,
        eos: 2,
        pad: 2,
    };
    (
        serde_json::to_string_pretty(&tokenizer).expect("JSON"),
        special,
    )
}
