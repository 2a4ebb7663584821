/*!
The kernel ABI: the `#[repr(C)]` structs shared with the CUDA kernels (`kernels/abi.cuh`,
`kernels/env_logic.cuh`) that are not already part of the CPU backend. Together with
[`StepParams`] and [`ScenarioState`] (also `#[repr(C)]`), these are everything a kernel receives by
value or reads from device memory as a struct.

Every kernel takes ONE argument struct by value: [`EnvResetArgs`], [`EnvStepArgs`], [`ObsArgs`]
(`gather_obs`, `dyn_obs`), [`MaskArgs`], [`SampleArgs`]. Buffers are `u64` addresses, so the
structs are `Pod`. They are built by the constructors here ([`EnvStepArgs::new`], ...) from named
buffer addresses ([`EnvBuffers`]): the CUDA backend passes device addresses and launches the
kernel with the struct; `tests/host_parity.rs` passes host addresses of its own buffers to the host
shim, which runs the very per-block entry point the kernel runs (`marl_env_step_block`, ...), so a
field assigned to the wrong buffer fails host parity. [`abi_layout`] lists the size and offset of
every field of every struct, compared with the C compiler's by `abi_layout_matches`.

Always compiled (no `cuda` feature needed), so the layout and parity tests run on any machine.
*/

use bytemuck::{Pod, Zeroable};

use super::{EnvLayout, EpisodeRecord, ScenarioState, StepParams};
use crate::reward::{ComponentSums, N_COMPONENTS};

/// Rows of the step kernel's fold buffer (`MARL_FOLD_ROWS`, kernels/scenario.cuh).
pub const FOLD_ROWS: usize = 15;
/// Broadcast slots of the step kernel (`MARL_ACC_SLOTS`, kernels/scenario.cuh).
pub const ACC_SLOTS: usize = 24;
/// Scalars per scenario of the step's optional debug output (`MARL_DEBUG_LEN`).
pub const DEBUG_LEN: usize = 14;

/// Most threads per block of the block kernels (`env_reset`, `env_step`): their
/// `__launch_bounds__` (`MARL_MAX_BLOCK`, kernels/common.cuh). With more symbols than this, a
/// thread owns several symbols (strided loops).
pub const MAX_BLOCK: usize = 256;
/// Threads per block of the per-row kernels (`gather_obs`, `dyn_obs`, `action_mask`,
/// `sample_actions`): their `__launch_bounds__` (`MARL_ROWS_BLOCK`).
pub const ROWS_BLOCK: usize = 256;

/// Threads per block of the step and reset kernels for `s` symbols: `s` rounded up to whole warps,
/// at most [`MAX_BLOCK`]. The CUDA backend launches with it and the threaded host emulation of the
/// kernels (`tests/host_parity.rs`) runs with it.
pub fn step_block_threads(s: usize) -> usize {
    s.div_ceil(32).clamp(1, MAX_BLOCK / 32) * 32
}

/// Shared memory a block may use without opting in (every CUDA GPU since compute capability 2.0).
pub const DEFAULT_SMEM_LIMIT: usize = 48 * 1024;

/// Whether the step kernel keeps the per-symbol carry of its phases in shared memory for `s`
/// symbols and `block` threads: when the whole block scratch then fits [`DEFAULT_SMEM_LIMIT`] (more
/// shared memory per block would cost occupancy); otherwise the carry lives in global memory. The
/// CUDA backend and the threaded host emulation decide the same way.
pub fn step_carry_in_smem(s: usize, block: usize) -> bool {
    step_smem_bytes(s, block, true) <= DEFAULT_SMEM_LIMIT
}

/// What the driver reports about one loaded kernel (`cuFuncGetAttribute`), read by the CUDA backend
/// when it loads the kernels and checked against the launch it will make ([`check_launch`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// Most threads per block this kernel can be launched with (its registers and
    /// `__launch_bounds__` on this device).
    pub max_threads_per_block: usize,
    /// Registers per thread.
    pub registers: usize,
    /// Local memory per thread in bytes (register spills and stack).
    pub local_bytes: usize,
    /// Statically declared shared memory per block in bytes.
    pub static_smem_bytes: usize,
}

/// Whether `kernel` can be launched with `block` threads and `dyn_smem` bytes of dynamic shared
/// memory per block, given its resources and the device's opt-in shared-memory limit per block
/// (`CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`). The error (kind
/// `BackendUnavailable`) names the kernel, the request and the limit, so a configuration the GPU
/// cannot run fails at construction with a reason instead of `CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`
/// at the first step.
pub fn check_launch(
    kernel: &str,
    what: &str,
    block: usize,
    dyn_smem: usize,
    res: &KernelResources,
    smem_optin: usize,
) -> crate::Result<()> {
    if block > res.max_threads_per_block {
        return Err(crate::Error::backend(
            "cuda",
            format!(
                "{kernel} ({what}) needs {block} threads per block, but this GPU allows it only {} \
                 ({} registers per thread, {} bytes of local memory)",
                res.max_threads_per_block, res.registers, res.local_bytes
            ),
        ));
    }
    let smem = dyn_smem + res.static_smem_bytes;
    if smem > smem_optin {
        return Err(crate::Error::backend(
            "cuda",
            format!(
                "{kernel} ({what}) needs {smem} bytes of shared memory per block, this GPU allows at \
                 most {smem_optin}: too many symbols for the CUDA backend on this GPU (use the cpu \
                 backend)"
            ),
        ));
    }
    Ok(())
}

/// Row stride (in f64) of the step kernel's fold buffer: `s` rounded up to an odd number, so the
/// threads that fold different rows at once read different shared-memory banks. Mirrors
/// `marl_fold_stride` (kernels/common.cuh).
pub fn fold_stride(s: usize) -> usize {
    s | 1
}

/// Bytes of the step kernel's block scratch (dynamic shared memory) for `s` symbols and `block`
/// threads: fold rows ([`FOLD_ROWS`] x [`fold_stride`]) and broadcast slots (f64), per-symbol carry
/// when `carry` (5 f64 + 1 u32 per symbol), opener flags and scan scratch (u32). Mirrors
/// `marl_step_smem_bytes` (kernels/abi.cuh).
pub fn step_smem_bytes(s: usize, block: usize, carry: bool) -> usize {
    let f64s = FOLD_ROWS * fold_stride(s) + ACC_SLOTS + if carry { 5 * s } else { 0 };
    let u32s = s + block.max(33) + if carry { s } else { 0 };
    8 * f64s + 4 * u32s
}

/// Sizes and the bar range of an environment, as the kernels read them (`EnvDims` in
/// `kernels/env_logic.cuh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct EnvDims {
    /// Scenarios N.
    pub n_scenarios: u32,
    /// Symbols S.
    pub n_symbols: u32,
    /// Paths P.
    pub paths: u32,
    /// Bars per path T.
    pub bars: u32,
    /// First bar of the period.
    pub lo: u32,
    /// End of the period (exclusive).
    pub hi: u32,
    /// Earliest episode start bar.
    pub start_a: u32,
    /// Latest episode start bar.
    pub start_b: u32,
    /// Steps per episode.
    pub episode_len: u32,
    /// Episode-record slots per scenario between two drains.
    pub record_cap: u32,
}

impl EnvDims {
    /// The dimensions of `l`, with `record_cap` episode-record slots per scenario.
    pub fn new(l: &EnvLayout, record_cap: u32) -> Self {
        let u = |x: usize| x as u32;
        Self {
            n_scenarios: u(l.n_scenarios),
            n_symbols: u(l.n_symbols),
            paths: u(l.paths),
            bars: u(l.bars),
            lo: u(l.lo),
            hi: u(l.hi),
            start_a: u(l.start_a),
            start_b: u(l.start_b),
            episode_len: u(l.episode_len),
            record_cap,
        }
    }
}

/// A finished episode as the kernels write it (`EpisodeRecordC` in `kernels/env_logic.cuh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct EpisodeRecordC {
    /// The scenario.
    pub scenario: u32,
    /// Its data path.
    pub path: u32,
    /// Its first bar.
    pub start: u32,
    /// Steps it lasted.
    pub length: u32,
    /// Final equity / initial capital - 1.
    pub total_return: f64,
    /// 1 when the kill switch ended it.
    pub killed: u32,
    /// Masked actions executed as HOLD.
    pub invalid_actions: u32,
    /// Buys dropped by the open-position limit.
    pub limited_orders: u32,
    /// Explicit padding, always 0 (keeps the C layout).
    pub _pad: u32,
    /// Sums of the weighted components.
    pub sum: [f64; N_COMPONENTS],
    /// Their sums of squares.
    pub sum_sq: [f64; N_COMPONENTS],
    /// Symbol-steps counted.
    pub count: u64,
}

impl From<&EpisodeRecordC> for EpisodeRecord {
    fn from(r: &EpisodeRecordC) -> Self {
        EpisodeRecord {
            scenario: r.scenario,
            path: r.path,
            start: r.start,
            length: r.length,
            total_return: r.total_return,
            killed: r.killed != 0,
            invalid_actions: r.invalid_actions,
            limited_orders: r.limited_orders,
            components: ComponentSums {
                sum: r.sum,
                sum_sq: r.sum_sq,
                count: r.count,
            },
        }
    }
}

/// Addresses of the environment's buffers as the kernels see them: device addresses in the CUDA
/// backend, host addresses in `tests/host_parity.rs` (0 = absent). Shapes as in `kernels/abi.cuh`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvBuffers {
    /// Market data `[P, T, S + 1]`.
    pub open: u64,
    /// Close prices `[P, T, S + 1]` f32.
    pub close: u64,
    /// Volume `[P, T, S + 1]` f32.
    pub volume: u64,
    /// `[P, T, S]`, `[P, T, MACRO]`, `[P, T, N_REGIME]`, `[P, S, T, N_TECH]`.
    pub sentiment: u64,
    /// Macro series `[P, T, MACRO]` f32.
    pub macro_series: u64,
    /// Regime features `[P, T, N_REGIME]` f32.
    pub regime: u64,
    /// Technical features `[P, S, T, N_TECH]` f32 (one symbol's bars contiguous).
    pub tech: u64,
    /// SL prior cache `[P, T, S, 3]` f32 (`crate::priors`), or 0: the SL slice is then 0.
    pub sl: u64,
    /// State: `[N]` scenarios, `[N, S]` per symbol, `[N, 7]` / `[N]` episode accumulators.
    pub scen: u64,
    /// Shares held `[N, S]` f64.
    pub q: u64,
    /// Average entry prices `[N, S]` f64.
    pub entry: u64,
    /// Highest close since entry `[N, S]` f64.
    pub peak_px: u64,
    /// First DSR moment per symbol `[N, S]` f64.
    pub dsr_a: u64,
    /// Second DSR moment per symbol `[N, S]` f64.
    pub dsr_b: u64,
    /// Entry step per symbol `[N, S]` u32.
    pub entry_k: u64,
    /// Episode sums of the weighted components `[N, 7]` f64.
    pub comp_sum: u64,
    /// Their sums of squares `[N, 7]` f64.
    pub comp_sumsq: u64,
    /// Symbol-steps counted `[N]` u64.
    pub comp_count: u64,
    /// Step inputs `[N, S]`, `[N]` (also the sampler's outputs).
    pub actions: u64,
    /// Master actions `[N]` u8.
    pub master: u64,
    /// Step outputs `[N, S]`, `[N, S, 7]`, `[N]`, `[N]`, `[N]`, `[N]`, records `[N, record_cap]`, `[N]`.
    pub reward: u64,
    /// Unweighted components `[N, S, 7]` f32.
    pub comps: u64,
    /// Master rewards `[N]` f32.
    pub master_reward: u64,
    /// Order notional at the fill over the equity before the step `[N]` f32 (spec §4.8).
    pub turnover: u64,
    /// Kill-switch flags `[N]` u8.
    pub terminated: u64,
    /// Length / period-end flags `[N]` u8.
    pub truncated: u64,
    /// Episode records `[N, record_cap]` (`EpisodeRecordC`).
    pub recs: u64,
    /// Records written per scenario `[N]` u32.
    pub rec_count: u64,
    /// Step carry `[5, N, S]` f64 and `[N, S]` u32, read only when the carry is not in shared memory.
    pub scratch: u64,
    /// Opener flags `[N, S]` u32 (global-memory carry only).
    pub opener: u64,
    /// 0, or `[N, DEBUG_LEN]` f64 scalars of the step (host tests).
    pub debug: u64,
}

/// Arguments of `env_reset` (`EnvResetArgs` in `kernels/abi.cuh`).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct EnvResetArgs {
    /// The step parameters.
    pub p: StepParams,
    /// Sizes and bar range.
    pub dm: EnvDims,
    /// The environment's reset seed.
    pub seed: u64,
    /// Scenario states `[N]` (`ScenarioState`).
    pub scen: u64,
    /// Shares held `[N, S]` f64.
    pub q: u64,
    /// Average entry prices `[N, S]` f64.
    pub entry: u64,
    /// Highest close since entry `[N, S]` f64.
    pub peak_px: u64,
    /// First DSR moment per symbol `[N, S]` f64.
    pub dsr_a: u64,
    /// Second DSR moment per symbol `[N, S]` f64.
    pub dsr_b: u64,
    /// Entry step per symbol `[N, S]` u32.
    pub entry_k: u64,
    /// Episode sums of the weighted components `[N, 7]` f64.
    pub comp_sum: u64,
    /// Their sums of squares `[N, 7]` f64.
    pub comp_sumsq: u64,
    /// Symbol-steps counted `[N]` u64.
    pub comp_count: u64,
    /// Records written per scenario `[N]` u32.
    pub rec_count: u64,
}

impl EnvResetArgs {
    /// The arguments over the buffers `b` (device addresses in the CUDA backend, host addresses in the parity test).
    pub fn new(p: &StepParams, dm: &EnvDims, seed: u64, b: &EnvBuffers) -> Self {
        Self {
            p: *p,
            dm: *dm,
            seed,
            scen: b.scen,
            q: b.q,
            entry: b.entry,
            peak_px: b.peak_px,
            dsr_a: b.dsr_a,
            dsr_b: b.dsr_b,
            entry_k: b.entry_k,
            comp_sum: b.comp_sum,
            comp_sumsq: b.comp_sumsq,
            comp_count: b.comp_count,
            rec_count: b.rec_count,
        }
    }
}

/// Arguments of `env_step` (`EnvStepArgs` in `kernels/abi.cuh`).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct EnvStepArgs {
    /// The step parameters.
    pub p: StepParams,
    /// Sizes and bar range.
    pub dm: EnvDims,
    /// The environment's reset seed.
    pub seed: u64,
    /// Open prices `[P, T, S + 1]` f32.
    pub open: u64,
    /// Close prices `[P, T, S + 1]` f32.
    pub close: u64,
    /// Volume `[P, T, S + 1]` f32.
    pub volume: u64,
    /// Symbol actions `[N, S]` u8.
    pub actions: u64,
    /// Master actions `[N]` u8.
    pub master: u64,
    /// Scenario states `[N]` (`ScenarioState`).
    pub scen: u64,
    /// Shares held `[N, S]` f64.
    pub q: u64,
    /// Average entry prices `[N, S]` f64.
    pub entry: u64,
    /// Highest close since entry `[N, S]` f64.
    pub peak_px: u64,
    /// First DSR moment per symbol `[N, S]` f64.
    pub dsr_a: u64,
    /// Second DSR moment per symbol `[N, S]` f64.
    pub dsr_b: u64,
    /// Entry step per symbol `[N, S]` u32.
    pub entry_k: u64,
    /// Episode sums of the weighted components `[N, 7]` f64.
    pub comp_sum: u64,
    /// Their sums of squares `[N, 7]` f64.
    pub comp_sumsq: u64,
    /// Symbol-steps counted `[N]` u64.
    pub comp_count: u64,
    /// Rewards `[N, S]` f32.
    pub reward: u64,
    /// Unweighted components `[N, S, 7]` f32.
    pub comps: u64,
    /// Master rewards `[N]` f32.
    pub master_reward: u64,
    /// Order notional at the fill over the equity before the step `[N]` f32 (spec §4.8).
    pub turnover: u64,
    /// Kill-switch flags `[N]` u8.
    pub terminated: u64,
    /// Length / period-end flags `[N]` u8.
    pub truncated: u64,
    /// Episode records `[N, record_cap]` (`EpisodeRecordC`).
    pub recs: u64,
    /// Records written per scenario `[N]` u32.
    pub rec_count: u64,
    /// Step carry `[5, N, S]` f64 (global-memory carry only).
    pub scratch: u64,
    /// Opener flags `[N, S]` u32 (global-memory carry only).
    pub opener: u64,
    /// 0, or the step's debug scalars `[N, DEBUG_LEN]` f64 (host tests).
    pub debug: u64,
    /// 1: the per-symbol carry of the phases lives in the block's shared memory, else in
    /// `scratch` / `opener`.
    pub carry_in_smem: u32,
    /// Explicit padding, always 0 (keeps the C layout).
    pub _pad: u32,
}

impl EnvStepArgs {
    /// The arguments over the buffers `b` (device addresses in the CUDA backend, host addresses in the parity test).
    pub fn new(
        p: &StepParams,
        dm: &EnvDims,
        seed: u64,
        b: &EnvBuffers,
        carry_in_smem: bool,
    ) -> Self {
        Self {
            p: *p,
            dm: *dm,
            seed,
            open: b.open,
            close: b.close,
            volume: b.volume,
            actions: b.actions,
            master: b.master,
            scen: b.scen,
            q: b.q,
            entry: b.entry,
            peak_px: b.peak_px,
            dsr_a: b.dsr_a,
            dsr_b: b.dsr_b,
            entry_k: b.entry_k,
            comp_sum: b.comp_sum,
            comp_sumsq: b.comp_sumsq,
            comp_count: b.comp_count,
            reward: b.reward,
            comps: b.comps,
            master_reward: b.master_reward,
            turnover: b.turnover,
            terminated: b.terminated,
            truncated: b.truncated,
            recs: b.recs,
            rec_count: b.rec_count,
            scratch: b.scratch,
            opener: b.opener,
            debug: b.debug,
            carry_in_smem: carry_in_smem as u32,
            _pad: 0,
        }
    }
}

/// Arguments of `gather_obs` and `dyn_obs` (`ObsArgs` in `kernels/abi.cuh`; `dyn_obs` does not
/// read `tech`).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct ObsArgs {
    /// The step parameters.
    pub p: StepParams,
    /// Sizes and bar range.
    pub dm: EnvDims,
    /// Close prices `[P, T, S + 1]` f32.
    pub close: u64,
    /// Sentiment `[P, T, S]` f32.
    pub sentiment: u64,
    /// Macro series `[P, T, MACRO]` f32.
    pub macro_series: u64,
    /// Regime features `[P, T, N_REGIME]` f32.
    pub regime: u64,
    /// Technical features `[P, S, T, N_TECH]` f32 (one symbol's bars contiguous).
    pub tech: u64,
    /// SL prior cache `[P, T, S, 3]` f32 (`crate::priors`), or 0: the SL slice is then 0.
    pub sl: u64,
    /// Scenario states `[N]` (`ScenarioState`).
    pub scen: u64,
    /// Shares held `[N, S]` f64.
    pub q: u64,
    /// Average entry prices `[N, S]` f64.
    pub entry: u64,
    /// Highest close since entry `[N, S]` f64.
    pub peak_px: u64,
    /// Entry step per symbol `[N, S]` u32.
    pub entry_k: u64,
    /// `[N, S, OBS_DIM]` (gather_obs) or `[N, S, DYN_OBS]` (dyn_obs) f32.
    pub out: u64,
}

impl ObsArgs {
    /// The arguments over the buffers `b` (device addresses in the CUDA backend, host addresses in the parity test).
    pub fn new(p: &StepParams, dm: &EnvDims, b: &EnvBuffers, out: u64) -> Self {
        Self {
            p: *p,
            dm: *dm,
            close: b.close,
            sentiment: b.sentiment,
            macro_series: b.macro_series,
            regime: b.regime,
            tech: b.tech,
            sl: b.sl,
            scen: b.scen,
            q: b.q,
            entry: b.entry,
            peak_px: b.peak_px,
            entry_k: b.entry_k,
            out,
        }
    }
}

/// Arguments of `action_mask` (`MaskArgs` in `kernels/abi.cuh`).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct MaskArgs {
    /// The step parameters.
    pub p: StepParams,
    /// Sizes and bar range.
    pub dm: EnvDims,
    /// Close prices `[P, T, S + 1]` f32.
    pub close: u64,
    /// Scenario states `[N]` (`ScenarioState`).
    pub scen: u64,
    /// Shares held `[N, S]` f64.
    pub q: u64,
    /// Average entry prices `[N, S]` f64.
    pub entry: u64,
    /// `[N, S, 7]` u8.
    pub out: u64,
}

impl MaskArgs {
    /// The arguments over the buffers `b` (device addresses in the CUDA backend, host addresses in the parity test).
    pub fn new(p: &StepParams, dm: &EnvDims, b: &EnvBuffers, out: u64) -> Self {
        Self {
            p: *p,
            dm: *dm,
            close: b.close,
            scen: b.scen,
            q: b.q,
            entry: b.entry,
            out,
        }
    }
}

/// Arguments of `sample_actions` (`SampleArgs` in `kernels/abi.cuh`): writes `actions` `[N, S]`
/// and `master` `[N]` of step `it`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct SampleArgs {
    /// The step parameters.
    pub p: StepParams,
    /// Sizes and bar range.
    pub dm: EnvDims,
    /// The environment's reset seed.
    pub seed: u64,
    /// The step index (the sampler's counter).
    pub it: u64,
    /// Close prices `[P, T, S + 1]` f32.
    pub close: u64,
    /// Scenario states `[N]` (`ScenarioState`).
    pub scen: u64,
    /// Shares held `[N, S]` f64.
    pub q: u64,
    /// Average entry prices `[N, S]` f64.
    pub entry: u64,
    /// Symbol actions `[N, S]` u8.
    pub actions: u64,
    /// Master actions `[N]` u8.
    pub master: u64,
    /// A master action, or `u32::MAX` for uniform draws.
    pub fixed_master: u32,
    /// Explicit padding, always 0 (keeps the C layout).
    pub _pad: u32,
}

impl SampleArgs {
    /// The arguments over the buffers `b` (device addresses in the CUDA backend, host addresses in the parity test).
    pub fn new(
        p: &StepParams,
        dm: &EnvDims,
        b: &EnvBuffers,
        seed: u64,
        it: u64,
        fixed_master: u32,
    ) -> Self {
        Self {
            p: *p,
            dm: *dm,
            seed,
            it,
            close: b.close,
            scen: b.scen,
            q: b.q,
            entry: b.entry,
            actions: b.actions,
            master: b.master,
            fixed_master,
            _pad: 0,
        }
    }
}

#[cfg(cuda_env)]
mod device_repr {
    use super::*;
    use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

    // SAFETY (all of them): `#[repr(C)]`, `bytemuck::Pod` structs of plain f64/u32/u64 fields (and
    // arrays and structs of them; device pointers are u64 addresses) with no implicit padding,
    // mirrored field for field by the C structs in kernels/env_logic.cuh and kernels/abi.cuh; the size
    // and offset of every field are checked against the C compiler's by tests/host_parity.rs
    // (`abi_layout_matches`). Every bit pattern of zeros is a valid value.
    unsafe impl DeviceRepr for StepParams {}
    unsafe impl DeviceRepr for ScenarioState {}
    unsafe impl ValidAsZeroBits for ScenarioState {}
    unsafe impl DeviceRepr for EnvDims {}
    unsafe impl DeviceRepr for EpisodeRecordC {}
    unsafe impl ValidAsZeroBits for EpisodeRecordC {}
    unsafe impl DeviceRepr for EnvResetArgs {}
    unsafe impl DeviceRepr for EnvStepArgs {}
    unsafe impl DeviceRepr for ObsArgs {}
    unsafe impl DeviceRepr for MaskArgs {}
    unsafe impl DeviceRepr for SampleArgs {}
    unsafe impl DeviceRepr for PolicySampleArgs {}
}

/// `("sizeof T", size)` then `("T.field", offset)` for every listed field, in order.
macro_rules! layout {
    ($v:ident; $($t:ident: $($f:ident),+;)+) => {
        $(
            $v.push((concat!("sizeof ", stringify!($t)), std::mem::size_of::<$t>()));
            $( $v.push((concat!(stringify!($t), ".", stringify!($f)), std::mem::offset_of!($t, $f))); )+
        )+
    };
}

/// `(name, size or offset)` of every field of every struct the kernels receive, in the order of
/// Arguments of `sample_policy` (`PolicySampleArgs` in `kernels/abi.cuh`): one action per row
/// drawn from the policy's log-probabilities `[rows, na]` with the uniforms of the trainer's
/// SplitMix64 action stream from position `draws` (row `r` takes draw `draws + r`,
/// kernels/policy.cuh), the same draws `agents::dist::sample_row` makes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct PolicySampleArgs {
    /// Log-probabilities `[rows, na]` f32 (a masked action's is `-inf`, or `-1e9` as
    /// `agents::dist::MaskedCategorical` gives it: probability 0 either way).
    pub log_probs: u64,
    /// The drawn actions `[rows]` u32.
    pub actions: u64,
    /// The drawn actions' log-probabilities `[rows]` f32.
    pub logp: u64,
    /// 0, or `[rows]` u8: the draws again, as the env step's symbol actions.
    pub env_actions: u64,
    /// The action stream's seed.
    pub seed: u64,
    /// The stream's position at the start of the step.
    pub draws: u64,
    /// Rows (one thread each).
    pub rows: u32,
    /// Actions per row.
    pub na: u32,
}

/// `marl_abi_layout` in `kernels/host_shim.c`.
pub fn abi_layout() -> Vec<(&'static str, usize)> {
    use crate::costs::CostParams;
    use crate::reward::RewardParams;
    let mut v = Vec::new();
    layout! { v;
        CostParams: commission, half_spread, impact_coef, max_slippage, borrow_per_bar;
        RewardParams: w, dsr_eta, dsr_clip, trade_dd_threshold, util_target, bar_vol, master_w,
            master_gamma;
        StepParams: costs, reward, initial_capital, leverage_cap, kill_drawdown, buy_size,
            sell_partial, risk_multipliers, position_caps, max_open, n_symbols, episode_len,
            default_action;
        ScenarioState: cash, equity, peak, gross, dsr_a, dsr_b, path, t0, k, episode, directive,
            open_count, invalid_actions, limited_orders;
        EnvDims: n_scenarios, n_symbols, paths, bars, lo, hi, start_a, start_b, episode_len,
            record_cap;
        EpisodeRecordC: scenario, path, start, length, total_return, killed, invalid_actions,
            limited_orders, sum, sum_sq, count;
        EnvResetArgs: p, dm, seed, scen, q, entry, peak_px, dsr_a, dsr_b, entry_k, comp_sum,
            comp_sumsq, comp_count, rec_count;
        EnvStepArgs: p, dm, seed, open, close, volume, actions, master, scen, q, entry, peak_px,
            dsr_a, dsr_b, entry_k, comp_sum, comp_sumsq, comp_count, reward, comps, master_reward,
            turnover, terminated, truncated, recs, rec_count, scratch, opener, debug, carry_in_smem, _pad;
        ObsArgs: p, dm, close, sentiment, macro_series, regime, tech, sl, scen, q, entry,
            peak_px, entry_k, out;
        MaskArgs: p, dm, close, scen, q, entry, out;
        SampleArgs: p, dm, seed, it, close, scen, q, entry, actions, master, fixed_master, _pad;
        PolicySampleArgs: log_probs, actions, logp, env_actions, seed, draws, rows, na;
    }
    v
}

/// `(name, value)` of the layout constants the kernels assume, in the order of
/// `marl_host_constants` in `kernels/host_shim.c`.
pub fn kernel_constants() -> Vec<(&'static str, usize)> {
    use super::obs;
    use crate::data::MACRO;
    use crate::features::{N_REGIME, N_TECH, WINDOW};
    vec![
        ("N_ACTIONS", super::N_ACTIONS),
        ("N_COMPONENTS", N_COMPONENTS),
        ("MASTER_ACTIONS", super::MASTER_ACTIONS),
        ("N_TECH", N_TECH),
        ("WINDOW", WINDOW),
        ("N_REGIME", N_REGIME),
        ("MACRO", MACRO),
        ("TECH_WINDOW_LEN", obs::TECH_WINDOW_LEN),
        ("DYN_OBS", obs::DYN_OBS),
        ("OBS_DIM", obs::OBS_DIM),
        ("SENT_MACRO", obs::SENT_MACRO.start),
        ("SL_PROBS", obs::SL_PROBS.start),
        ("POSITION", obs::POSITION.start),
        ("PORTFOLIO", obs::PORTFOLIO.start),
        ("REGIME", obs::REGIME.start),
        ("MASTER", obs::MASTER.start),
        ("FOLD_ROWS", FOLD_ROWS),
        ("ACC_SLOTS", ACC_SLOTS),
        ("DEBUG_LEN", DEBUG_LEN),
        ("MAX_BLOCK", MAX_BLOCK),
        ("ROWS_BLOCK", ROWS_BLOCK),
    ]
}
