//! A 3-D convolution with few output channels (a U-Net's first and last layers: 1-8
//! channels at full resolution), with pixels in lanes. Gathering each output voxel's
//! patch into a row ([`crate::volume::gather_plane`]) costs more than its few
//! products there, and a kernel with channels in lanes leaves most lanes idle. Here
//! the input is copied once into planes ([cin][d][h][w]) padded with the zero point,
//! so every kernel row of 16 neighbouring outputs is one contiguous load; the four
//! bytes of lane p are taps j..j + 4 of output p's kernel row (kw rounded up to a
//! multiple of 4, the extra taps' weights zero), and one `vpdpbusd` per output channel
//! adds them. The sums are the exact integers of the dense conv on the same padded
//! input (padding reads the zero point, as the gathered rows do), so the
//! requantisation, the same float operations, gives the same bytes. The compiler picks
//! this layout for AVX-512 VNNI alone; its reference is the gathered-rows form of the
//! same conv on any other ISA (`narrow_3d_convs_equal_every_isa`).

use super::Geometry3;

/// Output channels up to which the narrow kernel applies.
pub const NARROW_MAX_COUT: usize = 8;

/// A narrow 3-D convolution's geometry and weights.
#[derive(Debug, Clone)]
pub struct Narrow3 {
    pub g: Geometry3,
    pub cout: usize,
    /// The padded planes' sizes: every tap of every output inside.
    pub padded: [usize; 3],
    /// Weights as quadruples of taps along x, [cin][kd][kh][kw / 4][cout] (each i32
    /// four s8 bytes, taps past kw zero).
    pub quads: Vec<i32>,
}

impl Narrow3 {
    /// Whether the narrow kernel takes this conv: few output channels, and each lane's
    /// window (stride x 15 + kw rounded up to 4 bytes) inside one 64-byte load.
    pub fn applies(cout: usize, kernel: [usize; 3], stride: [usize; 3]) -> bool {
        (1..=NARROW_MAX_COUT).contains(&cout) && stride[2] <= 2 && stride[2] * 15 + kernel[2].div_ceil(4) * 4 <= 64
    }

    /// `w`: the conv's int8 weights as ONNX stores them, [cout][cin][kd][kh][kw].
    pub fn new(g: Geometry3, cout: usize, w: &[i8]) -> Narrow3 {
        let [kd, kh, kw] = g.kernel;
        let (cin, mq) = (g.cin, kw.div_ceil(4));
        let mut quads = vec![0i32; cin * kd * kh * mq * cout];
        for co in 0..cout {
            for ci in 0..cin {
                for a in 0..kd {
                    for b in 0..kh {
                        for m in 0..mq {
                            let bytes: [u8; 4] = std::array::from_fn(|t| {
                                let j = 4 * m + t;
                                if j < kw {
                                    w[(((co * cin + ci) * kd + a) * kh + b) * kw + j] as u8
                                } else {
                                    0
                                }
                            });
                            quads[(((ci * kd + a) * kh + b) * mq + m) * cout + co] = i32::from_le_bytes(bytes);
                        }
                    }
                }
            }
        }
        let padded = std::array::from_fn(|i| (g.output[i] - 1) * g.stride[i] + g.kernel[i]);
        Narrow3 { g, cout, padded, quads }
    }

    /// Bytes of the padded planes.
    pub fn planar_len(&self) -> usize {
        self.g.cin * self.padded.iter().product::<usize>()
    }

    /// The channels-last input `x` as padded planes in `planar` (its first
    /// [`Self::planar_len`] bytes; the rest is slack the kernel may read).
    pub fn pad(&self, x: &[u8], zp: u8, planar: &mut [u8]) {
        self.pad_planes(x, zp, 0..self.planes(), &mut planar[..self.planar_len()]);
    }

    /// Padded planes (input channel, z) there are: [`Self::planar_len`] is this many
    /// planes of [`Self::plane_len`] bytes.
    pub fn planes(&self) -> usize {
        self.g.cin * self.padded[0]
    }

    pub fn plane_len(&self) -> usize {
        self.padded[1] * self.padded[2]
    }

    /// Padded planes `planes` (numbered ci pd + z) of [`Self::pad`] into `out`, which
    /// holds exactly them: threads can pad disjoint runs of planes.
    pub fn pad_planes(&self, x: &[u8], zp: u8, planes: std::ops::Range<usize>, out: &mut [u8]) {
        let ([d, h, w], pads) = (self.g.input, self.g.pads);
        let [pd, ph, pw] = self.padded;
        let c = self.g.cin;
        assert_eq!(out.len(), planes.len() * ph * pw);
        // Input voxels no output reads (past the padded extent) are left out.
        let xs = w.min(pw.saturating_sub(pads[2]));
        let ys = h.min(ph.saturating_sub(pads[1]));
        for (plane, out) in planes.zip(out.chunks_exact_mut(ph * pw)) {
            let (ci, z) = (plane / pd, plane % pd);
            out.fill(zp);
            let Some(iz) = z.checked_sub(pads[0]).filter(|&iz| iz < d) else { continue };
            for iy in 0..ys {
                let src = &x[(iz * h + iy) * w * c..][..xs * c];
                let row = &mut out[(iy + pads[1]) * pw + pads[2]..][..xs];
                // Channel ci of each pixel; the counts a U-Net's narrow convs have with
                // their width known to the compiler (it then shuffles whole vectors).
                match c {
                    1 => row.copy_from_slice(src),
                    2 => pick::<2>(row, src, ci),
                    4 => pick::<4>(row, src, ci),
                    8 => pick::<8>(row, src, ci),
                    _ => row.iter_mut().zip(src[ci..].iter().step_by(c)).for_each(|(o, &v)| *o = v),
                }
            }
        }
    }
}

/// row[i] = channel `ci` of pixel i of `src` (pixels of C bytes).
#[inline(always)]
fn pick<const C: usize>(row: &mut [u8], src: &[u8], ci: usize) {
    for (o, px) in row.iter_mut().zip(src.chunks_exact(C)) {
        *o = px[ci];
    }
}
