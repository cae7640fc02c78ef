//! [`Trainer`]: the optimisation state of a run — policy, optional frozen reference, AdamW,
//! step counters — and the SFT and RL update steps.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};
use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rollout::engine::{ModelConfig, Weights};

use crate::TrainerError;
use crate::device::{DeviceChoice, DeviceSet, training_device};
use crate::loss::{LossStats, PpoConfig, policy_loss_from, target_logprobs};
use crate::model::PolicyModel;
use crate::optim::{AdamW, AdamWConfig, AdamWState};
use crate::pack::{DeviceBatch, TrainBatch};
use crate::sft::sft_loss_from;

/// Trainer settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Optimizer settings (learning rate, betas, weight decay, gradient clipping).
    pub optim: AdamWConfig,
    /// PPO loss settings.
    pub ppo: PpoConfig,
    /// Seed of the initial weights ([`Trainer::new`]) and of the mini-batch shuffling.
    /// By default, this is 0.
    pub seed: u64,
    /// Whether [`Trainer::rl_step`] visits the mini-batches of each epoch in a seeded random
    /// order (otherwise in the order given). By default, this is enabled.
    pub shuffle_minibatches: bool,
    /// Data-parallel shards per update: the rows of a batch are split into this many shards
    /// (balanced by tokens, see [`TrainBatch::shards`]), each shard's loss is forwarded and
    /// back-propagated on its own thread, and the gradients are summed — the same update as one
    /// pass over the whole batch, up to float summation order. A fixed number, not the core
    /// count, so a run's numbers do not depend on the machine; data-parallel training
    /// ([`Trainer::set_data_parallel`]) raises it to the number of devices. By default, this
    /// is [`DEFAULT_SHARDS`].
    pub shards: usize,
    /// Layer-wise gradient checkpointing ([`PolicyModel::checkpointed_grads`]): the forward
    /// pass keeps only each decoder layer's input, and the backward pass re-runs one layer at
    /// a time. The same update, bit for bit, at a peak activation memory of one layer instead
    /// of all of them, for about one more forward pass of compute (`arbor bench train
    /// --gradient-checkpointing`). By default, this is disabled.
    pub gradient_checkpointing: bool,
    /// How many of the shards run at the same time (0: all; per device in data-parallel
    /// training): a lower number keeps fewer shards' activations in memory at once and takes
    /// longer; the update is the same, bit for bit (gradients are summed in shard order either
    /// way). By default, this is 0.
    pub parallel_shards: usize,
}

pub use crate::pack::DEFAULT_SHARDS;

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            optim: AdamWConfig::default(),
            ppo: PpoConfig::default(),
            seed: 0,
            shuffle_minibatches: true,
            shards: DEFAULT_SHARDS,
            gradient_checkpointing: false,
            parallel_shards: 0,
        }
    }
}

/// Which kind of update the run is doing (recorded in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No update yet.
    #[default]
    Init,
    /// Supervised warm start.
    Sft,
    /// Reinforcement learning.
    Rl,
}

/// Counters and seed: everything besides weights and optimizer moments that a resumed run needs
/// to continue exactly. Every random draw of the trainer comes from an RNG derived from
/// `(seed, counter, ...)`, so no RNG state needs saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// The run's seed.
    pub seed: u64,
    /// [`Trainer::sft_step`] calls so far.
    pub sft_steps: u64,
    /// [`Trainer::rl_step`] calls so far.
    pub rl_steps: u64,
    /// The phase of the last step (or as set by [`Trainer::set_phase`]).
    pub phase: Phase,
}

/// Statistics of one [`Trainer::sft_step`] or [`Trainer::rl_step`], averaged over its optimizer
/// updates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Loss.
    pub loss: f32,
    /// K3 KL to the reference (0 without one, and for SFT).
    pub kl: f32,
    /// Policy entropy at the targets (nats; 0 for SFT).
    pub entropy: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Fraction of clipped ratios (0 for SFT).
    pub clip_frac: f32,
    /// Optimizer updates applied.
    pub updates: usize,
    /// Targets (scored tokens) per update pass, summed over updates.
    pub targets: usize,
    /// Tokens forwarded (padding excluded), summed over updates.
    pub tokens: usize,
}

/// The device training runs on by default: burn's Flex CPU backend with autodiff.
pub fn default_device() -> Device {
    Device::flex().autodiff()
}

/// Policy, optional frozen reference, optimizer and counters (module docs).
#[derive(Debug)]
pub struct Trainer {
    config: TrainerConfig,
    device: Device,
    model: PolicyModel,
    /// On the device without autodiff: it is never differentiated.
    reference: Option<PolicyModel>,
    /// The reference is the weights the run started from (see
    /// [`Trainer::freeze_reference_of_initial`]).
    reference_is_initial: bool,
    optim: AdamW,
    state: TrainerState,
    /// Data-parallel replicas on further devices ([`Trainer::set_data_parallel`]).
    parallel: Option<DataParallel>,
}

/// How the gradients of data-parallel replicas are summed ([`Trainer::set_data_parallel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GradReduce {
    /// burn's all-reduce collective (`burn::tensor::distributed::all_reduce`, NCCL on CUDA):
    /// every replica receives the sum of all replicas' gradients, on its own device.
    AllReduce,
    /// Every replica's gradients copied to the primary device and added there in device
    /// order: the stand-in for the collective in the tests, where CPU devices (burn 0.22's
    /// CPU backend has no collectives) play the GPUs.
    #[cfg_attr(not(test), allow(dead_code))]
    Gather,
}

/// Replicas of the policy on the devices after the primary, and how their gradients meet.
#[derive(Debug)]
struct DataParallel {
    replicas: Vec<Replica>,
    reduce: GradReduce,
    /// Keeps burn's communication server of [`GradReduce::AllReduce`] up (closed on drop).
    _context: Option<DistributedContext>,
}

/// A copy of the policy on one device, refreshed from the primary after every update.
#[derive(Debug)]
struct Replica {
    device: Device,
    model: PolicyModel,
}

impl Trainer {
    /// A trainer whose policy starts from `Weights::random(model_config, config.seed)` (the
    /// engine's seeded initialisation) on [`default_device`].
    pub fn new(model_config: &ModelConfig, config: TrainerConfig) -> Result<Self, TrainerError> {
        let weights = Weights::random(model_config, config.seed);
        Self::from_weights(model_config, &weights, config, &default_device())
    }

    /// A trainer whose policy starts from `weights`, on `device` (autodiff is enabled on it).
    pub fn from_weights(
        model_config: &ModelConfig,
        weights: &Weights,
        config: TrainerConfig,
        device: &Device,
    ) -> Result<Self, TrainerError> {
        config.ppo.validate()?;
        let device = device.clone().autodiff();
        Ok(Trainer {
            model: PolicyModel::from_weights(model_config, weights, &device)?,
            reference: None,
            reference_is_initial: false,
            optim: AdamW::new(config.optim)?,
            state: TrainerState {
                seed: config.seed,
                ..TrainerState::default()
            },
            config,
            device,
            parallel: None,
        })
    }

    /// A trainer continuing from saved parts (see [`crate::checkpoint`]). `config.seed` is
    /// replaced by the saved seed.
    pub fn restore(
        model_config: &ModelConfig,
        config: TrainerConfig,
        weights: &Weights,
        reference: Option<&Weights>,
        optimizer: &AdamWState,
        state: TrainerState,
        device: &Device,
    ) -> Result<Self, TrainerError> {
        let config = TrainerConfig {
            seed: state.seed,
            ..config
        };
        let mut trainer = Self::from_weights(model_config, weights, config, device)?;
        trainer.optim = AdamW::from_state(config.optim, optimizer, model_config, &trainer.device)?;
        trainer.set_reference(reference)?;
        trainer.state = state;
        Ok(trainer)
    }

    /// The settings.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The model configuration.
    pub fn model_config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The training device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The policy.
    pub fn model(&self) -> &PolicyModel {
        &self.model
    }

    /// Counters, seed and phase.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Records the phase (checkpoints store it).
    pub fn set_phase(&mut self, phase: Phase) {
        self.state.phase = phase;
    }

    /// The learning rate of the next update.
    pub fn lr(&self) -> f64 {
        self.optim.config().lr
    }

    /// Sets the learning rate of later updates (schedules, or a different rate for RL after SFT).
    pub fn set_lr(&mut self, lr: f64) {
        self.optim.set_lr(lr);
    }

    /// Starts the optimizer over (zero moments, step 0), keeping its settings. `arbor train`
    /// does this when RL begins: moments accumulated on the SFT loss have another scale than
    /// policy gradients (Adam's second moment remembers them for ~1/(1 − β2) = 1000 updates),
    /// and would set the size of the first RL updates.
    pub fn reset_optimizer(&mut self) {
        self.optim.reset();
    }

    /// The policy weights for the engine: `engine.load_weights(&trainer.weights())`.
    pub fn weights(&self) -> Weights {
        self.model.to_weights()
    }

    /// The optimizer state (for checkpoints).
    pub fn optimizer_state(&self) -> AdamWState {
        self.optim.state(self.model.config())
    }

    /// Freezes a copy of the current policy as the KL reference.
    pub fn freeze_reference(&mut self) {
        self.reference = Some(self.model.valid());
        self.reference_is_initial = false;
    }

    /// Freezes a copy of the current policy as the KL reference, as
    /// [`Trainer::freeze_reference`] does, and returns whether it equals `initial` (the weights
    /// the run started from) bit for bit. When it does, checkpoints record that instead of
    /// storing the reference ([`crate::checkpoint`]), and restoring one takes `initial` again:
    /// a run that starts RL from its initial weights (no SFT of its own, e.g. a sweep point
    /// starting from the shared SFT checkpoint) writes no second copy of the model per
    /// checkpoint.
    pub fn freeze_reference_of_initial(&mut self, initial: &Weights) -> bool {
        self.freeze_reference();
        let policy = self.model.to_weights();
        self.reference_is_initial = policy.iter().all(|(name, t)| {
            initial.get(name).is_some_and(|u| {
                u.shape == t.shape
                    && u.data.len() == t.data.len()
                    && u.data
                        .iter()
                        .zip(&t.data)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
            })
        });
        self.reference_is_initial
    }

    /// Sets (or with `None` removes) the KL reference from weights.
    pub fn set_reference(&mut self, weights: Option<&Weights>) -> Result<(), TrainerError> {
        let plain = self.device.clone().without_autodiff();
        self.reference = weights
            .map(|w| PolicyModel::from_weights(self.model.config(), w, &plain))
            .transpose()?;
        self.reference_is_initial = false;
        Ok(())
    }

    /// Sets the KL reference to `initial`, the weights the run started from, as
    /// [`Trainer::freeze_reference_of_initial`] found it (restoring a checkpoint that did not
    /// store its reference).
    pub fn set_initial_reference(&mut self, initial: &Weights) -> Result<(), TrainerError> {
        self.set_reference(Some(initial))?;
        self.reference_is_initial = true;
        Ok(())
    }

    /// Whether the KL reference is the run's initial weights (and is not stored in
    /// checkpoints).
    pub fn reference_is_initial(&self) -> bool {
        self.reference.is_some() && self.reference_is_initial
    }

    /// The reference weights, if a reference is set.
    pub fn reference_weights(&self) -> Option<Weights> {
        self.reference.as_ref().map(PolicyModel::to_weights)
    }

    /// Trains data-parallel over `devices` (module docs of [`crate::device`]): the first must
    /// be the trainer's own device, and each further one gets a replica of the policy. Every
    /// update splits its batch into at least as many shards as there are devices and gives
    /// each device a contiguous run of them. The devices' gradients are
    /// summed by burn's all-reduce collective before the primary's optimizer steps, and the
    /// replicas then take the new weights. The update is the single-device one up to float
    /// summation order. The optimizer and the KL reference stay on the primary. Collectives
    /// need CUDA devices in burn 0.22: any other device in a set of several is an error. A set
    /// of one device returns to single-device training.
    pub fn set_data_parallel(&mut self, devices: &DeviceSet) -> Result<(), TrainerError> {
        let config = |reason: String| TrainerError::Config { reason };
        if devices.replicas().is_empty() {
            self.parallel = None;
            return Ok(());
        }
        if let Some(d) = devices
            .devices()
            .iter()
            .find(|d| !matches!(d, DeviceChoice::Cuda(_)))
        {
            return Err(config(format!(
                "data-parallel training on {d}: burn's all-reduce collective runs on CUDA devices \
                 only"
            )));
        }
        if training_device(devices.primary())? != self.device {
            return Err(config(format!(
                "data-parallel devices {devices}: the trainer is not on {}",
                devices.primary()
            )));
        }
        let replicas = devices
            .replicas()
            .iter()
            .map(|&d| training_device(d))
            .collect::<Result<Vec<_>, _>>()?;
        self.set_data_parallel_with(replicas, GradReduce::AllReduce);
        Ok(())
    }

    /// [`Self::set_data_parallel`] on burn devices after the trainer's own, summing gradients
    /// with `reduce` ([`GradReduce::AllReduce`] needs CUDA devices; burn panics on others).
    pub(crate) fn set_data_parallel_with(&mut self, replicas: Vec<Device>, reduce: GradReduce) {
        self.parallel = None; // closes an earlier communication server first
        if replicas.is_empty() {
            return;
        }
        let replicas: Vec<Replica> = replicas
            .into_iter()
            .map(|device| {
                let device = device.autodiff();
                Replica {
                    model: self.model.clone().fork(&device),
                    device,
                }
            })
            .collect();
        let context = (reduce == GradReduce::AllReduce).then(|| {
            let devices = std::iter::once(self.device.clone())
                .chain(replicas.iter().map(|r| r.device.clone()))
                .collect();
            DistributedContext::init(
                devices,
                DistributedConfig {
                    all_reduce_op: ReduceOperation::Sum,
                },
            )
        });
        self.parallel = Some(DataParallel {
            replicas,
            reduce,
            _context: context,
        });
    }

    /// Devices training runs on: 1, or 1 + the data-parallel replicas.
    pub fn num_devices(&self) -> usize {
        1 + self.parallel.as_ref().map_or(0, |p| p.replicas.len())
    }

    /// The device of shard `i` of `n` ([`device_of_shard`]).
    fn shard_device(&self, i: usize, n: usize) -> &Device {
        match &self.parallel {
            None => &self.device,
            Some(p) => match device_of_shard(i, n, self.num_devices()) {
                0 => &self.device,
                d => &p.replicas[d - 1].device,
            },
        }
    }

    /// One optimizer update on the summed gradients of `loss` over the shards; returns the
    /// gradient norm and the merged loss statistics. `loss(model, hidden, i)` is shard `i`'s
    /// loss from its final hidden states (by layer-wise recomputation with
    /// [`TrainerConfig::gradient_checkpointing`]), on shard `i`'s device.
    fn update<F>(&mut self, shards: &[DeviceBatch], loss: F) -> (f32, LossStats)
    where
        F: Fn(&PolicyModel, Tensor<3>, usize) -> (Tensor<1>, LossStats) + Sync,
    {
        let all = 0..shards.len();
        let (grads, stats) = match &self.parallel {
            None => self
                .grads_of(&self.model, &self.device, shards, all, &loss)
                .expect("an update has at least one shard"),
            Some(p) => self.data_parallel_grads(p, shards, &loss),
        };
        let (model, norm) = self.optim.step(self.model.clone(), &grads);
        self.model = model;
        if let Some(p) = &mut self.parallel {
            for r in &mut p.replicas {
                r.model = self.model.clone().fork(&r.device);
            }
        }
        (norm as f32, stats)
    }

    /// The summed gradients of shards `range` (on `device`) and their merged statistics, or
    /// `None` for an empty range.
    fn grads_of<F>(
        &self,
        model: &PolicyModel,
        device: &Device,
        shards: &[DeviceBatch],
        range: std::ops::Range<usize>,
        loss: &F,
    ) -> Option<(GradientsParams, LossStats)>
    where
        F: Fn(&PolicyModel, Tensor<3>, usize) -> (Tensor<1>, LossStats) + Sync,
    {
        let recompute = self.config.gradient_checkpointing;
        let grads_of = |model: &PolicyModel, i: usize| {
            let b = &shards[i];
            let (tokens, positions) = (b.tokens.clone(), b.positions.clone());
            if recompute {
                model.checkpointed_grads(tokens, positions, &b.attention, |hidden| {
                    loss(model, hidden, i)
                })
            } else {
                let hidden = model.hidden_with(tokens, positions, &b.attention);
                let (l, stats) = loss(model, hidden, i);
                (GradientsParams::from_grads(l.backward(), model), stats)
            }
        };
        // Plain threads, one per shard (measured faster than rayon's pool here: the backend's
        // kernels nest their own rayon jobs), at most `parallel_shards` at a time. Each thread
        // differentiates its own copy of the policy: `fork` onto the trainer's device shares
        // the weights and parameter ids but gives fresh autodiff leaves (with the device's
        // checkpointing strategy, which `valid().train()` would reset). Shards that shared
        // leaves would share one autodiff graph, and one shard's backward pass could consume
        // nodes the other still needs (seen as a rare "graph tape has already been consumed"
        // panic). A shard run alone uses the policy itself.
        let at_once = self.shards_at_once(range.len());
        // Summed in shard order as each wave ends, so the result depends neither on thread
        // timing nor on the wave size.
        let mut total: Option<(GradientsParams, LossStats)> = None;
        for start in range.clone().step_by(at_once) {
            let end = (start + at_once).min(range.end);
            let parts: Vec<(GradientsParams, LossStats)> = if end - start == 1 {
                vec![grads_of(model, start)]
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = (start..end)
                        .map(|i| {
                            let grads_of = &grads_of;
                            let local = model.clone().fork(device);
                            s.spawn(move || grads_of(&local, i))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("a shard's backward pass panicked"))
                        .collect()
                })
            };
            for (g, st) in parts {
                total = Some(match total.take() {
                    None => (g, st),
                    Some((mut grads, stats)) => {
                        model.add_grads(&mut grads, g);
                        (grads, stats.merge(&st))
                    }
                });
            }
        }
        total
    }

    /// Gradients of the shards summed over the data-parallel devices, on the primary, with
    /// the statistics merged in device order. One thread per device computes its shards'
    /// gradients; only once every device has its own (a failure then fails the update) are
    /// the collectives issued, again one thread per device, a device without shards
    /// contributing zeros, so that no device waits in a collective another never joins.
    fn data_parallel_grads<F>(
        &self,
        parallel: &DataParallel,
        shards: &[DeviceBatch],
        loss: &F,
    ) -> (GradientsParams, LossStats)
    where
        F: Fn(&PolicyModel, Tensor<3>, usize) -> (Tensor<1>, LossStats) + Sync,
    {
        let (n, devices) = (shards.len(), self.num_devices());
        let members: Vec<(&PolicyModel, &Device)> = std::iter::once((&self.model, &self.device))
            .chain(parallel.replicas.iter().map(|r| (&r.model, &r.device)))
            .collect();
        let parts: Vec<Option<(GradientsParams, LossStats)>> = std::thread::scope(|s| {
            let handles: Vec<_> = members
                .iter()
                .enumerate()
                .map(|(d, &(model, device))| {
                    let range = shards_of_device(d, n, devices);
                    s.spawn(move || self.grads_of(model, device, shards, range, loss))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a device's backward pass panicked"))
                .collect()
        });
        let mut stats: Option<LossStats> = None;
        for (_, st) in parts.iter().flatten() {
            stats = Some(match stats {
                Some(a) => a.merge(st),
                None => *st,
            });
        }
        let mut grads = parts
            .into_iter()
            .map(|p| p.map_or_else(GradientsParams::new, |(g, _)| g));
        let grads = match parallel.reduce {
            GradReduce::AllReduce => {
                let all: Vec<Device> = members.iter().map(|(_, d)| (*d).clone()).collect();
                let reduced: Vec<GradientsParams> = std::thread::scope(|s| {
                    let handles: Vec<_> = grads
                        .zip(&members)
                        .map(|(g, &(model, _))| {
                            let all = &all;
                            s.spawn(move || model.all_reduce_grads(g, all))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("a device's all-reduce panicked"))
                        .collect()
                });
                reduced.into_iter().next().expect("the primary device")
            }
            GradReduce::Gather => {
                let mut sum = grads.next().expect("the primary device");
                for g in grads {
                    self.model
                        .add_grads(&mut sum, g.to_device(&self.device, &self.model));
                }
                sum
            }
        };
        (grads, stats.expect("an update has at least one shard"))
    }

    /// How many of `shards` run at the same time ([`TrainerConfig::parallel_shards`]).
    fn shards_at_once(&self, shards: usize) -> usize {
        match self.config.parallel_shards {
            0 => shards,
            n => n.min(shards),
        }
        .max(1)
    }

    /// Reference-model logprobs of every target of each shard (forward only, one thread per
    /// shard, as many at a time as the updates run), computed on the primary device and handed
    /// to the shard's own.
    fn reference_logprobs(
        &self,
        shards: &[TrainBatch],
    ) -> Result<Vec<Option<Tensor<1>>>, TrainerError> {
        let Some(reference) = &self.reference else {
            return Ok(vec![None; shards.len()]);
        };
        let plain = self.device.clone().without_autodiff();
        let temperature = self.config.ppo.temperature;
        let mut out = Vec::with_capacity(shards.len());
        for wave in shards.chunks(self.shards_at_once(shards.len())) {
            std::thread::scope(|s| -> Result<(), TrainerError> {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|b| {
                        let plain = &plain;
                        s.spawn(move || -> Result<Tensor<1>, TrainerError> {
                            Ok(target_logprobs(reference, &b.to_device(plain)?, temperature).0)
                        })
                    })
                    .collect();
                for h in handles {
                    let logp = h.join().expect("a reference forward pass panicked")?;
                    let device = self.shard_device(out.len(), shards.len());
                    let logp = if self.parallel.is_some() {
                        logp.to_device(&device.clone().without_autodiff())
                    } else {
                        logp
                    };
                    out.push(Some(logp.autodiff()));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// `batch` split into the configured shards (at least one per device), on the host and
    /// each on its device.
    fn shard(
        &self,
        batch: &TrainBatch,
    ) -> Result<(Vec<TrainBatch>, Vec<DeviceBatch>), TrainerError> {
        let shards = batch.shards(self.config.shards.max(self.num_devices()));
        if shards.is_empty() {
            // No shard has a target (or the batch has no rows): the same error as uploading
            // the whole batch gives.
            batch.to_device(&self.device)?;
            return Err(TrainerError::batch("batch has no targets"));
        }
        let n = shards.len();
        let on_device = shards
            .iter()
            .enumerate()
            .map(|(i, b)| b.to_device(self.shard_device(i, n)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((shards, on_device))
    }

    /// One SFT update on a batch from [`crate::sft::sft_batch`].
    pub fn sft_step(&mut self, batch: &TrainBatch) -> Result<StepStats, TrainerError> {
        let (_, device_shards) = self.shard(batch)?;
        let lr = self.lr();
        let (grad_norm, stats) = self.update(&device_shards, |model, hidden, i| {
            sft_loss_from(model, hidden, &device_shards[i])
        });
        self.state.sft_steps += 1;
        self.state.phase = Phase::Sft;
        Ok(StepStats {
            loss: stats.loss,
            grad_norm,
            lr,
            updates: 1,
            targets: stats.targets,
            tokens: batch.num_tokens(),
            ..StepStats::default()
        })
    }

    /// Counts an RL step whose sampled batch has nothing to train (every trajectory masked or
    /// without action tokens): no update, but the step counter advances, so checkpoints,
    /// `--resume` and the run's RL step count agree with the steps sampled.
    pub fn skip_rl_step(&mut self) {
        self.state.rl_steps += 1;
    }

    /// PPO updates: `epochs` passes over `minibatches` (each from [`crate::pack::pack_trees`] or
    /// [`crate::pack::flatten_trees`]), one optimizer update per mini-batch. With a reference
    /// set, its logprobs are computed once per mini-batch before the first update. Statistics
    /// are means over the updates.
    pub fn rl_step(
        &mut self,
        minibatches: &[TrainBatch],
        epochs: usize,
    ) -> Result<StepStats, TrainerError> {
        if minibatches.is_empty() || epochs == 0 {
            return Err(TrainerError::batch(
                "rl_step needs at least one mini-batch and epoch",
            ));
        }
        // Per mini-batch: its shards, on the device, and their reference logprobs.
        let mut device_batches = Vec::with_capacity(minibatches.len());
        let mut ref_logprobs = Vec::with_capacity(minibatches.len());
        for b in minibatches {
            let (shards, on_device) = self.shard(b)?;
            device_batches.push(on_device);
            ref_logprobs.push(self.reference_logprobs(&shards)?);
        }
        let lr = self.lr();
        let mut sum = StepStats::default();
        let mut order: Vec<usize> = (0..minibatches.len()).collect();
        for epoch in 0..epochs {
            if self.config.shuffle_minibatches {
                let mut rng = envs::rng::rng_for(&[
                    self.state.seed,
                    RL_SHUFFLE_STREAM,
                    self.state.rl_steps,
                    epoch as u64,
                ]);
                order.shuffle(&mut rng);
            }
            for &i in &order {
                let (shards, refs, ppo) = (&device_batches[i], &ref_logprobs[i], self.config.ppo);
                let (grad_norm, stats) = self.update(shards, |model, hidden, k| {
                    policy_loss_from(model, hidden, &shards[k], refs[k].as_ref(), &ppo)
                });
                sum.loss += stats.loss;
                sum.kl += stats.kl;
                sum.entropy += stats.entropy;
                sum.clip_frac += stats.clip_frac;
                sum.grad_norm += grad_norm;
                sum.updates += 1;
                sum.targets += stats.targets;
                sum.tokens += minibatches[i].num_tokens();
            }
        }
        self.state.rl_steps += 1;
        self.state.phase = Phase::Rl;
        let n = sum.updates as f32;
        Ok(StepStats {
            loss: sum.loss / n,
            kl: sum.kl / n,
            entropy: sum.entropy / n,
            grad_norm: sum.grad_norm / n,
            clip_frac: sum.clip_frac / n,
            lr,
            ..sum
        })
    }
}

/// The device (0: the primary) that trains shard `i` of `n` on `devices` devices: contiguous
/// runs of shards, `⌊i · devices / n⌋`, the primary's first.
fn device_of_shard(i: usize, n: usize, devices: usize) -> usize {
    i * devices / n
}

/// The shards device `d` of `devices` trains out of `n`: those with [`device_of_shard`] = `d`.
fn shards_of_device(d: usize, n: usize, devices: usize) -> std::ops::Range<usize> {
    (d * n).div_ceil(devices)..((d + 1) * n).div_ceil(devices)
}

/// Stream tag of the RL mini-batch shuffle in `envs::rng::rng_for(&[seed, tag, step, epoch])`.
const RL_SHUFFLE_STREAM: u64 = 0x5348_5546; // "SHUF"

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_util::{rl_batch, sft_demo_batch, small_config};
    use rollout::engine::Engine;

    pub(crate) fn config(seed: u64) -> TrainerConfig {
        TrainerConfig {
            optim: AdamWConfig {
                lr: 3e-3,
                ..AdamWConfig::default()
            },
            seed,
            ..TrainerConfig::default()
        }
    }

    /// Sharded updates (each shard's gradients on its own thread, then summed) give the
    /// weights and statistics of one pass over the whole batch, up to float summation order.
    #[test]
    fn sharded_updates_equal_one_pass() {
        let cfg = small_config();
        let run = |shards: usize| {
            let mut t = Trainer::new(
                &cfg,
                TrainerConfig {
                    shards,
                    ..config(3)
                },
            )
            .unwrap();
            let stats = run_steps(&mut t, 0, 4);
            (t.weights(), stats)
        };
        let (w1, s1) = run(1);
        for shards in [2, 3] {
            let (w, s) = run(shards);
            assert_same_updates(&(&w1, &s1), &(&w, &s), 1e-5, &format!("{shards} shards"));
        }
    }

    /// Weights and step statistics equal up to float summation order (relative `tol`).
    fn assert_same_updates(
        (w1, s1): &(&Weights, &[StepStats]),
        (w, s): &(&Weights, &[StepStats]),
        tol: f32,
        what: &str,
    ) {
        assert_eq!(s1.len(), s.len());
        for (a, b) in s1.iter().zip(s.iter()) {
            for (x, y) in [
                (a.loss, b.loss),
                (a.kl, b.kl),
                (a.clip_frac, b.clip_frac),
                (a.grad_norm, b.grad_norm),
            ] {
                assert!(
                    (x - y).abs() <= tol * x.abs().max(1e-3),
                    "{what}: {a:?} vs {b:?}"
                );
            }
            assert_eq!((a.targets, a.tokens), (b.targets, b.tokens), "{what}");
        }
        for (name, t) in w1.iter() {
            let u = w.get(name).unwrap();
            let diff: Vec<f32> = t.data.iter().zip(&u.data).map(|(x, y)| x - y).collect();
            let rel = crate::test_util::norm(&diff) / crate::test_util::norm(&t.data).max(1e-12);
            assert!(rel <= f64::from(tol), "{what}: {name} rel diff {rel}");
        }
    }

    /// Data-parallel replicas give the single-device updates up to float summation order:
    /// SFT and RL steps with a KL reference, the replicas refreshed after every update, and
    /// more devices than a batch has shards (those devices contribute nothing). The CPU device
    /// stands in for every GPU, with the gather reduction: burn's all-reduce collective runs
    /// on CUDA only, so neither the collective nor placement on distinct devices is exercised.
    #[test]
    fn data_parallel_replicas_give_the_single_device_updates() {
        let cfg = small_config();
        let trainer = || {
            Trainer::new(
                &cfg,
                TrainerConfig {
                    shards: 2,
                    ..config(3)
                },
            )
            .unwrap()
        };
        let mut one = trainer();
        let s1 = run_steps(&mut one, 0, 4);
        for devices in [2, 3, 6] {
            let mut t = trainer();
            t.set_data_parallel_with(vec![Device::flex(); devices - 1], GradReduce::Gather);
            assert_eq!(t.num_devices(), devices);
            let s = run_steps(&mut t, 0, 4);
            let w = t.weights();
            let what = format!("{devices} devices");
            assert_same_updates(&(&one.weights(), &s1), &(&w, &s), 1e-5, &what);
            for r in &t.parallel.as_ref().unwrap().replicas {
                assert!(r.model.to_weights() == w, "{what}: a replica is stale");
            }
        }
        // The collective needs CUDA devices, and a build with their backend; one device is
        // single-device training.
        let mut t = trainer();
        t.set_data_parallel(&DeviceSet::default()).unwrap();
        #[cfg(not(feature = "cuda"))]
        {
            let set: DeviceSet = "cuda:0,cuda:1".parse().unwrap();
            let e = t.set_data_parallel(&set).unwrap_err();
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
        assert_eq!(t.num_devices(), 1);
    }

    /// Shard-to-device assignment: every device's run of shards is contiguous, the runs cover
    /// the shards in order, each device's shards are the ones `device_of_shard` sends it, and
    /// the primary always has one.
    #[test]
    fn devices_take_contiguous_runs_of_shards() {
        for devices in 1..=8 {
            for n in 1..=29 {
                let mut next = 0;
                for d in 0..devices {
                    let run = shards_of_device(d, n, devices);
                    assert_eq!(run.start, next, "{d} of {devices}, {n} shards");
                    for i in run.clone() {
                        assert_eq!(device_of_shard(i, n, devices), d);
                    }
                    next = run.end;
                }
                assert_eq!(next, n);
                assert!(!shards_of_device(0, n, devices).is_empty());
            }
        }
    }

    /// burn's wgpu backend (feature `wgpu`, on the best adapter wgpu finds: a GPU, or a software
    /// Vulkan device such as Mesa's lavapipe) gives the CPU backend's losses and updates on the
    /// same batches: the first step's loss within 1e-5 (relative), and four SFT and RL steps'
    /// statistics and weights within 1e-4 (summation orders differ, and AdamW carries the
    /// difference forward).
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_backend_gives_the_cpu_updates() {
        let cfg = small_config();
        let weights = Weights::random(&cfg, 3);
        let run = |device: &Device| {
            let mut t = Trainer::from_weights(&cfg, &weights, config(3), device).unwrap();
            let stats = run_steps(&mut t, 0, 4);
            (t.weights(), stats)
        };
        let (w_cpu, s_cpu) = run(&Device::flex());
        let wgpu = crate::device::training_device(DeviceChoice::Wgpu(None)).unwrap();
        let (w_gpu, s_gpu) = run(&wgpu);
        for (step, (a, b)) in s_cpu.iter().zip(&s_gpu).enumerate() {
            eprintln!(
                "step {step}: loss cpu {:.7} wgpu {:.7} (rel {:.2e})",
                a.loss,
                b.loss,
                ((a.loss - b.loss) / a.loss).abs()
            );
        }
        let first = ((s_cpu[0].loss - s_gpu[0].loss) / s_cpu[0].loss).abs();
        assert!(first <= 1e-5, "first loss rel diff {first}");
        assert_same_updates(&(&w_cpu, &s_cpu), &(&w_gpu, &s_gpu), 1e-4, "wgpu");
    }

    /// Gradient checkpointing recomputes activations instead of keeping them: SFT and RL steps
    /// (two shards, KL reference) give bit-identical statistics and weights.
    #[test]
    fn gradient_checkpointing_gives_the_same_updates() {
        let cfg = small_config();
        let run = |gradient_checkpointing: bool| {
            let mut t = Trainer::new(
                &cfg,
                TrainerConfig {
                    gradient_checkpointing,
                    ..config(3)
                },
            )
            .unwrap();
            let stats = run_steps(&mut t, 0, 4);
            (t.weights(), t.optimizer_state(), stats)
        };
        let (plain, checkpointed) = (run(false), run(true));
        assert_eq!(plain.2, checkpointed.2);
        assert_eq!(plain.0, checkpointed.0);
        assert_eq!(plain.1, checkpointed.1);
    }

    /// Shards run one or two at a time give the update of all at once, bit for bit.
    #[test]
    fn shards_in_waves_give_the_same_updates() {
        let cfg = small_config();
        let run = |parallel_shards: usize| {
            let mut t = Trainer::new(
                &cfg,
                TrainerConfig {
                    shards: 3,
                    parallel_shards,
                    ..config(3)
                },
            )
            .unwrap();
            let stats = run_steps(&mut t, 0, 4);
            (t.weights(), stats)
        };
        let all = run(0);
        for waves in [1, 2] {
            assert_eq!(run(waves), all, "{waves} at a time");
        }
    }

    /// A batch without rows or without targets is an error, not a panic, however it is sharded.
    #[test]
    fn batches_without_targets_are_errors() {
        let mut t = Trainer::new(&small_config(), config(0)).unwrap();
        let no_targets = TrainBatch::new(vec![
            crate::pack::PackedSequence::causal(vec![1, 2, 3], Vec::new()),
            crate::pack::PackedSequence::causal(vec![4, 5], Vec::new()),
        ]);
        for batch in [TrainBatch::new(Vec::new()), no_targets] {
            assert!(t.sft_step(&batch).is_err());
            assert!(t.rl_step(std::slice::from_ref(&batch), 1).is_err());
        }
        assert_eq!(t.state().sft_steps + t.state().rl_steps, 0);
    }

    /// Two SFT steps, a reference freeze, two RL steps of two mini-batches × two epochs.
    pub(crate) fn run_steps(trainer: &mut Trainer, from: u64, to: u64) -> Vec<StepStats> {
        (from..to)
            .map(|step| {
                if step < 2 {
                    trainer.sft_step(&sft_demo_batch(step)).unwrap()
                } else {
                    if trainer.reference.is_none() {
                        trainer.freeze_reference();
                    }
                    trainer
                        .rl_step(&[rl_batch(step), rl_batch(step + 50)], 2)
                        .unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn same_seed_and_data_give_bit_identical_weights() {
        let cfg = small_config();
        let mut a = Trainer::new(&cfg, config(3)).unwrap();
        let mut b = Trainer::new(&cfg, config(3)).unwrap();
        let sa = run_steps(&mut a, 0, 4);
        let sb = run_steps(&mut b, 0, 4);
        assert_eq!(sa, sb);
        assert_eq!(a.weights(), b.weights());
        assert_eq!(a.optimizer_state(), b.optimizer_state());
        assert_eq!(a.state().rl_steps, 2);
        assert_eq!(a.optimizer_state().step, 2 + 2 * 2 * 2);
        // RL statistics are live: a reference exists and the policy moved away from it.
        let rl = sa[3];
        assert!(rl.kl > 0.0 && rl.entropy > 0.0 && rl.grad_norm > 0.0 && rl.updates == 4);
        let c = Trainer::new(&cfg, config(4)).unwrap();
        assert_ne!(
            c.weights(),
            Trainer::new(&cfg, config(3)).unwrap().weights()
        );
    }

    #[test]
    fn sft_lowers_the_loss_and_weights_sync_to_the_engine() {
        let cfg = small_config();
        let mut trainer = Trainer::new(&cfg, config(0)).unwrap();
        let batch = sft_demo_batch(9);
        let first = trainer.sft_step(&batch).unwrap();
        let mut last = first;
        for _ in 0..30 {
            last = trainer.sft_step(&batch).unwrap();
        }
        assert!(
            last.loss < 0.7 * first.loss,
            "SFT loss {} -> {}",
            first.loss,
            last.loss
        );
        assert!(first.grad_norm > 0.0 && first.lr == 3e-3);
        // The trained weights load into the engine, which then agrees with the burn model.
        let mut engine = Engine::new(cfg.clone(), &Weights::random(&cfg, 0)).unwrap();
        engine.load_weights(&trainer.weights()).unwrap();
        let seq = &batch.sequences[0];
        let expected = engine.forward_full(&seq.tokens);
        let single = TrainBatch::new(vec![seq.clone()]);
        let db = single.to_device(trainer.device()).unwrap();
        let logits = trainer
            .model()
            .forward_with(db.tokens, db.positions, &db.attention);
        let logits = crate::model::to_f32_vec(logits.into_data());
        let diff = logits
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "engine vs trained burn model: {diff}");
    }

    #[test]
    fn grad_norm_clipping_bounds_the_update() {
        let cfg = small_config();
        let mut clipped = Trainer::new(
            &cfg,
            TrainerConfig {
                optim: AdamWConfig {
                    max_grad_norm: Some(1e-3),
                    ..config(1).optim
                },
                ..config(1)
            },
        )
        .unwrap();
        let stats = clipped.sft_step(&sft_demo_batch(1)).unwrap();
        // The reported norm is the pre-clip norm; it is far above the threshold.
        assert!(stats.grad_norm > 1e-2);
        // Adam normalises the first step, so clipping changes the moments, not the first step's
        // size; the stored first moment is (1 − β1)·clipped gradient, of norm 0.1 · 1e-3.
        let m = clipped.optimizer_state().exp_avg;
        let sq: f64 = m
            .iter()
            .flat_map(|(_, t)| t.data.iter())
            .map(|&x| (x as f64).powi(2))
            .sum();
        assert!(
            (sq.sqrt() - 1e-4).abs() < 1e-6,
            "first-moment norm {}",
            sq.sqrt()
        );
    }
}
