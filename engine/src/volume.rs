//! 3-D convolutions built on the 2-D kernels. A 3-D conv gathers each output plane's
//! patches into rows (in the weights' [kd][kh][kw][cin] order) and multiplies them as a
//! pointwise conv, so it runs on the same VNNI / `sdot` / AVX2 products as a MobileNet's
//! 1x1 layers (AVX-512 VNNI reads the rows in place instead, and AVX2 does for convs of
//! few input channels, with the voxels in lanes: `kernels::Padded3`). A
//! transposed conv runs as a sub-pixel conv ([`crate::subpixel`]) wherever its padding
//! is below the kernel; otherwise it multiplies every input pixel by every tap's weights
//! (one pointwise product with taps x cout columns) and adds each tap's column into the
//! output pixel it lands on ([`scatter_columns`]). Both are integer-exact: the scatter
//! only adds int32s, so every ISA gives the same bits.

use super::plan::Geometry3;
use std::ops::Range;

/// Rows [pixels][kd * kh * kw * cin] of output plane `oz`, for its pixels (oy * ow +
/// ox) in `pixels`, the first at row 0: taps outside the input read the zero point,
/// so the correction zp * Σw is the same for every row. A range rather than the whole
/// plane lets threads gather and multiply parts of one plane.
pub fn gather_plane(x: &[u8], g: &Geometry3, zp: u8, oz: usize, pixels: Range<usize>, rows: &mut [u8]) {
    let [d, h, w] = g.input.map(|v| v as isize);
    let c = g.cin;
    let [kd, kh, kw] = g.kernel;
    let (run, k) = (kw * c, kd * kh * kw * c);
    let [_, oh, ow] = g.output;
    assert!(pixels.end <= oh * ow && rows.len() >= pixels.len() * k);
    // Output row by output row, and within one, kernel row by kernel row: the source
    // row and its validity are found once per (output row, kernel row), and each
    // pixel's run is then one short copy from a stepped offset.
    let mut px = pixels.start;
    while px < pixels.end {
        let (oy, ox0) = (px / ow, px % ow);
        let n = (ow - ox0).min(pixels.end - px);
        let r0 = px - pixels.start;
        if run <= 16 && kd * kh <= MAX_SEGMENTS {
            gather_row_short(x, g, zp, (oz, oy, ox0), (r0, n), rows);
            px += n;
            continue;
        }
        for a in 0..kd {
            let iz = (oz * g.stride[0] + a) as isize - g.pads[0] as isize;
            for b in 0..kh {
                let iy = (oy * g.stride[1] + b) as isize - g.pads[1] as isize;
                let seg = (a * kh + b) * run;
                let valid = (0..d).contains(&iz) && (0..h).contains(&iy);
                let base = if valid { ((iz * h + iy) * w) as usize * c } else { 0 };
                for i in 0..n {
                    let at = (r0 + i) * k + seg;
                    let dst = &mut rows[at..at + run];
                    if !valid {
                        dst.fill(zp);
                        continue;
                    }
                    let ix0 = ((ox0 + i) * g.stride[2]) as isize - g.pads[2] as isize;
                    if ix0 >= 0 && ix0 + kw as isize <= w {
                        copy_short(dst, &x[base + ix0 as usize * c..][..run]);
                    } else {
                        copy_clipped(dst, &x[base..], ix0, (c, w as usize), zp);
                    }
                }
            }
        }
        px += n;
    }
}

/// Kernel rows per output pixel that [`gather_row_short`] handles (3x3 and 5x5 in depth
/// and height).
const MAX_SEGMENTS: usize = 32;

/// [`gather_plane`] for one output row (`n` pixels from ox0, at row r0 of `rows`) whose
/// kernel rows are short (kw cin <= 16 bytes), pixel by pixel in increasing order: each
/// kernel row of a pixel inside the input is one 16-byte move, which may write past
/// its run into the next ones. Those are written after it (the pixel's next kernel
/// rows, then the next pixel's), every run writing all its own bytes, so the rows
/// end as the copies define them; a move is made only where its 16 bytes lie inside
/// `x` and `rows` (else the exact copy). Sources and validity are found once per row.
fn gather_row_short(x: &[u8], g: &Geometry3, zp: u8, (oz, oy, ox0): (usize, usize, usize), (r0, n): (usize, usize), rows: &mut [u8]) {
    let [d, h, w] = g.input.map(|v| v as isize);
    let c = g.cin;
    let [kd, kh, kw] = g.kernel;
    let (run, k, segs) = (kw * c, kd * kh * kw * c, kd * kh);
    // Each kernel row's source row start in x, or None (outside: the zero point).
    let mut base = [None; MAX_SEGMENTS];
    for a in 0..kd {
        let iz = (oz * g.stride[0] + a) as isize - g.pads[0] as isize;
        for b in 0..kh {
            let iy = (oy * g.stride[1] + b) as isize - g.pads[1] as isize;
            let valid = (0..d).contains(&iz) && (0..h).contains(&iy);
            base[a * kh + b] = valid.then(|| ((iz * h + iy) * w) as usize * c);
        }
    }
    // Where every kernel row reads the input (an interior output row), the largest
    // source start: one bounds check per pixel then covers all its moves.
    let top = base[..segs].iter().try_fold(0, |m, b| b.map(|b| m.max(b)));
    for i in 0..n {
        let ix0 = ((ox0 + i) * g.stride[2]) as isize - g.pads[2] as isize;
        let inside = ix0 >= 0 && ix0 + kw as isize <= w;
        let row = (r0 + i) * k;
        if let (Some(top), true) = (top, inside) {
            let off = ix0 as usize * c;
            if top + off + 16 <= x.len() && row + (segs - 1) * run + 16 <= rows.len() {
                for (s, b) in base[..segs].iter().enumerate() {
                    let from = b.unwrap_or(0) + off;
                    // SAFETY: every base is Some (`top`) and at most top: from + 16 <= top
                    // + off + 16 <= x.len(); row + s run + 16 <= rows.len() (both checked
                    // above). Unaligned 16-byte moves between distinct buffers.
                    unsafe {
                        let v = std::ptr::read_unaligned(x.as_ptr().add(from) as *const [u8; 16]);
                        std::ptr::write_unaligned(rows.as_mut_ptr().add(row + s * run) as *mut [u8; 16], v);
                    }
                }
                continue;
            }
        }
        for (s, b) in base.iter().enumerate().take(segs) {
            let at = row + s * run;
            match b {
                Some(b) if inside => {
                    let from = b + ix0 as usize * c;
                    if from + 16 <= x.len() && at + 16 <= rows.len() {
                        rows[at..at + 16].copy_from_slice(&x[from..from + 16]);
                    } else {
                        copy_short(&mut rows[at..at + run], &x[from..from + run]);
                    }
                }
                Some(b) => copy_clipped(&mut rows[at..at + run], &x[*b..], ix0, (c, w as usize), zp),
                None => rows[at..at + run].fill(zp),
            }
        }
    }
}

/// A kernel row crossing the input's edge: its pixels from column ix0 of the input
/// row `src` (w pixels of c bytes), the zero point for the columns outside.
fn copy_clipped(dst: &mut [u8], src: &[u8], ix0: isize, (c, w): (usize, usize), zp: u8) {
    for (j, o) in dst.chunks_exact_mut(c).enumerate() {
        let ix = ix0 + j as isize;
        if (0..w as isize).contains(&ix) {
            copy_short(o, &src[ix as usize * c..][..c]);
        } else {
            o.fill(zp);
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of a 3-D kernel row (kw x cin
/// bytes): two overlapping fixed-size moves (the first and the last 2, 4, 8 or 16
/// bytes) instead of a `memcpy` call per run; only `dst`'s own bytes are written.
#[inline(always)]
pub(crate) fn copy_short(dst: &mut [u8], src: &[u8]) {
    #[inline(always)]
    fn ends<const N: usize>(dst: &mut [u8], src: &[u8]) {
        let n = dst.len();
        dst[..N].copy_from_slice(&src[..N]);
        dst[n - N..].copy_from_slice(&src[n - N..n]);
    }
    match dst.len() {
        0 => {}
        1 => dst[0] = src[0],
        2..=3 => ends::<2>(dst, src),
        4..=7 => ends::<4>(dst, src),
        8..=15 => ends::<8>(dst, src),
        16..=32 => ends::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// acc[o][c] = Σ over the (input pixel, tap) pairs landing on o of cols[i][tap][c] -
/// col_offset[tap][c]: a transposed conv's sums from its columns (`cols`: [input
/// pixels][taps][cout]), zero-point corrected per contributing tap (border outputs
/// receive fewer taps, so one offset per output channel would be wrong there).
/// Only output planes `planes` are formed, `acc` holding them from its start, so that
/// threads can form disjoint planes: each reads the columns of the input planes that
/// land in its range, in input order (each column block read once, as on one thread).
/// Integer sums, so the order of the additions is immaterial.
pub fn scatter_columns(cols: &[i32], g: &Geometry3, cout: usize, col_offset: &[i32], planes: Range<usize>, acc: &mut [i32]) {
    let [id, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.output.map(|v| v as isize);
    assert!(planes.end <= od as usize);
    let taps = kd * kh * kw;
    let (first, last) = (planes.start as isize, planes.end as isize);
    acc[..planes.len() * (oh * ow) as usize * cout].fill(0);
    let land = |i: usize, axis: usize, t: usize| (i * g.stride[axis] + t) as isize - g.pads[axis] as isize;
    // For each tap along x, the input columns whose output lies inside the row: ox =
    // ix sx + j - px in [0, ow) for ix in [lo, hi). Found once, so that the inner loop
    // over a row's input pixels has no bounds to test.
    let (sx, px) = (g.stride[2] as isize, g.pads[2] as isize);
    let x_range: Vec<Range<usize>> = (0..kw as isize)
        .map(|j| {
            let lo = (((px - j).max(0) + sx - 1) / sx).min(iw as isize);
            let hi = ((ow - 1 + px - j).div_euclid(sx) + 1).clamp(lo, iw as isize);
            lo as usize..hi as usize
        })
        .collect();
    for iz in 0..id {
        for a in 0..kd {
            let oz = land(iz, 0, a);
            if oz < first || oz >= last {
                continue;
            }
            for iy in 0..ih {
                let row = &cols[(iz * ih + iy) * iw * taps * cout..][..iw * taps * cout];
                for b in 0..kh {
                    let oy = land(iy, 1, b);
                    if oy < 0 || oy >= oh {
                        continue;
                    }
                    let out_row = &mut acc[((oz - first) * oh + oy) as usize * ow as usize * cout..][..ow as usize * cout];
                    for (j, xs) in x_range.iter().enumerate() {
                        let t = (a * kh + b) * kw + j;
                        let off = &col_offset[t * cout..][..cout];
                        let run = Run { row, out_row: &mut *out_row, off, xs: xs.clone(), t, taps, first_x: j as isize - px, sx };
                        // Few channels (a U-Net's last layers) with their count known
                        // to the compiler: no loop over 1-4 sums per landing.
                        match cout {
                            1 => run.add::<1>(),
                            2 => run.add::<2>(),
                            4 => run.add::<4>(),
                            8 => run.add::<8>(),
                            _ => run.add_any(cout),
                        }
                    }
                }
            }
        }
    }
}

/// One tap's landings along an output row: input columns `xs` of `row` (taps x cout
/// sums each), tap `t`, each added less `off` at output x = ix sx + first_x.
struct Run<'a> {
    row: &'a [i32],
    out_row: &'a mut [i32],
    off: &'a [i32],
    xs: Range<usize>,
    t: usize,
    taps: usize,
    first_x: isize,
    sx: isize,
}

impl Run<'_> {
    #[inline(always)]
    fn add<const C: usize>(self) {
        let off: [i32; C] = self.off.try_into().expect("C offsets");
        for ix in self.xs {
            let ox = (ix as isize * self.sx + self.first_x) as usize;
            let col: &[i32; C] = self.row[(ix * self.taps + self.t) * C..][..C].try_into().expect("C sums");
            let o: &mut [i32; C] = (&mut self.out_row[ox * C..][..C]).try_into().expect("C outputs");
            for c in 0..C {
                o[c] += col[c] - off[c];
            }
        }
    }

    fn add_any(self, cout: usize) {
        for ix in self.xs {
            let ox = (ix as isize * self.sx + self.first_x) as usize;
            let o = &mut self.out_row[ox * cout..][..cout];
            let col = &self.row[(ix * self.taps + self.t) * cout..][..cout];
            for ((o, &v), &z) in o.iter_mut().zip(col).zip(self.off) {
                *o += v - z;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testgen::Lcg;

    /// A transposed conv's scatter of random geometries (strides 1-3, padding, kernels
    /// 1-4, 1-5 and 8-9 channels: each count with a loop of its own and others, any
    /// range of output planes) equals the definition: every
    /// (input voxel, tap) pair adds its column, less its tap's offset, where it lands.
    #[test]
    fn scattered_columns_are_the_definition() {
        let mut s = Lcg::new(11);
        for _ in 0..300 {
            let cout = [1, 2, 3, 4, 5, 8, 9][s.below(7)];
            let kernel = [1 + s.below(4), 1 + s.below(4), 1 + s.below(4)];
            let stride = [1 + s.below(3), 1 + s.below(3), 1 + s.below(3)];
            let pads: [usize; 3] = std::array::from_fn(|i| s.below(kernel[i]));
            let input = [1 + s.below(4), 1 + s.below(5), 1 + s.below(6)];
            let output: [usize; 3] =
                std::array::from_fn(|i| ((input[i] - 1) * stride[i] + kernel[i] + s.below(2)).saturating_sub(2 * pads[i]).max(1));
            let g = Geometry3 { input, cin: 1, kernel, stride, pads, output };
            let taps = g.taps();
            let n_in: usize = input.iter().product();
            let cols: Vec<i32> = (0..n_in * taps * cout).map(|_| s.u32() as i32 % 1000).collect();
            let off: Vec<i32> = (0..taps * cout).map(|_| s.u32() as i32 % 100).collect();
            let first = s.below(output[0]);
            let planes = first..first + 1 + s.below(output[0] - first);
            let per = output[1] * output[2] * cout;
            let mut got = vec![7i32; planes.len() * per];
            scatter_columns(&cols, &g, cout, &off, planes.clone(), &mut got);
            let mut want = vec![0i32; planes.len() * per];
            for i in 0..n_in {
                let at = [i / (input[1] * input[2]), i / input[2] % input[1], i % input[2]];
                for t in 0..taps {
                    let k = [t / (kernel[1] * kernel[2]), t / kernel[2] % kernel[1], t % kernel[2]];
                    let o: [isize; 3] = std::array::from_fn(|a| (at[a] * stride[a] + k[a]) as isize - pads[a] as isize);
                    if o[0] < planes.start as isize || o[0] >= planes.end as isize || (1..3).any(|a| o[a] < 0 || o[a] >= output[a] as isize)
                    {
                        continue;
                    }
                    let base = (((o[0] as usize - planes.start) * output[1] + o[1] as usize) * output[2] + o[2] as usize) * cout;
                    for c in 0..cout {
                        want[base + c] += cols[(i * taps + t) * cout + c] - off[t * cout + c];
                    }
                }
            }
            assert_eq!(got, want, "{g:?} cout {cout} planes {planes:?}");
        }
    }

    /// Rows of random 3-D geometries (strides, padding, 1-40 channels: runs of every
    /// length the short copies distinguish) equal the definition byte by byte, in
    /// buffers with and without slack past their ends.
    #[test]
    fn gathered_rows_are_the_patches() {
        let mut s = Lcg::new(5);
        for _ in 0..300 {
            let cin = 1 + s.below(40);
            let kernel = [1 + s.below(3), 1 + s.below(3), 1 + s.below(4)];
            let stride = [1 + s.below(2), 1 + s.below(2), 1 + s.below(2)];
            let pads: [usize; 3] = std::array::from_fn(|i| s.below(kernel[i]));
            let input = [1 + s.below(5), 1 + s.below(6), 1 + s.below(7)];
            let output: [usize; 3] = std::array::from_fn(|i| (input[i] + 2 * pads[i]).saturating_sub(kernel[i]) / stride[i] + 1);
            let g = Geometry3 { input, cin, kernel, stride, pads, output };
            let zp = s.u8();
            let n_in = input.iter().product::<usize>() * cin;
            let x: Vec<u8> = (0..n_in + 64).map(|_| s.u8()).collect();
            let k = g.taps() * cin;
            let per = output[1] * output[2];
            for oz in 0..output[0] {
                let from = s.below(per);
                let pixels = from..from + 1 + s.below(per - from);
                for slack in [64, 0] {
                    let mut rows = vec![0xAAu8; pixels.len() * k + slack];
                    let xs = if slack == 0 { &x[..n_in] } else { &x[..] };
                    gather_plane(xs, &g, zp, oz, pixels.clone(), &mut rows);
                    for (r, px) in pixels.clone().enumerate() {
                        let (oy, ox) = (px / output[2], px % output[2]);
                        for t in 0..k {
                            let (tap, ch) = (t / cin, t % cin);
                            let (a, b, j) = (tap / (kernel[1] * kernel[2]), tap / kernel[2] % kernel[1], tap % kernel[2]);
                            let at = [oz * stride[0] + a, oy * stride[1] + b, ox * stride[2] + j];
                            let inside = (0..3).all(|i| at[i] >= pads[i] && at[i] - pads[i] < input[i]);
                            let want = if inside {
                                let [z, y, xx] = std::array::from_fn(|i| at[i] - pads[i]);
                                x[((z * input[1] + y) * input[2] + xx) * cin + ch]
                            } else {
                                zp
                            };
                            assert_eq!(rows[r * k + t], want, "{g:?} plane {oz} pixel {px} tap {tap} ch {ch} slack {slack}");
                        }
                    }
                }
            }
        }
    }
}
