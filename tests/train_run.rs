//! `run` (training runs) as a library: a checkpoint refuses data with other symbols than it was trained on.

use marl_trade::eval::AgentPolicy;
use marl_trade::market::Market;
use marl_trade::run::{TrainOptions, train};
use marl_trade::{Config, data};

#[test]
fn a_checkpoint_refuses_data_with_other_symbols() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/small.toml")).unwrap();
    cfg.ppo.total_timesteps = cfg.ppo.num_steps as u64 * cfg.env.scenarios as u64;
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    let market = Market::from_data(md.clone());
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        save_every: 1,
        ..TrainOptions::new(dir.path().join("run"))
    };
    let report = train(&cfg, &market, &opts).unwrap();
    assert_eq!(report.iteration, 1);
    let master = cfg.master.default_action;
    AgentPolicy::from_checkpoint("ppo", &report.checkpoint, &market, master).unwrap();

    let mut renamed = md;
    renamed.symbols.swap(0, 1);
    let other = Market::from_data(renamed);
    let err = AgentPolicy::from_checkpoint("ppo", &report.checkpoint, &other, master)
        .err()
        .expect("refused");
    assert_eq!(err.kind(), marl_trade::ErrorKind::SymbolMismatch);
    let err = err.to_string();
    assert!(err.contains("symbols.txt") && err.contains("S001"), "{err}");
}

/// Issue #11: checkpoint selection on the validation slice (`eval::select`). Training plays only the
/// bars before the slice (`Period::Bars(0, lo)`); every evaluation is recorded; `best/` is the checkpoint of the highest
/// validation Sharpe (the earliest among equals) and the run directory resolves to it; patience
/// stops the run; a finished selection resumes as a no-op.
#[test]
fn checkpoint_selection_on_the_validation_slice() {
    use marl_trade::eval::{BacktestOptions, run_policy, train_selected, validation_bars};
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/small.toml")).unwrap();
    cfg.ppo.total_timesteps = 4 * cfg.ppo.num_steps as u64 * cfg.env.scenarios as u64;
    cfg.ppo.val_fraction = 0.2;
    cfg.ppo.val_every = 1;
    let market = Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark));
    let (lo, split) = validation_bars(&cfg, &market).unwrap();
    assert_eq!(split, 840); // floor(1200 * 0.7)
    assert_eq!(lo, 840 - 168);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let rep = train_selected(&cfg, &market, &TrainOptions::new(&out)).unwrap();
    assert_eq!(rep.iteration, 4);
    assert_eq!(rep.history.len(), 4);
    assert!(!rep.stopped_early);
    let h = &rep.history;
    let max = h.iter().map(|p| p.sharpe).fold(f64::NEG_INFINITY, f64::max);
    let first_max = h.iter().find(|p| p.sharpe == max).unwrap();
    assert_eq!(rep.best_iteration, first_max.iteration, "{h:?}");
    assert_eq!(
        h.iter().filter(|p| p.best).map(|p| p.iteration).next_back(),
        Some(rep.best_iteration)
    );
    // the run directory resolves to best/, and best/ replays to the recorded validation Sharpe
    let best = marl_trade::run::resolve_checkpoint(&out).unwrap();
    assert_eq!(best, out.join(marl_trade::run::BEST_DIR));
    let mut policy =
        AgentPolicy::from_checkpoint("ppo", &best, &market, cfg.master.default_action).unwrap();
    let res = run_policy(
        &cfg.env_setup(),
        market.data.clone(),
        market.features.clone(),
        &BacktestOptions {
            period: marl_trade::env::Period::Bars(lo, split),
            ..Default::default()
        },
        &mut policy,
    )
    .unwrap();
    let sharpe = if res.metrics.sharpe.is_finite() {
        res.metrics.sharpe
    } else {
        0.0
    };
    assert_eq!(sharpe, max);
    // one metrics line per iteration across the chunks
    let ms = marl_trade::train::metrics::read_metrics(out.join("metrics.jsonl")).unwrap();
    assert_eq!(ms.len(), 4);
    // resuming a finished selection changes nothing
    let again = train_selected(
        &cfg,
        &market,
        &TrainOptions {
            resume: true,
            ..TrainOptions::new(&out)
        },
    )
    .unwrap();
    assert_eq!(again.history, rep.history);
    // patience 1: stop after the first evaluation without a new best (or run to the end)
    cfg.ppo.val_patience = 1;
    let out2 = dir.path().join("run2");
    let rep2 = train_selected(&cfg, &market, &TrainOptions::new(&out2)).unwrap();
    assert_eq!(rep2.history[..], rep.history[..rep2.history.len()]);
    let first_miss = rep.history.iter().position(|p| !p.best);
    match first_miss {
        Some(i) => {
            assert!(rep2.stopped_early);
            assert_eq!(rep2.history.len(), i + 1);
        }
        None => assert_eq!(rep2.history.len(), 4),
    }
    // a slice too small to hold a bar is refused, naming the field
    cfg.ppo.val_fraction = 1e-6;
    let e = train_selected(&cfg, &market, &TrainOptions::new(dir.path().join("run3")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ppo.val_fraction"), "{e}");
}

/// The training schedules on top of CleanRL (`ppo.cost_ramp_frac`, `ppo.onboard_*`) are functions
/// of the iteration: each iteration logs its values, and a run interrupted in the middle of both
/// resumes bit-identically (metrics and final parameters equal to the uninterrupted run's).
#[test]
fn cost_ramp_and_onboarding_are_logged_and_resume_exactly() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/small.toml")).unwrap();
    cfg.ppo.total_timesteps = 4 * cfg.ppo.num_steps as u64 * cfg.env.scenarios as u64;
    cfg.ppo.cost_ramp_frac = 0.5; // scale 0, 0.5, 1, 1
    cfg.ppo.onboard_start = 1; // 1, 4, 7, 8 (clamped) tradable symbols
    cfg.ppo.onboard_every = 1;
    cfg.ppo.onboard_step = 3;
    let market = Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark));
    let dir = tempfile::tempdir().unwrap();
    let whole = train(&cfg, &market, &TrainOptions::new(dir.path().join("whole"))).unwrap();
    let stat = |m: &marl_trade::train::Metrics, k: &str| m.policy[k];
    let scales: Vec<f64> = whole
        .metrics
        .iter()
        .map(|m| stat(m, "schedule.cost_scale"))
        .collect();
    assert_eq!(scales, vec![0.0, 0.5, 1.0, 1.0]);
    let tradable: Vec<f64> = whole
        .metrics
        .iter()
        .map(|m| stat(m, "schedule.tradable_symbols"))
        .collect();
    assert_eq!(tradable, vec![1.0, 4.0, 7.0, 8.0]);

    let out = dir.path().join("split");
    let first = TrainOptions {
        max_iterations: Some(2),
        save_every: 1,
        ..TrainOptions::new(&out)
    };
    train(&cfg, &market, &first).unwrap();
    let rest = TrainOptions {
        resume: true,
        ..TrainOptions::new(&out)
    };
    let split = train(&cfg, &market, &rest).unwrap();
    assert_eq!(split.iteration, 4);
    let losses = |ms: &[marl_trade::train::Metrics]| -> Vec<(f64, f64, f64)> {
        ms.iter()
            .map(|m| (m.policy_loss, m.value_loss, m.entropy))
            .collect()
    };
    assert_eq!(losses(&split.metrics), losses(&whole.metrics[2..]));
    let model = |r: &marl_trade::run::TrainReport| {
        std::fs::read(r.checkpoint.join("model.safetensors")).unwrap()
    };
    assert_eq!(model(&split), model(&whole));
}
