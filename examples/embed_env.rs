//! Embedding the environment in your own training driver, without candle: a linear softmax policy
//! over each symbol's dynamic observation, trained with REINFORCE on discounted returns-to-go
//! (standardised per batch), written out by hand. It shows the vectorised API a driver needs:
//! build a [`VecEnv`] from an [`EnvSetup`], `reset`, then per step `dyn_obs` + `action_mask` in,
//! `step(actions, master)` out (rewards `[N, S]`, done flags `[N]`, same-step autoreset), and the
//! finished episodes from `drain_finished`.
//!
//! `cargo run --release --example embed_env` (8 synthetic symbols with a planted sentiment signal,
//! 16 scenarios; seconds). A demonstration of the API, not a learning claim: measured here, this
//! plain linear REINFORCE does not learn the planted signal in its 30 iterations (with the
//! design's seven reward weights the mean reward stays between -3e-4 and 0 per symbol-step, about
//! 38% of actions trade, and the episodes lose 0.3-1.7%); the library's PPO agents do
//! (`tests/learn_signal.rs`).

use std::sync::Arc;

use marl_trade::data::{self, SyntheticConfig};
use marl_trade::env::obs::DYN_OBS;
use marl_trade::env::{BackendKind, EnvSetup, N_ACTIONS, Period, VecEnv};
use marl_trade::features::Features;
use marl_trade::rng::SplitMix64;

/// Steps per batch, discount of the returns-to-go, learning rate (on standardised advantages).
const STEPS: usize = 64;
const GAMMA: f64 = 0.9;
const LR: f64 = 0.3;

fn main() -> marl_trade::Result<()> {
    // The market: the embedded generator, with sentiment that predicts the next bar's return.
    let synth = SyntheticConfig {
        symbols: 8,
        bars: 6000,
        signal_strength: 1.0,
        ..SyntheticConfig::default()
    };
    let md = Arc::new(data::generate(&synth, "SPY"));
    let features = Arc::new(Features::compute(&md));

    // The environment: its own config sections (everything else keeps the documented defaults).
    let mut setup = EnvSetup::default();
    setup.env.scenarios = 16;
    setup.env.episode_len = 128;
    setup.env.initial_capital = 100_000.0;
    // The reward keeps the design's seven weights (`[reward]` defaults, docs/env-spec.md §5).
    let mut env = VecEnv::new(&setup, md, features, Period::Train, BackendKind::Cpu)?;
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let rows = n * s;
    let master = vec![setup.master.default_action as u8; n];

    // The policy: logits[a] = w[a] . obs + b[a], shared by all symbols, HOLD-biased at the start.
    let mut w = vec![0f64; N_ACTIONS * DYN_OBS];
    let mut b = [0f64; N_ACTIONS];
    b[0] = 2.0;
    let mut rng = SplitMix64::new(7);

    // One batch: observations, actions, probabilities, rewards and dones of every step.
    let mut obs = vec![0f32; STEPS * rows * DYN_OBS];
    let mut probs = vec![0f64; STEPS * rows * N_ACTIONS];
    let mut actions = vec![0u8; STEPS * rows];
    let mut rewards = vec![0f64; STEPS * rows];
    let mut dones = vec![false; STEPS * n];
    let mut mask = vec![0u8; rows * N_ACTIONS];
    env.reset(1)?;
    for iteration in 1..=30 {
        for t in 0..STEPS {
            let o = &mut obs[t * rows * DYN_OBS..(t + 1) * rows * DYN_OBS];
            env.dyn_obs(o)?;
            env.action_mask(&mut mask)?;
            for r in 0..rows {
                let x = &o[r * DYN_OBS..(r + 1) * DYN_OBS];
                let p = &mut probs[(t * rows + r) * N_ACTIONS..(t * rows + r + 1) * N_ACTIONS];
                for a in 0..N_ACTIONS {
                    let logit = b[a]
                        + (0..DYN_OBS)
                            .map(|i| w[a * DYN_OBS + i] * x[i] as f64)
                            .sum::<f64>();
                    p[a] = if mask[r * N_ACTIONS + a] != 0 {
                        logit.exp()
                    } else {
                        0.0
                    };
                }
                let z: f64 = p.iter().sum();
                p.iter_mut().for_each(|pa| *pa /= z);
                // Inverse CDF over the legal actions (HOLD is always legal).
                let (u, mut acc) = (rng.uniform(), 0.0);
                actions[t * rows + r] = 0;
                for (a, &pa) in p.iter().enumerate() {
                    acc += pa;
                    if pa > 0.0 && u < acc {
                        actions[t * rows + r] = a as u8;
                        break;
                    }
                }
            }
            let out = env.step(&actions[t * rows..(t + 1) * rows], &master)?;
            for r in 0..rows {
                rewards[t * rows + r] = out.reward[r] as f64;
            }
            for k in 0..n {
                dones[t * n + k] = out.done(k);
            }
        }
        // Discounted returns-to-go per row (cut at episode ends), standardised over the batch.
        let mut ret = vec![0f64; STEPS * rows];
        let mut next = vec![0f64; rows];
        for t in (0..STEPS).rev() {
            for r in 0..rows {
                if dones[t * n + r / s] {
                    next[r] = 0.0;
                }
                next[r] = rewards[t * rows + r] + GAMMA * next[r];
                ret[t * rows + r] = next[r];
            }
        }
        let mean = ret.iter().sum::<f64>() / ret.len() as f64;
        let sd = (ret.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / ret.len() as f64).sqrt();
        // REINFORCE: grad log pi(a|x) = (onehot(a) - p) x, averaged over the batch.
        let (mut gw, mut gb) = (vec![0f64; w.len()], [0f64; N_ACTIONS]);
        for i in 0..STEPS * rows {
            let adv = (ret[i] - mean) / (sd + 1e-12);
            let x = &obs[i * DYN_OBS..(i + 1) * DYN_OBS];
            for a in 0..N_ACTIONS {
                let g = (f64::from(u8::from(actions[i] as usize == a)) - probs[i * N_ACTIONS + a])
                    * adv;
                gb[a] += g;
                for (j, &xj) in x.iter().enumerate() {
                    gw[a * DYN_OBS + j] += g * xj as f64;
                }
            }
        }
        let scale = LR / (STEPS * rows) as f64;
        w.iter_mut().zip(&gw).for_each(|(wi, g)| *wi += scale * g);
        b.iter_mut().zip(&gb).for_each(|(bi, g)| *bi += scale * g);

        let finished = env.drain_finished();
        let ep_ret =
            finished.iter().map(|e| e.total_return).sum::<f64>() / finished.len().max(1) as f64;
        let traded = actions.iter().filter(|&&a| a != 0).count() as f64 / actions.len() as f64;
        println!(
            "iteration {iteration:2}: mean reward {:+.2e} per symbol-step, {:4.1}% of actions trade, {:2} episodes ended (mean return {:+.3}%)",
            rewards.iter().sum::<f64>() / rewards.len() as f64,
            100.0 * traded,
            finished.len(),
            100.0 * ep_ret
        );
    }
    Ok(())
}
