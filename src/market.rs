/*!
The market a run trades: the data and its features, computed once and shared (`Arc`) by the
environments, the policies and the evaluation of a run. It joins two layers ([`crate::data`] and
[`crate::features`]) and is the one place that computes the features of loaded data.
*/

use std::path::Path;
use std::sync::Arc;

use crate::data::{DataConfig, MarketData};
use crate::error::Result;
use crate::features::Features;

/// Data and features of one market.
#[derive(Debug, Clone)]
pub struct Market {
    /// The bars.
    pub data: Arc<MarketData>,
    /// Their causal features.
    pub features: Arc<Features>,
}

impl Market {
    /// Load the configured data source and compute the features.
    pub fn load(cfg: &DataConfig) -> Result<Self> {
        Ok(Self::from_data(crate::data::load(cfg)?))
    }

    /// Load `file` (one or several files separated by commas) when given, else the configured
    /// source; also returns a description of where the data came from (see
    /// [`crate::data::load_source`]).
    pub fn load_source(cfg: &DataConfig, file: Option<&Path>) -> Result<(Self, String)> {
        let (md, origin) = crate::data::load_source(cfg, file)?;
        Ok((Self::from_data(md), origin))
    }

    /// Compute the features of `data`.
    pub fn from_data(data: MarketData) -> Self {
        let features = Arc::new(Features::compute(&data));
        Self {
            data: Arc::new(data),
            features,
        }
    }
}
