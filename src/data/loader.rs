/*!
Loader for real market data: long-format OHLCV files read with `polars`.

# Files

- `.parquet` (or `.pq`), read with polars' parquet reader;
- `.csv`, and gzip-compressed CSV (`.csv.gz`, or any file starting with the gzip magic bytes),
  decompressed in memory with `flate2` and read with polars' CSV reader, every column as text so
  that each value is parsed (and reported) here with its row.

# Columns (names matched case-insensitively, surrounding spaces ignored)

| column | aliases | required | values |
|---|---|---|---|
| `timestamp` | `date`, `datetime`, `time`, `ts` | yes | see below |
| `symbol` | `ticker` | no | a file without it is a single series named by the file stem (`sp500.csv.gz` -> `sp500`) |
| `open`, `high`, `low`, `close` | | yes | finite, > 0, `low <= open, close <= high` |
| `volume` | | yes | finite, >= 0 |
| `sentiment` | | no | finite; empty = 0 |
| `rate`, `vix` | | no | finite; empty = unknown (macro series, see below) |
| `path` | | no | a single value (files written by `synthetic::write_parquet` with P = 1) |

Other columns are ignored. By default (`data.adjust = "none"`) prices are used as given: unadjusted
prices with splits (e.g. AAPL's 2:1 split in 2005) are valid data and are loaded as-is; the split
shows up as one large negative return, exactly what a position marked on an unadjusted feed would
see, and what an agent trained on it learns to fear (the shared sample has three: AAPL 2000-06-21
and 2005-02-28, MSFT 2003-02-18, each about -50% in a day). With `data.adjust = "adj-close"` every
row's open, high, low and close are multiplied by `adj close / close` and its volume divided by it
(back-adjusted for splits and dividends, dollar volume unchanged); the `adj close` column (aliases
`adj_close`, `adjclose`, `adjusted close`, `adjusted_close`) is then required in every file.

Timestamps may be integers (seconds since the Unix epoch; values beyond 1e11, 1e14 and 1e17 in
absolute value are read as milliseconds, microseconds and nanoseconds), ISO dates `YYYY-MM-DD`,
ISO date-times `YYYY-MM-DD[T ]HH:MM[:SS[.fff]][Z|+HH:MM|-HH:MM]`, `M/D/YYYY [HH:MM[:SS]]` and
`YYYY/MM/DD`; parquet `Date` and `Datetime` columns are converted. Dates mean 00:00 UTC.

# Checks (each error names the file and, where it applies, the column, the 1-based data row and the symbol)

Missing required column (row 0 = the header), empty file or no data rows, unreadable / corrupt /
truncated file, unparseable value, missing value, NaN / infinite / non-positive price, `high < low`,
open or close outside `[low, high]`, negative or non-finite volume, timestamps of a symbol not
increasing (rows must be sorted by time within each symbol), duplicate `(symbol, timestamp)` rows, a
symbol with fewer than `min_bars` bars, a symbol present in two files, the benchmark missing from
every file, fewer than `min_bars` bars left after alignment.

# Alignment ([`AlignPolicy`])

- `intersection`: keep the timestamps at which every symbol and the benchmark have a bar.
- `forward-fill`: keep the union of all timestamps between the first one at which every symbol has
  traded and the last one at which every symbol still trades (so a series that ends early does not
  freeze the others); a symbol's missing bar is filled with its previous close as O = H = L = C and
  volume 0, its sentiment holds the previous value.

# Symbols, dates and listing ([`ListingPolicy`])

`data.symbols` selects symbols (in that column order; the benchmark is always kept; a name no file
holds is an error naming the files and the symbol). `data.start` / `data.end` drop the bars outside
that date range first (the end date is inclusive, the whole day). Then symbols listed or delisted at
different dates are handled by `data.listing`:

- `restrict` (default): keep every symbol; alignment then restricts the period to the span in which
  all of them trade. With the shared sample (AAPL, IBM, MSFT from 2000, GOOG from 2004, FB from
  2012-05-18; sp500 1999..2018) the period starts at FB's first day (199 bars to 2013-03-01).
- `drop`: keep the period from the earliest first bar to the latest last bar of the symbols (within
  the benchmark's span) and drop every symbol that does not trade over all of it; the dropped
  symbols are named in [`load_source`]'s description. On the shared sample: AAPL, IBM, MSFT,
  2000-03-01..2013-03-01 (3270 bars), GOOG and FB dropped. To keep GOOG, set
  `data.start = "2004-08-19"` (then only FB is dropped).

Macro series per aligned bar: the benchmark row's `rate` / `vix` when present, else the first symbol
row that has one, else the previous bar's value (0 before any is known). Sentiment is 0 when absent.
`bars_per_day` is the median number of bars per UTC calendar day (1 for daily data). The result has
P = 1 and passes [`MarketData::validate`].
*/

use std::collections::HashMap;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::config::{AdjustPolicy, AlignPolicy, DataConfig, DataSource, ListingPolicy};
use super::{MACRO, MarketData};
use crate::error::{Error, Location, Result};

/// Load one long-format file; the benchmark (`cfg.benchmark`) must be one of its symbols.
pub fn load_file(path: &Path, cfg: &DataConfig) -> Result<MarketData> {
    load_files(&[path.to_path_buf()], cfg)
}

/// Load several files as one data set (e.g. stocks plus a separate benchmark index file). Each
/// symbol must come from exactly one file; the benchmark must be in one of them.
pub fn load_files(paths: &[PathBuf], cfg: &DataConfig) -> Result<MarketData> {
    Ok(load_files_noted(paths, cfg)?.0)
}

/// [`load_files`], plus one line per symbol that the listing policy dropped (empty when none).
pub fn load_files_noted(paths: &[PathBuf], cfg: &DataConfig) -> Result<(MarketData, Vec<String>)> {
    if paths.is_empty() {
        return Err(Error::invalid("load_files: no data files given"));
    }
    let mut all: Vec<SymbolBars> = Vec::new();
    for path in paths {
        let df = read_frame(path)?;
        for sb in parse_frame(path, &df, cfg.adjust)? {
            if let Some(prev) = all.iter().find(|x| x.name == sb.name) {
                return Err(Error::data(
                    path,
                    Location {
                        symbol: Some(sb.name.clone()),
                        ..Default::default()
                    },
                    format!("symbol also present in {}", prev.file.display()),
                ));
            }
            all.push(sb);
        }
    }
    let origin = files_origin(paths);
    if !cfg.symbols.is_empty() {
        all = select_symbols(all, cfg, &origin)?;
    }
    restrict_dates(&mut all, cfg, &origin)?;
    for sb in &all {
        if sb.bars.len() < cfg.min_bars {
            return Err(Error::data(
                &sb.file,
                Location {
                    column: Some("timestamp".into()),
                    row: None,
                    symbol: Some(sb.name.clone()),
                },
                format!(
                    "symbol has {} bars{}, fewer than min_bars = {}",
                    sb.bars.len(),
                    if cfg.start.is_some() || cfg.end.is_some() {
                        " between data.start and data.end"
                    } else {
                        ""
                    },
                    cfg.min_bars
                ),
            ));
        }
    }
    let Some(bi) = all.iter().position(|x| x.name == cfg.benchmark) else {
        let found: Vec<&str> = all.iter().map(|x| x.name.as_str()).take(20).collect();
        return Err(Error::data(
            &origin,
            Location {
                column: Some("symbol".into()),
                row: None,
                symbol: Some(cfg.benchmark.clone()),
            },
            format!(
                "benchmark `{}` not found (symbols: {}); add a file holding it or set data.benchmark",
                cfg.benchmark,
                found.join(", ")
            ),
        ));
    };
    let bench = all.remove(bi);
    let notes = match cfg.listing {
        ListingPolicy::Restrict => Vec::new(),
        ListingPolicy::Drop => drop_late_listed(&mut all, &bench, &origin)?,
    };
    if all.is_empty() {
        return Err(Error::data(
            &origin,
            Location::default(),
            "no symbols besides the benchmark",
        ));
    }
    all.push(bench); // column S
    let md = align(&all, cfg, &origin)?;
    md.validate(&origin.display().to_string())?;
    Ok((md, notes))
}

/// Keep the symbols of `data.symbols`, in its order, and the benchmark; a name that no file holds
/// is an error naming the files and the symbol.
fn select_symbols(
    mut all: Vec<SymbolBars>,
    cfg: &DataConfig,
    origin: &Path,
) -> Result<Vec<SymbolBars>> {
    let mut out = Vec::with_capacity(cfg.symbols.len() + 1);
    for name in &cfg.symbols {
        let Some(i) = all.iter().position(|x| &x.name == name) else {
            if out.iter().any(|x: &SymbolBars| &x.name == name) {
                continue;
            }
            let mut found: Vec<&str> = all.iter().map(|x| x.name.as_str()).collect();
            found.extend(out.iter().map(|x: &SymbolBars| x.name.as_str()));
            found.sort_unstable();
            return Err(Error::data(
                origin,
                Location {
                    column: Some("symbol".into()),
                    row: None,
                    symbol: Some(name.clone()),
                },
                format!(
                    "data.symbols names `{name}`, which no file holds (symbols: {})",
                    found.join(", ")
                ),
            ));
        };
        out.push(all.remove(i));
    }
    if !cfg.symbols.contains(&cfg.benchmark)
        && let Some(i) = all.iter().position(|x| x.name == cfg.benchmark)
    {
        out.push(all.remove(i));
    }
    Ok(out)
}

/// Drop the bars outside `data.start ..= data.end` (validated by the config).
fn restrict_dates(all: &mut [SymbolBars], cfg: &DataConfig, origin: &Path) -> Result<()> {
    let bound = |field: &str, v: &Option<String>| -> Result<Option<i64>> {
        match v {
            None => Ok(None),
            Some(s) => parse_timestamp(s).map(Some).ok_or_else(|| {
                Error::config_field(
                    &origin.display().to_string(),
                    field,
                    format!("cannot parse `{s}` as a date"),
                )
            }),
        }
    };
    let lo = bound("data.start", &cfg.start)?.unwrap_or(i64::MIN);
    // an end date means the whole day
    let hi = match bound("data.end", &cfg.end)? {
        Some(t) if t.rem_euclid(86_400) == 0 => t + 86_399,
        Some(t) => t,
        None => i64::MAX,
    };
    for sb in all.iter_mut() {
        sb.bars.retain(|b| b.ts >= lo && b.ts <= hi);
    }
    Ok(())
}

/// `listing = "drop"`: the period runs from the earliest first bar to the latest last bar of the
/// symbols (within the benchmark's span); every symbol that does not trade over all of it is
/// removed. Returns one note per dropped symbol.
fn drop_late_listed(
    all: &mut Vec<SymbolBars>,
    bench: &SymbolBars,
    origin: &Path,
) -> Result<Vec<String>> {
    let (Some(b0), Some(b1)) = (bench.bars.first(), bench.bars.last()) else {
        return Ok(Vec::new());
    };
    let first = |s: &SymbolBars| s.bars.first().map_or(i64::MAX, |b| b.ts);
    let last = |s: &SymbolBars| s.bars.last().map_or(i64::MIN, |b| b.ts);
    let start = all.iter().map(first).min().unwrap_or(b0.ts).max(b0.ts);
    let end = all.iter().map(last).max().unwrap_or(b1.ts).min(b1.ts);
    let mut notes = Vec::new();
    all.retain(|s| {
        let keep = first(s) <= start && last(s) >= end;
        if !keep {
            notes.push(format!(
                "dropped {} (trades {}..{}, the period is {}..{}; listing = \"drop\")",
                s.name,
                format_date(first(s)),
                format_date(last(s)),
                format_date(start),
                format_date(end)
            ));
        }
        keep
    });
    if all.is_empty() {
        return Err(Error::data(
            origin,
            Location::default(),
            format!(
                "listing = \"drop\": no symbol trades over the whole period {}..{} (set data.start / data.end, or listing = \"restrict\"); {}",
                format_date(start),
                format_date(end),
                notes.join("; ")
            ),
        ));
    }
    Ok(notes)
}

/// `YYYY-MM-DD` of seconds since the epoch.
fn format_date(secs: i64) -> String {
    format_timestamp(secs)[..10].to_string()
}

/// The market data of a command: `file` when given (one file, or several separated by commas),
/// else the configured source ([`load`]). Also returns a description of where it came from (the
/// file names, or the synthetic generator's seed and signal) for reports.
pub fn load_source(cfg: &DataConfig, file: Option<&Path>) -> Result<(MarketData, String)> {
    let noted = |text: &str, notes: Vec<String>| {
        if notes.is_empty() {
            text.to_string()
        } else {
            format!("{text} ({})", notes.join("; "))
        }
    };
    if let Some(f) = file {
        let text = f.to_string_lossy();
        let (md, notes) = load_files_noted(&split_paths(&text), cfg)?;
        return Ok((md, noted(&text, notes)));
    }
    if cfg.source == DataSource::File
        && let Some(p) = cfg.path.clone()
    {
        let (md, notes) = load_files_noted(&split_paths(&p), cfg)?;
        return Ok((md, noted(&p, notes)));
    }
    let md = load(cfg)?;
    let origin = match cfg.source {
        DataSource::File => cfg.path.clone().unwrap_or_default(),
        DataSource::Synthetic => {
            let s = &cfg.synthetic;
            format!(
                "synthetic (seed {}, signal {} {:?})",
                s.seed, s.signal_strength, s.signal_kind
            )
        }
    };
    Ok((md, origin))
}

/// Load market data as configured: `source = "synthetic"` generates it; `source = "file"` loads
/// `path`, which may list several files separated by commas (e.g. `"stocks.csv.gz,sp500.csv.gz"`).
pub fn load(cfg: &DataConfig) -> Result<MarketData> {
    match cfg.source {
        DataSource::Synthetic => Ok(super::synthetic::generate(&cfg.synthetic, &cfg.benchmark)),
        DataSource::File => {
            let Some(p) = cfg.path.as_deref() else {
                return Err(Error::config_field(
                    "data",
                    "data.path",
                    "source = \"file\" needs a path".into(),
                ));
            };
            load_files(&split_paths(p), cfg)
        }
    }
}

/// The files of a comma-separated list (`"stocks.csv.gz,sp500.csv.gz"`), blanks dropped.
fn split_paths(list: &str) -> Vec<PathBuf> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn files_origin(paths: &[PathBuf]) -> PathBuf {
    if paths.len() == 1 {
        return paths[0].clone();
    }
    PathBuf::from(
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
    )
}

// ---------------------------------------------------------------------------------------------
// Reading

fn file_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::data(path, Location::default(), msg)
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Read a file into a data frame (CSV columns as strings).
fn read_frame(path: &Path) -> Result<DataFrame> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::data(
            path,
            Location {
                row: Some(0),
                ..Default::default()
            },
            "empty file",
        ));
    }
    let is_parquet = name.ends_with(".parquet") || name.ends_with(".pq");
    if is_parquet {
        let res = catch_unwind(AssertUnwindSafe(|| {
            ParquetReader::new(std::io::Cursor::new(std::mem::take(&mut bytes))).finish()
        }));
        return match res {
            Ok(Ok(df)) => Ok(df),
            Ok(Err(e)) => Err(file_error(
                path,
                format!("corrupt or unreadable parquet file: {e}"),
            )),
            Err(p) => Err(file_error(
                path,
                format!("corrupt parquet file (reader failed: {})", panic_text(p)),
            )),
        };
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| file_error(path, format!("corrupt or truncated gzip data: {e}")))?;
        bytes = out;
    } else if !(name.ends_with(".csv") || name.ends_with(".txt")) {
        return Err(file_error(
            path,
            "unsupported file type: expected .parquet, .csv or .csv.gz",
        ));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::data(
            path,
            Location {
                row: Some(0),
                ..Default::default()
            },
            "empty file",
        ));
    }
    let res = catch_unwind(AssertUnwindSafe(|| {
        CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .into_reader_with_file_handle(std::io::Cursor::new(std::mem::take(&mut bytes)))
            .finish()
    }));
    match res {
        Ok(Ok(df)) => Ok(df),
        Ok(Err(e)) => Err(file_error(path, format!("malformed CSV: {e}"))),
        Err(p) => Err(file_error(
            path,
            format!("malformed CSV (reader failed: {})", panic_text(p)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone, Copy)]
struct Bar {
    ts: i64,
    o: f32,
    h: f32,
    l: f32,
    c: f32,
    v: f32,
    sent: f32,
    rate: Option<f32>,
    vix: Option<f32>,
}

/// The bars of one symbol, in file order (strictly increasing timestamps).
#[derive(Debug)]
struct SymbolBars {
    name: String,
    file: PathBuf,
    bars: Vec<Bar>,
}

/// Column lookup by case-insensitive name.
struct Columns<'a> {
    df: &'a DataFrame,
    names: Vec<(String, String)>, // (lowercase, actual)
}

impl<'a> Columns<'a> {
    fn new(df: &'a DataFrame) -> Self {
        let names = df
            .get_column_names()
            .iter()
            .map(|n| (n.trim().to_lowercase(), n.to_string()))
            .collect();
        Self { df, names }
    }

    fn find(&self, path: &Path, aliases: &[&str]) -> Result<Option<&'a Series>> {
        let hits: Vec<&(String, String)> = self
            .names
            .iter()
            .filter(|(l, _)| aliases.contains(&l.as_str()))
            .collect();
        match hits.as_slice() {
            [] => Ok(None),
            [(_, actual)] => {
                let col = self
                    .df
                    .column(actual)
                    .map_err(|e| file_error(path, e.to_string()))?;
                Ok(Some(col.as_materialized_series()))
            }
            many => Err(Error::data(
                path,
                Location {
                    column: Some(many[1].1.clone()),
                    row: Some(0),
                    symbol: None,
                },
                format!(
                    "ambiguous columns: {} all mean `{}`",
                    many.iter()
                        .map(|(_, a)| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    aliases[0]
                ),
            )),
        }
    }

    fn require(&self, path: &Path, aliases: &[&str]) -> Result<&'a Series> {
        self.find(path, aliases)?.ok_or_else(|| {
            let found: Vec<&str> = self.names.iter().map(|(_, a)| a.as_str()).collect();
            Error::data(
                path,
                Location {
                    column: Some(aliases[0].to_string()),
                    row: Some(0),
                    symbol: None,
                },
                format!(
                    "missing required column `{}` (columns: {})",
                    aliases[0],
                    found.join(", ")
                ),
            )
        })
    }
}

/// A column's values as parsed cells.
enum Cells {
    /// Text to parse per row (CSV, or string columns in parquet).
    Text(StringChunked),
    /// Already numeric (parquet).
    Num(Float64Chunked),
    /// Integer timestamps in seconds (parquet Date / Datetime / integers).
    Secs(Int64Chunked),
}

fn cells(path: &Path, s: &Series, timestamp: bool) -> Result<Cells> {
    let name = s.name().to_string();
    let err = |e: PolarsError| {
        Error::data(
            path,
            Location {
                column: Some(name.clone()),
                ..Default::default()
            },
            format!("unusable column: {e}"),
        )
    };
    let dt = s.dtype().clone();
    if timestamp {
        match dt {
            DataType::Datetime(tu, _) => {
                let div = match tu {
                    TimeUnit::Nanoseconds => 1_000_000_000,
                    TimeUnit::Microseconds => 1_000_000,
                    TimeUnit::Milliseconds => 1_000,
                };
                let phys = s.to_physical_repr().cast(&DataType::Int64).map_err(err)?;
                let ca = phys.i64().map_err(err)?;
                return Ok(Cells::Secs(ca.apply_values(|v| v.div_euclid(div))));
            }
            DataType::Date => {
                let phys = s.to_physical_repr().cast(&DataType::Int64).map_err(err)?;
                let ca = phys.i64().map_err(err)?;
                return Ok(Cells::Secs(ca.apply_values(|v| v * 86_400)));
            }
            d if d.is_integer() => {
                let c = s.cast(&DataType::Int64).map_err(err)?;
                let ca = c.i64().map_err(err)?;
                return Ok(Cells::Secs(ca.apply_values(epoch_auto_unit)));
            }
            _ => {}
        }
    } else if dt.is_primitive_numeric() {
        let c = s.cast(&DataType::Float64).map_err(err)?;
        return Ok(Cells::Num(c.f64().map_err(err)?.clone()));
    }
    let c = s.cast(&DataType::String).map_err(err)?;
    Ok(Cells::Text(c.str().map_err(err)?.clone()))
}

/// Integer epoch with an automatic unit: seconds, or ms / us / ns for large magnitudes.
fn epoch_auto_unit(v: i64) -> i64 {
    let a = v.unsigned_abs();
    if a >= 100_000_000_000_000_000 {
        v.div_euclid(1_000_000_000)
    } else if a >= 100_000_000_000_000 {
        v.div_euclid(1_000_000)
    } else if a >= 100_000_000_000 {
        v.div_euclid(1_000)
    } else {
        v
    }
}

/// One cell, as text or number. `None` = null / empty.
enum Cell<'a> {
    Null,
    Text(&'a str),
    Num(f64),
    Secs(i64),
}

impl Cells {
    #[inline]
    fn get(&self, i: usize) -> Cell<'_> {
        match self {
            Cells::Text(ca) => match ca.get(i).map(str::trim) {
                None | Some("") => Cell::Null,
                Some(s) => Cell::Text(s),
            },
            Cells::Num(ca) => ca.get(i).map_or(Cell::Null, Cell::Num),
            Cells::Secs(ca) => ca.get(i).map_or(Cell::Null, Cell::Secs),
        }
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    s.trim_matches('"').trim().parse::<f64>().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch (for messages).
pub fn format_timestamp(secs: i64) -> String {
    // H. Hinnant's civil_from_days
    let z = secs.div_euclid(86_400) + 719_468;
    let sod = secs.rem_euclid(86_400);
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn ymd_secs(y: i64, m: u32, d: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400)
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `HH:MM[:SS[.fff]][Z|+HH:MM|-HH:MM]` -> seconds after midnight UTC.
fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (clock, offset) = if let Some(c) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (c, 0)
    } else if let Some(i) = s.rfind(['+', '-']).filter(|&i| i >= 5) {
        let off = &s[i + 1..];
        let (oh, om) = match off.split_once(':') {
            Some((h, m)) => (num::<i64>(h)?, num::<i64>(m)?),
            None if off.len() == 4 => (num::<i64>(&off[..2])?, num::<i64>(&off[2..])?),
            None => (num::<i64>(off)?, 0),
        };
        let sign = if s.as_bytes()[i] == b'+' { 1 } else { -1 };
        (&s[..i], sign * (oh * 3600 + om * 60))
    } else {
        (s, 0)
    };
    let mut parts = clock.split(':');
    let h: i64 = num(parts.next()?)?;
    let m: i64 = num(parts.next()?)?;
    let sec: i64 = match parts.next() {
        None => 0,
        Some(x) => num(x.split('.').next()?)?,
    };
    if parts.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + sec - offset)
}

/// Parse a timestamp string into seconds since the epoch (formats in the module docs).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim().trim_matches('"').trim();
    if s.is_empty() {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        let v: i64 = s.parse().ok()?;
        return Some(epoch_auto_unit(v));
    }
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let day = if let Some((y, rest)) = date.split_once('-') {
        let (m, d) = rest.split_once('-')?;
        if y.len() != 4 {
            return None;
        }
        ymd_secs(num(y)?, num(m)?, num(d)?)?
    } else {
        let mut it = date.split('/');
        let (a, b, c) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        if a.len() == 4 {
            ymd_secs(num(a)?, num(b)?, num(c)?)? // YYYY/MM/DD
        } else if c.len() == 4 && a.len() <= 2 && b.len() <= 2 {
            ymd_secs(num(c)?, num(a)?, num(b)?)? // M/D/YYYY
        } else {
            return None;
        }
    };
    match time.map(str::trim) {
        None | Some("") => Some(day),
        Some(t) => Some(day + parse_time(t)?),
    }
}

/// File stem without data extensions: `dir/sp500.csv.gz` -> `sp500`.
fn series_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    loop {
        let lower = name.to_lowercase();
        let Some(ext) = [".gz", ".csv", ".txt", ".parquet", ".pq"]
            .into_iter()
            .find(|e| lower.ends_with(e))
        else {
            break;
        };
        name.truncate(name.len() - ext.len());
    }
    if name.is_empty() {
        "series".into()
    } else {
        name
    }
}

const TS_ALIASES: &[&str] = &["timestamp", "date", "datetime", "time", "ts"];
const SYM_ALIASES: &[&str] = &["symbol", "ticker"];
const ADJ_ALIASES: &[&str] = &[
    "adj close",
    "adj_close",
    "adjclose",
    "adjusted close",
    "adjusted_close",
];

fn parse_frame(path: &Path, df: &DataFrame, adjust: AdjustPolicy) -> Result<Vec<SymbolBars>> {
    let cols = Columns::new(df);
    let ts_s = cols.require(path, TS_ALIASES)?;
    let sym_s = cols.find(path, SYM_ALIASES)?;
    let price_s = [
        cols.require(path, &["open"])?,
        cols.require(path, &["high"])?,
        cols.require(path, &["low"])?,
        cols.require(path, &["close"])?,
    ];
    let vol_s = cols.require(path, &["volume"])?;
    let opt_s = [
        cols.find(path, &["sentiment"])?,
        cols.find(path, &["rate"])?,
        cols.find(path, &["vix"])?,
    ];
    let path_s = cols.find(path, &["path"])?;
    let adj_s = match adjust {
        AdjustPolicy::None => None,
        AdjustPolicy::AdjClose => Some(cols.require(path, ADJ_ALIASES)?),
    };
    let n = df.height();
    if n == 0 {
        return Err(Error::data(
            path,
            Location {
                row: Some(0),
                ..Default::default()
            },
            "file has no data rows",
        ));
    }
    if let Some(ps) = path_s {
        let distinct = ps.n_unique().map_err(|e| file_error(path, e.to_string()))?;
        if distinct > 1 {
            return Err(Error::data(
                path,
                Location {
                    column: Some(ps.name().to_string()),
                    ..Default::default()
                },
                format!(
                    "file holds {distinct} paths; the loader reads single-path files (filter one path first)"
                ),
            ));
        }
    }

    let ts_c = cells(path, ts_s, true)?;
    let sym_c = match sym_s {
        Some(s) => Some((s.name().to_string(), cells(path, s, false)?)),
        None => None,
    };
    let price_c: Vec<(String, Cells)> = price_s
        .iter()
        .map(|s| Ok((s.name().to_string(), cells(path, s, false)?)))
        .collect::<Result<_>>()?;
    let vol_c = (vol_s.name().to_string(), cells(path, vol_s, false)?);
    let adj_c = match adj_s {
        Some(s) => Some((s.name().to_string(), cells(path, s, false)?)),
        None => None,
    };
    let opt_c: Vec<Option<(String, Cells)>> = opt_s
        .iter()
        .map(|o| {
            o.map(|s| Ok((s.name().to_string(), cells(path, s, false)?)))
                .transpose()
        })
        .collect::<Result<_>>()?;

    let single = series_name(path);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<SymbolBars> = Vec::new();
    for i in 0..n {
        let row = i + 1;
        let sym: &str = match &sym_c {
            None => &single,
            Some((cname, c)) => match c.get(i) {
                Cell::Text(s) => s,
                _ => {
                    return Err(Error::data(
                        path,
                        Location {
                            column: Some(cname.clone()),
                            row: Some(row),
                            symbol: None,
                        },
                        "missing symbol",
                    ));
                }
            },
        };
        let loc = |col: &str| Location {
            column: Some(col.to_string()),
            row: Some(row),
            symbol: Some(sym.to_string()),
        };
        let ts = match ts_c.get(i) {
            Cell::Secs(v) => v,
            Cell::Num(v) if v.fract() == 0.0 && v.abs() < 9e18 => epoch_auto_unit(v as i64),
            Cell::Text(s) => parse_timestamp(s).ok_or_else(|| {
                Error::data(
                    path,
                    loc(ts_s.name()),
                    format!("cannot parse `{s}` as a timestamp"),
                )
            })?,
            Cell::Num(v) => {
                return Err(Error::data(
                    path,
                    loc(ts_s.name()),
                    format!("cannot use {v} as a timestamp"),
                ));
            }
            Cell::Null => return Err(Error::data(path, loc(ts_s.name()), "missing timestamp")),
        };
        let value = |cname: &str, c: &Cells, required: bool| -> Result<Option<f64>> {
            match c.get(i) {
                Cell::Null if required => Err(Error::data(path, loc(cname), "missing value")),
                Cell::Null => Ok(None),
                Cell::Num(v) => Ok(Some(v)),
                Cell::Secs(v) => Ok(Some(v as f64)),
                Cell::Text(s) => parse_f64(s).map(Some).ok_or_else(|| {
                    Error::data(path, loc(cname), format!("cannot parse `{s}` as a number"))
                }),
            }
        };
        let mut px = [0f32; 4];
        for (k, (cname, c)) in price_c.iter().enumerate() {
            let v = value(cname, c, true)?.unwrap_or(f64::NAN);
            let v32 = v as f32;
            if !(v.is_finite() && v32.is_finite() && v32 > 0.0) {
                return Err(Error::data(
                    path,
                    loc(cname),
                    format!("price must be finite and > 0, got {v}"),
                ));
            }
            px[k] = v32;
        }
        let [o, h, l, c] = px;
        if h < l {
            return Err(Error::data(
                path,
                loc(&price_c[1].0),
                format!("high {h} < low {l}"),
            ));
        }
        if o < l || o > h {
            return Err(Error::data(
                path,
                loc(&price_c[0].0),
                format!("open {o} outside [low {l}, high {h}]"),
            ));
        }
        if c < l || c > h {
            return Err(Error::data(
                path,
                loc(&price_c[3].0),
                format!("close {c} outside [low {l}, high {h}]"),
            ));
        }
        let mut v = value(&vol_c.0, &vol_c.1, true)?.unwrap_or(f64::NAN);
        if let Some((cname, ac)) = &adj_c {
            // back-adjust: prices times adj / close (a monotone map, so the bar stays consistent),
            // volume in adjusted shares (dollar volume unchanged)
            let a = value(cname, ac, true)?.unwrap_or(f64::NAN);
            let f = a / c as f64;
            if !(a.is_finite() && a > 0.0 && f.is_finite() && f > 0.0) {
                return Err(Error::data(
                    path,
                    loc(cname),
                    format!("adjusted close must be finite and > 0, got {a}"),
                ));
            }
            for x in &mut px {
                *x = (*x as f64 * f) as f32;
                if !(x.is_finite() && *x > 0.0) {
                    return Err(Error::data(
                        path,
                        loc(cname),
                        format!("adjusted price out of range (factor {f})"),
                    ));
                }
            }
            v /= f;
        }
        let [o, h, l, c] = px;
        if !(v.is_finite() && (v as f32).is_finite()) {
            return Err(Error::data(
                path,
                loc(&vol_c.0),
                format!("volume must be finite, got {v}"),
            ));
        }
        if v < 0.0 {
            return Err(Error::data(
                path,
                loc(&vol_c.0),
                format!("negative volume {v}"),
            ));
        }
        let mut opt = [None; 3];
        for (k, oc) in opt_c.iter().enumerate() {
            let Some((cname, cc)) = oc else { continue };
            if let Some(x) = value(cname, cc, false)? {
                if !(x.is_finite() && (x as f32).is_finite()) {
                    return Err(Error::data(
                        path,
                        loc(cname),
                        format!("value must be finite, got {x}"),
                    ));
                }
                opt[k] = Some(x as f32);
            }
        }
        let bar = Bar {
            ts,
            o,
            h,
            l,
            c,
            v: v as f32,
            sent: opt[0].unwrap_or(0.0),
            rate: opt[1],
            vix: opt[2],
        };

        let k = match index.get(sym) {
            Some(&k) => k,
            None => {
                index.insert(sym.to_string(), out.len());
                out.push(SymbolBars {
                    name: sym.to_string(),
                    file: path.to_path_buf(),
                    bars: Vec::new(),
                });
                out.len() - 1
            }
        };
        let sb = &mut out[k];
        if let Some(prev) = sb.bars.last() {
            if ts == prev.ts {
                return Err(Error::data(
                    path,
                    loc(ts_s.name()),
                    format!(
                        "duplicate (symbol, timestamp) row: {sym} at {} already seen",
                        format_timestamp(ts)
                    ),
                ));
            }
            if ts < prev.ts {
                return Err(Error::data(
                    path,
                    loc(ts_s.name()),
                    format!(
                        "timestamps of `{sym}` not increasing ({} after {}): sort rows by time within each symbol",
                        format_timestamp(ts),
                        format_timestamp(prev.ts)
                    ),
                ));
            }
        }
        sb.bars.push(bar);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Alignment

fn align(all: &[SymbolBars], cfg: &DataConfig, origin: &Path) -> Result<MarketData> {
    let grid: Vec<i64> = match cfg.align {
        AlignPolicy::Intersection => {
            let mut common: Vec<i64> = all[0].bars.iter().map(|b| b.ts).collect();
            for sb in &all[1..] {
                let mut j = 0;
                let bars = &sb.bars;
                common.retain(|&ts| {
                    while j < bars.len() && bars[j].ts < ts {
                        j += 1;
                    }
                    j < bars.len() && bars[j].ts == ts
                });
            }
            common
        }
        AlignPolicy::ForwardFill => {
            let start = all
                .iter()
                .filter_map(|s| s.bars.first())
                .map(|b| b.ts)
                .max()
                .unwrap_or(0);
            let end = all
                .iter()
                .filter_map(|s| s.bars.last())
                .map(|b| b.ts)
                .min()
                .unwrap_or(0);
            let mut u: Vec<i64> = all
                .iter()
                .flat_map(|s| s.bars.iter().map(|b| b.ts))
                .filter(|&t| t >= start && t <= end)
                .collect();
            u.sort_unstable();
            u.dedup();
            u
        }
    };
    let t_len = grid.len();
    if t_len < cfg.min_bars.max(2) {
        return Err(Error::data(
            origin,
            Location {
                column: Some("timestamp".into()),
                ..Default::default()
            },
            format!(
                "only {t_len} bars remain after {:?} alignment of {} series, fewer than min_bars = {}",
                cfg.align,
                all.len(),
                cfg.min_bars.max(2)
            ),
        ));
    }

    let s1 = all.len();
    let s = s1 - 1;
    let n = t_len * s1;
    let mut md = MarketData {
        symbols: all[..s].iter().map(|x| x.name.clone()).collect(),
        benchmark: all[s].name.clone(),
        paths: 1,
        bars: t_len,
        bars_per_day: infer_bars_per_day(&grid),
        timestamps: grid.clone(),
        open: vec![0.0; n],
        high: vec![0.0; n],
        low: vec![0.0; n],
        close: vec![0.0; n],
        volume: vec![0.0; n],
        sentiment: vec![0.0; t_len * s],
        macro_series: vec![0.0; t_len * MACRO],
    };
    // per-bar macro candidates: (from benchmark, first other) for rate and vix
    let mut macro_bench: Vec<[Option<f32>; 2]> = vec![[None; 2]; t_len];
    let mut macro_other: Vec<[Option<f32>; 2]> = vec![[None; 2]; t_len];
    for (si, sb) in all.iter().enumerate() {
        let mut j = 0usize;
        let mut last: Option<Bar> = None;
        for (t, &ts) in grid.iter().enumerate() {
            while j < sb.bars.len() && sb.bars[j].ts < ts {
                last = Some(sb.bars[j]);
                j += 1;
            }
            let i = t * s1 + si;
            let bar = if j < sb.bars.len() && sb.bars[j].ts == ts {
                let b = sb.bars[j];
                last = Some(b);
                j += 1;
                let slot = if si == s {
                    &mut macro_bench[t]
                } else {
                    &mut macro_other[t]
                };
                for (k, v) in [b.rate, b.vix].into_iter().enumerate() {
                    if slot[k].is_none() {
                        slot[k] = v;
                    }
                }
                b
            } else {
                // forward fill (only reachable under ForwardFill: the grid starts where all have traded)
                let Some(p) = last else {
                    return Err(Error::data(
                        &sb.file,
                        Location {
                            symbol: Some(sb.name.clone()),
                            ..Default::default()
                        },
                        "no bar to forward-fill from",
                    ));
                };
                Bar {
                    ts,
                    o: p.c,
                    h: p.c,
                    l: p.c,
                    c: p.c,
                    v: 0.0,
                    sent: p.sent,
                    rate: None,
                    vix: None,
                }
            };
            md.open[i] = bar.o;
            md.high[i] = bar.h;
            md.low[i] = bar.l;
            md.close[i] = bar.c;
            md.volume[i] = bar.v;
            if si < s {
                md.sentiment[t * s + si] = bar.sent;
            }
        }
    }
    let mut prev = [0f32; 2];
    for t in 0..t_len {
        for k in 0..MACRO {
            let v = macro_bench[t][k].or(macro_other[t][k]).unwrap_or(prev[k]);
            md.macro_series[t * MACRO + k] = v;
            prev[k] = v;
        }
    }
    Ok(md)
}

/// Median number of bars per UTC calendar day (1 for daily or coarser data).
fn infer_bars_per_day(ts: &[i64]) -> usize {
    let mut counts: Vec<usize> = Vec::new();
    let mut cur_day = None;
    for &t in ts {
        let d = t.div_euclid(86_400);
        if cur_day == Some(d) {
            if let Some(c) = counts.last_mut() {
                *c += 1;
            }
        } else {
            counts.push(1);
            cur_day = Some(d);
        }
    }
    if counts.is_empty() {
        return 1;
    }
    counts.sort_unstable();
    counts[counts.len() / 2].max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_formats() {
        assert_eq!(parse_timestamp("1970-01-02"), Some(86_400));
        assert_eq!(parse_timestamp("2000-03-01"), Some(951_868_800));
        assert_eq!(parse_timestamp("3/1/2000"), Some(951_868_800));
        assert_eq!(parse_timestamp("2000/03/01"), Some(951_868_800));
        assert_eq!(
            parse_timestamp("2000-03-01T01:00:00Z"),
            Some(951_868_800 + 3600)
        );
        assert_eq!(
            parse_timestamp("2000-03-01 01:00"),
            Some(951_868_800 + 3600)
        );
        assert_eq!(
            parse_timestamp("2000-03-01T02:00:00+01:00"),
            Some(951_868_800 + 3600)
        );
        assert_eq!(parse_timestamp("951868800"), Some(951_868_800));
        assert_eq!(parse_timestamp("951868800000"), Some(951_868_800));
        assert_eq!(parse_timestamp("2000-02-30"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("1/4/99"), None);
        assert_eq!(series_name(Path::new("/a/sp500.csv.gz")), "sp500");
        for ts in [0, 951_868_800 + 3661, -86_400, 1_709_164_800] {
            assert_eq!(parse_timestamp(&format_timestamp(ts)), Some(ts));
        }
        assert_eq!(format_timestamp(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(
            infer_bars_per_day(&[0, 3600, 7200, 86_400, 90_000, 93_600]),
            3
        );
    }
}
