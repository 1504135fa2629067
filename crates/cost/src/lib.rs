//! The cost interpreter: runs the UNet forward on shapes alone.
//!
//! Conventions (state them wherever a number is shown):
//! - MACs are multiply-accumulates of conv layers (`out elements × in/groups × k²`), linear layers
//!   (`out elements × in`) and attention matmuls (QKᵀ and AV); FLOPs = 2 × MACs. Biases, norms,
//!   activations and softmax are not counted (the convention of `torch.utils.flop_counter`).
//! - Activation memory is f32 (4 bytes per element). Views (reshape, permute, narrow) share their
//!   input's buffer; every other op allocates its output, freed when the forward drops the last
//!   handle. *Peak* is the most bytes live at once during an inference forward; *total* is every
//!   buffer ever allocated (what a naive backward pass would keep).
//! - No parameter memory is allocated: parameters are shapes.

mod counter;
mod report;

pub use counter::{CostError, Counter, Sym};
pub use report::{BlockCost, BlockSignature, Conditions, CostReport, Macs, ParamInfo, PlaceCost};
pub use unetlab_graph::{BlockKind, Direction, Place};

use unetlab_graph::{text_encoder_forward, unet_forward, TextEncoderSpec, UnetInputs};
use unetlab_spec::UnetSpec;

/// Counts one forward of `spec` under `conditions`.
pub fn count(spec: &UnetSpec, conditions: Conditions) -> Result<CostReport, CostError> {
    let mut counter = Counter::new();
    let shapes = UnetInputs::shapes(
        spec,
        conditions.batch,
        [conditions.latent_size; 2],
        conditions.tokens,
    );
    let inputs = shapes.try_map(|_, dims| Ok::<_, CostError>(counter.input(dims)))?;
    let output = unet_forward(&mut counter, spec, &inputs)?;
    let expected = [
        conditions.batch,
        spec.out_channels,
        conditions.latent_size,
        conditions.latent_size,
    ];
    if output.dims() != expected {
        return Err(CostError::new(
            "",
            "output",
            format!("output shape {:?}, expected {expected:?}", output.dims()),
        ));
    }
    drop(output);
    drop(inputs);
    Ok(counter.finish(conditions))
}

/// The text encoder's parameters, in declaration order (a walk of its forward on shapes).
pub fn text_encoder_params(spec: &TextEncoderSpec) -> Result<Vec<ParamInfo>, CostError> {
    let mut counter = Counter::new();
    let input = counter.input(&[1, spec.tokens, spec.vocab]);
    text_encoder_forward(&mut counter, spec, &input)?;
    drop(input);
    let conditions = Conditions {
        batch: 1,
        latent_size: 0,
        tokens: spec.tokens,
    };
    Ok(counter.finish(conditions).parameters)
}
