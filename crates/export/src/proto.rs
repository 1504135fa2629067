//! A minimal writer of the ONNX protobuf messages (`onnx.proto`, IR version 7–10).
//!
//! Only what the exporter emits is modelled. Messages are encoded by hand in the protobuf wire
//! format: varints, length-delimited fields, packed repeated integers. Field numbers are ONNX's.

/// ONNX tensor element types used here (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// `FLOAT`.
    F32 = 1,
    /// `INT8` (quantized weights).
    I8 = 3,
    /// `INT64`.
    I64 = 7,
    /// `FLOAT16`.
    F16 = 10,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::I64 => 8,
            ElemType::I8 => 1,
            ElemType::F16 => 2,
        }
    }
}

/// A node attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `INTS`.
    Ints(Vec<i64>),
}

/// One operator application.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Operator name (`Conv`, `MatMul`, ...), default domain.
    pub op_type: &'static str,
    /// Unique node name (scope and op, for profiles and error messages).
    pub name: String,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// Where an initializer's bytes live.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorBytes {
    /// Inside the model file (`raw_data`), little-endian.
    Raw(Vec<u8>),
    /// In an external file beside the model (`data_location = EXTERNAL`).
    External {
        /// File name relative to the model file.
        location: String,
        /// Byte offset in that file.
        offset: u64,
        /// Byte length.
        length: u64,
    },
}

/// A named constant tensor (weights and constants).
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    /// Value name.
    pub name: String,
    /// Element type.
    pub elem_type: ElemType,
    /// Dimensions.
    pub dims: Vec<usize>,
    /// The data.
    pub bytes: TensorBytes,
}

/// A dimension of a graph input or output: fixed or named (dynamic).
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size (`batch`).
    Named(String),
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// Value name.
    pub name: String,
    /// Element type.
    pub elem_type: ElemType,
    /// Shape.
    pub dims: Vec<Dim>,
}

/// A whole model: one graph in the default domain at one opset.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Graph name.
    pub name: String,
    /// Opset version of the default domain.
    pub opset: i64,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Weights and constants.
    pub initializers: Vec<Initializer>,
    /// Graph inputs.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// `metadata_props` (key, value).
    pub metadata: Vec<(String, String)>,
}

/// The IR version matching an opset (ONNX's versioning table).
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=12 => 7,
        13..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

impl Model {
    /// The serialised `ModelProto`.
    pub fn encode(&self) -> Vec<u8> {
        let mut graph = Vec::new();
        for n in &self.nodes {
            message(&mut graph, 1, &encode_node(n));
        }
        string(&mut graph, 2, &self.name);
        for t in &self.initializers {
            message(&mut graph, 5, &encode_tensor(t));
        }
        for v in &self.inputs {
            message(&mut graph, 11, &encode_value_info(v));
        }
        for v in &self.outputs {
            message(&mut graph, 12, &encode_value_info(v));
        }

        let mut model = Vec::with_capacity(graph.len() + 1024);
        varint_field(&mut model, 1, ir_version(self.opset) as u64);
        string(&mut model, 2, "unetlab");
        string(&mut model, 3, env!("CARGO_PKG_VERSION"));
        let mut opset = Vec::new();
        string(&mut opset, 1, "");
        varint_field(&mut opset, 2, self.opset as u64);
        message(&mut model, 8, &opset);
        message(&mut model, 7, &graph);
        for (k, v) in &self.metadata {
            let mut entry = Vec::new();
            string(&mut entry, 1, k);
            string(&mut entry, 2, v);
            message(&mut model, 14, &entry);
        }
        model
    }
}

fn encode_node(n: &Node) -> Vec<u8> {
    let mut b = Vec::new();
    for i in &n.inputs {
        string(&mut b, 1, i);
    }
    for o in &n.outputs {
        string(&mut b, 2, o);
    }
    string(&mut b, 3, &n.name);
    string(&mut b, 4, n.op_type);
    for (name, value) in &n.attributes {
        let mut a = Vec::new();
        string(&mut a, 1, name);
        let kind = match value {
            AttrValue::Float(f) => {
                key(&mut a, 2, 5);
                a.extend_from_slice(&f.to_le_bytes());
                1
            }
            AttrValue::Int(i) => {
                varint_field(&mut a, 3, *i as u64);
                2
            }
            AttrValue::Ints(list) => {
                for i in list {
                    varint_field(&mut a, 8, *i as u64);
                }
                7
            }
        };
        varint_field(&mut a, 20, kind);
        message(&mut b, 5, &a);
    }
    b
}

fn encode_tensor(t: &Initializer) -> Vec<u8> {
    let mut b = Vec::new();
    for &d in &t.dims {
        varint_field(&mut b, 1, d as u64);
    }
    varint_field(&mut b, 2, t.elem_type as u64);
    string(&mut b, 8, &t.name);
    match &t.bytes {
        TensorBytes::Raw(raw) => bytes(&mut b, 9, raw),
        TensorBytes::External {
            location,
            offset,
            length,
        } => {
            for (k, v) in [
                ("location", location.clone()),
                ("offset", offset.to_string()),
                ("length", length.to_string()),
            ] {
                let mut entry = Vec::new();
                string(&mut entry, 1, k);
                string(&mut entry, 2, &v);
                message(&mut b, 13, &entry);
            }
            varint_field(&mut b, 14, 1);
        }
    }
    b
}

fn encode_value_info(v: &ValueInfo) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in &v.dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(n) => varint_field(&mut dim, 1, *n as u64),
            Dim::Named(s) => string(&mut dim, 2, s),
        }
        message(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    varint_field(&mut tensor, 1, v.elem_type as u64);
    message(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    message(&mut ty, 1, &tensor);
    let mut b = Vec::new();
    string(&mut b, 1, &v.name);
    message(&mut b, 2, &ty);
    b
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A field key: `field << 3 | wire type` (0 varint, 2 length-delimited, 5 fixed32).
fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, 0);
    varint(buf, v);
}

fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(buf, field, 2);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes(buf, field, s.as_bytes());
}

fn message(buf: &mut Vec<u8>, field: u32, encoded: &[u8]) {
    bytes(buf, field, encoded);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let mut b = Vec::new();
        varint(&mut b, 1);
        varint(&mut b, 300);
        varint(&mut b, u64::MAX);
        assert_eq!(&b[..3], &[0x01, 0xac, 0x02]);
        assert_eq!(b.len(), 3 + 10);
        // Negative int64 values are ten-byte two's-complement varints.
        let mut n = Vec::new();
        varint(&mut n, -1i64 as u64);
        assert_eq!(
            n,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn ir_versions_follow_the_onnx_table() {
        assert_eq!(ir_version(13), 8);
        assert_eq!(ir_version(17), 8);
        assert_eq!(ir_version(19), 9);
        assert_eq!(ir_version(21), 10);
    }
}
