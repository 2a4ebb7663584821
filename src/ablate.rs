/*!
Reward ablations (`marl-trade ablate`): which of the seven reward terms help the held-out result?
One training run per variant of the reward weights and per seed, each evaluated on the held-out
(test) bars next to the baselines, summarised in one table.

# Variants

A term is **on** at its weight in the configuration's `[reward]` section (`reward.w_<term>`); a
term the configuration switches off (weight 0, as `configs/signal.toml` does for sharpe, util and
divers) is switched on at its default weight (`RewardConfig::default()`), so that every variant
asks about the term itself and not about the configuration's choice. A term is **off** at weight 0.
For a selection of terms (`--terms all` is all seven, [`crate::reward::COMPONENT_NAMES`]):

| variant | weights |
|---|---|
| `all` | every term on: the reference |
| `no-<term>` | every term on except `<term>`, one per selected term |
| `pnl+<term>` | only pnl and `<term>` on, one per selected term other than pnl |
| `pnl-only` | only pnl on (when pnl is selected; it is "pnl alone" and "everything but pnl dropped") |

Variants whose weights coincide are run once (the first name is kept). Nothing else of the
configuration changes: the market (data, and the synthetic generator's `data.synthetic.seed`) is the
same for every run. Seed `k` (`0..K`, `--seeds K`) sets `ppo.seed` to the configuration's
`ppo.seed + k`, which seeds the policy's initialisation, the environment's resets, the action
sampling and the minibatch order.

# Layout and resume

```text
OUT/ablation.toml                       the plan: terms, seeds, iteration cap, variants + the whole configuration
OUT/ablation.json, OUT/ablation.csv     the table (rewritten after every run)
OUT/<variant>/seed-<k>/                 a normal run directory (`marl-trade eval --checkpoint` works on it)
OUT/<variant>/seed-<k>/ablation-result.json   the run's evaluation, written when it finishes
```

Every file is written atomically ([`crate::atomic`]). A second invocation into the same directory
skips every run whose result file exists, resumes (`run::TrainOptions::resume`) a run that has a
checkpoint but no result, trains the others, and rebuilds the table. An invocation whose
configuration or plan differs from `OUT/ablation.toml` is refused ([`ErrorKind::RunMismatch`],
naming what differs) unless `force` is set, which removes the old plan, table and variant
directories first (other files in `OUT` are left alone).

# The table

Per variant, over its seeds (`n`): the mean and the sample standard deviation (`n - 1` in the
denominator; `-` for `n = 1`) of the held-out total return, annualised Sharpe ratio, maximum
drawdown, annualised turnover and costs paid (the policy's [`crate::eval::Metrics`], greedy
actions, averaged over the data's paths), of the paired Sharpe difference with the equal-weight
buy-and-hold baseline and its z (Memmel's standard error, [`crate::eval::compare`](mod@crate::eval::compare)), and of each
reward term's share `reward_share.<term>` in the last training iteration whose rollout ended
episodes (`metrics.jsonl`). The shares say which term drove the training; the other columns say
what the policy earned. With a seed count of 2 or 3 the standard deviations are rough: read a
difference between variants as real only when it is several standard deviations wide.

Runs capped by `iterations` (`--iterations N`) are shorter than the configuration's budget
(`ppo.total_timesteps`), and the table says so.

Layer: above [`crate::eval`] (it trains with [`crate::run`] and evaluates with [`crate::eval`]).
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Config;
use crate::env::{BackendKind, Period};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::{AgentPolicy, BacktestOptions, Baseline, evaluate_policy};
use crate::market::Market;
use crate::reward::{COMPONENT_NAMES, N_COMPONENTS, RewardConfig};
use crate::run::{self, TrainOptions};
use crate::train::checkpoint;
use crate::train::metrics::read_metrics;

/// In the output directory: the plan (terms, seeds, cap, variants) and the configuration.
pub const PLAN_FILE: &str = "ablation.toml";
/// In the output directory: the table as JSON.
pub const TABLE_JSON: &str = "ablation.json";
/// In the output directory: the table as CSV.
pub const TABLE_CSV: &str = "ablation.csv";
/// In a run directory: the run's evaluation.
pub const RESULT_FILE: &str = "ablation-result.json";

/// The weight of term `i` (in [`COMPONENT_NAMES`] order) in `r`.
pub fn weight(r: &RewardConfig, i: usize) -> f64 {
    let mut r = r.clone();
    *weight_mut(&mut r, i)
}

fn weight_mut(r: &mut RewardConfig, i: usize) -> &mut f64 {
    match i {
        0 => &mut r.w_pnl,
        1 => &mut r.w_cost,
        2 => &mut r.w_timing,
        3 => &mut r.w_sharpe,
        4 => &mut r.w_drawdown,
        5 => &mut r.w_util,
        _ => &mut r.w_divers,
    }
}

/// Parse a term selection: `all`, or reward term names separated by commas (`sharpe,divers`).
/// Returns the terms' indices in [`COMPONENT_NAMES`] order, without repeats. An unknown or empty
/// name is an [`ErrorKind::InvalidArgument`] error that names it and lists the terms.
pub fn parse_terms(s: &str) -> Result<Vec<usize>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok((0..N_COMPONENTS).collect());
    }
    let mut picked = [false; N_COMPONENTS];
    for name in s.split(',').map(str::trim) {
        let i = COMPONENT_NAMES
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "--terms: unknown reward term `{name}`; the terms are {} (or `all`)",
                    COMPONENT_NAMES.join(", ")
                ))
            })?;
        picked[i] = true;
    }
    Ok((0..N_COMPONENTS).filter(|&i| picked[i]).collect())
}

/// One set of reward weights to train with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// `all`, `no-<term>`, `pnl+<term>` or `pnl-only` (module docs); also its directory name.
    pub name: String,
    /// The weights, in [`COMPONENT_NAMES`] order.
    pub weights: Vec<f64>,
}

/// What an ablation runs (module docs): the variants, the seeds, the iteration cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationPlan {
    /// The selected terms, by name.
    pub terms: Vec<String>,
    /// Seeds per variant (`ppo.seed + 0 .. ppo.seed + seeds`).
    pub seeds: usize,
    /// At most this many PPO iterations per run (`None`: the configuration's whole budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Each term's weight when on, in [`COMPONENT_NAMES`] order.
    pub on_weights: Vec<f64>,
    /// The variants, in run order.
    pub variants: Vec<Variant>,
}

impl AblationPlan {
    /// The plan for `terms` (indices from [`parse_terms`]) over the weights of `reward`, `seeds`
    /// seeds, and at most `iterations` PPO iterations per run.
    pub fn new(
        reward: &RewardConfig,
        terms: &[usize],
        seeds: usize,
        iterations: Option<usize>,
    ) -> Result<Self> {
        if seeds == 0 {
            return Err(Error::invalid("--seeds must be >= 1"));
        }
        if iterations == Some(0) {
            return Err(Error::invalid("--iterations must be >= 1"));
        }
        if terms.is_empty() || terms.iter().any(|&i| i >= N_COMPONENTS) {
            return Err(Error::invalid(format!(
                "--terms: select at least one of {} (or `all`)",
                COMPONENT_NAMES.join(", ")
            )));
        }
        let defaults = RewardConfig::default();
        let on: Vec<f64> = (0..N_COMPONENTS)
            .map(|i| {
                let w = weight(reward, i);
                if w == 0.0 { weight(&defaults, i) } else { w }
            })
            .collect();
        let mut variants: Vec<Variant> = Vec::new();
        let mut add = |name: String, weights: Vec<f64>| {
            if !variants.iter().any(|v| v.weights == weights) {
                variants.push(Variant { name, weights });
            }
        };
        add("all".into(), on.clone());
        for &t in terms {
            let mut w = on.clone();
            w[t] = 0.0;
            add(format!("no-{}", COMPONENT_NAMES[t]), w);
        }
        for &t in terms {
            let w: Vec<f64> = (0..N_COMPONENTS)
                .map(|i| if i == 0 || i == t { on[i] } else { 0.0 })
                .collect();
            let name = if t == 0 {
                "pnl-only".to_string()
            } else {
                format!("pnl+{}", COMPONENT_NAMES[t])
            };
            add(name, w);
        }
        Ok(Self {
            terms: terms
                .iter()
                .map(|&i| COMPONENT_NAMES[i].to_string())
                .collect(),
            seeds,
            iterations,
            on_weights: on,
            variants,
        })
    }

    /// The variants' names, in run order.
    pub fn variant_names(&self) -> Vec<&str> {
        self.variants.iter().map(|v| v.name.as_str()).collect()
    }

    /// The configuration of `variant` at seed index `k`: `base` with the variant's reward weights
    /// and `ppo.seed` = `base.ppo.seed + k`.
    pub fn run_config(&self, base: &Config, variant: &Variant, k: usize) -> Config {
        let mut cfg = base.clone();
        for (i, &w) in variant.weights.iter().enumerate().take(N_COMPONENTS) {
            *weight_mut(&mut cfg.reward, i) = w;
        }
        cfg.ppo.seed = base.ppo.seed.wrapping_add(k as u64);
        cfg
    }

    /// The run directory of `variant` at seed index `k` under `out`.
    pub fn run_dir(out: &Path, variant: &str, k: usize) -> PathBuf {
        out.join(variant).join(format!("seed-{k}"))
    }

    /// Number of runs (variants x seeds).
    pub fn n_runs(&self) -> usize {
        self.variants.len() * self.seeds
    }
}

/// How to run [`ablate`].
#[derive(Debug, Clone)]
pub struct AblationOptions {
    /// The output directory (module docs).
    pub out: PathBuf,
    /// Replace an ablation of another configuration or plan in `out`.
    pub force: bool,
    /// Checkpoint every this many iterations (an interrupted run resumes from the last one).
    pub save_every: usize,
    /// The environment backend (training and evaluation).
    pub backend: BackendKind,
    /// Where the policies train and play (`--device`).
    pub device: crate::agents::DeviceSpec,
    /// Progress bars of the training runs on stderr.
    pub progress: bool,
}

impl AblationOptions {
    /// Into `out`, no force, a checkpoint every 10 iterations, the CPU backend, no progress bars.
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

/// Deserialise a float written as `null` (serde_json writes NaN so) back to NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The evaluation of one run on the held-out bars (its `ablation-result.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The variant's name.
    pub variant: String,
    /// The seed index `k`.
    pub seed: usize,
    /// The run's `ppo.seed`.
    pub ppo_seed: u64,
    /// PPO iterations the checkpoint has.
    pub iterations: usize,
    /// PPO iterations of the configuration's whole budget.
    pub num_iterations: usize,
    /// Held-out total return (final equity / initial capital - 1, mean over paths).
    #[serde(deserialize_with = "f64_or_nan")]
    pub total_return: f64,
    /// Held-out annualised Sharpe ratio.
    #[serde(deserialize_with = "f64_or_nan")]
    pub sharpe: f64,
    /// Held-out maximum drawdown (fraction of the peak).
    #[serde(deserialize_with = "f64_or_nan")]
    pub max_drawdown: f64,
    /// Held-out annualised turnover (multiple of mean equity).
    #[serde(deserialize_with = "f64_or_nan")]
    pub turnover: f64,
    /// Held-out costs paid (fraction of initial capital).
    #[serde(deserialize_with = "f64_or_nan")]
    pub costs_paid: f64,
    /// Paired Sharpe difference with the equal-weight buy-and-hold baseline.
    #[serde(deserialize_with = "f64_or_nan")]
    pub sharpe_diff_vs_equal_weight: f64,
    /// Its z (difference / Memmel's standard error).
    #[serde(deserialize_with = "f64_or_nan")]
    pub sharpe_z_vs_equal_weight: f64,
    /// The iteration the shares come from (the last one whose rollout ended episodes).
    pub share_iteration: Option<usize>,
    /// `reward_share.<term>` of that iteration, by term.
    pub reward_share: BTreeMap<String, f64>,
}

impl RunResult {
    fn value(&self, col: usize) -> f64 {
        match col {
            0 => self.total_return,
            1 => self.sharpe,
            2 => self.max_drawdown,
            3 => self.turnover,
            4 => self.costs_paid,
            5 => self.sharpe_diff_vs_equal_weight,
            _ => self.sharpe_z_vs_equal_weight,
        }
    }
}

/// Mean, sample standard deviation and count of the finite values of one column.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Mean (NaN, `null` in JSON, when `n = 0`).
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean: f64,
    /// Sample standard deviation (denominator `n - 1`; NaN when `n < 2`).
    #[serde(deserialize_with = "f64_or_nan")]
    pub std: f64,
    /// Number of finite values.
    pub n: usize,
}

impl Stat {
    /// The statistics of the finite values of `xs`.
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
        let n = v.len();
        let mean = if n > 0 {
            v.iter().sum::<f64>() / n as f64
        } else {
            f64::NAN
        };
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        Self { mean, std, n }
    }

    /// `mean ± std` scaled by `scale`, with `digits` decimals (`-` for what is undefined).
    pub fn text(&self, scale: f64, digits: usize) -> String {
        let f = |x: f64| {
            if x.is_finite() {
                format!("{:.digits$}", scale * x)
            } else {
                "-".into()
            }
        };
        format!("{} ± {}", f(self.mean), f(self.std))
    }
}

/// The metric columns of the table, in [`RunResult`] order: (JSON/CSV key, text header, scale,
/// decimals).
pub const COLUMNS: [(&str, &str, f64, usize); 7] = [
    ("total_return", "return %", 100.0, 2),
    ("sharpe", "sharpe", 1.0, 3),
    ("max_drawdown", "max dd %", 100.0, 2),
    ("turnover", "turnover/y", 1.0, 2),
    ("costs_paid", "costs %", 100.0, 3),
    ("sharpe_diff_vs_equal_weight", "dSharpe vs EW", 1.0, 3),
    ("sharpe_z_vs_equal_weight", "z vs EW", 1.0, 2),
];

/// One variant's row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationRow {
    /// The variant's name.
    pub variant: String,
    /// Its weights, in [`COMPONENT_NAMES`] order.
    pub weights: Vec<f64>,
    /// Runs with a result.
    pub n: usize,
    /// The metric columns ([`COLUMNS`] order), over the seeds.
    pub metrics: Vec<Stat>,
    /// Each term's reward share ([`COMPONENT_NAMES`] order), over the seeds.
    pub reward_share: Vec<Stat>,
}

impl AblationRow {
    /// The statistics of column `key` ([`COLUMNS`]'s first field, or `reward_share.<term>`).
    pub fn stat(&self, key: &str) -> Option<Stat> {
        if let Some(t) = key.strip_prefix("reward_share.") {
            let i = COMPONENT_NAMES.iter().position(|c| *c == t)?;
            return self.reward_share.get(i).copied();
        }
        let i = COLUMNS.iter().position(|c| c.0 == key)?;
        self.metrics.get(i).copied()
    }
}

/// The ablation's table (module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationTable {
    /// Seeds per variant in the plan.
    pub seeds: usize,
    /// The iteration cap of the plan, if any.
    pub iterations_cap: Option<usize>,
    /// PPO iterations of the configuration's whole budget.
    pub num_iterations: usize,
    /// Whether some run is shorter than the whole budget.
    pub capped: bool,
    /// Runs with a result, of all the plan's runs.
    pub runs_done: usize,
    /// The plan's runs.
    pub runs_total: usize,
    /// One row per variant, in plan order.
    pub rows: Vec<AblationRow>,
}

impl AblationTable {
    /// The table of `results` (any order) for `plan`.
    pub fn new(plan: &AblationPlan, num_iterations: usize, results: &[RunResult]) -> Self {
        let rows = plan
            .variants
            .iter()
            .map(|v| {
                let mine: Vec<&RunResult> =
                    results.iter().filter(|r| r.variant == v.name).collect();
                AblationRow {
                    variant: v.name.clone(),
                    weights: v.weights.clone(),
                    n: mine.len(),
                    metrics: (0..COLUMNS.len())
                        .map(|c| Stat::of(mine.iter().map(|r| r.value(c))))
                        .collect(),
                    reward_share: COMPONENT_NAMES
                        .iter()
                        .map(|t| {
                            Stat::of(
                                mine.iter()
                                    .map(|r| r.reward_share.get(*t).copied().unwrap_or(f64::NAN)),
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            seeds: plan.seeds,
            iterations_cap: plan.iterations,
            num_iterations,
            capped: results.iter().any(|r| r.iterations < num_iterations),
            runs_done: results.len(),
            runs_total: plan.n_runs(),
            rows,
        }
    }

    /// The row of variant `name`.
    pub fn row(&self, name: &str) -> Option<&AblationRow> {
        self.rows.iter().find(|r| r.variant == name)
    }

    /// The aligned text table `marl-trade ablate` prints: the metrics, the reward shares, the
    /// weights, and a note when the runs were capped or are not all done.
    pub fn text(&self) -> String {
        let mut out = format!(
            "held-out (test) bars, greedy policy; mean ± sample std over n seeds (of {})\n",
            self.seeds
        );
        if self.capped {
            out += &format!(
                "NOTE: runs capped at {} of {} PPO iterations (--iterations): not the configured budget\n",
                self.iterations_cap
                    .map_or("fewer".to_string(), |c| c.to_string()),
                self.num_iterations
            );
        }
        if self.runs_done < self.runs_total {
            out += &format!(
                "NOTE: {} of {} runs done; the table is partial\n",
                self.runs_done, self.runs_total
            );
        }
        let mut head = vec!["variant".to_string(), "n".to_string()];
        head.extend(COLUMNS.iter().map(|c| c.1.to_string()));
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let mut cells = vec![r.variant.clone(), r.n.to_string()];
                cells.extend(r.metrics.iter().zip(COLUMNS).map(|(s, c)| s.text(c.2, c.3)));
                cells
            })
            .collect();
        out += &aligned(&head, &body);
        out +=
            "\nreward share (%) of each term in the last training iteration that ended episodes\n";
        let mut head = vec!["variant".to_string()];
        head.extend(COMPONENT_NAMES.iter().map(|c| c.to_string()));
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let mut cells = vec![r.variant.clone()];
                cells.extend(r.reward_share.iter().map(|s| s.text(100.0, 1)));
                cells
            })
            .collect();
        out += &aligned(&head, &body);
        out += "\nreward weights\n";
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let mut cells = vec![r.variant.clone()];
                cells.extend(r.weights.iter().map(|w| format!("{w}")));
                cells
            })
            .collect();
        out += &aligned(&head, &body);
        out
    }

    /// The table as JSON (this struct; undefined statistics are `null`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::json("ablation table", e))
    }

    /// The CSV header: `variant,n`, then `<column>_mean,<column>_std,<column>_n` for each metric
    /// column and each `reward_share.<term>`, then `w_<term>` for each term.
    pub fn csv_header() -> String {
        let mut h = vec!["variant".to_string(), "n".to_string()];
        let keys = COLUMNS
            .iter()
            .map(|c| c.0.to_string())
            .chain(COMPONENT_NAMES.iter().map(|t| format!("reward_share.{t}")));
        for k in keys {
            h.extend([format!("{k}_mean"), format!("{k}_std"), format!("{k}_n")]);
        }
        h.extend(COMPONENT_NAMES.iter().map(|t| format!("w_{t}")));
        h.join(",")
    }

    /// The table as CSV ([`Self::csv_header`]; undefined statistics are empty cells).
    pub fn to_csv(&self) -> String {
        let num = |x: f64| {
            if x.is_finite() {
                format!("{x}")
            } else {
                String::new()
            }
        };
        let mut out = Self::csv_header();
        out.push('\n');
        for r in &self.rows {
            let mut cells = vec![r.variant.clone(), r.n.to_string()];
            for s in r.metrics.iter().chain(&r.reward_share) {
                cells.extend([num(s.mean), num(s.std), s.n.to_string()]);
            }
            cells.extend(r.weights.iter().map(|w| num(*w)));
            out += &cells.join(",");
            out.push('\n');
        }
        out
    }

    /// Write `ablation.json` and `ablation.csv` into `out`, atomically.
    pub fn write(&self, out: &Path) -> Result<()> {
        crate::atomic::write(&out.join(TABLE_JSON), self.to_json()?.as_bytes())?;
        crate::atomic::write(&out.join(TABLE_CSV), self.to_csv().as_bytes())
    }
}

/// Columns aligned: the first left, the others right.
fn aligned(head: &[String], body: &[Vec<String>]) -> String {
    let width = |c: usize| {
        std::iter::once(head)
            .chain(body.iter().map(|r| r.as_slice()))
            .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..head.len()).map(width).collect();
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (c, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if c == 0 {
                s += cell;
                s += &" ".repeat(pad);
            } else {
                s += "  ";
                s += &" ".repeat(pad);
                s += cell;
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    for r in body {
        out += &line(r);
    }
    out
}

/// What happened to one run in this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    /// Its result file existed: nothing was done.
    Skipped,
    /// Trained from scratch, then evaluated.
    Trained,
    /// Continued from its checkpoint, then evaluated.
    Resumed,
    /// Its training was complete but it had no result: evaluated only.
    Evaluated,
}

/// One run's outcome, passed to [`ablate`]'s callback as each run finishes.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// 1-based position in the plan.
    pub index: usize,
    /// The plan's runs.
    pub total: usize,
    /// The run directory.
    pub dir: PathBuf,
    /// What was done.
    pub action: RunAction,
    /// PPO iterations run now.
    pub iterations_run: usize,
    /// Wall-clock seconds spent on it now (training and evaluation).
    pub seconds: f64,
    /// Its result.
    pub result: RunResult,
}

impl RunOutcome {
    /// One line for progress output.
    pub fn line(&self) -> String {
        let r = &self.result;
        let what = match self.action {
            RunAction::Skipped => "done before".to_string(),
            RunAction::Trained => format!("trained {} iterations", self.iterations_run),
            RunAction::Resumed => format!("resumed for {} iterations", self.iterations_run),
            RunAction::Evaluated => "evaluated".to_string(),
        };
        format!(
            "[{}/{}] {} seed-{} ({} / {} iterations): {what} in {:.1} s; held-out return {:+.2}%, Sharpe {:.3}, vs EW z {:+.2}",
            self.index,
            self.total,
            r.variant,
            r.seed,
            r.iterations,
            r.num_iterations,
            self.seconds,
            100.0 * r.total_return,
            r.sharpe,
            r.sharpe_z_vs_equal_weight
        )
    }
}

/// What [`ablate`] did.
#[derive(Debug, Clone)]
pub struct AblationReport {
    /// The output directory.
    pub out: PathBuf,
    /// The plan.
    pub plan: AblationPlan,
    /// The table.
    pub table: AblationTable,
    /// Runs trained from scratch now.
    pub trained: usize,
    /// Runs continued from a checkpoint now.
    pub resumed: usize,
    /// Runs evaluated now (trained, resumed or only evaluated).
    pub evaluated: usize,
    /// Runs whose result existed.
    pub skipped: usize,
    /// PPO iterations run now, all runs together.
    pub iterations_run: usize,
    /// Wall-clock seconds of the whole invocation.
    pub seconds: f64,
}

/// The plan file's contents: the plan and the whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    plan: AblationPlan,
    config: Config,
}

/// Run (or continue) the ablation `plan` of `cfg` on `market` into `opts.out` (module docs).
/// `on_run` is called as each run finishes (or is found done).
pub fn ablate(
    cfg: &Config,
    market: &Market,
    plan: &AblationPlan,
    opts: &AblationOptions,
    mut on_run: impl FnMut(&RunOutcome),
) -> Result<AblationReport> {
    let t0 = Instant::now();
    if opts.save_every == 0 {
        return Err(Error::invalid("save_every must be >= 1"));
    }
    if plan.seeds == 0 || plan.variants.is_empty() {
        return Err(Error::invalid(
            "an ablation plan needs >= 1 seed and >= 1 variant",
        ));
    }
    let out = &opts.out;
    let mine = PlanFile {
        plan: plan.clone(),
        config: cfg.clone(),
    };
    prepare_dir(out, &mine, opts.force)?;

    let num_iterations = cfg.ppo.num_iterations(cfg.env.scenarios);
    let target = plan
        .iterations
        .map_or(num_iterations, |c| c.min(num_iterations));
    let mut report = AblationReport {
        out: out.clone(),
        plan: plan.clone(),
        table: AblationTable::new(plan, num_iterations, &[]),
        trained: 0,
        resumed: 0,
        evaluated: 0,
        skipped: 0,
        iterations_run: 0,
        seconds: 0.0,
    };
    let mut results = Vec::with_capacity(plan.n_runs());
    let total = plan.n_runs();
    for v in &plan.variants {
        for k in 0..plan.seeds {
            let t = Instant::now();
            let dir = AblationPlan::run_dir(out, &v.name, k);
            let rcfg = plan.run_config(cfg, v, k);
            let result_path = dir.join(RESULT_FILE);
            let (action, ran, result) = if result_path.is_file() {
                (RunAction::Skipped, 0, read_result(&result_path)?)
            } else {
                let done = run::latest_checkpoint(&dir)
                    .and_then(|c| checkpoint::read_state(&c))
                    .map(|s| s.iteration)
                    .ok();
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
                        ..TrainOptions::new(&dir)
                    };
                    run::train(&rcfg, market, &o).map(|r| r.metrics.len())
                };
                let (action, ran) = match done {
                    Some(d) if d >= target => (RunAction::Evaluated, 0),
                    Some(d) => (RunAction::Resumed, train(true, target - d)?),
                    None => (RunAction::Trained, train(false, target)?),
                };
                let result = evaluate_run(&rcfg, market, &dir, v, k, num_iterations, opts)?;
                let text = serde_json::to_string_pretty(&result)
                    .map_err(|e| Error::json("ablation result", e))?;
                crate::atomic::write(&result_path, text.as_bytes())?;
                (action, ran, result)
            };
            match action {
                RunAction::Skipped => report.skipped += 1,
                RunAction::Trained => report.trained += 1,
                RunAction::Resumed => report.resumed += 1,
                RunAction::Evaluated => {}
            }
            if action != RunAction::Skipped {
                report.evaluated += 1;
            }
            report.iterations_run += ran;
            results.push(result.clone());
            let table = AblationTable::new(plan, num_iterations, &results);
            table.write(out)?;
            report.table = table;
            on_run(&RunOutcome {
                index: results.len(),
                total,
                dir,
                action,
                iterations_run: ran,
                seconds: t.elapsed().as_secs_f64(),
                result,
            });
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn read_result(path: &Path) -> Result<RunResult> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("not an ablation result ({e}); delete it to evaluate the run again"),
        )
        .with_file(path)
        .with_source(e)
    })
}

/// Evaluate the latest checkpoint of run `dir` on the held-out bars.
fn evaluate_run(
    cfg: &Config,
    market: &Market,
    dir: &Path,
    v: &Variant,
    k: usize,
    num_iterations: usize,
    opts: &AblationOptions,
) -> Result<RunResult> {
    let ck = run::latest_checkpoint(dir)?;
    let iterations = checkpoint::read_state(&ck)?.iteration;
    let policy = AgentPolicy::from_checkpoint_on(
        "ppo",
        &ck,
        market,
        cfg.master.default_action,
        &opts.device.candle()?,
    )?;
    let bt = BacktestOptions {
        period: Period::Test,
        backend: opts.backend,
        seed: 0,
        progress: false,
        device: opts.device,
    };
    let report = evaluate_policy(&cfg.env_setup(), market, &bt, policy, &mut [])?;
    let m = &report.policy.metrics;
    let ew = report.comparison(Baseline::EqualWeight);
    let metrics_path = dir.join(run::METRICS_JSONL);
    let last = if metrics_path.is_file() {
        read_metrics(&metrics_path)?
            .into_iter()
            .filter(|m| m.iteration <= iterations)
            .rev()
            .find(|m| m.env.keys().any(|k| k.starts_with("reward_share.")))
    } else {
        None
    };
    let reward_share = last
        .as_ref()
        .map(|m| {
            COMPONENT_NAMES
                .iter()
                .filter_map(|t| {
                    let s = m.env.get(&format!("reward_share.{t}"))?;
                    Some((t.to_string(), *s))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(RunResult {
        variant: v.name.clone(),
        seed: k,
        ppo_seed: cfg.ppo.seed,
        iterations,
        num_iterations,
        total_return: m.total_return,
        sharpe: m.sharpe,
        max_drawdown: m.max_drawdown,
        turnover: m.turnover,
        costs_paid: m.costs_paid,
        sharpe_diff_vs_equal_weight: ew.map_or(f64::NAN, |c| c.sharpe_diff),
        sharpe_z_vs_equal_weight: ew.map_or(f64::NAN, |c| c.sharpe_z()),
        share_iteration: last.map(|m| m.iteration),
        reward_share,
    })
}

/// Check `out` against the plan file (or create it): refuse another plan or configuration unless
/// `force`, which clears the old ablation's files first.
fn prepare_dir(out: &Path, mine: &PlanFile, force: bool) -> Result<()> {
    let plan_path = out.join(PLAN_FILE);
    let stored = if plan_path.is_file() {
        let text = std::fs::read_to_string(&plan_path).map_err(|e| Error::io(&plan_path, e))?;
        Some(toml::from_str::<PlanFile>(&text).map_err(|e| {
            Error::new(
                ErrorKind::RunMismatch,
                format!("not an ablation plan this build reads ({}); pass --force to replace the ablation", e.message()),
            )
            .with_file(&plan_path)
        }))
    } else {
        None
    };
    let old_variants: Vec<String> = match &stored {
        Some(Ok(p)) => p.plan.variants.iter().map(|v| v.name.clone()).collect(),
        _ => Vec::new(),
    };
    match stored {
        Some(Ok(p)) if p == *mine => return Ok(()),
        Some(Ok(p)) if !force => {
            return Err(Error::new(
                ErrorKind::RunMismatch,
                format!(
                    "holds an ablation of another {}: pass --force to replace it, or choose another --out",
                    describe_difference(&p, mine)
                ),
            )
            .with_file(&plan_path));
        }
        Some(Err(e)) if !force => return Err(e),
        None if !force => {
            let taken: Vec<String> = mine
                .plan
                .variants
                .iter()
                .map(|v| out.join(&v.name))
                .filter(|d| d.exists())
                .map(|d| d.display().to_string())
                .collect();
            if !taken.is_empty() {
                return Err(Error::new(
                    ErrorKind::RunExists,
                    format!(
                        "has no {PLAN_FILE} but holds {}: pass --force to replace them, or choose another --out",
                        taken.join(", ")
                    ),
                )
                .with_file(out));
            }
        }
        _ => {
            // force: remove the old ablation's files (only names an ablation writes).
            let names = old_variants
                .iter()
                .map(String::as_str)
                .chain(mine.plan.variant_names());
            for name in names {
                if !is_variant_name(name) {
                    continue;
                }
                let d = out.join(name);
                if d.is_dir() {
                    std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                }
            }
            for f in [PLAN_FILE, TABLE_JSON, TABLE_CSV] {
                let p = out.join(f);
                if p.is_file() {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let text = toml::to_string_pretty(mine)
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("ablation plan: {e}")))?;
    let head = "# marl-trade ablation plan (`marl-trade ablate`): the plan and the whole configuration.\n\
                # A later invocation into this directory must match it (or pass --force).\n\n";
    crate::atomic::write(&plan_path, format!("{head}{text}").as_bytes())
}

/// A name an ablation gives a variant directory (no path separators, no dots).
fn is_variant_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+' || c == '_')
}

/// What differs between two plan files, for the refusal message.
fn describe_difference(old: &PlanFile, new: &PlanFile) -> String {
    let mut parts = Vec::new();
    if old.config != new.config {
        let diffs = config_differences(&old.config, &new.config);
        let shown: Vec<String> = diffs.iter().take(5).cloned().collect();
        let more = diffs.len().saturating_sub(shown.len());
        parts.push(format!(
            "configuration ({}{})",
            shown.join("; "),
            if more > 0 {
                format!("; {more} more")
            } else {
                String::new()
            }
        ));
    }
    let (p, q) = (&old.plan, &new.plan);
    if p.terms != q.terms {
        parts.push(format!(
            "term selection ({} there, {} here)",
            p.terms.join(","),
            q.terms.join(",")
        ));
    }
    if p.seeds != q.seeds {
        parts.push(format!("seed count ({} there, {} here)", p.seeds, q.seeds));
    }
    if p.iterations != q.iterations {
        let f = |x: Option<usize>| x.map_or("none".to_string(), |c| c.to_string());
        parts.push(format!(
            "iteration cap ({} there, {} here)",
            f(p.iterations),
            f(q.iterations)
        ));
    }
    if parts.is_empty() {
        parts.push("plan (variants or weights)".into());
    }
    parts.join(", ")
}

/// The fields whose values differ between configuration `old` (stored) and `new` (given), as
/// `section.field: <old> there, <new> here` lines (shared with the walk-forward's plan check).
pub fn config_differences(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (
        toml::Table::try_from(old).unwrap_or_default(),
        toml::Table::try_from(new).unwrap_or_default(),
    );
    let mut diffs = Vec::new();
    diff_tables("", &a, &b, &mut diffs);
    diffs
}

/// Dotted keys whose values differ between `a` (stored) and `b` (given).
fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&key, x, y, out)
            }
            (x, y) if x != y => {
                let f = |v: Option<&toml::Value>| v.map_or("absent".to_string(), |v| v.to_string());
                out.push(format!("{key}: {} there, {} here", f(x), f(y)));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_the_sample_statistics_of_the_finite_values() {
        let s = Stat::of([1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!(s.n, 3);
        assert!((s.mean - 2.0).abs() < 1e-12);
        assert!((s.std - 1.0).abs() < 1e-12);
        let one = Stat::of([4.0]);
        assert_eq!((one.n, one.mean), (1, 4.0));
        assert!(one.std.is_nan());
        assert_eq!(one.text(1.0, 1), "4.0 ± -");
    }

    #[test]
    fn a_result_with_undefined_values_round_trips() {
        let r = RunResult {
            variant: "all".into(),
            seed: 0,
            ppo_seed: 1,
            iterations: 2,
            num_iterations: 2,
            total_return: 0.1,
            sharpe: f64::NAN,
            max_drawdown: 0.0,
            turnover: 0.0,
            costs_paid: 0.0,
            sharpe_diff_vs_equal_weight: 0.0,
            sharpe_z_vs_equal_weight: 0.0,
            share_iteration: None,
            reward_share: BTreeMap::new(),
        };
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert!(back.sharpe.is_nan());
        assert_eq!(back.total_return, 0.1);
    }
}
