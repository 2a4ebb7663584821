/*!
The supervised-prior cache: what the observation's `SL_PROBS` slice reads (docs/env-spec.md §6).

The supervised models of [`crate::sl`] are evaluated once per data set, for every (path, bar,
symbol), and their summaries stored as one dense `[P, T, S, CHANNELS]` f32 array: channel m is
model m's `P(up) - P(down)` for the direction of the return over the next `sl.horizon` bars
(models in the order MLP, LSTM, GRU), in [-1, 1]. Bars before the first full technical window
(`t + 1 < WINDOW`) hold 0. The environment never runs a model: it reads this array (CPU backend)
or a device copy of it (CUDA backend).

# File format (little endian)

| bytes | field |
|---|---|
| 8 | magic `MTSLPRI1` |
| 4 | format version (u32, [`VERSION`]) |
| 4 | channels (u32, [`CHANNELS`]) |
| 8, 8, 8 | paths P, bars T, symbols S (u64) |
| 8 | fingerprint of the models (u64, computed by `sl::models_fingerprint`) |
| 8 | fingerprint of the data (u64, [`data_fingerprint`]) |
| 4 P T S C | the values, f32, `[P, T, S, C]` |

A cache is refused ([`ErrorKind::StalePriors`], naming the file) when its magic, version,
channels or length are wrong, when its data fingerprint or shape differ from the data it is
used with ([`PriorCache::check_data`]), or when its model fingerprint differs from the models a
configuration names ([`PriorCache::check_models`]). Files are written atomically.

This module sits between `market` and `costs` in the layering: it knows the data (for the
fingerprint) but no model, so the environment can read it without depending on candle.
*/

use std::io::Read;
use std::path::Path;

use crate::data::MarketData;
use crate::error::{Error, ErrorKind, Result};
use crate::rng::mix64;

/// Summaries per (path, bar, symbol): one per supervised model (MLP, LSTM, GRU).
pub const CHANNELS: usize = 3;
/// File format version.
pub const VERSION: u32 = 1;
/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"MTSLPRI1";
/// Bytes of the header before the values.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 3 * 8 + 2 * 8;

/// The header of a cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheHeader {
    /// Paths P.
    pub paths: usize,
    /// Bars T.
    pub bars: usize,
    /// Symbols S.
    pub symbols: usize,
    /// Fingerprint of the models that produced the values.
    pub models_fp: u64,
    /// Fingerprint of the data they were evaluated on ([`data_fingerprint`]).
    pub data_fp: u64,
}

impl CacheHeader {
    fn values(&self) -> Option<usize> {
        self.paths
            .checked_mul(self.bars)?
            .checked_mul(self.symbols)?
            .checked_mul(CHANNELS)
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(CHANNELS as u32).to_le_bytes());
        for v in [self.paths as u64, self.bars as u64, self.symbols as u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.models_fp.to_le_bytes());
        b.extend_from_slice(&self.data_fp.to_le_bytes());
        b
    }

    fn parse(path: &Path, b: &[u8]) -> Result<Self> {
        let stale = |m: String| Error::new(ErrorKind::StalePriors, m).with_file(path);
        if b.len() < HEADER_LEN || b[..8] != MAGIC {
            return Err(stale(
                "not an SL prior cache (bad magic or too short)".into(),
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(stale(format!(
                "cache format version {version}, this build reads version {VERSION}; rebuild it \
                 with `marl-trade sl cache`"
            )));
        }
        let channels = u32_at(12) as usize;
        if channels != CHANNELS {
            return Err(stale(format!(
                "cache has {channels} channels per symbol-bar, expected {CHANNELS}"
            )));
        }
        let to_usize =
            |v: u64| usize::try_from(v).map_err(|_| stale(format!("size {v} too large")));
        Ok(Self {
            paths: to_usize(u64_at(16))?,
            bars: to_usize(u64_at(24))?,
            symbols: to_usize(u64_at(32))?,
            models_fp: u64_at(40),
            data_fp: u64_at(48),
        })
    }

    /// Read only the header of the cache file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut b = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = f.read(&mut b[got..]).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Self::parse(path, &b[..got])
    }
}

/// The dense cache (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PriorCache {
    /// Sizes and fingerprints.
    pub header: CacheHeader,
    /// `[P, T, S, CHANNELS]`.
    pub values: Vec<f32>,
}

impl PriorCache {
    /// A cache of `values` (`[P, T, S, CHANNELS]`) for `md`, produced by the models with
    /// fingerprint `models_fp`.
    pub fn new(md: &MarketData, models_fp: u64, values: Vec<f32>) -> Result<Self> {
        let header = CacheHeader {
            paths: md.paths,
            bars: md.bars,
            symbols: md.n_symbols(),
            models_fp,
            data_fp: data_fingerprint(md),
        };
        let n = header.values().unwrap_or(usize::MAX);
        if values.len() != n {
            return Err(Error::shape(
                "SL prior cache",
                "values",
                &[md.paths, md.bars, md.n_symbols(), CHANNELS],
                &[values.len()],
            ));
        }
        Ok(Self { header, values })
    }

    /// Offset of the `CHANNELS` values of (p, t, s).
    #[inline]
    pub fn index(&self, p: usize, t: usize, s: usize) -> usize {
        ((p * self.header.bars + t) * self.header.symbols + s) * CHANNELS
    }

    /// The values of every symbol at bar t of path p, `[S, CHANNELS]`.
    #[inline]
    pub fn bar(&self, p: usize, t: usize) -> &[f32] {
        let i = self.index(p, t, 0);
        &self.values[i..i + self.header.symbols * CHANNELS]
    }

    /// Write the cache to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut b = self.header.to_bytes();
        b.reserve(self.values.len() * 4);
        b.extend_from_slice(bytemuck::cast_slice(&self.values));
        if cfg!(target_endian = "big") {
            return Err(Error::invalid(
                "SL prior caches are little endian; this platform is not",
            ));
        }
        crate::atomic::write(path, &b)
    }

    /// Read a cache file (header and values checked for consistency, not yet against any data).
    pub fn read(path: &Path) -> Result<Self> {
        let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let header = CacheHeader::parse(path, &b)?;
        let n = header.values().unwrap_or(usize::MAX);
        let body = &b[HEADER_LEN..];
        if n.checked_mul(4) != Some(body.len()) {
            return Err(Error::new(
                ErrorKind::StalePriors,
                format!(
                    "truncated or oversized: the header says {} x {} x {} x {CHANNELS} values \
                     ({} bytes), the file holds {} bytes after the header",
                    header.paths,
                    header.bars,
                    header.symbols,
                    n.saturating_mul(4),
                    body.len()
                ),
            )
            .with_file(path));
        }
        let values: Vec<f32> = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(
                Error::new(ErrorKind::StalePriors, format!("value {i} is not finite"))
                    .with_file(path),
            );
        }
        Ok(Self { header, values })
    }

    /// Refuse the cache unless it was built from `md` (same shape and data fingerprint). `origin`
    /// names the cache in the error (its file).
    pub fn check_data(&self, md: &MarketData, origin: &Path) -> Result<()> {
        let h = &self.header;
        if (h.paths, h.bars, h.symbols) != (md.paths, md.bars, md.n_symbols()) {
            return Err(Error::new(
                ErrorKind::StalePriors,
                format!(
                    "built for {} path(s) x {} bars x {} symbols, the data has {} x {} x {}; \
                     rebuild it with `marl-trade sl cache`",
                    h.paths,
                    h.bars,
                    h.symbols,
                    md.paths,
                    md.bars,
                    md.n_symbols()
                ),
            )
            .with_file(origin));
        }
        let fp = data_fingerprint(md);
        if h.data_fp != fp {
            return Err(Error::new(
                ErrorKind::StalePriors,
                format!(
                    "built from other data (data fingerprint {:016x}, this data {fp:016x}); \
                     rebuild it with `marl-trade sl cache`",
                    h.data_fp
                ),
            )
            .with_file(origin));
        }
        Ok(())
    }

    /// Refuse the cache unless the models with fingerprint `models_fp` produced it.
    pub fn check_models(header: &CacheHeader, models_fp: u64, origin: &Path) -> Result<()> {
        if header.models_fp != models_fp {
            return Err(Error::new(
                ErrorKind::StalePriors,
                format!(
                    "built by other models (model fingerprint {:016x}, the configured models \
                     {models_fp:016x}); rebuild it with `marl-trade sl cache`",
                    header.models_fp
                ),
            )
            .with_file(origin));
        }
        Ok(())
    }
}

/// Fold `bytes` into the running hash `h` (8 bytes at a time through `mix64`).
pub fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = mix64(h ^ u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    h = mix64(h ^ u64::from_le_bytes(last));
    mix64(h ^ bytes.len() as u64)
}

/// A fingerprint of everything in `md`: symbol and benchmark names, sizes, timestamps, prices,
/// volume, sentiment and macro series. Equal data give equal fingerprints on every machine;
/// changing one value changes it (with overwhelming probability).
pub fn data_fingerprint(md: &MarketData) -> u64 {
    let mut h = 0x4d54_534c_5052_4931u64;
    for s in &md.symbols {
        h = hash_bytes(h, s.as_bytes());
    }
    h = hash_bytes(h, md.benchmark.as_bytes());
    for v in [md.paths, md.bars, md.bars_per_day, md.n_symbols()] {
        h = mix64(h ^ v as u64);
    }
    h = hash_bytes(h, bytemuck::cast_slice(&md.timestamps));
    for a in [
        &md.open,
        &md.high,
        &md.low,
        &md.close,
        &md.volume,
        &md.sentiment,
        &md.macro_series,
    ] {
        h = hash_bytes(h, bytemuck::cast_slice(a));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SyntheticConfig, generate};

    fn small() -> MarketData {
        let cfg = SyntheticConfig {
            symbols: 3,
            bars: 200,
            ..SyntheticConfig::default()
        };
        generate(&cfg, "SPY")
    }

    #[test]
    fn round_trip_and_refusals() {
        let md = small();
        let n = md.paths * md.bars * md.n_symbols() * CHANNELS;
        let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let c = PriorCache::new(&md, 42, vals).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.slc");
        c.write(&f).unwrap();
        let back = PriorCache::read(&f).unwrap();
        assert_eq!(back, c);
        assert_eq!(CacheHeader::read(&f).unwrap(), c.header);
        back.check_data(&md, &f).unwrap();
        PriorCache::check_models(&back.header, 42, &f).unwrap();
        let e = PriorCache::check_models(&back.header, 43, &f).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StalePriors);
        // One changed close: other data.
        let mut md2 = md.clone();
        md2.close[5] *= 1.0001;
        let e = back.check_data(&md2, &f).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StalePriors);
        assert!(e.to_string().contains("other data"), "{e}");
        // Truncated file.
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 4]).unwrap();
        let e = PriorCache::read(&f).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StalePriors);
        // Not a cache.
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(
            PriorCache::read(&f).unwrap_err().kind(),
            ErrorKind::StalePriors
        );
    }

    #[test]
    fn wrong_length_is_a_shape_error() {
        let md = small();
        let e = PriorCache::new(&md, 0, vec![0.0; 7]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Shape);
    }
}
