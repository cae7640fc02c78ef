//! The transformer: packed weights, the batched cached forward pass and the reference forward.

use std::sync::Arc;

use ndarray::{Array2, ArrayView1, ArrayView2, Axis, Slice};
use rayon::prelude::*;

use super::gemm::{PackedMatrix, min_tasks_len};
use super::kv::{self, BLOCK_SIZE, Block, KvDims, KvElem, KvPrecision};
use super::{ModelConfig, Weights};
use crate::Error;

/// One layer's weights as `[in, out]` matrices packed for the GEMM, fused where inputs are
/// shared.
#[derive(Debug, Clone)]
struct Layer {
    /// `[d_model]`.
    attn_norm: Vec<f32>,
    /// `[d_model, (n_heads + 2 n_kv_heads) * head_dim]`: q, k, v projections side by side.
    wqkv_t: PackedMatrix,
    /// `[(n_heads + 2 n_kv_heads) * head_dim]`: q, k, v biases side by side (`qkv_bias` only).
    bqkv: Option<Vec<f32>>,
    /// `[n_heads * head_dim, d_model]`.
    wo_t: PackedMatrix,
    /// `[d_model]`.
    mlp_norm: Vec<f32>,
    /// `[d_model, 2 d_ff]`: gate then up.
    wgu_t: PackedMatrix,
    /// `[d_ff, d_model]`.
    wdown_t: PackedMatrix,
}

/// Weights in the layout the forward pass uses, plus RoPE tables.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub cfg: ModelConfig,
    /// `[vocab, d_model]`.
    embed: Array2<f32>,
    layers: Vec<Layer>,
    /// `[d_model]`.
    final_norm: Vec<f32>,
    /// `[d_model, vocab]`.
    lm_head_t: PackedMatrix,
    /// `[max_seq_len, head_dim / 2]`.
    rope_cos: Vec<f32>,
    /// `[max_seq_len, head_dim / 2]`.
    rope_sin: Vec<f32>,
    /// Number format of the KV cache this model writes and reads.
    pub kv_precision: KvPrecision,
}

/// With at least this many tokens in a forward call, attention runs one task per token;
/// below, one task per (token, head).
const ATTN_ROWS_PER_TASK_SPLIT: usize = 8;

/// A run of consecutive new tokens of one sequence, pushed through the model together.
pub(crate) struct RowGroup<'a> {
    /// The sequence's KV blocks for positions `0..start`; extended to `start + tokens.len()`.
    pub blocks: &'a mut Vec<Arc<Block>>,
    /// Position of the first new token.
    pub start: usize,
    /// The new tokens.
    pub tokens: &'a [u32],
}

fn matrix<'w>(w: &'w Weights, name: &str) -> Result<ArrayView2<'w, f32>, Error> {
    let t = w.get(name).ok_or_else(|| Error::MissingTensor {
        name: name.to_string(),
    })?;
    ArrayView2::from_shape((t.shape[0], t.shape[1]), &t.data).map_err(|_| Error::BadShape {
        name: name.to_string(),
        expected: vec![],
        got: t.shape.clone(),
    })
}

fn vector(w: &Weights, name: &str) -> Result<Vec<f32>, Error> {
    w.get(name)
        .map(|t| t.data.clone())
        .ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
        })
}

impl Model {
    /// Validates `w` against `cfg` and packs it.
    pub fn new(cfg: &ModelConfig, w: &Weights) -> Result<Self, Error> {
        w.validate(cfg)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("model.layers.{i}");
            let m = |n: &str| matrix(w, &format!("{p}.{n}.weight"));
            let wqkv_t = ndarray::concatenate(
                Axis(1),
                &[
                    m("self_attn.q_proj")?.t(),
                    m("self_attn.k_proj")?.t(),
                    m("self_attn.v_proj")?.t(),
                ],
            )
            .map_err(|_| Error::BadShape {
                name: format!("{p}.self_attn.k_proj.weight"),
                expected: vec![],
                got: vec![],
            })?;
            let wqkv_t = PackedMatrix::pack(wqkv_t.view());
            let bqkv = if cfg.qkv_bias {
                let mut b = vector(w, &format!("{p}.self_attn.q_proj.bias"))?;
                b.extend(vector(w, &format!("{p}.self_attn.k_proj.bias"))?);
                b.extend(vector(w, &format!("{p}.self_attn.v_proj.bias"))?);
                Some(b)
            } else {
                None
            };
            let wgu_t =
                ndarray::concatenate(Axis(1), &[m("mlp.gate_proj")?.t(), m("mlp.up_proj")?.t()])
                    .map_err(|_| Error::BadShape {
                        name: format!("{p}.mlp.up_proj.weight"),
                        expected: vec![],
                        got: vec![],
                    })?;
            let wgu_t = PackedMatrix::pack(wgu_t.view());
            layers.push(Layer {
                attn_norm: vector(w, &format!("{p}.input_layernorm.weight"))?,
                wqkv_t,
                bqkv,
                wo_t: PackedMatrix::pack_transposed(m("self_attn.o_proj")?),
                mlp_norm: vector(w, &format!("{p}.post_attention_layernorm.weight"))?,
                wgu_t,
                wdown_t: PackedMatrix::pack_transposed(m("mlp.down_proj")?),
            });
        }
        let embed = matrix(w, "model.embed_tokens.weight")?.to_owned();
        let lm_head_t = if cfg.tie_embeddings {
            PackedMatrix::pack_transposed(embed.view())
        } else {
            PackedMatrix::pack_transposed(matrix(w, "lm_head.weight")?)
        };
        let half = cfg.head_dim() / 2;
        let inv_freqs = cfg.rope_inv_freqs();
        let mut rope_cos = Vec::with_capacity(cfg.max_seq_len * half);
        let mut rope_sin = Vec::with_capacity(cfg.max_seq_len * half);
        for pos in 0..cfg.max_seq_len {
            for &inv_freq in &inv_freqs {
                let angle = pos as f32 * inv_freq;
                rope_cos.push(angle.cos());
                rope_sin.push(angle.sin());
            }
        }
        Ok(Model {
            cfg: cfg.clone(),
            embed,
            layers,
            final_norm: vector(w, "model.norm.weight")?,
            lm_head_t,
            rope_cos,
            rope_sin,
            kv_precision: KvPrecision::F32,
        })
    }

    pub fn kv_dims(&self) -> KvDims {
        KvDims {
            n_layers: self.cfg.n_layers,
            n_kv_heads: self.cfg.n_kv_heads,
            head_dim: self.cfg.head_dim(),
            precision: self.kv_precision,
        }
    }

    /// Pushes the new tokens of every group through the model, writing their keys and values
    /// into the groups' blocks, and returns the next-token logits after the last token of each
    /// group.
    ///
    /// Every row's arithmetic is independent of the other rows (the GEMMs never split the inner
    /// dimension differently by batch size, attention reads only the row's own sequence), so a
    /// token's logits and keys/values are bitwise the same whether it is decoded alone, in a
    /// batch, or inside a prefill chunk of any size.
    ///
    /// Every group must have at least one token.
    ///
    /// # Shapes
    /// Returns `[groups.len(), vocab]`.
    pub fn forward_rows(&self, groups: &mut [RowGroup<'_>]) -> Array2<f32> {
        // Run the whole pass on a rayon worker: the parallel loops inside then start from a
        // worker, not from the caller's thread, which would block and be woken once per loop
        // (measured: 4.5x the decode speed of `tiny` at batch 1, 2x of `small`).
        rayon::scope(|_| self.forward_rows_in_pool(groups))
    }

    /// [`Model::forward_rows`], called on a rayon worker.
    fn forward_rows_in_pool(&self, groups: &mut [RowGroup<'_>]) -> Array2<f32> {
        debug_assert!(groups.iter().all(|g| !g.tokens.is_empty()));
        let cfg = &self.cfg;
        let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim(), cfg.n_heads, cfg.n_kv_heads);
        let (qw, kvw) = (nh * hd, nkv * hd);
        let width = qw + 2 * kvw;
        let dims = self.kv_dims();
        let group_size = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let arch = pulp::Arch::new();

        // (group, position) of every row.
        let meta: Vec<(usize, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| (0..g.tokens.len()).map(move |i| (gi, g.start + i)))
            .collect();
        let rows = meta.len();
        let mut x = Array2::<f32>::zeros((rows, d));
        for (mut row, tok) in x
            .axis_iter_mut(Axis(0))
            .zip(groups.iter().flat_map(|g| g.tokens))
        {
            row.assign(&self.embed.row(*tok as usize));
        }
        for g in groups.iter_mut() {
            kv::prepare(g.blocks, dims, g.start, g.start + g.tokens.len());
        }

        let mut xn = Array2::<f32>::zeros((rows, d));
        let mut qkv = Array2::<f32>::zeros((rows, width));
        let mut attn = Array2::<f32>::zeros((rows, qw));
        let mut gu = Array2::<f32>::zeros((rows, 2 * cfg.d_ff));
        let mut act = Array2::<f32>::zeros((rows, cfg.d_ff));
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_into(&x, &layer.attn_norm, cfg.norm_eps, &mut xn);
            linear_into(&xn, &layer.wqkv_t, &mut qkv);
            if let Some(b) = &layer.bqkv {
                for mut row in qkv.axis_iter_mut(Axis(0)) {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += b;
                    }
                }
            }
            {
                // RoPE and cache writes, in parallel over sequences (each owns its blocks).
                let mut parts: Vec<(&mut RowGroup<'_>, &mut [f32])> =
                    Vec::with_capacity(groups.len());
                let mut rest = qkv.as_slice_mut().expect("standard layout");
                for g in groups.iter_mut() {
                    let (mine, tail) = rest.split_at_mut(g.tokens.len() * width);
                    parts.push((g, mine));
                    rest = tail;
                }
                // One task per sequence only when there is enough work to pay for a task.
                let per_seq = width * rows / parts.len().max(1);
                parts
                    .par_iter_mut()
                    .with_min_len(min_tasks_len(8 * per_seq))
                    .for_each(|(g, rows)| {
                        for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                            let pos = g.start + i;
                            // q and k heads are adjacent: rotate all n_heads + n_kv_heads of them.
                            self.rope(&mut row[..qw + kvw], pos);
                            let (k, v) = row[qw..].split_at(kvw);
                            kv::write(g.blocks, dims, l, pos, k, v);
                        }
                    });
            }
            {
                let tables: Vec<&[Arc<Block>]> =
                    groups.iter().map(|g| g.blocks.as_slice()).collect();
                let qkv_s = qkv.as_slice().expect("standard layout");
                let attn_s = attn.as_slice_mut().expect("standard layout");
                // One task per token (all heads) when there are enough tokens to share out;
                // otherwise one per (token, head). Results are the same either way.
                let heads_per_task = if rows >= ATTN_ROWS_PER_TASK_SPLIT {
                    nh
                } else {
                    1
                };
                let tasks_per_row = nh / heads_per_task;
                attn_s
                    .par_chunks_mut(heads_per_task * hd)
                    .enumerate()
                    .for_each_init(Vec::new, |scores, (i, out)| {
                        let r = i / tasks_per_row;
                        let h0 = (i % tasks_per_row) * heads_per_task;
                        let (gi, pos) = meta[r];
                        let q = &qkv_s[r * width..r * width + qw];
                        let heads = h0..h0 + heads_per_task;
                        arch.dispatch(Attend {
                            blocks: tables[gi],
                            dims,
                            layer: l,
                            group_size,
                            heads,
                            pos,
                            q,
                            scale,
                            out,
                            scratch: scores,
                        });
                    });
            }
            linear_acc(&attn, &layer.wo_t, &mut x);
            rms_norm_into(&x, &layer.mlp_norm, cfg.norm_eps, &mut xn);
            linear_into(&xn, &layer.wgu_t, &mut gu);
            swiglu_into(&gu, &mut act);
            linear_acc(&act, &layer.wdown_t, &mut x);
        }

        let mut last = Vec::with_capacity(groups.len());
        let mut end = 0;
        for g in groups.iter() {
            end += g.tokens.len();
            last.push(end - 1);
        }
        let xl = x.select(Axis(0), &last);
        let mut xln = Array2::<f32>::zeros(xl.raw_dim());
        rms_norm_into(&xl, &self.final_norm, cfg.norm_eps, &mut xln);
        let mut logits = Array2::<f32>::zeros((groups.len(), cfg.vocab_size));
        linear_into(&xln, &self.lm_head_t, &mut logits);
        logits
    }

    /// Applies RoPE in place to consecutive heads of one row at position `pos`.
    fn rope(&self, heads: &mut [f32], pos: usize) {
        let hd = self.cfg.head_dim();
        let half = hd / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in heads.chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }

    /// Plain full-sequence forward pass without a cache, written for clarity: the reference the
    /// cached path is tested against. Uses ndarray `dot`, a dense causal score matrix per head and
    /// `f32::exp`.
    ///
    /// # Shapes
    /// `tokens`: `[len]`; returns `[len, vocab]`.
    pub fn forward_full(&self, tokens: &[u32]) -> Array2<f32> {
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim(), cfg.n_heads, cfg.n_kv_heads);
        let (qw, kvw) = (nh * hd, nkv * hd);
        let half = hd / 2;
        let len = tokens.len();
        let idx: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
        let mut x = self.embed.select(Axis(0), &idx);
        let inv_freqs = cfg.rope_inv_freqs();
        let rope = |m: &mut Array2<f32>| {
            for (pos, mut row) in m.axis_iter_mut(Axis(0)).enumerate() {
                for mut head in row.exact_chunks_mut(hd) {
                    for (i, &inv_freq) in inv_freqs.iter().enumerate() {
                        let angle = pos as f32 * inv_freq;
                        let (c, s) = (angle.cos(), angle.sin());
                        let (x1, x2) = (head[i], head[i + half]);
                        head[i] = x1 * c - x2 * s;
                        head[i + half] = x2 * c + x1 * s;
                    }
                }
            }
        };
        let norm = |x: &Array2<f32>, w: &[f32]| {
            let mut out = x.clone();
            for mut row in out.axis_iter_mut(Axis(0)) {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
                let inv = 1.0 / (ms + cfg.norm_eps).sqrt();
                for (v, w) in row.iter_mut().zip(w) {
                    *v = *v * inv * w;
                }
            }
            out
        };
        for layer in &self.layers {
            let (wqkv, wo) = (layer.wqkv_t.unpack(), layer.wo_t.unpack());
            let (wgu, wdown) = (layer.wgu_t.unpack(), layer.wdown_t.unpack());
            let xn = norm(&x, &layer.attn_norm);
            let mut q = xn.dot(&cols(&wqkv, 0, qw));
            let mut k = xn.dot(&cols(&wqkv, qw, qw + kvw));
            let mut v = xn.dot(&cols(&wqkv, qw + kvw, qw + 2 * kvw));
            if let Some(b) = &layer.bqkv {
                q += &ArrayView1::from(&b[..qw]);
                k += &ArrayView1::from(&b[qw..qw + kvw]);
                v += &ArrayView1::from(&b[qw + kvw..]);
            }
            rope(&mut q);
            rope(&mut k);
            let mut attn = Array2::<f32>::zeros((len, qw));
            for h in 0..nh {
                let g = h / (nh / nkv);
                let qh = cols(&q, h * hd, (h + 1) * hd);
                let kh = cols(&k, g * hd, (g + 1) * hd);
                let vh = cols(&v, g * hd, (g + 1) * hd);
                let mut scores = qh.dot(&kh.t()) * (1.0 / (hd as f32).sqrt());
                for (i, mut row) in scores.axis_iter_mut(Axis(0)).enumerate() {
                    let m = row
                        .slice_axis(Axis(0), Slice::from(0..i + 1))
                        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let mut sum = 0.0;
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = if j <= i { (*v - m).exp() } else { 0.0 };
                        sum += *v;
                    }
                    row /= sum;
                }
                attn.slice_axis_mut(Axis(1), Slice::from(h * hd..(h + 1) * hd))
                    .assign(&scores.dot(&vh));
            }
            x = x + attn.dot(&wo);
            let xn = norm(&x, &layer.mlp_norm);
            let gate = xn.dot(&cols(&wgu, 0, cfg.d_ff));
            let up = xn.dot(&cols(&wgu, cfg.d_ff, 2 * cfg.d_ff));
            let act = gate.mapv(|g| g / (1.0 + (-g).exp())) * up;
            x = x + act.dot(&wdown);
        }
        norm(&x, &self.final_norm).dot(&self.lm_head_t.unpack())
    }
}

/// Columns `a..b` of `m`.
fn cols(m: &Array2<f32>, a: usize, b: usize) -> ArrayView2<'_, f32> {
    m.slice_axis(Axis(1), Slice::from(a..b))
}

/// `y = x · w_t` with the packed weight ([`PackedMatrix::matmul`]).
///
/// # Shapes
/// `x`: `[rows, in]`, `w_t`: `[in, out]`, `y`: `[rows, out]`.
fn linear_into(x: &Array2<f32>, w_t: &PackedMatrix, y: &mut Array2<f32>) {
    let x = x.as_slice().expect("standard layout");
    w_t.matmul(x, y.as_slice_mut().expect("standard layout"), false);
}

/// `y += x · w_t` (the residual add after the product).
///
/// # Shapes
/// As [`linear_into`].
fn linear_acc(x: &Array2<f32>, w_t: &PackedMatrix, y: &mut Array2<f32>) {
    let x = x.as_slice().expect("standard layout");
    w_t.matmul(x, y.as_slice_mut().expect("standard layout"), true);
}

/// Row-wise RMSNorm: `out = x / sqrt(mean(x²) + eps) * w`.
fn rms_norm_into(x: &Array2<f32>, w: &[f32], eps: f32, out: &mut Array2<f32>) {
    for (xr, mut or) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        let mut ss = 0.0f32;
        for v in xr.iter() {
            ss += v * v;
        }
        let inv = 1.0 / (ss / xr.len() as f32 + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr.iter()).zip(w) {
            *o = *v * inv * w;
        }
    }
}

/// SwiGLU: `act = silu(gate) * up` where `gu = [gate | up]`.
///
/// # Shapes
/// `gu`: `[rows, 2 d_ff]`, `act`: `[rows, d_ff]`.
fn swiglu_into(gu: &Array2<f32>, act: &mut Array2<f32>) {
    let ff = act.ncols();
    let gu = gu.as_slice().expect("standard layout");
    let act = act.as_slice_mut().expect("standard layout");
    act.par_chunks_mut(ff)
        .zip(gu.par_chunks(2 * ff))
        .with_min_len(min_tasks_len(2 * ff))
        .for_each(|(a, g)| {
            let (gate, up) = g.split_at(ff);
            for ((a, &g), &u) in a.iter_mut().zip(gate).zip(up) {
                *a = g / (1.0 + exp_fast(-g)) * u;
            }
        });
}

/// Causal attention of query heads `heads` of one token at position `pos` over positions
/// `0..=pos` of its sequence, in two passes over the blocks (scores, then values), all heads of a
/// block together so that each pass streams the block's contiguous per-layer keys or values.
/// A head's arithmetic does not depend on which other heads share the call or on the batch.
/// Run through [`pulp::Arch::dispatch`], so that the loops compile for AVX2 and FMA where the
/// CPU has them.
///
/// # Shapes
/// `q`: `[n_heads * head_dim]` (the token's roped queries), `out`: `[heads.len() * head_dim]`.
struct Attend<'a> {
    blocks: &'a [Arc<Block>],
    dims: KvDims,
    layer: usize,
    group_size: usize,
    heads: std::ops::Range<usize>,
    pos: usize,
    q: &'a [f32],
    scale: f32,
    out: &'a mut [f32],
    scratch: &'a mut Vec<f32>,
}

impl pulp::WithSimd for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Attend {
            blocks,
            dims,
            layer,
            group_size,
            heads,
            pos,
            q,
            scale,
            out,
            scratch,
        } = self;
        // Specialise the common head sizes so that inner loops have constant trip counts.
        macro_rules! by_head_dim {
            ($e:ty) => {
                match dims.head_dim {
                    32 => attend_hd::<$e>(
                        32, blocks, dims, layer, group_size, heads, pos, q, scale, out, scratch,
                    ),
                    64 => attend_hd::<$e>(
                        64, blocks, dims, layer, group_size, heads, pos, q, scale, out, scratch,
                    ),
                    hd => attend_hd::<$e>(
                        hd, blocks, dims, layer, group_size, heads, pos, q, scale, out, scratch,
                    ),
                }
            };
        }
        match dims.precision {
            KvPrecision::F32 => by_head_dim!(f32),
            KvPrecision::Bf16 => by_head_dim!(u16),
        }
    }
}

/// Lanes of the vectorised reductions in [`attend_hd`].
const LANES: usize = 16;
/// Interleaved partial sums of a query-key dot product in [`attend_hd`] (which adds them as
/// `(s0 + s1) + (s2 + s3)`).
const SPLIT: usize = 4;
const _: () = assert!(SPLIT == 4);

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_hd<E: KvElem>(
    hd: usize,
    blocks: &[Arc<Block>],
    dims: KvDims,
    layer: usize,
    group_size: usize,
    heads: std::ops::Range<usize>,
    pos: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let tile_len = hd * BLOCK_SIZE;
    let n = pos + 1;
    let nb = kv::blocks_for(n);
    let stride = nb * BLOCK_SIZE;
    let nheads = heads.len();
    let layer_at = dims.tile(layer, 0);
    let layer_len = dims.n_kv_heads * tile_len;
    scratch.clear();
    scratch.resize(nheads * stride + nheads, 0.0);
    let (scores, inv_sums) = scratch.split_at_mut(nheads * stride);

    // Pass 1: scores[h, j] = q_h · k_j, 16 positions of a block as independent lanes, the
    // head dimensions summed in SPLIT interleaved partial sums (independent FMA chains) that are
    // added in a fixed order at the end.
    for (b, blk) in blocks[..nb].iter().enumerate() {
        let (bk, _) = kv_of::<E>(blk);
        let kl = &bk[layer_at..layer_at + layer_len];
        for (i, h) in heads.clone().enumerate() {
            let g = h / group_size;
            let kt = &kl[g * tile_len..(g + 1) * tile_len];
            let qh = &q[h * hd..(h + 1) * hd];
            let mut acc = [[0.0f32; BLOCK_SIZE]; SPLIT];
            let whole = hd / SPLIT * SPLIT;
            for d0 in (0..whole).step_by(SPLIT) {
                for (t, a) in acc.iter_mut().enumerate() {
                    let krow: &[E; BLOCK_SIZE] = kt[(d0 + t) * BLOCK_SIZE..][..BLOCK_SIZE]
                        .try_into()
                        .expect("a block row");
                    let kf: [f32; BLOCK_SIZE] = std::array::from_fn(|s| krow[s].to_f32());
                    let qd = qh[d0 + t];
                    for s in 0..BLOCK_SIZE {
                        a[s] = qd.mul_add(kf[s], a[s]);
                    }
                }
            }
            for (krow, &qd) in kt[whole * BLOCK_SIZE..]
                .chunks_exact(BLOCK_SIZE)
                .zip(&qh[whole..])
            {
                for s in 0..BLOCK_SIZE {
                    acc[0][s] = qd.mul_add(krow[s].to_f32(), acc[0][s]);
                }
            }
            let dst = &mut scores[i * stride + b * BLOCK_SIZE..][..BLOCK_SIZE];
            for s in 0..BLOCK_SIZE {
                dst[s] = (acc[0][s] + acc[1][s]) + (acc[2][s] + acc[3][s]);
            }
        }
    }

    // Softmax numerators exp(scale·s − max) per head; normalised at the end.
    for (i, inv_sum) in inv_sums.iter_mut().enumerate() {
        let sc = &mut scores[i * stride..i * stride + n];
        // The maximum is exact in any order; scaling by a positive factor preserves it.
        let m = lane_max(sc) * scale;
        for v in sc.iter_mut() {
            *v = exp_fast(*v * scale - m);
        }
        *inv_sum = 1.0 / lane_sum(sc);
    }

    // Pass 2: out_h = Σ_j p[h, j] v_j, accumulated LANES dimensions at a time in registers.
    out.fill(0.0);
    for (b, blk) in blocks[..nb].iter().enumerate() {
        let (_, bv) = kv_of::<E>(blk);
        let vl = &bv[layer_at..layer_at + layer_len];
        let valid = BLOCK_SIZE.min(n - b * BLOCK_SIZE);
        for (i, h) in heads.clone().enumerate() {
            let g = h / group_size;
            let vt = &vl[g * tile_len..(g + 1) * tile_len];
            let oh = &mut out[i * hd..(i + 1) * hd];
            let ph = &scores[i * stride + b * BLOCK_SIZE..][..valid];
            // Chunks of 2 LANES dimensions (four 8-lane FMA chains), then of LANES, then single
            // dimensions; each dimension sums over the positions in order either way.
            let wide = hd / (2 * LANES) * (2 * LANES);
            for c in (0..wide).step_by(2 * LANES) {
                value_chunk::<E, { 2 * LANES }>(ph, vt, hd, c, oh);
            }
            let full = hd / LANES * LANES;
            for c in (wide..full).step_by(LANES) {
                value_chunk::<E, LANES>(ph, vt, hd, c, oh);
            }
            for e in full..hd {
                for (s, &p) in ph.iter().enumerate() {
                    oh[e] = p.mul_add(vt[s * hd + e].to_f32(), oh[e]);
                }
            }
        }
    }
    for (oh, &inv) in out.chunks_exact_mut(hd).zip(inv_sums.iter()) {
        for o in oh.iter_mut() {
            *o *= inv;
        }
    }
}

/// `oh[c..c + W] += Σ_s ph[s] · v_s[c..c + W]` over a block's value rows `vt` (`[16, hd]`),
/// accumulated in registers, positions in order.
#[inline(always)]
fn value_chunk<E: KvElem, const W: usize>(
    ph: &[f32],
    vt: &[E],
    hd: usize,
    c: usize,
    oh: &mut [f32],
) {
    let mut acc = [0.0f32; W];
    acc.copy_from_slice(&oh[c..c + W]);
    for (s, &p) in ph.iter().enumerate() {
        let v = &vt[s * hd + c..s * hd + c + W];
        for e in 0..W {
            acc[e] = p.mul_add(v[e].to_f32(), acc[e]);
        }
    }
    oh[c..c + W].copy_from_slice(&acc);
}

/// The keys and values of a block of the engine's precision `E`.
#[inline(always)]
fn kv_of<E: KvElem>(block: &Block) -> (&[E], &[E]) {
    // Blocks are made by `kv::prepare` with the model's precision, so the type always matches.
    E::of(block)
        .unwrap_or_else(|| unreachable!("a KV block of another precision than its engine's"))
}

/// Maximum of a non-empty slice (NaNs ignored), with vectorisable lane-wise comparisons.
#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for e in 0..LANES {
            lanes[e] = if ch[e] > lanes[e] { ch[e] } else { lanes[e] };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// Sum of a slice in LANES interleaved partial sums (a fixed order that depends only on the
/// length, so results are reproducible).
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for e in 0..LANES {
            lanes[e] += ch[e];
        }
    }
    lanes.iter().chain(rest).sum()
}

/// `e^x` in f32 from plain arithmetic (Cephes-style range reduction and a degree-6 polynomial),
/// written so that loops over it vectorise (no libm call, no saturating float-to-int cast) and
/// results do not depend on the platform's libm. Relative error below 3e-7 on `[-87, 88]`;
/// inputs are clamped to that range, NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer n, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the bits: bits(t) − bits(ROUND) = n for |n| < 2^22.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    y * two_n
}
