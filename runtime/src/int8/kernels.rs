//! Integer kernels: u8 activations (NHWC) times s8 weights into i32 accumulators,
//! and the requantisation back to u8. Each kernel has a portable scalar reference;
//! the x86-64 AVX2 versions are chosen at run time and must give the same bits (the
//! arithmetic is integer until requantisation, which is the same sequence of
//! IEEE float operations in both). `tests` and `runtime/tests/int8_kernels.rs`
//! check this on random shapes.

/// Which implementation the dispatcher picked (for logs and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("EDGEMED_INT8_SCALAR").is_none() && std::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}

/// Weights of a dense (im2row x weights) product, kept in the layouts the kernels read.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub k: usize,
    pub cout: usize,
    /// [cout][k], the scalar reference's layout.
    pub rows: Vec<i8>,
    /// AVX2: blocks of 16 output channels, k in pairs: [cout/16][k/2][16][2] as i16.
    pub pairs: Vec<i16>,
}

pub const CBLOCK: usize = 16;

impl PackedWeights {
    pub fn new(rows: Vec<i8>, cout: usize, k: usize) -> Self {
        assert_eq!(rows.len(), cout * k);
        let k2 = k.div_ceil(2);
        let blocks = cout.div_ceil(CBLOCK);
        let mut pairs = vec![0i16; blocks * k2 * CBLOCK * 2];
        for c in 0..cout {
            let (b, lane) = (c / CBLOCK, c % CBLOCK);
            for kk in 0..k {
                pairs[((b * k2 + kk / 2) * CBLOCK + lane) * 2 + kk % 2] = rows[c * k + kk] as i16;
            }
        }
        PackedWeights { k, cout, rows, pairs }
    }

    /// Σ_k w[c][k], for the zero-point correction.
    pub fn sums(&self) -> Vec<i32> {
        (0..self.cout).map(|c| self.rows[c * self.k..(c + 1) * self.k].iter().map(|&w| w as i32).sum()).collect()
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for `p` rows of `x` (row stride `k`).
pub fn gemm(isa: Isa, x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    debug_assert!(x.len() >= pixels * w.k && acc.len() >= pixels * w.cout);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gemm_avx2(x, pixels, w, acc) },
        _ => gemm_scalar(x, pixels, w, acc),
    }
}

pub fn gemm_scalar(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    let k = w.k;
    for p in 0..pixels {
        let row = &x[p * k..(p + 1) * k];
        for c in 0..w.cout {
            let wr = &w.rows[c * k..(c + 1) * k];
            acc[p * w.cout + c] = row.iter().zip(wr).map(|(&a, &b)| a as i32 * b as i32).sum();
        }
    }
}

/// 4 pixels x 16 channels per step: each pair of inputs is broadcast as one i32 and
/// multiplied with 16 channels' weight pairs by `vpmaddwd` (u8 and s8 widened to i16,
/// so nothing saturates, unlike `vpmaddubsw`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    use std::arch::x86_64::*;
    let (k, cout) = (w.k, w.cout);
    let k2 = k.div_ceil(2);
    let blocks = cout.div_ceil(CBLOCK);
    // Input pairs as i32 (lo | hi << 16), 4 pixels at a time.
    let mut xp = vec![0i32; 4 * k2];
    let mut out = [0i32; 4 * CBLOCK];
    let mut p = 0;
    while p < pixels {
        let np = (pixels - p).min(4);
        for q in 0..4 {
            for kk in 0..k2 {
                xp[q * k2 + kk] = if q < np {
                    let r = &x[(p + q) * k..(p + q + 1) * k];
                    let lo = r[2 * kk] as i32;
                    let hi = if 2 * kk + 1 < k { r[2 * kk + 1] as i32 } else { 0 };
                    lo | (hi << 16)
                } else {
                    0
                };
            }
        }
        for b in 0..blocks {
            let wb = w.pairs.as_ptr().add(b * k2 * CBLOCK * 2);
            let mut a = [_mm256_setzero_si256(); 8];
            for kk in 0..k2 {
                let w0 = _mm256_loadu_si256(wb.add(kk * CBLOCK * 2) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(kk * CBLOCK * 2 + 16) as *const __m256i);
                for q in 0..4 {
                    let xb = _mm256_set1_epi32(*xp.get_unchecked(q * k2 + kk));
                    a[2 * q] = _mm256_add_epi32(a[2 * q], _mm256_madd_epi16(xb, w0));
                    a[2 * q + 1] = _mm256_add_epi32(a[2 * q + 1], _mm256_madd_epi16(xb, w1));
                }
            }
            for q in 0..4 {
                _mm256_storeu_si256(out.as_mut_ptr().add(q * CBLOCK) as *mut __m256i, a[2 * q]);
                _mm256_storeu_si256(out.as_mut_ptr().add(q * CBLOCK + 8) as *mut __m256i, a[2 * q + 1]);
            }
            let c0 = b * CBLOCK;
            let nc = (cout - c0).min(CBLOCK);
            for q in 0..np {
                acc[(p + q) * cout + c0..(p + q) * cout + c0 + nc].copy_from_slice(&out[q * CBLOCK..q * CBLOCK + nc]);
            }
        }
        p += 4;
    }
}

/// Geometry of a 2-D convolution on NHWC tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeometry {
    pub fn new(h: usize, w: usize, cin: usize, kh: usize, kw: usize, stride: [usize; 2], pads: [usize; 4]) -> Option<Self> {
        let (hp, wp) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
        if hp < kh || wp < kw || stride.contains(&0) {
            return None;
        }
        Some(ConvGeometry { h, w, cin, kh, kw, stride, pads, oh: (hp - kh) / stride[0] + 1, ow: (wp - kw) / stride[1] + 1 })
    }

    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pads == [0; 4]
    }
}

/// Gathers each output pixel's receptive field into a row ([kh][kw][cin]), padding
/// with the input zero point (a real 0).
pub fn im2row(x: &[u8], g: &ConvGeometry, zp: u8, rows: &mut [u8]) {
    let k = g.kh * g.kw * g.cin;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let row = &mut rows[(oy * g.ow + ox) * k..(oy * g.ow + ox + 1) * k];
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i) as isize - g.pads[0] as isize;
                for j in 0..g.kw {
                    let ix = (ox * g.stride[1] + j) as isize - g.pads[1] as isize;
                    let dst = &mut row[(i * g.kw + j) * g.cin..(i * g.kw + j + 1) * g.cin];
                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
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
pub fn depthwise(isa: Isa, x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { depthwise_avx2(x, g, zp, w, acc) },
        _ => depthwise_scalar(x, g, zp, w, acc),
    }
}

#[inline(always)]
fn depthwise_body(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
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

pub fn depthwise_scalar(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    depthwise_body(x, g, zp, w, acc)
}

/// The same loop compiled for AVX2: the channel loop vectorises 8 channels per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_avx2(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    depthwise_body(x, g, zp, w, acc)
}

/// Per-channel requantisation parameters of one convolution.
#[derive(Debug, Clone)]
pub struct Requant {
    /// Subtracted from the accumulator (input zero point x Σw; 0 for depthwise, which corrects in the loop).
    pub offset: Vec<i32>,
    /// s_x s_w[c] / s_y: one multiplier per channel, as ONNX Runtime's requantisation uses.
    pub mult: Vec<f32>,
    /// bias[c] / s_y
    pub bias: Vec<f32>,
    pub out_zp: f32,
    /// Clamp per channel (activation bounds in the quantised domain).
    pub lo: Vec<u8>,
    pub hi: Vec<u8>,
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y) with m = s_x s_w / s_y and
/// b = bias / s_y: DequantizeLinear -> Conv -> QuantizeLinear on the exact integer sum,
/// with the scales combined beforehand as ONNX Runtime's fused kernels do (a product
/// instead of a division, which may round differently by one step in rare cases).
pub fn requantize(isa: Isa, acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { requantize_avx2(acc, cout, r, out) },
        _ => requantize_body(acc, cout, r, out),
    }
}

#[inline(always)]
fn requantize_body(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
        for c in 0..cout {
            let v = (a[c] - r.offset[c]) as f32 * r.mult[c] + r.bias[c];
            let q = round_half_even(v) + r.out_zp;
            o[c] = q.clamp(r.lo[c] as f32, r.hi[c] as f32) as u8;
        }
    }
}

/// 8 channels per step with the same IEEE operations as [`requantize_body`], in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requantize_avx2(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let full = cout / 8 * 8;
    let magic = _mm256_set1_ps(12_582_912.0);
    let (lim_lo, lim_hi) = (_mm256_set1_ps(-4_194_304.0), _mm256_set1_ps(4_194_304.0));
    let zp = _mm256_set1_ps(r.out_zp);
    let mut tmp = [0i32; 8];
    for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
        let mut c = 0;
        while c < full {
            let x = _mm256_sub_epi32(
                _mm256_loadu_si256(a.as_ptr().add(c) as *const __m256i),
                _mm256_loadu_si256(r.offset.as_ptr().add(c) as *const __m256i),
            );
            let v = _mm256_add_ps(
                _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_loadu_ps(r.mult.as_ptr().add(c))),
                _mm256_loadu_ps(r.bias.as_ptr().add(c)),
            );
            let v = _mm256_min_ps(_mm256_max_ps(v, lim_lo), lim_hi);
            let q = _mm256_add_ps(_mm256_sub_ps(_mm256_add_ps(v, magic), magic), zp);
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(r.lo.as_ptr().add(c) as *const __m128i)));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(r.hi.as_ptr().add(c) as *const __m128i)));
            let q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi));
            _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, q);
            for (k, &t) in tmp.iter().enumerate() {
                *o.get_unchecked_mut(c + k) = t as u8;
            }
            c += 8;
        }
        for c in full..cout {
            let v = (a[c] - r.offset[c]) as f32 * r.mult[c] + r.bias[c];
            o[c] = (round_half_even(v) + r.out_zp).clamp(r.lo[c] as f32, r.hi[c] as f32) as u8;
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

/// ONNX QuantizeLinear to u8: saturate(round_half_even(x / s) + z).
pub fn quantize_u8(x: f32, scale: f32, zp: u8) -> u8 {
    (round_half_even(x / scale) + zp as f32).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn rounding_is_half_to_even() {
        for (v, r) in [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (-0.5, -0.0), (-1.5, -2.0), (2.4999, 2.0), (254.5, 254.0), (1e9, 4_194_304.0)] {
            assert_eq!(round_half_even(v), r, "{v}");
        }
        let mut s = 3u64;
        for _ in 0..100_000 {
            let v = (lcg(&mut s) as f32 / u32::MAX as f32 - 0.5) * 1000.0;
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn simd_gemm_equals_scalar_on_random_shapes() {
        let isa = Isa::detect();
        let mut s = 1u64;
        for _ in 0..60 {
            let (p, k, c) = (1 + lcg(&mut s) as usize % 23, 1 + lcg(&mut s) as usize % 77, 1 + lcg(&mut s) as usize % 41);
            let x: Vec<u8> = (0..p * k).map(|_| lcg(&mut s) as u8).collect();
            // Extremes included: 255 x -128 everywhere would overflow 16-bit pair sums.
            let w: Vec<i8> = (0..c * k).map(|i| if i % 7 == 0 { -128 } else { lcg(&mut s) as i8 }).collect();
            let pw = PackedWeights::new(w, c, k);
            let (mut a, mut b) = (vec![0; p * c], vec![0; p * c]);
            gemm_scalar(&x, p, &pw, &mut a);
            gemm(isa, &x, p, &pw, &mut b);
            assert_eq!(a, b, "p {p} k {k} c {c} on {isa:?}");
        }
    }

    #[test]
    fn simd_depthwise_and_requant_equal_scalar() {
        let isa = Isa::detect();
        let mut s = 7u64;
        for _ in 0..30 {
            let (h, w, c) = (1 + lcg(&mut s) as usize % 13, 1 + lcg(&mut s) as usize % 13, 1 + lcg(&mut s) as usize % 37);
            let stride = [1 + lcg(&mut s) as usize % 2; 2];
            let pad = lcg(&mut s) as usize % 2;
            let Some(g) = ConvGeometry::new(h, w, c, 3, 3, stride, [pad; 4]) else { continue };
            let x: Vec<u8> = (0..h * w * c).map(|_| lcg(&mut s) as u8).collect();
            let wt: Vec<i32> = (0..9 * c).map(|_| lcg(&mut s) as i8 as i32).collect();
            let zp = lcg(&mut s) as u8;
            let n = g.oh * g.ow * c;
            let (mut a, mut b) = (vec![0; n], vec![0; n]);
            depthwise_scalar(&x, &g, zp, &wt, &mut a);
            depthwise(isa, &x, &g, zp, &wt, &mut b);
            assert_eq!(a, b);
            let r = Requant {
                offset: (0..c).map(|_| lcg(&mut s) as i16 as i32).collect(),
                mult: (0..c).map(|_| (lcg(&mut s) % 1000) as f32 * 1e-5).collect(),
                bias: (0..c).map(|_| (lcg(&mut s) % 200) as f32 * 0.01 - 1.0).collect(),
                out_zp: 17.0,
                lo: vec![3; c],
                hi: vec![250; c],
            };
            let (mut qa, mut qb) = (vec![0u8; n], vec![0u8; n]);
            requantize_body(&a, c, &r, &mut qa);
            requantize(isa, &a, c, &r, &mut qb);
            assert_eq!(qa, qb);
        }
    }
}
