//! Engine throughput benchmark: batched decode and prefill tokens/s, with the GEMM peak of the
//! same library measured in the same run, so that the ratio is meaningful on any machine.
//!
//! Returns rows ([`EngineBenchRow`]); printing is the caller's job (`arbor bench engine`).

use std::time::Instant;

use ndarray::{Array2, linalg::general_mat_mul};
use serde::{Deserialize, Serialize};

use super::{Engine, KvPrecision, ModelConfig, Weights};
use crate::Error;
use crate::policy::{DecodeRequest, Policy, SamplingParams};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Model presets. By default `tiny` and `small`.
    pub presets: Vec<String>,
    /// Decode batch sizes. By default 1, 8 and 64.
    pub batches: Vec<usize>,
    /// Prompt tokens of each decoded sequence (distinct prompts). By default 128.
    pub prompt_len: usize,
    /// Timed decode steps per batch (after one untimed warm-up step). By default 64.
    pub decode_steps: usize,
    /// Tokens of the prefill measurement (one sequence, default chunk). By default 512.
    pub prefill_len: usize,
    /// Side of the square f32 GEMM of the peak measurement. By default 1024.
    pub gemm_size: usize,
    /// Repetitions of each measurement; the fastest counts. By default 3.
    pub repeats: usize,
    /// Seed of the random weights and prompts. By default 0.
    pub seed: u64,
    /// KV cache number formats, each measured in its own prefill and decode rows. By default
    /// f32 and bf16.
    pub kv: Vec<KvPrecision>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            presets: ModelConfig::PRESETS.iter().map(|s| s.to_string()).collect(),
            batches: vec![1, 8, 64],
            prompt_len: 128,
            decode_steps: 64,
            prefill_len: 512,
            gemm_size: 1024,
            repeats: 3,
            seed: 0,
            kv: vec![KvPrecision::F32, KvPrecision::Bf16],
        }
    }
}

impl BenchOptions {
    /// A run of well under a second for tests: `tiny` only, batches 1 and 4, short sequences.
    pub fn quick() -> Self {
        BenchOptions {
            presets: vec!["tiny".to_string()],
            batches: vec![1, 4],
            prompt_len: 16,
            decode_steps: 4,
            prefill_len: 64,
            gemm_size: 128,
            repeats: 1,
            seed: 0,
            kv: vec![KvPrecision::F32],
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineBenchRow {
    /// `"decode"` (distinct prompts), `"decode_shared"` (forks of one prompt, the tree-sampler
    /// case: the prompt's KV blocks are shared), `"prefill"` or `"gemm_peak"`.
    pub bench: String,
    /// Model preset (for `gemm_peak`, which product set the peak: `packed` or
    /// `matrixmultiply`).
    pub preset: String,
    /// KV cache number format, `f32` or `bf16` (empty for `gemm_peak`).
    pub kv: String,
    /// Sequences per decode step; 1 for prefill; the matrix side for `gemm_peak`.
    pub batch: usize,
    /// Mean number of positions each timed token attended to (0 for `gemm_peak`).
    pub context_len: usize,
    /// Tokens timed (0 for `gemm_peak`).
    pub tokens: usize,
    /// Wall time of the fastest repetition.
    pub seconds: f64,
    /// Tokens per second (0 for `gemm_peak`).
    pub tokens_per_s: f64,
    /// Achieved GFLOP/s, counting [`ModelConfig::flops_per_token`] per token (2 m n k for the
    /// GEMM).
    pub gflops: f64,
    /// The GEMM peak of this run (same in every row): the higher of two measurements, at the
    /// start and at the end of the run.
    pub peak_gflops: f64,
}

/// Runs the benchmark. Rows: `gemm_peak` first, then per preset and KV format one `prefill` row
/// and per batch size a `decode` row and (batch > 1) a `decode_shared` row.
pub fn run(opts: &BenchOptions) -> Result<Vec<EngineBenchRow>, Error> {
    let models = opts
        .presets
        .iter()
        .map(|p| {
            ModelConfig::preset(p).map(|c| {
                let w = Weights::random(&c, opts.seed);
                (p.clone(), c, w)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    run_models(opts, models)
}

/// [`run`] on given models (name, architecture, weights) instead of `opts.presets`, e.g. a
/// loaded Hugging Face model directory. Prompts are random byte-range ids, so every model needs
/// a vocabulary of at least 256.
pub fn run_models(
    opts: &BenchOptions,
    models: Vec<(String, ModelConfig, Weights)>,
) -> Result<Vec<EngineBenchRow>, Error> {
    let repeats = opts.repeats.max(1);
    let (gemm_s, peak, by) = gemm_peak_by(opts.gemm_size.max(1), repeats);
    let mut rows = vec![EngineBenchRow {
        bench: "gemm_peak".into(),
        preset: by.into(),
        kv: String::new(),
        batch: opts.gemm_size,
        context_len: 0,
        tokens: 0,
        seconds: gemm_s,
        tokens_per_s: 0.0,
        gflops: peak,
        peak_gflops: peak,
    }];
    for (name, cfg, weights) in models {
        let mut engine = Engine::new(cfg.clone(), &weights)?;
        for &kv in &opts.kv {
            engine.set_kv_precision(kv);
            let vocab = 256u64; // byte tokens: valid for every preset
            let prompt = |i: u64, n: usize| -> Vec<u32> {
                (0..n as u64)
                    .map(|j| (envs::rng::derive(&[opts.seed, i, j]) % vocab) as u32)
                    .collect()
            };

            // Prefill: one sequence of `prefill_len` tokens.
            let len = opts.prefill_len.clamp(1, cfg.max_seq_len);
            let tokens = prompt(u64::MAX, len);
            let mut best = f64::INFINITY;
            for _ in 0..repeats {
                let t = Instant::now();
                let seq = engine.start(&tokens)?;
                best = best.min(t.elapsed().as_secs_f64());
                engine.release(seq);
            }
            let flops: u64 = (1..=len).map(|c| cfg.flops_per_token(c)).sum();
            rows.push(row(
                "prefill",
                &name,
                kv,
                1,
                len.div_ceil(2),
                len,
                best,
                flops,
                peak,
            ));

            // Decode: `batch` sequences, one batch per step; with distinct prompts ("decode") and,
            // for batch > 1, as forks of one prompt ("decode_shared", what a tree sampler runs).
            let prompt_len = opts.prompt_len.clamp(1, cfg.max_seq_len);
            let steps = opts
                .decode_steps
                .min(cfg.max_seq_len.saturating_sub(prompt_len + 1));
            for &batch in &opts.batches {
                let batch = batch.max(1);
                for shared in [false, true] {
                    if shared && batch == 1 {
                        continue;
                    }
                    let mut best = f64::INFINITY;
                    for rep in 0..repeats {
                        let seqs = if shared {
                            let root = engine.start(&prompt(0, prompt_len))?;
                            let forks = (0..batch)
                                .map(|_| engine.fork(root))
                                .collect::<Result<Vec<_>, _>>()?;
                            engine.release(root);
                            forks
                        } else {
                            (0..batch as u64)
                                .map(|i| engine.start(&prompt(i, prompt_len)))
                                .collect::<Result<Vec<_>, _>>()?
                        };
                        let params = SamplingParams::default();
                        let step = |engine: &mut Engine, s: usize| {
                            let reqs: Vec<DecodeRequest> = seqs
                                .iter()
                                .enumerate()
                                .map(|(i, &seq)| DecodeRequest {
                                    seq,
                                    rng_key: envs::rng::derive(&[
                                        opts.seed, rep as u64, i as u64, s as u64,
                                    ]),
                                })
                                .collect();
                            engine.decode(&reqs, &params).map(|_| ())
                        };
                        step(&mut engine, 0)?; // warm-up
                        let t = Instant::now();
                        for s in 1..=steps {
                            step(&mut engine, s)?;
                        }
                        best = best.min(t.elapsed().as_secs_f64());
                        for seq in seqs {
                            engine.release(seq);
                        }
                    }
                    // Timed token of step s sits at position prompt_len + s and attends to one more.
                    let per_seq: u64 = (1..=steps)
                        .map(|s| cfg.flops_per_token(prompt_len + s + 1))
                        .sum();
                    let ctx = prompt_len + 1 + steps.div_ceil(2);
                    let flops = per_seq * batch as u64;
                    let bench = if shared { "decode_shared" } else { "decode" };
                    rows.push(row(
                        bench,
                        &name,
                        kv,
                        batch,
                        ctx,
                        batch * steps,
                        best,
                        flops,
                        peak,
                    ));
                }
            }
        }
    }
    // Measure the peak again at the end and keep the higher value, so that load from other
    // processes during the first measurement does not flatter the ratios.
    let (gemm_s2, peak2, by2) = gemm_peak_by(opts.gemm_size.max(1), repeats);
    if peak2 > peak {
        rows[0].preset = by2.into();
        rows[0].seconds = gemm_s2;
        rows[0].gflops = peak2;
        for r in &mut rows {
            r.peak_gflops = peak2;
        }
    }
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
fn row(
    bench: &str,
    preset: &str,
    kv: KvPrecision,
    batch: usize,
    context_len: usize,
    tokens: usize,
    seconds: f64,
    flops: u64,
    peak: f64,
) -> EngineBenchRow {
    let seconds = seconds.max(1e-9);
    EngineBenchRow {
        bench: bench.into(),
        preset: preset.into(),
        kv: kv.name().into(),
        batch,
        context_len,
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        gflops: flops as f64 / seconds / 1e9,
        peak_gflops: peak,
    }
}

/// The GEMM peak: the fastest of `repeats` square `n × n` f32 products, by ndarray
/// (matrixmultiply) and by the engine's own packed kernel (weights packed beforehand, as the
/// engine holds them), whichever is faster: (seconds, GFLOP/s). The engine's kernel beats
/// matrixmultiply on this machine (232 vs 208 GFLOP/s on two cores), so a peak from
/// matrixmultiply alone would flatter the ratios.
pub fn gemm_peak(n: usize, repeats: usize) -> (f64, f64) {
    let (seconds, gflops, _) = gemm_peak_by(n, repeats);
    (seconds, gflops)
}

/// [`gemm_peak`] and which product set it: `"packed"` or `"matrixmultiply"`.
pub fn gemm_peak_by(n: usize, repeats: usize) -> (f64, f64, &'static str) {
    let a = Array2::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 13) % 31) as f32 * 0.01);
    let b = Array2::from_shape_fn((n, n), |(i, j)| ((i * 11 + j * 5) % 29) as f32 * 0.01);
    let mut c = Array2::<f32>::zeros((n, n));
    let packed = super::gemm::PackedMatrix::pack(b.view());
    let a_rows = a.as_slice().expect("standard layout");
    type Product<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let mut products: [Product<'_>; 2] = [
        (
            "matrixmultiply",
            Box::new(|| general_mat_mul(1.0, &a, &b, 0.0, &mut c)),
        ),
        (
            "packed",
            Box::new(|| {
                let mut y = vec![0.0f32; n * n];
                packed.matmul(a_rows, &mut y, false);
            }),
        ),
    ];
    // Enough multiplications per repetition for about 4 GFLOP, at least one.
    let inner = (4e9 / (2.0 * (n as f64).powi(3))).ceil().max(1.0) as usize;
    let (mut best, mut by) = (f64::INFINITY, "");
    for (name, product) in &mut products {
        product(); // warm-up (thread pool, caches)
        for _ in 0..repeats {
            let t = Instant::now();
            for _ in 0..inner {
                product();
            }
            let seconds = t.elapsed().as_secs_f64() / inner as f64;
            if seconds < best {
                (best, by) = (seconds, *name);
            }
        }
    }
    (best, 2.0 * (n as f64).powi(3) / best / 1e9, by)
}
