//! Proof that the symbol agents learn (issue #4, tests 2 and 3), with fixed seeds, at a size CI can
//! afford (about 1.3 M symbol transitions, under 3 minutes per test on 2 cores).
//!
//! The market and the agent are `configs/signal.toml` (at the design's seven reward weights,
//! issue #10, with the cost term ramped in over the first half of the run): 8 synthetic symbols whose sentiment at
//! bar t predicts the return of bar t+1 with strength `data.synthetic.signal_strength` (information
//! coefficient about 0.12 at strength 1; the same random draws at every strength). PPO trains on
//! the first 70% of the bars through `run::train` (the `marl-trade train` code path, run
//! directory and checkpoints included); the checkpoint is then played greedily by
//! `eval::evaluate_policy` (the `marl-trade eval` code path) on the held-out last 30%, after costs,
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
//! At strength 1 the decision IC is also required to be beyond noise (measured: 0.113, z 13.6),
//! and the training run's per-term episode statistics show no reward term constant and no shaping
//! term above 60% of the total share.
//!
//! A scripted rule that knows where the signal is (buy when sentiment > 0.2, sell when < 0) is run
//! as well, to show what the market allows: at strength 1 it earns +91% (Sharpe 7.9) on the held-out
//! bars (PPO: +109%, Sharpe 6.7, against +31% / 1.95 for SPY), at strength 0 it loses 2%.
//!
//! `reward_terms_share_one_scale_at_the_design_weights` measures the weighted reward terms of
//! three scripted policies on the same market (docs/env-spec.md §5 has the table).

mod envkit;

use marl_trade::env::obs::{DYN_OBS, POSITION, SENT_MACRO};
use marl_trade::env::{N_ACTIONS, Period};
use marl_trade::eval::{
    AgentPolicy, BacktestOptions, BacktestPolicy, Baseline, EvalReport, PolicyView, evaluate_policy,
};
use marl_trade::market::Market;
use marl_trade::reward::{COMPONENT_NAMES, N_COMPONENTS, RewardConfig};
use marl_trade::run::{TrainOptions, train};
use marl_trade::{Config, Result, data};

/// BUY_LARGE when flat and sentiment is high, SELL_ALL when held and sentiment turns negative.
struct SentimentRule {
    master: u8,
}

impl BacktestPolicy for SentimentRule {
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

/// The evaluation of the checkpoint, with the scripted rule as the one extra policy, and the
/// training run's per-term episode statistics.
struct Outcome(EvalReport, RunTerms);

/// Per-term episode statistics of a training run over its last `RUN_TERMS_WINDOW` iterations that
/// logged them (`metrics.jsonl`'s `reward.<term>` and `reward_share.<term>`): the mean share and
/// the range of the mean weighted term.
struct RunTerms {
    share: [f64; N_COMPONENTS],
    min: [f64; N_COMPONENTS],
    max: [f64; N_COMPONENTS],
}

const RUN_TERMS_WINDOW: usize = 40;

impl RunTerms {
    fn of(metrics: &[marl_trade::train::Metrics]) -> Self {
        let rows: Vec<_> = metrics
            .iter()
            .filter(|m| m.env.contains_key("reward.pnl"))
            .collect();
        let rows = &rows[rows.len().saturating_sub(RUN_TERMS_WINDOW)..];
        let get = |m: &marl_trade::train::Metrics, k: String| m.env[&k];
        let mut t = RunTerms {
            share: [0.0; N_COMPONENTS],
            min: [f64::INFINITY; N_COMPONENTS],
            max: [f64::NEG_INFINITY; N_COMPONENTS],
        };
        for m in rows {
            for (c, name) in COMPONENT_NAMES.iter().enumerate() {
                t.share[c] += get(m, format!("reward_share.{name}")) / rows.len() as f64;
                let v = get(m, format!("reward.{name}"));
                t.min[c] = t.min[c].min(v);
                t.max[c] = t.max[c].max(v);
            }
        }
        t
    }

    fn table(&self) -> String {
        let mut t = format!(
            "training run, last {RUN_TERMS_WINDOW} iterations: term  share  min/max mean weighted term\n"
        );
        for (c, name) in COMPONENT_NAMES.iter().enumerate() {
            t += &format!(
                "  {name:>8}  {:.3}  {:.3e} .. {:.3e}\n",
                self.share[c], self.min[c], self.max[c]
            );
        }
        t
    }
}

impl Outcome {
    fn baseline(&self, b: Baseline) -> &marl_trade::eval::BacktestResult {
        self.0.baseline(b).expect("every baseline ran")
    }

    fn rule(&self) -> &marl_trade::eval::BacktestResult {
        &self.0.others[0]
    }

    fn report(&self) -> String {
        self.0.text()
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
    assert_eq!(report.iteration, cfg.ppo.num_iterations(cfg.env.scenarios));
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
    let policy = AgentPolicy::from_checkpoint(
        "ppo",
        &report.checkpoint,
        &market,
        cfg.master.default_action,
    )
    .unwrap();
    let mut rule = SentimentRule {
        master: cfg.master.default_action as u8,
    };
    let terms = RunTerms::of(&report.metrics);
    let out = Outcome(
        evaluate_policy(&cfg.env_setup(), &market, &bt, policy, &mut [&mut rule]).unwrap(),
        terms,
    );
    eprintln!("{}\n{}", out.report(), out.1.table());
    out
}

#[test]
fn planted_signal_is_learned_and_beats_the_baselines_out_of_sample() {
    let o = train_and_evaluate(1.0);
    let report = o.report();
    let m = &o.0.policy.metrics;
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
        let c = o.0.comparison(b).unwrap();
        assert!(c.sharpe_z() > 2.0, "not beyond noise: {}", c.line());
    }
    // Its decisions carry the signal: P(long) correlates with the next bar's return.
    assert!(o.0.decision_ic.z > 2.0, "{}", o.0.decision_ic.line());
    // The market allows it: the scripted rule also beats buy-and-hold here.
    assert!(o.rule().metrics.sharpe > o.baseline(Baseline::Spy).metrics.sharpe);
    // Spec §5 at the design's weights: over the run's last iterations no reward term is constant
    // and no shaping term (any but pnl) takes more than 60% of the total absolute share.
    let t = &o.1;
    for (c, name) in COMPONENT_NAMES.iter().enumerate() {
        assert!(t.max[c] > t.min[c], "{name} is constant:\n{}", t.table());
        if *name != "pnl" {
            assert!(t.share[c] <= 0.6, "{name} dominates:\n{}", t.table());
        }
    }
}

#[test]
fn without_a_signal_it_does_not_beat_buy_and_hold_beyond_noise() {
    let o = train_and_evaluate(0.0);
    for b in [Baseline::EqualWeight, Baseline::Spy] {
        let c = o.0.comparison(b).unwrap();
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
    assert!(o.0.decision_ic.z.abs() < 2.0, "{}", o.0.decision_ic.line());
    // Nor does the scripted rule, which needs the signal.
    assert!(o.rule().metrics.sharpe < o.baseline(Baseline::Spy).metrics.sharpe);
}

/// A scripted policy of the reward-scale check, acting on one symbol's dynamic observation and mask.
#[derive(Clone, Copy, Debug)]
enum Scripted {
    /// The sentiment rule above (an active trader of the signal).
    Sentiment,
    /// BUY_LARGE when flat, then hold through whatever comes (issue #11's "carry a position").
    BuyAndHold,
    /// Uniform over the allowed actions (heavy trading).
    Random,
}

impl Scripted {
    fn act(self, obs: &[f32], mask: &[u8], u: u64) -> u8 {
        let (sent, has) = (obs[SENT_MACRO.start], obs[POSITION.start] > 0.5);
        match self {
            Scripted::Sentiment if !has && sent > 0.2 && mask[3] != 0 => 3,
            Scripted::Sentiment if has && sent < 0.0 && mask[5] != 0 => 5,
            Scripted::BuyAndHold if !has && mask[3] != 0 => 3,
            Scripted::Random => {
                let allowed: Vec<u8> = (0..N_ACTIONS as u8)
                    .filter(|&a| mask[a as usize] != 0)
                    .collect();
                allowed[(u % allowed.len() as u64) as usize]
            }
            _ => 0,
        }
    }
}

/// Per-term statistics of the *weighted* reward terms over every symbol-step of a run: mean |term|,
/// its share of `sum_c mean |term_c|`, the episode-statistics share `|sum_c| / sum_c' |sum_c'|`
/// (spec §5, what `metrics.jsonl` reports) and the standard deviation; plus mean |master reward|.
struct TermScale {
    abs: [f64; N_COMPONENTS],
    share_abs: [f64; N_COMPONENTS],
    share: [f64; N_COMPONENTS],
    std: [f64; N_COMPONENTS],
    master_abs: f64,
}

impl TermScale {
    fn table(&self, label: &str) -> String {
        let mut t = format!("{label}: term  mean|w*c|  share|.|  share(sum)  std\n");
        for (c, name) in COMPONENT_NAMES.iter().enumerate() {
            t += &format!(
                "  {name:>8}  {:>10.3e}  {:>7.3}  {:>9.3}  {:>10.3e}\n",
                self.abs[c], self.share_abs[c], self.share[c], self.std[c]
            );
        }
        t + &format!("  master reward mean |r_m| {:.3e}\n", self.master_abs)
    }
}

/// Play `policy` on the training bars of `configs/signal.toml` (16 scenarios x 1024 steps, eight
/// episodes each) and measure the weighted reward terms.
fn term_scale(policy: Scripted) -> TermScale {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = Config::from_file(format!("{root}/configs/signal.toml")).unwrap();
    let market = Market::from_data(data::generate(&cfg.data.synthetic, &cfg.data.benchmark));
    let mut rng = marl_trade::rng::SplitMix64::new(11);
    let envkit::TermSums {
        sum,
        abs,
        sq,
        master_abs,
        count,
        symbols: s,
    } = envkit::play_terms(&cfg, &market, 1024, |o, m| policy.act(o, m, rng.next_u64()));
    let total_abs: f64 = abs.iter().sum();
    let total_sum: f64 = sum.iter().map(|v| v.abs()).sum();
    TermScale {
        abs: abs.map(|a| a / count),
        share_abs: abs.map(|a| a / total_abs),
        share: sum.map(|v| v.abs() / total_sum),
        std: std::array::from_fn(|c| (sq[c] / count - (sum[c] / count).powi(2)).max(0.0).sqrt()),
        master_abs: master_abs / (count / s as f64),
    }
}

/// Spec §5: at the design's weights (which `configs/signal.toml` uses), every term of the symbol
/// reward moves (none constant) and no shaping term dominates (none above 60% of the total by
/// either share, none above the P&L term) for a policy that trades the signal; holding a position through dips is not charged
/// more by the drawdown term than the position earns or loses (issue #11: the drawdown term was
/// the largest share of a buy-and-hold policy's reward).
#[test]
fn reward_terms_share_one_scale_at_the_design_weights() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = Config::from_file(format!("{root}/configs/signal.toml")).unwrap();
    let design = RewardConfig::default();
    assert_eq!(
        cfg.reward.weights(),
        design.weights(),
        "configs/signal.toml must train at the design's weights"
    );
    let mut report = String::new();
    let scales: Vec<(Scripted, TermScale)> =
        [Scripted::Sentiment, Scripted::BuyAndHold, Scripted::Random]
            .into_iter()
            .map(|p| (p, term_scale(p)))
            .collect();
    for (p, t) in &scales {
        report += &t.table(&format!("{p:?}"));
    }
    eprintln!("{report}");
    let sentiment = &scales[0].1;
    let (pnl, dd) = (0, 4);
    assert_eq!(
        (COMPONENT_NAMES[pnl], COMPONENT_NAMES[dd]),
        ("pnl", "drawdown")
    );
    for (c, name) in COMPONENT_NAMES.iter().enumerate() {
        assert!(sentiment.std[c] > 0.0, "{name} is constant:\n{report}");
        // The objective leads: P&L (weight 10) is the largest term, and no shaping term takes
        // more than 60% by either share. (P&L itself is about 70% of the total: the other terms
        // are on its scale with smaller weights; see docs/env-spec.md §5.)
        if c != pnl {
            assert!(
                sentiment.abs[c] < sentiment.abs[pnl],
                "{name} outweighs pnl:\n{report}"
            );
            assert!(
                sentiment.share[c] <= 0.6 && sentiment.share_abs[c] <= 0.6,
                "{name} dominates:\n{report}"
            );
        }
    }
    let hold = &scales[1].1;
    assert!(
        hold.abs[dd] < hold.abs[pnl] && hold.share[dd] < hold.share[pnl],
        "holding through dips is charged more by the drawdown term than its P&L:\n{report}"
    );
}
