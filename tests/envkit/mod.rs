//! Shared helpers of the integration tests: small markets built by hand (independent of the
//! synthetic generator, so env tests pin the env alone) and env constructors.
#![allow(dead_code)]

use std::sync::Arc;

use marl_trade::config::Config;
use marl_trade::data::{MACRO, MarketData};
use marl_trade::env::N_ACTIONS;
use marl_trade::env::obs::DYN_OBS;
use marl_trade::env::{BackendKind, Period, VecEnv};
use marl_trade::features::Features;
use marl_trade::market::Market;
use marl_trade::reward::N_COMPONENTS;
use marl_trade::rng::SplitMix64;

/// A random-walk market: S symbols + benchmark, T bars, P paths, valid OHLCV.
pub fn toy_market(s: usize, t: usize, p: usize, seed: u64) -> MarketData {
    let mut r = SplitMix64::new(seed);
    let s1 = s + 1;
    let n = p * t * s1;
    let (mut open, mut high, mut low, mut close, mut volume) = (
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
    );
    for pi in 0..p {
        for si in 0..s1 {
            let mut c = 20.0 + 80.0 * r.uniform();
            for ti in 0..t {
                let o = c * (1.0 + 0.002 * r.normal());
                c = o * (1.0 + 0.01 * r.normal());
                let i = (pi * t + ti) * s1 + si;
                open[i] = o as f32;
                close[i] = c as f32;
                let (o32, c32) = (open[i], close[i]);
                high[i] = o32.max(c32) * (1.0 + 0.003 * r.uniform() as f32);
                low[i] = o32.min(c32) * (1.0 - 0.003 * r.uniform() as f32);
                volume[i] = (1e5 * (0.5 + r.uniform())) as f32;
            }
        }
    }
    let sentiment = (0..p * t * s)
        .map(|_| (r.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let macro_series = (0..p * t * MACRO)
        .map(|i| if i % 2 == 0 { 0.03 } else { 18.0 })
        .collect();
    MarketData {
        symbols: (0..s).map(|i| format!("T{i:02}")).collect(),
        benchmark: "SPY".into(),
        paths: p,
        bars: t,
        bars_per_day: 7,
        timestamps: (0..t as i64).map(|i| 1_600_000_000 + 3600 * i).collect(),
        open,
        high,
        low,
        close,
        volume,
        sentiment,
        macro_series,
    }
}

/// A small config: `n` scenarios, episode length `len`.
pub fn small_config(n: usize, len: usize) -> Config {
    let mut cfg = Config::default();
    cfg.env.scenarios = n;
    cfg.env.episode_len = len;
    cfg.env.train_fraction = 0.9;
    cfg
}

pub fn env_on(cfg: &Config, md: MarketData, period: Period, kind: BackendKind) -> VecEnv {
    let md = Arc::new(md);
    let f = Arc::new(Features::compute(&md));
    VecEnv::new(&cfg.env_setup(), md, f, period, kind).expect("env builds")
}

/// Uniform random actions (masked ones included: the env must execute them as HOLD).
pub fn random_actions(r: &mut SplitMix64, n: usize, s: usize) -> (Vec<u8>, Vec<u8>) {
    let a = (0..n * s).map(|_| r.below(7) as u8).collect();
    let m = (0..n).map(|_| r.below(48) as u8).collect();
    (a, m)
}

/// Actions drawn among the allowed ones of a mask, biased to trade.
pub fn masked_actions(r: &mut SplitMix64, mask: &[u8]) -> Vec<u8> {
    mask.chunks_exact(7)
        .map(|m| {
            let allowed: Vec<u8> = (0..7u8).filter(|&a| m[a as usize] == 1).collect();
            allowed[r.below(allowed.len() as u64) as usize]
        })
        .collect()
}

/// The weighted reward terms a scripted policy collects (sums over symbol-steps).
pub struct TermSums {
    /// Sum of each weighted term.
    pub sum: [f64; N_COMPONENTS],
    /// Sum of each weighted term's absolute value.
    pub abs: [f64; N_COMPONENTS],
    /// Sum of each weighted term's square.
    pub sq: [f64; N_COMPONENTS],
    /// Sum of the master reward's absolute value over scenario-steps.
    pub master_abs: f64,
    /// Symbol-steps counted.
    pub count: f64,
    /// Symbols S.
    pub symbols: usize,
}

/// Play `steps` steps of `cfg`'s environment (CPU backend, reset seed 5, the master at
/// `master.default_action`) on `market`'s train bars, each symbol acting
/// `act(its dynamic observation, its mask)`, and sum the weighted reward terms (the weights of
/// `cfg`'s `[reward]`).
pub fn play_terms(
    cfg: &Config,
    market: &Market,
    steps: usize,
    mut act: impl FnMut(&[f32], &[u8]) -> u8,
) -> TermSums {
    let setup = cfg.env_setup();
    let w = setup.reward.weights();
    let mut env = VecEnv::new(
        &setup,
        market.data.clone(),
        market.features.clone(),
        Period::Train,
        BackendKind::Cpu,
    )
    .unwrap();
    env.reset(5).unwrap();
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let (mut obs, mut mask) = (vec![0f32; n * s * DYN_OBS], vec![0u8; n * s * N_ACTIONS]);
    let (mut acts, master) = (vec![0u8; n * s], vec![cfg.master.default_action as u8; n]);
    let mut t = TermSums {
        sum: [0.0; N_COMPONENTS],
        abs: [0.0; N_COMPONENTS],
        sq: [0.0; N_COMPONENTS],
        master_abs: 0.0,
        count: 0.0,
        symbols: s,
    };
    for _ in 0..steps {
        env.dyn_obs(&mut obs).unwrap();
        env.action_mask(&mut mask).unwrap();
        for (i, a) in acts.iter_mut().enumerate() {
            *a = act(
                &obs[i * DYN_OBS..(i + 1) * DYN_OBS],
                &mask[i * N_ACTIONS..(i + 1) * N_ACTIONS],
            );
        }
        let out = env.step(&acts, &master).unwrap();
        for comps in out.components.chunks_exact(N_COMPONENTS) {
            for c in 0..N_COMPONENTS {
                let v = w[c] * comps[c] as f64;
                t.sum[c] += v;
                t.abs[c] += v.abs();
                t.sq[c] += v * v;
            }
            t.count += 1.0;
        }
        t.master_abs += out
            .master_reward
            .iter()
            .map(|r| r.abs() as f64)
            .sum::<f64>();
    }
    t
}
