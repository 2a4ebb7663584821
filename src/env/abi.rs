/*!
`#[repr(C)]` structs shared with the CUDA kernels (`kernels/env_logic.cuh`) that are not already
part of the CPU backend. Together with [`StepParams`] and [`ScenarioState`] (also `#[repr(C)]`),
these are everything a kernel receives by value or reads from device memory as a struct; the host
shim reports the C side's sizes and offsets and `tests/host_parity.rs` compares them with these.

Always compiled (no `cuda` feature needed), so the layout and parity tests run on any machine.
*/

use super::{EnvLayout, EpisodeRecord, ScenarioState, StepParams};
use crate::reward::{ComponentSums, N_COMPONENTS};

/// Rows of the step kernel's fold buffer (`MARL_FOLD_ROWS`, kernels/scenario.cuh).
pub const FOLD_ROWS: usize = 15;
/// Broadcast slots of the step kernel (`MARL_ACC_SLOTS`, kernels/scenario.cuh).
pub const ACC_SLOTS: usize = 24;
/// Scalars per scenario of the step's optional debug output (`MARL_DEBUG_LEN`).
pub const DEBUG_LEN: usize = 14;

/// Sizes and the bar range of an environment, as the kernels read them (`EnvDims` in
/// `kernels/env_logic.cuh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EnvDims {
    pub n_scenarios: u32,
    pub n_symbols: u32,
    pub paths: u32,
    pub bars: u32,
    pub lo: u32,
    pub hi: u32,
    pub start_a: u32,
    pub start_b: u32,
    pub episode_len: u32,
    /// Episode-record slots per scenario between two drains.
    pub record_cap: u32,
}

impl EnvDims {
    pub fn new(l: &EnvLayout, record_cap: u32) -> Self {
        let u = |x: usize| x as u32;
        Self {
            n_scenarios: u(l.n_scenarios),
            n_symbols: u(l.n_symbols),
            paths: u(l.paths),
            bars: u(l.bars),
            lo: u(l.lo),
            hi: u(l.hi),
            start_a: u(l.start_a),
            start_b: u(l.start_b),
            episode_len: u(l.episode_len),
            record_cap,
        }
    }
}

/// A finished episode as the kernels write it (`EpisodeRecordC` in `kernels/env_logic.cuh`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct EpisodeRecordC {
    pub scenario: u32,
    pub path: u32,
    pub start: u32,
    pub length: u32,
    pub total_return: f64,
    pub killed: u32,
    pub invalid_actions: u32,
    pub limited_orders: u32,
    pub _pad: u32,
    pub sum: [f64; N_COMPONENTS],
    pub sum_sq: [f64; N_COMPONENTS],
    pub count: u64,
}

impl From<&EpisodeRecordC> for EpisodeRecord {
    fn from(r: &EpisodeRecordC) -> Self {
        EpisodeRecord {
            scenario: r.scenario,
            path: r.path,
            start: r.start,
            length: r.length,
            total_return: r.total_return,
            killed: r.killed != 0,
            invalid_actions: r.invalid_actions,
            limited_orders: r.limited_orders,
            components: ComponentSums {
                sum: r.sum,
                sum_sq: r.sum_sq,
                count: r.count,
            },
        }
    }
}

/// `(name, size or offset)` of every field of every struct the kernels receive, in the order of
/// `marl_abi_layout` in `kernels/host_shim.c`.
pub fn abi_layout() -> Vec<(&'static str, usize)> {
    use crate::costs::CostParams;
    use crate::reward::RewardParams;
    use std::mem::{offset_of, size_of};
    vec![
        ("sizeof CostParams", size_of::<CostParams>()),
        ("CostParams.commission", offset_of!(CostParams, commission)),
        (
            "CostParams.half_spread",
            offset_of!(CostParams, half_spread),
        ),
        (
            "CostParams.impact_coef",
            offset_of!(CostParams, impact_coef),
        ),
        (
            "CostParams.max_slippage",
            offset_of!(CostParams, max_slippage),
        ),
        (
            "CostParams.borrow_per_bar",
            offset_of!(CostParams, borrow_per_bar),
        ),
        ("sizeof RewardParams", size_of::<RewardParams>()),
        ("RewardParams.w", offset_of!(RewardParams, w)),
        ("RewardParams.dsr_eta", offset_of!(RewardParams, dsr_eta)),
        ("RewardParams.dsr_clip", offset_of!(RewardParams, dsr_clip)),
        (
            "RewardParams.trade_dd_threshold",
            offset_of!(RewardParams, trade_dd_threshold),
        ),
        (
            "RewardParams.util_target",
            offset_of!(RewardParams, util_target),
        ),
        ("RewardParams.master_w", offset_of!(RewardParams, master_w)),
        ("sizeof StepParams", size_of::<StepParams>()),
        ("StepParams.costs", offset_of!(StepParams, costs)),
        ("StepParams.reward", offset_of!(StepParams, reward)),
        (
            "StepParams.initial_capital",
            offset_of!(StepParams, initial_capital),
        ),
        (
            "StepParams.leverage_cap",
            offset_of!(StepParams, leverage_cap),
        ),
        (
            "StepParams.kill_drawdown",
            offset_of!(StepParams, kill_drawdown),
        ),
        ("StepParams.buy_size", offset_of!(StepParams, buy_size)),
        (
            "StepParams.sell_partial",
            offset_of!(StepParams, sell_partial),
        ),
        (
            "StepParams.risk_multipliers",
            offset_of!(StepParams, risk_multipliers),
        ),
        (
            "StepParams.position_caps",
            offset_of!(StepParams, position_caps),
        ),
        ("StepParams.max_open", offset_of!(StepParams, max_open)),
        ("StepParams.n_symbols", offset_of!(StepParams, n_symbols)),
        (
            "StepParams.episode_len",
            offset_of!(StepParams, episode_len),
        ),
        (
            "StepParams.default_action",
            offset_of!(StepParams, default_action),
        ),
        ("sizeof ScenarioState", size_of::<ScenarioState>()),
        ("ScenarioState.cash", offset_of!(ScenarioState, cash)),
        ("ScenarioState.equity", offset_of!(ScenarioState, equity)),
        ("ScenarioState.peak", offset_of!(ScenarioState, peak)),
        ("ScenarioState.gross", offset_of!(ScenarioState, gross)),
        ("ScenarioState.dsr_a", offset_of!(ScenarioState, dsr_a)),
        ("ScenarioState.dsr_b", offset_of!(ScenarioState, dsr_b)),
        ("ScenarioState.path", offset_of!(ScenarioState, path)),
        ("ScenarioState.t0", offset_of!(ScenarioState, t0)),
        ("ScenarioState.k", offset_of!(ScenarioState, k)),
        ("ScenarioState.episode", offset_of!(ScenarioState, episode)),
        (
            "ScenarioState.directive",
            offset_of!(ScenarioState, directive),
        ),
        (
            "ScenarioState.open_count",
            offset_of!(ScenarioState, open_count),
        ),
        (
            "ScenarioState.invalid_actions",
            offset_of!(ScenarioState, invalid_actions),
        ),
        (
            "ScenarioState.limited_orders",
            offset_of!(ScenarioState, limited_orders),
        ),
        ("sizeof EnvDims", size_of::<EnvDims>()),
        ("EnvDims.n_scenarios", offset_of!(EnvDims, n_scenarios)),
        ("EnvDims.n_symbols", offset_of!(EnvDims, n_symbols)),
        ("EnvDims.paths", offset_of!(EnvDims, paths)),
        ("EnvDims.bars", offset_of!(EnvDims, bars)),
        ("EnvDims.lo", offset_of!(EnvDims, lo)),
        ("EnvDims.hi", offset_of!(EnvDims, hi)),
        ("EnvDims.start_a", offset_of!(EnvDims, start_a)),
        ("EnvDims.start_b", offset_of!(EnvDims, start_b)),
        ("EnvDims.episode_len", offset_of!(EnvDims, episode_len)),
        ("EnvDims.record_cap", offset_of!(EnvDims, record_cap)),
        ("sizeof EpisodeRecordC", size_of::<EpisodeRecordC>()),
        (
            "EpisodeRecordC.scenario",
            offset_of!(EpisodeRecordC, scenario),
        ),
        ("EpisodeRecordC.path", offset_of!(EpisodeRecordC, path)),
        ("EpisodeRecordC.start", offset_of!(EpisodeRecordC, start)),
        ("EpisodeRecordC.length", offset_of!(EpisodeRecordC, length)),
        (
            "EpisodeRecordC.total_return",
            offset_of!(EpisodeRecordC, total_return),
        ),
        ("EpisodeRecordC.killed", offset_of!(EpisodeRecordC, killed)),
        (
            "EpisodeRecordC.invalid_actions",
            offset_of!(EpisodeRecordC, invalid_actions),
        ),
        (
            "EpisodeRecordC.limited_orders",
            offset_of!(EpisodeRecordC, limited_orders),
        ),
        ("EpisodeRecordC.sum", offset_of!(EpisodeRecordC, sum)),
        ("EpisodeRecordC.sum_sq", offset_of!(EpisodeRecordC, sum_sq)),
        ("EpisodeRecordC.count", offset_of!(EpisodeRecordC, count)),
    ]
}

/// `(name, value)` of the layout constants the kernels assume, in the order of
/// `marl_host_constants` in `kernels/host_shim.c`.
pub fn kernel_constants() -> Vec<(&'static str, usize)> {
    use super::obs;
    use crate::data::MACRO;
    use crate::features::{N_REGIME, N_TECH, WINDOW};
    vec![
        ("N_ACTIONS", super::N_ACTIONS),
        ("N_COMPONENTS", N_COMPONENTS),
        ("MASTER_ACTIONS", super::MASTER_ACTIONS),
        ("N_TECH", N_TECH),
        ("WINDOW", WINDOW),
        ("N_REGIME", N_REGIME),
        ("MACRO", MACRO),
        ("TECH_WINDOW_LEN", obs::TECH_WINDOW_LEN),
        ("DYN_OBS", obs::DYN_OBS),
        ("OBS_DIM", obs::OBS_DIM),
        ("SENT_MACRO", obs::SENT_MACRO.start),
        ("SL_PROBS", obs::SL_PROBS.start),
        ("POSITION", obs::POSITION.start),
        ("PORTFOLIO", obs::PORTFOLIO.start),
        ("REGIME", obs::REGIME.start),
        ("MASTER", obs::MASTER.start),
        ("FOLD_ROWS", FOLD_ROWS),
        ("ACC_SLOTS", ACC_SLOTS),
        ("DEBUG_LEN", DEBUG_LEN),
    ]
}
