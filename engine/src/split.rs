//! How an op is cut into parts for the engine's threads ([`crate::pool`]). Every part
//! writes its own contiguous run of output pixels (channels last, so a run of
//! pixels is a run of bytes) and computes each of them exactly as the whole op would:
//! the same taps, the same integer sums, the same requantisation. So the output's
//! bytes do not depend on how many parts there are or which thread ran which.
//!
//! A 2-D conv is cut over output rows: the part for rows r0..r1 is a conv of its own
//! on the input rows those rows read, with the padding the whole conv has there (top
//! padding only if r0's taps reach above the input, likewise at the bottom). A
//! pointwise conv (and a 3-D conv's planes, which are pointwise products on gathered
//! rows) is cut over pixels, in multiples of [`PIXEL_ALIGN`] so that the kernels'
//! blocks of pixels stay whole.

use crate::kernels::{ConvGeometry, ConvKind, Isa};
use std::ops::Range;

/// Pixels per tile of the pointwise kernels (AVX2, VNNI and NEON take 4 pixels per
/// step): parts of pointwise work start at multiples of it, so no tile is cut. Finer
/// than that matters on small maps: 7x7 = 49 pixels cut at multiples of 16 would
/// leave threads 32 and 17.
pub const PIXEL_ALIGN: usize = 4;

/// Output pixels per part below which a 2-D conv is cut only if its work is long
/// enough on its own ([`small_conv_parts`]).
const MIN_PART_PIXELS: usize = 64;
/// Microseconds of work per part for a conv of fewer pixels than that.
const MIN_PART_MICROS: u64 = 4;

/// The most parts worth cutting a 2-D conv of `pixels` outputs and `macs` into: a part
/// of a small map costs more than its share of the work, as the next op then reads
/// rows the other core wrote (measured on the Intel Xeon with AMX, two threads: ops
/// that were not cut ran up to 2x slower after one that was, the bundled C4 at 95x95
/// 0.196 ms on one thread and 0.221 on two). So a part keeps 64 pixels, unless the
/// conv's work, at a rough rate of its kind (AMX tiles 300 K MACs per us, other dense
/// kernels 100 K, depthwise and grouped 30 K), gives each part 4 us: MobileNetV2's 7x7
/// convs are still cut, the C4's 11x11 and 5x5 ones no longer. Two threads, p50 of 6-10
/// interleaved runs against cutting by MACs alone: the C4 1.16-1.19x faster,
/// MobileNetV2 x1.0 and x0.25 and the U-Net window 0.99-1.01. (AVX2's kernels cut by
/// their estimated time instead: [`avx2_conv_parts`].)
pub fn small_conv_parts(pixels: usize, macs: u64, kind: &ConvKind) -> usize {
    let per_micro: u64 = match kind {
        ConvKind::Dense(w) if w.isa == Isa::Avx512Amx => 300_000,
        ConvKind::Dense(_) => 100_000,
        _ => 30_000,
    };
    (pixels / MIN_PART_PIXELS).max((macs / per_micro / MIN_PART_MICROS) as usize).max(1)
}

/// AVX2's rough rates, MACs per microsecond on one Zen 3 core in MobileNetV2's small
/// layers (`bench --profile`): dense convs 40 K (the small-K expansions and 3x3 maps
/// run slower), depthwise and grouped 15 K.
const AVX2_MACS_PER_MICRO: (u64, u64) = (40_000, 15_000);
/// Hundredths of a microsecond of estimated work per part of an AVX2 conv.
const AVX2_PART_CENTIMICROS: u64 = 125;

/// The parts worth cutting a 2-D conv of `macs` on AVX2's kernels into, by its
/// estimated time: one per 1.25 us (`None` for the other kernel sets, which keep
/// [`small_conv_parts`] and the engine's least MACs a part). Handing a part over costs
/// about 0.5 us here (`examples/pool_handover.rs` on a 2-vCPU Zen 3 VM: two parts of
/// 0.5-4 us each took 0.42-0.48 us more than one of them), and the next op
/// pays for the rows the other core wrote; measured on that VM, two threads, per-op
/// minima of 4 alternated profiles: the C4's 11x11 and 5x5 convs (2.6-10.7 us whole)
/// ran 0.68-0.83x as long cut in two, MobileNetV2 x0.25's 24 -> 144 and 144 -> 24 at
/// 6x6 (2.8-3.4 us) 0.76-0.82x, the whole x0.25 0.95x (sum of the minima; p50s
/// 0.222-0.334 against 0.237-0.352 ms); cut below about 2 us (48 -> 16 at 6x6, 1.0
/// us; a depthwise 96 at 6x6, 2.0 us) they ran 1.1-1.4x as long. (In this VM's noisy
/// spells, when the other vCPU is taken away, a cut op waits for it: x0.25's cut 6x6
/// convs then ran 1.4-2.2x as long; so did LiteRT's two threads.)
pub fn avx2_conv_parts(macs: u64, kind: &ConvKind) -> Option<usize> {
    let rate = match kind {
        ConvKind::Dense(w) if w.isa == Isa::Avx2 => AVX2_MACS_PER_MICRO.0,
        ConvKind::Depthwise(w) if w.isa == Isa::Avx2 => AVX2_MACS_PER_MICRO.1,
        ConvKind::Grouped(w) if w.isa == Isa::Avx2 => AVX2_MACS_PER_MICRO.1,
        _ => return None,
    };
    Some((macs * 100 / rate / AVX2_PART_CENTIMICROS) as usize)
}

/// `0..n` cut into at most `parts` consecutive non-empty ranges of near-equal length,
/// every boundary a multiple of `align` (the last range takes the remainder). Where
/// the units do not divide evenly, the first ranges are the longer ones: the caller
/// takes part 0 as it hands the others over, and its workers start about half a
/// microsecond later (7 rows: 4 and 3, not 3 and 4).
pub fn ranges(n: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let align = align.max(1);
    let units = n.div_ceil(align);
    let parts = parts.clamp(1, units.max(1));
    let mut v = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 1..=parts {
        let end = ((i * units).div_ceil(parts) * align).min(n);
        if end > start {
            v.push(start..end);
            start = end;
        }
    }
    if v.is_empty() {
        v.push(0..n);
    }
    v
}

/// One part of a 2-D conv: a conv of its own (`g`) on the input from byte `from` of
/// the whole conv's input, giving the whole conv's output `pixels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvPart {
    pub g: ConvGeometry,
    pub from: usize,
    pub pixels: Range<usize>,
}

/// Conv `g` cut into at most `parts` parts (see the module's comment); one part,
/// the whole conv, where cutting would leave a part that reads no input row. A
/// pointwise conv's parts start at multiples of `tile` pixels, its kernel's tile
/// ([`crate::kernels::pixel_tile`]): an 80 -> 1280 conv at 3x3 (9 pixels) on AVX2's
/// 6-pixel tiles, cut at multiples of 4, gave parts of 8 and 1 pixels, two tiles
/// against one.
pub fn conv_parts(g: &ConvGeometry, parts: usize, tile: usize) -> Vec<ConvPart> {
    if g.is_pointwise() {
        // Even whole: as one row of pixels, which the kernels read in place by tiles
        // of 16 (the AMX kernel copies each pixel of a row shorter than a tile first:
        // MobileNetV2's 960 -> 160 at 7x7 took 12.9 us as 7 rows, 7.9 as one row).
        return ranges(g.h * g.w, parts, tile)
            .into_iter()
            .map(|r| ConvPart {
                g: ConvGeometry::new(1, r.len(), g.cin, 1, 1, [1, 1], [0; 4]).expect("a 1x1 conv fits any input"),
                from: r.start * g.cin,
                pixels: r,
            })
            .collect();
    }
    let whole = vec![ConvPart { g: *g, from: 0, pixels: 0..g.oh * g.ow }];
    if parts <= 1 {
        return whole;
    }
    let mut v = Vec::new();
    for rows in ranges(g.oh, parts, 1) {
        // Input rows read by output rows r0..r1, padding included: top..bottom.
        let top = (rows.start * g.stride[0]) as isize - g.pads[0] as isize;
        let bottom = ((rows.end - 1) * g.stride[0] + g.kh) as isize - g.pads[0] as isize;
        let (y0, y1) = (top.max(0), bottom.min(g.h as isize));
        if y1 <= y0 {
            return whole;
        }
        let pads = [(y0 - top) as usize, g.pads[1], (bottom - y1) as usize, g.pads[3]];
        let pg = ConvGeometry::new((y1 - y0) as usize, g.w, g.cin, g.kh, g.kw, g.stride, pads).expect("a part of a valid conv is valid");
        // (bottom - top - kh) / stride + 1 = r1 - r0 output rows, as wide as the whole.
        debug_assert_eq!((pg.oh, pg.ow), (rows.len(), g.ow));
        v.push(ConvPart { g: pg, from: y0 as usize * g.w * g.cin, pixels: rows.start * g.ow..rows.end * g.ow });
    }
    v
}

/// `buf` cut into consecutive slices of `lens` (from its start; the rest is left out).
pub fn cut<T>(mut buf: &mut [T], lens: impl IntoIterator<Item = usize>) -> Vec<&mut [T]> {
    let mut v = Vec::new();
    for n in lens {
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(n);
        v.push(head);
        buf = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testgen::{conv_case, grouped_case, random_requant, ConvSpec, Lcg};
    use crate::kernels::{self, Isa};

    #[test]
    fn ranges_cover_everything_once_on_aligned_boundaries() {
        for n in 0..100 {
            for parts in 1..7 {
                for align in [1, 4, 16] {
                    let r = ranges(n, parts, align);
                    assert!(r.len() <= parts && !r.is_empty());
                    assert_eq!(r[0].start, 0);
                    assert_eq!(r.last().unwrap().end, n);
                    for w in r.windows(2) {
                        assert_eq!(w[0].end, w[1].start);
                        assert!(w[0].end % align == 0 && !w[0].is_empty());
                    }
                }
            }
        }
    }

    /// A pointwise conv's parts start at multiples of its kernel's tile: 9 pixels on
    /// AVX2's 6-pixel tiles go 6 + 3 (a tile each), not 8 + 1 (two tiles and one).
    #[test]
    fn pointwise_parts_keep_the_kernels_tiles_whole() {
        let g = ConvGeometry::new(3, 3, 80, 1, 1, [1, 1], [0; 4]).unwrap();
        let lens = |tile| conv_parts(&g, 2, tile).iter().map(|p| p.pixels.len()).collect::<Vec<_>>();
        assert_eq!(lens(PIXEL_ALIGN), [8, 1]);
        assert_eq!(lens(6), [6, 3]);
        #[cfg(target_arch = "x86_64")]
        {
            let dense =
                |cin: usize, cout: usize| ConvKind::Dense(crate::kernels::PackedWeights::new(Isa::Avx2, vec![1; cin * cout], cout, 1, cin));
            assert_eq!(kernels::pixel_tile(&dense(80, 1280)), 6);
            // The narrow kernel (1-3 outputs) keeps 4.
            assert_eq!(kernels::pixel_tile(&dense(8, 2)), PIXEL_ALIGN);
        }
    }

    /// Small maps stay whole unless their work is long (the C4's 11x11 and 5x5 convs);
    /// MobileNetV2's 7x7 convs and every conv on a large map are still cut.
    #[test]
    fn small_maps_are_cut_only_for_long_work() {
        let dense =
            |isa: Isa, cin: usize, cout: usize| ConvKind::Dense(crate::kernels::PackedWeights::new(isa, vec![1; cin * cout], cout, 1, cin));
        let amx = |cin, cout| dense(Isa::Avx512Amx, cin, cout);
        // The C4's 72 -> 16 at 11x11 and 480 -> 80 at 5x5: one part.
        assert_eq!(small_conv_parts(121, 121 * 72 * 16, &amx(72, 16)), 1);
        assert_eq!(small_conv_parts(25, 25 * 480 * 80, &amx(480, 80)), 1);
        // MobileNetV2's 960 -> 160 and 160 -> 960 at 7x7 (7.5 M MACs): several.
        assert!(small_conv_parts(49, 49 * 960 * 160, &amx(960, 160)) >= 2);
        // The same MACs on a slower kernel: more parts.
        assert!(small_conv_parts(49, 49 * 960 * 160, &dense(Isa::Scalar, 960, 160)) > small_conv_parts(49, 49 * 960 * 160, &amx(960, 160)));
        // Large maps: by pixels, however light the conv.
        assert_eq!(small_conv_parts(56 * 56, 56 * 56 * 8, &amx(1, 8)), 49);
        assert_eq!(small_conv_parts(0, 0, &amx(1, 8)), 1);
    }

    /// AVX2 cuts by estimated time: the C4's 11x11 and 5x5 convs and x0.25's 6x6
    /// expansions in two, 1-2 us convs (48 -> 16 and a depthwise 96 at 6x6) not; the
    /// other kernel sets keep their rule.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_cuts_convs_of_more_than_about_two_microseconds() {
        let dense =
            |isa: Isa, cin: usize, cout: usize| ConvKind::Dense(crate::kernels::PackedWeights::new(isa, vec![1; cin * cout], cout, 1, cin));
        let dw = |c: usize| ConvKind::Depthwise(crate::kernels::DepthwiseWeights::new(Isa::Avx2, &vec![1; c * 9], c, [3, 3]));
        let parts = |macs: usize, kind: &ConvKind| avx2_conv_parts(macs as u64, kind);
        assert_eq!(parts(121 * 72 * 16, &dense(Isa::Avx2, 72, 16)), Some(2));
        assert!(parts(36 * 24 * 144, &dense(Isa::Avx2, 24, 144)) >= Some(2));
        assert!(parts(144 * 48 * 9, &dw(48)) >= Some(2));
        assert!(parts(36 * 48 * 16, &dense(Isa::Avx2, 48, 16)) <= Some(1));
        assert!(parts(36 * 96 * 9, &dw(96)) <= Some(1));
        assert_eq!(parts(121 * 72 * 16, &dense(Isa::Scalar, 72, 16)), None);
    }

    /// The conv run part by part equals the conv run whole, byte for byte, on every
    /// ISA this CPU has, for dense, depthwise and grouped convs of random geometry:
    /// what makes the engine's output independent of its thread count.
    #[test]
    fn a_conv_cut_into_parts_equals_the_whole_on_random_geometries() {
        let spec = ConvSpec { max_hw: 19, max_c: 24, kh: &[1, 3, 5, 7], kw: None, max_stride: 3, extreme_every: 7 };
        let mut s = Lcg::new(0x7e57_5b11);
        let mut checked = 0;
        while checked < 300 {
            // Grouped one case in four.
            let (g, x, zp, kinds, cout): (ConvGeometry, Vec<u8>, u8, Vec<(Isa, kernels::ConvKind)>, usize) = if s.below(4) == 0 {
                let Some(c) = grouped_case(&mut s, 14, 4) else { continue };
                (c.g, c.x.clone(), c.zp, Isa::available().into_iter().map(|i| (i, c.kind(i))).collect(), c.cout())
            } else {
                let Some(c) = conv_case(&mut s, &spec) else { continue };
                (c.g, c.x.clone(), c.zp, Isa::available().into_iter().map(|i| (i, c.kind(i))).collect(), c.cout)
            };
            let r = random_requant(&mut s, cout);
            let n = g.oh * g.ow * cout;
            let scratch_len = kinds.iter().map(|(_, k)| kernels::conv_scratch_len(&g, k)).max().unwrap() + 64;
            for (isa, kind) in &kinds {
                let (mut whole, mut whole_sums) = (vec![0u8; n], vec![0i32; n]);
                kernels::conv(*isa, &x, &g, zp, kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut whole);
                kernels::accumulate(*isa, &x, &g, zp, kind, &mut vec![0; scratch_len], &mut whole_sums);
                for parts in 2..=4 {
                    let cuts = conv_parts(&g, parts, kernels::pixel_tile(kind));
                    assert_eq!(cuts.last().unwrap().pixels.end, g.oh * g.ow);
                    let (mut out, mut sums) = (vec![0u8; n], vec![0i32; n]);
                    let lens = || cuts.iter().map(|p| p.pixels.len() * cout);
                    for ((p, o), a) in cuts.iter().zip(cut(&mut out, lens())).zip(cut(&mut sums, lens())) {
                        assert!(kernels::conv_scratch_len(&p.g, kind) <= kernels::conv_scratch_len(&g, kind));
                        kernels::conv(*isa, &x[p.from..], &p.g, zp, kind, &r, &mut vec![0; scratch_len], &mut vec![0; a.len()], o);
                        kernels::accumulate(*isa, &x[p.from..], &p.g, zp, kind, &mut vec![0; scratch_len], a);
                    }
                    assert_eq!(out, whole, "{} {g:?} in {parts} parts", isa.name());
                    assert_eq!(sums, whole_sums, "{} {g:?} in {parts} parts (sums)", isa.name());
                }
            }
            checked += 1;
        }
    }
}
