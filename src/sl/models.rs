//! The three supervised direction classifiers (MLP, LSTM, GRU) in candle.
//!
//! Every model maps a symbol's technical window `[B, WINDOW, N_TECH]` (oldest bar first) and
//! the sentiment / macro features of the bar `[B, N_EXTRA]` to logits over (down, flat, up)
//! `[B, 3]`:
//! - MLP: `cat(flatten(window), extra) -> linear(hidden) -> relu -> linear(3)`;
//! - LSTM / GRU: the recurrence over the window's bars (PyTorch's gate equations; the input
//!   projection of all bars is one matmul), then `cat(h_last, extra) -> linear(3)`.
//!
//! Parameters are created with the seeded `VarBuilder` of [`crate::agents::init`], so a seed
//! gives the same initial weights on every run.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::config::SlConfig;
use crate::agents::init::seeded_var_builder;
use crate::features::{N_TECH, WINDOW};

/// Floats per sample besides the window: the symbol's sentiment, the short rate and VIX / 100
/// of the bar (the observation's `SENT_MACRO` slice).
pub const N_EXTRA: usize = 3;
/// Classes: down, flat, up.
pub const N_CLASSES: usize = 3;

/// Which supervised model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// One-hidden-layer perceptron over the flattened window.
    Mlp,
    /// LSTM over the window's bars.
    Lstm,
    /// GRU over the window's bars.
    Gru,
}

impl ModelKind {
    /// The three models in cache-channel order.
    pub const ALL: [ModelKind; 3] = [ModelKind::Mlp, ModelKind::Lstm, ModelKind::Gru];

    /// `mlp`, `lstm`, `gru` (also the checkpoint file stem and the parameter prefix).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Lstm => "lstm",
            ModelKind::Gru => "gru",
        }
    }

    /// Hidden size from the configuration.
    pub fn hidden(self, cfg: &SlConfig) -> usize {
        match self {
            ModelKind::Mlp => cfg.mlp_hidden,
            ModelKind::Lstm => cfg.lstm_hidden,
            ModelKind::Gru => cfg.gru_hidden,
        }
    }

    /// Index of the cache channel (MLP 0, LSTM 1, GRU 2).
    pub fn channel(self) -> usize {
        match self {
            ModelKind::Mlp => 0,
            ModelKind::Lstm => 1,
            ModelKind::Gru => 2,
        }
    }
}

/// `sigmoid(x) = (tanh(x / 2) + 1) / 2` (differentiable with candle's basic ops).
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x * 0.5)?.tanh()?.affine(0.5, 0.5)
}

/// Recurrent weights `w_ih [G H, F]`, `w_hh [G H, H]`, biases `[G H]` (G gates).
struct Recurrent {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    hidden: usize,
}

impl Recurrent {
    fn new(vb: &VarBuilder, gates: usize, hidden: usize) -> Result<Self> {
        let k = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform { lo: -k, up: k };
        Ok(Self {
            w_ih: vb.get_with_hints((gates * hidden, N_TECH), "w_ih", init)?,
            w_hh: vb.get_with_hints((gates * hidden, hidden), "w_hh", init)?,
            b_ih: vb.get_with_hints(gates * hidden, "b_ih", init)?,
            b_hh: vb.get_with_hints(gates * hidden, "b_hh", init)?,
            hidden,
        })
    }

    /// The input projections of every bar, one `[B, G H]` tensor per bar. Each bar's input is
    /// sliced from the (constant) window before its own matmul, so the backward pass never
    /// scatters into a `[B, W, G H]` tensor (which costs O(W^2) for the whole recurrence).
    fn project(&self, win: &Tensor) -> Result<Vec<Tensor>> {
        let w_ih = self.w_ih.t()?;
        let time_major = win.transpose(0, 1)?.contiguous()?;
        (0..win.dim(1)?)
            .map(|t| time_major.get(t)?.matmul(&w_ih)?.broadcast_add(&self.b_ih))
            .collect()
    }
}

/// One of the three models (module docs).
pub struct SlModel {
    kind: ModelKind,
    hidden: usize,
    body: Body,
    head: Linear,
}

enum Body {
    Mlp(Linear),
    Lstm(Recurrent),
    Gru(Recurrent),
}

impl SlModel {
    /// Build `kind` with the sizes of `cfg` in `vb` (parameters under `kind.name()`).
    pub fn new(kind: ModelKind, cfg: &SlConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp(kind.name());
        let h = kind.hidden(cfg);
        let (body, head_in) = match kind {
            ModelKind::Mlp => (
                Body::Mlp(candle_nn::linear(
                    WINDOW * N_TECH + N_EXTRA,
                    h,
                    vb.pp("hidden"),
                )?),
                h,
            ),
            ModelKind::Lstm => (
                Body::Lstm(Recurrent::new(&vb.pp("rnn"), 4, h)?),
                h + N_EXTRA,
            ),
            ModelKind::Gru => (Body::Gru(Recurrent::new(&vb.pp("rnn"), 3, h)?), h + N_EXTRA),
        };
        let head = candle_nn::linear(head_in, N_CLASSES, vb.pp("head"))?;
        Ok(Self {
            kind,
            hidden: h,
            body,
            head,
        })
    }

    /// A fresh model with seeded initial weights in a new `VarMap`.
    pub fn seeded(kind: ModelKind, cfg: &SlConfig, dev: &Device) -> Result<(Self, VarMap)> {
        let vm = VarMap::new();
        let seed = crate::rng::hash2(cfg.seed, kind.channel() as u64);
        let m = Self::new(kind, cfg, seeded_var_builder(&vm, seed, DType::F32, dev))?;
        Ok((m, vm))
    }

    /// Which model.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Its hidden size.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Logits `[B, 3]` of windows `[B, WINDOW, N_TECH]` and extras `[B, N_EXTRA]`.
    pub fn forward(&self, win: &Tensor, extra: &Tensor) -> Result<Tensor> {
        match &self.body {
            Body::Mlp(hidden) => {
                let b = win.dim(0)?;
                let x = Tensor::cat(&[&win.reshape((b, ()))?, extra], 1)?;
                self.head.forward(&hidden.forward(&x)?.relu()?)
            }
            Body::Lstm(r) => {
                let h = self.lstm(r, win)?;
                self.head.forward(&Tensor::cat(&[&h, extra], 1)?)
            }
            Body::Gru(r) => {
                let h = self.gru(r, win)?;
                self.head.forward(&Tensor::cat(&[&h, extra], 1)?)
            }
        }
    }

    /// Class probabilities `[B, 3]`.
    pub fn probs(&self, win: &Tensor, extra: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(win, extra)?, D::Minus1)
    }

    /// `i, f, g, o` gates; `c' = f c + i g`, `h' = o tanh(c')`. Returns the last `h`.
    fn lstm(&self, r: &Recurrent, win: &Tensor) -> Result<Tensor> {
        let xp = r.project(win)?;
        let b = win.dim(0)?;
        let h = r.hidden;
        let w_hh = r.w_hh.t()?;
        let mut hs = Tensor::zeros((b, h), win.dtype(), win.device())?;
        let mut c = hs.clone();
        for x in &xp {
            let g = x.add(&hs.matmul(&w_hh)?.broadcast_add(&r.b_hh)?)?;
            let i = sigmoid(&g.narrow(1, 0, h)?)?;
            let f = sigmoid(&g.narrow(1, h, h)?)?;
            let gg = g.narrow(1, 2 * h, h)?.tanh()?;
            let o = sigmoid(&g.narrow(1, 3 * h, h)?)?;
            c = ((f * &c)? + (i * gg)?)?;
            hs = (o * c.tanh()?)?;
        }
        Ok(hs)
    }

    /// `r, z, n` gates: `n = tanh(x_n + r (W_hn h + b_hn))`, `h' = (1 - z) n + z h`.
    fn gru(&self, r: &Recurrent, win: &Tensor) -> Result<Tensor> {
        let xp = r.project(win)?;
        let b = win.dim(0)?;
        let h = r.hidden;
        let w_hh = r.w_hh.t()?;
        let mut hs = Tensor::zeros((b, h), win.dtype(), win.device())?;
        for x in &xp {
            let hp = hs.matmul(&w_hh)?.broadcast_add(&r.b_hh)?;
            let rg = sigmoid(&(x.narrow(1, 0, h)? + hp.narrow(1, 0, h)?)?)?;
            let z = sigmoid(&(x.narrow(1, h, h)? + hp.narrow(1, h, h)?)?)?;
            let n = (x.narrow(1, 2 * h, h)? + (rg * hp.narrow(1, 2 * h, h)?)?)?.tanh()?;
            hs = (&n + (z * (&hs - &n)?)?)?;
        }
        Ok(hs)
    }
}

/// Parameters of a `VarMap`.
pub fn param_count(vm: &VarMap) -> usize {
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_seeded_init() {
        let cfg = SlConfig {
            mlp_hidden: 5,
            lstm_hidden: 4,
            gru_hidden: 3,
            ..SlConfig::default()
        };
        let dev = Device::Cpu;
        let win = Tensor::randn(0f32, 1.0, (2, WINDOW, N_TECH), &dev).unwrap();
        let extra = Tensor::randn(0f32, 1.0, (2, N_EXTRA), &dev).unwrap();
        for kind in ModelKind::ALL {
            let (m, vm) = SlModel::seeded(kind, &cfg, &dev).unwrap();
            let (m2, _) = SlModel::seeded(kind, &cfg, &dev).unwrap();
            let p = m.probs(&win, &extra).unwrap();
            assert_eq!(p.dims(), &[2, 3]);
            let sums: Vec<f32> = p.sum(1).unwrap().to_vec1().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
            let a: Vec<Vec<f32>> = m.forward(&win, &extra).unwrap().to_vec2().unwrap();
            let b: Vec<Vec<f32>> = m2.forward(&win, &extra).unwrap().to_vec2().unwrap();
            assert_eq!(a, b, "{kind:?}: same seed, same weights");
            let h = kind.hidden(&cfg);
            let want = match kind {
                ModelKind::Mlp => (WINDOW * N_TECH + N_EXTRA + 1) * h + (h + 1) * 3,
                ModelKind::Lstm => 4 * h * (N_TECH + h + 2) + (h + N_EXTRA + 1) * 3,
                ModelKind::Gru => 3 * h * (N_TECH + h + 2) + (h + N_EXTRA + 1) * 3,
            };
            assert_eq!(param_count(&vm), want, "{kind:?}");
        }
    }

    /// The LSTM recurrence against a scalar re-implementation of the same equations.
    #[test]
    #[allow(clippy::needless_range_loop)] // the equations, index by index
    fn lstm_matches_a_scalar_reference() {
        let cfg = SlConfig {
            lstm_hidden: 2,
            ..SlConfig::default()
        };
        let dev = Device::Cpu;
        let (m, _) = SlModel::seeded(ModelKind::Lstm, &cfg, &dev).unwrap();
        let Body::Lstm(r) = &m.body else {
            unreachable!()
        };
        let win = Tensor::randn(0f32, 1.0, (1, WINDOW, N_TECH), &dev).unwrap();
        let got: Vec<f32> = m
            .lstm(r, &win)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x: Vec<f32> = win.flatten_all().unwrap().to_vec1().unwrap();
        let wih: Vec<Vec<f32>> = r.w_ih.to_vec2().unwrap();
        let whh: Vec<Vec<f32>> = r.w_hh.to_vec2().unwrap();
        let (bi, bh): (Vec<f32>, Vec<f32>) = (r.b_ih.to_vec1().unwrap(), r.b_hh.to_vec1().unwrap());
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let (mut h, mut c) = (vec![0f64; 2], vec![0f64; 2]);
        for t in 0..WINDOW {
            let xt = &x[t * N_TECH..(t + 1) * N_TECH];
            let g: Vec<f64> = (0..8)
                .map(|j| {
                    let a: f64 = (0..N_TECH).map(|k| (wih[j][k] * xt[k]) as f64).sum();
                    let b: f64 = (0..2).map(|k| whh[j][k] as f64 * h[k]).sum();
                    a + b + bi[j] as f64 + bh[j] as f64
                })
                .collect();
            for k in 0..2 {
                c[k] = sig(g[2 + k]) * c[k] + sig(g[k]) * g[4 + k].tanh();
                h[k] = sig(g[6 + k]) * c[k].tanh();
            }
        }
        for k in 0..2 {
            assert!((got[k] as f64 - h[k]).abs() < 1e-5, "{got:?} vs {h:?}");
        }
    }

    /// The GRU recurrence against a scalar re-implementation of PyTorch's equations.
    #[test]
    #[allow(clippy::needless_range_loop)] // the equations, index by index
    fn gru_matches_a_scalar_reference() {
        let cfg = SlConfig {
            gru_hidden: 2,
            ..SlConfig::default()
        };
        let dev = Device::Cpu;
        let (m, _) = SlModel::seeded(ModelKind::Gru, &cfg, &dev).unwrap();
        let Body::Gru(r) = &m.body else {
            unreachable!()
        };
        let win = Tensor::randn(0f32, 1.0, (1, WINDOW, N_TECH), &dev).unwrap();
        let got: Vec<f32> = m
            .gru(r, &win)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x: Vec<f32> = win.flatten_all().unwrap().to_vec1().unwrap();
        let wih: Vec<Vec<f32>> = r.w_ih.to_vec2().unwrap();
        let whh: Vec<Vec<f32>> = r.w_hh.to_vec2().unwrap();
        let (bi, bh): (Vec<f32>, Vec<f32>) = (r.b_ih.to_vec1().unwrap(), r.b_hh.to_vec1().unwrap());
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut h = vec![0f64; 2];
        for t in 0..WINDOW {
            let xt = &x[t * N_TECH..(t + 1) * N_TECH];
            let gx: Vec<f64> = (0..6)
                .map(|j| {
                    (0..N_TECH).map(|k| (wih[j][k] * xt[k]) as f64).sum::<f64>() + bi[j] as f64
                })
                .collect();
            let gh: Vec<f64> = (0..6)
                .map(|j| (0..2).map(|k| whh[j][k] as f64 * h[k]).sum::<f64>() + bh[j] as f64)
                .collect();
            let mut next = vec![0f64; 2];
            for k in 0..2 {
                let rg = sig(gx[k] + gh[k]);
                let z = sig(gx[2 + k] + gh[2 + k]);
                let n = (gx[4 + k] + rg * gh[4 + k]).tanh();
                next[k] = (1.0 - z) * n + z * h[k];
            }
            h = next;
        }
        for k in 0..2 {
            assert!((got[k] as f64 - h[k]).abs() < 1e-5, "{got:?} vs {h:?}");
        }
    }
}
