//! AVX-512 VNNI kernels (x86-64 with avx512f/bw/vl/vnni/vbmi): convolutions fused with
//! their requantisation, so each layer's int32 sums stay in registers and the layer's
//! output is written once, as u8. `vpdpbusd` multiplies u8 activations by s8 weights
//! four at a time into int32 without intermediate saturation, so the sums are the
//! exact integers of the scalar reference; requantisation is the same sequence of IEEE
//! operations as [`super::kernels::requantize`]'s scalar body, hence the same bits.

use std::arch::x86_64::*;

use super::kernels::{ConvGeometry, DepthwiseWeights, PackedWeights, Requant, CBLOCK};

/// Pixels per register tile of the dense kernel.
const PT: usize = 4;

/// Whether this CPU has everything these kernels use.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx512vbmi")
}

/// Requantisation constants of one block of 16 output channels.
struct BlockRequant {
    offset: __m512i,
    mult: __m512,
    bias: __m512,
    lo: __m512,
    hi: __m512,
    mask: __mmask16,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block_requant(r: &Requant, c0: usize, nc: usize) -> BlockRequant {
    let mask: __mmask16 = if nc >= 16 { 0xffff } else { (1u16 << nc) - 1 };
    let lo8 = _mm_maskz_loadu_epi8(mask, r.lo.as_ptr().add(c0) as *const i8);
    let hi8 = _mm_maskz_loadu_epi8(mask, r.hi.as_ptr().add(c0) as *const i8);
    BlockRequant {
        offset: _mm512_maskz_loadu_epi32(mask, r.offset.as_ptr().add(c0)),
        mult: _mm512_maskz_loadu_ps(mask, r.mult.as_ptr().add(c0)),
        bias: _mm512_maskz_loadu_ps(mask, r.bias.as_ptr().add(c0)),
        lo: _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo8)),
        hi: _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi8)),
        mask,
    }
}

/// Where the dense kernel writes: requantised u8, or the raw int32 sums (a conv
/// whose output the float tail takes).
pub enum DenseOut<'a> {
    U8(&'a Requant, &'a mut [u8]),
    I32(&'a mut [i32]),
}

/// Only the lane mask (int32 output).
#[target_feature(enable = "avx512f")]
unsafe fn block_mask(nc: usize) -> BlockRequant {
    let z = _mm512_setzero_ps();
    BlockRequant { offset: _mm512_setzero_si512(), mult: z, bias: z, lo: z, hi: z, mask: if nc >= 16 { 0xffff } else { (1u16 << nc) - 1 } }
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y, lo, hi), stored as the
/// block's `nc` bytes at `out`.
#[inline(always)]
unsafe fn requantize_store(acc: __m512i, q: &BlockRequant, zp: __m512, out: *mut u8) {
    let magic = _mm512_set1_ps(12_582_912.0);
    let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, q.offset)), q.mult), q.bias);
    let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-4_194_304.0)), _mm512_set1_ps(4_194_304.0));
    let r = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(v, magic), magic), zp);
    let r = _mm512_min_ps(_mm512_max_ps(r, q.lo), q.hi);
    _mm512_mask_cvtepi32_storeu_epi8(out as *mut i8, q.mask, _mm512_cvtps_epi32(r));
}

/// Dense convolution fused with requantisation, as an implicit GEMM: each kernel row
/// (kw x cin bytes, contiguous in NHWC) is read straight from the unpadded input `x`
/// in quadruples, so there is no im2row. Pointwise is the case kh = kw = 1. Reads
/// run up to 3 bytes past a kernel row (the next pixel's bytes, or the buffer's
/// slack), where the packed weights are zero.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn conv_dense(x: &[u8], g: &ConvGeometry, w: &PackedWeights, out: DenseOut) {
    debug_assert_eq!(g.pads, [0; 4]);
    let cout = w.cout;
    let (kh, row_len) = (w.kernel_rows, w.row_len);
    let q4 = row_len.div_ceil(4);
    let pixels = g.oh * g.ow;
    let row_stride = g.w * g.cin;
    let base = |p: usize| ((p / g.ow) * g.stride[0] * g.w + (p % g.ow) * g.stride[1]) * g.cin;
    assert!(kh == g.kh && row_len == g.kw * g.cin);
    assert!(pixels == 0 || x.len() >= base(pixels - 1) + (kh - 1) * row_stride + 4 * q4, "input needs slack past its end");
    assert!(w.quads.len() >= cout.div_ceil(CBLOCK) * kh * q4 * 64);
    let blocks = cout.div_ceil(CBLOCK);
    let (zp, params, u8_out, i32_out) = match out {
        DenseOut::U8(r, o) => {
            assert!(o.len() >= pixels * cout);
            let params: Vec<BlockRequant> = (0..blocks).map(|b| block_requant(r, b * CBLOCK, (cout - b * CBLOCK).min(CBLOCK))).collect();
            (_mm512_set1_ps(r.out_zp), params, o.as_mut_ptr(), std::ptr::null_mut())
        }
        DenseOut::I32(o) => {
            assert!(o.len() >= pixels * cout);
            let params = (0..blocks).map(|b| block_mask((cout - b * CBLOCK).min(CBLOCK))).collect();
            (_mm512_setzero_ps(), params, std::ptr::null_mut(), o.as_mut_ptr())
        }
    };
    let xp = x.as_ptr();
    let mut p = 0;
    while p < pixels {
        // Pixels of the tile; past the end, the last pixel again (computed, not stored).
        let px: [*const u8; PT] = std::array::from_fn(|t| xp.add(base((p + t).min(pixels - 1))));
        for (b, q) in params.iter().enumerate() {
            let wb = w.quads.as_ptr().add(b * kh * q4 * 64);
            let mut acc = [_mm512_setzero_si512(); PT];
            for i in 0..kh {
                for kk in 0..q4 {
                    let wv = _mm512_loadu_si512(wb.add((i * q4 + kk) * 64) as *const _);
                    let off = i * row_stride + kk * 4;
                    for t in 0..PT {
                        let xv = _mm512_set1_epi32((px[t].add(off) as *const i32).read_unaligned());
                        acc[t] = _mm512_dpbusd_epi32(acc[t], xv, wv);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                if p + t < pixels {
                    let at = (p + t) * cout + b * CBLOCK;
                    if i32_out.is_null() {
                        requantize_store(*a, q, zp, u8_out.add(at));
                    } else {
                        _mm512_mask_storeu_epi32(i32_out.add(at), q.mask, *a);
                    }
                }
            }
        }
        p += PT;
    }
}

/// Depthwise convolution fused with requantisation, on an unpadded (or zero-point
/// padded) input: four taps of 16 channels are gathered into one register, their
/// bytes interleaved per channel by one `vpermb`, and multiplied with the taps'
/// weights by one `vpdpbusd`; zp x Σw is subtracted once at the end.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn conv_depthwise(x: &[u8], g: &ConvGeometry, zp_in: u8, w: &DepthwiseWeights, r: &Requant, out: &mut [u8]) {
    debug_assert_eq!(g.pads, [0; 4]);
    let c = g.cin;
    let taps = g.kh * g.kw;
    assert!(w.taps == taps && w.c == c);
    assert!(x.len() >= g.h * g.w * c + 16 && out.len() >= g.oh * g.ow * c, "input needs slack past its end");
    let zp_out = _mm512_set1_ps(r.out_zp);
    let blocks = c.div_ceil(CBLOCK);
    let groups = taps.div_ceil(4);
    let params: Vec<BlockRequant> = (0..blocks).map(|b| block_requant(r, b * CBLOCK, (c - b * CBLOCK).min(CBLOCK))).collect();
    let zsum: Vec<__m512i> = (0..blocks)
        .map(|b| {
            _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(params[b].mask, w.sums.as_ptr().add(b * CBLOCK)), _mm512_set1_epi32(zp_in as i32))
        })
        .collect();
    // Byte 4c + t of the result is byte 16t + c of [tap0 | tap1 | tap2 | tap3].
    let idx: [u8; 64] = std::array::from_fn(|i| ((i % 4) * 16 + i / 4) as u8);
    let perm = _mm512_loadu_si512(idx.as_ptr() as *const _);
    // Offsets of the taps from a pixel's top-left input byte; the missing taps of the
    // last group repeat tap 0 (their weights are zero).
    let tap_off: Vec<usize> = (0..groups * 4).map(|t| if t < taps { ((t / g.kw) * g.w + t % g.kw) * c } else { 0 }).collect();
    let (sy, sx) = (g.stride[0], g.stride[1]);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let px = x.as_ptr().add(((oy * sy) * g.w + ox * sx) * c);
            let o = out.as_mut_ptr().add((oy * g.ow + ox) * c);
            for (b, q) in params.iter().enumerate() {
                let pb = px.add(b * CBLOCK);
                let wb = w.quads.as_ptr().add(b * groups * 64);
                let mut acc = _mm512_setzero_si512();
                for gi in 0..groups {
                    let t = &tap_off[gi * 4..gi * 4 + 4];
                    let lo = _mm256_inserti128_si256(
                        _mm256_castsi128_si256(_mm_loadu_si128(pb.add(t[0]) as *const __m128i)),
                        _mm_loadu_si128(pb.add(t[1]) as *const __m128i),
                        1,
                    );
                    let hi = _mm256_inserti128_si256(
                        _mm256_castsi128_si256(_mm_loadu_si128(pb.add(t[2]) as *const __m128i)),
                        _mm_loadu_si128(pb.add(t[3]) as *const __m128i),
                        1,
                    );
                    let v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                    let v = _mm512_permutexvar_epi8(perm, v);
                    acc = _mm512_dpbusd_epi32(acc, v, _mm512_loadu_si512(wb.add(gi * 64) as *const _));
                }
                requantize_store(_mm512_sub_epi32(acc, zsum[b]), q, zp_out, o.add(b * CBLOCK));
            }
        }
    }
}

/// The model input: float NCHW quantised (ONNX QuantizeLinear) into u8 NHWC, 16
/// pixels at a time, for up to 4 channels (the images these models read); the same
/// IEEE operations as [`super::kernels::quantize_u8`]. Returns false when it does
/// not apply (more channels), leaving the work to the portable loop.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
pub unsafe fn quantize_nchw_to_nhwc(x: &[f32], hw: usize, c: usize, scale: f32, zp: u8, out: &mut [u8]) -> bool {
    if c == 0 || c > 4 || x.len() < c * hw || out.len() < c * hw {
        return false;
    }
    let (s, z) = (_mm512_set1_ps(scale), _mm512_set1_ps(zp as f32));
    let magic = _mm512_set1_ps(12_582_912.0);
    let (lim_lo, lim_hi) = (_mm512_set1_ps(-4_194_304.0), _mm512_set1_ps(4_194_304.0));
    let (zero, top) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    // Byte p*c + ch of the result is byte 16*ch + p of [ch0 | ch1 | ch2 | ch3].
    let idx: [u8; 64] = std::array::from_fn(|i| if i < 16 * c { ((i % c) * 16 + i / c) as u8 } else { 0 });
    let perm = _mm512_loadu_si512(idx.as_ptr() as *const _);
    let full = hw / 16 * 16;
    let mut i = 0;
    while i < full {
        let mut planes = [_mm_setzero_si128(); 4];
        for (ch, plane) in planes.iter_mut().enumerate().take(c) {
            let v = _mm512_div_ps(_mm512_loadu_ps(x.as_ptr().add(ch * hw + i)), s);
            let v = _mm512_min_ps(_mm512_max_ps(v, lim_lo), lim_hi);
            let q = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(v, magic), magic), z);
            let q = _mm512_min_ps(_mm512_max_ps(q, zero), top);
            *plane = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
        }
        let lo = _mm256_inserti128_si256(_mm256_castsi128_si256(planes[0]), planes[1], 1);
        let hi = _mm256_inserti128_si256(_mm256_castsi128_si256(planes[2]), planes[3], 1);
        let v = _mm512_permutexvar_epi8(perm, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
        let mask: __mmask64 = if c == 4 { u64::MAX } else { (1u64 << (16 * c)) - 1 };
        _mm512_mask_storeu_epi8(out.as_mut_ptr().add(i * c) as *mut i8, mask, v);
        i += 16;
    }
    for p in full..hw {
        for ch in 0..c {
            out[p * c + ch] = super::kernels::quantize_u8(x[ch * hw + p], scale, zp);
        }
    }
    true
}
