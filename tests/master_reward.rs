//! The master reward (docs/env-spec.md §5) computed by hand, each of its three terms alone: with
//! the master weights set to one term at a time, the env's `master_reward` of every step must equal
//! that term computed here from the state before and after the step and the prices:
//! - sharpe: the differential Sharpe ratio of `r_p = E1 / E0 - 1` with the moments `A_p, B_p` before
//!   the step and the floor `(util_target * bar_vol)^2`;
//! - divers: `1 / (S * sum_s (v1 / G)^2)`, 0 when flat;
//! - excess: `r_p - (C[t', S] / C[t, S] - 1)`.
//!
//! The steps go from flat (divers 0, sharpe 0 at zero moments) through buying to holding and
//! selling, so sharpe and divers are exercised at zero and non-zero values, excess at non-zero ones.

mod envkit;

use marl_trade::env::BackendKind;
use marl_trade::env::Period;

fn hand_terms(
    md: &marl_trade::data::MarketData,
    before: &marl_trade::env::Snapshot,
    after: &marl_trade::env::Snapshot,
    clip: f64,
    floor: f64,
) -> [f64; 3] {
    let (b, a) = (&before.scenarios[0], &after.scenarios[0]);
    let s = md.n_symbols();
    let rp = a.equity / b.equity - 1.0;
    // Differential Sharpe ratio with the moments before the step.
    let (ma, mb) = (b.dsr_a, b.dsr_b);
    let var = (mb - ma * ma) + floor;
    let sd = var.sqrt();
    let d = ((mb * (rp - ma) - 0.5 * ma * (rp * rp - mb)) / (var * sd)).clamp(-clip, clip) * sd;
    // Effective number of positions over S, at the new close.
    let (p, t1) = (a.path as usize, (a.t0 + a.k) as usize);
    let v: Vec<f64> = (0..s)
        .map(|j| after.symbols.q[j] * md.close[md.px(p, t1, j)] as f64)
        .collect();
    let g: f64 = v.iter().sum();
    let divers = if g > 0.0 {
        1.0 / (s as f64 * v.iter().map(|x| (x / g).powi(2)).sum::<f64>())
    } else {
        0.0
    };
    let bench = md.close[md.px(p, t1, s)] as f64 / md.close[md.px(p, t1 - 1, s)] as f64 - 1.0;
    [d, divers, rp - bench]
}

#[test]
fn master_reward_terms_by_hand() {
    let mut seen = [[false; 2]; 3]; // per term: a zero value, a non-zero value
    for (term, seen_t) in seen.iter_mut().enumerate() {
        let mut cfg = envkit::small_config(1, 12);
        let w = &mut cfg.reward;
        (w.master_w_sharpe, w.master_w_divers, w.master_w_excess) = (0.0, 0.0, 0.0);
        match term {
            0 => w.master_w_sharpe = 1.0,
            1 => w.master_w_divers = 1.0,
            _ => w.master_w_excess = 1.0,
        }
        let md = envkit::toy_market(3, 400, 1, 21);
        let mut env = envkit::env_on(&cfg, md, Period::Train, BackendKind::Cpu);
        env.reset(4).unwrap();
        let md = env.data().clone();
        let bar_vol = cfg.reward.ref_vol / md.bars_per_year().sqrt();
        let floor = (cfg.reward.util_target * bar_vol).powi(2);
        // flat, buy (3 symbols, then 1 more), hold, hold, sell one, hold
        let plan: [[u8; 3]; 7] = [
            [0, 0, 0],
            [3, 2, 0],
            [0, 0, 1],
            [0, 0, 0],
            [0, 0, 0],
            [5, 0, 0],
            [0, 0, 0],
        ];
        let m = [cfg.master.default_action as u8];
        for (k, a) in plan.iter().enumerate() {
            let before = env.snapshot().unwrap();
            let r = env.step(a, &m).unwrap().master_reward[0];
            let after = env.snapshot().unwrap();
            let want = hand_terms(&md, &before, &after, cfg.reward.dsr_clip, floor)[term];
            let tol = 1e-6 * want.abs().max(1e-9);
            assert!(
                (r as f64 - want).abs() <= tol.max(f32::EPSILON as f64 * want.abs()),
                "term {term} step {k}: env {r:e}, by hand {want:e}"
            );
            seen_t[usize::from(want != 0.0)] = true;
        }
    }
    // sharpe is 0 at zero moments and divers 0 when flat; excess is never exactly 0 here (the
    // benchmark moves every bar).
    assert_eq!(
        seen,
        [[true, true], [true, true], [false, true]],
        "sharpe and divers zero and non-zero, excess non-zero"
    );
}
