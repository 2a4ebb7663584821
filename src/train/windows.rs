/*!
The market as the symbol agents' window source: the feature array gives each symbol's technical
window, the data's closes give the returns the graph branch builds its correlation graph from. It
sits next to the trading adapter ([`super::trading`]) because it joins two lower layers (data and
features) for the agents.
*/

use std::sync::Arc;

use crate::agents::windows::{TechArray, WindowSource};
use crate::data::MarketData;
use crate::error::Error;
use crate::features::Features;

/// The market a policy trades: the feature array gives the windows, the closes of the data give the
/// returns the graph branch builds its correlation graph from (`ln(C[t] / C[t-1])` per symbol; bars
/// before the first one count as 0 returns).
#[derive(Debug, Clone)]
pub struct MarketWindows {
    /// The feature array (windows).
    pub features: Arc<Features>,
    /// The data (closes for the returns).
    pub data: Arc<MarketData>,
}

impl MarketWindows {
    /// Both must describe the same market (same paths, bars and symbols).
    pub fn new(features: Arc<Features>, data: Arc<MarketData>) -> crate::Result<Self> {
        if (features.paths, features.bars, features.symbols)
            != (data.paths, data.bars, data.n_symbols())
        {
            return Err(Error::new(
                crate::error::ErrorKind::Shape,
                format!(
                    "features are [{}, {}, {}] (paths, bars, symbols), the data [{}, {}, {}]",
                    features.paths,
                    features.bars,
                    features.symbols,
                    data.paths,
                    data.bars,
                    data.n_symbols()
                ),
            ));
        }
        Ok(Self { features, data })
    }
}

impl WindowSource for MarketWindows {
    fn symbols(&self) -> usize {
        self.features.symbols
    }
    fn window(&self) -> usize {
        crate::features::WINDOW
    }
    fn features(&self) -> usize {
        crate::features::N_TECH
    }
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]) {
        self.features.windows_into(path, t, out);
    }
    fn tech_array(&self) -> Option<TechArray<'_>> {
        self.features.tech_array()
    }
    fn returns_into(&self, path: usize, t: usize, lookback: usize, out: &mut [f32]) -> bool {
        let s_n = self.features.symbols;
        let md = &self.data;
        for (k, row) in out.chunks_exact_mut(s_n).take(lookback).enumerate() {
            let bar = (t + 1 + k).checked_sub(lookback);
            for (s, r) in row.iter_mut().enumerate() {
                *r = match bar {
                    Some(b) if b >= 1 => {
                        let (c1, c0) =
                            (md.close[md.px(path, b, s)], md.close[md.px(path, b - 1, s)]);
                        (c1 as f64 / c0 as f64).ln() as f32
                    }
                    _ => 0.0,
                };
            }
        }
        true
    }
}
