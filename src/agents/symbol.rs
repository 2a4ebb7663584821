/*!
The symbol agent: shared encoder + symbol-specific actor and critic heads.

```text
windows [G, S, W, F] --SharedEncoder--> emb [G, S, E]         once per unique (path, bar)
x[b, s] = emb[group[b], s] ++ dyn_obs[b, s]                    one row per (scenario, symbol)
x as [S, B, in] --SymbolHeads--> logits [B, S, 7], value [B, S]
```

The heads' first layer splits as `x W = emb W_e + dyn_obs W_d`, and `emb W_e` is also computed once
per distinct bar, so the concatenation is never built ([`SymbolHeads::forward_split`]).

The encoder output depends only on (path, bar, symbol), so `B` scenarios that sit at `G <= B`
distinct bars need `G` encoder passes, not `B`: [`SymbolAgent::encode`] takes the unique windows and
[`SymbolAgent::heads`] takes a `group` index (`[B]`, u32) that says which encoded bar each scenario
reads. [`SymbolPolicy`](super::symbol_policy::SymbolPolicy) does this bookkeeping for PPO.

```
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{AgentConfig, AgentDims, EncoderConfig, SymbolAgent, init::seeded_var_builder};

let cfg = AgentConfig { encoder: EncoderConfig::tiny(), head_hidden: 8, ..AgentConfig::default() };
let dims = AgentDims::trading(3); // 3 symbols
let vm = VarMap::new();
let agent = SymbolAgent::new(&cfg, dims, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let dev = Device::Cpu;
let windows = Tensor::zeros((1, 3, dims.window.window, dims.window.features), DType::F32, &dev)?;
let adj = Tensor::zeros((3, 3), DType::F32, &dev)?;
let emb = agent.encode(&windows, Some(&adj))?;                        // one bar
let group = Tensor::zeros(5, DType::U32, &dev)?;                      // 5 scenarios at that bar
let dyn_obs = Tensor::zeros((5, 3, dims.dyn_obs), DType::F32, &dev)?;
let (logits, value) = agent.heads(&emb, &group, &dyn_obs)?;
assert_eq!((logits.dims(), value.dims()), (&[5usize, 3, 7][..], &[5usize, 3][..]));
# Ok::<(), marl_trade::Error>(())
```
*/

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::{AgentConfig, AgentDims, AgentSpec};
use super::encoder::SharedEncoder;
use super::heads::SymbolHeads;
use crate::error::Error;

/// Encoder + symbol heads.
#[derive(Debug, Clone)]
pub struct SymbolAgent {
    cfg: AgentConfig,
    dims: AgentDims,
    encoder: SharedEncoder,
    actor: SymbolHeads,
    critic: SymbolHeads,
}

impl SymbolAgent {
    /// Parameters under `encoder.*`, `actor.*`, `critic.*`.
    pub fn new(cfg: &AgentConfig, dims: AgentDims, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate("agent")?;
        dims.validate()?;
        let encoder = SharedEncoder::new(&cfg.encoder, dims.window, vb.pp("encoder"))?;
        let in_dim = cfg.encoder.embed_dim + dims.dyn_obs;
        let heads = |out: usize, gain: f64, name: &str| {
            SymbolHeads::new(
                dims.symbols,
                in_dim,
                cfg.head_hidden,
                out,
                cfg.shared_heads,
                gain,
                vb.pp(name),
            )
            .map(|h| h.with_activation(cfg.head_activation))
        };
        let actor = heads(dims.num_actions, 0.01, "actor")?;
        let critic = heads(1, 1.0, "critic")?;
        Ok(Self {
            cfg: cfg.clone(),
            dims,
            encoder,
            actor,
            critic,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The sizes it was built with.
    pub fn dims(&self) -> AgentDims {
        self.dims
    }

    /// What a checkpoint stores to rebuild it.
    pub fn spec(&self) -> AgentSpec {
        AgentSpec {
            dims: self.dims,
            config: self.cfg.clone(),
        }
    }

    /// The shared encoder.
    pub fn encoder(&self) -> &SharedEncoder {
        &self.encoder
    }

    /// Embeddings of the unique bars: `windows [G, S, W, F]`, `adjacency [S, S] | [G, S, S]` (when
    /// the graph branch is on) -> `[G, S, E]`.
    pub fn encode(&self, windows: &Tensor, adjacency: Option<&Tensor>) -> crate::Result<Tensor> {
        Ok(self.encoder.forward(windows, adjacency)?)
    }

    /// Logits `[B, S, A]` and values `[B, S]` of `B` scenarios: scenario `b` reads the embedding
    /// `emb[group[b]]` (`emb: [G, S, E]`, `group: [B]` u32) and its own `dyn_obs[b]` (`[B, S, D]`).
    pub fn heads(
        &self,
        emb: &Tensor,
        group: &Tensor,
        dyn_obs: &Tensor,
    ) -> crate::Result<(Tensor, Tensor)> {
        let (b, s, d) = dyn_obs.dims3()?;
        if s != self.dims.symbols || d != self.dims.dyn_obs {
            return Err(Error::new(
                crate::error::ErrorKind::Shape,
                format!(
                    "dyn_obs is [{b}, {s}, {d}], the agent needs [_, {}, {}]",
                    self.dims.symbols, self.dims.dyn_obs
                ),
            ));
        }
        // The heads read concat(emb[group[b]], dyn_obs[b]); the embedding part of their first layer
        // is computed once per distinct bar (SymbolHeads::forward_split).
        let shared = emb.transpose(0, 1)?.contiguous()?; // [S, G, E]
        let private = dyn_obs
            .to_dtype(emb.dtype())?
            .transpose(0, 1)?
            .contiguous()?; // [S, B, D]
        let mut logits = self
            .actor
            .forward_split(&shared, group, &private)?
            .transpose(0, 1)?
            .contiguous()?;
        if self.cfg.hold_prior != 0.0 {
            let mut prior = vec![0f32; self.dims.num_actions];
            prior[0] = self.cfg.hold_prior as f32;
            let prior = Tensor::from_vec(prior, self.dims.num_actions, logits.device())?
                .to_dtype(logits.dtype())?;
            logits = logits.broadcast_add(&prior)?;
        }
        let value = self
            .critic
            .forward_split(&shared, group, &private)?
            .squeeze(2)?
            .transpose(0, 1)?
            .contiguous()?;
        Ok((logits, value))
    }

    /// The actor heads.
    pub fn actor(&self) -> &SymbolHeads {
        &self.actor
    }

    /// What the actor's output layer reads for `B` scenarios (the arguments of
    /// [`heads`](Self::heads)): `[S, B, K]` ([`SymbolHeads::output_inputs_split`]). The actor's
    /// logits are this times the output layer plus its bias, plus the HOLD prior.
    pub fn actor_output_inputs(
        &self,
        emb: &Tensor,
        group: &Tensor,
        dyn_obs: &Tensor,
    ) -> crate::Result<Tensor> {
        let shared = emb.transpose(0, 1)?.contiguous()?;
        let private = dyn_obs
            .to_dtype(emb.dtype())?
            .transpose(0, 1)?
            .contiguous()?;
        Ok(self.actor.output_inputs_split(&shared, group, &private)?)
    }

    /// `encode` + `heads`.
    pub fn forward(
        &self,
        windows: &Tensor,
        adjacency: Option<&Tensor>,
        group: &Tensor,
        dyn_obs: &Tensor,
    ) -> crate::Result<(Tensor, Tensor)> {
        self.heads(&self.encode(windows, adjacency)?, group, dyn_obs)
    }
}
