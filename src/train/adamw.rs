/*!
AdamW with inspectable state, so that checkpoints can save and restore its moments.

candle-nn's `AdamW` keeps its moment estimates private, which makes a bit-identical resume
impossible; this is the same algorithm, written as PyTorch's `torch.optim.AdamW`
(single-tensor path, `amsgrad = False`), with the state exposed:

```text
t      <- t + 1
p      <- p * (1 - lr * weight_decay)                  (decoupled weight decay)
m      <- m + (1 - beta1) * (g - m)                    (torch: exp_avg.lerp_(g, 1 - beta1))
v      <- beta2 * v + (1 - beta2) * g^2
denom  <- sqrt(v) / sqrt(1 - beta2^t) + eps
p      <- p - lr / (1 - beta1^t) * m / denom
```

With `weight_decay = 0` it is `torch.optim.Adam`, which is what CleanRL's `ppo.py` uses
(`eps = 1e-5`). Parameters are kept in the order given (the trainer sorts them by name), and a
parameter without a gradient is skipped (its moments are left unchanged), as in PyTorch.
*/

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Hyperparameters of [`AdamW`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment estimate.
    pub beta1: f64,
    /// Decay of the second-moment estimate.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (0: Adam).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's AdamW defaults.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter and its moment estimates.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Var,
    m: Var,
    v: Var,
}

/// AdamW over a list of named variables.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    step: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// Zero moments for every float variable of `params`, in the given order.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .filter(|(_, p)| p.dtype().is_float())
            .map(|(name, param)| {
                let m = Var::zeros(param.shape(), param.dtype(), param.device())?;
                let v = Var::zeros(param.shape(), param.dtype(), param.device())?;
                Ok(Slot { name, param, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            step: 0,
            cfg,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    /// Set the learning rate of the next steps (annealing).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update from `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = c.lr / bias1;
        for s in &self.slots {
            let Some(g) = grads.get(s.param.as_tensor()) else {
                continue;
            };
            let mut p = s.param.as_tensor().clone();
            if c.weight_decay != 0.0 {
                p = (p * (1.0 - c.lr * c.weight_decay))?;
            }
            let m = (s.m.as_tensor() + ((g - s.m.as_tensor())? * (1.0 - c.beta1))?)?;
            let v = ((s.v.as_tensor() * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let p = (p - ((&m / &denom)? * step_size)?)?;
            s.m.set(&m)?;
            s.v.set(&v)?;
            s.param.set(&p)?;
        }
        Ok(())
    }

    /// The moments as named tensors `m.<name>`, `v.<name>` (for a checkpoint).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("m.{}", s.name), s.m.as_tensor().clone()));
            out.push((format!("v.{}", s.name), s.v.as_tensor().clone()));
        }
        out
    }

    /// Names and shapes of the moment tensors `state_tensors` returns.
    pub fn state_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect()
    }

    /// Restore the step count and the moments; `get(name)` returns the stored tensor of `m.<p>` /
    /// `v.<p>` (shapes must already have been checked).
    pub fn restore(
        &mut self,
        step: u64,
        mut get: impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        for s in &self.slots {
            s.m.set(&get(&format!("m.{}", s.name))?)?;
            s.v.set(&get(&format!("v.{}", s.name))?)?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    /// Two steps on one scalar, computed by hand (python, f64):
    /// p0 = 1, lr = 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, g = 0.5 then -1.
    /// step 1: p = 0.999; m = 0.05; v = 0.00025; denom = sqrt(0.00025)/sqrt(0.001) + 1e-8 = 0.5 + 1e-8
    ///         p = 0.999 - (0.1 / 0.1) * 0.05 / denom = 0.899000002
    /// step 2: p = 0.899000002 * 0.999; m = 0.05 + 0.1 (-1 - 0.05) = -0.055;
    ///         v = 0.00025 * 0.999 + 0.001 = 0.00124975; denom = sqrt(v) / sqrt(1 - 0.999^2) + 1e-8
    ///         p = 0.934711354
    #[test]
    fn hand_computed_steps() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::new(&[1f32], &dev)?;
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg)?;
        for (g, want) in [(0.5f64, 0.899000002f64), (-1.0, 0.934711354)] {
            let loss = (p.as_tensor() * g)?.sum_all()?; // d loss / dp = g
            opt.step(&loss.backward()?)?;
            let got = p.to_vec1::<f32>()?[0] as f64;
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(opt.step_count(), 2);
        let st = opt.state_tensors();
        assert!((st[0].1.to_vec1::<f32>()?[0] + 0.055).abs() < 1e-7);
        Ok(())
    }

    /// Same trajectory as candle-nn's AdamW (same formula, different rounding) on a small problem.
    #[test]
    fn agrees_with_candle_adamw() -> Result<()> {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = Var::from_vec(init.clone(), (3, 4), &dev)?;
        let b = Var::from_vec(init, (3, 4), &dev)?;
        let cfg = AdamWConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut ours = AdamW::new(vec![("a".into(), a.clone())], cfg)?;
        let params = candle_nn::ParamsAdamW {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        };
        let mut theirs = candle_nn::AdamW::new(vec![b.clone()], params)?;
        let target = Tensor::arange(0f32, 12., &dev)?
            .reshape((3, 4))?
            .affine(0.1, 0.)?;
        for _ in 0..50 {
            ours.step(&(a.as_tensor() - &target)?.sqr()?.sum_all()?.backward()?)?;
            theirs.step(&(b.as_tensor() - &target)?.sqr()?.sum_all()?.backward()?)?;
        }
        let diff = (a.as_tensor() - b.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
