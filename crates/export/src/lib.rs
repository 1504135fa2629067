//! Export for inference: the ONNX interpreter of the UNet forward and self-checking bundles.
//!
//! [`onnx::onnx_model`] walks `unetlab_graph::unet_forward` with symbolic tensors and records ONNX
//! nodes ([`proto`] writes them); [`bundle::write_bundle`] puts the graph beside the resolved
//! config, the safetensors weights, a test vector and a model card, atomically; and
//! [`bundle::Bundle::open`] checks a bundle before anything uses it.

pub mod bundle;
mod card;
pub mod error;
pub mod onnx;
pub mod proto;
pub mod symbols;

pub use bundle::{write_bundle, Bundle, ExportOptions, Latency, Manifest, TextEncoderPart};
pub use error::ExportError;
