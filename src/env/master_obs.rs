/*!
The portfolio master's observation (docs/env-spec.md §8): one flat f32 vector per scenario, computed
by the env on the backend that runs it ([`crate::env::VecEnv::master_obs`]; the CPU backend with
[`master_obs_row`], the CUDA backend with the `master_obs` kernel of `kernels/master_obs.cu`, whose
logic is `kernels/master_obs.cuh`, run on the host against this file by `tests/master_obs.rs`).

Four named slices, [`MASTER_OBS`] floats in all:
- [`M_INTENTS`]: the symbol agents' aggregated intents, passed in by the trainer (they come from
  the policy: `agents::master::SymbolIntents`, [`MASTER_INTENTS`] values per scenario);
- [`M_TELEMETRY`]: portfolio telemetry (cash %, exposure, drawdown, rolling Sharpe, realised
  volatility, open positions / limit, P&L since the master's last observation, episode progress);
- [`M_REGIME`]: regime diagnostics of the current bar (the 4 regime features, the VIX, its change
  over [`VIX_LOOKBACK`] bars, the benchmark's last-bar return);
- [`M_DIRECTIVE`]: the stored directive as one-hots of its risk, cap and regime-mode indices.

The master observes at its decisions: "P&L since the last directive" is the equity's return since
the previous call of `master_obs` for that scenario in the same episode (since C0 at the first call
of an episode). The equity of each call is kept per scenario in a [`MasterAnchor`], owned by the
`VecEnv` (cleared by `reset`, saved and restored with [`crate::env::VecEnv::master_anchors`]).
*/

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::abi::EnvDims;
use super::logic::{StepParams, directive};
use super::{EnvLayout, N_ACTIONS, ScenarioState};
use crate::data::MarketData;
use crate::features::{Features, N_REGIME};

/// Values per scenario of the symbol agents' aggregated intents (mean action probabilities (7),
/// buy fraction, sell fraction, mean entropy); `agents::master::INTENTS` is this constant.
pub const MASTER_INTENTS: usize = N_ACTIONS + 3;
/// Aggregated intents of the symbol agents (passed in).
pub const M_INTENTS: Range<usize> = 0..MASTER_INTENTS;
/// `cash / E`, `G / E` (gross exposure; net exposure is the same number in this long-only env),
/// drawdown `1 - E / peak`, rolling Sharpe `A_p / sqrt(B_p - A_p^2)` (clipped to +-10), realised
/// volatility `sqrt(B_p - A_p^2) / bar_vol`, `open / max(max_open, 1)`, P&L since the last master
/// observation `E / E_anchor - 1`, episode progress `k / L`.
pub const M_TELEMETRY: Range<usize> = MASTER_INTENTS..MASTER_INTENTS + 8;
/// The 4 regime features of the bar, VIX / 100, (VIX - VIX `VIX_LOOKBACK` bars ago) / 100, the
/// benchmark's return over the last bar `C[t, S] / C[t - 1, S] - 1`.
pub const M_REGIME: Range<usize> = M_TELEMETRY.end..M_TELEMETRY.end + N_REGIME + 3;
/// One-hots of the stored directive's risk index (4), cap index (4) and regime mode (3).
pub const M_DIRECTIVE: Range<usize> = M_REGIME.end..M_REGIME.end + 11;
/// Length of the master observation.
pub const MASTER_OBS: usize = M_DIRECTIVE.end;
/// Bars over which the VIX change of [`M_REGIME`] is taken (episodes start at bar >= `WARMUP`, so
/// the earlier bar always exists).
pub const VIX_LOOKBACK: usize = 5;

/// Named slices of the master observation, in order.
pub const MASTER_SLICES: [(&str, Range<usize>); 4] = [
    ("intents", M_INTENTS),
    ("telemetry", M_TELEMETRY),
    ("regime", M_REGIME),
    ("directive", M_DIRECTIVE),
];

/// The equity at a scenario's last master observation (`MarlMasterAnchor` in
/// `kernels/master_obs.cuh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct MasterAnchor {
    /// Equity then.
    pub equity: f64,
    /// The scenario's episode counter then.
    pub episode: u32,
    /// 0 until the first observation after a reset.
    pub valid: u32,
}

/// The master observation of one scenario (spec §8) into `row` (`MASTER_OBS` floats), from its
/// state `st`, the intents of its symbol agents (`MASTER_INTENTS` floats) and its anchor, which is
/// then set to this observation's equity. Operation for operation `marl_master_obs_row`.
#[allow(clippy::too_many_arguments)]
pub fn master_obs_row(
    p: &StepParams,
    l: &EnvLayout,
    md: &MarketData,
    f: &Features,
    st: &ScenarioState,
    intents: &[f32],
    anchor: &mut MasterAnchor,
    row: &mut [f32],
) {
    let s_n = l.n_symbols;
    let (path, t) = (st.path as usize, (st.t0 + st.k) as usize);
    row[M_INTENTS].copy_from_slice(&intents[..MASTER_INTENTS]);
    let e = st.equity;
    let d = directive(p, st.directive as u8);
    let var = st.dsr_b - st.dsr_a * st.dsr_a;
    let bar_vol = p.reward.bar_vol;
    let base = if anchor.valid != 0 && anchor.episode == st.episode {
        anchor.equity
    } else {
        p.initial_capital
    };
    let tm = M_TELEMETRY.start;
    row[tm] = (st.cash / e) as f32;
    row[tm + 1] = (st.gross / e) as f32;
    row[tm + 2] = (1.0 - e / st.peak) as f32;
    row[tm + 3] = if var > 1e-18 {
        (st.dsr_a / var.sqrt()).clamp(-10.0, 10.0) as f32
    } else {
        0.0
    };
    row[tm + 4] = if var > 1e-18 && bar_vol > 0.0 {
        (var.sqrt() / bar_vol) as f32
    } else {
        0.0
    };
    row[tm + 5] = st.open_count as f32 / d.max_open.max(1) as f32;
    row[tm + 6] = (e / base - 1.0) as f32;
    row[tm + 7] = st.k as f32 / l.episode_len as f32;
    let rg = M_REGIME.start;
    row[rg..rg + N_REGIME].copy_from_slice(&f.regime_at(path, t)[..N_REGIME]);
    let vix_at = |t: usize| md.macro_series[(path * md.bars + t) * crate::data::MACRO + 1];
    let (vix, vix_then) = (vix_at(t), vix_at(t - VIX_LOOKBACK));
    row[rg + N_REGIME] = vix / 100.0;
    row[rg + N_REGIME + 1] = (vix - vix_then) / 100.0;
    let b1 = md.close[md.px(path, t, s_n)] as f64;
    let b0 = md.close[md.px(path, t - 1, s_n)] as f64;
    row[rg + N_REGIME + 2] = (b1 / b0 - 1.0) as f32;
    let m = st.directive as usize;
    let (ri, ci, gi) = (m / 12, (m / 3) % 4, m % 3);
    let dr = M_DIRECTIVE.start;
    for i in 0..4 {
        row[dr + i] = (ri == i) as u8 as f32;
        row[dr + 4 + i] = (ci == i) as u8 as f32;
    }
    for i in 0..3 {
        row[dr + 8 + i] = (gi == i) as u8 as f32;
    }
    *anchor = MasterAnchor {
        equity: e,
        episode: st.episode,
        valid: 1,
    };
}

/// [`master_obs_row`] for every scenario of `states` (`[N]`): `intents` `[N, MASTER_INTENTS]`,
/// `anchors` `[N]`, `out` `[N, MASTER_OBS]` (sizes checked by the caller).
pub fn master_obs_rows<'a>(
    l: &EnvLayout,
    md: &MarketData,
    f: &Features,
    states: impl Iterator<Item = &'a ScenarioState>,
    intents: &[f32],
    anchors: &mut [MasterAnchor],
    out: &mut [f32],
) {
    for (((st, i), a), row) in states
        .zip(intents.chunks_exact(MASTER_INTENTS))
        .zip(anchors.iter_mut())
        .zip(out.chunks_exact_mut(MASTER_OBS))
    {
        master_obs_row(&l.params, l, md, f, st, i, a, row);
    }
}

/// Arguments of the `master_obs` kernel (`MasterObsArgs` in `kernels/master_obs.cuh`): device
/// addresses in the CUDA backend, host addresses in `tests/master_obs.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct MasterObsArgs {
    /// The step parameters.
    pub p: StepParams,
    /// Sizes and bar range.
    pub dm: EnvDims,
    /// Close prices `[P, T, S + 1]` f32.
    pub close: u64,
    /// Macro series `[P, T, MACRO]` f32.
    pub macro_series: u64,
    /// Regime features `[P, T, N_REGIME]` f32.
    pub regime: u64,
    /// Scenario states `[N]`.
    pub scen: u64,
    /// Intents `[N, MASTER_INTENTS]` f32.
    pub intents: u64,
    /// Anchors `[N]` ([`MasterAnchor`]), read and overwritten.
    pub anchors: u64,
    /// Output `[N, MASTER_OBS]` f32.
    pub out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_tile_the_master_observation() {
        let mut next = 0;
        for (_, r) in MASTER_SLICES {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, MASTER_OBS);
        assert_eq!(MASTER_OBS, 10 + 8 + 7 + 11);
    }
}
