//! The paged, reference-counted KV cache.
//!
//! A sequence holds one `Vec<Arc<Block>>`; block `b` stores the keys and values of positions
//! `16 b .. 16 (b + 1)` for every layer and key/value head. Forking clones the vector (one
//! reference-count increment per block). A block is written only through [`Arc::make_mut`], so a
//! block shared by two sequences is never changed in place: the writer gets its own copy first
//! (copy-on-write). In practice only a sequence's partly filled last block is ever copied, since
//! full blocks are never written again.

use std::collections::HashSet;
use std::sync::Arc;

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = 16;

/// Sizes that fix a block's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvDims {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvDims {
    /// Floats of one of the two tensors (keys or values) of a block.
    pub fn block_floats(&self) -> usize {
        self.n_layers * self.n_kv_heads * self.head_dim * BLOCK_SIZE
    }

    /// Bytes of one block (keys and values).
    pub fn block_bytes(&self) -> usize {
        2 * self.block_floats() * std::mem::size_of::<f32>()
    }

    /// Start of the `[head_dim, BLOCK_SIZE]` key tile (or `[BLOCK_SIZE, head_dim]` value tile)
    /// of (`layer`, kv head `g`) inside a block.
    pub fn tile(&self, layer: usize, g: usize) -> usize {
        (layer * self.n_kv_heads + g) * self.head_dim * BLOCK_SIZE
    }
}

/// Keys and values of [`BLOCK_SIZE`] consecutive positions, all layers and kv heads.
///
/// Keys are stored transposed per (layer, head) so that the scores of one query against the 16
/// keys of a block are 16 independent lanes (no horizontal sums); values are stored by position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Block {
    /// `[n_layers, n_kv_heads, head_dim, BLOCK_SIZE]`.
    pub k: Box<[f32]>,
    /// `[n_layers, n_kv_heads, BLOCK_SIZE, head_dim]`.
    pub v: Box<[f32]>,
}

impl Block {
    fn zeroed(dims: KvDims) -> Self {
        let n = dims.block_floats();
        Block {
            k: vec![0.0; n].into_boxed_slice(),
            v: vec![0.0; n].into_boxed_slice(),
        }
    }
}

/// Number of blocks that hold `len` positions.
pub(crate) fn blocks_for(len: usize) -> usize {
    len.div_ceil(BLOCK_SIZE)
}

/// Makes positions `start..end` writable: appends zeroed blocks as needed and gives this sequence
/// its own copy of any shared block in the range (copy-on-write). `blocks` must hold exactly the
/// blocks of positions `0..start`.
pub(crate) fn prepare(blocks: &mut Vec<Arc<Block>>, dims: KvDims, start: usize, end: usize) {
    debug_assert_eq!(blocks.len(), blocks_for(start));
    for b in start / BLOCK_SIZE..blocks_for(end) {
        if b < blocks.len() {
            Arc::make_mut(&mut blocks[b]);
        } else {
            blocks.push(Arc::new(Block::zeroed(dims)));
        }
    }
}

/// Writes the keys and values of one position and layer.
///
/// # Shapes
/// `k`, `v`: `[n_kv_heads * head_dim]` (RoPE already applied to `k`).
pub(crate) fn write(
    blocks: &mut [Arc<Block>],
    dims: KvDims,
    layer: usize,
    pos: usize,
    k: &[f32],
    v: &[f32],
) {
    // `prepare` made the block unique, so this never copies; `make_mut` keeps it safe anyway.
    let block = Arc::make_mut(&mut blocks[pos / BLOCK_SIZE]);
    let slot = pos % BLOCK_SIZE;
    let hd = dims.head_dim;
    for g in 0..dims.n_kv_heads {
        let tile = dims.tile(layer, g);
        let kg = &k[g * hd..(g + 1) * hd];
        for (d, &kv) in kg.iter().enumerate() {
            block.k[tile + d * BLOCK_SIZE + slot] = kv;
        }
        block.v[tile + slot * hd..tile + (slot + 1) * hd].copy_from_slice(&v[g * hd..(g + 1) * hd]);
    }
}

/// Number of distinct blocks referenced by `tables` (a block shared by many sequences counts
/// once).
pub(crate) fn unique_blocks<'a>(tables: impl Iterator<Item = &'a [Arc<Block>]>) -> usize {
    let mut seen = HashSet::new();
    for t in tables {
        for b in t {
            seen.insert(Arc::as_ptr(b) as usize);
        }
    }
    seen.len()
}

/// A live sequence: its tokens, its KV blocks and the distribution of its next token.
#[derive(Debug, Clone)]
pub(crate) struct SeqState {
    /// All tokens so far.
    pub tokens: Vec<u32>,
    /// KV blocks of positions `0..tokens.len()`.
    pub blocks: Vec<Arc<Block>>,
    /// Next-token logits, `[vocab]`.
    pub logits: Vec<f32>,
}
