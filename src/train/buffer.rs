/*!
The rollout buffer and generalised advantage estimation.

Layout: `T` steps x `N` environments x `G` agents per environment. Per-row arrays (actions,
log-probabilities, values, rewards, advantages, returns) are `[T, N, G]` flattened, so the rows of
unit `u = t * N + n` are `u * G .. (u + 1) * G`.

Where each array lives: what the policy produces (actions, their log-probabilities, values) stays
a tensor on the policy's device, one per step ([`RolloutBuffer::push_step`]), concatenated once
per rollout ([`RolloutBuffer::device_rows`]); the minibatches of the update gather from those with
`index_select` on the device. The values are read to the host once per rollout for GAE
([`RolloutBuffer::finish`]); what the environment produces (rewards, dones, masks) and the GAE
results are host arrays. On the CPU all of it is the same memory it always was; on CUDA a step
copies only the actions back (the environment steps on the host). `dones` is `[T, N]`: `dones[t]` is CleanRL's
`dones[step]`, the flag that came with observation `t` (its episode has just been reset, so the
value of step `t - 1` must not bootstrap from it). The optional masks are `[T, N, G, A]`.
*/

use candle_core::{Result, Tensor};

/// One rollout, filled step by step by the trainer.
#[derive(Debug, Clone)]
pub struct RolloutBuffer<O> {
    /// Steps per environment per rollout.
    pub num_steps: usize,
    /// Parallel environments.
    pub num_envs: usize,
    /// Agents (rows) per environment.
    pub agents: usize,
    /// Actions per agent.
    pub num_actions: usize,
    /// The observation of each step (`N` units each).
    pub obs: Vec<O>,
    /// Per step, the action of every row `[N * G]` u32, on the policy's device.
    pub step_actions: Vec<Tensor>,
    /// Per step, the log-probability of the action under the rollout policy `[N * G]` f32.
    pub step_logprobs: Vec<Tensor>,
    /// Per step, the critic's value of every row `[N * G]` f32.
    pub step_values: Vec<Tensor>,
    /// The critic's values of every row on the host, `[steps * envs * agents]` (after
    /// [`Self::finish`]).
    pub values: Vec<f32>,
    /// The steps' actions, log-probabilities and values concatenated `[T * N * G]` (after
    /// [`Self::finish`]).
    rows: Option<(Tensor, Tensor, Tensor)>,
    /// Reward of every row (normalised when `norm_reward`).
    pub rewards: Vec<f32>,
    /// Done flag (0/1) of every environment at every step, `[steps * envs]`.
    pub dones: Vec<f32>,
    /// `None` if no step had a mask.
    pub masks: Option<Vec<u8>>,
    /// GAE advantages (after `compute_gae`).
    pub advantages: Vec<f32>,
    /// Returns `advantages + values` (after `compute_gae`).
    pub returns: Vec<f32>,
}

impl<O> RolloutBuffer<O> {
    /// An empty buffer for one rollout of these sizes.
    pub fn new(num_steps: usize, num_envs: usize, agents: usize, num_actions: usize) -> Self {
        let rows = num_steps * num_envs * agents;
        Self {
            num_steps,
            num_envs,
            agents,
            num_actions,
            obs: Vec::with_capacity(num_steps),
            step_actions: Vec::with_capacity(num_steps),
            step_logprobs: Vec::with_capacity(num_steps),
            step_values: Vec::with_capacity(num_steps),
            values: Vec::new(),
            rows: None,
            rewards: Vec::with_capacity(rows),
            dones: Vec::with_capacity(num_steps * num_envs),
            masks: None,
            advantages: Vec::new(),
            returns: Vec::new(),
        }
    }

    /// Rows per step.
    pub fn rows_per_step(&self) -> usize {
        self.num_envs * self.agents
    }

    /// Record the mask of the step being filled (`rows_per_step * num_actions` values, or `None`
    /// for all-legal). Steps before the first mask are back-filled with ones.
    pub fn push_mask(&mut self, mask: Option<Vec<u8>>) {
        let per = self.rows_per_step() * self.num_actions;
        let filled = self.obs.len().saturating_sub(1) * per; // masks of the previous steps
        match (mask, &mut self.masks) {
            (Some(m), Some(all)) => all.extend(m),
            (Some(m), None) => {
                let mut all = vec![1u8; filled];
                all.extend(m);
                self.masks = Some(all);
            }
            (None, Some(all)) => all.extend(std::iter::repeat_n(1u8, per)),
            (None, None) => {}
        }
    }

    /// Record the policy's outputs of the step being filled: actions `[N * G]` u32, their
    /// log-probabilities and the values `[N * G]` f32 (tensors on the policy's device, kept there).
    pub fn push_step(&mut self, actions: Tensor, logprobs: Tensor, values: Tensor) {
        self.step_actions.push(actions);
        self.step_logprobs.push(logprobs);
        self.step_values.push(values);
    }

    /// After the last step: concatenate the steps' tensors (once, releasing the per-step ones) and
    /// read the values to the host (one copy per rollout), for GAE.
    pub fn finish(&mut self) -> Result<()> {
        let values = Tensor::cat(&std::mem::take(&mut self.step_values), 0)?;
        self.values = values.to_vec1::<f32>()?;
        self.rows = Some((
            Tensor::cat(&std::mem::take(&mut self.step_actions), 0)?,
            Tensor::cat(&std::mem::take(&mut self.step_logprobs), 0)?,
            values,
        ));
        Ok(())
    }

    /// The rollout's actions `[T * N * G]` u32, log-probabilities and values `[T * N * G]` f32, on
    /// the policy's device, as [`Self::finish`] concatenated them.
    pub fn device_rows(&self) -> Result<(Tensor, Tensor, Tensor)> {
        self.rows.clone().ok_or_else(|| {
            candle_core::Error::Msg("rollout buffer: device_rows before finish".into())
        })
    }

    /// Fill `advantages` and `returns` (see [`gae`]).
    pub fn compute_gae(&mut self, next_value: &[f32], next_done: &[f32], gamma: f32, lambda: f32) {
        let (adv, ret) = gae(
            &self.rewards,
            &self.values,
            &self.dones,
            next_value,
            next_done,
            (self.num_steps, self.num_envs, self.agents),
            gamma,
            lambda,
        );
        self.advantages = adv;
        self.returns = ret;
    }
}

/// GAE(lambda) exactly as CleanRL's `ppo.py` computes it (in f32), for rows `[T, N, G]` with done
/// flags `[T, N]` shared by the `G` agents of an environment:
///
/// ```text
/// for t = T-1 .. 0:
///     if t == T-1: nonterminal = 1 - next_done;  next_values = next_value
///     else:        nonterminal = 1 - dones[t+1]; next_values = values[t+1]
///     delta  = rewards[t] + gamma * next_values * nonterminal - values[t]
///     adv[t] = lastgaelam = delta + gamma * lambda * nonterminal * lastgaelam
/// returns = adv + values
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    dones: &[f32],
    next_value: &[f32],
    next_done: &[f32],
    (t_n, n, g): (usize, usize, usize),
    gamma: f32,
    lambda: f32,
) -> (Vec<f32>, Vec<f32>) {
    let rows = n * g;
    assert_eq!(rewards.len(), t_n * rows);
    assert_eq!(values.len(), t_n * rows);
    assert_eq!(dones.len(), t_n * n);
    assert_eq!(next_value.len(), rows);
    assert_eq!(next_done.len(), n);
    let mut adv = vec![0f32; t_n * rows];
    let mut last = vec![0f32; rows];
    for t in (0..t_n).rev() {
        for r in 0..rows {
            let e = r / g;
            let (nonterminal, next_values) = if t == t_n - 1 {
                (1.0 - next_done[e], next_value[r])
            } else {
                (1.0 - dones[(t + 1) * n + e], values[(t + 1) * rows + r])
            };
            let i = t * rows + r;
            let delta = rewards[i] + gamma * next_values * nonterminal - values[i];
            last[r] = delta + gamma * lambda * nonterminal * last[r];
            adv[i] = last[r];
        }
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// `1 - Var[returns - values] / Var[returns]` (population variances), `None` when `Var[returns] = 0`.
pub fn explained_variance(values: &[f32], returns: &[f32]) -> Option<f64> {
    let n = returns.len() as f64;
    let var = |it: &mut dyn Iterator<Item = f64>| -> f64 {
        let v: Vec<f64> = it.collect();
        let m = v.iter().sum::<f64>() / n;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n
    };
    let var_y = var(&mut returns.iter().map(|&r| r as f64));
    if var_y == 0.0 || n == 0.0 {
        return None;
    }
    let var_res = var(&mut returns
        .iter()
        .zip(values)
        .map(|(&r, &v)| r as f64 - v as f64));
    Some(1.0 - var_res / var_y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T = 3, one env: rewards 1, values (0.5, 0.4, 0.3), the observation of step 2 starts a new
    /// episode (dones[2] = 1), bootstrap value 0.2 with next_done = 0. By hand:
    /// t=2: delta = 1 + 0.99 * 0.2 - 0.3 = 0.898;                 adv = 0.898
    /// t=1: nonterminal = 0: delta = 1 - 0.4 = 0.6;               adv = 0.6
    /// t=0: delta = 1 + 0.99 * 0.4 - 0.5 = 0.896;                 adv = 0.896 + 0.99 * 0.95 * 0.6 = 1.4603
    #[test]
    fn gae_by_hand() {
        let (adv, ret) = gae(
            &[1.0; 3],
            &[0.5, 0.4, 0.3],
            &[0.0, 0.0, 1.0],
            &[0.2],
            &[0.0],
            (3, 1, 1),
            0.99,
            0.95,
        );
        let want = [1.4603f32, 0.6, 0.898];
        for (a, w) in adv.iter().zip(want) {
            assert!((a - w).abs() < 1e-6, "{adv:?}");
        }
        assert!((ret[0] - 1.9603).abs() < 1e-6);
        // next_done = 1 cuts the bootstrap.
        let (adv, _) = gae(
            &[1.0; 3],
            &[0.5, 0.4, 0.3],
            &[0.0; 3],
            &[0.2],
            &[1.0],
            (3, 1, 1),
            0.99,
            0.95,
        );
        assert!((adv[2] - 0.7).abs() < 1e-6);
    }

    /// Agents of one environment share its done flag but have their own values.
    #[test]
    fn gae_multi_agent_rows() {
        // T = 2, N = 2, G = 2: env 1 resets at step 1.
        let rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        let values = [0.0; 8];
        let dones = [0.0, 0.0, 0.0, 1.0];
        let (adv, _) = gae(
            &rewards,
            &values,
            &dones,
            &[0.0; 4],
            &[0.0; 2],
            (2, 2, 2),
            0.5,
            1.0,
        );
        // env 0, agent 0: adv0 = 1 + 0.5 * 1 = 1.5; env 1, agent 1: cut, adv0 = 1.
        assert_eq!(adv[0], 1.5);
        assert_eq!(adv[3], 1.0);
        assert_eq!(adv[1], 0.0);
    }

    #[test]
    fn explained_variance_edges() {
        assert_eq!(explained_variance(&[1.0, 2.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(explained_variance(&[0.0, 0.0], &[3.0, 3.0]), None);
        assert_eq!(explained_variance(&[0.0, 0.0], &[1.0, -1.0]), Some(0.0));
    }

    #[test]
    fn policy_outputs_stay_tensors_until_the_rollout_ends() -> Result<()> {
        use candle_core::Device;
        let dev = Device::Cpu;
        let mut b: RolloutBuffer<()> = RolloutBuffer::new(2, 1, 3, 7);
        for t in 0..2u32 {
            b.obs.push(());
            let a = Tensor::new(&[t, t + 1, t + 2], &dev)?;
            let lp = Tensor::new(&[-1f32 - t as f32, -2., -3.], &dev)?;
            let v = Tensor::new(&[0.5f32 * t as f32, 1., 2.], &dev)?;
            b.push_step(a, lp, v);
        }
        assert!(
            b.values.is_empty(),
            "nothing read to the host before finish"
        );
        b.finish()?;
        assert_eq!(b.values, vec![0., 1., 2., 0.5, 1., 2.]);
        let (a, lp, v) = b.device_rows()?;
        assert_eq!(a.to_vec1::<u32>()?, vec![0, 1, 2, 1, 2, 3]);
        assert_eq!(lp.to_vec1::<f32>()?, vec![-1., -2., -3., -2., -2., -3.]);
        assert_eq!(v.to_vec1::<f32>()?, b.values);
        Ok(())
    }

    #[test]
    fn masks_back_fill() {
        let mut b: RolloutBuffer<()> = RolloutBuffer::new(3, 1, 1, 2);
        b.obs.push(());
        b.push_mask(None);
        b.obs.push(());
        b.push_mask(Some(vec![1, 0]));
        b.obs.push(());
        b.push_mask(None);
        assert_eq!(b.masks.unwrap(), vec![1, 1, 1, 0, 1, 1]);
    }
}
