/*!
The vectorised environment: N parallel market scenarios x S symbols behind one batched `reset()` /
`step()`, in the style of Gymnasium's vector API (same-step autoreset).

[`VecEnv`] validates inputs, owns the host-side outputs and the [`RewardShaper`], and delegates the
work to a [`Backend`]: [`cpu::CpuBackend`] (the reference, rayon over scenarios) or, with the
`cuda` feature, `cuda::CudaBackend`. Both implement docs/env-spec.md.

Observations are f32; the cpu backend also writes them in half precision
([`VecEnv::gather_obs_f16`], [`VecEnv::dyn_obs_bf16`], ...: the f32 values rounded to nearest even,
half the bytes). The cuda backend answers those with [`ErrorKind::BackendUnavailable`].

The environment is built from an [`EnvSetup`] (its own config sections and those of costs and
reward), never from the whole application configuration:

```
use std::sync::Arc;
use marl_trade::data::{self, SyntheticConfig};
use marl_trade::features::Features;
use marl_trade::env::{BackendKind, EnvSetup, Period, VecEnv};

let synth = SyntheticConfig { symbols: 4, bars: 400, ..SyntheticConfig::default() };
let md = Arc::new(data::generate(&synth, "SPY"));
let feats = Arc::new(Features::compute(&md));
let mut setup = EnvSetup::default();
setup.env.scenarios = 2;
setup.env.episode_len = 16;
let mut env = VecEnv::new(&setup, md, feats, Period::Train, BackendKind::Cpu)?;
env.reset(1)?;
let actions = vec![1u8; env.n_scenarios() * env.n_symbols()]; // BUY_SMALL everywhere
let master = vec![setup.master.default_action as u8; env.n_scenarios()];
let out = env.step(&actions, &master)?;
assert_eq!(out.reward.len(), 2 * 4);
# Ok::<(), marl_trade::Error>(())
```
*/

pub mod abi;
pub mod config;
pub mod cpu;
#[cfg(cuda_env)]
pub mod cuda;
pub mod device;
pub mod logic;
pub mod master_obs;
pub mod obs;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::data::MarketData;
use crate::error::{Error, ErrorKind, Result};
use crate::features::{Features, WARMUP};
use crate::priors::PriorCache;
use crate::reward::{ComponentStat, ComponentSums, N_COMPONENTS, RewardShaper};

pub use config::{EnvConfig, EnvSetup, MasterConfig, RiskConfig};
pub use logic::{MASTER_ACTIONS, N_ACTIONS, StepParams};

/// Which backend runs the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The reference backend: rayon over scenarios.
    Cpu,
    /// Handwritten CUDA kernels compiled with NVRTC (the `cuda` feature and an NVIDIA driver).
    Cuda,
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            other => Err(Error::invalid(format!(
                "unknown backend `{other}` (expected cpu or cuda)"
            ))),
        }
    }
}

/// Which bars an environment plays (spec §1). Parsed from `train`, `test` or `LO..HI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `[0, floor(T * train_fraction))`
    Train,
    /// `[floor(T * train_fraction), T)`: held out.
    Test,
    /// An explicit `[lo, hi)`.
    Bars(usize, usize),
}

impl FromStr for Period {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "train" => Ok(Period::Train),
            "test" => Ok(Period::Test),
            other => other
                .split_once("..")
                .and_then(|(a, b)| {
                    Some(Period::Bars(a.trim().parse().ok()?, b.trim().parse().ok()?))
                })
                .filter(|p| matches!(p, Period::Bars(a, b) if a < b))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown period `{other}` (expected train, test or LO..HI with LO < HI)"
                    ))
                }),
        }
    }
}

/// Sizes and the bar range of an environment, fixed at construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnvLayout {
    /// Scenarios N.
    pub n_scenarios: usize,
    /// Symbols S.
    pub n_symbols: usize,
    /// Data paths P.
    pub paths: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Period `[lo, hi)`.
    pub lo: usize,
    /// End of the period (exclusive).
    pub hi: usize,
    /// Start bars are drawn from `[start_a, start_b]` (spec §1).
    pub start_a: usize,
    /// See `start_a`.
    pub start_b: usize,
    /// Steps per episode (an episode also ends at the period's end or on the kill switch).
    pub episode_len: usize,
    /// The flattened step parameters of the configuration.
    pub params: StepParams,
}

impl EnvLayout {
    /// The layout of an environment of `cfg` over `period` of `md`.
    pub fn new(cfg: &EnvSetup, md: &MarketData, period: Period) -> Result<Self> {
        let t = md.bars;
        let split = (t as f64 * cfg.env.train_fraction).floor() as usize;
        let (lo, hi) = match period {
            Period::Train => (0, split),
            Period::Test => (split, t),
            Period::Bars(lo, hi) => (lo, hi.min(t)),
        };
        let a = lo.max(WARMUP);
        if a + 2 > hi {
            return Err(Error::invalid(format!(
                "period [{lo}, {hi}) of {t} bars is too short: episodes start at bar >= {WARMUP} \
                 (feature warm-up) and need one more bar to fill"
            )));
        }
        let l = cfg.env.episode_len;
        let b = a.max(hi.saturating_sub(1 + l));
        Ok(Self {
            n_scenarios: cfg.env.scenarios,
            n_symbols: md.n_symbols(),
            paths: md.paths,
            bars: t,
            lo,
            hi,
            start_a: a,
            start_b: b,
            episode_len: l,
            params: StepParams::new(cfg, md.n_symbols(), md.bars_per_year()),
        })
    }

    /// `(path, t0)` of the e-th episode of scenario n after `reset(seed)` (spec §1).
    #[inline]
    pub fn episode_start(&self, seed: u64, n: usize, e: u32) -> (u32, u32) {
        let key = 2 * (((n as u64) << 20) + e as u64);
        let h1 = crate::rng::hash2(seed, key);
        let h2 = crate::rng::hash2(seed, key + 1);
        let p = h1 % self.paths as u64;
        let t0 = self.start_a as u64 + h2 % (self.start_b - self.start_a + 1) as u64;
        (p as u32, t0 as u32)
    }
}

/// Per-scenario state (spec §2). `#[repr(C)]` with no padding (`Pod`): the CUDA backend mirrors
/// it, and saved states are its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct ScenarioState {
    /// Cash (negative when borrowing).
    pub cash: f64,
    /// Equity marked at the close of the current bar.
    pub equity: f64,
    /// Peak equity of the episode.
    pub peak: f64,
    /// Gross position value at the current close.
    pub gross: f64,
    /// Differential-Sharpe moments of the portfolio return.
    pub dsr_a: f64,
    /// See `dsr_a`.
    pub dsr_b: f64,
    /// The data path the episode plays.
    pub path: u32,
    /// The episode's first bar.
    pub t0: u32,
    /// Step within the episode; the current bar is `t0 + k`.
    pub k: u32,
    /// Episode counter since reset (drives the start draws).
    pub episode: u32,
    /// The stored master directive (last master action).
    pub directive: u32,
    /// Open positions.
    pub open_count: u32,
    /// Actions executed as HOLD because they were masked, this episode.
    pub invalid_actions: u32,
    /// Buy orders dropped by the open-position limit, this episode.
    pub limited_orders: u32,
}

/// Per-symbol state, `[N * S]` each (spec §2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SymbolState {
    /// Shares held (>= 0; the env is long-only per symbol, leverage comes from negative cash).
    pub q: Vec<f64>,
    /// Average entry price including slippage.
    pub entry: Vec<f64>,
    /// Highest close since the position was opened (starts at the fill price).
    pub peak_px: Vec<f64>,
    /// Differential-Sharpe moments of each symbol's return, `[N * S]`.
    pub dsr_a: Vec<f64>,
    /// See `dsr_a`.
    pub dsr_b: Vec<f64>,
    /// Step at which the position was opened.
    pub entry_k: Vec<u32>,
}

/// The whole environment state, read back to the host (tests, parity, telemetry).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The seed of the last `reset`.
    pub seed: u64,
    /// Per-scenario state, `[N]`.
    pub scenarios: Vec<ScenarioState>,
    /// Per-symbol state, `[N * S]` each.
    pub symbols: SymbolState,
}

impl SymbolState {
    /// The f64 fields in storage order (q, entry, peak_px, dsr_a, dsr_b); `entry_k` is the only
    /// other field.
    pub fn f64_fields(&self) -> [&Vec<f64>; 5] {
        [
            &self.q,
            &self.entry,
            &self.peak_px,
            &self.dsr_a,
            &self.dsr_b,
        ]
    }

    /// [`SymbolState::f64_fields`], mutable.
    pub fn f64_fields_mut(&mut self) -> [&mut Vec<f64>; 5] {
        [
            &mut self.q,
            &mut self.entry,
            &mut self.peak_px,
            &mut self.dsr_a,
            &mut self.dsr_b,
        ]
    }
}

/// Header of a serialized [`Snapshot`] ([`Snapshot::to_bytes`]); the buffers follow it.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct SnapshotHeader {
    magic: [u8; 8],
    version: u32,
    /// `size_of::<ScenarioState>()`: a changed state layout is refused even at the same version.
    scenario_size: u32,
    n: u32,
    s: u32,
    seed: u64,
    /// Bytes of the scenario states, of each f64 symbol field, and of `entry_k`.
    scenario_bytes: u64,
    f64_field_bytes: u64,
    u32_field_bytes: u64,
}

impl SnapshotHeader {
    const MAGIC: [u8; 8] = *b"MARLSNAP";
    /// Bump when the serialized state changes meaning.
    const VERSION: u32 = 1;

    fn new(n: usize, s: usize, seed: u64) -> Self {
        Self {
            magic: Self::MAGIC,
            version: Self::VERSION,
            scenario_size: std::mem::size_of::<ScenarioState>() as u32,
            n: n as u32,
            s: s as u32,
            seed,
            scenario_bytes: (n * std::mem::size_of::<ScenarioState>()) as u64,
            f64_field_bytes: (n * s * 8) as u64,
            u32_field_bytes: (n * s * 4) as u64,
        }
    }

    /// Bytes of the buffers after the header.
    fn body_bytes(&self) -> u64 {
        self.scenario_bytes + 5 * self.f64_field_bytes + self.u32_field_bytes
    }
}

/// Copy `bytes` into a new vector of `T` (any alignment of `bytes`; its length is a multiple of
/// `size_of::<T>()`, checked by the caller).
fn pod_vec<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
    v
}

impl Snapshot {
    /// The snapshot as bytes: a small versioned header (magic, format version, N, S, the seed, the
    /// section lengths) followed by the buffers exactly as they are in memory (`bytemuck` casts of
    /// the scenario states, of each f64 symbol field and of `entry_k`; native byte order, i.e.
    /// little-endian on every supported target). The snapshot must have a consistent shape
    /// ([`Snapshot::check_shape`]), which every backend's snapshot has.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.scenarios.len();
        let s = self.symbols.q.len().checked_div(n).unwrap_or(0);
        let h = SnapshotHeader::new(n, s, self.seed);
        let mut out =
            Vec::with_capacity(std::mem::size_of::<SnapshotHeader>() + h.body_bytes() as usize);
        out.extend_from_slice(bytemuck::bytes_of(&h));
        out.extend_from_slice(bytemuck::cast_slice(&self.scenarios));
        for f in self.symbols.f64_fields() {
            out.extend_from_slice(bytemuck::cast_slice(f));
        }
        out.extend_from_slice(bytemuck::cast_slice(&self.symbols.entry_k));
        out
    }

    /// Read a snapshot written by [`Snapshot::to_bytes`] for an env of `n` scenarios and `s`
    /// symbols. An old or foreign snapshot (wrong magic, format version or state layout, other N or
    /// S, truncated or with trailing bytes) is refused with an error saying what is wrong.
    pub fn from_bytes(bytes: &[u8], n: usize, s: usize) -> Result<Self> {
        let hlen = std::mem::size_of::<SnapshotHeader>();
        let bad = |what: String| Err(Error::env_state(format!("env snapshot: {what}")));
        if bytes.len() < hlen {
            return bad(format!(
                "truncated: {} bytes, shorter than the {hlen}-byte header",
                bytes.len()
            ));
        }
        let (head, body) = bytes.split_at(hlen);
        let h: SnapshotHeader = bytemuck::pod_read_unaligned(head);
        if h.magic != SnapshotHeader::MAGIC {
            return bad(format!(
                "not an environment snapshot (magic {:?}, expected {:?})",
                String::from_utf8_lossy(&h.magic),
                String::from_utf8_lossy(&SnapshotHeader::MAGIC)
            ));
        }
        if h.version != SnapshotHeader::VERSION {
            return bad(format!(
                "format version {} is not supported (this build reads version {})",
                h.version,
                SnapshotHeader::VERSION
            ));
        }
        let want = SnapshotHeader::new(n, s, h.seed);
        if h.scenario_size != want.scenario_size {
            return bad(format!(
                "scenario state of {} bytes, this build's has {}",
                h.scenario_size, want.scenario_size
            ));
        }
        if (h.n, h.s) != (want.n, want.s) {
            return bad(format!(
                "saved for N = {} scenarios, S = {} symbols; this env has N = {n}, S = {s}",
                h.n, h.s
            ));
        }
        if (h.scenario_bytes, h.f64_field_bytes, h.u32_field_bytes)
            != (
                want.scenario_bytes,
                want.f64_field_bytes,
                want.u32_field_bytes,
            )
        {
            return bad("section lengths do not match N and S".into());
        }
        if body.len() as u64 != want.body_bytes() {
            let what = if (body.len() as u64) < want.body_bytes() {
                "truncated"
            } else {
                "trailing bytes"
            };
            return bad(format!(
                "{what}: {} bytes of state after the header, expected {}",
                body.len(),
                want.body_bytes()
            ));
        }
        let (sc, mut rest) = body.split_at(want.scenario_bytes as usize);
        let mut symbols = SymbolState::default();
        for f in symbols.f64_fields_mut() {
            let (x, r) = rest.split_at(want.f64_field_bytes as usize);
            *f = pod_vec(x);
            rest = r;
        }
        symbols.entry_k = pod_vec(rest);
        Ok(Self {
            seed: h.seed,
            scenarios: pod_vec(sc),
            symbols,
        })
    }

    /// Check that the snapshot holds N scenarios and N * S symbol entries.
    pub fn check_shape(&self, n: usize, s: usize) -> Result<()> {
        let sy = &self.symbols;
        let mut lens = sy.f64_fields().map(|f| f.len()).to_vec();
        lens.push(sy.entry_k.len());
        if self.scenarios.len() != n || lens.iter().any(|&l| l != n * s) {
            return Err(Error::env_state(format!(
                "snapshot holds {} scenarios and {lens:?} symbol entries; the env has N = {n}, S = {s}",
                self.scenarios.len()
            )));
        }
        Ok(())
    }
}

/// One finished episode (spec §7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeRecord {
    /// The scenario it ran in.
    pub scenario: u32,
    /// The data path it played.
    pub path: u32,
    /// Its first bar.
    pub start: u32,
    /// Steps it lasted.
    pub length: u32,
    /// Final equity / initial capital - 1.
    pub total_return: f64,
    /// Ended by the kill switch.
    pub killed: bool,
    /// Masked actions executed as HOLD.
    pub invalid_actions: u32,
    /// Buy orders dropped by the open-position limit.
    pub limited_orders: u32,
    /// Weighted reward components summed over the episode's symbol-steps.
    pub components: ComponentSums,
}

/// Outputs of the last step, on the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutputs {
    /// Total reward per symbol agent `[N, S]`.
    pub reward: Vec<f32>,
    /// Unweighted reward components `[N, S, 7]` (order of `reward::COMPONENT_NAMES`).
    pub components: Vec<f32>,
    /// Master reward `[N]`.
    pub master_reward: Vec<f32>,
    /// The step's turnover `[N]`: the notional of its fills at the next open,
    /// `sum_s (qs + qb) * O[t']`, over the equity before the step `E0` (0 when `E0 <= 0`); the
    /// kill switch's liquidation is not an order and is not counted (spec §4.8).
    pub turnover: Vec<f32>,
    /// Episode ended by the kill switch `[N]` (0/1).
    pub terminated: Vec<u8>,
    /// Episode ended by its length or the end of the period `[N]` (0/1).
    pub truncated: Vec<u8>,
}

impl StepOutputs {
    /// Zeroed outputs for `n` scenarios x `s` symbols.
    pub fn new(n: usize, s: usize) -> Self {
        Self {
            reward: vec![0.0; n * s],
            components: vec![0.0; n * s * N_COMPONENTS],
            master_reward: vec![0.0; n],
            turnover: vec![0.0; n],
            terminated: vec![0; n],
            truncated: vec![0; n],
        }
    }

    /// `terminated || truncated` of scenario n.
    pub fn done(&self, n: usize) -> bool {
        self.terminated[n] != 0 || self.truncated[n] != 0
    }
}

/// A half-precision observation buffer (the f32 observation rounded to nearest even).
#[derive(Debug)]
pub enum HalfObs<'a> {
    /// IEEE binary16.
    F16(&'a mut [half::f16]),
    /// bfloat16.
    Bf16(&'a mut [half::bf16]),
}

impl HalfObs<'_> {
    fn len(&self) -> usize {
        match self {
            HalfObs::F16(o) => o.len(),
            HalfObs::Bf16(o) => o.len(),
        }
    }
}

/// The error of a backend without half-precision observations.
fn half_unavailable(backend: &str) -> Error {
    Error::new(
        ErrorKind::BackendUnavailable,
        format!(
            "half-precision observations are implemented by the cpu backend only, not by {backend}: \
             use gather_obs / dyn_obs (f32) and convert"
        ),
    )
}

/// What a backend implements. Inputs are validated by [`VecEnv`] before they reach a backend.
pub trait Backend: Send {
    /// `cpu` or `cuda`.
    fn name(&self) -> &'static str;
    /// Sizes and bar range.
    fn layout(&self) -> &EnvLayout;
    /// Spec §1-2 for every scenario.
    fn reset(&mut self, seed: u64) -> Result<()>;
    /// Spec §4 for every scenario. `symbol_actions` is `[N, S]`, `master_actions` `[N]`.
    fn step(&mut self, symbol_actions: &[u8], master_actions: &[u8]) -> Result<()>;
    /// Copy the last step's outputs to the host.
    fn read_outputs(&mut self, out: &mut StepOutputs) -> Result<()>;
    /// Dynamic observation `[N, S, DYN_OBS]` (spec §6).
    fn dyn_obs(&mut self, out: &mut [f32]) -> Result<()>;
    /// Full observation `[N, S, OBS_DIM]` (spec §6).
    fn gather_obs(&mut self, out: &mut [f32]) -> Result<()>;
    /// Dynamic observation `[N, S, DYN_OBS]` in half precision: the f32 values of
    /// [`Backend::dyn_obs`] rounded to nearest even. Backends without it answer
    /// [`ErrorKind::BackendUnavailable`].
    fn dyn_obs_half(&mut self, _out: HalfObs<'_>) -> Result<()> {
        Err(half_unavailable(self.name()))
    }
    /// Full observation `[N, S, OBS_DIM]` in half precision, as [`Backend::dyn_obs_half`].
    fn gather_obs_half(&mut self, _out: HalfObs<'_>) -> Result<()> {
        Err(half_unavailable(self.name()))
    }
    /// Action mask `[N, S, 7]`, 1 = allowed (spec §4.2 with the stored directive).
    fn action_mask(&mut self, out: &mut [u8]) -> Result<()>;
    /// `(path, bar)` of every scenario's current observation, `[N, 2]`: with the symbol index it
    /// addresses the technical window in the feature array.
    fn obs_index(&mut self, out: &mut [u32]) -> Result<()>;
    /// Read the whole state back.
    fn snapshot(&self) -> Result<Snapshot>;
    /// Overwrite the whole state (tests drive both backends from the same random state).
    fn load_snapshot(&mut self, snap: &Snapshot) -> Result<()>;
    /// Finished episodes since the last call.
    fn drain_episodes(&mut self) -> Result<Vec<EpisodeRecord>>;
    /// The master observation `[N, MASTER_OBS]` (spec §8) from the symbol agents' intents
    /// `[N, MASTER_INTENTS]`; reads and updates the per-scenario `anchors` `[N]`. Backends without
    /// it answer [`ErrorKind::BackendUnavailable`].
    fn master_obs(
        &mut self,
        _intents: &[f32],
        _anchors: &mut [master_obs::MasterAnchor],
        _out: &mut [f32],
    ) -> Result<()> {
        Err(Error::new(
            ErrorKind::BackendUnavailable,
            format!("the {} backend has no master observation", self.name()),
        ))
    }
}

/// Build a backend of the given kind; its observation SL slice reads `priors` (`None`: zeros).
pub fn make_backend(
    kind: BackendKind,
    layout: EnvLayout,
    data: Arc<MarketData>,
    features: Arc<Features>,
    priors: Option<Arc<PriorCache>>,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(
            cpu::CpuBackend::new(layout, data, features).with_priors(priors)?,
        )),
        BackendKind::Cuda => make_cuda(layout, data, features, priors),
    }
}

/// Read the SL prior cache at `path` and check it against `data` (spec §6).
pub fn load_priors(path: &Path, data: &MarketData) -> Result<PriorCache> {
    let c = PriorCache::read(path)?;
    c.check_data(data, path)?;
    Ok(c)
}

#[cfg(cuda_env)]
fn make_cuda(
    layout: EnvLayout,
    data: Arc<MarketData>,
    features: Arc<Features>,
    priors: Option<Arc<PriorCache>>,
) -> Result<Box<dyn Backend>> {
    Ok(Box::new(cuda::CudaBackend::with_priors(
        layout, data, features, priors,
    )?))
}

#[cfg(not(cuda_env))]
fn make_cuda(
    _: EnvLayout,
    _: Arc<MarketData>,
    _: Arc<Features>,
    _: Option<Arc<PriorCache>>,
) -> Result<Box<dyn Backend>> {
    Err(Error::backend(
        "cuda",
        "this binary was built without the `cuda` feature; rebuild with \
         `cargo build --release --features cuda`",
    ))
}

/// The batched environment.
pub struct VecEnv {
    backend: Box<dyn Backend>,
    layout: EnvLayout,
    out: StepOutputs,
    shaper: RewardShaper,
    finished: Vec<EpisodeRecord>,
    data: Arc<MarketData>,
    features: Arc<Features>,
    needs_reset: bool,
    anchors: Vec<master_obs::MasterAnchor>,
}

impl VecEnv {
    /// An environment over `period` of `data`, on the chosen backend.
    pub fn new(
        cfg: &EnvSetup,
        data: Arc<MarketData>,
        features: Arc<Features>,
        period: Period,
        kind: BackendKind,
    ) -> Result<Self> {
        if features.bars != data.bars
            || features.symbols != data.n_symbols()
            || features.paths != data.paths
        {
            return Err(Error::new(
                crate::error::ErrorKind::Shape,
                "features were computed from other data (paths, bars or symbols differ)",
            ));
        }
        let priors = match &cfg.env.sl_cache {
            Some(path) => Some(Arc::new(load_priors(Path::new(path), &data)?)),
            None => None,
        };
        let layout = EnvLayout::new(cfg, &data, period)?;
        let backend = make_backend(kind, layout, data.clone(), features.clone(), priors)?;
        Ok(Self::from_backend(backend, data, features))
    }

    /// [`VecEnv::new`] with an SL prior cache already in memory instead of `env.sl_cache` (which
    /// is ignored): checked against `data` (shape and fingerprint), then read by the
    /// observation's SL slice.
    pub fn with_priors(
        cfg: &EnvSetup,
        data: Arc<MarketData>,
        features: Arc<Features>,
        priors: Arc<PriorCache>,
        period: Period,
        kind: BackendKind,
    ) -> Result<Self> {
        priors.check_data(&data, Path::new("(SL prior cache in memory)"))?;
        let mut cfg = cfg.clone();
        cfg.env.sl_cache = None;
        let layout = EnvLayout::new(&cfg, &data, period)?;
        let backend = make_backend(kind, layout, data.clone(), features.clone(), Some(priors))?;
        Ok(Self::from_backend(backend, data, features))
    }

    /// Wrap an already built backend.
    pub fn from_backend(
        backend: Box<dyn Backend>,
        data: Arc<MarketData>,
        features: Arc<Features>,
    ) -> Self {
        let layout = *backend.layout();
        Self {
            out: StepOutputs::new(layout.n_scenarios, layout.n_symbols),
            backend,
            layout,
            shaper: RewardShaper::new(),
            finished: Vec::new(),
            data,
            features,
            needs_reset: true,
            anchors: vec![master_obs::MasterAnchor::default(); layout.n_scenarios],
        }
    }

    /// Scenarios N.
    pub fn n_scenarios(&self) -> usize {
        self.layout.n_scenarios
    }
    /// Symbols S.
    pub fn n_symbols(&self) -> usize {
        self.layout.n_symbols
    }
    /// Sizes, bar range and step parameters.
    pub fn layout(&self) -> &EnvLayout {
        &self.layout
    }
    /// The backend's name (`cpu`, `cuda`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
    /// The market data.
    pub fn data(&self) -> &Arc<MarketData> {
        &self.data
    }
    /// Its features.
    pub fn features(&self) -> &Arc<Features> {
        &self.features
    }

    /// Reset every scenario (spec §1-2).
    pub fn reset(&mut self, seed: u64) -> Result<()> {
        self.backend.reset(seed)?;
        self.finished.clear();
        self.shaper = RewardShaper::new();
        self.needs_reset = false;
        self.anchors.fill(master_obs::MasterAnchor::default());
        Ok(())
    }

    /// One batched step (spec §4). Returns the outputs, valid until the next call.
    pub fn step(&mut self, symbol_actions: &[u8], master_actions: &[u8]) -> Result<&StepOutputs> {
        if self.needs_reset {
            return Err(Error::invalid("step() before reset()"));
        }
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        if symbol_actions.len() != n * s {
            return Err(Error::invalid(format!(
                "symbol actions: {} values, expected N*S = {}",
                symbol_actions.len(),
                n * s
            )));
        }
        if master_actions.len() != n {
            return Err(Error::invalid(format!(
                "master actions: {} values, expected N = {n}",
                master_actions.len()
            )));
        }
        if let Some(i) = symbol_actions.iter().position(|&a| a as usize >= N_ACTIONS) {
            return Err(Error::invalid(format!(
                "symbol action {} at index {i} is not in 0..{N_ACTIONS}",
                symbol_actions[i]
            )));
        }
        if let Some(i) = master_actions
            .iter()
            .position(|&a| a as usize >= MASTER_ACTIONS)
        {
            return Err(Error::invalid(format!(
                "master action {} at scenario {i} is not in 0..{MASTER_ACTIONS}",
                master_actions[i]
            )));
        }
        let _range = crate::profile::range("env step");
        self.backend.step(symbol_actions, master_actions)?;
        self.backend.read_outputs(&mut self.out)?;
        if self
            .out
            .terminated
            .iter()
            .chain(&self.out.truncated)
            .any(|&d| d != 0)
        {
            for rec in self.backend.drain_episodes()? {
                self.shaper.record(&rec.components);
                self.finished.push(rec);
            }
        }
        Ok(&self.out)
    }

    /// The last step's outputs.
    pub fn outputs(&self) -> &StepOutputs {
        &self.out
    }

    /// Full observations `[N, S, OBS_DIM]`.
    pub fn gather_obs(&mut self, out: &mut [f32]) -> Result<()> {
        self.check_len("gather_obs", out.len(), obs::OBS_DIM)?;
        let _range = crate::profile::range("observation");
        self.backend.gather_obs(out)
    }

    /// Dynamic observations `[N, S, DYN_OBS]`.
    pub fn dyn_obs(&mut self, out: &mut [f32]) -> Result<()> {
        self.check_len("dyn_obs", out.len(), obs::DYN_OBS)?;
        let _range = crate::profile::range("observation");
        self.backend.dyn_obs(out)
    }

    /// Full observations `[N, S, OBS_DIM]` as f16: [`VecEnv::gather_obs`] rounded to nearest
    /// even, half the bytes (cpu backend only; other backends answer
    /// [`ErrorKind::BackendUnavailable`]).
    pub fn gather_obs_f16(&mut self, out: &mut [half::f16]) -> Result<()> {
        self.gather_obs_half(HalfObs::F16(out))
    }

    /// Full observations `[N, S, OBS_DIM]` as bf16 (see [`VecEnv::gather_obs_f16`]).
    pub fn gather_obs_bf16(&mut self, out: &mut [half::bf16]) -> Result<()> {
        self.gather_obs_half(HalfObs::Bf16(out))
    }

    /// Full observations `[N, S, OBS_DIM]` in half precision (see [`VecEnv::gather_obs_f16`]).
    pub fn gather_obs_half(&mut self, out: HalfObs<'_>) -> Result<()> {
        self.check_len("gather_obs_half", out.len(), obs::OBS_DIM)?;
        let _range = crate::profile::range("observation");
        self.backend.gather_obs_half(out)
    }

    /// Dynamic observations `[N, S, DYN_OBS]` as f16: [`VecEnv::dyn_obs`] rounded to nearest even
    /// (cpu backend only; other backends answer [`ErrorKind::BackendUnavailable`]).
    pub fn dyn_obs_f16(&mut self, out: &mut [half::f16]) -> Result<()> {
        self.dyn_obs_half(HalfObs::F16(out))
    }

    /// Dynamic observations `[N, S, DYN_OBS]` as bf16 (see [`VecEnv::dyn_obs_f16`]).
    pub fn dyn_obs_bf16(&mut self, out: &mut [half::bf16]) -> Result<()> {
        self.dyn_obs_half(HalfObs::Bf16(out))
    }

    /// Dynamic observations `[N, S, DYN_OBS]` in half precision (see [`VecEnv::dyn_obs_f16`]).
    pub fn dyn_obs_half(&mut self, out: HalfObs<'_>) -> Result<()> {
        self.check_len("dyn_obs_half", out.len(), obs::DYN_OBS)?;
        let _range = crate::profile::range("observation");
        self.backend.dyn_obs_half(out)
    }

    /// Action mask `[N, S, 7]`.
    pub fn action_mask(&mut self, out: &mut [u8]) -> Result<()> {
        self.check_len("action_mask", out.len(), N_ACTIONS)?;
        self.backend.action_mask(out)
    }

    /// The master observation `[N, MASTER_OBS]` (spec §8, [`master_obs`]) of the current state,
    /// with the symbol agents' aggregated `intents` `[N, MASTER_INTENTS]` (from the policy; the
    /// trainer passes them). Each call is a master decision point: it restarts the scenario's
    /// "P&L since the last directive". A buffer of the wrong size or non-finite intents are an
    /// error naming what is wrong.
    pub fn master_obs(&mut self, intents: &[f32], out: &mut [f32]) -> Result<()> {
        use master_obs::{MASTER_INTENTS, MASTER_OBS};
        if self.needs_reset {
            return Err(Error::invalid("master_obs() before reset()"));
        }
        let n = self.layout.n_scenarios;
        if out.len() != n * MASTER_OBS {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "master observation: buffer holds {} values, expected N * MASTER_OBS = {n} * \
                     {MASTER_OBS} = {}",
                    out.len(),
                    n * MASTER_OBS
                ),
            ));
        }
        if intents.len() != n * MASTER_INTENTS {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "master observation: {} intent values, expected N * MASTER_INTENTS = {n} * \
                     {MASTER_INTENTS} = {}",
                    intents.len(),
                    n * MASTER_INTENTS
                ),
            ));
        }
        if let Some(i) = intents.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "master observation: intent {} of scenario {} is {}",
                i % MASTER_INTENTS,
                i / MASTER_INTENTS,
                intents[i]
            )));
        }
        self.backend.master_obs(intents, &mut self.anchors, out)
    }

    /// The per-scenario anchors of the master observation's "P&L since the last directive"
    /// (saved with a trainer's state so that a resume continues exactly).
    pub fn master_anchors(&self) -> &[master_obs::MasterAnchor] {
        &self.anchors
    }

    /// Restore anchors saved by [`VecEnv::master_anchors`] (`[N]`).
    pub fn set_master_anchors(&mut self, anchors: &[master_obs::MasterAnchor]) -> Result<()> {
        if anchors.len() != self.anchors.len() {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "master anchors: {} values, expected N = {}",
                    anchors.len(),
                    self.anchors.len()
                ),
            ));
        }
        self.anchors.copy_from_slice(anchors);
        Ok(())
    }

    /// `(path, bar)` per scenario, `[N, 2]`.
    pub fn obs_index(&mut self, out: &mut [u32]) -> Result<()> {
        if out.len() != 2 * self.layout.n_scenarios {
            return Err(Error::invalid("obs_index: buffer must hold 2 * N values"));
        }
        self.backend.obs_index(out)
    }

    /// The whole state, read back to the host.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.backend.snapshot()
    }

    /// Overwrite the whole state (shape-checked); the env is ready to step.
    pub fn load_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        snap.check_shape(self.layout.n_scenarios, self.layout.n_symbols)?;
        self.needs_reset = false;
        self.backend.load_snapshot(snap)
    }

    /// Episodes finished since the last call.
    pub fn drain_finished(&mut self) -> Vec<EpisodeRecord> {
        std::mem::take(&mut self.finished)
    }

    /// Per-component statistics of the episodes finished since the last call (spec §5).
    pub fn episode_stats(&mut self) -> [ComponentStat; N_COMPONENTS] {
        self.shaper.episode_stats()
    }

    fn check_len(&self, what: &str, got: usize, per: usize) -> Result<()> {
        let want = self.layout.n_scenarios * self.layout.n_symbols * per;
        if got != want {
            return Err(Error::invalid(format!(
                "{what}: buffer holds {got} values, expected {want}"
            )));
        }
        Ok(())
    }
}
