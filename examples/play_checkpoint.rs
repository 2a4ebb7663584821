//! Playing a trained checkpoint from your own code: load the run's configuration and market, turn
//! the checkpoint into a backtest policy ([`AgentPolicy`]), play it on the held-out bars and print
//! its metrics next to equal-weight buy-and-hold, with the paired Sharpe difference.
//!
//! ```text
//! cargo run --release -- train --config configs/small.toml --out runs/small --iterations 2
//! cargo run --release --example play_checkpoint -- runs/small
//! ```
//! (`marl-trade eval` does the same with every baseline, through `eval::evaluate_checkpoint`.)

use marl_trade::eval::{
    AgentPolicy, BacktestOptions, Baseline, compare, format_table, run_baselines, run_policy,
};
use marl_trade::market::Market;
use marl_trade::{Config, Error, run};

fn main() -> marl_trade::Result<()> {
    let arg = std::env::args()
        .nth(1)
        .ok_or_else(|| Error::invalid("usage: play_checkpoint RUN_OR_CHECKPOINT_DIR"))?;
    let dir = run::resolve_checkpoint(arg.as_ref())?;
    let cfg = Config::from_file(dir.join(run::CONFIG_FILE))?;
    let market = Market::load(&cfg.data)?;
    let mut policy = AgentPolicy::from_checkpoint("ppo", &dir, &market, cfg.master.default_action)?;
    let setup = cfg.env_setup();
    let opts = BacktestOptions::default(); // the test period, CPU backend
    let mine = run_policy(
        &setup,
        market.data.clone(),
        market.features.clone(),
        &opts,
        &mut policy,
    )?;
    let ew = run_baselines(
        &setup,
        market.data.clone(),
        market.features.clone(),
        &opts,
        &[Baseline::EqualWeight],
    )?;
    print!(
        "{}",
        format_table(&[mine.metrics.clone(), ew[0].metrics.clone()])
    );
    println!("{}", compare(&mine, &ew[0])?.line());
    Ok(())
}
