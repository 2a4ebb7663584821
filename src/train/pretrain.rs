/*!
Masked-forecast pretraining of the shared encoder (`marl-trade pretrain`, the `[pretrain]`
section), on the **train period only**.

A sample is one `(path, bar t)` key: the technical windows `x [S, W, F]` of every symbol at bar
t (what the policy's encoder reads) and the next bar's features `y [S, F]` (the last row of the
window at `t + 1`). Keys are the bars `t` with `max(WARMUP, WINDOW - 1) <= t` and `t + 1 < split`
(`split = floor(T * env.train_fraction)`), so no target reads a test bar; the last
`pretrain.val_fraction` of them (in time) are a validation slice, never trained on.

One step:

1. draw `pretrain.batch_bars` keys (seeded, with replacement) from the fitting keys;
2. mask: each bar of each symbol's window is masked with probability `mask_bar_prob` (the whole
   row), each feature of each symbol's window with probability `mask_feature_prob` (the whole
   column); masked entries are set to 0 in the input (`M = 1` there);
3. `emb = encoder(x * (1 - M))` (`[G, S, E]`, the encoder of `[agent.encoder]`); two linear
   read-outs of it: the reconstruction `r = emb W_r + b_r` (`W * F` values per symbol) and the
   forecast `f = emb W_f + b_f` (`F` values);
4. `loss = sum(M (r - x)^2) / sum(M) + forecast_weight * mean((f - y)^2)`; AdamW
   (`learning_rate`), global gradient-norm clipping at 1.

Every `log_every` steps the losses of the step and of the validation slice (up to 256 keys, evenly
spaced, with masks drawn once from the seed, so the value is comparable across steps) are recorded;
every `save_every` steps and at the end a checkpoint is written, each file atomically
(`crate::atomic`), the state last:

```text
<out>/encoder.safetensors      the encoder's tensors, named as in the policy (`encoder.*`)
<out>/model.safetensors        encoder + read-outs (`decoder.*`)
<out>/optimizer.safetensors    AdamW's moments
<out>/pretrain.jsonl           one PretrainLog per log step (rewritten with each checkpoint)
<out>/state.json               step, AdamW step, sampling stream, and what the run was made of
```

A second run over the same directory resumes from the checkpoint (bit for bit: same draws, same
moments) when the configuration (except `pretrain.steps`, which may grow), the encoder, the window
shape, the symbols and the data's fingerprint are the same; otherwise it is refused without
`--force`.

`marl-trade train --encoder DIR` initialises the policy's encoder from `DIR/encoder.safetensors`
([`load_encoder`]): every `encoder.*` tensor of the policy must be there with its shape, or the
error names the tensor.
*/

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarMap};
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, AdamWConfig};
use super::checkpoint::{load_tensors_checked, save_tensors_atomic};
use super::ppo::clip_grad_norm;
use super::train_env::{ResumableRng, RngState};
use super::windows::MarketWindows;
use crate::agents::encoder::{EncoderConfig, SharedEncoder, WindowShape};
use crate::agents::graph::correlation_graph;
use crate::agents::init::{named_vars, seeded_var_builder};
use crate::agents::windows::WindowSource;
use crate::error::{Error, ErrorKind, Result};
use crate::market::Market;
use crate::rng::hash2;

/// The encoder's tensors, as `train --encoder` reads them.
pub const ENCODER_FILE: &str = "encoder.safetensors";
/// Encoder and read-outs.
pub const MODEL_FILE: &str = "model.safetensors";
/// AdamW's state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The losses, one JSON object a line.
pub const METRICS_FILE: &str = "pretrain.jsonl";
/// The run's state, written last.
pub const STATE_FILE: &str = "state.json";

/// `[pretrain]`: masked-forecast pretraining of the shared encoder (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Optimiser steps of the run.
    pub steps: usize,
    /// `(path, bar)` keys per step (each holds all S symbols).
    pub batch_bars: usize,
    /// Probability that a bar (a row of a symbol's window) is masked.
    pub mask_bar_prob: f64,
    /// Probability that a feature (a column of a symbol's window) is masked.
    pub mask_feature_prob: f64,
    /// Weight of the next-bar forecast loss next to the reconstruction loss.
    pub forecast_weight: f64,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the read-outs' and the encoder's initialisation, the draws and the masks.
    pub seed: u64,
    /// The last fraction of the train period's keys, held out as the validation slice.
    pub val_fraction: f64,
    /// Record the losses every this many steps.
    pub log_every: usize,
    /// Checkpoint every this many steps (and at the end).
    pub save_every: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            steps: 500,
            batch_bars: 16,
            mask_bar_prob: 0.15,
            mask_feature_prob: 0.15,
            forecast_weight: 1.0,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            seed: 0,
            val_fraction: 0.1,
            log_every: 25,
            save_every: 100,
        }
    }
}

impl PretrainConfig {
    /// Range checks; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::config_field(origin, field, why.to_string()));
        for (f, v) in [
            ("pretrain.steps", self.steps),
            ("pretrain.batch_bars", self.batch_bars),
            ("pretrain.log_every", self.log_every),
            ("pretrain.save_every", self.save_every),
        ] {
            if v == 0 {
                return bad(f, "must be >= 1");
            }
        }
        for (f, v) in [
            ("pretrain.mask_bar_prob", self.mask_bar_prob),
            ("pretrain.mask_feature_prob", self.mask_feature_prob),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(f, "must be in [0, 1)");
            }
        }
        if self.mask_bar_prob + self.mask_feature_prob <= 0.0 {
            return bad(
                "pretrain.mask_bar_prob",
                "mask_bar_prob and mask_feature_prob cannot both be 0 (nothing to reconstruct)",
            );
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 0.5) {
            return bad("pretrain.val_fraction", "must be in (0, 0.5)");
        }
        for (f, v) in [
            ("pretrain.forecast_weight", self.forecast_weight),
            ("pretrain.weight_decay", self.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(f, "must be a finite number >= 0");
            }
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("pretrain.learning_rate", "must be > 0");
        }
        Ok(())
    }
}

/// The losses at one log step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainLog {
    /// Steps done.
    pub step: usize,
    /// The step's total loss, its masked reconstruction MSE and its forecast MSE.
    pub loss: f64,
    /// Masked reconstruction MSE of the step's batch.
    pub recon: f64,
    /// Next-bar forecast MSE of the step's batch.
    pub forecast: f64,
    /// The same three on the validation slice.
    pub val_loss: f64,
    /// Masked reconstruction MSE on the validation slice.
    pub val_recon: f64,
    /// Forecast MSE on the validation slice.
    pub val_forecast: f64,
}

impl PretrainLog {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        format!(
            "step {:6}  loss {:.4} (recon {:.4}, forecast {:.4})  val {:.4} (recon {:.4}, forecast {:.4})",
            self.step,
            self.loss,
            self.recon,
            self.forecast,
            self.val_loss,
            self.val_recon,
            self.val_forecast
        )
    }
}

/// What a run is made of (stored in `state.json`, compared on resume) and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PretrainState {
    config: PretrainConfig,
    encoder: EncoderConfig,
    window: WindowShape,
    symbols: usize,
    split: usize,
    data_fp: u64,
    step: usize,
    adam_step: u64,
    rng: RngState,
}

/// How to run [`pretrain`].
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    /// The output directory.
    pub out: PathBuf,
    /// Replace a run in `out` instead of resuming it.
    pub force: bool,
}

/// What [`pretrain`] did.
#[derive(Debug, Clone)]
pub struct PretrainReport {
    /// Steps done in total.
    pub step: usize,
    /// Steps run now.
    pub steps_run: usize,
    /// Every log of the run (resumed ones included).
    pub logs: Vec<PretrainLog>,
    /// The encoder checkpoint.
    pub encoder_file: PathBuf,
}

/// The encoder and its read-outs.
struct Model {
    encoder: SharedEncoder,
    w_r: Tensor,
    b_r: Tensor,
    w_f: Tensor,
    b_f: Tensor,
}

/// A batch: windows `[G, S, W, F]`, mask (1 = masked) of the same shape, targets `[G, S, F]`,
/// adjacencies `[G, S, S]` when the graph branch is on.
struct Batch {
    x: Tensor,
    mask: Tensor,
    y: Tensor,
    adj: Option<Tensor>,
}

/// The losses `(total, recon, forecast)` of `batch`.
fn losses(m: &Model, b: &Batch, forecast_weight: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (g, s, w, f) = b.x.dims4()?;
    let keep = b.mask.affine(-1.0, 1.0)?;
    let emb = m.encoder.forward(&(&b.x * &keep)?, b.adj.as_ref())?; // [G, S, E]
    let e = emb.dim(2)?;
    let emb = emb.reshape((g * s, e))?;
    let r = emb
        .matmul(&m.w_r)?
        .broadcast_add(&m.b_r)?
        .reshape((g, s, w, f))?;
    let fc = emb
        .matmul(&m.w_f)?
        .broadcast_add(&m.b_f)?
        .reshape((g, s, f))?;
    let n_masked = b.mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let recon = ((&r - &b.x)?.sqr()? * &b.mask)?
        .sum_all()?
        .affine(1.0 / n_masked, 0.0)?;
    let forecast = (&fc - &b.y)?.sqr()?.mean_all()?;
    let total = (&recon + (&forecast * forecast_weight)?)?;
    Ok((total, recon, forecast))
}

struct Sampler<'a> {
    cfg: &'a PretrainConfig,
    win: &'a MarketWindows,
    enc: &'a EncoderConfig,
    dev: Device,
}

impl Sampler<'_> {
    /// The batch of `keys` with masks drawn from `rng`.
    fn batch(&self, keys: &[(usize, usize)], rng: &mut ResumableRng) -> Result<Batch> {
        let (s, w, f) = (self.win.symbols(), self.win.window(), self.win.features());
        let per = s * w * f;
        let mut x = vec![0f32; keys.len() * per];
        let mut next = vec![0f32; per];
        let mut y = Vec::with_capacity(keys.len() * s * f);
        for (k, &(p, t)) in keys.iter().enumerate() {
            self.win.windows_into(p, t, &mut x[k * per..(k + 1) * per]);
            self.win.windows_into(p, t + 1, &mut next);
            for sy in 0..s {
                let last = sy * w * f + (w - 1) * f;
                y.extend_from_slice(&next[last..last + f]);
            }
        }
        let mut mask = vec![0f32; keys.len() * per];
        for (gs, m) in mask.chunks_exact_mut(w * f).enumerate() {
            let _ = gs;
            let bars: Vec<bool> = (0..w)
                .map(|_| rng.uniform() < self.cfg.mask_bar_prob)
                .collect();
            let feats: Vec<bool> = (0..f)
                .map(|_| rng.uniform() < self.cfg.mask_feature_prob)
                .collect();
            for (i, v) in m.iter_mut().enumerate() {
                if bars[i / f] || feats[i % f] {
                    *v = 1.0;
                }
            }
        }
        let g = keys.len();
        let adj = if self.enc.graph.enabled {
            let lb = self.enc.graph.lookback;
            let mut flat = Vec::with_capacity(g * s * s);
            for &(p, t) in keys {
                let mut r = vec![0f32; lb * s];
                self.win.returns_into(p, t, lb, &mut r);
                flat.extend(correlation_graph(&r, lb, s, self.enc.graph.k));
            }
            Some(Tensor::from_vec(flat, (g, s, s), &self.dev)?)
        } else {
            None
        };
        Ok(Batch {
            x: Tensor::from_vec(x, (g, s, w, f), &self.dev)?,
            mask: Tensor::from_vec(mask, (g, s, w, f), &self.dev)?,
            y: Tensor::from_vec(y, (g, s, f), &self.dev)?,
            adj,
        })
    }
}

fn uniform_init(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// Pretrain the encoder of `enc` on `market`'s train period (`train_fraction` of the bars), or
/// resume the run in `opts.out`; `progress` gets every log.
pub fn pretrain(
    cfg: &PretrainConfig,
    enc: &EncoderConfig,
    train_fraction: f64,
    market: &Market,
    opts: &PretrainOptions,
    progress: &mut dyn FnMut(&PretrainLog),
) -> Result<PretrainReport> {
    cfg.validate("pretrain")?;
    enc.validate("agent")?;
    let dev = Device::Cpu;
    let out = &opts.out;
    let md = &market.data;
    let win = MarketWindows::new(market.features.clone(), md.clone())?;
    let shape = WindowShape::TECH;
    let split = (md.bars as f64 * train_fraction).floor() as usize;
    let first = crate::features::WARMUP.max(shape.window - 1);
    // keys: t in [first, split - 2] (t + 1 < split), every path
    if split < first + 2 + 10 {
        return Err(Error::invalid(format!(
            "pretraining needs train-period bars after the warm-up: the split is at bar {split}, \
             the first usable bar {first}"
        )));
    }
    let bars: Vec<usize> = (first..split - 1).collect();
    let n_val = ((bars.len() as f64 * cfg.val_fraction).ceil() as usize).max(1);
    let (fit_bars, val_bars) = bars.split_at(bars.len() - n_val);
    let paths = md.paths;
    let fit_keys: Vec<(usize, usize)> = (0..paths)
        .flat_map(|p| fit_bars.iter().map(move |&t| (p, t)))
        .collect();
    let all_val: Vec<(usize, usize)> = (0..paths)
        .flat_map(|p| val_bars.iter().map(move |&t| (p, t)))
        .collect();
    let stride = all_val.len().div_ceil(256).max(1);
    let val_keys: Vec<(usize, usize)> = all_val.iter().step_by(stride).copied().collect();

    // The model.
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, cfg.seed, DType::F32, &dev);
    let encoder = SharedEncoder::new(enc, shape, vb.pp("encoder"))?;
    let e = enc.embed_dim;
    let (w, f) = (shape.window, shape.features);
    let d = vb.pp("decoder");
    let model = Model {
        encoder,
        w_r: d.get_with_hints((e, w * f), "recon.w", uniform_init(e))?,
        b_r: d.get_with_hints(w * f, "recon.b", Init::Const(0.0))?,
        w_f: d.get_with_hints((e, f), "forecast.w", uniform_init(e))?,
        b_f: d.get_with_hints(f, "forecast.b", Init::Const(0.0))?,
    };
    let params: Vec<(String, Var)> = named_vars(&vm);
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: cfg.learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    )?;
    let mut st = PretrainState {
        config: cfg.clone(),
        encoder: enc.clone(),
        window: shape,
        symbols: md.n_symbols(),
        split,
        data_fp: crate::priors::data_fingerprint(md),
        step: 0,
        adam_step: 0,
        rng: ResumableRng::new(hash2(cfg.seed, 0x5052_4554)).state(),
    };
    let state_path = out.join(STATE_FILE);
    let mut logs: Vec<PretrainLog> = Vec::new();
    if state_path.exists() && !opts.force {
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let old: PretrainState = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(&state_path, e.to_string()).with_source(e))?;
        // `pretrain.steps` may grow: a run continues to the new length.
        let same = PretrainState {
            config: PretrainConfig {
                steps: old.config.steps,
                ..cfg.clone()
            },
            step: old.step,
            adam_step: old.adam_step,
            rng: old.rng,
            ..st.clone()
        };
        if old != same {
            return Err(Error::new(
                ErrorKind::RunMismatch,
                "holds a pretraining run of another configuration, encoder or data: pass --force \
                 to replace it, or choose another --out",
            )
            .with_file(out));
        }
        let shapes = super::checkpoint::varmap_shapes(&vm);
        let tensors = load_tensors_checked(&out.join(MODEL_FILE), &shapes, &dev)?;
        for (name, var) in &params {
            var.set(&tensors[name])?;
        }
        let opt_t = load_tensors_checked(&out.join(OPTIMIZER_FILE), &opt.state_shapes(), &dev)?;
        opt.restore(old.adam_step, |n| Ok(opt_t[n].clone()))?;
        let mp = out.join(METRICS_FILE);
        if mp.exists() {
            for (l, _) in super::metrics::read_json_lines::<PretrainLog>(&mp)? {
                if l.step <= old.step {
                    logs.push(l);
                }
            }
        }
        st = PretrainState {
            config: cfg.clone(),
            ..old
        };
    } else {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        for f in [
            STATE_FILE,
            METRICS_FILE,
            MODEL_FILE,
            OPTIMIZER_FILE,
            ENCODER_FILE,
        ] {
            let p = out.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }

    let sampler = Sampler {
        cfg,
        win: &win,
        enc,
        dev: dev.clone(),
    };
    let mut val_rng = ResumableRng::new(hash2(cfg.seed, 0x0056_414c));
    let val_batch = sampler.batch(&val_keys, &mut val_rng)?;
    let mut rng = ResumableRng::from_state(st.rng);
    let start = st.step;
    let mut batch_keys = Vec::with_capacity(cfg.batch_bars);
    while st.step < cfg.steps {
        batch_keys.clear();
        for _ in 0..cfg.batch_bars {
            batch_keys.push(fit_keys[rng.below(fit_keys.len() as u64) as usize]);
        }
        let batch = sampler.batch(&batch_keys, &mut rng)?;
        let (loss, recon, forecast) = losses(&model, &batch, cfg.forecast_weight)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &params, 1.0)?;
        opt.step(&grads)?;
        st.step += 1;
        st.adam_step = opt.step_count();
        st.rng = rng.state();
        if st.step.is_multiple_of(cfg.log_every) || st.step == cfg.steps {
            let (vl, vr, vf) = losses(&model, &val_batch, cfg.forecast_weight)?;
            let sc = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
            let log = PretrainLog {
                step: st.step,
                loss: sc(&loss)?,
                recon: sc(&recon)?,
                forecast: sc(&forecast)?,
                val_loss: sc(&vl)?,
                val_recon: sc(&vr)?,
                val_forecast: sc(&vf)?,
            };
            progress(&log);
            logs.push(log);
        }
        if st.step.is_multiple_of(cfg.save_every) || st.step == cfg.steps {
            save(out, &vm, &opt, &st, &logs)?;
        }
    }
    if start == st.step && !state_path.exists() {
        save(out, &vm, &opt, &st, &logs)?;
    }
    Ok(PretrainReport {
        step: st.step,
        steps_run: st.step - start,
        logs,
        encoder_file: out.join(ENCODER_FILE),
    })
}

fn save(
    out: &Path,
    vm: &VarMap,
    opt: &AdamW,
    st: &PretrainState,
    logs: &[PretrainLog],
) -> Result<()> {
    let vars: Vec<(String, Tensor)> = named_vars(vm)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let enc: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(n, _)| n.starts_with("encoder."))
        .cloned()
        .collect();
    save_tensors_atomic(&out.join(MODEL_FILE), &vars)?;
    save_tensors_atomic(&out.join(OPTIMIZER_FILE), &opt.state_tensors())?;
    save_tensors_atomic(&out.join(ENCODER_FILE), &enc)?;
    let mut text = String::new();
    for l in logs {
        text += &serde_json::to_string(l).map_err(|e| Error::json("pretrain log", e))?;
        text.push('\n');
    }
    crate::atomic::write(&out.join(METRICS_FILE), text.as_bytes())?;
    let json = serde_json::to_vec_pretty(st).map_err(|e| Error::json("pretrain state", e))?;
    crate::atomic::write(&out.join(STATE_FILE), &json)
}

/// Set the `encoder.*` variables of `varmap` from `dir/encoder.safetensors` (a [`pretrain`]
/// output, or that file itself). Every encoder tensor of the policy must be there with its
/// shape, and nothing else: otherwise an error names the tensor (`ErrorKind::Shape` for a shape
/// mismatch). Returns the number of tensors set.
pub fn load_encoder(varmap: &VarMap, path: &Path) -> Result<usize> {
    let file = if path.is_dir() {
        path.join(ENCODER_FILE)
    } else {
        path.to_path_buf()
    };
    let vars: Vec<(String, Var)> = named_vars(varmap)
        .into_iter()
        .filter(|(n, _)| n.starts_with("encoder."))
        .collect();
    let dev = vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let shapes: Vec<(String, Vec<usize>)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    let tensors = load_tensors_checked(&file, &shapes, &dev)?;
    for (name, var) in &vars {
        var.set(&tensors[name].to_dtype(var.dtype())?)?;
    }
    Ok(vars.len())
}
