use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::encoder::*;
use marl_trade::agents::init::seeded_var_builder;
use std::time::Instant;

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..10 { f(); }
    eprintln!("{name}: {:.2} ms", t.elapsed().as_secs_f64() * 100.0);
}

#[test]
#[ignore]
fn prof() {
    let dev = Device::Cpu;
    let cfg = EncoderConfig::default();
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 0, DType::F32, &dev);
    let x = Tensor::randn(0f32, 1., (143, 24, 23), &dev).unwrap();
    let t = TransformerEncoder::new(24, 23, &cfg.transformer, vb.pp("t")).unwrap();
    let l = BiLstm::new(23, 64, vb.pp("l")).unwrap();
    let c = Cnn1d::new(23, &cfg.cnn, vb.pp("c")).unwrap();
    time("transformer", || { t.forward(&x).unwrap(); });
    time("bilstm", || { l.forward(&x).unwrap(); });
    time("bilstm ref", || { l.forward_reference(&x).unwrap(); });
    time("cnn", || { c.forward(&x).unwrap(); });
    let enc = SharedEncoder::new(&cfg, vb.pp("e")).unwrap();
    let w = x.reshape((1, 143, 24, 23)).unwrap();
    let adj = Tensor::zeros((143, 143), DType::F32, &dev).unwrap();
    time("encoder", || { enc.forward(&w, Some(&adj)).unwrap(); });
    let r: Vec<f32> = (0..64*143).map(|i| ((i * 31 % 97) as f32) * 0.001).collect();
    time("corr graph", || { marl_trade::agents::correlation_graph(&r, 64, 143, 8); });
    let a = Tensor::randn(0f32, 1., (143, 128, 281), &dev).unwrap();
    let b = Tensor::randn(0f32, 1., (143, 281, 64), &dev).unwrap();
    time("batched matmul 143x128x281x64", || { a.matmul(&b).unwrap(); });
    let a2 = Tensor::randn(0f32, 1., (143*128, 281), &dev).unwrap();
    let b2 = Tensor::randn(0f32, 1., (281, 64), &dev).unwrap();
    time("plain matmul 18304x281x64", || { a2.matmul(&b2).unwrap(); });
}
