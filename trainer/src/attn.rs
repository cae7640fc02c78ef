//! Attention layouts of a training batch: dense masks and query-block sparse attention.
//!
//! A dense layout scores every (query, key) pair of a padded row, `B · T²` entries, and masks
//! the pairs a token may not attend. That is what a flattened (causal) row needs, but a
//! tree-packed row attends far less: a token sees only its own root-to-node path, which is a
//! small part of a row holding a whole tree (or several). With dense attention a packed row would
//! pay `T²` for a path-length's worth of work, which is why dense packing must keep rows short.
//!
//! The sparse layout ([`SparseAttention`]) makes attention cost follow the mask instead:
//! - the padded batch is cut into *query blocks* of [`QUERY_BLOCK`] consecutive positions;
//! - each block gathers exactly the keys that at least one of its queries may attend (the union
//!   of their paths: token-granular, not block-granular, so scattered ancestors cost only their
//!   own tokens), in increasing order, and scores its queries against them with an additive
//!   bias (0 or blocked) for the exact per-pair mask;
//! - blocks are grouped into at most [`MAX_BUCKETS`] buckets by key count (an optimal split of the
//!   sorted counts), each bucket padded to its own largest count, so one long path does not
//!   make every block pay for it;
//! - outputs are put back in block order.
//!
//! The result equals dense masked attention up to float summation order (the blocked entries get
//! exactly zero weight in both). Padding positions attend only themselves, as in the dense
//! layout, and nobody attends them.
//!
//! [`AttentionLayout::plan`] picks the layout of a batch: sparse when its rows are at least
//! [`SPARSE_MIN_LEN`] long and it scores at most [`SPARSE_MAX_FRACTION`] of the dense entries,
//! dense otherwise (gathers cost memory traffic and every bucket adds operations, so a layout
//! that saves little is not worth it).

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// Queries per block of the sparse layout.
pub const QUERY_BLOCK: usize = 32;

/// Most buckets the sparse layout splits its blocks into.
pub const MAX_BUCKETS: usize = 4;

/// Rows shorter than this always use the dense layout: for short rows the gathers and the
/// per-bucket operations cost more than the entries they skip (measured on SFT batches of
/// ~125-token demonstrations: dense 10.4 s, sparse 11.4 s per 40 steps; on 710-token flattened
/// RL rows sparse wins, 5.0 s vs 6.7 s per update).
pub const SPARSE_MIN_LEN: usize = 256;

/// The sparse layout is used when it scores at most this fraction of the dense entries.
pub const SPARSE_MAX_FRACTION: f64 = 0.7;

/// Additive score for a blocked attention entry. Finite (not `-inf`) so that a row with every
/// entry blocked gives a uniform softmax instead of NaN; `exp` of this value minus any realistic
/// maximum is exactly 0 in f32, so allowed entries are unaffected.
pub(crate) const BLOCKED_SCORE: f32 = -1.0e9;

/// Which keys each query of a padded batch may attend, on a device.
#[derive(Debug, Clone)]
pub enum AttentionMask {
    /// `[B, T, T]`, `true` = blocked (burn's convention).
    Dense(Tensor<3, Bool>),
    /// Query-block sparse attention (module docs).
    Sparse(SparseAttention),
}

/// One bucket of query blocks that share a padded key count.
#[derive(Debug, Clone)]
pub struct SparseBucket {
    /// Global block ids (`row · blocks_per_row + block`) of the bucket's query blocks, `[nq]`.
    pub queries: Tensor<1, Int>,
    /// Flat key indices (`row · T + position`) per block, `[nq · keys]`.
    pub keys: Tensor<1, Int>,
    /// Additive bias `[nq, 1, block, keys]`: 0 where the query attends the key.
    pub bias: Tensor<4>,
    /// Number of query blocks.
    pub blocks: usize,
    /// Key slots per block (the bucket's largest key count).
    pub key_slots: usize,
}

/// The device form of the sparse layout (module docs).
#[derive(Debug, Clone)]
pub struct SparseAttention {
    /// Queries per block; the padded length is a multiple of it.
    pub block: usize,
    /// The buckets, in the order their outputs are concatenated.
    pub buckets: Vec<SparseBucket>,
    /// For each global block id, its position in the concatenated bucket outputs, `[B · nb]`.
    pub inverse: Tensor<1, Int>,
}

/// A host-side layout, built by [`AttentionLayout::plan`] and uploaded by
/// [`AttentionLayout::to_device`].
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionLayout {
    /// Dense `[B, T, T]` mask, `true` = blocked.
    Dense {
        /// The mask, row-major.
        mask: Vec<bool>,
    },
    /// Sparse buckets.
    Sparse {
        /// Queries per block.
        block: usize,
        /// Per bucket: global block ids, flat key indices (`nq · slots`), bias
        /// (`nq · block · slots`) and the slot count.
        buckets: Vec<HostBucket>,
        /// Block id → position in the concatenated bucket outputs.
        inverse: Vec<i64>,
    },
}

/// One bucket of [`AttentionLayout::Sparse`].
#[derive(Debug, Clone, PartialEq)]
pub struct HostBucket {
    /// Global block ids.
    pub queries: Vec<i64>,
    /// Flat key indices, `slots` per block.
    pub keys: Vec<i64>,
    /// Additive bias, `block · slots` per block.
    pub bias: Vec<f32>,
    /// Key slots per block.
    pub slots: usize,
}

/// Which layout [`AttentionLayout::plan`] may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutChoice {
    /// Sparse when it saves enough (module docs); the default.
    #[default]
    Auto,
    /// Always dense.
    Dense,
    /// Always sparse, with this many queries per block (tests use small blocks).
    Sparse {
        /// Queries per block.
        block: usize,
    },
}

/// What attention needs of a packed row (`pack::PackedSequence::spans`): the span of each
/// token and the parent of each span. Token `i` may attend token `j <= i` when `j`'s span is
/// `i`'s or one of its ancestors.
#[derive(Debug, Clone, Copy)]
pub struct RowSpans<'a> {
    /// The span of each token.
    pub span: &'a [u32],
    /// The parent of each span (`None` at a root).
    pub span_parent: &'a [Option<u32>],
}

impl RowSpans<'_> {
    /// Tokens in the row.
    pub fn len(&self) -> usize {
        self.span.len()
    }

    /// Whether the row has no tokens.
    pub fn is_empty(&self) -> bool {
        self.span.is_empty()
    }

    /// DFS entry and exit times of the span tree: span `m` is span `k` or one of its ancestors
    /// iff `enter[m] <= enter[k] < exit[m]`.
    fn intervals(&self) -> (Vec<u32>, Vec<u32>) {
        let n = self.span_parent.len();
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (k, p) in self.span_parent.iter().enumerate() {
            match p {
                Some(p) => children[*p as usize].push(k as u32),
                None => roots.push(k as u32),
            }
        }
        let (mut enter, mut exit) = (vec![0u32; n], vec![0u32; n]);
        let mut clock = 0u32;
        // (span, next child index)
        let mut stack: Vec<(u32, usize)> = Vec::new();
        for &r in roots.iter().rev() {
            stack.push((r, 0));
            enter[r as usize] = clock;
            clock += 1;
            while let Some(top) = stack.last_mut() {
                let (k, next) = *top;
                if let Some(&c) = children[k as usize].get(next) {
                    top.1 += 1;
                    enter[c as usize] = clock;
                    clock += 1;
                    stack.push((c, 0));
                } else {
                    exit[k as usize] = clock;
                    stack.pop();
                }
            }
        }
        (enter, exit)
    }
}

/// Per-row attention structure: `allowed(i, j)` for real tokens, in O(1) from the DFS entry
/// and exit times of the span tree (span `m` is an ancestor of `k`, or `k` itself, iff
/// `enter[m] <= enter[k] < exit[m]`), so memory and set-up grow with the number of spans, not
/// its square (trees forked at token granularity have thousands of spans).
struct RowMask<'a> {
    seq: RowSpans<'a>,
    enter: Vec<u32>,
    exit: Vec<u32>,
}

impl<'a> RowMask<'a> {
    fn new(seq: RowSpans<'a>) -> Self {
        let (enter, exit) = seq.intervals();
        RowMask { seq, enter, exit }
    }

    /// Whether span `m` is span `k` or one of its ancestors.
    fn contains(&self, m: u32, k: u32) -> bool {
        let (m, k) = (m as usize, k as usize);
        self.enter[m] <= self.enter[k] && self.enter[k] < self.exit[m]
    }

    fn allowed(&self, i: usize, j: usize) -> bool {
        j <= i && self.contains(self.seq.span[j], self.seq.span[i])
    }
}

impl AttentionLayout {
    /// The layout of `sequences` padded to a common length, and that length.
    pub fn plan(sequences: &[RowSpans], choice: LayoutChoice) -> (AttentionLayout, usize) {
        let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let rows: Vec<RowMask> = sequences.iter().copied().map(RowMask::new).collect();
        let block = match choice {
            LayoutChoice::Sparse { block } => Some(block.max(1)),
            LayoutChoice::Auto if len >= SPARSE_MIN_LEN => Some(QUERY_BLOCK),
            LayoutChoice::Auto => None,
            LayoutChoice::Dense => None,
        };
        if let Some(block) = block {
            // Sparse layouts pad rows to a whole number of query blocks.
            let t = len.div_ceil(block) * block;
            let counts = block_keys(&rows, t, block);
            let sizes: Vec<usize> = counts.iter().map(|k| k.len()).collect();
            let split = bucket_split(&sizes);
            let sparse_entries: usize = split.iter().map(|(ids, slots)| ids.len() * slots).sum();
            let dense_entries = rows.len() * len * len;
            let worth =
                (sparse_entries * block) as f64 <= SPARSE_MAX_FRACTION * dense_entries as f64;
            if choice != LayoutChoice::Auto || worth {
                return (sparse_layout(&rows, t, block, &counts, split), t);
            }
        }
        (dense_layout(&rows, len), len)
    }

    /// Uploads the layout.
    pub fn to_device(&self, rows: usize, t: usize, device: &Device) -> AttentionMask {
        match self {
            AttentionLayout::Dense { mask } => AttentionMask::Dense(Tensor::from_data(
                TensorData::new(mask.clone(), [rows, t, t]),
                device,
            )),
            AttentionLayout::Sparse {
                block,
                buckets,
                inverse,
            } => {
                let int = |v: &[i64]| {
                    Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
                };
                AttentionMask::Sparse(SparseAttention {
                    block: *block,
                    buckets: buckets
                        .iter()
                        .map(|b| {
                            let nq = b.queries.len();
                            SparseBucket {
                                queries: int(&b.queries),
                                keys: int(&b.keys),
                                bias: Tensor::from_data(
                                    TensorData::new(b.bias.clone(), [nq, 1, *block, b.slots]),
                                    device,
                                ),
                                blocks: nq,
                                key_slots: b.slots,
                            }
                        })
                        .collect(),
                    inverse: int(inverse),
                })
            }
        }
    }
}

/// Dense mask of rows padded to `t`: padding positions see only themselves.
fn dense_layout(rows: &[RowMask], t: usize) -> AttentionLayout {
    let mut mask = vec![true; rows.len() * t * t];
    for (r, row) in rows.iter().enumerate() {
        let n = row.seq.len();
        for i in 0..t {
            let m = &mut mask[(r * t + i) * t..(r * t + i + 1) * t];
            if i >= n {
                m[i] = false;
                continue;
            }
            for (j, blocked) in m.iter_mut().enumerate().take(i + 1) {
                *blocked = !row.allowed(i, j);
            }
        }
    }
    AttentionLayout::Dense { mask }
}

/// For every query block of every row (global block order), the sorted in-row positions of the
/// keys its queries may attend: the tokens of the spans on the queries' paths. Spans are
/// contiguous runs of a row, so a block costs its queries' path lengths plus its keys.
fn block_keys(rows: &[RowMask], t: usize, block: usize) -> Vec<Vec<u32>> {
    let nb = t / block;
    let mut out = Vec::with_capacity(rows.len() * nb);
    for row in rows {
        let seq = row.seq;
        let n = seq.len();
        let spans = seq.span_parent.len();
        // Token range of each span.
        let mut range = vec![(usize::MAX, 0usize); spans];
        let mut count = vec![0usize; spans];
        for (i, &sp) in seq.span.iter().enumerate() {
            let r = &mut range[sp as usize];
            r.0 = r.0.min(i);
            r.1 = r.1.max(i + 1);
            count[sp as usize] += 1;
        }
        // Packing writes each span as one run; should a row ever interleave spans, fall back
        // to scanning the row's tokens.
        let contiguous = (0..spans).all(|m| count[m] == 0 || range[m].1 - range[m].0 == count[m]);
        // The block that last reached each span (a walk up stops at a span already reached).
        let mut stamp = vec![usize::MAX; spans];
        for blk in 0..nb {
            let (lo, hi) = (blk * block, (blk + 1) * block);
            let mut keys = Vec::new();
            let real_hi = hi.min(n);
            if lo < real_hi {
                let mut reached: Vec<usize> = Vec::new();
                for i in lo..real_hi {
                    if i > lo && seq.span[i] == seq.span[i - 1] {
                        continue;
                    }
                    let mut cur = Some(seq.span[i]);
                    while let Some(m) = cur {
                        let m = m as usize;
                        if stamp[m] == blk {
                            break;
                        }
                        stamp[m] = blk;
                        reached.push(m);
                        cur = seq.span_parent[m];
                    }
                }
                if contiguous {
                    reached.sort_unstable_by_key(|&m| range[m].0);
                    for m in reached {
                        let (a, b) = range[m];
                        keys.extend((a..b.min(real_hi)).map(|j| j as u32));
                    }
                } else {
                    keys.extend(
                        (0..real_hi)
                            .filter(|&j| stamp[seq.span[j] as usize] == blk)
                            .map(|j| j as u32),
                    );
                }
            }
            // Padding queries attend themselves.
            keys.extend((lo.max(n)..hi).map(|i| i as u32));
            out.push(keys);
        }
    }
    out
}

/// Splits blocks into at most [`MAX_BUCKETS`] buckets of consecutive key counts (in sorted
/// order) minimising the padded entries `Σ blocks · max count`. Returns per bucket its block ids
/// and its slot count.
fn bucket_split(sizes: &[usize]) -> Vec<(Vec<usize>, usize)> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let n = order.len();
    if n == 0 {
        return Vec::new();
    }
    let s = |k: usize| sizes[order[k]].max(1);
    // best[g][e]: least cost of covering sorted blocks 0..e with g buckets; cut[g][e] the start
    // of the last bucket.
    let inf = usize::MAX;
    let mut best = vec![vec![inf; n + 1]; MAX_BUCKETS + 1];
    let mut cut = vec![vec![0; n + 1]; MAX_BUCKETS + 1];
    best[0][0] = 0;
    for g in 1..=MAX_BUCKETS {
        for e in 1..=n {
            for b in 0..e {
                if best[g - 1][b] == inf {
                    continue;
                }
                let cost = best[g - 1][b] + (e - b) * s(e - 1);
                if cost < best[g][e] {
                    best[g][e] = cost;
                    cut[g][e] = b;
                }
            }
        }
    }
    let g_best = (1..=MAX_BUCKETS)
        .min_by_key(|&g| (best[g][n], g))
        .expect("at least one bucket count");
    let mut buckets = Vec::new();
    let (mut g, mut e) = (g_best, n);
    while g > 0 && e > 0 {
        let b = cut[g][e];
        buckets.push((order[b..e].to_vec(), s(e - 1)));
        e = b;
        g -= 1;
    }
    buckets.reverse();
    buckets
}

/// The sparse layout of rows padded to `t` (a multiple of `block`).
fn sparse_layout(
    rows: &[RowMask],
    t: usize,
    block: usize,
    keys: &[Vec<u32>],
    split: Vec<(Vec<usize>, usize)>,
) -> AttentionLayout {
    let nb = t / block;
    let mut inverse = vec![0i64; keys.len()];
    let mut next = 0i64;
    let mut buckets = Vec::with_capacity(split.len());
    for (ids, slots) in split {
        let mut hb = HostBucket {
            queries: Vec::with_capacity(ids.len()),
            keys: Vec::with_capacity(ids.len() * slots),
            bias: Vec::with_capacity(ids.len() * block * slots),
            slots,
        };
        for id in ids {
            inverse[id] = next;
            next += 1;
            hb.queries.push(id as i64);
            let (r, blk) = (id / nb, id % nb);
            let row = &rows[r];
            let n = row.seq.len();
            let base = (r * t) as i64;
            let ks = &keys[id];
            // Unused slots read position 0 of the row and are blocked.
            hb.keys.extend(ks.iter().map(|&j| base + j as i64));
            hb.keys.extend(std::iter::repeat_n(base, slots - ks.len()));
            for i in blk * block..(blk + 1) * block {
                for slot in 0..slots {
                    let ok = match ks.get(slot) {
                        None => false,
                        Some(&j) => {
                            let j = j as usize;
                            if i >= n {
                                j == i
                            } else {
                                j < n && row.allowed(i, j)
                            }
                        }
                    };
                    hb.bias.push(if ok { 0.0 } else { BLOCKED_SCORE });
                }
            }
        }
        buckets.push(hb);
    }
    AttentionLayout::Sparse {
        block,
        buckets,
        inverse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackedSequence;

    fn plan(rows: &[PackedSequence], choice: LayoutChoice) -> (AttentionLayout, usize) {
        let spans: Vec<_> = rows.iter().map(PackedSequence::spans).collect();
        AttentionLayout::plan(&spans, choice)
    }

    /// `parts` independent causal parts of `len` tokens in one row.
    fn parts(parts: usize, len: usize) -> PackedSequence {
        let mut row = PackedSequence::causal(vec![1; len], Vec::new());
        for _ in 1..parts {
            row.append(PackedSequence::causal(vec![1; len], Vec::new()));
        }
        row
    }

    #[test]
    fn planner_picks_sparse_only_where_it_saves() {
        // Short causal rows: gathering saves nothing.
        let (layout, t) = plan(&[parts(1, 40), parts(1, 30)], LayoutChoice::Auto);
        assert!(matches!(layout, AttentionLayout::Dense { .. }));
        assert_eq!(t, 40);
        // Eight independent parts of 64 tokens in one row: each block sees only its own part.
        let (layout, t) = plan(&[parts(8, 64)], LayoutChoice::Auto);
        assert_eq!(t, 512);
        let AttentionLayout::Sparse { buckets, .. } = layout else {
            panic!("expected a sparse layout");
        };
        let entries: usize = buckets.iter().map(|b| b.queries.len() * b.slots).sum();
        // 16 blocks of 32 queries: the first block of a part sees 32 keys, the second 64.
        assert_eq!(entries, 8 * (32 + 64));
        let allowed: usize = buckets
            .iter()
            .map(|b| b.bias.iter().filter(|&&x| x == 0.0).count())
            .sum();
        assert_eq!(
            allowed,
            8 * 64 * 65 / 2,
            "exactly the causal pairs of each part"
        );
    }

    #[test]
    fn bucket_split_is_optimal_on_a_small_case() {
        // Sorted counts 1,1,1,1,10,10,100: four buckets fit each distinct level exactly.
        let sizes = [10, 1, 100, 1, 10, 1, 1];
        let split = bucket_split(&sizes);
        let cost: usize = split.iter().map(|(ids, s)| ids.len() * s).sum();
        assert_eq!(cost, 4 + 20 + 100);
        let mut all: Vec<usize> = split.iter().flat_map(|(ids, _)| ids.clone()).collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        for (ids, s) in &split {
            assert!(ids.iter().all(|&i| sizes[i] <= *s));
        }
    }
}
