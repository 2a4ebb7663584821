/*!
The `[data]` configuration section: where market data comes from (the synthetic generator or a file)
and the generator's settings.
*/

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where market data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (the embedded default generator) or `"file"` (parquet / CSV at `path`).
    pub source: DataSource,
    /// Data file for `source = "file"`: long-format OHLCV, `.parquet` or `.csv` (optionally `.gz`).
    pub path: Option<String>,
    /// Benchmark symbol in a data file (also the name of the synthetic benchmark).
    pub benchmark: String,
    /// A symbol with fewer bars than this is rejected by the loader.
    pub min_bars: usize,
    /// Calendar-gap policy for real data (see `data::loader` docs).
    pub align: AlignPolicy,
    /// Real data: split / dividend adjustment of the prices.
    pub adjust: AdjustPolicy,
    /// Real data: the symbols to load, in this column order (the benchmark is always loaded);
    /// empty = every symbol of the files, in file order. A name that no file holds is an error.
    pub symbols: Vec<String>,
    /// Real data: what to do with symbols listed (or delisted) at different dates.
    pub listing: ListingPolicy,
    /// Real data: first date kept (`YYYY-MM-DD` or any loader timestamp format); none = no bound.
    pub start: Option<String>,
    /// Real data: last date kept (inclusive); none = no bound.
    pub end: Option<String>,
    /// The synthetic generator's settings (`source = "synthetic"`).
    pub synthetic: SyntheticConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Synthetic,
            path: None,
            benchmark: "SPY".into(),
            min_bars: 128,
            align: AlignPolicy::Intersection,
            adjust: AdjustPolicy::None,
            symbols: Vec::new(),
            listing: ListingPolicy::Restrict,
            start: None,
            end: None,
            synthetic: SyntheticConfig::default(),
        }
    }
}

/// Where market data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The embedded synthetic generator (`data.synthetic`).
    Synthetic,
    /// A parquet / CSV file (`data.path`).
    File,
}

/// How bars of symbols that trade on different timestamps are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlignPolicy {
    /// Keep only timestamps at which every symbol (and the benchmark) has a bar.
    Intersection,
    /// Keep the union of timestamps between the first one at which every symbol has traded and the
    /// last one at which every symbol still trades; a missing bar is filled with the previous close
    /// as O=H=L=C and zero volume (zero dollar volume caps the slippage of a fill there, see
    /// docs/env-spec.md §4.5).
    ForwardFill,
}

/// Split / dividend adjustment of real prices (see `data::loader` docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdjustPolicy {
    /// Prices as given (an unadjusted split is a one-bar loss of the split ratio).
    None,
    /// Back-adjust every row by its `adj close / close` (OHLC times it, volume divided by it).
    AdjClose,
}

/// How symbols with different listing dates are handled (real data; see `data::loader` docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListingPolicy {
    /// Keep every selected symbol and restrict the period to the span in which all of them (and
    /// the benchmark) trade: one late-listed symbol shortens the whole data set.
    Restrict,
    /// Keep the period (`start` .. `end`, by default from the earliest first bar to the latest
    /// last bar of the selected symbols, within the benchmark's span) and drop every symbol that
    /// does not trade over all of it; the dropped symbols are named in the load's description.
    Drop,
}

/// The synthetic market generator (see `data::synthetic`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Number of symbols S (the benchmark comes on top).
    pub symbols: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Bars per trading day (hourly bars: 7).
    pub bars_per_day: usize,
    /// Independent paths P (scenarios draw a path and a start offset).
    pub paths: usize,
    /// Number of sectors; symbols are assigned round-robin.
    pub sectors: usize,
    /// Seed: the same seed gives bit-identical data.
    pub seed: u64,
    /// Strength of the planted predictive signal in [0, 1]; 0 means none.
    pub signal_strength: f64,
    /// Which signal is planted.
    pub signal_kind: SignalKind,
    /// Crisis warning (for the master's test, issue #12): the VIX-like series rises linearly over
    /// the `crisis_warning_bars` bars before every onset of the hidden crisis regime, by up to
    /// `crisis_warning_vix` points, so a defensive posture is foreseeable from an observable.
    /// Prices, volumes and every other series are unchanged (the same random draws), so the same
    /// market with the warning off is the null control. 0: off.
    pub crisis_warning_bars: usize,
    /// Height of the crisis warning ramp, VIX points (reached on the bar before the onset).
    pub crisis_warning_vix: f64,
    /// How often crises come: multiplies the probability that a regime change out of bull (0.2)
    /// or bear (0.4) goes to crisis, the rest going to the other of the two; in [0, 2.5] (1: the
    /// default chain, 0: no crisis after the first bar). The same random draws at any value.
    pub crisis_entry: f64,
    /// A crash at every crisis onset (issue #12's "a crisis is deep"): the market factor falls by
    /// this fraction in all (a log return of `ln(1 - crisis_crash)`), spread evenly over the first
    /// `crisis_crash_bars` bars of the crisis, on top of the regime's drift and noise; in [0, 1)
    /// (0: none). Symbols fall with their beta; the VIX reacts through the market's realised
    /// volatility, from the first crash bar on, not before.
    pub crisis_crash: f64,
    /// Bars over which the onset crash of `crisis_crash` is spread (>= 1).
    pub crisis_crash_bars: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            symbols: 143,
            bars: 8192,
            bars_per_day: 7,
            paths: 1,
            sectors: 11,
            seed: 7,
            signal_strength: 0.0,
            signal_kind: SignalKind::Sentiment,
            crisis_warning_bars: 0,
            crisis_warning_vix: 30.0,
            crisis_entry: 1.0,
            crisis_crash: 0.0,
            crisis_crash_bars: 1,
        }
    }
}

/// Planted signal families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    /// The sentiment series at bar t carries information about the return of bar t+1.
    Sentiment,
    /// In bull regimes the return of bar t+1 continues the trailing momentum.
    Momentum,
}

impl DataConfig {
    /// Range checks of the section; an error names the field (`origin` names the config source).
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        let s = &self.synthetic;
        if s.symbols == 0 {
            return bad("data.synthetic.symbols", "must be >= 1".into());
        }
        if s.paths == 0 {
            return bad("data.synthetic.paths", "must be >= 1".into());
        }
        if s.bars_per_day == 0 {
            return bad("data.synthetic.bars_per_day", "must be >= 1".into());
        }
        if s.sectors == 0 {
            return bad("data.synthetic.sectors", "must be >= 1".into());
        }
        if !s.crisis_warning_vix.is_finite() || s.crisis_warning_vix < 0.0 {
            return bad(
                "data.synthetic.crisis_warning_vix",
                format!("must be a finite number >= 0, got {}", s.crisis_warning_vix),
            );
        }
        if !(0.0..=2.5).contains(&s.crisis_entry) {
            return bad(
                "data.synthetic.crisis_entry",
                format!("must be in [0, 2.5], got {}", s.crisis_entry),
            );
        }
        if !(0.0..1.0).contains(&s.crisis_crash) {
            return bad(
                "data.synthetic.crisis_crash",
                format!("must be in [0, 1), got {}", s.crisis_crash),
            );
        }
        if s.crisis_crash_bars == 0 {
            return bad("data.synthetic.crisis_crash_bars", "must be >= 1".into());
        }
        for (field, v) in [("data.start", &self.start), ("data.end", &self.end)] {
            if let Some(v) = v
                && super::loader::parse_timestamp(v).is_none()
            {
                return bad(
                    field,
                    format!("cannot parse `{v}` as a date (e.g. 2004-08-19)"),
                );
            }
        }
        if let (Some(a), Some(b)) = (&self.start, &self.end)
            && let (Some(ta), Some(tb)) = (
                super::loader::parse_timestamp(a),
                super::loader::parse_timestamp(b),
            )
            && ta > tb
        {
            return bad("data.end", format!("`{b}` is before data.start `{a}`"));
        }
        let mut seen = std::collections::HashSet::new();
        for sym in &self.symbols {
            if sym.trim().is_empty() {
                return bad("data.symbols", "empty symbol name".into());
            }
            if !seen.insert(sym.as_str()) {
                return bad("data.symbols", format!("`{sym}` listed twice"));
            }
        }
        if !(0.0..=1.0).contains(&s.signal_strength) {
            return bad(
                "data.synthetic.signal_strength",
                format!("must be in [0, 1], got {}", s.signal_strength),
            );
        }
        Ok(())
    }
}
