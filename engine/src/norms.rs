//! Instance normalisation of a volume that is run tile by tile.
//!
//! An instance norm's statistics span the whole volume, so a tile cannot compute them
//! from its own activations. They can still be had in bounded memory, one norm at a
//! time: with the statistics of norms `0..k` known, every tile is run up to norm `k`
//! and adds the sums of the activations it owns (its share of a partition of the
//! volume's activations at that norm) to norm `k`'s; then norm `k + 1`, and a last
//! pass with all of them gives the outputs ([`crate::Engine::run_pass`]).
//!
//! Invariant: the statistics do not depend on how the values are split. A norm of u8
//! tensors counts bytes (a histogram); a float norm keeps [`ChannelSums`], exact integer
//! sums per binary exponent. A whole-volume run takes its statistics through the same
//! sums, so a volume streamed in tiles gives the whole-volume bits.

use std::ops::Range;

/// Exact sums of a channel's f32 values and of their squares: each value is `m 2^e`
/// with an integer `m` below 2^24, and the `m` (and `m^2`) of values with the same
/// exponent add in integers. Adding is associative and exact, so any split of the
/// values over tiles or threads reaches the same state; [`ChannelSums::stats`] reads
/// it in one fixed order. Room: 2^39 values per channel.
#[derive(Clone)]
pub struct ChannelSums {
    count: u64,
    sum: Box<[i64; 256]>,
    squares: Box<[u128; 256]>,
    /// A NaN or infinity was added (its statistics are meaningless).
    non_finite: bool,
}

impl Default for ChannelSums {
    fn default() -> Self {
        ChannelSums { count: 0, sum: Box::new([0; 256]), squares: Box::new([0; 256]), non_finite: false }
    }
}

impl std::fmt::Debug for ChannelSums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelSums {{ count: {} }}", self.count)
    }
}

impl ChannelSums {
    pub fn of(values: &[f32]) -> Self {
        let mut s = ChannelSums::default();
        s.add(values);
        s
    }

    pub fn add(&mut self, values: &[f32]) {
        values.iter().for_each(|&v| self.add_one(v));
    }

    #[inline]
    pub fn add_one(&mut self, v: f32) {
        self.count += 1;
        match exponent_and_mantissa(v) {
            Some((e, m)) => {
                self.sum[e] += m;
                self.squares[e] += (m * m) as u128;
            }
            None => self.non_finite = true,
        }
    }

    pub fn merge(&mut self, other: &ChannelSums) {
        self.count += other.count;
        self.non_finite |= other.non_finite;
        self.sum.iter_mut().zip(other.sum.iter()).for_each(|(a, b)| *a += b);
        self.squares.iter_mut().zip(other.squares.iter()).for_each(|(a, b)| *a += b);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean and 1 / sqrt(var + eps) as InstanceNormalization applies them (the
    /// variance over the count, as the float op's). Each exponent's exact sum is
    /// rounded to f64 once and added from the smallest exponent up; the variance is
    /// E[x^2] - mean^2 in f64, off by about 1e-16 mean^2 / var of itself. None for no
    /// values or a non-finite one.
    pub fn stats(&self, eps: f32) -> Option<(f32, f32)> {
        if self.non_finite {
            return None;
        }
        stats_of(self.count, &self.sum, &self.squares, eps)
    }
}

/// `v` as its biased exponent and signed integer mantissa (v = m 2^(max(e, 1) - 150),
/// |m| < 2^24); None for NaN and infinities.
#[inline]
fn exponent_and_mantissa(v: f32) -> Option<(usize, i64)> {
    let bits = v.to_bits();
    let e = ((bits >> 23) & 0xff) as usize;
    if e == 255 {
        return None;
    }
    // Subnormals (e = 0) have no implicit bit and the exponent of e = 1.
    let m = ((bits & 0x7f_ffff) | (((e != 0) as u32) << 23)) as i64;
    Some((e, if bits >> 31 == 1 { -m } else { m }))
}

/// [`ChannelSums::stats`] of `values` with the sums on the stack (no allocation: one
/// plane of the interpreter's norm).
pub fn plane_stats(values: &[f32], eps: f32) -> Option<(f32, f32)> {
    let (mut sum, mut squares) = ([0i64; 256], [0u128; 256]);
    for &v in values {
        let (e, m) = exponent_and_mantissa(v)?;
        sum[e] += m;
        squares[e] += (m * m) as u128;
    }
    stats_of(values.len() as u64, &sum, &squares, eps)
}

/// The statistics from the per-exponent sums, in one fixed order.
fn stats_of(count: u64, sum: &[i64; 256], squares: &[u128; 256], eps: f32) -> Option<(f32, f32)> {
    if count == 0 {
        return None;
    }
    let (mut s1, mut s2) = (0f64, 0f64);
    for e in 0..255 {
        let p = (e.max(1) as i32 - 150) as f64;
        if sum[e] != 0 {
            s1 += sum[e] as f64 * p.exp2();
        }
        if squares[e] != 0 {
            s2 += squares[e] as f64 * (2.0 * p).exp2();
        }
    }
    let n = count as f64;
    let mean = s1 / n;
    let var = (s2 / n - mean * mean).max(0.0);
    Some((mean as f32, 1.0 / (var as f32 + eps).sqrt()))
}

/// Exact sums of a channel's integers (a conv's accumulators less their offset) and of
/// their squares.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IntMoments {
    pub count: u64,
    pub sum: i128,
    pub squares: i128,
}

impl IntMoments {
    pub fn merge(&mut self, o: &IntMoments) {
        self.count += o.count;
        self.sum += o.sum;
        self.squares += o.squares;
    }

    /// The mean and the variance (over the count) in f64, the variance's numerator
    /// `n Σd² - (Σd)²` exact in integers. None for no values.
    pub fn mean_var(&self) -> Option<(f64, f64)> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as i128;
        let num = n.checked_mul(self.squares)?.checked_sub(self.sum.checked_mul(self.sum)?)?;
        let nf = self.count as f64;
        Some((self.sum as f64 / nf, num.max(0) as f64 / (nf * nf)))
    }
}

/// The statistics of one norm, summed over a tile's share of the volume or merged
/// over all tiles.
#[derive(Debug, Clone)]
pub enum NormSums {
    /// A norm of u8 tensors: counts of each byte, `[channel][256]`.
    Bytes(Vec<u64>),
    /// A float norm: one per channel.
    Float(Vec<ChannelSums>),
    /// A norm of a conv's values, from its integer accumulators: one per channel.
    Ints(Vec<IntMoments>),
}

impl NormSums {
    /// Adds `other` (the same norm's sums over other activations).
    pub fn merge(&mut self, other: &NormSums) -> Result<(), String> {
        match (self, other) {
            (NormSums::Bytes(a), NormSums::Bytes(b)) if a.len() == b.len() => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            (NormSums::Float(a), NormSums::Float(b)) if a.len() == b.len() => a.iter_mut().zip(b).for_each(|(a, b)| a.merge(b)),
            (NormSums::Ints(a), NormSums::Ints(b)) if a.len() == b.len() => a.iter_mut().zip(b).for_each(|(a, b)| a.merge(b)),
            _ => return Err("the sums of two different norms".into()),
        }
        Ok(())
    }

    /// Values summed per channel.
    pub fn count(&self) -> u64 {
        match self {
            NormSums::Bytes(h) => h.iter().take(256).sum(),
            NormSums::Float(c) => c.first().map_or(0, |c| c.count()),
            NormSums::Ints(c) => c.first().map_or(0, |c| c.count),
        }
    }
}

/// Where an instance norm sits in the plan: what a tiled run needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct NormSite {
    /// The node's output (a name in the ONNX graph).
    pub name: String,
    pub channels: usize,
    /// The spatial sizes of its input for this engine's input shape.
    pub spatial: Vec<usize>,
    /// Whether it runs on u8 tensors (a histogram) or in float.
    pub bytes: bool,
}

/// What [`crate::Engine::run_pass`] does with the instance norms of one tile's run.
#[derive(Debug, Clone, Copy)]
pub struct NormPass<'a> {
    /// Whole-volume sums of the first norms (plan order): they normalise with these
    /// instead of the tile's own statistics.
    pub given: &'a [NormSums],
    /// Sum the next norm's input over this box (per spatial axis, a range of its
    /// indices) and stop there; None: run to the outputs (then every norm must be given).
    pub collect: Option<&'a [Range<usize>]>,
}

/// What one pass over a tile gives.
#[derive(Debug)]
pub enum PassResult {
    Outputs(Vec<crate::ndarray::ArrayD<f32>>),
    Sums(NormSums),
}

impl PassResult {
    /// The outputs (a pass that collected sums has none).
    pub fn outputs(self) -> Vec<crate::ndarray::ArrayD<f32>> {
        match self {
            PassResult::Outputs(o) => o,
            PassResult::Sums(_) => vec![],
        }
    }
}

/// Each norm's stride per spatial axis, in input voxels per index of its input, from
/// the sites of two engines whose inputs differ by `step` voxels along every axis
/// (`sites` and `wider`): a norm's input then grows by `step / stride` indices. Err
/// where the sites differ in kind or the growth does not divide `step`.
pub fn site_strides(sites: &[NormSite], wider: &[NormSite], step: usize) -> Result<Vec<Vec<usize>>, String> {
    if sites.len() != wider.len() {
        return Err(format!("{} instance norms at one input size, {} at another", sites.len(), wider.len()));
    }
    sites
        .iter()
        .zip(wider)
        .map(|(a, b)| {
            if a.channels != b.channels || a.bytes != b.bytes || a.spatial.len() != b.spatial.len() {
                return Err(format!("instance norm {} differs between input sizes", a.name));
            }
            a.spatial
                .iter()
                .zip(&b.spatial)
                .map(|(&n, &m)| match m.checked_sub(n) {
                    Some(d) if d > 0 && step.is_multiple_of(d) => Ok(step / d),
                    _ => Err(format!("instance norm {}: its input grows from {n} to {m} for {step} more input voxels", a.name)),
                })
                .collect()
        })
        .collect()
}

/// The box of a norm's input that one tile owns in a volume cut into tiles: along
/// each axis, from the tile's start to the next tile's start, in the norm's indices
/// (`start / stride`, with starts in input voxels), and for the last tile to the
/// end of its input. `starts[a]` are the tiles' starts along axis a (increasing),
/// `at[a]` this tile's index among them. The tiles' boxes partition the volume's
/// activations at the norm, as long as each tile reaches the next one's start (Err
/// where one does not, or a start is not a multiple of the stride).
pub fn owned_box(starts: &[Vec<usize>], at: &[usize], strides: &[usize], spatial: &[usize]) -> Result<Vec<Range<usize>>, String> {
    (0..spatial.len())
        .map(|a| {
            let (s, st) = (starts[a][at[a]], strides[a]);
            if s % st != 0 {
                return Err(format!("a tile starts at voxel {s}, not a multiple of a norm's stride {st}"));
            }
            match starts[a].get(at[a] + 1) {
                None => Ok(0..spatial[a]),
                Some(&next) if (next - s) / st <= spatial[a] => Ok(0..(next - s) / st),
                Some(&next) => Err(format!(
                    "a tile's norm input of {} indices does not reach the next tile's start ({} indices on)",
                    spatial[a],
                    (next - s) / st
                )),
            }
        })
        .collect()
}

/// Flat indices (row-major over `spatial`) of the runs of a box, one range per run
/// along the last axis, in order.
pub fn box_runs(spatial: &[usize], region: &[Range<usize>]) -> Vec<Range<usize>> {
    let Some((last, outer)) = region.split_last() else { return std::iter::once(0..1).collect() };
    let mut runs = vec![];
    let mut idx: Vec<usize> = outer.iter().map(|r| r.start).collect();
    if outer.iter().any(|r| r.is_empty()) || last.is_empty() {
        return runs;
    }
    loop {
        let base = idx.iter().zip(spatial).fold(0, |a, (&i, &n)| a * n + i) * spatial[spatial.len() - 1];
        runs.push(base + last.start..base + last.end);
        // Next index of the outer axes, last axis fastest.
        let mut k = idx.len();
        loop {
            if k == 0 {
                return runs;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < outer[k].end {
                break;
            }
            idx[k] = outer[k].start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any split of the values gives the same statistics, and they are the float op's
    /// to f32 rounding (a two-pass f64 reference).
    #[test]
    fn sums_are_the_same_however_the_values_are_split() {
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for scale in [1e-30f64, 1e-3, 1.0, 1e6] {
            let v: Vec<f32> = (0..5000).map(|i| ((next() - 0.3) * scale * if i % 97 == 0 { 1e3 } else { 1.0 }) as f32).collect();
            let whole = ChannelSums::of(&v).stats(1e-5).unwrap();
            let mut parts = ChannelSums::default();
            for chunk in v.rchunks(37) {
                parts.merge(&ChannelSums::of(chunk));
            }
            assert_eq!(parts.stats(1e-5).unwrap(), whole);
            assert_eq!(plane_stats(&v, 1e-5).unwrap(), whole);
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var as f32 + 1e-5).sqrt();
            assert!(((whole.0 as f64 - mean) / mean.abs().max(1e-300)).abs() < 1e-6, "{scale}: {whole:?} {mean}");
            assert!((whole.1 - inv).abs() <= 1e-6 * inv, "{scale}: {whole:?} {inv}");
        }
        assert_eq!(ChannelSums::of(&[1.0, f32::NAN]).stats(0.0), None);
        assert_eq!(ChannelSums::default().stats(0.0), None);
    }

    #[test]
    fn box_runs_cover_the_box_in_order() {
        let runs = box_runs(&[3, 4, 5], &[1..3, 0..2, 2..5]);
        let flat: Vec<usize> = runs.into_iter().flatten().collect();
        let mut want = vec![];
        for i in 1..3 {
            for j in 0..2 {
                for k in 2..5 {
                    want.push((i * 4 + j) * 5 + k);
                }
            }
        }
        assert_eq!(flat, want);
        assert!(box_runs(&[3, 4], &[1..1, 0..4]).is_empty());
    }
}
