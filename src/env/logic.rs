/*!
Per-element step logic of docs/env-spec.md, as pure functions over plain values: the master
directive (§3), the action mask (§4.2), order sizing (§4.3). Together with [`crate::costs`] and
[`crate::reward`] this is everything the CPU backend computes per symbol; `kernels/env_logic.cuh`
mirrors each function for the CUDA backend and `tests/host_parity.rs` checks they agree.
*/

use super::config::EnvSetup;
use crate::costs::CostParams;
use crate::reward::RewardParams;

/// Symbol actions.
pub const HOLD: u8 = 0;
/// Buy `risk.buy_small` of equity (x the directive's risk multiplier).
pub const BUY_SMALL: u8 = 1;
/// Buy `risk.buy_medium` of equity.
pub const BUY_MEDIUM: u8 = 2;
/// Buy `risk.buy_large` of equity.
pub const BUY_LARGE: u8 = 3;
/// Sell `risk.sell_partial` of the position.
pub const SELL_PARTIAL: u8 = 4;
/// Sell the whole position.
pub const SELL_ALL: u8 = 5;
/// Buy `risk.add_to_winner` of equity, only into a position in profit.
pub const ADD_TO_WINNER: u8 = 6;
/// Number of symbol actions.
pub const N_ACTIONS: usize = 7;
/// Action names, by index.
pub const ACTION_NAMES: [&str; N_ACTIONS] = [
    "HOLD",
    "BUY_SMALL",
    "BUY_MEDIUM",
    "BUY_LARGE",
    "SELL_PARTIAL",
    "SELL_ALL",
    "ADD_TO_WINNER",
];
/// Size of the master's grid: 4 risk multipliers x 4 position caps x 3 regime modes.
pub const MASTER_ACTIONS: usize = 48;

/// Everything a step reads from the config, flattened (mirrored as a `#[repr(C)]` struct on the GPU).
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct StepParams {
    /// Fill costs.
    pub costs: CostParams,
    /// Reward weights and shaping.
    pub reward: RewardParams,
    /// Starting capital C0.
    pub initial_capital: f64,
    /// Gross exposure cap, as a multiple of equity.
    pub leverage_cap: f64,
    /// Drawdown from peak that trips the kill switch.
    pub kill_drawdown: f64,
    /// Buy sizes of BUY_SMALL, BUY_MEDIUM, BUY_LARGE, ADD_TO_WINNER (fractions of equity).
    pub buy_size: [f64; 4],
    /// Fraction of a position SELL_PARTIAL sells.
    pub sell_partial: f64,
    /// The master grid's risk multipliers.
    pub risk_multipliers: [f64; 4],
    /// The master grid's per-position caps (fractions of equity).
    pub position_caps: [f64; 4],
    /// Open-position limits of the regime modes, already clamped to S.
    pub max_open: [u32; 3],
    /// Symbols S.
    pub n_symbols: u32,
    /// Steps per episode.
    pub episode_len: u32,
    /// The master action of callers that do not drive the master.
    pub default_action: u32,
}

impl StepParams {
    /// The parameters of `setup` for `n_symbols` symbols at `bars_per_year` bars a year.
    pub fn new(cfg: &EnvSetup, n_symbols: usize, bars_per_year: f64) -> Self {
        let r = &cfg.risk;
        let m = &cfg.master;
        let arr4 = |v: &[f64]| [v[0], v[1], v[2], v[3]];
        let mo = |i: usize| m.regime_max_open[i].min(n_symbols as u32);
        Self {
            costs: CostParams::new(&cfg.costs, bars_per_year),
            reward: RewardParams::new(&cfg.reward, bars_per_year),
            initial_capital: cfg.env.initial_capital,
            leverage_cap: r.leverage_cap,
            kill_drawdown: r.kill_drawdown,
            buy_size: [r.buy_small, r.buy_medium, r.buy_large, r.add_to_winner],
            sell_partial: r.sell_partial,
            risk_multipliers: arr4(&m.risk_multipliers),
            position_caps: arr4(&m.position_caps),
            max_open: [mo(0), mo(1), mo(2)],
            n_symbols: n_symbols as u32,
            episode_len: cfg.env.episode_len as u32,
            default_action: m.default_action,
        }
    }
}

/// The master's directive for a step (spec §3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Directive {
    /// Risk multiplier of every buy size.
    pub risk: f64,
    /// Per-position cap, fraction of equity.
    pub cap: f64,
    /// Open-position limit of the regime mode (clamped to S).
    pub max_open: u32,
    /// 0 defensive, 1 neutral, 2 aggressive.
    pub mode: u32,
}

/// Decode a master action `m < 48` (spec §3).
#[inline(always)]
pub fn directive(p: &StepParams, m: u8) -> Directive {
    let m = m as usize;
    let (ri, ci, gi) = (m / 12, (m / 3) % 4, m % 3);
    Directive {
        risk: p.risk_multipliers[ri],
        cap: p.position_caps[ci],
        max_open: p.max_open[gi],
        mode: gi as u32,
    }
}

/// Mask bits (bit a set = action a allowed) for one symbol (spec §4.2).
#[inline(always)]
pub fn mask_bits(
    q0: f64,
    v0: f64,
    e0: f64,
    close: f64,
    entry: f64,
    open0: u32,
    d: &Directive,
) -> u8 {
    // Without branches (`&`, `|` on bools, bits by multiplication), so that the CPU backend's
    // per-symbol loop vectorises.
    let has = q0 > 0.0;
    let full = v0 >= d.cap * e0;
    let buy_ok = !full & (has | (open0 < d.max_open));
    let add_ok = has & (close > entry) & !full;
    let buys = (1 << BUY_SMALL) | (1 << BUY_MEDIUM) | (1 << BUY_LARGE);
    let sells = (1 << SELL_PARTIAL) | (1 << SELL_ALL);
    (1u8 << HOLD) | (buy_ok as u8 * buys) | (has as u8 * sells) | ((add_ok as u8) << ADD_TO_WINNER)
}

/// An order before the open-position limit and the budget (spec §4.3).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Order {
    /// Buy quantity (shares) and sell quantity; at most one is non-zero.
    pub qb: f64,
    /// See `qb`.
    pub qs: f64,
    /// A buy that opens a new position.
    pub opener: bool,
}

/// Size the order of a (non-masked) action (spec §4.3). `close` is `C[t]`, `open_next` is `O[t']`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn size_order(
    p: &StepParams,
    action: u8,
    q0: f64,
    v0: f64,
    e0: f64,
    close: f64,
    open_next: f64,
    d: &Directive,
) -> Order {
    // Written without branches (selects only), so that the per-symbol loop of the CPU backend
    // vectorises; the arithmetic of each case is the spec's.
    let is_buy = ((BUY_SMALL..=BUY_LARGE).contains(&action)) | (action == ADD_TO_WINNER);
    let idx = if action == ADD_TO_WINNER {
        3
    } else {
        action.wrapping_sub(BUY_SMALL) & 3
    };
    let room = d.cap * e0 - v0;
    let dollars = (p.buy_size[idx as usize] * d.risk * e0).min(room);
    let buys = is_buy & (dollars > 0.0);
    let is_sell = (action == SELL_PARTIAL) | (action == SELL_ALL);
    let qs = if action == SELL_ALL {
        q0
    } else {
        p.sell_partial * q0
    };
    // a partial sell that would leave dust sells everything
    let qs = if (q0 - qs) * open_next < 1e-6 * p.initial_capital {
        q0
    } else {
        qs
    };
    let qb = dollars / close;
    Order {
        qb: if buys { qb } else { 0.0 },
        qs: if is_sell { qs } else { 0.0 },
        opener: buys & (q0 <= 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StepParams {
        StepParams::new(&EnvSetup::default(), 143, 1764.0)
    }

    #[test]
    fn master_grid_decodes_every_axis() {
        let p = params();
        let d = directive(&p, 47);
        assert_eq!((d.risk, d.cap, d.max_open, d.mode), (2.0, 0.20, 143, 2));
        let d = directive(&p, 0);
        assert_eq!((d.risk, d.cap, d.max_open, d.mode), (0.5, 0.02, 10, 0));
        let d = directive(&p, EnvSetup::default().master.default_action as u8);
        assert_eq!((d.risk, d.cap, d.mode), (1.0, 0.05, 1));
    }

    #[test]
    fn mask_rules() {
        let p = params();
        let d = directive(&p, 0); // cap 0.02, max_open 10
        // flat, room for new positions: buys only
        let m = mask_bits(0.0, 0.0, 1e6, 10.0, 0.0, 0, &d);
        assert_eq!(m, 0b0001111);
        // flat, open limit reached: HOLD only
        assert_eq!(mask_bits(0.0, 0.0, 1e6, 10.0, 0.0, 10, &d), 0b1);
        // holding a loser below cap: buys, sells, no add
        assert_eq!(mask_bits(100.0, 1000.0, 1e6, 10.0, 11.0, 10, &d), 0b0111111);
        // holding a winner at the cap: sells only
        assert_eq!(
            mask_bits(2000.0, 20000.0, 1e6, 10.0, 9.0, 10, &d),
            0b0110001
        );
        // holding a winner below cap: everything
        assert_eq!(mask_bits(100.0, 1000.0, 1e6, 10.0, 9.0, 10, &d), 0b1111111);
    }

    #[test]
    fn orders_respect_cap_and_dust() {
        let p = params();
        let d = directive(&p, 0); // risk 0.5, cap 0.02
        let o = size_order(&p, BUY_LARGE, 0.0, 0.0, 1e6, 10.0, 10.0, &d);
        assert!((o.qb - 0.02 * 0.5 * 1e6 / 10.0).abs() < 1e-9 && o.opener);
        // near the cap: clipped to the room
        let o = size_order(&p, BUY_LARGE, 1900.0, 19000.0, 1e6, 10.0, 10.0, &d);
        assert!((o.qb - 100.0).abs() < 1e-9 && !o.opener);
        let o = size_order(&p, SELL_PARTIAL, 100.0, 1000.0, 1e6, 10.0, 10.0, &d);
        assert_eq!(o.qs, 50.0);
        // a partial sell that would leave dust sells everything
        let o = size_order(&p, SELL_PARTIAL, 1e-4, 1e-3, 1e6, 10.0, 10.0, &d);
        assert_eq!(o.qs, 1e-4);
    }
}
