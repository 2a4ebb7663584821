/*!
The CUDA backend: the whole step of docs/env-spec.md as handwritten kernels (`kernels/`), compiled
at run time with NVRTC ([`nvrtc`]) and launched with cudarc. No CUDA toolkit is needed to build;
running needs an NVIDIA driver and NVRTC (docs/gpu.md).

Layout on the device, struct-of-arrays like the CPU backend:
- market data `[P, T, S + 1]` (open, close, volume), sentiment, macro, features: uploaded once;
- per-scenario `ScenarioState` `[N]` (the `#[repr(C)]` struct of `env`, mirrored in
  `kernels/env_logic.cuh`), per-symbol `q, entry, peak_px, dsr_a, dsr_b` `[N, S]` f64 and
  `entry_k` `[N, S]` u32, episode accumulators `[N, 7]`;
- step outputs (rewards, components, master reward, dones) packed in one allocation
  ([`OutputPack`]), the packed step inputs, finished-episode records.

The host side (buffers, which copy and which launch each call makes) is the device driver
[`DeviceEnv`] of [`super::device`]; this module provides its [`Device`], [`CudaDevice`]: a context,
the backend's own non-blocking stream, the loaded kernels with their launch geometry, and pinned
staging for the packed step inputs and outputs (one copy each way per step).
Every kernel takes one argument struct by value (`kernels/abi.cuh`, mirrored by [`super::abi`]),
built by the driver from the device addresses of its buffers ([`super::abi::EnvBuffers`]) with the
constructors the host parity test uses (`EnvStepArgs::new`, ...).

One step is one fused kernel (`env_step`): a block per scenario, threads over symbols, per-scenario
reductions as ordered folds in shared memory so that the results equal the CPU backend's bit for
bit (`kernels/common.cuh`). Whole rollouts can stay on the device: [`CudaBackend::random_rollout`]
samples actions on the device (`kernels/sampler.cu`, or fused into the step, `kernels/rollout.cu`),
steps and gathers observations with no host round trip, optionally as one CUDA graph
([`RolloutMode`]), and times itself with CUDA events.

The same kernel source, compiled for the host by build.rs, is checked against the CPU backend in
`tests/host_parity.rs` on every CI run, entered through the kernels' own per-block entry points
with the same argument structs; `tests/nvrtc_compile.rs` compiles every kernel with NVRTC;
`tests/cuda_parity.rs` (ignored: needs an NVIDIA GPU) steps both backends side by side.
*/

pub mod nvrtc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cudarc::driver::sys::{
    CUdevice_attribute, CUfunction_attribute_enum, CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::abi::{
    DEFAULT_SMEM_LIMIT, KernelResources, ROWS_BLOCK, check_launch, step_block_threads,
    step_carry_in_smem, step_smem_bytes,
};
use super::device::{Device, DeviceEnv, Launch, OutputPack, TransferCounts};
use super::{Backend, EnvLayout, EpisodeRecord, N_ACTIONS, Snapshot, StepOutputs};
use crate::data::MarketData;
use crate::error::{Error, Result};
use crate::features::Features;
use crate::priors::PriorCache;

/// Kernel headers, passed to NVRTC in memory under these include names.
pub const HEADERS: [(&str, &str); 7] = [
    ("abi.cuh", include_str!("../../kernels/abi.cuh")),
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    ("env_logic.cuh", include_str!("../../kernels/env_logic.cuh")),
    ("scenario.cuh", include_str!("../../kernels/scenario.cuh")),
    ("obs.cuh", include_str!("../../kernels/obs.cuh")),
    ("policy.cuh", include_str!("../../kernels/policy.cuh")),
    (
        "master_obs.cuh",
        include_str!("../../kernels/master_obs.cuh"),
    ),
];

/// Kernel programs: (file name, source, kernels it defines).
pub const PROGRAMS: [(&str, &str, &[&str]); 6] = [
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
        "rollout.cu",
        include_str!("../../kernels/rollout.cu"),
        &["env_step_sampled"],
    ),
    (
        "master_obs.cu",
        include_str!("../../kernels/master_obs.cu"),
        &["master_obs"],
    ),
    (
        "policy.cu",
        include_str!("../../kernels/policy.cu"),
        &["sample_policy"],
    ),
];

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

/// The PTX of one kernel program (`PROGRAMS`' file name, e.g. `"policy.cu"`) for `arch`
/// (e.g. `compute_90`), compiled once per process with every program: for a learner that loads
/// a kernel into its own context (`agents::dist::draw_actions` on candle's device).
pub fn program_ptx(arch: &str, program: &str) -> Result<String> {
    let progs = cached_ptx(arch)?;
    progs
        .iter()
        .find(|p| p.name == program)
        .map(|p| p.ptx.clone())
        .ok_or_else(|| backend_err(format!("no kernel program named {program}")))
}

/// The launch of a row kernel (`__launch_bounds__(MARL_ROWS_BLOCK)`, one thread per index) over
/// `threads` threads: blocks of [`ROWS_BLOCK`], at least one.
pub fn rows_launch(threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads.div_ceil(ROWS_BLOCK).max(1) as u32, 1, 1),
        block_dim: (ROWS_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn backend_err(message: impl Into<String>) -> Error {
    Error::backend("cuda", message)
}

fn drv(what: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| backend_err(format!("{what}: {e}"))
}

/// How [`CudaBackend::random_rollout`] launches its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutMode {
    /// `sample_actions` then `env_step` per step (two launches; plus `gather_obs`).
    Separate,
    /// `env_step_sampled` per step: the sampler fused into the step (one launch; plus `gather_obs`).
    Fused,
    /// The fused launches of the whole rollout captured once into a CUDA graph and launched as one
    /// graph; capture and instantiation are timed apart ([`RolloutTiming::setup_ms`]).
    Graph,
}

impl std::str::FromStr for RolloutMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "separate" => Ok(Self::Separate),
            "fused" => Ok(Self::Fused),
            "graph" => Ok(Self::Graph),
            o => Err(Error::invalid(format!(
                "unknown rollout mode `{o}` (expected separate, fused or graph)"
            ))),
        }
    }
}

/// Timing of a device-side rollout ([`CudaBackend::random_rollout`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutTiming {
    /// Steps timed.
    pub steps: usize,
    /// How the steps were launched.
    pub mode: RolloutMode,
    /// Device time between two CUDA events recorded on the backend's stream before the first
    /// and after the last launch (for `Graph`: around the one graph launch).
    pub device_ms: f32,
    /// Host wall time of the same window, enqueue plus waiting for the end event.
    pub host_ms: f64,
    /// `Graph` only: host time to capture and instantiate the graph (not in `device_ms`).
    pub setup_ms: f64,
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
    step_sampled: CudaFunction,
    gather_obs: CudaFunction,
    dyn_obs: CudaFunction,
    mask: CudaFunction,
    sample: CudaFunction,
    master_obs: CudaFunction,
    sample_policy: CudaFunction,
}

/// Page-locked host memory (`cuMemHostAlloc`), so that copies from and to it are real DMA
/// transfers that can run asynchronously.
struct Pinned {
    ptr: *mut u8,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the allocation is owned by this value alone and only accessed through `&mut self` /
// `&self` borrows of it; the pointer is never shared with another thread by this type.
unsafe impl Send for Pinned {}

impl Pinned {
    fn new(ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<Self> {
        ctx.bind_to_thread().map_err(drv("bind context"))?;
        // SAFETY: cuMemHostAlloc with a positive size; the result is checked and freed in Drop.
        let ptr = unsafe { cudarc::driver::result::malloc_host(len.max(1), flags) }
            .map_err(drv("pinned host allocation"))? as *mut u8;
        // SAFETY: fresh allocation of len bytes; zero it so it is never read uninitialised.
        unsafe { std::ptr::write_bytes(ptr, 0, len.max(1)) };
        Ok(Self {
            ptr,
            len,
            ctx: ctx.clone(),
        })
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: ptr came from cuMemHostAlloc and is freed once; the device has finished with
        // it (the owner synchronises its stream before dropping, `CudaDevice::drop`).
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr.cast()) };
    }
}

/// The GPU as a [`Device`] of the device driver ([`super::device`]): a context on GPU 0, the
/// backend's own non-blocking stream (not the legacy default stream), the loaded kernels and their
/// launch geometry, every buffer, and pinned staging for the packed step inputs and outputs.
pub struct CudaDevice {
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
    n: u32,
    rows: usize,
    allocs: Vec<CudaSlice<u8>>,
    stage_in: Option<Pinned>,
    stage_out: Option<Pinned>,
    /// Recorded after every staged upload: the input staging is rewritten only after it.
    in_done: CudaEvent,
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // the pinned staging may still be read by a pending copy
        let _ = self.stream.synchronize();
    }
}

impl CudaDevice {
    /// Check for the driver, create the context and stream, compile (once per process) and load
    /// the kernels, and check the launch geometry for `n` scenarios x `s` symbols against what
    /// the driver reports. Errors are of kind `ErrorKind::BackendUnavailable`.
    pub fn new(n: usize, s: usize) -> Result<Self> {
        // SAFETY: only probes whether the driver library can be dlopen'ed; no CUDA call is made.
        // (The `gpu` build links the driver library instead of loading it: a binary that started
        // has it, and a driver that cannot run returns an error from `cuInit` below.)
        #[cfg(not(feature = "gpu"))]
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(backend_err(
                "no NVIDIA driver library (libcuda.so) found: the CUDA backend needs an NVIDIA GPU and its driver \
                 (use --backend cpu here; see docs/gpu.md)",
            ));
        }
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
        // SAFETY: every copy and launch of the backend is ordered on its one stream; other streams
        // order themselves against it with events (`CudaBackend::record_event` / `wait_event`), so
        // cudarc's per-buffer events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(drv("creating the backend's stream"))?;
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
            step_sampled: take("env_step_sampled"),
            gather_obs: take("gather_obs"),
            dyn_obs: take("dyn_obs"),
            mask: take("action_mask"),
            sample: take("sample_actions"),
            master_obs: take("master_obs"),
            sample_policy: take("sample_policy"),
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
                "env_step" | "env_step_sampled" => (
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
            for f in [&k.step, &k.step_sampled] {
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(drv("raising the step kernel's dynamic shared memory limit"))?;
            }
        }
        let in_done = ctx.new_event(None).map_err(drv("event"))?;
        Ok(Self {
            ctx,
            stream,
            k,
            resources,
            block: block as u32,
            smem: smem as u32,
            carry_in_smem: carry,
            n: n as u32,
            rows: n * s,
            allocs: Vec::new(),
            stage_in: None,
            stage_out: None,
            in_done,
        })
    }

    fn rows_cfg(&self, per_row_threads: usize) -> LaunchConfig {
        rows_launch(self.rows * per_row_threads)
    }

    /// One thread per scenario (the master observation).
    fn scen_cfg(&self) -> LaunchConfig {
        rows_launch(self.n as usize)
    }

    fn block_cfg(&self, smem: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.n, 1, 1),
            block_dim: (self.block, 1, 1),
            shared_mem_bytes: smem,
        }
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv("bind context"))
    }
}

impl Device for CudaDevice {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn carry_in_smem(&self) -> bool {
        self.carry_in_smem
    }

    fn alloc(&mut self, bytes: usize, what: &str) -> Result<u64> {
        let buf = self
            .stream
            .alloc_zeros::<u8>(bytes.max(8))
            .map_err(drv(&format!("allocating {what}")))?;
        // With event tracking off the `SyncOnDrop` guard records nothing; the address stays valid
        // while the slice lives in `allocs` (never reallocated, freed with the device).
        let a = buf.device_ptr(&self.stream).0;
        self.allocs.push(buf);
        Ok(a)
    }

    fn alloc_staging(&mut self, input_bytes: usize, output_bytes: usize) -> Result<()> {
        use cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED;
        // inputs: written by the host, read only by the DMA engine (write-combined is faster);
        // outputs: read by the host, so plain cached pinned memory
        self.stage_in = Some(Pinned::new(
            &self.ctx,
            input_bytes,
            CU_MEMHOSTALLOC_WRITECOMBINED,
        )?);
        self.stage_out = Some(Pinned::new(&self.ctx, output_bytes, 0)?);
        Ok(())
    }

    fn upload(&mut self, dst: u64, src: &[u8], what: &str) -> Result<()> {
        self.bind()?;
        // SAFETY: dst is an allocation of this device holding at least src.len() bytes (the
        // driver's contract); a copy from pageable memory returns once the source has been staged,
        // so src may be dropped after the call.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(drv(&format!("upload {what}")))
    }

    fn download(&self, src: u64, dst: &mut [u8], what: &str) -> Result<()> {
        self.bind()?;
        // SAFETY: src holds at least dst.len() bytes; the stream is synchronised before dst is
        // used or dropped.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(drv(&format!("read {what}")))?;
        self.stream
            .synchronize()
            .map_err(drv(&format!("read {what}")))
    }

    fn zero(&mut self, dst: u64, bytes: usize, what: &str) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least `bytes` bytes (the driver's contract).
        unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(drv(&format!("zero {what}")))
    }

    fn input_staging(&mut self) -> Result<&mut [u8]> {
        self.in_done
            .synchronize()
            .map_err(drv("wait for the previous action upload"))?;
        Ok(self
            .stage_in
            .as_mut()
            .expect("alloc_staging ran at construction")
            .as_mut_slice())
    }

    fn upload_staged(&mut self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        let st = self.stage_in.as_ref().expect("alloc_staging ran");
        // SAFETY: pinned source of at least `bytes` bytes; it is not rewritten before `in_done`
        // (recorded just after) has completed (`input_staging` waits for it); dst holds `bytes`.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                dst,
                &st.as_slice()[..bytes],
                self.stream.cu_stream(),
            )
        }
        .map_err(drv("upload actions"))?;
        self.in_done
            .record(&self.stream)
            .map_err(drv("record upload event"))
    }

    fn download_staged(&mut self, src: u64, bytes: usize) -> Result<&[u8]> {
        self.bind()?;
        let st = self.stage_out.as_mut().expect("alloc_staging ran");
        // SAFETY: src holds `bytes` bytes; the pinned destination is read only after the stream
        // has been synchronised below.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                &mut st.as_mut_slice()[..bytes],
                src,
                self.stream.cu_stream(),
            )
        }
        .map_err(drv("read step outputs"))?;
        self.stream
            .synchronize()
            .map_err(drv("read step outputs"))?;
        Ok(&self.stage_out.as_ref().expect("allocated").as_slice()[..bytes])
    }

    fn launch(&mut self, l: Launch<'_>) -> Result<()> {
        let (f, cfg, name) = match l {
            Launch::Reset(_) => (&self.k.reset, self.block_cfg(0), "env_reset"),
            Launch::Step(_) => (&self.k.step, self.block_cfg(self.smem), "env_step"),
            Launch::StepSampled(..) => (
                &self.k.step_sampled,
                self.block_cfg(self.smem),
                "env_step_sampled",
            ),
            Launch::GatherObs(_) => (&self.k.gather_obs, self.rows_cfg(32), "gather_obs"),
            Launch::DynObs(_) => (&self.k.dyn_obs, self.rows_cfg(1), "dyn_obs"),
            Launch::Mask(_) => (&self.k.mask, self.rows_cfg(1), "action_mask"),
            Launch::Sample(_) => (&self.k.sample, self.rows_cfg(1), "sample_actions"),
            Launch::MasterObs(_) => (&self.k.master_obs, self.scen_cfg(), "master_obs"),
            Launch::SamplePolicy(_) => (&self.k.sample_policy, self.rows_cfg(1), "sample_policy"),
        };
        let mut b = self.stream.launch_builder(f);
        match l {
            Launch::Reset(a) => b.arg(a),
            Launch::Step(a) => b.arg(a),
            Launch::StepSampled(a, sa) => b.arg(a).arg(sa),
            Launch::GatherObs(a) | Launch::DynObs(a) => b.arg(a),
            Launch::Mask(a) => b.arg(a),
            Launch::Sample(a) => b.arg(a),
            Launch::MasterObs(a) => b.arg(a),
            Launch::SamplePolicy(a) => b.arg(a),
        };
        // SAFETY: each kernel (kernels/*.cu) takes exactly the argument struct(s) of its `Launch`
        // variant by value, whose layout equals the C struct's (`abi_layout_matches`); every address
        // in them is a live allocation of this device (or, for `DeviceEnv::launch_step_from`, the
        // caller's, length-checked by `CudaBackend::step_device`) with the length the kernel indexes,
        // built by the `env::abi` constructors from `DeviceEnv`'s buffers; the block kernels get one
        // block per scenario and `smem` bytes (`step_smem_bytes`, allowed via the function
        // attribute when above 48 KiB); the row kernels bounds-check their row; all work is
        // ordered on this device's one stream.
        unsafe { b.launch(cfg) }.map_err(drv(&format!("{name} launch")))?;
        Ok(())
    }
}

// SAFETY: `#[repr(C)]` `bytemuck::Pod` struct without padding, mirrored field for field by
// `MasterObsArgs` in kernels/master_obs.cuh (sizes and offsets checked by tests/master_obs.rs,
// `master_obs_abi_matches`); passed to `master_obs` by value.
unsafe impl cudarc::driver::DeviceRepr for super::master_obs::MasterObsArgs {}

/// The CUDA backend (see the module docs): the device driver ([`DeviceEnv`]) on a [`CudaDevice`],
/// plus what only a GPU offers (device-resident rollouts, CUDA graphs, events for other streams).
pub struct CudaBackend {
    env: DeviceEnv<CudaDevice>,
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
        let dev = CudaDevice::new(layout.n_scenarios, layout.n_symbols)?;
        let env = DeviceEnv::create(dev, layout, &data, &features, priors.as_deref())?;
        Ok(Self { env })
    }

    /// The device driver under the backend (buffer addresses, packed layouts, copy counts).
    pub fn driver(&self) -> &DeviceEnv<CudaDevice> {
        &self.env
    }

    /// Copies, memsets and launches so far ([`TransferCounts`]).
    pub fn counts(&self) -> TransferCounts {
        self.env.counts()
    }

    /// The device's name and compute capability, for reports.
    pub fn device_description(&self) -> String {
        let ctx = &self.env.device().ctx;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let cc = ctx
            .compute_capability()
            .map(|(a, b)| format!("sm_{a}{b}"))
            .unwrap_or_default();
        format!("{name} ({cc})")
    }

    /// What the driver reported for every kernel at load time (threads per block it allows,
    /// registers, local memory, static shared memory), and the step's launch: threads per block,
    /// dynamic shared memory, whether the carry is in shared memory.
    pub fn kernel_resources(&self) -> (&[(&'static str, KernelResources)], u32, u32, bool) {
        let d = self.env.device();
        (&d.resources, d.block, d.smem, d.carry_in_smem)
    }

    /// The backend's own stream (non-blocking, not the legacy default stream): every copy and
    /// launch of the backend is ordered on it (event tracking is off). Work of another stream that
    /// reads or writes the backend's device buffers must be ordered against it with events:
    /// [`Self::record_event`] after the backend's work, the other stream's `wait`; and
    /// [`Self::wait_event`] before the backend reads what the other stream wrote.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.env.device().stream
    }

    /// An event recorded now on the backend's stream: it completes when every step, observation
    /// gather and copy enqueued so far has run. A learner on another stream calls
    /// `its_stream.wait(&event)` before reading [`Self::outputs_device`] / the observations.
    pub fn record_event(&self) -> Result<CudaEvent> {
        self.stream()
            .record_event(None)
            .map_err(drv("record an event on the backend's stream"))
    }

    /// Make the backend's stream wait for `event` (recorded on another stream of this context,
    /// e.g. after a policy wrote the actions for [`Self::step_device`]) before its later work.
    pub fn wait_event(&self, event: &CudaEvent) -> Result<()> {
        self.stream()
            .wait(event)
            .map_err(drv("wait for an event on the backend's stream"))
    }

    /// Draw a policy's actions on the device (`kernels/policy.cu`) from its log-probabilities
    /// `[N * S, 7]` (masked actions `-inf`), with draws `draws + r` of the trainer's SplitMix64
    /// action stream `seed` for row `r` (`train::ResumableRng`'s state at the start of the step):
    /// the actions into `actions` `[N * S]` u32, their log-probabilities into `logp`, and, when
    /// given, into `env_actions` `[N * S]` u8 for [`Self::step_device`]. The buffers are the
    /// caller's (a learner's tensors on this GPU), written in the order of [`Self::stream`] (or
    /// made visible to it with [`Self::wait_event`]). One launch, no copy; the same draws as
    /// `agents::dist::sample_row` on the host (tests/host_parity.rs runs this kernel's code there).
    pub fn sample_policy(
        &mut self,
        log_probs: &CudaSlice<f32>,
        seed: u64,
        draws: u64,
        actions: &mut CudaSlice<u32>,
        logp: &mut CudaSlice<f32>,
        env_actions: Option<&mut CudaSlice<u8>>,
    ) -> Result<()> {
        let rows = self.env.layout().n_scenarios * self.env.layout().n_symbols;
        check_len(
            "policy log-probabilities",
            log_probs.len(),
            rows * N_ACTIONS,
        )?;
        check_len("policy actions", actions.len(), rows)?;
        check_len("policy log-probabilities of the actions", logp.len(), rows)?;
        if let Some(e) = &env_actions {
            check_len("device symbol actions", e.len(), rows)?;
        }
        let st = self.stream().clone();
        let lp = log_probs.device_ptr(&st).0;
        let a = actions.device_ptr_mut(&st).0;
        let l = logp.device_ptr_mut(&st).0;
        let e = env_actions.map(|e| e.device_ptr_mut(&st).0);
        self.env.launch_sample_policy(lp, seed, draws, a, l, e)
    }

    /// One step with actions already on the device: symbol actions `[N, S]` and master actions
    /// `[N]`, allocated on this backend's context and written in the order of [`Self::stream`]
    /// (or made visible to it with [`Self::wait_event`]). Equivalent to [`Backend::step`] with the
    /// same values, without the host-to-device copy.
    pub fn step_device(&mut self, actions: &CudaSlice<u8>, master: &CudaSlice<u8>) -> Result<()> {
        let (n, s) = (self.env.layout().n_scenarios, self.env.layout().n_symbols);
        check_len("device symbol actions", actions.len(), n * s)?;
        check_len("device master actions", master.len(), n)?;
        let st = self.stream().clone();
        let a = actions.device_ptr(&st).0;
        let m = master.device_ptr(&st).0;
        self.env.launch_step_from(a, m)
    }

    /// The dynamic observation `[N, S, DYN_OBS]` f32 into a device buffer (no copy to the host);
    /// returns its device address, valid for the backend's life, rewritten by the next call.
    pub fn dyn_obs_device(&mut self) -> Result<u64> {
        self.env.dyn_obs_device()
    }

    /// The action mask `[N, S, 7]` u8 into a device buffer (no copy to the host); returns its
    /// device address, as [`Self::dyn_obs_device`].
    pub fn mask_device(&mut self) -> Result<u64> {
        self.env.mask_device()
    }

    /// Gather full observations `[N, S, OBS_DIM]` f32 into a device buffer (no copy to the host)
    /// and return its device address: the input of a policy on the same GPU, valid for the
    /// backend's life, rewritten by the next gather.
    pub fn gather_obs_device(&mut self) -> Result<u64> {
        self.env.gather_obs_device()
    }

    /// The packed step outputs on the device ([`OutputPack`]: rewards `[N, S]`, components, master
    /// rewards `[N]`, turnover `[N]`, terminated and truncated `[N]` at its offsets) and their device address, for
    /// a learner on the same GPU.
    pub fn outputs_device(&self) -> (OutputPack, u64) {
        self.env.outputs_device()
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
        self.env.sample_actions(seed, it, fixed_master)
    }

    fn enqueue_rollout(
        &mut self,
        steps: usize,
        seed: u64,
        fixed_master: Option<u8>,
        with_obs: bool,
        fused: bool,
    ) -> Result<()> {
        for it in 0..steps as u64 {
            if fused {
                self.env.launch_step_sampled(seed, it, fixed_master)?;
            } else {
                self.env.launch_sample(seed, it, fixed_master)?;
                self.env.launch_step()?;
            }
            if with_obs {
                self.env.gather_obs_device()?;
            }
        }
        Ok(())
    }

    /// Run `steps` steps entirely on the device with random actions from the sampler (master
    /// action `fixed_master`, or uniform when `None`), gathering full observations after every
    /// step when `with_obs`, launched as `mode` says. The step `it` draws with counter `it`, so
    /// every mode computes the same states (`cuda_parity::rollout_modes_agree`). Timed with CUDA
    /// events on the backend's stream (device time) and the host clock; with `profile`, the timed
    /// window is bracketed by `cuProfilerStart` / `cuProfilerStop` (nsys `--capture-range=cudaProfilerApi`).
    /// The episode records of the rollout are counted, not kept.
    pub fn random_rollout(
        &mut self,
        steps: usize,
        seed: u64,
        fixed_master: Option<u8>,
        with_obs: bool,
        mode: RolloutMode,
        profile: bool,
    ) -> Result<RolloutTiming> {
        // drain first, so that the count below is this rollout's
        self.env.zero_record_counts()?;
        if with_obs {
            self.env.gather_obs_device()?; // allocate outside the timed region
        }
        let mut setup_ms = 0.0;
        let graph = if mode == RolloutMode::Graph {
            let t = Instant::now();
            let st = self.stream().clone();
            st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(drv("begin graph capture"))?;
            let r = self.enqueue_rollout(steps, seed, fixed_master, with_obs, true);
            let g = st.end_capture(CUgraphInstantiate_flags(0));
            r?;
            let g = g
                .map_err(drv("end graph capture / instantiate"))?
                .ok_or_else(|| backend_err("graph capture produced no graph"))?;
            g.upload().map_err(drv("upload graph"))?;
            st.synchronize().map_err(drv("upload graph"))?;
            setup_ms = t.elapsed().as_secs_f64() * 1e3;
            Some(g)
        } else {
            None
        };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ctx = self.env.device().ctx.clone();
        let start = ctx.new_event(timing).map_err(drv("event"))?;
        let end = ctx.new_event(timing).map_err(drv("event"))?;
        self.stream()
            .synchronize()
            .map_err(drv("synchronise before the timed window"))?;
        if profile {
            cudarc::driver::profiler_start().map_err(drv("cuProfilerStart"))?;
        }
        let t = Instant::now();
        start.record(self.stream()).map_err(drv("event record"))?;
        match &graph {
            Some(g) => g.launch().map_err(drv("graph launch"))?,
            None => self.enqueue_rollout(
                steps,
                seed,
                fixed_master,
                with_obs,
                mode == RolloutMode::Fused,
            )?,
        }
        end.record(self.stream()).map_err(drv("event record"))?;
        end.synchronize().map_err(drv("event synchronize"))?;
        let host_ms = t.elapsed().as_secs_f64() * 1e3;
        if profile {
            cudarc::driver::profiler_stop().map_err(drv("cuProfilerStop"))?;
        }
        let ms = start.elapsed_ms(&end).map_err(drv("event elapsed"))?;
        let counts = self.env.record_counts()?;
        self.env.zero_record_counts()?;
        let ss = (steps * self.env.layout().n_scenarios) as f64;
        Ok(RolloutTiming {
            steps,
            mode,
            device_ms: ms,
            host_ms,
            setup_ms,
            scenario_steps_per_s: if ms > 0.0 {
                ss / (ms as f64 / 1e3)
            } else {
                f64::INFINITY
            },
            episodes_finished: counts.iter().map(|&c| c as u64).sum(),
        })
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::invalid(format!(
            "{what}: buffer holds {got} values, expected {want}"
        )));
    }
    Ok(())
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn layout(&self) -> &EnvLayout {
        self.env.layout()
    }
    fn reset(&mut self, seed: u64) -> Result<()> {
        self.env.reset(seed)
    }
    fn step(&mut self, symbol_actions: &[u8], master_actions: &[u8]) -> Result<()> {
        self.env.step(symbol_actions, master_actions)
    }
    fn read_outputs(&mut self, out: &mut StepOutputs) -> Result<()> {
        self.env.read_outputs(out)
    }
    fn dyn_obs(&mut self, out: &mut [f32]) -> Result<()> {
        self.env.dyn_obs(out)
    }
    fn gather_obs(&mut self, out: &mut [f32]) -> Result<()> {
        self.env.gather_obs(out)
    }
    fn action_mask(&mut self, out: &mut [u8]) -> Result<()> {
        self.env.action_mask(out)
    }
    fn obs_index(&mut self, out: &mut [u32]) -> Result<()> {
        self.env.obs_index(out)
    }
    fn snapshot(&self) -> Result<Snapshot> {
        self.env.snapshot()
    }
    fn load_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        self.env.load_snapshot(snap)
    }
    fn drain_episodes(&mut self) -> Result<Vec<EpisodeRecord>> {
        self.env.drain_episodes()
    }
    fn master_obs(
        &mut self,
        intents: &[f32],
        anchors: &mut [super::master_obs::MasterAnchor],
        out: &mut [f32],
    ) -> Result<()> {
        self.env.master_obs(intents, anchors, out)
    }
}
