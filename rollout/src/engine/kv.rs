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

/// The number format of cached keys and values.
///
/// `F32` (the default) keeps the engine exact: cached decoding equals the full forward pass to
/// float rounding and the burn model within 1e-4. `Bf16` stores each key and value rounded to
/// bfloat16 (round to nearest even, 8 significant bits): half the KV memory and half the bytes
/// attention streams, for logits that move: by at most 7.3e-3 on `tiny` over 200 positions
/// (tested bound 2e-2) and 0.14 on SmolLM2-135M (tested bound 0.25; its logits reach ±20),
/// whose greedy answer stays the same. Queries, scores and all other arithmetic stay f32, and
/// the cache stays bitwise batch-, chunk- and thread-invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvPrecision {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
}

impl KvPrecision {
    /// Bytes per cached number.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F32 => 4,
            KvPrecision::Bf16 => 2,
        }
    }

    /// The name used in configs and tables: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            KvPrecision::F32 => "f32",
            KvPrecision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for KvPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvPrecision::F32),
            "bf16" => Ok(KvPrecision::Bf16),
            other => Err(format!(
                "unknown KV cache precision '{other}' (expected f32 or bf16)"
            )),
        }
    }
}

/// Sizes that fix a block's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvDims {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub precision: KvPrecision,
}

impl KvDims {
    /// Numbers in one of the two tensors (keys or values) of a block.
    pub fn block_floats(&self) -> usize {
        self.n_layers * self.n_kv_heads * self.head_dim * BLOCK_SIZE
    }

    /// Bytes of one block (keys and values).
    pub fn block_bytes(&self) -> usize {
        2 * self.block_floats() * self.precision.bytes()
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
pub(crate) enum Block {
    /// f32 keys `[n_layers, n_kv_heads, head_dim, BLOCK_SIZE]` and values `[n_layers,
    /// n_kv_heads, BLOCK_SIZE, head_dim]`.
    F32 { k: Box<[f32]>, v: Box<[f32]> },
    /// The same layout in bfloat16 bits.
    Bf16 { k: Box<[u16]>, v: Box<[u16]> },
}

impl Block {
    fn zeroed(dims: KvDims) -> Self {
        let n = dims.block_floats();
        match dims.precision {
            KvPrecision::F32 => Block::F32 {
                k: vec![0.0; n].into_boxed_slice(),
                v: vec![0.0; n].into_boxed_slice(),
            },
            KvPrecision::Bf16 => Block::Bf16 {
                k: vec![0; n].into_boxed_slice(),
                v: vec![0; n].into_boxed_slice(),
            },
        }
    }
}

/// A number type the cache stores: f32, or bfloat16 bits in a `u16`.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    /// The keys and values of `block` if it stores this type.
    fn of(block: &Block) -> Option<(&[Self], &[Self])>;
    /// The keys and values of `block`, writable, if it stores this type.
    fn of_mut(block: &mut Block) -> Option<(&mut [Self], &mut [Self])>;
    /// Rounds an f32 to this type.
    fn from_f32(x: f32) -> Self;
    /// The stored value as f32 (exact).
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    fn of(block: &Block) -> Option<(&[f32], &[f32])> {
        match block {
            Block::F32 { k, v } => Some((k, v)),
            Block::Bf16 { .. } => None,
        }
    }
    fn of_mut(block: &mut Block) -> Option<(&mut [f32], &mut [f32])> {
        match block {
            Block::F32 { k, v } => Some((k, v)),
            Block::Bf16 { .. } => None,
        }
    }
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for u16 {
    fn of(block: &Block) -> Option<(&[u16], &[u16])> {
        match block {
            Block::Bf16 { k, v } => Some((k, v)),
            Block::F32 { .. } => None,
        }
    }
    fn of_mut(block: &mut Block) -> Option<(&mut [u16], &mut [u16])> {
        match block {
            Block::Bf16 { k, v } => Some((k, v)),
            Block::F32 { .. } => None,
        }
    }
    /// Round to nearest, ties to even; NaN stays NaN.
    #[inline(always)]
    fn from_f32(x: f32) -> u16 {
        let b = x.to_bits();
        if x.is_nan() {
            return ((b >> 16) | 0x40) as u16;
        }
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
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
    match dims.precision {
        KvPrecision::F32 => write_as::<f32>(block, dims, layer, pos, k, v),
        KvPrecision::Bf16 => write_as::<u16>(block, dims, layer, pos, k, v),
    }
}

fn write_as<E: KvElem>(
    block: &mut Block,
    dims: KvDims,
    layer: usize,
    pos: usize,
    k: &[f32],
    v: &[f32],
) {
    // Blocks are made by `prepare` with `dims.precision`, so the type always matches.
    let Some((bk, bv)) = E::of_mut(block) else {
        unreachable!("a KV block of another precision than its engine's")
    };
    let slot = pos % BLOCK_SIZE;
    let hd = dims.head_dim;
    for g in 0..dims.n_kv_heads {
        let tile = dims.tile(layer, g);
        let kg = &k[g * hd..(g + 1) * hd];
        for (d, &kv) in kg.iter().enumerate() {
            bk[tile + d * BLOCK_SIZE + slot] = E::from_f32(kv);
        }
        let vs = &mut bv[tile + slot * hd..tile + (slot + 1) * hd];
        for (o, &x) in vs.iter_mut().zip(&v[g * hd..(g + 1) * hd]) {
            *o = E::from_f32(x);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// bfloat16 rounding is to nearest with ties to even, exact for representable values, and
    /// keeps infinities and NaN.
    #[test]
    fn bf16_rounds_to_nearest_even() {
        let round = |x: f32| <u16 as KvElem>::from_f32(x).to_f32();
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            0.15625,
            f32::from_bits(0x7f00_0000),
            f32::INFINITY,
        ] {
            assert_eq!(round(x).to_bits(), x.to_bits(), "{x}");
        }
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        // Just above halfway rounds up.
        assert_eq!(round(f32::from_bits(0x3f80_8001)), 1.0 + 1.0 / 128.0);
        assert!(round(f32::NAN).is_nan());
        // The relative error is at most half a unit in the 8th significant bit, 2^-8.
        for i in 1..1000 {
            let x = i as f32 * 0.013_7 - 6.1;
            assert!((round(x) - x).abs() <= x.abs() / 256.0, "{x}");
        }
    }
}
