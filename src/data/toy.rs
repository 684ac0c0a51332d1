//! Built-in low-dimensional distributions (the toy datasets of flow-matching papers).

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::rng::{normal, uniform, Rng, RngExt};
use crate::Points;

/// A built-in distribution. All are 2-D except [`Toy::StandardNormal`], whose dimension is
/// given where it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toy {
    /// Eight Gaussians at 5·(cos kπ/4, sin kπ/4), per-axis std 0.1^¼ ≈ 0.562 (torchcfm's).
    EightGaussians,
    /// Two moons, torchcfm's variant: evenly spaced angles on both arcs, one u ~ U[0, 0.2)
    /// added to both coordinates of a point, then x·3 − 1.
    TwoMoons,
    /// A 4×4 checkerboard on [−4, 4]² (8 filled cells).
    Checkerboard,
    /// Two concentric circles, radii 4 and 2, Gaussian noise 0.08.
    Circles,
    /// Two interleaved spirals with noise 0.1, spanning about [−4, 4]².
    Spirals,
    /// The 2-D Swiss roll (sklearn's x and z coordinates / 2), noise 0.25.
    SwissRoll,
    /// A mixture of 6 Gaussians (std 0.35) on a circle of radius 3, unequal weights 1..6.
    GaussianMixture,
    /// N(0, I) in any dimension.
    StandardNormal,
}

impl Toy {
    /// Every built-in distribution.
    pub const ALL: [Toy; 8] = [
        Toy::EightGaussians,
        Toy::TwoMoons,
        Toy::Checkerboard,
        Toy::Circles,
        Toy::Spirals,
        Toy::SwissRoll,
        Toy::GaussianMixture,
        Toy::StandardNormal,
    ];

    /// The config/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Toy::EightGaussians => "eight_gaussians",
            Toy::TwoMoons => "two_moons",
            Toy::Checkerboard => "checkerboard",
            Toy::Circles => "circles",
            Toy::Spirals => "spirals",
            Toy::SwissRoll => "swiss_roll",
            Toy::GaussianMixture => "gaussian_mixture",
            Toy::StandardNormal => "standard_normal",
        }
    }

    /// Parses a config/CLI name.
    pub fn from_name(s: &str) -> Option<Toy> {
        Toy::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The fixed dimension, or `None` for [`Toy::StandardNormal`].
    pub fn fixed_dim(self) -> Option<usize> {
        match self {
            Toy::StandardNormal => None,
            _ => Some(2),
        }
    }

    /// Draws `n` points (`dim` is used by [`Toy::StandardNormal`] only).
    pub fn sample(self, n: usize, dim: usize, rng: &mut Rng) -> Points {
        let d = self.fixed_dim().unwrap_or(dim);
        let mut out = Vec::with_capacity(n * d);
        match self {
            Toy::StandardNormal => out.extend((0..n * d).map(|_| normal(rng) as f32)),
            Toy::TwoMoons => two_moons(n, rng, &mut out),
            _ => {
                for _ in 0..n {
                    let (x, y) = self.point(rng);
                    out.push(x as f32);
                    out.push(y as f32);
                }
            }
        }
        Points::new(n, d, out).expect("generator writes n·d values")
    }

    fn point(self, rng: &mut Rng) -> (f64, f64) {
        match self {
            Toy::EightGaussians => {
                let k = rng.random_range(0..8) as f64;
                let std = 0.1f64.powf(0.25);
                let (s, c) = (k * PI / 4.0).sin_cos();
                (5.0 * c + std * normal(rng), 5.0 * s + std * normal(rng))
            }
            Toy::Checkerboard => {
                let x = uniform(rng) * 4.0 - 2.0;
                let y0 = uniform(rng) - 2.0 * rng.random_range(0..2) as f64;
                let y = y0 + (x.floor().rem_euclid(2.0));
                (2.0 * x, 2.0 * y)
            }
            Toy::Circles => {
                let r = if rng.random::<bool>() { 4.0 } else { 2.0 };
                let a = 2.0 * PI * uniform(rng);
                (
                    r * a.cos() + 0.08 * normal(rng),
                    r * a.sin() + 0.08 * normal(rng),
                )
            }
            Toy::Spirals => {
                let s = uniform(rng).sqrt() * 3.0 * PI;
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                let (x, y) = (-s * s.cos(), s * s.sin());
                (
                    sign * x / 2.5 + 0.1 * normal(rng),
                    sign * y / 2.5 + 0.1 * normal(rng),
                )
            }
            Toy::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * uniform(rng));
                (
                    t * t.cos() / 2.0 + 0.25 * normal(rng),
                    t * t.sin() / 2.0 + 0.25 * normal(rng),
                )
            }
            Toy::GaussianMixture => {
                // weights 1..6 over 21
                let u = rng.random_range(0..21);
                let mut k = 0;
                let mut acc = 0;
                while acc + k < u {
                    acc += k + 1;
                    k += 1;
                }
                let a = k as f64 * PI / 3.0;
                (
                    3.0 * a.cos() + 0.35 * normal(rng),
                    3.0 * a.sin() + 0.35 * normal(rng),
                )
            }
            Toy::TwoMoons | Toy::StandardNormal => unreachable!("sampled in bulk"),
        }
    }
}

fn linspace(i: usize, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        PI * i as f64 / (n - 1) as f64
    }
}

fn two_moons(n: usize, rng: &mut Rng, out: &mut Vec<f32>) {
    if n == 1 {
        // a single draw (e.g. per-sample sampler starts): a uniform angle on a random arc
        let a = PI * uniform(rng);
        let (x, y) = if rng.random::<bool>() {
            (a.cos(), a.sin())
        } else {
            (1.0 - a.cos(), 0.5 - a.sin())
        };
        let u = 0.2 * uniform(rng);
        out.push(((x + u) * 3.0 - 1.0) as f32);
        out.push(((y + u) * 3.0 - 1.0) as f32);
        return;
    }
    let n_out = n / 2;
    let n_in = n - n_out;
    let mut push = |x: f64, y: f64, rng: &mut Rng| {
        let u = 0.2 * uniform(rng);
        out.push(((x + u) * 3.0 - 1.0) as f32);
        out.push(((y + u) * 3.0 - 1.0) as f32);
    };
    for i in 0..n_out {
        let a = linspace(i, n_out);
        push(a.cos(), a.sin(), rng);
    }
    for i in 0..n_in {
        let a = linspace(i, n_in);
        push(1.0 - a.cos(), 1.0 - a.sin() - 0.5, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    #[test]
    fn names_round_trip_and_shapes() {
        for t in Toy::ALL {
            assert_eq!(Toy::from_name(t.name()), Some(t));
            let mut r = stream(0, Purpose::Data, 0);
            let p = t.sample(101, 3, &mut r);
            assert_eq!(p.len(), 101);
            assert_eq!(p.dim(), t.fixed_dim().unwrap_or(3));
            p.check_finite(t.name()).unwrap();
        }
    }

    #[test]
    fn eight_gaussians_moments() {
        // mean 0; E‖x‖² = 25 + 2·√0.1 ≈ 25.632
        let mut r = stream(1, Purpose::Data, 0);
        let p = Toy::EightGaussians.sample(40_000, 2, &mut r);
        let m = p.mean();
        assert!(m[0].abs() < 0.1 && m[1].abs() < 0.1, "{m:?}");
        let sq: f64 = p
            .rows()
            .map(|r| (r[0] as f64).powi(2) + (r[1] as f64).powi(2))
            .sum::<f64>()
            / 40_000.0;
        assert!((sq - (25.0 + 2.0 * 0.1f64.sqrt())).abs() < 0.15, "{sq}");
    }

    #[test]
    fn two_moons_is_the_torchcfm_variant() {
        let mut r = stream(2, Purpose::Data, 0);
        let p = Toy::TwoMoons.sample(4, 2, &mut r);
        // first point: angle 0 on the outer arc (1, 0), plus u in [0, 0.2) on both axes, ×3 − 1
        let (x, y) = (p.row(0)[0] as f64, p.row(0)[1] as f64);
        let u = (x + 1.0) / 3.0 - 1.0;
        assert!((0.0..0.2).contains(&u), "{u}");
        assert!(((y + 1.0) / 3.0 - u).abs() < 1e-6);
        // the shift is the same on both coordinates for every point: x − y is noise-free
        let q = Toy::TwoMoons.sample(1000, 2, &mut r);
        let first = q.row(0)[0] - q.row(0)[1];
        assert!((first - 3.0).abs() < 1e-5, "{first}");
    }
}
