/*!
The reward: seven weighted components per symbol agent, the master's reward, and the per-component
episode statistics that show when one term dominates or collapses (docs/env-spec.md §5).

The per-element formulas ([`dsr`], [`SymbolTerms::components`], [`master_reward`]) are shared by the
CPU backend and mirrored in `kernels/env_logic.cuh`. [`RewardShaper`] aggregates finished episodes
on the host, whatever the backend.
*/

// Index loops over parallel per-symbol arrays mirror the CUDA kernels line by line.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Reward weights and shaping parameters (docs/env-spec.md, "Reward").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Weight of the P&L term (spec §5).
    pub w_pnl: f64,
    /// Weight of the cost term.
    pub w_cost: f64,
    /// Weight of the timing term.
    pub w_timing: f64,
    /// Weight of the differential-Sharpe term.
    pub w_sharpe: f64,
    /// Weight of the intra-trade drawdown term.
    pub w_drawdown: f64,
    /// Weight of the utilisation term.
    pub w_util: f64,
    /// Weight of the diversification term.
    pub w_divers: f64,
    /// EMA rate of the differential Sharpe ratio's moment estimates.
    pub dsr_eta: f64,
    /// The differential Sharpe term is clipped to [-dsr_clip, dsr_clip].
    pub dsr_clip: f64,
    /// Intra-trade drawdown beyond which the drawdown penalty applies.
    pub trade_dd_threshold: f64,
    /// Target gross exposure / equity for the utilisation term.
    pub util_target: f64,
    /// Reference annualised volatility of one stock's returns (default 0.25, a typical large cap).
    /// With the data's bars per year it gives the per-bar scale `bar_vol = ref_vol /
    /// sqrt(bars_per_year)` on which util and divers express a misallocated fraction of equity as
    /// P&L at stake, and from which the sharpe term's variance floor is built (spec §5).
    pub ref_vol: f64,
    /// Master reward weight of the portfolio's differential Sharpe ratio (the other two master
    /// terms: diversification, excess return over the benchmark).
    pub master_w_sharpe: f64,
    /// Master reward weight of the diversification term.
    pub master_w_divers: f64,
    /// Master reward weight of the excess return over the benchmark.
    pub master_w_excess: f64,
    /// Master reward weight of the portfolio's drawdown from its episode peak (spec §5: the term
    /// is `-(1 - E1 / peak)` every step, so its sum over an interval is the area under water).
    pub master_w_drawdown: f64,
    /// Master reward weight of the mean-variance utility of the portfolio return (spec §5: the
    /// term is `r_p - 0.5 * master_risk_aversion * r_p^2`).
    pub master_w_utility: f64,
    /// Risk aversion `gamma` of the master's utility term.
    pub master_risk_aversion: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            w_pnl: 10.0,
            w_cost: 5.0,
            w_timing: 2.0,
            w_sharpe: 3.0,
            w_drawdown: 5.0,
            w_util: 0.5,
            w_divers: 1.0,
            dsr_eta: 0.01,
            dsr_clip: 1.0,
            trade_dd_threshold: 0.10,
            util_target: 0.8,
            ref_vol: 0.25,
            master_w_sharpe: 1.0,
            master_w_divers: 0.1,
            master_w_excess: 100.0,
            master_w_drawdown: MASTER_W_DRAWDOWN,
            master_w_utility: MASTER_W_UTILITY,
            master_risk_aversion: MASTER_RISK_AVERSION,
        }
    }
}

impl RewardConfig {
    /// Range checks of the shaping parameters; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::config_field(origin, field, why.into()));
        if !(self.dsr_eta > 0.0 && self.dsr_eta < 1.0) {
            return bad("reward.dsr_eta", "must be in (0, 1)");
        }
        if !(self.trade_dd_threshold > 0.0 && self.trade_dd_threshold < 1.0) {
            return bad("reward.trade_dd_threshold", "must be in (0, 1)");
        }
        if self.util_target.is_nan() || self.util_target <= 0.0 {
            return bad("reward.util_target", "must be > 0");
        }
        if !(self.ref_vol > 0.0 && self.ref_vol.is_finite()) {
            return bad("reward.ref_vol", "must be > 0 and finite");
        }
        if self.dsr_clip.is_nan() || self.dsr_clip <= 0.0 {
            return bad("reward.dsr_clip", "must be > 0");
        }
        if !(self.master_risk_aversion >= 0.0 && self.master_risk_aversion.is_finite()) {
            return bad("reward.master_risk_aversion", "must be >= 0 and finite");
        }
        Ok(())
    }

    /// The seven symbol-reward weights in storage order (`COMPONENT_NAMES`).
    pub fn weights(&self) -> [f64; N_COMPONENTS] {
        [
            self.w_pnl,
            self.w_cost,
            self.w_timing,
            self.w_sharpe,
            self.w_drawdown,
            self.w_util,
            self.w_divers,
        ]
    }
}

/// Default weight of the master's drawdown term (`reward.master_w_drawdown`; docs/env-spec.md §5
/// gives the scale check it comes from).
pub const MASTER_W_DRAWDOWN: f64 = 10.0;

/// Default weight of the master's utility term (`reward.master_w_utility`; docs/env-spec.md §5).
pub const MASTER_W_UTILITY: f64 = 0.0;

/// Default risk aversion of the master's utility term (`reward.master_risk_aversion`).
pub const MASTER_RISK_AVERSION: f64 = 10.0;

/// Number of reward components.
pub const N_COMPONENTS: usize = 7;
/// Component names, in storage order.
pub const COMPONENT_NAMES: [&str; N_COMPONENTS] = [
    "pnl", "cost", "timing", "sharpe", "drawdown", "util", "divers",
];

/// Reward weights and shaping constants in the order the step uses them.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct RewardParams {
    /// Weights of pnl, cost, timing, sharpe, drawdown, util, divers.
    pub w: [f64; N_COMPONENTS],
    /// EMA rate of the differential Sharpe ratio.
    pub dsr_eta: f64,
    /// Clip of the differential Sharpe ratio (in Sharpe units, before it is put on the P&L scale).
    pub dsr_clip: f64,
    /// Intra-trade drawdown beyond which the drawdown term applies.
    pub trade_dd_threshold: f64,
    /// Target gross exposure / equity of the utilisation term.
    pub util_target: f64,
    /// Reference per-bar volatility `ref_vol / sqrt(bars_per_year)` (spec §5).
    pub bar_vol: f64,
    /// Master weights: sharpe, divers, excess, drawdown, utility.
    pub master_w: [f64; 5],
    /// Risk aversion of the master's utility term.
    pub master_gamma: f64,
}

impl RewardParams {
    /// The per-element parameters of `c` for data with `bars_per_year` bars a year.
    pub fn new(c: &RewardConfig, bars_per_year: f64) -> Self {
        Self {
            w: c.weights(),
            dsr_eta: c.dsr_eta,
            dsr_clip: c.dsr_clip,
            trade_dd_threshold: c.trade_dd_threshold,
            util_target: c.util_target,
            bar_vol: c.ref_vol / bars_per_year.max(1.0).sqrt(),
            master_w: [
                c.master_w_sharpe,
                c.master_w_divers,
                c.master_w_excess,
                c.master_w_drawdown,
                c.master_w_utility,
            ],
            master_gamma: c.master_risk_aversion,
        }
    }
}

/// Differential Sharpe ratio on the P&L scale (spec §5, sharpe): returns `(D * sd, A', B')` from
/// the moments `(a, b)` before the update, the new return `r` and the variance floor `floor`.
/// `var = B - A^2 + floor`, `sd = sqrt(var)`, `D = (B dA - 0.5 A dB) / (var * sd)` (Moody &
/// Saffell 2001) clipped to `[-clip, clip]`, then times `sd`: the change of the running Sharpe
/// ratio expressed in units of return, so it is bounded by `clip * sd` and near `R - A` once the
/// moments have warmed up. 0 when `var <= 1e-18`.
#[inline(always)]
pub fn dsr(a: f64, b: f64, r: f64, eta: f64, clip: f64, floor: f64) -> (f64, f64, f64) {
    let da = r - a;
    let db = r * r - b;
    let var = (b - a * a) + floor;
    // Computed whatever `var` is, then selected (no branch, so loops over symbols vectorise);
    // `clamp` spelled out without its panic path for the same reason.
    let sd = var.sqrt();
    let x = (b * da - 0.5 * a * db) / (var * sd);
    let x = if x < -clip { -clip } else { x };
    let x = if x > clip { clip } else { x };
    let d = if var > 1e-18 { x * sd } else { 0.0 };
    (d, a + eta * da, b + eta * db)
}

/// What one symbol's step produced, as needed by the reward (spec §5).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SymbolTerms {
    /// Mid-price P&L of the step, currency.
    pub pnl: f64,
    /// Commission + slippage + borrow fee, currency (>= 0).
    pub cost: f64,
    /// +1 buy, -1 sell, 0 no trade by the agent.
    pub dir: f64,
    /// Traded notional at the fill bar's open.
    pub trade_notional: f64,
    /// `C[t'] / O[t'] - 1`.
    pub bar_move: f64,
    /// Intra-trade drawdown `1 - C[t'] / peak_px` (0 without a position).
    pub trade_dd: f64,
    /// Position value after the step.
    pub value: f64,
}

/// Portfolio quantities every symbol's reward reads (spec §5), with the per-step constants the
/// per-symbol arithmetic multiplies by instead of dividing (built once per scenario-step by
/// [`PortfolioTerms::new`]; `marl_portfolio_terms` in kernels/env_logic.cuh builds the same).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PortfolioTerms {
    /// Starting capital C0 (rewards are in units of it).
    pub initial_capital: f64,
    /// Equity before the step (E0) and after (E1).
    pub equity_before: f64,
    /// Equity after the step (E1).
    pub equity_after: f64,
    /// Gross position value after the step.
    pub gross: f64,
    /// Per-position cap of this step's directive.
    pub cap: f64,
    /// Number of symbols S.
    pub n_symbols: f64,
    /// `1 / C0`.
    pub inv_c0: f64,
    /// `1 / (cap * E0)`, 0 when `cap * E0 <= 0` (the timing size factor is then 0).
    pub inv_full: f64,
    /// `1 / E1`, 0 when `E1 <= 0` (weights are then 0).
    pub inv_e1: f64,
    /// `1 / trade_dd_threshold`.
    pub inv_thr: f64,
    /// `1 / G`, 0 when `G = 0`.
    pub inv_gross: f64,
    /// `1 / cap`, 0 when `cap <= 0`.
    pub inv_cap: f64,
    /// `1 / S`.
    pub inv_s: f64,
    /// The portfolio's utilisation error `G / E1 - util_target` (`G / E1` is 0 when `E1 <= 0`).
    pub util_err: f64,
    /// The sharpe term's variance floor `(cap * bar_vol)^2`: the per-bar variance of a full-cap
    /// position in a stock of the reference volatility.
    pub var_floor: f64,
}

impl PortfolioTerms {
    /// The terms of a step from C0, E0, E1, G, the directive's cap and S, with the per-step
    /// reciprocals of `p`.
    pub fn new(
        p: &RewardParams,
        initial_capital: f64,
        equity_before: f64,
        equity_after: f64,
        gross: f64,
        cap: f64,
        n_symbols: f64,
    ) -> Self {
        let full = cap * equity_before;
        let u = if equity_after > 0.0 {
            gross / equity_after
        } else {
            0.0
        };
        let fv = cap * p.bar_vol;
        Self {
            initial_capital,
            equity_before,
            equity_after,
            gross,
            cap,
            n_symbols,
            inv_c0: 1.0 / initial_capital,
            inv_full: if full > 0.0 { 1.0 / full } else { 0.0 },
            inv_e1: if equity_after > 0.0 {
                1.0 / equity_after
            } else {
                0.0
            },
            inv_thr: 1.0 / p.trade_dd_threshold,
            inv_gross: if gross > 0.0 { 1.0 / gross } else { 0.0 },
            inv_cap: if cap > 0.0 { 1.0 / cap } else { 0.0 },
            inv_s: 1.0 / n_symbols,
            util_err: u - p.util_target,
            var_floor: fv * fv,
        }
    }
}

impl SymbolTerms {
    /// The 7 unweighted components and the updated DSR moments `(comps, A', B')` (spec §5).
    /// Divisions by per-step constants are multiplications by `pf`'s reciprocals; `bar_move` is
    /// only read when `dir != 0` (the caller may leave it 0 otherwise).
    #[inline(always)]
    pub fn components(
        &self,
        pf: &PortfolioTerms,
        p: &RewardParams,
        dsr_a: f64,
        dsr_b: f64,
    ) -> ([f64; N_COMPONENTS], f64, f64) {
        let inv_c0 = pf.inv_c0;
        let bar_vol = p.bar_vol;
        let pnl = self.pnl * inv_c0;
        let cost = -(self.cost * inv_c0);
        // The traded stock's first-bar move (earned by a buy, avoided by a sell), times the
        // order's size as a fraction of a full-cap order.
        // (Each term below is computed whatever the case and then selected: no branches, so the
        // CPU backend's per-symbol loop vectorises. The selected values are the spec's.)
        let size = (self.trade_notional * pf.inv_full).min(1.0);
        let traded = self.dir * self.bar_move * size;
        let timing = if self.dir != 0.0 { traded } else { 0.0 };
        let (sharpe, a, b) = dsr(
            dsr_a,
            dsr_b,
            (self.pnl - self.cost) * inv_c0,
            p.dsr_eta,
            p.dsr_clip,
            pf.var_floor,
        );
        let w = self.value * pf.inv_e1;
        let thr = p.trade_dd_threshold;
        // Losses past the intra-trade drawdown threshold count again, times the depth past it.
        let deep = pnl * ((self.trade_dd - thr) * pf.inv_thr);
        let drawdown = if (self.trade_dd > thr) & (pnl < 0.0) {
            deep
        } else {
            0.0
        };
        // The portfolio's utilisation error, split by responsibility: over the target by the
        // symbol's share of the exposure, under it by the symbol's unused room below the cap.
        let err = pf.util_err;
        let over = -(err * (self.value * pf.inv_gross)) * bar_vol;
        let under = -((-err) * ((1.0 - w * pf.inv_cap).max(0.0) * pf.inv_s)) * bar_vol;
        let util = if err > 0.0 {
            over
        } else if err < 0.0 {
            under
        } else {
            0.0
        };
        // Concentration past the directive's per-position cap, as P&L at stake.
        let divers = -((w - pf.cap).max(0.0) * bar_vol);
        ([pnl, cost, timing, sharpe, drawdown, util, divers], a, b)
    }
}

/// Weighted sum of the components.
#[inline]
pub fn weighted(comps: &[f64; N_COMPONENTS], p: &RewardParams) -> f64 {
    let mut r = 0.0;
    for i in 0..N_COMPONENTS {
        r += p.w[i] * comps[i];
    }
    r
}

/// Master reward (spec §5): `(reward, A_p', B_p')`. `hhi_gross` is `sum_s (v1 / G)^2` (0 when G = 0),
/// `bench_ret` the benchmark's close-to-close return, `peak` the episode's peak equity after the
/// step's mark to market (the kill switch's). The portfolio's differential Sharpe ratio is on the
/// return scale like the symbols' ([`dsr`]), with the floor `(util_target * bar_vol)^2`; the
/// drawdown term is `-(1 - E1 / peak)`, the utility term `r_p - 0.5 * gamma * r_p^2`.
#[inline]
pub fn master_reward(
    pf: &PortfolioTerms,
    p: &RewardParams,
    hhi_gross: f64,
    bench_ret: f64,
    peak: f64,
    a: f64,
    b: f64,
) -> (f64, f64, f64) {
    let rp = pf.equity_after / pf.equity_before - 1.0;
    let fv = p.util_target * p.bar_vol;
    let (d, a1, b1) = dsr(a, b, rp, p.dsr_eta, p.dsr_clip, fv * fv);
    let divers = if hhi_gross > 0.0 {
        1.0 / (pf.n_symbols * hhi_gross)
    } else {
        0.0
    };
    let excess = rp - bench_ret;
    let drawdown = if peak > 0.0 {
        -(1.0 - pf.equity_after / peak)
    } else {
        0.0
    };
    (
        p.master_w[0] * d
            + p.master_w[1] * divers
            + p.master_w[2] * excess
            + p.master_w[3] * drawdown
            + p.master_w[4] * (rp - 0.5 * p.master_gamma * (rp * rp)),
        a1,
        b1,
    )
}

/// Per-episode sums of the weighted components over all symbol-steps, as recorded by the env.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ComponentSums {
    /// Sum of each weighted component.
    pub sum: [f64; N_COMPONENTS],
    /// Sum of squares of each weighted component.
    pub sum_sq: [f64; N_COMPONENTS],
    /// Symbol-steps counted.
    pub count: u64,
}

impl ComponentSums {
    /// Count one symbol-step's weighted components.
    #[inline]
    pub fn add(&mut self, weighted_terms: &[f64; N_COMPONENTS]) {
        for i in 0..N_COMPONENTS {
            self.sum[i] += weighted_terms[i];
            self.sum_sq[i] += weighted_terms[i] * weighted_terms[i];
        }
        self.count += 1;
    }

    /// Add another set of sums.
    pub fn merge(&mut self, o: &ComponentSums) {
        for i in 0..N_COMPONENTS {
            self.sum[i] += o.sum[i];
            self.sum_sq[i] += o.sum_sq[i];
        }
        self.count += o.count;
    }
}

/// Statistics of one component over the episodes aggregated.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ComponentStat {
    /// The component (`reward::COMPONENT_NAMES`).
    pub name: &'static str,
    /// Sum over all symbol-steps.
    pub sum: f64,
    /// Mean per symbol-step.
    pub mean: f64,
    /// Standard deviation per symbol-step.
    pub std: f64,
    /// `|sum| / sum over components of |sum|` (0 when all sums are 0).
    pub share: f64,
}

/// Aggregates the component sums of finished episodes (spec §5, "Episode statistics").
#[derive(Debug, Clone, Default)]
pub struct RewardShaper {
    acc: ComponentSums,
    episodes: u64,
}

impl RewardShaper {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one finished episode's sums.
    pub fn record(&mut self, sums: &ComponentSums) {
        self.acc.merge(sums);
        self.episodes += 1;
    }

    /// Episodes recorded since the last `episode_stats` call.
    pub fn episodes(&self) -> u64 {
        self.episodes
    }

    /// Statistics of each component over the episodes recorded since the last call, then reset.
    pub fn episode_stats(&mut self) -> [ComponentStat; N_COMPONENTS] {
        let stats = Self::stats_of(&self.acc);
        *self = Self::default();
        stats
    }

    /// Statistics of a set of sums without consuming anything.
    pub fn stats_of(acc: &ComponentSums) -> [ComponentStat; N_COMPONENTS] {
        let total_abs: f64 = acc.sum.iter().map(|s| s.abs()).sum();
        let n = acc.count.max(1) as f64;
        std::array::from_fn(|i| {
            let mean = acc.sum[i] / n;
            let var = (acc.sum_sq[i] / n - mean * mean).max(0.0);
            ComponentStat {
                name: COMPONENT_NAMES[i],
                sum: acc.sum[i],
                mean,
                std: var.sqrt(),
                share: if total_abs > 0.0 {
                    acc.sum[i].abs() / total_abs
                } else {
                    0.0
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsr_matches_hand_computation() {
        // A = 0.01, B = 0.0002 -> var = 0.0001, sd = 0.01; r = 0.02: dA = 0.01, dB = 0.0002
        // D = (0.0002*0.01 - 0.5*0.01*0.0002) / (0.0001 * 0.01) = (2e-6 - 1e-6) / 1e-6 = 1,
        // on the P&L scale D * sd = 0.01
        let (d, a, b) = dsr(0.01, 0.0002, 0.02, 0.1, 10.0, 0.0);
        assert!((d - 0.01).abs() < 1e-12, "{d}");
        assert!((a - 0.011).abs() < 1e-15);
        assert!((b - 0.00022).abs() < 1e-15);
        // zero variance and no floor -> 0
        assert_eq!(dsr(0.0, 0.0, 0.5, 0.1, 1.0, 0.0).0, 0.0);
        // r = 0.03: dA = 0.02, dB = 0.0007, D = (4e-6 - 3.5e-6) / 1e-6 = 0.5; clipped to 0.25
        assert!((dsr(0.01, 0.0002, 0.03, 0.1, 10.0, 0.0).0 - 0.005).abs() < 1e-12);
        assert!((dsr(0.01, 0.0002, 0.03, 0.1, 0.25, 0.0).0 - 0.0025).abs() < 1e-12);
        // an outsized return raises the variance more than the mean: D < 0, clipped to -clip
        assert!((dsr(0.01, 0.0002, 1.0, 0.1, 1.0, 0.0).0 + 0.01).abs() < 1e-12);
        // the floor adds to the variance: var = 0.0001 + 0.0003 = 0.0004, sd = 0.02,
        // D = 1e-6 / (0.0004 * 0.02) = 0.125, D * sd = 0.0025
        assert!((dsr(0.01, 0.0002, 0.02, 0.1, 10.0, 0.0003).0 - 0.0025).abs() < 1e-12);
    }

    /// Spec §5, sharpe: the first steps of an episode (moments from zero) no longer saturate:
    /// the term stays within `clip * sd` and far below the return itself while the moments warm up.
    #[test]
    fn dsr_does_not_saturate_at_episode_start() {
        let floor = (0.1f64 * 0.005).powi(2);
        let (mut a, mut b) = (0.0, 0.0);
        for k in 0..20 {
            let r = if k % 2 == 0 { 5e-4 } else { -3e-4 };
            let (d, a1, b1) = dsr(a, b, r, 0.01, 1.0, floor);
            assert!(
                d.abs() <= 1.0 * (b - a * a + floor).sqrt() + 1e-18,
                "{k}: {d}"
            );
            assert!(d.abs() < 0.5 * 5e-4, "step {k} saturates: {d}");
            (a, b) = (a1, b1);
        }
    }

    fn pf_and_terms() -> (RewardParams, PortfolioTerms, SymbolTerms) {
        // 1764 bars a year: bar_vol = 0.25 / 42
        let p = RewardParams::new(&RewardConfig::default(), 1764.0);
        assert!((p.bar_vol - 0.25 / 42.0).abs() < 1e-15);
        let pf = PortfolioTerms::new(&p, 1000.0, 1000.0, 1010.0, 505.0, 0.1, 4.0);
        let t = SymbolTerms {
            pnl: -12.0,
            cost: 2.0,
            dir: 1.0,
            trade_notional: 50.0,
            bar_move: 0.02,
            trade_dd: 0.15,
            value: 151.5,
        };
        (p, pf, t)
    }

    #[test]
    fn components_follow_the_spec() {
        let (p, pf, t) = pf_and_terms();
        let bv = p.bar_vol;
        let (c, _, _) = t.components(&pf, &p, 0.0, 0.0);
        assert!((c[0] + 0.012).abs() < 1e-15);
        assert!((c[1] + 0.002).abs() < 1e-15);
        // timing: 0.02 * min(50 / 100, 1) = 0.01
        assert!((c[2] - 0.01).abs() < 1e-15);
        // sharpe: no variance yet, the floor (0.1 * bv)^2 only: A = B = 0 -> D = 0
        assert_eq!(c[3], 0.0);
        // drawdown: a loss at 15% intra-trade drawdown: -0.012 * (0.15 - 0.1) / 0.1
        assert!((c[4] + 0.012 * 0.5).abs() < 1e-12);
        // util: G/E1 = 0.5 < 0.8: the shortfall 0.3 x room (1 - 0.15 / 0.1)+ = 0 -> 0
        assert_eq!(c[5], 0.0);
        // divers: w = 0.15 > cap 0.1: -(0.05) * bv
        assert!((c[6] + 0.05 * bv).abs() < 1e-12);
        let r = weighted(&c, &p);
        let hand = -10.0 * 0.012 - 5.0 * 0.002 + 2.0 * 0.01 - 5.0 * 0.006 - 0.05 * bv;
        assert!((r - hand).abs() < 1e-12, "{r} vs {hand}");
    }

    #[test]
    fn drawdown_charges_losses_only_past_the_threshold() {
        let (p, pf, mut t) = pf_and_terms();
        t.pnl = 12.0; // a gain deep in a drawdown is not charged
        assert_eq!(t.components(&pf, &p, 0.0, 0.0).0[4], 0.0);
        t.pnl = -12.0;
        t.trade_dd = 0.09; // a loss above the threshold is not charged
        assert_eq!(t.components(&pf, &p, 0.0, 0.0).0[4], 0.0);
        t.trade_dd = 0.30; // twice as deep past it: the loss counts twice again
        assert!((t.components(&pf, &p, 0.0, 0.0).0[4] + 0.012 * 2.0).abs() < 1e-12);
    }

    /// Spec §5, util: attributed by each symbol's own exposure (over the target) or room below
    /// the cap (under it): symbols of one step get different values, which sum to the error.
    #[test]
    fn util_is_attributed_per_symbol() {
        let p = RewardParams::new(&RewardConfig::default(), 1764.0);
        let bv = p.bar_vol;
        let val = |value| SymbolTerms {
            value,
            ..SymbolTerms::default()
        };
        // under: E1 = 1000, G = 100 (u = 0.1, err = -0.7), cap 0.1, S = 4
        let pf = PortfolioTerms::new(&p, 1000.0, 1000.0, 1000.0, 100.0, 0.1, 4.0);
        let u = |v| val(v).components(&pf, &p, 0.0, 0.0).0[5];
        assert!((u(0.0) + 0.7 * 0.25 * bv).abs() < 1e-15); // flat: a full quarter of the shortfall
        assert!((u(50.0) + 0.7 * 0.5 * 0.25 * bv).abs() < 1e-15); // half the cap used
        assert_eq!(u(100.0), 0.0); // at the cap: none of it
        // over: E1 = 1000, G = 900 (u = 0.9, err = 0.1): by the share of the exposure
        let pf = PortfolioTerms::new(&p, 1000.0, 1000.0, 1000.0, 900.0, 0.3, 4.0);
        let u = |v| val(v).components(&pf, &p, 0.0, 0.0).0[5];
        let parts = [u(300.0), u(300.0), u(200.0), u(100.0), u(0.0)];
        assert!((parts[0] + 0.1 * (300.0 / 900.0) * bv).abs() < 1e-12);
        assert_eq!(parts[4], 0.0);
        assert!((parts.iter().sum::<f64>() + 0.1 * bv).abs() < 1e-12);
    }

    /// Spec §5, divers: zero at or below the cap, growing with the excess past it.
    #[test]
    fn divers_is_zero_up_to_the_cap() {
        let p = RewardParams::new(&RewardConfig::default(), 1764.0);
        let pf = PortfolioTerms::new(&p, 1000.0, 1000.0, 1000.0, 500.0, 0.1, 4.0);
        let d = |value| {
            SymbolTerms {
                value,
                ..SymbolTerms::default()
            }
            .components(&pf, &p, 0.0, 0.0)
            .0[6]
        };
        assert_eq!(d(0.0), 0.0);
        assert_eq!(d(100.0), 0.0);
        assert!(d(120.0) < 0.0 && d(200.0) < d(120.0));
        assert!((d(200.0) + 0.1 * p.bar_vol).abs() < 1e-15);
    }

    #[test]
    fn bad_shaping_parameters_name_their_field() {
        for (set, field) in [
            (
                RewardConfig {
                    ref_vol: 0.0,
                    ..RewardConfig::default()
                },
                "reward.ref_vol",
            ),
            (
                RewardConfig {
                    ref_vol: f64::INFINITY,
                    ..RewardConfig::default()
                },
                "reward.ref_vol",
            ),
            (
                RewardConfig {
                    dsr_clip: -1.0,
                    ..RewardConfig::default()
                },
                "reward.dsr_clip",
            ),
        ] {
            let e = set.validate("f.toml").unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("f.toml"), "{e}");
        }
        assert!(RewardConfig::default().validate("f.toml").is_ok());
    }

    #[test]
    fn shaper_reports_share_and_resets() {
        let mut sh = RewardShaper::new();
        let mut s = ComponentSums::default();
        s.add(&[1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
        s.add(&[3.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
        sh.record(&s);
        let st = sh.episode_stats();
        assert_eq!(st[0].sum, 4.0);
        assert_eq!(st[0].mean, 2.0);
        assert!((st[0].std - 1.0).abs() < 1e-12);
        assert!((st[0].share - 0.4).abs() < 1e-12);
        assert!((st[6].share - 0.4).abs() < 1e-12);
        assert_eq!(sh.episodes(), 0);
    }
}
