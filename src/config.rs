/*!
The composition root of the configuration: one TOML file, one section per layer, each section's type
owned by the module that consumes it:

| section | type | owner |
|---|---|---|
| `[data]` | [`DataConfig`] (`[data.synthetic]`: [`SyntheticConfig`]) | `data` |
| `[env]`, `[risk]`, `[master]` | [`EnvConfig`], [`RiskConfig`], [`MasterConfig`] | `env` |
| `[costs]` | [`CostConfig`] | `costs` |
| `[reward]` | [`RewardConfig`] | `reward` |
| `[agent]` | [`AgentConfig`] | `agents` |
| `[ppo]` | [`PpoConfig`] | `train` |
| `[sl]` | [`SlConfig`] | `sl` |
| `[pretrain]` | [`PretrainConfig`] | `train` (`train::pretrain`) |
| `[master_ppo]` | [`MasterPpoConfig`] (`[master_ppo.net]`: the master network's sizes) | `train` (`train::mappo`) |
| `[joint]` | [`JointConfig`] | `train` (`train::joint`) |

This module only composes them: it loads the file, applies `--set` overrides, lays the file over the
documented defaults, runs each section's own checks, and checks the sections against each other
(the feature warm-up against `data.min_bars`, the PPO batch against `env.scenarios`). Lower layers
never see a [`Config`]: an environment takes an [`EnvSetup`] ([`Config::env_setup`]), a data
loader its [`DataConfig`], an agent its [`AgentConfig`].

Sizes that follow from the data or the environment are not configuration: the number of parallel
environments PPO runs is `env.scenarios`, the agent's symbols are the data's, the observation and
window sizes are the environment's. A file that still names one of them (an older config file or
checkpoint) is refused with an error that names the field and says where the value comes from.

Unknown fields are rejected so that a typo is an error, not a silently ignored setting;
`Config::from_file` reports a malformed file with its path and the offending field.
*/

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::agents::AgentConfig;
pub use crate::costs::CostConfig;
pub use crate::data::{
    AdjustPolicy, AlignPolicy, DataConfig, DataSource, ListingPolicy, SignalKind, SyntheticConfig,
};
pub use crate::env::{EnvConfig, EnvSetup, MasterConfig, RiskConfig};
pub use crate::reward::RewardConfig;
pub use crate::sl::SlConfig;
pub use crate::train::PpoConfig;
pub use crate::train::joint::JointConfig;
pub use crate::train::mappo::MasterPpoConfig;
pub use crate::train::pretrain::PretrainConfig;

use crate::error::{Error, Result};

/// Fields that earlier versions stored and that are now derived, with where the value comes from.
const DERIVED_FIELDS: [(&str, &str, &str); 6] = [
    ("ppo", "num_envs", "env.scenarios"),
    ("agent", "symbols", "the data's symbols"),
    (
        "agent",
        "dyn_obs",
        "the environment's observation (env::obs::DYN_OBS)",
    ),
    (
        "agent",
        "num_actions",
        "the environment's actions (env::N_ACTIONS)",
    ),
    (
        "agent.encoder",
        "window",
        "the feature array (features::WINDOW)",
    ),
    (
        "agent.encoder",
        "features",
        "the feature array (features::N_TECH)",
    ),
];

/// The whole configuration: one section per layer (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[data]`: the market data source.
    pub data: DataConfig,
    /// `[env]`: scenarios, episode length, capital, train/test split.
    pub env: EnvConfig,
    /// `[costs]`: fills and fees.
    pub costs: CostConfig,
    /// `[risk]`: limits and order sizes.
    pub risk: RiskConfig,
    /// `[master]`: the directive grid.
    pub master: MasterConfig,
    /// `[reward]`: reward weights and shaping.
    pub reward: RewardConfig,
    /// `[agent]`: the symbol agent's encoder and heads.
    pub agent: AgentConfig,
    /// `[ppo]`: PPO hyperparameters (CleanRL's names and defaults).
    pub ppo: PpoConfig,
    /// `[sl]`: the supervised priors (models, labels, training).
    pub sl: SlConfig,
    /// `[pretrain]`: masked-forecast pretraining of the shared encoder (`marl-trade pretrain`).
    pub pretrain: PretrainConfig,
    /// `[master_ppo]`: the portfolio master's MAPPO trainer and network (`marl-trade
    /// train-master`).
    pub master_ppo: MasterPpoConfig,
    /// `[joint]`: joint training of the symbol agents and the master in `marl-trade train`.
    pub joint: JointConfig,
}

impl Default for Config {
    fn default() -> Self {
        // Trading defaults that differ from the components' own (CleanRL / design) defaults, for
        // the reasons given in configs/default.toml: a HOLD prior and reward normalisation.
        Self {
            data: DataConfig::default(),
            env: EnvConfig::default(),
            costs: CostConfig::default(),
            risk: RiskConfig::default(),
            master: MasterConfig::default(),
            reward: RewardConfig::default(),
            agent: AgentConfig {
                hold_prior: 2.0,
                ..AgentConfig::default()
            },
            ppo: PpoConfig {
                norm_reward: true,
                ..PpoConfig::default()
            },
            sl: SlConfig::default(),
            pretrain: PretrainConfig::default(),
            master_ppo: MasterPpoConfig::default(),
            joint: JointConfig::default(),
        }
    }
}

impl Config {
    /// Parse a TOML string; `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let cfg = Self::from_toml_str_unchecked_priors(text, origin)?;
        cfg.check_priors(origin)?;
        Ok(cfg)
    }

    /// [`Config::from_toml_str`] without [`Config::check_priors`] (the `sl` commands, which
    /// build the models and the cache that check is about).
    pub fn from_toml_str_unchecked_priors(text: &str, origin: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config(origin, e.message().to_string(), e.span()))?;
        refuse_derived_fields(&table, origin)?;
        // Parsed once as it stands, for errors that point into the text (syntax, unknown fields,
        // wrong types) ...
        let _: Config = toml::from_str(text)
            .map_err(|e| Error::config(origin, e.message().to_string(), e.span()))?;
        // ... then laid over `Config::default()`, so that a field a section leaves out keeps the
        // whole configuration's default (which may differ from the section type's own default:
        // `agent.hold_prior`, `ppo.norm_reward`).
        let mut merged = toml::Table::try_from(Config::default())
            .map_err(|e| Error::config(origin, format!("defaults: {e}"), None))?;
        merge_tables(&mut merged, table);
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| Error::config(origin, e.message().to_string(), None))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Read a TOML config file and apply `overrides`, each `section.field=value` (dotted path, a
    /// TOML value; a bare word is taken as a string), as if the file had said so.
    pub fn from_file_with_overrides(path: impl AsRef<Path>, overrides: &[String]) -> Result<Self> {
        Self::load(path.as_ref(), overrides, true)
    }

    /// [`Config::from_file_with_overrides`], with the check of the prior cache against the
    /// configured models ([`Config::check_priors`]) when `check_priors`.
    pub fn load(path: &Path, overrides: &[String], check_priors: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let origin = path.display().to_string();
        let parse = |text: &str, origin: &str| {
            if check_priors {
                Self::from_toml_str(text, origin)
            } else {
                Self::from_toml_str_unchecked_priors(text, origin)
            }
        };
        if overrides.is_empty() {
            return parse(&text, &origin);
        }
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::config(&origin, e.message().to_string(), e.span()))?;
        for o in overrides {
            apply_override(&mut table, o)
                .map_err(|why| Error::config(&origin, format!("--set {o}: {why}"), None))?;
        }
        let merged = toml::to_string(&table)
            .map_err(|e| Error::config(&origin, format!("--set: {e}"), None))?;
        parse(&merged, &format!("{origin} (with --set)"))
    }

    /// Read and validate a TOML config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Serialise back to TOML (written next to checkpoints and reports).
    pub fn to_toml_string(&self) -> String {
        // Every section is plain data (numbers, strings, arrays, tables): serialising cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// The sections an environment is built from.
    pub fn env_setup(&self) -> EnvSetup {
        EnvSetup {
            env: self.env.clone(),
            risk: self.risk.clone(),
            master: self.master.clone(),
            costs: self.costs.clone(),
            reward: self.reward.clone(),
        }
    }

    /// With both `env.sl_cache` and `sl.models` set: refuse a cache that the configured models did
    /// not produce (reads the cache's header and fingerprints the models directory). Every
    /// configuration loaded from text is checked, except by the `sl` commands.
    pub fn check_priors(&self, origin: &str) -> Result<()> {
        if let (Some(cache), Some(models)) = (&self.env.sl_cache, &self.sl.models) {
            crate::sl::check_cache_models(Path::new(cache), Path::new(models))
                .map_err(|e| e.with_origin(origin).with_field("env.sl_cache"))?;
        }
        Ok(())
    }

    /// Each section's own checks, then the checks across sections. Each error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.data.validate(origin)?;
        self.env_setup().validate(origin)?;
        self.agent.validate(origin)?;
        // The PPO batch is env.scenarios environments x ppo.num_steps steps.
        self.ppo.validate(origin, self.env.scenarios)?;
        self.sl.validate(origin)?;
        self.pretrain.validate(origin)?;
        self.master_ppo.validate(origin)?;
        self.joint.validate(origin)?;
        if self.joint.enabled
            && !self
                .ppo
                .num_steps
                .is_multiple_of(self.master_ppo.decision_interval)
        {
            return Err(Error::config_field(
                origin,
                "ppo.num_steps",
                format!(
                    "with joint.enabled it must be a multiple of master_ppo.decision_interval                      ({}), so that a rollout is whole master decisions",
                    self.master_ppo.decision_interval
                ),
            ));
        }
        // The prior reads the observation's SL slice, which is all zeros without a cache.
        if self.env.sl_cache.is_none() {
            let uses = [
                ("ppo.kl_prior_coef", self.ppo.kl_prior_coef > 0.0),
                ("agent.warm_start_steps", self.agent.warm_start_steps > 0),
            ];
            if let Some((field, _)) = uses.iter().find(|(_, on)| *on) {
                return Err(Error::config_field(
                    origin,
                    field,
                    "needs env.sl_cache: the supervised prior reads the observation's SL slice, \
                     which is zero without a prior cache (marl-trade sl cache)"
                        .to_string(),
                ));
            }
        }
        let warm = crate::features::WARMUP + 2;
        if self.data.min_bars < warm {
            return Err(Error::config_field(
                origin,
                "data.min_bars",
                format!("must be >= {warm} (feature warm-up + 2)"),
            ));
        }
        Ok(())
    }
}

/// An error for a field that is derived now (see [`DERIVED_FIELDS`]).
fn refuse_derived_fields(table: &toml::Table, origin: &str) -> Result<()> {
    for (section, field, from) in DERIVED_FIELDS {
        let mut t = Some(table);
        for key in section.split('.') {
            t = t.and_then(|t| t.get(key)).and_then(|v| v.as_table());
        }
        if t.is_some_and(|t| t.contains_key(field)) {
            return Err(Error::config_field(
                origin,
                &format!("{section}.{field}"),
                format!("is not a configuration field: it is derived from {from}; remove it"),
            ));
        }
    }
    Ok(())
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
