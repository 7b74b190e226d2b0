//! aarch64 NEON kernels, chosen at run time like the x86 ones: `neon` (every aarch64
//! CPU, e.g. the Raspberry Pi 4's Cortex-A72) and `neondot` (CPUs with the dot-product
//! extension: Cortex-A55/A76/A78 and later, Raspberry Pi 5, Jetson Orin). Dense
//! convolutions run as an implicit GEMM on the NHWC rows (no im2row) and depthwise 3x3
//! with its weights held in registers, both fused with requantisation, so each layer's
//! output is written once, as u8.
//!
//! Bits: the sums are exact integers, and requantisation is the scalar reference's
//! sequence of IEEE operations (multiply, then add: no fused multiply-add; round half
//! to even with `frintn`), so every kernel gives [`super::scalar`]'s bits.
//!
//! u8 x s8 products: plain NEON widens both to i16 and multiplies-accumulates into
//! i32 (`smlal`, exact). `sdot` multiplies s8 x s8 four at a time, so activations are
//! shifted by 128 (`x ^ 0x80` is x - 128 as s8) and 128 Σw is added back to the sum.
//! Stable Rust has no dot-product intrinsics (`stdarch_neon_dotprod` is unstable), so
//! `sdot` is one instruction of inline assembly.
//!
//! Layouts (packed once, for the chosen ISA): `neon` reads [`DenseWeights`]' i16
//! weights, `neondot` the quadruples of [`super::weights::pack_quads`] (shared with
//! VNNI) and [`DenseWeights`]' 128 Σw; depthwise kernels read [`super::arm::depthwise_layout`];
//! `neondot`'s grouped kernel ([`conv_grouped`]) [`GroupQuads`] (shared with VNNI).
//! NEON is part of the aarch64 baseline; the `unsafe fn`s here need only what their
//! `# Safety` sections say about memory (and `sdot` the dot-product extension, checked
//! by [`dense_checked`]).

use std::arch::aarch64::*;
use std::arch::asm;

use super::arm::{depthwise_bounds, depthwise_i32, gemm_in_place, Rows, DW};
use super::scalar::{self, quantize_u8};
use super::{padded_input, ConvGeometry, DepthwiseWeights, GroupQuads, PackedWeights, Requant, CBLOCK};
use super::{ConvKind, QTensor};

/// Whether this CPU has `sdot` (`neondot`); plain NEON is part of every aarch64 CPU.
pub fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The NEON layouts of a dense convolution's weights, built once with
/// [`PackedWeights::new`]: `mla` for `neon`, `sum128` for `neondot` (which reads
/// [`PackedWeights::quads`], whose blocks of 16 channels x 4 consecutive k are the
/// operands `sdot` by element wants); the other one empty.
#[derive(Debug, Clone, Default)]
pub struct DenseWeights {
    /// i16 weights for `smlal` by lane: blocks of 16 output channels, each kernel row
    /// in quadruples of k (zero padded), then k within the quadruple, then channel:
    /// [cout/16][kernel_rows][row_len/4][4][16].
    mla: Vec<i16>,
    /// 128 Σ_k w[c][k]: what the shifted activations of `sdot` leave out.
    sum128: Vec<i32>,
}

impl DenseWeights {
    /// `sdot`'s correction from Σ_k w[c][k].
    pub fn for_dot(sums: &[i32]) -> Self {
        DenseWeights { mla: Vec::new(), sum128: sums.iter().map(|&s| 128 * s).collect() }
    }

    /// The `smlal` layout of `rows`: [cout][kernel_rows * row_len], as
    /// [`PackedWeights::new`] takes them.
    pub fn new(rows: &[i8], cout: usize, kernel_rows: usize, row_len: usize) -> Self {
        let k = kernel_rows * row_len;
        let q4 = row_len.div_ceil(4);
        let mut mla = vec![0i16; cout.div_ceil(CBLOCK) * kernel_rows * q4 * 4 * CBLOCK];
        for c in 0..cout {
            let (b, lane) = (c / CBLOCK, c % CBLOCK);
            for i in 0..kernel_rows {
                for j in 0..row_len {
                    mla[(((b * kernel_rows + i) * q4 + j / 4) * 4 + j % 4) * CBLOCK + lane] = rows[c * k + i * row_len + j] as i16;
                }
            }
        }
        DenseWeights { mla, sum128: Vec::new() }
    }
}

/// Where a kernel writes: requantised u8, or the int32 sums (a conv whose output the
/// float tail takes; the `accumulate` and `gemm` dispatchers). Both [pixel][channel].
pub enum Out<'a> {
    U8(&'a Requant, &'a mut [u8]),
    I32(&'a mut [i32]),
}

#[derive(Clone, Copy)]
enum Dst {
    U8(*mut u8),
    I32(*mut i32),
}

/// Requantisation constants of 4 channels. `add` is the integer added to the sums
/// before they become float: minus the offset, plus the kernel's own correction.
#[derive(Clone, Copy)]
struct Quad4 {
    add: int32x4_t,
    mult: float32x4_t,
    bias: float32x4_t,
    lo: float32x4_t,
    hi: float32x4_t,
}

/// The constants of `n` channels in groups of 4, padded with zeros to a multiple of
/// `pad` channels (so that a kernel's last block reads whole groups). Integer terms
/// wrap like the scalar reference's i32 arithmetic in release builds.
fn quad_params(n: usize, pad: usize, r: Option<&Requant>, add: impl Fn(usize) -> i32) -> Vec<Quad4> {
    let len = n.div_ceil(pad) * pad;
    let a: Vec<i32> = (0..len)
        .map(|c| match (c < n, r) {
            (true, Some(r)) => add(c).wrapping_sub(r.offset[c]),
            (true, None) => add(c),
            _ => 0,
        })
        .collect();
    let per = |f: &dyn Fn(&Requant, usize) -> f32| -> Vec<f32> { (0..len).map(|c| r.filter(|_| c < n).map_or(0.0, |r| f(r, c))).collect() };
    let (m, b) = (per(&|r, c| r.mult[c]), per(&|r, c| r.bias[c]));
    let (lo, hi) = (per(&|r, c| r.lo[c] as f32), per(&|r, c| r.hi[c] as f32));
    (0..len)
        .step_by(4)
        // SAFETY: each load reads 4 lanes inside `len`, a multiple of 4.
        .map(|c| unsafe {
            Quad4 {
                add: vld1q_s32(a.as_ptr().add(c)),
                mult: vld1q_f32(m.as_ptr().add(c)),
                bias: vld1q_f32(b.as_ptr().add(c)),
                lo: vld1q_f32(lo.as_ptr().add(c)),
                hi: vld1q_f32(hi.as_ptr().add(c)),
            }
        })
        .collect()
}

/// clamp(round_half_even((acc + add) m + b) + z_y, lo, hi) for 4 channels, as
/// [`super::scalar::requantize`] computes it: `scvtf` rounds like `as
/// f32`, `fmul` then `fadd` (not `fmla`), `frintn` rounds half to even (the scalar
/// body's clamp to ±2^22 before rounding only touches values that saturate anyway).
#[inline(always)]
fn requant4(acc: int32x4_t, q: &Quad4, zp: float32x4_t) -> uint16x4_t {
    // SAFETY: NEON register operations only; NEON is part of the aarch64 baseline.
    unsafe {
        let v = vaddq_f32(vmulq_f32(vcvtq_f32_s32(vaddq_s32(acc, q.add)), q.mult), q.bias);
        let r = vaddq_f32(vrndnq_f32(v), zp);
        vmovn_u32(vcvtq_u32_f32(vminq_f32(vmaxq_f32(r, q.lo), q.hi)))
    }
}

/// Stores one pixel's sums of up to 16 channels (`NG` groups of 4, `nc` valid)
/// at element `at` of the destination, requantised or as int32.
///
/// # Safety
/// `dst` must be writable for `nc` (<= 4 NG) elements from element `at`, and `q` hold
/// NG entries (U8) or at least ceil(nc / 4) (I32).
#[inline(always)]
unsafe fn store<const NG: usize>(acc: &[int32x4_t; NG], q: &[Quad4], nc: usize, zp: float32x4_t, dst: Dst, at: usize) {
    // SAFETY: the caller vouches for the `nc` elements from `at`; an 8- or 16-byte store
    // is used only when `nc` is 8 or 16, fewer through local arrays. Unaligned stores.
    unsafe {
        match dst {
            Dst::U8(o) => {
                let mut h = [vdup_n_u16(0); 4];
                for ((h, &a), q) in h.iter_mut().zip(acc).zip(q) {
                    *h = requant4(a, q, zp);
                }
                let lo = vmovn_u16(vcombine_u16(h[0], h[1]));
                let o = o.add(at);
                if nc == 8 {
                    vst1_u8(o, lo);
                } else {
                    let bytes = vcombine_u8(lo, vmovn_u16(vcombine_u16(h[2], h[3])));
                    if nc == 16 {
                        vst1q_u8(o, bytes);
                    } else {
                        let mut t = [0u8; 16];
                        vst1q_u8(t.as_mut_ptr(), bytes);
                        std::ptr::copy_nonoverlapping(t.as_ptr(), o, nc);
                    }
                }
            }
            Dst::I32(o) => {
                for (g, (&a, q)) in acc.iter().zip(q).enumerate() {
                    let v = vaddq_s32(a, q.add);
                    let n = nc.saturating_sub(4 * g).min(4);
                    if n == 4 {
                        vst1q_s32(o.add(at + 4 * g), v);
                    } else if n > 0 {
                        let mut t = [0i32; 4];
                        vst1q_s32(t.as_mut_ptr(), v);
                        std::ptr::copy_nonoverlapping(t.as_ptr(), o.add(at + 4 * g), n);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The dispatchers' entry points

/// One convolution of the plan (see [`super::conv`]), on the zero-point padded input,
/// fused with requantisation; `dot`: `neondot`.
#[allow(clippy::too_many_arguments)]
pub fn conv(dot: bool, x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, r: &Requant, scratch: &mut [u8], out: &mut [u8]) {
    let (input, padded) = padded_input(x, g, zp, scratch);
    match kind {
        ConvKind::Dense(w) => conv_dense(dot, input, &padded, w, Out::U8(r, out)),
        ConvKind::Depthwise(w) => conv_depthwise(input, &padded, zp, w, Out::U8(r, out)),
        ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
    }
}

/// The int32 sums of a convolution (see [`super::accumulate`]), on the zero-point
/// padded input; `dot`: `neondot`.
pub fn accumulate(dot: bool, x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    let (input, padded) = padded_input(x, g, zp, scratch);
    match kind {
        ConvKind::Dense(w) => conv_dense(dot, input, &padded, w, Out::I32(acc)),
        ConvKind::Depthwise(w) => conv_depthwise(input, &padded, zp, w, Out::I32(acc)),
        ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
    }
}

// ---------------------------------------------------------------------------------
// Dense convolution / GEMM

/// Bytes read from the start of a kernel row: whole 8-byte loads of two quadruples
/// (`smlal`), or whole 16-byte loads of four (`sdot`). Past the row they meet zero
/// weights, or are not multiplied at all.
fn read_len(dot: bool, row_len: usize) -> usize {
    let q4 = row_len.div_ceil(4);
    if dot {
        16 * q4.div_ceil(4)
    } else {
        8 * q4.div_ceil(2)
    }
}

/// `sdot` by element: each int32 lane of `acc` += the dot product of its 4 bytes of
/// `w` (one channel, 4 consecutive k) with bytes 4L..4L+3 of `x` (one pixel's 4 k).
///
/// # Safety
/// The CPU must have the dot-product extension (`has_dotprod`).
#[inline(always)]
unsafe fn sdot<const L: u32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: one `sdot` on registers (no memory, stack or flags), on a CPU with the
    // dot-product extension (the caller's obligation).
    unsafe {
        let mut a = acc;
        asm!(
            ".arch_extension dotprod",
            "sdot {a:v}.4s, {w:v}.16b, {x:v}.4b[{l}]",
            a = inout(vreg) a,
            w = in(vreg) w,
            x = in(vreg) x,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
        a
    }
}

/// Sums of PT pixels x NG groups of 4 channels with `sdot`: per 16 bytes of a kernel
/// row, one load per pixel and one per 4 channels x 4 k; 4 NG PT `sdot`s.
///
/// # Safety
/// The CPU must have the dot-product extension; each `px[t]` must be readable for
/// (kh - 1) row_stride + 16 ceil(q4 / 4) bytes ([`read_len`]), and `wb` for kh q4 64 bytes.
#[inline(always)]
unsafe fn tile_dot<const NG: usize, const PT: usize>(
    px: &[*const u8; PT],
    wb: *const i8,
    kh: usize,
    q4: usize,
    row_stride: usize,
) -> [[int32x4_t; NG]; PT] {
    // SAFETY: the 16-byte loads of the pixels start at px[t] + i row_stride + 4 kk with
    // kk < q4 in steps of 4, those of the weights at wb + (i q4 + kk + l) 64 + 16 g with
    // kk + l < q4: inside what the caller vouches for; `sdot` likewise.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); NG]; PT];
        let flip = vdupq_n_u8(0x80);
        for i in 0..kh {
            let wr = wb.add(i * q4 * 64);
            let off = i * row_stride;
            let mut kk = 0;
            while kk < q4 {
                let xs: [int8x16_t; PT] = std::array::from_fn(|t| vreinterpretq_s8_u8(veorq_u8(vld1q_u8(px[t].add(off + kk * 4)), flip)));
                let wq = wr.add(kk * 64);
                macro_rules! quad {
                    ($l:literal) => {
                        for g in 0..NG {
                            let w = vld1q_s8(wq.add($l * 64 + g * 16));
                            for (a, &x) in acc.iter_mut().zip(&xs) {
                                a[g] = sdot::<$l>(a[g], w, x);
                            }
                        }
                    };
                }
                quad!(0);
                if kk + 1 < q4 {
                    quad!(1);
                }
                if kk + 2 < q4 {
                    quad!(2);
                }
                if kk + 3 < q4 {
                    quad!(3);
                }
                kk += 4;
            }
        }
        acc
    }
}

/// The same with `smlal` by lane: per two quadruples of k, one 8-byte load per
/// pixel widened to i16, and per k one i16x4 of weights times that k of each pixel.
///
/// # Safety
/// Each `px[t]` must be readable for (kh - 1) row_stride + 8 ceil(q4 / 2) bytes
/// ([`read_len`]), and `wb` for kh q4 64 i16.
#[inline(always)]
unsafe fn tile_mla<const NG: usize, const PT: usize>(
    px: &[*const u8; PT],
    wb: *const i16,
    kh: usize,
    q4: usize,
    row_stride: usize,
) -> [[int32x4_t; NG]; PT] {
    // SAFETY: the 8-byte loads of the pixels start at px[t] + i row_stride + 4 kk with
    // kk < q4 in steps of 2, those of the weights (4 i16) at wb + (i q4 + kk) 64 + 16 l + 4 g
    // with l < 4, or l < 8 when kk + 1 < q4: inside what the caller vouches for.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); NG]; PT];
        for i in 0..kh {
            let wr = wb.add(i * q4 * 64);
            let off = i * row_stride;
            let mut kk = 0;
            while kk < q4 {
                let xs: [int16x8_t; PT] = std::array::from_fn(|t| vreinterpretq_s16_u16(vmovl_u8(vld1_u8(px[t].add(off + kk * 4)))));
                // k = kk*4 + l: its 16 channels' weights start at wq + 16 l (the next
                // quadruple's right after this one's).
                let wq = wr.add(kk * 64);
                macro_rules! k {
                    ($l:literal) => {
                        for g in 0..NG {
                            let w = vld1_s16(wq.add($l * 16 + g * 4));
                            for (a, &x) in acc.iter_mut().zip(&xs) {
                                a[g] = vmlal_laneq_s16::<$l>(a[g], w, x);
                            }
                        }
                    };
                }
                k!(0);
                k!(1);
                k!(2);
                k!(3);
                if kk + 1 < q4 {
                    k!(4);
                    k!(5);
                    k!(6);
                    k!(7);
                }
                kk += 2;
            }
        }
        acc
    }
}

/// Everything a dense kernel call needs besides the tile shape.
struct DenseJob<'a> {
    x: *const u8,
    rows: Rows,
    w: &'a PackedWeights,
    q4: usize,
    dst: Dst,
    q: &'a [Quad4],
    zp: float32x4_t,
}

/// One block of up to 16 output channels (`NG` groups of 4) for the pixel tile `px`
/// starting at pixel `p`.
///
/// # Safety
/// `j` and `px` as [`dense`] builds them (its obligations hold), `p` < pixels, `b` a
/// block of `j.w`, and the weights of the job's kind (quads for DOT, `mla` otherwise) laid out.
#[inline(always)]
unsafe fn dense_block<const DOT: bool, const NG: usize, const PT: usize>(j: &DenseJob, px: &[*const u8; PT], p: usize, b: usize) {
    // SAFETY: block b's weights start at b kh q4 64 elements of the layout, whose blocks
    // are checked by `dense_checked`; the tile reads and the stores stay inside what `dense`
    // vouches for.
    unsafe {
        let (w, kh) = (j.w, j.w.kernel_rows);
        let at = b * kh * j.q4 * 64;
        let acc = if DOT {
            tile_dot::<NG, PT>(px, w.quads.as_ptr().add(at), kh, j.q4, j.rows.row_stride)
        } else {
            tile_mla::<NG, PT>(px, w.neon.mla.as_ptr().add(at), kh, j.q4, j.rows.row_stride)
        };
        let nc = (w.cout - b * CBLOCK).min(CBLOCK);
        for (t, a) in acc.iter().enumerate().take(j.rows.pixels - p) {
            store::<NG>(a, &j.q[b * 4..], nc, j.zp, j.dst, (p + t) * w.cout + b * CBLOCK);
        }
    }
}

/// Tiles of PT pixels (past the end: the last pixel again, computed and not stored),
/// each through every block of output channels; the last block may be 1 to 4 groups
/// of 4 channels wide (cout 4, 8, 24, ... waste no lanes).
///
/// # Safety
/// `j.x` must be readable up to rows.base(pixels - 1) + (kernel_rows - 1) row_stride +
/// `read_len(DOT, row_len)`; `j.dst` writable for pixels x cout elements; `j.q` cover cout
/// rounded up to 16 channels; the weights hold the layout DOT reads (`dense_checked` checks
/// all of it); DOT only on a CPU with the dot-product extension.
unsafe fn dense<const DOT: bool, const PT: usize>(j: &DenseJob) {
    // SAFETY: every tile's pixels are below `pixels` (past the end: the last one again),
    // so their reads stay inside what the caller vouches for; stores only for pixels below
    // `pixels`.
    unsafe {
        let (pixels, cout) = (j.rows.pixels, j.w.cout);
        let mut p = 0;
        while p < pixels {
            let px: [*const u8; PT] = std::array::from_fn(|t| j.x.add(j.rows.base((p + t).min(pixels - 1))));
            for b in 0..cout.div_ceil(CBLOCK) {
                match (cout - b * CBLOCK).min(CBLOCK).div_ceil(4) {
                    1 => dense_block::<DOT, 1, PT>(j, &px, p, b),
                    2 => dense_block::<DOT, 2, PT>(j, &px, p, b),
                    // Up to 16 accumulators: wide blocks only in tiles of 4 pixels.
                    3 if PT <= 4 => dense_block::<DOT, 3, PT>(j, &px, p, b),
                    _ if PT <= 4 => dense_block::<DOT, 4, PT>(j, &px, p, b),
                    _ => unreachable!("blocks wider than 8 channels use 4-pixel tiles"),
                }
            }
            p += PT;
        }
    }
}

/// Checks the reads and writes of a dense kernel on `rows` of `x`, then runs it.
fn dense_checked(dot: bool, x: &[u8], rows: Rows, w: &PackedWeights, out: Out) {
    let cout = w.cout;
    if rows.pixels == 0 || cout == 0 {
        return;
    }
    assert!(!dot || has_dotprod(), "sdot needs the dot-product extension");
    let q4 = w.row_len.div_ceil(4);
    // `sdot` reads the quadruples, `smlal` the i16 layout: as many elements.
    let packed = if dot { w.quads.len() } else { w.neon.mla.len() };
    assert!(w.kernel_rows >= 1 && packed >= cout.div_ceil(CBLOCK) * w.kernel_rows * q4 * 64, "weights packed for another ISA");
    assert!(!dot || w.neon.sum128.len() >= cout, "weights packed for another ISA");
    let reach = rows.base(rows.pixels - 1) + (w.kernel_rows - 1) * rows.row_stride + read_len(dot, w.row_len);
    assert!(x.len() >= reach, "input needs slack past its end");
    let correction = |c: usize| if dot { w.neon.sum128[c] } else { 0 };
    let (dst, q, zp) = match out {
        Out::U8(r, o) => {
            assert!(o.len() >= rows.pixels * cout && r.mult.len() == cout);
            (Dst::U8(o.as_mut_ptr()), quad_params(cout, CBLOCK, Some(r), correction), r.out_zp)
        }
        Out::I32(o) => {
            assert!(o.len() >= rows.pixels * cout);
            (Dst::I32(o.as_mut_ptr()), quad_params(cout, CBLOCK, None, correction), 0.0)
        }
    };
    // SAFETY: reads stay below `reach` (checked), writes below pixels x cout (checked);
    // `sdot` runs only where the CPU has it (checked).
    unsafe {
        let j = DenseJob { x: x.as_ptr(), rows, w, q4, dst, q: &q, zp: vdupq_n_f32(zp) };
        // Narrow layers (one block of 4 or 8 channels): 8 pixels per tile keep 8 or 16
        // independent accumulators in flight.
        match (dot, cout <= 8) {
            (true, true) => dense::<true, 8>(&j),
            (true, false) => dense::<true, 4>(&j),
            (false, true) => dense::<false, 8>(&j),
            (false, false) => dense::<false, 4>(&j),
        }
    }
}

/// Dense convolution on an unpadded (or zero-point padded) NHWC input as an implicit
/// GEMM: each kernel row (kw x cin bytes, contiguous in NHWC) is read straight from
/// `x`, so there is no im2row; pointwise is the case kh = kw = 1. U8 output is fused
/// with requantisation. `x` needs up to 15 bytes of slack past its data.
pub fn conv_dense(dot: bool, x: &[u8], g: &ConvGeometry, w: &PackedWeights, out: Out) {
    assert!(g.pads == [0; 4] && w.kernel_rows == g.kh && w.row_len == g.kw * g.cin);
    dense_checked(dot, x, Rows::of_conv(g), w, out)
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for contiguous rows of `x` (no slack needed).
pub fn gemm(dot: bool, x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    let reach = (w.kernel_rows - 1) * w.row_len + read_len(dot, w.row_len);
    gemm_in_place(x, pixels, w, acc, reach, |x, rows, acc| dense_checked(dot, x, rows, w, Out::I32(acc)))
}

// ---------------------------------------------------------------------------------
// Depthwise convolution

/// 8 channels of one input pixel, widened to i16.
///
/// # Safety
/// `p` must be readable for 8 bytes.
#[inline(always)]
unsafe fn widen8(p: *const u8) -> int16x8_t {
    // SAFETY: an unaligned 8-byte load the caller vouches for.
    unsafe { vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p))) }
}

/// acc += x w for 8 channels (i16 x i16 into i32: exact) as `smlal` + `smlal2`. In
/// inline assembly because LLVM rewrites `vmlal_s16`/`vmlal_high_s16` here: on
/// zero-extended bytes into 32-bit `mla`s on operands widened twice, and with the
/// weights' high halves hoisted out of the loop into `ext` + `smlal`, spilling.
#[inline(always)]
fn mla8(acc: &mut [int32x4_t; 2], x: int16x8_t, w: int16x8_t) {
    // SAFETY: two baseline NEON instructions on registers (no memory, stack or flags).
    unsafe {
        asm!(
            "smlal {lo:v}.4s, {x:v}.4h, {w:v}.4h",
            "smlal2 {hi:v}.4s, {x:v}.8h, {w:v}.8h",
            lo = inout(vreg) acc[0],
            hi = inout(vreg) acc[1],
            x = in(vreg) x,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
}

/// What every row of a depthwise call shares.
struct DwJob<'a> {
    g: &'a ConvGeometry,
    row_stride: usize,
    zp_out: float32x4_t,
    dst: Dst,
}

/// One block of 8 channels of one output row: input, weights, requantisation
/// constants, valid channels and the output element of its first pixel.
struct DwRow<'a> {
    x: *const u8,
    w: *const i16,
    q: &'a [Quad4],
    nc: usize,
    at: usize,
}

/// PT adjacent output pixels of a 3x3 depthwise conv with horizontal stride S, for 8
/// channels: each input pixel of a kernel row is loaded and widened once and used by
/// every output pixel that covers it ((PT-1) S + 3 loads per row instead of 3 PT).
///
/// # Safety
/// For each kernel row i < 3, `p` + i row_stride must be readable for ((PT - 1) S + 2) c + 8
/// bytes.
#[inline(always)]
unsafe fn dw3x3_tile<const S: usize, const PT: usize>(j: &DwJob, p: *const u8, w: &[int16x8_t; 9]) -> [[int32x4_t; 2]; PT] {
    // SAFETY: the loads are those the caller vouches for.
    unsafe {
        let c = j.g.cin;
        let mut acc = [[vdupq_n_s32(0); 2]; PT];
        for i in 0..3 {
            let r = p.add(i * j.row_stride);
            let mut cols = [vdupq_n_s16(0); 9];
            for (k, col) in cols.iter_mut().enumerate().take((PT - 1) * S + 3) {
                *col = widen8(r.add(k * c));
            }
            for (t, a) in acc.iter_mut().enumerate() {
                for k in 0..3 {
                    mla8(a, cols[t * S + k], w[i * 3 + k]);
                }
            }
        }
        acc
    }
}

/// One output row of a 3x3 depthwise conv for one block of 8 channels, with the nine
/// taps' weights in registers; 4 output pixels at a time, then one by one.
///
/// # Safety
/// As [`dw_row_generic`], for a 3x3 kernel with horizontal stride S.
#[inline(always)]
unsafe fn dw3x3_row<const S: usize>(j: &DwJob, r: &DwRow) {
    // SAFETY: tiles of 4 pixels while 4 fit in the row, then single pixels: each reads the
    // receptive fields of output pixels below ow (plus 8 bytes), which the caller vouches for;
    // `store` writes the block's channels of those pixels.
    unsafe {
        let c = j.g.cin;
        let wv: [int16x8_t; 9] = std::array::from_fn(|t| vld1q_s16(r.w.add(t * DW)));
        let mut ox = 0;
        while ox + 4 <= j.g.ow {
            let acc = dw3x3_tile::<S, 4>(j, r.x.add(ox * S * c), &wv);
            for (t, a) in acc.iter().enumerate() {
                store::<2>(a, r.q, r.nc, j.zp_out, j.dst, r.at + (ox + t) * c);
            }
            ox += 4;
        }
        while ox < j.g.ow {
            let [a] = dw3x3_tile::<S, 1>(j, r.x.add(ox * S * c), &wv);
            store::<2>(&a, r.q, r.nc, j.zp_out, j.dst, r.at + ox * c);
            ox += 1;
        }
    }
}

/// Any other kernel size or stride: one output pixel at a time, taps from memory.
///
/// # Safety
/// `r.x` must be readable through the receptive fields of the output row's ow pixels
/// (for this block of channels) plus 8 bytes, `r.w` hold the block's taps x 8 weights, and
/// `j.dst` be writable for the block's `r.nc` channels of each of the row's pixels from `r.at`.
unsafe fn dw_row_generic(j: &DwJob, r: &DwRow) {
    // SAFETY: the loads and stores are those the caller vouches for.
    unsafe {
        let (g, c) = (j.g, j.g.cin);
        for ox in 0..g.ow {
            let p = r.x.add(ox * g.stride[1] * c);
            let mut acc = [vdupq_n_s32(0); 2];
            for i in 0..g.kh {
                for k in 0..g.kw {
                    mla8(&mut acc, widen8(p.add(i * j.row_stride + k * c)), vld1q_s16(r.w.add((i * g.kw + k) * DW)));
                }
            }
            store::<2>(&acc, r.q, r.nc, j.zp_out, j.dst, r.at + ox * c);
        }
    }
}

/// Depthwise convolution on an unpadded (or zero-point padded) NHWC input: Σ x w over
/// every tap, then zp Σw subtracted (exact; padding, being zp, adds 0 as in the
/// scalar reference), fused with requantisation for U8 output. Output rows outer,
/// channel blocks inner: the input rows of an output row are reused from cache by
/// every block. Reads up to 7 bytes past the last pixel.
fn depthwise_checked(x: &[u8], g: &ConvGeometry, zp: u8, w16: &[i16], sums: &[i32], out: Out) {
    let c = g.cin;
    let Some((taps, blocks)) = depthwise_bounds(x, g, w16, sums) else { return };
    let correction = |ch: usize| (zp as i32).wrapping_mul(sums[ch]).wrapping_neg();
    let n = g.oh * g.ow * c;
    let (dst, q, zp_out) = match out {
        Out::U8(r, o) => {
            assert!(o.len() >= n && r.mult.len() == c);
            (Dst::U8(o.as_mut_ptr()), quad_params(c, DW, Some(r), correction), r.out_zp)
        }
        Out::I32(o) => {
            assert!(o.len() >= n);
            (Dst::I32(o.as_mut_ptr()), quad_params(c, DW, None, correction), 0.0)
        }
    };
    let three = g.kh == 3 && g.kw == 3;
    // SAFETY: every receptive field lies inside the h x w input, and each 8-byte load
    // starts at most at the last pixel's last block (checked above); writes stay
    // inside oh x ow x c (checked).
    unsafe {
        let j = DwJob { g, row_stride: g.w * c, zp_out: vdupq_n_f32(zp_out), dst };
        for oy in 0..g.oh {
            let row = x.as_ptr().add(oy * g.stride[0] * g.w * c);
            for b in 0..blocks {
                let r = DwRow {
                    x: row.add(b * DW),
                    w: w16.as_ptr().add(b * taps * DW),
                    q: &q[b * 2..b * 2 + 2],
                    nc: (c - b * DW).min(DW),
                    at: oy * g.ow * c + b * DW,
                };
                match g.stride[1] {
                    1 if three => dw3x3_row::<1>(&j, &r),
                    2 if three => dw3x3_row::<2>(&j, &r),
                    _ => dw_row_generic(&j, &r),
                }
            }
        }
    }
}

/// The fused depthwise convolution of the engine (`conv` dispatcher).
pub fn conv_depthwise(x: &[u8], g: &ConvGeometry, zp: u8, w: &DepthwiseWeights, out: Out) {
    assert!(w.taps == g.kh * g.kw && w.c == g.cin);
    depthwise_checked(x, g, zp, &w.neon, &w.sums, out)
}

/// The `depthwise` dispatcher's contract: `w` [taps][c] as i32, `x` with padding
/// and no slack. Pads a copy (with slack) and lays the weights out for NEON; weights
/// beyond i16 (never from s8 models) go to the scalar reference.
pub fn depthwise(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    depthwise_i32(x, g, zp, w, acc, |x, g, w, sums, acc| depthwise_checked(x, g, zp, w, sums, Out::I32(acc)))
}

// ---------------------------------------------------------------------------------
// Grouped convolution (`sdot`)

/// `sdot` by vector: each int32 lane of `acc` += the dot product of its 4 bytes of `w`
/// with its 4 bytes of `x`.
///
/// # Safety
/// The CPU must have the dot-product extension (`has_dotprod`).
#[inline(always)]
unsafe fn sdot_vec(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: one `sdot` on registers (no memory, stack or flags), on a CPU with the
    // dot-product extension (the caller's obligation).
    unsafe {
        let mut a = acc;
        asm!(
            ".arch_extension dotprod",
            "sdot {a:v}.4s, {w:v}.16b, {x:v}.16b",
            a = inout(vreg) a,
            w = in(vreg) w,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags)
        );
        a
    }
}

/// Grouped convolution fused with requantisation with `sdot`, cin_g a multiple of 4
/// (the VNNI kernel's scheme): per tap and block of 16 output channels, one 64-byte
/// load of the input pixel from the block's first dword (bytes flipped to x - 128 as
/// s8), per 4 channels and quadruple of a group's inputs one `tbl` of those 4
/// registers giving each channel its group's 4 bytes, one `sdot`; (128 - zp) Σw
/// added once at the end (the input zero-point padded into `scratch` first, so every
/// tap is read).
pub fn conv_grouped(x: &[u8], g: &ConvGeometry, zp: u8, w: &GroupQuads, r: &Requant, scratch: &mut [u8], out: &mut [u8]) {
    assert!(has_dotprod(), "sdot kernels on a CPU without the dot-product extension");
    let (x, g) = padded_input(x, g, zp, scratch);
    let (cin, cout, taps, q4) = (g.cin, w.sums.len(), w.taps, w.cin_g / 4);
    let blocks = cout.div_ceil(CBLOCK);
    assert!(taps == g.kh * g.kw && w.d0.len() == blocks && w.idx.len() == blocks * q4);
    assert!(w.quads.len() >= blocks * taps * q4 * 64 && r.mult.len() == cout && out.len() >= g.oh * g.ow * cout);
    assert!(
        w.d0.iter().all(|&d| 4 * d < cin) && x.len() >= (g.h * g.w - 1) * cin + 4 * w.d0[blocks - 1] + 64,
        "input needs slack past its end"
    );
    let q = quad_params(cout, CBLOCK, Some(r), |c| (128 - zp as i32).wrapping_mul(w.sums[c]));
    // Byte 4l + k of table (b q4 + qi) 4 + gi: byte k of the dword channel 16 b + 4 gi + l reads.
    let tables: Vec<[u8; 16]> =
        w.idx.iter().flat_map(|i| (0..4).map(move |gi| std::array::from_fn(|n| (4 * i[4 * gi + n / 4] + n as u32 % 4) as u8))).collect();
    let tap_off: Vec<usize> = (0..taps).map(|t| ((t / g.kw) * g.w + t % g.kw) * cin).collect();
    let (sy, sx) = (g.stride[0], g.stride[1]);
    // SAFETY: the 64-byte loads start at a tap's pixel (inside the h x w input: the
    // output geometry keeps receptive fields inside it) plus 4 d0 < cin bytes: at most
    // the last pixel's + 4 d0[last], 64 bytes inside x (checked; d0 grows with the
    // block). Weights: block b's taps x q4 64-byte groups inside `quads` (checked);
    // `tables` holds blocks q4 4 entries. Stores: the block's channels below cout of
    // one output pixel inside `out` (checked); `q` holds 4 entries per block. `sdot`
    // needs the dot-product extension (checked above).
    unsafe {
        let tbl: Vec<uint8x16_t> = tables.iter().map(|t| vld1q_u8(t.as_ptr())).collect();
        let flip = vdupq_n_u8(0x80);
        let zp_out = vdupq_n_f32(r.out_zp);
        let dst = Dst::U8(out.as_mut_ptr());
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let px = x.as_ptr().add(((oy * sy) * g.w + ox * sx) * cin);
                let at = (oy * g.ow + ox) * cout;
                for b in 0..blocks {
                    let pb = px.add(4 * w.d0[b]);
                    let wb = w.quads.as_ptr().add(b * taps * q4 * 64);
                    let tb = &tbl[b * q4 * 4..(b + 1) * q4 * 4];
                    let mut acc = [vdupq_n_s32(0); 4];
                    for (t, &off) in tap_off.iter().enumerate() {
                        let v = vld1q_u8_x4(pb.add(off));
                        let v = uint8x16x4_t(veorq_u8(v.0, flip), veorq_u8(v.1, flip), veorq_u8(v.2, flip), veorq_u8(v.3, flip));
                        for qi in 0..q4 {
                            let wq = wb.add((t * q4 + qi) * 64);
                            for (gi, a) in acc.iter_mut().enumerate() {
                                let xq = vreinterpretq_s8_u8(vqtbl4q_u8(v, tb[qi * 4 + gi]));
                                *a = sdot_vec(*a, vld1q_s8(wq.add(gi * 16)), xq);
                            }
                        }
                    }
                    let nc = (cout - b * CBLOCK).min(CBLOCK);
                    store::<4>(&acc, &q[b * 4..b * 4 + 4], nc, zp_out, dst, at + b * CBLOCK);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Requantisation, input quantisation, quantised Add

/// 8 channels of [`requant4`] narrowed to bytes.
///
/// # Safety
/// `a` must be readable for 8 i32.
#[inline(always)]
unsafe fn requant8(a: *const i32, q: &[Quad4], zp: float32x4_t) -> uint8x8_t {
    // SAFETY: an unaligned read of 8 i32 the caller vouches for; `q` is a checked slice.
    unsafe { vmovn_u16(vcombine_u16(requant4(vld1q_s32(a), &q[0], zp), requant4(vld1q_s32(a.add(4)), &q[1], zp))) }
}

/// The standalone requantisation (the fused kernels do not need it): 8 channels per
/// step; the last few through a zero-padded copy, with the same instructions.
pub fn requantize(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    if cout == 0 {
        return;
    }
    let q = quad_params(cout, 8, Some(r), |_| 0);
    let full = cout / 8 * 8;
    // SAFETY: loads and stores of 8 stay inside one pixel's `cout` channels (or the
    // local copies); `q` covers cout rounded up to 8.
    unsafe {
        let zp = vdupq_n_f32(r.out_zp);
        for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
            for c in (0..full).step_by(8) {
                vst1_u8(o.as_mut_ptr().add(c), requant8(a.as_ptr().add(c), &q[c / 4..], zp));
            }
            if full < cout {
                let mut t = [0i32; 8];
                t[..cout - full].copy_from_slice(&a[full..]);
                let mut b = [0u8; 8];
                vst1_u8(b.as_mut_ptr(), requant8(t.as_ptr(), &q[full / 4..], zp));
                o[full..].copy_from_slice(&b[..cout - full]);
            }
        }
    }
}

/// ONNX QuantizeLinear of 4 floats to u32 lanes, as [`quantize_u8`]: `fdiv`, round
/// half to even, + zero point, clamp to 0..255 (`fmax`/`fmin` keep NaN as the scalar
/// clamp does; both then convert it to 0).
#[inline(always)]
fn quant4(v: float32x4_t, scale: float32x4_t, zp: float32x4_t) -> uint32x4_t {
    // SAFETY: NEON register operations only; NEON is part of the aarch64 baseline.
    unsafe {
        let q = vaddq_f32(vrndnq_f32(vdivq_f32(v, scale)), zp);
        vcvtq_u32_f32(vminq_f32(vmaxq_f32(q, vdupq_n_f32(0.0)), vdupq_n_f32(255.0)))
    }
}

#[inline(always)]
fn narrow16(q: [uint32x4_t; 4]) -> uint8x16_t {
    // SAFETY: NEON register operations only; NEON is part of the aarch64 baseline.
    unsafe {
        let lo = vmovn_u16(vcombine_u16(vmovn_u32(q[0]), vmovn_u32(q[1])));
        vcombine_u8(lo, vmovn_u16(vcombine_u16(vmovn_u32(q[2]), vmovn_u32(q[3]))))
    }
}

/// The model input: float NCHW quantised into u8 NHWC, 16 pixels at a time, for up
/// to 4 channels (interleaved by `st2`/`st3`/`st4`); more channels (or short slices)
/// through the portable loop.
pub fn quantize_nchw_to_nhwc(x: &[f32], stride: usize, t: &QTensor, out: &mut [u8]) {
    let (hw, c) = (t.h * t.w, t.c);
    if !(1..=4).contains(&c) || stride < hw || x.len() < (c - 1) * stride + hw || out.len() < c * hw {
        return scalar::quantize_nchw_to_nhwc(x, stride, t, out);
    }
    let full = hw / 16 * 16;
    // SAFETY: 16 floats from each plane (channel ch from ch stride, inside
    // (c - 1) stride + hw, checked) and 16 c bytes of output per step, inside c x hw
    // (checked).
    unsafe {
        let (s, z) = (vdupq_n_f32(t.scale), vdupq_n_f32(t.zp as f32));
        for i in (0..full).step_by(16) {
            let plane = |ch: usize| {
                let p = x.as_ptr().add(ch * stride + i);
                narrow16(std::array::from_fn(|j| quant4(vld1q_f32(p.add(4 * j)), s, z)))
            };
            let o = out.as_mut_ptr().add(i * c);
            match c {
                1 => vst1q_u8(o, plane(0)),
                2 => vst2q_u8(o, uint8x16x2_t(plane(0), plane(1))),
                3 => vst3q_u8(o, uint8x16x3_t(plane(0), plane(1), plane(2))),
                _ => vst4q_u8(o, uint8x16x4_t(plane(0), plane(1), plane(2), plane(3))),
            }
        }
    }
    for p in full..hw {
        for ch in 0..c {
            out[p * c + ch] = quantize_u8(x[ch * stride + p], t.scale, t.zp);
        }
    }
}

/// 16 elements of the quantised Add: (x - z_a) s_a + (y - z_b) s_b as two `fmul`s
/// and one `fadd` (no `fmla`), then QuantizeLinear.
#[inline(always)]
fn add16(a: uint8x16_t, b: uint8x16_t, ta: &QTensor, tb: &QTensor, to: &QTensor) -> uint8x16_t {
    // SAFETY: NEON register operations only; NEON is part of the aarch64 baseline.
    unsafe {
        let f = |v: uint8x16_t, t: &QTensor| -> [float32x4_t; 4] {
            let (lo, hi) = (vmovl_u8(vget_low_u8(v)), vmovl_high_u8(v));
            let z = vdupq_n_s32(t.zp as i32);
            let s = vdupq_n_f32(t.scale);
            [vmovl_u16(vget_low_u16(lo)), vmovl_high_u16(lo), vmovl_u16(vget_low_u16(hi)), vmovl_high_u16(hi)]
                .map(|u| vmulq_f32(vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(u), z)), s))
        };
        let (fa, fb) = (f(a, ta), f(b, tb));
        let (s, z) = (vdupq_n_f32(to.scale), vdupq_n_f32(to.zp as f32));
        narrow16(std::array::from_fn(|j| quant4(vaddq_f32(fa[j], fb[j]), s, z)))
    }
}

/// QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b)), 16 elements per step;
/// the last few through zero-padded copies, with the same instructions.
pub fn add_quantized(a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, [lo, hi]: [u8; 2], out: &mut [u8]) {
    let n = out.len().min(a.len()).min(b.len());
    let full = n / 16 * 16;
    // SAFETY: 16-byte loads and stores inside the first `n` elements, or local copies.
    unsafe {
        let (lo, hi) = (vdupq_n_u8(lo), vdupq_n_u8(hi));
        let add = |x: uint8x16_t, y: uint8x16_t| vminq_u8(vmaxq_u8(add16(x, y, ta, tb, to), lo), hi);
        for i in (0..full).step_by(16) {
            vst1q_u8(out.as_mut_ptr().add(i), add(vld1q_u8(a.as_ptr().add(i)), vld1q_u8(b.as_ptr().add(i))));
        }
        if full < n {
            let (mut x, mut y, mut o) = ([0u8; 16], [0u8; 16], [0u8; 16]);
            x[..n - full].copy_from_slice(&a[full..n]);
            y[..n - full].copy_from_slice(&b[full..n]);
            vst1q_u8(o.as_mut_ptr(), add(vld1q_u8(x.as_ptr()), vld1q_u8(y.as_ptr())));
            out[full..n].copy_from_slice(&o[..n - full]);
        }
    }
}
