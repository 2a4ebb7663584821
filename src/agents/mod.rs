/*!
Policies, written with candle against a `candle_core::Device` (the CPU, or CUDA in a `gpu` build).

Layers follow candle-nn's style: a small struct, a constructor taking a `VarBuilder`, one
`Module`/`forward`.

- [`attention`]: multi-head self-attention from matmul + softmax.
- [`norm`]: a LayerNorm that has a backward pass.
- [`lstm`]: the bidirectional LSTM recurrence as one custom op with a hand-written backward pass.
- [`encoder`]: the shared window encoder (transformer, bidirectional LSTM, 1-D CNN, symbol graph)
  and its [`EncoderConfig`].
- [`fused`]: the transformer and CNN branches as fused CPU passes for acting (no graph recorded).
- [`graph`]: the causal correlation graph and message passing over symbols.
- [`heads`]: symbol-specific actor/critic heads as one batched matmul.
- [`config`]: the `[agent]` section ([`AgentConfig`]) and the sizes taken from the data ([`AgentDims`]).
- [`symbol`]: the symbol agent ([`SymbolAgent`]: encoder + heads).
- [`windows`]: where windows come from ([`WindowSource`]).
- [`symbol_policy`]: the symbol agent as an [`ActorCritic`] over [`SymbolObs`], encoding each
  distinct `(path, bar)` once.
- [`dist`]: the masked categorical distribution.
- [`mlp`]: CleanRL's MLP actor-critic (CartPole).
- [`master`]: the portfolio master's network ([`MasterNet`]) and the symbol agents' aggregated
  intents it reads ([`SymbolIntents`]). Not trained yet (issue #12).
- [`prior`]: the supervised prior as a policy: the SL triplet mapped to logits over the 7 actions
  (the KL term's target and the warm start's).
- [`policy`]: the [`ActorCritic`] and [`ObsBatch`] traits the trainer is generic over.
- [`init`]: seeded, order-independent initialisation (candle's CPU RNG cannot be seeded).
- [`device`]: where the policies run (`--device cpu | cuda[:i]`, [`DeviceSpec`]).
*/

pub mod attention;
pub mod config;
pub mod device;
pub mod dist;
pub mod encoder;
pub mod fused;
pub mod graph;
pub mod heads;
pub mod init;
pub mod lstm;
pub mod master;
pub mod mlp;
pub mod norm;
pub mod policy;
pub mod prior;
pub mod symbol;
pub mod symbol_policy;
pub mod windows;

pub use attention::MultiHeadAttention;
pub use config::{AgentConfig, AgentDims, AgentSpec};
pub use device::DeviceSpec;
pub use dist::MaskedCategorical;
pub use encoder::{EncoderConfig, SharedEncoder, WindowShape};
pub use graph::{GraphMessagePassing, correlation_graph};
pub use heads::SymbolHeads;
pub use master::{MasterNet, MasterNetConfig, SymbolIntents};
pub use mlp::{MlpActorCritic, MlpConfig};
pub use policy::{ActorCritic, ObsBatch};
pub use symbol::SymbolAgent;
pub use symbol_policy::{SymbolObs, SymbolPolicy, zero_dyn_obs};
pub use windows::{DenseWindows, WindowSource};
