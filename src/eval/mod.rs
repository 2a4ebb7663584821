/*!
Evaluation: performance [`metrics`] of equity curves, scripted [`baselines`] behind the [`BacktestPolicy`]
trait, deterministic [`backtest`]s of a policy over the train or test period, a trained checkpoint
as a policy ([`agent::AgentPolicy`], greedy or seeded sampling), and paired comparisons of two
backtests with standard errors ([`compare`](mod@compare): is a policy better than a baseline beyond noise?), and
the evaluation of a checkpoint against all of them ([`evaluate`]), and checkpoint selection /
early stopping on a validation slice cut from the end of the train period ([`select`]), and the
portfolio master's evaluation, learned or fixed, with its directives by regime ([`master`]).

```no_run
use marl_trade::{Config, market::Market, env::Period};
use marl_trade::eval::{Baseline, BacktestOptions, format_table, run_baselines};

let cfg = Config::from_file("configs/small.toml")?;
let market = Market::load(&cfg.data)?;
let opts = BacktestOptions { period: Period::Test, ..Default::default() };
let res = run_baselines(&cfg.env_setup(), market.data, market.features, &opts, &Baseline::ALL)?;
let rows: Vec<_> = res.into_iter().map(|r| r.metrics).collect();
print!("{}", format_table(&rows));
# Ok::<(), marl_trade::Error>(())
```
*/

pub mod agent;
pub mod backtest;
pub mod baselines;
pub mod compare;
pub mod evaluate;
pub mod master;
pub mod metrics;
pub mod select;

pub use agent::{ActMode, AgentPolicy, Decision, decision_action};
pub use backtest::{
    BacktestOptions, BacktestResult, Baseline, BaselineSet, LimitCheck, backtest_setup,
    run_baselines, run_policy, run_rebalanced, run_spy,
};
pub use baselines::{
    BacktestPolicy, EqualWeight, Hold, Momentum, PolicyView, RandomPolicy, equal_weight_master,
    rebalanced_equal_weight, spy_buy_and_hold,
};
pub use compare::{Comparison, DecisionIc, compare, decision_ic};
pub use evaluate::{EvalOptions, EvalReport, evaluate_checkpoint, evaluate_policy};
pub use master::{
    MasterChoice, MasterEvalOptions, MasterEvalReport, evaluate_master_run, has_master,
};
pub use metrics::{Curve, Metrics, format_table};
pub use select::{SelectReport, ValPoint, train_selected, validation_bars};
