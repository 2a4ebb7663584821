/*!
The device-side environment driver: everything the CUDA backend does on the host around its
kernels (buffer layout, the packed step inputs and outputs, which copy and which launch each
[`Backend`] call makes), written once over a small [`Device`] trait, so the same code runs against
the GPU (`env::cuda::CudaDevice`, the `cuda` feature) and against the kernels compiled for the
host (`tests/device_env.rs`, no GPU needed), where it is checked against the CPU backend and its
host<->device copies are counted.

Per step, the host-driven loop (`VecEnv::step`: [`Backend::step`] then [`Backend::read_outputs`])
makes **one** host-to-device copy (symbol and master actions packed into one staging buffer,
[`InputPack`]; pinned host memory on CUDA) and **one** device-to-host copy (rewards, components,
master rewards, turnover and both done flags live in one device allocation, [`OutputPack`], read into a pinned
staging buffer); finished-episode records cost two more reads and a memset, only on a step with a
done. [`DeviceEnv::counts`] counts every copy, memset and launch the driver asks of its device
([`TransferCounts`]); every [`Device`] method is one driver call (one copy, one memset, one launch).
*/

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::abi::{
    EnvBuffers, EnvDims, EnvResetArgs, EnvStepArgs, EpisodeRecordC, MaskArgs, ObsArgs,
    PolicySampleArgs, SampleArgs,
};
use super::master_obs::{MASTER_INTENTS, MASTER_OBS, MasterAnchor, MasterObsArgs};
use super::obs::{DYN_OBS, OBS_DIM};
use super::{
    Backend, EnvLayout, EpisodeRecord, N_ACTIONS, ScenarioState, Snapshot, StepOutputs, SymbolState,
};
use crate::data::MarketData;
use crate::error::{Error, Result};
use crate::features::Features;
use crate::priors::PriorCache;
use crate::reward::N_COMPONENTS;

/// Episode-record slots per scenario on the device. `VecEnv` drains after every step with a done,
/// so one slot would do; device rollouts count finished episodes without keeping them.
pub const RECORD_CAP: u32 = 4;

/// One kernel launch with its argument struct; the device picks the geometry (a block per scenario
/// for reset and step, rows of threads for the others).
#[derive(Debug, Clone, Copy)]
pub enum Launch<'a> {
    /// `env_reset`.
    Reset(&'a EnvResetArgs),
    /// `env_step`.
    Step(&'a EnvStepArgs),
    /// `env_step_sampled`: the sampler's draws for the block's scenario, then the step, in one
    /// kernel (benchmark rollouts; the actions are also left in the sampler's buffers).
    StepSampled(&'a EnvStepArgs, &'a SampleArgs),
    /// `gather_obs`.
    GatherObs(&'a ObsArgs),
    /// `dyn_obs`.
    DynObs(&'a ObsArgs),
    /// `action_mask`.
    Mask(&'a MaskArgs),
    /// `sample_actions`.
    Sample(&'a SampleArgs),
    /// `master_obs`: one thread per scenario (kernels/master_obs.cu, spec §8).
    MasterObs(&'a MasterObsArgs),
    /// `sample_policy`: one thread per row (`N * S` rows), the policy's actions drawn from its
    /// log-probabilities (kernels/policy.cu).
    SamplePolicy(&'a PolicySampleArgs),
}

/// What the driver needs of a device. Addresses are the device's (`u64`, as in the kernels'
/// argument structs). Every method that copies, sets or launches is exactly one such operation, so
/// [`DeviceEnv`]'s counts are the device's.
pub trait Device: Send {
    /// The backend name reported by [`Backend::name`].
    fn name(&self) -> &'static str;
    /// Whether the step keeps its per-symbol carry in shared memory (else in `scratch`/`opener`).
    fn carry_in_smem(&self) -> bool;
    /// A zeroed device buffer of `bytes` bytes (at least 8-byte aligned), alive as long as the
    /// device.
    fn alloc(&mut self, bytes: usize, what: &str) -> Result<u64>;
    /// The host staging buffers of the packed step inputs and outputs (pinned memory on CUDA),
    /// allocated once.
    fn alloc_staging(&mut self, input_bytes: usize, output_bytes: usize) -> Result<()>;
    /// One host-to-device copy of `src` to `dst` (pageable host memory: setup and snapshots).
    fn upload(&mut self, dst: u64, src: &[u8], what: &str) -> Result<()>;
    /// One device-to-host copy of `dst.len()` bytes at `src`; returns when the bytes are there.
    fn download(&self, src: u64, dst: &mut [u8], what: &str) -> Result<()>;
    /// Zero `bytes` bytes at `dst` (one memset on the device's stream).
    fn zero(&mut self, dst: u64, bytes: usize, what: &str) -> Result<()>;
    /// The input staging buffer, to be filled by the host; waits until the previous staged upload
    /// has read it.
    fn input_staging(&mut self) -> Result<&mut [u8]>;
    /// One host-to-device copy of the first `bytes` bytes of the input staging to `dst`.
    fn upload_staged(&mut self, dst: u64, bytes: usize) -> Result<()>;
    /// One device-to-host copy of `bytes` bytes at `src` into the output staging; returns them
    /// when they are there.
    fn download_staged(&mut self, src: u64, bytes: usize) -> Result<&[u8]>;
    /// One kernel launch.
    fn launch(&mut self, launch: Launch<'_>) -> Result<()>;
}

/// Copies, memsets and launches the driver asked of its device (cumulative; subtract two
/// readings with [`TransferCounts::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// Host-to-device copies.
    pub htod: u64,
    /// Their bytes.
    pub htod_bytes: u64,
    /// Device-to-host copies.
    pub dtoh: u64,
    /// Their bytes.
    pub dtoh_bytes: u64,
    /// Device memsets.
    pub memsets: u64,
    /// Kernel launches.
    pub launches: u64,
}

/// The live counter behind [`DeviceEnv::counts`]; a clone of the handle
/// ([`DeviceEnv::counter`]) keeps reading it after the driver has been boxed into a `VecEnv`.
#[derive(Debug, Default)]
pub struct CopyCounter {
    c: [AtomicU64; 6],
}

impl CopyCounter {
    /// The counts so far.
    pub fn get(&self) -> TransferCounts {
        let v = |i: usize| self.c[i].load(Ordering::Relaxed);
        TransferCounts {
            htod: v(0),
            htod_bytes: v(1),
            dtoh: v(2),
            dtoh_bytes: v(3),
            memsets: v(4),
            launches: v(5),
        }
    }
    fn add(&self, i: usize, x: u64) {
        self.c[i].fetch_add(x, Ordering::Relaxed);
    }
}

impl TransferCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &TransferCounts) -> TransferCounts {
        TransferCounts {
            htod: self.htod - earlier.htod,
            htod_bytes: self.htod_bytes - earlier.htod_bytes,
            dtoh: self.dtoh - earlier.dtoh,
            dtoh_bytes: self.dtoh_bytes - earlier.dtoh_bytes,
            memsets: self.memsets - earlier.memsets,
            launches: self.launches - earlier.launches,
        }
    }
}

/// The packed step inputs: symbol actions `[N, S]` u8 at offset 0, master actions `[N]` u8 after
/// them; one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputPack {
    n: usize,
    s: usize,
}

impl InputPack {
    /// The layout for `n` scenarios x `s` symbols.
    pub fn new(n: usize, s: usize) -> Self {
        Self { n, s }
    }
    /// Offset of the master actions.
    pub fn master_offset(&self) -> usize {
        self.n * self.s
    }
    /// Total bytes.
    pub fn bytes(&self) -> usize {
        self.n * self.s + self.n
    }
    /// Write `actions` and `master` into `dst` (at least [`Self::bytes`] long).
    pub fn pack(&self, actions: &[u8], master: &[u8], dst: &mut [u8]) {
        let m = self.master_offset();
        dst[..m].copy_from_slice(actions);
        dst[m..m + self.n].copy_from_slice(master);
    }
    /// Point the step's `actions` / `master` at a packed buffer at device address `base`.
    pub fn apply(&self, base: u64, b: &mut EnvBuffers) {
        b.actions = base;
        b.master = base + self.master_offset() as u64;
    }
}

/// The packed step outputs in one device allocation: rewards `[N, S]` f32 at 0, components
/// `[N, S, 7]` f32, master rewards `[N]` f32, turnover `[N]` f32, terminated `[N]` u8, truncated
/// `[N]` u8; the kernel writes each at its offset and the host reads the whole in one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputPack {
    n: usize,
    s: usize,
}

impl OutputPack {
    /// The layout for `n` scenarios x `s` symbols.
    pub fn new(n: usize, s: usize) -> Self {
        Self { n, s }
    }
    /// Byte offsets of rewards, components, master rewards, turnover, terminated, truncated, and
    /// the end.
    pub fn offsets(&self) -> [usize; 7] {
        let ns = self.n * self.s;
        let comps = 4 * ns;
        let master = comps + 4 * ns * N_COMPONENTS;
        let turnover = master + 4 * self.n;
        let term = turnover + 4 * self.n;
        let trunc = term + self.n;
        [0, comps, master, turnover, term, trunc, trunc + self.n]
    }
    /// Total bytes.
    pub fn bytes(&self) -> usize {
        self.offsets()[6]
    }
    /// Point the step's outputs at a packed buffer at device address `base`.
    pub fn apply(&self, base: u64, b: &mut EnvBuffers) {
        let o = self.offsets().map(|x| base + x as u64);
        b.reward = o[0];
        b.comps = o[1];
        b.master_reward = o[2];
        b.turnover = o[3];
        b.terminated = o[4];
        b.truncated = o[5];
    }
    /// Unpack `src` ([`Self::bytes`] long, any alignment) into `out` (resized when its shape differs).
    pub fn unpack(&self, src: &[u8], out: &mut StepOutputs) {
        if out.reward.len() != self.n * self.s || out.master_reward.len() != self.n {
            *out = StepOutputs::new(self.n, self.s);
        }
        let o = self.offsets();
        let f32s = |dst: &mut [f32], i: usize| {
            bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(&src[o[i]..o[i + 1]]);
        };
        f32s(&mut out.reward, 0);
        f32s(&mut out.components, 1);
        f32s(&mut out.master_reward, 2);
        f32s(&mut out.turnover, 3);
        out.terminated.copy_from_slice(&src[o[4]..o[5]]);
        out.truncated.copy_from_slice(&src[o[5]..o[6]]);
    }
}

/// The environment on a [`Device`] (see the module docs): state, data and outputs in device
/// buffers, a [`Backend`] whose every call is a fixed, counted sequence of device operations.
pub struct DeviceEnv<D: Device> {
    dev: D,
    layout: EnvLayout,
    dims: EnvDims,
    /// Device addresses of every buffer (outputs and actions point into the packed buffers).
    bufs: EnvBuffers,
    seed: u64,
    inputs: InputPack,
    outputs: OutputPack,
    /// Device addresses of the packed inputs and outputs.
    in_addr: u64,
    out_addr: u64,
    /// Observation buffers, allocated on first use (0 = not yet).
    obs: u64,
    dyn_buf: u64,
    mask_buf: u64,
    /// The master observation's intents, anchors and output, allocated on first use (0 = not yet).
    master: [u64; 3],
    counts: Arc<CopyCounter>,
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::invalid(format!(
            "{what}: buffer holds {got} values, expected {want}"
        )));
    }
    Ok(())
}

impl<D: Device> DeviceEnv<D> {
    /// Upload the data (and the SL prior cache, `None`: zeros) to `dev`, allocate the state, the
    /// packed inputs and outputs and their host staging. The caller has checked the prior cache
    /// against the data (`VecEnv::new` does).
    pub fn create(
        mut dev: D,
        layout: EnvLayout,
        data: &MarketData,
        features: &Features,
        priors: Option<&PriorCache>,
    ) -> Result<Self> {
        let (n, s) = (layout.n_scenarios, layout.n_symbols);
        if n == 0 || s == 0 || n.checked_mul(s).is_none_or(|ns| ns > u32::MAX as usize) {
            return Err(Error::invalid(format!(
                "{} backend: unsupported N = {n}, S = {s} (both positive, N x S below 2^32)",
                dev.name()
            )));
        }
        let ns = n * s;
        let mut up = |v: &[f32], what: &str| -> Result<u64> {
            let a = dev.alloc(v.len().max(1) * 4, what)?;
            dev.upload(a, bytemuck::cast_slice(v), what)?;
            Ok(a)
        };
        let open = up(&data.open, "open prices")?;
        let close = up(&data.close, "close prices")?;
        let volume = up(&data.volume, "volume")?;
        let sentiment = up(&data.sentiment, "sentiment")?;
        let macro_series = up(&data.macro_series, "macro series")?;
        let regime = up(&features.regime, "regime features")?;
        let tech = up(&features.tech, "technical features")?;
        let sl = match priors {
            Some(c) => up(&c.values, "SL prior cache")?,
            None => 0,
        };
        let carry = dev.carry_in_smem();
        let mut z = |bytes: usize, what: &str| dev.alloc(bytes.max(8), what);
        let mut bufs = EnvBuffers {
            open,
            close,
            volume,
            sentiment,
            macro_series,
            regime,
            tech,
            sl,
            scen: z(n * size_of::<ScenarioState>(), "scenario state")?,
            q: z(8 * ns, "q")?,
            entry: z(8 * ns, "entry")?,
            peak_px: z(8 * ns, "peak_px")?,
            dsr_a: z(8 * ns, "dsr_a")?,
            dsr_b: z(8 * ns, "dsr_b")?,
            entry_k: z(4 * ns, "entry_k")?,
            comp_sum: z(8 * n * N_COMPONENTS, "comp_sum")?,
            comp_sumsq: z(8 * n * N_COMPONENTS, "comp_sumsq")?,
            comp_count: z(8 * n, "comp_count")?,
            recs: z(
                n * RECORD_CAP as usize * size_of::<EpisodeRecordC>(),
                "episode records",
            )?,
            rec_count: z(4 * n, "record counts")?,
            scratch: z(if carry { 8 } else { 8 * 5 * ns }, "step scratch")?,
            opener: z(if carry { 8 } else { 4 * ns }, "step opener flags")?,
            ..EnvBuffers::default()
        };
        let inputs = InputPack::new(n, s);
        let outputs = OutputPack::new(n, s);
        let in_addr = z(inputs.bytes(), "packed step inputs")?;
        let out_addr = z(outputs.bytes(), "packed step outputs")?;
        inputs.apply(in_addr, &mut bufs);
        outputs.apply(out_addr, &mut bufs);
        dev.alloc_staging(inputs.bytes(), outputs.bytes())?;
        Ok(Self {
            dev,
            dims: EnvDims::new(&layout, RECORD_CAP),
            layout,
            bufs,
            seed: 0,
            inputs,
            outputs,
            in_addr,
            out_addr,
            obs: 0,
            dyn_buf: 0,
            mask_buf: 0,
            master: [0; 3],
            counts: Arc::default(),
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Every copy, memset and launch so far.
    pub fn counts(&self) -> TransferCounts {
        self.counts.get()
    }

    /// A handle on the live counts.
    pub fn counter(&self) -> Arc<CopyCounter> {
        self.counts.clone()
    }

    /// Device addresses of every buffer.
    pub fn buffers(&self) -> &EnvBuffers {
        &self.bufs
    }

    /// The kernels' dimensions.
    pub fn dims(&self) -> &EnvDims {
        &self.dims
    }

    /// The seed of the last reset.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The packed outputs' layout and device address (a learner on the device reads them there).
    pub fn outputs_device(&self) -> (OutputPack, u64) {
        (self.outputs, self.out_addr)
    }

    /// The packed inputs' layout and device address (the sampler writes there).
    pub fn inputs_device(&self) -> (InputPack, u64) {
        (self.inputs, self.in_addr)
    }

    fn launch(&mut self, l: Launch<'_>) -> Result<()> {
        self.dev.launch(l)?;
        self.counts.add(5, 1);
        Ok(())
    }

    fn upload(&mut self, dst: u64, src: &[u8], what: &str) -> Result<()> {
        let _range = crate::profile::range("transfer h2d");
        self.dev.upload(dst, src, what)?;
        self.counts.add(0, 1);
        self.counts.add(1, src.len() as u64);
        Ok(())
    }

    fn download(&self, src: u64, dst: &mut [u8], what: &str) -> Result<()> {
        let _range = crate::profile::range("transfer d2h");
        self.dev.download(src, dst, what)?;
        self.counts.add(2, 1);
        self.counts.add(3, dst.len() as u64);
        Ok(())
    }

    fn download_vec<T: bytemuck::Pod>(&self, src: u64, len: usize, what: &str) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); len];
        self.download(src, bytemuck::cast_slice_mut(&mut v), what)?;
        Ok(v)
    }

    fn zero(&mut self, dst: u64, bytes: usize, what: &str) -> Result<()> {
        self.dev.zero(dst, bytes, what)?;
        self.counts.add(4, 1);
        Ok(())
    }

    /// Zero the per-scenario finished-episode counters (one memset).
    pub fn zero_record_counts(&mut self) -> Result<()> {
        self.zero(
            self.bufs.rec_count,
            4 * self.layout.n_scenarios,
            "record counts",
        )
    }

    /// Finished episodes per scenario since the last drain (one copy).
    pub fn record_counts(&self) -> Result<Vec<u32>> {
        self.download_vec(
            self.bufs.rec_count,
            self.layout.n_scenarios,
            "record counts",
        )
    }

    fn step_args(&self, b: &EnvBuffers) -> EnvStepArgs {
        EnvStepArgs::new(
            &self.layout.params,
            &self.dims,
            self.seed,
            b,
            self.dev.carry_in_smem(),
        )
    }

    fn sample_args(&self, seed: u64, it: u64, fixed_master: Option<u8>) -> SampleArgs {
        SampleArgs::new(
            &self.layout.params,
            &self.dims,
            &self.bufs,
            seed,
            it,
            fixed_master.map(u32::from).unwrap_or(u32::MAX),
        )
    }

    /// Draw the actions of step `it` on the device into the step's input buffer (the sampler,
    /// master action `fixed_master` or uniform): one launch, no copy.
    pub fn launch_sample(&mut self, seed: u64, it: u64, fixed_master: Option<u8>) -> Result<()> {
        let _range = crate::profile::range("sample");
        let a = self.sample_args(seed, it, fixed_master);
        self.launch(Launch::Sample(&a))
    }

    /// One step from the actions already in the step's input buffer (e.g. drawn by
    /// [`Self::launch_sample`]): one launch, no copy.
    pub fn launch_step(&mut self) -> Result<()> {
        let _range = crate::profile::range("env step");
        let a = self.step_args(&self.bufs);
        self.launch(Launch::Step(&a))
    }

    /// One step with actions at other device addresses (`[N, S]` and `[N]` u8, the caller's,
    /// written in the device's stream order): one launch, no copy.
    pub fn launch_step_from(&mut self, actions: u64, master: u64) -> Result<()> {
        let mut b = self.bufs;
        b.actions = actions;
        b.master = master;
        let a = self.step_args(&b);
        self.launch(Launch::Step(&a))
    }

    /// Draw the policy's actions on the device (`sample_policy`, kernels/policy.cu): from the
    /// log-probabilities `[N * S, 7]` f32 at `log_probs`, with draws `draws + r` (row `r`) of the
    /// trainer's SplitMix64 action stream `seed`, write the actions `[N * S]` u32 to `actions`, their
    /// log-probabilities `[N * S]` f32 to `logp`, and, when `env_actions` is given, the actions as
    /// u8 (the input of [`Self::launch_step_from`]). Every address is the caller's, written or
    /// read in the device's stream order. One launch, no copy: the same draws as
    /// `agents::dist::sample_row` fed by `train::ResumableRng` on the host.
    pub fn launch_sample_policy(
        &mut self,
        log_probs: u64,
        seed: u64,
        draws: u64,
        actions: u64,
        logp: u64,
        env_actions: Option<u64>,
    ) -> Result<()> {
        let _range = crate::profile::range("sample");
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        let a = PolicySampleArgs {
            log_probs,
            actions,
            logp,
            env_actions: env_actions.unwrap_or(0),
            seed,
            draws,
            rows: rows as u32,
            na: N_ACTIONS as u32,
        };
        self.launch(Launch::SamplePolicy(&a))
    }

    /// The sampler's draws of step `it` and the step in one kernel (`env_step_sampled`): one
    /// launch, no copy; equal to [`Self::launch_sample`] then [`Self::launch_step`].
    pub fn launch_step_sampled(
        &mut self,
        seed: u64,
        it: u64,
        fixed_master: Option<u8>,
    ) -> Result<()> {
        let _range = crate::profile::range("env step");
        let sa = self.sample_args(seed, it, fixed_master);
        let a = self.step_args(&self.bufs);
        self.launch(Launch::StepSampled(&a, &sa))
    }

    /// Draw the actions of step `it` on the device and copy them to the host:
    /// `(symbol actions [N, S], master actions [N])` (one launch, one copy).
    pub fn sample_actions(
        &mut self,
        seed: u64,
        it: u64,
        fixed_master: Option<u8>,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        self.launch_sample(seed, it, fixed_master)?;
        let mut v = vec![0u8; self.inputs.bytes()];
        self.download(self.in_addr, &mut v, "sampled actions")?;
        let m = v.split_off(self.inputs.master_offset());
        Ok((v, m))
    }

    fn lazy(&mut self, which: u8, bytes: usize) -> Result<u64> {
        let (slot, what) = match which {
            0 => (self.obs, "observations"),
            1 => (self.dyn_buf, "dynamic observations"),
            _ => (self.mask_buf, "action mask"),
        };
        if slot != 0 {
            return Ok(slot);
        }
        let a = self.dev.alloc(bytes, what)?;
        match which {
            0 => self.obs = a,
            1 => self.dyn_buf = a,
            _ => self.mask_buf = a,
        }
        Ok(a)
    }

    /// The dynamic observation `[N, S, DYN_OBS]` f32 into a device buffer (one launch, no copy);
    /// returns its address: a learner on the same device reads it in place. Valid for the
    /// driver's life, rewritten by the next call.
    pub fn dyn_obs_device(&mut self) -> Result<u64> {
        let rows = self.rows();
        let _range = crate::profile::range("observation");
        let buf = self.lazy(1, 4 * rows * DYN_OBS)?;
        let a = ObsArgs::new(&self.layout.params, &self.dims, &self.bufs, buf);
        self.launch(Launch::DynObs(&a))?;
        Ok(buf)
    }

    /// The action mask `[N, S, 7]` u8 into a device buffer (one launch, no copy); returns its
    /// address, as [`Self::dyn_obs_device`].
    pub fn mask_device(&mut self) -> Result<u64> {
        let rows = self.rows();
        let buf = self.lazy(2, rows * N_ACTIONS)?;
        let a = MaskArgs::new(&self.layout.params, &self.dims, &self.bufs, buf);
        self.launch(Launch::Mask(&a))?;
        Ok(buf)
    }

    /// Gather full observations `[N, S, OBS_DIM]` f32 into a device buffer (one launch, no copy)
    /// and return its address: the input of a policy on the same device.
    pub fn gather_obs_device(&mut self) -> Result<u64> {
        let rows = self.layout.n_scenarios * self.layout.n_symbols;
        let _range = crate::profile::range("observation");
        let out = self.lazy(0, 4 * rows * OBS_DIM)?;
        let a = ObsArgs::new(&self.layout.params, &self.dims, &self.bufs, out);
        self.launch(Launch::GatherObs(&a))?;
        Ok(out)
    }

    fn rows(&self) -> usize {
        self.layout.n_scenarios * self.layout.n_symbols
    }

    /// The master observation (spec §8): upload the intents and the anchors, one `master_obs`
    /// launch, read the observation and the updated anchors back (two uploads, two downloads: the
    /// master observes once per decision, not every step). Sizes were checked by
    /// `VecEnv::master_obs`.
    fn master_obs_on_device(
        &mut self,
        intents: &[f32],
        anchors: &mut [MasterAnchor],
        out: &mut [f32],
    ) -> Result<()> {
        let n = self.layout.n_scenarios;
        check_len("master intents", intents.len(), n * MASTER_INTENTS)?;
        check_len("master anchors", anchors.len(), n)?;
        check_len("master observation", out.len(), n * MASTER_OBS)?;
        if self.master[0] == 0 {
            let sizes = [
                (4 * n * MASTER_INTENTS, "master intents"),
                (std::mem::size_of::<MasterAnchor>() * n, "master anchors"),
                (4 * n * MASTER_OBS, "master observation"),
            ];
            for (i, (bytes, what)) in sizes.into_iter().enumerate() {
                self.master[i] = self.dev.alloc(bytes, what)?;
            }
        }
        let [di, da, dout] = self.master;
        self.upload(di, bytemuck::cast_slice(intents), "master intents")?;
        self.upload(da, bytemuck::cast_slice(anchors), "master anchors")?;
        let args = MasterObsArgs {
            p: self.layout.params,
            dm: self.dims,
            close: self.bufs.close,
            macro_series: self.bufs.macro_series,
            regime: self.bufs.regime,
            scen: self.bufs.scen,
            intents: di,
            anchors: da,
            out: dout,
        };
        self.launch(Launch::MasterObs(&args))?;
        self.download(dout, bytemuck::cast_slice_mut(out), "master observation")?;
        self.download(da, bytemuck::cast_slice_mut(anchors), "master anchors")
    }
}

impl<D: Device> Backend for DeviceEnv<D> {
    fn name(&self) -> &'static str {
        self.dev.name()
    }

    fn layout(&self) -> &EnvLayout {
        &self.layout
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.seed = seed;
        let a = EnvResetArgs::new(&self.layout.params, &self.dims, seed, &self.bufs);
        self.launch(Launch::Reset(&a))
    }

    /// One staged copy of the packed actions, one launch.
    fn step(&mut self, symbol_actions: &[u8], master_actions: &[u8]) -> Result<()> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        check_len("symbol actions", symbol_actions.len(), n * s)?;
        check_len("master actions", master_actions.len(), n)?;
        let bytes = self.inputs.bytes();
        {
            let _range = crate::profile::range("transfer h2d");
            let stage = self.dev.input_staging()?;
            self.inputs
                .pack(symbol_actions, master_actions, &mut stage[..bytes]);
            self.dev.upload_staged(self.in_addr, bytes)?;
            self.counts.add(0, 1);
            self.counts.add(1, bytes as u64);
        }
        self.launch_step()
    }

    /// One copy of the packed outputs.
    fn read_outputs(&mut self, out: &mut StepOutputs) -> Result<()> {
        let bytes = self.outputs.bytes();
        let _range = crate::profile::range("transfer d2h");
        let pack = self.outputs;
        let src = self.dev.download_staged(self.out_addr, bytes)?;
        pack.unpack(src, out);
        self.counts.add(2, 1);
        self.counts.add(3, bytes as u64);
        Ok(())
    }

    fn dyn_obs(&mut self, out: &mut [f32]) -> Result<()> {
        check_len("dyn_obs", out.len(), self.rows() * DYN_OBS)?;
        let buf = self.dyn_obs_device()?;
        self.download(buf, bytemuck::cast_slice_mut(out), "dynamic observations")
    }

    fn gather_obs(&mut self, out: &mut [f32]) -> Result<()> {
        check_len("gather_obs", out.len(), self.rows() * OBS_DIM)?;
        let buf = self.gather_obs_device()?;
        self.download(buf, bytemuck::cast_slice_mut(out), "observations")
    }

    fn action_mask(&mut self, out: &mut [u8]) -> Result<()> {
        check_len("action_mask", out.len(), self.rows() * N_ACTIONS)?;
        let buf = self.mask_device()?;
        self.download(buf, out, "action mask")
    }

    fn obs_index(&mut self, out: &mut [u32]) -> Result<()> {
        let n = self.layout.n_scenarios;
        check_len("obs_index", out.len(), 2 * n)?;
        let scen: Vec<ScenarioState> = self.download_vec(self.bufs.scen, n, "scenario state")?;
        for (o, st) in out.chunks_exact_mut(2).zip(&scen) {
            o[0] = st.path;
            o[1] = st.t0 + st.k;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let (n, ns) = (self.layout.n_scenarios, self.rows());
        let b = &self.bufs;
        let f = |a: u64| self.download_vec::<f64>(a, ns, "state");
        Ok(Snapshot {
            seed: self.seed,
            scenarios: self.download_vec(b.scen, n, "state")?,
            symbols: SymbolState {
                q: f(b.q)?,
                entry: f(b.entry)?,
                peak_px: f(b.peak_px)?,
                dsr_a: f(b.dsr_a)?,
                dsr_b: f(b.dsr_b)?,
                entry_k: self.download_vec(b.entry_k, ns, "state")?,
            },
        })
    }

    fn load_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        snap.check_shape(self.layout.n_scenarios, self.layout.n_symbols)?;
        self.seed = snap.seed;
        let b = self.bufs;
        self.upload(b.scen, bytemuck::cast_slice(&snap.scenarios), "state")?;
        let dst = [b.q, b.entry, b.peak_px, b.dsr_a, b.dsr_b];
        for (src, dst) in snap.symbols.f64_fields().into_iter().zip(dst) {
            self.upload(dst, bytemuck::cast_slice(src), "state")?;
        }
        self.upload(
            b.entry_k,
            bytemuck::cast_slice(&snap.symbols.entry_k),
            "state",
        )?;
        // episode accumulators restart, as in the CPU backend
        let n = self.layout.n_scenarios;
        self.zero(b.comp_sum, 8 * n * N_COMPONENTS, "state")?;
        self.zero(b.comp_sumsq, 8 * n * N_COMPONENTS, "state")?;
        self.zero(b.comp_count, 8 * n, "state")
    }

    /// One copy of the counts; when any, one copy of the records and a memset of the counts.
    fn master_obs(
        &mut self,
        intents: &[f32],
        anchors: &mut [MasterAnchor],
        out: &mut [f32],
    ) -> Result<()> {
        self.master_obs_on_device(intents, anchors, out)
    }

    fn drain_episodes(&mut self) -> Result<Vec<EpisodeRecord>> {
        let counts = self.record_counts()?;
        if counts.iter().all(|&c| c == 0) {
            return Ok(Vec::new());
        }
        let cap = RECORD_CAP as usize;
        let recs: Vec<EpisodeRecordC> =
            self.download_vec(self.bufs.recs, counts.len() * cap, "episode records")?;
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
        self.zero_record_counts()?;
        if lost > 0 {
            return Err(Error::backend(
                self.dev.name(),
                format!(
                    "{lost} episode records were lost: more than {cap} episodes of one scenario finished between two drains"
                ),
            ));
        }
        Ok(out)
    }
}
