//! Criterion benchmarks of one policy forward pass (default-size encoder + symbol heads, CPU), the
//! cases of `marl_trade::bench::PolicyBench` (the same as `marl-trade bench policy`) on in-memory
//! random windows:
//!
//! - `1x143`: one scenario, 143 symbols (one encoder pass);
//! - `128x143_same_bar`: 128 scenarios at the same bar: the encoder runs once per (symbol, bar),
//!   the heads on all 128 x 143 rows;
//! - `128x143_distinct_bars`: 128 scenarios at 128 different bars (128 encoder passes), the worst case;
//! - `heads_128x143`: the heads alone on precomputed embeddings;
//! - `128x143_same_bar_relu_heads`: `128x143_same_bar` with `head_activation = "relu"`;
//! - `1x143_acting`, `128x143_distinct_bars_acting`: the acting pass (`PolicyBench::act`: no
//!   autograd graph, the untracked twin's fused CPU passes, the embedding cache emptied first).
//!
//! Window gathering and the correlation graph (host side) are included, as in training.
//! `cargo bench --bench policy`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use marl_trade::agents::heads::HeadActivation;
use marl_trade::agents::{AgentConfig, zero_dyn_obs};
use marl_trade::bench::PolicyBench;

const S: usize = 143;
const N: usize = 128;

fn setup(head_activation: HeadActivation) -> PolicyBench {
    let cfg = AgentConfig {
        head_activation,
        ..AgentConfig::default()
    };
    PolicyBench::synthetic(&cfg, S, N).expect("policy builds")
}

fn bench_policy(c: &mut Criterion) {
    let b = setup(HeadActivation::Tanh);
    let mut g = c.benchmark_group("policy_forward");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for (i, name) in ["1x143", "128x143_same_bar", "128x143_distinct_bars"]
        .into_iter()
        .enumerate()
    {
        let units = b.cases[i].1.keys.len();
        g.throughput(Throughput::Elements((units * S) as u64));
        g.bench_function(name, |it| it.iter(|| black_box(b.forward(i).unwrap())));
    }
    for (i, name) in [(0, "1x143_acting"), (2, "128x143_distinct_bars_acting")] {
        let units = b.cases[i].1.keys.len();
        g.throughput(Throughput::Elements((units * S) as u64));
        g.bench_function(name, |it| it.iter(|| black_box(b.act(i).unwrap())));
    }

    let dev = Device::Cpu;
    let agent = b.policy().agent();
    let emb = Tensor::zeros((1, S, agent.config().encoder.embed_dim), DType::F32, &dev).unwrap();
    let group = Tensor::zeros(N, DType::U32, &dev).unwrap();
    let dyn_obs = zero_dyn_obs(N, &agent.dims(), &dev).unwrap();
    g.bench_function("heads_128x143", |it| {
        it.iter(|| black_box(agent.heads(&emb, &group, &dyn_obs).unwrap()))
    });

    // The same with ReLU heads (candle's CPU tanh is scalar and slow).
    let relu = setup(HeadActivation::Relu);
    g.bench_function("128x143_same_bar_relu_heads", |it| {
        it.iter(|| black_box(relu.forward(1).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
