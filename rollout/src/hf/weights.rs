//! Safetensors weights: single file or sharded, f32 / f16 / bf16 in, f32 out.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde_json::Value;

use super::{WEIGHTS_FILE, WEIGHTS_INDEX_FILE, read, read_json_object};
use crate::Error;
use crate::engine::{ModelConfig, WeightTensor, Weights};

/// Tensors that may be present but are not weights: RoPE inverse-frequency buffers that old
/// checkpoints saved (arbor recomputes them from `config.json`).
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// One weight file to read.
struct WeightFile {
    path: PathBuf,
    /// For sharded weights, the tensor names the index assigns to this file.
    listed: Option<BTreeSet<String>>,
}

/// The weight files of `dir` (see [`WeightFile`]).
fn weight_files(dir: &Path) -> Result<Vec<WeightFile>, Error> {
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if index_path.is_file() {
        let index = read_json_object(&index_path, "the shard index")?;
        let bad = |reason: String| Error::ShardIndex {
            path: index_path.clone(),
            reason,
        };
        let Some(Value::Object(map)) = index.get("weight_map") else {
            return Err(bad("no `weight_map` object".into()));
        };
        let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, file) in map {
            let Some(file) = file.as_str() else {
                return Err(bad(format!("weight_map[{name:?}] is not a file name")));
            };
            if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
                return Err(bad(format!(
                    "weight_map[{name:?}] = {file:?} is not a file name in the model directory"
                )));
            }
            by_file
                .entry(file.to_string())
                .or_default()
                .insert(name.clone());
        }
        if by_file.is_empty() {
            return Err(bad("`weight_map` lists no tensors".into()));
        }
        return Ok(by_file
            .into_iter()
            .map(|(file, names)| WeightFile {
                path: dir.join(file),
                listed: Some(names),
            })
            .collect());
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![WeightFile {
            path: single,
            listed: None,
        }]);
    }
    let mut others: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".bin") || n.ends_with(".pth"))
        .collect();
    others.sort();
    let hint = if others.is_empty() {
        None
    } else if others.iter().all(|n| !n.ends_with(".safetensors")) {
        Some(format!(
            "found {}: PyTorch pickles are not read; convert them to safetensors",
            others.join(", ")
        ))
    } else {
        Some(format!(
            "found {} without {WEIGHTS_INDEX_FILE}",
            others.join(", ")
        ))
    };
    Err(Error::NoWeights {
        dir: dir.to_path_buf(),
        hint,
    })
}

/// Converts a stored tensor to f32 values (little-endian F32, F16 or BF16; exact).
fn to_f32(view: &TensorView<'_>, name: &str, path: &Path) -> Result<Vec<f32>, Error> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// Why an unexpected tensor does not belong to `cfg` (for the error message).
fn unexpected_reason(name: &str, cfg: &ModelConfig) -> String {
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    if let Some(i) = layer.filter(|&i| i >= cfg.n_layers) {
        return format!("layer {i} is beyond num_hidden_layers = {}", cfg.n_layers);
    }
    if name == "lm_head.weight" && cfg.tie_embeddings {
        return "tie_word_embeddings is true, and it differs from model.embed_tokens.weight".into();
    }
    if name.ends_with(".bias") {
        return "this architecture has no bias there (only qwen2 has q/k/v biases)".into();
    }
    "not a tensor of this architecture".into()
}

/// Reads the safetensors weights of `dir` for the architecture `cfg` (see the
/// [module docs](super#weights)): `model.safetensors`, or every shard listed in
/// `model.safetensors.index.json`; F32, F16 and BF16 converted to f32 exactly.
pub fn load_weights(dir: &Path, cfg: &ModelConfig) -> Result<Weights, Error> {
    let files = weight_files(dir)?;
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    // name -> (file index, tensor)
    let mut found: BTreeMap<String, (usize, WeightTensor)> = BTreeMap::new();
    for (k, WeightFile { path, listed }) in files.iter().enumerate() {
        let what = if listed.is_some() {
            "a weight shard listed in model.safetensors.index.json"
        } else {
            "the model weights"
        };
        let bytes = read(path, what)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::CorruptWeights {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let absent = listed
            .as_ref()
            .and_then(|l| l.iter().find(|n| st.tensor(n).is_err()));
        if let Some(absent) = absent {
            return Err(Error::ShardIndex {
                path: index_path.clone(),
                reason: format!(
                    "puts tensor {absent} in {}, which does not hold it",
                    path.display()
                ),
            });
        }
        for (name, view) in st.tensors() {
            if is_ignored_buffer(&name) {
                continue;
            }
            if listed.as_ref().is_some_and(|l| !l.contains(&name)) {
                return Err(Error::ShardIndex {
                    path: index_path.clone(),
                    reason: format!(
                        "does not list tensor {name}, which {} holds",
                        path.display()
                    ),
                });
            }
            // Safetensors names are unique within a file and the index assigns each name to
            // one file, so a name cannot arrive twice.
            debug_assert!(!found.contains_key(&name));
            let data = to_f32(&view, &name, path)?;
            let shape = view.shape().to_vec();
            found.insert(name, (k, WeightTensor { shape, data }));
        }
    }

    let expected = Weights::expected_shapes(cfg);
    for (name, shape) in &expected {
        match found.get(name) {
            None => {
                return Err(Error::FileMissingTensor {
                    dir: dir.to_path_buf(),
                    name: name.clone(),
                });
            }
            Some((k, t)) if &t.shape != shape => {
                return Err(Error::FileBadShape {
                    path: files[*k].path.clone(),
                    name: name.clone(),
                    expected: shape.clone(),
                    got: t.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if cfg.tie_embeddings {
        // Some exports store the tied head too; identical to the embedding, it is redundant.
        if let (Some((_, head)), Some((_, embed))) = (
            found.get("lm_head.weight"),
            found.get("model.embed_tokens.weight"),
        ) {
            let same = head.shape == embed.shape
                && head
                    .data
                    .iter()
                    .zip(&embed.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            if same {
                found.remove("lm_head.weight");
            }
        }
    }
    if found.len() != expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        if let Some((name, (k, _))) = found.iter().find(|(n, _)| !known.contains(n.as_str())) {
            return Err(Error::FileUnexpectedTensor {
                path: files[*k].path.clone(),
                name: name.clone(),
                reason: unexpected_reason(name, cfg),
            });
        }
    }
    let mut weights = Weights::new();
    for (name, (_, t)) in found {
        weights
            .insert(name, t.shape, t.data)
            .expect("safetensors checked data length against shape");
    }
    weights.validate(cfg).map_err(|source| Error::Weights {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })?;
    Ok(weights)
}

/// A tensor serialized as little-endian f32 when safetensors asks for its bytes (one tensor's
/// bytes in memory at a time).
struct F32View<'a>(&'a WeightTensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// Writes `weights` as an f32 safetensors file at `path`.
pub(super) fn write_f32(
    path: &Path,
    weights: &Weights,
    metadata: HashMap<String, String>,
) -> Result<(), Error> {
    let views = weights.iter().map(|(name, t)| (name, F32View(t)));
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => Error::io(path, source),
        other => Error::CorruptWeights {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}
