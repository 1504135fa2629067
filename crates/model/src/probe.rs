//! [`Probe`]: the forward on candle tensors, watched. It records the largest activation magnitude
//! in every block and the input range of every conv and linear, and can run those convs and
//! linears int8-quantized as a QDQ graph computes them (per-output-channel symmetric int8
//! weights, per-tensor symmetric int8 inputs with calibrated ranges, f32 arithmetic and biases).
//!
//! Composite ops (attention, gated feed-forward, norm + activation) run as their primitives, so
//! every intermediate value (attention scores included) is watched and every linear quantized.

use candle_core::{DType, Tensor};
use unetlab_graph::{Conv2dParams, Init, Ops, Role, ScopeStack, Unary};

use crate::error::ModelError;
use crate::max_abs;
use crate::ops::CandleOps;
use crate::params::ParamStore;

/// The largest |value| of any activation computed inside one block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMaximum {
    /// The block's module path (`down_blocks.1.attentions.0`), or `(outside blocks)`.
    pub path: String,
    /// Largest absolute activation.
    pub max_abs: f32,
}

/// How convs and linears compute.
#[derive(Debug, Clone, PartialEq)]
pub enum Precision {
    /// In the model's dtype.
    Float,
    /// Int8-quantized inputs (per tensor, symmetric, one range per conv/linear call in forward
    /// order, from a calibration pass) and weights (per output channel, symmetric).
    Int8 {
        /// Input ranges (largest |x|) of each conv/linear call, in forward order.
        ranges: Vec<f32>,
    },
}

/// An interpreter that runs [`CandleOps`] and watches it.
pub struct Probe<'a> {
    inner: CandleOps<'a>,
    scope: ScopeStack,
    precision: Precision,
    /// Per block in order of entry.
    blocks: Vec<BlockMaximum>,
    /// Blocks entered and not yet left: (scope depth, index into `blocks`).
    open: Vec<(usize, usize)>,
    /// Largest |input| of each conv/linear call, in forward order.
    ranges: Vec<f32>,
}

/// The block name of activations computed outside any block.
pub const OUTSIDE_BLOCKS: &str = "(outside blocks)";

impl<'a> Probe<'a> {
    /// A probe over `store`'s parameters.
    pub fn new(store: &'a ParamStore, precision: Precision) -> Self {
        Probe {
            inner: CandleOps::new(store),
            scope: ScopeStack::default(),
            precision,
            blocks: Vec::new(),
            open: Vec::new(),
            ranges: Vec::new(),
        }
    }

    /// The largest activation of each block, in order of entry (repeated visits merged).
    pub fn block_maxima(&self) -> Vec<BlockMaximum> {
        let mut merged: Vec<BlockMaximum> = Vec::new();
        for b in &self.blocks {
            match merged.iter_mut().find(|m| m.path == b.path) {
                Some(m) => m.max_abs = m.max_abs.max(b.max_abs),
                None => merged.push(b.clone()),
            }
        }
        merged
    }

    /// The input range (largest |x|) of each conv/linear call, in forward order: the calibration
    /// of [`Precision::Int8`].
    pub fn input_ranges(&self) -> &[f32] {
        &self.ranges
    }

    /// Records `y`'s largest magnitude in the innermost open block.
    fn watch(&mut self, y: Tensor) -> Result<Tensor, ModelError> {
        let max = max_abs(&y)?;
        let index = match self.open.last() {
            Some(&(_, i)) => i,
            None => {
                let existing = self.blocks.iter().position(|b| b.path == OUTSIDE_BLOCKS);
                existing.unwrap_or_else(|| {
                    self.blocks.push(BlockMaximum {
                        path: OUTSIDE_BLOCKS.into(),
                        max_abs: 0.0,
                    });
                    self.blocks.len() - 1
                })
            }
        };
        let entry = &mut self.blocks[index].max_abs;
        *entry = entry.max(max);
        Ok(y)
    }

    /// A conv/linear input as the computation sees it: recorded, and under int8 quantized with
    /// its calibrated range.
    fn input(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        let call = self.ranges.len();
        self.ranges.push(max_abs(x)?);
        match &self.precision {
            Precision::Float => Ok(x.clone()),
            Precision::Int8 { ranges } => {
                let range = *ranges.get(call).ok_or_else(|| {
                    ModelError::Probe(format!(
                        "conv/linear call {call} has no calibrated range ({} calibrated): \
                         calibrate with the same config and input shapes",
                        ranges.len()
                    ))
                })?;
                Ok(fake_quantize(x, range)?)
            }
        }
    }

    /// A weight as the computation sees it: under int8 quantized per output channel.
    fn weight(&self, w: &Tensor) -> Result<Tensor, ModelError> {
        match self.precision {
            Precision::Float => Ok(w.clone()),
            Precision::Int8 { .. } => Ok(quantize_per_channel(w)?),
        }
    }
}

/// `x` through symmetric int8 QuantizeLinear/DequantizeLinear with scale `range / 127`:
/// `clamp(round(x / s), −128, 127) · s` (a zero range passes `x` through).
pub fn fake_quantize(x: &Tensor, range: f32) -> candle_core::Result<Tensor> {
    if range <= 0.0 || !range.is_finite() {
        return Ok(x.clone());
    }
    // Divided (not multiplied by the reciprocal), in f32, as ONNX's QuantizeLinear computes it.
    let scale = Tensor::new((f64::from(range) / 127.0) as f32, x.device())?;
    let x32 = x.to_dtype(DType::F32)?;
    x32.broadcast_div(&scale)?
        .round()?
        .clamp(-128f32, 127f32)?
        .broadcast_mul(&scale)?
        .to_dtype(x.dtype())
}

/// Symmetric int8 quantization of `rows` equal rows (the output channels of a weight): each row's
/// scale is its largest |value| × (1/127) in f32 (1/127 for an all-zero row), each value
/// `clamp(round(v / scale), −127, 127)`. The one rule both the probe's int8 forward and the int8
/// ONNX export use, so the two agree bit for bit.
pub fn quantize_rows(values: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let per_row = values.len() / rows.max(1);
    let mut quantized = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(per_row.max(1)) {
        let range = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let range = if range == 0.0 { 127.0 } else { range };
        let scale = range * (1.0f64 / 127.0) as f32;
        quantized.extend(
            row.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    (quantized, scales)
}

/// A weight through per-output-channel symmetric int8 quantization ([`quantize_rows`]) and back:
/// `q · s_c` in f32.
pub fn quantize_per_channel(w: &Tensor) -> candle_core::Result<Tensor> {
    let rows = w.dim(0)?;
    let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (quantized, scales) = quantize_rows(&values, rows);
    let per_row = values.len() / rows.max(1);
    let dequantized: Vec<f32> = quantized
        .iter()
        .enumerate()
        .map(|(i, &q)| f32::from(q) * scales[i / per_row.max(1)])
        .collect();
    Tensor::from_vec(dequantized, w.shape(), w.device())?.to_dtype(w.dtype())
}

impl Ops for Probe<'_> {
    type Tensor = Tensor;
    type Error = ModelError;

    fn dims(&self, x: &Tensor) -> Vec<usize> {
        x.dims().to_vec()
    }

    fn push_scope(&mut self, name: &str, role: Option<Role>) {
        self.inner.push_scope(name, role);
        self.scope.push(name, role);
        if matches!(role, Some(Role::Block(_))) {
            self.blocks.push(BlockMaximum {
                path: self.scope.path(),
                max_abs: 0.0,
            });
            self.open.push((self.scope.depth(), self.blocks.len() - 1));
        }
    }

    fn pop_scope(&mut self) {
        if self
            .open
            .last()
            .is_some_and(|&(depth, _)| depth == self.scope.depth())
        {
            self.open.pop();
        }
        self.scope.pop();
        self.inner.pop_scope();
    }

    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor, ModelError> {
        self.inner.param(name, shape, init)
    }

    fn conv2d(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor, ModelError> {
        let x = self.input(x)?;
        let weight = self.weight(weight)?;
        let y = self.inner.conv2d(&x, &weight, bias, params)?;
        self.watch(y)
    }

    fn linear(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let x = self.input(x)?;
        let weight = self.weight(weight)?;
        let y = self.inner.linear(&x, &weight, bias)?;
        self.watch(y)
    }

    fn matmul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.inner.matmul(a, b)?;
        self.watch(y)
    }

    fn group_norm(
        &mut self,
        x: &Tensor,
        groups: usize,
        eps: f64,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let y = self.inner.group_norm(x, groups, eps, weight, bias)?;
        self.watch(y)
    }

    fn layer_norm(
        &mut self,
        x: &Tensor,
        eps: f64,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let y = self.inner.layer_norm(x, eps, weight, bias)?;
        self.watch(y)
    }

    fn softmax_last(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.inner.softmax_last(x)?;
        self.watch(y)
    }

    fn unary(&mut self, x: &Tensor, op: Unary) -> Result<Tensor, ModelError> {
        let y = self.inner.unary(x, op)?;
        self.watch(y)
    }

    fn scale(&mut self, x: &Tensor, scale: f64) -> Result<Tensor, ModelError> {
        let y = self.inner.scale(x, scale)?;
        self.watch(y)
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.inner.add(a, b)?;
        self.watch(y)
    }

    fn mul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.inner.mul(a, b)?;
        self.watch(y)
    }

    fn reshape(&mut self, x: &Tensor, dims: &[usize]) -> Result<Tensor, ModelError> {
        self.inner.reshape(x, dims)
    }

    fn permute(&mut self, x: &Tensor, perm: &[usize]) -> Result<Tensor, ModelError> {
        self.inner.permute(x, perm)
    }

    fn concat(&mut self, xs: &[&Tensor], dim: usize) -> Result<Tensor, ModelError> {
        self.inner.concat(xs, dim)
    }

    fn narrow(
        &mut self,
        x: &Tensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Tensor, ModelError> {
        self.inner.narrow(x, dim, start, len)
    }

    fn upsample_nearest2x(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.inner.upsample_nearest2x(x)
    }

    fn sinusoidal(
        &mut self,
        x: &Tensor,
        channels: usize,
        flip_sin_to_cos: bool,
        freq_shift: f64,
    ) -> Result<Tensor, ModelError> {
        let y = self
            .inner
            .sinusoidal(x, channels, flip_sin_to_cos, freq_shift)?;
        self.watch(y)
    }
}
