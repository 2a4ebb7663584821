/*!
The symbol agents as the PPO trainer sees them: [`SymbolPolicy`] wraps a [`SymbolAgent`] as an
[`ActorCritic`] over [`SymbolObs`], an observation that holds only the dynamic part and a
`(path, bar)` key per scenario. The windows (and the correlation graph) are read from a
[`WindowSource`] when needed, and each distinct `(path, bar)` of a batch is encoded once.
*/

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::config::AgentDims;
use super::graph::correlation_graph;
use super::policy::{ActorCritic, ObsBatch};
use super::symbol::SymbolAgent;
use super::windows::WindowSource;
use crate::error::Error;

/// The trading policy's observation: per scenario (unit) a `(path, bar)` key and the dynamic
/// observation of its S symbols.
#[derive(Debug, Clone)]
pub struct SymbolObs {
    /// `(path, bar)` of each scenario.
    pub keys: Vec<(u32, u32)>,
    /// `[units, S, DYN_OBS]` f32.
    pub dyn_obs: Tensor,
}

impl ObsBatch for SymbolObs {
    fn units(&self) -> usize {
        self.keys.len()
    }

    fn concat(parts: &[Self]) -> crate::Result<Self> {
        let keys = parts.iter().flat_map(|p| p.keys.iter().copied()).collect();
        let dyn_obs: Vec<&Tensor> = parts.iter().map(|p| &p.dyn_obs).collect();
        Ok(Self {
            keys,
            dyn_obs: Tensor::cat(&dyn_obs, 0)?,
        })
    }

    fn select_units(&self, idx: &[u32]) -> crate::Result<Self> {
        let keys = idx.iter().map(|&i| self.keys[i as usize]).collect();
        Ok(Self {
            keys,
            dyn_obs: self.dyn_obs.select_units(idx)?,
        })
    }
}

/// [`SymbolAgent`] as an [`ActorCritic`] over [`SymbolObs`]: encodes each distinct `(path, bar)` of a
/// batch once.
pub struct SymbolPolicy {
    agent: SymbolAgent,
    source: Arc<dyn WindowSource>,
    device: Device,
}

impl SymbolPolicy {
    /// `agent` reading its windows from `source` (same symbols and window shape, checked).
    pub fn new(
        agent: SymbolAgent,
        source: Arc<dyn WindowSource>,
        device: &Device,
    ) -> crate::Result<Self> {
        let d = agent.dims();
        if source.symbols() != d.symbols
            || source.window() != d.window.window
            || source.features() != d.window.features
        {
            return Err(Error::invalid(format!(
                "window source is S={} x [{}, {}], the agent needs S={} x [{}, {}]",
                source.symbols(),
                source.window(),
                source.features(),
                d.symbols,
                d.window.window,
                d.window.features
            )));
        }
        Ok(Self {
            agent,
            source,
            device: device.clone(),
        })
    }

    /// The network.
    pub fn agent(&self) -> &SymbolAgent {
        &self.agent
    }

    /// Unique keys in order of first appearance and the group index of every key.
    pub fn group_keys(keys: &[(u32, u32)]) -> (Vec<(u32, u32)>, Vec<u32>) {
        let mut seen: HashMap<(u32, u32), u32> = HashMap::new();
        let mut unique = Vec::new();
        let group = keys
            .iter()
            .map(|k| {
                *seen.entry(*k).or_insert_with(|| {
                    unique.push(*k);
                    unique.len() as u32 - 1
                })
            })
            .collect();
        (unique, group)
    }

    /// Windows `[G, S, W, F]` and, when the graph is on, adjacencies `[G, S, S]` of `keys`.
    pub fn gather(&self, keys: &[(u32, u32)]) -> crate::Result<(Tensor, Option<Tensor>)> {
        let e = &self.agent.config().encoder;
        let ws = self.agent.dims().window;
        let s = self.source.symbols();
        let per = s * ws.window * ws.features;
        let mut win = vec![0f32; keys.len() * per];
        win.par_chunks_mut(per)
            .zip(keys.par_iter())
            .for_each(|(out, &(p, t))| self.source.windows_into(p as usize, t as usize, out));
        let windows = Tensor::from_vec(win, (keys.len(), s, ws.window, ws.features), &self.device)?;
        if !self.agent.encoder().uses_graph() {
            return Ok((windows, None));
        }
        let lb = e.graph.lookback;
        let adj: Vec<Option<Vec<f32>>> = keys
            .par_iter()
            .map(|&(p, t)| {
                let mut r = vec![0f32; lb * s];
                self.source
                    .returns_into(p as usize, t as usize, lb, &mut r)
                    .then(|| correlation_graph(&r, lb, s, e.graph.k))
            })
            .collect();
        let mut flat = Vec::with_capacity(keys.len() * s * s);
        for a in adj {
            flat.extend(a.ok_or_else(|| {
                Error::invalid("the graph branch needs returns from the window source")
            })?);
        }
        Ok((
            windows,
            Some(Tensor::from_vec(flat, (keys.len(), s, s), &self.device)?),
        ))
    }
}

impl ActorCritic for SymbolPolicy {
    type Obs = SymbolObs;

    /// Rows are `(scenario, symbol)`, scenario-major: logits `[B*S, A]`, values `[B*S]`.
    fn forward(&self, obs: &SymbolObs) -> crate::Result<(Tensor, Tensor)> {
        let (unique, group) = Self::group_keys(&obs.keys);
        let (windows, adj) = self.gather(&unique)?;
        let group = Tensor::from_vec(group, obs.keys.len(), &self.device)?;
        let (logits, value) = self
            .agent
            .forward(&windows, adj.as_ref(), &group, &obs.dyn_obs)?;
        let (b, s, a) = logits.dims3()?;
        Ok((logits.reshape((b * s, a))?, value.reshape(b * s)?))
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// Convenience: f32 zeros of the dynamic observation for `units` scenarios.
pub fn zero_dyn_obs(units: usize, dims: &AgentDims, dev: &Device) -> crate::Result<Tensor> {
    Ok(Tensor::zeros(
        (units, dims.symbols, dims.dyn_obs),
        DType::F32,
        dev,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::config::AgentConfig;
    use crate::agents::encoder::EncoderConfig;
    use crate::agents::windows::DenseWindows;
    use candle_core::IndexOp;

    fn tiny_cfg(shared: bool) -> AgentConfig {
        AgentConfig {
            encoder: EncoderConfig::tiny(),
            head_hidden: 8,
            shared_heads: shared,
            ..Default::default()
        }
    }

    /// Scenarios at the same bar share one encoder pass and get the same result as encoding each.
    #[test]
    fn grouped_encoding_equals_per_scenario_encoding() -> crate::Result<()> {
        let dev = Device::Cpu;
        for shared in [false, true] {
            let cfg = tiny_cfg(shared);
            let dims = AgentDims::trading(4);
            let vm = candle_nn::VarMap::new();
            let agent = SymbolAgent::new(
                &cfg,
                dims,
                super::super::init::seeded_var_builder(&vm, 3, DType::F32, &dev),
            )?;
            let src = Arc::new(DenseWindows::random(
                2,
                60,
                4,
                dims.window.window,
                dims.window.features,
                1,
            ));
            let policy = SymbolPolicy::new(agent, src, &dev)?;
            let keys = vec![(0, 40), (1, 50), (0, 40), (0, 41), (1, 50)];
            let mut rng = crate::rng::SplitMix64::new(5);
            let d: Vec<f32> = (0..5 * 4 * dims.dyn_obs)
                .map(|_| rng.normal() as f32)
                .collect();
            let obs = SymbolObs {
                keys: keys.clone(),
                dyn_obs: Tensor::from_vec(d, (5, 4, dims.dyn_obs), &dev)?,
            };
            let (logits, value) = policy.forward(&obs)?;
            assert_eq!(logits.dims(), &[20, dims.num_actions]);
            for (u, _) in keys.iter().enumerate() {
                let one = obs.select_units(&[u as u32])?;
                let (l1, v1) = policy.forward(&one)?;
                let dl = (logits.narrow(0, u * 4, 4)? - l1)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                let dv = (value.narrow(0, u * 4, 4)? - v1)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(dl < 1e-5 && dv < 1e-5, "unit {u}: {dl} {dv}");
            }
            // Units 0 and 2 share a bar but not the dynamic observation: different logits.
            assert_ne!(
                logits.i(0)?.to_vec1::<f32>()?,
                logits.i(8)?.to_vec1::<f32>()?
            );
            assert_eq!(SymbolPolicy::group_keys(&keys).1, vec![0, 1, 0, 2, 1]);
        }
        Ok(())
    }

    #[test]
    fn symbol_obs_concat_and_select() -> crate::Result<()> {
        let dev = Device::Cpu;
        let a = SymbolObs {
            keys: vec![(0, 1), (0, 2)],
            dyn_obs: Tensor::zeros((2, 3, 4), DType::F32, &dev)?,
        };
        let b = SymbolObs {
            keys: vec![(1, 7)],
            dyn_obs: Tensor::ones((1, 3, 4), DType::F32, &dev)?,
        };
        let c = SymbolObs::concat(&[a, b])?;
        assert_eq!(c.units(), 3);
        let s = c.select_units(&[2, 0])?;
        assert_eq!(s.keys, vec![(1, 7), (0, 1)]);
        assert_eq!(s.dyn_obs.i((0, 0, 0))?.to_scalar::<f32>()?, 1.0);
        Ok(())
    }
}
