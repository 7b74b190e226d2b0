//! 32-bit ARM (armv7, e.g. a Raspberry Pi 2/3/4 on a 32-bit OS) NEON kernels, chosen
//! at run time (`armv7neon`) when the kernel reports NEON in AT_HWCAP: the
//! dense/pointwise convolutions as an implicit GEMM on the NHWC rows (no im2row),
//! depthwise convolutions (3x3 with stride 1 or 2 sharing each loaded input column
//! between four output pixels), and requantisation. Dense and depthwise kernels
//! compute int32 sums for a few pixels into a small buffer that the requantisation
//! kernel turns into u8 while it is still in L1.
//!
//! Bits: u8 and s8 are widened to i16 and multiplied-accumulated into i32 (`vmlal.s16`:
//! exact, wrapping like the scalar reference's i32 arithmetic in release builds).
//! Requantisation is the scalar reference's sequence of float operations: `vcvt`
//! (round to nearest, as `as f32`), `vmul` then `vadd` (no fused multiply-add), the
//! clamp to ±2^22 and the 1.5 x 2^23 rounding trick (NEON always rounds to nearest
//! even), + zero point, clamp. NEON flushes subnormal inputs and results to zero,
//! where the scalar VFP code keeps them; that cannot change an output: the product
//! and the bias are then below 2^-94 in magnitude, so either the other operand is at
//! least 0.25 and absorbs them exactly in round-to-nearest, or the sum is below 0.5
//! and rounds to 0 either way (tested in `tests` with subnormal multipliers and biases).
//!
//! Inline assembly, not intrinsics: `core::arch::arm`'s NEON intrinsics and vector
//! types, and `#[target_feature(enable = "neon")]`, are unstable on stable Rust
//! (E0658: "the target feature `neon` is currently unstable", rustc 1.96), while `asm!`
//! is stable on arm. The crate is built for armv7-unknown-linux-gnueabihf without
//! `+neon` (the target's baseline is VFPv3, no NEON), where the assembler refuses NEON
//! mnemonics ("instruction requires: NEON"), and vector values cannot be asm operands
//! (their types are the unstable ones). So each block starts with the `.fpu neon`
//! directive (it applies to that block only: the next block is parsed with the crate's
//! features again; it also marks the object file as using NEON), names its NEON
//! registers in the template and declares d0-d31 clobbered (explicit clobbers are
//! accepted without `+neon`); data goes in and out through memory, pointers in core
//! registers. The same source builds with `-C target-feature=+neon`
//! (targets/rpi-armv7.toml). NEON CPUs have 32 D registers (VFPv3-D32), which the
//! detection checks as well (HWCAP_VFPD32).

//!
//! Layouts (packed once, for the chosen ISA): [`DenseWeights`] for dense convolutions,
//! [`super::arm::depthwise_layout`] for depthwise ones. The `unsafe fn`s here need NEON (detected
//! with the ISA, [`has_neon`]) and what their `# Safety` sections say about memory; the
//! argument structs the assembly reads at fixed offsets have those offsets asserted at
//! compile time beside them.

use std::arch::asm;

use super::arm::{depthwise_bounds, depthwise_i32, gemm_in_place, Rows, DW};
use super::ConvKind;
use super::{padded_input, ConvGeometry, DepthwiseWeights, PackedWeights, Requant, CBLOCK};

/// asm/hwcap.h of 32-bit ARM Linux.
const HWCAP_NEON: libc::c_ulong = 1 << 12;
const HWCAP_VFPD32: libc::c_ulong = 1 << 19;

/// Whether this CPU has NEON (and with it d16-d31), as the kernel reports it.
pub fn has_neon() -> bool {
    // SAFETY: getauxval reads the process's auxiliary vector; no preconditions.
    let hwcap = unsafe { libc::getauxval(libc::AT_HWCAP) };
    hwcap & (HWCAP_NEON | HWCAP_VFPD32) == HWCAP_NEON | HWCAP_VFPD32
}

/// `asm!` with NEON enabled in the assembler and every NEON register clobbered (the
/// templates name them directly). The operands must end with a comma.
macro_rules! neon_asm {
    ($($body:tt)*) => {
        asm!(
            ".fpu neon",
            $($body)*
            out("d0") _, out("d1") _, out("d2") _, out("d3") _, out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _, out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            out("d16") _, out("d17") _, out("d18") _, out("d19") _, out("d20") _, out("d21") _, out("d22") _, out("d23") _,
            out("d24") _, out("d25") _, out("d26") _, out("d27") _, out("d28") _, out("d29") _, out("d30") _, out("d31") _,
            options(nostack)
        )
    };
}

/// Where a kernel writes: requantised u8, or the int32 sums (a conv whose output the
/// float tail takes; the `accumulate` and `gemm` dispatchers). Both [pixel][channel].
pub enum Out<'a> {
    U8(&'a Requant, &'a mut [u8]),
    I32(&'a mut [i32]),
}

// ---------------------------------------------------------------------------------
// The dispatchers' entry points

/// One convolution of the plan (see [`super::conv`]), on the zero-point padded input;
/// `acc` is the buffer of the int32 sums before requantisation.
#[allow(clippy::too_many_arguments)]
pub fn conv(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, r: &Requant, scratch: &mut [u8], acc: &mut [i32], out: &mut [u8]) {
    let (input, padded) = padded_input(x, g, zp, scratch);
    match kind {
        ConvKind::Dense(w) => conv_dense(input, &padded, w, Out::U8(r, out), acc),
        ConvKind::Depthwise(w) => conv_depthwise(input, &padded, zp, w, Out::U8(r, out), acc),
        ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
    }
}

/// The int32 sums of a convolution (see [`super::accumulate`]), on the zero-point
/// padded input.
pub fn accumulate(x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    let (input, padded) = padded_input(x, g, zp, scratch);
    match kind {
        ConvKind::Dense(w) => conv_dense(input, &padded, w, Out::I32(acc), &mut []),
        ConvKind::Depthwise(w) => conv_depthwise(input, &padded, zp, w, Out::I32(acc), &mut []),
        ConvKind::Grouped(_) => unreachable!("grouped convs run as depthwise on their widened input (kernels::conv)"),
    }
}

// ---------------------------------------------------------------------------------
// Requantisation

/// A conv's requantisation constants, in groups of 8 channels (zero padded), each
/// group [offset][mult][bias][lo][hi] x 8 as the 32-bit words the kernel loads.
struct RequantParams {
    groups: Vec<u32>,
    /// -2^22, 2^22, 1.5 x 2^23, output zero point.
    consts: [f32; 4],
}

impl RequantParams {
    fn new(r: &Requant) -> Self {
        let cout = r.mult.len();
        let mut groups = vec![0u32; cout.div_ceil(8) * 40];
        for c in 0..cout {
            let g = &mut groups[c / 8 * 40 + c % 8..];
            g[0] = r.offset[c] as u32;
            g[8] = r.mult[c].to_bits();
            g[16] = r.bias[c].to_bits();
            g[24] = (r.lo[c] as f32).to_bits();
            g[32] = (r.hi[c] as f32).to_bits();
        }
        RequantParams { groups, consts: [-4_194_304.0, 4_194_304.0, 12_582_912.0, r.out_zp] }
    }

    /// Requantises rows of `cout` sums into rows of `cout` bytes.
    fn run(&self, acc: &[i32], cout: usize, out: &mut [u8]) {
        assert!(self.groups.len() >= cout.div_ceil(8) * 40 && out.len() >= acc.len());
        let full = cout / 8;
        for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
            if full > 0 {
                // SAFETY: `full` groups of 8 sums, bytes and parameter groups, inside
                // this row and `groups` (checked); NEON was detected with the ISA.
                unsafe { requant_groups(a.as_ptr(), self.groups.as_ptr(), &self.consts, o.as_mut_ptr(), full) };
            }
            if full * 8 < cout {
                // The last few channels through copies, with the same instructions.
                let mut t = [0i32; 8];
                t[..cout - full * 8].copy_from_slice(&a[full * 8..]);
                let mut b = [0u8; 8];
                // SAFETY: one group, from and into local arrays of 8, parameters of
                // group `full` (the padded last one).
                unsafe { requant_groups(t.as_ptr(), self.groups[full * 40..].as_ptr(), &self.consts, b.as_mut_ptr(), 1) };
                o[full * 8..].copy_from_slice(&b[..cout - full * 8]);
            }
        }
    }
}

/// `groups` (>= 1) groups of 8 channels: clamp(round_half_even((acc - offset) m + b)
/// + z_y, lo, hi) as bytes, with the scalar reference's operations in its order.
///
/// # Safety
/// The CPU must have NEON (`has_neon`); `acc` must be readable for 8 `groups` i32, `params`
/// for 40 `groups` words (the layout of `RequantParams`), `out` writable for 8 `groups` bytes.
#[inline(always)]
unsafe fn requant_groups(acc: *const i32, params: *const u32, consts: &[f32; 4], out: *mut u8, groups: usize) {
    // SAFETY: the loads and stores walk `groups` groups of what the caller vouches for;
    // NEON likewise; every NEON register the template names is declared clobbered.
    unsafe {
        neon_asm!(
            "vld1.32 {{d0-d1}}, [{k}]",
            "vdup.32 q12, d0[0]",
            "vdup.32 q13, d0[1]",
            "vdup.32 q14, d1[0]",
            "vdup.32 q15, d1[1]",
            "2:",
            "vld1.32 {{d0-d3}}, [{a}]!",
            "vld1.32 {{d4-d7}}, [{p}]!",
            "vld1.32 {{d8-d11}}, [{p}]!",
            "vsub.i32 q0, q0, q2",
            "vsub.i32 q1, q1, q3",
            "vld1.32 {{d4-d7}}, [{p}]!",
            "vcvt.f32.s32 q0, q0",
            "vcvt.f32.s32 q1, q1",
            "vmul.f32 q0, q0, q4",
            "vmul.f32 q1, q1, q5",
            "vld1.32 {{d8-d11}}, [{p}]!",
            "vadd.f32 q0, q0, q2",
            "vadd.f32 q1, q1, q3",
            "vld1.32 {{d4-d7}}, [{p}]!",
            // round_half_even: clamp to ±2^22 (NaN stays NaN, as in f32::clamp), then
            // add and subtract 1.5 x 2^23.
            "vmax.f32 q0, q0, q12",
            "vmax.f32 q1, q1, q12",
            "vmin.f32 q0, q0, q13",
            "vmin.f32 q1, q1, q13",
            "vadd.f32 q0, q0, q14",
            "vadd.f32 q1, q1, q14",
            "vsub.f32 q0, q0, q14",
            "vsub.f32 q1, q1, q14",
            "vadd.f32 q0, q0, q15",
            "vadd.f32 q1, q1, q15",
            "vmax.f32 q0, q0, q4",
            "vmax.f32 q1, q1, q5",
            "vmin.f32 q0, q0, q2",
            "vmin.f32 q1, q1, q3",
            // Whole numbers in lo..=hi by now; NaN converts to 0, as `as u8` does.
            "vcvt.u32.f32 q0, q0",
            "vcvt.u32.f32 q1, q1",
            "vmovn.i32 d0, q0",
            "vmovn.i32 d1, q1",
            "vmovn.i16 d0, q0",
            "vst1.8 {{d0}}, [{o}]!",
            "subs {n}, {n}, #1",
            "bne 2b",
            k = in(reg) consts.as_ptr(),
            a = inout(reg) acc => _,
            p = inout(reg) params => _,
            o = inout(reg) out => _,
            n = inout(reg) groups => _,
        );
    }
}

/// The standalone requantisation (`requantize` dispatcher).
pub fn requantize(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    if cout == 0 {
        return;
    }
    RequantParams::new(r).run(acc, cout, out)
}

// ---------------------------------------------------------------------------------
// Dense convolution / GEMM

/// Channels of a narrow last block (the 8 x 4 tile's width).
const NARROW: usize = 8;

/// Block `b`'s width: 16 channels, or 8 for a last block of at most 8 (cout 8, 24, 40
/// ... waste no lanes).
fn block_width(cout: usize, b: usize) -> usize {
    if cout - b * CBLOCK <= NARROW {
        NARROW
    } else {
        CBLOCK
    }
}

/// The weights of a dense convolution as i16 (widened once, at pack time), built with
/// [`PackedWeights::new`]: blocks of 16 output channels (the last one 8 wide if it
/// has at most 8), each kernel row's k zero padded to a multiple of 8 (the kernels
/// step through k in 8-byte loads): [cout/16][kernel_rows][n8 * 8][block width].
#[derive(Debug, Clone, Default)]
pub struct DenseWeights {
    w: Vec<i16>,
    /// Steps of 8 k per kernel row.
    n8: usize,
}

impl DenseWeights {
    /// `rows`: [cout][kernel_rows * row_len], as [`PackedWeights::new`] takes them.
    pub fn new(rows: &[i8], cout: usize, kernel_rows: usize, row_len: usize) -> Self {
        let k = kernel_rows * row_len;
        let n8 = row_len.div_ceil(8);
        let per_block = CBLOCK * kernel_rows * n8 * 8;
        let mut w = vec![0i16; cout.div_ceil(CBLOCK) * per_block];
        for c in 0..cout {
            let (b, lane) = (c / CBLOCK, c % CBLOCK);
            let bw = block_width(cout, b);
            for i in 0..kernel_rows {
                for j in 0..row_len {
                    w[b * per_block + (i * n8 * 8 + j) * bw + lane] = rows[c * k + i * row_len + j] as i16;
                }
            }
        }
        DenseWeights { w, n8 }
    }
}

/// What a dense tile kernel reads from memory besides its pointers (offsets 0, 4,
/// 8, 12 in the assembly).
#[repr(C)]
struct TileArgs {
    /// Steps of 8 k per kernel row.
    n8: usize,
    /// From the end of one kernel row's reads to the start of the next.
    skip: usize,
    out: *mut i32,
    /// From one pixel's sums to the next's, less what the stores before advance.
    out_step: usize,
}

// The byte offsets the tile kernels' assembly reads `TileArgs` at.
const _: () = assert!(core::mem::offset_of!(TileArgs, n8) == 0);
const _: () = assert!(core::mem::offset_of!(TileArgs, skip) == 4);
const _: () = assert!(core::mem::offset_of!(TileArgs, out) == 8);
const _: () = assert!(core::mem::offset_of!(TileArgs, out_step) == 12);

/// Sums of 16 channels x 2 pixels: per 8 k, one 8-byte load per pixel widened to
/// i16, and per k 32 bytes of weights times that k of each pixel, `vmlal.s16` by
/// lane into 8 accumulators (q8-q15). The next k's weights load while this k's
/// multiply (two banks: d4-d7, d8-d11).
///
/// # Safety
/// The CPU must have NEON; `x0` and `x1` must be readable for `kh` kernel rows of 8 `args.n8`
/// bytes, each starting `args.skip` bytes after the previous one's reads end; `w` for kh n8 8 x 16
/// i16; `args.out` writable for two pixels of 16 i32, the second `args.out_step` + 32 bytes after
/// the first's start.
#[inline(always)]
unsafe fn tile16x2(x0: *const u8, x1: *const u8, w: *const i16, kh: usize, args: &TileArgs) {
    // SAFETY: the reads and writes the caller vouches for, in that order; `args` is read at
    // the offsets asserted beside `TileArgs`; NEON likewise; clobbers declared.
    unsafe {
        neon_asm!(
            "vmov.i32 q8, #0",
            "vmov.i32 q9, #0",
            "vmov.i32 q10, #0",
            "vmov.i32 q11, #0",
            "vmov.i32 q12, #0",
            "vmov.i32 q13, #0",
            "vmov.i32 q14, #0",
            "vmov.i32 q15, #0",
            "2:",
            "ldr {n}, [{a}]",
            "3:",
            "vld1.8 {{d0}}, [{x0}]!",
            "vld1.8 {{d2}}, [{x1}]!",
            "vld1.16 {{d4-d7}}, [{w}]!",
            "vmovl.u8 q0, d0",
            "vmovl.u8 q1, d2",
            "vld1.16 {{d8-d11}}, [{w}]!",
            "vmlal.s16 q8, d4, d0[0]",
            "vmlal.s16 q9, d5, d0[0]",
            "vmlal.s16 q10, d6, d0[0]",
            "vmlal.s16 q11, d7, d0[0]",
            "vmlal.s16 q12, d4, d2[0]",
            "vmlal.s16 q13, d5, d2[0]",
            "vmlal.s16 q14, d6, d2[0]",
            "vmlal.s16 q15, d7, d2[0]",
            "vld1.16 {{d4-d7}}, [{w}]!",
            "vmlal.s16 q8, d8, d0[1]",
            "vmlal.s16 q9, d9, d0[1]",
            "vmlal.s16 q10, d10, d0[1]",
            "vmlal.s16 q11, d11, d0[1]",
            "vmlal.s16 q12, d8, d2[1]",
            "vmlal.s16 q13, d9, d2[1]",
            "vmlal.s16 q14, d10, d2[1]",
            "vmlal.s16 q15, d11, d2[1]",
            "vld1.16 {{d8-d11}}, [{w}]!",
            "vmlal.s16 q8, d4, d0[2]",
            "vmlal.s16 q9, d5, d0[2]",
            "vmlal.s16 q10, d6, d0[2]",
            "vmlal.s16 q11, d7, d0[2]",
            "vmlal.s16 q12, d4, d2[2]",
            "vmlal.s16 q13, d5, d2[2]",
            "vmlal.s16 q14, d6, d2[2]",
            "vmlal.s16 q15, d7, d2[2]",
            "vld1.16 {{d4-d7}}, [{w}]!",
            "vmlal.s16 q8, d8, d0[3]",
            "vmlal.s16 q9, d9, d0[3]",
            "vmlal.s16 q10, d10, d0[3]",
            "vmlal.s16 q11, d11, d0[3]",
            "vmlal.s16 q12, d8, d2[3]",
            "vmlal.s16 q13, d9, d2[3]",
            "vmlal.s16 q14, d10, d2[3]",
            "vmlal.s16 q15, d11, d2[3]",
            "vld1.16 {{d8-d11}}, [{w}]!",
            "vmlal.s16 q8, d4, d1[0]",
            "vmlal.s16 q9, d5, d1[0]",
            "vmlal.s16 q10, d6, d1[0]",
            "vmlal.s16 q11, d7, d1[0]",
            "vmlal.s16 q12, d4, d3[0]",
            "vmlal.s16 q13, d5, d3[0]",
            "vmlal.s16 q14, d6, d3[0]",
            "vmlal.s16 q15, d7, d3[0]",
            "vld1.16 {{d4-d7}}, [{w}]!",
            "vmlal.s16 q8, d8, d1[1]",
            "vmlal.s16 q9, d9, d1[1]",
            "vmlal.s16 q10, d10, d1[1]",
            "vmlal.s16 q11, d11, d1[1]",
            "vmlal.s16 q12, d8, d3[1]",
            "vmlal.s16 q13, d9, d3[1]",
            "vmlal.s16 q14, d10, d3[1]",
            "vmlal.s16 q15, d11, d3[1]",
            "vld1.16 {{d8-d11}}, [{w}]!",
            "vmlal.s16 q8, d4, d1[2]",
            "vmlal.s16 q9, d5, d1[2]",
            "vmlal.s16 q10, d6, d1[2]",
            "vmlal.s16 q11, d7, d1[2]",
            "vmlal.s16 q12, d4, d3[2]",
            "vmlal.s16 q13, d5, d3[2]",
            "vmlal.s16 q14, d6, d3[2]",
            "vmlal.s16 q15, d7, d3[2]",
            "vmlal.s16 q8, d8, d1[3]",
            "vmlal.s16 q9, d9, d1[3]",
            "vmlal.s16 q10, d10, d1[3]",
            "vmlal.s16 q11, d11, d1[3]",
            "vmlal.s16 q12, d8, d3[3]",
            "vmlal.s16 q13, d9, d3[3]",
            "vmlal.s16 q14, d10, d3[3]",
            "vmlal.s16 q15, d11, d3[3]",
            "subs {n}, {n}, #1",
            "bne 3b",
            "ldr {n}, [{a}, #4]",
            "add {x0}, {x0}, {n}",
            "add {x1}, {x1}, {n}",
            "subs {kh}, {kh}, #1",
            "bne 2b",
            "ldr {n}, [{a}, #8]",
            "ldr {kh}, [{a}, #12]",
            "vst1.32 {{d16-d19}}, [{n}]!",
            "vst1.32 {{d20-d23}}, [{n}], {kh}",
            "vst1.32 {{d24-d27}}, [{n}]!",
            "vst1.32 {{d28-d31}}, [{n}]",
            x0 = inout(reg) x0 => _,
            x1 = inout(reg) x1 => _,
            w = inout(reg) w => _,
            kh = inout(reg) kh => _,
            n = out(reg) _,
            a = in(reg) args as *const TileArgs,
        );
    }
}

/// Sums of 8 channels x 4 pixels, as [`tile16x2`] with 16 bytes of weights per k
/// (banks d8-d9, d10-d11) and four pixels in q0-q3.
///
/// # Safety
/// As [`tile16x2`], for four pixels `x` and 8 channels: `w` readable for kh n8 8 x 8 i16, and
/// `args.out` writable for four pixels of 8 i32, `args.out_step` bytes apart.
#[inline(always)]
unsafe fn tile8x4(x: [*const u8; 4], w: *const i16, kh: usize, args: &TileArgs) {
    // SAFETY: the reads and writes the caller vouches for; `args` is read at the offsets
    // asserted beside `TileArgs`; NEON likewise; clobbers declared.
    unsafe {
        neon_asm!(
            "vmov.i32 q8, #0",
            "vmov.i32 q9, #0",
            "vmov.i32 q10, #0",
            "vmov.i32 q11, #0",
            "vmov.i32 q12, #0",
            "vmov.i32 q13, #0",
            "vmov.i32 q14, #0",
            "vmov.i32 q15, #0",
            "2:",
            "ldr {n}, [{a}]",
            "3:",
            "vld1.8 {{d0}}, [{x0}]!",
            "vld1.8 {{d2}}, [{x1}]!",
            "vld1.8 {{d4}}, [{x2}]!",
            "vld1.8 {{d6}}, [{x3}]!",
            "vld1.16 {{d8-d9}}, [{w}]!",
            "vmovl.u8 q0, d0",
            "vmovl.u8 q1, d2",
            "vmovl.u8 q2, d4",
            "vmovl.u8 q3, d6",
            "vld1.16 {{d10-d11}}, [{w}]!",
            "vmlal.s16 q8, d8, d0[0]",
            "vmlal.s16 q9, d9, d0[0]",
            "vmlal.s16 q10, d8, d2[0]",
            "vmlal.s16 q11, d9, d2[0]",
            "vmlal.s16 q12, d8, d4[0]",
            "vmlal.s16 q13, d9, d4[0]",
            "vmlal.s16 q14, d8, d6[0]",
            "vmlal.s16 q15, d9, d6[0]",
            "vld1.16 {{d8-d9}}, [{w}]!",
            "vmlal.s16 q8, d10, d0[1]",
            "vmlal.s16 q9, d11, d0[1]",
            "vmlal.s16 q10, d10, d2[1]",
            "vmlal.s16 q11, d11, d2[1]",
            "vmlal.s16 q12, d10, d4[1]",
            "vmlal.s16 q13, d11, d4[1]",
            "vmlal.s16 q14, d10, d6[1]",
            "vmlal.s16 q15, d11, d6[1]",
            "vld1.16 {{d10-d11}}, [{w}]!",
            "vmlal.s16 q8, d8, d0[2]",
            "vmlal.s16 q9, d9, d0[2]",
            "vmlal.s16 q10, d8, d2[2]",
            "vmlal.s16 q11, d9, d2[2]",
            "vmlal.s16 q12, d8, d4[2]",
            "vmlal.s16 q13, d9, d4[2]",
            "vmlal.s16 q14, d8, d6[2]",
            "vmlal.s16 q15, d9, d6[2]",
            "vld1.16 {{d8-d9}}, [{w}]!",
            "vmlal.s16 q8, d10, d0[3]",
            "vmlal.s16 q9, d11, d0[3]",
            "vmlal.s16 q10, d10, d2[3]",
            "vmlal.s16 q11, d11, d2[3]",
            "vmlal.s16 q12, d10, d4[3]",
            "vmlal.s16 q13, d11, d4[3]",
            "vmlal.s16 q14, d10, d6[3]",
            "vmlal.s16 q15, d11, d6[3]",
            "vld1.16 {{d10-d11}}, [{w}]!",
            "vmlal.s16 q8, d8, d1[0]",
            "vmlal.s16 q9, d9, d1[0]",
            "vmlal.s16 q10, d8, d3[0]",
            "vmlal.s16 q11, d9, d3[0]",
            "vmlal.s16 q12, d8, d5[0]",
            "vmlal.s16 q13, d9, d5[0]",
            "vmlal.s16 q14, d8, d7[0]",
            "vmlal.s16 q15, d9, d7[0]",
            "vld1.16 {{d8-d9}}, [{w}]!",
            "vmlal.s16 q8, d10, d1[1]",
            "vmlal.s16 q9, d11, d1[1]",
            "vmlal.s16 q10, d10, d3[1]",
            "vmlal.s16 q11, d11, d3[1]",
            "vmlal.s16 q12, d10, d5[1]",
            "vmlal.s16 q13, d11, d5[1]",
            "vmlal.s16 q14, d10, d7[1]",
            "vmlal.s16 q15, d11, d7[1]",
            "vld1.16 {{d10-d11}}, [{w}]!",
            "vmlal.s16 q8, d8, d1[2]",
            "vmlal.s16 q9, d9, d1[2]",
            "vmlal.s16 q10, d8, d3[2]",
            "vmlal.s16 q11, d9, d3[2]",
            "vmlal.s16 q12, d8, d5[2]",
            "vmlal.s16 q13, d9, d5[2]",
            "vmlal.s16 q14, d8, d7[2]",
            "vmlal.s16 q15, d9, d7[2]",
            "vmlal.s16 q8, d10, d1[3]",
            "vmlal.s16 q9, d11, d1[3]",
            "vmlal.s16 q10, d10, d3[3]",
            "vmlal.s16 q11, d11, d3[3]",
            "vmlal.s16 q12, d10, d5[3]",
            "vmlal.s16 q13, d11, d5[3]",
            "vmlal.s16 q14, d10, d7[3]",
            "vmlal.s16 q15, d11, d7[3]",
            "subs {n}, {n}, #1",
            "bne 3b",
            "ldr {n}, [{a}, #4]",
            "add {x0}, {x0}, {n}",
            "add {x1}, {x1}, {n}",
            "add {x2}, {x2}, {n}",
            "add {x3}, {x3}, {n}",
            "subs {kh}, {kh}, #1",
            "bne 2b",
            "ldr {n}, [{a}, #8]",
            "ldr {kh}, [{a}, #12]",
            "vst1.32 {{d16-d19}}, [{n}], {kh}",
            "vst1.32 {{d20-d23}}, [{n}], {kh}",
            "vst1.32 {{d24-d27}}, [{n}], {kh}",
            "vst1.32 {{d28-d31}}, [{n}]",
            x0 = inout(reg) x[0] => _,
            x1 = inout(reg) x[1] => _,
            x2 = inout(reg) x[2] => _,
            x3 = inout(reg) x[3] => _,
            w = inout(reg) w => _,
            kh = inout(reg) kh => _,
            n = out(reg) _,
            a = in(reg) args as *const TileArgs,
        );
    }
}

/// Most pixels per call of [`dense_sums`].
const MAX_CHUNK: usize = 64;

/// The sums of pixels `p0..p1` (at most [`MAX_CHUNK`]) into `out` ([pixel - p0][cout]).
/// Channel blocks outer: a block's weights stay in L1 while the chunk's pixels pass.
/// Tiles past `p1` repeat its last pixel and are not stored.
///
/// # Safety
/// `x` readable up to `rows.base(p1 - 1) + (kernel_rows - 1) row_stride + 8
/// n8`, `out` writable for (p1 - p0) cout, n8 >= 1 and kernel_rows >= 1.
unsafe fn dense_sums(x: *const u8, rows: &Rows, w: &PackedWeights, p0: usize, p1: usize, out: *mut i32) {
    // SAFETY: the tile calls read pixels below p1 (past it: the last one again) and the
    // block's weights, and write the chunk's pixels (or the local `tmp`), as the caller vouches
    // for and `dense_checked` checked; NEON was detected with the ISA.
    unsafe {
        let (cout, kh, n8) = (w.cout, w.kernel_rows, w.armv7.n8);
        // Each pixel's input offset once per chunk, without a division per pixel (armv7
        // has no divide instruction in its baseline).
        let n = p1 - p0;
        assert!((1..=MAX_CHUNK).contains(&n));
        let mut bases = [0usize; MAX_CHUNK + 3];
        let (mut y, mut ox) = (p0 / rows.ow, p0 % rows.ow);
        for b in &mut bases[..n] {
            *b = y * rows.step_y + ox * rows.step_x;
            ox += 1;
            if ox == rows.ow {
                (y, ox) = (y + 1, 0);
            }
        }
        let last = bases[n - 1];
        bases[n..].fill(last);
        let skip = rows.row_stride.wrapping_sub(8 * n8);
        let per_block = CBLOCK * kh * n8 * 8;
        let mut tmp = [0i32; 2 * CBLOCK];
        for b in 0..cout.div_ceil(CBLOCK) {
            let (c0, bw) = (b * CBLOCK, block_width(cout, b));
            let nc = (cout - c0).min(CBLOCK);
            let wb = w.armv7.w.as_ptr().add(b * per_block);
            let pt = if bw == CBLOCK { 2 } else { 4 };
            let mut p = p0;
            while p < p1 {
                let valid = (p1 - p).min(pt);
                let px = |t: usize| x.add(bases[p - p0 + t]);
                let direct = valid == pt && nc == bw;
                let (o, stride) = if direct { (out.add((p - p0) * cout + c0), 4 * cout) } else { (tmp.as_mut_ptr(), 4 * bw) };
                if bw == CBLOCK {
                    tile16x2(px(0), px(1), wb, kh, &TileArgs { n8, skip, out: o, out_step: stride - 32 });
                } else {
                    tile8x4([px(0), px(1), px(2), px(3)], wb, kh, &TileArgs { n8, skip, out: o, out_step: stride });
                }
                if !direct {
                    for t in 0..valid {
                        std::ptr::copy_nonoverlapping(tmp.as_ptr().add(t * bw), out.add((p + t - p0) * cout + c0), nc);
                    }
                }
                p += pt;
            }
        }
    }
}

/// Sums per chunk of the requantised path: about 16 KB of int32s.
const CHUNK_SUMS: usize = 4096;

/// Checks the reads and writes of a dense kernel on `rows` of `x`, then runs it: int32
/// sums straight into `Out::I32`, or chunks of pixels through `tmp` and
/// requantisation (`tmp` is the caller's accumulator buffer; one of its own if short).
fn dense_checked(x: &[u8], rows: Rows, w: &PackedWeights, out: Out, tmp: &mut [i32]) {
    let cout = w.cout;
    if rows.pixels == 0 || cout == 0 {
        return;
    }
    let (kh, n8) = (w.kernel_rows, w.armv7.n8);
    if n8 == 0 {
        // No input channels: every sum is 0.
        let zeros = vec![0i32; rows.pixels * cout];
        return match out {
            Out::I32(o) => o[..zeros.len()].copy_from_slice(&zeros),
            Out::U8(r, o) => requantize(&zeros, cout, r, o),
        };
    }
    assert!(kh >= 1 && w.armv7.w.len() >= cout.div_ceil(CBLOCK) * CBLOCK * kh * n8 * 8);
    let reach = rows.base(rows.pixels - 1) + (kh - 1) * rows.row_stride + 8 * n8;
    assert!(x.len() >= reach, "input needs slack past its end");
    match out {
        Out::I32(o) => {
            assert!(o.len() >= rows.pixels * cout);
            for p0 in (0..rows.pixels).step_by(MAX_CHUNK) {
                let p1 = (p0 + MAX_CHUNK).min(rows.pixels);
                // SAFETY: reads below `reach`, writes below pixels x cout (checked).
                unsafe { dense_sums(x.as_ptr(), &rows, w, p0, p1, o[p0 * cout..].as_mut_ptr()) }
            }
        }
        Out::U8(r, o) => {
            assert!(o.len() >= rows.pixels * cout && r.mult.len() == cout);
            let chunk = (CHUNK_SUMS / cout).clamp(4, MAX_CHUNK).min(rows.pixels);
            let mut own = Vec::new();
            let tmp = if tmp.len() >= chunk * cout {
                tmp
            } else {
                own.resize(chunk * cout, 0);
                &mut own[..]
            };
            let q = RequantParams::new(r);
            for p0 in (0..rows.pixels).step_by(chunk) {
                let p1 = (p0 + chunk).min(rows.pixels);
                // SAFETY: as above; `tmp` holds chunk x cout.
                unsafe { dense_sums(x.as_ptr(), &rows, w, p0, p1, tmp.as_mut_ptr()) };
                q.run(&tmp[..(p1 - p0) * cout], cout, &mut o[p0 * cout..p1 * cout]);
            }
        }
    }
}

/// Dense convolution on an unpadded (or zero-point padded) NHWC input as an implicit
/// GEMM: each kernel row (kw x cin bytes, contiguous in NHWC) is read straight from
/// `x`, so there is no im2row; pointwise is the case kh = kw = 1. `x` needs up to 7
/// bytes of slack past its data; `tmp`: see [`dense_checked`].
pub fn conv_dense(x: &[u8], g: &ConvGeometry, w: &PackedWeights, out: Out, tmp: &mut [i32]) {
    assert!(g.pads == [0; 4] && w.kernel_rows == g.kh && w.row_len == g.kw * g.cin);
    dense_checked(x, Rows::of_conv(g), w, out, tmp)
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for contiguous rows of `x` (no slack needed).
pub fn gemm(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    let reach = (w.kernel_rows - 1) * w.row_len + 8 * w.armv7.n8;
    gemm_in_place(x, pixels, w, acc, reach, |x, rows, acc| dense_checked(x, rows, w, Out::I32(acc), &mut []))
}

// ---------------------------------------------------------------------------------
// Depthwise convolution

/// What a depthwise tile kernel reads from memory besides its pointers (offsets 0 to
/// 24 in the assembly).
#[repr(C)]
struct DwArgs {
    kw: usize,
    /// Generic kernels: from the end of a kernel row's taps to the next row's first;
    /// 3x3 kernels: the input's row stride.
    row_skip: usize,
    /// Generic 4-pixel kernel: from one output pixel's input to the next's (stride x
    /// channels); others: the channel count (from one input column to the next).
    step: usize,
    /// Generic 4-pixel kernel: from pixel 3's tap back to pixel 0's next tap.
    back: usize,
    out: *mut i32,
    /// From one pixel's sums to the next's, in bytes.
    out_stride: usize,
    /// -zp Σw of the 8 channels: the sums start from it.
    corr: *const i32,
}

// The byte offsets the depthwise kernels' assembly reads `DwArgs` at.
const _: () = assert!(core::mem::offset_of!(DwArgs, kw) == 0);
const _: () = assert!(core::mem::offset_of!(DwArgs, row_skip) == 4);
const _: () = assert!(core::mem::offset_of!(DwArgs, step) == 8);
const _: () = assert!(core::mem::offset_of!(DwArgs, back) == 12);
const _: () = assert!(core::mem::offset_of!(DwArgs, out) == 16);
const _: () = assert!(core::mem::offset_of!(DwArgs, out_stride) == 20);
const _: () = assert!(core::mem::offset_of!(DwArgs, corr) == 24);

/// Sums of 4 output pixels x 8 channels for any kernel and stride: per tap, the 8
/// weights and the 4 pixels' inputs, widened, `vmlal.s16` into q8-q15.
///
/// # Safety
/// The CPU must have NEON; `x` must be readable for the kh x kw taps of four output pixels
/// `args.step` bytes apart (rows `args.row_skip` apart after each row's taps), 8 bytes each; `w`
/// for kh kw x 8 i16; `args.corr` for 8 i32; `args.out` writable for four pixels of 8 i32,
/// `args.out_stride` bytes apart.
#[inline(always)]
unsafe fn dw_tile4(x: *const u8, w: *const i16, kh: usize, args: &DwArgs) {
    // SAFETY: the reads and writes the caller vouches for; `args` is read at the offsets
    // asserted beside `DwArgs`; NEON likewise; clobbers declared.
    unsafe {
        neon_asm!(
            "ldr {n}, [{a}, #24]",
            "vld1.32 {{d16-d19}}, [{n}]",
            "vmov q10, q8",
            "vmov q11, q9",
            "vmov q12, q8",
            "vmov q13, q9",
            "vmov q14, q8",
            "vmov q15, q9",
            "ldr {s}, [{a}, #8]",
            "ldr {b}, [{a}, #12]",
            "2:",
            "ldr {n}, [{a}]",
            "3:",
            "vld1.16 {{d8-d9}}, [{w}]!",
            "vld1.8 {{d0}}, [{x}], {s}",
            "vld1.8 {{d2}}, [{x}], {s}",
            "vld1.8 {{d4}}, [{x}], {s}",
            "vld1.8 {{d6}}, [{x}], {b}",
            "vmovl.u8 q0, d0",
            "vmovl.u8 q1, d2",
            "vmovl.u8 q2, d4",
            "vmovl.u8 q3, d6",
            "vmlal.s16 q8, d0, d8",
            "vmlal.s16 q9, d1, d9",
            "vmlal.s16 q10, d2, d8",
            "vmlal.s16 q11, d3, d9",
            "vmlal.s16 q12, d4, d8",
            "vmlal.s16 q13, d5, d9",
            "vmlal.s16 q14, d6, d8",
            "vmlal.s16 q15, d7, d9",
            "subs {n}, {n}, #1",
            "bne 3b",
            "ldr {n}, [{a}, #4]",
            "add {x}, {x}, {n}",
            "subs {kh}, {kh}, #1",
            "bne 2b",
            "ldr {n}, [{a}, #16]",
            "ldr {s}, [{a}, #20]",
            "vst1.32 {{d16-d19}}, [{n}], {s}",
            "vst1.32 {{d20-d23}}, [{n}], {s}",
            "vst1.32 {{d24-d27}}, [{n}], {s}",
            "vst1.32 {{d28-d31}}, [{n}]",
            x = inout(reg) x => _,
            w = inout(reg) w => _,
            kh = inout(reg) kh => _,
            n = out(reg) _,
            s = out(reg) _,
            b = out(reg) _,
            a = in(reg) args as *const DwArgs,
        );
    }
}

/// One output pixel x 8 channels, any kernel (rows narrower than 4 pixels).
///
/// # Safety
/// As [`dw_tile4`], for one output pixel.
#[inline(always)]
unsafe fn dw_tile1(x: *const u8, w: *const i16, kh: usize, args: &DwArgs) {
    // SAFETY: the reads and writes the caller vouches for; `args` is read at the offsets
    // asserted beside `DwArgs`; NEON likewise; clobbers declared.
    unsafe {
        neon_asm!(
            "ldr {n}, [{a}, #24]",
            "vld1.32 {{d16-d19}}, [{n}]",
            "ldr {s}, [{a}, #8]",
            "2:",
            "ldr {n}, [{a}]",
            "3:",
            "vld1.16 {{d8-d9}}, [{w}]!",
            "vld1.8 {{d0}}, [{x}], {s}",
            "vmovl.u8 q0, d0",
            "vmlal.s16 q8, d0, d8",
            "vmlal.s16 q9, d1, d9",
            "subs {n}, {n}, #1",
            "bne 3b",
            "ldr {n}, [{a}, #4]",
            "add {x}, {x}, {n}",
            "subs {kh}, {kh}, #1",
            "bne 2b",
            "ldr {n}, [{a}, #16]",
            "vst1.32 {{d16-d19}}, [{n}]",
            x = inout(reg) x => _,
            w = inout(reg) w => _,
            kh = inout(reg) kh => _,
            n = out(reg) _,
            s = out(reg) _,
            a = in(reg) args as *const DwArgs,
        );
    }
}

/// 4 output pixels x 8 channels of a 3x3 depthwise conv with horizontal stride 1:
/// per kernel row, its three taps' weights in q4-q6 and each of the 6 input columns
/// loaded and widened once (rotating through q0-q2, loaded two columns ahead) and
/// multiplied into every output pixel whose window covers it: 24 `vmlal` per 6 loads,
/// where one load per tap and pixel would take 12.
///
/// # Safety
/// The CPU must have NEON; `x` must be readable for three rows (`args.row_skip` apart) of 6
/// input columns (`args.step` bytes apart), 8 bytes each; `w` for 9 x 8 i16; `args.corr` for 8
/// i32; `args.out` writable for four pixels of 8 i32, `args.out_stride` bytes apart.
#[inline(always)]
unsafe fn dw3x3s1_tile4(x: *const u8, w: *const i16, args: &DwArgs) {
    // SAFETY: the reads and writes the caller vouches for; `args` is read at the offsets
    // asserted beside `DwArgs`; NEON likewise; clobbers declared.
    unsafe {
        neon_asm!(
            "ldr {t}, [{a}, #24]",
            "vld1.32 {{d16-d19}}, [{t}]",
            "vmov q10, q8",
            "vmov q11, q9",
            "vmov q12, q8",
            "vmov q13, q9",
            "vmov q14, q8",
            "vmov q15, q9",
            "ldr {c}, [{a}, #8]",
            "ldr {rs}, [{a}, #4]",
            "mov {i}, #3",
            "2:",
            "vld1.16 {{d8-d11}}, [{w}]!",
            "vld1.16 {{d12-d13}}, [{w}]!",
            "mov {t}, {p}",
            "vld1.8 {{d0}}, [{t}], {c}",
            "vld1.8 {{d2}}, [{t}], {c}",
            "vmovl.u8 q0, d0",
            "vmovl.u8 q1, d2",
            "vld1.8 {{d4}}, [{t}], {c}",
            "vmlal.s16 q8, d0, d8",
            "vmlal.s16 q9, d1, d9",
            "vmovl.u8 q2, d4",
            "vld1.8 {{d0}}, [{t}], {c}",
            "vmlal.s16 q8, d2, d10",
            "vmlal.s16 q9, d3, d11",
            "vmlal.s16 q10, d2, d8",
            "vmlal.s16 q11, d3, d9",
            "vmovl.u8 q0, d0",
            "vld1.8 {{d2}}, [{t}], {c}",
            "vmlal.s16 q8, d4, d12",
            "vmlal.s16 q9, d5, d13",
            "vmlal.s16 q10, d4, d10",
            "vmlal.s16 q11, d5, d11",
            "vmlal.s16 q12, d4, d8",
            "vmlal.s16 q13, d5, d9",
            "vmovl.u8 q1, d2",
            "vld1.8 {{d4}}, [{t}], {c}",
            "vmlal.s16 q10, d0, d12",
            "vmlal.s16 q11, d1, d13",
            "vmlal.s16 q12, d0, d10",
            "vmlal.s16 q13, d1, d11",
            "vmlal.s16 q14, d0, d8",
            "vmlal.s16 q15, d1, d9",
            "vmovl.u8 q2, d4",
            "vmlal.s16 q12, d2, d12",
            "vmlal.s16 q13, d3, d13",
            "vmlal.s16 q14, d2, d10",
            "vmlal.s16 q15, d3, d11",
            "vmlal.s16 q14, d4, d12",
            "vmlal.s16 q15, d5, d13",
            "add {p}, {p}, {rs}",
            "subs {i}, {i}, #1",
            "bne 2b",
            "ldr {t}, [{a}, #16]",
            "ldr {c}, [{a}, #20]",
            "vst1.32 {{d16-d19}}, [{t}], {c}",
            "vst1.32 {{d20-d23}}, [{t}], {c}",
            "vst1.32 {{d24-d27}}, [{t}], {c}",
            "vst1.32 {{d28-d31}}, [{t}]",
            p = inout(reg) x => _,
            w = inout(reg) w => _,
            t = out(reg) _,
            c = out(reg) _,
            rs = out(reg) _,
            i = out(reg) _,
            a = in(reg) args as *const DwArgs,
        );
    }
}

/// The same with horizontal stride 2: 9 input columns per kernel row.
///
/// # Safety
/// As [`dw3x3s1_tile4`], with 9 input columns per row.
#[inline(always)]
unsafe fn dw3x3s2_tile4(x: *const u8, w: *const i16, args: &DwArgs) {
    // SAFETY: the reads and writes the caller vouches for; `args` is read at the offsets
    // asserted beside `DwArgs`; NEON likewise; clobbers declared.
    unsafe {
        neon_asm!(
            "ldr {t}, [{a}, #24]",
            "vld1.32 {{d16-d19}}, [{t}]",
            "vmov q10, q8",
            "vmov q11, q9",
            "vmov q12, q8",
            "vmov q13, q9",
            "vmov q14, q8",
            "vmov q15, q9",
            "ldr {c}, [{a}, #8]",
            "ldr {rs}, [{a}, #4]",
            "mov {i}, #3",
            "2:",
            "vld1.16 {{d8-d11}}, [{w}]!",
            "vld1.16 {{d12-d13}}, [{w}]!",
            "mov {t}, {p}",
            "vld1.8 {{d0}}, [{t}], {c}",
            "vld1.8 {{d2}}, [{t}], {c}",
            "vmovl.u8 q0, d0",
            "vmovl.u8 q1, d2",
            "vld1.8 {{d4}}, [{t}], {c}",
            "vmlal.s16 q8, d0, d8",
            "vmlal.s16 q9, d1, d9",
            "vmovl.u8 q2, d4",
            "vld1.8 {{d0}}, [{t}], {c}",
            "vmlal.s16 q8, d2, d10",
            "vmlal.s16 q9, d3, d11",
            "vmovl.u8 q0, d0",
            "vld1.8 {{d2}}, [{t}], {c}",
            "vmlal.s16 q8, d4, d12",
            "vmlal.s16 q9, d5, d13",
            "vmlal.s16 q10, d4, d8",
            "vmlal.s16 q11, d5, d9",
            "vmovl.u8 q1, d2",
            "vld1.8 {{d4}}, [{t}], {c}",
            "vmlal.s16 q10, d0, d10",
            "vmlal.s16 q11, d1, d11",
            "vmovl.u8 q2, d4",
            "vld1.8 {{d0}}, [{t}], {c}",
            "vmlal.s16 q10, d2, d12",
            "vmlal.s16 q11, d3, d13",
            "vmlal.s16 q12, d2, d8",
            "vmlal.s16 q13, d3, d9",
            "vmovl.u8 q0, d0",
            "vld1.8 {{d2}}, [{t}], {c}",
            "vmlal.s16 q12, d4, d10",
            "vmlal.s16 q13, d5, d11",
            "vmovl.u8 q1, d2",
            "vld1.8 {{d4}}, [{t}], {c}",
            "vmlal.s16 q12, d0, d12",
            "vmlal.s16 q13, d1, d13",
            "vmlal.s16 q14, d0, d8",
            "vmlal.s16 q15, d1, d9",
            "vmovl.u8 q2, d4",
            "vmlal.s16 q14, d2, d10",
            "vmlal.s16 q15, d3, d11",
            "vmlal.s16 q14, d4, d12",
            "vmlal.s16 q15, d5, d13",
            "add {p}, {p}, {rs}",
            "subs {i}, {i}, #1",
            "bne 2b",
            "ldr {t}, [{a}, #16]",
            "ldr {c}, [{a}, #20]",
            "vst1.32 {{d16-d19}}, [{t}], {c}",
            "vst1.32 {{d20-d23}}, [{t}], {c}",
            "vst1.32 {{d24-d27}}, [{t}], {c}",
            "vst1.32 {{d28-d31}}, [{t}]",
            p = inout(reg) x => _,
            w = inout(reg) w => _,
            t = out(reg) _,
            c = out(reg) _,
            rs = out(reg) _,
            i = out(reg) _,
            a = in(reg) args as *const DwArgs,
        );
    }
}

/// The sums of one output row, all channel blocks, into `dst` ([ow][c]): tiles of 4
/// pixels (the last one overlapping the one before, so that no tile reads past the
/// row), or single pixels in rows narrower than 4.
///
/// # Safety
/// `row` is the input row of the output row's top kernel row, readable
/// through its receptive fields plus 7 bytes; `dst` writable for ow x c; `w16` and
/// `corr` hold every block.
unsafe fn dw_row(row: *const u8, g: &ConvGeometry, w16: &[i16], corr: &[i32], dst: *mut i32) {
    // SAFETY: tiles of 4 pixels start at most at ow - 4 (the last overlapping the one
    // before) and single pixels below ow, so every tile reads receptive fields of the row's
    // output pixels, which the caller vouches for, plus 7 bytes; whole blocks write their 8
    // channels of those pixels in `dst`, the last one through the local `tmp_buf`; `w16` and
    // `corr` hold every block (the caller's obligation). NEON was detected with the ISA.
    unsafe {
        let (c, taps, sx) = (g.cin, g.kh * g.kw, g.stride[1]);
        let three = g.kh == 3 && g.kw == 3 && sx <= 2;
        let row_stride = g.w * c;
        let mut tmp_buf = [0i32; 4 * DW];
        let tmp = tmp_buf.as_mut_ptr();
        for b in 0..c.div_ceil(DW) {
            let nc = (c - b * DW).min(DW);
            let (xb, wb, cb) = (row.add(b * DW), w16.as_ptr().add(b * taps * DW), corr.as_ptr().add(b * DW));
            // Whole blocks write their sums in place; the last, narrower one through `tmp`.
            let direct = nc == DW;
            let target = |ox: usize| if direct { (dst.add(ox * c + b * DW), 4 * c) } else { (tmp, 4 * DW) };
            let spill = |ox: usize, n: usize| {
                if !direct {
                    for t in 0..n {
                        std::ptr::copy_nonoverlapping(tmp.add(t * DW), dst.add((ox + t) * c + b * DW), nc);
                    }
                }
            };
            if g.ow >= 4 {
                let mut ox = 0;
                loop {
                    let ox0 = ox.min(g.ow - 4);
                    let (out, out_stride) = target(ox0);
                    let x = xb.add(ox0 * sx * c);
                    if three {
                        let a = DwArgs { kw: 3, row_skip: row_stride, step: c, back: 0, out, out_stride, corr: cb };
                        if sx == 1 {
                            dw3x3s1_tile4(x, wb, &a)
                        } else {
                            dw3x3s2_tile4(x, wb, &a)
                        }
                    } else {
                        let step = sx * c;
                        let a = DwArgs {
                            kw: g.kw,
                            row_skip: row_stride - g.kw * c,
                            step,
                            back: c.wrapping_sub(3 * step),
                            out,
                            out_stride,
                            corr: cb,
                        };
                        dw_tile4(x, wb, g.kh, &a);
                    }
                    spill(ox0, 4);
                    if ox0 + 4 >= g.ow {
                        break;
                    }
                    ox += 4;
                }
            } else {
                for ox in 0..g.ow {
                    let (out, out_stride) = target(ox);
                    let a = DwArgs { kw: g.kw, row_skip: row_stride - g.kw * c, step: c, back: 0, out, out_stride, corr: cb };
                    dw_tile1(xb.add(ox * sx * c), wb, g.kh, &a);
                    spill(ox, 1);
                }
            }
        }
    }
}

/// Depthwise convolution on an unpadded (or zero-point padded) NHWC input: Σ x w over
/// every tap, starting from -zp Σw (exact; padding, being zp, adds 0 as in the scalar
/// reference), one output row at a time, requantised while in L1 for U8 output
/// (through `tmp`, the caller's accumulator buffer, or one of its own if short).
/// Reads up to 7 bytes past the last pixel.
fn depthwise_checked(x: &[u8], g: &ConvGeometry, zp: u8, w16: &[i16], sums: &[i32], out: Out, tmp: &mut [i32]) {
    let c = g.cin;
    let Some((_taps, blocks)) = depthwise_bounds(x, g, w16, sums) else { return };
    assert!((g.oh - 1) * g.stride[0] + g.kh <= g.h && (g.ow - 1) * g.stride[1] + g.kw <= g.w);
    let corr: Vec<i32> = (0..blocks * DW).map(|ch| if ch < c { (zp as i32).wrapping_mul(sums[ch]).wrapping_neg() } else { 0 }).collect();
    let row_len = g.ow * c;
    let in_row = |oy: usize| x[oy * g.stride[0] * g.w * c..].as_ptr();
    match out {
        Out::I32(o) => {
            assert!(o.len() >= g.oh * row_len);
            for oy in 0..g.oh {
                // SAFETY: receptive fields inside the h x w input (checked), plus 7
                // bytes of the last pixel (checked); writes inside row oy of `o`.
                unsafe { dw_row(in_row(oy), g, w16, &corr, o[oy * row_len..].as_mut_ptr()) };
            }
        }
        Out::U8(r, o) => {
            assert!(o.len() >= g.oh * row_len && r.mult.len() == c);
            let mut own = Vec::new();
            let tmp = if tmp.len() >= row_len {
                tmp
            } else {
                own.resize(row_len, 0);
                &mut own[..]
            };
            let q = RequantParams::new(r);
            for oy in 0..g.oh {
                // SAFETY: as above; `tmp` holds one output row.
                unsafe { dw_row(in_row(oy), g, w16, &corr, tmp.as_mut_ptr()) };
                q.run(&tmp[..row_len], c, &mut o[oy * row_len..(oy + 1) * row_len]);
            }
        }
    }
}

/// The fused depthwise convolution of the engine (`conv` and `accumulate` dispatchers).
pub fn conv_depthwise(x: &[u8], g: &ConvGeometry, zp: u8, w: &DepthwiseWeights, out: Out, tmp: &mut [i32]) {
    assert!(w.taps == g.kh * g.kw && w.c == g.cin);
    depthwise_checked(x, g, zp, &w.armv7, &w.sums, out, tmp)
}

/// The `depthwise` dispatcher's contract: `w` [taps][c] as i32, `x` with padding
/// and no slack. Pads a copy (with slack) and lays the weights out as i16; weights
/// beyond i16 (never from s8 models) go to the scalar reference.
pub fn depthwise(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    depthwise_i32(x, g, zp, w, acc, |x, g, w, sums, acc| depthwise_checked(x, g, zp, w, sums, Out::I32(acc), &mut []))
}

/// What the property tests of `kernels/tests.rs` do not reach on armv7: the
/// detection, and requantisation with parameters where NEON's flushing of subnormals
/// or its NaN handling could differ from the scalar VFP code.
#[cfg(test)]
mod tests {
    use super::super::testgen::Lcg;
    use super::super::{self as kernels, Isa};
    use super::*;

    /// The tests run on NEON CPUs (qemu-arm emulates one); the kernels must be chosen there.
    #[test]
    fn neon_is_detected_and_chosen() {
        assert!(has_neon(), "this CPU reports no NEON in AT_HWCAP");
        assert_eq!(Isa::available(), vec![Isa::Scalar, Isa::Armv7Neon]);
        if std::env::var_os("EDGEMED_INT8_ISA").is_none() {
            assert_eq!(Isa::detect(), Isa::Armv7Neon);
        }
    }

    /// Requantisation on sums and parameters chosen to hit NEON's differences from
    /// the scalar VFP code: subnormal multipliers, biases and products (flushed to
    /// zero by NEON), ties at half steps, sums near the int32 limits with offsets that
    /// wrap, results past ±2^22, infinities and NaN.
    #[test]
    fn requantisation_with_awkward_parameters_equals_scalar() {
        let mut s = Lcg::new(13);
        let specials = [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1.1754942e-38,
            -5.877472e-39,
            1e-40,
            0.5,
            -0.5,
            2.5,
            1.0,
            3e4,
            -3e4,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut inside = 0;
        for round in 0..200 {
            let cout = 1 + s.u32() as usize % 45;
            let pixels = 1 + s.u32() as usize % 9;
            let pick =
                |s: &mut Lcg, ordinary: f32| if s.u32().is_multiple_of(3) { specials[s.u32() as usize % specials.len()] } else { ordinary };
            let r = Requant {
                offset: (0..cout)
                    .map(|_| if s.u32().is_multiple_of(4) { [i32::MIN, i32::MAX, -1][s.u32() as usize % 3] } else { s.u32() as i16 as i32 })
                    .collect(),
                mult: (0..cout)
                    .map(|_| {
                        let m = (1 + s.u32() % 1000) as f32 * 1e-3;
                        pick(&mut s, m)
                    })
                    .collect(),
                bias: (0..cout)
                    .map(|_| {
                        let b = (s.u32() % 2001) as f32 * 0.5 - 500.0;
                        pick(&mut s, b)
                    })
                    .collect(),
                out_zp: (s.u32() % 256) as f32,
                lo: (0..cout).map(|_| s.u32() as u8 % 30).collect(),
                hi: (0..cout).map(|_| 225 + s.u32() as u8 % 31).collect(),
            };
            let acc: Vec<i32> = (0..pixels * cout)
                .map(|i| match (i + round) % 7 {
                    0 => [i32::MIN, i32::MAX, 0, 1, -1][s.u32() as usize % 5],
                    1 => s.u32() as i32,
                    _ => s.u32() as i16 as i32 / 8,
                })
                .collect();
            let (mut a, mut b) = (vec![0u8; pixels * cout], vec![0xa5u8; pixels * cout]);
            kernels::requantize(Isa::Scalar, &acc, cout, &r, &mut a);
            kernels::requantize(Isa::Armv7Neon, &acc, cout, &r, &mut b);
            assert_eq!(a, b, "round {round} cout {cout} {r:?} {acc:?}");
            inside += a.iter().enumerate().filter(|&(i, &v)| v > r.lo[i % cout] && v < r.hi[i % cout]).count();
        }
        assert!(inside > 1000, "{inside} outputs inside the clamp");
    }

    /// A subnormal product whose scalar sum with a subnormal bias is a larger
    /// subnormal: NEON flushes both, and both round to the zero point.
    #[test]
    fn subnormal_requantisation_rounds_to_the_zero_point() {
        let r = Requant { offset: vec![0; 8], mult: vec![1e-44; 8], bias: vec![1e-40; 8], out_zp: 77.0, lo: vec![0; 8], hi: vec![255; 8] };
        let acc: Vec<i32> = (0..8).map(|i| 1000 * i).collect();
        let (mut a, mut b) = (vec![0u8; 8], vec![0u8; 8]);
        kernels::requantize(Isa::Scalar, &acc, 8, &r, &mut a);
        kernels::requantize(Isa::Armv7Neon, &acc, 8, &r, &mut b);
        assert_eq!(a, vec![77; 8]);
        assert_eq!(a, b);
    }
}
