/*!
Configuration: one TOML file describes the data, the environment, costs, risk limits, the reward
weights, the symbol agent's network (`[agent]`) and PPO (`[ppo]`). Every field has a documented
default, so a config file only names what it changes; unknown fields are rejected so that a typo is
an error, not a silently ignored setting.

Two fields are derived: `ppo.num_envs` is `env.scenarios`, and `agent.symbols` is the number of
symbols of the data. A file may leave them out (a file that sets them must agree, or it is an
error); code that edits a `Config` need not keep them in step, as the trainer takes both from the
environment it builds ([`Config::ppo_for_env`], `train::run::agent_config`).

`Config::from_file` reports a malformed file with its path and the offending field;
[`Config::from_file_with_overrides`] applies `section.field=value` overrides (the CLI's `--set`)
before parsing, so an override is checked like a line of the file.
*/

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::agents::symbol::AgentConfig;
use crate::error::{Error, Result};
use crate::train::PpoConfig;

/// The whole configuration. Sections mirror the modules that consume them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub env: EnvConfig,
    pub costs: CostConfig,
    pub risk: RiskConfig,
    pub master: MasterConfig,
    pub reward: RewardConfig,
    /// The symbol agent: encoder sizes and switches, heads (`agents::symbol::AgentConfig`).
    pub agent: AgentConfig,
    /// PPO hyperparameters (`train::PpoConfig`; CleanRL's defaults, `num_envs` = `env.scenarios`).
    pub ppo: PpoConfig,
}

impl Default for Config {
    fn default() -> Self {
        let data = DataConfig::default();
        let env = EnvConfig::default();
        // Trading defaults that differ from the components' own (CleanRL / design) defaults, for
        // the reasons given in configs/default.toml: a HOLD prior and reward normalisation.
        let agent = AgentConfig {
            symbols: data.synthetic.symbols,
            hold_prior: 2.0,
            ..AgentConfig::default()
        };
        let ppo = PpoConfig {
            num_envs: env.scenarios,
            norm_reward: true,
            ..PpoConfig::default()
        };
        Self {
            data,
            env,
            costs: CostConfig::default(),
            risk: RiskConfig::default(),
            master: MasterConfig::default(),
            reward: RewardConfig::default(),
            agent,
            ppo,
        }
    }
}

impl Config {
    /// Parse a TOML string; `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        // Parsed once as it stands, for errors that point into the text (syntax, unknown fields,
        // wrong types) ...
        let _: Config = toml::from_str(text)
            .map_err(|e| Error::config(origin, e.message().to_string(), e.span()))?;
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config(origin, e.message().to_string(), e.span()))?;
        // ... then laid over `Config::default()`, so that a field a section leaves out keeps the
        // whole configuration's default (which may differ from the section type's own default:
        // `agent.hold_prior`, `ppo.norm_reward`).
        let mut merged = toml::Table::try_from(Config::default()).expect("defaults serialise");
        merge_tables(&mut merged, table.clone());
        let mut cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| Error::config(origin, e.message().to_string(), None))?;
        let given = |section: &str, field: &str| {
            table
                .get(section)
                .and_then(|v| v.as_table())
                .is_some_and(|t| t.contains_key(field))
        };
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        if given("ppo", "num_envs") && cfg.ppo.num_envs != cfg.env.scenarios {
            return bad(
                "ppo.num_envs",
                format!(
                    "is {}, env.scenarios is {} (leave it out to take env.scenarios)",
                    cfg.ppo.num_envs, cfg.env.scenarios
                ),
            );
        }
        if given("agent", "symbols")
            && cfg.data.source == DataSource::Synthetic
            && cfg.agent.symbols != cfg.data.synthetic.symbols
        {
            return bad(
                "agent.symbols",
                format!(
                    "is {}, data.synthetic.symbols is {} (leave it out to take the data's)",
                    cfg.agent.symbols, cfg.data.synthetic.symbols
                ),
            );
        }
        cfg.ppo.num_envs = cfg.env.scenarios;
        if cfg.data.source == DataSource::Synthetic {
            cfg.agent.symbols = cfg.data.synthetic.symbols;
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Read a TOML config file and apply `overrides`, each `section.field=value` (dotted path, a
    /// TOML value; a bare word is taken as a string), as if the file had said so.
    pub fn from_file_with_overrides(path: impl AsRef<Path>, overrides: &[String]) -> Result<Self> {
        let path = path.as_ref();
        if overrides.is_empty() {
            return Self::from_file(path);
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let origin = path.display().to_string();
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::config(&origin, e.message().to_string(), e.span()))?;
        for o in overrides {
            apply_override(&mut table, o)
                .map_err(|why| Error::config(&origin, format!("--set {o}: {why}"), None))?;
        }
        let merged = toml::to_string(&table).expect("a TOML table serialises");
        Self::from_toml_str(&merged, &format!("{origin} (with --set)"))
    }

    /// The PPO configuration with `num_envs = env.scenarios`.
    pub fn ppo_for_env(&self) -> crate::train::PpoConfig {
        crate::train::PpoConfig {
            num_envs: self.env.scenarios,
            ..self.ppo.clone()
        }
    }

    /// Read and validate a TOML config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Serialise back to TOML (written next to checkpoints and reports).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Check ranges that serde cannot express. Each error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        let s = &self.data.synthetic;
        if s.symbols == 0 {
            return bad("data.synthetic.symbols", "must be >= 1".into());
        }
        if s.paths == 0 {
            return bad("data.synthetic.paths", "must be >= 1".into());
        }
        if s.bars_per_day == 0 {
            return bad("data.synthetic.bars_per_day", "must be >= 1".into());
        }
        if s.sectors == 0 {
            return bad("data.synthetic.sectors", "must be >= 1".into());
        }
        if !(0.0..=1.0).contains(&s.signal_strength) {
            return bad(
                "data.synthetic.signal_strength",
                format!("must be in [0, 1], got {}", s.signal_strength),
            );
        }
        if self.data.min_bars < crate::features::WARMUP + 2 {
            return bad(
                "data.min_bars",
                format!(
                    "must be >= {} (feature warm-up + 2)",
                    crate::features::WARMUP + 2
                ),
            );
        }
        let e = &self.env;
        if e.scenarios == 0 {
            return bad("env.scenarios", "must be >= 1".into());
        }
        if e.episode_len == 0 {
            return bad("env.episode_len", "must be >= 1".into());
        }
        if !(e.initial_capital.is_finite() && e.initial_capital > 0.0) {
            return bad("env.initial_capital", "must be a positive number".into());
        }
        if !(0.0..1.0).contains(&e.train_fraction) || e.train_fraction == 0.0 {
            return bad("env.train_fraction", "must be in (0, 1)".into());
        }
        let c = &self.costs;
        for (name, v) in [
            ("costs.commission_bps", c.commission_bps),
            ("costs.half_spread_bps", c.half_spread_bps),
            ("costs.impact_coef", c.impact_coef),
            ("costs.max_slippage_bps", c.max_slippage_bps),
            ("costs.borrow_rate_annual", c.borrow_rate_annual),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, format!("must be a finite number >= 0, got {v}"));
            }
        }
        let r = &self.risk;
        if !(r.leverage_cap.is_finite() && r.leverage_cap >= 0.0) {
            return bad("risk.leverage_cap", "must be >= 0".into());
        }
        if !(r.kill_drawdown > 0.0 && r.kill_drawdown <= 1.0) {
            return bad("risk.kill_drawdown", "must be in (0, 1]".into());
        }
        for (name, v) in [
            ("risk.buy_small", r.buy_small),
            ("risk.buy_medium", r.buy_medium),
            ("risk.buy_large", r.buy_large),
            ("risk.add_to_winner", r.add_to_winner),
            ("risk.sell_partial", r.sell_partial),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return bad(name, format!("must be in (0, 1], got {v}"));
            }
        }
        let m = &self.master;
        if m.risk_multipliers.len() != 4 {
            return bad("master.risk_multipliers", "needs exactly 4 values".into());
        }
        if m.position_caps.len() != 4 {
            return bad("master.position_caps", "needs exactly 4 values".into());
        }
        if m.regime_max_open.len() != 3 {
            return bad(
                "master.regime_max_open",
                "needs exactly 3 values (defensive, neutral, aggressive)".into(),
            );
        }
        if m.risk_multipliers
            .iter()
            .any(|v| !(v.is_finite() && *v > 0.0))
        {
            return bad("master.risk_multipliers", "values must be > 0".into());
        }
        if m.position_caps.iter().any(|v| !(*v > 0.0 && *v <= 1.0)) {
            return bad("master.position_caps", "values must be in (0, 1]".into());
        }
        if m.default_action as usize >= crate::env::MASTER_ACTIONS {
            return bad(
                "master.default_action",
                format!("must be < {}", crate::env::MASTER_ACTIONS),
            );
        }
        let w = &self.reward;
        if !(w.dsr_eta > 0.0 && w.dsr_eta < 1.0) {
            return bad("reward.dsr_eta", "must be in (0, 1)".into());
        }
        if !(w.trade_dd_threshold > 0.0 && w.trade_dd_threshold < 1.0) {
            return bad("reward.trade_dd_threshold", "must be in (0, 1)".into());
        }
        if w.util_target.is_nan() || w.util_target <= 0.0 {
            return bad("reward.util_target", "must be > 0".into());
        }
        let a = &self.agent;
        if a.dyn_obs != crate::env::obs::DYN_OBS {
            return bad(
                "agent.dyn_obs",
                format!("must be {} (env::obs::DYN_OBS)", crate::env::obs::DYN_OBS),
            );
        }
        if a.num_actions != crate::env::N_ACTIONS {
            return bad(
                "agent.num_actions",
                format!("must be {}", crate::env::N_ACTIONS),
            );
        }
        if a.encoder.window != crate::features::WINDOW
            || a.encoder.features != crate::features::N_TECH
        {
            return bad(
                "agent.encoder.window",
                format!(
                    "window and features must be {} and {} (the feature array)",
                    crate::features::WINDOW,
                    crate::features::N_TECH
                ),
            );
        }
        a.validate(origin)?;
        self.ppo.validate(origin)
    }
}

/// Lay `over` onto `base`: tables merge recursively, any other value replaces.
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Set `path=value` in `table` (creating sections as needed).
fn apply_override(table: &mut toml::Table, item: &str) -> std::result::Result<(), String> {
    let (key, raw) = item.split_once('=').ok_or("expected section.field=value")?;
    let keys: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("bad key `{}`", key.trim()));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed table has v"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let (last, parents) = keys.split_last().expect("split gives one key");
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a section"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Where market data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (the embedded default generator) or `"file"` (parquet / CSV at `path`).
    pub source: DataSource,
    /// Data file for `source = "file"`: long-format OHLCV, `.parquet` or `.csv` (optionally `.gz`).
    pub path: Option<String>,
    /// Benchmark symbol in a data file (also the name of the synthetic benchmark).
    pub benchmark: String,
    /// A symbol with fewer bars than this is rejected by the loader.
    pub min_bars: usize,
    /// Calendar-gap policy for real data (see `data::loader` docs).
    pub align: AlignPolicy,
    pub synthetic: SyntheticConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Synthetic,
            path: None,
            benchmark: "SPY".into(),
            min_bars: 128,
            align: AlignPolicy::Intersection,
            synthetic: SyntheticConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    Synthetic,
    File,
}

/// How bars of symbols that trade on different timestamps are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlignPolicy {
    /// Keep only timestamps at which every symbol (and the benchmark) has a bar.
    Intersection,
    /// Keep the union of timestamps between the first one at which every symbol has traded and the
    /// last one at which every symbol still trades; a missing bar is filled with the previous close
    /// as O=H=L=C and zero volume (zero dollar volume caps the slippage of a fill there, see
    /// docs/env-spec.md §4.5).
    ForwardFill,
}

/// The synthetic market generator (see `data::synthetic`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Number of symbols S (the benchmark comes on top).
    pub symbols: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Bars per trading day (hourly bars: 7).
    pub bars_per_day: usize,
    /// Independent paths P (scenarios draw a path and a start offset).
    pub paths: usize,
    /// Number of sectors; symbols are assigned round-robin.
    pub sectors: usize,
    /// Seed: the same seed gives bit-identical data.
    pub seed: u64,
    /// Strength of the planted predictive signal in [0, 1]; 0 means none.
    pub signal_strength: f64,
    /// Which signal is planted.
    pub signal_kind: SignalKind,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            symbols: 143,
            bars: 8192,
            bars_per_day: 7,
            paths: 1,
            sectors: 11,
            seed: 7,
            signal_strength: 0.0,
            signal_kind: SignalKind::Sentiment,
        }
    }
}

/// Planted signal families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    /// The sentiment series at bar t carries information about the return of bar t+1.
    Sentiment,
    /// In bull regimes the return of bar t+1 continues the trailing momentum.
    Momentum,
}

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
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self {
            scenarios: 128,
            episode_len: 2048,
            initial_capital: 1_000_000.0,
            train_fraction: 0.7,
        }
    }
}

/// Execution costs (docs/env-spec.md, "Fills").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Commission per side in basis points of traded notional (7.5 bps = 15 bps round trip).
    pub commission_bps: f64,
    /// Half the bid-ask spread in basis points, paid on every fill.
    pub half_spread_bps: f64,
    /// Square-root impact: slippage fraction += impact_coef * sqrt(order notional / bar dollar volume).
    pub impact_coef: f64,
    /// Cap on total slippage (spread + impact), in basis points.
    pub max_slippage_bps: f64,
    /// Annual rate charged on negative cash, accrued per bar.
    pub borrow_rate_annual: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            commission_bps: 7.5,
            half_spread_bps: 1.0,
            impact_coef: 0.1,
            max_slippage_bps: 50.0,
            borrow_rate_annual: 0.05,
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
    /// BUY_SMALL / BUY_MEDIUM / BUY_LARGE order size as a fraction of equity (before the risk multiplier).
    pub buy_small: f64,
    pub buy_medium: f64,
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

/// Reward weights and shaping parameters (docs/env-spec.md, "Reward").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub w_pnl: f64,
    pub w_cost: f64,
    pub w_timing: f64,
    pub w_sharpe: f64,
    pub w_drawdown: f64,
    pub w_util: f64,
    pub w_divers: f64,
    /// EMA rate of the differential Sharpe ratio's moment estimates.
    pub dsr_eta: f64,
    /// The differential Sharpe term is clipped to [-dsr_clip, dsr_clip].
    pub dsr_clip: f64,
    /// Intra-trade drawdown beyond which the drawdown penalty applies.
    pub trade_dd_threshold: f64,
    /// Target gross exposure / equity for the utilisation term.
    pub util_target: f64,
    /// Master reward weights: differential Sharpe of the portfolio, diversification, excess return over the benchmark.
    pub master_w_sharpe: f64,
    pub master_w_divers: f64,
    pub master_w_excess: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            w_pnl: 10.0,
            w_cost: 5.0,
            w_timing: 2.0,
            w_sharpe: 3.0,
            w_drawdown: 5.0,
            w_util: 0.5,
            w_divers: 1.0,
            dsr_eta: 0.01,
            dsr_clip: 1.0,
            trade_dd_threshold: 0.10,
            util_target: 0.8,
            master_w_sharpe: 1.0,
            master_w_divers: 0.1,
            master_w_excess: 100.0,
        }
    }
}
