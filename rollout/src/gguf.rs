//! GGUF model files (llama.cpp, Ollama): a Llama-family GGUF v3 file into an engine
//! [`ModelConfig`], f32 [`Weights`] under the Hugging Face names, an [`HfTokenizer`] built from
//! the file's vocabulary, and its chat template.
//!
//! # Format (what this reader relies on)
//! Little-endian throughout. Header: magic `GGUF`, version (3; 2 is read the same way), tensor
//! count (u64), metadata count (u64). Metadata: key (u64 length + UTF-8), value type (u32) and
//! value: u8/i8/u16/i16/u32/i32/f32/bool/string/array/u64/i64/f64 (types 0..=12; an array is
//! element type, u64 count, elements). Tensor infos: name, dimension count (u32), dimensions
//! (u64 each, the fastest-varying first, so `[ne0, ne1]` is PyTorch's `[ne1, ne0]`), ggml type
//! (u32), offset (u64) from the data section, which starts at the next multiple of
//! `general.alignment` (default 32) after the infos.
//!
//! # Tensor types
//! Dequantized to f32 at load, block by block (32 values per block): `F32`, `F16`, `BF16`,
//! `Q8_0` (f16 scale `d`, 32 × i8: `d·q`), `Q4_0` (f16 `d`, 16 bytes of nibbles, low nibbles
//! first: `d·(q − 8)`) and `Q4_1` (f16 `d`, f16 `m`, nibbles: `d·q + m`). Any other type
//! (K-quants, IQ types) is [`Error::UnsupportedType`], naming the tensor and the type.
//!
//! # Weights
//! `token_embd` → `model.embed_tokens`, `blk.N.attn_{q,k,v,output}` → `self_attn.{q,k,v,o}_proj`,
//! `blk.N.ffn_{gate,up,down}` → `mlp.*_proj`, `blk.N.attn_norm` / `ffn_norm` →
//! `input_layernorm` / `post_attention_layernorm`, `output_norm` → `model.norm`, `output` →
//! `lm_head` (absent: tied embeddings). llama.cpp's converter permutes the rows of the q and k
//! projections (per head, the two rotary halves interleaved, for its RoPE); they are permuted
//! back, so the weights are the Hugging Face model's and the engine's RoPE applies unchanged.
//!
//! # Tokenizer
//! `tokenizer.ggml.model = "gpt2"` (byte-level BPE with `tokenizer.ggml.merges`) is supported,
//! with the pre-tokenizer named by `tokenizer.ggml.pre`: `gpt2`/`default` (the GPT-2 split) and
//! `smollm` (single digits, then the GPT-2 split). Tokens of type 3 (control) are special added
//! tokens. BOS, EOS and padding come from `tokenizer.ggml.{bos,eos,padding}_token_id`.
//! `tokenizer.ggml.add_bos_token` (true when absent) decides whether transcripts start with the
//! BOS ([`crate::tokenizer::Tokenizer::add_bos`]; SmolLM2's is false). Other tokenizer models
//! (`llama` SentencePiece and the like) are [`Error::Unsupported`].

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::Error;
use crate::engine::{ModelConfig, Weights};
use crate::tokenizer::{HfTokenizer, SpecialTokens};

/// A loaded GGUF model.
#[derive(Debug, Clone)]
pub struct GgufModel {
    /// The architecture.
    pub config: ModelConfig,
    /// The weights, f32, under the Hugging Face names.
    pub weights: Weights,
    /// The tokenizer built from the file's vocabulary.
    pub tokenizer: HfTokenizer,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.add_bos_token` (true when absent).
    pub add_bos: bool,
}

impl GgufModel {
    /// What [`crate::hf::save_model_dir`] needs to write this model as a Hugging Face
    /// directory: a Llama `config.json`, and `tokenizer_config.json` (special token names,
    /// `add_bos_token`, the chat template) and `generation_config.json` (special ids).
    pub fn hf_meta(&self) -> crate::hf::HfMeta {
        use crate::tokenizer::Tokenizer;
        let t = &self.tokenizer;
        let name = |id: u32| t.id_to_token(id).unwrap_or_default();
        let mut tc = json!({
            "bos_token": name(t.bos()),
            "eos_token": name(t.eos()),
            "pad_token": name(t.pad()),
            "add_bos_token": self.add_bos,
        });
        if let Some(template) = &self.chat_template {
            tc["chat_template"] = json!(template);
        }
        let generation = json!({"bos_token_id": t.bos(), "eos_token_id": t.eos()});
        let bytes = |v: &Value| {
            (serde_json::to_string_pretty(v).expect("JSON serializes") + "\n").into_bytes()
        };
        crate::hf::HfMeta::for_config(&self.config)
            .with_side_file(crate::hf::TOKENIZER_CONFIG_FILE, bytes(&tc))
            .with_side_file("generation_config.json", bytes(&generation))
    }

    /// Writes this model as a Hugging Face directory ([`GgufModel::hf_meta`]), with `weights`
    /// (this model's or fine-tuned ones of the same architecture).
    pub fn save_hf(&self, dir: &Path, weights: &Weights) -> Result<(), crate::Error> {
        crate::hf::save_model_dir(dir, &self.hf_meta(), &self.config, weights, &self.tokenizer)
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
enum Meta {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

/// One tensor's description.
#[derive(Debug, Clone)]
struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    kind: u32,
    offset: u64,
}

/// A cursor over the file's bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        // No count can exceed the bytes left (every element takes at least one byte).
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.pos)
            .ok_or_else(|| format!("count {n} at byte {} exceeds the file", self.pos - 8))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("string at byte {at} is not UTF-8"))
    }
    fn value(&mut self, kind: u32, depth: usize) -> Result<Meta, String> {
        Ok(match kind {
            0 => Meta::Int(self.u8()?.into()),
            1 => Meta::Int((self.u8()? as i8).into()),
            2 => Meta::Int(self.u16()?.into()),
            3 => Meta::Int((self.u16()? as i16).into()),
            4 => Meta::Int(self.u32()?.into()),
            5 => Meta::Int((self.u32()? as i32).into()),
            6 => Meta::Float(f32::from_bits(self.u32()?).into()),
            7 => Meta::Bool(self.u8()? != 0),
            8 => Meta::Str(self.string()?),
            9 if depth == 0 => {
                let inner = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Meta::Array(items)
            }
            10 => Meta::Int(self.u64()?.into()),
            11 => Meta::Int((self.u64()? as i64).into()),
            12 => Meta::Float(f64::from_bits(self.u64()?)),
            other => {
                return Err(format!(
                    "unknown metadata type {other} at byte {}",
                    self.pos - 4
                ));
            }
        })
    }
}

/// ggml type numbers and names.
fn type_name(kind: u32) -> String {
    match kind {
        0 => "F32".into(),
        1 => "F16".into(),
        2 => "Q4_0".into(),
        3 => "Q4_1".into(),
        6 => "Q5_0".into(),
        7 => "Q5_1".into(),
        8 => "Q8_0".into(),
        10..=15 => format!("Q{}_K", kind - 8),
        30 => "BF16".into(),
        other => format!("type {other}"),
    }
}

/// Bytes per block and values per block of a supported type.
fn block_layout(kind: u32) -> Option<(usize, usize)> {
    match kind {
        0 => Some((4, 1)),
        1 | 30 => Some((2, 1)),
        2 => Some((18, 32)),
        3 => Some((20, 32)),
        8 => Some((34, 32)),
        _ => None,
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Dequantizes `n` values of type `kind` from `bytes` (exactly the tensor's bytes).
fn dequantize(kind: u32, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match kind {
        0 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        1 => out.extend(bytes.chunks_exact(2).map(f16)),
        30 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        8 => {
            for block in bytes.chunks_exact(34) {
                let d = f16(&block[..2]);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        2 => {
            for block in bytes.chunks_exact(18) {
                let d = f16(&block[..2]);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| d * (f32::from(q & 0xF) - 8.0)));
                out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
            }
        }
        3 => {
            for block in bytes.chunks_exact(20) {
                let (d, m) = (f16(&block[..2]), f16(&block[2..4]));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0xF) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
        _ => unreachable!("only supported types reach dequantize"),
    }
    out
}

/// Undoes llama.cpp's row permutation of a q or k projection with `heads` heads: GGUF row
/// `h·hd + 2i + j` is Hugging Face row `h·hd + j·hd/2 + i`.
fn unpermute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(data, rows, cols, heads, false)
}

/// llama.cpp's row permutation of a q or k projection (the inverse of [`unpermute`]).
fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(data, rows, cols, heads, true)
}

/// Moves rows between the Hugging Face order (`h·hd + j·hd/2 + i`) and llama.cpp's
/// (`h·hd + 2i + j`), towards llama.cpp's when `to_gguf`.
fn move_rows(data: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let gguf = (h * hd + 2 * i + j) * cols;
                let hf = (h * hd + j * (hd / 2) + i) * cols;
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

/// A GGUF file's header: metadata (parsed, and its raw bytes) and tensor infos.
struct Header {
    /// The metadata count of the header.
    n_meta: usize,
    /// The key-value pairs, as the file stores them.
    meta_bytes: std::ops::Range<usize>,
    meta: HashMap<String, Meta>,
    infos: Vec<TensorInfo>,
    /// `general.alignment` (32 when absent).
    align: usize,
    /// Where the tensor data start.
    data_start: usize,
}

/// Reads the header of the GGUF file `path` whose contents are `bytes`.
fn read_header(bytes: &[u8], path: &Path) -> Result<Header, Error> {
    let malformed = |reason: String| Error::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4).map_err(&malformed)? != b"GGUF" {
        return Err(malformed("no GGUF magic".into()));
    }
    let version = r.u32().map_err(&malformed)?;
    if !(2..=3).contains(&version) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("GGUF version {version}"),
        });
    }
    let n_tensors = r.len().map_err(&malformed)?;
    let n_meta = r.len().map_err(&malformed)?;
    let meta_start = r.pos;
    let mut meta = HashMap::new();
    for _ in 0..n_meta {
        let key = r.string().map_err(&malformed)?;
        let kind = r.u32().map_err(&malformed)?;
        let value = r
            .value(kind, 0)
            .map_err(|e| malformed(format!("metadata {key}: {e}")))?;
        meta.insert(key, value);
    }
    let meta_bytes = meta_start..r.pos;
    let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
    for _ in 0..n_tensors {
        let name = r.string().map_err(&malformed)?;
        let n_dims = r.u32().map_err(&malformed)?;
        if n_dims == 0 || n_dims > 4 {
            return Err(malformed(format!("tensor {name} has {n_dims} dimensions")));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64())
            .collect::<Result<Vec<_>, _>>()
            .map_err(&malformed)?;
        let kind = r.u32().map_err(&malformed)?;
        let offset = r.u64().map_err(&malformed)?;
        infos.push(TensorInfo {
            name,
            dims,
            kind,
            offset,
        });
    }
    let align = match meta.get("general.alignment") {
        Some(Meta::Int(a)) if *a > 0 && *a <= 1 << 16 => *a as usize,
        _ => 32,
    };
    Ok(Header {
        n_meta,
        meta_bytes,
        meta,
        infos,
        align,
        data_start: r.pos.div_ceil(align) * align,
    })
}

/// Reads a GGUF file: see the module docs.
pub fn load_gguf(path: &Path) -> Result<GgufModel, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::io(path, source))?;
    let malformed = |reason: String| Error::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let Header {
        meta,
        infos,
        data_start,
        ..
    } = read_header(&bytes, path)?;

    let file = MetaView { meta: &meta, path };
    let arch = file.string("general.architecture")?;
    if arch != "llama" {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("architecture {arch} (arbor reads llama)"),
        });
    }
    let config = ModelConfig {
        vocab_size: 0, // from the embedding below
        d_model: file.int("llama.embedding_length")?,
        n_layers: file.int("llama.block_count")?,
        n_heads: file.int("llama.attention.head_count")?,
        n_kv_heads: file
            .int("llama.attention.head_count_kv")
            .or_else(|_| file.int("llama.attention.head_count"))?,
        d_ff: file.int("llama.feed_forward_length")?,
        max_seq_len: file.int("llama.context_length")?,
        rope_theta: file.float("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
        norm_eps: file.float("llama.attention.layer_norm_rms_epsilon")? as f32,
        tie_embeddings: !infos.iter().any(|t| t.name == "output.weight"),
        qkv_bias: false,
        rope_scaling: None,
    };
    if meta.contains_key("llama.rope.scaling.type") {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: "llama.rope.scaling.type".into(),
        });
    }

    // Tensors.
    let mut weights = Weights::new();
    let mut vocab_size = 0;
    for t in &infos {
        let Some(name) = hf_name(&t.name) else {
            if t.name.ends_with("rope_freqs.weight") {
                return Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    what: "rope_freqs (RoPE scaling factors)".into(),
                });
            }
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                reason: format!("unexpected tensor {}", t.name),
            });
        };
        let Some((block_bytes, block_len)) = block_layout(t.kind) else {
            return Err(Error::UnsupportedType {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                kind: type_name(t.kind),
            });
        };
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| {
                n > 0 && n.is_multiple_of(block_len) && n / block_len <= bytes.len() / block_bytes
            })
            .ok_or_else(|| malformed(format!("tensor {} has dimensions {:?}", t.name, t.dims)))?;
        let size = n / block_len * block_bytes;
        let start = usize::try_from(t.offset)
            .ok()
            .and_then(|o| o.checked_add(data_start))
            .filter(|s| s.checked_add(size).is_some_and(|e| e <= bytes.len()))
            .ok_or_else(|| malformed(format!("tensor {} lies outside the file", t.name)))?;
        let mut data = dequantize(t.kind, &bytes[start..start + size], n);
        // PyTorch layout: dimensions reversed (ne0 is the row length).
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if name == "model.embed_tokens.weight" {
            vocab_size = shape[0];
        }
        let heads = if name.ends_with("q_proj.weight") {
            Some(config.n_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(config.n_kv_heads)
        } else {
            None
        };
        if let (Some(heads), [rows, cols]) = (heads, shape.as_slice()) {
            if heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
                return Err(malformed(format!(
                    "tensor {} does not split into {heads} heads",
                    t.name
                )));
            }
            data = unpermute(&data, *rows, *cols, heads);
        }
        if data.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                reason: format!("tensor {} holds a non-finite value", t.name),
            });
        }
        weights
            .insert(&name, shape, data)
            .map_err(|e| Error::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
    }
    let config = ModelConfig {
        vocab_size,
        ..config
    };
    let invalid = |reason: String| Error::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    config.validate().map_err(|e| invalid(e.to_string()))?;
    weights
        .validate(&config)
        .map_err(|e| invalid(e.to_string()))?;

    let tokenizer = tokenizer(&file, vocab_size)?;
    let chat_template = file.string("tokenizer.chat_template").ok();
    let add_bos = !matches!(
        meta.get("tokenizer.ggml.add_bos_token"),
        Some(Meta::Bool(false))
    );
    Ok(GgufModel {
        config,
        weights,
        tokenizer,
        chat_template,
        add_bos,
    })
}

/// Writes `weights` (the architecture of the GGUF file `source`, e.g. fine-tuned from it) as a
/// GGUF file at `out` that llama.cpp loads: `source`'s metadata copied byte for byte (tokenizer,
/// chat template, architecture), then every tensor of `source`, in its order and under its name,
/// as F32 with the values of `weights` (q and k rows permuted back to llama.cpp's order). F32
/// keeps a served policy exactly the trained one (a quantized export would not be). Written
/// atomically (temporary file, fsync, rename).
pub fn save_gguf_like(source: &Path, out: &Path, weights: &Weights) -> Result<(), Error> {
    let bytes = std::fs::read(source).map_err(|e| Error::io(source, e))?;
    let header = read_header(&bytes, source)?;
    let file = MetaView {
        meta: &header.meta,
        path: source,
    };
    let n_heads = file.int("llama.attention.head_count")?;
    let n_kv_heads = file.int("llama.attention.head_count_kv").unwrap_or(n_heads);
    let align = header.align as u64;
    let infos: Vec<(&String, &Vec<u64>)> =
        header.infos.iter().map(|t| (&t.name, &t.dims)).collect();
    let meta_bytes = &bytes[header.meta_bytes.clone()];
    let n_meta = header.n_meta;
    // The tensors, f32, in GGUF row order.
    let mut tensors = Vec::with_capacity(infos.len());
    for &(name, dims) in &infos {
        let hf = hf_name(name).ok_or_else(|| Error::Invalid {
            path: source.to_path_buf(),
            reason: format!("unexpected tensor {name}"),
        })?;
        let t = weights.get(&hf).ok_or_else(|| Error::Invalid {
            path: out.to_path_buf(),
            reason: format!("the weights lack {hf}"),
        })?;
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        if t.shape != shape {
            return Err(Error::Invalid {
                path: out.to_path_buf(),
                reason: format!("{hf} has shape {:?}, {name} {shape:?}", t.shape),
            });
        }
        let heads = if hf.ends_with("q_proj.weight") {
            Some(n_heads)
        } else if hf.ends_with("k_proj.weight") {
            Some(n_kv_heads)
        } else {
            None
        };
        tensors.push(match (heads, shape.as_slice()) {
            (Some(h), [rows, cols]) => permute(&t.data, *rows, *cols, h),
            _ => t.data.clone(),
        });
    }
    let mut head = Vec::with_capacity(meta_bytes.len() + 64 * infos.len() + 32);
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    head.extend_from_slice(&(n_meta as u64).to_le_bytes());
    head.extend_from_slice(meta_bytes);
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(infos.len());
    for (&(name, dims), data) in infos.iter().zip(&tensors) {
        head.extend_from_slice(&(name.len() as u64).to_le_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&0u32.to_le_bytes()); // F32
        head.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + 4 * data.len() as u64).div_ceil(align) * align;
    }
    let data_start = (head.len() as u64).div_ceil(align) * align;
    head.resize(data_start as usize, 0);
    crate::hf::write_atomic(out, |tmp| {
        use std::io::Write;
        let io = |e| Error::io(tmp, e);
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
        w.write_all(&head).map_err(io)?;
        let mut written = 0u64;
        for (data, at) in tensors.iter().zip(offsets) {
            let pad = at - written;
            w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            for x in data {
                w.write_all(&x.to_le_bytes()).map_err(io)?;
            }
            written = at + 4 * data.len() as u64;
        }
        w.flush().map_err(io)
    })
}

/// The Hugging Face name of a GGUF tensor (`None` for one arbor does not know).
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Typed access to the metadata, with errors naming the key.
struct MetaView<'a> {
    meta: &'a HashMap<String, Meta>,
    path: &'a Path,
}

impl MetaView<'_> {
    fn missing(&self, key: &str, expected: &'static str) -> Error {
        Error::MissingKey {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
        }
    }
    fn int(&self, key: &str) -> Result<usize, Error> {
        match self.meta.get(key) {
            Some(Meta::Int(v)) if *v >= 0 && *v <= 1 << 40 => Ok(*v as usize),
            _ => Err(self.missing(key, "non-negative integer")),
        }
    }
    fn float(&self, key: &str) -> Result<f64, Error> {
        match self.meta.get(key) {
            Some(Meta::Float(v)) if v.is_finite() => Ok(*v),
            Some(Meta::Int(v)) => Ok(*v as f64),
            _ => Err(self.missing(key, "number")),
        }
    }
    fn string(&self, key: &str) -> Result<String, Error> {
        match self.meta.get(key) {
            Some(Meta::Str(s)) => Ok(s.clone()),
            _ => Err(self.missing(key, "string")),
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<String>, Error> {
        match self.meta.get(key) {
            Some(Meta::Array(items)) => items
                .iter()
                .map(|m| match m {
                    Meta::Str(s) => Ok(s.clone()),
                    _ => Err(self.missing(key, "array of strings")),
                })
                .collect(),
            _ => Err(self.missing(key, "array of strings")),
        }
    }
    fn ints(&self, key: &str) -> Result<Vec<i128>, Error> {
        match self.meta.get(key) {
            Some(Meta::Array(items)) => items
                .iter()
                .map(|m| match m {
                    Meta::Int(v) => Ok(*v),
                    _ => Err(self.missing(key, "array of integers")),
                })
                .collect(),
            _ => Err(self.missing(key, "array of integers")),
        }
    }
}

/// The pre-tokenizer (Hugging Face `tokenizer.json` form) of a `tokenizer.ggml.pre` name.
fn pre_tokenizer(name: &str) -> Option<Value> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    match name {
        "gpt2" | "default" => Some(byte_level),
        "smollm" => Some(json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level,
        ]})),
        _ => None,
    }
}

/// The tokenizer of the file's vocabulary (module docs).
fn tokenizer(file: &MetaView<'_>, vocab_size: usize) -> Result<HfTokenizer, Error> {
    let path = file.path;
    let model = file.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("tokenizer model {model} (arbor reads gpt2 byte-level BPE)"),
        });
    }
    let pre_name = file
        .string("tokenizer.ggml.pre")
        .unwrap_or_else(|_| "default".into());
    let Some(pre) = pre_tokenizer(&pre_name) else {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("pre-tokenizer {pre_name} (arbor knows gpt2, default, smollm)"),
        });
    };
    let tokens = file.strings("tokenizer.ggml.tokens")?;
    let merges = file.strings("tokenizer.ggml.merges")?;
    let types = file.ints("tokenizer.ggml.token_type").unwrap_or_default();
    if tokens.len() > vocab_size {
        return Err(Error::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "{} tokens but an embedding of {vocab_size} rows",
                tokens.len()
            ),
        });
    }
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let id = |key: &str| -> Result<u32, Error> {
        let v = file.int(key)?;
        u32::try_from(v)
            .ok()
            .filter(|&v| (v as usize) < tokens.len())
            .ok_or_else(|| file.missing(key, "token id inside the vocabulary"))
    };
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let special = SpecialTokens {
        bos: id("tokenizer.ggml.bos_token_id").unwrap_or(eos),
        eos,
        pad: id("tokenizer.ggml.padding_token_id").unwrap_or(eos),
    };
    let add_bos = !matches!(
        file.meta.get("tokenizer.ggml.add_bos_token"),
        Some(Meta::Bool(false))
    );
    HfTokenizer::from_json(&spec.to_string(), special, path)
        .map(|t| t.with_add_bos(add_bos))
        .map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantization of each block type against values computed by hand.
    #[test]
    fn blocks_dequantize_as_documented() {
        let d = half::f16::from_f32(0.5).to_bits().to_le_bytes();
        let m = half::f16::from_f32(-1.0).to_bits().to_le_bytes();
        // Q8_0: d·q.
        let mut q8 = d.to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(8, &q8, 32);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);
        // Q4_0: low nibbles are values 0..16, high nibbles 16..32, both minus 8.
        let mut q40 = d.to_vec();
        q40.extend((0..16).map(|i| (i as u8) | (15 - i as u8) << 4));
        let v = dequantize(2, &q40, 32);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[15], 3.5);
        assert_eq!(v[16], 3.5);
        assert_eq!(v[31], -4.0);
        // Q4_1: d·q + m.
        let mut q41 = d.to_vec();
        q41.extend(m);
        q41.extend((0..16).map(|i| (i as u8) | (15 - i as u8) << 4));
        let v = dequantize(3, &q41, 32);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 6.5);
        assert_eq!(v[16], 6.5);
    }

    /// Unpermuting inverts llama.cpp's permutation (written here from its definition:
    /// reshape to (heads, 2, hd/2, cols), swap axes 1 and 2).
    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (heads, hd, cols) = (3, 8, 2);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for half in 0..2 {
                for i in 0..hd / 2 {
                    let src = (h * hd + half * hd / 2 + i) * cols;
                    let dst = (h * hd + i * 2 + half) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute(&gguf, rows, cols, heads), hf);
        assert_eq!(permute(&hf, rows, cols, heads), gguf);
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").unwrap(),
            "model.layers.12.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    /// Bad bytes are errors, never panics.
    #[test]
    fn malformed_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("arbor-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases: [&[u8]; 4] = [
            b"",
            b"GGML\x03\0\0\0",
            b"GGUF\x03\0\0\0\x01\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"GGUF\x09\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let path = dir.join(format!("{i}.gguf"));
            std::fs::write(&path, bytes).unwrap();
            let err = load_gguf(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("{i}.gguf")), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
