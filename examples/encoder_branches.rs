//! Time each branch of the default encoder (transformer, BiLSTM, CNN) and the whole encoder, forward
//! and forward + backward, on random windows: wall time and the CPU time of all threads of the
//! process (from `/proc/self/task/*/schedstat`, Linux), the steadier figure on a shared machine.
//!
//! `cargo run --release --example encoder_branches -- [WINDOWS] [REPS]` (`WINDOWS` a multiple of
//! 143, default 143; `REPS` default 3). docs/training.md ("Encoder speed") quotes it with
//! `RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1`.
use candle_core::{DType, Device, Module, Tensor};
use marl_trade::agents::encoder::*;
use marl_trade::agents::init::seeded_var_builder;
use std::time::Instant;

fn cpu_ns() -> f64 {
    marl_trade::bench::process_cpu_seconds().unwrap_or(f64::NAN) * 1e9
}

fn time<F: FnMut() -> candle_core::Result<Tensor>>(name: &str, reps: usize, mut f: F) {
    let _ = f().unwrap();
    let t = Instant::now();
    let c = cpu_ns();
    for _ in 0..reps {
        let y = f().unwrap();
        std::hint::black_box(y);
    }
    println!(
        "{name:<30} {:>9.2} ms wall {:>9.2} ms process cpu",
        1e3 * t.elapsed().as_secs_f64() / reps as f64,
        (cpu_ns() - c) / 1e6 / reps as f64
    );
}

fn main() {
    let b: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(143);
    let reps: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(3);
    let dev = Device::Cpu;
    let cfg = EncoderConfig::default();
    let vm = candle_nn::VarMap::new();
    let vb = seeded_var_builder(&vm, 0, DType::F32, &dev);
    let x = Tensor::randn(0f32, 1., (b, 24, 23), &dev).unwrap();
    let t = TransformerEncoder::new(24, 23, &cfg.transformer, vb.pp("t")).unwrap();
    let l = BiLstm::new(23, 64, vb.pp("l")).unwrap();
    let c = Cnn1d::new(23, &cfg.cnn, vb.pp("c")).unwrap();
    let enc = SharedEncoder::new(&cfg, WindowShape::TECH, vb.pp("e")).unwrap();
    let adj = Tensor::full(1f32 / 143., (143, 143), &dev).unwrap();
    let xw = x.reshape((b / 143, 143, 24, 23)).unwrap();
    // The same modules over detached views of the variables: the rollout's inference path (no
    // autograd graph recorded), what `bench policy` times.
    let ivb = marl_trade::agents::init::detached_var_builder(&vm, DType::F32, &dev);
    let ti = TransformerEncoder::new(24, 23, &cfg.transformer, ivb.pp("t")).unwrap();
    let li = BiLstm::new(23, 64, ivb.pp("l")).unwrap();
    let ci = Cnn1d::new(23, &cfg.cnn, ivb.pp("c")).unwrap();
    let enci = SharedEncoder::new(&cfg, WindowShape::TECH, ivb.pp("e")).unwrap();
    time("transformer inference", reps, || ti.forward(&x));
    time("bilstm inference", reps, || li.forward(&x));
    time("cnn inference", reps, || ci.forward(&x));
    time("encoder inference", reps, || enci.forward(&xw, Some(&adj)));
    time("transformer fwd", reps, || t.forward(&x));
    time("bilstm fwd", reps, || l.forward(&x));
    time("cnn fwd", reps, || c.forward(&x));
    time("encoder fwd", reps, || enc.forward(&xw, Some(&adj)));
    time("transformer fwd+bwd", reps, || {
        let y = t.forward(&x)?;
        y.sqr()?.sum_all()?.backward()?;
        Ok(y)
    });
    time("bilstm fwd+bwd", reps, || {
        let y = l.forward(&x)?;
        y.sqr()?.sum_all()?.backward()?;
        Ok(y)
    });
    time("cnn fwd+bwd", reps, || {
        let y = c.forward(&x)?;
        y.sqr()?.sum_all()?.backward()?;
        Ok(y)
    });
    time("encoder fwd+bwd", reps, || {
        let y = enc.forward(&xw, Some(&adj))?;
        y.sqr()?.sum_all()?.backward()?;
        Ok(y)
    });
}
