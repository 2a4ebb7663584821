/*!
Supervised priors (issue #13, first half): three direction classifiers whose summaries fill the
observation's SL slice through a cache (`crate::priors`, docs/env-spec.md §6).

# Models

An MLP (hidden 72), an LSTM (hidden 62) and a GRU (hidden 93), sizes by `[sl]` ([`SlConfig`]),
in candle ([`models`]). Input: the symbol's technical window `[WINDOW = 24, N_TECH = 23]` of bar t
(the observation's window) and the bar's sentiment, short rate and VIX / 100 (the observation's
`SENT_MACRO` slice). Output: probabilities of down / flat / up for the return over the next
`sl.horizon` bars, `r = ln(C[t + h] / C[t])`: flat when `|r| <= dead_zone * vol(t) * sqrt(h)`
(`vol` the causal EWMA volatility of the 1-bar returns, as in [`crate::features`]).

# Purged split

Only the train period `[0, split)`, `split = floor(T * env.train_fraction)` (the environment's
split), is used for fitting and early stopping. A label of bar t reads the close of bar `t + h`,
so labels of the last `h` bars before a boundary would overlap the next set: following the
purging of Lopez de Prado (*Advances in Financial Machine Learning*, 2018, ch. 7.4, "purged
K-fold": remove from the training set every observation whose label interval overlaps the
evaluation set), the labelled train bars are `[WARMUP, split - h)`, the validation slice (early
stopping) is their last `sl.val_fraction`, and the `h` bars before it are purged from fitting as
well. An embargo (dropping training bars *after* an evaluation set) is not needed: no training bar
follows an evaluation bar. The held-out evaluation uses the test period `[split, T - h)`.
Features are causal, so windows that reach back across a boundary carry no label information.

# Training and report

AdamW on the cross-entropy, shuffled mini-batches (seeded), early stopping on the validation
log-loss with `sl.patience` (the best epoch's parameters are kept), checkpoints as safetensors
(written atomically) in the models directory, with `sl.json` (configuration, split, data
fingerprint). The report ([`SlReport`], `report.json`) gives per model the held-out accuracy,
log-loss, calibration (mean predicted probability per class against the observed class
frequencies, expected calibration error of the top class), the majority-class baseline (the
fitting set's most frequent class) with a paired z-score, and the log-loss of the fitting set's
class frequencies. `sl train` resumes at model granularity.

# Cache

[`build_cache`] evaluates the three models on every (path, bar, symbol) of a market and stores
`P(up) - P(down)` per model with the models' fingerprint ([`models_fingerprint`]: `sl.json` and
the checkpoints, byte for byte) and the data's (`priors::data_fingerprint`). The environment reads
it through `env.sl_cache`; `[sl] models` makes the configuration check that the cache came from
those models. Note: on the train period the cache holds in-sample predictions (the models were
fitted there), which are more confident than the held-out ones.
*/

pub mod cache;
pub mod config;
pub mod dataset;
pub mod models;
pub mod train;

pub use cache::{build_cache, check_cache_models};
pub use config::SlConfig;
pub use models::{ModelKind, SlModel};
pub use train::{
    EpochLog, HeldOut, ModelReport, SlMeta, SlModels, SlReport, SlTrainOptions, models_fingerprint,
    train_all,
};
