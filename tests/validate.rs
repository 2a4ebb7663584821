//! The validation suite (`marl_trade::validate`): the walk-forward's fold layout and its bad
//! arguments, stitching, one CI-sized walk-forward end to end (`configs/small.toml`, two PPO
//! iterations per run) with resume after an interruption and refusal of another plan, the report's
//! criteria against its own tables, and a stress run of a scripted policy whose costs under the
//! x2 / x5 cost scenarios match a hand computation (and whose late-fills scenario buys one bar later).

use std::sync::Arc;

use marl_trade::data::{self, MarketData};
use marl_trade::env::logic::{BUY_SMALL, HOLD};
use marl_trade::env::{EnvLayout, Period};
use marl_trade::eval::{BacktestOptions, BacktestPolicy, Curve, PolicyView};
use marl_trade::features::WARMUP;
use marl_trade::market::Market;
use marl_trade::validate::report::Verdict;
use marl_trade::validate::stress::Scenario;
use marl_trade::validate::walkforward::{
    self, BASELINES_FILE, PLAN_FILE, RESULT_FILE, WalkForwardOptions, WalkForwardSpec, fold_layout,
    run_dir, stitch,
};
use marl_trade::validate::{build_report, stress_policy, walk_forward, write_report};
use marl_trade::{Config, ErrorKind};

fn small(overrides: &[&str]) -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_file_with_overrides(format!("{root}/configs/small.toml"), &o).unwrap()
}

fn spec(
    train: usize,
    test: usize,
    step: usize,
    embargo: usize,
    expanding: bool,
) -> WalkForwardSpec {
    WalkForwardSpec {
        train_bars: train,
        test_bars: test,
        step,
        expanding,
        embargo,
        seeds: 1,
        warm_start: false,
        iterations: None,
    }
}

#[test]
fn folds_never_test_on_trained_or_embargoed_bars_and_tile_the_period() {
    let cfg = small(&[]);
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    let mut checked = 0;
    for bars in [400usize, 777, 1200] {
        for (a, b, e) in [(150, 50, 0), (200, 37, 5), (120, 100, 13), (300, 1, 0)] {
            for step in [b, b + 7] {
                for expanding in [false, true] {
                    let s = spec(a, b, step, e, expanding);
                    let Ok(folds) = fold_layout(bars, &s) else {
                        assert!(a + e + b + 1 > bars, "layout refused {s:?} on {bars} bars");
                        continue;
                    };
                    assert!(!folds.is_empty());
                    for (i, f) in folds.iter().enumerate() {
                        assert_eq!(f.index, i);
                        // Training uses bars [train_lo, train_hi) only (last fill at train_hi - 1).
                        assert!(f.train_hi <= f.test_lo, "{f:?}");
                        // The embargo separates them exactly.
                        assert_eq!(f.embargo(), (f.train_hi, f.train_hi + e));
                        assert_eq!(f.test_lo, f.train_hi + e);
                        assert_eq!(f.test_last, f.test_lo + b);
                        assert!(f.test_last < bars);
                        let width = f.train_hi - f.train_lo;
                        if expanding {
                            assert_eq!(f.train_lo, 0);
                        } else {
                            assert_eq!(width, a);
                        }
                        assert_eq!(f.train_hi, a + i * step);
                        // No bar of this fold's test block lies in its training window or embargo.
                        for t in f.test_lo..=f.test_last {
                            assert!(!(f.train_lo..f.train_hi).contains(&t));
                            assert!(!(f.train_hi..f.test_lo).contains(&t));
                        }
                    }
                    // Consecutive blocks: each starts where the previous ended (step = test bars),
                    // or `step - test` bars later.
                    for w in folds.windows(2) {
                        assert_eq!(w[1].test_lo, w[0].test_last + (step - b));
                    }
                    // Coverage: from the first possible test bar, and no further fold fits.
                    let last = folds.last().unwrap();
                    assert_eq!(folds[0].test_lo, a + e);
                    assert!(
                        last.test_last + step > bars - 1,
                        "another fold fits: {last:?}"
                    );
                    checked += folds.len();
                }
            }
        }
    }
    assert!(checked > 50, "{checked}");

    // The environment a fold trains on really ends at train_hi: its last fill is at train_hi - 1.
    let folds = fold_layout(md.bars, &spec(400, 200, 200, 10, false)).unwrap();
    for f in &folds {
        let l = EnvLayout::new(&cfg.env_setup(), &md, f.train_period()).unwrap();
        assert_eq!((l.lo, l.hi), (f.train_lo, f.train_hi));
        assert!(l.start_a >= WARMUP.max(f.train_lo));
        assert!(l.hi <= f.test_lo);
        let t = EnvLayout::new(&cfg.env_setup(), &md, f.test_period()).unwrap();
        assert_eq!((t.start_a, t.hi - 1), (f.test_lo, f.test_last));
    }
}

#[test]
fn bad_walk_forward_arguments_are_clear_errors() {
    let cases: &[(WalkForwardSpec, &str)] = &[
        (
            spec(1000, 200, 200, 0, false),
            "--train-bars 1000 + --embargo 0 + --test-bars 200 + 1 = 1201 bars, but the data has 1200",
        ),
        (spec(900, 200, 200, 100, false), "--embargo 100"),
        (spec(50, 20, 20, 0, false), "--train-bars 50 is too short"),
        (
            spec(300, 100, 50, 0, false),
            "--step 50 is smaller than --test-bars 100",
        ),
        (spec(300, 0, 50, 0, false), "--test-bars must be >= 1"),
        (
            WalkForwardSpec {
                seeds: 0,
                ..spec(300, 100, 100, 0, false)
            },
            "--seeds must be >= 1",
        ),
    ];
    for (s, want) in cases {
        let e = fold_layout(1200, s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(want), "{e} (wanted `{want}`)");
    }
}

fn curve(c0: f64, eq: &[f64]) -> Curve {
    let mut c = Curve::new(c0, 252.0);
    for (i, &e) in eq.iter().enumerate() {
        c.push(e, 0.5 * e, 10.0 * i as f64, 0.1 * i as f64);
    }
    c
}

#[test]
fn the_stitched_curve_chains_the_fold_curves() {
    let a = curve(100.0, &[110.0, 99.0, 120.0]);
    let b = curve(100.0, &[90.0, 95.0]);
    let c = curve(100.0, &[101.0]);
    let s = stitch("x", &[(10, &a), (13, &b), (15, &c)]).unwrap();
    assert_eq!(s.bars, vec![10, 11, 12, 13, 14, 15, 16]);
    assert_eq!(s.fold_starts, vec![0, 3, 5]);
    // Fold 1 starts at 120 (fold 0's end): 120 * 0.9, 120 * 0.95; fold 2 at 114: 114 * 1.01.
    let want = [100.0, 110.0, 99.0, 120.0, 108.0, 114.0, 115.14];
    for (x, y) in s.curve.equity.iter().zip(want) {
        assert!((x - y).abs() < 1e-9, "{:?}", s.curve.equity);
    }
    assert!(
        (s.curve.costs[3] - 1.2 * 0.0).abs() < 1e-12
            && (s.curve.costs[4] - 1.2 * 0.1).abs() < 1e-12
    );
    assert!(
        (s.curve.traded[5] - 1.14 * 0.0).abs() < 1e-12
            && (s.curve.traded[4] - 1.2 * 10.0).abs() < 1e-12
    );
    assert!(stitch("none", &[]).is_err());
}

/// The per-bar returns of a curve.
fn rets(e: &[f64]) -> Vec<f64> {
    e.windows(2).map(|w| w[1] / w[0] - 1.0).collect()
}

#[test]
fn a_small_walk_forward_resumes_refuses_another_plan_and_reports() {
    let cfg = small(&[]);
    let market = Market::load(&cfg.data).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("wf");
    let s = WalkForwardSpec {
        seeds: 2,
        iterations: Some(2),
        ..spec(600, 150, 150, 20, false)
    };
    let folds = fold_layout(market.data.bars, &s).unwrap();
    assert_eq!(folds.len(), 3);
    let opts = WalkForwardOptions {
        save_every: 1,
        ..WalkForwardOptions::new(&out)
    };
    let mut actions = Vec::new();
    let first = walk_forward(&cfg, &market, &s, &opts, |o| actions.push(o.action)).unwrap();
    assert_eq!(actions.len(), 6);
    assert!(
        actions
            .iter()
            .all(|a| *a == walkforward::RunAction::Trained)
    );
    assert_eq!((first.runs_done, first.runs_total), (6, 6));
    assert!(out.join(PLAN_FILE).is_file() && out.join(walkforward::REPORT_JSON).is_file());

    // The stitched curve of each seed is its folds' curves, chained.
    for (k, st) in first.stitched.iter().enumerate() {
        assert_eq!(st.fold_starts.len(), 3);
        let mut pos = 0;
        for f in &folds {
            let r: walkforward::RunResult = serde_json::from_str(
                &std::fs::read_to_string(run_dir(&out, f.index, k).join(RESULT_FILE)).unwrap(),
            )
            .unwrap();
            let fc = &r.backtest.curves[0];
            let n = fc.steps();
            assert_eq!(st.bars[pos], f.test_lo);
            assert_eq!(st.bars[pos + n], f.test_last);
            let (sr, fr) = (rets(&st.curve.equity[pos..=pos + n]), rets(&fc.equity));
            for (x, y) in sr.iter().zip(&fr) {
                assert!((x - y).abs() < 1e-12, "fold {} seed {k}", f.index);
            }
            pos += n;
        }
        assert_eq!(pos + 1, st.curve.equity.len());
    }

    // Interrupt: fold 2 of seed 1 lost entirely, fold 1 of seed 0 lost its result (trained, not
    // evaluated). The second invocation evaluates / trains just those and reproduces the result.
    std::fs::remove_dir_all(run_dir(&out, 2, 1)).unwrap();
    std::fs::remove_file(run_dir(&out, 1, 0).join(RESULT_FILE)).unwrap();
    std::fs::remove_file(out.join("fold-2").join(BASELINES_FILE)).unwrap();
    let mut actions = Vec::new();
    let again = walk_forward(&cfg, &market, &s, &opts, |o| {
        actions.push((o.fold.index, o.seed, o.action))
    })
    .unwrap();
    use walkforward::RunAction::*;
    assert_eq!(
        actions,
        vec![
            (0, 0, Skipped),
            (0, 1, Skipped),
            (1, 0, Evaluated),
            (1, 1, Skipped),
            (2, 0, Skipped),
            (2, 1, Trained)
        ]
    );
    assert_eq!(again.overall, first.overall);
    assert_eq!(again.overall_baselines, first.overall_baselines);

    // Another plan or configuration in the same directory is refused, naming what differs.
    let other = WalkForwardSpec {
        embargo: 30,
        ..s.clone()
    };
    let e = walk_forward(&cfg, &market, &other, &opts, |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");
    assert!(e.to_string().contains("embargo: 20"), "{e}");
    let cfg2 = small(&["ppo.learning_rate=0.002"]);
    let e = walk_forward(&cfg2, &market, &s, &opts, |_| {}).unwrap_err();
    assert!(e.to_string().contains("ppo.learning_rate"), "{e}");

    // The report: its criteria are computed from the numbers of its own tables.
    let mut r = build_report(&out, None).unwrap();
    let rep = tmp.path().join("report");
    write_report(&mut r, &rep).unwrap();
    for f in [
        "report.md",
        "report.json",
        "equity.png",
        "fold_sharpe.png",
        "reward_shares.png",
        "actions_costs.png",
    ] {
        assert!(rep.join(f).is_file(), "{f}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    let crit = |name: &str| {
        j["criteria"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no criterion {name}"))
            .clone()
    };
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let seeds: Vec<&serde_json::Value> = j["policy"].as_array().unwrap().iter().collect();
    assert_eq!(seeds.len(), 2);
    let col = |k: &str| {
        seeds
            .iter()
            .map(|m| m[k].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    for (name, key) in [
        ("total return > 15%", "total_return"),
        ("Sharpe > 0.8", "sharpe"),
        ("max drawdown < 25%", "max_drawdown"),
    ] {
        let c = crit(name);
        let v = c["value"].as_f64().unwrap();
        assert!((v - mean(&col(key))).abs() < 1e-12, "{name}");
        assert_eq!(v, j["stats"][key]["mean"].as_f64().unwrap());
        let go = match key {
            "total_return" => v > 0.15,
            "sharpe" => v > 0.8,
            _ => v < 0.25,
        };
        assert_eq!(c["verdict"], if go { "Go" } else { "NoGo" }, "{name}");
    }
    let fold_sharpes: Vec<f64> = j["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["sharpe"]["mean"].as_f64().unwrap())
        .collect();
    assert_eq!(fold_sharpes.len(), 3);
    let c = crit("symbol agents Sharpe > 0.6 on walk-forward");
    assert!((c["value"].as_f64().unwrap() - mean(&fold_sharpes)).abs() < 1e-12);
    // The per-fold table's Sharpe means are the folds' seeds' Sharpe ratios, averaged.
    for (i, f) in folds.iter().enumerate() {
        let per: Vec<f64> = (0..2)
            .map(|k| {
                let r: walkforward::RunResult = serde_json::from_str(
                    &std::fs::read_to_string(run_dir(&out, f.index, k).join(RESULT_FILE)).unwrap(),
                )
                .unwrap();
                r.backtest.metrics.sharpe
            })
            .collect();
        assert!((fold_sharpes[i] - mean(&per)).abs() < 1e-12);
    }
    // Not-evaluable criteria are listed as such, never passed.
    for name in [
        "master cuts drawdown > 15% vs baseline",
        "no-go: MAPPO diverges",
    ] {
        assert_eq!(crit(name)["verdict"], "NotEvaluable");
    }
    let alarms = j["alarms"].as_array().unwrap().len();
    assert_eq!(
        crit("reward diagnostics stable")["verdict"],
        if alarms == 0 { "Go" } else { "NoGo" }
    );
    assert!(
        r.criteria
            .iter()
            .any(|c| c.verdict == Verdict::NotEvaluable)
    );
    assert!(!r.overall.starts_with("GO"), "{}", r.overall);
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    for c in &r.criteria {
        assert!(md.contains(&c.reason), "report.md lacks `{}`", c.reason);
    }
    assert!(md.contains(&format!("{:.2}", 100.0 * r.stats.total_return.mean)));
}

/// BUY_SMALL on symbol 0 at an episode's first step, HOLD otherwise.
struct BuyOnce;

impl BacktestPolicy for BuyOnce {
    fn name(&self) -> &str {
        "buy-once"
    }
    fn act(
        &mut self,
        view: &PolicyView,
        sym_out: &mut [u8],
        master_out: &mut [u8],
    ) -> marl_trade::Result<()> {
        let s = view.n_symbols();
        sym_out.fill(HOLD);
        for (i, &k) in view.step_in_episode.iter().enumerate() {
            if k == 0 {
                sym_out[i * s] = BUY_SMALL;
            }
        }
        master_out.fill(view.params().default_action as u8);
        Ok(())
    }
}

/// Costs of BuyOnce's single buy (spec §4.3, §4.5, §4.8) at decision bar `t` with every cost
/// parameter of `cfg` times `k`, as a fraction of the initial capital.
fn hand_cost(cfg: &Config, md: &MarketData, t: usize, k: f64) -> f64 {
    let c0 = cfg.env.initial_capital;
    let m = cfg.master.default_action as usize;
    let risk = cfg.master.risk_multipliers[m / 12];
    let cap = cfg.master.position_caps[(m / 3) % 4];
    let d = (cfg.risk.buy_small * risk * c0).min(cap * c0);
    let c = md.close[md.px(0, t, 0)] as f64;
    let o1 = md.open[md.px(0, t + 1, 0)] as f64;
    let v = md.volume[md.px(0, t, 0)] as f64;
    let qb = d / c;
    let x = qb * o1;
    let cc = &cfg.costs;
    let slip = (k * cc.half_spread_bps * 1e-4 + k * cc.impact_coef * (x / (c * v).max(1.0)).sqrt())
        .min(k * cc.max_slippage_bps * 1e-4);
    let pb = o1 * (1.0 + slip);
    let comm = k * cc.commission_bps * 1e-4;
    (comm * qb * pb + qb * (pb - o1)) / c0
}

#[test]
fn stress_costs_of_a_scripted_policy_match_a_hand_computation() {
    let cfg = small(&[]);
    let market = Market::load(&cfg.data).unwrap();
    let md: Arc<MarketData> = market.data.clone();
    let (lo, hi) = (900, 1000);
    let opts = BacktestOptions {
        period: Period::Bars(lo, hi),
        ..Default::default()
    };
    let scen = [
        Scenario::Base,
        Scenario::Costs(2.0),
        Scenario::Costs(5.0),
        Scenario::LateFills,
        Scenario::Liquidity(10.0),
        Scenario::Gaps {
            every_days: 2,
            size: 0.05,
        },
        Scenario::Crisis {
            vol: 3.0,
            fall: 0.3,
        },
        Scenario::StaleBars { every: 10 },
    ];
    let mut make =
        |_: &Market| -> marl_trade::Result<Box<dyn BacktestPolicy>> { Ok(Box::new(BuyOnce)) };
    let r = stress_policy(
        &cfg.env_setup(),
        &market,
        &opts,
        &scen,
        "buy-once",
        &mut make,
    )
    .unwrap();
    assert_eq!(r.bars, (lo, hi - 1));
    let row = |n: &str| r.rows.iter().find(|x| x.scenario == n).unwrap();
    for (name, k) in [("base", 1.0), ("costs-x2", 2.0), ("costs-x5", 5.0)] {
        let got = row(name).policy.costs_paid;
        let want = hand_cost(&cfg, &md, lo, k);
        assert!(
            (got - want).abs() <= 1e-9 * want.max(1e-12) + 1e-12,
            "{name}: {got} vs {want}"
        );
        assert!(got > 0.0);
    }
    // x2 doubles the commission rate and the (uncapped) slippage fraction; the commission is paid
    // on the dearer fill, so the cost is a little more than twice the base cost.
    let (b, x2) = (
        row("base").policy.costs_paid,
        row("costs-x2").policy.costs_paid,
    );
    assert!(x2 > 2.0 * b && x2 < 2.01 * b, "{b} {x2}");
    // One bar late: the same order decided at lo + 1.
    let late = row("late-fills").policy.costs_paid;
    let want = hand_cost(&cfg, &md, lo + 1, 1.0);
    assert!((late - want).abs() <= 1e-9 * want, "{late} vs {want}");
    // Liquidity / 10: impact grows, so does the cost.
    assert!(row("liquidity").policy.costs_paid > b);
    // The crisis takes the market down: equal weight loses more than in the base replay.
    assert!(row("crisis").equal_weight.total_return < row("base").equal_weight.total_return);
    assert!(r.limits_held(), "{}", r.text());
    assert!(
        r.rows
            .iter()
            .all(|x| x.limits.steps > 0 && x.limits.buy_steps >= 1)
    );
    let text = r.text();
    for s in &scen {
        assert!(text.contains(&s.name()));
    }
}

#[test]
fn one_over_n_rebalanced_by_hand() {
    use marl_trade::costs::{CostConfig, CostParams};
    use marl_trade::eval::rebalanced_equal_weight;
    let cfg = small(&[]);
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    let s = md.n_symbols();
    let (t0, t_end, c0) = (200, 260, 1e6);
    let free = CostParams::new(
        &CostConfig {
            commission_bps: 0.0,
            half_spread_bps: 0.0,
            ..CostConfig::default()
        },
        md.bars_per_year(),
    );
    // Never rebalanced after the start, no costs: 1/N buy-and-hold at the open of t0 + 1.
    let c = rebalanced_equal_weight(&md, &free, c0, 0, t0, t_end, 10_000).unwrap();
    for t in t0 + 1..=t_end {
        let want: f64 = (0..s)
            .map(|j| {
                c0 / s as f64 / md.open[md.px(0, t0 + 1, j)] as f64
                    * md.close[md.px(0, t, j)] as f64
            })
            .sum();
        assert!((c.equity[t - t0] - want).abs() < 1e-6, "bar {t}");
    }
    // Rebalanced at every open, no costs: the open-to-open growth is the mean of the symbols'
    // open-to-open ratios, and the close is the open times the mean open-to-close ratio.
    let c = rebalanced_equal_weight(&md, &free, c0, 0, t0, t_end, 1).unwrap();
    let mean = |f: &dyn Fn(usize) -> f64| (0..s).map(f).sum::<f64>() / s as f64;
    let px = |a: &[f32], t: usize, j: usize| a[md.px(0, t, j)] as f64;
    let mut e_open = c0;
    for t in t0 + 1..=t_end {
        if t > t0 + 1 {
            e_open *= mean(&|j| px(&md.open, t, j) / px(&md.open, t - 1, j));
        }
        let want = e_open * mean(&|j| px(&md.close, t, j) / px(&md.open, t, j));
        assert!((c.equity[t - t0] - want).abs() < 1e-6 * want, "bar {t}");
    }
    // With costs: the first purchase pays rate * e1 with e1 = C0 / (1 + rate).
    let p = CostParams::new(&cfg.costs, md.bars_per_year());
    let c = rebalanced_equal_weight(&md, &p, c0, 0, t0, t_end, 5).unwrap();
    let rate = p.half_spread + p.commission;
    assert!(
        (c.costs[0] - (c0 - c0 / (1.0 + rate))).abs() < 1e-6,
        "{}",
        c.costs[0]
    );
    assert!(c.costs[1] == 0.0 && c.costs[5] > 0.0);
    assert!(rebalanced_equal_weight(&md, &p, c0, 0, t0, t_end, 0).is_err());
}

#[test]
fn scenario_data_changes_only_the_replayed_bars_as_documented() {
    let cfg = small(&[]);
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    let (a, hi) = (900, 1200);
    let s1 = md.n_symbols() + 1;
    let crisis = Scenario::Crisis {
        vol: 3.0,
        fall: 0.3,
    }
    .data(&md, a, hi)
    .unwrap();
    crisis.validate("crisis").unwrap();
    let (w0, w1) = (a + 100, a + 200);
    for j in 0..s1 {
        let c = |d: &MarketData, t: usize| d.close[d.px(0, t, j)] as f64;
        // Every column closes the window exactly 30% below where it entered it ...
        assert!(
            (c(&crisis, w1 - 1) / c(&crisis, w0 - 1) - 0.7).abs() < 1e-5,
            "column {j}"
        );
        // ... with larger swings inside it, and the same bar-to-bar returns after it.
        assert!((c(&crisis, hi - 1) / c(&crisis, w1) - c(&md, hi - 1) / c(&md, w1)).abs() < 1e-4);
    }
    for t in 0..w0 {
        for j in 0..s1 {
            assert_eq!(crisis.close[md.px(0, t, j)], md.close[md.px(0, t, j)]);
        }
    }
    let liq = Scenario::Liquidity(10.0).data(&md, a, hi).unwrap();
    assert_eq!(
        liq.volume[md.px(0, a - 1, 0)],
        md.volume[md.px(0, a - 1, 0)]
    );
    assert!(
        (liq.volume[md.px(0, a, 0)] * 10.0 - md.volume[md.px(0, a, 0)]).abs()
            <= 1e-3 * md.volume[md.px(0, a, 0)]
    );
    let stale = Scenario::StaleBars { every: 10 }.data(&md, a, hi).unwrap();
    let t = a + 10;
    assert_eq!(stale.open[md.px(0, t, 2)], md.close[md.px(0, t - 1, 2)]);
    assert_eq!(stale.volume[md.px(0, t, 2)], 0.0);
    assert!(Scenario::Costs(2.0).data(&md, a, hi).is_none());
}

/// The flattened values of every tensor of a checkpoint's model file, by name.
fn model(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let ck = marl_trade::run::latest_checkpoint(dir).unwrap();
    let t = candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    t.into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn warm_start_takes_the_weights_of_the_previous_checkpoint() {
    use marl_trade::run::{TrainOptions, train};
    let cfg = small(&[]);
    let market = Market::load(&cfg.data).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let period = Period::Bars(0, 600);
    let one = |out: &std::path::Path, n: usize, init: Option<std::path::PathBuf>, seed: u64| {
        let mut cfg = cfg.clone();
        cfg.ppo.seed = seed;
        let o = TrainOptions {
            max_iterations: Some(n),
            period,
            init_from: init,
            ..TrainOptions::new(out)
        };
        train(&cfg, &market, &o).unwrap()
    };
    one(&a, 1, None, 1);
    // No iteration: the checkpoint holds the initial weights, which are A's for a warm start ...
    one(&b, 0, Some(a.clone()), 2);
    // ... and a fresh initialisation otherwise.
    one(&c, 0, None, 2);
    let (ma, mb, mc) = (model(&a), model(&b), model(&c));
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>());
    assert_eq!(ma, mb);
    assert_ne!(ma, mc);
}
