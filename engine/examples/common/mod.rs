//! What the kernel-timing examples share: their pseudo-random inputs, a requantisation,
//! and the timing of one conv on one kernel set (best of 5 batches of calls).

use edgemed_engine::kernels::{conv, conv_scratch_len, ConvGeometry, ConvKind, Isa, Requant};

/// Bytes of a fixed linear congruential sequence, one stream per call: the inputs and
/// weights of a timing run, the same on every run.
pub struct Bytes(u32);

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes(12345)
    }
}

impl Bytes {
    pub fn next(&mut self) -> u8 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (self.0 >> 16) as u8
    }

    pub fn take(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// A requantisation of `c` channels that keeps most outputs off the clamps.
pub fn requant(c: usize) -> Requant {
    Requant { offset: vec![0; c], mult: vec![1e-3; c], bias: vec![-20.0; c], out_zp: 3.0, lo: vec![3; c], hi: vec![255; c] }
}

/// Seconds per call of the conv `g` with weights `kind` (packed for `isa`) on `x`
/// (with its 64 bytes of slack): the best of 5 batches of about `budget` MACs each (at
/// least 20 calls, at most 20,000).
pub fn seconds_per_conv(isa: Isa, x: &[u8], g: &ConvGeometry, kind: &ConvKind, r: &Requant, macs: f64, budget: f64) -> f64 {
    let cout = match kind {
        ConvKind::Dense(w) => w.cout,
        ConvKind::Depthwise(w) => w.c,
        ConvKind::Grouped(w) => w.cout,
    };
    let outputs = g.oh * g.ow * cout;
    let (mut scratch, mut acc, mut out) = (vec![0u8; conv_scratch_len(g, kind) + 64], vec![0; outputs], vec![0u8; outputs]);
    let reps = (budget / macs).clamp(20.0, 20_000.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            conv(isa, x, g, 128, kind, r, &mut scratch, &mut acc, &mut out);
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}
