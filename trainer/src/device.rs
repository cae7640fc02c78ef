//! Where training runs: burn's Flex CPU backend, always built, or a GPU backend compiled in with
//! the `cuda` or `wgpu` feature of this crate (and of the `arbor` binary). `--device` / the
//! config's `model.device` names one as `cpu`, `cuda[:N]` or `wgpu[:N]` (the `N`-th GPU, default
//! 0); asking for a backend the build lacks is a one-line error, not a fallback. Only training
//! moves: the rollout engine stays on the CPU (rollouts scale out through an inference server,
//! `rollout::server`). No other crate names a backend.

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
    /// A GPU through wgpu: Vulkan, Metal or DirectX (feature `wgpu`).
    Wgpu(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>()
                    .map_err(|_| format!("device `{s}`: `{i}` is not a GPU index"))?,
            ),
            None => (s, 0),
        };
        match kind {
            "cpu" if !s.contains(':') => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(index)),
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
            DeviceChoice::Wgpu(n) => write!(f, "wgpu:{n}"),
        }
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
        DeviceChoice::Wgpu(n) => Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(n)),
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
            ("wgpu:0", DeviceChoice::Wgpu(0)),
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
        assert!(training_device(DeviceChoice::Wgpu(0)).is_err());
    }
}
