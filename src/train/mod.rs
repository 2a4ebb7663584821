/*!
Training: PPO (CleanRL-faithful), generic over a vectorised environment and a policy.

- [`config`]: [`PpoConfig`], every hyperparameter documented where it is declared.
- [`train_env`]: the [`TrainEnv`] trait and a resumable random stream.
- [`buffer`]: the rollout buffer and GAE.
- [`minibatch`]: bar-grouped minibatches (a partition of the batch by the policy's group keys).
- [`ppo`]: the trainer [`Ppo`]: rollout, GAE, clipped surrogate, clipped value loss, entropy bonus,
  learning-rate and entropy annealing, global gradient clipping, checkpoint and resume.
- [`adamw`]: AdamW with saveable state (torch's formula).
- [`checkpoint`]: atomic, shape-checked checkpoints.
- [`metrics`]: per-iteration [`Metrics`], written as JSON lines.
- [`signals`]: the reward-signal analyzer: dominance, collapse, sign flips, drift and
  ignores-costs alarms over a run's metrics (`mt-tools reward-signals`).
- [`cartpole`]: CartPole-v1 (Gymnasium's dynamics), the trainer's test environment.

- [`reward_norm`]: running reward scaling (Gymnasium's `NormalizeReward`).
- [`value_norm`]: MAPPO's running, debiased return normalisation for the critic (for the master,
  issue #12; not used by the symbol agents' PPO).
- [`mappo`]: the portfolio master's MAPPO trainer with the symbol agents held fixed
  ([`mappo::MasterPpo`]), its learner ([`mappo::MasterLearner`]), and the held-out evaluation of
  a learned or fixed master.
- [`joint`]: joint training of the symbol agents and the master in one rollout (`[joint]`,
  [`joint::MasterSeat`] attached to the [`TradingEnv`]).
- [`windows`]: the market as the symbol agents' window source (features + returns).
- [`pretrain`]: masked-forecast pretraining of the shared encoder (`[pretrain]`, `marl-trade
  pretrain`) and loading its encoder into a policy.
- [`warm_start`]: the actor heads' output layer fitted to the supervised prior by least squares
  on a rollout of the prior (`agent.warm_start_steps`).
- [`setup`]: the symbol policy of a market and the training environment, assembled.
- [`trading`]: [`TradingEnv`], the trading environment as a [`TrainEnv`] with
  `Obs = agents::SymbolObs` and `agents_per_env = S`, trained with `agents::SymbolPolicy`.
*/

pub mod adamw;
pub mod buffer;
pub mod cartpole;
pub mod checkpoint;
pub mod config;
pub mod joint;
pub mod mappo;
pub mod metrics;
pub mod minibatch;
pub mod ppo;
pub mod pretrain;
pub mod reward_norm;
pub mod setup;
pub mod signals;
pub mod trading;
pub mod train_env;
pub mod value_norm;
pub mod warm_start;
pub mod windows;

pub use adamw::{AdamW, AdamWConfig};
pub use config::{MinibatchMode, PpoConfig};
pub use metrics::{Metrics, MetricsWriter};
pub use ppo::{BACKWARD_PASSES_STAT, KL_PRIOR_COEF_STAT, KL_PRIOR_STAT, Ppo, clip_grad_norm};
pub use reward_norm::RewardNorm;
pub use signals::{Alarm, AlarmKind, SignalReport, SignalThresholds};
pub use trading::TradingEnv;
pub use train_env::{EpisodeInfo, ResumableRng, StepOut, TrainEnv};
