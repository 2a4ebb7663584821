/*!
Assembling the symbol agents' training from lower layers: the policy of an agent configuration over
a market ([`build_policy`]) and the training environment ([`build_env`]). Both are what
`marl-trade train` uses, public so that a training driver can assemble the same pieces.
*/

use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::trading::TradingEnv;
use super::windows::MarketWindows;
use crate::agents::init::seeded_var_builder;
use crate::agents::{AgentConfig, AgentDims, SymbolAgent, SymbolPolicy};
use crate::env::{self, BackendKind, EnvSetup, Period};
use crate::error::Result;
use crate::market::Market;

/// The symbol policy of `acfg` with sizes `dims` over `market`, parameters initialised from `seed`
/// (in a new `VarMap`).
pub fn build_policy(
    acfg: &AgentConfig,
    dims: AgentDims,
    market: &Market,
    seed: u64,
    device: &Device,
) -> Result<(SymbolPolicy, VarMap)> {
    let vm = VarMap::new();
    let agent = SymbolAgent::new(
        acfg,
        dims,
        seeded_var_builder(&vm, seed, DType::F32, device),
    )?;
    let windows = Arc::new(MarketWindows::new(
        market.features.clone(),
        market.data.clone(),
    )?);
    let policy = SymbolPolicy::new(agent, windows, device)?.with_untracked_inference(&vm)?;
    Ok((policy, vm))
}

/// The training environment of `setup` over `market`'s train period, with every scenario playing
/// `setup.master.default_action`.
pub fn build_env(
    setup: &EnvSetup,
    market: &Market,
    backend: BackendKind,
    device: &Device,
) -> Result<TradingEnv> {
    let env = env::VecEnv::new(
        setup,
        market.data.clone(),
        market.features.clone(),
        Period::Train,
        backend,
    )?;
    TradingEnv::new(env, setup.master.default_action, device)
}
