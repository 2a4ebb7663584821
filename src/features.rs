/*!
Causal features, computed once per data set and stored densely.

`tech` is `[P, S, T, N_TECH]` f32 (23 technical features per symbol per bar; one symbol's bars are
contiguous, so the window of an observation is one contiguous run of `WINDOW * N_TECH` floats), `regime` is
`[P, T, N_REGIME]` f32 (trend, breadth, mean pairwise correlation, VIX proxy). Every value at bar t is
a function of bars `<= t` only, normalisation included. The environment starts episodes at bar
`>= WARMUP`, so the window of the last [`WINDOW`] bars is always fully defined.

# Normalisation

No global statistics: every scale is causal. `r(t) = ln(C[t] / C[t-1])` (0 at t = 0); `vol(t)` is the
EWMA of `r^2` with `alpha = 2 / (VOL_SPAN + 1)` (`VOL_SPAN = 96` bars; during the first bars
`alpha = max(alpha, 1 / t)`, i.e. the plain mean of what is available), square-rooted and floored
at `VOL_FLOOR`. Trailing windows of n bars use the `min(n, t + 1)` bars available; window sums come
from prefix sums accumulated in time order (so they too depend on bars `<= t` only), and a price
window whose sd is below `1e-5` of its mean counts as flat. Features that divide
by `vol` are 0 at t = 0 (no return known yet). Every feature is finally clipped (`[-5, 5]` unless noted)
and a non-finite value (impossible with validated data) becomes 0.

# Technical features ([`TECH_NAMES`], index: definition)

- 0..=4 `ret_h`, h in 1, 3, 6, 12, 24: `ln(C[t] / C[t-h]) / (vol * sqrt(h))` (h capped at t).
- 5 `rv_12_rel`: `ln(rv12 / vol)` with `rv_n = sqrt(mean of r^2 over the last n returns)`.
- 6 `rv_48_ann`: `rv48 * sqrt(bars per year)` (annualised realised vol).
- 7 `rsi_14`: `(RSI - 50) / 50 = (G - L) / (G + L)`, Wilder averages (alpha 1/14) of gains and losses.
- 8 `macd`: `0.5 * (EMA12(C) - EMA26(C)) / C / vol`; 9 `macd_signal`: its EMA(9);
  10 `macd_hist`: `2 * (macd - signal)`.
- 11 `bb_pct_b`: Bollinger %B(20, 2) - 0.5 `= (C - MA20) / (4 SD20)`, clipped to [-2, 2];
  12 `bb_width`: `ln(4 SD20 / MA20 / vol) - 2`.
- 13 `atr_14`: `ln(ATR14 / C / vol)`, ATR with Wilder smoothing of the true range.
- 14 `volume_z_48`: z-score of `ln(1 + V)` over the last 48 bars (0 when their sd < 1e-3).
- 15..=17 `ma_ratio_n`, n in 10, 24, 48: `(C / MA_n - 1) / (vol * sqrt(n))`.
- 18 `stoch_k_14`: `2 (C - LL14) / (HH14 - LL14) - 1` in [-1, 1]; 19 `stoch_d_3`: mean of the last 3 %K.
- 20 `range`: `ln((H - L) / C / vol)` (floored at ln 1e-6 before clipping); 21 `clv`:
  `((C - L) - (H - C)) / (H - L)` in [-1, 1] (0 when H = L).
- 22 `sentiment`: the data's sentiment series as given.

# Regime features ([`REGIME_NAMES`])

- 0 `trend`: `(B[t] / MA48(B) - 1) / (vol_B * sqrt(48))`, B the benchmark close, `vol_B` its EWMA vol.
- 1 `breadth`: `2 * (fraction of symbols with C > MA24) - 1`, in [-1, 1].
- 2 `mean_corr`: mean pairwise correlation of the symbols' 1-bar returns over the last 48 returns,
  computed exactly in O(S) per bar and window bar from the identity
  `sum_ij rho_ij = Var(sum_i z_i)`, z the window-standardised returns:
  `rho_bar = (Var(sum_i z_i) - S') / (S' (S' - 1))` over the S' symbols with non-zero window sd;
  0 with fewer than 3 returns or 2 such symbols. Clipped to [-1, 1].
- 3 `vix_proxy`: annualised sd of the benchmark's 1-bar log returns over the last 48 bars
  (a VIX-like level / 100).

The longest lookback is 48 bars (+1 for returns); `WARMUP = 96 >= 48 + 1 + WINDOW`.
*/

use rayon::prelude::*;

use crate::data::MarketData;

/// Technical features per symbol per bar.
pub const N_TECH: usize = 23;
/// Regime features per bar.
pub const N_REGIME: usize = 4;
/// Bars in the technical window of one observation.
pub const WINDOW: usize = 24;
/// First bar at which an episode may start: every feature of the window ending there is defined.
pub const WARMUP: usize = 96;

/// Dense causal features.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Paths P.
    pub paths: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Symbols S.
    pub symbols: usize,
    /// `[P, S, T, N_TECH]`: one symbol's bars are contiguous (use [`Features::tech_index`]).
    pub tech: Vec<f32>,
    /// `[P, T, N_REGIME]`
    pub regime: Vec<f32>,
}

impl Features {
    /// Offset of `tech[p, t, s, 0]`.
    #[inline]
    pub fn tech_index(&self, p: usize, t: usize, s: usize) -> usize {
        ((p * self.symbols + s) * self.bars + t) * N_TECH
    }

    /// The regime features of bar t of path p.
    #[inline]
    pub fn regime_at(&self, p: usize, t: usize) -> &[f32] {
        let i = (p * self.bars + t) * N_REGIME;
        &self.regime[i..i + N_REGIME]
    }

    /// The window of bars `t + 1 - WINDOW ..= t` of symbol s (oldest first), `WINDOW * N_TECH`
    /// contiguous floats. Requires `t + 1 >= WINDOW`.
    #[inline]
    pub fn window(&self, p: usize, t: usize, s: usize) -> &[f32] {
        debug_assert!(t + 1 >= WINDOW);
        let i = self.tech_index(p, t + 1 - WINDOW, s);
        &self.tech[i..i + WINDOW * N_TECH]
    }

    /// Copy the window of bars `t + 1 - WINDOW ..= t` of symbol s (oldest first) into `out`
    /// (`WINDOW * N_TECH` floats, one contiguous copy). Requires `t + 1 >= WINDOW`.
    #[inline]
    pub fn window_into(&self, p: usize, t: usize, s: usize, out: &mut [f32]) {
        out.copy_from_slice(self.window(p, t, s));
    }

    /// Compute all features of `md` (see the module docs for the definitions). Parallel over
    /// paths and symbols; the result does not depend on the thread count.
    pub fn compute(md: &MarketData) -> Features {
        let (p_len, t_len, s) = (md.paths, md.bars, md.n_symbols());
        let bpy = md.bars_per_year().max(1.0);
        // Per (path, symbol) pass: technical features and the per-bar inputs of the regime features.
        let groups = s.div_ceil(GROUP);
        let outs: Vec<SymOut> = (0..p_len * groups)
            .into_par_iter()
            .flat_map_iter(|pg| {
                let (p, g) = (pg / groups, pg % groups);
                let (s0, s1) = (g * GROUP, ((g + 1) * GROUP).min(s));
                SymInput::extract_group(md, p, s0, s1)
                    .into_iter()
                    .map(move |input| symbol_pass(&input, bpy))
            })
            .collect();

        // `[P, S, T, N_TECH]`: each (path, symbol) pass is one contiguous block.
        let mut tech = vec![0.0f32; p_len * t_len * s * N_TECH];
        if s > 0 && t_len > 0 {
            tech.par_chunks_mut(t_len * N_TECH)
                .zip(outs.par_iter())
                .for_each(|(dst, o)| dst.copy_from_slice(&o.tech[..t_len * N_TECH]));
        }

        let mut regime = vec![0.0f32; p_len * t_len * N_REGIME];
        for p in 0..p_len {
            let outs_p = &outs[p * s..(p + 1) * s];
            let dst = &mut regime[p * t_len * N_REGIME..(p + 1) * t_len * N_REGIME];
            regime_pass(md, p, outs_p, bpy, dst);
        }
        Features {
            paths: p_len,
            bars: t_len,
            symbols: s,
            tech,
            regime,
        }
    }
}

/// Names of the technical features, in storage order.
pub const TECH_NAMES: [&str; N_TECH] = [
    "ret_1",
    "ret_3",
    "ret_6",
    "ret_12",
    "ret_24",
    "rv_12_rel",
    "rv_48_ann",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pct_b",
    "bb_width",
    "atr_14",
    "volume_z_48",
    "ma_ratio_10",
    "ma_ratio_24",
    "ma_ratio_48",
    "stoch_k_14",
    "stoch_d_3",
    "range",
    "clv",
    "sentiment",
];

/// Names of the regime features, in storage order.
pub const REGIME_NAMES: [&str; N_REGIME] = ["trend", "breadth", "mean_corr", "vix_proxy"];

/// Span of the EWMA of squared 1-bar log returns that scales most features (`alpha = 2 / (span + 1)`).
pub const VOL_SPAN: f64 = 96.0;
/// Floor of the per-bar EWMA volatility used as a divisor.
pub const VOL_FLOOR: f64 = 1e-5;
/// Every feature is clipped to `[-CLIP, CLIP]` (some to a tighter range, see the module docs).
pub const CLIP: f64 = 5.0;
/// Return horizons of `ret_*`, in bars.
pub const RET_HORIZONS: [usize; 5] = [1, 3, 6, 12, 24];
/// Trailing window (bars) of the mean-correlation, VIX-proxy and trend regime features.
pub const REGIME_WINDOW: usize = 48;

const MACD_SCALE: f64 = 0.5;
const BB_N: usize = 20;
const STOCH_N: usize = 14;
const RSI_N: f64 = 14.0;
const ATR_N: f64 = 14.0;
const VOLZ_N: usize = 48;
const MA_NS: [usize; 3] = [10, 24, 48];
/// Symbols read and processed together by one task.
const GROUP: usize = 8;
/// A price window whose sd is below this fraction of its mean counts as flat (rounding of the
/// prefix sums).
const FLAT_REL: f64 = 1e-5;

/// One symbol's series as f64, `[T]`.
struct SymInput {
    c: Vec<f64>,
    h: Vec<f64>,
    l: Vec<f64>,
    v: Vec<f64>,
    sent: Vec<f64>,
}

impl SymInput {
    /// The series of symbols `s0..s1` of path p. Reading a group at once walks each `[T, S + 1]`
    /// array once per group instead of once per symbol (the arrays are symbol-minor).
    fn extract_group(md: &MarketData, p: usize, s0: usize, s1: usize) -> Vec<Self> {
        let t_len = md.bars;
        let mut out: Vec<SymInput> = (s0..s1)
            .map(|_| SymInput {
                c: Vec::with_capacity(t_len),
                h: Vec::with_capacity(t_len),
                l: Vec::with_capacity(t_len),
                v: Vec::with_capacity(t_len),
                sent: Vec::with_capacity(t_len),
            })
            .collect();
        for t in 0..t_len {
            let (a, b) = (md.px(p, t, s0), md.px(p, t, s1));
            let sa = md.sx(p, t, s0);
            for (k, x) in out.iter_mut().enumerate() {
                x.c.push(pos(md.close[a + k] as f64));
                x.h.push(pos(md.high[a + k] as f64));
                x.l.push(pos(md.low[a + k] as f64));
                let v = md.volume[a + k] as f64;
                x.v.push(if v.is_finite() { v.max(0.0) } else { 0.0 });
                let e = md.sentiment.get(sa + k).copied().unwrap_or(0.0) as f64;
                x.sent.push(if e.is_finite() { e } else { 0.0 });
            }
            debug_assert_eq!(b - a, s1 - s0);
        }
        out
    }
}

/// A price made safe for logs and divisions (validated data is already finite and > 0).
#[inline]
fn pos(x: f64) -> f64 {
    if x.is_finite() && x > 1e-12 { x } else { 1e-12 }
}

/// Clip to `[-lim, lim]`; non-finite becomes 0.
#[inline]
fn clip(x: f64, lim: f64) -> f32 {
    if x.is_finite() {
        x.clamp(-lim, lim) as f32
    } else {
        0.0
    }
}

/// Start of the trailing window of `w` bars ending at t (inclusive), clipped at `lo`.
#[inline]
fn win_start(t: usize, w: usize, lo: usize) -> usize {
    (t + 1).saturating_sub(w).max(lo)
}

/// Output of the per-symbol pass.
struct SymOut {
    /// `[T, N_TECH]`
    tech: Vec<f32>,
    /// 1-bar log returns, `lr[0] = 0`.
    lr: Vec<f64>,
    /// Mean and 1 / sd of `lr` over the trailing `REGIME_WINDOW` returns (0 when undefined).
    r_mean: Vec<f64>,
    r_inv_sd: Vec<f64>,
    /// 1 if close > MA(24), else 0.
    above: Vec<u8>,
}

/// Prefix sums `P[0] = 0, P[t + 1] = P[t] + f(x[t])`, accumulated in order (so `P[..=t + 1]` depends
/// on `x[..=t]` only).
fn prefix(x: &[f64], f: impl Fn(f64) -> f64) -> Vec<f64> {
    let mut p = Vec::with_capacity(x.len() + 1);
    let mut acc = 0.0f64;
    p.push(acc);
    for &v in x {
        acc += f(v);
        p.push(acc);
    }
    p
}

/// Trailing-window mean and population variance from prefix sums of x and x^2: window of `w` values
/// ending at t, clipped at `lo`. Returns (n, mean, var); var is clamped at 0 (rounding).
#[inline]
fn win_moments(p1: &[f64], p2: &[f64], t: usize, w: usize, lo: usize) -> (f64, f64, f64) {
    let a = win_start(t, w, lo);
    if a > t {
        return (0.0, 0.0, 0.0);
    }
    let n = (t + 1 - a) as f64;
    let m = (p1[t + 1] - p1[a]) / n;
    let v = ((p2[t + 1] - p2[a]) / n - m * m).max(0.0);
    (n, m, v)
}

fn symbol_pass(x: &SymInput, bpy: f64) -> SymOut {
    let t_len = x.c.len();
    let mut tech = vec![0.0f32; t_len * N_TECH];
    let lc: Vec<f64> = x.c.iter().map(|c| c.ln()).collect();
    let lv: Vec<f64> = x.v.iter().map(|v| v.ln_1p()).collect();
    let mut lr = vec![0.0f64; t_len];
    for t in 1..t_len {
        lr[t] = lc[t] - lc[t - 1];
    }
    // prefix sums: close, close^2, r, r^2, log volume, log volume^2
    let (pc, pc2) = (prefix(&x.c, |v| v), prefix(&x.c, |v| v * v));
    let (pr, pr2) = (prefix(&lr, |v| v), prefix(&lr, |v| v * v));
    let (pv, pv2) = (prefix(&lv, |v| v), prefix(&lv, |v| v * v));
    let mut r_mean = vec![0.0f64; t_len];
    let mut r_inv_sd = vec![0.0f64; t_len];
    let mut above = vec![0u8; t_len];
    let mut stoch_k = vec![0.0f64; t_len];

    let ew_alpha = 2.0 / (VOL_SPAN + 1.0);
    let mut ewvar = 0.0f64;
    let (mut rsi_g, mut rsi_l) = (0.0f64, 0.0f64);
    let c0 = x.c.first().copied().unwrap_or(1.0);
    let (mut ema12, mut ema26, mut macd_sig) = (c0, c0, 0.0f64);
    let mut atr = 0.0f64;
    let ann = bpy.sqrt();

    for (t, f) in tech.chunks_exact_mut(N_TECH).enumerate() {
        let c = x.c[t];
        if t > 0 {
            let a = ew_alpha.max(1.0 / t as f64);
            ewvar = (1.0 - a) * ewvar + a * lr[t] * lr[t];
        }
        let has_vol = t > 0 && ewvar > 0.0;
        let vol = ewvar.sqrt().max(VOL_FLOOR);
        // scale-free division by the EWMA volatility; 0 before any return is known
        let by_vol = |num: f64| if has_vol { num / vol } else { 0.0 };

        // 0..=4: log returns over horizons, in units of vol * sqrt(horizon)
        for (k, &h) in RET_HORIZONS.iter().enumerate() {
            let back = h.min(t);
            f[k] = if back > 0 {
                clip(by_vol((lc[t] - lc[t - back]) / (back as f64).sqrt()), CLIP)
            } else {
                0.0
            };
        }
        // 5: log ratio of 12-bar realised vol to the EWMA vol; 6: annualised 48-bar realised vol
        if t > 0 {
            let rv = |w: usize| {
                let a = win_start(t, w, 1);
                ((pr2[t + 1] - pr2[a]).max(0.0) / (t + 1 - a) as f64).sqrt()
            };
            f[5] = if has_vol {
                clip((rv(12).max(1e-12) / vol).ln(), CLIP)
            } else {
                0.0
            };
            f[6] = clip(rv(48) * ann, CLIP);
            let (_, m, var) = win_moments(&pr, &pr2, t, REGIME_WINDOW, 1);
            r_mean[t] = m;
            r_inv_sd[t] = if var > 1e-18 { 1.0 / var.sqrt() } else { 0.0 };
        }
        // 7: RSI(14), Wilder smoothing, as (RSI - 50) / 50 = (gain - loss) / (gain + loss)
        if t > 0 {
            let d = c - x.c[t - 1];
            let a = (1.0 / RSI_N).max(1.0 / t as f64);
            rsi_g = (1.0 - a) * rsi_g + a * d.max(0.0);
            rsi_l = (1.0 - a) * rsi_l + a * (-d).max(0.0);
            f[7] = if rsi_g + rsi_l > 0.0 {
                clip((rsi_g - rsi_l) / (rsi_g + rsi_l), 1.0)
            } else {
                0.0
            };
        }
        // 8..=10: MACD(12, 26) / close / vol, its EMA(9) signal and the histogram
        ema12 += (2.0 / 13.0) * (c - ema12);
        ema26 += (2.0 / 27.0) * (c - ema26);
        let macd = MACD_SCALE * by_vol((ema12 - ema26) / c);
        macd_sig += (2.0 / 10.0) * (macd - macd_sig);
        f[8] = clip(macd, CLIP);
        f[9] = clip(macd_sig, CLIP);
        f[10] = clip(2.0 * (macd - macd_sig), CLIP);
        // 11, 12: Bollinger(20, 2): %B - 0.5 and log band width relative to vol
        let (_, m20, var20) = win_moments(&pc, &pc2, t, BB_N, 0);
        let sd20 = var20.sqrt();
        if sd20 > FLAT_REL * m20 {
            f[11] = clip((c - m20) / (4.0 * sd20), 2.0);
            f[12] = if has_vol {
                clip((4.0 * sd20 / m20 / vol).ln() - 2.0, CLIP)
            } else {
                0.0
            };
        }
        // 13: ATR(14) / close / vol, as a log ratio
        let tr = if t > 0 {
            let cp = x.c[t - 1];
            (x.h[t] - x.l[t])
                .max((x.h[t] - cp).abs())
                .max((x.l[t] - cp).abs())
        } else {
            x.h[t] - x.l[t]
        };
        atr += (1.0 / ATR_N).max(1.0 / (t + 1) as f64) * (tr - atr);
        f[13] = if has_vol {
            clip(by_vol(atr / c).max(1e-6).ln(), CLIP)
        } else {
            0.0
        };
        // 14: volume z-score of log(1 + volume) over 48 bars
        let (_, mv, varv) = win_moments(&pv, &pv2, t, VOLZ_N, 0);
        f[14] = if varv > 1e-6 {
            clip((lv[t] - mv) / varv.sqrt(), CLIP)
        } else {
            0.0
        };
        // 15..=17: close / MA(n) - 1, in units of vol * sqrt(n)
        for (k, &n) in MA_NS.iter().enumerate() {
            let a = win_start(t, n, 0);
            let ma = (pc[t + 1] - pc[a]) / (t + 1 - a) as f64;
            f[15 + k] = clip(by_vol((c / ma - 1.0) / (n as f64).sqrt()), CLIP);
            if n == 24 {
                above[t] = u8::from(c > ma);
            }
        }
        // 18, 19: stochastic %K(14) and %D(3), mapped to [-1, 1]
        let s0 = win_start(t, STOCH_N, 0);
        let hh = x.h[s0..=t].iter().fold(f64::MIN, |a, &b| a.max(b));
        let ll = x.l[s0..=t].iter().fold(f64::MAX, |a, &b| a.min(b));
        stoch_k[t] = if hh > ll {
            (2.0 * (c - ll) / (hh - ll) - 1.0).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        f[18] = stoch_k[t] as f32;
        let sk = &stoch_k[win_start(t, 3, 0)..=t];
        f[19] = clip(sk.iter().sum::<f64>() / sk.len() as f64, 1.0);
        // 20: intrabar range (high - low) / close / vol, as a log ratio; 21: close-location value
        let range = x.h[t] - x.l[t];
        f[20] = if has_vol {
            clip(by_vol(range / c).max(1e-6).ln(), CLIP)
        } else {
            0.0
        };
        f[21] = if range > 0.0 {
            clip(((c - x.l[t]) - (x.h[t] - c)) / range, 1.0)
        } else {
            0.0
        };
        // 22: sentiment as given
        f[22] = clip(x.sent[t], CLIP);
    }
    SymOut {
        tech,
        lr,
        r_mean,
        r_inv_sd,
        above,
    }
}

/// `sum_i (r_i - m_i) * w_i`, with four partial sums (the order is fixed: deterministic).
#[inline]
fn standardized_sum(r: &[f64], m: &[f64], w: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (rc, mc, wc) = (r.chunks_exact(4), m.chunks_exact(4), w.chunks_exact(4));
    let tail: f64 = rc
        .remainder()
        .iter()
        .zip(mc.remainder())
        .zip(wc.remainder())
        .map(|((r, m), w)| (r - m) * w)
        .sum();
    for ((r4, m4), w4) in rc.zip(mc).zip(wc) {
        for k in 0..4 {
            acc[k] += (r4[k] - m4[k]) * w4[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Regime features of path p into `dst` (`[T, N_REGIME]`).
fn regime_pass(md: &MarketData, p: usize, outs: &[SymOut], bpy: f64, dst: &mut [f32]) {
    let t_len = md.bars;
    let s = outs.len();
    let bench = md.n_symbols();
    let bc: Vec<f64> = (0..t_len)
        .map(|t| pos(md.close[md.px(p, t, bench)] as f64))
        .collect();
    let blc: Vec<f64> = bc.iter().map(|c| c.ln()).collect();
    let mut blr = vec![0.0f64; t_len];
    for t in 1..t_len {
        blr[t] = blc[t] - blc[t - 1];
    }
    let (pb, pbr, pbr2) = (
        prefix(&bc, |v| v),
        prefix(&blr, |v| v),
        prefix(&blr, |v| v * v),
    );
    let ew_alpha = 2.0 / (VOL_SPAN + 1.0);
    let mut ewvar = 0.0f64;
    let ann = bpy.sqrt();

    // [T, S] layouts for the cross-sectional correlation
    let mut lr_ts = vec![0.0f64; t_len * s];
    let mut mean_ts = vec![0.0f64; t_len * s];
    let mut isd_ts = vec![0.0f64; t_len * s];
    for (sym, o) in outs.iter().enumerate() {
        for t in 0..t_len {
            lr_ts[t * s + sym] = o.lr[t];
            mean_ts[t * s + sym] = o.r_mean[t];
            isd_ts[t * s + sym] = o.r_inv_sd[t];
        }
    }
    let corr: Vec<f64> = (0..t_len)
        .into_par_iter()
        .map(|t| {
            let t0 = win_start(t, REGIME_WINDOW, 1);
            if t < 1 || t + 1 - t0 < 3 || s < 2 {
                return 0.0;
            }
            let (m, isd) = (&mean_ts[t * s..(t + 1) * s], &isd_ts[t * s..(t + 1) * s]);
            let s_eff = isd.iter().filter(|&&v| v > 0.0).count();
            if s_eff < 2 {
                return 0.0;
            }
            let mut acc = 0.0;
            for tau in t0..=t {
                let row = &lr_ts[tau * s..(tau + 1) * s];
                let z = standardized_sum(row, m, isd);
                acc += z * z;
            }
            let var_sum = acc / (t + 1 - t0) as f64;
            let se = s_eff as f64;
            (var_sum - se) / (se * (se - 1.0))
        })
        .collect();

    for (t, f) in dst.chunks_exact_mut(N_REGIME).enumerate() {
        if t > 0 {
            let a = ew_alpha.max(1.0 / t as f64);
            ewvar = (1.0 - a) * ewvar + a * blr[t] * blr[t];
        }
        // trend: benchmark close / MA(48) - 1, in units of vol * sqrt(48)
        let a = win_start(t, REGIME_WINDOW, 0);
        let ma = (pb[t + 1] - pb[a]) / (t + 1 - a) as f64;
        let vol = ewvar.sqrt().max(VOL_FLOOR);
        f[0] = if t > 0 && ewvar > 0.0 {
            clip(
                (bc[t] / ma - 1.0) / (vol * (REGIME_WINDOW as f64).sqrt()),
                CLIP,
            )
        } else {
            0.0
        };
        // breadth: 2 * (fraction of symbols above their MA(24)) - 1
        f[1] = if s > 0 && t > 0 {
            let up = outs.iter().filter(|o| o.above[t] == 1).count();
            clip(2.0 * up as f64 / s as f64 - 1.0, 1.0)
        } else {
            0.0
        };
        f[2] = clip(corr[t], 1.0);
        // VIX proxy: annualised sd of the benchmark's 1-bar log returns over 48 bars (VIX / 100)
        f[3] = if t > 1 {
            let (_, _, var) = win_moments(&pbr, &pbr2, t, REGIME_WINDOW, 1);
            clip(var.sqrt() * ann, CLIP)
        } else {
            0.0
        };
    }
}
