/*!
Symbol-specific MLP heads applied with one batched matmul per layer.

Each of the `S` symbols has its own head (`in -> hidden -> out`, tanh or ReLU between layers). The weights
are stored stacked, `w0: [S, in, hidden]`, `b0: [S, 1, hidden]`, `w1: [S, hidden, out]`,
`b1: [S, 1, out]`, and an input laid out `[S, B, in]` is mapped by `x.matmul(w0)` (a batched matmul:
S independent `[B, in] x [in, out]` products in one call). With `shared = true` the leading axis has
size 1 and every symbol uses the same head. `hidden = 0` makes a head a single linear layer.

Initialisation follows CleanRL's `layer_init` scales: the hidden layer has standard deviation
`sqrt(2 / in)`, the output layer `out_gain / sqrt(hidden)` (uniform distributions with those
standard deviations), biases zero. Use `out_gain = 0.01` for a policy head (near-uniform initial
policy) and `1.0` for a value head.

```
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{heads::SymbolHeads, init::seeded_var_builder};

let vm = VarMap::new();
let heads = SymbolHeads::new(3, 5, 8, 7, false, 0.01, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let x = Tensor::ones((3, 4, 5), DType::F32, &Device::Cpu)?; // [S, B, in]
assert_eq!(heads.forward(&x)?.dims(), &[3, 4, 7]);
# Ok::<(), candle_core::Error>(())
```
*/

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Symbols per rayon task at least in the fused acting pass.
const HEADS_SYMBOLS_PER_TASK: usize = 8;

/// Rows up to which [`small_matmul`] runs its own loop instead of calling gemm.
const SMALL_ROWS: usize = 8;

/// `y [m, n] = x [m, k] x w [k, n]` (row-major). For a few rows, one pass over `w` that adds
/// `x[r, k] w[k, ..]` to every row (each weight row read once, from memory, for all rows: the
/// case of one scenario, memory-bound); for more, gemm.
fn small_matmul(y: &mut [f32], (x, k): (&[f32], usize), w: &[f32], n: usize) {
    let m = y.len() / n.max(1);
    if m > SMALL_ROWS {
        super::lstm::matmul_into((m, n, k), y, n, false, x, (k, 1), w, (n, 1));
        return;
    }
    y.fill(0.0);
    for (kk, wk) in w.chunks(n).enumerate().take(k) {
        for (r, yr) in y.chunks_mut(n).enumerate() {
            let a = x[r * k + kk];
            for (v, wv) in yr.iter_mut().zip(wk) {
                *v += a * wv;
            }
        }
    }
}

/// The non-linearity between head layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadActivation {
    /// CleanRL's choice.
    #[default]
    Tanh,
    /// Much cheaper on CPU, where candle's tanh costs ~30 ns per element (no SIMD).
    Relu,
}

impl HeadActivation {
    /// Apply the non-linearity elementwise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Tanh => x.tanh(),
            Self::Relu => x.relu(),
        }
    }
}

/// Stacked per-symbol (or one shared) MLP heads.
#[derive(Debug, Clone)]
pub struct SymbolHeads {
    /// `(w, b)` per layer: `w: [S', in, out]`, `b: [S', 1, out]`, `S' = 1` when shared.
    layers: Vec<(Tensor, Tensor)>,
    symbols: usize,
    shared: bool,
    activation: HeadActivation,
}

fn uniform_std(std: f64) -> Init {
    let bound = 3f64.sqrt() * std;
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl SymbolHeads {
    /// `symbols` heads `in_dim -> hidden -> out_dim` (`hidden = 0`: one linear layer) under `vb`
    /// (`w0`, `b0`, `w1`, `b1`).
    pub fn new(
        symbols: usize,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        shared: bool,
        out_gain: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let s = if shared { 1 } else { symbols };
        let mut dims = vec![in_dim];
        if hidden > 0 {
            dims.push(hidden);
        }
        dims.push(out_dim);
        let n = dims.len() - 1;
        let mut layers = Vec::with_capacity(n);
        for l in 0..n {
            let (i, o) = (dims[l], dims[l + 1]);
            let gain = if l + 1 == n { out_gain } else { 2f64.sqrt() };
            let w = vb.get_with_hints(
                (s, i, o),
                &format!("w{l}"),
                uniform_std(gain / (i as f64).sqrt()),
            )?;
            let b = vb.get_with_hints((s, 1, o), &format!("b{l}"), Init::Const(0.))?;
            layers.push((w, b));
        }
        Ok(Self {
            layers,
            symbols,
            shared,
            activation: HeadActivation::Tanh,
        })
    }

    /// Use `activation` between layers (the default is tanh).
    pub fn with_activation(mut self, activation: HeadActivation) -> Self {
        self.activation = activation;
        self
    }

    /// Number of symbols S.
    pub fn symbols(&self) -> usize {
        self.symbols
    }

    /// Whether one head serves every symbol.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// `x`: `[S, B, in]` (rows grouped by symbol) -> `[S, B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.dim(0)?;
        if s != self.symbols {
            candle_core::bail!("heads: input has {s} symbols, the heads {}", self.symbols)
        }
        let (w, bias) = &self.layers[0];
        let h = self.matmul(x, w)?.broadcast_add(bias)?;
        self.rest(h)
    }

    /// `x [S, B, i] x w [S', i, o]`: one batched matmul (`S' = S`) or one plain matmul (shared).
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.shared {
            let (s, b, i) = x.dims3()?;
            let w = w.squeeze(0)?;
            let o = w.dim(1)?;
            x.reshape((s * b, i))?.matmul(&w)?.reshape((s, b, o))
        } else {
            x.contiguous()?.matmul(w)
        }
    }

    /// Layers 1.. applied to the pre-activation `h` of layer 0.
    fn rest(&self, mut h: Tensor) -> Result<Tensor> {
        for (w, bias) in &self.layers[1..] {
            h = self
                .matmul(&self.activation.apply(&h)?, w)?
                .broadcast_add(bias)?;
        }
        Ok(h)
    }

    /// The same as [`forward`](Self::forward) on `concat(shared[:, group], private)` (feature axis),
    /// without building that concatenation: the first layer's product with the `shared` part
    /// (`[S, G, Es]`, e.g. the embeddings of G distinct bars) is computed once per distinct bar and
    /// gathered by `group` (`[B]` u32), the `private` part (`[S, B, Dp]`) is multiplied per row.
    /// For 128 scenarios at one bar, the `Es`-wide product runs once instead of 128 times.
    pub fn forward_split(
        &self,
        shared: &Tensor,
        group: &Tensor,
        private: &Tensor,
    ) -> Result<Tensor> {
        let (s, _g, es) = shared.dims3()?;
        let (s2, _b, dp) = private.dims3()?;
        let (w0, b0) = &self.layers[0];
        let in_dim = w0.dim(1)?;
        if s != self.symbols || s2 != self.symbols || es + dp != in_dim {
            candle_core::bail!(
                "heads: split input [{s}, _, {es}] + [{s2}, _, {dp}], the heads need {} symbols x {in_dim}",
                self.symbols
            )
        }
        if let Some(y) = self.forward_split_fused(shared, group, private)? {
            return Ok(y);
        }
        let h_shared = self.matmul(shared, &w0.narrow(1, 0, es)?)?; // [S, G, o]
        let h_private = self.matmul(private, &w0.narrow(1, es, dp)?)?; // [S, B, o]
        let h = (h_shared.index_select(group, 1)? + h_private)?.broadcast_add(b0)?;
        self.rest(h)
    }

    /// [`forward_split`](Self::forward_split) for the passes that record no gradient (acting),
    /// f32 on the CPU, per-symbol heads: the symbols split among rayon tasks, each running its
    /// symbols' whole heads and reading their weights in place. candle runs the `S` products of a
    /// batched matmul one after the other, each too small to split among threads; with one row
    /// per symbol (one scenario acting) the pass is a read of every head's weights, which then
    /// gets one core's memory bandwidth. `None` where it does not apply.
    fn forward_split_fused(
        &self,
        shared: &Tensor,
        group: &Tensor,
        private: &Tensor,
    ) -> Result<Option<Tensor>> {
        let params: Vec<&Tensor> = self.layers.iter().flat_map(|(w, b)| [w, b]).collect();
        if self.shared
            || group.dtype() != candle_core::DType::U32
            || !super::fused::applies(shared, &params)
            || !super::fused::applies(private, &[])
        {
            return Ok(None);
        }
        let (s, g, es) = shared.dims3()?;
        let (_, b, dp) = private.dims3()?;
        let group: Vec<u32> = group.to_vec1()?;
        if let Some(&bad) = group.iter().find(|&&i| i as usize >= g) {
            candle_core::bail!("heads: group index {bad} >= {g} shared rows")
        }
        let dims: Vec<(usize, usize)> = self
            .layers
            .iter()
            .map(|(w, _)| Ok((w.dim(1)?, w.dim(2)?)))
            .collect::<Result<_>>()?;
        let out = dims.last().map_or(0, |d| d.1);
        let tensors: Vec<Tensor> = [shared, private]
            .into_iter()
            .chain(params)
            .map(|t| t.contiguous())
            .collect::<Result<_>>()?;
        let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
        let v = guards
            .iter()
            .map(|(st, l)| super::fused::cpu_f32(st, l))
            .collect::<Result<Vec<&[f32]>>>()?;
        let (sh, pr, ws) = (v[0], v[1], &v[2..]);
        let mut y = vec![0f32; s * b * out];
        if y.is_empty() {
            return Ok(Some(Tensor::from_vec(y, (s, b, out), shared.device())?));
        }
        y.par_chunks_mut(b * out)
            .with_min_len(HEADS_SYMBOLS_PER_TASK)
            .enumerate()
            .for_each(|(sym, ys)| {
                let layers: Vec<(&[f32], &[f32])> = dims
                    .iter()
                    .enumerate()
                    .map(|(l, &(i, o))| {
                        let (w, bias) = (ws[2 * l], ws[2 * l + 1]);
                        (
                            &w[sym * i * o..(sym + 1) * i * o],
                            &bias[sym * o..(sym + 1) * o],
                        )
                    })
                    .collect();
                self.fused_symbol(
                    &layers,
                    (&sh[sym * g * es..(sym + 1) * g * es], es),
                    (&pr[sym * b * dp..(sym + 1) * b * dp], dp),
                    &group,
                    ys,
                );
            });
        Ok(Some(Tensor::from_vec(y, (s, b, out), shared.device())?))
    }

    /// One symbol's head for [`forward_split_fused`](Self::forward_split_fused): `layers` its
    /// `(weight [in, o], bias [o])` per layer, `sh [G, es]` and `pr [B, dp]` its inputs; writes
    /// `y [B, out]`. The first layer as in `forward_split`: the shared part once per distinct
    /// row, gathered by `group`, plus the private part, plus the bias.
    fn fused_symbol(
        &self,
        layers: &[(&[f32], &[f32])],
        (sh, es): (&[f32], usize),
        (pr, dp): (&[f32], usize),
        group: &[u32],
        y: &mut [f32],
    ) {
        let b = group.len();
        let g = sh.len() / es.max(1);
        let Some(((w0, b0), rest)) = layers.split_first() else {
            return;
        };
        let o = b0.len();
        let mut h_shared = vec![0f32; g * o];
        small_matmul(&mut h_shared, (sh, es), &w0[..es * o], o);
        let mut h = vec![0f32; b * o];
        small_matmul(&mut h, (pr, dp), &w0[es * o..], o);
        for (r, hr) in h.chunks_mut(o).enumerate() {
            let hs = &h_shared[group[r] as usize * o..(group[r] as usize + 1) * o];
            for ((v, a), c) in hr.iter_mut().zip(hs).zip(*b0) {
                *v = (a + *v) + c;
            }
        }
        for &(w, bias) in rest {
            let o = bias.len();
            for v in h.iter_mut() {
                *v = match self.activation {
                    HeadActivation::Tanh => v.tanh(),
                    HeadActivation::Relu => v.max(0.0),
                };
            }
            let k = w.len() / o;
            let mut next = vec![0f32; b * o];
            small_matmul(&mut next, (&h, k), w, o);
            for hr in next.chunks_mut(o) {
                for (v, c) in hr.iter_mut().zip(bias) {
                    *v += c;
                }
            }
            h = next;
        }
        y.copy_from_slice(&h);
    }

    /// The input of the output layer for the split input of [`forward_split`](Self::forward_split):
    /// `[S, B, K]`, the last hidden layer's activations (`K = hidden`), or for a linear head the
    /// input itself (`concat(shared[:, group], private)`, `K = in`). `forward_split` is this times
    /// the output layer's weights plus its bias.
    pub fn output_inputs_split(
        &self,
        shared: &Tensor,
        group: &Tensor,
        private: &Tensor,
    ) -> Result<Tensor> {
        if self.layers.len() == 1 {
            let gathered = shared.index_select(group, 1)?;
            return Tensor::cat(&[&gathered, &private.to_dtype(gathered.dtype())?], 2);
        }
        let (w0, b0) = &self.layers[0];
        let es = shared.dim(2)?;
        let dp = private.dim(2)?;
        let h_shared = self.matmul(shared, &w0.narrow(1, 0, es)?)?;
        let h_private = self.matmul(private, &w0.narrow(1, es, dp)?)?;
        let mut h = (h_shared.index_select(group, 1)? + h_private)?.broadcast_add(b0)?;
        let n = self.layers.len();
        for (w, bias) in &self.layers[1..n - 1] {
            h = self
                .matmul(&self.activation.apply(&h)?, w)?
                .broadcast_add(bias)?;
        }
        self.activation.apply(&h)
    }

    /// The output layer's weights `[S', K, out]` and bias `[S', 1, out]` (`S' = 1` when shared),
    /// variables of the `VarMap` the heads were built from.
    pub fn output_layer(&self) -> &(Tensor, Tensor) {
        self.layers.last().expect("heads have at least one layer")
    }

    /// Rows of arbitrary symbols: `x: [R, in]`, `symbol: [R]` (u32) -> `[R, out]`. The weights of
    /// each row's symbol are gathered and applied as one batched `[R, 1, in] x [R, in, out]` matmul.
    pub fn forward_indexed(&self, x: &Tensor, symbol: &Tensor) -> Result<Tensor> {
        let (r, _) = x.dims2()?;
        let n = self.layers.len();
        let mut h = x.unsqueeze(1)?; // [R, 1, in]
        for (l, (w, bias)) in self.layers.iter().enumerate() {
            h = if self.shared {
                h.broadcast_matmul(&w.squeeze(0)?)?
                    .broadcast_add(&bias.squeeze(0)?)?
            } else {
                h.matmul(&w.index_select(symbol, 0)?)?
                    .broadcast_add(&bias.index_select(symbol, 0)?)?
            };
            if l + 1 < n {
                h = self.activation.apply(&h)?;
            }
        }
        let o = h.dim(2)?;
        h.reshape((r, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};

    /// The batched matmul equals S separate per-symbol MLPs, and forward_indexed agrees with forward.
    #[test]
    fn batched_heads_match_per_symbol_loops() -> Result<()> {
        let dev = Device::Cpu;
        for shared in [false, true] {
            let vm = candle_nn::VarMap::new();
            let heads = SymbolHeads::new(
                3,
                4,
                5,
                2,
                shared,
                1.0,
                crate::agents::init::seeded_var_builder(&vm, 9, DType::F32, &dev),
            )?;
            let x = Tensor::arange(0f32, 24., &dev)?
                .reshape((3, 2, 4))?
                .affine(0.1, -1.)?;
            let y = heads.forward(&x)?;
            let data = vm.data().lock().unwrap();
            for s in 0..3 {
                let k = if shared { 0 } else { s };
                let w0 = data["w0"].as_tensor().i(k)?;
                let b0 = data["b0"].as_tensor().i(k)?;
                let w1 = data["w1"].as_tensor().i(k)?;
                let b1 = data["b1"].as_tensor().i(k)?;
                let h = x.i(s)?.matmul(&w0)?.broadcast_add(&b0)?.tanh()?;
                let want = h.matmul(&w1)?.broadcast_add(&b1)?;
                let diff = (y.i(s)? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-6, "symbol {s}: {diff}");
            }
            drop(data);
            // Same rows through forward_indexed: [S*B, in] with symbol ids.
            let flat = x.reshape((6, 4))?;
            let ids = Tensor::new(&[0u32, 0, 1, 1, 2, 2], &dev)?;
            let yi = heads.forward_indexed(&flat, &ids)?;
            let diff = (yi - y.reshape((6, 2))?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn heads_differ_per_symbol_unless_shared() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let heads = SymbolHeads::new(
            2,
            3,
            0,
            2,
            false,
            1.0,
            crate::agents::init::seeded_var_builder(&vm, 1, DType::F32, &dev),
        )?;
        let x = Tensor::ones((2, 1, 3), DType::F32, &dev)?;
        let y = heads.forward(&x)?.to_vec3::<f32>()?;
        assert_ne!(y[0], y[1]);
        assert_eq!(vm.data().lock().unwrap()["w0"].dims(), &[2, 3, 2]);
        Ok(())
    }

    /// The fused acting pass (an untracked twin of the heads) equals the composed one over the
    /// same variables: per-symbol heads with and without a hidden layer, tanh and ReLU, biases
    /// away from zero, few rows per symbol (its own loop) and many (gemm), a group that repeats
    /// and skips shared rows; the tracked heads never take it, and a group index out of range is
    /// an error.
    #[test]
    fn fused_acting_pass_matches_the_composed_one() -> Result<()> {
        let dev = Device::Cpu;
        let det = |shape: (usize, usize, usize), seed: u64| -> Result<Tensor> {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let n = shape.0 * shape.1 * shape.2;
            let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            Tensor::from_vec(v, shape, &dev)
        };
        for (hidden, act, g, b) in [
            (16, HeadActivation::Tanh, 1, 1),
            (16, HeadActivation::Relu, 3, 5),
            (16, HeadActivation::Tanh, 4, 37),
            (0, HeadActivation::Tanh, 2, 9),
        ] {
            let vm = candle_nn::VarMap::new();
            let vb = crate::agents::init::seeded_var_builder(&vm, 4, DType::F32, &dev);
            let heads =
                SymbolHeads::new(11, 12 + 3, hidden, 7, false, 1.0, vb)?.with_activation(act);
            for (i, (_, v)) in crate::agents::init::named_vars(&vm).iter().enumerate() {
                let (a, b, c) = v.dims3()?;
                v.set(&(v.as_tensor() + det((a, b, c), 50 + i as u64)?.affine(0.1, 0.0)?)?)?;
            }
            let ivb = crate::agents::init::detached_var_builder(&vm, DType::F32, &dev);
            let twin =
                SymbolHeads::new(11, 12 + 3, hidden, 7, false, 1.0, ivb)?.with_activation(act);
            let shared = det((11, g, 12), 1)?;
            let private = det((11, b, 3), 2)?;
            let group: Vec<u32> = (0..b).map(|r| ((r * 7) % g) as u32).collect();
            let group = Tensor::from_vec(group, b, &dev)?;
            assert!(
                heads
                    .forward_split_fused(&shared, &group, &private)?
                    .is_none()
            );
            let fused = twin
                .forward_split_fused(&shared, &group, &private)?
                .expect("the twin takes the fused pass");
            let composed = heads.forward_split(&shared, &group, &private)?;
            assert_eq!(fused.dims(), composed.dims());
            let scale = composed.abs()?.max_all()?.to_scalar::<f32>()?;
            let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= 1e-5 * scale,
                "hidden {hidden}, {g} x {b}: {diff} (scale {scale})"
            );
        }
        let vm = candle_nn::VarMap::new();
        SymbolHeads::new(
            2,
            4,
            3,
            2,
            false,
            1.0,
            crate::agents::init::seeded_var_builder(&vm, 1, DType::F32, &dev),
        )?;
        let twin = SymbolHeads::new(
            2,
            4,
            3,
            2,
            false,
            1.0,
            crate::agents::init::detached_var_builder(&vm, DType::F32, &dev),
        )?;
        let err = twin
            .forward_split_fused(
                &det((2, 1, 3), 1)?,
                &Tensor::new(&[1u32], &dev)?,
                &det((2, 1, 1), 2)?,
            )
            .unwrap_err();
        assert!(err.to_string().contains("group index 1"), "{err}");
        Ok(())
    }

    /// forward_split == forward on the explicit concatenation, per-symbol and shared.
    #[test]
    fn split_first_layer_equals_concatenation() -> Result<()> {
        let dev = Device::Cpu;
        for (shared, hidden) in [(false, 6), (true, 6), (false, 0)] {
            let vm = candle_nn::VarMap::new();
            let vb = crate::agents::init::seeded_var_builder(&vm, 2, DType::F32, &dev);
            let heads = SymbolHeads::new(3, 5 + 2, hidden, 4, shared, 1.0, vb)?;
            let emb = Tensor::arange(0f32, 3. * 2. * 5., &dev)?
                .reshape((3, 2, 5))?
                .affine(0.1, -1.)?
                .sin()?; // [S, G=2, 5]
            let private = Tensor::arange(0f32, 3. * 4. * 2., &dev)?
                .reshape((3, 4, 2))?
                .affine(0.2, -0.7)?; // [S, B=4, 2]
            let group = Tensor::new(&[1u32, 0, 1, 1], &dev)?;
            let x = Tensor::cat(&[&emb.index_select(&group, 1)?, &private], 2)?;
            let want = heads.forward(&x)?;
            let got = heads.forward_split(&emb, &group, &private)?;
            let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "shared {shared} hidden {hidden}: {diff}");
        }
        Ok(())
    }
}
