//! `mt-tools`: small utilities around marl-trade data files, the things a Python script would
//! otherwise do.
//!
//! - `mt-tools inspect FILE...`: load long-format OHLCV (parquet / CSV) with the library's loader
//!   (the same validation as training) and print a per-symbol summary.
//! - `mt-tools convert IN... --out OUT.parquet`: load, validate, align, and write one parquet file.
//! - `mt-tools reward-signals RUN_DIR`: the reward-signal analyzer (`marl_trade::train::signals`)
//!   on a training run's `metrics.jsonl`: prints a table per reward term, writes a PNG of the
//!   series, optionally the report as JSON, and exits 0 when clean, 1 on an alarm (so that a
//!   training driver can stop on it), 2 on an error (a bad path, a malformed line: file and line
//!   named).

mod signals_plot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use marl_trade::data::{self, MarketData};
use marl_trade::data::{AlignPolicy, DataConfig};
use marl_trade::train::signals::SignalThresholds;

#[derive(Parser)]
#[command(name = "mt-tools", about = "Utilities for marl-trade data files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Benchmark symbol that must be present in the data.
    #[arg(long, global = true, default_value = "SPY")]
    benchmark: String,
    /// Calendar alignment: intersection or forward-fill.
    #[arg(long, global = true, default_value = "intersection")]
    align: String,
    /// Minimum bars per symbol.
    #[arg(long, global = true, default_value_t = 128)]
    min_bars: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a per-symbol summary of one or more data files (loaded together).
    Inspect { files: Vec<PathBuf> },
    /// Load, validate and align data files, then write them as one parquet file.
    Convert {
        files: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Analyse the reward terms of a training run (RUN_DIR/metrics.jsonl, weights from
    /// RUN_DIR/config.toml): dominance, collapse, sign flips, drift, ignores-costs. Prints a
    /// table, writes a PNG; exit code 0 = clean, 1 = alarm(s), 2 = error.
    RewardSignals {
        /// The run directory (`marl-trade train --out`).
        run_dir: PathBuf,
        /// Points (iterations with reward terms) in the window of dominance, collapse and
        /// ignores-costs [default: 10].
        #[arg(long)]
        window: Option<usize>,
        /// Dominance threshold: a shaping term's mean share over the window above it is an alarm
        /// [default: 0.6].
        #[arg(long)]
        dominance: Option<f64>,
        /// Dominance threshold of the P&L term, the objective the shaping terms serve
        /// [default: 1, no alarm].
        #[arg(long)]
        objective_dominance: Option<f64>,
        /// Where to write the PNG [default: RUN_DIR/reward-signals.png].
        #[arg(long)]
        png: Option<PathBuf>,
        /// Also write the report (thresholds, statistics, series, alarms) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn summary(md: &MarketData) -> String {
    let mut s = format!(
        "{} symbols + benchmark {}, {} bars, {} path(s)\n{:<10} {:>12} {:>12} {:>12} {:>14}\n",
        md.n_symbols(),
        md.benchmark,
        md.bars,
        md.paths,
        "symbol",
        "first close",
        "last close",
        "min low",
        "mean volume"
    );
    let s1 = md.n_symbols() + 1;
    for j in 0..s1 {
        let name = if j == md.n_symbols() {
            &md.benchmark
        } else {
            &md.symbols[j]
        };
        let col = |v: &[f32], t: usize| v[md.px(0, t, j)];
        let min_low = (0..md.bars)
            .map(|t| col(&md.low, t))
            .fold(f32::INFINITY, f32::min);
        let mean_vol =
            (0..md.bars).map(|t| col(&md.volume, t) as f64).sum::<f64>() / md.bars as f64;
        s += &format!(
            "{:<10} {:>12.4} {:>12.4} {:>12.4} {:>14.0}\n",
            name,
            col(&md.close, 0),
            col(&md.close, md.bars - 1),
            min_low,
            mean_vol
        );
    }
    s
}

/// `reward-signals`: analyse, print, write; `Ok(true)` when there is an alarm.
fn reward_signals(
    run_dir: &std::path::Path,
    window: Option<usize>,
    dominance: Option<f64>,
    objective_dominance: Option<f64>,
    png: Option<PathBuf>,
    json: Option<PathBuf>,
) -> marl_trade::Result<bool> {
    if !run_dir.is_dir() {
        return Err(
            marl_trade::Error::invalid("the run directory does not exist").with_file(run_dir),
        );
    }
    let defaults = SignalThresholds::default();
    let th = SignalThresholds {
        window: window.unwrap_or(defaults.window),
        dominance: dominance.unwrap_or(defaults.dominance),
        objective_dominance: objective_dominance.unwrap_or(defaults.objective_dominance),
        ..defaults
    };
    let report = marl_trade::run::analyze_run(run_dir, &th)?;
    if report.points() == 0 {
        return Err(marl_trade::Error::invalid(format!(
            "none of its {} iterations has reward terms (no episode has ended yet): nothing to analyse",
            report.iterations_read
        ))
        .with_file(run_dir.join(marl_trade::run::METRICS_JSONL)));
    }
    print!("{}", report.table());
    if let Some(j) = &json {
        marl_trade::atomic::write(j, report.to_json()?.as_bytes())?;
        println!("wrote {}", j.display());
    }
    let png = png.unwrap_or_else(|| run_dir.join("reward-signals.png"));
    let name = run_dir.file_name().map_or_else(
        || run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    signals_plot::write_png(&report, &name, &png)?;
    println!("wrote {}", png.display());
    Ok(report.has_alarms())
}

/// The data commands' loader settings, from the global options.
fn data_config(cli: &Cli) -> marl_trade::Result<DataConfig> {
    let align = match cli.align.as_str() {
        "intersection" => AlignPolicy::Intersection,
        "forward-fill" => AlignPolicy::ForwardFill,
        other => {
            return Err(marl_trade::Error::invalid(format!(
                "unknown --align `{other}`"
            )));
        }
    };
    Ok(DataConfig {
        benchmark: cli.benchmark.clone(),
        align,
        min_bars: cli.min_bars,
        ..DataConfig::default()
    })
}

fn run(cli: Cli) -> marl_trade::Result<ExitCode> {
    match &cli.cmd {
        Cmd::Inspect { files } => {
            let md = data::loader::load_files(files, &data_config(&cli)?)?;
            print!("{}", summary(&md));
        }
        Cmd::Convert { files, out } => {
            let md = data::loader::load_files(files, &data_config(&cli)?)?;
            data::synthetic::write_parquet(&md, out)?;
            println!(
                "wrote {} ({} symbols, {} bars)",
                out.display(),
                md.n_symbols(),
                md.bars
            );
        }
        Cmd::RewardSignals {
            run_dir,
            window,
            dominance,
            objective_dominance,
            png,
            json,
        } => {
            let alarm = reward_signals(
                run_dir,
                *window,
                *dominance,
                *objective_dominance,
                png.clone(),
                json.clone(),
            )?;
            return Ok(if alarm {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
