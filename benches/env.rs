//! Criterion benchmarks of the CPU environment: `step` and `gather_obs` at N x S = 128 x 143 (the
//! default configuration) and at a small size (16 x 8), and `step` at 128 x 143 with each
//! instruction set this CPU runs (`step_isa/<isa>`). Throughput is in symbol-steps (N * S per
//! call).
//!
//! `cargo bench --bench env`; the command-line `marl-trade bench env` times the same loops
//! (`marl_trade::bench::EnvBench`) without criterion's statistics.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use marl_trade::bench::EnvBench;
use marl_trade::data::SyntheticConfig;
use marl_trade::env::cpu::Isa;
use marl_trade::env::{BackendKind, EnvSetup};

fn bench_env(c: &mut Criterion) {
    let mut g = c.benchmark_group("env");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut setup = EnvSetup::default();
    setup.env.episode_len = 512;
    let synth = SyntheticConfig {
        bars: 2048,
        ..SyntheticConfig::default()
    };
    for (n, s) in [(16usize, 8usize), (128, 143)] {
        let mut b =
            EnvBench::new(&setup, &synth, n, s, BackendKind::Cpu, None).expect("env builds");
        let size = format!("{n}x{s}");
        g.throughput(Throughput::Elements((n * s) as u64));
        g.bench_function(BenchmarkId::new("step", &size), |it| {
            it.iter(|| b.step().expect("step"))
        });
        g.bench_function(BenchmarkId::new("gather_obs", &size), |it| {
            it.iter(|| b.gather_obs().expect("gather_obs"))
        });
    }
    g.throughput(Throughput::Elements(128 * 143));
    for isa in Isa::available() {
        let mut b = EnvBench::new(&setup, &synth, 128, 143, BackendKind::Cpu, Some(isa))
            .expect("env builds");
        g.bench_function(BenchmarkId::new("step_isa", isa), |it| {
            it.iter(|| b.step().expect("step"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_env);
criterion_main!(benches);
