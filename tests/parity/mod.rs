//! Shared by tests/host_parity.rs and tests/cuda_parity.rs: stress market data, test configs,
//! random but consistent environment states, random actions, and a harness that steps two
//! [`Backend`]s side by side and compares every output exactly.
#![allow(dead_code)]

use std::sync::Arc;

use marl_trade::Config;
use marl_trade::data::{MACRO, MarketData};
use marl_trade::env::{
    Backend, EnvLayout, EpisodeRecord, N_ACTIONS, Period, Snapshot, StepOutputs, obs,
};
use marl_trade::features::{Features, N_REGIME, N_TECH};
use marl_trade::rng::SplitMix64;

/// Market data that exercises every branch: 3 % bar volatility with jumps (kill switch), opening gaps,
/// zero-volume bars (slippage at the cap) and flat bars.
pub fn stress_market(paths: usize, bars: usize, symbols: usize, seed: u64) -> MarketData {
    let s1 = symbols + 1;
    let mut r = SplitMix64::new(seed);
    let n = paths * bars * s1;
    let (mut open, mut high, mut low, mut close, mut volume) = (
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
    );
    for p in 0..paths {
        for s in 0..s1 {
            let mut c = 10.0 + 190.0 * r.uniform();
            let base_vol = 10f64.powf(3.0 + 3.0 * r.uniform());
            for t in 0..bars {
                let i = (p * bars + t) * s1 + s;
                let flat = r.chance(0.02);
                let o = if flat {
                    c
                } else {
                    c * (1.0 + 0.004 * r.normal())
                };
                let mut ret = 0.03 * r.normal();
                if r.chance(0.02) {
                    ret += if r.chance(0.5) { 0.15 } else { -0.15 };
                }
                let cl = if flat {
                    o
                } else {
                    (o * (1.0 + ret.max(-0.5))).max(0.01)
                };
                let hi = o.max(cl) * if flat { 1.0 } else { 1.0 + 0.005 * r.uniform() };
                let lo = o.min(cl) * if flat { 1.0 } else { 1.0 - 0.005 * r.uniform() };
                open[i] = o as f32;
                close[i] = cl as f32;
                high[i] = (hi as f32).max(open[i]).max(close[i]);
                low[i] = (lo as f32).min(open[i]).min(close[i]);
                volume[i] = if flat || r.chance(0.03) {
                    0.0
                } else {
                    (base_vol * (0.2 + r.uniform())) as f32
                };
                c = cl;
            }
        }
    }
    let sentiment = (0..paths * bars * symbols)
        .map(|_| (2.0 * r.uniform() - 1.0) as f32)
        .collect();
    let macro_series = (0..paths * bars * MACRO)
        .map(|i| {
            if i % 2 == 0 {
                (0.01 + 0.04 * r.uniform()) as f32
            } else {
                (12.0 + 30.0 * r.uniform()) as f32
            }
        })
        .collect();
    let md = MarketData {
        symbols: (0..symbols).map(|i| format!("S{i:03}")).collect(),
        benchmark: "SPY".into(),
        paths,
        bars,
        bars_per_day: 7,
        timestamps: (0..bars as i64).map(|t| 1_420_000_000 + 3600 * t).collect(),
        open,
        high,
        low,
        close,
        volume,
        sentiment,
        macro_series,
    };
    md.validate("stress_market")
        .expect("stress data is valid market data");
    md
}

/// An SL prior cache of pseudo-random values in [-1, 1] for `md` (the observation's SL slice).
pub fn random_priors(md: &MarketData, seed: u64) -> marl_trade::priors::PriorCache {
    let mut r = SplitMix64::new(seed);
    let n = md.paths * md.bars * md.n_symbols() * marl_trade::priors::CHANNELS;
    let v = (0..n).map(|_| (2.0 * r.uniform() - 1.0) as f32).collect();
    marl_trade::priors::PriorCache::new(md, seed, v).expect("the right length")
}

/// Random features of the right shape, `tech` `[P, S, T, N_TECH]` (the observation only copies them).
pub fn random_features(md: &MarketData, seed: u64) -> Features {
    let mut r = SplitMix64::new(seed);
    let s = md.n_symbols();
    Features {
        paths: md.paths,
        bars: md.bars,
        symbols: s,
        tech: (0..md.paths * md.bars * s * N_TECH)
            .map(|_| (2.0 * r.uniform() - 1.0) as f32)
            .collect(),
        regime: (0..md.paths * md.bars * N_REGIME)
            .map(|_| r.uniform() as f32)
            .collect(),
    }
}

/// A config that reaches every branch often: large orders, leverage, expensive borrowing, a tight
/// kill switch and small open-position limits.
pub fn stress_config(scenarios: usize, episode_len: usize) -> Config {
    let mut c = Config::default();
    c.env.scenarios = scenarios;
    c.env.episode_len = episode_len;
    c.risk.leverage_cap = 1.5;
    c.risk.kill_drawdown = 0.12;
    c.risk.buy_small = 0.05;
    c.risk.buy_medium = 0.15;
    c.risk.buy_large = 0.4;
    c.risk.add_to_winner = 0.1;
    c.risk.sell_partial = 0.5;
    c.master.risk_multipliers = vec![0.5, 1.0, 1.5, 2.0];
    c.master.position_caps = vec![0.1, 0.25, 0.5, 1.0];
    c.master.regime_max_open = vec![1, 3, 6];
    c.costs.borrow_rate_annual = 0.5;
    // The master reward's utility term on (off by default), at a risk aversion of its own.
    c.reward.master_w_utility = 50.0;
    c.reward.master_risk_aversion = 7.0;
    c.validate("stress_config").expect("valid config");
    c
}

/// A state reachable in spirit but random: positions, entries, peaks, DSR moments, negative cash,
/// mid-episode step counters and directives, all mutually consistent (equity = cash + gross at the
/// current close, open_count = positions held, entry_k <= k).
pub fn random_snapshot(
    base: &Snapshot,
    l: &EnvLayout,
    md: &MarketData,
    r: &mut SplitMix64,
) -> Snapshot {
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let c0 = l.params.initial_capital;
    let mut snap = base.clone();
    for i in 0..n {
        let st = &mut snap.scenarios[i];
        st.path = r.below(l.paths as u64) as u32;
        st.t0 = (l.start_a as u64 + r.below((l.start_b - l.start_a + 1) as u64)) as u32;
        let max_k = (l.episode_len - 1).min(l.hi - 2 - st.t0 as usize);
        st.k = r.below(max_k as u64 + 1) as u32;
        st.directive = r.below(48) as u32;
        st.episode = r.below(5) as u32;
        st.invalid_actions = r.below(10) as u32;
        st.limited_orders = r.below(10) as u32;
        let t = (st.t0 + st.k) as usize;
        let mut gross = 0.0;
        let mut open = 0u32;
        for j in 0..s {
            let x = i * s + j;
            let c = md.close[md.px(st.path as usize, t, j)] as f64;
            let sy = &mut snap.symbols;
            if r.chance(0.5) {
                sy.q[x] = (0.02 + 0.2 * r.uniform()) * c0 / c / s as f64 * 3.0;
                sy.entry[x] = c * (0.8 + 0.4 * r.uniform());
                sy.peak_px[x] = sy.entry[x].max(c) * (1.0 + 0.2 * r.uniform());
                sy.entry_k[x] = r.below(st.k as u64 + 1) as u32;
                open += 1;
            } else {
                sy.q[x] = 0.0;
                sy.entry[x] = 0.0;
                sy.peak_px[x] = 0.0;
                sy.entry_k[x] = 0;
            }
            let a = 0.002 * (2.0 * r.uniform() - 1.0);
            sy.dsr_a[x] = a;
            sy.dsr_b[x] = if r.chance(0.2) {
                a * a
            } else {
                a * a + 1e-6 * r.uniform()
            };
            gross += sy.q[x] * c;
        }
        st.cash = c0 * (r.uniform() - 0.3);
        st.gross = gross;
        st.equity = st.cash + gross;
        if st.equity < 0.3 * c0 {
            st.cash += 0.3 * c0 - st.equity;
            st.equity = st.cash + gross;
        }
        st.peak = st.equity * (1.0 + 0.05 * r.uniform());
        st.open_count = open;
        st.dsr_a = 0.001 * (2.0 * r.uniform() - 1.0);
        st.dsr_b = st.dsr_a * st.dsr_a + 1e-7 * r.uniform();
    }
    snap
}

/// What a run reached (to show the branches were exercised).
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    pub steps: usize,
    pub killed: usize,
    pub truncated_by_length: usize,
    pub truncated_by_period_end: usize,
    pub invalid_actions: u64,
    pub limited_orders: u64,
    pub episodes: usize,
}

impl Coverage {
    pub fn merge(&mut self, o: &Coverage) {
        self.steps += o.steps;
        self.killed += o.killed;
        self.truncated_by_length += o.truncated_by_length;
        self.truncated_by_period_end += o.truncated_by_period_end;
        self.invalid_actions += o.invalid_actions;
        self.limited_orders += o.limited_orders;
        self.episodes += o.episodes;
    }
}

/// A parity run: reset with `seed`, optionally jump to a random state, then `steps` steps of
/// random actions (some masked on purpose, master actions that change now and then).
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: &'static str,
    pub seed: u64,
    pub steps: usize,
    pub random_state: bool,
    /// Probability that a symbol action ignores the mask (uniform over 0..7).
    pub p_unmasked: f64,
    pub action_seed: u64,
}

fn same_f64(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}
fn same_f32(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn cmp_f64(what: &str, a: &[f64], b: &[f64]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{what}: lengths {} vs {}", a.len(), b.len()));
    }
    match a.iter().zip(b).position(|(x, y)| !same_f64(*x, *y)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}[{i}]: {:e} vs {:e} (diff {:e})",
            a[i],
            b[i],
            a[i] - b[i]
        )),
    }
}

fn cmp_f32(what: &str, a: &[f32], b: &[f32]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{what}: lengths {} vs {}", a.len(), b.len()));
    }
    match a.iter().zip(b).position(|(x, y)| !same_f32(*x, *y)) {
        None => Ok(()),
        Some(i) => Err(format!("{what}[{i}]: {:e} vs {:e}", a[i], b[i])),
    }
}

fn cmp_eq<T: PartialEq + std::fmt::Debug>(what: &str, a: &[T], b: &[T]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{what}: lengths {} vs {}", a.len(), b.len()));
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => Ok(()),
        Some(i) => Err(format!("{what}[{i}]: {:?} vs {:?}", a[i], b[i])),
    }
}

/// Every field of the state, exactly.
pub fn cmp_snapshots(a: &Snapshot, b: &Snapshot) -> Result<(), String> {
    if a.seed != b.seed {
        return Err(format!("seed {} vs {}", a.seed, b.seed));
    }
    for (i, (x, y)) in a.scenarios.iter().zip(&b.scenarios).enumerate() {
        let f = [
            ("cash", x.cash, y.cash),
            ("equity", x.equity, y.equity),
            ("peak", x.peak, y.peak),
            ("gross", x.gross, y.gross),
            ("dsr_a", x.dsr_a, y.dsr_a),
            ("dsr_b", x.dsr_b, y.dsr_b),
        ];
        for (name, u, v) in f {
            if !same_f64(u, v) {
                return Err(format!(
                    "scenario {i} {name}: {u:e} vs {v:e} (diff {:e})",
                    u - v
                ));
            }
        }
        let g = [
            ("path", x.path, y.path),
            ("t0", x.t0, y.t0),
            ("k", x.k, y.k),
            ("episode", x.episode, y.episode),
            ("directive", x.directive, y.directive),
            ("open_count", x.open_count, y.open_count),
            ("invalid_actions", x.invalid_actions, y.invalid_actions),
            ("limited_orders", x.limited_orders, y.limited_orders),
        ];
        for (name, u, v) in g {
            if u != v {
                return Err(format!("scenario {i} {name}: {u} vs {v}"));
            }
        }
    }
    let (sa, sb) = (&a.symbols, &b.symbols);
    cmp_f64("q", &sa.q, &sb.q)?;
    cmp_f64("entry", &sa.entry, &sb.entry)?;
    cmp_f64("peak_px", &sa.peak_px, &sb.peak_px)?;
    cmp_f64("dsr_a (symbol)", &sa.dsr_a, &sb.dsr_a)?;
    cmp_f64("dsr_b (symbol)", &sa.dsr_b, &sb.dsr_b)?;
    cmp_eq("entry_k", &sa.entry_k, &sb.entry_k)
}

/// Every step output, exactly.
pub fn cmp_outputs(a: &StepOutputs, b: &StepOutputs) -> Result<(), String> {
    cmp_f32("reward", &a.reward, &b.reward)?;
    cmp_f32("components", &a.components, &b.components)?;
    cmp_f32("master_reward", &a.master_reward, &b.master_reward)?;
    cmp_f32("turnover", &a.turnover, &b.turnover)?;
    cmp_eq("terminated", &a.terminated, &b.terminated)?;
    cmp_eq("truncated", &a.truncated, &b.truncated)
}

/// Episode records, exactly (the weighted component sums and squares included).
pub fn cmp_records(a: &[EpisodeRecord], b: &[EpisodeRecord]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("episode records: {} vs {}", a.len(), b.len()));
    }
    for (x, y) in a.iter().zip(b) {
        let key = |r: &EpisodeRecord| {
            (
                r.scenario,
                r.path,
                r.start,
                r.length,
                r.killed,
                r.invalid_actions,
                r.limited_orders,
                r.components.count,
            )
        };
        if key(x) != key(y) || !same_f64(x.total_return, y.total_return) {
            return Err(format!("episode record: {x:?} vs {y:?}"));
        }
        cmp_f64("record sums", &x.components.sum, &y.components.sum)?;
        cmp_f64(
            "record sums of squares",
            &x.components.sum_sq,
            &y.components.sum_sq,
        )?;
    }
    Ok(())
}

/// Observations, masks and observation indices, exactly.
pub fn cmp_views(a: &mut dyn Backend, b: &mut dyn Backend) -> Result<(), String> {
    let l = *a.layout();
    let rows = l.n_scenarios * l.n_symbols;
    let e = |x: marl_trade::Error| x.to_string();
    let (mut oa, mut ob) = (
        vec![0f32; rows * obs::OBS_DIM],
        vec![0f32; rows * obs::OBS_DIM],
    );
    a.gather_obs(&mut oa).map_err(e)?;
    b.gather_obs(&mut ob).map_err(e)?;
    cmp_f32("gather_obs", &oa, &ob)?;
    let (mut da, mut db) = (
        vec![0f32; rows * obs::DYN_OBS],
        vec![0f32; rows * obs::DYN_OBS],
    );
    a.dyn_obs(&mut da).map_err(e)?;
    b.dyn_obs(&mut db).map_err(e)?;
    cmp_f32("dyn_obs", &da, &db)?;
    let (mut ma, mut mb) = (vec![0u8; rows * N_ACTIONS], vec![0u8; rows * N_ACTIONS]);
    a.action_mask(&mut ma).map_err(e)?;
    b.action_mask(&mut mb).map_err(e)?;
    cmp_eq("action_mask", &ma, &mb)?;
    let (mut ia, mut ib) = (vec![0u32; 2 * l.n_scenarios], vec![0u32; 2 * l.n_scenarios]);
    a.obs_index(&mut ia).map_err(e)?;
    b.obs_index(&mut ib).map_err(e)?;
    cmp_eq("obs_index", &ia, &ib)
}

/// Random actions: mostly allowed by the mask (under the stored directive), some not.
pub fn random_actions(
    a: &mut dyn Backend,
    r: &mut SplitMix64,
    p_unmasked: f64,
    master: &mut [u8],
) -> (Vec<u8>, Vec<u8>) {
    let l = *a.layout();
    let (n, s) = (l.n_scenarios, l.n_symbols);
    let mut mask = vec![0u8; n * s * N_ACTIONS];
    a.action_mask(&mut mask).expect("mask");
    let mut acts = vec![0u8; n * s];
    for (i, act) in acts.iter_mut().enumerate() {
        *act = if r.chance(p_unmasked) {
            r.below(N_ACTIONS as u64) as u8
        } else {
            let allowed: Vec<u8> = (0..N_ACTIONS as u8)
                .filter(|&x| mask[i * N_ACTIONS + x as usize] != 0)
                .collect();
            // HOLD is always allowed; favour trading a little
            allowed[r.below(allowed.len() as u64) as usize]
        };
    }
    for m in master.iter_mut() {
        if r.chance(0.1) {
            *m = r.below(48) as u8;
        }
    }
    (acts, master.to_vec())
}

/// Step `a` and `b` side by side per `plan`, comparing state, outputs, episode records and every
/// view after reset and after each step. `after_step` sees both backends after each comparison.
pub fn run_parity<A: Backend, B: Backend>(
    a: &mut A,
    b: &mut B,
    md: &MarketData,
    plan: &Plan,
    mut after_step: impl FnMut(&mut A, &mut B),
) -> Result<Coverage, String> {
    let ctx = |step: usize, e: String| format!("[{}] step {step}: {e}", plan.name);
    let l = *a.layout();
    let e = |x: marl_trade::Error| x.to_string();
    a.reset(plan.seed).map_err(e)?;
    b.reset(plan.seed).map_err(e)?;
    cmp_snapshots(&a.snapshot().map_err(e)?, &b.snapshot().map_err(e)?)
        .map_err(|m| ctx(0, format!("after reset: {m}")))?;
    let mut r = SplitMix64::new(plan.action_seed);
    if plan.random_state {
        let snap = random_snapshot(&a.snapshot().map_err(e)?, &l, md, &mut r);
        a.load_snapshot(&snap).map_err(e)?;
        b.load_snapshot(&snap).map_err(e)?;
    }
    cmp_views(a, b).map_err(|m| ctx(0, m))?;
    let mut master: Vec<u8> = a
        .snapshot()
        .map_err(e)?
        .scenarios
        .iter()
        .map(|s| s.directive as u8)
        .collect();
    let mut cov = Coverage::default();
    let (mut oa, mut ob) = (
        StepOutputs::new(l.n_scenarios, l.n_symbols),
        StepOutputs::new(l.n_scenarios, l.n_symbols),
    );
    for step in 1..=plan.steps {
        let (acts, ms) = random_actions(a, &mut r, plan.p_unmasked, &mut master);
        a.step(&acts, &ms).map_err(e)?;
        b.step(&acts, &ms).map_err(e)?;
        a.read_outputs(&mut oa).map_err(e)?;
        b.read_outputs(&mut ob).map_err(e)?;
        cmp_outputs(&oa, &ob).map_err(|m| ctx(step, m))?;
        let (sa, sb) = (a.snapshot().map_err(e)?, b.snapshot().map_err(e)?);
        cmp_snapshots(&sa, &sb).map_err(|m| ctx(step, m))?;
        let (ra, rb) = (
            a.drain_episodes().map_err(e)?,
            b.drain_episodes().map_err(e)?,
        );
        cmp_records(&ra, &rb).map_err(|m| ctx(step, m))?;
        cmp_views(a, b).map_err(|m| ctx(step, m))?;
        cov.steps += 1;
        cov.killed += oa.terminated.iter().filter(|&&x| x != 0).count();
        for rec in &ra {
            cov.episodes += 1;
            if !rec.killed {
                if rec.length as usize == l.episode_len {
                    cov.truncated_by_length += 1;
                } else {
                    cov.truncated_by_period_end += 1;
                }
            }
            cov.invalid_actions += rec.invalid_actions as u64;
            cov.limited_orders += rec.limited_orders as u64;
        }
        after_step(a, b);
    }
    Ok(cov)
}

/// Data, features and layout of one parity case.
pub struct Case {
    pub plan: Plan,
    pub cfg: Config,
    pub md: Arc<MarketData>,
    pub feats: Arc<Features>,
    pub layout: EnvLayout,
}

/// The parity cases, chosen to reach every branch of spec §4 (see each comment).
pub fn cases() -> Vec<Case> {
    let mk = |plan: Plan, cfg: Config, md: MarketData, period: Period| {
        let feats = random_features(&md, plan.seed ^ 0xfeed);
        let layout = EnvLayout::new(&cfg.env_setup(), &md, period).expect("layout");
        Case {
            plan,
            cfg,
            md: Arc::new(md),
            feats: Arc::new(feats),
            layout,
        }
    };
    let plan = |name, seed, steps, random_state, p_unmasked| Plan {
        name,
        seed,
        steps,
        random_state,
        p_unmasked,
        action_seed: seed.wrapping_mul(31).wrapping_add(7),
    };
    vec![
        // leverage, budget scaling, borrow fees, kill switch, length truncation, random mid-episode states
        mk(
            plan("leveraged", 11, 300, true, 0.2),
            stress_config(8, 30),
            stress_market(2, 320, 6, 1),
            Period::Train,
        ),
        // episodes longer than the test period: truncation at the period's end (t0 + k == hi - 1)
        mk(
            plan("period_end", 12, 200, false, 0.1),
            stress_config(4, 500),
            stress_market(1, 300, 5, 2),
            Period::Test,
        ),
        // more symbols than a warp, small open limits: rotated opener ranks and limited orders
        mk(
            plan("wide", 13, 80, true, 0.3),
            stress_config(3, 25),
            stress_market(1, 260, 40, 3),
            Period::Train,
        ),
        // a single symbol
        mk(
            plan("single", 14, 120, true, 0.2),
            stress_config(3, 15),
            stress_market(2, 240, 1, 4),
            Period::Train,
        ),
        // the default config (costs, sizes, limits) on calmer stress data
        mk(
            plan("default_config", 15, 150, false, 0.05),
            {
                let mut c = Config::default();
                c.env.scenarios = 4;
                c.env.episode_len = 60;
                c
            },
            stress_market(1, 300, 12, 5),
            Period::Train,
        ),
    ]
}

/// The block-parallel widths: (S, N, episode length). S = 1, 31: one warp, mostly idle lanes;
/// 32: a full warp; 143: 5 warps, a partial last warp; 256: the largest block, one symbol per
/// thread; 300 and 1100: more symbols than threads (strided loops), the per-symbol carry in global
/// memory. Run in the threaded block emulation (tests/host_parity.rs) and on a GPU
/// (tests/cuda_parity.rs).
pub const BLOCK_WIDTHS: [(usize, usize, usize); 7] = [
    (1, 64, 12),
    (31, 16, 10),
    (32, 16, 12),
    (143, 8, 10),
    (256, 4, 10),
    (300, 4, 10),
    (1100, 2, 8),
];

/// A stress case with `s` symbols, `n` scenarios and episodes of `ep` steps, stepped over two whole
/// episodes and one more step from random mid-episode states.
pub fn width_case(s: usize, n: usize, ep: usize, seed: u64) -> Case {
    let cfg = stress_config(n, ep);
    let md = stress_market(1, 240 + 4 * ep, s, seed);
    let feats = random_features(&md, seed ^ 0xfeed);
    let layout = EnvLayout::new(&cfg.env_setup(), &md, Period::Train).expect("layout");
    Case {
        plan: Plan {
            name: "block_width",
            seed,
            steps: 2 * ep + 1,
            random_state: true,
            p_unmasked: 0.2,
            action_seed: seed.wrapping_mul(31).wrapping_add(7),
        },
        cfg,
        md: Arc::new(md),
        feats: Arc::new(feats),
        layout,
    }
}

/// The stand-in learner's weights `[7, DYN_OBS]` (normal, sd 2) for [`learner_log_probs`].
pub fn learner_weights(seed: u64) -> Vec<f32> {
    use marl_trade::env::N_ACTIONS;
    use marl_trade::env::obs::DYN_OBS;
    let mut r = SplitMix64::new(seed);
    (0..N_ACTIONS * DYN_OBS)
        .map(|_| (r.normal() * 2.0) as f32)
        .collect()
}

/// A stand-in learner: masked log-softmax of a fixed linear map of the dynamic observation (any
/// deterministic function of the observation and mask would do; on the GPU it is candle's).
pub fn learner_log_probs(dyn_obs: &[f32], mask: &[u8], w: &[f32]) -> Vec<f32> {
    use marl_trade::env::N_ACTIONS;
    use marl_trade::env::obs::DYN_OBS;
    let rows = mask.len() / N_ACTIONS;
    let mut lp = vec![f32::NEG_INFINITY; rows * N_ACTIONS];
    for r in 0..rows {
        let x = &dyn_obs[r * DYN_OBS..(r + 1) * DYN_OBS];
        let logits: Vec<f32> = (0..N_ACTIONS)
            .map(|a| {
                let wa = &w[a * DYN_OBS..(a + 1) * DYN_OBS];
                x.iter().zip(wa).map(|(u, v)| u * v).sum::<f32>()
            })
            .collect();
        let legal = |a: usize| mask[r * N_ACTIONS + a] != 0;
        let m = (0..N_ACTIONS)
            .filter(|&a| legal(a))
            .map(|a| logits[a])
            .fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = (0..N_ACTIONS)
            .filter(|&a| legal(a))
            .map(|a| (logits[a] - m).exp())
            .sum();
        for a in (0..N_ACTIONS).filter(|&a| legal(a)) {
            lp[r * N_ACTIONS + a] = logits[a] - m - z.ln();
        }
    }
    lp
}
