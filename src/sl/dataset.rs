//! Labels, the purged train / validation / test split, and batches of model inputs.

use candle_core::{Device, Result as CResult, Tensor};

use super::config::SlConfig;
use super::models::{N_CLASSES, N_EXTRA};
use crate::data::{MACRO, MarketData};
use crate::error::{Error, Result};
use crate::features::{Features, N_TECH, VOL_FLOOR, VOL_SPAN, WARMUP, WINDOW};
use crate::market::Market;

/// Class indices.
pub const DOWN: u8 = 0;
/// See [`DOWN`].
pub const FLAT: u8 = 1;
/// See [`DOWN`].
pub const UP: u8 = 2;

/// One labelled (path, bar, symbol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Path.
    pub p: u32,
    /// Bar (the window ends here; the label looks `horizon` bars ahead).
    pub t: u32,
    /// Symbol.
    pub s: u32,
    /// [`DOWN`], [`FLAT`] or [`UP`].
    pub class: u8,
}

/// Bar ranges (half-open) and samples of the three sets (module docs of [`crate::sl`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// First bar of the test period (`floor(T * train_fraction)`, the env's split).
    pub split: usize,
    /// Bars whose samples the models are fitted on.
    pub fit_bars: (usize, usize),
    /// Bars of the early-stopping slice (the end of the train period).
    pub val_bars: (usize, usize),
    /// Held-out bars (the env's test period).
    pub test_bars: (usize, usize),
    /// Fitting samples.
    pub fit: Vec<Sample>,
    /// Validation samples.
    pub val: Vec<Sample>,
    /// Held-out samples.
    pub test: Vec<Sample>,
}

/// The class of `ln(C[t + h] / C[t])` against the dead zone `dz * vol(t) * sqrt(h)`, for every
/// (path, bar, symbol), `[P, T, S]`; `None` where `t + h >= T`. `vol(t)` is the causal EWMA
/// volatility of the 1-bar log returns (span `VOL_SPAN`, as in `features`).
pub fn labels(md: &MarketData, horizon: usize, dead_zone: f64) -> Vec<Option<u8>> {
    let (pn, tn, sn) = (md.paths, md.bars, md.n_symbols());
    let mut out = vec![None; pn * tn * sn];
    let alpha = 2.0 / (VOL_SPAN + 1.0);
    for p in 0..pn {
        for s in 0..sn {
            let c = |t: usize| md.close[md.px(p, t, s)] as f64;
            let mut ewvar = 0.0f64;
            for t in 0..tn {
                if t > 0 {
                    let r = (c(t) / c(t - 1)).ln();
                    let a = alpha.max(1.0 / t as f64);
                    ewvar = (1.0 - a) * ewvar + a * r * r;
                }
                if t + horizon >= tn {
                    continue;
                }
                let vol = ewvar.sqrt().max(VOL_FLOOR);
                let r = (c(t + horizon) / c(t)).ln();
                let band = dead_zone * vol * (horizon as f64).sqrt();
                let class = if !r.is_finite() || r.abs() <= band {
                    FLAT
                } else if r > 0.0 {
                    UP
                } else {
                    DOWN
                };
                out[(p * tn + t) * sn + s] = Some(class);
            }
        }
    }
    out
}

impl Split {
    /// The purged split of `md` (module docs of [`crate::sl`]): the train period is
    /// `[0, floor(T * train_fraction))`; its labelled bars `[WARMUP, split - h)` (the last `h`
    /// purged, so no label reads a bar of the test period); of those, the last `val_fraction`
    /// are the validation slice and `h` more before it are purged from fitting; the held-out bars
    /// are `[split, T - h)`.
    pub fn new(md: &MarketData, cfg: &SlConfig, train_fraction: f64) -> Result<Self> {
        let (tn, h) = (md.bars, cfg.horizon);
        let split = (tn as f64 * train_fraction).floor() as usize;
        let first = WARMUP.max(WINDOW - 1);
        let train_end = split.saturating_sub(h);
        let n_train = train_end.saturating_sub(first);
        let n_val = ((n_train as f64) * cfg.val_fraction).ceil() as usize;
        let val0 = train_end.saturating_sub(n_val);
        let fit_end = val0.saturating_sub(h);
        if fit_end <= first + 1 || n_val == 0 || split + h + 1 > tn {
            return Err(Error::invalid(format!(
                "too few bars for the supervised models: {tn} bars, split at {split}, warm-up \
                 {first}, horizon {h}, validation fraction {} (need fitting, validation and \
                 test bars after purging)",
                cfg.val_fraction
            )));
        }
        let lab = labels(md, h, cfg.dead_zone);
        let sn = md.n_symbols();
        let collect = |lo: usize, hi: usize| {
            let mut v = Vec::new();
            for p in 0..md.paths {
                for t in lo..hi {
                    for s in 0..sn {
                        if let Some(class) = lab[(p * tn + t) * sn + s] {
                            v.push(Sample {
                                p: p as u32,
                                t: t as u32,
                                s: s as u32,
                                class,
                            });
                        }
                    }
                }
            }
            v
        };
        Ok(Self {
            split,
            fit_bars: (first, fit_end),
            val_bars: (val0, train_end),
            test_bars: (split, tn - h),
            fit: collect(first, fit_end),
            val: collect(val0, train_end),
            test: collect(split, tn - h),
        })
    }
}

/// Class frequencies of `samples`.
pub fn class_freq(samples: &[Sample]) -> [f64; N_CLASSES] {
    let mut f = [0.0; N_CLASSES];
    for s in samples {
        f[s.class as usize] += 1.0;
    }
    let n = samples.len().max(1) as f64;
    f.map(|v| v / n)
}

/// The inputs of (p, t, s) into `win` (`WINDOW * N_TECH`) and `extra` (`N_EXTRA`).
#[inline]
pub fn inputs_into(
    md: &MarketData,
    f: &Features,
    p: usize,
    t: usize,
    s: usize,
    win: &mut [f32],
    extra: &mut [f32],
) {
    f.window_into(p, t, s, win);
    let mi = (p * md.bars + t) * MACRO;
    extra[0] = md.sentiment[md.sx(p, t, s)];
    extra[1] = md.macro_series[mi];
    extra[2] = md.macro_series[mi + 1] / 100.0;
}

/// Model inputs of `keys` (p, t, s): windows `[B, WINDOW, N_TECH]` and extras `[B, N_EXTRA]`.
pub fn batch(
    market: &Market,
    keys: impl ExactSizeIterator<Item = (usize, usize, usize)>,
    dev: &Device,
) -> CResult<(Tensor, Tensor)> {
    let b = keys.len();
    let (md, f) = (&*market.data, &*market.features);
    let wl = WINDOW * N_TECH;
    let mut win = vec![0f32; b * wl];
    let mut extra = vec![0f32; b * N_EXTRA];
    for (i, (p, t, s)) in keys.enumerate() {
        inputs_into(
            md,
            f,
            p,
            t,
            s,
            &mut win[i * wl..(i + 1) * wl],
            &mut extra[i * N_EXTRA..(i + 1) * N_EXTRA],
        );
    }
    Ok((
        Tensor::from_vec(win, (b, WINDOW, N_TECH), dev)?,
        Tensor::from_vec(extra, (b, N_EXTRA), dev)?,
    ))
}

/// Inputs and targets of `samples`.
pub fn sample_batch(
    market: &Market,
    samples: &[Sample],
    dev: &Device,
) -> CResult<(Tensor, Tensor, Tensor)> {
    let (w, e) = batch(
        market,
        samples
            .iter()
            .map(|x| (x.p as usize, x.t as usize, x.s as usize)),
        dev,
    )?;
    let y: Vec<u32> = samples.iter().map(|x| x.class as u32).collect();
    let n = y.len();
    Ok((w, e, Tensor::from_vec(y, n, dev)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SyntheticConfig, generate};

    #[test]
    fn split_is_purged_and_labels_read_only_their_horizon() {
        let md = generate(
            &SyntheticConfig {
                symbols: 2,
                bars: 1000,
                ..SyntheticConfig::default()
            },
            "SPY",
        );
        let cfg = SlConfig {
            horizon: 5,
            ..SlConfig::default()
        };
        let sp = Split::new(&md, &cfg, 0.7).unwrap();
        assert_eq!(sp.split, 700);
        // No fitting or validation label reads a bar of the test period or of the next set.
        assert!(sp.fit.iter().all(|x| (x.t as usize) + 5 < sp.val_bars.0));
        assert!(sp.val.iter().all(|x| (x.t as usize) + 5 < sp.split));
        assert!(sp.test.iter().all(|x| (x.t as usize) >= sp.split));
        assert_eq!(sp.val_bars.1, 695);
        assert_eq!(sp.fit_bars.1 + 5, sp.val_bars.0);
        // A label depends on closes t and t + h only (and the causal vol): changing a later
        // close leaves it unchanged.
        let a = labels(&md, 5, 0.25);
        let s = md.n_symbols();
        for (factor, class) in [(1.5f32, UP), (0.5, DOWN)] {
            let mut md2 = md.clone();
            let i = md2.px(0, 900, 0);
            md2.close[i] *= factor;
            let b = labels(&md2, 5, 0.25);
            for t in 0..895 {
                assert_eq!(a[t * s], b[t * s], "bar {t}");
            }
            assert_eq!(b[895 * s], Some(class));
        }
    }
}
