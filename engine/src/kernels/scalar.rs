//! The portable reference kernels: what every machine can run, and what every other
//! implementation must match bit for bit. Plain loops on the scalar layouts: dense
//! weights as rows [cout][k] (im2row for kernels larger than 1x1), depthwise weights
//! as [taps][c] int32 ([`pack_depthwise`]), grouped weights as ONNX stores them
//! ([`grouped`]: the direct loops the SIMD ISAs' widened depthwise must match), requantisation and input quantisation in
//! the IEEE float operations ONNX Runtime's QDQ arithmetic amounts to. The AVX2 file
//! compiles the `#[inline(always)]` loops of this one for AVX2.

use super::{ConvGeometry, GroupedWeights, PackedWeights, Requant};
use super::{ConvKind, QTensor};

/// Depthwise weights `w` ([c][taps], as ONNX stores them) as [taps][c] int32, the
/// layout of [`depthwise`].
pub fn pack_depthwise(w: &[i8], c: usize, taps: usize) -> Vec<i32> {
    let mut t_c = vec![0i32; taps * c];
    for ch in 0..c {
        for t in 0..taps {
            t_c[t * c + ch] = w[ch * taps + t] as i32;
        }
    }
    t_c
}

/// A convolution's sums, then their requantisation into `out`.
#[allow(clippy::too_many_arguments)]
pub fn conv(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, r: &Requant, scratch: &mut [u8], acc: &mut [i32], out: &mut [u8]) {
    let pixels = g.oh * g.ow;
    let cout = r.mult.len();
    accumulate(x, g, zp, kind, scratch, acc);
    requantize(&acc[..pixels * cout], cout, r, out);
}

/// The int32 sums of a convolution (see [`super::accumulate`]): im2row rows (or the
/// input itself for pointwise) times the weight rows; depthwise directly.
pub fn accumulate(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    match kind {
        ConvKind::Dense(w) => {
            let input: &[u8] = if g.is_pointwise() {
                x
            } else {
                im2row(x, g, zp, scratch);
                scratch
            };
            gemm(input, g.oh * g.ow, w, acc);
        }
        ConvKind::Depthwise(w) => depthwise(x, g, zp, &w.w, acc),
        ConvKind::Grouped(w) => grouped(x, g, zp, w, acc),
    }
}

/// Grouped convolution, the reference: acc[p][c] = Σ_taps Σ_{j < cin_g}
/// (x[p, tap][(c / cout_g) cin_g + j] - zp) w[c][j][tap], padding contributing 0;
/// `w.raw` is [cout][cin_g][kh][kw] as ONNX stores it.
pub fn grouped(x: &[u8], g: &ConvGeometry, zp: u8, w: &GroupedWeights, acc: &mut [i32]) {
    let (cin_g, cout_g, cout) = (w.cin_g, w.cout_g, w.cout);
    assert!(w.raw.len() >= cout * cin_g * g.kh * g.kw, "weights packed without the scalar layout");
    assert!(w.kh == g.kh && w.kw == g.kw && w.groups() * cin_g == g.cin, "grouped weights for another geometry");
    let zp = zp as i32;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for c in 0..cout {
                let first = (c / cout_g) * cin_g;
                let mut sum = 0i32;
                for i in 0..g.kh {
                    let iy = (oy * g.stride[0] + i) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for k in 0..g.kw {
                        let ix = (ox * g.stride[1] + k) as isize - g.pads[1] as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let px = (iy as usize * g.w + ix as usize) * g.cin + first;
                        for j in 0..cin_g {
                            sum += (x[px + j] as i32 - zp) * w.raw[((c * cin_g + j) * g.kh + i) * g.kw + k] as i32;
                        }
                    }
                }
                acc[(oy * g.ow + ox) * cout + c] = sum;
            }
        }
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for `p` rows of `x` (row stride `k`).
pub fn gemm(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    let k = w.k;
    assert!(w.rows.len() >= w.cout * k, "weights packed without the scalar rows");
    for p in 0..pixels {
        let row = &x[p * k..(p + 1) * k];
        for c in 0..w.cout {
            let wr = &w.rows[c * k..(c + 1) * k];
            acc[p * w.cout + c] = row.iter().zip(wr).map(|(&a, &b)| a as i32 * b as i32).sum();
        }
    }
}

/// Gathers each output pixel's receptive field into a row ([kh][kw][cin]), padding
/// with the input zero point (a real 0).
pub fn im2row(x: &[u8], g: &ConvGeometry, zp: u8, rows: &mut [u8]) {
    let k = g.kh * g.kw * g.cin;
    let run = g.kw * g.cin;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let row = &mut rows[(oy * g.ow + ox) * k..(oy * g.ow + ox + 1) * k];
            let ix0 = (ox * g.stride[1]) as isize - g.pads[1] as isize;
            // A kernel row inside the input's columns is one run of kw cin bytes.
            let inside = ix0 >= 0 && ix0 as usize + g.kw <= g.w;
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i) as isize - g.pads[0] as isize;
                let dst = &mut row[i * run..(i + 1) * run];
                if iy < 0 || iy >= g.h as isize {
                    dst.fill(zp);
                    continue;
                }
                if inside {
                    let s = (iy as usize * g.w + ix0 as usize) * g.cin;
                    // Short runs (a first conv's 3 channels x 3 columns) as fixed-size
                    // moves: a `memmove` call per run cost more than the conv's products.
                    crate::volume::copy_short(dst, &x[s..s + run]);
                    continue;
                }
                for j in 0..g.kw {
                    let ix = ix0 + j as isize;
                    let dst = &mut dst[j * g.cin..(j + 1) * g.cin];
                    if ix < 0 || ix >= g.w as isize {
                        dst.fill(zp);
                    } else {
                        let s = (iy as usize * g.w + ix as usize) * g.cin;
                        dst.copy_from_slice(&x[s..s + g.cin]);
                    }
                }
            }
        }
    }
}

/// Depthwise convolution: acc[p][c] = Σ_taps (x - zp) w[tap][c], padding contributing 0.
/// `w` is [kh * kw][c] as i32.
#[inline(always)]
pub fn depthwise(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    let c = g.cin;
    let zp = zp as i32;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let a = &mut acc[(oy * g.ow + ox) * c..(oy * g.ow + ox + 1) * c];
            a.fill(0);
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i) as isize - g.pads[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                for j in 0..g.kw {
                    let ix = (ox * g.stride[1] + j) as isize - g.pads[1] as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    let s = (iy as usize * g.w + ix as usize) * c;
                    let xs = &x[s..s + c];
                    let ws = &w[(i * g.kw + j) * c..(i * g.kw + j + 1) * c];
                    for ((a, &xv), &wv) in a.iter_mut().zip(xs).zip(ws) {
                        *a += (xv as i32 - zp) * wv;
                    }
                }
            }
        }
    }
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y, lo, hi) (see
/// [`super::requantize`]).
#[inline(always)]
pub fn requantize(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
        for c in 0..cout {
            let v = (a[c] - r.offset[c]) as f32 * r.mult[c] + r.bias[c];
            let q = round_half_even(v) + r.out_zp;
            o[c] = q.clamp(r.lo[c] as f32, r.hi[c] as f32) as u8;
        }
    }
}

/// The model input: float NCHW quantised (ONNX QuantizeLinear) into u8 NHWC. Channel
/// c's `t.h * t.w` floats start at `x[c * stride]` (`stride` >= t.h * t.w: a run of
/// pixels of larger planes, for a part of the work).
#[inline(always)]
pub fn quantize_nchw_to_nhwc(x: &[f32], stride: usize, t: &QTensor, out: &mut [u8]) {
    let hw = t.h * t.w;
    for c in 0..t.c {
        let plane = &x[c * stride..c * stride + hw];
        for (i, &v) in plane.iter().enumerate() {
            out[i * t.c + c] = quantize_u8(v, t.scale, t.zp);
        }
    }
}

/// DequantizeLinear of the channels-last bytes `a` (tensor `ta`, `rows.len()` channels,
/// `rows[0].len()` pixels) into one row of floats per channel, plus that of `b` when
/// given (the float Add of a residual: two products, then their sum). Each byte's value
/// from a table of the 256, computed as DequantizeLinear does: (v - z) as f32 * s.
pub fn dequantize_rows(a: &[u8], ta: &QTensor, b: Option<(&[u8], &QTensor)>, rows: &mut [&mut [f32]]) {
    let c = rows.len();
    let deq = |t: &QTensor| -> [f32; 256] { std::array::from_fn(|v| (v as i32 - t.zp as i32) as f32 * t.scale) };
    let da = deq(ta);
    let db = b.map(|(_, tb)| deq(tb));
    // (No pixels: the rows are empty and the bytes may be too.)
    for (ch, row) in rows.iter_mut().enumerate().filter(|(_, r)| !r.is_empty()) {
        let va = a[ch..].iter().step_by(c);
        match (b, &db) {
            (Some((b, _)), Some(db)) => {
                let vb = b[ch..].iter().step_by(c);
                row.iter_mut().zip(va.zip(vb)).for_each(|(o, (&v, &w))| *o = da[v as usize] + db[w as usize]);
            }
            _ => row.iter_mut().zip(va).for_each(|(o, &v)| *o = da[v as usize]),
        }
    }
}

/// QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b)), element-wise, then
/// clamped to `[lo, hi]` (an activation after the add, on the output's grid: exact,
/// since QuantizeLinear is monotone; `[0, 255]` for none).
#[inline(always)]
pub fn add_quantized(a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, [lo, hi]: [u8; 2], out: &mut [u8]) {
    let (za, zb) = (ta.zp as i32, tb.zp as i32);
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let v = (x as i32 - za) as f32 * ta.scale + (y as i32 - zb) as f32 * tb.scale;
        *o = quantize_u8(v, to.scale, to.zp).max(lo).min(hi);
    }
}

/// A global average pool of a channels-last tensor `t` (bytes `x`, `sums.len()` =
/// t.c channels) into `out` quantised as `to`: each channel's exact integer sum (2^23
/// pixels of 255 at most fit an i32), then (sum - pixels z) s / pixels, rounded once
/// by the float arithmetic and once by the quantisation.
#[inline(always)]
pub fn mean_pool(x: &[u8], t: &QTensor, to: &QTensor, sums: &mut [i32], out: &mut [u8]) {
    sums.fill(0);
    for px in x.chunks_exact(sums.len().max(1)) {
        sums.iter_mut().zip(px).for_each(|(a, &v)| *a += v as i32);
    }
    let pixels = t.h * t.w;
    let zp_sum = pixels as i32 * t.zp as i32;
    for (o, &a) in out.iter_mut().zip(sums.iter()) {
        *o = quantize_u8((a - zp_sum) as f32 * t.scale / pixels as f32, to.scale, to.zp);
    }
}

/// s[j] += v, q[j] += v² for the values of `values` in blocks of `s.len()` (value j of
/// a block into slot j): the partial sums of an instance norm's integer moments. The
/// caller bounds the number of blocks so that the i64 squares cannot overflow.
#[inline(always)]
pub fn moment_sums(values: &[i32], s: &mut [i64], q: &mut [i64]) {
    let width = s.len().min(q.len()).max(1);
    for block in values.chunks(width) {
        for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(block) {
            let d = v as i64;
            *s += d;
            *q += d * d;
        }
    }
}

/// Round half to even, as ONNX QuantizeLinear does, in plain IEEE arithmetic so that
/// it vectorises (`f32::round_ties_even` is a library call on x86-64 without SSE4.1):
/// adding and subtracting 1.5 x 2^23 leaves the nearest integer, ties to even, for
/// |v| <= 2^22; larger values are clamped first (they saturate to 0 or 255 anyway).
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v.clamp(-4_194_304.0, 4_194_304.0) + MAGIC) - MAGIC
}

/// Whether every value is finite (neither NaN nor infinite): counts the values whose
/// exponent bits are all ones, in integer steps the compiler vectorises (a fold of
/// `is_finite` with an early exit does not).
#[inline(always)]
pub fn all_finite(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let bad = |v: &f32| ((v.to_bits() & EXP) == EXP) as u32;
    let blocks = x.chunks_exact(64);
    let tail = blocks.remainder().iter().map(bad).sum::<u32>();
    // Per block of 64 (a count of at most 64): no overflow however long `x` is.
    tail == 0 && blocks.into_iter().all(|b| b.iter().map(bad).sum::<u32>() == 0)
}

/// ONNX QuantizeLinear to u8: saturate(round_half_even(x / s) + z).
pub fn quantize_u8(x: f32, scale: f32, zp: u8) -> u8 {
    (round_half_even(x / scale) + zp as f32).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::super::testgen::Lcg;
    use super::*;

    #[test]
    fn rounding_is_half_to_even() {
        for (v, r) in [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (-0.5, -0.0), (-1.5, -2.0), (2.4999, 2.0), (254.5, 254.0), (1e9, 4_194_304.0)] {
            assert_eq!(round_half_even(v), r, "{v}");
        }
        let mut s = Lcg::new(3);
        for _ in 0..100_000 {
            let v = (s.u32() as f32 / u32::MAX as f32 - 0.5) * 1000.0;
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }
}
