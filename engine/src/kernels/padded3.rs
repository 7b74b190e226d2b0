//! A 3-D dense convolution read in place from its input padded with the zero point
//! (channels last), instead of gathering each output voxel's patch into a row
//! ([`crate::volume::gather_plane`]): the input is copied once into a volume that holds
//! every tap of every output, and the VNNI dense kernel reads each kernel row (kw x cin
//! contiguous bytes) of each voxel there, as it reads a 2-D conv's rows. A gathered row
//! is one short copy per kernel row and voxel, which costs as much as the products for
//! the few input channels of a U-Net's volumes. The sums are the exact integers of the
//! gathered-rows form (padding reads the zero point in both), so the requantisation
//! gives the same bytes; `dense_3d_convs_equal_every_isa` checks it against the other
//! ISAs.
//!
//! Two kernels read it. AVX-512 VNNI's dense kernel (channels in lanes) takes any 3-D
//! conv. AVX2's takes the convs whose input channels are few ([`Padded3::lanes_apply`]):
//! there the output voxels are in lanes ([`VoxelLanes`]), since a block of 16 output
//! channels would be mostly empty and gathering each voxel's patch costs more than
//! its few products (a U-Net's 2 -> 2 conv at 32³ took 901 us gathered on a Zen 3 core).

use super::Geometry3;

/// A 3-D dense convolution's geometry and its padded input's sizes.
#[derive(Debug, Clone)]
pub struct Padded3 {
    pub g: Geometry3,
    /// Every tap of every output inside: (output - 1) stride + kernel along each axis.
    pub padded: [usize; 3],
    /// The weights for voxels in lanes, where the compiler chose that kernel.
    pub lanes: Option<VoxelLanes>,
}

/// Units a voxels-in-lanes kernel reads per voxel at most (kd kh M: a 5x5x5 kernel at
/// stride 1 is 125): their offsets are kept on the stack.
pub const MAX_LANE_UNITS: usize = 256;

/// Weights for a kernel with output voxels in lanes (AVX2's, for few input channels).
///
/// Along x, output voxel v's kernel row starts U = stride_x cin bytes after voxel v - 1's,
/// so 16 input bytes from voxel v's start hold a "unit" of U bytes (U / 2 = P byte
/// pairs) for each of the V = 16 / U voxels v, v + 1, ... (8 / P; 2 for U = 6, an RGB
/// input at stride 2, whose lanes 6 and 7 meet zero weights): widened to int16, pair p
/// of voxel v' is int32 lane (v' - v) P + p, which one `vpmaddwd` multiplies with the
/// weights of those two bytes. A kernel row (kw cin bytes) is M = ceil(kw / stride_x)
/// units; bytes past kw cin meet zero weights. The P lanes of a voxel are summed at the
/// end.
#[derive(Debug, Clone)]
pub struct VoxelLanes {
    pub cout: usize,
    /// U: bytes per unit, also the input bytes from one output voxel to the next.
    pub unit: usize,
    /// M: units per kernel row.
    pub units: usize,
    /// [kd kh][M][cout][8 lanes][2] as i16: lane L holds the weights of the unit's bytes
    /// 2 (L % P) and 2 (L % P) + 1.
    pub pairs: Vec<i16>,
}

impl Padded3 {
    pub fn new(g: Geometry3) -> Padded3 {
        let padded = std::array::from_fn(|i| (g.output[i] - 1) * g.stride[i] + g.kernel[i]);
        Padded3 { g, padded, lanes: None }
    }

    /// Whether the voxels-in-lanes kernel takes a conv of `cout` outputs: a unit of 2, 4,
    /// 6 or 8 bytes (cin 2 at stride 1, cin 1 or 3 at stride 2, cin 4 or 8, ...), at most 16
    /// outputs (a block of 16 channels fills its lanes beyond that).
    pub fn lanes_apply(g: &Geometry3, cout: usize) -> bool {
        let units = g.kernel[0] * g.kernel[1] * g.kernel[2].div_ceil(g.stride[2]);
        matches!(g.stride[2] * g.cin, 2 | 4 | 6 | 8) && (1..=16).contains(&cout) && units <= MAX_LANE_UNITS
    }

    /// The layout with its voxels-in-lanes weights; `w` as ONNX stores them,
    /// [cout][cin][kd][kh][kw].
    pub fn with_lanes(g: Geometry3, cout: usize, w: &[i8]) -> Padded3 {
        let [kd, kh, kw] = g.kernel;
        let cin = g.cin;
        let unit = g.stride[2] * cin;
        assert!(Padded3::lanes_apply(&g, cout) && w.len() == cout * cin * kd * kh * kw);
        let (units, pairs_per_voxel) = (kw.div_ceil(g.stride[2]), unit / 2);
        let mut pairs = vec![0i16; kd * kh * units * cout * 16];
        // The weight of byte o of kernel row (a, b): tap o / cin, channel o % cin.
        let weight = |co: usize, a: usize, b: usize, o: usize| {
            let (j, ci) = (o / cin, o % cin);
            if j < kw {
                w[(((co * cin + ci) * kd + a) * kh + b) * kw + j] as i16
            } else {
                0
            }
        };
        for a in 0..kd {
            for b in 0..kh {
                for m in 0..units {
                    for co in 0..cout {
                        // Lanes past V P (U = 6) stay zero: the kernel's reduction of
                        // three pairs a voxel adds them.
                        for lane in 0..16 / unit * pairs_per_voxel {
                            let o = m * unit + 2 * (lane % pairs_per_voxel);
                            let at = ((((a * kh + b) * units + m) * cout + co) * 8 + lane) * 2;
                            pairs[at] = weight(co, a, b, o);
                            pairs[at + 1] = weight(co, a, b, o + 1);
                        }
                    }
                }
            }
        }
        let mut p = Padded3::new(g);
        p.lanes = Some(VoxelLanes { cout, unit, units, pairs });
        p
    }

    /// Bytes of the padded volume. The kernel reads up to 3 bytes past it (a kernel
    /// row's last quadruple, against zero weights): the buffer holding it needs slack.
    pub fn planar_len(&self) -> usize {
        self.planes() * self.plane_len()
    }

    /// Padded planes (z) there are.
    pub fn planes(&self) -> usize {
        self.padded[0]
    }

    /// Bytes of one padded plane (fixed z).
    pub fn plane_len(&self) -> usize {
        self.padded[1] * self.padded[2] * self.g.cin
    }

    /// Padded planes `planes` (z) of the channels-last input `x` into `out`, which holds
    /// exactly them: threads can pad disjoint runs of planes.
    pub fn pad_planes(&self, x: &[u8], zp: u8, planes: std::ops::Range<usize>, out: &mut [u8]) {
        let ([d, h, w], pads, c) = (self.g.input, self.g.pads, self.g.cin);
        let [_, ph, pw] = self.padded;
        assert_eq!(out.len(), planes.len() * self.plane_len());
        // Input voxels no output reads (past the padded extent) are left out.
        let xs = w.min(pw.saturating_sub(pads[2]));
        let ys = h.min(ph.saturating_sub(pads[1]));
        for (z, out) in planes.zip(out.chunks_exact_mut(self.plane_len())) {
            let Some(iz) = z.checked_sub(pads[0]).filter(|&iz| iz < d) else {
                out.fill(zp);
                continue;
            };
            // Rows of padding above and below, then each input row between its padding.
            out[..pads[1] * pw * c].fill(zp);
            out[(pads[1] + ys) * pw * c..].fill(zp);
            let (left, mid) = (pads[2] * c, xs * c);
            let right = pw * c - left - mid;
            for iy in 0..ys {
                let at = (iy + pads[1]) * pw * c;
                fill_short(out, at, left, zp);
                out[at + left..][..mid].copy_from_slice(&x[(iz * h + iy) * w * c..][..mid]);
                fill_short(out, at + left + mid, right, zp);
            }
        }
    }
}

/// out[at..at + len] = zp. A short run (at most 16 bytes, the padding of a row's ends
/// with few channels) is one 16-byte store where `out` has the room: the bytes past the
/// run are written again afterwards (the row's data, the next row's padding and data,
/// the next plane) or were padding already (the rows below), so [`Padded3::pad_planes`]
/// ends with the same bytes. A fill of 1-4 bytes was a call into `memset`, two per row:
/// about half of a U-Net's `memset` time, 2% of its run.
#[inline(always)]
fn fill_short(out: &mut [u8], at: usize, len: usize, zp: u8) {
    if len <= 16 && at + 16 <= out.len() {
        out[at..at + 16].copy_from_slice(&[zp; 16]);
    } else {
        out[at..at + len].fill(zp);
    }
}
