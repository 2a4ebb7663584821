/*!
The portfolio master's trainer: MAPPO (Yu et al. 2022, "The Surprising Effectiveness of PPO in
Cooperative Multi-Agent Games", and its `on-policy` reference implementation) for the master of
every scenario, with the symbol agents held fixed.

**What is trained.** One [`MasterNet`] (actor and critic on a shared trunk, as the design draws it)
drives the master of all N scenarios of a [`VecEnv`]. The master decides every
[`MasterPpoConfig::decision_interval`] bars: it reads the master observation (docs/env-spec.md §8,
[`VecEnv::master_obs`]) with the symbol agents' intents, samples one of the 48 directives, and the
directive is held for the interval while a fixed [`SymbolDriver`] plays the symbols. Its reward for
the decision is the sum of the §5 master rewards over the interval's steps. The critic is
centralized: its input is the global portfolio state of the scenario (telemetry and regime of the
whole portfolio plus every symbol agent's intents), which is also the master's observation, so
actor and critic read the same vector, as in the design's network. (With one master per scenario
there is no other agent whose observation the critic could add; the symbol agents' critics are
unchanged: they are not trained here.)

**The update**, per iteration, as the reference does it: a rollout of
[`MasterPpoConfig::decisions`] decisions of every scenario; the critic's outputs are in normalised
units and are de-normalised with the running [`ValueNorm`] before GAE (`gamma`, `gae_lambda`; an
episode that ends inside an interval ends the decision's trajectory: its next value is not
bootstrapped, and the steps of the new episode left in that interval are not credited to any
decision); the returns update the `ValueNorm`, and the value targets are the returns normalised
with the updated statistics; then `epochs` passes over the batch in `minibatches` shuffled
minibatches with the clipped surrogate (`clip_coef`), advantages normalised per minibatch, the
clipped value loss `max((v - R)^2, (v_old + clip(v - v_old, -value_clip, value_clip) - R)^2)` in
normalised units (the reference's with the squared instead of the Huber loss), an entropy bonus
annealed linearly from `ent_coef_start` to `ent_coef_end` over the iterations, one AdamW
optimiser over all parameters, and the gradients clipped to a global norm of `max_grad_norm`.

**Symbol agents.** [`CapFollower`] is the scripted symbol policy used so far: it keeps every symbol
near the directive's per-position cap (sells part of a position above 1.5 cap, buys below 0.5 cap,
holds otherwise), so the directive decides the portfolio's exposure. Its intents are those of a
deterministic policy (the action distribution is the one-hot of the chosen action, entropy 0).
[`PolicyDriver`] plays a trained symbol checkpoint greedily instead, with the policy's own intents;
[`Symbols`] is either. Joint training (the symbol agents learning too, in one rollout) drives the
same [`MasterLearner`] from inside the symbol agents' rollout: `train::joint`.

**Checkpoints** ([`MasterPpo::save`], [`MasterPpo::resume`], [`load_master_net`]): the network,
AdamW's moments, the training env's snapshot with the master anchors and the next observation,
and [`MasterTrainState`] (the configuration, counters, the random stream's position, the
`ValueNorm` statistics as bit patterns), each file atomic, the state last; a resume continues
bit-identically.

Every loss and statistic of an iteration is in [`MasterMetrics`], one JSON line per iteration.
*/

use std::io::Write;
use std::path::Path;

use candle_core::{D, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, AdamWConfig};
use super::checkpoint;
use super::ppo::clip_grad_norm;
use super::train_env::{ResumableRng, RngState};
use super::value_norm::ValueNorm;
use crate::agents::dist::MaskedCategorical;
use crate::agents::init::named_vars;
use crate::agents::master::{MasterNet, MasterNetConfig, SymbolIntents};
use crate::agents::{ActorCritic, AgentSpec, SymbolObs, SymbolPolicy};
use crate::env::master_obs::{MASTER_INTENTS, MASTER_OBS, MasterAnchor};
use crate::env::{MASTER_ACTIONS, N_ACTIONS, Snapshot, VecEnv, logic, obs};
use crate::error::{Error, Result};
use crate::market::Market;

/// The master trainer's hyperparameters (defaults: the MAPPO reference's where it has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterPpoConfig {
    /// Bars between two master decisions; the directive is held in between. Default 7: one
    /// trading day of the default hourly bars.
    pub decision_interval: usize,
    /// Decisions per scenario in one rollout (the batch is `N * decisions` decisions).
    pub decisions: usize,
    /// Training iterations (rollout + update).
    pub iterations: usize,
    /// Passes over the batch per update (reference: 5 to 15; default 5).
    pub epochs: usize,
    /// Minibatches per pass (reference: 1).
    pub minibatches: usize,
    /// Discount per decision (reference 0.99).
    pub gamma: f64,
    /// GAE lambda (reference 0.95).
    pub gae_lambda: f64,
    /// PPO ratio clip (reference 0.2).
    pub clip_coef: f64,
    /// Value clip in normalised units (reference: the same 0.2).
    pub value_clip: f64,
    /// Weight of the value loss (reference 1).
    pub value_coef: f64,
    /// Entropy coefficient of the first iteration (reference 0.01).
    pub ent_coef_start: f64,
    /// Entropy coefficient of the last iteration (linear in between; 0 anneals it away).
    pub ent_coef_end: f64,
    /// Global gradient-norm clip (reference 10).
    pub max_grad_norm: f64,
    /// AdamW learning rate (reference 5e-4), constant.
    pub lr: f64,
    /// `ValueNorm` EMA weight (reference 0.99999).
    pub value_norm_beta: f64,
    /// Seed of the network's initialisation, of the action sampling and shuffling, and of the
    /// training environment's episodes (`marl-trade train-master`).
    pub seed: u64,
    /// The network's sizes (`[master_ppo.net]`; defaults the design's 256 / 128).
    pub net: MasterNetConfig,
    /// Weight of a KL term `kl_default_coef * KL(pi || p0)` in the loss, toward a prior `p0` that
    /// puts `kl_default_mass` on the default directive (`master.default_action`) and the rest
    /// evenly on the other 47: the master leaves the default posture only where that pays more
    /// than the KL costs (the symbol agents' KL toward their supervised priors, for the master).
    /// Default 0: off (not in the MAPPO reference). Logged as `kl_default`.
    pub kl_default_coef: f64,
    /// The prior's mass on the default directive, in (1/48, 1). Default 0.9.
    pub kl_default_mass: f64,
}

impl Default for MasterPpoConfig {
    fn default() -> Self {
        Self {
            decision_interval: 7,
            decisions: 16,
            iterations: 100,
            epochs: 5,
            minibatches: 1,
            gamma: 0.99,
            gae_lambda: 0.95,
            clip_coef: 0.2,
            value_clip: 0.2,
            value_coef: 1.0,
            ent_coef_start: 0.01,
            ent_coef_end: 0.0,
            max_grad_norm: 10.0,
            lr: 5e-4,
            value_norm_beta: 0.99999,
            seed: 1,
            net: MasterNetConfig::default(),
            kl_default_coef: 0.0,
            kl_default_mass: 0.9,
        }
    }
}

impl MasterPpoConfig {
    /// Range checks; an error names the field (`origin` names the config source).
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |f: &str, why: &str| Err(Error::config_field(origin, f, why.to_string()));
        for (f, v) in [
            ("master_ppo.decision_interval", self.decision_interval),
            ("master_ppo.decisions", self.decisions),
            ("master_ppo.iterations", self.iterations),
            ("master_ppo.epochs", self.epochs),
            ("master_ppo.minibatches", self.minibatches),
        ] {
            if v == 0 {
                return bad(f, "must be >= 1");
            }
        }
        for (f, v) in [
            ("master_ppo.gamma", self.gamma),
            ("master_ppo.gae_lambda", self.gae_lambda),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(f, "must be in [0, 1]");
            }
        }
        for (f, v) in [
            ("master_ppo.clip_coef", self.clip_coef),
            ("master_ppo.value_clip", self.value_clip),
            ("master_ppo.max_grad_norm", self.max_grad_norm),
            ("master_ppo.lr", self.lr),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(f, "must be a positive number");
            }
        }
        for (f, v) in [
            ("master_ppo.value_coef", self.value_coef),
            ("master_ppo.ent_coef_start", self.ent_coef_start),
            ("master_ppo.ent_coef_end", self.ent_coef_end),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(f, "must be a number >= 0");
            }
        }
        if !(self.kl_default_coef.is_finite() && self.kl_default_coef >= 0.0) {
            return bad("master_ppo.kl_default_coef", "must be a number >= 0");
        }
        if !(self.kl_default_mass > 1.0 / MASTER_ACTIONS as f64 && self.kl_default_mass < 1.0) {
            return bad("master_ppo.kl_default_mass", "must be in (1/48, 1)");
        }
        if !(0.0..1.0).contains(&self.value_norm_beta) {
            return bad("master_ppo.value_norm_beta", "must be in [0, 1)");
        }
        self.net.validate(origin)
    }
}

/// The symbol agents as the master's trainer sees them: fixed, they choose the symbol actions of
/// a step under the master's actions and report their intents.
pub trait SymbolDriver {
    /// Symbol actions `[N, S]` for the env's current state under the master actions `master`
    /// (`[N]`), and the intents `[N, MASTER_INTENTS]` of that choice.
    fn act(
        &mut self,
        env: &mut VecEnv,
        master: &[u8],
        actions: &mut [u8],
        intents: &mut [f32],
    ) -> Result<()>;
}

/// The scripted cap-following symbol policy (see the module doc).
#[derive(Debug, Default)]
pub struct CapFollower {
    dyn_obs: Vec<f32>,
}

impl SymbolDriver for CapFollower {
    fn act(
        &mut self,
        env: &mut VecEnv,
        master: &[u8],
        actions: &mut [u8],
        intents: &mut [f32],
    ) -> Result<()> {
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        self.dyn_obs.resize(n * s * obs::DYN_OBS, 0.0);
        env.dyn_obs(&mut self.dyn_obs)?;
        let params = env.layout().params;
        let inv = 1.0 / s as f32;
        for i in 0..n {
            let cap = logic::directive(&params, master[i]).cap as f32;
            let out = &mut intents[i * MASTER_INTENTS..(i + 1) * MASTER_INTENTS];
            out.fill(0.0);
            for j in 0..s {
                let row = &self.dyn_obs[(i * s + j) * obs::DYN_OBS..][..obs::DYN_OBS];
                let has = row[obs::POSITION.start] > 0.0;
                let w = row[obs::POSITION.start + 3];
                let a = if has && w > 1.5 * cap {
                    4 // SELL_PARTIAL
                } else if w < 0.5 * cap {
                    3 // BUY_LARGE
                } else {
                    0 // HOLD
                };
                actions[i * s + j] = a;
                out[a as usize] += inv;
                if a == 3 {
                    out[N_ACTIONS] += inv;
                } else if a == 4 {
                    out[N_ACTIONS + 1] += inv;
                }
            }
        }
        Ok(())
    }
}

/// A trained symbol policy as the master's fixed symbol agents: greedy (the most probable action
/// the mask allows, the first of equal ones), its intents the policy's own under the mask
/// ([`SymbolIntents::from_logits`]: mean action probabilities, buy and sell fractions of the
/// argmax, mean entropy). Deterministic, and it keeps no state between calls.
pub struct PolicyDriver {
    policy: SymbolPolicy,
    dyn_obs: Vec<f32>,
    mask: Vec<u8>,
    index: Vec<u32>,
}

impl PolicyDriver {
    /// The policy of symbol checkpoint directory `dir` (`model.safetensors` + `state.json`, as
    /// `marl-trade train` writes them) over `market`; its symbols must be the market's (count
    /// checked here, names by the caller when it has them).
    pub fn from_checkpoint(dir: &Path, market: &Market) -> Result<Self> {
        let spec: AgentSpec = checkpoint::read_policy_config(dir)?;
        if spec.dims.symbols != market.data.n_symbols() {
            return Err(Error::new(
                crate::error::ErrorKind::SymbolMismatch,
                format!(
                    "the symbol checkpoint's agent has {} symbols, the data {}",
                    spec.dims.symbols,
                    market.data.n_symbols()
                ),
            )
            .with_file(dir));
        }
        let (policy, vm) =
            super::setup::build_policy(&spec.config, spec.dims, market, 0, &Device::Cpu)?;
        checkpoint::load_params(&vm, &dir.join(checkpoint::MODEL_FILE))?;
        Ok(Self {
            policy,
            dyn_obs: Vec::new(),
            mask: Vec::new(),
            index: Vec::new(),
        })
    }
}

impl SymbolDriver for PolicyDriver {
    fn act(
        &mut self,
        env: &mut VecEnv,
        _master: &[u8],
        actions: &mut [u8],
        intents: &mut [f32],
    ) -> Result<()> {
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        self.dyn_obs.resize(n * s * obs::DYN_OBS, 0.0);
        self.mask.resize(n * s * N_ACTIONS, 0);
        self.index.resize(2 * n, 0);
        env.dyn_obs(&mut self.dyn_obs)?;
        env.action_mask(&mut self.mask)?;
        env.obs_index(&mut self.index)?;
        let dev = self.policy.device().clone();
        let sobs = SymbolObs {
            keys: self.index.chunks_exact(2).map(|k| (k[0], k[1])).collect(),
            dyn_obs: Tensor::from_slice(&self.dyn_obs, (n, s, obs::DYN_OBS), &dev)?,
        };
        let (logits, _) = self.policy.forward_inference(&sobs)?;
        let logits = logits
            .to_dtype(candle_core::DType::F32)?
            .reshape((n * s, N_ACTIONS))?;
        let mask = Tensor::from_slice(&self.mask, (n * s, N_ACTIONS), &dev)?;
        let it = SymbolIntents::from_logits(&logits, Some(&mask), s)?;
        intents.copy_from_slice(&it.values);
        let l = logits.to_vec2::<f32>()?;
        for ((a, row), m) in actions
            .iter_mut()
            .zip(&l)
            .zip(self.mask.chunks_exact(N_ACTIONS))
        {
            let mut best = 0usize;
            let mut best_v = f32::NEG_INFINITY;
            for (k, (&v, &ok)) in row.iter().zip(m).enumerate() {
                if ok != 0 && v > best_v {
                    (best, best_v) = (k, v);
                }
            }
            *a = best as u8;
        }
        Ok(())
    }
}

/// The symbol agents a master trains and plays with: the scripted [`CapFollower`] or a trained
/// policy ([`PolicyDriver`]).
pub enum Symbols {
    /// The scripted cap follower.
    CapFollower(CapFollower),
    /// A trained symbol policy.
    Policy(Box<PolicyDriver>),
}

impl SymbolDriver for Symbols {
    fn act(
        &mut self,
        env: &mut VecEnv,
        master: &[u8],
        actions: &mut [u8],
        intents: &mut [f32],
    ) -> Result<()> {
        match self {
            Self::CapFollower(d) => d.act(env, master, actions, intents),
            Self::Policy(d) => d.act(env, master, actions, intents),
        }
    }
}

/// How the master plays in an evaluation.
#[derive(Clone, Copy)]
pub enum MasterPlay<'a> {
    /// The learned master, its most probable directive at each decision.
    Greedy(&'a MasterNet),
    /// One directive throughout.
    Fixed(u8),
    /// A scripted master: the directive as a function of one scenario's master observation
    /// (`MASTER_OBS` floats), e.g. a rule on the VIX; a value outside the grid is an error.
    Rule(&'a dyn Fn(&[f32]) -> u8),
}

impl std::fmt::Debug for MasterPlay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Greedy(_) => write!(f, "Greedy"),
            Self::Fixed(m) => write!(f, "Fixed({m})"),
            Self::Rule(_) => write!(f, "Rule"),
        }
    }
}

/// One iteration's statistics (one JSON line of the master's metrics file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterMetrics {
    /// 1-based iteration.
    pub iteration: usize,
    /// Entropy coefficient of the iteration.
    pub ent_coef: f64,
    /// Clipped surrogate loss (mean over the iteration's minibatches).
    pub policy_loss: f64,
    /// Clipped value loss in normalised units (mean over minibatches).
    pub value_loss: f64,
    /// Mean entropy of the directive distribution (nats; uniform over 48 is 3.87).
    pub entropy: f64,
    /// `mean((ratio - 1) - log ratio)` (last minibatch).
    pub approx_kl: f64,
    /// Fraction of decisions whose ratio was clipped (mean over minibatches).
    pub clipfrac: f64,
    /// Global gradient norm before clipping (mean over minibatches).
    pub grad_norm: f64,
    /// Mean summed master reward per decision of the rollout.
    pub reward_mean: f64,
    /// `ValueNorm`'s running mean and standard deviation of the returns after the update.
    pub value_norm_mean: f64,
    /// See `value_norm_mean`.
    pub value_norm_std: f64,
    /// `1 - Var[R - V] / Var[R]` of the rollout's de-normalised values.
    pub explained_variance: Option<f64>,
    /// Share of the rollout's decisions that chose each regime mode (defensive, neutral,
    /// aggressive).
    pub mode_share: [f64; 3],
    /// Mean position cap of the rollout's decisions.
    pub cap_mean: f64,
    /// `KL(pi || p0)` toward the default-directive prior (mean over the last minibatch; 0 when
    /// `kl_default_coef` is 0).
    #[serde(default)]
    pub kl_default: f64,
}

/// One rollout of master decisions of every scenario, decision-major (row `d * n + i` is
/// scenario `i`'s decision `d`), as [`MasterLearner::update`] reads it.
#[derive(Debug, Clone, Default)]
pub struct MasterBatch {
    /// Scenarios N.
    n: usize,
    /// Master observations `[D * N, MASTER_OBS]`.
    obs: Vec<f32>,
    /// Directives chosen.
    acts: Vec<u32>,
    /// Their log-probabilities under the sampling policy.
    logps: Vec<f32>,
    /// The critic's outputs (normalised units).
    vals: Vec<f32>,
    /// The §5 master rewards summed over each decision's interval.
    rews: Vec<f32>,
    /// The decision's trajectory ended inside its interval (the episode ended).
    dones: Vec<bool>,
}

impl MasterBatch {
    /// An empty batch for `n` scenarios.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            ..Self::default()
        }
    }

    /// Decisions D recorded (per scenario).
    pub fn decisions(&self) -> usize {
        self.acts.len() / self.n.max(1)
    }

    /// Forget every decision.
    pub fn clear(&mut self) {
        let n = self.n;
        *self = Self::new(n);
    }

    /// Add the rewards `rewards` (`[N]`) of one step to the last decision of every scenario whose
    /// trajectory has not ended; `done(i)`: the step ended scenario `i`'s episode, which ends its
    /// decision's trajectory (the steps of the new episode left in the interval are credited to
    /// no decision).
    pub fn accumulate(&mut self, rewards: &[f32], done: impl Fn(usize) -> bool) {
        let base = self.rews.len() - self.n;
        let last = self.rews[base..].iter_mut().zip(&mut self.dones[base..]);
        for (i, ((r, d), &x)) in last.zip(rewards).enumerate() {
            if !*d {
                *r += x;
                *d = done(i);
            }
        }
    }
}

/// The master's learning state: the [`MasterNet`], AdamW, the [`ValueNorm`], the random stream of
/// its sampling and shuffling, and the count of updates. [`MasterPpo`] drives it over its own
/// rollouts of fixed symbol agents; joint training (`train::joint`) drives it inside the symbol
/// agents' rollout.
pub struct MasterLearner {
    cfg: MasterPpoConfig,
    net: MasterNet,
    varmap: VarMap,
    opt: AdamW,
    vnorm: ValueNorm,
    rng: ResumableRng,
    iteration: usize,
}

impl MasterLearner {
    /// A fresh [`MasterNet`] (`cfg.net`, initialised from `cfg.seed`) with its optimiser.
    pub fn new(cfg: MasterPpoConfig) -> Result<Self> {
        cfg.validate("master_ppo")?;
        let varmap = VarMap::new();
        let net = MasterNet::build(MASTER_OBS, &cfg.net, &varmap, cfg.seed, &Device::Cpu)?;
        let opt = AdamW::new(
            named_vars(&varmap),
            AdamWConfig {
                lr: cfg.lr,
                weight_decay: 0.0,
                eps: 1e-5,
                ..AdamWConfig::default()
            },
        )?;
        let vnorm = ValueNorm::new(cfg.value_norm_beta, 1e-5)?;
        Ok(Self {
            rng: ResumableRng::new(cfg.seed ^ 0x6d61_7374_6572),
            cfg,
            net,
            varmap,
            opt,
            vnorm,
            iteration: 0,
        })
    }

    /// The network.
    pub fn net(&self) -> &MasterNet {
        &self.net
    }

    /// Its parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The configuration.
    pub fn config(&self) -> &MasterPpoConfig {
        &self.cfg
    }

    /// Updates done.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// Sample a directive per scenario from the master observations `obs` (`[N, MASTER_OBS]`)
    /// into `out` (`[N]`); with `batch`, record the decision (observation, directive,
    /// log-probability, value, a zero reward) there.
    pub fn sample(
        &mut self,
        obs: &[f32],
        out: &mut [u8],
        batch: Option<&mut MasterBatch>,
    ) -> Result<()> {
        let n = out.len();
        let x = Tensor::from_slice(obs, (n, MASTER_OBS), &Device::Cpu)?;
        let (logits, value) = self.net.forward(&x)?;
        let dist = MaskedCategorical::new(&logits, None)?;
        let lp = dist.log_probs().to_vec2::<f32>()?;
        for (m, row) in out.iter_mut().zip(&lp) {
            *m = crate::agents::dist::sample_row(row, self.rng.uniform()) as u8;
        }
        if let Some(b) = batch {
            if b.n != n {
                return Err(Error::invalid(format!(
                    "master batch of {} scenarios, {n} directives",
                    b.n
                )));
            }
            b.obs.extend_from_slice(obs);
            b.acts.extend(out.iter().map(|&m| u32::from(m)));
            b.logps
                .extend(lp.iter().zip(out.iter()).map(|(row, &m)| row[m as usize]));
            b.vals.extend(value.to_vec1::<f32>()?);
            b.rews.extend(std::iter::repeat_n(0.0, n));
            b.dones.extend(std::iter::repeat_n(false, n));
        }
        Ok(())
    }

    /// The most probable directive per scenario (the first of equal ones).
    pub fn greedy(&self, obs: &[f32], out: &mut [u8]) -> Result<()> {
        greedy_directives(&self.net, obs, out)
    }

    /// The MAPPO update on `batch` (see the module doc), `next_obs` (`[N, MASTER_OBS]`) the
    /// observation after its last decision (its value bootstraps the returns), `ent_coef` the
    /// entropy coefficient of this update; `params` resolve the directives' caps for the
    /// metrics. Counts one iteration.
    pub fn update(
        &mut self,
        batch: &MasterBatch,
        next_obs: &[f32],
        ent_coef: f64,
        params: &logic::StepParams,
    ) -> Result<MasterMetrics> {
        let c = self.cfg.clone();
        let n = batch.n;
        let d_n = batch.decisions();
        let dev = Device::Cpu;
        if d_n == 0 || next_obs.len() != n * MASTER_OBS {
            return Err(Error::invalid(format!(
                "master update: {d_n} decisions, a next observation of {} values for {n} scenarios",
                next_obs.len()
            )));
        }
        let (rews, dones, vals) = (&batch.rews, &batch.dones, &batch.vals);
        // Bootstrap value of the state after the rollout.
        let x = Tensor::from_slice(next_obs, (n, MASTER_OBS), &dev)?;
        let mut next_v = self.net.forward(&x)?.1.to_vec1::<f32>()?;
        self.vnorm.denormalize(&mut next_v);
        let mut v_den = vals.clone();
        self.vnorm.denormalize(&mut v_den);
        let mut adv = vec![0f32; d_n * n];
        for (i, &boot) in next_v.iter().enumerate() {
            let mut last = 0f64;
            for d in (0..d_n).rev() {
                let k = d * n + i;
                let nonterm = if dones[k] { 0.0 } else { 1.0 };
                let nv = if d + 1 == d_n { boot } else { v_den[k + n] } as f64;
                let delta = rews[k] as f64 + c.gamma * nv * nonterm - v_den[k] as f64;
                last = delta + c.gamma * c.gae_lambda * nonterm * last;
                adv[k] = last as f32;
            }
        }
        let returns: Vec<f32> = adv.iter().zip(&v_den).map(|(a, v)| a + v).collect();
        let explained_variance = explained_variance(&v_den, &returns);
        self.vnorm.update(&returns)?;
        let mut targets = returns.clone();
        self.vnorm.normalize(&mut targets);

        // Update.
        let b = d_n * n;
        let obs_t = Tensor::from_slice(&batch.obs, (b, MASTER_OBS), &dev)?;
        let acts_t = Tensor::from_slice(&batch.acts, b, &dev)?;
        let mb = b.div_ceil(c.minibatches);
        let (mut pl_sum, mut vl_sum, mut ent_sum, mut cf_sum, mut gn_sum) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut approx_kl = 0.0;
        let mut count = 0usize;
        let params_list = named_vars(&self.varmap);
        let mut idx: Vec<u32> = (0..b as u32).collect();
        // The default-directive prior's log-probabilities `[1, 48]` (with kl_default_coef > 0).
        let log_p0 = if c.kl_default_coef > 0.0 {
            let rest = ((1.0 - c.kl_default_mass) / (MASTER_ACTIONS - 1) as f64).ln() as f32;
            let mut v = vec![rest; MASTER_ACTIONS];
            v[params.default_action as usize] = c.kl_default_mass.ln() as f32;
            Some(Tensor::from_vec(v, (1, MASTER_ACTIONS), &dev)?)
        } else {
            None
        };
        let mut kl_last = 0.0;
        for _ in 0..c.epochs {
            self.rng.shuffle(&mut idx);
            for chunk in idx.chunks(mb) {
                let ix = Tensor::from_slice(chunk, chunk.len(), &dev)?;
                let sel =
                    |v: &[f32]| -> Vec<f32> { chunk.iter().map(|&j| v[j as usize]).collect() };
                let mut a = sel(&adv);
                let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
                let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>()
                    / (a.len().max(2) - 1) as f64;
                let sd = var.sqrt() + 1e-8;
                for x in &mut a {
                    *x = ((*x as f64 - mean) / sd) as f32;
                }
                let m = chunk.len();
                let adv_t = Tensor::from_vec(a, m, &dev)?;
                let old_lp = Tensor::from_vec(sel(&batch.logps), m, &dev)?;
                let old_v = Tensor::from_vec(sel(vals), m, &dev)?;
                let tgt = Tensor::from_vec(sel(&targets), m, &dev)?;
                let (logits, v) = self.net.forward(&obs_t.index_select(&ix, 0)?)?;
                let dist = MaskedCategorical::new(&logits, None)?;
                let lp = dist.log_prob(&acts_t.index_select(&ix, 0)?)?;
                let log_ratio = (&lp - &old_lp)?;
                let ratio = log_ratio.exp()?;
                let pg1 = (&adv_t.neg()? * &ratio)?;
                let pg2 = (&adv_t.neg()?
                    * ratio.clamp(1.0 - c.clip_coef as f32, 1.0 + c.clip_coef as f32)?)?;
                let pg_loss = pg1.maximum(&pg2)?.mean_all()?;
                let vc =
                    (&old_v + (&v - &old_v)?.clamp(-c.value_clip as f32, c.value_clip as f32)?)?;
                let vl = (&v - &tgt)?.sqr()?.maximum(&(&vc - &tgt)?.sqr()?)?;
                let v_loss = vl.mean_all()?;
                let entropy = dist.entropy()?.mean_all()?;
                let mut loss = ((&pg_loss - (&entropy * ent_coef)?)? + (&v_loss * c.value_coef)?)?;
                if let Some(lp0) = &log_p0 {
                    let logp = dist.log_probs();
                    let kl = (logp.exp()? * logp.broadcast_sub(lp0)?)?
                        .sum(1)?
                        .mean_all()?;
                    kl_last = kl.to_scalar::<f32>()? as f64;
                    loss = (loss + (kl * c.kl_default_coef)?)?;
                }
                let mut grads = loss.backward()?;
                let gn = clip_grad_norm(&mut grads, &params_list, c.max_grad_norm)?;
                self.opt.step(&grads)?;
                let r = ratio.to_vec1::<f32>()?;
                let lr_v = log_ratio.to_vec1::<f32>()?;
                cf_sum += r
                    .iter()
                    .filter(|&&x| (x as f64 - 1.0).abs() > c.clip_coef)
                    .count() as f64
                    / m as f64;
                approx_kl = r
                    .iter()
                    .zip(&lr_v)
                    .map(|(&x, &l)| (x as f64 - 1.0) - l as f64)
                    .sum::<f64>()
                    / m as f64;
                pl_sum += pg_loss.to_scalar::<f32>()? as f64;
                vl_sum += v_loss.to_scalar::<f32>()? as f64;
                ent_sum += entropy.to_scalar::<f32>()? as f64;
                gn_sum += gn;
                count += 1;
            }
        }
        self.iteration += 1;
        let mut modes = [0usize; 3];
        let mut cap_sum = 0.0;
        for &m in &batch.acts {
            modes[m as usize % 3] += 1;
            cap_sum += logic::directive(params, m as u8).cap;
        }
        let (vm, vv) = self.vnorm.mean_var();
        let k = count as f64;
        let decisions = b as f64;
        Ok(MasterMetrics {
            iteration: self.iteration,
            ent_coef,
            policy_loss: pl_sum / k,
            value_loss: vl_sum / k,
            entropy: ent_sum / k,
            approx_kl,
            clipfrac: cf_sum / k,
            grad_norm: gn_sum / k,
            reward_mean: rews.iter().map(|&r| r as f64).sum::<f64>() / decisions,
            value_norm_mean: vm,
            value_norm_std: vv.sqrt(),
            explained_variance,
            mode_share: modes.map(|x| x as f64 / decisions),
            cap_mean: cap_sum / decisions,
            kl_default: kl_last,
        })
    }

    /// The entropy coefficient of update `iteration` (0-based) of `iterations`: linear from
    /// `ent_coef_start` to `ent_coef_end`.
    pub fn ent_coef_at(&self, iteration: usize, iterations: usize) -> f64 {
        let c = &self.cfg;
        if iterations > 1 {
            c.ent_coef_start
                + (c.ent_coef_end - c.ent_coef_start) * iteration.min(iterations - 1) as f64
                    / (iterations - 1) as f64
        } else {
            c.ent_coef_start
        }
    }

    /// Write the network (`master.safetensors`) and AdamW's moments
    /// (`master_optimizer.safetensors`) into `dir`, atomically.
    pub fn save_tensors(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        checkpoint::save_params(&self.varmap, &dir.join(MASTER_MODEL_FILE))?;
        checkpoint::save_tensors_atomic(&dir.join(MASTER_OPTIMIZER_FILE), &self.opt.state_tensors())
    }

    /// The resume state of this learner for an environment of `scenarios` x `symbols` reset
    /// with `env_seed`.
    pub fn state(&self, scenarios: usize, symbols: usize, env_seed: u64) -> MasterTrainState {
        MasterTrainState {
            format: MASTER_FORMAT,
            ppo: self.cfg.clone(),
            scenarios,
            symbols,
            obs_dim: MASTER_OBS,
            env_seed,
            iteration: self.iteration,
            adam_step: self.opt.step_count(),
            rng: self.rng.state(),
            value_norm: self.vnorm.to_bits(),
        }
    }

    /// Write `st` as `master_state.json` into `dir`, atomically (last, after the tensors).
    pub fn write_state(dir: &Path, st: &MasterTrainState) -> Result<()> {
        let json = serde_json::to_vec_pretty(st).map_err(|e| Error::json("master state", e))?;
        crate::atomic::write(&dir.join(MASTER_STATE_FILE), &json)
    }

    /// The learner saved in checkpoint directory `dir` ([`MasterLearner::save_tensors`] and
    /// [`MasterLearner::write_state`]) for an environment of `scenarios` x `symbols`, exactly as
    /// it was (weights, moments, `ValueNorm`, random stream, updates), with its stored state.
    pub fn load(dir: &Path, scenarios: usize, symbols: usize) -> Result<(Self, MasterTrainState)> {
        let st = read_master_state(dir)?;
        let state_path = dir.join(MASTER_STATE_FILE);
        if (st.scenarios, st.symbols) != (scenarios, symbols) {
            return Err(Error::checkpoint(
                &state_path,
                format!(
                    "saved with {} scenarios x {} symbols, the environment has {scenarios} x {symbols}",
                    st.scenarios, st.symbols
                ),
            ));
        }
        let mut me = Self::new(st.ppo.clone())?;
        checkpoint::load_params(&me.varmap, &dir.join(MASTER_MODEL_FILE))?;
        let opt_path = dir.join(MASTER_OPTIMIZER_FILE);
        let moments =
            checkpoint::load_tensors_checked(&opt_path, &me.opt.state_shapes(), &Device::Cpu)?;
        // Every name and shape was checked by `load_tensors_checked`.
        me.opt
            .restore(st.adam_step, |name| Ok(moments[name].clone()))?;
        me.vnorm = ValueNorm::from_bits(st.value_norm)
            .map_err(|e| Error::checkpoint(&state_path, e.to_string()))?;
        me.rng = ResumableRng::from_state(st.rng);
        me.iteration = st.iteration;
        Ok((me, st))
    }
}

/// The most probable directive per scenario of `net` for the observations `obs`
/// (`[N, MASTER_OBS]`) into `out` (`[N]`).
pub fn greedy_directives(net: &MasterNet, obs: &[f32], out: &mut [u8]) -> Result<()> {
    let x = Tensor::from_slice(obs, (out.len(), MASTER_OBS), &Device::Cpu)?;
    let a = net.forward(&x)?.0.argmax(D::Minus1)?.to_vec1::<u32>()?;
    for (m, a) in out.iter_mut().zip(a) {
        *m = a as u8;
    }
    Ok(())
}

/// The master trainer (see the module doc).
pub struct MasterPpo<Dr: SymbolDriver> {
    learner: MasterLearner,
    env: VecEnv,
    driver: Dr,
    env_seed: u64,
    /// The master observation the next rollout starts from (it is a decision point already).
    next_obs: Vec<f32>,
    actions: Vec<u8>,
    intents: Vec<f32>,
}

impl<Dr: SymbolDriver> MasterPpo<Dr> {
    /// A trainer of a fresh [`MasterNet`] (`cfg.net`, initialised from `cfg.seed`) over `env`
    /// (reset here with `env_seed`), the symbols played by `driver`.
    pub fn new(cfg: MasterPpoConfig, mut env: VecEnv, driver: Dr, env_seed: u64) -> Result<Self> {
        let learner = MasterLearner::new(cfg)?;
        env.reset(env_seed)?;
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        let mut me = Self {
            learner,
            env,
            driver,
            env_seed,
            next_obs: vec![0.0; n * MASTER_OBS],
            actions: vec![0; n * s],
            intents: vec![0.0; n * MASTER_INTENTS],
        };
        me.observe(&vec![me.env.layout().params.default_action as u8; n])?;
        Ok(me)
    }

    /// The master observation of the current state into `next_obs`, with the intents of the
    /// symbol agents under the stored directives `held`.
    fn observe(&mut self, held: &[u8]) -> Result<()> {
        self.driver
            .act(&mut self.env, held, &mut self.actions, &mut self.intents)?;
        self.env.master_obs(&self.intents, &mut self.next_obs)
    }

    /// The network.
    pub fn net(&self) -> &MasterNet {
        self.learner.net()
    }

    /// Its parameters.
    pub fn varmap(&self) -> &VarMap {
        self.learner.varmap()
    }

    /// The training environment.
    pub fn env(&self) -> &VecEnv {
        &self.env
    }

    /// Iterations done.
    pub fn iteration(&self) -> usize {
        self.learner.iteration()
    }

    /// The configuration.
    pub fn config(&self) -> &MasterPpoConfig {
        self.learner.config()
    }

    /// Run the remaining iterations; each one's metrics go to `metrics` (JSON lines) when given.
    pub fn train(&mut self, metrics: Option<&Path>) -> Result<Vec<MasterMetrics>> {
        let mut file = match metrics {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(p, e))?,
            ),
            None => None,
        };
        let mut all = Vec::new();
        while self.iteration() < self.config().iterations {
            let m = self.iterate()?;
            if let (Some(f), Some(p)) = (file.as_mut(), metrics) {
                let line = serde_json::to_string(&m)
                    .map_err(|e| Error::invalid(format!("metrics: {e}")))?;
                writeln!(f, "{line}").map_err(|e| Error::io(p, e))?;
            }
            all.push(m);
        }
        Ok(all)
    }

    /// One iteration: rollout, GAE, update.
    pub fn iterate(&mut self) -> Result<MasterMetrics> {
        let (interval, d_n, iterations) = {
            let c = self.learner.config();
            (c.decision_interval, c.decisions, c.iterations)
        };
        let n = self.env.n_scenarios();
        let mut batch = MasterBatch::new(n);
        let mut master = vec![0u8; n];
        for _ in 0..d_n {
            let obs = std::mem::take(&mut self.next_obs);
            self.learner.sample(&obs, &mut master, Some(&mut batch))?;
            self.next_obs = obs;
            for _ in 0..interval {
                self.driver
                    .act(&mut self.env, &master, &mut self.actions, &mut self.intents)?;
                let out = self.env.step(&self.actions, &master)?;
                batch.accumulate(&out.master_reward, |i| out.done(i));
            }
            self.observe(&master)?;
        }
        // Episode records are the evaluation's business; drop them so they do not pile up.
        self.env.drain_finished();
        let ent_coef = self
            .learner
            .ent_coef_at(self.learner.iteration(), iterations);
        let params = self.env.layout().params;
        self.learner
            .update(&batch, &self.next_obs, ent_coef, &params)
    }
}

/// A master checkpoint's parameters (`master.*`, [`MasterNet`]'s names).
pub const MASTER_MODEL_FILE: &str = "master.safetensors";
/// AdamW's moments of the master's parameters.
pub const MASTER_OPTIMIZER_FILE: &str = "master_optimizer.safetensors";
/// The training environment's state, the master anchors and the next observation.
pub const MASTER_ENV_FILE: &str = "master_env.bin";
/// [`MasterTrainState`]; written last.
pub const MASTER_STATE_FILE: &str = "master_state.json";
/// Version of the master checkpoint layout.
pub const MASTER_FORMAT: u32 = 1;

/// Everything besides tensors and the environment that a master resume needs (`master_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterTrainState {
    /// [`MASTER_FORMAT`].
    pub format: u32,
    /// The trainer's configuration (the network's sizes included: rebuild it from this).
    pub ppo: MasterPpoConfig,
    /// Scenarios N and symbols S of the training environment.
    pub scenarios: usize,
    /// See `scenarios`.
    pub symbols: usize,
    /// Length of the master observation the network reads.
    pub obs_dim: usize,
    /// The seed the training environment was reset with.
    pub env_seed: u64,
    /// Completed iterations.
    pub iteration: usize,
    /// AdamW's step count.
    pub adam_step: u64,
    /// Position of the sampling and shuffling stream.
    pub rng: RngState,
    /// [`ValueNorm::to_bits`] (bit patterns, so that the resume is exact).
    pub value_norm: [u64; 5],
}

/// Header of [`MASTER_ENV_FILE`]; followed by the master anchors `[N]`, the next observation
/// `[N, obs]` f32 and the env snapshot (`Snapshot::to_bytes`).
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct MasterEnvHeader {
    magic: [u8; 8],
    version: u32,
    n: u32,
    obs: u32,
    pad: u32,
}

impl MasterEnvHeader {
    const MAGIC: [u8; 8] = *b"MARLMAST";
    const VERSION: u32 = 1;
}

/// Read and check `master_state.json` of master checkpoint directory `dir`. A directory without
/// one is an [`ErrorKind::Checkpoint`](crate::ErrorKind::Checkpoint) error naming the file.
pub fn read_master_state(dir: &Path) -> Result<MasterTrainState> {
    let path = dir.join(MASTER_STATE_FILE);
    if !path.is_file() {
        return Err(Error::checkpoint(
            &path,
            "no master checkpoint here (the file does not exist)",
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let st: MasterTrainState = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, e.to_string()).with_source(e))?;
    if st.format != MASTER_FORMAT {
        return Err(Error::checkpoint(
            &path,
            format!(
                "master checkpoint format {} (this build reads {MASTER_FORMAT})",
                st.format
            ),
        ));
    }
    if st.obs_dim != MASTER_OBS {
        return Err(Error::checkpoint(
            &path,
            format!(
                "the master read {} observation values, this build's master observation has {MASTER_OBS}",
                st.obs_dim
            ),
        ));
    }
    st.ppo.validate(&path.display().to_string())?;
    Ok(st)
}

/// The learned master of checkpoint directory `dir`: its network rebuilt from the stored sizes
/// and its parameters loaded, every tensor's name and shape checked (a wrong shape is an
/// [`ErrorKind::Shape`](crate::ErrorKind::Shape) error naming the tensor).
pub fn load_master_net(dir: &Path) -> Result<(MasterNet, VarMap, MasterTrainState)> {
    let st = read_master_state(dir)?;
    let varmap = VarMap::new();
    let net = MasterNet::build(MASTER_OBS, &st.ppo.net, &varmap, st.ppo.seed, &Device::Cpu)?;
    checkpoint::load_params(&varmap, &dir.join(MASTER_MODEL_FILE))?;
    Ok((net, varmap, st))
}

impl<Dr: SymbolDriver> MasterPpo<Dr> {
    /// Write a checkpoint of the trainer into `dir` (created if needed): the four files above,
    /// each atomically, `master_state.json` last. [`MasterPpo::resume`] continues from it
    /// bit-identically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.learner.save_tensors(dir)?;
        let n = self.env.n_scenarios();
        let h = MasterEnvHeader {
            magic: MasterEnvHeader::MAGIC,
            version: MasterEnvHeader::VERSION,
            n: n as u32,
            obs: MASTER_OBS as u32,
            pad: 0,
        };
        let mut bytes = bytemuck::bytes_of(&h).to_vec();
        bytes.extend_from_slice(bytemuck::cast_slice(self.env.master_anchors()));
        bytes.extend_from_slice(bytemuck::cast_slice(&self.next_obs));
        bytes.extend_from_slice(&self.env.snapshot()?.to_bytes());
        crate::atomic::write(&dir.join(MASTER_ENV_FILE), &bytes)?;
        let st = self.learner.state(n, self.env.n_symbols(), self.env_seed);
        MasterLearner::write_state(dir, &st)
    }

    /// Continue the training saved in checkpoint directory `dir` over `env` (the same
    /// configuration's environment: its N and S are checked) with `driver` (which must keep no
    /// state between calls that the checkpoint would miss; [`CapFollower`] keeps none).
    pub fn resume(dir: &Path, env: VecEnv, driver: Dr) -> Result<Self> {
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        let (learner, st) = MasterLearner::load(dir, n, s)?;
        let mut me = Self::new(st.ppo.clone(), env, driver, st.env_seed)?;
        me.learner = learner;
        let env_path = dir.join(MASTER_ENV_FILE);
        let bytes = std::fs::read(&env_path).map_err(|e| Error::io(&env_path, e))?;
        let bad = |why: String| Err(Error::checkpoint(&env_path, why));
        let hl = std::mem::size_of::<MasterEnvHeader>();
        if bytes.len() < hl {
            return bad(format!(
                "truncated: {} bytes, shorter than its header",
                bytes.len()
            ));
        }
        let h: MasterEnvHeader = bytemuck::pod_read_unaligned(&bytes[..hl]);
        if h.magic != MasterEnvHeader::MAGIC || h.version != MasterEnvHeader::VERSION {
            return bad("not a master env state of this version".into());
        }
        if (h.n as usize, h.obs as usize) != (n, MASTER_OBS) {
            return bad(format!(
                "holds {} scenarios x {} observation values, expected {n} x {MASTER_OBS}",
                h.n, h.obs
            ));
        }
        let al = n * std::mem::size_of::<MasterAnchor>();
        let ol = n * MASTER_OBS * 4;
        if bytes.len() < hl + al + ol {
            return bad(format!("truncated: {} bytes", bytes.len()));
        }
        let anchors: Vec<MasterAnchor> = bytemuck::pod_collect_to_vec(&bytes[hl..hl + al]);
        let next_obs: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[hl + al..hl + al + ol]);
        let snap = Snapshot::from_bytes(&bytes[hl + al + ol..], n, s)?;
        me.env.load_snapshot(&snap)?;
        me.env.set_master_anchors(&anchors)?;
        me.next_obs = next_obs;
        Ok(me)
    }
}

/// `1 - Var[y - v] / Var[y]`, `None` when `Var[y] = 0`.
fn explained_variance(v: &[f32], y: &[f32]) -> Option<f64> {
    let var = |x: &mut dyn Iterator<Item = f64>| {
        let x: Vec<f64> = x.collect();
        let m = x.iter().sum::<f64>() / x.len() as f64;
        x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / x.len() as f64
    };
    let vy = var(&mut y.iter().map(|&a| a as f64));
    if vy == 0.0 {
        return None;
    }
    let vr = var(&mut y.iter().zip(v).map(|(&a, &b)| (a - b) as f64));
    Some(1.0 - vr / vy)
}

/// The outcome of playing a master over one episode of every scenario ([`evaluate_master`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MasterEval {
    /// Annualised Sharpe ratio of the pooled per-bar portfolio returns of all episodes.
    pub sharpe: f64,
    /// Its standard error, `sqrt((1 + SR_bar^2 / 2) / bars) * sqrt(bars_per_year)` (Lo 2002).
    pub sharpe_se: f64,
    /// Mean over the episodes of each episode's maximum drawdown of equity (fraction).
    pub max_drawdown: f64,
    /// The largest of those.
    pub worst_drawdown: f64,
    /// Mean total return of the episodes.
    pub total_return: f64,
    /// Portfolio bars pooled.
    pub bars: usize,
    /// Decisions per directive index (48).
    pub directive_counts: Vec<usize>,
    /// The env's master reward (docs/env-spec.md §5, under the env's `[reward]` weights) summed
    /// over every step of every episode, divided by the decisions taken: the return per decision
    /// the master was trained to maximise (undiscounted).
    pub reward_per_decision: f64,
    /// Decisions per (hidden or observed) regime label and directive regime mode, `[labels][3]`,
    /// when [`evaluate_master`] was given labels.
    pub mode_by_label: Vec<[usize; 3]>,
    /// Decisions per label and directive index, `[labels][48]` (the distribution behind
    /// `mode_by_label`).
    pub directive_by_label: Vec<Vec<usize>>,
}

/// Play `play` (the symbols by `driver`, a decision every `interval` bars) for the first episode
/// of every scenario of `env` after `reset(seed)`, and measure the portfolio. `labels`, when
/// given, is a label per `(path, bar)` (`[P * T]`, e.g. the synthetic hidden regime) under which
/// each decision's regime mode is counted.
pub fn evaluate_master(
    env: &mut VecEnv,
    driver: &mut dyn SymbolDriver,
    play: MasterPlay<'_>,
    interval: usize,
    seed: u64,
    labels: Option<&[u8]>,
) -> Result<MasterEval> {
    if interval == 0 {
        return Err(Error::invalid("evaluate_master: decision interval 0"));
    }
    if let MasterPlay::Fixed(m) = play
        && m as usize >= MASTER_ACTIONS
    {
        return Err(Error::invalid(format!(
            "fixed master directive {m} is not in 0..{MASTER_ACTIONS}"
        )));
    }
    if let Some(l) = labels
        && l.len() != env.data().paths * env.data().bars
    {
        return Err(Error::new(
            crate::error::ErrorKind::Shape,
            format!(
                "evaluate_master: {} regime labels, expected one per (path, bar) = {}",
                l.len(),
                env.data().paths * env.data().bars
            ),
        ));
    }
    env.reset(seed)?;
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let c0 = env.layout().params.initial_capital;
    let bars_per_year = env.data().bars_per_year();
    let bars_t = env.data().bars;
    let mut actions = vec![0u8; n * s];
    let mut intents = vec![0f32; n * MASTER_INTENTS];
    let mut mobs = vec![0f32; n * MASTER_OBS];
    let mut master = vec![env.layout().params.default_action as u8; n];
    let mut equity: Vec<Vec<f64>> = vec![vec![c0]; n];
    let mut finished = vec![false; n];
    let mut counts = vec![0usize; MASTER_ACTIONS];
    let n_labels = labels.map_or(0, |l| l.iter().copied().max().unwrap_or(0) as usize + 1);
    let mut by_label = vec![[0usize; 3]; n_labels];
    let mut dir_by_label = vec![vec![0usize; MASTER_ACTIONS]; n_labels];
    let mut step = 0usize;
    let mut reward_sum = 0f64;
    while !finished.iter().all(|&f| f) {
        if step.is_multiple_of(interval) {
            driver.act(env, &master, &mut actions, &mut intents)?;
            env.master_obs(&intents, &mut mobs)?;
            match play {
                MasterPlay::Fixed(m) => master.fill(m),
                MasterPlay::Rule(rule) => {
                    for (i, m) in master.iter_mut().enumerate() {
                        let d = rule(&mobs[i * MASTER_OBS..(i + 1) * MASTER_OBS]);
                        if d as usize >= MASTER_ACTIONS {
                            return Err(Error::invalid(format!(
                                "the master rule chose directive {d}, not in 0..{MASTER_ACTIONS}"
                            )));
                        }
                        *m = d;
                    }
                }
                MasterPlay::Greedy(net) => greedy_directives(net, &mobs, &mut master)?,
            }
            let snap = env.snapshot()?;
            for i in (0..n).filter(|&i| !finished[i]) {
                counts[master[i] as usize] += 1;
                if let Some(l) = labels {
                    let st = &snap.scenarios[i];
                    let lab = l[st.path as usize * bars_t + (st.t0 + st.k) as usize] as usize;
                    by_label[lab][master[i] as usize % 3] += 1;
                    dir_by_label[lab][master[i] as usize] += 1;
                }
            }
        }
        driver.act(env, &master, &mut actions, &mut intents)?;
        let dones: Vec<bool> = {
            let out = env.step(&actions, &master)?;
            for i in (0..n).filter(|&i| !finished[i]) {
                reward_sum += out.master_reward[i] as f64;
            }
            (0..n).map(|i| out.done(i)).collect()
        };
        let snap = env.snapshot()?;
        let recs = env.drain_finished();
        for i in 0..n {
            if finished[i] {
                continue;
            }
            if dones[i] {
                let r = recs
                    .iter()
                    .find(|r| r.scenario as usize == i)
                    .ok_or_else(|| {
                        Error::invalid(format!("scenario {i} ended without an episode record"))
                    })?;
                equity[i].push(c0 * (1.0 + r.total_return));
                finished[i] = true;
            } else {
                equity[i].push(snap.scenarios[i].equity);
            }
        }
        step += 1;
    }
    let mut rets = Vec::new();
    let (mut dd_sum, mut dd_worst, mut tr_sum) = (0.0, 0f64, 0.0);
    for e in &equity {
        let mut peak = e[0];
        let mut dd = 0f64;
        for w in e.windows(2) {
            rets.push(w[1] / w[0] - 1.0);
            peak = peak.max(w[1]);
            dd = dd.max(1.0 - w[1] / peak);
        }
        dd_sum += dd;
        dd_worst = dd_worst.max(dd);
        tr_sum += e[e.len() - 1] / e[0] - 1.0;
    }
    let m = rets.iter().sum::<f64>() / rets.len() as f64;
    let sd =
        (rets.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (rets.len().max(2) - 1) as f64).sqrt();
    let sr_bar = if sd > 0.0 { m / sd } else { 0.0 };
    Ok(MasterEval {
        sharpe: sr_bar * bars_per_year.sqrt(),
        sharpe_se: ((1.0 + 0.5 * sr_bar * sr_bar) / rets.len() as f64).sqrt()
            * bars_per_year.sqrt(),
        max_drawdown: dd_sum / n as f64,
        worst_drawdown: dd_worst,
        total_return: tr_sum / n as f64,
        bars: rets.len(),
        reward_per_decision: reward_sum / counts.iter().sum::<usize>().max(1) as f64,
        directive_counts: counts,
        mode_by_label: by_label,
        directive_by_label: dir_by_label,
    })
}
