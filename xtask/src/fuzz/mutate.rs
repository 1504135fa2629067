//! Mutations: byte-level (flips, truncation, insertion, deletion, splices) and format-aware
//! (YAML/JSON trees, safetensors headers, PNG chunks with their CRC recomputed).

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_norway::{Mapping, Number, Value};

/// Integers that break arithmetic: zero, signs, powers of two at type boundaries.
const INTEGERS: &[i128] = &[
    0,
    1,
    -1,
    2,
    3,
    7,
    255,
    256,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    1 << 32,
    1 << 40,
    (1 << 53) + 1,
    i64::MAX as i128,
    i64::MIN as i128,
    u64::MAX as i128,
    -(1 << 31),
];

/// Floats that break arithmetic.
const FLOATS: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    -1.5,
    1e-300,
    1e308,
    -1e308,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
];

/// Text that YAML and JSON parsers treat specially.
const TOKENS: &[&str] = &[
    "\n",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!str ",
    "? ",
    "---\n",
    "...\n",
    "\"",
    "'",
    "\\u0000",
    "\t",
    "#",
    ",",
    ".nan",
    "-.inf",
    "1e999",
    "-0",
    "0x7fffffffffffffff",
    "18446744073709551616",
    "null",
    "~",
    "\u{feff}",
    "\u{fffd}",
];

/// A random integer from [`INTEGERS`] or near one.
pub fn integer(rng: &mut ChaCha8Rng) -> i128 {
    let base = *INTEGERS.choose(rng).expect("not empty");
    base + rng.random_range(-1..=1)
}

/// 1–4 byte-level mutations of `data`, splicing from `donor` when given.
pub fn bytes(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, donor: Option<&[u8]>) {
    for _ in 0..rng.random_range(1..=4) {
        byte_op(rng, data, donor);
    }
}

/// A position in `data` (0 when empty), biased towards the ends, where headers and footers live.
fn position(rng: &mut ChaCha8Rng, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    match rng.random_range(0..4) {
        0 => rng.random_range(0..len.min(64)),
        1 => len - 1 - rng.random_range(0..len.min(64)),
        _ => rng.random_range(0..len),
    }
}

fn byte_op(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, donor: Option<&[u8]>) {
    let len = data.len();
    let at = position(rng, len);
    match rng.random_range(0..9) {
        0 if len > 0 => data[at] ^= 1 << rng.random_range(0..8),
        1 if len > 0 => {
            data[at] = *[0u8, 0xff, 0x7f, 0x80, b'0', b'"', b'\n']
                .choose(rng)
                .unwrap()
        }
        2 => data.truncate(at),
        3 => {
            let n = rng.random_range(1..=32);
            let insert: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, insert);
        }
        4 if len > 0 => {
            let end = (at + rng.random_range(1..=64)).min(len);
            data.drain(at..end);
        }
        5 if len > 0 => {
            let end = (at + rng.random_range(1..=64)).min(len);
            let copy = data[at..end].to_vec();
            let to = rng.random_range(0..=len);
            data.splice(to..to, copy);
        }
        6 if len >= 8 => {
            let at = at.min(len - 8);
            let value = integer(rng) as u64;
            let encoded = if rng.random() {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let width = *[1usize, 2, 4, 8].choose(rng).unwrap();
            data[at..at + width].copy_from_slice(&encoded[..width]);
        }
        7 => {
            let token = TOKENS.choose(rng).unwrap().as_bytes();
            data.splice(at..at, token.iter().copied());
        }
        8 => {
            if let Some(donor) = donor.filter(|d| !d.is_empty()) {
                let from = rng.random_range(0..donor.len());
                let end = (from + rng.random_range(1..=256)).min(donor.len());
                let cut = (at + rng.random_range(0..=256)).min(len);
                data.splice(at..cut, donor[from..end].iter().copied());
            }
        }
        _ => {}
    }
}

/// An interesting replacement value: extreme numbers, odd strings, wrong types.
pub fn scalar(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..8) {
        0 | 1 => {
            let n = integer(rng);
            if let Ok(v) = i64::try_from(n) {
                Value::Number(v.into())
            } else if let Ok(v) = u64::try_from(n) {
                Value::Number(v.into())
            } else {
                Value::Number(Number::from(n as f64))
            }
        }
        2 => Value::Number(Number::from(*FLOATS.choose(rng).unwrap())),
        3 => Value::String(
            [
                "",
                "x",
                "sd15",
                "..",
                "/",
                "/dev/null",
                "nan",
                "1e999",
                "\u{0}",
                "ünï",
            ]
            .choose(rng)
            .unwrap()
            .to_string(),
        ),
        4 => Value::String("a".repeat(rng.random_range(1..=20_000))),
        5 => Value::Bool(rng.random()),
        6 => Value::Null,
        _ => {
            if rng.random() {
                Value::Sequence(Vec::new())
            } else {
                Value::Mapping(Mapping::new())
            }
        }
    }
}

/// Dotted paths to every node of a tree (as child indices), the root first.
fn node_paths(value: &Value, path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(path.clone());
    let children: Vec<&Value> = match value {
        Value::Sequence(s) => s.iter().collect(),
        Value::Mapping(m) => m.values().collect(),
        Value::Tagged(t) => vec![&t.value],
        _ => Vec::new(),
    };
    for (i, child) in children.into_iter().enumerate() {
        path.push(i);
        node_paths(child, path, out);
        path.pop();
    }
}

fn node_at<'a>(value: &'a mut Value, path: &[usize]) -> &'a mut Value {
    match path.split_first() {
        None => value,
        Some((&i, rest)) => {
            let child = match value {
                Value::Sequence(s) => &mut s[i],
                Value::Mapping(m) => m.values_mut().nth(i).expect("path from node_paths"),
                Value::Tagged(t) => &mut t.value,
                _ => unreachable!("paths only descend into containers"),
            };
            node_at(child, rest)
        }
    }
}

/// 1–3 structure-aware mutations of a YAML/JSON tree: replace a node with an extreme or
/// wrong-typed value, perturb a number, delete an entry, duplicate an entry, add an unknown key,
/// copy one node over another, or nest deeply.
pub fn tree(rng: &mut ChaCha8Rng, value: &mut Value) {
    for _ in 0..rng.random_range(1..=3) {
        let mut paths = Vec::new();
        node_paths(value, &mut Vec::new(), &mut paths);
        let path = paths.choose(rng).expect("the root is a node").clone();
        match rng.random_range(0..8) {
            0 | 1 => *node_at(value, &path) = scalar(rng),
            2 => {
                let node = node_at(value, &path);
                if let Some(n) = node.as_f64() {
                    let m = match rng.random_range(0..5) {
                        0 => n + 1.0,
                        1 => n - 1.0,
                        2 => -n,
                        3 => n * 1000.0,
                        _ => n / 2.0,
                    };
                    *node = if m.fract() == 0.0 && m.abs() < 9e15 {
                        Value::Number((m as i64).into())
                    } else {
                        Value::Number(Number::from(m))
                    };
                } else {
                    *node = scalar(rng);
                }
            }
            3 => match node_at(value, &path) {
                Value::Mapping(m) if !m.is_empty() => {
                    let i = rng.random_range(0..m.len());
                    let key = m.keys().nth(i).cloned().expect("in range");
                    m.remove(&key);
                }
                Value::Sequence(s) if !s.is_empty() => {
                    let i = rng.random_range(0..s.len());
                    s.remove(i);
                }
                _ => {}
            },
            4 => match node_at(value, &path) {
                Value::Sequence(s) if !s.is_empty() => {
                    let i = rng.random_range(0..s.len());
                    let copy = s[i].clone();
                    s.insert(i, copy);
                }
                Value::Mapping(m) => {
                    let key = ["zzz", "extends", "name", "0", "__metadata__"]
                        .choose(rng)
                        .unwrap();
                    m.insert(Value::String(key.to_string()), scalar(rng));
                }
                _ => {}
            },
            5 => {
                if let Value::Mapping(m) = node_at(value, &path) {
                    let key = Value::Number(rng.random_range(-1..5).into());
                    m.insert(key, scalar(rng));
                }
            }
            6 => {
                let from = paths.choose(rng).expect("not empty").clone();
                let copy = node_at(value, &from).clone();
                *node_at(value, &path) = copy;
            }
            _ => {
                let node = node_at(value, &path);
                let mut nested = std::mem::take(node);
                for _ in 0..rng.random_range(1..200) {
                    nested = Value::Sequence(vec![nested]);
                }
                *node = nested;
            }
        }
    }
}

/// YAML text mutated as a tree (re-serialised) or as text.
pub fn yaml_text(rng: &mut ChaCha8Rng, text: &str, donor: Option<&[u8]>) -> Vec<u8> {
    if rng.random_range(0..3) > 0 {
        if let Ok(mut value) = serde_norway::from_str::<Value>(text) {
            tree(rng, &mut value);
            if let Ok(out) = serde_norway::to_string(&value) {
                return out.into_bytes();
            }
        }
    }
    let mut data = text.as_bytes().to_vec();
    if rng.random() {
        lines(rng, &mut data);
    } else {
        bytes(rng, &mut data, donor);
    }
    data
}

/// JSON text mutated as a tree (through YAML's data model, re-serialised as JSON) or as text.
pub fn json_text(rng: &mut ChaCha8Rng, text: &str, donor: Option<&[u8]>) -> Vec<u8> {
    if rng.random_range(0..3) > 0 {
        if let Ok(mut value) = serde_norway::from_str::<Value>(text) {
            tree(rng, &mut value);
            if let Ok(out) = serde_json::to_string(&value) {
                return out.into_bytes();
            }
        }
    }
    let mut data = text.as_bytes().to_vec();
    bytes(rng, &mut data, donor);
    data
}

/// Line-level edits: duplicate a line (duplicate keys), delete one, or change its indentation.
fn lines(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return;
    }
    let i = rng.random_range(0..lines.len());
    match rng.random_range(0..3) {
        0 => {
            let copy = lines[i].clone();
            lines.insert(i, copy);
        }
        1 => {
            lines.remove(i);
        }
        _ => {
            let indent = " ".repeat(rng.random_range(0..7));
            lines[i] = format!("{indent}{}", lines[i].trim_start());
        }
    }
    *data = lines.join("\n").into_bytes();
}

/// A safetensors file split into its header (JSON) and data.
pub struct Safetensors {
    /// The header object: tensor entries and `__metadata__`.
    pub header: serde_json::Map<String, serde_json::Value>,
    /// The byte buffer after the header.
    pub data: Vec<u8>,
}

impl Safetensors {
    /// Splits a valid file; `None` if it is not one.
    pub fn parse(file: &[u8]) -> Option<Safetensors> {
        let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?) as usize;
        let header = serde_json::from_slice(file.get(8..8 + len)?).ok()?;
        Some(Safetensors {
            header,
            data: file[8 + len..].to_vec(),
        })
    }

    /// The file: header length, header, data.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("JSON always prints");
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(&self.data);
        out
    }

    /// A string entry of the metadata, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.header.get("__metadata__")?.get(key)?.as_str()
    }

    /// Sets a string entry of the metadata.
    pub fn set_metadata(&mut self, key: &str, value: String) {
        let meta = self
            .header
            .entry("__metadata__")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(map) = meta.as_object_mut() {
            map.insert(key.to_string(), value.into());
        }
    }
}

/// A mutated safetensors file: header-aware edits (length, dtype, shape, offsets, names,
/// metadata — with `metadata` mutating the JSON inside metadata values), data edits, or bytes.
pub fn safetensors(rng: &mut ChaCha8Rng, file: &[u8]) -> Vec<u8> {
    let Some(mut st) = Safetensors::parse(file).filter(|_| rng.random_range(0..5) > 0) else {
        let mut data = file.to_vec();
        bytes(rng, &mut data, None);
        return data;
    };
    let names: Vec<String> = st
        .header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let mut length_override = None;
    for _ in 0..rng.random_range(1..=2) {
        let name = names.choose(rng).cloned().unwrap_or_default();
        match rng.random_range(0..10) {
            0 => length_override = Some(integer(rng) as u64),
            1 => {
                if let Some(entry) = st.header.get_mut(&name) {
                    entry["dtype"] = [
                        "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4",
                        "X",
                    ]
                    .choose(rng)
                    .unwrap()
                    .to_string()
                    .into();
                }
            }
            2 => {
                if let Some(shape) = st
                    .header
                    .get_mut(&name)
                    .and_then(|e| e["shape"].as_array_mut())
                {
                    match rng.random_range(0..4) {
                        0 if !shape.is_empty() => {
                            let i = rng.random_range(0..shape.len());
                            shape[i] = json_integer(integer(rng));
                        }
                        1 => shape.push(json_integer(integer(rng))),
                        2 => {
                            shape.pop();
                        }
                        _ => shape.reverse(),
                    }
                }
            }
            3 => {
                // Reshape keeping the byte count: deeper checks (shape against the config) run.
                if let Some(entry) = st.header.get_mut(&name) {
                    let count: u64 = entry["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(|d| d.as_u64()).product())
                        .unwrap_or(0);
                    let shape = match rng.random_range(0..3) {
                        0 => vec![count],
                        1 => vec![1, count],
                        _ => vec![count, 1, 1],
                    };
                    entry["shape"] = serde_json::json!(shape);
                }
            }
            4 => {
                if let Some(entry) = st.header.get_mut(&name) {
                    let end = st.data.len() as i128;
                    let pick = |rng: &mut ChaCha8Rng| match rng.random_range(0..3) {
                        0 => json_integer(integer(rng)),
                        1 => json_integer(rng.random_range(0..=end)),
                        _ => json_integer(end + rng.random_range(-4..=4)),
                    };
                    let i = rng.random_range(0..2);
                    entry["data_offsets"][i] = pick(rng);
                }
            }
            5 => {
                st.header.remove(&name);
            }
            6 => {
                if let Some(entry) = st.header.get(&name).cloned() {
                    let new_name = ["", ".", "model", "x.y", "model.", "adam_m.a.b", "ema"]
                        .choose(rng)
                        .unwrap()
                        .to_string();
                    if rng.random() {
                        st.header.remove(&name);
                    }
                    st.header.insert(new_name, entry);
                }
            }
            7 => {
                let keys: Vec<String> = st
                    .header
                    .get("__metadata__")
                    .and_then(|m| m.as_object())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                match keys.choose(rng) {
                    Some(key) if rng.random_range(0..4) > 0 => {
                        let inner = st.metadata(key).unwrap_or_default().to_string();
                        let mutated = json_text(rng, &inner, None);
                        st.set_metadata(key, String::from_utf8_lossy(&mutated).into_owned());
                    }
                    _ => {
                        let mut value = serde_norway::to_value(st.header.get("__metadata__"))
                            .unwrap_or_default();
                        tree(rng, &mut value);
                        match serde_json::to_value(&value) {
                            Ok(v) => {
                                st.header.insert("__metadata__".into(), v);
                            }
                            Err(_) => {
                                st.header.remove("__metadata__");
                            }
                        }
                    }
                }
            }
            8 => {
                let mut data = std::mem::take(&mut st.data);
                bytes(rng, &mut data, None);
                st.data = data;
            }
            _ => {
                if let Some(entry) = st.header.get(&name).cloned() {
                    st.header.insert(format!("{name}.copy"), entry);
                }
            }
        }
    }
    let mut out = st.encode();
    if let Some(len) = length_override {
        out[..8].copy_from_slice(&len.to_le_bytes());
    }
    out
}

fn json_integer(n: i128) -> serde_json::Value {
    if let Ok(v) = i64::try_from(n) {
        v.into()
    } else if let Ok(v) = u64::try_from(n) {
        v.into()
    } else {
        (n as f64).into()
    }
}

/// A mutated PNG: one chunk's fields or data changed with its CRC recomputed (so the decoder
/// reads on), a chunk dropped or duplicated, or bytes.
pub fn png(rng: &mut ChaCha8Rng, file: &[u8]) -> Vec<u8> {
    let chunks = png_chunks(file);
    if chunks.is_empty() || rng.random_range(0..4) == 0 {
        let mut data = file.to_vec();
        bytes(rng, &mut data, None);
        return data;
    }
    let mut chunks = chunks;
    let i = rng.random_range(0..chunks.len());
    match rng.random_range(0..4) {
        0 => {
            chunks.remove(i);
        }
        1 => {
            let copy = chunks[i].clone();
            chunks.insert(i, copy);
        }
        2 if chunks[i].0 == *b"IHDR" && chunks[i].1.len() >= 13 => {
            // Width, height, bit depth, colour type, interlace.
            let data = &mut chunks[i].1;
            match rng.random_range(0..3) {
                0 => {
                    let at = *[0usize, 4].choose(rng).unwrap();
                    let value = integer(rng) as u32;
                    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
                }
                1 => data[8] = *[0u8, 1, 2, 4, 8, 16, 3].choose(rng).unwrap(),
                _ => data[9 + rng.random_range(0..4)] = rng.random_range(0..8),
            }
        }
        _ => {
            let mut data = std::mem::take(&mut chunks[i].1);
            bytes(rng, &mut data, None);
            chunks[i].1 = data;
        }
    }
    let mut out = file[..8].to_vec();
    for (kind, data) in &chunks {
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(kind);
        out.extend(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend(data);
        out.extend(crc32(&crc_input).to_be_bytes());
    }
    out
}

/// The chunks of a PNG file (type, data), or none if it does not parse.
fn png_chunks(file: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= file.len() {
        let len = u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind: [u8; 4] = file[at + 4..at + 8].try_into().expect("4 bytes");
        let Some(data) = file.get(at + 8..at + 8 + len) else {
            return Vec::new();
        };
        chunks.push((kind, data.to_vec()));
        at += 12 + len;
    }
    chunks
}

/// CRC-32 (IEEE), as PNG chunks use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn safetensors_round_trips() {
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend([0, 0, 128, 63]);
        let st = Safetensors::parse(&file).unwrap();
        assert_eq!(st.data, [0, 0, 128, 63]);
        assert_eq!(st.encode(), file);
    }
}
