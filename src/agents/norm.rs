/*!
Layer normalisation over the last axis, built from differentiable ops.

`candle_nn::LayerNorm` dispatches contiguous inputs to a fused kernel that has no backward pass (the
gradient silently stops there), so every trained model in this crate uses [`LayerNorm`] instead.

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

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

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

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

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
