//! A 2-D dense convolution whose kernel rows are short (a 3-channel first layer: three
//! rows of 9 bytes), run as a pointwise conv on gathered rows: each output pixel's
//! kh kw cin input bytes (padding as the zero point) in one row of [`ROWS2_PITCH`]
//! bytes, zero past them, and the weights padded alike with zeros. Read in place,
//! each kernel row is a chunk of its own in the AMX tile layout (64 inputs, 9 of them
//! used) and three `vpdpbusd` quadruples (one of them a quarter used) in VNNI's;
//! gathered, the 27 inputs are one chunk. The sums are the same integers (a tap of
//! padding reads the zero point in both forms, the pad bytes meet zero weights), so
//! the requantisation gives the same bytes. The compiler picks this layout for AMX
//! and for AVX2 (whose dense kernel otherwise reads scalar im2row rows: 27 bytes a
//! pixel copied tap by tap, 38% of that conv's time on a Zen 3 core), and
//! `short_row_convs_equal_every_isa` checks it against the other ISAs.
//!
//! MobileNetV2 x1.0's first conv (3 -> 32, 3x3 stride 2 at 224x224) on an Intel core
//! with AMX: read in place on VNNI 90 us (`conv_speed`; AMX in place, three chunks a
//! pixel, is slower); gathered, the gather 10-12 us and the product on tiles 57. In
//! the model (per-op profiles, 8 alternated runs): 99 -> 82 us, the model 0.989. On an
//! AMD Zen 3 (AVX2): im2row rows 462-567 us in the model, gathered 358-404 (the gather
//! about 25 us of it; per-op profiles, 4 alternations; ONNX Runtime's MobileNetV2 file).

use std::ops::Range;

use super::{ConvGeometry, Isa};

/// Bytes of a gathered row: room for kh kw cin <= 32 inputs, a whole number of
/// quadruples, and two rows to a 64-byte register.
pub const ROWS2_PITCH: usize = 32;

/// A short-row 2-D convolution's geometry (on its unpadded channels-last input).
#[derive(Debug, Clone)]
pub struct Rows2 {
    pub g: ConvGeometry,
}

impl Rows2 {
    /// Output pixels gathered at most at a time (128 KiB of rows). The tiles' product
    /// runs slower per pixel in short calls: MobileNetV2's first conv (12544 outputs)
    /// in calls of 512 pixels took 82 us against 54 in one call, in calls of 4096 57 us
    /// (the product alone, on an Intel core with AMX). Rows for the whole map (400 KB)
    /// pushed the next layers' data out of L2: 1-2% slower there, no gain on the model.
    pub const CHUNK: usize = 4096;

    /// Whether `isa` runs the dense conv `g` with `cout` outputs on gathered rows: AMX
    /// (whose tiles gain a chunk per kernel row) where two neighbouring outputs' kernel
    /// rows fit 16 bytes (its gather's fast path), AVX2 where a kernel row is 8-16
    /// bytes (its gather's shuffles, [`super::avx2::row_shuffles`]) and the kernel's
    /// inputs more than 24; a kernel of at most 3 rows whose inputs fit a row, and
    /// enough work for the tiles (their per-call
    /// costs lose on small convs; see `amx::worth_tiles`): at least 16 inputs and a
    /// whole block of 16 outputs on AMX, half a block (8) on AVX2. Measured on an Intel core with AMX, gathered against
    /// in place (the conv alone, 3x3 kernels): 3 -> 32 at 224 stride 2 0.78, 3 -> 64
    /// 0.61, 3 -> 16 at 95 0.89, 3 -> 24 at 96 stride 1 0.86; but 3 -> 8 at 95 0.97
    /// (1.1-1.2 in the model) and 1 -> 16 at 128 (9 inputs, where VNNI's three
    /// quadruples are cheap) 1.35.
    pub fn applies(isa: Isa, g: &ConvGeometry, cout: usize) -> bool {
        const MIN_MACS: usize = 512 * 1024;
        let (run, step) = (g.kw * g.cin, g.stride[1] * g.cin);
        let (fast, min_cout) = match isa {
            Isa::Avx512Amx => (run + step <= 16, 16),
            #[cfg(target_arch = "x86_64")]
            // Rows of at least 25 inputs: the 32-byte rows' product then costs at most
            // 28% more than im2row's rows (16 pairs against 13); shorter ones, more.
            // From 8 outputs, a half block of the dense kernel (MobileNetV2 x0.25's
            // 3 -> 8 3x3/2 at 95x95 on a Zen 3 core, per-op profiles, 4 alternations:
            // 27.4-32.0 us in pixels in lanes, 25.0-25.6 on gathered rows).
            Isa::Avx2 => (super::avx2::row_shuffles(g.kh, run).is_some() && g.kh * run > 24, 8),
            _ => (false, usize::MAX),
        };
        fast && g.kh * g.kw > 1
            && g.kh <= 3
            && g.kh * run >= 16
            && cout >= min_cout
            && g.kh * run <= ROWS2_PITCH
            && g.oh * g.ow >= 16
            && g.oh * g.ow * ROWS2_PITCH * cout >= MIN_MACS
    }

    /// Inputs of one output pixel: kh kw cin.
    pub fn k(&self) -> usize {
        self.g.kh * self.g.kw * self.g.cin
    }

    /// The weights `rows` ([cout][kh kw cin], the im2row order) padded with zeros to
    /// [cout][`ROWS2_PITCH`].
    pub fn pad_weights(&self, rows: &[i8], cout: usize) -> Vec<i8> {
        let k = self.k();
        assert_eq!(rows.len(), cout * k);
        let mut out = vec![0i8; cout * ROWS2_PITCH];
        for (o, r) in out.chunks_exact_mut(ROWS2_PITCH).zip(rows.chunks_exact(k)) {
            o[..k].copy_from_slice(r);
        }
        out
    }

    /// The pointwise geometry of `n` gathered rows.
    pub fn rows_of(&self, n: usize) -> ConvGeometry {
        ConvGeometry::new(1, n, ROWS2_PITCH, 1, 1, [1, 1], [0; 4]).expect("a 1x1 conv fits any input")
    }

    /// Rows of output pixels `pixels` (oy ow + ox) of the input `x`, the first at
    /// `out[0]`: [n][`ROWS2_PITCH`], the kh kw cin bytes of each (the zero point where
    /// a tap lies in the padding), then zeros. `out` holds exactly the rows. Where the
    /// ISA has a fast path, outputs whose taps lie inside the input's columns take it
    /// if its loads (16 bytes from each kernel row's first tap) stay inside `x`: the
    /// plan's buffers have the slack.
    pub fn gather(&self, isa: Isa, x: &[u8], zp: u8, pixels: Range<usize>, out: &mut [u8]) {
        let g = &self.g;
        let (c, run, k) = (g.cin, g.kw * g.cin, self.k());
        assert!(pixels.end <= g.oh * g.ow && out.len() == pixels.len() * ROWS2_PITCH);
        assert!(x.len() >= g.h * g.w * c, "the input tensor");
        let [sy, sx] = g.stride;
        let (pt, pl, step) = (g.pads[0], g.pads[1], g.stride[1] * g.cin);
        // Outputs ox whose kernel columns all lie inside the input: ox sx >= pl and
        // ox sx - pl + kw <= w.
        let first = pl.div_ceil(sx);
        let end = if g.w + pl >= g.kw { ((g.w + pl - g.kw) / sx + 1).min(g.ow) } else { 0 };
        let fast = Interior::new(isa, g.kh, run, step);
        // A kernel row of padding, for the fast path: zero points for a whole run.
        let zrow = if fast.is_some() && g.pads[0] + g.pads[2] > 0 { vec![zp; g.ow * step + 16] } else { Vec::new() };
        let mut px = pixels.start;
        while px < pixels.end {
            let (oy, ox0) = (px / g.ow, px % g.ow);
            let n = (g.ow - ox0).min(pixels.end - px);
            let rows = &mut out[(px - pixels.start) * ROWS2_PITCH..][..n * ROWS2_PITCH];
            // Input row of each kernel row (None: padding).
            let iy = |i: usize| (oy * sy + i).checked_sub(pt).filter(|&v| v < g.h);
            // The interior run of this output row, [a, b) within [ox0, ox0 + n).
            let (a, b) = (first.max(ox0), end.min(ox0 + n));
            let mut done = 0..0;
            if let (Some(f), true) = (&fast, a < b) {
                // Each kernel row from output a on; a row of padding reads zero points.
                let mut src: [&[u8]; 3] = [&zrow; 3];
                for (i, s) in src.iter_mut().enumerate().take(g.kh) {
                    if let Some(y) = iy(i) {
                        *s = &x[(y * g.w + a * sx - pl) * c..];
                    }
                }
                let src = &src[..g.kh];
                // Outputs whose loads stay inside every row.
                let room = src.iter().map(|r| r.len().saturating_sub(16) / step + usize::from(r.len() >= 16)).min().unwrap_or(0);
                let m = (b - a).min(room);
                f.gather(src, step, m, &mut rows[(a - ox0) * ROWS2_PITCH..][..m * ROWS2_PITCH]);
                done = a - ox0..a - ox0 + m;
            }
            for j in (0..done.start).chain(done.end..n) {
                let (ox, row) = (ox0 + j, &mut rows[j * ROWS2_PITCH..][..ROWS2_PITCH]);
                for (i, seg) in row[..k].chunks_exact_mut(run).enumerate() {
                    seg.fill(zp);
                    // Taps t0..t1 of the kernel row lie inside the input (one copy).
                    let Some(y) = iy(i) else { continue };
                    let t0 = pl.saturating_sub(ox * sx).min(g.kw);
                    let t1 = (g.w + pl).saturating_sub(ox * sx).min(g.kw).max(t0);
                    if t0 < t1 {
                        let from = (y * g.w + ox * sx + t0 - pl) * c;
                        seg[t0 * c..t1 * c].copy_from_slice(&x[from..from + (t1 - t0) * c]);
                    }
                }
                row[k..].fill(0);
            }
            px += n;
        }
    }
}

/// The ISA's fast path for the outputs whose taps lie inside the input's columns.
enum Interior {
    /// AVX-512 VBMI: two outputs' rows from one 16-byte load per kernel row
    /// ([`super::avx512::gather_row_pairs`]), the byte permute made once per call.
    #[cfg(target_arch = "x86_64")]
    Vbmi(([u8; 64], u64)),
    /// AVX2: one output's row from one 16-byte load per kernel row and two byte
    /// shuffles ([`super::avx2::gather_rows`]).
    #[cfg(target_arch = "x86_64")]
    Avx2([[u8; 32]; 2]),
}

impl Interior {
    /// `None` where the ISA has no fast path or the shape does not suit it.
    fn new(isa: Isa, kh: usize, run: usize, step: usize) -> Option<Interior> {
        match isa.checked() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni | Isa::Avx512Amx if step > 0 => super::avx512::row_pair_table(kh, run, step).map(Interior::Vbmi),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => super::avx2::row_shuffles(kh, run).map(Interior::Avx2),
            _ => {
                let _ = (kh, run, step);
                None
            }
        }
    }

    /// The rows of the first `n` outputs: kernel row i of output j is `run` bytes at
    /// `j step` of `rows[i]`.
    fn gather(&self, rows: &[&[u8]], step: usize, n: usize, out: &mut [u8]) {
        match self {
            // SAFETY: made only for AVX-512 VNNI, confirmed on this CPU by
            // `Isa::checked`, whose kernels need VBMI too (`avx512::available`).
            #[cfg(target_arch = "x86_64")]
            Interior::Vbmi(table) => unsafe { super::avx512::gather_row_pairs(rows, step, table, n, out) },
            // SAFETY: made only for AVX2, confirmed on this CPU by `Isa::checked`.
            #[cfg(target_arch = "x86_64")]
            Interior::Avx2(m) => unsafe { super::avx2::gather_rows(rows, step, m, n, out) },
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (rows, step, n, out);
            }
        }
    }
}
