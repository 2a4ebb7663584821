/*!
The portfolio master's network (tier 1 of the hierarchy, the design's MAPPO agent), and the
aggregate of the symbol agents' intents it reads.

```text
obs [B, obs_dim] -> Linear(obs_dim, 256) -> LayerNorm -> GELU -> Linear(256, 128) -> GELU -> h [B, 128]
h -> actor  Linear(128, 48)   logits over the 4 x 4 x 3 directive grid (docs/env-spec.md §3)
h -> critic Linear(128, 1)    the centralized value of the portfolio state
```

The trunk is shared by actor and critic, as the design draws it. Weights are orthogonal (gain
`sqrt(2)` in the trunk, `0.01` for the actor's output, `1` for the critic's), biases zero, drawn
deterministically from the seed and the parameter's name (`agents::init`), like every network of
the crate. Parameters live under `master.*`.

[`SymbolIntents`] aggregates what the symbol agents want to do at a step, per scenario: the mean
over symbols of their action probabilities (7), the fraction of symbols whose most probable action
buys (BUY_SMALL, BUY_MEDIUM, BUY_LARGE, ADD_TO_WINNER) and sells (SELL_PARTIAL, SELL_ALL), and
their mean policy entropy: the "aggregated intents" channel of the master's observation.

```
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::master::{MasterNet, MasterNetConfig};

let vm = VarMap::new();
let net = MasterNet::build(32, &MasterNetConfig::default(), &vm, 7, &Device::Cpu)?;
let (logits, value) = net.forward(&Tensor::zeros((5, 32), DType::F32, &Device::Cpu)?)?;
assert_eq!((logits.dims(), value.dims()), (&[5usize, 48][..], &[5usize][..]));
# Ok::<(), marl_trade::Error>(())
```
*/

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::init::{constant_, orthogonal_, seeded_var_builder, tensor_rng};
use super::norm::LayerNorm;
use crate::env::{MASTER_ACTIONS, N_ACTIONS};
use crate::error::{Error, ErrorKind};

/// Sizes of the master network (`[master_ppo.net]`); defaults are the design's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterNetConfig {
    /// Width of the first trunk layer (LayerNorm + GELU after it).
    pub hidden1: usize,
    /// Width of the second trunk layer (GELU after it), the input of both heads.
    pub hidden2: usize,
}

impl Default for MasterNetConfig {
    fn default() -> Self {
        Self {
            hidden1: 256,
            hidden2: 128,
        }
    }
}

impl MasterNetConfig {
    /// Range checks; an error names the field (`origin` names the config source).
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        for (field, v) in [
            ("master_ppo.net.hidden1", self.hidden1),
            ("master_ppo.net.hidden2", self.hidden2),
        ] {
            if v == 0 {
                return Err(Error::config_field(
                    origin,
                    field,
                    "must be >= 1".to_string(),
                ));
            }
        }
        Ok(())
    }
}

/// The master's actor-critic (see the module doc).
#[derive(Debug, Clone)]
pub struct MasterNet {
    obs_dim: usize,
    fc1: Linear,
    norm: LayerNorm,
    fc2: Linear,
    actor: Linear,
    critic: Linear,
}

impl MasterNet {
    /// The layers over `obs_dim` inputs, parameters under `vb` (`fc1`, `norm`, `fc2`, `actor`,
    /// `critic`), as `vb` initialises them.
    pub fn new(obs_dim: usize, cfg: &MasterNetConfig, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate("master_ppo.net")?;
        if obs_dim == 0 {
            return Err(Error::invalid("the master observation is empty"));
        }
        Ok(Self {
            obs_dim,
            fc1: candle_nn::linear(obs_dim, cfg.hidden1, vb.pp("fc1"))?,
            norm: LayerNorm::new(cfg.hidden1, vb.pp("norm"))?,
            fc2: candle_nn::linear(cfg.hidden1, cfg.hidden2, vb.pp("fc2"))?,
            actor: candle_nn::linear(cfg.hidden2, MASTER_ACTIONS, vb.pp("actor"))?,
            critic: candle_nn::linear(cfg.hidden2, 1, vb.pp("critic"))?,
        })
    }

    /// Build under `master.*` in `varmap` with orthogonal initialisation from `seed` (see the
    /// module doc).
    pub fn build(
        obs_dim: usize,
        cfg: &MasterNetConfig,
        varmap: &VarMap,
        seed: u64,
        dev: &Device,
    ) -> crate::Result<Self> {
        let vb = seeded_var_builder(varmap, seed, DType::F32, dev).pp("master");
        let net = Self::new(obs_dim, cfg, vb)?;
        let sqrt2 = 2f64.sqrt();
        for (name, layer, gain) in [
            ("master.fc1", &net.fc1, sqrt2),
            ("master.fc2", &net.fc2, sqrt2),
            ("master.actor", &net.actor, 0.01),
            ("master.critic", &net.critic, 1.0),
        ] {
            orthogonal_(layer.weight(), gain, &mut tensor_rng(seed, name))?;
            if let Some(b) = layer.bias() {
                constant_(b, 0.0)?;
            }
        }
        Ok(net)
    }

    /// Length of the observation it reads.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// The shared trunk: `[B, obs_dim] -> [B, hidden2]`.
    fn trunk(&self, obs: &Tensor) -> crate::Result<Tensor> {
        let (_, d) = obs.dims2()?;
        if d != self.obs_dim {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "master observation has {d} values per scenario, the network reads {}",
                    self.obs_dim
                ),
            ));
        }
        let h = self.norm.forward(&self.fc1.forward(obs)?)?.gelu_erf()?;
        Ok(self.fc2.forward(&h)?.gelu_erf()?)
    }

    /// Logits `[B, 48]` over the directive grid and centralized values `[B]`.
    pub fn forward(&self, obs: &Tensor) -> crate::Result<(Tensor, Tensor)> {
        let h = self.trunk(obs)?;
        let logits = self.actor.forward(&h)?;
        let value = self.critic.forward(&h)?.squeeze(1)?;
        Ok((logits, value))
    }
}

/// What the symbol agents of each scenario want at a step (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolIntents {
    /// `[B, INTENTS]` f32, per scenario: mean action probabilities (7), buy fraction, sell
    /// fraction, mean entropy (nats).
    pub values: Vec<f32>,
}

/// Values per scenario in [`SymbolIntents`].
pub const INTENTS: usize = crate::env::master_obs::MASTER_INTENTS;

/// Actions that buy (BUY_SMALL, BUY_MEDIUM, BUY_LARGE, ADD_TO_WINNER).
const BUYS: [usize; 4] = [1, 2, 3, 6];
/// Actions that sell (SELL_PARTIAL, SELL_ALL).
const SELLS: [usize; 2] = [4, 5];

impl SymbolIntents {
    /// From the symbol policy's logits `[B * S, 7]` (scenario-major rows) and, when given, the
    /// action mask `[B * S, 7]` (1 = allowed) the probabilities are taken under.
    pub fn from_logits(
        logits: &Tensor,
        mask: Option<&Tensor>,
        symbols: usize,
    ) -> crate::Result<Self> {
        let (rows, a) = logits.dims2()?;
        if a != N_ACTIONS || symbols == 0 || !rows.is_multiple_of(symbols) {
            return Err(Error::new(
                ErrorKind::Shape,
                format!("symbol logits are [{rows}, {a}], expected [B * {symbols}, {N_ACTIONS}]"),
            ));
        }
        let dist = super::dist::MaskedCategorical::new(&logits.detach(), mask)?;
        let logp = dist.log_probs().to_dtype(DType::F32)?;
        let probs = logp.exp()?;
        let entropy = dist.entropy()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let argmax = probs.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let probs = probs.to_vec2::<f32>()?;
        let b = rows / symbols;
        let mut values = vec![0f32; b * INTENTS];
        let inv = 1.0 / symbols as f32;
        for (n, out) in values.chunks_exact_mut(INTENTS).enumerate() {
            for r in n * symbols..(n + 1) * symbols {
                for (o, p) in out.iter_mut().zip(&probs[r]) {
                    *o += p * inv;
                }
                let top = argmax[r] as usize;
                if BUYS.contains(&top) {
                    out[N_ACTIONS] += inv;
                } else if SELLS.contains(&top) {
                    out[N_ACTIONS + 1] += inv;
                }
                out[N_ACTIONS + 2] += entropy[r] * inv;
            }
        }
        Ok(Self { values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_net_shapes_init_and_errors() -> crate::Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let net = MasterNet::build(20, &MasterNetConfig::default(), &vm, 3, &dev)?;
        let names: Vec<String> = crate::agents::init::named_vars(&vm)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(names.iter().all(|n| n.starts_with("master.")), "{names:?}");
        let x = Tensor::randn(0f32, 1.0, (4, 20), &dev)?;
        let (logits, value) = net.forward(&x)?;
        assert_eq!(logits.dims(), &[4, MASTER_ACTIONS]);
        assert_eq!(value.dims(), &[4]);
        // Actor output gain 0.01: the initial directive distribution is near uniform.
        let spread =
            (logits.max_all()?.to_scalar::<f32>()? - logits.min_all()?.to_scalar::<f32>()?).abs();
        assert!(spread < 0.2, "initial logits spread {spread}");
        // Deterministic from the seed.
        let vm2 = VarMap::new();
        let net2 = MasterNet::build(20, &MasterNetConfig::default(), &vm2, 3, &dev)?;
        let (l2, _) = net2.forward(&x)?;
        assert_eq!(logits.to_vec2::<f32>()?, l2.to_vec2::<f32>()?);
        // A wrong observation width is a shape error naming both sizes.
        let e = net
            .forward(&Tensor::zeros((2, 19), DType::F32, &dev)?)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Shape);
        assert!(
            e.to_string().contains("19") && e.to_string().contains("20"),
            "{e}"
        );
        // Every parameter gets a gradient (the LayerNorm included: candle-nn's fused one has no
        // backward pass).
        let loss = (logits.sqr()?.sum_all()? + value.sum_all()?)?;
        let grads = loss.backward()?;
        for (name, v) in crate::agents::init::named_vars(&vm) {
            let g = grads
                .get(v.as_tensor())
                .map(|g| g.abs().and_then(|a| a.sum_all()));
            let g = g.transpose()?.map(|t| t.to_scalar::<f32>()).transpose()?;
            assert!(g.is_some_and(|x| x > 0.0), "{name} has no gradient");
        }
        let bad = MasterNetConfig {
            hidden1: 0,
            ..Default::default()
        };
        assert!(MasterNet::build(20, &bad, &VarMap::new(), 3, &dev).is_err());
        Ok(())
    }

    #[test]
    fn intents_by_hand() -> crate::Result<()> {
        let dev = Device::Cpu;
        // One scenario, two symbols: symbol 0 certain to BUY_LARGE, symbol 1 uniform over 7.
        let mut l = vec![0f32; 14];
        l[3] = 100.0;
        let logits = Tensor::from_vec(l, (2, 7), &dev)?;
        let i = SymbolIntents::from_logits(&logits, None, 2)?;
        let v = &i.values;
        assert_eq!(v.len(), INTENTS);
        let u = 1.0 / 7.0;
        for (a, &p) in v[..7].iter().enumerate() {
            let want = if a == 3 { 0.5 + 0.5 * u } else { 0.5 * u };
            assert!((p - want).abs() < 1e-6, "action {a}: {p} vs {want}");
        }
        // Symbol 0's argmax buys; symbol 1's argmax is the first of equal logits (HOLD).
        assert!((v[7] - 0.5).abs() < 1e-6 && v[8].abs() < 1e-6, "{v:?}");
        let h = (7f32).ln() / 2.0;
        assert!((v[9] - h).abs() < 1e-5, "entropy {} vs {h}", v[9]);
        // Under a mask that leaves symbol 1 only HOLD and SELL_ALL, it is 50/50 between them.
        let mut m = vec![1u8; 14];
        for a in 1..7 {
            m[7 + a] = u8::from(a == 5);
        }
        let mask = Tensor::from_vec(m, (2, 7), &dev)?;
        let i = SymbolIntents::from_logits(&logits, Some(&mask), 2)?;
        let v = &i.values;
        assert!(
            (v[0] - 0.25).abs() < 1e-6 && (v[5] - 0.25).abs() < 1e-6,
            "{v:?}"
        );
        assert!(
            (v[3] - 0.5).abs() < 1e-6 && (v[9] - 2f32.ln() / 2.0).abs() < 1e-5,
            "{v:?}"
        );
        assert!(SymbolIntents::from_logits(&logits, None, 3).is_err());
        Ok(())
    }
}
