/*!
[`TradingEnv`]: the trading environment ([`crate::env::VecEnv`]) seen through the trainer's
[`VecEnv`](super::VecEnv) trait, so that [`Ppo`](super::Ppo) can train
[`SymbolPolicy`](crate::agents::symbol::SymbolPolicy) on it.

The mapping:

- **copies and agents**: `num_envs = N` scenarios, `agents_per_env = S` symbols; rows are
  scenario-major (`n * S + s`), which is the env's `[N, S]` layout, so actions, rewards and masks
  pass through unchanged.
- **actions**: the trainer's `u32` actions (always `< 7`, the policy samples only legal ones) are
  narrowed to `u8`. The master agent is not trained here: every scenario gets the config's
  `master.default_action` at every step.
- **observation**: [`SymbolObs`] with `keys[n] = (path, bar)` from the env's `obs_index` and
  `dyn_obs = [N, S, DYN_OBS]` from the env's `dyn_obs`; the technical windows are read by the
  policy from its [`WindowSource`](crate::agents::symbol::WindowSource) (the [`Features`](crate::features::Features)
  the env was built from) at that key. `Features` carries no returns, so the encoder's graph branch
  must be disabled.
- **rewards**: the env's per-symbol total reward `[N * S]`.
- **dones**: `terminated || truncated` per scenario; the env auto-resets in the same step, as the
  trait requires.
- **episodes**: from the env's `drain_finished()` after each step: `env = scenario`,
  `ret = EpisodeRecord::total_return` (final equity / initial capital - 1, *not* the sum of the
  shaped rewards), `len = EpisodeRecord::length`.
- **masks**: the env's `[N, S, 7]` mask, read after every reset/step (the env's accessors need
  `&mut`, the trait's `&self`, so the observation, mask and keys are cached).

The env executes a masked action as HOLD and counts it (`invalid_actions` in its episode records);
the adapter additionally counts, before each step, rows whose action is masked in the cached mask
([`TradingEnv::masked_actions`]) and sums the records' counts ([`TradingEnv::invalid_actions`]), so
tests can assert that PPO's masking is honoured end to end.

**Not supported: `save_state`/`load_state`** (the trait's defaults, which fail), hence no PPO
checkpoint/resume over this adapter yet. The env's [`Snapshot`](crate::env::Snapshot) is not
serialisable, and even loaded back it would not restore the env's `RewardShaper` statistics nor its
list of not yet drained episodes, so a resume would not be bit-identical.
*/

use candle_core::{Device, Tensor};

use super::vec_env::{EpisodeInfo, StepOut, VecEnv};
use crate::Result;
use crate::agents::symbol::SymbolObs;
use crate::env::{self, N_ACTIONS, obs::DYN_OBS};
use crate::error::Error;

/// The trading environment as a [`VecEnv`] for the trainer (see the module doc).
pub struct TradingEnv {
    env: env::VecEnv,
    master: Vec<u8>,
    actions: Vec<u8>,
    dyn_obs: Vec<f32>,
    mask: Vec<u8>,
    index: Vec<u32>,
    device: Device,
    masked_actions: u64,
    invalid_actions: u64,
    episodes: u64,
}

impl TradingEnv {
    /// Wrap `env`; every scenario's master action is `master_action` (the config's
    /// `master.default_action`). Observations are built on `device`.
    pub fn new(env: env::VecEnv, master_action: u32, device: &Device) -> Result<Self> {
        if master_action as usize >= env::MASTER_ACTIONS {
            return Err(Error::invalid(format!(
                "master action {master_action} is not in 0..{}",
                env::MASTER_ACTIONS
            )));
        }
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        Ok(Self {
            master: vec![master_action as u8; n],
            actions: vec![0; n * s],
            dyn_obs: vec![0.0; n * s * DYN_OBS],
            mask: vec![1; n * s * N_ACTIONS],
            index: vec![0; 2 * n],
            device: device.clone(),
            masked_actions: 0,
            invalid_actions: 0,
            episodes: 0,
            env,
        })
    }

    /// The wrapped environment.
    pub fn inner(&self) -> &env::VecEnv {
        &self.env
    }

    /// The wrapped environment, mutably (snapshots, statistics).
    pub fn inner_mut(&mut self) -> &mut env::VecEnv {
        &mut self.env
    }

    /// Rows stepped with an action that the mask in force forbade (should stay 0 under PPO).
    pub fn masked_actions(&self) -> u64 {
        self.masked_actions
    }

    /// Sum of `invalid_actions` over the episodes finished so far (the env's own count).
    pub fn invalid_actions(&self) -> u64 {
        self.invalid_actions
    }

    /// Episodes finished so far.
    pub fn episodes(&self) -> u64 {
        self.episodes
    }

    fn refresh(&mut self) -> Result<()> {
        self.env.dyn_obs(&mut self.dyn_obs)?;
        self.env.action_mask(&mut self.mask)?;
        self.env.obs_index(&mut self.index)
    }
}

impl VecEnv for TradingEnv {
    type Obs = SymbolObs;

    fn num_envs(&self) -> usize {
        self.env.n_scenarios()
    }

    fn agents_per_env(&self) -> usize {
        self.env.n_symbols()
    }

    fn obs_dim(&self) -> usize {
        DYN_OBS
    }

    fn num_actions(&self) -> usize {
        N_ACTIONS
    }

    fn reset(&mut self, seed: u64) -> Result<SymbolObs> {
        self.env.reset(seed)?;
        self.refresh()?;
        self.observe()
    }

    fn step(&mut self, actions: &[u32]) -> Result<StepOut<SymbolObs>> {
        if actions.len() != self.actions.len() {
            return Err(Error::invalid(format!(
                "{} actions, expected N*S = {}",
                actions.len(),
                self.actions.len()
            )));
        }
        for (r, (&a, dst)) in actions.iter().zip(&mut self.actions).enumerate() {
            if a as usize >= N_ACTIONS {
                return Err(Error::invalid(format!(
                    "action {a} of row {r} is not in 0..{N_ACTIONS}"
                )));
            }
            if self.mask[r * N_ACTIONS + a as usize] == 0 {
                self.masked_actions += 1;
            }
            *dst = a as u8;
        }
        let out = self.env.step(&self.actions, &self.master)?;
        let rewards = out.reward.clone();
        let dones: Vec<bool> = (0..out.terminated.len()).map(|n| out.done(n)).collect();
        let episodes = self
            .env
            .drain_finished()
            .into_iter()
            .map(|rec| {
                self.invalid_actions += u64::from(rec.invalid_actions);
                self.episodes += 1;
                EpisodeInfo {
                    env: rec.scenario as usize,
                    ret: rec.total_return,
                    len: rec.length as usize,
                }
            })
            .collect();
        self.refresh()?;
        Ok(StepOut {
            obs: self.observe()?,
            rewards,
            dones,
            episodes,
        })
    }

    fn action_mask(&self) -> Option<Vec<u8>> {
        Some(self.mask.clone())
    }

    fn observe(&self) -> Result<SymbolObs> {
        let (n, s) = (self.env.n_scenarios(), self.env.n_symbols());
        Ok(SymbolObs {
            keys: self.index.chunks_exact(2).map(|k| (k[0], k[1])).collect(),
            dyn_obs: Tensor::from_slice(&self.dyn_obs, (n, s, DYN_OBS), &self.device)?,
        })
    }
}
