/*!
Message passing over the symbol graph.

The graph is built causally at every bar from the correlation of the symbols' recent returns:
[`correlation_graph`] takes the returns of the last `W` bars (all `<= t`) and links each symbol to
its `k` most correlated others (by absolute Pearson correlation), with edge weights
`|corr|` normalised so that each row sums to 1 (a row whose top-k correlations are all zero gets
equal weights). The diagonal is zero: a node's own state enters through its self term.

[`GraphMessagePassing`] then mixes per-symbol embeddings `h` (`[N, S, d]`) with the adjacency `A`
(`[S, S]`, or `[N, S, S]` for one graph per row) for `layers` rounds:

```text
m  = A h                                  (mean of the neighbours, weighted)
h' = LayerNorm(h + relu(W_self h + W_nbr m + b))
```

```
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{graph::{correlation_graph, GraphMessagePassing}, init::seeded_var_builder};

// 4 bars x 3 symbols: symbols 0 and 1 move together, 2 is only weakly related.
let r = [0.01f32, 0.011, 0.01, -0.02, -0.019, 0.01, 0.005, 0.006, -0.01, 0.0, 0.001, -0.01];
let adj = correlation_graph(&r, 4, 3, 1);
assert_eq!(adj.len(), 9);
assert_eq!(adj[0 * 3 + 1], 1.0); // symbol 0's single neighbour is symbol 1 (row sums to 1)

let vm = VarMap::new();
let gnn = GraphMessagePassing::new(8, 2, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let a = Tensor::from_vec(adj, (3, 3), &Device::Cpu)?;
let h = Tensor::ones((5, 3, 8), DType::F32, &Device::Cpu)?;
assert_eq!(gnn.forward_graph(&h, &a)?.dims(), &[5, 3, 8]);
# Ok::<(), candle_core::Error>(())
```
*/

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;

use super::norm::LayerNorm;

/// The demeaned return columns `[S, W]` and their norms, in f64: what a correlation reads.
struct Columns {
    w: usize,
    cols: Vec<f64>,
    norms: Vec<f64>,
}

impl Columns {
    fn new(returns: &[f32], w: usize, s: usize) -> Self {
        let mut cols = vec![0f64; w * s];
        let mut norms = vec![0f64; s];
        for j in 0..s {
            let mean = (0..w).map(|t| returns[t * s + j] as f64).sum::<f64>() / w.max(1) as f64;
            for t in 0..w {
                cols[j * w + t] = returns[t * s + j] as f64 - mean;
            }
            norms[j] = cols[j * w..(j + 1) * w]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt();
        }
        Self { w, cols, norms }
    }

    /// Pearson correlation of symbols `i` and `j` (0 when either is constant).
    fn corr(&self, i: usize, j: usize) -> f64 {
        let (w, c) = (self.w, &self.cols);
        let d = self.norms[i] * self.norms[j];
        if d <= 1e-300 {
            return 0.0;
        }
        let dot: f64 = (0..w).map(|t| c[i * w + t] * c[j * w + t]).sum();
        (dot / d).clamp(-1.0, 1.0)
    }
}

/// Row-normalised top-k adjacency `[S, S]` (row-major) from returns `[W, S]` (row-major, bar-major,
/// oldest first). Only the given bars are used, so the graph at bar t is causal when they end at t.
/// `k` is clamped to `S - 1`.
pub fn correlation_graph(returns: &[f32], w: usize, s: usize, k: usize) -> Vec<f32> {
    assert_eq!(
        returns.len(),
        w * s,
        "correlation_graph: returns must be [W, S]"
    );
    let k = k.min(s.saturating_sub(1));
    let cols = Columns::new(returns, w, s);
    let corr = |i: usize, j: usize| cols.corr(i, j);
    // |corr| of every pair once (the same bits either way round: the products and their order
    // are the same), rows in parallel.
    let mut abs_corr = vec![0f64; s * s];
    abs_corr.par_chunks_mut(s).enumerate().for_each(|(i, row)| {
        for (j, c) in row.iter_mut().enumerate().skip(i + 1) {
            *c = corr(i, j).abs();
        }
    });
    for i in 0..s {
        for j in 0..i {
            abs_corr[i * s + j] = abs_corr[j * s + i];
        }
    }
    let mut adj = vec![0f32; s * s];
    adj.par_chunks_mut(s).enumerate().for_each(|(i, out)| {
        if k == 0 {
            return;
        }
        let mut cand: Vec<(f64, usize)> = (0..s)
            .filter(|&j| j != i)
            .map(|j| (abs_corr[i * s + j], j))
            .collect();
        // Strongest first; ties by lower index, so the graph is deterministic (a total order:
        // the k first after a partial selection are those of a full sort).
        let order = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        cand.select_nth_unstable_by(k - 1, order);
        let top = &mut cand[..k];
        top.sort_by(order);
        let total: f64 = top.iter().map(|c| c.0).sum();
        for &(c, j) in top.iter() {
            out[j] = if total > 0.0 {
                (c / total) as f32
            } else {
                1.0 / k as f32
            };
        }
    });
    adj
}

/// One round of message passing.
#[derive(Debug, Clone)]
struct GraphLayer {
    self_lin: Linear,
    nbr_lin: Linear,
    norm: LayerNorm,
}

/// `layers` rounds of residual message passing over a given adjacency.
#[derive(Debug, Clone)]
pub struct GraphMessagePassing {
    layers: Vec<GraphLayer>,
}

impl GraphMessagePassing {
    /// Layers `l{i}.self`, `l{i}.nbr` (`dim -> dim`) and `l{i}.norm`.
    pub fn new(dim: usize, layers: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..layers)
            .map(|i| {
                let vb = vb.pp(format!("l{i}"));
                Ok(GraphLayer {
                    self_lin: candle_nn::linear(dim, dim, vb.pp("self"))?,
                    nbr_lin: candle_nn::linear_no_bias(dim, dim, vb.pp("nbr"))?,
                    norm: LayerNorm::new(dim, vb.pp("norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `h`: `[N, S, d]`; `adj`: `[S, S]` (shared) or `[N, S, S]` (one graph per row of `h`).
    pub fn forward_graph(&self, h: &Tensor, adj: &Tensor) -> Result<Tensor> {
        let mut h = h.clone();
        for l in &self.layers {
            let m = adj.broadcast_matmul(&h)?;
            let upd = (l.self_lin.forward(&h)? + l.nbr_lin.forward(&m)?)?.relu()?;
            h = l.norm.forward(&(h + upd)?)?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn graph_rows_are_normalised_top_k() {
        let (w, s) = (50, 6);
        let mut rng = crate::rng::SplitMix64::new(1);
        let base: Vec<f64> = (0..w).map(|_| rng.normal()).collect();
        let mut r = vec![0f32; w * s];
        for t in 0..w {
            for j in 0..s {
                // symbols 0..3 share a factor with loadings 1, 0.8, 0.6; 3..6 are noise
                let load = [1.0, 0.8, 0.6, 0.0, 0.0, 0.0][j];
                r[t * s + j] = (load * base[t] + 0.3 * rng.normal()) as f32;
            }
        }
        let adj = correlation_graph(&r, w, s, 2);
        for i in 0..s {
            let row = &adj[i * s..(i + 1) * s];
            assert_eq!(row[i], 0.0);
            assert_eq!(row.iter().filter(|v| **v > 0.0).count(), 2);
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // The factor symbols pick each other.
        assert!(adj[1] > 0.0 && adj[2] > 0.0);
        // Constant returns: zero correlations, equal weights on the first k others.
        let flat = correlation_graph(&[0.0; 12], 4, 3, 2);
        assert_eq!(flat, vec![0.0, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5, 0.0]);
    }

    /// The graph as first written: every pair's correlation computed for each row, each row's
    /// candidates fully sorted, one row after the other (over the same [`Columns`]).
    fn reference_graph(returns: &[f32], w: usize, s: usize, k: usize) -> Vec<f32> {
        let k = k.min(s.saturating_sub(1));
        let cols = Columns::new(returns, w, s);
        let corr = |i: usize, j: usize| cols.corr(i, j);
        let mut adj = vec![0f32; s * s];
        for i in 0..s {
            let mut cand: Vec<(f64, usize)> = (0..s)
                .filter(|&j| j != i)
                .map(|j| (corr(i, j).abs(), j))
                .collect();
            cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top = &cand[..k];
            let total: f64 = top.iter().map(|c| c.0).sum();
            for &(c, j) in top {
                adj[i * s + j] = if total > 0.0 {
                    (c / total) as f32
                } else {
                    1.0 / k as f32
                };
            }
        }
        adj
    }

    /// The symmetric, parallel, partially sorted graph is the reference's bit for bit: random
    /// returns, returns quantised so that many correlations tie, constant columns, every k.
    #[test]
    fn graph_equals_the_straightforward_reference() {
        let mut rng = crate::rng::SplitMix64::new(9);
        let (w, s) = (64, 37);
        let random: Vec<f32> = (0..w * s).map(|_| rng.normal() as f32).collect();
        // Two values only, and 5 constant columns: ties and zero correlations.
        let coarse: Vec<f32> = (0..w * s)
            .map(|i| {
                if i % s < 5 {
                    0.0
                } else {
                    (rng.below(2) as f32) * 0.01
                }
            })
            .collect();
        for r in [&random, &coarse] {
            for k in [0, 1, 8, 36, 50] {
                assert_eq!(
                    correlation_graph(r, w, s, k),
                    reference_graph(r, w, s, k),
                    "k = {k}"
                );
            }
        }
    }

    #[test]
    fn graph_uses_neighbours() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let g = GraphMessagePassing::new(
            4,
            1,
            crate::agents::init::seeded_var_builder(&vm, 3, DType::F32, &dev),
        )?;
        let h = Tensor::arange(0f32, 12., &dev)?.reshape((1, 3, 4))?;
        let a1 = Tensor::from_vec(vec![0f32, 1., 0., 1., 0., 0., 1., 0., 0.], (3, 3), &dev)?;
        let a2 = Tensor::from_vec(vec![0f32, 0., 1., 1., 0., 0., 1., 0., 0.], (3, 3), &dev)?;
        let y1 = g.forward_graph(&h, &a1)?.to_vec3::<f32>()?;
        let y2 = g.forward_graph(&h, &a2)?.to_vec3::<f32>()?;
        assert_ne!(
            y1[0][0], y2[0][0],
            "node 0's output depends on its neighbour"
        );
        assert_eq!(y1[0][1], y2[0][1], "same neighbours, same output");
        // Per-row graphs broadcast the same way.
        let a_batched = Tensor::stack(&[&a1, &a2], 0)?;
        let h2 = Tensor::cat(&[&h, &h], 0)?;
        let yb = g.forward_graph(&h2, &a_batched)?.to_vec3::<f32>()?;
        assert_eq!(yb[0], y1[0]);
        assert_eq!(yb[1], y2[0]);
        Ok(())
    }
}
