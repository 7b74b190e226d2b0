//! AVX2's 3-D conv on the zero-point padded channels-last volume ([`Padded3`]) with the
//! output voxels in lanes ([`VoxelLanes`]), for convs of few input channels: a U-Net's
//! full-resolution layers (1 -> 4 at stride 2, 2 -> 2, 4 -> 4, 8 -> 8, the 8 -> 2 of a
//! transposed conv's sub-pixel form). Each 16-byte load, widened to int16, is one unit
//! of the kernel row for 8 / P neighbouring voxels; one `vpmaddwd` per output channel
//! adds its products into that channel's accumulator (exact: u8 x s8 as int16, int32
//! sums). Tiles of T vectors x G output channels keep T G accumulators in registers;
//! the input vectors are shared by the G channels, the weight vectors by the T vectors.
//!
//! The sums are Σ x w over every tap, the padding reading the zero point: the raw sums
//! of a dense conv, as every other ISA's kernels give them (`acc`); the caller
//! requantises them.

use std::arch::x86_64::*;
use std::ops::Range;

use super::padded3::MAX_LANE_UNITS;
use super::Padded3;

/// What a tile reads: each unit's byte offset from a voxel's first kernel row (kernel
/// rows, then units along the row: the weights' order), the weights.
struct Shape<'a> {
    offsets: &'a [u32],
    pairs: *const i16,
    cout: usize,
}

/// The int32 sums of outputs `voxels` (in [z][y][x] order) of `p` into `acc`
/// ([voxels][cout], from its start), on the padded volume `x` (with at least 16 bytes of
/// slack past the volume: the last vector of a row reads up to 15 bytes past its row).
///
/// # Safety
/// The CPU must have AVX2. (The slices are checked here.)
#[target_feature(enable = "avx2")]
pub unsafe fn conv3d(x: &[u8], p: &Padded3, voxels: Range<usize>, acc: &mut [i32]) {
    let lanes = p.lanes.as_ref().expect("a padded 3-D conv compiled for voxels in lanes");
    let g = &p.g;
    let [od, oh, ow] = g.output;
    let [kd, kh, _] = g.kernel;
    let [_, ph, pw] = p.padded;
    let (cin, cout, unit, units) = (g.cin, lanes.cout, lanes.unit, lanes.units);
    assert!(voxels.end <= od * oh * ow && acc.len() >= voxels.len() * cout);
    assert!(x.len() >= p.planar_len() + 16, "the padded volume needs 16 bytes of slack");
    assert!(matches!(unit, 2 | 4 | 8) && unit == g.stride[2] * cin);
    assert!(kd * kh * units <= MAX_LANE_UNITS && lanes.pairs.len() >= kd * kh * units * cout * 16);
    let (plane_stride, row_stride) = (ph * pw * cin, pw * cin);
    let mut offsets = [0u32; MAX_LANE_UNITS];
    for i in 0..kd {
        for j in 0..kh {
            for m in 0..units {
                offsets[(i * kh + j) * units + m] = (i * plane_stride + j * row_stride + m * unit) as u32;
            }
        }
    }
    let shape = Shape { offsets: &offsets[..kd * kh * units], pairs: lanes.pairs.as_ptr(), cout };
    let mut v = voxels.start;
    while v < voxels.end {
        let (zy, x0) = (v / ow, v % ow);
        let (z, y) = (zy / oh, zy % oh);
        let x1 = ow.min(x0 + (voxels.end - v));
        let row = z * g.stride[0] * plane_stride + y * g.stride[1] * row_stride;
        let (n, dst) = (x1 - x0, (v - voxels.start) * cout);
        // Channels in groups of 8, 4, 2, 1; each group's tiles along the run.
        let mut c0 = 0;
        while c0 < cout {
            // SAFETY: AVX2. Reads: every vector starts at a voxel < ow of this output
            // row, whose kernel rows lie in the padded volume; a vector's 16 bytes end
            // less than 16 bytes past its kernel row (the unit's bytes past kw cin meet
            // zero weights), inside the slack past the volume's last row (asserted).
            // Weights: channels c0 .. c0 + G <= cout of each unit (asserted length).
            // Writes: voxels < n of the run, channels < cout, from `dst` inside acc
            // (voxels.len() cout, asserted).
            c0 += unsafe {
                let src = x.as_ptr().add(row + x0 * unit);
                let out = acc.as_mut_ptr().add(dst);
                match unit {
                    2 => run::<1>(src, &shape, c0, n, out),
                    4 => run::<2>(src, &shape, c0, n, out),
                    _ => run::<4>(src, &shape, c0, n, out),
                }
            };
        }
        v += x1 - x0;
    }
}

/// [`group`] for the widest channel group left from c0; returns its channels.
///
/// # Safety
/// As [`conv3d`]'s loop states.
#[inline(always)]
unsafe fn run<const P: usize>(src: *const u8, s: &Shape, c0: usize, n: usize, out: *mut i32) -> usize {
    // SAFETY: passed on.
    unsafe {
        match s.cout - c0 {
            8.. => group::<1, 8, P>(src, s, c0, n, out),
            4..=7 => group::<2, 4, P>(src, s, c0, n, out),
            2 | 3 => group::<4, 2, P>(src, s, c0, n, out),
            _ => group::<6, 1, P>(src, s, c0, n, out),
        }
    }
}

/// The sums of channels c0 .. c0 + G for all `n` voxels of a row run starting at `src`
/// (P pairs, 8 / P voxels per vector), in tiles of T vectors, then single vectors for
/// the rest; returns G.
///
/// # Safety
/// As [`conv3d`]'s loop states.
#[inline(always)]
unsafe fn group<const T: usize, const G: usize, const P: usize>(src: *const u8, s: &Shape, c0: usize, n: usize, out: *mut i32) -> usize {
    let per = 8 / P;
    let mut q = 0;
    // SAFETY: the caller's bounds, voxel by voxel.
    unsafe {
        while q + T * per <= n {
            let a = tile::<T, G>(src.add(q * 2 * P), s, c0);
            store::<T, G, P>(&a, T * per, s.cout, out.add(q * s.cout + c0));
            q += T * per;
        }
        while q < n {
            let a = tile::<1, G>(src.add(q * 2 * P), s, c0);
            store::<1, G, P>(&a, (n - q).min(per), s.cout, out.add(q * s.cout + c0));
            q += per;
        }
    }
    G
}

/// The accumulators of T vectors (16 input bytes apart from `src` on) x channels
/// c0 .. c0 + G over every unit.
///
/// # Safety
/// AVX2; the loads as [`conv3d`] states.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const T: usize, const G: usize>(src: *const u8, s: &Shape, c0: usize) -> [[__m256i; G]; T] {
    // SAFETY: the caller's bounds; unaligned loads.
    unsafe {
        let mut a = [[_mm256_setzero_si256(); G]; T];
        let mut w = s.pairs.add(c0 * 16);
        for &off in s.offsets {
            let r = src.add(off as usize);
            let mut xs = [_mm256_setzero_si256(); T];
            for (t, xt) in xs.iter_mut().enumerate() {
                *xt = _mm256_cvtepu8_epi16(_mm_loadu_si128(r.add(t * 16) as *const __m128i));
            }
            for gi in 0..G {
                let wv = _mm256_loadu_si256(w.add(gi * 16) as *const __m256i);
                for t in 0..T {
                    a[t][gi] = _mm256_add_epi32(a[t][gi], _mm256_madd_epi16(xs[t], wv));
                }
            }
            w = w.add(s.cout * 16);
        }
        a
    }
}

/// The first `n` voxels' sums of a tile (lanes summed P at a time) stored at `out`
/// ([voxel][cout], channel c0 first).
///
/// # Safety
/// AVX2; n voxels x cout int32 writable at `out`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn store<const T: usize, const G: usize, const P: usize>(a: &[[__m256i; G]; T], n: usize, cout: usize, out: *mut i32) {
    let per = 8 / P;
    let mut lanes = [[[0i32; 8]; G]; T];
    // SAFETY: T G vectors into `lanes`; the stores: voxel t per + k < n, channel gi < G.
    unsafe {
        for t in 0..T {
            for gi in 0..G {
                _mm256_storeu_si256(lanes[t][gi].as_mut_ptr() as *mut __m256i, a[t][gi]);
            }
        }
        if n == T * per {
            for t in 0..T {
                for k in 0..per {
                    let o = out.add((t * per + k) * cout);
                    for gi in 0..G {
                        let l = &lanes[t][gi][k * P..(k + 1) * P];
                        *o.add(gi) = l.iter().fold(0i32, |s, &x| s.wrapping_add(x));
                    }
                }
            }
        } else {
            for q in 0..n {
                let (t, k) = (q / per, q % per);
                for gi in 0..G {
                    let l = &lanes[t][gi][k * P..(k + 1) * P];
                    *out.add(q * cout + gi) = l.iter().fold(0i32, |s, &x| s.wrapping_add(x));
                }
            }
        }
    }
}
