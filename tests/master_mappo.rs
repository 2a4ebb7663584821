//! The portfolio master learns a defensive posture where it pays and is foreseeable (issue #12).
//!
//! Market: the synthetic factor model (`data::synthetic`) at daily bars, 8 symbols, 6 paths of
//! 2500 bars, fixed seed; its hidden regime chain has crises (market drift -50% a year, volatility
//! 0.5). With the **crisis warning** on, the VIX rises linearly over the 10 bars before every crisis
//! onset by up to 30 points; with it off (the null control) the market is the same, bar for bar,
//! and the VIX is the plain regime-driven series (high during a crisis, not before).
//!
//! Symbol agents: held fixed, the scripted [`CapFollower`] (each symbol kept near the directive's
//! per-position cap), so the directive sets the exposure. Master: MAPPO ([`MasterPpo`]) on the
//! training bars (first 60% of every path), a decision every 5 bars. Held out: the last 40% of
//! every path, one episode per scenario spanning it, 12 scenarios; the learned master plays its
//! most probable directive, and each of the 48 fixed directives plays alone.
//!
//! The criterion (the issue's): the learned master's held-out mean episode max drawdown is more
//! than 15% below that of the lowest-drawdown fixed directive whose Sharpe is at least the
//! master's (when no fixed directive reaches the master's Sharpe, against the default directive,
//! `master.default_action`, the env's baseline); and the master's Sharpe is no worse than that
//! baseline's beyond two standard errors. With the warning off the same training must not claim the
//! cut. Fixed seeds; the numbers are printed (`--nocapture`).

use std::sync::Arc;

use marl_trade::config::Config;
use marl_trade::data::{SyntheticConfig, synthetic::generate_with_regimes};
use marl_trade::env::{BackendKind, MASTER_ACTIONS, Period, VecEnv};
use marl_trade::features::Features;
use marl_trade::train::mappo::{
    CapFollower, MasterEval, MasterPlay, MasterPpo, MasterPpoConfig, evaluate_master,
};

const INTERVAL: usize = 5;

struct Outcome {
    master: MasterEval,
    baseline: MasterEval,
    baseline_name: String,
    cut: f64,
}

fn run(warning: bool) -> Outcome {
    let synth = SyntheticConfig {
        symbols: 8,
        bars: 2500,
        bars_per_day: 1,
        paths: 6,
        seed: 7,
        crisis_warning_bars: if warning { 10 } else { 0 },
        crisis_warning_vix: 30.0,
        ..SyntheticConfig::default()
    };
    let (md, regimes) = generate_with_regimes(&synth, "SPY");
    let md = Arc::new(md);
    let feats = Arc::new(Features::compute(&md));
    let mut cfg = Config::default();
    cfg.env.train_fraction = 0.6;
    cfg.env.scenarios = 16;
    cfg.env.episode_len = 250;
    let train_env = VecEnv::new(
        &cfg.env_setup(),
        md.clone(),
        feats.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .unwrap();
    let mcfg = MasterPpoConfig {
        decision_interval: INTERVAL,
        decisions: 25,
        iterations: 120,
        seed: 3,
        ..MasterPpoConfig::default()
    };
    let mut trainer = MasterPpo::new(mcfg, train_env, CapFollower::default(), 11).unwrap();
    let metrics = trainer.train(None).unwrap();
    for m in metrics.iter().step_by(20).chain(metrics.last()) {
        eprintln!(
            "  it {:3} reward {:+.4} pl {:+.4} vl {:.4} ent {:.3} kl {:.4} ev {:?} modes {:.2?} cap {:.3}",
            m.iteration,
            m.reward_mean,
            m.policy_loss,
            m.value_loss,
            m.entropy,
            m.approx_kl,
            m.explained_variance.map(|x| (x * 100.0).round() / 100.0),
            m.mode_share,
            m.cap_mean
        );
    }

    // Held out: one episode per scenario over the whole test period.
    let mut test_cfg = cfg.clone();
    test_cfg.env.scenarios = 12;
    test_cfg.env.episode_len = 2500;
    let mut test_env = VecEnv::new(
        &test_cfg.env_setup(),
        md.clone(),
        feats.clone(),
        Period::Test,
        BackendKind::Cpu,
    )
    .unwrap();
    let mut driver = CapFollower::default();
    let master = evaluate_master(
        &mut test_env,
        &mut driver,
        MasterPlay::Greedy(trainer.net()),
        INTERVAL,
        99,
        Some(&regimes),
    )
    .unwrap();
    let fixed: Vec<MasterEval> = (0..MASTER_ACTIONS as u8)
        .map(|m| {
            evaluate_master(
                &mut test_env,
                &mut driver,
                MasterPlay::Fixed(m),
                INTERVAL,
                99,
                None,
            )
            .unwrap()
        })
        .collect();
    let default = cfg.master.default_action as usize;
    let (bi, baseline_name) = match fixed
        .iter()
        .enumerate()
        .filter(|(_, f)| f.sharpe >= master.sharpe)
        .min_by(|a, b| a.1.max_drawdown.total_cmp(&b.1.max_drawdown))
    {
        Some((i, _)) => (
            i,
            format!("fixed {i} (lowest drawdown with Sharpe >= master's)"),
        ),
        None => (
            default,
            format!("default {default} (no fixed directive reaches the master's Sharpe)"),
        ),
    };
    let baseline = fixed[bi].clone();
    let cut = 1.0 - master.max_drawdown / baseline.max_drawdown;
    eprintln!(
        "warning {warning}: master sharpe {:.3} (se {:.3}) mean maxDD {:.4} worst {:.4} return {:+.4}",
        master.sharpe,
        master.sharpe_se,
        master.max_drawdown,
        master.worst_drawdown,
        master.total_return
    );
    eprintln!(
        "  directive mode by hidden regime (bull, bear, crisis) x (def, neu, agg): {:?}",
        master.mode_by_label
    );
    let mut top: Vec<(usize, usize)> = master
        .directive_counts
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, c)| c > 0)
        .collect();
    top.sort_by_key(|b| std::cmp::Reverse(b.1));
    eprintln!("  directives played (index, decisions): {top:?}");
    let best_sharpe = fixed
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.sharpe.total_cmp(&b.1.sharpe))
        .unwrap();
    eprintln!(
        "  baseline {baseline_name}: sharpe {:.3} mean maxDD {:.4}; default: sharpe {:.3} maxDD {:.4}; best-Sharpe fixed {}: sharpe {:.3} maxDD {:.4}",
        baseline.sharpe,
        baseline.max_drawdown,
        fixed[default].sharpe,
        fixed[default].max_drawdown,
        best_sharpe.0,
        best_sharpe.1.sharpe,
        best_sharpe.1.max_drawdown
    );
    eprintln!("  drawdown cut vs baseline: {:.1}%", 100.0 * cut);
    Outcome {
        master,
        baseline,
        baseline_name,
        cut,
    }
}

#[test]
#[ignore = "fails at present (the learned master settles on one directive, with or without the warning; \
            figures in docs/training.md, \"The portfolio master\"); about 1.5 minutes"]
fn learned_master_cuts_held_out_drawdown_only_with_the_warning() {
    let on = run(true);
    let off = run(false);
    assert!(
        on.cut > 0.15,
        "with the warning: drawdown cut {:.1}% vs {} (master {:.4}, baseline {:.4})",
        100.0 * on.cut,
        on.baseline_name,
        on.master.max_drawdown,
        on.baseline.max_drawdown
    );
    assert!(
        on.master.sharpe >= on.baseline.sharpe - 2.0 * on.baseline.sharpe_se,
        "Sharpe {:.3} below the baseline's {:.3} beyond noise",
        on.master.sharpe,
        on.baseline.sharpe
    );
    assert!(
        off.cut <= 0.15,
        "without the warning the master still cut drawdown by {:.1}%",
        100.0 * off.cut
    );
}

/// What timing is worth on the drawdown test's held-out bars, without learning: a scripted master
/// on the master observation plays the low-cap directive 0 when the VIX rose by more than
/// `dv` points over the last 5 bars (the warning's ramp) or stands above `lvl` points (a crisis
/// already under way), else directive 21 (cap 0.20), with the warning on and off; each rule is
/// judged by the test's criterion against the 48 fixed directives. A diagnostic of the test
/// itself (is the cut reachable, and does a reactive rule claim it without the warning?), not a
/// tuned baseline: every rule tried is printed (`--nocapture`); asserted is only that the rules
/// switch (both directives played) and that directive 0 has less drawdown than 21.
#[test]
#[ignore = "diagnostic of the drawdown test (prints a table, docs/training.md); about 1 minute"]
fn vix_rules_show_what_timing_is_worth() {
    use marl_trade::env::master_obs::M_REGIME;
    use marl_trade::features::N_REGIME;
    for warning in [true, false] {
        let synth = SyntheticConfig {
            symbols: 8,
            bars: 2500,
            bars_per_day: 1,
            paths: 6,
            seed: 7,
            crisis_warning_bars: if warning { 10 } else { 0 },
            crisis_warning_vix: 30.0,
            ..SyntheticConfig::default()
        };
        let (md, regimes) = generate_with_regimes(&synth, "SPY");
        let md = Arc::new(md);
        let feats = Arc::new(Features::compute(&md));
        let mut cfg = Config::default();
        cfg.env.train_fraction = 0.6;
        cfg.env.scenarios = 12;
        cfg.env.episode_len = 2500;
        let mut env = VecEnv::new(
            &cfg.env_setup(),
            md.clone(),
            feats.clone(),
            Period::Test,
            BackendKind::Cpu,
        )
        .unwrap();
        let mut driver = CapFollower::default();
        let fixed: Vec<MasterEval> = (0..MASTER_ACTIONS as u8)
            .map(|m| {
                evaluate_master(
                    &mut env,
                    &mut driver,
                    MasterPlay::Fixed(m),
                    INTERVAL,
                    99,
                    None,
                )
                .unwrap()
            })
            .collect();
        assert!(fixed[0].max_drawdown < fixed[21].max_drawdown);
        let (vix, dvix) = (M_REGIME.start + N_REGIME, M_REGIME.start + N_REGIME + 1);
        for (dv, lvl) in [
            (10.0, 1000.0),
            (5.0, 1000.0),
            (1000.0, 40.0),
            (1000.0, 30.0),
            (10.0, 40.0),
        ] {
            let rule = move |o: &[f32]| {
                if 100.0 * o[dvix] > dv || 100.0 * o[vix] > lvl {
                    0
                } else {
                    21
                }
            };
            let r = evaluate_master(
                &mut env,
                &mut driver,
                MasterPlay::Rule(&rule),
                INTERVAL,
                99,
                Some(&regimes),
            )
            .unwrap();
            assert!(r.directive_counts[0] > 0 && r.directive_counts[21] > 0);
            let base = fixed
                .iter()
                .enumerate()
                .filter(|(_, f)| f.sharpe >= r.sharpe)
                .min_by(|a, b| a.1.max_drawdown.total_cmp(&b.1.max_drawdown));
            let (name, b) = match base {
                Some((i, f)) => (format!("fixed {i}"), f),
                None => (
                    format!("default {}", cfg.master.default_action),
                    &fixed[cfg.master.default_action as usize],
                ),
            };
            let low: Vec<f64> = r
                .directive_by_label
                .iter()
                .map(|c| c[0] as f64 / c.iter().sum::<usize>().max(1) as f64)
                .collect();
            eprintln!(
                "warning {warning:5} rule dVIX5 > {dv:6} or VIX > {lvl:6}: Sharpe {:.3} (se {:.3}) maxDD {:.4}; \
                 baseline {name}: Sharpe {:.3} maxDD {:.4}; cut {:+.1}%; low-cap share bull/bear/crisis {:.2?}",
                r.sharpe,
                r.sharpe_se,
                r.max_drawdown,
                b.sharpe,
                b.max_drawdown,
                100.0 * (1.0 - r.max_drawdown / b.max_drawdown),
                low
            );
        }
    }
}

/// The trainer's mechanics, CI-sized: every loss is logged by name in the metrics file, a run is
/// deterministic from its seeds, and the evaluation refuses a directive outside the grid.
#[test]
fn master_ppo_logs_its_losses_and_is_deterministic() {
    let synth = SyntheticConfig {
        symbols: 4,
        bars: 600,
        bars_per_day: 1,
        paths: 2,
        seed: 5,
        crisis_warning_bars: 5,
        crisis_warning_vix: 20.0,
        ..SyntheticConfig::default()
    };
    let (md, _) = generate_with_regimes(&synth, "SPY");
    let md = Arc::new(md);
    let feats = Arc::new(Features::compute(&md));
    let mut cfg = Config::default();
    cfg.env.scenarios = 4;
    cfg.env.episode_len = 30;
    let dir = tempfile::tempdir().unwrap();
    let train = |path: Option<&std::path::Path>| {
        let env = VecEnv::new(
            &cfg.env_setup(),
            md.clone(),
            feats.clone(),
            Period::Train,
            BackendKind::Cpu,
        )
        .unwrap();
        let mcfg = MasterPpoConfig {
            decision_interval: 3,
            decisions: 6,
            iterations: 3,
            minibatches: 2,
            ..MasterPpoConfig::default()
        };
        let mut t = MasterPpo::new(mcfg, env, CapFollower::default(), 1).unwrap();
        let m = t.train(path).unwrap();
        let x = marl_trade::train::mappo::MasterPpo::<CapFollower>::net(&t)
            .forward(
                &candle_core::Tensor::zeros(
                    (1, marl_trade::env::master_obs::MASTER_OBS),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap()
            .0
            .to_vec2::<f32>()
            .unwrap();
        (m, x)
    };
    let path = dir.path().join("master_metrics.jsonl");
    let (m1, x1) = train(Some(&path));
    let (m2, x2) = train(None);
    assert_eq!(m1, m2, "same seeds, same metrics");
    assert_eq!(x1, x2, "same seeds, same network");
    assert_eq!(m1.len(), 3);
    // The entropy coefficient anneals linearly to 0 over the iterations.
    assert_eq!(m1[0].ent_coef, 0.01);
    assert_eq!(m1[2].ent_coef, 0.0);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in [
            "policy_loss",
            "value_loss",
            "entropy",
            "approx_kl",
            "clipfrac",
            "grad_norm",
            "reward_mean",
            "value_norm_mean",
            "value_norm_std",
        ] {
            let x = v[key].as_f64();
            assert!(x.is_some_and(f64::is_finite), "{key} in {line}");
        }
    }
    // A directive outside the grid is refused.
    let mut env = VecEnv::new(
        &cfg.env_setup(),
        md.clone(),
        feats.clone(),
        Period::Test,
        BackendKind::Cpu,
    )
    .unwrap();
    let e = evaluate_master(
        &mut env,
        &mut CapFollower::default(),
        MasterPlay::Fixed(48),
        3,
        1,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("48") && e.to_string().contains("0..48"),
        "{e}"
    );
    let ok = evaluate_master(
        &mut env,
        &mut CapFollower::default(),
        MasterPlay::Fixed(47),
        3,
        1,
        None,
    )
    .unwrap();
    assert_eq!(
        ok.directive_counts.iter().sum::<usize>(),
        ok.directive_counts[47]
    );
    assert!(ok.bars > 0 && ok.max_drawdown >= 0.0 && ok.sharpe.is_finite());
}
