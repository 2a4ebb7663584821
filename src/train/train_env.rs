/*!
The vectorised-environment interface the trainer is generic over, and a resumable random stream.

An environment runs `num_envs` copies (scenarios) in lock-step; each copy has `agents_per_env`
agents (1 for CartPole, S symbols for trading) that act at every step. Rows (actions, rewards,
masks) are laid out environment-major: row `e * agents_per_env + a`. An episode ends for a whole
environment copy (`dones` has one flag per copy), and the copy resets itself within the same step
(Gymnasium's same-step auto-reset, as in CleanRL): the returned observation is then the first
observation of the next episode.
*/

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::agents::ObsBatch;
use crate::error::Error;
use crate::rng::SplitMix64;

/// A finished episode, reported by the step that ended it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeInfo {
    /// Which environment copy.
    pub env: usize,
    /// Undiscounted return (summed over the copy's agents).
    pub ret: f64,
    /// Length in steps.
    pub len: usize,
}

/// What one step returns.
#[derive(Debug, Clone)]
pub struct StepOut<O> {
    /// The next observation (after auto-reset where a copy finished).
    pub obs: O,
    /// `[num_envs * agents_per_env]` rewards of the step.
    pub rewards: Vec<f32>,
    /// `[num_envs]`: the episode of the copy ended with this step (terminated or truncated).
    pub dones: Vec<bool>,
    /// Episodes that ended with this step.
    pub episodes: Vec<EpisodeInfo>,
}

/// A vectorised environment with discrete actions.
pub trait TrainEnv {
    /// The observation batch the policy reads.
    type Obs: ObsBatch;

    /// Environment copies (scenarios) N.
    fn num_envs(&self) -> usize;
    /// Agents per copy (symbols S); rows are `N * agents_per_env`.
    fn agents_per_env(&self) -> usize {
        1
    }
    /// Length of one agent's observation vector (informational).
    fn obs_dim(&self) -> usize;
    /// Discrete actions per agent.
    fn num_actions(&self) -> usize;
    /// Reset every copy; all randomness of the environment derives from `seed`.
    fn reset(&mut self, seed: u64) -> Result<Self::Obs>;
    /// Apply one action per row (`[N * agents_per_env]`).
    fn step(&mut self, actions: &[u32]) -> Result<StepOut<Self::Obs>>;
    /// Legal actions for the current observation, `[N * agents_per_env * num_actions]`, 1 = allowed;
    /// `None` when every action is always legal.
    fn action_mask(&self) -> Option<Vec<u8>> {
        None
    }
    /// The current observation (what the last `reset`/`step` returned); used on resume.
    fn observe(&self) -> Result<Self::Obs>;
    /// Serialise the complete state (for a bit-identical resume).
    fn save_state(&self) -> Result<Vec<u8>> {
        Err(Error::invalid("this environment cannot save its state"))
    }
    /// Restore a state written by `save_state`.
    fn load_state(&mut self, _state: &[u8]) -> Result<()> {
        Err(Error::invalid("this environment cannot load a state"))
    }
    /// Scale the weight of the reward's cost term by `scale` in `[0, 1]` from the next step on
    /// (the trainer's cost curriculum, `ppo.cost_ramp_frac`). Environments without a cost term
    /// ignore it (the default).
    fn set_cost_scale(&mut self, _scale: f64) {}
    /// Let only the first `count` agents of every copy act; the others may only take action 0
    /// (HOLD) from the current observation on (the trainer's staged onboarding,
    /// `ppo.onboard_start`; `usize::MAX` = all). Environments without such agents ignore it (the
    /// default).
    fn set_tradable_symbols(&mut self, _count: usize) -> Result<()> {
        Ok(())
    }
    /// Start iteration `iteration` (1-based) of `iterations` (before its rollout). A joint
    /// schedule (`train::joint`) sets here which side learns in this iteration. The default does
    /// nothing.
    fn begin_iteration(&mut self, _iteration: usize, _iterations: usize) -> Result<()> {
        Ok(())
    }
    /// Whether the trainer updates its agents after this iteration's rollout: false while a joint
    /// schedule holds them fixed (`train::joint`, alternating phases); the default is true.
    fn agents_learn(&self) -> bool {
        true
    }
    /// The policy's logits (`[N * agents_per_env, num_actions]`) and the mask they are sampled
    /// under, for the current observation: the trainer passes them after every policy pass of
    /// the rollout, before `step`, and once more for the observation after the rollout (the
    /// bootstrap pass), before [`TrainEnv::end_rollout`]. An environment whose dynamics read the
    /// agents' intentions (joint training: the master observes the symbol agents' intents) keeps
    /// them; the default ignores them.
    fn policy_outputs(&mut self, _logits: &Tensor, _mask: Option<&Tensor>) -> Result<()> {
        Ok(())
    }
    /// The iteration's rollout is over (joint training updates the master here; its losses are
    /// reported by the next [`TrainEnv::drain_stats`]). The default does nothing.
    fn end_rollout(&mut self) -> Result<()> {
        Ok(())
    }
    /// Write the files of the environment's own learners into checkpoint directory `dir`
    /// (joint training: the master's network, optimiser and state), before the trainer's state
    /// file. The default writes nothing.
    fn save_files(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Restore what [`TrainEnv::save_files`] wrote into `dir` (after
    /// [`TrainEnv::load_state`]). The default reads nothing.
    fn load_files(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Names of the statistics [`TrainEnv::drain_stats`] reports, in column order (CSV header).
    fn stat_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Named statistics of the episodes finished since the last call (logged with each
    /// iteration's metrics); a name may be missing when there is nothing to report.
    fn drain_stats(&mut self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

/// SplitMix64's increment (see `crate::rng`): after `n` draws from seed `s` the state is
/// `s + n * GOLDEN`, which is what makes [`ResumableRng::from_state`] O(1). A unit test pins it.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A [`SplitMix64`] stream that knows its position, so it can be saved and resumed exactly.
#[derive(Debug, Clone)]
pub struct ResumableRng {
    seed: u64,
    draws: u64,
    inner: SplitMix64,
}

/// The saved position of a [`ResumableRng`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The stream's seed.
    pub seed: u64,
    /// Draws taken so far.
    pub draws: u64,
}

impl ResumableRng {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            draws: 0,
            inner: SplitMix64::new(seed),
        }
    }

    /// Its position, to save.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.seed,
            draws: self.draws,
        }
    }

    /// Continue a saved stream.
    pub fn from_state(s: RngState) -> Self {
        Self {
            seed: s.seed,
            draws: s.draws,
            inner: SplitMix64::new(s.seed.wrapping_add(s.draws.wrapping_mul(GOLDEN))),
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.draws += 1;
        self.inner.next_u64()
    }

    /// Uniform in [0, 1) (one draw).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        crate::rng::to_unit_f64(self.next_u64())
    }

    /// Uniform integer in [0, n) (one draw).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Fisher-Yates shuffle (CleanRL shuffles the batch indices once per epoch).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// Advance by `n` draws.
    pub fn skip(&mut self, n: u64) {
        *self = Self::from_state(RngState {
            seed: self.seed,
            draws: self.draws + n,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumable_rng_matches_splitmix_and_resumes() {
        let mut a = ResumableRng::new(99);
        let mut b = SplitMix64::new(99);
        for _ in 0..37 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = ResumableRng::from_state(a.state());
        for _ in 0..10 {
            assert_eq!(a.next_u64(), c.next_u64());
        }
        let mut d = a.clone();
        d.skip(5);
        for _ in 0..5 {
            a.next_u64();
        }
        assert_eq!(a.next_u64(), d.next_u64());
        let mut v: Vec<u32> = (0..20).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
