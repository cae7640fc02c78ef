//! The policy as burn modules: the engine's decoder-only transformer (DESIGN §7, §8).
//!
//! Architecture (Llama / Qwen2, no dropout):
//! token embedding → `n_layers` × [pre-norm RMSNorm → grouped-query causal attention with RoPE
//! (q/k/v projections with biases when [`ModelConfig::qkv_bias`], as in Qwen2; no other layer
//! has a bias) → residual, pre-norm RMSNorm → SwiGLU MLP `down(silu(gate(x)) * up(x))` →
//! residual] → final RMSNorm → LM head.
//!
//! RoPE takes **explicit position ids** (one per token), so a tree-packed sequence can give each
//! token its position on its own root-to-node path (see [`crate::pack`]). The rotation follows the
//! Hugging Face Llama `rotate_half` convention: dimension `i` is paired with `i + head_dim/2`, and
//! pair `i` turns by `position · inv_freq[i]`, the frequencies of
//! [`ModelConfig::rope_inv_freqs`] (plain `theta^(-2i/head_dim)` or Llama 3 scaled), which the
//! engine uses too.
//!
//! The configuration is the engine's [`ModelConfig`]: it plays the `Config` half of STYLE §2's
//! Config + Module pair, and because engine and trainer read the same struct their sizes cannot
//! drift apart.
//!
//! Weights are exchanged with the engine and with checkpoints as engine [`Weights`] under the
//! Hugging Face Llama names, every matrix `[out, in]` (see [`Weights::expected_shapes`]): burn's
//! [`Linear`] stores `[in, out]`, so the conversions transpose (biases are vectors and are copied
//! as they are). Parameter ids are assigned by position in that canonical name list, so two
//! models built from the same weights have the same ids; the optimizer state ([`crate::optim`])
//! is keyed by them.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::optim::GradientsParams;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rollout::engine::{ModelConfig, Weights};

use crate::TrainerError;
use crate::attn::{AttentionMask, BLOCKED_SCORE, SparseAttention};

/// Whether burn stores the named tensor transposed relative to Hugging Face: burn's [`Linear`]
/// keeps `[in, out]`, Hugging Face `[out, in]`; embeddings, norm weights and biases agree.
fn is_transposed(name: &str) -> bool {
    !(name.ends_with("norm.weight")
        || name.ends_with(".bias")
        || name == "model.embed_tokens.weight")
}

/// The canonical parameter list: name, Hugging Face shape and whether burn stores it
/// transposed. The order (the engine's [`Weights::expected_shapes`]) also defines the
/// parameter ids.
pub(crate) fn param_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, bool)> {
    Weights::expected_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let transposed = is_transposed(&name);
            (name, shape, transposed)
        })
        .collect()
}

/// Reads host tensor data as f32 values (every tensor this crate creates is f32).
pub(crate) fn to_f32_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32 just above")
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// SwiGLU feed-forward block.
#[derive(Module, Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gated = silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x);
        self.down_proj.forward(gated)
    }
}

/// Grouped-query causal self-attention with RoPE at explicit positions.
#[derive(Module, Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `x: [B, T, d]`, `cos`/`sin: [B, 1, T, hd]`; `scores` the dense bias `[B, 1, T, T]` (0 or
    /// blocked) or a sparse layout.
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        scores: &Scores,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = apply_rope(heads(self.q_proj.forward(x.clone()), h), cos, sin);
        let k = apply_rope(heads(self.k_proj.forward(x.clone()), kvh), cos, sin);
        let v = heads(self.v_proj.forward(x), kvh);
        // Query head j reads key/value head j / (h / kvh), as in Hugging Face `repeat_kv`.
        let expand = |y: Tensor<4>| {
            if kvh == h {
                return y;
            }
            let [n, _, len, _] = y.dims();
            y.unsqueeze_dim::<5>(2)
                .repeat_dim(2, h / kvh)
                .reshape([n, h, len, hd])
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let out = match scores {
            Scores::Dense(bias) => {
                let scores = q.matmul(expand(k).swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
                softmax(scores, 3).matmul(expand(v))
            }
            Scores::Sparse(sp) => {
                let bs = sp.block;
                let nb = t / bs;
                // [B·nb, h, bs, hd]: queries by block.
                let q = q
                    .swap_dims(1, 2)
                    .reshape([b * nb, bs, h, hd])
                    .swap_dims(1, 2);
                // [B·T, kvh·hd]: keys and values by flat position, ready to gather.
                let flat = |y: Tensor<4>| y.swap_dims(1, 2).reshape([b * t, kvh * hd]);
                let (k, v) = (flat(k), flat(v));
                let parts: Vec<Tensor<4>> = sp
                    .buckets
                    .iter()
                    .map(|bucket| {
                        let (nq, slots) = (bucket.blocks, bucket.key_slots);
                        let gather = |y: &Tensor<2>| {
                            expand(
                                y.clone()
                                    .select(0, bucket.keys.clone())
                                    .reshape([nq, slots, kvh, hd])
                                    .swap_dims(1, 2),
                            )
                        };
                        let qb = q.clone().select(0, bucket.queries.clone());
                        let scores = qb.matmul(gather(&k).swap_dims(2, 3)).mul_scalar(scale)
                            + bucket.bias.clone();
                        softmax(scores, 3).matmul(gather(&v))
                    })
                    .collect();
                // Back to block order, then to [B, h, T, hd].
                Tensor::cat(parts, 0)
                    .select(0, sp.inverse.clone())
                    .swap_dims(1, 2)
                    .reshape([b, t, h, hd])
                    .swap_dims(1, 2)
            }
        };
        let out = out.swap_dims(1, 2).reshape([b, t, h * hd]);
        self.o_proj.forward(out)
    }
}

/// The attention structure one forward pass uses in every layer.
enum Scores {
    /// Additive bias `[B, 1, T, T]`.
    Dense(Tensor<4>),
    /// Query-block sparse attention.
    Sparse(SparseAttention),
}

/// `x · cos + rotate_half(x) · sin` with `rotate_half([x1, x2]) = [-x2, x1]`.
///
/// # Shapes
/// - `x: [B, H, T, hd]`, `cos`, `sin: [B, 1, T, hd]` → `[B, H, T, hd]`
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, hd] = x.dims();
    let half = hd / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// `x: [B, T, d]` → `[B, T, d]`, residuals included.
    fn forward(&self, x: Tensor<3>, context: &LayerContext) -> Tensor<3> {
        let h = self.attn.forward(
            self.attn_norm.forward(x.clone()),
            &context.cos,
            &context.sin,
            &context.scores,
        );
        let x = x + h;
        let h = self.mlp.forward(self.mlp_norm.forward(x.clone()));
        x + h
    }
}

/// RoPE tables `[B, 1, T, hd]` and attention structure of one forward pass.
struct LayerContext {
    cos: Tensor<4>,
    sin: Tensor<4>,
    scores: Scores,
}

/// Sums one parameter's gradient from `from` into `into`.
struct AddGrads<'a> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
}

impl ModuleVisitor for AddGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let sum = match self.into.remove::<D>(param.id) {
                Some(a) => a + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

/// Replaces every gradient by its sum over `devices` with burn's all-reduce collective, in
/// the module's parameter order (every device must issue the same collectives in the same
/// order); a parameter without a gradient contributes zeros.
struct AllReduceGrads<'a> {
    grads: &'a mut GradientsParams,
    devices: &'a [Device],
}

impl ModuleVisitor for AllReduceGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = match self.grads.remove::<D>(param.id) {
            Some(g) => g,
            None => param.val().inner().zeros_like(),
        };
        let sum = all_reduce(grad, ReduceOperation::Sum, self.devices.to_vec()).resolve();
        self.grads.register(param.id, sum);
    }
}

/// The policy transformer. Build it with [`PolicyModel::init`] (burn initialisers) or
/// [`PolicyModel::from_weights`] (engine / checkpoint weights).
#[derive(Module, Debug)]
pub struct PolicyModel {
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `None` when the embedding is tied.
    lm_head: Option<Linear>,
    #[module(skip)]
    config: ModelConfig,
}

impl PolicyModel {
    /// A policy with burn's default random initialisers (seeded by the device RNG, so not
    /// reproducible across processes). For a reproducible start use
    /// `PolicyModel::from_weights(cfg, &Weights::random(cfg, seed), device)`.
    pub fn init(cfg: &ModelConfig, device: &Device) -> Result<PolicyModel, TrainerError> {
        cfg.validate()?;
        let params = param_specs(cfg)
            .into_iter()
            .map(|(name, shape, transposed)| {
                let n: usize = shape.iter().product();
                let data = if name.ends_with("norm.weight") {
                    vec![1.0; n]
                } else if name.ends_with(".bias") {
                    // Zero, like Hugging Face's `_init_weights`.
                    vec![0.0; n]
                } else {
                    let fan_in = if transposed { shape[1] } else { shape[0] };
                    let bound = (1.0 / fan_in as f64).sqrt();
                    let init = Tensor::<1>::random(
                        [n],
                        burn::tensor::Distribution::Uniform(-bound, bound),
                        device,
                    );
                    to_f32_vec(init.into_data())
                };
                let burn_shape = if transposed {
                    vec![shape[1], shape[0]]
                } else {
                    shape
                };
                (data, burn_shape)
            })
            .collect();
        Ok(Self::assemble(cfg, params, device))
    }

    /// The engine configuration this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits for every position.
    ///
    /// `mask[b, i, j] = true` blocks query `i` from attending to key `j` (burn's convention);
    /// every row should allow at least one key (padding rows may allow just themselves).
    /// `positions` are the RoPE position ids (any non-negative values; they need not be
    /// contiguous, which is what tree packing uses).
    ///
    /// # Shapes
    /// - `tokens: [B, T]`, `positions: [B, T]`, `mask: [B, T, T]`
    /// - returns logits `[B, T, vocab]`
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Tensor<3, Bool>,
    ) -> Tensor<3> {
        self.forward_with(tokens, positions, &AttentionMask::Dense(mask))
    }

    /// Logits for every position, with the attention given as a dense mask or a sparse layout
    /// (see [`crate::attn`]); both give the same logits.
    ///
    /// # Shapes
    /// - `tokens: [B, T]`, `positions: [B, T]`; a sparse layout needs `T` a multiple of its block
    /// - returns logits `[B, T, vocab]`
    pub fn forward_with(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        attention: &AttentionMask,
    ) -> Tensor<3> {
        let x = self.hidden_with(tokens, positions, attention);
        let [b, t, d] = x.dims();
        let logits = self.head(x.reshape([b * t, d]));
        let v = logits.dims()[1];
        logits.reshape([b, t, v])
    }

    /// The final hidden states (after the last norm), the input of [`PolicyModel::head`].
    ///
    /// # Shapes
    /// - as [`PolicyModel::forward_with`]; returns `[B, T, d_model]`
    pub fn hidden_with(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        attention: &AttentionMask,
    ) -> Tensor<3> {
        let context = self.context(&tokens, positions, attention);
        let mut x = self.embed.forward(tokens);
        for layer in &self.layers {
            x = layer.forward(x, &context);
        }
        self.norm.forward(x)
    }

    /// What every layer of one forward pass reads besides its input: RoPE tables and the
    /// attention structure.
    fn context(
        &self,
        tokens: &Tensor<2, Int>,
        positions: Tensor<2, Int>,
        attention: &AttentionMask,
    ) -> LayerContext {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let scores = match attention {
            AttentionMask::Dense(mask) => Scores::Dense(
                Tensor::<3>::zeros([b, t, t], &device)
                    .mask_fill(mask.clone(), BLOCKED_SCORE)
                    .unsqueeze_dim::<4>(1),
            ),
            AttentionMask::Sparse(sp) => {
                assert_eq!(t % sp.block, 0, "sparse attention needs whole query blocks");
                Scores::Sparse(sp.clone())
            }
        };
        let (cos, sin) = self.rope_tables(positions);
        LayerContext { cos, sin, scores }
    }

    /// The gradients of `loss_of(hidden_with(tokens, positions, attention))` for every
    /// parameter, by layer-wise recomputation (gradient checkpointing as in PyTorch's
    /// `checkpoint` per decoder layer): a forward pass without autodiff keeps only each
    /// layer's input; the backward pass then goes from the top, re-running one layer at a time
    /// with autodiff on its saved input and back-propagating the gradient of its output. Peak
    /// activation memory is one layer's activations plus one `[B, T, d_model]` tensor per
    /// layer, instead of every layer's activations; the price is a second forward pass.
    ///
    /// Each layer is re-run with the same operations on the same input as the forward pass, and
    /// a layer's output gradient enters its backward pass unchanged (`Σ y·g` differentiates to
    /// `g` exactly), so the gradients are those of one backward pass through the whole graph
    /// (the trainer's tests check the updates bit for bit). `self` and the batch tensors are on
    /// an autodiff device.
    ///
    /// # Shapes
    /// - as [`PolicyModel::hidden_with`]; `loss_of` gets the final hidden states `[B, T, d_model]`
    ///   and returns a loss of shape `[1]` and a value passed through
    pub fn checkpointed_grads<S>(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        attention: &AttentionMask,
        loss_of: impl FnOnce(Tensor<3>) -> (Tensor<1>, S),
    ) -> (GradientsParams, S) {
        let context = self.context(&tokens, positions, attention);
        let leaf = |x: Tensor<3>| x.detach().require_grad();
        // The forward pass without a graph, each layer's input kept. It runs on the autodiff
        // device with parameters that require no gradient, through the very kernels of the
        // recomputation: the backend without autodiff composes some operations differently
        // (last bits of the hidden states differ).
        let frozen = self.clone().no_grad();
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = frozen.embed.forward(tokens.clone());
        for layer in &frozen.layers {
            inputs.push(x.clone());
            x = layer.forward(x, &context);
        }
        drop(frozen);
        // The final norm, the head and the loss, from the last layer's output.
        let top = leaf(x);
        let (loss, out) = loss_of(self.norm.forward(top.clone()));
        let mut grads = loss.backward();
        let mut upstream = top
            .grad_remove(&mut grads)
            .expect("the loss depends on the hidden states");
        let mut total = GradientsParams::from_grads(grads, self);
        // The layers, top down, each re-run on its saved input.
        for (layer, x) in self.layers.iter().zip(inputs).rev() {
            let x = leaf(x);
            let y = layer.forward(x.clone(), &context);
            let mut grads = (y * Tensor::from_inner(upstream)).sum().backward();
            upstream = x
                .grad_remove(&mut grads)
                .expect("a layer's output depends on its input");
            self.add_grads(&mut total, GradientsParams::from_grads(grads, self));
        }
        // The embedding lookup (tied embeddings add to the head's gradient).
        let embedded = self.embed.forward(tokens);
        let grads = (embedded * Tensor::from_inner(upstream)).sum().backward();
        self.add_grads(&mut total, GradientsParams::from_grads(grads, self));
        (total, out)
    }

    /// `grads` summed over `devices` (this model's replicas there) by burn's all-reduce
    /// collective ([`crate::trainer::GradReduce::AllReduce`]).
    pub(crate) fn all_reduce_grads(
        &self,
        mut grads: GradientsParams,
        devices: &[Device],
    ) -> GradientsParams {
        self.visit(&mut AllReduceGrads {
            grads: &mut grads,
            devices,
        });
        grads
    }

    /// Adds the gradients of `from` into `into`, parameter by parameter.
    pub(crate) fn add_grads(&self, into: &mut GradientsParams, mut from: GradientsParams) {
        self.visit(&mut AddGrads {
            into,
            from: &mut from,
        });
    }

    /// Logits of hidden-state rows: training scores only the rows of its targets, so the
    /// `[rows, vocab]` matrix (the largest activation of a model with a big vocabulary) is
    /// built for those rows alone.
    ///
    /// # Shapes
    /// - `x: [N, d_model]` → `[N, vocab]`
    pub fn head(&self, x: Tensor<2>) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => x.matmul(self.embed.weight.val().transpose()),
        }
    }

    /// `cos`/`sin` tables `[B, 1, T, hd]` for the given positions `[B, T]`.
    fn rope_tables(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let hd = self.config.head_dim();
        let half = hd / 2;
        let device = positions.device();
        // In f32 like Hugging Face, and the very values the engine uses.
        let inv_freq = self.config.rope_inv_freqs();
        let inv_freq = Tensor::<1>::from_data(TensorData::new(inv_freq, [half]), &device)
            .reshape([1, 1, half]);
        let angles = positions.float().unsqueeze_dim::<3>(2) * inv_freq; // [B, T, hd/2]
        let full = Tensor::cat(vec![angles.clone(), angles], 2).unsqueeze_dim::<4>(1);
        (full.clone().cos(), full.sin())
    }

    /// All weights as engine [`Weights`]: Hugging Face names, `[out, in]` matrices (see the
    /// module docs). Sync the engine with `engine.load_weights(&model.to_weights())`.
    pub fn to_weights(&self) -> Weights {
        let mut weights = Weights::new();
        for ((name, shape, transposed), data) in
            param_specs(&self.config).into_iter().zip(self.param_data())
        {
            let data = to_f32_vec(data);
            // burn [in, out] = [shape[1], shape[0]] -> HF [out, in].
            let data = if transposed {
                transpose(&data, shape[1], shape[0])
            } else {
                data
            };
            weights
                .insert(name, shape, data)
                .expect("shape and data come from the same parameter");
        }
        weights
    }

    /// Builds a model on `device` from engine [`Weights`] (Hugging Face names and layout). Every
    /// tensor of [`Weights::expected_shapes`] must be present with its shape; extra tensors are
    /// ignored. On an autodiff device the parameters require gradients.
    pub fn from_weights(
        cfg: &ModelConfig,
        weights: &Weights,
        device: &Device,
    ) -> Result<PolicyModel, TrainerError> {
        cfg.validate()?;
        let mut params = Vec::new();
        for (name, shape, transposed) in param_specs(cfg) {
            let found = weights
                .get(&name)
                .ok_or_else(|| TrainerError::MissingTensor { name: name.clone() })?;
            if found.shape != shape || found.data.len() != shape.iter().product::<usize>() {
                return Err(TrainerError::ShapeMismatch {
                    name,
                    expected: shape,
                    found: found.shape.clone(),
                });
            }
            params.push(if transposed {
                (
                    transpose(&found.data, shape[0], shape[1]),
                    vec![shape[1], shape[0]],
                )
            } else {
                (found.data.clone(), shape)
            });
        }
        Ok(Self::assemble(cfg, params, device))
    }

    /// Builds the module tree from canonical-order parameter data (burn layout).
    fn assemble(cfg: &ModelConfig, params: Vec<(Vec<f32>, Vec<usize>)>, device: &Device) -> Self {
        let eps = cfg.norm_eps as f64;
        let mut c = Cursor {
            items: params.into_iter(),
            next_id: 0,
            device,
        };
        let embed = Embedding { weight: c.matrix() };
        let hd = cfg.head_dim();
        let qkv_bias = cfg.qkv_bias;
        let layers = (0..cfg.n_layers)
            .map(|_| {
                let attn_norm = c.norm(eps);
                let attn = Attention {
                    q_proj: c.linear_with_bias(qkv_bias),
                    k_proj: c.linear_with_bias(qkv_bias),
                    v_proj: c.linear_with_bias(qkv_bias),
                    o_proj: c.linear(),
                    n_heads: cfg.n_heads,
                    n_kv_heads: cfg.n_kv_heads,
                    head_dim: hd,
                };
                let mlp_norm = c.norm(eps);
                let mlp = Mlp {
                    gate_proj: c.linear(),
                    up_proj: c.linear(),
                    down_proj: c.linear(),
                };
                Block {
                    attn_norm,
                    attn,
                    mlp_norm,
                    mlp,
                }
            })
            .collect();
        let norm = c.norm(eps);
        let lm_head = (!cfg.tie_embeddings).then(|| c.linear());
        PolicyModel {
            embed,
            layers,
            norm,
            lm_head,
            config: cfg.clone(),
        }
    }

    /// The parameter values in canonical order (burn layout), read back to the host.
    pub(crate) fn param_data(&self) -> Vec<TensorData> {
        let mut out = vec![self.embed.weight.val().into_data()];
        for layer in &self.layers {
            out.push(layer.attn_norm.gamma.val().into_data());
            for linear in [
                &layer.attn.q_proj,
                &layer.attn.k_proj,
                &layer.attn.v_proj,
                &layer.attn.o_proj,
            ] {
                out.push(linear.weight.val().into_data());
                if let Some(bias) = &linear.bias {
                    out.push(bias.val().into_data());
                }
            }
            out.push(layer.mlp_norm.gamma.val().into_data());
            for linear in [
                &layer.mlp.gate_proj,
                &layer.mlp.up_proj,
                &layer.mlp.down_proj,
            ] {
                out.push(linear.weight.val().into_data());
            }
        }
        out.push(self.norm.gamma.val().into_data());
        if let Some(head) = &self.lm_head {
            out.push(head.weight.val().into_data());
        }
        out
    }
}

/// Hands out canonical-order parameters with canonical ids.
struct Cursor<'a> {
    items: std::vec::IntoIter<(Vec<f32>, Vec<usize>)>,
    next_id: u64,
    device: &'a Device,
}

impl Cursor<'_> {
    fn take<const D: usize>(&mut self) -> Param<Tensor<D>> {
        let (data, shape) = self.items.next().expect("one entry per parameter spec");
        let tensor = Tensor::<D>::from_data(TensorData::new(data, shape), self.device);
        let mut param = Param::from_tensor(tensor);
        param.id = ParamId::from(self.next_id);
        self.next_id += 1;
        param
    }

    fn matrix(&mut self) -> Param<Tensor<2>> {
        self.take()
    }

    fn linear(&mut self) -> Linear {
        self.linear_with_bias(false)
    }

    /// A linear layer whose weight (and, with `bias`, bias) are the next parameters.
    fn linear_with_bias(&mut self, bias: bool) -> Linear {
        let weight = self.take();
        let bias = bias.then(|| self.take());
        Linear { weight, bias }
    }

    fn norm(&mut self, epsilon: f64) -> RmsNorm {
        RmsNorm {
            gamma: self.take(),
            epsilon,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use rollout::engine::Engine;

    /// Causal mask `[1, T, T]` (true above the diagonal) and positions `0..T`.
    fn causal_inputs(
        tokens: &[u32],
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<3, Bool>) {
        let t = tokens.len();
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let pos: Vec<i64> = (0..t as i64).collect();
        let mask: Vec<bool> = (0..t * t).map(|k| k % t > k / t).collect();
        (
            Tensor::from_data(TensorData::new(ids, [1, t]), device),
            Tensor::from_data(TensorData::new(pos, [1, t]), device),
            Tensor::from_data(TensorData::new(mask, [1, t, t]), device),
        )
    }

    /// Max |burn − engine| over all logits of a random sequence.
    fn parity(cfg: &ModelConfig, weights: &Weights, len: usize, seed: u64) -> f32 {
        let mut rng = StdRng::seed_from_u64(seed);
        let tokens: Vec<u32> = (0..len)
            .map(|_| rng.random_range(0..cfg.vocab_size as u32))
            .collect();
        let engine = Engine::new(cfg.clone(), weights).unwrap();
        let expected = engine.forward_full(&tokens);
        let device = Device::flex();
        let model = PolicyModel::from_weights(cfg, weights, &device).unwrap();
        let (ids, pos, mask) = causal_inputs(&tokens, &device);
        let logits = to_f32_vec(model.forward(ids, pos, mask).into_data());
        assert_eq!(logits.len(), expected.len());
        logits
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn logits_match_engine_tiny() {
        let cfg = ModelConfig::tiny();
        // A larger init scale than the default 0.02 so logits spread over O(1) and a mismatch
        // in any component would show.
        let weights = Weights::random_with_std(&cfg, 11, 0.08);
        let diff = parity(&cfg, &weights, 64, 1);
        eprintln!("burn vs engine (tiny, 64 tokens): max |logit diff| = {diff:e}");
        assert!(diff <= 1e-4, "max abs logit diff {diff}");
        let diff = parity(&cfg, &Weights::random(&cfg, 3), 64, 2);
        assert!(diff <= 1e-4, "max abs logit diff {diff} (default init)");
    }

    #[test]
    fn logits_match_engine_grouped_query_and_tied() {
        let cfg = ModelConfig {
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            d_ff: 96,
            tie_embeddings: true,
            ..ModelConfig::tiny()
        };
        let weights = Weights::random_with_std(&cfg, 5, 0.1);
        let diff = parity(&cfg, &weights, 48, 3);
        eprintln!("burn vs engine (GQA, tied): max |logit diff| = {diff:e}");
        assert!(diff <= 1e-4, "max abs logit diff {diff}");
    }

    /// Engine and burn logits agree on models loaded from Hugging Face directories (written by
    /// `rollout::hf::fixture`), for grouped-query and plain attention, with and without q/k/v
    /// biases and tied embeddings, and with Llama 3 RoPE scaling.
    #[test]
    fn logits_match_engine_on_loaded_hf_models() {
        use rollout::engine::RopeScaling;
        use rollout::hf::fixture::{StoreDtype, TinyModel, tiny_config};
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let root = std::env::temp_dir().join(format!("arbor-trainer-hf-{}", std::process::id()));
        let mut k = 0;
        for n_kv_heads in [2, 4] {
            for qkv_bias in [false, true] {
                for tie_embeddings in [false, true] {
                    k += 1;
                    let cfg = ModelConfig {
                        n_kv_heads,
                        qkv_bias,
                        tie_embeddings,
                        rope_theta: if k % 2 == 0 { 500.0 } else { 10_000.0 },
                        rope_scaling: (k % 2 == 0).then_some(llama3),
                        ..tiny_config()
                    };
                    let mut spec = TinyModel::new(cfg.clone());
                    spec.seed = k;
                    spec.dtype = if k % 3 == 0 {
                        StoreDtype::Bf16
                    } else {
                        StoreDtype::F32
                    };
                    let dir = root.join(format!("m{k}"));
                    spec.write(&dir).unwrap();
                    let loaded = rollout::hf::load_model_dir(&dir).unwrap();
                    assert_eq!(loaded.config, cfg);
                    let diff = parity(&loaded.config, &loaded.weights, 48, k);
                    eprintln!(
                        "burn vs engine (kv {n_kv_heads}, bias {qkv_bias}, tied {tie_embeddings}, \
                         llama3 {}): max |logit diff| = {diff:e}",
                        cfg.rope_scaling.is_some()
                    );
                    assert!(diff <= 1e-4, "max abs logit diff {diff}");
                }
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn biases_round_trip_exactly() {
        let cfg = ModelConfig {
            n_kv_heads: 2,
            qkv_bias: true,
            ..ModelConfig::tiny()
        };
        let weights = Weights::random(&cfg, 9);
        let device = Device::flex().autodiff();
        let model = PolicyModel::from_weights(&cfg, &weights, &device).unwrap();
        assert_eq!(model.to_weights(), weights);
        assert_eq!(model.num_params(), cfg.num_params());
        // burn's initialiser gives zero biases (as Hugging Face does) under the same names.
        let init = PolicyModel::init(&cfg, &device).unwrap().to_weights();
        init.validate(&cfg).unwrap();
        let bias = init.get("model.layers.3.self_attn.v_proj.bias").unwrap();
        assert!(bias.data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn weights_round_trip_exactly() {
        let cfg = ModelConfig {
            n_kv_heads: 2,
            ..ModelConfig::tiny()
        };
        let weights = Weights::random(&cfg, 9);
        let device = Device::flex().autodiff();
        let model = PolicyModel::from_weights(&cfg, &weights, &device).unwrap();
        assert_eq!(model.to_weights(), weights);
        assert_eq!(model.num_params(), cfg.num_params());
    }

    #[test]
    fn from_weights_reports_missing_and_misshapen_tensors() {
        let cfg = ModelConfig::tiny();
        let device = Device::flex();
        let mut weights = Weights::random(&cfg, 1);
        weights.remove("model.norm.weight");
        let err = PolicyModel::from_weights(&cfg, &weights, &device).unwrap_err();
        assert!(matches!(err, TrainerError::MissingTensor { name } if name == "model.norm.weight"));
        let mut weights = Weights::random(&cfg, 1);
        weights
            .insert("model.norm.weight", vec![3], vec![1.0; 3])
            .unwrap();
        let err = PolicyModel::from_weights(&cfg, &weights, &device).unwrap_err();
        assert!(matches!(err, TrainerError::ShapeMismatch { .. }));
    }
}
