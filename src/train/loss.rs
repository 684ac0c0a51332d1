//! The two loss terms as tensor expressions over the explicit ∇ₓV.

use burn::tensor::Tensor;

use crate::backend::{vector, Precision};
use crate::potential::Potential;

/// Flow-matching loss mean_b w_b · mean_d (−∇ₓV(x_t) − u)²_bd (an MSE when w ≡ 1).
///
/// # Shapes
/// `xt, u: [B, D]`, `weights: B values` → scalar `[1]`.
pub fn flow_loss(
    potential: &dyn Potential,
    xt: Tensor<2>,
    u: Tensor<2>,
    weights: &[f64],
) -> Tensor<1> {
    let [b, d] = xt.dims();
    let g = potential.grad(xt);
    // (−g − u)² = (g + u)²; mean over coordinates via multiplication by 1/D (exact in f64 autodiff)
    let per_sample = (g + u).powi_scalar(2).sum_dim(1).reshape([b]) * (1.0 / d as f64);
    let precision = if per_sample.dtype() == burn::tensor::DType::F64 {
        Precision::F64
    } else {
        Precision::F32
    };
    let w = vector(weights.to_vec(), &per_sample.device(), precision);
    (per_sample * w).sum() * (1.0 / b as f64)
}

/// Indices of the negatives kept by a trimmed mean that drops the `trim` fraction with the
/// highest energy (at least one is kept).
pub fn trimmed_indices(energies: &[f64], trim: f64) -> Vec<usize> {
    let n = energies.len();
    let keep = ((n as f64) * (1.0 - trim)).round().clamp(1.0, n as f64) as usize;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| energies[a].total_cmp(&energies[b]));
    idx.truncate(keep);
    idx.sort_unstable();
    idx
}

/// The contrastive term mean V(x⁺) − mean_kept V(x⁻), and its value, given per-point energies.
/// `mask` has 1 on kept negatives and 0 on trimmed ones.
pub fn contrastive(e_pos: Tensor<1>, e_neg: Tensor<1>, kept: &[usize]) -> Tensor<1> {
    let n = e_neg.dims()[0];
    let b = e_pos.dims()[0];
    let mut m = vec![0.0; n];
    for &i in kept {
        m[i] = 1.0;
    }
    let precision = if e_neg.dtype() == burn::tensor::DType::F64 {
        Precision::F64
    } else {
        Precision::F32
    };
    let mask = vector(m, &e_neg.device(), precision);
    e_pos.sum() * (1.0 / b as f64) - (e_neg * mask).sum() * (1.0 / kept.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::{cpu, matrix, scalar, vector, Precision};
    use crate::potential::Quadratic;

    #[test]
    fn flow_loss_of_a_quadratic_is_the_hand_computed_weighted_mse() {
        // V = ½‖x‖² ⇒ −∇V(x) = −x; rows x = (1, 2), (0, −1); u = (0, 0), (1, 1)
        // per-row mean squared error: ((−1)² + (−2)²)/2 = 2.5 and ((−1)² + (0)²)/2 = 0.5
        let dev = cpu();
        let q = Quadratic::new(&[0.0, 0.0], &[1.0, 1.0], &dev, Precision::F64);
        let x = matrix(vec![1.0, 2.0, 0.0, -1.0], 2, 2, &dev, Precision::F64);
        let u = matrix(vec![0.0, 0.0, 1.0, 1.0], 2, 2, &dev, Precision::F64);
        assert!((scalar(flow_loss(&q, x.clone(), u.clone(), &[1.0, 1.0])) - 1.5).abs() < 1e-12);
        // w = (0.5, 0): (0.5·2.5 + 0)/2
        assert!((scalar(flow_loss(&q, x, u, &[0.5, 0.0])) - 0.625).abs() < 1e-12);
    }

    #[test]
    fn contrastive_term_uses_the_kept_negatives_only() {
        let dev = cpu();
        let pos = vector(vec![1.0, 3.0], &dev, Precision::F64);
        let neg = vector(vec![0.0, 10.0, 2.0], &dev, Precision::F64);
        // mean V⁺ = 2; kept negatives {0, 2}: mean 1 ⇒ 1
        assert!((scalar(contrastive(pos, neg, &[0, 2])) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn trimming_drops_the_highest_energies() {
        let e = [0.5, 9.0, -1.0, 3.0, 7.0];
        assert_eq!(trimmed_indices(&e, 0.0), vec![0, 1, 2, 3, 4]);
        assert_eq!(trimmed_indices(&e, 0.4), vec![0, 2, 3]);
        assert_eq!(trimmed_indices(&e, 0.99), vec![2]);
    }
}
