//! Market data: the synthetic generator, the loader (good and bad files under `tests/data`, the real
//! shared samples) and the causal features.

use std::path::{Path, PathBuf};

use marl_trade::config::{
    AdjustPolicy, AlignPolicy, DataConfig, ListingPolicy, SignalKind, SyntheticConfig,
};
use marl_trade::data::synthetic::{self, generate_with_regimes};
use marl_trade::data::{
    MarketData, generate, load_file, load_files, load_files_noted, write_parquet,
};
use marl_trade::error::ErrorKind;
use marl_trade::features::{Features, N_REGIME, N_TECH, REGIME_NAMES, TECH_NAMES};

fn small(seed: u64, symbols: usize, bars: usize) -> SyntheticConfig {
    SyntheticConfig {
        symbols,
        bars,
        seed,
        sectors: 3,
        ..SyntheticConfig::default()
    }
}

fn test_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn shared_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name)
}

fn log_ret(md: &MarketData, p: usize, t: usize, s: usize) -> f64 {
    (md.close[md.px(p, t + 1, s)] as f64 / md.close[md.px(p, t, s)] as f64).ln()
}

fn corr(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Information coefficient: corr(sentiment[t], log return t -> t+1), pooled over symbols and bars.
fn sentiment_ic(md: &MarketData) -> f64 {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for p in 0..md.paths {
        for t in 0..md.bars - 1 {
            for s in 0..md.n_symbols() {
                x.push(md.sentiment[md.sx(p, t, s)] as f64);
                y.push(log_ret(md, p, t, s));
            }
        }
    }
    corr(&x, &y)
}

// ------------------------------------------------------------------------------------------------
// Generator

#[test]
fn generator_is_deterministic_and_valid() {
    let cfg = small(11, 6, 700);
    let a = generate(&cfg, "SPY");
    let b = generate(&cfg, "SPY");
    assert_eq!(a, b, "same seed must give identical data");
    let c = generate(
        &SyntheticConfig {
            seed: 12,
            ..cfg.clone()
        },
        "SPY",
    );
    assert_ne!(a.close, c.close, "different seeds must differ");
    a.validate("synthetic").unwrap();
    assert_eq!(a.symbols, ["S000", "S001", "S002", "S003", "S004", "S005"]);
    assert_eq!(a.symbol_index("SPY"), Some(6));
    assert!(
        a.timestamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps strictly increasing"
    );
    // no weekend bars
    for &ts in &a.timestamps {
        let weekday = (ts.div_euclid(86_400) + 4) % 7; // 0 = Sunday
        assert!((1..=5).contains(&weekday), "bar on a weekend: {ts}");
    }
    // sentiment roughly in [-1, 1], macro in range
    assert!(a.sentiment.iter().all(|x| (-1.0..=1.0).contains(x)));
    for t in 0..a.bars {
        let (rate, vix) = (a.macro_series[2 * t], a.macro_series[2 * t + 1]);
        assert!((0.01..=0.06).contains(&rate), "rate {rate}");
        assert!((5.0..=150.0).contains(&vix), "vix {vix}");
    }
    // more paths: path 0 is the same history, every path is valid and different
    let multi = generate(
        &SyntheticConfig {
            paths: 3,
            ..cfg.clone()
        },
        "SPY",
    );
    multi.validate("synthetic").unwrap();
    let n = a.bars * 7;
    assert_eq!(&multi.close[..n], &a.close[..]);
    assert_ne!(&multi.close[n..2 * n], &multi.close[..n]);
}

#[test]
fn intraday_volume_is_u_shaped_and_rises_with_moves() {
    let md = generate(&small(3, 8, 7 * 300), "SPY");
    let bpd = md.bars_per_day;
    let mut by_bar = vec![0.0f64; bpd];
    for t in 0..md.bars {
        for s in 0..md.n_symbols() {
            by_bar[t % bpd] += (md.volume[md.px(0, t, s)] as f64).ln_1p();
        }
    }
    let mid = by_bar[bpd / 2];
    assert!(
        by_bar[0] > mid && by_bar[bpd - 1] > mid,
        "U shape: {by_bar:?}"
    );
    let (mut abs_r, mut lv) = (Vec::new(), Vec::new());
    for t in 1..md.bars {
        if t % bpd == bpd / 2 {
            for s in 0..md.n_symbols() {
                abs_r.push(log_ret(&md, 0, t - 1, s).abs());
                lv.push((md.volume[md.px(0, t, s)] as f64).ln_1p());
            }
        }
    }
    assert!(corr(&abs_r, &lv) > 0.1, "volume must rise with |return|");
}

#[test]
fn sentiment_signal_strength_controls_information_coefficient() {
    let base = SyntheticConfig {
        signal_kind: SignalKind::Sentiment,
        ..small(5, 24, 3000)
    };
    let none = generate(
        &SyntheticConfig {
            signal_strength: 0.0,
            ..base.clone()
        },
        "SPY",
    );
    let half = generate(
        &SyntheticConfig {
            signal_strength: 0.5,
            ..base.clone()
        },
        "SPY",
    );
    let full = generate(
        &SyntheticConfig {
            signal_strength: 1.0,
            ..base.clone()
        },
        "SPY",
    );
    let (ic0, ic5, ic1) = (
        sentiment_ic(&none),
        sentiment_ic(&half),
        sentiment_ic(&full),
    );
    assert!(ic0.abs() < 0.02, "strength 0: IC {ic0}");
    assert!(ic5 > 0.035, "strength 0.5: IC {ic5}");
    assert!((0.08..0.18).contains(&ic1), "strength 1: IC {ic1}");
    // same noise: the common series (benchmark, macro) are identical, symbols differ only via the signal
    let s1 = none.n_symbols() + 1;
    for t in 0..none.bars {
        assert_eq!(none.close[t * s1 + s1 - 1], half.close[t * s1 + s1 - 1]);
    }
    assert_eq!(none.macro_series, half.macro_series);
    assert_eq!(
        none.sentiment[..none.n_symbols()],
        half.sentiment[..none.n_symbols()]
    );
    assert_eq!(
        none.close[..s1 - 1],
        half.close[..s1 - 1],
        "bar 0 has no signal yet"
    );
}

#[test]
fn momentum_signal_acts_in_bull_regimes_only() {
    let base = SyntheticConfig {
        signal_kind: SignalKind::Momentum,
        ..small(8, 16, 4000)
    };
    let (none, reg) = generate_with_regimes(
        &SyntheticConfig {
            signal_strength: 0.0,
            ..base.clone()
        },
        "SPY",
    );
    let (full, _) = generate_with_regimes(
        &SyntheticConfig {
            signal_strength: 1.0,
            ..base.clone()
        },
        "SPY",
    );
    let mom_ic = |md: &MarketData| {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for t in 24..md.bars - 1 {
            if reg[t + 1] != 0 {
                continue;
            }
            for s in 0..md.n_symbols() {
                let m =
                    (md.close[md.px(0, t, s)] as f64 / md.close[md.px(0, t - 24, s)] as f64).ln();
                x.push(m);
                y.push(log_ret(md, 0, t, s));
            }
        }
        corr(&x, &y)
    };
    let (ic0, ic1) = (mom_ic(&none), mom_ic(&full));
    assert!(ic0.abs() < 0.03, "no momentum at strength 0: {ic0}");
    assert!(ic1 > 0.05, "momentum at strength 1: {ic1}");
}

/// A seed whose path visits all three regimes for a while.
fn all_regimes_seed(cfg: &SyntheticConfig) -> (MarketData, Vec<u8>) {
    for seed in 0..50 {
        let (md, reg) = generate_with_regimes(
            &SyntheticConfig {
                seed,
                ..cfg.clone()
            },
            "SPY",
        );
        let count = |k: u8| reg.iter().filter(|&&r| r == k).count();
        if (0..3).all(|k| count(k) >= 300) {
            return (md, reg);
        }
    }
    panic!("no seed in 0..50 visits every regime for 300 bars");
}

#[test]
fn regimes_change_volatility_and_correlation() {
    let (md, reg) = all_regimes_seed(&small(0, 10, 7000));
    let f = Features::compute(&md);
    let s = md.n_symbols();
    let mut sq = [0.0f64; 3];
    let mut n = [0usize; 3];
    let mut corr_sum = [0.0f64; 3];
    let mut corr_n = [0usize; 3];
    for t in 60..md.bars - 1 {
        let k = reg[t + 1] as usize;
        sq[k] += log_ret(&md, 0, t, s).powi(2);
        n[k] += 1;
        // bars whose whole 48-bar correlation window lies in one regime
        if reg[t - 48..=t].iter().all(|&r| r == reg[t]) {
            corr_sum[reg[t] as usize] += f.regime_at(0, t)[2] as f64;
            corr_n[reg[t] as usize] += 1;
        }
    }
    let vol: Vec<f64> = (0..3).map(|k| (sq[k] / n[k] as f64).sqrt()).collect();
    assert!(
        vol[2] > 2.0 * vol[0],
        "crisis vol {} vs bull {}",
        vol[2],
        vol[0]
    );
    assert!(vol[1] > vol[0], "bear vol {} vs bull {}", vol[1], vol[0]);
    let c: Vec<f64> = (0..3)
        .map(|k| corr_sum[k] / corr_n[k].max(1) as f64)
        .collect();
    assert!(
        corr_n[0] > 100 && corr_n[2] > 100,
        "windows per regime: {corr_n:?}"
    );
    assert!(
        c[2] > c[0] + 0.1,
        "crisis correlation {} vs bull {}",
        c[2],
        c[0]
    );
    // the VIX-like macro series follows realised vol
    let vix_mean = |k: u8| {
        let v: Vec<f64> = (0..md.bars)
            .filter(|&t| reg[t] == k)
            .map(|t| md.macro_series[2 * t + 1] as f64)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        vix_mean(2) > vix_mean(0) + 10.0,
        "vix crisis {} bull {}",
        vix_mean(2),
        vix_mean(0)
    );
}

#[test]
fn calendar_is_hourly_weekdays() {
    let ts = synthetic::calendar(7 * 6, 7);
    assert_eq!(ts[1] - ts[0], 3600);
    // Friday's last bar to Monday's first bar skips the weekend
    let fri_last = ts[7 * 5 - 1];
    let mon_first = ts[7 * 5];
    assert_eq!(mon_first - fri_last, 3 * 86_400 - 6 * 3600);
}

// ------------------------------------------------------------------------------------------------
// Features

#[test]
fn features_are_finite_and_named() {
    assert_eq!(TECH_NAMES.len(), N_TECH);
    assert_eq!(REGIME_NAMES.len(), N_REGIME);
    let md = generate(
        &SyntheticConfig {
            paths: 2,
            signal_strength: 0.5,
            ..small(21, 7, 500)
        },
        "SPY",
    );
    let f = Features::compute(&md);
    assert_eq!(f.tech.len(), 2 * 500 * 7 * N_TECH);
    assert_eq!(f.regime.len(), 2 * 500 * N_REGIME);
    assert!(f.tech.iter().all(|x| x.is_finite() && x.abs() <= 5.0));
    assert!(f.regime.iter().all(|x| x.is_finite() && x.abs() <= 5.0));
    // every feature varies after the warm-up (none is stuck at a constant or at a clip bound)
    for (k, name) in TECH_NAMES.iter().enumerate() {
        let vals: Vec<f32> = (100..500)
            .map(|t| f.tech[f.tech_index(1, t, 3) + k])
            .collect();
        let (lo, hi) = vals
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi > lo, "feature {name} is constant");
        let clipped = vals.iter().filter(|x| x.abs() >= 5.0).count();
        assert!(
            clipped < vals.len() / 10,
            "feature {name} clipped {clipped} times"
        );
    }
    for (k, name) in REGIME_NAMES.iter().enumerate() {
        let vals: Vec<f32> = (100..500).map(|t| f.regime_at(0, t)[k]).collect();
        assert!(
            vals.iter().any(|&x| x != vals[0]),
            "regime feature {name} is constant"
        );
    }
    // the sentiment feature is the data's sentiment
    assert_eq!(
        f.tech[f.tech_index(1, 200, 2) + 22],
        md.sentiment[md.sx(1, 200, 2)]
    );
}

/// Change everything strictly after bar `t` (prices, volume, sentiment, macro) keeping the data valid.
fn perturb_after(md: &MarketData, t: usize) -> MarketData {
    let mut m = md.clone();
    let s1 = m.n_symbols() + 1;
    for p in 0..m.paths {
        for u in t + 1..m.bars {
            for s in 0..s1 {
                let i = m.px(p, u, s);
                let k = 1.0 + 0.3 * (((u * 7 + s * 3) % 11) as f32 / 11.0);
                m.open[i] *= k;
                m.high[i] *= k * 1.01;
                m.low[i] *= k * 0.99;
                m.close[i] *= k;
                m.volume[i] = m.volume[i] * 3.0 + 17.0;
                if s < s1 - 1 {
                    let j = m.sx(p, u, s);
                    m.sentiment[j] = -m.sentiment[j];
                }
            }
            let j = (p * m.bars + u) * 2;
            m.macro_series[j] += 0.01;
            m.macro_series[j + 1] *= 2.0;
        }
    }
    m.validate("perturbed").unwrap();
    m
}

#[test]
fn features_are_causal() {
    let md = generate(
        &SyntheticConfig {
            paths: 2,
            ..small(4, 6, 400)
        },
        "SPY",
    );
    let f = Features::compute(&md);
    // the technical features of every symbol at bar u of path p
    let bar = |f: &Features, p: usize, u: usize| -> Vec<f32> {
        (0..f.symbols)
            .flat_map(|s| {
                let i = f.tech_index(p, u, s);
                f.tech[i..i + N_TECH].to_vec()
            })
            .collect()
    };
    for &t in &[0usize, 1, 2, 13, 47, 48, 49, 97, 250, 398] {
        let g = Features::compute(&perturb_after(&md, t));
        for p in 0..md.paths {
            for u in 0..=t {
                let same = bar(&f, p, u)
                    .iter()
                    .zip(&bar(&g, p, u))
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "tech features of bar {u} (path {p}) changed when bars after {t} changed"
                );
                let same = f
                    .regime_at(p, u)
                    .iter()
                    .zip(g.regime_at(p, u))
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "regime features of bar {u} (path {p}) changed when bars after {t} changed"
                );
            }
            // and the perturbation is visible right after t
            assert_ne!(
                bar(&f, p, t + 1),
                bar(&g, p, t + 1),
                "perturbation after {t} not visible"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Loader

fn test_cfg(benchmark: &str, min_bars: usize, align: AlignPolicy) -> DataConfig {
    DataConfig {
        benchmark: benchmark.into(),
        min_bars,
        align,
        ..DataConfig::default()
    }
}

/// Every file under tests/data/bad with the column and row its error must name.
const BAD_CASES: &[(&str, Option<&str>, Option<usize>)] = &[
    ("missing_close.csv", Some("close"), Some(0)),
    ("unparseable_open.csv", Some("open"), Some(7)),
    ("nan_close.csv", Some("close"), Some(7)),
    ("inf_high.csv", Some("high"), Some(7)),
    ("zero_low.csv", Some("low"), Some(7)),
    ("negative_open.csv", Some("open"), Some(1)),
    ("high_below_low.csv", Some("high"), Some(7)),
    ("open_above_high.csv", Some("open"), Some(7)),
    ("close_below_low.csv", Some("close"), Some(7)),
    ("negative_volume.csv", Some("volume"), Some(7)),
    ("missing_volume.csv", Some("volume"), Some(7)),
    ("missing_symbol.csv", Some("symbol"), Some(7)),
    ("bad_timestamp.csv", Some("timestamp"), Some(7)),
    ("time_not_increasing.csv", Some("timestamp"), Some(7)),
    ("duplicate_row.csv", Some("timestamp"), Some(7)),
    ("too_few_bars.csv", Some("timestamp"), None),
    ("no_benchmark.csv", Some("symbol"), None),
    ("empty.csv", None, Some(0)),
    ("header_only.csv", None, Some(0)),
    ("garbage.parquet", None, None),
    ("truncated.csv.gz", None, None),
];

#[test]
fn bad_files_are_rejected_with_file_column_and_row() {
    let dir = test_data("bad");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = BAD_CASES.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every file in tests/data/bad needs an expectation in BAD_CASES"
    );

    let cfg = test_cfg("SPY", 3, AlignPolicy::Intersection);
    for &(name, column, row) in BAD_CASES {
        let path = dir.join(name);
        let err = match load_file(&path, &cfg) {
            Ok(_) => panic!("{name}: loaded, expected an error"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(
            text.contains(name),
            "{name}: message does not name the file: {text}"
        );
        match err.kind() {
            ErrorKind::Data => {
                let (file, loc) = (
                    err.file().expect("a data error names its file"),
                    err.location(),
                );
                assert_eq!(file, path, "{name}: {text}");
                assert_eq!(
                    loc.column.as_deref().map(str::to_lowercase).as_deref(),
                    column,
                    "{name}: {text}"
                );
                assert_eq!(loc.row, row, "{name}: {text}");
                if let Some(c) = column {
                    assert!(text.contains(&format!("column `{c}`")), "{name}: {text}");
                }
                if let Some(r) = row {
                    assert!(text.contains(&format!("row {r}")), "{name}: {text}");
                }
            }
            other => panic!("{name}: expected a data error, got {other:?}"),
        }
    }
    // the benchmark error names the benchmark, the short-series error the symbol
    let e = load_file(&dir.join("no_benchmark.csv"), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SPY"), "{e}");
    let e = load_file(&dir.join("too_few_bars.csv"), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AAA") && e.contains("min_bars"), "{e}");
}

#[test]
fn good_csv_loads_with_both_alignments() {
    let path = test_data("good/long.csv");
    let md = load_file(&path, &test_cfg("SPY", 4, AlignPolicy::Intersection)).unwrap();
    assert_eq!(md.symbols, ["AAA", "BBB", "CCC"]);
    assert_eq!(md.benchmark, "SPY");
    assert_eq!(md.paths, 1);
    // all four trade at 15:30, 17:30, 18:30, 19:30 (BBB lacks 16:30, CCC starts 15:30)
    let t0 = 1_704_205_800; // 2024-01-02T14:30:00Z
    assert_eq!(
        md.timestamps,
        [t0 + 3600, t0 + 3 * 3600, t0 + 4 * 3600, t0 + 5 * 3600]
    );
    assert_eq!(md.close[md.px(0, 0, 0)], 10.1);
    assert_eq!(md.close[md.px(0, 1, 1)], 50.1);
    assert_eq!(md.close[md.px(0, 3, 3)], 474.9);
    assert_eq!(md.sentiment[md.sx(0, 1, 2)], -0.3);
    assert_eq!(
        md.macro_series,
        [0.05, 13.5, 0.051, 14.5, 0.052, 15.0, 0.052, 14.0]
    );
    assert_eq!(md.bars_per_day, 4);

    let ff = load_file(&path, &test_cfg("SPY", 4, AlignPolicy::ForwardFill)).unwrap();
    assert_eq!(ff.bars, 5);
    assert_eq!(ff.timestamps[1], t0 + 2 * 3600);
    // BBB's missing 16:30 bar: previous close as O = H = L = C, zero volume, sentiment held
    let i = ff.px(0, 1, 1);
    assert_eq!(
        (ff.open[i], ff.high[i], ff.low[i], ff.close[i], ff.volume[i]),
        (50.8, 50.8, 50.8, 50.8, 0.0)
    );
    assert_eq!(ff.sentiment[ff.sx(0, 1, 1)], -0.1);
    Features::compute(&ff)
        .tech
        .iter()
        .for_each(|x| assert!(x.is_finite()));
}

#[test]
fn mutated_files_never_panic() {
    use marl_trade::rng::SplitMix64;
    let good = std::fs::read(test_data("good/long.csv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_cfg("SPY", 2, AlignPolicy::ForwardFill);
    let mut rng = SplitMix64::new(99);
    let alphabet = b",.-:/ \n0123456789eE+NaInfTZx\"";
    let (mut ok, mut err) = (0, 0);
    for case in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len() as u64) as usize;
            match rng.below(4) {
                0 => bytes[i] = alphabet[rng.below(alphabet.len() as u64) as usize],
                1 => {
                    bytes.remove(i);
                }
                2 => bytes.insert(i, alphabet[rng.below(alphabet.len() as u64) as usize]),
                _ => bytes.truncate(i.max(1)),
            }
        }
        let path = dir.path().join(format!("case{case}.csv"));
        std::fs::write(&path, &bytes).unwrap();
        match load_file(&path, &cfg) {
            Ok(md) => {
                md.validate("mutated").unwrap();
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains(&format!("case{case}.csv")), "{e}");
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

fn write_csv(md: &MarketData, path: &Path) {
    use std::fmt::Write;
    let mut s = String::from("timestamp,symbol,open,high,low,close,volume,sentiment,rate,vix\n");
    let n = md.n_symbols();
    for t in 0..md.bars {
        for sym in 0..=n {
            let i = md.px(0, t, sym);
            let name = if sym == n {
                &md.benchmark
            } else {
                &md.symbols[sym]
            };
            let sent = if sym == n {
                0.0
            } else {
                md.sentiment[md.sx(0, t, sym)]
            };
            writeln!(
                s,
                "{},{name},{},{},{},{},{},{sent},{},{}",
                md.timestamps[t],
                md.open[i],
                md.high[i],
                md.low[i],
                md.close[i],
                md.volume[i],
                md.macro_series[2 * t],
                md.macro_series[2 * t + 1]
            )
            .unwrap();
        }
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn parquet_and_csv_round_trip() {
    let md = generate(&small(9, 5, 300), "SPY");
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_cfg("SPY", 128, AlignPolicy::Intersection);

    let pq = dir.path().join("synthetic.parquet");
    write_parquet(&md, &pq).unwrap();
    assert!(!dir.path().join("synthetic.parquet.tmp").exists());
    let back = load_file(&pq, &cfg).unwrap();
    assert_eq!(back.symbols, md.symbols);
    assert_eq!(back.timestamps, md.timestamps);
    assert_eq!(back.bars_per_day, md.bars_per_day);
    assert_eq!(back, md, "parquet round trip must be exact");

    let csv = dir.path().join("synthetic.csv");
    write_csv(&md, &csv);
    assert_eq!(
        load_file(&csv, &cfg).unwrap(),
        md,
        "CSV round trip must be exact"
    );

    // a truncated parquet file is an error, not a panic
    let bytes = std::fs::read(&pq).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_file(&cut, &cfg).unwrap_err().to_string();
    assert!(e.contains("cut.parquet"), "{e}");

    // a multi-path file is refused with a clear message
    let multi = generate(
        &SyntheticConfig {
            paths: 2,
            ..small(9, 2, 130)
        },
        "SPY",
    );
    let mp = dir.path().join("multi.parquet");
    write_parquet(&multi, &mp).unwrap();
    let e = load_file(&mp, &cfg).unwrap_err().to_string();
    assert!(e.contains("path"), "{e}");
}

#[test]
fn real_shared_data_loads_with_both_policies() {
    let stocks = shared_data("stocks.csv.gz");
    let sp500 = shared_data("sp500.csv.gz");
    assert!(
        stocks.exists() && sp500.exists(),
        "shared data missing: {} / {}",
        stocks.display(),
        sp500.display()
    );
    // 2012-05-18 (FB's first day) and 2013-03-01 (the stocks file's last day), 00:00 UTC
    let (fb_start, end) = (1_337_299_200, 1_362_096_000);
    let mut bars = Vec::new();
    for align in [AlignPolicy::Intersection, AlignPolicy::ForwardFill] {
        let cfg = test_cfg("sp500", 128, align);
        let md = load_files(&[stocks.clone(), sp500.clone()], &cfg).unwrap();
        assert_eq!(md.symbols, ["AAPL", "FB", "GOOG", "IBM", "MSFT"]);
        assert_eq!(md.benchmark, "sp500");
        assert_eq!(md.bars_per_day, 1);
        assert_eq!(
            md.timestamps[0], fb_start,
            "{align:?}: starts when all have data"
        );
        assert_eq!(*md.timestamps.last().unwrap(), end);
        assert!(md.bars >= 190, "{align:?}: {} bars", md.bars);
        let fb = md.symbol_index("FB").unwrap();
        assert_eq!(md.close[md.px(0, 0, fb)], 38.2318);
        let f = Features::compute(&md);
        assert!(f.tech.iter().chain(&f.regime).all(|x| x.is_finite()));
        bars.push(md.bars);
    }
    assert!(bars[0] <= bars[1]);
    // min_bars counts per symbol: FB has 196 bars
    let e = load_files(
        &[stocks.clone(), sp500.clone()],
        &test_cfg("sp500", 200, AlignPolicy::Intersection),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("FB") && e.contains("196"), "{e}");
    // the stocks file alone lacks the benchmark
    let e = load_file(&stocks, &test_cfg("sp500", 128, AlignPolicy::Intersection))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stocks.csv.gz") && e.contains("sp500"), "{e}");
    // a benchmark from the same file works too; the whole unadjusted AAPL history (2005 split) is valid
    let md = load_file(&stocks, &test_cfg("IBM", 128, AlignPolicy::Intersection)).unwrap();
    assert_eq!(md.symbols, ["AAPL", "FB", "GOOG", "MSFT"]);
}

/// Issue #11: the symbol filter, the listing-date policies, the date range and split adjustment on
/// the shared sample (AAPL, IBM, MSFT 2000-03-01..2013-03-01, GOOG from 2004-08-19, FB from
/// 2012-05-18; sp500 1999..2018).
#[test]
fn real_shared_data_symbols_listing_dates_and_adjustment() {
    let files = [shared_data("stocks.csv.gz"), shared_data("sp500.csv.gz")];
    let base = test_cfg("sp500", 128, AlignPolicy::Intersection);
    let (aapl_start, end) = (951_868_800, 1_362_096_000); // 2000-03-01, 2013-03-01
    // a selection, in the order given; the benchmark comes along
    let cfg = DataConfig {
        symbols: vec!["MSFT".into(), "AAPL".into()],
        ..base.clone()
    };
    let md = load_files(&files, &cfg).unwrap();
    assert_eq!(md.symbols, ["MSFT", "AAPL"]);
    assert_eq!(md.benchmark, "sp500");
    assert_eq!(
        (md.timestamps[0], *md.timestamps.last().unwrap()),
        (aapl_start, end)
    );
    assert_eq!(md.bars, 3270);
    // an unknown symbol names the files and the symbol
    let cfg = DataConfig {
        symbols: vec!["AAPL".into(), "TSLA".into()],
        ..base.clone()
    };
    let e = load_files(&files, &cfg).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data);
    let m = e.to_string();
    assert!(
        m.contains("TSLA") && m.contains("stocks.csv.gz") && m.contains("data.symbols"),
        "{m}"
    );
    // restrict (default): FB's listing shortens everything
    let md = load_files(&files, &base).unwrap();
    assert_eq!(md.n_symbols(), 5);
    assert!(md.bars < 200, "{}", md.bars);
    // drop: the long period, the late-listed symbols dropped and named
    let cfg = DataConfig {
        listing: ListingPolicy::Drop,
        ..base.clone()
    };
    let (md, notes) = load_files_noted(&files, &cfg).unwrap();
    assert_eq!(md.symbols, ["AAPL", "IBM", "MSFT"]);
    assert_eq!((md.timestamps[0], md.bars), (aapl_start, 3270));
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].contains("FB") && notes[1].contains("GOOG"),
        "{notes:?}"
    );
    // drop from GOOG's listing day keeps GOOG; the end date is inclusive
    let cfg = DataConfig {
        listing: ListingPolicy::Drop,
        start: Some("2004-08-19".into()),
        end: Some("2012-12-31".into()),
        ..base.clone()
    };
    let (md, notes) = load_files_noted(&files, &cfg).unwrap();
    assert_eq!(md.symbols, ["AAPL", "GOOG", "IBM", "MSFT"]);
    assert_eq!(md.timestamps[0], 1_092_873_600); // 2004-08-19
    assert_eq!(*md.timestamps.last().unwrap(), 1_356_912_000); // 2012-12-31
    assert!(notes.len() == 1 && notes[0].contains("FB"), "{notes:?}");
    // drop keeps the earliest-listed symbol's period, whichever symbols are selected
    let cfg = DataConfig {
        listing: ListingPolicy::Drop,
        symbols: vec!["FB".into(), "GOOG".into()],
        ..base.clone()
    };
    let (md, notes) = load_files_noted(&files, &cfg).unwrap();
    assert_eq!(md.symbols, ["GOOG"]);
    assert!(notes.len() == 1 && notes[0].contains("FB"), "{notes:?}");
    // too few bars inside the dates
    let cfg = DataConfig {
        start: Some("2013-01-01".into()),
        ..base.clone()
    };
    let m = load_files(&files, &cfg).unwrap_err().to_string();
    assert!(m.contains("min_bars") && m.contains("data.start"), "{m}");
    // bad config values are refused by validation, naming the field
    for (cfg, field) in [
        (
            DataConfig {
                start: Some("someday".into()),
                ..base.clone()
            },
            "data.start",
        ),
        (
            DataConfig {
                start: Some("2010-01-01".into()),
                end: Some("2009-01-01".into()),
                ..base.clone()
            },
            "data.end",
        ),
        (
            DataConfig {
                symbols: vec!["AAPL".into(), "AAPL".into()],
                ..base.clone()
            },
            "data.symbols",
        ),
    ] {
        let m = cfg.validate("t.toml").unwrap_err().to_string();
        assert!(m.contains(field), "{m}");
    }
    // unadjusted: AAPL's 2005-02-28 2:1 split is a -50% bar; adjusted it is an ordinary day, and
    // the adjusted close is the file's `Adj Close`
    let sel = DataConfig {
        symbols: vec!["AAPL".into()],
        ..base.clone()
    };
    let raw = load_files(&files, &sel).unwrap();
    let adj = load_files(
        &files,
        &DataConfig {
            adjust: AdjustPolicy::AdjClose,
            ..sel.clone()
        },
    )
    .unwrap();
    let t = raw
        .timestamps
        .iter()
        .position(|&x| x == 1_109_548_800) // 2005-02-28
        .unwrap();
    let r = |md: &MarketData| md.close[md.px(0, t, 0)] / md.close[md.px(0, t - 1, 0)] - 1.0;
    assert!(r(&raw) < -0.45, "{}", r(&raw));
    assert!(r(&adj).abs() < 0.05, "{}", r(&adj));
    assert!((adj.close[adj.px(0, 0, 0)] - 4.186_663).abs() < 1e-4);
    // dollar volume is unchanged by the adjustment
    let dv = |md: &MarketData| md.close[md.px(0, 0, 0)] as f64 * md.volume[md.px(0, 0, 0)] as f64;
    assert!((dv(&raw) / dv(&adj) - 1.0).abs() < 1e-5);
    // the index file's benchmark has no splits: its adjusted series is its close
    assert_eq!(raw.close[raw.px(0, 5, 1)], adj.close[adj.px(0, 5, 1)]);
    // a file without an adjusted close column cannot be adjusted
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.csv");
    std::fs::write(
        &plain,
        "date,open,high,low,close,volume\n2000-01-03,1,1,1,1,10\n2000-01-04,1,1,1,1,10\n",
    )
    .unwrap();
    let m = load_file(
        &plain,
        &DataConfig {
            adjust: AdjustPolicy::AdjClose,
            benchmark: "plain".into(),
            min_bars: 2,
            ..DataConfig::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("plain.csv") && m.contains("adj close"), "{m}");
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 ticks per second).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() > 12 {
        (f[11] + f[12]) / 100.0
    } else {
        0.0
    }
}

/// Release-mode timing of the full-size feature computation (S = 143, T = 8192). Run with
/// `cargo test --release --test data -- --ignored --nocapture features_full_size_timing`.
#[test]
#[ignore]
fn features_full_size_timing() {
    let t0 = std::time::Instant::now();
    let md = generate(&SyntheticConfig::default(), "SPY");
    let gen_s = t0.elapsed().as_secs_f64();
    let mut feat_s = f64::MAX;
    let mut cpu_s = f64::MAX;
    let mut f = None;
    for _ in 0..3 {
        let (t1, c1) = (std::time::Instant::now(), process_cpu_seconds());
        f = Some(Features::compute(&md));
        feat_s = feat_s.min(t1.elapsed().as_secs_f64());
        cpu_s = cpu_s.min(process_cpu_seconds() - c1);
    }
    let f = f.unwrap();
    eprintln!(
        "generate: {gen_s:.3} s, Features::compute: {feat_s:.3} s wall, {cpu_s:.2} s CPU (best of 3, {} threads)",
        rayon::current_num_threads()
    );
    for (k, name) in TECH_NAMES.iter().enumerate() {
        let v: Vec<f64> = (0..md.bars)
            .step_by(3)
            .flat_map(|t| (0..143).map(move |s| (t, s)))
            .filter(|(t, _)| *t >= 96)
            .map(|(t, s)| f.tech[f.tech_index(0, t, s) + k] as f64)
            .collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let clipped = v.iter().filter(|x| x.abs() >= 4.999).count() as f64 / v.len() as f64;
        eprintln!("{name:>12}: mean {m:+.3} sd {sd:.3} clipped {clipped:.4}");
    }
    for (k, name) in REGIME_NAMES.iter().enumerate() {
        let v: Vec<f64> = (96..md.bars).map(|t| f.regime_at(0, t)[k] as f64).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        eprintln!("{name:>12}: mean {m:+.3} sd {sd:.3}");
    }
    assert!(feat_s < 2.0, "Features::compute took {feat_s} s");
}

/// The crisis warning (issue #12's foreseeable crisis): only the VIX series changes, by the ramp
/// of `data::synthetic`'s doc before every crisis onset, and the same market without it is the
/// null control.
#[test]
fn crisis_warning_ramps_vix_before_each_onset_and_changes_nothing_else() {
    let (plain, reg) = all_regimes_seed(&small(0, 10, 7000));
    let seed = (0..50)
        .find(|&s| {
            generate_with_regimes(
                &SyntheticConfig {
                    seed: s,
                    ..small(0, 10, 7000)
                },
                "SPY",
            )
            .1 == reg
        })
        .unwrap();
    let lead = 14;
    let warned_cfg = SyntheticConfig {
        seed,
        crisis_warning_bars: lead,
        crisis_warning_vix: 25.0,
        ..small(0, 10, 7000)
    };
    let (warned, reg2) = generate_with_regimes(&warned_cfg, "SPY");
    assert_eq!(reg, reg2);
    for (name, a, b) in [
        ("open", &plain.open, &warned.open),
        ("close", &plain.close, &warned.close),
        ("volume", &plain.volume, &warned.volume),
        ("sentiment", &plain.sentiment, &warned.sentiment),
    ] {
        assert_eq!(a, b, "{name} changed");
    }
    let onsets: Vec<usize> = (1..reg.len())
        .filter(|&t| reg[t] == 2 && reg[t - 1] != 2)
        .collect();
    assert!(!onsets.is_empty());
    let mut ramp = vec![0f64; reg.len()];
    for &t0 in &onsets {
        let start = t0.saturating_sub(lead);
        for (t, r) in ramp.iter_mut().enumerate().take(t0).skip(start) {
            *r += 25.0 * (t + lead + 1 - t0) as f64 / lead as f64;
        }
    }
    let mut changed = 0;
    for (t, r) in ramp.iter().enumerate() {
        let (rate0, vix0) = (plain.macro_series[2 * t], plain.macro_series[2 * t + 1]);
        let (rate1, vix1) = (warned.macro_series[2 * t], warned.macro_series[2 * t + 1]);
        assert_eq!(rate0, rate1, "rate changed at bar {t}");
        assert_eq!(vix1, (f64::from(vix0) + r) as f32, "bar {t}");
        changed += usize::from(vix0 != vix1);
    }
    // Every bar of every lead window moved (a window can be cut by the start of the data).
    let expected = ramp.iter().filter(|r| **r > 0.0).count();
    assert_eq!(changed, expected);
    assert!(expected >= lead, "{expected}");
    // A negative or non-finite height is refused, naming the field.
    let mut dc = DataConfig::default();
    dc.synthetic.crisis_warning_vix = -1.0;
    let e = dc.validate("x.toml").unwrap_err();
    assert!(
        e.to_string().contains("data.synthetic.crisis_warning_vix"),
        "{e}"
    );
}

/// The crisis frequency (`crisis_entry`) and the onset crash (`crisis_crash`, `crisis_crash_bars`)
/// of `data::synthetic`'s doc: the entry factor changes how many crises start and only that
/// (0: none after the first bar), the crash moves the benchmark's log return by exactly
/// `ln(1 - c) / n` on each of the first n bars of every crisis and on no other bar, symbols fall
/// with it, the VIX reacts only from the first crash bar on, and bad values are refused by name.
#[test]
fn crisis_entry_and_onset_crash() {
    let base = SyntheticConfig {
        bars_per_day: 1,
        paths: 4,
        ..small(3, 6, 6000)
    };
    let onsets = |reg: &[u8], t_len: usize| -> Vec<usize> {
        (0..reg.len())
            .filter(|&i| reg[i] == 2 && (i % t_len == 0 || reg[i - 1] != 2))
            .collect()
    };
    let (plain, reg) = generate_with_regimes(&base, "SPY");
    let n_default = onsets(&reg, 6000).len();
    let more = generate_with_regimes(
        &SyntheticConfig {
            crisis_entry: 2.0,
            ..base.clone()
        },
        "SPY",
    )
    .1;
    let fewer = generate_with_regimes(
        &SyntheticConfig {
            crisis_entry: 0.3,
            ..base.clone()
        },
        "SPY",
    )
    .1;
    let none = generate_with_regimes(
        &SyntheticConfig {
            crisis_entry: 0.0,
            ..base.clone()
        },
        "SPY",
    )
    .1;
    let (n_more, n_fewer) = (onsets(&more, 6000).len(), onsets(&fewer, 6000).len());
    assert!(
        n_fewer < n_default && n_default < n_more,
        "onsets {n_fewer} / {n_default} / {n_more}"
    );
    // No crisis starts after bar 0 of a path at entry 0.
    assert!(onsets(&none, 6000).iter().all(|&i| i % 6000 == 0));
    // The crash: same regimes, the benchmark's bar log returns moved by ln(1 - c) / n on the
    // first n crisis bars only.
    let (c, n) = (0.3, 3usize);
    let (crashed, reg2) = generate_with_regimes(
        &SyntheticConfig {
            crisis_crash: c,
            crisis_crash_bars: n,
            ..base.clone()
        },
        "SPY",
    );
    assert_eq!(reg, reg2, "the crash changes no regime");
    let b = plain.n_symbols();
    let step = (1.0f64 - c).ln() / n as f64;
    let mut crash_bars = 0;
    let mut sym_drop = 0.0;
    for p in 0..plain.paths {
        let r = &reg[p * 6000..(p + 1) * 6000];
        let mut since = 0usize;
        for t in 0..6000 {
            since = if r[t] != 2 {
                usize::MAX
            } else if t > 0 && r[t - 1] == 2 {
                since.saturating_add(1)
            } else {
                0
            };
            if t == 0 {
                continue;
            }
            let d = log_ret(&crashed, p, t - 1, b) - log_ret(&plain, p, t - 1, b);
            let expect = if since < n { step } else { 0.0 };
            assert!(
                (d - expect).abs() < 2e-4,
                "path {p} bar {t}: benchmark log return moved by {d}, expected {expect}"
            );
            if since < n {
                crash_bars += 1;
                for s in 0..b {
                    sym_drop += log_ret(&crashed, p, t - 1, s) - log_ret(&plain, p, t - 1, s);
                }
            }
        }
    }
    assert!(crash_bars >= n, "{crash_bars}");
    // Symbols fall with their beta (0.6 to 1.5).
    let mean_drop = sym_drop / (crash_bars * b) as f64;
    assert!(
        mean_drop < 0.5 * step && mean_drop > 1.6 * step,
        "mean symbol move {mean_drop} per crash bar vs the market's {step}"
    );
    // The VIX is unchanged before the first crash bar of the first onset (no look-ahead).
    let first = onsets(&reg, 6000)
        .into_iter()
        .find(|&i| i % 6000 > 0)
        .unwrap();
    let (p0, t0) = (first / 6000, first % 6000);
    for t in 0..t0 {
        let i = (p0 * 6000 + t) * 2 + 1;
        assert_eq!(
            plain.macro_series[i], crashed.macro_series[i],
            "VIX at bar {t}"
        );
    }
    let i0 = (p0 * 6000 + t0) * 2 + 1;
    assert!(crashed.macro_series[i0] > plain.macro_series[i0]);

    // Bad values are refused, naming the field.
    for (field, set) in [
        (
            "data.synthetic.crisis_entry",
            (|d: &mut DataConfig| d.synthetic.crisis_entry = 2.6) as fn(&mut DataConfig),
        ),
        ("data.synthetic.crisis_entry", |d| {
            d.synthetic.crisis_entry = f64::NAN
        }),
        ("data.synthetic.crisis_crash", |d| {
            d.synthetic.crisis_crash = 1.0
        }),
        ("data.synthetic.crisis_crash", |d| {
            d.synthetic.crisis_crash = -0.1
        }),
        ("data.synthetic.crisis_crash_bars", |d| {
            d.synthetic.crisis_crash_bars = 0
        }),
    ] {
        let mut dc = DataConfig::default();
        set(&mut dc);
        let e = dc.validate("x.toml").unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
}
