/*!
The CUDA backend: the whole step of docs/env-spec.md as handwritten kernels (`kernels/`), compiled
at run time with NVRTC ([`nvrtc`]) and launched with cudarc. No CUDA toolkit is needed to build;
running needs an NVIDIA driver and NVRTC (docs/gpu.md).

Layout on the device, struct-of-arrays like the CPU backend:
- market data `[P, T, S + 1]` (open, close, volume), sentiment, macro, features: uploaded once;
- per-scenario `ScenarioState` `[N]` (the `#[repr(C)]` struct of `env`, mirrored in
  `kernels/env_logic.cuh`), per-symbol `q, entry, peak_px, dsr_a, dsr_b` `[N, S]` f64 and
  `entry_k` `[N, S]` u32, episode accumulators `[N, 7]`;
- step outputs (rewards, components, master reward, dones) and finished-episode records.

Every kernel takes one argument struct by value (`kernels/abi.cuh`, mirrored by [`super::abi`]):
the backend reads the device address of every buffer once ([`EnvBuffers`]) and fills the struct with
the constructor the host parity test uses (`EnvStepArgs::new`, ...) before each launch.

One step is one fused kernel (`env_step`): a block per scenario, threads over symbols, per-scenario
reductions as ordered folds in shared memory so that the results equal the CPU backend's bit for
bit (`kernels/common.cuh`). Whole rollouts can stay on the device: [`CudaBackend::random_rollout`]
samples actions on the device (`kernels/sampler.cu`), steps and gathers observations with no host
round trip, and times itself with CUDA events.

The same kernel source, compiled for the host by build.rs, is checked against the CPU backend in
`tests/host_parity.rs` on every CI run, entered through the kernels' own per-block entry points
with the same argument structs; `tests/nvrtc_compile.rs` compiles every kernel with NVRTC;
`tests/cuda_parity.rs` (ignored: needs an NVIDIA GPU) steps both backends side by side.
*/

mod master;
pub mod nvrtc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::abi::{
    DEFAULT_SMEM_LIMIT, EnvBuffers, EnvDims, EnvResetArgs, EnvStepArgs, EpisodeRecordC,
    KernelResources, MaskArgs, ObsArgs, ROWS_BLOCK, SampleArgs, check_launch, step_block_threads,
    step_carry_in_smem, step_smem_bytes,
};
use super::obs::{DYN_OBS, OBS_DIM};
use super::{
    Backend, EnvLayout, EpisodeRecord, N_ACTIONS, ScenarioState, Snapshot, StepOutputs, SymbolState,
};
use crate::data::MarketData;
use crate::error::{Error, Result};
use crate::features::Features;
use crate::priors::PriorCache;
use crate::reward::N_COMPONENTS;

/// Kernel headers, passed to NVRTC in memory under these include names.
pub const HEADERS: [(&str, &str); 6] = [
    ("abi.cuh", include_str!("../../kernels/abi.cuh")),
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    ("env_logic.cuh", include_str!("../../kernels/env_logic.cuh")),
    ("scenario.cuh", include_str!("../../kernels/scenario.cuh")),
    ("obs.cuh", include_str!("../../kernels/obs.cuh")),
    (
        "master_obs.cuh",
        include_str!("../../kernels/master_obs.cuh"),
    ),
];

/// Kernel programs: (file name, source, kernels it defines).
pub const PROGRAMS: [(&str, &str, &[&str]); 4] = [
    (
        "env_step.cu",
        include_str!("../../kernels/env_step.cu"),
        &["env_reset", "env_step"],
    ),
    (
        "obs.cu",
        include_str!("../../kernels/obs.cu"),
        &["gather_obs", "dyn_obs", "action_mask"],
    ),
    (
        "sampler.cu",
        include_str!("../../kernels/sampler.cu"),
        &["sample_actions"],
    ),
    (
        "master_obs.cu",
        include_str!("../../kernels/master_obs.cu"),
        &["master_obs"],
    ),
];

/// Episode-record slots per scenario on the device. `VecEnv` drains after every step with a done,
/// so one slot would do; device rollouts count finished episodes without keeping them.
const RECORD_CAP: u32 = 4;

/// NVRTC options for a virtual architecture such as `compute_90`.
///
/// `--fmad=false`: no contraction into FMA, so the device rounds like the host (the CPU backend and
/// the host shim). Layout constants come from the Rust side so the kernels cannot drift from them.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    use crate::data::MACRO;
    use crate::features::{N_REGIME, N_TECH, WINDOW};
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "-default-device".into(),
        "--std=c++17".into(),
        format!("-DMARL_N_TECH={N_TECH}u"),
        format!("-DMARL_WINDOW={WINDOW}u"),
        format!("-DMARL_N_REGIME={N_REGIME}u"),
        format!("-DMARL_MACRO={MACRO}u"),
    ]
}

/// One compiled program.
#[derive(Debug, Clone)]
pub struct CompiledProgram {
    /// The kernel family (`.cu` file stem).
    pub name: &'static str,
    /// The PTX NVRTC produced.
    pub ptx: String,
    /// NVRTC's log (empty when there were no warnings).
    pub log: String,
}

/// Compile every kernel program for `arch` (e.g. `compute_80`). Errors carry the NVRTC log.
pub fn compile_all(arch: &str) -> Result<Vec<CompiledProgram>> {
    let lib = nvrtc::Nvrtc::get().map_err(backend_err)?;
    let opts = nvrtc_options(arch);
    PROGRAMS
        .iter()
        .map(|(name, src, _)| {
            let c = lib
                .compile(name, src, &HEADERS, &opts)
                .map_err(backend_err)?;
            Ok(CompiledProgram {
                name,
                ptx: c.ptx,
                log: c.log,
            })
        })
        .collect()
}

/// PTX per architecture, compiled once per process.
fn cached_ptx(arch: &str) -> Result<Arc<Vec<CompiledProgram>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<CompiledProgram>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache.lock().expect("ptx cache").get(arch) {
        return Ok(p.clone());
    }
    let progs = Arc::new(compile_all(arch)?);
    cache
        .lock()
        .expect("ptx cache")
        .insert(arch.to_string(), progs.clone());
    Ok(progs)
}

fn backend_err(message: impl Into<String>) -> Error {
    Error::backend("cuda", message)
}

fn drv(what: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| backend_err(format!("{what}: {e}"))
}

/// The device buffer in `slot`, allocated zeroed with `len` elements on first use.
fn lazy_buf<'a, T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<&'a mut CudaSlice<T>> {
    if slot.is_none() {
        *slot = Some(stream.alloc_zeros::<T>(len).map_err(drv(what))?);
    }
    Ok(slot.as_mut().expect("allocated above"))
}

/// Timing of a device-side rollout ([`CudaBackend::random_rollout`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutTiming {
    /// Steps timed.
    pub steps: usize,
    /// Device time between the first and the last kernel, CUDA events.
    pub device_ms: f32,
    /// Scenario-steps per second of device time (x S for symbol-steps).
    pub scenario_steps_per_s: f64,
    /// Episodes that finished during the rollout (all scenarios).
    pub episodes_finished: u64,
}

/// What the driver reports about `f` (`cuFuncGetAttribute`).
fn kernel_resources(name: &str, f: &CudaFunction) -> Result<KernelResources> {
    let get = |a: CUfunction_attribute_enum| -> Result<usize> {
        let v = f
            .get_attribute(a)
            .map_err(drv(&format!("attributes of kernel {name}")))?;
        Ok(v.max(0) as usize)
    };
    use CUfunction_attribute_enum as A;
    Ok(KernelResources {
        max_threads_per_block: get(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        registers: get(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
        local_bytes: get(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
        static_smem_bytes: get(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
    })
}

struct Kernels {
    reset: CudaFunction,
    step: CudaFunction,
    gather_obs: CudaFunction,
    dyn_obs: CudaFunction,
    mask: CudaFunction,
    sample: CudaFunction,
    master_obs: CudaFunction,
}

/// The CUDA backend (see the module docs).
pub struct CudaBackend {
    layout: EnvLayout,
    dims: EnvDims,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    /// What the driver reports about every kernel, read at load time.
    resources: Vec<(&'static str, KernelResources)>,
    /// Threads per block of the step kernel, its dynamic shared memory, and whether the per-symbol
    /// carry of the phases lives in shared memory (else in `scratch`).
    block: u32,
    smem: u32,
    carry_in_smem: bool,
    /// Device addresses of the buffers below, for the kernels' argument structs.
    bufs: EnvBuffers,
    seed: u64,
    // market data and features
    open: CudaSlice<f32>,
    close: CudaSlice<f32>,
    volume: CudaSlice<f32>,
    sentiment: CudaSlice<f32>,
    macro_series: CudaSlice<f32>,
    regime: CudaSlice<f32>,
    tech: CudaSlice<f32>,
    sl: Option<CudaSlice<f32>>,
    // state
    scen: CudaSlice<ScenarioState>,
    q: CudaSlice<f64>,
    entry: CudaSlice<f64>,
    peak_px: CudaSlice<f64>,
    dsr_a: CudaSlice<f64>,
    dsr_b: CudaSlice<f64>,
    entry_k: CudaSlice<u32>,
    comp_sum: CudaSlice<f64>,
    comp_sumsq: CudaSlice<f64>,
    comp_count: CudaSlice<u64>,
    scratch: CudaSlice<f64>,
    opener: CudaSlice<u32>,
    // step inputs and outputs
    actions: CudaSlice<u8>,
    master: CudaSlice<u8>,
    reward: CudaSlice<f32>,
    comps: CudaSlice<f32>,
    master_reward: CudaSlice<f32>,
    terminated: CudaSlice<u8>,
    truncated: CudaSlice<u8>,
    recs: CudaSlice<EpisodeRecordC>,
    rec_count: CudaSlice<u32>,
    // observation buffers, allocated on first use
    obs: Option<CudaSlice<f32>>,
    dyn_buf: Option<CudaSlice<f32>>,
    mask_buf: Option<CudaSlice<u8>>,
    /// The master observation's buffers (`master.rs`), allocated on first use.
    master_bufs: Option<master::MasterBufs>,
}

impl CudaBackend {
    /// Build the backend on GPU 0: checks for the driver, compiles (once per process) and loads the
    /// kernels, uploads the data and allocates the state. Errors are of kind `ErrorKind::BackendUnavailable`.
    pub fn new(layout: EnvLayout, data: Arc<MarketData>, features: Arc<Features>) -> Result<Self> {
        Self::with_priors(layout, data, features, None)
    }

    /// [`CudaBackend::new`] with the SL prior cache uploaded as one more device buffer (the
    /// observation's SL slice reads it; `None`: zeros). The caller has checked the cache against
    /// the data (`VecEnv::new` does).
    pub fn with_priors(
        layout: EnvLayout,
        data: Arc<MarketData>,
        features: Arc<Features>,
        priors: Option<Arc<PriorCache>>,
    ) -> Result<Self> {
        // SAFETY: only probes whether the driver library can be dlopen'ed; no CUDA call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(backend_err(
                "no NVIDIA driver library (libcuda.so) found: the CUDA backend needs an NVIDIA GPU and its driver \
                 (use --backend cpu here; see docs/gpu.md)",
            ));
        }
        let (n, s) = (layout.n_scenarios, layout.n_symbols);
        if n == 0 || s == 0 || n.checked_mul(s).is_none_or(|ns| ns > u32::MAX as usize) {
            return Err(Error::invalid(format!(
                "cuda backend: unsupported N = {n}, S = {s} (both positive, N x S below 2^32)"
            )));
        }
        let ctx = CudaContext::new(0).map_err(drv("creating a context on GPU 0"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let arch = format!("compute_{major}{minor}");
        let progs = cached_ptx(&arch)?;
        let stream = ctx.default_stream();
        // SAFETY: the backend uses a single stream for every copy and launch, so stream order alone
        // orders all accesses; cudarc's per-buffer events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let mut funcs: HashMap<&str, CudaFunction> = HashMap::new();
        for (prog, (_, _, names)) in progs.iter().zip(PROGRAMS.iter()) {
            let module = ctx
                .load_module(Ptx::from_src(prog.ptx.clone()))
                .map_err(drv(prog.name))?;
            for name in names.iter() {
                funcs.insert(name, module.load_function(name).map_err(drv(name))?);
            }
        }
        let mut resources = Vec::new();
        for (_, _, names) in PROGRAMS.iter() {
            for name in names.iter() {
                resources.push((*name, kernel_resources(name, &funcs[name])?));
            }
        }
        let mut take = |name: &str| {
            funcs
                .remove(name)
                .expect("every kernel is listed in PROGRAMS")
        };
        let k = Kernels {
            reset: take("env_reset"),
            step: take("env_step"),
            gather_obs: take("gather_obs"),
            dyn_obs: take("dyn_obs"),
            mask: take("action_mask"),
            sample: take("sample_actions"),
            master_obs: take("master_obs"),
        };

        // Launch geometry, checked against what the driver reports for the loaded kernels and
        // this device, so a configuration the GPU cannot run fails here with the reason.
        let block = step_block_threads(s);
        let carry = step_carry_in_smem(s, block);
        let smem = step_smem_bytes(s, block, carry);
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(drv("device shared memory limit"))?
            .max(DEFAULT_SMEM_LIMIT as i32) as usize;
        for (name, r) in &resources {
            let (threads, dyn_smem, what) = match *name {
                "env_step" => (
                    block,
                    smem,
                    format!("S = {s}, {block} threads, carry in shared memory {carry}"),
                ),
                "env_reset" => (block, 0, format!("S = {s}, {block} threads")),
                _ => (ROWS_BLOCK, 0, "per-row kernel".to_string()),
            };
            check_launch(name, &what, threads, dyn_smem, r, optin)?;
        }
        if smem > DEFAULT_SMEM_LIMIT {
            k.step
                .set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(drv("raising the step kernel's dynamic shared memory limit"))?;
        }

        let up = |v: &[f32], what: &str| stream.clone_htod(v).map_err(drv(what));
        let zeros_f64 = |len: usize| stream.alloc_zeros::<f64>(len.max(1)).map_err(drv("alloc"));
        let ns = n * s;
        let mut me = Self {
            dims: EnvDims::new(&layout, RECORD_CAP),
            layout,
            resources,
            block: block as u32,
            smem: smem as u32,
            carry_in_smem: carry,
            bufs: EnvBuffers::default(),
            seed: 0,
            open: up(&data.open, "upload open")?,
            close: up(&data.close, "upload close")?,
            volume: up(&data.volume, "upload volume")?,
            sentiment: up(&data.sentiment, "upload sentiment")?,
            macro_series: up(&data.macro_series, "upload macro")?,
            regime: up(&features.regime, "upload regime features")?,
            tech: up(&features.tech, "upload technical features")?,
            sl: match &priors {
                Some(c) => Some(up(&c.values, "upload the SL prior cache")?),
                None => None,
            },
            scen: stream
                .alloc_zeros::<ScenarioState>(n)
                .map_err(drv("alloc"))?,
            q: zeros_f64(ns)?,
            entry: zeros_f64(ns)?,
            peak_px: zeros_f64(ns)?,
            dsr_a: zeros_f64(ns)?,
            dsr_b: zeros_f64(ns)?,
            entry_k: stream.alloc_zeros::<u32>(ns).map_err(drv("alloc"))?,
            comp_sum: zeros_f64(n * N_COMPONENTS)?,
            comp_sumsq: zeros_f64(n * N_COMPONENTS)?,
            comp_count: stream.alloc_zeros::<u64>(n).map_err(drv("alloc"))?,
            scratch: zeros_f64(if carry { 1 } else { 5 * ns })?,
            opener: stream
                .alloc_zeros::<u32>(if carry { 1 } else { ns })
                .map_err(drv("alloc"))?,
            actions: stream.alloc_zeros::<u8>(ns).map_err(drv("alloc"))?,
            master: stream.alloc_zeros::<u8>(n).map_err(drv("alloc"))?,
            reward: stream.alloc_zeros::<f32>(ns).map_err(drv("alloc"))?,
            comps: stream
                .alloc_zeros::<f32>(ns * N_COMPONENTS)
                .map_err(drv("alloc"))?,
            master_reward: stream.alloc_zeros::<f32>(n).map_err(drv("alloc"))?,
            terminated: stream.alloc_zeros::<u8>(n).map_err(drv("alloc"))?,
            truncated: stream.alloc_zeros::<u8>(n).map_err(drv("alloc"))?,
            recs: stream
                .alloc_zeros::<EpisodeRecordC>(n * RECORD_CAP as usize)
                .map_err(drv("alloc"))?,
            rec_count: stream.alloc_zeros::<u32>(n).map_err(drv("alloc"))?,
            obs: None,
            dyn_buf: None,
            mask_buf: None,
            master_bufs: None,
            k,
            stream,
            ctx,
        };
        me.bufs = me.buffers();
        Ok(me)
    }

    /// The device addresses of every buffer. They stay valid for the backend's life (the slices
    /// are never reallocated), and with one stream and event tracking disabled the `SyncOnDrop`
    /// guards of `device_ptr` record nothing, so reading the addresses once is enough.
    fn buffers(&self) -> EnvBuffers {
        let st = &*self.stream;
        fn a<T>(x: &CudaSlice<T>, st: &CudaStream) -> u64 {
            x.device_ptr(st).0
        }
        EnvBuffers {
            open: a(&self.open, st),
            close: a(&self.close, st),
            volume: a(&self.volume, st),
            sentiment: a(&self.sentiment, st),
            macro_series: a(&self.macro_series, st),
            regime: a(&self.regime, st),
            tech: a(&self.tech, st),
            sl: self.sl.as_ref().map_or(0, |x| a(x, st)),
            scen: a(&self.scen, st),
            q: a(&self.q, st),
            entry: a(&self.entry, st),
            peak_px: a(&self.peak_px, st),
            dsr_a: a(&self.dsr_a, st),
            dsr_b: a(&self.dsr_b, st),
            entry_k: a(&self.entry_k, st),
            comp_sum: a(&self.comp_sum, st),
            comp_sumsq: a(&self.comp_sumsq, st),
            comp_count: a(&self.comp_count, st),
            actions: a(&self.actions, st),
            master: a(&self.master, st),
            reward: a(&self.reward, st),
            comps: a(&self.comps, st),
            master_reward: a(&self.master_reward, st),
            terminated: a(&self.terminated, st),
            truncated: a(&self.truncated, st),
            recs: a(&self.recs, st),
            rec_count: a(&self.rec_count, st),
            scratch: a(&self.scratch, st),
            opener: a(&self.opener, st),
            debug: 0,
        }
    }

    /// The device's name and compute capability, for reports.
    pub fn device_description(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let cc = self
            .ctx
            .compute_capability()
            .map(|(a, b)| format!("sm_{a}{b}"))
            .unwrap_or_default();
        format!("{name} ({cc})")
    }

    /// What the driver reported for every kernel at load time (threads per block it allows,
    /// registers, local memory, static shared memory), and the step's launch: threads per block,
    /// dynamic shared memory, whether the carry is in shared memory.
    pub fn kernel_resources(&self) -> (&[(&'static str, KernelResources)], u32, u32, bool) {
        (&self.resources, self.block, self.smem, self.carry_in_smem)
    }

    fn rows_cfg(&self, rows: usize, per_row_threads: usize) -> LaunchConfig {
        let threads = rows * per_row_threads;
        LaunchConfig {
            grid_dim: (threads.div_ceil(ROWS_BLOCK) as u32, 1, 1),
            block_dim: (ROWS_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn launch_step(&mut self) -> Result<()> {
        let bufs = self.bufs;
        self.launch_step_with(&bufs)
    }

    /// The backend's stream: every copy and launch of the backend is ordered on it (event
    /// tracking is off). Work of a caller that reads or writes the backend's device buffers
    /// ([`Self::gather_obs_device`], [`Self::outputs_device`], the inputs of
    /// [`Self::step_device`]) must be ordered on this stream too (or synchronised with it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// One step with actions already on the device: symbol actions `[N, S]` and master actions
    /// `[N]`, allocated on this backend's context (e.g. with `stream().alloc_zeros`) and written in
    /// the order of [`Self::stream`]. Equivalent to [`Backend::step`] with the same values, minus
    /// the two host-to-device copies.
    pub fn step_device(&mut self, actions: &CudaSlice<u8>, master: &CudaSlice<u8>) -> Result<()> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        Self::check_host_len("device symbol actions", actions.len(), n * s)?;
        Self::check_host_len("device master actions", master.len(), n)?;
        let mut bufs = self.bufs;
        bufs.actions = actions.device_ptr(&self.stream).0;
        bufs.master = master.device_ptr(&self.stream).0;
        self.launch_step_with(&bufs)
    }

    fn launch_step_with(&mut self, bufs: &EnvBuffers) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (self.dims.n_scenarios, 1, 1),
            block_dim: (self.block, 1, 1),
            shared_mem_bytes: self.smem,
        };
        let args = EnvStepArgs::new(
            &self.layout.params,
            &self.dims,
            self.seed,
            bufs,
            self.carry_in_smem,
        );
        let mut b = self.stream.launch_builder(&self.k.step);
        b.arg(&args);
        // SAFETY: `env_step` (kernels/env_step.cu) takes one `EnvStepArgs` by value, whose layout
        // equals this struct's (`abi_layout_matches`); every address in it is a live buffer of this
        // backend (or, for the actions of `step_device`, the caller's, length-checked) with the
        // length the kernel indexes (N, N*S, N*S*7, N*7, N*RECORD_CAP, and
        // 5*N*S / N*S for scratch/opener when the carry is not in shared memory; debug is null);
        // `smem` is what the kernel carves (`step_smem_bytes`) and was allowed via the function
        // attribute when above 48 KiB; all work is ordered on the backend's single stream.
        unsafe { b.launch(cfg) }.map_err(drv("env_step launch"))?;
        Ok(())
    }

    fn launch_sample(&mut self, seed: u64, it: u64, fixed_master: u32) -> Result<()> {
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        let cfg = self.rows_cfg(rows, 1);
        let args = SampleArgs::new(
            &self.layout.params,
            &self.dims,
            &self.bufs,
            seed,
            it,
            fixed_master,
        );
        let mut b = self.stream.launch_builder(&self.k.sample);
        b.arg(&args);
        // SAFETY: `sample_actions` (kernels/sampler.cu) takes one `SampleArgs` by value (layout checked
        // by `abi_layout_matches`); actions is [N*S], master [N], the state buffers are [N] / [N*S];
        // the grid covers N*S threads and the kernel bounds-checks.
        unsafe { b.launch(cfg) }.map_err(drv("sample_actions launch"))?;
        Ok(())
    }

    /// Draw the actions of step `it` on the device (`kernels/sampler.cu`) and copy them to the host:
    /// `(symbol actions [N, S], master actions [N])`. The device-side rollout uses the same draws
    /// without the copy; tests use this to replay them on the CPU backend.
    pub fn sample_actions(
        &mut self,
        seed: u64,
        it: u64,
        fixed_master: Option<u8>,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        self.launch_sample(seed, it, fixed_master.map(u32::from).unwrap_or(u32::MAX))?;
        let a = self
            .stream
            .clone_dtoh(&self.actions)
            .map_err(drv("read sampled actions"))?;
        let m = self
            .stream
            .clone_dtoh(&self.master)
            .map_err(drv("read sampled master actions"))?;
        Ok((a, m))
    }

    /// Gather full observations `[N, S, OBS_DIM]` into a device buffer and return it (no copy to the
    /// host): the input of a policy that runs on the same GPU.
    pub fn gather_obs_device(&mut self) -> Result<&CudaSlice<f32>> {
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        let cfg = self.rows_cfg(rows, 32);
        let out = lazy_buf(&self.stream, &mut self.obs, rows * OBS_DIM, "alloc obs")?;
        let out = out.device_ptr(&self.stream).0;
        let args = ObsArgs::new(&self.layout.params, &self.dims, &self.bufs, out);
        let mut b = self.stream.launch_builder(&self.k.gather_obs);
        b.arg(&args);
        // SAFETY: `gather_obs` (kernels/obs.cu) takes one `ObsArgs` by value (layout checked by
        // `abi_layout_matches`); out holds N*S*OBS_DIM floats; the grid has one warp per
        // (scenario, symbol) row and the kernel bounds-checks the row.
        unsafe { b.launch(cfg) }.map_err(drv("gather_obs launch"))?;
        Ok(self.obs.as_ref().expect("allocated above"))
    }

    /// Step outputs on the device (rewards `[N, S]`, master rewards `[N]`, terminated and truncated
    /// `[N]`), for a learner on the same GPU.
    pub fn outputs_device(
        &self,
    ) -> (
        &CudaSlice<f32>,
        &CudaSlice<f32>,
        &CudaSlice<u8>,
        &CudaSlice<u8>,
    ) {
        (
            &self.reward,
            &self.master_reward,
            &self.terminated,
            &self.truncated,
        )
    }

    /// Run `steps` steps entirely on the device with random actions from `kernels/sampler.cu`
    /// (master action `fixed_master`, or uniform when `None`), gathering full observations after every
    /// step when `with_obs`. Timed with CUDA events around the launches; the episode records of the
    /// rollout are counted, not kept.
    pub fn random_rollout(
        &mut self,
        steps: usize,
        seed: u64,
        fixed_master: Option<u8>,
        with_obs: bool,
    ) -> Result<RolloutTiming> {
        let fixed = fixed_master.map(u32::from).unwrap_or(u32::MAX);
        // drain first, so that the count below is this rollout's
        let zeros = vec![0u32; self.layout.n_scenarios];
        self.stream
            .memcpy_htod(&zeros, &mut self.rec_count)
            .map_err(drv("reset record counts"))?;
        if with_obs {
            self.gather_obs_device()?; // allocate outside the timed region
        }
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(timing).map_err(drv("event"))?;
        let end = self.ctx.new_event(timing).map_err(drv("event"))?;
        start.record(&self.stream).map_err(drv("event record"))?;
        for it in 0..steps {
            self.launch_sample(seed, it as u64, fixed)?;
            self.launch_step()?;
            if with_obs {
                self.gather_obs_device()?;
            }
        }
        end.record(&self.stream).map_err(drv("event record"))?;
        let ms = start.elapsed_ms(&end).map_err(drv("event elapsed"))?;
        let counts = self
            .stream
            .clone_dtoh(&self.rec_count)
            .map_err(drv("read record counts"))?;
        self.stream
            .memcpy_htod(&zeros, &mut self.rec_count)
            .map_err(drv("reset record counts"))?;
        let ss = (steps * self.layout.n_scenarios) as f64;
        Ok(RolloutTiming {
            steps,
            device_ms: ms,
            scenario_steps_per_s: if ms > 0.0 {
                ss / (ms as f64 / 1e3)
            } else {
                f64::INFINITY
            },
            episodes_finished: counts.iter().map(|&c| c as u64).sum(),
        })
    }

    fn check_host_len(what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::invalid(format!(
                "{what}: buffer holds {got} values, expected {want}"
            )));
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn layout(&self) -> &EnvLayout {
        &self.layout
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.seed = seed;
        let cfg = LaunchConfig {
            grid_dim: (self.dims.n_scenarios, 1, 1),
            block_dim: (self.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = EnvResetArgs::new(&self.layout.params, &self.dims, self.seed, &self.bufs);
        let mut b = self.stream.launch_builder(&self.k.reset);
        b.arg(&args);
        // SAFETY: `env_reset` (kernels/env_step.cu) takes one `EnvResetArgs` by value (layout checked
        // by `abi_layout_matches`); its buffers are [N], [N*S], [N*7], [N]; one block per scenario.
        unsafe { b.launch(cfg) }.map_err(drv("env_reset launch"))?;
        Ok(())
    }

    fn step(&mut self, symbol_actions: &[u8], master_actions: &[u8]) -> Result<()> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        Self::check_host_len("symbol actions", symbol_actions.len(), n * s)?;
        Self::check_host_len("master actions", master_actions.len(), n)?;
        self.stream
            .memcpy_htod(symbol_actions, &mut self.actions)
            .map_err(drv("upload actions"))?;
        self.stream
            .memcpy_htod(master_actions, &mut self.master)
            .map_err(drv("upload master actions"))?;
        self.launch_step()
    }

    fn read_outputs(&mut self, out: &mut StepOutputs) -> Result<()> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        if out.reward.len() != n * s {
            *out = StepOutputs::new(n, s);
        }
        let st = &self.stream;
        st.memcpy_dtoh(&self.reward, &mut out.reward[..])
            .map_err(drv("read rewards"))?;
        st.memcpy_dtoh(&self.comps, &mut out.components[..])
            .map_err(drv("read components"))?;
        st.memcpy_dtoh(&self.master_reward, &mut out.master_reward[..])
            .map_err(drv("read master rewards"))?;
        st.memcpy_dtoh(&self.terminated, &mut out.terminated[..])
            .map_err(drv("read terminated"))?;
        st.memcpy_dtoh(&self.truncated, &mut out.truncated[..])
            .map_err(drv("read truncated"))?;
        Ok(())
    }

    fn dyn_obs(&mut self, out: &mut [f32]) -> Result<()> {
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        Self::check_host_len("dyn_obs", out.len(), rows * DYN_OBS)?;
        let cfg = self.rows_cfg(rows, 1);
        let buf = lazy_buf(
            &self.stream,
            &mut self.dyn_buf,
            rows * DYN_OBS,
            "alloc dyn_obs",
        )?;
        let args = ObsArgs::new(
            &self.layout.params,
            &self.dims,
            &self.bufs,
            buf.device_ptr(&self.stream).0,
        );
        let mut b = self.stream.launch_builder(&self.k.dyn_obs);
        b.arg(&args);
        // SAFETY: `dyn_obs` (kernels/obs.cu) takes one `ObsArgs` by value (layout checked by
        // `abi_layout_matches`); buf holds N*S*DYN_OBS floats; one thread per row, bounds-checked in
        // the kernel.
        unsafe { b.launch(cfg) }.map_err(drv("dyn_obs launch"))?;
        self.stream
            .memcpy_dtoh(&*buf, out)
            .map_err(drv("read dyn_obs"))?;
        Ok(())
    }

    fn gather_obs(&mut self, out: &mut [f32]) -> Result<()> {
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        Self::check_host_len("gather_obs", out.len(), rows * OBS_DIM)?;
        let stream = self.stream.clone();
        let dev = self.gather_obs_device()?;
        stream
            .memcpy_dtoh(dev, out)
            .map_err(drv("read observations"))?;
        Ok(())
    }

    fn action_mask(&mut self, out: &mut [u8]) -> Result<()> {
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        Self::check_host_len("action_mask", out.len(), rows * N_ACTIONS)?;
        let cfg = self.rows_cfg(rows, 1);
        let buf = lazy_buf(
            &self.stream,
            &mut self.mask_buf,
            rows * N_ACTIONS,
            "alloc action mask",
        )?;
        let args = MaskArgs::new(
            &self.layout.params,
            &self.dims,
            &self.bufs,
            buf.device_ptr(&self.stream).0,
        );
        let mut b = self.stream.launch_builder(&self.k.mask);
        b.arg(&args);
        // SAFETY: `action_mask` (kernels/obs.cu) takes one `MaskArgs` by value (layout checked by
        // `abi_layout_matches`); buf holds N*S*7 bytes; one thread per (scenario, symbol),
        // bounds-checked in the kernel.
        unsafe { b.launch(cfg) }.map_err(drv("action_mask launch"))?;
        self.stream
            .memcpy_dtoh(&*buf, out)
            .map_err(drv("read action mask"))?;
        Ok(())
    }

    fn obs_index(&mut self, out: &mut [u32]) -> Result<()> {
        Self::check_host_len("obs_index", out.len(), 2 * self.layout.n_scenarios)?;
        let scen = self
            .stream
            .clone_dtoh(&self.scen)
            .map_err(drv("read state"))?;
        for (o, st) in out.chunks_exact_mut(2).zip(&scen) {
            o[0] = st.path;
            o[1] = st.t0 + st.k;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let st = &self.stream;
        let rd = |x: &CudaSlice<f64>| st.clone_dtoh(x).map_err(drv("read state"));
        Ok(Snapshot {
            seed: self.seed,
            scenarios: st.clone_dtoh(&self.scen).map_err(drv("read state"))?,
            symbols: SymbolState {
                q: rd(&self.q)?,
                entry: rd(&self.entry)?,
                peak_px: rd(&self.peak_px)?,
                dsr_a: rd(&self.dsr_a)?,
                dsr_b: rd(&self.dsr_b)?,
                entry_k: st.clone_dtoh(&self.entry_k).map_err(drv("read state"))?,
            },
        })
    }

    fn load_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        snap.check_shape(self.layout.n_scenarios, self.layout.n_symbols)?;
        let sy = &snap.symbols;
        self.seed = snap.seed;
        let st = self.stream.clone();
        let e = drv("load state");
        st.memcpy_htod(&snap.scenarios, &mut self.scen).map_err(e)?;
        let dst = [
            &mut self.q,
            &mut self.entry,
            &mut self.peak_px,
            &mut self.dsr_a,
            &mut self.dsr_b,
        ];
        for (src, dst) in sy.f64_fields().into_iter().zip(dst) {
            st.memcpy_htod(src, dst).map_err(drv("load state"))?;
        }
        st.memcpy_htod(&sy.entry_k, &mut self.entry_k)
            .map_err(drv("load state"))?;
        // episode accumulators restart, as in the CPU backend
        st.memset_zeros(&mut self.comp_sum)
            .map_err(drv("load state"))?;
        st.memset_zeros(&mut self.comp_sumsq)
            .map_err(drv("load state"))?;
        st.memset_zeros(&mut self.comp_count)
            .map_err(drv("load state"))?;
        Ok(())
    }

    fn master_obs(
        &mut self,
        intents: &[f32],
        anchors: &mut [super::master_obs::MasterAnchor],
        out: &mut [f32],
    ) -> Result<()> {
        self.launch_master_obs(intents, anchors, out)
    }

    fn drain_episodes(&mut self) -> Result<Vec<EpisodeRecord>> {
        let counts = self
            .stream
            .clone_dtoh(&self.rec_count)
            .map_err(drv("read record counts"))?;
        if counts.iter().all(|&c| c == 0) {
            return Ok(Vec::new());
        }
        let recs = self
            .stream
            .clone_dtoh(&self.recs)
            .map_err(drv("read episode records"))?;
        let cap = RECORD_CAP as usize;
        let mut out = Vec::new();
        let mut lost = 0usize;
        for (n, &c) in counts.iter().enumerate() {
            let c = c as usize;
            out.extend(
                recs[n * cap..n * cap + c.min(cap)]
                    .iter()
                    .map(EpisodeRecord::from),
            );
            lost += c.saturating_sub(cap);
        }
        let zeros = vec![0u32; counts.len()];
        self.stream
            .memcpy_htod(&zeros, &mut self.rec_count)
            .map_err(drv("reset record counts"))?;
        if lost > 0 {
            return Err(backend_err(format!(
                "{lost} episode records were lost: more than {cap} episodes of one scenario finished between two drains"
            )));
        }
        Ok(out)
    }
}
