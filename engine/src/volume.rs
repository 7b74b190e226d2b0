//! 3-D and transposed convolutions built on the 2-D kernels. A 3-D conv gathers each
//! output plane's patches into rows (in the weights' [kd][kh][kw][cin] order) and
//! multiplies them as a pointwise conv, so it runs on the same VNNI / `sdot` / AVX2
//! products as a MobileNet's 1x1 layers. A transposed conv multiplies every input
//! pixel by every tap's weights (one pointwise product with taps x cout columns) and
//! adds each tap's column into the output pixel it lands on. Both are integer-exact:
//! the scatter only adds int32s, so every ISA gives the same bits.

use super::plan::Geometry3;
use std::ops::Range;

/// Rows [pixels][kd * kh * kw * cin] of output plane `oz`, for its pixels (oy * ow +
/// ox) in `pixels`, the first at row 0: taps outside the input read the zero point,
/// so the correction zp * Σw is the same for every row. A range rather than the whole
/// plane lets threads gather and multiply parts of one plane.
pub fn gather_plane(x: &[u8], g: &Geometry3, zp: u8, oz: usize, pixels: Range<usize>, rows: &mut [u8]) {
    let [d, h, w] = g.input.map(|v| v as isize);
    let c = g.cin;
    let [kd, kh, kw] = g.kernel;
    let k = kd * kh * kw * c;
    let [_, oh, ow] = g.output;
    assert!(pixels.end <= oh * ow);
    for (r, px) in pixels.enumerate() {
        let (oy, ox) = (px / ow, px % ow);
        let row = &mut rows[r * k..][..k];
        let ix0 = (ox * g.stride[2]) as isize - g.pads[2] as isize;
        for a in 0..kd {
            let iz = (oz * g.stride[0] + a) as isize - g.pads[0] as isize;
            for b in 0..kh {
                let iy = (oy * g.stride[1] + b) as isize - g.pads[1] as isize;
                let dst = &mut row[(a * kh + b) * kw * c..][..kw * c];
                if iz < 0 || iz >= d || iy < 0 || iy >= h {
                    dst.fill(zp);
                    continue;
                }
                let base = ((iz * h + iy) * w) as usize * c;
                if ix0 >= 0 && ix0 + kw as isize <= w {
                    dst.copy_from_slice(&x[base + ix0 as usize * c..][..kw * c]);
                } else {
                    for j in 0..kw {
                        let ix = ix0 + j as isize;
                        let o = &mut dst[j * c..][..c];
                        if ix < 0 || ix >= w {
                            o.fill(zp);
                        } else {
                            o.copy_from_slice(&x[base + ix as usize * c..][..c]);
                        }
                    }
                }
            }
        }
    }
}

/// acc[o][c] = Σ over the (input pixel, tap) pairs landing on o of cols[i][tap][c] -
/// col_offset[tap][c]: a transposed conv's sums from its columns (`cols`: [input
/// pixels][taps][cout]), zero-point corrected per contributing tap (border outputs
/// receive fewer taps, so one offset per output channel would be wrong there).
/// Only output planes `planes` are formed, `acc` holding them from its start, so that
/// threads can form disjoint planes: each reads the columns of the input planes that
/// land in its range, in input order (each column block read once, as on one thread).
/// Integer sums, so the order of the additions is immaterial.
pub fn scatter_columns(cols: &[i32], g: &Geometry3, cout: usize, col_offset: &[i32], planes: Range<usize>, acc: &mut [i32]) {
    let [id, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.output.map(|v| v as isize);
    assert!(planes.end <= od as usize);
    let taps = kd * kh * kw;
    let (first, last) = (planes.start as isize, planes.end as isize);
    acc[..planes.len() * (oh * ow) as usize * cout].fill(0);
    let land = |i: usize, axis: usize, t: usize| (i * g.stride[axis] + t) as isize - g.pads[axis] as isize;
    for iz in 0..id {
        if (0..kd).all(|a| !(first..last).contains(&land(iz, 0, a))) {
            continue;
        }
        for iy in 0..ih {
            for ix in 0..iw {
                let col = &cols[((iz * ih + iy) * iw + ix) * taps * cout..][..taps * cout];
                for a in 0..kd {
                    let oz = land(iz, 0, a);
                    if oz < first || oz >= last {
                        continue;
                    }
                    for b in 0..kh {
                        let oy = land(iy, 1, b);
                        if oy < 0 || oy >= oh {
                            continue;
                        }
                        for j in 0..kw {
                            let ox = land(ix, 2, j);
                            if ox < 0 || ox >= ow {
                                continue;
                            }
                            let t = (a * kh + b) * kw + j;
                            let o = &mut acc[(((oz - first) * oh + oy) * ow + ox) as usize * cout..][..cout];
                            for ((o, &v), &z) in o.iter_mut().zip(&col[t * cout..][..cout]).zip(&col_offset[t * cout..][..cout]) {
                                *o += v - z;
                            }
                        }
                    }
                }
            }
        }
    }
}
