//! Integer kernels: u8 activations (NHWC) times s8 weights into i32 accumulators,
//! and the requantisation back to u8. Each kernel has a portable scalar reference;
//! the x86-64 AVX2 / AVX-512 VNNI versions, the aarch64 NEON / `sdot` versions
//! (`neon.rs`) and the armv7 NEON versions (`armv7.rs`) are chosen at run time and
//! must give the same bits (the
//! arithmetic is integer until requantisation, which is the same sequence of
//! IEEE float operations in both). `tests` and `runtime/tests/int8_kernels.rs`
//! check this on random shapes.

use super::plan::{ConvKind, QTensor};

/// Which implementation the dispatcher picked (for logs and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX-512 with VNNI (`vpdpbusd`): convolutions fused with requantisation.
    Avx512Vnni,
    /// aarch64 NEON (every aarch64 CPU): `smlal` on i16-widened operands,
    /// convolutions fused with requantisation.
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`) for dense convolutions.
    NeonDot,
    /// 32-bit ARM (armv7) with NEON, where the kernel reports it (AT_HWCAP):
    /// `vmlal.s16` on i16-widened operands for dense and depthwise convolutions,
    /// NEON requantisation.
    Armv7Neon,
}

impl Isa {
    /// The best this CPU has, unless `EDGEMED_INT8_ISA` (scalar, avx2, avx512vnni,
    /// neon, neondot, armv7neon) asks for another it also has.
    pub fn detect() -> Isa {
        let available = Isa::available();
        if let Some(want) = std::env::var("EDGEMED_INT8_ISA").ok().and_then(|v| available.iter().copied().find(|i| i.name() == v)) {
            return want;
        }
        *available.last().expect("scalar is always available")
    }

    /// Every implementation this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if super::avx512::available() {
                v.push(Isa::Avx512Vnni);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            // NEON is part of the aarch64 baseline.
            v.push(Isa::Neon);
            if super::neon::has_dotprod() {
                v.push(Isa::NeonDot);
            }
        }
        #[cfg(target_arch = "arm")]
        if super::armv7::has_neon() {
            v.push(Isa::Armv7Neon);
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neondot",
            Isa::Armv7Neon => "armv7neon",
        }
    }

    /// Whether the AVX2 code may run (AVX-512 CPUs have AVX2).
    #[cfg(target_arch = "x86_64")]
    fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni)
    }
}

/// Bytes of scratch [`conv`] needs for `g`: im2row rows (scalar, AVX2) or a padded
/// copy of the input (VNNI, NEON, armv7 NEON).
pub fn conv_scratch_len(g: &ConvGeometry, kind: &ConvKind) -> usize {
    let im2row = match kind {
        ConvKind::Dense(_) if !g.is_pointwise() => g.oh * g.ow * g.kh * g.kw * g.cin,
        _ => 0,
    };
    let padded = if g.pads == [0; 4] { 0 } else { (g.h + g.pads[0] + g.pads[2]) * (g.w + g.pads[1] + g.pads[3]) * g.cin };
    // The VNNI 3x3 depthwise kernel reads a row of zero points for rows of padding.
    let zp_row = if g.pads[0] + g.pads[2] > 0 { g.w * g.cin + 16 } else { 0 };
    im2row.max(padded).max(zp_row)
}

/// One convolution of the plan: dense or depthwise, then requantisation into `out`.
/// `x` and `scratch` carry 64 bytes of slack past their data (the VNNI and NEON kernels
/// read whole groups of bytes; what they read past the data meets zero weights). The
/// armv7 kernels use `acc` as the buffer of their int32 sums before requantisation.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    isa: Isa,
    x: &[u8],
    g: &ConvGeometry,
    zp: u8,
    kind: &ConvKind,
    r: &Requant,
    scratch: &mut [u8],
    acc: &mut [i32],
    out: &mut [u8],
) {
    let pixels = g.oh * g.ow;
    let cout = r.mult.len();
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        if let ConvKind::Depthwise(w) = kind {
            if super::avx512::depthwise3x3_applies(g, w, r) {
                unsafe { super::avx512::conv_depthwise3x3(x, g, zp, w, r, scratch, out) };
                return;
            }
        }
        let (input, padded) = padded_input(x, g, zp, scratch);
        unsafe {
            match kind {
                ConvKind::Dense(w) => super::avx512::conv_dense(input, &padded, w, super::avx512::DenseOut::U8(r, out)),
                ConvKind::Depthwise(w) => super::avx512::conv_depthwise(input, &padded, zp, w, r, out),
            }
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if let Isa::Neon | Isa::NeonDot = isa {
        let (input, padded) = padded_input(x, g, zp, scratch);
        match kind {
            ConvKind::Dense(w) => super::neon::conv_dense(isa == Isa::NeonDot, input, &padded, w, super::neon::Out::U8(r, out)),
            ConvKind::Depthwise(w) => super::neon::conv_depthwise(input, &padded, zp, w, super::neon::Out::U8(r, out)),
        }
        return;
    }
    #[cfg(target_arch = "arm")]
    if isa == Isa::Armv7Neon {
        use super::armv7::{conv_dense, conv_depthwise, Out};
        let (input, padded) = padded_input(x, g, zp, scratch);
        match kind {
            ConvKind::Dense(w) => conv_dense(input, &padded, w, Out::U8(r, out), acc),
            ConvKind::Depthwise(w) => conv_depthwise(input, &padded, zp, w, Out::U8(r, out), acc),
        }
        return;
    }
    accumulate(isa, x, g, zp, kind, scratch, acc);
    requantize(isa, &acc[..pixels * cout], cout, r, out);
}

/// The int32 sums of a convolution, acc[p][c] = Σ (x - zp) w, zero-point corrected
/// for depthwise but not for dense (whose correction is `zp * Σw`, done by the caller).
#[allow(clippy::too_many_arguments)]
pub fn accumulate(isa: Isa, x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    let pixels = g.oh * g.ow;
    match kind {
        ConvKind::Dense(w) => {
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512Vnni {
                let (input, padded) = padded_input(x, g, zp, scratch);
                return unsafe { super::avx512::conv_dense(input, &padded, w, super::avx512::DenseOut::I32(acc)) };
            }
            #[cfg(target_arch = "aarch64")]
            if let Isa::Neon | Isa::NeonDot = isa {
                let (input, padded) = padded_input(x, g, zp, scratch);
                return super::neon::conv_dense(isa == Isa::NeonDot, input, &padded, w, super::neon::Out::I32(acc));
            }
            #[cfg(target_arch = "arm")]
            if isa == Isa::Armv7Neon {
                let (input, padded) = padded_input(x, g, zp, scratch);
                return super::armv7::conv_dense(input, &padded, w, super::armv7::Out::I32(acc), &mut []);
            }
            let input: &[u8] = if g.is_pointwise() {
                x
            } else {
                im2row(x, g, zp, scratch);
                scratch
            };
            gemm(isa, input, pixels, w, acc);
        }
        ConvKind::Depthwise(w) => {
            #[cfg(target_arch = "aarch64")]
            if let Isa::Neon | Isa::NeonDot = isa {
                let (input, padded) = padded_input(x, g, zp, scratch);
                return super::neon::conv_depthwise(input, &padded, zp, w, super::neon::Out::I32(acc));
            }
            #[cfg(target_arch = "arm")]
            if isa == Isa::Armv7Neon {
                let (input, padded) = padded_input(x, g, zp, scratch);
                return super::armv7::conv_depthwise(input, &padded, zp, w, super::armv7::Out::I32(acc), &mut []);
            }
            depthwise(isa, x, g, zp, &w.w, acc)
        }
    }
}

/// The input with its padding materialised as the zero point (every tap is then
/// read, and the correction zp * Σw is exact for border pixels too), and the
/// geometry on it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn padded_input<'a>(x: &'a [u8], g: &ConvGeometry, zp: u8, scratch: &'a mut [u8]) -> (&'a [u8], ConvGeometry) {
    if g.pads == [0; 4] {
        return (x, *g);
    }
    let (hp, wp) = pad_nhwc(x, g.h, g.w, g.cin, g.pads, zp, scratch);
    (&*scratch, ConvGeometry { h: hp, w: wp, pads: [0; 4], ..*g })
}

/// Weights of a dense (im2row x weights) product, kept in the layouts the kernels read.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub k: usize,
    pub cout: usize,
    pub kernel_rows: usize,
    pub row_len: usize,
    /// [cout][k], the scalar reference's layout.
    pub rows: Vec<i8>,
    /// AVX2: blocks of 16 output channels, k in pairs: [cout/16][k/2][16][2] as i16.
    pub pairs: Vec<i16>,
    /// VNNI and `sdot`: blocks of 16 output channels, each kernel row in quadruples (zero
    /// padded): [cout/16][kernel_rows][row_len/4][16][4].
    pub quads: Vec<i8>,
    /// NEON: i16 weights for `smlal` by lane, and Σw for `sdot`'s correction.
    #[cfg(target_arch = "aarch64")]
    pub(super) neon: super::neon::DenseWeights,
    /// armv7 NEON: i16 weights for `vmlal.s16` by lane.
    #[cfg(target_arch = "arm")]
    pub(super) armv7: super::armv7::DenseWeights,
}

pub const CBLOCK: usize = 16;

impl PackedWeights {
    /// `rows`: [cout][k] with k = kernel rows x `row_len` (kh x kw*cin for a conv on
    /// NHWC, one row of cin for pointwise), so that the VNNI kernel can read each
    /// kernel row straight from the input without im2row.
    pub fn new(rows: Vec<i8>, cout: usize, kernel_rows: usize, row_len: usize) -> Self {
        let k = kernel_rows * row_len;
        assert_eq!(rows.len(), cout * k);
        let k2 = k.div_ceil(2);
        let blocks = cout.div_ceil(CBLOCK);
        let mut pairs = vec![0i16; blocks * k2 * CBLOCK * 2];
        for c in 0..cout {
            let (b, lane) = (c / CBLOCK, c % CBLOCK);
            for kk in 0..k {
                pairs[((b * k2 + kk / 2) * CBLOCK + lane) * 2 + kk % 2] = rows[c * k + kk] as i16;
            }
        }
        let q4 = row_len.div_ceil(4);
        let mut quads = vec![0i8; blocks * kernel_rows * q4 * CBLOCK * 4];
        for c in 0..cout {
            let (b, lane) = (c / CBLOCK, c % CBLOCK);
            for i in 0..kernel_rows {
                for j in 0..row_len {
                    quads[(((b * kernel_rows + i) * q4 + j / 4) * CBLOCK + lane) * 4 + j % 4] = rows[c * k + i * row_len + j];
                }
            }
        }
        PackedWeights {
            #[cfg(target_arch = "aarch64")]
            neon: super::neon::DenseWeights::new(&rows, cout, kernel_rows, row_len),
            #[cfg(target_arch = "arm")]
            armv7: super::armv7::DenseWeights::new(&rows, cout, kernel_rows, row_len),
            k,
            cout,
            kernel_rows,
            row_len,
            rows,
            pairs,
            quads,
        }
    }

    /// Σ_k w[c][k], for the zero-point correction.
    pub fn sums(&self) -> Vec<i32> {
        (0..self.cout).map(|c| self.rows[c * self.k..(c + 1) * self.k].iter().map(|&w| w as i32).sum()).collect()
    }
}

/// Weights of a depthwise convolution.
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    pub taps: usize,
    pub c: usize,
    /// [taps][c], the scalar and AVX2 layout.
    pub w: Vec<i32>,
    /// VNNI: blocks of 16 channels, taps in quadruples (zero padded): [c/16][taps/4][16][4].
    pub quads: Vec<i8>,
    /// Σ_taps w[c], for the zero-point correction when every tap is read.
    pub sums: Vec<i32>,
    /// VNNI, 3x3 kernels (taps = 9): blocks of 16 channels, one register per kernel
    /// column holding its three rows as the bytes of each channel's int32 (zero
    /// padded): [c/16][3][16][4]. Empty for other kernels.
    #[cfg(target_arch = "x86_64")]
    pub cols: Vec<i8>,
    /// NEON: blocks of 8 channels, [c/8][taps][8] as i16 (zero padded).
    #[cfg(target_arch = "aarch64")]
    pub(super) neon: Vec<i16>,
    /// armv7 NEON: the same layout, [c/8][taps][8] as i16.
    #[cfg(target_arch = "arm")]
    pub(super) armv7: Vec<i16>,
}

impl DepthwiseWeights {
    /// `w`: [c][taps] as ONNX stores them.
    pub fn new(w: &[i8], c: usize, taps: usize) -> Self {
        assert_eq!(w.len(), c * taps);
        let mut t_c = vec![0i32; taps * c];
        let g4 = taps.div_ceil(4);
        let mut quads = vec![0i8; c.div_ceil(CBLOCK) * g4 * CBLOCK * 4];
        for ch in 0..c {
            let (b, lane) = (ch / CBLOCK, ch % CBLOCK);
            for t in 0..taps {
                t_c[t * c + ch] = w[ch * taps + t] as i32;
                quads[((b * g4 + t / 4) * CBLOCK + lane) * 4 + t % 4] = w[ch * taps + t];
            }
        }
        let sums = (0..c).map(|ch| w[ch * taps..(ch + 1) * taps].iter().map(|&v| v as i32).sum()).collect();
        DepthwiseWeights {
            taps,
            c,
            w: t_c,
            quads,
            sums,
            #[cfg(target_arch = "x86_64")]
            cols: if taps == 9 { super::avx512::depthwise_columns3x3(w, c) } else { Vec::new() },
            #[cfg(target_arch = "aarch64")]
            neon: super::neon::depthwise_layout(c, taps, |ch, t| w[ch * taps + t] as i16),
            #[cfg(target_arch = "arm")]
            armv7: super::armv7::depthwise_layout(c, taps, |ch, t| w[ch * taps + t] as i16),
        }
    }
}

/// Copies an NHWC tensor into `out` with `pads` (top, left, bottom, right) of `zp`
/// around it; returns the padded height and width.
pub fn pad_nhwc(x: &[u8], h: usize, w: usize, c: usize, pads: [usize; 4], zp: u8, out: &mut [u8]) -> (usize, usize) {
    let (hp, wp) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
    let row = wp * c;
    out[..pads[0] * row].fill(zp);
    for y in 0..h {
        let o = &mut out[(pads[0] + y) * row..(pads[0] + y + 1) * row];
        o[..pads[1] * c].fill(zp);
        o[pads[1] * c..(pads[1] + w) * c].copy_from_slice(&x[y * w * c..(y + 1) * w * c]);
        o[(pads[1] + w) * c..].fill(zp);
    }
    out[(pads[0] + h) * row..hp * row].fill(zp);
    (hp, wp)
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for `p` rows of `x` (row stride `k`).
pub fn gemm(isa: Isa, x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    debug_assert!(x.len() >= pixels * w.k && acc.len() >= pixels * w.cout);
    match isa {
        #[cfg(target_arch = "x86_64")]
        i if i.has_avx2() => unsafe { gemm_avx2(x, pixels, w, acc) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => super::neon::gemm(isa == Isa::NeonDot, x, pixels, w, acc),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => super::armv7::gemm(x, pixels, w, acc),
        _ => gemm_scalar(x, pixels, w, acc),
    }
}

pub fn gemm_scalar(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    let k = w.k;
    for p in 0..pixels {
        let row = &x[p * k..(p + 1) * k];
        for c in 0..w.cout {
            let wr = &w.rows[c * k..(c + 1) * k];
            acc[p * w.cout + c] = row.iter().zip(wr).map(|(&a, &b)| a as i32 * b as i32).sum();
        }
    }
}

/// 4 pixels x 16 channels per step: each pair of inputs is broadcast as one i32 and
/// multiplied with 16 channels' weight pairs by `vpmaddwd` (u8 and s8 widened to i16,
/// so nothing saturates, unlike `vpmaddubsw`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    use std::arch::x86_64::*;
    let (k, cout) = (w.k, w.cout);
    let k2 = k.div_ceil(2);
    let blocks = cout.div_ceil(CBLOCK);
    // Input pairs as i32 (lo | hi << 16), 4 pixels at a time.
    let mut xp = vec![0i32; 4 * k2];
    let mut out = [0i32; 4 * CBLOCK];
    let mut p = 0;
    while p < pixels {
        let np = (pixels - p).min(4);
        for q in 0..4 {
            for kk in 0..k2 {
                xp[q * k2 + kk] = if q < np {
                    let r = &x[(p + q) * k..(p + q + 1) * k];
                    let lo = r[2 * kk] as i32;
                    let hi = if 2 * kk + 1 < k { r[2 * kk + 1] as i32 } else { 0 };
                    lo | (hi << 16)
                } else {
                    0
                };
            }
        }
        for b in 0..blocks {
            let wb = w.pairs.as_ptr().add(b * k2 * CBLOCK * 2);
            let mut a = [_mm256_setzero_si256(); 8];
            for kk in 0..k2 {
                let w0 = _mm256_loadu_si256(wb.add(kk * CBLOCK * 2) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(kk * CBLOCK * 2 + 16) as *const __m256i);
                for q in 0..4 {
                    let xb = _mm256_set1_epi32(*xp.get_unchecked(q * k2 + kk));
                    a[2 * q] = _mm256_add_epi32(a[2 * q], _mm256_madd_epi16(xb, w0));
                    a[2 * q + 1] = _mm256_add_epi32(a[2 * q + 1], _mm256_madd_epi16(xb, w1));
                }
            }
            for q in 0..4 {
                _mm256_storeu_si256(out.as_mut_ptr().add(q * CBLOCK) as *mut __m256i, a[2 * q]);
                _mm256_storeu_si256(out.as_mut_ptr().add(q * CBLOCK + 8) as *mut __m256i, a[2 * q + 1]);
            }
            let c0 = b * CBLOCK;
            let nc = (cout - c0).min(CBLOCK);
            for q in 0..np {
                acc[(p + q) * cout + c0..(p + q) * cout + c0 + nc].copy_from_slice(&out[q * CBLOCK..q * CBLOCK + nc]);
            }
        }
        p += 4;
    }
}

/// Geometry of a 2-D convolution on NHWC tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeometry {
    pub fn new(h: usize, w: usize, cin: usize, kh: usize, kw: usize, stride: [usize; 2], pads: [usize; 4]) -> Option<Self> {
        let (hp, wp) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
        if hp < kh || wp < kw || stride.contains(&0) {
            return None;
        }
        Some(ConvGeometry { h, w, cin, kh, kw, stride, pads, oh: (hp - kh) / stride[0] + 1, ow: (wp - kw) / stride[1] + 1 })
    }

    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pads == [0; 4]
    }
}

/// Gathers each output pixel's receptive field into a row ([kh][kw][cin]), padding
/// with the input zero point (a real 0).
pub fn im2row(x: &[u8], g: &ConvGeometry, zp: u8, rows: &mut [u8]) {
    let k = g.kh * g.kw * g.cin;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let row = &mut rows[(oy * g.ow + ox) * k..(oy * g.ow + ox + 1) * k];
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i) as isize - g.pads[0] as isize;
                for j in 0..g.kw {
                    let ix = (ox * g.stride[1] + j) as isize - g.pads[1] as isize;
                    let dst = &mut row[(i * g.kw + j) * g.cin..(i * g.kw + j + 1) * g.cin];
                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                        dst.fill(zp);
                    } else {
                        let s = (iy as usize * g.w + ix as usize) * g.cin;
                        dst.copy_from_slice(&x[s..s + g.cin]);
                    }
                }
            }
        }
    }
}

/// Depthwise convolution: acc[p][c] = Σ_taps (x - zp) w[tap][c], padding contributing 0.
/// `w` is [kh * kw][c] as i32.
pub fn depthwise(isa: Isa, x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        i if i.has_avx2() => unsafe { depthwise_avx2(x, g, zp, w, acc) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => super::neon::depthwise(x, g, zp, w, acc),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => super::armv7::depthwise(x, g, zp, w, acc),
        _ => depthwise_scalar(x, g, zp, w, acc),
    }
}

#[inline(always)]
fn depthwise_body(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    let c = g.cin;
    let zp = zp as i32;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let a = &mut acc[(oy * g.ow + ox) * c..(oy * g.ow + ox + 1) * c];
            a.fill(0);
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i) as isize - g.pads[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                for j in 0..g.kw {
                    let ix = (ox * g.stride[1] + j) as isize - g.pads[1] as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    let s = (iy as usize * g.w + ix as usize) * c;
                    let xs = &x[s..s + c];
                    let ws = &w[(i * g.kw + j) * c..(i * g.kw + j + 1) * c];
                    for ((a, &xv), &wv) in a.iter_mut().zip(xs).zip(ws) {
                        *a += (xv as i32 - zp) * wv;
                    }
                }
            }
        }
    }
}

pub fn depthwise_scalar(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    depthwise_body(x, g, zp, w, acc)
}

/// The same loop compiled for AVX2: the channel loop vectorises 8 channels per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_avx2(x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    depthwise_body(x, g, zp, w, acc)
}

/// Per-channel requantisation parameters of one convolution.
#[derive(Debug, Clone)]
pub struct Requant {
    /// Subtracted from the accumulator (input zero point x Σw; 0 for depthwise, which corrects in the loop).
    pub offset: Vec<i32>,
    /// s_x s_w[c] / s_y: one multiplier per channel, as ONNX Runtime's requantisation uses.
    pub mult: Vec<f32>,
    /// bias[c] / s_y
    pub bias: Vec<f32>,
    pub out_zp: f32,
    /// Clamp per channel (activation bounds in the quantised domain).
    pub lo: Vec<u8>,
    pub hi: Vec<u8>,
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y) with m = s_x s_w / s_y and
/// b = bias / s_y: DequantizeLinear -> Conv -> QuantizeLinear on the exact integer sum,
/// with the scales combined beforehand as ONNX Runtime's fused kernels do (a product
/// instead of a division, which may round differently by one step in rare cases).
pub fn requantize(isa: Isa, acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        i if i.has_avx2() => unsafe { requantize_avx2(acc, cout, r, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => super::neon::requantize(acc, cout, r, out),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => super::armv7::requantize(acc, cout, r, out),
        _ => requantize_body(acc, cout, r, out),
    }
}

#[inline(always)]
fn requantize_body(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
        for c in 0..cout {
            let v = (a[c] - r.offset[c]) as f32 * r.mult[c] + r.bias[c];
            let q = round_half_even(v) + r.out_zp;
            o[c] = q.clamp(r.lo[c] as f32, r.hi[c] as f32) as u8;
        }
    }
}

/// 8 channels per step with the same IEEE operations as [`requantize_body`], in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requantize_avx2(acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let full = cout / 8 * 8;
    let magic = _mm256_set1_ps(12_582_912.0);
    let (lim_lo, lim_hi) = (_mm256_set1_ps(-4_194_304.0), _mm256_set1_ps(4_194_304.0));
    let zp = _mm256_set1_ps(r.out_zp);
    let mut tmp = [0i32; 8];
    for (a, o) in acc.chunks_exact(cout).zip(out.chunks_exact_mut(cout)) {
        let mut c = 0;
        while c < full {
            let x = _mm256_sub_epi32(
                _mm256_loadu_si256(a.as_ptr().add(c) as *const __m256i),
                _mm256_loadu_si256(r.offset.as_ptr().add(c) as *const __m256i),
            );
            let v = _mm256_add_ps(
                _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_loadu_ps(r.mult.as_ptr().add(c))),
                _mm256_loadu_ps(r.bias.as_ptr().add(c)),
            );
            let v = _mm256_min_ps(_mm256_max_ps(v, lim_lo), lim_hi);
            let q = _mm256_add_ps(_mm256_sub_ps(_mm256_add_ps(v, magic), magic), zp);
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(r.lo.as_ptr().add(c) as *const __m128i)));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(r.hi.as_ptr().add(c) as *const __m128i)));
            let q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi));
            _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, q);
            for (k, &t) in tmp.iter().enumerate() {
                *o.get_unchecked_mut(c + k) = t as u8;
            }
            c += 8;
        }
        for c in full..cout {
            let v = (a[c] - r.offset[c]) as f32 * r.mult[c] + r.bias[c];
            o[c] = (round_half_even(v) + r.out_zp).clamp(r.lo[c] as f32, r.hi[c] as f32) as u8;
        }
    }
}

/// The model input: float NCHW quantised (ONNX QuantizeLinear) into u8 NHWC.
pub fn quantize_nchw_to_nhwc(isa: Isa, x: &[f32], t: &QTensor, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && unsafe { super::avx512::quantize_nchw_to_nhwc(x, t.h * t.w, t.c, t.scale, t.zp, out) } {
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if matches!(isa, Isa::Neon | Isa::NeonDot) && super::neon::quantize_nchw_to_nhwc(x, t, out) {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        i if i.has_avx2() => unsafe { quantize_nchw_avx2(x, t, out) },
        _ => quantize_nchw_body(x, t, out),
    }
}

#[inline(always)]
fn quantize_nchw_body(x: &[f32], t: &QTensor, out: &mut [u8]) {
    let hw = t.h * t.w;
    for c in 0..t.c {
        let plane = &x[c * hw..(c + 1) * hw];
        for (i, &v) in plane.iter().enumerate() {
            out[i * t.c + c] = quantize_u8(v, t.scale, t.zp);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_nchw_avx2(x: &[f32], t: &QTensor, out: &mut [u8]) {
    quantize_nchw_body(x, t, out)
}

/// QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b)), element-wise, with
/// the float operations of the QDQ graph.
pub fn add_quantized(isa: Isa, a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, out: &mut [u8]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        i if i.has_avx2() => unsafe { add_quantized_avx2(a, ta, b, tb, to, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => super::neon::add_quantized(a, ta, b, tb, to, out),
        _ => add_quantized_body(a, ta, b, tb, to, out),
    }
}

#[inline(always)]
fn add_quantized_body(a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, out: &mut [u8]) {
    let (za, zb) = (ta.zp as i32, tb.zp as i32);
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let v = (x as i32 - za) as f32 * ta.scale + (y as i32 - zb) as f32 * tb.scale;
        *o = quantize_u8(v, to.scale, to.zp);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_quantized_avx2(a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, out: &mut [u8]) {
    add_quantized_body(a, ta, b, tb, to, out)
}

/// Round half to even, as ONNX QuantizeLinear does, in plain IEEE arithmetic so that
/// it vectorises (`f32::round_ties_even` is a library call on x86-64 without SSE4.1):
/// adding and subtracting 1.5 x 2^23 leaves the nearest integer, ties to even, for
/// |v| <= 2^22; larger values are clamped first (they saturate to 0 or 255 anyway).
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v.clamp(-4_194_304.0, 4_194_304.0) + MAGIC) - MAGIC
}

/// ONNX QuantizeLinear to u8: saturate(round_half_even(x / s) + z).
pub fn quantize_u8(x: f32, scale: f32, zp: u8) -> u8 {
    (round_half_even(x / scale) + zp as f32).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn rounding_is_half_to_even() {
        for (v, r) in [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (-0.5, -0.0), (-1.5, -2.0), (2.4999, 2.0), (254.5, 254.0), (1e9, 4_194_304.0)] {
            assert_eq!(round_half_even(v), r, "{v}");
        }
        let mut s = 3u64;
        for _ in 0..100_000 {
            let v = (lcg(&mut s) as f32 / u32::MAX as f32 - 0.5) * 1000.0;
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    fn random_requant(s: &mut u64, c: usize) -> Requant {
        let lo = lcg(s) as u8 % 20;
        Requant {
            offset: (0..c).map(|_| lcg(s) as i16 as i32).collect(),
            mult: (0..c).map(|_| (1 + lcg(s) % 1000) as f32 * 2e-5).collect(),
            bias: (0..c).map(|_| (lcg(s) % 200) as f32 * 0.5 - 50.0).collect(),
            out_zp: (lcg(s) % 256) as f32,
            lo: vec![lo; c],
            hi: (0..c).map(|_| 235 + lcg(s) as u8 % 21).collect(),
        }
    }

    #[test]
    fn simd_gemm_equals_scalar_on_random_shapes() {
        let mut s = 1u64;
        for isa in Isa::available() {
            for _ in 0..60 {
                let (p, k, c) = (1 + lcg(&mut s) as usize % 23, 1 + lcg(&mut s) as usize % 77, 1 + lcg(&mut s) as usize % 41);
                let x: Vec<u8> = (0..p * k).map(|_| lcg(&mut s) as u8).collect();
                // Extremes included: 255 x -128 everywhere would overflow 16-bit pair sums.
                let w: Vec<i8> = (0..c * k).map(|i| if i % 7 == 0 { -128 } else { lcg(&mut s) as i8 }).collect();
                let pw = PackedWeights::new(w, c, 1, k);
                let (mut a, mut b) = (vec![0; p * c], vec![0; p * c]);
                gemm_scalar(&x, p, &pw, &mut a);
                gemm(isa, &x, p, &pw, &mut b);
                assert_eq!(a, b, "p {p} k {k} c {c} on {isa:?}");
            }
        }
    }

    /// Whole fused convolutions (dense with any kernel, depthwise; strides, padding)
    /// on every implementation this CPU has, against the scalar reference.
    #[test]
    fn simd_convolutions_equal_scalar_on_random_geometries() {
        let mut s = 11u64;
        let (mut checked, mut inside, mut total) = (0, 0, 0);
        for _ in 0..160 {
            let depthwise = lcg(&mut s).is_multiple_of(2);
            let (h, w) = (1 + lcg(&mut s) as usize % 14, 1 + lcg(&mut s) as usize % 14);
            let cin = 1 + lcg(&mut s) as usize % 40;
            let cout = if depthwise { cin } else { 1 + lcg(&mut s) as usize % 40 };
            let k = [1, 3, 5][lcg(&mut s) as usize % 3];
            let stride = [1 + lcg(&mut s) as usize % 2, 1 + lcg(&mut s) as usize % 2];
            let pads: [usize; 4] = std::array::from_fn(|_| lcg(&mut s) as usize % 3 % (k / 2 + 1));
            let Some(g) = ConvGeometry::new(h, w, cin, k, k, stride, pads) else { continue };
            let x: Vec<u8> = (0..h * w * cin + 64).map(|_| lcg(&mut s) as u8).collect();
            let zp = lcg(&mut s) as u8;
            let taps = k * k;
            let kind = if depthwise {
                let wt: Vec<i8> = (0..cin * taps).map(|i| if i % 5 == 0 { -128 } else { lcg(&mut s) as i8 }).collect();
                ConvKind::Depthwise(DepthwiseWeights::new(&wt, cin, taps))
            } else {
                let wt: Vec<i8> = (0..cout * taps * cin).map(|i| if i % 5 == 0 { -128 } else { lcg(&mut s) as i8 }).collect();
                ConvKind::Dense(PackedWeights::new(wt, cout, k, k * cin))
            };
            let n = g.oh * g.ow * cout;
            let scratch_len = conv_scratch_len(&g, &kind) + 64;
            // Scale and centre the requantisation on these sums, so that most
            // outputs fall inside the clamp and the comparison says something.
            let mut r = random_requant(&mut s, cout);
            let mut acc = vec![0i32; n];
            match &kind {
                ConvKind::Dense(pw) => {
                    let mut rows = vec![0u8; scratch_len];
                    let input: &[u8] = if g.is_pointwise() {
                        &x
                    } else {
                        im2row(&x, &g, zp, &mut rows);
                        &rows
                    };
                    gemm_scalar(input, g.oh * g.ow, pw, &mut acc);
                }
                ConvKind::Depthwise(dw) => depthwise_scalar(&x, &g, zp, &dw.w, &mut acc),
            }
            let mean = acc.iter().map(|&a| a as f64).sum::<f64>() / n as f64;
            let sd = (acc.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt().max(1.0);
            r.offset.fill(0);
            for c in 0..cout {
                r.mult[c] *= (40.0 / sd / 0.01) as f32;
                r.bias[c] = (-mean * r.mult[c] as f64) as f32 + r.bias[c] * 0.1;
            }
            r.out_zp = 128.0;
            let mut reference = vec![0u8; n];
            conv(Isa::Scalar, &x, &g, zp, &kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut reference);
            for isa in Isa::available() {
                let mut out = vec![0u8; n];
                conv(isa, &x, &g, zp, &kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut out);
                assert_eq!(reference, out, "{isa:?} depthwise {depthwise} {g:?} cout {cout}");
            }
            inside += reference.iter().filter(|&&v| v > r.lo[0] && v < 235).count();
            total += n;
            checked += 1;
        }
        assert!(checked > 100);
        // Most outputs unsaturated: the comparisons say something.
        assert!(inside * 2 > total, "{inside} of {total} outputs inside the clamp");
    }

    /// 3x3 depthwise convolutions (the fused VNNI kernel's case) on every implementation,
    /// against the scalar reference: strides 1 and 2 in either direction, any padding,
    /// odd sizes, channel counts around multiples of 16, extreme zero points and weights,
    /// and requantisations from ordinary to ones whose values overflow an int32.
    #[test]
    fn simd_depthwise3x3_equals_scalar_on_random_geometries() {
        let mut s = 23u64;
        let (mut checked, mut inside, mut total) = (0, 0, 0);
        for case in 0..400 {
            let (h, w) = (1 + lcg(&mut s) as usize % 21, 1 + lcg(&mut s) as usize % 21);
            let c = [1, 3, 15, 16, 17, 31, 32, 33, 48, 63, 64, 70][lcg(&mut s) as usize % 12];
            let stride = [1 + lcg(&mut s) as usize % 2, 1 + lcg(&mut s) as usize % 2];
            let pads: [usize; 4] = std::array::from_fn(|_| [0, 1, 1, 2][lcg(&mut s) as usize % 4]);
            let Some(g) = ConvGeometry::new(h, w, c, 3, 3, stride, pads) else { continue };
            let zp = [0u8, 128, 255, lcg(&mut s) as u8][case % 4];
            let x: Vec<u8> = (0..h * w * c + 64)
                .map(|i| match (case / 4) % 4 {
                    0 => 255,
                    1 => 0,
                    _ if i % 11 == 0 => 255,
                    _ => lcg(&mut s) as u8,
                })
                .collect();
            let wt: Vec<i8> = (0..c * 9)
                .map(|i| match (case / 16) % 3 {
                    0 => [-128, 127][i % 2],
                    1 => -128,
                    _ => lcg(&mut s) as i8,
                })
                .collect();
            let kind = ConvKind::Depthwise(DepthwiseWeights::new(&wt, c, 9));
            let n = g.oh * g.ow * c;
            let mut r = random_requant(&mut s, c);
            r.out_zp = [0.0, 128.0, 255.0, (lcg(&mut s) % 256) as f32][(case / 2) % 4];
            match case % 5 {
                // Centred on the sums, most outputs inside the clamp.
                0 | 1 => {
                    let mut acc = vec![0i32; n];
                    depthwise_scalar(&x, &g, zp, &dw_w(&kind), &mut acc);
                    let mean = acc.iter().map(|&a| a as f64).sum::<f64>() / n as f64;
                    let sd = (acc.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt().max(1.0);
                    r.offset.fill(0);
                    for ch in 0..c {
                        r.mult[ch] = (40.0 / sd) as f32 * (1.0 + ch as f32 * 0.01);
                        r.bias[ch] = (-mean * r.mult[ch] as f64) as f32 + ch as f32 * 0.37;
                    }
                }
                // Past 2^22 and past 2^31 either way: saturation to lo and hi.
                2 => r.mult.iter_mut().enumerate().for_each(|(i, m)| *m = if i % 2 == 0 { 3e4 } else { -3e4 }),
                3 => r.bias.iter_mut().enumerate().for_each(|(i, b)| *b = [5e6, -5e6, 3e9, -3e9][i % 4]),
                _ => {}
            }
            let scratch_len = conv_scratch_len(&g, &kind) + 64;
            let mut reference = vec![0u8; n];
            conv(Isa::Scalar, &x, &g, zp, &kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut reference);
            for isa in Isa::available() {
                // Output and scratch start dirty: every byte must be written, none read.
                let mut out = vec![0xa5u8; n];
                conv(isa, &x, &g, zp, &kind, &r, &mut vec![0x5a; scratch_len], &mut vec![0; n], &mut out);
                assert_eq!(reference, out, "{isa:?} case {case} {g:?} zp {zp} out_zp {}", r.out_zp);
            }
            if case % 5 < 2 {
                inside += reference.iter().enumerate().filter(|&(i, &v)| v > r.lo[i % c] && v < r.hi[i % c]).count();
                total += n;
            }
            checked += 1;
        }
        assert!(checked > 300);
        // The centred cases mostly unsaturated: their comparisons say something.
        assert!(inside * 2 > total, "{inside} of {total} outputs inside the clamp");
    }

    fn dw_w(kind: &ConvKind) -> Vec<i32> {
        match kind {
            ConvKind::Depthwise(dw) => dw.w.clone(),
            ConvKind::Dense(_) => unreachable!(),
        }
    }

    #[test]
    fn simd_quantisation_of_float_planes_equals_scalar() {
        let mut s = 11u64;
        for isa in Isa::available() {
            for _ in 0..200 {
                let (hw, c) = (1 + lcg(&mut s) as usize % 70, 1 + lcg(&mut s) as usize % 40);
                let scale = (1 + lcg(&mut s) % 1000) as f32 * 1e-4;
                let t = QTensor { c, h: 1, w: hw, scale, zp: lcg(&mut s) as u8 };
                // Ties (k + 0.5 steps), saturating and huge values among ordinary ones.
                let x: Vec<f32> = (0..c * hw)
                    .map(|_| match lcg(&mut s) % 8 {
                        0 => ((lcg(&mut s) % 600) as f32 - 300.0 + 0.5) * scale,
                        1 => (lcg(&mut s) as f32 - 2e9) * 1e3,
                        _ => (lcg(&mut s) as f32 / u32::MAX as f32 - 0.5) * 300.0 * scale,
                    })
                    .collect();
                let (mut a, mut b) = (vec![0u8; c * hw], vec![0u8; c * hw]);
                quantize_nchw_body(&x, &t, &mut a);
                quantize_nchw_to_nhwc(isa, &x, &t, &mut b);
                assert_eq!(a, b, "{} c {c} hw {hw}", isa.name());
            }
        }
    }

    #[test]
    fn simd_depthwise_and_requant_equal_scalar() {
        let mut s = 7u64;
        for isa in Isa::available() {
            for _ in 0..30 {
                let (h, w, c) = (1 + lcg(&mut s) as usize % 13, 1 + lcg(&mut s) as usize % 13, 1 + lcg(&mut s) as usize % 37);
                let stride = [1 + lcg(&mut s) as usize % 2; 2];
                let pad = lcg(&mut s) as usize % 2;
                let Some(g) = ConvGeometry::new(h, w, c, 3, 3, stride, [pad; 4]) else { continue };
                let x: Vec<u8> = (0..h * w * c).map(|_| lcg(&mut s) as u8).collect();
                let wt: Vec<i32> = (0..9 * c).map(|_| lcg(&mut s) as i8 as i32).collect();
                let zp = lcg(&mut s) as u8;
                let n = g.oh * g.ow * c;
                let (mut a, mut b) = (vec![0; n], vec![0; n]);
                depthwise_scalar(&x, &g, zp, &wt, &mut a);
                depthwise(isa, &x, &g, zp, &wt, &mut b);
                assert_eq!(a, b);
                let r = random_requant(&mut s, c);
                let (mut qa, mut qb) = (vec![0u8; n], vec![0u8; n]);
                requantize_body(&a, c, &r, &mut qa);
                requantize(isa, &a, c, &r, &mut qb);
                assert_eq!(qa, qb);
            }
        }
    }
}
