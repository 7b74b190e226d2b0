//! Integer kernels: u8 activations (NHWC) times s8 weights into i32 accumulators,
//! and the requantisation back to u8, one file per architecture:
//!
//! - [`scalar`]: the portable reference, what every machine can run;
//! - `avx2` and `avx512` (x86-64: AVX2, AVX-512 VNNI; `avx2_fused`, AVX2's convolutions
//!   fused with their requantisation; `avx2_padded3`, AVX2's 2-D and 3-D convs of few
//!   input channels with the output voxels in lanes), and `amx` (AMX-INT8 tiles for
//!   the dense convs of CPUs that have them);
//! - `neon` (aarch64: NEON, and `sdot` where the CPU has the dot-product extension);
//! - `armv7` (32-bit ARM NEON, in inline assembly).
//!
//! This module owns the choice between them: [`Isa`] is detected once (the engine's
//! constructor calls [`Isa::detect`]), the weights are packed for it ([`weights`]:
//! only the layout its kernels read), and every dispatch function below is one
//! `match` on it. It also owns what the kernels share: [`ConvGeometry`], [`Requant`],
//! the zero-point padding of inputs, and the routing of grouped convs
//! ([`GroupedWeights`]): the direct kernels of VNNI, `sdot` and AVX2 where the grouping
//! suits them, else each SIMD ISA's depthwise kernel on a widened input built here
//! (the scalar reference loops over the groups directly).
//!
//! Every implementation must give the scalar reference's bits: the arithmetic is
//! integer until requantisation, which is the same sequence of IEEE float operations
//! in all of them. `tests` (with the generators of `testgen`) checks this on random
//! shapes for every implementation the CPU has; `tests/tests/int8_engine.rs` and
//! `tests/tests/int8_models.rs` on whole models.
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
mod arm;
mod bytes;
mod narrow3;
mod padded3;
mod rows2;
pub mod scalar;
mod weights;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "arm")]
mod armv7;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_fused;
#[cfg(target_arch = "x86_64")]
mod avx2_padded3;
#[cfg(target_arch = "x86_64")]
mod avx512;
// Only x86-64's kernels keep constants with their weights so far.
#[cfg(target_arch = "x86_64")]
mod kept;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
pub(crate) mod testgen;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

pub use bytes::{copy_channels, map_bytes, max_groups, ByteMap, Factors, MaxGroups};
pub use narrow3::{Narrow3, NARROW_MAX_COUT};
pub use padded3::{Padded3, VoxelLanes};
pub use rows2::{Rows2, ROWS2_PITCH};
pub use scalar::{im2row, quantize_u8, round_half_even};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub use weights::GroupQuads;
pub use weights::{ConvKind, DepthwiseWeights, GroupedWeights, PackedWeights, CBLOCK};

/// A u8 tensor as the kernels see it: channels last, one scale and zero point. 3-D volumes keep depth x height in `h`
/// (the plan's `shapes` has the NC... shape); the integer ops that care (3-D convs)
/// carry their own geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QTensor {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub scale: f32,
    pub zp: u8,
}

impl QTensor {
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn deq(&self, q: u8) -> f32 {
        (q as i32 - self.zp as i32) as f32 * self.scale
    }

    /// The table taking this tensor's bytes to bytes quantised with (s, z): the
    /// dequantise-then-quantise of a QDQ pair; None where the parameters are the same.
    pub(crate) fn requant_table(&self, s: f32, z: u8) -> Option<Vec<u8>> {
        (self.scale != s || self.zp != z).then(|| (0..=255u8).map(|q| quantize_u8(self.deq(q), s, z)).collect())
    }

    /// The tensor holding a float value of `shape` ([1, C, spatial...], rank 2 to 5).
    pub(crate) fn of_shape(shape: &[usize], scale: f32, zp: u8) -> Option<QTensor> {
        if !(2..=5).contains(&shape.len()) || shape[0] != 1 {
            return None;
        }
        let (h, w) = match shape.len() {
            2 => (1, 1),
            3 => (1, shape[2]),
            _ => (shape[2..shape.len() - 1].iter().product(), shape[shape.len() - 1]),
        };
        Some(QTensor { c: shape[1], h, w, scale, zp })
    }
}

/// Which implementation runs the kernels (chosen once, at engine construction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX-512 with VNNI (`vpdpbusd`): convolutions fused with requantisation.
    Avx512Vnni,
    /// AVX-512 VNNI with AMX-INT8 tiles (`tdpbusd`, Intel Sapphire Rapids and later),
    /// where the OS grants the tile state: dense convolutions on tiles of 16 pixels x
    /// 16 channels x 64 inputs ([`amx`]), everything else as [`Isa::Avx512Vnni`].
    Avx512Amx,
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
    /// avx512amx, neon, neondot, armv7neon) asks for another it also has.
    pub fn detect() -> Isa {
        let available = Isa::supported();
        if let Some(want) = std::env::var("EDGEMED_INT8_ISA").ok().and_then(|v| available.iter().copied().find(|i| i.name() == v)) {
            return want;
        }
        *available.last().expect("scalar is always available")
    }

    /// Every implementation this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::supported().to_vec()
    }

    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        Isa::supported().contains(&self)
    }

    /// [`Isa::available`], probed once.
    fn supported() -> &'static [Isa] {
        static SUPPORTED: OnceLock<Vec<Isa>> = OnceLock::new();
        SUPPORTED.get_or_init(|| {
            #[allow(unused_mut)]
            let mut v = vec![Isa::Scalar];
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") {
                    v.push(Isa::Avx2);
                }
                if avx512::available() {
                    v.push(Isa::Avx512Vnni);
                    if amx::available() {
                        v.push(Isa::Avx512Amx);
                    }
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                // NEON is part of the aarch64 baseline.
                v.push(Isa::Neon);
                if neon::has_dotprod() {
                    v.push(Isa::NeonDot);
                }
            }
            #[cfg(target_arch = "arm")]
            if armv7::has_neon() {
                v.push(Isa::Armv7Neon);
            }
            v
        })
    }

    /// Whether this ISA runs the AVX-512 VNNI kernels (AMX adds tiles for dense convs
    /// to them): the layouts only those kernels read are open to it.
    pub fn has_avx512_vnni(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::Avx512Amx)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx512Amx => "avx512amx",
            Isa::Neon => "neon",
            Isa::NeonDot => "neondot",
            Isa::Armv7Neon => "armv7neon",
        }
    }

    /// `self`, after checking that this CPU runs it: what makes the dispatchers'
    /// calls of the `unsafe` x86 kernels sound (their target features were detected)
    /// for any `Isa` a caller passes. One cached lookup per kernel call.
    #[inline]
    fn checked(self) -> Isa {
        assert!(self.is_available(), "the {} kernels need CPU features this CPU lacks", self.name());
        self
    }
}

/// Panics for an `Isa` of another architecture (never reached: [`Isa::checked`]
/// only passes this CPU's).
#[cold]
fn foreign(isa: Isa) -> ! {
    unreachable!("{} kernels on {}", isa.name(), std::env::consts::ARCH)
}

/// Sizes of a 3-D convolution (a transposed one: input and output swap roles in the
/// index arithmetic, o = i * stride - pad + tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry3 {
    pub input: [usize; 3],
    pub cin: usize,
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    /// Padding before each axis (the output sizes fix the rest).
    pub pads: [usize; 3],
    pub output: [usize; 3],
}

impl Geometry3 {
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
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

/// Per-channel requantisation parameters of one convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    /// Subtracted from the accumulator (input zero point x Σw; 0 for depthwise and grouped, which correct in the loop).
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

impl Requant {
    /// Whether every parameter vector holds at least `n` channels (what the SIMD
    /// kernels, which read them in whole vectors, check first).
    pub fn covers(&self, n: usize) -> bool {
        [self.offset.len(), self.mult.len(), self.bias.len(), self.lo.len(), self.hi.len()].iter().all(|&len| len >= n)
    }

    /// Whether `other` holds the same parameters bit for bit: then constants a kernel
    /// made from one serve the other (x86-64's `kept::Kept`). The float vectors are compared
    /// as bytes (one `memcmp` each: `==` on `[f32]` is a scalar loop, and -0.0 == 0.0
    /// would let constants of another sign's zero through).
    pub fn same_bits(&self, other: &Requant) -> bool {
        use bytemuck::cast_slice;
        self.offset == other.offset
            && cast_slice::<f32, u8>(&self.mult) == cast_slice::<f32, u8>(&other.mult)
            && cast_slice::<f32, u8>(&self.bias) == cast_slice::<f32, u8>(&other.bias)
            && self.out_zp.to_bits() == other.out_zp.to_bits()
            && self.lo == other.lo
            && self.hi == other.hi
    }
}

/// Pixels per tile of the kernel that runs a pointwise conv of `kind`, each tile
/// costing the same however many of its pixels are real: where a pointwise conv is cut
/// into parts ([`crate::split::conv_parts`]), at multiples of it. AVX2's dense kernel
/// takes 6 pixels a tile (its narrow one, and the others, 4 or a multiple of 4).
pub fn pixel_tile(kind: &ConvKind) -> usize {
    match kind {
        #[cfg(target_arch = "x86_64")]
        ConvKind::Dense(w) if w.isa == Isa::Avx2 && !avx2_fused::narrow_applies(w.cout, w.k) => avx2_fused::MR,
        _ => crate::split::PIXEL_ALIGN,
    }
}

/// Bytes of scratch [`conv`] needs for `g`: im2row rows (scalar, AVX2) or a padded
/// copy of the input (VNNI, NEON, armv7 NEON).
pub fn conv_scratch_len(g: &ConvGeometry, kind: &ConvKind) -> usize {
    if let ConvKind::Grouped(w) = kind {
        // The widened input with its slack, then the depthwise kernel's own scratch;
        // the scalar reference reads the input in place.
        return match &w.widened {
            Some(inner) => {
                let gw = widened_geometry(g, w);
                // VNNI's direct kernel pads the input into scratch.
                let padded = (g.h + g.pads[0] + g.pads[2]) * (g.w + g.pads[1] + g.pads[3]) * g.cin;
                (gw.h * gw.w * gw.cin + WIDE_SLACK + conv_scratch_len(&gw, inner)).max(padded)
            }
            None => 0,
        };
    }
    let im2row = match kind {
        ConvKind::Dense(_) if !g.is_pointwise() => g.oh * g.ow * g.kh * g.kw * g.cin,
        _ => 0,
    };
    let padded = if g.pads == [0; 4] { 0 } else { (g.h + g.pads[0] + g.pads[2]) * (g.w + g.pads[1] + g.pads[3]) * g.cin };
    // The VNNI 3x3 depthwise kernel reads a row of zero points for rows of padding.
    let zp_row = if g.pads[0] + g.pads[2] > 0 { g.w * g.cin + 16 } else { 0 };
    im2row.max(padded).max(zp_row)
}

/// Checks that `kind`'s weights were packed for `isa` (each ISA's packing builds only
/// the layout its kernels read).
fn check_packed(isa: Isa, kind: &ConvKind) {
    let packed = match kind {
        ConvKind::Dense(w) => w.isa,
        ConvKind::Depthwise(w) => w.isa,
        ConvKind::Grouped(w) => w.isa,
    };
    assert_eq!(packed, isa, "weights packed for {} run on {}", packed.name(), isa.name());
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
    check_packed(isa, kind);
    if let ConvKind::Grouped(w) = kind {
        // VNNI and `sdot` with groups of 4k inputs: the direct kernels.
        #[cfg(target_arch = "x86_64")]
        if let (Isa::Avx512Vnni | Isa::Avx512Amx, Some(q)) = (isa.checked(), &w.quads) {
            // SAFETY: `checked` confirmed AVX-512 VNNI on this CPU.
            unsafe { avx512::conv_grouped(x, g, zp, q, r, scratch, out) };
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if let (Isa::NeonDot, Some(q)) = (isa.checked(), &w.quads) {
            return neon::conv_grouped(x, g, zp, q, r, scratch, out);
        }
        #[cfg(target_arch = "x86_64")]
        if let (Isa::Avx2, Some(p)) = (isa.checked(), &w.pairs) {
            let n = g.oh * g.ow * w.cout;
            // SAFETY: `checked` confirmed AVX2 on this CPU.
            unsafe {
                avx2::grouped_sums(x, g, zp, p, scratch, acc);
                avx2::requantize(&acc[..n], w.cout, r, out);
            }
            return;
        }
        // Any other on a SIMD ISA: its depthwise kernel on the widened input.
        if let Some(inner) = &w.widened {
            let (wide, gw, rest) = widen(x, g, zp, w, scratch);
            return conv(isa, wide, &gw, zp, inner, r, rest, acc, out);
        }
    }
    match isa.checked() {
        Isa::Scalar => scalar::conv(x, g, zp, kind, r, scratch, acc, out),
        // SAFETY: `checked` confirmed AVX2 on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::conv(x, g, zp, kind, r, scratch, acc, out) },
        // SAFETY: `checked` confirmed AVX-512 VNNI (with AVX2) on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx512::conv(x, g, zp, kind, r, scratch, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::conv(isa == Isa::NeonDot, x, g, zp, kind, r, scratch, out),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => armv7::conv(x, g, zp, kind, r, scratch, acc, out),
        #[allow(unreachable_patterns)]
        other => foreign(other),
    }
}

/// A narrow 3-D conv ([`Narrow3`]) on its padded planes, outputs `voxels`: requantised
/// into `out` with the requantisation given, else the raw sums into `acc`. Only
/// AVX-512 VNNI has the kernel, and the compiler picks this layout for it alone.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn conv3d_narrow(
    isa: Isa,
    planar: &[u8],
    n: &Narrow3,
    voxels: std::ops::Range<usize>,
    requant: Option<(&Requant, &mut [u8])>,
    acc: &mut [i32],
) {
    match isa.checked() {
        // SAFETY: `checked` confirmed AVX-512 VNNI (with VBMI) on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx512::conv3d_narrow(planar, n, voxels, requant, acc) },
        other => unreachable!("a narrow 3-D conv compiled for {}: the compiler picks it for AVX-512 VNNI only", other.name()),
    }
}

/// A 3-D dense conv ([`Padded3`]) on its padded input, outputs `voxels`: requantised
/// into `out` when given, else the int32 sums (carrying zp Σw, as dense sums do) in
/// `acc`; both from the start of their slices. AVX-512 VNNI has a kernel for any such
/// conv, AVX2 one for those with voxels in lanes ([`Padded3::lanes`]); the compiler
/// picks this layout for them alone.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn conv3d_padded(
    isa: Isa,
    padded: &[u8],
    p: &Padded3,
    w: &ConvKind,
    voxels: std::ops::Range<usize>,
    requant: Option<(&Requant, &mut [u8])>,
    acc: &mut [i32],
) {
    check_packed(isa, w);
    let ConvKind::Dense(w) = w else { unreachable!("a padded 3-D conv is dense") };
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => {
            let out = match requant {
                Some((r, o)) => avx512::DenseOut::U8(r, o),
                None => avx512::DenseOut::I32(acc),
            };
            // SAFETY: `checked` confirmed AVX-512 VNNI on this CPU.
            unsafe { avx512::conv3d_dense(padded, &p.g, p.padded, w, voxels, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if p.lanes.is_some() => {
            let n = voxels.len() * w.cout;
            // SAFETY: `checked` confirmed AVX2 on this CPU.
            unsafe { avx2_padded3::conv3d(padded, p, voxels, acc) };
            if let Some((r, o)) = requant {
                requantize(isa, &acc[..n], w.cout, r, &mut o[..n]);
            }
        }
        other => unreachable!(
            "a padded 3-D conv compiled for {}: the compiler picks it for AVX-512 VNNI and AVX2 (voxels in lanes) only",
            other.name()
        ),
    }
}

/// The int32 sums of a convolution, acc[p][c] = Σ (x - zp) w, zero-point corrected
/// for depthwise and grouped but not for dense (whose correction is `zp * Σw`, done by the caller).
pub fn accumulate(isa: Isa, x: &[u8], g: &ConvGeometry, zp: u8, kind: &ConvKind, scratch: &mut [u8], acc: &mut [i32]) {
    check_packed(isa, kind);
    // Grouped on AVX2 with small even groups: its direct kernel.
    #[cfg(target_arch = "x86_64")]
    if let (ConvKind::Grouped(GroupedWeights { pairs: Some(p), .. }), Isa::Avx2) = (kind, isa.checked()) {
        // SAFETY: `checked` confirmed AVX2 on this CPU.
        return unsafe { avx2::grouped_sums(x, g, zp, p, scratch, acc) };
    }
    // Grouped on a SIMD ISA: its depthwise kernel on the widened input.
    if let ConvKind::Grouped(GroupedWeights { widened: Some(inner), .. }) = kind {
        let ConvKind::Grouped(w) = kind else { unreachable!() };
        let (wide, gw, rest) = widen(x, g, zp, w, scratch);
        return accumulate(isa, wide, &gw, zp, inner, rest, acc);
    }
    match isa.checked() {
        Isa::Scalar => scalar::accumulate(x, g, zp, kind, scratch, acc),
        // SAFETY: `checked` confirmed AVX2 on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::accumulate(x, g, zp, kind, scratch, acc) },
        // SAFETY: `checked` confirmed AVX-512 VNNI (with AVX2) on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx512::accumulate(x, g, zp, kind, scratch, acc) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::accumulate(isa == Isa::NeonDot, x, g, zp, kind, scratch, acc),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => armv7::accumulate(x, g, zp, kind, scratch, acc),
        #[allow(unreachable_patterns)]
        other => foreign(other),
    }
}

/// acc[p][c] = Σ_k x[p][k] w[c][k] for `p` rows of `x` (row stride `k`, no slack needed).
pub fn gemm(isa: Isa, x: &[u8], pixels: usize, w: &PackedWeights, acc: &mut [i32]) {
    assert!(x.len() >= pixels * w.k && acc.len() >= pixels * w.cout);
    assert_eq!(w.isa, isa, "weights packed for {} run on {}", w.isa.name(), isa.name());
    match isa.checked() {
        Isa::Scalar => scalar::gemm(x, pixels, w, acc),
        // SAFETY: `checked` confirmed AVX2 on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::gemm(x, pixels, w, acc) },
        // SAFETY: `checked` confirmed AVX-512 VNNI on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx512::gemm(x, pixels, w, acc) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::gemm(isa == Isa::NeonDot, x, pixels, w, acc),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => armv7::gemm(x, pixels, w, acc),
        #[allow(unreachable_patterns)]
        other => foreign(other),
    }
}

/// Depthwise convolution: acc[p][c] = Σ_taps (x - zp) w[tap][c], padding contributing 0.
/// `w` is [kh * kw][c] as i32 (the scalar layout, whatever the ISA).
pub fn depthwise(isa: Isa, x: &[u8], g: &ConvGeometry, zp: u8, w: &[i32], acc: &mut [i32]) {
    match isa.checked() {
        Isa::Scalar => scalar::depthwise(x, g, zp, w, acc),
        // SAFETY: `checked` confirmed AVX2 on this CPU (AVX-512 VNNI CPUs have it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx2::depthwise(x, g, zp, w, acc) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::depthwise(x, g, zp, w, acc),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => armv7::depthwise(x, g, zp, w, acc),
        #[allow(unreachable_patterns)]
        other => foreign(other),
    }
}

/// y = clamp(round_half_even((acc - offset) m + b) + z_y) with m = s_x s_w / s_y and
/// b = bias / s_y: DequantizeLinear -> Conv -> QuantizeLinear on the exact integer sum,
/// with the scales combined beforehand as ONNX Runtime's fused kernels do (a product
/// instead of a division, which may round differently by one step in rare cases).
pub fn requantize(isa: Isa, acc: &[i32], cout: usize, r: &Requant, out: &mut [u8]) {
    match isa.checked() {
        Isa::Scalar => scalar::requantize(acc, cout, r, out),
        // SAFETY: `checked` confirmed AVX-512 (and the kernel takes this channel count).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx if avx512::requantize_applies(cout) => unsafe { avx512::requantize(acc, cout, r, out) },
        // SAFETY: `checked` confirmed AVX2 on this CPU (AVX-512 VNNI CPUs have it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx2::requantize(acc, cout, r, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::requantize(acc, cout, r, out),
        #[cfg(target_arch = "arm")]
        Isa::Armv7Neon => armv7::requantize(acc, cout, r, out),
        #[allow(unreachable_patterns)]
        other => foreign(other),
    }
}

/// A PReLU after a requantisation ([`crate::plan::ConvNormOp::slopes`]): `pos` clamped
/// to [z, hi] and `neg` (the same values times the slopes) to [lo, z], so one of the two
/// is z for every value and y = pos + neg - z. Each side is [`requantize`] on this ISA
/// (so the bits are the same on every ISA), in chunks that fit on the stack.
pub fn requantize_two_sided(isa: Isa, acc: &[i32], cout: usize, pos: &Requant, neg: &Requant, z: u8, out: &mut [u8]) {
    const CHUNK: usize = 8192;
    let cout = cout.max(1);
    #[cfg(target_arch = "x86_64")]
    if isa.checked() == Isa::Avx2 && 8 % cout == 0 {
        // SAFETY: `checked` confirmed AVX2 on this CPU; the same float operations as
        // `requantize` on each side, in one pass (the AVX-512 ISAs keep their own
        // 16-lane requantisation, twice).
        return unsafe { avx2::requantize_sides(acc, cout, (pos, Some((neg, z))), out) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.checked() == Isa::Avx2 && cout.is_multiple_of(8) && cout <= avx2::BLOCK_CHANNELS {
        // SAFETY: as above; cout is a multiple of 8 up to BLOCK_CHANNELS.
        return unsafe { avx2::requantize_blocks(acc, cout, (pos, Some((neg, z))), out) };
    }
    let pixels = (CHUNK / cout).max(1);
    let mut side = [0u8; CHUNK];
    for (acc, out) in acc.chunks(pixels * cout).zip(out.chunks_mut(pixels * cout)) {
        if acc.len() > CHUNK {
            // More channels than a chunk holds: the negative side on the heap.
            let mut side = vec![0u8; acc.len()];
            two_sides(isa, acc, cout, pos, neg, z, out, &mut side);
        } else {
            two_sides(isa, acc, cout, pos, neg, z, out, &mut side[..acc.len()]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn two_sides(isa: Isa, acc: &[i32], cout: usize, pos: &Requant, neg: &Requant, z: u8, out: &mut [u8], side: &mut [u8]) {
    requantize(isa, acc, cout, pos, out);
    requantize(isa, acc, cout, neg, side);
    // pos >= z >= neg, and one of them is z: the sum stays in 0..=255.
    for (o, s) in out.iter_mut().zip(side.iter()) {
        *o = o.wrapping_add(*s).wrapping_sub(z);
    }
}

/// The model input: float NCHW quantised (ONNX QuantizeLinear) into u8 NHWC; channel c's
/// floats start at `x[c * stride]` (see [`scalar::quantize_nchw_to_nhwc`]). Returns
/// whether every value read was finite: quantisation would map NaN silently near the
/// zero point, so the caller refuses the bytes where it was not. The x86 kernels
/// (AVX-512, AVX2) test each value as they quantise it (a separate pass over the floats
/// took 18 of the 46 us of MobileNetV2's 224x224x3 input on AVX-512); the ARM ones and
/// the reference check the planes first.
#[must_use]
pub fn quantize_nchw_to_nhwc(isa: Isa, x: &[f32], stride: usize, t: &QTensor, out: &mut [u8]) -> bool {
    let isa = isa.checked();
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512Vnni | Isa::Avx512Amx) {
        // SAFETY: `checked` confirmed AVX-512 VNNI (with AVX2) on this CPU.
        return unsafe { avx512::quantize_nchw_to_nhwc(x, stride, t, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: `checked` confirmed AVX2 on this CPU. It tests the values as it goes.
        return unsafe { avx2::quantize_nchw_to_nhwc(x, stride, t, out) };
    }
    let finite = (0..t.c).all(|c| all_finite(isa, &x[c * stride..c * stride + t.h * t.w]));
    match isa {
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::quantize_nchw_to_nhwc(x, stride, t, out),
        // armv7: the portable loop.
        _ => scalar::quantize_nchw_to_nhwc(x, stride, t, out),
    }
    finite
}

/// DequantizeLinear of channels-last bytes into one row of floats per channel, plus
/// that of `b` when given ([`scalar::dequantize_rows`]): a float value's planes.
pub fn dequantize_rows(isa: Isa, a: &[u8], ta: &QTensor, b: Option<(&[u8], &QTensor)>, rows: &mut [&mut [f32]]) {
    match isa.checked() {
        // SAFETY: `checked` confirmed AVX2 on this CPU (AVX-512 VNNI CPUs have it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx2::dequantize_rows(a, ta, b, rows) },
        _ => scalar::dequantize_rows(a, ta, b, rows),
    }
}

/// QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b)), element-wise, with
/// the float operations of the QDQ graph, clamped to `bounds` (the activation after
/// the add on the output's grid; `[0, 255]` for none).
#[allow(clippy::too_many_arguments)]
pub fn add_quantized(isa: Isa, a: &[u8], ta: &QTensor, b: &[u8], tb: &QTensor, to: &QTensor, bounds: [u8; 2], out: &mut [u8]) {
    match isa.checked() {
        // SAFETY: `checked` confirmed AVX2 on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::add_quantized(a, ta, b, tb, to, bounds, out) },
        // SAFETY: `checked` confirmed AVX-512 F/BW/VL on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx512::add_quantized(a, ta, b, tb, to, bounds, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::add_quantized(a, ta, b, tb, to, bounds, out),
        // armv7: the portable loop.
        _ => scalar::add_quantized(a, ta, b, tb, to, bounds, out),
    }
}

/// [`scalar::all_finite`]: whether no value is NaN or infinite (the model input
/// before quantisation, which would map NaN silently onto the zero point's bytes).
pub fn all_finite(isa: Isa, x: &[f32]) -> bool {
    match isa.checked() {
        // SAFETY: `checked` confirmed AVX2 on this CPU (AVX-512 VNNI CPUs have it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx2::all_finite(x) },
        _ => scalar::all_finite(x),
    }
}

/// [`scalar::mean_pool`]: a global average pool, `sums` its t.c channels' scratch.
pub fn mean_pool(isa: Isa, x: &[u8], t: &QTensor, to: &QTensor, sums: &mut [i32], out: &mut [u8]) {
    match isa.checked() {
        // SAFETY: `checked` confirmed AVX2 on this CPU (AVX-512 VNNI CPUs have it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx2::mean_pool(x, t, to, sums, out) },
        _ => scalar::mean_pool(x, t, to, sums, out),
    }
}

/// [`scalar::moment_sums`]: exact integer sums and sums of squares per slot.
pub fn moment_sums(isa: Isa, values: &[i32], s: &mut [i64], q: &mut [i64]) {
    match isa.checked() {
        // SAFETY: `checked` confirmed AVX2 on this CPU (AVX-512 VNNI CPUs have it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { avx2::moment_sums(values, s, q) },
        _ => scalar::moment_sums(values, s, q),
    }
}

/// The input with its padding materialised as the zero point (every tap is then
/// read, and the correction zp * Σw is exact for border pixels too), and the
/// geometry on it.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")), allow(dead_code))]
fn padded_input<'a>(x: &'a [u8], g: &ConvGeometry, zp: u8, scratch: &'a mut [u8]) -> (&'a [u8], ConvGeometry) {
    if g.pads == [0; 4] {
        return (x, *g);
    }
    let (hp, wp) = pad_nhwc(x, g.h, g.w, g.cin, g.pads, zp, scratch);
    (&*scratch, ConvGeometry { h: hp, w: wp, pads: [0; 4], ..*g })
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

/// Bytes past the widened input of a grouped conv (the slack the `conv` contract
/// promises its input), filled with the zero point.
const WIDE_SLACK: usize = 64;

/// The depthwise conv a grouped conv `g` is on its widened input (see
/// [`GroupedWeights`]): the zero-point padded input's height, its width times cin_g
/// columns of cout channels; kernel kh x (kw cin_g), stride (sy, sx cin_g), no padding.
/// Its output has `g`'s pixels: (wp cin_g - kw cin_g) / (sx cin_g) = (wp - kw) / sx.
fn widened_geometry(g: &ConvGeometry, w: &GroupedWeights) -> ConvGeometry {
    let (hp, wp) = (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3]);
    let gw = ConvGeometry::new(hp, wp * w.cin_g, w.cout, g.kh, g.kw * w.cin_g, [g.stride[0], g.stride[1] * w.cin_g], [0; 4])
        .expect("a valid conv's widened geometry is valid");
    debug_assert_eq!((gw.oh, gw.ow), (g.oh, g.ow));
    gw
}

/// Writes the widened input of grouped conv `g` at the start of `scratch`:
/// xw[y][x cin_g + j][c] = x[y][x][(c / cout_g) cin_g + j] on the zero-point padded
/// input, then WIDE_SLACK bytes of zero point. Returns it, its geometry and the rest
/// of `scratch` (the depthwise kernel's).
fn widen<'a>(x: &[u8], g: &ConvGeometry, zp: u8, w: &GroupedWeights, scratch: &'a mut [u8]) -> (&'a [u8], ConvGeometry, &'a mut [u8]) {
    let gw = widened_geometry(g, w);
    let (cin_g, cout_g, cout) = (w.cin_g, w.cout_g, w.cout);
    assert!(w.kh == g.kh && w.kw == g.kw && w.groups() * cin_g == g.cin, "grouped weights for another geometry");
    let len = gw.h * gw.w * gw.cin;
    assert!(scratch.len() >= len + WIDE_SLACK, "scratch too short for the widened input");
    assert!(x.len() >= g.h * g.w * g.cin);
    let (wide, rest) = scratch.split_at_mut(len + WIDE_SLACK);
    // One padded input pixel: cin_g columns of cout bytes, dst[t] = src[from[t]].
    let per_pixel = cin_g * cout;
    let from: Vec<u32> = (0..per_pixel).map(|t| (((t % cout) / cout_g) * cin_g + t / cout) as u32).collect();
    let wp = g.w + g.pads[1] + g.pads[3];
    for (y, row) in wide[..len].chunks_exact_mut(wp * per_pixel).enumerate() {
        let iy = y.wrapping_sub(g.pads[0]);
        for (xx, dst) in row.chunks_exact_mut(per_pixel).enumerate() {
            let ix = xx.wrapping_sub(g.pads[1]);
            if iy >= g.h || ix >= g.w {
                dst.fill(zp);
                continue;
            }
            let src = &x[(iy * g.w + ix) * g.cin..(iy * g.w + ix + 1) * g.cin];
            for (d, &f) in dst.iter_mut().zip(&from) {
                *d = src[f as usize];
            }
        }
    }
    wide[len..].fill(zp);
    (&*wide, gw, rest)
}
