/*!
Per-iteration training metrics, named as CleanRL logs them, written as JSON lines.
*/

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::Error;

/// What one PPO iteration reports. Losses and KL values are those of the last minibatch (as CleanRL
/// logs them); `clipfrac` is the mean over all minibatches of the iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// 1-based iteration.
    pub iteration: usize,
    /// Environment steps (units) so far.
    pub global_step: u64,
    /// Learning rate of the iteration.
    pub learning_rate: f64,
    /// Entropy coefficient of the iteration.
    pub ent_coef: f64,
    /// Clipped surrogate loss.
    pub policy_loss: f64,
    /// Value loss (half the (clipped) squared error).
    pub value_loss: f64,
    /// Mean policy entropy.
    pub entropy: f64,
    /// `mean(-log ratio)`.
    pub old_approx_kl: f64,
    /// CleanRL's `mean((ratio - 1) - log ratio)`.
    pub approx_kl: f64,
    /// Fraction of rows whose ratio was clipped.
    pub clipfrac: f64,
    /// `1 - Var[returns - values] / Var[returns]` over the batch; `None` when `Var[returns] = 0`.
    pub explained_variance: Option<f64>,
    /// Global gradient norm before clipping (last minibatch).
    pub grad_norm: f64,
    /// Epochs run (fewer than `update_epochs` when `target_kl` stopped the update).
    pub epochs: usize,
    /// Environment steps per second since the trainer was created or resumed.
    pub sps: f64,
    /// Agent transitions per second over the same span: `sps * agents_per_env` (symbol-steps per
    /// second for the trading environment, rollout and update included).
    #[serde(default)]
    pub agent_sps: f64,
    /// Episodes that ended during the rollout.
    pub episodes: usize,
    /// Their mean return and length.
    pub episode_return_mean: Option<f64>,
    /// Mean length of those episodes.
    pub episode_length_mean: Option<f64>,
    /// The environment's own statistics of those episodes (`TrainEnv::drain_stats`), e.g. the
    /// trading env's reward terms `reward.<component>` and `reward_share.<component>`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, f64>,
    /// The policy's own statistics of the iteration (`ActorCritic::drain_stats`), e.g. the trading
    /// policy's embedding cache: `cache.hits`, `cache.misses` (keys looked up in the rollout),
    /// `cache.bytes` (the most held during the iteration), `cache.evictions`, `encoder.keys` (bars encoded in the whole iteration).
    /// With `ppo.kl_prior_coef > 0` the trainer adds the KL term toward the policy's prior here:
    /// `loss.kl_prior` (last minibatch's mean `KL(pi || prior)`) and `loss.kl_prior_coef` (the
    /// iteration's annealed coefficient).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub policy: std::collections::BTreeMap<String, f64>,
    /// Wall-clock seconds of the iteration's parts: the rollout's env steps (`time.rollout_env`),
    /// its policy passes and sampling (`time.rollout_policy`), the update (`time.update`), and the
    /// policy's own (`time.encoder`: encoder forward passes, rollout and update).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub timing: std::collections::BTreeMap<String, f64>,
}

impl Metrics {
    /// Column names of [`Metrics::csv_row`].
    pub const CSV_HEADER: &'static str = "iteration,global_step,learning_rate,ent_coef,policy_loss,\
value_loss,entropy,old_approx_kl,approx_kl,clipfrac,explained_variance,grad_norm,epochs,sps,\
agent_sps,episodes,episode_return_mean,episode_length_mean";

    /// One JSON object, as a line of `metrics.jsonl` (no newline).
    /// One line for a terminal (`marl-trade train --quiet`).
    pub fn summary_line(&self) -> String {
        format!(
            "iter {:4}  return {:+.3}%  pg {:+.4}  v {:.4}  ent {:.3}  kl {:.4}  clip {:.3}  ev {}  {:.0} symbol-steps/s",
            self.iteration,
            100.0 * self.episode_return_mean.unwrap_or(f64::NAN),
            self.policy_loss,
            self.value_loss,
            self.entropy,
            self.approx_kl,
            self.clipfrac,
            self.explained_variance
                .map_or("-".into(), |v| format!("{v:.3}")),
            self.agent_sps
        )
    }

    /// The metrics as one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("metrics serialise")
    }

    /// The CSV header with the environment's statistics `env_names` as extra columns.
    pub fn csv_header_with(env_names: &[String]) -> String {
        let mut h = Self::CSV_HEADER.to_string();
        for n in env_names {
            h.push(',');
            h.push_str(n);
        }
        h
    }

    /// [`Metrics::csv_row`] followed by the values of `env_names` (empty where missing).
    pub fn csv_row_with(&self, env_names: &[String]) -> String {
        let mut r = self.csv_row();
        for n in env_names {
            r.push(',');
            if let Some(v) = self.env.get(n) {
                r.push_str(&v.to_string());
            }
        }
        r
    }

    /// One CSV line (no newline), columns as [`Metrics::CSV_HEADER`]; a missing value is empty.
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.iteration,
            self.global_step,
            self.learning_rate,
            self.ent_coef,
            self.policy_loss,
            self.value_loss,
            self.entropy,
            self.old_approx_kl,
            self.approx_kl,
            self.clipfrac,
            opt(self.explained_variance),
            self.grad_norm,
            self.epochs,
            self.sps,
            self.agent_sps,
            self.episodes,
            opt(self.episode_return_mean),
            opt(self.episode_length_mean),
        )
    }
}

/// Appends [`Metrics`] to a JSONL file, one object per line, flushed after every line.
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Create (truncate) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            out: BufWriter::new(f),
        })
    }

    /// Append to `path` (a resumed run).
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            out: BufWriter::new(f),
        })
    }

    /// Append one iteration's metrics and flush.
    pub fn write(&mut self, m: &Metrics) -> Result<()> {
        let line = m.json_line();
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Read a JSONL metrics file.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<Metrics>> {
    Ok(read_json_lines(path.as_ref())?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

/// Every non-empty line of the JSON-lines file `path`, parsed as `T`, with the line's text (for a
/// caller that keeps lines verbatim). A line that does not parse is an
/// [`ErrorKind::Checkpoint`](crate::ErrorKind::Checkpoint) error naming the file and the line.
pub fn read_json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<(T, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (v, l.to_string()))
                .map_err(|e| Error::checkpoint(path, format!("line {}: {e}", i + 1)).with_source(e))
        })
        .collect()
}
