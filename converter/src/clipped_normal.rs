//! Data-free activation ranges by minimum expected quantization error.
//!
//! The DFQ setting models each channel c of a pre-activation as N(beta_c, gamma_c^2)
//! (the batch norm folded into its layer), and the activation after it as that
//! normal clipped to [a_c, b_c] (ReLU: a = 0; ReLU6 or a per-channel bound: b).
//! Trained networks have heavier tails than the normal (see [`Family::Laplace`]):
//! the same rule with a Laplace of the same mean and variance is the default, the
//! normal stays available (`quantize --range-model normal`).
//! A per-tensor u8 grid over [lo, hi] with step d = (hi - lo) / 255 then costs, per
//! channel, the squared error of clipping what falls outside [lo, hi] plus d^2 / 12
//! of rounding for what falls inside (the zero of a ReLU lies on the grid and costs
//! nothing). [`optimal_range`] picks the [lo, hi] that minimises the sum over the
//! channels, with closed forms of the normal's tail moments: a fixed +-k sigma is
//! too wide for tensors of many similar channels and too narrow for the one
//! channel whose mean sits far out, which this rule weighs by what it costs.

/// The shape of a channel's distribution around its mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The DFQ paper's assumption.
    Normal,
    /// Laplace of the same mean and variance: the tails of trained networks. On the
    /// bundled demo model, 0.5-0.9% of each batch norm's outputs lie beyond 4 sigma
    /// (a normal puts 0.006% there, a Laplace 0.35%), and the largest at 6-11 sigma.
    Laplace,
}

/// One channel: mean `mu` and standard deviation `sigma` of its pre-activation, of
/// the given family, clipped to [lo, hi] (infinite bounds: no clipping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClippedNormal {
    pub mu: f64,
    pub sigma: f64,
    pub lo: f64,
    pub hi: f64,
    pub family: Family,
}

fn pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn cdf(z: f64) -> f64 {
    0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
}

impl ClippedNormal {
    fn z(&self, t: f64) -> f64 {
        (t - self.mu) / self.sigma
    }

    /// P(x > t) of the unclipped distribution.
    fn above(&self, t: f64) -> f64 {
        if t == f64::INFINITY {
            return 0.0;
        } else if t == f64::NEG_INFINITY {
            return 1.0;
        }
        match self.family {
            Family::Normal => 1.0 - cdf(self.z(t)),
            Family::Laplace => {
                let (d, b) = (t - self.mu, self.sigma / std::f64::consts::SQRT_2);
                if d >= 0.0 {
                    0.5 * (-d / b).exp()
                } else {
                    1.0 - 0.5 * (d / b).exp()
                }
            }
        }
    }

    /// E[(x - t)^2; x > t] and E[x - t; x > t] of the unclipped distribution.
    fn upper_moments(&self, t: f64) -> (f64, f64) {
        if t == f64::INFINITY {
            return (0.0, 0.0);
        }
        match self.family {
            Family::Normal => {
                let z = self.z(t);
                let q = 1.0 - cdf(z);
                (self.sigma * self.sigma * ((1.0 + z * z) * q - z * pdf(z)), self.sigma * (pdf(z) - z * q))
            }
            Family::Laplace => laplace_tail(t - self.mu, self.sigma / std::f64::consts::SQRT_2),
        }
    }

    /// E[(t - x)^2; x < t] and E[t - x; x < t] of the unclipped distribution.
    fn lower_moments(&self, t: f64) -> (f64, f64) {
        if t == f64::NEG_INFINITY {
            return (0.0, 0.0);
        }
        match self.family {
            Family::Normal => {
                let z = self.z(t);
                let p = cdf(z);
                (self.sigma * self.sigma * ((1.0 + z * z) * p + z * pdf(z)), self.sigma * (pdf(z) + z * p))
            }
            // The mirror image of the upper tail.
            Family::Laplace => laplace_tail(self.mu - t, self.sigma / std::f64::consts::SQRT_2),
        }
    }

    /// E[(y - t)^2; y > t] for y = clip(x): the error of clipping the channel at `t` from above.
    pub fn upper_clip_error(&self, t: f64) -> f64 {
        if t >= self.hi {
            return 0.0;
        }
        let t = t.max(self.lo);
        // E[(min(x, b) - t)^2; x > t] = U(t) - U(b) - 2 (b - t) M(b), U and M the
        // unclipped second and first tail moments; b = infinity leaves U(t).
        let (ut, _) = self.upper_moments(t);
        if self.hi == f64::INFINITY {
            return ut.max(0.0);
        }
        let (ub, mb) = self.upper_moments(self.hi);
        (ut - ub - 2.0 * (self.hi - t) * mb).max(0.0)
    }

    /// E[(t - y)^2; y < t]: the error of clipping the channel at `t` from below.
    pub fn lower_clip_error(&self, t: f64) -> f64 {
        if t <= self.lo {
            return 0.0;
        }
        let t = t.min(self.hi);
        let (lt, _) = self.lower_moments(t);
        if self.lo == f64::NEG_INFINITY {
            return lt.max(0.0);
        }
        let (la, ma) = self.lower_moments(self.lo);
        (lt - la - 2.0 * (t - self.lo) * ma).max(0.0)
    }

    /// Probability that the channel takes a value rounded on the grid [lo, hi]:
    /// inside it, and not at a clip bound that lies on the grid's zero.
    fn rounded_share(&self, lo: f64, hi: f64) -> f64 {
        let (l, h) = (lo.max(self.lo), hi.min(self.hi));
        if l >= h {
            return 0.0;
        }
        let mut p = self.above(l) - self.above(h);
        // Mass piled at an upper bound inside the grid is rounded too; at a lower
        // bound of zero (ReLU) it is exact.
        if self.hi <= hi && self.hi.is_finite() {
            p += self.above(self.hi);
        }
        if self.lo >= lo && self.lo.is_finite() && self.lo != 0.0 {
            p += 1.0 - self.above(self.lo);
        }
        p
    }

    /// Expected squared error of the channel on a u8 grid over [lo, hi].
    pub fn error(&self, lo: f64, hi: f64) -> f64 {
        let step = (hi - lo) / 255.0;
        self.upper_clip_error(hi) + self.lower_clip_error(lo) + step * step / 12.0 * self.rounded_share(lo, hi)
    }
}

/// E[(x - t)^2; x > t] and E[x - t; x > t] for a Laplace of scale `b` and t - mean = `d`.
/// Beyond the mean, the excess over t is exponential of mean b (memoryless): moments
/// 2b^2 and b times P(x > t); below it, the whole moment minus the lower tail's.
fn laplace_tail(d: f64, b: f64) -> (f64, f64) {
    let tail = 0.5 * (-d.abs() / b).exp();
    if d >= 0.0 {
        (2.0 * b * b * tail, b * tail)
    } else {
        (2.0 * b * b + d * d - 2.0 * b * b * tail, -d + b * tail)
    }
}

/// Sum of the channels' expected errors on [lo, hi].
fn total_error(channels: &[ClippedNormal], lo: f64, hi: f64) -> f64 {
    channels.iter().map(|c| c.error(lo, hi)).sum()
}

/// The value of `x` in [a, b] minimising `f`: a grid, then a golden-section search
/// around its best point (the error is smooth and, around its minimum, unimodal).
fn minimise(a: f64, b: f64, f: impl Fn(f64) -> f64) -> f64 {
    if b <= a {
        return a;
    }
    const GRID: usize = 64;
    let at = |k: usize| a + (b - a) * k as f64 / GRID as f64;
    let best = (0..=GRID).min_by(|&i, &j| f(at(i)).total_cmp(&f(at(j)))).unwrap_or(GRID);
    let (mut l, mut h) = (at(best.saturating_sub(1)), at((best + 1).min(GRID)));
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let (m1, m2) = (h - phi * (h - l), l + phi * (h - l));
        if f(m1) <= f(m2) {
            h = m2;
        } else {
            l = m1;
        }
    }
    (l + h) / 2.0
}

/// The per-tensor range (lo, hi) of least expected quantization error for these
/// channels (containing zero, as u8 ONNX quantization needs); None without channels.
pub fn optimal_range(channels: &[ClippedNormal]) -> Option<(f32, f32)> {
    let channels: Vec<ClippedNormal> = channels
        .iter()
        .filter(|c| c.mu.is_finite() && c.sigma.is_finite())
        .map(|c| ClippedNormal { sigma: c.sigma.abs().max(1e-9), ..*c })
        .collect();
    if channels.is_empty() {
        return None;
    }
    // Nothing lies beyond 12 sigma in practice (nor beyond a clip bound).
    let top = channels.iter().map(|c| (c.mu + 12.0 * c.sigma).min(c.hi)).fold(0f64, f64::max);
    let bottom = channels.iter().map(|c| (c.mu - 12.0 * c.sigma).max(c.lo)).fold(0f64, f64::min);
    let (mut lo, mut hi) = (bottom, top);
    // Coordinate descent: each bound moves the step of the other's rounding error.
    for _ in 0..4 {
        if top > 0.0 {
            hi = minimise(top * 1e-3, top, |h| total_error(&channels, lo, h));
        }
        if bottom < 0.0 {
            lo = -minimise(-bottom * 1e-3, -bottom, |l| total_error(&channels, -l, hi));
        }
    }
    Some((lo as f32, hi as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same expectation by a fine numeric integral over the normal.
    fn numeric(c: &ClippedNormal, lo: f64, hi: f64) -> f64 {
        let steps = 800_000;
        let (a, b) = (c.mu - 30.0 * c.sigma, c.mu + 30.0 * c.sigma);
        let dx = (b - a) / steps as f64;
        let step = (hi - lo) / 255.0;
        let mut e = 0.0;
        for k in 0..steps {
            let x = a + (k as f64 + 0.5) * dx;
            let p = match c.family {
                Family::Normal => pdf((x - c.mu) / c.sigma) / c.sigma,
                Family::Laplace => {
                    let b = c.sigma / std::f64::consts::SQRT_2;
                    (-(x - c.mu).abs() / b).exp() / (2.0 * b)
                }
            } * dx;
            let y = x.clamp(c.lo, c.hi);
            e += p * if y > hi {
                (y - hi).powi(2)
            } else if y < lo {
                (lo - y).powi(2)
            } else if y == 0.0 {
                0.0
            } else {
                step * step / 12.0
            };
        }
        e
    }

    #[test]
    fn closed_forms_match_a_numeric_integral() {
        let cases = [
            (ClippedNormal { mu: 0.5, sigma: 1.0, lo: f64::NEG_INFINITY, hi: f64::INFINITY, family: Family::Normal }, -2.0, 2.5),
            (ClippedNormal { mu: 0.5, sigma: 1.0, lo: 0.0, hi: f64::INFINITY, family: Family::Normal }, 0.0, 1.7),
            (ClippedNormal { mu: 2.0, sigma: 3.0, lo: 0.0, hi: 6.0, family: Family::Normal }, 0.0, 4.0),
            (ClippedNormal { mu: 2.0, sigma: 3.0, lo: 0.0, hi: 6.0, family: Family::Normal }, 0.0, 8.0),
            (ClippedNormal { mu: -1.0, sigma: 0.3, lo: f64::NEG_INFINITY, hi: f64::INFINITY, family: Family::Normal }, -1.2, 0.0),
        ];
        let laplace = cases.map(|(c, lo, hi)| (ClippedNormal { family: Family::Laplace, ..c }, lo, hi));
        for (c, lo, hi) in cases.into_iter().chain(laplace) {
            let (exact, num) = (c.error(lo, hi), numeric(&c, lo, hi));
            assert!((exact - num).abs() <= 1e-4 * num.max(1e-6) + 1e-9, "{c:?} on [{lo}, {hi}]: {exact} vs {num}");
        }
    }

    #[test]
    fn optimal_range_beats_fixed_sigmas_and_is_a_minimum() {
        // A ReLU tensor of many quiet channels and one with a large mean.
        let mut ch: Vec<ClippedNormal> = (0..63)
            .map(|k| ClippedNormal { mu: 0.1 * (k % 5) as f64, sigma: 0.5, lo: 0.0, hi: f64::INFINITY, family: Family::Normal })
            .collect();
        ch.push(ClippedNormal { mu: 6.0, sigma: 1.0, lo: 0.0, hi: f64::INFINITY, family: Family::Normal });
        let (lo, hi) = optimal_range(&ch).unwrap();
        assert_eq!(lo, 0.0);
        let best = total_error(&ch, 0.0, hi as f64);
        for k in [3.0, 6.0] {
            let sig_hi = ch.iter().map(|c| c.mu + k * c.sigma).fold(0f64, f64::max);
            assert!(best < total_error(&ch, 0.0, sig_hi), "k = {k}");
        }
        for f in [0.9, 1.1] {
            assert!(best <= total_error(&ch, 0.0, hi as f64 * f));
        }
        // A two-sided tensor gets both bounds; a ReLU6 one never goes past 6.
        let two = optimal_range(&[ClippedNormal { mu: 0.0, sigma: 1.0, lo: f64::NEG_INFINITY, hi: f64::INFINITY, family: Family::Normal }])
            .unwrap();
        assert!(two.0 < -2.0 && two.1 > 2.0 && (two.0 + two.1).abs() < 0.05, "{two:?}");
        let six = optimal_range(&[ClippedNormal { mu: 5.0, sigma: 4.0, lo: 0.0, hi: 6.0, family: Family::Normal }]).unwrap();
        assert!(six.1 <= 6.0 && six.1 > 5.5, "{six:?}");
    }
}
