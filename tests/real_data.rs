//! Issue #11 on the real daily sample (`../shared/data`, `configs/daily.toml`): what the reward
//! pays a carried position on the training bars, term by term (the diagnosis of "the policy stays
//! flat on real prices"; `examples/reward_terms.rs` prints the same table).

use marl_trade::Config;
use marl_trade::market::Market;
use marl_trade::reward::{COMPONENT_NAMES, N_COMPONENTS};

mod envkit;

/// Mean weighted reward terms per symbol-step of a scripted policy on the train bars (16 scenarios
/// x 8 episodes): `carry` buys the largest size whenever allowed and never sells; otherwise HOLD.
fn terms(cfg: &Config, market: &Market, carry: bool) -> [f64; N_COMPONENTS] {
    let t = envkit::play_terms(cfg, market, 8 * cfg.env.episode_len, |_, mask| {
        if carry && mask[3] != 0 { 3 } else { 0 }
    });
    t.sum.map(|v| v / t.count)
}

fn line(label: &str, t: &[f64; N_COMPONENTS]) -> String {
    let cells: String = t.iter().map(|v| format!(" {v:>+10.2e}")).collect();
    format!("{label:>28}{cells}  total {:+.2e}\n", t.iter().sum::<f64>())
}

/// On the training bars (2000-03..2009-04, where equal-weight buy-and-hold of AAPL, IBM and MSFT
/// earned +10.8% adjusted), `configs/daily.toml` pays carrying positions more than staying flat,
/// net of every term. With the trade-drawdown threshold of hourly bars (0.1), the drawdown term
/// alone outweighs the P&L several times and flat pays more: the cause issue #11 measured.
#[test]
fn daily_config_pays_carrying_positions_on_the_train_bars() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = Config::from_file(format!("{root}/configs/daily.toml")).unwrap();
    let market = Market::load(&cfg.data).unwrap();
    assert_eq!(market.data.symbols, ["AAPL", "IBM", "MSFT"]);
    let mut report = format!(
        "{:>28}{}\n",
        "",
        COMPONENT_NAMES
            .iter()
            .map(|c| format!(" {c:>10}"))
            .collect::<String>()
    );
    let carry = terms(&cfg, &market, true);
    let flat = terms(&cfg, &market, false);
    let mut hourly = cfg.clone();
    hourly.reward.trade_dd_threshold = 0.1;
    let carry_01 = terms(&hourly, &market, true);
    let mut raw = hourly.clone();
    raw.data.adjust = marl_trade::config::AdjustPolicy::None;
    let raw_market = Market::load(&raw.data).unwrap();
    let carry_raw = terms(&raw, &raw_market, true);
    report += &line("carry, daily.toml", &carry);
    report += &line("flat, daily.toml", &flat);
    report += &line("carry, threshold 0.1", &carry_01);
    report += &line("carry, 0.1, unadjusted", &carry_raw);
    eprintln!("{report}");
    let total = |t: &[f64; N_COMPONENTS]| t.iter().sum::<f64>();
    let (pnl, dd) = (0, 4);
    assert_eq!(
        (COMPONENT_NAMES[pnl], COMPONENT_NAMES[dd]),
        ("pnl", "drawdown")
    );
    assert!(carry[pnl] > 0.0, "{report}");
    assert!(
        total(&carry) > 0.0 && total(&carry) > total(&flat),
        "{report}"
    );
    assert!(carry[dd].abs() < carry[pnl], "{report}");
    // the cause: at the hourly threshold the drawdown term outweighs the P&L and flat pays more
    assert!(carry_01[dd].abs() > 3.0 * carry_01[pnl], "{report}");
    assert!(total(&carry_01) < total(&flat), "{report}");
    // unadjusted splits make holding look worse still
    assert!(carry_raw[pnl] < carry_01[pnl], "{report}");
}
