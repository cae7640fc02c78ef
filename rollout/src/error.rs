//! [`Error`]: everything that can go wrong in this crate, in one enum. Its variants are grouped
//! by where they arise (model configs and weights, model files, policies and sampling, rollout
//! trees, advantages); each names the field, file, tensor or node to fix. [`Result`] is the
//! crate's result type.

use std::path::PathBuf;

use crate::hf::{SUPPORTED_MODEL_TYPES, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::policy::SeqHandle;
use crate::tree::{NodeId, NodeKind};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `rollout` (module docs).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- model configs and weights (the engine) ---
    /// A [`ModelConfig`] field is out of range or inconsistent with another.
    #[error("invalid model config: {field}: {reason}")]
    InvalidConfig {
        /// The field to fix.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`ModelConfig::preset`] got a name it does not know.
    #[error("unknown model preset {name:?} (known: tiny, small)")]
    UnknownPreset {
        /// The name asked for.
        name: String,
    },
    /// A tensor the config needs is not in the weights.
    #[error("weight tensor {name} is missing")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
    },
    /// The weights hold a tensor the config does not use (e.g. `lm_head.weight` with tied
    /// embeddings, or a layer beyond `n_layers`).
    #[error("weight tensor {name} is not used by this model config")]
    UnexpectedTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("weight tensor {name} has shape {got:?}, the config needs {expected:?}")]
    BadShape {
        /// The tensor name.
        name: String,
        /// The shape the config needs.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
    /// A tensor's data length does not match its shape.
    #[error("weight tensor {name} has shape {shape:?} but {got} values")]
    DataLength {
        /// The tensor name.
        name: String,
        /// Its declared shape.
        shape: Vec<usize>,
        /// The number of values given.
        got: usize,
    },
    /// A tensor holds NaN or infinity.
    #[error("weight tensor {name} holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The tensor name.
        name: String,
        /// Flat index of the first non-finite value.
        index: usize,
    },

    // --- files: I/O, Hugging Face model directories, GGUF, chat templates ---
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: IoError,
    },
    /// A required file is not there.
    #[error("{path} is missing ({what})")]
    MissingFile {
        /// The path looked for.
        path: PathBuf,
        /// What the file is for.
        what: &'static str,
    },
    /// A JSON file does not parse (or is not a JSON object).
    #[error("{path}: invalid JSON: {reason}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A `config.json` field is missing or has the wrong type.
    #[error("{path}: field `{field}`: {reason}")]
    ConfigField {
        /// The file.
        path: PathBuf,
        /// The field (nested fields as `rope_scaling.factor`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `model_type` names an architecture arbor cannot run.
    #[error(
        "{path}: model_type {model_type:?} is not supported (supported: {})",
        SUPPORTED_MODEL_TYPES.join(", ")
    )]
    UnsupportedModelType {
        /// The file.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
    },
    /// A `config.json` option asks for something arbor's transformer does not implement.
    #[error("{path}: {option} = {value} is not supported: {reason}")]
    UnsupportedOption {
        /// The file.
        path: PathBuf,
        /// The option (a `config.json` key).
        option: String,
        /// Its value, as JSON.
        value: String,
        /// What arbor supports instead.
        reason: String,
    },
    /// The sizes in `config.json` do not fit together.
    #[error("{path}: invalid architecture: `{field}`: {reason}")]
    InvalidArchitecture {
        /// The file.
        path: PathBuf,
        /// The `config.json` key at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds no safetensors weights arbor can read.
    #[error(
        "{dir}: no weights: expected {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}{}",
        hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
        /// What was found instead, if anything.
        hint: Option<String>,
    },
    /// A safetensors file is corrupt (bad header, offsets or length).
    #[error("{path}: not a valid safetensors file: {reason}")]
    CorruptWeights {
        /// The file.
        path: PathBuf,
        /// The safetensors parser's message.
        reason: String,
    },
    /// `model.safetensors.index.json` is malformed or disagrees with its shards.
    #[error("{path}: {reason}")]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is stored in a dtype other than F32, F16 or BF16.
    #[error("{path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor the architecture needs is not in the weights.
    #[error("{dir}: tensor {name} is missing from the weights")]
    FileMissingTensor {
        /// The model directory.
        dir: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// The weights hold a tensor the architecture does not use.
    #[error("{path}: tensor {name} is not used by this model: {reason}")]
    FileUnexpectedTensor {
        /// The file holding it.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Why it does not belong.
        reason: String,
    },
    /// A tensor's shape differs from the one `config.json` implies.
    #[error("{path}: tensor {name} has shape {got:?}, config.json implies {expected:?}")]
    FileBadShape {
        /// The file holding it.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The stored shape.
        got: Vec<usize>,
    },
    /// The weights fail a check after loading (non-finite values) or before saving.
    #[error("{dir}: {source}")]
    Weights {
        /// The model directory.
        dir: PathBuf,
        /// The engine's finding.
        source: Box<Error>,
    },
    /// `tokenizer.json` cannot be read by the `tokenizers` crate.
    #[error("{path}: cannot load the tokenizer: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The tokenizer library's message.
        reason: String,
    },
    /// The embedding has fewer rows than the tokenizer has token ids.
    #[error(
        "config.json vocab_size {embedding} is smaller than the tokenizer's vocabulary \
         ({tokenizer} token ids): the embedding must have a row for every token id"
    )]
    VocabTooSmall {
        /// Rows of the embedding (`vocab_size`).
        embedding: usize,
        /// Largest token id of the tokenizer plus one.
        tokenizer: usize,
    },
    /// A special token is missing or out of range.
    #[error("{which} token: {reason}")]
    SpecialToken {
        /// `bos`, `eos` or `pad`.
        which: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The configuration cannot be written as a `config.json` that loads back to it.
    #[error("cannot write config.json for this configuration: {reason}")]
    Unrepresentable {
        /// Why.
        reason: String,
    },
    /// The bytes are not a well-formed GGUF file.
    #[error("{path}: not a readable GGUF file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A tensor type this reader does not dequantize.
    #[error(
        "{path}: tensor {tensor} has type {kind}, which arbor does not read (F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
    )]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The ggml type name (or number).
        kind: String,
    },
    /// An architecture, tokenizer or option this reader does not support.
    #[error("{path}: {what} is not supported")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What.
        what: String,
    },
    /// A metadata key the model needs is missing or has the wrong type.
    #[error("{path}: metadata {key} is missing or not a {expected}")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type it must have.
        expected: &'static str,
    },
    /// The weights do not match the architecture, or the tokenizer does not build.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What.
        reason: String,
    },
    /// A chat template that cannot be used, and why.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    // --- policies and sampling ---
    /// The sequence would grow past the model's context window.
    #[error("context overflow: sequence would reach {len} tokens, the model allows {max}")]
    ContextOverflow {
        /// The length the sequence would have reached.
        len: usize,
        /// The model's context window.
        max: usize,
    },
    /// The handle does not name a live sequence.
    #[error("unknown sequence handle {0:?}")]
    UnknownSequence(SeqHandle),
    /// `start` was given no tokens, or `fork_at` a length outside `1..=len`.
    #[error("bad sequence length {len} (sequence has {have})")]
    BadLength {
        /// The length asked for.
        len: usize,
        /// The sequence's length.
        have: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A remote backend failed (reserved for server-backed policies).
    #[error("policy backend error: {0}")]
    Backend(String),
    /// A sampler configuration that cannot work.
    #[error("invalid sampler config: {field} {reason}")]
    SamplerConfig {
        /// The offending field.
        field: &'static str,
        /// What it must be.
        reason: String,
    },
    /// A task's prompt does not fit the policy's context window.
    #[error("task {task_id}: prompt of {len} tokens does not fit the context window of {max}")]
    PromptTooLong {
        /// The task.
        task_id: u64,
        /// Prompt length in tokens (with `<bos>`).
        len: usize,
        /// The policy's context window.
        max: usize,
    },
    /// Internal consistency check of the produced tree failed (a bug; please report).
    #[error("task {task_id}: sampler produced an invalid tree: {source}")]
    Tree {
        /// The task.
        task_id: u64,
        /// What was wrong.
        source: Box<Error>,
    },

    // --- rollout trees ---
    /// A node id that is not in the arena.
    #[error("node {node} does not exist (the group has {len} nodes)")]
    UnknownNode {
        /// The id given.
        node: NodeId,
        /// Number of nodes in the arena.
        len: usize,
    },
    /// A node's parent does not exist or does not precede it.
    #[error("node {node} names parent {parent}, which does not precede it in the arena")]
    BadParent {
        /// The node.
        node: NodeId,
        /// Its parent id.
        parent: NodeId,
    },
    /// `nodes[index].id != index`.
    #[error("node at index {index} carries id {id}")]
    IdMismatch {
        /// Position in the arena.
        index: usize,
        /// The id stored there.
        id: NodeId,
    },
    /// A node's tree index is not below `num_trees`.
    #[error("node {node} is in tree {tree}, but the group has {num_trees} trees")]
    TreeOutOfRange {
        /// The node (or the node being added).
        node: NodeId,
        /// Its tree index.
        tree: u32,
        /// The group's number of trees.
        num_trees: u32,
    },
    /// A node's tree differs from its parent's.
    #[error("node {node} is in tree {tree}, its parent in tree {parent_tree}")]
    TreeMismatch {
        /// The node (or the node being added).
        node: NodeId,
        /// Its tree index.
        tree: u32,
        /// The parent's tree index.
        parent_tree: u32,
    },
    /// A tree with no top node.
    #[error("tree {tree} has no nodes")]
    EmptyTree {
        /// The tree index.
        tree: u32,
    },
    /// A node's depth is not its parent's depth + 1 (or 0 at the top).
    #[error("node {node} has depth {depth}, expected {expected}")]
    BadDepth {
        /// The node.
        node: NodeId,
        /// Its stored depth.
        depth: u32,
        /// Its number of ancestors.
        expected: u32,
    },
    /// A node's `children` list does not list exactly the nodes naming it as parent, in order.
    #[error("node {node}'s children list does not match the nodes that name it as parent")]
    BadChildren {
        /// The node.
        node: NodeId,
    },
    /// An observation directly under the prompt.
    #[error("observation node {node} has no parent action (observations follow actions)")]
    ObservationAtTop {
        /// The node.
        node: NodeId,
    },
    /// An observation whose parent is an observation.
    #[error("observation node {node} follows observation {parent} (observations follow actions)")]
    ObservationAfterObservation {
        /// The node.
        node: NodeId,
        /// Its parent.
        parent: NodeId,
    },
    /// Logprobs or entropies whose length does not fit the node's tokens.
    #[error(
        "{kind} node {node} has {tokens} tokens but {logprobs} logprobs and {entropies} entropies"
    )]
    LengthMismatch {
        /// The node (or the node being added).
        node: NodeId,
        /// Its kind (observations must have none).
        kind: NodeKind,
        /// Number of tokens.
        tokens: usize,
        /// Number of logprobs.
        logprobs: usize,
        /// Number of entropies.
        entropies: usize,
    },
    /// Leaf information on an observation node.
    #[error("observation node {node} is marked as a leaf (only actions end trajectories)")]
    LeafNotAction {
        /// The node.
        node: NodeId,
    },
    /// A leaf with children, or a child added under a leaf.
    #[error("node {node} is a leaf but has (or would get) children")]
    LeafWithChildren {
        /// The leaf.
        node: NodeId,
    },
    /// `set_leaf` on a node that already is a leaf.
    #[error("node {node} is already a leaf")]
    AlreadyLeaf {
        /// The node.
        node: NodeId,
    },
    /// A childless node that is not a leaf: a trajectory that was dropped instead of being
    /// reported as truncated.
    #[error("node {node} has no children and is not a leaf (a dropped trajectory)")]
    Dangling {
        /// The node.
        node: NodeId,
    },
    /// A leaf whose reward is NaN or infinite, or a truncated leaf with a reward or a success.
    #[error("leaf {node} has an invalid outcome: {reason}")]
    BadLeaf {
        /// The leaf.
        node: NodeId,
        /// What is wrong.
        reason: &'static str,
    },
    /// The arena would outgrow [`NodeId`].
    #[error("a task group holds at most {max} nodes")]
    TooManyNodes {
        /// The most nodes a group can hold.
        max: u64,
    },

    // --- advantages ---
    /// The estimator name is not one arbor knows.
    #[error("unknown advantage estimator '{name}' (known: {known})")]
    UnknownEstimator {
        /// The name given.
        name: String,
        /// The names arbor knows, comma separated.
        known: String,
    },
    /// A task group fails [`TaskRollout::validate`]; estimators need a well-formed tree.
    #[error("task {task_id}: invalid rollout tree: {source}")]
    InvalidRollout {
        /// The task group's id.
        task_id: u64,
        /// What is wrong with it.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source: IoError(std::sync::Arc::new(source)),
        }
    }
}

/// A [`std::io::Error`] that [`Error`] can clone and compare (by kind and message).
#[derive(Debug, Clone)]
pub struct IoError(pub std::sync::Arc<std::io::Error>);

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
