//! The master observation (docs/env-spec.md §8): the CPU backend against the kernel's own code run
//! on the host (`kernels/master_obs.cuh` through `kernels/master_obs_shim.c`, compiled by build.rs
//! with `-ffp-contract=off`), exactly; its values by hand; its ABI; and its errors.
//!
//! The parity test steps a CPU env with random (masked, trading) symbol actions and random master
//! actions over several episodes, and at every `interval`-th step computes the master observation
//! both ways from the same state and the same anchors: `VecEnv::master_obs` (CPU backend,
//! `env::master_obs::master_obs_row`) and `marl_host_master_obs` over the snapshot's scenario states
//! with `MasterObsArgs` built from host addresses, as the CUDA backend builds it from device ones.
//! Every float and every anchor must be equal.

mod envkit;

use std::sync::Arc;

use marl_trade::env::abi::EnvDims;
use marl_trade::env::master_obs::{
    M_DIRECTIVE, M_INTENTS, M_REGIME, M_TELEMETRY, MASTER_INTENTS, MASTER_OBS, MasterAnchor,
    MasterObsArgs, VIX_LOOKBACK,
};
use marl_trade::env::{BackendKind, Period, ScenarioState, VecEnv};
use marl_trade::error::ErrorKind;
use marl_trade::features::{Features, N_REGIME};
use marl_trade::rng::SplitMix64;

unsafe extern "C" {
    fn marl_master_obs_layout(out: *mut u64, cap: u32) -> u32;
    fn marl_host_master_obs(a: *const MasterObsArgs);
}

/// The kernel code on the host, over `states` with `anchors` (updated in place).
fn shim_master_obs(
    env: &VecEnv,
    states: &[ScenarioState],
    intents: &[f32],
    anchors: &mut [MasterAnchor],
) -> Vec<f32> {
    let l = env.layout();
    let (md, f) = (env.data(), env.features());
    let mut out = vec![f32::NAN; l.n_scenarios * MASTER_OBS];
    let args = MasterObsArgs {
        p: l.params,
        dm: EnvDims::new(l, 4),
        close: md.close.as_ptr() as u64,
        macro_series: md.macro_series.as_ptr() as u64,
        regime: f.regime.as_ptr() as u64,
        scen: states.as_ptr() as u64,
        intents: intents.as_ptr() as u64,
        anchors: anchors.as_mut_ptr() as u64,
        out: out.as_mut_ptr() as u64,
    };
    // SAFETY: every address points at a live buffer of the size the kernel reads (N states,
    // N * MASTER_INTENTS intents, N anchors, N * MASTER_OBS outputs; the market data and regime
    // features of the env), and the struct's layout is checked by `master_obs_abi_matches`.
    unsafe { marl_host_master_obs(&args) };
    out
}

fn random_intents(r: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n * MASTER_INTENTS)
        .map(|_| r.uniform() as f32)
        .collect()
}

#[test]
fn master_obs_abi_matches() {
    let mut v = vec![0u64; 64];
    // SAFETY: the buffer holds 64 values; the function writes at most `cap`.
    let len = unsafe { marl_master_obs_layout(v.as_mut_ptr(), 64) } as usize;
    use std::mem::{offset_of, size_of};
    let want: Vec<(&str, usize)> = vec![
        ("sizeof MasterAnchor", size_of::<MasterAnchor>()),
        ("MasterAnchor.equity", offset_of!(MasterAnchor, equity)),
        ("MasterAnchor.episode", offset_of!(MasterAnchor, episode)),
        ("MasterAnchor.valid", offset_of!(MasterAnchor, valid)),
        ("sizeof MasterObsArgs", size_of::<MasterObsArgs>()),
        ("MasterObsArgs.p", offset_of!(MasterObsArgs, p)),
        ("MasterObsArgs.dm", offset_of!(MasterObsArgs, dm)),
        ("MasterObsArgs.close", offset_of!(MasterObsArgs, close)),
        (
            "MasterObsArgs.macro_series",
            offset_of!(MasterObsArgs, macro_series),
        ),
        ("MasterObsArgs.regime", offset_of!(MasterObsArgs, regime)),
        ("MasterObsArgs.scen", offset_of!(MasterObsArgs, scen)),
        ("MasterObsArgs.intents", offset_of!(MasterObsArgs, intents)),
        ("MasterObsArgs.anchors", offset_of!(MasterObsArgs, anchors)),
        ("MasterObsArgs.out", offset_of!(MasterObsArgs, out)),
        ("MASTER_INTENTS", MASTER_INTENTS),
        ("M_TELEMETRY.start", M_TELEMETRY.start),
        ("M_REGIME.start", M_REGIME.start),
        ("M_DIRECTIVE.start", M_DIRECTIVE.start),
        ("MASTER_OBS", MASTER_OBS),
        ("VIX_LOOKBACK", VIX_LOOKBACK),
    ];
    assert_eq!(len, want.len(), "the C list has {len} entries");
    for ((name, rust), c) in want.iter().zip(&v) {
        assert_eq!(*rust as u64, *c, "{name}: Rust {rust}, C {c}");
    }
}

#[test]
fn cpu_master_obs_equals_the_kernel_code_on_the_host() {
    let mut checked = 0;
    let mut saw = [false; 4]; // an open position, a drawdown, a second episode, a valid anchor
    for (case, (n, s, len, interval)) in [(6, 5, 24, 4), (3, 12, 40, 7), (1, 1, 9, 1)]
        .into_iter()
        .enumerate()
    {
        let mut cfg = envkit::small_config(n, len);
        // A tight kill switch so that some episodes end early and scenarios auto-reset.
        cfg.risk.kill_drawdown = 0.03;
        let md = envkit::toy_market(s, 600, 2, 11 + case as u64);
        let mut env = envkit::env_on(&cfg, md, Period::Train, BackendKind::Cpu);
        env.reset(5 + case as u64).unwrap();
        let mut r = SplitMix64::new(100 + case as u64);
        let mut mask = vec![0u8; n * s * 7];
        let mut master = vec![0u8; n];
        for step in 0..6 * len {
            if step % interval == 0 {
                let snap = env.snapshot().unwrap();
                let intents = random_intents(&mut r, n);
                let mut anchors = env.master_anchors().to_vec();
                let want = shim_master_obs(&env, &snap.scenarios, &intents, &mut anchors);
                let mut got = vec![f32::NAN; n * MASTER_OBS];
                env.master_obs(&intents, &mut got).unwrap();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0),
                        "case {case} step {step}: value {} of scenario {}: cpu {a:e} vs kernel {b:e}",
                        i % MASTER_OBS,
                        i / MASTER_OBS
                    );
                }
                assert_eq!(
                    env.master_anchors(),
                    &anchors[..],
                    "case {case} step {step}"
                );
                for (st, row) in snap.scenarios.iter().zip(got.chunks_exact(MASTER_OBS)) {
                    saw[0] |= st.open_count > 0;
                    saw[1] |= row[M_TELEMETRY.start + 2] > 0.0;
                    saw[2] |= st.episode > 0;
                    saw[3] |= row[M_TELEMETRY.start + 6] != 0.0;
                }
                checked += 1;
                for (m, c) in master.iter_mut().zip(0..) {
                    *m = r.below(48) as u8 ^ (c & 1);
                }
            }
            env.action_mask(&mut mask).unwrap();
            let a = envkit::masked_actions(&mut r, &mask);
            env.step(&a, &master).unwrap();
        }
    }
    assert!(checked > 20, "{checked}");
    assert_eq!(saw, [true; 4], "open, drawdown, next episode, anchored P&L");
}

#[test]
fn master_obs_by_hand() {
    let (n, s, len) = (2, 3, 10);
    let cfg = envkit::small_config(n, len);
    let md = envkit::toy_market(s, 400, 1, 3);
    let mut env = envkit::env_on(&cfg, md, Period::Train, BackendKind::Cpu);
    env.reset(9).unwrap();
    let intents: Vec<f32> = (0..n * MASTER_INTENTS).map(|i| i as f32 * 0.01).collect();
    let mut o = vec![0f32; n * MASTER_OBS];
    env.master_obs(&intents, &mut o).unwrap();
    let snap = env.snapshot().unwrap();
    let md = env.data().clone();
    let f: Arc<Features> = env.features().clone();
    let def = cfg.master.default_action as usize;
    for (i, (row, st)) in o.chunks_exact(MASTER_OBS).zip(&snap.scenarios).enumerate() {
        assert_eq!(
            &row[M_INTENTS],
            &intents[i * MASTER_INTENTS..(i + 1) * MASTER_INTENTS]
        );
        // After reset: all cash, flat, no drawdown, no return yet, step 0.
        assert_eq!(&row[M_TELEMETRY], &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let (p, t) = (st.path as usize, st.t0 as usize);
        let rg = M_REGIME.start;
        assert_eq!(&row[rg..rg + N_REGIME], f.regime_at(p, t));
        let vix = |t: usize| md.macro_series[(p * md.bars + t) * 2 + 1];
        assert_eq!(row[rg + N_REGIME], vix(t) / 100.0);
        assert_eq!(row[rg + N_REGIME + 1], (vix(t) - vix(t - 5)) / 100.0);
        let b = |t: usize| md.close[md.px(p, t, s)] as f64;
        assert_eq!(row[rg + N_REGIME + 2], (b(t) / b(t - 1) - 1.0) as f32);
        // The default directive's indices (risk, cap, mode) as one-hots.
        let mut want = [0f32; 11];
        want[def / 12] = 1.0;
        want[4 + (def / 3) % 4] = 1.0;
        want[8 + def % 3] = 1.0;
        assert_eq!(&row[M_DIRECTIVE], &want);
    }
    // Trade for a few steps under directive 47, then observe again: the P&L since the last
    // observation is the equity ratio, the directive slice shows 47, progress is k / L.
    let e0: Vec<f64> = snap.scenarios.iter().map(|s| s.equity).collect();
    for _ in 0..4 {
        env.step(&vec![1u8; n * s], &[47; 2]).unwrap();
    }
    env.master_obs(&intents, &mut o).unwrap();
    let snap = env.snapshot().unwrap();
    for (i, (row, st)) in o.chunks_exact(MASTER_OBS).zip(&snap.scenarios).enumerate() {
        let tm = M_TELEMETRY.start;
        assert!(st.gross > 0.0 && st.open_count > 0);
        assert_eq!(row[tm], (st.cash / st.equity) as f32);
        assert_eq!(row[tm + 1], (st.gross / st.equity) as f32);
        assert_eq!(row[tm + 6], (st.equity / e0[i] - 1.0) as f32);
        assert_eq!(row[tm + 7], 4.0 / len as f32);
        let d = &row[M_DIRECTIVE];
        assert_eq!((d[3], d[4 + 3], d[8 + 2]), (1.0, 1.0, 1.0), "{d:?}");
        assert_eq!(d.iter().sum::<f32>(), 3.0);
    }
    // Observing again at once: nothing happened since, so 0.
    env.master_obs(&intents, &mut o).unwrap();
    assert!(
        o.chunks_exact(MASTER_OBS)
            .all(|r| r[M_TELEMETRY.start + 6] == 0.0)
    );
}

#[test]
fn master_obs_errors() {
    let cfg = envkit::small_config(2, 8);
    let md = envkit::toy_market(3, 300, 1, 4);
    let mut env = envkit::env_on(&cfg, md, Period::Train, BackendKind::Cpu);
    let intents = vec![0f32; 2 * MASTER_INTENTS];
    let mut o = vec![0f32; 2 * MASTER_OBS];
    let e = env.master_obs(&intents, &mut o).unwrap_err();
    assert!(e.to_string().contains("before reset"), "{e}");
    env.reset(1).unwrap();
    let mut short = vec![0f32; 2 * MASTER_OBS - 1];
    let e = env.master_obs(&intents, &mut short).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(
        e.to_string().contains("master observation")
            && e.to_string().contains(&format!("{}", 2 * MASTER_OBS)),
        "{e}"
    );
    let e = env.master_obs(&intents[1..], &mut o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.to_string().contains("intent"), "{e}");
    let mut bad = intents.clone();
    bad[MASTER_INTENTS + 2] = f32::NAN;
    let e = env.master_obs(&bad, &mut o).unwrap_err();
    assert!(e.to_string().contains("intent 2 of scenario 1"), "{e}");
    assert!(env.set_master_anchors(&[MasterAnchor::default()]).is_err());
}
