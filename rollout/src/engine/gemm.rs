//! The engine's matrix product `y = x · W` with `W` packed once, when the weights are loaded.
//!
//! # Layout
//! A [`PackedMatrix`] holds a `[k, n]` matrix (`k` inputs, `n` outputs) as `⌈n / NR⌉` panels of
//! [`NR`] = 16 output columns; panel `p` stores `W[i, 16 p + j]` at `16 i + j`, zero-padded past
//! `n`. A panel is one contiguous stream of `64 k` bytes, read front to back by the kernel, so
//! no call re-packs a weight (matrixmultiply, which the engine used before, packs both operands
//! on every call: about a third of its GEMM time went to re-packing weights).
//!
//! # Kernel
//! Rows of `x` go through in blocks of up to [`MR`] = 6, copied once per call into `[k, MR]`
//! strips. For each (row block, panel) a register tile `acc[MR][NR]` is accumulated over `i =
//! 0..k` in order with fused multiply-adds, then stored (or added to `y`). Work is split over
//! rayon by panels (each task owns whole panels, all rows), so a weight is streamed from memory
//! once per call whatever the batch. The hot loops run under [`pulp::Arch::dispatch`]: AVX2 and
//! FMA where the CPU has them (checked at run time), plain code otherwise.
//!
//! # Determinism
//! Every output element is one chain `acc = fma(x[r, i], W[i, c], acc)` for `i = 0, 1, …, k - 1`
//! starting from 0, then `+ y` when accumulating. That sequence does not depend on the number of
//! rows, on which row block or kernel width computes the row, on the split over threads, or on
//! the instruction set (a fused multiply-add is exactly rounded everywhere), so a token's result
//! is bitwise the same alone, in any batch, on any number of threads.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Output columns per panel: two 8-lane AVX2 registers per row of the register tile.
pub(crate) const NR: usize = 16;
/// Rows per register tile: 6 × 2 accumulators + 2 weight registers + 1 broadcast fit the 16
/// AVX2 registers.
pub(crate) const MR: usize = 6;

/// A `[k, n]` weight packed in panels of [`NR`] columns (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PackedMatrix {
    k: usize,
    n: usize,
    /// `[⌈n / NR⌉, k, NR]`.
    panels: Vec<f32>,
}

impl PackedMatrix {
    /// Packs `w`, given as `[k, n]` (inputs × outputs).
    pub fn pack(w: ArrayView2<'_, f32>) -> Self {
        let (k, n) = w.dim();
        let np = n.div_ceil(NR);
        let mut panels = vec![0.0f32; np * k * NR];
        panels
            .par_chunks_mut(k * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                let c0 = p * NR;
                let width = NR.min(n - c0);
                for (i, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    for (j, d) in dst[..width].iter_mut().enumerate() {
                        *d = w[(i, c0 + j)];
                    }
                }
            });
        PackedMatrix { k, n, panels }
    }

    /// Packs the transpose of `w`, given in PyTorch's `[n, k]` (outputs × inputs) layout.
    pub fn pack_transposed(w: ArrayView2<'_, f32>) -> Self {
        Self::pack(w.t())
    }

    /// The plain `[k, n]` matrix (for the reference forward pass).
    pub fn unpack(&self) -> Array2<f32> {
        Array2::from_shape_fn((self.k, self.n), |(i, c)| {
            self.panels[(c / NR) * self.k * NR + i * NR + c % NR]
        })
    }

    /// `y = x · W`, or `y += x · W` with `accumulate` (the residual add after the product).
    ///
    /// # Shapes
    /// `x`: `[m, k]`, `y`: `[m, n]`, both row-major.
    pub fn matmul(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        let (k, n) = (self.k, self.n);
        assert!(k > 0 && x.len().is_multiple_of(k), "x is not [m, {k}]");
        let m = x.len() / k;
        assert_eq!(y.len(), m * n, "y is not [{m}, {n}]");
        if m == 0 || n == 0 {
            return;
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let (strips, out) = &mut *scratch;
                self.matmul_with(x, y, accumulate, strips, out)
            }
            // This thread is already inside a product (rayon let it pick up another one while
            // it waited): fresh buffers for this one.
            Err(_) => self.matmul_with(x, y, accumulate, &mut Vec::new(), &mut Vec::new()),
        });
    }

    /// [`PackedMatrix::matmul`] with the caller's scratch buffers (grown as needed, never
    /// cleared: every number the kernel reads from them was written by this call).
    fn matmul_with(
        &self,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
        strips: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        // Row blocks of x as [k, MR] strips (the padding rows of the last one are not read:
        // its tile is only as tall as the rows it has).
        let blocks = m.div_ceil(MR);
        grow(strips, blocks * k * MR);
        let strips = &mut strips[..blocks * k * MR];
        for (b, strip) in strips.chunks_exact_mut(k * MR).enumerate() {
            for r in 0..MR.min(m - b * MR) {
                let row = &x[(b * MR + r) * k..(b * MR + r + 1) * k];
                for (i, &v) in row.iter().enumerate() {
                    strip[i * MR + r] = v;
                }
            }
        }
        // Results per panel ([np, m, NR]), then scattered into y.
        let np = n.div_ceil(NR);
        grow(out, np * m * NR);
        let out = &mut out[..np * m * NR];
        let strips = &*strips;
        let per_task = panels_per_task(np, m, k);
        let arch = pulp::Arch::new();
        out.par_chunks_mut(per_task * m * NR)
            .zip(self.panels.par_chunks(per_task * k * NR))
            .for_each(|(out, panels)| {
                arch.dispatch(Panels {
                    k,
                    m,
                    strips,
                    panels,
                    out,
                })
            });
        y.par_chunks_mut(n)
            .enumerate()
            .with_min_len(min_tasks_len(n))
            .for_each(|(r, yr)| {
                for (p, yc) in yr.chunks_mut(NR).enumerate() {
                    let src = &out[(p * m + r) * NR..][..yc.len()];
                    if accumulate {
                        for (y, s) in yc.iter_mut().zip(src) {
                            *y += s;
                        }
                    } else {
                        yc.copy_from_slice(src);
                    }
                }
            });
    }
}

/// Numbers a rayon task should at least touch: below, splitting costs more (waking a thread,
/// joining) than the work.
const MIN_TASK_FLOATS: usize = 32 * 1024;

/// The `with_min_len` of a parallel loop whose items touch `per_item` numbers each: no task
/// gets less than [`MIN_TASK_FLOATS`] of work, so a small loop runs on the calling thread.
pub(crate) fn min_tasks_len(per_item: usize) -> usize {
    MIN_TASK_FLOATS.div_ceil(per_item.max(1))
}

thread_local! {
    /// Per-thread scratch of [`PackedMatrix::matmul`]: the packed rows of x and the per-panel
    /// results, kept between calls so that a decode step does not allocate and zero them for
    /// every product.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Makes `v` at least `len` long (new numbers are 0; old ones are kept).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// Panels per rayon task: enough work per task (about 256 K multiply-adds) to amortise the
/// task, at least four tasks per thread when there is that much work.
fn panels_per_task(np: usize, m: usize, k: usize) -> usize {
    let work = (m * k * NR).max(1);
    let by_work = (256 * 1024 / work).max(1);
    let threads = rayon::current_num_threads().max(1);
    let by_threads = np.div_ceil(4 * threads).max(1);
    by_work.min(by_threads)
}

/// The products of some panels with all rows: one rayon task's work, compiled for the
/// instruction set [`pulp::Arch::dispatch`] picks (hence a [`pulp::WithSimd`] whose body is
/// inlined into the dispatched function, not a closure, which the compiler may leave outlined).
struct Panels<'a> {
    k: usize,
    m: usize,
    /// `[⌈m / MR⌉, k, MR]`.
    strips: &'a [f32],
    /// `[panels, k, NR]`.
    panels: &'a [f32],
    /// `[panels, m, NR]`.
    out: &'a mut [f32],
}

impl pulp::WithSimd for Panels<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let (k, m) = (self.k, self.m);
        for (o, w) in self
            .out
            .chunks_exact_mut(m * NR)
            .zip(self.panels.chunks_exact(k * NR))
        {
            panel_times_rows(k, m, self.strips, w, o);
        }
    }
}

/// `out[r, :] = Σ_i x[r, i] · panel[i, :]` for all `m` rows (in their strips).
///
/// # Shapes
/// `strips`: `[⌈m / MR⌉, k, MR]`, `panel`: `[k, NR]`, `out`: `[m, NR]`.
#[inline(always)]
fn panel_times_rows(k: usize, m: usize, strips: &[f32], panel: &[f32], out: &mut [f32]) {
    for (b, strip) in strips.chunks_exact(k * MR).enumerate() {
        let out = &mut out[b * MR * NR..];
        // A partial last block runs a narrower tile: the same arithmetic per element, fewer
        // wasted multiply-adds (decode batches of 1 and 8 are mostly such blocks).
        match MR.min(m - b * MR) {
            1 => tile::<1>(strip, panel, out),
            2 => tile::<2>(strip, panel, out),
            3 => tile::<3>(strip, panel, out),
            4 => tile::<4>(strip, panel, out),
            5 => tile::<5>(strip, panel, out),
            _ => tile::<MR>(strip, panel, out),
        }
    }
}

/// One register tile of `R ≤ MR` rows: `out[r, j] = Σ_i strip[i, r] · panel[i, j]`, summed
/// over `i` in order.
///
/// # Shapes
/// `strip`: `[k, MR]` (rows `R..MR` ignored), `panel`: `[k, NR]`, `out`: `[≥ R, NR]`.
#[inline(always)]
fn tile<const R: usize>(strip: &[f32], panel: &[f32], out: &mut [f32]) {
    let mut acc = [[0.0f32; NR]; R];
    for (xs, ws) in strip.chunks_exact(MR).zip(panel.chunks_exact(NR)) {
        for r in 0..R {
            let xr = xs[r];
            for j in 0..NR {
                acc[r][j] = xr.mul_add(ws[j], acc[r][j]);
            }
        }
    }
    for (o, a) in out.chunks_exact_mut(NR).zip(&acc) {
        o.copy_from_slice(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            let h = (i as u32 * 7919 + j as u32 * 104_729 + seed * 1_000_003) % 2003;
            h as f32 / 1001.0 - 1.0
        })
    }

    /// The product equals ndarray's f64 product within f32 rounding, for shapes that exercise
    /// partial panels and partial row blocks; accumulation adds to `y`.
    #[test]
    fn matches_a_reference_product() {
        for (m, k, n) in [
            (1, 1, 1),
            (1, 37, 5),
            (5, 64, 33),
            (6, 16, 16),
            (13, 100, 70),
        ] {
            let x = matrix(m, k, 1);
            let w = matrix(k, n, 2);
            let packed = PackedMatrix::pack(w.view());
            assert_eq!(packed.unpack(), w);
            let want = x.mapv(f64::from).dot(&w.mapv(f64::from));
            let mut y = vec![0.0; m * n];
            packed.matmul(x.as_slice().unwrap(), &mut y, false);
            let mut y2 = vec![1.0; m * n];
            packed.matmul(x.as_slice().unwrap(), &mut y2, true);
            for ((got, acc), want) in y.iter().zip(&y2).zip(want.iter()) {
                assert!(
                    (f64::from(*got) - want).abs() < 1e-4 * (k as f64),
                    "{m}x{k}x{n}"
                );
                assert!((f64::from(*acc) - want - 1.0).abs() < 1e-4 * (k as f64));
            }
        }
        let w = matrix(9, 4, 3);
        assert_eq!(PackedMatrix::pack_transposed(w.view()).unpack(), w.t());
    }

    /// The reused scratch never leaks into a result: a small product after a large one, and a
    /// product started while this thread's scratch is in use (rayon can hand a waiting thread
    /// another product), give what a fresh call gives.
    #[test]
    fn scratch_reuse_and_nesting_do_not_change_results() {
        let (k, n) = (40, 50);
        let w = PackedMatrix::pack(matrix(k, n, 6).view());
        let small = matrix(7, k, 7);
        let mut want = vec![0.0; 7 * n];
        SCRATCH.with(|s| {
            let _held = s.borrow_mut();
            w.matmul(small.as_slice().unwrap(), &mut want, false);
        });
        let big = matrix(31, k, 8);
        let mut sink = vec![0.0; 31 * n];
        w.matmul(big.as_slice().unwrap(), &mut sink, false);
        let mut got = vec![0.0; 7 * n];
        w.matmul(small.as_slice().unwrap(), &mut got, false);
        assert_eq!(got, want);
    }

    /// A row's result is bitwise the same whatever the other rows of the call and the number
    /// of threads.
    #[test]
    fn rows_are_independent_of_the_batch_and_threads() {
        let (k, n) = (96, 200);
        let w = PackedMatrix::pack(matrix(k, n, 4).view());
        let x = matrix(23, k, 5);
        let mut all = vec![0.0; 23 * n];
        w.matmul(x.as_slice().unwrap(), &mut all, false);
        for r in [0, 5, 6, 22] {
            let mut one = vec![0.0; n];
            w.matmul(x.row(r).as_slice().unwrap(), &mut one, false);
            assert_eq!(one, all[r * n..(r + 1) * n]);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut single = vec![0.0; 23 * n];
        pool.install(|| w.matmul(x.as_slice().unwrap(), &mut single, false));
        assert_eq!(single, all);
    }
}
