/*!
The `[agent]` configuration section of the symbol agents, and the sizes they take from the data and
the environment instead ([`AgentDims`]: the number of symbols, the dynamic observation's length, the
actions, the window shape). Sizes that follow from the data are constructor arguments, never file
fields, so a config file cannot disagree with the data it is used on.
*/

use serde::{Deserialize, Serialize};

use super::encoder::{EncoderConfig, WindowShape};
use super::heads::HeadActivation;
use crate::error::Error;

/// The symbol agent's configuration. Defaults are the design sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Hidden width of the actor and critic heads (0: linear heads).
    pub head_hidden: usize,
    /// One head shared by all symbols instead of symbol-specific heads.
    pub shared_heads: bool,
    /// Non-linearity of the heads: `"tanh"` (CleanRL) or `"relu"` (cheaper on CPU).
    pub head_activation: HeadActivation,
    /// A fixed log-prior added to the HOLD logit (action 0): the initial policy holds with
    /// probability `e^b / (e^b + 6)` where all actions are legal (b = 2: 55%). A near-uniform
    /// trading policy sells a fresh position within a few bars (two of seven actions sell), so
    /// every buy looks like pure cost and PPO learns "never buy" before it can learn when to buy;
    /// a HOLD prior lets positions live long enough for the signal to pay. The policy can move
    /// away from it (the heads' own biases are trainable). 0: none.
    pub hold_prior: f64,
    /// The shared encoder's branches and sizes.
    pub encoder: EncoderConfig,
    /// Freeze the shared encoder (after pre-training): the trainer updates only the heads, and the
    /// embeddings computed in a rollout stay valid for the whole run, so the update never runs the
    /// encoder. `false` (default): the encoder is fine-tuned with the heads.
    pub freeze_encoder: bool,
    /// Memory bound of the policy's embedding cache, in MiB (`SymbolPolicy`): the embeddings
    /// (`S x embed_dim` f32 per distinct `(path, bar)`) and correlation graphs (`S x S` f32) of the
    /// bars met since the parameters last changed. When a new key would exceed it the cache is
    /// emptied and refilled (counted as `cache.evictions`); a single batch larger than the bound is
    /// encoded uncached. 0: no cache (every rollout step encodes its distinct bars).
    pub embed_cache_mb: usize,
    /// Sharpness of the supervised prior (`agents::prior`): the prior's logits are
    /// `hold_prior * [a == HOLD] + prior_beta * z * TILT[a]`, `z` the mean of the observation's SL
    /// triplet. Read by the KL term (`ppo.kl_prior_coef`) and the warm start.
    pub prior_beta: f64,
    /// Warm start: before training, play this many steps of every scenario with the prior's
    /// actions and fit the actor heads' output layer to the prior's logits by least squares
    /// (`train::warm_start`). Needs `env.sl_cache`. 0 (default): off, the seeded random init.
    pub warm_start_steps: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            head_hidden: 64,
            shared_heads: false,
            head_activation: HeadActivation::Tanh,
            hold_prior: 0.0,
            encoder: EncoderConfig::default(),
            freeze_encoder: false,
            embed_cache_mb: 4096,
            prior_beta: 10.0,
            warm_start_steps: 0,
        }
    }
}

impl AgentConfig {
    /// Range checks; an error names the field (`origin` names the config source).
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        let bad = |field: &str, why: &str| Err(Error::config_field(origin, field, why.to_string()));
        if !self.hold_prior.is_finite() {
            return bad("agent.hold_prior", "must be a finite number");
        }
        if !(self.prior_beta.is_finite() && self.prior_beta >= 0.0) {
            return bad("agent.prior_beta", "must be a finite number >= 0");
        }
        self.encoder.validate(origin)
    }
}

/// The sizes a symbol agent takes from its environment and data (not configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDims {
    /// Number of symbols S (one actor and one critic head each unless `shared_heads`).
    pub symbols: usize,
    /// Length of the dynamic observation.
    pub dyn_obs: usize,
    /// Actions per symbol.
    pub num_actions: usize,
    /// The window each symbol's embedding is computed from.
    pub window: WindowShape,
}

impl AgentDims {
    /// The trading environment's sizes for `symbols` symbols: `env::obs::DYN_OBS`,
    /// `env::N_ACTIONS` and the feature array's windows.
    pub fn trading(symbols: usize) -> Self {
        Self {
            symbols,
            dyn_obs: crate::env::obs::DYN_OBS,
            num_actions: crate::env::N_ACTIONS,
            window: WindowShape::TECH,
        }
    }

    /// Every size must be >= 1.
    pub fn validate(&self) -> crate::Result<()> {
        let d = self;
        if d.symbols == 0
            || d.dyn_obs == 0
            || d.num_actions == 0
            || d.window.window == 0
            || d.window.features == 0
        {
            return Err(Error::invalid(format!(
                "agent sizes must all be >= 1, got {d:?}"
            )));
        }
        Ok(())
    }
}

/// What a checkpoint stores to rebuild a symbol agent: its configuration and its sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The sizes it was built with.
    pub dims: AgentDims,
    /// The `[agent]` section it was built from.
    pub config: AgentConfig,
}
