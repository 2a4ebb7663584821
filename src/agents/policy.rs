/*!
The interface between policies and the trainer.

A rollout is stored per *unit*: one environment (one scenario) at one step. A unit holds
`agents_per_env` rows (1 for CartPole, `S` symbols for the trading environment), and a minibatch is
a set of units, so all symbols of a scenario stay together (the symbol heads need them grouped).

- [`ObsBatch`]: what a policy reads, batched over units; it can be concatenated over the steps of a
  rollout and indexed by unit. A plain `Tensor` (`[units, ...]`) is one; the trading environment's
  [`SymbolObs`](super::symbol_policy::SymbolObs) stores only the dynamic observation and a window index.
- [`ActorCritic`]: unmasked logits and values for every row of a batch.
*/

use candle_core::{Device, Tensor};

use crate::Result;

/// A batch of observations indexed by unit (environment x step).
pub trait ObsBatch: Sized + Clone {
    /// Number of units in the batch.
    fn units(&self) -> usize;
    /// Concatenate batches (unit order preserved).
    fn concat(parts: &[Self]) -> Result<Self>;
    /// The units `idx`, in that order.
    fn select_units(&self, idx: &[u32]) -> Result<Self>;
    /// A key per unit saying which units share work in the policy (the trading observation's
    /// `(path, bar)`: units at the same bar share one encoder pass). The trainer forms bar-grouped
    /// minibatches from it ([`PpoConfig::minibatches`](crate::train::PpoConfig)); `None` (the
    /// default): units share nothing, minibatches are plain shuffles.
    fn group_keys(&self) -> Option<Vec<u64>> {
        None
    }
}

/// A tensor whose first axis is the unit.
impl ObsBatch for Tensor {
    fn units(&self) -> usize {
        self.dims().first().copied().unwrap_or(0)
    }

    fn concat(parts: &[Self]) -> Result<Self> {
        Ok(Tensor::cat(parts, 0)?)
    }

    fn select_units(&self, idx: &[u32]) -> Result<Self> {
        let idx = Tensor::from_slice(idx, idx.len(), self.device())?;
        Ok(self.index_select(&idx, 0)?)
    }
}

/// An actor-critic over discrete actions.
pub trait ActorCritic {
    /// The observation batch it reads.
    type Obs: ObsBatch;

    /// Unmasked logits `[R, A]` and state values `[R]` for the `R = units x agents_per_env` rows of
    /// `obs`, rows in unit-major order.
    fn forward(&self, obs: &Self::Obs) -> Result<(Tensor, Tensor)>;

    /// State values `[R]` (the critic alone, when it is cheaper).
    fn value(&self, obs: &Self::Obs) -> Result<Tensor> {
        Ok(self.forward(obs)?.1)
    }

    /// [`forward`](Self::forward) where no gradient will be taken (rollouts, bootstrap values): a
    /// policy may reuse work it cached under the current parameters. The trainer calls
    /// [`parameters_changed`](Self::parameters_changed) after every parameter update, so a cache
    /// is never read across one. Must return what `forward` returns (the trading policy's
    /// embedding cache: bit for bit, checked by `tests/embed_cache.rs`).
    fn forward_inference(&self, obs: &Self::Obs) -> Result<(Tensor, Tensor)> {
        self.forward(obs)
    }

    /// The parameters changed: drop what was cached under the old ones. `all = false` after an
    /// optimiser step (only the trainable parameters changed: a policy may keep what depends on
    /// frozen ones only), `true` after anything else (a checkpoint load).
    fn parameters_changed(&self, _all: bool) {}

    /// Whether the parameter `name` (a `VarMap` name) is frozen: the trainer leaves it out of the
    /// optimiser (the trading policy's encoder when `agent.freeze_encoder`).
    fn is_frozen(&self, _name: &str) -> bool {
        false
    }

    /// Statistics since the last call, by name (the trading policy: embedding-cache hits, misses,
    /// bytes, encoder seconds); the trainer logs them in `Metrics::policy`.
    fn drain_stats(&self) -> Vec<(String, f64)> {
        Vec::new()
    }

    /// Logits `[R, A]` of a fixed prior policy over the rows of `obs` (no parameters, no
    /// gradient), the target of the trainer's KL term (`ppo.kl_prior_coef`); the trainer masks
    /// them as it masks the policy's. `None` (the default): the policy has no prior. The trading
    /// policy's is the map of the SL triplet in [`super::prior`].
    fn prior_logits(&self, _obs: &Self::Obs) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The device the policy's parameters live on.
    fn device(&self) -> &Device;
}
