/*!
Evaluation: performance [`metrics`] of equity curves, scripted [`baselines`] behind the [`Policy`]
trait, deterministic [`backtest`]s of a policy over the train or test period, a trained checkpoint
as a policy ([`agent::AgentPolicy`], greedy or seeded sampling), and paired comparisons of two
backtests with standard errors ([`compare`]: is a policy better than a baseline beyond noise?).

```no_run
use std::sync::Arc;
use marl_trade::{Config, data, features::Features, env::Period};
use marl_trade::eval::{Baseline, BacktestOptions, format_table, run_baselines};

let cfg = Config::from_file("configs/small.toml").unwrap();
let md = Arc::new(data::generate(&cfg.data.synthetic, "SPY"));
let feats = Arc::new(Features::compute(&md));
let opts = BacktestOptions { period: Period::Test, ..Default::default() };
let res = run_baselines(&cfg, md, feats, &opts, &Baseline::ALL).unwrap();
let rows: Vec<_> = res.into_iter().map(|r| r.metrics).collect();
print!("{}", format_table(&rows));
```
*/

pub mod agent;
pub mod backtest;
pub mod baselines;
pub mod compare;
pub mod metrics;

pub use agent::{ActMode, AgentPolicy, Decision};
pub use backtest::{
    BacktestOptions, BacktestResult, Baseline, backtest_config, run_baselines, run_policy, run_spy,
};
pub use baselines::{
    EqualWeight, Hold, Policy, PolicyView, RandomPolicy, equal_weight_master, spy_buy_and_hold,
};
pub use compare::{Comparison, DecisionIc, compare, decision_ic};
pub use metrics::{Curve, Metrics, format_table};
