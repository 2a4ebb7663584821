//! Joint training of the symbol agents and the master (`train::joint`, issue #12) through
//! `run::train`, the `marl-trade train` code path: the schedule's roles per iteration (who plays,
//! who updates), a side held fixed really does not move, a run interrupted between phases resumes
//! bit-identically (every checkpoint file), `eval` plays the joint checkpoint's master, and bad
//! input is a clear error. The learning result with a learning master is
//! `tests/learn_signal.rs`'s `joint_training_*` tests.

use std::path::{Path, PathBuf};

use marl_trade::eval::{
    AgentPolicy, EvalOptions, MasterChoice, MasterEvalOptions, evaluate_checkpoint,
    evaluate_master_run,
};
use marl_trade::market::Market;
use marl_trade::run::{TrainOptions, TrainReport, train};
use marl_trade::train::Metrics;
use marl_trade::train::joint::{JointSchedule, SEAT_FILE};
use marl_trade::train::mappo::{MASTER_MODEL_FILE, MASTER_STATE_FILE};
use marl_trade::{Config, ErrorKind, data};

/// `configs/small.toml` (4 scenarios x 32 steps) for 4 iterations with a master deciding every 8
/// steps from iteration 2 on, in alternating phases of one iteration: 2 master, 3 symbols, 4
/// master.
fn joint_config() -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/small.toml")).unwrap();
    cfg.ppo.total_timesteps = 4 * cfg.ppo.num_steps as u64 * cfg.env.scenarios as u64;
    cfg.master_ppo.decision_interval = 8;
    cfg.joint.enabled = true;
    cfg.joint.master_start_frac = 0.25;
    cfg.joint.schedule = JointSchedule::Alternating;
    cfg.joint.phase_iterations = 1;
    cfg.validate("test").unwrap();
    cfg
}

fn market(cfg: &Config) -> Market {
    Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark))
}

fn run(cfg: &Config, m: &Market, out: &Path, max: Option<usize>, resume: bool) -> TrainReport {
    let opts = TrainOptions {
        save_every: 1,
        max_iterations: max,
        resume,
        ..TrainOptions::new(out)
    };
    train(cfg, m, &opts).unwrap()
}

fn ck(out: &Path, it: usize) -> PathBuf {
    out.join("checkpoints").join(format!("iter-{it:06}"))
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn stat(m: &Metrics, k: &str) -> f64 {
    m.env
        .get(&format!("master.{k}"))
        .copied()
        .unwrap_or(f64::NAN)
}

#[test]
fn schedule_roles_frozen_sides_and_exact_resume() {
    let cfg = joint_config();
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let whole_dir = dir.path().join("whole");
    let whole = run(&cfg, &m, &whole_dir, None, false);
    assert_eq!(whole.iteration, 4);

    // Who played and who updated, iteration by iteration.
    let plays: Vec<f64> = whole.metrics.iter().map(|x| stat(x, "plays")).collect();
    let learns: Vec<f64> = whole.metrics.iter().map(|x| stat(x, "learns")).collect();
    let epochs: Vec<usize> = whole.metrics.iter().map(|x| x.epochs).collect();
    let e = cfg.ppo.update_epochs;
    assert_eq!(plays, vec![0.0, 1.0, 1.0, 1.0]);
    assert_eq!(learns, vec![0.0, 1.0, 0.0, 1.0]);
    assert_eq!(epochs, vec![e, 0, e, 0]);
    for x in whole.metrics.iter().filter(|x| stat(x, "learns") == 1.0) {
        for k in [
            "policy_loss",
            "value_loss",
            "entropy",
            "reward_mean",
            "cap_mean",
        ] {
            assert!(stat(x, k).is_finite(), "master.{k} at {}", x.iteration);
        }
    }
    // The entropy coefficient anneals over the master's own updates (two: start, end).
    assert_eq!(
        stat(&whole.metrics[1], "ent_coef"),
        cfg.master_ppo.ent_coef_start
    );
    assert_eq!(
        stat(&whole.metrics[3], "ent_coef"),
        cfg.master_ppo.ent_coef_end
    );

    // The same run one iteration per call, resumed each time (so across every phase boundary):
    // every file of the final checkpoint is the uninterrupted run's, and so are the metrics.
    let (models, masters) = assert_resumes_exactly(&cfg, &m, &whole, dir.path());
    // A side held fixed does not move: the symbol policy through the master's iterations 2 and 4,
    // the master through the symbols' iteration 3 (and before it plays); each moves when it
    // learns.
    assert!(
        models[0] == models[1],
        "symbol policy moved while held fixed"
    );
    assert!(models[1] != models[2], "symbol policy did not learn");
    assert!(
        models[2] == models[3],
        "symbol policy moved while held fixed"
    );
    assert!(masters[0] != masters[1], "master did not learn");
    assert!(masters[1] == masters[2], "master moved while held fixed");
    assert!(masters[2] != masters[3], "master did not learn");

    // `eval` plays the joint checkpoint's master: one decision per 8 steps of every path's
    // episode; a fixed directive replaces it; the master evaluation finds it too.
    let rep = evaluate_checkpoint(&EvalOptions::new(&whole_dir)).unwrap();
    let steps = rep.policy.last_bar - rep.policy.first_bar;
    let paths = m.data.paths;
    assert_eq!(
        rep.directive_counts.iter().sum::<usize>(),
        paths * steps.div_ceil(8),
        "{}",
        rep.text()
    );
    assert!(rep.text().contains("master: learned (joint checkpoint)"));
    let by = rep.directives_by_regime.as_ref().expect("by regime");
    assert_eq!(by.source, "hidden regime");
    let by_sum: usize = by.counts.iter().flatten().sum();
    assert_eq!(by_sum, rep.directive_counts.iter().sum::<usize>());
    assert!(
        rep.text()
            .contains("directives of `learned` by hidden regime")
    );
    let fixed = evaluate_checkpoint(&EvalOptions {
        master: Some(MasterChoice::Fixed(3)),
        ..EvalOptions::new(&whole_dir)
    })
    .unwrap();
    assert!(fixed.directive_counts.is_empty() && fixed.directives_by_regime.is_none());
    // Every evaluation that builds the checkpoint's policy (walk-forward, stress, report, ablate,
    // checkpoint selection) plays it with its master, unless asked for the fixed directive.
    let p = AgentPolicy::from_checkpoint("ppo", &ck(&whole_dir, 4), &m, 3).unwrap();
    assert!(p.plays_learned_master());
    assert!(!p.with_fixed_master().plays_learned_master());
    let mrep =
        evaluate_master_run(&MasterEvalOptions::new(&whole_dir, MasterChoice::Learned)).unwrap();
    assert_eq!(
        mrep.checkpoint.as_deref(),
        Some(ck(&whole_dir, 4).as_path())
    );
    assert!(mrep.rows[0].1.directive_counts.iter().sum::<usize>() > 0);
}

/// Run `cfg` again one iteration per call, resumed each time, beside the uninterrupted run
/// `whole`: every file of the final checkpoint and the metrics must be the same. Returns the
/// symbol and master parameter files after each iteration.
fn assert_resumes_exactly(
    cfg: &Config,
    m: &Market,
    whole: &TrainReport,
    dir: &Path,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let step_dir = dir.join("stepwise");
    let (mut models, mut masters, mut step_metrics) = (Vec::new(), Vec::new(), Vec::new());
    let metrics_files = || {
        [marl_trade::run::METRICS_JSONL, marl_trade::run::METRICS_CSV]
            .map(|f| std::fs::read_to_string(step_dir.join(f)).unwrap_or_default())
    };
    for it in 1..=whole.iteration {
        let before = metrics_files();
        let r = run(cfg, m, &step_dir, Some(1), it > 1);
        // A resume keeps the metrics lines already written byte for byte.
        for (old, new) in before.iter().zip(metrics_files()) {
            assert!(new.starts_with(old.as_str()), "metrics rewritten on resume");
        }
        assert_eq!(r.iteration, it);
        models.push(read(r.checkpoint.join("model.safetensors")));
        masters.push(read(r.checkpoint.join(MASTER_MODEL_FILE)));
        step_metrics.extend(r.metrics);
    }
    let mut files: Vec<_> = std::fs::read_dir(&whole.checkpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    for f in [MASTER_MODEL_FILE, MASTER_STATE_FILE, SEAT_FILE] {
        assert!(
            files.iter().any(|x| x == f),
            "{f} missing from a joint checkpoint"
        );
    }
    let last = ck(&step_dir, whole.iteration);
    for f in &files {
        assert!(
            read(whole.checkpoint.join(f)) == read(last.join(f)),
            "{} differs after resume",
            f.to_string_lossy()
        );
    }
    let key = |ms: &[Metrics]| -> Vec<(f64, f64, f64)> {
        ms.iter()
            .map(|x| (x.policy_loss, stat(x, "policy_loss"), stat(x, "entropy")))
            .collect()
    };
    let (a, b) = (key(&whole.metrics), key(&step_metrics));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    (models, masters)
}

/// The simultaneous schedule: both sides update after every rollout once the master plays, and a
/// resume between two of the master's updates (its kept observation in the checkpoint) is exact.
#[test]
fn simultaneous_schedule_resumes_exactly() {
    let mut cfg = joint_config();
    cfg.joint.schedule = JointSchedule::Simultaneous;
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let whole = run(&cfg, &m, &dir.path().join("whole"), None, false);
    let learns: Vec<f64> = whole.metrics.iter().map(|x| stat(x, "learns")).collect();
    let epochs: Vec<usize> = whole.metrics.iter().map(|x| x.epochs).collect();
    assert_eq!(learns, vec![0.0, 1.0, 1.0, 1.0]);
    assert_eq!(epochs, vec![cfg.ppo.update_epochs; 4]);
    assert_resumes_exactly(&cfg, &m, &whole, dir.path());
}

#[test]
fn joint_bad_input_is_a_clear_error() {
    // A rollout that is not whole decisions.
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/configs/small.toml");
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let e = Config::from_file_with_overrides(
        &path,
        &set(&["joint.enabled=true", "master_ppo.decision_interval=7"]),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("ppo.num_steps"), "{e}");
    let e = Config::from_file_with_overrides(
        &path,
        &set(&["joint.enabled=true", "joint.master_start_frac=1.0"]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("joint.master_start_frac"), "{e}");
    let e = Config::from_file_with_overrides(&path, &set(&["joint.schedule=\"sometimes\""]))
        .unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");

    // A joint checkpoint that lost its master, or whose seat state is cut short.
    let mut cfg = joint_config();
    cfg.ppo.total_timesteps /= 2; // 2 iterations
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    run(&cfg, &m, &out, Some(1), false);
    let last = ck(&out, 1);
    let seat = read(last.join(SEAT_FILE));
    std::fs::write(last.join(SEAT_FILE), &seat[..seat.len() - 3]).unwrap();
    let opts = TrainOptions {
        resume: true,
        ..TrainOptions::new(&out)
    };
    let e = train(&cfg, &m, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
    assert!(e.to_string().contains(SEAT_FILE), "{e}");
    std::fs::write(last.join(SEAT_FILE), &seat).unwrap();
    std::fs::remove_file(last.join(MASTER_STATE_FILE)).unwrap();
    let e = train(&cfg, &m, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
    assert!(e.to_string().contains(MASTER_STATE_FILE), "{e}");
}

/// The go/no-go report of a joint run evaluates the master criteria from their own numbers: the
/// learned master against the same checkpoint under the default directive (a single run), and
/// the master's logged losses; a joint walk-forward records the comparison for every fold.
#[test]
fn report_and_walk_forward_evaluate_the_joint_master() {
    use marl_trade::validate::{
        Verdict, WalkForwardOptions, WalkForwardSpec, build_report, walk_forward,
    };
    // No HOLD prior, so that the barely trained greedy policy trades and has drawdowns.
    let mut cfg = joint_config();
    cfg.agent.hold_prior = 0.0;
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    run(&cfg, &m, &out, None, false);
    let r = build_report(&out, None).unwrap();
    let crit = |name: &str| r.criteria.iter().find(|c| c.name == name).unwrap().clone();
    assert_eq!(r.master.len(), 1);
    let mv = &r.master[0];
    assert!(mv.default_max_drawdown > 0.0, "{mv:?}");
    let cut = 1.0 - mv.max_drawdown / mv.default_max_drawdown;
    let c = crit("master cuts drawdown > 15% vs baseline");
    assert!((c.value.unwrap() - cut).abs() < 1e-12, "{c:?}");
    let go = cut > 0.15 && mv.sharpe_z > -2.0;
    assert_eq!(
        c.verdict,
        if go { Verdict::Go } else { Verdict::NoGo },
        "{c:?}"
    );
    // The default directive's side is the checkpoint replayed under it: its Sharpe differs from
    // the learned master's only if the master played something else.
    assert!(mv.sharpe.is_finite() && mv.default_sharpe.is_finite());
    assert_eq!(r.mappo.len(), 1);
    assert_eq!(r.mappo[0].updates, 2); // iterations 2 and 4 of the alternating schedule
    assert_eq!(r.mappo[0].non_finite, 0);
    let c = crit("no-go: MAPPO diverges");
    assert_ne!(c.verdict, Verdict::NotEvaluable, "{c:?}");
    // The symbol side's gradient norms leave out the iterations it was held fixed in.
    assert!(
        r.grad_norms.is_empty(),
        "only 2 symbol updates: fewer than 5 logged"
    );

    // A joint walk-forward: every run's result holds its master's comparison.
    let wf_out = dir.path().join("wf");
    let spec = WalkForwardSpec {
        train_bars: 600,
        test_bars: 150,
        step: 150,
        expanding: false,
        embargo: 20,
        seeds: 1,
        warm_start: false,
        iterations: Some(4),
    };
    let rep = walk_forward(&cfg, &m, &spec, &WalkForwardOptions::new(&wf_out), |_| {}).unwrap();
    assert_eq!(rep.master.len(), rep.runs_done);
    assert!(rep.runs_done >= 2);
    let r = build_report(&wf_out, None).unwrap();
    assert_eq!(r.master.len(), rep.runs_done);
    assert_ne!(
        crit_of(&r, "master cuts drawdown > 15% vs baseline"),
        Verdict::NotEvaluable
    );
}

fn crit_of(r: &marl_trade::validate::Report, name: &str) -> marl_trade::validate::Verdict {
    r.criteria.iter().find(|c| c.name == name).unwrap().verdict
}
