/*!
Scripted baseline policies behind the [`BacktestPolicy`] trait, and the buy-and-hold benchmark.

A [`BacktestPolicy`] sees a [`PolicyView`] of the environment (everything `VecEnv` exposes between steps) and
writes one symbol action per (scenario, symbol) and one master action per scenario. A trained
policy implements the same trait (it can ask for the full observation with
[`BacktestPolicy::needs_full_obs`]).

The baselines (their master action is `master.default_action` unless stated):

- `hold` ([`Hold`]): HOLD everywhere. Never trades, pays nothing: its equity stays at the initial
  capital.
- `random` ([`RandomPolicy`]): per (scenario, symbol), an action drawn uniformly among those the
  action mask allows, from a [`SplitMix64`] stream seeded with the policy's seed (re-seeded by
  [`BacktestPolicy::reset`], so two runs are identical). The mask is the env's, i.e. computed with the
  stored directive, which is the default action at reset and then the default action it keeps
  sending, so a drawn action is never executed as HOLD by the mask (the open-position limit and the
  budget may still shrink it).
- `equal-weight` ([`EqualWeight`]): buy-and-hold of every symbol in equal dollar amounts. On the first
  step of each episode (step-in-episode 0) it sends BUY_SMALL for every symbol, then HOLD. Its
  master action, on every step, is [`equal_weight_master`]:
  risk index `ri` = the largest risk multiplier `m` with `S * risk.buy_small * m <= 1` (so the total
  bought is at most the equity; if no multiplier qualifies, the smallest one), position cap index
  `ci` = the smallest cap `>= risk.buy_small * m` (so the cap does not clip the order; if none, the
  largest cap), regime mode aggressive (`gi = 2`): `m = 12 ri + 3 ci + 2`. Each symbol gets
  `d = risk.buy_small * m * E0` dollars at `C[t0]` (spec §4.3), filled at the next open with slippage
  and commission. With the defaults (S = 143, buy_small 0.005, multipliers 0.5/1/1.5/2, caps
  0.02/0.05/0.10/0.20): `ri = 1` (143 * 0.005 * 1.5 = 1.07 > 1), `ci = 0`, `m = 14`, 71.5% of the
  equity invested. If `regime_max_open[2] < S` the env's open-position limit keeps only the first
  `max_open` openers (spec §4.4).
- `momentum` ([`Momentum`]): a time-series momentum rule on the env. Every `every` steps (one
  trading day, `bars_per_day`, in [`Baseline::policy`](super::Baseline::policy)), a symbol whose
  trailing return over `lookback` bars (one trading week, `5 * bars_per_day`) is positive is bought
  with BUY_SMALL if flat, and sold with SELL_ALL if held and the return is negative. Master action
  as `equal-weight`.
- `rebalanced` ([`rebalanced_equal_weight`]): 1/N of the whole equity in each symbol, rebalanced
  to exact equal weights at the open of every `every`-th bar (one trading week) after the decision
  bar `t0`; computed directly from prices like `spy` (fully invested, no impact, half spread +
  commission on the traded notional, paid out of the equity so that the book is exactly 1/N after
  the trade: the post-trade equity solves `e1 = e_open - (half_spread + commission) * sum_s |e1 / S - v_s|`
  by fixed-point iteration).
- `spy` ([`spy_buy_and_hold`]): the benchmark (column S of the data) is not tradeable in the env, so
  this curve is computed directly from the benchmark's prices: at the decision bar `t0` the whole
  initial capital `C0` buys `q = C0 / (O[t0+1] * (1 + half_spread) * (1 + commission))` at the open of
  the first fill bar `t0 + 1` (half spread and commission as in spec §4.5; no market impact: the
  index is taken as infinitely liquid), and the position is marked at the closes:
  `equity[t] = q * C[t]` for `t0 < t`. Traded notional `q * O[t0+1]`, costs `C0 - q * O[t0+1]`.
*/

use super::metrics::Curve;
use crate::costs::CostParams;
use crate::data::MarketData;
use crate::env::logic::{BUY_SMALL, HOLD, N_ACTIONS, SELL_ALL, StepParams};
use crate::env::{EnvLayout, ScenarioState};
use crate::error::{Error, Result};
use crate::features::Features;
use crate::rng::SplitMix64;

/// What a policy sees before a step. All arrays are row-major, scenario first.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    /// Sizes, bar range and the step parameters (master grid, order sizes, costs).
    pub layout: &'a EnvLayout,
    /// The market data (prices up to the current bar are what a causal policy may read).
    pub data: &'a MarketData,
    /// The feature array.
    pub features: &'a Features,
    /// Action mask `[N, S, 7]`, 1 = allowed (spec §4.2 with the stored directive).
    pub mask: &'a [u8],
    /// Dynamic observation `[N, S, DYN_OBS]` (spec §6).
    pub dyn_obs: &'a [f32],
    /// Full observation `[N, S, OBS_DIM]`, only when the policy asked for it
    /// ([`BacktestPolicy::needs_full_obs`]).
    pub obs: Option<&'a [f32]>,
    /// `(path, bar)` of every scenario's current observation, `[N, 2]`.
    pub obs_index: &'a [u32],
    /// Step within the current episode per scenario `[N]` (0 right after a reset).
    pub step_in_episode: &'a [u32],
    /// Every scenario's state before the step `[N]` (what a master observation is computed
    /// from, `env::master_obs::master_obs_row`).
    pub scenarios: &'a [ScenarioState],
}

impl PolicyView<'_> {
    /// Scenarios N.
    pub fn n_scenarios(&self) -> usize {
        self.layout.n_scenarios
    }
    /// Symbols S.
    pub fn n_symbols(&self) -> usize {
        self.layout.n_symbols
    }
    /// The env's step parameters.
    pub fn params(&self) -> &StepParams {
        &self.layout.params
    }
}

/// A policy driving a `VecEnv`: symbol actions `[N, S]` (values `0..7`) and master actions `[N]`
/// (values `0..48`).
pub trait BacktestPolicy {
    /// Short name, used in reports.
    fn name(&self) -> &str;
    /// Whether [`PolicyView::obs`] must be filled (costly: `N * S * OBS_DIM` floats per step).
    fn needs_full_obs(&self) -> bool {
        false
    }
    /// Called at the start of every run; a stochastic policy restarts its random stream here.
    fn reset(&mut self) {}
    /// Decide the actions of one step. `sym_out` is `[N, S]`, `master_out` `[N]`.
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()>;
}

fn check_out(view: &PolicyView, sym_out: &[u8], master_out: &[u8]) -> Result<()> {
    let (n, s) = (view.n_scenarios(), view.n_symbols());
    if sym_out.len() != n * s || master_out.len() != n || view.mask.len() != n * s * N_ACTIONS {
        return Err(Error::invalid(format!(
            "policy buffers: {} symbol actions, {} master actions, {} mask values for N = {n}, S = {s}",
            sym_out.len(),
            master_out.len(),
            view.mask.len()
        )));
    }
    Ok(())
}

/// A boxed policy is a policy (so that wrappers can take either).
impl BacktestPolicy for Box<dyn BacktestPolicy> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn needs_full_obs(&self) -> bool {
        (**self).needs_full_obs()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        (**self).act(view, sym_out, master_out)
    }
}

/// HOLD everywhere, master `default_action`.
#[derive(Debug, Clone, Default)]
pub struct Hold;

impl BacktestPolicy for Hold {
    fn name(&self) -> &str {
        "hold"
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        check_out(view, sym_out, master_out)?;
        sym_out.fill(HOLD);
        master_out.fill(view.params().default_action as u8);
        Ok(())
    }
}

/// Uniform among the allowed actions (module docs).
#[derive(Debug, Clone)]
pub struct RandomPolicy {
    seed: u64,
    rng: SplitMix64,
}

impl RandomPolicy {
    /// A policy drawing from a stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: SplitMix64::new(seed),
        }
    }
}

impl BacktestPolicy for RandomPolicy {
    fn name(&self) -> &str {
        "random"
    }
    fn reset(&mut self) {
        self.rng = SplitMix64::new(self.seed);
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        check_out(view, sym_out, master_out)?;
        for (a, m) in sym_out.iter_mut().zip(view.mask.chunks_exact(N_ACTIONS)) {
            let allowed = m.iter().filter(|&&x| x != 0).count() as u64;
            // HOLD is never masked; an all-zero row (impossible) falls back to HOLD.
            let mut j = if allowed > 0 {
                self.rng.below(allowed)
            } else {
                0
            };
            *a = HOLD;
            for (i, &x) in m.iter().enumerate() {
                if x != 0 {
                    if j == 0 {
                        *a = i as u8;
                        break;
                    }
                    j -= 1;
                }
            }
        }
        master_out.fill(view.params().default_action as u8);
        Ok(())
    }
}

/// The equal-weight buy-and-hold master action (module docs): aggressive mode, the largest risk
/// multiplier whose `S * buy_small * risk <= 1`, the smallest cap `>=` that order size.
pub fn equal_weight_master(p: &StepParams) -> u8 {
    let s = p.n_symbols as f64;
    let small = p.buy_size[0];
    let rm = &p.risk_multipliers;
    let fits: Option<usize> = (0..4)
        .filter(|&i| s * small * rm[i] <= 1.0)
        .fold(None, |best, i| match best {
            Some(b) if rm[b] >= rm[i] => Some(b),
            _ => Some(i),
        });
    let ri = fits.unwrap_or_else(|| (0..4).fold(0, |b, i| if rm[i] < rm[b] { i } else { b }));
    let size = small * rm[ri];
    let caps = &p.position_caps;
    let ci = (0..4)
        .filter(|&i| caps[i] >= size)
        .fold(None, |best: Option<usize>, i| match best {
            Some(b) if caps[b] <= caps[i] => Some(b),
            _ => Some(i),
        })
        .unwrap_or_else(|| (0..4).fold(0, |b, i| if caps[i] > caps[b] { i } else { b }));
    (12 * ri + 3 * ci + 2) as u8
}

/// Equal-weight buy-and-hold (module docs).
#[derive(Debug, Clone, Default)]
pub struct EqualWeight;

impl BacktestPolicy for EqualWeight {
    fn name(&self) -> &str {
        "equal-weight"
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        check_out(view, sym_out, master_out)?;
        let s = view.n_symbols();
        master_out.fill(equal_weight_master(view.params()));
        for (row, &k) in sym_out.chunks_exact_mut(s).zip(view.step_in_episode) {
            row.fill(if k == 0 { BUY_SMALL } else { HOLD });
        }
        Ok(())
    }
}

/// The momentum rule (module docs): every `every` steps, per symbol, the trailing return over
/// `lookback` bars `C[t] / C[t - lookback] - 1` (the bars a causal policy may read); a flat symbol
/// with a positive trailing return is bought (BUY_SMALL), a held symbol with a negative one is sold
/// (SELL_ALL); HOLD otherwise and between decision steps. Master action as [`EqualWeight`], so a
/// fully long momentum book is the equal-weight book.
#[derive(Debug, Clone)]
pub struct Momentum {
    /// Trailing window in bars (>= 1).
    pub lookback: usize,
    /// Decide every this many steps (>= 1); the first step of an episode always decides.
    pub every: usize,
}

impl Momentum {
    /// A rule with trailing window `lookback` bars deciding every `every` steps (both at least 1).
    pub fn new(lookback: usize, every: usize) -> Self {
        Self {
            lookback: lookback.max(1),
            every: every.max(1),
        }
    }
}

impl BacktestPolicy for Momentum {
    fn name(&self) -> &str {
        "momentum"
    }
    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        check_out(view, sym_out, master_out)?;
        let s = view.n_symbols();
        let md = view.data;
        master_out.fill(equal_weight_master(view.params()));
        for i in 0..view.n_scenarios() {
            let row = &mut sym_out[i * s..(i + 1) * s];
            row.fill(HOLD);
            if !(view.step_in_episode[i] as usize).is_multiple_of(self.every) {
                continue;
            }
            let (p, t) = (
                view.obs_index[2 * i] as usize,
                view.obs_index[2 * i + 1] as usize,
            );
            let t_back = t.saturating_sub(self.lookback);
            for (j, a) in row.iter_mut().enumerate() {
                let r =
                    md.close[md.px(p, t, j)] as f64 / md.close[md.px(p, t_back, j)] as f64 - 1.0;
                let m = &view.mask[(i * s + j) * N_ACTIONS..(i * s + j + 1) * N_ACTIONS];
                let held = m[SELL_ALL as usize] != 0;
                *a = if !held && r > 0.0 && m[BUY_SMALL as usize] != 0 {
                    BUY_SMALL
                } else if held && r < 0.0 {
                    SELL_ALL
                } else {
                    HOLD
                };
            }
        }
        Ok(())
    }
}

/// Equal weight (1/N) over the symbols, rebalanced every `every` bars (module docs): the whole
/// equity is invested at bar `t0` and re-split equally at the open of every `every`-th bar, paying
/// half spread + commission on the traded notional (no impact, as [`spy_buy_and_hold`]). A curve of
/// `t_end - t0 + 1` bars on path `path`.
pub fn rebalanced_equal_weight(
    md: &MarketData,
    costs: &CostParams,
    initial_capital: f64,
    path: usize,
    t0: usize,
    t_end: usize,
    every: usize,
) -> Result<Curve> {
    if path >= md.paths || t_end >= md.bars || t_end <= t0 || every == 0 {
        return Err(Error::invalid(format!(
            "1/N rebalanced every {every} bars over bars {t0}..={t_end} of path {path}: the data has {} paths of {} bars",
            md.paths, md.bars
        )));
    }
    let s = md.n_symbols();
    let rate = costs.half_spread + costs.commission;
    let mut q = vec![0.0f64; s];
    let mut cash = initial_capital;
    let mut c = Curve::new(initial_capital, md.bars_per_year());
    for t in t0 + 1..=t_end {
        let (mut traded, mut cost) = (0.0, 0.0);
        if (t - t0 - 1).is_multiple_of(every) {
            // Rebalance at the open of t: equity at the open, target value e / S per symbol, the
            // trade's cost taken out of the equity first (so that the result is exactly 1/N).
            let open = |j: usize| md.open[md.px(path, t, j)] as f64;
            let e_open = cash + (0..s).map(|j| q[j] * open(j)).sum::<f64>();
            // Solve for the post-trade equity e1 = e_open - rate * sum |e1 / S - v_j| by fixed point.
            let mut e1 = e_open;
            for _ in 0..50 {
                let turn: f64 = (0..s).map(|j| (e1 / s as f64 - q[j] * open(j)).abs()).sum();
                e1 = e_open - rate * turn;
            }
            for (j, qj) in q.iter_mut().enumerate() {
                let target = e1 / s as f64 / open(j);
                traded += ((target - *qj) * open(j)).abs();
                *qj = target;
            }
            cost = e_open - e1;
            cash = 0.0;
        }
        let g: f64 = (0..s)
            .map(|j| q[j] * md.close[md.px(path, t, j)] as f64)
            .sum();
        c.push(cash + g, g, traded, cost);
    }
    Ok(c)
}

/// Buy-and-hold of the benchmark on path `path` from decision bar `t0` to bar `t_end` (module docs):
/// a curve of `t_end - t0 + 1` bars. Errors if the bars are out of range or `t_end <= t0`.
pub fn spy_buy_and_hold(
    md: &MarketData,
    costs: &CostParams,
    initial_capital: f64,
    path: usize,
    t0: usize,
    t_end: usize,
) -> Result<Curve> {
    if path >= md.paths || t_end >= md.bars || t_end <= t0 {
        return Err(Error::invalid(format!(
            "benchmark buy-and-hold over bars {t0}..={t_end} of path {path}: the data has {} paths of {} bars",
            md.paths, md.bars
        )));
    }
    let b = md.n_symbols();
    let o1 = md.open[md.px(path, t0 + 1, b)] as f64;
    let q = initial_capital / (o1 * (1.0 + costs.half_spread) * (1.0 + costs.commission));
    let mut c = Curve::new(initial_capital, md.bars_per_year());
    for t in t0 + 1..=t_end {
        let v = q * md.close[md.px(path, t, b)] as f64;
        let (traded, cost) = if t == t0 + 1 {
            (q * o1, initial_capital - q * o1)
        } else {
            (0.0, 0.0)
        };
        c.push(v, v, traded, cost);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::EnvSetup as Config;

    fn params(cfg: &Config, s: usize) -> StepParams {
        StepParams::new(cfg, s, 1764.0)
    }

    #[test]
    fn equal_weight_master_defaults() {
        let cfg = Config::default();
        // S = 143: 143 * 0.005 * 1.0 = 0.715 <= 1 < 1.0725 = 143 * 0.005 * 1.5 -> ri = 1;
        // size 0.005 -> smallest cap >= 0.005 is 0.02 (ci = 0); aggressive: m = 12 + 0 + 2 = 14.
        assert_eq!(equal_weight_master(&params(&cfg, 143)), 14);
        // S = 8: 8 * 0.005 * 2 = 0.08 -> ri = 3, size 0.01 -> cap 0.02 (ci = 0): m = 36 + 0 + 2 = 38.
        assert_eq!(equal_weight_master(&params(&cfg, 8)), 38);
        // S = 400: even 0.5 gives 400 * 0.005 * 0.5 = 1.0 <= 1 -> ri = 0, m = 2.
        assert_eq!(equal_weight_master(&params(&cfg, 400)), 2);
        // S = 1000: nothing fits -> the smallest multiplier (ri = 0).
        assert_eq!(equal_weight_master(&params(&cfg, 1000)), 2);
        // buy_small 0.2 and S = 2: 2 * 0.2 * 2 = 0.8 -> ri = 3, size 0.4 > every cap -> largest cap (ci = 3).
        let mut c2 = Config::default();
        c2.risk.buy_small = 0.2;
        assert_eq!(equal_weight_master(&params(&c2, 2)), 36 + 9 + 2);
    }
}
