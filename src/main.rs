//! The `marl-trade` command line: synthetic data, baseline backtests and the environment benchmark.
//!
//! ```text
//! marl-trade data synth --config configs/default.toml --out data/synth.parquet
//! marl-trade backtest --config configs/small.toml --policy all --period test [--data FILE]
//! marl-trade bench env --backend cpu --envs 128 --symbols 143 --steps 2048 [--threads K]
//! ```
//!
//! Every command reads `--config` (default `configs/default.toml`). Errors are printed as
//! `error: <message>` and exit with status 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use marl_trade::config::{Config, DataSource};
use marl_trade::data::{self, MarketData};
use marl_trade::env::obs::OBS_DIM;
use marl_trade::env::{BackendKind, MASTER_ACTIONS, N_ACTIONS, Period, VecEnv};
use marl_trade::eval::{BacktestOptions, Baseline, format_table, run_baselines};
use marl_trade::features::{Features, WARMUP};
use marl_trade::rng::SplitMix64;
use marl_trade::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "marl-trade",
    version,
    about = "Hierarchical multi-agent RL trading: data, backtests, benchmarks"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, default_value = "configs/default.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Market data tools.
    #[command(subcommand)]
    Data(DataCmd),
    /// Backtest the scripted baselines and print their metrics.
    Backtest(BacktestArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
enum DataCmd {
    /// Generate the synthetic market of the config and write it as parquet (long format).
    Synth {
        /// Output file.
        #[arg(long, default_value = "data/synth.parquet")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    Hold,
    Random,
    EqualWeight,
    Spy,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PeriodArg {
    Train,
    Test,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Cpu,
    Cuda,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Cuda => BackendKind::Cuda,
        }
    }
}

#[derive(Args, Debug)]
struct BacktestArgs {
    /// Which policy to run.
    #[arg(long, value_enum, default_value_t = PolicyArg::All)]
    policy: PolicyArg,
    /// Which period of the data.
    #[arg(long, value_enum, default_value_t = PeriodArg::Test)]
    period: PeriodArg,
    /// A data file (long-format OHLCV parquet / CSV) instead of the config's data source.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Environment backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Seed of the random policy.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the metrics as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Throughput of `step` and of `step` + `gather_obs` on synthetic data.
    Env(BenchEnvArgs),
}

#[derive(Args, Debug)]
struct BenchEnvArgs {
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Parallel scenarios N.
    #[arg(long, default_value_t = 128)]
    envs: usize,
    /// Symbols S.
    #[arg(long, default_value_t = 143)]
    symbols: usize,
    /// Timed steps (each of the two measurements).
    #[arg(long, default_value_t = 2048)]
    steps: usize,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let cfg = Config::from_file(&cli.config)?;
    match cli.command {
        Command::Data(DataCmd::Synth { out }) => data_synth(&cfg, &out),
        Command::Backtest(args) => backtest(&cfg, &args),
        Command::Bench(BenchCmd::Env(args)) => bench_env(&cfg, &args),
    }
}

fn data_synth(cfg: &Config, out: &Path) -> Result<()> {
    let t = Instant::now();
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    data::synthetic::write_parquet(&md, out)?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {}: {} symbols + {}, {} bars, {} path(s), {:.1} MiB in {:.1} s",
        out.display(),
        md.n_symbols(),
        md.benchmark,
        md.bars,
        md.paths,
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The market data of a run: `--data` (one file, or several separated by commas), else the config's
/// source (`data::loader::load`).
fn load_data(cfg: &Config, file: Option<&Path>) -> Result<(MarketData, String)> {
    if let Some(f) = file {
        let text = f.to_string_lossy();
        let paths: Vec<PathBuf> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let md = data::loader::load_files(&paths, &cfg.data)?;
        return Ok((md, text.into_owned()));
    }
    let md = data::loader::load(&cfg.data)?;
    let origin = match cfg.data.source {
        DataSource::File => cfg.data.path.clone().unwrap_or_default(),
        DataSource::Synthetic => {
            let s = &cfg.data.synthetic;
            format!(
                "synthetic (seed {}, signal {} {:?})",
                s.seed, s.signal_strength, s.signal_kind
            )
        }
    };
    Ok((md, origin))
}

fn backtest(cfg: &Config, args: &BacktestArgs) -> Result<()> {
    let (md, origin) = load_data(cfg, args.data.as_deref())?;
    let features = Features::compute(&md);
    let which: Vec<Baseline> = match args.policy {
        PolicyArg::All => Baseline::ALL.to_vec(),
        PolicyArg::Hold => vec![Baseline::Hold],
        PolicyArg::Random => vec![Baseline::Random],
        PolicyArg::EqualWeight => vec![Baseline::EqualWeight],
        PolicyArg::Spy => vec![Baseline::Spy],
    };
    let period = match args.period {
        PeriodArg::Train => Period::Train,
        PeriodArg::Test => Period::Test,
    };
    let opts = BacktestOptions {
        period,
        backend: args.backend.into(),
        seed: args.seed,
        progress: true,
    };
    let (md, features) = (Arc::new(md), Arc::new(features));
    let results = run_baselines(cfg, md.clone(), features, &opts, &which)?;
    let (a, last) = results
        .first()
        .map(|r| (r.first_bar, r.last_bar))
        .unwrap_or((0, 0));
    println!(
        "data: {origin}: {} symbols, {} bars, {} path(s); period {:?}: bars {a}..={last} ({} steps); backend {:?}",
        md.n_symbols(),
        md.bars,
        md.paths,
        args.period,
        last.saturating_sub(a),
        args.backend
    );
    let rows: Vec<_> = results.into_iter().map(|r| r.metrics).collect();
    print!("{}", format_table(&rows));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::invalid(format!("json: {e}")))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// `(logical CPUs, CPU model)` of this machine.
fn machine() -> (usize, String) {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (nproc, model)
}

fn bench_env(cfg: &Config, args: &BenchEnvArgs) -> Result<()> {
    if args.envs == 0 || args.symbols == 0 || args.steps == 0 {
        return Err(Error::invalid("--envs, --symbols and --steps must be >= 1"));
    }
    if args.threads == Some(0) {
        return Err(Error::invalid("--threads must be >= 1"));
    }
    let mut cfg = cfg.clone();
    cfg.data.synthetic.symbols = args.symbols;
    cfg.env.scenarios = args.envs;
    // enough bars for the train period to hold full episodes (WARMUP + episode_len + 2) after the
    // split; episodes auto-reset, so the timed steps are not limited by the data length.
    let need =
        ((WARMUP + cfg.env.episode_len + 2) as f64 / cfg.env.train_fraction).ceil() as usize + 1;
    cfg.data.synthetic.bars = cfg.data.synthetic.bars.max(need);
    let kind: BackendKind = args.backend.into();

    let pool = match args.threads {
        Some(k) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .map_err(|e| Error::invalid(format!("cannot start {k} threads: {e}")))?,
        ),
        None => None,
    };
    let body = || bench_body(&cfg, kind, args);
    match &pool {
        Some(p) => p.install(body),
        None => body(),
    }
}

fn bench_body(cfg: &Config, kind: BackendKind, args: &BenchEnvArgs) -> Result<()> {
    let (nproc, model) = machine();
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let md = Arc::new(data::generate(&cfg.data.synthetic, &cfg.data.benchmark));
    let features = Arc::new(Features::compute(&md));
    let prep = t.elapsed().as_secs_f64();
    let mut env = VecEnv::new(cfg, md.clone(), features, Period::Train, kind)?;
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    println!("machine: {nproc} logical CPUs, {model}; rayon threads: {threads}");
    println!(
        "env: backend {}, N = {n} scenarios x S = {s} symbols, {} bars x {} path(s) (data + features {prep:.1} s), \
         episode_len {}, OBS_DIM {OBS_DIM}",
        env.backend_name(),
        md.bars,
        md.paths,
        cfg.env.episode_len
    );

    // Uniform random actions (masked ones execute as HOLD) and master actions, drawn before timing.
    const BATCHES: usize = 64;
    let mut rng = SplitMix64::new(12345);
    let acts: Vec<Vec<u8>> = (0..BATCHES)
        .map(|_| {
            (0..n * s)
                .map(|_| rng.below(N_ACTIONS as u64) as u8)
                .collect()
        })
        .collect();
    let masters: Vec<Vec<u8>> = (0..BATCHES)
        .map(|_| {
            (0..n)
                .map(|_| rng.below(MASTER_ACTIONS as u64) as u8)
                .collect()
        })
        .collect();
    let mut obs = vec![0f32; n * s * OBS_DIM];

    env.reset(1)?;
    let warm = args.steps.clamp(1, 32);
    for i in 0..warm {
        env.step(&acts[i % BATCHES], &masters[i % BATCHES])?;
        env.gather_obs(&mut obs)?;
    }

    let sym_steps = (n * s * args.steps) as f64;
    let t = Instant::now();
    for i in 0..args.steps {
        env.step(&acts[i % BATCHES], &masters[i % BATCHES])?;
    }
    let dt_step = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for i in 0..args.steps {
        env.step(&acts[i % BATCHES], &masters[i % BATCHES])?;
        env.gather_obs(&mut obs)?;
    }
    let dt_both = t.elapsed().as_secs_f64();
    std::hint::black_box(&obs);

    println!(
        "step:              {:>12.0} symbol-steps/s  ({} steps in {:.3} s, {:.3} ms/step)",
        sym_steps / dt_step,
        args.steps,
        dt_step,
        1e3 * dt_step / args.steps as f64
    );
    println!(
        "step + gather_obs: {:>12.0} symbol-steps/s  ({} steps in {:.3} s, {:.3} ms/step)",
        sym_steps / dt_both,
        args.steps,
        dt_both,
        1e3 * dt_both / args.steps as f64
    );
    Ok(())
}
