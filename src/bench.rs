/*!
Throughput benchmarks of the environment, of the symbol policy, of the portfolio master's forward
pass ([`MasterBench`]) and of the supervised priors' inference ([`SlBench`]), used by both the CLI
(`marl-trade bench env`, `marl-trade bench policy`, `marl-trade bench sl`, and the fixed
environment matrix of `marl-trade bench suite`, [`suite`]) and the criterion benches (`benches/env.rs`,
`benches/policy.rs`), so the two measure the same loops. Throughput is reported in symbol-steps
(N scenarios x S symbols per `step`) and symbol-forwards per second, with the machine it ran on.

Speed targets are checked here and in `benches/`, never in timed unit tests.
*/

pub mod suite;

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::agents::master::{MasterNet, MasterNetConfig};
use crate::agents::{
    ActorCritic as _, AgentConfig, AgentDims, DenseWindows, SymbolObs, SymbolPolicy,
};
use crate::config::Config;
use crate::data::SyntheticConfig;
use crate::env::cpu::{CpuBackend, Isa};
use crate::env::master_obs::MASTER_OBS;
use crate::env::obs::{DYN_OBS, OBS_DIM};
use crate::env::{BackendKind, EnvLayout, EnvSetup, MASTER_ACTIONS, N_ACTIONS, Period, VecEnv};
use crate::error::{Error, Result};
use crate::features::{Features, WARMUP};
use crate::market::Market;
use crate::rng::SplitMix64;

/// `synth`'s market with `s` symbols, long enough for the train period of `setup` to hold full
/// episodes (WARMUP + episode_len + 2 bars after the split; episodes auto-reset, so the timed
/// steps are not limited by the data), and its features. Shared by [`EnvBench`] and the suite.
pub(crate) fn market(
    setup: &EnvSetup,
    synth: &SyntheticConfig,
    s: usize,
) -> (Arc<crate::data::MarketData>, Arc<Features>) {
    let need = ((WARMUP + setup.env.episode_len + 2) as f64 / setup.env.train_fraction).ceil()
        as usize
        + 1;
    let synth = SyntheticConfig {
        symbols: s,
        bars: synth.bars.max(need),
        ..synth.clone()
    };
    let md = Arc::new(crate::data::generate(&synth, "SPY"));
    let features = Arc::new(Features::compute(&md));
    (md, features)
}

/// Logical CPUs and CPU model of this machine (for reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`, or "unknown CPU".
    pub model: String,
}

impl Machine {
    /// This machine.
    pub fn here() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Self { cpus, model }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} logical CPUs, {}", self.cpus, self.model)
    }
}

/// Run `f` in a rayon pool of `threads` workers (the global pool when `None`).
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match threads {
        Some(0) => Err(Error::invalid("threads must be >= 1")),
        Some(k) => rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build()
            .map_err(|e| Error::invalid(format!("cannot start {k} threads: {e}")))?
            .install(f),
        None => f(),
    }
}

/// Pre-drawn action batches cycled through by the benchmarks.
const BATCHES: usize = 64;

/// An environment of N scenarios x S symbols on synthetic data, reset, stepping with pre-drawn
/// uniform random symbol and master actions (masked ones execute as HOLD).
pub struct EnvBench {
    env: VecEnv,
    acts: Vec<Vec<u8>>,
    masters: Vec<Vec<u8>>,
    obs: Vec<f32>,
    dyn_obs: Vec<f32>,
    /// `None` when the backend has no half-precision observations.
    obs_f16: Option<Vec<half::f16>>,
    i: usize,
    /// Seconds spent generating the data and its features.
    pub prep_seconds: f64,
    /// The CPU backend's instruction set (`None` on the CUDA backend).
    pub isa: Option<Isa>,
}

impl EnvBench {
    /// `n` scenarios x `s` symbols of `synth`'s market (its symbol count replaced by `s`, and its
    /// length raised so that the train period holds full episodes), environment `setup` with
    /// `env.scenarios = n`, on `backend`; the CPU backend steps with `isa` (`None`: the widest
    /// this CPU has).
    pub fn new(
        setup: &EnvSetup,
        synth: &SyntheticConfig,
        n: usize,
        s: usize,
        backend: BackendKind,
        isa: Option<Isa>,
    ) -> Result<Self> {
        if n == 0 || s == 0 {
            return Err(Error::invalid("envs and symbols must be >= 1"));
        }
        let mut setup = setup.clone();
        setup.env.scenarios = n;
        let t = Instant::now();
        let (md, features) = market(&setup, synth, s);
        let prep_seconds = t.elapsed().as_secs_f64();
        let (mut env, isa) = match (backend, isa) {
            (BackendKind::Cpu, Some(isa)) => {
                let layout = EnvLayout::new(&setup, &md, Period::Train)?;
                let cpu = CpuBackend::new(layout, md.clone(), features.clone()).with_isa(isa)?;
                (VecEnv::from_backend(Box::new(cpu), md, features), Some(isa))
            }
            (BackendKind::Cpu, None) => (
                VecEnv::new(&setup, md, features, Period::Train, backend)?,
                Some(Isa::detect()),
            ),
            (_, Some(isa)) => {
                return Err(Error::invalid(format!(
                    "an instruction set ({isa}) is a choice of the cpu backend only"
                )));
            }
            (_, None) => (
                VecEnv::new(&setup, md, features, Period::Train, backend)?,
                None,
            ),
        };
        env.reset(1)?;
        let mut rng = SplitMix64::new(12345);
        let acts = (0..BATCHES)
            .map(|_| {
                (0..n * s)
                    .map(|_| rng.below(N_ACTIONS as u64) as u8)
                    .collect()
            })
            .collect();
        let masters = (0..BATCHES)
            .map(|_| {
                (0..n)
                    .map(|_| rng.below(MASTER_ACTIONS as u64) as u8)
                    .collect()
            })
            .collect();
        let mut obs_f16 = vec![half::f16::ZERO; n * s * OBS_DIM];
        let obs_f16 = env.gather_obs_f16(&mut obs_f16).ok().map(|_| obs_f16);
        Ok(Self {
            env,
            acts,
            masters,
            obs: vec![0f32; n * s * OBS_DIM],
            dyn_obs: vec![0f32; n * s * DYN_OBS],
            obs_f16,
            i: 0,
            prep_seconds,
            isa,
        })
    }

    /// The environment.
    pub fn env(&self) -> &VecEnv {
        &self.env
    }

    /// One step with the next pre-drawn actions.
    pub fn step(&mut self) -> Result<()> {
        let k = self.i % BATCHES;
        self.i += 1;
        self.env.step(&self.acts[k], &self.masters[k])?;
        Ok(())
    }

    /// One step and the full observation (`gather_obs`).
    pub fn step_obs(&mut self) -> Result<()> {
        self.step()?;
        self.env.gather_obs(&mut self.obs)?;
        std::hint::black_box(&self.obs);
        Ok(())
    }

    /// One step and the dynamic observation (`dyn_obs`: what training reads; the windows are
    /// re-read from the feature array by the learner).
    pub fn step_dyn_obs(&mut self) -> Result<()> {
        self.step()?;
        self.env.dyn_obs(&mut self.dyn_obs)?;
        std::hint::black_box(&self.dyn_obs);
        Ok(())
    }

    /// One step and the full observation in f16 (`gather_obs_f16`); `false` (nothing done) when
    /// the backend has no half-precision observations.
    pub fn step_obs_f16(&mut self) -> Result<bool> {
        let Some(mut o) = self.obs_f16.take() else {
            return Ok(false);
        };
        let r = self.step().and_then(|_| self.env.gather_obs_f16(&mut o));
        std::hint::black_box(&o);
        self.obs_f16 = Some(o);
        r.map(|_| true)
    }

    /// The full observation alone.
    pub fn gather_obs(&mut self) -> Result<()> {
        self.env.gather_obs(&mut self.obs)?;
        std::hint::black_box(&self.obs);
        Ok(())
    }

    /// Warm up, then time `steps` steps, and `steps` steps with each kind of observation.
    pub fn measure(&mut self, steps: usize) -> Result<EnvThroughput> {
        if steps == 0 {
            return Err(Error::invalid("steps must be >= 1"));
        }
        for _ in 0..steps.clamp(1, 32) {
            self.step_obs()?;
        }
        let t = Instant::now();
        for _ in 0..steps {
            self.step()?;
        }
        let step_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..steps {
            self.step_obs()?;
        }
        let step_obs_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..steps {
            self.step_dyn_obs()?;
        }
        let step_dyn_obs_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut step_obs_f16_seconds = None;
        for _ in 0..steps {
            if !self.step_obs_f16()? {
                break;
            }
            step_obs_f16_seconds = Some(t.elapsed().as_secs_f64());
        }
        Ok(EnvThroughput {
            n: self.env.n_scenarios(),
            s: self.env.n_symbols(),
            steps,
            step_seconds,
            step_obs_seconds,
            step_dyn_obs_seconds,
            step_obs_f16_seconds,
        })
    }
}

/// What [`EnvBench::measure`] timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnvThroughput {
    /// Scenarios N.
    pub n: usize,
    /// Symbols S.
    pub s: usize,
    /// Timed steps of each loop.
    pub steps: usize,
    /// Seconds of the `step` loop.
    pub step_seconds: f64,
    /// Seconds of the `step` + `gather_obs` loop.
    pub step_obs_seconds: f64,
    /// Seconds of the `step` + `dyn_obs` loop.
    pub step_dyn_obs_seconds: f64,
    /// Seconds of the `step` + `gather_obs_f16` loop (`None`: the backend has no f16 output).
    pub step_obs_f16_seconds: Option<f64>,
}

impl EnvThroughput {
    /// Symbol-steps per second of `step`.
    pub fn step_sps(&self) -> f64 {
        (self.n * self.s * self.steps) as f64 / self.step_seconds.max(1e-12)
    }

    /// Symbol-steps per second of `step` + `gather_obs`.
    pub fn step_obs_sps(&self) -> f64 {
        (self.n * self.s * self.steps) as f64 / self.step_obs_seconds.max(1e-12)
    }

    /// Symbol-steps per second of `step` + `dyn_obs`.
    pub fn step_dyn_obs_sps(&self) -> f64 {
        (self.n * self.s * self.steps) as f64 / self.step_dyn_obs_seconds.max(1e-12)
    }

    /// Symbol-steps per second of `step` + `gather_obs_f16` (`None` without f16 output).
    pub fn step_obs_f16_sps(&self) -> Option<f64> {
        self.step_obs_f16_seconds
            .map(|dt| (self.n * self.s * self.steps) as f64 / dt.max(1e-12))
    }

    /// The report lines: step, step + dyn_obs, step + gather_obs (f32, and f16 when available).
    pub fn lines(&self) -> String {
        let line = |name: &str, dt: f64| {
            let sps = (self.n * self.s * self.steps) as f64 / dt.max(1e-12);
            format!(
                "{name:<24}{sps:>12.0} symbol-steps/s  ({} steps in {dt:.3} s, {:.3} ms/step)\n",
                self.steps,
                1e3 * dt / self.steps as f64
            )
        };
        let mut out = line("step:", self.step_seconds)
            + &line("step + dyn_obs:", self.step_dyn_obs_seconds)
            + &line("step + gather_obs:", self.step_obs_seconds);
        match self.step_obs_f16_seconds {
            Some(dt) => out += &line("step + gather_obs_f16:", dt),
            None => out += "step + gather_obs_f16:  not available on this backend\n",
        }
        out
    }
}

/// The symbol policy of a configuration and the three batches the benchmarks time: one scenario,
/// N scenarios at one bar (one encoder pass per symbol), N scenarios at N distinct bars (N encoder
/// passes, the worst case). Window gathering and the correlation graph are included, as in
/// training.
pub struct PolicyBench {
    policy: SymbolPolicy,
    /// `(name, observation)` of each case.
    pub cases: Vec<(&'static str, SymbolObs)>,
    /// Number of parameters.
    pub params: usize,
}

impl PolicyBench {
    /// The agent of `cfg` over its market (loaded), with `scenarios` scenarios in the batched
    /// cases.
    pub fn from_config(cfg: &Config, scenarios: usize) -> Result<Self> {
        Self::from_config_on(cfg, scenarios, &Device::Cpu)
    }

    /// [`PolicyBench::from_config`] with the symbol policy on `dev` (`--device`; the master's
    /// latency is measured on the CPU).
    pub fn from_config_on(cfg: &Config, scenarios: usize, dev: &Device) -> Result<Self> {
        let market = Market::load(&cfg.data)?;
        let dims = crate::run::agent_dims(&market);
        let (policy, vm) = crate::train::setup::build_policy(&cfg.agent, dims, &market, 0, dev)?;
        Self::with_policy(policy, &vm, market.data.bars, scenarios)
    }

    /// The agent of `acfg` over `symbols` symbols of random in-memory windows (no data needed).
    pub fn synthetic(acfg: &AgentConfig, symbols: usize, scenarios: usize) -> Result<Self> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let dims = AgentDims::trading(symbols);
        let agent = crate::agents::SymbolAgent::new(
            acfg,
            dims,
            crate::agents::init::seeded_var_builder(&vm, 0, DType::F32, &dev),
        )?;
        let bars = WARMUP + 2 * scenarios + 2;
        let src = Arc::new(DenseWindows::random(
            1,
            bars,
            symbols,
            dims.window.window,
            dims.window.features,
            1,
        ));
        let policy = SymbolPolicy::new(agent, src, &dev)?.with_untracked_inference(&vm)?;
        Self::with_policy(policy, &vm, bars, scenarios)
    }

    fn with_policy(
        policy: SymbolPolicy,
        vm: &candle_nn::VarMap,
        bars: usize,
        n: usize,
    ) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("scenarios must be >= 1"));
        }
        let lo = WARMUP.min(bars.saturating_sub(1));
        if bars < lo + n + 1 {
            return Err(Error::invalid(format!(
                "{bars} bars are too few for {n} distinct bars after the warm-up"
            )));
        }
        let params = vm
            .all_vars()
            .iter()
            .map(|v| v.as_tensor().elem_count())
            .sum();
        let s = policy.agent().dims().symbols;
        let dev = crate::agents::ActorCritic::device(&policy).clone();
        let mut rng = SplitMix64::new(5);
        let mut obs = |keys: Vec<(u32, u32)>| -> Result<SymbolObs> {
            let d: Vec<f32> = (0..keys.len() * s * DYN_OBS)
                .map(|_| rng.normal() as f32 * 0.1)
                .collect();
            let units = keys.len();
            Ok(SymbolObs {
                keys,
                dyn_obs: Tensor::from_vec(d, (units, s, DYN_OBS), &dev)?,
            })
        };
        let cases = vec![
            ("1 scenario", obs(vec![(0, lo as u32)])?),
            ("N scenarios, one bar", obs(vec![(0, lo as u32); n])?),
            (
                "N scenarios, N bars",
                obs((0..n).map(|i| (0, (lo + i) as u32)).collect())?,
            ),
        ];
        Ok(Self {
            policy,
            cases,
            params,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &SymbolPolicy {
        &self.policy
    }

    /// One forward pass of case `i` (logits and values reduced so nothing is optimised away).
    pub fn forward(&self, i: usize) -> Result<f32> {
        let (logits, value) = self.policy.forward(&self.cases[i].1)?;
        Ok(logits.sum_all()?.to_scalar::<f32>()? + value.sum_all()?.to_scalar::<f32>()?)
    }

    /// One acting pass of case `i`: the forward of a rollout step or of the policy server
    /// ([`ActorCritic::forward_inference`](crate::agents::ActorCritic::forward_inference): no
    /// autograd graph, on the untracked twin), with the embedding cache emptied first so that
    /// every key is encoded and its correlation graph built, as on a bar not seen before.
    pub fn act(&self, i: usize) -> Result<f32> {
        use crate::agents::ActorCritic;
        self.policy.clear_cache();
        let (logits, value) = self.policy.forward_inference(&self.cases[i].1)?;
        Ok(logits.sum_all()?.to_scalar::<f32>()? + value.sum_all()?.to_scalar::<f32>()?)
    }

    /// One forward and backward pass of case `i`: the gradient of `sum(logits) + sum(values)`
    /// with respect to every parameter (what a PPO update step does, without the optimiser).
    pub fn forward_backward(&self, i: usize) -> Result<f32> {
        let (logits, value) = self.policy.forward(&self.cases[i].1)?;
        let loss = (logits.sum_all()? + value.sum_all()?)?;
        let grads = loss.backward()?;
        std::hint::black_box(grads);
        Ok(loss.to_scalar::<f32>()?)
    }

    /// One warm-up and `reps` timed forward passes of every case (recording the autograd graph,
    /// as the update does), then the same for acting ([`PolicyBench::act`]) on one scenario and
    /// on N scenarios at N distinct bars, and for a forward and backward pass of the last case;
    /// with `only`, just the measurements whose name contains it (e.g. `"acting"`; none may).
    pub fn measure(&self, reps: usize, only: Option<&str>) -> Result<Vec<PolicyTiming>> {
        if reps == 0 {
            return Err(Error::invalid("reps must be >= 1"));
        }
        let s = self.policy.agent().dims().symbols;
        let last = self.cases.len() - 1;
        #[derive(Clone, Copy)]
        enum Pass {
            Forward,
            Act,
            Backward,
        }
        let runs: Vec<(&'static str, usize, Pass)> = (0..self.cases.len())
            .map(|i| (self.cases[i].0, i, Pass::Forward))
            .chain([
                ("1 scenario, acting", 0, Pass::Act),
                ("N bars, acting", last, Pass::Act),
                ("N bars, fwd + bwd", last, Pass::Backward),
            ])
            .filter(|(name, _, _)| only.is_none_or(|o| name.contains(o)))
            .collect();
        runs.into_iter()
            .map(|(name, i, pass)| {
                let run = |i| match pass {
                    Pass::Forward => self.forward(i),
                    Pass::Act => self.act(i),
                    Pass::Backward => self.forward_backward(i),
                };
                let (seconds, cpu_seconds) = time_reps(reps, || run(i))?;
                Ok(PolicyTiming {
                    name,
                    units: self.cases[i].1.keys.len(),
                    symbols: s,
                    seconds,
                    cpu_seconds,
                })
            })
            .collect()
    }
}

/// The portfolio master's forward latency (`marl-trade bench policy`): one [`MasterNet`] of the
/// given sizes (the design's by default), random observations of the master's length, timed for
/// one scenario (a decision's latency; design target < 50 ms, aim < 1 ms on CPU) and for a batch.
pub struct MasterBench {
    net: MasterNet,
    /// `(name, observation [B, MASTER_OBS])` of each case.
    pub cases: Vec<(&'static str, Tensor)>,
    /// Number of parameters.
    pub params: usize,
}

impl MasterBench {
    /// The master network of `cfg` (seed 0) with a 1-scenario and a `scenarios`-scenario case.
    pub fn new(cfg: &MasterNetConfig, scenarios: usize) -> Result<Self> {
        if scenarios == 0 {
            return Err(Error::invalid("scenarios must be >= 1"));
        }
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let net = MasterNet::build(MASTER_OBS, cfg, &vm, 0, &dev)?;
        let params = vm
            .all_vars()
            .iter()
            .map(|v| v.as_tensor().elem_count())
            .sum();
        let mut rng = SplitMix64::new(9);
        let mut obs = |b: usize| -> Result<Tensor> {
            let d: Vec<f32> = (0..b * MASTER_OBS)
                .map(|_| rng.normal() as f32 * 0.5)
                .collect();
            Ok(Tensor::from_vec(d, (b, MASTER_OBS), &dev)?)
        };
        let cases = vec![
            ("master, 1 scenario", obs(1)?),
            ("master, N scenarios", obs(scenarios)?),
        ];
        Ok(Self { net, cases, params })
    }

    /// One warm-up and `reps` timed forward passes (logits and value) of every case (with
    /// `only`, of those whose name contains it); the lines are [`PolicyTiming`]s with one
    /// "symbol" per scenario (the master is one agent).
    pub fn measure(&self, reps: usize, only: Option<&str>) -> Result<Vec<PolicyTiming>> {
        if reps == 0 {
            return Err(Error::invalid("reps must be >= 1"));
        }
        let run = |x: &Tensor| -> Result<f32> {
            let (l, v) = self.net.forward(x)?;
            Ok(l.sum_all()?.to_scalar::<f32>()? + v.sum_all()?.to_scalar::<f32>()?)
        };
        self.cases
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| name.contains(o)))
            .map(|(name, x)| {
                let (seconds, cpu_seconds) = time_reps(reps, || run(x))?;
                Ok(PolicyTiming {
                    name,
                    units: x.dims()[0],
                    symbols: 1,
                    seconds,
                    cpu_seconds,
                })
            })
            .collect()
    }
}

/// One warm-up call of `f`, then `reps` timed calls: wall seconds and process CPU seconds (when
/// the platform reports them) per call.
fn time_reps<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, Option<f64>)> {
    std::hint::black_box(f()?);
    let t = Instant::now();
    let cpu = process_cpu_seconds();
    for _ in 0..reps {
        std::hint::black_box(f()?);
    }
    let seconds = t.elapsed().as_secs_f64() / reps as f64;
    let cpu_seconds = match (cpu, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / reps as f64),
        _ => None,
    };
    Ok((seconds, cpu_seconds))
}

/// The time of one forward pass of one [`PolicyBench`] case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyTiming {
    /// The case.
    pub name: &'static str,
    /// Scenarios in the batch.
    pub units: usize,
    /// Symbols per scenario.
    pub symbols: usize,
    /// Seconds per forward pass (wall clock).
    pub seconds: f64,
    /// CPU seconds per forward pass, all threads of the process together (Linux only; includes
    /// the time candle's worker threads spin while waiting). On a machine shared with other jobs
    /// this is the steadier figure: wall time then depends on the competing load.
    pub cpu_seconds: Option<f64>,
}

/// CPU time used so far by all threads of this process, from `/proc/self/task/*/schedstat`
/// (nanoseconds on the CPU); `None` where that is not available.
pub fn process_cpu_seconds() -> Option<f64> {
    let mut ns = 0f64;
    for e in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(e) = e else { continue };
        // A thread may exit between the listing and the read: skip it.
        if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
            ns += s.split_whitespace().next()?.parse::<f64>().ok()?;
        }
    }
    Some(ns * 1e-9)
}

impl PolicyTiming {
    /// The report line.
    pub fn line(&self) -> String {
        let cpu = match self.cpu_seconds {
            Some(c) => format!(", CPU {:>9.2} ms", 1e3 * c),
            None => String::new(),
        };
        format!(
            "{:<22} ({:>4} x {}): {:>9.2} ms per forward, {:>8.3} ms per scenario, {:>11.0} symbol-forwards/s{cpu}",
            self.name,
            self.units,
            self.symbols,
            1e3 * self.seconds,
            1e3 * self.seconds / self.units as f64,
            (self.units * self.symbols) as f64 / self.seconds
        )
    }
}

/// End-to-end training throughput (`marl-trade bench train`): PPO iterations of a configuration
/// (rollout + update, exactly what `marl-trade train` runs, without a run directory), each timed
/// and split into env steps, policy passes of the rollout, encoder passes, and the update, with
/// the embedding cache's hit rate and the process's peak resident memory.
pub struct TrainBench {
    ppo: crate::run::Trainer,
    symbols: usize,
    /// Seconds spent loading the data and computing its features.
    pub prep_seconds: f64,
}

impl TrainBench {
    /// The training of `cfg` on its market (loaded), the env on `backend`, the policy on the CPU.
    pub fn from_config(cfg: &Config, backend: BackendKind) -> Result<Self> {
        Self::from_config_on(cfg, backend, &Device::Cpu)
    }

    /// [`TrainBench::from_config`] with the policy on `dev` (`--device`).
    pub fn from_config_on(cfg: &Config, backend: BackendKind, dev: &Device) -> Result<Self> {
        let t = Instant::now();
        let market = Market::load(&cfg.data)?;
        let prep_seconds = t.elapsed().as_secs_f64();
        let dims = crate::run::agent_dims(&market);
        let mut env = crate::train::setup::build_env(&cfg.env_setup(), &market, backend, dev)?;
        // With `joint.enabled` the master learns in the measured iterations too.
        crate::run::attach_joint_master(&mut env, cfg)?;
        let (policy, vm) =
            crate::train::setup::build_policy(&cfg.agent, dims, &market, cfg.ppo.seed, dev)?;
        let spec = serde_json::to_value(policy.agent().spec())
            .map_err(|e| Error::json("agent spec", e))?;
        let ppo = crate::train::Ppo::new(cfg.ppo.clone(), env, policy, vm, spec)?;
        Ok(Self {
            ppo,
            symbols: market.data.n_symbols(),
            prep_seconds,
        })
    }

    /// The trainer.
    pub fn trainer(&self) -> &crate::run::Trainer {
        &self.ppo
    }

    /// One iteration, timed.
    pub fn iterate(&mut self) -> Result<TrainTiming> {
        let step0 = self.ppo.global_step();
        let t = Instant::now();
        let m = self.ppo.iterate()?;
        let seconds = t.elapsed().as_secs_f64();
        let get = |map: &std::collections::BTreeMap<String, f64>, k: &str| {
            map.get(k).copied().unwrap_or(0.0)
        };
        Ok(TrainTiming {
            iteration: m.iteration,
            transitions: (self.ppo.global_step() - step0) * self.symbols as u64,
            seconds,
            env: get(&m.timing, "time.rollout_env"),
            rollout_policy: get(&m.timing, "time.rollout_policy"),
            update: get(&m.timing, "time.update"),
            encoder: get(&m.timing, "time.encoder"),
            backward_passes: get(&m.policy, crate::train::BACKWARD_PASSES_STAT) as u64,
            cache_hits: get(&m.policy, "cache.hits") as u64,
            cache_misses: get(&m.policy, "cache.misses") as u64,
            encoder_keys: get(&m.policy, "encoder.keys") as u64,
            cache_bytes: get(&m.policy, "cache.bytes") as u64,
            peak_rss: peak_rss_bytes(),
        })
    }
}

/// One [`TrainBench`] iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainTiming {
    /// 1-based iteration.
    pub iteration: usize,
    /// Symbol transitions (scenario-steps x symbols) of the rollout.
    pub transitions: u64,
    /// Wall-clock seconds of the iteration.
    pub seconds: f64,
    /// Seconds of the rollout's env steps.
    pub env: f64,
    /// Seconds of the rollout's policy passes and sampling (its encoder passes included).
    pub rollout_policy: f64,
    /// Seconds of the update (its encoder passes included).
    pub update: f64,
    /// Seconds of encoder passes, rollout and update.
    pub encoder: f64,
    /// Backward passes of the update (minibatches x epochs, more when the memory bound
    /// `ppo.update_chunk_windows` / `update_chunk_rows` cut minibatches into chunks).
    pub backward_passes: u64,
    /// Distinct `(path, bar)` keys of rollout steps found in the embedding cache ...
    pub cache_hits: u64,
    /// ... and not found (encoded).
    pub cache_misses: u64,
    /// Bars encoded in the iteration (rollout misses + the update's passes).
    pub encoder_keys: u64,
    /// The most bytes the embedding cache held during the iteration.
    pub cache_bytes: u64,
    /// Peak resident memory of the process so far (`VmHWM`), when the OS reports it.
    pub peak_rss: Option<u64>,
}

impl TrainTiming {
    /// Symbol transitions per second, rollout and update together.
    pub fn transitions_per_second(&self) -> f64 {
        self.transitions as f64 / self.seconds.max(1e-12)
    }

    /// The cache's hit rate over the rollout's key lookups.
    pub fn hit_rate(&self) -> f64 {
        let n = self.cache_hits + self.cache_misses;
        if n == 0 {
            0.0
        } else {
            self.cache_hits as f64 / n as f64
        }
    }

    /// The report line.
    pub fn line(&self) -> String {
        format!(
            "iter {:>3}: {:>10} symbol transitions in {:>8.2} s = {:>9.0} /s | env {:.2} s, rollout policy {:.2} s, \
             update {:.2} s ({} backward passes), encoder {:.2} s ({} bars) | cache hit rate {:.1}% ({} hits, {} misses, {:.1} MiB) | peak RSS {}",
            self.iteration,
            self.transitions,
            self.seconds,
            self.transitions_per_second(),
            self.env,
            self.rollout_policy,
            self.update,
            self.backward_passes,
            self.encoder,
            self.encoder_keys,
            100.0 * self.hit_rate(),
            self.cache_hits,
            self.cache_misses,
            self.cache_bytes as f64 / (1 << 20) as f64,
            self.peak_rss.map_or("n/a".into(), |b| format!(
                "{:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            )),
        )
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), in bytes; `None`
/// where the OS does not report it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Inference latency of the three supervised models (`marl-trade bench sl`): the forward pass
/// to class probabilities of one sample and of a batch, inputs (windows of the market's
/// technical features) built beforehand.
pub struct SlBench {
    models: Vec<crate::sl::SlModel>,
    one: (Tensor, Tensor),
    many: (Tensor, Tensor),
    /// Samples of the batched measurement.
    pub batch: usize,
    /// Seconds per sample to gather the inputs of the batch (window copy + extras).
    pub gather_per_sample: f64,
    /// Where the weights came from (a models directory, or seeded initial weights).
    pub origin: String,
}

/// One model's latency.
#[derive(Debug, Clone, PartialEq)]
pub struct SlTiming {
    /// The model.
    pub model: crate::sl::ModelKind,
    /// Hidden size.
    pub hidden: usize,
    /// Seconds of one forward pass of a single sample (median of the repetitions).
    pub per_sample: f64,
    /// Seconds per sample of one forward pass of the batch (median).
    pub batched_per_sample: f64,
    /// Samples in the batch.
    pub batch: usize,
}

impl SlTiming {
    /// One report line.
    pub fn line(&self) -> String {
        format!(
            "{:<4} (hidden {:>3}): one sample {:>8.1} us; batch of {}: {:>7.2} us/sample ({:.0} samples/s)",
            self.model.name(),
            self.hidden,
            self.per_sample * 1e6,
            self.batch,
            self.batched_per_sample * 1e6,
            1.0 / self.batched_per_sample
        )
    }
}

impl SlBench {
    /// The models of `models_dir` (or, without one, seeded models sized by `cfg.sl`) on inputs of
    /// `market` (bars after the warm-up, symbols and bars cycling), batches of `batch`.
    pub fn new(
        cfg: &Config,
        market: &Market,
        models_dir: Option<&std::path::Path>,
        batch: usize,
    ) -> Result<Self> {
        use crate::sl::{ModelKind, SlModel, SlModels, dataset};
        if batch == 0 {
            return Err(Error::invalid("the batch must hold >= 1 sample"));
        }
        let (models, origin) = match models_dir {
            Some(d) => (SlModels::load(d)?.models, d.display().to_string()),
            None => {
                let mut v = Vec::new();
                for k in ModelKind::ALL {
                    v.push(SlModel::seeded(k, &cfg.sl, &Device::Cpu)?.0);
                }
                (v, "seeded initial weights ([sl] sizes)".to_string())
            }
        };
        let md = &market.data;
        let (tn, sn) = (md.bars, md.n_symbols());
        if tn <= WARMUP || sn == 0 {
            return Err(Error::invalid("the market is too short for a window"));
        }
        let key = |i: usize| (i % md.paths, WARMUP + (i / sn) % (tn - WARMUP), i % sn);
        let t0 = Instant::now();
        let many = dataset::batch(market, (0..batch).map(key), &Device::Cpu)?;
        let gather_per_sample = t0.elapsed().as_secs_f64() / batch as f64;
        let one = dataset::batch(market, std::iter::once(key(0)), &Device::Cpu)?;
        Ok(Self {
            models,
            one,
            many,
            batch,
            gather_per_sample,
            origin,
        })
    }

    /// Median latencies over `reps` repetitions (after one warm-up) per model.
    pub fn measure(&self, reps: usize) -> Result<Vec<SlTiming>> {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let time = |m: &crate::sl::SlModel, x: &(Tensor, Tensor)| -> Result<f64> {
            let t0 = Instant::now();
            let p = m.probs(&x.0, &x.1)?;
            std::hint::black_box(p.to_vec2::<f32>()?);
            Ok(t0.elapsed().as_secs_f64())
        };
        let reps = reps.max(1);
        let mut out = Vec::new();
        for m in &self.models {
            time(m, &self.one)?;
            time(m, &self.many)?;
            let mut one = Vec::new();
            for _ in 0..reps * 10 {
                one.push(time(m, &self.one)?);
            }
            let mut many = Vec::new();
            for _ in 0..reps {
                many.push(time(m, &self.many)? / self.batch as f64);
            }
            out.push(SlTiming {
                model: m.kind(),
                hidden: m.hidden(),
                per_sample: median(one),
                batched_per_sample: median(many),
                batch: self.batch,
            });
        }
        Ok(out)
    }
}
