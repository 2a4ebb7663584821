//! The symbol policy's embedding cache and the bar-grouped update (issue #9):
//!
//! - the cached forward (what a rollout calls) returns bit for bit what the uncached one returns,
//!   over a sequence of steps whose scenarios revisit bars, and with a memory bound small enough to
//!   force evictions;
//! - two whole training runs on `configs/small.toml` (every encoder branch on, the graph included),
//!   one with the cache and one without (`agent.embed_cache_mb = 0`), end with bit-identical
//!   parameters and metrics (so the rollouts' actions, log-probs and values were identical), and
//!   the cached run did hit the cache;
//! - a minibatch's loss and gradient with the encoder run once per distinct bar equal those with
//!   the encoder run separately for every sample;
//! - an update cut into chunks (`ppo.update_chunk_windows`, `update_chunk_rows`) logs the same losses and gradient norm
//!   as one pass per minibatch and takes the same step, with the encoder still run once per
//!   distinct bar of a minibatch; a bound the minibatch fits in changes nothing, bit for bit;
//! - the rollout's passes record no autograd graph (the untracked twin of the agent);
//! - a frozen encoder is never updated and the update reads the rollout's embeddings;
//! - windows gathered on the device from the uploaded feature array (`set_device_windows`, the
//!   default off the CPU) equal the host-gathered ones bit for bit, and so do the forward passes;
//!   a key outside the feature array is a clear error.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use marl_trade::agents::{ActorCritic, ObsBatch, SymbolObs, SymbolPolicy};
use marl_trade::market::Market;
use marl_trade::run::agent_dims;
use marl_trade::train::setup::{build_env, build_policy};
use marl_trade::train::{Metrics, MinibatchMode, Ppo};
use marl_trade::{Config, env::BackendKind};

fn small(overrides: &[&str]) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/small.toml");
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_file_with_overrides(path, &o).unwrap()
}

fn policy(cfg: &Config, market: &Market) -> (SymbolPolicy, candle_nn::VarMap) {
    build_policy(
        &cfg.agent,
        agent_dims(market),
        market,
        cfg.ppo.seed,
        &Device::Cpu,
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Observations of `steps` steps of 6 scenarios whose keys overlap within and across steps.
fn steps(market: &Market, steps: usize) -> Vec<SymbolObs> {
    let s = market.data.n_symbols();
    let dyn_obs = agent_dims(market).dyn_obs;
    let mut rng = marl_trade::rng::SplitMix64::new(7);
    (0..steps)
        .map(|k| {
            let keys = (0..6u32)
                .map(|n| (0, 100 + (k as u32) + 2 * (n % 3)))
                .collect::<Vec<_>>();
            let d: Vec<f32> = (0..6 * s * dyn_obs).map(|_| rng.normal() as f32).collect();
            SymbolObs {
                keys,
                dyn_obs: Tensor::from_vec(d, (6, s, dyn_obs), &Device::Cpu).unwrap(),
            }
        })
        .collect()
}

#[test]
fn cached_forward_is_bit_identical_to_uncached() {
    // 4 GiB holds everything; 1 MiB with 4096-d embeddings (8 x 4096 x 4 bytes = 128 KiB a bar)
    // holds 7 bars, fewer than the 16 visited: the cache is emptied and refilled on the way.
    for (cap_mb, dim) in [("4096", "16"), ("1", "4096")] {
        let cfg = small(&[
            &format!("agent.embed_cache_mb={cap_mb}"),
            &format!("agent.encoder.embed_dim={dim}"),
        ]);
        let market = Market::load(&cfg.data).unwrap();
        let (p, _vm) = policy(&cfg, &market);
        let obs = steps(&market, 12);
        // The reference: the same policy without a cache.
        let cfg0 = small(&[
            "agent.embed_cache_mb=0",
            &format!("agent.encoder.embed_dim={dim}"),
        ]);
        let (p0, _vm0) = policy(&cfg0, &market);
        for o in &obs {
            let (l1, v1) = p.forward_inference(o).unwrap();
            let (l0, v0) = p0.forward_inference(o).unwrap();
            assert_eq!(bits(&l1), bits(&l0));
            assert_eq!(bits(&v1), bits(&v0));
            // The gradient path (one batched encoder pass) agrees to float tolerance.
            let (lg, _) = p.forward(o).unwrap();
            let d = (lg - &l1).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
        let stats: std::collections::BTreeMap<String, f64> = p.drain_stats().into_iter().collect();
        // 12 steps x 3 distinct bars each, 16 distinct bars overall.
        assert_eq!(stats["cache.hits"] + stats["cache.misses"], 36.0);
        if cap_mb == "4096" {
            assert_eq!(stats["cache.misses"], 16.0, "{stats:?}");
            assert_eq!(stats["cache.evictions"], 0.0);
        } else {
            assert!(stats["cache.evictions"] > 0.0, "{stats:?}");
            assert!(stats["cache.misses"] > 16.0, "{stats:?}");
            assert!(stats["cache.bytes"] <= (1 << 20) as f64, "{stats:?}");
        }
        // After a parameter change the next forward encodes again.
        p.parameters_changed(false);
        p.forward_inference(&obs[0]).unwrap();
        let stats: std::collections::BTreeMap<String, f64> = p.drain_stats().into_iter().collect();
        assert_eq!(stats["cache.misses"], 3.0);
    }
}

fn run(cfg: &Config, iterations: usize) -> (Vec<Metrics>, Vec<Vec<u32>>) {
    let market = Market::load(&cfg.data).unwrap();
    let env = build_env(&cfg.env_setup(), &market, BackendKind::Cpu, &Device::Cpu).unwrap();
    let (p, vm) = policy(cfg, &market);
    let spec = serde_json::to_value(p.agent().spec()).unwrap();
    let mut ppo = Ppo::new(cfg.ppo.clone(), env, p, vm.clone(), spec).unwrap();
    let ms = ppo.train(iterations, None, false).unwrap();
    let params = marl_trade::agents::init::named_vars(&vm)
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect();
    (ms, params)
}

fn strip(ms: &[Metrics]) -> Vec<Metrics> {
    ms.iter()
        .map(|m| Metrics {
            sps: 0.0,
            agent_sps: 0.0,
            timing: Default::default(),
            policy: Default::default(),
            ..m.clone()
        })
        .collect()
}

#[test]
fn cached_training_equals_uncached_training() {
    // 8 scenarios x 48 steps over ~250 training bars: scenarios revisit each other's bars.
    let base = [
        "data.synthetic.bars=400",
        "env.scenarios=8",
        "ppo.num_steps=48",
        "ppo.total_timesteps=768",
    ];
    let with = |extra: &str| {
        let mut o = base.to_vec();
        o.push(extra);
        small(&o)
    };
    let (m_off, p_off) = run(&with("agent.embed_cache_mb=0"), 2);
    let (m_on, p_on) = run(&with("agent.embed_cache_mb=4096"), 2);
    assert_eq!(strip(&m_on), strip(&m_off));
    assert_eq!(p_on, p_off, "parameters after 2 iterations differ");
    for m in &m_on {
        let hits = m.policy["cache.hits"];
        let misses = m.policy["cache.misses"];
        assert!(
            hits > 0.0,
            "the rollout never reused an embedding: {:?}",
            m.policy
        );
        assert!(misses > 0.0);
    }
    // The uncached run looked nothing up.
    assert!(m_off.iter().all(|m| m.policy["cache.hits"] == 0.0));
    // The comparison can fail: shuffled minibatches (another partition) end elsewhere.
    let (_, p_shuffled) = run(&with("ppo.minibatches=\"shuffled\""), 2);
    assert_ne!(p_shuffled, p_on);
}

/// One minibatch's PPO-style loss (logits and values into one scalar) and its gradients.
fn loss_and_grads(
    p: &SymbolPolicy,
    vm: &candle_nn::VarMap,
    obs: &SymbolObs,
    per_sample: bool,
) -> (f32, Vec<Vec<f32>>) {
    let (logits, values) = if per_sample {
        let parts: Vec<(Tensor, Tensor)> = (0..obs.units())
            .map(|u| p.forward(&obs.select_units(&[u as u32]).unwrap()).unwrap())
            .collect();
        let l: Vec<&Tensor> = parts.iter().map(|x| &x.0).collect();
        let v: Vec<&Tensor> = parts.iter().map(|x| &x.1).collect();
        (Tensor::cat(&l, 0).unwrap(), Tensor::cat(&v, 0).unwrap())
    } else {
        p.forward(obs).unwrap()
    };
    let lsm = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    let rows = lsm.dims()[0];
    let w = Tensor::arange(0f32, (rows * 7) as f32, &Device::Cpu)
        .unwrap()
        .reshape((rows, 7))
        .unwrap()
        .affine(0.01, -1.0)
        .unwrap()
        .sin()
        .unwrap();
    let loss = ((lsm * w).unwrap().mean_all().unwrap() + values.sqr().unwrap().mean_all().unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let g = marl_trade::agents::init::named_vars(vm)
        .iter()
        .map(|(_, v)| {
            grads
                .get(v.as_tensor())
                .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .unwrap_or_default()
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), g)
}

#[test]
fn grouped_minibatch_gradient_equals_per_sample_gradient() {
    let cfg = small(&[]);
    let market = Market::load(&cfg.data).unwrap();
    let (p, vm) = policy(&cfg, &market);
    let obs = <SymbolObs as ObsBatch>::concat(&steps(&market, 3)).unwrap();
    // 18 units over 7 distinct bars.
    assert_eq!(SymbolPolicy::group_keys(&obs.keys).0.len(), 7);
    let (l_g, g_g) = loss_and_grads(&p, &vm, &obs, false);
    let (l_s, g_s) = loss_and_grads(&p, &vm, &obs, true);
    assert!(
        (l_g - l_s).abs() <= 1e-6 * l_s.abs().max(1.0),
        "{l_g} vs {l_s}"
    );
    let mut checked = 0;
    for (a, b) in g_g.iter().zip(&g_s) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            checked += 1;
        }
    }
    assert!(
        checked > 1000,
        "gradients of the encoder and heads compared: {checked}"
    );
    // The encoder got a gradient at all (else the comparison would be vacuous for it).
    let names = marl_trade::agents::init::named_vars(&vm);
    let enc_norm: f32 = names
        .iter()
        .zip(&g_g)
        .filter(|((n, _), _)| n.starts_with("encoder."))
        .flat_map(|(_, g)| g.iter().map(|x| x * x))
        .sum();
    assert!(enc_norm > 0.0);
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-3)
}

#[test]
fn chunked_update_equals_one_pass_per_minibatch() {
    // One iteration, one epoch, one minibatch of 128 units x 8 symbols = 1024 rows: one AdamW step
    // from the same parameters with the gradient of one pass or of the chunks summed.
    let one_step = |extra: &str| {
        small(&[
            "ppo.update_epochs=1",
            "ppo.num_minibatches=1",
            "ppo.total_timesteps=128",
            extra,
        ])
    };
    let (m_one, p_one) = run(&one_step("ppo.update_chunk_windows=0"), 1);
    let (_, p0) = run(&one_step("ppo.learning_rate=1e-30"), 1);
    let a = &m_one[0];
    assert_eq!(a.policy["update.backward_passes"], 1.0);
    // 40 rows = 5 units per chunk; 24 windows = 3 bars per chunk.
    for bound in ["ppo.update_chunk_rows=40", "ppo.update_chunk_windows=24"] {
        let (m_chunk, p_chunk) = run(&one_step(bound), 1);
        let b = &m_chunk[0];
        let passes = b.policy["update.backward_passes"];
        assert!(passes >= 26.0, "{bound}: 128 units in {passes} passes");
        // The encoder still ran once per distinct bar (no bar holds more than 4 units here).
        assert_eq!(
            a.policy["encoder.keys"], b.policy["encoder.keys"],
            "{bound}"
        );
        for (name, x, y) in [
            ("policy_loss", a.policy_loss, b.policy_loss),
            ("value_loss", a.value_loss, b.value_loss),
            ("entropy", a.entropy, b.entropy),
            ("approx_kl", a.approx_kl, b.approx_kl),
            ("clipfrac", a.clipfrac, b.clipfrac),
            ("grad_norm", a.grad_norm, b.grad_norm),
        ] {
            assert!(
                close(x, y, 1e-5),
                "{bound}: {name} {x} one pass, {y} chunked"
            );
        }
        // The step moved the parameters, and moved them alike.
        let mut moved = 0;
        for ((x, y), z) in p_one.iter().zip(&p_chunk).zip(&p0) {
            for ((&x, &y), &z) in x.iter().zip(y).zip(z) {
                let (x, y, z) = (f32::from_bits(x), f32::from_bits(y), f32::from_bits(z));
                assert!((x - y).abs() <= 1e-6, "{bound}: {x} one pass, {y} chunked");
                moved += usize::from((x - z).abs() > 1e-4);
            }
        }
        assert!(moved > 100, "only {moved} parameters moved");
    }

    // Two whole iterations (4 epochs x 4 minibatches of 256 rows): a bound of exactly the
    // minibatch is one pass, bit-identical to no bound.
    let two = |extra: &str| small(&["ppo.total_timesteps=256", extra]);
    let (m0, q0) = run(&two("ppo.update_chunk_windows=0"), 2);
    let (m1, q1) = run(&two("ppo.update_chunk_rows=256"), 2);
    assert_eq!(strip(&m0), strip(&m1));
    assert_eq!(q0, q1);
    assert_eq!(m1[0].policy["update.backward_passes"], 16.0);
    // ... and a smaller one ends close to it after 32 optimizer steps.
    let (m2, q2) = run(&two("ppo.update_chunk_rows=64"), 2);
    assert!(m2[1].policy["update.backward_passes"] >= 64.0);
    assert!(close(m0[1].value_loss, m2[1].value_loss, 1e-3));
    for (x, y) in q0.iter().flatten().zip(q2.iter().flatten()) {
        let (x, y) = (f32::from_bits(*x), f32::from_bits(*y));
        assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
    }
}

#[test]
fn inference_records_no_autograd_graph() {
    // The rollout's passes run on the untracked twin (`with_untracked_inference`, what
    // `build_policy` gives): no graph, no saved activations; the training pass records one; both
    // give the same numbers.
    let cfg = small(&["agent.embed_cache_mb=0"]);
    let market = Market::load(&cfg.data).unwrap();
    let (p, _vm) = policy(&cfg, &market);
    let obs = steps(&market, 1).remove(0);
    let (li, vi) = p.forward_inference(&obs).unwrap();
    let (lt, vt) = p.forward(&obs).unwrap();
    assert!(
        !li.track_op() && !vi.track_op(),
        "inference recorded a graph"
    );
    assert!(lt.track_op() && vt.track_op());
    // One pass per key in inference, one batched pass in training: equal to float rounding.
    let (a, b) = (
        li.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        lt.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn frozen_encoder_is_not_updated_and_the_update_reuses_the_rollout() {
    let cfg = small(&[
        "ppo.num_steps=32",
        "ppo.total_timesteps=256",
        "agent.freeze_encoder=true",
    ]);
    let market = Market::load(&cfg.data).unwrap();
    let env = build_env(&cfg.env_setup(), &market, BackendKind::Cpu, &Device::Cpu).unwrap();
    let (p, vm) = policy(&cfg, &market);
    let before: Vec<(String, Vec<u32>)> = marl_trade::agents::init::named_vars(&vm)
        .iter()
        .map(|(n, v)| (n.clone(), bits(v.as_tensor())))
        .collect();
    let spec = serde_json::to_value(p.agent().spec()).unwrap();
    let mut ppo = Ppo::new(cfg.ppo.clone(), env, p, vm.clone(), spec).unwrap();
    assert_eq!(cfg.ppo.minibatches, MinibatchMode::Grouped);
    let ms = ppo.train(2, None, false).unwrap();
    let after = marl_trade::agents::init::named_vars(&vm);
    let mut heads_moved = false;
    for ((n, b), (_, v)) in before.iter().zip(&after) {
        if n.starts_with("encoder.") {
            assert_eq!(b, &bits(v.as_tensor()), "{n} changed");
        } else {
            heads_moved |= *b != bits(v.as_tensor());
        }
    }
    assert!(heads_moved, "the heads were not trained");
    // Every bar encoded was a rollout miss: the update ran no encoder pass; the second iteration
    // reused the first one's embeddings.
    for m in &ms {
        assert_eq!(
            m.policy["encoder.keys"], m.policy["cache.misses"],
            "{:?}",
            m.policy
        );
    }
    assert!(ms[1].policy["cache.misses"] < ms[0].policy["cache.misses"]);
}

#[test]
fn device_window_gather_equals_host_gather() {
    let cfg = small(&[]);
    let market = Market::load(&cfg.data).unwrap();
    let (host, _vm0) = policy(&cfg, &market);
    let (mut dev, _vm1) = policy(&cfg, &market);
    dev.set_device_windows(true);
    let (p_n, t_n) = (market.data.paths as u32, market.data.bars as u32);
    let w = agent_dims(&market).window.window as u32;
    let mut r = marl_trade::rng::SplitMix64::new(3);
    // Repeated keys, the first and the last valid bar of every path.
    let mut keys: Vec<(u32, u32)> = (0..40)
        .map(|_| {
            (
                r.below(p_n as u64) as u32,
                w - 1 + r.below((t_n - w + 1) as u64) as u32,
            )
        })
        .collect();
    keys.extend((0..p_n).flat_map(|p| [(p, w - 1), (p, t_n - 1)]));
    keys.push(keys[0]);
    let (wh, ah) = host.gather(&keys).unwrap();
    let (wd, ad) = dev.gather(&keys).unwrap();
    assert_eq!(wh.dims(), wd.dims());
    assert_eq!(bits(&wh), bits(&wd));
    assert_eq!(ah.map(|a| bits(&a)), ad.map(|a| bits(&a)));
    for o in &steps(&market, 4) {
        let (lh, vh) = host.forward_inference(o).unwrap();
        let (ld, vd) = dev.forward_inference(o).unwrap();
        assert_eq!((bits(&lh), bits(&vh)), (bits(&ld), bits(&vd)));
    }
    for bad in [(0, w - 2), (0, t_n), (p_n, w)] {
        let e = dev.gather(&[bad]).unwrap_err().to_string();
        assert!(e.contains("outside"), "{bad:?}: {e}");
    }
}
