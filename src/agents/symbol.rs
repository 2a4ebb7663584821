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
reads. [`SymbolPolicy`] does this bookkeeping for PPO: its observation [`SymbolObs`] holds only the
dynamic part and a `(path, bar)` key per scenario, and the windows (and the correlation graph) are
read from a [`WindowSource`] when needed, as `env::obs` prescribes.

```
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{encoder::EncoderConfig, init::seeded_var_builder, symbol::{AgentConfig, SymbolAgent}};

let cfg = AgentConfig { symbols: 3, encoder: EncoderConfig::tiny(), head_hidden: 8, ..AgentConfig::default() };
let vm = VarMap::new();
let agent = SymbolAgent::new(&cfg, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let dev = Device::Cpu;
let windows = Tensor::zeros((1, 3, cfg.encoder.window, cfg.encoder.features), DType::F32, &dev)?;
let adj = Tensor::zeros((3, 3), DType::F32, &dev)?;
let emb = agent.encode(&windows, Some(&adj))?;                        // one bar
let group = Tensor::zeros(5, DType::U32, &dev)?;                      // 5 scenarios at that bar
let dyn_obs = Tensor::zeros((5, 3, cfg.dyn_obs), DType::F32, &dev)?;
let (logits, value) = agent.heads(&emb, &group, &dyn_obs)?;
assert_eq!((logits.dims(), value.dims()), (&[5usize, 3, 7][..], &[5usize, 3][..]));
# Ok::<(), marl_trade::Error>(())
```
*/

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::encoder::{EncoderConfig, SharedEncoder};
use super::graph::correlation_graph;
use super::heads::{HeadActivation, SymbolHeads};
use super::policy::{ObsBatch, Policy};
use crate::error::Error;

/// The symbol agent's configuration. Defaults are the design sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Number of symbols S (one actor and one critic head each unless `shared_heads`).
    pub symbols: usize,
    /// Length of the dynamic observation (`env::obs::DYN_OBS`).
    pub dyn_obs: usize,
    /// Actions per symbol (`env::N_ACTIONS`).
    pub num_actions: usize,
    /// Hidden width of the actor and critic heads (0: linear heads).
    pub head_hidden: usize,
    /// One head shared by all symbols instead of symbol-specific heads.
    pub shared_heads: bool,
    /// Non-linearity of the heads: `"tanh"` (CleanRL) or `"relu"` (cheaper on CPU).
    pub head_activation: HeadActivation,
    /// A fixed log-prior added to the HOLD logit (action 0): the initial policy holds with
    /// probability `e^b / (e^b + 6)` where all actions are legal (b = 2: 55%). A near-uniform
    /// trading policy sells a fresh position within a few bars (two of seven actions sell), so
    /// every buy looks like pure cost and PPO learns "never buy" before it can learn when to buy;
    /// a HOLD prior lets positions live long enough for the signal to pay. The policy can move
    /// away from it (the heads' own biases are trainable). 0: none.
    pub hold_prior: f64,
    pub encoder: EncoderConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            symbols: 143,
            dyn_obs: crate::env::obs::DYN_OBS,
            num_actions: crate::env::N_ACTIONS,
            head_hidden: 64,
            shared_heads: false,
            head_activation: HeadActivation::Tanh,
            hold_prior: 0.0,
            encoder: EncoderConfig::default(),
        }
    }
}

impl AgentConfig {
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        let bad = |field: &str, why: &str| Err(Error::config_field(origin, field, why.to_string()));
        if self.symbols == 0 {
            return bad("agent.symbols", "must be >= 1");
        }
        if self.num_actions == 0 {
            return bad("agent.num_actions", "must be >= 1");
        }
        if !self.hold_prior.is_finite() {
            return bad("agent.hold_prior", "must be a finite number");
        }
        self.encoder.validate(origin)
    }
}

/// Encoder + symbol heads.
#[derive(Debug, Clone)]
pub struct SymbolAgent {
    cfg: AgentConfig,
    encoder: SharedEncoder,
    actor: SymbolHeads,
    critic: SymbolHeads,
}

impl SymbolAgent {
    /// Parameters under `encoder.*`, `actor.*`, `critic.*`.
    pub fn new(cfg: &AgentConfig, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate("agent")?;
        let encoder = SharedEncoder::new(&cfg.encoder, vb.pp("encoder"))?;
        let in_dim = cfg.encoder.embed_dim + cfg.dyn_obs;
        let heads = |out: usize, gain: f64, name: &str| {
            SymbolHeads::new(
                cfg.symbols,
                in_dim,
                cfg.head_hidden,
                out,
                cfg.shared_heads,
                gain,
                vb.pp(name),
            )
            .map(|h| h.with_activation(cfg.head_activation))
        };
        let actor = heads(cfg.num_actions, 0.01, "actor")?;
        let critic = heads(1, 1.0, "critic")?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            actor,
            critic,
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

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
        if s != self.cfg.symbols || d != self.cfg.dyn_obs {
            return Err(Error::invalid(format!(
                "dyn_obs is [{b}, {s}, {d}], the agent needs [_, {}, {}]",
                self.cfg.symbols, self.cfg.dyn_obs
            )));
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
            let mut prior = vec![0f32; self.cfg.num_actions];
            prior[0] = self.cfg.hold_prior as f32;
            let prior = Tensor::from_vec(prior, self.cfg.num_actions, logits.device())?
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

/// Where the technical windows (and the returns the symbol graph is built from) come from.
pub trait WindowSource: Send + Sync {
    fn symbols(&self) -> usize;
    /// Bars per window.
    fn window(&self) -> usize;
    /// Features per bar.
    fn features(&self) -> usize;
    /// The windows of all symbols ending at bar `t` of path `path`, `[S, window, features]`, oldest
    /// bar first, into `out`.
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]);
    /// The returns of the `lookback` bars ending at `t` (bar t included), `[lookback, S]`, into
    /// `out`; `false` when the source has none (the graph branch then cannot be used).
    fn returns_into(&self, _path: usize, _t: usize, _lookback: usize, _out: &mut [f32]) -> bool {
        false
    }
}

/// The feature array is a window source (without returns: the environment adapter adds them).
impl WindowSource for crate::features::Features {
    fn symbols(&self) -> usize {
        self.symbols
    }
    fn window(&self) -> usize {
        crate::features::WINDOW
    }
    fn features(&self) -> usize {
        crate::features::N_TECH
    }
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]) {
        let n = crate::features::WINDOW * crate::features::N_TECH;
        for (s, chunk) in out.chunks_exact_mut(n).enumerate() {
            self.window_into(path, t, s, chunk);
        }
    }
}

/// The market a policy trades: the feature array gives the windows, the closes of the data give the
/// returns the graph branch builds its correlation graph from (`ln(C[t] / C[t-1])` per symbol; bars
/// before the first one count as 0 returns).
#[derive(Debug, Clone)]
pub struct MarketWindows {
    pub features: Arc<crate::features::Features>,
    pub data: Arc<crate::data::MarketData>,
}

impl MarketWindows {
    /// Both must describe the same market (same paths, bars and symbols).
    pub fn new(
        features: Arc<crate::features::Features>,
        data: Arc<crate::data::MarketData>,
    ) -> crate::Result<Self> {
        if (features.paths, features.bars, features.symbols)
            != (data.paths, data.bars, data.n_symbols())
        {
            return Err(Error::invalid(format!(
                "features are [{}, {}, {}] (paths, bars, symbols), the data [{}, {}, {}]",
                features.paths,
                features.bars,
                features.symbols,
                data.paths,
                data.bars,
                data.n_symbols()
            )));
        }
        Ok(Self { features, data })
    }
}

impl WindowSource for MarketWindows {
    fn symbols(&self) -> usize {
        self.features.symbols
    }
    fn window(&self) -> usize {
        crate::features::WINDOW
    }
    fn features(&self) -> usize {
        crate::features::N_TECH
    }
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]) {
        self.features.windows_into(path, t, out);
    }
    fn returns_into(&self, path: usize, t: usize, lookback: usize, out: &mut [f32]) -> bool {
        let s_n = self.features.symbols;
        let md = &self.data;
        for (k, row) in out.chunks_exact_mut(s_n).take(lookback).enumerate() {
            let bar = (t + 1 + k).checked_sub(lookback);
            for (s, r) in row.iter_mut().enumerate() {
                *r = match bar {
                    Some(b) if b >= 1 => {
                        let (c1, c0) =
                            (md.close[md.px(path, b, s)], md.close[md.px(path, b - 1, s)]);
                        (c1 as f64 / c0 as f64).ln() as f32
                    }
                    _ => 0.0,
                };
            }
        }
        true
    }
}

/// An in-memory window source: `tech [P, T, S, F]` and `returns [P, T, S]` (tests and benches).
#[derive(Debug, Clone)]
pub struct DenseWindows {
    pub paths: usize,
    pub bars: usize,
    pub symbols: usize,
    pub window: usize,
    pub features: usize,
    pub tech: Vec<f32>,
    pub returns: Vec<f32>,
}

impl DenseWindows {
    /// Pseudo-random data from `seed` (normal features, returns with a common factor).
    pub fn random(
        paths: usize,
        bars: usize,
        symbols: usize,
        window: usize,
        features: usize,
        seed: u64,
    ) -> Self {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let tech = (0..paths * bars * symbols * features)
            .map(|_| rng.normal() as f32)
            .collect();
        let mut returns = Vec::with_capacity(paths * bars * symbols);
        for _ in 0..paths * bars {
            let f = rng.normal();
            for s in 0..symbols {
                let load = (s % 4) as f64 / 4.0;
                returns.push((0.01 * (load * f + rng.normal())) as f32);
            }
        }
        Self {
            paths,
            bars,
            symbols,
            window,
            features,
            tech,
            returns,
        }
    }
}

impl WindowSource for DenseWindows {
    fn symbols(&self) -> usize {
        self.symbols
    }
    fn window(&self) -> usize {
        self.window
    }
    fn features(&self) -> usize {
        self.features
    }
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]) {
        let (w, f, s_n) = (self.window, self.features, self.symbols);
        for s in 0..s_n {
            for k in 0..w {
                let bar = t + 1 - w + k;
                let src = ((path * self.bars + bar) * s_n + s) * f;
                out[(s * w + k) * f..(s * w + k + 1) * f].copy_from_slice(&self.tech[src..src + f]);
            }
        }
    }
    fn returns_into(&self, path: usize, t: usize, lookback: usize, out: &mut [f32]) -> bool {
        let s_n = self.symbols;
        let start = (path * self.bars + t + 1 - lookback) * s_n;
        out.copy_from_slice(&self.returns[start..start + lookback * s_n]);
        true
    }
}

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

/// [`SymbolAgent`] as a [`Policy`] over [`SymbolObs`]: encodes each distinct `(path, bar)` of a
/// batch once.
pub struct SymbolPolicy {
    agent: SymbolAgent,
    source: Arc<dyn WindowSource>,
    device: Device,
}

impl SymbolPolicy {
    pub fn new(
        agent: SymbolAgent,
        source: Arc<dyn WindowSource>,
        device: &Device,
    ) -> crate::Result<Self> {
        let e = &agent.config().encoder;
        if source.symbols() != agent.config().symbols
            || source.window() != e.window
            || source.features() != e.features
        {
            return Err(Error::invalid(format!(
                "window source is S={} x [{}, {}], the agent needs S={} x [{}, {}]",
                source.symbols(),
                source.window(),
                source.features(),
                agent.config().symbols,
                e.window,
                e.features
            )));
        }
        Ok(Self {
            agent,
            source,
            device: device.clone(),
        })
    }

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
        let s = self.source.symbols();
        let per = s * e.window * e.features;
        let mut win = vec![0f32; keys.len() * per];
        win.par_chunks_mut(per)
            .zip(keys.par_iter())
            .for_each(|(out, &(p, t))| self.source.windows_into(p as usize, t as usize, out));
        let windows = Tensor::from_vec(win, (keys.len(), s, e.window, e.features), &self.device)?;
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

impl Policy for SymbolPolicy {
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
pub fn zero_dyn_obs(units: usize, cfg: &AgentConfig, dev: &Device) -> crate::Result<Tensor> {
    Ok(Tensor::zeros(
        (units, cfg.symbols, cfg.dyn_obs),
        DType::F32,
        dev,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    fn tiny_cfg(symbols: usize, shared: bool) -> AgentConfig {
        AgentConfig {
            symbols,
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
            let cfg = tiny_cfg(4, shared);
            let vm = candle_nn::VarMap::new();
            let agent = SymbolAgent::new(
                &cfg,
                super::super::init::seeded_var_builder(&vm, 3, DType::F32, &dev),
            )?;
            let src = Arc::new(DenseWindows::random(
                2,
                60,
                4,
                cfg.encoder.window,
                cfg.encoder.features,
                1,
            ));
            let policy = SymbolPolicy::new(agent, src, &dev)?;
            let keys = vec![(0, 40), (1, 50), (0, 40), (0, 41), (1, 50)];
            let mut rng = crate::rng::SplitMix64::new(5);
            let d: Vec<f32> = (0..5 * 4 * cfg.dyn_obs)
                .map(|_| rng.normal() as f32)
                .collect();
            let obs = SymbolObs {
                keys: keys.clone(),
                dyn_obs: Tensor::from_vec(d, (5, 4, cfg.dyn_obs), &dev)?,
            };
            let (logits, value) = policy.forward(&obs)?;
            assert_eq!(logits.dims(), &[20, cfg.num_actions]);
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
