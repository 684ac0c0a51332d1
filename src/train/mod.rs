//! Training: phase 1 (flow matching on −∇V) and phase 2 (plus the contrastive term with
//! Langevin negatives), Adam with warm-up/clip/EMA. The loop reports through return values;
//! logging, progress bars and checkpoint writing are the caller's.

pub mod loss;
pub mod negatives;
pub mod optim;
mod trainer;

pub use negatives::{NegativesConfig, TimeMode};
pub use optim::OptimConfig;
pub use trainer::{Phase, StepStats, Trainer, TrainerState};

use serde::{Deserialize, Serialize};

use crate::coupling::Coupling;

/// When the flow loss is weighted by w(t).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowWeighting {
    /// Never (w ≡ 1).
    Never,
    /// In phase 2 only (the toy tutorial).
    Phase2,
    /// In both phases.
    Always,
}

/// How a training step computes its parameter gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backprop {
    /// The hand-derived f32 host backward pass ([`crate::potential::FusedBackprop`]) where the
    /// model has one (MLPs, conv nets and the UNet → ViT on the CPU at f32 precision); autodiff otherwise.
    Fused,
    /// burn's first-order autodiff over the explicit ∇ₓV (any model, any precision).
    Autodiff,
}

/// Training-loop settings (the `[train]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Pairs per flow batch (and positives / negatives per phase-2 step).
    pub batch_size: usize,
    /// Phase-1 steps (flow matching only).
    pub phase1_steps: u64,
    /// Phase-2 steps (flow + contrastive term).
    pub phase2_steps: u64,
    /// Std σ of the Gaussian perturbation of x_t (the toy tutorial: 0.1; images: 0).
    pub sigma: f64,
    /// When w(t) multiplies the flow loss.
    pub flow_weighting: FlowWeighting,
    /// Weight of the flow loss in phase 2 (phase 1 uses 1).
    pub flow_loss_weight: f64,
    /// Weight λ_cd of the contrastive term in phase 2.
    pub cd_weight: f64,
    /// Clamp c: the contrastive term is max(mean V⁺ − mean V⁻, −c). `None` = no clamp.
    pub cd_clamp: Option<f64>,
    /// Fraction of the highest negative energies dropped from their mean (0 = plain mean).
    pub cd_trim: f64,
    /// How x₀ and x₁ are paired.
    pub coupling: Coupling,
    /// How the parameter gradient is computed (same numbers up to f32 rounding).
    pub backprop: Backprop,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            phase1_steps: 20_000,
            phase2_steps: 2_000,
            sigma: 0.1,
            flow_weighting: FlowWeighting::Phase2,
            flow_loss_weight: 1.0,
            cd_weight: 2.0,
            cd_clamp: None,
            cd_trim: 0.0,
            coupling: Coupling {
                resample: true,
                ..Coupling::default()
            },
            backprop: Backprop::Fused,
        }
    }
}

impl TrainConfig {
    /// Total steps over both phases.
    pub fn total_steps(&self) -> u64 {
        self.phase1_steps + self.phase2_steps
    }

    /// Checks sizes and weights, naming the offending key.
    pub fn validate(&self) -> crate::Result<()> {
        let bad =
            |key: &str, reason: String| Err(crate::EmError::config(format!("train.{key}"), reason));
        if self.batch_size < 2 {
            return bad(
                "batch_size",
                format!("expected at least 2, found {}", self.batch_size),
            );
        }
        if !(self.sigma >= 0.0 && self.sigma.is_finite()) {
            return bad(
                "sigma",
                format!("expected a finite value >= 0, found {}", self.sigma),
            );
        }
        if !(0.0..1.0).contains(&self.cd_trim) {
            return bad(
                "cd_trim",
                format!("expected a fraction in [0, 1), found {}", self.cd_trim),
            );
        }
        if let Some(c) = self.cd_clamp {
            if !(c.is_finite() && c >= 0.0) {
                return bad("cd_clamp", format!("expected a value >= 0, found {c}"));
            }
        }
        if self.total_steps() == 0 {
            return bad(
                "phase1_steps",
                "expected phase1_steps + phase2_steps >= 1, found 0".into(),
            );
        }
        Ok(())
    }
}

/// mean / min / max / std of a set of energies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EnergyStats {
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Standard deviation (population).
    pub std: f64,
}

impl EnergyStats {
    /// Statistics of `v` (must be non-empty).
    pub fn of(v: &[f64]) -> Self {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean,
            min: v.iter().cloned().fold(f64::INFINITY, f64::min),
            max: v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            std: var.sqrt(),
        }
    }

    /// True when every field is finite.
    pub fn is_finite(&self) -> bool {
        self.mean.is_finite()
            && self.min.is_finite()
            && self.max.is_finite()
            && self.std.is_finite()
    }
}
