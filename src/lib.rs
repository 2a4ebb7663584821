/*!
# marl-trade

A hierarchical multi-agent reinforcement-learning trading system whose whole environment runs batched
next to the policies: N parallel market scenarios x S symbols, one `reset()` / `step()` in the style of
Gymnasium's vector API, with fills, costs, risk limits and a 7-term reward inside the environment.

Modules, one per concept:
- [`config`]: the TOML configuration.
- [`data`]: market data arrays, the synthetic generator, the polars loader.
- [`features`]: causal technical and regime features.
- [`env`](mod@env): the vectorised environment, its backends and the observation layout.
- [`costs`]: slippage, commission and borrow fees.
- [`reward`]: the 7-term symbol reward, the master reward and their episode statistics.
- [`eval`]: metrics, scripted baseline policies and backtests.
- [`agents`]: candle policies: shared encoder, symbol-specific actor-critic heads, masking.
- [`train`]: PPO (CleanRL-style), checkpoints, CartPole as a known task.
- [`rng`], [`error`]: deterministic random numbers; the error type.

The semantics of a step are written once in `docs/env-spec.md`; both backends implement it.
*/

pub mod agents;
pub mod config;
pub mod costs;
pub mod data;
pub mod env;
pub mod error;
pub mod eval;
pub mod features;
pub mod reward;
pub mod rng;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
