//! A quadratic potential V(x) = ½ Σₖ aₖ (xₖ − μₖ)², the analytic reference case: ∇V = a ⊙ (x − μ),
//! ∇²V = diag(a), and its Boltzmann density exp(−V/ε) is the Gaussian N(μ, ε·diag(1/a)).

use burn::tensor::{Device, Tensor};

use super::Potential;
use crate::backend::{vector, Precision};

/// V(x) = ½ Σₖ aₖ (xₖ − μₖ)² with aₖ > 0.
#[derive(Debug, Clone)]
pub struct Quadratic {
    mean: Tensor<1>,
    stiffness: Tensor<1>,
}

impl Quadratic {
    /// A quadratic well at `mean` with curvatures `stiffness` (same length).
    pub fn new(mean: &[f64], stiffness: &[f64], device: &Device, p: Precision) -> Self {
        assert_eq!(mean.len(), stiffness.len());
        Self {
            mean: vector(mean.to_vec(), device, p),
            stiffness: vector(stiffness.to_vec(), device, p),
        }
    }
}

impl Potential for Quadratic {
    fn dim(&self) -> usize {
        self.mean.dims()[0]
    }

    fn device(&self) -> Device {
        self.mean.device()
    }

    fn energy(&self, x: Tensor<2>) -> Tensor<1> {
        self.energy_and_grad(x).0
    }

    fn energy_and_grad(&self, x: Tensor<2>) -> (Tensor<1>, Tensor<2>) {
        let diff = x - self.mean.clone().unsqueeze::<2>();
        let g = diff.clone() * self.stiffness.clone().unsqueeze::<2>();
        let v = (g.clone() * diff).sum_dim(1).mul_scalar(0.5);
        let b = v.dims()[0];
        (v.reshape([b]), g)
    }
}
