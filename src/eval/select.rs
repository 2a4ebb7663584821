/*!
Checkpoint selection and early stopping on a validation slice at the end of the train period
(issue #11: regularisation against fitting the training years), as `marl-trade train` runs it when
`ppo.val_fraction > 0`.

With `split = floor(T * env.train_fraction)` and `v = floor(split * ppo.val_fraction)`, PPO trains
on bars `[0, split - v)` only ([`crate::run::train`] with `Period::Bars(0, split - v)`) and every
`ppo.val_every` iterations the newest checkpoint is played greedily (one scenario, net of costs,
[`run_policy`]) on the validation bars `[split - v, split)`. The checkpoint with the highest
validation Sharpe ratio (ties: the earlier one) is copied to `<run>/best/`, which
[`crate::run::resolve_checkpoint`] then prefers for the run directory (`eval`, `stress`, `report`).
With `ppo.val_patience = k > 0` the run stops after `k` evaluations in a row without a new best.
The test period `[split, T)` is never read.

Files: `<run>/selection.jsonl`, one [`ValPoint`] per evaluation; `<run>/best/` a complete checkpoint
(written to `best.tmp/` and renamed). An interrupted selection resumes: the run resumes from its
latest checkpoint and the evaluations recorded so far are read back.
*/

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::agent::AgentPolicy;
use super::backtest::{BacktestOptions, run_policy};
use crate::config::Config;
use crate::env::Period;
use crate::error::{Error, Result};
use crate::market::Market;
use crate::run::{self, TrainOptions};

/// One validation evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValPoint {
    /// Training iteration of the checkpoint evaluated.
    pub iteration: usize,
    /// Greedy net-of-cost Sharpe ratio (annualised) on the validation bars.
    pub sharpe: f64,
    /// Total return on the validation bars.
    pub total_return: f64,
    /// Mean gross exposure / equity on the validation bars.
    pub exposure: f64,
    /// Whether this evaluation set a new best (its checkpoint is `best/` until a later one does).
    pub best: bool,
}

/// What [`train_selected`] did.
#[derive(Debug, Clone)]
pub struct SelectReport {
    /// Every validation evaluation of the run, in order.
    pub history: Vec<ValPoint>,
    /// The selected checkpoint (`<run>/best`).
    pub best: PathBuf,
    /// Iteration of the selected checkpoint.
    pub best_iteration: usize,
    /// Iterations trained in total.
    pub iteration: usize,
    /// Whether the run ended early (patience exhausted).
    pub stopped_early: bool,
    /// Training bars `[0, val_lo)` and validation bars `[val_lo, split)`.
    pub val_bars: (usize, usize),
}

impl SelectReport {
    /// A one-paragraph summary for the CLI.
    pub fn summary(&self) -> String {
        let b = self
            .history
            .iter()
            .find(|p| p.iteration == self.best_iteration);
        format!(
            "selection: trained on bars 0..{}, validated on {}..{} every evaluation ({} of them); \
             best iteration {} (validation Sharpe {:.3}, return {:+.2}%){}; selected checkpoint {}",
            self.val_bars.0,
            self.val_bars.0,
            self.val_bars.1,
            self.history.len(),
            self.best_iteration,
            b.map_or(f64::NAN, |p| p.sharpe),
            100.0 * b.map_or(f64::NAN, |p| p.total_return),
            if self.stopped_early {
                format!(", stopped early at iteration {}", self.iteration)
            } else {
                String::new()
            },
            self.best.display()
        )
    }
}

/// The bars `(val_lo, split)` of the validation slice of `cfg` on `market`.
pub fn validation_bars(cfg: &Config, market: &Market) -> Result<(usize, usize)> {
    let t = market.data.bars;
    let split = (t as f64 * cfg.env.train_fraction).floor() as usize;
    let v = (split as f64 * cfg.ppo.val_fraction).floor() as usize;
    if v == 0 {
        return Err(Error::config_field(
            "config",
            "ppo.val_fraction",
            format!("gives no validation bars ({split} train bars)"),
        ));
    }
    Ok((split - v, split))
}

/// Train the run of `cfg` in `opts.out` with checkpoint selection on the validation slice (module
/// docs). `opts.period` must be `Period::Train` (the slice is cut from it); `opts.max_iterations`
/// bounds the iterations run now, as in [`run::train`].
pub fn train_selected(cfg: &Config, market: &Market, opts: &TrainOptions) -> Result<SelectReport> {
    if opts.period != Period::Train {
        return Err(Error::invalid(
            "checkpoint selection cuts its validation slice from the train period",
        ));
    }
    let (val_lo, split) = validation_bars(cfg, market)?;
    let out = &opts.out;
    let sel_path = out.join(run::SELECTION_FILE);
    let mut history: Vec<ValPoint> = if opts.resume {
        read_history(&sel_path)?
    } else {
        Vec::new()
    };
    let mut first = !opts.resume;
    let mut budget = opts.max_iterations.unwrap_or(usize::MAX);
    let every = cfg.ppo.val_every;
    let setup = cfg.env_setup();
    let mut stopped_early = false;
    let mut iteration = history.last().map_or(0, |p| p.iteration);
    loop {
        if cfg.ppo.val_patience > 0 && since_best(&history) >= cfg.ppo.val_patience {
            stopped_early = true;
            break;
        }
        if budget == 0 {
            break;
        }
        let chunk = every - iteration % every;
        let step = TrainOptions {
            resume: !first,
            force: first && opts.force,
            max_iterations: Some(chunk.min(budget)),
            save_every: every,
            period: Period::Bars(0, val_lo),
            init_from: if first { opts.init_from.clone() } else { None },
            ..opts.clone()
        };
        let rep = run::train(cfg, market, &step)?;
        first = false;
        let ran = rep.metrics.len();
        budget = budget.saturating_sub(ran);
        iteration = rep.iteration;
        if ran == 0 && history.last().is_some_and(|p| p.iteration == iteration) {
            break; // the run is complete and its last checkpoint evaluated
        }
        let mut policy = AgentPolicy::from_checkpoint(
            "ppo",
            &rep.checkpoint,
            market,
            setup.master.default_action,
        )?;
        let res = run_policy(
            &setup,
            market.data.clone(),
            market.features.clone(),
            &BacktestOptions {
                period: Period::Bars(val_lo, split),
                backend: opts.backend,
                ..Default::default()
            },
            &mut policy,
        )?;
        let m = &res.metrics;
        let sharpe = if m.sharpe.is_finite() { m.sharpe } else { 0.0 };
        let best_so_far = history
            .iter()
            .filter(|p| p.best)
            .map(|p| p.sharpe)
            .fold(f64::NEG_INFINITY, f64::max);
        let best = sharpe > best_so_far;
        if best {
            copy_checkpoint(&rep.checkpoint, &out.join(run::BEST_DIR))?;
        }
        history.push(ValPoint {
            iteration,
            sharpe,
            total_return: m.total_return,
            exposure: m.exposure,
            best,
        });
        write_history(&sel_path, &history)?;
        if iteration >= rep.num_iterations {
            break;
        }
    }
    let best_iteration = history
        .iter()
        .rev()
        .find(|p| p.best)
        .map_or(0, |p| p.iteration);
    Ok(SelectReport {
        best: out.join(run::BEST_DIR),
        best_iteration,
        iteration,
        stopped_early,
        val_bars: (val_lo, split),
        history,
    })
}

/// Evaluations since the last new best.
fn since_best(h: &[ValPoint]) -> usize {
    h.iter().rev().take_while(|p| !p.best).count()
}

fn read_history(path: &Path) -> Result<Vec<ValPoint>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::json(&format!("{} line {}", path.display(), i + 1), e))
        })
        .collect()
}

fn write_history(path: &Path, h: &[ValPoint]) -> Result<()> {
    let mut text = String::new();
    for p in h {
        text += &serde_json::to_string(p).map_err(|e| Error::json("selection", e))?;
        text.push('\n');
    }
    crate::atomic::write(path, text.as_bytes())
}

/// Copy checkpoint directory `from` (flat: files only) to `to`, through `to.tmp` and a rename.
fn copy_checkpoint(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|e| Error::io(from, e))?;
        let p = e.path();
        if p.is_file() {
            let dst = tmp.join(e.file_name());
            std::fs::copy(&p, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| Error::io(to, e))?;
    }
    std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e))
}
