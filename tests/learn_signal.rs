//! Proof that the symbol agents learn (issue #4, tests 2 and 3), with fixed seeds, at a size CI can
//! afford (about 1.3 M symbol transitions, under 3 minutes per test on 2 cores).
//!
//! The market and the agent are `configs/signal.toml`: 8 synthetic symbols whose sentiment at
//! bar t predicts the return of bar t+1 with strength `data.synthetic.signal_strength` (information
//! coefficient about 0.12 at strength 1; the same random draws at every strength). PPO trains on
//! the first 70% of the bars through `train::run::train` (the `marl-trade train` code path, run
//! directory and checkpoints included); the checkpoint is then played greedily by
//! `eval::AgentPolicy` (the `marl-trade eval` code path) on the held-out last 30%, after costs,
//! next to the baselines.
//!
//! "Beyond noise" is a paired comparison (`eval::compare`, Memmel's standard error of a Sharpe
//! difference over the 1799 held-out bars): `z > 2`.
//!
//! - strength 1: the policy beats hold, random, equal-weight buy-and-hold and SPY buy-and-hold in
//!   total return and Sharpe, and beats both buy-and-holds' Sharpe beyond noise;
//! - strength 0: it does not beat either buy-and-hold beyond noise, in Sharpe or in return, and its
//!   decisions carry no information about the next bar (`eval::decision_ic`: the correlation of
//!   P(long after the step) with the next return over all 14k held-out symbol-bars, |z| < 2). This
//!   is the guard against look-ahead: an observation that leaked bar t+1 would be exploitable even
//!   here, because sentiment reacts to the bar's own return. A mutation that read sentiment at
//!   t+1 gave decision-IC z = 6.3 (caught) while the P&L comparison stayed within noise.
//!
//! At strength 1 the decision IC is also required to be beyond noise (measured: 0.114, z 13.6).
//!
//! A scripted rule that knows where the signal is (buy when sentiment > 0.2, sell when < 0) is run
//! as well, to show what the market allows: at strength 1 it earns +91% (Sharpe 7.9) on the held-out
//! bars (PPO: +97%, Sharpe 7.7, against +31% / 1.95 for SPY), at strength 0 it loses 2%.

use std::sync::Arc;

use marl_trade::env::obs::{DYN_OBS, POSITION, SENT_MACRO};
use marl_trade::env::{N_ACTIONS, Period};
use marl_trade::eval::{
    AgentPolicy, BacktestOptions, BacktestResult, Baseline, DecisionIc, Policy, PolicyView,
    compare, decision_ic, format_table, run_baselines, run_policy,
};
use marl_trade::train::run::{Market, TrainOptions, train};
use marl_trade::{Config, Result, data};

/// BUY_LARGE when flat and sentiment is high, SELL_ALL when held and sentiment turns negative.
struct SentimentRule {
    master: u8,
}

impl Policy for SentimentRule {
    fn name(&self) -> &str {
        "sentiment-rule"
    }

    fn act(&mut self, view: &PolicyView, sym: &mut [u8], master: &mut [u8]) -> Result<()> {
        for (i, a) in sym.iter_mut().enumerate() {
            let obs = &view.dyn_obs[i * DYN_OBS..(i + 1) * DYN_OBS];
            let mask = &view.mask[i * N_ACTIONS..(i + 1) * N_ACTIONS];
            let (sent, has) = (obs[SENT_MACRO.start], obs[POSITION.start] > 0.5);
            *a = if !has && sent > 0.2 && mask[3] != 0 {
                3
            } else if has && sent < 0.0 && mask[5] != 0 {
                5
            } else {
                0
            };
        }
        master.fill(self.master);
        Ok(())
    }
}

struct Outcome {
    agent: BacktestResult,
    /// The information in the policy's decisions on the held-out bars.
    ic: DecisionIc,
    rule: BacktestResult,
    baselines: Vec<BacktestResult>,
}

impl Outcome {
    fn baseline(&self, b: Baseline) -> &BacktestResult {
        self.baselines
            .iter()
            .find(|r| r.metrics.policy == b.name())
            .expect("every baseline ran")
    }

    fn report(&self) -> String {
        let mut rows = vec![self.agent.metrics.clone(), self.rule.metrics.clone()];
        rows.extend(self.baselines.iter().map(|r| r.metrics.clone()));
        let mut out = format_table(&rows);
        for b in &self.baselines {
            out.push_str(&compare(&self.agent, b).unwrap().line());
            out.push('\n');
        }
        out.push_str(&self.ic.line());
        out
    }
}

fn train_and_evaluate(strength: f64) -> Outcome {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::from_file(format!("{root}/configs/signal.toml")).unwrap();
    cfg.data.synthetic.signal_strength = strength;
    let market = Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark));
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        save_every: 50,
        ..TrainOptions::new(dir.path().join("run"))
    };
    let report = train(&cfg, &market, &opts).unwrap();
    assert_eq!(report.iteration, cfg.ppo_for_env().num_iterations());
    let last = report.metrics.last().unwrap();
    eprintln!(
        "strength {strength}: {} iterations, {:.0} symbol transitions/s, last entropy {:.3}",
        report.iteration,
        report.symbol_sps(),
        last.entropy
    );

    let bt = BacktestOptions {
        period: Period::Test,
        ..BacktestOptions::default()
    };
    let (md, feats) = (market.data.clone(), market.features.clone());
    let mut policy = AgentPolicy::from_checkpoint(
        "ppo",
        &report.checkpoint,
        &market,
        cfg.master.default_action,
    )
    .unwrap()
    .with_trace();
    let agent = run_policy(&cfg, md.clone(), feats.clone(), &bt, &mut policy).unwrap();
    let ic = decision_ic(&policy.take_trace(), &md);
    let mut rule = SentimentRule {
        master: cfg.master.default_action as u8,
    };
    let rule = run_policy(&cfg, md.clone(), feats.clone(), &bt, &mut rule).unwrap();
    let baselines = run_baselines(&cfg, Arc::clone(&md), feats, &bt, &Baseline::ALL).unwrap();
    let out = Outcome {
        agent,
        ic,
        rule,
        baselines,
    };
    eprintln!("{}", out.report());
    out
}

#[test]
fn planted_signal_is_learned_and_beats_the_baselines_out_of_sample() {
    let o = train_and_evaluate(1.0);
    let report = o.report();
    let m = &o.agent.metrics;
    assert!(m.turnover > 0.0, "the policy never trades:\n{report}");
    for b in Baseline::ALL {
        let bm = &o.baseline(b).metrics;
        assert!(
            m.total_return > bm.total_return && m.sharpe > bm.sharpe,
            "ppo does not beat {} in return and Sharpe:\n{report}",
            b.name()
        );
    }
    for b in [Baseline::EqualWeight, Baseline::Spy] {
        let c = compare(&o.agent, o.baseline(b)).unwrap();
        assert!(c.sharpe_z() > 2.0, "not beyond noise: {}", c.line());
    }
    // Its decisions carry the signal: P(long) correlates with the next bar's return.
    assert!(o.ic.z > 2.0, "{}", o.ic.line());
    // The market allows it: the scripted rule also beats buy-and-hold here.
    assert!(o.rule.metrics.sharpe > o.baseline(Baseline::Spy).metrics.sharpe);
}

#[test]
fn without_a_signal_it_does_not_beat_buy_and_hold_beyond_noise() {
    let o = train_and_evaluate(0.0);
    for b in [Baseline::EqualWeight, Baseline::Spy] {
        let c = compare(&o.agent, o.baseline(b)).unwrap();
        assert!(
            c.sharpe_z() < 2.0 && c.return_z() < 2.0,
            "beats {} beyond noise without a signal (leakage?): {}\n{}",
            b.name(),
            c.line(),
            o.report()
        );
    }
    // Its decisions carry no information about the next bar (a leak of bar t+1's sentiment into
    // the observation, tried as a mutation, gave z = 6.3 here while the P&L checks above passed).
    assert!(o.ic.z.abs() < 2.0, "{}", o.ic.line());
    // Nor does the scripted rule, which needs the signal.
    assert!(o.rule.metrics.sharpe < o.baseline(Baseline::Spy).metrics.sharpe);
}
