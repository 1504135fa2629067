//! The ONNX interpreter of the UNet forward: symbolic tensors in, graph nodes out.
//!
//! `OnnxOps` implements [`Ops`] by recording one or a few ONNX nodes per op, so the exported graph
//! is the same walk of `unet_forward` that the counter and the candle model make. Two choices keep
//! it portable:
//! - **Dynamic shapes.** The walk runs with marker sizes ([`crate::symbols`]): every dimension is
//!   decoded into a monomial of batch, latent height and width and token count, and every Reshape
//!   whose target depends on them computes it at run time from the inputs' shapes (Shape, Gather,
//!   Div, Mul, Concat). A [`GraphShape::Dynamic`] graph takes any batch, latent height and width
//!   (multiples of `2^(levels−1)`) and token count; a [`GraphShape::Static`] one only the batch.
//! - **Decomposed norms.** GroupNorm and LayerNorm are written as ReduceMean/Sub/Mul/Sqrt/Div (the
//!   statistics in f32, as the candle model computes them), because candle-onnx has neither
//!   normalisation op and ONNX's GroupNormalization is only sound from opset 21.

use std::collections::HashMap;

use candle_core::DType;
use unetlab_graph::{
    attend, attend_heads, sinusoid_frequencies, text_encoder_forward, unet_forward,
    AttentionKernel, Conv2dParams, Init, Ops, Role, ScopeStack, TextEncoderSpec, Unary, UnetInputs,
    F32_INPUTS,
};
use unetlab_model::ParamStore;
use unetlab_spec::UnetSpec;

use crate::error::ExportError;
use crate::proto::{AttrValue, Dim, ElemType, Initializer, Model, Node, TensorBytes, ValueInfo};
use crate::symbols::{Monomial, Symbol, Symbols, SYMBOLS};

/// Opsets the exporter supports (ReduceMean takes `axes` as an attribute up to 17, as an input from 18).
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=21;

/// A symbolic tensor: the name of the graph value, its dimensions in the walk (open sizes as their
/// markers, see [`Symbols`]) and type.
#[derive(Debug, Clone)]
pub struct Value {
    name: String,
    dims: Vec<usize>,
    elem: ElemType,
}

/// The input sizes a UNet graph accepts. The batch is always open; a text encoder's token count
/// is always its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphShape {
    /// Any latent height and width (multiples of `2^(levels−1)`) and any token count.
    Dynamic,
    /// This latent height = width and token count only (for runtimes that want fixed shapes).
    Static {
        /// Latent height = width of `sample`.
        latent_size: usize,
        /// Text tokens of `encoder_hidden_states`.
        tokens: usize,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    /// Which input sizes the UNet graph accepts.
    pub shape: GraphShape,
    /// Int8 QDQ: every conv and linear gets its weight as int8 (symmetric, per output channel)
    /// through DequantizeLinear and its input through QuantizeLinear/DequantizeLinear (symmetric,
    /// per tensor) with these calibrated ranges (largest |input| of each conv/linear call in
    /// forward order, as `unetlab_model::Probe::input_ranges` records them). f32 models only.
    pub int8_ranges: Option<Vec<f32>>,
    /// ONNX opset of the default domain (see [`OPSETS`]).
    pub opset: i64,
    /// Element type of weights and activations (f32 or f16); `timestep` and `time_ids` stay f32.
    pub dtype: ElemType,
}

/// The ONNX model of `spec` with the weights of `params` as initializers (diffusers names).
pub fn onnx_model(
    spec: &UnetSpec,
    params: &ParamStore,
    options: OnnxOptions,
) -> Result<Model, ExportError> {
    let (symbols, latent, tokens) = match options.shape {
        GraphShape::Dynamic => {
            let symbols = Symbols::new(&SYMBOLS, 1 << (spec.levels.len() - 1));
            let latent = [Symbol::Height, Symbol::Width].map(|s| symbols.marker(s));
            (symbols, latent, symbols.marker(Symbol::Tokens))
        }
        GraphShape::Static {
            latent_size,
            tokens,
        } => {
            unetlab_spec::check_latent_size(spec.levels.len(), latent_size)
                .map_err(|m| ExportError::Unsupported(format!("latent size {m}")))?;
            (Symbols::new(&[Symbol::Batch], 1), [latent_size; 2], tokens)
        }
    };
    let batch = symbols.marker(Symbol::Batch);
    let shapes = UnetInputs::shapes(spec, batch, latent, tokens);
    let inputs: Vec<(&str, Vec<usize>, ElemType)> = shapes
        .named()
        .into_iter()
        .map(|(name, dims)| (name, dims.clone(), input_type(name, options.dtype)))
        .collect();
    trace(
        params,
        options,
        symbols,
        "unet",
        &inputs,
        &["output"],
        |ops, values| {
            let mut values = values.iter().cloned();
            let mut next = || values.next().expect("one value per input");
            let (sample, timestep, encoder_hidden_states) = (next(), next(), next());
            let addition = spec.addition.is_some();
            let inputs = UnetInputs {
                sample,
                timestep,
                encoder_hidden_states,
                text_embeds: addition.then(&mut next),
                time_ids: addition.then(&mut next),
            };
            Ok(vec![unet_forward(ops, spec, &inputs)?])
        },
    )
}

/// The ONNX model of the text encoder: input `tokens_one_hot` `[batch, tokens, vocab]`, outputs
/// `hidden_states` `[batch, tokens, width]` and `pooled` `[batch, width]`.
pub fn text_encoder_onnx(
    spec: &TextEncoderSpec,
    params: &ParamStore,
    options: OnnxOptions,
) -> Result<Model, ExportError> {
    let symbols = Symbols::new(&[Symbol::Batch], 1);
    let inputs = [(
        "tokens_one_hot",
        vec![symbols.marker(Symbol::Batch), spec.tokens, spec.vocab],
        options.dtype,
    )];
    trace(
        params,
        options,
        symbols,
        "text_encoder",
        &inputs,
        &["hidden_states", "pooled"],
        |ops, values| {
            let (hidden, pooled) = text_encoder_forward(ops, spec, &values[0])?;
            Ok(vec![hidden, pooled])
        },
    )
}

/// Walks `forward` with symbolic `inputs` and names its results `outputs`.
fn trace(
    params: &ParamStore,
    options: OnnxOptions,
    symbols: Symbols,
    name: &str,
    inputs: &[(&str, Vec<usize>, ElemType)],
    outputs: &[&str],
    forward: impl FnOnce(&mut OnnxOps, &[Value]) -> Result<Vec<Value>, ExportError>,
) -> Result<Model, ExportError> {
    if !OPSETS.contains(&options.opset) {
        return Err(ExportError::Unsupported(format!(
            "opset {} (supported: {}..={})",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    if !matches!(options.dtype, ElemType::F32 | ElemType::F16) {
        return Err(ExportError::Unsupported(format!(
            "{:?} activations (f32 or f16; int8 is a quantization of an f32 graph)",
            options.dtype
        )));
    }
    if options.int8_ranges.is_some() && options.dtype != ElemType::F32 {
        return Err(ExportError::Unsupported(
            "int8 quantization of an f16 graph (quantize the f32 one)".into(),
        ));
    }
    let mut ops = OnnxOps {
        params,
        dtype: options.dtype,
        opset: options.opset,
        symbols,
        sources: HashMap::new(),
        scope: ScopeStack::default(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        constants: HashMap::new(),
        computed: HashMap::new(),
        int8_ranges: options.int8_ranges.clone(),
        quantized: 0,
        next_value: 0,
    };
    let values: Vec<Value> = inputs
        .iter()
        .map(|(name, dims, elem)| Value {
            name: name.to_string(),
            dims: dims.clone(),
            elem: *elem,
        })
        .collect();
    // Each open size is read from the first input dimension that is that size alone.
    for value in &values {
        for (axis, &d) in value.dims.iter().enumerate() {
            let m = symbols.decode(d);
            let factors: Vec<(Symbol, u32)> = m.factors().collect();
            if let [(symbol, 1)] = factors[..] {
                ops.sources
                    .entry(symbol)
                    .or_insert((value.name.clone(), axis, m.coefficient));
            }
        }
    }
    let results = forward(&mut ops, &values)?;
    if let Some(ranges) = &ops.int8_ranges {
        if ranges.len() != ops.quantized {
            return Err(ExportError::Unsupported(format!(
                "int8: {} calibrated ranges for {} convs and linears",
                ranges.len(),
                ops.quantized
            )));
        }
    }
    let mut graph_outputs = Vec::new();
    for (result, &out) in results.iter().zip(outputs) {
        ops.node("Identity", &[&result.name], vec![], out.into());
        graph_outputs.push(value_info(&symbols, out, result.elem, &result.dims));
    }
    Ok(Model {
        name: name.into(),
        opset: options.opset,
        nodes: ops.nodes,
        initializers: ops.initializers,
        inputs: values
            .iter()
            .map(|v| value_info(&symbols, &v.name, v.elem, &v.dims))
            .collect(),
        outputs: graph_outputs,
        metadata: Vec::new(),
    })
}

/// The element type of a graph input: timesteps and time ids are always f32 (their sinusoids need
/// f32 precision), everything else has the model's type.
pub fn input_type(name: &str, dtype: ElemType) -> ElemType {
    if F32_INPUTS.contains(&name) {
        ElemType::F32
    } else {
        dtype
    }
}

fn value_info(symbols: &Symbols, name: &str, elem: ElemType, dims: &[usize]) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        elem_type: elem,
        dims: dims
            .iter()
            .map(|&d| match symbols.decode(d).is_static() {
                true => Dim::Fixed(d),
                false => Dim::Named(symbols.show(d)),
            })
            .collect(),
    }
}

/// The candle dtype of an ONNX element type.
pub fn candle_dtype(elem: ElemType) -> DType {
    match elem {
        ElemType::F32 => DType::F32,
        ElemType::F16 => DType::F16,
        ElemType::I64 => DType::I64,
        ElemType::I8 => unreachable!("int8 is only the storage type of quantized weights"),
    }
}

/// Records the forward as ONNX nodes.
struct OnnxOps<'a> {
    params: &'a ParamStore,
    dtype: ElemType,
    opset: i64,
    /// Which sizes are open, and their markers in the walk.
    symbols: Symbols,
    /// Where each open size is read at run time: (input, axis, the static factor it carries there).
    sources: HashMap<Symbol, (String, usize, usize)>,
    scope: ScopeStack,
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
    /// Constants already emitted, by (type, dims, bytes), so equal constants are stored once.
    constants: HashMap<(ElemType, Vec<usize>, Vec<u8>), String>,
    /// Run-time sizes already computed (one-element int64 tensors), so each is computed once.
    computed: HashMap<Computed, String>,
    /// Calibrated input ranges of the convs and linears, for an int8 QDQ graph.
    int8_ranges: Option<Vec<f32>>,
    /// Convs and linears walked so far.
    quantized: usize,
    next_value: usize,
}

/// A run-time size computed in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Computed {
    /// The shape of a graph input.
    ShapeOf(String),
    /// One dimension.
    Dim(Monomial),
    /// A Reshape target.
    Target(Vec<usize>),
}

impl OnnxOps<'_> {
    /// Appends a node with one output (named `output`, or a fresh name when empty) and returns it.
    fn node(
        &mut self,
        op_type: &'static str,
        inputs: &[&str],
        attributes: Vec<(&'static str, AttrValue)>,
        output: String,
    ) -> String {
        let output = if output.is_empty() {
            self.next_value += 1;
            format!("v{}", self.next_value)
        } else {
            output
        };
        let name = format!("{}/{op_type}_{}", self.scope.path(), self.nodes.len());
        self.nodes.push(Node {
            op_type,
            name,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.clone()],
            attributes,
        });
        output
    }

    /// A node whose output has `dims` and `elem`.
    fn op(
        &mut self,
        op_type: &'static str,
        inputs: &[&str],
        attributes: Vec<(&'static str, AttrValue)>,
        dims: Vec<usize>,
        elem: ElemType,
    ) -> Value {
        let name = self.node(op_type, inputs, attributes, String::new());
        Value { name, dims, elem }
    }

    fn constant(&mut self, elem: ElemType, dims: Vec<usize>, bytes: Vec<u8>) -> String {
        let key = (elem, dims, bytes);
        if let Some(name) = self.constants.get(&key) {
            return name.clone();
        }
        let name = format!("const.{}", self.constants.len());
        self.initializers.push(Initializer {
            name: name.clone(),
            elem_type: elem,
            dims: key.1.clone(),
            bytes: TensorBytes::Raw(key.2.clone()),
        });
        self.constants.insert(key, name.clone());
        name
    }

    fn ints(&mut self, values: &[i64]) -> String {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(ElemType::I64, vec![values.len()], bytes)
    }

    /// A one-element constant of type `elem` (shape `[1]`, so it broadcasts everywhere).
    fn scalar(&mut self, elem: ElemType, value: f64) -> String {
        let bytes = match elem {
            ElemType::F32 => (value as f32).to_le_bytes().to_vec(),
            ElemType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
            ElemType::I64 => (value as i64).to_le_bytes().to_vec(),
            ElemType::I8 => (value as i8).to_le_bytes().to_vec(),
        };
        self.constant(elem, vec![1], bytes)
    }

    /// The Reshape target for `dims`: a constant when every dimension is static, else runs of
    /// static dimensions and run-time sizes concatenated.
    fn target(&mut self, dims: &[usize]) -> Result<String, ExportError> {
        let monomials: Vec<Monomial> = dims.iter().map(|&d| self.symbols.decode(d)).collect();
        if monomials.iter().all(Monomial::is_static) {
            let target: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
            return Ok(self.ints(&target));
        }
        let key = Computed::Target(dims.to_vec());
        if let Some(name) = self.computed.get(&key) {
            return Ok(name.clone());
        }
        let mut parts = Vec::new();
        let mut run: Vec<i64> = Vec::new();
        for m in monomials {
            if m.is_static() {
                run.push(m.coefficient as i64);
                continue;
            }
            if !run.is_empty() {
                parts.push(self.ints(&std::mem::take(&mut run)));
            }
            parts.push(self.run_time_dim(m)?);
        }
        if !run.is_empty() {
            parts.push(self.ints(&run));
        }
        let names: Vec<&str> = parts.iter().map(String::as_str).collect();
        let name = self.node(
            "Concat",
            &names,
            vec![("axis", AttrValue::Int(0))],
            String::new(),
        );
        self.computed.insert(key, name.clone());
        Ok(name)
    }

    /// A dimension at run time, as a one-element int64 tensor: its symbols read from the inputs'
    /// shapes, multiplied together and by its static factor.
    fn run_time_dim(&mut self, m: Monomial) -> Result<String, ExportError> {
        let key = Computed::Dim(m);
        if let Some(name) = self.computed.get(&key) {
            return Ok(name.clone());
        }
        let mut product: Option<String> = None;
        for (symbol, power) in m.factors() {
            let factor = self.symbol_size(symbol)?;
            for _ in 0..power {
                product = Some(match product {
                    None => factor.clone(),
                    Some(p) => self.node("Mul", &[&p, &factor], vec![], String::new()),
                });
            }
        }
        let mut name = product.expect("a run-time dimension has a symbol");
        if m.coefficient != 1 {
            let c = self.ints(&[m.coefficient as i64]);
            name = self.node("Mul", &[&name, &c], vec![], String::new());
        }
        self.computed.insert(key, name.clone());
        Ok(name)
    }

    /// One open size at run time: a dimension of an input's shape, divided by the static factor
    /// it carries there (the latent height is `2^(levels−1)` height units).
    fn symbol_size(&mut self, symbol: Symbol) -> Result<String, ExportError> {
        let unit = Monomial {
            coefficient: 1,
            powers: SYMBOLS.map(|s| u32::from(s == symbol)),
        };
        let key = Computed::Dim(unit);
        if let Some(name) = self.computed.get(&key) {
            return Ok(name.clone());
        }
        let (input, axis, factor) = self.sources.get(&symbol).cloned().ok_or_else(|| {
            ExportError::Unsupported(format!(
                "a size at {} depends on the {symbol}, which no graph input has as a dimension",
                self.scope.path()
            ))
        })?;
        let shape_key = Computed::ShapeOf(input.clone());
        let shape = match self.computed.get(&shape_key) {
            Some(name) => name.clone(),
            None => {
                let name = self.node("Shape", &[&input], vec![], String::new());
                self.computed.insert(shape_key, name.clone());
                name
            }
        };
        let index = self.ints(&[axis as i64]);
        let mut name = self.node(
            "Gather",
            &[&shape, &index],
            vec![("axis", AttrValue::Int(0))],
            String::new(),
        );
        if factor != 1 {
            let divisor = self.ints(&[factor as i64]);
            name = self.node("Div", &[&name, &divisor], vec![], String::new());
        }
        self.computed.insert(key, name.clone());
        Ok(name)
    }

    /// A conv/linear input as the graph computes it: under int8, through QuantizeLinear and
    /// DequantizeLinear with its calibrated range (symmetric, scale range / 127).
    fn quantized_input(&mut self, x: &Value) -> Result<Value, ExportError> {
        let call = self.quantized;
        self.quantized += 1;
        let Some(ranges) = &self.int8_ranges else {
            return Ok(x.clone());
        };
        let range = *ranges.get(call).ok_or_else(|| {
            ExportError::Unsupported(format!(
                "int8: conv/linear {call} at {} has no calibrated range ({} given)",
                self.scope.path(),
                ranges.len()
            ))
        })?;
        if range <= 0.0 || !range.is_finite() {
            return Ok(x.clone());
        }
        let scale = ((f64::from(range) / 127.0) as f32).to_le_bytes().to_vec();
        let scale = self.constant(ElemType::F32, vec![], scale);
        let zero = self.constant(ElemType::I8, vec![], vec![0]);
        let q = self.op(
            "QuantizeLinear",
            &[&x.name, &scale, &zero],
            vec![],
            x.dims.clone(),
            ElemType::I8,
        );
        Ok(self.op(
            "DequantizeLinear",
            &[&q.name, &scale, &zero],
            vec![],
            x.dims.clone(),
            x.elem,
        ))
    }

    /// A conv/linear weight as the graph computes it: under int8, its initializer rewritten as
    /// int8 (symmetric per output channel: scale = largest |w| of the channel / 127) and read
    /// through DequantizeLinear.
    fn quantized_weight(&mut self, w: &Value) -> Result<Value, ExportError> {
        if self.int8_ranges.is_none() {
            return Ok(w.clone());
        }
        let init = self
            .initializers
            .iter_mut()
            .find(|i| i.name == w.name)
            .ok_or_else(|| {
                ExportError::Unsupported(format!("int8: {} is not a stored weight", w.name))
            })?;
        let TensorBytes::Raw(bytes) = &init.bytes else {
            unreachable!("weights are stored inline while the graph is built")
        };
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (quantized, scales) = unetlab_model::probe::quantize_rows(&values, w.dims[0]);
        init.elem_type = ElemType::I8;
        init.bytes = TensorBytes::Raw(quantized.iter().map(|&q| q as u8).collect());
        let channels = w.dims[0];
        let scales = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        let scales = self.constant(ElemType::F32, vec![channels], scales);
        let zeros = self.constant(ElemType::I8, vec![channels], vec![0; channels]);
        Ok(self.op(
            "DequantizeLinear",
            &[&w.name, &scales, &zeros],
            vec![("axis", AttrValue::Int(0))],
            w.dims.clone(),
            ElemType::F32,
        ))
    }

    /// Dimensions for messages, open sizes by name.
    fn show(&self, dims: &[usize]) -> String {
        let parts: Vec<String> = dims.iter().map(|&d| self.symbols.show(d)).collect();
        format!("[{}]", parts.join(", "))
    }

    fn reshape_to(&mut self, x: &Value, dims: Vec<usize>) -> Result<Value, ExportError> {
        let target = self.target(&dims)?;
        Ok(self.op("Reshape", &[&x.name, &target], vec![], dims, x.elem))
    }

    fn cast(&mut self, x: &Value, to: ElemType) -> Value {
        if x.elem == to {
            return x.clone();
        }
        self.op(
            "Cast",
            &[&x.name],
            vec![("to", AttrValue::Int(to as i64))],
            x.dims.clone(),
            to,
        )
    }

    fn binary(
        &mut self,
        op_type: &'static str,
        a: &Value,
        b: &Value,
    ) -> Result<Value, ExportError> {
        let dims = broadcast(&a.dims, &b.dims).ok_or_else(|| {
            ExportError::Unsupported(format!(
                "{op_type} at {}: shapes {} and {} do not broadcast",
                self.scope.path(),
                self.show(&a.dims),
                self.show(&b.dims)
            ))
        })?;
        Ok(self.op(op_type, &[&a.name, &b.name], vec![], dims, a.elem))
    }

    fn with_scalar(&mut self, op_type: &'static str, x: &Value, value: f64) -> Value {
        let c = self.scalar(x.elem, value);
        self.op(op_type, &[&x.name, &c], vec![], x.dims.clone(), x.elem)
    }

    fn reduce_mean_last(&mut self, x: &Value) -> Value {
        let mut dims = x.dims.clone();
        *dims.last_mut().expect("norms have a last axis") = 1;
        let keep = ("keepdims", AttrValue::Int(1));
        if self.opset >= 18 {
            let axes = self.ints(&[-1]);
            self.op("ReduceMean", &[&x.name, &axes], vec![keep], dims, x.elem)
        } else {
            let axes = ("axes", AttrValue::Ints(vec![-1]));
            self.op("ReduceMean", &[&x.name], vec![axes, keep], dims, x.elem)
        }
    }

    /// `(x − mean) / √(var + eps)` over the last axis, in f32, returned in `x`'s type.
    fn standardize_last(&mut self, x: &Value, eps: f64) -> Result<Value, ExportError> {
        let x32 = self.cast(x, ElemType::F32);
        let mean = self.reduce_mean_last(&x32);
        let centered = self.binary("Sub", &x32, &mean)?;
        let squares = self.binary("Mul", &centered, &centered)?;
        let var = self.reduce_mean_last(&squares);
        let var = self.with_scalar("Add", &var, eps);
        let std = self.op("Sqrt", &[&var.name], vec![], var.dims.clone(), var.elem);
        let normed = self.binary("Div", &centered, &std)?;
        Ok(self.cast(&normed, x.elem))
    }

    /// `x · w + b` with per-channel `w`, `b` on axis `axis` of `x`.
    fn affine_channels(
        &mut self,
        x: &Value,
        axis: usize,
        w: &Value,
        b: &Value,
    ) -> Result<Value, ExportError> {
        let trailing = x.dims.len() - axis - 1;
        let channel_dims: Vec<usize> = std::iter::once(w.dims[0])
            .chain(std::iter::repeat_n(1, trailing))
            .collect();
        let (w, b) = if trailing == 0 {
            (w.clone(), b.clone())
        } else {
            (
                self.reshape_to(w, channel_dims.clone())?,
                self.reshape_to(b, channel_dims)?,
            )
        };
        let scaled = self.binary("Mul", x, &w)?;
        self.binary("Add", &scaled, &b)
    }
}

impl Ops for OnnxOps<'_> {
    type Tensor = Value;
    type Error = ExportError;

    fn dims(&self, x: &Value) -> Vec<usize> {
        x.dims.clone()
    }

    fn push_scope(&mut self, name: &str, role: Option<Role>) {
        self.scope.push(name, role);
    }

    fn pop_scope(&mut self) {
        self.scope.pop();
    }

    fn param(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Value, ExportError> {
        let full = self.scope.param_name(name);
        let tensor = self
            .params
            .get(&full, shape)?
            .to_dtype(candle_dtype(self.dtype))?
            .flatten_all()?;
        let bytes = match self.dtype {
            ElemType::F16 => tensor
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => tensor
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        self.initializers.push(Initializer {
            name: full.clone(),
            elem_type: self.dtype,
            dims: shape.to_vec(),
            bytes: TensorBytes::Raw(bytes),
        });
        Ok(Value {
            name: full,
            dims: shape.to_vec(),
            elem: self.dtype,
        })
    }

    fn conv2d(
        &mut self,
        x: &Value,
        weight: &Value,
        bias: Option<&Value>,
        p: Conv2dParams,
    ) -> Result<Value, ExportError> {
        let x = &self.quantized_input(x)?;
        let weight = &self.quantized_weight(weight)?;
        let k = weight.dims[2];
        let out = |size: usize| (size + 2 * p.padding - k) / p.stride + 1;
        let dims = vec![x.dims[0], weight.dims[0], out(x.dims[2]), out(x.dims[3])];
        let mut inputs = vec![x.name.as_str(), weight.name.as_str()];
        inputs.extend(bias.map(|b| b.name.as_str()));
        let (k, s, pad) = (k as i64, p.stride as i64, p.padding as i64);
        let attributes = vec![
            ("kernel_shape", AttrValue::Ints(vec![k, k])),
            ("pads", AttrValue::Ints(vec![pad; 4])),
            ("strides", AttrValue::Ints(vec![s, s])),
            ("dilations", AttrValue::Ints(vec![1, 1])),
            ("group", AttrValue::Int(p.groups as i64)),
        ];
        Ok(self.op("Conv", &inputs, attributes, dims, x.elem))
    }

    fn linear(
        &mut self,
        x: &Value,
        weight: &Value,
        bias: Option<&Value>,
    ) -> Result<Value, ExportError> {
        let x = &self.quantized_input(x)?;
        let weight = &self.quantized_weight(weight)?;
        let wt = self.op(
            "Transpose",
            &[&weight.name],
            vec![("perm", AttrValue::Ints(vec![1, 0]))],
            vec![weight.dims[1], weight.dims[0]],
            weight.elem,
        );
        let y = self.matmul(x, &wt)?;
        match bias {
            Some(b) => self.binary("Add", &y, b),
            None => Ok(y),
        }
    }

    fn matmul(&mut self, a: &Value, b: &Value) -> Result<Value, ExportError> {
        let (ra, rb) = (a.dims.len(), b.dims.len());
        let batch = broadcast(&a.dims[..ra - 2], &b.dims[..rb - 2]).ok_or_else(|| {
            ExportError::Unsupported(format!(
                "MatMul at {}: batch dimensions {} and {} do not broadcast",
                self.scope.path(),
                self.show(&a.dims),
                self.show(&b.dims)
            ))
        })?;
        let mut dims = batch;
        dims.extend([a.dims[ra - 2], b.dims[rb - 1]]);
        Ok(self.op("MatMul", &[&a.name, &b.name], vec![], dims, a.elem))
    }

    fn group_norm(
        &mut self,
        x: &Value,
        groups: usize,
        eps: f64,
        weight: &Value,
        bias: &Value,
    ) -> Result<Value, ExportError> {
        let per_group = x.dims[1..].iter().product::<usize>() / groups;
        let grouped = self.reshape_to(x, vec![x.dims[0], groups, per_group])?;
        let normed = self.standardize_last(&grouped, eps)?;
        let normed = self.reshape_to(&normed, x.dims.clone())?;
        self.affine_channels(&normed, 1, weight, bias)
    }

    fn layer_norm(
        &mut self,
        x: &Value,
        eps: f64,
        weight: &Value,
        bias: &Value,
    ) -> Result<Value, ExportError> {
        let normed = self.standardize_last(x, eps)?;
        self.affine_channels(&normed, x.dims.len() - 1, weight, bias)
    }

    fn softmax_last(&mut self, x: &Value) -> Result<Value, ExportError> {
        // In f32 whatever the model type, as the candle model computes it.
        let x32 = self.cast(x, ElemType::F32);
        let axis = ("axis", AttrValue::Int(x.dims.len() as i64 - 1));
        let y = self.op(
            "Softmax",
            &[&x32.name],
            vec![axis],
            x.dims.clone(),
            x32.elem,
        );
        Ok(self.cast(&y, x.elem))
    }

    fn attend(
        &mut self,
        q: &Value,
        kt: &Value,
        v: &Value,
        kernel: AttentionKernel,
    ) -> Result<Value, ExportError> {
        attend(self, q, kt, v, kernel)
    }

    fn unary(&mut self, x: &Value, op: Unary) -> Result<Value, ExportError> {
        let dims = x.dims.clone();
        Ok(match op {
            Unary::Relu => self.op("Relu", &[&x.name], vec![], dims, x.elem),
            Unary::Silu => {
                let gate = self.op("Sigmoid", &[&x.name], vec![], dims.clone(), x.elem);
                self.op("Mul", &[&x.name, &gate.name], vec![], dims, x.elem)
            }
            Unary::GeluErf => {
                // x · ½ · (1 + erf(x / √2)), decomposed: the Gelu op needs opset 20.
                let scaled = self.with_scalar("Mul", x, std::f64::consts::FRAC_1_SQRT_2);
                let erf = self.op("Erf", &[&scaled.name], vec![], dims.clone(), x.elem);
                let one_plus = self.with_scalar("Add", &erf, 1.0);
                let half_x = self.with_scalar("Mul", x, 0.5);
                self.op("Mul", &[&half_x.name, &one_plus.name], vec![], dims, x.elem)
            }
        })
    }

    fn attend_heads(
        &mut self,
        q: &Value,
        k: &Value,
        v: &Value,
        heads: usize,
        scale: f64,
        kernel: AttentionKernel,
    ) -> Result<Value, ExportError> {
        let keys = k.dims[1];
        let open_keys = self.symbols.decode(keys);
        if kernel != AttentionKernel::Relu || open_keys.is_static() {
            return attend_heads(self, q, k, v, heads, scale, kernel);
        }
        // ReLU attention's scale includes 1/m for m keys (see `unetlab_graph::attention`); with m
        // open, Q is scaled by the rest and divided by m at run time.
        let per_key = self.with_scalar("Mul", q, scale * keys as f64);
        let m = self.run_time_dim(open_keys)?;
        let m = Value {
            name: m,
            dims: vec![1],
            elem: ElemType::I64,
        };
        let m = self.cast(&m, q.elem);
        let q = self.binary("Div", &per_key, &m)?;
        attend_heads(self, &q, k, v, heads, 1.0, kernel)
    }

    fn scale(&mut self, x: &Value, scale: f64) -> Result<Value, ExportError> {
        if scale == 1.0 {
            return Ok(x.clone());
        }
        Ok(self.with_scalar("Mul", x, scale))
    }

    fn add(&mut self, a: &Value, b: &Value) -> Result<Value, ExportError> {
        self.binary("Add", a, b)
    }

    fn mul(&mut self, a: &Value, b: &Value) -> Result<Value, ExportError> {
        self.binary("Mul", a, b)
    }

    fn reshape(&mut self, x: &Value, dims: &[usize]) -> Result<Value, ExportError> {
        self.reshape_to(x, dims.to_vec())
    }

    fn permute(&mut self, x: &Value, perm: &[usize]) -> Result<Value, ExportError> {
        let dims = perm.iter().map(|&p| x.dims[p]).collect();
        let perm = (
            "perm",
            AttrValue::Ints(perm.iter().map(|&p| p as i64).collect()),
        );
        Ok(self.op("Transpose", &[&x.name], vec![perm], dims, x.elem))
    }

    fn concat(&mut self, xs: &[&Value], dim: usize) -> Result<Value, ExportError> {
        let mut dims = xs[0].dims.clone();
        dims[dim] = xs.iter().map(|x| x.dims[dim]).sum();
        let names: Vec<&str> = xs.iter().map(|x| x.name.as_str()).collect();
        let axis = ("axis", AttrValue::Int(dim as i64));
        Ok(self.op("Concat", &names, vec![axis], dims, xs[0].elem))
    }

    fn narrow(
        &mut self,
        x: &Value,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Value, ExportError> {
        if !self.symbols.decode(start + len).is_static() {
            return Err(ExportError::Unsupported(format!(
                "slice {start}..{} of dimension {dim} at {}: a slice must end at a static index",
                start + len,
                self.scope.path()
            )));
        }
        let starts = self.ints(&[start as i64]);
        let ends = self.ints(&[(start + len) as i64]);
        let axes = self.ints(&[dim as i64]);
        let mut dims = x.dims.clone();
        dims[dim] = len;
        Ok(self.op(
            "Slice",
            &[&x.name, &starts, &ends, &axes],
            vec![],
            dims,
            x.elem,
        ))
    }

    fn upsample_nearest2x(&mut self, x: &Value) -> Result<Value, ExportError> {
        // [B, C, H, W] → [B, C, H, 1, W, 1] → expand to [.., 2, .., 2] → [B, C, 2H, 2W]: exact
        // nearest-neighbour without Resize's coordinate-mode variations between runtimes.
        let [b, c, h, w] = x.dims[..] else {
            return Err(ExportError::Unsupported(format!(
                "upsample of a rank-{} tensor",
                x.dims.len()
            )));
        };
        let spread = self.reshape_to(x, vec![b, c, h, 1, w, 1])?;
        let target = self.ints(&[1, 1, 1, 2, 1, 2]);
        let expanded = self.op(
            "Expand",
            &[&spread.name, &target],
            vec![],
            vec![b, c, h, 2, w, 2],
            x.elem,
        );
        self.reshape_to(&expanded, vec![b, c, 2 * h, 2 * w])
    }

    fn sinusoidal(
        &mut self,
        x: &Value,
        channels: usize,
        flip_sin_to_cos: bool,
        freq_shift: f64,
    ) -> Result<Value, ExportError> {
        let half = channels / 2;
        let freqs: Vec<u8> = sinusoid_frequencies(channels, freq_shift)
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let freqs = self.constant(ElemType::F32, vec![half], freqs);
        let x32 = self.cast(x, ElemType::F32);
        let mut column = x.dims.clone();
        column.push(1);
        let column = self.reshape_to(&x32, column)?;
        let mut dims = x.dims.clone();
        dims.push(half);
        let args = self.op(
            "Mul",
            &[&column.name, &freqs],
            vec![],
            dims.clone(),
            ElemType::F32,
        );
        let sin = self.op("Sin", &[&args.name], vec![], dims.clone(), ElemType::F32);
        let cos = self.op("Cos", &[&args.name], vec![], dims, ElemType::F32);
        let parts = if flip_sin_to_cos {
            [&cos, &sin]
        } else {
            [&sin, &cos]
        };
        let last = x.dims.len();
        let emb = self.concat(&parts, last)?;
        Ok(self.cast(&emb, self.dtype))
    }
}

/// NumPy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast(&[5], &[]), Some(vec![5]));
        assert_eq!(broadcast(&[2, 3], &[4, 3]), None);
    }
}
