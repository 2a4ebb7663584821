/*!
The shared encoder: one embedding per (symbol, bar) from the symbol's technical window.

Input: the windows of all `S` symbols at `G` bars, `[G, S, W, F]` (`W = 24` bars, `F = 23`
features, oldest bar first), and optionally the symbol graph of each bar (see [`super::graph`]).
Output: `[G, S, embed_dim]`.

Branches, each of which can be switched off and sized in [`EncoderConfig`]:

- **transformer**: `Linear(F -> d)` + learned positional embedding `[W, d]`, `layers` pre-LN blocks
  (`x + MHA(LN(x))`, `x + FFN(LN(x))` with a GELU FFN), a final LayerNorm; the state of the last
  (most recent) bar is the output (`d`).
- **lstm**: a bidirectional LSTM built from two candle-nn LSTMs, the second run over the reversed
  window; the output is the concatenation of both final hidden states (`2 * hidden`).
- **cnn**: 1-D convolutions over time (same padding, ReLU), global average pool (`channels.last()`).
- **graph**: the concatenation of the enabled sequence branches (or the last bar's raw features when
  none is enabled) is projected to `dim`, mixed over the symbol graph and appended.

Fusion: `relu(Linear(concat(branches) -> embed_dim))`.

Everything the encoder computes depends on (bar, symbol) only, never on the scenario, so a batch of
scenarios that sit at the same bar shares one encoder pass (see [`super::symbol`]).

```
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use marl_trade::agents::{encoder::{EncoderConfig, SharedEncoder, WindowShape}, init::seeded_var_builder};

let cfg = EncoderConfig::tiny();
let vm = VarMap::new();
let shape = WindowShape::TECH; // 24 bars x 23 features, the feature array's windows
let enc = SharedEncoder::new(&cfg, shape, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
let windows = Tensor::zeros((2, 5, shape.window, shape.features), DType::F32, &Device::Cpu)?;
let adj = Tensor::zeros((5, 5), DType::F32, &Device::Cpu)?;
assert_eq!(enc.forward(&windows, Some(&adj))?.dims(), &[2, 5, cfg.embed_dim]);
# Ok::<(), Box<dyn std::error::Error>>(())
```
*/

use candle_core::{D, DType, IndexOp, Module, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::attention::{MultiHeadAttention, linear_rows};
use super::graph::GraphMessagePassing;
use super::norm::LayerNorm;
use crate::error::Error;

/// The shape of one symbol's window, `[window, features]`: not configuration, it is the shape of
/// the data the encoder reads (the feature array's, [`WindowShape::TECH`], in the trading system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowShape {
    /// Bars per window.
    pub window: usize,
    /// Features per bar.
    pub features: usize,
}

impl WindowShape {
    /// The technical windows of the feature array: `features::WINDOW` bars x `features::N_TECH`.
    pub const TECH: Self = Self {
        window: crate::features::WINDOW,
        features: crate::features::N_TECH,
    };
}

/// Sizes and switches of the shared encoder. Defaults are the design sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// Size of the fused embedding.
    pub embed_dim: usize,
    /// The transformer branch.
    pub transformer: TransformerConfig,
    /// The bidirectional LSTM branch.
    pub lstm: LstmConfig,
    /// The 1-D convolution branch.
    pub cnn: CnnConfig,
    /// The correlation-graph message-passing branch.
    pub graph: GraphConfig,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            embed_dim: 256,
            transformer: TransformerConfig::default(),
            lstm: LstmConfig::default(),
            cnn: CnnConfig::default(),
            graph: GraphConfig::default(),
        }
    }
}

/// The transformer branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Whether the branch is part of the encoder.
    pub enabled: bool,
    /// Model width `d` (a multiple of `heads`).
    pub d_model: usize,
    /// Attention heads (`d_model` must be a multiple).
    pub heads: usize,
    /// Hidden width of the feed-forward sub-layer.
    pub ffn_dim: usize,
    /// Number of blocks.
    pub layers: usize,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            d_model: 64,
            heads: 4,
            ffn_dim: 128,
            layers: 1,
        }
    }
}

/// The bidirectional LSTM branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LstmConfig {
    /// Whether the branch is part of the encoder.
    pub enabled: bool,
    /// Hidden size per direction (the branch outputs `2 * hidden`).
    pub hidden: usize,
}

impl Default for LstmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hidden: 64,
        }
    }
}

/// The 1-D CNN branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Whether the branch is part of the encoder.
    pub enabled: bool,
    /// Output channels of each convolution, in order.
    pub channels: Vec<usize>,
    /// Kernel size (odd: same padding keeps the length).
    pub kernel: usize,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            channels: vec![32, 64],
            kernel: 3,
        }
    }
}

/// The symbol-graph branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphConfig {
    /// Whether the branch is part of the encoder.
    pub enabled: bool,
    /// Node embedding width.
    pub dim: usize,
    /// Message-passing rounds.
    pub layers: usize,
    /// Neighbours per symbol in the correlation graph.
    pub k: usize,
    /// Bars of returns the correlation is estimated on (ending at the current bar).
    pub lookback: usize,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dim: 64,
            layers: 1,
            k: 8,
            lookback: 64,
        }
    }
}

impl EncoderConfig {
    /// A small encoder for tests and CI: every branch on, all widths tiny.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 16,
            transformer: TransformerConfig {
                enabled: true,
                d_model: 8,
                heads: 2,
                ffn_dim: 16,
                layers: 1,
            },
            lstm: LstmConfig {
                enabled: true,
                hidden: 4,
            },
            cnn: CnnConfig {
                enabled: true,
                channels: vec![4],
                kernel: 3,
            },
            graph: GraphConfig {
                enabled: true,
                dim: 8,
                layers: 1,
                k: 2,
                lookback: 16,
            },
        }
    }

    /// Check the sizes; an error names the offending field (`origin` names the config source).
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        let bad = |field: &str, why: &str| Err(Error::config_field(origin, field, why.to_string()));
        if self.embed_dim == 0 {
            return bad("encoder.embed_dim", "must be >= 1");
        }
        let t = &self.transformer;
        if t.enabled {
            if t.heads == 0 || t.d_model == 0 || !t.d_model.is_multiple_of(t.heads) {
                return bad(
                    "encoder.transformer.d_model",
                    "must be a positive multiple of heads",
                );
            }
            if t.ffn_dim == 0 {
                return bad("encoder.transformer.ffn_dim", "must be >= 1");
            }
        }
        if self.lstm.enabled && self.lstm.hidden == 0 {
            return bad("encoder.lstm.hidden", "must be >= 1");
        }
        let c = &self.cnn;
        if c.enabled {
            if c.channels.is_empty() || c.channels.contains(&0) {
                return bad("encoder.cnn.channels", "needs at least one positive width");
            }
            if c.kernel.is_multiple_of(2) {
                return bad("encoder.cnn.kernel", "must be odd");
            }
        }
        let g = &self.graph;
        if g.enabled {
            if g.dim == 0 || g.layers == 0 {
                return bad("encoder.graph.dim", "dim and layers must be >= 1");
            }
            if g.lookback < 2 {
                return bad("encoder.graph.lookback", "must be >= 2");
            }
        }
        Ok(())
    }

    /// Width of the concatenated sequence branches (the graph's input) for windows of `features`
    /// features per bar (the last bar's raw features when no branch is on).
    pub fn base_dim(&self, features: usize) -> usize {
        let mut d = 0;
        if self.transformer.enabled {
            d += self.transformer.d_model;
        }
        if self.lstm.enabled {
            d += 2 * self.lstm.hidden;
        }
        if self.cnn.enabled {
            d += *self.cnn.channels.last().unwrap_or(&0);
        }
        if d == 0 { features } else { d }
    }
}

/// One pre-LN transformer block.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    ln1: LayerNorm,
    attn: MultiHeadAttention,
    ln2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

impl TransformerBlock {
    /// A block of width `d_model` with `heads` heads and a feed-forward width `ffn_dim`.
    pub fn new(d_model: usize, heads: usize, ffn_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: LayerNorm::new(d_model, vb.pp("ln1"))?,
            attn: MultiHeadAttention::new(d_model, heads, vb.pp("attn"))?,
            ln2: LayerNorm::new(d_model, vb.pp("ln2"))?,
            ff1: candle_nn::linear(d_model, ffn_dim, vb.pp("ff1"))?,
            ff2: candle_nn::linear(ffn_dim, d_model, vb.pp("ff2"))?,
        })
    }
}

impl Module for TransformerBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?)?)?;
        let ff = linear_rows(
            &self.ff2,
            &linear_rows(&self.ff1, &self.ln2.forward(&x)?)?.gelu()?,
        )?;
        x + ff
    }
}

impl TransformerBlock {
    /// The block's output at the last position only, `[B, L, D] -> [B, 1, D]`: the same values as
    /// `forward(x).narrow(1, L - 1, 1)`, without the queries and feed-forward of other positions.
    pub fn forward_last(&self, x: &Tensor) -> Result<Tensor> {
        let l = x.dim(1)?;
        let n = self.ln1.forward(x)?;
        let h =
            (x.narrow(1, l - 1, 1)? + self.attn.forward_queries(&n.narrow(1, l - 1, 1)?, &n)?)?;
        let ff = linear_rows(
            &self.ff2,
            &linear_rows(&self.ff1, &self.ln2.forward(&h)?)?.gelu()?,
        )?;
        h + ff
    }
}

/// Transformer over the window: `[B, W, F] -> [B, d]` (state of the last bar).
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    input: Linear,
    pos: Tensor,
    blocks: Vec<TransformerBlock>,
    ln_f: LayerNorm,
}

impl TransformerEncoder {
    /// The encoder of `cfg` over windows of `window` bars x `features` features.
    pub fn new(
        window: usize,
        features: usize,
        cfg: &TransformerConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let input = candle_nn::linear(features, cfg.d_model, vb.pp("input"))?;
        let pos = vb.get_with_hints(
            (window, cfg.d_model),
            "pos",
            candle_nn::Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
        )?;
        let blocks = (0..cfg.layers)
            .map(|i| {
                TransformerBlock::new(
                    cfg.d_model,
                    cfg.heads,
                    cfg.ffn_dim,
                    vb.pp(format!("block{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            input,
            pos,
            blocks,
            ln_f: LayerNorm::new(cfg.d_model, vb.pp("ln_f"))?,
        })
    }
}

impl TransformerEncoder {
    /// The fused pass ([`super::fused::transformer`]) where it applies: one block, nothing that
    /// records a graph, f32 on the CPU. `None` otherwise.
    fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let [block] = self.blocks.as_slice() else {
            return Ok(None);
        };
        let attn = block.attn.projections();
        let mut params = vec![&self.pos];
        for l in [
            &self.input,
            attn[0],
            attn[1],
            attn[2],
            attn[3],
            &block.ff1,
            &block.ff2,
        ] {
            params.push(l.weight());
            params.extend(l.bias());
        }
        for n in [&block.ln1, &block.ln2, &self.ln_f] {
            params.extend(n.tensors());
        }
        if !super::fused::applies(x, &params) {
            return Ok(None);
        }
        let (b, w, f) = x.dims3()?;
        let d = self.pos.dim(1)?;
        let [q, k, v, o] = attn.map(super::fused::Dense::of);
        let (k, v) = (k?, v?);
        let p = super::fused::TransformerParams {
            window: w,
            features: f,
            d_model: d,
            heads: block.attn.num_heads(),
            input: super::fused::Dense::of(&self.input)?,
            pos: super::fused::values(&self.pos)?,
            ln1: block.ln1.fused()?,
            q: q?,
            kv: super::fused::Dense {
                weight: [k.weight, v.weight].concat(),
                bias: [k.bias, v.bias].concat(),
            },
            o: o?,
            ln2: block.ln2.fused()?,
            ff1: super::fused::Dense::of(&block.ff1)?,
            ff2: super::fused::Dense::of(&block.ff2)?,
            ln_f: self.ln_f.fused()?,
        };
        let y = super::lstm::tensor_f32(x, |x| Ok(super::fused::transformer(&p, x, b)))?;
        Ok(Some(Tensor::from_vec(y, (b, d), x.device())?))
    }
}

impl Module for TransformerEncoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_fused(x)? {
            return Ok(y);
        }
        let w = x.dim(1)?;
        let mut h = linear_rows(&self.input, x)?.broadcast_add(&self.pos)?;
        let Some((last, rest)) = self.blocks.split_last() else {
            return self.ln_f.forward(&h.i((.., w - 1, ..))?);
        };
        for b in rest {
            h = b.forward(&h)?;
        }
        // Only the last bar's state is read: the last block computes that position alone.
        self.ln_f.forward(&last.forward_last(&h)?.squeeze(1)?)
    }
}

/// Bidirectional LSTM: `[B, W, F] -> [B, 2H]` (final forward state, final backward state; the
/// backward direction reads the window newest bar first). Parameters are candle-nn's / PyTorch's:
/// `weight_ih_l0 [4H, F]`, `weight_hh_l0 [4H, H]`, `bias_ih_l0 [4H]`, `bias_hh_l0 [4H]` and the same
/// with `_reverse`, gate order (input, forget, cell, output), so checkpoints of the earlier
/// candle-nn-based branch load unchanged.
///
/// Computed as in [`super::lstm`]: the input projections of all bars and both directions in one
/// matmul (the biases folded in as an extra input column), then the fused recurrence op.
#[derive(Debug, Clone)]
pub struct BiLstm {
    hidden: usize,
    /// `(weight_ih, weight_hh, bias_ih, bias_hh)` of the forward and the backward direction.
    dirs: [(Tensor, Tensor, Tensor, Tensor); 2],
}

impl BiLstm {
    /// Both directions with `hidden` units each over `features` inputs per bar (candle-nn's
    /// default initialisation: Kaiming-uniform weights, zero biases).
    pub fn new(features: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_UNIFORM;
        let zero = candle_nn::Init::Const(0.);
        let dir = |suffix: &str| -> Result<(Tensor, Tensor, Tensor, Tensor)> {
            Ok((
                vb.get_with_hints(
                    (4 * hidden, features),
                    &format!("weight_ih_l0{suffix}"),
                    init,
                )?,
                vb.get_with_hints((4 * hidden, hidden), &format!("weight_hh_l0{suffix}"), init)?,
                vb.get_with_hints(4 * hidden, &format!("bias_ih_l0{suffix}"), zero)?,
                vb.get_with_hints(4 * hidden, &format!("bias_hh_l0{suffix}"), zero)?,
            ))
        };
        Ok(Self {
            hidden,
            dirs: [dir("")?, dir("_reverse")?],
        })
    }

    /// The straightforward computation with candle-nn's `LSTM` (one small op per gate and step,
    /// the second direction run over the reversed window): the reference [`Module::forward`] is
    /// tested against. Builds candle-nn LSTMs over the same variables (`vb` must be the one
    /// `new` was given).
    pub fn forward_reference(&self, x: &Tensor, vb: VarBuilder) -> Result<Tensor> {
        use candle_nn::rnn::{Direction, LSTMConfig, RNN};
        let (_, w, f) = x.dims3()?;
        let fwd = candle_nn::lstm(f, self.hidden, LSTMConfig::default(), vb.clone())?;
        let cfg = LSTMConfig {
            direction: Direction::Backward,
            ..LSTMConfig::default()
        };
        let bwd = candle_nn::lstm(f, self.hidden, cfg, vb)?;
        let last = |lstm: &candle_nn::LSTM, x: &Tensor| -> Result<Tensor> {
            let states = lstm.seq(x)?;
            Ok(states.last().expect("window has >= 1 bar").h().clone())
        };
        let rev: Vec<u32> = (0..w as u32).rev().collect();
        let x_rev = x.index_select(&Tensor::from_vec(rev, w, x.device())?, 1)?;
        Tensor::cat(&[last(&fwd, x)?, last(&bwd, &x_rev)?], D::Minus1)
    }
}

impl BiLstm {
    /// The pass for acting ([`super::lstm::BiLstmRecurrence::run_from_inputs`]: each task
    /// projects its own rows' inputs) where it applies: nothing that records a graph, f32 on the
    /// CPU. `None` otherwise.
    fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let [d0, d1] = &self.dirs;
        let params = [&d0.0, &d0.1, &d0.2, &d0.3, &d1.0, &d1.1, &d1.2, &d1.3];
        if !super::fused::applies(x, &params) {
            return Ok(None);
        }
        let (b, w, f) = x.dims3()?;
        let h = self.hidden;
        let w_ih = super::fused::values(&Tensor::cat(&[&d0.0, &d1.0], 0)?)?;
        let bias = super::fused::values(
            &(Tensor::cat(&[&d0.2, &d1.2], 0)? + Tensor::cat(&[&d0.3, &d1.3], 0)?)?,
        )?;
        let w_hh = super::fused::values(&Tensor::stack(&[&d0.1, &d1.1], 0)?)?;
        let hs = super::lstm::tensor_f32(x, |x| {
            Ok(super::lstm::BiLstmRecurrence::run_from_inputs(
                x,
                (&w_ih, &bias),
                &w_hh,
                (b, w, f, h),
            ))
        })?;
        // [2, B, H] -> [B, 2H]
        let mut y = vec![0f32; b * 2 * h];
        for (i, yr) in y.chunks_mut(2 * h).enumerate() {
            yr[..h].copy_from_slice(&hs[i * h..(i + 1) * h]);
            yr[h..].copy_from_slice(&hs[(b + i) * h..(b + i + 1) * h]);
        }
        Ok(Some(Tensor::from_vec(y, (b, 2 * h), x.device())?))
    }
}

impl Module for BiLstm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_fused(x)? {
            return Ok(y);
        }
        let (b, w, f) = x.dims3()?;
        let h = self.hidden;
        let [d0, d1] = &self.dirs;
        // [F + 1, 8H]: both directions' input weights, the summed biases as the last row.
        let wi = Tensor::cat(&[&d0.0, &d1.0], 0)?;
        let bias = (Tensor::cat(&[&d0.2, &d1.2], 0)? + Tensor::cat(&[&d0.3, &d1.3], 0)?)?;
        let wi = Tensor::cat(&[wi.t()?, bias.unsqueeze(0)?], 0)?;
        let ones = Tensor::ones((b * w, 1), x.dtype(), x.device())?;
        let xa = Tensor::cat(&[&x.reshape((b * w, f))?, &ones], 1)?;
        let xproj = xa.matmul(&wi)?.reshape((b, w, 2, 4 * h))?;
        let w_hh = Tensor::stack(&[&d0.1, &d1.1], 0)?;
        let hs = super::lstm::bilstm_recurrence(&xproj, &w_hh)?; // [2, B, H]
        Tensor::cat(&[hs.get(0)?, hs.get(1)?], D::Minus1)
    }
}

/// 1-D CNN over time: `[B, W, F] -> [B, channels.last()]`.
#[derive(Debug, Clone)]
pub struct Cnn1d {
    convs: Vec<Conv1d>,
}

impl Cnn1d {
    /// The convolutions of `cfg` over `features` input channels.
    pub fn new(features: usize, cfg: &CnnConfig, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = Conv1dConfig {
            padding: cfg.kernel / 2,
            ..Default::default()
        };
        let mut c_in = features;
        let mut convs = Vec::new();
        for (i, &c_out) in cfg.channels.iter().enumerate() {
            convs.push(candle_nn::conv1d(
                c_in,
                c_out,
                cfg.kernel,
                conv_cfg,
                vb.pp(format!("conv{i}")),
            )?);
            c_in = c_out;
        }
        Ok(Self { convs })
    }
}

impl Cnn1d {
    /// One convolution as unfold + matmul ("im2col"), channels last: `x [B, W, C_in]` ->
    /// `[B, W, C_out]`, same padding. Equal to candle's `conv1d` (checked in the tests) but runs on
    /// the matmul kernels, several times faster on the CPU for these small windows, forward and
    /// backward. The parameters stay candle's `Conv1d` ones (`weight [out, in, k]`, `bias [out]`).
    fn conv_im2col(conv: &Conv1d, x: &Tensor) -> Result<Tensor> {
        let (b, w, c) = x.dims3()?;
        let weight = conv.weight();
        let (c_out, _, k) = weight.dims3()?;
        let pad = k / 2;
        let xp = x.pad_with_zeros(1, pad, pad)?;
        // Row t of the unfolded input holds padded bars t..t+k: one gather along time.
        let idx: Vec<u32> = (0..w)
            .flat_map(|t| (0..k).map(move |j| (t + j) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, w * k, x.device())?;
        let cols = xp.index_select(&idx, 1)?.reshape((b * w, k * c))?; // [(B W), (k C)], j major
        let w2 = weight.permute((2, 1, 0))?.reshape((k * c, c_out))?; // [(k C), out]
        let mut y = cols.matmul(&w2)?;
        if let Some(bias) = conv.bias() {
            y = y.broadcast_add(bias)?;
        }
        y.reshape((b, w, c_out))
    }
}

impl Cnn1d {
    /// The fused pass ([`super::fused::cnn`]) where it applies: nothing that records a graph, f32
    /// on the CPU, at least one convolution. `None` otherwise.
    fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let mut params = Vec::new();
        for c in &self.convs {
            params.push(c.weight());
            params.extend(c.bias());
        }
        if self.convs.is_empty() || !super::fused::applies(x, &params) {
            return Ok(None);
        }
        let (b, w, _) = x.dims3()?;
        let convs = self
            .convs
            .iter()
            .map(super::fused::Conv::of)
            .collect::<Result<Vec<_>>>()?;
        let c_out = convs.last().map_or(0, |c| c.bias.len());
        let y = super::lstm::tensor_f32(x, |x| Ok(super::fused::cnn(&convs, x, (b, w))))?;
        Ok(Some(Tensor::from_vec(y, (b, c_out), x.device())?))
    }
}

impl Module for Cnn1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_fused(x)? {
            return Ok(y);
        }
        let mut h = x.clone(); // [B, W, F], channels last
        for c in &self.convs {
            h = Self::conv_im2col(c, &h)?.relu()?;
        }
        h.mean(1)
    }
}

/// Windows per chunk in [`SharedEncoder::sequence_features`].
pub const SEQUENCE_CHUNK: usize = 512;

/// The shared encoder (see the module docs).
#[derive(Debug, Clone)]
pub struct SharedEncoder {
    cfg: EncoderConfig,
    shape: WindowShape,
    transformer: Option<TransformerEncoder>,
    lstm: Option<BiLstm>,
    cnn: Option<Cnn1d>,
    graph: Option<(Linear, GraphMessagePassing)>,
    fuse: Linear,
}

impl SharedEncoder {
    /// Sub-modules live under `transformer`, `lstm`, `cnn`, `graph_in`, `graph`, `fuse`.
    pub fn new(cfg: &EncoderConfig, shape: WindowShape, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate("encoder")?;
        if shape.window == 0 || shape.features == 0 {
            return Err(Error::invalid(format!(
                "encoder: window shape {shape:?} must be non-empty"
            )));
        }
        let transformer = if cfg.transformer.enabled {
            Some(TransformerEncoder::new(
                shape.window,
                shape.features,
                &cfg.transformer,
                vb.pp("transformer"),
            )?)
        } else {
            None
        };
        let lstm = if cfg.lstm.enabled {
            Some(BiLstm::new(shape.features, cfg.lstm.hidden, vb.pp("lstm"))?)
        } else {
            None
        };
        let cnn = if cfg.cnn.enabled {
            Some(Cnn1d::new(shape.features, &cfg.cnn, vb.pp("cnn"))?)
        } else {
            None
        };
        let base = cfg.base_dim(shape.features);
        let graph = if cfg.graph.enabled {
            Some((
                candle_nn::linear(base, cfg.graph.dim, vb.pp("graph_in"))?,
                GraphMessagePassing::new(cfg.graph.dim, cfg.graph.layers, vb.pp("graph"))?,
            ))
        } else {
            None
        };
        let fuse_in = base + if cfg.graph.enabled { cfg.graph.dim } else { 0 };
        let fuse = candle_nn::linear(fuse_in, cfg.embed_dim, vb.pp("fuse"))?;
        Ok(Self {
            cfg: cfg.clone(),
            shape,
            transformer,
            lstm,
            cnn,
            graph,
            fuse,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The window shape it reads.
    pub fn shape(&self) -> WindowShape {
        self.shape
    }

    /// Whether [`forward`](Self::forward) needs an adjacency.
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Per-symbol features before the graph: `[B, W, F] -> [B, base_dim]`. Runs over chunks of
    /// [`SEQUENCE_CHUNK`] windows: the windows are independent, and chunks keep every intermediate
    /// tensor small enough to be cache-friendly and to be recycled by the allocator instead of
    /// being mapped (and zeroed by the kernel) afresh on every call.
    pub fn sequence_features(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        if n <= SEQUENCE_CHUNK {
            return self.sequence_features_chunk(x);
        }
        let parts = (0..n)
            .step_by(SEQUENCE_CHUNK)
            .map(|s| self.sequence_features_chunk(&x.narrow(0, s, SEQUENCE_CHUNK.min(n - s))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    fn sequence_features_chunk(&self, x: &Tensor) -> Result<Tensor> {
        let mut parts = Vec::new();
        if let Some(t) = &self.transformer {
            parts.push(t.forward(x)?);
        }
        if let Some(l) = &self.lstm {
            parts.push(l.forward(x)?);
        }
        if let Some(c) = &self.cnn {
            parts.push(c.forward(x)?);
        }
        if parts.is_empty() {
            let w = x.dim(1)?;
            return x.i((.., w - 1, ..));
        }
        Tensor::cat(&parts, D::Minus1)
    }

    /// `windows`: `[G, S, W, F]`; `adjacency`: `[S, S]` or `[G, S, S]`, required iff the graph branch
    /// is on. Returns `[G, S, embed_dim]`.
    pub fn forward(&self, windows: &Tensor, adjacency: Option<&Tensor>) -> Result<Tensor> {
        let (g, s, w, f) = windows.dims4()?;
        if w != self.shape.window || f != self.shape.features {
            candle_core::bail!(
                "encoder: windows are [{g}, {s}, {w}, {f}], the encoder reads [_, _, {}, {}]",
                self.shape.window,
                self.shape.features
            )
        }
        let x = windows.to_dtype(DType::F32)?.reshape((g * s, w, f))?;
        let base = self.sequence_features(&x)?;
        let fused_in = match &self.graph {
            Some((proj, gnn)) => {
                let Some(adj) = adjacency else {
                    candle_core::bail!("encoder: the graph branch needs an adjacency")
                };
                let h = proj
                    .forward(&base)?
                    .relu()?
                    .reshape((g, s, self.cfg.graph.dim))?;
                let h = gnn
                    .forward_graph(&h, adj)?
                    .reshape((g * s, self.cfg.graph.dim))?;
                Tensor::cat(&[base, h], D::Minus1)?
            }
            None => base,
        };
        self.fuse
            .forward(&fused_in)?
            .relu()?
            .reshape((g, s, self.cfg.embed_dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn windows(g: usize, s: usize, dev: &Device) -> Result<Tensor> {
        let WindowShape { window, features } = WindowShape::TECH;
        let n = g * s * window * features;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (g, s, window, features), dev)
    }

    #[test]
    fn every_branch_combination_runs_and_trains() -> crate::Result<()> {
        let dev = Device::Cpu;
        for mask in 0..16u32 {
            let mut cfg = EncoderConfig::tiny();
            cfg.transformer.enabled = mask & 1 != 0;
            cfg.lstm.enabled = mask & 2 != 0;
            cfg.cnn.enabled = mask & 4 != 0;
            cfg.graph.enabled = mask & 8 != 0;
            let vm = candle_nn::VarMap::new();
            let enc = SharedEncoder::new(
                &cfg,
                WindowShape::TECH,
                crate::agents::init::seeded_var_builder(&vm, 1, DType::F32, &dev),
            )?;
            let x = windows(2, 3, &dev)?;
            let adj = Tensor::from_vec(vec![0f32, 1., 0., 0.5, 0., 0.5, 1., 0., 0.], (3, 3), &dev)?;
            let y = enc.forward(&x, Some(&adj))?;
            assert_eq!(y.dims(), &[2, 3, cfg.embed_dim]);
            let grads = y.sqr()?.sum_all()?.backward()?;
            for (name, var) in crate::agents::init::named_vars(&vm) {
                assert!(
                    grads.get(var.as_tensor()).is_some(),
                    "mask {mask}: no gradient for {name}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bilstm_backward_direction_reads_the_reversed_window() -> crate::Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let l = BiLstm::new(
            3,
            2,
            crate::agents::init::seeded_var_builder(&vm, 2, DType::F32, &dev),
        )?;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 12., &dev)?
                .reshape((1, 4, 3))?
                .affine(0.1, 0.)?,
        )?;
        let y = l.forward(x.as_tensor())?;
        assert_eq!(y.dims(), &[1, 4]);
        // The backward half's final state has seen the oldest bar last: its gradient w.r.t. bar 0
        // is non-zero, and so is the forward half's w.r.t. the last bar.
        let g = y.narrow(1, 2, 2)?.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).unwrap().to_vec3::<f32>()?;
        assert!(gx[0][0].iter().any(|v| *v != 0.0));
        let names: Vec<String> = crate::agents::init::named_vars(&vm)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(names.contains(&"weight_ih_l0_reverse".to_string()));
        Ok(())
    }

    /// The normwise relative error `max |a - b| / max |b|`, and `max |b|` (so that a test can see
    /// that the compared values are not trivially zero).
    fn rel_err(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
        assert_eq!(a.dims(), b.dims());
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok((diff / scale.max(f32::MIN_POSITIVE), scale))
    }

    /// Deterministic test values in about `[-1.5, 1.5]` (candle's CPU RNG cannot be seeded).
    fn det(shape: &[usize], seed: u64) -> Result<Tensor> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.7).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// The fused BiLSTM equals candle-nn's step-by-step LSTMs over the same variables: outputs and
    /// the gradients of every parameter and of the input.
    #[test]
    fn fused_bilstm_matches_candle_nn_lstm() -> Result<()> {
        let dev = Device::Cpu;
        for (b, w, f, h) in [(3usize, 5usize, 4usize, 3usize), (7, 24, 23, 16)] {
            let vm = candle_nn::VarMap::new();
            let vb = crate::agents::init::seeded_var_builder(&vm, 9, DType::F32, &dev);
            let l = BiLstm::new(f, h, vb.clone())?;
            // Non-zero biases so their path is exercised.
            for (name, var) in crate::agents::init::named_vars(&vm) {
                if name.starts_with("bias") {
                    let n = var.elem_count();
                    let v: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.1).collect();
                    var.set(&Tensor::from_vec(v, n, &dev)?)?;
                }
            }
            let x = Var::from_tensor(&det(&[b, w, f], 1)?)?;
            let coef = det(&[b, 2 * h], 2)?;
            let fast = l.forward(x.as_tensor())?;
            let slow = l.forward_reference(x.as_tensor(), vb)?;
            let (err, scale) = rel_err(&fast, &slow)?;
            assert!(
                err < 1e-5 && scale > 1e-2,
                "{b}x{w}x{f}, H {h}: output rel. error {err}"
            );
            let gf = (fast * &coef)?.sum_all()?.backward()?;
            let gs = (slow * &coef)?.sum_all()?.backward()?;
            let mut checked = vec![x.clone()];
            checked.extend(
                crate::agents::init::named_vars(&vm)
                    .into_iter()
                    .map(|(_, v)| v),
            );
            for v in checked {
                let (a, r) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gs.get(v.as_tensor()).unwrap(),
                );
                let (err, scale) = rel_err(a, r)?;
                assert!(
                    err < 1e-4 && scale > 1e-3,
                    "{b}x{w}x{f}, H {h}: gradient rel. error {err}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_sizes() {
        let e = toml::from_str::<EncoderConfig>("embed_dims = 3").unwrap_err();
        assert!(e.to_string().contains("embed_dims"));
        let cfg: EncoderConfig = toml::from_str("[transformer]\nheads = 3").unwrap();
        let err = cfg.validate("test.toml").unwrap_err().to_string();
        assert!(err.contains("encoder.transformer.d_model"), "{err}");
        let cfg: EncoderConfig =
            toml::from_str("[graph]\nenabled = false\n[cnn]\nchannels = [8]").unwrap();
        assert!(cfg.validate("x").is_ok());
        assert_eq!(cfg.base_dim(WindowShape::TECH.features), 64 + 128 + 8);
    }

    /// The fused acting passes ([`super::super::fused`], the BiLSTM's per-task projections) equal
    /// the composed passes over the same variables, at the default sizes, with every parameter
    /// (biases, LayerNorm scales, positions) perturbed away from its initial value, for batch
    /// sizes that do and do not fill the last task; the tracked modules never take them.
    #[test]
    fn fused_acting_passes_match_the_composed_ones() -> crate::Result<()> {
        let dev = Device::Cpu;
        let cfg = EncoderConfig::default();
        let (w, f) = (WindowShape::TECH.window, WindowShape::TECH.features);
        let vm = candle_nn::VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&vm, 3, DType::F32, &dev);
        let t = TransformerEncoder::new(w, f, &cfg.transformer, vb.pp("t"))?;
        let l = BiLstm::new(f, cfg.lstm.hidden, vb.pp("l"))?;
        let c = Cnn1d::new(f, &cfg.cnn, vb.pp("c"))?;
        for (i, (_, v)) in crate::agents::init::named_vars(&vm).iter().enumerate() {
            let noise = det(v.dims(), 100 + i as u64)?.affine(0.05, 0.0)?;
            v.set(&(v.as_tensor() + noise)?)?;
        }
        let ivb = crate::agents::init::detached_var_builder(&vm, DType::F32, &dev);
        let ti = TransformerEncoder::new(w, f, &cfg.transformer, ivb.pp("t"))?;
        let li = BiLstm::new(f, cfg.lstm.hidden, ivb.pp("l"))?;
        let ci = Cnn1d::new(f, &cfg.cnn, ivb.pp("c"))?;
        for b in [1, 13, 143] {
            let x = det(&[b, w, f], b as u64)?;
            assert!(t.forward_fused(&x)?.is_none() && l.forward_fused(&x)?.is_none());
            assert!(c.forward_fused(&x)?.is_none());
            let pairs = [
                ("transformer", ti.forward_fused(&x)?, t.forward(&x)?),
                ("bilstm", li.forward_fused(&x)?, l.forward(&x)?),
                ("cnn", ci.forward_fused(&x)?, c.forward(&x)?),
            ];
            for (name, fused, composed) in pairs {
                let fused = fused.expect("the untracked twin takes the fused pass");
                assert_eq!(fused.dims(), composed.dims(), "{name}");
                let (err, _) = rel_err(&fused, &composed)?;
                assert!(err < 1e-5, "{name}, {b} windows: rel. error {err}");
            }
        }
        Ok(())
    }

    #[test]
    fn transformer_last_position_shortcut_is_exact() -> crate::Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&vm, 6, DType::F32, &dev);
        let block = TransformerBlock::new(8, 2, 16, vb)?;
        let x = Tensor::arange(0f32, 2. * 6. * 8., &dev)?
            .reshape((2, 6, 8))?
            .affine(0.02, -0.5)?
            .cos()?;
        let full = block.forward(&x)?.narrow(1, 5, 1)?;
        let diff = (full - block.forward_last(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
    /// The unfold + matmul convolution equals candle's conv1d (same padding).
    #[test]
    fn im2col_conv_matches_candle_conv1d() -> Result<()> {
        let dev = Device::Cpu;
        for k in [1usize, 3, 5] {
            let vm = candle_nn::VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let cfg = Conv1dConfig {
                padding: k / 2,
                ..Default::default()
            };
            let conv = candle_nn::conv1d(5, 3, k, cfg, vb.pp("c"))?;
            let x = Tensor::randn(0f32, 1.0, (4, 9, 5), &dev)?;
            let want = conv
                .forward(&x.transpose(1, 2)?.contiguous()?)?
                .transpose(1, 2)?;
            let got = Cnn1d::conv_im2col(&conv, &x)?;
            let err = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "k = {k}: max error {err}");
        }
        Ok(())
    }
}
