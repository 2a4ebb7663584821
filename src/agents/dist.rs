/*!
A categorical distribution over discrete actions that respects an action mask.

Masked logits are replaced by [`MASKED_LOGIT`] (`-1e9`, finite on purpose): after the log-softmax
their log-probability is about `-1e9`, their probability `exp(-1e9 - ...)` underflows to exactly
`0.0`, and the entropy term `p * log p` is `0 * (-1e9) = 0` (with `-inf` it would be `0 * -inf =
NaN`). The replacement is a `where_cond`, so masked logits also receive no gradient. Sampling draws
by inverse CDF and can never return an action of probability zero: [`MaskedCategorical::sample`]
and [`sample_row`] on the host, [`draw_actions`] on the tensor's device (the trainer's draw: on
CUDA the `sample_policy` kernel, the same draws).

A row with every action masked becomes uniform over all actions; environments must leave at least
one action open (the trading environment always allows HOLD).

```
use candle_core::{Device, Tensor};
use marl_trade::agents::dist::MaskedCategorical;
use marl_trade::rng::SplitMix64;

let logits = Tensor::new(&[[0f32, 5., 0.]], &Device::Cpu)?;
let mask = Tensor::new(&[[1u8, 0, 1]], &Device::Cpu)?;
let d = MaskedCategorical::new(&logits, Some(&mask))?;
assert_eq!(d.probs()?.to_vec2::<f32>()?[0], [0.5, 0.0, 0.5]);
let mut rng = SplitMix64::new(0);
assert!(d.sample(&mut rng)?.iter().all(|&a| a != 1));
# Ok::<(), candle_core::Error>(())
```
*/

use candle_core::{D, DType, Result, Tensor};

use crate::rng::{SplitMix64, stream_uniform};

/// The logit given to masked actions.
pub const MASKED_LOGIT: f32 = -1e9;

/// Categorical distribution over the last axis of `[B, A]` logits, with an optional mask.
#[derive(Debug, Clone)]
pub struct MaskedCategorical {
    log_probs: Tensor,
}

impl MaskedCategorical {
    /// `logits`: `[B, A]` f32; `mask`: `[B, A]` u8, non-zero = allowed.
    pub fn new(logits: &Tensor, mask: Option<&Tensor>) -> Result<Self> {
        let logits = match mask {
            Some(m) => {
                if m.dims() != logits.dims() {
                    candle_core::bail!(
                        "mask shape {:?} != logits shape {:?}",
                        m.dims(),
                        logits.dims()
                    )
                }
                let neg = Tensor::full(MASKED_LOGIT, logits.shape(), logits.device())?
                    .to_dtype(logits.dtype())?;
                m.ne(0u8)?.where_cond(logits, &neg)?
            }
            None => logits.clone(),
        };
        Ok(Self {
            log_probs: candle_nn::ops::log_softmax(&logits, D::Minus1)?,
        })
    }

    /// `[B, A]` log-probabilities (about `-1e9` where masked).
    pub fn log_probs(&self) -> &Tensor {
        &self.log_probs
    }

    /// `[B, A]` probabilities (exactly 0 where masked).
    pub fn probs(&self) -> Result<Tensor> {
        self.log_probs.exp()
    }

    /// Log-probability of `actions` (`[B]` u32): `[B]`.
    pub fn log_prob(&self, actions: &Tensor) -> Result<Tensor> {
        let idx = actions.to_dtype(DType::U32)?.unsqueeze(1)?;
        self.log_probs.gather(&idx, 1)?.squeeze(1)
    }

    /// Entropy of each row, `[B]`; masked actions contribute exactly zero.
    pub fn entropy(&self) -> Result<Tensor> {
        (self.log_probs.exp()? * &self.log_probs)?
            .sum(D::Minus1)?
            .neg()
    }

    /// One action per row by inverse CDF with `rng` (one uniform per row).
    pub fn sample(&self, rng: &mut SplitMix64) -> Result<Vec<u32>> {
        let lp = self.log_probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(lp
            .iter()
            .map(|row| sample_row(row, rng.uniform()))
            .collect())
    }
}

/// Inverse-CDF draw from one row of log-probabilities with the uniform `u` in [0, 1). Actions of
/// probability zero are never returned.
pub fn sample_row(log_probs: &[f32], u: f64) -> u32 {
    let mut cum = 0f64;
    let mut last_ok = 0u32;
    let total: f64 = log_probs.iter().map(|&l| (l as f64).exp()).sum();
    let target = u * total;
    for (a, &l) in log_probs.iter().enumerate() {
        let p = (l as f64).exp();
        if p > 0.0 {
            cum += p;
            last_ok = a as u32;
            if target < cum {
                return a as u32;
            }
        }
    }
    last_ok
}

/// The trainer's draw: one action per row of `log_probs` `[R, A]`, row `r` by [`sample_row`] with
/// draw `draws + r` of the SplitMix64 stream `seed` ([`stream_uniform`]), i.e. exactly what the
/// rows drawn one after another from `train::ResumableRng` at position `draws` give. Returns the
/// actions `[R]` u32 and their log-probabilities `[R]` f32 on the device of `log_probs`: on the CPU
/// by a host loop; on CUDA (`--features gpu`) by the `sample_policy` kernel (kernels/policy.cu) on
/// candle's stream, with nothing copied to the host (the draws agree with the host's up to the last
/// ulp of the device's `exp`, kernels/common.cuh).
pub fn draw_actions(log_probs: &Tensor, seed: u64, draws: u64) -> Result<(Tensor, Tensor)> {
    match log_probs.device() {
        #[cfg(feature = "gpu")]
        candle_core::Device::Cuda(_) => cuda_draw::draw(log_probs, seed, draws),
        dev => {
            let lp = log_probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let mut actions = Vec::with_capacity(lp.len());
            let mut logp = Vec::with_capacity(lp.len());
            for (r, row) in lp.iter().enumerate() {
                let a = sample_row(row, stream_uniform(seed, draws, r as u64));
                actions.push(a);
                logp.push(row[a as usize]);
            }
            let n = actions.len();
            Ok((
                Tensor::from_vec(actions, n, dev)?,
                Tensor::from_vec(logp, n, dev)?,
            ))
        }
    }
}

#[cfg(feature = "gpu")]
mod cuda_draw {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use candle_core::cuda_backend::{CudaDevice, CudaStorage, DeviceId};
    use candle_core::op::BackpropOp;
    use candle_core::{DType, Error, Result, Storage, Tensor};
    use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

    use crate::env::abi::PolicySampleArgs;

    /// `sample_policy` loaded into `dev`'s context: compiled (once per process and architecture)
    /// and loaded on a device's first draw, then looked up.
    fn sample_policy(dev: &CudaDevice) -> Result<CudaFunction> {
        static LOADED: OnceLock<Mutex<HashMap<DeviceId, CudaFunction>>> = OnceLock::new();
        let mut loaded = LOADED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = loaded.get(&dev.id()) {
            return Ok(f.clone());
        }
        let (major, minor) = dev
            .cuda_stream()
            .context()
            .compute_capability()
            .map_err(|e| Error::Msg(format!("compute capability: {e}")))?;
        let ptx = crate::env::cuda::program_ptx(&format!("compute_{major}{minor}"), "policy.cu")
            .map_err(|e| Error::Msg(e.to_string()))?;
        let f = dev
            .get_or_load_custom_func("sample_policy", "marl_policy", &ptx)?
            .into_cuda_function();
        loaded.insert(dev.id(), f.clone());
        Ok(f)
    }

    /// `sample_policy` on candle's device and stream.
    pub fn draw(log_probs: &Tensor, seed: u64, draws: u64) -> Result<(Tensor, Tensor)> {
        let lp = log_probs.to_dtype(DType::F32)?.contiguous()?;
        let (rows, na) = lp.dims2()?;
        let (storage, layout) = lp.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            return Err(Error::Msg(
                "draw_actions: a CUDA tensor was expected".into(),
            ));
        };
        let dev = cs.device.clone();
        let stream = dev.cuda_stream();
        let func = sample_policy(&dev)?;
        let src = cs.as_cuda_slice::<f32>()?.slice(layout.start_offset()..);
        let mut actions = dev.alloc_zeros::<u32>(rows)?;
        let mut logp = dev.alloc_zeros::<f32>(rows)?;
        let args = PolicySampleArgs {
            log_probs: src.device_ptr(&stream).0,
            actions: actions.device_ptr_mut(&stream).0,
            logp: logp.device_ptr_mut(&stream).0,
            env_actions: 0,
            seed,
            draws,
            rows: rows as u32,
            na: na as u32,
        };
        let cfg = crate::env::cuda::rows_launch(rows);
        let mut b = stream.launch_builder(&func);
        b.arg(&args);
        // SAFETY: `args` holds device addresses on candle's context: the contiguous `[rows, na]`
        // log-probabilities (read) and the two `[rows]` outputs just allocated (written), all
        // used on candle's stream, which the launch is queued on; `env_actions` is 0 (not written).
        unsafe { b.launch(cfg) }.map_err(|e| Error::Msg(format!("sample_policy: {e}")))?;
        drop(storage);
        let wrap = |s: Storage| Tensor::from_storage(s, rows, BackpropOp::none(), false);
        Ok((
            wrap(Storage::Cuda(CudaStorage::wrap_cuda_slice(
                actions,
                dev.clone(),
            ))),
            wrap(Storage::Cuda(CudaStorage::wrap_cuda_slice(logp, dev))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn masked_actions_have_zero_probability_and_are_never_sampled() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SplitMix64::new(42);
        let (b, a) = (64, 7);
        let logits: Vec<f32> = (0..b * a).map(|_| (rng.normal() * 3.0) as f32).collect();
        let mask: Vec<u8> = (0..b * a)
            .map(|i| u8::from(i % a == 0 || rng.chance(0.5)))
            .collect();
        let lt = Tensor::from_vec(logits, (b, a), &dev)?;
        let mt = Tensor::from_vec(mask.clone(), (b, a), &dev)?;
        let d = MaskedCategorical::new(&lt, Some(&mt))?;
        let probs = d.probs()?.to_vec2::<f32>()?;
        for (i, row) in probs.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                if mask[i * a + j] == 0 {
                    assert_eq!(*p, 0.0, "masked prob at ({i}, {j})");
                }
            }
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        for _ in 0..200 {
            for (i, act) in d.sample(&mut rng)?.into_iter().enumerate() {
                assert_eq!(mask[i * a + act as usize], 1, "sampled a masked action");
            }
        }
        // Entropy is finite and equals the entropy of the renormalised allowed actions.
        let ent = d.entropy()?.to_vec1::<f32>()?;
        for (i, e) in ent.iter().enumerate() {
            let want: f32 = probs[i]
                .iter()
                .filter(|p| **p > 0.0)
                .map(|p| -p * p.ln())
                .sum();
            assert!(
                e.is_finite() && (e - want).abs() < 1e-4,
                "row {i}: {e} vs {want}"
            );
        }
        Ok(())
    }

    #[test]
    fn log_prob_entropy_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Var::new(&[[1f32, 2., 3.], [0., 0., 0.]], &dev)?;
        let mask = Tensor::new(&[[1u8, 1, 0], [1, 1, 1]], &dev)?;
        let d = MaskedCategorical::new(logits.as_tensor(), Some(&mask))?;
        let lp = d
            .log_prob(&Tensor::new(&[1u32, 2], &dev)?)?
            .to_vec1::<f32>()?;
        // Row 0: softmax over [1, 2] -> p(1) = e / (1 + e); row 1: uniform over 3.
        let want0 = (1f32.exp() / (1. + 1f32.exp())).ln();
        assert!((lp[0] - want0).abs() < 1e-6 && (lp[1] + 3f32.ln()).abs() < 1e-6);
        let ent = d.entropy()?.to_vec1::<f32>()?;
        assert!((ent[1] - 3f32.ln()).abs() < 1e-6);
        // No gradient flows to a masked logit.
        let loss =
            (d.log_prob(&Tensor::new(&[0u32, 0], &dev)?)?.sum_all()? + d.entropy()?.sum_all()?)?;
        let g = loss
            .backward()?
            .get(logits.as_tensor())
            .unwrap()
            .to_vec2::<f32>()?;
        assert_eq!(g[0][2], 0.0);
        assert!(g.iter().flatten().all(|v| v.is_finite()));
        // Without a mask it is the plain softmax.
        let plain = MaskedCategorical::new(logits.as_tensor(), None)?
            .probs()?
            .to_vec2::<f32>()?;
        assert!(plain[0][2] > 0.6);
        Ok(())
    }

    #[test]
    fn sample_row_edges() {
        let lp = [MASKED_LOGIT, 0.5f32.ln(), MASKED_LOGIT, 0.5f32.ln()];
        assert_eq!(sample_row(&lp, 0.0), 1);
        assert_eq!(sample_row(&lp, 0.49), 1);
        assert_eq!(sample_row(&lp, 0.51), 3);
        assert_eq!(sample_row(&lp, 0.999_999_999), 3);
    }
}
