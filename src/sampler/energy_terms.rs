//! Extra energies added to V during sampling: E(x) = V(x) + Σ terms. Each term gives its value
//! and adds its input gradient; terms combine only by summation.

/// An additive energy term over rows of `dim` values.
pub trait EnergyTerm: Sync {
    /// Its value for each of the `n` rows into `out`.
    fn energy(&self, x: &[f32], n: usize, dim: usize, out: &mut [f32]);
    /// Adds `weight · ∇term` to `out` (`n · dim` values).
    fn add_grad(&self, x: &[f32], n: usize, dim: usize, weight: f32, out: &mut [f32]);
}

/// An observation of selected coordinates, y = x[mask] + noise of std σ_y:
/// E(x) = strength · Σ_{k∈mask} (x_k − y_k)² / (2σ_y²) — inpainting in its simplest form.
pub struct QuadraticObservation {
    /// 1 on observed coordinates, 0 elsewhere (`dim` values).
    pub mask: Vec<f32>,
    /// Observed values (anything on unobserved coordinates).
    pub y: Vec<f32>,
    /// Noise scale σ_y > 0.
    pub sigma: f32,
    /// Guidance strength.
    pub strength: f32,
}

impl EnergyTerm for QuadraticObservation {
    fn energy(&self, x: &[f32], n: usize, dim: usize, out: &mut [f32]) {
        let c = self.strength / (2.0 * self.sigma * self.sigma);
        for (o, row) in out.iter_mut().zip(x.chunks(dim)).take(n) {
            *o = c * row
                .iter()
                .zip(&self.y)
                .zip(&self.mask)
                .map(|((a, y), m)| m * (a - y) * (a - y))
                .sum::<f32>();
        }
    }

    fn add_grad(&self, x: &[f32], n: usize, dim: usize, weight: f32, out: &mut [f32]) {
        let c = weight * self.strength / (self.sigma * self.sigma);
        for (orow, row) in out.chunks_mut(dim).zip(x.chunks(dim)).take(n) {
            for k in 0..dim {
                orow[k] += c * self.mask[k] * (row[k] - self.y[k]);
            }
        }
    }
}
