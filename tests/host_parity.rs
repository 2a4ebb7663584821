//! Host parity of the CUDA backend (runs everywhere, no GPU): the kernels' own code, compiled for the
//! host by build.rs (`kernels/host_shim.c` includes `kernels/abi.cuh`, `scenario.cuh`, `obs.cuh`,
//! `env_logic.cuh` with `HD` empty and one "thread" per block), is stepped side by side with the
//! Rust CPU backend (`src/env/cpu.rs`, the reference) over whole episodes from the same random
//! states with the same random actions.
//!
//! Parity runs the GPU's own per-block entry points: each shim export (`marl_host_env_step`, ...)
//! takes a pointer to the kernel's argument struct (`EnvStepArgs`, ..., kernels/abi.cuh) and calls
//! the very function the `__global__` kernel calls with `blockIdx.x` (`marl_env_step_block`, ...)
//! for every block (or row) of the launch. The structs are built here by the constructors the CUDA
//! backend launches with (`env::abi::EnvStepArgs::new`, ...), from the host addresses of this
//! file's buffers where the backend passes device addresses; `abi_layout_matches` compares the size
//! and offset of every field of every argument struct with the C compiler's. So an argument
//! assigned to the wrong field, or two fields swapped in one mirror, fails here without a GPU. The
//! step runs with its per-symbol carry in the block scratch (even cases) and in the global
//! `scratch` / `opener` buffers (odd cases), the GPU's two modes.
//!
//! Compared after reset and after every step, **exactly** (`==` on every f64 and f32, NaN equal to
//! NaN; only the sign of a zero may differ): the whole state (cash, equity, peak, gross, portfolio and
//! per-symbol DSR moments, quantities = fills, entry prices, peak prices, entry steps, step counters,
//! episode counters, directives, open counts, invalid-action and limited-order counters), the
//! rewards, each of the 7 components (the cost component is `-cost_s / C0`, so costs are compared
//! too), master rewards, turnover, terminated / truncated, the finished-episode records with their component
//! sums and sums of squares, full and dynamic observations, action masks and observation indices.
//!
//! The cases (tests/parity/mod.rs, `cases`) reach masking, the open-position limit with rotated
//! ranks, budget scaling (lambda < 1), borrow fees, the kill switch, truncation by length and at
//! the period's end, and same-step auto-reset; `parity_with_cpu_backend` asserts they did.
//!
//! The comparison can fail: `parity_detects_a_changed_formula` runs the same harness against a
//! second build of the shim in which one formula is perturbed by one part in 1e9
//! (`MARL_PARITY_MUTANT` in `marl_slippage`, kernels/env_logic.cuh) and requires a mismatch. By hand
//! (once, then reverted): changing `0.5 * a * db` to `0.5 * a * db * 1.0000001` in `marl_dsr` made
//! `parity_with_cpu_backend` fail at once with
//! `[leveraged] step 1: reward[0]: 4.8537174e-1 vs 4.853717e-1`; the mutant build fails with
//! `[leveraged] step 1: scenario 1 cash: -1.571100941568984e5 vs -1.5711009415693517e5`. A change on
//! the Rust side fails the same way: the comparison is symmetric.
//!
//! The ABI by hand (once, then reverted): declaring `entry` before `q` in the Rust `EnvStepArgs`
//! made `abi_layout_matches` fail with `EnvStepArgs.q: Rust 408, C 400` and
//! `parity_with_cpu_backend` with `[leveraged] step 1: reward[0]: 4.8537174e-1 vs 4.2305017e-1`;
//! swapping `open: b.close, close: b.open` in `EnvStepArgs::new` made `parity_with_cpu_backend`
//! fail with `[leveraged] step 1: reward[0]: 4.8537174e-1 vs 4.8651877e-1` (and
//! `sampler_respects_the_mask` with `sampled actions were counted invalid`).

//!
//! **Block-parallel code with real threads.** The serial shim never runs the block-parallel paths.
//! `block_emulation_matches_cpu_backend` runs reset and step in the threaded emulation
//! (`kernels/host_emu.c`, `kernels/block_emu.h`: every CUDA thread of a block an OS thread,
//! `__syncthreads` a barrier, warp shuffles exchanged between warp barriers, per-block shared
//! memory poisoned with NaN) with the backend's block size and carry mode for every S of
//! `parity::BLOCK_WIDTHS` (1 to 1100) against the CPU backend, exactly. `block_emulation_is_race_free_under_tsan`
//! builds `tests/emu/tsan_main.c` with `-fsanitize=thread` and requires no report, and a report
//! from the build without the barrier that opens `marl_fold_rows`. By hand (once, then reverted):
//! removing the barrier after `scratch[warp] = v` in `marl_block_sum_u32` made the emulation fail
//! with `S = 143, N = 8, 160 threads, carry in smem true: [block_width] step 1: scenario 0
//! open_count: 57 vs 17` (S <= 32, one warp, still passed) and ThreadSanitizer report a data race
//! between common.cuh:159 (the write) and :161 (warp 0's read) in `marl_step_orders`; removing the
//! barrier that closes `marl_fold_rows` made threads read a fold result before it was written, so
//! they disagreed on the kill switch and reached different barriers: the emulation aborted with
//! `block emulation: thread 5 waited 60 s at a __syncthreads barrier (27 of 32 arrived): the
//! threads reached different barriers (a barrier in divergent code)`.

mod parity;

use std::sync::Arc;

use marl_trade::data::MarketData;
use marl_trade::env::abi::{
    DEBUG_LEN, EnvBuffers, EnvDims, EnvResetArgs, EnvStepArgs, EpisodeRecordC, MaskArgs, ObsArgs,
    PolicySampleArgs, SampleArgs, abi_layout, kernel_constants, step_block_threads,
    step_carry_in_smem, step_smem_bytes,
};
use marl_trade::env::cpu::{CpuBackend, Isa};
use marl_trade::env::logic::{directive, mask_bits};
use marl_trade::env::{
    Backend, EnvLayout, EpisodeRecord, ScenarioState, Snapshot, StepOutputs, SymbolState, obs,
};
use marl_trade::features::Features;
use marl_trade::priors::{CHANNELS, PriorCache};
use marl_trade::reward::N_COMPONENTS;
use marl_trade::rng::{hash2, mix64};
use parity::{BLOCK_WIDTHS, Case, Coverage, cases, run_parity, width_case};

/// Indices into the step's debug scalars (`MARL_DBG_*`, kernels/scenario.cuh).
const DBG_LAMBDA: usize = 0;
const DBG_FEE: usize = 1;

unsafe extern "C" {
    fn marl_abi_layout(out: *mut u64, cap: u32) -> u32;
    fn marl_host_constants(out: *mut u64, cap: u32) -> u32;
    fn marl_host_hash2(key: u64, counter: u64) -> u64;
    fn marl_host_mix64(z: u64) -> u64;
    fn marl_host_step_smem_bytes(s: u32, threads: u32, carry: u32) -> u64;
    fn marl_host_env_reset(a: *const EnvResetArgs);
    fn marl_host_env_step(a: *const EnvStepArgs) -> i32;
    fn marl_host_gather_obs(a: *const ObsArgs);
    fn marl_host_dyn_obs(a: *const ObsArgs);
    fn marl_host_action_mask(a: *const MaskArgs);
    fn marl_host_sample_actions(a: *const SampleArgs);
    fn marl_host_sample_policy(a: *const PolicySampleArgs);
    fn marl_mutant_host_env_reset(a: *const EnvResetArgs);
    fn marl_mutant_host_env_step(a: *const EnvStepArgs) -> i32;
    fn marl_emu_env_reset(a: *const EnvResetArgs, threads: u32) -> i32;
    fn marl_emu_env_step(a: *const EnvStepArgs, threads: u32) -> i32;
}

/// The entry points of one build of the shim: each runs one kernel's per-block (or per-row) entry
/// point over the whole launch, from the kernel's own argument struct.
#[derive(Clone, Copy)]
struct Shim {
    reset: unsafe extern "C" fn(*const EnvResetArgs),
    step: unsafe extern "C" fn(*const EnvStepArgs) -> i32,
    gather_obs: unsafe extern "C" fn(*const ObsArgs),
    dyn_obs: unsafe extern "C" fn(*const ObsArgs),
    mask: unsafe extern "C" fn(*const MaskArgs),
}

const EXACT: Shim = Shim {
    reset: marl_host_env_reset,
    step: marl_host_env_step,
    gather_obs: marl_host_gather_obs,
    dyn_obs: marl_host_dyn_obs,
    mask: marl_host_action_mask,
};
const MUTANT: Shim = Shim {
    reset: marl_mutant_host_env_reset,
    step: marl_mutant_host_env_step,
    gather_obs: marl_host_gather_obs,
    dyn_obs: marl_host_dyn_obs,
    mask: marl_host_action_mask,
};

const RECORD_CAP: u32 = 4;

/// The CUDA backend's kernel code run on the host, as a [`Backend`]: every call builds the
/// kernel's argument struct with the CUDA backend's constructor (`env::abi`) from the host
/// addresses of these buffers, as the CUDA backend does from device addresses.
struct HostShimBackend {
    shim: Shim,
    layout: EnvLayout,
    dims: EnvDims,
    md: Arc<MarketData>,
    feats: Arc<Features>,
    /// The SL prior cache the observations read (`None`: the kernel writes zeros).
    priors: Option<Arc<PriorCache>>,
    seed: u64,
    scen: Vec<ScenarioState>,
    sym: SymbolState,
    comp_sum: Vec<f64>,
    comp_sumsq: Vec<f64>,
    comp_count: Vec<u64>,
    recs: Vec<EpisodeRecordC>,
    rec_count: Vec<u32>,
    out: StepOutputs,
    /// Whether the step keeps its per-symbol carry in the block scratch ("shared memory") or in
    /// `scratch` / `opener` (the GPU's two modes).
    carry_in_smem: bool,
    scratch: Vec<f64>,
    opener: Vec<u32>,
    /// `[N, DEBUG_LEN]` scalars of the last step.
    debug: Vec<f64>,
    /// 0: reset and step run serially (`marl_host_env_*`, one "thread" per block); else they run in
    /// the threaded block emulation (`marl_emu_env_*`, kernels/host_emu.c) with this many OS
    /// threads per block.
    threads: u32,
}

impl HostShimBackend {
    fn new(shim: Shim, layout: EnvLayout, md: Arc<MarketData>, feats: Arc<Features>) -> Self {
        let (n, s) = (layout.n_scenarios, layout.n_symbols);
        Self {
            shim,
            dims: EnvDims::new(&layout, RECORD_CAP),
            layout,
            md,
            feats,
            priors: None,
            seed: 0,
            scen: vec![ScenarioState::default(); n],
            sym: SymbolState {
                q: vec![0.0; n * s],
                entry: vec![0.0; n * s],
                peak_px: vec![0.0; n * s],
                dsr_a: vec![0.0; n * s],
                dsr_b: vec![0.0; n * s],
                entry_k: vec![0; n * s],
            },
            comp_sum: vec![0.0; n * N_COMPONENTS],
            comp_sumsq: vec![0.0; n * N_COMPONENTS],
            comp_count: vec![0; n],
            recs: vec![EpisodeRecordC::default(); n * RECORD_CAP as usize],
            rec_count: vec![0; n],
            out: StepOutputs::new(n, s),
            carry_in_smem: true,
            scratch: vec![0.0; 5 * n * s],
            opener: vec![0; n * s],
            debug: vec![0.0; n * DEBUG_LEN],
            threads: 0,
        }
    }

    /// Observations read `priors` (as `CpuBackend::with_priors`).
    fn with_priors(mut self, priors: Arc<PriorCache>) -> Self {
        self.priors = Some(priors);
        self
    }

    /// Run reset and step block-parallel, `threads` OS threads per block (kernels/host_emu.c).
    fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads as u32;
        self
    }

    /// Keep the step's carry in the global scratch buffers instead (the GPU's mode for large S).
    fn with_carry_in_global(mut self) -> Self {
        self.carry_in_smem = false;
        self
    }

    /// Host addresses of every buffer, as the CUDA backend's `EnvBuffers` holds device addresses.
    /// The step's actions are the caller's (0 here).
    fn buffers(&mut self) -> EnvBuffers {
        fn a<T>(v: &[T]) -> u64 {
            v.as_ptr() as u64
        }
        fn m<T>(v: &mut [T]) -> u64 {
            v.as_mut_ptr() as u64
        }
        let (md, f, sy, o) = (&self.md, &self.feats, &mut self.sym, &mut self.out);
        EnvBuffers {
            open: a(&md.open),
            close: a(&md.close),
            volume: a(&md.volume),
            sentiment: a(&md.sentiment),
            macro_series: a(&md.macro_series),
            regime: a(&f.regime),
            tech: a(&f.tech),
            sl: self.priors.as_ref().map_or(0, |c| a(&c.values)),
            scen: m(&mut self.scen),
            q: m(&mut sy.q),
            entry: m(&mut sy.entry),
            peak_px: m(&mut sy.peak_px),
            dsr_a: m(&mut sy.dsr_a),
            dsr_b: m(&mut sy.dsr_b),
            entry_k: m(&mut sy.entry_k),
            comp_sum: m(&mut self.comp_sum),
            comp_sumsq: m(&mut self.comp_sumsq),
            comp_count: m(&mut self.comp_count),
            actions: 0,
            master: 0,
            reward: m(&mut o.reward),
            comps: m(&mut o.components),
            master_reward: m(&mut o.master_reward),
            turnover: m(&mut o.turnover),
            terminated: m(&mut o.terminated),
            truncated: m(&mut o.truncated),
            recs: m(&mut self.recs),
            rec_count: m(&mut self.rec_count),
            scratch: m(&mut self.scratch),
            opener: m(&mut self.opener),
            debug: m(&mut self.debug),
        }
    }

    /// Run `gather_obs` (window) or `dyn_obs` into `out`.
    fn obs_into(&mut self, out: &mut [f32], window: bool) {
        let b = self.buffers();
        let args = ObsArgs::new(&self.layout.params, &self.dims, &b, out.as_mut_ptr() as u64);
        let run = if window {
            self.shim.gather_obs
        } else {
            self.shim.dyn_obs
        };
        // SAFETY: every address covers the array the kernel indexes ([P,T,S+1], [P,T,S], [P,T,2],
        // [P,T,4], [P,T,S,23], [N], [N*S]) and out holds N*S*(OBS_DIM or DYN_OBS) floats (checked by
        // the callers through the Backend contract).
        unsafe { run(&args) }
    }
}

impl Backend for HostShimBackend {
    fn name(&self) -> &'static str {
        "host-shim"
    }
    fn layout(&self) -> &EnvLayout {
        &self.layout
    }
    fn reset(&mut self, seed: u64) -> marl_trade::Result<()> {
        self.seed = seed;
        let b = self.buffers();
        let args = EnvResetArgs::new(&self.layout.params, &self.dims, seed, &b);
        if self.threads > 0 {
            // SAFETY: as below; the emulation only adds threads that run the same entry point.
            let rc = unsafe { marl_emu_env_reset(&args, self.threads) };
            assert_eq!(rc, 0, "block emulation of env_reset failed");
            return Ok(());
        }
        // SAFETY: buffers sized [N], [N*S], [N*7], [N] as the kernel expects.
        unsafe { (self.shim.reset)(&args) };
        Ok(())
    }
    fn step(&mut self, acts: &[u8], master: &[u8]) -> marl_trade::Result<()> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        assert_eq!((acts.len(), master.len()), (n * s, n));
        let mut b = self.buffers();
        b.actions = acts.as_ptr() as u64;
        b.master = master.as_ptr() as u64;
        let args = EnvStepArgs::new(
            &self.layout.params,
            &self.dims,
            self.seed,
            &b,
            self.carry_in_smem,
        );
        // SAFETY: as in reset, plus market data [P,T,S+1], actions [N*S], master [N], outputs [N*S],
        // [N*S*7], [N], records [N*RECORD_CAP] (dims.record_cap), scratch [5*N*S], opener [N*S] and
        // debug [N*DEBUG_LEN]; the actions outlive the call. The threaded emulation gives each block
        // its own scratch of step_smem_bytes(S, threads, carry) bytes.
        let rc = if self.threads > 0 {
            unsafe { marl_emu_env_step(&args, self.threads) }
        } else {
            unsafe { (self.shim.step)(&args) }
        };
        assert_eq!(rc, 0, "host shim could not allocate scratch");
        Ok(())
    }
    fn read_outputs(&mut self, out: &mut StepOutputs) -> marl_trade::Result<()> {
        out.clone_from(&self.out);
        Ok(())
    }
    fn dyn_obs(&mut self, out: &mut [f32]) -> marl_trade::Result<()> {
        assert_eq!(
            out.len(),
            self.layout.n_scenarios * self.layout.n_symbols * obs::DYN_OBS
        );
        self.obs_into(out, false);
        Ok(())
    }
    fn gather_obs(&mut self, out: &mut [f32]) -> marl_trade::Result<()> {
        assert_eq!(
            out.len(),
            self.layout.n_scenarios * self.layout.n_symbols * obs::OBS_DIM
        );
        self.obs_into(out, true);
        Ok(())
    }
    fn action_mask(&mut self, out: &mut [u8]) -> marl_trade::Result<()> {
        assert_eq!(
            out.len(),
            self.layout.n_scenarios * self.layout.n_symbols * 7
        );
        let b = self.buffers();
        let args = MaskArgs::new(&self.layout.params, &self.dims, &b, out.as_mut_ptr() as u64);
        // SAFETY: as in obs_into; out holds N*S*7 bytes.
        unsafe { (self.shim.mask)(&args) };
        Ok(())
    }
    fn obs_index(&mut self, out: &mut [u32]) -> marl_trade::Result<()> {
        for (o, st) in out.chunks_exact_mut(2).zip(&self.scen) {
            o[0] = st.path;
            o[1] = st.t0 + st.k;
        }
        Ok(())
    }
    fn snapshot(&self) -> marl_trade::Result<Snapshot> {
        Ok(Snapshot {
            seed: self.seed,
            scenarios: self.scen.clone(),
            symbols: self.sym.clone(),
        })
    }
    fn load_snapshot(&mut self, snap: &Snapshot) -> marl_trade::Result<()> {
        self.seed = snap.seed;
        self.scen.clone_from(&snap.scenarios);
        self.sym.clone_from(&snap.symbols);
        self.comp_sum.fill(0.0);
        self.comp_sumsq.fill(0.0);
        self.comp_count.fill(0);
        Ok(())
    }
    fn drain_episodes(&mut self) -> marl_trade::Result<Vec<EpisodeRecord>> {
        let cap = RECORD_CAP as usize;
        let mut v = Vec::new();
        for (n, c) in self.rec_count.iter_mut().enumerate() {
            assert!(*c as usize <= cap, "record slots overflowed");
            v.extend(
                self.recs[n * cap..n * cap + *c as usize]
                    .iter()
                    .map(EpisodeRecord::from),
            );
            *c = 0;
        }
        Ok(v)
    }
}

#[test]
fn abi_layout_matches() {
    let rust = abi_layout();
    let mut c = vec![0u64; 256];
    // SAFETY: the shim writes at most `cap` values.
    let len = unsafe { marl_abi_layout(c.as_mut_ptr(), c.len() as u32) } as usize;
    assert_eq!(
        len,
        rust.len(),
        "the C and Rust layout lists differ in length"
    );
    for ((name, r), c) in rust.iter().zip(&c) {
        assert_eq!(*r as u64, *c, "{name}: Rust {r}, C {c}");
    }
    let consts = kernel_constants();
    // SAFETY: as above.
    let len = unsafe { marl_host_constants(c.as_mut_ptr(), c.len() as u32) } as usize;
    assert_eq!(len, consts.len());
    for ((name, r), c) in consts.iter().zip(&c) {
        assert_eq!(*r as u64, *c, "constant {name}: Rust {r}, kernels {c}");
    }
    for (s, threads) in [(1usize, 32usize), (7, 32), (143, 160), (1000, 1024)] {
        for carry in [false, true] {
            // SAFETY: a pure function of integers.
            let c = unsafe { marl_host_step_smem_bytes(s as u32, threads as u32, carry as u32) };
            assert_eq!(
                step_smem_bytes(s, threads, carry) as u64,
                c,
                "step_smem_bytes({s}, {threads}, {carry})"
            );
        }
    }
}

/// The step's launch geometry and the load-time check of what a GPU can launch (no GPU needed:
/// the check is a function of the figures the driver reports).
#[test]
fn launch_geometry_and_limits() {
    use marl_trade::ErrorKind;
    use marl_trade::env::abi::{KernelResources, MAX_BLOCK, check_launch, fold_stride};
    for (s, t) in [
        (1, 32),
        (31, 32),
        (32, 32),
        (33, 64),
        (143, 160),
        (256, 256),
        (300, 256),
    ] {
        assert_eq!(step_block_threads(s), t, "S = {s}");
    }
    assert_eq!(step_block_threads(1100), MAX_BLOCK);
    assert_eq!((fold_stride(143), fold_stride(256)), (143, 257));
    // the carry moves to global memory once the block scratch outgrows 48 KiB
    assert!(step_carry_in_smem(256, 256) && !step_carry_in_smem(300, 256));
    // H100 / H200: 227 KiB of opt-in shared memory per block; env_step at 128 registers
    let h100 = 232_448;
    let step = KernelResources {
        max_threads_per_block: 512,
        registers: 128,
        local_bytes: 0,
        static_smem_bytes: 0,
    };
    let fits = |s: usize| {
        let b = step_block_threads(s);
        let smem = step_smem_bytes(s, b, step_carry_in_smem(s, b));
        check_launch("env_step", "test", b, smem, &step, h100)
    };
    for s in [1, 143, 1100, 1800] {
        fits(s).unwrap_or_else(|e| panic!("S = {s}: {e}"));
    }
    let e = fits(2000).expect_err("S = 2000 needs more shared memory than an H100 block has");
    assert_eq!(e.kind(), ErrorKind::BackendUnavailable);
    assert!(e.to_string().contains("bytes of shared memory"), "{e}");
    let small = KernelResources {
        max_threads_per_block: 128,
        ..step
    };
    let e = check_launch("env_step", "test", 256, 0, &small, h100).expect_err("256 > 128");
    assert!(e.to_string().contains("256 threads per block"), "{e}");
}

#[test]
fn hash2_and_mix64_match_rng() {
    let mut r = marl_trade::rng::SplitMix64::new(99);
    for i in 0..10_000u64 {
        let (k, c) = (r.next_u64(), if i % 2 == 0 { i } else { r.next_u64() });
        // SAFETY: pure functions of integers.
        unsafe {
            assert_eq!(marl_host_hash2(k, c), hash2(k, c));
            assert_eq!(marl_host_mix64(k), mix64(k));
        }
    }
}

/// `sample_policy` (kernels/policy.cuh) draws what the trainer draws on the host: per row,
/// `agents::dist::sample_row` with the next uniform of `train::ResumableRng` continued from the same
/// position, for rows of random log-probabilities with random masks (`-inf`), rows with one legal
/// action, near-uniform rows and rows whose probability sits on one action; the drawn actions'
/// log-probabilities and the optional u8 copy for the env step agree too.
#[test]
fn policy_draws_match_the_trainers_host_draws() {
    use marl_trade::agents::dist::sample_row;
    use marl_trade::train::train_env::{ResumableRng, RngState};
    const NA: usize = 7;
    let mut r = marl_trade::rng::SplitMix64::new(2024);
    let mut drawn = [0u64; NA];
    for case in 0..40u64 {
        let rows = 1 + r.below(700) as usize;
        let mut lp = vec![0f32; rows * NA];
        for row in lp.chunks_exact_mut(NA) {
            let kind = r.below(4);
            let logits: Vec<f64> = (0..NA)
                .map(|a| match kind {
                    0 => r.normal() * 3.0,
                    1 => r.normal() * 1e-3,
                    2 if a == 3 => 30.0,
                    _ => r.normal(),
                })
                .collect();
            let legal: Vec<bool> = (0..NA)
                .map(|a| a == 0 || kind == 3 || r.chance(0.6))
                .collect();
            let m = (0..NA)
                .filter(|&a| legal[a])
                .map(|a| logits[a])
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = (0..NA)
                .filter(|&a| legal[a])
                .map(|a| (logits[a] - m).exp())
                .sum();
            for a in 0..NA {
                row[a] = if legal[a] {
                    (logits[a] - m - z.ln()) as f32
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        let (seed, draws) = (r.next_u64(), r.below(1 << 40));
        let mut host = ResumableRng::from_state(RngState { seed, draws });
        let want: Vec<u32> = lp
            .chunks_exact(NA)
            .map(|row| sample_row(row, host.uniform()))
            .collect();
        let (mut actions, mut logp, mut env_actions) =
            (vec![u32::MAX; rows], vec![0f32; rows], vec![255u8; rows]);
        let with_env = case % 2 == 0;
        let args = PolicySampleArgs {
            log_probs: lp.as_ptr() as u64,
            actions: actions.as_mut_ptr() as u64,
            logp: logp.as_mut_ptr() as u64,
            env_actions: if with_env {
                env_actions.as_mut_ptr() as u64
            } else {
                0
            },
            seed,
            draws,
            rows: rows as u32,
            na: NA as u32,
        };
        // SAFETY: log_probs holds rows x 7 floats, actions / logp / env_actions hold `rows` values
        // each (or env_actions is 0), as the kernel indexes.
        unsafe { marl_host_sample_policy(&args) };
        assert_eq!(actions, want, "case {case}: draws");
        for (i, &a) in actions.iter().enumerate() {
            assert!(
                lp[i * NA + a as usize].is_finite(),
                "case {case}: a masked action drawn"
            );
            assert_eq!(logp[i].to_bits(), lp[i * NA + a as usize].to_bits());
            drawn[a as usize] += 1;
        }
        let env_want: Vec<u8> = if with_env {
            want.iter().map(|&a| a as u8).collect()
        } else {
            vec![255; rows]
        };
        assert_eq!(env_actions, env_want, "case {case}: env actions");
    }
    assert!(
        drawn.iter().all(|&c| c > 0),
        "every action drawn somewhere: {drawn:?}"
    );
}

/// The SL slice reads the cache at the observation's own (path, bar, symbol) on both sides.
#[test]
fn sl_slice_reads_the_prior_cache() {
    let case = cases().into_iter().next().expect("a case");
    let c = Arc::new(parity::random_priors(&case.md, 9));
    let mut cpu = CpuBackend::new(case.layout, case.md.clone(), case.feats.clone())
        .with_priors(Some(c.clone()))
        .unwrap();
    let mut host = HostShimBackend::new(EXACT, case.layout, case.md.clone(), case.feats.clone())
        .with_priors(c.clone());
    cpu.reset(3).unwrap();
    host.reset(3).unwrap();
    let (n, s) = (case.layout.n_scenarios, case.layout.n_symbols);
    let snap = cpu.snapshot().unwrap();
    for b in [&mut cpu as &mut dyn Backend, &mut host] {
        let mut d = vec![0f32; n * s * obs::DYN_OBS];
        b.dyn_obs(&mut d).unwrap();
        for i in 0..n {
            let st = &snap.scenarios[i];
            let (p, t) = (st.path as usize, (st.t0 + st.k) as usize);
            for j in 0..s {
                let row = &d[(i * s + j) * obs::DYN_OBS..][..obs::DYN_OBS];
                let k = c.index(p, t, j);
                assert_eq!(
                    &row[obs::SL_PROBS],
                    &c.values[k..k + CHANNELS],
                    "{}",
                    b.name()
                );
            }
        }
    }
}

/// The acceptance test: every case, every step, exact equality; the CPU backend with each
/// instruction set this machine runs ([`Isa::available`]).
#[test]
fn parity_with_cpu_backend() {
    let mut total = Coverage::default();
    let (mut lambda_lt_1, mut fees) = (0usize, 0usize);
    let runs = Isa::available().into_iter().flat_map(|isa| {
        cases()
            .into_iter()
            .enumerate()
            .map(move |(i, c)| (i, isa, c))
    });
    for (i, isa, case) in runs {
        let cpu = CpuBackend::new(case.layout, case.md.clone(), case.feats.clone())
            .with_isa(isa)
            .unwrap();
        let host = HostShimBackend::new(EXACT, case.layout, case.md.clone(), case.feats.clone());
        // both places of the step's per-symbol carry: block scratch and global buffers
        let host = if i % 2 == 1 {
            host.with_carry_in_global()
        } else {
            host
        };
        // every other case with an SL prior cache (the observation's SL slice), the rest without
        let (mut cpu, mut host) = if i % 2 == 0 {
            let c = Arc::new(parity::random_priors(&case.md, i as u64));
            (
                cpu.with_priors(Some(c.clone())).unwrap(),
                host.with_priors(c),
            )
        } else {
            (cpu, host)
        };
        let cov = run_parity(&mut cpu, &mut host, &case.md, &case.plan, |_, h| {
            for d in h.debug.chunks_exact(DEBUG_LEN) {
                lambda_lt_1 += (d[DBG_LAMBDA] < 1.0) as usize;
                fees += (d[DBG_FEE] > 0.0) as usize;
            }
        })
        .unwrap_or_else(|e| panic!("host shim differs from the CPU backend ({isa}): {e}"));
        eprintln!("{} ({isa}): {cov:?}", case.plan.name);
        total.merge(&cov);
    }
    eprintln!("total: {total:?}; budget scaled (lambda < 1): {lambda_lt_1}; borrow fees: {fees}");
    assert!(total.killed > 0, "no kill switch reached: {total:?}");
    assert!(
        total.truncated_by_length > 0 && total.truncated_by_period_end > 0,
        "{total:?}"
    );
    assert!(
        total.invalid_actions > 0 && total.limited_orders > 0,
        "{total:?}"
    );
    assert!(lambda_lt_1 > 0, "budget scaling never reached");
    assert!(fees > 0, "borrow fee never charged");
}

/// The harness is not vacuous: a shim with one formula off by 1e-9 relative must be caught.
#[test]
fn parity_detects_a_changed_formula() {
    let case = cases().into_iter().next().expect("a case");
    let mut cpu = CpuBackend::new(case.layout, case.md.clone(), case.feats.clone());
    let mut mutant = HostShimBackend::new(MUTANT, case.layout, case.md.clone(), case.feats.clone());
    let err = run_parity(&mut cpu, &mut mutant, &case.md, &case.plan, |_, _| {})
        .expect_err("a perturbed slippage formula went unnoticed");
    eprintln!("mutant caught as expected: {err}");
}

/// The device-side sampler (kernels/sampler.cu, run here through the shim) only draws actions the
/// mask allows under the drawn master action, uses every allowed action, and is deterministic.
#[test]
fn sampler_respects_the_mask() {
    let case = cases().into_iter().next().expect("a case");
    let l = case.layout;
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let dims = EnvDims::new(&l, RECORD_CAP);
    let mut host = HostShimBackend::new(EXACT, l, case.md.clone(), case.feats.clone());
    host.reset(5).unwrap();
    let mut r = marl_trade::rng::SplitMix64::new(3);
    let snap = parity::random_snapshot(&host.snapshot().unwrap(), &l, &case.md, &mut r);
    host.load_snapshot(&snap).unwrap();
    let mut seen = [0usize; 7];
    let mut invalid_before = 0u64;
    for it in 0..200u64 {
        let (mut acts, mut master) = (vec![0u8; n * s], vec![0u8; n]);
        let sample = |acts: &mut Vec<u8>, master: &mut Vec<u8>, h: &mut HostShimBackend| {
            let mut b = h.buffers();
            b.actions = acts.as_mut_ptr() as u64;
            b.master = master.as_mut_ptr() as u64;
            let args = SampleArgs::new(&l.params, &dims, &b, 77, it, u32::MAX);
            // SAFETY: buffers of N*S and N; state arrays as in the backend.
            unsafe { marl_host_sample_actions(&args) }
        };
        sample(&mut acts, &mut master, &mut host);
        let (mut acts2, mut master2) = (vec![0u8; n * s], vec![0u8; n]);
        sample(&mut acts2, &mut master2, &mut host);
        assert_eq!(
            (&acts, &master),
            (&acts2, &master2),
            "sampler is not deterministic"
        );
        for i in 0..n {
            let st = &host.scen[i];
            let d = directive(&l.params, master[i]);
            let t = (st.t0 + st.k) as usize;
            for j in 0..s {
                let c = case.md.close[case.md.px(st.path as usize, t, j)] as f64;
                let q0 = host.sym.q[i * s + j];
                let bits = mask_bits(
                    q0,
                    q0 * c,
                    st.equity,
                    c,
                    host.sym.entry[i * s + j],
                    st.open_count,
                    &d,
                );
                let a = acts[i * s + j];
                assert!(
                    bits & (1 << a) != 0,
                    "sampled a masked action {a} (mask {bits:#09b})"
                );
                seen[a as usize] += 1;
            }
        }
        invalid_before += host
            .scen
            .iter()
            .map(|x| x.invalid_actions as u64)
            .sum::<u64>();
        host.step(&acts, &master).unwrap();
        let after: u64 = host.scen.iter().map(|x| x.invalid_actions as u64).sum();
        // auto-reset zeroes the counter; otherwise it must not grow
        assert!(
            after <= invalid_before,
            "sampled actions were counted invalid"
        );
        invalid_before = 0;
        host.drain_episodes().unwrap();
    }
    assert!(
        seen.iter().all(|&c| c > 0),
        "some action never sampled: {seen:?}"
    );
}

/// The block-parallel code executed without a GPU: reset and step run in the threaded emulation
/// (kernels/host_emu.c: every CUDA thread an OS thread, `__syncthreads` a barrier, warp shuffles
/// emulated) with the block size the CUDA backend launches (`step_block_threads`) and its choice of
/// where the carry lives (`step_carry_in_smem`), against the CPU backend, exactly, for every width
/// of `BLOCK_WIDTHS` over whole episodes. S = 143 also runs with the other carry mode.
#[test]
fn block_emulation_matches_cpu_backend() {
    let mut total = Coverage::default();
    let mut runs: Vec<(usize, usize, usize, bool)> = BLOCK_WIDTHS
        .iter()
        .map(|&(s, n, ep)| (s, n, ep, step_carry_in_smem(s, step_block_threads(s))))
        .collect();
    runs.push((
        143,
        8,
        10,
        !step_carry_in_smem(143, step_block_threads(143)),
    ));
    for (i, (s, n, ep, carry)) in runs.into_iter().enumerate() {
        let t0 = std::time::Instant::now();
        let case = width_case(s, n, ep, 100 + i as u64);
        let threads = step_block_threads(s);
        let mut cpu = CpuBackend::new(case.layout, case.md.clone(), case.feats.clone());
        let mut host =
            HostShimBackend::new(EXACT, case.layout, case.md.clone(), case.feats.clone())
                .with_threads(threads);
        host.carry_in_smem = carry;
        let cov =
            run_parity(&mut cpu, &mut host, &case.md, &case.plan, |_, _| {}).unwrap_or_else(|e| {
                panic!("S = {s}, N = {n}, {threads} threads, carry in smem {carry}: {e}")
            });
        eprintln!(
            "S = {s}, N = {n}, {threads} threads/block, carry in smem {carry}: {cov:?} ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        assert!(
            cov.episodes >= n,
            "S = {s}: fewer episodes than scenarios: {cov:?}"
        );
        total.merge(&cov);
    }
    eprintln!("total: {total:?}");
    assert!(total.killed > 0, "no kill switch reached: {total:?}");
    assert!(
        total.invalid_actions > 0 && total.limited_orders > 0,
        "{total:?}"
    );
}

/// The ThreadSanitizer cases: (S, N, episode length): more symbols than threads with the carry in
/// global memory (256 threads), and two warps with the carry in shared memory.
const TSAN_WIDTHS: [(usize, usize, usize); 2] = [(300, 2, 8), (40, 3, 10)];

/// Write the case file of tests/emu/tsan_main.c for `case`, stepped `steps` times.
fn write_tsan_case(path: &std::path::Path, case: &Case, steps: usize, threads: usize, carry: bool) {
    let l = &case.layout;
    let dims = EnvDims::new(l, RECORD_CAP);
    let mut b: Vec<u8> = Vec::new();
    let u = |b: &mut Vec<u8>, x: u64| b.extend_from_slice(&x.to_ne_bytes());
    u(&mut b, 0x3155_4D45_4C52_414D); // "MARLEMU1"
    u(&mut b, std::mem::size_of_val(&l.params) as u64);
    u(&mut b, std::mem::size_of::<EnvDims>() as u64);
    b.extend_from_slice(bytemuck::bytes_of(&l.params));
    b.extend_from_slice(bytemuck::bytes_of(&dims));
    for x in [case.plan.seed, steps as u64, threads as u64, carry as u64] {
        u(&mut b, x);
    }
    u(&mut b, case.md.close.len() as u64);
    for a in [&case.md.open, &case.md.close, &case.md.volume] {
        b.extend_from_slice(bytemuck::cast_slice(a));
    }
    std::fs::write(path, b).expect("write the case file");
}

/// Compile tests/emu/tsan_main.c (with kernels/host_emu.c) with ThreadSanitizer into `out`.
fn build_tsan_harness(out: &std::path::Path, defines: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = std::process::Command::new(&cc);
    cmd.args([
        "-std=c11",
        "-O1",
        "-g",
        "-fsanitize=thread",
        "-ffp-contract=off",
        "-pthread",
    ])
    .arg(format!("-I{root}/kernels"))
    .args(defines.iter().map(|d| format!("-D{d}")))
    .arg(format!("{root}/tests/emu/tsan_main.c"))
    .args(["-lm", "-o"])
    .arg(out);
    let o = cmd.output().unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        o.status.success(),
        "{cc} -fsanitize=thread failed (this test needs a C compiler with ThreadSanitizer, e.g. gcc \
         with libtsan):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Run the harness on every TSAN_WIDTHS case: (exit status, stdout, stderr) per case.
fn run_tsan_cases(exe: &std::path::Path, dir: &std::path::Path) -> Vec<(i32, String, String)> {
    TSAN_WIDTHS
        .iter()
        .enumerate()
        .map(|(i, &(s, n, ep))| {
            let case = width_case(s, n, ep, 200 + i as u64);
            let threads = step_block_threads(s);
            let file = dir.join(format!("case{i}.bin"));
            write_tsan_case(
                &file,
                &case,
                2 * ep + 1,
                threads,
                step_carry_in_smem(s, threads),
            );
            let o = std::process::Command::new(exe)
                .arg(&file)
                .env(
                    "TSAN_OPTIONS",
                    "halt_on_error=1 exitcode=66 report_signal_unsafe=0",
                )
                .output()
                .expect("run the harness");
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

/// The threaded block emulation under ThreadSanitizer: every barrier the kernels need is there
/// (no data race between the threads of a block over whole episodes, S = 300 with 256 threads and
/// S = 40 with 64), and the check is not vacuous: the same harness built without the barrier that
/// opens `marl_fold_rows` (`MARL_MUTANT_NO_FOLD_SYNC`) must be reported as a race.
#[test]
fn block_emulation_is_race_free_under_tsan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exact = dir.path().join("tsan_exact");
    build_tsan_harness(&exact, &[]);
    let mutant = dir.path().join("tsan_mutant");
    build_tsan_harness(&mutant, &["MARL_MUTANT_NO_FOLD_SYNC"]);
    for (i, (code, out, err)) in run_tsan_cases(&exact, dir.path()).into_iter().enumerate() {
        assert!(
            code == 0 && !err.contains("ThreadSanitizer"),
            "TSAN case {i} {:?}: exit {code}\n{out}\n{err}",
            TSAN_WIDTHS[i]
        );
        eprintln!("TSAN case {:?}: clean, {}", TSAN_WIDTHS[i], out.trim());
        assert!(
            out.contains("episodes=") && !out.contains("episodes=0 "),
            "{out}"
        );
    }
    for (i, (code, _, err)) in run_tsan_cases(&mutant, dir.path()).into_iter().enumerate() {
        assert!(
            code == 66 && err.contains("WARNING: ThreadSanitizer: data race"),
            "the race detector missed a removed __syncthreads in case {:?}: exit {code}\n{err}",
            TSAN_WIDTHS[i]
        );
        let first = err
            .lines()
            .filter(|l| l.contains("WARNING") || l.contains(" #0 ") || l.contains(" #1 "))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("mutant case {:?} caught:\n{first}", TSAN_WIDTHS[i]);
    }
}

/// A longer sweep: every case with 20 more seeds (run by hand:
/// `cargo test --release --test host_parity -- --ignored`).
#[test]
#[ignore = "slow sweep; run by hand"]
fn parity_many_seeds() {
    for case in cases() {
        for k in 1..=20u64 {
            let mut plan = case.plan.clone();
            plan.seed = plan.seed.wrapping_mul(1000).wrapping_add(k);
            plan.action_seed = plan.action_seed.wrapping_mul(1000).wrapping_add(k);
            let mut cpu = CpuBackend::new(case.layout, case.md.clone(), case.feats.clone());
            let mut host =
                HostShimBackend::new(EXACT, case.layout, case.md.clone(), case.feats.clone());
            run_parity(&mut cpu, &mut host, &case.md, &plan, |_, _| {})
                .unwrap_or_else(|e| panic!("seed {}: {e}", plan.seed));
        }
    }
}
