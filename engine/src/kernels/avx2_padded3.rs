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
    assert!(matches!(unit, 2 | 4 | 6 | 8) && unit == g.stride[2] * cin);
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
                    6 => run::<3>(src, &shape, c0, n, out),
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
/// (P pairs, 2P bytes and 8 / P voxels per vector), in tiles of T vectors, then single
/// vectors for the rest; returns G.
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
            let a = tile::<T, G>(src.add(q * 2 * P), s, c0, per * 2 * P);
            store::<T, G, P>(&a, T * per, s.cout, out.add(q * s.cout + c0));
            q += T * per;
        }
        while q < n {
            let a = tile::<1, G>(src.add(q * 2 * P), s, c0, per * 2 * P);
            store::<1, G, P>(&a, (n - q).min(per), s.cout, out.add(q * s.cout + c0));
            q += per;
        }
    }
    G
}

/// The accumulators of T vectors (`step` input bytes apart from `src` on: 16, or 12
/// for U = 6) x channels c0 .. c0 + G over every unit.
///
/// # Safety
/// AVX2; the loads as [`conv3d`] states.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const T: usize, const G: usize>(src: *const u8, s: &Shape, c0: usize, step: usize) -> [[__m256i; G]; T] {
    // SAFETY: the caller's bounds; unaligned loads.
    unsafe {
        let mut a = [[_mm256_setzero_si256(); G]; T];
        let mut w = s.pairs.add(c0 * 16);
        for &off in s.offsets {
            let r = src.add(off as usize);
            let mut xs = [_mm256_setzero_si256(); T];
            for (t, xt) in xs.iter_mut().enumerate() {
                *xt = _mm256_cvtepu8_epi16(_mm_loadu_si128(r.add(t * step) as *const __m128i));
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
    // SAFETY: the stores: voxel t per + k < n, channel gi < G.
    unsafe {
        if n == T * per {
            for (t, at) in a.iter().enumerate() {
                store_vector::<G, P>(at, cout, out.add(t * per * cout));
            }
            return;
        }
        // A run's last vector, part of it: lane by lane.
        let mut lanes = [[[0i32; 8]; G]; T];
        for t in 0..T {
            for gi in 0..G {
                _mm256_storeu_si256(lanes[t][gi].as_mut_ptr() as *mut __m256i, a[t][gi]);
            }
        }
        for q in 0..n {
            let (t, k) = (q / per, q % per);
            for gi in 0..G {
                let l = &lanes[t][gi][k * P..(k + 1) * P];
                *out.add(q * cout + gi) = l.iter().fold(0i32, |s, &x| s.wrapping_add(x));
            }
        }
    }
}

/// The 8 / P voxels' sums of one vector per channel (lanes (voxel, pair), P pairs
/// summed by `vphaddd`), each voxel's G channels stored together at out + v cout.
///
/// # Safety
/// AVX2; 8 / P voxels x cout int32 writable at `out`, G <= cout.
#[inline(always)]
unsafe fn store_vector<const G: usize, const P: usize>(a: &[__m256i; G], cout: usize, out: *mut i32) {
    // SAFETY: register operations; stores of G int32 at voxel v < 8 / P (the caller's).
    unsafe {
        let at = |v: usize| out.add(v * cout);
        let lo = |x: __m256i| _mm256_castsi256_si128(x);
        let hi = |x: __m256i| _mm256_extracti128_si256::<1>(x);
        let st128 = |v: usize, x: __m128i| _mm_storeu_si128(at(v) as *mut __m128i, x);
        let st64 = |v: usize, x: __m128i| _mm_storel_epi64(at(v) as *mut __m128i, x);
        let st256 = |v: usize, x: __m256i| _mm256_storeu_si256(at(v) as *mut __m256i, x);
        let z = _mm256_setzero_si256();
        match (P, G) {
            // Lanes are voxels: a transpose of G channels x 8 voxels.
            (1, 1) => {
                let mut l = [0i32; 8];
                _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, a[0]);
                for (v, &x) in l.iter().enumerate() {
                    *at(v) = x;
                }
            }
            (1, 2) => {
                // [v0 v1 | v4 v5], [v2 v3 | v6 v7], each voxel (c0, c1).
                let (t0, t1) = (_mm256_unpacklo_epi32(a[0], a[1]), _mm256_unpackhi_epi32(a[0], a[1]));
                for (v, x) in [(0, lo(t0)), (2, lo(t1)), (4, hi(t0)), (6, hi(t1))] {
                    st64(v, x);
                    st64(v + 1, _mm_unpackhi_epi64(x, x));
                }
            }
            (1, 4) | (1, 8) => {
                // Four channels at a time: r[k] = [voxel k c..c+4 | voxel k + 4 c..c+4].
                let quad = |c: usize| {
                    let (t0, t1) = (_mm256_unpacklo_epi32(a[c], a[c + 1]), _mm256_unpacklo_epi32(a[c + 2], a[c + 3]));
                    let (t2, t3) = (_mm256_unpackhi_epi32(a[c], a[c + 1]), _mm256_unpackhi_epi32(a[c + 2], a[c + 3]));
                    [
                        _mm256_unpacklo_epi64(t0, t1),
                        _mm256_unpackhi_epi64(t0, t1),
                        _mm256_unpacklo_epi64(t2, t3),
                        _mm256_unpackhi_epi64(t2, t3),
                    ]
                };
                let r = quad(0);
                if G == 4 {
                    for (k, x) in r.iter().enumerate() {
                        st128(k, lo(*x));
                        st128(k + 4, hi(*x));
                    }
                } else {
                    let s = quad(4);
                    for k in 0..4 {
                        st256(k, _mm256_permute2x128_si256::<0x20>(r[k], s[k]));
                        st256(k + 4, _mm256_permute2x128_si256::<0x31>(r[k], s[k]));
                    }
                }
            }
            // Two pairs a voxel: hadd(c, c + 1) = [c v0 v1, c+1 v0 v1 | c v2 v3, c+1 v2 v3],
            // reordered to [v0 (c, c+1), v1 (c, c+1) | v2 .., v3 ..].
            (2, 1) => {
                let h = _mm256_hadd_epi32(a[0], z);
                let mut l = [0i32; 8];
                _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, h);
                for (v, i) in [0, 1, 4, 5].into_iter().enumerate() {
                    *at(v) = l[i];
                }
            }
            (2, _) => {
                let pair = |c: usize| _mm256_shuffle_epi32::<0b11_01_10_00>(_mm256_hadd_epi32(a[c], a[c + 1]));
                if G == 2 {
                    let x = pair(0);
                    st64(0, lo(x));
                    st64(1, _mm_unpackhi_epi64(lo(x), lo(x)));
                    st64(2, hi(x));
                    st64(3, _mm_unpackhi_epi64(hi(x), hi(x)));
                } else {
                    // [v0 c..c+4 | v2 c..c+4] and [v1 .. | v3 ..].
                    let quad = |c: usize| {
                        let (x, y) = (pair(c), pair(c + 2));
                        (_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y))
                    };
                    let (r0, r1) = quad(0);
                    if G == 4 {
                        st128(0, lo(r0));
                        st128(1, lo(r1));
                        st128(2, hi(r0));
                        st128(3, hi(r1));
                    } else {
                        let (s0, s1) = quad(4);
                        st256(0, _mm256_permute2x128_si256::<0x20>(r0, s0));
                        st256(1, _mm256_permute2x128_si256::<0x20>(r1, s1));
                        st256(2, _mm256_permute2x128_si256::<0x31>(r0, s0));
                        st256(3, _mm256_permute2x128_si256::<0x31>(r1, s1));
                    }
                }
            }
            // Four pairs a voxel: two hadds give [v0 c..c+4 | v1 c..c+4].
            (4, _) => {
                let get = |c: usize| if c < G { a[c] } else { z };
                let quad = |c: usize| _mm256_hadd_epi32(_mm256_hadd_epi32(get(c), get(c + 1)), _mm256_hadd_epi32(get(c + 2), get(c + 3)));
                let q0 = quad(0);
                match G {
                    1 => {
                        *at(0) = _mm_cvtsi128_si32(lo(q0));
                        *at(1) = _mm_cvtsi128_si32(hi(q0));
                    }
                    2 => {
                        st64(0, lo(q0));
                        st64(1, hi(q0));
                    }
                    4 => {
                        st128(0, lo(q0));
                        st128(1, hi(q0));
                    }
                    _ => {
                        let q1 = quad(4);
                        st256(0, _mm256_permute2x128_si256::<0x20>(q0, q1));
                        st256(1, _mm256_permute2x128_si256::<0x31>(q0, q1));
                    }
                }
            }
            // Three pairs a voxel (6-byte units), two voxels: lanes 6 and 7 are zero (their
            // weights are). [v0 p0, v1 p0, v0 p1, v1 p1 | v0 p2, v1 p2, 0, 0], the halves
            // added, then lanes 2, 3 onto 0, 1: (v0, v1) of the channel in lanes 0 and 1.
            (3, _) => {
                let idx = _mm256_setr_epi32(0, 3, 1, 4, 2, 5, 6, 7);
                let two = |c: usize| {
                    let t = _mm256_permutevar8x32_epi32(a[c], idx);
                    let s = _mm_add_epi32(lo(t), hi(t));
                    _mm_add_epi32(s, _mm_shuffle_epi32::<0b11_10_11_10>(s))
                };
                match G {
                    1 => {
                        let r = two(0);
                        *at(0) = _mm_cvtsi128_si32(r);
                        *at(1) = _mm_extract_epi32::<1>(r);
                    }
                    2 => {
                        // [c0 v0, c1 v0, c0 v1, c1 v1].
                        let u = _mm_unpacklo_epi32(two(0), two(1));
                        st64(0, u);
                        st64(1, _mm_unpackhi_epi64(u, u));
                    }
                    _ => {
                        // Four channels at a time: [c..c+4 v0], [c..c+4 v1].
                        for c in (0..G).step_by(4) {
                            let (u, w) = (_mm_unpacklo_epi32(two(c), two(c + 1)), _mm_unpacklo_epi32(two(c + 2), two(c + 3)));
                            _mm_storeu_si128(at(0).add(c) as *mut __m128i, _mm_unpacklo_epi64(u, w));
                            _mm_storeu_si128(at(1).add(c) as *mut __m128i, _mm_unpackhi_epi64(u, w));
                        }
                    }
                }
            }
            _ => unreachable!("units of 2, 4, 6 or 8 bytes"),
        }
    }
}
