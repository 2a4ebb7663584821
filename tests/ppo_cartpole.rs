//! PPO on CartPole-v1: the trainer must solve the classic control task before it is pointed at the
//! market, resume bit-identically from a checkpoint, and reject a checkpoint of the wrong shape.
//!
//! The short run is sized for CI (debug build, 2 cores). The full CleanRL-defaults run is ignored by
//! default: `cargo test --release --test ppo_cartpole -- --ignored --nocapture`.

use std::path::Path;

use candle_core::Device;
use candle_nn::VarMap;
use marl_trade::agents::{MlpActorCritic, MlpConfig};
use marl_trade::error::ShapeMismatch;
use marl_trade::train::cartpole::CartPoleVec;
use marl_trade::train::checkpoint::read_policy_config;
use marl_trade::train::{Metrics, MetricsWriter, Ppo, PpoConfig, TrainEnv};

type Trainer = Ppo<CartPoleVec, MlpActorCritic>;

/// CleanRL's `num_envs` for CartPole (the environment's size, not a PPO hyperparameter here).
const NUM_ENVS: usize = 4;

fn trainer(cfg: &PpoConfig, mlp: &MlpConfig) -> Trainer {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let policy = MlpActorCritic::build(4, 2, mlp, &vm, cfg.seed, &dev).unwrap();
    let env = CartPoleVec::new(NUM_ENVS, &dev);
    Ppo::new(
        cfg.clone(),
        env,
        policy,
        vm,
        serde_json::to_value(mlp).unwrap(),
    )
    .unwrap()
}

fn resume(dir: &Path) -> marl_trade::Result<Trainer> {
    let dev = Device::Cpu;
    let mlp: MlpConfig = read_policy_config(dir)?;
    let st = marl_trade::train::checkpoint::read_state(dir)?;
    let vm = VarMap::new();
    // The seed does not matter: every parameter is overwritten from the checkpoint.
    let policy = MlpActorCritic::build(4, 2, &mlp, &vm, 12345, &dev)?;
    Ppo::resume(dir, CartPoleVec::new(st.num_envs, &dev), policy, vm)
}

/// Mean return of the episodes that ended in the last `k` iterations.
fn recent_return(ms: &[Metrics], k: usize) -> f64 {
    let tail = &ms[ms.len().saturating_sub(k)..];
    let (sum, n) = tail.iter().fold((0.0, 0usize), |(s, n), m| {
        (
            s + m.episode_return_mean.unwrap_or(0.0) * m.episodes as f64,
            n + m.episodes,
        )
    });
    sum / n.max(1) as f64
}

fn params(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    marl_trade::agents::init::named_vars(t.varmap())
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

/// CI-sized run: 4 envs x 128 steps, 40 iterations (~20k steps), a larger learning rate.
/// A random policy averages ~22; this must average >= 100 over the last episodes.
#[test]
fn short_run_beats_random_policy() {
    let cfg = PpoConfig {
        total_timesteps: 40 * 512,
        learning_rate: 2.5e-3,
        seed: 1,
        ..PpoConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("metrics.jsonl");
    let mut log = MetricsWriter::create(&log_path).unwrap();
    let mut t = trainer(&cfg, &MlpConfig::default());
    let start = std::time::Instant::now();
    let ms = t.train(usize::MAX, Some(&mut log), false).unwrap();
    let ret = recent_return(&ms, 5);
    eprintln!(
        "short run: {} iterations, {} steps, mean return of the last 5 iterations {ret:.1}, {:.1}s",
        ms.len(),
        t.global_step(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(ms.len(), cfg.num_iterations(NUM_ENVS));
    assert!(ret >= 100.0, "mean return {ret:.1} < 100");
    // The log has one parseable line per iteration, with every metric by name.
    let logged = marl_trade::train::metrics::read_metrics(&log_path).unwrap();
    assert_eq!(logged.len(), ms.len());
    for (a, b) in logged.iter().zip(&ms) {
        assert_eq!(
            (a.iteration, a.global_step, a.episodes),
            (b.iteration, b.global_step, b.episodes)
        );
        assert!((a.policy_loss - b.policy_loss).abs() <= 1e-12 * (1.0 + b.policy_loss.abs()));
    }
    let line = std::fs::read_to_string(&log_path).unwrap();
    for key in [
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clipfrac",
        "explained_variance",
        "sps",
    ] {
        assert!(
            line.lines().next().unwrap().contains(&format!("\"{key}\"")),
            "{key} missing"
        );
    }
}

/// 2k iterations straight == k iterations, checkpoint, resume in a fresh trainer, k iterations:
/// final parameters are bit-identical (requires the AdamW moments, the RNG positions and the
/// environment state to be restored exactly).
#[test]
fn resume_is_bit_identical() {
    let k = 3;
    let cfg = PpoConfig {
        total_timesteps: 10 * 512,
        target_kl: Some(1.0),
        ..PpoConfig::default()
    };
    let mlp = MlpConfig {
        hidden: vec![16, 16],
    };

    let mut straight = trainer(&cfg, &mlp);
    let ms_straight = straight.train(2 * k, None, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(&cfg, &mlp);
    let ms_first = first.train(k, None, false).unwrap();
    first.save_checkpoint(dir.path()).unwrap();
    drop(first);
    let mut resumed = resume(dir.path()).unwrap();
    assert_eq!(resumed.iteration(), k);
    let ms_second = resumed.train(k, None, false).unwrap();

    assert_eq!(params(&straight), params(&resumed));
    assert_eq!(straight.global_step(), resumed.global_step());
    // The logged losses agree as well (SPS aside).
    let strip = |m: &Metrics| Metrics {
        sps: 0.0,
        agent_sps: 0.0,
        timing: Default::default(),
        ..m.clone()
    };
    let split: Vec<Metrics> = ms_first.iter().chain(&ms_second).map(strip).collect();
    let whole: Vec<Metrics> = ms_straight.iter().map(strip).collect();
    assert_eq!(split, whole);
    // A different run (another seed) does diverge, so the comparison is meaningful.
    let mut other = trainer(&PpoConfig { seed: 2, ..cfg }, &mlp);
    other.train(2 * k, None, false).unwrap();
    assert_ne!(params(&other), params(&straight));
}

/// A checkpoint loaded into a model of another shape is a typed error naming the tensor.
#[test]
fn resume_with_wrong_shapes_is_a_shape_error() {
    let cfg = PpoConfig {
        total_timesteps: 4 * 512,
        ..PpoConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(
        &cfg,
        &MlpConfig {
            hidden: vec![16, 16],
        },
    );
    t.train(1, None, false).unwrap();
    t.save_checkpoint(dir.path()).unwrap();

    let dev = Device::Cpu;
    let vm = VarMap::new();
    let policy = MlpActorCritic::build(
        4,
        2,
        &MlpConfig {
            hidden: vec![8, 16],
        },
        &vm,
        0,
        &dev,
    )
    .unwrap();
    match Ppo::resume(dir.path(), CartPoleVec::new(4, &dev), policy, vm) {
        Err(e) if e.shape_mismatch().is_some() => {
            let ShapeMismatch {
                name,
                expected,
                got,
            } = e.shape_mismatch().cloned().unwrap();
            assert_eq!(name, "actor.l0.bias");
            assert_eq!((expected, got), (vec![8], vec![16]));
        }
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(_) => panic!("expected a shape error, got a trainer"),
    }
    // Fewer environments than the checkpoint: a config error, not a panic.
    let vm = VarMap::new();
    let policy = MlpActorCritic::build(
        4,
        2,
        &MlpConfig {
            hidden: vec![16, 16],
        },
        &vm,
        0,
        &dev,
    )
    .unwrap();
    let err = Ppo::resume(dir.path(), CartPoleVec::new(2, &dev), policy, vm)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("num_envs"), "{err}");
}

/// CleanRL's defaults (500k steps, 4 envs x 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4
/// annealed) must solve CartPole-v1: mean return >= 475 over the last 10 iterations' episodes.
#[test]
#[ignore = "full run: cargo test --release --test ppo_cartpole -- --ignored --nocapture"]
fn full_cleanrl_run_solves_cartpole() {
    let cfg = PpoConfig::default();
    let mut t = trainer(&cfg, &MlpConfig::default());
    assert_eq!(t.env().num_envs(), 4);
    let log_path = std::env::temp_dir().join("marl_trade_ppo_cartpole_full.jsonl");
    let mut log = MetricsWriter::create(&log_path).unwrap();
    let start = std::time::Instant::now();
    let ms = t.train(usize::MAX, Some(&mut log), false).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let ret = recent_return(&ms, 10);
    for m in ms.iter().step_by(100).chain(ms.last()) {
        eprintln!(
            "iter {:4} step {:6} return {:6.1} pg {:+.4} v {:.3} ent {:.3} kl {:.5} clip {:.3} ev {:.3} sps {:.0}",
            m.iteration,
            m.global_step,
            m.episode_return_mean.unwrap_or(f64::NAN),
            m.policy_loss,
            m.value_loss,
            m.entropy,
            m.approx_kl,
            m.clipfrac,
            m.explained_variance.unwrap_or(f64::NAN),
            m.sps
        );
    }
    eprintln!(
        "full run: {} steps in {secs:.1}s, mean return of the last 10 iterations {ret:.1}",
        t.global_step()
    );
    assert!(ret >= 475.0, "mean return {ret:.1} < 475");
}
