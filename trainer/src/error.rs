//! The crate's error type.

use std::path::PathBuf;

/// Everything the trainer can fail with. Variants name what the user can fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A configuration value is out of range (for example `n_heads` does not divide `d_model`).
    #[error("invalid trainer configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The engine rejected a configuration or weight set.
    #[error(transparent)]
    Engine(#[from] rollout::Error),
    /// A named weight is missing from a weight set or checkpoint.
    #[error("missing tensor `{name}`")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
    },
    /// A weight set or checkpoint holds a tensor the model does not have.
    #[error("unexpected tensor `{name}`")]
    UnexpectedTensor {
        /// The tensor name.
        name: String,
    },
    /// A named weight has the wrong shape for the model configuration.
    #[error("tensor `{name}` has shape {found:?}, the model configuration needs {expected:?}")]
    ShapeMismatch {
        /// The Hugging Face tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A batch or rollout cannot be turned into training data (for example a node whose parent
    /// index does not precede it, or logprobs that do not match the token count).
    #[error("invalid training batch: {reason}")]
    Batch {
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint file is missing.
    #[error("checkpoint file {path} is missing")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A checkpoint file exists but cannot be parsed (truncated, not safetensors, bad JSON, ...).
    #[error("checkpoint file {path} is corrupt: {reason}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The checkpoint was written for a different model configuration.
    #[error("checkpoint config mismatch: checkpoint has {found}, the run expects {expected}")]
    ConfigMismatch {
        /// The configuration the caller expects (JSON).
        expected: String,
        /// The configuration stored in the checkpoint (JSON).
        found: String,
    },
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TrainerError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainerError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`TrainerError::Batch`] with the given reason.
    pub(crate) fn batch(reason: impl Into<String>) -> Self {
        TrainerError::Batch {
            reason: reason.into(),
        }
    }
}
