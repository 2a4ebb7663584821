//! Criterion benchmarks of one policy forward pass (default-size encoder + symbol heads, CPU):
//!
//! - `1x143`: one scenario, 143 symbols (one encoder pass);
//! - `128x143_same_bar`: 128 scenarios at the same bar: the encoder runs once per (symbol, bar),
//!   the heads on all 128 x 143 rows;
//! - `128x143_distinct_bars`: 128 scenarios at 128 different bars (128 encoder passes), the worst case;
//! - `heads_128x143`: the heads alone on precomputed embeddings;
//! - `128x143_same_bar_relu_heads`: `128x143_same_bar` with `head_activation = "relu"`.
//!
//! Window gathering and the correlation graph (host side) are included, as in training.
//! `cargo bench --bench policy`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use marl_trade::agents::Policy;
use marl_trade::agents::heads::HeadActivation;
use marl_trade::agents::init::seeded_var_builder;
use marl_trade::agents::symbol::{
    AgentConfig, DenseWindows, SymbolAgent, SymbolObs, SymbolPolicy, zero_dyn_obs,
};

const S: usize = 143;

fn setup(head_activation: HeadActivation) -> (SymbolPolicy, AgentConfig) {
    let cfg = AgentConfig {
        symbols: S,
        head_activation,
        ..AgentConfig::default()
    };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let agent =
        SymbolAgent::new(&cfg, seeded_var_builder(&vm, 0, DType::F32, &dev)).expect("agent builds");
    let src = Arc::new(DenseWindows::random(
        1,
        400,
        S,
        cfg.encoder.window,
        cfg.encoder.features,
        1,
    ));
    (
        SymbolPolicy::new(agent, src, &dev).expect("policy builds"),
        cfg,
    )
}

fn bench_policy(c: &mut Criterion) {
    let (policy, cfg) = setup(HeadActivation::Tanh);
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("policy_forward");
    g.sample_size(10).measurement_time(Duration::from_secs(10));

    let one = SymbolObs {
        keys: vec![(0, 200)],
        dyn_obs: zero_dyn_obs(1, &cfg, &dev).unwrap(),
    };
    g.throughput(Throughput::Elements(S as u64));
    g.bench_function("1x143", |b| {
        b.iter(|| black_box(policy.forward(&one).unwrap()))
    });

    let same = SymbolObs {
        keys: vec![(0, 200); 128],
        dyn_obs: zero_dyn_obs(128, &cfg, &dev).unwrap(),
    };
    g.throughput(Throughput::Elements((128 * S) as u64));
    g.bench_function("128x143_same_bar", |b| {
        b.iter(|| black_box(policy.forward(&same).unwrap()))
    });

    let keys: Vec<(u32, u32)> = (0..128).map(|i| (0, 100 + 2 * i)).collect();
    let distinct = SymbolObs {
        keys,
        dyn_obs: zero_dyn_obs(128, &cfg, &dev).unwrap(),
    };
    g.bench_function("128x143_distinct_bars", |b| {
        b.iter(|| black_box(policy.forward(&distinct).unwrap()))
    });

    let emb = Tensor::zeros((1, S, cfg.encoder.embed_dim), DType::F32, &dev).unwrap();
    let group = Tensor::zeros(128, DType::U32, &dev).unwrap();
    let dyn_obs = zero_dyn_obs(128, &cfg, &dev).unwrap();
    g.bench_function("heads_128x143", |b| {
        b.iter(|| black_box(policy.agent().heads(&emb, &group, &dyn_obs).unwrap()))
    });

    // The same with ReLU heads (candle's CPU tanh is scalar and slow).
    let (relu_policy, _) = setup(HeadActivation::Relu);
    g.bench_function("128x143_same_bar_relu_heads", |b| {
        b.iter(|| black_box(relu_policy.forward(&same).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
