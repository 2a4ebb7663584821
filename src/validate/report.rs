/*!
The go/no-go report (`marl-trade report RUN_OR_WALKFORWARD_DIR --out DIR`): `report.md`,
`report.json` and PNG plots of a walk-forward directory (its stitched out-of-sample curves,
[`super::walkforward`]) or of a single training run (its latest checkpoint replayed greedily on the
test period next to the same baselines).

# Where the numbers come from

Every number of the criteria is read from the report's own tables ([`Report`]'s fields, which
`report.md` prints and `report.json` holds): the policy's overall metrics per seed and their mean
over seeds ([`Report::stats`]), the per-fold Sharpe ratios ([`Report::folds`]), the comparisons
with the baselines ([`Report::vs`]), the reward-signal alarms of every run's `metrics.jsonl`
([`crate::train::signals`], default thresholds) and the gradient norms logged there, the
deflated Sharpe ratio, and the risk-limit checks of the backtests.

# Criteria (the design's go/no-go list, then two extra lines)

| criterion | value | GO when |
|---|---|---|
| total return > 15% | mean over seeds of the out-of-sample total return | `> 0.15` |
| Sharpe > 0.8 | mean over seeds of the out-of-sample annualised Sharpe ratio | `> 0.8` |
| max drawdown < 25% | mean over seeds of the out-of-sample maximum drawdown | `< 0.25` |
| symbol agents Sharpe > 0.6 on walk-forward | mean over folds of the fold's mean Sharpe over seeds | `> 0.6`; NOT EVALUABLE for a single run |
| reward diagnostics stable | alarms of `train::signals` over every run | none |
| master cuts drawdown > 15% vs baseline | joint runs (`[joint]`): `1 - mean(max DD with the learned master) / mean(max DD of the same checkpoints under master.default_action)` over every backtest; the smallest paired Sharpe z (master - default) | cut `> 0.15` and every z `> -2`; NOT EVALUABLE without a learned master |
| no-go: reward gradients collapse | per run, mean `grad_norm` over the last fifth of the iterations / over the first fifth; `collapse` alarms | ratio `>= 0.01` everywhere and no `collapse` alarm |
| no-go: agents ignore costs | `ignores-costs` alarms of `train::signals` | none |
| no-go: MAPPO diverges | per joint run, the master's logged losses (`master.*` in `metrics.jsonl`): non-finite values, and its mean value loss over the last fifth of its updates / over the first fifth | every loss finite and the ratio `<= 10`; NOT EVALUABLE without master updates |
| (extra) beats 1/N rebalanced beyond noise | per seed, the Sharpe difference with `rebalanced` over its Memmel standard error | `z > 2` for every seed |
| (extra) risk limits held | [`crate::eval::LimitCheck`] of every backtest step | no violation |

The overall line is NO-GO when any criterion is NO-GO; otherwise, when any criterion is NOT
EVALUABLE, it says so and is not a GO; GO only when every criterion is GO.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::walkforward::MasterVsDefault;

use super::plot;
use super::walkforward::{
    self, Deflated, SeedStats, StitchedCurve, VsBaseline, WF_BASELINES, run_dir,
};
use crate::ablate::Stat;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::{AgentPolicy, BacktestOptions, Comparison, Metrics, compare, run_baselines};
use crate::market::Market;
use crate::reward::COMPONENT_NAMES;
use crate::train::metrics::read_metrics;
use crate::train::signals::{AlarmKind, SignalThresholds};

/// A criterion's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Met.
    Go,
    /// Not met.
    NoGo,
    /// Cannot be evaluated with what exists.
    NotEvaluable,
}

impl Verdict {
    /// `GO`, `NO-GO` or `NOT EVALUABLE`.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Go => "GO",
            Verdict::NoGo => "NO-GO",
            Verdict::NotEvaluable => "NOT EVALUABLE",
        }
    }
}

/// One line of the go/no-go list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// The criterion, as the design words it.
    pub name: String,
    /// The number compared with the threshold, when there is one.
    pub value: Option<f64>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, with the numbers.
    pub reason: String,
}

impl Criterion {
    /// `GO  total return > 15%: ...`.
    pub fn line(&self) -> String {
        format!("{:<13} {}: {}", self.verdict.word(), self.name, self.reason)
    }
}

/// One fold's row of the per-fold table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldRow {
    /// Fold index.
    pub fold: usize,
    /// Test bars (first decision bar, last bar).
    pub test: (usize, usize),
    /// The policy's Sharpe over seeds.
    pub sharpe: Stat,
    /// The policy's total return over seeds.
    pub total_return: Stat,
    /// The policy's turnover over seeds.
    pub turnover: Stat,
    /// The policy's costs over seeds.
    pub costs_paid: Stat,
    /// Each baseline's (name, Sharpe, turnover, costs).
    pub baselines: Vec<(String, f64, f64, f64)>,
}

/// A reward-signal alarm of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAlarm {
    /// The run directory.
    pub run: String,
    /// The alarm's kind.
    pub kind: String,
    /// Its term.
    pub term: String,
    /// Its sentence.
    pub detail: String,
}

/// Gradient norms of one run: mean over the first and the last fifth of its iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradNorms {
    /// The run directory.
    pub run: String,
    /// Mean over the first fifth.
    pub early: f64,
    /// Mean over the last fifth.
    pub late: f64,
}

/// The master's training in one joint run (`master.*` of its `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappoRun {
    /// The run directory.
    pub run: String,
    /// Master updates logged.
    pub updates: usize,
    /// Updates with a non-finite loss or entropy.
    pub non_finite: usize,
    /// Mean value loss over the first fifth of the updates.
    pub value_loss_early: f64,
    /// Mean value loss over the last fifth.
    pub value_loss_late: f64,
}

/// The go/no-go report (module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The directory reported on.
    pub source: String,
    /// `walk-forward` or `run`.
    pub kind: String,
    /// The policy's out-of-sample metrics per seed (stitched for a walk-forward).
    pub policy: Vec<Metrics>,
    /// Their mean ± sd over seeds.
    pub stats: SeedStats,
    /// The baselines' out-of-sample metrics.
    pub baselines: Vec<Metrics>,
    /// The policy against each baseline, over seeds.
    pub vs: Vec<VsBaseline>,
    /// Per-seed comparisons with `rebalanced` (Sharpe z).
    pub z_vs_rebalanced: Vec<f64>,
    /// Per-fold rows (one row for a single run).
    pub folds: Vec<FoldRow>,
    /// The deflated Sharpe ratio of the best seed.
    pub deflated: Option<Deflated>,
    /// Reward-signal alarms of every run.
    pub alarms: Vec<RunAlarm>,
    /// Runs whose `metrics.jsonl` was analysed.
    pub runs_analysed: usize,
    /// Gradient norms per run (iterations that updated the symbol agents only).
    pub grad_norms: Vec<GradNorms>,
    /// Every backtest's learned master against the default directive (joint runs).
    #[serde(default)]
    pub master: Vec<MasterVsDefault>,
    /// The master's training per joint run.
    #[serde(default)]
    pub mappo: Vec<MappoRun>,
    /// Mean reward-term share per iteration over the runs: term -> [(iteration, share)].
    pub reward_shares: BTreeMap<String, Vec<(usize, f64)>>,
    /// Requested symbol actions (HOLD, BUY_SMALL, ...).
    pub actions: [u64; crate::env::N_ACTIONS],
    /// Every backtest step's risk limits held.
    pub limits_held: bool,
    /// The go/no-go lines.
    pub criteria: Vec<Criterion>,
    /// The overall line.
    pub overall: String,
    /// The PNG files written (names inside the output directory).
    pub plots: Vec<String>,
    /// Out-of-sample curves (path 0) of the policy per seed and of the baselines.
    #[serde(skip)]
    pub curves: Vec<StitchedCurve>,
}

/// Build the report of `dir`: a walk-forward directory (it holds `walkforward.toml`) or a run
/// directory (its latest checkpoint is replayed on the test period; `data` replaces its data
/// source).
pub fn build_report(dir: &Path, data: Option<&Path>) -> Result<Report> {
    if dir.join(walkforward::PLAN_FILE).is_file() {
        from_walk_forward(dir)
    } else {
        from_run(dir, data)
    }
}

fn from_walk_forward(dir: &Path) -> Result<Report> {
    let wf = walkforward::load_report(dir)?;
    let plan = walkforward::read_plan(dir)?;
    if wf.overall.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no seed has a result in every fold yet ({} of {} runs done): run the walk-forward to the end first",
            dir.display(),
            wf.runs_done,
            wf.runs_total
        )));
    }
    let mut runs = Vec::new();
    for f in &plan.folds {
        for k in 0..plan.spec.seeds {
            runs.push(run_dir(dir, f.index, k));
        }
    }
    let folds = wf
        .folds
        .iter()
        .map(|f| FoldRow {
            fold: f.fold.index,
            test: (f.fold.test_lo, f.fold.test_last),
            sharpe: f.stats.sharpe,
            total_return: f.stats.total_return,
            turnover: f.stats.turnover,
            costs_paid: f.stats.costs_paid,
            baselines: f
                .baselines
                .iter()
                .map(|b| (b.policy.clone(), b.sharpe, b.turnover, b.costs_paid))
                .collect(),
        })
        .collect();
    let z_vs_rebalanced = {
        // Recompute per seed from the stitched curves' comparisons (the report keeps only stats).
        let mut z = Vec::new();
        for s in &wf.stitched {
            if let Some(b) = wf
                .stitched_baselines
                .iter()
                .find(|b| b.name == "rebalanced")
            {
                z.push(z_of(
                    &s.curve,
                    &b.curve,
                    s.bars[0],
                    *s.bars.last().unwrap_or(&0),
                )?);
            }
        }
        z
    };
    let mut curves = wf.stitched.clone();
    curves.extend(wf.stitched_baselines.iter().cloned());
    finish(
        Report {
            source: dir.display().to_string(),
            kind: "walk-forward".into(),
            stats: wf.overall_stats.clone(),
            policy: wf.overall.clone(),
            baselines: wf.overall_baselines.clone(),
            vs: wf.overall_vs.clone(),
            z_vs_rebalanced,
            folds,
            deflated: wf.deflated.clone(),
            alarms: Vec::new(),
            runs_analysed: 0,
            grad_norms: Vec::new(),
            master: wf.master.clone(),
            mappo: Vec::new(),
            reward_shares: BTreeMap::new(),
            actions: wf.actions,
            limits_held: wf.limits_held,
            criteria: Vec::new(),
            overall: String::new(),
            plots: Vec::new(),
            curves,
        },
        &runs,
    )
}

/// The Memmel z of curve `a` against `b` (one path each, same bars).
fn z_of(a: &crate::eval::Curve, b: &crate::eval::Curve, first: usize, last: usize) -> Result<f64> {
    let ra = crate::eval::BacktestResult::from_curves("a", vec![a.clone()], first, last);
    let rb = crate::eval::BacktestResult::from_curves("b", vec![b.clone()], first, last);
    Ok(compare(&ra, &rb)?.sharpe_z())
}

fn from_run(dir: &Path, data: Option<&Path>) -> Result<Report> {
    let ck = crate::run::resolve_checkpoint(dir)?;
    let cfg = Config::from_file(ck.join(crate::run::CONFIG_FILE))?;
    let (market, _) = Market::load_source(&cfg.data, data)?;
    let opts = BacktestOptions::default();
    let mut policy = AgentPolicy::from_checkpoint("ppo", &ck, &market, cfg.master.default_action)?;
    let (bt, actions) = walkforward::run_counting(&cfg, &market, &opts, &mut policy)?;
    let master = MasterVsDefault::measure(&cfg, &market, &opts, &ck, &policy, &bt)?;
    let bs = run_baselines(
        &cfg.env_setup(),
        market.data.clone(),
        market.features.clone(),
        &opts,
        &WF_BASELINES,
    )?;
    let comps: Vec<Comparison> = bs.iter().map(|b| compare(&bt, b)).collect::<Result<_>>()?;
    let vs = comps
        .iter()
        .map(|c| VsBaseline {
            baseline: c.b.clone(),
            sharpe_diff: Stat::of([c.sharpe_diff]),
            sharpe_z: Stat::of([c.sharpe_z()]),
            log_return_diff: Stat::of([c.log_return_diff]),
        })
        .collect();
    let z_vs_rebalanced = comps
        .iter()
        .filter(|c| c.b == "rebalanced")
        .map(Comparison::sharpe_z)
        .collect();
    let one = |r: &crate::eval::BacktestResult, name: &str| -> Result<StitchedCurve> {
        let c = r
            .curves
            .first()
            .ok_or_else(|| Error::invalid("a backtest without a path"))?;
        walkforward::stitch(name, &[(r.first_bar, c)])
    };
    let mut curves = vec![one(&bt, "ppo/seed-0")?];
    for b in &bs {
        curves.push(one(b, &b.metrics.policy)?);
    }
    let policy_m = vec![bt.metrics.clone()];
    let folds = vec![FoldRow {
        fold: 0,
        test: (bt.first_bar, bt.last_bar),
        sharpe: Stat::of([bt.metrics.sharpe]),
        total_return: Stat::of([bt.metrics.total_return]),
        turnover: Stat::of([bt.metrics.turnover]),
        costs_paid: Stat::of([bt.metrics.costs_paid]),
        baselines: bs
            .iter()
            .map(|b| {
                (
                    b.metrics.policy.clone(),
                    b.metrics.sharpe,
                    b.metrics.turnover,
                    b.metrics.costs_paid,
                )
            })
            .collect(),
    }];
    // One run is one trial on one curve: no selection among seeds to deflate for.
    let deflated = None;
    finish(
        Report {
            source: dir.display().to_string(),
            kind: "run".into(),
            stats: SeedStats::of(&policy_m),
            policy: policy_m,
            baselines: bs.iter().map(|b| b.metrics.clone()).collect(),
            vs,
            z_vs_rebalanced,
            folds,
            deflated,
            alarms: Vec::new(),
            runs_analysed: 0,
            grad_norms: Vec::new(),
            master: master.into_iter().collect(),
            mappo: Vec::new(),
            reward_shares: BTreeMap::new(),
            actions,
            limits_held: bt.limits.held() && bs.iter().all(|b| b.limits.held()),
            criteria: Vec::new(),
            overall: String::new(),
            plots: Vec::new(),
            curves,
        },
        &[dir.to_path_buf()],
    )
}

/// Add the training diagnostics of `runs` and the criteria.
fn finish(mut r: Report, runs: &[PathBuf]) -> Result<Report> {
    let th = SignalThresholds::default();
    let mut shares: BTreeMap<String, BTreeMap<usize, (f64, usize)>> = BTreeMap::new();
    for run in runs {
        let mpath = run.join(crate::run::METRICS_JSONL);
        if !mpath.is_file() {
            continue;
        }
        r.runs_analysed += 1;
        let sig = crate::run::analyze_run(run, &th)?;
        for a in &sig.alarms {
            r.alarms.push(RunAlarm {
                run: run.display().to_string(),
                kind: a.kind.name().to_string(),
                term: a.term.clone(),
                detail: a.detail.clone(),
            });
        }
        let ms = read_metrics(&mpath)?;
        // A joint schedule may hold the symbol agents fixed (no update, `epochs` 0): their
        // gradient norms are those of the iterations that updated.
        let updated: Vec<&crate::train::Metrics> = ms.iter().filter(|m| m.epochs > 0).collect();
        let n = updated.len();
        if n >= 5 {
            let fifth = (n / 5).max(1);
            let mean = |xs: &[&crate::train::Metrics]| {
                xs.iter().map(|m| m.grad_norm).sum::<f64>() / xs.len() as f64
            };
            r.grad_norms.push(GradNorms {
                run: run.display().to_string(),
                early: mean(&updated[..fifth]),
                late: mean(&updated[n - fifth..]),
            });
        }
        if let Some(m) = MappoRun::of(run, &ms) {
            r.mappo.push(m);
        }
        for m in &ms {
            for t in COMPONENT_NAMES {
                if let Some(s) = m.env.get(&format!("reward_share.{t}")) {
                    let e = shares
                        .entry(t.to_string())
                        .or_default()
                        .entry(m.iteration)
                        .or_insert((0.0, 0));
                    e.0 += s;
                    e.1 += 1;
                }
            }
        }
    }
    r.reward_shares = shares
        .into_iter()
        .map(|(t, v)| {
            (
                t,
                v.into_iter().map(|(i, (s, k))| (i, s / k as f64)).collect(),
            )
        })
        .collect();
    r.criteria = criteria(&r);
    r.overall = overall(&r.criteria);
    Ok(r)
}

fn crit(name: &str, value: Option<f64>, verdict: Verdict, reason: String) -> Criterion {
    Criterion {
        name: name.into(),
        value,
        verdict,
        reason,
    }
}

fn threshold(name: &str, v: f64, ok: bool, what: String) -> Criterion {
    crit(
        name,
        Some(v),
        if ok { Verdict::Go } else { Verdict::NoGo },
        what,
    )
}

/// The go/no-go lines of a report (module docs), from its own tables.
pub fn criteria(r: &Report) -> Vec<Criterion> {
    let n = r.policy.len();
    let wf = r.kind == "walk-forward";
    let oos = if wf {
        "stitched walk-forward out-of-sample"
    } else {
        "held-out test period"
    };
    let mut out = Vec::new();
    let tr = r.stats.total_return.mean;
    out.push(threshold(
        "total return > 15%",
        tr,
        tr > 0.15,
        format!(
            "{oos} total return {:.2}% (mean over {n} seed(s), sd {})",
            100.0 * tr,
            fmt_pct(r.stats.total_return.std)
        ),
    ));
    let sh = r.stats.sharpe.mean;
    out.push(threshold(
        "Sharpe > 0.8",
        sh,
        sh > 0.8,
        format!(
            "{oos} annualised Sharpe {sh:.3} (mean over {n} seed(s), sd {})",
            fmt(r.stats.sharpe.std)
        ),
    ));
    let dd = r.stats.max_drawdown.mean;
    out.push(threshold(
        "max drawdown < 25%",
        dd,
        dd < 0.25,
        format!(
            "{oos} maximum drawdown {:.2}% (mean over {n} seed(s), sd {})",
            100.0 * dd,
            fmt_pct(r.stats.max_drawdown.std)
        ),
    ));
    if wf {
        let per: Vec<f64> = r.folds.iter().map(|f| f.sharpe.mean).collect();
        let m = Stat::of(per.iter().copied());
        let worst = per.iter().copied().fold(f64::INFINITY, f64::min);
        out.push(threshold(
            "symbol agents Sharpe > 0.6 on walk-forward",
            m.mean,
            m.mean > 0.6,
            format!(
                "mean over {} folds of the fold Sharpe (mean over seeds) {:.3}, sd over folds {}, worst fold {:.3}",
                per.len(),
                m.mean,
                fmt(m.std),
                worst
            ),
        ));
    } else {
        out.push(crit(
            "symbol agents Sharpe > 0.6 on walk-forward",
            None,
            Verdict::NotEvaluable,
            "a single run has no walk-forward: run `marl-trade walkforward` and report on its directory".into(),
        ));
    }
    if r.runs_analysed == 0 {
        out.push(crit(
            "reward diagnostics stable",
            None,
            Verdict::NotEvaluable,
            "no metrics.jsonl found".into(),
        ));
    } else {
        let k = r.alarms.len();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &r.alarms {
            *kinds.entry(a.kind.as_str()).or_default() += 1;
        }
        out.push(crit(
            "reward diagnostics stable",
            Some(k as f64),
            if k == 0 { Verdict::Go } else { Verdict::NoGo },
            if k == 0 {
                format!(
                    "no reward-signal alarm in {} run(s) (train::signals, default thresholds)",
                    r.runs_analysed
                )
            } else {
                format!(
                    "{k} reward-signal alarm(s) in {} run(s): {}",
                    r.runs_analysed,
                    kinds
                        .iter()
                        .map(|(k, v)| format!("{k} x{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ));
    }
    if r.master.is_empty() {
        out.push(crit(
            "master cuts drawdown > 15% vs baseline",
            None,
            Verdict::NotEvaluable,
            "no learned master in these runs (joint.enabled = false: the master plays \
             master.default_action in every backtest; `marl-trade train-master` trains one over \
             fixed symbol agents)"
                .into(),
        ));
    } else {
        let k = r.master.len() as f64;
        let dd = r.master.iter().map(|m| m.max_drawdown).sum::<f64>() / k;
        let dd0 = r.master.iter().map(|m| m.default_max_drawdown).sum::<f64>() / k;
        let cut = if dd0 > 0.0 { 1.0 - dd / dd0 } else { 0.0 };
        let zmin = r
            .master
            .iter()
            .map(|m| m.sharpe_z)
            .fold(f64::INFINITY, f64::min);
        out.push(crit(
            "master cuts drawdown > 15% vs baseline",
            Some(cut),
            if cut > 0.15 && zmin > -2.0 {
                Verdict::Go
            } else {
                Verdict::NoGo
            },
            format!(
                "learned master vs the same checkpoints under master.default_action over {} \
                 backtest(s): mean max drawdown {:.2}% vs {:.2}% (cut {:.1}%, GO above 15%), \
                 smallest paired Sharpe z {zmin:+.2} (GO above -2)",
                r.master.len(),
                100.0 * dd,
                100.0 * dd0,
                100.0 * cut
            ),
        ));
    }
    let collapse = r
        .alarms
        .iter()
        .filter(|a| a.kind == AlarmKind::Collapse.name())
        .count();
    let ratios: Vec<f64> = r
        .grad_norms
        .iter()
        .map(|g| {
            if g.early > 0.0 {
                g.late / g.early
            } else {
                f64::NAN
            }
        })
        .collect();
    let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    if r.grad_norms.is_empty() && collapse == 0 {
        out.push(crit(
            "no-go: reward gradients collapse",
            None,
            Verdict::NotEvaluable,
            "no run with >= 5 logged iterations".into(),
        ));
    } else {
        let bad =
            collapse > 0 || (!r.grad_norms.is_empty() && (min_ratio.is_nan() || min_ratio < 0.01));
        out.push(crit(
            "no-go: reward gradients collapse",
            Some(min_ratio),
            if bad { Verdict::NoGo } else { Verdict::Go },
            format!(
                "smallest late/early gradient-norm ratio over {} run(s) {:.3} (collapse below 0.01), {collapse} reward-term collapse alarm(s)",
                r.grad_norms.len(),
                min_ratio
            ),
        ));
    }
    if r.runs_analysed == 0 {
        out.push(crit(
            "no-go: agents ignore costs",
            None,
            Verdict::NotEvaluable,
            "no metrics.jsonl found".into(),
        ));
    } else {
        let k = r
            .alarms
            .iter()
            .filter(|a| a.kind == AlarmKind::IgnoresCosts.name())
            .count();
        out.push(crit(
            "no-go: agents ignore costs",
            Some(k as f64),
            if k == 0 { Verdict::Go } else { Verdict::NoGo },
            format!(
                "{k} ignores-costs alarm(s) (turnover rising while the cost term grows) in {} run(s)",
                r.runs_analysed
            ),
        ));
    }
    if r.mappo.is_empty() {
        out.push(crit(
            "no-go: MAPPO diverges",
            None,
            Verdict::NotEvaluable,
            "no master update in these runs' metrics (joint.enabled = false; `marl-trade \
             train-master` trains the master separately)"
                .into(),
        ));
    } else {
        let bad: usize = r.mappo.iter().map(|m| m.non_finite).sum();
        let ratio = r
            .mappo
            .iter()
            .map(|m| m.value_loss_late / m.value_loss_early.max(1e-12))
            .fold(0.0, f64::max);
        out.push(crit(
            "no-go: MAPPO diverges",
            Some(ratio),
            if bad == 0 && ratio <= 10.0 {
                Verdict::Go
            } else {
                Verdict::NoGo
            },
            format!(
                "{} joint run(s), {} master updates: {bad} with a non-finite loss; largest \
                 late/early master value-loss ratio {ratio:.2} (NO-GO above 10)",
                r.mappo.len(),
                r.mappo.iter().map(|m| m.updates).sum::<usize>()
            ),
        ));
    }
    let zmin = r
        .z_vs_rebalanced
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    if r.z_vs_rebalanced.is_empty() {
        out.push(crit(
            "(extra) beats 1/N rebalanced beyond noise",
            None,
            Verdict::NotEvaluable,
            "no comparison with rebalanced".into(),
        ));
    } else {
        out.push(threshold(
            "(extra) beats 1/N rebalanced beyond noise",
            zmin,
            zmin > 2.0,
            format!(
                "smallest Sharpe-difference z vs weekly-rebalanced 1/N over {} seed(s) {zmin:+.2} (Memmel; needs > 2); mean difference {}",
                r.z_vs_rebalanced.len(),
                r.vs
                    .iter()
                    .find(|v| v.baseline == "rebalanced")
                    .map_or("-".into(), |v| format!("{:+.3}", v.sharpe_diff.mean))
            ),
        ));
    }
    out.push(crit(
        "(extra) risk limits held",
        None,
        if r.limits_held {
            Verdict::Go
        } else {
            Verdict::NoGo
        },
        if r.limits_held {
            "position cap, leverage, open positions and kill switch held on every backtest step"
                .into()
        } else {
            "a risk limit was violated in a backtest (see the runs' results)".into()
        },
    ));
    out
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "-".into()
    }
}

fn fmt_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "-".into()
    }
}

/// The overall line (module docs).
pub fn overall(c: &[Criterion]) -> String {
    let no = c.iter().filter(|c| c.verdict == Verdict::NoGo).count();
    let ne = c
        .iter()
        .filter(|c| c.verdict == Verdict::NotEvaluable)
        .count();
    if no > 0 {
        format!("NO-GO: {no} criterion/criteria not met ({ne} not evaluable)")
    } else if ne > 0 {
        format!("NOT A GO: every evaluable criterion is met, but {ne} cannot be evaluated yet")
    } else {
        "GO: every criterion is met".into()
    }
}

impl Report {
    /// The report as Markdown (what `report.md` holds).
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Go/no-go report\n\nSource: `{}` ({}).\n\n## Verdict\n\n**{}**\n\n",
            self.source, self.kind, self.overall
        );
        s += "| verdict | criterion | reason |\n|---|---|---|\n";
        for c in &self.criteria {
            s += &format!("| {} | {} | {} |\n", c.verdict.word(), c.name, c.reason);
        }
        s += "\n## Out-of-sample metrics\n\n| policy | return % | sharpe | sortino | max dd % | turnover/y | exposure | costs % | killed |\n|---|---|---|---|---|---|---|---|---|\n";
        let row = |m: &Metrics| {
            format!(
                "| {} | {:.2} | {:.3} | {:.3} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} |\n",
                m.policy,
                100.0 * m.total_return,
                m.sharpe,
                m.sortino,
                100.0 * m.max_drawdown,
                m.turnover,
                m.exposure,
                100.0 * m.costs_paid,
                m.killed
            )
        };
        for (k, m) in self.policy.iter().enumerate() {
            let mut m = m.clone();
            m.policy = format!("ppo seed {k}");
            s += &row(&m);
        }
        s += &format!(
            "| **ppo mean ± sd** | {} | {} | | {} | {} | | {} | |\n",
            self.stats.total_return.text(100.0, 2),
            self.stats.sharpe.text(1.0, 3),
            self.stats.max_drawdown.text(100.0, 2),
            self.stats.turnover.text(1.0, 2),
            self.stats.costs_paid.text(100.0, 3)
        );
        for m in &self.baselines {
            s += &row(m);
        }
        s += "\n## Policy vs baselines (paired, Memmel standard error)\n\n| baseline | Sharpe difference (mean ± sd over seeds) | z (mean ± sd) | log-return difference % |\n|---|---|---|---|\n";
        for v in &self.vs {
            s += &format!(
                "| {} | {} | {} | {} |\n",
                v.baseline,
                v.sharpe_diff.text(1.0, 3),
                v.sharpe_z.text(1.0, 2),
                v.log_return_diff.text(100.0, 2)
            );
        }
        if let Some(d) = &self.deflated {
            s += &format!(
                "\n## Deflated Sharpe ratio\n\nBest of N = {} trials (seeds): seed {}, Sharpe {:.4} per bar ({:.3} annualised) over T = {} returns, skewness {:.3}, kurtosis {:.3}; variance of the trials' per-bar Sharpe {:.3e}; expected maximum of N unskilled trials SR0 = {:.4} per bar; **DSR = {:.4}** (the probability that the true Sharpe ratio exceeds SR0; Bailey & López de Prado 2014).\n",
                d.trials,
                d.seed,
                d.sharpe_per_bar,
                d.sharpe_annual,
                d.returns,
                d.skew,
                d.kurtosis,
                d.trials_sharpe_var,
                d.sr0,
                d.dsr
            );
        }
        s += "\n## Per fold\n\n| fold | test bars | sharpe (mean ± sd) | return % | turnover/y | costs % | baselines' sharpe |\n|---|---|---|---|---|---|---|\n";
        for f in &self.folds {
            s += &format!(
                "| {} | {}..={} | {} | {} | {} | {} | {} |\n",
                f.fold,
                f.test.0,
                f.test.1,
                f.sharpe.text(1.0, 3),
                f.total_return.text(100.0, 2),
                f.turnover.text(1.0, 2),
                f.costs_paid.text(100.0, 3),
                f.baselines
                    .iter()
                    .map(|b| format!("{} {:.3}", b.0, b.1))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let total: u64 = self.actions.iter().sum();
        s += "\n## Requested actions (all test blocks)\n\n| action | share % |\n|---|---|\n";
        for (a, c) in crate::env::logic::ACTION_NAMES.iter().zip(self.actions) {
            s += &format!("| {a} | {:.2} |\n", 100.0 * c as f64 / total.max(1) as f64);
        }
        s += &format!(
            "\n## Training diagnostics\n\n{} run(s) analysed; {} reward-signal alarm(s).\n\n",
            self.runs_analysed,
            self.alarms.len()
        );
        for a in &self.alarms {
            s += &format!("- `{}`: {} ({}): {}\n", a.run, a.kind, a.term, a.detail);
        }
        if !self.plots.is_empty() {
            s += "\n## Plots\n\n";
            for p in &self.plots {
                s += &format!("![{p}]({p})\n\n");
            }
        }
        s
    }
}

/// Write `report.md`, `report.json` and the plots of `r` into `out` (created if needed).
pub fn write_report(r: &mut Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    r.plots = plot::write_all(r, out)?;
    let json = serde_json::to_string_pretty(&*r).map_err(|e| Error::json("report", e))?;
    crate::atomic::write(&out.join("report.json"), json.as_bytes())?;
    crate::atomic::write(&out.join("report.md"), r.markdown().as_bytes())
}

impl MappoRun {
    /// The master's training in run `run` from its metrics `ms` (`None` without master updates).
    fn of(run: &Path, ms: &[crate::train::Metrics]) -> Option<Self> {
        let get = |m: &crate::train::Metrics, k: &str| m.env.get(&format!("master.{k}")).copied();
        let ups: Vec<&crate::train::Metrics> = ms
            .iter()
            .filter(|m| get(m, "learns") == Some(1.0))
            .collect();
        if ups.is_empty() {
            return None;
        }
        let non_finite = ups
            .iter()
            .filter(|m| {
                ["policy_loss", "value_loss", "entropy"]
                    .iter()
                    .any(|k| !get(m, k).is_some_and(f64::is_finite))
            })
            .count();
        let fifth = (ups.len() / 5).max(1);
        let mean = |xs: &[&crate::train::Metrics]| {
            xs.iter()
                .map(|m| get(m, "value_loss").unwrap_or(f64::NAN))
                .sum::<f64>()
                / xs.len() as f64
        };
        Some(Self {
            run: run.display().to_string(),
            updates: ups.len(),
            non_finite,
            value_loss_early: mean(&ups[..fifth]),
            value_loss_late: mean(&ups[ups.len() - fifth..]),
        })
    }
}
