/*!
Performance metrics of one backtest path, and a plain-text table of them.

The input is a [`Curve`]: the equity of a portfolio at `n + 1` consecutive bars (bar 0 is the start,
equity = initial capital; bars `1..=n` follow the `n` steps), the gross exposure at the same bars, and
per step the traded notional and the costs paid. Definitions ([`Metrics::from_curve`]), with
`r_i = equity[i] / equity[i - 1] - 1` for `i = 1..=n` and `bpy = 252 * bars_per_day`:

| metric | definition |
|---|---|
| `total_return` | `equity[n] / equity[0] - 1` |
| `sharpe` | `mean(r) / sd(r) * sqrt(bpy)`, `sd` the sample standard deviation (divisor `n - 1`) |
| `sortino` | `mean(r) / dd(r) * sqrt(bpy)`, downside deviation `dd = sqrt(mean(min(r, 0)^2))` (divisor `n`) |
| `max_drawdown` | `max_i (1 - equity[i] / max_{j <= i} equity[j])`, a fraction >= 0 |
| `turnover` | `sum(traded) / mean(equity[1..=n]) * bpy / n` (annualised: times the portfolio is traded per year) |
| `exposure` | `mean_{i = 1..=n}(gross[i] / equity[i])` (`gross[0]` is not used) |
| `costs_paid` | `sum(costs) / equity[0]` (commission, slippage and borrow fees as a fraction of initial capital) |

A ratio whose denominator is 0 (a flat curve, no losing bar, fewer than 2 returns) is reported as 0.
*/

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Per-bar series of one backtest path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Equity at bars `0..=n`; `equity[0]` is the initial capital.
    pub equity: Vec<f64>,
    /// Gross exposure (sum of position values at the close) at bars `0..=n`.
    pub gross: Vec<f64>,
    /// Traded notional of each of the `n` steps.
    pub traded: Vec<f64>,
    /// Costs paid in each of the `n` steps (commission, slippage, borrow fees), currency.
    pub costs: Vec<f64>,
    /// Bars per year used to annualise (`252 * bars_per_day`).
    pub bars_per_year: f64,
    /// The path ended early by the kill switch (its equity stays flat afterwards).
    pub killed: bool,
}

impl Curve {
    /// An empty curve starting at `initial_capital`.
    pub fn new(initial_capital: f64, bars_per_year: f64) -> Self {
        Self {
            equity: vec![initial_capital],
            gross: vec![0.0],
            traded: Vec::new(),
            costs: Vec::new(),
            bars_per_year,
            killed: false,
        }
    }

    /// Append one step: the equity and gross exposure at the bar after it, its traded notional and
    /// costs.
    pub fn push(&mut self, equity: f64, gross: f64, traded: f64, costs: f64) {
        self.equity.push(equity);
        self.gross.push(gross);
        self.traded.push(traded);
        self.costs.push(costs);
    }

    /// Number of steps `n`.
    pub fn steps(&self) -> usize {
        self.equity.len().saturating_sub(1)
    }
}

/// Metrics of one policy (one path, or the average over paths). See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The policy's name.
    pub policy: String,
    /// Number of paths averaged (1 for a single curve).
    pub paths: usize,
    /// Steps per path (the mean when averaged).
    pub steps: f64,
    /// Final equity / initial capital - 1.
    pub total_return: f64,
    /// Annualised Sharpe ratio of the per-bar returns.
    pub sharpe: f64,
    /// Annualised Sortino ratio (downside deviation).
    pub sortino: f64,
    /// Largest peak-to-trough fall of equity, as a fraction of the peak.
    pub max_drawdown: f64,
    /// Traded notional per year, as a multiple of mean equity.
    pub turnover: f64,
    /// Mean gross exposure / equity.
    pub exposure: f64,
    /// Commission, slippage and borrow fees paid, as a fraction of initial capital.
    pub costs_paid: f64,
    /// Fraction of paths ended by the kill switch.
    pub killed: f64,
}

impl Metrics {
    /// Metrics of one curve (module docs). Panics only on an inconsistent curve (series of different
    /// lengths, no equity value), which is a programming error, not user input.
    pub fn from_curve(policy: &str, c: &Curve) -> Self {
        let n = c.steps();
        assert!(
            !c.equity.is_empty()
                && c.gross.len() == n + 1
                && c.traded.len() == n
                && c.costs.len() == n,
            "inconsistent curve: {} equity, {} gross, {} traded, {} costs values",
            c.equity.len(),
            c.gross.len(),
            c.traded.len(),
            c.costs.len()
        );
        let e = &c.equity;
        let c0 = e[0];
        let bpy = c.bars_per_year;
        let rets: Vec<f64> = e.windows(2).map(|w| w[1] / w[0] - 1.0).collect();
        let nf = n as f64;
        let mean = if n > 0 {
            rets.iter().sum::<f64>() / nf
        } else {
            0.0
        };
        let sd = if n > 1 {
            (rets.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (nf - 1.0)).sqrt()
        } else {
            0.0
        };
        let dd = if n > 0 {
            (rets.iter().map(|r| r.min(0.0).powi(2)).sum::<f64>() / nf).sqrt()
        } else {
            0.0
        };
        let ratio = |num: f64, den: f64| {
            if den > 0.0 {
                num / den * bpy.sqrt()
            } else {
                0.0
            }
        };

        let mut peak = f64::NEG_INFINITY;
        let mut max_dd: f64 = 0.0;
        for &x in e {
            peak = peak.max(x);
            max_dd = max_dd.max(1.0 - x / peak);
        }

        let (turnover, exposure) = if n > 0 {
            let mean_eq = e[1..].iter().sum::<f64>() / nf;
            let traded: f64 = c.traded.iter().sum();
            let exposure = e[1..]
                .iter()
                .zip(&c.gross[1..])
                .map(|(eq, g)| g / eq)
                .sum::<f64>()
                / nf;
            (traded / mean_eq * bpy / nf, exposure)
        } else {
            (0.0, 0.0)
        };

        Self {
            policy: policy.to_string(),
            paths: 1,
            steps: nf,
            total_return: e[n] / c0 - 1.0,
            sharpe: ratio(mean, sd),
            sortino: ratio(mean, dd),
            max_drawdown: max_dd,
            turnover,
            exposure,
            costs_paid: c.costs.iter().sum::<f64>() / c0,
            killed: c.killed as u8 as f64,
        }
    }

    /// The field-wise mean of per-path metrics (`paths` is their count). `None` for an empty slice.
    pub fn average(policy: &str, per_path: &[Metrics]) -> Option<Self> {
        if per_path.is_empty() {
            return None;
        }
        let k = per_path.len() as f64;
        let avg = |f: fn(&Metrics) -> f64| per_path.iter().map(f).sum::<f64>() / k;
        Some(Self {
            policy: policy.to_string(),
            paths: per_path.len(),
            steps: avg(|m| m.steps),
            total_return: avg(|m| m.total_return),
            sharpe: avg(|m| m.sharpe),
            sortino: avg(|m| m.sortino),
            max_drawdown: avg(|m| m.max_drawdown),
            turnover: avg(|m| m.turnover),
            exposure: avg(|m| m.exposure),
            costs_paid: avg(|m| m.costs_paid),
            killed: avg(|m| m.killed),
        })
    }
}

/// Column headers of [`format_table`].
pub const TABLE_HEADERS: [&str; 10] = [
    "policy",
    "return %",
    "sharpe",
    "sortino",
    "max dd %",
    "turnover/y",
    "exposure",
    "costs %",
    "killed",
    "paths",
];

/// A plain-text table, one row per policy, columns aligned (text left, numbers right).
pub fn format_table(rows: &[Metrics]) -> String {
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|m| {
            [
                m.policy.clone(),
                format!("{:.2}", 100.0 * m.total_return),
                format!("{:.3}", m.sharpe),
                format!("{:.3}", m.sortino),
                format!("{:.2}", 100.0 * m.max_drawdown),
                format!("{:.2}", m.turnover),
                format!("{:.3}", m.exposure),
                format!("{:.3}", 100.0 * m.costs_paid),
                format!("{:.2}", m.killed),
                m.paths.to_string(),
            ]
        })
        .collect();
    let mut width = TABLE_HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            if i == 0 {
                let _ = write!(l, "{c:<w$}");
            } else {
                let _ = write!(l, "{c:>w$}");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &TABLE_HEADERS.map(String::from));
    let total: usize = width.iter().sum::<usize>() + 2 * (width.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in &cells {
        line(&mut out, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    /// 5 bars (4 steps): equity 100, 110, 99, 108.9, 119.79.
    /// r = +0.10, -0.10, +0.10, +0.10 (99 / 110 = 0.9, 108.9 / 99 = 1.1, 119.79 / 108.9 = 1.1).
    /// bars_per_day 1: bpy = 252.
    fn curve() -> Curve {
        let mut c = Curve::new(100.0, 252.0);
        c.push(110.0, 50.0, 100.0, 0.5);
        c.push(99.0, 49.5, 0.0, 0.0);
        c.push(108.9, 0.0, 49.5, 0.25);
        c.push(119.79, 119.79, 119.79, 0.25);
        c
    }

    #[test]
    fn five_bar_curve_by_hand() {
        let m = Metrics::from_curve("x", &curve());
        // total return: 119.79 / 100 - 1 = 0.1979
        assert!(close(m.total_return, 0.1979), "{}", m.total_return);
        // mean r = (0.1 - 0.1 + 0.1 + 0.1) / 4 = 0.05
        // deviations 0.05, -0.15, 0.05, 0.05; squares 0.0025 + 0.0225 + 0.0025 + 0.0025 = 0.03
        // sample var = 0.03 / 3 = 0.01, sd = 0.1
        // sharpe = 0.05 / 0.1 * sqrt(252) = 0.5 * 15.874507866387544 = 7.937253933193772
        assert!(close(m.sharpe, 0.5 * 252f64.sqrt()), "{}", m.sharpe);
        // downside: min(r, 0) = 0, -0.1, 0, 0; mean of squares = 0.01 / 4 = 0.0025, dd = 0.05
        // sortino = 0.05 / 0.05 * sqrt(252) = 15.874507866387544
        assert!(close(m.sortino, 252f64.sqrt()), "{}", m.sortino);
        // running peak 100, 110, 110, 110, 119.79; drawdowns 0, 0, 0.1, 0.01, 0 -> 0.1
        assert!(close(m.max_drawdown, 0.1), "{}", m.max_drawdown);
        // traded 100 + 0 + 49.5 + 119.79 = 269.29; mean equity over bars 1..=4
        // = (110 + 99 + 108.9 + 119.79) / 4 = 437.69 / 4 = 109.4225
        // turnover = 269.29 / 109.4225 * 252 / 4 = 155.04485...
        assert!(
            close(m.turnover, 269.29 / 109.4225 * 63.0),
            "{}",
            m.turnover
        );
        // exposure = (50/110 + 49.5/99 + 0/108.9 + 119.79/119.79) / 4
        //          = (0.454545... + 0.5 + 0 + 1) / 4 = 1.954545... / 4 = 0.488636...
        assert!(
            close(m.exposure, (50.0 / 110.0 + 0.5 + 1.0) / 4.0),
            "{}",
            m.exposure
        );
        // costs 0.5 + 0 + 0.25 + 0.25 = 1.0 over initial capital 100 = 0.01
        assert!(close(m.costs_paid, 0.01), "{}", m.costs_paid);
        assert_eq!((m.paths, m.steps, m.killed), (1, 4.0, 0.0));
    }

    #[test]
    fn flat_curve_has_zero_ratios() {
        let mut c = Curve::new(1e6, 1764.0);
        for _ in 0..10 {
            c.push(1e6, 0.0, 0.0, 0.0);
        }
        let m = Metrics::from_curve("hold", &c);
        assert_eq!(
            (
                m.total_return,
                m.sharpe,
                m.sortino,
                m.max_drawdown,
                m.turnover,
                m.exposure,
                m.costs_paid
            ),
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn rising_curve_has_no_downside() {
        // r = 0.01, 0.02: no losing bar -> sortino reported as 0, sharpe finite.
        let mut c = Curve::new(100.0, 252.0);
        c.push(101.0, 0.0, 0.0, 0.0);
        c.push(103.02, 0.0, 0.0, 0.0);
        let m = Metrics::from_curve("up", &c);
        assert_eq!(m.sortino, 0.0);
        // mean 0.015, sample sd = sqrt((0.005^2 * 2) / 1) = 0.0070710678...
        assert!(
            close(m.sharpe, 0.015 / (0.00005f64).sqrt() * 252f64.sqrt()),
            "{}",
            m.sharpe
        );
        assert_eq!(m.max_drawdown, 0.0);
    }

    #[test]
    fn average_is_fieldwise() {
        let a = Metrics {
            total_return: 0.1,
            sharpe: 1.0,
            killed: 1.0,
            steps: 4.0,
            paths: 1,
            ..Default::default()
        };
        let b = Metrics {
            total_return: 0.3,
            sharpe: 3.0,
            killed: 0.0,
            steps: 4.0,
            paths: 1,
            ..Default::default()
        };
        let m = Metrics::average("avg", &[a, b]).unwrap();
        assert!(close(m.total_return, 0.2) && close(m.sharpe, 2.0) && close(m.killed, 0.5));
        assert_eq!((m.paths, m.policy.as_str()), (2, "avg"));
        assert!(Metrics::average("none", &[]).is_none());
    }

    #[test]
    fn table_is_aligned() {
        let m1 = Metrics::from_curve("hold", &curve());
        let m2 = Metrics::from_curve("equal-weight", &curve());
        let t = format_table(&[m1, m2]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("policy"));
        assert!(lines[2].starts_with("hold ") && lines[3].starts_with("equal-weight "));
        // every row ends at the same column (numbers are right-aligned)
        assert_eq!(lines[0].len(), lines[2].len());
        assert_eq!(lines[2].len(), lines[3].len());
        assert!(lines[2].contains("19.79"));
    }
}
