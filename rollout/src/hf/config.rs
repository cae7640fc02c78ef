//! `config.json` ↔ [`ModelConfig`] (the table in the [module docs](super)).

use std::path::Path;

use serde_json::{Map, Value, json};

use super::HfMeta;
use crate::Error;
use crate::engine::{ModelConfig, RopeScaling};
use crate::tokenizer::SpecialTokens;

/// The `model_type`s arbor loads.
pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["llama", "qwen2", "mistral"];

/// What [`parse`] extracts.
pub(super) struct Parsed {
    pub model_type: String,
    pub config: ModelConfig,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// Typed access to a JSON object with errors that name the file and the key.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
    /// Prefix for nested objects (`rope_scaling.`).
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn error(&self, key: &str, reason: String) -> Error {
        Error::ConfigField {
            path: self.path.to_path_buf(),
            field: format!("{}{key}", self.prefix),
            reason,
        }
    }

    /// The value of `key`; `None` when absent or `null`.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.error(key, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }

    fn required_usize(&self, key: &str) -> Result<usize, Error> {
        self.usize(key)?
            .ok_or_else(|| self.error(key, "missing (required)".into()))
    }

    fn f32(&self, key: &str) -> Result<Option<f32>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.error(key, format!("expected a number, found {v}"))),
        }
    }

    fn required_f32(&self, key: &str) -> Result<f32, Error> {
        self.f32(key)?
            .ok_or_else(|| self.error(key, "missing (required)".into()))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected true or false, found {v}"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a string, found {v}"))),
        }
    }

    fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected an object, found {v}"))),
        }
    }

    /// A token id: an integer, or a non-empty list of integers (its first is used).
    fn token_id(&self, key: &str) -> Result<Option<u32>, Error> {
        let bad = |v: &Value| {
            self.error(
                key,
                format!("expected a token id or a list of ids, found {v}"),
            )
        };
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Array(items)) => match items.first() {
                None => Ok(None),
                Some(first) => id(first).map(Some).ok_or_else(|| bad(v)),
            },
            Some(v) => id(v).map(Some).ok_or_else(|| bad(v)),
        }
    }

    fn unsupported(&self, key: &str, value: &Value, reason: &str) -> Error {
        Error::UnsupportedOption {
            path: self.path.to_path_buf(),
            option: format!("{}{key}", self.prefix),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `max_position_embeddings` when `config.json` leaves it out (the `transformers` defaults).
fn default_max_positions(model_type: &str) -> usize {
    match model_type {
        "qwen2" => 32_768,
        "mistral" => 131_072,
        _ => 2_048,
    }
}

/// The Hugging Face key for an engine config field (for error messages).
fn hf_key(field: &'static str) -> &'static str {
    match field {
        "d_model" => "hidden_size",
        "n_layers" => "num_hidden_layers",
        "n_heads" => "num_attention_heads",
        "n_kv_heads" => "num_key_value_heads",
        "d_ff" => "intermediate_size",
        "max_seq_len" => "max_position_embeddings",
        "norm_eps" => "rms_norm_eps",
        other => other,
    }
}

/// Reads a `rope_scaling` (or transformers 5 `rope_parameters`) object.
fn rope_scaling(
    path: &Path,
    obj: &Map<String, Value>,
    prefix: &'static str,
) -> Result<Option<RopeScaling>, Error> {
    let f = Fields {
        path,
        map: obj,
        prefix,
    };
    let kind = match f.str("rope_type")? {
        Some(k) => Some(k),
        None => f.str("type")?,
    };
    match kind {
        None | Some("default") => Ok(None),
        Some("llama3") => Ok(Some(RopeScaling::Llama3 {
            factor: f.required_f32("factor")?,
            low_freq_factor: f.required_f32("low_freq_factor")?,
            high_freq_factor: f.required_f32("high_freq_factor")?,
            original_max_position_embeddings: f
                .required_usize("original_max_position_embeddings")?,
        })),
        Some(other) => Err(f.unsupported(
            "rope_type",
            &Value::String(other.to_string()),
            "only plain RoPE (`default`) and `llama3` scaling are supported",
        )),
    }
}

/// Parses a `config.json` object (see the table in the [module docs](super)).
pub(super) fn parse(path: &Path, map: &Map<String, Value>) -> Result<Parsed, Error> {
    let f = Fields {
        path,
        map,
        prefix: "",
    };
    let model_type = f
        .str("model_type")?
        .ok_or_else(|| f.error("model_type", "missing (required)".into()))?;
    if !SUPPORTED_MODEL_TYPES.contains(&model_type) {
        return Err(Error::UnsupportedModelType {
            path: path.to_path_buf(),
            model_type: model_type.to_string(),
        });
    }
    if let Some(q) = f.get("quantization_config") {
        return Err(f.unsupported(
            "quantization_config",
            q,
            "quantized weights cannot be loaded; use an unquantized (f32, f16 or bf16) checkpoint",
        ));
    }
    match f.str("hidden_act")? {
        None | Some("silu") => {}
        Some(act) => {
            return Err(f.unsupported("hidden_act", &json!(act), "the MLP is SwiGLU with `silu`"));
        }
    }
    if f.bool("rope_interleaved")? == Some(true) {
        return Err(f.unsupported(
            "rope_interleaved",
            &json!(true),
            "RoPE rotates halves (`rotate_half`), not interleaved pairs",
        ));
    }
    if model_type == "llama" {
        if f.bool("attention_bias")? == Some(true) {
            return Err(f.unsupported(
                "attention_bias",
                &json!(true),
                "Llama's attention bias includes o_proj.bias; arbor supports q/k/v biases only \
                 (as in qwen2)",
            ));
        }
        if f.bool("mlp_bias")? == Some(true) {
            return Err(f.unsupported(
                "mlp_bias",
                &json!(true),
                "the MLP projections have no biases",
            ));
        }
    }
    let d_model = f.required_usize("hidden_size")?;
    let n_heads = f.required_usize("num_attention_heads")?;
    match f.usize("head_dim")? {
        Some(head_dim) if head_dim.checked_mul(n_heads) != Some(d_model) => {
            return Err(f.unsupported(
                "head_dim",
                &json!(head_dim),
                &format!(
                    "the head dimension must be hidden_size / num_attention_heads = {d_model} / \
                     {n_heads}"
                ),
            ));
        }
        _ => {}
    }
    let rope_parameters = f.object("rope_parameters")?;
    let rope_theta = match rope_parameters {
        Some(p) => Fields {
            path,
            map: p,
            prefix: "rope_parameters.",
        }
        .f32("rope_theta")?,
        None => None,
    };
    let rope_theta = match rope_theta {
        Some(t) => t,
        None => f.f32("rope_theta")?.unwrap_or(10_000.0),
    };
    let rope_scaling = match (f.object("rope_scaling")?, rope_parameters) {
        (Some(obj), _) => rope_scaling(path, obj, "rope_scaling.")?,
        (None, Some(obj)) => rope_scaling(path, obj, "rope_parameters.")?,
        (None, None) => None,
    };
    let max_positions = f
        .usize("max_position_embeddings")?
        .unwrap_or_else(|| default_max_positions(model_type));
    let window = match model_type {
        "mistral" => f.usize("sliding_window")?,
        "qwen2" if f.bool("use_sliding_window")? == Some(true) => f.usize("sliding_window")?,
        _ => None,
    };
    if window == Some(0) {
        return Err(f.error("sliding_window", "must be at least 1".into()));
    }
    let config = ModelConfig {
        vocab_size: f.required_usize("vocab_size")?,
        d_model,
        n_layers: f.required_usize("num_hidden_layers")?,
        n_heads,
        n_kv_heads: f.usize("num_key_value_heads")?.unwrap_or(n_heads),
        d_ff: f.required_usize("intermediate_size")?,
        max_seq_len: window.map_or(max_positions, |w| w.min(max_positions)),
        rope_theta,
        norm_eps: f.f32("rms_norm_eps")?.unwrap_or(1e-6),
        tie_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias: model_type == "qwen2",
        rope_scaling,
    };
    config.validate().map_err(|e| match e {
        Error::InvalidConfig { field, reason } => Error::InvalidArchitecture {
            path: path.to_path_buf(),
            field: hf_key(field),
            reason,
        },
        other => Error::InvalidArchitecture {
            path: path.to_path_buf(),
            field: "config",
            reason: other.to_string(),
        },
    })?;
    Ok(Parsed {
        model_type: model_type.to_string(),
        config,
        bos: f.token_id("bos_token_id")?,
        eos: f.token_id("eos_token_id")?,
        pad: f.token_id("pad_token_id")?,
    })
}

/// An f32 as the JSON number with its shortest decimal form (`1e-6`, not
/// `9.999999974752427e-7`); parsing it back and rounding to f32 gives `x` exactly.
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The `architectures` entry of a model type.
fn architecture(model_type: &str) -> &'static str {
    match model_type {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

/// The `config.json` object for `cfg`: the loaded object (`meta`) with every architecture key
/// rewritten from `cfg`, checked to parse back to exactly `cfg`.
///
/// The model type stays unless `cfg.qkv_bias` contradicts it (then `qwen2` with biases, `llama`
/// without). `max_position_embeddings` keeps its loaded value when that already gives
/// `cfg.max_seq_len` (e.g. under a sliding-window cap) and is `cfg.max_seq_len` otherwise.
/// Special token ids (when given) are written only where the loaded object had none.
pub(super) fn to_json(
    meta: &HfMeta,
    cfg: &ModelConfig,
    special: Option<SpecialTokens>,
) -> Result<Map<String, Value>, Error> {
    let model_type = match (meta.model_type.as_str(), cfg.qkv_bias) {
        ("qwen2", false) => "llama",
        (_, true) => "qwen2",
        (other, false) => other,
    };
    let mut m = meta.config_json.clone();
    // transformers 5 keeps RoPE settings here; the classic keys below say the same.
    m.remove("rope_parameters");
    let mut set = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    set("architectures", json!([architecture(model_type)]));
    set("model_type", json!(model_type));
    set("hidden_size", json!(cfg.d_model));
    set("intermediate_size", json!(cfg.d_ff));
    set("num_hidden_layers", json!(cfg.n_layers));
    set("num_attention_heads", json!(cfg.n_heads));
    set("num_key_value_heads", json!(cfg.n_kv_heads));
    set("vocab_size", json!(cfg.vocab_size));
    set("rms_norm_eps", f32_json(cfg.norm_eps));
    set("rope_theta", f32_json(cfg.rope_theta));
    set(
        "rope_scaling",
        match cfg.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": f32_json(factor),
                "low_freq_factor": f32_json(low_freq_factor),
                "high_freq_factor": f32_json(high_freq_factor),
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        },
    );
    set("tie_word_embeddings", json!(cfg.tie_embeddings));
    set("hidden_act", json!("silu"));
    set("torch_dtype", json!("float32"));
    if model_type == "llama" {
        set("attention_bias", json!(false));
        set("mlp_bias", json!(false));
    }
    if m.contains_key("dtype") {
        // transformers 5 writes `dtype` instead of `torch_dtype`.
        m.insert("dtype".into(), json!("float32"));
    }
    if m.contains_key("head_dim") {
        m.insert("head_dim".into(), json!(cfg.head_dim()));
    }
    if let Some(special) = special {
        for (key, id) in [
            ("bos_token_id", special.bos),
            ("eos_token_id", special.eos),
            ("pad_token_id", special.pad),
        ] {
            if m.get(key).is_none_or(Value::is_null) && (key != "pad_token_id" || id != special.eos)
            {
                m.insert(key.into(), json!(id));
            }
        }
    }
    let path = Path::new(super::CONFIG_FILE);
    let keeps_length = parse(path, &m).is_ok_and(|p| p.config.max_seq_len == cfg.max_seq_len);
    if !keeps_length {
        m.insert("max_position_embeddings".into(), json!(cfg.max_seq_len));
    }
    match parse(path, &m) {
        Ok(back) if back.config == *cfg => Ok(m),
        Ok(back) => Err(Error::Unrepresentable {
            reason: format!(
                "it would load back as {:?} (a sliding window in the original config.json \
                 caps the context at {})",
                back.config, back.config.max_seq_len
            ),
        }),
        Err(e) => Err(Error::Unrepresentable {
            reason: e.to_string(),
        }),
    }
}
