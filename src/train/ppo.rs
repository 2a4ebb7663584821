/*!
PPO, following CleanRL's `ppo.py` line by line.

One iteration ([`Ppo::iterate`]):

1. **Schedules.** `lr = (1 - (i - 1) / num_iterations) * learning_rate` when `anneal_lr`; the entropy
   coefficient follows the same fraction from `ent_coef_start` to `ent_coef_end`. Not CleanRL: the
   cost curriculum (`cost_ramp_frac`, [`PpoConfig::cost_scale_at`]) sets the environment's
   cost-term scale for the iteration ([`TrainEnv::set_cost_scale`]), and the staged onboarding
   (`onboard_start`, [`PpoConfig::tradable_symbols_at`]) how many symbols may trade
   ([`TrainEnv::set_tradable_symbols`]).
2. **Rollout.** For `num_steps` steps: store the observation and the done flags that came with it,
   run the policy (no gradient), sample an action per row from the masked categorical
   ([`draw_actions`]: row r takes draw `draws + r` of the seeded action stream, on the policy's
   device), store the action, its log-probability and the value (tensors on the policy's device,
   [`RolloutBuffer`]), step the environment (which auto-resets finished copies), store the
   rewards.
3. **GAE.** Bootstrap from the value of the observation after the last step
   ([`gae`](super::buffer::gae), CleanRL's loop verbatim); `returns = advantages + values`.
4. **Update.** For `update_epochs` epochs: shuffle the units (environment x step) with the seeded
   shuffle stream, split them into `num_minibatches` minibatches, and for each:
   - recompute log-probabilities, entropy and values with the *same* masks as in the rollout;
   - `ratio = exp(new_logprob - old_logprob)`; diagnostics `old_approx_kl = mean(-log ratio)`,
     `approx_kl = mean((ratio - 1) - log ratio)`, `clipfrac = mean(|ratio - 1| > clip_coef)`;
   - advantages normalised per minibatch when `norm_adv` (`(A - mean) / (std + 1e-8)`, unbiased std);
   - policy loss `mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))`;
   - value loss `0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))` when
     `clip_vloss`, else `0.5 * mean((V - R)^2)`;
   - `loss = policy_loss - ent_coef * mean(entropy) + vf_coef * value_loss`;
   - when `kl_prior_coef > 0` (not CleanRL): `+ c_i * mean(KL(pi || prior))`, the prior the
     policy's [`prior_logits`](crate::agents::ActorCritic::prior_logits) under the same masks,
     `c_i` annealed to 0 over `kl_prior_iters` ([`PpoConfig::kl_prior_coef_at`]); the last
     minibatch's KL is logged as `loss.kl_prior` for the whole run (also after `c_i` reached 0),
     `c_i` as `loss.kl_prior_coef`;
   - backward, **global** gradient-norm clipping over all parameters, AdamW step. Not CleanRL: a
     minibatch over `update_chunk_windows` / `update_chunk_rows` is cut into chunks of whole bars
     ([`minibatch::chunks`]); each chunk's loss (its means, weighted by its share of the rows) is
     backpropagated alone and the gradients are summed before the clipping, so that only one
     chunk's autograd graph is alive at a time; the logged losses are the minibatch's.

   After each epoch, stop early if `target_kl` is set and the last `approx_kl` exceeds it.
5. **Metrics.** Losses of the last minibatch, mean clip fraction, explained variance of the batch,
   SPS, and the episodes that ended during the rollout ([`Metrics`]).

Randomness comes from three streams derived from `seed`: the environment's resets, action sampling
and minibatch shuffling. With the policy's seeded initialisation the whole run is deterministic, and
[`Ppo::save_checkpoint`] / [`Ppo::resume`] continue it bit for bit.
*/

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::adamw::{AdamW, AdamWConfig};
use super::buffer::{RolloutBuffer, explained_variance};
use super::checkpoint::{self, ENV_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, TrainState};
use super::config::{MinibatchMode, PpoConfig};
use super::metrics::{Metrics, MetricsWriter};
use super::minibatch;
use super::reward_norm::RewardNorm;
use super::train_env::{ResumableRng, TrainEnv};
use crate::Result;
use crate::agents::dist::{MaskedCategorical, draw_actions};
use crate::agents::init::named_vars;
use crate::agents::{ActorCritic, ObsBatch};
use crate::error::Error;
use crate::rng::hash2;

/// Name of the KL-to-prior statistic in `Metrics::policy` (last minibatch's `mean KL(pi || prior)`).
pub const KL_PRIOR_STAT: &str = "loss.kl_prior";
/// Name of the number of backward passes of the iteration's update in `Metrics::policy`
/// (minibatches x epochs, more when `ppo.update_chunk_windows` / `update_chunk_rows` cut
/// minibatches into chunks).
pub const BACKWARD_PASSES_STAT: &str = "update.backward_passes";
/// Name of the KL term's coefficient of the iteration in `Metrics::policy`.
pub const KL_PRIOR_COEF_STAT: &str = "loss.kl_prior_coef";
/// Name of the cost curriculum's scale of the cost-term weight in the metrics' `policy` map
/// (logged when `ppo.cost_ramp_frac > 0`).
pub const COST_SCALE_STAT: &str = "schedule.cost_scale";
/// Name of the staged onboarding's count of tradable symbols in the metrics' `policy` map (logged
/// when `ppo.onboard_start > 0`).
pub const TRADABLE_STAT: &str = "schedule.tradable_symbols";

/// Scale every gradient of `params` in `grads` so that their global L2 norm is at most `max_norm`
/// (torch's `clip_grad_norm_`: factor `min(1, max_norm / (norm + 1e-6))`). Returns the norm before
/// clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<f64> {
    let mut sq = Vec::with_capacity(params.len());
    for (_, p) in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            sq.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if sq.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sq, 0)?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f32>()? as f64;
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for (_, p) in params {
            if let Some(g) = grads.remove(p.as_tensor()) {
                grads.insert(p.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(total)
}

/// The PPO trainer for environment `E` and policy `P`.
pub struct Ppo<E: TrainEnv, P: ActorCritic<Obs = E::Obs>> {
    cfg: PpoConfig,
    env: E,
    policy: P,
    params: Vec<(String, Var)>,
    varmap: VarMap,
    opt: AdamW,
    policy_config: serde_json::Value,
    rng_action: ResumableRng,
    rng_shuffle: ResumableRng,
    /// Completed iterations.
    iteration: usize,
    global_step: u64,
    next_obs: E::Obs,
    next_done: Vec<bool>,
    reward_norm: Option<RewardNorm>,
    clock: Instant,
    clock_step: u64,
}

impl<E: TrainEnv, P: ActorCritic<Obs = E::Obs>> Ppo<E, P> {
    /// A fresh run: resets `env` from the config's seed. `varmap` holds the policy's parameters;
    /// `policy_config` is stored in checkpoints so that the policy can be rebuilt.
    pub fn new(
        cfg: PpoConfig,
        mut env: E,
        policy: P,
        varmap: VarMap,
        policy_config: serde_json::Value,
    ) -> Result<Self> {
        Self::check(&cfg, &env, &varmap, None)?;
        let params = trainable(&policy, &varmap)?;
        let opt = AdamW::new(params.clone(), Self::adam_config(&cfg))?;
        let next_obs = env.reset(hash2(cfg.seed, 0))?;
        let n = env.num_envs();
        let reward_norm = cfg
            .norm_reward
            .then(|| RewardNorm::new(n * env.agents_per_env()));
        Ok(Self {
            reward_norm,
            rng_action: ResumableRng::new(hash2(cfg.seed, 1)),
            rng_shuffle: ResumableRng::new(hash2(cfg.seed, 2)),
            cfg,
            env,
            policy,
            params,
            varmap,
            opt,
            policy_config,
            iteration: 0,
            global_step: 0,
            next_obs,
            next_done: vec![false; n],
            clock: Instant::now(),
            clock_step: 0,
        })
    }

    fn adam_config(cfg: &PpoConfig) -> AdamWConfig {
        AdamWConfig {
            lr: cfg.learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        }
    }

    /// `stored_envs`: the number of environments of a checkpoint being resumed.
    fn check(cfg: &PpoConfig, env: &E, varmap: &VarMap, stored_envs: Option<usize>) -> Result<()> {
        if let Some(k) = stored_envs
            && k != env.num_envs()
        {
            return Err(Error::new(
                crate::ErrorKind::Checkpoint,
                format!(
                    "the checkpoint was trained with num_envs = {k}, the environment has {}",
                    env.num_envs()
                ),
            ));
        }
        cfg.validate("ppo", env.num_envs())?;
        if named_vars(varmap).is_empty() {
            return Err(Error::invalid(
                "the policy has no parameters in the given VarMap",
            ));
        }
        Ok(())
    }

    /// The hyperparameters.
    pub fn config(&self) -> &PpoConfig {
        &self.cfg
    }

    /// The environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The policy's parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Iterations of the whole run (`total_timesteps / batch_size`).
    pub fn num_iterations(&self) -> usize {
        self.cfg.num_iterations(self.env.num_envs())
    }

    /// Completed iterations.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// Environment steps (units) so far.
    pub fn global_step(&self) -> u64 {
        self.global_step
    }

    /// Whether all `num_iterations` iterations have run.
    pub fn is_done(&self) -> bool {
        self.iteration >= self.num_iterations()
    }

    fn device(&self) -> Device {
        self.policy.device().clone()
    }

    /// Run `num_steps` steps of every environment with the current policy.
    fn rollout(
        &mut self,
        buf: &mut RolloutBuffer<E::Obs>,
        episodes: &mut Vec<super::EpisodeInfo>,
        times: &mut Times,
    ) -> Result<()> {
        let dev = self.device();
        let n = self.env.num_envs();
        let rows = buf.rows_per_step();
        let na = buf.num_actions;
        for _ in 0..self.cfg.num_steps {
            self.global_step += n as u64;
            buf.obs.push(self.next_obs.clone());
            buf.dones
                .extend(self.next_done.iter().map(|&d| f32::from(u8::from(d))));
            let mask = self.env.action_mask();
            if let Some(m) = &mask
                && m.len() != rows * na
            {
                return Err(Error::invalid(format!(
                    "action mask has {} values, expected {}",
                    m.len(),
                    rows * na
                )));
            }
            let clock = Instant::now();
            let fwd = crate::profile::range("policy forward");
            let (logits, value) = self.policy.forward_inference(&self.next_obs)?;
            drop(fwd);
            let mask_t = match &mask {
                Some(m) => Some(Tensor::from_slice(m, (rows, na), &dev)?),
                None => None,
            };
            let dist = MaskedCategorical::new(&logits.detach(), mask_t.as_ref())?;
            self.env.policy_outputs(&logits.detach(), mask_t.as_ref())?;
            let (lp_rows, lp_na) = dist.log_probs().dims2()?;
            if (lp_rows, lp_na) != (rows, na) {
                return Err(Error::invalid(format!(
                    "policy returned logits for {lp_rows} rows x {lp_na} actions, the environment has {rows} x {na}"
                )));
            }
            let _sample = crate::profile::range("sample");
            // Row r takes draw `draws + r` of the action stream, on the policy's device.
            let st = self.rng_action.state();
            let (actions_t, logp) = draw_actions(dist.log_probs(), st.seed, st.draws)?;
            self.rng_action.skip(rows as u64);
            // The environment steps on the host: only the actions come back.
            let actions = actions_t.to_vec1::<u32>()?;
            let value = value.detach().to_dtype(DType::F32)?.flatten_all()?;
            buf.push_step(actions_t, logp, value);
            buf.push_mask(mask);
            times.policy += clock.elapsed().as_secs_f64();
            drop(_sample);
            let clock = Instant::now();
            let out = self.env.step(&actions)?;
            times.env += clock.elapsed().as_secs_f64();
            if out.rewards.len() != rows || out.dones.len() != n {
                return Err(Error::invalid(
                    "environment returned rewards/dones of the wrong length",
                ));
            }
            let mut rewards = out.rewards;
            if let Some(rn) = &mut self.reward_norm {
                rn.apply(
                    &mut rewards,
                    &out.dones,
                    rows / n,
                    self.cfg.gamma,
                    self.cfg.reward_clip,
                );
            }
            buf.rewards.extend_from_slice(&rewards);
            self.next_obs = out.obs;
            self.next_done = out.dones;
            episodes.extend(out.episodes);
        }
        Ok(())
    }

    /// One iteration: rollout, GAE, update. Returns its metrics.
    pub fn iterate(&mut self) -> Result<Metrics> {
        let cfg = self.cfg.clone();
        let it = self.iteration + 1;
        let num_envs = self.env.num_envs();
        let lr = cfg.lr_at(it, num_envs);
        self.opt.set_learning_rate(lr);
        let ent_coef = cfg.ent_coef_at(it, num_envs);
        let kl_coef = cfg.kl_prior_coef_at(it);
        let cost_scale = cfg.cost_scale_at(it, num_envs);
        self.env.set_cost_scale(cost_scale);
        let tradable = cfg.tradable_symbols_at(it);
        self.env.set_tradable_symbols(tradable)?;
        self.env.begin_iteration(it, self.num_iterations())?;
        let dev = self.device();
        let (n, g, na) = (
            self.env.num_envs(),
            self.env.agents_per_env(),
            self.env.num_actions(),
        );

        // Rollout and advantages.
        let mut buf = RolloutBuffer::new(cfg.num_steps, n, g, na);
        let mut episodes = Vec::new();
        let mut times = Times::default();
        self.rollout(&mut buf, &mut episodes, &mut times)?;
        let (next_logits, next_value) = self.policy.forward_inference(&self.next_obs)?;
        let next_mask = match self.env.action_mask() {
            Some(m) => Some(Tensor::from_vec(m, (n * g, na), &dev)?),
            None => None,
        };
        self.env
            .policy_outputs(&next_logits.detach(), next_mask.as_ref())?;
        self.env.end_rollout()?;
        let next_value = next_value
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let next_done: Vec<f32> = self
            .next_done
            .iter()
            .map(|&d| f32::from(u8::from(d)))
            .collect();
        buf.finish()?;
        buf.compute_gae(
            &next_value,
            &next_done,
            cfg.gamma as f32,
            cfg.gae_lambda as f32,
        );

        // Update.
        let update_clock = Instant::now();
        let b_obs = <E::Obs as ObsBatch>::concat(&buf.obs)?;
        // The per-step observations are now a copy: release them (3.9 GB at 128 x 2048 x 143).
        buf.obs = Vec::new();
        // The batch's rows on the policy's device; each minibatch gathers its rows from them.
        let (b_actions, b_logprobs, b_values) = buf.device_rows()?;
        let b_returns = Tensor::from_slice(&buf.returns, buf.returns.len(), &dev)?;
        // (moved, not copied, on the CPU: nothing else reads the host masks)
        let b_masks = match buf.masks.take() {
            Some(m) => {
                let mrows = m.len() / na;
                Some(Tensor::from_vec(m, (mrows, na), &dev)?)
            }
            None => None,
        };
        let units = cfg.batch_size(num_envs);
        let mb_units = cfg.minibatch_size(num_envs);
        // Each unit's group key (the trading observation's bar): grouped minibatches are formed
        // from them, and a minibatch's chunks are cut between them.
        let unit_keys = b_obs.group_keys().filter(|k| k.len() == units);
        let group_keys = match cfg.minibatches {
            MinibatchMode::Grouped => unit_keys.as_ref(),
            MinibatchMode::Shuffled => None,
        };
        let mut backward_passes = 0usize;
        let chunk_bound = minibatch::ChunkBound {
            windows: cfg.update_chunk_windows,
            rows: cfg.update_chunk_rows,
        };
        let mut inds: Vec<u32> = (0..units as u32).collect();
        let mut clipfracs = Vec::new();
        let mut last = LastMinibatch::default();
        let mut epochs = 0;
        let _update = crate::profile::range("update");
        // A joint schedule may hold the agents fixed in this iteration (no update, epochs 0).
        let update_epochs = if self.env.agents_learn() {
            cfg.update_epochs
        } else {
            0
        };
        for _ in 0..update_epochs {
            let minibatches: Vec<Vec<u32>> = match group_keys {
                Some(keys) => minibatch::grouped(keys, cfg.num_minibatches, &mut self.rng_shuffle),
                None => {
                    self.rng_shuffle.shuffle(&mut inds);
                    inds.chunks(mb_units).map(<[u32]>::to_vec).collect()
                }
            };
            for mb in &minibatches {
                let rows: Vec<usize> = mb
                    .iter()
                    .flat_map(|&u| (0..g).map(move |a| u as usize * g + a))
                    .collect();
                // Advantages are normalised per minibatch on the host (f64 mean and std).
                let mut adv: Vec<f32> = rows.iter().map(|&i| buf.advantages[i]).collect();
                if cfg.norm_adv {
                    normalize(&mut adv);
                }
                // One backward pass per chunk (one chunk unless the minibatch exceeds
                // `update_chunk_windows` or `update_chunk_rows`); a chunk's loss is its means
                // times its share of the rows, so the summed gradients are the minibatch's.
                let chunks = minibatch::chunks(mb, unit_keys.as_deref(), g, chunk_bound);
                let whole = chunks.len() == 1;
                let mut grads: Option<GradStore> = None;
                let mut parts = LossParts::default();
                let mut row0 = 0;
                for chunk in &chunks {
                    let r = chunk.len() * g;
                    let share = r as f64 / rows.len() as f64;
                    let idx = Tensor::from_vec(
                        rows[row0..row0 + r]
                            .iter()
                            .map(|&i| i as u32)
                            .collect::<Vec<u32>>(),
                        r,
                        &dev,
                    )?;
                    let batch = ChunkBatch {
                        obs: b_obs.select_units(chunk)?,
                        actions: b_actions.index_select(&idx, 0)?,
                        old_logprob: b_logprobs.index_select(&idx, 0)?,
                        old_values: b_values.index_select(&idx, 0)?,
                        returns: b_returns.index_select(&idx, 0)?,
                        adv: Tensor::from_slice(&adv[row0..row0 + r], r, &dev)?,
                        mask: match &b_masks {
                            Some(m) => Some(m.index_select(&idx, 0)?),
                            None => None,
                        },
                    };
                    row0 += r;
                    let (loss, p) = self.chunk_loss(&batch, ent_coef, kl_coef)?;
                    let loss = if whole { loss } else { (loss * share)? };
                    grads = Some(collect_grads(grads, loss.backward()?, &self.params)?);
                    if whole {
                        parts = p;
                    } else {
                        parts.add(&p, share);
                    }
                    backward_passes += 1;
                }
                let mut grads = grads.ok_or_else(|| Error::invalid("an empty minibatch"))?;
                last.grad_norm = clip_grad_norm(&mut grads, &self.params, cfg.max_grad_norm)?;
                self.opt.step(&grads)?;
                self.policy.parameters_changed(false);
                clipfracs.push(parts.clipfrac);
                last.old_approx_kl = parts.old_approx_kl;
                last.approx_kl = parts.approx_kl;
                last.policy_loss = parts.policy_loss;
                last.value_loss = parts.value_loss;
                last.entropy = parts.entropy;
                last.kl_prior = parts.kl_prior;
            }
            epochs += 1;
            if cfg.target_kl.is_some_and(|k| last.approx_kl > k) {
                break;
            }
        }

        times.update = update_clock.elapsed().as_secs_f64();
        self.iteration = it;
        let env_stats = self.env.drain_stats().into_iter().collect();
        let (mut timing, mut policy_stats): (BTreeMap<String, f64>, BTreeMap<String, f64>) = self
            .policy
            .drain_stats()
            .into_iter()
            .partition(|(k, _)| k.starts_with("time."));
        if let Some(kl) = last.kl_prior {
            policy_stats.insert(KL_PRIOR_STAT.into(), kl);
            policy_stats.insert(KL_PRIOR_COEF_STAT.into(), kl_coef);
        }
        if cfg.cost_ramp_frac > 0.0 {
            policy_stats.insert(COST_SCALE_STAT.into(), cost_scale);
        }
        if cfg.onboard_start > 0 {
            let tradable = tradable.min(self.env.agents_per_env());
            policy_stats.insert(TRADABLE_STAT.into(), tradable as f64);
        }
        policy_stats.insert(BACKWARD_PASSES_STAT.into(), backward_passes as f64);
        timing.insert("time.rollout_env".into(), times.env);
        timing.insert("time.rollout_policy".into(), times.policy);
        timing.insert("time.update".into(), times.update);
        let elapsed = self.clock.elapsed().as_secs_f64().max(1e-9);
        let ep_n = episodes.len();
        let mean = |f: &dyn Fn(&super::EpisodeInfo) -> f64| {
            (ep_n > 0).then(|| episodes.iter().map(f).sum::<f64>() / ep_n as f64)
        };
        Ok(Metrics {
            iteration: it,
            global_step: self.global_step,
            learning_rate: lr,
            ent_coef,
            policy_loss: last.policy_loss,
            value_loss: last.value_loss,
            entropy: last.entropy,
            old_approx_kl: last.old_approx_kl,
            approx_kl: last.approx_kl,
            clipfrac: clipfracs.iter().sum::<f64>() / clipfracs.len().max(1) as f64,
            explained_variance: explained_variance(&buf.values, &buf.returns),
            grad_norm: last.grad_norm,
            epochs,
            sps: (self.global_step - self.clock_step) as f64 / elapsed,
            agent_sps: (self.global_step - self.clock_step) as f64 * g as f64 / elapsed,
            episodes: ep_n,
            episode_return_mean: mean(&|e| e.ret),
            episode_length_mean: mean(&|e| e.len as f64),
            env: env_stats,
            policy: policy_stats,
            timing,
        })
    }

    /// The PPO loss of one chunk of a minibatch (step 4 of the module's description: surrogate,
    /// value loss, entropy, the KL term), means over the chunk's rows, and its parts as numbers.
    fn chunk_loss(
        &self,
        b: &ChunkBatch<E::Obs>,
        ent_coef: f64,
        kl_coef: f64,
    ) -> Result<(Tensor, LossParts)> {
        let cfg = &self.cfg;
        let mut parts = LossParts::default();
        let (logits, new_value) = self.policy.forward(&b.obs)?;
        let dist = MaskedCategorical::new(&logits, b.mask.as_ref())?;
        let kl_prior = if cfg.kl_prior_coef > 0.0 {
            Some(self.kl_to_prior(&b.obs, &dist, b.mask.as_ref())?)
        } else {
            None
        };
        let new_logprob = dist.log_prob(&b.actions)?;
        let entropy = dist.entropy()?;
        let logratio = (new_logprob - &b.old_logprob)?;
        let ratio = logratio.exp()?;

        // Diagnostics, without gradient.
        let (lr_d, ratio_d) = (logratio.detach(), ratio.detach());
        parts.old_approx_kl = scalar(&lr_d.neg()?.mean_all()?)?;
        parts.approx_kl = scalar(&((&ratio_d - 1.0)? - &lr_d)?.mean_all()?)?;
        parts.clipfrac = scalar(
            &(&ratio_d - 1.0)?
                .abs()?
                .gt(cfg.clip_coef)?
                .to_dtype(DType::F32)?
                .mean_all()?,
        )?;

        // Clipped surrogate.
        let neg_adv = b.adv.neg()?;
        let pg1 = (&neg_adv * &ratio)?;
        let pg2 = (&neg_adv * ratio.clamp(1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)?)?;
        let pg_loss = pg1.maximum(&pg2)?.mean_all()?;

        // Value loss.
        let new_value = new_value.flatten_all()?;
        let v_unclipped = (&new_value - &b.returns)?.sqr()?;
        let v_loss = if cfg.clip_vloss {
            let delta = (&new_value - &b.old_values)?.clamp(-cfg.clip_coef, cfg.clip_coef)?;
            let v_clipped = ((&b.old_values + delta)? - &b.returns)?.sqr()?;
            (v_unclipped.maximum(&v_clipped)?.mean_all()? * 0.5)?
        } else {
            (v_unclipped.mean_all()? * 0.5)?
        };
        let entropy_loss = entropy.mean_all()?;
        let mut loss = ((&pg_loss - (&entropy_loss * ent_coef)?)? + (&v_loss * cfg.vf_coef)?)?;
        if let Some(kl) = &kl_prior {
            if kl_coef > 0.0 {
                loss = (loss + (kl * kl_coef)?)?;
            }
            parts.kl_prior = Some(scalar(kl)?);
        }
        parts.policy_loss = scalar(&pg_loss)?;
        parts.value_loss = scalar(&v_loss)?;
        parts.entropy = scalar(&entropy_loss)?;
        Ok((loss, parts))
    }

    /// `mean_rows KL(pi || prior)` of a minibatch: `sum_a pi_a (log pi_a - log prior_a)`, the prior
    /// masked like the policy (masked actions have `pi_a = 0` exactly and add nothing).
    fn kl_to_prior(
        &self,
        obs: &E::Obs,
        dist: &MaskedCategorical,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let prior = self.policy.prior_logits(obs)?.ok_or_else(|| {
            Error::invalid("ppo.kl_prior_coef > 0, but the policy has no prior (prior_logits)")
        })?;
        let logp = dist.log_probs();
        if prior.dims() != logp.dims() {
            return Err(Error::new(
                crate::ErrorKind::Shape,
                format!(
                    "the prior's logits are {:?}, the policy's {:?}",
                    prior.dims(),
                    logp.dims()
                ),
            ));
        }
        let prior = MaskedCategorical::new(&prior.to_dtype(logp.dtype())?.detach(), mask)?;
        let diff = (logp - prior.log_probs())?;
        Ok((logp.exp()? * diff)?.sum(1)?.mean_all()?)
    }

    /// Run up to `max_iterations` more iterations (stopping at `num_iterations`), writing each
    /// iteration's metrics to `log` when given, with a progress bar when `progress`.
    pub fn train(
        &mut self,
        max_iterations: usize,
        mut log: Option<&mut MetricsWriter>,
        progress: bool,
    ) -> Result<Vec<Metrics>> {
        let todo = max_iterations.min(self.num_iterations().saturating_sub(self.iteration));
        let bar = if progress {
            indicatif::ProgressBar::new(todo as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut out = Vec::with_capacity(todo);
        for _ in 0..todo {
            let m = self.iterate()?;
            if let Some(w) = log.as_deref_mut() {
                w.write(&m)?;
            }
            bar.set_message(format!(
                "return {:.1}",
                m.episode_return_mean.unwrap_or(f64::NAN)
            ));
            bar.inc(1);
            out.push(m);
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// Write a checkpoint to `dir` (created if needed); see [`super::checkpoint`].
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        checkpoint::save_params(&self.varmap, &dir.join(MODEL_FILE))?;
        checkpoint::save_tensors_atomic(&dir.join(OPTIMIZER_FILE), &self.opt.state_tensors())?;
        crate::atomic::write(&dir.join(ENV_FILE), &self.env.save_state()?)?;
        self.env.save_files(dir)?;
        let st = TrainState {
            format: checkpoint::FORMAT,
            ppo: self.cfg.clone(),
            num_envs: self.env.num_envs(),
            policy: self.policy_config.clone(),
            iteration: self.iteration,
            global_step: self.global_step,
            adam_step: self.opt.step_count(),
            rng_action: self.rng_action.state(),
            rng_shuffle: self.rng_shuffle.state(),
            next_done: self.next_done.clone(),
            reward_norm: self.reward_norm.clone(),
        };
        let json = serde_json::to_vec_pretty(&st).map_err(|e| Error::json("train state", e))?;
        crate::atomic::write(&dir.join(STATE_FILE), &json)
    }

    /// Continue the run saved in `dir`. `env`, `policy` and `varmap` must be built from the stored
    /// configurations (see [`checkpoint::read_policy_config`]); every stored tensor is checked
    /// against the model's shapes (an [`ErrorKind::Shape`](crate::ErrorKind::Shape) error on a
    /// mismatch).
    pub fn resume(dir: &Path, mut env: E, policy: P, varmap: VarMap) -> Result<Self> {
        let st = checkpoint::read_state(dir)?;
        Self::check(&st.ppo, &env, &varmap, Some(st.num_envs))
            .map_err(|e| e.with_file(dir.join(STATE_FILE)))?;
        let dev = policy.device().clone();
        checkpoint::load_params(&varmap, &dir.join(MODEL_FILE))?;
        policy.parameters_changed(true);
        let params = trainable(&policy, &varmap)?;
        let mut opt = AdamW::new(params.clone(), Self::adam_config(&st.ppo))?;
        let opt_tensors =
            checkpoint::load_tensors_checked(&dir.join(OPTIMIZER_FILE), &opt.state_shapes(), &dev)?;
        opt.restore(st.adam_step, |name| Ok(opt_tensors[name].clone()))?;
        let env_path = dir.join(ENV_FILE);
        env.load_state(&std::fs::read(&env_path).map_err(|e| Error::io(&env_path, e))?)?;
        env.load_files(dir)?;
        if st.next_done.len() != env.num_envs() {
            return Err(Error::checkpoint(
                dir.join(STATE_FILE),
                "next_done has the wrong length",
            ));
        }
        let rows = env.num_envs() * env.agents_per_env();
        if st.ppo.norm_reward != st.reward_norm.is_some()
            || st
                .reward_norm
                .as_ref()
                .is_some_and(|r| r.returns.len() != rows)
        {
            return Err(Error::checkpoint(
                dir.join(STATE_FILE),
                "the reward normalisation state does not match ppo.norm_reward / the environment",
            ));
        }
        let next_obs = env.observe()?;
        Ok(Self {
            cfg: st.ppo,
            env,
            policy,
            params,
            varmap,
            opt,
            policy_config: st.policy,
            rng_action: ResumableRng::from_state(st.rng_action),
            rng_shuffle: ResumableRng::from_state(st.rng_shuffle),
            iteration: st.iteration,
            global_step: st.global_step,
            next_obs,
            next_done: st.next_done,
            reward_norm: st.reward_norm,
            clock: Instant::now(),
            clock_step: st.global_step,
        })
    }
}

/// Seconds spent in the parts of an iteration.
#[derive(Default)]
struct Times {
    /// Environment steps of the rollout.
    env: f64,
    /// Policy forward passes and sampling of the rollout.
    policy: f64,
    /// The update (all epochs).
    update: f64,
}

/// The quantities CleanRL logs from the last minibatch.
#[derive(Default)]
struct LastMinibatch {
    policy_loss: f64,
    value_loss: f64,
    entropy: f64,
    old_approx_kl: f64,
    approx_kl: f64,
    grad_norm: f64,
    kl_prior: Option<f64>,
}

/// One chunk of a minibatch: its units' observations and its rows' rollout data (advantages
/// already normalised over the whole minibatch).
struct ChunkBatch<O> {
    obs: O,
    actions: Tensor,
    old_logprob: Tensor,
    old_values: Tensor,
    returns: Tensor,
    adv: Tensor,
    mask: Option<Tensor>,
}

/// A loss's logged parts: one chunk's means, or a minibatch's as the chunks' means weighted by
/// their shares of the rows ([`LossParts::add`]).
#[derive(Debug, Default)]
struct LossParts {
    policy_loss: f64,
    value_loss: f64,
    entropy: f64,
    old_approx_kl: f64,
    approx_kl: f64,
    clipfrac: f64,
    kl_prior: Option<f64>,
}

impl LossParts {
    /// Add `w` times `p` (`w = 1` for a minibatch of one chunk: the sums are then exactly `p`).
    fn add(&mut self, p: &LossParts, w: f64) {
        self.policy_loss += w * p.policy_loss;
        self.value_loss += w * p.value_loss;
        self.entropy += w * p.entropy;
        self.old_approx_kl += w * p.old_approx_kl;
        self.approx_kl += w * p.approx_kl;
        self.clipfrac += w * p.clipfrac;
        if let Some(k) = p.kl_prior {
            self.kl_prior = Some(self.kl_prior.unwrap_or(0.0) + w * k);
        }
    }
}

/// The trainable parameters' gradients of `g`, detached, added to `acc` when given; the rest of
/// `g` (gradients of frozen parameters and of inputs) is dropped. Detached because a parameter's
/// gradient as candle returns it still records how it was computed (`x^T g` of a matmul keeps its
/// operand `x`, a forward activation), so holding it would keep that backward pass's whole
/// autograd graph alive: summed over the chunks of a minibatch, every chunk's graph until the
/// optimizer step.
fn collect_grads(
    acc: Option<GradStore>,
    mut g: GradStore,
    params: &[(String, Var)],
) -> Result<GradStore> {
    let mut acc = acc.unwrap_or_default();
    for (_, p) in params {
        if let Some(x) = g.remove(p.as_tensor()) {
            let x = x.detach();
            let sum = match acc.remove(p.as_tensor()) {
                Some(a) => (a + x)?,
                None => x,
            };
            acc.insert(p.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// The parameters of `varmap` the optimiser updates: all but those the policy freezes.
fn trainable<P: ActorCritic>(policy: &P, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let params: Vec<(String, Var)> = named_vars(varmap)
        .into_iter()
        .filter(|(name, _)| !policy.is_frozen(name))
        .collect();
    if params.is_empty() {
        return Err(Error::invalid(
            "every parameter of the policy is frozen: nothing to train",
        ));
    }
    Ok(params)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// `(x - mean) / (std + 1e-8)` with torch's unbiased std, in place (computed in f64).
fn normalize(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = if n > 1 {
        x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        f64::NAN
    };
    let std = var.sqrt();
    for v in x.iter_mut() {
        *v = ((*v as f64 - mean) / (std + 1e-8)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.], &dev)?;
        let b = Var::new(&[3f32], &dev)?;
        // loss = 3 a0 + 4 a1 + 12 b: grads (3, 4) and (12), global norm 13.
        let loss = ((a.as_tensor() * &Tensor::new(&[3f32, 4.], &dev)?)?.sum_all()?
            + (b.as_tensor() * 12.0)?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let norm = clip_grad_norm(&mut grads, &params, 1.3)?;
        assert!((norm - 13.0).abs() < 1e-5);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?;
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?;
        let k = 1.3 / (13.0 + 1e-6);
        assert!((ga[0] as f64 - 3.0 * k).abs() < 1e-6 && (ga[1] as f64 - 4.0 * k).abs() < 1e-6);
        assert!((gb[0] as f64 - 12.0 * k).abs() < 1e-6);
        // Below the threshold nothing changes.
        let norm2 = clip_grad_norm(&mut grads, &params, 100.0)?;
        assert!((norm2 - 1.3).abs() < 1e-4);
        assert_eq!(grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?, gb);
        Ok(())
    }

    #[test]
    fn collected_gradients_are_detached_and_summed() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, 2.], [3., 4.]], &dev)?;
        let frozen = Var::new(&[5f32], &dev)?;
        let params = vec![("w".to_string(), w.clone())];
        let chunk = |x: &[f32]| -> Result<GradStore> {
            // x is an activation computed from a variable, as in a network.
            let x = Tensor::new(x, &dev)?
                .reshape((1, 2))?
                .broadcast_mul(frozen.as_tensor())?;
            Ok(x.matmul(w.as_tensor())?.sum_all()?.backward()?)
        };
        let g1 = chunk(&[1., 0.])?;
        // candle's own gradient of w records the matmul (it would keep the pass's graph alive).
        assert!(g1.get(w.as_tensor()).is_some_and(|g| g.track_op()));
        let acc = collect_grads(None, g1, &params)?;
        let acc = collect_grads(Some(acc), chunk(&[0., 1.])?, &params)?;
        let g = acc.get(w.as_tensor()).expect("w's gradient");
        assert!(!g.track_op(), "the collected gradient holds no graph");
        // d/dw sum(5 x w) = 5 x^T 1, summed over the two chunks.
        assert_eq!(g.to_vec2::<f32>()?, vec![vec![5., 5.], vec![5., 5.]]);
        // Only the trainable parameters are kept.
        assert!(acc.get(frozen.as_tensor()).is_none());
        Ok(())
    }

    #[test]
    fn advantage_normalisation_is_torch_like() {
        let mut x = [1f32, 2., 3., 4.];
        normalize(&mut x);
        // mean 2.5, unbiased std sqrt(5/3) = 1.2909944
        assert!((x[0] + 1.5 / 1.2909944).abs() < 1e-6);
        assert!((x.iter().sum::<f32>()).abs() < 1e-6);
    }
}
