/*!
Evaluating a trained checkpoint, as `marl-trade eval` does: the checkpoint's policy plays the chosen
period next to the scripted baselines (and any extra policies a caller adds), and the
[`EvalReport`] holds every backtest, the paired comparisons of the policy with each baseline
(Memmel's standard error of a Sharpe difference) and the decision IC of its choices (the look-ahead
guard, see [`super::compare`](mod@super::compare)). The report prints as the CLI's table ([`EvalReport::text`]) and
serialises to JSON ([`EvalReport::to_json`], written atomically by [`EvalReport::write_json`]).

```no_run
use marl_trade::eval::{EvalOptions, evaluate_checkpoint};

let report = evaluate_checkpoint(&EvalOptions::new("runs/signal"))?;
print!("{}", report.text());
assert!(report.decision_ic.z.abs() < 5.0, "suspiciously informative decisions");
# Ok::<(), marl_trade::Error>(())
```

Layer: above [`crate::config`] and [`crate::run`] (a checkpoint is evaluated under the configuration
stored beside it).
*/

use std::path::{Path, PathBuf};

use super::agent::{ActMode, AgentPolicy};
use super::backtest::{BacktestOptions, BacktestResult, Baseline, run_baselines, run_policy};
use super::baselines::BacktestPolicy;
use super::compare::{Comparison, DecisionIc, compare, decision_ic};
use super::metrics::{Metrics, format_table};
use crate::config::Config;
use crate::env::EnvSetup;
use crate::error::{Error, Result};
use crate::market::Market;

/// What [`evaluate_checkpoint`] evaluates, and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// A checkpoint directory, or a run directory (its `best/` checkpoint when it selected one,
    /// else its latest; `run::resolve_checkpoint`).
    pub checkpoint: PathBuf,
    /// `section.field=value` overrides of the checkpoint's configuration.
    pub overrides: Vec<String>,
    /// A data file (or several, comma-separated) instead of the configured source; it must hold
    /// the training symbols in the same order.
    pub data: Option<PathBuf>,
    /// Period, backend, and the seed of the random baseline (and of sampling).
    pub backtest: BacktestOptions,
    /// Sample actions from the policy (seeded by `backtest.seed`) instead of playing greedily.
    pub sample: bool,
    /// Play greedily by decision group ([`ActMode::Decision`]) instead of by single action
    /// (ignored with `sample`).
    pub decision: bool,
    /// The master directive the symbol policy plays under: `None` is `master.default_action`,
    /// `Some(Fixed(m))` directive `m`; `Some(Learned)` is refused here (a symbol checkpoint has no
    /// master: the error names the run's missing `master/latest`; a run that holds one is
    /// evaluated by [`super::master::evaluate_master_run`]).
    pub master: Option<super::master::MasterChoice>,
}

impl EvalOptions {
    /// Greedy evaluation of `checkpoint` on the test period with the configured data.
    pub fn new(checkpoint: impl Into<PathBuf>) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            overrides: Vec::new(),
            data: None,
            backtest: BacktestOptions::default(),
            sample: false,
            decision: false,
            master: None,
        }
    }
}

/// The outcome of an evaluation (module docs).
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// The checkpoint directory evaluated (empty for [`evaluate_policy`]).
    pub checkpoint: PathBuf,
    /// Where the data came from.
    pub data: String,
    /// Symbols, bars and paths of the data.
    pub shape: (usize, usize, usize),
    /// The evaluated policy.
    pub policy: BacktestResult,
    /// Extra policies played for reference (none from the CLI).
    pub others: Vec<BacktestResult>,
    /// The scripted baselines, in [`Baseline::ALL`] order.
    pub baselines: Vec<BacktestResult>,
    /// The policy against each baseline.
    pub comparisons: Vec<Comparison>,
    /// The information in the policy's decisions about the next bar.
    pub decision_ic: DecisionIc,
    /// Decisions per directive (48) of the learned master that played beside the policy (a
    /// joint checkpoint's); empty when the master played a fixed directive.
    pub directive_counts: Vec<usize>,
    /// The learned master's decisions by regime ([`evaluate_checkpoint`] of a joint checkpoint).
    pub directives_by_regime: Option<super::master::DirectivesByRegime>,
}

impl EvalReport {
    /// The baseline `b`'s backtest.
    pub fn baseline(&self, b: Baseline) -> Option<&BacktestResult> {
        self.baselines.iter().find(|r| r.metrics.policy == b.name())
    }

    /// The comparison of the policy with baseline `b`.
    pub fn comparison(&self, b: Baseline) -> Option<&Comparison> {
        self.comparisons.iter().find(|c| c.b == b.name())
    }

    /// Every metrics row: the policy, the extra policies, the baselines.
    pub fn rows(&self) -> Vec<Metrics> {
        std::iter::once(&self.policy)
            .chain(&self.others)
            .chain(&self.baselines)
            .map(|r| r.metrics.clone())
            .collect()
    }

    /// The metrics table, one comparison line per baseline and the decision IC, as the CLI prints.
    pub fn text(&self) -> String {
        let mut out = format_table(&self.rows());
        for c in &self.comparisons {
            out.push_str(&c.line());
            out.push('\n');
        }
        out.push_str(&self.decision_ic.line());
        out.push('\n');
        if let Some(line) = directive_line(&self.directive_counts) {
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(t) = &self.directives_by_regime {
            out.push_str(&t.text("learned"));
        }
        out
    }

    /// `{"checkpoint", "data", "metrics": [...], "comparisons": [...], "decision_ic": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "checkpoint": self.checkpoint.display().to_string(),
            "data": self.data,
            "first_bar": self.policy.first_bar,
            "last_bar": self.policy.last_bar,
            "metrics": self.rows(),
            "comparisons": self.comparisons,
            "decision_ic": self.decision_ic,
            "directive_counts": self.directive_counts,
        })
    }

    /// Write [`Self::to_json`] to `path`, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| Error::json("evaluation report", e))?;
        crate::atomic::write(path, text.as_bytes())
    }
}

/// Play `policy` (traced) and `others` on `market` next to every baseline, and compare.
pub fn evaluate_policy(
    setup: &EnvSetup,
    market: &Market,
    opts: &BacktestOptions,
    policy: AgentPolicy,
    others: &mut [&mut dyn BacktestPolicy],
) -> Result<EvalReport> {
    let (md, feats) = (market.data.clone(), market.features.clone());
    let mut policy = policy.with_trace();
    let mine = run_policy(setup, md.clone(), feats.clone(), opts, &mut policy)?;
    let ic = decision_ic(&policy.take_trace(), &md);
    let directive_counts = policy.directive_counts();
    let directives_by_regime = policy.directives_by_regime(&setup.master.position_caps);
    let others = others
        .iter_mut()
        .map(|p| run_policy(setup, md.clone(), feats.clone(), opts, &mut **p))
        .collect::<Result<Vec<_>>>()?;
    let baselines = run_baselines(setup, md.clone(), feats, opts, &Baseline::ALL)?;
    let comparisons = baselines
        .iter()
        .map(|b| compare(&mine, b))
        .collect::<Result<Vec<_>>>()?;
    Ok(EvalReport {
        checkpoint: PathBuf::new(),
        data: String::new(),
        shape: (md.n_symbols(), md.bars, md.paths),
        policy: mine,
        others,
        baselines,
        comparisons,
        decision_ic: ic,
        directive_counts,
        directives_by_regime,
    })
}

/// Evaluate a checkpoint under its own stored configuration (module docs).
pub fn evaluate_checkpoint(opts: &EvalOptions) -> Result<EvalReport> {
    let resolved = crate::run::resolve_checkpoint(&opts.checkpoint);
    // A joint training's checkpoint holds its master beside the symbol policy: it plays unless a
    // fixed directive is asked for.
    let joint = resolved
        .as_ref()
        .is_ok_and(|d| d.join(crate::train::mappo::MASTER_STATE_FILE).is_file());
    let directive = match opts.master {
        None => None,
        Some(super::master::MasterChoice::Fixed(m)) => Some(m as u32),
        Some(super::master::MasterChoice::Learned) if joint => None,
        Some(super::master::MasterChoice::Learned) => {
            // A run with a master is evaluated by `evaluate_master_run`; here it is an error that
            // names the missing file (or, for a run that has one, says where it goes).
            crate::run::latest_master_checkpoint(&opts.checkpoint)?;
            return Err(Error::invalid(format!(
                "{}: a learned master is evaluated with its run (eval::evaluate_master_run), not                  with a symbol checkpoint",
                opts.checkpoint.display()
            )));
        }
    };
    let dir = resolved?;
    let cfg = Config::from_file_with_overrides(dir.join(crate::run::CONFIG_FILE), &opts.overrides)?;
    let (market, origin) = Market::load_source(&cfg.data, opts.data.as_deref())?;
    let (name, mode) = if opts.sample {
        ("ppo-sampled", ActMode::Sample(opts.backtest.seed))
    } else if opts.decision {
        ("ppo-decision", ActMode::Decision)
    } else {
        ("ppo", ActMode::Greedy)
    };
    let learned = joint && directive.is_none();
    let directive = directive.unwrap_or(cfg.master.default_action);
    let device = opts.backtest.device.candle()?;
    let mut policy =
        AgentPolicy::from_checkpoint_on(name, &dir, &market, directive, &device)?.with_mode(mode);
    if learned {
        let (labels, source, names) = super::master::regime_labels(&cfg, &market.data);
        policy = policy.with_regime_labels(labels, market.data.bars, source, names);
    } else {
        policy = policy.with_fixed_master();
    }
    let mut report = evaluate_policy(&cfg.env_setup(), &market, &opts.backtest, policy, &mut [])?;
    report.checkpoint = dir;
    report.data = origin;
    Ok(report)
}

/// `master: learned, N decisions; directive d (share), ...` (the five most chosen), or `None`
/// when no learned master played.
fn directive_line(counts: &[usize]) -> Option<String> {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..counts.len()).filter(|&d| counts[d] > 0).collect();
    order.sort_by_key(|&d| (std::cmp::Reverse(counts[d]), d));
    let top: Vec<String> = order
        .iter()
        .take(5)
        .map(|&d| format!("{d} ({:.0}%)", 100.0 * counts[d] as f64 / total as f64))
        .collect();
    Some(format!(
        "master: learned (joint checkpoint), {total} decisions; most chosen directives: {}",
        top.join(", ")
    ))
}
