/*!
Joint training of the symbol agents and the portfolio master: one loop, one rollout.

**What runs.** With `[joint] enabled = true`, `marl-trade train` attaches a [`MasterSeat`] to the
symbol agents' [`TradingEnv`](super::TradingEnv). The symbol agents train with PPO exactly as
without it ([`Ppo`](super::Ppo), the `[ppo]` section); the master is the
[`MasterLearner`] of `train::mappo` (MAPPO with a centralized critic,
the `[master_ppo]` section), and it plays *inside the symbol agents' rollout*:

1. every `master_ppo.decision_interval` env steps (counted from the start of the run, so every
   scenario decides at the same steps), before the step, the seat computes the master observation
   of every scenario on the env's backend ([`crate::env::VecEnv::master_obs`]) with the symbol
   agents' intents taken from the logits of the policy pass that chose this step's symbol
   actions ([`TrainEnv::policy_outputs`](super::TrainEnv::policy_outputs),
   [`SymbolIntents::from_logits`](crate::agents::master::SymbolIntents::from_logits): mean action
   probabilities under the mask, buy / sell fractions of the argmax, mean entropy), samples a
   directive per scenario, and holds it for the interval (the env masks and fills the symbol
   actions of those steps under it; the symbol observation shows a directive from the step after
   it was set on, as for [`MasterPpo`](super::mappo::MasterPpo) over a trained symbol policy);
2. the master's reward for a decision is the §5 master reward summed over its interval's steps
   (an episode ending inside the interval ends the decision's trajectory);
3. at the end of the rollout the trainer's bootstrap pass gives the intents of the next
   observation; the seat computes the next master observation (kept, so that the next rollout's
   first decision reads exactly it, with the then current intents) and runs the MAPPO update on
   the rollout's `ppo.num_steps / decision_interval` decisions per scenario.

`ppo.num_steps` must be a multiple of `master_ppo.decision_interval`, so that every rollout is
whole decisions and a checkpoint (written between iterations) holds no decision in flight.
`master_ppo.decisions` and `master_ppo.iterations` are `train-master`'s and are not used here.

**Schedule** ([`JointConfig`]): for the first `master_start_frac` of the run the master does not
play: every scenario gets `master.default_action` (the symbol agents learn under the directive
they are evaluated with when no master is trained) and the master does not learn. After that,
`schedule = "simultaneous"`: both sides update after every rollout; `"alternating"`: phases of
`phase_iterations` iterations, the first one the master's (the symbol agents held fixed: no PPO
update, the iteration's metrics say `epochs` 0), then the symbol agents' (the master plays, sampled
from its current policy, and does not update), and so on. The master's entropy coefficient is
annealed linearly over its own updates, from `master_ppo.ent_coef_start` to `ent_coef_end`; the
symbol agents' is PPO's. The design's staged symbol onboarding (`ppo.onboard_*`) and the cost
curriculum (`ppo.cost_ramp_frac`) apply as without a master.

**Critics.** The master's critic is centralized (the global portfolio state, `train::mappo`). The
symbol agents' critics keep their own observation, which already holds the scenario's portfolio
telemetry, regime and directive (docs/env-spec.md §6, `PORTFOLIO`, `REGIME`, `MASTER`); a critic
on every symbol's state would cost `S` times the encoder work per value for what is, per symbol,
mostly other symbols' noise.

**Checkpoints.** A joint checkpoint is a symbol checkpoint plus the master's files
(`master.safetensors`, `master_optimizer.safetensors`, `master_state.json`: the
[`MasterTrainState`](super::mappo::MasterTrainState) of `train-master`) and [`SEAT_FILE`] (the
held directives, the master anchors, the step counter, the kept observation); `train --resume`
continues bit-identically, and `eval` finds the master beside the symbol policy.

**Logged** (each iteration's `Metrics::env`, so `metrics.jsonl` and the CSV): `master.plays` and
`master.learns` (0 or 1), and after an update `master.<loss>` for every loss and statistic of
[`MasterMetrics`] by name (`master.policy_loss`,
`master.value_loss`, `master.entropy`, `master.approx_kl`, `master.clipfrac`, `master.grad_norm`,
`master.reward_mean`, `master.explained_variance`, `master.ent_coef`, `master.cap_mean`,
`master.defensive_share`, `master.aggressive_share`, `master.kl_default`).
*/

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::mappo::{MasterBatch, MasterLearner, MasterMetrics, MasterPpoConfig};
use crate::agents::master::SymbolIntents;
use crate::env::master_obs::{M_INTENTS, MASTER_INTENTS, MASTER_OBS, MasterAnchor};
use crate::env::{MASTER_ACTIONS, VecEnv};
use crate::error::{Error, ErrorKind, Result};

/// The seat's own state in a checkpoint directory (held directives, anchors, step counter, kept
/// observation); the master's network and optimiser are in `train-master`'s files beside it.
pub const SEAT_FILE: &str = "master_seat.bin";

/// Which side learns after a rollout once the master plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JointSchedule {
    /// Both update after every rollout.
    #[default]
    Simultaneous,
    /// Phases of `phase_iterations`: the master learns (symbols fixed), then the symbols learn
    /// (master fixed), and so on.
    Alternating,
}

/// `[joint]`: joint training of the symbol agents and the master (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JointConfig {
    /// Train the master with the symbol agents in `marl-trade train` (default false: the master
    /// plays `master.default_action`, as before).
    pub enabled: bool,
    /// Fraction of the run's iterations, from the start, in which the master does not play
    /// (`master.default_action` everywhere) and does not learn: the symbol agents first learn to
    /// trade. Default 0.5.
    pub master_start_frac: f64,
    /// `simultaneous` (default) or `alternating`.
    pub schedule: JointSchedule,
    /// Iterations per phase of the `alternating` schedule (default 10).
    pub phase_iterations: usize,
}

impl Default for JointConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            master_start_frac: 0.5,
            schedule: JointSchedule::Simultaneous,
            phase_iterations: 10,
        }
    }
}

impl JointConfig {
    /// Range checks; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if !(0.0..1.0).contains(&self.master_start_frac) {
            return Err(Error::config_field(
                origin,
                "joint.master_start_frac",
                "must be in [0, 1)".to_string(),
            ));
        }
        if self.phase_iterations == 0 {
            return Err(Error::config_field(
                origin,
                "joint.phase_iterations",
                "must be >= 1".to_string(),
            ));
        }
        Ok(())
    }

    /// The first iteration (1-based) in which the master plays, of a run of `total`.
    pub fn master_start(&self, total: usize) -> usize {
        (self.master_start_frac * total as f64).floor() as usize + 1
    }

    /// `(master plays, master learns, symbols learn)` in iteration `it` (1-based) of `total`.
    pub fn roles(&self, it: usize, total: usize) -> (bool, bool, bool) {
        let start = self.master_start(total);
        if !self.enabled || it < start {
            return (false, false, true);
        }
        match self.schedule {
            JointSchedule::Simultaneous => (true, true, true),
            JointSchedule::Alternating => {
                let master_phase = ((it - start) / self.phase_iterations).is_multiple_of(2);
                (true, master_phase, !master_phase)
            }
        }
    }

    /// The master's updates before iteration `it` and in the whole run of `total` (its entropy
    /// annealing runs over those).
    pub fn master_updates(&self, it: usize, total: usize) -> (usize, usize) {
        let learns = |k: usize| self.roles(k, total).1;
        let before = (1..it).filter(|&k| learns(k)).count();
        let all = (1..=total).filter(|&k| learns(k)).count();
        (before, all)
    }
}

/// Header of [`SEAT_FILE`]; the anchors `[N]`, the directives `[N]` (u8) and, when `pending`,
/// the kept observation `[N, MASTER_OBS]` f32 follow.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct SeatHeader {
    magic: [u8; 8],
    version: u32,
    n: u32,
    obs: u32,
    pending: u32,
    step: u64,
}

impl SeatHeader {
    const MAGIC: [u8; 8] = *b"MTSEAT\0\0";
    const VERSION: u32 = 1;
}

/// The learning master inside the symbol agents' rollout (module doc). Owned by the
/// [`TradingEnv`](super::TradingEnv) it is attached to, which calls it around every step.
pub struct MasterSeat {
    joint: JointConfig,
    learner: MasterLearner,
    n: usize,
    s: usize,
    interval: usize,
    default_action: u8,
    env_seed: u64,
    /// Env steps since the start of the run.
    step: u64,
    /// The directives in force.
    directives: Vec<u8>,
    /// Intents of the last policy pass (`[N, MASTER_INTENTS]`), if one was passed since the last
    /// step.
    intents: Option<Vec<f32>>,
    /// The master observation computed after the last rollout (the next decision's, intents
    /// aside).
    pending: Option<Vec<f32>>,
    batch: MasterBatch,
    plays: bool,
    learns: bool,
    symbols_learn: bool,
    ent_coef: f64,
    last: Option<MasterMetrics>,
    obs_buf: Vec<f32>,
}

impl MasterSeat {
    /// A fresh master (`master`, `[master_ppo]`) for `n` scenarios x `s` symbols under `joint`,
    /// deciding every `master.decision_interval` steps of rollouts of `num_steps` steps (a
    /// multiple of it); `default_action` is played before the master starts; `env_seed` is
    /// recorded in the master's state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        joint: JointConfig,
        master: MasterPpoConfig,
        n: usize,
        s: usize,
        num_steps: usize,
        default_action: u8,
        env_seed: u64,
    ) -> Result<Self> {
        joint.validate("joint")?;
        let interval = master.decision_interval;
        if interval == 0 || !num_steps.is_multiple_of(interval) {
            return Err(Error::config_field(
                "joint",
                "ppo.num_steps",
                format!(
                    "joint training needs ppo.num_steps ({num_steps}) to be a multiple of \
                     master_ppo.decision_interval ({interval}), so that a rollout is whole \
                     master decisions"
                ),
            ));
        }
        if default_action as usize >= MASTER_ACTIONS {
            return Err(Error::invalid(format!(
                "master action {default_action} is not in 0..{MASTER_ACTIONS}"
            )));
        }
        Ok(Self {
            joint,
            learner: MasterLearner::new(master)?,
            n,
            s,
            interval,
            default_action,
            env_seed,
            step: 0,
            directives: vec![default_action; n],
            intents: None,
            pending: None,
            batch: MasterBatch::new(n),
            plays: false,
            learns: false,
            symbols_learn: true,
            ent_coef: 0.0,
            last: None,
            obs_buf: vec![0.0; n * MASTER_OBS],
        })
    }

    /// The master's learner (network, optimiser, updates).
    pub fn learner(&self) -> &MasterLearner {
        &self.learner
    }

    /// The directives in force (`[N]`).
    pub fn directives(&self) -> &[u8] {
        &self.directives
    }

    /// Set the roles of iteration `it` of `total` (see [`JointConfig::roles`]).
    pub fn begin_iteration(&mut self, it: usize, total: usize) {
        let (plays, learns, symbols) = self.joint.roles(it, total);
        (self.plays, self.learns, self.symbols_learn) = (plays, learns, symbols);
        let (before, all) = self.joint.master_updates(it, total);
        self.ent_coef = self.learner.ent_coef_at(before, all);
        self.batch.clear();
    }

    /// Whether the symbol agents update after this iteration's rollout.
    pub fn symbols_learn(&self) -> bool {
        self.symbols_learn
    }

    /// Keep the intents of the symbol policy's `logits` (`[N * S, 7]`) under `mask`.
    pub fn policy_outputs(&mut self, logits: &Tensor, mask: Option<&Tensor>) -> Result<()> {
        let logits = logits.to_dtype(DType::F32)?;
        let it = SymbolIntents::from_logits(&logits, mask, self.s)?;
        if it.values.len() != self.n * MASTER_INTENTS {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "symbol logits for {} scenarios, the env has {}",
                    it.values.len() / MASTER_INTENTS,
                    self.n
                ),
            ));
        }
        self.intents = Some(it.values);
        Ok(())
    }

    fn take_intents(&mut self) -> Result<Vec<f32>> {
        self.intents.take().ok_or_else(|| {
            Error::invalid(
                "joint training: the master decides from the symbol policy's intents, but the \
                 trainer passed no policy outputs (TrainEnv::policy_outputs) before this step",
            )
        })
    }

    /// The master observation of the current state with the last intents into `obs_buf`: the
    /// kept one (its intents replaced) right after a rollout, else computed by the env.
    fn observe(&mut self, env: &mut VecEnv) -> Result<()> {
        let intents = self.take_intents()?;
        match self.pending.take() {
            Some(mut obs) => {
                for (row, it) in obs
                    .chunks_exact_mut(MASTER_OBS)
                    .zip(intents.chunks_exact(MASTER_INTENTS))
                {
                    row[M_INTENTS].copy_from_slice(it);
                }
                self.obs_buf = obs;
                Ok(())
            }
            None => env.master_obs(&intents, &mut self.obs_buf),
        }
    }

    /// Before a step: at a decision step the master (when it plays) reads its observation and
    /// sets the directives. Returns the directives of this step.
    pub fn before_step(&mut self, env: &mut VecEnv) -> Result<&[u8]> {
        if !self.plays {
            self.directives.fill(self.default_action);
            self.intents = None;
            return Ok(&self.directives);
        }
        if self.step.is_multiple_of(self.interval as u64) {
            self.observe(env)?;
            let batch = self.learns.then_some(&mut self.batch);
            self.learner
                .sample(&self.obs_buf, &mut self.directives, batch)?;
        }
        self.intents = None;
        Ok(&self.directives)
    }

    /// After a step: its master rewards (`[N]`) and episode ends go to the decisions in flight.
    pub fn after_step(&mut self, master_reward: &[f32], done: impl Fn(usize) -> bool) {
        if self.learns && self.batch.decisions() > 0 {
            self.batch.accumulate(master_reward, done);
        }
        self.step += 1;
    }

    /// After the rollout (and the bootstrap pass's intents): the MAPPO update when the master
    /// learns in this iteration.
    pub fn end_rollout(&mut self, env: &mut VecEnv) -> Result<()> {
        if !self.learns {
            self.intents = None;
            return Ok(());
        }
        if !self.step.is_multiple_of(self.interval as u64) || self.batch.decisions() == 0 {
            return Err(Error::invalid(format!(
                "joint training: the rollout ended at step {} with {} master decisions; \
                 ppo.num_steps must be a multiple of the decision interval {}",
                self.step,
                self.batch.decisions(),
                self.interval
            )));
        }
        let intents = self.take_intents()?;
        let mut next = vec![0f32; self.n * MASTER_OBS];
        env.master_obs(&intents, &mut next)?;
        let params = env.layout().params;
        let m = self
            .learner
            .update(&self.batch, &next, self.ent_coef, &params)?;
        self.pending = Some(next);
        self.batch.clear();
        self.last = Some(m);
        Ok(())
    }

    /// Names of the statistics [`MasterSeat::drain_stats`] reports.
    pub fn stat_names() -> Vec<String> {
        [
            "plays",
            "learns",
            "policy_loss",
            "value_loss",
            "entropy",
            "approx_kl",
            "clipfrac",
            "grad_norm",
            "reward_mean",
            "explained_variance",
            "ent_coef",
            "cap_mean",
            "defensive_share",
            "aggressive_share",
            "kl_default",
        ]
        .iter()
        .map(|k| format!("master.{k}"))
        .collect()
    }

    /// The iteration's master statistics (module doc).
    pub fn drain_stats(&mut self) -> Vec<(String, f64)> {
        let mut out = vec![
            ("master.plays".to_string(), f64::from(u8::from(self.plays))),
            (
                "master.learns".to_string(),
                f64::from(u8::from(self.learns)),
            ),
        ];
        if let Some(m) = self.last.take() {
            let mut put = |k: &str, v: f64| out.push((format!("master.{k}"), v));
            put("policy_loss", m.policy_loss);
            put("value_loss", m.value_loss);
            put("entropy", m.entropy);
            put("approx_kl", m.approx_kl);
            put("clipfrac", m.clipfrac);
            put("grad_norm", m.grad_norm);
            put("reward_mean", m.reward_mean);
            if let Some(ev) = m.explained_variance {
                put("explained_variance", ev);
            }
            put("ent_coef", m.ent_coef);
            put("cap_mean", m.cap_mean);
            put("defensive_share", m.mode_share[0]);
            put("aggressive_share", m.mode_share[2]);
            put("kl_default", m.kl_default);
        }
        out
    }

    /// Write the master's files and [`SEAT_FILE`] into checkpoint directory `dir` (the master's
    /// state last), each atomically; `anchors` are the env's master anchors.
    pub fn save(&self, dir: &Path, anchors: &[MasterAnchor]) -> Result<()> {
        if self.batch.decisions() > 0 {
            return Err(Error::invalid(
                "joint training: a checkpoint between the master's decisions and its update",
            ));
        }
        self.learner.save_tensors(dir)?;
        let h = SeatHeader {
            magic: SeatHeader::MAGIC,
            version: SeatHeader::VERSION,
            n: self.n as u32,
            obs: MASTER_OBS as u32,
            pending: u32::from(self.pending.is_some()),
            step: self.step,
        };
        let mut bytes = bytemuck::bytes_of(&h).to_vec();
        bytes.extend_from_slice(bytemuck::cast_slice(anchors));
        bytes.extend_from_slice(&self.directives);
        if let Some(p) = &self.pending {
            bytes.extend_from_slice(bytemuck::cast_slice(p));
        }
        crate::atomic::write(&dir.join(SEAT_FILE), &bytes)?;
        let st = self.learner.state(self.n, self.s, self.env_seed);
        MasterLearner::write_state(dir, &st)
    }

    /// Restore what [`MasterSeat::save`] wrote into `dir`; returns the master anchors to set on
    /// the env. A checkpoint without a master, of another size or another `[master_ppo]` section
    /// is an error naming the file.
    pub fn load(&mut self, dir: &Path) -> Result<Vec<MasterAnchor>> {
        let (learner, st) = MasterLearner::load(dir, self.n, self.s)?;
        if &st.ppo != self.learner.config() {
            return Err(Error::new(
                ErrorKind::RunMismatch,
                "the checkpoint's master was trained with another [master_ppo] section",
            )
            .with_file(dir.join(super::mappo::MASTER_STATE_FILE)));
        }
        let path = dir.join(SEAT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |why: String| Err(Error::checkpoint(&path, why));
        let hl = std::mem::size_of::<SeatHeader>();
        if bytes.len() < hl {
            return bad(format!(
                "truncated: {} bytes, shorter than its header",
                bytes.len()
            ));
        }
        let h: SeatHeader = bytemuck::pod_read_unaligned(&bytes[..hl]);
        if h.magic != SeatHeader::MAGIC || h.version != SeatHeader::VERSION {
            return bad("not a master seat state of this version".into());
        }
        if (h.n as usize, h.obs as usize) != (self.n, MASTER_OBS) {
            return bad(format!(
                "holds {} scenarios x {} observation values, expected {} x {MASTER_OBS}",
                h.n, h.obs, self.n
            ));
        }
        let al = self.n * std::mem::size_of::<MasterAnchor>();
        let ol = if h.pending != 0 {
            self.n * MASTER_OBS * 4
        } else {
            0
        };
        if bytes.len() != hl + al + self.n + ol {
            return bad(format!(
                "{} bytes, expected {}",
                bytes.len(),
                hl + al + self.n + ol
            ));
        }
        let anchors: Vec<MasterAnchor> = bytemuck::pod_collect_to_vec(&bytes[hl..hl + al]);
        let directives = bytes[hl + al..hl + al + self.n].to_vec();
        if let Some(d) = directives.iter().find(|&&d| d as usize >= MASTER_ACTIONS) {
            return bad(format!("directive {d} is not in 0..{MASTER_ACTIONS}"));
        }
        self.pending =
            (h.pending != 0).then(|| bytemuck::pod_collect_to_vec(&bytes[hl + al + self.n..]));
        self.directives = directives;
        self.step = h.step;
        self.learner = learner;
        self.intents = None;
        self.batch.clear();
        Ok(anchors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_schedule() {
        let mut j = JointConfig {
            enabled: true,
            master_start_frac: 0.5,
            schedule: JointSchedule::Simultaneous,
            phase_iterations: 2,
        };
        // 10 iterations: the master plays from iteration 6.
        assert_eq!(j.master_start(10), 6);
        assert_eq!(j.roles(5, 10), (false, false, true));
        assert_eq!(j.roles(6, 10), (true, true, true));
        assert_eq!(j.master_updates(6, 10), (0, 5));
        assert_eq!(j.master_updates(10, 10), (4, 5));
        j.schedule = JointSchedule::Alternating;
        let r: Vec<_> = (6..=10).map(|it| j.roles(it, 10)).collect();
        assert_eq!(
            r,
            vec![
                (true, true, false),
                (true, true, false),
                (true, false, true),
                (true, false, true),
                (true, true, false),
            ]
        );
        assert_eq!(j.master_updates(10, 10), (2, 3));
        j.enabled = false;
        assert_eq!(j.roles(9, 10), (false, false, true));
        assert!(
            JointConfig {
                master_start_frac: 1.0,
                ..JointConfig::default()
            }
            .validate("t")
            .is_err()
        );
    }
}
