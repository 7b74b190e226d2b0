//! What the runtime does with a model, one file per task. Each reads its inputs through
//! [`crate::formats`] and runs the model through a [`crate::backend::Backend`]; a new
//! task (a slide, a DICOM series, a server endpoint) is a new file here.
//!
//! - [`classify`]: batched classification of patches (PCam), probabilities per class;
//! - [`scoring`]: accuracy, sensitivity, specificity and ROC area against known labels;
//! - [`heatmap`]: probability maps over images larger than the model's patch;
//! - [`sliding_window`]: window tiling and blending over volumes (MONAI's scheme);
//! - [`segment`]: label volumes from a segmentation model, by sliding window;
//! - [`upsample`]: super-resolution of volumes (3-D ESPCN), tile by tile;
//! - [`aging`]: the GLOW digital twin's prediction x+ = G^-1 . P^n . G(x).
//! - [`brain_age`]: brain age and sex maps from T1 MRI with 3-D BagNets, tile by tile.

pub mod aging;
pub mod brain_age;
pub mod classify;
pub mod heatmap;
pub mod scoring;
pub mod segment;
pub mod sliding_window;
pub mod upsample;
