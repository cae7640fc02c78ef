//! [`Weights`]: named f32 tensors with Hugging Face Llama names.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::ModelConfig;
use crate::Error;

/// One named tensor: a row-major shape and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// Shape, outermost first (PyTorch order: a Linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// Values in row-major order; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

/// Model weights by tensor name, using the Hugging Face Llama names and layouts so that external
/// tools (and the trainer's safetensors checkpoints) can exchange them. See the module docs of
/// [`crate::engine`] for the list of names and shapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, WeightTensor>,
}

/// Standard deviation of [`Weights::random`].
pub const INIT_STD: f32 = 0.02;

/// RNG stream tag of the random biases ("bias").
const BIAS_STREAM: u64 = 0x6269_6173;

impl Weights {
    /// An empty set of weights.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tensor names and shapes a model with `cfg` needs, in a fixed order (embedding, then
    /// layer by layer, then final norm and LM head; with [`ModelConfig::qkv_bias`] each q/k/v
    /// bias follows its weight).
    pub fn expected_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let d = cfg.d_model;
        let hd = cfg.head_dim();
        let q = cfg.n_heads * hd;
        let kv = cfg.n_kv_heads * hd;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, d],
        )];
        for i in 0..cfg.n_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![d]));
            for (proj, width) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                out.push((format!("{p}.self_attn.{proj}.weight"), vec![width, d]));
                if cfg.qkv_bias {
                    out.push((format!("{p}.self_attn.{proj}.bias"), vec![width]));
                }
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![cfg.d_ff, d]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![cfg.d_ff, d]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, cfg.d_ff]));
        }
        out.push(("model.norm.weight".to_string(), vec![d]));
        if !cfg.tie_embeddings {
            out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
        }
        out
    }

    /// Seeded random weights: matrices (and q/k/v biases, if any) drawn from a normal
    /// distribution with standard deviation [`INIT_STD`] (0.02, as in Llama's
    /// `initializer_range`), norm weights 1. Biases are random rather than Hugging Face's zero
    /// init so that tests exercise them. Deterministic in (`cfg`, `seed`); each tensor has its
    /// own stream, so a tensor does not depend on the others, and a config without biases gets
    /// the same tensors as before biases existed.
    pub fn random(cfg: &ModelConfig, seed: u64) -> Self {
        Self::random_with_std(cfg, seed, INIT_STD)
    }

    /// Like [`Weights::random`] with matrix standard deviation `std` (tests use a larger one so
    /// that logits spread over O(1)).
    pub fn random_with_std(cfg: &ModelConfig, seed: u64, std: f32) -> Self {
        let mut w = Weights::new();
        // Stream ids count the bias-free tensors as before; biases get streams of their own.
        let mut plain = 0u64;
        let mut biases = 0u64;
        for (name, shape) in Self::expected_shapes(cfg) {
            let n: usize = shape.iter().product();
            let stream = if name.ends_with(".bias") {
                biases += 1;
                envs::rng::derive(&[seed, BIAS_STREAM, biases - 1])
            } else {
                plain += 1;
                envs::rng::derive(&[seed, plain - 1])
            };
            let data = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                let mut rng = StdRng::seed_from_u64(stream);
                normal_vec(&mut rng, n, std)
            };
            w.tensors.insert(name, WeightTensor { shape, data });
        }
        w
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&WeightTensor> {
        self.tensors.get(name)
    }

    /// Mutable access to the tensor called `name` (its shape must stay consistent with its data;
    /// [`Weights::validate`] checks).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut WeightTensor> {
        self.tensors.get_mut(name)
    }

    /// Inserts (or replaces) a tensor.
    ///
    /// # Shapes
    /// `data.len()` must equal the product of `shape`; otherwise [`Error::DataLength`].
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<(), Error> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::DataLength {
                name,
                shape,
                got: data.len(),
            });
        }
        self.tensors.insert(name, WeightTensor { shape, data });
        Ok(())
    }

    /// Removes and returns a tensor.
    pub fn remove(&mut self, name: &str) -> Option<WeightTensor> {
        self.tensors.remove(name)
    }

    /// All tensors, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &WeightTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalars over all tensors.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Checks the weights against `cfg`: every expected tensor present with its exact shape,
    /// no extra tensor, data lengths consistent and all values finite. The error names the first
    /// offending tensor.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), Error> {
        cfg.validate()?;
        let expected = Self::expected_shapes(cfg);
        for (name, shape) in &expected {
            let Some(t) = self.tensors.get(name) else {
                return Err(Error::MissingTensor { name: name.clone() });
            };
            if &t.shape != shape {
                return Err(Error::BadShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: t.shape.clone(),
                });
            }
            if t.data.len() != shape.iter().product::<usize>() {
                return Err(Error::DataLength {
                    name: name.clone(),
                    shape: shape.clone(),
                    got: t.data.len(),
                });
            }
            if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: name.clone(),
                    index,
                });
            }
        }
        if self.tensors.len() != expected.len() {
            let known: std::collections::HashSet<&str> =
                expected.iter().map(|(n, _)| n.as_str()).collect();
            if let Some(extra) = self.tensors.keys().find(|k| !known.contains(k.as_str())) {
                return Err(Error::UnexpectedTensor {
                    name: extra.clone(),
                });
            }
        }
        Ok(())
    }
}

/// `n` draws from N(0, std²) by the Box–Muller transform.
fn normal_vec(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32 * std);
        out.push((r * a.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}
