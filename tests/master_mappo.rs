//! The portfolio master learns a defensive posture where it pays and is foreseeable (issue #12).
//!
//! Market ([`market`], also `configs/crisis.toml`): the synthetic factor model
//! (`data::synthetic`) at daily bars, 8 symbols, 12 paths of 2500 bars, fixed seed; crises are rare
//! (`crisis_entry` 0.35: about one onset per 1000 bars, 1% of the bars in a crisis) and deep (a
//! crash: the market falls 40% over the first 2 bars of every crisis, `crisis_crash`). With the
//! **crisis warning** on, the VIX rises linearly over the 15 bars before every crisis onset by up
//! to 60 points; with it off (the null control) the market is the same, bar for bar, and the VIX is
//! the plain regime-driven series (it jumps with the crash, not before). The settings were chosen
//! with the scripted oracle below ([`scripted_warning_rule_is_the_test_market_s_instrument`]),
//! not with the learned master (docs/training.md, "The portfolio master").
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
use marl_trade::data::{MarketData, SyntheticConfig, synthetic::generate_with_regimes};
use marl_trade::env::{BackendKind, MASTER_ACTIONS, Period, VecEnv};
use marl_trade::features::Features;
use marl_trade::train::mappo::{
    CapFollower, MasterEval, MasterPlay, MasterPpo, MasterPpoConfig, evaluate_master,
};

const INTERVAL: usize = 5;

/// The drawdown test's market (`configs/crisis.toml`), with the crisis warning on or off.
fn market(warning: bool) -> SyntheticConfig {
    SyntheticConfig {
        symbols: 8,
        bars: 2500,
        bars_per_day: 1,
        paths: 12,
        seed: 7,
        crisis_warning_bars: if warning { 15 } else { 0 },
        crisis_warning_vix: 60.0,
        crisis_entry: 0.35,
        crisis_crash: 0.4,
        crisis_crash_bars: 2,
        ..SyntheticConfig::default()
    }
}

/// The held-out criterion: the lowest-drawdown fixed directive with at least `sharpe` (the
/// default directive when none reaches it), its name, and the cut `1 - dd / its drawdown`.
fn criterion(
    fixed: &[MasterEval],
    default: usize,
    sharpe: f64,
    dd: f64,
) -> (&MasterEval, String, f64) {
    let (bi, name) = match fixed
        .iter()
        .enumerate()
        .filter(|(_, f)| f.sharpe >= sharpe)
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
    (&fixed[bi], name, 1.0 - dd / fixed[bi].max_drawdown)
}

/// The drawdown test's env settings: the first 60% of every path are the training bars,
/// `scenarios` scenarios of episodes of `episode_len` bars.
fn crisis_config(scenarios: usize, episode_len: usize) -> Config {
    let mut cfg = Config::default();
    cfg.env.train_fraction = 0.6;
    cfg.env.scenarios = scenarios;
    cfg.env.episode_len = episode_len;
    cfg
}

/// A CPU env of `cfg` over the market, on `period`.
fn crisis_env(cfg: &Config, md: &Arc<MarketData>, feats: &Arc<Features>, period: Period) -> VecEnv {
    VecEnv::new(
        &cfg.env_setup(),
        md.clone(),
        feats.clone(),
        period,
        BackendKind::Cpu,
    )
    .unwrap()
}

/// Each of the 48 fixed directives played alone on `env` (one episode per scenario), in
/// directive order.
fn every_fixed(env: &mut VecEnv, driver: &mut CapFollower) -> Vec<MasterEval> {
    (0..MASTER_ACTIONS as u8)
        .map(|m| evaluate_master(env, driver, MasterPlay::Fixed(m), INTERVAL, 99, None).unwrap())
        .collect()
}

struct Outcome {
    master: MasterEval,
    baseline: MasterEval,
    baseline_name: String,
    cut: f64,
}

fn run(warning: bool) -> Outcome {
    let (md, regimes) = generate_with_regimes(&market(warning), "SPY");
    let md = Arc::new(md);
    let feats = Arc::new(Features::compute(&md));
    let cfg = crisis_config(16, 250);
    let train_env = crisis_env(&cfg, &md, &feats, Period::Train);
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
    let mut test_env = crisis_env(&crisis_config(12, 2500), &md, &feats, Period::Test);
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
    let fixed = every_fixed(&mut test_env, &mut driver);
    let default = cfg.master.default_action as usize;
    let (baseline, baseline_name, cut) =
        criterion(&fixed, default, master.sharpe, master.max_drawdown);
    let baseline = baseline.clone();
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
#[ignore = "fails at present (on the oracle-checked crash market the learned master still settles on one \
            smallest-cap directive, with or without the warning; figures in docs/training.md, \
            \"The portfolio master\"); about 1.5 minutes"]
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

/// The scripted oracle that makes the drawdown test's market a fair instrument (no learning): a
/// master that reads only the warning in its observation, the VIX's rise over the last 5 bars
/// (the warning ramp climbs 20 points per 5 bars), and plays the low-cap directive 0 when that rise
/// exceeds 15 points, else the default directive. With the warning on it must pass the learned
/// master's criterion on the held-out bars (a cut of more than 15% against the lowest-drawdown
/// fixed directive with at least its Sharpe, its Sharpe no worse beyond two standard errors); with
/// the warning off the same rule must not. Also printed, not asserted: a reactive rule (VIX above
/// 40, a crisis under way). `configs/crisis.toml` must hold this market.
#[test]
fn scripted_warning_rule_is_the_test_market_s_instrument() {
    use marl_trade::env::master_obs::M_REGIME;
    use marl_trade::features::N_REGIME;
    let crisis = Config::from_file(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/crisis.toml"),
    )
    .unwrap();
    assert_eq!(crisis.data.synthetic, market(true), "configs/crisis.toml");
    let mut cuts = Vec::new();
    for warning in [true, false] {
        let (md, regimes) = generate_with_regimes(&market(warning), "SPY");
        let md = Arc::new(md);
        let feats = Arc::new(Features::compute(&md));
        let cfg = crisis_config(12, 2500);
        let default = cfg.master.default_action as u8;
        let mut env = crisis_env(&cfg, &md, &feats, Period::Test);
        let mut driver = CapFollower::default();
        let fixed = every_fixed(&mut env, &mut driver);
        let (vix, dvix) = (M_REGIME.start + N_REGIME, M_REGIME.start + N_REGIME + 1);
        let warned = move |o: &[f32]| if 100.0 * o[dvix] > 15.0 { 0 } else { default };
        let reactive = move |o: &[f32]| if 100.0 * o[vix] > 40.0 { 0 } else { default };
        for (name, rule) in [
            ("dVIX5 > 15", &warned as &dyn Fn(&[f32]) -> u8),
            ("VIX > 40", &reactive),
        ] {
            let r = evaluate_master(
                &mut env,
                &mut driver,
                MasterPlay::Rule(rule),
                INTERVAL,
                99,
                Some(&regimes),
            )
            .unwrap();
            let (b, bname, cut) = criterion(&fixed, default as usize, r.sharpe, r.max_drawdown);
            let low: Vec<f64> = r
                .directive_by_label
                .iter()
                .map(|c| c[0] as f64 / c.iter().sum::<usize>().max(1) as f64)
                .collect();
            eprintln!(
                "warning {warning:5} rule {name}: Sharpe {:.3} (se {:.3}) maxDD {:.4}; baseline {bname}: \
                 Sharpe {:.3} maxDD {:.4}; cut {:+.1}%; default {default}: Sharpe {:.3} maxDD {:.4}; \
                 low-cap share bull/bear/crisis {:.2?}",
                r.sharpe,
                r.sharpe_se,
                r.max_drawdown,
                b.sharpe,
                b.max_drawdown,
                100.0 * cut,
                fixed[default as usize].sharpe,
                fixed[default as usize].max_drawdown,
                low
            );
            if name == "dVIX5 > 15" {
                assert!(r.directive_counts[0] > 0 && r.directive_counts[default as usize] > 0);
                cuts.push((cut, r.sharpe, b.sharpe, b.sharpe_se));
            }
        }
    }
    let (on, off) = (cuts[0], cuts[1]);
    assert!(
        on.0 > 0.15,
        "with the warning the rule cuts only {:.1}%",
        100.0 * on.0
    );
    assert!(
        on.1 >= on.2 - 2.0 * on.3,
        "with the warning the rule's Sharpe {:.3} is below its baseline's {:.3} beyond noise",
        on.1,
        on.2
    );
    assert!(
        off.0 <= 0.15,
        "without the warning the same rule still cuts {:.1}%",
        100.0 * off.0
    );
}

/// Why the learned master settles on a constant (no learning here): the optimum of the master
/// reward among scripted policies on the drawdown test's *training* bars. The policies: the 48
/// fixed directives and four warning rules "directive 13 / 16 (the default) / 19 / 22 (cap 0.02 /
/// 0.05 / 0.10 / 0.20, risk 1.0, neutral), directive 0 (cap 0.02) when the VIX rose more than 15
/// points over 5 bars"; one episode per path over the whole training period, the cap follower
/// holding the symbols; each policy's mean master reward per decision (the env's, summed over
/// each interval). Three master rewards: the default (sharpe 1, divers 0.1, excess 100, drawdown
/// 10), excess only (100), and the mean-variance utility alone (100, risk aversion 10).
///
/// Asserted for each: the reward's best scripted policy does not meet the drawdown test's
/// criterion on these training bars (a cut of more than 15% against the lowest-drawdown fixed
/// directive with at least its Sharpe). So under none of these rewards is the behaviour the test
/// asks for the thing to learn, which is what the learned masters do (docs/training.md, "The
/// portfolio master"). A reward that makes this test fail is one worth training a master on.
/// The table is printed (`--nocapture`).
#[test]
fn no_master_reward_here_makes_the_drawdown_criterion_its_optimum() {
    use marl_trade::env::master_obs::M_REGIME;
    use marl_trade::features::N_REGIME;
    // sharpe, divers, excess, drawdown, utility, risk aversion
    let variants: [(&str, [f64; 6]); 3] = [
        ("default", [1.0, 0.1, 100.0, 10.0, 0.0, 0.0]),
        ("excess only", [0.0, 0.0, 100.0, 0.0, 0.0, 0.0]),
        ("utility g10", [0.0, 0.0, 0.0, 0.0, 100.0, 10.0]),
    ];
    let (md, _) = generate_with_regimes(&market(true), "SPY");
    let md = Arc::new(md);
    let feats = Arc::new(Features::compute(&md));
    for (name, w) in &variants {
        let mut cfg = crisis_config(12, 2500);
        let r = &mut cfg.reward;
        (
            r.master_w_sharpe,
            r.master_w_divers,
            r.master_w_excess,
            r.master_w_drawdown,
            r.master_w_utility,
            r.master_risk_aversion,
        ) = (w[0], w[1], w[2], w[3], w[4], w[5]);
        let default = cfg.master.default_action as usize;
        let mut env = crisis_env(&cfg, &md, &feats, Period::Train);
        let mut driver = CapFollower::default();
        let fixed = every_fixed(&mut env, &mut driver);
        let mut play = |p: MasterPlay<'_>| {
            evaluate_master(&mut env, &mut driver, p, INTERVAL, 99, None).unwrap()
        };
        let dvix = M_REGIME.start + N_REGIME + 1;
        let mut policies: Vec<(String, MasterEval)> = fixed
            .iter()
            .enumerate()
            .map(|(m, e)| (format!("fixed {m}"), e.clone()))
            .collect();
        for normal in [13u8, 16, 19, 22] {
            let warned = move |o: &[f32]| if 100.0 * o[dvix] > 15.0 { 0 } else { normal };
            policies.push((format!("rule {normal}/0"), play(MasterPlay::Rule(&warned))));
        }
        eprintln!(
            "{name}: default directive {:+.4} per decision",
            fixed[default].reward_per_decision
        );
        for (pname, e) in policies.iter().filter(|(n, _)| n.starts_with("rule")) {
            let (_, bname, cut) = criterion(&fixed, default, e.sharpe, e.max_drawdown);
            eprintln!(
                "  {pname}: {:+.4} per decision, Sharpe {:.3}, max DD {:.4}; cut {:+.1}% vs {bname}",
                e.reward_per_decision,
                e.sharpe,
                e.max_drawdown,
                100.0 * cut
            );
        }
        let (bname, best) = policies
            .iter()
            .max_by(|a, b| a.1.reward_per_decision.total_cmp(&b.1.reward_per_decision))
            .unwrap();
        let (_, basename, cut) = criterion(&fixed, default, best.sharpe, best.max_drawdown);
        eprintln!(
            "  best: {bname} {:+.4} per decision, Sharpe {:.3}, max DD {:.4}; cut {:+.1}% vs {basename}",
            best.reward_per_decision,
            best.sharpe,
            best.max_drawdown,
            100.0 * cut
        );
        assert!(
            cut <= 0.15,
            "{name}: the reward's best scripted policy ({bname}) cuts {:.1}% on the training bars: \
             train a master on this reward (tests/master_mappo.rs)",
            100.0 * cut
        );
    }
}

/// The trainer tests' small market: 4 symbols, 600 daily bars, 2 paths, 4 scenarios of 30
/// steps; `warning` adds a 5-bar, 20-point crisis warning.
struct Small {
    cfg: Config,
    md: Arc<marl_trade::data::MarketData>,
    feats: Arc<Features>,
}

impl Small {
    fn new(warning: bool) -> Self {
        let mut synth = SyntheticConfig {
            symbols: 4,
            bars: 600,
            bars_per_day: 1,
            paths: 2,
            seed: 5,
            ..SyntheticConfig::default()
        };
        if warning {
            (synth.crisis_warning_bars, synth.crisis_warning_vix) = (5, 20.0);
        }
        let (md, _) = generate_with_regimes(&synth, "SPY");
        let md = Arc::new(md);
        let feats = Arc::new(Features::compute(&md));
        let mut cfg = Config::default();
        cfg.env.scenarios = 4;
        cfg.env.episode_len = 30;
        Self { cfg, md, feats }
    }

    fn env(&self, period: Period) -> VecEnv {
        VecEnv::new(
            &self.cfg.env_setup(),
            self.md.clone(),
            self.feats.clone(),
            period,
            BackendKind::Cpu,
        )
        .unwrap()
    }

    /// A trainer of `mcfg` (decision every 3 bars, 6 decisions an iteration unless set) over the
    /// cap follower on the training bars.
    fn trainer(&self, mcfg: MasterPpoConfig) -> MasterPpo<CapFollower> {
        MasterPpo::new(mcfg, self.env(Period::Train), CapFollower::default(), 1).unwrap()
    }
}

/// The master's logits at an all-zero observation (a fingerprint of the network).
fn zero_obs_logits(t: &MasterPpo<CapFollower>) -> Vec<f32> {
    let x = candle_core::Tensor::zeros(
        (1, marl_trade::env::master_obs::MASTER_OBS),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.net()
        .forward(&x)
        .unwrap()
        .0
        .to_vec2::<f32>()
        .unwrap()
        .remove(0)
}

/// The trainer's mechanics, CI-sized: every loss is logged by name in the metrics file, a run is
/// deterministic from its seeds, and the evaluation refuses a directive outside the grid.
#[test]
fn master_ppo_logs_its_losses_and_is_deterministic() {
    let small = Small::new(true);
    let dir = tempfile::tempdir().unwrap();
    let train = |path: Option<&std::path::Path>| {
        let mut t = small.trainer(MasterPpoConfig {
            decision_interval: 3,
            decisions: 6,
            iterations: 3,
            minibatches: 2,
            ..MasterPpoConfig::default()
        });
        let m = t.train(path).unwrap();
        (m, zero_obs_logits(&t))
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
    let mut env = small.env(Period::Test);
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

/// `master_ppo.kl_default_coef`: the KL toward the default-directive prior pulls the master's
/// policy to the default directive (its probability rises far above uniform and the logged KL
/// falls), and does nothing at coefficient 0 (logged 0).
#[test]
fn kl_toward_the_default_directive_pulls_the_master_to_it() {
    let small = Small::new(false);
    let default = small.cfg.master.default_action as usize;
    let train = |coef: f64| {
        let mut t = small.trainer(MasterPpoConfig {
            decision_interval: 3,
            decisions: 6,
            iterations: 20,
            kl_default_coef: coef,
            ..MasterPpoConfig::default()
        });
        let m = t.train(None).unwrap();
        let logits =
            candle_core::Tensor::new(zero_obs_logits(&t), &candle_core::Device::Cpu).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&logits)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (m, p[default])
    };
    let (m, p) = train(1.0);
    let (kl0, kl1) = (m[0].kl_default, m[m.len() - 1].kl_default);
    eprintln!("kl_default_coef 1: KL {kl0:.3} -> {kl1:.3}, P(default) {p:.3}");
    assert!(
        kl1 < 0.5 * kl0,
        "KL toward the default did not fall: {kl0} -> {kl1}"
    );
    assert!(p > 0.5, "P(default directive) {p}");
    let (m, p_off) = train(0.0);
    assert!(m.iter().all(|x| x.kl_default == 0.0));
    assert!(p_off < 0.2, "without the term P(default) {p_off}");
}
