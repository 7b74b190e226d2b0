//! Transposed convolutions as sub-pixel convolutions: a stride-s transposed conv is s³
//! ordinary stride-1 convs on its input grid, one per output parity class (output
//! o = s q + p along each axis, p the class), each reading a small window of input
//! voxels. Their weights are the transposed kernel's taps that land on that class, so
//! all classes together are one dense conv with classes x cout output channels,
//! followed by a shuffle of its sums into the output grid (depth to space). The dense
//! conv runs on the ordinary 3-D kernels (VNNI in place, narrow planes, `sdot`, AVX2),
//! and no sum is scattered: a scatter adds each input voxel's taps into 27 places, two
//! sums at a time for a U-Net's last layers.
//!
//! Along an axis with kernel K, stride s and padding P before: o = s i - P + k, so class
//! p receives tap k from input i = q + d with d = (p + P - k) / s wherever s divides
//! p + P - k. The sub-conv's window covers d from the least to the greatest such d (taps
//! of other classes are zero weights there): it pads -d_min before the input, and after
//! it as far as the last class output needs. A class output past the transposed conv's
//! output (its size need not be a multiple of s) is computed and never read.
//!
//! A requantised sub-pixel conv (and one normalised by its own statistics where every
//! class voxel is an output) skips the int32 shuffle: its sums are requantised as they
//! are, per sub channel, and the bytes shuffled ([`SubPixel::place_bytes`]), a quarter
//! of the data (U-Net 32³, one thread: shuffle and requantisation 0.28 of the 3-D conv
//! kernel's perf samples, against 0.33).
//!
//! Integer-exact like the scatter: the sub-conv's sums carry zp Σw over its whole window
//! (padding reads the zero point), subtracted per class channel in the shuffle, leaving
//! Σ (x - zp) w over the taps that land, the same int32 on every ISA.

use crate::kernels::{Geometry3, Requant};
use crate::norms::IntMoments;
use crate::plan::ConvLayout;
use std::ops::Range;

/// The split of one axis (input size `i`, output `o`, kernel `k`, stride `s`, padding
/// `p` before).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AxisSplit {
    /// The sub-conv's window and its padding before and after the input.
    window: usize,
    pad_before: usize,
    pad_after: usize,
    /// The sub-conv's output size (at least ceil(o / s)).
    out: usize,
    /// For class c and window tap t, `tap[c * window + t]`: the transposed kernel's tap
    /// that lands there, if any.
    tap: Vec<Option<usize>>,
}

fn split_axis(i: usize, o: usize, k: usize, s: usize, p: usize) -> Option<AxisSplit> {
    let (ii, si, pi) = (i as isize, s as isize, p as isize);
    // (class, tap, d) for every tap landing on a class.
    let lands: Vec<(usize, usize, isize)> = (0..s)
        .flat_map(|c| (0..k).map(move |t| (c, t)))
        .filter(|&(c, t)| (c as isize + pi - t as isize).rem_euclid(si) == 0)
        .map(|(c, t)| (c, t, (c as isize + pi - t as isize) / si))
        .collect();
    let d_min = lands.iter().map(|l| l.2).min()?;
    let d_max = lands.iter().map(|l| l.2).max()?;
    // A window wholly past its output (padding of K or more) would need a cropped input.
    if d_min > 0 {
        return None;
    }
    let window = (d_max - d_min + 1) as usize;
    let q = o.div_ceil(s) as isize;
    let pad_after = (q + d_max - ii).max(0);
    let out = ii + pad_after - d_max;
    let mut tap = vec![None; s * window];
    for &(c, t, d) in &lands {
        tap[c * window + (d - d_min) as usize] = Some(t);
    }
    Some(AxisSplit { window, pad_before: (-d_min) as usize, pad_after: pad_after as usize, out: out as usize, tap })
}

/// The dense conv of a transposed conv's sub-pixel form, before its layout is chosen.
pub struct SubConv {
    /// The dense conv: the transposed conv's input, window, stride 1, padding before.
    pub g: Geometry3,
    /// Padding after each axis.
    pub pads_after: [usize; 3],
    /// classes x cout output channels, class (pz, py, px) at ((pz sy + py) sx + px) cout.
    pub cout: usize,
    /// Its int8 weights as ONNX stores a conv's: [cout][cin][wd][wh][ww].
    pub weights: Vec<i8>,
}

/// The sub-pixel form of the transposed conv `g` (output channels `cout`, int8 weights
/// as ONNX stores them: [cin][cout][kd][kh][kw]), or `None` where padding of a kernel's
/// size or more would need a cropped input.
pub fn sub_conv(g: &Geometry3, cout: usize, w: &[i8]) -> Option<SubConv> {
    let axes: Vec<AxisSplit> =
        (0..3).map(|a| split_axis(g.input[a], g.output[a], g.kernel[a], g.stride[a], g.pads[a])).collect::<Option<_>>()?;
    let window = [0, 1, 2].map(|a| axes[a].window);
    let (cin, taps, wtaps) = (g.cin, g.taps(), window.iter().product::<usize>());
    let classes: usize = g.stride.iter().product();
    let sub_cout = classes * cout;
    let mut weights = vec![0i8; sub_cout * cin * wtaps];
    for cz in 0..g.stride[0] {
        for cy in 0..g.stride[1] {
            for cx in 0..g.stride[2] {
                let class = (cz * g.stride[1] + cy) * g.stride[2] + cx;
                for (t, (a, b, c)) in
                    (0..window[0]).flat_map(|a| (0..window[1]).flat_map(move |b| (0..window[2]).map(move |c| (a, b, c)))).enumerate()
                {
                    let (Some(kz), Some(ky), Some(kx)) =
                        (axes[0].tap[cz * window[0] + a], axes[1].tap[cy * window[1] + b], axes[2].tap[cx * window[2] + c])
                    else {
                        continue;
                    };
                    let k = (kz * g.kernel[1] + ky) * g.kernel[2] + kx;
                    for co in 0..cout {
                        for ci in 0..cin {
                            weights[((class * cout + co) * cin + ci) * wtaps + t] = w[(ci * cout + co) * taps + k];
                        }
                    }
                }
            }
        }
    }
    Some(SubConv {
        g: Geometry3 {
            input: g.input,
            cin,
            kernel: window,
            stride: [1; 3],
            pads: [0, 1, 2].map(|a| axes[a].pad_before),
            output: [0, 1, 2].map(|a| axes[a].out),
        },
        pads_after: [0, 1, 2].map(|a| axes[a].pad_after),
        cout: sub_cout,
        weights,
    })
}

/// A transposed conv run as its sub-pixel conv (`inner`, on the transposed conv's input)
/// and a shuffle of that conv's sums into the output.
#[derive(Debug, Clone)]
pub struct SubPixel {
    /// The transposed conv's geometry.
    pub g: Geometry3,
    /// Output channels of the transposed conv.
    pub cout: usize,
    /// The sub-conv's output sizes (its sums: [sub][classes x cout]).
    pub sub: [usize; 3],
    pub inner: ConvLayout,
    /// The sub-conv's MACs (windows include the other classes' zero taps).
    pub inner_macs: u64,
    /// zp Σw of each sub-conv channel, subtracted in the shuffle.
    pub offset: Vec<i32>,
}

impl SubPixel {
    /// Output planes `planes` of the transposed conv's exact sums [z][y][x][cout], from
    /// the sub-conv's sums `sums` ([sub voxels][classes x cout], zp Σw still in them),
    /// `acc` holding the planes from its start. Every output voxel is one class voxel's
    /// sums, so `acc` is written, not added to.
    pub fn shuffle(&self, sums: &[i32], planes: Range<usize>, acc: &mut [i32]) {
        let [_, oh, ow] = self.g.output;
        let [sz, _, sx] = self.g.stride;
        let [_, qh, qw] = self.sub;
        let (cout, wide) = (self.cout, self.offset.len());
        assert!(planes.end <= self.g.output[0] && acc.len() >= planes.len() * oh * ow * cout);
        assert!(sums.len() >= self.sub.iter().product::<usize>() * wide);
        for (k, oz) in planes.enumerate() {
            let (qz, cz) = (oz / sz, oz % sz);
            let sub_plane = &sums[qz * qh * qw * wide..][..qh * qw * wide];
            let out_plane = &mut acc[k * oh * ow * cout..][..oh * ow * cout];
            self.class_rows(cz, sub_plane, out_plane, |out_row, in_row, first| {
                let run = Runs { out_row, in_row, off: &self.offset[first..][..sx * cout], first, wide };
                // The run lengths of a U-Net's up-convs known to the compiler.
                match sx * cout {
                    2 => run.copy::<2>(),
                    4 => run.copy::<4>(),
                    8 => run.copy::<8>(),
                    16 => run.copy::<16>(),
                    len => run.copy_any(len),
                }
            });
        }
    }

    /// The rows of one output plane of class `cz` along z from a sub plane's values
    /// (`sub_plane`: [qh][qw][classes x cout], sums or bytes): `row(out_row, in_row,
    /// first)` for each output row, with sub row qy and the class channel its runs start
    /// at. Shared by [`Self::shuffle`] and [`Self::place_bytes`].
    fn class_rows<T>(&self, cz: usize, sub_plane: &[T], out_plane: &mut [T], mut row: impl FnMut(&mut [T], &[T], usize)) {
        let [_, oh, ow] = self.g.output;
        let [_, sy, sx] = self.g.stride;
        let [_, _, qw] = self.sub;
        let (cout, wide) = (self.cout, self.offset.len());
        for (oy, out_row) in out_plane[..oh * ow * cout].chunks_exact_mut(ow * cout).enumerate() {
            let (qy, cy) = (oy / sy, oy % sy);
            // The classes (cz, cy, 0..sx) are neighbouring sub-conv channels, and so are
            // their outputs along x: sub voxel q gives output x = q sx .. q sx + sx, one
            // run of sx cout values from channel `first`.
            let first = (cz * sy + cy) * sx * cout;
            row(out_row, &sub_plane[qy * qw * wide..][..qw * wide], first);
        }
    }
}

impl SubPixel {
    /// Whether every class voxel of the sub-conv is an output voxel (the output is
    /// exactly stride x the sub-conv's output along every axis, as a U-Net's up-convs'
    /// are): then per-channel statistics of the sub-conv's sums are those of the output.
    pub fn covers_exactly(&self) -> bool {
        (0..3).all(|a| self.sub[a] * self.g.stride[a] == self.g.output[a])
    }

    /// `r` (the transposed conv's requantisation, per output channel) for the
    /// sub-conv's sums as they are: sub channel j (class j / cout) takes channel
    /// j % cout's parameters, less its class's zp Σw. Each byte is then the one the
    /// shuffled sum gives: the same integer, the same float steps.
    pub fn sub_requant(&self, r: &Requant) -> Requant {
        let each = |j: usize| j % self.cout;
        let wide = self.offset.len();
        Requant {
            offset: (0..wide).map(|j| self.offset[j] + r.offset[each(j)]).collect(),
            mult: (0..wide).map(|j| r.mult[each(j)]).collect(),
            bias: (0..wide).map(|j| r.bias[each(j)]).collect(),
            out_zp: r.out_zp,
            lo: (0..wide).map(|j| r.lo[each(j)]).collect(),
            hi: (0..wide).map(|j| r.hi[each(j)]).collect(),
        }
    }

    /// The output channels' moments of the exact sums from those of the sub-conv's raw
    /// sums (one per sub channel, zp Σw still in them): each sub channel's moments less
    /// its offset (Σ(a - o) = Σa - n o, Σ(a - o)² = Σa² - 2 o Σa + n o², exact in
    /// i128), then the classes of each channel added. With [`Self::covers_exactly`],
    /// the very integers the shuffled sums' moments are.
    pub fn output_moments(&self, sub: &[IntMoments]) -> Vec<IntMoments> {
        let mut out = vec![IntMoments::default(); self.cout];
        for (j, m) in sub.iter().enumerate() {
            let (o, n) = (self.offset[j] as i128, m.count as i128);
            let d = IntMoments { count: m.count, sum: m.sum - n * o, squares: m.squares - 2 * o * m.sum + n * o * o };
            out[j % self.cout].merge(&d);
        }
        out
    }

    /// The output planes of sub plane `qz` from its requantised bytes (`bytes`:
    /// [qh][qw][classes x cout]): planes qz sz.. (sz of them, fewer at the output's
    /// end), each [oh][ow][cout] from `out`'s start. The byte form of [`Self::shuffle`]:
    /// a quarter of the data moved, and each sub plane read while it is in cache.
    pub fn place_bytes(&self, bytes: &[u8], qz: usize, out: &mut [u8]) {
        let [od, oh, ow] = self.g.output;
        let [sz, _, sx] = self.g.stride;
        let [_, qh, qw] = self.sub;
        let (cout, wide) = (self.cout, self.offset.len());
        let planes = (qz * sz..((qz + 1) * sz).min(od)).len();
        assert!(bytes.len() >= qh * qw * wide && out.len() >= planes * oh * ow * cout);
        for (cz, out_plane) in out.chunks_exact_mut(oh * ow * cout).take(planes).enumerate() {
            self.class_rows(cz, bytes, out_plane, |out_row, in_row, first| match sx * cout {
                2 => byte_runs::<2>(out_row, in_row, first, wide),
                4 => byte_runs::<4>(out_row, in_row, first, wide),
                8 => byte_runs::<8>(out_row, in_row, first, wide),
                16 => byte_runs::<16>(out_row, in_row, first, wide),
                len => {
                    for (q, d) in out_row.chunks_mut(len).enumerate() {
                        d.copy_from_slice(&in_row[q * wide + first..][..d.len()]);
                    }
                }
            });
        }
    }
}

/// One output row of bytes: sub voxel q's channels first.. first + L at q L (the last
/// run may be cut by the row's end).
#[inline(always)]
fn byte_runs<const L: usize>(out_row: &mut [u8], in_row: &[u8], first: usize, wide: usize) {
    let mut dst = out_row.chunks_exact_mut(L);
    let whole = dst.len();
    for (q, d) in dst.by_ref().enumerate() {
        let src: &[u8; L] = in_row[q * wide + first..][..L].try_into().expect("L bytes");
        d.copy_from_slice(src);
    }
    let rest = dst.into_remainder();
    if !rest.is_empty() {
        let n = rest.len();
        rest.copy_from_slice(&in_row[whole * wide + first..][..n]);
    }
}

/// One output row from the sub-conv's sums: sub voxel q's channels first.. first + L,
/// less their offsets, at outputs q L.. (L = sx cout; the row's last run may be cut).
struct Runs<'a> {
    out_row: &'a mut [i32],
    in_row: &'a [i32],
    off: &'a [i32],
    first: usize,
    wide: usize,
}

impl Runs<'_> {
    #[inline(always)]
    fn copy<const L: usize>(self) {
        let Runs { out_row, in_row, off, first, wide } = self;
        let whole: &[i32; L] = off.try_into().expect("L offsets");
        let q = out_row.len() / L;
        let mut dst = out_row.chunks_exact_mut(L);
        for (q, d) in dst.by_ref().enumerate() {
            let src: &[i32; L] = in_row[q * wide + first..][..L].try_into().expect("L sums");
            for i in 0..L {
                d[i] = src[i] - whole[i];
            }
        }
        let rest = dst.into_remainder();
        if !rest.is_empty() {
            cut_run(&in_row[q * wide + first..], off, rest);
        }
    }

    fn copy_any(self, len: usize) {
        let Runs { out_row, in_row, off, first, wide } = self;
        let q = out_row.len() / len;
        let mut dst = out_row.chunks_exact_mut(len);
        for (q, d) in dst.by_ref().enumerate() {
            cut_run(&in_row[q * wide + first..], off, d);
        }
        let rest = dst.into_remainder();
        if !rest.is_empty() {
            cut_run(&in_row[q * wide + first..], off, rest);
        }
    }
}

/// dst = src - off, as long as `dst` (a whole run, or a row's cut last one).
fn cut_run(src: &[i32], off: &[i32], dst: &mut [i32]) {
    for ((d, &s), &z) in dst.iter_mut().zip(src).zip(off) {
        *d = s - z;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testgen::Lcg;
    use crate::kernels::ConvGeometry;

    /// A dense conv by its definition on the channels-last input padded with `zp`: sums
    /// [output voxels][cout] carrying zp Σw, as the engine's dense kernels leave them.
    fn dense_sums(x: &[u8], g: &Geometry3, zp: u8, cout: usize, w: &[i8]) -> Vec<i32> {
        let [d, h, wd] = g.input.map(|v| v as isize);
        let [kd, kh, kw] = g.kernel;
        let mut out = vec![0i32; g.output.iter().product::<usize>() * cout];
        for (v, o) in out.chunks_exact_mut(cout).enumerate() {
            let (oz, oy, ox) = (v / (g.output[1] * g.output[2]), v / g.output[2] % g.output[1], v % g.output[2]);
            for (co, o) in o.iter_mut().enumerate() {
                for ci in 0..g.cin {
                    for a in 0..kd {
                        for b in 0..kh {
                            for c in 0..kw {
                                let (iz, iy, ix) = (
                                    (oz + a) as isize - g.pads[0] as isize,
                                    (oy + b) as isize - g.pads[1] as isize,
                                    (ox + c) as isize - g.pads[2] as isize,
                                );
                                let inside = (0..d).contains(&iz) && (0..h).contains(&iy) && (0..wd).contains(&ix);
                                let xv = if inside { x[(((iz * h + iy) * wd + ix) as usize) * g.cin + ci] } else { zp };
                                *o += xv as i32 * w[(((co * g.cin + ci) * kd + a) * kh + b) * kw + c] as i32;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Random transposed convs (kernels 1-5, strides 1-3, padding below the kernel,
    /// output padding below the stride, 1-9 channels, 2-D and 3-D): the sub-pixel conv's
    /// sums, shuffled over any range of output planes, equal the definition: every input
    /// voxel's (x - zp) w added where each tap lands. Padding of the kernel's size or
    /// more is refused.
    #[test]
    fn sub_pixel_sums_are_the_transposed_conv() {
        let mut s = Lcg::new(5);
        let (mut checked, mut exact_covers) = (0, 0);
        for round in 0..400 {
            let flat = round % 4 == 0;
            let (cin, cout) = (1 + s.below(4), [1, 2, 3, 4, 5, 8, 9][s.below(7)]);
            let axis = |s: &mut Lcg, flat: bool| {
                if flat {
                    return (1, 1, 1, 0, 0);
                }
                let (k, st) = (1 + s.below(5), 1 + s.below(3));
                (1 + s.below(5), k, st, s.below(k), s.below(st))
            };
            let ax = [axis(&mut s, flat), axis(&mut s, false), axis(&mut s, false)];
            let output = ax.map(|(i, k, st, p, op)| ((i - 1) * st + k + op).saturating_sub(2 * p));
            if output.contains(&0) {
                continue;
            }
            let g =
                Geometry3 { input: ax.map(|a| a.0), cin, kernel: ax.map(|a| a.1), stride: ax.map(|a| a.2), pads: ax.map(|a| a.3), output };
            let zp = s.u8();
            let x: Vec<u8> = (0..g.input.iter().product::<usize>() * cin).map(|_| s.u8()).collect();
            let w: Vec<i8> = (0..cin * cout * g.taps()).map(|_| s.u8() as i8).collect();
            // The definition.
            let mut want = vec![0i32; output.iter().product::<usize>() * cout];
            for v in 0..g.input.iter().product::<usize>() {
                let i = [v / (g.input[1] * g.input[2]), v / g.input[2] % g.input[1], v % g.input[2]];
                for t in 0..g.taps() {
                    let k = [t / (g.kernel[1] * g.kernel[2]), t / g.kernel[2] % g.kernel[1], t % g.kernel[2]];
                    let o: Vec<isize> = (0..3).map(|a| (i[a] * g.stride[a] + k[a]) as isize - g.pads[a] as isize).collect();
                    if (0..3).any(|a| o[a] < 0 || o[a] >= output[a] as isize) {
                        continue;
                    }
                    let at = ((o[0] as usize * output[1] + o[1] as usize) * output[2] + o[2] as usize) * cout;
                    for co in 0..cout {
                        for ci in 0..cin {
                            want[at + co] += (x[v * cin + ci] as i32 - zp as i32) * w[(ci * cout + co) * g.taps() + t] as i32;
                        }
                    }
                }
            }
            let sc = sub_conv(&g, cout, &w).expect("padding below the kernel splits");
            let sums = dense_sums(&x, &sc.g, zp, sc.cout, &sc.weights);
            let wtaps = sc.g.taps() * cin;
            let offset = sc.weights.chunks_exact(wtaps).map(|r| r.iter().map(|&v| v as i32 * zp as i32).sum()).collect();
            let sp = SubPixel {
                g,
                cout,
                sub: sc.g.output,
                inner: ConvLayout::Direct(ConvGeometry::new(1, 1, 1, 1, 1, [1, 1], [0; 4]).unwrap()),
                inner_macs: 0,
                offset,
            };
            let cut = s.below(output[0] + 1);
            let plane = output[1] * output[2] * cout;
            let mut got = vec![i32::MIN; want.len()];
            let (a, b) = got.split_at_mut(cut * plane);
            sp.shuffle(&sums, 0..cut, a);
            sp.shuffle(&sums, cut..output[0], b);
            assert_eq!(got, want, "{g:?} -> {cout}, zp {zp}");
            // The byte path: per sub plane, bytes of the sums less their offsets (here the
            // low byte: any map of the exact sum) placed at their output voxels.
            let wide = sp.offset.len();
            let low = |v: i32| v as u8;
            let bytes: Vec<u8> = sums.iter().enumerate().map(|(i, &v)| low(v - sp.offset[i % wide])).collect();
            let sub_plane = sc.g.output[1] * sc.g.output[2] * wide;
            let mut placed = vec![0xa5u8; want.len()];
            for qz in 0..sc.g.output[0] {
                let at = (qz * g.stride[0]).min(output[0]) * plane;
                sp.place_bytes(&bytes[qz * sub_plane..][..sub_plane], qz, &mut placed[at..]);
            }
            assert_eq!(placed, want.iter().map(|&v| low(v)).collect::<Vec<u8>>(), "bytes: {g:?} -> {cout}");
            // The moments: those of the exact output sums, when every class voxel is an output.
            let moments = |v: &[i32], c: usize| -> Vec<IntMoments> {
                (0..c)
                    .map(|ch| {
                        let it = v.iter().skip(ch).step_by(c).map(|&a| a as i128);
                        IntMoments { count: (v.len() / c) as u64, sum: it.clone().sum(), squares: it.map(|a| a * a).sum() }
                    })
                    .collect()
            };
            let exact = (0..3).all(|a| sc.g.output[a] * g.stride[a] == output[a]);
            assert_eq!(sp.covers_exactly(), exact);
            if exact {
                assert_eq!(sp.output_moments(&moments(&sums, wide)), moments(&want, cout), "moments: {g:?} -> {cout}");
                exact_covers += 1;
            }
            checked += 1;
        }
        assert!(checked > 300, "{checked} geometries checked");
        assert!(exact_covers > 30, "{exact_covers} geometries with every class voxel an output");
        // Padding of the whole kernel: no window on the input before it.
        let g = Geometry3 { input: [1, 1, 4], cin: 1, kernel: [1, 1, 2], stride: [1, 1, 2], pads: [0, 0, 2], output: [1, 1, 4] };
        assert!(sub_conv(&g, 1, &[1, 1]).is_none());
    }

    /// The U-Net's up-conv (kernel 3, stride 2, padding 1, output padding 1): classes 0
    /// and 1 read one and two taps from a window of two, padded after by one.
    #[test]
    fn a_unet_up_conv_axis_splits_into_a_window_of_two() {
        let a = split_axis(16, 32, 3, 2, 1).unwrap();
        assert_eq!(a, AxisSplit { window: 2, pad_before: 0, pad_after: 1, out: 16, tap: vec![Some(1), None, Some(2), Some(0)] });
        // Kernel 2, stride 2 (the classic 3-D U-Net): one tap per class, no padding.
        let a = split_axis(8, 16, 2, 2, 0).unwrap();
        assert_eq!(a, AxisSplit { window: 1, pad_before: 0, pad_after: 0, out: 8, tap: vec![Some(0), Some(1)] });
    }
}
