/*!
Running reward scaling, Gymnasium's `NormalizeReward` (`ppo.norm_reward`, see
[`PpoConfig::norm_reward`](super::PpoConfig::norm_reward)): every reward is divided by the running
standard deviation of the discounted return of its row and clipped to `[-clip, clip]`. The state is
part of a checkpoint, so a resumed run scales exactly as an uninterrupted one.
*/

/// Running reward scaling (`ppo.norm_reward`, see [`PpoConfig::norm_reward`](super::PpoConfig::norm_reward)): the discounted
/// return of every row and the running mean / variance / count of those returns.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardNorm {
    /// The discounted return of every row so far (reset to 0 when its environment copy is done).
    pub returns: Vec<f64>,
    /// Running mean of those returns.
    pub mean: f64,
    /// Running variance of those returns.
    pub var: f64,
    /// Running count (starts at 1e-4, as Gymnasium's `RunningMeanStd`).
    pub count: f64,
}

impl RewardNorm {
    /// A fresh state for `rows` reward rows (environment copies x agents).
    pub fn new(rows: usize) -> Self {
        // Gymnasium's RunningMeanStd starts at mean 0, var 1, count 1e-4.
        Self {
            returns: vec![0.0; rows],
            mean: 0.0,
            var: 1.0,
            count: 1e-4,
        }
    }

    /// Scale `rewards` (one per row) in place; `dones` is per environment copy, `g` rows each.
    pub fn apply(&mut self, rewards: &mut [f32], dones: &[bool], g: usize, gamma: f64, clip: f64) {
        for (ret, &x) in self.returns.iter_mut().zip(rewards.iter()) {
            *ret = *ret * gamma + x as f64;
        }
        // Parallel Welford update with this step's batch of returns.
        let n = self.returns.len() as f64;
        let bm = self.returns.iter().sum::<f64>() / n;
        let bv = self.returns.iter().map(|v| (v - bm).powi(2)).sum::<f64>() / n;
        let delta = bm - self.mean;
        let tot = self.count + n;
        self.mean += delta * n / tot;
        let m2 = self.var * self.count + bv * n + delta * delta * self.count * n / tot;
        self.var = m2 / tot;
        self.count = tot;
        let scale = (self.var + 1e-8).sqrt();
        for x in rewards.iter_mut() {
            *x = ((*x as f64 / scale).clamp(-clip, clip)) as f32;
        }
        for (i, ret) in self.returns.iter_mut().enumerate() {
            if dones[i / g] {
                *ret = 0.0;
            }
        }
    }
}
