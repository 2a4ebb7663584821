/*!
Layer normalisation over the last axis, built from differentiable ops.

`candle_nn::LayerNorm` dispatches contiguous inputs to a fused kernel that has no backward pass (the
gradient silently stops there), so every trained model in this crate uses [`LayerNorm`] instead.
On the CPU it is one custom op ([`LayerNormOp`]) with a hand-written backward pass: one pass over
the rows forward, one backward, instead of candle-nn's `layer_norm_slow` (eight tensor ops, each a
pass over the input, and their backward passes); elsewhere it falls back to `layer_norm_slow`. The
two are tested equal, outputs and gradients.

```
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{init::seeded_var_builder, norm::LayerNorm};

let vm = VarMap::new();
let ln = LayerNorm::new(3, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let y = ln.forward(&Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu)?)?;
assert!(y.sum_all()?.to_scalar::<f32>()?.abs() < 1e-5);
# Ok::<(), candle_core::Error>(())
```
*/

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// LayerNorm with affine `weight` and `bias` (named as in candle-nn), eps 1e-5.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// A LayerNorm over the last axis of width `size` (weight 1, bias 0 at start).
    pub fn new(size: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.))?;
        Ok(Self {
            weight,
            bias,
            eps: 1e-5,
        })
    }
}

impl LayerNorm {
    /// Weight, bias and eps as plain values (the fused encoder passes, [`super::fused`]).
    pub(crate) fn fused(&self) -> Result<super::fused::Norm> {
        Ok(super::fused::Norm {
            weight: super::fused::values(&self.weight)?,
            bias: super::fused::values(&self.bias)?,
            eps: self.eps,
        })
    }

    /// The parameter tensors.
    pub(crate) fn tensors(&self) -> [&Tensor; 2] {
        [&self.weight, &self.bias]
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
            return self.forward_reference(x);
        }
        let x = x.contiguous()?;
        x.apply_op3(
            &self.weight.contiguous()?,
            &self.bias.contiguous()?,
            LayerNormOp { eps: self.eps },
        )
    }
}

impl LayerNorm {
    /// The straightforward composition of candle ops (`layer_norm_slow`), the reference the fused
    /// op is tested against and the path off the CPU.
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

/// LayerNorm over the last axis as one custom op: `(x [.., D], weight [D], bias [D]) -> y`, with
/// `y = (x - mean) / sqrt(var + eps) * weight + bias` (biased variance, as `layer_norm_slow`), and
/// its backward pass
/// `dx = rstd (dxh - mean(dxh) - xh mean(dxh xh))` with `dxh = dy weight`,
/// `dweight = sum_rows(dy xh)`, `dbias = sum_rows(dy)`. Contiguous f32 CPU tensors.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormOp {
    /// Added to the variance.
    pub eps: f32,
}

/// Rows per rayon task.
const NORM_ROWS_PER_TASK: usize = 256;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let v = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(&v[a..z]),
        None => candle_core::bail!("layer norm: inputs must be contiguous"),
    }
}

/// Mean and `1 / sqrt(var + eps)` of one row.
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The forward pass over whole rows: `y = (x - mean) / sqrt(var + eps) * w + b` per row of
/// `w.len()` values (what [`LayerNormOp`] runs; the fused encoder passes call it too).
pub(crate) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let d = w.len();
    for (yr, xr) in y.chunks_mut(d).zip(x.chunks(d)) {
        let (mean, rstd) = row_stats(xr, eps);
        for j in 0..d {
            yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1)?;
        let (w, b) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        let d = w.len();
        if d == 0 || b.len() != d || l1.shape().dims().last() != Some(&d) {
            candle_core::bail!(
                "layer norm: input {:?} and weight [{d}] disagree",
                l1.shape()
            )
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(NORM_ROWS_PER_TASK * d)
            .zip(x.par_chunks(NORM_ROWS_PER_TASK * d))
            .for_each(|(yc, xc)| layer_norm_rows(xc, w, b, self.eps, yc));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let ws: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let gs: Vec<f32> = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let eps = self.eps;
        let mut dx = vec![0f32; xs.len()];
        let chunk = NORM_ROWS_PER_TASK * d;
        // Per-task partial sums of dweight and dbias, added up afterwards.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .zip(gs.par_chunks(chunk))
            .map(|((dxc, xc), gc)| {
                let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                let mut xh = vec![0f32; d];
                for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for j in 0..d {
                        xh[j] = (xr[j] - mean) * rstd;
                        let dxh = gr[j] * ws[j];
                        m1 += dxh;
                        m2 += dxh * xh[j];
                        dw[j] += gr[j] * xh[j];
                        db[j] += gr[j];
                    }
                    let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                    for j in 0..d {
                        dxr[j] = rstd * (gr[j] * ws[j] - m1 - xh[j] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        for (pw, pb) in partial {
            for j in 0..d {
                dw[j] += pw[j];
                db[j] += pb[j];
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The fused op equals `layer_norm_slow`: outputs and the gradients of input, weight, bias.
    #[test]
    fn fused_layer_norm_matches_reference() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let ln = LayerNorm::new(
            16,
            crate::agents::init::seeded_var_builder(&vm, 4, DType::F32, &dev),
        )?;
        // Non-trivial affine parameters.
        for (name, var) in crate::agents::init::named_vars(&vm) {
            let off = if name == "weight" { 1.0 } else { 0.0 };
            let v = Tensor::arange(0f32, 16., &dev)?.affine(0.37, 0.1)?.sin()?;
            var.set(&(v + off)?)?;
        }
        // 600 rows: more than one rayon task.
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 600. * 16., &dev)?
                .reshape((20, 30, 16))?
                .affine(0.013, -3.0)?
                .sin()?
                .affine(2.0, 0.5)?,
        )?;
        let coef = Tensor::arange(0f32, 600. * 16., &dev)?
            .reshape((20, 30, 16))?
            .affine(0.7, 0.)?
            .cos()?;
        let fast = ln.forward(x.as_tensor())?;
        let slow = ln.forward_reference(x.as_tensor())?;
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(scale > 1e-2, "compared values are trivially small");
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
        };
        assert!(rel(&fast, &slow)? < 1e-5);
        let gf = (fast * &coef)?.sum_all()?.backward()?;
        let gs = (slow * &coef)?.sum_all()?.backward()?;
        let mut vars = vec![x];
        vars.extend(
            crate::agents::init::named_vars(&vm)
                .into_iter()
                .map(|(_, v)| v),
        );
        for v in vars {
            let (a, b) = (
                gf.get(v.as_tensor()).unwrap(),
                gs.get(v.as_tensor()).unwrap(),
            );
            let e = rel(a, b)?;
            assert!(e < 1e-5, "{:?}: gradient rel. error {e}", v.dims());
        }
        Ok(())
    }

    #[test]
    fn layer_norm_has_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let ln = LayerNorm::new(
            3,
            crate::agents::init::seeded_var_builder(&vm, 0, DType::F32, &dev),
        )?;
        let x = Var::new(&[[1f32, 2., 4.]], &dev)?;
        let y = ln.forward(x.as_tensor())?;
        let yv = y.to_vec2::<f32>()?;
        assert!(yv[0].iter().sum::<f32>().abs() < 1e-5);
        let grads = (y.narrow(1, 2, 1)?.sum_all()?).backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }
}
