//! What the aarch64 (NEON, `sdot`) and armv7 (NEON) kernels share: where the
//! receptive fields of a dense conv lie in its input (both read each kernel row in
//! place, no im2row), the GEMM driver around their dense products, the depthwise
//! weight layout, and the depthwise driver for int32 weights.

use super::{pad_nhwc, scalar, ConvGeometry, PackedWeights};

/// Channels per depthwise weight block: [c / DW][taps][DW] as i16.
pub(super) const DW: usize = 8;

/// Depthwise weights as the ARM kernels read them: [c / DW][taps][DW] as i16, zero
/// padded; `get(ch, t)` is the weight of channel ch at tap t.
pub(super) fn depthwise_layout(c: usize, taps: usize, get: impl Fn(usize, usize) -> i16) -> Vec<i16> {
    let mut w = vec![0i16; c.div_ceil(DW) * taps * DW];
    for ch in 0..c {
        for t in 0..taps {
            w[((ch / DW) * taps + t) * DW + ch % DW] = get(ch, t);
        }
    }
    w
}

/// The `depthwise` dispatcher's contract for the ARM kernels: `w` [taps][c] as i32,
/// `x` with padding and no slack. Pads a copy (with DW bytes of slack) and lays the
/// weights out as i16 for `run` (padded input, its geometry, weights, Σw, sums out);
/// weights beyond i16 (never from s8 models) go to the scalar reference.
pub(super) fn depthwise_i32(
    x: &[u8],
    g: &ConvGeometry,
    zp: u8,
    w: &[i32],
    acc: &mut [i32],
    run: impl FnOnce(&[u8], &ConvGeometry, &[i16], &[i32], &mut [i32]),
) {
    let (c, taps) = (g.cin, g.kh * g.kw);
    if w.iter().any(|&v| i16::try_from(v).is_err()) {
        return scalar::depthwise(x, g, zp, w, acc);
    }
    let w16 = depthwise_layout(c, taps, |ch, t| w[t * c + ch] as i16);
    let sums: Vec<i32> = (0..c).map(|ch| (0..taps).map(|t| w[t * c + ch]).fold(0, i32::wrapping_add)).collect();
    let (hp, wp) = (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3]);
    let mut padded = vec![0u8; hp * wp * c + DW];
    pad_nhwc(x, g.h, g.w, c, g.pads, zp, &mut padded);
    let gp = ConvGeometry { h: hp, w: wp, pads: [0; 4], ..*g };
    run(&padded, &gp, &w16, &sums, acc)
}

/// Kernel row i of pixel p starts at byte (p / ow) step_y + (p % ow) step_x + i row_stride
/// of the input.
#[derive(Clone, Copy)]
pub(super) struct Rows {
    pub pixels: usize,
    pub ow: usize,
    pub step_y: usize,
    pub step_x: usize,
    pub row_stride: usize,
}

impl Rows {
    pub fn base(&self, p: usize) -> usize {
        (p / self.ow) * self.step_y + (p % self.ow) * self.step_x
    }

    /// The receptive fields of conv `g` on its (unpadded, or zero-point padded) NHWC input.
    pub fn of_conv(g: &ConvGeometry) -> Rows {
        Rows { pixels: g.oh * g.ow, ow: g.ow, step_y: g.stride[0] * g.w * g.cin, step_x: g.stride[1] * g.cin, row_stride: g.w * g.cin }
    }

    /// `pixels` contiguous rows of `w.k` bytes, each read as `w`'s kernel rows.
    pub fn of_gemm(pixels: usize, w: &PackedWeights) -> Rows {
        Rows { pixels, ow: 1, step_y: w.k, step_x: 0, row_stride: w.row_len }
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for contiguous rows of `x` (no slack needed), with
/// `dense` the kernel's product on rows whose reads stay `reach` bytes past their start:
/// the pixels whose reads stay inside `x` run in place, the last few from a padded copy.
pub(super) fn gemm_in_place(
    x: &[u8],
    pixels: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    reach: usize,
    mut dense: impl FnMut(&[u8], Rows, &mut [i32]),
) {
    let (k, cout) = (w.k, w.cout);
    if pixels == 0 || cout == 0 || k == 0 {
        acc[..pixels * cout].fill(0);
        return;
    }
    let direct = if x.len() >= reach { ((x.len() - reach) / k + 1).min(pixels) } else { 0 };
    dense(x, Rows::of_gemm(direct, w), &mut acc[..direct * cout]);
    if direct < pixels {
        let mut tail = x[direct * k..pixels * k].to_vec();
        tail.resize(tail.len() + reach, 0);
        dense(&tail, Rows::of_gemm(pixels - direct, w), &mut acc[direct * cout..pixels * cout]);
    }
}

/// The checks every ARM depthwise kernel makes before it reads through raw pointers:
/// an unpadded geometry, weights and Σw long enough, DW bytes of slack past the input.
/// Returns (taps, channel blocks), or None when there is nothing to compute.
pub(super) fn depthwise_bounds(x: &[u8], g: &ConvGeometry, w16: &[i16], sums: &[i32]) -> Option<(usize, usize)> {
    assert_eq!(g.pads, [0; 4]);
    let c = g.cin;
    let (taps, blocks) = (g.kh * g.kw, c.div_ceil(DW));
    if g.oh * g.ow == 0 || c == 0 {
        return None;
    }
    assert!(w16.len() >= blocks * taps * DW && sums.len() >= c);
    assert!(x.len() >= (g.h * g.w - 1) * c + blocks * DW, "input needs slack past its end");
    Some((taps, blocks))
}
