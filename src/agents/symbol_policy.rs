/*!
The symbol agents as the PPO trainer sees them: [`SymbolPolicy`] wraps a [`SymbolAgent`] as an
[`ActorCritic`] over [`SymbolObs`], an observation that holds only the dynamic part and a
`(path, bar)` key per scenario. The windows (and the correlation graph) are read from a
[`WindowSource`] when needed, and each distinct `(path, bar)` of a batch is encoded once.

**Embedding cache.** Within a rollout the parameters are fixed and every scenario plays the same
market paths, so a bar's embedding `[S, E]` depends only on its `(path, bar)` key. The policy keeps
the embeddings it computed in [`forward_inference`](ActorCritic::forward_inference) (what the
trainer's rollout calls) in a buffer addressed by key: a rollout step encodes, in one batch, only
the keys no earlier step of the rollout met, and every scenario at a known bar reads the stored
embedding. The trainer calls [`parameters_changed`](ActorCritic::parameters_changed) after each
optimiser step, which empties it (unless the encoder is frozen: then the embeddings stay valid
for the whole run, and the update reads them too instead of running the encoder). The correlation
graphs (`[S, S]` per key, independent of the parameters) are cached beside them, so a bar's graph
is built once until the memory bound is hit, not once per forward.

Memory: `keys x S x E` f32 for embeddings plus `keys x S x S` f32 for graphs (when the graph
branch is on), bounded by `agent.embed_cache_mb`: a key that would exceed the bound empties the
cache first (`cache.evictions`), a single batch larger than the bound is encoded uncached, and
`embed_cache_mb = 0` turns the cache off. The cached path returns bit for bit what the uncached one
returns (`tests/embed_cache.rs`): inference encodes one key per pass, so an embedding does not
depend on which other bars were encoded with it.
*/

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use rayon::prelude::*;

use super::config::AgentDims;
use super::graph::correlation_graph;
use super::policy::{ActorCritic, ObsBatch};
use super::symbol::SymbolAgent;
use super::windows::{TechArray, WindowSource};
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

    /// `(path << 32) | bar`: units at the same bar share one encoder pass.
    fn group_keys(&self) -> Option<Vec<u64>> {
        Some(
            self.keys
                .iter()
                .map(|&(p, t)| (u64::from(p) << 32) | u64::from(t))
                .collect(),
        )
    }
}

/// Embeddings and correlation graphs by `(path, bar)` (see the module doc).
#[derive(Debug, Default)]
struct EmbedCache {
    /// Key -> index into `emb`, valid under the current parameters.
    emb_rows: HashMap<(u32, u32), usize>,
    /// The embeddings `[S, E]` of the keys, on the policy's device, in the encoder's dtype (views
    /// of the batch they were encoded in; no copy to the host on CUDA).
    emb: Vec<Tensor>,
    /// Bytes of `emb`.
    emb_bytes: usize,
    /// Key -> row of `adj` (`[rows, S * S]` f32); independent of the parameters.
    adj_rows: HashMap<(u32, u32), usize>,
    adj: Vec<f32>,
    /// Statistics since the last `drain_stats`.
    hits: u64,
    misses: u64,
    evictions: u64,
    encoded: u64,
    encoder_secs: f64,
    /// The most bytes held since the last `drain_stats`.
    peak_bytes: usize,
}

impl EmbedCache {
    fn bytes(&self) -> usize {
        self.emb_bytes + 4 * self.adj.len()
    }

    /// Drop the embeddings (valid only under the parameters they were computed with).
    fn clear_embeddings(&mut self) {
        self.emb_rows.clear();
        self.emb = Vec::new();
        self.emb_bytes = 0;
    }

    fn clear(&mut self) {
        self.clear_embeddings();
        self.adj_rows.clear();
        self.adj = Vec::new();
    }
}

/// [`SymbolAgent`] as an [`ActorCritic`] over [`SymbolObs`]: encodes each distinct `(path, bar)` of a
/// batch once.
pub struct SymbolPolicy {
    agent: SymbolAgent,
    /// The same network over detached views of the parameters
    /// ([`SymbolPolicy::with_untracked_inference`]): what the no-gradient passes run on.
    untracked: Option<SymbolAgent>,
    source: Arc<dyn WindowSource>,
    device: Device,
    cache: Mutex<EmbedCache>,
    /// Gather windows on the policy's device from the uploaded feature array (see
    /// [`SymbolPolicy::set_device_windows`]).
    device_windows: bool,
    /// The source's feature array `[P * S * T, F]` on the policy's device, uploaded on first use.
    tech: Mutex<Option<Tensor>>,
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
            untracked: None,
            device_windows: !device.is_cpu(),
            source,
            device: device.clone(),
            cache: Mutex::new(EmbedCache::default()),
            tech: Mutex::new(None),
        })
    }

    /// Run the passes that need no gradient (the rollout's
    /// [`forward_inference`](ActorCritic::forward_inference), the cached embeddings of a frozen
    /// encoder, the warm start's inputs) on an untracked twin of the agent: the same network built over detached
    /// views of `varmap`'s variables ([`crate::agents::init::detached_var_builder`]: the same
    /// storage, so every optimizer step and checkpoint load shows through). The parameters are
    /// variables, so a pass on the agent itself records candle's autograd graph and its custom ops
    /// keep their activations for a backward pass that never comes: at 143 symbols and the
    /// default encoder about 0.2 MiB per window, 4 GiB for a rollout step that encodes 128 new
    /// bars. The twin computes the same values bit for bit (the same operations on the same
    /// numbers). `varmap` must hold every parameter of the agent with its shape (an error
    /// otherwise): the one it was built from.
    pub fn with_untracked_inference(mut self, varmap: &candle_nn::VarMap) -> crate::Result<Self> {
        let vb = crate::agents::init::detached_var_builder(varmap, DType::F32, &self.device);
        self.untracked = Some(SymbolAgent::new(
            self.agent.config(),
            self.agent.dims(),
            vb,
        )?);
        Ok(self)
    }

    /// The agent the no-gradient passes run on: the untracked twin when there is one.
    fn inference_agent(&self) -> &SymbolAgent {
        self.untracked.as_ref().unwrap_or(&self.agent)
    }

    /// Where the windows of a batch are gathered. `false` (the default on the CPU): on the host,
    /// one copy per (key, symbol) out of the source, then the whole batch `[G, S, W, F]` to the
    /// device. `true` (the default on other devices): the source's feature array (`[P, S, T, F]`,
    /// [`WindowSource::tech_array`]) is uploaded once, and a batch sends only its `G x S` window
    /// starts (4 bytes each, instead of `W x F` floats) and gathers the rows on the device with
    /// `index_select`. Both give the same windows bit for bit; a source without a feature array is
    /// always read on the host.
    pub fn set_device_windows(&mut self, on: bool) {
        self.device_windows = on;
    }

    /// Empty the embedding cache (after changing the parameters behind the policy's back, e.g.
    /// loading a `VarMap`; the trainer does it through `parameters_changed`).
    pub fn clear_cache(&self) {
        self.lock().clear();
    }

    /// Bytes the embedding cache holds now.
    pub fn cache_bytes(&self) -> usize {
        self.lock().bytes()
    }

    fn lock(&self) -> MutexGuard<'_, EmbedCache> {
        // A panic while the lock was held left at worst a partly filled cache: still consistent
        // (rows are appended before their keys are inserted), so the poison is ignored.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cap_bytes(&self) -> usize {
        self.agent.config().embed_cache_mb.saturating_mul(1 << 20)
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
        let ws = self.agent.dims().window;
        let s = self.source.symbols();
        let windows = match self.source.tech_array() {
            Some(ta) if self.device_windows => self.windows_on_device(keys, ta)?,
            _ => {
                let per = s * ws.window * ws.features;
                let mut win = vec![0f32; keys.len() * per];
                win.par_chunks_mut(per)
                    .zip(keys.par_iter())
                    .for_each(|(out, &(p, t))| {
                        self.source.windows_into(p as usize, t as usize, out)
                    });
                Tensor::from_vec(win, (keys.len(), s, ws.window, ws.features), &self.device)?
            }
        };
        if !self.agent.encoder().uses_graph() {
            return Ok((windows, None));
        }
        let flat = self.adjacencies(keys)?;
        Ok((
            windows,
            Some(Tensor::from_vec(flat, (keys.len(), s, s), &self.device)?),
        ))
    }

    /// Windows `[G, S, W, F]` of `keys` gathered on the policy's device from the feature array
    /// (uploaded on first use): row `((p * S + s) * T + t + 1 - W + i)` of `[P * S * T, F]` is bar
    /// `t + 1 - W + i` of the window of symbol s (oldest first), as [`WindowSource::windows_into`].
    fn windows_on_device(&self, keys: &[(u32, u32)], ta: TechArray<'_>) -> crate::Result<Tensor> {
        let w = self.agent.dims().window.window;
        let (p_n, s_n, t_n, f) = (ta.paths, ta.symbols, ta.bars, ta.features);
        let tech = {
            let mut g = self.tech.lock().unwrap_or_else(|p| p.into_inner());
            match &*g {
                Some(t) => t.clone(),
                None => {
                    let rows = p_n * s_n * t_n;
                    if rows > u32::MAX as usize || ta.data.len() != rows * f {
                        return Err(Error::invalid(format!(
                            "feature array of {} floats for [{p_n}, {s_n}, {t_n}, {f}] (or over \
                             2^32 rows)",
                            ta.data.len()
                        )));
                    }
                    let t = Tensor::from_slice(ta.data, (rows, f), &self.device)?;
                    *g = Some(t.clone());
                    t
                }
            }
        };
        let mut starts = Vec::with_capacity(keys.len() * s_n);
        for &(p, t) in keys {
            let (p, t) = (p as usize, t as usize);
            if p >= p_n || t >= t_n || t + 1 < w {
                return Err(Error::invalid(format!(
                    "window key (path {p}, bar {t}) outside [0, {p_n}) x [{}, {t_n})",
                    w - 1
                )));
            }
            starts.extend((0..s_n).map(|s| ((p * s_n + s) * t_n + t + 1 - w) as u32));
        }
        let starts = Tensor::from_vec(starts, (keys.len() * s_n, 1), &self.device)?;
        let offsets = Tensor::arange(0u32, w as u32, &self.device)?.reshape((1, w))?;
        let idx = starts.broadcast_add(&offsets)?.flatten_all()?;
        Ok(tech
            .index_select(&idx, 0)?
            .reshape((keys.len(), s_n, w, f))?)
    }

    /// The correlation graphs `[G, S * S]` of `keys`: from the cache where known, built (in
    /// parallel) and cached otherwise.
    fn adjacencies(&self, keys: &[(u32, u32)]) -> crate::Result<Vec<f32>> {
        let e = &self.agent.config().encoder;
        let (lb, s) = (e.graph.lookback, self.source.symbols());
        let ss = s * s;
        let build = |&(p, t): &(u32, u32)| {
            let mut r = vec![0f32; lb * s];
            self.source
                .returns_into(p as usize, t as usize, lb, &mut r)
                .then(|| correlation_graph(&r, lb, s, e.graph.k))
                .ok_or_else(|| {
                    Error::invalid("the graph branch needs returns from the window source")
                })
        };
        let cap = self.cap_bytes();
        let mut c = self.lock();
        let missing: Vec<(u32, u32)> = {
            let mut m: Vec<(u32, u32)> = keys
                .iter()
                .filter(|k| !c.adj_rows.contains_key(k))
                .copied()
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        let built: Vec<Vec<f32>> = missing
            .par_iter()
            .map(build)
            .collect::<crate::Result<_>>()?;
        let mut fresh: HashMap<(u32, u32), &[f32]> = HashMap::new();
        if c.bytes() + 4 * ss * missing.len() > cap {
            // Over the bound: serve this batch from what was built, cache nothing new.
            for (k, a) in missing.iter().zip(&built) {
                fresh.insert(*k, a);
            }
        } else {
            for (k, a) in missing.iter().zip(&built) {
                let row = c.adj.len() / ss;
                c.adj.extend_from_slice(a);
                c.adj_rows.insert(*k, row);
            }
            c.peak_bytes = c.peak_bytes.max(c.bytes());
        }
        let mut flat = Vec::with_capacity(keys.len() * ss);
        for k in keys {
            match fresh.get(k) {
                Some(a) => flat.extend_from_slice(a),
                None => {
                    let row = c.adj_rows[k];
                    flat.extend_from_slice(&c.adj[row * ss..(row + 1) * ss]);
                }
            }
        }
        Ok(flat)
    }

    /// Encode `keys` (distinct) with the current parameters: `[G, S, E]`; one encoder pass per key
    /// when `per_key`, else one pass for all.
    ///
    /// The rollout encodes per key (`per_key`): a matmul's rounding depends on its shapes (gemm
    /// picks its blocking from them), so a key encoded in a batch of 3 and in a batch of 1 can
    /// differ in the last bit; per-key passes keep every shape fixed, so the cached rollout and the
    /// uncached one see the same bits. A key is `S x W` rows (3,432 for 143 symbols), large enough
    /// matmuls that batching keys gains little there. The update (with gradient) batches all the
    /// distinct keys of a minibatch in one pass. The per-key passes are the no-gradient ones: they
    /// run on the untracked twin when there is one.
    fn encode_keys(&self, keys: &[(u32, u32)], per_key: bool) -> crate::Result<Tensor> {
        let clock = Instant::now();
        let emb = if per_key {
            let agent = self.inference_agent();
            let mut parts = Vec::with_capacity(keys.len());
            for k in keys {
                let (windows, adj) = self.gather(std::slice::from_ref(k))?;
                parts.push(agent.encode(&windows, adj.as_ref())?);
            }
            Tensor::cat(&parts, 0)?
        } else {
            let (windows, adj) = self.gather(keys)?;
            self.agent.encode(&windows, adj.as_ref())?
        };
        let mut c = self.lock();
        c.encoded += keys.len() as u64;
        c.encoder_secs += clock.elapsed().as_secs_f64();
        Ok(emb)
    }

    /// Embeddings `[G, S, E]` of the distinct `keys` through the cache (no gradient): known keys are
    /// read, the others encoded in one batch and stored.
    fn cached_embeddings(&self, keys: &[(u32, u32)]) -> crate::Result<Tensor> {
        let (s, e) = (
            self.agent.dims().symbols,
            self.agent.config().encoder.embed_dim,
        );
        let row_len = s * e;
        let cap = self.cap_bytes();
        if 4 * row_len * keys.len() > cap {
            // Cache off, or a batch larger than the bound: encode uncached.
            return Ok(self.encode_keys(keys, true)?.detach());
        }
        let missing: Vec<(u32, u32)> = {
            let mut c = self.lock();
            let mut missing: Vec<(u32, u32)> = keys
                .iter()
                .filter(|k| !c.emb_rows.contains_key(k))
                .copied()
                .collect();
            if c.bytes() + 4 * row_len * missing.len() > cap {
                c.clear();
                c.evictions += 1;
                missing = keys.to_vec();
            }
            c.hits += (keys.len() - missing.len()) as u64;
            c.misses += missing.len() as u64;
            missing
        };
        if !missing.is_empty() {
            let emb = self.encode_keys(&missing, true)?.detach();
            let row_bytes = row_len * emb.dtype().size_in_bytes();
            let mut c = self.lock();
            for (i, k) in missing.iter().enumerate() {
                let row = c.emb.len();
                c.emb.push(emb.i(i)?);
                c.emb_bytes += row_bytes;
                c.emb_rows.insert(*k, row);
            }
            c.peak_bytes = c.peak_bytes.max(c.bytes());
        }
        let c = self.lock();
        let rows: Vec<&Tensor> = keys.iter().map(|k| &c.emb[c.emb_rows[k]]).collect();
        let out = Tensor::stack(&rows, 0)?;
        drop(c);
        debug_assert_eq!(out.dims(), &[keys.len(), s, e]);
        Ok(out)
    }

    /// What the actor's output layer reads for every row of `obs` (no gradient): `[S, B, K]`
    /// ([`SymbolAgent::actor_output_inputs`]); the warm start fits the output layer on it.
    pub fn actor_output_inputs(&self, obs: &SymbolObs) -> crate::Result<Tensor> {
        let (unique, group) = Self::group_keys(&obs.keys);
        let emb = self.cached_embeddings(&unique)?;
        let group = Tensor::from_vec(group, obs.keys.len(), &self.device)?;
        Ok(self
            .inference_agent()
            .actor_output_inputs(&emb, &group, &obs.dyn_obs)?
            .detach())
    }

    /// Logits `[B*S, A]` and values `[B*S]` from the embeddings `emb` of the distinct keys.
    fn heads_rows(
        &self,
        agent: &SymbolAgent,
        obs: &SymbolObs,
        emb: &Tensor,
        group: Vec<u32>,
    ) -> crate::Result<(Tensor, Tensor)> {
        let group = Tensor::from_vec(group, obs.keys.len(), &self.device)?;
        let (logits, value) = agent.heads(emb, &group, &obs.dyn_obs)?;
        let (b, s, a) = logits.dims3()?;
        Ok((logits.reshape((b * s, a))?, value.reshape(b * s)?))
    }
}

impl ActorCritic for SymbolPolicy {
    type Obs = SymbolObs;

    /// Rows are `(scenario, symbol)`, scenario-major: logits `[B*S, A]`, values `[B*S]`. The
    /// encoder runs once per distinct key of the batch, with gradient (or, with a frozen encoder,
    /// not at all for keys in the cache).
    fn forward(&self, obs: &SymbolObs) -> crate::Result<(Tensor, Tensor)> {
        let (unique, group) = Self::group_keys(&obs.keys);
        let emb = if self.agent.config().freeze_encoder {
            // The frozen encoder's embeddings from the cache; the heads learn.
            self.cached_embeddings(&unique)?
        } else {
            self.encode_keys(&unique, false)?
        };
        self.heads_rows(&self.agent, obs, &emb, group)
    }

    /// As [`forward`](Self::forward), with the embeddings read from / added to the cache, and
    /// without gradient: on the untracked twin when there is one
    /// ([`SymbolPolicy::with_untracked_inference`]).
    fn forward_inference(&self, obs: &SymbolObs) -> crate::Result<(Tensor, Tensor)> {
        let (unique, group) = Self::group_keys(&obs.keys);
        let emb = self.cached_embeddings(&unique)?;
        self.heads_rows(self.inference_agent(), obs, &emb, group)
    }

    /// Empties the embeddings (not the graphs, which do not depend on the parameters), unless only
    /// the trainable parameters changed and the encoder is frozen.
    fn parameters_changed(&self, all: bool) {
        if all || !self.agent.config().freeze_encoder {
            self.lock().clear_embeddings();
        }
    }

    /// `encoder.*` parameters when `agent.freeze_encoder`.
    fn is_frozen(&self, name: &str) -> bool {
        self.agent.config().freeze_encoder && name.starts_with("encoder.")
    }

    /// The SL triplet of every row (`dyn_obs[.., SL_PROBS]`) through [`super::prior::prior_logits`]
    /// with `agent.prior_beta` and `agent.hold_prior`.
    fn prior_logits(&self, obs: &SymbolObs) -> crate::Result<Option<Tensor>> {
        let (b, s, _) = obs.dyn_obs.dims3()?;
        let sl = crate::env::obs::SL_PROBS;
        let triplet = obs
            .dyn_obs
            .narrow(2, sl.start, sl.len())?
            .reshape((b * s, sl.len()))?;
        let cfg = self.agent.config();
        Ok(Some(super::prior::prior_logits(
            &triplet,
            cfg.prior_beta,
            cfg.hold_prior,
        )?))
    }

    fn drain_stats(&self) -> Vec<(String, f64)> {
        let mut c = self.lock();
        let out = vec![
            ("cache.hits".to_string(), c.hits as f64),
            ("cache.misses".to_string(), c.misses as f64),
            ("cache.evictions".to_string(), c.evictions as f64),
            ("cache.bytes".to_string(), c.peak_bytes as f64),
            ("encoder.keys".to_string(), c.encoded as f64),
            ("time.encoder".to_string(), c.encoder_secs),
        ];
        (c.hits, c.misses, c.evictions, c.encoded, c.encoder_secs) = (0, 0, 0, 0, 0.0);
        c.peak_bytes = c.bytes();
        out
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
