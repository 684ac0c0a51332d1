//! Fréchet distance between Gaussians fitted to feature sets — FID when the features are
//! Inception-v3 pool3 activations:
//! d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}.
//!
//! tr (Σ₁Σ₂)^{1/2} is computed as Σᵢ √λᵢ over the eigenvalues λᵢ of the symmetric PSD matrix
//! S Σ₂ S with S = Σ₁^{1/2} (same spectrum as Σ₁Σ₂), by two symmetric eigendecompositions
//! (faer) in f64 — the value scipy's `sqrtm(Σ₁Σ₂)` gives in pytorch-fid, without its complex
//! round-off.

use std::collections::HashMap;
use std::path::Path;

use faer::{Mat, Side};

use crate::tensor_file::RawTensor;
use crate::{EmError, Points, Result};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// Feature dimension d.
    pub dim: usize,
    /// Number of feature vectors the statistics were computed from.
    pub count: usize,
    /// Mean, `d` values.
    pub mean: Vec<f64>,
    /// Covariance with the unbiased 1/(n − 1) normalisation (numpy's `np.cov`), `d × d`
    /// row-major.
    pub cov: Vec<f64>,
}

fn to_mat(v: &[f64], d: usize) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| v[i * d + j])
}

impl GaussianStats {
    /// Statistics of the rows of `features` (at least two rows).
    pub fn of(features: &Points) -> Result<Self> {
        let (n, d) = (features.len(), features.dim());
        if n < 2 {
            return Err(EmError::invalid(
                "feature statistics",
                "at least 2 feature vectors",
                n,
            ));
        }
        let mut mean = vec![0.0f64; d];
        for r in features.rows() {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centred = Mat::<f64>::from_fn(n, d, |i, j| features.row(i)[j] as f64 - mean[j]);
        let gram = centred.transpose() * &centred;
        let cov = (0..d * d)
            .map(|k| gram[(k / d, k % d)] / (n - 1) as f64)
            .collect();
        Ok(Self {
            dim: d,
            count: n,
            mean,
            cov,
        })
    }

    /// Writes `mu` `[d]` and `sigma` `[d, d]` (f64) to a safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.dim;
        let tensors = [
            RawTensor::f64("mu", vec![d], &self.mean),
            RawTensor::f64("sigma", vec![d, d], &self.cov),
        ];
        let meta = HashMap::from([("count".to_string(), self.count.to_string())]);
        crate::tensor_file::write(path, &tensors, meta)
    }

    /// Reads statistics written by [`GaussianStats::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let file = crate::tensor_file::TensorFile::read(path)?;
        let (ms, mean) = file.f64("mu")?;
        let (ss, cov) = file.f64("sigma")?;
        let d = mean.len();
        if ms.len() != 1 || ss != [d, d] {
            return Err(EmError::Parse {
                path: path.to_path_buf(),
                reason: format!("expected mu [d] and sigma [d, d], found {ms:?} and {ss:?}"),
            });
        }
        let count = file
            .metadata()
            .get("count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            dim: d,
            count,
            mean,
            cov,
        })
    }
}

/// Eigenvalues and eigenvectors of a symmetric matrix.
fn sym_eigen(m: &Mat<f64>, what: &str) -> Result<(Vec<f64>, Mat<f64>)> {
    let e = m.self_adjoint_eigen(Side::Lower).map_err(|e| {
        EmError::invalid(
            what,
            "a convergent symmetric eigendecomposition",
            format!("{e:?}"),
        )
    })?;
    let s = e.S().column_vector();
    let values = (0..m.nrows()).map(|i| s[i]).collect();
    Ok((values, e.U().to_owned()))
}

/// tr (A B)^{1/2} for symmetric positive semi-definite A and B: with A = U Λ Uᵀ, the
/// eigenvalues of A B are those of Λ^{1/2} (Uᵀ B U) Λ^{1/2}, which is symmetric, so that one
/// decomposition with eigenvectors, two products and one without eigenvectors give it.
pub fn trace_sqrt_product(a: &Mat<f64>, b: &Mat<f64>) -> Result<f64> {
    let (la, u) = sym_eigen(a, "covariance")?;
    let root: Vec<f64> = la.iter().map(|l| l.max(0.0).sqrt()).collect();
    let rotated = u.transpose() * b * &u;
    // scaled on both sides, with the round-off symmetrised before the second decomposition
    let m = Mat::<f64>::from_fn(a.nrows(), a.nrows(), |i, j| {
        0.5 * root[i] * root[j] * (rotated[(i, j)] + rotated[(j, i)])
    });
    let lm = m.self_adjoint_eigenvalues(Side::Lower).map_err(|e| {
        EmError::invalid(
            "product of covariances",
            "a convergent symmetric eigendecomposition",
            format!("{e:?}"),
        )
    })?;
    Ok(lm.iter().map(|&l| l.max(0.0).sqrt()).sum())
}

/// The squared Fréchet distance between the Gaussians N(μ₁, Σ₁) and N(μ₂, Σ₂).
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    if a.dim != b.dim {
        return Err(EmError::shape(
            "Fréchet distance",
            format!("statistics of equal dimension ({})", a.dim),
            format!("dimension {}", b.dim),
        ));
    }
    let d = a.dim;
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |s: &GaussianStats| (0..d).map(|i| s.cov[i * d + i]).sum::<f64>();
    let cross = trace_sqrt_product(&to_mat(&a.cov, d), &to_mat(&b.cov, d))?;
    Ok(mean_term + trace(a) + trace(b) - 2.0 * cross)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean: Vec<f64>, cov: Vec<f64>) -> GaussianStats {
        GaussianStats {
            dim: mean.len(),
            count: 0,
            mean,
            cov,
        }
    }

    #[test]
    fn identical_gaussians_are_at_distance_zero() {
        let s = stats(vec![1.0, -2.0], vec![2.0, 0.5, 0.5, 1.0]);
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-12);
    }

    #[test]
    fn diagonal_covariances_give_the_closed_form() {
        // d² = ‖Δμ‖² + Σ (√aᵢ − √bᵢ)²
        let a = stats(
            vec![0.0, 1.0, 2.0],
            vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 9.0],
        );
        let b = stats(
            vec![1.0, 1.0, 0.0],
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0],
        );
        let want = (1.0 + 0.0 + 4.0) + (2.0f64 - 1.0).powi(2) + 0.0 + (3.0f64 - 2.0).powi(2);
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-10);
    }

    #[test]
    fn non_commuting_covariances_match_the_two_by_two_formula() {
        // for 2×2 M with eigenvalues λ₁, λ₂ ≥ 0: √λ₁ + √λ₂ = √(tr M + 2√det M)
        let (a, b): ([f64; 4], [f64; 4]) = ([2.0, 0.7, 0.7, 1.0], [1.0, -0.4, -0.4, 3.0]);
        let m = [
            a[0] * b[0] + a[1] * b[2],
            a[0] * b[1] + a[1] * b[3],
            a[2] * b[0] + a[3] * b[2],
            a[2] * b[1] + a[3] * b[3],
        ];
        let det = m[0] * m[3] - m[1] * m[2];
        let tr_sqrt = (m[0] + m[3] + 2.0 * det.sqrt()).sqrt();
        let want = 3.0 + 4.0 - 2.0 * tr_sqrt;
        let got = frechet_distance(
            &stats(vec![0.0; 2], a.to_vec()),
            &stats(vec![0.0; 2], b.to_vec()),
        )
        .unwrap();
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    }

    #[test]
    fn statistics_of_points_use_the_unbiased_covariance_and_round_trip() {
        let p = Points::new(4, 2, vec![0.0, 1.0, 2.0, 1.0, 4.0, 3.0, 2.0, 3.0]).unwrap();
        let s = GaussianStats::of(&p).unwrap();
        assert_eq!(s.mean, vec![2.0, 2.0]);
        // x: (−2, 0, 2, 0), y: (−1, −1, 1, 1) → var x = 8/3, var y = 4/3, cov = 4/3
        let want = [8.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0];
        for (g, w) in s.cov.iter().zip(want) {
            assert!((g - w).abs() < 1e-12);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.safetensors");
        s.save(&path).unwrap();
        assert_eq!(
            GaussianStats::load(&path).unwrap(),
            GaussianStats { count: 4, ..s }
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(GaussianStats::load(&path)
            .unwrap_err()
            .to_string()
            .contains("safetensors"));
        let one = Points::new(1, 2, vec![0.0, 0.0]).unwrap();
        assert!(GaussianStats::of(&one).is_err());
    }

    #[test]
    fn sample_statistics_of_two_gaussians_approach_their_distance() {
        // N(0, I) vs N(μ, 4I) in 3-D: d² = ‖μ‖² + 3·(1 − 2)² = 3 + 3
        use crate::rng::{normal, stream, Purpose};
        let mut r = stream(5, Purpose::Eval, 0);
        let n = 40_000;
        let a: Vec<f32> = (0..n * 3).map(|_| normal(&mut r) as f32).collect();
        let b: Vec<f32> = (0..n * 3)
            .map(|_| (1.0 + 2.0 * normal(&mut r)) as f32)
            .collect();
        let (sa, sb) = (
            GaussianStats::of(&Points::new(n, 3, a).unwrap()).unwrap(),
            GaussianStats::of(&Points::new(n, 3, b).unwrap()).unwrap(),
        );
        let d = frechet_distance(&sa, &sb).unwrap();
        assert!((d - 6.0).abs() < 0.1, "{d}");
    }
}
