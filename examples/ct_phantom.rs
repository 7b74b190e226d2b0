//! A synthetic head CT (Hounsfield units) to try `segment`, `upsample` and `age` on,
//! and to benchmark them without patient data: air, a skull shell, brain tissue, and
//! two lateral ventricles whose size grows with `--years` (the change the aging twin
//! of the seed paper tracks).
//!
//!     cargo run --release -p edgemed-runtime --example ct_phantom -- 128 head.nii.gz [YEARS]

use edgemed_runtime::ndarray::Array3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ct_phantom SIZE OUT.nii.gz [YEARS]";
    let size: usize = args.first().ok_or(usage)?.parse().map_err(|_| usage)?;
    let out = args.get(1).ok_or(usage)?;
    let years: f32 = args.get(2).map_or(Ok(0.0), |y| y.parse()).map_err(|_| usage)?;
    if !(8..=1024).contains(&size) {
        return Err("SIZE must be 8 to 1024".into());
    }
    // A 200 mm field of view; ventricles widen by 1% per year.
    let spacing = 200.0 / size as f32;
    let c = (size as f32 - 1.0) / 2.0;
    let grow = 1.0 + 0.01 * years;
    let ellipsoid =
        |p: [f32; 3], centre: [f32; 3], radii: [f32; 3]| -> f32 { (0..3).map(|d| ((p[d] - centre[d]) / radii[d]).powi(2)).sum::<f32>() };
    let hu = Array3::from_shape_fn((size, size, size), |(i, j, k)| {
        let p = [(i as f32 - c) * spacing, (j as f32 - c) * spacing, (k as f32 - c) * spacing];
        let head = ellipsoid(p, [0.0; 3], [72.0, 90.0, 80.0]);
        let brain = ellipsoid(p, [0.0; 3], [66.0, 84.0, 74.0]);
        let ventricle = |x: f32| ellipsoid(p, [x * grow, 5.0, 10.0], [6.0 * grow, 24.0 * grow, 12.0 * grow]);
        // Gentle texture so intensities are not piecewise constant.
        let texture = 4.0 * ((p[0] * 0.3).sin() * (p[1] * 0.23).cos() * (p[2] * 0.17).sin());
        if head > 1.0 {
            -1000.0
        } else if brain > 1.0 {
            1000.0
        } else if ventricle(-9.0) <= 1.0 || ventricle(9.0) <= 1.0 {
            8.0 + texture
        } else {
            35.0 + texture
        }
    });
    let mut header = nifti::NiftiHeader { sform_code: 1, qform_code: 1, ..Default::default() };
    let origin = -c * spacing;
    header.pixdim = [1.0, spacing, spacing, spacing, 1.0, 1.0, 1.0, 1.0];
    header.srow_x = [spacing, 0.0, 0.0, origin];
    header.srow_y = [0.0, spacing, 0.0, origin];
    header.srow_z = [0.0, 0.0, spacing, origin];
    (header.quatern_x, header.quatern_y, header.quatern_z) = (origin, origin, origin);
    header.xyzt_units = 2; // mm
    edgemed_runtime::formats::volume::write_nifti(std::path::Path::new(out), &header, hu.view(), None)?;
    println!("wrote {out}: {size}^3 head phantom, {spacing:.3} mm voxels, ventricles at +{years} years");
    Ok(())
}
