/*!
The synthetic market: the embedded default data set, a factor model with a hidden regime chain.

Everything is a deterministic function of [`SyntheticConfig`]: the same seed gives bit-identical data.
Random numbers come from [`SplitMix64`]: the root stream `R = SplitMix64::new(seed)` forks
`R.fork(0)` for the per-symbol parameters (shared by all paths: one universe, P independent histories),
`Rp = R.fork(1 + p)` for path p, `Rp.fork(0)` for the path's common series (regime, market and sector
factors, benchmark bars, macro) and `Rp.fork(1 + s)` for symbol s. Paths and symbols are generated in
parallel (rayon); the result does not depend on the thread count.

# Units and calendar

Bars are hourly: `bars_per_day = D` bars per weekday (7 by default), weekends skipped. Bar t is bar
`b = t mod D` of trading day `d = t / D`; its timestamp (seconds since the Unix epoch) is
`86400 * day(d) + 14.5 h + b * dtb` where `day(d)` is the d-th weekday counted from Monday 2015-01-05
and `dtb = clamp(34200 / D, 1, 3600)` seconds (9:30 New York in UTC, hourly bars). `dt = 1 / (252 D)`
years per bar. Below, `ann` quantities are annualised and enter as `x * dt` (drift) or `x * sqrt(dt)`
(volatility).

# Regime chain (hidden, bull = 0, bear = 1, crisis = 2)

Initial regime drawn with probabilities (0.70, 0.25, 0.05). Each bar the chain leaves regime k with
probability `1 / (REG_DAYS[k] * D)` (expected durations 120, 50 and 12 trading days) and moves to j
with probability `REG_NEXT[k][j]` (bull -> bear 0.8 / crisis 0.2, bear -> bull 0.6 / crisis 0.4,
crisis -> bull 0.5 / bear 0.5). `crisis_entry = x` scales the moves into crisis: bull -> crisis
`0.2 x`, bull -> bear `1 - 0.2 x`, bear -> crisis `0.4 x`, bear -> bull `1 - 0.4 x` (the same two
uniforms per bar whatever x). Per-regime parameters (bull, bear, crisis):

| parameter | bull | bear | crisis |
|---|---|---|---|
| market drift `mu` (ann) | +0.18 | -0.12 | -0.50 |
| market vol `vm` (ann) | 0.12 | 0.22 | 0.50 |
| sector vol `vs` (ann) | 0.08 | 0.12 | 0.20 |
| idiosyncratic vol multiplier `mi` | 1.0 | 1.15 | 1.4 |
| market jump probability per bar | 0.0002 | 0.0005 | 0.003 |
| volume multiplier | 1.0 | 1.2 | 1.8 |
| short-rate target (ann) | 0.045 | 0.030 | 0.015 |

Crisis has both the highest volatility and (because the market factor's vol grows much faster than
the idiosyncratic vol) the highest cross-sectional correlation.

An onset crash (`crisis_crash = c > 0`, `crisis_crash_bars = n`): on each of the first n bars of
every crisis (counted from its onset, the first bar whose regime is crisis after one that is not,
or bar 0) the market factor below gets `+ ln(1 - c) / n`, so the market falls by the fraction c
over those bars on top of the crisis drift and noise. No random draw depends on it.

# Symbols

Symbol i (named `S000`, `S001`, ...) belongs to sector `i mod sectors` and has parameters drawn once:
beta `b_i ~ U(0.6, 1.5)`, sector loading `g_i ~ U(0.5, 1.0)`, idiosyncratic vol `v_i ~ U(0.15, 0.45)`
(ann), alpha `a_i ~ N(0, 0.04^2)` (ann), initial price `exp(U(ln 10, ln 400))`, base volume per bar
`exp(U(ln 5e4, ln 2e6))`. Its total bar volatility in regime k is
`sig_i(k) = sqrt(dt) * sqrt(b_i^2 vm_k^2 + g_i^2 vs_k^2 + (mi_k v_i)^2)`.

# Returns (log, close to close)

Market factor `f(t) = mu_k dt + vm_k sqrt(dt) t5 + Jm` (plus the onset crash above), sector factor
`h_j(t) = vs_k sqrt(dt) t5`, with `t5` a unit-variance Student-t (5 dof) draw and
`Jm ~ N(-0.015, 0.02^2)` with the market jump probability above (0 otherwise). The benchmark's log return is `f(t)` (the cap-weighted index of the
market factor). Symbol i:

`r_i(t) = a_i dt + b_i f(t) + g_i h_{sector(i)}(t) + mi_k v_i sqrt(dt) t4 + J_i + strength * signal_i(t)`

with `t4` unit-variance Student-t (4 dof) and rare idiosyncratic jumps `J_i ~ N(0, 0.05^2)` with
probability 0.0004 per bar. `close(t) = close(t-1) exp(r(t))` (log price kept in [ln 0.01, 16]).

# Sentiment (per symbol, `[P, T, S]`)

AR(1) that partly reacts to the symbol's own news, clipped to [-1, 1]:
`e_i(t) = 0.95 e_i(t-1) + sqrt(1 - 0.95^2) * 0.35 * (0.3 clamp(r_i(t) / sig_i(k), -3, 3) + sqrt(1 - 0.3^2) n)`,
`e_i(-1) ~ N(0, 0.35^2)`. Its stationary sd is about 0.35.

# Planted signal (`signal_strength` in [0, 1], `signal_kind`)

- `Sentiment`: `signal_i(t) = K_SENT sig_i(k_t) e_i(t-1) / 0.35` with `K_SENT = 0.13`: the sentiment
  at bar t-1 predicts the return of bar t (close t-1 -> close t). The information coefficient
  `corr(e_i(t), r_i(t+1))` is about `0.12 * strength`.
- `Momentum`: only in the bull regime, `signal_i(t) = K_MOM sig_i(k_t) clamp(m_i(t-1) / (sig_i(k_t) sqrt 24), -3, 3)`
  with `m_i(t-1)` the sum of the 24 previous returns and `K_MOM = 0.10`. The correlation of the
  trailing 24-bar return with the next bar's return in bull regimes is about `0.12 * strength`
  (returns feed back into the momentum, so it is a little above `K_MOM`).

The same random draws are made whatever the strength, so strength 0 (signal multiplied by 0) and
strength > 0 share the same noise; strength 0 means no dependence at all.

# Bars

`open(t) = close(t-1) exp(gap)`, `gap ~ N(0, (0.35 sig)^2)` at the first bar of a day and
`N(0, (0.05 sig)^2)` otherwise (bar 0 opens at the initial price); `high = max(open, close) exp(0.4 sig |n1|)`,
`low = min(open, close) exp(-0.4 sig |n2|)`. Rounding to f32 is monotone, so
`low <= open, close <= high` and all are > 0 exactly in the stored data.
Volume `= round(base_i * U(b) * exp(0.3 n - 0.045) * (0.6 + 0.4 min(|r| / sig, 20)) * volmult_k)` with the
U-shaped intraday profile `U(b) = 0.7 + 1.8 (2 (b + 0.5) / D - 1)^2` (high at open and close).
The benchmark uses the same bar construction with `sig = vm_k sqrt(dt)`, initial price 3000 and base
volume 5e7.

# Macro (`[P, T, 2]`: short rate, VIX-like index)

Short rate (ann), an Ornstein-Uhlenbeck process pulled to the regime's target:
`rate(t) = clamp(rate(t-1) + 0.8 (target_k - rate(t-1)) dt + 0.01 sqrt(dt) n, 0.01, 0.06)`,
`rate(-1) ~ U(0.015, 0.05)`. VIX in volatility points follows realised vol:
`w(t) = (1 - a) w(t-1) + a f(t)^2` with `a = 1 / (2 D)` (about a two-day half-life), `w(-1) = vm_k^2 dt`,
`vix(t) = clamp(110 sqrt(0.5 w(t) / dt + 0.5 vm_k^2) exp(0.03 n), 5, 150)`.

# Crisis warning (`crisis_warning_bars = L > 0`)

After generation, for every onset `t0` of the crisis regime (`regime[t0] = crisis`, `t0 = 0` or
`regime[t0 - 1] != crisis`) the VIX value of each bar `t` in `[t0 - L, t0)` gets
`+ crisis_warning_vix * (t - (t0 - L) + 1) / L` (a ramp that peaks on the bar before the onset;
ramps of close onsets add up), computed in f64 and stored as f32. No other value changes, so the
market with and without the warning is the same market: the warning makes a crisis foreseeable from
an observable (the master's test of issue #12) and switching it off is the null control.

# Files

[`write_parquet`] writes the long format read back by [`crate::data::loader`]: columns `timestamp`
(i64 seconds), `symbol`, `open`, `high`, `low`, `close`, `volume`, `sentiment` (0 for the benchmark),
`rate`, `vix`, and `path` (first) when P > 1.
*/

use std::path::Path;

use rayon::prelude::*;

use super::config::{SignalKind, SyntheticConfig};
use super::{MACRO, MarketData};
use crate::error::{Error, Location, Result};
use crate::rng::SplitMix64;

/// Regime names, in the order of the regime index returned by [`generate_with_regimes`].
pub const REGIME_NAMES: [&str; 3] = ["bull", "bear", "crisis"];

const REG_INIT: [f64; 3] = [0.70, 0.25, 0.05];
const REG_DAYS: [f64; 3] = [120.0, 50.0, 12.0];
const REG_NEXT: [[f64; 3]; 3] = [[0.0, 0.8, 0.2], [0.6, 0.0, 0.4], [0.5, 0.5, 0.0]];
const REG_DRIFT: [f64; 3] = [0.18, -0.12, -0.50];
const REG_MKT_VOL: [f64; 3] = [0.12, 0.22, 0.50];
const REG_SECTOR_VOL: [f64; 3] = [0.08, 0.12, 0.20];
const REG_IDIO_MULT: [f64; 3] = [1.0, 1.15, 1.4];
const REG_MKT_JUMP_P: [f64; 3] = [0.0002, 0.0005, 0.003];
const REG_VOLUME_MULT: [f64; 3] = [1.0, 1.2, 1.8];
const REG_RATE_TARGET: [f64; 3] = [0.045, 0.030, 0.015];

const MKT_JUMP_MEAN: f64 = -0.015;
const MKT_JUMP_SD: f64 = 0.02;
const IDIO_JUMP_P: f64 = 0.0004;
const IDIO_JUMP_SD: f64 = 0.05;
const FACTOR_DOF: f64 = 5.0;
const IDIO_DOF: f64 = 4.0;

const SENT_PHI: f64 = 0.95;
const SENT_SD: f64 = 0.35;
const SENT_FEEDBACK: f64 = 0.3;
/// Sentiment signal gain: information coefficient about 0.12 at strength 1.
pub const K_SENT: f64 = 0.13;
/// Momentum signal gain (bull regime only).
pub const K_MOM: f64 = 0.10;
/// Trailing window of the momentum signal, in bars.
pub const MOM_WINDOW: usize = 24;

const GAP_OPEN: f64 = 0.35;
const GAP_INTRADAY: f64 = 0.05;
const HL_SCALE: f64 = 0.4;
const VOLUME_NOISE: f64 = 0.3;

const RATE_KAPPA: f64 = 0.8;
const RATE_VOL: f64 = 0.01;
const RATE_MIN: f64 = 0.01;
const RATE_MAX: f64 = 0.06;

const BENCH_PRICE: f64 = 3000.0;
const BENCH_VOLUME: f64 = 5e7;
const LOG_PRICE_MIN: f64 = -4.605_170_185_988_091; // ln 0.01
const LOG_PRICE_MAX: f64 = 16.0;

/// Monday 2015-01-05, days since the Unix epoch.
const CALENDAR_START_DAY: i64 = 16_440;
const SESSION_OPEN_SECS: i64 = 14 * 3600 + 1800;

/// Generate the synthetic market described in the module docs.
pub fn generate(cfg: &SyntheticConfig, benchmark: &str) -> MarketData {
    generate_with_regimes(cfg, benchmark).0
}

/// [`generate`], also returning the hidden regime of every bar, `[P, T]` (0 bull, 1 bear, 2 crisis;
/// see [`REGIME_NAMES`]). For tests and diagnostics: the environment never sees it.
pub fn generate_with_regimes(cfg: &SyntheticConfig, benchmark: &str) -> (MarketData, Vec<u8>) {
    let s = cfg.symbols;
    let t_len = cfg.bars;
    let bpd = cfg.bars_per_day.max(1);
    let sectors = cfg.sectors.max(1);
    let dt = 1.0 / (252.0 * bpd as f64);
    let strength = if cfg.signal_strength.is_finite() {
        cfg.signal_strength.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let root = SplitMix64::new(cfg.seed);

    let params = symbol_params(&mut root.fork(0), s, sectors, dt);
    let ctx = Ctx {
        t_len,
        bpd,
        sectors,
        dt,
        strength,
        kind: cfg.signal_kind,
        next: regime_next(cfg.crisis_entry),
        crash_step: if cfg.crisis_crash > 0.0 && cfg.crisis_crash < 1.0 {
            (1.0 - cfg.crisis_crash).ln() / cfg.crisis_crash_bars.max(1) as f64
        } else {
            0.0
        },
        crash_bars: cfg.crisis_crash_bars.max(1),
    };

    let paths: Vec<PathData> = (0..cfg.paths)
        .into_par_iter()
        .map(|p| gen_path(&ctx, &params, root.fork(1 + p as u64)))
        .collect();

    let s1 = s + 1;
    let n = cfg.paths * t_len * s1;
    let mut md = MarketData {
        symbols: (0..s).map(|i| format!("S{i:03}")).collect(),
        benchmark: benchmark.to_string(),
        paths: cfg.paths,
        bars: t_len,
        bars_per_day: bpd,
        timestamps: calendar(t_len, bpd),
        open: Vec::with_capacity(n),
        high: Vec::with_capacity(n),
        low: Vec::with_capacity(n),
        close: Vec::with_capacity(n),
        volume: Vec::with_capacity(n),
        sentiment: Vec::with_capacity(cfg.paths * t_len * s),
        macro_series: Vec::with_capacity(cfg.paths * t_len * MACRO),
    };
    let mut regimes = Vec::with_capacity(cfg.paths * t_len);
    for pd in paths {
        md.open.extend_from_slice(&pd.open);
        md.high.extend_from_slice(&pd.high);
        md.low.extend_from_slice(&pd.low);
        md.close.extend_from_slice(&pd.close);
        md.volume.extend_from_slice(&pd.volume);
        md.sentiment.extend_from_slice(&pd.sentiment);
        md.macro_series.extend_from_slice(&pd.macro_series);
        regimes.extend_from_slice(&pd.regime);
    }
    if cfg.crisis_warning_bars > 0 {
        add_crisis_warning(
            &mut md,
            &regimes,
            cfg.crisis_warning_bars,
            cfg.crisis_warning_vix,
        );
    }
    (md, regimes)
}

/// The regime chain's destination probabilities with the moves into crisis scaled by `entry`
/// (clamped to [0, 2.5]; 1 gives `REG_NEXT`).
fn regime_next(entry: f64) -> [[f64; 3]; 3] {
    let x = if entry.is_finite() {
        entry.clamp(0.0, 2.5)
    } else {
        1.0
    };
    let mut next = REG_NEXT;
    if x == 1.0 {
        return next;
    }
    for (k, other) in [(0usize, 1usize), (1, 0)] {
        let to_crisis = REG_NEXT[k][2] * x;
        next[k][2] = to_crisis;
        next[k][other] = 1.0 - to_crisis;
    }
    next
}

/// The crisis warning ramp of the module doc, added to the VIX series (macro column 1).
fn add_crisis_warning(md: &mut MarketData, regimes: &[u8], lead: usize, height: f64) {
    const CRISIS: u8 = 2;
    let t_len = md.bars;
    for p in 0..md.paths {
        let reg = &regimes[p * t_len..(p + 1) * t_len];
        let mut ramp = vec![0f64; t_len];
        for t0 in 0..t_len {
            if reg[t0] == CRISIS && (t0 == 0 || reg[t0 - 1] != CRISIS) {
                let start = t0.saturating_sub(lead);
                for (t, r) in ramp.iter_mut().enumerate().take(t0).skip(start) {
                    *r += height * (t + lead + 1 - t0) as f64 / lead as f64;
                }
            }
        }
        for (t, r) in ramp.iter().enumerate() {
            if *r != 0.0 {
                let i = (p * t_len + t) * MACRO + 1;
                md.macro_series[i] = (f64::from(md.macro_series[i]) + r) as f32;
            }
        }
    }
}

/// The synthetic calendar: `bars_per_day` bars per weekday from Monday 2015-01-05, seconds since the
/// epoch, strictly increasing.
pub fn calendar(bars: usize, bars_per_day: usize) -> Vec<i64> {
    let bpd = bars_per_day.max(1);
    let step = (34_200 / bpd as i64).clamp(1, 3600);
    let mut out = Vec::with_capacity(bars);
    let mut prev = i64::MIN;
    for t in 0..bars {
        let d = (t / bpd) as i64;
        let b = (t % bpd) as i64;
        let day = CALENDAR_START_DAY + (d / 5) * 7 + d % 5;
        let ts = (day * 86_400 + SESSION_OPEN_SECS + b * step).max(prev.saturating_add(1));
        out.push(ts);
        prev = ts;
    }
    out
}

struct Ctx {
    t_len: usize,
    bpd: usize,
    sectors: usize,
    dt: f64,
    strength: f64,
    kind: SignalKind,
    /// Probabilities of a regime change's destination (`crisis_entry` applied).
    next: [[f64; 3]; 3],
    /// Onset crash: log return per crash bar, and the number of crash bars.
    crash_step: f64,
    crash_bars: usize,
}

#[derive(Debug, Clone)]
struct SymbolParams {
    sector: usize,
    beta: f64,
    gamma: f64,
    idio_vol: f64,
    alpha: f64,
    log_p0: f64,
    base_volume: f64,
    /// Total bar volatility per regime.
    sig: [f64; 3],
}

fn symbol_params(rng: &mut SplitMix64, s: usize, sectors: usize, dt: f64) -> Vec<SymbolParams> {
    (0..s)
        .map(|i| {
            let beta = 0.6 + 0.9 * rng.uniform();
            let gamma = 0.5 + 0.5 * rng.uniform();
            let idio_vol = 0.15 + 0.30 * rng.uniform();
            let alpha = 0.04 * rng.normal();
            let log_p0 = 10f64.ln() + (40f64).ln() * rng.uniform();
            let base_volume = (5e4f64.ln() + (40f64).ln() * rng.uniform()).exp();
            let sig = std::array::from_fn(|k| {
                let var = (beta * REG_MKT_VOL[k]).powi(2)
                    + (gamma * REG_SECTOR_VOL[k]).powi(2)
                    + (REG_IDIO_MULT[k] * idio_vol).powi(2);
                (var * dt).sqrt()
            });
            SymbolParams {
                sector: i % sectors,
                beta,
                gamma,
                idio_vol,
                alpha,
                log_p0,
                base_volume,
                sig,
            }
        })
        .collect()
}

/// One path in the final `[T, S + 1]` layout.
struct PathData {
    open: Vec<f32>,
    high: Vec<f32>,
    low: Vec<f32>,
    close: Vec<f32>,
    volume: Vec<f32>,
    sentiment: Vec<f32>,
    macro_series: Vec<f32>,
    regime: Vec<u8>,
}

/// OHLCV of one series, `[T]`.
#[derive(Default)]
struct Series {
    open: Vec<f32>,
    high: Vec<f32>,
    low: Vec<f32>,
    close: Vec<f32>,
    volume: Vec<f32>,
    sentiment: Vec<f32>,
}

impl Series {
    fn with_capacity(n: usize) -> Self {
        Self {
            open: Vec::with_capacity(n),
            high: Vec::with_capacity(n),
            low: Vec::with_capacity(n),
            close: Vec::with_capacity(n),
            volume: Vec::with_capacity(n),
            sentiment: Vec::new(),
        }
    }
}

/// Intraday U-shaped volume profile of bar `b` of a `bpd`-bar day.
#[inline]
fn u_shape(b: usize, bpd: usize) -> f64 {
    let x = 2.0 * (b as f64 + 0.5) / bpd as f64 - 1.0;
    0.7 + 1.8 * x * x
}

/// Draws that build one bar from its log return; always the same number of draws.
struct BarNoise {
    gap: f64,
    hi: f64,
    lo: f64,
    vol: f64,
}

impl BarNoise {
    #[inline]
    fn draw(rng: &mut SplitMix64) -> Self {
        Self {
            gap: rng.normal(),
            hi: rng.normal(),
            lo: rng.normal(),
            vol: rng.normal(),
        }
    }
}

/// Append one bar: previous log close `lc_prev`, log return `r`, bar vol `sig`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn push_bar(
    out: &mut Series,
    lc_prev: f64,
    r: f64,
    sig: f64,
    b: usize,
    bpd: usize,
    first: bool,
    base_volume: f64,
    vol_mult: f64,
    nz: &BarNoise,
) -> f64 {
    let lc = (lc_prev + r).clamp(LOG_PRICE_MIN, LOG_PRICE_MAX);
    let gap_sd = (if b == 0 { GAP_OPEN } else { GAP_INTRADAY }) * sig;
    let lo_open = if first {
        lc_prev
    } else {
        (lc_prev + gap_sd * nz.gap).clamp(LOG_PRICE_MIN, LOG_PRICE_MAX)
    };
    let (o, c) = (lo_open.exp(), lc.exp());
    let h = o.max(c) * (HL_SCALE * sig * nz.hi.abs()).exp();
    let l = o.min(c) * (-HL_SCALE * sig * nz.lo.abs()).exp();
    let v = base_volume
        * u_shape(b, bpd)
        * (VOLUME_NOISE * nz.vol - 0.5 * VOLUME_NOISE * VOLUME_NOISE).exp()
        * (0.6 + 0.4 * (r.abs() / sig.max(1e-12)).min(20.0))
        * vol_mult;
    out.open.push(o as f32);
    out.high.push(h as f32);
    out.low.push(l as f32);
    out.close.push(c as f32);
    out.volume.push(v.round() as f32);
    lc
}

/// The path's common series.
struct Common {
    regime: Vec<u8>,
    /// Market factor log return per bar (also the benchmark's return).
    mkt: Vec<f64>,
    /// Sector factor returns `[T, sectors]`.
    sector: Vec<f64>,
    bench: Series,
    macro_series: Vec<f32>,
}

fn gen_common(ctx: &Ctx, mut rng: SplitMix64) -> Common {
    let (t_len, bpd, dt) = (ctx.t_len, ctx.bpd, ctx.dt);
    let sdt = dt.sqrt();
    let mut regime = Vec::with_capacity(t_len);
    let mut mkt = Vec::with_capacity(t_len);
    let mut sector = Vec::with_capacity(t_len * ctx.sectors);
    let mut bench = Series::with_capacity(t_len);
    let mut macro_series = Vec::with_capacity(t_len * MACRO);

    let u0 = rng.uniform();
    let mut k = if u0 < REG_INIT[0] {
        0
    } else if u0 < REG_INIT[0] + REG_INIT[1] {
        1
    } else {
        2
    };
    let mut rate = 0.015 + 0.035 * rng.uniform();
    let mut ewvar = REG_MKT_VOL[k].powi(2) * dt;
    let mut lc = BENCH_PRICE.ln();
    let a = 1.0 / (2.0 * bpd as f64);
    let mut crisis_bar = 0usize;
    for t in 0..t_len {
        // regime transition: two uniforms every bar
        let (u_leave, u_dest) = (rng.uniform(), rng.uniform());
        if t > 0 && u_leave < 1.0 / (REG_DAYS[k] * bpd as f64) {
            let row = ctx.next[k];
            k = if u_dest < row[0] {
                0
            } else if u_dest < row[0] + row[1] {
                1
            } else {
                2
            };
        }
        regime.push(k as u8);
        // bars since the crisis onset (0 on the onset bar)
        crisis_bar = if k != 2 {
            0
        } else if t > 0 && regime[t - 1] == 2 {
            crisis_bar + 1
        } else {
            0
        };
        let crash = if k == 2 && crisis_bar < ctx.crash_bars {
            ctx.crash_step
        } else {
            0.0
        };
        let z = rng.student_t_unit(FACTOR_DOF);
        let jump = rng.chance(REG_MKT_JUMP_P[k]);
        let jn = rng.normal();
        let jm = if jump {
            MKT_JUMP_MEAN + MKT_JUMP_SD * jn
        } else {
            0.0
        };
        let f = REG_DRIFT[k] * dt + REG_MKT_VOL[k] * sdt * z + jm + crash;
        mkt.push(f);
        for _ in 0..ctx.sectors {
            sector.push(REG_SECTOR_VOL[k] * sdt * rng.student_t_unit(FACTOR_DOF));
        }
        let nz = BarNoise::draw(&mut rng);
        let sig = REG_MKT_VOL[k] * sdt;
        lc = push_bar(
            &mut bench,
            lc,
            f,
            sig,
            t % bpd,
            bpd,
            t == 0,
            BENCH_VOLUME,
            REG_VOLUME_MULT[k],
            &nz,
        );

        let (nr, nv) = (rng.normal(), rng.normal());
        rate = (rate + RATE_KAPPA * (REG_RATE_TARGET[k] - rate) * dt + RATE_VOL * sdt * nr)
            .clamp(RATE_MIN, RATE_MAX);
        ewvar = (1.0 - a) * ewvar + a * f * f;
        let vix =
            (110.0 * (0.5 * ewvar / dt + 0.5 * REG_MKT_VOL[k].powi(2)).sqrt() * (0.03 * nv).exp())
                .clamp(5.0, 150.0);
        macro_series.push(rate as f32);
        macro_series.push(vix as f32);
    }
    Common {
        regime,
        mkt,
        sector,
        bench,
        macro_series,
    }
}

fn gen_symbol(ctx: &Ctx, sp: &SymbolParams, common: &Common, mut rng: SplitMix64) -> Series {
    let (t_len, bpd, dt) = (ctx.t_len, ctx.bpd, ctx.dt);
    let sdt = dt.sqrt();
    let mut out = Series::with_capacity(t_len);
    out.sentiment = Vec::with_capacity(t_len);
    let mut lc = sp.log_p0;
    let mut sent = (SENT_SD * rng.normal()).clamp(-1.0, 1.0);
    let mut ring = [0.0f64; MOM_WINDOW];
    let mut mom = 0.0f64;
    let sent_innov = (1.0 - SENT_PHI * SENT_PHI).sqrt() * SENT_SD;
    let fb_noise = (1.0 - SENT_FEEDBACK * SENT_FEEDBACK).sqrt();
    for t in 0..t_len {
        let k = common.regime[t] as usize;
        let sig = sp.sig[k];
        let z = rng.student_t_unit(IDIO_DOF);
        let jump = rng.chance(IDIO_JUMP_P);
        let jn = rng.normal();
        let nz = BarNoise::draw(&mut rng);
        let eta = rng.normal();

        let ji = if jump { IDIO_JUMP_SD * jn } else { 0.0 };
        let base = sp.alpha * dt
            + sp.beta * common.mkt[t]
            + sp.gamma * common.sector[t * ctx.sectors + sp.sector]
            + REG_IDIO_MULT[k] * sp.idio_vol * sdt * z
            + ji;
        let signal = match ctx.kind {
            SignalKind::Sentiment if t > 0 => K_SENT * sig * sent / SENT_SD,
            SignalKind::Momentum if k == 0 => {
                let scale = sig * (MOM_WINDOW as f64).sqrt();
                K_MOM * sig * (mom / scale).clamp(-3.0, 3.0)
            }
            _ => 0.0,
        };
        let r = base + ctx.strength * signal;
        lc = push_bar(
            &mut out,
            lc,
            r,
            sig,
            t % bpd,
            bpd,
            t == 0,
            sp.base_volume,
            REG_VOLUME_MULT[k],
            &nz,
        );

        let zr = (r / sig).clamp(-3.0, 3.0);
        sent =
            (SENT_PHI * sent + sent_innov * (SENT_FEEDBACK * zr + fb_noise * eta)).clamp(-1.0, 1.0);
        out.sentiment.push(sent as f32);
        let slot = t % MOM_WINDOW;
        mom += r - ring[slot];
        ring[slot] = r;
    }
    out
}

fn gen_path(ctx: &Ctx, params: &[SymbolParams], rng: SplitMix64) -> PathData {
    let common = gen_common(ctx, rng.fork(0));
    let series: Vec<Series> = params
        .par_iter()
        .enumerate()
        .map(|(i, sp)| gen_symbol(ctx, sp, &common, rng.fork(1 + i as u64)))
        .collect();
    let s = params.len();
    let s1 = s + 1;
    let n = ctx.t_len * s1;
    let mut pd = PathData {
        open: vec![0.0; n],
        high: vec![0.0; n],
        low: vec![0.0; n],
        close: vec![0.0; n],
        volume: vec![0.0; n],
        sentiment: vec![0.0; ctx.t_len * s],
        macro_series: common.macro_series,
        regime: common.regime,
    };
    let scatter = |dst: &mut [f32], col: usize, src: &[f32]| {
        for (t, &x) in src.iter().enumerate() {
            dst[t * s1 + col] = x;
        }
    };
    for (i, se) in series
        .iter()
        .chain(std::iter::once(&common.bench))
        .enumerate()
    {
        scatter(&mut pd.open, i, &se.open);
        scatter(&mut pd.high, i, &se.high);
        scatter(&mut pd.low, i, &se.low);
        scatter(&mut pd.close, i, &se.close);
        scatter(&mut pd.volume, i, &se.volume);
    }
    for (i, se) in series.iter().enumerate() {
        for (t, &x) in se.sentiment.iter().enumerate() {
            pd.sentiment[t * s + i] = x;
        }
    }
    pd
}

/// Write `md` in long format (see the module docs) to `path`, through `path.tmp` and a rename so a
/// reader never sees a half-written file.
pub fn write_parquet(md: &MarketData, path: &Path) -> Result<()> {
    use polars::prelude::*;

    let s = md.n_symbols();
    let s1 = s + 1;
    let rows = md.paths * md.bars * s1;
    let mut c_path = Vec::with_capacity(if md.paths > 1 { rows } else { 0 });
    let mut c_ts = Vec::with_capacity(rows);
    let mut c_sym: Vec<&str> = Vec::with_capacity(rows);
    let mut cols: [Vec<f64>; 8] = std::array::from_fn(|_| Vec::with_capacity(rows));
    for p in 0..md.paths {
        for sym in 0..s1 {
            let name = if sym == s {
                md.benchmark.as_str()
            } else {
                md.symbols[sym].as_str()
            };
            for t in 0..md.bars {
                let i = md.px(p, t, sym);
                if md.paths > 1 {
                    c_path.push(p as i64);
                }
                c_ts.push(md.timestamps[t]);
                c_sym.push(name);
                let m = (p * md.bars + t) * MACRO;
                let vals = [
                    md.open[i],
                    md.high[i],
                    md.low[i],
                    md.close[i],
                    md.volume[i],
                    if sym == s {
                        0.0
                    } else {
                        md.sentiment[md.sx(p, t, sym)]
                    },
                    md.macro_series[m],
                    md.macro_series[m + 1],
                ];
                for (c, v) in cols.iter_mut().zip(vals) {
                    c.push(v as f64);
                }
            }
        }
    }
    let names = [
        "open",
        "high",
        "low",
        "close",
        "volume",
        "sentiment",
        "rate",
        "vix",
    ];
    let mut columns: Vec<Column> = Vec::with_capacity(11);
    if md.paths > 1 {
        columns.push(Column::new("path".into(), c_path));
    }
    columns.push(Column::new("timestamp".into(), c_ts));
    columns.push(Column::new("symbol".into(), c_sym));
    for (name, c) in names.iter().zip(cols) {
        columns.push(Column::new((*name).into(), c));
    }
    let err = |m: String| Error::data(path, Location::default(), m);
    let mut df =
        DataFrame::new(rows, columns).map_err(|e| err(format!("cannot build frame: {e}")))?;

    crate::atomic::write_with(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        ParquetWriter::new(file)
            .finish(&mut df)
            .map(|_| ())
            .map_err(|e| err(format!("cannot write parquet: {e}")))
    })
}
