//! The `[sl]` configuration section: the supervised models' sizes, their labels and their training.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[sl]`: the three supervised direction classifiers (module docs of [`crate::sl`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlConfig {
    /// Bars ahead of the predicted return: the label of bar t is the direction of
    /// `ln(C[t + horizon] / C[t])`.
    pub horizon: usize,
    /// Dead zone of the "flat" class, in units of the causal volatility: flat when
    /// `|ln(C[t + h] / C[t])| <= dead_zone * vol(t) * sqrt(h)`.
    pub dead_zone: f64,
    /// Hidden width of the MLP (one hidden layer).
    pub mlp_hidden: usize,
    /// Hidden size of the LSTM.
    pub lstm_hidden: usize,
    /// Hidden size of the GRU.
    pub gru_hidden: usize,
    /// Fraction of the train period's labelled bars (its last ones) held out for early stopping.
    pub val_fraction: f64,
    /// Maximum passes over the fitting samples.
    pub max_epochs: usize,
    /// Stop after this many epochs without a lower validation log-loss (the best epoch's
    /// parameters are kept).
    pub patience: usize,
    /// Samples per gradient step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the initial weights and of the sample order.
    pub seed: u64,
    /// The models directory (`marl-trade sl train --out`) whose fingerprint an `env.sl_cache` must
    /// carry; absent: the cache is only checked against the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<String>,
}

impl Default for SlConfig {
    fn default() -> Self {
        Self {
            horizon: 1,
            dead_zone: 0.25,
            mlp_hidden: 72,
            lstm_hidden: 62,
            gru_hidden: 93,
            val_fraction: 0.15,
            max_epochs: 20,
            patience: 3,
            batch_size: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
            models: None,
        }
    }
}

impl SlConfig {
    /// Range checks; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::config_field(origin, field, why));
        if self.horizon == 0 {
            return bad("sl.horizon", "must be >= 1".into());
        }
        if !(self.dead_zone.is_finite() && self.dead_zone >= 0.0) {
            return bad("sl.dead_zone", "must be a number >= 0".into());
        }
        for (f, v) in [
            ("sl.mlp_hidden", self.mlp_hidden),
            ("sl.lstm_hidden", self.lstm_hidden),
            ("sl.gru_hidden", self.gru_hidden),
            ("sl.max_epochs", self.max_epochs),
            ("sl.patience", self.patience),
            ("sl.batch_size", self.batch_size),
        ] {
            if v == 0 {
                return bad(f, "must be >= 1".into());
            }
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 0.5) {
            return bad("sl.val_fraction", "must be in (0, 0.5)".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("sl.learning_rate", "must be > 0".into());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("sl.weight_decay", "must be >= 0".into());
        }
        if self.models.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return bad(
                "sl.models",
                "is empty: name a models directory or leave it out".into(),
            );
        }
        Ok(())
    }
}
