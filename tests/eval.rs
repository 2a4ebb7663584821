//! Backtests and baselines against hand computations (src/eval, docs/env-spec.md).

use std::path::Path;
use std::sync::Arc;

use marl_trade::config::Config;
use marl_trade::data::{self, MarketData};
use marl_trade::env::obs::DYN_OBS;
use marl_trade::env::{BackendKind, N_ACTIONS, Period, VecEnv};
use marl_trade::eval::{
    BacktestOptions, BacktestPolicy, Baseline, EqualWeight, Hold, PolicyView, RandomPolicy,
    backtest_setup, equal_weight_master, format_table, run_baselines, run_policy, run_spy,
};
use marl_trade::features::{Features, WARMUP};
use marl_trade::reward::N_COMPONENTS;

/// 8 symbols, 600 bars, `paths` paths: train period [0, 420), the env steps at bars 96..=418.
fn small(paths: usize) -> (Config, Arc<MarketData>, Arc<Features>) {
    let mut cfg = Config::default();
    cfg.data.synthetic.symbols = 8;
    cfg.data.synthetic.bars = 600;
    cfg.data.synthetic.paths = paths;
    cfg.data.synthetic.seed = 3;
    cfg.env.scenarios = 4;
    cfg.env.episode_len = 64;
    let md = Arc::new(data::generate(&cfg.data.synthetic, "SPY"));
    let f = Arc::new(Features::compute(&md));
    (cfg, md, f)
}

fn opts(period: Period) -> BacktestOptions {
    BacktestOptions {
        period,
        backend: BackendKind::Cpu,
        seed: 5,
        progress: false,
        ..Default::default()
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn every_config_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected configs/default.toml and configs/small.toml"
    );
    // default.toml spells out the built-in defaults exactly.
    assert_eq!(
        Config::from_file(dir.join("default.toml")).unwrap(),
        Config::default()
    );
    let small = Config::from_file(dir.join("small.toml")).unwrap();
    assert_eq!(
        (small.data.synthetic.symbols, small.data.synthetic.bars),
        (8, 1200)
    );
    assert_eq!((small.env.scenarios, small.env.episode_len), (4, 64));
}

/// Required by the issue: equal-weight buy-and-hold's final equity equals a hand computation from
/// the raw arrays and the spec formulas, to 1e-9 relative, on every path.
#[test]
fn equal_weight_final_equity_matches_hand_computation() {
    let (cfg, md, f) = small(2);
    let res = run_policy(
        &cfg.env_setup(),
        md.clone(),
        f,
        &opts(Period::Train),
        &mut EqualWeight,
    )
    .unwrap();

    let s = md.n_symbols();
    let split = (600.0 * 0.7f64).floor() as usize; // 420
    let (t0, t_end) = (WARMUP, split - 1); // first decision bar 96, last bar 419
    assert_eq!((res.first_bar, res.last_bar), (t0, t_end));
    assert_eq!(res.curves.len(), 2);

    // Equal-weight master for S = 8: 8 * 0.005 * 2.0 = 0.08 <= 1 -> risk 2.0 (index 3);
    // order size 0.005 * 2 = 0.01 <= cap 0.02 (index 0); aggressive (max_open = min(143, 8) = 8):
    // m = 12 * 3 + 3 * 0 + 2 = 38.
    let layout = backtest_setup(&cfg.env_setup(), &md, Period::Train)
        .unwrap()
        .1;
    assert_eq!(equal_weight_master(&layout.params), 38);
    let c0 = cfg.env.initial_capital;
    let risk = cfg.master.risk_multipliers[3];
    let comm = cfg.costs.commission_bps / 1e4;
    let hs = cfg.costs.half_spread_bps / 1e4;
    let max_slip = cfg.costs.max_slippage_bps / 1e4;
    let lev = cfg.risk.leverage_cap;

    for p in 0..2 {
        let px = |arr: &[f32], t: usize, j: usize| arr[(p * md.bars + t) * (s + 1) + j] as f64;
        // spec §4.3: d = buy_small * risk * E0 (below the cap room 0.02 * E0), qb = d / C[t0].
        // spec §4.5: X = qb * O[t0+1], DV = C[t0] * V[t0],
        //            slip = min(hs + impact * sqrt(X / max(DV, 1)), max), Pb = O[t0+1] * (1 + slip).
        // spec §4.8: cash -= qb * Pb * (1 + c).
        let mut cash = c0;
        let mut q = vec![0.0; s];
        let mut req = 0.0;
        let mut hand_cost = 0.0;
        for (j, qj) in q.iter_mut().enumerate() {
            let d = cfg.risk.buy_small * risk * c0;
            assert!(d < 0.02 * c0);
            let c = px(&md.close, t0, j);
            let o1 = px(&md.open, t0 + 1, j);
            let dv = c * px(&md.volume, t0, j);
            *qj = d / c;
            let x = *qj * o1;
            let slip = (hs + cfg.costs.impact_coef * (x / dv.max(1.0)).sqrt()).min(max_slip);
            let pb = o1 * (1.0 + slip);
            cash -= *qj * pb * (1.0 + comm);
            req += *qj * (o1 + lev * (pb - o1 + comm * pb));
            hand_cost += comm * *qj * pb + *qj * (pb - o1);
        }
        // spec §4.7: the budget does not bind (lambda = 1); cash stays positive: no borrow fee.
        assert!(req <= lev * c0 && cash > 0.0);
        // then HOLD to the end; equity = cash + sum q * C[T_end].
        let hand: f64 = cash + (0..s).map(|j| q[j] * px(&md.close, t_end, j)).sum::<f64>();

        let curve = &res.curves[p];
        assert!(!curve.killed);
        assert_eq!(curve.steps(), t_end - t0);
        let got = *curve.equity.last().unwrap();
        assert!(
            rel(got, hand) < 1e-9,
            "path {p}: backtest {got} vs hand {hand}"
        );
        // costs paid are exactly the first step's commission and slippage
        let paid: f64 = curve.costs.iter().sum();
        assert!(
            rel(paid, hand_cost) < 1e-6,
            "path {p}: costs {paid} vs hand {hand_cost}"
        );
        assert!(
            curve.costs[1..].iter().all(|c| c.abs() < 1e-6),
            "only the first step trades"
        );
        // traded notional: the buys at O[t0+1]
        let traded: f64 = (0..s).map(|j| q[j] * px(&md.open, t0 + 1, j)).sum();
        assert!(rel(curve.traded[0], traded) < 1e-12);
        assert!(curve.traded[1..].iter().all(|&x| x == 0.0));
        // gross at the last bar = sum q * C[T_end]
        let g: f64 = (0..s).map(|j| q[j] * px(&md.close, t_end, j)).sum();
        assert!(rel(*curve.gross.last().unwrap(), g) < 1e-12);
    }
    // the averaged metrics are the mean of the per-path ones
    let m = &res.metrics;
    assert_eq!(m.paths, 2);
    let mean_ret = (res.per_path[0].total_return + res.per_path[1].total_return) / 2.0;
    assert!((m.total_return - mean_ret).abs() < 1e-15);
}

#[test]
fn hold_pays_nothing_and_keeps_its_capital() {
    let (cfg, md, f) = small(2);
    for period in [Period::Train, Period::Test] {
        let res = run_policy(
            &cfg.env_setup(),
            md.clone(),
            f.clone(),
            &opts(period),
            &mut Hold,
        )
        .unwrap();
        for c in &res.curves {
            assert!(c.equity.iter().all(|&e| e == cfg.env.initial_capital));
            assert!(c.costs.iter().all(|&x| x == 0.0));
            assert!(c.traded.iter().all(|&x| x == 0.0));
            assert!(c.gross.iter().all(|&x| x == 0.0));
        }
        let m = &res.metrics;
        assert_eq!(
            (
                m.total_return,
                m.costs_paid,
                m.turnover,
                m.exposure,
                m.max_drawdown
            ),
            (0.0, 0.0, 0.0, 0.0, 0.0)
        );
    }
    // the test period [420, 600) steps at bars 420..=598
    let res = run_policy(&cfg.env_setup(), md, f, &opts(Period::Test), &mut Hold).unwrap();
    assert_eq!(
        (res.first_bar, res.last_bar, res.curves[0].steps()),
        (420, 599, 179)
    );
}

#[test]
fn spy_buy_and_hold_matches_hand_computation() {
    let (cfg, md, _) = small(1);
    let res = run_spy(&cfg.env_setup(), &md, &opts(Period::Test)).unwrap();
    let s = md.n_symbols();
    let (t0, t_end) = (420, 599);
    let px = |arr: &[f32], t: usize| arr[t * (s + 1) + s] as f64;
    // q = C0 / (O[t0+1] * (1 + half_spread) * (1 + commission)), equity = q * C[t]
    let c0 = cfg.env.initial_capital;
    let q = c0 / (px(&md.open, t0 + 1) * (1.0 + 1e-4) * (1.0 + 7.5e-4));
    let c = &res.curves[0];
    assert_eq!(c.steps(), t_end - t0);
    assert!(rel(*c.equity.last().unwrap(), q * px(&md.close, t_end)) < 1e-12);
    assert!(rel(c.equity[1], q * px(&md.close, t0 + 1)) < 1e-12);
    // costs = C0 - q * O[t0+1] = q * O * ((1 + hs)(1 + c) - 1)
    let cost = q * px(&md.open, t0 + 1) * ((1.0 + 1e-4) * (1.0 + 7.5e-4) - 1.0);
    assert!(rel(c.costs.iter().sum::<f64>(), cost) < 1e-9);
    assert!((res.metrics.exposure - 1.0).abs() < 1e-12);
}

/// Replays a backtest by hand (same env, same start) and returns the per-step cost of the env's
/// `f32` cost components (`-cost * C0`), the invalid-action count, and whether it was killed.
fn replay_costs(
    cfg: &Config,
    md: &Arc<MarketData>,
    f: &Arc<Features>,
    policy: &mut dyn BacktestPolicy,
) -> (Vec<f64>, u32, bool) {
    let (bcfg, layout) = backtest_setup(&cfg.env_setup(), md, Period::Train).unwrap();
    assert_eq!(md.paths, 1);
    let mut env = VecEnv::new(
        &bcfg,
        md.clone(),
        f.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .unwrap();
    env.reset(5).unwrap();
    policy.reset();
    let (n, s) = (1, md.n_symbols());
    let mut mask = vec![0u8; n * s * N_ACTIONS];
    let mut dynobs = vec![0f32; n * s * DYN_OBS];
    let mut idx = vec![0u32; 2];
    let (mut acts, mut masters) = (vec![0u8; s], vec![0u8; 1]);
    let mut costs = Vec::new();
    for _ in 0..layout.episode_len {
        env.action_mask(&mut mask).unwrap();
        env.dyn_obs(&mut dynobs).unwrap();
        env.obs_index(&mut idx).unwrap();
        let snap = env.snapshot().unwrap();
        let k = [snap.scenarios[0].k];
        let view = PolicyView {
            layout: &layout,
            data: md,
            features: f,
            mask: &mask,
            dyn_obs: &dynobs,
            obs: None,
            obs_index: &idx,
            step_in_episode: &k,
            scenarios: &snap.scenarios,
        };
        policy.act(&view, &mut acts, &mut masters).unwrap();
        let out = env.step(&acts, &masters).unwrap();
        let c: f64 = (0..s)
            .map(|j| -(out.components[j * N_COMPONENTS + 1] as f64) * cfg.env.initial_capital)
            .sum();
        costs.push(c);
        if out.done(0) {
            let rec = env.drain_finished();
            return (costs, rec[0].invalid_actions, rec[0].killed);
        }
    }
    panic!("the episode did not end at the period's end");
}

#[test]
fn random_is_deterministic_respects_the_mask_and_costs_agree_with_the_env() {
    let (cfg, md, f) = small(1);
    let o = opts(Period::Train);
    let setup = cfg.env_setup();
    let run = || run_policy(&setup, md.clone(), f.clone(), &o, &mut RandomPolicy::new(9)).unwrap();
    let (a, b) = (run(), run());
    assert_eq!(a.curves, b.curves);
    let c = &a.curves[0];
    assert!(
        c.traded.iter().filter(|&&x| x > 0.0).count() > 100,
        "random trades often"
    );
    let (env_costs, invalid, killed) = replay_costs(&cfg, &md, &f, &mut RandomPolicy::new(9));
    assert_eq!(invalid, 0, "random only draws allowed actions");
    assert!(!killed);
    assert_eq!(env_costs.len(), c.costs.len());
    // the backtest's f64 identity-based costs agree with the env's f32 cost components
    for (k, (x, y)) in c.costs.iter().zip(&env_costs).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs() + 1e-6,
            "step {k}: {x} vs {y}"
        );
    }
    assert!(a.metrics.costs_paid > 0.0 && a.metrics.turnover > 0.0);
}

#[test]
fn kill_switch_stops_the_curve() {
    let (mut cfg, md, f) = small(1);
    // a hair-trigger kill switch and the largest buys: the first down move liquidates.
    cfg.risk.kill_drawdown = 0.0005;
    cfg.risk.buy_small = 0.1;
    let res = run_policy(
        &cfg.env_setup(),
        md.clone(),
        f.clone(),
        &opts(Period::Train),
        &mut EqualWeight,
    )
    .unwrap();
    let c = &res.curves[0];
    assert!(c.killed, "expected the kill switch to fire");
    assert_eq!(res.metrics.killed, 1.0);
    // the kill step: the last step with exposure before the flat tail
    let kill = c.gross.iter().rposition(|&g| g > 0.0).map_or(1, |i| i + 1);
    assert!(kill < c.equity.len());
    let last = c.equity[kill];
    assert!(
        c.equity[kill..].iter().all(|&e| e == last),
        "flat after the kill"
    );
    assert!(
        c.traded[kill..].iter().all(|&x| x == 0.0) && c.gross[kill..].iter().all(|&g| g == 0.0)
    );
    assert!(c.traded[kill - 1] > 0.0, "the liquidation trades");
    // equity path and costs agree with the env's own cost outputs up to the kill
    let (env_costs, _, killed) = replay_costs(&cfg, &md, &f, &mut EqualWeight);
    assert!(killed);
    assert_eq!(env_costs.len(), kill);
    for (k, (x, y)) in c.costs.iter().zip(&env_costs).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs() + 1e-6,
            "step {k}: {x} vs {y}"
        );
    }
}

#[test]
fn all_baselines_make_a_table() {
    let (cfg, md, f) = small(1);
    let res = run_baselines(&cfg.env_setup(), md, f, &opts(Period::Test), &Baseline::ALL).unwrap();
    let rows: Vec<_> = res.into_iter().map(|r| r.metrics).collect();
    let names: Vec<&str> = rows.iter().map(|m| m.policy.as_str()).collect();
    assert_eq!(names, ["hold", "random", "equal-weight", "spy"]);
    let table = format_table(&rows);
    assert_eq!(table.lines().count(), 6);
    for n in names {
        assert!(table.contains(n));
    }
    assert!("equal-weight".parse::<Baseline>().is_ok() && "spyy".parse::<Baseline>().is_err());
}
