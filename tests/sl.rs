//! Supervised priors (issue #13, first half), CI-sized, fixed seeds.
//!
//! The market is `configs/signal.toml` (8 synthetic symbols whose sentiment at bar t predicts the
//! return of bar t + 1; the same random draws at every strength), the models are trained by
//! `sl::train_all` (the `marl-trade sl train` code path) on the purged train period, and evaluated
//! on the held-out test period (the last 30% of the bars).
//!
//! - With the signal (strength 1) each model beats the majority class on held-out bars: paired
//!   z-score > 3 (measured: MLP 4.7, LSTM 10.2, GRU 10.6). The log-loss is reported, not
//!   required: the MLP's is worse than the class frequencies' (over-confident).
//! - Without it (strength 0) none does: z < 2 (measured: MLP -2.2, LSTM 0.3, GRU -1.4). A leak
//!   through the labels or across the purge would show here, where there is nothing to learn.
//! - The cache round-trips exactly, the environment's SL slice reads it at the observation's own
//!   (path, bar, symbol), and a cache of other data or other models is refused.
//! - The decision-IC leak guard (`eval::decision_ic`, tests/learn_signal.rs) holds with the SL
//!   slice filled: a policy that trades on the slice alone has a decision IC beyond noise with the
//!   signal and within noise (|z| < 2) without it; a cache that leaks the next bar's return
//!   (a mutation built here) is caught by the same guard.

use std::path::Path;
use std::sync::Arc;

use marl_trade::env::obs::{DYN_OBS, SL_PROBS};
use marl_trade::env::{BackendKind, N_ACTIONS, Period, VecEnv};
use marl_trade::eval::{
    BacktestOptions, BacktestPolicy, Decision, DecisionIc, PolicyView, decision_ic, run_policy,
};
use marl_trade::market::Market;
use marl_trade::priors::{CHANNELS, PriorCache};
use marl_trade::sl::{ModelKind, SlModels, SlReport, SlTrainOptions, build_cache, train_all};
use marl_trade::{Config, ErrorKind, Result, data};

fn config(strength: f64) -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/signal.toml")).unwrap();
    cfg.data.synthetic.signal_strength = strength;
    // CI-sized training: a few epochs of large batches.
    cfg.sl.max_epochs = 2;
    cfg.sl.patience = 1;
    cfg.sl.batch_size = 512;
    cfg.sl.learning_rate = 3e-3;
    cfg
}

fn market(cfg: &Config) -> Market {
    Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark))
}

fn train(cfg: &Config, m: &Market, dir: &Path) -> SlReport {
    let mut progress = |e: &marl_trade::sl::EpochLog| eprintln!("{}", e.line());
    let r = train_all(
        &cfg.sl,
        cfg.env.train_fraction,
        m,
        SlTrainOptions {
            out: dir.to_path_buf(),
            force: false,
            progress: &mut progress,
        },
    )
    .unwrap();
    eprintln!("{}", r.text());
    r
}

/// Trades on the SL slice alone: long a symbol while the mean of its three summaries is > 0.05,
/// flat when < 0; records P(long after the step) per decision for the decision IC.
struct SlRule {
    master: u8,
    decisions: Vec<Decision>,
}

impl BacktestPolicy for SlRule {
    fn name(&self) -> &str {
        "sl-rule"
    }

    fn act(&mut self, view: &PolicyView, sym: &mut [u8], master: &mut [u8]) -> Result<()> {
        let s = view.layout.n_symbols;
        for (i, a) in sym.iter_mut().enumerate() {
            let obs = &view.dyn_obs[i * DYN_OBS..(i + 1) * DYN_OBS];
            let mask = &view.mask[i * N_ACTIONS..(i + 1) * N_ACTIONS];
            let sl = obs[SL_PROBS].iter().sum::<f32>() / 3.0;
            let has = obs[marl_trade::env::obs::POSITION.start] > 0.5;
            *a = if !has && sl > 0.05 && mask[3] != 0 {
                3
            } else if has && sl < 0.0 && mask[5] != 0 {
                5
            } else {
                0
            };
            let n = i / s;
            self.decisions.push(Decision {
                path: view.obs_index[2 * n],
                bar: view.obs_index[2 * n + 1],
                symbol: (i % s) as u32,
                p_long: (0.5 + 0.5 * sl as f64).clamp(0.0, 1.0),
            });
        }
        master.fill(self.master);
        Ok(())
    }
}

/// The decision IC of [`SlRule`] on the held-out bars with the SL slice read from `cache`.
fn sl_rule_ic(cfg: &Config, m: &Market, cache: &Path) -> DecisionIc {
    let mut setup = cfg.env_setup();
    setup.env.sl_cache = Some(cache.display().to_string());
    let mut rule = SlRule {
        master: cfg.master.default_action as u8,
        decisions: Vec::new(),
    };
    let opts = BacktestOptions {
        period: Period::Test,
        ..BacktestOptions::default()
    };
    run_policy(&setup, m.data.clone(), m.features.clone(), &opts, &mut rule).unwrap();
    decision_ic(&rule.decisions, &m.data)
}

#[test]
fn with_the_signal_each_model_beats_the_majority_class_and_the_sl_slice_carries_it() {
    let cfg = config(1.0);
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = train(&cfg, &m, dir.path());
    for kind in ModelKind::ALL {
        let h = &r.model(kind).unwrap().held_out;
        assert!(
            h.z_vs_majority > 3.0,
            "{}: held-out accuracy {:.4} vs majority {:.4}, z {:.2}",
            kind.name(),
            h.accuracy,
            h.majority_accuracy,
            h.z_vs_majority
        );
    }
    // The cache carries the signal into the observation: a rule on the SL slice alone has a
    // decision IC beyond noise on the held-out bars.
    let models = SlModels::load(dir.path()).unwrap();
    let f = dir.path().join("priors.slc");
    build_cache(&models, &m).unwrap().write(&f).unwrap();
    let ic = sl_rule_ic(&cfg, &m, &f);
    eprintln!("strength 1, SL rule: {}", ic.line());
    assert!(ic.z > 2.0, "{}", ic.line());
}

#[test]
fn without_a_signal_no_model_beats_the_majority_class_and_the_leak_guard_holds() {
    let cfg = config(0.0);
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = train(&cfg, &m, dir.path());
    for kind in ModelKind::ALL {
        let h = &r.model(kind).unwrap().held_out;
        assert!(
            h.z_vs_majority < 2.0,
            "{}: beats the majority class without a signal (leak?): accuracy {:.4} vs {:.4}, z {:.2}",
            kind.name(),
            h.accuracy,
            h.majority_accuracy,
            h.z_vs_majority
        );
    }
    // The decision-IC guard with the SL slice filled by these models: within noise.
    let models = SlModels::load(dir.path()).unwrap();
    let f = dir.path().join("priors.slc");
    build_cache(&models, &m).unwrap().write(&f).unwrap();
    let ic = sl_rule_ic(&cfg, &m, &f);
    eprintln!("strength 0, SL rule: {}", ic.line());
    assert!(ic.z.abs() < 2.0, "{}", ic.line());

    // Mutation: a cache that knows the sign of the next bar's return (a leak through the labels)
    // is caught by the same guard.
    let md = &m.data;
    let (tn, sn) = (md.bars, md.n_symbols());
    let mut leak = vec![0f32; md.paths * tn * sn * CHANNELS];
    for p in 0..md.paths {
        for t in 0..tn - 1 {
            for s in 0..sn {
                let up = md.close[md.px(p, t + 1, s)] > md.close[md.px(p, t, s)];
                let v = if up { 0.2 } else { -0.2 };
                let i = ((p * tn + t) * sn + s) * CHANNELS;
                leak[i..i + CHANNELS].fill(v);
            }
        }
    }
    let lf = dir.path().join("leak.slc");
    PriorCache::new(md, 0, leak).unwrap().write(&lf).unwrap();
    let ic = sl_rule_ic(&cfg, &m, &lf);
    eprintln!("strength 0, leaking cache: {}", ic.line());
    assert!(ic.z > 2.0, "the leak went unnoticed: {}", ic.line());
}

#[test]
fn cache_round_trips_fills_the_sl_slice_and_stale_caches_are_refused() {
    let mut cfg = config(1.0);
    cfg.sl.max_epochs = 1;
    cfg.sl.lstm_hidden = 8;
    cfg.sl.gru_hidden = 8;
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let models_dir = dir.path().join("models");
    let first = train(&cfg, &m, &models_dir);
    let models = SlModels::load(&models_dir).unwrap();
    let cache = build_cache(&models, &m).unwrap();
    let f = dir.path().join("priors.slc");
    cache.write(&f).unwrap();

    // Exact round trip; values are P(up) - P(down) in [-1, 1], zeros before the first window.
    let back = PriorCache::read(&f).unwrap();
    assert_eq!(back, cache);
    assert!(cache.values.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(cache.bar(0, 0).iter().all(|&v| v == 0.0));
    assert!(cache.bar(0, 500).iter().any(|&v| v != 0.0));

    // The env's SL slice is the cache at each scenario's (path, bar, symbol), after reset and
    // after steps.
    let mut setup = cfg.env_setup();
    setup.env.sl_cache = Some(f.display().to_string());
    let mut env = VecEnv::new(
        &setup,
        m.data.clone(),
        m.features.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .unwrap();
    env.reset(4).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    for step in 0..3 {
        let mut d = vec![0f32; n * s * DYN_OBS];
        env.dyn_obs(&mut d).unwrap();
        let mut idx = vec![0u32; 2 * n];
        env.obs_index(&mut idx).unwrap();
        for i in 0..n {
            let (p, t) = (idx[2 * i] as usize, idx[2 * i + 1] as usize);
            for j in 0..s {
                let k = cache.index(p, t, j);
                assert_eq!(
                    &d[(i * s + j) * DYN_OBS..][SL_PROBS],
                    &cache.values[k..k + CHANNELS],
                    "step {step}, scenario {i}, symbol {j}"
                );
            }
        }
        env.step(&vec![0u8; n * s], &vec![cfg.master.default_action as u8; n])
            .unwrap();
    }
    // The same through an in-memory cache.
    assert!(
        VecEnv::with_priors(
            &cfg.env_setup(),
            m.data.clone(),
            m.features.clone(),
            Arc::new(cache.clone()),
            Period::Test,
            BackendKind::Cpu,
        )
        .is_ok()
    );

    // Other data (another seed): refused when the env is built.
    let mut other = cfg.clone();
    other.data.synthetic.seed += 1;
    let m2 = market(&other);
    let e = VecEnv::new(
        &setup,
        m2.data.clone(),
        m2.features.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .err()
    .expect("a cache of other data was accepted");
    assert_eq!(e.kind(), ErrorKind::StalePriors, "{e}");
    assert!(e.to_string().contains("priors.slc"), "{e}");

    // Other models: a configuration naming the models directory refuses a cache it did not
    // produce.
    let text = |models: &Path| {
        format!(
            "[env]\nsl_cache = \"{}\"\n[sl]\nmodels = \"{}\"\n",
            f.display(),
            models.display()
        )
    };
    Config::from_toml_str(&text(&models_dir), "ok.toml").unwrap();
    let models2 = dir.path().join("models2");
    let mut cfg2 = cfg.clone();
    cfg2.sl.seed = 1;
    train(&cfg2, &m, &models2);
    let e = Config::from_toml_str(&text(&models2), "stale.toml").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StalePriors, "{e}");
    assert_eq!(e.field(), Some("env.sl_cache"));
    // A truncated cache file: refused with the file named.
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = VecEnv::new(
        &setup,
        m.data.clone(),
        m.features.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .err()
    .expect("a truncated cache was accepted");
    assert_eq!(e.kind(), ErrorKind::StalePriors, "{e}");

    // `sl train` resumes: a second run over the same directory trains no epoch and reports the
    // same models.
    let mut epochs = 0usize;
    let again = train_all(
        &cfg.sl,
        cfg.env.train_fraction,
        &m,
        SlTrainOptions {
            out: models_dir.clone(),
            force: false,
            progress: &mut |_| epochs += 1,
        },
    )
    .unwrap();
    assert_eq!(epochs, 0);
    // (read back from JSON: equal up to the last digit of a float)
    for (a, b) in again.models.iter().zip(&first.models) {
        assert_eq!(
            (a.model, a.params, a.epochs, a.best_epoch),
            (b.model, b.params, b.epochs, b.best_epoch)
        );
        assert!((a.held_out.accuracy - b.held_out.accuracy).abs() < 1e-12);
        assert!((a.held_out.log_loss - b.held_out.log_loss).abs() < 1e-12);
    }
    // A different configuration in the same directory is refused without --force.
    let mut cfg3 = cfg.clone();
    cfg3.sl.horizon = 2;
    let e = train_all(
        &cfg3.sl,
        cfg3.env.train_fraction,
        &m,
        SlTrainOptions {
            out: models_dir.clone(),
            force: false,
            progress: &mut |_| {},
        },
    )
    .expect_err("models of another configuration were overwritten");
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");
}
