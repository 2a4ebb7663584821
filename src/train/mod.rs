/*!
Training: PPO (CleanRL-faithful), generic over a vectorised environment and a policy.

- [`config`]: [`PpoConfig`], every hyperparameter documented where it is declared.
- [`vec_env`]: the [`VecEnv`] trait and a resumable random stream.
- [`buffer`]: the rollout buffer and GAE.
- [`ppo`]: the trainer [`Ppo`]: rollout, GAE, clipped surrogate, clipped value loss, entropy bonus,
  learning-rate and entropy annealing, global gradient clipping, checkpoint and resume.
- [`adamw`]: AdamW with saveable state (torch's formula).
- [`checkpoint`]: atomic, shape-checked checkpoints.
- [`metrics`]: per-iteration [`Metrics`], written as JSON lines.
- [`cartpole`]: CartPole-v1 (Gymnasium's dynamics), the trainer's test environment.

- [`run`]: training runs of the symbol agents (`marl-trade train`): run directory, checkpoints
  every few iterations with a `latest` pointer, metrics as JSONL and CSV, exact resume.
- [`trading`]: [`TradingEnv`], the trading environment as a [`VecEnv`] with
  `Obs = agents::SymbolObs` and `agents_per_env = S`, trained with `agents::SymbolPolicy`.
*/

pub mod adamw;
pub mod buffer;
pub mod cartpole;
pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod ppo;
pub mod run;
pub mod trading;
pub mod vec_env;

pub use adamw::{AdamW, AdamWConfig};
pub use config::PpoConfig;
pub use metrics::{Metrics, MetricsWriter};
pub use ppo::{Ppo, clip_grad_norm};
pub use trading::TradingEnv;
pub use vec_env::{EpisodeInfo, ResumableRng, StepOut, VecEnv};
