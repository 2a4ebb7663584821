//! `mt-tools`: small utilities around marl-trade data files, the things a Python script would
//! otherwise do.
//!
//! - `mt-tools inspect FILE...`: load long-format OHLCV (parquet / CSV) with the library's loader
//!   (the same validation as training) and print a per-symbol summary.
//! - `mt-tools convert IN... --out OUT.parquet`: load, validate, align, and write one parquet file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use marl_trade::data::{self, MarketData};
use marl_trade::data::{AlignPolicy, DataConfig};

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

fn run(cli: Cli) -> marl_trade::Result<()> {
    let align = match cli.align.as_str() {
        "intersection" => AlignPolicy::Intersection,
        "forward-fill" => AlignPolicy::ForwardFill,
        other => {
            return Err(marl_trade::Error::invalid(format!(
                "unknown --align `{other}`"
            )));
        }
    };
    let cfg = DataConfig {
        benchmark: cli.benchmark.clone(),
        align,
        min_bars: cli.min_bars,
        ..DataConfig::default()
    };
    match cli.cmd {
        Cmd::Inspect { files } => {
            let md = data::loader::load_files(&files, &cfg)?;
            print!("{}", summary(&md));
        }
        Cmd::Convert { files, out } => {
            let md = data::loader::load_files(&files, &cfg)?;
            data::synthetic::write_parquet(&md, &out)?;
            println!(
                "wrote {} ({} symbols, {} bars)",
                out.display(),
                md.n_symbols(),
                md.bars
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
