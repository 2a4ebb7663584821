/*!
The environment's configuration sections, `[env]`, `[risk]` and `[master]`, and [`EnvSetup`]: the
sections a [`VecEnv`](super::VecEnv) is built from (its own three, plus the `[costs]` and `[reward]`
sections of the layers below it). An environment never needs the whole application configuration.
*/

use serde::{Deserialize, Serialize};

use super::MASTER_ACTIONS;
use crate::costs::CostConfig;
use crate::error::{Error, Result};
use crate::reward::RewardConfig;

/// The vectorised environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Parallel scenarios N.
    pub scenarios: usize,
    /// Steps per episode before auto-reset (an episode also ends at the data's end or on the kill switch).
    pub episode_len: usize,
    /// Starting cash of every scenario, in currency units.
    pub initial_capital: f64,
    /// Fraction of bars (from the start) used for training; later bars are the held-out test period.
    pub train_fraction: f64,
    /// The supervised-prior cache (`marl-trade sl cache`, `crate::priors`) the observation's SL
    /// slice reads; absent: the slice is zeros. A cache built from other data is refused when the
    /// environment is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sl_cache: Option<String>,
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self {
            scenarios: 128,
            episode_len: 2048,
            initial_capital: 1_000_000.0,
            train_fraction: 0.7,
            sl_cache: None,
        }
    }
}

/// Hard risk limits and order sizes (docs/env-spec.md, "Orders" and "Limits").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// Gross exposure may not exceed leverage_cap x equity (buys are scaled down to fit).
    pub leverage_cap: f64,
    /// Portfolio drawdown from peak at which the kill switch liquidates and ends the episode.
    pub kill_drawdown: f64,
    /// BUY_SMALL order size as a fraction of equity (before the risk multiplier).
    pub buy_small: f64,
    /// BUY_MEDIUM order size as a fraction of equity (before the risk multiplier).
    pub buy_medium: f64,
    /// BUY_LARGE order size as a fraction of equity (before the risk multiplier).
    pub buy_large: f64,
    /// ADD_TO_WINNER order size as a fraction of equity (before the risk multiplier).
    pub add_to_winner: f64,
    /// SELL_PARTIAL sells this fraction of the position.
    pub sell_partial: f64,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            leverage_cap: 1.5,
            kill_drawdown: 0.30,
            buy_small: 0.005,
            buy_medium: 0.01,
            buy_large: 0.02,
            add_to_winner: 0.01,
            sell_partial: 0.5,
        }
    }
}

/// The master's 4 x 4 x 3 action grid (docs/env-spec.md, "Master action").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Multiplies every buy size.
    pub risk_multipliers: Vec<f64>,
    /// Per-position cap as a fraction of equity.
    pub position_caps: Vec<f64>,
    /// Open-position limit for regime modes defensive, neutral, aggressive (clamped to S).
    pub regime_max_open: Vec<u32>,
    /// Master action used by callers that do not drive the master (index into the 48-way grid).
    pub default_action: u32,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            risk_multipliers: vec![0.5, 1.0, 1.5, 2.0],
            position_caps: vec![0.02, 0.05, 0.10, 0.20],
            regime_max_open: vec![10, 40, 143],
            // risk 1.0, cap 0.05, neutral
            default_action: 12 + 3 + 1,
        }
    }
}

impl EnvConfig {
    /// Range checks; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::config_field(origin, field, why.into()));
        if self.scenarios == 0 {
            return bad("env.scenarios", "must be >= 1");
        }
        if self.episode_len == 0 {
            return bad("env.episode_len", "must be >= 1");
        }
        if !(self.initial_capital.is_finite() && self.initial_capital > 0.0) {
            return bad("env.initial_capital", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.train_fraction) || self.train_fraction == 0.0 {
            return bad("env.train_fraction", "must be in (0, 1)");
        }
        if self
            .sl_cache
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return bad(
                "env.sl_cache",
                "is empty: name a cache file (`marl-trade sl cache`) or leave the field out",
            );
        }
        Ok(())
    }
}

impl RiskConfig {
    /// Range checks; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        if !(self.leverage_cap.is_finite() && self.leverage_cap >= 0.0) {
            return bad("risk.leverage_cap", "must be >= 0".into());
        }
        if !(self.kill_drawdown > 0.0 && self.kill_drawdown <= 1.0) {
            return bad("risk.kill_drawdown", "must be in (0, 1]".into());
        }
        for (name, v) in [
            ("risk.buy_small", self.buy_small),
            ("risk.buy_medium", self.buy_medium),
            ("risk.buy_large", self.buy_large),
            ("risk.add_to_winner", self.add_to_winner),
            ("risk.sell_partial", self.sell_partial),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return bad(name, format!("must be in (0, 1], got {v}"));
            }
        }
        Ok(())
    }
}

impl MasterConfig {
    /// Range checks; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        if self.risk_multipliers.len() != 4 {
            return bad("master.risk_multipliers", "needs exactly 4 values".into());
        }
        if self.position_caps.len() != 4 {
            return bad("master.position_caps", "needs exactly 4 values".into());
        }
        if self.regime_max_open.len() != 3 {
            return bad(
                "master.regime_max_open",
                "needs exactly 3 values (defensive, neutral, aggressive)".into(),
            );
        }
        if self
            .risk_multipliers
            .iter()
            .any(|v| !(v.is_finite() && *v > 0.0))
        {
            return bad("master.risk_multipliers", "values must be > 0".into());
        }
        if self.position_caps.iter().any(|v| !(*v > 0.0 && *v <= 1.0)) {
            return bad("master.position_caps", "values must be in (0, 1]".into());
        }
        if self.default_action as usize >= MASTER_ACTIONS {
            return bad(
                "master.default_action",
                format!("must be < {MASTER_ACTIONS}"),
            );
        }
        Ok(())
    }
}

/// Everything an environment is built from: its own sections and those of the layers below it
/// (costs, reward). `Config::env_setup` composes it from a configuration file; a training driver
/// that embeds the environment can build it directly (every section has documented defaults).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvSetup {
    /// `[env]`: scenarios, episode length, capital, train/test split.
    pub env: EnvConfig,
    /// `[risk]`: limits and order sizes.
    pub risk: RiskConfig,
    /// `[master]`: the directive grid.
    pub master: MasterConfig,
    /// `[costs]`: fills and fees.
    pub costs: CostConfig,
    /// `[reward]`: the weights and shaping parameters.
    pub reward: RewardConfig,
}

impl EnvSetup {
    /// Check every section; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.env.validate(origin)?;
        self.risk.validate(origin)?;
        self.master.validate(origin)?;
        self.costs.validate(origin)?;
        self.reward.validate(origin)
    }
}
