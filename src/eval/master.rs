/*!
Evaluating the portfolio master, as `marl-trade eval --master learned|fixed:<m>` does.

[`MasterChoice`] is what plays the master: `learned` (the run's master checkpoint,
`run::latest_master_checkpoint`, greedy: the most probable directive at each decision) or
`fixed:<m>` (directive `m` of the 48 throughout). [`evaluate_master_run`] plays it on a run that
holds a master (`marl-trade train-master`) with the symbol agents the master was trained with (the
scripted `train::mappo::CapFollower`, or the run's symbol checkpoint, `run::master_symbols`), one
decision every `master_ppo.decision_interval` bars, over
one episode per scenario spanning the chosen period (`env.scenarios` scenarios, their paths drawn
by the seed), next to the default directive (`master.default_action`) on the same episodes, and
reports Sharpe (with its standard error), mean and worst episode max drawdown and total return
([`train::mappo::evaluate_master`](crate::train::mappo::evaluate_master)), and the directive
distribution by regime: the synthetic market's hidden regime (bull, bear, crisis) when the data is
the configured synthetic generator's, else the VIX tercile of the bar over the data (low, mid,
high).

A run without a master checkpoint cannot play `learned`: the error names
`<run>/master/latest`. `fixed:<m>` on a run of symbol agents only is the ordinary evaluation
(`eval::evaluate_checkpoint`) with the symbol policy under directive `m`
([`super::EvalOptions::master`]).
*/

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::data::{DataSource, synthetic};
use crate::env::{BackendKind, MASTER_ACTIONS, Period, VecEnv};
use crate::error::{Error, ErrorKind, Result};
use crate::market::Market;
use crate::train::mappo::{self, MasterEval, MasterPlay};

/// Who plays the master (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterChoice {
    /// The run's learned master, greedily.
    Learned,
    /// One directive of the 48 throughout.
    Fixed(u8),
}

impl MasterChoice {
    /// `learned` or `fixed:<m>` with `m` in `0..48`; anything else is an
    /// [`ErrorKind::InvalidArgument`] error saying what is expected.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if t == "learned" {
            return Ok(Self::Learned);
        }
        let Some(m) = t.strip_prefix("fixed:") else {
            return Err(Error::invalid(format!(
                "--master `{t}`: expected `learned` or `fixed:<directive>` with a directive in 0..{MASTER_ACTIONS}"
            )));
        };
        let m: usize = m.trim().parse().map_err(|_| {
            Error::invalid(format!(
                "--master `{t}`: `{m}` is not a directive index (an integer in 0..{MASTER_ACTIONS})"
            ))
        })?;
        if m >= MASTER_ACTIONS {
            return Err(Error::invalid(format!(
                "--master `{t}`: directive {m} is not in 0..{MASTER_ACTIONS}"
            )));
        }
        Ok(Self::Fixed(m as u8))
    }

    /// `learned` or `fixed:<m>`.
    pub fn name(&self) -> String {
        match self {
            Self::Learned => "learned".into(),
            Self::Fixed(m) => format!("fixed:{m}"),
        }
    }
}

/// Whether run directory `run` holds a master checkpoint (`<run>/master/latest`).
pub fn has_master(run: &Path) -> bool {
    crate::run::eval_master_checkpoint(run).is_ok()
}

/// What [`evaluate_master_run`] evaluates.
#[derive(Debug, Clone)]
pub struct MasterEvalOptions {
    /// The run directory (its `config.toml` and, for `learned`, its `master/latest`).
    pub run: PathBuf,
    /// Who plays the master.
    pub choice: MasterChoice,
    /// `section.field=value` overrides of the run's configuration.
    pub overrides: Vec<String>,
    /// The bars played (default: the test period).
    pub period: Period,
    /// Seed of the episodes' paths.
    pub seed: u64,
}

impl MasterEvalOptions {
    /// `choice` on `run`'s test period, seed 0.
    pub fn new(run: impl Into<PathBuf>, choice: MasterChoice) -> Self {
        Self {
            run: run.into(),
            choice,
            overrides: Vec::new(),
            period: Period::Test,
            seed: 0,
        }
    }
}

/// The outcome of [`evaluate_master_run`].
#[derive(Debug, Clone)]
pub struct MasterEvalReport {
    /// The master checkpoint played (None for a fixed directive).
    pub checkpoint: Option<PathBuf>,
    /// Where the data came from.
    pub data: String,
    /// `(name, evaluation)`: the choice, then the default directive on the same episodes.
    pub rows: Vec<(String, MasterEval)>,
    /// What the regime labels are (`hidden regime` or `VIX tercile`).
    pub regime_source: &'static str,
    /// The labels' names, in label order.
    pub regime_names: Vec<&'static str>,
    /// The directive grid's per-position caps (`master.position_caps`), to show the decisions by
    /// cap.
    pub position_caps: Vec<f64>,
}

/// The regime mode names of the directive grid, in order (`m % 3`, docs/env-spec.md §3).
pub const MODE_NAMES: [&str; 3] = ["defensive", "neutral", "aggressive"];

impl MasterEvalReport {
    /// The metrics table and, for the first row, the directive distribution by regime.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<14} {:>8} {:>8} {:>11} {:>10} {:>10} {:>7}\n",
            "master", "Sharpe", "(se)", "mean maxDD", "worst DD", "return", "bars"
        );
        for (name, e) in &self.rows {
            out.push_str(&format!(
                "{:<14} {:>8.3} {:>8.3} {:>11.4} {:>10.4} {:>+10.4} {:>7}\n",
                name,
                e.sharpe,
                e.sharpe_se,
                e.max_drawdown,
                e.worst_drawdown,
                e.total_return,
                e.bars
            ));
        }
        if let Some((name, e)) = self.rows.first() {
            let table = DirectivesByRegime {
                source: self.regime_source,
                names: self.regime_names.clone(),
                counts: e.directive_by_label.clone(),
                position_caps: self.position_caps.clone(),
            };
            out.push_str(&table.text(name));
        }
        out
    }
}

/// A master's decisions per regime label and directive, as `eval` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectivesByRegime {
    /// What the labels are (`hidden regime` or `VIX tercile`).
    pub source: &'static str,
    /// The labels' names, in label order.
    pub names: Vec<&'static str>,
    /// Decisions per label and directive, `[labels][48]`.
    pub counts: Vec<Vec<usize>>,
    /// The directive grid's per-position caps (`master.position_caps`).
    pub position_caps: Vec<f64>,
}

impl DirectivesByRegime {
    /// One line per label: decisions, regime-mode shares, cap shares, the three most chosen
    /// directives; headed by `directives of `who` by <source>`.
    pub fn text(&self, who: &str) -> String {
        let mut out = format!(
            "directives of `{who}` by {} (decisions; regime-mode shares; cap shares; most chosen directives):\n",
            self.source
        );
        for (l, counts) in self.counts.iter().enumerate() {
            let total: usize = counts.iter().sum();
            let lname = self.names.get(l).copied().unwrap_or("?");
            if total == 0 {
                out.push_str(&format!("  {lname:<8} 0\n"));
                continue;
            }
            // Directive m has regime mode m % 3 and cap index (m / 3) % 4 (docs/env-spec.md §3).
            let mut modes = [0usize; 3];
            for (m, &c) in counts.iter().enumerate() {
                modes[m % 3] += c;
            }
            let mut top: Vec<(usize, usize)> = counts
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, c)| c > 0)
                .collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let top: Vec<String> = top
                .iter()
                .take(3)
                .map(|(m, c)| format!("{m} ({:.0}%)", 100.0 * *c as f64 / total as f64))
                .collect();
            let caps: Vec<String> = self
                .position_caps
                .iter()
                .enumerate()
                .map(|(ci, c)| {
                    let k: usize = (0..MASTER_ACTIONS.min(counts.len()))
                        .filter(|m| (m / 3) % 4 == ci)
                        .map(|m| counts[m])
                        .sum();
                    format!("cap {c} {:.0}%", 100.0 * k as f64 / total as f64)
                })
                .collect();
            out.push_str(&format!(
                "  {lname:<8} {total:>6}; {} {:.0}%, {} {:.0}%, {} {:.0}%; {}; {}\n",
                MODE_NAMES[0],
                100.0 * modes[0] as f64 / total as f64,
                MODE_NAMES[1],
                100.0 * modes[1] as f64 / total as f64,
                MODE_NAMES[2],
                100.0 * modes[2] as f64 / total as f64,
                caps.join(", "),
                top.join(", ")
            ));
        }
        out
    }
}

/// Regime labels `[P * T]` of `md` and their names: the hidden regime of the configured
/// synthetic generator when `cfg`'s data is that generator's (checked: the regenerated market must
/// equal `md`), else the VIX tercile of each bar over all bars.
pub(crate) fn regime_labels(
    cfg: &Config,
    md: &crate::data::MarketData,
) -> (Vec<u8>, &'static str, Vec<&'static str>) {
    if cfg.data.source == DataSource::Synthetic {
        let (gen_md, labels) =
            synthetic::generate_with_regimes(&cfg.data.synthetic, &cfg.data.benchmark);
        if gen_md.close == md.close && labels.len() == md.paths * md.bars {
            return (labels, "hidden regime", synthetic::REGIME_NAMES.to_vec());
        }
    }
    let m = crate::data::MACRO;
    let vix: Vec<f32> = (0..md.paths * md.bars)
        .map(|i| md.macro_series[i * m + 1])
        .collect();
    let mut sorted = vix.clone();
    sorted.sort_by(f32::total_cmp);
    let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f) as usize];
    let (lo, hi) = (q(1.0 / 3.0), q(2.0 / 3.0));
    let labels = vix
        .iter()
        .map(|&v| u8::from(v > lo) + u8::from(v > hi))
        .collect();
    (
        labels,
        "VIX tercile",
        vec!["low VIX", "mid VIX", "high VIX"],
    )
}

/// Play `opts.choice` on the run `opts.run` (module docs).
pub fn evaluate_master_run(opts: &MasterEvalOptions) -> Result<MasterEvalReport> {
    let cfg_path = opts.run.join(crate::run::CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(Error::new(
            ErrorKind::Checkpoint,
            "not a run directory: it has no config.toml",
        )
        .with_file(&cfg_path));
    }
    let cfg = Config::from_file_with_overrides(&cfg_path, &opts.overrides)?;
    let loaded = match opts.choice {
        MasterChoice::Learned => {
            let dir = crate::run::eval_master_checkpoint(&opts.run)?;
            let (net, _vm, st) = mappo::load_master_net(&dir)?;
            Some((dir, net, st))
        }
        MasterChoice::Fixed(_) => None,
    };
    let interval = match &loaded {
        Some((_, _, st)) => st.ppo.decision_interval,
        None => cfg.master_ppo.decision_interval,
    };
    let (market, origin) = Market::load_source(&cfg.data, None)?;
    let (labels, regime_source, regime_names) = regime_labels(&cfg, &market.data);
    let mut ecfg = cfg.clone();
    // One episode per scenario over the whole period (truncated at its end).
    ecfg.env.episode_len = market.data.bars;
    let mut env = VecEnv::new(
        &ecfg.env_setup(),
        market.data.clone(),
        market.features.clone(),
        opts.period,
        BackendKind::Cpu,
    )?;
    let mut driver = crate::run::master_symbols(&opts.run, &market)?;
    let play = match (&loaded, opts.choice) {
        (Some((_, net, _)), _) => MasterPlay::Greedy(net),
        (None, MasterChoice::Fixed(m)) => MasterPlay::Fixed(m),
        (None, MasterChoice::Learned) => unreachable!("a learned master is loaded above"),
    };
    let mine = mappo::evaluate_master(
        &mut env,
        &mut driver,
        play,
        interval,
        opts.seed,
        Some(&labels),
    )?;
    let default = cfg.master.default_action as u8;
    let base = mappo::evaluate_master(
        &mut env,
        &mut driver,
        MasterPlay::Fixed(default),
        interval,
        opts.seed,
        Some(&labels),
    )?;
    Ok(MasterEvalReport {
        checkpoint: loaded.map(|(d, _, _)| d),
        data: origin,
        rows: vec![
            (opts.choice.name(), mine),
            (format!("default:{default}"), base),
        ],
        regime_source,
        regime_names,
        position_caps: cfg.master.position_caps.clone(),
    })
}
