//! The `--device`, `--dtype` and `--threads` flags shared by every command that runs a model.

use candle_core::{DType, Device};
use unetlab_model::{parse_device, parse_dtype};

use crate::process::prepare_process;

/// Where and how to run the model.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// `cpu`, `cuda[:N]` or `metal[:N]` (cuda/metal need the matching cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// CPU threads for candle's kernels (default: all; sets RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl DeviceArgs {
    /// Applies `--threads` and opens the device; call before any tensor work.
    pub fn open(&self) -> Result<(Device, DType), String> {
        prepare_process(self.threads)?;
        Ok((parse_device(&self.device)?, parse_dtype(&self.dtype)?))
    }
}
