/*!
The validation suite: does a trained policy survive the tests a strategy is held to before it is
trusted?

- [`walkforward`]: train on a window, test on the next block after an embargo, move forward;
  stitched out-of-sample curves per seed next to the baselines (hold, equal-weight buy-and-hold,
  1/N rebalanced, SPY, momentum), paired Sharpe-difference tests, mean ± sd over seeds, the
  deflated Sharpe ratio; resumable fold by fold (`marl-trade walkforward`).
- [`stress`]: replay a checkpoint's test period under named scenarios (costs x2 / x5, a
  liquidity shock, overnight gaps, an injected crisis, fills one bar late, stale bars): how each
  metric degrades, and whether the env's risk limits and kill switch held (`marl-trade stress`).
- [`report`]: the go/no-go report of a run or a walk-forward: `report.md`, `report.json` and PNG
  plots ([`plot`]), each criterion of the design GO, NO-GO or NOT EVALUABLE with its reason
  (`marl-trade report`).

Layer: above [`crate::ablate`] (it trains with [`crate::run`], evaluates with [`crate::eval`] and
shares the ablation's statistics and plan check).
*/

pub mod plot;
pub mod report;
pub mod stress;
pub mod walkforward;

pub use report::{Criterion, Report, Verdict, build_report, write_report};
pub use stress::{Scenario, StressOptions, StressReport, stress_checkpoint, stress_policy};
pub use walkforward::{
    Fold, WalkForwardOptions, WalkForwardReport, WalkForwardSpec, fold_layout, load_report, stitch,
    walk_forward,
};
