/*!
Market data: the dense arrays every other module reads, the synthetic generator that is the embedded
default, and the loader for real long-format OHLCV files (parquet / CSV through `polars`).

Layout: prices and volume are `[P, T, S + 1]` f32, row-major, where P is the number of independent
paths, T the number of bars and index `S` (the last) is the benchmark. Sentiment is `[P, T, S]`, macro
series `[P, T, MACRO]` (a short rate, annualised, and a VIX-like index in volatility points).
Real data has P = 1.
*/

pub mod config;
pub mod loader;
pub mod synthetic;

pub use config::{
    AdjustPolicy, AlignPolicy, DataConfig, DataSource, ListingPolicy, SignalKind, SyntheticConfig,
};
pub use loader::{load, load_file, load_files, load_files_noted, load_source};
pub use synthetic::{generate, write_parquet};

/// Number of macro series: (short rate, VIX-like index).
pub const MACRO: usize = 2;

/// Dense market data for P paths x T bars x S symbols (+ benchmark).
#[derive(Debug, Clone, PartialEq)]
pub struct MarketData {
    /// Symbol names, S of them (the benchmark not included).
    pub symbols: Vec<String>,
    /// Benchmark name ("SPY" for synthetic data).
    pub benchmark: String,
    /// Independent paths P (real data: 1).
    pub paths: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Bars per trading day (7 for hourly bars, 1 for daily).
    pub bars_per_day: usize,
    /// Bar timestamps `[T]`, seconds since the Unix epoch (synthetic data uses a synthetic calendar).
    pub timestamps: Vec<i64>,
    /// `[P, T, S + 1]`; column S is the benchmark.
    pub open: Vec<f32>,
    /// High prices, `[P, T, S + 1]`.
    pub high: Vec<f32>,
    /// Low prices, `[P, T, S + 1]`.
    pub low: Vec<f32>,
    /// Close prices, `[P, T, S + 1]`.
    pub close: Vec<f32>,
    /// Volume in shares, `[P, T, S + 1]`.
    pub volume: Vec<f32>,
    /// `[P, T, S]`, roughly in [-1, 1]; zeros when the source has none.
    pub sentiment: Vec<f32>,
    /// `[P, T, MACRO]`; zeros when the source has none.
    pub macro_series: Vec<f32>,
}

impl MarketData {
    /// Number of symbols S (benchmark excluded).
    pub fn n_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// Index into a `[P, T, S + 1]` price array.
    #[inline]
    pub fn px(&self, p: usize, t: usize, s: usize) -> usize {
        (p * self.bars + t) * (self.symbols.len() + 1) + s
    }

    /// Index into the `[P, T, S]` sentiment array.
    #[inline]
    pub fn sx(&self, p: usize, t: usize, s: usize) -> usize {
        (p * self.bars + t) * self.symbols.len() + s
    }

    /// Bars per year, used to annualise (252 trading days).
    pub fn bars_per_year(&self) -> f64 {
        252.0 * self.bars_per_day as f64
    }

    /// Position of a symbol by name; the benchmark maps to index S.
    pub fn symbol_index(&self, name: &str) -> Option<usize> {
        if name == self.benchmark {
            return Some(self.symbols.len());
        }
        self.symbols.iter().position(|s| s == name)
    }

    /// Check the invariants the environment relies on (finite positive prices, low <= open/close <= high,
    /// non-negative volume, array lengths). `origin` names the source in the error.
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        use crate::error::{Error, Location};
        let s1 = self.symbols.len() + 1;
        let n = self.paths * self.bars * s1;
        for (name, v, len) in [
            ("open", &self.open, n),
            ("high", &self.high, n),
            ("low", &self.low, n),
            ("close", &self.close, n),
            ("volume", &self.volume, n),
            (
                "sentiment",
                &self.sentiment,
                self.paths * self.bars * self.symbols.len(),
            ),
            ("macro", &self.macro_series, self.paths * self.bars * MACRO),
        ] {
            if v.len() != len {
                return Err(Error::data(
                    origin,
                    Location {
                        column: Some(name.into()),
                        ..Default::default()
                    },
                    format!("array has {} values, expected {len}", v.len()),
                ));
            }
        }
        if self.timestamps.len() != self.bars {
            return Err(Error::data(
                origin,
                Location::default(),
                "timestamps length differs from bars",
            ));
        }
        for i in 0..n {
            let (o, h, l, c, v) = (
                self.open[i],
                self.high[i],
                self.low[i],
                self.close[i],
                self.volume[i],
            );
            let sym = i % s1;
            let t = (i / s1) % self.bars;
            let loc = |col: &str| Location {
                column: Some(col.into()),
                row: Some(t + 1),
                symbol: Some(if sym == self.symbols.len() {
                    self.benchmark.clone()
                } else {
                    self.symbols[sym].clone()
                }),
            };
            for (col, x) in [("open", o), ("high", h), ("low", l), ("close", c)] {
                if !(x.is_finite() && x > 0.0) {
                    return Err(Error::data(
                        origin,
                        loc(col),
                        format!("price must be finite and > 0, got {x}"),
                    ));
                }
            }
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::data(
                    origin,
                    loc("volume"),
                    format!("volume must be finite and >= 0, got {v}"),
                ));
            }
            if h < l || o > h || o < l || c > h || c < l {
                return Err(Error::data(
                    origin,
                    loc("high"),
                    format!("inconsistent bar: open {o} high {h} low {l} close {c}"),
                ));
            }
        }
        Ok(())
    }
}
