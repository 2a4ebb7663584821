/*!
# marl-trade

A hierarchical multi-agent reinforcement-learning trading system whose whole environment runs batched
next to the policies: N parallel market scenarios x S symbols, one `reset()` / `step()` in the style of
Gymnasium's vector API, with fills, costs, risk limits and a 7-term reward inside the environment.

Modules, one per concept, from the bottom layer up; each imports only from the layers below it
and owns its configuration section:
- [`error`], [`rng`], [`atomic`], [`profile`]: the error type; deterministic random numbers; atomic file
  writes; NVTX profiler ranges (the `nvtx` feature).
- [`data`]: market data arrays, the synthetic generator, the polars loader (`[data]`).
- [`features`]: causal technical and regime features.
- [`market`]: data + features of one market, computed once and shared.
- [`priors`]: the supervised-prior cache the observation's SL slice reads (format, fingerprints,
  staleness checks).
- [`costs`]: slippage, commission and borrow fees (`[costs]`).
- [`reward`]: the 7-term symbol reward, the master reward and their episode statistics (`[reward]`).
- [`env`](mod@env): the vectorised environment, its backends and the observation layout (`[env]`,
  `[risk]`, `[master]`; built from an [`env::EnvSetup`]).
- [`agents`]: candle policies: shared encoder, symbol-specific actor-critic heads, masking
  (`[agent]`).
- [`train`]: PPO (CleanRL-style), checkpoints, the trading adapter, CartPole as a known task
  (`[ppo]`).
- [`sl`]: the supervised priors (`[sl]`): MLP / LSTM / GRU direction classifiers, their purged
  training (`marl-trade sl train`) and the cache they fill (`marl-trade sl cache`).
- [`config`]: the composition root: one TOML file, the sections above composed and checked
  against each other.
- [`run`]: training runs (`marl-trade train`): run directory, checkpoints, metrics, resume.
- [`eval`]: metrics, scripted baselines, backtests, a checkpoint as a policy, comparisons, the
  checkpoint evaluation service (`marl-trade eval`).
- [`ablate`]: reward ablations (`marl-trade ablate`): one run per reward-weight variant and seed,
  evaluated on the held-out bars, summarised in a table.
- [`validate`]: the validation suite: walk-forward evaluation (`marl-trade walkforward`), stress
  scenarios (`marl-trade stress`), the go/no-go report with plots (`marl-trade report`).
- [`bench`](mod@bench): the environment and policy throughput benchmarks (`marl-trade bench`, `benches/`).

The semantics of a step are written once in `docs/env-spec.md`; both backends implement it.
*/

#![warn(missing_docs)]

pub mod ablate;
pub mod agents;
pub mod atomic;
pub mod bench;
pub mod config;
pub mod costs;
pub mod data;
pub mod env;
pub mod error;
pub mod eval;
pub mod features;
pub mod market;
pub mod priors;
pub mod profile;
pub mod reward;
pub mod rng;
pub mod run;
pub mod sl;
pub mod train;
pub mod validate;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
