/*!
CleanRL's MLP actor-critic (`ppo.py`'s `Agent`): separate actor and critic networks of `hidden`
tanh layers, orthogonal initialisation with gain `sqrt(2)`, `0.01` for the policy output and `1.0`
for the value output, zero biases. Used for CartPole and as the reference policy of the trainer.

```
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{mlp::{MlpActorCritic, MlpConfig}, ActorCritic};

let vm = VarMap::new();
let p = MlpActorCritic::build(4, 2, &MlpConfig::default(), &vm, 1, &Device::Cpu)?;
let (logits, value) = p.forward(&Tensor::zeros((3, 4), DType::F32, &Device::Cpu)?)?;
assert_eq!((logits.dims(), value.dims()), (&[3usize, 2][..], &[3usize][..]));
# Ok::<(), marl_trade::Error>(())
```
*/

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::init::{constant_, orthogonal_, seeded_var_builder, tensor_rng};
use super::policy::ActorCritic;

/// Sizes of the MLP actor-critic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Hidden layer widths of both the actor and the critic (CleanRL: 64, 64).
    pub hidden: Vec<usize>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: vec![64, 64],
        }
    }
}

/// A tanh MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Layers `l0`, `l1`, ... of widths `in_dim -> hidden... -> out_dim`.
    pub fn new(
        in_dim: usize,
        hidden: &[usize],
        out_dim: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let mut dims = vec![in_dim];
        dims.extend_from_slice(hidden);
        dims.push(out_dim);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("l{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// CleanRL's `layer_init`: orthogonal weights (gain `sqrt(2)`, the last layer `out_gain`), zero
    /// biases, drawn from `tensor_rng(seed, "{prefix}.l{i}")`.
    pub fn orthogonal_init(
        &self,
        prefix: &str,
        out_gain: f64,
        seed: u64,
    ) -> candle_core::Result<()> {
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            let gain = if i + 1 == n { out_gain } else { 2f64.sqrt() };
            orthogonal_(
                l.weight(),
                gain,
                &mut tensor_rng(seed, &format!("{prefix}.l{i}")),
            )?;
            if let Some(b) = l.bias() {
                constant_(b, 0.0)?;
            }
        }
        Ok(())
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.layers.len();
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < n {
                h = h.tanh()?;
            }
        }
        Ok(h)
    }
}

/// Separate actor (`actor.*`) and critic (`critic.*`) MLPs.
#[derive(Debug, Clone)]
pub struct MlpActorCritic {
    actor: Mlp,
    critic: Mlp,
    device: Device,
}

impl MlpActorCritic {
    /// The actor and critic MLPs of `cfg` over `obs_dim` inputs and `num_actions` actions.
    pub fn new(
        obs_dim: usize,
        num_actions: usize,
        cfg: &MlpConfig,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            actor: Mlp::new(obs_dim, &cfg.hidden, num_actions, vb.pp("actor"))?,
            critic: Mlp::new(obs_dim, &cfg.hidden, 1, vb.pp("critic"))?,
            device: vb.device().clone(),
        })
    }

    /// Build into `varmap` with CleanRL's initialisation, deterministically from `seed`.
    pub fn build(
        obs_dim: usize,
        num_actions: usize,
        cfg: &MlpConfig,
        varmap: &VarMap,
        seed: u64,
        dev: &Device,
    ) -> crate::Result<Self> {
        let p = Self::new(
            obs_dim,
            num_actions,
            cfg,
            seeded_var_builder(varmap, seed, DType::F32, dev),
        )?;
        p.actor.orthogonal_init("actor", 0.01, seed)?;
        p.critic.orthogonal_init("critic", 1.0, seed)?;
        Ok(p)
    }
}

impl ActorCritic for MlpActorCritic {
    type Obs = Tensor;

    fn forward(&self, obs: &Tensor) -> crate::Result<(Tensor, Tensor)> {
        let logits = self.actor.forward(obs)?;
        let value = self.critic.forward(obs)?.squeeze(1)?;
        Ok((logits, value))
    }

    fn value(&self, obs: &Tensor) -> crate::Result<Tensor> {
        Ok(self.critic.forward(obs)?.squeeze(1)?)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
