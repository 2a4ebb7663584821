/*!
Is one backtest better than another beyond noise? Paired comparisons of two policies run over the
same paths and bars.

For two curves the per-bar simple returns `a_t`, `b_t` (all paths' steps pooled, paired bar by bar,
`T` pairs) give:

- **Sharpe difference** (annualised, `sqrt(bars_per_year)` times the per-bar ratio) with the standard
  error of Jobson and Korkie as corrected by Memmel (2003), which accounts for the correlation `rho`
  of the two series: `Var(SR_a - SR_b) = (2 - 2 rho + (SR_a^2 + SR_b^2 - 2 SR_a SR_b rho^2) / 2) / T`
  (per-bar ratios, then annualised).
- **Log-return difference**: `sum_t ln(1 + a_t) - ln(1 + b_t)` per path, averaged over paths, with the
  standard error `sd(d) sqrt(T) / P` of the mean of the per-path sums of the i.i.d. differences `d_t`
  (per-bar noise; serial correlation is ignored).

`z` values are the differences over their standard errors; "beyond noise" in the tests means
`z > 2`.

[`decision_ic`] asks a sharper question of a traced [`AgentPolicy`](super::AgentPolicy) run: do the
policy's decisions carry information about the next bar? It is the correlation, over all
(path, bar, symbol) decisions, between `Decision::p_long` and the symbol's next log return
`ln(C[t+1] / C[t])`, with `z = corr * sqrt(n)` (its standard error under no correlation). It uses
every symbol-bar, not only the traded ones, so it can detect an edge (or a look-ahead leak) that
is too small to show in the P&L. A curve stopped by the kill switch stays flat, so its later returns are 0, as the money was.
*/

use super::backtest::BacktestResult;
use crate::error::{Error, Result};

/// The paired comparison of policy `a` against policy `b`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    /// The policy compared (`a`).
    pub a: String,
    /// The policy it is compared with (`b`).
    pub b: String,
    /// Paired bars (all paths).
    pub bars: usize,
    /// Annualised Sharpe ratios of the pooled returns and their difference `a - b`.
    pub sharpe_a: f64,
    /// Sharpe ratio of `b`.
    pub sharpe_b: f64,
    /// `sharpe_a - sharpe_b`.
    pub sharpe_diff: f64,
    /// Standard error of `sharpe_diff` (Memmel 2003), annualised.
    pub sharpe_diff_se: f64,
    /// Mean over paths of the total log-return difference `a - b`, and its standard error.
    pub log_return_diff: f64,
    /// Standard error of `log_return_diff`.
    pub log_return_diff_se: f64,
}

impl Comparison {
    /// `sharpe_diff / sharpe_diff_se` (0 when the standard error is 0).
    pub fn sharpe_z(&self) -> f64 {
        z(self.sharpe_diff, self.sharpe_diff_se)
    }

    /// `log_return_diff / log_return_diff_se` (0 when the standard error is 0).
    pub fn return_z(&self) -> f64 {
        z(self.log_return_diff, self.log_return_diff_se)
    }

    /// One line for reports.
    pub fn line(&self) -> String {
        format!(
            "{} vs {}: Sharpe {:+.3} +/- {:.3} (z {:+.2}), log return {:+.2}% +/- {:.2}% (z {:+.2}), {} paired bars",
            self.a,
            self.b,
            self.sharpe_diff,
            self.sharpe_diff_se,
            self.sharpe_z(),
            100.0 * self.log_return_diff,
            100.0 * self.log_return_diff_se,
            self.return_z(),
            self.bars
        )
    }
}

fn z(d: f64, se: f64) -> f64 {
    if se > 0.0 { d / se } else { 0.0 }
}

fn returns(equity: &[f64]) -> impl Iterator<Item = f64> + '_ {
    equity.windows(2).map(|w| w[1] / w[0] - 1.0)
}

/// Compare `a` against `b` (module docs). Both must cover the same paths and bars.
pub fn compare(a: &BacktestResult, b: &BacktestResult) -> Result<Comparison> {
    if a.curves.len() != b.curves.len()
        || (a.first_bar, a.last_bar) != (b.first_bar, b.last_bar)
        || a.curves.is_empty()
    {
        return Err(Error::invalid(format!(
            "cannot compare {} ({} paths, bars {}..={}) with {} ({} paths, bars {}..={})",
            a.metrics.policy,
            a.curves.len(),
            a.first_bar,
            a.last_bar,
            b.metrics.policy,
            b.curves.len(),
            b.first_bar,
            b.last_bar
        )));
    }
    let mut ra = Vec::new();
    let mut rb = Vec::new();
    let mut sums = Vec::with_capacity(a.curves.len());
    for (ca, cb) in a.curves.iter().zip(&b.curves) {
        if ca.equity.len() != cb.equity.len() {
            return Err(Error::invalid("curves of different lengths"));
        }
        let mut sum = 0.0;
        for (x, y) in returns(&ca.equity).zip(returns(&cb.equity)) {
            ra.push(x);
            rb.push(y);
            sum += (1.0 + x).ln() - (1.0 + y).ln();
        }
        sums.push(sum);
    }
    let t = ra.len();
    let bpy = a.curves[0].bars_per_year;
    let (ma, sa) = mean_sd(&ra);
    let (mb, sb) = mean_sd(&rb);
    let sr = |m: f64, s: f64| if s > 0.0 { m / s } else { 0.0 };
    let (sra, srb) = (sr(ma, sa), sr(mb, sb));
    let cov = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / (t.max(2) - 1) as f64;
    let rho = if sa > 0.0 && sb > 0.0 {
        (cov / (sa * sb)).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let var = (2.0 - 2.0 * rho + 0.5 * (sra * sra + srb * srb - 2.0 * sra * srb * rho * rho))
        / t.max(1) as f64;
    let d: Vec<f64> = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (1.0 + x).ln() - (1.0 + y).ln())
        .collect();
    let (_, sd_d) = mean_sd(&d);
    let p = sums.len() as f64;
    Ok(Comparison {
        a: a.metrics.policy.clone(),
        b: b.metrics.policy.clone(),
        bars: t,
        sharpe_a: sra * bpy.sqrt(),
        sharpe_b: srb * bpy.sqrt(),
        sharpe_diff: (sra - srb) * bpy.sqrt(),
        sharpe_diff_se: var.max(0.0).sqrt() * bpy.sqrt(),
        log_return_diff: sums.iter().sum::<f64>() / p,
        log_return_diff_se: sd_d * (t as f64 / p).sqrt() / p.sqrt(),
    })
}

/// The information content of a policy's decisions (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DecisionIc {
    /// Decisions with a next bar.
    pub n: usize,
    /// Pearson correlation of `p_long` with the next log return.
    pub corr: f64,
    /// `corr * sqrt(n)`.
    pub z: f64,
}

impl DecisionIc {
    /// One line for reports.
    pub fn line(&self) -> String {
        format!(
            "decision IC: corr(P(long after the step), next-bar return) = {:+.4} (z {:+.2}, {} symbol-bars)",
            self.corr, self.z, self.n
        )
    }
}

/// [`DecisionIc`] of `decisions` on `data` (module docs). 0 when either series is constant.
pub fn decision_ic(
    decisions: &[super::agent::Decision],
    data: &crate::data::MarketData,
) -> DecisionIc {
    let pairs: Vec<(f64, f64)> = decisions
        .iter()
        .filter(|d| (d.bar as usize) + 1 < data.bars && (d.path as usize) < data.paths)
        .map(|d| {
            let (p, t, s) = (d.path as usize, d.bar as usize, d.symbol as usize);
            let r = (data.close[data.px(p, t + 1, s)] as f64 / data.close[data.px(p, t, s)] as f64)
                .ln();
            (d.p_long, r)
        })
        .collect();
    let n = pairs.len();
    let xs: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let (mx, sx) = mean_sd(&xs);
    let (my, sy) = mean_sd(&ys);
    let corr = if sx > 0.0 && sy > 0.0 {
        pairs.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
            / ((n.max(2) - 1) as f64 * sx * sy)
    } else {
        0.0
    };
    DecisionIc {
        n,
        corr,
        z: corr * (n as f64).sqrt(),
    }
}

/// Mean and unbiased standard deviation (0 for fewer than two values).
fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let m = x.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (m, 0.0);
    }
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (m, v.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::{Curve, Metrics};
    use crate::rng::SplitMix64;

    fn result(name: &str, rets: &[Vec<f64>]) -> BacktestResult {
        let curves: Vec<Curve> = rets
            .iter()
            .map(|r| {
                let mut equity = vec![100.0];
                for x in r {
                    equity.push(equity.last().unwrap() * (1.0 + x));
                }
                let n = r.len();
                Curve {
                    equity,
                    gross: vec![0.0; n + 1],
                    traded: vec![0.0; n],
                    costs: vec![0.0; n],
                    bars_per_year: 1.0,
                    killed: false,
                }
            })
            .collect();
        BacktestResult {
            metrics: Metrics {
                policy: name.into(),
                ..Metrics::default()
            },
            per_path: vec![],
            curves,
            first_bar: 0,
            last_bar: rets[0].len(),
            limits: Default::default(),
        }
    }

    #[test]
    fn identical_policies_do_not_differ_and_a_planted_edge_is_detected() {
        let mut rng = SplitMix64::new(3);
        let base: Vec<Vec<f64>> = (0..2)
            .map(|_| (0..5000).map(|_| 0.01 * rng.normal()).collect())
            .collect();
        let same = compare(&result("a", &base), &result("b", &base)).unwrap();
        assert_eq!((same.sharpe_diff, same.log_return_diff), (0.0, 0.0));
        assert_eq!(same.bars, 10_000);
        // Same noise plus an edge of 0.002 per bar with independent noise of 0.01: per-bar Sharpe
        // of the edge 0.2 / sqrt(2) relative; over 10k bars it is far beyond noise.
        let better: Vec<Vec<f64>> = base
            .iter()
            .map(|r| r.iter().map(|x| x + 0.002 + 0.01 * rng.normal()).collect())
            .collect();
        let c = compare(&result("edge", &better), &result("b", &base)).unwrap();
        assert!(c.sharpe_z() > 5.0 && c.return_z() > 5.0, "{}", c.line());
        // Pure noise of the same size is not beyond noise (fixed seed).
        let noisy: Vec<Vec<f64>> = base
            .iter()
            .map(|r| r.iter().map(|x| x + 0.01 * rng.normal()).collect())
            .collect();
        let c = compare(&result("noise", &noisy), &result("b", &base)).unwrap();
        assert!(
            c.sharpe_z().abs() < 2.0 && c.return_z().abs() < 2.0,
            "{}",
            c.line()
        );
        // Mismatched runs are an error.
        let short = result("s", &[vec![0.0; 10]]);
        assert!(compare(&short, &result("b", &base)).is_err());
    }
}
