/*!
Where the policies run: `--device cpu | cuda | cuda:<i>` ([`DeviceSpec`]) and the candle
[`Device`] it names.

The CPU is always there. `cuda[:i]` needs a build with the `gpu` feature (candle's CUDA backend,
sharing its cudarc with the env's CUDA backend; docs/gpu.md) and an NVIDIA driver; otherwise
[`DeviceSpec::candle`] returns an error of kind `BackendUnavailable` that says which is missing.
The environment's backend is chosen separately (`--backend cpu | cuda`).

```
use marl_trade::agents::device::DeviceSpec;
let d: DeviceSpec = "cuda:1".parse()?;
assert_eq!(d, DeviceSpec::Cuda(1));
assert!("tpu".parse::<DeviceSpec>().is_err());
assert!(DeviceSpec::Cpu.candle()?.is_cpu());
# Ok::<(), marl_trade::Error>(())
```
*/

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// A device the policies can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// candle's CPU backend (the default).
    #[default]
    Cpu,
    /// The CUDA device with this ordinal (`cuda` = `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "device `{s}`: expected `cpu`, `cuda` or `cuda:<ordinal>` (e.g. `cuda:0`)"
            ))
        };
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            t => {
                let i = t.strip_prefix("cuda:").ok_or_else(bad)?;
                i.parse::<usize>().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The candle device: `Device::Cpu`, or the CUDA device `i`, opened once per process (its
    /// context and stream) and shared by every later call, so that evaluating many checkpoints
    /// (walk-forward, ablations) does not create a context each and their tensors can meet.
    /// Errors (`BackendUnavailable`): a build without the `gpu` feature, no driver, no device `i`.
    pub fn candle(&self) -> Result<Device> {
        match *self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => cuda_device(i),
        }
    }
}

#[cfg(feature = "gpu")]
fn cuda_device(i: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    // A panic while the lock was held cannot leave a half-inserted device: ignore the poison.
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(d) = open.get(&i) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(i).map_err(|e| {
        Error::backend(
            "cuda",
            format!(
                "candle could not open CUDA device {i}: {e} (an NVIDIA GPU and driver are needed)"
            ),
        )
    })?;
    open.insert(i, d.clone());
    Ok(d)
}

#[cfg(not(feature = "gpu"))]
fn cuda_device(i: usize) -> Result<Device> {
    Err(Error::backend(
        "cuda",
        format!(
            "device cuda:{i}: this build has no candle CUDA support; build with `--features gpu` \
             (docs/gpu.md, `scripts/gpu-build.sh`) or use `--device cpu`"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d, "{s}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for s in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU:0"] {
            let e = s.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("expected `cpu`"), "{s}: {e}");
        }
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn cuda_without_the_gpu_feature_is_a_clear_error() {
        let e = DeviceSpec::Cuda(0).candle().unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::BackendUnavailable);
        assert!(e.to_string().contains("--features gpu"), "{e}");
    }
}
