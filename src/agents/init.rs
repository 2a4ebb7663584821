/*!
Deterministic parameter initialisation.

candle's CPU random generator cannot be seeded, so a model built with
`VarBuilder::from_varmap` gets different weights in every run. [`SeededVarMap`] is a
[`SimpleBackend`] that honours the same [`Init`] hints as a `VarMap` but draws the values from a
[`SplitMix64`] stream keyed by `(seed, tensor name)`: the same seed gives bit-identical weights on
every run and every device, independent of the order in which layers are built.

[`orthogonal_`] re-initialises a weight in place the way `torch.nn.init.orthogonal_` does (CleanRL's
`layer_init`), and [`named_vars`] lists a `VarMap`'s variables sorted by name, which the optimizer
and checkpoints use so that iteration order never depends on a `HashMap`.

```
use candle_core::{DType, Device};
use candle_nn::VarMap;
use marl_trade::agents::init::seeded_var_builder;

let (a, b) = (VarMap::new(), VarMap::new());
let wa = candle_nn::linear(3, 2, seeded_var_builder(&a, 7, DType::F32, &Device::Cpu).pp("l"))?;
let wb = candle_nn::linear(3, 2, seeded_var_builder(&b, 7, DType::F32, &Device::Cpu).pp("l"))?;
assert_eq!(wa.weight().to_vec2::<f32>()?, wb.weight().to_vec2::<f32>()?);
# Ok::<(), candle_core::Error>(())
```
*/

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::rng::{SplitMix64, hash2};

/// FNV-1a hash of a tensor name: the stream key of that tensor.
fn name_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The generator for tensor `name` under `seed`.
pub fn tensor_rng(seed: u64, name: &str) -> SplitMix64 {
    SplitMix64::new(hash2(seed, name_key(name)))
}

/// Draw `shape.elem_count()` values following `init` (the formulas of `candle_nn::Init::var`).
pub fn sample_init(shape: &Shape, init: Init, rng: &mut SplitMix64) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| (lo + (up - lo) * rng.uniform()) as f32;
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| uniform(rng, lo, up)).collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.normal()) as f32)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n).map(|_| uniform(rng, -bound, bound)).collect()
                }
                candle_nn::init::NormalOrUniform::Normal => {
                    (0..n).map(|_| (std * rng.normal()) as f32).collect()
                }
            }
        }
    }
}

/// Whether `varmap` holds a variable named `name`.
fn holds(varmap: &VarMap, name: &str) -> bool {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .contains_key(name)
}

/// The variable `name` of `varmap` as a tensor (an error naming it when absent).
fn stored(varmap: &VarMap, name: &str) -> Result<Tensor> {
    match varmap.data().lock().expect("varmap lock").get(name) {
        Some(v) => Ok(v.as_tensor().clone()),
        None => candle_core::bail!("cannot find tensor {name}"),
    }
}

/// A `VarMap`-backed [`SimpleBackend`] with seeded, order-independent initialisation.
pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// Initialise the variables of `varmap` from `seed`.
    pub fn new(varmap: &VarMap, seed: u64) -> Self {
        Self {
            varmap: varmap.clone(),
            seed,
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let values = sample_init(&s, h, &mut tensor_rng(self.seed, name));
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        stored(&self.varmap, name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        holds(&self.varmap, name)
    }
}

/// A [`SimpleBackend`] over the existing variables of a `VarMap` that hands out their values
/// *detached*: the same storage (so an optimizer step, a checkpoint load or any other `Var::set`
/// shows through at once), but not variables, so nothing computed from them records an autograd
/// graph or keeps activations for a backward pass. A module built from it is an untracked twin of
/// the module built from the `VarMap` (inference without the graph's memory). Every tensor asked
/// for must exist with the same shape: a missing name or another shape is an error.
pub struct DetachedVars {
    varmap: VarMap,
}

impl SimpleBackend for DetachedVars {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, _: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        match data.get(name) {
            Some(v) if v.shape() == &s && v.dtype() == dtype => Ok(v.as_tensor().detach()),
            Some(v) => candle_core::bail!(
                "untracked twin: {name} is {:?} {:?} in the VarMap, {s:?} {dtype:?} asked for",
                v.shape(),
                v.dtype()
            ),
            None => candle_core::bail!("untracked twin: {name} is not in the VarMap"),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        stored(&self.varmap, name)?
            .detach()
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        holds(&self.varmap, name)
    }
}

/// A `VarBuilder` over the variables `varmap` already holds, handing out detached views of them
/// ([`DetachedVars`]).
pub fn detached_var_builder(varmap: &VarMap, dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(DetachedVars {
            varmap: varmap.clone(),
        }),
        dtype,
        dev.clone(),
    )
}

/// A `VarBuilder` that creates seeded variables in `varmap`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededVarMap::new(varmap, seed)),
        dtype,
        dev.clone(),
    )
}

/// The variables of `varmap`, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Overwrite the variable behind `t` (a tensor obtained from a `VarBuilder`) with `values`.
pub fn set_values(t: &Tensor, values: Vec<f32>) -> Result<()> {
    if !t.is_variable() {
        candle_core::bail!("set_values: tensor is not a variable");
    }
    let var = Var::from_tensor(t)?;
    let src = Tensor::from_vec(values, t.shape(), t.device())?.to_dtype(t.dtype())?;
    var.set(&src)
}

/// A `rows x cols` matrix with orthonormal rows (if rows <= cols) or columns, times `gain`:
/// `torch.nn.init.orthogonal_` (QR of a normal matrix with the sign of R's diagonal fixed, which is
/// what Gram-Schmidt computes).
pub fn orthogonal_values(rows: usize, cols: usize, gain: f64, rng: &mut SplitMix64) -> Vec<f32> {
    // Orthonormalise the columns of a (big x small) normal matrix, then transpose if needed.
    let (big, small) = if rows < cols {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let mut q: Vec<Vec<f64>> = (0..small)
        .map(|_| (0..big).map(|_| rng.normal()).collect())
        .collect();
    for j in 0..small {
        for i in 0..j {
            let dot: f64 = (0..big).map(|r| q[i][r] * q[j][r]).sum();
            let (qi, qj) = (q[i].clone(), &mut q[j]);
            for r in 0..big {
                qj[r] -= dot * qi[r];
            }
        }
        let norm = q[j].iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        q[j].iter_mut().for_each(|v| *v /= norm);
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            // q[k] is column k of the (big x small) matrix Q.
            let v = if rows < cols { q[r][c] } else { q[c][r] };
            out[r * cols + c] = (gain * v) as f32;
        }
    }
    out
}

/// Re-initialise the 2-D weight `t` orthogonally with `gain` (in place).
pub fn orthogonal_(t: &Tensor, gain: f64, rng: &mut SplitMix64) -> Result<()> {
    let (rows, cols) = t.dims2()?;
    set_values(t, orthogonal_values(rows, cols, gain, rng))
}

/// Set every element of the variable `t` to `value` (in place).
pub fn constant_(t: &Tensor, value: f32) -> Result<()> {
    set_values(t, vec![value; t.elem_count()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_twin_shares_storage_and_records_no_graph() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let tracked = candle_nn::linear(3, 2, seeded_var_builder(&vm, 5, DType::F32, &dev))?;
        let twin = candle_nn::linear(3, 2, detached_var_builder(&vm, DType::F32, &dev))?;
        let x = Tensor::new(&[[1f32, -2., 0.5]], &dev)?;
        use candle_nn::Module;
        let (a, b) = (tracked.forward(&x)?, twin.forward(&x)?);
        assert!(
            a.track_op() && !b.track_op(),
            "the twin's output records no graph"
        );
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        // An update of the variables (an optimizer step) shows through.
        for (_, v) in named_vars(&vm) {
            v.set(&(v.as_tensor() * 2.0)?)?;
        }
        let (a, b) = (tracked.forward(&x)?, twin.forward(&x)?);
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        // A name or shape the VarMap does not hold is an error.
        assert!(
            detached_var_builder(&vm, DType::F32, &dev)
                .get((2, 3), "nope")
                .is_err()
        );
        assert!(
            detached_var_builder(&vm, DType::F32, &dev)
                .get((3, 2), "weight")
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn orthogonal_rows_and_columns() {
        let mut rng = SplitMix64::new(3);
        for (r, c) in [(4, 6), (6, 4), (5, 5)] {
            let m = orthogonal_values(r, c, 2.0, &mut rng);
            let small = r.min(c);
            // M M^T (r < c) or M^T M (r >= c) = gain^2 I.
            for i in 0..small {
                for j in 0..small {
                    let dot: f64 = if r < c {
                        (0..c)
                            .map(|k| m[i * c + k] as f64 * m[j * c + k] as f64)
                            .sum()
                    } else {
                        (0..r)
                            .map(|k| m[k * c + i] as f64 * m[k * c + j] as f64)
                            .sum()
                    };
                    let want = if i == j { 4.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "{r}x{c} ({i},{j}) {dot}");
                }
            }
        }
    }

    #[test]
    fn seeded_builder_is_deterministic_and_order_independent() -> Result<()> {
        let dev = Device::Cpu;
        let a = VarMap::new();
        let vb = seeded_var_builder(&a, 11, DType::F32, &dev);
        let x1 = vb.get_with_hints((3, 4), "x", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
        let _y1 = vb.get_with_hints(
            5,
            "y",
            Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        )?;
        let b = VarMap::new();
        let vb = seeded_var_builder(&b, 11, DType::F32, &dev);
        let _y2 = vb.get_with_hints(
            5,
            "y",
            Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        )?;
        let x2 = vb.get_with_hints((3, 4), "x", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
        assert_eq!(x1.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        let names: Vec<String> = named_vars(&b).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["x", "y"]);
        // set_values writes through to the layer's tensor.
        constant_(&x2, 0.5)?;
        assert_eq!(b.data().lock().unwrap()["x"].to_vec2::<f32>()?[2][3], 0.5);
        Ok(())
    }
}
