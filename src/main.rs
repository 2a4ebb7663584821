//! The `marl-trade` command line: a thin shell over the library's services (data generation,
//! training runs, checkpoint evaluation, baseline backtests, benchmarks).
//!
//! ```text
//! marl-trade data synth --config configs/default.toml --out data/synth.parquet
//! marl-trade train --config configs/small.toml --out runs/small [--resume] [--iterations K]
//! marl-trade eval --checkpoint runs/small --period test [--data FILE] [--json FILE]
//! marl-trade train-master --config configs/small.toml --out runs/master-small [--resume] [--iterations K]
//! marl-trade eval --checkpoint runs/master-small --master learned|fixed:<m>
//! marl-trade backtest --config configs/small.toml --policy all --period test [--data FILE]
//! marl-trade ablate --config configs/signal.toml --terms sharpe,divers --seeds 3 [--out DIR] [--iterations N]
//! marl-trade walkforward --config configs/signal.toml --train-bars 3000 --test-bars 600 [--step C] [--expanding] [--embargo E] [--seeds K] [--warm-start] --out DIR
//! marl-trade stress --checkpoint runs/signal [--period test] [--data FILE] [--json FILE]
//! marl-trade report runs/wf-signal --out runs/wf-signal/report
//! marl-trade bench env --backend cpu --envs 128 --symbols 143 --steps 2048 [--threads K]
//! marl-trade bench policy --config configs/default.toml --scenarios 128
//! marl-trade sl train --config configs/signal.toml --out runs/sl-signal [--force]
//! marl-trade sl cache --config configs/signal.toml --models runs/sl-signal --out runs/sl-signal/priors.slc
//! marl-trade bench sl --config configs/signal.toml [--models DIR] [--batch 1024]
//! marl-trade bench train --config configs/default.toml --iterations 2
//! marl-trade bench suite [--json suite.json] [--backends cpu,cuda] [--envs 128,1024,4096] [--symbols 143,512]
//! marl-trade pretrain --config configs/signal.toml --out runs/pretrain-signal [--force]
//! marl-trade train --config configs/signal.toml --encoder runs/pretrain-signal --out runs/signal-pt
//! ```
//!
//! Every command reads `--config` (default `configs/default.toml`; `eval` reads the configuration
//! stored with the checkpoint instead); `--set section.field=value` overrides a field of it.
//! Errors are printed as `error: <message>` and exit with status 2. Every file a command writes is
//! written atomically (`marl_trade::atomic`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use marl_trade::ablate::{self, AblationOptions, AblationPlan};
use marl_trade::agents::DeviceSpec;
use marl_trade::bench::{
    EnvBench, Machine, MasterBench, PolicyBench, SlBench, TrainBench, with_threads,
};
use marl_trade::config::Config;
use marl_trade::env::{BackendKind, Period};
use marl_trade::eval::{
    BacktestOptions, BaselineSet, EvalOptions, MasterChoice, MasterEvalOptions,
    evaluate_checkpoint, evaluate_master_run, format_table, has_master, run_baselines,
};
use marl_trade::market::Market;
use marl_trade::run::{self, MasterTrainOptions, TrainOptions};
use marl_trade::train::TrainEnv as _;
use marl_trade::validate::{
    StressOptions, WalkForwardOptions, WalkForwardReport, WalkForwardSpec, build_report,
    fold_layout, stress_checkpoint, walk_forward, write_report,
};
use marl_trade::{Error, Result, data};

#[derive(Parser, Debug)]
#[command(
    name = "marl-trade",
    version,
    about = "Hierarchical multi-agent RL trading: data, training, evaluation, backtests, benchmarks"
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
    /// Train the portfolio master with MAPPO (`[master_ppo]`) on the train period, the symbol
    /// agents held fixed (the scripted cap follower, or `--symbols CHECKPOINT`); master
    /// checkpoints in DIR/master, metrics in DIR/master_metrics.jsonl.
    TrainMaster(TrainMasterArgs),
    /// Backtest the scripted baselines and print their metrics.
    Backtest(BacktestArgs),
    /// Reward ablation: one training run per reward-weight variant (all terms, each selected term
    /// dropped, each alone with pnl) and seed, each evaluated on the held-out bars; prints and
    /// writes (JSON + CSV) the table. Resumable: run it again to continue.
    Ablate(AblateArgs),
    /// Walk-forward evaluation: per fold, train on a window of bars, test on the next block after
    /// an embargo; stitched out-of-sample curves next to the baselines, mean +- sd over seeds, the
    /// deflated Sharpe ratio. Resumable: run it again to continue.
    Walkforward(WalkForwardArgs),
    /// Replay a checkpoint's test period under stress scenarios (costs x2 / x5, liquidity shock,
    /// gaps, crisis, late fills, stale bars) and check the risk limits on every step.
    Stress(StressArgs),
    /// The go/no-go report of a run or walk-forward directory: report.md, report.json, PNG plots.
    Report(ReportArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Supervised priors: train the MLP / LSTM / GRU direction classifiers, build their cache.
    #[command(subcommand)]
    Sl(SlCmd),
    /// Masked-forecast pretraining of the shared encoder on the train period (`[pretrain]`,
    /// `[agent.encoder]`): losses in DIR/pretrain.jsonl, the encoder in DIR/encoder.safetensors
    /// for `train --encoder DIR`. Run again to resume.
    Pretrain(PretrainArgs),
}

#[derive(Args, Debug)]
struct PretrainArgs {
    /// The output directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace a run of another configuration in DIR instead of resuming.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum SlCmd {
    /// Train the three models on the train period (purged), early-stopped on its last slice;
    /// write checkpoints and the held-out report into DIR. Run again to resume.
    Train {
        /// The models directory.
        #[arg(long)]
        out: PathBuf,
        /// Replace models of another configuration or other data in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Evaluate the models of DIR on every (path, bar, symbol) of the config's data and write the
    /// cache the observation's SL slice reads (`env.sl_cache`).
    Cache {
        /// The models directory (`sl train --out`).
        #[arg(long)]
        models: PathBuf,
        /// The cache file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct BenchSlArgs {
    /// A models directory (`sl train --out`); default: seeded models sized by `[sl]`.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Samples of the batched measurement.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Timed repetitions of the batched measurement (10x as many single-sample ones).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct WalkForwardArgs {
    /// A data file instead of the configured source.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Bars of each training window.
    #[arg(long)]
    train_bars: usize,
    /// Decision bars of each test block.
    #[arg(long)]
    test_bars: usize,
    /// Bars the window moves per fold (default: --test-bars; must be >= --test-bars).
    #[arg(long)]
    step: Option<usize>,
    /// Grow the training window from bar 0 instead of rolling it.
    #[arg(long)]
    expanding: bool,
    /// Bars between a training window and its test block.
    #[arg(long, default_value_t = 0)]
    embargo: usize,
    /// Seeds per fold (`ppo.seed + 0 .. ppo.seed + K`).
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Start each fold from the previous fold's final checkpoint of the same seed (weights only).
    #[arg(long)]
    warm_start: bool,
    /// Output directory (plan, report, one run directory per fold and seed).
    #[arg(long)]
    out: PathBuf,
    /// Replace a walk-forward of another plan or configuration in `--out`.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    run: RunKnobs,
}

#[derive(Args, Debug)]
struct StressArgs {
    /// A checkpoint directory, or a run directory (its `best/` checkpoint when it selected one on
    /// its validation slice, else its latest).
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    on: BacktestOn,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// A walk-forward directory (it holds walkforward.toml) or a training run directory.
    dir: PathBuf,
    /// Output directory of report.md, report.json and the PNGs.
    #[arg(long)]
    out: PathBuf,
    /// For a run directory: a data file instead of its configured source.
    #[arg(long)]
    data: Option<PathBuf>,
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

#[derive(Args, Debug)]
struct BacktestArgs {
    /// Which baselines: `all`, or names separated by commas (hold, random, equal-weight, spy).
    #[arg(long, default_value = "all")]
    policy: BaselineSet,
    #[command(flatten)]
    on: BacktestOn,
}

/// Where and how a backtest runs (`backtest` and `eval`).
#[derive(Args, Debug)]
struct BacktestOn {
    /// Which period of the data: `train`, `test` or `LO..HI` (bars).
    #[arg(long, default_value = "test")]
    period: Period,
    /// A data file (long-format OHLCV parquet / CSV; several separated by commas) instead of the
    /// config's data source (for `eval`: the same symbols, in the same order, as in training).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Environment backend: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Where a checkpoint's policy runs: `cpu`, `cuda` or `cuda:<i>` (CUDA needs a build with
    /// `--features gpu`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
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
            period: self.period,
            backend: self.backend,
            seed: self.seed,
            progress: true,
            device: self.device,
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
    /// Initialise the encoder from a `marl-trade pretrain` output directory (fresh runs only).
    #[arg(long)]
    encoder: Option<PathBuf>,
    #[command(flatten)]
    run: RunKnobs,
}

#[derive(Args, Debug)]
struct TrainMasterArgs {
    /// Run directory (config, master checkpoints, master metrics).
    #[arg(long)]
    out: PathBuf,
    /// Continue the master training in `--out` from its latest master checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace the master in `--out` if there is one.
    #[arg(long)]
    force: bool,
    /// Train at most this many iterations now (the run's length is `master_ppo.iterations`).
    #[arg(long)]
    iterations: Option<usize>,
    /// Checkpoint every this many iterations (and after the last one).
    #[arg(long, default_value_t = 10)]
    save_every: usize,
    /// The symbol agents: a symbol checkpoint or run directory (`marl-trade train`) whose policy
    /// plays greedily; default the scripted cap follower. A resume uses the recorded one.
    #[arg(long)]
    symbols: Option<PathBuf>,
}

/// How training runs go (`train` and `ablate`).
#[derive(Args, Debug)]
struct RunKnobs {
    /// Train at most this many PPO iterations now, per run (the run's length is
    /// `ppo.total_timesteps`; an ablation table says when its runs were capped).
    #[arg(long)]
    iterations: Option<usize>,
    /// Checkpoint every this many iterations (and after the last one); an interrupted run
    /// resumes from the last checkpoint.
    #[arg(long, default_value_t = 10)]
    save_every: usize,
    /// Environment backend: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Where the policy runs and learns: `cpu`, `cuda` or `cuda:<i>` (CUDA needs a build with
    /// `--features gpu`, docs/gpu.md).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// No progress bar (`train` prints one line per iteration instead, `ablate` one per run).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct AblateArgs {
    /// Which reward terms to ablate: `all`, or names separated by commas (pnl, cost, timing,
    /// sharpe, drawdown, util, divers).
    #[arg(long, default_value = "all")]
    terms: String,
    /// Seeds per variant (`ppo.seed + 0 .. ppo.seed + K`).
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Output directory (the plan, the table, one run directory per variant and seed); default
    /// `runs/ablate-<config file stem>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an ablation of another configuration or plan in `--out`.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    run: RunKnobs,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A checkpoint directory, or a run directory (its `best/` checkpoint when it selected one on
    /// its validation slice, else its latest).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Sample the policy's actions (seeded by `--seed`, reproducible) instead of taking the most
    /// probable.
    #[arg(long)]
    sample: bool,
    /// Greedy by decision: the most probable of hold / increase / decrease (summed over their
    /// sizes), then its most probable action, instead of the most probable single action.
    #[arg(long, conflicts_with = "sample")]
    decision: bool,
    /// Who plays the master: `learned` (the run's master checkpoint, `train-master`) or
    /// `fixed:<m>` (directive m of 48). On a run with a master, the master is evaluated with the
    /// symbol agents it was trained with, next to the default directive, with its directives by
    /// regime; on a run of symbol agents only, `fixed:<m>` plays the symbol policy under m.
    #[arg(long)]
    master: Option<String>,
    #[command(flatten)]
    on: BacktestOn,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Throughput of `step` and of `step` + `gather_obs` on synthetic data.
    Env(BenchEnvArgs),
    /// Time of one policy forward pass (the config's agent) for 1 and for N scenarios.
    Policy(BenchPolicyArgs),
    /// Inference latency of the three supervised models, one sample and batched.
    Sl(BenchSlArgs),
    /// End-to-end training throughput (rollout + update) of the config, split by part.
    Train(BenchTrainArgs),
    /// The environment's fixed matrix (N in 128, 1024, 4096 x S in 143, 512, without and with
    /// observations) on the CPU and, when present, the CUDA backend; optionally as JSON.
    Suite(BenchSuiteArgs),
}

#[derive(Args, Debug)]
struct BenchSuiteArgs {
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Backends, comma-separated (`cuda` without a GPU is reported as skipped).
    #[arg(long, value_delimiter = ',', default_value = "cpu,cuda")]
    backends: Vec<BackendKind>,
    /// Scenario counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,1024,4096")]
    envs: Vec<usize>,
    /// Symbol counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "143,512")]
    symbols: Vec<usize>,
    /// Most timed steps per case (the CUDA rollouts run exactly this many).
    #[arg(long, default_value_t = 512)]
    steps: usize,
    /// Fewest timed steps of a CPU case.
    #[arg(long, default_value_t = 3)]
    min_steps: usize,
    /// Wall-time budget of a CPU case's timed loop, seconds.
    #[arg(long, default_value_t = 2.0)]
    cpu_seconds: f64,
    /// Largest host observation buffer of a CPU case with observations, GiB (larger: skipped).
    #[arg(long, default_value_t = 2.0)]
    max_obs_gib: f64,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct BenchTrainArgs {
    /// PPO iterations to time.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
    /// Environment backend: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Where the policy runs and learns: `cpu`, `cuda` or `cuda:<i>` (`--features gpu`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct BenchPolicyArgs {
    /// Scenarios of the batched measurements.
    #[arg(long, default_value_t = 128)]
    scenarios: usize,
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Where the symbol policy runs: `cpu`, `cuda` or `cuda:<i>` (`--features gpu`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Only the measurements whose name contains this text (for example `acting`, `1 scenario`,
    /// `fwd + bwd`, `master`).
    #[arg(long)]
    only: Option<String>,
}

#[derive(Args, Debug)]
struct BenchEnvArgs {
    /// Environment backend: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
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
    /// Instruction set of the CPU backend's step: `avx512`, `avx2` or `portable` (default: the
    /// widest this CPU has; every choice gives the same results).
    #[arg(long)]
    isa: Option<marl_trade::env::cpu::Isa>,
}

fn main() -> ExitCode {
    // candle asks for its thread count on every CPU matmul, and without RAYON_NUM_THREADS that
    // is a read of /proc/cpuinfo each time (8-15% of an acting forward pass of the default
    // agent, measured). Fix it once to what rayon uses anyway (the logical CPUs).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the first statement of `main`: no other thread exists yet to read the
        // environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// glibc's malloc hands large freed blocks (above its mmap threshold) and the heap's free top back
/// to the kernel, so every training pass that allocates the same large buffers again has them
/// mapped and zeroed afresh (page faults were ~8% of an update's samples). Keep freed memory in
/// the process instead: blocks up to 32 MiB from the heap, no trimming below 2 GiB of free top,
/// 64 MiB of padding per heap growth. Measured on `bench train --config configs/default.toml
/// --set ppo.num_steps=16`: 243-245 s per iteration instead of 256-268 s, peak RSS 3.09 instead of
/// 2.97 GiB (docs/training.md, "Second round"). Left alone when the user sets any of glibc's
/// `MALLOC_*` tunables.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_TOP_PAD_",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if !user_set {
            // SAFETY: mallopt only sets the allocator's parameters; called at the start of
            // `main`, before any other thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Eval(args) => return eval(args, &cli.overrides),
        Command::Stress(args) => return stress(args, &cli.overrides),
        Command::Report(args) => return report(args),
        _ => {}
    }
    // The `sl` commands build the models and the cache that `Config::check_priors` compares.
    let check_priors = !matches!(cli.command, Command::Sl(_));
    let cfg = Config::load(&cli.config, &cli.overrides, check_priors)?;
    match cli.command {
        Command::Data(DataCmd::Synth { out }) => data_synth(&cfg, &out),
        Command::Train(args) => train(&cfg, &cli.config, &args),
        Command::TrainMaster(args) => train_master(&cfg, &args),
        Command::Eval(_) | Command::Stress(_) | Command::Report(_) => {
            unreachable!("handled above")
        }
        Command::Walkforward(args) => walkforward(&cfg, &cli.config, &args),
        Command::Backtest(args) => backtest(&cfg, &args),
        Command::Ablate(args) => ablate(&cfg, &cli.config, &args),
        Command::Bench(BenchCmd::Env(args)) => {
            with_threads(args.threads, || bench_env(&cfg, &args))
        }
        Command::Bench(BenchCmd::Train(args)) => {
            with_threads(args.threads, || bench_train(&cfg, &args))
        }
        Command::Bench(BenchCmd::Policy(args)) => {
            with_threads(args.threads, || bench_policy(&cfg, &args))
        }
        Command::Bench(BenchCmd::Sl(args)) => with_threads(args.threads, || bench_sl(&cfg, &args)),
        Command::Bench(BenchCmd::Suite(args)) => {
            with_threads(args.threads, || bench_suite(&cfg, &args))
        }
        Command::Sl(SlCmd::Train { out, force }) => sl_train(&cfg, &out, force),
        Command::Sl(SlCmd::Cache { models, out }) => sl_cache(&cfg, &models, &out),
        Command::Pretrain(args) => pretrain(&cfg, &args),
    }
}

fn pretrain(cfg: &Config, args: &PretrainArgs) -> Result<()> {
    use marl_trade::train::pretrain::{PretrainOptions, pretrain};
    let market = Market::load(&cfg.data)?;
    let t = Instant::now();
    let opts = PretrainOptions {
        out: args.out.clone(),
        force: args.force,
    };
    let mut progress = |l: &marl_trade::train::pretrain::PretrainLog| println!("{}", l.line());
    let rep = pretrain(
        &cfg.pretrain,
        &cfg.agent.encoder,
        cfg.env.train_fraction,
        &market,
        &opts,
        &mut progress,
    )?;
    println!(
        "{} steps now ({} in total) in {:.1} s; encoder: {}",
        rep.steps_run,
        rep.step,
        t.elapsed().as_secs_f64(),
        rep.encoder_file.display()
    );
    Ok(())
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
    let market = Market::load(&cfg.data)?;
    let (s, n, p) = (market.data.n_symbols(), cfg.env.scenarios, &cfg.ppo);
    println!(
        "train: {s} symbols x {n} scenarios, {} steps per rollout ({} symbol transitions), {} iterations; \
         data + features {:.1} s; {}, rayon threads {}",
        p.num_steps,
        p.batch_size(n) * s,
        p.num_iterations(n),
        t.elapsed().as_secs_f64(),
        Machine::here(),
        rayon::current_num_threads()
    );
    let opts = TrainOptions {
        out: out.clone(),
        resume: args.resume,
        force: args.force,
        max_iterations: args.run.iterations,
        save_every: args.run.save_every,
        backend: args.run.backend,
        device: args.run.device,
        progress: !args.run.quiet,
        encoder: args.encoder.clone(),
        ..TrainOptions::new(&out)
    };
    if cfg.ppo.val_fraction > 0.0 {
        // checkpoint selection / early stopping on the validation slice (eval::select)
        let report = marl_trade::eval::train_selected(cfg, &market, &opts)?;
        for p in &report.history {
            println!(
                "validation: iteration {:>5}  Sharpe {:+.3}  return {:+.2}%  exposure {:.3}{}",
                p.iteration,
                p.sharpe,
                100.0 * p.total_return,
                p.exposure,
                if p.best { "  new best" } else { "" }
            );
        }
        println!("{}", report.summary());
        return Ok(());
    }
    let report = run::train(cfg, &market, &opts)?;
    if args.run.quiet {
        for m in &report.metrics {
            println!("{}", m.summary_line());
        }
    }
    print!("{}", report.summary(&out));
    Ok(())
}

fn train_master(cfg: &Config, args: &TrainMasterArgs) -> Result<()> {
    let t = Instant::now();
    let market = Market::load(&cfg.data)?;
    let m = &cfg.master_ppo;
    println!(
        "train-master: {} symbols x {} scenarios, {} decisions of {} bars per rollout, {} iterations; {}",
        market.data.n_symbols(),
        cfg.env.scenarios,
        m.decisions,
        m.decision_interval,
        m.iterations,
        Machine::here()
    );
    let opts = MasterTrainOptions {
        resume: args.resume,
        force: args.force,
        max_iterations: args.iterations,
        save_every: args.save_every,
        symbols: args.symbols.clone(),
        ..MasterTrainOptions::new(&args.out)
    };
    let rep = run::train_master(cfg, &market, &opts)?;
    for m in &rep.metrics {
        println!(
            "iter {:>5}  reward {:+.4}  entropy {:.3}  value loss {:.4}  kl {:.4}  modes {:.2?}  cap {:.3}",
            m.iteration,
            m.reward_mean,
            m.entropy,
            m.value_loss,
            m.approx_kl,
            m.mode_share,
            m.cap_mean
        );
    }
    println!(
        "{} of {} iterations in {:.1} s; checkpoint {}",
        rep.iteration,
        rep.num_iterations,
        t.elapsed().as_secs_f64(),
        rep.checkpoint
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    Ok(())
}

fn ablate(cfg: &Config, config_path: &Path, args: &AblateArgs) -> Result<()> {
    let terms = ablate::parse_terms(&args.terms)?;
    let plan = AblationPlan::new(&cfg.reward, &terms, args.seeds, args.run.iterations)?;
    let out = args.out.clone().unwrap_or_else(|| {
        Path::new("runs").join(format!(
            "ablate-{}",
            config_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into())
        ))
    });
    let t = Instant::now();
    let market = Market::load(&cfg.data)?;
    println!(
        "ablate {}: {} variants ({}) x {} seeds = {} runs into {}; {} iterations per run{}; data + features {:.1} s",
        config_path.display(),
        plan.variants.len(),
        plan.variant_names().join(", "),
        plan.seeds,
        plan.n_runs(),
        out.display(),
        cfg.ppo.num_iterations(cfg.env.scenarios),
        args.run
            .iterations
            .map_or(String::new(), |c| format!(" (capped at {c})")),
        t.elapsed().as_secs_f64()
    );
    let opts = AblationOptions {
        out: out.clone(),
        force: args.force,
        save_every: args.run.save_every,
        backend: args.run.backend,
        device: args.run.device,
        progress: !args.run.quiet,
    };
    let report = ablate::ablate(cfg, &market, &plan, &opts, |r| println!("{}", r.line()))?;
    println!(
        "{} runs: {} trained, {} resumed, {} evaluated, {} done before; {} PPO iterations in {:.1} s\n",
        plan.n_runs(),
        report.trained,
        report.resumed,
        report.evaluated,
        report.skipped,
        report.iterations_run,
        report.seconds
    );
    print!("{}", report.table.text());
    println!(
        "table: {}, {}",
        out.join(ablate::TABLE_JSON).display(),
        out.join(ablate::TABLE_CSV).display()
    );
    Ok(())
}

fn walkforward(cfg: &Config, config_path: &Path, args: &WalkForwardArgs) -> Result<()> {
    let spec = WalkForwardSpec {
        train_bars: args.train_bars,
        test_bars: args.test_bars,
        step: args.step.unwrap_or(args.test_bars),
        expanding: args.expanding,
        embargo: args.embargo,
        seeds: args.seeds,
        warm_start: args.warm_start,
        iterations: args.run.iterations,
    };
    let t = Instant::now();
    let (market, origin) = Market::load_source(&cfg.data, args.data.as_deref())?;
    let folds = fold_layout(market.data.bars, &spec)?;
    println!(
        "walkforward {}: data {origin} ({} bars); {} folds x {} seeds = {} runs into {}; {} iterations per run{}; data + features {:.1} s",
        config_path.display(),
        market.data.bars,
        folds.len(),
        spec.seeds,
        folds.len() * spec.seeds,
        args.out.display(),
        cfg.ppo.num_iterations(cfg.env.scenarios),
        args.run
            .iterations
            .map_or(String::new(), |c| format!(" (capped at {c})")),
        t.elapsed().as_secs_f64()
    );
    let opts = WalkForwardOptions {
        out: args.out.clone(),
        force: args.force,
        save_every: args.run.save_every,
        backend: args.run.backend,
        device: args.run.device,
        progress: !args.run.quiet,
    };
    let r = walk_forward(cfg, &market, &spec, &opts, |o| println!("{}", o.line()))?;
    print!("{}", walkforward_text(&r));
    println!(
        "report: {}",
        args.out
            .join(marl_trade::validate::walkforward::REPORT_JSON)
            .display()
    );
    Ok(())
}

fn walkforward_text(r: &WalkForwardReport) -> String {
    let mut s = format!("\n{} of {} runs done\n", r.runs_done, r.runs_total);
    for f in &r.folds {
        s += &format!(
            "fold {} (train {}..{}, test {}..={}): ppo Sharpe {}, return % {}; {}\n",
            f.fold.index,
            f.fold.train_lo,
            f.fold.train_hi,
            f.fold.test_lo,
            f.fold.test_last,
            f.stats.sharpe.text(1.0, 3),
            f.stats.total_return.text(100.0, 2),
            f.baselines
                .iter()
                .map(|b| format!("{} {:.3}", b.policy, b.sharpe))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !r.overall.is_empty() {
        s += "\nstitched out-of-sample:\n";
        let mut rows = r.overall.clone();
        rows.extend(r.overall_baselines.iter().cloned());
        s += &format_table(&rows);
        for v in &r.overall_vs {
            s += &format!(
                "ppo vs {}: Sharpe difference {} (z {})\n",
                v.baseline,
                v.sharpe_diff.text(1.0, 3),
                v.sharpe_z.text(1.0, 2)
            );
        }
        if let Some(d) = &r.deflated {
            s += &format!(
                "deflated Sharpe ratio of the best of {} seed(s) (seed {}): {:.4} (SR {:.3} annualised, SR0 {:.4} per bar)\n",
                d.trials, d.seed, d.dsr, d.sharpe_annual, d.sr0
            );
        }
        s += &format!(
            "risk limits held on every test step: {}\n",
            if r.limits_held { "yes" } else { "NO" }
        );
    }
    s
}

fn stress(args: &StressArgs, overrides: &[String]) -> Result<()> {
    let mut opts = StressOptions::new(&args.checkpoint);
    opts.overrides = overrides.to_vec();
    opts.data = args.on.data.clone();
    opts.backtest = args.on.options();
    opts.backtest.progress = false;
    let r = stress_checkpoint(&opts)?;
    print!("{}", r.text());
    if let Some(p) = &args.on.json {
        r.write_json(p)?;
    }
    if !r.limits_held() {
        return Err(Error::invalid(
            "a risk limit was violated in a stress scenario (see above)",
        ));
    }
    Ok(())
}

fn report(args: &ReportArgs) -> Result<()> {
    let mut r = build_report(&args.dir, args.data.as_deref())?;
    write_report(&mut r, &args.out)?;
    for c in &r.criteria {
        println!("{}", c.line());
    }
    println!("overall: {}", r.overall);
    println!(
        "wrote {} (report.md, report.json, {})",
        args.out.display(),
        r.plots.join(", ")
    );
    Ok(())
}

fn eval(args: &EvalArgs, overrides: &[String]) -> Result<()> {
    let master = args
        .master
        .as_deref()
        .map(MasterChoice::parse)
        .transpose()?;
    if let Some(choice) = master
        && has_master(&args.checkpoint)
    {
        let opts = MasterEvalOptions {
            overrides: overrides.to_vec(),
            period: args.on.period,
            seed: args.on.seed,
            ..MasterEvalOptions::new(&args.checkpoint, choice)
        };
        let report = evaluate_master_run(&opts)?;
        println!(
            "run {}; master {}; data: {}; period {:?}",
            args.checkpoint.display(),
            report
                .checkpoint
                .as_ref()
                .map_or(choice.name(), |p| p.display().to_string()),
            report.data,
            args.on.period
        );
        print!("{}", report.text());
        return Ok(());
    }
    let opts = EvalOptions {
        checkpoint: args.checkpoint.clone(),
        overrides: overrides.to_vec(),
        data: args.on.data.clone(),
        backtest: args.on.options(),
        sample: args.sample,
        decision: args.decision,
        master,
    };
    let report = evaluate_checkpoint(&opts)?;
    let (symbols, bars, paths) = report.shape;
    println!(
        "checkpoint {}; data: {}: {symbols} symbols, {bars} bars, {paths} path(s); period {:?}: bars {}..={} ({} steps)",
        report.checkpoint.display(),
        report.data,
        args.on.period,
        report.policy.first_bar,
        report.policy.last_bar,
        report
            .policy
            .last_bar
            .saturating_sub(report.policy.first_bar)
    );
    print!("{}", report.text());
    if let Some(MasterChoice::Fixed(m)) = master {
        println!("master: fixed directive {m} at every step (no learned master in this run)");
    }
    if let Some(path) = &args.on.json {
        report.write_json(path)?;
    }
    Ok(())
}

fn data_synth(cfg: &Config, out: &Path) -> Result<()> {
    let t = Instant::now();
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    data::write_parquet(&md, out)?;
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

fn backtest(cfg: &Config, args: &BacktestArgs) -> Result<()> {
    let (market, origin) = Market::load_source(&cfg.data, args.on.data.as_deref())?;
    let opts = args.on.options();
    let md = market.data.clone();
    let results = run_baselines(
        &cfg.env_setup(),
        market.data,
        market.features,
        &opts,
        &args.policy.0,
    )?;
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
        let text = serde_json::to_string_pretty(&rows).map_err(|e| Error::json("metrics", e))?;
        marl_trade::atomic::write(path, text.as_bytes())?;
    }
    Ok(())
}

fn bench_env(cfg: &Config, args: &BenchEnvArgs) -> Result<()> {
    if args.envs == 0 || args.symbols == 0 || args.steps == 0 {
        return Err(Error::invalid("--envs, --symbols and --steps must be >= 1"));
    }
    let mut b = EnvBench::new(
        &cfg.env_setup(),
        &cfg.data.synthetic,
        args.envs,
        args.symbols,
        args.backend,
        args.isa,
    )?;
    let env = b.env();
    println!(
        "machine: {}; rayon threads: {}",
        Machine::here(),
        rayon::current_num_threads()
    );
    let isa = b.isa.map(|i| format!(" ({i})")).unwrap_or_default();
    println!(
        "env: backend {}{isa}, N = {} scenarios x S = {} symbols, {} bars x {} path(s) (data + features {:.1} s), \
         episode_len {}, OBS_DIM {}",
        env.backend_name(),
        env.n_scenarios(),
        env.n_symbols(),
        env.data().bars,
        env.data().paths,
        b.prep_seconds,
        env.layout().episode_len,
        marl_trade::env::obs::OBS_DIM
    );
    print!("{}", b.measure(args.steps)?.lines());
    Ok(())
}

fn bench_suite(cfg: &Config, args: &BenchSuiteArgs) -> Result<()> {
    use marl_trade::bench::suite::{SuiteOptions, run_suite};
    if !(args.cpu_seconds >= 0.0 && args.max_obs_gib >= 0.0) {
        return Err(Error::invalid(
            "--cpu-seconds and --max-obs-gib must be >= 0",
        ));
    }
    let opts = SuiteOptions {
        backends: args.backends.clone(),
        ns: args.envs.clone(),
        ss: args.symbols.clone(),
        max_steps: args.steps,
        min_steps: args.min_steps,
        cpu_seconds: args.cpu_seconds,
        max_obs_bytes: (args.max_obs_gib * (1u64 << 30) as f64) as usize,
    };
    println!(
        "machine: {}; rayon threads: {}",
        Machine::here(),
        rayon::current_num_threads()
    );
    let report = run_suite(&cfg.env_setup(), &cfg.data.synthetic, &opts, |r| match r {
        Ok(c) => println!("{}", c.line()),
        Err(k) => println!("skipped {} {}: {}", k.backend, k.case, k.reason),
    })?;
    if let Some(g) = &report.gpu {
        println!("gpu: {g}");
    }
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::json("bench suite", e))?;
        marl_trade::atomic::write(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn bench_train(cfg: &Config, args: &BenchTrainArgs) -> Result<()> {
    if args.iterations == 0 {
        return Err(Error::invalid("--iterations must be >= 1"));
    }
    let mut b = TrainBench::from_config_on(cfg, args.backend, &args.device.candle()?)?;
    let env = b.trainer().env();
    let p = b.trainer().config();
    println!(
        "machine: {}; rayon threads {}; data + features {:.1} s",
        Machine::here(),
        rayon::current_num_threads(),
        b.prep_seconds
    );
    println!(
        "train: N = {} scenarios x S = {} symbols, num_steps {}, {} epochs x {} minibatches ({:?}), \
         encoder {}, embedding cache {} MiB",
        env.num_envs(),
        env.agents_per_env(),
        p.num_steps,
        p.update_epochs,
        p.num_minibatches,
        p.minibatches,
        if cfg.agent.freeze_encoder {
            "frozen"
        } else {
            "fine-tuned"
        },
        cfg.agent.embed_cache_mb
    );
    let mut total = (0u64, 0f64);
    for _ in 0..args.iterations {
        let t = b.iterate()?;
        println!("{}", t.line());
        total = (total.0 + t.transitions, total.1 + t.seconds);
    }
    println!(
        "total: {} symbol transitions in {:.2} s = {:.0} symbol transitions/s",
        total.0,
        total.1,
        total.0 as f64 / total.1.max(1e-12)
    );
    Ok(())
}

fn bench_policy(cfg: &Config, args: &BenchPolicyArgs) -> Result<()> {
    let t = Instant::now();
    let b = PolicyBench::from_config_on(cfg, args.scenarios, &args.device.candle()?)?;
    println!(
        "machine: {}; rayon threads {}; data + features {:.1} s",
        Machine::here(),
        rayon::current_num_threads(),
        t.elapsed().as_secs_f64()
    );
    let agent = b.policy().agent();
    let e = &agent.config().encoder;
    println!(
        "agent: S = {}, embedding {}, transformer {}, BiLSTM {}, CNN {}, graph {}, heads {} ({}), {} parameters",
        agent.dims().symbols,
        e.embed_dim,
        e.transformer.enabled,
        e.lstm.enabled,
        e.cnn.enabled,
        e.graph.enabled,
        if agent.config().shared_heads {
            "shared"
        } else {
            "per symbol"
        },
        agent.config().head_hidden,
        b.params
    );
    let only = args.only.as_deref();
    let timings = b.measure(args.reps, only)?;
    for timing in &timings {
        println!("{}", timing.line());
    }
    let mb = MasterBench::new(&cfg.master_ppo.net, args.scenarios)?;
    let master = mb.measure(100 * args.reps, only)?;
    if timings.is_empty() && master.is_empty() {
        return Err(Error::invalid(format!(
            "bench policy --only {:?}: no measurement has that in its name",
            only.unwrap_or_default()
        )));
    }
    if master.is_empty() {
        return Ok(());
    }
    println!(
        "master: {} observation values, hidden {} / {}, {} parameters (design target < 50 ms per decision, aim < 1 ms)",
        marl_trade::env::master_obs::MASTER_OBS,
        cfg.master_ppo.net.hidden1,
        cfg.master_ppo.net.hidden2,
        mb.params
    );
    // A master forward is short: 100 times the repetitions, wall clock only (the process's CPU
    // time is only updated at scheduler events, too coarse for sub-millisecond loops).
    for t in master {
        println!(
            "{:<22} ({:>4}): {:>9.3} ms per forward, {:>8.4} ms per scenario",
            t.name,
            t.units,
            1e3 * t.seconds,
            1e3 * t.seconds / t.units as f64
        );
    }
    Ok(())
}

fn sl_train(cfg: &Config, out: &Path, force: bool) -> Result<()> {
    let t = Instant::now();
    let market = Market::load(&cfg.data)?;
    println!(
        "sl train: {} symbols x {} bars x {} path(s), train fraction {}; data + features {:.1} s; {}",
        market.data.n_symbols(),
        market.data.bars,
        market.data.paths,
        cfg.env.train_fraction,
        t.elapsed().as_secs_f64(),
        Machine::here()
    );
    let mut progress = |e: &marl_trade::sl::EpochLog| println!("{}", e.line());
    let report = marl_trade::sl::train_all(
        &cfg.sl,
        cfg.env.train_fraction,
        &market,
        marl_trade::sl::SlTrainOptions {
            out: out.to_path_buf(),
            force,
            progress: &mut progress,
        },
    )?;
    print!("{}", report.text());
    println!(
        "models, sl.json and report.json in {} ({:.1} s)",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sl_cache(cfg: &Config, models: &Path, out: &Path) -> Result<()> {
    let t = Instant::now();
    let market = Market::load(&cfg.data)?;
    let m = marl_trade::sl::SlModels::load(models)?;
    let cache = marl_trade::sl::build_cache(&m, &market)?;
    cache.write(out)?;
    let h = &cache.header;
    println!(
        "sl cache: {} x {} x {} x {} values (P(up) - P(down) of mlp, lstm, gru), models {:016x}, \
         data {:016x}, written to {} ({:.1} s)\nuse it with --set env.sl_cache={} --set sl.models={}",
        h.paths,
        h.bars,
        h.symbols,
        marl_trade::priors::CHANNELS,
        h.models_fp,
        h.data_fp,
        out.display(),
        t.elapsed().as_secs_f64(),
        out.display(),
        models.display()
    );
    Ok(())
}

fn bench_sl(cfg: &Config, args: &BenchSlArgs) -> Result<()> {
    let t = Instant::now();
    let market = Market::load(&cfg.data)?;
    let b = SlBench::new(cfg, &market, args.models.as_deref(), args.batch)?;
    println!(
        "machine: {}; rayon threads {}; data + features {:.1} s; weights: {}; input gather {:.2} us/sample",
        Machine::here(),
        rayon::current_num_threads(),
        t.elapsed().as_secs_f64(),
        b.origin,
        b.gather_per_sample * 1e6
    );
    for timing in b.measure(args.reps)? {
        println!("{}", timing.line());
    }
    Ok(())
}
