//! Weights packed once, at compile time, for one [`Isa`]: only the layouts that
//! ISA's kernels read (the packing code of each layout lives beside the kernel that
//! reads it), plus the per-channel sums of the zero-point corrections. Running a
//! kernel on weights packed for another ISA panics.
//!
//! | ISA          | dense                                 | depthwise                           | grouped                     |
//! |--------------|---------------------------------------|-------------------------------------|-----------------------------|
//! | scalar       | rows [cout][k]                        | [taps][c] i32                       | [cout][cin_g][taps] i8      |
//! | avx2         | pairs in LH order (`avx2_fused::pack_pairs`) | tap pairs in LH order (`avx2_fused::pack_depthwise_pairs`); [taps][c] i32 for int32 sums | group pairs (`avx2::GroupPairs`, cin_g even); widened depthwise (below) |
//! | avx512vnni   | quads ([`pack_quads`])                | quads, 3x3 columns; [taps][c] i32 for int32 sums | group quads ([`GroupQuads`], cin_g % 4 = 0); widened depthwise |
//! | avx512amx    | quads, and quads in whole tiles (`tiles`) | as avx512vnni                   | as avx512vnni               |
//! | neon         | i16 by lane (`neon::DenseWeights`)    | i16 blocks of 8 (`arm::depthwise_layout`) | widened depthwise     |
//! | neondot      | quads, 128 Σw (`neon::DenseWeights`)  | the same as neon                    | group quads, as VNNI; widened depthwise |
//! | armv7neon    | i16 blocks (`armv7::DenseWeights`)    | i16 blocks of 8 (`arm::depthwise_layout`) | widened depthwise     |
//!
//! "Widened depthwise": a grouped conv is run by the SIMD ISAs as a depthwise conv on
//! a widened copy of its input ([`GroupedWeights::widened`]), so its weights are that
//! depthwise conv's, [`DepthwiseWeights`] of cout channels and kh x (kw cin_g) taps,
//! in the ISA's depthwise layout.

#[cfg(target_arch = "x86_64")]
use super::{amx, avx2, avx512};
use super::{scalar, Isa};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::lined::Lined;

/// Output channels per block of the SIMD layouts.
pub const CBLOCK: usize = 16;

/// Weights of a dense (im2row x weights) product, in the layout the chosen ISA's
/// kernels read.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub k: usize,
    pub cout: usize,
    pub kernel_rows: usize,
    pub row_len: usize,
    /// The implementation these weights are packed for.
    pub isa: Isa,
    /// Σ_k w[c][k], for the zero-point correction.
    sums: Vec<i32>,
    /// Scalar: [cout][k], the reference's layout (empty for the other ISAs).
    pub(crate) rows: Vec<i8>,
    /// AVX2: blocks of 16 output channels, k in pairs: [cout/16][k/2][16][2] as i16.
    #[cfg(target_arch = "x86_64")]
    pub(crate) pairs: Vec<i16>,
    /// AVX2: the requantisation parameters of the layer's first call, in blocks.
    #[cfg(target_arch = "x86_64")]
    pub(super) avx2_params: super::avx2_fused::KeptParams,
    /// VNNI and `sdot`: blocks of 16 output channels, each kernel row in quadruples (zero
    /// padded): [cout/16][kernel_rows][row_len/4][16][4].
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(crate) quads: Lined<i8>,
    /// AMX: the quadruples with each kernel row padded to whole tiles of 64 inputs
    /// ([`amx::row_pitch`]): [cout/16][kernel_rows][pitch/4][16][4], so that every B
    /// tile (16 quadruples of 16 channels) is 1 KiB at a 64-byte stride.
    #[cfg(target_arch = "x86_64")]
    pub(crate) tiles: Lined<i8>,
    /// NEON: i16 weights for `smlal` by lane; `sdot`: 128 Σw for its correction.
    #[cfg(target_arch = "aarch64")]
    pub(crate) neon: super::neon::DenseWeights,
    /// armv7 NEON: i16 weights for `vmlal.s16` by lane.
    #[cfg(target_arch = "arm")]
    pub(crate) armv7: super::armv7::DenseWeights,
}

impl PackedWeights {
    /// `rows`: [cout][k] with k = kernel rows x `row_len` (kh x kw*cin for a conv on
    /// NHWC, one row of cin for pointwise), so that the VNNI and NEON kernels can read
    /// each kernel row straight from the input without im2row. Packed for `isa`.
    pub fn new(isa: Isa, rows: Vec<i8>, cout: usize, kernel_rows: usize, row_len: usize) -> Self {
        let k = kernel_rows * row_len;
        assert_eq!(rows.len(), cout * k);
        let sums = (0..cout).map(|c| rows[c * k..(c + 1) * k].iter().map(|&w| w as i32).sum()).collect();
        #[allow(unused_mut)]
        let mut w = PackedWeights {
            k,
            cout,
            kernel_rows,
            row_len,
            isa,
            sums,
            rows: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            pairs: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            avx2_params: Default::default(),
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            quads: Lined::default(),
            #[cfg(target_arch = "x86_64")]
            tiles: Lined::default(),
            #[cfg(target_arch = "aarch64")]
            neon: super::neon::DenseWeights::default(),
            #[cfg(target_arch = "arm")]
            armv7: super::armv7::DenseWeights::default(),
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => w.pairs = super::avx2_fused::pack_pairs(&rows, cout, k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => w.quads = Lined::from_slice(&pack_quads(&rows, cout, kernel_rows, row_len)),
            #[cfg(target_arch = "x86_64")]
            // Dense products run on tiles where `amx::worth_tiles` says they win
            // (`avx512::dense_tiles` hands them to `amx`), the others on `vpdpbusd`.
            Isa::Avx512Amx => {
                w.quads = Lined::from_slice(&pack_quads(&rows, cout, kernel_rows, row_len));
                w.tiles = Lined::from_slice(&pack_quads_padded(&rows, cout, kernel_rows, row_len, amx::row_pitch(row_len) / 4));
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => w.neon = super::neon::DenseWeights::new(&rows, cout, kernel_rows, row_len),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                w.quads = Lined::from_slice(&pack_quads(&rows, cout, kernel_rows, row_len));
                w.neon = super::neon::DenseWeights::for_dot(&w.sums);
            }
            #[cfg(target_arch = "arm")]
            Isa::Armv7Neon => w.armv7 = super::armv7::DenseWeights::new(&rows, cout, kernel_rows, row_len),
            // The scalar reference (and an ISA of another architecture, which no
            // dispatcher runs: `Isa::checked`).
            _ => w.rows = rows,
        }
        w
    }

    /// Σ_k w[c][k], for the zero-point correction.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }
}

/// Dense weights `rows` ([cout][kernel_rows * row_len]) as quadruples for `vpdpbusd`
/// and `sdot` by element: blocks of 16 output channels, each kernel row's k in
/// quadruples (zero padded): [cout/16][kernel_rows][row_len/4][16][4].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn pack_quads(rows: &[i8], cout: usize, kernel_rows: usize, row_len: usize) -> Vec<i8> {
    pack_quads_padded(rows, cout, kernel_rows, row_len, row_len.div_ceil(4))
}

/// [`pack_quads`] with `q4` (at least row_len / 4, rounded up) quadruples per kernel
/// row, those past the row zero.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn pack_quads_padded(rows: &[i8], cout: usize, kernel_rows: usize, row_len: usize, q4: usize) -> Vec<i8> {
    let k = kernel_rows * row_len;
    assert!(q4 * 4 >= row_len);
    let mut quads = vec![0i8; cout.div_ceil(CBLOCK) * kernel_rows * q4 * CBLOCK * 4];
    for c in 0..cout {
        let (b, lane) = (c / CBLOCK, c % CBLOCK);
        for i in 0..kernel_rows {
            for j in 0..row_len {
                quads[(((b * kernel_rows + i) * q4 + j / 4) * CBLOCK + lane) * 4 + j % 4] = rows[c * k + i * row_len + j];
            }
        }
    }
    quads
}

/// Weights of a depthwise convolution, in the layout the chosen ISA's kernels read.
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    pub taps: usize,
    pub c: usize,
    /// The implementation these weights are packed for.
    pub isa: Isa,
    /// [taps][c] as i32: the scalar and AVX2 layout, and VNNI's for int32 sums
    /// (empty for the ARM ISAs).
    pub(crate) w: Vec<i32>,
    /// Σ_taps w[c], for the zero-point correction when every tap is read.
    pub sums: Vec<i32>,
    /// VNNI: blocks of 16 channels, taps in quadruples (zero padded): [c/16][taps/4][16][4].
    #[cfg(target_arch = "x86_64")]
    pub(crate) quads: Vec<i8>,
    /// AVX2: blocks of 16 channels in `avx2_fused::LH` order, kernel rows in pairs (zero
    /// padded): [c/16][kh/2][kw][16][2] as i16; for an odd kh, again with the rows paired
    /// one row up (`avx2_fused::pack_depthwise_pairs`).
    #[cfg(target_arch = "x86_64")]
    pub(crate) pairs: Vec<i16>,
    /// AVX2: the requantisation parameters of the layer's first call, in blocks.
    #[cfg(target_arch = "x86_64")]
    pub(super) avx2_params: super::avx2_fused::KeptParams,
    /// VNNI, 3x3 kernels (taps = 9): blocks of 16 channels, one register per kernel
    /// column holding its three rows as the bytes of each channel's int32 (zero
    /// padded): [c/16][3][16][4]. Empty for other kernels.
    #[cfg(target_arch = "x86_64")]
    pub(crate) cols: Vec<i8>,
    /// VNNI, 3x3 kernels: the blocks of the layer's first call (`avx512::DwConsts`).
    #[cfg(target_arch = "x86_64")]
    pub(super) dw3x3: super::kept::Kept<avx512::DwConsts>,
    /// NEON: blocks of 8 channels, [c/8][taps][8] as i16 (zero padded).
    #[cfg(target_arch = "aarch64")]
    pub(crate) neon: Vec<i16>,
    /// armv7 NEON: the same layout, [c/8][taps][8] as i16.
    #[cfg(target_arch = "arm")]
    pub(crate) armv7: Vec<i16>,
}

impl DepthwiseWeights {
    /// `w`: [c][taps] as ONNX stores them, taps kh x kw. Packed for `isa`.
    pub fn new(isa: Isa, w: &[i8], c: usize, [kh, kw]: [usize; 2]) -> Self {
        let taps = kh * kw;
        assert_eq!(w.len(), c * taps);
        let sums = (0..c).map(|ch| w[ch * taps..(ch + 1) * taps].iter().map(|&v| v as i32).sum()).collect();
        #[allow(unused_mut)]
        let mut d = DepthwiseWeights {
            taps,
            c,
            isa,
            w: Vec::new(),
            sums,
            #[cfg(target_arch = "x86_64")]
            pairs: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            avx2_params: Default::default(),
            #[cfg(target_arch = "x86_64")]
            quads: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            cols: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            dw3x3: Default::default(),
            #[cfg(target_arch = "aarch64")]
            neon: Vec::new(),
            #[cfg(target_arch = "arm")]
            armv7: Vec::new(),
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                d.w = scalar::pack_depthwise(w, c, taps);
                d.pairs = super::avx2_fused::pack_depthwise_pairs(w, c, kh, kw);
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni | Isa::Avx512Amx => {
                d.w = scalar::pack_depthwise(w, c, taps);
                d.quads = avx512::pack_depthwise_quads(w, c, taps);
                if taps == 9 {
                    d.cols = avx512::depthwise_columns3x3(w, c);
                }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => d.neon = super::arm::depthwise_layout(c, taps, |ch, t| w[ch * taps + t] as i16),
            #[cfg(target_arch = "arm")]
            Isa::Armv7Neon => d.armv7 = super::arm::depthwise_layout(c, taps, |ch, t| w[ch * taps + t] as i16),
            // Scalar (and an ISA of another architecture, which no
            // dispatcher runs: `Isa::checked`).
            _ => d.w = scalar::pack_depthwise(w, c, taps),
        }
        d
    }
}

/// Weights of a grouped 2-D convolution: `cout / cout_g` groups, each reading
/// `cin_g` input channels into `cout_g` output channels (neither dense, group 1, nor
/// depthwise, one channel in and out per group).
///
/// VNNI and `sdot` (cin_g a multiple of 4) and AVX2 (cin_g even) have direct kernels
/// where each block of output channels reads its groups' inputs in one load
/// ([`GroupQuads`], `avx2::GroupPairs`). Otherwise the SIMD ISAs run it as a
/// depthwise conv on a widened input: with xw[y][x cin_g + j][c]
/// = x[y][x][(c / cout_g) cin_g + j] (the zero-point padded input, each pixel repeated
/// as cin_g columns, column j holding, for every output channel, input j of its group),
/// out[p][c] = Σ_{i,k,j} (xw[oy sy + i][(ox sx + k) cin_g + j][c] - zp) w[c][j][i][k]
/// is a depthwise conv with kernel kh x (kw cin_g), stride (sy, sx cin_g), no padding
/// and weights w'[c][i][k cin_g + j] = w[c][j][i][k]: the same integer sums, so the
/// same requantised bits, as the scalar reference's direct loops.
#[derive(Debug, Clone)]
pub struct GroupedWeights {
    /// Input channels per group.
    pub cin_g: usize,
    /// Output channels per group.
    pub cout_g: usize,
    /// Output channels (all groups).
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    /// The implementation these weights are packed for.
    pub isa: Isa,
    /// Scalar: [cout][cin_g][kh][kw] as ONNX stores them (empty for the other ISAs).
    pub(crate) raw: Vec<i8>,
    /// SIMD ISAs: the widened depthwise conv's weights, as `ConvKind::Depthwise`
    /// packed for `isa` (None for scalar).
    pub(crate) widened: Option<Box<ConvKind>>,
    /// VNNI and `sdot`, cin_g a multiple of 4 (and each block's groups within 64
    /// bytes): the direct kernels' quadruples ([`GroupQuads`]), for fused convs (int32
    /// sums take the widened path).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(crate) quads: Option<GroupQuads>,
    /// AVX2, cin_g even (and each block's groups within 16 bytes): the direct
    /// kernel's pairs ([`avx2::GroupPairs`]), for fused convs and int32 sums.
    #[cfg(target_arch = "x86_64")]
    pub(crate) pairs: Option<avx2::GroupPairs>,
}

impl GroupedWeights {
    /// `w`: [cout][cin_g][kh][kw] as ONNX stores them. Packed for `isa`.
    pub fn new(isa: Isa, w: &[i8], cout: usize, cin_g: usize, cout_g: usize, kh: usize, kw: usize) -> Self {
        assert!(cin_g > 0 && cout_g > 0 && cout.is_multiple_of(cout_g), "cout {cout} in groups of {cout_g}");
        assert_eq!(w.len(), cout * cin_g * kh * kw);
        let mut g = GroupedWeights {
            cin_g,
            cout_g,
            cout,
            kh,
            kw,
            isa,
            raw: Vec::new(),
            widened: None,
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            quads: None,
            #[cfg(target_arch = "x86_64")]
            pairs: None,
        };
        if isa == Isa::Scalar {
            g.raw = w.to_vec();
            return g;
        }
        // w'[c][i][k cin_g + j] = w[c][j][i][k]: taps of the widened kernel, row-major.
        let taps = kh * kw * cin_g;
        let mut wide = vec![0i8; cout * taps];
        for c in 0..cout {
            for j in 0..cin_g {
                for i in 0..kh {
                    for k in 0..kw {
                        wide[c * taps + (i * kw + k) * cin_g + j] = w[((c * cin_g + j) * kh + i) * kw + k];
                    }
                }
            }
        }
        g.widened = Some(Box::new(ConvKind::Depthwise(DepthwiseWeights::new(isa, &wide, cout, [kh, kw * cin_g]))));
        #[cfg(target_arch = "x86_64")]
        match isa {
            Isa::Avx512Vnni | Isa::Avx512Amx => g.quads = GroupQuads::new(w, cout, cin_g, cout_g, kh * kw),
            Isa::Avx2 => g.pairs = avx2::GroupPairs::new(w, cout, cin_g, cout_g, kh * kw),
            _ => {}
        }
        #[cfg(target_arch = "aarch64")]
        if isa == Isa::NeonDot {
            g.quads = GroupQuads::new(w, cout, cin_g, cout_g, kh * kw);
        }
        g
    }

    /// Groups.
    pub fn groups(&self) -> usize {
        self.cout / self.cout_g
    }
}

/// Grouped weights for the direct kernels of VNNI (`avx512::conv_grouped`) and `sdot`
/// (`neon::conv_grouped`), cin_g a multiple of 4: for each block of 16 output
/// channels, the first input dword its groups read (`d0`), and per quadruple q
/// of a group's inputs the dword permutation taking a 64-byte load at that dword to
/// each channel's quadruple (`idx`: lane l reads dword (c / cout_g) cin_g / 4 + q - d0,
/// c = 16 b + l; lanes past cout read 0); weights [c/16][taps][cin_g/4][16][4]
/// (zero padded), and Σw per channel for the zero-point correction.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Debug, Clone)]
pub struct GroupQuads {
    pub(crate) cin_g: usize,
    pub(crate) taps: usize,
    pub(crate) d0: Vec<usize>,
    pub(crate) idx: Vec<[u32; 16]>,
    pub(crate) quads: Vec<i8>,
    pub(crate) sums: Vec<i32>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl GroupQuads {
    /// `w` [cout][cin_g][taps] as ONNX stores it; None where cin_g is no multiple of 4
    /// or a block's groups span more than 16 dwords (one 64-byte load).
    pub fn new(w: &[i8], cout: usize, cin_g: usize, cout_g: usize, taps: usize) -> Option<Self> {
        if !cin_g.is_multiple_of(4) || cout == 0 {
            return None;
        }
        let (blocks, q4) = (cout.div_ceil(CBLOCK), cin_g / 4);
        let first = |c: usize| (c / cout_g) * cin_g / 4;
        let mut d0 = Vec::with_capacity(blocks);
        let mut idx = Vec::with_capacity(blocks * q4);
        for b in 0..blocks {
            let (c0, c1) = (b * CBLOCK, ((b + 1) * CBLOCK).min(cout));
            let base = first(c0);
            if first(c1 - 1) + q4 - base > 16 {
                return None;
            }
            d0.push(base);
            for q in 0..q4 {
                idx.push(std::array::from_fn(|l| if c0 + l < c1 { (first(c0 + l) + q - base) as u32 } else { 0 }));
            }
        }
        let mut quads = vec![0i8; blocks * taps * q4 * CBLOCK * 4];
        for c in 0..cout {
            let (b, lane) = (c / CBLOCK, c % CBLOCK);
            for t in 0..taps {
                for j in 0..cin_g {
                    quads[(((b * taps + t) * q4 + j / 4) * CBLOCK + lane) * 4 + j % 4] = w[(c * cin_g + j) * taps + t];
                }
            }
        }
        let sums = (0..cout).map(|c| w[c * cin_g * taps..(c + 1) * cin_g * taps].iter().map(|&v| v as i32).sum()).collect();
        Some(GroupQuads { cin_g, taps, d0, idx, quads, sums })
    }
}

/// A convolution's weights, in the layout of the kernels it was packed for.
#[derive(Debug, Clone)]
pub enum ConvKind {
    Dense(PackedWeights),
    Depthwise(DepthwiseWeights),
    /// 2-D only (the compiler leaves 3-D grouped convs to the float path).
    Grouped(GroupedWeights),
}
