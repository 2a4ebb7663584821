//! Embedding the environment in your own training driver, without candle: a linear softmax policy
//! over each symbol's dynamic observation, trained with REINFORCE (one-step returns, a running mean
//! baseline), written out by hand. It shows the vectorised API a driver needs: build a
//! [`VecEnv`] from an [`EnvSetup`], `reset`, then per step `dyn_obs` + `action_mask` in,
//! `step(actions, master)` out (rewards `[N, S]`, done flags `[N]`, same-step autoreset).
//!
//! `cargo run --release --example embed_env` (8 synthetic symbols with a planted sentiment signal,
//! 16 scenarios; a few seconds).

use std::sync::Arc;

use marl_trade::data::{self, SyntheticConfig};
use marl_trade::env::obs::DYN_OBS;
use marl_trade::env::{BackendKind, EnvSetup, N_ACTIONS, Period, VecEnv};
use marl_trade::features::Features;
use marl_trade::rng::SplitMix64;

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
    let mut env = VecEnv::new(&setup, md, features, Period::Train, BackendKind::Cpu)?;
    let (n, s) = (env.n_scenarios(), env.n_symbols());
    let master = vec![setup.master.default_action as u8; n];

    // The policy: logits[a] = w[a] . obs + b[a], shared by all symbols.
    let mut w = vec![0f64; N_ACTIONS * DYN_OBS];
    let mut b = [0f64; N_ACTIONS];
    b[0] = 2.0; // a HOLD prior, as the library's agents use
    let (lr, mut baseline) = (0.05, 0.0f64);
    let mut rng = SplitMix64::new(7);

    let mut obs = vec![0f32; n * s * DYN_OBS];
    let mut mask = vec![0u8; n * s * N_ACTIONS];
    let mut actions = vec![0u8; n * s];
    let mut probs = vec![0f64; n * s * N_ACTIONS];
    env.reset(1)?;
    for iteration in 1..=20 {
        let (mut reward_sum, mut count) = (0.0, 0usize);
        for _ in 0..64 {
            env.dyn_obs(&mut obs)?;
            env.action_mask(&mut mask)?;
            // Sample a legal action per (scenario, symbol) row.
            for r in 0..n * s {
                let x = &obs[r * DYN_OBS..(r + 1) * DYN_OBS];
                let p = &mut probs[r * N_ACTIONS..(r + 1) * N_ACTIONS];
                let mut z = 0.0;
                for a in 0..N_ACTIONS {
                    let legal = mask[r * N_ACTIONS + a] != 0;
                    let logit: f64 = b[a]
                        + (0..DYN_OBS)
                            .map(|i| w[a * DYN_OBS + i] * x[i] as f64)
                            .sum::<f64>();
                    p[a] = if legal { logit.exp() } else { 0.0 };
                    z += p[a];
                }
                p.iter_mut().for_each(|pa| *pa /= z);
                // Inverse CDF over the legal actions (HOLD is always legal).
                let u = rng.uniform();
                let (mut acc, mut pick) = (0.0, 0);
                for (a, &pa) in p.iter().enumerate() {
                    acc += pa;
                    if pa > 0.0 && u < acc {
                        pick = a;
                        break;
                    }
                }
                actions[r] = pick as u8;
            }
            let out = env.step(&actions, &master)?;
            // REINFORCE on the one-step reward: grad log pi(a|x) = (onehot(a) - p) x.
            for r in 0..n * s {
                let adv = out.reward[r] as f64 - baseline;
                reward_sum += out.reward[r] as f64;
                count += 1;
                let x = &obs[r * DYN_OBS..(r + 1) * DYN_OBS];
                for a in 0..N_ACTIONS {
                    let g = (f64::from(u8::from(actions[r] as usize == a))
                        - probs[r * N_ACTIONS + a])
                        * adv;
                    b[a] += lr * g;
                    for i in 0..DYN_OBS {
                        w[a * DYN_OBS + i] += lr * g * x[i] as f64;
                    }
                }
            }
            let mean = out.reward.iter().map(|&v| v as f64).sum::<f64>() / (n * s) as f64;
            baseline = 0.9 * baseline + 0.1 * mean;
        }
        let finished = env.drain_finished();
        let ret =
            finished.iter().map(|e| e.total_return).sum::<f64>() / finished.len().max(1) as f64;
        println!(
            "iteration {iteration:2}: mean reward per symbol-step {:+.5}, {} episodes ended, mean episode return {:+.3}%",
            reward_sum / count as f64,
            finished.len(),
            100.0 * ret
        );
    }
    Ok(())
}
