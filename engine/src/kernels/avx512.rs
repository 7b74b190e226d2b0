//! AVX-512 VNNI kernels (x86-64 with avx512f/bw/vl/vnni/vbmi): convolutions fused with
//! their requantisation, so each layer's int32 sums stay in registers and the layer's
//! output is written once, as u8. `vpdpbusd` multiplies u8 activations by s8 weights
//! four at a time into int32 without intermediate saturation, so the sums are the
//! exact integers of the scalar reference; requantisation is the same sequence of IEEE
//! operations as [`super::scalar::requantize`], hence the same bits. This file owns
//! the layouts these kernels read: dense weights in quadruples
//! ([`super::weights::pack_quads`], shared with `sdot`), depthwise weights in
//! quadruples of taps ([`pack_depthwise_quads`]) and 3x3 columns
//! ([`depthwise_columns3x3`]); grouped weights in quadruples of each group's inputs
//! ([`super::weights::GroupQuads`], shared with `sdot`). What has no kernel here
//! (int32 sums of depthwise and grouped convs, standalone requantisation) runs on
//! the AVX2 kernels.
//!
//! Every `unsafe fn` here needs the CPU features of [`available`] (which include AVX2),
//! checked once by the dispatcher ([`super::Isa::checked`]); the slices' bounds are
//! checked by assertions before any pointer arithmetic.

use std::arch::x86_64::*;

use super::avx2::{self, ParamRows};
use super::{padded_input, scalar, ConvGeometry, DepthwiseWeights, GroupQuads, PackedWeights, Requant, CBLOCK};
use super::{ConvKind, Geometry3, Isa, QTensor};

/// Pixels per register tile of the dense kernel: with three blocks of channels, 24
/// accumulators (of 32 registers), enough independent sums to keep both `vpdpbusd`
/// ports busy through its latency, and each 64-byte weight load serves 8 pixels.
/// Measured on VNNI (an Intel Xeon, MobileNetV2 x1.0 at 224): 4 -> 8 pixels (two
/// blocks) made the pointwise convs 13-18% faster, 12 pixels slower again (spills);
/// three blocks instead of two another 4% (the first conv 9%).
const PT: usize = 8;
/// Input bytes of a panel of pixels of the dense kernel (see [`vnni_tiles`]).
const PANEL_BYTES: usize = 16 * 1024;

/// Whether this CPU has everything these kernels use (AVX2 included: the VNNI path
/// runs the AVX2 kernels where it has none of its own).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx512vbmi")
}

/// Depthwise weights `w` ([c][taps]) in the layout of [`conv_depthwise`]: blocks of
/// 16 channels, taps in quadruples (zero padded): [c/16][taps/4][16][4].
pub fn pack_depthwise_quads(w: &[i8], c: usize, taps: usize) -> Vec<i8> {
    let g4 = taps.div_ceil(4);
    let mut quads = vec![0i8; c.div_ceil(CBLOCK) * g4 * CBLOCK * 4];
    for ch in 0..c {
        let (b, lane) = (ch / CBLOCK, ch % CBLOCK);
        for t in 0..taps {
            quads[((b * g4 + t / 4) * CBLOCK + lane) * 4 + t % 4] = w[ch * taps + t];
        }
    }
    quads
}

/// One convolution of the plan (see [`super::conv`]): the fused 3x3 depthwise kernel
/// where it applies, else the dense or depthwise kernel on the zero-point padded input.
///
/// # Safety
/// The CPU must have everything [`available`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn conv(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, r: &Requant, scratch: &mut [u8], out: &mut [u8]) {
    if let ConvKind::Depthwise(w) = kind {
        if depthwise3x3_applies(g, w, r) {
            // SAFETY: the CPU features are the caller's obligation; the slices are
            // checked by the kernel.
            unsafe { conv_depthwise3x3(x, g, zp, w, r, scratch, out) };
            return;
        }
    }
    let (input, padded) = padded_input(x, g, zp, scratch);
    // SAFETY: as above.
    unsafe {
        match kind {
            ConvKind::Dense(w) => conv_dense(input, &padded, w, DenseOut::U8(r, out)),
            ConvKind::Depthwise(w) => conv_depthwise(input, &padded, zp, w, r, out),
            ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
        }
    }
}

/// The int32 sums of a convolution (see [`super::accumulate`]): dense on the
/// zero-point padded input, depthwise with the AVX2 loop.
///
/// # Safety
/// The CPU must have everything [`available`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn accumulate(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    match kind {
        ConvKind::Dense(w) => {
            let (input, padded) = padded_input(x, g, zp, scratch);
            // SAFETY: the CPU features are the caller's obligation; the slices are
            // checked by the kernel.
            unsafe { conv_dense(input, &padded, w, DenseOut::I32(acc)) }
        }
        // SAFETY: AVX2 is among the caller's obligations.
        ConvKind::Depthwise(w) => unsafe { avx2::depthwise(x, g, zp, &w.w, acc) },
        ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for contiguous rows of `x` (no slack needed), by
/// [`conv_dense`]: each row is `kernel_rows` kernel rows of one output pixel. The
/// pixels whose reads stay inside `x` run in place, the last few from a padded copy.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    let (k, cout, kh, row_len) = (w.k, w.cout, w.kernel_rows, w.row_len);
    if pixels == 0 || cout == 0 || k == 0 {
        acc[..pixels * cout].fill(0);
        return;
    }
    // n pixels as a column of n kh kernel rows, one pixel per kh of them.
    let rows = |n: usize| ConvGeometry::new(n * kh, 1, row_len, kh, 1, [kh, 1], [0; 4]).expect("kh rows per pixel");
    let reach = (kh - 1) * row_len + 4 * row_len.div_ceil(4);
    let direct = if x.len() >= reach { ((x.len() - reach) / k + 1).min(pixels) } else { 0 };
    if direct > 0 {
        // SAFETY: the CPU features are the caller's obligation; the slices are checked
        // by the kernel.
        unsafe { conv_dense(x, &rows(direct), w, DenseOut::I32(&mut acc[..direct * cout])) };
    }
    if direct < pixels {
        let mut tail = x[direct * k..pixels * k].to_vec();
        tail.resize(tail.len() + reach, 0);
        // SAFETY: as above.
        unsafe { conv_dense(&tail, &rows(pixels - direct), w, DenseOut::I32(&mut acc[direct * cout..pixels * cout])) };
    }
}

/// Requantisation constants of one block of 16 output channels.
#[derive(Clone, Copy)]
pub(super) struct BlockRequant {
    offset: __m512i,
    mult: __m512,
    bias: __m512,
    /// hi - z_y, as a float: the upper clamp, before rounding.
    top: __m512,
    /// z_y and the clamps, as int32.
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
    pub(super) mask: __mmask16,
}

/// The requantisation constants of channels c0..c0 + min(nc, 16).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, and every parameter vector of `r` must hold
/// at least c0 + min(nc, 16) channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn block_requant(r: &Requant, c0: usize, nc: usize) -> BlockRequant {
    // SAFETY: the caller's obligations.
    unsafe { block_of(ParamRows::from(r, 0), r.out_zp, c0, nc) }
}

/// The constants of channels c0..c0 + min(nc, 16) of `p`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, and every slice of `p` must hold at least
/// c0 + min(nc, 16) channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block_of(p: ParamRows, out_zp: f32, c0: usize, nc: usize) -> BlockRequant {
    let mask: __mmask16 = if nc >= 16 { 0xffff } else { (1u16 << nc) - 1 };
    // SAFETY: masked loads touch only the lanes of `mask`, channels c0..c0 + min(nc,
    // 16), inside each slice (the caller's obligation); no alignment is required.
    unsafe {
        let lo = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p.lo.as_ptr().add(c0) as *const i8));
        let hi = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p.hi.as_ptr().add(c0) as *const i8));
        // Zero points are integers in 0..=255 (u8 tensors'), so hi - z_y is exact.
        debug_assert!(out_zp.fract() == 0.0 && (0.0..=255.0).contains(&out_zp));
        let zp = _mm512_set1_epi32(out_zp as i32);
        BlockRequant {
            offset: _mm512_maskz_loadu_epi32(mask, p.offset.as_ptr().add(c0)),
            mult: _mm512_maskz_loadu_ps(mask, p.mult.as_ptr().add(c0)),
            bias: _mm512_maskz_loadu_ps(mask, p.bias.as_ptr().add(c0)),
            top: _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, zp)),
            zp,
            lo,
            hi,
            mask,
        }
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
pub(super) fn block_mask(nc: usize) -> BlockRequant {
    let (z, zi) = (_mm512_setzero_ps(), _mm512_setzero_si512());
    BlockRequant { offset: zi, mult: z, bias: z, top: z, zp: zi, lo: zi, hi: zi, mask: if nc >= 16 { 0xffff } else { (1u16 << nc) - 1 } }
}

impl BlockRequant {
    /// -offset: where a dense kernel's sums of this block start, so that they come out
    /// as acc - offset, the value [`requantize_store4_from`] takes (zero for int32
    /// output, whose mask-only constants have no offset). Wrapping, as the reference's
    /// subtraction is in two's complement.
    #[target_feature(enable = "avx512f")]
    pub(super) fn start(&self) -> __m512i {
        _mm512_sub_epi32(_mm512_setzero_si512(), self.offset)
    }
}

/// Whether the requantised values v = (acc - offset) m + b of a dense conv with
/// kernel rows of `k` inputs stay below 2^30 in magnitude for every channel of `r`, so
/// that [`requantize_store4_from`] may round them without the upper clamp first
/// (see there). |acc| <= 255 x 128 k for u8 inputs and s8 weights; the bound is
/// computed in f64 from the parameters (a NaN or an infinity fails it).
pub(super) fn dense_bounded(r: &Requant, k: usize, cout: usize) -> bool {
    let acc = 255.0 * 128.0 * k as f64;
    (0..cout).all(|c| {
        let v = (acc + (r.offset[c] as f64).abs()) * (r.mult[c] as f64).abs() + (r.bias[c] as f64).abs();
        v < (1u32 << 30) as f64
    })
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y, lo, hi), stored as the
/// block's `nc` bytes at `out`.
///
/// The reference's bits in fewer operations and constants (small-K pointwise convs
/// spend more on requantisation than on their products): v = (acc - offset) m + b as
/// the reference computes it; then min(hi - z_y, v), rounded to nearest even by the
/// conversion itself; + z_y and max(lo) in integers. The upper clamp may come before
/// the rounding because hi - z_y is an integer (rounding is monotone and keeps
/// integers), and it must, because the conversion of a float beyond 2^31 gives
/// i32::MIN; after it, y <= hi needs no second clamp. Below -2^31 that same i32::MIN
/// (and a NaN's) ends at lo, as the reference's clamp does. Callers looping over
/// pixels keep `q` in a local copy: through a reference, the stores (raw pointers)
/// make the compiler reload its vectors for every 16 outputs.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, and `out` must be writable for the lanes of
/// `q.mask` (one byte each).
#[inline(always)]
pub(super) unsafe fn requantize_store(acc: __m512i, q: &BlockRequant, out: *mut u8) {
    // SAFETY: the CPU features and the masked store's bytes are the caller's
    // obligations; the store needs no alignment.
    unsafe {
        let r = _mm512_max_epi32(_mm512_add_epi32(rounded(acc, q), q.zp), q.lo);
        _mm_mask_storeu_epi8(out as *mut i8, q.mask, _mm512_cvtepi32_epi8(r));
    }
}

/// min(hi - z_y, (acc - offset) m + b) rounded to nearest even: [`requantize_store`]'s
/// value before + z_y.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn rounded(acc: __m512i, q: &BlockRequant) -> __m512i {
    // SAFETY: register operations; the CPU features are the caller's obligation.
    unsafe {
        // min(top, NaN) is the NaN (the second operand), which converts to i32::MIN.
        rounded_from::<false>(_mm512_sub_epi32(acc, q.offset), q)
    }
}

/// [`requantize_store`] of four pixels' sums of one block (`acc[k]`: pixel k), stored
/// at `out + k stride` for k < `n`, with the integer steps done on the four together:
/// the rounded values packed to int16 with saturation, + z_y (saturating), packed to
/// u8 with saturation, max(lo) bytewise; one permute puts each pixel's 16 bytes in a
/// lane. The same bytes: the values are at most hi - z_y (clamped before rounding),
/// so only the lower side saturates, and anything below 0 after + z_y ends at lo
/// either way (i32::MIN from a NaN or a huge negative value included). Per 64
/// outputs this is 10 vector operations where four [`requantize_store`]s take 16.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out + k stride` must be writable for the lanes
/// of `q.mask` for every k < `n` (n <= 4).
#[inline(always)]
pub(super) unsafe fn requantize_store4(acc: &[__m512i; 4], q: &BlockRequant, out: *mut u8, stride: usize, n: usize) {
    // SAFETY: the CPU features and the stores' bytes are the caller's obligations;
    // the stores need no alignment.
    unsafe {
        // Not a closure: one would not inherit the caller's target features, and its
        // intrinsics would become calls.
        let from = [
            _mm512_sub_epi32(acc[0], q.offset),
            _mm512_sub_epi32(acc[1], q.offset),
            _mm512_sub_epi32(acc[2], q.offset),
            _mm512_sub_epi32(acc[3], q.offset),
        ];
        requantize_store4_from::<false>(&from, q, out, stride, n)
    }
}

/// [`requantize_store4`] of sums that already are acc - offset (a dense kernel's, which
/// start from [`BlockRequant::start`]): the same bytes, with fewer operations per 64
/// outputs. With `BOUNDED` ([`dense_bounded`]), the values are rounded without the
/// upper clamp before it (below 2^30 in magnitude, the conversion is exact and never
/// the integer indefinite) and hi is applied bytewise with lo: the saturating packs of
/// [`pack_pixels4`] are monotone and exact on [0, 255], so clamping their bytes to
/// [lo, hi] gives clamp(round(v) + z_y, lo, hi), the reference's (whose rounding
/// saturates at 2^22, beyond any clamp). Per 64 outputs: 24 vector operations where
/// [`requantize_store4`] takes 31. (Unbounded: the upper clamp as there.)
///
/// # Safety
/// As [`requantize_store4`].
#[inline(always)]
pub(super) unsafe fn requantize_store4_from<const BOUNDED: bool>(
    acc: &[__m512i; 4],
    q: &BlockRequant,
    out: *mut u8,
    stride: usize,
    n: usize,
) {
    // SAFETY: register operations, and the stores the caller vouches for.
    unsafe {
        // lo's (and hi's) bytes as `pack_pixels4` lays out pixels, from the int32
        // constants by the same packs (loop invariants for the callers' loops; the
        // block's constants stay eight vectors).
        let lo16 = _mm512_packs_epi32(q.lo, q.lo);
        let bytes = _mm512_max_epu8(rounded_packed_from::<BOUNDED>(acc, [q; 4]), _mm512_packus_epi16(lo16, lo16));
        let bytes = if BOUNDED {
            let hi16 = _mm512_packs_epi32(q.hi, q.hi);
            _mm512_min_epu8(bytes, _mm512_packus_epi16(hi16, hi16))
        } else {
            bytes
        };
        store_pixels4(bytes, pixel_transpose(), q.mask, out, stride, n);
    }
}

/// One pixel's 64 channels (four whole blocks, `q[j]`: block j) requantised from sums
/// that are acc - offset (`acc[j]`: block j) and stored as 64 bytes at `out`; the same
/// bytes as [`requantize_store4_from`] on each block. [`pack_pixels4`] lays out four
/// blocks of one pixel as it does four pixels of one block, so [`pixel_transpose`]
/// puts the channels in order, and the clamps apply to the bytes of all 64 channels
/// at once (`lo` and `hi`: the channels' bounds, in order). Per 64 outputs this needs
/// no lane extractions and one 64-byte store, where [`requantize_store4_from`] takes
/// three extractions and four 16-byte stores, to lines of four pixels.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out` must be writable for 64 bytes; with
/// `BOUNDED`, [`dense_bounded`] must hold for the four blocks' channels.
#[inline(always)]
pub(super) unsafe fn requantize_store_channels64_from<const BOUNDED: bool>(
    acc: &[__m512i; 4],
    q: &[BlockRequant; 4],
    (lo, hi): (__m512i, __m512i),
    out: *mut u8,
) {
    // SAFETY: register operations, and the store the caller vouches for.
    unsafe {
        let packed = rounded_packed_from::<BOUNDED>(acc, [&q[0], &q[1], &q[2], &q[3]]);
        let bytes = _mm512_max_epu8(_mm512_permutexvar_epi32(pixel_transpose(), packed), lo);
        let bytes = if BOUNDED { _mm512_min_epu8(bytes, hi) } else { bytes };
        _mm512_storeu_si512(out as *mut _, bytes);
    }
}

/// Four vectors of sums that are acc - offset (`acc[j]` with `q[j]`'s constants)
/// rounded ([`rounded_from`]) and packed with z_y to bytes as [`pack_pixels4`] lays
/// them out: the unclamped bytes of [`requantize_store4_from`] (four pixels of one
/// block) and of [`requantize_store_channels64_from`] (four blocks of one pixel).
///
/// # Safety
/// The CPU must have AVX-512 F/BW.
#[inline(always)]
unsafe fn rounded_packed_from<const BOUNDED: bool>(acc: &[__m512i; 4], q: [&BlockRequant; 4]) -> __m512i {
    // SAFETY: register operations; the CPU features are the caller's obligation.
    unsafe {
        // Not closures (see `requantize_store4`).
        let r = [
            rounded_from::<BOUNDED>(acc[0], q[0]),
            rounded_from::<BOUNDED>(acc[1], q[1]),
            rounded_from::<BOUNDED>(acc[2], q[2]),
            rounded_from::<BOUNDED>(acc[3], q[3]),
        ];
        // z_y as int16; it is the tensor's, the same in every block.
        pack_pixels4(&r, _mm512_packs_epi32(q[0].zp, q[0].zp))
    }
}

/// (acc - offset) m + b rounded to nearest even, from sums that are acc - offset;
/// unless `BOUNDED`, min(hi - z_y, ..) first, as [`rounded`].
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn rounded_from<const BOUNDED: bool>(acc: __m512i, q: &BlockRequant) -> __m512i {
    // SAFETY: register operations; the CPU features are the caller's obligation.
    unsafe {
        let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), q.mult), q.bias);
        let v = if BOUNDED { v } else { _mm512_min_ps(q.top, v) };
        _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
}

/// Four pixels' rounded values of one block (`r[p]`: pixel p, int32) + z_y (`zp16`,
/// as int16), in saturating steps: packed to int16, z_y added, packed to u8. Lane L
/// holds channels 4L..4L + 3 of pixels 0, 1, 2, 3 (dword 4L + p). The steps are
/// monotone and exact on [0, 255], so a clamp to [lo, hi] of the result gives
/// clamp(r + z_y, lo, hi).
///
/// # Safety
/// The CPU must have AVX-512 BW.
#[inline(always)]
unsafe fn pack_pixels4(r: &[__m512i; 4], zp16: __m512i) -> __m512i {
    // SAFETY: register operations; the CPU features are the caller's obligation.
    unsafe {
        let p01 = _mm512_adds_epi16(_mm512_packs_epi32(r[0], r[1]), zp16);
        let p23 = _mm512_adds_epi16(_mm512_packs_epi32(r[2], r[3]), zp16);
        _mm512_packus_epi16(p01, p23)
    }
}

/// The dword permute from [`pack_pixels4`]'s layout to one pixel per lane: dword
/// 4L + p <- dword 4p + L.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn pixel_transpose() -> __m512i {
    // SAFETY: a register constant; the CPU feature is the caller's obligation.
    unsafe { _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0) }
}

/// Bytes in [`pack_pixels4`]'s layout stored one pixel per `stride` bytes from `out`,
/// pixels below `n`, the channels of `mask` (`transpose`: [`pixel_transpose`]).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out + p stride` must be writable for the lanes
/// of `mask` for every p < `n` (n <= 4).
#[inline(always)]
unsafe fn store_pixels4(bytes: __m512i, transpose: __m512i, mask: __mmask16, out: *mut u8, stride: usize, n: usize) {
    // SAFETY: the stores are the caller's obligation; they need no alignment.
    unsafe {
        let px = _mm512_permutexvar_epi32(transpose, bytes);
        let lanes = [
            _mm512_castsi512_si128(px),
            _mm512_extracti32x4_epi32::<1>(px),
            _mm512_extracti32x4_epi32::<2>(px),
            _mm512_extracti32x4_epi32::<3>(px),
        ];
        for (p, lane) in lanes.iter().enumerate().take(n) {
            let dst = out.add(p * stride);
            if mask == 0xffff {
                _mm_storeu_si128(dst as *mut __m128i, *lane);
            } else {
                _mm_mask_storeu_epi8(dst as *mut i8, mask, *lane);
            }
        }
    }
}

/// Longest period (lcm(cout, 16) values) over which [`requantize`] repeats its
/// parameters: 32 blocks of 16 constants on the stack.
const FLAT_PERIOD: usize = 512;

/// Whether [`requantize`] takes `cout` channels (else AVX2's does).
pub fn requantize_applies(cout: usize) -> bool {
    cout > 0 && cout * 16 / avx2::gcd(cout, 16) <= FLAT_PERIOD
}

/// Sums [pixels][cout] requantised as one flat run of values, 16 per step, with the
/// parameters repeated over a period of lcm(cout, 16) values (a U-Net's 2- and 4-channel
/// volumes and its norms' requantisations: every lane busy, the constants loaded once
/// per call, not per pixel). Rounding as [`requantize_store`]: the reference's bits.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL; [`requantize_applies`] to `cout`. (The slices are
/// checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn requantize(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    assert!(requantize_applies(cout) && r.covers(cout));
    let period = cout * 16 / avx2::gcd(cout, 16);
    // The parameters of value j of a period (channel j % cout), then its blocks.
    let stack = avx2::Period::<FLAT_PERIOD>::new(r, cout, period);
    let flat = stack.rows();
    let n = acc.len().min(out.len());
    // SAFETY: `flat` holds FLAT_PERIOD >= period channels, so each block of 16 from
    // b * 16 < period is inside it. Full steps read acc[i + 16 b..][..16] and write
    // out[..] likewise, with i + period <= whole <= n; the tail's masked lanes are those
    // below n - i. CPU features: the caller's obligation.
    unsafe {
        let blocks: [BlockRequant; FLAT_PERIOD / 16] = std::array::from_fn(|b| block_of(flat, r.out_zp, b * 16, 16));
        let blocks = &blocks[..period / 16];
        let whole = n / period * period;
        // Block by block, its constants in registers (see `requantize_store`), over
        // every period.
        for (b, q) in blocks.iter().enumerate() {
            let q = *q;
            let mut at = b * 16;
            // A period of one block (cout dividing 16: a volume's few channels): four
            // blocks of values at a time, as four pixels 16 bytes apart.
            while period == 16 && at + 64 <= whole {
                let load = |k: usize| _mm512_loadu_si512(acc.as_ptr().add(at + 16 * k) as *const _);
                requantize_store4(&[load(0), load(1), load(2), load(3)], &q, out.as_mut_ptr().add(at), 16, 4);
                at += 64;
            }
            while at < whole {
                requantize_store(_mm512_loadu_si512(acc.as_ptr().add(at) as *const _), &q, out.as_mut_ptr().add(at));
                at += period;
            }
        }
        let i = whole;
        // The last values (under a period): masked blocks.
        for (b, q) in blocks.iter().enumerate() {
            let at = i + b * 16;
            if at >= n {
                break;
            }
            let mask: __mmask16 = if n - at >= 16 { 0xffff } else { (1u16 << (n - at)) - 1 };
            let q = BlockRequant { mask, ..*q };
            requantize_store(_mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(at)), &q, out.as_mut_ptr().add(at));
        }
    }
}

/// Dense convolution fused with requantisation, as an implicit GEMM: each kernel row
/// (kw x cin bytes, contiguous in NHWC) is read straight from the unpadded input `x`
/// in quadruples, so there is no im2row. Pointwise is the case kh = kw = 1. Reads
/// run up to 3 bytes past a kernel row (the next pixel's bytes, or the buffer's
/// slack), where the packed weights are zero.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn conv_dense(x: &[u8], g: &ConvGeometry, w: &PackedWeights, out: DenseOut) {
    debug_assert_eq!(g.pads, [0; 4]);
    assert!(w.kernel_rows == g.kh && w.row_len == g.kw * g.cin);
    let walk = Walk::new([1, g.oh, g.ow], [0, g.stride[0] * g.w * g.cin, g.stride[1] * g.cin], 0);
    let shape = TileShape { kd: 1, kh: g.kh, plane_stride: 0, row_stride: g.w * g.cin };
    // SAFETY: AVX-512 VNNI is the caller's obligation.
    unsafe { dense_tiles(x, g.oh * g.ow, walk, shape, w, out) }
}

/// A 3-D dense convolution as an implicit GEMM on its input padded with the zero point
/// (channels last, [pd][ph][pw][cin]: no gathered rows): output voxels `voxels` (in
/// order, written from the start of `out`), each kernel row (a, b) of kw x cin bytes
/// read in place, as [`conv_dense`] reads a 2-D conv's. `w` is packed with kd kh
/// kernel rows of kw cin bytes. `x` needs 3 bytes of slack past the padded volume
/// (checked here).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn conv3d_dense(x: &[u8], g: &Geometry3, padded: [usize; 3], w: &PackedWeights, voxels: std::ops::Range<usize>, out: DenseOut) {
    let [kd, kh, kw] = g.kernel;
    let [_, ph, pw] = padded;
    let [_, oh, ow] = g.output;
    let c = g.cin;
    assert!(w.kernel_rows == kd * kh && w.row_len == kw * c && voxels.end <= g.output.iter().product());
    let step = [g.stride[0] * ph * pw * c, g.stride[1] * pw * c, g.stride[2] * c];
    let walk = Walk::new([g.output[0], oh, ow], step, voxels.start);
    let shape = TileShape { kd, kh, plane_stride: ph * pw * c, row_stride: pw * c };
    // SAFETY: AVX-512 VNNI is the caller's obligation.
    unsafe { dense_tiles(x, voxels.len(), walk, shape, w, out) }
}

/// Where successive output pixels' (voxels') first kernel rows start in the input: the
/// output index in [z][y][x] order as a counter, each axis's position times its byte
/// step, so that a tile's pointers take additions, not divisions.
#[derive(Clone, Copy)]
pub(super) struct Walk {
    pub(super) size: [usize; 3],
    pub(super) step: [usize; 3],
    pub(super) pos: [usize; 3],
    pub(super) base: usize,
}

impl Walk {
    /// Starting at output `first` of a [size[0]][size[1]][size[2]] output.
    fn new(size: [usize; 3], step: [usize; 3], first: usize) -> Walk {
        let pos = [first / (size[1] * size[2]), first / size[2] % size[1], first % size[2]];
        Walk { size, step, pos, base: (0..3).map(|a| pos[a] * step[a]).sum() }
    }

    /// The byte offset of the output `n` places on (divisions, once per conv).
    pub(super) fn offset_after(&self, n: usize) -> usize {
        let v = (self.pos[0] * self.size[1] + self.pos[1]) * self.size[2] + self.pos[2] + n;
        Walk::new(self.size, self.step, v).base
    }

    #[inline(always)]
    pub(super) fn advance(&mut self) {
        self.pos[2] += 1;
        self.base += self.step[2];
        if self.pos[2] == self.size[2] {
            self.pos[2] = 0;
            self.pos[1] += 1;
            self.base = self.base - self.size[2] * self.step[2] + self.step[1];
            if self.pos[1] == self.size[1] {
                self.pos[1] = 0;
                self.pos[0] += 1;
                self.base = self.base - self.size[1] * self.step[1] + self.step[0];
            }
        }
    }
}

/// How a tile's kernel rows lie in the input: kd x kh rows, row (a, b) at a
/// plane_stride + b row_stride.
pub(super) struct TileShape {
    pub(super) kd: usize,
    pub(super) kh: usize,
    pub(super) plane_stride: usize,
    pub(super) row_stride: usize,
}

/// The tiles of a dense conv of `pixels` outputs, output p's kernel rows from
/// x[walk's offset..] (offsets non-decreasing, so the last pixel reads farthest).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI. (The slices are checked here.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dense_tiles(x: &[u8], pixels: usize, walk: Walk, shape: TileShape, w: &PackedWeights, out: DenseOut) {
    // int32 output has no clamp to skip.
    let bounded = match &out {
        DenseOut::U8(r, _) => r.covers(w.cout) && dense_bounded(r, w.k, w.cout),
        DenseOut::I32(_) => true,
    };
    if w.isa == Isa::Avx512Amx && super::amx::worth_tiles(pixels, walk.size[2], w) {
        // SAFETY: the dispatchers run weights only on the ISA they were packed for
        // (`check_packed`), after `Isa::checked` confirmed that this CPU has it: AMX
        // with the tile state granted. The rest is the caller's obligation.
        return unsafe { super::amx::dense(x, pixels, walk, shape, w, out, bounded) };
    }
    // SAFETY: the CPU features and the slices are the caller's obligations, passed
    // on; `bounded` was checked just above.
    unsafe {
        if bounded {
            vnni_tiles::<true>(x, pixels, walk, shape, w, out)
        } else {
            vnni_tiles::<false>(x, pixels, walk, shape, w, out)
        }
    }
}

/// [`dense_tiles`] on the VNNI kernel; `BOUNDED` as [`requantize_store4_from`]'s.
///
/// # Safety
/// As [`dense_tiles`]; with `BOUNDED`, [`dense_bounded`] must hold for a u8 output.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_tiles<const BOUNDED: bool>(x: &[u8], pixels: usize, mut walk: Walk, shape: TileShape, w: &PackedWeights, out: DenseOut) {
    let cout = w.cout;
    let TileShape { kd, kh, plane_stride, row_stride } = shape;
    let q4 = w.row_len.div_ceil(4);
    let reach = (kd - 1) * plane_stride + (kh - 1) * row_stride + 4 * q4;
    assert!(w.kernel_rows == kd * kh);
    // Offsets grow with the output index: the last pixel reads farthest.
    assert!(pixels == 0 || x.len() >= walk.offset_after(pixels - 1) + reach, "input needs slack past its end");
    assert!(w.quads.len() >= cout.div_ceil(CBLOCK) * kd * kh * q4 * 64, "weights packed without the VNNI quadruples");
    let blocks = cout.div_ceil(CBLOCK);
    // The call's vectors, taken from the thread's and given back at the end.
    let mut kept = VNNI_KEPT.take();
    let mut params = std::mem::take(&mut kept.0);
    params.clear();
    let (u8_out, i32_out) = match out {
        DenseOut::U8(r, o) => {
            assert!(o.len() >= pixels * cout && r.covers(cout));
            // SAFETY: AVX-512 is the caller's obligation; `r` covers the `cout`
            // channels of the blocks (checked).
            params.extend((0..blocks).map(|b| unsafe { block_requant(r, b * CBLOCK, (cout - b * CBLOCK).min(CBLOCK)) }));
            (o.as_mut_ptr(), std::ptr::null_mut())
        }
        DenseOut::I32(o) => {
            assert!(o.len() >= pixels * cout);
            params.extend((0..blocks).map(|b| block_mask((cout - b * CBLOCK).min(CBLOCK))));
            (std::ptr::null_mut(), o.as_mut_ptr())
        }
    };
    // The sums start from -offset (zero for int32 output).
    let mut starts = std::mem::take(&mut kept.1);
    starts.clear();
    starts.extend(params.iter().map(|q| q.start()));
    let xp = x.as_ptr();
    // Panels of pixels whose inputs fit in L1 beside a few blocks' weights: each group
    // of blocks runs over a whole panel, so its weights are read once per panel, not
    // once per tile of PT pixels (MobileNetV2's 960 -> 320 at 7x7: 307 KB of weights,
    // read from L2 for every tile of its 49 pixels; 16 KiB panels of 8-pixel tiles
    // made VNNI's pointwise convs of more than 64 inputs about 10% faster, 8 and 32
    // KiB measured the same).
    let panel_tiles = (PANEL_BYTES / (w.k.max(1) * PT)).max(1);
    let mut tiles = std::mem::take(&mut kept.2);
    let mut p0 = 0;
    while p0 < pixels {
        // SAFETY: every pixel's kernel rows are read in 4-byte groups up to its
        // offset + reach <= x.len() (checked above, for the last pixel, the farthest);
        // the walk stops at the last pixel, so the tile's pixels past the end repeat it. Block b's
        // weights are kd kh q4 64-byte groups inside `quads` (checked). Stores
        // go to pixels below `pixels`, channels below `cout` (the block's mask), inside
        // the output (checked). loadu/storeu and read_unaligned need no alignment.
        unsafe {
            // The panel's tiles: their pixels; past the end, the last pixel again
            // (computed, not stored).
            tiles.clear();
            let mut p = p0;
            while p < pixels && tiles.len() < panel_tiles {
                let mut px = [xp; PT];
                for (t, ptr) in px.iter_mut().enumerate() {
                    *ptr = xp.add(walk.base);
                    if p + t + 1 < pixels {
                        walk.advance();
                    }
                }
                tiles.push(px);
                p += PT;
            }
            let tile = |j: usize| DenseTile { px: tiles[j], quads: w.quads.as_ptr(), kd, kh, q4, plane_stride, row_stride };
            // Three blocks of channels at a time (then two, one): 24 independent sums
            // hide vpdpbusd's latency where a conv has few inputs (a chain of q4 steps
            // per sum), and each broadcast input quadruple serves every block.
            let mut b = 0;
            while b + 3 <= blocks {
                for j in 0..tiles.len() {
                    let acc = tile(j).sums::<3>(b, [starts[b], starts[b + 1], starts[b + 2]]);
                    for (k, acc) in acc.iter().enumerate() {
                        tile_out::<BOUNDED>(acc, p0 + j * PT, pixels, cout, b + k, &params[b + k], u8_out, i32_out);
                    }
                }
                b += 3;
            }
            while b + 2 <= blocks {
                for j in 0..tiles.len() {
                    let acc = tile(j).sums::<2>(b, [starts[b], starts[b + 1]]);
                    for (k, acc) in acc.iter().enumerate() {
                        tile_out::<BOUNDED>(acc, p0 + j * PT, pixels, cout, b + k, &params[b + k], u8_out, i32_out);
                    }
                }
                b += 2;
            }
            if b < blocks {
                for j in 0..tiles.len() {
                    let [acc] = tile(j).sums::<1>(b, [starts[b]]);
                    tile_out::<BOUNDED>(&acc, p0 + j * PT, pixels, cout, b, &params[b], u8_out, i32_out);
                }
            }
            p0 = p;
        }
    }
    VNNI_KEPT.set((params, starts, tiles));
}

/// The VNNI kernel's tile pointers.
type PixelTiles = Vec<[*const u8; PT]>;

thread_local! {
    /// [`vnni_tiles`]' vectors (block parameters, sum starts, tile pointers), kept by
    /// each thread between its calls, as the AMX kernel keeps its own.
    static VNNI_KEPT: std::cell::Cell<(Vec<BlockRequant>, Vec<__m512i>, PixelTiles)> = const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// A tile of [`PT`] pixels of [`conv_dense`] (or voxels of [`conv3d_dense`]): where
/// each pixel's kernel rows start, and the packed weights. Kernel row (a, b) starts
/// a plane_stride + b row_stride bytes after the pixel's first (kd = 1 for 2-D).
struct DenseTile {
    px: [*const u8; PT],
    quads: *const i8,
    kd: usize,
    kh: usize,
    q4: usize,
    plane_stride: usize,
    row_stride: usize,
}

impl DenseTile {
    /// The int32 sums of the tile's pixels for blocks b..b + NB of 16 channels, block
    /// b + k's starting from `start[k]`.
    ///
    /// # Safety
    /// AVX-512 F/VNNI; the reads of [`conv_dense`]'s SAFETY comment, for these blocks.
    #[inline(always)]
    unsafe fn sums<const NB: usize>(&self, b: usize, start: [__m512i; NB]) -> [[__m512i; PT]; NB] {
        // SAFETY: the caller's obligations.
        unsafe {
            let per_block = self.kd * self.kh * self.q4 * 64;
            let wb = self.quads.add(b * per_block);
            let mut acc: [[__m512i; PT]; NB] = std::array::from_fn(|k| [start[k]; PT]);
            for a in 0..self.kd {
                for r in 0..self.kh {
                    let i = a * self.kh + r;
                    for kk in 0..self.q4 {
                        let wv: [__m512i; NB] =
                            std::array::from_fn(|k| _mm512_loadu_si512(wb.add(k * per_block + (i * self.q4 + kk) * 64) as *const _));
                        let off = a * self.plane_stride + r * self.row_stride + kk * 4;
                        for (t, px) in self.px.iter().enumerate() {
                            let xv = _mm512_set1_epi32((px.add(off) as *const i32).read_unaligned());
                            for (acc, w) in acc.iter_mut().zip(&wv) {
                                acc[t] = _mm512_dpbusd_epi32(acc[t], xv, *w);
                            }
                        }
                    }
                }
            }
            acc
        }
    }
}

/// Block `b` of a tile's sums (pixels p..p + PT; acc - offset) written as u8
/// (requantised, see [`requantize_store4_from`]) or int32.
///
/// # Safety
/// AVX-512 F/BW/VL; the stores of [`conv_dense`]'s SAFETY comment.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_out<const BOUNDED: bool>(
    acc: &[__m512i; PT],
    p: usize,
    pixels: usize,
    cout: usize,
    b: usize,
    q: &BlockRequant,
    u8_out: *mut u8,
    i32_out: *mut i32,
) {
    // In registers for the tile's pixels (see `requantize_store`).
    let q = *q;
    // SAFETY: the caller's obligations.
    unsafe {
        if !i32_out.is_null() {
            for (t, a) in acc.iter().enumerate().take(pixels.saturating_sub(p)) {
                _mm512_mask_storeu_epi32(i32_out.add((p + t) * cout + b * CBLOCK), q.mask, *a);
            }
        } else {
            // Four pixels at a time; those past `pixels` are computed, not stored.
            for f in (0..PT).step_by(4) {
                let n = pixels.saturating_sub(p + f).min(4);
                if n == 0 {
                    break;
                }
                let four = [acc[f], acc[f + 1], acc[f + 2], acc[f + 3]];
                requantize_store4_from::<BOUNDED>(&four, &q, u8_out.add((p + f) * cout + b * CBLOCK), cout, n);
            }
        }
    }
}

/// Depthwise convolution fused with requantisation, on an unpadded (or zero-point
/// padded) input: four taps of 16 channels are gathered into one register, their
/// bytes interleaved per channel by one `vpermb`, and multiplied with the taps'
/// weights by one `vpdpbusd`; zp x Σw is subtracted once at the end.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn conv_depthwise(x: &[u8], g: &ConvGeometry, zp_in: u8, w: &DepthwiseWeights, r: &Requant, out: &mut [u8]) {
    debug_assert_eq!(g.pads, [0; 4]);
    let c = g.cin;
    let taps = g.kh * g.kw;
    assert!(w.taps == taps && w.c == c);
    assert!(x.len() >= g.h * g.w * c + 16 && out.len() >= g.oh * g.ow * c, "input needs slack past its end");
    let blocks = c.div_ceil(CBLOCK);
    let groups = taps.div_ceil(4);
    assert!(w.quads.len() >= blocks * groups * 64 && w.sums.len() >= c && r.covers(c), "weights packed for VNNI");
    // SAFETY: every block's masked loads (parameters, Σw) touch channels below c,
    // inside each vector (checked above). Each pixel's taps are read as 16 bytes at
    // its top-left byte + the block's first channel + a tap's offset: at most the
    // last input pixel's channels + 16 bytes, inside x (h w c + 16, checked). Block
    // b's weights are `groups` 64-byte groups inside `quads` (checked). The stores
    // write the block's masked channels of an output pixel inside `out` (checked).
    // loadu needs no alignment. AVX-512 is the caller's obligation.
    unsafe {
        let params: Vec<BlockRequant> = (0..blocks).map(|b| block_requant(r, b * CBLOCK, (c - b * CBLOCK).min(CBLOCK))).collect();
        let zsum: Vec<__m512i> = (0..blocks)
            .map(|b| {
                _mm512_mullo_epi32(
                    _mm512_maskz_loadu_epi32(params[b].mask, w.sums.as_ptr().add(b * CBLOCK)),
                    _mm512_set1_epi32(zp_in as i32),
                )
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
                    requantize_store(_mm512_sub_epi32(acc, zsum[b]), q, o.add(b * CBLOCK));
                }
            }
        }
    }
}

/// `x / s` in every lane, the IEEE quotient (correctly rounded) without a division:
/// `vdivps` takes 10 cycles per 16 lanes here, the three products below about 2.
/// With `y = 1 / s` correctly rounded, `q0 = x y` is within an ulp of `x / s`, the
/// remainder `x - q0 s` is exact in an FMA, and `q0 + (x - q0 s) y` rounds to the
/// correctly rounded quotient (Markstein's theorem; Muller et al., *Handbook of
/// Floating-Point Arithmetic*, the FMA-based division). So the bytes equal the
/// reference's `x / scale` ([`super::scalar::quantize_u8`]).
///
/// The theorem needs no overflow or underflow on the way: the scale is kept to
/// [2^-100, 2^100] (any other scale divides), and lanes whose `q0` is 2^22 or more
/// in magnitude, NaN or infinite keep `q0`. The quantisation saturates them anyway
/// (as the reference does), and `q0` is NaN or infinite exactly where the quotient is.
#[derive(Clone, Copy)]
struct Quotient {
    s: __m512,
    y: __m512,
    lim: __m512,
    exact: bool,
}

impl Quotient {
    #[inline(always)]
    fn new(scale: f32) -> Self {
        let exact = scale.is_finite() && (2f32.powi(-100)..=2f32.powi(100)).contains(&scale.abs());
        // SAFETY: register set-up; the CPU features are the caller's obligation.
        unsafe { Quotient { s: _mm512_set1_ps(scale), y: _mm512_set1_ps(1.0 / scale), lim: _mm512_set1_ps(4_194_304.0), exact } }
    }

    /// # Safety
    /// The CPU must have AVX-512 F (FMA included).
    #[inline(always)]
    unsafe fn of(&self, x: __m512) -> __m512 {
        // SAFETY: register operations; the CPU features are the caller's obligation.
        unsafe {
            if !self.exact {
                return _mm512_div_ps(x, self.s);
            }
            let q0 = _mm512_mul_ps(x, self.y);
            let q1 = self.corrected(x, q0);
            // Ordered compare: false for NaN, which keeps q0.
            let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(q0), self.lim);
            _mm512_mask_blend_ps(small, q0, q1)
        }
    }

    /// [`Quotient::of`] where the caller knows every |x / s| to be below 2^21 and
    /// `exact` to hold: no lane needs q0 kept (neither NaN, infinite nor near the
    /// saturation), so the correction applies to all.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F (FMA included).
    #[inline(always)]
    unsafe fn of_small(&self, x: __m512) -> __m512 {
        debug_assert!(self.exact);
        // SAFETY: register operations; the CPU features are the caller's obligation.
        unsafe { self.corrected(x, _mm512_mul_ps(x, self.y)) }
    }

    /// q0 + (x - q0 s) y for q0 = x y: the correctly rounded quotient where the
    /// theorem's conditions hold (see the type), the remainder exact in the FMA.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F (FMA included).
    #[inline(always)]
    unsafe fn corrected(&self, x: __m512, q0: __m512) -> __m512 {
        // SAFETY: register operations; the CPU features are the caller's obligation.
        unsafe { _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, self.s, x), self.y, q0) }
    }
}

/// round_half_even(w) + z clamped to [0, 255], as bytes, for w already divided by the
/// scale (`lim`: 2^22 in every lane, `z`: the zero point): the tail of
/// [`super::scalar::quantize_u8`] in integers (see [`add_quantized`]'s loop for why
/// the bytes are the reference's).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn quantized_bytes(w: __m512, lim: __m512, z: __m512i) -> __m128i {
    // SAFETY: register operations; the CPU features are the caller's obligation.
    unsafe {
        let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_min_ps(lim, w));
        _mm512_cvtusepi32_epi8(_mm512_max_epi32(_mm512_add_epi32(r, z), _mm512_setzero_si512()))
    }
}

/// The quantised Add ([`super::scalar::add_quantized`]): the same IEEE operations in
/// the same order as the scalar loop (two products, one sum: no FMA; the correctly
/// rounded quotient by the output scale), then the rounding, zero point and clamps in
/// integers, so the same bytes.
///
/// Where the sums cannot reach 2^22 output steps (|a - z_a| s_a + |b - z_b| s_b <= 255
/// (s_a + s_b), checked here in f64: any ordinary scales), 64 elements a step: the
/// quotient without a division ([`Quotient::of_small`]: `vdivps` took 10 cycles per
/// 16 lanes, the whole step's other work about as much), rounded without the clamp
/// to 2^22 (never reached), and four vectors packed to bytes together as the dense
/// epilogues pack four pixels ([`pack_pixels4`]: + z_y and the saturation to [0, 255]
/// in saturating int16 and u8 steps, one permute, the clamp on the bytes). Otherwise,
/// and for the last elements, 16 a step through masked loads and stores (no slack
/// read or written), with the true division. MobileNetV2 x1.0's ten Adds (Intel core,
/// per-op profiles): 61 -> 45 us.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn add_quantized(a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, [lo, hi]: [u8; 2], out: &mut [u8]) {
    let n = out.len().min(a.len()).min(b.len());
    let (za, sa) = (_mm512_set1_epi32(ta.zp as i32), _mm512_set1_ps(ta.scale));
    let (zb, sb) = (_mm512_set1_epi32(tb.zp as i32), _mm512_set1_ps(tb.scale));
    let (so, zo) = (_mm512_set1_ps(to.scale), _mm512_set1_epi32(to.zp as i32));
    let lim = _mm512_set1_ps(4_194_304.0);
    let quotient = Quotient::new(to.scale);
    let reach = 255.0 * (ta.scale.abs() as f64 + tb.scale.abs() as f64) / to.scale.abs() as f64;
    // Below 2^21 (a factor 2 of margin over the f32 rounding on the way to 2^22).
    let small = quotient.exact && reach.is_finite() && reach < (1u32 << 21) as f64;
    // SAFETY: the 64-element steps read a[i..i + 64] and b[i..i + 64] and write
    // out[i..i + 64] with i + 64 <= n (n is the shortest length); the 16-element steps
    // are masked to elements i..min(i + 16, n). Masked-off bytes are not touched.
    unsafe {
        let mut i = 0;
        if small {
            let zp16 = _mm512_set1_epi16(to.zp as i16);
            let (lo64, hi64) = (_mm512_set1_epi8(lo as i8), _mm512_set1_epi8(hi as i8));
            let transpose = pixel_transpose();
            while i + 64 <= n {
                // Not a closure (the four sums are built written out).
                let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
                let mut r = [_mm512_setzero_si512(); 4];
                for (k, r) in r.iter_mut().enumerate() {
                    let x = _mm512_cvtepu8_epi32(_mm_loadu_si128(pa.add(16 * k) as *const __m128i));
                    let y = _mm512_cvtepu8_epi32(_mm_loadu_si128(pb.add(16 * k) as *const __m128i));
                    let v = _mm512_add_ps(
                        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(x, za)), sa),
                        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(y, zb)), sb),
                    );
                    *r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(quotient.of_small(v));
                }
                let bytes = _mm512_permutexvar_epi32(transpose, pack_pixels4(&r, zp16));
                _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut _, _mm512_min_epu8(_mm512_max_epu8(bytes, lo64), hi64));
                i += 64;
            }
        }
        let (lo, hi) = (_mm_set1_epi8(lo as i8), _mm_set1_epi8(hi as i8));
        while i < n {
            let m: __mmask16 = if n - i >= 16 { !0 } else { (1u16 << (n - i)) - 1 };
            let deq = |p: *const u8, z: __m512i, s: __m512| {
                let x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p.add(i) as *const i8));
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(x, z)), s)
            };
            let v = _mm512_add_ps(deq(a.as_ptr(), za, sa), deq(b.as_ptr(), zb, sb));
            // The reference's round_half_even(v / s) + z, clamped to [0, 255], in
            // integers: below 2^22 the conversion rounds half to even as the magic
            // number does, and + z (an integer) is exact either way. Above 2^22 the
            // reference saturates to 2^22 (255 after the clamp): min(2^22, w) does
            // the same before the conversion (which would give i32::MIN from 2^31
            // on); min's second operand is returned for a NaN, which converts to
            // i32::MIN and ends at 0, as the reference's NaN does. Below -2^22 (or
            // -2^31) anything ends at 0.
            let q = quantized_bytes(_mm512_div_ps(v, so), lim, zo);
            _mm_mask_storeu_epi8(out.as_mut_ptr().add(i) as *mut i8, m, _mm_min_epu8(_mm_max_epu8(q, lo), hi));
            i += 16;
        }
    }
}

/// Float NCHW quantised (ONNX QuantizeLinear) into u8 NHWC (the model input, and
/// what float ops hand back to integer ops), 16 pixels at a time in blocks of up to 8
/// channels: each channel's 16 bytes, then one two-source byte permute interleaves
/// them into pixels. The same bytes as [`super::scalar::quantize_u8`] (the quotient
/// is the IEEE one: [`Quotient`]). Returns whether every value was finite, each
/// tested as it is quantised (exponent bits all ones: NaN or infinite); where one
/// was not, the bytes are written all the same. Short slices (and no channels) go
/// to the AVX2 kernel, which tests them too.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VBMI and AVX2. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
pub unsafe fn quantize_nchw_to_nhwc(x: &[f32], stride: usize, t: &QTensor, out: &mut [u8]) -> bool {
    let (hw, c, scale, zp) = (t.h * t.w, t.c, t.scale, t.zp);
    if c == 0 || stride < hw || x.len() < (c - 1) * stride + hw || out.len() < c * hw {
        // SAFETY: AVX2 is the caller's obligation.
        unsafe {
            return avx2::quantize_nchw_to_nhwc(x, stride, t, out);
        }
    }
    let exponent = _mm512_set1_epi32(0x7f80_0000);
    let mut non_finite: __mmask16 = 0;
    let (s, z) = (Quotient::new(scale), _mm512_set1_epi32(zp as i32));
    let lim = _mm512_set1_ps(4_194_304.0);
    let full = hw / 16 * 16;
    // SAFETY: each step reads 16 floats of a plane from pixel i, i + 16 <= full <= hw,
    // inside x (channel ch from ch stride, (c - 1) stride + hw floats, checked); the permute tables are local 128-byte arrays;
    // a whole pixel's store writes 16 c bytes from pixel i (one channel: 16 bytes), inside out (c hw, checked),
    // the others a local 128-byte block. loadu/storeu need no alignment.
    unsafe {
        // round_half_even(v / s) + z clamped to [0, 255] in integers, as the Add
        // (`add_quantized`) does it: the same bytes, NaN and infinities included.
        let mut quantize16 = |ch: usize, i: usize| {
            let v = _mm512_loadu_ps(x.as_ptr().add(ch * stride + i));
            non_finite |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), exponent), exponent);
            quantized_bytes(s.of(v), lim, z)
        };
        // Byte j of a block of n channels (pixel j / n, channel j % n) is byte
        // 16 (j % n) + j / n of [ch0 | ch1 | ... | ch7].
        // Made for the block sizes this call meets only (at most two: 8 and c % 8),
        // not all eight: their 1024 divisions took about 1 us a call.
        let perm = |n: usize| {
            let idx: [u8; 128] = std::array::from_fn(|j| if j < 16 * n { (16 * (j % n) + j / n) as u8 } else { 0 });
            [_mm512_loadu_si512(idx.as_ptr() as *const _), _mm512_loadu_si512(idx.as_ptr().add(64) as *const _)]
        };
        let none = [_mm512_setzero_si512(); 2];
        let (wide, last) = if full > 0 && c > 1 { (perm(c.min(8)), perm((c - 1) % 8 + 1)) } else { (none, none) };
        let mut block = [0u8; 128];
        let mut i = 0;
        // One channel (a volume's input): planar is channels last, 16 bytes a step.
        while c == 1 && i < full {
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, quantize16(0, i));
            i += 16;
        }
        // Three channels (an RGB image, the commonest input): the loop below with its
        // block fixed, in straight-line code (the general loop's plane array and bounds
        // checks cost as much as the arithmetic: 54 -> 34 us for 224x224x3, hot). Its 48
        // bytes index only the first 48 of the joined planes: one single-source permute.
        //
        // Each step first takes the quick way: the quotient corrected in every lane
        // ([`Quotient::of_small`]), the rounded values of the three planes packed to
        // bytes together as the dense epilogues pack four pixels ([`pack_pixels4`]),
        // one permute into pixel order. It holds where every |q0| is below 2^22 (then
        // no lane is NaN or infinite either, nor saturates); where one is not, the step
        // is done again the exact way (the lane kept, the value tested). 224x224x3:
        // 27.8 -> 25.2 us (per-op profiles, 3 alternated runs); the rest is the reading
        // of 600 KB of floats.
        if c == 3 {
            let order = wide[0];
            // Byte 3 p + k (pixel p, channel k) from `pack_pixels4`'s layout: lane p / 4,
            // dword 4 (p / 4) + k, byte p % 4.
            let packed: [u8; 64] = std::array::from_fn(|b| if b < 48 { (16 * (b / 12) + 4 * (b % 3) + b / 3 % 4) as u8 } else { 0 });
            let packed = _mm512_loadu_si512(packed.as_ptr() as *const _);
            let zp16 = _mm512_set1_epi16(zp as i16);
            let quick = s.exact;
            while i < full {
                let mut wide_lanes: __mmask16 = if quick { 0 } else { !0 };
                if quick {
                    let mut r = [_mm512_setzero_si512(); 3];
                    for (k, r) in r.iter_mut().enumerate() {
                        let v = _mm512_loadu_ps(x.as_ptr().add(k * stride + i));
                        let q0 = _mm512_mul_ps(v, s.y);
                        wide_lanes |= !_mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(q0), lim);
                        *r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(s.corrected(v, q0));
                    }
                    let px = _mm512_permutexvar_epi8(packed, pack_pixels4(&[r[0], r[1], r[2], r[2]], zp16));
                    _mm512_mask_storeu_epi8(out.as_mut_ptr().add(i * 3) as *mut i8, (1u64 << 48) - 1, px);
                }
                if wide_lanes != 0 {
                    let rg = _mm256_inserti128_si256(_mm256_castsi128_si256(quantize16(0, i)), quantize16(1, i), 1);
                    let rgb = _mm512_inserti64x4(_mm512_castsi256_si512(rg), _mm256_castsi128_si256(quantize16(2, i)), 1);
                    let px = _mm512_permutexvar_epi8(order, rgb);
                    _mm512_mask_storeu_epi8(out.as_mut_ptr().add(i * 3) as *mut i8, (1u64 << 48) - 1, px);
                }
                i += 16;
            }
        }
        while i < full {
            for ch0 in (0..c).step_by(8) {
                let n = (c - ch0).min(8);
                let mut planes = [_mm_setzero_si128(); 8];
                for (k, plane) in planes.iter_mut().enumerate().take(n) {
                    *plane = quantize16(ch0 + k, i);
                }
                let join = |p: &[__m128i]| {
                    let lo = _mm256_inserti128_si256(_mm256_castsi128_si256(p[0]), p[1], 1);
                    let hi = _mm256_inserti128_si256(_mm256_castsi128_si256(p[2]), p[3], 1);
                    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
                };
                let (a, b) = (join(&planes[..4]), join(&planes[4..]));
                let [p0, p1] = if n == c.min(8) { wide } else { last };
                let (v0, v1) = (_mm512_permutex2var_epi8(a, p0, b), _mm512_permutex2var_epi8(a, p1, b));
                if n == c {
                    // The whole pixel: 16 c contiguous bytes.
                    let bytes = 16 * c;
                    let dst = out.as_mut_ptr().add(i * c);
                    _mm512_mask_storeu_epi8(dst as *mut i8, if bytes >= 64 { u64::MAX } else { (1u64 << bytes) - 1 }, v0);
                    if bytes > 64 {
                        let rest = bytes - 64;
                        _mm512_mask_storeu_epi8(dst.add(64) as *mut i8, if rest >= 64 { u64::MAX } else { (1u64 << rest) - 1 }, v1);
                    }
                } else {
                    _mm512_storeu_si512(block.as_mut_ptr() as *mut _, v0);
                    _mm512_storeu_si512(block.as_mut_ptr().add(64) as *mut _, v1);
                    for p in 0..16 {
                        out[(i + p) * c + ch0..(i + p) * c + ch0 + n].copy_from_slice(&block[p * n..(p + 1) * n]);
                    }
                }
            }
            i += 16;
        }
    }
    let mut finite = non_finite == 0;
    for p in full..hw {
        for ch in 0..c {
            let v = x[ch * stride + p];
            finite &= v.is_finite();
            out[p * c + ch] = scalar::quantize_u8(v, scale, zp);
        }
    }
    finite
}

/// [`DepthwiseWeights::cols`] of a 3x3 kernel, `w` being [c][3][3].
pub fn depthwise_columns3x3(w: &[i8], c: usize) -> Vec<i8> {
    let mut cols = vec![0i8; c.div_ceil(CBLOCK) * 3 * CBLOCK * 4];
    for ch in 0..c {
        let (b, lane) = (ch / CBLOCK, ch % CBLOCK);
        for i in 0..3 {
            for j in 0..3 {
                cols[((b * 3 + j) * CBLOCK + lane) * 4 + i] = w[ch * 9 + i * 3 + j];
            }
        }
    }
    cols
}

/// Whether [`conv_depthwise3x3`] applies: a 3x3 kernel with horizontal stride 1 or 2,
/// and an integral output zero point (its integer requantisation tail relies on it).
pub fn depthwise3x3_applies(g: &ConvGeometry, w: &DepthwiseWeights, r: &Requant) -> bool {
    g.kh == 3
        && g.kw == 3
        && (g.stride[1] == 1 || g.stride[1] == 2)
        && w.taps == 9
        && w.c == g.cin
        && !w.cols.is_empty()
        && r.out_zp.fract() == 0.0
        && (0.0..=255.0).contains(&r.out_zp)
}

/// Constants of one block of 16 channels.
#[derive(Clone, Copy)]
pub(super) struct DwBlock {
    w: [__m512i; 3],
    /// -(zp_in Σw + offset): the sums start from the whole correction.
    init: __m512i,
    mult: __m512,
    bias: __m512,
    /// lo and hi as bytes in the order of four packed pixels (lane L: channels 4L..4L+3
    /// of each pixel).
    lo: __m512i,
    hi: __m512i,
    mask: __mmask16,
}

/// [`conv_depthwise3x3`]'s constants of a layer: its blocks, and whether its
/// requantised values stay below 2^30 (no clamp before rounding). Made at the layer's
/// first call and kept with its weights (`DepthwiseWeights::dw3x3`): made per call (and
/// per part on every thread), 60 blocks of about 25 operations took 0.8 us of a
/// 960-channel conv's 10.6 us at 7x7 (`depthwise_speed`, Xeon with AMX: 10.55-11.08 ->
/// 9.80-9.87 us kept, 3 alternations; 1x1: 1.76-2.19 -> 0.98-1.00 us).
#[derive(Clone, Default)]
pub(super) struct DwConsts {
    blocks: Vec<DwBlock>,
    bounded: bool,
}

thread_local! {
    /// [`conv_depthwise3x3`]'s blocks for a call whose requantisation is not its
    /// layer's first, kept by each thread between its calls: a new vector each call
    /// (64-byte aligned: `posix_memalign`) and its free were among the allocator's 2% of
    /// MobileNetV2's time on one thread.
    static DW_BLOCKS: std::cell::Cell<DwConsts> = std::cell::Cell::new(DwConsts::default());
}

/// What every group of pixels of the kernel reads besides its block's constants.
struct DwRow {
    c: usize,
    w: usize,
    /// The register standing for a column of padding: every byte the input zero point.
    zpv: __m512i,
    interleave: __m512i,
    transpose: __m512i,
    zp16: __m512i,
    lim: __m512,
}

/// 3x3 depthwise convolution fused with requantisation, on the unpadded input.
///
/// One column of three input rows is interleaved into one register ("V": channel c's
/// int32 holds the bytes of rows 0, 1, 2), so one `vpdpbusd` applies a whole kernel
/// column to 16 channels and an output pixel is three `vpdpbusd` on the V of its
/// columns. Walking along a row, neighbouring outputs share columns: with stride 1
/// each V is built once and used three times (stride 2: twice).
///
/// Padding is never materialised: a row above or below the input reads a row of zero
/// points (`scratch`), a column left or right of it is a register of zero points. Every
/// tap is thus read, and the zero-point correction is zp Σw for every pixel, exactly
/// the reference's sum where a tap of padding contributes (zp - zp) w = 0.
///
/// Requantisation is [`super::scalar::requantize`]'s float arithmetic (no FMA, same
/// order) up to the rounding, where `vcvtps2dq` rounds half to even as the
/// reference's magic-number addition does; the integral zero point and the clamp are
/// then applied to four pixels at once, in saturating integer steps that give the
/// same bytes (for finite requantisation parameters, as compiled models have).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn conv_depthwise3x3(
    x: &[u8],
    g: &ConvGeometry,
    zp_in: u8,
    w: &DepthwiseWeights,
    r: &Requant,
    scratch: &mut [u8],
    out: &mut [u8],
) {
    let c = g.cin;
    assert!(depthwise3x3_applies(g, w, r));
    assert!(w.cols.len() >= c.div_ceil(CBLOCK) * 3 * 64 && w.sums.len() >= c);
    assert!(r.covers(c));
    assert!(x.len() >= g.h * g.w * c + 16 && out.len() >= g.oh * g.ow * c, "input needs slack past its end");
    // SAFETY: `dw_consts` gets what its contract asks: `cols` holds c.div_ceil(16)
    // blocks of three registers, `sums` and `r` c channels (checked above). `dw3x3` gets
    // what its contract asks: x and out checked above, blocks built for g.cin = w.c
    // channels (kept ones too: a layer's weights have one channel count); it checks the
    // scratch row itself. AVX-512 is the caller's obligation.
    unsafe {
        // The layer's blocks, made at its first call and kept with its weights (see
        // `DwConsts`), or made into the thread's vector for another requantisation.
        let mut made = DW_BLOCKS.take();
        let consts = w.dw3x3.get(r, zp_in, |d| dw_consts(w, r, zp_in, c, d), &mut made);
        let blocks = &consts.blocks[..];
        match (g.stride[1], consts.bounded) {
            (1, true) => dw3x3::<1, false>(x, g, zp_in, blocks, r, scratch, out),
            (1, false) => dw3x3::<1, true>(x, g, zp_in, blocks, r, scratch, out),
            (_, true) => dw3x3::<2, false>(x, g, zp_in, blocks, r, scratch, out),
            (_, false) => dw3x3::<2, true>(x, g, zp_in, blocks, r, scratch, out),
        }
        DW_BLOCKS.set(made);
    }
}

/// [`conv_depthwise3x3`]'s constants of `c` channels of `w` for requantisation `r` and
/// input zero point `zp_in`, into `into`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI; `w.cols` must hold c.div_ceil(16) blocks of
/// three registers, `w.sums` and every vector of `r` at least c channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dw_consts(w: &DepthwiseWeights, r: &Requant, zp_in: u8, c: usize, into: &mut DwConsts) {
    // SAFETY: the masked loads of each block (Σw, parameters) touch channels below c,
    // inside each vector; block b's three column registers are 192 bytes inside
    // `cols`; `rep_idx` is a local 64-byte array (the caller's obligations).
    unsafe {
        // Lane L of a block's lo/hi bytes, repeated for the four pixels.
        let rep_idx: [i32; 16] = std::array::from_fn(|i| (i / 4) as i32);
        let rep = _mm512_loadu_si512(rep_idx.as_ptr() as *const _);
        // Past 2^22 the reference saturates to hi. vcvtps2dq turns values from 2^31 up
        // into the integer indefinite (-2^31, which would saturate to lo), so they are
        // clamped first, unless the layer's sums cannot come near: |v| <= (255 Σ|w| +
        // |correction|) |m| + |b| < 2^30, evaluated in f32 (a relative error of 1e-6 at
        // most, far inside the factor 2 of margin).
        let mut bounded = true;
        // A loop pushing each block, not a map over a closure, which built each 576-byte
        // block apart and copied it into the vector: the set-up took about 0.6 us a call
        // (2.5% of MobileNetV2's depthwise time on one thread, paid again by every part on
        // two); as a loop, the depthwise convs 0.981 (per-op profiles).
        let (ones, zpv, lim) = (_mm512_set1_epi8(1), _mm512_set1_epi32(zp_in as i32), _mm512_set1_ps((1u32 << 30) as f32));
        let blocks = &mut into.blocks;
        blocks.clear();
        for b in 0..c.div_ceil(CBLOCK) {
            let c0 = b * CBLOCK;
            let mask: __mmask16 = if c - c0 >= 16 { 0xffff } else { (1u16 << (c - c0)) - 1 };
            let sums = _mm512_maskz_loadu_epi32(mask, w.sums.as_ptr().add(c0));
            let offset = _mm512_maskz_loadu_epi32(mask, r.offset.as_ptr().add(c0));
            let corr = _mm512_add_epi32(_mm512_mullo_epi32(sums, zpv), offset);
            let lo = _mm512_permutexvar_epi32(rep, _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(mask, r.lo.as_ptr().add(c0) as *const i8)));
            let hi = _mm512_permutexvar_epi32(rep, _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(mask, r.hi.as_ptr().add(c0) as *const i8)));
            let wb = w.cols.as_ptr().add(b * 3 * 64);
            let wv = [
                _mm512_loadu_si512(wb as *const _),
                _mm512_loadu_si512(wb.add(64) as *const _),
                _mm512_loadu_si512(wb.add(128) as *const _),
            ];
            let mult = _mm512_maskz_loadu_ps(mask, r.mult.as_ptr().add(c0));
            let bias = _mm512_maskz_loadu_ps(mask, r.bias.as_ptr().add(c0));
            // Σ|w| per channel: |w| as u8 (|-128| = 128) times ones.
            let abs_sum = _mm512_dpbusd_epi32(
                _mm512_dpbusd_epi32(
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv[0]), ones),
                    _mm512_abs_epi8(wv[1]),
                    ones,
                ),
                _mm512_abs_epi8(wv[2]),
                ones,
            );
            let max_acc =
                _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(abs_sum), _mm512_set1_ps(255.0)), _mm512_abs_ps(_mm512_cvtepi32_ps(corr)));
            let max_v = _mm512_add_ps(_mm512_mul_ps(max_acc, _mm512_abs_ps(mult)), _mm512_abs_ps(bias));
            bounded &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(max_v, lim) == 0xffff;
            blocks.push(DwBlock { w: wv, init: _mm512_sub_epi32(_mm512_setzero_si512(), corr), mult, bias, lo, hi, mask });
        }
        into.bounded = bounded;
    }
}

/// The rows of [`conv_depthwise3x3`], horizontal stride `SX`; `CLAMP`: clamp the
/// requantised values to 2^22 before rounding.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI; `x` must hold g.h g.w g.cin + 16
/// bytes, `out` g.oh g.ow g.cin, and `blocks` the g.cin.div_ceil(16) blocks of g.cin
/// channels (the scratch row is checked here).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn dw3x3<const SX: usize, const CLAMP: bool>(
    x: &[u8],
    g: &ConvGeometry,
    zp_in: u8,
    blocks: &[DwBlock],
    r: &Requant,
    scratch: &mut [u8],
    out: &mut [u8],
) {
    let c = g.cin;
    let (h, wd) = (g.h, g.w);
    let zrow = if g.pads[0] > 0 || g.pads[2] > 0 {
        assert!(scratch.len() >= wd * c + 16, "scratch holds a row of zero points");
        scratch[..wd * c + 16].fill(zp_in);
        scratch.as_ptr()
    } else {
        std::ptr::null()
    };
    // Byte 4c + t of V is byte c of row t: rows 0 and 1 in lanes 0 and 1 of the first
    // operand, row 2 in lane 0 of the second; byte 3 meets a zero weight.
    let il: [u8; 64] = std::array::from_fn(|i| [i / 4, 16 + i / 4, 64 + i / 4, i / 4][i % 4] as u8);
    // SAFETY: the index tables are local 64-byte arrays. Each output row reads three
    // input rows (inside x, as oh and the strides fit the padded input) or the row of
    // zero points (w c + 16 bytes, filled above) where padding is; `dw_group` reads a
    // column only if it lies inside the row (all of them checked by `interior` for an
    // unchecked group, each one by `dw_column` otherwise), 16 bytes from the block's
    // first channel: at most 15 bytes past the row's last pixel, inside the 16 bytes of
    // slack of x or of the zero-point row. Stores: `n` pixels of the output row from
    // ox, masked to the block's channels, inside `out`.
    unsafe {
        let row = DwRow {
            c,
            w: wd,
            zpv: _mm512_set1_epi8(zp_in as i8),
            interleave: _mm512_loadu_si512(il.as_ptr() as *const _),
            transpose: pixel_transpose(),
            zp16: _mm512_set1_epi16(r.out_zp as i16),
            lim: _mm512_set1_ps(4_194_304.0),
        };
        let (pt, pl) = (g.pads[0], g.pads[1]);
        for oy in 0..g.oh {
            let rows: [*const u8; 3] = std::array::from_fn(|i| {
                let iy = (oy * g.stride[0] + i).wrapping_sub(pt);
                if iy < h {
                    x.as_ptr().add(iy * wd * c)
                } else {
                    zrow
                }
            });
            let orow = out.as_mut_ptr().add(oy * g.ow * c);
            for (b, q) in blocks.iter().enumerate() {
                let c0 = b * CBLOCK;
                // Output pixel ox reads columns ox SX - pl + 0, 1, 2 (wrapping: left of the
                // input is past its end); the first 3 - SX of a group of four pixels come
                // from the group before. `p`: where the group's first column starts in
                // each row.
                let mut p = rows.map(|r| r.wrapping_add(c0).wrapping_sub(pl * c));
                let carry_p = |k: usize| p.map(|r| r.wrapping_add(k * c));
                let mut carry = [
                    dw_column::<true>(&row, carry_p(0), 0usize.wrapping_sub(pl)),
                    dw_column::<true>(&row, carry_p(1), 1usize.wrapping_sub(pl)),
                ];
                let mut ox = 0;
                // The previous group's rounded values (with its output and pixel count),
                // packed and stored after this group's products are issued: the pack
                // waits on the whole chain of a group (products, float requantisation),
                // and in program order right behind it, it held the next group's
                // independent work back (the depthwise convs of MobileNetV2 x1.0 at 224:
                // 4% faster, per-op profiles).
                let mut pending: Option<([__m512i; 4], *mut u8, usize)> = None;
                // Whether the group from ox reads only columns inside the input and has
                // four outputs.
                let interior = |ox: usize| {
                    let a = (ox * SX).wrapping_sub(pl);
                    a.wrapping_add(3 - SX) < wd && a.wrapping_add(3 * SX + 2) < wd && ox + 4 <= g.ow
                };
                while ox < g.ow {
                    if interior(ox) {
                        // The run of interior groups in a loop of its own: no checks, and
                        // the previous group's store always pending after the first.
                        let mut end = ox;
                        while interior(end + 4) {
                            end += 4;
                        }
                        let o = orow.add(ox * c + c0);
                        let (iq, next) = dw_group::<SX, false, CLAMP>(&row, q, 0, p, carry);
                        if let Some((iq, o, n)) = pending {
                            dw_store(&row, q, &iq, o, n);
                        }
                        let (mut prev, mut o_prev) = (iq, o);
                        carry = next;
                        p = p.map(|r| r.wrapping_add(4 * SX * c));
                        for _ in (ox..end).step_by(4) {
                            let (iq, next) = dw_group::<SX, false, CLAMP>(&row, q, 0, p, carry);
                            dw_store(&row, q, &prev, o_prev, 4);
                            (prev, o_prev) = (iq, o_prev.add(4 * c));
                            carry = next;
                            p = [p[0].wrapping_add(4 * SX * c), p[1].wrapping_add(4 * SX * c), p[2].wrapping_add(4 * SX * c)];
                        }
                        pending = Some((prev, o_prev, 4));
                        ox = end + 4;
                        continue;
                    }
                    let a = (ox * SX).wrapping_sub(pl);
                    let n = (g.ow - ox).min(4);
                    let o = orow.add(ox * c + c0);
                    let (iq, next) = dw_group::<SX, true, CLAMP>(&row, q, a, p, carry);
                    if let Some((iq, o, n)) = pending {
                        dw_store(&row, q, &iq, o, n);
                    }
                    pending = Some((iq, o, n));
                    carry = next;
                    p = p.map(|r| r.wrapping_add(4 * SX * c));
                    ox += 4;
                }
                if let Some((iq, o, n)) = pending {
                    dw_store(&row, q, &iq, o, n);
                }
            }
        }
    }
}

/// The V of the input column whose bytes (of the block) start at `p` in each row (see
/// [`conv_depthwise3x3`]); with `CHECKED`, a column `ix` outside the input is padding.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VBMI; unless `CHECKED` and `ix >= row.w`, each
/// `p[i]` must be readable for 16 bytes.
#[inline(always)]
unsafe fn dw_column<const CHECKED: bool>(row: &DwRow, p: [*const u8; 3], ix: usize) -> __m512i {
    if CHECKED && ix >= row.w {
        return row.zpv;
    }
    // SAFETY: 16-byte unaligned loads the caller vouches for; CPU features likewise.
    unsafe {
        let r01 = _mm512_inserti32x4::<1>(
            _mm512_castsi128_si512(_mm_loadu_si128(p[0] as *const __m128i)),
            _mm_loadu_si128(p[1] as *const __m128i),
        );
        let r2 = _mm512_castsi128_si512(_mm_loadu_si128(p[2] as *const __m128i));
        _mm512_permutex2var_epi8(r01, row.interleave, r2)
    }
}

/// One output pixel from the V of its three columns, as the rounded integer of its
/// requantisation before the output zero point and the clamp.
///
/// # Safety
/// The CPU must have AVX-512 F/VNNI.
#[inline(always)]
unsafe fn dw_pixel<const CLAMP: bool>(row: &DwRow, q: &DwBlock, v0: __m512i, v1: __m512i, v2: __m512i) -> __m512i {
    // SAFETY: register operations only; the CPU features are the caller's obligation.
    unsafe {
        let acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(q.init, v0, q.w[0]), v1, q.w[1]), v2, q.w[2]);
        let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), q.mult), q.bias);
        let v = if CLAMP { _mm512_min_ps(v, row.lim) } else { v };
        _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
}

/// Four pixels' rounded values of one block ([`dw_group`]) + z_y, clamped, stored: the
/// first `n` pixels at `o`, `row.c` bytes apart.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `o` must be writable for the block's masked
/// channels of `n` <= 4 pixels, `row.c` bytes apart.
#[inline(always)]
unsafe fn dw_store(row: &DwRow, q: &DwBlock, iq: &[__m512i; 4], o: *mut u8, n: usize) {
    // SAFETY: the stores the caller vouches for; CPU features likewise.
    unsafe {
        let bytes = _mm512_min_epu8(_mm512_max_epu8(pack_pixels4(iq, row.zp16), q.lo), q.hi);
        store_pixels4(bytes, row.transpose, q.mask, o, row.c, n);
    }
}

/// Four output pixels of one block whose first column is `a` (its bytes at `p` in each
/// row), `carry` holding the V of columns a and a + 1: their rounded values (see
/// [`dw_pixel`]; [`dw_store`] takes them out), and the V of the next group's first
/// columns.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI; the columns a + 3 - SX .. a + 3 SX + 2
/// must be readable as [`dw_column`] asks (unless `CHECKED`, all of them inside the
/// input rows).
#[inline(always)]
unsafe fn dw_group<const SX: usize, const CHECKED: bool, const CLAMP: bool>(
    row: &DwRow,
    q: &DwBlock,
    a: usize,
    p: [*const u8; 3],
    carry: [__m512i; 2],
) -> ([__m512i; 4], [__m512i; 2]) {
    // SAFETY: the columns read are those the caller vouches for; unaligned loads;
    // CPU features likewise.
    unsafe {
        let col = |k: usize| dw_column::<CHECKED>(row, p.map(|r| r.wrapping_add(k * row.c)), a.wrapping_add(k));
        let (iq, next) = if SX == 1 {
            let [v0, v1] = carry;
            let (v2, v3, v4, v5) = (col(2), col(3), col(4), col(5));
            let iq = [
                dw_pixel::<CLAMP>(row, q, v0, v1, v2),
                dw_pixel::<CLAMP>(row, q, v1, v2, v3),
                dw_pixel::<CLAMP>(row, q, v2, v3, v4),
                dw_pixel::<CLAMP>(row, q, v3, v4, v5),
            ];
            (iq, [v4, v5])
        } else {
            let v0 = carry[0];
            let (v1, v2, v3, v4) = (col(1), col(2), col(3), col(4));
            let (v5, v6, v7, v8) = (col(5), col(6), col(7), col(8));
            let iq = [
                dw_pixel::<CLAMP>(row, q, v0, v1, v2),
                dw_pixel::<CLAMP>(row, q, v2, v3, v4),
                dw_pixel::<CLAMP>(row, q, v4, v5, v6),
                dw_pixel::<CLAMP>(row, q, v6, v7, v8),
            ];
            (iq, [v8, v8])
        };
        (iq, next)
    }
}

// ---------------------------------------------------------------------------------
// Grouped convolutions with cin_g a multiple of 4

/// Grouped convolution fused with requantisation, cin_g a multiple of 4: per tap and
/// block of 16 output channels, one 64-byte load of the input pixel from the block's
/// first dword, one `vpermd` per quadruple of a group's inputs giving every channel
/// its group's four bytes, one `vpdpbusd`; zp x Σw subtracted once at the end (the
/// input zero-point padded into `scratch` first, so every tap is read).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn conv_grouped(x: &[u8], g: &ConvGeometry, zp_in: u8, w: &GroupQuads, r: &Requant, scratch: &mut [u8], out: &mut [u8]) {
    let (x, g) = padded_input(x, g, zp_in, scratch);
    let (cin, cout, taps, q4) = (g.cin, w.sums.len(), w.taps, w.cin_g / 4);
    let blocks = cout.div_ceil(CBLOCK);
    assert!(taps == g.kh * g.kw && w.d0.len() == blocks && w.idx.len() == blocks * q4);
    assert!(w.quads.len() >= blocks * taps * q4 * 64 && r.covers(cout) && out.len() >= g.oh * g.ow * cout);
    // Every block's dwords lie inside one pixel's cin bytes; the 64-byte load from the
    // last pixel's block needs 64 bytes past that pixel's first read dword.
    assert!(
        w.d0.iter().all(|&d| 4 * d < cin) && x.len() >= (g.h * g.w - 1) * cin + 4 * w.d0[blocks - 1] + 64,
        "input needs slack past its end"
    );
    // SAFETY: the loads read 64 bytes from a tap's pixel (inside the h x w input: the
    // output geometry keeps receptive fields inside it) plus 4 d0 < cin bytes: at most
    // the last pixel's + 4 d0[last] + 64, inside x (checked; d0 grows with the block).
    // Weights: block b's taps x q4 64-byte groups inside `quads` (checked); `idx` and
    // `d0` are indexed below their checked lengths. Stores: the block's masked
    // channels of one output pixel inside `out` (checked). The masked parameter loads
    // stay below cout, which `r` covers (checked). No alignment needed.
    unsafe {
        let params: Vec<BlockRequant> = (0..blocks).map(|b| block_requant(r, b * CBLOCK, (cout - b * CBLOCK).min(CBLOCK))).collect();
        let zsum: Vec<__m512i> = (0..blocks)
            .map(|b| {
                _mm512_mullo_epi32(
                    _mm512_maskz_loadu_epi32(params[b].mask, w.sums.as_ptr().add(b * CBLOCK)),
                    _mm512_set1_epi32(zp_in as i32),
                )
            })
            .collect();
        let idx: Vec<__m512i> = w.idx.iter().map(|i| _mm512_loadu_si512(i.as_ptr() as *const _)).collect();
        let tap_off: Vec<usize> = (0..taps).map(|t| ((t / g.kw) * g.w + t % g.kw) * cin).collect();
        let (sy, sx) = (g.stride[0], g.stride[1]);
        // Four neighbouring pixels of a row at a time, each with its own sum: one pixel's
        // taps are a chain of dependent `vpdpbusd` (five cycles each), which four chains
        // hide; the weights' loads serve the four. Then `vpermd` (one port) bounds it:
        // escnn's C4 export's 4x4 groups, 24 channels at 23x23, 20.2-20.8 -> 12.8-13.4 us
        // (per-op profiles, 3 alternations).
        let block = |px: &[*const u8], o: &[*mut u8]| {
            for (b, q) in params.iter().enumerate() {
                let wb = w.quads.as_ptr().add(b * taps * q4 * 64);
                let ib = &idx[b * q4..(b + 1) * q4];
                let d0 = 4 * w.d0[b];
                if let (Ok(px), Ok(o)) = (<&[*const u8; 4]>::try_from(px), <&[*mut u8; 4]>::try_from(o)) {
                    let acc = grouped_sums(px, d0, wb, ib, &tap_off);
                    for (a, &o) in acc.iter().zip(o) {
                        requantize_store(_mm512_sub_epi32(*a, zsum[b]), q, o.add(b * CBLOCK));
                    }
                } else {
                    for (&px, &o) in px.iter().zip(o) {
                        let [acc] = grouped_sums(&[px], d0, wb, ib, &tap_off);
                        requantize_store(_mm512_sub_epi32(acc, zsum[b]), q, o.add(b * CBLOCK));
                    }
                }
            }
        };
        for oy in 0..g.oh {
            let mut ox = 0;
            while ox < g.ow {
                let n = (g.ow - ox).min(4);
                let px: [*const u8; 4] = std::array::from_fn(|j| x.as_ptr().add(((oy * sy) * g.w + (ox + j.min(n - 1)) * sx) * cin));
                let o: [*mut u8; 4] = std::array::from_fn(|j| out.as_mut_ptr().add((oy * g.ow + ox + j.min(n - 1)) * cout));
                block(&px[..n], &o[..n]);
                ox += n;
            }
        }
    }
}

/// The int32 sums of one block of 16 output channels of [`conv_grouped`] at `N`
/// pixels, each pixel's from zero: per tap, one 64-byte load per pixel from its block's
/// first dword (`d0` bytes in) and, per quadruple of the group's inputs, one `vpermd`
/// and one `vpdpbusd` per pixel on the block's weights `wb` (taps x quadruples of 64
/// bytes) with permutes `ib`.
///
/// # Safety
/// AVX-512 F/VNNI; the reads of [`conv_grouped`]'s SAFETY comment, for each pixel.
#[inline(always)]
unsafe fn grouped_sums<const N: usize>(px: &[*const u8; N], d0: usize, wb: *const i8, ib: &[__m512i], tap_off: &[usize]) -> [__m512i; N] {
    // SAFETY: the caller's obligations.
    unsafe {
        let q4 = ib.len();
        let mut acc = [_mm512_setzero_si512(); N];
        for (t, &off) in tap_off.iter().enumerate() {
            let v: [__m512i; N] = std::array::from_fn(|j| _mm512_loadu_si512(px[j].add(d0 + off) as *const _));
            for (qi, &perm) in ib.iter().enumerate() {
                let wq = _mm512_loadu_si512(wb.add((t * q4 + qi) * 64) as *const _);
                for (a, v) in acc.iter_mut().zip(&v) {
                    *a = _mm512_dpbusd_epi32(*a, _mm512_permutexvar_epi32(perm, *v), wq);
                }
            }
        }
        acc
    }
}

/// The kernel rows of one step of [`conv3d_narrow`] (16 outputs along x): row (ci, a,
/// b) starts at `first + ci channel + a plane + b pw`.
struct NarrowRows<'a> {
    first: *const u8,
    cin: usize,
    kd: usize,
    kh: usize,
    plane: usize,
    channel: usize,
    pw: usize,
    mq: usize,
    windows: &'a [__m512i],
    quads: *const i32,
}

impl NarrowRows<'_> {
    /// The int32 sums of the step's 16 outputs for output channels 0..CO (the rest 0).
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI/VBMI; the reads of [`conv3d_narrow`]'s SAFETY comment, with CO
    /// its channel count.
    #[inline(always)]
    unsafe fn sums<const CO: usize>(&self) -> [__m512i; super::narrow3::NARROW_MAX_COUT] {
        // SAFETY: the caller's obligations.
        unsafe {
            let mut accs = [_mm512_setzero_si512(); CO];
            for ci in 0..self.cin {
                for a in 0..self.kd {
                    for b in 0..self.kh {
                        let xv = _mm512_loadu_si512(self.first.add(ci * self.channel + a * self.plane + b * self.pw) as *const _);
                        let wq = self.quads.add(((ci * self.kd + a) * self.kh + b) * self.mq * CO);
                        for (m, win) in self.windows.iter().enumerate() {
                            let u = _mm512_permutexvar_epi8(*win, xv);
                            for (co, acc) in accs.iter_mut().enumerate() {
                                *acc = _mm512_dpbusd_epi32(*acc, u, _mm512_set1_epi32(*wq.add(m * CO + co)));
                            }
                        }
                    }
                }
            }
            let mut all = [_mm512_setzero_si512(); super::narrow3::NARROW_MAX_COUT];
            all[..CO].copy_from_slice(&accs);
            all
        }
    }
}

/// [`super::Narrow3`]'s kernel: outputs `voxels` (in order, from the start of `out`
/// or `acc`), 16 neighbouring outputs along x at a time, one accumulator per output
/// channel. Lane p of the register fed to `vpdpbusd` for taps 4m.. of a kernel row
/// holds bytes sx p + 4m + (0..4) of the row's 64-byte load (one `vpermb`); the
/// requantisation is [`requantize_store`]'s float sequence with one channel's
/// parameters in every lane, and the bytes are interleaved into channels-last order
/// by two `vpermt2b`. Sums of lanes past the row's end are computed and dropped.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI; `planar` must hold the padded planes
/// and 64 bytes past them. (The slices' lengths are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn conv3d_narrow(
    planar: &[u8],
    n: &super::Narrow3,
    voxels: std::ops::Range<usize>,
    requant: Option<(&Requant, &mut [u8])>,
    acc: &mut [i32],
) {
    let (g, cout) = (&n.g, n.cout);
    let [kd, kh, kw] = g.kernel;
    let [pd, ph, pw] = n.padded;
    let [_, oh, ow] = g.output;
    let [sz, sy, sx] = g.stride;
    let mq = kw.div_ceil(4);
    let count = voxels.len();
    assert!((1..=super::narrow3::NARROW_MAX_COUT).contains(&cout) && sx * 15 + mq * 4 <= 64);
    assert!(planar.len() >= n.planar_len() + 64 && n.quads.len() >= g.cin * kd * kh * mq * cout);
    assert!(voxels.end <= g.output.iter().product::<usize>() && acc.len() >= count * cout);
    if let Some((r, out)) = &requant {
        assert!(out.len() >= count * cout && r.covers(cout));
    }
    // SAFETY: the index tables are local arrays. Each kernel row's load reads 64 bytes
    // from row + ox0 sx, row + ox0 sx < planar_len (the row lies inside the padded
    // planes and ox0 < ow), so inside planar with its 64 bytes of slack (checked).
    // Weights: quads index < cin kd kh mq cout (checked). Stores: masked to the n cout
    // bytes of the outputs in range, inside out / acc (checked).
    unsafe {
        let windows: Vec<__m512i> = (0..mq)
            .map(|m| {
                let idx: [u8; 64] = std::array::from_fn(|i| (sx * (i / 4) + 4 * m + i % 4) as u8);
                _mm512_loadu_si512(idx.as_ptr() as *const _)
            })
            .collect();
        // Output byte j (pixel j / cout, channel j % cout) of the two 64-byte halves:
        // byte p of channel co is byte 16 co + p of [A | B] (A: channels 0-3, B: 4-7).
        let interleave: [__m512i; 2] = std::array::from_fn(|half| {
            let idx: [u8; 64] = std::array::from_fn(|i| {
                let j = half * 64 + i;
                let (p, co) = (j / cout, j % cout);
                if p < 16 {
                    (16 * co + p) as u8
                } else {
                    0
                }
            });
            _mm512_loadu_si512(idx.as_ptr() as *const _)
        });
        let params: Vec<[__m512; 6]> = match &requant {
            Some((r, _)) => (0..cout)
                .map(|co| {
                    [
                        _mm512_set1_ps(r.mult[co]),
                        _mm512_set1_ps(r.bias[co]),
                        _mm512_set1_ps(r.lo[co] as f32),
                        _mm512_set1_ps(r.hi[co] as f32),
                        _mm512_castsi512_ps(_mm512_set1_epi32(r.offset[co])),
                        _mm512_set1_ps(r.out_zp),
                    ]
                })
                .collect(),
            None => vec![],
        };
        let magic = _mm512_set1_ps(12_582_912.0);
        let (lim_lo, lim_hi) = (_mm512_set1_ps(-4_194_304.0), _mm512_set1_ps(4_194_304.0));
        let (out_ptr, acc_ptr) = (requant.map(|(_, o)| o.as_mut_ptr()), acc.as_mut_ptr());
        let qp = n.quads.as_ptr();
        let mut v = voxels.start;
        while v < voxels.end {
            let (oz, oy, ox0) = (v / (oh * ow), v / ow % oh, v % ow);
            let np = (ow - ox0).min(16).min(voxels.end - v);
            // The first row of the window's planes; rows follow at fixed strides.
            let first = planar.as_ptr().add(((oz * sz) * ph + oy * sy) * pw + ox0 * sx);
            let rows =
                NarrowRows { first, cin: g.cin, kd, kh, plane: ph * pw, channel: pd * ph * pw, pw, mq, windows: &windows, quads: qp };
            // The sums in registers: with the channel count a constant, the compiler
            // keeps one accumulator per channel in a register instead of an indexed
            // array on the stack (a store and a reload in every chain step).
            let accs = match cout {
                1 => rows.sums::<1>(),
                2 => rows.sums::<2>(),
                3 => rows.sums::<3>(),
                4 => rows.sums::<4>(),
                5 => rows.sums::<5>(),
                6 => rows.sums::<6>(),
                7 => rows.sums::<7>(),
                _ => rows.sums::<8>(),
            };
            let at = (v - voxels.start) * cout;
            match out_ptr {
                Some(o) => {
                    let mut bytes = [_mm_setzero_si128(); 8];
                    for co in 0..cout {
                        let [mult, bias, lo, hi, offset, zp] = params[co];
                        let x = _mm512_sub_epi32(accs[co], _mm512_castps_si512(offset));
                        let f = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(x), mult), bias);
                        let f = _mm512_min_ps(_mm512_max_ps(f, lim_lo), lim_hi);
                        let q = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(f, magic), magic), zp);
                        bytes[co] = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi)));
                    }
                    let join = |p: &[__m128i]| {
                        let lo = _mm256_inserti128_si256(_mm256_castsi128_si256(p[0]), p[1], 1);
                        let hi = _mm256_inserti128_si256(_mm256_castsi128_si256(p[2]), p[3], 1);
                        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
                    };
                    let (a4, b4) = (join(&bytes[..4]), join(&bytes[4..]));
                    let total = np * cout;
                    let first = total.min(64);
                    let mask = |k: usize| if k >= 64 { !0u64 } else { (1u64 << k) - 1 };
                    _mm512_mask_storeu_epi8(o.add(at) as *mut i8, mask(first), _mm512_permutex2var_epi8(a4, interleave[0], b4));
                    if total > 64 {
                        let second = _mm512_permutex2var_epi8(a4, interleave[1], b4);
                        _mm512_mask_storeu_epi8(o.add(at + 64) as *mut i8, mask(total - 64), second);
                    }
                }
                None => {
                    let mut lanes = [0i32; 16];
                    for (co, acc) in accs.iter().enumerate().take(cout) {
                        _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, *acc);
                        for (p, &s) in lanes.iter().enumerate().take(np) {
                            *acc_ptr.add(at + p * cout + co) = s;
                        }
                    }
                }
            }
            v += np;
        }
    }
}

// ---------------------------------------------------------------------------------
// Gathered rows of short-row 2-D convs

/// The byte permute of [`gather_row_pairs`] for `kh` <= 3 kernel rows of `run` bytes
/// whose outputs step `step` bytes (run + step <= 16, kh run <= 32): byte t of a pair's
/// 64 bytes (output t / 32, byte b = t % 32 of its row) takes byte b % run of kernel
/// row i = b / run, loaded into lane i, plus step for the second output; the mask
/// marks the bytes below kh run, the others are zeroed. `None` where the shape does
/// not suit.
pub fn row_pair_table(kh: usize, run: usize, step: usize) -> Option<([u8; 64], u64)> {
    if kh == 0 || kh > 3 || run == 0 || run + step > 16 || kh * run > 32 {
        return None;
    }
    let (mut idx, mut used) = ([0u8; 64], 0u64);
    for q in 0..2 {
        for i in 0..kh {
            for b in 0..run {
                let t = 32 * q + i * run + b;
                idx[t] = (16 * i + q * step + b) as u8;
                used |= 1 << t;
            }
        }
    }
    Some((idx, used))
}

/// The gathered rows of the first `n` outputs of a run ([`super::Rows2::gather`]), two
/// at a time: output j's row is, for each kernel row i, `run` bytes at `j step` of
/// `rows[i]`, one after another, then zeros to 32 bytes, as `table`
/// ([`row_pair_table`] of rows.len(), run and step) lays them out. One 16-byte load
/// from each kernel row holds both outputs' runs (broadcast into its lane of one
/// register), one byte permute lays them out and zeroes the rest, one 64-byte store writes the pair (the 32 bytes of an
/// odd last output, a masked one).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VBMI. (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
pub unsafe fn gather_row_pairs(rows: &[&[u8]], step: usize, (table, used): &([u8; 64], u64), n: usize, out: &mut [u8]) {
    let kh = rows.len();
    assert!((1..=3).contains(&kh) && out.len() >= 32 * n);
    // Output j loads 16 bytes from j step of each row.
    assert!(n == 0 || rows.iter().all(|r| r.len() >= (n - 1) * step + 16), "rows hold every output's load");
    // Kernel rows past kh load row kh - 1 again (their bytes are never picked).
    let mut p: [*const u8; 3] = std::array::from_fn(|i| rows[i.min(kh - 1)].as_ptr());
    // SAFETY: the table is a 64-byte array. Output j < n loads 16 bytes from j step of
    // each row (p[i] after j steps), inside it (checked). A pair from output j writes
    // out[32 j..32 j + 64] with j + 2 <= n, the odd last output the 32 bytes from
    // 32 j, inside out (32 n, checked). No alignment needed. (A loop written out, not
    // a closure per pair, which was not inlined into this target-feature function.)
    unsafe {
        let perm = _mm512_loadu_si512(table.as_ptr() as *const _);
        let mut op = out.as_mut_ptr();
        let mut j = 0;
        while j < n {
            // Row i in lane i: a broadcast load, then two merging ones (no shuffle).
            let r0 = _mm512_broadcast_i32x4(_mm_loadu_si128(p[0] as *const __m128i));
            let r01 = _mm512_mask_broadcast_i32x4(r0, 0x00f0, _mm_loadu_si128(p[1] as *const __m128i));
            let r012 = _mm512_mask_broadcast_i32x4(r01, 0x0f00, _mm_loadu_si128(p[2] as *const __m128i));
            let v = _mm512_maskz_permutexvar_epi8(*used, perm, r012);
            if j + 1 < n {
                _mm512_storeu_si512(op as *mut _, v);
            } else {
                _mm512_mask_storeu_epi8(op as *mut i8, u32::MAX as u64, v);
            }
            op = op.wrapping_add(64);
            p = [p[0].wrapping_add(2 * step), p[1].wrapping_add(2 * step), p[2].wrapping_add(2 * step)];
            j += 2;
        }
    }
}
