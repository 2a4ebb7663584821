//! The CUDA backend against the CPU backend on a GPU: `cargo test --release --features cuda --test
//! cuda_parity -- --ignored --nocapture` (or the carried test binary with `--ignored`, docs/gpu.md).
//!
//! - `cuda_matches_cpu`: every parity case of tests/parity (the same as tests/host_parity.rs) plus a
//!   143-symbol case, each for at least two full episodes, comparing after every step the whole state,
//!   rewards, the 7 components, master rewards, turnover, dones, episode records, full and dynamic observations,
//!   masks and observation indices (every other case with an SL prior cache), **exactly** (the kernels fold sums in symbol order and run with
//!   `--fmad=false`, so no tolerance is expected to be needed; a failure names the first differing
//!   value).
//! - `cuda_matches_cpu_at_every_block_width`: the same for S in {1, 31, 32, 143, 256, 300, 1100}
//!   (the widths the threaded host emulation runs, tests/host_parity.rs).
//! - `kernel_resources_report`: the kernels' registers, local memory and threads per block as the
//!   driver reports them, and the step's launch for several S.
//! - `device_sampler_replays_on_cpu`: actions drawn on the device, replayed on the CPU backend.
//! - `step_device_matches_cpu`: steps from actions already on the device (`step_device`).
//! - `policy_draws_on_the_gpu_match_the_host`: a policy's actions drawn on the GPU
//!   (`sample_policy`, kernels/policy.cu) from log-probabilities in device memory equal the trainer's
//!   host draws (`sample_row` + `ResumableRng`), and stepping with them on the device
//!   (`step_device`) matches the CPU backend.
//! - `cuda_rollout_throughput`: whole 128 x 2048 rollouts on the device in each launch mode
//!   (separate, fused, CUDA graph), timed with CUDA events.
//! - `step_copies_are_packed`: one packed host-to-device and one packed device-to-host copy per
//!   host-driven step (the counts of `tests/device_env.rs`, on the GPU).
//! - `rollout_modes_agree`: the three rollout modes reach the same state.
//! - `events_order_another_stream`: a second stream ordered by the backend's events.
//! - `construction_without_gpu_is_a_clear_error` runs everywhere (not ignored): without a driver the
//!   backend must return an error of kind `ErrorKind::BackendUnavailable`, never panic.
#![cfg(cuda_env)]

mod parity;

use std::sync::Arc;

use marl_trade::env::cpu::CpuBackend;
use marl_trade::env::cuda::{CudaBackend, RolloutMode};
use marl_trade::env::{Backend, EnvLayout, Period, StepOutputs};
use marl_trade::{Config, ErrorKind};
use parity::{Plan, cases, cmp_outputs, cmp_records, cmp_snapshots, cmp_views, run_parity};

/// The CPU backend and the CUDA backend over one parity case.
fn backends(case: &parity::Case) -> (CpuBackend, CudaBackend) {
    let l = case.layout;
    let cpu = CpuBackend::new(l, case.md.clone(), case.feats.clone());
    let gpu = CudaBackend::new(l, case.md.clone(), case.feats.clone()).expect("CUDA backend");
    (cpu, gpu)
}

#[test]
fn construction_without_gpu_is_a_clear_error() {
    let cfg = parity::stress_config(2, 10);
    let md = parity::stress_market(1, 200, 3, 1);
    let feats = parity::random_features(&md, 2);
    let layout = EnvLayout::new(&cfg.env_setup(), &md, Period::Train).unwrap();
    match CudaBackend::new(layout, Arc::new(md), Arc::new(feats)) {
        Ok(b) => eprintln!("GPU present: {}", b.device_description()),
        Err(e) if e.kind() == ErrorKind::BackendUnavailable => {
            let message = e.to_string();
            assert!(message.starts_with("backend cuda"), "{message}");
            assert!(
                message.contains("driver") || message.contains("NVRTC") || message.contains("GPU"),
                "{message}"
            );
            eprintln!("as expected without a GPU: {message}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_matches_cpu() {
    let mut all = cases();
    // a realistic width: 143 symbols (more than 4 warps), 16 scenarios
    {
        let mut cfg = Config::default();
        cfg.env.scenarios = 16;
        cfg.env.episode_len = 128;
        let md = parity::stress_market(1, 600, 143, 9);
        let feats = parity::random_features(&md, 10);
        let layout = EnvLayout::new(&cfg.env_setup(), &md, Period::Train).unwrap();
        all.push(parity::Case {
            plan: Plan {
                name: "s143",
                seed: 21,
                steps: 0,
                random_state: true,
                p_unmasked: 0.1,
                action_seed: 22,
            },
            cfg,
            md: Arc::new(md),
            feats: Arc::new(feats),
            layout,
        });
    }
    for (i, mut case) in all.into_iter().enumerate() {
        // at least two full episodes of the longest kind
        let l = case.layout;
        let ep = l.episode_len.min(l.hi - l.start_a);
        case.plan.steps = case.plan.steps.max(2 * ep + 1);
        // every other case with an SL prior cache (the observation's SL slice, a device buffer)
        let priors = (i % 2 == 0).then(|| Arc::new(parity::random_priors(&case.md, i as u64)));
        let mut cpu = CpuBackend::new(l, case.md.clone(), case.feats.clone())
            .with_priors(priors.clone())
            .unwrap();
        let mut gpu = CudaBackend::with_priors(l, case.md.clone(), case.feats.clone(), priors)
            .expect("CUDA backend");
        let cov = run_parity(&mut cpu, &mut gpu, &case.md, &case.plan, |_, _| {})
            .unwrap_or_else(|e| panic!("CUDA differs from CPU: {e}"));
        eprintln!(
            "{} on {}: {cov:?}",
            case.plan.name,
            gpu.device_description()
        );
        assert!(cov.episodes >= 1);
    }
}

/// The block widths of the threaded host emulation on the GPU: every S of `BLOCK_WIDTHS` (1 to
/// 1100 symbols: partial warps, full 256-thread blocks, several symbols per thread, the carry in
/// global memory), exactly, over two whole episodes.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_matches_cpu_at_every_block_width() {
    for (i, &(s, n, ep)) in parity::BLOCK_WIDTHS.iter().enumerate() {
        let case = parity::width_case(s, n, ep, 300 + i as u64);
        let (mut cpu, mut gpu) = backends(&case);
        let (_, block, smem, carry) = gpu.kernel_resources();
        let cov = run_parity(&mut cpu, &mut gpu, &case.md, &case.plan, |_, _| {})
            .unwrap_or_else(|e| panic!("S = {s}, N = {n}: CUDA differs from CPU: {e}"));
        eprintln!(
            "S = {s}, N = {n} ({block} threads, {smem} bytes shared, carry in shared memory \
             {carry}) on {}: {cov:?}",
            gpu.device_description()
        );
        assert!(cov.episodes >= n);
    }
}

/// What the driver reports for every kernel, and the step's launch for several S; no local
/// memory (spills) expected (ptxas for sm_90 reports none, tests/nvrtc_compile.rs).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn kernel_resources_report() {
    for s in [1usize, 143, 512, 1100, 1800] {
        let case = parity::width_case(s, 2, 8, 7);
        let gpu = CudaBackend::new(case.layout, case.md.clone(), case.feats.clone())
            .unwrap_or_else(|e| panic!("S = {s}: {e}"));
        let (res, block, smem, carry) = gpu.kernel_resources();
        eprintln!(
            "{}: S = {s}: env_step {block} threads, {smem} bytes dynamic shared memory, carry in \
             shared memory {carry}",
            gpu.device_description()
        );
        if s == 1 {
            for (k, r) in res {
                eprintln!("  {k}: {r:?}");
                assert_eq!(r.local_bytes, 0, "{k} uses local memory");
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn device_sampler_replays_on_cpu() {
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (mut cpu, mut gpu) = backends(&case);
    cpu.reset(3).unwrap();
    gpu.reset(3).unwrap();
    let (mut oa, mut ob) = (
        StepOutputs::new(l.n_scenarios, l.n_symbols),
        StepOutputs::new(l.n_scenarios, l.n_symbols),
    );
    for it in 0..(3 * l.episode_len as u64) {
        let (acts, master) = gpu.sample_actions(1234, it, None).unwrap();
        cpu.step(&acts, &master).unwrap();
        gpu.step(&acts, &master).unwrap();
        cpu.read_outputs(&mut oa).unwrap();
        gpu.read_outputs(&mut ob).unwrap();
        let ctx = |e: String| format!("step {it}: {e}");
        cmp_outputs(&oa, &ob).map_err(ctx).unwrap();
        let (sa, sb) = (cpu.snapshot().unwrap(), gpu.snapshot().unwrap());
        cmp_snapshots(&sa, &sb).map_err(ctx).unwrap();
        assert!(
            sa.scenarios.iter().all(|s| s.invalid_actions == 0),
            "sampled actions were masked"
        );
        cmp_records(
            &cpu.drain_episodes().unwrap(),
            &gpu.drain_episodes().unwrap(),
        )
        .map_err(ctx)
        .unwrap();
        cmp_views(&mut cpu, &mut gpu).map_err(ctx).unwrap();
    }
}

/// `step_device` (actions already on the device) gives what `step` gives with the same actions.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn step_device_matches_cpu() {
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (mut cpu, mut gpu) = backends(&case);
    cpu.reset(5).unwrap();
    gpu.reset(5).unwrap();
    let (mut oa, mut ob) = (
        StepOutputs::new(l.n_scenarios, l.n_symbols),
        StepOutputs::new(l.n_scenarios, l.n_symbols),
    );
    for it in 0..(2 * l.episode_len as u64 + 1) {
        let (acts, master) = gpu.sample_actions(99, it, None).unwrap();
        let stream = gpu.stream().clone();
        let dev_acts = stream.clone_htod(&acts).unwrap();
        let dev_master = stream.clone_htod(&master).unwrap();
        cpu.step(&acts, &master).unwrap();
        gpu.step_device(&dev_acts, &dev_master).unwrap();
        cpu.read_outputs(&mut oa).unwrap();
        gpu.read_outputs(&mut ob).unwrap();
        let ctx = |e: String| format!("step {it}: {e}");
        cmp_outputs(&oa, &ob).map_err(ctx).unwrap();
        cmp_snapshots(&cpu.snapshot().unwrap(), &gpu.snapshot().unwrap())
            .map_err(ctx)
            .unwrap();
        cmp_records(
            &cpu.drain_episodes().unwrap(),
            &gpu.drain_episodes().unwrap(),
        )
        .map_err(ctx)
        .unwrap();
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_rollout_throughput() {
    let cfg = Config::default(); // 128 scenarios x 2048 steps, 143 symbols
    let mut syn = cfg.data.synthetic.clone();
    syn.bars = 8192;
    let md = Arc::new(marl_trade::data::generate(&syn, "SPY"));
    let feats = Arc::new(parity::random_features(&md, 1));
    let layout = EnvLayout::new(&cfg.env_setup(), &md, Period::Train).unwrap();
    let mut gpu = CudaBackend::new(layout, md, feats).expect("CUDA backend");
    gpu.reset(1).unwrap();
    let _warm = gpu
        .random_rollout(16, 9, None, true, RolloutMode::Separate, false)
        .unwrap();
    for mode in [
        RolloutMode::Separate,
        RolloutMode::Fused,
        RolloutMode::Graph,
    ] {
        for with_obs in [false, true] {
            gpu.reset(1).unwrap();
            let t = gpu
                .random_rollout(cfg.env.episode_len, 7, None, with_obs, mode, false)
                .unwrap();
            eprintln!(
                "{}: N={} S={} steps={} {mode:?} obs={with_obs}: {:.1} ms device, {:.1} ms host, \
                 {:.1} ms graph setup, {:.3e} symbol-steps/s, {:.2} us/step, {} episodes",
                gpu.device_description(),
                layout.n_scenarios,
                layout.n_symbols,
                t.steps,
                t.device_ms,
                t.host_ms,
                t.setup_ms,
                t.scenario_steps_per_s * layout.n_symbols as f64,
                t.device_ms as f64 * 1e3 / t.steps as f64,
                t.episodes_finished
            );
        }
    }
}

/// The host-driven step on the GPU copies what `tests/device_env.rs` counts on the host: per
/// `step` + `read_outputs`, one packed host-to-device copy (actions and master actions) and one
/// packed device-to-host copy (all outputs), one launch, no memset; a step with a done adds the
/// record drain (two reads and a memset).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn step_copies_are_packed() {
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let mut gpu = CudaBackend::new(l, case.md.clone(), case.feats.clone()).expect("CUDA backend");
    gpu.reset(4).unwrap();
    let mut out = StepOutputs::new(l.n_scenarios, l.n_symbols);
    let (mut quiet, mut with_done) = (0, 0);
    for it in 0..(2 * l.episode_len as u64 + 1) {
        let (acts, master) = gpu.sample_actions(17, it, None).unwrap();
        let before = gpu.counts();
        gpu.step(&acts, &master).unwrap();
        gpu.read_outputs(&mut out).unwrap();
        let done = (0..l.n_scenarios).any(|n| out.done(n));
        if done {
            gpu.drain_episodes().unwrap();
        }
        let c = gpu.counts().since(&before);
        let want_in = (l.n_scenarios * l.n_symbols + l.n_scenarios) as u64;
        let want_out = gpu.outputs_device().0.bytes() as u64;
        assert_eq!(
            (c.htod, c.htod_bytes, c.launches),
            (1, want_in, 1),
            "step {it}: {c:?}"
        );
        if done {
            assert_eq!((c.dtoh, c.memsets), (3, 1), "step {it} (done): {c:?}");
            with_done += 1;
        } else {
            assert_eq!(
                (c.dtoh, c.dtoh_bytes, c.memsets),
                (1, want_out, 0),
                "step {it}: {c:?}"
            );
            quiet += 1;
        }
    }
    eprintln!("{quiet} steps without and {with_done} with a done, copies as counted");
    assert!(quiet > 0 && with_done > 0);
}

/// Every rollout mode computes the same states: sampler and step apart, fused into one kernel,
/// and the fused launches captured in a CUDA graph (same draws: counter `it` per step).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn rollout_modes_agree() {
    for (s, n, ep) in [(143usize, 16usize, 24usize), (300, 4, 16)] {
        let case = parity::width_case(s, n, ep, 77);
        let l = case.layout;
        let mut snaps = Vec::new();
        for mode in [
            RolloutMode::Separate,
            RolloutMode::Fused,
            RolloutMode::Graph,
        ] {
            let mut gpu =
                CudaBackend::new(l, case.md.clone(), case.feats.clone()).expect("CUDA backend");
            gpu.reset(11).unwrap();
            let t = gpu
                .random_rollout(3 * ep + 1, 5, None, true, mode, false)
                .unwrap();
            snaps.push((mode, t.episodes_finished, gpu.snapshot().unwrap()));
        }
        for (mode, eps, snap) in &snaps[1..] {
            assert_eq!(
                *eps, snaps[0].1,
                "S = {s}: {mode:?} finished other episodes"
            );
            assert!(*eps > 0);
            cmp_snapshots(&snaps[0].2, snap)
                .unwrap_or_else(|e| panic!("S = {s}: {mode:?} differs from Separate: {e}"));
        }
    }
}

/// A learner on another stream ordered by the backend's events: it reads the packed outputs
/// after `record_event` + `wait`, and writes actions the backend steps from after `wait_event`.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn events_order_another_stream() {
    use cudarc::driver::result::memcpy_dtod_async;
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let (mut cpu, mut gpu) = backends(&case);
    let other = gpu.stream().context().new_stream().unwrap();
    let (pack, out_addr) = gpu.outputs_device();
    let mut mirror = other.alloc_zeros::<u8>(pack.bytes()).unwrap();
    let mut dev_acts = other.alloc_zeros::<u8>(n * s).unwrap();
    let mut dev_master = other.alloc_zeros::<u8>(n).unwrap();
    cpu.reset(8).unwrap();
    gpu.reset(8).unwrap();
    let mut oa = StepOutputs::new(n, s);
    let mut ob = StepOutputs::new(n, s);
    for it in 0..(l.episode_len as u64 + 3) {
        let (acts, master) = gpu.sample_actions(31, it, None).unwrap();
        // the "learner" writes the actions on its own stream ...
        other.memcpy_htod(&acts, &mut dev_acts).unwrap();
        other.memcpy_htod(&master, &mut dev_master).unwrap();
        let written = other.record_event(None).unwrap();
        // ... the backend waits for them, steps, and publishes an event
        gpu.wait_event(&written).unwrap();
        gpu.step_device(&dev_acts, &dev_master).unwrap();
        let stepped = gpu.record_event().unwrap();
        other.wait(&stepped).unwrap();
        {
            use cudarc::driver::DevicePtrMut;
            let (dst, _g) = mirror.device_ptr_mut(&other);
            // SAFETY: both regions hold pack.bytes() bytes on this context; ordered by `stepped`.
            unsafe { memcpy_dtod_async(dst, out_addr, pack.bytes(), other.cu_stream()) }.unwrap();
        }
        let bytes = other.clone_dtoh(&mirror).unwrap();
        pack.unpack(&bytes, &mut ob);
        cpu.step(&acts, &master).unwrap();
        cpu.read_outputs(&mut oa).unwrap();
        cmp_outputs(&oa, &ob)
            .map_err(|e| format!("step {it}: {e}"))
            .unwrap();
        if (0..n).any(|k| oa.done(k)) {
            cmp_records(
                &cpu.drain_episodes().unwrap(),
                &gpu.drain_episodes().unwrap(),
            )
            .unwrap();
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn policy_draws_on_the_gpu_match_the_host() {
    use marl_trade::agents::dist::sample_row;
    use marl_trade::env::N_ACTIONS;
    use marl_trade::env::obs::DYN_OBS;
    use marl_trade::train::ResumableRng;
    let case = cases().into_iter().next().unwrap();
    let l = case.layout;
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let rows = n * s;
    let (mut cpu, mut gpu) = backends(&case);
    cpu.reset(8).unwrap();
    gpu.reset(8).unwrap();
    let w = parity::learner_weights(31);
    let master = vec![l.params.default_action as u8; n];
    let stream = gpu.stream().clone();
    let dev_master = stream.clone_htod(&master).unwrap();
    let mut actions = stream.alloc_zeros::<u32>(rows).unwrap();
    let mut logp = stream.alloc_zeros::<f32>(rows).unwrap();
    let mut env_actions = stream.alloc_zeros::<u8>(rows).unwrap();
    let seed = 0xfeed;
    let mut host = ResumableRng::new(seed);
    let (mut dyn_c, mut mask_c) = (vec![0f32; rows * DYN_OBS], vec![0u8; rows * N_ACTIONS]);
    let (mut oa, mut ob) = (StepOutputs::new(n, s), StepOutputs::new(n, s));
    for it in 0..(2 * l.episode_len + 1) {
        cpu.dyn_obs(&mut dyn_c).unwrap();
        cpu.action_mask(&mut mask_c).unwrap();
        let lp = parity::learner_log_probs(&dyn_c, &mask_c, &w);
        let dev_lp = stream.clone_htod(&lp).unwrap();
        let draws = host.state().draws;
        gpu.sample_policy(
            &dev_lp,
            seed,
            draws,
            &mut actions,
            &mut logp,
            Some(&mut env_actions),
        )
        .unwrap();
        let want: Vec<u32> = lp
            .chunks_exact(N_ACTIONS)
            .map(|row| sample_row(row, host.uniform()))
            .collect();
        let got = stream.clone_dtoh(&actions).unwrap();
        let got_lp = stream.clone_dtoh(&logp).unwrap();
        assert_eq!(got, want, "step {it}: draws");
        for (i, &a) in want.iter().enumerate() {
            assert_eq!(
                got_lp[i],
                lp[i * N_ACTIONS + a as usize],
                "step {it} row {i}"
            );
        }
        let acts: Vec<u8> = want.iter().map(|&a| a as u8).collect();
        cpu.step(&acts, &master).unwrap();
        gpu.step_device(&env_actions, &dev_master).unwrap();
        cpu.read_outputs(&mut oa).unwrap();
        gpu.read_outputs(&mut ob).unwrap();
        let ctx = |e: String| format!("step {it}: {e}");
        cmp_outputs(&oa, &ob).map_err(ctx).unwrap();
        cmp_snapshots(&cpu.snapshot().unwrap(), &gpu.snapshot().unwrap())
            .map_err(ctx)
            .unwrap();
        cpu.drain_episodes().unwrap();
        gpu.drain_episodes().unwrap();
    }
}
