/*!
Training runs of the symbol agents on the trading environment, as `marl-trade train` drives them.

A run lives in one directory (`--out`):

```text
<run>/config.toml                 the resolved configuration of the run (every field)
<run>/metrics.jsonl               one JSON object per iteration (train::Metrics)
<run>/metrics.csv                 the same, as CSV (Metrics::CSV_HEADER + the env's reward terms)
<run>/checkpoints/iter-000010/    a checkpoint (train::checkpoint) + its config.toml and symbols.txt
<run>/checkpoints/latest          the name of the newest complete checkpoint
<run>/warm_start.json             with agent.warm_start_steps > 0: the warm start's fit
<run>/best/                       with checkpoint selection (ppo.val_fraction > 0, eval::select):
                                  the checkpoint chosen on the validation slice
<run>/selection.jsonl             with checkpoint selection: the validation history
<run>/master/iter-000010/         `marl-trade train-master`: a master checkpoint (train::mappo)
<run>/master/latest               the name of the newest complete master checkpoint
<run>/master_metrics.jsonl        one JSON object per master iteration (train::mappo::MasterMetrics)
```

[`train_master`] trains the portfolio master with MAPPO while the symbol agents are held fixed
(the scripted `train::mappo::CapFollower`, or with `--symbols` a trained symbol checkpoint played
greedily, `train::mappo::PolicyDriver`, recorded in `<run>/master_symbols.txt`): the same
`config.toml` beside it, master checkpoints under `master/` switched by `master/latest` like the
symbol checkpoints, `--resume` bit-identical, its metrics file truncated to the checkpoint's
iteration first.

A fresh run with `agent.warm_start_steps > 0` fits the actor heads' output layer to the supervised
prior before the first iteration (`train::warm_start`, after `init_from` when both are given); the
environment is then reset by the trainer as usual.

A checkpoint directory is written completely (each file atomically, `state.json` last) before
`latest` is switched to it (atomically), and the previous checkpoint is kept: a run stopped at any
moment leaves a loadable `latest`. Only the two newest checkpoints are kept.

`--resume` continues from `latest` bit-identically (the trainer's contract): it needs the run's own
configuration (the config given must equal `<run>/config.toml`), and it rewrites the metrics files
so that they hold exactly the iterations up to the checkpoint before appending.

The pieces are public for embedding: [`Market`] loads data and features once,
[`build_policy`] makes the policy of a config, `eval::AgentPolicy` plays a checkpoint in a backtest.

Layer: above [`crate::config`] (a run stores and compares its whole configuration).
*/

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::agents::{AgentDims, SymbolPolicy};
use crate::config::Config;
use crate::env::{BackendKind, Period, VecEnv};
use crate::error::{Error, ErrorKind, Result};
pub use crate::market::Market;
use crate::train::checkpoint;
use crate::train::joint::MasterSeat;
use crate::train::mappo::{self, CapFollower, MasterMetrics, MasterPpo, PolicyDriver, Symbols};
use crate::train::metrics::{Metrics, MetricsWriter, read_metrics};
pub use crate::train::setup::{build_env, build_policy};
use crate::train::signals::{self, SignalReport, SignalThresholds};
use crate::train::warm_start::warm_start;
use crate::train::{Ppo, TradingEnv, TrainEnv};

/// File names inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// In a checkpoint: the symbols the agent was trained on, one per line, in column order.
pub const SYMBOLS_FILE: &str = "symbols.txt";
/// Per-iteration metrics, one JSON object a line.
pub const METRICS_JSONL: &str = "metrics.jsonl";
/// The same metrics as CSV.
pub const METRICS_CSV: &str = "metrics.csv";
/// The checkpoints' directory inside a run.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// In the checkpoints' directory: the name of the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";
/// The warm start's report ([`crate::train::warm_start::WarmStartReport`]), when
/// `agent.warm_start_steps > 0`.
pub const WARM_START_FILE: &str = "warm_start.json";
/// In a run with checkpoint selection (`eval::select`): the checkpoint chosen on the validation
/// slice, a complete checkpoint directory.
pub const BEST_DIR: &str = "best";
/// In a run with checkpoint selection: the validation history, one JSON object a line.
pub const SELECTION_FILE: &str = "selection.jsonl";
/// Checkpoints kept per run (the newest ones).
pub const KEEP_CHECKPOINTS: usize = 2;

/// The agent sizes of `market` (its symbols; the environment's observation and windows).
pub fn agent_dims(market: &Market) -> AgentDims {
    AgentDims::trading(market.data.n_symbols())
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
    /// The environment backend.
    pub backend: BackendKind,
    /// Where the policy runs and learns (`--device`; the CPU, or CUDA in a `gpu` build). The
    /// rollout and update follow the policy's device; the environment's outputs reach it as
    /// tensors built from the host buffers.
    pub device: crate::agents::DeviceSpec,
    /// Progress bar on stderr.
    pub progress: bool,
    /// The bars the training environment plays: `Period::Train` (the configured split), or a
    /// walk-forward fold's window `Period::Bars(lo, hi)`. Not stored in the run directory: a
    /// resumed run must be given the same period (walk-forward keeps it in its plan file).
    pub period: Period,
    /// Warm start: initialise the policy's parameters from this checkpoint's model (weights only;
    /// the optimizer, iteration count and environment start afresh). Ignored on resume.
    pub init_from: Option<PathBuf>,
    /// Initialise the policy's encoder from this pretraining output (`marl-trade pretrain --out`,
    /// or its `encoder.safetensors`), after `init_from`; shapes are checked tensor by tensor.
    /// Ignored on resume.
    pub encoder: Option<PathBuf>,
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
            device: crate::agents::DeviceSpec::Cpu,
            progress: false,
            period: Period::Train,
            init_from: None,
            encoder: None,
        }
    }
}

/// What [`train`] did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The metrics of the iterations run now.
    pub metrics: Vec<Metrics>,
    /// Completed iterations of the run.
    pub iteration: usize,
    /// All the iterations the run will have.
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

    /// The end-of-run summary `marl-trade train` prints: the last iteration's losses, the reward
    /// terms' means and shares, the throughput, and where the checkpoint and metrics of run
    /// directory `out` are.
    pub fn summary(&self, out: &Path) -> String {
        let mut s = String::new();
        if let Some(m) = self.metrics.last() {
            s += &format!(
                "iteration {}/{}: policy loss {:+.4}, value loss {:.4}, entropy {:.3}, approx KL {:.4}, \
                 explained variance {}, episode return {}\n",
                self.iteration,
                self.num_iterations,
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
        let has_terms = |m: &&Metrics| m.env.keys().any(|k| k.starts_with("reward."));
        if let Some(m) = self.metrics.iter().rev().find(has_terms) {
            let terms: Vec<String> = crate::reward::COMPONENT_NAMES
                .iter()
                .filter_map(|c| {
                    let mean = m.env.get(&format!("reward.{c}"))?;
                    let share = m.env.get(&format!("reward_share.{c}"))?;
                    Some(format!("{c} {mean:+.2e} ({:.0}%)", 100.0 * share))
                })
                .collect();
            s += &format!(
                "reward terms per symbol-step (share of |sum|), iteration {}: {}\n",
                m.iteration,
                terms.join(", ")
            );
        }
        s += &format!(
            "{} iterations in {:.1} s: {:.0} symbol transitions/s end to end (rollout + update + checkpoints)\n",
            self.metrics.len(),
            self.seconds,
            self.symbol_sps()
        );
        s += &format!(
            "checkpoint: {}; metrics: {}, {}\n",
            self.checkpoint.display(),
            out.join(METRICS_JSONL).display(),
            out.join(METRICS_CSV).display()
        );
        s
    }
}

/// The trainer of the symbol agents on the trading environment.
pub type Trainer = Ppo<TradingEnv, SymbolPolicy>;

/// Train (or resume) the run of `cfg` in `opts.out`; see the module doc for the files.
pub fn train(cfg: &Config, market: &Market, opts: &TrainOptions) -> Result<TrainReport> {
    if opts.save_every == 0 {
        return Err(Error::invalid("save_every (--save-every) must be >= 1"));
    }
    let dev = opts.device.candle()?;
    let out = &opts.out;
    let cfg_path = out.join(CONFIG_FILE);
    let dims = agent_dims(market);
    let setup = cfg.env_setup();
    let env = if opts.period == Period::Train {
        build_env(&setup, market, opts.backend, &dev)?
    } else {
        let venv = VecEnv::new(
            &setup,
            market.data.clone(),
            market.features.clone(),
            opts.period,
            opts.backend,
        )?;
        TradingEnv::new(venv, setup.master.default_action, &dev)?
    };
    let mut env = env;
    attach_joint_master(&mut env, cfg)?;
    let (policy, vm) = build_policy(&cfg.agent, dims, market, cfg.ppo.seed, &dev)?;
    if let (Some(from), false) = (&opts.init_from, opts.resume) {
        let dir = resolve_checkpoint(from)?;
        checkpoint::load_params(&vm, &dir.join(checkpoint::MODEL_FILE))?;
    }
    if let (Some(enc), false) = (&opts.encoder, opts.resume) {
        crate::train::pretrain::load_encoder(&vm, enc)?;
        crate::agents::ActorCritic::parameters_changed(&policy, true);
    }

    let mut ppo: Trainer = if opts.resume {
        ensure_same_config(&cfg_path, cfg, "resume with")?;
        let dir = latest_checkpoint(out)?;
        let ppo = Ppo::resume(&dir, env, policy, vm)?;
        truncate_metrics(out, ppo.iteration(), &ppo.env().stat_names())?;
        ppo
    } else {
        if !opts.force && (out.join(CHECKPOINTS_DIR).exists() || cfg_path.exists()) {
            return Err(Error::new(
                ErrorKind::RunExists,
                "already holds a run: pass --resume to continue it, --force to replace it, or \
                 choose another --out",
            )
            .with_file(out));
        }
        // A forced run replaces the old one; otherwise only stale metrics files can be here.
        clear_run(out)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        crate::atomic::write(&cfg_path, cfg.to_toml_string().as_bytes())?;
        let mut env = env;
        if cfg.agent.warm_start_steps > 0 {
            let rep = warm_start(&policy, &mut env, cfg.agent.warm_start_steps, cfg.ppo.seed)?;
            let json = serde_json::to_vec_pretty(&rep).map_err(|e| Error::json("warm start", e))?;
            crate::atomic::write(&out.join(WARM_START_FILE), &json)?;
        }
        let spec = policy.agent().spec();
        let spec = serde_json::to_value(&spec).map_err(|e| Error::json("agent spec", e))?;
        Ppo::new(cfg.ppo.clone(), env, policy, vm, spec)?
    };

    let total = ppo.num_iterations();
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

/// With `joint.enabled`: a fresh learning master (`[master_ppo]`, `[joint]`) attached to the
/// training env `env` (`train::joint`); without, nothing. A resume then restores its state from
/// the checkpoint.
pub fn attach_joint_master(env: &mut TradingEnv, cfg: &Config) -> Result<()> {
    if !cfg.joint.enabled {
        return Ok(());
    }
    let seat = MasterSeat::new(
        cfg.joint.clone(),
        cfg.master_ppo.clone(),
        env.num_envs(),
        env.agents_per_env(),
        cfg.ppo.num_steps,
        cfg.master.default_action as u8,
        cfg.ppo.seed,
    )?;
    env.attach_master(seat)
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
    for d in [CHECKPOINTS_DIR, BEST_DIR] {
        let ck = out.join(d);
        if ck.exists() {
            std::fs::remove_dir_all(&ck).map_err(|e| Error::io(&ck, e))?;
        }
    }
    for f in [
        CONFIG_FILE,
        METRICS_JSONL,
        METRICS_CSV,
        WARM_START_FILE,
        SELECTION_FILE,
    ] {
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
    crate::atomic::write(&dir.join(CONFIG_FILE), cfg.to_toml_string().as_bytes())?;
    let mut names = symbols.join("\n");
    names.push('\n');
    crate::atomic::write(&dir.join(SYMBOLS_FILE), names.as_bytes())?;
    publish_and_prune(&root, &name)?;
    Ok(dir)
}

/// Refuse to continue a run whose stored configuration (`cfg_path`) differs from `cfg`; the
/// error tells the user to `{verb} --config <cfg_path>`.
fn ensure_same_config(cfg_path: &Path, cfg: &Config, verb: &str) -> Result<()> {
    if Config::from_file(cfg_path)? != *cfg {
        return Err(Error::new(
            ErrorKind::RunMismatch,
            format!(
                "the configuration differs from the run's: {verb} `--config {}`",
                cfg_path.display()
            ),
        )
        .with_file(cfg_path));
    }
    Ok(())
}

/// Switch `<root>/latest` to the checkpoint `name`, then keep the newest [`KEEP_CHECKPOINTS`]
/// complete ones up to it (names `iter-NNNNNN` sort by iteration; a newer one left by an
/// interrupted run is not touched).
fn publish_and_prune(root: &Path, name: &str) -> Result<()> {
    crate::atomic::write(&root.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iter-") && n.as_str() <= name)
        .collect();
    names.sort();
    let drop = names.len().saturating_sub(KEEP_CHECKPOINTS);
    for old in &names[..drop] {
        let p = root.join(old);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The reward-signal analysis (`train::signals`) of the run in `out`: its `metrics.jsonl`, with
/// the reward weights of its `config.toml` when that file exists (without it every term counts as
/// weighted). A missing metrics file is an I/O error naming it, a malformed line an error naming
/// the file and the line. `th` is validated first.
pub fn analyze_run(out: &Path, th: &SignalThresholds) -> Result<SignalReport> {
    th.validate()?;
    let metrics = read_metrics(out.join(METRICS_JSONL))?;
    let cfg_path = out.join(CONFIG_FILE);
    let weights = if cfg_path.is_file() {
        Some(Config::from_file(&cfg_path)?.reward.weights())
    } else {
        None
    };
    Ok(signals::analyze_weighted(&metrics, th, weights.as_ref()))
}

/// The checkpoint directory a path names: a checkpoint itself (it has `state.json`), or a run
/// directory: its `best/` when the run selected one on its validation slice (`eval::select`),
/// else its `checkpoints/latest`.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(checkpoint::STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let best = path.join(BEST_DIR);
    if best.join(checkpoint::STATE_FILE).is_file() {
        return Ok(best);
    }
    latest_checkpoint(path)
}

/// The newest complete checkpoint of run directory `out`.
pub fn latest_checkpoint(out: &Path) -> Result<PathBuf> {
    let latest = out.join(CHECKPOINTS_DIR).join(LATEST_FILE);
    let name = std::fs::read_to_string(&latest).map_err(|e| {
        Error::checkpoint(
            out,
            format!(
                "not a checkpoint (no {}) nor a run directory ({}: {e})",
                checkpoint::STATE_FILE,
                latest.display()
            ),
        )
    })?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::checkpoint(
            &latest,
            format!("bad checkpoint name `{name}`"),
        ));
    }
    let dir = out.join(CHECKPOINTS_DIR).join(name);
    if !dir.join(checkpoint::STATE_FILE).is_file() {
        return Err(Error::checkpoint(
            &latest,
            format!(
                "names {}, which has no {}",
                dir.display(),
                checkpoint::STATE_FILE
            ),
        ));
    }
    Ok(dir)
}

/// The master checkpoints' directory inside a run.
pub const MASTER_DIR: &str = "master";
/// The master's per-iteration metrics, one JSON object a line.
pub const MASTER_METRICS_JSONL: &str = "master_metrics.jsonl";
/// In a run whose master was trained over a trained symbol policy: that symbol checkpoint's
/// directory, one line (absent: the scripted cap follower).
pub const MASTER_SYMBOLS_FILE: &str = "master_symbols.txt";

/// How to run [`train_master`].
#[derive(Debug, Clone)]
pub struct MasterTrainOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue the master training in `out` from its latest master checkpoint.
    pub resume: bool,
    /// Start afresh even if `out` holds a master: its checkpoints and metrics are removed first.
    pub force: bool,
    /// Run at most this many iterations now (the run's length is `master_ppo.iterations`).
    pub max_iterations: Option<usize>,
    /// Write a checkpoint every this many iterations (and always after the last one run now).
    pub save_every: usize,
    /// The symbol agents: a symbol checkpoint or run directory (`run::resolve_checkpoint`) whose
    /// policy plays greedily (`train::mappo::PolicyDriver`); `None`: the scripted cap follower.
    /// Recorded in the run ([`MASTER_SYMBOLS_FILE`]); a resume uses the recorded one.
    pub symbols: Option<PathBuf>,
}

impl MasterTrainOptions {
    /// A fresh master training in `out`, a checkpoint every 10 iterations.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            resume: false,
            force: false,
            max_iterations: None,
            save_every: 10,
            symbols: None,
        }
    }
}

/// The symbol agents the master of run `out` trains and plays with: the symbol checkpoint named in
/// its [`MASTER_SYMBOLS_FILE`] (its symbols checked against `market`'s), else the cap follower.
pub fn master_symbols(out: &Path, market: &Market) -> Result<Symbols> {
    let f = out.join(MASTER_SYMBOLS_FILE);
    if !f.is_file() {
        // A joint run's master plays with the symbol policy it was trained with.
        if latest_master_checkpoint(out).is_err()
            && let Some(dir) = joint_checkpoint(out)
        {
            return Ok(Symbols::Policy(Box::new(PolicyDriver::from_checkpoint(
                &dir, market,
            )?)));
        }
        return Ok(Symbols::CapFollower(CapFollower::default()));
    }
    let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
    let dir = PathBuf::from(text.trim());
    let names = dir.join(SYMBOLS_FILE);
    if names.is_file() {
        let text = std::fs::read_to_string(&names).map_err(|e| Error::io(&names, e))?;
        if !text
            .lines()
            .eq(market.data.symbols.iter().map(String::as_str))
        {
            return Err(Error::new(
                ErrorKind::SymbolMismatch,
                "the symbol checkpoint was trained on other symbols than this data's",
            )
            .with_file(&names));
        }
    }
    Ok(Symbols::Policy(Box::new(PolicyDriver::from_checkpoint(
        &dir, market,
    )?)))
}

/// What [`train_master`] did.
#[derive(Debug, Clone)]
pub struct MasterTrainReport {
    /// The metrics of the iterations run now.
    pub metrics: Vec<MasterMetrics>,
    /// Completed iterations.
    pub iteration: usize,
    /// All the iterations the run will have (`master_ppo.iterations`).
    pub num_iterations: usize,
    /// The newest master checkpoint (None when nothing was run and none exists).
    pub checkpoint: Option<PathBuf>,
}

/// Train the portfolio master of `cfg` on `market`'s training period with the symbol agents held
/// fixed (module docs). The run directory's `config.toml` must be `cfg` when it exists (a symbol
/// run's directory may hold the master too).
pub fn train_master(
    cfg: &Config,
    market: &Market,
    opts: &MasterTrainOptions,
) -> Result<MasterTrainReport> {
    if opts.save_every == 0 {
        return Err(Error::invalid("save_every (--save-every) must be >= 1"));
    }
    let out = &opts.out;
    let cfg_path = out.join(CONFIG_FILE);
    let root = out.join(MASTER_DIR);
    let metrics_path = out.join(MASTER_METRICS_JSONL);
    if cfg_path.exists() {
        ensure_same_config(&cfg_path, cfg, "use")?;
    }
    let env = VecEnv::new(
        &cfg.env_setup(),
        market.data.clone(),
        market.features.clone(),
        Period::Train,
        BackendKind::Cpu,
    )?;
    let sym_file = out.join(MASTER_SYMBOLS_FILE);
    let given = opts
        .symbols
        .as_deref()
        .map(resolve_checkpoint)
        .transpose()?;
    let mut trainer = if opts.resume {
        let dir = latest_master_checkpoint(out)?;
        if let Some(g) = &given {
            let recorded = std::fs::read_to_string(&sym_file).unwrap_or_default();
            if recorded.trim() != g.display().to_string() {
                return Err(Error::new(
                    ErrorKind::RunMismatch,
                    format!(
                        "the master was trained with other symbol agents than {} (resume without \
                         --symbols)",
                        g.display()
                    ),
                )
                .with_file(&sym_file));
            }
        }
        let t = MasterPpo::resume(&dir, env, master_symbols(out, market)?)?;
        if *t.config() != cfg.master_ppo {
            return Err(Error::new(
                ErrorKind::RunMismatch,
                "the master checkpoint was trained with another [master_ppo] section",
            )
            .with_file(dir.join(mappo::MASTER_STATE_FILE)));
        }
        let kept: Vec<String> = if metrics_path.exists() {
            let text =
                std::fs::read_to_string(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
            let mut kept = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let m: MasterMetrics = serde_json::from_str(line).map_err(|e| {
                    Error::checkpoint(&metrics_path, format!("line {}: {e}", i + 1))
                })?;
                if m.iteration <= t.iteration() {
                    kept.push(format!("{line}\n"));
                }
            }
            kept
        } else {
            Vec::new()
        };
        crate::atomic::write(&metrics_path, kept.concat().as_bytes())?;
        t
    } else {
        if root.exists() && !opts.force {
            return Err(Error::new(
                ErrorKind::RunExists,
                "already holds a master: pass --resume to continue it, --force to replace it, \
                 or choose another --out",
            )
            .with_file(out));
        }
        for p in [&root, &metrics_path, &sym_file] {
            if p.is_dir() {
                std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
            } else if p.exists() {
                std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            }
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        if !cfg_path.exists() {
            crate::atomic::write(&cfg_path, cfg.to_toml_string().as_bytes())?;
        }
        if let Some(g) = &given {
            crate::atomic::write(&sym_file, format!("{}\n", g.display()).as_bytes())?;
        }
        MasterPpo::new(
            cfg.master_ppo.clone(),
            env,
            master_symbols(out, market)?,
            cfg.master_ppo.seed,
        )?
    };
    let total = cfg.master_ppo.iterations;
    let todo = total
        .saturating_sub(trainer.iteration())
        .min(opts.max_iterations.unwrap_or(usize::MAX));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut metrics = Vec::with_capacity(todo);
    let mut checkpoint = latest_master_checkpoint(out).ok();
    for k in 0..todo {
        let m = trainer.iterate()?;
        let line = serde_json::to_string(&m).map_err(|e| Error::json("master metrics", e))?;
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&metrics_path, e))?;
        metrics.push(m);
        if (k + 1) % opts.save_every == 0 || k + 1 == todo {
            checkpoint = Some(save_master_checkpoint(&trainer, &root)?);
        }
    }
    Ok(MasterTrainReport {
        metrics,
        iteration: trainer.iteration(),
        num_iterations: total,
        checkpoint,
    })
}

/// Write a master checkpoint under `root` (`<run>/master`), switch `latest` to it, keep the
/// newest [`KEEP_CHECKPOINTS`].
fn save_master_checkpoint(t: &MasterPpo<Symbols>, root: &Path) -> Result<PathBuf> {
    let name = format!("iter-{:06}", t.iteration());
    let dir = root.join(&name);
    t.save(&dir)?;
    publish_and_prune(root, &name)?;
    Ok(dir)
}

/// The newest complete master checkpoint of run directory `out` (`<out>/master/latest`). A run
/// without one is an [`ErrorKind::Checkpoint`] error naming that file.
pub fn latest_master_checkpoint(out: &Path) -> Result<PathBuf> {
    let root = out.join(MASTER_DIR);
    let latest = root.join(LATEST_FILE);
    let name = std::fs::read_to_string(&latest).map_err(|e| {
        Error::checkpoint(
            &latest,
            format!(
                "the run has no master checkpoint ({e}); train one with `marl-trade train-master`"
            ),
        )
    })?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::checkpoint(
            &latest,
            format!("bad checkpoint name `{name}`"),
        ));
    }
    let dir = root.join(name);
    mappo::read_master_state(&dir)?;
    Ok(dir)
}

/// The run's latest symbol checkpoint when it holds a master beside the symbol policy (a joint
/// training's, `train::joint`), else `None`.
pub fn joint_checkpoint(out: &Path) -> Option<PathBuf> {
    latest_checkpoint(out)
        .ok()
        .filter(|d| d.join(mappo::MASTER_STATE_FILE).is_file())
}

/// The master an evaluation of run `out` plays: `<out>/master/latest` (`train-master`), else the
/// joint checkpoint ([`joint_checkpoint`]); the error of the first when neither exists.
pub fn eval_master_checkpoint(out: &Path) -> Result<PathBuf> {
    match latest_master_checkpoint(out) {
        Ok(dir) => Ok(dir),
        Err(e) => match joint_checkpoint(out) {
            Some(dir) => {
                mappo::read_master_state(&dir)?;
                Ok(dir)
            }
            None => Err(e),
        },
    }
}

/// Keep only the iterations `<= iteration` in the run's metrics files (atomically).
fn truncate_metrics(out: &Path, iteration: usize, env_names: &[String]) -> Result<()> {
    // The kept lines are copied as they are (a parse and re-serialisation could move a float by
    // an ulp); only the iteration of each line is read.
    #[derive(serde::Deserialize)]
    struct Iteration {
        iteration: usize,
    }
    let jsonl = out.join(METRICS_JSONL);
    let mut j = String::new();
    if jsonl.exists() {
        for (it, line) in crate::train::metrics::read_json_lines::<Iteration>(&jsonl)? {
            if it.iteration <= iteration {
                j.push_str(&line);
                j.push('\n');
            }
        }
    }
    let header = Metrics::csv_header_with(env_names);
    let csv = out.join(METRICS_CSV);
    let mut c = format!("{header}\n");
    let old = std::fs::read_to_string(&csv).unwrap_or_default();
    let mut lines = old.lines();
    if lines.next() == Some(header.as_str()) {
        for line in lines {
            let it = line.split(',').next().and_then(|f| f.parse::<usize>().ok());
            if it.is_some_and(|k| k <= iteration) {
                c.push_str(line);
                c.push('\n');
            }
        }
    } else if jsonl.exists() {
        // No CSV, or one with other columns: rebuilt from the JSON lines.
        for m in read_metrics(&jsonl)? {
            if m.iteration <= iteration {
                c.push_str(&m.csv_row_with(env_names));
                c.push('\n');
            }
        }
    }
    crate::atomic::write(&jsonl, j.as_bytes())?;
    crate::atomic::write(&csv, c.as_bytes())
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
