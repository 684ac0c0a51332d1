//! Extra energies added to V during sampling: E(x) = V(x) + Σ terms. Each term gives its value
//! and its input gradient; terms combine only by summation.

use burn::tensor::Tensor;

/// An additive energy term over a batch.
pub trait EnergyTerm {
    /// Its value per row, `[B]`.
    fn energy(&self, x: Tensor<2>) -> Tensor<1>;
    /// Its gradient, `[B, D]`.
    fn grad(&self, x: Tensor<2>) -> Tensor<2>;
}

/// An observation of selected coordinates, y = x[mask] + noise of std σ_y:
/// E(x) = Σ_{k∈mask} (x_k − y_k)² / (2σ_y²) · strength (inpainting in its simplest form).
pub struct QuadraticObservation {
    /// 1 on observed coordinates, 0 elsewhere, `[1, D]`.
    pub mask: Tensor<2>,
    /// Observed values (anything on unobserved coordinates), `[1, D]`.
    pub y: Tensor<2>,
    /// Noise scale σ_y > 0.
    pub sigma: f64,
    /// Guidance strength.
    pub strength: f64,
}

impl EnergyTerm for QuadraticObservation {
    fn energy(&self, x: Tensor<2>) -> Tensor<1> {
        let r = (x - self.y.clone()) * self.mask.clone();
        let e = r.powi_scalar(2).sum_dim(1) * (self.strength / (2.0 * self.sigma * self.sigma));
        let b = e.dims()[0];
        e.reshape([b])
    }

    fn grad(&self, x: Tensor<2>) -> Tensor<2> {
        (x - self.y.clone()) * self.mask.clone() * (self.strength / (self.sigma * self.sigma))
    }
}
