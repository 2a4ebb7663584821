//! Training of the three models (`marl-trade sl train`): the models directory, early stopping,
//! held-out evaluation against the majority class and the class frequencies, resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::config::SlConfig;
use super::dataset::{Sample, Split, class_freq, sample_batch};
use super::models::{ModelKind, N_CLASSES, SlModel, param_count};
use crate::agents::init::named_vars;
use crate::error::{Error, ErrorKind, Result};
use crate::market::Market;
use crate::priors::{data_fingerprint, hash_bytes};
use crate::rng::SplitMix64;
use crate::train::checkpoint::{load_params, save_params};
use crate::train::{AdamW, AdamWConfig};

/// The models directory's description of what its models are (`sl.json`).
pub const META_FILE: &str = "sl.json";
/// The report of the last `sl train` (`report.json`).
pub const REPORT_FILE: &str = "report.json";
/// Batch size of inference (validation, evaluation, cache).
const EVAL_BATCH: usize = 2048;

/// What the models of a directory were trained with (`sl.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlMeta {
    /// The `[sl]` section (without `models`).
    pub config: SlConfig,
    /// `env.train_fraction`: the train / test split.
    pub train_fraction: f64,
    /// Fingerprint of the training data (`priors::data_fingerprint`), hex.
    pub data_fingerprint: String,
    /// The data's symbols, in order.
    pub symbols: Vec<String>,
}

impl SlMeta {
    /// The description of models trained with `cfg` on `market`.
    pub fn new(cfg: &SlConfig, train_fraction: f64, market: &Market) -> Self {
        Self {
            config: SlConfig {
                models: None,
                ..cfg.clone()
            },
            train_fraction,
            data_fingerprint: format!("{:016x}", data_fingerprint(&market.data)),
            symbols: market.data.symbols.clone(),
        }
    }
}

/// One epoch of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// The model.
    pub model: ModelKind,
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's fitting batches.
    pub fit_loss: f64,
    /// Log-loss on the validation slice after the epoch.
    pub val_loss: f64,
    /// Accuracy on the validation slice after the epoch.
    pub val_accuracy: f64,
    /// Whether this epoch's validation log-loss is the best so far (its parameters are kept).
    pub improved: bool,
    /// Seconds of the epoch (fit + validation).
    pub seconds: f64,
}

impl EpochLog {
    /// One progress line.
    pub fn line(&self) -> String {
        format!(
            "{:<4} epoch {:>3}: fit loss {:.4}, val loss {:.4}, val acc {:.4}{} ({:.1} s)",
            self.model.name(),
            self.epoch,
            self.fit_loss,
            self.val_loss,
            self.val_accuracy,
            if self.improved { " *" } else { "" },
            self.seconds
        )
    }
}

/// A model's predictions on the held-out bars, against the baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// Held-out samples.
    pub n: usize,
    /// Fraction predicted right (arg-max class).
    pub accuracy: f64,
    /// Mean negative log-likelihood of the true class (nats).
    pub log_loss: f64,
    /// Observed class frequencies (down, flat, up) on the held-out bars.
    pub class_freq: [f64; N_CLASSES],
    /// Mean predicted probability of each class (calibration in the large: compare with
    /// `class_freq`).
    pub mean_prob: [f64; N_CLASSES],
    /// Expected calibration error of the top-class probability, 10 equal-width bins.
    pub ece: f64,
    /// The fitting set's most frequent class (the majority baseline's constant prediction).
    pub majority_class: u8,
    /// The majority baseline's held-out accuracy.
    pub majority_accuracy: f64,
    /// Paired z-score of (model right - majority right) over the held-out samples: mean / (sd /
    /// sqrt n).
    pub z_vs_majority: f64,
    /// Log-loss of predicting the fitting set's class frequencies for every sample.
    pub prior_log_loss: f64,
}

/// One model's training and evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// The model.
    pub model: ModelKind,
    /// Its hidden size.
    pub hidden: usize,
    /// Its parameters.
    pub params: usize,
    /// Epochs run.
    pub epochs: usize,
    /// The epoch whose parameters were kept.
    pub best_epoch: usize,
    /// Its validation log-loss.
    pub best_val_loss: f64,
    /// Held-out evaluation.
    pub held_out: HeldOut,
    /// Training seconds.
    pub seconds: f64,
    /// Every epoch.
    pub epoch_log: Vec<EpochLog>,
}

/// The report of `marl-trade sl train` (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlReport {
    /// What the models were trained with.
    pub meta: SlMeta,
    /// First bar of the test period.
    pub split: usize,
    /// Bars `[lo, hi)` of the fitting samples.
    pub fit_bars: (usize, usize),
    /// Bars of the validation slice.
    pub val_bars: (usize, usize),
    /// Held-out bars.
    pub test_bars: (usize, usize),
    /// Samples per set: fit, validation, held-out.
    pub samples: [usize; 3],
    /// Class frequencies of the fitting set.
    pub fit_class_freq: [f64; N_CLASSES],
    /// The three models.
    pub models: Vec<ModelReport>,
}

impl SlReport {
    /// The report as a text table.
    pub fn text(&self) -> String {
        let f = |a: &[f64; 3]| format!("{:.3}/{:.3}/{:.3}", a[0], a[1], a[2]);
        let mut s = format!(
            "supervised priors: horizon {} bars, dead zone {} vol; fit bars {:?}, validation {:?} \
             (purged by {} bars), held-out {:?}; samples fit {} / val {} / held-out {}; fit class \
             freq (down/flat/up) {}\n",
            self.meta.config.horizon,
            self.meta.config.dead_zone,
            self.fit_bars,
            self.val_bars,
            self.meta.config.horizon,
            self.test_bars,
            self.samples[0],
            self.samples[1],
            self.samples[2],
            f(&self.fit_class_freq)
        );
        s += "model  hidden  params  epochs(best)  acc     majority  z      logloss  prior-ll  \
              ECE    mean P (d/f/u)     held-out freq\n";
        for m in &self.models {
            let h = &m.held_out;
            s += &format!(
                "{:<6} {:>6} {:>7}  {:>3} ({:>3})     {:.4}  {:.4}    {:>5.2}  {:.4}   {:.4}    \
                 {:.4}  {}  {}\n",
                m.model.name(),
                m.hidden,
                m.params,
                m.epochs,
                m.best_epoch,
                h.accuracy,
                h.majority_accuracy,
                h.z_vs_majority,
                h.log_loss,
                h.prior_log_loss,
                h.ece,
                f(&h.mean_prob),
                f(&h.class_freq)
            );
        }
        s
    }

    /// The report of `model`.
    pub fn model(&self, model: ModelKind) -> Option<&ModelReport> {
        self.models.iter().find(|m| m.model == model)
    }
}

/// How `sl train` runs.
pub struct SlTrainOptions<'a> {
    /// The models directory.
    pub out: PathBuf,
    /// Overwrite a directory that holds models of another configuration or other data.
    pub force: bool,
    /// Called after every epoch.
    pub progress: &'a mut dyn FnMut(&EpochLog),
}

/// Class probabilities of `samples` (batched inference).
pub fn predict(model: &SlModel, market: &Market, samples: &[Sample]) -> Result<Vec<[f32; 3]>> {
    let dev = Device::Cpu;
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(EVAL_BATCH) {
        let (w, e, _) = sample_batch(market, chunk, &dev)?;
        let p: Vec<Vec<f32>> = model.probs(&w, &e)?.to_vec2()?;
        out.extend(p.into_iter().map(|r| [r[0], r[1], r[2]]));
    }
    Ok(out)
}

fn log_loss_acc(probs: &[[f32; 3]], samples: &[Sample]) -> (f64, f64) {
    let n = samples.len().max(1) as f64;
    let mut ll = 0.0;
    let mut right = 0usize;
    for (p, s) in probs.iter().zip(samples) {
        ll -= (p[s.class as usize] as f64).max(1e-12).ln();
        if argmax(p) == s.class as usize {
            right += 1;
        }
    }
    (ll / n, right as f64 / n)
}

/// Index of the largest value (the first of equals).
fn argmax<T: PartialOrd + Copy>(p: &[T; 3]) -> usize {
    let mut best = 0;
    for (k, &v) in p.iter().enumerate().skip(1) {
        if v > p[best] {
            best = k;
        }
    }
    best
}

/// The held-out evaluation of `probs` against the majority class and the class frequencies of
/// `fit_freq`.
pub fn held_out(probs: &[[f32; 3]], samples: &[Sample], fit_freq: &[f64; 3]) -> HeldOut {
    let n = samples.len();
    let nf = n.max(1) as f64;
    let (log_loss, accuracy) = log_loss_acc(probs, samples);
    let majority = argmax(fit_freq);
    let mut mean_prob = [0.0f64; 3];
    let (mut sum_d, mut sum_d2, mut maj_right) = (0.0f64, 0.0f64, 0usize);
    let mut prior_ll = 0.0;
    let mut bins = [(0usize, 0.0f64, 0.0f64); 10];
    for (p, s) in probs.iter().zip(samples) {
        for (m, &v) in mean_prob.iter_mut().zip(p) {
            *m += v as f64 / nf;
        }
        let a = argmax(p);
        let right = (a == s.class as usize) as u8 as f64;
        let mright = (majority == s.class as usize) as u8 as f64;
        maj_right += mright as usize;
        let d = right - mright;
        sum_d += d;
        sum_d2 += d * d;
        prior_ll -= fit_freq[s.class as usize].max(1e-12).ln();
        let conf = p[a] as f64;
        let b = ((conf * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += conf;
        bins[b].2 += right;
    }
    let mean_d = sum_d / nf;
    let var_d = if n > 1 {
        (sum_d2 - nf * mean_d * mean_d) / (nf - 1.0)
    } else {
        0.0
    };
    let z = if var_d > 0.0 {
        mean_d / (var_d / nf).sqrt()
    } else {
        0.0
    };
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|b| (b.0 as f64 / nf) * ((b.2 - b.1) / b.0 as f64).abs())
        .sum();
    HeldOut {
        n,
        accuracy,
        log_loss,
        class_freq: class_freq(samples),
        mean_prob,
        ece,
        majority_class: majority as u8,
        majority_accuracy: maj_right as f64 / nf,
        z_vs_majority: z,
        prior_log_loss: prior_ll / nf,
    }
}

/// Train one model on `split.fit` with early stopping on `split.val` (the best epoch's parameters
/// are kept).
pub fn fit_model(
    kind: ModelKind,
    cfg: &SlConfig,
    market: &Market,
    split: &Split,
    progress: &mut dyn FnMut(&EpochLog),
) -> Result<(SlModel, VarMap, Vec<EpochLog>)> {
    let dev = Device::Cpu;
    let (model, vm) = SlModel::seeded(kind, cfg, &dev)?;
    let vars = named_vars(&vm);
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut order: Vec<usize> = (0..split.fit.len()).collect();
    let mut rng = SplitMix64::new(crate::rng::hash2(cfg.seed ^ 0x5e1f, kind.channel() as u64));
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut log = Vec::new();
    let mut batch = Vec::with_capacity(cfg.batch_size);
    for epoch in 1..=cfg.max_epochs {
        let t0 = Instant::now();
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let (mut sum, mut steps) = (0.0f64, 0usize);
        for idx in order.chunks(cfg.batch_size) {
            batch.clear();
            batch.extend(idx.iter().map(|&i| split.fit[i]));
            let (w, e, y) = sample_batch(market, &batch, &dev)?;
            let loss = candle_nn::loss::cross_entropy(&model.forward(&w, &e)?, &y)?;
            opt.step(&loss.backward()?)?;
            sum += loss.to_scalar::<f32>()? as f64;
            steps += 1;
        }
        let probs = predict(&model, market, &split.val)?;
        let (val_loss, val_accuracy) = log_loss_acc(&probs, &split.val);
        if !val_loss.is_finite() {
            return Err(Error::new(
                ErrorKind::Model,
                format!(
                    "{}: validation loss is not finite at epoch {epoch} (lower sl.learning_rate?)",
                    kind.name()
                ),
            ));
        }
        let improved = best.as_ref().is_none_or(|b| val_loss < b.0);
        if improved {
            let copies = vars
                .iter()
                .map(|(_, v)| v.as_tensor().copy())
                .collect::<candle_core::Result<Vec<_>>>()?;
            best = Some((val_loss, epoch, copies));
        }
        let entry = EpochLog {
            model: kind,
            epoch,
            fit_loss: sum / steps.max(1) as f64,
            val_loss,
            val_accuracy,
            improved,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress(&entry);
        log.push(entry);
        let best_epoch = best.as_ref().map_or(epoch, |b| b.1);
        if epoch - best_epoch >= cfg.patience {
            break;
        }
    }
    if let Some((_, _, copies)) = &best {
        for ((_, v), c) in vars.iter().zip(copies) {
            v.set(c)?;
        }
    }
    Ok((model, vm, log))
}

fn checkpoint_path(dir: &Path, kind: ModelKind) -> PathBuf {
    dir.join(format!("{}.safetensors", kind.name()))
}

fn model_report_path(dir: &Path, kind: ModelKind) -> PathBuf {
    dir.join(format!("{}.report.json", kind.name()))
}

fn write_json<T: Serialize>(path: &Path, what: &str, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::json(what, e))?;
    crate::atomic::write(path, format!("{text}\n").as_bytes())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(path, format!("cannot parse: {e}")).with_source(e))
}

/// Train the three models on `market`'s train period into `opts.out` and evaluate them on the
/// held-out bars (`marl-trade sl train`). Resumable: a directory that already holds this
/// configuration's models for this data keeps the models it finished (their checkpoint and report
/// written) and trains the rest; one with another configuration or data is refused unless
/// `opts.force`.
pub fn train_all(
    cfg: &SlConfig,
    train_fraction: f64,
    market: &Market,
    opts: SlTrainOptions,
) -> Result<SlReport> {
    let dir = &opts.out;
    let meta = SlMeta::new(cfg, train_fraction, market);
    let meta_path = dir.join(META_FILE);
    if meta_path.exists() {
        let old: Result<SlMeta> = read_json(&meta_path);
        let same = old.as_ref().is_ok_and(|o| *o == meta);
        if !same {
            if !opts.force {
                return Err(Error::new(
                    ErrorKind::RunMismatch,
                    "the directory holds supervised models of another configuration or other \
                     data; choose another --out or pass --force to replace them",
                )
                .with_file(&meta_path));
            }
            for kind in ModelKind::ALL {
                for p in [checkpoint_path(dir, kind), model_report_path(dir, kind)] {
                    if p.exists() {
                        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                    }
                }
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_json(&meta_path, "sl.json", &meta)?;
    let split = Split::new(&market.data, cfg, train_fraction)?;
    let fit_freq = class_freq(&split.fit);
    let mut models = Vec::new();
    for kind in ModelKind::ALL {
        let (ck, rp) = (checkpoint_path(dir, kind), model_report_path(dir, kind));
        if ck.exists() && rp.exists() {
            models.push(read_json::<ModelReport>(&rp)?);
            continue;
        }
        let t0 = Instant::now();
        let (model, vm, log) = fit_model(kind, cfg, market, &split, opts.progress)?;
        let seconds = t0.elapsed().as_secs_f64();
        save_params(&vm, &ck)?;
        let probs = predict(&model, market, &split.test)?;
        let best = log
            .iter()
            .rev()
            .find(|e| e.improved)
            .expect("at least one epoch");
        let r = ModelReport {
            model: kind,
            hidden: kind.hidden(cfg),
            params: param_count(&vm),
            epochs: log.len(),
            best_epoch: best.epoch,
            best_val_loss: best.val_loss,
            held_out: held_out(&probs, &split.test, &fit_freq),
            seconds,
            epoch_log: log,
        };
        write_json(&rp, "model report", &r)?;
        models.push(r);
    }
    let report = SlReport {
        meta,
        split: split.split,
        fit_bars: split.fit_bars,
        val_bars: split.val_bars,
        test_bars: split.test_bars,
        samples: [split.fit.len(), split.val.len(), split.test.len()],
        fit_class_freq: fit_freq,
        models,
    };
    write_json(&dir.join(REPORT_FILE), "sl report", &report)?;
    Ok(report)
}

/// The trained models of a directory.
pub struct SlModels {
    /// What they were trained with.
    pub meta: SlMeta,
    /// MLP, LSTM, GRU (cache-channel order).
    pub models: Vec<SlModel>,
    /// Their parameters (one `VarMap` each).
    pub varmaps: Vec<VarMap>,
    /// [`models_fingerprint`] of the directory.
    pub fingerprint: u64,
}

impl SlModels {
    /// Load the three models of `dir` (names and shapes checked against `sl.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let meta: SlMeta = read_json(&dir.join(META_FILE))?;
        let dev = Device::Cpu;
        let (mut models, mut varmaps) = (Vec::new(), Vec::new());
        for kind in ModelKind::ALL {
            let (m, vm) = SlModel::seeded(kind, &meta.config, &dev)?;
            load_params(&vm, &checkpoint_path(dir, kind))?;
            models.push(m);
            varmaps.push(vm);
        }
        Ok(Self {
            fingerprint: models_fingerprint(dir)?,
            meta,
            models,
            varmaps,
        })
    }
}

/// A fingerprint of a models directory: `sl.json` and the three checkpoints, byte for byte.
pub fn models_fingerprint(dir: &Path) -> Result<u64> {
    let mut h = 0x534c_4d4f_4445_4c53u64;
    let mut files = vec![dir.join(META_FILE)];
    files.extend(ModelKind::ALL.map(|k| checkpoint_path(dir, k)));
    for f in files {
        let b = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        h = hash_bytes(h, &b);
    }
    Ok(h)
}
