//! Test-only generators shared by every kernel family's property tests (`tests.rs`,
//! and the architecture files' own tests): one seeded LCG, random convolution cases
//! (geometry, input, zero point, raw weights with extreme values; dense and
//! depthwise, or grouped) and random
//! requantisation parameters. The weights come raw, as the compiler hands them to the
//! packing, so that each case is packed once per ISA under test.

use super::ConvKind;
use super::{ConvGeometry, DepthwiseWeights, GroupedWeights, Isa, PackedWeights, Requant};

/// A seeded linear congruential generator (Knuth's MMIX constants), upper 31 bits.
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed)
    }

    pub fn u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        self.u32() as usize % n
    }

    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len())]
    }

    pub fn u8(&mut self) -> u8 {
        self.u32() as u8
    }

    pub fn i8(&mut self) -> i8 {
        self.u32() as i8
    }

    pub fn coin(&mut self) -> bool {
        self.u32().is_multiple_of(2)
    }
}

/// The shapes [`conv_case`] draws from.
pub struct ConvSpec {
    /// Input height and width: 1..=max_hw each.
    pub max_hw: usize,
    /// Input (and dense output) channels: 1..=max_c.
    pub max_c: usize,
    /// Kernel heights to pick from.
    pub kh: &'static [usize],
    /// Kernel widths to pick from; `None`: square kernels.
    pub kw: Option<&'static [usize]>,
    /// Strides: 1..=max_stride in each direction.
    pub max_stride: usize,
    /// Every `extreme_every`-th weight is -128 (255 x -128 everywhere would overflow
    /// 16-bit pair sums).
    pub extreme_every: usize,
}

/// A random convolution, dense or depthwise (half each).
#[derive(Debug, Clone)]
pub struct ConvCase {
    pub depthwise: bool,
    pub g: ConvGeometry,
    pub cout: usize,
    /// NHWC input with 64 bytes of slack past its data (as the engine's buffers have).
    pub x: Vec<u8>,
    pub zp: u8,
    /// Dense: rows [cout][kh][kw][cin]; depthwise: [c][kh * kw].
    pub w: Vec<i8>,
}

impl ConvCase {
    /// The weights packed for `isa`.
    pub fn kind(&self, isa: Isa) -> ConvKind {
        let g = &self.g;
        if self.depthwise {
            ConvKind::Depthwise(DepthwiseWeights::new(isa, &self.w, g.cin, [g.kh, g.kw]))
        } else {
            ConvKind::Dense(PackedWeights::new(isa, self.w.clone(), self.cout, g.kh, g.kw * g.cin))
        }
    }

    /// Output values: pixels x cout.
    pub fn outputs(&self) -> usize {
        self.g.oh * self.g.ow * self.cout
    }
}

/// Pads per side: 0..=k/2 of that side's kernel size.
pub fn conv_case(s: &mut Lcg, spec: &ConvSpec) -> Option<ConvCase> {
    let depthwise = s.coin();
    let (h, w) = (1 + s.below(spec.max_hw), 1 + s.below(spec.max_hw));
    let cin = 1 + s.below(spec.max_c);
    let cout = if depthwise { cin } else { 1 + s.below(spec.max_c) };
    let kh = s.pick(spec.kh);
    let kw = spec.kw.map_or(kh, |k| s.pick(k));
    let stride = [1 + s.below(spec.max_stride), 1 + s.below(spec.max_stride)];
    let pads: [usize; 4] = std::array::from_fn(|i| s.below([kh, kw][i % 2] / 2 + 1));
    let g = ConvGeometry::new(h, w, cin, kh, kw, stride, pads)?;
    let x: Vec<u8> = (0..h * w * cin + 64).map(|_| s.u8()).collect();
    let zp = s.u8();
    let n = if depthwise { cin * kh * kw } else { cout * kh * kw * cin };
    let w: Vec<i8> = (0..n).map(|i| if i % spec.extreme_every == 0 { -128 } else { s.i8() }).collect();
    Some(ConvCase { depthwise, g, cout, x, zp, w })
}

/// A random grouped 2-D convolution.
#[derive(Debug, Clone)]
pub struct GroupedCase {
    pub g: ConvGeometry,
    pub cin_g: usize,
    pub cout_g: usize,
    pub groups: usize,
    /// NHWC input (groups x cin_g channels) with 64 bytes of slack past its data.
    pub x: Vec<u8>,
    pub zp: u8,
    /// [cout][cin_g][kh][kw], as ONNX stores them.
    pub w: Vec<i8>,
}

impl GroupedCase {
    pub fn cout(&self) -> usize {
        self.groups * self.cout_g
    }

    /// The weights packed for `isa`.
    pub fn kind(&self, isa: Isa) -> ConvKind {
        ConvKind::Grouped(GroupedWeights::new(isa, &self.w, self.cout(), self.cin_g, self.cout_g, self.g.kh, self.g.kw))
    }

    /// Output values: pixels x cout.
    pub fn outputs(&self) -> usize {
        self.g.oh * self.g.ow * self.cout()
    }
}

/// Channels per group: the escnn regular fields' 4, 8, 12, the extremes 1, 2, 16, or
/// anything in 1..=16; outputs per group the same as inputs (half the cases), twice
/// (a quarter) or anything in 1..=16. Kernels 1, 3 or 5 (square but one case in four),
/// strides 1 or 2 each way, pads 0..=k/2 per side, 1..=max_groups groups.
pub fn grouped_case(s: &mut Lcg, max_hw: usize, max_groups: usize) -> Option<GroupedCase> {
    let cin_g = if s.coin() { s.pick(&[1, 2, 4, 8, 12, 16]) } else { 1 + s.below(16) };
    let cout_g = match s.below(4) {
        0 | 1 => cin_g,
        2 => 2 * cin_g,
        _ => 1 + s.below(16),
    };
    let groups = 1 + s.below(max_groups);
    let (h, w) = (1 + s.below(max_hw), 1 + s.below(max_hw));
    let kh = s.pick(&[1, 3, 3, 5]);
    let kw = if s.below(4) == 0 { s.pick(&[1, 3, 5]) } else { kh };
    let stride = [1 + s.below(2), 1 + s.below(2)];
    let pads: [usize; 4] = std::array::from_fn(|i| s.below([kh, kw][i % 2] / 2 + 1));
    let cin = groups * cin_g;
    let g = ConvGeometry::new(h, w, cin, kh, kw, stride, pads)?;
    let extreme = s.below(4);
    let x: Vec<u8> = (0..h * w * cin + 64).map(|i| if extreme == 0 && i % 3 == 0 { 255 } else { s.u8() }).collect();
    let zp = match s.below(4) {
        0 => 0,
        1 => 255,
        _ => s.u8(),
    };
    let n = groups * cout_g * cin_g * kh * kw;
    let w: Vec<i8> = (0..n).map(|i| if extreme < 2 && i % 5 == 0 { -128 } else { s.i8() }).collect();
    Some(GroupedCase { g, cin_g, cout_g, groups, x, zp, w })
}

/// Requantisation parameters of `c` channels: offsets anywhere in i16, multipliers
/// 2e-5..0.02, biases -50..50, any output zero point, clamps near 0 and 255.
pub fn random_requant(s: &mut Lcg, c: usize) -> Requant {
    let lo = s.u8() % 20;
    Requant {
        offset: (0..c).map(|_| s.u32() as i16 as i32).collect(),
        mult: (0..c).map(|_| (1 + s.u32() % 1000) as f32 * 2e-5).collect(),
        bias: (0..c).map(|_| (s.u32() % 200) as f32 * 0.5 - 50.0).collect(),
        out_zp: (s.u32() % 256) as f32,
        lo: vec![lo; c],
        hi: (0..c).map(|_| 235 + s.u8() % 21).collect(),
    }
}
