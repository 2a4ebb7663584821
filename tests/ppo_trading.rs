//! Plumbing test of PPO over the real trading environment through `train::TradingEnv`: synthetic
//! data (4 symbols, 600 bars, 2 scenarios of 32 steps), a tiny encoder without the graph branch
//! (`Features` has no returns), three iterations. Checks that every metric is finite, that no masked
//! action reached the environment, that a run is deterministic, and that a checkpoint taken after
//! one iteration resumes to the same metrics. It does not test learning.

use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use marl_trade::agents::init::seeded_var_builder;
use marl_trade::agents::{AgentConfig, AgentDims, EncoderConfig, SymbolAgent, SymbolPolicy};
use marl_trade::env::{BackendKind, Period, VecEnv as MarketEnv};
use marl_trade::features::Features;
use marl_trade::train::{Metrics, Ppo, PpoConfig, TradingEnv, TrainEnv};
use marl_trade::{Config, data};

struct Run {
    metrics: Vec<Metrics>,
    masked: u64,
    invalid: u64,
    episodes: u64,
}

type Trainer = Ppo<TradingEnv, SymbolPolicy>;

/// Environment, policy and parameters, built from scratch (as a resume does).
fn parts(seed: u64) -> (TradingEnv, SymbolPolicy, VarMap, AgentConfig) {
    let mut cfg = Config::default();
    cfg.data.synthetic.symbols = 4;
    cfg.data.synthetic.bars = 600;
    cfg.data.synthetic.seed = 11;
    cfg.env.scenarios = 2;
    cfg.env.episode_len = 32;
    let md = Arc::new(data::generate(&cfg.data.synthetic, "SPY"));
    let feats = Arc::new(Features::compute(&md));
    let dev = Device::Cpu;
    let market = MarketEnv::new(
        &cfg.env_setup(),
        md,
        feats.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .unwrap();
    let env = TradingEnv::new(market, cfg.master.default_action, &dev).unwrap();

    let mut encoder = EncoderConfig::tiny();
    encoder.graph.enabled = false;
    let acfg = AgentConfig {
        encoder,
        head_hidden: 16,
        ..AgentConfig::default()
    };
    let dims = AgentDims::trading(4);
    assert_eq!(dims.dyn_obs, env.obs_dim());
    let vm = VarMap::new();
    let agent =
        SymbolAgent::new(&acfg, dims, seeded_var_builder(&vm, seed, DType::F32, &dev)).unwrap();
    let policy = SymbolPolicy::new(agent, feats, &dev).unwrap();
    (env, policy, vm, acfg)
}

fn trainer(seed: u64) -> Trainer {
    let (env, policy, vm, acfg) = parts(seed);
    let ppo_cfg = PpoConfig {
        seed,
        num_steps: 32,
        total_timesteps: 3 * 2 * 32,
        learning_rate: 1e-3,
        ..PpoConfig::default()
    };
    Ppo::new(
        ppo_cfg,
        env,
        policy,
        vm,
        serde_json::to_value(&acfg).unwrap(),
    )
    .unwrap()
}

fn finish(ppo: &mut Trainer, mut metrics: Vec<Metrics>) -> Run {
    metrics.extend(ppo.train(usize::MAX, None, false).unwrap());
    let env = ppo.env();
    Run {
        metrics,
        masked: env.masked_actions(),
        invalid: env.invalid_actions(),
        episodes: env.episodes(),
    }
}

/// Metrics without the wall-clock `sps` and the env's reward-term telemetry (which a resume does not
/// restore for the episodes in flight; see `train::trading`).
fn strip(ms: &[Metrics]) -> Vec<Metrics> {
    ms.iter()
        .map(|m| Metrics {
            sps: 0.0,
            agent_sps: 0.0,
            env: Default::default(),
            timing: Default::default(),
            ..m.clone()
        })
        .collect()
}

fn finite(m: &Metrics) -> bool {
    [
        m.learning_rate,
        m.ent_coef,
        m.policy_loss,
        m.value_loss,
        m.entropy,
        m.old_approx_kl,
        m.approx_kl,
        m.clipfrac,
        m.grad_norm,
    ]
    .iter()
    .chain(m.explained_variance.iter())
    .chain(m.episode_return_mean.iter())
    .chain(m.episode_length_mean.iter())
    .all(|v| v.is_finite())
}

#[test]
fn ppo_trains_symbol_agent_on_trading_env() {
    let t = std::time::Instant::now();
    let a = finish(&mut trainer(7), Vec::new());
    eprintln!(
        "trading PPO: {} iterations, {} episodes, {:.1}s",
        a.metrics.len(),
        a.episodes,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(a.metrics.len(), 3);
    for m in &a.metrics {
        assert!(finite(m), "non-finite metric: {m:?}");
    }
    // 96 steps per scenario, episodes of 32 steps: both scenarios finish episodes.
    assert!(a.episodes >= 2, "only {} episodes finished", a.episodes);
    assert!(a.metrics.iter().any(|m| m.episodes > 0));
    assert_eq!(a.masked, 0, "PPO sampled masked actions");
    assert_eq!(a.invalid, 0, "the env executed masked actions as HOLD");

    // Determinism: same seed, same metrics (the wall-clock `sps` aside).
    let b = finish(&mut trainer(7), Vec::new());
    assert_eq!(strip(&a.metrics), strip(&b.metrics));
    assert_eq!(
        (a.masked, a.invalid, a.episodes),
        (b.masked, b.invalid, b.episodes)
    );

    // Checkpoint after one iteration, resume into freshly built parts: same metrics as the
    // uninterrupted run (the env's state goes through `TradingEnv::save_state`).
    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(7);
    let m1 = first.train(1, None, false).unwrap();
    first.save_checkpoint(dir.path()).unwrap();
    drop(first);
    let (env, policy, vm, _) = parts(99); // other init: every parameter comes from the checkpoint
    let mut resumed = Ppo::resume(dir.path(), env, policy, vm).unwrap();
    let c = finish(&mut resumed, m1);
    assert_eq!(strip(&c.metrics), strip(&a.metrics));
    assert_eq!(
        (c.masked, c.invalid, c.episodes),
        (a.masked, a.invalid, a.episodes)
    );
    eprintln!("total {:.1}s", t.elapsed().as_secs_f64());
}
