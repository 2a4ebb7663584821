//! `run` (training runs) as a library: a checkpoint refuses data with other symbols than it was trained on.

use marl_trade::eval::AgentPolicy;
use marl_trade::market::Market;
use marl_trade::run::{TrainOptions, train};
use marl_trade::{Config, data};

#[test]
fn a_checkpoint_refuses_data_with_other_symbols() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/small.toml")).unwrap();
    cfg.ppo.total_timesteps = cfg.ppo.num_steps as u64 * cfg.env.scenarios as u64;
    let md = data::generate(&cfg.data.synthetic, &cfg.data.benchmark);
    let market = Market::from_data(md.clone());
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        save_every: 1,
        ..TrainOptions::new(dir.path().join("run"))
    };
    let report = train(&cfg, &market, &opts).unwrap();
    assert_eq!(report.iteration, 1);
    let master = cfg.master.default_action;
    AgentPolicy::from_checkpoint("ppo", &report.checkpoint, &market, master).unwrap();

    let mut renamed = md;
    renamed.symbols.swap(0, 1);
    let other = Market::from_data(renamed);
    let err = AgentPolicy::from_checkpoint("ppo", &report.checkpoint, &other, master)
        .err()
        .expect("refused");
    assert_eq!(err.kind(), marl_trade::ErrorKind::SymbolMismatch);
    let err = err.to_string();
    assert!(err.contains("symbols.txt") && err.contains("S001"), "{err}");
}
