//! Building the supervised-prior cache (`marl-trade sl cache`): every model's
//! `P(up) - P(down)` for every (path, bar, symbol) of a market (`crate::priors`).

use std::path::Path;

use candle_core::Device;

use super::dataset::batch;
use super::train::{SlModels, models_fingerprint};
use crate::error::Result;
use crate::features::WINDOW;
use crate::market::Market;
use crate::priors::{CHANNELS, CacheHeader, PriorCache};

/// (p, t, s) per inference batch.
const CACHE_BATCH: usize = 4096;

/// The cache of `models` over `market`: channel m of (p, t, s) is model m's
/// `P(up) - P(down)` (MLP, LSTM, GRU); bars `t + 1 < WINDOW` hold 0.
pub fn build_cache(models: &SlModels, market: &Market) -> Result<PriorCache> {
    let md = &*market.data;
    let (pn, tn, sn) = (md.paths, md.bars, md.n_symbols());
    let mut values = vec![0f32; pn * tn * sn * CHANNELS];
    let keys: Vec<(usize, usize, usize)> = (0..pn)
        .flat_map(|p| ((WINDOW - 1)..tn).flat_map(move |t| (0..sn).map(move |s| (p, t, s))))
        .collect();
    let dev = Device::Cpu;
    for chunk in keys.chunks(CACHE_BATCH) {
        let (w, e) = batch(market, chunk.iter().copied(), &dev)?;
        for (m, model) in models.models.iter().enumerate() {
            let p: Vec<Vec<f32>> = model.probs(&w, &e)?.to_vec2()?;
            for (&(pi, t, s), row) in chunk.iter().zip(&p) {
                values[((pi * tn + t) * sn + s) * CHANNELS + m] = row[2] - row[0];
            }
        }
    }
    PriorCache::new(md, models.fingerprint, values)
}

/// Refuse the cache file at `cache` unless the models in `models_dir` produced it (reads only its
/// header).
pub fn check_cache_models(cache: &Path, models_dir: &Path) -> Result<()> {
    let h = CacheHeader::read(cache)?;
    PriorCache::check_models(&h, models_fingerprint(models_dir)?, cache)
}
