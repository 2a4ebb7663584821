/*!
Fused forward passes of the encoder's transformer and CNN branches for the passes that record no
gradient (acting: rollout steps, the policy server, a frozen encoder's embeddings), f32 on the CPU.

Composed of candle ops, the transformer branch over `B` windows of `W` bars runs about twenty
tensor ops, each a pass over a `[B W, D]` buffer it allocates (the input projection, its bias, the
positions, the LayerNorm, the K and V projections and their biases, ...), with a thread
synchronisation per op; the CNN branch pads, unfolds, multiplies, adds the bias and applies ReLU as
separate passes per convolution. Here the windows are split into tasks of [`WINDOWS_PER_TASK`]
windows, and a rayon task runs the whole branch for its windows, with its intermediate buffers
small enough to stay in cache and the matrix products as direct calls to the `gemm` crate's
kernels on the task's thread (K and V as one product). No synchronisation between tasks.

These are the same computations as [`super::encoder::TransformerEncoder`] (one block, the last
bar's state; see its `forward_last`) and [`super::encoder::Cnn1d`] (im2col convolutions), equal
to their composed paths to float rounding (tested in `super::encoder`); the composed paths stay
for every pass that records a graph. The caller decides: [`applies`] says whether a pass may take
the fused one.
*/

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::lstm::matmul_into;
use super::norm::layer_norm_rows;

/// Windows per rayon task: 192 rows of 24 bars, whose buffers (`[192, 64]` activations,
/// `[192, 128]` keys and values) fit in L2.
pub const WINDOWS_PER_TASK: usize = 8;

/// Whether a pass over `x` with parameters `params` may take a fused path: nothing records a graph
/// (no variable among them, no input with a graph) and every tensor is f32 on the CPU.
pub fn applies(x: &Tensor, params: &[&Tensor]) -> bool {
    std::iter::once(x)
        .chain(params.iter().copied())
        .all(|t| !t.track_op() && t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The f32 values of a contiguous CPU storage (what `storage_and_layout` hands out), in place.
pub(crate) fn cpu_f32<'a>(
    st: &'a candle_core::Storage,
    l: &candle_core::Layout,
) -> Result<&'a [f32]> {
    let candle_core::Storage::Cpu(c) = st else {
        candle_core::bail!("fused pass: a tensor is not on the CPU")
    };
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(&c.as_slice::<f32>()?[a..z]),
        None => candle_core::bail!("fused pass: a tensor is not contiguous"),
    }
}

/// A tensor's values, row-major.
pub(crate) fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// `y[r, ..] = x[r, ..] W^T + b` for `rows` rows of `x` at row stride `x_rs`, `W` `[out, in]`
/// row-major (a candle `Linear`'s weight, read in place), `y` `[rows, out]`.
pub(crate) fn linear_into(
    y: &mut [f32],
    x: &[f32],
    x_rs: usize,
    rows: usize,
    w: &[f32],
    b: &[f32],
) {
    let out = b.len();
    let inp = w.len() / out;
    matmul_into((rows, out, inp), y, out, false, x, (x_rs, 1), w, (1, inp));
    for yr in y.chunks_mut(out).take(rows) {
        for (v, bj) in yr.iter_mut().zip(b) {
            *v += bj;
        }
    }
}

/// A LayerNorm's parameters.
pub(crate) struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    fn rows(&self, x: &[f32], y: &mut [f32]) {
        layer_norm_rows(x, &self.weight, &self.bias, self.eps, y);
    }
}

/// A linear layer's parameters: `weight [out, in]`, `bias [out]`.
pub(crate) struct Dense {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Dense {
    /// From a candle-nn `Linear` (a layer without bias gets zeros).
    pub fn of(l: &candle_nn::Linear) -> Result<Self> {
        let weight = values(l.weight())?;
        let out = l.weight().dim(0)?;
        let bias = match l.bias() {
            Some(b) => values(b)?,
            None => vec![0.0; out],
        };
        Ok(Self { weight, bias })
    }
}

/// The parameters of a one-block transformer branch, read from its tensors for one pass.
pub(crate) struct TransformerParams {
    /// Bars per window `W`, features per bar `F`, width `D`, heads.
    pub window: usize,
    pub features: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Input projection `[D, F]` and the positions `[W, D]`.
    pub input: Dense,
    pub pos: Vec<f32>,
    pub ln1: Norm,
    pub q: Dense,
    /// K and V stacked: weight `[2D, D]`, bias `[2D]`.
    pub kv: Dense,
    pub o: Dense,
    pub ln2: Norm,
    pub ff1: Dense,
    pub ff2: Dense,
    pub ln_f: Norm,
}

/// candle's `gelu` (the tanh approximation), per element.
#[inline]
fn gelu(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)))
}

/// Single-query attention of one sequence: `q [D]` over `l` positions of keys `k` and values `v`
/// (position `j`'s row at `j * stride`), `heads` heads; adds `softmax(q_h k_h^T / sqrt(d)) v_h` to
/// `out [D]` per head.
pub(crate) fn attend_one(
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    stride: usize,
    (l, heads): (usize, usize),
    a: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    for hh in 0..heads {
        let cols = hh * dh..(hh + 1) * dh;
        for (j, aj) in a.iter_mut().enumerate().take(l) {
            let kj = &k[j * stride + cols.start..j * stride + cols.end];
            *aj = kj
                .iter()
                .zip(&q[cols.clone()])
                .map(|(x, y)| x * y)
                .sum::<f32>()
                * scale;
        }
        let max = a[..l].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for aj in a[..l].iter_mut() {
            *aj = (*aj - max).exp();
            sum += *aj;
        }
        let o = &mut out[cols.clone()];
        for (j, aj) in a[..l].iter().enumerate() {
            let w = aj / sum;
            for (o, x) in o
                .iter_mut()
                .zip(&v[j * stride + cols.start..j * stride + cols.end])
            {
                *o += w * x;
            }
        }
    }
}

/// The transformer branch over `x` (`[B, W, F]` row-major): `[B, D]`, the final LayerNorm of the
/// last bar's state after the block.
pub(crate) fn transformer(p: &TransformerParams, x: &[f32], b: usize) -> Vec<f32> {
    let (w, f, d) = (p.window, p.features, p.d_model);
    let mut out = vec![0f32; b * d];
    out.par_chunks_mut(WINDOWS_PER_TASK * d)
        .zip(x.par_chunks(WINDOWS_PER_TASK * w * f))
        .for_each(|(out, x)| transformer_task(p, x, out));
    out
}

/// [`transformer`] for the windows of one task (`x` `[m, W, F]`, `out` `[m, D]`).
fn transformer_task(p: &TransformerParams, x: &[f32], out: &mut [f32]) {
    let (w, f, d) = (p.window, p.features, p.d_model);
    let m = x.len() / (w * f);
    let rows = m * w;
    // h = x W_in^T + b_in + pos, as the composed path: (x W^T + b) + pos.
    let mut h = vec![0f32; rows * d];
    linear_into(&mut h, x, f, rows, &p.input.weight, &p.input.bias);
    for (r, hr) in h.chunks_mut(d).enumerate() {
        let pos = &p.pos[(r % w) * d..(r % w + 1) * d];
        for (v, pj) in hr.iter_mut().zip(pos) {
            *v += pj;
        }
    }
    let mut n = vec![0f32; rows * d];
    p.ln1.rows(&h, &mut n);
    // Keys and values of every bar in one product: kv [rows, 2D].
    let mut kv = vec![0f32; rows * 2 * d];
    linear_into(&mut kv, &n, d, rows, &p.kv.weight, &p.kv.bias);
    // The last bar's query of each window.
    let mut q = vec![0f32; m * d];
    linear_into(&mut q, &n[(w - 1) * d..], w * d, m, &p.q.weight, &p.q.bias);
    let mut y = vec![0f32; m * d];
    let mut a = vec![0f32; w];
    for i in 0..m {
        let kv_i = &kv[i * w * 2 * d..(i + 1) * w * 2 * d];
        attend_one(
            &q[i * d..(i + 1) * d],
            (kv_i, &kv_i[d..]),
            2 * d,
            (w, p.heads),
            &mut a,
            &mut y[i * d..(i + 1) * d],
        );
    }
    // h1 = (y W_o^T + b_o) + h_last
    let mut h1 = vec![0f32; m * d];
    linear_into(&mut h1, &y, d, m, &p.o.weight, &p.o.bias);
    for i in 0..m {
        let last = &h[(i * w + w - 1) * d..(i * w + w) * d];
        for (v, hl) in h1[i * d..(i + 1) * d].iter_mut().zip(last) {
            *v += hl;
        }
    }
    // h2 = h1 + ff2(gelu(ff1(ln2(h1)))), out = ln_f(h2)
    let mut t = vec![0f32; m * d];
    p.ln2.rows(&h1, &mut t);
    let ffn = p.ff1.bias.len();
    let mut g = vec![0f32; m * ffn];
    linear_into(&mut g, &t, d, m, &p.ff1.weight, &p.ff1.bias);
    for v in g.iter_mut() {
        *v = gelu(*v);
    }
    let mut h2 = vec![0f32; m * d];
    linear_into(&mut h2, &g, ffn, m, &p.ff2.weight, &p.ff2.bias);
    for (v, a) in h2.iter_mut().zip(&h1) {
        *v += a;
    }
    p.ln_f.rows(&h2, out);
}

/// One convolution of the CNN branch: `weight [out, in, k]` (candle's `Conv1d`), `bias [out]`.
pub(crate) struct Conv {
    /// `[k in, out]`: row `j in + c` holds the weights of tap `j`, input channel `c`.
    pub unfolded: Vec<f32>,
    pub bias: Vec<f32>,
    pub c_in: usize,
    pub kernel: usize,
}

impl Conv {
    /// From a candle-nn `Conv1d` (a layer without bias gets zeros).
    pub fn of(c: &candle_nn::Conv1d) -> Result<Self> {
        let (c_out, c_in, k) = c.weight().dims3()?;
        let w = values(c.weight())?;
        let mut unfolded = vec![0f32; k * c_in * c_out];
        for o in 0..c_out {
            for ci in 0..c_in {
                for j in 0..k {
                    unfolded[(j * c_in + ci) * c_out + o] = w[(o * c_in + ci) * k + j];
                }
            }
        }
        let bias = match c.bias() {
            Some(b) => values(b)?,
            None => vec![0.0; c_out],
        };
        Ok(Self {
            unfolded,
            bias,
            c_in,
            kernel: k,
        })
    }

    /// `relu(conv(x) + b)` over `m` windows of `w` bars (`x` `[m, W, in]`, same padding) into
    /// `y` `[m, W, out]`; `cols` is scratch.
    fn relu_into(&self, x: &[f32], (m, w): (usize, usize), cols: &mut Vec<f32>, y: &mut [f32]) {
        let (c, k) = (self.c_in, self.kernel);
        let pad = k / 2;
        let width = k * c;
        cols.clear();
        cols.resize(m * w * width, 0.0);
        // Row (i, t) of the unfolded input holds bars t - pad .. t + pad of window i (zero outside).
        for i in 0..m {
            for t in 0..w {
                let row = &mut cols[(i * w + t) * width..(i * w + t + 1) * width];
                for j in 0..k {
                    let src = t + j;
                    if src >= pad && src - pad < w {
                        let s = (i * w + src - pad) * c;
                        row[j * c..(j + 1) * c].copy_from_slice(&x[s..s + c]);
                    }
                }
            }
        }
        let out = self.bias.len();
        matmul_into(
            (m * w, out, width),
            y,
            out,
            false,
            cols,
            (width, 1),
            &self.unfolded,
            (out, 1),
        );
        for yr in y.chunks_mut(out) {
            for (v, bj) in yr.iter_mut().zip(&self.bias) {
                *v = (*v + bj).max(0.0);
            }
        }
    }
}

/// The CNN branch over `x` (`[B, W, F]` row-major): `[B, C]`, the mean over bars of the last
/// convolution's ReLU output.
pub(crate) fn cnn(convs: &[Conv], x: &[f32], (b, w): (usize, usize)) -> Vec<f32> {
    let (Some(first), Some(last)) = (convs.first(), convs.last()) else {
        return Vec::new();
    };
    let c_out = last.bias.len();
    let f = first.c_in;
    let mut out = vec![0f32; b * c_out];
    out.par_chunks_mut(WINDOWS_PER_TASK * c_out)
        .zip(x.par_chunks(WINDOWS_PER_TASK * w * f))
        .for_each(|(out, x)| {
            let m = x.len() / (w * f);
            let mut cols = Vec::new();
            let mut h = x.to_vec();
            for conv in convs {
                let mut y = vec![0f32; m * w * conv.bias.len()];
                conv.relu_into(&h, (m, w), &mut cols, &mut y);
                h = y;
            }
            let scale = 1.0 / w as f32;
            for (i, o) in out.chunks_mut(c_out).enumerate() {
                for t in 0..w {
                    let r = &h[(i * w + t) * c_out..(i * w + t + 1) * c_out];
                    for (a, v) in o.iter_mut().zip(r) {
                        *a += v;
                    }
                }
                for a in o.iter_mut() {
                    *a *= scale;
                }
            }
        });
    out
}
