/*!
Multi-head self-attention, written from matmul and softmax (candle-nn has none).

For an input `x` of shape `[B, L, D]` and `H` heads of size `d = D / H`:

```text
Q = x Wq^T + bq,  K = x Wk^T + bk,  V = x Wv^T + bv          (each [B, L, D], split into [B, H, L, d])
A = softmax(Q K^T / sqrt(d))                                 ([B, H, L, L], over the last axis)
y = concat_heads(A V) Wo^T + bo                              ([B, L, D])
```

Only differentiable candle ops are used (`candle_nn::ops::softmax`, not the fused
`softmax_last_dim`, which has no backward pass), so the layer trains.

```
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{attention::MultiHeadAttention, init::seeded_var_builder};

let vm = VarMap::new();
let mha = MultiHeadAttention::new(8, 2, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let x = Tensor::zeros((3, 5, 8), DType::F32, &Device::Cpu)?;
assert_eq!(mha.forward(&x)?.dims(), &[3, 5, 8]);
# Ok::<(), candle_core::Error>(())
```
*/

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// Multi-head scaled dot-product self-attention with Q/K/V/O projections.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl MultiHeadAttention {
    /// Projections `q`, `k`, `v`, `o` (each `d_model -> d_model`, with bias) under `vb`.
    pub fn new(d_model: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        if num_heads == 0 || !d_model.is_multiple_of(num_heads) {
            candle_core::bail!(
                "attention: d_model {d_model} is not a multiple of num_heads {num_heads}"
            )
        }
        let q = candle_nn::linear(d_model, d_model, vb.pp("q"))?;
        let k = candle_nn::linear(d_model, d_model, vb.pp("k"))?;
        let v = candle_nn::linear(d_model, d_model, vb.pp("v"))?;
        let o = candle_nn::linear(d_model, d_model, vb.pp("o"))?;
        Ok(Self::from_linears(q, k, v, o, num_heads))
    }

    /// Build from given projections (used by tests with hand-set weights).
    pub fn from_linears(q: Linear, k: Linear, v: Linear, o: Linear, num_heads: usize) -> Self {
        let d_model = q.weight().dims()[0];
        Self {
            q,
            k,
            v,
            o,
            num_heads,
            head_dim: d_model / num_heads,
        }
    }

    /// The projections `q`, `k`, `v`, `o`.
    pub fn projections(&self) -> [&Linear; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }

    /// Number of attention heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// `[B, L, D] -> [B, H, L, d]`
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        x.reshape((b, l, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// The attention weights `softmax(Q K^T / sqrt(d))`, `[B, H, L, L]`.
    pub fn attention_weights(&self, x: &Tensor) -> Result<Tensor> {
        self.weights_for(x, x)
    }

    /// Weights of the queries of `xq` (`[B, Lq, D]`) over the keys of `x` (`[B, L, D]`).
    fn weights_for(&self, xq: &Tensor, x: &Tensor) -> Result<Tensor> {
        let q = self.split_heads(&linear_rows(&self.q, xq)?)?;
        let k = self.split_heads(&linear_rows(&self.k, x)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (self.head_dim as f64).sqrt())?;
        candle_nn::ops::softmax(&scores, D::Minus1)
    }

    /// Attention outputs at the positions of `xq` (`[B, Lq, D]`, queries) over the sequence `x`
    /// (`[B, L, D]`, keys and values): `[B, Lq, D]`. `forward(x)` is `forward_queries(x, x)`; passing
    /// only the last position as `xq` computes that position's output alone, which is all an encoder
    /// that reads the last state needs. A single query (`Lq = 1`) takes a path without per-head
    /// matmuls (see [`Self::forward_one_query`]).
    pub fn forward_queries(&self, xq: &Tensor, x: &Tensor) -> Result<Tensor> {
        if xq.dim(1)? == 1 {
            return self.forward_one_query(xq, x);
        }
        self.forward_queries_batched(xq, x)
    }

    /// The straightforward computation: heads split out, `Q K^T` and `A V` as batched matmuls over
    /// (batch x heads).
    fn forward_queries_batched(&self, xq: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (b, lq, d_model) = xq.dims3()?;
        let attn = self.weights_for(xq, x)?;
        let v = self.split_heads(&linear_rows(&self.v, x)?)?;
        let y = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, lq, d_model))?;
        linear_rows(&self.o, &y)
    }

    /// One query per sequence (`xq`: `[B, 1, D]`) without per-head matmuls: with a 1-query problem
    /// per (sequence, head), candle's batched matmul would run `B x H` tiny products. Instead
    /// `scores[b, l, h] = sum_{j in head h} k[b, l, j] q[b, j] / sqrt(d)` is one elementwise
    /// product and one `[B L, D] x [D, H]` matmul with a head-indicator matrix, the softmax runs
    /// over `L`, and the weights are spread back to `D` columns by the transposed indicator before
    /// `sum_l a v`. The same values as the batched path (tested).
    pub fn forward_one_query(&self, xq: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (b, l, d_model) = x.dims3()?;
        let (h, dh) = (self.num_heads, self.head_dim);
        let q = linear_rows(&self.q, xq)?; // [B, 1, D]
        let k = linear_rows(&self.k, x)?; // [B, L, D]
        let v = linear_rows(&self.v, x)?;
        if let Some(y) = one_query_untracked(&q, &k, &v, h)? {
            return linear_rows(&self.o, &y);
        }
        // ind[j, h] = 1 if column j belongs to head h.
        let ind: Vec<f32> = (0..d_model)
            .flat_map(|j| (0..h).map(move |hh| if j / dh == hh { 1.0 } else { 0.0 }))
            .collect();
        let ind = Tensor::from_vec(ind, (d_model, h), x.device())?.to_dtype(x.dtype())?;
        let scores = k
            .broadcast_mul(&q)?
            .reshape((b * l, d_model))?
            .matmul(&(&ind / (dh as f64).sqrt())?)?
            .reshape((b, l, h))?;
        let a = candle_nn::ops::softmax(&scores, 1)?; // over L
        let a = a
            .reshape((b * l, h))?
            .matmul(&ind.t()?)?
            .reshape((b, l, d_model))?;
        let y = (a * v)?.sum_keepdim(1)?; // [B, 1, D]
        linear_rows(&self.o, &y)
    }
}

/// The single-query attention of [`MultiHeadAttention::forward_one_query`] (`q [B, 1, D]`, `k`
/// and `v` `[B, L, D]`, `heads` heads) in one pass over `k` and `v` per sequence, for the passes
/// that record no gradient (acting: the rollout, the policy server), f32 on the CPU: the
/// composed path runs a dozen tensor ops over `[B, L, D]` (each a pass over memory and an
/// allocation), this one none. `None` where it does not apply (a tensor that records a graph,
/// another device or dtype): the caller takes the composed path. Equal to it to float rounding
/// (tested).
fn one_query_untracked(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    if !super::fused::applies(q, &[k, v]) {
        return Ok(None);
    }
    let (b, l, d) = k.dims3()?;
    let (q, k, v) = (
        q.flatten_all()?.to_vec1::<f32>()?,
        k.flatten_all()?.to_vec1::<f32>()?,
        v.flatten_all()?.to_vec1::<f32>()?,
    );
    let mut y = vec![0f32; b * d];
    y.par_chunks_mut(d).enumerate().for_each(|(i, yi)| {
        let mut a = vec![0f32; l];
        let (ki, vi) = (
            &k[i * l * d..(i + 1) * l * d],
            &v[i * l * d..(i + 1) * l * d],
        );
        super::fused::attend_one(&q[i * d..(i + 1) * d], (ki, vi), d, (l, heads), &mut a, yi);
    });
    Ok(Some(Tensor::from_vec(
        y,
        (b, 1, d),
        &candle_core::Device::Cpu,
    )?))
}

/// `x [.., in] -> [.., out]` through `l` as one 2-D matmul over all leading rows (candle-nn's
/// `Linear` broadcasts the weight over a 3-D input's batch and runs one small matmul per batch
/// element).
pub fn linear_rows(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() <= 2 {
        return l.forward(x);
    }
    let last = dims[dims.len() - 1];
    let rows = x.elem_count() / last.max(1);
    let y = l.forward(&x.reshape((rows, last))?)?;
    let mut out = dims.to_vec();
    *out.last_mut().expect("rank >= 3") = y.dim(1)?;
    y.reshape(out)
}

impl Module for MultiHeadAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_queries(x, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn lin(w: &[[f32; 2]; 2], b: [f32; 2]) -> Linear {
        let dev = Device::Cpu;
        Linear::new(
            Tensor::new(w, &dev).unwrap(),
            Some(Tensor::new(&b, &dev).unwrap()),
        )
    }

    /// One head, d = 2, two tokens, weights set by hand.
    ///
    /// x = [[1, 2], [3, 4]], Wq = Wk = I, Wv = diag(1, 2), Wo = I, bo = [0.5, -0.5], other biases 0.
    /// Q = K = x, so the scores are x x^T / sqrt(2): x0.x0 = 5, x0.x1 = 11, x1.x1 = 25.
    ///   row 0: softmax([5, 11] / 1.41421) = softmax([3.53553, 7.77817]):
    ///          p1 = 1 / (1 + e^-4.24264) = 0.9858340, p0 = 0.0141660
    ///   row 1: softmax([11, 25] / 1.41421): p0 = 1 / (1 + e^9.89949) = 0.0000502, p1 = 0.9999498
    /// V = x diag(1, 2) = [[1, 4], [3, 8]]
    ///   y0 = 0.0141660 [1, 4] + 0.9858340 [3, 8] = [2.971668, 7.943336], + bo = [3.471668, 7.443336]
    ///   y1 = 0.0000502 [1, 4] + 0.9999498 [3, 8] = [2.999900, 7.999799], + bo = [3.499900, 7.499799]
    #[test]
    fn hand_computed_single_head() -> Result<()> {
        let eye = [[1f32, 0.], [0., 1.]];
        let mha = MultiHeadAttention::from_linears(
            lin(&eye, [0., 0.]),
            lin(&eye, [0., 0.]),
            lin(&[[1., 0.], [0., 2.]], [0., 0.]),
            lin(&eye, [0.5, -0.5]),
            1,
        );
        let x = Tensor::new(&[[[1f32, 2.], [3., 4.]]], &Device::Cpu)?;
        let a = mha.attention_weights(&x)?.squeeze(0)?.to_vec3::<f32>()?; // [H, L, L]
        assert!(
            (a[0][0][0] as f64 - 0.0141660).abs() < 1e-6
                && (a[0][0][1] as f64 - 0.9858340).abs() < 1e-6
        );
        assert!((a[0][1][0] as f64 - 0.0000502).abs() < 1e-6);
        let y = mha.forward(&x)?.to_vec3::<f32>()?;
        let want = [[3.471668f64, 7.443336], [3.499900, 7.499799]];
        for i in 0..2 {
            for j in 0..2 {
                assert!(
                    (y[0][i][j] as f64 - want[i][j]).abs() < 1e-5,
                    "y[{i}][{j}] = {}",
                    y[0][i][j]
                );
            }
        }
        Ok(())
    }

    /// Two heads are two independent one-head attentions on the two halves of the projections.
    #[test]
    fn two_heads_split_the_model_dimension() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&vm, 5, DType::F32, &dev);
        let mha = MultiHeadAttention::new(4, 2, vb)?;
        let x = Tensor::arange(0f32, 24., &dev)?
            .reshape((2, 3, 4))?
            .affine(0.1, -1.0)?;
        let a = mha.attention_weights(&x)?;
        assert_eq!(a.dims(), &[2, 2, 3, 3]);
        let row_sums = a.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
        // Gradients reach every projection.
        let xv = Var::from_tensor(&x)?;
        let loss = mha.forward(xv.as_tensor())?.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        for name in ["q.weight", "k.weight", "v.weight", "o.weight"] {
            let var = &vm.data().lock().unwrap()[name];
            let g = grads.get(var.as_tensor()).expect(name);
            assert!(
                g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                "{name} has zero grad"
            );
        }
        Ok(())
    }

    /// The single-query path equals the batched per-head matmuls, outputs and gradients.
    #[test]
    fn one_query_path_matches_batched_heads() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&vm, 11, DType::F32, &dev);
        let mha = MultiHeadAttention::new(8, 4, vb)?;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 3. * 7. * 8., &dev)?
                .reshape((3, 7, 8))?
                .affine(0.37, 0.2)?
                .sin()?,
        )?;
        let xq = x.as_tensor().narrow(1, 6, 1)?;
        let fast = mha.forward_one_query(&xq, x.as_tensor())?;
        let slow = mha.forward_queries_batched(&xq, x.as_tensor())?;
        let scale = slow.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        assert!(
            err < 1e-5 && scale > 0.1,
            "output: normwise rel. error {err}"
        );
        let coef = Tensor::arange(0f32, 24., &dev)?.reshape((3, 1, 8))?.cos()?;
        let gf = (fast * &coef)?.sum_all()?.backward()?;
        let gs = (slow * &coef)?.sum_all()?.backward()?;
        let mut vars: Vec<Var> = vec![x.clone()];
        vars.extend(
            crate::agents::init::named_vars(&vm)
                .into_iter()
                .map(|(_, v)| v),
        );
        for (i, v) in vars.iter().enumerate() {
            let (a, r) = (
                gf.get(v.as_tensor()).unwrap(),
                gs.get(v.as_tensor()).unwrap(),
            );
            let scale = r.abs()?.max_all()?.to_scalar::<f32>()?;
            // The key bias's gradient is zero in exact arithmetic (a softmax does not see a shift
            // shared by all scores): both sides are rounding noise, compared absolutely.
            let err = (a - r)?.abs()?.max_all()?.to_scalar::<f32>()? / scale.max(1e-2);
            assert!(err < 1e-5, "{:?}: gradient rel. error {err}", v.dims());
            assert!(
                i > 0 || scale > 1e-2,
                "the input gradient is trivially small"
            );
        }
        Ok(())
    }

    /// Without a graph to record (the module over detached variables), the single-query path
    /// takes the fused pass ([`one_query_untracked`]): the same outputs as the composed ops.
    #[test]
    fn untracked_one_query_matches_the_composed_path() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let tracked = MultiHeadAttention::new(
            16,
            4,
            crate::agents::init::seeded_var_builder(&vm, 3, DType::F32, &dev),
        )?;
        let untracked = MultiHeadAttention::new(
            16,
            4,
            crate::agents::init::detached_var_builder(&vm, DType::F32, &dev),
        )?;
        let x = Tensor::arange(0f32, 5. * 9. * 16., &dev)?
            .reshape((5, 9, 16))?
            .affine(0.29, 0.1)?
            .sin()?
            .affine(3.0, 0.0)?;
        let xq = x.narrow(1, 8, 1)?;
        let q = linear_rows(&untracked.q, &xq)?;
        let (k, v) = (
            linear_rows(&untracked.k, &x)?,
            linear_rows(&untracked.v, &x)?,
        );
        assert!(
            one_query_untracked(&q, &k, &v, 4)?.is_some(),
            "fused path not taken"
        );
        let fused = untracked.forward_one_query(&xq, &x)?;
        let composed = tracked.forward_one_query(&xq, &x)?;
        let scale = composed.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        assert!(scale > 0.1 && err < 1e-6, "normwise rel. error {err}");
        Ok(())
    }

    /// Querying only the last position gives the last row of the full output.
    #[test]
    fn last_query_equals_last_row() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&vm, 8, DType::F32, &dev);
        let mha = MultiHeadAttention::new(6, 3, vb)?;
        let x = Tensor::arange(0f32, 60., &dev)?
            .reshape((2, 5, 6))?
            .affine(0.05, -1.0)?;
        let full = mha.forward(&x)?.narrow(1, 4, 1)?;
        let last = mha.forward_queries(&x.narrow(1, 4, 1)?, &x)?;
        let diff = (full - last)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }
}
