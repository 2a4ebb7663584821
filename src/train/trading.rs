/*!
[`TradingEnv`]: the trading environment ([`crate::env::VecEnv`]) seen through the trainer's
[`TrainEnv`] trait, so that [`Ppo`](super::Ppo) can train
[`SymbolPolicy`](crate::agents::SymbolPolicy) on it.

The mapping:

- **copies and agents**: `num_envs = N` scenarios, `agents_per_env = S` symbols; rows are
  scenario-major (`n * S + s`), which is the env's `[N, S]` layout, so actions, rewards and masks
  pass through unchanged.
- **actions**: the trainer's `u32` actions (always `< 7`, the policy samples only legal ones) are
  narrowed to `u8`. Every scenario gets the config's `master.default_action` at every step,
  unless a learning master is attached ([`TradingEnv::attach_master`], joint training,
  `train::joint`): then the master's directives, set at its decision steps before the step.
- **observation**: [`SymbolObs`] with `keys[n] = (path, bar)` from the env's `obs_index` and
  `dyn_obs = [N, S, DYN_OBS]` from the env's `dyn_obs`; the technical windows are read by the
  policy from its [`WindowSource`](crate::agents::WindowSource) (the [`Features`](crate::features::Features)
  the env was built from) at that key. `Features` carries no returns, so the encoder's graph branch
  must be disabled.
- **rewards**: the env's per-symbol total reward `[N * S]`. Under the trainer's cost curriculum
  (`ppo.cost_ramp_frac`, [`TrainEnv::set_cost_scale`] with a scale `c < 1`) the cost term's part
  is scaled: `r += (c - 1) * w_cost * cost` from the env's unweighted components, in `f64` and
  rounded once to `f32`; at `c = 1` the env's rewards pass through untouched (bit for bit).
- **dones**: `terminated || truncated` per scenario; the env auto-resets in the same step, as the
  trait requires.
- **episodes**: from the env's `drain_finished()` after each step: `env = scenario`,
  `ret = EpisodeRecord::total_return` (final equity / initial capital - 1, *not* the sum of the
  shaped rewards), `len = EpisodeRecord::length`.
- **statistics** (`drain_stats`, logged in each iteration's `Metrics::env`): the reward terms of
  the episodes that ended, and `turnover`, the traded notional / equity per symbol-step: the mean
  over scenario-steps of the env's `turnover` output (spec §4.8, the step's order notional at the
  fill over the equity before it, part of the step outputs both backends already hand back),
  divided by `S`.
- **masks**: the env's `[N, S, 7]` mask, read after every reset/step; under the trainer's staged
  onboarding ([`TrainEnv::set_tradable_symbols`] with `k < S`) the rows of symbols `s >= k` allow
  only HOLD (the env's mask otherwise unchanged); the restriction is applied at once to the
  current mask, and (the env's accessors need
  `&mut`, the trait's `&self`, so the observation, mask and keys are cached).

The env executes a masked action as HOLD and counts it (`invalid_actions` in its episode records);
the adapter additionally counts, before each step, rows whose action is masked in the cached mask
([`TradingEnv::masked_actions`]) and sums the records' counts ([`TradingEnv::invalid_actions`]), so
tests can assert that PPO's masking is honoured end to end.

**State** (`save_state`/`load_state`, used by PPO checkpoints): a small header of the adapter's
(magic, format version, master action, counters) followed by the env's [`Snapshot`] (seed, every
scenario's state including its episode counter, every symbol's state) as
[`Snapshot::to_bytes`] writes it: its own versioned header and `bytemuck` casts of the buffers.
A foreign, old or truncated state, or one saved for another N, S or master action, is refused with
an error saying what is wrong. The trajectory resumes exactly: observations, masks,
rewards, dones and episode returns after `load_state` equal those of the uninterrupted run (the
unit test below checks it on the CPU backend). Two pieces of telemetry are not restored, because
`load_snapshot` cannot: the env's `RewardShaper` accumulator (`episode_stats()` restarts empty)
and the reward-component sums of the episodes in flight (their `EpisodeRecord::components` count
from the resume only). The env's list of finished, not yet drained episodes is always empty
between steps here (the adapter drains it every step), so nothing is lost there.
*/

use candle_core::{Device, Tensor};

use super::joint::MasterSeat;

use super::train_env::{EpisodeInfo, StepOut, TrainEnv};
use crate::Result;
use crate::agents::SymbolObs;
use crate::env::{self, N_ACTIONS, Snapshot, obs::DYN_OBS};
use crate::error::Error;
use crate::reward::N_COMPONENTS;

/// Index of the cost term in the reward components (`reward::COMPONENT_NAMES`).
const COST: usize = 1;

/// Name of the turnover statistic in [`TrainEnv::drain_stats`] (and in `Metrics::env`).
pub const TURNOVER_STAT: &str = "turnover";

/// The trading environment as a [`TrainEnv`] for the trainer (see the module doc).
pub struct TradingEnv {
    env: env::VecEnv,
    n: usize,
    s: usize,
    master: Vec<u8>,
    actions: Vec<u8>,
    dyn_obs: Vec<f32>,
    mask: Vec<u8>,
    index: Vec<u32>,
    device: Device,
    masked_actions: u64,
    invalid_actions: u64,
    episodes: u64,
    /// Episodes finished since the last `drain_stats`.
    fresh_episodes: u64,
    /// Sum of the env's per-scenario `turnover` outputs (order notional / E0) since the last
    /// `drain_stats`, and the symbol-steps they cover.
    turnover_sum: f64,
    turnover_rows: u64,
    /// The cost curriculum's scale of the cost-term weight (1 = the env's own reward).
    cost_scale: f64,
    /// Staged onboarding: symbols `s >= tradable` may only HOLD.
    tradable: usize,
    /// The master action of a run without a learning master (`master.default_action`).
    default_master: u8,
    /// Joint training: the learning master that sets `master` (`train::joint`).
    seat: Option<Box<MasterSeat>>,
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
            fresh_episodes: 0,
            turnover_sum: 0.0,
            turnover_rows: 0,
            cost_scale: 1.0,
            tradable: usize::MAX,
            default_master: master_action as u8,
            seat: None,
            n,
            s,
            env,
        })
    }

    /// The wrapped environment (snapshots, statistics).
    pub fn inner_mut(&mut self) -> &mut env::VecEnv {
        &mut self.env
    }

    /// Let `seat` (joint training, `train::joint`) set the master directives from now on. Its
    /// sizes must be this env's.
    pub fn attach_master(&mut self, seat: MasterSeat) -> Result<()> {
        if seat.directives().len() != self.n {
            return Err(Error::invalid(format!(
                "a master seat for {} scenarios on an env of {}",
                seat.directives().len(),
                self.n
            )));
        }
        self.seat = Some(Box::new(seat));
        Ok(())
    }

    /// The attached learning master, if any.
    pub fn master_seat(&self) -> Option<&MasterSeat> {
        self.seat.as_deref()
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
        let env = &mut self.env;
        env.dyn_obs(&mut self.dyn_obs)?;
        env.action_mask(&mut self.mask)?;
        env.obs_index(&mut self.index)?;
        self.restrict_mask();
        Ok(())
    }

    /// Staged onboarding: symbols at or past `tradable` may only HOLD (action 0).
    fn restrict_mask(&mut self) {
        if self.tradable >= self.s {
            return;
        }
        // Rows are scenario-major: row r is symbol r % S.
        for (r, row) in self.mask.chunks_exact_mut(N_ACTIONS).enumerate() {
            if r % self.s >= self.tradable {
                row[1..].fill(0);
            }
        }
    }
}

/// Header of a saved state ([`TradingEnv`]'s `save_state`); the env's [`Snapshot::to_bytes`]
/// follows it.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct StateHeader {
    magic: [u8; 8],
    version: u32,
    master: u32,
    masked_actions: u64,
    invalid_actions: u64,
    episodes: u64,
}

impl StateHeader {
    const MAGIC: [u8; 8] = *b"MTTRADE\0";
    /// Bump when the state changes meaning (version 1 was a hand-written little-endian format).
    const VERSION: u32 = 2;
}

impl TradingEnv {
    fn encode(&self, snap: &Snapshot) -> Vec<u8> {
        let h = StateHeader {
            magic: StateHeader::MAGIC,
            version: StateHeader::VERSION,
            master: u32::from(self.default_master),
            masked_actions: self.masked_actions,
            invalid_actions: self.invalid_actions,
            episodes: self.episodes,
        };
        let mut out = bytemuck::bytes_of(&h).to_vec();
        out.extend_from_slice(&snap.to_bytes());
        out
    }

    /// The snapshot and the counters (masked, invalid, episodes) of a state.
    fn decode(&self, state: &[u8]) -> Result<(Snapshot, (u64, u64, u64))> {
        let hlen = std::mem::size_of::<StateHeader>();
        if state.len() < hlen {
            return Err(Error::env_state(format!(
                "trading env state is truncated: {} bytes, shorter than its {hlen}-byte header",
                state.len()
            )));
        }
        let (head, body) = state.split_at(hlen);
        let h: StateHeader = bytemuck::pod_read_unaligned(head);
        if h.magic != StateHeader::MAGIC {
            return Err(Error::env_state(
                "not a trading env state (bad magic; states of older versions are not readable)",
            ));
        }
        if h.version != StateHeader::VERSION {
            return Err(Error::env_state(format!(
                "trading env state has format version {}, this build reads version {}",
                h.version,
                StateHeader::VERSION
            )));
        }
        if h.master != u32::from(self.default_master) {
            return Err(Error::env_state(format!(
                "trading env state was saved with master action {}, this env uses {}",
                h.master, self.default_master
            )));
        }
        let snap = Snapshot::from_bytes(body, self.n, self.s)?;
        Ok((snap, (h.masked_actions, h.invalid_actions, h.episodes)))
    }
}

impl TrainEnv for TradingEnv {
    type Obs = SymbolObs;

    fn num_envs(&self) -> usize {
        self.n
    }

    fn agents_per_env(&self) -> usize {
        self.s
    }

    fn obs_dim(&self) -> usize {
        DYN_OBS
    }

    fn num_actions(&self) -> usize {
        N_ACTIONS
    }

    fn reset(&mut self, seed: u64) -> Result<SymbolObs> {
        self.inner_mut().reset(seed)?;
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
        if let Some(seat) = &mut self.seat {
            self.master
                .copy_from_slice(seat.before_step(&mut self.env)?);
        }
        let env = &mut self.env;
        let w_cost = env.layout().params.reward.w[COST];
        let out = env.step(&self.actions, &self.master)?;
        if let Some(seat) = &mut self.seat {
            seat.after_step(&out.master_reward, |i| out.done(i));
        }
        let mut rewards = out.reward.clone();
        if self.cost_scale != 1.0 {
            let extra = (self.cost_scale - 1.0) * w_cost;
            for (r, c) in rewards
                .iter_mut()
                .zip(out.components.chunks_exact(N_COMPONENTS))
            {
                *r = (f64::from(*r) + extra * f64::from(c[COST])) as f32;
            }
        }
        let dones: Vec<bool> = (0..out.terminated.len()).map(|n| out.done(n)).collect();
        self.turnover_sum += out.turnover.iter().map(|&x| f64::from(x)).sum::<f64>();
        self.turnover_rows += (out.reward.len()) as u64;
        let episodes = env
            .drain_finished()
            .into_iter()
            .map(|rec| {
                self.invalid_actions += u64::from(rec.invalid_actions);
                self.episodes += 1;
                self.fresh_episodes += 1;
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

    fn set_cost_scale(&mut self, scale: f64) {
        self.cost_scale = scale.clamp(0.0, 1.0);
    }

    fn set_tradable_symbols(&mut self, count: usize) -> Result<()> {
        if count != self.tradable {
            self.tradable = count;
            self.env.action_mask(&mut self.mask)?;
            self.restrict_mask();
        }
        Ok(())
    }

    fn begin_iteration(&mut self, iteration: usize, iterations: usize) -> Result<()> {
        if let Some(seat) = &mut self.seat {
            seat.begin_iteration(iteration, iterations);
        }
        Ok(())
    }

    fn agents_learn(&self) -> bool {
        self.seat.as_ref().is_none_or(|s| s.symbols_learn())
    }

    fn policy_outputs(&mut self, logits: &Tensor, mask: Option<&Tensor>) -> Result<()> {
        match &mut self.seat {
            Some(seat) => seat.policy_outputs(logits, mask),
            None => Ok(()),
        }
    }

    fn end_rollout(&mut self) -> Result<()> {
        match &mut self.seat {
            Some(seat) => seat.end_rollout(&mut self.env),
            None => Ok(()),
        }
    }

    fn save_files(&self, dir: &std::path::Path) -> Result<()> {
        match &self.seat {
            Some(seat) => seat.save(dir, self.env.master_anchors()),
            None => Ok(()),
        }
    }

    fn load_files(&mut self, dir: &std::path::Path) -> Result<()> {
        if let Some(seat) = &mut self.seat {
            let anchors = seat.load(dir)?;
            self.env.set_master_anchors(&anchors)?;
            self.master.copy_from_slice(seat.directives());
        }
        Ok(())
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(self.encode(&self.env.snapshot()?))
    }

    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let (snap, counters) = self.decode(state)?;
        self.inner_mut().load_snapshot(&snap)?;
        (self.masked_actions, self.invalid_actions, self.episodes) = counters;
        self.refresh()
    }

    /// `turnover`: traded notional / equity per symbol-step, `|q1 - q0| * O[t'] / E0` averaged over
    /// every symbol-step since the last call (all rollout steps, not only those of finished
    /// episodes; the step that ends a scenario's episode is left out, because the env has already
    /// reset that scenario when the adapter reads its positions). A full-cap buy of 10% of equity
    /// adds 0.1 to the sum; a policy that never trades reports 0.
    ///
    /// `reward.<component>`: the mean weighted term per symbol-step, and `reward_share.<component>`:
    /// its share of the absolute sums (spec §5, "Episode statistics"), over the episodes finished
    /// since the last call; missing when no episode finished. Shows a term that dominates or
    /// collapses (`train::signals` analyses all of these). Not restored on resume (the
    /// components of episodes in flight count from the resume only; see the module doc); the
    /// turnover is (a checkpoint is written between iterations, after `drain_stats`).
    ///
    /// `turnover` comes first, so that the CSV's last column stays `reward_share.divers`.
    fn stat_names(&self) -> Vec<String> {
        let names = crate::reward::COMPONENT_NAMES;
        let mut out: Vec<String> = std::iter::once(TURNOVER_STAT.to_string())
            .chain(names.iter().map(|c| format!("reward.{c}")))
            .chain(names.iter().map(|c| format!("reward_share.{c}")))
            .collect();
        if self.seat.is_some() {
            // Before the reward shares, so that the CSV's last column stays `reward_share.divers`.
            let at = 1 + names.len();
            out.splice(at..at, MasterSeat::stat_names());
        }
        out
    }

    fn drain_stats(&mut self) -> Vec<(String, f64)> {
        let stats = self.inner_mut().episode_stats();
        let rows = std::mem::take(&mut self.turnover_rows);
        let sum = std::mem::take(&mut self.turnover_sum);
        let mut out = Vec::new();
        if rows > 0 {
            out.push((TURNOVER_STAT.to_string(), sum / rows as f64));
        }
        if let Some(seat) = &mut self.seat {
            out.extend(seat.drain_stats());
        }
        if std::mem::take(&mut self.fresh_episodes) > 0 {
            out.extend(
                stats
                    .iter()
                    .map(|c| (format!("reward.{}", c.name), c.mean))
                    .chain(
                        stats
                            .iter()
                            .map(|c| (format!("reward_share.{}", c.name), c.share)),
                    ),
            );
        }
        out
    }

    fn observe(&self) -> Result<SymbolObs> {
        let (n, s) = (self.n, self.s);
        Ok(SymbolObs {
            keys: self.index.chunks_exact(2).map(|k| (k[0], k[1])).collect(),
            dyn_obs: Tensor::from_slice(&self.dyn_obs, (n, s, DYN_OBS), &self.device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::SyntheticConfig;
    use crate::env::{BackendKind, EnvSetup, Period};
    use crate::features::Features;

    fn make() -> (TradingEnv, EnvSetup) {
        make_with(2, 3)
    }

    fn make_with(scenarios: usize, symbols: usize) -> (TradingEnv, EnvSetup) {
        let mut cfg = EnvSetup::default();
        cfg.env.scenarios = scenarios;
        cfg.env.episode_len = 12;
        let synth = SyntheticConfig {
            symbols,
            bars: 400,
            ..SyntheticConfig::default()
        };
        let md = Arc::new(crate::data::generate(&synth, "SPY"));
        let feats = Arc::new(Features::compute(&md));
        let env = env::VecEnv::new(&cfg, md, feats, Period::Train, BackendKind::Cpu).unwrap();
        let te = TradingEnv::new(env, cfg.master.default_action, &Device::Cpu).unwrap();
        (te, cfg)
    }

    /// A legal action per row, varied with the step (deterministic).
    fn legal_actions(env: &TradingEnv, step: usize) -> Vec<u32> {
        let mask = env.action_mask().unwrap();
        mask.chunks_exact(N_ACTIONS)
            .enumerate()
            .map(|(r, m)| {
                let legal: Vec<u32> = (0..N_ACTIONS as u32)
                    .filter(|&a| m[a as usize] != 0)
                    .collect();
                legal[(r * 7 + step * 3) % legal.len()]
            })
            .collect()
    }

    type Trace = Vec<(
        Vec<(u32, u32)>,
        Vec<f32>,
        Vec<u8>,
        Vec<f32>,
        Vec<bool>,
        Vec<EpisodeInfo>,
    )>;

    fn play(env: &mut TradingEnv, from: usize, steps: usize) -> Trace {
        (from..from + steps)
            .map(|k| {
                let out = env.step(&legal_actions(env, k)).unwrap();
                let dyn_obs = out
                    .obs
                    .dyn_obs
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (
                    out.obs.keys,
                    dyn_obs,
                    env.action_mask().unwrap(),
                    out.rewards,
                    out.dones,
                    out.episodes,
                )
            })
            .collect()
    }

    #[test]
    fn layout_and_episodes() {
        let (mut env, cfg) = make();
        let obs = env.reset(3).unwrap();
        assert_eq!((env.num_envs(), env.agents_per_env()), (2, 3));
        assert_eq!(obs.keys.len(), 2);
        assert_eq!(obs.dyn_obs.dims(), &[2, 3, DYN_OBS]);
        let trace = play(&mut env, 0, 2 * cfg.env.episode_len);
        let eps: Vec<EpisodeInfo> = trace.iter().flat_map(|t| t.5.clone()).collect();
        assert!(eps.len() >= 2, "{eps:?}");
        assert!(
            eps.iter()
                .all(|e| e.ret.is_finite() && e.len >= 1 && e.env < 2)
        );
        assert_eq!((env.masked_actions(), env.invalid_actions()), (0, 0));
        // A masked action is counted by the adapter (and executed as HOLD by the env).
        // (Sells are masked where no position is held, so the mask is never all ones.)
        let mask = env.action_mask().unwrap();
        let i = mask
            .iter()
            .position(|&m| m == 0)
            .expect("some action is masked");
        let mut actions = vec![0u32; 6];
        actions[i / N_ACTIONS] = (i % N_ACTIONS) as u32;
        env.step(&actions).unwrap();
        assert_eq!(env.masked_actions(), 1);
    }

    #[test]
    fn turnover_counts_traded_notional_over_equity() {
        let (mut env, _) = make();
        env.reset(3).unwrap();
        // HOLD everywhere: nothing traded, turnover 0 (and no reward terms: no episode ended).
        env.step(&[0; 6]).unwrap();
        let stats = env.drain_stats();
        assert_eq!(stats, vec![(TURNOVER_STAT.to_string(), 0.0)]);
        assert!(env.drain_stats().is_empty(), "drained");
        // Buys of every size, partial and full sells: the statistic is sum |q1 - q0| O[t'] / E0
        // per symbol-step, recomputed here from the env's states before and after each step.
        let md = env.inner_mut().data().clone();
        for acts in [
            [3u32; 6],
            [1, 2, 3, 1, 2, 3],
            [4; 6],
            [5, 0, 4, 5, 0, 4],
            [6; 6],
        ] {
            let before = env.inner_mut().snapshot().unwrap();
            let index = env.index.clone();
            let out = env.step(&acts).unwrap();
            assert!(
                out.dones.iter().all(|d| !d),
                "no episode ends in these steps"
            );
            let after = env.inner_mut().snapshot().unwrap();
            let mut want = 0.0;
            for n in 0..2 {
                let (p, t) = (index[2 * n] as usize, index[2 * n + 1] as usize);
                let e0 = before.scenarios[n].equity;
                for s in 0..3 {
                    let dq = after.symbols.q[n * 3 + s] - before.symbols.q[n * 3 + s];
                    want += dq.abs() * f64::from(md.open[md.px(p, t + 1, s)]) / e0;
                }
            }
            want /= 6.0;
            let t = env
                .drain_stats()
                .into_iter()
                .find(|(k, _)| k == TURNOVER_STAT)
                .map(|(_, v)| v)
                .unwrap();
            assert!(
                (t - want).abs() <= 1e-6 * want.max(1e-12),
                "actions {acts:?}: turnover {t}, from the states {want}"
            );
        }
        assert_eq!(env.stat_names()[0], TURNOVER_STAT);
        assert_eq!(env.stat_names().last().unwrap(), "reward_share.divers");
    }

    #[test]
    fn onboarding_holds_the_symbols_not_yet_tradable() {
        let (mut env, _) = make();
        env.reset(3).unwrap();
        // BUY everywhere, then a mix of steps: some symbols hold positions (sells allowed).
        env.step(&[3; 6]).unwrap();
        let full = env.action_mask().unwrap();
        env.set_tradable_symbols(1).unwrap();
        let restricted = env.action_mask().unwrap();
        for (r, (f, g)) in full
            .chunks_exact(N_ACTIONS)
            .zip(restricted.chunks_exact(N_ACTIONS))
            .enumerate()
        {
            if r % 3 == 0 {
                assert_eq!(f, g, "row {r}: symbol 0 is tradable, its mask is the env's");
            } else {
                assert_eq!(g, &[1, 0, 0, 0, 0, 0, 0], "row {r}: only HOLD");
            }
        }
        assert!(full.chunks_exact(N_ACTIONS).any(|m| m[1..].contains(&1)));
        // It stays restricted after a step, and lifting it restores the env's mask.
        let actions = legal_actions(&env, 1);
        assert!(
            actions
                .iter()
                .enumerate()
                .all(|(r, &a)| r % 3 == 0 || a == 0)
        );
        env.step(&actions).unwrap();
        let m = env.action_mask().unwrap();
        assert!(
            m.chunks_exact(N_ACTIONS)
                .enumerate()
                .all(|(r, row)| r % 3 == 0 || row[1..].iter().all(|&x| x == 0))
        );
        env.set_tradable_symbols(usize::MAX).unwrap();
        let mut want = vec![0u8; 6 * N_ACTIONS];
        env.inner_mut().action_mask(&mut want).unwrap();
        assert_eq!(env.action_mask().unwrap(), want);
        assert_eq!(env.masked_actions(), 0);
    }

    #[test]
    fn cost_scale_removes_that_share_of_the_cost_term() {
        assert_eq!(crate::reward::COMPONENT_NAMES[COST], "cost");
        let (mut full, _) = make();
        let (mut ramped, _) = make();
        full.reset(3).unwrap();
        ramped.reset(3).unwrap();
        let mut traded = false;
        for (i, scale) in [1.0, 0.0, 0.25, 1.0]
            .into_iter()
            .cycle()
            .take(24)
            .enumerate()
        {
            ramped.set_cost_scale(scale);
            let actions = legal_actions(&full, i);
            let want = full.step(&actions).unwrap().rewards;
            let got = ramped.step(&actions).unwrap().rewards;
            let out = full.inner_mut().outputs().clone();
            let w_cost = full.inner_mut().layout().params.reward.w[COST];
            for (r, ((g, w), c)) in got
                .iter()
                .zip(&want)
                .zip(out.components.chunks_exact(N_COMPONENTS))
                .enumerate()
            {
                if scale == 1.0 {
                    assert_eq!(g.to_bits(), w.to_bits(), "row {r}: scale 1 passes through");
                } else {
                    let expect = f64::from(*w) - (1.0 - scale) * w_cost * f64::from(c[COST]);
                    assert!((f64::from(*g) - expect).abs() <= 1e-6 * expect.abs().max(1e-6));
                    traded |= c[COST] != 0.0;
                }
            }
        }
        assert!(traded, "some step paid costs");
    }

    #[test]
    fn state_round_trip_resumes_the_trajectory() {
        let (mut a, _) = make();
        a.reset(5).unwrap();
        play(&mut a, 0, 17);
        let state = a.save_state().unwrap();
        let want = play(&mut a, 17, 30);

        let (mut b, _) = make();
        b.load_state(&state).unwrap();
        assert_eq!(b.save_state().unwrap(), state);
        let got = play(&mut b, 17, 30);
        assert_eq!(got, want);
        assert_eq!(b.save_state().unwrap(), a.save_state().unwrap());

        assert!(b.load_state(&state[..state.len() - 1]).is_err());
        assert!(b.load_state(b"garbage").is_err());
    }

    #[test]
    fn foreign_old_or_truncated_states_are_refused() {
        let (mut a, _) = make();
        a.reset(5).unwrap();
        play(&mut a, 0, 3);
        let state = a.save_state().unwrap();
        let (mut b, _) = make();
        let refused = |b: &mut TradingEnv, st: &[u8], what: &str| {
            let e = b.load_state(st).expect_err(what).to_string();
            assert!(e.contains(what), "expected `{what}` in: {e}");
        };
        let patched = |at: usize, v: u8| {
            let mut x = state.clone();
            x[at] = v;
            x
        };
        let h = std::mem::size_of::<StateHeader>();
        refused(&mut b, b"garbage", "truncated");
        refused(&mut b, &patched(0, b'X'), "bad magic");
        refused(&mut b, &patched(8, 1), "format version 1");
        refused(&mut b, &patched(12, 7), "master action 7");
        // the env snapshot's own header follows the adapter's
        refused(&mut b, &patched(h, b'X'), "not an environment snapshot");
        refused(&mut b, &patched(h + 8, 9), "format version 9");
        refused(&mut b, &state[..h + 10], "truncated");
        refused(&mut b, &state[..state.len() - 1], "truncated");
        let mut long = state.clone();
        long.push(0);
        refused(&mut b, &long, "trailing bytes");
        for (n, s) in [(3, 3), (2, 4)] {
            let (mut other, _) = make_with(n, s);
            refused(
                &mut other,
                &state,
                &format!("saved for N = 2 scenarios, S = 3 symbols; this env has N = {n}, S = {s}"),
            );
        }
        // nothing above changed b: the good state still loads
        b.load_state(&state).unwrap();
        assert_eq!(b.save_state().unwrap(), state);
    }
}
