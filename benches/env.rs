//! Criterion benchmarks of the CPU environment: `step` and `gather_obs` at N x S = 128 x 143 (the
//! default configuration) and at a small size (16 x 8). Throughput is in symbol-steps (N * S per call).
//!
//! `cargo bench --bench env`; the command-line `marl-trade bench env` measures the same loops
//! without criterion's statistics.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use marl_trade::config::Config;
use marl_trade::data;
use marl_trade::env::obs::OBS_DIM;
use marl_trade::env::{BackendKind, MASTER_ACTIONS, N_ACTIONS, Period, VecEnv};
use marl_trade::features::Features;
use marl_trade::rng::SplitMix64;

const BATCHES: usize = 64;

/// An env of N scenarios x S symbols on synthetic data, reset, with pre-drawn uniform random
/// symbol and master actions.
fn setup(n: usize, s: usize) -> (VecEnv, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut cfg = Config::default();
    cfg.data.synthetic.symbols = s;
    cfg.data.synthetic.bars = 2048;
    cfg.env.scenarios = n;
    cfg.env.episode_len = 512;
    let md = Arc::new(data::generate(&cfg.data.synthetic, "SPY"));
    let f = Arc::new(Features::compute(&md));
    let mut env = VecEnv::new(&cfg, md, f, Period::Train, BackendKind::Cpu).expect("env builds");
    env.reset(1).expect("reset");
    let mut rng = SplitMix64::new(99);
    let acts = (0..BATCHES)
        .map(|_| {
            (0..n * s)
                .map(|_| rng.below(N_ACTIONS as u64) as u8)
                .collect()
        })
        .collect();
    let masters = (0..BATCHES)
        .map(|_| {
            (0..n)
                .map(|_| rng.below(MASTER_ACTIONS as u64) as u8)
                .collect()
        })
        .collect();
    (env, acts, masters)
}

fn bench_env(c: &mut Criterion) {
    let mut g = c.benchmark_group("env");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for (n, s) in [(16usize, 8usize), (128, 143)] {
        let (mut env, acts, masters) = setup(n, s);
        let size = format!("{n}x{s}");
        g.throughput(Throughput::Elements((n * s) as u64));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("step", &size), |b| {
            b.iter(|| {
                let out = env
                    .step(&acts[i % BATCHES], &masters[i % BATCHES])
                    .expect("step");
                black_box(out.reward[0]);
                i += 1;
            })
        });
        let mut obs = vec![0f32; n * s * OBS_DIM];
        g.bench_function(BenchmarkId::new("gather_obs", &size), |b| {
            b.iter(|| {
                env.gather_obs(&mut obs).expect("gather_obs");
                black_box(obs[obs.len() - 1]);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_env);
criterion_main!(benches);
