//! The environment suite, written once and instantiated per backend (candle's `test_device!`
//! pattern): `cpu` always, `cuda` with the feature (ignored unless a GPU is present).
//! Each test cites the section of docs/env-spec.md it checks.

mod envkit;

use envkit::*;
use marl_trade::env::logic::{BUY_LARGE, BUY_SMALL, HOLD, SELL_ALL};
use marl_trade::env::obs::{DYN_OBS, OBS_DIM};
use marl_trade::env::{BackendKind, Period};
use marl_trade::reward::N_COMPONENTS;
use marl_trade::rng::SplitMix64;

/// Accounting (spec §4.10): after every step `cash + sum q * C[t] == equity`, and the per-symbol
/// pnl and cost components add up to the equity change. A property test over random actions,
/// seeds, leverage caps and symbol counts; the fixed sweep at the end also proves that borrowing
/// (and so the borrow fee) is exercised.
fn accounting_identity(kind: BackendKind) {
    use proptest::test_runner::{Config as PtConfig, TestRunner};
    let mut runner = TestRunner::new(PtConfig {
        cases: 12,
        ..PtConfig::default()
    });
    runner
        .run(
            &(0u64..10_000, 1.0f64..2.5, 1usize..9),
            |(seed, lev, syms)| {
                check_accounting(kind, seed, lev, syms);
                Ok(())
            },
        )
        .unwrap();
    let borrowed = (1..6u64)
        .filter(|&seed| check_accounting(kind, seed, 1.0 + 0.3 * seed as f64, 6))
        .count();
    assert!(
        borrowed >= 3,
        "leverage used in only {borrowed} of 5 runs: borrow fees not covered"
    );
}

/// One accounting run; returns whether cash ever went negative.
fn check_accounting(kind: BackendKind, seed: u64, lev: f64, syms: usize) -> bool {
    {
        let mut cfg = small_config(4, 40);
        cfg.risk.leverage_cap = lev;
        // large orders and caps so that the budget scaling and borrowing are exercised
        (cfg.risk.buy_small, cfg.risk.buy_medium, cfg.risk.buy_large) = (0.1, 0.2, 0.4);
        cfg.master.position_caps = vec![0.2, 0.3, 0.5, 0.8];
        cfg.risk.kill_drawdown = 0.5;
        let md = toy_market(syms, 400, 2, seed);
        let closes = md.close.clone();
        let s1 = md.n_symbols() + 1;
        let bars = md.bars;
        let mut env = env_on(&cfg, md, Period::Train, kind);
        env.reset(seed).unwrap();
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        let mut r = SplitMix64::new(100 + seed);
        let mut before = env.snapshot().unwrap();
        let mut borrowed = false;
        for _ in 0..150 {
            let (a, m) = random_actions(&mut r, n, s);
            let out = env.step(&a, &m).unwrap().clone();
            let snap = env.snapshot().unwrap();
            for i in 0..n {
                let st = &snap.scenarios[i];
                let t = (st.t0 + st.k) as usize;
                let marked: f64 = (0..s)
                    .map(|j| {
                        snap.symbols.q[i * s + j]
                            * closes[(st.path as usize * bars + t) * s1 + j] as f64
                    })
                    .sum();
                borrowed |= st.cash < 0.0;
                let e = st.cash + marked;
                assert!(
                    (e - st.equity).abs() <= 1e-9 * st.equity.abs(),
                    "seed {seed} scen {i}: {e} vs {}",
                    st.equity
                );
                assert!((st.gross - marked).abs() <= 1e-9 * st.equity.abs());
                if !out.done(i) {
                    // sum of (pnl + cost) components * C0 == E1 - E0 (components are f32)
                    let c0 = cfg.env.initial_capital;
                    let sum: f64 = (0..s)
                        .map(|j| {
                            let c = &out.components[(i * s + j) * N_COMPONENTS..];
                            (c[0] as f64 + c[1] as f64) * c0
                        })
                        .sum();
                    let de = st.equity - before.scenarios[i].equity;
                    assert!(
                        (sum - de).abs() <= 1e-5 * c0 * 1e-3 + 1e-6 * de.abs(),
                        "seed {seed}: {sum} vs {de}"
                    );
                }
            }
            before = snap;
        }
        borrowed
    }
}

/// Spec §4.7 with `leverage_cap = 1`: buys are scaled so that cash never goes negative at the fill.
fn no_borrowing_without_leverage(kind: BackendKind) {
    let mut cfg = small_config(3, 60);
    cfg.risk.leverage_cap = 1.0;
    cfg.risk.buy_large = 1.0; // every buy asks for the whole equity
    cfg.master.position_caps = vec![1.0; 4];
    cfg.risk.kill_drawdown = 1.0;
    let mut env = env_on(&cfg, toy_market(5, 300, 1, 3), Period::Train, kind);
    env.reset(3).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let mut r = SplitMix64::new(9);
    let mut mask = vec![0u8; n * s * 7];
    let c0 = cfg.env.initial_capital;
    for _ in 0..100 {
        env.action_mask(&mut mask).unwrap();
        let a = masked_actions(&mut r, &mask);
        env.step(&a, &vec![47; n]).unwrap();
        for st in env.snapshot().unwrap().scenarios {
            assert!(st.cash >= -1e-6 * c0, "cash {}", st.cash);
        }
    }
}

/// Spec §2, §1: the same seed gives the same run; another seed other starts.
fn same_seed_same_run(kind: BackendKind) {
    let run = |seed: u64| {
        let cfg = small_config(4, 30);
        let mut env = env_on(&cfg, toy_market(5, 500, 3, 11), Period::Train, kind);
        env.reset(seed).unwrap();
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        let mut r = SplitMix64::new(5);
        let mut trace = Vec::new();
        let mut obs = vec![0f32; n * s * OBS_DIM];
        for _ in 0..80 {
            let (a, m) = random_actions(&mut r, n, s);
            let out = env.step(&a, &m).unwrap().clone();
            env.gather_obs(&mut obs).unwrap();
            trace.push((out, obs.clone()));
        }
        (trace, env.snapshot().unwrap())
    };
    let (a, sa) = run(42);
    let (b, sb) = run(42);
    assert!(
        a == b && sa == sb,
        "same seed must give a bit-identical run"
    );
    let (_, sc) = run(43);
    assert_ne!(sa.scenarios, sc.scenarios);
}

/// Spec §4 + §5: HOLD never trades, pays no cost, and leaves equity at the initial capital.
fn hold_pays_no_cost(kind: BackendKind) {
    let cfg = small_config(3, 50);
    let mut env = env_on(&cfg, toy_market(4, 300, 1, 2), Period::Train, kind);
    env.reset(1).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    for _ in 0..120 {
        let out = env
            .step(
                &vec![HOLD; n * s],
                &vec![cfg.master.default_action as u8; n],
            )
            .unwrap();
        for c in out.components.chunks_exact(N_COMPONENTS) {
            assert_eq!(c[0], 0.0, "pnl");
            assert_eq!(c[1], 0.0, "cost");
            assert_eq!(c[2], 0.0, "timing");
        }
        for st in env.snapshot().unwrap().scenarios {
            assert_eq!(st.cash, cfg.env.initial_capital);
            assert_eq!(st.equity, cfg.env.initial_capital);
        }
    }
}

/// Spec §4.11: a drawdown past the threshold liquidates, terminates and auto-resets.
fn kill_switch_trips(kind: BackendKind) {
    let mut cfg = small_config(2, 500);
    cfg.risk.kill_drawdown = 0.002;
    let mut env = env_on(&cfg, toy_market(4, 600, 1, 4), Period::Train, kind);
    env.reset(2).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let mut tripped = 0;
    for _ in 0..200 {
        let out = env
            .step(&vec![BUY_LARGE; n * s], &vec![47; n])
            .unwrap()
            .clone();
        for i in 0..n {
            if out.terminated[i] == 1 {
                tripped += 1;
                assert_eq!(out.truncated[i], 0);
            }
        }
        if tripped > 0 {
            break;
        }
    }
    assert!(tripped > 0, "kill switch never tripped");
    let recs = env.drain_finished();
    assert!(
        recs.iter()
            .any(|r| r.killed && r.total_return <= -0.002 + 1e-12)
    );
    // the scenario restarted flat
    let snap = env.snapshot().unwrap();
    for (i, rec) in recs.iter().enumerate().filter(|(_, r)| r.killed) {
        let st = &snap.scenarios[rec.scenario as usize];
        assert_eq!(
            (st.k, st.cash, st.open_count),
            (0, cfg.env.initial_capital, 0),
            "record {i}"
        );
    }
}

/// Spec §4.2 and §4.4: masked actions run as HOLD; the open-position limit holds.
fn masking_and_open_limit(kind: BackendKind) {
    let cfg = small_config(2, 100);
    let mut env = env_on(&cfg, toy_market(8, 300, 1, 6), Period::Train, kind);
    env.reset(0).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    // selling with no position is masked: nothing happens
    let out = env
        .step(&vec![SELL_ALL; n * s], &vec![1; n])
        .unwrap()
        .clone();
    assert!(
        out.components
            .chunks_exact(N_COMPONENTS)
            .all(|c| c[1] == 0.0)
    );
    let snap = env.snapshot().unwrap();
    assert!(
        snap.scenarios
            .iter()
            .all(|st| st.invalid_actions == s as u32 && st.open_count == 0)
    );
    // master action 1: risk 0.5, cap 0.02, neutral -> max_open = min(40, 8) = 8; use defensive
    // with max_open 3 to see the limit bite.
    let mut cfg2 = cfg.clone();
    cfg2.master.regime_max_open = vec![3, 5, 8];
    let mut env = env_on(&cfg2, toy_market(8, 300, 1, 6), Period::Train, kind);
    env.reset(0).unwrap();
    env.step(&vec![BUY_SMALL; n * s], &vec![0; n]).unwrap();
    let snap = env.snapshot().unwrap();
    for st in &snap.scenarios {
        assert_eq!(st.open_count, 3);
        assert_eq!(st.limited_orders, 5);
    }
    // now the mask forbids opening more
    let mut mask = vec![0u8; n * s * 7];
    env.action_mask(&mut mask).unwrap();
    for (j, m) in mask.chunks_exact(7).enumerate() {
        let has = snap.symbols.q[j] > 0.0;
        assert_eq!(m[BUY_SMALL as usize] == 1, has, "symbol {j}");
    }
}

/// The dynamic observation is the tail of the full one (spec §6).
fn dyn_obs_is_tail_of_full_obs(kind: BackendKind) {
    let cfg = small_config(2, 40);
    let mut env = env_on(&cfg, toy_market(3, 300, 1, 8), Period::Train, kind);
    env.reset(5).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    env.step(&vec![BUY_SMALL; n * s], &vec![5; n]).unwrap();
    let mut full = vec![0f32; n * s * OBS_DIM];
    let mut dynamic = vec![0f32; n * s * DYN_OBS];
    env.gather_obs(&mut full).unwrap();
    env.dyn_obs(&mut dynamic).unwrap();
    for (f, d) in full
        .chunks_exact(OBS_DIM)
        .zip(dynamic.chunks_exact(DYN_OBS))
    {
        assert_eq!(&f[OBS_DIM - DYN_OBS..], d);
        assert!(f.iter().all(|x| x.is_finite()));
    }
}

/// Half-precision observations (spec §6): `gather_obs_f16` / `_bf16` and `dyn_obs_f16` / `_bf16`
/// are the f32 observations rounded to nearest even; a backend without them says so with
/// `BackendUnavailable`, never with wrong numbers.
fn half_obs_is_rounded_f32(kind: BackendKind) {
    use half::{bf16, f16};
    use marl_trade::error::ErrorKind;
    let cfg = small_config(2, 40);
    let mut env = env_on(&cfg, toy_market(3, 300, 1, 8), Period::Train, kind);
    env.reset(5).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let mut r = SplitMix64::new(9);
    for _ in 0..6 {
        let acts: Vec<u8> = (0..n * s).map(|_| r.below(7) as u8).collect();
        env.step(&acts, &vec![5; n]).unwrap();
    }
    for dim in [OBS_DIM, DYN_OBS] {
        let mut f32s = vec![0f32; n * s * dim];
        let mut h = vec![f16::ZERO; n * s * dim];
        let mut b = vec![bf16::ZERO; n * s * dim];
        let (rh, rb) = if dim == OBS_DIM {
            env.gather_obs(&mut f32s).unwrap();
            (env.gather_obs_f16(&mut h), env.gather_obs_bf16(&mut b))
        } else {
            env.dyn_obs(&mut f32s).unwrap();
            (env.dyn_obs_f16(&mut h), env.dyn_obs_bf16(&mut b))
        };
        if kind != BackendKind::Cpu {
            assert_eq!(rh.unwrap_err().kind(), ErrorKind::BackendUnavailable);
            assert_eq!(rb.unwrap_err().kind(), ErrorKind::BackendUnavailable);
            continue;
        }
        rh.unwrap();
        rb.unwrap();
        assert!(f32s.iter().any(|&x| x != 0.0));
        for i in 0..f32s.len() {
            assert_eq!(
                h[i].to_bits(),
                f16::from_f32(f32s[i]).to_bits(),
                "f16 element {i}"
            );
            assert_eq!(
                b[i].to_bits(),
                bf16::from_f32(f32s[i]).to_bits(),
                "bf16 element {i}"
            );
        }
    }
    assert!(env.gather_obs_f16(&mut [f16::ZERO; 3]).is_err());
}

/// No look-ahead (spec §4, §6): perturbing every series after bar `t*` changes no observation of a
/// bar `<= t*` and no reward of a step that ends at a bar `<= t*`; later ones do change.
fn no_look_ahead(kind: BackendKind) {
    let (s, t, lo) = (5, 400, 120);
    let mut cfg = small_config(2, 1000); // one episode spans the period: deterministic start
    cfg.risk.kill_drawdown = 1.0;
    let base = toy_market(s, t, 1, 21);
    let t_star = 200;
    let mut perturbed = base.clone();
    let mut r = SplitMix64::new(77);
    let s1 = s + 1;
    for ti in t_star + 1..t {
        for j in 0..s1 {
            let i = ti * s1 + j;
            let f = (1.0 + 0.05 * r.normal()).max(0.5) as f32;
            for v in [
                &mut perturbed.open,
                &mut perturbed.high,
                &mut perturbed.low,
                &mut perturbed.close,
            ] {
                v[i] *= f;
            }
            perturbed.volume[i] *= 2.0;
        }
        for j in 0..s {
            perturbed.sentiment[ti * s + j] = -perturbed.sentiment[ti * s + j];
        }
        perturbed.macro_series[ti * 2 + 1] += 10.0;
    }
    let run = |md: marl_trade::data::MarketData| {
        let mut env = env_on(&cfg, md, Period::Bars(lo, t), kind);
        env.reset(3).unwrap();
        let (n, s) = (env.n_scenarios(), env.n_symbols());
        let mut r = SplitMix64::new(8);
        let mut obs = vec![0f32; n * s * OBS_DIM];
        let mut mask = vec![0u8; n * s * 7];
        let mut trace = Vec::new();
        let start = env.snapshot().unwrap().scenarios[0].t0 as usize;
        for _ in 0..150 {
            env.gather_obs(&mut obs).unwrap();
            env.action_mask(&mut mask).unwrap();
            let a = masked_actions(&mut r, &mask);
            let out = env.step(&a, &vec![30; n]).unwrap();
            trace.push((
                obs.clone(),
                mask.clone(),
                out.reward.clone(),
                out.master_reward.clone(),
            ));
        }
        (start, trace)
    };
    let (start, a) = run(base);
    let (start_b, b) = run(perturbed);
    assert_eq!(start, start_b);
    assert!(start < t_star && start + 150 > t_star + 2);
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        let bar = start + k; // observation bar of step k; its reward lands at bar + 1
        if bar <= t_star {
            assert!(x.0 == y.0 && x.1 == y.1, "observation of bar {bar} changed");
        }
        if bar < t_star {
            assert!(
                x.2 == y.2 && x.3 == y.3,
                "reward of the step into bar {} changed",
                bar + 1
            );
        }
    }
    let after = start + 150 - 1;
    assert!(
        a[after - start].0 != b[after - start].0,
        "perturbation had no effect at all"
    );
}

/// Spec §5 "Episode statistics": the per-component sums of finished episodes equal the weighted
/// components returned step by step; shares add up to 1; the record has the episode's length.
fn episode_stats_add_up(kind: BackendKind) {
    let mut cfg = small_config(3, 20);
    cfg.risk.kill_drawdown = 1.0;
    let w = [10.0, 5.0, 2.0, 3.0, 5.0, 0.5, 1.0];
    let mut env = env_on(&cfg, toy_market(4, 300, 1, 12), Period::Train, kind);
    env.reset(4).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let mut r = SplitMix64::new(3);
    let mut mask = vec![0u8; n * s * 7];
    let mut seen = [0f64; N_COMPONENTS];
    for k in 0..20 {
        env.action_mask(&mut mask).unwrap();
        let a = masked_actions(&mut r, &mask);
        let out = env.step(&a, &vec![20; n]).unwrap();
        for c in out.components.chunks_exact(N_COMPONENTS) {
            for i in 0..N_COMPONENTS {
                seen[i] += w[i] * c[i] as f64;
            }
        }
        assert_eq!(out.truncated.iter().all(|&d| d == 1), k == 19);
    }
    let recs = env.drain_finished();
    assert_eq!(recs.len(), n);
    assert!(
        recs.iter()
            .all(|r| r.length == 20 && !r.killed && r.components.count == 20 * s as u64)
    );
    let stats = env.episode_stats();
    let share: f64 = stats.iter().map(|c| c.share).sum();
    assert!((share - 1.0).abs() < 1e-12);
    for (i, st) in stats.iter().enumerate() {
        assert!(
            (st.sum - seen[i]).abs() <= 1e-5 * seen[i].abs() + 1e-9,
            "{}: {} vs {}",
            st.name,
            st.sum,
            seen[i]
        );
        assert!((st.mean - st.sum / (n * s * 20) as f64).abs() < 1e-12);
    }
    assert!(stats[1].sum < 0.0, "trading paid costs");
    assert_eq!(env.episode_stats()[0].sum, 0.0, "stats reset after reading");
}

/// Bad calls are errors, not panics.
fn bad_inputs_are_errors(kind: BackendKind) {
    let cfg = small_config(2, 40);
    let mut env = env_on(&cfg, toy_market(3, 300, 1, 8), Period::Train, kind);
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    assert!(
        env.step(&vec![0; n * s], &vec![0; n]).is_err(),
        "step before reset"
    );
    env.reset(0).unwrap();
    assert!(env.step(&vec![7; n * s], &vec![0; n]).is_err());
    assert!(env.step(&vec![0; n * s], &vec![48; n]).is_err());
    assert!(env.step(&vec![0; n * s - 1], &vec![0; n]).is_err());
    assert!(env.gather_obs(&mut [0.0; 3]).is_err());
}

macro_rules! env_suite {
    ($module:ident, $kind:expr $(, #[$attr:meta])*) => {
        mod $module {
            use super::*;
            $(#[$attr])* #[test] fn accounting_identity() { super::accounting_identity($kind) }
            $(#[$attr])* #[test] fn no_borrowing_without_leverage() { super::no_borrowing_without_leverage($kind) }
            $(#[$attr])* #[test] fn same_seed_same_run() { super::same_seed_same_run($kind) }
            $(#[$attr])* #[test] fn hold_pays_no_cost() { super::hold_pays_no_cost($kind) }
            $(#[$attr])* #[test] fn kill_switch_trips() { super::kill_switch_trips($kind) }
            $(#[$attr])* #[test] fn masking_and_open_limit() { super::masking_and_open_limit($kind) }
            $(#[$attr])* #[test] fn dyn_obs_is_tail_of_full_obs() { super::dyn_obs_is_tail_of_full_obs($kind) }
            $(#[$attr])* #[test] fn half_obs_is_rounded_f32() { super::half_obs_is_rounded_f32($kind) }
            $(#[$attr])* #[test] fn no_look_ahead() { super::no_look_ahead($kind) }
            $(#[$attr])* #[test] fn episode_stats_add_up() { super::episode_stats_add_up($kind) }
            $(#[$attr])* #[test] fn bad_inputs_are_errors() { super::bad_inputs_are_errors($kind) }
        }
    };
}

env_suite!(cpu, BackendKind::Cpu);
#[cfg(cuda_env)]
env_suite!(cuda, BackendKind::Cuda, #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]);
