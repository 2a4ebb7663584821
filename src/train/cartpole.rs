/*!
CartPole-v1 with Gymnasium's exact dynamics, vectorised with same-step auto-reset.

Constants and equations are those of `gymnasium/envs/classic_control/cartpole.py` (Euler
integration, `tau = 0.02`): gravity 9.8, cart mass 1.0, pole mass 0.1, half pole length 0.5, force
10. An episode terminates when `|x| > 2.4` or `|theta| > 12 degrees` and is truncated after 500
steps (`TimeLimit`); every step, the terminating one included, earns reward 1. A reset draws the
four state variables uniformly from `[-0.05, 0.05)`. The state is kept in f64 (Python floats), the
observation is its f32 cast, as in Gymnasium.

This is the trainer's test environment: PPO must solve it before it is pointed at the market.

```
use candle_core::Device;
use marl_trade::train::{cartpole::CartPoleVec, TrainEnv};

let mut env = CartPoleVec::new(2, &Device::Cpu);
let obs = env.reset(0)?;
assert_eq!(obs.dims(), &[2, 4]);
let out = env.step(&[0, 1])?;
assert_eq!(out.rewards, vec![1.0, 1.0]);
# Ok::<(), marl_trade::Error>(())
```
*/

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::train_env::{EpisodeInfo, ResumableRng, RngState, StepOut, TrainEnv};
use crate::Result;
use crate::error::Error;
use crate::rng::hash2;

/// Gymnasium's constants of CartPole-v1: gravity (m/s^2).
pub const GRAVITY: f64 = 9.8;
/// Mass of the cart (kg).
pub const MASSCART: f64 = 1.0;
/// Mass of the pole (kg).
pub const MASSPOLE: f64 = 0.1;
/// Cart + pole.
pub const TOTAL_MASS: f64 = MASSPOLE + MASSCART;
/// Half the pole's length.
pub const LENGTH: f64 = 0.5;
/// Pole mass x half length.
pub const POLEMASS_LENGTH: f64 = MASSPOLE * LENGTH;
/// Force of a push (N).
pub const FORCE_MAG: f64 = 10.0;
/// Seconds between state updates.
pub const TAU: f64 = 0.02;
/// 12 degrees, as Gymnasium writes it.
pub const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
/// The episode ends when the cart leaves `[-X_THRESHOLD, X_THRESHOLD]`.
pub const X_THRESHOLD: f64 = 2.4;
/// CartPole-v1's `max_episode_steps`.
pub const MAX_STEPS: usize = 500;

/// One cart-pole: `[x, x_dot, theta, theta_dot]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CartPole {
    /// `[x, x_dot, theta, theta_dot]`.
    pub state: [f64; 4],
}

impl CartPole {
    /// One Euler step with action 0 (push left) or 1 (push right); returns `terminated`.
    pub fn step(&mut self, action: u32) -> bool {
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE_MAG } else { -FORCE_MAG };
        let costheta = theta.cos();
        let sintheta = theta.sin();
        let temp = (force + POLEMASS_LENGTH * theta_dot.powi(2) * sintheta) / TOTAL_MASS;
        let thetaacc = (GRAVITY * sintheta - costheta * temp)
            / (LENGTH * (4.0 / 3.0 - MASSPOLE * costheta.powi(2) / TOTAL_MASS));
        let xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS;
        let x = x + TAU * x_dot;
        let x_dot = x_dot + TAU * xacc;
        let theta = theta + TAU * theta_dot;
        let theta_dot = theta_dot + TAU * thetaacc;
        self.state = [x, x_dot, theta, theta_dot];
        // Gymnasium: x < -x_threshold or x > x_threshold or theta < -theta_threshold or ...
        !(-X_THRESHOLD..=X_THRESHOLD).contains(&x)
            || !(-THETA_THRESHOLD_RADIANS..=THETA_THRESHOLD_RADIANS).contains(&theta)
    }

    /// Gymnasium's reset: every variable uniform in [-0.05, 0.05).
    pub fn reset(rng: &mut ResumableRng) -> Self {
        let mut state = [0.0; 4];
        for v in &mut state {
            *v = -0.05 + 0.1 * rng.uniform();
        }
        Self { state }
    }
}

/// `n` CartPoles in lock-step with auto-reset. Observations are `[n, 4]` f32 on `device`.
#[derive(Debug, Clone)]
pub struct CartPoleVec {
    poles: Vec<CartPole>,
    rngs: Vec<ResumableRng>,
    steps: Vec<usize>,
    returns: Vec<f64>,
    device: Device,
}

/// Serialised state: floats as bit patterns, so the round trip is exact.
#[derive(Serialize, Deserialize)]
struct SavedState {
    poles: Vec<[u64; 4]>,
    rngs: Vec<RngState>,
    steps: Vec<usize>,
    returns: Vec<u64>,
}

impl CartPoleVec {
    /// `n` cart-poles, observations on `device`.
    pub fn new(n: usize, device: &Device) -> Self {
        Self {
            poles: vec![CartPole { state: [0.0; 4] }; n],
            rngs: (0..n).map(|i| ResumableRng::new(i as u64)).collect(),
            steps: vec![0; n],
            returns: vec![0.0; n],
            device: device.clone(),
        }
    }

    /// The cart-poles.
    pub fn poles(&self) -> &[CartPole] {
        &self.poles
    }
}

impl TrainEnv for CartPoleVec {
    type Obs = Tensor;

    fn num_envs(&self) -> usize {
        self.poles.len()
    }

    fn obs_dim(&self) -> usize {
        4
    }

    fn num_actions(&self) -> usize {
        2
    }

    fn reset(&mut self, seed: u64) -> Result<Tensor> {
        for i in 0..self.poles.len() {
            self.rngs[i] = ResumableRng::new(hash2(seed, i as u64));
            self.poles[i] = CartPole::reset(&mut self.rngs[i]);
            self.steps[i] = 0;
            self.returns[i] = 0.0;
        }
        self.observe()
    }

    fn step(&mut self, actions: &[u32]) -> Result<StepOut<Tensor>> {
        let n = self.poles.len();
        if actions.len() != n {
            return Err(Error::invalid(format!(
                "cartpole: {} actions for {n} environments",
                actions.len()
            )));
        }
        if let Some(a) = actions.iter().find(|a| **a > 1) {
            return Err(Error::invalid(format!(
                "cartpole: action {a} is not 0 or 1"
            )));
        }
        let mut dones = vec![false; n];
        let mut episodes = Vec::new();
        for i in 0..n {
            let terminated = self.poles[i].step(actions[i]);
            self.steps[i] += 1;
            self.returns[i] += 1.0;
            let truncated = self.steps[i] >= MAX_STEPS;
            if terminated || truncated {
                dones[i] = true;
                episodes.push(EpisodeInfo {
                    env: i,
                    ret: self.returns[i],
                    len: self.steps[i],
                });
                self.poles[i] = CartPole::reset(&mut self.rngs[i]);
                self.steps[i] = 0;
                self.returns[i] = 0.0;
            }
        }
        Ok(StepOut {
            obs: self.observe()?,
            rewards: vec![1.0; n],
            dones,
            episodes,
        })
    }

    fn observe(&self) -> Result<Tensor> {
        let v: Vec<f32> = self
            .poles
            .iter()
            .flat_map(|p| p.state.map(|x| x as f32))
            .collect();
        Ok(Tensor::from_vec(v, (self.poles.len(), 4), &self.device)?)
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        let s = SavedState {
            poles: self
                .poles
                .iter()
                .map(|p| p.state.map(f64::to_bits))
                .collect(),
            rngs: self.rngs.iter().map(|r| r.state()).collect(),
            steps: self.steps.clone(),
            returns: self.returns.iter().map(|r| r.to_bits()).collect(),
        };
        Ok(serde_json::to_vec(&s).expect("state serialises"))
    }

    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let s: SavedState = serde_json::from_slice(state)
            .map_err(|e| Error::env_state(format!("cartpole state: {e}")))?;
        let n = self.poles.len();
        if s.poles.len() != n || s.rngs.len() != n || s.steps.len() != n || s.returns.len() != n {
            return Err(Error::env_state(format!(
                "cartpole state is for {} environments, not {n}",
                s.poles.len()
            )));
        }
        self.poles = s
            .poles
            .iter()
            .map(|b| CartPole {
                state: b.map(f64::from_bits),
            })
            .collect();
        self.rngs = s.rngs.into_iter().map(ResumableRng::from_state).collect();
        self.steps = s.steps;
        self.returns = s.returns.into_iter().map(f64::from_bits).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step from a known state, against the equations evaluated by hand (python):
    /// state (0.01, 0.02, 0.03, 0.04), push right:
    /// temp = (10 + 0.05 * 0.04^2 * sin 0.03) / 1.1 = 9.090911272...
    /// thetaacc = (9.8 sin 0.03 - cos 0.03 temp) / (0.5 (4/3 - 0.1 cos^2 0.03 / 1.1)) = -14.153436...
    #[test]
    fn one_step_matches_gymnasium_equations() {
        let mut p = CartPole {
            state: [0.01, 0.02, 0.03, 0.04],
        };
        assert!(!p.step(1));
        let temp = (10.0 + 0.05 * 0.04f64.powi(2) * 0.03f64.sin()) / 1.1;
        let thetaacc = (9.8 * 0.03f64.sin() - 0.03f64.cos() * temp)
            / (0.5 * (4.0 / 3.0 - 0.1 * 0.03f64.cos().powi(2) / 1.1));
        let xacc = temp - 0.05 * thetaacc * 0.03f64.cos() / 1.1;
        assert_eq!(
            p.state,
            [
                0.01 + 0.02 * 0.02,
                0.02 + 0.02 * xacc,
                0.03 + 0.02 * 0.04,
                0.04 + 0.02 * thetaacc
            ]
        );
        assert!((thetaacc + 14.153436).abs() < 1e-6, "{thetaacc}");
    }

    #[test]
    fn episodes_end_truncate_and_reset() -> Result<()> {
        let mut env = CartPoleVec::new(3, &Device::Cpu);
        let obs = env.reset(7)?.to_vec2::<f32>()?;
        assert!(obs.iter().flatten().all(|v| v.abs() <= 0.05));
        // Always pushing right falls over within a few dozen steps.
        let mut lens = Vec::new();
        for _ in 0..100 {
            let out = env.step(&[1, 1, 1])?;
            for e in &out.episodes {
                assert!(out.dones[e.env]);
                assert_eq!(e.ret, e.len as f64);
                lens.push(e.len);
            }
        }
        assert!(
            lens.len() >= 3 && lens.iter().all(|l| (5..60).contains(l)),
            "{lens:?}"
        );
        // Truncation at 500: hold a pole upright by hand.
        let mut env = CartPoleVec::new(1, &Device::Cpu);
        env.reset(0)?;
        env.poles[0].state = [0.0; 4];
        env.steps[0] = 499;
        let out = env.step(&[0])?;
        assert!(out.dones[0] && out.episodes[0].len == 500);
        assert!(env.step(&[2]).is_err());
        Ok(())
    }

    #[test]
    fn state_round_trip_is_exact() -> Result<()> {
        let mut a = CartPoleVec::new(4, &Device::Cpu);
        a.reset(3)?;
        for k in 0..30 {
            a.step(&[k % 2, 1, 0, (k / 3) % 2])?;
        }
        let mut b = CartPoleVec::new(4, &Device::Cpu);
        b.load_state(&a.save_state()?)?;
        for k in 0..200u32 {
            let acts = [k % 2, (k / 2) % 2, 1 - k % 2, (k / 5) % 2];
            let (oa, ob) = (a.step(&acts)?, b.step(&acts)?);
            assert_eq!(oa.obs.to_vec2::<f32>()?, ob.obs.to_vec2::<f32>()?);
            assert_eq!(oa.dones, ob.dones);
        }
        Ok(())
    }
}
