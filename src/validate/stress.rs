/*!
Stress scenarios (`marl-trade stress`): replay a policy's test period under named perturbations and
measure how each metric degrades against the unperturbed replay, and whether the environment's risk
limits and kill switch held on every step ([`crate::eval::LimitCheck`], checked from the env's state
before and after each step).

| scenario | what changes (only the bars of the replayed period; earlier bars, hence the features' warm-up, are untouched) |
|---|---|
| `base` | nothing |
| `costs-x2`, `costs-x5` | `commission_bps`, `half_spread_bps`, `impact_coef`, `max_slippage_bps` and `borrow_rate_annual` multiplied by 2 / 5 |
| `liquidity` | every volume divided by 10 (square-root impact grows by `sqrt(10)`) |
| `gaps` | an overnight gap at the open of every 10th trading day of the period, alternately -5% and +5%: every price (all symbols and the benchmark) from that bar on is scaled |
| `crisis` | the middle third `[w0, w1)` of the period becomes a crash of every symbol and the benchmark: per column, log prices are split into the straight line from the close before the window to the last close in it and the deviations from that line; the deviations are multiplied by 3 (three times the volatility; open/high/low/close keep their order) and the line is replaced by a fall to 70% (`ln 0.7 * k / n` at the `k`-th of `n` bars), so every column closes the window exactly 30% below where it entered it; later bars continue from the new level; the VIX-like macro series doubles in the window |
| `late-fills` | every decision is executed one bar later (the policy decides at `t`, the env receives the decision at `t + 1` and fills it at `t + 2`); HOLD at the first step |
| `stale-bars` | every 10th bar of the period is a stale (missing, forward-filled) bar: open = high = low = close = the previous close, volume 0, as the loader's `forward-fill` alignment makes a missing bar |

Each scenario replays the policy and, for reference, the equal-weight buy-and-hold baseline under
the same perturbation. Features are recomputed from the perturbed data (causal, so the policy sees
the perturbation only as it unfolds).

Layer: above [`crate::ablate`], with the rest of [`crate::validate`](super).
*/

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::MarketData;
use crate::env::logic::HOLD;
use crate::env::{EnvLayout, EnvSetup, Period};
use crate::error::{Error, Result};
use crate::eval::{
    AgentPolicy, BacktestOptions, BacktestPolicy, EqualWeight, LimitCheck, Metrics, PolicyView,
    run_policy,
};
use crate::features::WARMUP;
use crate::market::Market;

/// A named perturbation of a replay (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Scenario {
    /// The unperturbed replay.
    Base,
    /// Every cost parameter times the factor.
    Costs(f64),
    /// Volume divided by the factor.
    Liquidity(f64),
    /// Alternating overnight gaps of `size` every `every_days` trading days.
    Gaps {
        /// Trading days between gaps.
        every_days: usize,
        /// Gap size (fraction).
        size: f64,
    },
    /// A crash in the middle third of the period.
    Crisis {
        /// Volatility multiplier.
        vol: f64,
        /// Total fall over the window (fraction).
        fall: f64,
    },
    /// Decisions executed one bar late.
    LateFills,
    /// Every `every`-th bar stale.
    StaleBars {
        /// Bars between stale bars.
        every: usize,
    },
}

impl Scenario {
    /// The default set, in table order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Base,
        Scenario::Costs(2.0),
        Scenario::Costs(5.0),
        Scenario::Liquidity(10.0),
        Scenario::Gaps {
            every_days: 10,
            size: 0.05,
        },
        Scenario::Crisis {
            vol: 3.0,
            fall: 0.30,
        },
        Scenario::LateFills,
        Scenario::StaleBars { every: 10 },
    ];

    /// The name in tables and on the command line.
    pub fn name(&self) -> String {
        match self {
            Scenario::Base => "base".into(),
            Scenario::Costs(k) => format!("costs-x{k}"),
            Scenario::Liquidity(_) => "liquidity".into(),
            Scenario::Gaps { .. } => "gaps".into(),
            Scenario::Crisis { .. } => "crisis".into(),
            Scenario::LateFills => "late-fills".into(),
            Scenario::StaleBars { .. } => "stale-bars".into(),
        }
    }

    /// One sentence on what it changes.
    pub fn describe(&self) -> String {
        match self {
            Scenario::Base => "no change".into(),
            Scenario::Costs(k) => format!("commission, spread, impact, slippage cap, borrow x{k}"),
            Scenario::Liquidity(k) => format!("volume / {k}"),
            Scenario::Gaps { every_days, size } => format!(
                "gap of -/+{:.0}% alternately at the open of every {every_days}th day",
                100.0 * size
            ),
            Scenario::Crisis { vol, fall } => format!(
                "middle third: volatility x{vol}, market -{:.0}%",
                100.0 * fall
            ),
            Scenario::LateFills => "every decision executed one bar later".into(),
            Scenario::StaleBars { every } => {
                format!("every {every}th bar stale (O=H=L=C=prev close, volume 0)")
            }
        }
    }

    /// The environment setup under the scenario.
    pub fn setup(&self, base: &EnvSetup) -> EnvSetup {
        let mut s = base.clone();
        if let Scenario::Costs(k) = *self {
            let c = &mut s.costs;
            c.commission_bps *= k;
            c.half_spread_bps *= k;
            c.impact_coef *= k;
            c.max_slippage_bps *= k;
            c.borrow_rate_annual *= k;
        }
        s
    }

    /// The data under the scenario over the replayed bars `[a, hi)` (`a` the first decision bar),
    /// or `None` when the data is unchanged.
    pub fn data(&self, md: &MarketData, a: usize, hi: usize) -> Option<MarketData> {
        let s1 = md.n_symbols() + 1;
        let mut d = md.clone();
        match *self {
            Scenario::Base | Scenario::Costs(_) | Scenario::LateFills => return None,
            Scenario::Liquidity(k) => {
                for p in 0..md.paths {
                    for t in a..hi {
                        for j in 0..s1 {
                            let i = md.px(p, t, j);
                            d.volume[i] = md.volume[i] / k as f32;
                        }
                    }
                }
            }
            Scenario::Gaps { every_days, size } => {
                let bpd = md.bars_per_day.max(1);
                let mut sign = -1.0;
                let mut factor = 1.0f64;
                let mut day = 0;
                for t in a + 1..hi {
                    if t % bpd == 0 {
                        day += 1;
                        if day % every_days.max(1) == 0 {
                            factor *= 1.0 + sign * size;
                            sign = -sign;
                        }
                    }
                    if factor != 1.0 {
                        scale_bar(&mut d, md, t, factor);
                    }
                }
            }
            Scenario::Crisis { vol, fall } => {
                let n = hi - a;
                let (w0, w1) = (a + n / 3, a + 2 * n / 3);
                if w1 <= w0 + 1 || w0 == 0 {
                    return None;
                }
                let len = (w1 - w0) as f64;
                let target = (1.0 - fall).ln();
                for p in 0..md.paths {
                    for j in 0..s1 {
                        // Log prices around the column's own straight line from the close before
                        // the window to its last close in the window: deviations times `vol`,
                        // the line replaced by a fall to (1 - fall) (module docs).
                        let l0 = (md.close[md.px(p, w0 - 1, j)] as f64).ln();
                        let slope = ((md.close[md.px(p, w1 - 1, j)] as f64).ln() - l0) / len;
                        let mut level = 1.0f64;
                        for t in w0..hi {
                            let i = md.px(p, t, j);
                            let k = (t - w0 + 1) as f64;
                            let f = |x: f32| -> f32 {
                                if t < w1 {
                                    let dev = (x as f64).ln() - l0 - slope * k;
                                    (l0 + vol * dev + target * k / len).exp() as f32
                                } else {
                                    (x as f64 * level) as f32
                                }
                            };
                            d.open[i] = f(md.open[i]);
                            d.high[i] = f(md.high[i]);
                            d.low[i] = f(md.low[i]);
                            d.close[i] = f(md.close[i]);
                            if t == w1 - 1 {
                                level = d.close[i] as f64 / md.close[i] as f64;
                            }
                        }
                    }
                    for t in w0..w1 {
                        let i = (p * md.bars + t) * crate::data::MACRO + 1;
                        d.macro_series[i] = 2.0 * md.macro_series[i];
                    }
                }
            }
            Scenario::StaleBars { every } => {
                for p in 0..md.paths {
                    for t in (a + 1..hi).filter(|t| (t - a).is_multiple_of(every.max(1))) {
                        for j in 0..s1 {
                            let i = md.px(p, t, j);
                            let c = d.close[md.px(p, t - 1, j)];
                            d.open[i] = c;
                            d.high[i] = c;
                            d.low[i] = c;
                            d.close[i] = c;
                            d.volume[i] = 0.0;
                        }
                    }
                }
            }
        }
        Some(d)
    }
}

/// Scale every price of bar `t` (all paths and columns) by `f`, from the original `md`.
fn scale_bar(d: &mut MarketData, md: &MarketData, t: usize, f: f64) {
    for p in 0..md.paths {
        for j in 0..=md.n_symbols() {
            let i = md.px(p, t, j);
            d.open[i] = (md.open[i] as f64 * f) as f32;
            d.high[i] = (md.high[i] as f64 * f) as f32;
            d.low[i] = (md.low[i] as f64 * f) as f32;
            d.close[i] = (md.close[i] as f64 * f) as f32;
        }
    }
}

/// Executes the inner policy's decisions one step late (HOLD at an episode's first step).
pub struct LateFills<P> {
    inner: P,
    pending: Vec<u8>,
}

impl<P: BacktestPolicy> LateFills<P> {
    /// Wrap `inner`.
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }
}

impl<P: BacktestPolicy> BacktestPolicy for LateFills<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn needs_full_obs(&self) -> bool {
        self.inner.needs_full_obs()
    }
    fn reset(&mut self) {
        self.inner.reset();
        self.pending.clear();
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        let mut now = vec![HOLD; sym_out.len()];
        self.inner.act(view, &mut now, master_out)?;
        let s = view.n_symbols();
        if self.pending.len() != sym_out.len() {
            self.pending = vec![HOLD; sym_out.len()];
        }
        for (i, &k) in view.step_in_episode.iter().enumerate() {
            if k == 0 {
                self.pending[i * s..(i + 1) * s].fill(HOLD);
            }
        }
        sym_out.copy_from_slice(&self.pending);
        self.pending = now;
        Ok(())
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Its name.
    pub scenario: String,
    /// What it changes.
    pub description: String,
    /// The policy's metrics.
    pub policy: Metrics,
    /// The policy's risk-limit check.
    pub limits: LimitCheck,
    /// The equal-weight baseline's metrics under the same scenario.
    pub equal_weight: Metrics,
    /// The equal-weight baseline's risk-limit check.
    pub equal_weight_limits: LimitCheck,
}

/// The stress table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StressReport {
    /// What was stressed (a checkpoint directory, or a policy's name).
    pub subject: String,
    /// Replayed bars: first decision bar and last bar.
    pub bars: (usize, usize),
    /// One row per scenario, `base` first.
    pub rows: Vec<ScenarioResult>,
}

impl StressReport {
    /// The `base` row.
    pub fn base(&self) -> Option<&ScenarioResult> {
        self.rows.iter().find(|r| r.scenario == "base")
    }

    /// Whether every limit held in every scenario (policy and baseline).
    pub fn limits_held(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.limits.held() && r.equal_weight_limits.held())
    }

    /// The table: the policy's metrics per scenario and their change against `base`, the kill
    /// switch's firings and the limit check; then the equal-weight reference.
    pub fn text(&self) -> String {
        let base = self.base().map(|b| b.policy.clone()).unwrap_or_default();
        let mut out = format!(
            "stress of {} over bars {}..={}\n{:<12} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8} {:>6} {:>9} {:>8}  {}\n",
            self.subject,
            self.bars.0,
            self.bars.1,
            "scenario",
            "return %",
            "d ret",
            "sharpe",
            "d shrp",
            "max dd %",
            "d dd",
            "turnover",
            "costs %",
            "kills",
            "dd@kill%",
            "limits",
            "EW return % / sharpe"
        );
        for r in &self.rows {
            let m = &r.policy;
            out += &format!(
                "{:<12} {:>9.2} {:>+9.2} {:>8.3} {:>+8.3} {:>9.2} {:>+9.2} {:>10.2} {:>8.3} {:>6} {:>9.2} {:>8}  {:+.2} / {:.3}\n",
                r.scenario,
                100.0 * m.total_return,
                100.0 * (m.total_return - base.total_return),
                m.sharpe,
                m.sharpe - base.sharpe,
                100.0 * m.max_drawdown,
                100.0 * (m.max_drawdown - base.max_drawdown),
                m.turnover,
                100.0 * m.costs_paid,
                r.limits.kills,
                100.0 * r.limits.max_drawdown_at_kill,
                if r.limits.held() { "held" } else { "BROKEN" },
                100.0 * r.equal_weight.total_return,
                r.equal_weight.sharpe
            );
        }
        for r in &self.rows {
            for (who, l) in [
                ("policy", &r.limits),
                ("equal-weight", &r.equal_weight_limits),
            ] {
                if let Some(v) = &l.first_violation {
                    out += &format!(
                        "{} {who}: {} violations, first: {v}\n",
                        r.scenario,
                        l.violations()
                    );
                }
            }
        }
        out
    }

    /// Write the report as JSON, atomically.
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::json("stress report", e))?;
        crate::atomic::write(path, text.as_bytes())
    }
}

/// Replay the policies `make` builds (one per scenario's market) over `period` of `market` under
/// every scenario of `scenarios` (module docs).
pub fn stress_policy(
    setup: &EnvSetup,
    market: &Market,
    opts: &BacktestOptions,
    scenarios: &[Scenario],
    subject: &str,
    make: &mut dyn FnMut(&Market) -> Result<Box<dyn BacktestPolicy>>,
) -> Result<StressReport> {
    let md = &market.data;
    let layout = EnvLayout::new(setup, md, opts.period)?;
    let (a, hi) = (layout.lo.max(WARMUP), layout.hi);
    let mut rows = Vec::with_capacity(scenarios.len());
    for sc in scenarios {
        let s = sc.setup(setup);
        let m = match sc.data(md, a, hi) {
            Some(d) => {
                d.validate(&format!("stress scenario {}", sc.name()))?;
                Market::from_data(d)
            }
            None => market.clone(),
        };
        let play = |p: Box<dyn BacktestPolicy>| -> Result<_> {
            let r = if *sc == Scenario::LateFills {
                let mut late = LateFills::new(p);
                run_policy(&s, m.data.clone(), m.features.clone(), opts, &mut late)?
            } else {
                let mut p = p;
                run_policy(&s, m.data.clone(), m.features.clone(), opts, p.as_mut())?
            };
            Ok(r)
        };
        let pr = play(make(&m)?)?;
        let ew = play(Box::new(EqualWeight))?;
        rows.push(ScenarioResult {
            scenario: sc.name(),
            description: sc.describe(),
            policy: pr.metrics,
            limits: pr.limits,
            equal_weight: ew.metrics,
            equal_weight_limits: ew.limits,
        });
    }
    Ok(StressReport {
        subject: subject.to_string(),
        bars: (a, hi - 1),
        rows,
    })
}

/// What [`stress_checkpoint`] stresses.
#[derive(Debug, Clone)]
pub struct StressOptions {
    /// A checkpoint or run directory.
    pub checkpoint: PathBuf,
    /// `section.field=value` overrides of its configuration.
    pub overrides: Vec<String>,
    /// A data file instead of the configured source.
    pub data: Option<PathBuf>,
    /// The replayed period (default: the test period) and backend.
    pub backtest: BacktestOptions,
    /// The scenarios (default [`Scenario::ALL`]).
    pub scenarios: Vec<Scenario>,
}

impl StressOptions {
    /// Every scenario over the test period of the checkpoint's data.
    pub fn new(checkpoint: impl Into<PathBuf>) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            overrides: Vec::new(),
            data: None,
            backtest: BacktestOptions {
                period: Period::Test,
                ..Default::default()
            },
            scenarios: Scenario::ALL.to_vec(),
        }
    }
}

/// Stress a checkpoint (greedy) under its own configuration (module docs).
pub fn stress_checkpoint(opts: &StressOptions) -> Result<StressReport> {
    let dir = crate::run::resolve_checkpoint(&opts.checkpoint)?;
    let cfg = Config::from_file_with_overrides(dir.join(crate::run::CONFIG_FILE), &opts.overrides)?;
    let (market, _) = Market::load_source(&cfg.data, opts.data.as_deref())?;
    let master = cfg.master.default_action;
    let mut make = |m: &Market| -> Result<Box<dyn BacktestPolicy>> {
        Ok(Box::new(AgentPolicy::from_checkpoint(
            "ppo", &dir, m, master,
        )?))
    };
    stress_policy(
        &cfg.env_setup(),
        &market,
        &opts.backtest,
        &opts.scenarios,
        &dir.display().to_string(),
        &mut make,
    )
}
