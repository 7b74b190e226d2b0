//! Constants a kernel derives from a layer's weights and a call's requantisation (block
//! parameters in the kernel's lane order, clamps, the sums' starts), made at the layer's
//! first call and kept with its weights ([`Kept`]).
//!
//! Invariant: a result never depends on an earlier call. Kept constants serve only the
//! requantisation and input zero point they were made from, compared in full at every
//! call; a call with others makes its own, into a buffer of the caller's.

use std::sync::OnceLock;

use super::Requant;

/// A layer's constants of type `T`, made at its first call from that call's
/// [`Requant`] and input zero point, and kept with its weights (each ISA's weights
/// hold the `Kept` of the constants its kernels use).
///
/// Why: made per call (and per part, on every thread), AVX2's block parameters were 17%
/// of the profile of a 240-channel depthwise conv at 3x3 (Zen 3); AVX-512's depthwise
/// blocks took about 0.8 us of a 960-channel conv's 10.6 us at 7x7 (Xeon with AMX).
/// Not kept: AVX-512's dense block constants (about ten vector operations a block of 16
/// channels), which cost about what comparing the parameters costs.
pub struct Kept<T>(OnceLock<(Requant, u8, T)>);

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept(OnceLock::new())
    }
}

impl<T: Clone> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Kept(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Kept<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kept({})", if self.0.get().is_some() { "made" } else { "none yet" })
    }
}

impl<T: Default> Kept<T> {
    /// The constants of `r` with input zero point `zp`, as `make` fills them: those
    /// made at the first call where this call's `r` and `zp` are the first's (compared
    /// in full, bit for bit: [`Requant::same_bits`], 14 bytes a channel by `memcmp`,
    /// cheaper than any kernel's making), else made into `made`.
    pub(super) fn get<'a>(&'a self, r: &Requant, zp: u8, make: impl Fn(&mut T), made: &'a mut T) -> &'a T {
        let (kr, kzp, kept) = self.0.get_or_init(|| {
            let mut t = T::default();
            make(&mut t);
            (r.clone(), zp, t)
        });
        if *kzp == zp && kr.same_bits(r) {
            return kept;
        }
        make(made);
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requant(mult: f32) -> Requant {
        Requant { offset: vec![1, 2], mult: vec![mult, 0.5], bias: vec![0.0; 2], out_zp: 3.0, lo: vec![0; 2], hi: vec![255; 2] }
    }

    /// Each call gets the constants of its own requantisation and zero point; the
    /// first call's are made once.
    #[test]
    fn each_call_gets_its_own_requantisations_constants() {
        let kept: Kept<Vec<f32>> = Kept::default();
        let makings = std::cell::Cell::new(0);
        let make = |r: &Requant, zp: u8| {
            let makings = &makings;
            let (m, z) = (r.mult[0], zp as f32);
            move |v: &mut Vec<f32>| {
                makings.set(makings.get() + 1);
                v.clear();
                v.extend([m, z]);
            }
        };
        let (r1, r2) = (requant(0.25), requant(0.75));
        let mut made = Vec::new();
        assert_eq!(kept.get(&r1, 7, make(&r1, 7), &mut made), &[0.25, 7.0]);
        assert_eq!(kept.get(&r2, 7, make(&r2, 7), &mut made), &[0.75, 7.0]);
        assert_eq!(kept.get(&r1, 9, make(&r1, 9), &mut made), &[0.25, 9.0]);
        assert_eq!(makings.get(), 3);
        // The first call's again: kept, not made.
        assert_eq!(kept.get(&r1, 7, make(&r1, 7), &mut made), &[0.25, 7.0]);
        assert_eq!(makings.get(), 3);
    }

    /// Parameters are the same only bit for bit: another sign of zero differs (its
    /// constants would too), a NaN equals its own bits.
    #[test]
    fn requantisations_are_compared_bit_for_bit() {
        let r = requant(0.25);
        assert!(r.same_bits(&r.clone()));
        let mut z = r.clone();
        z.bias[1] = -0.0;
        assert!(!r.same_bits(&z) && r == z, "-0.0 == 0.0 as floats, not as bits");
        let mut n = r.clone();
        n.mult[1] = f32::NAN;
        assert!(n.same_bits(&n.clone()));
        for change in 0..4 {
            let mut o = r.clone();
            match change {
                0 => o.offset[0] += 1,
                1 => o.lo[1] = 1,
                2 => o.hi[0] = 254,
                _ => o.out_zp = 4.0,
            }
            assert!(!r.same_bits(&o), "change {change}");
        }
    }
}
