/*!
Walk-forward evaluation (`marl-trade walkforward`): train on a window of bars, evaluate on the next
block after an embargo, move the window forward, repeat; stitch the out-of-sample blocks into one
curve per seed and compare it with the baselines.

# Fold layout ([`fold_layout`])

With `A` = `train_bars`, `B` = `test_bars`, `C` = `step` (default `B`), `E` = `embargo` and `T` the
data's bars, fold `i = 0, 1, ...` has

| part | bars |
|---|---|
| training window | `[lo, hi)` with `hi = A + i C`, `lo = i C` (rolling) or `0` (`expanding`) |
| embargo | `[hi, hi + E)`: neither trained on nor tested |
| test block | decisions at bars `[hi + E, hi + E + B)`, P&L through bar `hi + E + B` |

and there are as many folds as fit (`hi + E + B <= T - 1`). The training environment plays
`Period::Bars(lo, hi)` ([`crate::run::TrainOptions::period`]): episodes start at `max(lo, WARMUP)`
(feature warm-up) and the last fill is at bar `hi - 1`, so no price at or after `hi` enters
training. The test block is a deterministic backtest over `Period::Bars(hi + E, hi + E + B + 1)`:
`B` steps from a fresh account, the last fill at `hi + E + B`. Features are causal, so an
observation at bar `t` reads no bar after `t`. With `C = B` the test blocks tile
`[A + E, A + E + F B]` (F folds) without gaps, each fold starting at the bar where the previous
one ended; `C > B` leaves gaps between blocks; `C < B` (overlapping blocks) is refused.

# Seeds, warm start

Seed `k` (`0..K`) trains with `ppo.seed + k`. A fold trains from scratch, or with `warm_start`
from the previous fold's final checkpoint of the same seed (weights only: a fresh optimizer and
the full iteration budget, `run::TrainOptions::init_from`).

# Stitching ([`stitch`])

The out-of-sample curves of one seed are chained: fold `i`'s curve (which starts at the initial
capital) is scaled by the stitched equity at its first bar, so that the stitched per-bar returns
are exactly the folds' per-bar returns, in order, and the stitched equity is what one account
would have had, rolling its whole equity from block to block. Traded notional, costs and gross
exposure are scaled by the same factor. The baselines are stitched the same way (each restarts
every fold, as the policy does: an equal-weight buy-and-hold re-buys at every block).

# Statistics

Per fold and overall (stitched): the policy's metrics per seed and their mean ± sample standard
deviation over the seeds ([`crate::ablate::Stat`]); each baseline's metrics; the paired comparison
of every seed's policy with each baseline (Memmel's standard error of the Sharpe difference,
[`crate::eval::compare`](mod@crate::eval::compare)). The deflated Sharpe ratio of the best seed is
[`deflated_sharpe`] with `N = K` trials.

# Layout and resume

```text
DIR/walkforward.toml              the plan (spec, folds, data shape) + the whole configuration
DIR/walkforward.json              the report (rewritten after every run)
DIR/fold-<i>/baselines.json       the fold's baselines on its test block
DIR/fold-<i>/seed-<k>/            a run directory (`marl-trade eval --checkpoint` works on it)
DIR/fold-<i>/seed-<k>/wf-result.json   the run's test-block backtest, written when it finishes
```

A second invocation skips every run with a result, resumes (`--resume`) a run with a checkpoint
and no result, and trains the others. A different plan or configuration is refused
([`ErrorKind::RunMismatch`], naming what differs) unless `force`, which removes the old fold
directories and files first.

Layer: above [`crate::ablate`] (it shares its [`Stat`] and configuration diff).
*/

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ablate::{Stat, config_differences};
use crate::config::Config;
use crate::env::{BackendKind, Period};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::{
    AgentPolicy, BacktestOptions, BacktestPolicy, BacktestResult, Baseline, Comparison, Curve,
    Metrics, PolicyView, compare, run_baselines, run_policy,
};
use crate::features::WARMUP;
use crate::market::Market;
use crate::run::{self, TrainOptions};
use crate::train::checkpoint;

/// In the output directory: the plan and the configuration.
pub const PLAN_FILE: &str = "walkforward.toml";
/// In the output directory: the report.
pub const REPORT_JSON: &str = "walkforward.json";
/// In a fold directory: its baselines.
pub const BASELINES_FILE: &str = "baselines.json";
/// In a run directory: its test-block result.
pub const RESULT_FILE: &str = "wf-result.json";

/// What to walk forward (the CLI's arguments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalkForwardSpec {
    /// Bars of a training window (`--train-bars`).
    pub train_bars: usize,
    /// Decision bars of a test block (`--test-bars`).
    pub test_bars: usize,
    /// Bars the window moves per fold (`--step`; default `test_bars`).
    pub step: usize,
    /// Grow the training window from bar 0 instead of rolling it (`--expanding`).
    pub expanding: bool,
    /// Bars between a training window and its test block (`--embargo`).
    pub embargo: usize,
    /// Seeds per fold (`--seeds`).
    pub seeds: usize,
    /// Start each fold from the previous fold's checkpoint of the same seed (`--warm-start`).
    pub warm_start: bool,
    /// Cap on the PPO iterations of each run (`--iterations`), if any.
    pub iterations: Option<usize>,
}

/// One fold's bars (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// Position, from 0.
    pub index: usize,
    /// Training window `[train_lo, train_hi)`.
    pub train_lo: usize,
    /// See `train_lo`.
    pub train_hi: usize,
    /// First decision bar of the test block (`train_hi + embargo`).
    pub test_lo: usize,
    /// Last bar of the test block (`test_lo + test_bars`): its last fill.
    pub test_last: usize,
}

impl Fold {
    /// The period the fold trains on.
    pub fn train_period(&self) -> Period {
        Period::Bars(self.train_lo, self.train_hi)
    }
    /// The period of the fold's test backtest (`test_last` is its last bar).
    pub fn test_period(&self) -> Period {
        Period::Bars(self.test_lo, self.test_last + 1)
    }
    /// The embargo `[train_hi, test_lo)`.
    pub fn embargo(&self) -> (usize, usize) {
        (self.train_hi, self.test_lo)
    }
}

/// The folds of `spec` over `bars` bars (module docs), or an error naming the argument at fault.
pub fn fold_layout(bars: usize, spec: &WalkForwardSpec) -> Result<Vec<Fold>> {
    let bad = |m: String| Err(Error::invalid(m));
    if spec.test_bars == 0 {
        return bad("--test-bars must be >= 1".into());
    }
    if spec.step < spec.test_bars {
        return bad(format!(
            "--step {} is smaller than --test-bars {}: the test blocks would overlap and could not be stitched",
            spec.step, spec.test_bars
        ));
    }
    if spec.seeds == 0 {
        return bad("--seeds must be >= 1".into());
    }
    if spec.train_bars < WARMUP + 2 {
        return bad(format!(
            "--train-bars {} is too short: training starts after the {WARMUP}-bar feature warm-up and needs 2 more bars",
            spec.train_bars
        ));
    }
    let need = spec.train_bars + spec.embargo + spec.test_bars;
    if need + 1 > bars {
        return bad(format!(
            "--train-bars {} + --embargo {} + --test-bars {} + 1 = {} bars, but the data has {bars}",
            spec.train_bars,
            spec.embargo,
            spec.test_bars,
            need + 1
        ));
    }
    let mut folds = Vec::new();
    for i in 0.. {
        let hi = spec.train_bars + i * spec.step;
        let lo = if spec.expanding { 0 } else { i * spec.step };
        let test_lo = hi + spec.embargo;
        let test_last = test_lo + spec.test_bars;
        if test_last > bars - 1 {
            break;
        }
        if lo.max(WARMUP) + 2 > hi {
            return bad(format!(
                "fold {i}: training window [{lo}, {hi}) is shorter than the feature warm-up ({WARMUP}) + 2"
            ));
        }
        folds.push(Fold {
            index: i,
            train_lo: lo,
            train_hi: hi,
            test_lo,
            test_last,
        });
    }
    Ok(folds)
}

/// The plan file: the spec, its folds, the data's shape and the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalkForwardPlan {
    /// The arguments.
    pub spec: WalkForwardSpec,
    /// Bars of the data.
    pub bars: usize,
    /// Symbols of the data, in column order.
    pub symbols: Vec<String>,
    /// The folds.
    pub folds: Vec<Fold>,
    /// The whole configuration.
    pub config: Config,
}

/// The test-block result of one run (`wf-result.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Fold index.
    pub fold: usize,
    /// Seed index `k`.
    pub seed: usize,
    /// `ppo.seed` of the run.
    pub ppo_seed: u64,
    /// PPO iterations trained.
    pub iterations: usize,
    /// The policy's backtest on the fold's test block (curves, metrics, risk-limit check).
    pub backtest: BacktestResult,
    /// Requested symbol actions over the block, by action index (HOLD, BUY_SMALL, ...).
    pub actions: [u64; crate::env::N_ACTIONS],
    /// The policy against each baseline on the block.
    pub comparisons: Vec<Comparison>,
    /// A joint run's learned master against the same symbol policy under
    /// `master.default_action` on the block (`None` without a learned master).
    #[serde(default)]
    pub master: Option<MasterVsDefault>,
}

/// A learned master (joint training) against the same symbol policy under the default directive,
/// on the same bars: the design's "master reduces drawdown vs baseline" for one backtest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterVsDefault {
    /// Max drawdown with the learned master (mean over paths).
    pub max_drawdown: f64,
    /// Max drawdown under `master.default_action`.
    pub default_max_drawdown: f64,
    /// Sharpe with the learned master.
    pub sharpe: f64,
    /// Sharpe under `master.default_action`.
    pub default_sharpe: f64,
    /// Memmel z of the paired Sharpe difference (master - default).
    pub sharpe_z: f64,
}

impl MasterVsDefault {
    /// The comparison of `master` (the checkpoint with its master) and `default` (the same
    /// checkpoint, fixed directive) over the same bars.
    pub fn of(master: &BacktestResult, default: &BacktestResult) -> Result<Self> {
        let c = compare(master, default)?;
        Ok(Self {
            max_drawdown: master.metrics.max_drawdown,
            default_max_drawdown: default.metrics.max_drawdown,
            sharpe: master.metrics.sharpe,
            default_sharpe: default.metrics.sharpe,
            sharpe_z: c.sharpe_z(),
        })
    }

    /// Play checkpoint `ck`'s policy (already played with its master as `backtest`) under the
    /// fixed directive too and compare; `None` when `policy` plays no learned master.
    pub fn measure(
        cfg: &Config,
        market: &Market,
        opts: &BacktestOptions,
        ck: &Path,
        policy: &AgentPolicy,
        backtest: &BacktestResult,
    ) -> Result<Option<Self>> {
        if !policy.plays_learned_master() {
            return Ok(None);
        }
        let mut fixed = AgentPolicy::from_checkpoint_on(
            "ppo-default-directive",
            ck,
            market,
            cfg.master.default_action,
            &opts.device.candle()?,
        )?
        .with_fixed_master();
        let (default, _) = run_counting(cfg, market, opts, &mut fixed)?;
        Self::of(backtest, &default).map(Some)
    }
}

/// The baselines of one fold (`baselines.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoldBaselines {
    /// Fold index.
    pub fold: usize,
    /// [`Baseline::EVERY`] but `random`, in that order.
    pub results: Vec<BacktestResult>,
}

/// The baselines a walk-forward plays ([`Baseline::EVERY`] without `random`).
pub const WF_BASELINES: [Baseline; 5] = [
    Baseline::Hold,
    Baseline::EqualWeight,
    Baseline::Rebalanced,
    Baseline::Spy,
    Baseline::Momentum,
];

/// Mean ± sd over seeds of the policy's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedStats {
    /// Total return.
    pub total_return: Stat,
    /// Annualised Sharpe ratio.
    pub sharpe: Stat,
    /// Maximum drawdown.
    pub max_drawdown: Stat,
    /// Annualised turnover.
    pub turnover: Stat,
    /// Costs paid / initial capital.
    pub costs_paid: Stat,
}

impl SeedStats {
    /// The statistics of `per_seed`.
    pub fn of(per_seed: &[Metrics]) -> Self {
        let st = |f: fn(&Metrics) -> f64| Stat::of(per_seed.iter().map(f));
        Self {
            total_return: st(|m| m.total_return),
            sharpe: st(|m| m.sharpe),
            max_drawdown: st(|m| m.max_drawdown),
            turnover: st(|m| m.turnover),
            costs_paid: st(|m| m.costs_paid),
        }
    }
}

/// One comparison's statistics over seeds: the Sharpe difference and its z.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VsBaseline {
    /// The baseline's name.
    pub baseline: String,
    /// Sharpe difference policy - baseline over seeds.
    pub sharpe_diff: Stat,
    /// Its z (Memmel) over seeds.
    pub sharpe_z: Stat,
    /// Log-return difference over seeds.
    pub log_return_diff: Stat,
}

fn vs_baselines(per_seed: &[Vec<Comparison>]) -> Vec<VsBaseline> {
    let Some(first) = per_seed.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|c0| {
            let pick = |f: fn(&Comparison) -> f64| {
                Stat::of(
                    per_seed
                        .iter()
                        .filter_map(|cs| cs.iter().find(|c| c.b == c0.b).map(f)),
                )
            };
            VsBaseline {
                baseline: c0.b.clone(),
                sharpe_diff: pick(|c| c.sharpe_diff),
                sharpe_z: pick(Comparison::sharpe_z),
                log_return_diff: pick(|c| c.log_return_diff),
            }
        })
        .collect()
}

/// One fold of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoldReport {
    /// The fold's bars.
    pub fold: Fold,
    /// The policy's metrics per seed (seeds with a result, in seed order).
    pub policy: Vec<Metrics>,
    /// Their mean ± sd.
    pub stats: SeedStats,
    /// The baselines' metrics.
    pub baselines: Vec<Metrics>,
    /// The policy against each baseline, over seeds.
    pub vs: Vec<VsBaseline>,
    /// Whether every risk limit held on every step of every seed's test block.
    pub limits_held: bool,
}

/// The deflated Sharpe ratio of the selected (best) seed (see [`deflated_sharpe`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deflated {
    /// Trials `N` (seeds x variants: the seeds here).
    pub trials: usize,
    /// The selected seed.
    pub seed: usize,
    /// Its per-bar Sharpe ratio `SR`.
    pub sharpe_per_bar: f64,
    /// Its annualised Sharpe ratio.
    pub sharpe_annual: f64,
    /// Returns `T`.
    pub returns: usize,
    /// Skewness of its per-bar returns.
    pub skew: f64,
    /// Kurtosis (not excess) of its per-bar returns.
    pub kurtosis: f64,
    /// Variance over the trials of their per-bar Sharpe ratios.
    pub trials_sharpe_var: f64,
    /// The expected maximum per-bar Sharpe of `N` unskilled trials, `SR0`.
    pub sr0: f64,
    /// `DSR = P(true SR > SR0)`, in [0, 1].
    pub dsr: f64,
}

/// The walk-forward report (`walkforward.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalkForwardReport {
    /// The plan (without the configuration).
    pub spec: WalkForwardSpec,
    /// The folds.
    pub folds: Vec<FoldReport>,
    /// Runs with a result, of the plan's runs.
    pub runs_done: usize,
    /// The plan's runs.
    pub runs_total: usize,
    /// The stitched curve of each seed (complete seeds only: every fold has a result), path 0.
    pub stitched: Vec<StitchedCurve>,
    /// The stitched baselines, path 0.
    pub stitched_baselines: Vec<StitchedCurve>,
    /// Metrics of each seed's stitched curve (averaged over the paths).
    pub overall: Vec<Metrics>,
    /// Their mean ± sd.
    pub overall_stats: SeedStats,
    /// Metrics of the stitched baselines.
    pub overall_baselines: Vec<Metrics>,
    /// The stitched policy against each stitched baseline, over seeds.
    pub overall_vs: Vec<VsBaseline>,
    /// The deflated Sharpe ratio of the best seed (absent until a seed is complete).
    pub deflated: Option<Deflated>,
    /// Requested symbol actions of every run, summed (HOLD, BUY_SMALL, ...).
    pub actions: [u64; crate::env::N_ACTIONS],
    /// Every run's test-block risk limits held.
    pub limits_held: bool,
    /// Bars per year of the data (annualisation).
    pub bars_per_year: f64,
    /// Every run's learned master against its default directive (joint runs only).
    #[serde(default)]
    pub master: Vec<MasterVsDefault>,
}

/// A stitched out-of-sample curve (module docs) with the bar of every point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchedCurve {
    /// The policy or baseline (`ppo/seed-<k>` for a seed).
    pub name: String,
    /// The data bar of every equity value (`curve.equity[i]` is at `bars[i]`).
    pub bars: Vec<usize>,
    /// The chained series.
    pub curve: Curve,
    /// Index into `curve.equity` where each fold starts.
    pub fold_starts: Vec<usize>,
}

/// Chain `parts` (one curve per fold, each with the data bar of its first point) into one curve
/// (module docs): fold `i`'s values are scaled by the stitched equity at its start over its own
/// first equity. An empty input is an error. With gaps between blocks (`step > test_bars`) the
/// point where a fold starts keeps the previous block's last bar in `bars` (the stitched curve
/// has no return for the skipped bars); `fold_starts` marks it.
pub fn stitch(name: &str, parts: &[(usize, &Curve)]) -> Result<StitchedCurve> {
    let Some((_, first)) = parts.first() else {
        return Err(Error::invalid("nothing to stitch"));
    };
    let mut c = Curve::new(first.equity[0], first.bars_per_year);
    let mut bars = vec![parts[0].0];
    let mut fold_starts = Vec::with_capacity(parts.len());
    for (k, (b0, part)) in parts.iter().enumerate() {
        let start = *c.equity.last().unwrap_or(&part.equity[0]);
        let f = start / part.equity[0];
        fold_starts.push(c.equity.len() - 1);
        if k == 0 {
            c.gross[0] = part.gross[0];
        }
        for i in 0..part.steps() {
            c.push(
                f * part.equity[i + 1],
                f * part.gross[i + 1],
                f * part.traded[i],
                f * part.costs[i],
            );
            bars.push(b0 + i + 1);
        }
        c.killed |= part.killed;
    }
    Ok(StitchedCurve {
        name: name.to_string(),
        bars,
        curve: c,
        fold_starts,
    })
}

/// How to run [`walk_forward`].
#[derive(Debug, Clone)]
pub struct WalkForwardOptions {
    /// The output directory.
    pub out: PathBuf,
    /// Replace a walk-forward of another plan or configuration in `out`.
    pub force: bool,
    /// Checkpoint every this many iterations.
    pub save_every: usize,
    /// Environment backend.
    pub backend: BackendKind,
    /// Where the policies train and play (`--device`).
    pub device: crate::agents::DeviceSpec,
    /// Progress bars.
    pub progress: bool,
}

impl WalkForwardOptions {
    /// Defaults: no force, a checkpoint every 10 iterations, CPU, no progress bar.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            force: false,
            save_every: 10,
            backend: BackendKind::Cpu,
            device: crate::agents::DeviceSpec::Cpu,
            progress: false,
        }
    }
}

/// What happened to one run in this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RunAction {
    /// Trained from the start.
    Trained,
    /// Continued from its checkpoint.
    Resumed,
    /// Already trained; evaluated now.
    Evaluated,
    /// Had a result already.
    Skipped,
}

/// One finished run, for progress lines.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The fold.
    pub fold: Fold,
    /// The seed index.
    pub seed: usize,
    /// What was done.
    pub action: RunAction,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The policy's test-block metrics.
    pub metrics: Metrics,
}

impl RunOutcome {
    /// One progress line.
    pub fn line(&self) -> String {
        format!(
            "fold {} (train {}..{}, test {}..={}) seed {}: {:?} in {:.1} s: return {:+.2}%, Sharpe {:.3}, max dd {:.2}%",
            self.fold.index,
            self.fold.train_lo,
            self.fold.train_hi,
            self.fold.test_lo,
            self.fold.test_last,
            self.seed,
            self.action,
            self.seconds,
            100.0 * self.metrics.total_return,
            self.metrics.sharpe,
            100.0 * self.metrics.max_drawdown
        )
    }
}

/// The directory of fold `i`.
pub fn fold_dir(out: &Path, i: usize) -> PathBuf {
    out.join(format!("fold-{i}"))
}

/// The run directory of fold `i`, seed `k`.
pub fn run_dir(out: &Path, i: usize, k: usize) -> PathBuf {
    fold_dir(out, i).join(format!("seed-{k}"))
}

/// Counts the symbol actions a policy requests, passing them through.
struct Counting<'a> {
    inner: &'a mut dyn BacktestPolicy,
    counts: [u64; crate::env::N_ACTIONS],
}

impl BacktestPolicy for Counting<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn needs_full_obs(&self) -> bool {
        self.inner.needs_full_obs()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        self.inner.act(view, sym_out, master_out)?;
        for &a in sym_out.iter() {
            if let Some(c) = self.counts.get_mut(a as usize) {
                *c += 1;
            }
        }
        Ok(())
    }
}

/// Play `policy` over `period` and count its requested actions.
pub fn run_counting(
    cfg: &Config,
    market: &Market,
    opts: &BacktestOptions,
    policy: &mut dyn BacktestPolicy,
) -> Result<(BacktestResult, [u64; crate::env::N_ACTIONS])> {
    let mut c = Counting {
        inner: policy,
        counts: [0; crate::env::N_ACTIONS],
    };
    let r = run_policy(
        &cfg.env_setup(),
        market.data.clone(),
        market.features.clone(),
        opts,
        &mut c,
    )?;
    Ok((r, c.counts))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("not a {what} this build reads ({e}); delete it to compute it again"),
        )
        .with_file(path)
        .with_source(e)
    })
}

fn write_json<T: Serialize>(path: &Path, what: &str, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::json(what, e))?;
    crate::atomic::write(path, text.as_bytes())
}

/// Check `out` against the plan file, or create it (module docs).
fn prepare_dir(out: &Path, mine: &WalkForwardPlan, force: bool) -> Result<()> {
    let plan_path = out.join(PLAN_FILE);
    let stored: Option<std::result::Result<WalkForwardPlan, String>> = if plan_path.is_file() {
        let text = std::fs::read_to_string(&plan_path).map_err(|e| Error::io(&plan_path, e))?;
        Some(toml::from_str(&text).map_err(|e| e.message().to_string()))
    } else {
        None
    };
    match &stored {
        Some(Ok(p)) if p == mine => return Ok(()),
        Some(Ok(p)) if !force => {
            let mut what = Vec::new();
            if p.spec != mine.spec {
                what.push(format!(
                    "arguments ({:?} there, {:?} here)",
                    p.spec, mine.spec
                ));
            }
            if (p.bars, &p.symbols) != (mine.bars, &mine.symbols) {
                what.push(format!(
                    "data ({} bars of {} there, {} bars of {} here)",
                    p.bars,
                    p.symbols.join(","),
                    mine.bars,
                    mine.symbols.join(",")
                ));
            }
            let diffs = config_differences(&p.config, &mine.config);
            if !diffs.is_empty() {
                what.push(format!("configuration ({})", diffs.join("; ")));
            }
            return Err(Error::new(
                ErrorKind::RunMismatch,
                format!(
                    "holds a walk-forward of another plan: {}; pass --force to replace it, or choose another --out",
                    what.join(", ")
                ),
            )
            .with_file(&plan_path));
        }
        Some(Err(e)) if !force => {
            return Err(Error::new(
                ErrorKind::RunMismatch,
                format!(
                    "not a walk-forward plan this build reads ({e}); pass --force to replace it"
                ),
            )
            .with_file(&plan_path));
        }
        None if !force => {
            if fold_dir(out, 0).exists() {
                return Err(Error::new(
                    ErrorKind::RunExists,
                    format!(
                        "has no {PLAN_FILE} but holds {}: pass --force to replace it, or choose another --out",
                        fold_dir(out, 0).display()
                    ),
                )
                .with_file(out));
            }
        }
        _ => {
            // force: remove fold directories and the walk-forward's files (only names it writes).
            if out.is_dir() {
                for e in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
                    let e = e.map_err(|e| Error::io(out, e))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    let is_fold = name
                        .strip_prefix("fold-")
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
                    if is_fold && e.path().is_dir() {
                        std::fs::remove_dir_all(e.path()).map_err(|x| Error::io(e.path(), x))?;
                    }
                }
            }
            for f in [PLAN_FILE, REPORT_JSON] {
                let p = out.join(f);
                if p.is_file() {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let text = toml::to_string_pretty(mine).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("walk-forward plan: {e}"),
        )
    })?;
    let head = "# marl-trade walk-forward plan (`marl-trade walkforward`): arguments, folds, data shape and the whole configuration.\n\
                # A later invocation into this directory must match it (or pass --force).\n\n";
    crate::atomic::write(&plan_path, format!("{head}{text}").as_bytes())
}

/// Read the plan of walk-forward directory `out`.
pub fn read_plan(out: &Path) -> Result<WalkForwardPlan> {
    let p = out.join(PLAN_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    toml::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::RunMismatch,
            format!("not a walk-forward plan this build reads ({})", e.message()),
        )
        .with_file(&p)
    })
}

/// Run (or continue) the walk-forward of `spec` for `cfg` on `market` into `opts.out` (module
/// docs). `on_run` is called as each run finishes (or is found done).
pub fn walk_forward(
    cfg: &Config,
    market: &Market,
    spec: &WalkForwardSpec,
    opts: &WalkForwardOptions,
    mut on_run: impl FnMut(&RunOutcome),
) -> Result<WalkForwardReport> {
    if opts.save_every == 0 {
        return Err(Error::invalid("--save-every must be >= 1"));
    }
    let md = &market.data;
    let folds = fold_layout(md.bars, spec)?;
    let plan = WalkForwardPlan {
        spec: spec.clone(),
        bars: md.bars,
        symbols: md.symbols.clone(),
        folds: folds.clone(),
        config: cfg.clone(),
    };
    let out = &opts.out;
    prepare_dir(out, &plan, opts.force)?;
    let num_iterations = cfg.ppo.num_iterations(cfg.env.scenarios);
    let target = spec
        .iterations
        .map_or(num_iterations, |c| c.min(num_iterations));
    for fold in &folds {
        let fdir = fold_dir(out, fold.index);
        let bpath = fdir.join(BASELINES_FILE);
        let bopts = BacktestOptions {
            period: fold.test_period(),
            backend: opts.backend,
            seed: 0,
            progress: false,
            device: opts.device,
        };
        let baselines: FoldBaselines = if bpath.is_file() {
            read_json(&bpath, "fold's baselines")?
        } else {
            let results = run_baselines(
                &cfg.env_setup(),
                md.clone(),
                market.features.clone(),
                &bopts,
                &WF_BASELINES,
            )?;
            let b = FoldBaselines {
                fold: fold.index,
                results,
            };
            std::fs::create_dir_all(&fdir).map_err(|e| Error::io(&fdir, e))?;
            write_json(&bpath, "fold's baselines", &b)?;
            b
        };
        for k in 0..spec.seeds {
            let t = Instant::now();
            let dir = run_dir(out, fold.index, k);
            let rpath = dir.join(RESULT_FILE);
            let mut rcfg = cfg.clone();
            rcfg.ppo.seed = cfg.ppo.seed + k as u64;
            let (action, result) = if rpath.is_file() {
                (
                    RunAction::Skipped,
                    read_json::<RunResult>(&rpath, "walk-forward result")?,
                )
            } else {
                let done = run::latest_checkpoint(&dir)
                    .and_then(|c| checkpoint::read_state(&c))
                    .map(|s| s.iteration)
                    .ok();
                let init_from =
                    (spec.warm_start && fold.index > 0).then(|| run_dir(out, fold.index - 1, k));
                let train = |resume: bool, todo: usize| {
                    let o = TrainOptions {
                        out: dir.clone(),
                        resume,
                        force: !resume,
                        max_iterations: Some(todo),
                        save_every: opts.save_every,
                        backend: opts.backend,
                        device: opts.device,
                        progress: opts.progress,
                        period: fold.train_period(),
                        init_from: init_from.clone(),
                        encoder: None,
                    };
                    run::train(&rcfg, market, &o).map(|_| ())
                };
                let action = match done {
                    Some(d) if d >= target => RunAction::Evaluated,
                    Some(d) => {
                        train(true, target - d)?;
                        RunAction::Resumed
                    }
                    None => {
                        train(false, target)?;
                        RunAction::Trained
                    }
                };
                let ck = run::latest_checkpoint(&dir)?;
                let iterations = checkpoint::read_state(&ck)?.iteration;
                let mut policy = AgentPolicy::from_checkpoint_on(
                    "ppo",
                    &ck,
                    market,
                    cfg.master.default_action,
                    &opts.device.candle()?,
                )?;
                let (backtest, actions) = run_counting(&rcfg, market, &bopts, &mut policy)?;
                let master =
                    MasterVsDefault::measure(&rcfg, market, &bopts, &ck, &policy, &backtest)?;
                let comparisons = baselines
                    .results
                    .iter()
                    .map(|b| compare(&backtest, b))
                    .collect::<Result<Vec<_>>>()?;
                let r = RunResult {
                    fold: fold.index,
                    seed: k,
                    ppo_seed: rcfg.ppo.seed,
                    iterations,
                    backtest,
                    actions,
                    comparisons,
                    master,
                };
                write_json(&rpath, "walk-forward result", &r)?;
                (action, r)
            };
            on_run(&RunOutcome {
                fold: *fold,
                seed: k,
                action,
                seconds: t.elapsed().as_secs_f64(),
                metrics: result.backtest.metrics.clone(),
            });
        }
        let report = load_report(out)?;
        write_json(&out.join(REPORT_JSON), "walk-forward report", &report)?;
    }
    load_report(out)
}

/// The report of walk-forward directory `out` from its plan and the results written so far.
pub fn load_report(out: &Path) -> Result<WalkForwardReport> {
    let plan = read_plan(out)?;
    let spec = &plan.spec;
    let mut folds = Vec::new();
    let mut results: Vec<Vec<Option<RunResult>>> = Vec::new();
    let mut baselines: Vec<Option<FoldBaselines>> = Vec::new();
    let mut actions = [0u64; crate::env::N_ACTIONS];
    let mut limits_held = true;
    let mut bpy = 0.0;
    let mut master = Vec::new();
    for fold in &plan.folds {
        let bpath = fold_dir(out, fold.index).join(BASELINES_FILE);
        let b: Option<FoldBaselines> = if bpath.is_file() {
            Some(read_json(&bpath, "fold's baselines")?)
        } else {
            None
        };
        let mut per_seed = Vec::new();
        for k in 0..spec.seeds {
            let rpath = run_dir(out, fold.index, k).join(RESULT_FILE);
            per_seed.push(if rpath.is_file() {
                Some(read_json::<RunResult>(&rpath, "walk-forward result")?)
            } else {
                None
            });
        }
        let done: Vec<&RunResult> = per_seed.iter().flatten().collect();
        master.extend(done.iter().filter_map(|r| r.master.clone()));
        for r in &done {
            for (a, c) in actions.iter_mut().zip(r.actions) {
                *a += c;
            }
            limits_held &= r.backtest.limits.held();
            if let Some(c) = r.backtest.curves.first() {
                bpy = c.bars_per_year;
            }
        }
        let policy: Vec<Metrics> = done.iter().map(|r| r.backtest.metrics.clone()).collect();
        let comps: Vec<Vec<Comparison>> = done.iter().map(|r| r.comparisons.clone()).collect();
        if !done.is_empty() || b.is_some() {
            folds.push(FoldReport {
                fold: *fold,
                stats: SeedStats::of(&policy),
                policy,
                baselines: b
                    .as_ref()
                    .map(|b| b.results.iter().map(|r| r.metrics.clone()).collect())
                    .unwrap_or_default(),
                vs: vs_baselines(&comps),
                limits_held: done.iter().all(|r| r.backtest.limits.held()),
            });
        }
        results.push(per_seed);
        baselines.push(b);
    }
    let runs_done = results.iter().flatten().filter(|r| r.is_some()).count();
    // Stitch the complete seeds (and the baselines when every fold has them), path by path.
    let mut overall_results: Vec<(usize, BacktestResult)> = Vec::new();
    let mut stitched = Vec::new();
    for k in 0..spec.seeds {
        let parts: Option<Vec<&RunResult>> = results.iter().map(|f| f[k].as_ref()).collect();
        let Some(parts) = parts.filter(|p| !p.is_empty()) else {
            continue;
        };
        let name = format!("ppo/seed-{k}");
        let r = stitch_results(
            &name,
            &parts.iter().map(|r| &r.backtest).collect::<Vec<_>>(),
        )?;
        stitched.push(r.1);
        overall_results.push((k, r.0));
    }
    let mut stitched_baselines = Vec::new();
    let mut overall_b: Vec<BacktestResult> = Vec::new();
    if let Some(bs) = baselines
        .iter()
        .map(Option::as_ref)
        .collect::<Option<Vec<&FoldBaselines>>>()
        .filter(|b| !b.is_empty())
    {
        for (j, b) in WF_BASELINES.iter().enumerate() {
            let parts: Vec<&BacktestResult> = bs.iter().map(|f| &f.results[j]).collect();
            let r = stitch_results(b.name(), &parts)?;
            stitched_baselines.push(r.1);
            overall_b.push(r.0);
        }
    }
    let overall: Vec<Metrics> = overall_results
        .iter()
        .map(|(_, r)| r.metrics.clone())
        .collect();
    let comps: Vec<Vec<Comparison>> = overall_results
        .iter()
        .map(|(_, r)| overall_b.iter().map(|b| compare(r, b)).collect())
        .collect::<Result<Vec<_>>>()?;
    let deflated = deflated_of(&overall_results, spec.seeds);
    Ok(WalkForwardReport {
        spec: spec.clone(),
        folds,
        runs_done,
        runs_total: plan.folds.len() * spec.seeds,
        stitched,
        stitched_baselines,
        overall_stats: SeedStats::of(&overall),
        overall,
        overall_baselines: overall_b.iter().map(|b| b.metrics.clone()).collect(),
        overall_vs: vs_baselines(&comps),
        deflated,
        actions,
        limits_held,
        bars_per_year: bpy,
        master,
    })
}

/// Stitch per-fold backtests path by path; returns the stitched result and path 0's curve.
fn stitch_results(
    name: &str,
    parts: &[&BacktestResult],
) -> Result<(BacktestResult, StitchedCurve)> {
    let paths = parts[0].curves.len();
    let mut curves = Vec::with_capacity(paths);
    let mut first = None;
    for p in 0..paths {
        let segs: Vec<(usize, &Curve)> = parts
            .iter()
            .map(|r| {
                r.curves.get(p).map(|c| (r.first_bar, c)).ok_or_else(|| {
                    Error::invalid(format!("{name}: folds with different numbers of paths"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let s = stitch(name, &segs)?;
        curves.push(s.curve.clone());
        if p == 0 {
            first = Some(s);
        }
    }
    let last = parts.last().map_or(0, |r| r.last_bar);
    let mut r = BacktestResult::from_curves(name, curves, parts[0].first_bar, last);
    for q in parts {
        let l = &q.limits;
        let m = &mut r.limits;
        m.steps += l.steps;
        m.buy_steps += l.buy_steps;
        m.cap_violations += l.cap_violations;
        m.leverage_violations += l.leverage_violations;
        m.open_violations += l.open_violations;
        m.kill_violations += l.kill_violations;
        m.kills += l.kills;
        m.max_leverage_at_fill = m.max_leverage_at_fill.max(l.max_leverage_at_fill);
        m.max_drawdown_alive = m.max_drawdown_alive.max(l.max_drawdown_alive);
        m.max_drawdown_at_kill = m.max_drawdown_at_kill.max(l.max_drawdown_at_kill);
        if m.first_violation.is_none() {
            m.first_violation.clone_from(&l.first_violation);
        }
    }
    let first = first.ok_or_else(|| Error::invalid(format!("{name}: no path to stitch")))?;
    Ok((r, first))
}

/// The per-bar returns of every path of a result, pooled.
fn pooled_returns(r: &BacktestResult) -> Vec<f64> {
    r.curves
        .iter()
        .flat_map(|c| c.equity.windows(2).map(|w| w[1] / w[0] - 1.0))
        .collect()
}

fn deflated_of(seeds: &[(usize, BacktestResult)], trials: usize) -> Option<Deflated> {
    let rets: Vec<(usize, Vec<f64>)> = seeds.iter().map(|(k, r)| (*k, pooled_returns(r))).collect();
    let srs: Vec<f64> = rets.iter().map(|(_, x)| moments(x).sharpe).collect();
    let (best, _) = srs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    let bpy = seeds[best].1.curves.first()?.bars_per_year;
    let var = if srs.len() > 1 {
        let m = srs.iter().sum::<f64>() / srs.len() as f64;
        srs.iter().map(|s| (s - m).powi(2)).sum::<f64>() / (srs.len() - 1) as f64
    } else {
        0.0
    };
    let mo = moments(&rets[best].1);
    let n = trials.max(seeds.len());
    let (sr0, dsr) = deflated_sharpe(mo.sharpe, mo.n, mo.skew, mo.kurt, var, n);
    Some(Deflated {
        trials: n,
        seed: rets[best].0,
        sharpe_per_bar: mo.sharpe,
        sharpe_annual: mo.sharpe * bpy.sqrt(),
        returns: mo.n,
        skew: mo.skew,
        kurtosis: mo.kurt,
        trials_sharpe_var: var,
        sr0,
        dsr,
    })
}

/// Sample moments of a return series.
#[derive(Debug, Clone, Copy)]
struct Moments {
    n: usize,
    sharpe: f64,
    skew: f64,
    kurt: f64,
}

fn moments(x: &[f64]) -> Moments {
    let n = x.len();
    if n < 2 {
        return Moments {
            n,
            sharpe: 0.0,
            skew: 0.0,
            kurt: 3.0,
        };
    }
    let nf = n as f64;
    let m = x.iter().sum::<f64>() / nf;
    let m2 = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / nf;
    let m3 = x.iter().map(|v| (v - m).powi(3)).sum::<f64>() / nf;
    let m4 = x.iter().map(|v| (v - m).powi(4)).sum::<f64>() / nf;
    let sd = (m2 * nf / (nf - 1.0)).sqrt();
    if m2 <= 0.0 {
        return Moments {
            n,
            sharpe: 0.0,
            skew: 0.0,
            kurt: 3.0,
        };
    }
    Moments {
        n,
        sharpe: m / sd,
        skew: m3 / m2.powf(1.5),
        kurt: m4 / (m2 * m2),
    }
}

/// Euler-Mascheroni constant.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// The deflated Sharpe ratio of Bailey and López de Prado (2014), "The Deflated Sharpe Ratio:
/// Correcting for Selection Bias, Backtest Overfitting and Non-Normality", J. Portfolio Management
/// 40(5). Inputs: the selected trial's per-bar (not annualised) Sharpe ratio `sr`, its number of
/// returns `t`, their skewness `skew` and kurtosis `kurt` (not excess: 3 for a normal), the
/// variance `var_trials` of the `n` trials' per-bar Sharpe ratios. Returns `(SR0, DSR)` with
///
/// `SR0 = sqrt(var_trials) * ((1 - g) * Z^-1(1 - 1/n) + g * Z^-1(1 - 1/(n e)))` (the expected
/// maximum Sharpe ratio of `n` unskilled trials, `g` the Euler-Mascheroni constant, `Z^-1` the
/// standard normal quantile) and
///
/// `DSR = Z((sr - SR0) sqrt(t - 1) / sqrt(1 - skew sr + (kurt - 1) / 4 sr^2))`.
///
/// With `n = 1` (or `var_trials = 0`), `SR0 = 0` and the DSR is the probabilistic Sharpe ratio
/// `PSR(0)`: the probability that the true Sharpe ratio is positive. `t < 2` gives `DSR = 0.5`
/// when `sr = SR0`, else 0 or 1.
pub fn deflated_sharpe(
    sr: f64,
    t: usize,
    skew: f64,
    kurt: f64,
    var_trials: f64,
    n: usize,
) -> (f64, f64) {
    let sr0 = if n > 1 && var_trials > 0.0 {
        let nf = n as f64;
        var_trials.sqrt()
            * ((1.0 - EULER_GAMMA) * norm_inv(1.0 - 1.0 / nf)
                + EULER_GAMMA * norm_inv(1.0 - 1.0 / (nf * std::f64::consts::E)))
    } else {
        0.0
    };
    let den = (1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr)
        .max(1e-12)
        .sqrt();
    let z = (sr - sr0) * ((t.max(1) - 1) as f64).sqrt() / den;
    (sr0, norm_cdf(z))
}

/// The standard normal CDF, through `erfc` (W. J. Cody's rational approximation as in Numerical
/// Recipes' `erfcc`, relative error below 1.2e-7).
pub fn norm_cdf(z: f64) -> f64 {
    let x = -z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    0.5 * erfc
}

/// The standard normal quantile (P. J. Acklam's rational approximation, relative error below
/// 1.15e-9), for `p` in (0, 1); `p <= 0` gives -inf, `p >= 1` +inf.
pub fn norm_inv(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cdf_and_quantile_by_table() {
        // Z(0) = 0.5, Z(1.959964) = 0.975, Z(-1) = 0.158655
        assert!((norm_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((norm_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((norm_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
        assert!((norm_inv(0.975) - 1.959_964).abs() < 1e-6);
        assert!((norm_inv(0.01) + 2.326_348).abs() < 1e-6);
        for p in [0.001, 0.1, 0.3, 0.5, 0.77, 0.99] {
            assert!((norm_cdf(norm_inv(p)) - p).abs() < 1e-6, "{p}");
        }
    }

    #[test]
    fn deflated_sharpe_matches_the_paper_example() {
        // Bailey & Lopez de Prado (2014), section "A numerical example": N = 100 trials, variance
        // of the (annualised) Sharpe ratios 0.5 / 252 per day..., here in per-bar units: the
        // paper's SR0 for N = 100 and V = 1/2 (annual) is 0.1132 daily with T = 1250, skew -3,
        // kurtosis 10, SR = 2.5 annual (0.1575 daily) -> DSR 0.9004.
        let v = 0.5 / 252.0;
        let (sr0, dsr) = deflated_sharpe(2.5 / 252f64.sqrt(), 1250, -3.0, 10.0, v, 100);
        assert!((sr0 - 0.1132).abs() < 2e-3, "SR0 {sr0}");
        assert!((dsr - 0.9004).abs() < 5e-3, "DSR {dsr}");
        // One trial: PSR(0), symmetric around SR = 0.
        let (z0, p) = deflated_sharpe(0.0, 100, 0.0, 3.0, 0.0, 1);
        assert_eq!(z0, 0.0);
        assert!((p - 0.5).abs() < 1e-7);
    }
}
