//! The `marl-trade` command line: synthetic data, training, evaluation, baseline backtests and
//! benchmarks.
//!
//! ```text
//! marl-trade data synth --config configs/default.toml --out data/synth.parquet
//! marl-trade train --config configs/small.toml --out runs/small [--resume] [--iterations K]
//! marl-trade eval --checkpoint runs/small --period test [--data FILE] [--json FILE]
//! marl-trade backtest --config configs/small.toml --policy all --period test [--data FILE]
//! marl-trade bench env --backend cpu --envs 128 --symbols 143 --steps 2048 [--threads K]
//! marl-trade bench policy --config configs/default.toml --scenarios 128
//! ```
//!
//! Every command reads `--config` (default `configs/default.toml`; `eval` reads the configuration
//! stored with the checkpoint instead); `--set section.field=value` overrides a field of it.
//! Errors are printed as `error: <message>` and exit with status 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use marl_trade::config::{Config, DataSource};
use marl_trade::data::{self, MarketData};
use marl_trade::env::obs::OBS_DIM;
use marl_trade::env::{BackendKind, MASTER_ACTIONS, N_ACTIONS, Period, VecEnv};
use marl_trade::eval::{
    ActMode, AgentPolicy, BacktestOptions, Baseline, compare, decision_ic, format_table,
    run_baselines, run_policy,
};
use marl_trade::features::{Features, WARMUP};
use marl_trade::rng::SplitMix64;
use marl_trade::train::run::{self, Market, TrainOptions};
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
    /// Override a field of the configuration, `section.field=value` (TOML value), repeatable:
    /// `--set ppo.total_timesteps=4096 --set data.synthetic.signal_strength=1`.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Market data tools.
    #[command(subcommand)]
    Data(DataCmd),
    /// Train the symbol agents with PPO on the train period (progress bar, metrics per iteration,
    /// checkpoints in the run directory).
    Train(TrainArgs),
    /// Play a trained checkpoint deterministically on held-out bars, next to the baselines.
    Eval(EvalArgs),
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
    #[command(flatten)]
    on: BacktestOn,
}

/// Where and how a backtest runs (`backtest` and `eval`).
#[derive(Args, Debug)]
struct BacktestOn {
    /// Which period of the data.
    #[arg(long, value_enum, default_value_t = PeriodArg::Test)]
    period: PeriodArg,
    /// A data file (long-format OHLCV parquet / CSV) instead of the config's data source (for
    /// `eval`: the same symbols, in the same order, as in training).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Environment backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Seed of the random baseline (and of the policy's draws with `eval --sample`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the metrics (and `eval`'s comparisons) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BacktestOn {
    fn options(&self) -> BacktestOptions {
        BacktestOptions {
            period: match self.period {
                PeriodArg::Train => Period::Train,
                PeriodArg::Test => Period::Test,
            },
            backend: self.backend.into(),
            seed: self.seed,
            progress: true,
        }
    }
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Run directory (config, metrics, checkpoints); default `runs/<config file stem>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in `--out` from its latest checkpoint (bit-identical to an uninterrupted run).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace the run in `--out` if there is one (its config, metrics and checkpoints).
    #[arg(long)]
    force: bool,
    /// Run at most this many iterations now (the run's length is `ppo.total_timesteps`).
    #[arg(long)]
    iterations: Option<usize>,
    /// Checkpoint every this many iterations (and after the last one).
    #[arg(long, default_value_t = 10)]
    save_every: usize,
    /// Environment backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// No progress bar; print one line per iteration instead.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Sample the policy's actions (seeded by `--seed`, reproducible) instead of taking the most
    /// probable.
    #[arg(long)]
    sample: bool,
    #[command(flatten)]
    on: BacktestOn,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Throughput of `step` and of `step` + `gather_obs` on synthetic data.
    Env(BenchEnvArgs),
    /// Time of one policy forward pass (the config's agent) for 1 and for N scenarios.
    Policy(BenchPolicyArgs),
}

#[derive(Args, Debug)]
struct BenchPolicyArgs {
    /// Scenarios of the batched measurements.
    #[arg(long, default_value_t = 128)]
    scenarios: usize,
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
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
    if let Command::Eval(args) = &cli.command {
        return eval(args, &cli.overrides);
    }
    let cfg = Config::from_file_with_overrides(&cli.config, &cli.overrides)?;
    match cli.command {
        Command::Data(DataCmd::Synth { out }) => data_synth(&cfg, &out),
        Command::Train(args) => train(&cfg, &cli.config, &args),
        Command::Eval(_) => unreachable!("handled above"),
        Command::Backtest(args) => backtest(&cfg, &args),
        Command::Bench(BenchCmd::Env(args)) => bench_env(&cfg, &args),
        Command::Bench(BenchCmd::Policy(args)) => {
            with_threads(args.threads, || bench_policy(&cfg, &args))
        }
    }
}

/// Run `f` in a rayon pool of `threads` workers (the global pool when `None`).
fn with_threads<T>(threads: Option<usize>, f: impl FnOnce() -> Result<T> + Send) -> Result<T>
where
    T: Send,
{
    match threads {
        Some(0) => Err(Error::invalid("--threads must be >= 1")),
        Some(k) => rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build()
            .map_err(|e| Error::invalid(format!("cannot start {k} threads: {e}")))?
            .install(f),
        None => f(),
    }
}

fn train(cfg: &Config, config_path: &Path, args: &TrainArgs) -> Result<()> {
    let out = match &args.out {
        Some(o) => o.clone(),
        None => Path::new("runs").join(
            config_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
        ),
    };
    let t = Instant::now();
    let market = Market::load(cfg)?;
    let (nproc, model) = machine();
    let p = &cfg.ppo_for_env();
    println!(
        "train: {} symbols x {} scenarios, {} steps per rollout ({} symbol transitions), {} iterations; \
         data + features {:.1} s; {nproc} logical CPUs ({model}), rayon threads {}",
        market.data.n_symbols(),
        p.num_envs,
        p.num_steps,
        p.batch_size() * market.data.n_symbols(),
        p.num_iterations(),
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let opts = TrainOptions {
        out: out.clone(),
        resume: args.resume,
        force: args.force,
        max_iterations: args.iterations,
        save_every: args.save_every,
        backend: args.backend.into(),
        progress: !args.quiet,
    };
    let report = marl_trade::train::run::train(cfg, &market, &opts)?;
    if args.quiet {
        for m in &report.metrics {
            println!(
                "iter {:4}  return {:+.3}%  pg {:+.4}  v {:.4}  ent {:.3}  kl {:.4}  clip {:.3}  ev {}  {:.0} symbol-steps/s",
                m.iteration,
                100.0 * m.episode_return_mean.unwrap_or(f64::NAN),
                m.policy_loss,
                m.value_loss,
                m.entropy,
                m.approx_kl,
                m.clipfrac,
                m.explained_variance
                    .map_or("-".into(), |v| format!("{v:.3}")),
                m.agent_sps
            );
        }
    }
    if let Some(m) = report.metrics.last() {
        println!(
            "iteration {}/{}: policy loss {:+.4}, value loss {:.4}, entropy {:.3}, approx KL {:.4}, \
             explained variance {}, episode return {}",
            report.iteration,
            report.num_iterations,
            m.policy_loss,
            m.value_loss,
            m.entropy,
            m.approx_kl,
            m.explained_variance
                .map_or("-".into(), |v| format!("{v:.3}")),
            m.episode_return_mean
                .map_or("-".into(), |v| format!("{:+.3}%", 100.0 * v))
        );
    }
    if let Some(m) = report.metrics.iter().rev().find(|m| !m.env.is_empty()) {
        let terms: Vec<String> = marl_trade::reward::COMPONENT_NAMES
            .iter()
            .filter_map(|c| {
                let mean = m.env.get(&format!("reward.{c}"))?;
                let share = m.env.get(&format!("reward_share.{c}"))?;
                Some(format!("{c} {mean:+.2e} ({:.0}%)", 100.0 * share))
            })
            .collect();
        println!(
            "reward terms per symbol-step (share of |sum|), iteration {}: {}",
            m.iteration,
            terms.join(", ")
        );
    }
    println!(
        "{} iterations in {:.1} s: {:.0} symbol transitions/s end to end (rollout + update + checkpoints)",
        report.metrics.len(),
        report.seconds,
        report.symbol_sps()
    );
    println!(
        "checkpoint: {}; metrics: {}, {}",
        report.checkpoint.display(),
        out.join(run::METRICS_JSONL).display(),
        out.join(run::METRICS_CSV).display()
    );
    Ok(())
}

fn eval(args: &EvalArgs, overrides: &[String]) -> Result<()> {
    let dir = run::resolve_checkpoint(&args.checkpoint)?;
    let cfg = Config::from_file_with_overrides(dir.join(run::CONFIG_FILE), overrides)?;
    let (md, origin) = load_data(&cfg, args.on.data.as_deref())?;
    let market = Market::from_data(md);
    let mode = if args.sample {
        ActMode::Sample(args.on.seed)
    } else {
        ActMode::Greedy
    };
    let mut agent = AgentPolicy::from_checkpoint(
        if args.sample { "ppo-sampled" } else { "ppo" },
        &dir,
        &market,
        cfg.master.default_action,
    )?
    .with_mode(mode)
    .with_trace();
    let opts = args.on.options();
    let mine = run_policy(
        &cfg,
        market.data.clone(),
        market.features.clone(),
        &opts,
        &mut agent,
    )?;
    let base = run_baselines(
        &cfg,
        market.data.clone(),
        market.features.clone(),
        &opts,
        &Baseline::ALL,
    )?;
    println!(
        "checkpoint {}; data: {origin}: {} symbols, {} bars, {} path(s); period {:?}: bars {}..={} ({} steps)",
        dir.display(),
        market.data.n_symbols(),
        market.data.bars,
        market.data.paths,
        args.on.period,
        mine.first_bar,
        mine.last_bar,
        mine.last_bar.saturating_sub(mine.first_bar)
    );
    let mut rows = vec![mine.metrics.clone()];
    rows.extend(base.iter().map(|r| r.metrics.clone()));
    print!("{}", format_table(&rows));
    let comparisons = base
        .iter()
        .map(|b| compare(&mine, b))
        .collect::<Result<Vec<_>>>()?;
    for c in &comparisons {
        println!("{}", c.line());
    }
    let ic = decision_ic(&agent.take_trace(), &market.data);
    println!("{}", ic.line());
    if let Some(path) = &args.on.json {
        let doc = serde_json::json!({
            "metrics": rows,
            "comparisons": comparisons,
            "decision_ic": ic,
        });
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| Error::invalid(format!("json: {e}")))?;
        marl_trade::train::checkpoint::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
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
    let (md, origin) = load_data(cfg, args.on.data.as_deref())?;
    let features = Features::compute(&md);
    let which: Vec<Baseline> = match args.policy {
        PolicyArg::All => Baseline::ALL.to_vec(),
        PolicyArg::Hold => vec![Baseline::Hold],
        PolicyArg::Random => vec![Baseline::Random],
        PolicyArg::EqualWeight => vec![Baseline::EqualWeight],
        PolicyArg::Spy => vec![Baseline::Spy],
    };
    let opts = args.on.options();
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
        args.on.period,
        last.saturating_sub(a),
        args.on.backend
    );
    let rows: Vec<_> = results.into_iter().map(|r| r.metrics).collect();
    print!("{}", format_table(&rows));
    if let Some(path) = &args.on.json {
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
    let mut cfg = cfg.clone();
    cfg.data.synthetic.symbols = args.symbols;
    cfg.env.scenarios = args.envs;
    // enough bars for the train period to hold full episodes (WARMUP + episode_len + 2) after the
    // split; episodes auto-reset, so the timed steps are not limited by the data length.
    let need =
        ((WARMUP + cfg.env.episode_len + 2) as f64 / cfg.env.train_fraction).ceil() as usize + 1;
    cfg.data.synthetic.bars = cfg.data.synthetic.bars.max(need);
    let kind: BackendKind = args.backend.into();
    with_threads(args.threads, || bench_body(&cfg, kind, args))
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

fn bench_policy(cfg: &Config, args: &BenchPolicyArgs) -> Result<()> {
    use candle_core::{DType, Device, Tensor};
    use marl_trade::agents::Policy as _;
    use marl_trade::agents::symbol::SymbolObs;
    use marl_trade::env::obs::DYN_OBS;

    if args.scenarios == 0 || args.reps == 0 {
        return Err(Error::invalid("--scenarios and --reps must be >= 1"));
    }
    let (nproc, model) = machine();
    let t = Instant::now();
    let market = Market::load(cfg)?;
    let acfg = run::agent_config(cfg, &market)?;
    let (policy, vm) = run::build_policy(&acfg, &market, 0, &Device::Cpu)?;
    let params: usize = vm
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum();
    let s = market.data.n_symbols();
    let n = args.scenarios;
    let bars = market.data.bars;
    let lo = WARMUP.min(bars - 1);
    if bars < lo + n + 1 {
        return Err(Error::invalid(format!(
            "{bars} bars are too few for {n} distinct bars after the warm-up"
        )));
    }
    println!(
        "machine: {nproc} logical CPUs, {model}; rayon threads {}; data + features {:.1} s",
        rayon::current_num_threads(),
        t.elapsed().as_secs_f64()
    );
    let e = &acfg.encoder;
    println!(
        "agent: S = {s}, embedding {}, transformer {}, BiLSTM {}, CNN {}, graph {}, heads {} ({}), {params} parameters",
        e.embed_dim,
        e.transformer.enabled,
        e.lstm.enabled,
        e.cnn.enabled,
        e.graph.enabled,
        if acfg.shared_heads {
            "shared"
        } else {
            "per symbol"
        },
        acfg.head_hidden
    );
    let mut rng = SplitMix64::new(5);
    let mut obs = |keys: Vec<(u32, u32)>| -> Result<SymbolObs> {
        let d: Vec<f32> = (0..keys.len() * s * DYN_OBS)
            .map(|_| rng.normal() as f32 * 0.1)
            .collect();
        let units = keys.len();
        Ok(SymbolObs {
            keys,
            dyn_obs: Tensor::from_vec(d, (units, s, DYN_OBS), &Device::Cpu)?,
        })
    };
    let cases = [
        ("1 scenario", obs(vec![(0, lo as u32)])?),
        ("N scenarios, one bar", obs(vec![(0, lo as u32); n])?),
        (
            "N scenarios, N bars",
            obs((0..n).map(|i| (0, (lo + i) as u32)).collect())?,
        ),
    ];
    for (name, o) in &cases {
        let (logits, _) = policy.forward(o)?;
        std::hint::black_box(logits.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?);
        let t = Instant::now();
        for _ in 0..args.reps {
            let (logits, value) = policy.forward(o)?;
            std::hint::black_box((logits.sum_all()?.to_scalar::<f32>()?, value));
        }
        let dt = t.elapsed().as_secs_f64() / args.reps as f64;
        let units = o.keys.len();
        println!(
            "{name:<22} ({units:>4} x {s}): {:>9.2} ms per forward, {:>8.3} ms per scenario, {:>11.0} symbol-forwards/s",
            1e3 * dt,
            1e3 * dt / units as f64,
            (units * s) as f64 / dt
        );
    }
    Ok(())
}
