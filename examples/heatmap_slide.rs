//! A heatmap of a synthetic slide region: the sample patches are laid out as an
//! 8 x 8 mosaic (768 x 768 pixels) with the metastatic ones inside a central disc,
//! the rest outside; the bundled model then maps P(metastatic) over the region.
//!
//!     cargo run --release -p edgemed-runtime --example heatmap_slide -- [OUT_DIR]
//!
//! writes OUT_DIR/slide_region.png (the input), OUT_DIR/slide_heatmap.png (the
//! overlay) and OUT_DIR/slide_heatmap.npy (the map); OUT_DIR defaults to target/heatmap_slide.
//! The same map from the command line (same defaults, stride 31 here):
//! `edgemed-run heatmap OUT_DIR/slide_region.png -o map.png`.

use std::path::PathBuf;

use edgemed_runtime::formats::patch::read_rgb;
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::tasks::heatmap::{self, HeatmapOptions};

const GRID: u32 = 8;
const P: u32 = 96;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| root.join("target/heatmap_slide"));
    std::fs::create_dir_all(&out)?;
    let data = root.join("examples/data/pcam");
    let labels = std::fs::read_to_string(data.join("labels.csv"))?;
    let (mut tumour, mut normal) = (Vec::new(), Vec::new());
    for line in labels.lines().skip(1) {
        let (file, label) = line.split_once(',').ok_or("labels.csv: bad line")?;
        if label.trim() == "1" {
            tumour.push(file.to_string())
        } else {
            normal.push(file.to_string())
        }
    }
    let mut region = image::RgbImage::new(GRID * P, GRID * P);
    let centre = (GRID as f32 - 1.0) / 2.0;
    for r in 0..GRID {
        for c in 0..GRID {
            let inside = ((r as f32 - centre).powi(2) + (c as f32 - centre).powi(2)).sqrt() < 2.2;
            let pool = if inside { &mut tumour } else { &mut normal };
            let patch = read_rgb(&data.join(pool.pop().ok_or("not enough sample patches")?))?;
            image::imageops::replace(&mut region, &patch, (c * P) as i64, (r * P) as i64);
        }
    }
    region.save(out.join("slide_region.png"))?;
    let model = OnnxModel::from_bytes(edgemed_runtime::BUNDLED_MODEL_NAME, edgemed_runtime::BUNDLED_MODEL)?;
    // The CLI's defaults (stride: a third of the patch side, 31 px for this model), so the
    // command below gives the same map.
    let map = heatmap::heatmap(&model, &region, &HeatmapOptions::default())?;
    heatmap::overlay(&region, &map, 0.5).save(out.join("slide_heatmap.png"))?;
    let grid = edgemed_runtime::ndarray::Array2::from_shape_vec((map.rows, map.cols), map.probs.clone())?;
    ndarray_npy::write_npy(out.join("slide_heatmap.npy"), &grid)?;
    let (lo, mean, hi) = map.summary();
    println!(
        "{}x{} map, cells of {} px: P(metastatic) min {lo:.3} mean {mean:.3} max {hi:.3}; {:.1}% of the region above 0.5",
        map.rows,
        map.cols,
        map.cell,
        100.0 * map.area_above(0.5)
    );
    println!("wrote {}", out.join("slide_heatmap.png").display());
    Ok(())
}
