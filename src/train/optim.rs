//! Adam (PyTorch's update rule), linear learning-rate warm-up, global gradient-norm clipping,
//! and an exponential moving average of the weights — all on flattened parameter tensors.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::scalar;

/// Optimiser settings (the `[optim]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Steps of linear warm-up from 0 to `lr` (0 = none).
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value (`None` = no clipping).
    pub grad_clip: Option<f64>,
    /// EMA decay during phase 1 (`None` = no EMA).
    pub ema_decay_phase1: Option<f64>,
    /// EMA decay during phase 2 (`None` = keep phase 1's).
    pub ema_decay_phase2: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            grad_clip: None,
            ema_decay_phase1: None,
            ema_decay_phase2: None,
        }
    }
}

impl OptimConfig {
    /// The learning rate at (1-based) step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (step.min(self.warmup_steps) as f64 / self.warmup_steps as f64)
        }
    }
}

/// Adam moments for each parameter and the number of updates taken.
#[derive(Debug, Clone)]
pub struct Adam {
    /// First moments.
    pub m: Vec<Tensor<1>>,
    /// Second moments.
    pub v: Vec<Tensor<1>>,
    /// Updates applied so far (bias correction uses it).
    pub t: u64,
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl Adam {
    /// Zero moments shaped like `params`.
    pub fn new(params: &[Tensor<1>]) -> Self {
        Self {
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
            t: 0,
        }
    }

    /// Global L2 norm of the gradients (missing gradients count as zero).
    pub fn grad_norm(grads: &[Option<Tensor<1>>]) -> f64 {
        grads
            .iter()
            .flatten()
            .map(|g| scalar(g.clone().powi_scalar(2).sum()))
            .sum::<f64>()
            .sqrt()
    }

    /// One Adam update with learning rate `lr`, after clipping to `clip` if given.
    /// Returns the new parameters; a missing gradient is treated as zero (as PyTorch skips it,
    /// its moments and the parameter are left unchanged).
    pub fn step(
        &mut self,
        params: Vec<Tensor<1>>,
        grads: Vec<Option<Tensor<1>>>,
        cfg: &OptimConfig,
        lr: f64,
    ) -> (Vec<Tensor<1>>, StepReport) {
        let grad_norm = Self::grad_norm(&grads);
        let clip_scale = match cfg.grad_clip {
            Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
            _ => 1.0,
        };
        self.t += 1;
        let bc1 = 1.0 - cfg.beta1.powi(self.t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(self.t as i32);
        let step_size = lr / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        let mut out = Vec::with_capacity(params.len());
        for (k, (p, g)) in params.into_iter().zip(grads).enumerate() {
            let Some(g) = g else {
                out.push(p);
                continue;
            };
            let g = if clip_scale != 1.0 { g * clip_scale } else { g };
            let m = self.m[k].clone() * cfg.beta1 + g.clone() * (1.0 - cfg.beta1);
            let v = self.v[k].clone() * cfg.beta2 + g.powi_scalar(2) * (1.0 - cfg.beta2);
            // PyTorch: p -= (lr / bc1) · m / (√v / √bc2 + eps)
            let denom = v.clone().sqrt() * inv_sqrt_bc2 + cfg.eps;
            out.push(p - (m.clone() / denom) * step_size);
            self.m[k] = m;
            self.v[k] = v;
        }
        (out, StepReport { grad_norm, lr })
    }
}

/// ema ← decay·ema + (1 − decay)·params.
pub fn ema_update(ema: &mut [Tensor<1>], params: &[Tensor<1>], decay: f64) {
    for (e, p) in ema.iter_mut().zip(params) {
        *e = e.clone() * decay + p.clone() * (1.0 - decay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{cpu, to_f64_vec, vector, Precision};

    #[test]
    fn adam_matches_hand_computed_pytorch_steps() {
        // One parameter, constant gradient g: after step 1, Δ = −lr·g/(|g| + eps·√bc2/…) ≈ −lr·sign(g).
        let dev = cpu();
        let cfg = OptimConfig {
            lr: 0.1,
            ..OptimConfig::default()
        };
        let p = vec![vector(vec![1.0, -2.0], &dev, Precision::F64)];
        let mut adam = Adam::new(&p);
        let g = || vec![Some(vector(vec![0.5, -3.0], &dev, Precision::F64))];
        let (p1, rep) = adam.step(p, g(), &cfg, cfg.lr);
        assert!((rep.grad_norm - (0.25f64 + 9.0).sqrt()).abs() < 1e-12);
        let v1 = to_f64_vec(p1[0].clone());
        // m̂ = g, v̂ = g² ⇒ update = lr·g/(|g| + eps)
        assert!((v1[0] - (1.0 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-12);
        assert!((v1[1] - (-2.0 + 0.1 * 3.0 / (3.0 + 1e-8))).abs() < 1e-12);
        // second step with the same gradient: bias-corrected moments are still g and g²
        let (p2, _) = adam.step(p1, g(), &cfg, cfg.lr);
        let v2 = to_f64_vec(p2[0].clone());
        assert!((v2[0] - (v1[0] - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-10);
    }

    #[test]
    fn clipping_limits_the_effective_gradient() {
        let dev = cpu();
        let cfg = OptimConfig {
            lr: 1.0,
            grad_clip: Some(1.0),
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            ..OptimConfig::default()
        };
        let p = vec![vector(vec![0.0], &dev, Precision::F64)];
        let mut adam = Adam::new(&p);
        let (_, rep) = adam.step(
            p,
            vec![Some(vector(vec![10.0], &dev, Precision::F64))],
            &cfg,
            1.0,
        );
        assert_eq!(rep.grad_norm, 10.0);
        // with β₁ = 0 the first moment is the clipped gradient itself
        assert!((to_f64_vec(adam.m[0].clone())[0] - 10.0 / (10.0 + 1e-6)).abs() < 1e-9);
    }

    #[test]
    fn warmup_is_linear_and_missing_gradients_freeze_parameters() {
        let cfg = OptimConfig {
            lr: 1.0,
            warmup_steps: 4,
            ..OptimConfig::default()
        };
        assert_eq!(cfg.lr_at(1), 0.25);
        assert_eq!(cfg.lr_at(4), 1.0);
        assert_eq!(cfg.lr_at(100), 1.0);
        let dev = cpu();
        let p = vec![vector(vec![3.0], &dev, Precision::F64)];
        let mut adam = Adam::new(&p);
        let (q, _) = adam.step(p, vec![None], &cfg, 1.0);
        assert_eq!(to_f64_vec(q[0].clone()), vec![3.0]);
    }

    #[test]
    fn ema_moves_toward_parameters() {
        let dev = cpu();
        let mut e = vec![vector(vec![0.0], &dev, Precision::F64)];
        ema_update(&mut e, &[vector(vec![1.0], &dev, Precision::F64)], 0.9);
        assert!((to_f64_vec(e[0].clone())[0] - 0.1).abs() < 1e-12);
    }
}
