//! Masked-forecast pretraining of the shared encoder (`train::pretrain`, issue #13), CI-sized,
//! fixed seeds, on `configs/signal.toml`'s market shrunk to 1200 bars and its tiny CNN encoder.
//!
//! - Train period only: every technical feature of the test period (bars >= split) is set to NaN
//!   before pretraining; every logged loss stays finite.
//! - It learns: the validation slice's loss (fixed keys and masks, never trained on) is lower at
//!   the last log than at the first.
//! - Resumable: 30 steps, then the same directory continued to 60 steps, gives bit for bit the
//!   encoder and the logs of an uninterrupted 60-step run; another configuration is refused.
//! - `train --encoder`: the encoder tensors land in the policy (equal to the file's); an encoder
//!   of another size is refused with a shape error naming the tensor.

use std::sync::Arc;

use candle_core::DType;
use marl_trade::market::Market;
use marl_trade::run::{self, TrainOptions};
use marl_trade::train::pretrain::{
    ENCODER_FILE, PretrainLog, PretrainOptions, PretrainReport, load_encoder, pretrain,
};
use marl_trade::{Config, ErrorKind, data};

fn config() -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/signal.toml")).unwrap();
    cfg.data.synthetic.bars = 1200;
    cfg.env.scenarios = 4;
    cfg.env.episode_len = 32;
    cfg.ppo.num_steps = 8;
    cfg.ppo.total_timesteps = 4 * 8;
    cfg.pretrain.log_every = 10;
    cfg.pretrain.save_every = 10;
    cfg.pretrain.steps = 60;
    cfg
}

/// The market with every technical feature of the test period set to NaN.
fn market(cfg: &Config) -> Market {
    let m = Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark));
    let mut f = (*m.features).clone();
    let split = (f.bars as f64 * cfg.env.train_fraction).floor() as usize;
    for p in 0..f.paths {
        for s in 0..f.symbols {
            for t in split..f.bars {
                let i = f.tech_index(p, t, s);
                f.tech[i..i + marl_trade::features::N_TECH].fill(f32::NAN);
            }
        }
    }
    Market {
        data: m.data,
        features: Arc::new(f),
    }
}

fn run(cfg: &Config, m: &Market, out: &std::path::Path, force: bool) -> PretrainReport {
    let mut progress = |l: &PretrainLog| eprintln!("{}", l.line());
    pretrain(
        &cfg.pretrain,
        &cfg.agent.encoder,
        cfg.env.train_fraction,
        m,
        &PretrainOptions {
            out: out.to_path_buf(),
            force,
        },
        &mut progress,
    )
    .unwrap()
}

#[test]
fn pretraining_learns_on_the_train_period_only_and_resumes_exactly() {
    let cfg = config();
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let straight = run(&cfg, &m, &dir.path().join("a"), false);
    assert_eq!((straight.step, straight.steps_run), (60, 60));
    assert_eq!(straight.logs.len(), 6);
    for l in &straight.logs {
        for v in [
            l.loss,
            l.recon,
            l.forecast,
            l.val_loss,
            l.val_recon,
            l.val_forecast,
        ] {
            assert!(
                v.is_finite(),
                "a test-period feature reached the loss: {l:?}"
            );
        }
    }
    let (first, last) = (&straight.logs[0], straight.logs.last().unwrap());
    assert!(
        last.val_loss < first.val_loss,
        "validation loss should fall: {} -> {}",
        first.val_loss,
        last.val_loss
    );

    // Interrupted at 30, continued to 60.
    let b = dir.path().join("b");
    let mut half = cfg.clone();
    half.pretrain.steps = 30;
    assert_eq!(run(&half, &m, &b, false).step, 30);
    let resumed = run(&cfg, &m, &b, false);
    assert_eq!((resumed.step, resumed.steps_run), (60, 30));
    // (The logs before the interruption come back through JSON, whose float parsing may differ in
    // the last bit; the encoder below is compared bit for bit.)
    assert_eq!(resumed.logs.len(), straight.logs.len());
    for (a, b) in resumed.logs.iter().zip(&straight.logs) {
        assert_eq!(a.step, b.step);
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs().max(1.0);
        assert!(
            close(a.loss, b.loss) && close(a.val_loss, b.val_loss) && close(a.recon, b.recon),
            "{a:?} vs {b:?}"
        );
    }
    let read = |d: &std::path::Path| std::fs::read(d.join(ENCODER_FILE)).unwrap();
    assert_eq!(read(&b), read(&dir.path().join("a")), "encoders differ");
    // Nothing left to do: a third run changes nothing.
    assert_eq!(run(&cfg, &m, &b, false).steps_run, 0);

    // Another configuration is refused without --force.
    let mut other = cfg.clone();
    other.pretrain.mask_bar_prob = 0.3;
    let e = pretrain(
        &other.pretrain,
        &other.agent.encoder,
        other.env.train_fraction,
        &m,
        &PretrainOptions {
            out: b.clone(),
            force: false,
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");
}

#[test]
fn train_loads_the_pretrained_encoder_and_refuses_another_shape() {
    let mut cfg = config();
    cfg.pretrain.steps = 10;
    let m = market(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("pt");
    run(&cfg, &m, &pt, false);

    let dev = candle_core::Device::Cpu;
    let (_, vm) = run::build_policy(&cfg.agent, run::agent_dims(&m), &m, 5, &dev).unwrap();
    let n = load_encoder(&vm, &pt).unwrap();
    assert!(n > 0);
    let stored = candle_core::safetensors::load(pt.join(ENCODER_FILE), &dev).unwrap();
    assert_eq!(stored.len(), n);
    let data = vm.data().lock().unwrap();
    for (name, t) in &stored {
        let v = data[name].as_tensor().to_dtype(DType::F32).unwrap();
        let d = (v - t)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
    drop(data);

    // A run through `run::train --encoder` starts from it.
    let mut opts = TrainOptions::new(dir.path().join("run"));
    opts.encoder = Some(pt.clone());
    let rep = run::train(&cfg, &m, &opts).unwrap();
    assert_eq!(rep.iteration, 1);

    // Another encoder size: refused, naming the tensor.
    let mut big = cfg.clone();
    big.agent.encoder.embed_dim = 12;
    let (_, vm2) = run::build_policy(&big.agent, run::agent_dims(&m), &m, 5, &dev).unwrap();
    let e = load_encoder(&vm2, &pt).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Shape, "{msg}");
    assert!(msg.contains("encoder."), "{msg}");
}
