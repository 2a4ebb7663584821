/*!
Deterministic backtests: a [`BacktestPolicy`] plays a whole period once per data path, and the per-bar
equity, exposure, traded notional and costs become [`Metrics`].

# Layout of a run

For a period `[lo, hi)` the env starts at `a = max(lo, WARMUP)` (spec §1) and steps at bars
`t = a, a + 1, ..., hi - 2` (each fills at `t + 1`), so a path has `n = hi - 1 - a` steps and its curve
`n + 1` bars (`a ..= hi - 1`). The env is built with `env.scenarios = P` (one scenario per data
path) and `env.episode_len = n`, which makes the start draw deterministic (`start_a = start_b = a`);
after `reset` the scenario `n`'s path is set to `n` through a snapshot. One episode spans the period:
it ends (truncated) exactly at the last step.

# What is recorded per step (scenario with path p, step at bar t)

From the snapshots before and after the step, in `f64` (`q0`, `q1` shares, `E0`, `E1` equity):
- equity `E1` and gross exposure `G = sum_s q1 * C[t+1]` (the env's state);
- traded notional `sum_s |q1 - q0| * O[t+1]` (a step either buys or sells a symbol, never both), plus,
  when the kill switch fires, the liquidation notional `sum_s q1 * C[t+1]`;
- costs from the identity of spec §4.10: `sum_s pnl_s - (E1 - E0)` with the mid-price P&L
  `pnl_s = q1 * C[t+1] - q0 * C[t] - (q1 - q0) * O[t+1]` (commission, slippage and borrow fees, exact
  in `f64` rather than the `f32` cost component of the step outputs).

At a step that ends the episode (the last step, or the kill switch) the env resets the scenario at
once, so its post-step state is not in the snapshot: `E1` then comes from the episode record
(`C0 * (1 + total_return)`) and `q1` (before any kill-switch sale) from replaying that one step on a
CPU "shadow" backend loaded with the pre-step snapshot, whose layout never truncates and whose kill
switch is disabled. A path stopped by the kill switch keeps its final equity, flat, with no exposure,
trades or costs, for its remaining bars (the env keeps stepping it with HOLD; those steps are ignored).

Metrics are computed per path and averaged over the paths ([`Metrics::average`]).
*/

use std::str::FromStr;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::baselines::{
    BacktestPolicy, EqualWeight, Hold, Momentum, PolicyView, RandomPolicy, rebalanced_equal_weight,
    spy_buy_and_hold,
};
use super::metrics::{Curve, Metrics};
use crate::data::MarketData;
use crate::env::logic::HOLD;
use crate::env::obs::{DYN_OBS, OBS_DIM};
use crate::env::{
    Backend, BackendKind, EnvLayout, EnvSetup, N_ACTIONS, Period, Snapshot, VecEnv, cpu::CpuBackend,
};
use crate::error::{Error, Result};
use crate::features::Features;

/// The scripted baselines (see [`super::baselines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Never trades.
    Hold,
    /// Uniformly random legal actions (seeded).
    Random,
    /// Equal-weight buy-and-hold of every symbol.
    EqualWeight,
    /// Buy-and-hold of the benchmark.
    Spy,
    /// 1/N of the equity in every symbol, rebalanced weekly (computed from prices).
    Rebalanced,
    /// Time-series momentum: long the symbols whose trailing week was up, decided daily.
    Momentum,
}

impl Baseline {
    /// The baselines `marl-trade eval` plays, in report order.
    pub const ALL: [Baseline; 4] = [
        Baseline::Hold,
        Baseline::Random,
        Baseline::EqualWeight,
        Baseline::Spy,
    ];

    /// Every baseline (the walk-forward's and the report's set adds 1/N rebalanced and momentum).
    pub const EVERY: [Baseline; 6] = [
        Baseline::Hold,
        Baseline::Random,
        Baseline::EqualWeight,
        Baseline::Rebalanced,
        Baseline::Spy,
        Baseline::Momentum,
    ];

    /// The baseline's name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Hold => "hold",
            Baseline::Random => "random",
            Baseline::EqualWeight => "equal-weight",
            Baseline::Spy => "spy",
            Baseline::Rebalanced => "rebalanced",
            Baseline::Momentum => "momentum",
        }
    }

    /// The env policy of a baseline on data with `bars_per_day` bars a day; `None` for `Spy` and
    /// `Rebalanced` (computed from prices).
    pub fn policy(self, seed: u64, bars_per_day: usize) -> Option<Box<dyn BacktestPolicy>> {
        match self {
            Baseline::Hold => Some(Box::new(Hold)),
            Baseline::Random => Some(Box::new(RandomPolicy::new(seed))),
            Baseline::EqualWeight => Some(Box::new(EqualWeight)),
            Baseline::Momentum => Some(Box::new(Momentum::new(5 * bars_per_day, bars_per_day))),
            Baseline::Spy | Baseline::Rebalanced => None,
        }
    }
}

impl FromStr for Baseline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Baseline::EVERY
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown policy `{s}` (expected hold, random, equal-weight, rebalanced, spy or momentum)"
                ))
            })
    }
}

/// A selection of baselines: `all` or a comma-separated list of names (the CLI's `--policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineSet(pub Vec<Baseline>);

impl Default for BaselineSet {
    fn default() -> Self {
        Self(Baseline::ALL.to_vec())
    }
}

impl FromStr for BaselineSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim() == "all" {
            return Ok(Self::default());
        }
        let v = s
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<Vec<Baseline>>>()?;
        if v.is_empty() {
            return Err(Error::invalid("no baseline named"));
        }
        Ok(Self(v))
    }
}

/// How to run a backtest.
#[derive(Debug, Clone, Copy)]
pub struct BacktestOptions {
    /// Which bars.
    pub period: Period,
    /// Which environment backend.
    pub backend: BackendKind,
    /// Seed of stochastic policies (the env itself is deterministic here).
    pub seed: u64,
    /// Show a progress bar on stderr (drawn only when stderr is a terminal).
    pub progress: bool,
    /// Where a checkpoint's policy runs (`--device`; scripted baselines ignore it).
    pub device: crate::agents::DeviceSpec,
}

impl Default for BacktestOptions {
    fn default() -> Self {
        Self {
            period: Period::Test,
            backend: BackendKind::Cpu,
            seed: 0,
            progress: false,
            device: crate::agents::DeviceSpec::Cpu,
        }
    }
}

/// The outcome of one policy's backtest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacktestResult {
    /// Metrics averaged over the paths.
    pub metrics: Metrics,
    /// Metrics of each path.
    pub per_path: Vec<Metrics>,
    /// Per-bar series of each path.
    pub curves: Vec<Curve>,
    /// First decision bar `a` and last bar `hi - 1` of every curve.
    pub first_bar: usize,
    /// See `first_bar`.
    pub last_bar: usize,
    /// The risk limits checked on every step of an env backtest ([`LimitCheck`]); empty (0 steps
    /// checked) for the curves computed from prices (`spy`, `rebalanced`).
    pub limits: LimitCheck,
}

/// The env's risk limits, checked from its state before and after every step of a backtest
/// (spec §4), in `f64`, with a relative tolerance of `1e-6`:
/// - **position cap**: a symbol bought in a step holds at most `cap * E0` at the decision price
///   `C[t]` afterwards (`cap` of the step's master action; step 3);
/// - **leverage**: after a step with buys, the gross exposure at the fill price is at most
///   `leverage_cap` times the equity at the open after the buys (step 7; the borrow fee of step 9
///   is added back to the cash);
/// - **open positions**: a step that opens positions ends with at most `max_open` of them (step 4);
/// - **kill switch**: no scenario continues past a step whose drawdown from its peak reached
///   `kill_drawdown` (step 11); the drawdown at which the switch fired is recorded (a gap can
///   carry it past the threshold: the switch sells at the close of the bar that breached it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitCheck {
    /// Scenario steps checked.
    pub steps: usize,
    /// Of those, steps with at least one buy.
    pub buy_steps: usize,
    /// Position-cap violations.
    pub cap_violations: usize,
    /// Leverage violations.
    pub leverage_violations: usize,
    /// Open-position-limit violations.
    pub open_violations: usize,
    /// Steps that continued with a drawdown at or past `kill_drawdown`.
    pub kill_violations: usize,
    /// Kill-switch firings.
    pub kills: usize,
    /// Largest gross / equity at the open after a step with buys.
    pub max_leverage_at_fill: f64,
    /// Largest drawdown from the peak at the close of a step that did not fire the kill switch.
    pub max_drawdown_alive: f64,
    /// Largest drawdown at which the kill switch fired (0 without a firing).
    pub max_drawdown_at_kill: f64,
    /// The first violation, described (scenario, bar, symbol, values).
    pub first_violation: Option<String>,
}

impl LimitCheck {
    /// Total violations of every kind.
    pub fn violations(&self) -> usize {
        self.cap_violations + self.leverage_violations + self.open_violations + self.kill_violations
    }

    /// Whether every limit held on every step checked.
    pub fn held(&self) -> bool {
        self.violations() == 0
    }

    fn violation(&mut self, what: String) {
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }
}

impl BacktestResult {
    /// The result of `curves` (one per path, metrics per path and averaged), with no limit check.
    pub fn from_curves(
        policy: &str,
        curves: Vec<Curve>,
        first_bar: usize,
        last_bar: usize,
    ) -> Self {
        let per_path: Vec<Metrics> = curves
            .iter()
            .map(|c| Metrics::from_curve(policy, c))
            .collect();
        let metrics = Metrics::average(policy, &per_path).unwrap_or_default();
        Self {
            metrics,
            per_path,
            curves,
            first_bar,
            last_bar,
            limits: LimitCheck::default(),
        }
    }
}

/// The environment setup and layout of a backtest over `period` (module docs): one scenario per
/// path, one episode spanning the period. Returns the adjusted setup and its layout (`episode_len`
/// is the number of steps).
pub fn backtest_setup(
    cfg: &EnvSetup,
    md: &MarketData,
    period: Period,
) -> Result<(EnvSetup, EnvLayout)> {
    let probe = EnvLayout::new(cfg, md, period)?;
    let steps = probe.hi - 1 - probe.start_a;
    let mut c = cfg.clone();
    c.env.scenarios = md.paths;
    c.env.episode_len = steps;
    let layout = EnvLayout::new(&c, md, period)?;
    debug_assert_eq!(layout.start_a, layout.start_b);
    Ok((c, layout))
}

fn progress_bar(show: bool, len: usize, name: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} bars ({eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(name.to_string());
    pb
}

/// Run `policy` over the period of `opts` once per path (module docs).
pub fn run_policy(
    cfg: &EnvSetup,
    data: Arc<MarketData>,
    features: Arc<Features>,
    opts: &BacktestOptions,
    policy: &mut dyn BacktestPolicy,
) -> Result<BacktestResult> {
    let (bcfg, layout) = backtest_setup(cfg, &data, opts.period)?;
    let steps = layout.episode_len;
    let (n, s) = (layout.n_scenarios, layout.n_symbols);
    let c0 = layout.params.initial_capital;
    let md = data.clone();
    let mut env = VecEnv::new(
        &bcfg,
        data.clone(),
        features.clone(),
        opts.period,
        opts.backend,
    )?;
    env.reset(opts.seed)?;
    let mut snap = env.snapshot()?;
    for (i, st) in snap.scenarios.iter_mut().enumerate() {
        st.path = i as u32;
    }
    env.load_snapshot(&snap)?;
    policy.reset();

    let default_master = layout.params.default_action as u8;
    let mut curves: Vec<Curve> = (0..n).map(|_| Curve::new(c0, md.bars_per_year())).collect();
    let mut active = vec![true; n];
    let mut mask = vec![0u8; n * s * N_ACTIONS];
    let mut dyn_obs = vec![0f32; n * s * DYN_OBS];
    let mut full = if policy.needs_full_obs() {
        vec![0f32; n * s * OBS_DIM]
    } else {
        Vec::new()
    };
    let mut obs_index = vec![0u32; 2 * n];
    let mut step_k = vec![0u32; n];
    let mut acts = vec![HOLD; n * s];
    let mut masters = vec![default_master; n];
    let mut shadow: Option<Box<dyn Backend>> = None;
    let pb = progress_bar(opts.progress, steps, policy.name());
    let mut limits = LimitCheck::default();
    let params = layout.params;

    for _ in 0..steps {
        env.action_mask(&mut mask)?;
        env.dyn_obs(&mut dyn_obs)?;
        env.obs_index(&mut obs_index)?;
        if !full.is_empty() {
            env.gather_obs(&mut full)?;
        }
        for (k, st) in step_k.iter_mut().zip(&snap.scenarios) {
            *k = st.k;
        }
        let view = PolicyView {
            layout: &layout,
            data: &md,
            features: &features,
            mask: &mask,
            dyn_obs: &dyn_obs,
            obs: if full.is_empty() { None } else { Some(&full) },
            obs_index: &obs_index,
            step_in_episode: &step_k,
            scenarios: &snap.scenarios,
        };
        policy.act(&view, &mut acts, &mut masters)?;
        for i in (0..n).filter(|&i| !active[i]) {
            acts[i * s..(i + 1) * s].fill(HOLD);
            masters[i] = default_master;
        }
        let out = env.step(&acts, &masters)?;
        let done: Vec<bool> = (0..n).map(|i| out.done(i)).collect();
        let post = env.snapshot()?;
        let records = if done.iter().any(|&d| d) {
            env.drain_finished()
        } else {
            Vec::new()
        };
        let held: Option<Snapshot> = if (0..n).any(|i| done[i] && active[i]) {
            let sh = match &mut shadow {
                Some(sh) => sh,
                None => shadow.insert(make_shadow(&layout, &data, &features)),
            };
            sh.load_snapshot(&snap)?;
            sh.step(&acts, &masters)?;
            Some(sh.snapshot()?)
        } else {
            None
        };

        for i in 0..n {
            if !active[i] {
                let last = *curves[i].equity.last().unwrap_or(&c0);
                curves[i].push(last, 0.0, 0.0, 0.0);
                continue;
            }
            let st0 = &snap.scenarios[i];
            let (p, t) = (st0.path as usize, (st0.t0 + st0.k) as usize);
            let q0 = &snap.symbols.q[i * s..(i + 1) * s];
            let (q1, e1, killed) = if !done[i] {
                (
                    &post.symbols.q[i * s..(i + 1) * s],
                    post.scenarios[i].equity,
                    false,
                )
            } else {
                let rec = records
                    .iter()
                    .find(|r| r.scenario as usize == i)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "backtest: scenario {i} ended without an episode record"
                        ))
                    })?;
                let q1 = match &held {
                    Some(h) => &h.symbols.q[i * s..(i + 1) * s],
                    None => {
                        return Err(Error::invalid(
                            "backtest: no replayed state for a finished scenario",
                        ));
                    }
                };
                (q1, c0 * (1.0 + rec.total_return), rec.killed)
            };
            let e0 = st0.equity;
            let after = if done[i] { held.as_ref() } else { Some(&post) };
            if let Some(after) = after {
                let st1 = &after.scenarios[i];
                check_limits(
                    &mut limits,
                    &params,
                    &md,
                    (i, p, t),
                    (q0, q1),
                    (e0, masters[i]),
                    (st1.cash, st1.equity, st1.peak),
                    killed,
                );
            }
            let (mut traded, mut pnl, mut gross) = (0.0, 0.0, 0.0);
            for j in 0..s {
                let c = md.close[md.px(p, t, j)] as f64;
                let c1 = md.close[md.px(p, t + 1, j)] as f64;
                let o1 = md.open[md.px(p, t + 1, j)] as f64;
                let dq = q1[j] - q0[j];
                traded += dq.abs() * o1;
                pnl += q1[j] * c1 - q0[j] * c - dq * o1;
                gross += q1[j] * c1;
            }
            let cost = pnl - (e1 - e0);
            if killed {
                traded += gross;
                gross = 0.0;
            } else if !done[i] {
                gross = post.scenarios[i].gross;
            }
            curves[i].push(e1, gross, traded, cost);
            if done[i] {
                curves[i].killed = killed;
                active[i] = false;
            }
        }
        snap = post;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut res = BacktestResult::from_curves(policy.name(), curves, layout.start_a, layout.hi - 1);
    res.limits = limits;
    Ok(res)
}

/// Check one scenario step against the limits of [`LimitCheck`]. `who` = (scenario, path, bar),
/// `dir` = (master action), `after` = (cash, equity, peak) after the step and before any
/// kill-switch sale.
#[allow(clippy::too_many_arguments)]
fn check_limits(
    lc: &mut LimitCheck,
    params: &crate::env::logic::StepParams,
    md: &MarketData,
    (i, p, t): (usize, usize, usize),
    (q0, q1): (&[f64], &[f64]),
    (e0, master): (f64, u8),
    (cash1, e1, peak1): (f64, f64, f64),
    killed: bool,
) {
    const TOL: f64 = 1e-6;
    lc.steps += 1;
    let m = master as usize;
    let cap = params.position_caps[(m / 3) % 4];
    let max_open = params.max_open[m % 3] as usize;
    let c0 = params.initial_capital;
    let (mut bought, mut g_open, mut open0, mut openers) = (false, 0.0, 0, 0);
    for j in 0..q0.len() {
        let c = md.close[md.px(p, t, j)] as f64;
        let o1 = md.open[md.px(p, t + 1, j)] as f64;
        g_open += q1[j] * o1;
        open0 += (q0[j] > 0.0) as usize;
        if q1[j] > q0[j] {
            bought = true;
            openers += (q0[j] == 0.0) as usize;
            if q1[j] * c > cap * e0 * (1.0 + TOL) + TOL * c0 {
                lc.cap_violations += 1;
                lc.violation(format!(
                    "position cap: scenario {i}, bar {t}, symbol {j}: {:.2} held after a buy > cap {cap} x equity {e0:.2}",
                    q1[j] * c
                ));
            }
        }
    }
    if bought {
        lc.buy_steps += 1;
        let cash = if cash1 < 0.0 {
            cash1 / (1.0 + params.costs.borrow_per_bar)
        } else {
            cash1
        };
        let e_open = cash + g_open;
        let lev = if e_open > 0.0 {
            g_open / e_open
        } else {
            f64::INFINITY
        };
        lc.max_leverage_at_fill = lc.max_leverage_at_fill.max(lev);
        if lev > params.leverage_cap * (1.0 + TOL) {
            lc.leverage_violations += 1;
            lc.violation(format!(
                "leverage: scenario {i}, bar {t}: gross {g_open:.2} / equity {e_open:.2} = {lev:.4} at the fill > cap {}",
                params.leverage_cap
            ));
        }
        if openers > 0 && open0 + openers > max_open {
            lc.open_violations += 1;
            lc.violation(format!(
                "open positions: scenario {i}, bar {t}: {open0} open + {openers} opened > max_open {max_open}"
            ));
        }
    }
    let dd = if peak1 > 0.0 {
        1.0 - e1 / peak1.max(e1)
    } else {
        0.0
    };
    if killed {
        lc.kills += 1;
        lc.max_drawdown_at_kill = lc.max_drawdown_at_kill.max(dd);
    } else {
        lc.max_drawdown_alive = lc.max_drawdown_alive.max(dd);
        if dd >= params.kill_drawdown {
            lc.kill_violations += 1;
            lc.violation(format!(
                "kill switch: scenario {i}, bar {}: drawdown {dd:.4} >= {} and the episode went on",
                t + 1,
                params.kill_drawdown
            ));
        }
    }
}

/// A CPU backend that replays one step without ending the episode (module docs).
fn make_shadow(
    layout: &EnvLayout,
    data: &Arc<MarketData>,
    features: &Arc<Features>,
) -> Box<dyn Backend> {
    let mut l = *layout;
    l.hi = usize::MAX;
    l.episode_len = usize::MAX;
    l.params.kill_drawdown = f64::INFINITY;
    Box::new(CpuBackend::new(l, data.clone(), features.clone()))
}

/// Buy-and-hold of the benchmark over the period of `opts`, one curve per path (see
/// [`spy_buy_and_hold`]), on the same bars as [`run_policy`].
pub fn run_spy(
    cfg: &EnvSetup,
    data: &MarketData,
    opts: &BacktestOptions,
) -> Result<BacktestResult> {
    run_curves(
        cfg,
        data,
        opts,
        Baseline::Spy,
        |costs, capital, p, a, last| spy_buy_and_hold(data, costs, capital, p, a, last),
    )
}

/// A baseline computed from prices, not played in the env: `curve(costs, initial capital, path,
/// first bar, last bar)` per path over the period of `opts`, on the same bars as [`run_policy`].
fn run_curves(
    cfg: &EnvSetup,
    data: &MarketData,
    opts: &BacktestOptions,
    baseline: Baseline,
    curve: impl Fn(&crate::costs::CostParams, f64, usize, usize, usize) -> Result<super::metrics::Curve>,
) -> Result<BacktestResult> {
    let (_, layout) = backtest_setup(cfg, data, opts.period)?;
    let (a, last) = (layout.start_a, layout.hi - 1);
    let curves = (0..data.paths)
        .map(|p| {
            curve(
                &layout.params.costs,
                layout.params.initial_capital,
                p,
                a,
                last,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(BacktestResult::from_curves(
        baseline.name(),
        curves,
        a,
        last,
    ))
}

/// Backtest each of `which` (module docs); `opts.seed` seeds `random`.
pub fn run_baselines(
    cfg: &EnvSetup,
    data: Arc<MarketData>,
    features: Arc<Features>,
    opts: &BacktestOptions,
    which: &[Baseline],
) -> Result<Vec<BacktestResult>> {
    which
        .iter()
        .map(|b| match b.policy(opts.seed, data.bars_per_day) {
            Some(mut p) => run_policy(cfg, data.clone(), features.clone(), opts, p.as_mut()),
            None if *b == Baseline::Rebalanced => run_rebalanced(cfg, &data, opts),
            None => run_spy(cfg, &data, opts),
        })
        .collect()
}

/// Equal weight rebalanced weekly (`5 * bars_per_day` bars, see [`rebalanced_equal_weight`]) over
/// the period of `opts`, one curve per path, on the same bars as [`run_policy`].
pub fn run_rebalanced(
    cfg: &EnvSetup,
    data: &MarketData,
    opts: &BacktestOptions,
) -> Result<BacktestResult> {
    run_curves(
        cfg,
        data,
        opts,
        Baseline::Rebalanced,
        |costs, capital, p, a, last| {
            rebalanced_equal_weight(data, costs, capital, p, a, last, 5 * data.bars_per_day)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The limit check flags what the env must never do: it is fed hand-made states.
    #[test]
    fn the_limit_check_flags_each_violation() {
        let mut cfg = Config::default();
        cfg.data.synthetic.symbols = 2;
        cfg.data.synthetic.bars = 300;
        let md = crate::data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
        let params = crate::env::logic::StepParams::new(&cfg.env_setup(), 2, md.bars_per_year());
        let t = 150;
        let c = |j: usize| md.close[md.px(0, t, j)] as f64;
        let o1 = |j: usize| md.open[md.px(0, t + 1, j)] as f64;
        let c0 = params.initial_capital;
        let m = params.default_action as u8; // cap 0.05, neutral
        let cap = params.position_caps[(m as usize / 3) % 4];
        let check = |q1: [f64; 2], cash1: f64, e1: f64, peak: f64, killed: bool| {
            let mut lc = LimitCheck::default();
            check_limits(
                &mut lc,
                &params,
                &md,
                (0, 0, t),
                (&[0.0, 0.0], &q1),
                (c0, m),
                (cash1, e1, peak),
                killed,
            );
            lc
        };
        // Within the cap, no leverage, no drawdown: clean.
        let q = 0.5 * cap * c0 / c(0);
        let ok = check([q, 0.0], c0 - q * o1(0), c0, c0, false);
        assert!(ok.held() && ok.buy_steps == 1, "{ok:?}");
        // Over the position cap.
        let q = 1.5 * cap * c0 / c(0);
        let lc = check([q, 0.0], c0 - q * o1(0), c0, c0, false);
        assert_eq!(lc.cap_violations, 1, "{lc:?}");
        assert!(lc.first_violation.unwrap().contains("position cap"));
        // Over the leverage cap at the fill: gross 3 C0 on equity C0.
        let (qa, qb) = (1.5 * c0 / o1(0), 1.5 * c0 / o1(1));
        let lc = check([qa, qb], c0 - 3.0 * c0, c0, c0, false);
        assert!(
            lc.leverage_violations == 1 && lc.max_leverage_at_fill > 2.9,
            "{lc:?}"
        );
        // Drawdown past the kill switch without a kill; and with one (recorded, not a violation).
        let dd = params.kill_drawdown + 0.01;
        let lc = check([0.0, 0.0], c0 * (1.0 - dd), c0 * (1.0 - dd), c0, false);
        assert_eq!(lc.kill_violations, 1);
        let lc = check([0.0, 0.0], c0 * (1.0 - dd), c0 * (1.0 - dd), c0, true);
        assert!(lc.held() && lc.kills == 1 && (lc.max_drawdown_at_kill - dd).abs() < 1e-9);
    }
}
