//! AdamW with global gradient-norm clipping, keyed by the policy's canonical parameter ids.
//!
//! The update is PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments,
//! `eps` added outside the square root), preceded by `clip_grad_norm_` over all parameters
//! together: with `g` the gradients and `n = ‖g‖₂` over every parameter, when `n > max_norm`
//! every gradient is scaled by `max_norm / (n + 1e-6)`.
//!
//! The state (first and second moments per parameter, and the step count) lives in this crate
//! rather than in burn's `ModuleOptimizer` so that checkpoints can store it under the parameters'
//! Hugging Face names ([`AdamWState`]) and restore it bit-for-bit into a model rebuilt from
//! those names.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use rollout::engine::{ModelConfig, Weights};

use crate::TrainerError;
use crate::model::{PolicyModel, param_specs, to_f32_vec, transpose};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate. By default, this is 1e-4 (the tiny presets train from scratch; verl's
    /// 1e-6 suits billion-parameter models).
    pub lr: f64,
    /// First-moment decay. By default, this is 0.9.
    pub beta1: f64,
    /// Second-moment decay. By default, this is 0.999.
    pub beta2: f64,
    /// Added to the root of the second moment. By default, this is 1e-8.
    pub eps: f64,
    /// Decoupled weight decay (applied as `p ← p·(1 − lr·wd)`). By default, this is 0.01.
    pub weight_decay: f64,
    /// Global gradient-norm clip; `None` disables clipping. By default, this is `Some(1.0)`.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges (`lr ≥ 0`, betas in `[0, 1)`, `eps > 0`, `weight_decay ≥ 0`,
    /// `max_grad_norm > 0`).
    pub fn validate(&self) -> Result<(), TrainerError> {
        let ok = self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0
            && self.max_grad_norm.is_none_or(|m| m > 0.0);
        if ok {
            Ok(())
        } else {
            Err(TrainerError::Config {
                reason: format!("AdamW settings out of range: {self:?}"),
            })
        }
    }
}

/// The moments of one parameter, flattened in burn layout.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW optimizer state for a [`PolicyModel`].
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    /// Updates applied so far (PyTorch's per-parameter `step`, shared by all parameters).
    step: u64,
    moments: HashMap<ParamId, Moments>,
}

/// Optimizer state in Hugging Face names and layout, for checkpoints: `exp_avg` and `exp_avg_sq`
/// hold, under each parameter's name, PyTorch AdamW's `exp_avg` / `exp_avg_sq` in the same
/// `[out, in]` layout as the weight.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Number of updates applied.
    pub step: u64,
    /// First moments.
    pub exp_avg: Weights,
    /// Second moments.
    pub exp_avg_sq: Weights,
}

/// Sum of squares of every gradient of a module (one device scalar per parameter).
struct GradNormSq<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for GradNormSq<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Applies one AdamW update to every parameter that has a gradient.
struct Update<'a> {
    grads: &'a GradientsParams,
    moments: &'a mut HashMap<ParamId, Moments>,
    config: &'a AdamWConfig,
    lr: f64,
    grad_scale: f64,
    step: u64,
}

impl ModuleMapper for Update<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        let Some(grad) = self.grads.get::<D>(id) else {
            return param;
        };
        let c = self.config;
        let (lr, step, scale) = (self.lr, self.step as i32, self.grad_scale);
        let moments = &mut *self.moments;
        param.map(|tensor| {
            let shape = tensor.shape();
            let n = shape.num_elements();
            let x = tensor.inner().reshape([n]);
            let mut g = grad.reshape([n]);
            if scale != 1.0 {
                g = g.mul_scalar(scale);
            }
            let (m, v) = match moments.remove(&id) {
                Some(Moments { m, v }) => (
                    m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                    v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2),
                ),
                None => (
                    g.clone().mul_scalar(1.0 - c.beta1),
                    g.square().mul_scalar(1.0 - c.beta2),
                ),
            };
            let m_hat = m.clone().div_scalar(1.0 - c.beta1.powi(step));
            let v_hat = v.clone().div_scalar(1.0 - c.beta2.powi(step));
            let update = m_hat / v_hat.sqrt().add_scalar(c.eps);
            let x = x.mul_scalar(1.0 - lr * c.weight_decay) - update.mul_scalar(lr);
            moments.insert(id, Moments { m, v });
            Tensor::<D>::from_inner(x.reshape(shape)).require_grad()
        })
    }
}

impl AdamW {
    /// A fresh optimizer (no moments, step 0).
    pub fn new(config: AdamWConfig) -> Result<Self, TrainerError> {
        config.validate()?;
        Ok(AdamW {
            config,
            step: 0,
            moments: HashMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Sets the learning rate used by later steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Forgets the moments and the step count (bias correction starts over); the settings stay.
    pub fn reset(&mut self) {
        self.step = 0;
        self.moments.clear();
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Clips the gradients (when configured) and applies one update. Returns the new model and
    /// the global gradient norm before clipping.
    pub fn step(&mut self, model: PolicyModel, grads: &GradientsParams) -> (PolicyModel, f64) {
        let mut norm = GradNormSq { grads, total: None };
        model.visit(&mut norm);
        let norm = norm
            .total
            .map_or(0.0, |t| to_f32_vec(t.into_data())[0] as f64)
            .sqrt();
        let grad_scale = match self.config.max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let mut update = Update {
            grads,
            moments: &mut self.moments,
            config: &self.config,
            lr: self.config.lr,
            grad_scale,
            step: self.step,
        };
        (model.map(&mut update), norm)
    }

    /// The state in Hugging Face names and layout (see [`AdamWState`]).
    pub fn state(&self, cfg: &ModelConfig) -> AdamWState {
        let mut exp_avg = Weights::new();
        let mut exp_avg_sq = Weights::new();
        for (index, (name, shape, transposed)) in param_specs(cfg).into_iter().enumerate() {
            let Some(Moments { m, v }) = self.moments.get(&ParamId::from(index as u64)) else {
                continue;
            };
            let host = |t: &Tensor<1>| {
                let data = to_f32_vec(t.clone().into_data());
                if transposed {
                    transpose(&data, shape[1], shape[0])
                } else {
                    data
                }
            };
            let (m, v) = (host(m), host(v));
            exp_avg
                .insert(name.clone(), shape.clone(), m)
                .expect("moment has the parameter's size");
            exp_avg_sq
                .insert(name, shape, v)
                .expect("moment has the parameter's size");
        }
        AdamWState {
            step: self.step,
            exp_avg,
            exp_avg_sq,
        }
    }

    /// An optimizer with `config` and the given state (checked against `cfg`: every tensor must
    /// name a parameter and have its shape; parameters without moments start fresh, as in
    /// PyTorch).
    pub fn from_state(
        config: AdamWConfig,
        state: &AdamWState,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self, TrainerError> {
        let mut opt = AdamW::new(config)?;
        opt.step = state.step;
        // Gradients, hence moments, live on the device without autodiff.
        let device = &device.clone().without_autodiff();
        let specs = param_specs(cfg);
        for (which, set) in [
            ("exp_avg", &state.exp_avg),
            ("exp_avg_sq", &state.exp_avg_sq),
        ] {
            if let Some((name, _)) = set
                .iter()
                .find(|(name, _)| !specs.iter().any(|(n, _, _)| n == name))
            {
                return Err(TrainerError::UnexpectedTensor {
                    name: format!("{which}:{name}"),
                });
            }
        }
        for (index, (name, shape, transposed)) in specs.into_iter().enumerate() {
            let (m, v) = match (state.exp_avg.get(&name), state.exp_avg_sq.get(&name)) {
                (Some(m), Some(v)) => (m, v),
                (None, None) => continue,
                _ => return Err(TrainerError::MissingTensor { name }),
            };
            for t in [m, v] {
                if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                    return Err(TrainerError::ShapeMismatch {
                        name,
                        expected: shape,
                        found: t.shape.clone(),
                    });
                }
            }
            let device_tensor = |data: &[f32]| {
                let data = if transposed {
                    transpose(data, shape[0], shape[1])
                } else {
                    data.to_vec()
                };
                let n = data.len();
                Tensor::<1>::from_data(TensorData::new(data, [n]), device)
            };
            opt.moments.insert(
                ParamId::from(index as u64),
                Moments {
                    m: device_tensor(&m.data),
                    v: device_tensor(&v.data),
                },
            );
        }
        Ok(opt)
    }
}
