//! Loader for long-format OHLCV files (work in progress).

use std::path::Path;

use super::MarketData;
use crate::config::DataConfig;
use crate::error::{Error, Location, Result};

/// Load a long-format OHLCV file (placeholder).
pub fn load_file(path: &Path, _cfg: &DataConfig) -> Result<MarketData> {
    Err(Error::data(path, Location::default(), "loader not implemented yet"))
}
