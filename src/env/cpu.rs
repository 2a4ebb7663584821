/*!
The CPU backend: the reference implementation of docs/env-spec.md. Scenarios run in parallel with
rayon; within a scenario the symbols are processed in passes over struct-of-arrays state, and the
per-scenario reductions (budget, equity, kill switch) are plain loops between the passes.
One scenario's step (`step_lane`) is one helper per phase of spec §4, in order: `orders`,
`open_limit`, `budget`, `buys`, `mark_to_market`, `kill_switch`, `rewards`, `advance`; the CUDA
side (`marl_step_scenario`, kernels/scenario.cuh) has the same phases under the same names
(`marl_step_orders`, ...), with the same summation order.
*/

// Index loops over parallel per-symbol arrays mirror the CUDA kernels line by line.
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use rayon::prelude::*;

use super::logic::{self, Directive, HOLD, N_ACTIONS, StepParams};
use super::obs::{self, DYN_OBS, OBS_DIM, TECH_WINDOW_LEN};
use super::{
    Backend, EnvLayout, EpisodeRecord, HalfObs, ScenarioState, Snapshot, StepOutputs, SymbolState,
};
use crate::costs::{borrow_fee, slippage};
use crate::data::{MACRO, MarketData};
use crate::error::Result;
use crate::features::{Features, N_REGIME};
use crate::priors::PriorCache;
use crate::reward::{self, ComponentSums, N_COMPONENTS, PortfolioTerms, SymbolTerms};

/// The instruction set of the CPU step's per-symbol loops. The step is one Rust function compiled
/// once per variant (`#[target_feature]`) and chosen at run time; the arithmetic is the same in
/// each (IEEE operations lane by lane, sums in symbol order), so the outputs are the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 AVX-512F: 8 f64 lanes.
    Avx512,
    /// x86-64 AVX2: 4 f64 lanes.
    Avx2,
    /// What the build targets by default (SSE2 on x86-64): 2 f64 lanes at most.
    Portable,
}

impl Isa {
    /// Every variant, widest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The widest variant this CPU runs.
    pub fn detect() -> Isa {
        Self::ALL
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Portable)
    }

    /// Whether this CPU runs the variant.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The variants this CPU runs, widest first.
    pub fn available() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    fn available_names() -> String {
        let v: Vec<String> = Self::available().iter().map(|i| i.to_string()).collect();
        v.join(", ")
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        })
    }
}

impl std::str::FromStr for Isa {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|i| i.to_string() == s)
            .ok_or_else(|| {
                crate::error::Error::invalid(format!(
                    "unknown instruction set `{s}` (avx512, avx2 or portable)"
                ))
            })
    }
}

/// Per-scenario host state: the spec's scenario state plus episode accumulators.
#[derive(Debug, Clone, Default)]
struct Lane {
    st: ScenarioState,
    sums: ComponentSums,
    records: Vec<EpisodeRecord>,
}

/// Per-symbol scratch of one scenario's step.
#[derive(Debug, Clone, Default)]
struct Scratch {
    q0: Vec<f64>,
    qb: Vec<f64>,
    qs: Vec<f64>,
    slip: Vec<f64>,
    opener: Vec<bool>,
    /// The 7 reward components of each symbol, `[7][S]`.
    comp: [Vec<f64>; N_COMPONENTS],
    /// Each symbol's cash flow of a phase: sell proceeds (orders), buy cost (buys).
    cash: Vec<f64>,
    /// S zeros (the liquidation cost when the kill switch did not fire).
    zero: Vec<f64>,
}

impl Scratch {
    fn new(s: usize) -> Self {
        Self {
            q0: vec![0.0; s],
            qb: vec![0.0; s],
            qs: vec![0.0; s],
            slip: vec![0.0; s],
            opener: vec![false; s],
            comp: std::array::from_fn(|_| vec![0.0; s]),
            cash: vec![0.0; s],
            zero: vec![0.0; s],
        }
    }
}

/// [`Scratch`] cut to exactly S elements for one step.
struct ScratchView<'a> {
    q0: &'a mut [f64],
    qb: &'a mut [f64],
    qs: &'a mut [f64],
    slip: &'a mut [f64],
    opener: &'a mut [bool],
    comp: &'a mut [Vec<f64>; N_COMPONENTS],
    cash: &'a mut [f64],
    zero: &'a [f64],
}

/// Number of f64 fields of per-symbol state, stored `[N][FIELDS][S]`.
const FIELDS: usize = 5;
const F_Q: usize = 0;
const F_ENTRY: usize = 1;
const F_PEAK: usize = 2;
const F_DSR_A: usize = 3;
const F_DSR_B: usize = 4;

/// The reference backend.
pub struct CpuBackend {
    layout: EnvLayout,
    data: Arc<MarketData>,
    features: Arc<Features>,
    priors: Option<Arc<PriorCache>>,
    seed: u64,
    lanes: Vec<Lane>,
    /// `[N][FIELDS][S]`
    sym: Vec<f64>,
    /// `[N][S]`
    entry_k: Vec<u32>,
    out: StepOutputs,
    isa: Isa,
}

/// Read-only context of a step.
struct Ctx<'a> {
    l: &'a EnvLayout,
    md: &'a MarketData,
    seed: u64,
}

impl CpuBackend {
    /// The CPU backend of `layout` over `data` and its `features`.
    pub fn new(layout: EnvLayout, data: Arc<MarketData>, features: Arc<Features>) -> Self {
        let (n, s) = (layout.n_scenarios, layout.n_symbols);
        Self {
            layout,
            data,
            features,
            priors: None,
            seed: 0,
            lanes: vec![Lane::default(); n],
            sym: vec![0.0; n * FIELDS * s],
            entry_k: vec![0; n * s],
            out: StepOutputs::new(n, s),
            isa: Isa::detect(),
        }
    }

    /// Step with the instruction set `isa` instead of the widest this CPU has ([`Isa::detect`]);
    /// an error when the CPU lacks it. Every choice gives the same bits (tests/host_parity.rs
    /// runs each one this machine has against the kernels' header); only the speed differs.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self> {
        if !isa.supported() {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::BackendUnavailable,
                format!("this CPU has no {isa} (it has: {})", Isa::available_names()),
            ));
        }
        self.isa = isa;
        Ok(self)
    }

    /// The instruction set the step runs with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The observation's SL slice reads `priors` (`[P, T, S, 3]`, spec §6); `None`: zeros. The
    /// caller has checked the cache against the data (`VecEnv::new` does); a cache of another
    /// shape is refused here.
    pub fn with_priors(mut self, priors: Option<Arc<PriorCache>>) -> Result<Self> {
        if let Some(c) = &priors {
            let h = &c.header;
            let want = (self.data.paths, self.data.bars, self.data.n_symbols());
            if (h.paths, h.bars, h.symbols) != want {
                return Err(crate::error::Error::shape(
                    "SL prior cache",
                    "values",
                    &[want.0, want.1, want.2, crate::priors::CHANNELS],
                    &[h.paths, h.bars, h.symbols, crate::priors::CHANNELS],
                ));
            }
        }
        self.priors = priors;
        Ok(self)
    }
}

/// Start episode `e` of scenario `n` (spec §1-2).
fn reset_lane(ctx: &Ctx, n: usize, e: u32, lane: &mut Lane, sym: &mut [f64], entry_k: &mut [u32]) {
    let (path, t0) = ctx.l.episode_start(ctx.seed, n, e);
    let c0 = ctx.l.params.initial_capital;
    lane.st = ScenarioState {
        cash: c0,
        equity: c0,
        peak: c0,
        gross: 0.0,
        dsr_a: 0.0,
        dsr_b: 0.0,
        path,
        t0,
        k: 0,
        episode: e,
        directive: ctx.l.params.default_action,
        open_count: 0,
        invalid_actions: 0,
        limited_orders: 0,
    };
    lane.sums = ComponentSums::default();
    sym.fill(0.0);
    entry_k.fill(0);
}

/// One scenario's bars in a step: `C[t]` (with the benchmark in column S), `V[t]`, and `O`, `C`,
/// `V` at `t' = t + 1`.
struct Bars<'a> {
    close: &'a [f32],
    vol: &'a [f32],
    open1: &'a [f32],
    close1: &'a [f32],
    vol1: &'a [f32],
}

/// One scenario's per-symbol state, exact-length views (`[S]` each).
struct SymView<'a> {
    q: &'a mut [f64],
    entry: &'a mut [f64],
    peak_px: &'a mut [f64],
    dsr_a: &'a mut [f64],
    dsr_b: &'a mut [f64],
    entry_k: &'a mut [u32],
}

/// One scenario's step outputs, exact-length views.
struct LaneOut<'a> {
    reward: &'a mut [f32],
    comps: &'a mut [f32],
    master: &'a mut f32,
    turnover: &'a mut f32,
    terminated: &'a mut u8,
    truncated: &'a mut u8,
}

/// One scenario's step: its read-only inputs and the scalars its phases hand on (the CUDA side's
/// `MarlStep`, kernels/scenario.cuh).
struct Step<'a> {
    l: &'a EnvLayout,
    p: &'a StepParams,
    s_n: usize,
    bars: Bars<'a>,
    d: Directive,
    e0: f64,
    open0: u32,
    comm: f64,
    cash: f64,
    lambda: f64,
    g_open: f64,
    fee: f64,
    traded: f64,
    gross: f64,
    e1: f64,
    killed: bool,
    open_count: u32,
    isa: Isa,
}

/// One scenario's step outputs and state, as [`step_lane`] takes them.
struct LaneIo<'a> {
    n: usize,
    lane: &'a mut Lane,
    sym: &'a mut [f64],
    entry_k: &'a mut [u32],
    actions: &'a [u8],
    m: u8,
    reward: &'a mut [f32],
    comps: &'a mut [f32],
    master: &'a mut f32,
    turnover: &'a mut f32,
    terminated: &'a mut u8,
    truncated: &'a mut u8,
}

/// One scenario's step (spec §4), writing its outputs: the phases below in the spec's order, with
/// the names and order of the CUDA side's (`marl_step_scenario`, kernels/scenario.cuh). Each
/// phase is a per-symbol loop with nothing carried between symbols (`symbol_orders`,
/// `symbol_buys`, `symbol_peaks`, `symbol_rewards`: vectorised) followed by its sums in symbol
/// order (the CUDA side's order, so the results are the same bits). The per-symbol loops run
/// with the instruction set `isa`.
#[inline(never)]
fn step_lane(ctx: &Ctx, io: LaneIo, sc: &mut Scratch, isa: Isa) {
    let LaneIo {
        n,
        lane,
        sym,
        entry_k,
        actions,
        m,
        reward: reward_out,
        comps: comp_out,
        master: master_out,
        turnover: turnover_out,
        terminated: term_out,
        truncated: trunc_out,
    } = io;
    let l = ctx.l;
    let md = ctx.md;
    let p: &StepParams = &l.params;
    let s_n = l.n_symbols;
    let st = &mut lane.st;
    let t = (st.t0 + st.k) as usize;
    let base = md.px(st.path as usize, t, 0);
    let base1 = md.px(st.path as usize, t + 1, 0);
    let bars = Bars {
        close: &md.close[base..base + s_n + 1],
        close1: &md.close[base1..base1 + s_n + 1],
        open1: &md.open[base1..base1 + s_n],
        vol: &md.volume[base..base + s_n],
        vol1: &md.volume[base1..base1 + s_n],
    };
    let killed = {
        let (q, rest) = sym.split_at_mut(s_n);
        let (entry, rest) = rest.split_at_mut(s_n);
        let (peak_px, rest) = rest.split_at_mut(s_n);
        let (dsr_a, dsr_b) = rest.split_at_mut(s_n);
        // Exact-length views: the loops index them by `s < s_n` without bounds checks.
        let mut sy = SymView {
            q,
            entry,
            peak_px,
            dsr_a: &mut dsr_a[..s_n],
            dsr_b: &mut dsr_b[..s_n],
            entry_k: &mut entry_k[..s_n],
        };
        let mut out = LaneOut {
            reward: &mut reward_out[..s_n],
            comps: &mut comp_out[..s_n * N_COMPONENTS],
            master: master_out,
            turnover: turnover_out,
            terminated: term_out,
            truncated: trunc_out,
        };
        let mut sc = ScratchView {
            q0: &mut sc.q0[..s_n],
            qb: &mut sc.qb[..s_n],
            qs: &mut sc.qs[..s_n],
            slip: &mut sc.slip[..s_n],
            opener: &mut sc.opener[..s_n],
            comp: &mut sc.comp,
            cash: &mut sc.cash[..s_n],
            zero: &sc.zero[..s_n],
        };
        let mut c = Step {
            l,
            p,
            s_n,
            bars,
            d: logic::directive(p, m), // §4.1
            e0: st.equity,
            open0: st.open_count,
            comm: p.costs.commission,
            cash: 0.0,
            lambda: 1.0,
            g_open: 0.0,
            fee: 0.0,
            traded: 0.0,
            gross: 0.0,
            e1: 0.0,
            killed: false,
            open_count: 0,
            isa,
        };
        c.orders(st, &sy, &actions[..s_n], &mut sc); // §4.2, 4.3, 4.5, 4.6
        c.open_limit(st, &mut sc); // §4.4
        c.budget(&sc); // §4.7
        c.buys(st.k, &mut sy, &mut sc); // §4.8, 4.9
        c.mark_to_market(st, &mut sy); // §4.10
        let liq_cost = c.kill_switch(st.peak, &mut sy); // §4.11
        let hhi = c.rewards(&mut sy, &mut sc, &liq_cost, &mut lane.sums, &mut out); // §4.12, §5
        if !c.advance(st, hhi, m, &mut out) {
            return;
        }
        c.killed
    };
    // §4.13 done: record the episode, auto-reset (§1, §2 with e + 1)
    let st = &lane.st;
    lane.records.push(EpisodeRecord {
        scenario: n as u32,
        path: st.path,
        start: st.t0,
        length: st.k,
        total_return: st.equity / p.initial_capital - 1.0,
        killed,
        invalid_actions: st.invalid_actions,
        limited_orders: st.limited_orders,
        components: lane.sums,
    });
    let e = st.episode + 1;
    reset_lane(ctx, n, e, lane, sym, entry_k);
}

impl Step<'_> {
    /// §4.2 mask, §4.3 orders, §4.5 slippage (requested size), §4.6 sell proceeds.
    #[inline(always)]
    fn orders(
        &mut self,
        st: &mut ScenarioState,
        sy: &SymView,
        actions: &[u8],
        sc: &mut ScratchView,
    ) {
        let s_n = self.s_n;
        let b = &self.bars;
        let k = OrderStep {
            p: self.p,
            d: &self.d,
            e0: self.e0,
            open0: self.open0,
            comm: self.comm,
        };
        st.invalid_actions += symbol_orders(
            self.isa,
            &k,
            &b.close[..s_n],
            &b.open1[..s_n],
            &b.vol[..s_n],
            sy.q,
            sy.entry,
            actions,
            sc.q0,
            sc.qb,
            sc.qs,
            sc.slip,
            sc.opener,
            sc.cash,
        );
        let mut sell_cash = 0.0;
        for &x in sc.cash.iter() {
            sell_cash += x;
        }
        self.cash = st.cash + sell_cash;
    }

    /// §4.4 open-position limit: openers ranked in rotated symbol order from `k mod S`.
    #[inline(always)]
    fn open_limit(&mut self, st: &mut ScenarioState, sc: &mut ScratchView) {
        let s_n = self.s_n;
        let mut s = st.k as usize % s_n;
        let mut rank = 0u32;
        for _ in 0..s_n {
            if sc.opener[s] {
                if self.open0 + rank >= self.d.max_open {
                    sc.qb[s] = 0.0;
                    st.limited_orders += 1;
                }
                rank += 1;
            }
            s += 1;
            if s == s_n {
                s = 0;
            }
        }
    }

    /// §4.7 buy budget: G1, R, lambda.
    #[inline(always)]
    fn budget(&mut self, sc: &ScratchView) {
        let (lev, comm) = (self.p.leverage_cap, self.comm);
        let mut g1 = 0.0;
        let mut req = 0.0;
        for s in 0..self.s_n {
            let o1 = self.bars.open1[s] as f64;
            g1 += (sc.q0[s] - sc.qs[s]) * o1;
            let pb = o1 * (1.0 + sc.slip[s]);
            req += sc.qb[s] * (o1 + lev * (pb - o1 + comm * pb));
        }
        let avail = (lev * (self.cash + g1) - g1).max(0.0);
        self.lambda = if req > 0.0 {
            (avail / req).min(1.0)
        } else {
            1.0
        };
    }

    /// §4.8 buys (scaled by lambda), entry price, entry step, peak price, the order notional
    /// `sum_s (qs + qb) O[t']`; §4.9 borrow fee.
    #[inline(always)]
    fn buys(&mut self, k: u32, sy: &mut SymView, sc: &mut ScratchView) {
        let s_n = self.s_n;
        let open1 = &self.bars.open1[..s_n];
        symbol_buys(
            self.isa,
            self.lambda,
            self.comm,
            k,
            open1,
            sc.q0,
            sc.qs,
            sc.slip,
            sc.qb,
            sy.entry,
            sy.entry_k,
            sy.peak_px,
            sy.q,
            sc.cash,
        );
        // The sums in symbol order.
        let (qb, qs, q, cash) = (&sc.qb[..s_n], &sc.qs[..s_n], &sy.q[..s_n], &sc.cash[..s_n]);
        let mut buy_cash = 0.0;
        let mut g_open = 0.0;
        let mut traded = 0.0;
        for s in 0..s_n {
            let o1 = open1[s] as f64;
            buy_cash += cash[s];
            g_open += q[s] * o1;
            traded += (qs[s] + qb[s]) * o1;
        }
        self.cash -= buy_cash;
        self.g_open = g_open;
        self.traded = traded;
        self.fee = borrow_fee(&self.p.costs, self.cash);
        self.cash -= self.fee;
    }

    /// §4.10 mark to market at `C[t']`: gross, E1, peak equity, peak prices.
    #[inline(always)]
    fn mark_to_market(&mut self, st: &mut ScenarioState, sy: &mut SymView) {
        let s_n = self.s_n;
        let close1 = &self.bars.close1[..s_n];
        symbol_peaks(self.isa, close1, sy.q, sy.peak_px);
        let q = &sy.q[..s_n];
        let mut gross = 0.0;
        for s in 0..s_n {
            gross += q[s] * close1[s] as f64;
        }
        self.gross = gross;
        self.e1 = self.cash + gross;
        if self.e1 > st.peak {
            st.peak = self.e1;
        }
    }

    /// §4.11 kill switch on the drawdown from `peak`: when it fires, sell everything at `C[t']`;
    /// returns the per-symbol liquidation costs (empty when it did not fire).
    #[inline(always)]
    fn kill_switch(&mut self, peak: f64, sy: &mut SymView) -> Vec<f64> {
        self.killed = 1.0 - self.e1 / peak >= self.p.kill_drawdown;
        let mut liq_cost = vec_or_empty(self.killed, self.s_n);
        if !self.killed {
            return liq_cost;
        }
        let (p, comm) = (self.p, self.comm);
        let mut proceeds = 0.0;
        for s in 0..self.s_n {
            let q1 = sy.q[s];
            if q1 > 0.0 {
                let c1 = self.bars.close1[s] as f64;
                let slip = slippage(&p.costs, q1 * c1, c1 * self.bars.vol1[s] as f64);
                let ps = c1 * (1.0 - slip);
                proceeds += q1 * ps * (1.0 - comm);
                liq_cost[s] = comm * q1 * ps + q1 * (c1 - ps);
                sy.q[s] = 0.0;
                sy.entry[s] = 0.0;
                sy.peak_px[s] = 0.0;
            }
        }
        self.cash += proceeds;
        self.gross = 0.0;
        self.e1 = self.cash;
        liq_cost
    }

    /// The portfolio terms of §5 with the final E1 and G.
    #[inline(always)]
    fn portfolio(&self) -> PortfolioTerms {
        PortfolioTerms::new(
            &self.p.reward,
            self.p.initial_capital,
            self.e0,
            self.e1,
            self.gross,
            self.d.cap,
            self.s_n as f64,
        )
    }

    /// §4.12 / §5 rewards with the final E1, v1, G: the 7 components, the episode accumulators,
    /// the open count; returns the HHI.
    #[inline(always)]
    fn rewards(
        &mut self,
        sy: &mut SymView,
        sc: &mut ScratchView,
        liq_cost: &[f64],
        sums: &mut ComponentSums,
        out: &mut LaneOut,
    ) -> f64 {
        let (p, b, comm, fee, g_open) = (self.p, &self.bars, self.comm, self.fee, self.g_open);
        let pf = self.portfolio();
        let gross = self.gross;
        // Per-step constants: the borrow fee per unit of open value, 1 / G.
        let fee_share = if fee > 0.0 && g_open > 0.0 {
            fee / g_open
        } else {
            0.0
        };
        let inv_gross = if gross > 0.0 { 1.0 / gross } else { 0.0 };
        let killed = self.killed;
        let s_n = self.s_n;
        let (close1, close, open1) = (&b.close1[..s_n], &b.close[..s_n], &b.open1[..s_n]);
        let liq = if killed {
            &liq_cost[..s_n]
        } else {
            &sc.zero[..s_n]
        };
        let k = RewardStep {
            p,
            pf: &pf,
            comm,
            fee_share,
            killed,
        };
        let [c0, c1s, c2, c3, c4, c5, c6] = sc.comp.each_mut().map(|c| &mut c[..s_n]);
        symbol_rewards(
            self.isa, &k, close, close1, open1, sc.q0, sc.qb, sc.qs, sc.slip, sy.q, sy.peak_px,
            liq, sy.dsr_a, sy.dsr_b, out.reward, c0, c1s, c2, c3, c4, c5, c6,
        );
        // The sums in symbol order (the CUDA side's order).
        let mut hhi = 0.0;
        let mut open_count = 0u32;
        for s in 0..s_n {
            let comps = [c0[s], c1s[s], c2[s], c3[s], c4[s], c5[s], c6[s]];
            let mut wt = [0.0; N_COMPONENTS];
            let oc = &mut out.comps[s * N_COMPONENTS..(s + 1) * N_COMPONENTS];
            for i in 0..N_COMPONENTS {
                wt[i] = p.reward.w[i] * comps[i];
                oc[i] = comps[i] as f32;
            }
            sums.add(&wt);
            let q1 = sy.q[s];
            if gross > 0.0 {
                let w = (q1 * close1[s] as f64) * inv_gross;
                hhi += w * w;
            }
            open_count += (q1 > 0.0) as u32;
        }
        self.open_count = open_count;
        hhi
    }

    /// §4.13 master reward (§5), advance, done; returns whether the episode ended (the caller
    /// records it, §7, and auto-resets).
    #[inline(always)]
    fn advance(&mut self, st: &mut ScenarioState, hhi: f64, m: u8, out: &mut LaneOut) -> bool {
        let s_n = self.s_n;
        let bench_ret = self.bars.close1[s_n] as f64 / self.bars.close[s_n] as f64 - 1.0;
        let pf = self.portfolio();
        let (mr, pa, pb) = reward::master_reward(
            &pf,
            &self.p.reward,
            hhi,
            bench_ret,
            st.peak,
            st.dsr_a,
            st.dsr_b,
        );
        *out.master = mr as f32;
        *out.turnover = if self.e0 > 0.0 {
            (self.traded / self.e0) as f32
        } else {
            0.0
        };
        st.dsr_a = pa;
        st.dsr_b = pb;
        st.k += 1;
        st.cash = self.cash;
        st.equity = self.e1;
        st.gross = self.gross;
        st.open_count = self.open_count;
        st.directive = m as u32;
        let truncated = !self.killed
            && (st.k as usize == self.l.episode_len || (st.t0 + st.k) as usize == self.l.hi - 1);
        *out.terminated = self.killed as u8;
        *out.truncated = truncated as u8;
        self.killed || truncated
    }
}

/// `fn $name(isa, args..)`: `$body(args..)` compiled once per [`Isa`] (`#[target_feature]`) and
/// run with the one `isa` names. The per-symbol loops are separate functions so that the
/// compiler sees each slice as its own argument (no overlap) whatever the caller inlined.
macro_rules! per_isa {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $body:ident;) => {
        $(#[$m])*
        #[inline(never)]
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: Isa, $($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($a: $t),*) $(-> $r)? {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($a: $t),*) $(-> $r)? {
                    $body($($a),*)
                }
                match isa {
                    // SAFETY: `Isa::Avx512` is only selected on a CPU with AVX-512F
                    // (`Isa::detect`, `CpuBackend::with_isa` check `Isa::supported`).
                    Isa::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: as above, for AVX2.
                    Isa::Avx2 => return unsafe { avx2($($a),*) },
                    Isa::Portable => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            $body($($a),*)
        }
    };
}

per_isa! {
    /// [`symbol_orders_body`] with the instruction set `isa`.
    fn symbol_orders(
        k: &OrderStep, close: &[f32], open1: &[f32], vol: &[f32], q: &[f64], entry: &[f64],
        actions: &[u8], q0s: &mut [f64], qbs: &mut [f64], qss: &mut [f64], slips: &mut [f64],
        opener: &mut [bool], sell: &mut [f64],
    ) -> u32 = symbol_orders_body;
}

per_isa! {
    /// [`symbol_buys_body`] with the instruction set `isa`.
    fn symbol_buys(
        lambda: f64, comm: f64, k: u32, open1: &[f32], q0s: &[f64], qss: &[f64], slips: &[f64],
        qbs: &mut [f64], entry: &mut [f64], entry_k: &mut [u32], peak_px: &mut [f64],
        q: &mut [f64], buy: &mut [f64],
    ) = symbol_buys_body;
}

per_isa! {
    /// [`symbol_peaks_body`] with the instruction set `isa`.
    fn symbol_peaks(close1: &[f32], q: &[f64], peak_px: &mut [f64]) = symbol_peaks_body;
}

per_isa! {
    /// [`symbol_rewards_body`] with the instruction set `isa`.
    fn symbol_rewards(
        k: &RewardStep, close: &[f32], close1: &[f32], open1: &[f32], q0s: &[f64], qbs: &[f64],
        qss: &[f64], slips: &[f64], q: &[f64], peak_px: &[f64], liq: &[f64],
        dsr_a: &mut [f64], dsr_b: &mut [f64], reward: &mut [f32], c0: &mut [f64],
        c1s: &mut [f64], c2: &mut [f64], c3: &mut [f64], c4: &mut [f64], c5: &mut [f64],
        c6: &mut [f64],
    ) = symbol_rewards_body;
}

/// The per-step scalars of [`symbol_orders`].
struct OrderStep<'a> {
    p: &'a StepParams,
    d: &'a Directive,
    e0: f64,
    open0: u32,
    comm: f64,
}

/// §4.2 mask, §4.3 orders, §4.5 slippage, per symbol: the order (`q0`, `qb`, `qs`, `opener`),
/// its slippage and its sell proceeds (`sell`, 0 without a sale); returns the number of masked
/// actions. Per symbol with every slice a separate argument, like [`symbol_rewards`]: vectorised.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn symbol_orders_body(
    k: &OrderStep,
    close: &[f32],
    open1: &[f32],
    vol: &[f32],
    q: &[f64],
    entry: &[f64],
    actions: &[u8],
    q0s: &mut [f64],
    qbs: &mut [f64],
    qss: &mut [f64],
    slips: &mut [f64],
    opener: &mut [bool],
    sell: &mut [f64],
) -> u32 {
    let (p, d, e0, open0, comm) = (k.p, k.d, k.e0, k.open0, k.comm);
    let s_n = sell.len();
    let (close, open1, vol) = (&close[..s_n], &open1[..s_n], &vol[..s_n]);
    let (q, entry, actions) = (&q[..s_n], &entry[..s_n], &actions[..s_n]);
    let (q0s, qbs, qss) = (&mut q0s[..s_n], &mut qbs[..s_n], &mut qss[..s_n]);
    let (slips, opener) = (&mut slips[..s_n], &mut opener[..s_n]);
    let mut invalid = 0u32;
    for s in 0..s_n {
        let c = close[s] as f64;
        let o1 = open1[s] as f64;
        let q0 = q[s];
        let v0 = q0 * c;
        let bits = logic::mask_bits(q0, v0, e0, c, entry[s], open0, d);
        let a = actions[s];
        let allowed = bits & (1u8 << (a & 7)) != 0;
        invalid += !allowed as u32;
        let a = if allowed { a } else { HOLD };
        let ord = logic::size_order(p, a, q0, v0, e0, c, o1, d);
        let qty = ord.qb + ord.qs;
        let sl = slippage(&p.costs, qty * o1, c * vol[s] as f64);
        let slip = if qty > 0.0 { sl } else { 0.0 };
        let proceeds = ord.qs * (o1 * (1.0 - slip)) * (1.0 - comm);
        sell[s] = if ord.qs > 0.0 { proceeds } else { 0.0 };
        q0s[s] = q0;
        qbs[s] = ord.qb;
        qss[s] = ord.qs;
        slips[s] = slip;
        opener[s] = ord.opener;
    }
    invalid
}

/// §4.8 per symbol: the buy scaled by `lambda` (written back to `qbs`), the new position `q`,
/// entry price and step, peak price, and the buy's cost (`buy`, 0 without a buy).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn symbol_buys_body(
    lambda: f64,
    comm: f64,
    k: u32,
    open1: &[f32],
    q0s: &[f64],
    qss: &[f64],
    slips: &[f64],
    qbs: &mut [f64],
    entry: &mut [f64],
    entry_k: &mut [u32],
    peak_px: &mut [f64],
    q: &mut [f64],
    buy: &mut [f64],
) {
    let s_n = buy.len();
    let (open1, q0s, qss, slips) = (&open1[..s_n], &q0s[..s_n], &qss[..s_n], &slips[..s_n]);
    let (qbs, entry, entry_k) = (&mut qbs[..s_n], &mut entry[..s_n], &mut entry_k[..s_n]);
    let (peak_px, q) = (&mut peak_px[..s_n], &mut q[..s_n]);
    for s in 0..s_n {
        let o1 = open1[s] as f64;
        let qb = qbs[s] * lambda;
        qbs[s] = qb;
        let q_rest = q0s[s] - qss[s];
        let q1 = q_rest + qb;
        let bought = qb > 0.0;
        let opened = bought && q_rest == 0.0;
        let pb = o1 * (1.0 + slips[s]);
        let cost = qb * pb * (1.0 + comm);
        buy[s] = if bought { cost } else { 0.0 };
        let avg = (q_rest * entry[s] + qb * pb) / q1;
        let e = if bought { avg } else { entry[s] };
        let pk = if opened { pb } else { peak_px[s] };
        entry_k[s] = if opened { k + 1 } else { entry_k[s] };
        entry[s] = if q1 == 0.0 { 0.0 } else { e };
        peak_px[s] = if q1 == 0.0 { 0.0 } else { pk };
        q[s] = q1;
    }
}

/// §4.10 per symbol: a held position's peak price follows `C[t']` up.
#[inline(always)]
fn symbol_peaks_body(close1: &[f32], q: &[f64], peak_px: &mut [f64]) {
    let s_n = peak_px.len();
    let (close1, q) = (&close1[..s_n], &q[..s_n]);
    for s in 0..s_n {
        let c1 = close1[s] as f64;
        let pk = peak_px[s];
        peak_px[s] = if q[s] > 0.0 && c1 > pk { c1 } else { pk };
    }
}

/// The per-step scalars of [`symbol_rewards`].
struct RewardStep<'a> {
    p: &'a StepParams,
    pf: &'a PortfolioTerms,
    comm: f64,
    fee_share: f64,
    killed: bool,
}

/// §4.12 / §5 per symbol: the 7 components (`c0..c6`), the weighted reward, the symbol's DSR
/// moments. Nothing is carried from one symbol to the next and every slice is a separate
/// argument (so the compiler knows they do not overlap): the loop is vectorised.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn symbol_rewards_body(
    k: &RewardStep,
    close: &[f32],
    close1: &[f32],
    open1: &[f32],
    q0s: &[f64],
    qbs: &[f64],
    qss: &[f64],
    slips: &[f64],
    q: &[f64],
    peak_px: &[f64],
    liq: &[f64],
    dsr_a: &mut [f64],
    dsr_b: &mut [f64],
    reward: &mut [f32],
    c0: &mut [f64],
    c1s: &mut [f64],
    c2: &mut [f64],
    c3: &mut [f64],
    c4: &mut [f64],
    c5: &mut [f64],
    c6: &mut [f64],
) {
    let (p, pf, comm, fee_share, killed) = (k.p, k.pf, k.comm, k.fee_share, k.killed);
    let w = p.reward.w;
    let s_n = reward.len();
    // Every slice cut to S: no bounds check left in the loop.
    let (close, close1, open1) = (&close[..s_n], &close1[..s_n], &open1[..s_n]);
    let (q0s, qbs, qss, slips) = (&q0s[..s_n], &qbs[..s_n], &qss[..s_n], &slips[..s_n]);
    let (q, peak_px, liq) = (&q[..s_n], &peak_px[..s_n], &liq[..s_n]);
    let (dsr_a, dsr_b) = (&mut dsr_a[..s_n], &mut dsr_b[..s_n]);
    let (c0, c1s, c2, c3) = (
        &mut c0[..s_n],
        &mut c1s[..s_n],
        &mut c2[..s_n],
        &mut c3[..s_n],
    );
    let (c4, c5, c6) = (&mut c4[..s_n], &mut c5[..s_n], &mut c6[..s_n]);
    for s in 0..s_n {
        let c = close[s] as f64;
        let c1 = close1[s] as f64;
        let o1 = open1[s] as f64;
        let (q0, qb, qs) = (q0s[s], qbs[s], qss[s]);
        let q1 = q[s];
        // position before a kill-switch sale, for the mid-price P&L
        let q_held = q0 - qs + qb;
        let slip = slips[s];
        let pb = o1 * (1.0 + slip);
        let ps = o1 * (1.0 - slip);
        let fee_s = if fee_share > 0.0 {
            (q_held * o1) * fee_share
        } else {
            0.0
        };
        let pnl = q_held * c1 - q0 * c - (qb - qs) * o1;
        let mut cost = comm * (qb * pb + qs * ps) + qb * (pb - o1) + qs * (o1 - ps) + fee_s;
        if killed {
            cost += liq[s];
        }
        let v1 = q1 * c1;
        // computed for every symbol, selected below (no branch: the loop vectorises)
        let bar_move = c1 / o1 - 1.0;
        let trade_dd = 1.0 - c1 / peak_px[s];
        let dir = if qb > 0.0 {
            1.0
        } else if qs > 0.0 {
            -1.0
        } else {
            0.0
        };
        let terms = SymbolTerms {
            pnl,
            cost,
            dir,
            trade_notional: (qb + qs) * o1,
            // only read for a trade (timing)
            bar_move: if dir != 0.0 { bar_move } else { 0.0 },
            trade_dd: if q1 > 0.0 { trade_dd } else { 0.0 },
            value: v1,
        };
        let (comps, a, bm) = terms.components(pf, &p.reward, dsr_a[s], dsr_b[s]);
        dsr_a[s] = a;
        dsr_b[s] = bm;
        let mut total = 0.0;
        for i in 0..N_COMPONENTS {
            total += w[i] * comps[i];
        }
        reward[s] = total as f32;
        c0[s] = comps[0];
        c1s[s] = comps[1];
        c2[s] = comps[2];
        c3[s] = comps[3];
        c4[s] = comps[4];
        c5[s] = comps[5];
        c6[s] = comps[6];
    }
}

/// Scenarios per rayon task: enough symbols (about 2048) that a task's work dwarfs rayon's
/// per-task cost, never fewer than one scenario.
fn lanes_per_task(s: usize) -> usize {
    (2048 / s.max(1)).max(1)
}

/// A scratch vector only when the kill switch fired (the rare path).
fn vec_or_empty(needed: bool, s: usize) -> Vec<f64> {
    if needed { vec![0.0; s] } else { Vec::new() }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn layout(&self) -> &EnvLayout {
        &self.layout
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.seed = seed;
        let s = self.layout.n_symbols;
        let ctx = Ctx {
            l: &self.layout,
            md: &self.data,
            seed,
        };
        self.lanes
            .par_iter_mut()
            .zip(self.sym.par_chunks_mut(FIELDS * s))
            .zip(self.entry_k.par_chunks_mut(s))
            .enumerate()
            .for_each(|(n, ((lane, sym), ek))| {
                lane.records.clear();
                reset_lane(&ctx, n, 0, lane, sym, ek);
            });
        Ok(())
    }

    fn step(&mut self, symbol_actions: &[u8], master_actions: &[u8]) -> Result<()> {
        let s = self.layout.n_symbols;
        let ctx = Ctx {
            l: &self.layout,
            md: &self.data,
            seed: self.seed,
        };
        let out = &mut self.out;
        let isa = self.isa;
        let min_len = lanes_per_task(s);
        self.lanes
            .par_iter_mut()
            .zip(self.sym.par_chunks_mut(FIELDS * s))
            .zip(self.entry_k.par_chunks_mut(s))
            .zip(symbol_actions.par_chunks(s))
            .zip(master_actions.par_iter())
            .zip(out.reward.par_chunks_mut(s))
            .zip(out.components.par_chunks_mut(s * N_COMPONENTS))
            .zip(out.master_reward.par_iter_mut())
            .zip(out.turnover.par_iter_mut())
            .zip(out.terminated.par_iter_mut())
            .zip(out.truncated.par_iter_mut())
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(
                || Scratch::new(s),
                |sc, (n, ((((((((((lane, sym), ek), acts), &m), rw), cp), mr), to), te), tr))| {
                    let io = LaneIo {
                        n,
                        lane,
                        sym,
                        entry_k: ek,
                        actions: acts,
                        m,
                        reward: rw,
                        comps: cp,
                        master: mr,
                        turnover: to,
                        terminated: te,
                        truncated: tr,
                    };
                    step_lane(&ctx, io, sc, isa);
                },
            );
        Ok(())
    }

    fn read_outputs(&mut self, out: &mut StepOutputs) -> Result<()> {
        // Every field is fully rewritten by each step, so handing the buffers over is a copy.
        if out.reward.len() == self.out.reward.len() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.clone_from(&self.out);
        }
        Ok(())
    }

    fn dyn_obs(&mut self, out: &mut [f32]) -> Result<()> {
        self.obs_rows::<f32>(out, false);
        Ok(())
    }

    fn gather_obs(&mut self, out: &mut [f32]) -> Result<()> {
        self.obs_rows::<f32>(out, true);
        Ok(())
    }

    fn dyn_obs_half(&mut self, out: HalfObs<'_>) -> Result<()> {
        match out {
            HalfObs::F16(o) => self.obs_rows(o, false),
            HalfObs::Bf16(o) => self.obs_rows(o, false),
        }
        Ok(())
    }

    fn gather_obs_half(&mut self, out: HalfObs<'_>) -> Result<()> {
        match out {
            HalfObs::F16(o) => self.obs_rows(o, true),
            HalfObs::Bf16(o) => self.obs_rows(o, true),
        }
        Ok(())
    }

    fn action_mask(&mut self, out: &mut [u8]) -> Result<()> {
        let s = self.layout.n_symbols;
        let l = &self.layout;
        let md = &*self.data;
        out.par_chunks_mut(s * N_ACTIONS)
            .zip(self.lanes.par_iter())
            .zip(self.sym.par_chunks(FIELDS * s))
            .for_each(|((o, lane), sym)| {
                let st = &lane.st;
                let d = logic::directive(&l.params, st.directive as u8);
                let base = md.px(st.path as usize, (st.t0 + st.k) as usize, 0);
                for i in 0..s {
                    let c = md.close[base + i] as f64;
                    let q0 = sym[F_Q * s + i];
                    let bits = logic::mask_bits(
                        q0,
                        q0 * c,
                        st.equity,
                        c,
                        sym[F_ENTRY * s + i],
                        st.open_count,
                        &d,
                    );
                    for a in 0..N_ACTIONS {
                        o[i * N_ACTIONS + a] = (bits >> a) & 1;
                    }
                }
            });
        Ok(())
    }

    fn obs_index(&mut self, out: &mut [u32]) -> Result<()> {
        for (o, lane) in out.chunks_exact_mut(2).zip(&self.lanes) {
            o[0] = lane.st.path;
            o[1] = lane.st.t0 + lane.st.k;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        let field = |f: usize| -> Vec<f64> {
            (0..n)
                .flat_map(|i| {
                    self.sym[(i * FIELDS + f) * s..(i * FIELDS + f + 1) * s]
                        .iter()
                        .copied()
                })
                .collect()
        };
        Ok(Snapshot {
            seed: self.seed,
            scenarios: self.lanes.iter().map(|l| l.st).collect(),
            symbols: SymbolState {
                q: field(F_Q),
                entry: field(F_ENTRY),
                peak_px: field(F_PEAK),
                dsr_a: field(F_DSR_A),
                dsr_b: field(F_DSR_B),
                entry_k: self.entry_k.clone(),
            },
        })
    }

    fn master_obs(
        &mut self,
        intents: &[f32],
        anchors: &mut [super::master_obs::MasterAnchor],
        out: &mut [f32],
    ) -> Result<()> {
        super::master_obs::master_obs_rows(
            &self.layout,
            &self.data,
            &self.features,
            self.lanes.iter().map(|l| &l.st),
            intents,
            anchors,
            out,
        );
        Ok(())
    }

    fn load_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let (n, s) = (self.layout.n_scenarios, self.layout.n_symbols);
        snap.check_shape(n, s)?;
        self.seed = snap.seed;
        for (lane, st) in self.lanes.iter_mut().zip(&snap.scenarios) {
            lane.st = *st;
            lane.sums = ComponentSums::default();
        }
        let sy = &snap.symbols;
        for i in 0..n {
            for (f, src) in [
                (F_Q, &sy.q),
                (F_ENTRY, &sy.entry),
                (F_PEAK, &sy.peak_px),
                (F_DSR_A, &sy.dsr_a),
                (F_DSR_B, &sy.dsr_b),
            ] {
                self.sym[(i * FIELDS + f) * s..(i * FIELDS + f + 1) * s]
                    .copy_from_slice(&src[i * s..(i + 1) * s]);
            }
        }
        self.entry_k.copy_from_slice(&sy.entry_k);
        Ok(())
    }

    fn drain_episodes(&mut self) -> Result<Vec<EpisodeRecord>> {
        let mut v = Vec::new();
        for lane in &mut self.lanes {
            v.append(&mut lane.records);
        }
        Ok(v)
    }
}

impl CpuBackend {
    /// The observations of every (scenario, symbol) into `out`: `[N, S, OBS_DIM]` with the
    /// technical window when `window`, else `[N, S, DYN_OBS]`. Per scenario, the parts every symbol
    /// shares are computed once ([`LaneObs::new`]); the window is one contiguous copy (converted
    /// straight from the f32 feature array for a half-precision `T`).
    fn obs_rows<T: ObsElement>(&self, out: &mut [T], window: bool) {
        let s = self.layout.n_symbols;
        let width = if window { OBS_DIM } else { DYN_OBS };
        let (l, md, f) = (&self.layout, &*self.data, &*self.features);
        let pr = self.priors.as_deref();
        out.par_chunks_mut(s * width)
            .zip(self.lanes.par_iter())
            .zip(self.sym.par_chunks(FIELDS * s))
            .zip(self.entry_k.par_chunks(s))
            .with_min_len(lanes_per_task(s))
            .for_each(|(((o, lane), sym), ek)| {
                let lo = LaneObs::new(l, md, f, pr, &lane.st, sym, ek);
                let mut dynamic = [0f32; DYN_OBS];
                for (i, row) in o.chunks_exact_mut(width).enumerate() {
                    let dst = if window {
                        let (win, dst) = row.split_at_mut(TECH_WINDOW_LEN);
                        T::from_f32_slice(win, f.window(lo.p, lo.t, i));
                        dst
                    } else {
                        row
                    };
                    lo.dynamic(i, &mut dynamic);
                    T::from_f32_slice(dst, &dynamic);
                }
            });
    }
}

/// An element type of observation buffers: f32, or a half-precision float (rounded from the f32
/// value, to nearest even).
trait ObsElement: Copy + Send + Sync {
    /// `dst[i] = src[i]` converted.
    fn from_f32_slice(dst: &mut [Self], src: &[f32]);
}

impl ObsElement for f32 {
    #[inline]
    fn from_f32_slice(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}

impl ObsElement for half::f16 {
    #[inline]
    fn from_f32_slice(dst: &mut [Self], src: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: both target features were detected at run time.
            unsafe { f16c::convert(dst, src) };
            return;
        }
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
    }
}

/// f32 -> f16 eight lanes at a time with the F16C instruction (`half` converts four at a time and
/// checks the CPU's features per group of four).
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::{
        __m128i, _MM_FROUND_TO_NEAREST_INT, _mm_storeu_si128, _mm256_cvtps_ph, _mm256_loadu_ps,
    };

    /// `dst[i] = f16(src[i])`, rounded to nearest even (as `half::f16::from_f32`).
    ///
    /// # Safety
    /// The CPU must support AVX and F16C.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn convert(dst: &mut [half::f16], src: &[f32]) {
        assert_eq!(dst.len(), src.len());
        let n8 = src.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= len of both slices; unaligned loads and stores.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
            }
        }
        for i in n8..src.len() {
            dst[i] = half::f16::from_f32(src[i]);
        }
    }
}

impl ObsElement for half::bf16 {
    #[inline]
    fn from_f32_slice(dst: &mut [Self], src: &[f32]) {
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
    }
}

/// One scenario's observation inputs (spec §6), with everything its symbols share computed once:
/// the template row holds the scenario-wide slices (macro, portfolio, regime, master), each by the
/// same formula as `marl_dyn_obs_row` (kernels/obs.cuh), so the values are bit-identical.
struct LaneObs<'a> {
    p: usize,
    t: usize,
    k: u32,
    equity: f64,
    episode_len: f32,
    close: &'a [f32],
    sentiment: &'a [f32],
    q: &'a [f64],
    entry: &'a [f64],
    peak_px: &'a [f64],
    entry_k: &'a [u32],
    /// `[S, 3]` of the bar (SL prior cache), or empty: zeros.
    sl: &'a [f32],
    template: [f32; DYN_OBS],
}

impl<'a> LaneObs<'a> {
    fn new(
        l: &EnvLayout,
        md: &'a MarketData,
        f: &Features,
        priors: Option<&'a PriorCache>,
        st: &ScenarioState,
        sym: &'a [f64],
        entry_k: &'a [u32],
    ) -> Self {
        let s_n = l.n_symbols;
        let p = st.path as usize;
        let t = (st.t0 + st.k) as usize;
        let e = st.equity;
        let mut row = [0f32; DYN_OBS];
        let mi = (p * md.bars + t) * MACRO;
        row[obs::SENT_MACRO.start + 1] = md.macro_series[mi];
        row[obs::SENT_MACRO.start + 2] = md.macro_series[mi + 1] / 100.0;
        let pf = obs::PORTFOLIO.start;
        let d = logic::directive(&l.params, st.directive as u8);
        let var = st.dsr_b - st.dsr_a * st.dsr_a;
        row[pf] = (st.cash / e) as f32;
        row[pf + 1] = (1.0 - e / st.peak) as f32;
        row[pf + 2] = if var > 1e-18 {
            (st.dsr_a / var.sqrt()).clamp(-10.0, 10.0) as f32
        } else {
            0.0
        };
        row[pf + 3] = (st.gross / e) as f32;
        row[pf + 4] = st.open_count as f32 / d.max_open.max(1) as f32;
        row[obs::REGIME].copy_from_slice(&f.regime_at(p, t)[..N_REGIME]);
        let ms = obs::MASTER.start;
        row[ms] = d.risk as f32;
        row[ms + 1] = d.cap as f32;
        row[ms + 2] = d.max_open as f32 / s_n as f32;
        for g in 0..3 {
            row[ms + 3 + g] = (d.mode == g as u32) as u8 as f32;
        }
        let px = md.px(p, t, 0);
        let sx = md.sx(p, t, 0);
        Self {
            p,
            t,
            k: st.k,
            equity: e,
            episode_len: l.episode_len as f32,
            close: &md.close[px..px + s_n],
            sentiment: &md.sentiment[sx..sx + s_n],
            q: &sym[F_Q * s_n..(F_Q + 1) * s_n],
            entry: &sym[F_ENTRY * s_n..(F_ENTRY + 1) * s_n],
            peak_px: &sym[F_PEAK * s_n..(F_PEAK + 1) * s_n],
            entry_k: &entry_k[..s_n],
            sl: priors.map_or(&[][..], |c| c.bar(p, t)),
            template: row,
        }
    }

    /// The dynamic observation of symbol `i` (spec §6), into `row`.
    #[inline]
    fn dynamic(&self, i: usize, row: &mut [f32; DYN_OBS]) {
        *row = self.template;
        let c = self.close[i] as f64;
        let q = self.q[i];
        let has = q > 0.0;
        row[obs::SENT_MACRO.start] = self.sentiment[i];
        if !self.sl.is_empty() {
            row[obs::SL_PROBS].copy_from_slice(&self.sl[i * 3..i * 3 + 3]);
        }
        let pos = obs::POSITION.start;
        row[pos + 3] = (q * c / self.equity) as f32;
        if has {
            row[pos] = 1.0;
            row[pos + 1] = (c / self.entry[i] - 1.0) as f32;
            row[pos + 2] = self.k.saturating_sub(self.entry_k[i]) as f32 / self.episode_len;
            row[pos + 4] = (1.0 - c / self.peak_px[i]) as f32;
        }
    }
}

#[cfg(test)]
mod isa_tests {
    use super::Isa;

    #[test]
    fn isa_names_round_trip_and_unknown_ones_are_errors() {
        for isa in Isa::ALL {
            assert_eq!(isa.to_string().parse::<Isa>().unwrap(), isa);
        }
        let e = "sse9".parse::<Isa>().unwrap_err().to_string();
        assert!(e.contains("sse9") && e.contains("avx2"), "{e}");
        assert!(Isa::Portable.supported());
        assert!(Isa::detect().supported());
        assert_eq!(Isa::available()[0], Isa::detect());
    }
}
