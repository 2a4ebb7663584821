/*!
Window sources: where the symbol agents read the technical window of each (path, bar, symbol), and
the returns the correlation graph is built from. The feature array is one (windows only); the
trading adapter adds the data's returns (`train::windows::MarketWindows`); [`DenseWindows`] is an
in-memory source for tests and benches.
*/

/// A feature array in the layout `[P, S, T, F]`, where the window of one (path, bar, symbol) is
/// one contiguous run of `window * F` floats: what a policy uploads once to gather windows on its
/// own device ([`WindowSource::tech_array`]).
#[derive(Debug, Clone, Copy)]
pub struct TechArray<'a> {
    /// `[P, S, T, F]` f32.
    pub data: &'a [f32],
    /// Paths P.
    pub paths: usize,
    /// Symbols S.
    pub symbols: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Features per bar F.
    pub features: usize,
}

/// Where the technical windows (and the returns the symbol graph is built from) come from.
pub trait WindowSource: Send + Sync {
    /// Number of symbols S.
    fn symbols(&self) -> usize;
    /// Bars per window.
    fn window(&self) -> usize;
    /// Features per bar.
    fn features(&self) -> usize;
    /// The windows of all symbols ending at bar `t` of path `path`, `[S, window, features]`, oldest
    /// bar first, into `out`.
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]);
    /// The returns of the `lookback` bars ending at `t` (bar t included), `[lookback, S]`, into
    /// `out`; `false` when the source has none (the graph branch then cannot be used).
    fn returns_into(&self, _path: usize, _t: usize, _lookback: usize, _out: &mut [f32]) -> bool {
        false
    }
    /// The whole feature array when it is laid out `[P, S, T, F]` (windows contiguous), so that
    /// [`windows_into`](Self::windows_into) is a copy out of it; `None` otherwise.
    fn tech_array(&self) -> Option<TechArray<'_>> {
        None
    }
}

/// The feature array is a window source (without returns: the environment adapter adds them).
impl WindowSource for crate::features::Features {
    fn symbols(&self) -> usize {
        self.symbols
    }
    fn window(&self) -> usize {
        crate::features::WINDOW
    }
    fn features(&self) -> usize {
        crate::features::N_TECH
    }
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]) {
        let n = crate::features::WINDOW * crate::features::N_TECH;
        for (s, chunk) in out.chunks_exact_mut(n).enumerate() {
            self.window_into(path, t, s, chunk);
        }
    }
    fn tech_array(&self) -> Option<TechArray<'_>> {
        Some(TechArray {
            data: &self.tech,
            paths: self.paths,
            symbols: self.symbols,
            bars: self.bars,
            features: crate::features::N_TECH,
        })
    }
}

/// An in-memory window source: `tech [P, T, S, F]` and `returns [P, T, S]` (tests and benches).
#[derive(Debug, Clone)]
pub struct DenseWindows {
    /// Paths P.
    pub paths: usize,
    /// Bars per path T.
    pub bars: usize,
    /// Symbols S.
    pub symbols: usize,
    /// Bars per window.
    pub window: usize,
    /// Features per bar F.
    pub features: usize,
    /// `[P, T, S, F]` features.
    pub tech: Vec<f32>,
    /// `[P, T, S]` one-bar returns.
    pub returns: Vec<f32>,
}

impl DenseWindows {
    /// Pseudo-random data from `seed` (normal features, returns with a common factor).
    pub fn random(
        paths: usize,
        bars: usize,
        symbols: usize,
        window: usize,
        features: usize,
        seed: u64,
    ) -> Self {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let tech = (0..paths * bars * symbols * features)
            .map(|_| rng.normal() as f32)
            .collect();
        let mut returns = Vec::with_capacity(paths * bars * symbols);
        for _ in 0..paths * bars {
            let f = rng.normal();
            for s in 0..symbols {
                let load = (s % 4) as f64 / 4.0;
                returns.push((0.01 * (load * f + rng.normal())) as f32);
            }
        }
        Self {
            paths,
            bars,
            symbols,
            window,
            features,
            tech,
            returns,
        }
    }
}

impl WindowSource for DenseWindows {
    fn symbols(&self) -> usize {
        self.symbols
    }
    fn window(&self) -> usize {
        self.window
    }
    fn features(&self) -> usize {
        self.features
    }
    fn windows_into(&self, path: usize, t: usize, out: &mut [f32]) {
        let (w, f, s_n) = (self.window, self.features, self.symbols);
        for s in 0..s_n {
            for k in 0..w {
                let bar = t + 1 - w + k;
                let src = ((path * self.bars + bar) * s_n + s) * f;
                out[(s * w + k) * f..(s * w + k + 1) * f].copy_from_slice(&self.tech[src..src + f]);
            }
        }
    }
    fn returns_into(&self, path: usize, t: usize, lookback: usize, out: &mut [f32]) -> bool {
        let s_n = self.symbols;
        let start = (path * self.bars + t + 1 - lookback) * s_n;
        out.copy_from_slice(&self.returns[start..start + lookback * s_n]);
        true
    }
}
