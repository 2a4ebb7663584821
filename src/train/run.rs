/*!
Training runs of the symbol agents on the trading environment, as `marl-trade train` drives them.

A run lives in one directory (`--out`):

```text
<run>/config.toml                 the resolved configuration of the run (every field)
<run>/metrics.jsonl               one JSON object per iteration (train::Metrics)
<run>/metrics.csv                 the same, as CSV (Metrics::CSV_HEADER + the env's reward terms)
<run>/checkpoints/iter-000010/    a checkpoint (train::checkpoint) + its config.toml and symbols.txt
<run>/checkpoints/latest          the name of the newest complete checkpoint
```

A checkpoint directory is written completely (each file atomically, `state.json` last) before
`latest` is switched to it (atomically), and the previous checkpoint is kept: a run stopped at any
moment leaves a loadable `latest`. Only the two newest checkpoints are kept.

`--resume` continues from `latest` bit-identically (the trainer's contract): it needs the run's own
configuration (the config given must equal `<run>/config.toml`), and it rewrites the metrics files
so that they hold exactly the iterations up to the checkpoint before appending.

The pieces are public for embedding: [`Market`] loads data and features once, [`build_policy`]
makes the policy of a config, [`AgentPolicy`](crate::eval::AgentPolicy) plays a checkpoint in a
backtest.
*/

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::checkpoint::{self, write_atomic};
use super::metrics::{Metrics, MetricsWriter, read_metrics};
use super::{Ppo, TradingEnv, VecEnv};
use crate::Result;
use crate::agents::init::seeded_var_builder;
use crate::agents::symbol::{AgentConfig, MarketWindows, SymbolAgent, SymbolPolicy};
use crate::config::Config;
use crate::data::MarketData;
use crate::env::{self, BackendKind, Period};
use crate::error::Error;
use crate::features::Features;

/// File names inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// In a checkpoint: the symbols the agent was trained on, one per line, in column order.
pub const SYMBOLS_FILE: &str = "symbols.txt";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const METRICS_CSV: &str = "metrics.csv";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const LATEST_FILE: &str = "latest";
/// Checkpoints kept per run (the newest ones).
pub const KEEP_CHECKPOINTS: usize = 2;

/// The market of a run: data and its features, computed once and shared.
#[derive(Debug, Clone)]
pub struct Market {
    pub data: Arc<MarketData>,
    pub features: Arc<Features>,
}

impl Market {
    /// Load the config's data source and compute the features.
    pub fn load(cfg: &Config) -> Result<Self> {
        Ok(Self::from_data(crate::data::loader::load(&cfg.data)?))
    }

    pub fn from_data(data: MarketData) -> Self {
        let features = Arc::new(Features::compute(&data));
        Self {
            data: Arc::new(data),
            features,
        }
    }

    /// The window source of the policy (features + returns for the graph branch).
    pub fn windows(&self) -> Result<Arc<MarketWindows>> {
        Ok(Arc::new(MarketWindows::new(
            self.features.clone(),
            self.data.clone(),
        )?))
    }
}

/// The agent configuration of `cfg` for `market`: `agent.symbols` is the data's number of symbols
/// (a config file that states another number is refused when parsed, for synthetic data; for file
/// data the file's symbols decide).
pub fn agent_config(cfg: &Config, market: &Market) -> Result<AgentConfig> {
    Ok(AgentConfig {
        symbols: market.data.n_symbols(),
        ..cfg.agent.clone()
    })
}

/// The symbol policy of `acfg` over `market`, parameters initialised from `seed` (in a new
/// `VarMap`).
pub fn build_policy(
    acfg: &AgentConfig,
    market: &Market,
    seed: u64,
    device: &Device,
) -> Result<(SymbolPolicy, VarMap)> {
    let vm = VarMap::new();
    let agent = SymbolAgent::new(acfg, seeded_var_builder(&vm, seed, DType::F32, device))?;
    let policy = SymbolPolicy::new(agent, market.windows()?, device)?;
    Ok((policy, vm))
}

/// The training environment of `cfg` (train period).
pub fn build_env(
    cfg: &Config,
    market: &Market,
    backend: BackendKind,
    device: &Device,
) -> Result<TradingEnv> {
    let env = env::VecEnv::new(
        cfg,
        market.data.clone(),
        market.features.clone(),
        Period::Train,
        backend,
    )?;
    TradingEnv::new(env, cfg.master.default_action, device)
}

/// How to run [`train`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// Start afresh even if `out` holds a run: its config, metrics and checkpoints are removed
    /// first (other files in `out` are left alone).
    pub force: bool,
    /// Run at most this many iterations now (the run's length is `ppo.total_timesteps`).
    pub max_iterations: Option<usize>,
    /// Write a checkpoint every this many iterations (and always after the last one).
    pub save_every: usize,
    pub backend: BackendKind,
    /// Progress bar on stderr.
    pub progress: bool,
}

impl TrainOptions {
    /// A fresh run in `out`: all iterations, a checkpoint every 10, the CPU backend, no progress bar.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            resume: false,
            force: false,
            max_iterations: None,
            save_every: 10,
            backend: BackendKind::Cpu,
            progress: false,
        }
    }
}

/// What [`train`] did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The metrics of the iterations run now.
    pub metrics: Vec<Metrics>,
    /// Completed iterations of the run, and all it will have.
    pub iteration: usize,
    pub num_iterations: usize,
    /// The newest checkpoint.
    pub checkpoint: PathBuf,
    /// Wall-clock seconds of the iterations run now (checkpoints included).
    pub seconds: f64,
    /// Symbol transitions (scenario steps x S) run now.
    pub symbol_steps: u64,
}

impl TrainReport {
    /// End-to-end symbol transitions per second (rollout + update + checkpoints).
    pub fn symbol_sps(&self) -> f64 {
        self.symbol_steps as f64 / self.seconds.max(1e-9)
    }
}

type Trainer = Ppo<TradingEnv, SymbolPolicy>;

/// Train (or resume) the run of `cfg` in `opts.out`; see the module doc for the files.
pub fn train(cfg: &Config, market: &Market, opts: &TrainOptions) -> Result<TrainReport> {
    if opts.save_every == 0 {
        return Err(Error::invalid("--save-every must be >= 1"));
    }
    let dev = Device::Cpu;
    let out = &opts.out;
    let cfg_path = out.join(CONFIG_FILE);
    let acfg = agent_config(cfg, market)?;
    let env = build_env(cfg, market, opts.backend, &dev)?;
    let (policy, vm) = build_policy(&acfg, market, cfg.ppo.seed, &dev)?;

    let mut ppo: Trainer = if opts.resume {
        let stored = Config::from_file(&cfg_path)?;
        if stored != *cfg {
            return Err(Error::invalid(format!(
                "the configuration differs from the run's {}: resume with `--config {}`",
                cfg_path.display(),
                cfg_path.display()
            )));
        }
        let dir = latest_checkpoint(out)?;
        let ppo = Ppo::resume(&dir, env, policy, vm)?;
        truncate_metrics(out, ppo.iteration(), &ppo.env().stat_names())?;
        ppo
    } else {
        if !opts.force && (out.join(CHECKPOINTS_DIR).exists() || cfg_path.exists()) {
            return Err(Error::invalid(format!(
                "{} already holds a run: pass --resume to continue it, --force to replace it, or \
                 choose another --out",
                out.display()
            )));
        }
        // A forced run replaces the old one; otherwise only stale metrics files can be here.
        clear_run(out)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        write_atomic(&cfg_path, cfg.to_toml_string().as_bytes())?;
        Ppo::new(
            cfg.ppo_for_env(),
            env,
            policy,
            vm,
            serde_json::to_value(&acfg).expect("agent config serialises"),
        )?
    };

    let total = cfg.ppo_for_env().num_iterations();
    let todo = total
        .saturating_sub(ppo.iteration())
        .min(opts.max_iterations.unwrap_or(usize::MAX));
    let mut log = MetricsFiles::open(out, ppo.env().stat_names())?;
    let bar = progress_bar(opts.progress, ppo.iteration(), total);
    let s = market.data.n_symbols() as u64;
    let (t0, step0) = (Instant::now(), ppo.global_step());
    let mut metrics = Vec::with_capacity(todo);
    let mut checkpoint = None;
    for _ in 0..todo {
        let m = ppo.iterate()?;
        log.write(&m)?;
        bar.set_message(format!(
            "return {:+.2}% | entropy {:.3} | {:.0} symbol-steps/s",
            100.0 * m.episode_return_mean.unwrap_or(f64::NAN),
            m.entropy,
            m.agent_sps
        ));
        bar.inc(1);
        let it = m.iteration;
        metrics.push(m);
        if it.is_multiple_of(opts.save_every) || it == total || metrics.len() == todo {
            checkpoint = Some(save_checkpoint(&ppo, cfg, &market.data.symbols, out)?);
        }
    }
    bar.finish_and_clear();
    let checkpoint = match checkpoint {
        Some(c) => c,
        None => latest_checkpoint(out)
            .or_else(|_| save_checkpoint(&ppo, cfg, &market.data.symbols, out))?,
    };
    Ok(TrainReport {
        metrics,
        iteration: ppo.iteration(),
        num_iterations: total,
        checkpoint,
        seconds: t0.elapsed().as_secs_f64(),
        symbol_steps: (ppo.global_step() - step0) * s,
    })
}

fn progress_bar(show: bool, done: usize, total: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_position(done as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] iter {pos}/{len} (eta {eta}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Remove a run's files from `out` (config, metrics, checkpoints); other files stay.
fn clear_run(out: &Path) -> Result<()> {
    let ck = out.join(CHECKPOINTS_DIR);
    if ck.exists() {
        std::fs::remove_dir_all(&ck).map_err(|e| Error::io(&ck, e))?;
    }
    for f in [CONFIG_FILE, METRICS_JSONL, METRICS_CSV] {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Write a checkpoint of `ppo` (with `cfg` beside it) under `<out>/checkpoints/`, switch `latest`
/// to it and prune old ones. Returns its directory.
fn save_checkpoint(ppo: &Trainer, cfg: &Config, symbols: &[String], out: &Path) -> Result<PathBuf> {
    let root = out.join(CHECKPOINTS_DIR);
    let name = format!("iter-{:06}", ppo.iteration());
    let dir = root.join(&name);
    ppo.save_checkpoint(&dir)?;
    write_atomic(&dir.join(CONFIG_FILE), cfg.to_toml_string().as_bytes())?;
    let mut names = symbols.join("\n");
    names.push('\n');
    write_atomic(&dir.join(SYMBOLS_FILE), names.as_bytes())?;
    write_atomic(&root.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    // Prune: keep the newest KEEP_CHECKPOINTS complete ones (names sort by iteration).
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iter-") && *n <= name)
        .collect();
    names.sort();
    let drop = names.len().saturating_sub(KEEP_CHECKPOINTS);
    for old in &names[..drop] {
        let p = root.join(old);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(dir)
}

/// The checkpoint directory a path names: a checkpoint itself (it has `state.json`), or a run
/// directory (its `checkpoints/latest`).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(checkpoint::STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    latest_checkpoint(path)
}

/// The newest complete checkpoint of run directory `out`.
pub fn latest_checkpoint(out: &Path) -> Result<PathBuf> {
    let latest = out.join(CHECKPOINTS_DIR).join(LATEST_FILE);
    let name = std::fs::read_to_string(&latest).map_err(|e| {
        Error::invalid(format!(
            "{}: not a checkpoint (no {}) nor a run directory ({}: {e})",
            out.display(),
            checkpoint::STATE_FILE,
            latest.display()
        ))
    })?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::invalid(format!(
            "{}: bad checkpoint name `{name}`",
            latest.display()
        )));
    }
    let dir = out.join(CHECKPOINTS_DIR).join(name);
    if !dir.join(checkpoint::STATE_FILE).is_file() {
        return Err(Error::invalid(format!(
            "{}: names {}, which has no {}",
            latest.display(),
            dir.display(),
            checkpoint::STATE_FILE
        )));
    }
    Ok(dir)
}

/// Keep only the iterations `<= iteration` in the run's metrics files (atomically).
fn truncate_metrics(out: &Path, iteration: usize, env_names: &[String]) -> Result<()> {
    let jsonl = out.join(METRICS_JSONL);
    let kept: Vec<Metrics> = if jsonl.exists() {
        read_metrics(&jsonl)?
            .into_iter()
            .filter(|m| m.iteration <= iteration)
            .collect()
    } else {
        Vec::new()
    };
    let mut j = String::new();
    let mut c = format!("{}\n", Metrics::csv_header_with(env_names));
    for m in &kept {
        j.push_str(&m.json_line());
        j.push('\n');
        c.push_str(&m.csv_row_with(env_names));
        c.push('\n');
    }
    write_atomic(&jsonl, j.as_bytes())?;
    write_atomic(&out.join(METRICS_CSV), c.as_bytes())
}

/// The run's two metrics files, appended to and flushed after every iteration: the JSONL through
/// [`MetricsWriter`], the CSV (header written when the file is new) here.
struct MetricsFiles {
    jsonl: MetricsWriter,
    csv: (PathBuf, BufWriter<File>),
    env_names: Vec<String>,
}

impl MetricsFiles {
    fn open(out: &Path, env_names: Vec<String>) -> Result<Self> {
        let jsonl = MetricsWriter::append(out.join(METRICS_JSONL))?;
        let cp = out.join(METRICS_CSV);
        let fresh = std::fs::metadata(&cp).map_or(true, |m| m.len() == 0);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cp)
            .map_err(|e| Error::io(&cp, e))?;
        let mut cw = BufWriter::new(f);
        if fresh {
            writeln!(cw, "{}", Metrics::csv_header_with(&env_names))
                .and_then(|_| cw.flush())
                .map_err(|e| Error::io(&cp, e))?;
        }
        Ok(Self {
            jsonl,
            csv: (cp, cw),
            env_names,
        })
    }

    fn write(&mut self, m: &Metrics) -> Result<()> {
        self.jsonl.write(m)?;
        let (p, w) = &mut self.csv;
        writeln!(w, "{}", m.csv_row_with(&self.env_names))
            .and_then(|_| w.flush())
            .map_err(|e| Error::io(p, e))
    }
}
