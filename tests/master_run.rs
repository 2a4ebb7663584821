//! The portfolio master as a product (issue #12): `run::train_master` (`marl-trade train-master`)
//! with checkpoints that resume bit-identically, the evaluation of a learned or fixed master
//! (`marl-trade eval --master`), and the bad-input errors: a master observation of the wrong size,
//! a run without a master, a checkpoint of the wrong shape or of another model, a directive out of
//! range.

use std::path::{Path, PathBuf};
use std::process::Command;

use marl_trade::config::Config;
use marl_trade::env::master_obs::MASTER_OBS;
use marl_trade::env::{BackendKind, Period, VecEnv};
use marl_trade::eval::{EvalOptions, MasterChoice, MasterEvalOptions, evaluate_master_run};
use marl_trade::market::Market;
use marl_trade::run::{self, MasterTrainOptions};
use marl_trade::train::mappo::{self, MASTER_MODEL_FILE, MASTER_OPTIMIZER_FILE};
use marl_trade::{Error, ErrorKind};

/// configs/small.toml (8 symbols, 1200 hourly bars, 4 scenarios) with a small, quick master.
fn config(hidden1: usize) -> Config {
    let mut cfg =
        Config::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/small.toml"))
            .unwrap();
    let m = &mut cfg.master_ppo;
    m.decision_interval = 3;
    m.decisions = 5;
    m.iterations = 4;
    m.minibatches = 2;
    m.net.hidden1 = hidden1;
    m.net.hidden2 = 16;
    cfg
}

fn train(cfg: &Config, market: &Market, out: &Path, resume: bool, max: Option<usize>) {
    let opts = MasterTrainOptions {
        resume,
        max_iterations: max,
        save_every: 2,
        ..MasterTrainOptions::new(out)
    };
    run::train_master(cfg, market, &opts).unwrap();
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn master_training_resumes_bit_identically() {
    let cfg = config(32);
    let market = Market::load(&cfg.data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // a: 4 iterations in one go; b: 2, stopped, then resumed for the other 2.
    train(&cfg, &market, &a, false, None);
    train(&cfg, &market, &b, false, Some(1));
    train(&cfg, &market, &b, true, Some(1));
    // b's checkpoint is at iteration 2 (save_every 2 or the last iteration run): resume it.
    train(&cfg, &market, &b, true, None);
    let ca = run::latest_master_checkpoint(&a).unwrap();
    let cb = run::latest_master_checkpoint(&b).unwrap();
    assert!(
        ca.ends_with("iter-000004") && cb.ends_with("iter-000004"),
        "{ca:?} {cb:?}"
    );
    assert_same_checkpoint_files(&ca, &cb);
    let sa = mappo::read_master_state(&ca).unwrap();
    let sb = mappo::read_master_state(&cb).unwrap();
    assert_eq!(sa, sb);
    assert_eq!(sa.iteration, 4);
    // The metrics file holds every iteration once, the same on both runs.
    let ma = String::from_utf8(read(a.join(run::MASTER_METRICS_JSONL))).unwrap();
    let mb = String::from_utf8(read(b.join(run::MASTER_METRICS_JSONL))).unwrap();
    assert_eq!(ma.lines().count(), 4, "{ma}");
    assert_eq!(ma, mb);
    // Only the newest two checkpoints are kept.
    let kept = std::fs::read_dir(a.join(run::MASTER_DIR))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("iter-")
        })
        .count();
    assert_eq!(kept, 2);

    // A fresh run into a directory that holds a master is refused (resume or force).
    let e = run::train_master(&cfg, &market, &MasterTrainOptions::new(&a)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunExists, "{e}");
    // So is another configuration.
    let mut other = cfg.clone();
    other.master_ppo.lr = 1e-3;
    let e = run::train_master(
        &other,
        &market,
        &MasterTrainOptions {
            resume: true,
            ..MasterTrainOptions::new(&a)
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");

    // The learned master evaluated on the test period, next to the default directive, with its
    // directives by hidden regime (the small config's data is the synthetic generator's).
    let rep = evaluate_master_run(&MasterEvalOptions::new(&a, MasterChoice::Learned)).unwrap();
    assert_eq!(rep.rows.len(), 2);
    assert_eq!(
        rep.rows[1].0,
        format!("default:{}", cfg.master.default_action)
    );
    assert_eq!(rep.regime_source, "hidden regime");
    let e = &rep.rows[0].1;
    let decisions: usize = e.directive_counts.iter().sum();
    // One episode per scenario over the test period, a decision every 3 bars.
    assert!(decisions >= cfg.env.scenarios, "{decisions}");
    let by_regime: usize = e.directive_by_label.iter().flatten().sum();
    assert_eq!(by_regime, decisions);
    for (l, modes) in e.mode_by_label.iter().enumerate() {
        let from_dirs: [usize; 3] = std::array::from_fn(|k| {
            (0..48)
                .filter(|m| m % 3 == k)
                .map(|m| e.directive_by_label[l][m])
                .sum()
        });
        assert_eq!(*modes, from_dirs);
    }
    let text = rep.text();
    assert!(text.contains("learned") && text.contains("bull"), "{text}");
    // A fixed directive plays that directive at every decision, on the same episodes.
    let rep = evaluate_master_run(&MasterEvalOptions::new(&a, MasterChoice::Fixed(5))).unwrap();
    let f = &rep.rows[0].1;
    assert_eq!(
        f.directive_counts[5],
        f.directive_counts.iter().sum::<usize>()
    );
    assert_eq!(f.bars, e.bars, "the same episodes");
}

#[test]
fn master_bad_input_is_a_clear_error() {
    // Directive parsing.
    assert_eq!(
        MasterChoice::parse("learned").unwrap(),
        MasterChoice::Learned
    );
    assert_eq!(
        MasterChoice::parse("fixed:47").unwrap(),
        MasterChoice::Fixed(47)
    );
    for (arg, says) in [
        ("fixed:48", "directive 48 is not in 0..48"),
        ("fixed:x", "`x` is not a directive index"),
        ("fixed:-1", "`-1` is not a directive index"),
        ("best", "expected `learned` or `fixed:<directive>`"),
    ] {
        let e = MasterChoice::parse(arg).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(says), "{arg}: {e}");
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(32);
    let market = Market::load(&cfg.data).unwrap();
    let run_a = dir.path().join("a");
    let mut one = cfg.clone();
    one.master_ppo.iterations = 1;
    train(&one, &market, &run_a, false, None);
    let ck = run::latest_master_checkpoint(&run_a).unwrap();

    // A run without a master: `learned` is refused naming <run>/master/latest.
    let empty = dir.path().join("symbols-only");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join(run::CONFIG_FILE), cfg.to_toml_string()).unwrap();
    let e =
        evaluate_master_run(&MasterEvalOptions::new(&empty, MasterChoice::Learned)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
    assert!(e.to_string().contains("master/latest"), "{e}");
    let e = marl_trade::eval::evaluate_checkpoint(&EvalOptions {
        master: Some(MasterChoice::Learned),
        ..EvalOptions::new(&empty)
    })
    .unwrap_err();
    assert!(e.to_string().contains("master/latest"), "{e}");
    // A checkpoint directory without master_state.json.
    let e = mappo::load_master_net(&empty).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Checkpoint);
    assert!(e.to_string().contains("master_state.json"), "{e}");

    // A checkpoint of the wrong shape: the weights of a 64-wide master under a 32-wide state.
    let run_b = dir.path().join("b");
    let mut wide = one.clone();
    wide.master_ppo.net.hidden1 = 64;
    train(&wide, &market, &run_b, false, None);
    let ck_b = run::latest_master_checkpoint(&run_b).unwrap();
    let original = read(ck.join(MASTER_MODEL_FILE));
    std::fs::copy(ck_b.join(MASTER_MODEL_FILE), ck.join(MASTER_MODEL_FILE)).unwrap();
    let e = mappo::load_master_net(&ck).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    let sm = e.shape_mismatch().expect("a shape mismatch").clone();
    assert!(sm.name.starts_with("master."), "{sm:?}");
    // The resume of that run refuses the same way.
    let venv = || {
        VecEnv::new(
            &one.env_setup(),
            market.data.clone(),
            market.features.clone(),
            Period::Train,
            BackendKind::Cpu,
        )
        .unwrap()
    };
    let e = mappo::MasterPpo::resume(&ck, venv(), mappo::CapFollower::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
    // Another model's file (no master.* tensors) is a checkpoint error naming a missing tensor.
    let vm = candle_nn::VarMap::new();
    let vb = marl_trade::agents::init::seeded_var_builder(
        &vm,
        1,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    );
    candle_nn::linear(3, 2, vb.pp("encoder")).unwrap();
    marl_trade::train::checkpoint::save_params(&vm, &ck.join(MASTER_MODEL_FILE)).unwrap();
    let e = mappo::load_master_net(&ck).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
    assert!(e.to_string().contains("master."), "{e}");
    // With its own weights back it resumes; a truncated env state is refused naming the file.
    std::fs::write(ck.join(MASTER_MODEL_FILE), &original).unwrap();
    assert!(mappo::MasterPpo::resume(&ck, venv(), mappo::CapFollower::default()).is_ok());
    std::fs::write(ck.join(mappo::MASTER_ENV_FILE), b"MARLMAST").unwrap();
    let e = mappo::MasterPpo::resume(&ck, venv(), mappo::CapFollower::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
    assert!(e.to_string().contains(mappo::MASTER_ENV_FILE), "{e}");

    // A master observation of the wrong size: a shape error naming both sizes.
    let (net, _, _) = mappo::load_master_net(&ck_b).unwrap();
    let x = candle_core::Tensor::zeros(
        (2, MASTER_OBS - 1),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let e: Error = net.forward(&x).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(
        e.to_string().contains(&(MASTER_OBS - 1).to_string())
            && e.to_string().contains(&MASTER_OBS.to_string()),
        "{e}"
    );
    // ... and the env refuses a wrong buffer for it.
    let mut env = venv();
    env.reset(1).unwrap();
    let intents = vec![0f32; one.env.scenarios * marl_trade::env::master_obs::MASTER_INTENTS];
    let mut out = vec![0f32; one.env.scenarios * MASTER_OBS + 1];
    let e = env.master_obs(&intents, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape, "{e}");

    // A scripted master that chooses a directive out of range: refused, naming it.
    let rule = |_: &[f32]| 48u8;
    let e = mappo::evaluate_master(
        &mut venv(),
        &mut mappo::CapFollower::default(),
        mappo::MasterPlay::Rule(&rule),
        3,
        1,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("directive 48"), "{e}");
    // A directive out of range: refused by the env's step, naming it.
    let s = market.data.n_symbols();
    let acts = vec![0u8; one.env.scenarios * s];
    let mut master = vec![0u8; one.env.scenarios];
    master[1] = 48;
    let e = env.step(&acts, &master).err().unwrap();
    assert!(e.to_string().contains("48"), "{e}");
}

/// The CLI: `train-master`, then `eval --master learned` and `--master fixed:<m>`, and the
/// bad `--master` values, exit 2 with the message.
#[test]
fn cli_train_master_and_eval_master() {
    let bin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_marl-trade"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let o = out.to_str().unwrap();
    let sets = [
        "--set",
        "master_ppo.iterations=2",
        "--set",
        "master_ppo.decisions=3",
        "--set",
        "master_ppo.decision_interval=3",
        "--set",
        "master_ppo.net.hidden1=16",
        "--set",
        "master_ppo.net.hidden2=8",
    ];
    let mut args = vec!["train-master", "--config", "configs/small.toml", "--out", o];
    args.extend(sets);
    let r = bin(&args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(stdout.contains("iter     2"), "{stdout}");
    for m in ["learned", "fixed:3"] {
        let r = bin(&["eval", "--checkpoint", o, "--master", m]);
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "{m}: {stdout}\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            stdout.contains(m) && stdout.contains("by hidden regime") && stdout.contains("crisis"),
            "{stdout}"
        );
    }
    for (m, says) in [
        ("fixed:48", "not in 0..48"),
        ("fixed:x", "not a directive index"),
    ] {
        let r = bin(&["eval", "--checkpoint", o, "--master", m]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// The master over a trained symbol policy (`train-master --symbols RUN`): the policy plays
/// greedily and gives its own intents; the run records it, resumes bit-identically with it, and
/// evaluates with it; a resume with other symbol agents is refused.
#[test]
fn master_over_a_trained_symbol_policy() {
    let cfg = config(32);
    let market = Market::load(&cfg.data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sym = dir.path().join("symbols");
    run::train(
        &cfg,
        &market,
        &run::TrainOptions {
            max_iterations: Some(1),
            ..run::TrainOptions::new(&sym)
        },
    )
    .unwrap();
    let mut three = cfg.clone();
    three.master_ppo.iterations = 3;
    let go = |out: &Path, resume: bool, max: Option<usize>| {
        run::train_master(
            &three,
            &market,
            &MasterTrainOptions {
                resume,
                max_iterations: max,
                save_every: 1,
                symbols: if resume { None } else { Some(sym.clone()) },
                ..MasterTrainOptions::new(out)
            },
        )
        .unwrap()
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ra = go(&a, false, None);
    go(&b, false, Some(1));
    go(&b, true, None);
    let recorded = std::fs::read_to_string(a.join(run::MASTER_SYMBOLS_FILE)).unwrap();
    assert!(recorded.contains("symbols"), "{recorded}");
    let (ca, cb) = (
        run::latest_master_checkpoint(&a).unwrap(),
        run::latest_master_checkpoint(&b).unwrap(),
    );
    assert_same_checkpoint_files(&ca, &cb);
    assert_eq!(
        read(a.join(run::MASTER_METRICS_JSONL)),
        read(b.join(run::MASTER_METRICS_JSONL))
    );
    // The symbol policy, not the cap follower, played: its training differs from the cap
    // follower's under the same configuration.
    let cap = dir.path().join("cap");
    let rc = run::train_master(&three, &market, &MasterTrainOptions::new(&cap)).unwrap();
    assert_ne!(ra.metrics, rc.metrics);
    let rep = evaluate_master_run(&MasterEvalOptions::new(&a, MasterChoice::Learned)).unwrap();
    assert!(rep.rows[0].1.bars > 0);
    // The symbol run itself holds no master: `learned` is refused naming the file, `fixed:<m>`
    // evaluates its symbol policy under directive m.
    assert!(!marl_trade::eval::has_master(&sym) && marl_trade::eval::has_master(&a));
    let e = marl_trade::eval::evaluate_checkpoint(&EvalOptions {
        master: Some(MasterChoice::Learned),
        ..EvalOptions::new(&sym)
    })
    .unwrap_err();
    assert!(e.to_string().contains("master/latest"), "{e}");
    let fixed = marl_trade::eval::evaluate_checkpoint(&EvalOptions {
        master: Some(MasterChoice::Fixed(0)),
        ..EvalOptions::new(&sym)
    })
    .unwrap();
    assert!(fixed.policy.metrics.total_return.is_finite());
    // A resume that names other symbol agents is refused.
    let sym2 = dir.path().join("symbols2");
    run::train(
        &cfg,
        &market,
        &run::TrainOptions {
            max_iterations: Some(1),
            ..run::TrainOptions::new(&sym2)
        },
    )
    .unwrap();
    let e = run::train_master(
        &three,
        &market,
        &MasterTrainOptions {
            resume: true,
            symbols: Some(sym2),
            ..MasterTrainOptions::new(&a)
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");
    // A directory that is no symbol checkpoint is refused when the master starts.
    let e = run::train_master(
        &three,
        &market,
        &MasterTrainOptions {
            symbols: Some(cap.clone()),
            ..MasterTrainOptions::new(dir.path().join("c"))
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
}

/// The master checkpoints `a` and `b` hold the same model, optimizer and env state, byte for byte.
fn assert_same_checkpoint_files(a: &std::path::Path, b: &std::path::Path) {
    for f in [
        MASTER_MODEL_FILE,
        MASTER_OPTIMIZER_FILE,
        mappo::MASTER_ENV_FILE,
    ] {
        assert!(
            read(a.join(f)) == read(b.join(f)),
            "{f} differs after resume"
        );
    }
}
