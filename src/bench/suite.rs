/*!
`marl-trade bench suite`: the environment's fixed benchmark matrix, N in {128, 1024, 4096} x S in
{143, 512}, without and with full observations, on the CPU backend and (with the `cuda` feature and
a GPU) the CUDA backend, written as one JSON report ([`SuiteReport`]), so the GPU/CPU ratio is one
command away and an `nsys` run (`scripts/nsys-bench.sh`) gets one capture range per CUDA case.

What each backend's case times:
- **cpu**: the host-driven `VecEnv` loop (`step` with pre-drawn uniform random actions, then
  `gather_obs` when with observations), host wall time, after one warm-up step. It runs at least
  [`SuiteOptions::min_steps`] steps and stops after [`SuiteOptions::max_steps`] or when
  [`SuiteOptions::cpu_seconds`] are spent, so the big cases fit a small machine. A case whose
  observation buffer would exceed [`SuiteOptions::max_obs_bytes`] is skipped with the reason.
- **cuda**: whole rollouts on the device (`CudaBackend::random_rollout`: the device sampler and
  the step, plus `gather_obs` into a device buffer with observations) of
  [`SuiteOptions::max_steps`] steps in each launch mode (`separate`, `fused`, `graph`), after an
  8-step warm-up; device time from CUDA events on the backend's stream, host time around the same
  window; each timed window is bracketed by `cuProfilerStart` / `cuProfilerStop`
  ([`SuiteCase::capture`] numbers them in order). Symbol-steps/s are by device time.

Throughput is in symbol-steps per second (N x S per step).
*/

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{Machine, market};
use crate::data::SyntheticConfig;
use crate::env::obs::OBS_DIM;
use crate::env::{BackendKind, EnvSetup, MASTER_ACTIONS, N_ACTIONS, Period, VecEnv};
use crate::error::{Error, Result};
use crate::features::Features;
use crate::rng::SplitMix64;

/// The scenario counts of the matrix.
pub const SUITE_N: [usize; 3] = [128, 1024, 4096];
/// The symbol counts of the matrix.
pub const SUITE_S: [usize; 2] = [143, 512];

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteOptions {
    /// Backends; `Cuda` without the feature or a GPU is recorded as skipped, not an error.
    pub backends: Vec<BackendKind>,
    /// Scenario counts (default [`SUITE_N`]).
    pub ns: Vec<usize>,
    /// Symbol counts (default [`SUITE_S`]).
    pub ss: Vec<usize>,
    /// Most timed steps per case (the CUDA rollouts run exactly this many).
    pub max_steps: usize,
    /// Fewest timed steps of a CPU case.
    pub min_steps: usize,
    /// Wall-time budget of one CPU case's timed loop (seconds); it stops after the step that
    /// crosses it (and after `min_steps`).
    pub cpu_seconds: f64,
    /// Largest host observation buffer a CPU case with observations may allocate (bytes).
    pub max_obs_bytes: usize,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            backends: vec![BackendKind::Cpu, BackendKind::Cuda],
            ns: SUITE_N.to_vec(),
            ss: SUITE_S.to_vec(),
            max_steps: 512,
            min_steps: 3,
            cpu_seconds: 2.0,
            max_obs_bytes: 2 << 30,
        }
    }
}

/// One measured case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteCase {
    /// `cpu` or `cuda`.
    pub backend: String,
    /// `host loop` (cpu), or the rollout's launch mode (`separate`, `fused`, `graph`).
    pub mode: String,
    /// Scenarios N.
    pub n: usize,
    /// Symbols S.
    pub s: usize,
    /// Whether full observations `[N, S, OBS_DIM]` were gathered after every step.
    pub obs: bool,
    /// Timed steps.
    pub steps: usize,
    /// Host wall time of the timed window (seconds).
    pub host_seconds: f64,
    /// Device time of the timed window from CUDA events (seconds; cuda only).
    pub device_seconds: Option<f64>,
    /// Graph capture + instantiation (seconds; `graph` mode only, not in the timed window).
    pub setup_seconds: Option<f64>,
    /// Symbol-steps per second: by device time on cuda, by host time on cpu.
    pub symbol_steps_per_s: f64,
    /// Symbol-steps per second by host time.
    pub symbol_steps_per_s_host: f64,
    /// Episodes that finished in the timed window (cuda: counted on the device).
    pub episodes_finished: Option<u64>,
    /// The index of this case's `cuProfilerStart/Stop` window (cuda only), i.e. of its nsys
    /// report with `--capture-range-end=repeat`.
    pub capture: Option<usize>,
}

/// A case or a whole backend that did not run, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteSkip {
    /// `cpu` or `cuda`.
    pub backend: String,
    /// The case (`N x S, obs`), or `all`.
    pub case: String,
    /// Why.
    pub reason: String,
}

/// The report `bench suite --json` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteReport {
    /// The host: logical CPUs and model.
    pub machine: String,
    /// Rayon worker threads of the CPU backend.
    pub cpu_threads: usize,
    /// The GPU and compute capability, when the CUDA backend ran.
    pub gpu: Option<String>,
    /// `OBS_DIM` (floats per full observation row).
    pub obs_dim: usize,
    /// Steps per episode of the environment (episodes auto-reset inside the timed loops).
    pub episode_len: usize,
    /// The measured cases, in order.
    pub cases: Vec<SuiteCase>,
    /// What did not run.
    pub skipped: Vec<SuiteSkip>,
}

impl SuiteCase {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        let dev = self
            .device_seconds
            .map(|d| format!(", device {:.3} ms/step", 1e3 * d / self.steps as f64))
            .unwrap_or_default();
        format!(
            "{:<5}{:<10}N = {:>4} S = {:>3} {:<8}{:>14.4e} symbol-steps/s  ({} steps, host {:.3} ms/step{dev})",
            self.backend,
            self.mode,
            self.n,
            self.s,
            if self.obs { "+obs" } else { "" },
            self.symbol_steps_per_s,
            self.steps,
            1e3 * self.host_seconds / self.steps as f64,
        )
    }
}

/// Run the matrix of `opts` on `setup`'s environment over `synth`'s market (its symbol count
/// replaced by each S), calling `progress` after every case and skip.
pub fn run_suite(
    setup: &EnvSetup,
    synth: &SyntheticConfig,
    opts: &SuiteOptions,
    mut progress: impl FnMut(Result<&SuiteCase, &SuiteSkip>),
) -> Result<SuiteReport> {
    if opts.ns.is_empty() || opts.ss.is_empty() || opts.ns.contains(&0) || opts.ss.contains(&0) {
        return Err(Error::invalid(
            "bench suite: the N and S lists must be non-empty and positive",
        ));
    }
    if opts.max_steps == 0 || opts.min_steps == 0 || opts.min_steps > opts.max_steps {
        return Err(Error::invalid(
            "bench suite: steps must satisfy 1 <= min_steps <= max_steps",
        ));
    }
    let mut report = SuiteReport {
        machine: Machine::here().to_string(),
        cpu_threads: rayon::current_num_threads(),
        gpu: None,
        obs_dim: OBS_DIM,
        episode_len: setup.env.episode_len,
        cases: Vec::new(),
        skipped: Vec::new(),
    };
    let mut captures = 0usize;
    for &s in &opts.ss {
        let (md, feats) = market(setup, synth, s);
        for &n in &opts.ns {
            let mut setup = setup.clone();
            setup.env.scenarios = n;
            for &kind in &opts.backends {
                let before = (report.cases.len(), report.skipped.len());
                match kind {
                    BackendKind::Cpu => {
                        cpu_cases(&setup, &md, &feats, opts, &mut report)?;
                    }
                    BackendKind::Cuda => {
                        cuda_cases(&setup, &md, &feats, opts, &mut report, &mut captures)?;
                    }
                }
                report.cases[before.0..]
                    .iter()
                    .for_each(|c| progress(Ok(c)));
                report.skipped[before.1..]
                    .iter()
                    .for_each(|c| progress(Err(c)));
            }
        }
    }
    Ok(report)
}

fn cpu_cases(
    setup: &EnvSetup,
    md: &Arc<crate::data::MarketData>,
    feats: &Arc<Features>,
    opts: &SuiteOptions,
    report: &mut SuiteReport,
) -> Result<()> {
    let (n, s) = (setup.env.scenarios, md.n_symbols());
    let mut env = VecEnv::new(
        setup,
        md.clone(),
        feats.clone(),
        Period::Train,
        BackendKind::Cpu,
    )?;
    env.reset(1)?;
    let mut rng = SplitMix64::new(12345);
    let batches: Vec<(Vec<u8>, Vec<u8>)> = (0..4)
        .map(|_| {
            (
                (0..n * s)
                    .map(|_| rng.below(N_ACTIONS as u64) as u8)
                    .collect(),
                (0..n)
                    .map(|_| rng.below(MASTER_ACTIONS as u64) as u8)
                    .collect(),
            )
        })
        .collect();
    for obs in [false, true] {
        let obs_bytes = n * s * OBS_DIM * 4;
        if obs && obs_bytes > opts.max_obs_bytes {
            report.skipped.push(SuiteSkip {
                backend: "cpu".into(),
                case: format!("N = {n} x S = {s}, obs"),
                reason: format!(
                    "the observation buffer would take {:.2} GiB, above the limit of {:.2} GiB \
                     (--max-obs-gib)",
                    obs_bytes as f64 / (1u64 << 30) as f64,
                    opts.max_obs_bytes as f64 / (1u64 << 30) as f64
                ),
            });
            continue;
        }
        let mut buf = if obs {
            vec![0f32; n * s * OBS_DIM]
        } else {
            Vec::new()
        };
        let mut one = |env: &mut VecEnv, i: usize| -> Result<()> {
            let (a, m) = &batches[i % batches.len()];
            env.step(a, m)?;
            if obs {
                env.gather_obs(&mut buf)?;
                std::hint::black_box(&buf);
            }
            Ok(())
        };
        one(&mut env, 0)?; // warm-up
        let t = Instant::now();
        let mut steps = 0;
        while steps < opts.max_steps
            && (steps < opts.min_steps || t.elapsed().as_secs_f64() < opts.cpu_seconds)
        {
            one(&mut env, steps + 1)?;
            steps += 1;
        }
        let host = t.elapsed().as_secs_f64();
        let sps = (n * s * steps) as f64 / host.max(1e-12);
        report.cases.push(SuiteCase {
            backend: "cpu".into(),
            mode: "host loop".into(),
            n,
            s,
            obs,
            steps,
            host_seconds: host,
            device_seconds: None,
            setup_seconds: None,
            symbol_steps_per_s: sps,
            symbol_steps_per_s_host: sps,
            episodes_finished: None,
            capture: None,
        });
    }
    Ok(())
}

#[cfg(not(cuda_env))]
fn cuda_cases(
    setup: &EnvSetup,
    md: &Arc<crate::data::MarketData>,
    _: &Arc<Features>,
    _: &SuiteOptions,
    report: &mut SuiteReport,
    _: &mut usize,
) -> Result<()> {
    if !report.skipped.iter().any(|k| k.backend == "cuda") {
        report.skipped.push(SuiteSkip {
            backend: "cuda".into(),
            case: "all".into(),
            reason: "built without the `cuda` feature".into(),
        });
    }
    let _ = (setup, md);
    Ok(())
}

#[cfg(cuda_env)]
fn cuda_cases(
    setup: &EnvSetup,
    md: &Arc<crate::data::MarketData>,
    feats: &Arc<Features>,
    opts: &SuiteOptions,
    report: &mut SuiteReport,
    captures: &mut usize,
) -> Result<()> {
    use crate::env::cuda::{CudaBackend, RolloutMode};
    use crate::env::{Backend, EnvLayout};
    use crate::error::ErrorKind;
    if report
        .skipped
        .iter()
        .any(|k| k.backend == "cuda" && k.case == "all")
    {
        return Ok(());
    }
    let (n, s) = (setup.env.scenarios, md.n_symbols());
    let layout = EnvLayout::new(setup, md, Period::Train)?;
    let mut gpu = match CudaBackend::new(layout, md.clone(), feats.clone()) {
        Ok(g) => g,
        Err(e) if e.kind() == ErrorKind::BackendUnavailable => {
            // no driver or GPU: nothing of the CUDA half can run
            let no_gpu = e.to_string().contains("no NVIDIA driver");
            report.skipped.push(SuiteSkip {
                backend: "cuda".into(),
                case: if no_gpu {
                    "all".into()
                } else {
                    format!("N = {n} x S = {s}")
                },
                reason: e.to_string(),
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    report.gpu = Some(gpu.device_description());
    for obs in [false, true] {
        for mode in [
            RolloutMode::Separate,
            RolloutMode::Fused,
            RolloutMode::Graph,
        ] {
            gpu.reset(1)?;
            gpu.random_rollout(8, 99, None, obs, mode, false)?; // warm-up
            gpu.reset(1)?;
            let t = gpu.random_rollout(opts.max_steps, 7, None, obs, mode, true)?;
            *captures += 1;
            let ss = (n * s * t.steps) as f64;
            let dev = t.device_ms as f64 / 1e3;
            let host = t.host_ms / 1e3;
            report.cases.push(SuiteCase {
                backend: "cuda".into(),
                mode: format!("{mode:?}").to_lowercase(),
                n,
                s,
                obs,
                steps: t.steps,
                host_seconds: host,
                device_seconds: Some(dev),
                setup_seconds: (mode == RolloutMode::Graph).then_some(t.setup_ms / 1e3),
                symbol_steps_per_s: ss / dev.max(1e-12),
                symbol_steps_per_s_host: ss / host.max(1e-12),
                episodes_finished: Some(t.episodes_finished),
                capture: Some(*captures),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_matrix_reports_every_case() {
        let mut setup = EnvSetup::default();
        setup.env.episode_len = 16;
        let synth = SyntheticConfig {
            bars: 300,
            ..SyntheticConfig::default()
        };
        let opts = SuiteOptions {
            backends: vec![BackendKind::Cpu, BackendKind::Cuda],
            ns: vec![2, 3],
            ss: vec![4],
            max_steps: 40,
            min_steps: 5,
            cpu_seconds: 0.0,
            // the obs case of N = 3 is above this limit and must be skipped with the reason
            max_obs_bytes: 2 * 4 * OBS_DIM * 4,
        };
        let mut seen = 0;
        let r = run_suite(&setup, &synth, &opts, |_| seen += 1).unwrap();
        let cpu: Vec<_> = r.cases.iter().filter(|c| c.backend == "cpu").collect();
        assert_eq!(cpu.len(), 3, "{r:#?}");
        for c in &cpu {
            // cpu_seconds 0: exactly min_steps
            assert_eq!(c.steps, 5);
            assert!(c.symbol_steps_per_s > 0.0 && c.host_seconds > 0.0);
            assert_eq!(c.device_seconds, None);
        }
        assert!(
            r.skipped
                .iter()
                .any(|k| k.backend == "cpu" && k.case == "N = 3 x S = 4, obs"),
            "{r:#?}"
        );
        // without a GPU the CUDA half is one skip with the reason (with one, its cases ran)
        let cuda_cases = r.cases.iter().filter(|c| c.backend == "cuda").count();
        let cuda_skips = r.skipped.iter().filter(|k| k.backend == "cuda").count();
        assert!(
            (cuda_cases == 12 && r.gpu.is_some()) || (cuda_cases == 0 && cuda_skips >= 1),
            "{r:#?}"
        );
        assert_eq!(seen, r.cases.len() + r.skipped.len());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["cases"][0]["backend"], "cpu");
        assert!(json["cases"][0]["symbol_steps_per_s"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn bad_options_are_refused() {
        let setup = EnvSetup::default();
        let synth = SyntheticConfig::default();
        for opts in [
            SuiteOptions {
                ns: vec![],
                ..SuiteOptions::default()
            },
            SuiteOptions {
                ss: vec![0],
                ..SuiteOptions::default()
            },
            SuiteOptions {
                min_steps: 10,
                max_steps: 5,
                ..SuiteOptions::default()
            },
        ] {
            let e = run_suite(&setup, &synth, &opts, |_| {}).unwrap_err();
            assert!(e.to_string().contains("bench suite"), "{e}");
        }
    }
}
