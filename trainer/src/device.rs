//! Where training runs: burn's Flex CPU backend, always built, or a GPU backend compiled in with
//! the `cuda` or `wgpu` feature of this crate (and of the `arbor` binary). `--device` / the
//! config's `model.device` names one as `cpu`, `cuda[:N]` or `wgpu[:N]` (the `N`-th GPU; `cuda`
//! is GPU 0, `wgpu` the best adapter wgpu finds); asking for a backend the build lacks is a
//! one-line error, not a fallback. Only training moves: the rollout engine stays on the CPU
//! (rollouts scale out through an inference server, `rollout::server`). No other crate names a
//! backend.
//!
//! **Several GPUs.** A [`DeviceSet`] such as `cuda:0,cuda:1` trains data-parallel: the first
//! device holds the policy, the optimizer and the KL reference, every further one a replica of
//! the policy; each update's shards are split among the devices and their gradients summed by
//! burn's own all-reduce collective (`burn::tensor::distributed::all_reduce`), see
//! [`crate::trainer::Trainer::set_data_parallel`]. burn 0.22 implements collectives on CUDA
//! only (NCCL): a set of several `cpu` or `wgpu` devices is a one-line error.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::TrainerError;

/// A training device by name (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// burn's Flex backend on the CPU.
    #[default]
    Cpu,
    /// A CUDA GPU (feature `cuda`).
    Cuda(usize),
    /// A device through wgpu: Vulkan, Metal or DirectX (feature `wgpu`): the `N`-th discrete
    /// GPU (`wgpu:N`), or the best adapter wgpu finds (`wgpu`; burn's
    /// `CUBECL_WGPU_DEFAULT_DEVICE` overrides the choice), a software Vulkan device such as
    /// Mesa's lavapipe included.
    Wgpu(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                Some(
                    i.parse::<usize>()
                        .map_err(|_| format!("device `{s}`: `{i}` is not a GPU index"))?,
                ),
            ),
            None => (s, None),
        };
        match kind {
            "cpu" if index.is_none() => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(index.unwrap_or(0))),
            "wgpu" => Ok(DeviceChoice::Wgpu(index)),
            _ => Err(format!(
                "unknown device `{s}` (expected cpu, cuda[:N] or wgpu[:N])"
            )),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
            DeviceChoice::Wgpu(None) => write!(f, "wgpu"),
        }
    }
}

/// One or more training devices of one kind, written `cpu`, `cuda:1` or `cuda:0,cuda:1,…`
/// (module docs): the first is the primary, the others hold data-parallel replicas.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceSet(Vec<DeviceChoice>);

impl DeviceSet {
    /// The device holding the policy, the optimizer and the reference.
    pub fn primary(&self) -> DeviceChoice {
        self.0[0]
    }

    /// The devices of the data-parallel replicas (empty for one device).
    pub fn replicas(&self) -> &[DeviceChoice] {
        &self.0[1..]
    }

    /// All devices, the primary first.
    pub fn devices(&self) -> &[DeviceChoice] {
        &self.0
    }
}

impl Default for DeviceSet {
    fn default() -> Self {
        DeviceSet(vec![DeviceChoice::Cpu])
    }
}

impl From<DeviceChoice> for DeviceSet {
    fn from(d: DeviceChoice) -> Self {
        DeviceSet(vec![d])
    }
}

impl FromStr for DeviceSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let devices = s
            .split(',')
            .map(|d| d.trim().parse::<DeviceChoice>())
            .collect::<Result<Vec<_>, _>>()?;
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(format!("devices `{s}`: {d} is listed twice"));
            }
        }
        if devices.len() > 1 && !devices.iter().all(|d| matches!(d, DeviceChoice::Cuda(_))) {
            return Err(format!(
                "devices `{s}`: data-parallel training over several devices needs CUDA \
                 devices (burn's all-reduce collective runs on CUDA only)"
            ));
        }
        Ok(DeviceSet(devices))
    }
}

impl TryFrom<String> for DeviceSet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSet> for String {
    fn from(d: DeviceSet) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Whether this build has `choice`'s backend: an error naming the feature it lacks.
pub fn check_available(choice: DeviceChoice) -> Result<(), TrainerError> {
    let missing = |feature: &str| TrainerError::Config {
        reason: format!(
            "device {choice}: this build has no {feature} backend (build arbor with \
             `--features {feature}`)"
        ),
    };
    match choice {
        DeviceChoice::Cuda(_) if !cfg!(feature = "cuda") => Err(missing("cuda")),
        DeviceChoice::Wgpu(_) if !cfg!(feature = "wgpu") => Err(missing("wgpu")),
        _ => Ok(()),
    }
}

/// The autodiff device training runs on for `choice`, or an error naming the feature the build
/// lacks.
pub fn training_device(choice: DeviceChoice) -> Result<Device, TrainerError> {
    check_available(choice)?;
    #[cfg(not(all(feature = "cuda", feature = "wgpu")))]
    let missing = |_: &str| TrainerError::Config {
        reason: format!("device {choice} is not built in"),
    };
    let device = match choice {
        DeviceChoice::Cpu => Device::flex(),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => Device::cuda(n),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => return Err(missing("cuda")),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu(Some(n)) => Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(n)),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu(None) => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu(_) => return Err(missing("wgpu")),
    };
    Ok(device.autodiff())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_print_and_say_what_the_build_lacks() {
        for (text, choice) in [
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:1", DeviceChoice::Cuda(1)),
            ("wgpu:0", DeviceChoice::Wgpu(Some(0))),
            ("wgpu", DeviceChoice::Wgpu(None)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
            assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
        }
        for bad in ["gpu", "cuda:x", "cpu:1", ""] {
            assert!(bad.parse::<DeviceChoice>().is_err(), "{bad}");
        }
        assert!(training_device(DeviceChoice::Cpu).is_ok());
        #[cfg(not(feature = "cuda"))]
        {
            let e = training_device(DeviceChoice::Cuda(0))
                .unwrap_err()
                .to_string();
            assert!(e.contains("--features cuda") && !e.contains('\n'), "{e}");
        }
        #[cfg(not(feature = "wgpu"))]
        assert!(training_device(DeviceChoice::Wgpu(Some(0))).is_err());
    }

    #[test]
    fn device_sets_list_cuda_devices_for_data_parallel_training() {
        let set: DeviceSet = "cuda:0, cuda:2,cuda:1".parse().unwrap();
        assert_eq!(set.primary(), DeviceChoice::Cuda(0));
        assert_eq!(
            set.replicas(),
            [DeviceChoice::Cuda(2), DeviceChoice::Cuda(1)]
        );
        assert_eq!(set.to_string(), "cuda:0,cuda:2,cuda:1");
        assert_eq!(set.to_string().parse::<DeviceSet>().unwrap(), set);
        let one: DeviceSet = "wgpu:1".parse().unwrap();
        assert_eq!(
            (one.primary(), one.replicas().len()),
            (DeviceChoice::Wgpu(Some(1)), 0)
        );
        assert_eq!(DeviceSet::default().to_string(), "cpu");
        for bad in [
            "cpu,cpu",
            "cuda:0,cuda:0",
            "wgpu:0,wgpu:1",
            "cuda:0,cpu",
            "cuda:0,",
            "",
        ] {
            let e = bad.parse::<DeviceSet>().unwrap_err();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        assert!(
            "wgpu:0,wgpu:1"
                .parse::<DeviceSet>()
                .unwrap_err()
                .contains("CUDA")
        );
    }
}
