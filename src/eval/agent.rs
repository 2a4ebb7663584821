/*!
A trained symbol policy as a backtest [`BacktestPolicy`], with the config's `master.default_action` for every
scenario (the directive the symbol agents were trained under), or with the learned master of a joint
training's checkpoint ([`AgentPolicy::with_learned_master`]). Three modes, all reproducible:

- [`ActMode::Greedy`] (the default): the most probable legal action per symbol (ties go to the lower
  action index);
- [`ActMode::Decision`]: greedy over the *decision* first, then over its size: the actions are
  grouped into hold (HOLD), increase (BUY_SMALL / MEDIUM / LARGE, ADD_TO_WINNER) and decrease
  (SELL_PARTIAL, SELL_ALL); the group with the largest legal probability mass wins (ties: hold,
  then increase), and within it the most probable action. Plain argmax splits "buy" over three
  sizes, so a policy that buys with probability 0.6 split 0.2 / 0.2 / 0.2 against HOLD's 0.4 never
  opens a position greedily (issue #11, measured on real daily prices in docs/training.md);
- [`ActMode::Sample`]: an action drawn from the masked policy distribution, as in training, from a
  [`SplitMix64`] stream seeded by the given seed (restarted by [`BacktestPolicy::reset`], so two runs are
  identical).

[`AgentPolicy::from_checkpoint`] rebuilds the network from a checkpoint's stored agent
configuration and loads its parameters, refusing a checkpoint whose tensors do not fit (names and
shapes checked, an `ErrorKind::Shape` error names the tensor), and data whose symbols are not the ones it was trained
on (`symbols.txt`, in order).
*/

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::baselines::{BacktestPolicy, PolicyView};
use crate::agents::ActorCritic as _;
use crate::agents::dist::sample_row;
use crate::agents::master::{MasterNet, SymbolIntents};
use crate::agents::{AgentSpec, SymbolObs, SymbolPolicy};
use crate::env::N_ACTIONS;
use crate::env::master_obs::{MASTER_INTENTS, MASTER_OBS, MasterAnchor, master_obs_row};
use crate::env::obs::DYN_OBS;
use crate::error::{Error, ErrorKind, Result};
use crate::market::Market;
use crate::rng::SplitMix64;
use crate::train::checkpoint::{self, MODEL_FILE};
use crate::train::setup::build_policy;

/// How [`AgentPolicy`] turns the policy's distribution into actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActMode {
    /// The most probable legal action.
    Greedy,
    /// The most probable decision group (hold / increase / decrease), then its most probable action
    /// ([`decision_action`]).
    Decision,
    /// A draw from the masked distribution, from a stream seeded with this seed.
    Sample(u64),
}

/// One symbol decision of a traced run ([`AgentPolicy::with_trace`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The data path.
    pub path: u32,
    /// The decision bar `t` (the order fills at the open of `t + 1`).
    pub bar: u32,
    /// The symbol's index.
    pub symbol: u32,
    /// Probability, under the masked policy distribution, that the symbol is held after the step:
    /// `P(BUY_*)` (any size) when flat, `1 - P(SELL_ALL) - P(SELL_PARTIAL) / 2` when held.
    pub p_long: f64,
}

/// A [`SymbolPolicy`] playing greedily or by sampling (module docs).
pub struct AgentPolicy {
    name: String,
    policy: SymbolPolicy,
    master: u8,
    mode: ActMode,
    rng: SplitMix64,
    trace: Option<Vec<Decision>>,
    learned: Option<PlayedMaster>,
}

/// A learned master played greedily beside the symbol policy ([`AgentPolicy::with_learned_master`]).
struct PlayedMaster {
    net: MasterNet,
    interval: usize,
    anchors: Vec<MasterAnchor>,
    held: Vec<u8>,
    counts: Vec<usize>,
    obs: Vec<f32>,
    /// A label per `(path, bar)` (`[P * T]`) and the decisions per label and directive.
    labels: Option<(Vec<u8>, usize)>,
    by_label: Vec<Vec<usize>>,
    /// What the labels are and their names.
    label_names: (&'static str, Vec<&'static str>),
}

impl AgentPolicy {
    /// `policy` playing under the fixed master directive `master_action`, greedily.
    pub fn new(name: impl Into<String>, policy: SymbolPolicy, master_action: u32) -> Result<Self> {
        if master_action as usize >= crate::env::MASTER_ACTIONS {
            return Err(Error::invalid(format!(
                "master action {master_action} is not in 0..{}",
                crate::env::MASTER_ACTIONS
            )));
        }
        Ok(Self {
            name: name.into(),
            policy,
            master: master_action as u8,
            mode: ActMode::Greedy,
            rng: SplitMix64::new(0),
            trace: None,
            learned: None,
        })
    }

    /// Play the learned master stored beside the symbol policy in checkpoint directory `dir`
    /// (a joint training's checkpoint, `train::joint`) instead of a fixed directive: greedy
    /// (the most probable directive), deciding at every `master_ppo.decision_interval`-th step of
    /// each episode (from its first), from the master observation (docs/env-spec.md §8) with the
    /// symbol policy's intents of that step; the directive is held in between. A directory
    /// without a master is an error naming `master_state.json`.
    pub fn with_learned_master(mut self, dir: &Path) -> Result<Self> {
        let (net, _vm, st) = crate::train::mappo::load_master_net(dir)?;
        self.learned = Some(PlayedMaster {
            net,
            interval: st.ppo.decision_interval,
            anchors: Vec::new(),
            held: Vec::new(),
            counts: vec![0; crate::env::MASTER_ACTIONS],
            obs: Vec::new(),
            labels: None,
            by_label: Vec::new(),
            label_names: ("", Vec::new()),
        });
        Ok(self)
    }

    /// Count the learned master's decisions under a label per `(path, bar)` too (`labels`,
    /// `[P * bars]`, e.g. the synthetic hidden regime; `source` says what the labels are, `names`
    /// names them in label order); see [`AgentPolicy::directives_by_regime`]. Without a learned
    /// master this does nothing.
    pub fn with_regime_labels(
        mut self,
        labels: Vec<u8>,
        bars: usize,
        source: &'static str,
        names: Vec<&'static str>,
    ) -> Self {
        if let Some(m) = &mut self.learned {
            let n = labels.iter().copied().max().map_or(0, |x| x as usize + 1);
            m.by_label = vec![vec![0; crate::env::MASTER_ACTIONS]; n];
            m.labels = Some((labels, bars));
            m.label_names = (source, names);
        }
        self
    }

    /// The learned master's decisions by regime label (`None` without labels or a learned
    /// master); `position_caps` are the grid's caps, for the table's cap shares.
    pub fn directives_by_regime(
        &self,
        position_caps: &[f64],
    ) -> Option<super::master::DirectivesByRegime> {
        let m = self.learned.as_ref()?;
        m.labels.as_ref()?;
        Some(super::master::DirectivesByRegime {
            source: m.label_names.0,
            names: m.label_names.1.clone(),
            counts: m.by_label.clone(),
            position_caps: position_caps.to_vec(),
        })
    }

    /// Whether a learned master plays.
    pub fn plays_learned_master(&self) -> bool {
        self.learned.is_some()
    }

    /// Decisions per directive (48) of the learned master since the policy was built (empty
    /// without one).
    pub fn directive_counts(&self) -> Vec<usize> {
        self.learned
            .as_ref()
            .map(|m| m.counts.clone())
            .unwrap_or_default()
    }

    /// Play in `mode` (greedy by default).
    pub fn with_mode(mut self, mode: ActMode) -> Self {
        self.mode = mode;
        self.reset_rng();
        self
    }

    fn reset_rng(&mut self) {
        if let ActMode::Sample(seed) = self.mode {
            self.rng = SplitMix64::new(seed);
        }
    }

    /// The policy of the checkpoint directory `dir` (see `run::resolve_checkpoint`) over
    /// `market`, under directive `master_action`, or, when the checkpoint holds a learned master
    /// (joint training), with that master ([`AgentPolicy::with_learned_master`];
    /// [`AgentPolicy::with_fixed_master`] keeps `master_action` instead). Every evaluation that
    /// plays a checkpoint (eval, walk-forward, stress, report, ablate, checkpoint selection) thus
    /// plays a joint checkpoint as it was trained.
    pub fn from_checkpoint(
        name: impl Into<String>,
        dir: &Path,
        market: &Market,
        master_action: u32,
    ) -> Result<Self> {
        Self::from_checkpoint_on(name, dir, market, master_action, &Device::Cpu)
    }

    /// [`AgentPolicy::from_checkpoint`] with the policy on `device` (`--device`; the CPU, or CUDA
    /// in a `gpu` build). The master, when the checkpoint has one, runs on the CPU.
    pub fn from_checkpoint_on(
        name: impl Into<String>,
        dir: &Path,
        market: &Market,
        master_action: u32,
        device: &Device,
    ) -> Result<Self> {
        let spec: AgentSpec = checkpoint::read_policy_config(dir)?;
        if spec.dims.symbols != market.data.n_symbols() {
            return Err(Error::new(
                ErrorKind::SymbolMismatch,
                format!(
                    "the checkpoint's agent has {} symbols, the data {}",
                    spec.dims.symbols,
                    market.data.n_symbols()
                ),
            )
            .with_file(dir));
        }
        let names_path = dir.join(crate::run::SYMBOLS_FILE);
        if names_path.is_file() {
            let text =
                std::fs::read_to_string(&names_path).map_err(|e| Error::io(&names_path, e))?;
            let trained: Vec<&str> = text.lines().collect();
            if let Some((i, (a, b))) = trained
                .iter()
                .zip(&market.data.symbols)
                .enumerate()
                .find(|(_, (a, b))| **a != b.as_str())
            {
                return Err(Error::new(
                    ErrorKind::SymbolMismatch,
                    format!(
                        "symbol {i} is `{a}` in training, `{b}` in this data (same symbols in the \
                         same order needed)"
                    ),
                )
                .with_file(&names_path));
            }
        }
        let (policy, vm) = build_policy(&spec.config, spec.dims, market, 0, device)?;
        checkpoint::load_params(&vm, &dir.join(MODEL_FILE))?;
        let me = Self::new(name, policy, master_action)?;
        // A joint training's checkpoint plays as it was trained: with its learned master.
        if dir.join(crate::train::mappo::MASTER_STATE_FILE).is_file() {
            me.with_learned_master(dir)
        } else {
            Ok(me)
        }
    }

    /// Play the fixed directive given at construction even if the checkpoint holds a learned
    /// master.
    pub fn with_fixed_master(mut self) -> Self {
        self.learned = None;
        self
    }

    /// Record a [`Decision`] for every (scenario, symbol) of every step (see
    /// [`crate::eval::compare::decision_ic`]).
    pub fn with_trace(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    /// The decisions recorded so far (empty without [`AgentPolicy::with_trace`]); clears them.
    pub fn take_trace(&mut self) -> Vec<Decision> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The wrapped policy.
    pub fn symbol_policy(&self) -> &SymbolPolicy {
        &self.policy
    }
}

/// Index of the largest `logits[a]` with `mask[a] != 0` (the first on ties); HOLD (0) when nothing
/// is allowed, which the env never produces (HOLD is always legal).
pub fn greedy_action(logits: &[f32], mask: &[u8]) -> u8 {
    let mut best: Option<(usize, f32)> = None;
    for (a, (&l, &m)) in logits.iter().zip(mask).enumerate() {
        if m != 0 && best.is_none_or(|(_, b)| l > b) {
            best = Some((a, l));
        }
    }
    best.map_or(0, |(a, _)| a as u8)
}

/// [`ActMode::Decision`]'s action: the decision group (hold: HOLD; increase: BUY_SMALL, BUY_MEDIUM,
/// BUY_LARGE, ADD_TO_WINNER; decrease: SELL_PARTIAL, SELL_ALL) with the largest legal probability
/// mass (ties: hold, then increase), then the group's most probable legal action (the lower index
/// on ties). HOLD when nothing is allowed.
pub fn decision_action(logits: &[f32], mask: &[u8]) -> u8 {
    use crate::env::logic::{
        ADD_TO_WINNER, BUY_LARGE, BUY_MEDIUM, BUY_SMALL, HOLD, SELL_ALL, SELL_PARTIAL,
    };
    let Some(p) = masked_probs(logits, mask) else {
        return HOLD;
    };
    let groups: [&[u8]; 3] = [
        &[HOLD],
        &[BUY_SMALL, BUY_MEDIUM, BUY_LARGE, ADD_TO_WINNER],
        &[SELL_PARTIAL, SELL_ALL],
    ];
    let mass = |g: &[u8]| g.iter().map(|&a| p[a as usize]).sum::<f64>();
    let mut best = groups[0];
    for g in &groups[1..] {
        if mass(g) > mass(best) {
            best = g;
        }
    }
    let mut pick = best[0];
    for &a in best {
        if mask[a as usize] != 0
            && (mask[pick as usize] == 0 || logits[a as usize] > logits[pick as usize])
        {
            pick = a;
        }
    }
    if mask[pick as usize] == 0 { HOLD } else { pick }
}

/// The softmax of `logits` over the actions `mask` allows (0 elsewhere), in f64; `None` when
/// nothing is allowed.
fn masked_probs(logits: &[f32], mask: &[u8]) -> Option<Vec<f64>> {
    let max = logits
        .iter()
        .zip(mask)
        .filter(|&(_, &m)| m != 0)
        .map(|(&l, _)| l as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return None;
    }
    let w: Vec<f64> = logits
        .iter()
        .zip(mask)
        .map(|(&l, &m)| if m != 0 { (l as f64 - max).exp() } else { 0.0 })
        .collect();
    let total: f64 = w.iter().sum();
    Some(w.into_iter().map(|x| x / total).collect())
}

/// The action whose cumulative masked softmax probability first exceeds `u` in `[0, 1)` (HOLD when
/// nothing is allowed): [`sample_row`], the rollout's draw, on the masked distribution.
pub fn sample_action(logits: &[f32], mask: &[u8], u: f64) -> u8 {
    match masked_probs(logits, mask) {
        None => greedy_action(logits, mask),
        Some(p) => {
            let log_probs: Vec<f32> = p.iter().map(|&x| x.ln() as f32).collect();
            sample_row(&log_probs, u) as u8
        }
    }
}

/// `P(held after the step)` of [`Decision::p_long`] from one row's logits and mask.
pub fn p_long(logits: &[f32], mask: &[u8], held: bool) -> f64 {
    let Some(probs) = masked_probs(logits, mask) else {
        return f64::from(u8::from(held));
    };
    use crate::env::logic::{BUY_LARGE, BUY_MEDIUM, BUY_SMALL, SELL_ALL, SELL_PARTIAL};
    let p = |a: u8| probs[a as usize];
    if held {
        1.0 - p(SELL_ALL) - 0.5 * p(SELL_PARTIAL)
    } else {
        p(BUY_SMALL) + p(BUY_MEDIUM) + p(BUY_LARGE)
    }
}

impl BacktestPolicy for AgentPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn reset(&mut self) {
        self.reset_rng();
        if let Some(m) = &mut self.learned {
            m.anchors.clear();
            m.held.clear();
        }
    }

    fn act(&mut self, view: &PolicyView, sym_out: &mut [u8], master_out: &mut [u8]) -> Result<()> {
        let (n, s) = (view.n_scenarios(), view.n_symbols());
        if view.dyn_obs.len() != n * s * DYN_OBS || view.obs_index.len() != 2 * n {
            return Err(Error::invalid("policy view has the wrong observation size"));
        }
        let obs = SymbolObs {
            keys: view
                .obs_index
                .chunks_exact(2)
                .map(|k| (k[0], k[1]))
                .collect(),
            dyn_obs: Tensor::from_slice(view.dyn_obs, (n, s, DYN_OBS), self.policy.device())?,
        };
        let (logits, _) = self.policy.forward(&obs)?;
        let logits = logits.to_dtype(DType::F32)?;
        if let Some(m) = &mut self.learned {
            m.decide(view, &logits, self.policy.device())?;
        }
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        if logits.len() != n * s * N_ACTIONS {
            return Err(Error::invalid(format!(
                "policy gave {} logits for N = {n}, S = {s}",
                logits.len()
            )));
        }
        if let Some(trace) = &mut self.trace {
            let has = crate::env::obs::POSITION.start;
            for (i, (l, m)) in logits
                .chunks_exact(N_ACTIONS)
                .zip(view.mask.chunks_exact(N_ACTIONS))
                .enumerate()
            {
                let sc = i / s;
                trace.push(Decision {
                    path: view.obs_index[2 * sc],
                    bar: view.obs_index[2 * sc + 1],
                    symbol: (i % s) as u32,
                    p_long: p_long(l, m, view.dyn_obs[i * DYN_OBS + has] > 0.5),
                });
            }
        }
        for ((out, l), m) in sym_out
            .iter_mut()
            .zip(logits.chunks_exact(N_ACTIONS))
            .zip(view.mask.chunks_exact(N_ACTIONS))
        {
            *out = match self.mode {
                ActMode::Greedy => greedy_action(l, m),
                ActMode::Decision => decision_action(l, m),
                ActMode::Sample(_) => sample_action(l, m, self.rng.uniform()),
            };
        }
        match &self.learned {
            Some(m) => master_out.copy_from_slice(&m.held),
            None => master_out.fill(self.master),
        }
        Ok(())
    }
}

impl PlayedMaster {
    /// At the scenarios whose step in the episode is a multiple of the interval: the master
    /// observation with the intents of `logits` (`[N * S, 7]`, under the view's mask), and the
    /// greedy directive.
    fn decide(&mut self, view: &PolicyView, logits: &Tensor, dev: &Device) -> Result<()> {
        let (n, s) = (view.n_scenarios(), view.n_symbols());
        if self.held.len() != n {
            self.held = vec![view.layout.params.default_action as u8; n];
            self.anchors = vec![MasterAnchor::default(); n];
        }
        if view.scenarios.len() != n || view.step_in_episode.len() != n {
            return Err(Error::invalid(
                "policy view: scenario states missing (a learned master needs them)",
            ));
        }
        let deciding: Vec<usize> = (0..n)
            .filter(|&i| (view.step_in_episode[i] as usize).is_multiple_of(self.interval))
            .collect();
        if deciding.is_empty() {
            return Ok(());
        }
        let mask = Tensor::from_slice(view.mask, (n * s, N_ACTIONS), dev)?;
        let intents = SymbolIntents::from_logits(logits, Some(&mask), s)?.values;
        self.obs.resize(deciding.len() * MASTER_OBS, 0.0);
        for (row, &i) in self.obs.chunks_exact_mut(MASTER_OBS).zip(&deciding) {
            master_obs_row(
                &view.layout.params,
                view.layout,
                view.data,
                view.features,
                &view.scenarios[i],
                &intents[i * MASTER_INTENTS..(i + 1) * MASTER_INTENTS],
                &mut self.anchors[i],
                row,
            );
        }
        let mut chosen = vec![0u8; deciding.len()];
        crate::train::mappo::greedy_directives(&self.net, &self.obs, &mut chosen)?;
        for (&i, d) in deciding.iter().zip(chosen) {
            self.held[i] = d;
            self.counts[d as usize] += 1;
            if let Some((labels, bars)) = &self.labels {
                let st = &view.scenarios[i];
                let at = st.path as usize * bars + (st.t0 + st.k) as usize;
                if let Some(&l) = labels.get(at) {
                    self.by_label[l as usize][d as usize] += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{decision_action, greedy_action, p_long, sample_action};

    #[test]
    fn decision_greedy_weighs_the_decision_before_the_size() {
        // Flat, HOLD 0.4 against three buys of 0.2 each: argmax holds, the decision rule buys the
        // most probable size (the lower index among equals).
        let ln = |p: f64| p.ln() as f32;
        let flat = [1, 1, 1, 1, 0, 0, 0];
        let l = [ln(0.4), ln(0.2), ln(0.2), ln(0.2), 9.0, 9.0, 9.0];
        assert_eq!(greedy_action(&l, &flat), 0);
        assert_eq!(decision_action(&l, &flat), 1);
        let l = [ln(0.4), ln(0.15), ln(0.15), ln(0.3), 0.0, 0.0, 0.0];
        assert_eq!(decision_action(&l, &flat), 3);
        // HOLD's mass above the buys' together: hold.
        let l = [ln(0.55), ln(0.15), ln(0.15), ln(0.15), 0.0, 0.0, 0.0];
        assert_eq!(decision_action(&l, &flat), 0);
        // Held, full (buys masked): the two sells together (0.3 + 0.3) beat HOLD's 0.4.
        let held = [1, 0, 0, 0, 1, 1, 0];
        let l = [ln(0.4), 5.0, 5.0, 5.0, ln(0.3), ln(0.3), 5.0];
        assert_eq!(greedy_action(&l, &held), 0);
        assert_eq!(decision_action(&l, &held), 4);
        // A tie of masses goes to hold; masked logits never count.
        let l = [ln(0.5), ln(0.5), -99.0, -99.0, 0.0, 0.0, 0.0];
        assert_eq!(decision_action(&l, &[1, 1, 0, 0, 0, 0, 0]), 0);
    }

    #[test]
    fn p_long_reads_the_masked_distribution() {
        // Flat: HOLD and the three buys legal with equal logits; sells masked.
        let l = [0.0f32; 7];
        assert!((p_long(&l, &[1, 1, 1, 1, 0, 0, 0], false) - 0.75).abs() < 1e-12);
        // Held: HOLD, SELL_PARTIAL, SELL_ALL legal, equal: 1 - 1/3 - 1/6 = 0.5.
        assert!((p_long(&l, &[1, 0, 0, 0, 1, 1, 0], true) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn sampling_follows_the_masked_distribution() {
        // Allowed: actions 0 and 2 with equal logits; 1 is masked despite its large logit.
        let (l, m) = ([0.0f32, 9.0, 0.0], [1u8, 0, 1]);
        assert_eq!(sample_action(&l, &m, 0.1), 0);
        assert_eq!(sample_action(&l, &m, 0.6), 2);
        assert_eq!(sample_action(&l, &m, 0.999_999), 2);
        let mut rng = crate::rng::SplitMix64::new(1);
        let ones = (0..10_000)
            .filter(|_| sample_action(&[0.0, 1.0], &[1, 1], rng.uniform()) == 1)
            .count();
        // P(1) = e / (1 + e) = 0.731
        assert!((ones as f64 / 1e4 - 0.731).abs() < 0.02, "{ones}");
    }

    #[test]
    fn greedy_respects_the_mask_and_breaks_ties_low() {
        assert_eq!(greedy_action(&[0.0, 5.0, 1.0], &[1, 0, 1]), 2);
        assert_eq!(greedy_action(&[2.0, 2.0, 1.0], &[1, 1, 1]), 0);
        assert_eq!(greedy_action(&[-1.0, 3.0], &[0, 0]), 0);
        assert_eq!(
            greedy_action(&[f32::NEG_INFINITY, -1e30], &[1, 1]),
            1,
            "a finite logit beats -inf"
        );
    }
}
