//! Diagnosis of a configuration's reward on its training bars (issue #11): plays two scripted
//! policies on the train period and prints, per reward term, the mean *weighted* term per
//! symbol-step, so one sees what holding a position is paid, term by term:
//!
//! - `carry`: BUY_LARGE whenever flat or below the cap, then HOLD (carries the most exposure the
//!   limits allow, like equal-weight buy-and-hold);
//! - `flat`: always HOLD.
//!
//! It also prints the symbols' mean bar return split into overnight (`O[t+1] / C[t]`) and intraday
//! (`C[t+1] / O[t+1]`) parts over the train bars: the timing term pays a buy the intraday part.
//!
//! ```text
//! cargo run --release --example reward_terms -- configs/daily.toml [KEY=VALUE ...]
//! ```

use marl_trade::env::obs::DYN_OBS;
use marl_trade::env::{BackendKind, N_ACTIONS, Period, VecEnv};
use marl_trade::market::Market;
use marl_trade::reward::{COMPONENT_NAMES, N_COMPONENTS};
use marl_trade::{Config, Error};

fn main() -> marl_trade::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| Error::invalid("usage: reward_terms CONFIG [KEY=VALUE ...]"))?;
    let sets: Vec<String> = args.collect();
    let cfg = Config::from_file_with_overrides(&path, &sets)?;
    let market = Market::load(&cfg.data)?;
    let md = &market.data;
    let split = (md.bars as f64 * cfg.env.train_fraction).floor() as usize;
    println!(
        "{path} {}: {} symbols, {} bars, train bars 0..{split}",
        sets.join(" "),
        md.n_symbols(),
        md.bars
    );
    let (mut on, mut intra, mut cc, mut n) = (0f64, 0f64, 0f64, 0f64);
    for t in 0..split.saturating_sub(1) {
        for s in 0..md.n_symbols() {
            let (c0, o1, c1) = (
                md.close[md.px(0, t, s)] as f64,
                md.open[md.px(0, t + 1, s)] as f64,
                md.close[md.px(0, t + 1, s)] as f64,
            );
            on += o1 / c0 - 1.0;
            intra += c1 / o1 - 1.0;
            cc += c1 / c0 - 1.0;
            n += 1.0;
        }
    }
    println!(
        "train bars, mean per symbol-bar: close-to-close {:+.3e}, overnight {:+.3e}, intraday {:+.3e}",
        cc / n,
        on / n,
        intra / n
    );
    let setup = cfg.env_setup();
    let w = setup.reward.weights();
    println!(
        "{:>6} {}  {:>10}  {:>9}",
        "policy",
        COMPONENT_NAMES
            .iter()
            .map(|c| format!("{c:>10}"))
            .collect::<String>(),
        "total",
        "killed"
    );
    for carry in [true, false] {
        let mut env = VecEnv::new(
            &setup,
            market.data.clone(),
            market.features.clone(),
            Period::Train,
            BackendKind::Cpu,
        )?;
        env.reset(5)?;
        let (ns, s) = (env.n_scenarios(), env.n_symbols());
        let (mut obs, mut mask) = (vec![0f32; ns * s * DYN_OBS], vec![0u8; ns * s * N_ACTIONS]);
        let (mut acts, master) = (vec![0u8; ns * s], vec![cfg.master.default_action as u8; ns]);
        let (mut sum, mut count, mut killed, mut episodes) = ([0f64; N_COMPONENTS], 0f64, 0, 0);
        for _ in 0..8 * cfg.env.episode_len {
            env.dyn_obs(&mut obs)?;
            env.action_mask(&mut mask)?;
            for (i, a) in acts.iter_mut().enumerate() {
                let m = &mask[i * N_ACTIONS..(i + 1) * N_ACTIONS];
                *a = if carry && m[3] != 0 { 3 } else { 0 };
            }
            let out = env.step(&acts, &master)?;
            for comps in out.components.chunks_exact(N_COMPONENTS) {
                for c in 0..N_COMPONENTS {
                    sum[c] += w[c] * comps[c] as f64;
                }
                count += 1.0;
            }
            for (tr, te) in out.truncated.iter().zip(&out.terminated) {
                episodes += usize::from(*tr != 0 || *te != 0);
                killed += usize::from(*te != 0);
            }
        }
        let total: f64 = sum.iter().sum::<f64>() / count;
        println!(
            "{:>6} {}  {:>+10.2e}  {:>4}/{:<4}",
            if carry { "carry" } else { "flat" },
            sum.iter()
                .map(|v| format!("{:>+10.2e}", v / count))
                .collect::<String>(),
            total,
            killed,
            episodes
        );
    }
    Ok(())
}
