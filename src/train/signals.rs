/*!
The reward-signal analyzer: reads a run's per-iteration [`Metrics`] and says whether the reward
still carries a usable learning signal, so that a training driver can stop a run that cannot learn.
`mt-tools reward-signals RUN_DIR` prints its table, draws its series and exits 1 on an alarm;
[`crate::run::analyze_run`] reads a run directory; [`analyze`] / [`analyze_weighted`] work on
metrics in memory.

# Input

The trading environment logs, in each iteration's `Metrics::env`, the reward terms of the episodes
that ended during the rollout (`train::trading`): `reward.<term>`, the mean *weighted* term per
symbol-step, and `reward_share.<term>`, its share `|sum_term| / sum_c |sum_c|` of the summed absolute
terms, for the 7 terms of [`COMPONENT_NAMES`]; and `turnover`, the traded notional / equity per
symbol-step over the whole rollout. An iteration in which no episode ended has no reward terms.

A **point** is an iteration whose `env` holds all 14 reward entries, finite. Points are taken in
iteration order; `x` below is the iteration number. The **window** is the last
[`SignalThresholds::window`] points (all of them when there are fewer). With `n` points
`x_i, y_i`, the **trend** of a series is its least-squares slope `b = S_xy / S_xx` and the slope's
t statistic `t = b / sqrt(SSR / (n - 2) / S_xx)` (`SSR` the residual sum of squares; `n >= 3`;
when `SSR = 0` and `b != 0`, `t = ±1e9`). The **scale** of the window is the mean over its points
of `sum_c |reward.c|`, the total magnitude of the reward per symbol-step.

# Alarms

Each alarm names its kind, its term, the first and last iteration it is based on, and a sentence
with the numbers. Thresholds are the fields of [`SignalThresholds`], with their defaults.

- **dominance**: a shaping term's mean share over the window is above `dominance` (default 0.6).
  The other six terms together then weigh less than this one: after reward normalisation PPO
  mostly learns that term. The P&L term ([`OBJECTIVE_TERM`]) is the objective the six shaping
  terms serve, not one of them, and has its own threshold `objective_dominance` (default 1: no
  alarm). With the design's weights (10 on pnl of 26.5) and every term on the P&L scale, a
  profitable policy's pnl share is 0.7-0.8 by arithmetic: the one-signed penalties (cost,
  drawdown, util, divers) are small fractions of the P&L they go with, and the differential
  terms (sharpe, timing) average out in the `|sum|` of the share. An alarm on it would fire on
  every healthy run (docs/training.md, "Reward ablations"); a P&L term whose shaping terms have
  all vanished is caught by **collapse** instead. (On `configs/small.toml` with the default weights, sharpe takes 50-75% of the reward
  in most iterations: a 6-iteration run raises this alarm, 69% over its 3 points; the full
  20-iteration run stays under it, 54% over its last 10 points with util at 45%. Sharpe's weight
  is the known problem that `configs/signal.toml` works around, see docs/training.md.)
- **collapse**: a term whose weight is non-zero (every term when the weights are not known) is,
  over the window, *vanishing*, `max |reward.c| <= vanish * scale` (default 1e-6), or *constant*,
  `max reward.c - min reward.c <= constant * scale` (default 1e-9) with at least 2 points. A
  weighted term that contributes nothing, or the same amount at every iteration, gives no
  gradient: its weight is wasted or the term is broken (a saturated clip, a guard that always
  fires). A window whose scale is 0 (every term 0) collapses every weighted term.
- **sign-flips**: the term's mean changes sign more than `max_sign_flips` (default 2) times over
  the run. The points are cut into consecutive blocks of `flip_block` (default 5) points, aligned
  to the last point (the oldest `n mod flip_block` points are left out); a block's sign counts
  only when its mean is at least `flip_t` (default 2) standard errors from 0 (`|mean| / (sd /
  sqrt(flip_block)) >= flip_t`, sample sd; a block with sd 0 and a non-zero mean counts); a flip
  is a change of sign between consecutive counted blocks. A term that is significantly positive,
  then negative, then positive again pushes the policy back and forth; block means and the
  significance test keep the noise of a zero-mean term (pnl of a policy without edge) from
  counting.
- **drift**: the term's share has a significant linear trend over all points: at least
  `drift_min_points` (default 8) points, `|t| >= drift_t` (default 3) and a fitted change over the
  run, `|b| * (x_last - x_first)`, of at least `drift_change` (default 0.25) (25 points of share).
  Both conditions, because `t` alone flags negligible but steady changes of long runs and the
  change alone flags noise in short ones. The reward's composition is moving under the policy:
  what it learned early is being rewarded for something else now.
- **ignores-costs**: over the window's points that also have `turnover`, at least
  `costs_min_points` (default 4) of them, turnover rises (`t >= costs_t` (default 2)) while the
  cost term grows more negative (`t <= -costs_t`). The policy trades more although trading costs
  it more and more reward. Evaluated only when the run logs `turnover` (runs written before it was
  added do not: the table then says `turnover: not logged`).

[`SignalReport::has_alarms`] is what a driver checks; the CLI exits 1 on it. The report, with the
thresholds it used and every series, serialises to JSON.
*/

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::trading::TURNOVER_STAT;
use crate::Result;
use crate::error::Error;
use crate::reward::{COMPONENT_NAMES, N_COMPONENTS};

/// The reward term that is the objective rather than a shaping term: exempt from the `dominance`
/// threshold, with its own `objective_dominance` (module doc).
pub const OBJECTIVE_TERM: &str = "pnl";

/// The thresholds of the alarms (see the module doc for each definition); [`Default`] gives the
/// documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalThresholds {
    /// Points (iterations with reward terms) in the window of dominance, collapse and
    /// ignores-costs: the last `window`. Default 10: long enough to average the noise of a few
    /// episodes, short enough to describe the policy of now, not of the start.
    pub window: usize,
    /// Dominance: mean share over the window above this. Default 0.6: the term then outweighs
    /// the six others together by half again.
    pub dominance: f64,
    /// Dominance of the P&L term, [`OBJECTIVE_TERM`] (see the module doc): mean share over the
    /// window above this. Default 1 (never): the objective is meant to be the largest term.
    pub objective_dominance: f64,
    /// Collapse (vanishing): every `|value|` of the window at most this fraction of the window's
    /// scale. Default 1e-6: a millionth of the reward, far below anything a normalised return
    /// resolves, yet 60 times below the smallest live term seen: pnl on `configs/small.toml` with
    /// the default weights is about 6e-5 of the reward (drowned, which dominance reports, but not
    /// dead). A term stuck at exactly 0 is caught at any threshold.
    pub vanish: f64,
    /// Collapse (constant): `max - min` of the window at most this fraction of the scale.
    /// Default 1e-9: rounding noise of `f64` means of `f32` terms, nothing a policy changes.
    pub constant: f64,
    /// Sign flips: points per block. Default 5: enough points for a standard error.
    pub flip_block: usize,
    /// Sign flips: a block's sign counts when its mean is this many standard errors from 0.
    /// Default 2 (about 5% two-sided per block for a zero-mean term).
    pub flip_t: f64,
    /// Sign flips: alarm when the counted flips exceed this. Default 2: one change of sign is
    /// learning, going back is allowed once, a third change is oscillation.
    pub max_sign_flips: usize,
    /// Drift: points needed. Default 8: a slope's t statistic over fewer points means little.
    pub drift_min_points: usize,
    /// Drift: `|t|` of the share's slope at least this. Default 3 (well past chance over the
    /// seven terms tested).
    pub drift_t: f64,
    /// Drift: fitted change of the share over the run at least this. Default 0.25 (25 points).
    pub drift_change: f64,
    /// Ignores costs: `|t|` of both slopes (turnover up, cost term down) at least this. Default 2.
    pub costs_t: f64,
    /// Ignores costs: points of the window with turnover needed. Default 4.
    pub costs_min_points: usize,
}

impl Default for SignalThresholds {
    fn default() -> Self {
        Self {
            window: 10,
            dominance: 0.6,
            objective_dominance: 1.0,
            vanish: 1e-6,
            constant: 1e-9,
            flip_block: 5,
            flip_t: 2.0,
            max_sign_flips: 2,
            drift_min_points: 8,
            drift_t: 3.0,
            drift_change: 0.25,
            costs_t: 2.0,
            costs_min_points: 4,
        }
    }
}

impl SignalThresholds {
    /// Refuse thresholds outside their domain (the error names the field).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(Error::invalid(format!("signal threshold `{field}` {why}")))
        };
        if self.window < 1 {
            return bad("window", "must be >= 1");
        }
        if !(self.dominance > 0.0 && self.dominance <= 1.0) {
            return bad("dominance", "must be in (0, 1]");
        }
        if !(self.objective_dominance > 0.0 && self.objective_dominance <= 1.0) {
            return bad("objective_dominance", "must be in (0, 1]");
        }
        for (f, v) in [
            ("vanish", self.vanish),
            ("constant", self.constant),
            ("flip_t", self.flip_t),
            ("drift_t", self.drift_t),
            ("drift_change", self.drift_change),
            ("costs_t", self.costs_t),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(f, "must be finite and >= 0");
            }
        }
        if self.flip_block < 2 {
            return bad("flip_block", "must be >= 2");
        }
        if self.drift_min_points < 3 {
            return bad("drift_min_points", "must be >= 3");
        }
        if self.costs_min_points < 3 {
            return bad("costs_min_points", "must be >= 3");
        }
        Ok(())
    }
}

/// The kinds of alarm (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlarmKind {
    /// One term's share above the dominance threshold.
    Dominance,
    /// A weighted term that vanishes or is constant.
    Collapse,
    /// A term's mean changes sign too often.
    SignFlips,
    /// A significant trend of a term's share.
    Drift,
    /// Turnover rising while the cost term grows more negative.
    IgnoresCosts,
}

impl AlarmKind {
    /// The kind's name, as in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::Dominance => "dominance",
            AlarmKind::Collapse => "collapse",
            AlarmKind::SignFlips => "sign-flips",
            AlarmKind::Drift => "drift",
            AlarmKind::IgnoresCosts => "ignores-costs",
        }
    }
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// What was detected.
    pub kind: AlarmKind,
    /// The reward term (`cost` for ignores-costs).
    pub term: String,
    /// First iteration of the points the alarm is based on.
    pub first_iteration: usize,
    /// Last iteration of those points.
    pub last_iteration: usize,
    /// The numbers, in one sentence.
    pub detail: String,
}

/// One reward term's statistics and series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermSignal {
    /// Its name ([`COMPONENT_NAMES`]).
    pub term: String,
    /// Its weight in `[reward]`, when known.
    pub weight: Option<f64>,
    /// Mean share over the window.
    pub mean_share: f64,
    /// Share at the last point.
    pub last_share: f64,
    /// Mean weighted value per symbol-step over the window.
    pub mean_value: f64,
    /// Least-squares slope of the share per iteration, over all points (0 with fewer than 3).
    pub trend: f64,
    /// The slope's t statistic (0 with fewer than 3 points).
    pub trend_t: f64,
    /// Significant sign changes of its block means (module doc, sign-flips).
    pub sign_flips: usize,
    /// Its share at every point ([`SignalReport::iterations`]).
    pub shares: Vec<f64>,
    /// Its weighted value at every point.
    pub values: Vec<f64>,
}

/// What [`analyze`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    /// The thresholds used.
    pub thresholds: SignalThresholds,
    /// Iterations read (metrics lines).
    pub iterations_read: usize,
    /// The iteration of every point (iterations with reward terms), increasing.
    pub iterations: Vec<usize>,
    /// Points in the window.
    pub window_points: usize,
    /// The 7 terms in [`COMPONENT_NAMES`] order (empty when there is no point).
    pub terms: Vec<TermSignal>,
    /// `(iteration, turnover)` of every iteration that logged it (empty for older runs).
    pub turnover: Vec<(usize, f64)>,
    /// The alarms, in term order then kind.
    pub alarms: Vec<Alarm>,
}

impl SignalReport {
    /// Any alarm (what a driver stops on; `mt-tools reward-signals` exits 1).
    pub fn has_alarms(&self) -> bool {
        !self.alarms.is_empty()
    }

    /// Number of points (iterations with reward terms).
    pub fn points(&self) -> usize {
        self.iterations.len()
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::json("signal report", e))
    }

    /// The aligned table `mt-tools reward-signals` prints: one row per term (weight, mean and last
    /// share, mean value, trend of the share per iteration and its t, sign flips, alarm kinds),
    /// the turnover, then one line per alarm.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let (first, last) = match (self.iterations.first(), self.iterations.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => {
                return format!(
                    "{} iterations, none with reward terms (no episode ended): nothing to analyse\n",
                    self.iterations_read
                );
            }
        };
        let wfirst = self.iterations[self.points() - self.window_points];
        s += &format!(
            "{} iterations, {} with reward terms ({first}..={last}); window: last {} ({wfirst}..={last})\n",
            self.iterations_read,
            self.points(),
            self.window_points,
        );
        s += &format!(
            "{:<9} {:>7} {:>10} {:>10} {:>11} {:>11} {:>7} {:>5}  {}\n",
            "term",
            "weight",
            "mean share",
            "last share",
            "mean value",
            "trend/iter",
            "t",
            "flips",
            "alarms"
        );
        for t in &self.terms {
            let kinds: Vec<&str> = self
                .alarms
                .iter()
                .filter(|a| a.term == t.term)
                .map(|a| a.kind.name())
                .collect();
            s += &format!(
                "{:<9} {:>7} {:>9.2}% {:>9.2}% {:>+11.3e} {:>+11.2e} {:>+7.1} {:>5}  {}\n",
                t.term,
                t.weight.map_or("?".into(), |w| format!("{w}")),
                100.0 * t.mean_share,
                100.0 * t.last_share,
                t.mean_value,
                t.trend,
                t.trend_t.clamp(-999.0, 999.0),
                t.sign_flips,
                if kinds.is_empty() {
                    "-".to_string()
                } else {
                    kinds.join(",")
                }
            );
        }
        match (self.turnover.first(), self.turnover.last()) {
            (Some(a), Some(b)) => {
                let mean =
                    self.turnover.iter().map(|t| t.1).sum::<f64>() / self.turnover.len() as f64;
                s += &format!(
                    "turnover (traded notional / equity per symbol-step): mean {mean:.3e}, iteration {} {:.3e}, iteration {} {:.3e}\n",
                    a.0, a.1, b.0, b.1
                );
            }
            _ => s += "turnover: not logged (ignores-costs not evaluated)\n",
        }
        if self.alarms.is_empty() {
            s += "no alarm\n";
        }
        for a in &self.alarms {
            s += &format!(
                "ALARM {} {} (iterations {}..={}): {}\n",
                a.kind, a.term, a.first_iteration, a.last_iteration, a.detail
            );
        }
        s
    }
}

/// Least-squares slope of `y` on `x` and its t statistic (module doc); `(0, 0)` with fewer than 3
/// points or all `x` equal.
pub fn trend(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len().min(y.len());
    if n < 3 {
        return (0.0, 0.0);
    }
    let (x, y) = (&x[..n], &y[..n]);
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return (0.0, 0.0);
    }
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let b = sxy / sxx;
    let ssr: f64 = x
        .iter()
        .zip(y)
        .map(|(a, v)| (v - my - b * (a - mx)).powi(2))
        .sum();
    let se = (ssr / (n - 2) as f64 / sxx).sqrt();
    // A fit without residuals, up to rounding of the values' magnitude.
    let tiny = 1e-12 * (b.abs() * (sxx / n as f64).sqrt() + my.abs()).max(f64::MIN_POSITIVE);
    let t = if se > tiny {
        b / se
    } else if b == 0.0 {
        0.0
    } else {
        1e9 * b.signum()
    };
    (b, t)
}

/// Significant sign changes of the block means of `v` (module doc, sign-flips).
pub fn sign_flips(v: &[f64], block: usize, min_t: f64) -> usize {
    if block < 2 {
        return 0;
    }
    let skip = v.len() % block;
    let signs: Vec<f64> = v[skip..]
        .chunks_exact(block)
        .filter_map(|b| {
            let m = b.iter().sum::<f64>() / block as f64;
            let var = b.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (block - 1) as f64;
            let se = (var / block as f64).sqrt();
            let significant = if se > 0.0 {
                m.abs() / se >= min_t
            } else {
                m != 0.0
            };
            significant.then_some(m.signum())
        })
        .collect();
    signs.windows(2).filter(|w| w[0] != w[1]).count()
}

/// [`analyze_weighted`] without the reward weights: every term counts as weighted.
pub fn analyze(metrics: &[Metrics], th: &SignalThresholds) -> SignalReport {
    analyze_weighted(metrics, th, None)
}

/// Analyse the reward terms of `metrics` (any order; sorted by iteration here) against `th`.
/// `weights` are the `[reward]` weights in [`COMPONENT_NAMES`] order
/// (`reward::RewardConfig::weights`): a term of weight 0 is never a collapse. The
/// thresholds are used as given (check them with [`SignalThresholds::validate`]).
pub fn analyze_weighted(
    metrics: &[Metrics],
    th: &SignalThresholds,
    weights: Option<&[f64; N_COMPONENTS]>,
) -> SignalReport {
    let mut ms: Vec<&Metrics> = metrics.iter().collect();
    ms.sort_by_key(|m| m.iteration);
    let terms_of = |m: &Metrics| -> Option<([f64; N_COMPONENTS], [f64; N_COMPONENTS])> {
        let mut v = [0.0; N_COMPONENTS];
        let mut sh = [0.0; N_COMPONENTS];
        for (c, name) in COMPONENT_NAMES.iter().enumerate() {
            v[c] = *m
                .env
                .get(&format!("reward.{name}"))
                .filter(|x| x.is_finite())?;
            sh[c] = *m
                .env
                .get(&format!("reward_share.{name}"))
                .filter(|x| x.is_finite())?;
        }
        Some((v, sh))
    };
    let mut iterations = Vec::new();
    let mut values: Vec<[f64; N_COMPONENTS]> = Vec::new();
    let mut shares: Vec<[f64; N_COMPONENTS]> = Vec::new();
    let mut point_turnover: Vec<Option<f64>> = Vec::new();
    let mut turnover = Vec::new();
    for m in &ms {
        let to = m.env.get(TURNOVER_STAT).copied().filter(|x| x.is_finite());
        if let Some(t) = to {
            turnover.push((m.iteration, t));
        }
        if let Some((v, sh)) = terms_of(m) {
            iterations.push(m.iteration);
            values.push(v);
            shares.push(sh);
            point_turnover.push(to);
        }
    }
    let n = iterations.len();
    let w0 = n.saturating_sub(th.window.max(1));
    let mut report = SignalReport {
        thresholds: th.clone(),
        iterations_read: metrics.len(),
        iterations: iterations.clone(),
        window_points: n - w0,
        terms: Vec::new(),
        turnover,
        alarms: Vec::new(),
    };
    if n == 0 {
        return report;
    }
    let x: Vec<f64> = iterations.iter().map(|&i| i as f64).collect();
    let (first, last) = (iterations[0], iterations[n - 1]);
    let wfirst = iterations[w0];
    let wn = (n - w0) as f64;
    let scale = values[w0..]
        .iter()
        .map(|v| v.iter().map(|x| x.abs()).sum::<f64>())
        .sum::<f64>()
        / wn;
    let alarm = |kind, term: &str, a: usize, b: usize, detail: String| Alarm {
        kind,
        term: term.to_string(),
        first_iteration: a,
        last_iteration: b,
        detail,
    };
    for (c, name) in COMPONENT_NAMES.iter().enumerate() {
        let sh: Vec<f64> = shares.iter().map(|s| s[c]).collect();
        let v: Vec<f64> = values.iter().map(|s| s[c]).collect();
        let weight = weights.map(|w| w[c]);
        let mean_share = sh[w0..].iter().sum::<f64>() / wn;
        let mean_value = v[w0..].iter().sum::<f64>() / wn;
        let (slope, t) = trend(&x, &sh);
        let flips = sign_flips(&v, th.flip_block, th.flip_t);
        let mut alarms = Vec::new();
        let (limit, which) = if *name == OBJECTIVE_TERM {
            (th.objective_dominance, "objective_dominance")
        } else {
            (th.dominance, "dominance")
        };
        if mean_share > limit {
            alarms.push(alarm(
                AlarmKind::Dominance,
                name,
                wfirst,
                last,
                format!(
                    "mean share {:.1}% over the last {} points, above {:.1}% ({which})",
                    100.0 * mean_share,
                    n - w0,
                    100.0 * limit
                ),
            ));
        }
        if weight != Some(0.0) {
            let wv = &v[w0..];
            let max_abs = wv.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let lo = wv.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = wv.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let what = if max_abs <= th.vanish * scale {
                Some(format!(
                    "vanishing: max |value| {max_abs:.3e} <= {:.0e} x scale {scale:.3e}",
                    th.vanish
                ))
            } else if wv.len() >= 2 && hi - lo <= th.constant * scale {
                Some(format!(
                    "constant: value {mean_value:+.6e}, range {:.3e} <= {:.0e} x scale {scale:.3e}",
                    hi - lo,
                    th.constant
                ))
            } else {
                None
            };
            if let Some(what) = what {
                let wt = weight.map_or("weight not known".into(), |w| format!("weight {w}"));
                alarms.push(alarm(
                    AlarmKind::Collapse,
                    name,
                    wfirst,
                    last,
                    format!("{what} over the last {} points ({wt})", n - w0),
                ));
            }
        }
        if flips > th.max_sign_flips {
            alarms.push(alarm(
                AlarmKind::SignFlips,
                name,
                first,
                last,
                format!(
                    "the mean of blocks of {} points changes sign {flips} times (|t| >= {}), more than {}",
                    th.flip_block, th.flip_t, th.max_sign_flips
                ),
            ));
        }
        let change = slope * (last - first) as f64;
        if n >= th.drift_min_points && t.abs() >= th.drift_t && change.abs() >= th.drift_change {
            alarms.push(alarm(
                AlarmKind::Drift,
                name,
                first,
                last,
                format!(
                    "share {:+.1} points over the run (slope {slope:+.2e}/iteration, t = {t:+.1}; limits |t| >= {}, |change| >= {:.1} points)",
                    100.0 * change,
                    th.drift_t,
                    100.0 * th.drift_change
                ),
            ));
        }
        report.alarms.extend(alarms);
        report.terms.push(TermSignal {
            term: name.to_string(),
            weight,
            mean_share,
            last_share: sh[n - 1],
            mean_value,
            trend: slope,
            trend_t: t,
            sign_flips: flips,
            shares: sh,
            values: v,
        });
    }
    // Ignores costs: the window's points that logged turnover.
    let cost = COMPONENT_NAMES
        .iter()
        .position(|c| *c == "cost")
        .unwrap_or(1);
    let (mut xs, mut tos, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    for i in w0..n {
        if let Some(to) = point_turnover[i] {
            xs.push(x[i]);
            tos.push(to);
            costs.push(values[i][cost]);
        }
    }
    if xs.len() >= th.costs_min_points {
        let (bt, tt) = trend(&xs, &tos);
        let (bc, tc) = trend(&xs, &costs);
        if bt > 0.0 && tt >= th.costs_t && bc < 0.0 && tc <= -th.costs_t {
            report.alarms.push(alarm(
                AlarmKind::IgnoresCosts,
                "cost",
                xs[0] as usize,
                last,
                format!(
                    "turnover rises {bt:+.2e}/iteration (t = {tt:+.1}) while the cost term falls {bc:+.2e}/iteration (t = {tc:+.1}) over {} points (limit |t| >= {})",
                    xs.len(),
                    th.costs_t
                ),
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A metrics line with reward terms `values` (shares computed from them) and an optional
    /// turnover.
    fn point(it: usize, values: [f64; N_COMPONENTS], turnover: Option<f64>) -> Metrics {
        let total: f64 = values.iter().map(|v| v.abs()).sum();
        let mut env = BTreeMap::new();
        for (c, name) in COMPONENT_NAMES.iter().enumerate() {
            env.insert(format!("reward.{name}"), values[c]);
            let share = if total > 0.0 {
                values[c].abs() / total
            } else {
                0.0
            };
            env.insert(format!("reward_share.{name}"), share);
        }
        if let Some(t) = turnover {
            env.insert(TURNOVER_STAT.to_string(), t);
        }
        Metrics {
            iteration: it,
            global_step: 0,
            learning_rate: 0.0,
            ent_coef: 0.0,
            policy_loss: 0.0,
            value_loss: 0.0,
            entropy: 0.0,
            old_approx_kl: 0.0,
            approx_kl: 0.0,
            clipfrac: 0.0,
            explained_variance: None,
            grad_norm: 0.0,
            epochs: 1,
            sps: 0.0,
            agent_sps: 0.0,
            episodes: 1,
            episode_return_mean: None,
            episode_length_mean: None,
            env,
            policy: Default::default(),
            timing: Default::default(),
        }
    }

    /// A clean term vector: every term comparable, a little noise per iteration.
    fn clean(it: usize) -> [f64; N_COMPONENTS] {
        let e = 0.05 * ((it * 7919 % 13) as f64 / 13.0 - 0.5);
        [
            0.3 + e,
            -0.2 - 0.5 * e,
            0.1 + e,
            0.25 - e,
            -0.1 + 0.3 * e,
            -0.15 + 0.5 * e,
            -0.2 - 0.3 * e,
        ]
    }

    fn kinds(r: &SignalReport, term: &str) -> Vec<AlarmKind> {
        r.alarms
            .iter()
            .filter(|a| a.term == term)
            .map(|a| a.kind)
            .collect()
    }

    fn detail<'a>(r: &'a SignalReport, term: &str) -> &'a str {
        &r.alarms.iter().find(|a| a.term == term).unwrap().detail
    }

    #[test]
    fn a_clean_run_has_no_alarm() {
        let ms: Vec<Metrics> = (1..=30).map(|i| point(i, clean(i), Some(0.05))).collect();
        let r = analyze(&ms, &SignalThresholds::default());
        assert!(!r.has_alarms(), "{}", r.table());
        assert_eq!((r.points(), r.window_points, r.terms.len()), (30, 10, 7));
        assert!(r.table().contains("no alarm"));
        // JSON round trip (serde_json's float parsing may differ in the last digit)
        let back: SignalReport = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(
            (&back.iterations, &back.alarms, &back.thresholds),
            (&r.iterations, &r.alarms, &r.thresholds)
        );
        assert!((back.terms[3].mean_share - r.terms[3].mean_share).abs() < 1e-15);
    }

    #[test]
    fn no_points_no_terms() {
        let mut m = point(1, clean(1), Some(0.1));
        m.env.retain(|k, _| k == TURNOVER_STAT);
        let r = analyze(&[m], &SignalThresholds::default());
        assert_eq!((r.points(), r.terms.len(), r.has_alarms()), (0, 0, false));
        assert!(r.table().contains("nothing to analyse"));
    }

    #[test]
    fn dominance_boundary() {
        // sharpe's mean share over the window is d: no alarm at threshold d, alarm just below it.
        let ms: Vec<Metrics> = (1..=12)
            .map(|i| {
                let mut v = [0.1; N_COMPONENTS];
                v[3] = 0.9; // share 0.9 / 1.5 = 0.6
                v[1] = -0.1;
                // scaled by powers of two: every share stays the same, no value is constant
                point(i, v.map(|x| x * f64::from(1 << (i % 3))), None)
            })
            .collect();
        let share = analyze(&ms, &SignalThresholds::default()).terms[3].mean_share;
        assert!((share - 0.6).abs() < 1e-12);
        let th = SignalThresholds {
            dominance: share,
            ..Default::default()
        };
        assert!(!kinds(&analyze(&ms, &th), "sharpe").contains(&AlarmKind::Dominance));
        let th = SignalThresholds {
            dominance: share - 1e-9,
            ..Default::default()
        };
        let r = analyze(&ms, &th);
        assert_eq!(kinds(&r, "sharpe"), vec![AlarmKind::Dominance]);
        assert_eq!(
            (r.alarms[0].first_iteration, r.alarms[0].last_iteration),
            (3, 12)
        );
    }

    #[test]
    fn the_objective_term_has_its_own_dominance_threshold() {
        // The same run with pnl at the 0.6 share: no alarm at the default thresholds (pnl is the
        // objective), one at an `objective_dominance` just below its share, and `dominance` alone
        // does not reach it.
        let ms: Vec<Metrics> = (1..=12)
            .map(|i| {
                let mut v = [0.1; N_COMPONENTS];
                v[0] = 0.9;
                v[1] = -0.1;
                point(i, v.map(|x| x * f64::from(1 << (i % 3))), None)
            })
            .collect();
        let r = analyze(&ms, &SignalThresholds::default());
        assert!((r.terms[0].mean_share - 0.6).abs() < 1e-12);
        assert!(!kinds(&r, OBJECTIVE_TERM).contains(&AlarmKind::Dominance));
        let th = SignalThresholds {
            dominance: 0.1,
            ..Default::default()
        };
        assert!(!kinds(&analyze(&ms, &th), OBJECTIVE_TERM).contains(&AlarmKind::Dominance));
        let th = SignalThresholds {
            objective_dominance: 0.6 - 1e-9,
            ..Default::default()
        };
        let r = analyze(&ms, &th);
        assert_eq!(kinds(&r, OBJECTIVE_TERM), vec![AlarmKind::Dominance]);
        assert!(
            r.alarms[0].detail.contains("objective_dominance"),
            "{}",
            r.alarms[0].detail
        );
        let bad = SignalThresholds {
            objective_dominance: 0.0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("objective_dominance")
        );
    }

    #[test]
    fn dominance_looks_at_the_window_only() {
        // pnl dominates early, then stops: the last window is clean.
        let ms: Vec<Metrics> = (1..=20)
            .map(|i| {
                let mut v = clean(i);
                if i <= 10 {
                    v[0] = 10.0;
                }
                point(i, v, None)
            })
            .collect();
        let r = analyze(&ms, &SignalThresholds::default());
        assert!(
            !kinds(&r, "pnl").contains(&AlarmKind::Dominance),
            "{}",
            r.table()
        );
    }

    #[test]
    fn collapse_boundary_and_weights() {
        let run = |timing: f64| -> Vec<Metrics> {
            (1..=10)
                .map(|i| {
                    let mut v = [0.3, -0.2, timing, 0.25, -0.1, -0.15, -0.2];
                    // timing alternates sign, so it is never constant
                    v[2] *= if i % 2 == 0 { 1.0 } else { -1.0 };
                    point(i, v, None)
                })
                .collect()
        };
        let th = SignalThresholds::default();
        // |timing| = vanish * scale (scale includes timing itself): vanishing at the boundary
        let s0 = 1.2; // the other terms' magnitudes
        let at = th.vanish * s0 / (1.0 - th.vanish);
        let r = analyze(&run(at * 0.999), &th);
        assert_eq!(
            kinds(&r, "timing"),
            vec![AlarmKind::Collapse],
            "{}",
            r.table()
        );
        assert!(detail(&r, "timing").contains("vanishing"));
        let r = analyze(&run(at * 1.01), &th);
        assert!(kinds(&r, "timing").is_empty(), "{}", r.table());
        // a zero term of weight 0 is not a collapse; of a non-zero weight it is
        let mut w = [1.0; N_COMPONENTS];
        w[2] = 0.0;
        assert!(kinds(&analyze_weighted(&run(0.0), &th, Some(&w)), "timing").is_empty());
        w[2] = 2.0;
        let r = analyze_weighted(&run(0.0), &th, Some(&w));
        assert_eq!(kinds(&r, "timing"), vec![AlarmKind::Collapse]);
        assert!(detail(&r, "timing").contains("weight 2"), "{}", r.table());
    }

    #[test]
    fn constant_term_is_a_collapse() {
        let ms: Vec<Metrics> = (1..=10)
            .map(|i| {
                let mut v = clean(i);
                v[4] = -0.1; // drawdown constant and clearly non-zero
                point(i, v, None)
            })
            .collect();
        let r = analyze(&ms, &SignalThresholds::default());
        assert_eq!(kinds(&r, "drawdown"), vec![AlarmKind::Collapse]);
        assert!(r.alarms[0].detail.contains("constant"), "{}", r.table());
        // one point is never "constant"
        let r = analyze(&ms[..1], &SignalThresholds::default());
        assert!(kinds(&r, "drawdown").is_empty());
        // a range just above the tolerance is not constant
        let th = SignalThresholds::default();
        let ms: Vec<Metrics> = (1..=10)
            .map(|i| {
                let mut v = clean(i);
                v[4] = -0.1 + if i == 3 { 1e-8 } else { 0.0 };
                point(i, v, None)
            })
            .collect();
        assert!(kinds(&analyze(&ms, &th), "drawdown").is_empty());
    }

    #[test]
    fn sign_flip_boundary() {
        // blocks of 5 points alternating +1 / -1 (with noise): b blocks give b - 1 flips.
        let series = |blocks: usize| -> Vec<Metrics> {
            (0..5 * blocks)
                .map(|k| {
                    let mut v = clean(k + 1);
                    let sign = if (k / 5) % 2 == 0 { 1.0 } else { -1.0 };
                    v[0] = sign * (0.3 + 0.01 * (k % 5) as f64);
                    point(k + 1, v, None)
                })
                .collect()
        };
        let th = SignalThresholds::default();
        let r = analyze(&series(3), &th);
        assert_eq!(r.terms[0].sign_flips, 2);
        assert!(!kinds(&r, "pnl").contains(&AlarmKind::SignFlips));
        let r = analyze(&series(4), &th);
        assert_eq!(r.terms[0].sign_flips, 3);
        assert!(kinds(&r, "pnl").contains(&AlarmKind::SignFlips));
        // zero-mean noise: block means are not significant, no flips counted
        let noise = [0.3, -0.3, 0.2, -0.25, 0.05];
        let v: Vec<f64> = (0..40)
            .map(|k| noise[k % 5] * if k % 3 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(sign_flips(&v, 5, 2.0), 0);
        // alignment to the end: the oldest remainder is left out
        assert_eq!(sign_flips(&[-1.0, 1.0, 1.0, 2.0, 2.0], 2, 2.0), 0);
        assert_eq!(sign_flips(&[-1.0, -1.0, 1.0, 1.0], 2, 2.0), 1);
    }

    #[test]
    fn drift_boundary() {
        // pnl's value grows linearly: its share rises steadily.
        let run = |n: usize, growth: f64| -> Vec<Metrics> {
            (1..=n)
                .map(|i| {
                    let mut v = clean(i);
                    v[0] = 0.3 + growth * i as f64;
                    point(i, v, None)
                })
                .collect()
        };
        let th = SignalThresholds::default();
        let r = analyze(&run(30, 0.1), &th);
        assert!(r.terms[0].trend > 0.0 && r.terms[0].trend_t > th.drift_t);
        assert!(
            kinds(&r, "pnl").contains(&AlarmKind::Drift),
            "{}",
            r.table()
        );
        // the same trend on fewer points than drift_min_points: not evaluated
        let r = analyze(&run(th.drift_min_points - 1, 1.0), &th);
        assert!(
            !kinds(&r, "pnl").contains(&AlarmKind::Drift),
            "{}",
            r.table()
        );
        // a significant but small change: no drift
        let r = analyze(&run(30, 0.002), &th);
        let change = r.terms[0].trend * 29.0;
        assert!(change.abs() < th.drift_change, "{change}");
        assert!(
            !kinds(&r, "pnl").contains(&AlarmKind::Drift),
            "{}",
            r.table()
        );
        // trend statistics
        let (b, t) = trend(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 5.0, 7.0]);
        assert_eq!((b, t), (2.0, 1e9));
        let (b, t) = trend(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 1.0, 2.0]);
        assert!(
            (b - 0.2).abs() < 1e-12 && (t - 0.2 / (0.8f64 / 2.0 / 5.0).sqrt()).abs() < 1e-9,
            "{t}"
        );
        assert_eq!(trend(&[1.0, 2.0], &[1.0, 2.0]), (0.0, 0.0));
    }

    #[test]
    fn ignores_costs_boundary() {
        // turnover rising and the cost term falling, both with small noise, over the window
        let run = |cost_slope: f64, with_turnover: bool| -> Vec<Metrics> {
            (1..=10)
                .map(|i| {
                    let e = if i % 2 == 0 { 0.001 } else { -0.001 };
                    let mut v = clean(i);
                    v[1] = -0.2 + cost_slope * i as f64 + e;
                    point(i, v, with_turnover.then_some(0.01 * i as f64 + e))
                })
                .collect()
        };
        let th = SignalThresholds::default();
        let r = analyze(&run(-0.01, true), &th);
        assert_eq!(
            kinds(&r, "cost"),
            vec![AlarmKind::IgnoresCosts],
            "{}",
            r.table()
        );
        // costs rising with turnover, but the cost term flat: no alarm
        assert!(kinds(&analyze(&run(0.0, true), &th), "cost").is_empty());
        // the cost term falls but turnover is not logged: not evaluated
        let r = analyze(&run(-0.01, false), &th);
        assert!(kinds(&r, "cost").is_empty());
        assert!(r.table().contains("turnover: not logged"));
        // fewer window points than costs_min_points: not evaluated
        let th3 = SignalThresholds {
            window: 3,
            ..Default::default()
        };
        assert!(kinds(&analyze(&run(-0.01, true), &th3), "cost").is_empty());
    }

    #[test]
    fn thresholds_are_validated() {
        assert!(SignalThresholds::default().validate().is_ok());
        let bad = SignalThresholds {
            dominance: 1.5,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("dominance")
        );
        let bad = SignalThresholds {
            window: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("window"));
    }
}
