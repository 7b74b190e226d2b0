//! x86-64 AVX2 kernels: the dispatch of convolutions to the fused kernels of
//! [`avx2_fused`] (dense on the input or its scalar im2row rows, depthwise),
//! requantisation 8 channels per instruction, and the scalar reference's loops
//! (depthwise int32 sums, input quantisation, quantised Add) compiled with AVX2
//! enabled, where LLVM vectorises them; grouped convs with small even groups on
//! their own kernel ([`grouped_sums`], weights [`GroupPairs`]); the gathered rows of
//! short-row convs ([`gather_rows`], for [`super::Rows2`]). The AVX-512 VNNI path uses the depthwise, requantisation
//! and Add kernels of this file for what it has no kernel of its own for.
//!
//! Every function here is `unsafe` for one reason beyond the slices' bounds: it needs
//! AVX2, which the dispatcher checked ([`super::Isa::checked`]).

use std::arch::x86_64::*;

use super::{avx2_fused, padded_input, scalar, ConvGeometry, PackedWeights, Requant};
use super::{ConvKind, QTensor};

/// One convolution requantised into `out`: dense on the input (pointwise) or its
/// im2row rows, and depthwise, by the fused kernels of [`avx2_fused`]; a depthwise conv
/// on an input without 16 bytes of slack as sums, then their requantisation.
///
/// # Safety
/// The CPU must have AVX2.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub unsafe fn conv(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, r: &Requant, scratch: &mut [u8], acc: &mut [i32], out: &mut [u8]) {
    let pixels = g.oh * g.ow;
    let cout = r.mult.len();
    match kind {
        // SAFETY: AVX2 is the caller's obligation, passed on; the kernel checks its slices.
        ConvKind::Dense(w) => unsafe { avx2_fused::conv_dense(rows(x, g, zp, scratch), pixels, w, avx2_fused::Out::U8(r, out)) },
        ConvKind::Depthwise(w) if avx2_fused::depthwise_applies(g, x.len()) => {
            // SAFETY: as above.
            unsafe { avx2_fused::conv_depthwise(x, g, zp, (&w.pairs, &w.sums, &w.avx2_params), r, out) }
        }
        _ => {
            // SAFETY: as above.
            unsafe {
                accumulate(x, g, zp, kind, scratch, acc);
                requantize(&acc[..pixels * cout], cout, r, out);
            }
        }
    }
}

/// A dense conv's input rows: the input itself for pointwise, else its im2row rows
/// (in `scratch`).
fn rows<'a>(x: &'a [u8], g: &ConvGeometry, zp: u8, scratch: &'a mut [u8]) -> &'a [u8] {
    if g.is_pointwise() {
        x
    } else {
        scalar::im2row(x, g, zp, scratch);
        scratch
    }
}

/// The int32 sums of a convolution (see [`super::accumulate`]): dense on the input
/// or its im2row rows (the fused kernel's int32 output); depthwise on [taps][c].
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn accumulate(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    match kind {
        // SAFETY: AVX2 is the caller's obligation, passed on.
        ConvKind::Dense(w) => unsafe { avx2_fused::conv_dense(rows(x, g, zp, scratch), g.oh * g.ow, w, avx2_fused::Out::I32(acc)) },
        // SAFETY: as above.
        ConvKind::Depthwise(w) => unsafe { depthwise(x, g, zp, &w.w, acc) },
        ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k]: the fused dense kernel's int32 output.
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked by the kernel.)
#[target_feature(enable = "avx2")]
pub unsafe fn gemm(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    // SAFETY: AVX2 is the caller's obligation, passed on.
    unsafe { avx2_fused::conv_dense(x, pixels, w, avx2_fused::Out::I32(acc)) }
}

/// [`scalar::all_finite`] compiled for AVX2 (8 values per step).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn all_finite(x: &[f32]) -> bool {
    scalar::all_finite(x)
}

/// [`scalar::depthwise`] compiled for AVX2: the channel loop vectorises 8 channels
/// per instruction.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn depthwise(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    scalar::depthwise(x, g, zp, w, acc)
}

/// [`scalar::requantize`], 8 channels per step with the same IEEE operations, in the
/// same order.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn requantize(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    assert!(r.covers(cout));
    if cout > 0 && 8 % cout == 0 {
        // SAFETY: AVX2, as this function's caller guarantees.
        return unsafe { requantize_sides(acc, cout, (r, None), out) };
    }
    if !cout.is_multiple_of(8) && cout <= FLAT_CHANNELS {
        // SAFETY: AVX2, as this function's caller guarantees.
        return unsafe { requantize_flat(acc, cout, r, out) };
    }
    if cout.is_multiple_of(8) && cout <= BLOCK_CHANNELS {
        // SAFETY: AVX2, as this function's caller guarantees; the sizes as checked.
        return unsafe { requantize_blocks(acc, cout, (r, None), out) };
    }
    let full = cout / 8 * 8;
    for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
        let mut c = 0;
        while c < full {
            // SAFETY: c + 8 <= full <= cout: the 8-lane loads stay inside this pixel's
            // `cout` sums and the parameters' `cout` entries (checked above), the 8
            // bytes written inside `o` (cout long); loadu/storeu need no alignment.
            unsafe {
                let p = Lanes8::load(ParamRows::from(r, c), r.out_zp);
                let x = _mm256_loadu_si256(a.as_ptr().add(c) as *const __m256i);
                store8(p.requantize(x), o.as_mut_ptr().add(c));
            }
            c += 8;
        }
        for c in full..cout {
            let v = (a[c] - r.offset[c]) as f32 * r.mult[c] + r.bias[c];
            o[c] = (scalar::round_half_even(v) + r.out_zp).clamp(r.lo[c] as f32, r.hi[c] as f32) as u8;
        }
    }
}

/// [`requantize`] for a channel count that divides 8 (a U-Net's full-resolution
/// layers), the parameters of 8 values loaded once; with `neg`, also the negative side
/// of a PReLU ([`super::requantize_two_sided`]): y = pos + neg - z, each side the
/// reference's requantisation, in the same pass (the sums converted once where both
/// sides subtract the same offsets, as a conv's PReLU does). 32 values per step stored
/// by two packs, where a store of 8 took a shuffle and a permute.
///
/// # Safety
/// AVX2; `cout` divides 8 and both requantisations cover it.
#[target_feature(enable = "avx2")]
pub unsafe fn requantize_sides(acc: &[i32], cout: usize, (pos, neg): (&Requant, Option<(&Requant, u8)>), out: &mut [u8]) {
    assert!(cout > 0 && 8 % cout == 0 && pos.covers(cout) && neg.is_none_or(|(r, _)| r.covers(cout)));
    let n = acc.len().min(out.len());
    let whole = n / 8 * 8;
    let p = Period::<8>::new(pos, cout, 8);
    let q = neg.map(|(r, _)| Period::<8>::new(r, cout, 8));
    let (acc_whole, out_whole) = (&acc[..whole], &mut out[..whole]);
    // SAFETY: AVX2 (this function's contract); 8 entries of each parameter array.
    unsafe {
        let lp = Lanes8::load(p.rows(), pos.out_zp);
        match (&q, neg) {
            (Some(q), Some((r, z))) => {
                let lq = Lanes8::load(q.rows(), r.out_zp);
                if p.offset == q.offset {
                    sides_run::<true, true>(acc_whole, out_whole, &lp, &lq, z)
                } else {
                    sides_run::<true, false>(acc_whole, out_whole, &lp, &lq, z)
                }
            }
            _ => sides_run::<false, false>(acc_whole, out_whole, &lp, &lp, 0),
        }
    }
    // The last values (fewer than 8; whole pixels, as 8 is): the reference's loop.
    let (acc, out) = (&acc[whole..n], &mut out[whole..n]);
    scalar::requantize(acc, cout, pos, out);
    if let Some((r, z)) = neg {
        let mut side = [0u8; 8];
        scalar::requantize(acc, cout, r, &mut side[..acc.len()]);
        for (o, s) in out.iter_mut().zip(side) {
            *o = o.wrapping_add(s).wrapping_sub(z);
        }
    }
}

/// [`requantize_sides`] over whole vectors (`acc.len()` a multiple of 8, as long as
/// `out`): one side (`lp`), or with `TWO` both, pos + neg - z (`SHARED`: both subtract
/// the same offsets, so the sums are converted once).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn sides_run<const TWO: bool, const SHARED: bool>(acc: &[i32], out: &mut [u8], lp: &Lanes8, lq: &Lanes8, z: u8) {
    assert!(acc.len().is_multiple_of(8) && out.len() == acc.len());
    // SAFETY: loads of 8 sums at i + 8 k + 8 <= acc.len() and stores of 32 or 8 bytes
    // inside `out` (as long); AVX2 as the caller guarantees. (No closures: they would
    // not inherit the caller's target features, and the intrinsics would become calls.)
    unsafe {
        let z = _mm256_set1_epi32(z as i32);
        let at = acc.as_ptr() as *const __m256i;
        let mut i = 0;
        while i + 32 <= acc.len() {
            let y = [
                sides8::<TWO, SHARED>(lp, lq, z, _mm256_loadu_si256(at.add(i / 8))),
                sides8::<TWO, SHARED>(lp, lq, z, _mm256_loadu_si256(at.add(i / 8 + 1))),
                sides8::<TWO, SHARED>(lp, lq, z, _mm256_loadu_si256(at.add(i / 8 + 2))),
                sides8::<TWO, SHARED>(lp, lq, z, _mm256_loadu_si256(at.add(i / 8 + 3))),
            ];
            store32(y, out.as_mut_ptr().add(i));
            i += 32;
        }
        while i < acc.len() {
            store8(sides8::<TWO, SHARED>(lp, lq, z, _mm256_loadu_si256(at.add(i / 8))), out.as_mut_ptr().add(i));
            i += 8;
        }
    }
}

/// 8 values of [`sides_run`] and [`blocks_run`]: one side, or both (pos + neg - z).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn sides8<const TWO: bool, const SHARED: bool>(lp: &Lanes8, lq: &Lanes8, z: __m256i, x: __m256i) -> __m256i {
    // SAFETY: register operations only; AVX2 as the caller guarantees.
    unsafe {
        if !TWO {
            return lp.requantize(x);
        }
        let d = lp.converted(x);
        let e = if SHARED { d } else { lq.converted(x) };
        // pos >= z >= neg, and one of them is z: the sum stays in 0..=255.
        _mm256_sub_epi32(_mm256_add_epi32(lp.requantize_converted(d), lq.requantize_converted(e)), z)
    }
}

/// Channel counts (multiples of 8) up to which [`requantize_blocks`] holds every
/// channel's parameters in lanes for the whole run: 2 x 8 blocks of 6 vectors on the stack.
pub const BLOCK_CHANNELS: usize = 64;

/// [`requantize`] for cout a multiple of 8 up to [`BLOCK_CHANNELS`] (a U-Net's 16-64
/// channel layers); with `neg`, also the negative side of a PReLU in the same pass, as
/// [`requantize_sides`] (the sums converted once where the offsets are the same). Each
/// block of 8 channels' parameters is loaded and widened once per run, not once per
/// pixel; the same bytes as the reference on each side.
///
/// # Safety
/// AVX2; `cout` is a multiple of 8, at most [`BLOCK_CHANNELS`], and both
/// requantisations cover it.
#[target_feature(enable = "avx2")]
pub unsafe fn requantize_blocks(acc: &[i32], cout: usize, (pos, neg): (&Requant, Option<(&Requant, u8)>), out: &mut [u8]) {
    const B: usize = BLOCK_CHANNELS / 8;
    assert!(cout > 0 && cout.is_multiple_of(8) && cout <= BLOCK_CHANNELS);
    assert!(pos.covers(cout) && neg.is_none_or(|(r, _)| r.covers(cout)));
    let blocks = cout / 8;
    // SAFETY: AVX2 (this function's contract); loads of 8 parameters at channel 8 b + 8
    // <= cout, which both requantisations cover (asserted).
    unsafe {
        let zero = Lanes8::zero();
        let (mut lp, mut lq) = ([zero; B], [zero; B]);
        for (b, (p, q)) in lp.iter_mut().zip(lq.iter_mut()).take(blocks).enumerate() {
            *p = Lanes8::load(ParamRows::from(pos, 8 * b), pos.out_zp);
            if let Some((r, _)) = neg {
                *q = Lanes8::load(ParamRows::from(r, 8 * b), r.out_zp);
            }
        }
        let (lp, lq) = (&lp[..blocks], &lq[..blocks]);
        match neg {
            // A conv's PReLU: both sides subtract the same offsets.
            Some((r, z)) if pos.offset[..cout] == r.offset[..cout] => blocks_run::<true, true>(acc, out, cout, lp, lq, z),
            Some((_, z)) => blocks_run::<true, false>(acc, out, cout, lp, lq, z),
            None => blocks_run::<false, false>(acc, out, cout, lp, lp, 0),
        }
    }
}

/// [`requantize_blocks`] over whole pixels of `cout` values, block b of each with
/// `lp[b]` (and `lq[b]`): [`sides8`] on every vector.
///
/// # Safety
/// AVX2; `lp` and `lq` hold cout / 8 blocks.
#[inline(always)]
unsafe fn blocks_run<const TWO: bool, const SHARED: bool>(acc: &[i32], out: &mut [u8], cout: usize, lp: &[Lanes8], lq: &[Lanes8], z: u8) {
    assert!(lp.len() * 8 == cout && lq.len() == lp.len());
    // SAFETY: accumulator loads and byte stores at 8 b + 8 <= cout inside one pixel's
    // `cout` values (chunks_exact); AVX2 as the caller guarantees.
    unsafe {
        let z = _mm256_set1_epi32(z as i32);
        for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
            for (b, (p, q)) in lp.iter().zip(lq).enumerate() {
                let x = _mm256_loadu_si256(a.as_ptr().add(8 * b) as *const __m256i);
                store8(sides8::<TWO, SHARED>(p, q, z, x), o.as_mut_ptr().add(8 * b));
            }
        }
    }
}

/// Channel counts up to which [`requantize`] repeats the parameters over a block of
/// lcm(cout, 8) values instead of leaving cout % 8 channels of every pixel to scalar
/// code (a U-Net's 2-4-channel full-resolution layers).
const FLAT_CHANNELS: usize = 32;

/// 8 channels' requantisation parameters in lanes: the bounds as floats less the
/// output zero point (lo - z_y, hi - z_y: exact, all integers in -255..=255), and z_y.
#[derive(Clone, Copy)]
struct Lanes8 {
    offset: __m256i,
    mult: __m256,
    bias: __m256,
    lo: __m256,
    hi: __m256,
    zp: __m256i,
}

/// Requantisation parameters from some channel on (at least 8 of each).
/// A [`Requant`]'s per-channel parameters as slices: from some channel on, or a period
/// of them repeated on the stack ([`Period`]). The AVX-512 kernels read them too.
#[derive(Clone, Copy)]
pub(super) struct ParamRows<'a> {
    pub(super) offset: &'a [i32],
    pub(super) mult: &'a [f32],
    pub(super) bias: &'a [f32],
    pub(super) lo: &'a [u8],
    pub(super) hi: &'a [u8],
}

impl<'a> ParamRows<'a> {
    /// `r`'s parameters from channel c on.
    pub(super) fn from(r: &'a Requant, c: usize) -> Self {
        ParamRows { offset: &r.offset[c..], mult: &r.mult[c..], bias: &r.bias[c..], lo: &r.lo[c..], hi: &r.hi[c..] }
    }

    /// These rows from entry j on.
    fn skip(self, j: usize) -> Self {
        ParamRows { offset: &self.offset[j..], mult: &self.mult[j..], bias: &self.bias[j..], lo: &self.lo[j..], hi: &self.hi[j..] }
    }
}

/// Value j's parameters (channel j % cout) for the j of one period of a flat run of
/// [pixels][cout] values, at most N, on the stack: the flat requantisations run per
/// part and per chunk of an op, so they do not allocate.
pub(super) struct Period<const N: usize> {
    offset: [i32; N],
    mult: [f32; N],
    bias: [f32; N],
    lo: [u8; N],
    hi: [u8; N],
}

impl<const N: usize> Period<N> {
    /// `r`'s `cout` channels repeated over `period` (<= N) values.
    pub(super) fn new(r: &Requant, cout: usize, period: usize) -> Self {
        assert!(period <= N && cout > 0);
        let mut p = Period { offset: [0; N], mult: [0.0; N], bias: [0.0; N], lo: [0; N], hi: [0; N] };
        for j in 0..period {
            let c = j % cout;
            (p.offset[j], p.mult[j], p.bias[j], p.lo[j], p.hi[j]) = (r.offset[c], r.mult[c], r.bias[c], r.lo[c], r.hi[c]);
        }
        p
    }

    pub(super) fn rows(&self) -> ParamRows<'_> {
        ParamRows { offset: &self.offset, mult: &self.mult, bias: &self.bias, lo: &self.lo, hi: &self.hi }
    }
}

impl Lanes8 {
    /// All lanes zero (a placeholder, overwritten before use).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn zero() -> Lanes8 {
        // SAFETY: register operations only.
        unsafe {
            let (i, f) = (_mm256_setzero_si256(), _mm256_setzero_ps());
            Lanes8 { offset: i, mult: f, bias: f, lo: f, hi: f, zp: i }
        }
    }

    /// The first 8 channels of `p`, for an output zero point `out_zp` (a u8 tensor's:
    /// an integer in 0..=255, as [`Requant::out_zp`] always is).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn load(p: ParamRows, out_zp: f32) -> Lanes8 {
        assert!(p.offset.len() >= 8 && p.mult.len() >= 8 && p.bias.len() >= 8 && p.lo.len() >= 8 && p.hi.len() >= 8);
        debug_assert!(out_zp.fract() == 0.0 && (0.0..=255.0).contains(&out_zp));
        // SAFETY: 8 entries of each (asserted); loadu needs no alignment.
        unsafe {
            let zp = _mm256_set1_epi32(out_zp as i32);
            let (lo, hi) = (_mm_loadl_epi64(p.lo.as_ptr() as *const __m128i), _mm_loadl_epi64(p.hi.as_ptr() as *const __m128i));
            Lanes8 {
                offset: _mm256_loadu_si256(p.offset.as_ptr() as *const __m256i),
                mult: _mm256_loadu_ps(p.mult.as_ptr()),
                bias: _mm256_loadu_ps(p.bias.as_ptr()),
                lo: _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(lo), zp)),
                hi: _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(hi), zp)),
                zp,
            }
        }
    }

    /// The scalar reference's bytes for 8 sums: v = (x - offset) as f32 * mult + bias
    /// (a product then a sum, never fused), clamp(round_half_even(v) + z_y, lo, hi).
    /// Here v is clamped to [lo - z_y, hi - z_y] first and then rounded, + z_y in
    /// integers: the bounds are integers and rounding is monotone, so the two orders
    /// agree (the reference's saturation at 2^22 lies beyond either bound), and the
    /// clamped value converts exactly. `cvtps` rounds half to even: Rust code runs with
    /// the default floating-point environment (changing MXCSR's rounding is undefined
    /// behaviour). 8 vector operations where the 1.5 * 2^23 rounding trick took 12.
    #[inline(always)]
    unsafe fn requantize(&self, x: __m256i) -> __m256i {
        // SAFETY: AVX2 as the caller guarantees.
        unsafe { self.requantize_converted(self.converted(x)) }
    }

    /// (x - offset) as f32: exact below 2^24 in magnitude, else rounded as the
    /// reference's `as f32`.
    #[inline(always)]
    unsafe fn converted(&self, x: __m256i) -> __m256 {
        // SAFETY: register operations only; AVX2 as the caller guarantees.
        unsafe { _mm256_cvtepi32_ps(_mm256_sub_epi32(x, self.offset)) }
    }

    /// [`Lanes8::requantize`] from [`Lanes8::converted`] sums.
    #[inline(always)]
    unsafe fn requantize_converted(&self, d: __m256) -> __m256i {
        // SAFETY: register operations only; AVX2 as the caller guarantees.
        unsafe {
            let v = _mm256_add_ps(_mm256_mul_ps(d, self.mult), self.bias);
            _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, self.lo), self.hi)), self.zp)
        }
    }
}

/// The low bytes of 8 i32 lanes (each in 0..=255) stored at `dst`.
///
/// # Safety
/// AVX2; 8 bytes writable at `dst`.
#[inline(always)]
pub(super) unsafe fn store8(q: __m256i, dst: *mut u8) {
    // SAFETY: the caller's bounds; storel needs no alignment.
    unsafe {
        let picked = _mm256_shuffle_epi8(
            q,
            _mm256_setr_epi8(
                0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            ),
        );
        let joined = _mm256_permutevar8x32_epi32(picked, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        _mm_storel_epi64(dst as *mut __m128i, _mm256_castsi256_si128(joined));
    }
}

/// The low bytes of 4 x 8 i32 lanes (each in 0..=255), in order, stored at `dst`: two
/// saturating packs (exact on 0..=255) and one permute that puts the 128-bit lanes'
/// dwords back in order.
///
/// # Safety
/// AVX2; 32 bytes writable at `dst`.
#[inline(always)]
unsafe fn store32(q: [__m256i; 4], dst: *mut u8) {
    // SAFETY: the caller's bounds; storeu needs no alignment.
    unsafe {
        // Dwords (4 bytes each): q0 lo, q1 lo, q2 lo, q3 lo | q0 hi, q1 hi, q2 hi, q3 hi.
        let packed = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(dst as *mut __m256i, ordered);
    }
}

/// [`requantize`] for cout % 8 != 0: the values as one flat run, the parameters
/// repeated over a period of lcm(cout, 8) values (a multiple of both), 8 values per step.
///
/// # Safety
/// AVX2; the parameters hold at least `cout` (<= [`FLAT_CHANNELS`]) entries.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2")]
unsafe fn requantize_flat(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    const MAX: usize = 8 * FLAT_CHANNELS;
    let period = cout * 8 / gcd(cout, 8);
    let stack = Period::<MAX>::new(r, cout, period);
    let rows = stack.rows();
    let n = acc.len().min(out.len());
    let whole = n / period * period;
    let mut i = 0;
    while i < whole {
        for j in (0..period).step_by(8) {
            // SAFETY: j + 8 <= period <= MAX entries of each parameter array; i + j + 8
            // <= i + period <= whole <= both lengths.
            unsafe {
                let p = Lanes8::load(rows.skip(j), r.out_zp);
                let x = _mm256_loadu_si256(acc.as_ptr().add(i + j) as *const __m256i);
                store8(p.requantize(x), out.as_mut_ptr().add(i + j));
            }
        }
        i += period;
    }
    // The last values (fewer than a period; whole pixels), one at a time.
    for j in whole..n {
        let c = j % period;
        let v = (acc[j] - rows.offset[c]) as f32 * rows.mult[c] + rows.bias[c];
        out[j] = (scalar::round_half_even(v) + r.out_zp).clamp(rows.lo[c] as f32, rows.hi[c] as f32) as u8;
    }
}

pub(super) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// [`scalar::quantize_nchw_to_nhwc`], 8 values per step: x / s as the reference
/// divides, clamped to [-z, 255 - z], rounded half to even by `cvtps` and + z in
/// integers (the reference rounds, adds z and clamps to [0, 255]: the same bytes, the
/// bounds being integers; see [`Lanes8::requantize`]), runs of 32 pixels quantised
/// plane by plane into a buffer and then interleaved (the reference's strided stores
/// keep LLVM from vectorising it: 300 us for MobileNetV2's 224x224x3 input). Returns
/// whether every value read was finite, each tested as it is quantised (a separate
/// pass over the planes took 1-2 us of MobileNetV2 x0.25's 95x95x3 input). Non-finite
/// values (which the caller refuses) may give other bytes than the reference's.
///
/// # Safety
/// The CPU must have AVX2.
#[must_use]
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_nchw_to_nhwc(x: &[f32], stride: usize, t: &QTensor, out: &mut [u8]) -> bool {
    const RUN: usize = 32;
    const MAX_C: usize = 8;
    let (hw, c) = (t.h * t.w, t.c);
    let planes_finite = |from: usize| (0..c).all(|ch| scalar::all_finite(&x[ch * stride + from..ch * stride + hw]));
    if c > MAX_C || c == 0 {
        let finite = planes_finite(0);
        scalar::quantize_nchw_to_nhwc(x, stride, t, out);
        return finite;
    }
    assert!(out.len() >= hw * c && (c - 1) * stride + hw <= x.len());
    let whole = hw / RUN * RUN;
    let mut planes = [[0u8; RUN]; MAX_C];
    let (s, z) = (_mm256_set1_ps(t.scale), _mm256_set1_epi32(t.zp as i32));
    let (bottom, top) = (_mm256_set1_ps(-(t.zp as f32)), _mm256_set1_ps(255.0 - t.zp as f32));
    // Lanes that met a NaN or an infinity: v - v is NaN exactly for those.
    let mut bad = _mm256_setzero_ps();
    let mut i = 0;
    while i < whole {
        for (ch, plane) in planes.iter_mut().enumerate().take(c) {
            for j in (0..RUN).step_by(8) {
                // SAFETY: 8 floats at ch stride + i + j < (c - 1) stride + hw <= x.len()
                // (checked); 8 bytes stored inside the plane's RUN.
                unsafe {
                    let v = _mm256_loadu_ps(x.as_ptr().add(ch * stride + i + j));
                    let d = _mm256_sub_ps(v, v);
                    bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_UNORD_Q>(d, d));
                    let q = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, s), bottom), top);
                    store8(_mm256_add_epi32(_mm256_cvtps_epi32(q), z), plane.as_mut_ptr().add(j));
                }
            }
        }
        let o = &mut out[i * c..(i + RUN) * c];
        if c == 3 {
            // RGB: 16 pixels of each plane into 48 interleaved bytes, three `pshufb` and two
            // ors per 16 of them (byte by byte, this loop was most of the 17 us that a
            // 95x95 input took on a Zen 3 core).
            for j in (0..RUN).step_by(16) {
                // SAFETY: 16 bytes of each plane from j < RUN - 15; 48 bytes of `o` from
                // 3 j (o holds RUN 3).
                unsafe {
                    let p = [0, 1, 2].map(|ch| _mm_loadu_si128(planes[ch].as_ptr().add(j) as *const __m128i));
                    for (k, m) in RGB_INTERLEAVE.iter().enumerate() {
                        let v = _mm_or_si128(
                            _mm_or_si128(
                                _mm_shuffle_epi8(p[0], _mm_loadu_si128(m[0].as_ptr() as *const __m128i)),
                                _mm_shuffle_epi8(p[1], _mm_loadu_si128(m[1].as_ptr() as *const __m128i)),
                            ),
                            _mm_shuffle_epi8(p[2], _mm_loadu_si128(m[2].as_ptr() as *const __m128i)),
                        );
                        _mm_storeu_si128(o.as_mut_ptr().add(3 * j + 16 * k) as *mut __m128i, v);
                    }
                }
            }
        } else {
            for (p, px) in o.chunks_exact_mut(c).enumerate() {
                for (ch, v) in px.iter_mut().enumerate() {
                    *v = planes[ch][p];
                }
            }
        }
        i += RUN;
    }
    // The last pixels (fewer than a run) as the reference does them.
    for ch in 0..c {
        for p in whole..hw {
            out[p * c + ch] = scalar::quantize_u8(x[ch * stride + p], t.scale, t.zp);
        }
    }
    _mm256_movemask_ps(bad) == 0 && planes_finite(whole)
}

/// `pshufb` masks that interleave 16 pixels of three planes into 48 bytes: chunk k
/// (bytes 16 k .. 16 k + 16 of the output), plane ch: byte p takes pixel (16 k + p) / 3
/// of plane ch where (16 k + p) % 3 == ch, else zero (0x80).
const RGB_INTERLEAVE: [[[i8; 16]; 3]; 3] = {
    let mut m = [[[-128i8; 16]; 3]; 3];
    let mut k = 0;
    while k < 3 {
        let mut p = 0;
        while p < 16 {
            let q = 16 * k + p;
            m[k][q % 3][p] = (q / 3) as i8;
            p += 1;
        }
        k += 1;
    }
    m
};

/// [`scalar::moment_sums`] for blocks of a multiple of 8 values (an instance norm's
/// conv sums: a block is 32 values or more, whole pixels): the slots are taken 16 or 8
/// at a time, and each group's sums and squares stay in registers over every block.
/// The compiled scalar loop (still used for other widths and the last partial block)
/// kept them in memory, a load, add and store per 4 slots and block: 3.6-9.5% of a 3-D
/// U-Net's `perf` samples on a Zen 3 core, 2.0-2.5% now. The same exact integer sums
/// in another order: the same bits.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn moment_sums(values: &[i32], s: &mut [i64], q: &mut [i64]) {
    let width = s.len().min(q.len());
    if width == 0 || !width.is_multiple_of(8) {
        return scalar::moment_sums(values, s, q);
    }
    let whole = values.len() / width * width;
    let mut g = 0;
    while g < width {
        if width - g >= 16 {
            // SAFETY: AVX2 (this function's contract); slots g..g + 16 <= width.
            unsafe { moment_group::<2>(&values[..whole], width, g, s, q) };
            g += 16;
        } else {
            // SAFETY: AVX2 (this function's contract); slots g..g + 8 <= width.
            unsafe { moment_group::<1>(&values[..whole], width, g, s, q) };
            g += 8;
        }
    }
    scalar::moment_sums(&values[whole..], s, q);
}

/// Slots g..g + 8 V of [`moment_sums`] over the whole blocks of `values`: per vector of
/// 8 values, the sums of its low and high four lanes widened to i64, and its squares
/// (`vpmuldq`) of the even and of the odd lanes.
///
/// # Safety
/// AVX2; `values` is whole blocks of `width` values, g + 8 V <= width <= s.len(), q.len().
#[target_feature(enable = "avx2")]
unsafe fn moment_group<const V: usize>(values: &[i32], width: usize, g: usize, s: &mut [i64], q: &mut [i64]) {
    assert!(g + 8 * V <= width && width <= s.len().min(q.len()) && values.len().is_multiple_of(width));
    let zero = _mm256_setzero_si256();
    let (mut lo, mut hi, mut even, mut odd) = ([zero; V], [zero; V], [zero; V], [zero; V]);
    for block in values.chunks_exact(width) {
        for v in 0..V {
            // SAFETY: values g + 8 v .. + 8 <= width of this block (asserted).
            let x = unsafe { _mm256_loadu_si256(block.as_ptr().add(g + 8 * v) as *const __m256i) };
            lo[v] = _mm256_add_epi64(lo[v], _mm256_cvtepi32_epi64(_mm256_castsi256_si128(x)));
            hi[v] = _mm256_add_epi64(hi[v], _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(x)));
            even[v] = _mm256_add_epi64(even[v], _mm256_mul_epi32(x, x));
            let x_odd = _mm256_srli_epi64::<32>(x);
            odd[v] = _mm256_add_epi64(odd[v], _mm256_mul_epi32(x_odd, x_odd));
        }
    }
    for v in 0..V {
        let at = g + 8 * v;
        let [mut l, mut h, mut e, mut o] = [[0i64; 4]; 4];
        // SAFETY: 4 i64s written into each array; storeu needs no alignment.
        unsafe {
            _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, lo[v]);
            _mm256_storeu_si256(h.as_mut_ptr() as *mut __m256i, hi[v]);
            _mm256_storeu_si256(e.as_mut_ptr() as *mut __m256i, even[v]);
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, odd[v]);
        }
        for i in 0..4 {
            s[at + i] += l[i];
            s[at + 4 + i] += h[i];
            q[at + 2 * i] += e[i];
            q[at + 2 * i + 1] += o[i];
        }
    }
}

/// [`scalar::mean_pool`] compiled for AVX2 (eight channels widened and added at once,
/// eight quotients at once; the baseline build widens four at a time in several steps
/// and divides one value at a time).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn mean_pool(x: &[u8], t: &QTensor, to: &QTensor, sums: &mut [i32], out: &mut [u8]) {
    scalar::mean_pool(x, t, to, sums, out)
}

/// [`scalar::dequantize_rows`] for one or two channels (a segmentation's output, a
/// U-Net's residual sum at full resolution), 8 pixels per step with its operations:
/// (v - z) converted to f32 (exact), times s, then the two products' sum, never fused.
/// Its 256-entry tables cost two dependent loads a value and, with two channels, a
/// strided read: the U-Net's dequantise + add of 2 channels at 32³ took 51 us on a Zen 3
/// core. Other channel counts: the reference.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn dequantize_rows(a: &[u8], ta: &QTensor, b: Option<(&[u8], &QTensor)>, rows: &mut [&mut [f32]]) {
    let c = rows.len();
    let n = rows.first().map_or(0, |r| r.len());
    if !(c == 1 || c == 2) || rows.iter().any(|r| r.len() != n) {
        return scalar::dequantize_rows(a, ta, b, rows);
    }
    assert!(a.len() >= n * c && b.is_none_or(|(b, _)| b.len() >= n * c));
    let whole = n / 8 * 8;
    // Per 8 pixels of both sources: the channels' 8 values each, as i32.
    // Two channels: [p0c0 p0c1 p1c0 ...] -> [c0 x 8 | c1 x 8] by one byte shuffle.
    let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    let channels = |src: &[u8], i: usize| -> [__m256i; 2] {
        // SAFETY: c bytes a pixel of pixels i..i + 8 < whole <= n (the assert above).
        unsafe {
            if c == 1 {
                [_mm256_cvtepu8_epi32(_mm_loadl_epi64(src.as_ptr().add(i) as *const __m128i)), _mm256_setzero_si256()]
            } else {
                let v = _mm_shuffle_epi8(_mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i), split);
                [_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v))]
            }
        }
    };
    let deq = |v: __m256i, t: &QTensor| {
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(t.zp as i32))), _mm256_set1_ps(t.scale))
    };
    let mut i = 0;
    while i < whole {
        let va = channels(a, i);
        let vb = b.map(|(b, tb)| (channels(b, i), tb));
        for (ch, row) in rows.iter_mut().enumerate() {
            let mut f = deq(va[ch], ta);
            if let Some((vb, tb)) = vb {
                f = _mm256_add_ps(f, deq(vb[ch], tb));
            }
            // SAFETY: floats i..i + 8 <= whole of the row.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(i), f) };
        }
        i += 8;
    }
    // The last pixels (fewer than 8): the reference on them.
    let mut tail: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[whole..]).collect();
    scalar::dequantize_rows(&a[whole * c..], ta, b.map(|(b, tb)| (&b[whole * c..], tb)), &mut tail);
}

/// [`scalar::add_quantized`], 8 values per step with the reference's float operations
/// in its order: (x - z_a) s_a + (y - z_b) s_b (two products, then their sum, never
/// fused), / s_o (`vdivps`, correctly rounded as the reference's division). The
/// reference then rounds half to even, adds z_o and clamps to [0, 255] and to [lo, hi];
/// here the quotient is clamped to the bounds less z_o first (integers: the same
/// result, as in [`Lanes8::requantize`]), rounded half to even by `cvtps` and + z_o in
/// integers (12 vector operations per 8 values where the rounding trick took 17).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn add_quantized(a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, bounds: [u8; 2], out: &mut [u8]) {
    let n = out.len().min(a.len()).min(b.len());
    let whole = n / 8 * 8;
    let (za, zb) = (_mm256_set1_epi32(ta.zp as i32), _mm256_set1_epi32(tb.zp as i32));
    let (sa, sb, so) = (_mm256_set1_ps(ta.scale), _mm256_set1_ps(tb.scale), _mm256_set1_ps(to.scale));
    // The bounds less z_o: [0, 255] and [lo, hi] in one clamp, as the reference's
    // clamp to [0, 255], max(lo), min(hi) gives (hi wins where lo > hi).
    let zo = _mm256_set1_epi32(to.zp as i32);
    let (lo, hi) = (_mm256_set1_ps(bounds[0] as f32 - to.zp as f32), _mm256_set1_ps(bounds[1] as f32 - to.zp as f32));
    let mut i = 0;
    while i < whole {
        // SAFETY: i + 8 <= whole <= the three lengths: the 8-byte loads and the store.
        unsafe {
            let x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(a.as_ptr().add(i) as *const __m128i));
            let y = _mm256_cvtepu8_epi32(_mm_loadl_epi64(b.as_ptr().add(i) as *const __m128i));
            let vx = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(x, za)), sa);
            let vy = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(y, zb)), sb);
            let q = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_add_ps(vx, vy), so), lo), hi);
            store8(_mm256_add_epi32(_mm256_cvtps_epi32(q), zo), out.as_mut_ptr().add(i));
        }
        i += 8;
    }
    scalar::add_quantized(&a[whole..n], ta, &b[whole..n], tb, to, bounds, &mut out[whole..n]);
}

/// Grouped weights for [`grouped_sums`] (cin_g even): for each block of 8 output
/// channels, the first input pair its groups read (`p0`), and per pair p of a
/// group's inputs the dword permutation taking 8 pairs widened to i16 from there to
/// each channel's pair (`idx`: lane l reads pair (c / cout_g) cin_g / 2 + p - p0,
/// c = 8 b + l; lanes past cout read 0); weights [c/8][taps][cin_g/2][8][2] as i16
/// (zero padded), and Σw per channel for the zero-point correction.
#[derive(Debug, Clone)]
pub struct GroupPairs {
    cin_g: usize,
    taps: usize,
    p0: Vec<usize>,
    idx: Vec<[u32; 8]>,
    pairs: Vec<i16>,
    sums: Vec<i32>,
}

impl GroupPairs {
    /// `w` [cout][cin_g][taps] as ONNX stores it; None where cin_g is odd or a block's
    /// groups span more than 8 pairs (one 16-byte load).
    pub fn new(w: &[i8], cout: usize, cin_g: usize, cout_g: usize, taps: usize) -> Option<Self> {
        if !cin_g.is_multiple_of(2) || cout == 0 {
            return None;
        }
        let (blocks, np) = (cout.div_ceil(8), cin_g / 2);
        let first = |c: usize| (c / cout_g) * cin_g / 2;
        let mut p0 = Vec::with_capacity(blocks);
        let mut idx = Vec::with_capacity(blocks * np);
        for b in 0..blocks {
            let (c0, c1) = (b * 8, ((b + 1) * 8).min(cout));
            let base = first(c0);
            if first(c1 - 1) + np - base > 8 {
                return None;
            }
            p0.push(base);
            for p in 0..np {
                idx.push(std::array::from_fn(|l| if c0 + l < c1 { (first(c0 + l) + p - base) as u32 } else { 0 }));
            }
        }
        let mut pairs = vec![0i16; blocks * taps * np * 16];
        for c in 0..cout {
            let (b, lane) = (c / 8, c % 8);
            for t in 0..taps {
                for j in 0..cin_g {
                    pairs[(((b * taps + t) * np + j / 2) * 8 + lane) * 2 + j % 2] = w[(c * cin_g + j) * taps + t] as i16;
                }
            }
        }
        let sums = (0..cout).map(|c| w[c * cin_g * taps..(c + 1) * cin_g * taps].iter().map(|&v| v as i32).sum()).collect();
        Some(GroupPairs { cin_g, taps, p0, idx, pairs, sums })
    }
}

/// The int32 sums of a grouped conv with cin_g even (zero-point corrected, as the
/// scalar reference's): per tap and block of 8 output channels, one 16-byte load of
/// the input pixel from the block's first pair widened to i16, one `vpermd` per pair
/// of a group's inputs giving every channel its group's pair, one `vpmaddwd` (u8 x s8
/// products and their pair sums are exact in i32); zp x Σw subtracted once at the
/// end (the input zero-point padded into `scratch` first, so every tap is read).
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked here.)
#[target_feature(enable = "avx2")]
pub unsafe fn grouped_sums(x: &[u8], g: &ConvGeometry, zp: u8, w: &GroupPairs, scratch: &mut [u8], acc: &mut [i32]) {
    let (x, g) = padded_input(x, g, zp, scratch);
    let (cin, cout, taps, np) = (g.cin, w.sums.len(), w.taps, w.cin_g / 2);
    let blocks = cout.div_ceil(8);
    assert!(taps == g.kh * g.kw && w.p0.len() == blocks && w.idx.len() == blocks * np);
    assert!(w.pairs.len() >= blocks * taps * np * 16 && acc.len() >= g.oh * g.ow * cout);
    // Every block's pairs lie inside one pixel's cin bytes; the 16-byte load from the
    // last pixel's last block needs 16 bytes past that pixel's first read pair.
    assert!(
        w.p0.iter().all(|&p| 2 * p < cin) && x.len() >= (g.h * g.w - 1) * cin + 2 * w.p0[blocks - 1] + 16,
        "input needs slack past its end"
    );
    let zp = zp as i32;
    let corr: Vec<i32> = (0..blocks * 8).map(|c| if c < cout { zp.wrapping_mul(w.sums[c]) } else { 0 }).collect();
    let tap_off: Vec<usize> = (0..taps).map(|t| ((t / g.kw) * g.w + t % g.kw) * cin).collect();
    // SAFETY: `idx` holds blocks np vectors of 8 int32 (checked); loadu needs no alignment.
    let perms: Vec<__m256i> = w.idx.iter().map(|i| unsafe { _mm256_loadu_si256(i.as_ptr() as *const __m256i) }).collect();
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let mut sums = [0i32; 8];
    // Four neighbouring pixels of a row at a time: each weight load serves the four,
    // and the four sums are independent (escnn's C4 export's 4x4-grouped 24-channel
    // conv at 23x23, Xeon with `EDGEMED_INT8_ISA=avx2`: 34.9-37.6 -> 23.8-24.7 us, per-op
    // profiles, 3 alternations).
    for oy in 0..g.oh {
        let mut ox = 0;
        while ox < g.ow {
            let n = (g.ow - ox).min(4);
            for b in 0..blocks {
                // SAFETY: the 16-byte loads start at a tap's pixel (inside the h x w
                // input: the output geometry keeps receptive fields inside it; pixels
                // past the row's end repeat its last) plus 2 p0 < cin bytes: at most
                // the last pixel's + 2 p0[last], 16 bytes inside x (checked; p0 grows
                // with the block). Weights: block b's taps x np groups of 16 i16
                // inside `pairs` (checked); `perms` and `corr` are read below their
                // lengths (blocks np, blocks 8). The stores write the local `sums`, or
                // 8 int32 of pixel p's channels c0..c0 + 8 <= cout inside `acc`
                // (checked: oh ow cout). loadu/storeu need no alignment.
                unsafe {
                    let px: [*const u8; 4] =
                        std::array::from_fn(|j| x.as_ptr().add(((oy * sy) * g.w + (ox + j.min(n - 1)) * sx) * cin + 2 * w.p0[b]));
                    let wb = w.pairs.as_ptr().add(b * taps * np * 16);
                    let pb = &perms[b * np..(b + 1) * np];
                    let mut a = [_mm256_setzero_si256(); 4];
                    for (t, &off) in tap_off.iter().enumerate() {
                        let v: [__m256i; 4] =
                            std::array::from_fn(|j| _mm256_cvtepu8_epi16(_mm_loadu_si128(px[j].add(off) as *const __m128i)));
                        for (pi, &perm) in pb.iter().enumerate() {
                            let wv = _mm256_loadu_si256(wb.add((t * np + pi) * 16) as *const __m256i);
                            for (a, v) in a.iter_mut().zip(&v) {
                                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(_mm256_permutevar8x32_epi32(*v, perm), wv));
                            }
                        }
                    }
                    let c = _mm256_loadu_si256(corr.as_ptr().add(b * 8) as *const __m256i);
                    let (c0, nc) = (b * 8, (cout - b * 8).min(8));
                    for (j, a) in a.iter().enumerate().take(n) {
                        let p = oy * g.ow + ox + j;
                        let a = _mm256_sub_epi32(*a, c);
                        if nc == 8 {
                            _mm256_storeu_si256(acc.as_mut_ptr().add(p * cout + c0) as *mut __m256i, a);
                        } else {
                            _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, a);
                            acc[p * cout + c0..p * cout + c0 + nc].copy_from_slice(&sums[..nc]);
                        }
                    }
                }
            }
            ox += n;
        }
    }
}

/// The byte shuffles of [`gather_rows`] for kernels of `kh` <= 3 rows of `run` bytes
/// (kh run <= 32): byte p of a gathered row is byte p mod run of kernel row p / run,
/// zero from kh run on. The first shuffle reads registers [row 0 | row 1] (the low and
/// high 16 bytes), the second [row 1 | row 2]; 0x80 picks zero. `None` where a row's
/// bytes would need a lane they are not in: the low 16 bytes may come from rows 0
/// and 1 only (run >= 8), the high ones from rows 1 and 2 (run <= 16).
pub fn row_shuffles(kh: usize, run: usize) -> Option<[[u8; 32]; 2]> {
    if kh == 0 || kh > 3 || !(8..=16).contains(&run) || kh * run > 32 {
        return None;
    }
    let (mut first, mut second) = ([0x80u8; 32], [0x80u8; 32]);
    for (p, (f, s)) in first.iter_mut().zip(second.iter_mut()).enumerate().take(kh * run) {
        let (i, b) = (p / run, (p % run) as u8);
        // Low lane: row 0 from the first register, row 1 from the second; high lane:
        // row 1 from the first, row 2 from the second.
        if (p < 16 && i == 1) || (p >= 16 && i == 2) {
            *s = b;
        } else {
            *f = b;
        }
    }
    Some([first, second])
}

/// The gathered rows of the first `n` outputs of a run ([`super::Rows2::gather`]):
/// output j's row is, for each kernel row i, `run` bytes at `j step` of `rows[i]`,
/// one after another, then zeros to 32 bytes, as `masks` ([`row_shuffles`] of
/// rows.len() and run) lay them out. One 16-byte load from each kernel row, two
/// in-lane byte shuffles, one 32-byte store per output.
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked here.)
#[target_feature(enable = "avx2")]
pub unsafe fn gather_rows(rows: &[&[u8]], step: usize, masks: &[[u8; 32]; 2], n: usize, out: &mut [u8]) {
    let kh = rows.len();
    assert!((1..=3).contains(&kh) && out.len() >= 32 * n);
    // Output j loads 16 bytes from j step of each row.
    assert!(n == 0 || rows.iter().all(|r| r.len() >= (n - 1) * step + 16), "rows hold every output's load");
    // Kernel rows past kh load row kh - 1 again (their bytes are never picked).
    let p: [*const u8; 3] = std::array::from_fn(|i| rows[i.min(kh - 1)].as_ptr());
    // SAFETY: the masks are 32-byte arrays. Output j < n loads 16 bytes from j step of
    // each row, inside it (checked), and stores 32 bytes at 32 j, inside out (32 n,
    // checked). No alignment needed.
    unsafe {
        let (ma, mb) = (_mm256_loadu_si256(masks[0].as_ptr() as *const __m256i), _mm256_loadu_si256(masks[1].as_ptr() as *const __m256i));
        for j in 0..n {
            let o = j * step;
            let (r0, r1, r2) = (
                _mm_loadu_si128(p[0].add(o) as *const __m128i),
                _mm_loadu_si128(p[1].add(o) as *const __m128i),
                _mm_loadu_si128(p[2].add(o) as *const __m128i),
            );
            let a = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(r0), r1);
            let b = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(r1), r2);
            let v = _mm256_or_si256(_mm256_shuffle_epi8(a, ma), _mm256_shuffle_epi8(b, mb));
            _mm256_storeu_si256(out.as_mut_ptr().add(32 * j) as *mut __m256i, v);
        }
    }
}
