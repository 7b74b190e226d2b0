//! AVX2 convolutions fused with their requantisation, for x86-64 CPUs without AVX-512
//! VNNI (AMD Zen 2 and 3, Intel before Ice Lake): the int32 sums of a block of 16
//! output channels stay in registers and leave as bytes.
//!
//! - [`conv_dense`]: dense convs on rows of inputs (the input itself for pointwise,
//!   the scalar im2row rows otherwise), tiles of 6 pixels x 16 channels: each pair of
//!   a pixel's inputs, widened to int16 once per tile, is broadcast as one int32 and
//!   multiplied with 16 channels' weight pairs by `vpmaddwd` (12 accumulators); a
//!   last block of at most 8 channels as a half block, one vector per pixel
//!   ([`half_tail`]).
//! - [`conv_depthwise`]: depthwise convs of any kernel, stride and padding, 16
//!   channels per step, taps in pairs: the two taps' bytes widened and interleaved
//!   (`vpunpck*wd`) meet their weight pairs in one `vpmaddwd`; padding reads a row of
//!   zero points, so the zero-point correction zp Σw is one constant per channel.
//!
//! `vpmaddwd` on u8 and s8 widened to int16 is exact (`vpmaddubsw`, twice as dense,
//! saturates its int16 pair sums for u8 x s8, which the reference does not). Both
//! kernels keep a block's channels in the "LH" order of `vpunpck*wd`: the first
//! vector holds channels 0-3 and 8-11, the second 4-7 and 12-15, so that one
//! `vpackssdw` of the two gives the 16 channels in order (the dense weights are packed
//! in that order, [`LH`]). The requantisation is the reference's float operations
//! (see [`requantize_pair`]); every result is the scalar reference's bytes.
//!
//! Every function here is `unsafe` for one reason beyond the slices' bounds: it needs
//! AVX2, which the dispatcher checked ([`super::Isa::checked`]).

use std::arch::x86_64::*;
use std::cell::Cell;

use super::avx2::gcd;
use super::kept::Kept;
use super::{ConvGeometry, PackedWeights, Requant, CBLOCK};

/// The channel of each lane of a block's two accumulators (lanes 0-7: the first,
/// 8-15: the second): the order `vpunpcklwd` / `vpunpckhwd` give 16 channels.
pub(super) const LH: [usize; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// Pixels per dense tile: 12 accumulators, two weight vectors and a broadcast fill
/// 15 of the 16 ymm registers.
pub(super) const MR: usize = 6;

/// Bytes of weight pairs beyond which a dense conv goes block by block over all its
/// pixels, widened at once, rather than tile by tile over all blocks (L1 is 32 KiB on
/// the AVX2 CPUs seen), where the widened pixels take at most [`WIDENED_WHOLE`] bytes.
const WEIGHTS_BY_TILE: usize = 32 << 10;
const WIDENED_WHOLE: usize = 192 << 10;

/// One block of 16 output channels' requantisation parameters, in [`LH`] order
/// (`lo` in channel order: it applies to the packed bytes).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct BlockParams {
    /// Where the sums start: -offset (- zp Σw for depthwise), so that they end as
    /// acc - offset, the reference's first step (wrapping, as its subtraction).
    start: [i32; 16],
    mult: [f32; 16],
    bias: [f32; 16],
    /// hi - z_y as a float: the upper clamp, before rounding (see [`requantize_pair`]).
    top: [f32; 16],
    /// lo, for both halves of a two-pixel vector (channel order).
    lo: [u8; 32],
}

/// Where a fused kernel writes: requantised bytes, or the raw int32 sums.
pub enum Out<'a> {
    U8(&'a Requant, &'a mut [u8]),
    I32(&'a mut [i32]),
}

thread_local! {
    /// Vectors the kernels fill per call (block parameters where a call's differ from
    /// those kept with its weights; widened inputs, or the depthwise kernel's zero-point
    /// pixel), kept by each thread between calls: a conv call must not allocate (a part
    /// of a MobileNetV2 layer is a few microseconds).
    static KEPT: Cell<(Vec<BlockParams>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// A layer's [`BlockParams`], kept with its weights ([`Kept`]).
pub(super) type KeptParams = Kept<Vec<BlockParams>>;

/// The parameters of channels 0..cout in blocks of 16 ([`LH`] order), the sums of
/// channel c starting at -(offset[c] + extra(c)); lanes past cout are zero. With
/// `half`, a last block of at most 8 channels ([`half_tail`]) has them in both halves
/// in channel order (lanes l and 8 + l: channel l), as [`half_block_tile`] reads them.
fn block_params(r: &Requant, cout: usize, half: bool, extra: impl Fn(usize) -> i32, into: &mut Vec<BlockParams>) {
    into.clear();
    let zp = r.out_zp as i32;
    let blocks = cout.div_ceil(16);
    for b in 0..blocks {
        let mut p = BlockParams { start: [0; 16], mult: [0.0; 16], bias: [0.0; 16], top: [0.0; 16], lo: [0; 32] };
        let half_block = half && half_tail(cout) && b + 1 == blocks;
        for (lane, &lh) in LH.iter().enumerate() {
            let d = if half_block { lane % 8 } else { lh };
            let c = b * 16 + d;
            if c < cout {
                p.start[lane] = 0i32.wrapping_sub(r.offset[c]).wrapping_sub(extra(c));
                p.mult[lane] = r.mult[c];
                p.bias[lane] = r.bias[c];
                // hi and z_y are integers in 0..=255: hi - z_y is exact.
                p.top[lane] = (r.hi[c] as i32 - zp) as f32;
            }
        }
        for d in 0..16 {
            let c = b * 16 + if half_block { d % 8 } else { d };
            let lo = if c < cout { r.lo[c] } else { 0 };
            (p.lo[d], p.lo[16 + d]) = (lo, lo);
        }
        into.push(p);
    }
}

/// Dense weights `rows` ([cout][k]) in the layout of [`conv_dense`]: blocks of 16
/// output channels in [`LH`] order, k in pairs (zero padded): [cout/16][k/2][16][2]
/// as i16; where [`narrow_applies`], that of [`conv_dense_narrow`]: each channel's
/// pairs in a row of whole vectors (zero padded), [cout][8 ceil(k2 / 8)][2].
pub fn pack_pairs(rows: &[i8], cout: usize, k: usize) -> Vec<i16> {
    let k2 = k.div_ceil(2);
    if narrow_applies(cout, k) {
        let k2p = k2.div_ceil(8) * 8;
        let mut pairs = vec![0i16; cout * k2p * 2];
        for c in 0..cout {
            for kk in 0..k {
                pairs[c * k2p * 2 + kk] = rows[c * k + kk] as i16;
            }
        }
        return pairs;
    }
    let blocks = cout.div_ceil(CBLOCK);
    let mut pairs = vec![0i16; blocks * k2 * CBLOCK * 2];
    for b in 0..blocks {
        if half_tail(cout) && b + 1 == blocks {
            // A half block: [k2][8][2] in channel order, at the block's start.
            for d in 0..cout - b * CBLOCK {
                let c = b * CBLOCK + d;
                for kk in 0..k {
                    pairs[((b * k2 * 2 + kk / 2) * 8 + d) * 2 + kk % 2] = rows[c * k + kk] as i16;
                }
            }
            continue;
        }
        for (lane, &d) in LH.iter().enumerate() {
            let c = b * CBLOCK + d;
            if c >= cout {
                continue;
            }
            for kk in 0..k {
                pairs[((b * k2 + kk / 2) * CBLOCK + lane) * 2 + kk % 2] = rows[c * k + kk] as i16;
            }
        }
    }
    pairs
}

/// Whether [`conv_dense`]'s last block of output channels holds at most 8 of them
/// (cout = 8, 24, 40, ... and fewer than 8 past a multiple of 16): it then runs as a
/// half block, one vector of 8 channels per pixel ([`half_block_tile`]), instead of
/// two vectors of which one is zero weights (MobileNetV2's 96 -> 24 and 144 -> 24
/// projections: 16 + 8 channels). On a Zen 3 core (`conv_speed`, best of 4
/// alternations): 96 -> 24 at 56x56 163 -> 137 us, 144 -> 24 233 -> 195, 48 -> 8 at
/// 24x24 10.0 -> 6.5, 144 -> 40 at 12x12 15.5 -> 13.9. ([`narrow_applies`] weighs
/// fewer outputs against this half block.)
pub(super) fn half_tail(cout: usize) -> bool {
    (1..=8).contains(&(cout % CBLOCK))
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y, lo, hi) of two pixels'
/// sums of one block (each in [`LH`] order, already acc - offset), as 32 bytes: pixel
/// p's 16 channels in the low half, q's in the high one.
///
/// The reference's bits: v = (acc - offset) m + b as it computes it (a product, then a
/// sum); min(hi - z_y, v), rounded to nearest even by the conversion (the default
/// MXCSR mode, which Rust never changes); then packed to int16 with saturation, + z_y
/// saturating, packed to u8 with saturation, max(lo). The upper clamp may come
/// before the rounding because hi - z_y is an integer, and must: a float beyond 2^31
/// converts to i32::MIN. Below, that i32::MIN (and anything under 0 after + z_y)
/// ends at lo, as the reference's clamp does; the steps are monotone and exact on
/// [0, 255].
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn requantize_pair(p: [__m256i; 2], q: [__m256i; 2], prm: &BlockParams, zp16: __m256i) -> __m256i {
    // SAFETY: register operations and loads from `prm` (aligned, 32-byte fields).
    unsafe {
        let m = [_mm256_load_ps(prm.mult.as_ptr()), _mm256_load_ps(prm.mult.as_ptr().add(8))];
        let b = [_mm256_load_ps(prm.bias.as_ptr()), _mm256_load_ps(prm.bias.as_ptr().add(8))];
        let t = [_mm256_load_ps(prm.top.as_ptr()), _mm256_load_ps(prm.top.as_ptr().add(8))];
        let r = |a: __m256i, h: usize| requantize8(a, m[h], b[h], t[h]);
        // Channels 0-7 | 8-15 as int16, + z_y.
        let wp = _mm256_adds_epi16(_mm256_packs_epi32(r(p[0], 0), r(p[1], 1)), zp16);
        let wq = _mm256_adds_epi16(_mm256_packs_epi32(r(q[0], 0), r(q[1], 1)), zp16);
        // [p 0-7, q 0-7 | p 8-15, q 8-15] -> [p 0-15 | q 0-15].
        let bytes = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(wp, wq));
        _mm256_max_epu8(bytes, _mm256_load_si256(prm.lo.as_ptr() as *const __m256i))
    }
}

/// round_half_even(min(top, acc m + b)) of 8 sums (already acc - offset), as int32: the
/// reference's float operations in its order (a product, then a sum, never fused; see
/// [`requantize_pair`] for why the clamp comes before the rounding conversion).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn requantize8(acc: __m256i, m: __m256, b: __m256, top: __m256) -> __m256i {
    // SAFETY: register operations.
    unsafe { _mm256_cvtps_epi32(_mm256_min_ps(top, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), m), b))) }
}

/// The 16 bytes of `v`'s half `h` stored at `dst`, or its first `n` of them.
///
/// # Safety
/// AVX2; `n.min(16)` bytes writable at `dst`.
#[inline(always)]
unsafe fn store_half(v: __m256i, h: usize, dst: *mut u8, n: usize) {
    // SAFETY: the caller's bounds; unaligned stores.
    unsafe {
        let x = if h == 0 { _mm256_castsi256_si128(v) } else { _mm256_extracti128_si256::<1>(v) };
        if n >= 16 {
            _mm_storeu_si128(dst as *mut __m128i, x);
        } else {
            // Fixed-size stores, not a copy of n bytes (a call to memcpy per pixel:
            // 8 -> 8 pointwise at 48x48 took 21 us on a Zen 3 core, against 8 now).
            let mut i = 0;
            if n >= 8 {
                _mm_storel_epi64(dst as *mut __m128i, x);
                i = 8;
            }
            let mut tmp = [0u8; 16];
            _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, x);
            while i < n {
                *dst.add(i) = tmp[i];
                i += 1;
            }
        }
    }
}

/// A block's int32 sums (in [`LH`] order) stored in channel order at `dst`, its
/// first `n` channels.
///
/// # Safety
/// AVX2; `n.min(16)` int32 writable at `dst`.
#[inline(always)]
unsafe fn store_sums(a: [__m256i; 2], dst: *mut i32, n: usize) {
    // SAFETY: the caller's bounds; unaligned stores.
    unsafe {
        let lo = _mm256_permute2x128_si256::<0x20>(a[0], a[1]);
        let hi = _mm256_permute2x128_si256::<0x31>(a[0], a[1]);
        if n >= 16 {
            _mm256_storeu_si256(dst as *mut __m256i, lo);
            _mm256_storeu_si256(dst.add(8) as *mut __m256i, hi);
        } else {
            // As in `store_half`: fixed-size stores, no call to memcpy.
            let mut i = 0;
            if n >= 8 {
                _mm256_storeu_si256(dst as *mut __m256i, lo);
                i = 8;
            }
            let mut tmp = [0i32; 16];
            _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, hi);
            while i < n {
                *dst.add(i) = tmp[i];
                i += 1;
            }
        }
    }
}

/// Rows of `k` u8 inputs widened to pairs (lo | hi << 16), `k2` per row, written for
/// rows 0..n of `x` into `xp` (`tile` rows and 8 values of slack; the rows from n on
/// zero). 16 inputs per step; a row's last step reads on into the next row (or `x`'s
/// slack) where `x` has the bytes, and writes on into the next row's values, which
/// that row then overwrites: the pair values past k meet zero weights (an odd k's last
/// hi included), so what they hold does not matter. Rows are widened in order.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn widen_rows(x: &[u8], k: usize, n: usize, tile: usize, xp: &mut [u32]) {
    let k2 = k.div_ceil(2);
    assert!(x.len() >= n * k && xp.len() >= tile * k2 + 8 && n <= tile);
    for q in 0..tile {
        if q >= n {
            xp[q * k2..(q + 1) * k2].fill(0);
            continue;
        }
        let mut i = 0;
        while i < k {
            let from = q * k + i;
            if from + 16 <= x.len() {
                // SAFETY: 16 bytes of x from `from` (checked); 8 values of xp from
                // q k2 + i / 2 <= q k2 + k2 - 1, inside tile k2 + 8.
                unsafe {
                    let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.as_ptr().add(from) as *const __m128i));
                    _mm256_storeu_si256(xp.as_mut_ptr().add(q * k2 + i / 2) as *mut __m256i, v);
                }
            } else {
                // The end of x: the rest of the row one pair at a time.
                for j in i / 2..k2 {
                    let lo = x[q * k + 2 * j] as u32;
                    let hi = if 2 * j + 1 < k { x[q * k + 2 * j + 1] as u32 } else { 0 };
                    xp[q * k2 + j] = lo | (hi << 16);
                }
                break;
            }
            i += 16;
        }
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for `pixels` rows of `k` = `w.k` inputs, requantised
/// into `Out::U8` (offset included) or stored as the raw sums.
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked here.)
#[target_feature(enable = "avx2")]
pub unsafe fn conv_dense(x: &[u8], pixels: usize, w: &PackedWeights, out: Out) {
    let (k, cout) = (w.k, w.cout);
    if narrow_applies(cout, k) {
        // SAFETY: AVX2, passed on; the kernel checks its slices.
        return unsafe { conv_dense_narrow(x, pixels, w, out) };
    }
    let k2 = k.div_ceil(2);
    let blocks = cout.div_ceil(CBLOCK);
    assert!(w.pairs.len() >= blocks * k2 * CBLOCK * 2, "weights packed without the AVX2 pairs");
    assert!(x.len() >= pixels * k);
    let (mut made, mut xp) = KEPT.take();
    let (out_u8, out_i32, zp16, params) = match out {
        Out::U8(r, o) => {
            assert!(o.len() >= pixels * cout && r.covers(cout));
            let params = w.avx2_params.get(r, 0, |v| block_params(r, cout, true, |_| 0, v), &mut made);
            (o.as_mut_ptr(), std::ptr::null_mut(), _mm256_set1_epi16(r.out_zp as i16), &params[..])
        }
        Out::I32(a) => {
            assert!(a.len() >= pixels * cout);
            (std::ptr::null_mut(), a.as_mut_ptr(), _mm256_setzero_si256(), &[][..])
        }
    };
    let requant = !out_u8.is_null();
    let half = half_tail(cout);
    // One tile of pixels p..p + np (widened at `xs`) times block b's weights.
    let tile = |xs: *const u32, p: usize, np: usize, b: usize| {
        let nc = (cout - b * CBLOCK).min(CBLOCK);
        if half && b + 1 == blocks {
            let at = p * cout + b * CBLOCK;
            // SAFETY: as below: the half block's k2 x 16 i16 lie at the block's start
            // inside `pairs` (checked); `params[b]` exists when requantising; pixels
            // p + q < pixels, channels b 16 + (< nc <= 8) <= cout.
            return unsafe {
                let wb = w.pairs.as_ptr().add(b * k2 * CBLOCK * 2);
                let to = if requant { HalfOut::U8(out_u8.add(at), params.get_unchecked(b), zp16) } else { HalfOut::I32(out_i32.add(at)) };
                half_block_tile(xs, k2, np, wb, (to, cout, nc))
            };
        }
        // SAFETY: block b's weights are k2 x 32 i16 inside `pairs` (checked); the loads
        // at kk < k2 stay in them; xs holds MR x k2 values (the callers'). Parameters:
        // `params` has `blocks` entries when requantising. Stores: pixel p + q < pixels
        // (q < np), channels b 16 + (< nc) <= cout, inside `out` (checked).
        unsafe {
            let wb = w.pairs.as_ptr().add(b * k2 * CBLOCK * 2);
            let start = if requant {
                let s = params.get_unchecked(b).start.as_ptr();
                [_mm256_load_si256(s as *const __m256i), _mm256_load_si256(s.add(8) as *const __m256i)]
            } else {
                [_mm256_setzero_si256(); 2]
            };
            let mut a = [[start[0], start[1]]; MR];
            for kk in 0..k2 {
                let w0 = _mm256_loadu_si256(wb.add(kk * 32) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(kk * 32 + 16) as *const __m256i);
                for (q, aq) in a.iter_mut().enumerate() {
                    let xb = _mm256_set1_epi32(*xs.add(q * k2 + kk) as i32);
                    aq[0] = _mm256_add_epi32(aq[0], _mm256_madd_epi16(xb, w0));
                    aq[1] = _mm256_add_epi32(aq[1], _mm256_madd_epi16(xb, w1));
                }
            }
            if requant {
                let prm = params.get_unchecked(b);
                for q in (0..np).step_by(2) {
                    let bytes = requantize_pair(a[q], a[q + 1], prm, zp16);
                    store_half(bytes, 0, out_u8.add((p + q) * cout + b * CBLOCK), nc);
                    if q + 1 < np {
                        store_half(bytes, 1, out_u8.add((p + q + 1) * cout + b * CBLOCK), nc);
                    }
                }
            } else {
                for (q, aq) in a.iter().enumerate().take(np) {
                    store_sums(*aq, out_i32.add((p + q) * cout + b * CBLOCK), nc);
                }
            }
        }
    };
    let padded = pixels.div_ceil(MR) * MR;
    xp.clear();
    if blocks * k2 * CBLOCK * 4 > WEIGHTS_BY_TILE && padded * k2 * 4 <= WIDENED_WHOLE && pixels > MR {
        // Large weights, few pixels (a MobileNet's 7x7 layers): every pixel widened
        // once, then block by block, so that each block's weights are read from memory
        // once and stay in L1 across the tiles (tile by tile, every tile read all of
        // them: 320 -> 1280 at 7x7, 820 KB of pairs, nine times).
        xp.resize(padded * k2 + 8, 0);
        // SAFETY: AVX2; rows 0..pixels of x (checked above); xp holds padded k2 + 8.
        unsafe { widen_rows(x, k, pixels, padded, &mut xp) };
        for b in 0..blocks {
            for p in (0..pixels).step_by(MR) {
                // SAFETY: tile p's MR rows inside the padded k2 values.
                tile(unsafe { xp.as_ptr().add(p * k2) }, p, (pixels - p).min(MR), b);
            }
        }
    } else {
        xp.resize(MR * k2 + 8, 0);
        let mut p = 0;
        while p < pixels {
            let np = (pixels - p).min(MR);
            // SAFETY: AVX2; rows p..p + np of x (checked above); xp holds MR k2.
            unsafe { widen_rows(&x[p * k..], k, np, MR, &mut xp) };
            for b in 0..blocks {
                tile(xp.as_ptr(), p, np, b);
            }
            p += np;
        }
    }
    KEPT.set((made, xp));
}

/// Where [`half_block_tile`] writes pixel 0's channels of its block (pixel q's are
/// q cout further): bytes with the block's parameters, or int32 sums.
enum HalfOut<'a> {
    U8(*mut u8, &'a BlockParams, __m256i),
    I32(*mut i32),
}

/// [`conv_dense`]'s tile of `np` <= [`MR`] pixels (widened at `xs`, rows `k2` apart)
/// times a half block's weights `wb` ([k2][8][2], channel order): one vector of 8
/// channels per pixel. Requantised two pixels at a time: both pixels' 8 channels
/// packed into one vector ([p 0-3, q 0-3 | p 4-7, q 4-7] as int16), bytes laid out as
/// [p 0-7, q 0-7] by one dword permute; the parameters are the block's in both halves
/// ([`block_params`] with `half`).
///
/// # Safety
/// AVX2; `xs` holds MR rows of k2 values; `wb` k2 x 16 i16; `nc` (<= 8) bytes or
/// int32 writable at pixel q's channels (q cout past the pointer) for q < np.
#[inline(always)]
unsafe fn half_block_tile(xs: *const u32, k2: usize, np: usize, wb: *const i16, (to, cout, nc): (HalfOut, usize, usize)) {
    // SAFETY: the caller's bounds; the parameters' fields are aligned 32-byte arrays.
    unsafe {
        let start = match &to {
            HalfOut::U8(_, prm, _) => _mm256_load_si256(prm.start.as_ptr() as *const __m256i),
            HalfOut::I32(_) => _mm256_setzero_si256(),
        };
        let mut a = [start; MR];
        for kk in 0..k2 {
            let wv = _mm256_loadu_si256(wb.add(kk * 16) as *const __m256i);
            for (q, aq) in a.iter_mut().enumerate() {
                *aq = _mm256_add_epi32(*aq, _mm256_madd_epi16(_mm256_set1_epi32(*xs.add(q * k2 + kk) as i32), wv));
            }
        }
        match to {
            HalfOut::U8(o, prm, zp16) => {
                let (m, b, t) = (_mm256_load_ps(prm.mult.as_ptr()), _mm256_load_ps(prm.bias.as_ptr()), _mm256_load_ps(prm.top.as_ptr()));
                let lo = _mm_load_si128(prm.lo.as_ptr() as *const __m128i);
                let r = |v: __m256i| requantize8(v, m, b, t);
                let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                for q in (0..np).step_by(2) {
                    let w16 = _mm256_adds_epi16(_mm256_packs_epi32(r(a[q]), r(a[q + 1])), zp16);
                    let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w16, w16), order);
                    let bytes = _mm_max_epu8(_mm256_castsi256_si128(bytes), lo);
                    store_eight(bytes, 0, o.add(q * cout), nc);
                    if q + 1 < np {
                        store_eight(bytes, 1, o.add((q + 1) * cout), nc);
                    }
                }
            }
            HalfOut::I32(o) => {
                for (q, aq) in a.iter().enumerate().take(np) {
                    let dst = o.add(q * cout);
                    if nc == 8 {
                        _mm256_storeu_si256(dst as *mut __m256i, *aq);
                    } else {
                        let mut tmp = [0i32; 8];
                        _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, *aq);
                        for (i, &v) in tmp.iter().enumerate().take(nc) {
                            *dst.add(i) = v;
                        }
                    }
                }
            }
        }
    }
}

/// The 8 bytes of `v`'s half `h` stored at `dst`, or its first `n` of them.
///
/// # Safety
/// SSE2; `n.min(8)` bytes writable at `dst`.
#[inline(always)]
unsafe fn store_eight(v: __m128i, h: usize, dst: *mut u8, n: usize) {
    // SAFETY: the caller's bounds; unaligned stores.
    unsafe {
        let x = if h == 0 { v } else { _mm_unpackhi_epi64(v, v) };
        if n >= 8 {
            _mm_storel_epi64(dst as *mut __m128i, x);
        } else {
            let bytes = _mm_cvtsi128_si64(x).to_le_bytes();
            for (i, &b) in bytes.iter().enumerate().take(n) {
                *dst.add(i) = b;
            }
        }
    }
}

/// Whether [`conv_depthwise`] runs `g` on an input of `len` bytes: it reads 16
/// channels at a time, up to 15 bytes past the last pixel's channels, and holds at most
/// [`MAX_ROW_PAIRS`] pairs of kernel rows.
pub fn depthwise_applies(g: &ConvGeometry, len: usize) -> bool {
    len >= g.h * g.w * g.cin + 16 && g.cin > 0 && g.kh * g.kw > 0 && g.kh.div_ceil(2) <= MAX_ROW_PAIRS
}

/// Pairs of kernel rows [`conv_depthwise`] holds (kernels of up to 16 rows; taller
/// ones run on the depthwise sums and a requantisation).
const MAX_ROW_PAIRS: usize = 8;

/// Depthwise weights ([c][taps] as ONNX stores them, taps kh x kw) for
/// [`conv_depthwise`]: blocks of 16 channels in [`LH`] order, kernel rows in pairs
/// (2 i, 2 i + 1; the second zero past kh), then the kernel column:
/// [c/16][kh/2][kw][16][2] as i16. For an odd kh, the same again with the rows paired
/// one row up ((2 i - 1, 2 i): the first pair's first row zero), for the output rows
/// that start on an odd padded row ([`odd_rows_shift`]).
pub fn pack_depthwise_pairs(w: &[i8], c: usize, kh: usize, kw: usize) -> Vec<i16> {
    let (kh2, taps) = (kh.div_ceil(2), kh * kw);
    let blocks = c.div_ceil(16);
    let half = blocks * kh2 * kw * 32;
    let mut pairs = vec![0i16; (1 + odd_rows_shift(kh) as usize) * half];
    for (shift, pairs) in pairs.chunks_exact_mut(half).enumerate() {
        for b in 0..blocks {
            for (lane, &d) in LH.iter().enumerate() {
                let ch = b * 16 + d;
                if ch >= c {
                    continue;
                }
                for i in 0..kh {
                    // Kernel row i sits at row i + shift of the pairs.
                    let at = i + shift;
                    for j in 0..kw {
                        pairs[(((b * kh2 + at / 2) * kw + j) * 16 + lane) * 2 + at % 2] = w[ch * taps + i * kw + j] as i16;
                    }
                }
            }
        }
    }
    pairs
}

/// Whether [`conv_depthwise`] builds pairs of input rows that start on even padded rows
/// only: kernels of odd height, whose rows paired one row up (see
/// [`pack_depthwise_pairs`]) still fit kh / 2 + 1 = ceil(kh / 2) pairs. A stride-1
/// conv then widens each input row into one pair row instead of two (`depthwise_speed`,
/// Zen 3, best of 6 alternations: 144 channels at 56x56 217 -> 202 us, 32 at 112x112
/// 199 -> 180, 384 at 14x14 37.4 -> 34.3, 240 at 3x3 1.93 -> 1.67; stride 2 level).
fn odd_rows_shift(kh: usize) -> bool {
    kh % 2 == 1
}

/// Row r of the zero-point padded input and row r + 1 as int16 pairs: per padded
/// column and block of 16 channels, 16 pairs (x[r][col][ch], x[r + 1][col][ch]) in
/// [`LH`] order (64 bytes), the zero point outside the input.
///
/// # Safety
/// AVX2; `x` holds the h x w x c input and 16 bytes of slack ([`depthwise_applies`]),
/// `zrow` at least blocks 16 + 16 zero-point bytes, `out` wp blocks 32 values.
#[inline(always)]
unsafe fn pair_row(x: &[u8], g: &ConvGeometry, zrow: *const u8, r: usize, out: &mut [i16]) {
    let (c, blocks) = (g.cin, g.cin.div_ceil(16));
    let wp = g.w + g.pads[1] + g.pads[3];
    assert!(out.len() >= wp * blocks * 32);
    let row = |y: usize| y.checked_sub(g.pads[0]).filter(|&y| y < g.h);
    let (ya, yb) = (row(r), row(r + 1));
    for col in 0..wp {
        let ix = col.checked_sub(g.pads[1]).filter(|&ix| ix < g.w);
        let at = |y: Option<usize>| match (y, ix) {
            // SAFETY: pixel (y, ix) of the h x w input, c bytes each.
            (Some(y), Some(ix)) => unsafe { x.as_ptr().add((y * g.w + ix) * c) },
            _ => zrow,
        };
        let (pa, pb) = (at(ya), at(yb));
        for b in 0..blocks {
            // SAFETY: the 16-byte loads end at most 15 bytes past a pixel's channels:
            // inside the input's slack or the zero-point row (the caller's
            // obligations); the stores write 32 values at (col blocks + b) 32, inside
            // `out` (checked).
            unsafe {
                let u = _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(b * 16) as *const __m128i));
                let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(pb.add(b * 16) as *const __m128i));
                let o = out.as_mut_ptr().add((col * blocks + b) * 32);
                _mm256_storeu_si256(o as *mut __m256i, _mm256_unpacklo_epi16(u, v));
                _mm256_storeu_si256(o.add(16) as *mut __m256i, _mm256_unpackhi_epi16(u, v));
            }
        }
    }
}

thread_local! {
    /// [`conv_depthwise`]'s rows of input pairs (a ring) and the padded row each holds.
    static PAIR_ROWS: Cell<(Vec<__m256i>, Vec<usize>, Vec<__m256i>)> = const { Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// A depthwise conv of any kernel, stride and padding, requantised into `out`;
/// weights `pairs` from [`pack_depthwise_pairs`], `sums` Σ_taps w per channel, `kept` the
/// requantisation parameters kept with them ([`KeptParams`]).
///
/// Kernel rows go in pairs: rows r and r + 1 of the zero-point padded input are
/// interleaved once as int16 pairs ([`pair_row`], kept in a ring of rows: each is
/// built once per call, and read by every output row and kernel column that needs
/// it), so each pair of taps is one load and one `vpmaddwd` per 8 channels. For odd
/// kh, r is always even: an output row starting on an odd row pairs its kernel rows one
/// row up ([`odd_rows_shift`]). Every tap reads a value (the zero point in the padding;
/// a row past the kernel meets zero weights), so the zero-point correction is zp Σw, in
/// the sums' start. Two output pixels per step share the weights' loads and the
/// requantisation's packing.
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked here.)
#[target_feature(enable = "avx2")]
pub unsafe fn conv_depthwise(
    x: &[u8],
    g: &ConvGeometry,
    zp: u8,
    (pairs, sums, kept): (&[i16], &[i32], &KeptParams),
    r: &Requant,
    out: &mut [u8],
) {
    let c = g.cin;
    let (kh2, kw) = (g.kh.div_ceil(2), g.kw);
    let blocks = c.div_ceil(16);
    let wp = g.w + g.pads[1] + g.pads[3];
    let (sy, sx) = (g.stride[0], g.stride[1]);
    assert!(depthwise_applies(g, x.len()), "the input needs 16 bytes of slack");
    // An output row starting on an odd padded row reads the pair rows from the even
    // row above with the weights paired one row up, the second `half` of `pairs` (odd
    // kernels, `odd_rows_shift`).
    let (shift, half) = (odd_rows_shift(g.kh), blocks * kh2 * kw * 32);
    assert!(pairs.len() >= (1 + shift as usize) * half && sums.len() >= c && out.len() >= g.oh * g.ow * c);
    assert!(r.covers(c));
    // Output pixels read padded columns up to (ow - 1) sx + kw - 1 < wp.
    assert!((g.ow - 1) * sx + kw <= wp && (g.oh - 1) * sy + g.kh <= g.h + g.pads[0] + g.pads[2]);
    let (mut made, mut zrow) = KEPT.take();
    let (mut ring_store, mut held, mut sums_row) = PAIR_ROWS.take();
    // One block's sums of an output row (two vectors a pixel, one pixel of slack).
    sums_row.clear();
    sums_row.resize(2 * g.ow + 2, _mm256_setzero_si256());
    let zpi = zp as i32;
    let params = &kept.get(r, zp, |v| block_params(r, c, false, |ch| zpi.wrapping_mul(sums[ch]), v), &mut made)[..];
    // A pixel of zero points (and 16 bytes past it), as u32 words of four.
    zrow.clear();
    zrow.resize((blocks * 16).div_ceil(4) + 4, u32::from_ne_bytes([zp; 4]));
    // The ring: the rows an output row reads span 2 (kh2 - 1) + 1 < 2 kh2 padded rows,
    // so rows r mod 2 kh2 of one output row never share a slot.
    let slots = 2 * kh2;
    let row_len = wp * blocks * 32;
    // Vectors, so that every 32-byte load from a row is aligned: a row's column block is
    // 64 bytes, and on the allocator's 16-byte alignment half the loads crossed a cache
    // line. Grown, never cleared: no slot is read before `pair_row` has built it (`held`
    // starts empty). Zeroed on every call, it cost 10% of a 240-channel layer at 3x3.
    if ring_store.len() < slots * row_len / 16 {
        ring_store.resize(slots * row_len / 16, _mm256_setzero_si256());
    }
    // SAFETY: the vectors' bytes as i16 values (any bit pattern is valid for both).
    let ring = unsafe { std::slice::from_raw_parts_mut(ring_store.as_mut_ptr() as *mut i16, slots * row_len) };
    held.clear();
    held.resize(slots, usize::MAX);
    let zp16 = _mm256_set1_epi16(r.out_zp as i16);
    let mut rows = [std::ptr::null::<i16>(); MAX_ROW_PAIRS];
    assert!(kh2 <= rows.len(), "kernels of at most 16 rows (depthwise_applies)");
    for oy in 0..g.oh {
        let (first, weights) = if shift && oy * sy % 2 == 1 { (oy * sy - 1, &pairs[half..]) } else { (oy * sy, pairs) };
        for (i2, row) in rows.iter_mut().enumerate().take(kh2) {
            let pr = first + 2 * i2;
            let slot = pr % slots;
            if held[slot] != pr {
                // SAFETY: AVX2; the input's slack (asserted), the zero-point row's
                // blocks 16 + 16 bytes, the slot's wp blocks 32 values.
                unsafe { pair_row(x, g, zrow.as_ptr() as *const u8, pr, &mut ring[slot * row_len..(slot + 1) * row_len]) };
                held[slot] = pr;
            }
            *row = ring[slot * row_len..].as_ptr();
        }
        let row = DwRow { rows: &rows, blocks, ow: g.ow, c, pairs: weights, params, zp16, sums: sums_row.as_mut_ptr() };
        // SAFETY: AVX2; the rows are ring slots of wp blocks 32 values and every output
        // pixel's columns (ow - 1) sx + kw <= wp (asserted); `pairs` holds blocks kh2 kw
        // 32 values and `params` blocks entries (checked); the output row's ow c bytes
        // are inside `out` (checked).
        unsafe {
            let o = out.as_mut_ptr().add(oy * g.ow * c);
            // The common kernels with their sizes known, so that the taps unroll.
            match (kh2, kw, sx) {
                (2, 3, 1) => dw_row(&row, 2, 3, 1, o),
                (2, 3, 2) => dw_row(&row, 2, 3, 2, o),
                _ => dw_row(&row, kh2, kw, sx, o),
            }
        }
    }
    PAIR_ROWS.set((ring_store, held, sums_row));
    KEPT.set((made, zrow));
}

/// What [`dw_row`] reads: the kh2 rows of input pairs of one output row, the weights
/// and parameters.
struct DwRow<'a> {
    rows: &'a [*const i16; MAX_ROW_PAIRS],
    blocks: usize,
    ow: usize,
    c: usize,
    pairs: &'a [i16],
    params: &'a [BlockParams],
    zp16: __m256i,
    /// 2 ow + 2 vectors: a block's sums of the row, before their requantisation.
    sums: *mut __m256i,
}

/// One output row of [`conv_depthwise`] into `o` (ow c bytes), two pixels per step.
///
/// # Safety
/// AVX2; `r.rows[..kh2]` rows of pairs holding the columns (ow - 1) sx + kw, blocks
/// 32 values each; `r.pairs` blocks kh2 kw 32 values; `r.params` blocks entries; ow c
/// bytes writable at `o`.
#[inline(always)]
unsafe fn dw_row(r: &DwRow, kh2: usize, kw: usize, sx: usize, o: *mut u8) {
    let (blocks, c) = (r.blocks, r.c);
    let cs = blocks * 32;
    // Block by block, the row's pixels inside: the block's weights and parameters
    // stay in registers (or L1) across the row.
    for b in 0..blocks {
        let c0 = b * 16;
        // SAFETY: the caller's bounds: columns cp + j, cq + j of each row, block b
        // < blocks; block b's weights; `params[b]`; min(16, c - c0) bytes of output
        // pixels ox (and ox + 1 when two).
        unsafe {
            let prm = r.params.get_unchecked(b);
            let s = prm.start.as_ptr();
            let start = [_mm256_load_si256(s as *const __m256i), _mm256_load_si256(s.add(8) as *const __m256i)];
            let wb = r.pairs.as_ptr().add(b * kh2 * kw * 32);
            // The sums of the row first, then their requantisation: two loops of
            // independent steps (one loop holding both ran at half the rate, each step
            // waiting on its own chain of conversions).
            let mut ox = 0;
            while ox < r.ow {
                let two = ox + 1 < r.ow;
                // The second pixel's columns: the next pixel's, or the first's again.
                let (cp, cq) = (ox * sx, if two { (ox + 1) * sx } else { ox * sx });
                let (mut ap, mut aq) = (start, start);
                for i2 in 0..kh2 {
                    let row = r.rows.get_unchecked(i2).add(b * 32);
                    for j in 0..kw {
                        let wt = wb.add((i2 * kw + j) * 32);
                        let (w0, w1) = (_mm256_loadu_si256(wt as *const __m256i), _mm256_loadu_si256(wt.add(16) as *const __m256i));
                        let (zp_, zq) = (row.add((cp + j) * cs), row.add((cq + j) * cs));
                        ap[0] = _mm256_add_epi32(ap[0], _mm256_madd_epi16(_mm256_loadu_si256(zp_ as *const __m256i), w0));
                        ap[1] = _mm256_add_epi32(ap[1], _mm256_madd_epi16(_mm256_loadu_si256(zp_.add(16) as *const __m256i), w1));
                        aq[0] = _mm256_add_epi32(aq[0], _mm256_madd_epi16(_mm256_loadu_si256(zq as *const __m256i), w0));
                        aq[1] = _mm256_add_epi32(aq[1], _mm256_madd_epi16(_mm256_loadu_si256(zq.add(16) as *const __m256i), w1));
                    }
                }
                let at = r.sums.add(2 * ox);
                (*at, *at.add(1), *at.add(2), *at.add(3)) = (ap[0], ap[1], aq[0], aq[1]);
                ox += 2;
            }
            let mut ox = 0;
            while ox < r.ow {
                let at = r.sums.add(2 * ox);
                let bytes = requantize_pair([*at, *at.add(1)], [*at.add(2), *at.add(3)], prm, r.zp16);
                let dst = o.add(ox * c + c0);
                store_half(bytes, 0, dst, c - c0);
                if ox + 1 < r.ow {
                    store_half(bytes, 1, dst.add(c), c - c0);
                }
                ox += 2;
            }
        }
    }
}

/// Whether a dense conv of `cout` outputs and `k` inputs runs on [`conv_dense_narrow`]
/// rather than on [`conv_dense`]'s half block ([`half_tail`], one vector of 8 channels
/// a pixel): for 1-3 outputs (a U-Net's head), where the half block wastes 5 of 8
/// multiplies or more; from 4 outputs the half block, whose lanes are then at least
/// half full, against the narrow kernel's extra loads and sums across lanes. Measured
/// on a Zen 3 core (`conv_speed`, best of 2 alternations, narrow against the half
/// block): 16 -> 2 3x3 at 32x32 42 against 51 us, 64 -> 3 3x3 at 16x16 24 against 32,
/// 8 -> 2 1x1 at 64x64 26 against 34, 2 -> 1 3x3 at 64x64 73 against 89 (2 -> 3 1x1,
/// 33 against 29, the one loss); but 8 -> 4 1x1 at 64x64 42 against 31, 8 -> 4 3x3
/// 156 against 136, 16 -> 6 3x3 at 32x32 64 against 51, 16 -> 8 80 against 48.
/// (Against whole blocks of 16, before the half block, narrow won up to 7 outputs.)
pub(super) fn narrow_applies(cout: usize, k: usize) -> bool {
    (1..=3).contains(&cout) && k > 0
}

/// Pixels per tile of [`conv_dense_narrow`]: 8, so that a tile's items (pixel x
/// channel) are whole groups of 8.
const NR: usize = 8;

/// Eight items' requantisation parameters, for the phase (first item's channel) of a
/// group: lane l is channel (phase + l) mod cout.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct PhaseParams {
    start: [i32; 8],
    mult: [f32; 8],
    bias: [f32; 8],
    top: [f32; 8],
    /// lo and z_y as int32.
    lo: [i32; 8],
    zp: [i32; 8],
}

thread_local! {
    /// [`conv_dense_narrow`]'s parameters per phase, kept between calls.
    static PHASES: Cell<Vec<PhaseParams>> = const { Cell::new(Vec::new()) };
}

/// A dense conv with few output channels: each output (pixel p, channel c), an "item",
/// is the dot product of p's input pairs and c's weight pairs, 8 pairs per `vpmaddwd`
/// (the vectors of [`pack_pairs`]' narrow layout), in one accumulator per item; eight
/// consecutive items (NHWC order: p cout + c) are summed across lanes together
/// (`vphaddd`) into one vector, requantised and stored as 8 contiguous bytes.
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked here.)
#[target_feature(enable = "avx2")]
unsafe fn conv_dense_narrow(x: &[u8], pixels: usize, w: &PackedWeights, out: Out) {
    let (k, cout) = (w.k, w.cout);
    let k2 = k.div_ceil(2);
    let (k2p, nv) = (k2.div_ceil(8) * 8, k2.div_ceil(8));
    assert!(w.pairs.len() >= cout * k2p * 2, "weights packed without the AVX2 narrow pairs");
    assert!(x.len() >= pixels * k);
    let (params, mut xp) = KEPT.take();
    let mut phases = PHASES.take();
    // A group of 8 items starts at a channel that is a multiple of gcd(8, cout): its phase.
    let step = gcd(8, cout);
    let (out_u8, out_i32) = match out {
        Out::U8(r, o) => {
            assert!(o.len() >= pixels * cout && r.covers(cout));
            phases.clear();
            for phase in (0..cout).step_by(step) {
                let mut q =
                    PhaseParams { start: [0; 8], mult: [0.0; 8], bias: [0.0; 8], top: [0.0; 8], lo: [0; 8], zp: [r.out_zp as i32; 8] };
                for l in 0..8 {
                    let c = (phase + l) % cout;
                    q.start[l] = 0i32.wrapping_sub(r.offset[c]);
                    q.mult[l] = r.mult[c];
                    q.bias[l] = r.bias[c];
                    q.top[l] = (r.hi[c] as i32 - r.out_zp as i32) as f32;
                    q.lo[l] = r.lo[c] as i32;
                }
                phases.push(q);
            }
            (o.as_mut_ptr(), std::ptr::null_mut())
        }
        Out::I32(a) => {
            assert!(a.len() >= pixels * cout);
            (std::ptr::null_mut(), a.as_mut_ptr())
        }
    };
    // Rows of k2 values, then at least a vector's worth more: the last vector of a row
    // reads up to 7 values past it (into the next row, or the slack), which meet zero
    // weights.
    xp.clear();
    xp.resize(NR * k2 + 8, 0);
    let wp = w.pairs.as_ptr() as *const u32;
    let mut p = 0;
    while p < pixels {
        let np = (pixels - p).min(NR);
        // SAFETY: AVX2; rows p..p + np of x (checked above); xp holds NR k2 + 8.
        unsafe { widen_rows(&x[p * k..], k, np, NR, &mut xp) };
        let items = np * cout;
        let mut f = 0;
        while f < items {
            // SAFETY: item f + i < NR cout (a multiple of 8) reads row (f + i) / cout < NR of xp: nv
            // vectors from its start, at most k2p - 1 <= k2 + 7 values on, inside NR k2
            // + 8; channel (f + i) % cout's nv vectors inside `pairs` (checked).
            // Stores: items f.. of this tile, min(8, items - f) of them, inside `out`
            // (checked: (p + np) cout <= pixels cout).
            unsafe {
                // Item f + i is (pixel, channel) (pix, ch): the first by a division, the
                // rest stepped. Items past the tile's (at most 7, to a multiple of 8,
                // which NR cout is) read rows below NR, zero-filled, and are not stored.
                let first = (f / cout, f % cout);
                let (xs, ws) = (xp.as_ptr(), (wp, k2p, cout));
                // The common lengths with the vector count known, so that it unrolls.
                let a = match nv {
                    1 => dot8(xs, k2, ws, first, 1),
                    2 => dot8(xs, k2, ws, first, 2),
                    3 => dot8(xs, k2, ws, first, 3),
                    4 => dot8(xs, k2, ws, first, 4),
                    _ => dot8(xs, k2, ws, first, nv),
                };
                let sums = across_lanes(&a);
                let n = (items - f).min(8);
                let at = (p * cout + f) as isize;
                if out_u8.is_null() {
                    let mut tmp = [0i32; 8];
                    _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, sums);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), out_i32.offset(at), n);
                } else {
                    // Items f.. of a tile starting at pixel p (a multiple of 8): channel
                    // (8 m) mod cout for group m of the whole conv, a multiple of
                    // gcd(8, cout).
                    let q = phases.get_unchecked(((p * cout + f) % cout) / step);
                    let v = _mm256_add_epi32(sums, _mm256_load_si256(q.start.as_ptr() as *const __m256i));
                    let v = _mm256_add_ps(
                        _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_load_ps(q.mult.as_ptr())),
                        _mm256_load_ps(q.bias.as_ptr()),
                    );
                    let r = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_load_ps(q.top.as_ptr()), v));
                    // + z_y cannot overflow (i32::MIN from a huge or NaN value + at most
                    // 255); max(lo) then leaves every lane in [lo, hi].
                    let r = _mm256_max_epi32(
                        _mm256_add_epi32(r, _mm256_load_si256(q.zp.as_ptr() as *const __m256i)),
                        _mm256_load_si256(q.lo.as_ptr() as *const __m256i),
                    );
                    if n == 8 {
                        super::avx2::store8(r, out_u8.offset(at));
                    } else {
                        let mut tmp = [0u8; 8];
                        super::avx2::store8(r, tmp.as_mut_ptr());
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), out_u8.offset(at), n);
                    }
                }
            }
            f += 8;
        }
        p += np;
    }
    PHASES.set(phases);
    KEPT.set((params, xp));
}

/// The eight accumulators of [`conv_dense_narrow`]'s items from (pixel, channel)
/// `first` on: item i's `nv` vectors of 8 input pairs (row pix of `xs`, rows k2 apart)
/// times its channel's (row ch of the weights, k2p apart), multiplied and added.
///
/// # Safety
/// AVX2; the rows of the 8 items' pixels hold nv 8 values from their start, and the
/// weights of their channels (< cout) too.
#[inline(always)]
unsafe fn dot8(
    xs: *const u32,
    k2: usize,
    (wp, k2p, cout): (*const u32, usize, usize),
    (mut pix, mut ch): (usize, usize),
    nv: usize,
) -> [__m256i; 8] {
    // SAFETY: AVX2, the caller's obligation.
    let mut a = [unsafe { _mm256_setzero_si256() }; 8];
    for ai in a.iter_mut() {
        // SAFETY: the caller's bounds.
        unsafe {
            let (row, c) = (xs.add(pix * k2), wp.add(ch * k2p));
            for v in 0..nv {
                let xv = _mm256_loadu_si256(row.add(8 * v) as *const __m256i);
                let wv = _mm256_loadu_si256(c.add(8 * v) as *const __m256i);
                *ai = _mm256_add_epi32(*ai, _mm256_madd_epi16(xv, wv));
            }
        }
        ch += 1;
        if ch == cout {
            (pix, ch) = (pix + 1, 0);
        }
    }
    a
}

/// The sums across lanes of eight vectors: lane i of the result is Σ a[i].
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn across_lanes(a: &[__m256i; 8]) -> __m256i {
    // SAFETY: register operations.
    unsafe {
        let h01 = _mm256_hadd_epi32(a[0], a[1]);
        let h23 = _mm256_hadd_epi32(a[2], a[3]);
        let h45 = _mm256_hadd_epi32(a[4], a[5]);
        let h67 = _mm256_hadd_epi32(a[6], a[7]);
        // [a0 a1 a2 a3 (low halves) | a0 a1 a2 a3 (high halves)], likewise for 4-7.
        let h03 = _mm256_hadd_epi32(h01, h23);
        let h47 = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(h03, h47), _mm256_permute2x128_si256::<0x31>(h03, h47))
    }
}
