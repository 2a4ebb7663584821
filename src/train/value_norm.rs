/*!
Value normalisation as MAPPO uses it (Yu et al. 2022, the `on-policy` reference implementation's
`ValueNorm`): the critic predicts returns in normalised units, and the trainer keeps a running,
debiased mean and variance of the returns to map between the two.

- `update(returns)`: exponential moving averages with weight `beta` of the batch mean `m` and the
  batch mean of squares `q`, and of the debiasing term `w` (`x <- beta * x + (1 - beta) * batch`,
  `w <- beta * w + (1 - beta)`); the running mean is `m / w`, the running variance
  `max(q / w - (m / w)^2, 1e-2)` (the reference's clamp).
- `normalize(x) = (x - mean) / sqrt(var)`: the value-loss targets.
- `denormalize(v) = v * sqrt(var) + mean`: the critic's outputs, before GAE.

The reference uses `beta = 0.99999` and `epsilon = 1e-5` on `w`; both are parameters here. The
state is three `f64` and serialises with the trainer's state, so a resume continues it exactly.
*/

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Running, debiased return statistics (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueNorm {
    /// EMA weight of the old statistics per update.
    pub beta: f64,
    /// Floor of the debiasing weight (avoids dividing by ~0 before the first update).
    pub epsilon: f64,
    running_mean: f64,
    running_mean_sq: f64,
    debiasing: f64,
}

impl ValueNorm {
    /// Fresh statistics with `beta` (the reference: 0.99999) and `epsilon` (1e-5).
    pub fn new(beta: f64, epsilon: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&beta) || epsilon.is_nan() || epsilon <= 0.0 {
            return Err(Error::invalid(format!(
                "value norm needs 0 <= beta < 1 and epsilon > 0, got beta {beta}, epsilon {epsilon}"
            )));
        }
        Ok(Self {
            beta,
            epsilon,
            running_mean: 0.0,
            running_mean_sq: 0.0,
            debiasing: 0.0,
        })
    }

    /// The exact state as bit patterns (`beta`, `epsilon`, running mean, running mean of squares,
    /// debiasing weight), for a checkpoint that must resume bit-identically.
    pub fn to_bits(&self) -> [u64; 5] {
        [
            self.beta.to_bits(),
            self.epsilon.to_bits(),
            self.running_mean.to_bits(),
            self.running_mean_sq.to_bits(),
            self.debiasing.to_bits(),
        ]
    }

    /// The statistics [`ValueNorm::to_bits`] saved; `beta` and `epsilon` are checked as in
    /// [`ValueNorm::new`], the statistics must be finite.
    pub fn from_bits(bits: [u64; 5]) -> Result<Self> {
        let [beta, epsilon, m, q, d] = bits.map(f64::from_bits);
        let mut vn = Self::new(beta, epsilon)?;
        if !(m.is_finite() && q.is_finite() && d.is_finite()) {
            return Err(Error::invalid(format!(
                "value norm statistics are not finite: mean {m}, mean square {q}, weight {d}"
            )));
        }
        (vn.running_mean, vn.running_mean_sq, vn.debiasing) = (m, q, d);
        Ok(vn)
    }

    /// The debiased running mean and variance.
    pub fn mean_var(&self) -> (f64, f64) {
        let w = self.debiasing.max(self.epsilon);
        let mean = self.running_mean / w;
        let var = (self.running_mean_sq / w - mean * mean).max(1e-2);
        (mean, var)
    }

    /// Fold a batch of returns into the statistics. Non-finite values are an error (nothing is
    /// changed).
    pub fn update(&mut self, returns: &[f32]) -> Result<()> {
        if returns.is_empty() {
            return Ok(());
        }
        if let Some(i) = returns.iter().position(|r| !r.is_finite()) {
            return Err(Error::invalid(format!(
                "value norm: return {i} of the batch is {}",
                returns[i]
            )));
        }
        let n = returns.len() as f64;
        let m = returns.iter().map(|&r| f64::from(r)).sum::<f64>() / n;
        let q = returns.iter().map(|&r| f64::from(r).powi(2)).sum::<f64>() / n;
        let b = self.beta;
        self.running_mean = b * self.running_mean + (1.0 - b) * m;
        self.running_mean_sq = b * self.running_mean_sq + (1.0 - b) * q;
        self.debiasing = b * self.debiasing + (1.0 - b);
        Ok(())
    }

    /// `(x - mean) / std`, in place.
    pub fn normalize(&self, x: &mut [f32]) {
        let (mean, var) = self.mean_var();
        let inv = 1.0 / var.sqrt();
        for v in x {
            *v = ((f64::from(*v) - mean) * inv) as f32;
        }
    }

    /// `v * std + mean`, in place.
    pub fn denormalize(&self, v: &mut [f32]) {
        let (mean, var) = self.mean_var();
        let sd = var.sqrt();
        for x in v {
            *x = (f64::from(*x) * sd + mean) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_recurrence() -> Result<()> {
        // beta = 0.5 so that two updates move the statistics visibly; hand-computed.
        let mut vn = ValueNorm::new(0.5, 1e-5)?;
        vn.update(&[1.0, 3.0])?; // m = 2, q = 5
        // mean = (0.5 * 2) / 0.5 = 2, var = (0.5 * 5) / 0.5 - 4 = 1
        let (m, v) = vn.mean_var();
        assert!(
            (m - 2.0).abs() < 1e-12 && (v - 1.0).abs() < 1e-12,
            "{m} {v}"
        );
        vn.update(&[10.0])?; // m = 10, q = 100
        // running: mean 0.25*2... = 0.5*1 + 0.5*10 = 5.5, sq 0.5*2.5 + 50 = 51.25, w 0.75
        let (m, v) = vn.mean_var();
        assert!((m - 5.5 / 0.75).abs() < 1e-12, "{m}");
        assert!(
            (v - (51.25 / 0.75 - (5.5f64 / 0.75).powi(2))).abs() < 1e-9,
            "{v}"
        );
        let mut x = vec![m as f32, (m + v.sqrt()) as f32];
        vn.normalize(&mut x);
        assert!(x[0].abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5, "{x:?}");
        vn.denormalize(&mut x);
        assert!((f64::from(x[0]) - m).abs() < 1e-4, "{x:?}");
        Ok(())
    }

    #[test]
    fn variance_floor_and_bad_input() -> Result<()> {
        let mut vn = ValueNorm::new(0.99999, 1e-5)?;
        vn.update(&[0.3; 8])?;
        let (m, v) = vn.mean_var();
        assert!((m - 0.3).abs() < 1e-6 && v == 1e-2, "{m} {v}");
        let before = vn.clone();
        assert!(vn.update(&[1.0, f32::NAN]).is_err());
        assert_eq!(vn, before, "a rejected batch changes nothing");
        assert!(ValueNorm::new(1.0, 1e-5).is_err() && ValueNorm::new(0.9, 0.0).is_err());
        Ok(())
    }
}
