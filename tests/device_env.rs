//! The CUDA backend's host-side driver (`env::device::DeviceEnv`: buffer layout, packed step
//! inputs and outputs, which copy and which launch each call makes) run without a GPU: its
//! [`Device`] here is host memory and the kernels compiled for the host (`kernels/host_shim.c`,
//! build.rs), so "device addresses" are host addresses and every copy is a `memcpy`.
//!
//! - `driver_matches_cpu_backend`: the driver over the host kernels against the CPU backend over
//!   whole episodes of every parity case (tests/parity), exactly, in both carry modes: the packed
//!   output offsets, the packed inputs, the memset that drains the record counts, snapshots,
//!   observations are the ones the kernels and the CPU backend agree on.
//! - `one_packed_copy_each_way_per_step`: through `VecEnv::step` (the training loop's call), every
//!   step makes exactly one host-to-device copy of N*S + N bytes and one device-to-host copy of the
//!   packed outputs, one launch and no memset; a step with a finished episode adds the drain (a
//!   read of the counts, a read of the records, one memset). `cuda_parity::step_copies_are_packed`
//!   asserts the same counts on a GPU.
//! - `fused_sampled_step_equals_sample_then_step`: the driver's fused launch gives the same state
//!   as the sampler then the step (on the host both run the same entry points; the GPU kernel
//!   `env_step_sampled` is checked by `cuda_parity::rollout_modes_agree`).
//! - `master_obs_through_the_driver_matches_cpu`: the driver's master observation (two uploads,
//!   one launch, two downloads) equals the CPU backend's, observation and anchors, bit for bit.
//! - `policy_rollout_on_the_device_path_copies_nothing`: a policy's rollout on the device path
//!   (observation and mask kernels into device buffers the learner reads in place, the learner's
//!   log-probabilities into `sample_policy`, its u8 actions into the step) makes no host<->device
//!   copy and no memset in any step, four launches each, and plays exactly the rollout of the host
//!   path (the CPU backend with the trainer's host draws).

mod parity;

use std::sync::Arc;

use marl_trade::env::abi::{
    EnvResetArgs, EnvStepArgs, MaskArgs, ObsArgs, PolicySampleArgs, SampleArgs,
};
use marl_trade::env::device::{Device, DeviceEnv, Launch};
use marl_trade::env::master_obs::{MASTER_INTENTS, MASTER_OBS, MasterAnchor, MasterObsArgs};
use marl_trade::env::{Backend, StepOutputs, VecEnv};
use parity::{cases, cmp_snapshots, run_parity};

unsafe extern "C" {
    fn marl_host_env_reset(a: *const EnvResetArgs);
    fn marl_host_env_step(a: *const EnvStepArgs) -> i32;
    fn marl_host_gather_obs(a: *const ObsArgs);
    fn marl_host_dyn_obs(a: *const ObsArgs);
    fn marl_host_action_mask(a: *const MaskArgs);
    fn marl_host_sample_actions(a: *const SampleArgs);
    fn marl_host_master_obs(a: *const MasterObsArgs);
    fn marl_host_sample_policy(a: *const PolicySampleArgs);
}

/// Host memory as the device; launches run the kernels' entry points on the host.
struct HostDevice {
    carry: bool,
    mem: Vec<Box<[u64]>>,
    stage_in: Vec<u8>,
    stage_out: Vec<u8>,
}

impl HostDevice {
    fn new(carry: bool) -> Self {
        Self {
            carry,
            mem: Vec::new(),
            stage_in: Vec::new(),
            stage_out: Vec::new(),
        }
    }
}

impl Device for HostDevice {
    fn name(&self) -> &'static str {
        "host-device"
    }
    fn carry_in_smem(&self) -> bool {
        self.carry
    }
    fn alloc(&mut self, bytes: usize, _what: &str) -> marl_trade::Result<u64> {
        let b = vec![0u64; bytes.div_ceil(8).max(1)].into_boxed_slice();
        let a = b.as_ptr() as u64;
        self.mem.push(b);
        Ok(a)
    }
    fn alloc_staging(&mut self, i: usize, o: usize) -> marl_trade::Result<()> {
        self.stage_in = vec![0; i];
        self.stage_out = vec![0; o];
        Ok(())
    }
    fn upload(&mut self, dst: u64, src: &[u8], _what: &str) -> marl_trade::Result<()> {
        // SAFETY: dst is an allocation of this device holding src.len() bytes (driver contract).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn download(&self, src: u64, dst: &mut [u8], _what: &str) -> marl_trade::Result<()> {
        // SAFETY: src holds dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn zero(&mut self, dst: u64, bytes: usize, _what: &str) -> marl_trade::Result<()> {
        // SAFETY: dst holds `bytes` bytes.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }
    fn input_staging(&mut self) -> marl_trade::Result<&mut [u8]> {
        Ok(&mut self.stage_in)
    }
    fn upload_staged(&mut self, dst: u64, bytes: usize) -> marl_trade::Result<()> {
        // SAFETY: as upload.
        unsafe { std::ptr::copy_nonoverlapping(self.stage_in.as_ptr(), dst as *mut u8, bytes) };
        Ok(())
    }
    fn download_staged(&mut self, src: u64, bytes: usize) -> marl_trade::Result<&[u8]> {
        // SAFETY: as download.
        unsafe {
            std::ptr::copy_nonoverlapping(src as *const u8, self.stage_out.as_mut_ptr(), bytes)
        };
        Ok(&self.stage_out[..bytes])
    }
    fn launch(&mut self, l: Launch<'_>) -> marl_trade::Result<()> {
        // SAFETY: the driver builds every struct with the `env::abi` constructors from its own
        // allocations (host memory here) of the lengths the kernels index, as for the GPU.
        unsafe {
            match l {
                Launch::Reset(a) => marl_host_env_reset(a),
                Launch::Step(a) => assert_eq!(marl_host_env_step(a), 0),
                Launch::StepSampled(a, sa) => {
                    marl_host_sample_actions(sa);
                    assert_eq!(marl_host_env_step(a), 0);
                }
                Launch::GatherObs(a) => marl_host_gather_obs(a),
                Launch::DynObs(a) => marl_host_dyn_obs(a),
                Launch::Mask(a) => marl_host_action_mask(a),
                Launch::Sample(a) => marl_host_sample_actions(a),
                Launch::MasterObs(a) => marl_host_master_obs(a),
                Launch::SamplePolicy(a) => marl_host_sample_policy(a),
            }
        }
        Ok(())
    }
}

fn host_env(case: &parity::Case, carry: bool, priors: bool) -> DeviceEnv<HostDevice> {
    let p = priors.then(|| parity::random_priors(&case.md, 3));
    DeviceEnv::create(
        HostDevice::new(carry),
        case.layout,
        &case.md,
        &case.feats,
        p.as_ref(),
    )
    .unwrap()
}

#[test]
fn driver_matches_cpu_backend() {
    for (i, mut case) in cases().into_iter().enumerate() {
        let l = case.layout;
        let ep = l.episode_len.min(l.hi - l.start_a);
        case.plan.steps = case.plan.steps.max(2 * ep + 1);
        let priors = i % 2 == 0;
        let mut cpu = marl_trade::env::cpu::CpuBackend::new(l, case.md.clone(), case.feats.clone())
            .with_priors(priors.then(|| Arc::new(parity::random_priors(&case.md, 3))))
            .unwrap();
        let mut dev = host_env(&case, i % 2 == 1, priors);
        let cov = run_parity(&mut cpu, &mut dev, &case.md, &case.plan, |_, _| {})
            .unwrap_or_else(|e| panic!("device driver differs from the CPU backend: {e}"));
        eprintln!("{}: {cov:?}", case.plan.name);
        assert!(cov.episodes >= 1, "{}: no episode finished", case.plan.name);
    }
}

#[test]
fn one_packed_copy_each_way_per_step() {
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let dev = host_env(&case, true, false);
    let pack_bytes = dev.outputs_device().0.bytes() as u64;
    assert_eq!(pack_bytes, (32 * n * s + 10 * n) as u64);
    // VecEnv owns the backend: read the counts through a handle on the live counter
    let counter = dev.counter();
    let mut env = VecEnv::from_backend(Box::new(dev), case.md.clone(), case.feats.clone());
    env.reset(4).unwrap();
    let mut r = marl_trade::rng::SplitMix64::new(9);
    let (mut quiet, mut with_done) = (0, 0);
    for it in 0..(3 * l.episode_len) {
        let acts: Vec<u8> = (0..n * s).map(|_| r.below(7) as u8).collect();
        let master: Vec<u8> = (0..n).map(|_| r.below(3) as u8).collect();
        let before = counter.get();
        let out = env.step(&acts, &master).unwrap();
        let done = (0..n).any(|k| out.done(k));
        let c = counter.get().since(&before);
        assert_eq!(
            (c.htod, c.htod_bytes, c.launches),
            (1, (n * s + n) as u64, 1),
            "step {it}: {c:?}"
        );
        if done {
            assert_eq!((c.dtoh, c.memsets), (3, 1), "step {it} with a done: {c:?}");
            with_done += 1;
        } else {
            assert_eq!(
                (c.dtoh, c.dtoh_bytes, c.memsets),
                (1, pack_bytes, 0),
                "step {it}: {c:?}"
            );
            quiet += 1;
        }
    }
    eprintln!("{quiet} steps without a done, {with_done} with one: copies as counted");
    assert!(quiet > 0 && with_done > 0);
}

#[test]
fn fused_sampled_step_equals_sample_then_step() {
    let case = cases().into_iter().nth(1).unwrap();
    let mut a = host_env(&case, true, false);
    let mut b = host_env(&case, true, false);
    a.reset(2).unwrap();
    b.reset(2).unwrap();
    let l = case.layout;
    let mut oa = StepOutputs::new(l.n_scenarios, l.n_symbols);
    let mut ob = oa.clone();
    for it in 0..(2 * l.episode_len as u64) {
        let ca = a.counts();
        a.launch_sample(5, it, None).unwrap();
        a.launch_step().unwrap();
        b.launch_step_sampled(5, it, None).unwrap();
        assert_eq!(a.counts().since(&ca).launches, 2);
        a.read_outputs(&mut oa).unwrap();
        b.read_outputs(&mut ob).unwrap();
        assert_eq!(oa, ob, "step {it}");
        cmp_snapshots(&a.snapshot().unwrap(), &b.snapshot().unwrap()).unwrap();
        a.drain_episodes().unwrap();
        b.drain_episodes().unwrap();
    }
}

#[test]
fn master_obs_through_the_driver_matches_cpu() {
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let mut cpu = marl_trade::env::cpu::CpuBackend::new(l, case.md.clone(), case.feats.clone());
    let mut dev = host_env(&case, true, false);
    cpu.reset(3).unwrap();
    dev.reset(3).unwrap();
    let mut r = marl_trade::rng::SplitMix64::new(12);
    let (mut anc_c, mut anc_d) = (
        vec![MasterAnchor::default(); n],
        vec![MasterAnchor::default(); n],
    );
    let (mut oc, mut od) = (vec![0f32; n * MASTER_OBS], vec![0f32; n * MASTER_OBS]);
    let mut outs = StepOutputs::new(n, s);
    for it in 0..(2 * l.episode_len) {
        let acts: Vec<u8> = (0..n * s).map(|_| r.below(7) as u8).collect();
        let master: Vec<u8> = (0..n).map(|_| r.below(48) as u8).collect();
        for b in [&mut cpu as &mut dyn Backend, &mut dev as &mut dyn Backend] {
            b.step(&acts, &master).unwrap();
            b.read_outputs(&mut outs).unwrap();
            b.drain_episodes().unwrap();
        }
        if it % 3 == 0 {
            let intents: Vec<f32> = (0..n * MASTER_INTENTS)
                .map(|_| r.below(1000) as f32 / 1000.0)
                .collect();
            cpu.master_obs(&intents, &mut anc_c, &mut oc).unwrap();
            let before = dev.counts();
            dev.master_obs(&intents, &mut anc_d, &mut od).unwrap();
            let c = dev.counts().since(&before);
            assert_eq!((c.htod, c.dtoh, c.launches), (2, 2, 1), "{c:?}");
            assert_eq!(oc, od, "step {it}: master observation");
            assert_eq!(anc_c, anc_d, "step {it}: anchors");
        }
    }
    assert!(oc.iter().any(|&v| v != 0.0));
}

#[test]
fn policy_rollout_on_the_device_path_copies_nothing() {
    use marl_trade::agents::dist::sample_row;
    use marl_trade::env::N_ACTIONS;
    use marl_trade::env::obs::DYN_OBS;
    use marl_trade::train::ResumableRng;
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let rows = n * s;
    let mut cpu = marl_trade::env::cpu::CpuBackend::new(l, case.md.clone(), case.feats.clone());
    let mut dev = host_env(&case, true, false);
    cpu.reset(8).unwrap();
    dev.reset(8).unwrap();
    let w = parity::learner_weights(31);
    let master = vec![l.params.default_action as u8; n];
    // The learner's buffers "on the device" (host memory here, candle's tensors on a GPU).
    let (mut actions, mut logp, mut env_actions) =
        (vec![0u32; rows], vec![0f32; rows], vec![0u8; rows]);
    let seed = 0xfeed;
    let (mut host_rng, mut dev_draws) = (ResumableRng::new(seed), 0u64);
    let (mut dyn_c, mut mask_c) = (vec![0f32; rows * DYN_OBS], vec![0u8; rows * N_ACTIONS]);
    let (mut out_c, mut out_d) = (StepOutputs::new(n, s), StepOutputs::new(n, s));
    let (mut traded, mut dones) = (0usize, 0usize);
    for it in 0..(3 * l.episode_len) {
        // Device path: every step's work is launches on device memory.
        let before = dev.counts();
        let dyn_addr = dev.dyn_obs_device().unwrap();
        let mask_addr = dev.mask_device().unwrap();
        // SAFETY: the driver's observation and mask buffers hold rows x DYN_OBS f32 and
        // rows x 7 u8 (host memory on this device); read in place, as a learner on the GPU wraps them.
        let (dyn_d, mask_d) = unsafe {
            (
                std::slice::from_raw_parts(dyn_addr as *const f32, rows * DYN_OBS),
                std::slice::from_raw_parts(mask_addr as *const u8, rows * N_ACTIONS),
            )
        };
        let lp_d = parity::learner_log_probs(dyn_d, mask_d, &w);
        dev.launch_sample_policy(
            lp_d.as_ptr() as u64,
            seed,
            dev_draws,
            actions.as_mut_ptr() as u64,
            logp.as_mut_ptr() as u64,
            Some(env_actions.as_mut_ptr() as u64),
        )
        .unwrap();
        dev_draws += rows as u64;
        dev.launch_step_from(env_actions.as_ptr() as u64, master.as_ptr() as u64)
            .unwrap();
        let c = dev.counts().since(&before);
        assert_eq!(
            (c.htod, c.dtoh, c.memsets, c.launches),
            (0, 0, 0, 4),
            "step {it}: {c:?}"
        );
        // Host path: the trainer's loop on the CPU backend.
        cpu.dyn_obs(&mut dyn_c).unwrap();
        cpu.action_mask(&mut mask_c).unwrap();
        assert_eq!(dyn_c.as_slice(), dyn_d, "step {it}: observations");
        assert_eq!(mask_c.as_slice(), mask_d, "step {it}: masks");
        let lp_c = parity::learner_log_probs(&dyn_c, &mask_c, &w);
        let acts_c: Vec<u32> = lp_c
            .chunks_exact(N_ACTIONS)
            .map(|row| sample_row(row, host_rng.uniform()))
            .collect();
        assert_eq!(actions, acts_c, "step {it}: draws");
        for (i, &a) in acts_c.iter().enumerate() {
            assert_eq!(logp[i], lp_c[i * N_ACTIONS + a as usize]);
        }
        let acts_u8: Vec<u8> = acts_c.iter().map(|&a| a as u8).collect();
        assert_eq!(env_actions, acts_u8);
        cpu.step(&acts_u8, &master).unwrap();
        // Compare the outputs (reading the device's is a copy, outside the counted window).
        cpu.read_outputs(&mut out_c).unwrap();
        dev.read_outputs(&mut out_d).unwrap();
        assert_eq!(out_c, out_d, "step {it}: outputs");
        traded += out_c.turnover.iter().filter(|&&t| t > 0.0).count();
        dones += (0..n).filter(|&k| out_c.done(k)).count();
        cpu.drain_episodes().unwrap();
        dev.drain_episodes().unwrap();
    }
    cmp_snapshots(&cpu.snapshot().unwrap(), &dev.snapshot().unwrap()).unwrap();
    assert_eq!(host_rng.state().draws, dev_draws);
    eprintln!("{traded} scenario-steps with trades, {dones} episodes ended");
    assert!(
        traded > 0 && dones > 0,
        "the rollout trades and ends episodes"
    );
}
