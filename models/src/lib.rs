//! edgemed-models: the reference architectures of edgemed's seed papers, built
//! from base weights (safetensors, documented names) or a seeded initialisation
//! and emitted as ONNX with the base layer's graph builder (`edgemed_onnx::builder`):
//! it depends on edgemed-onnx alone, no inference engine. Host-side only; the device
//! runtime does not link it.
//!
//! - [`bagnet3d`]: 3-D BagNets (ResNet-50, receptive field 9/17/33) for brain age and sex.
//! - [`eq_mobilenet_v2`]: rotation-equivariant MobileNetV2 for C_N (PCam).
//! - [`espcn3d`]: 3-D ESPCN super-resolution (valid convolutions, 3-D pixel shuffle).
//! - [`unet`]: MONAI-shaped 2-D / 3-D U-Nets from MONAI state_dicts.
//! - [`glow3d`]: the aging twin: 3-D GLOW encoder and analytic decoder, temporal latent model.
//! - [`rotation`]: rotated filter banks (grid rotations, steerable basis).
//! - [`weights`]: named tensors and their safetensors form.

pub mod bagnet3d;
pub mod eq_mobilenet_v2;
pub mod error;
pub mod espcn3d;
pub mod glow3d;
pub mod rotation;
pub mod unet;
pub mod weights;

pub use error::{Error, Result};
