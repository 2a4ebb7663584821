/*!
The symbol agent's observation, as named slices of one flat f32 vector.

A full observation is `OBS_DIM = TECH_WINDOW_LEN + DYN_OBS` floats: the technical window (the last
[`WINDOW`] bars of the 23 technical features of the symbol) followed by the dynamic part. Rollouts
store only the dynamic part plus a (path, time, symbol) index; the window is re-read from
[`Features`](crate::features::Features) when needed (`Features::window_into`).

Every slice below is documented in docs/env-spec.md, "Observation".
*/

use std::ops::Range;

use crate::features::{N_REGIME, N_TECH, WINDOW};

/// Length of the flattened technical window, `WINDOW x N_TECH` (oldest bar first).
pub const TECH_WINDOW_LEN: usize = WINDOW * N_TECH;

/// Sentiment of the symbol, short rate, VIX-like index / 100.
pub const SENT_MACRO: Range<usize> = 0..3;
/// Supervised-model probability triplet (down, flat, up); zeros until the SL models exist.
pub const SL_PROBS: Range<usize> = 3..6;
/// has_position, unrealised return, duration / episode_len, weight (value / equity), intra-trade drawdown.
pub const POSITION: Range<usize> = 6..11;
/// cash / equity, portfolio drawdown, rolling Sharpe estimate, gross exposure / equity, open / max_open.
pub const PORTFOLIO: Range<usize> = 11..16;
/// Regime features of the bar (trend, breadth, mean pairwise correlation, VIX proxy).
pub const REGIME: Range<usize> = 16..16 + N_REGIME;
/// Master directives: risk multiplier, position cap, max_open / S, regime mode one-hot (3).
pub const MASTER: Range<usize> = 16 + N_REGIME..22 + N_REGIME;

/// Dynamic observation length (everything but the technical window).
pub const DYN_OBS: usize = MASTER.end;
/// Full observation length.
pub const OBS_DIM: usize = TECH_WINDOW_LEN + DYN_OBS;

/// Named slices of the dynamic observation, in order, for logging and docs.
pub const DYN_SLICES: [(&str, Range<usize>); 6] = [
    ("sentiment_macro", SENT_MACRO),
    ("sl_probs", SL_PROBS),
    ("position", POSITION),
    ("portfolio", PORTFOLIO),
    ("regime", REGIME),
    ("master", MASTER),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_tile_the_dynamic_observation() {
        let mut next = 0;
        for (_, r) in DYN_SLICES {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, DYN_OBS);
        assert!((512..=600).contains(&OBS_DIM), "OBS_DIM = {OBS_DIM}");
    }
}
