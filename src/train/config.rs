/*!
PPO hyperparameters. Defaults are CleanRL's `ppo.py` defaults (CartPole-v1), so an empty TOML table
reproduces that script; unknown fields are rejected.

The number of parallel environments is not a hyperparameter here: it is the environment's own
(`TrainEnv::num_envs`, the trading environment's `env.scenarios`), so the sizes that depend on it
take it as an argument (`batch_size(num_envs)`, ...). CleanRL's CartPole run uses 4.
*/

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Every hyperparameter of [`Ppo`](super::Ppo), documented where it is declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Seed of everything random in training: environment resets, action sampling and minibatch
    /// shuffling (each from its own stream).
    pub seed: u64,
    /// Steps per environment per rollout. The batch is `num_envs * num_steps` units.
    pub num_steps: usize,
    /// Total environment steps (units) of the run: `total_timesteps / batch_size` iterations.
    pub total_timesteps: u64,
    /// Adam learning rate (the initial one when annealed).
    pub learning_rate: f64,
    /// Anneal the learning rate linearly to 0 over the iterations:
    /// `lr_i = (1 - (i - 1) / num_iterations) * learning_rate` for iteration `i = 1..`.
    pub anneal_lr: bool,
    /// Discount factor.
    pub gamma: f64,
    /// GAE lambda.
    pub gae_lambda: f64,
    /// Minibatches per epoch; `batch_size` must be a multiple of it.
    pub num_minibatches: usize,
    /// How an epoch's units are split into minibatches: `"grouped"` (the default) puts all units
    /// that share a group key (the trading observation's `(path, bar)`) in the same minibatch, so
    /// that the policy's encoder runs once per distinct bar of a minibatch; `"shuffled"` is
    /// CleanRL's plain shuffle. Observations without group keys (CartPole) are always shuffled.
    /// Either way an epoch is a random partition of the batch, each unit in exactly one
    /// minibatch (docs/training.md, "Bar-grouped minibatches").
    pub minibatches: MinibatchMode,
    /// Passes over the batch per iteration.
    pub update_epochs: usize,
    /// Memory bound of the update, part 1: the most encoder windows (distinct bars x symbols)
    /// one backward pass holds. The autograd graph of a pass grows with the windows its encoder
    /// runs (about 0.2 MiB per window with the default encoder, 31 MiB per bar at 143 symbols;
    /// docs/training.md, "Memory of the update"), so a minibatch over the bound is cut into chunks
    /// of whole bars ([`minibatch::chunks`](super::minibatch::chunks)); each chunk's share of the
    /// minibatch loss (its means times its fraction of the rows) is backpropagated on its own and
    /// the gradients are summed before the clipping and the optimizer step: the same loss and
    /// gradient as one pass, up to float rounding, with one chunk's graph alive at a time, and
    /// still one encoder pass per distinct bar of the minibatch. A minibatch within both bounds
    /// runs as one pass, bit-identical to no bound. Every logged loss is the whole minibatch's.
    /// 0 = no bound.
    pub update_chunk_windows: usize,
    /// Memory bound of the update, part 2: the most rows (units x symbols, the heads' and the
    /// loss's samples) one backward pass holds; 0 = no bound. A row costs about 8 KiB of graph
    /// with the default heads (measured), so the default keeps the rows of a pass near 2 GiB. A
    /// bar with more samples than this is split (its encoder pass then repeats).
    pub update_chunk_rows: usize,
    /// Normalise advantages per minibatch: `(A - mean) / (std + 1e-8)`, std unbiased as in torch.
    pub norm_adv: bool,
    /// Surrogate clipping: the ratio is clipped to `[1 - clip_coef, 1 + clip_coef]`.
    pub clip_coef: f64,
    /// Clip the value loss around the rollout's values with the same `clip_coef`.
    pub clip_vloss: bool,
    /// Entropy bonus coefficient at the first iteration ...
    pub ent_coef_start: f64,
    /// ... and at the last: linear in between, with the same schedule as the learning rate
    /// (equal values, CleanRL's default 0.01, mean a constant coefficient).
    pub ent_coef_end: f64,
    /// Value loss coefficient.
    pub vf_coef: f64,
    /// Global gradient-norm clipping: all gradients are scaled by
    /// `min(1, max_grad_norm / (total_norm + 1e-6))` (torch's `clip_grad_norm_`).
    pub max_grad_norm: f64,
    /// Stop the epochs of an iteration early when the last minibatch's approx KL exceeds this.
    pub target_kl: Option<f64>,
    /// Scale rewards by the running standard deviation of the discounted return (Gymnasium's
    /// `NormalizeReward`, which CleanRL's continuous-control PPO uses): per row, `G = gamma * G *
    /// (1 - done) + r`; the running variance of `G` over all rows and steps so far (parallel
    /// Welford) gives `r / sqrt(var + 1e-8)`, then clipped to `[-reward_clip, reward_clip]`. The
    /// statistics are saved in checkpoints. Use it when rewards are far from unit scale (trading
    /// rewards are fractions of capital, ~1e-3 per step), where the critic's initial outputs would
    /// otherwise drown the returns.
    pub norm_reward: bool,
    /// Clip of the normalised rewards (`norm_reward` only).
    pub reward_clip: f64,
    /// Adam epsilon (CleanRL: 1e-5, not torch's 1e-8).
    pub adam_eps: f64,
    /// Decoupled weight decay of AdamW (0: plain Adam, as CleanRL).
    pub weight_decay: f64,
    /// Coefficient of the KL term toward the policy's fixed prior (`ActorCritic::prior_logits`;
    /// the trading policy's is the supervised prior of `agents::prior`): the loss gains
    /// `c_i * mean_rows KL(pi || prior)`, both distributions under the rollout's action mask. 0
    /// (default): off. Logged per iteration as `loss.kl_prior` and `loss.kl_prior_coef` (in the
    /// metrics' `policy` map).
    pub kl_prior_coef: f64,
    /// The KL coefficient is annealed linearly to 0 over this many iterations:
    /// `c_i = kl_prior_coef * max(0, 1 - (i - 1) / kl_prior_iters)` for iteration `i = 1..`.
    /// Must be >= 1 when `kl_prior_coef > 0`.
    pub kl_prior_iters: usize,
    /// Cost curriculum: over the first `cost_ramp_frac` of the run's iterations the weight of the
    /// reward's cost term rises linearly from 0 to its configured weight (`reward.w_cost`), then
    /// stays there: `scale_i = min(1, (i - 1) / round(cost_ramp_frac * num_iterations))` for
    /// iteration `i = 1..` ([`PpoConfig::cost_scale_at`]). Why: a policy that explores pays costs
    /// on every random trade while the P&L of those trades averages zero, so from the first
    /// iteration the cost term alone says "trade less", and PPO can settle on holding before it
    /// has found what to trade (docs/training.md, "Reward ablations"). With the ramp it first
    /// learns what pays before costs, then the second part of the run trains on the full reward.
    /// 0 (default): off, every iteration at the configured weight. In `[0, 1)`. Applied by
    /// environments that have a cost term (the trading env, [`TrainEnv::set_cost_scale`](super::TrainEnv::set_cost_scale));
    /// logged per iteration as `schedule.cost_scale` (in the metrics' `policy` map).
    pub cost_ramp_frac: f64,
    /// Staged symbol onboarding (the design's curriculum): at iteration 1 only the first
    /// `onboard_start` symbols (in the data's symbol order) may trade, the others are held at HOLD
    /// by the action mask; every `onboard_every` iterations `onboard_step` more become tradable,
    /// until all are ([`PpoConfig::tradable_symbols_at`]). A symbol, once tradable, stays so. Why:
    /// a policy that starts on a few symbols sees each of them more often in its first updates;
    /// the shared heads then carry what they learned to the symbols added later. 0 (default):
    /// off, every symbol tradable from the start. Applied by environments with symbol agents
    /// ([`TrainEnv::set_tradable_symbols`](super::TrainEnv::set_tradable_symbols)); logged per
    /// iteration as `schedule.tradable_symbols` (in the metrics' `policy` map).
    pub onboard_start: usize,
    /// Iterations between onboarding stages (`onboard_start > 0` only; >= 1).
    pub onboard_every: usize,
    /// Symbols added per onboarding stage (`onboard_start > 0` only; >= 1).
    pub onboard_step: usize,
    /// Checkpoint selection (`eval::select`, `marl-trade train`): the last `val_fraction` of the
    /// train period's bars are held out of training as a validation slice; every `val_every`
    /// iterations the policy is played greedily on it and the checkpoint with the best validation
    /// Sharpe is kept as the run's `best/`. Never the test period. 0 = off (train on the whole
    /// train period, the run's result is its last checkpoint).
    pub val_fraction: f64,
    /// Iterations between validation evaluations (checkpoint selection only).
    pub val_every: usize,
    /// Early stopping: end the run after this many validation evaluations in a row without a new
    /// best (0 = never stop early; the best checkpoint is still selected).
    pub val_patience: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            num_steps: 128,
            total_timesteps: 500_000,
            learning_rate: 2.5e-4,
            anneal_lr: true,
            gamma: 0.99,
            gae_lambda: 0.95,
            num_minibatches: 4,
            minibatches: MinibatchMode::Grouped,
            update_epochs: 4,
            update_chunk_windows: 8_192,
            update_chunk_rows: 262_144,
            norm_adv: true,
            clip_coef: 0.2,
            clip_vloss: true,
            ent_coef_start: 0.01,
            ent_coef_end: 0.01,
            vf_coef: 0.5,
            max_grad_norm: 0.5,
            target_kl: None,
            norm_reward: false,
            reward_clip: 10.0,
            adam_eps: 1e-5,
            weight_decay: 0.0,
            kl_prior_coef: 0.0,
            kl_prior_iters: 0,
            cost_ramp_frac: 0.0,
            onboard_start: 0,
            onboard_every: 1,
            onboard_step: 1,
            val_fraction: 0.0,
            val_every: 10,
            val_patience: 0,
        }
    }
}

/// How the update splits a batch into minibatches ([`PpoConfig::minibatches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinibatchMode {
    /// Units with the same group key fall in the same minibatch; the groups are shuffled.
    Grouped,
    /// Units are shuffled one by one (CleanRL).
    Shuffled,
}

impl PpoConfig {
    /// Units (environment steps) per rollout with `num_envs` parallel environments.
    pub fn batch_size(&self, num_envs: usize) -> usize {
        num_envs * self.num_steps
    }

    /// Units per minibatch.
    pub fn minibatch_size(&self, num_envs: usize) -> usize {
        self.batch_size(num_envs) / self.num_minibatches.max(1)
    }

    /// Number of iterations of the run.
    pub fn num_iterations(&self, num_envs: usize) -> usize {
        (self.total_timesteps / self.batch_size(num_envs).max(1) as u64) as usize
    }

    /// The fraction of the schedule left at iteration `i` (1-based): `1 - (i - 1) / num_iterations`.
    pub fn schedule_frac(&self, iteration: usize, num_envs: usize) -> f64 {
        1.0 - (iteration as f64 - 1.0) / self.num_iterations(num_envs).max(1) as f64
    }

    /// Learning rate of iteration `i` (1-based).
    pub fn lr_at(&self, iteration: usize, num_envs: usize) -> f64 {
        if self.anneal_lr {
            self.schedule_frac(iteration, num_envs) * self.learning_rate
        } else {
            self.learning_rate
        }
    }

    /// Entropy coefficient of iteration `i` (1-based).
    pub fn ent_coef_at(&self, iteration: usize, num_envs: usize) -> f64 {
        let f = self.schedule_frac(iteration, num_envs);
        self.ent_coef_end + f * (self.ent_coef_start - self.ent_coef_end)
    }

    /// Scale of the reward's cost-term weight at iteration `i` (1-based): the cost curriculum of
    /// `cost_ramp_frac` (1 when it is off).
    pub fn cost_scale_at(&self, iteration: usize, num_envs: usize) -> f64 {
        let ramp = (self.cost_ramp_frac * self.num_iterations(num_envs) as f64).round();
        if ramp < 1.0 {
            return 1.0;
        }
        ((iteration as f64 - 1.0) / ramp).clamp(0.0, 1.0)
    }

    /// Symbols tradable at iteration `i` (1-based) under staged onboarding: `onboard_start +
    /// onboard_step * floor((i - 1) / onboard_every)`; `usize::MAX` (all) when onboarding is off.
    /// The environment clamps it to its symbol count.
    pub fn tradable_symbols_at(&self, iteration: usize) -> usize {
        if self.onboard_start == 0 {
            return usize::MAX;
        }
        let stages = iteration.saturating_sub(1) / self.onboard_every.max(1);
        self.onboard_start
            .saturating_add(self.onboard_step.saturating_mul(stages))
    }

    /// Coefficient of the KL term toward the prior at iteration `i` (1-based).
    pub fn kl_prior_coef_at(&self, iteration: usize) -> f64 {
        if self.kl_prior_coef <= 0.0 || self.kl_prior_iters == 0 {
            return 0.0;
        }
        let f = 1.0 - (iteration as f64 - 1.0) / self.kl_prior_iters as f64;
        self.kl_prior_coef * f.max(0.0)
    }

    /// Parse TOML (`origin` names the source in errors) for `num_envs` parallel environments.
    pub fn from_toml_str(text: &str, origin: &str, num_envs: usize) -> crate::Result<Self> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| Error::config(origin, e.message().to_string(), e.span()))?;
        cfg.validate(origin, num_envs)?;
        Ok(cfg)
    }

    /// Range checks, and the sizes that depend on `num_envs` parallel environments (the
    /// minibatches divide the batch, at least one iteration); an error names the field.
    pub fn validate(&self, origin: &str, num_envs: usize) -> crate::Result<()> {
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        if num_envs == 0 {
            return Err(Error::invalid("PPO needs at least one environment"));
        }
        if self.num_steps == 0 {
            return bad("ppo.num_steps", "must be >= 1".into());
        }
        let batch = self.batch_size(num_envs);
        if self.num_minibatches == 0 || !batch.is_multiple_of(self.num_minibatches) {
            return bad(
                "ppo.num_minibatches",
                format!(
                    "must divide the batch size {batch} ({num_envs} environments x {} steps)",
                    self.num_steps
                ),
            );
        }
        if self.update_epochs == 0 {
            return bad("ppo.update_epochs", "must be >= 1".into());
        }
        if self.num_iterations(num_envs) == 0 {
            return bad(
                "ppo.total_timesteps",
                format!("must be >= the batch size {batch}"),
            );
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("ppo.learning_rate", "must be > 0".into());
        }
        for (f, v) in [
            ("ppo.gamma", self.gamma),
            ("ppo.gae_lambda", self.gae_lambda),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(f, format!("must be in [0, 1], got {v}"));
            }
        }
        for (f, v) in [
            ("ppo.clip_coef", self.clip_coef),
            ("ppo.vf_coef", self.vf_coef),
            ("ppo.max_grad_norm", self.max_grad_norm),
            ("ppo.ent_coef_start", self.ent_coef_start),
            ("ppo.ent_coef_end", self.ent_coef_end),
            ("ppo.adam_eps", self.adam_eps),
            ("ppo.reward_clip", self.reward_clip),
            ("ppo.weight_decay", self.weight_decay),
            ("ppo.kl_prior_coef", self.kl_prior_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(f, format!("must be a finite number >= 0, got {v}"));
            }
        }
        if self.onboard_start > 0 {
            for (f, v) in [
                ("ppo.onboard_every", self.onboard_every),
                ("ppo.onboard_step", self.onboard_step),
            ] {
                if v == 0 {
                    return bad(f, "must be >= 1 when ppo.onboard_start > 0".into());
                }
            }
        }
        if !(0.0..1.0).contains(&self.cost_ramp_frac) {
            return bad(
                "ppo.cost_ramp_frac",
                format!("must be in [0, 1), got {}", self.cost_ramp_frac),
            );
        }
        if !(0.0..0.5).contains(&self.val_fraction) {
            return bad(
                "ppo.val_fraction",
                format!("must be in [0, 0.5), got {}", self.val_fraction),
            );
        }
        if self.val_every == 0 {
            return bad("ppo.val_every", "must be >= 1".into());
        }
        if let Some(k) = self.target_kl
            && (k.is_nan() || k <= 0.0)
        {
            return bad("ppo.target_kl", "must be > 0 when set".into());
        }
        if self.kl_prior_coef > 0.0 && self.kl_prior_iters == 0 {
            return bad(
                "ppo.kl_prior_iters",
                "must be >= 1 when ppo.kl_prior_coef > 0 (the iterations over which the KL term \
                 is annealed to 0)"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_schedules() {
        let c = PpoConfig::default();
        assert_eq!(
            (c.batch_size(4), c.minibatch_size(4), c.num_iterations(4)),
            (512, 128, 976)
        );
        assert_eq!(c.lr_at(1, 4), 2.5e-4);
        assert!((c.lr_at(977, 4) - 0.0).abs() < 1e-12);
        let c = PpoConfig {
            ent_coef_start: 0.02,
            ent_coef_end: 0.0,
            ..c
        };
        assert_eq!(c.ent_coef_at(1, 4), 0.02);
        assert!((c.ent_coef_at(489, 4) - 0.01).abs() < 1e-4);
        // The cost ramp: off by default; over the first half of 976 iterations (488) it rises
        // from 0 at iteration 1 to 1 at iteration 489, then stays at 1.
        assert_eq!(c.cost_scale_at(1, 4), 1.0);
        let r = PpoConfig {
            cost_ramp_frac: 0.5,
            ..c.clone()
        };
        assert_eq!(r.cost_scale_at(1, 4), 0.0);
        assert_eq!(r.cost_scale_at(245, 4), 0.5);
        assert_eq!(r.cost_scale_at(489, 4), 1.0);
        assert_eq!(r.cost_scale_at(976, 4), 1.0);
        let e = PpoConfig::from_toml_str("cost_ramp_frac = 1.0", "t.toml", 4)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ppo.cost_ramp_frac") && e.contains("t.toml"),
            "{e}"
        );
        let e = PpoConfig::from_toml_str("num_minibatch = 4", "t.toml", 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_minibatch"), "{e}");
        let e = PpoConfig::from_toml_str("num_minibatches = 3", "t.toml", 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ppo.num_minibatches"), "{e}");
        let c = PpoConfig::from_toml_str("target_kl = 0.01\nlearning_rate = 1e-3", "t.toml", 4)
            .unwrap();
        assert_eq!(c.target_kl, Some(0.01));
    }

    #[test]
    fn kl_prior_schedule_and_validation() {
        let c = PpoConfig::from_toml_str("kl_prior_coef = 0.5\nkl_prior_iters = 4", "t.toml", 4)
            .unwrap();
        let got: Vec<f64> = (1..=6).map(|i| c.kl_prior_coef_at(i)).collect();
        assert_eq!(got, [0.5, 0.375, 0.25, 0.125, 0.0, 0.0]);
        assert_eq!(
            PpoConfig::default().kl_prior_coef_at(1),
            0.0,
            "off by default"
        );
        let e = PpoConfig::from_toml_str("kl_prior_coef = 0.5", "t.toml", 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ppo.kl_prior_iters"), "{e}");
        let e = PpoConfig::from_toml_str("kl_prior_coef = -1\nkl_prior_iters = 3", "t.toml", 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ppo.kl_prior_coef"), "{e}");
    }
}
