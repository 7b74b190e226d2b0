//! Rotated copies of 3x3 filters for the cyclic group C_N: exact grid rotations
//! for N in {1, 2, 4}, a band-limited steerable basis for N in {8, 12}.
//! The formulas are the contract in EQ_MOBILENET_V2.md; the torch training
//! script implements the same ones.

use crate::error::{Error, Result};

/// A 3x3 filter, row-major.
pub type Filter = [f32; 9];

/// Number of steerable basis functions on the 3x3 grid.
pub const STEERABLE_BASIS_SIZE: usize = 11;
const RADIAL_SIGMA: f64 = 0.6;

/// How a group's base filters are parametrised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterParam {
    /// A free 3x3 filter rotated on the grid (`.weight`, 9 numbers).
    Grid,
    /// Coefficients over the steerable basis (`.coeff`, 11 numbers).
    Steerable,
}

impl FilterParam {
    pub fn for_group(n: usize) -> Result<Self> {
        match n {
            1 | 2 | 4 => Ok(FilterParam::Grid),
            8 | 12 => Ok(FilterParam::Steerable),
            _ => Err(Error::Config(format!("group order {n} is not supported (use 1, 2, 4, 8 or 12)"))),
        }
    }

    /// Numbers per base filter.
    pub fn numbers(self) -> usize {
        match self {
            FilterParam::Grid => 9,
            FilterParam::Steerable => STEERABLE_BASIS_SIZE,
        }
    }

    /// The safetensors name suffix of a base filter tensor.
    pub fn suffix(self) -> &'static str {
        match self {
            FilterParam::Grid => "weight",
            FilterParam::Steerable => "coeff",
        }
    }
}

/// Counter-clockwise rotation by k * 90 degrees, as `np.rot90(w, k)`.
pub fn rot90(w: &Filter, k: usize) -> Filter {
    let mut out = *w;
    for _ in 0..k % 4 {
        let src = out;
        for i in 0..3 {
            for j in 0..3 {
                out[i * 3 + j] = src[j * 3 + (2 - i)];
            }
        }
    }
    out
}

/// `basis[r][b]`: basis function b rotated by 2*pi*r/N, sampled on the 3x3 grid.
pub fn steerable_basis(n: usize) -> Vec<[Filter; STEERABLE_BASIS_SIZE]> {
    let rings = [1.0f64, std::f64::consts::SQRT_2];
    (0..n)
        .map(|r| {
            let theta = 2.0 * std::f64::consts::PI * r as f64 / n as f64;
            let mut basis = [[0f32; 9]; STEERABLE_BASIS_SIZE];
            for i in 0..3 {
                for j in 0..3 {
                    let (x, y) = (j as f64 - 1.0, 1.0 - i as f64);
                    let rho = (x * x + y * y).sqrt();
                    let phi = y.atan2(x);
                    let radial = |ring: f64| (-(rho - ring).powi(2) / (2.0 * RADIAL_SIGMA * RADIAL_SIGMA)).exp();
                    let at = i * 3 + j;
                    basis[0][at] = radial(0.0) as f32;
                    for (q, ring) in rings.iter().enumerate() {
                        let b = 1 + 5 * q;
                        let rad = radial(*ring);
                        basis[b][at] = rad as f32;
                        if rho > 0.0 {
                            for k in 1..=2 {
                                let a = k as f64 * (phi - theta);
                                basis[b + 2 * k - 1][at] = (rad * a.cos()) as f32;
                                basis[b + 2 * k][at] = (rad * a.sin()) as f32;
                            }
                        }
                    }
                }
            }
            basis
        })
        .collect()
}

/// The N rotated copies `rot_r(base)`, r = 0..N-1, of one base filter.
pub struct Rotator {
    n: usize,
    param: FilterParam,
    basis: Vec<[Filter; STEERABLE_BASIS_SIZE]>,
}

impl Rotator {
    pub fn new(n: usize) -> Result<Self> {
        let param = FilterParam::for_group(n)?;
        let basis = if param == FilterParam::Steerable { steerable_basis(n) } else { Vec::new() };
        Ok(Rotator { n, param, basis })
    }

    pub fn param(&self) -> FilterParam {
        self.param
    }

    /// `base` has `param().len()` numbers.
    pub fn rotate(&self, base: &[f32], r: usize) -> Filter {
        debug_assert_eq!(base.len(), self.param.numbers());
        match self.param {
            FilterParam::Grid => rot90(base.try_into().expect("grid filters have 9 entries"), r * 4 / self.n),
            FilterParam::Steerable => {
                // Only the first quarter turn comes from the basis; the rest are exact grid
                // rotations of it, so 90-degree equivariance holds bit for bit, not just to rounding.
                let quarter = self.n / 4;
                let mut w = [0f32; 9];
                for (at, v) in w.iter_mut().enumerate() {
                    *v = base.iter().zip(self.basis[r % quarter].iter()).map(|(c, b)| *c as f64 * b[at] as f64).sum::<f64>() as f32;
                }
                rot90(&w, r / quarter)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rot90_matches_numpy() {
        // np.rot90(np.arange(9).reshape(3, 3)) == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
        let w: Filter = std::array::from_fn(|i| i as f32);
        assert_eq!(rot90(&w, 1), [2., 5., 8., 1., 4., 7., 0., 3., 6.]);
        assert_eq!(rot90(&w, 4), w);
    }

    #[test]
    fn steerable_quarter_turns_are_exact_grid_rotations() {
        for n in [8, 12] {
            let rot = Rotator::new(n).unwrap();
            let base: Vec<f32> = (0..STEERABLE_BASIS_SIZE).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
            for r in 0..n {
                let a = rot90(&rot.rotate(&base, r), 1);
                let b = rot.rotate(&base, (r + n / 4) % n);
                assert_eq!(a, b, "N={n} r={r}");
            }
        }
    }

    #[test]
    fn steerable_basis_quarter_turns_agree_with_the_formula() {
        // The basis sampled at theta + 90 degrees is the grid rotation of the basis at theta.
        for n in [8, 12] {
            let basis = steerable_basis(n);
            for r in 0..n / 4 {
                for (b, (filter, direct)) in basis[r].iter().zip(&basis[r + n / 4]).enumerate() {
                    let turned = rot90(filter, 1);
                    assert!(turned.iter().zip(direct.iter()).all(|(x, y)| (x - y).abs() <= 1e-6), "N={n} r={r} b={b}");
                }
            }
        }
    }

    #[test]
    fn unsupported_group_is_an_error() {
        assert!(Rotator::new(6).is_err());
    }
}
