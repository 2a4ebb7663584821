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

/// Joint training's settings on top of `configs/signal.toml` (the README's joint command): the
/// master learns with the symbol agents from the second half of the run on, deciding every 8 bars
/// (a rollout of 64 steps is 8 decisions per scenario), both sides updating after every rollout.
const JOINT: [&str; 2] = ["joint.enabled=true", "master_ppo.decision_interval=8"];

fn train_and_evaluate(strength: f64) -> Outcome {
    train_and_evaluate_with(strength, &[])
}

fn train_and_evaluate_with(strength: f64, overrides: &[&str]) -> Outcome {
    let root = env!("CARGO_MANIFEST_DIR");
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let mut cfg =
        Config::from_file_with_overrides(format!("{root}/configs/signal.toml"), &overrides)
            .unwrap();
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
    // A joint checkpoint plays with its learned master.
    let policy = AgentPolicy::from_checkpoint(
        "ppo",
        &report.checkpoint,
        &market,
        cfg.master.default_action,
    )
    .unwrap();
    assert_eq!(policy.plays_learned_master(), cfg.joint.enabled);
    if cfg.joint.enabled {
        check_master_learned(&cfg, &report.metrics);
    }
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

/// The master of a joint run updated after every rollout from its start on, with finite losses,
/// and learned: its critic explains part of the return's variance over its last 20 updates and its
/// directive distribution sharpened (entropy down by more than 0.1 nats from its first update).
/// Criteria fixed before the first joint run.
fn check_master_learned(cfg: &Config, metrics: &[marl_trade::train::Metrics]) {
    let total = cfg.ppo.num_iterations(cfg.env.scenarios);
    let start = cfg.joint.master_start(total);
    let get = |m: &marl_trade::train::Metrics, k: &str| m.env.get(&format!("master.{k}")).copied();
    let updates: Vec<_> = metrics
        .iter()
        .filter(|m| get(m, "learns") == Some(1.0))
        .collect();
    assert_eq!(updates.len(), total + 1 - start, "master updates");
    assert_eq!(updates[0].iteration, start);
    for m in &updates {
        for k in ["policy_loss", "value_loss", "entropy", "grad_norm"] {
            let v = get(m, k).unwrap_or(f64::NAN);
            assert!(
                v.is_finite(),
                "master.{k} = {v} at iteration {}",
                m.iteration
            );
        }
    }
    let last20 = &updates[updates.len() - 20..];
    let ev = last20
        .iter()
        .map(|m| get(m, "explained_variance").unwrap_or(0.0))
        .sum::<f64>()
        / 20.0;
    let (h0, h1) = (
        get(updates[0], "entropy").unwrap(),
        get(updates[updates.len() - 1], "entropy").unwrap(),
    );
    let cap = |m: &marl_trade::train::Metrics| get(m, "cap_mean").unwrap();
    eprintln!(
        "master: {} updates from iteration {start}; entropy {h0:.3} -> {h1:.3}; mean explained \
         variance of the last 20 {ev:.3}; mean cap {:.3} -> {:.3}",
        updates.len(),
        cap(updates[0]),
        cap(updates[updates.len() - 1])
    );
    assert!(ev > 0.0, "the master's critic explains nothing: {ev:.3}");
    assert!(
        h1 < h0 - 0.1,
        "the master's policy did not move: entropy {h0:.3} -> {h1:.3}"
    );
}

/// The planted-signal assertions (module doc) on an evaluation.
fn assert_signal_learned(o: &Outcome) {
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
fn planted_signal_is_learned_and_beats_the_baselines_out_of_sample() {
    assert_signal_learned(&train_and_evaluate(1.0));
}

/// Issue #12: joint training (the master learning with the symbol agents in the same rollout,
/// `train::joint`) keeps the symbol agents' learning result, played with the learned master.
#[test]
fn joint_training_keeps_the_signal_learned_while_the_master_learns() {
    assert_signal_learned(&train_and_evaluate_with(1.0, &JOINT));
}

/// The null control of joint training: no skill claimed without the signal, and no leak.
#[test]
fn joint_training_without_a_signal_claims_no_skill() {
    assert_no_skill(&train_and_evaluate_with(0.0, &JOINT));
}

#[test]
fn without_a_signal_it_does_not_beat_buy_and_hold_beyond_noise() {
    assert_no_skill(&train_and_evaluate(0.0));
}

/// The strength-0 assertions (module doc) on an evaluation.
fn assert_no_skill(o: &Outcome) {
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
