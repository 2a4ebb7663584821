/*!
The bidirectional LSTM recurrence as one candle custom op with a hand-written backward pass
(backpropagation through time).

candle-nn's `LSTM::seq` runs a dozen small tensor ops per time step and direction (two matmuls,
bias adds, a chunk, four activations, the cell update), each allocating a `[B, 4H]` or `[B, H]`
tensor, and its backward pass replays them all: on the CPU that, not arithmetic, was most of the
encoder's time. Here the work is split so that everything large is a matmul:

- the input projections of **all** time steps and **both** directions are one matmul done by the
  caller with ordinary candle ops (`x [B W, F] x W_ih^T [F, 8H] + b`, so autograd handles it and its
  parameters): `xproj [B, W, 2, 4H]` (direction 0 reads bar `t` at step `t`, direction 1 reads bar
  `W - 1 - t`);
- [`BiLstmRecurrence`] then runs the `W` steps. The sequences of a batch are independent, so the
  work is split by sequence, not by step: a rayon task takes 12 batch rows (`ROWS_PER_TASK`) and
  runs all `W` steps of both directions for them, per step one matmul `h [rows, H] x W_hh^T [H, 4H]`
  (the four gates fused; gemm's kernels called directly on the task's thread) and one fused
  elementwise pass for the gates and the cell update. No synchronisation between threads per step;
  it returns the final hidden states `[2, B, H]`;
- its backward pass is split the same way: each task walks its rows' steps in reverse with the
  saved gate activations and cell states (per step one fused elementwise pass, one matmul for
  `dh` and one accumulating its share of `dW_hh`); the shares are summed in task order, so the
  result does not depend on the number of threads.

The gate order is PyTorch's and candle-nn's (input, forget, cell, output), so the parameters are
exactly candle-nn's `LSTM` ones and checkpoints load unchanged. The activations use a polynomial
`exp` (relative error below 2e-7), not libm's scalar one. The equivalence with candle-nn's LSTM
(outputs and gradients) is tested in [`super::encoder`]; the backward pass here is also checked
against finite differences.

On another device (CUDA in a `gpu` build) [`bilstm_recurrence`] runs the same recurrence composed
of candle ops ([`bilstm_recurrence_reference`]: per step the batched matmul, the gates, the cell
update; candle's autograd for the backward pass), checked against the fused op on the CPU.
*/

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `exp(x)` to within 2e-7 relative for `|x| <= 87` (Cephes' `expf` polynomial after range
/// reduction by `ln 2`), clamped outside; branch-free so that loops over it vectorise.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 87.0);
    // n = round(x / ln 2) with the 1.5 * 2^23 trick (exact for |n| < 2^22).
    // The bits of `t` are `0x4B40_0000 + n`, so `2^n` is built with integer ops only (a float to
    // int cast would be scalar, saturating code).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(t.to_bits().wrapping_add(127u32.wrapping_sub(0x4B40_0000)) << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// `tanh(x)` to within 4e-7 relative: `(1 - e^{-2|x|}) / (1 + e^{-2|x|})` with the sign of `x`,
/// and its Taylor series up to `x^9` below `|x| = 1/4`, where the difference would cancel.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = fast_exp(-2.0 * a);
    let big = ((1.0 - e) / (1.0 + e)).copysign(x);
    let x2 = x * x;
    let small = x
        * (1.0
            + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    if a < 0.25 { small } else { big }
}

/// One row of the cell: `pre` (the gates' pre-activations `(i, f, g, o)`, `4H`) becomes the
/// activations; `c` (`H`) the new cell state; `h` (`H`) the new hidden state. Slice-wise loops
/// without branches, so that they vectorise.
#[inline(always)]
fn cell_forward(pre: &mut [f32], c: &mut [f32], h: &mut [f32]) {
    let n = c.len();
    let (ifg, rest) = pre.split_at_mut(2 * n);
    let (g, o) = rest.split_at_mut(n);
    for v in ifg.iter_mut() {
        *v = sigmoid(*v);
    }
    for v in g.iter_mut() {
        *v = tanh(*v);
    }
    for v in o.iter_mut() {
        *v = sigmoid(*v);
    }
    let (i, f) = ifg.split_at(n);
    let (g, o, h) = (&g[..n], &o[..n], &mut h[..n]);
    for j in 0..n {
        let cj = f[j] * c[j] + i[j] * g[j];
        c[j] = cj;
        h[j] = o[j] * tanh(cj);
    }
}

/// One row of the cell's backward pass: from the activations `a` (`4H`), the new and old cell
/// states, the hidden-state gradient `dh` and the cell-state gradient `dc` (replaced by the
/// gradient of the old cell state), the gates' pre-activation gradients `da` (`4H`).
#[inline(always)]
fn cell_backward(
    a: &[f32],
    c_new: &[f32],
    c_old: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    da: &mut [f32],
) {
    let n = dc.len();
    let (ai, rest) = a.split_at(n);
    let (af, rest) = rest.split_at(n);
    let (ag, ao) = rest.split_at(n);
    let (di, rest) = da.split_at_mut(n);
    let (df, rest) = rest.split_at_mut(n);
    let (dg, d_o) = rest.split_at_mut(n);
    let (ao, c_new, c_old, dh) = (&ao[..n], &c_new[..n], &c_old[..n], &dh[..n]);
    let (df, dg, d_o) = (&mut df[..n], &mut dg[..n], &mut d_o[..n]);
    for j in 0..n {
        let (ig, fg, gg, og) = (ai[j], af[j], ag[j], ao[j]);
        let tc = tanh(c_new[j]);
        let dct = dc[j] + dh[j] * og * (1.0 - tc * tc);
        di[j] = dct * gg * ig * (1.0 - ig);
        df[j] = dct * c_old[j] * fg * (1.0 - fg);
        dg[j] = dct * ig * (1.0 - gg * gg);
        d_o[j] = dh[j] * tc * og * (1.0 - og);
        dc[j] = dct * fg;
    }
}

/// Whether the CPU has AVX2 and FMA, checked once: the cell loops are then compiled for them (the
/// crate's baseline target is plain x86-64, SSE2).
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn cell_forward_avx2(pre: &mut [f32], c: &mut [f32], h: &mut [f32]) {
    cell_forward(pre, c, h)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn cell_backward_avx2(
    a: &[f32],
    c_new: &[f32],
    c_old: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    da: &mut [f32],
) {
    cell_backward(a, c_new, c_old, dh, dc, da)
}

/// [`cell_forward`], with AVX2 + FMA when `avx` (the caller checked [`has_avx2_fma`]).
fn cell_forward_dispatch(avx: bool, pre: &mut [f32], c: &mut [f32], h: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: `avx` is true only when the CPU has AVX2 and FMA.
        return unsafe { cell_forward_avx2(pre, c, h) };
    }
    let _ = avx;
    cell_forward(pre, c, h)
}

/// [`cell_backward`], with AVX2 + FMA when `avx` (the caller checked [`has_avx2_fma`]).
fn cell_backward_dispatch(
    avx: bool,
    a: &[f32],
    c_new: &[f32],
    c_old: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    da: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: `avx` is true only when the CPU has AVX2 and FMA.
        return unsafe { cell_backward_avx2(a, c_new, c_old, dh, dc, da) };
    }
    let _ = avx;
    cell_backward(a, c_new, c_old, dh, dc, da)
}

/// What the forward pass keeps for the backward pass, per batch row and direction (so that a
/// task's rows are one contiguous slab of each).
#[derive(Debug)]
struct Saved {
    /// Gate activations `(i, f, g, o)` per step, `[B, 2, W, 4H]`.
    acts: Vec<f32>,
    /// Cell states `c_0 = 0, c_1, ..., c_W`, `[B, 2, W + 1, H]`.
    cells: Vec<f32>,
    /// Hidden states `h_0 = 0, ..., h_{W-1}` (the input of each step), `[B, 2, W, H]`.
    hidden: Vec<f32>,
}

/// The recurrence of a bidirectional single-layer LSTM (see the module docs): `xproj [B, W, 2, 4H]`
/// (input projections with both biases) and `w_hh [2, 4H, H]` to the final hidden states
/// `[2, B, H]`. Apply with [`bilstm_recurrence`].
#[derive(Debug)]
pub struct BiLstmRecurrence {
    save: bool,
    saved: Mutex<Option<Saved>>,
}

/// The final hidden states `[2, B, H]` (forward direction, backward direction) of the recurrence
/// over `xproj [B, W, 2, 4H]` with recurrent weights `w_hh [2, 4H, H]` (see the module docs).
/// Differentiable in both arguments.
pub fn bilstm_recurrence(xproj: &Tensor, w_hh: &Tensor) -> Result<Tensor> {
    let (b, w, two, h4) = xproj.dims4()?;
    let (two_w, h4_w, h) = w_hh.dims3()?;
    if two != 2 || two_w != 2 || h4 != h4_w || h4 != 4 * h || w == 0 {
        candle_core::bail!(
            "bilstm_recurrence: xproj {:?} and w_hh {:?} must be [B, W, 2, 4H] and [2, 4H, H]",
            xproj.dims(),
            w_hh.dims()
        )
    }
    let _ = b;
    if !matches!(xproj.device(), Device::Cpu) {
        return bilstm_recurrence_reference(xproj, w_hh);
    }
    let xproj = xproj.to_dtype(DType::F32)?.contiguous()?;
    let w_hh = w_hh.to_dtype(DType::F32)?.contiguous()?;
    // Keep the activations only when a backward pass can follow.
    let save = xproj.track_op() || w_hh.track_op();
    xproj.apply_op2(
        &w_hh,
        BiLstmRecurrence {
            save,
            saved: Mutex::new(None),
        },
    )
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(&v[a..z]),
        None => candle_core::bail!("bilstm_recurrence: {what} must be contiguous"),
    }
}

pub(crate) fn tensor_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    f(super::fused::cpu_f32(&st, l)?)
}

/// The recurrence of [`bilstm_recurrence`] composed of candle ops, on any device: per step
/// `pre = xproj[:, t | W-1-t, d] + h W_hh^T` for both directions in one batched matmul, the gates
/// (input, forget, cell, output), `c = f c + i g`, `h = o tanh(c)`; returns `[2, B, H]`. The path
/// off the CPU, and the fused op's reference.
pub fn bilstm_recurrence_reference(xproj: &Tensor, w_hh: &Tensor) -> Result<Tensor> {
    use candle_core::IndexOp;
    let (b, w, _, h4) = xproj.dims4()?;
    let h = h4 / 4;
    let w_t = w_hh.transpose(1, 2)?; // [2, H, 4H]
    let mut hs = Tensor::zeros((2, b, h), xproj.dtype(), xproj.device())?;
    let mut cs = hs.clone();
    for t in 0..w {
        let x = Tensor::stack(&[xproj.i((.., t, 0))?, xproj.i((.., w - 1 - t, 1))?], 0)?;
        let pre = if t == 0 { x } else { (x + hs.matmul(&w_t)?)? };
        let g = pre.chunk(4, 2)?;
        let (i, f) = (
            candle_nn::ops::sigmoid(&g[0])?,
            candle_nn::ops::sigmoid(&g[1])?,
        );
        let (c_in, o) = (g[2].tanh()?, candle_nn::ops::sigmoid(&g[3])?);
        cs = ((f * &cs)? + (i * c_in)?)?;
        hs = (o * cs.tanh()?)?;
    }
    Ok(hs)
}

/// Batch rows per rayon task. A task runs all `W` steps of its rows in both directions, so the
/// steps cost no synchronisation between threads; the rows are independent sequences. 8 rows is the
/// height of gemm's narrowest f32 AVX2 microkernel, and gives 18 tasks for 143 symbols.
const ROWS_PER_TASK: usize = 12;

/// `dst [m, n] = (dst if accumulate) + lhs [m, k] x rhs [k, n]` over strided f32 slices (`*_rs`
/// row stride, `*_cs` column stride; `dst`'s columns contiguous), on the calling thread: the
/// caller parallelises over row chunks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let end = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        end(m, dst_rs, n, 1) < dst.len()
            && end(m, lhs_rs, k, lhs_cs) < lhs.len()
            && end(k, rhs_rs, n, rhs_cs) < rhs.len(),
        "matmul_into: operands shorter than their shapes"
    );
    // SAFETY: every element the shapes and strides address is in bounds (checked above); `dst` is
    // borrowed mutably, so it overlaps neither `lhs` nor `rhs`; no other thread is involved.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `[2, H, 4H]`: each direction's `W_hh` (`[4H, H]`) transposed, once for all tasks and steps.
fn transposed_w_hh(w_hh: &[f32], h: usize) -> Vec<f32> {
    let h4 = 4 * h;
    let mut w_hh_t = vec![0f32; 2 * h * h4];
    for d in 0..2 {
        for j in 0..h4 {
            for k in 0..h {
                w_hh_t[(d * h + k) * h4 + j] = w_hh[(d * h4 + j) * h + k];
            }
        }
    }
    w_hh_t
}

/// Splits `v` into consecutive slabs of `per_row x rows` elements, one per task of `tasks`.
fn slabs<'a>(v: &'a mut [f32], tasks: &[(usize, usize)], per_row: usize) -> Vec<&'a mut [f32]> {
    let mut rest = v;
    tasks
        .iter()
        .map(|&(_, m)| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(m * per_row);
            rest = tail;
            head
        })
        .collect()
}

/// The tasks of a pass over `b` batch rows: `(first row, rows)`.
fn tasks(b: usize) -> Vec<(usize, usize)> {
    (0..b)
        .step_by(ROWS_PER_TASK)
        .map(|r0| (r0, ROWS_PER_TASK.min(b - r0)))
        .collect()
}

/// One task's part of the saved activations: its rows' slabs, `[m, 2, W, 4H]` etc.
struct SavedRows<'a> {
    acts: &'a mut [f32],
    cells: &'a mut [f32],
    hidden: &'a mut [f32],
}

impl BiLstmRecurrence {
    /// Run the recurrence; returns the final hidden states `[2, B, H]` (and the saved activations).
    fn run(
        xproj: &[f32],
        w_hh: &[f32],
        (b, w, h): (usize, usize, usize),
        save: bool,
    ) -> Result<(Vec<f32>, Option<Saved>)> {
        let h4 = 4 * h;
        let avx = has_avx2_fma();
        let tasks = tasks(b);
        let w_hh_t = transposed_w_hh(w_hh, h);
        let mut hs = vec![0f32; 2 * b * h];
        let (hs0, hs1) = hs.split_at_mut(b * h);
        let mut saved = save.then(|| Saved {
            acts: vec![0f32; b * 2 * w * h4],
            cells: vec![0f32; b * 2 * (w + 1) * h],
            hidden: vec![0f32; b * 2 * w * h],
        });
        let saved_rows: Vec<Option<SavedRows>> = match saved.as_mut() {
            Some(sv) => slabs(&mut sv.acts, &tasks, 2 * w * h4)
                .into_iter()
                .zip(slabs(&mut sv.cells, &tasks, 2 * (w + 1) * h))
                .zip(slabs(&mut sv.hidden, &tasks, 2 * w * h))
                .map(|((acts, cells), hidden)| {
                    Some(SavedRows {
                        acts,
                        cells,
                        hidden,
                    })
                })
                .collect(),
            None => tasks.iter().map(|_| None).collect(),
        };
        slabs(hs0, &tasks, h)
            .into_par_iter()
            .zip(slabs(hs1, &tasks, h))
            .zip(saved_rows)
            .zip(tasks.par_iter())
            .for_each(|(((h0, h1), sv), &(r0, m))| {
                Self::run_rows(xproj, &w_hh_t, (w, h), (r0, m), [h0, h1], sv, avx)
            });
        Ok((hs, saved))
    }

    /// The forward pass from the inputs, for passes that record no gradient: each task computes
    /// the input projections of its own rows (`x [m W, F] x W_ih^T + b`, both directions in one
    /// product) and runs their recurrence, so the `[B, W, 2, 4H]` projections are never
    /// materialised whole. `x [B, W, F]`, `w_ih [2, 4H, F]`, `bias [2, 4H]` (`b_ih + b_hh`),
    /// `w_hh [2, 4H, H]`; returns the final hidden states `[2, B, H]`.
    pub(crate) fn run_from_inputs(
        x: &[f32],
        (w_ih, bias): (&[f32], &[f32]),
        w_hh: &[f32],
        (b, w, f, h): (usize, usize, usize, usize),
    ) -> Vec<f32> {
        let h8 = 8 * h;
        let avx = has_avx2_fma();
        let tasks = tasks(b);
        let w_hh_t = transposed_w_hh(w_hh, h);
        let mut hs = vec![0f32; 2 * b * h];
        let (hs0, hs1) = hs.split_at_mut(b * h);
        slabs(hs0, &tasks, h)
            .into_par_iter()
            .zip(slabs(hs1, &tasks, h))
            .zip(tasks.par_iter())
            .for_each(|((h0, h1), &(r0, m))| {
                let mut xproj = vec![0f32; m * w * h8];
                let xs = &x[r0 * w * f..(r0 + m) * w * f];
                super::fused::linear_into(&mut xproj, xs, f, m * w, w_ih, bias);
                Self::run_rows(&xproj, &w_hh_t, (w, h), (0, m), [h0, h1], None, avx)
            });
        hs
    }

    /// All `W` steps of batch rows `r0 .. r0 + m` in both directions: `hc[d]` (`[m, H]`, zero on
    /// entry) ends as their final hidden states; `sv` receives what the backward pass needs.
    fn run_rows(
        xproj: &[f32],
        w_hh_t: &[f32],
        (w, h): (usize, usize),
        (r0, m): (usize, usize),
        hc: [&mut [f32]; 2],
        mut sv: Option<SavedRows>,
        avx: bool,
    ) {
        let h4 = 4 * h;
        let mut pre = vec![0f32; m * h4];
        let mut c = vec![0f32; m * h];
        for (d, hc) in hc.into_iter().enumerate() {
            // W_hh^T of direction d, [H, 4H] (row-major, so gemm reads it without packing)
            let w_d = &w_hh_t[d * h4 * h..(d + 1) * h4 * h];
            c.fill(0.0);
            for t in 0..w {
                let tau = if d == 0 { t } else { w - 1 - t };
                for k in 0..m {
                    let xo = (((r0 + k) * w + tau) * 2 + d) * h4;
                    pre[k * h4..(k + 1) * h4].copy_from_slice(&xproj[xo..xo + h4]);
                }
                if let Some(sv) = sv.as_mut() {
                    for k in 0..m {
                        let o = ((k * 2 + d) * w + t) * h;
                        sv.hidden[o..o + h].copy_from_slice(&hc[k * h..(k + 1) * h]);
                    }
                }
                if t > 0 {
                    // pre += h W_hh^T (h_0 = 0: nothing to add at the first step)
                    matmul_into((m, h4, h), &mut pre, h4, true, hc, (h, 1), w_d, (h4, 1));
                }
                for k in 0..m {
                    let row_pre = &mut pre[k * h4..(k + 1) * h4];
                    let row_c = &mut c[k * h..(k + 1) * h];
                    cell_forward_dispatch(avx, row_pre, row_c, &mut hc[k * h..(k + 1) * h]);
                    if let Some(sv) = sv.as_mut() {
                        let o = ((k * 2 + d) * w + t) * h4;
                        sv.acts[o..o + h4].copy_from_slice(row_pre);
                        let o = ((k * 2 + d) * (w + 1) + t + 1) * h;
                        sv.cells[o..o + h].copy_from_slice(row_c);
                    }
                }
            }
        }
    }

    /// The backward pass of batch rows `r0 .. r0 + m` (both directions) from the gradients of
    /// their final hidden states `dh_final[d]` (`[m, H]`): writes their slab of `dxproj`
    /// (`[m, W, 2, 4H]`) and returns their share of `dW_hh` (`[2, 4H, H]`).
    #[allow(clippy::too_many_arguments)]
    fn backward_rows(
        sv: &Saved,
        w_hh: &[f32],
        (w, h): (usize, usize),
        (r0, m): (usize, usize),
        dh_final: [&[f32]; 2],
        dx: &mut [f32],
        avx: bool,
    ) -> Vec<f32> {
        let h4 = 4 * h;
        let acts = &sv.acts[r0 * 2 * w * h4..(r0 + m) * 2 * w * h4];
        let cells = &sv.cells[r0 * 2 * (w + 1) * h..(r0 + m) * 2 * (w + 1) * h];
        let hidden = &sv.hidden[r0 * 2 * w * h..(r0 + m) * 2 * w * h];
        let mut dw = vec![0f32; 2 * h4 * h];
        let mut dc = vec![0f32; m * h];
        let mut da = vec![0f32; m * h4];
        for (d, dh_final) in dh_final.into_iter().enumerate() {
            let w_d = &w_hh[d * h4 * h..(d + 1) * h4 * h];
            let dw_d = &mut dw[d * h4 * h..(d + 1) * h4 * h];
            let mut dh = dh_final.to_vec();
            dc.fill(0.0);
            for t in (0..w).rev() {
                let tau = if d == 0 { t } else { w - 1 - t };
                for k in 0..m {
                    let a = ((k * 2 + d) * w + t) * h4;
                    let c_new = ((k * 2 + d) * (w + 1) + t + 1) * h;
                    cell_backward_dispatch(
                        avx,
                        &acts[a..a + h4],
                        &cells[c_new..c_new + h],
                        &cells[c_new - h..c_new],
                        &dh[k * h..(k + 1) * h],
                        &mut dc[k * h..(k + 1) * h],
                        &mut da[k * h4..(k + 1) * h4],
                    );
                    // dxproj [B, W, 2, 4H] (direction 1 read bar W - 1 - t)
                    let o = ((k * w + tau) * 2 + d) * h4;
                    dx[o..o + h4].copy_from_slice(&da[k * h4..(k + 1) * h4]);
                }
                if t > 0 {
                    // dW_hh += dA^T h_{t}: [4H, m] x [m, H], h_t of row k at ((k 2 + d) W + t) H
                    let h_prev = &hidden[(d * w + t) * h..];
                    matmul_into(
                        (h4, h, m),
                        dw_d,
                        h,
                        true,
                        &da,
                        (1, h4),
                        h_prev,
                        (2 * w * h, 1),
                    );
                    // dh = dA W_hh: [m, 4H] x [4H, H]
                    matmul_into((m, h, h4), &mut dh, h, false, &da, (h4, 1), w_d, (h, 1));
                }
            }
        }
        dw
    }
}

impl CustomOp2 for BiLstmRecurrence {
    fn name(&self) -> &'static str {
        "bilstm-recurrence"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, w, _, h4) = l1.shape().dims4()?;
        let h = h4 / 4;
        let xproj = f32_slice(s1, l1, "xproj")?;
        let w_hh = f32_slice(s2, l2, "w_hh")?;
        let (hs, saved) = Self::run(xproj, w_hh, (b, w, h), self.save)?;
        if saved.is_some() {
            *self.saved.lock().expect("bilstm saved state") = saved;
        }
        Ok((CpuStorage::F32(hs), Shape::from((2, b, h))))
    }

    fn bwd(
        &self,
        xproj: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, w, _, h4) = xproj.dims4()?;
        let h = h4 / 4;
        // The activations of the forward pass (recomputed if it did not keep them).
        let saved = self.saved.lock().expect("bilstm saved state").take();
        let saved = match saved {
            Some(s) => s,
            None => tensor_f32(xproj, |x| {
                tensor_f32(w_hh, |wh| Ok(Self::run(x, wh, (b, w, h), true)?.1))
            })?
            .expect("saved when asked"),
        };
        let w_hh = w_hh.to_dtype(DType::F32)?.contiguous()?; // [2, 4H, H]
        let dh: Vec<f32> = grad_res.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (dh0, dh1) = dh.split_at(b * h);
        let mut dx = vec![0f32; b * w * 2 * h4];
        let avx = has_avx2_fma();
        let tasks = tasks(b);
        // Each task's rows: their slab of dxproj and their share of dW_hh, summed in task order
        // (deterministic for any number of threads).
        let parts: Vec<Vec<f32>> = tensor_f32(&w_hh, |wh| {
            Ok(slabs(&mut dx, &tasks, w * 2 * h4)
                .into_par_iter()
                .zip(tasks.par_iter())
                .map(|(dx_rows, &(r0, m))| {
                    let g = [&dh0[r0 * h..(r0 + m) * h], &dh1[r0 * h..(r0 + m) * h]];
                    Self::backward_rows(&saved, wh, (w, h), (r0, m), g, dx_rows, avx)
                })
                .collect())
        })?;
        let mut dw = vec![0f32; 2 * h4 * h];
        for p in &parts {
            for (a, v) in dw.iter_mut().zip(p) {
                *a += v;
            }
        }
        let dw = Tensor::from_vec(dw, (2, h4, h), &Device::Cpu)?;
        let dx = Tensor::from_vec(dx, (b, w, 2, h4), &Device::Cpu)?.to_dtype(xproj.dtype())?;
        Ok((Some(dx), Some(dw.to_dtype(w_hh.dtype())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(fast_exp(-200.0) >= 0.0 && fast_exp(-200.0) < 1e-37);
        assert!(fast_exp(200.0).is_finite());
        for i in -20000..=20000 {
            let x = i as f32 * 0.001;
            let want = (x as f64).tanh();
            let tol = 4e-7 * want.abs().max(1e-30);
            assert!(
                (tanh(x) as f64 - want).abs() <= tol,
                "tanh({x}) = {}",
                tanh(x)
            );
            assert!((sigmoid(x) as f64 - 1.0 / (1.0 + (-x as f64).exp())).abs() < 3e-7);
        }
    }

    /// The op's gradients against central finite differences (in f64 of the f32 op) on a small
    /// case: every input and recurrent weight.
    #[test]
    fn backward_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (b, w, h) = (2usize, 3usize, 2usize);
        let xs: Vec<f32> = (0..b * w * 2 * 4 * h)
            .map(|i| ((i * 37 % 23) as f32 / 23.0 - 0.5) * 1.5)
            .collect();
        let ws: Vec<f32> = (0..2 * 4 * h * h)
            .map(|i| ((i * 11 % 17) as f32 / 17.0 - 0.5) * 1.2)
            .collect();
        // A fixed weighting of the outputs, so every output element matters differently.
        let coef: Vec<f32> = (0..2 * b * h).map(|i| 0.3 + 0.2 * i as f32).collect();
        let coef_t = Tensor::from_vec(coef.clone(), (2, b, h), &dev)?;
        let loss = |x: &[f32], wh: &[f32]| -> Result<f64> {
            let x = Tensor::from_slice(x, (b, w, 2, 4 * h), &dev)?;
            let wh = Tensor::from_slice(wh, (2, 4 * h, h), &dev)?;
            let y = bilstm_recurrence(&x, &wh)?;
            Ok((y * &coef_t)?.sum_all()?.to_scalar::<f32>()? as f64)
        };
        let xv = candle_core::Var::from_vec(xs.clone(), (b, w, 2, 4 * h), &dev)?;
        let wv = candle_core::Var::from_vec(ws.clone(), (2, 4 * h, h), &dev)?;
        let y = bilstm_recurrence(xv.as_tensor(), wv.as_tensor())?;
        let grads = (y * &coef_t)?.sum_all()?.backward()?;
        let gx = grads
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let gw = grads
            .get(wv.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let eps = 1e-2f32;
        let mut worst = 0f64;
        for (i, g) in gx.iter().enumerate() {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss(&p, &ws)? - loss(&m, &ws)?) / (2.0 * eps as f64);
            worst = worst.max((fd - *g as f64).abs());
        }
        for (i, g) in gw.iter().enumerate() {
            let (mut p, mut m) = (ws.clone(), ws.clone());
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss(&xs, &p)? - loss(&xs, &m)?) / (2.0 * eps as f64);
            worst = worst.max((fd - *g as f64).abs());
        }
        assert!(
            worst < 2e-3,
            "largest |analytic - finite difference| = {worst}"
        );
        // The gradient is not trivially zero.
        assert!(gx.iter().any(|g| g.abs() > 1e-2) && gw.iter().any(|g| g.abs() > 1e-2));
        Ok(())
    }

    /// The path off the CPU (candle ops) computes what the fused op does: outputs and the
    /// gradients of both inputs, at the encoder's hidden size, normwise relative error < 1e-5.
    #[test]
    fn reference_path_matches_the_fused_op() -> Result<()> {
        let dev = Device::Cpu;
        let (b, w, h) = (37usize, 7usize, 16usize);
        let xs: Vec<f32> = (0..b * w * 2 * 4 * h)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 2.0)
            .collect();
        let ws: Vec<f32> = (0..2 * 4 * h * h)
            .map(|i| ((i * 11 % 53) as f32 / 53.0 - 0.5) * 0.6)
            .collect();
        let coef = Tensor::from_vec(
            (0..2 * b * h)
                .map(|i| 0.1 + 0.01 * i as f32)
                .collect::<Vec<_>>(),
            (2, b, h),
            &dev,
        )?;
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| -> Result<[Vec<f32>; 3]> {
            let xv = candle_core::Var::from_vec(xs.clone(), (b, w, 2, 4 * h), &dev)?;
            let wv = candle_core::Var::from_vec(ws.clone(), (2, 4 * h, h), &dev)?;
            let y = f(xv.as_tensor(), wv.as_tensor())?;
            let g = (&y * &coef)?.sum_all()?.backward()?;
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            Ok([
                flat(&y)?,
                flat(g.get(xv.as_tensor()).expect("dx"))?,
                flat(g.get(wv.as_tensor()).expect("dw"))?,
            ])
        };
        let fused = run(&|x, w| bilstm_recurrence(x, w))?;
        let reference = run(&|x, w| bilstm_recurrence_reference(x, w))?;
        for (k, (a, r)) in fused.iter().zip(&reference).enumerate() {
            let num: f64 = a.iter().zip(r).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            let den: f64 = r.iter().map(|y| (*y as f64).powi(2)).sum();
            assert!(den > 0.0, "part {k} is all zero");
            assert!(
                (num / den).sqrt() < 1e-5,
                "part {k} (output, dx, dw): relative error {}",
                (num / den).sqrt()
            );
        }
        Ok(())
    }
}
