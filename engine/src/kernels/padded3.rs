//! A 3-D dense convolution read in place from its input padded with the zero point
//! (channels last), instead of gathering each output voxel's patch into a row
//! ([`crate::volume::gather_plane`]): the input is copied once into a volume that holds
//! every tap of every output, and the VNNI dense kernel reads each kernel row (kw x cin
//! contiguous bytes) of each voxel there, as it reads a 2-D conv's rows. A gathered row
//! is one short copy per kernel row and voxel, which costs as much as the products for
//! the few input channels of a U-Net's volumes. The sums are the exact integers of the
//! gathered-rows form (padding reads the zero point in both), so the requantisation
//! gives the same bytes; the compiler picks this layout for AVX-512 VNNI alone, and
//! `padded_3d_convs_equal_every_isa` checks it against the other ISAs.

use super::Geometry3;

/// A 3-D dense convolution's geometry and its padded input's sizes.
#[derive(Debug, Clone)]
pub struct Padded3 {
    pub g: Geometry3,
    /// Every tap of every output inside: (output - 1) stride + kernel along each axis.
    pub padded: [usize; 3],
}

impl Padded3 {
    pub fn new(g: Geometry3) -> Padded3 {
        let padded = std::array::from_fn(|i| (g.output[i] - 1) * g.stride[i] + g.kernel[i]);
        Padded3 { g, padded }
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
            for iy in 0..ys {
                let row = &mut out[(iy + pads[1]) * pw * c..][..pw * c];
                let (left, rest) = row.split_at_mut(pads[2] * c);
                left.fill(zp);
                let (mid, right) = rest.split_at_mut(xs * c);
                mid.copy_from_slice(&x[(iz * h + iy) * w * c..][..xs * c]);
                right.fill(zp);
            }
        }
    }
}
