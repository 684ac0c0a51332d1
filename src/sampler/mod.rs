//! Integrators for dx = −∇E(x) dt + √(2ε(t)) dW, where E = V + Σ extra terms.
//!
//! Invariants: samplers never create entropy — sample *i* draws its start point and all its
//! noise from `rng::stream(seed, Sample, i)`, so it is the same whatever the batch or chunk
//! it is computed in; they run on plain (untracked) tensors, so no autodiff tape is built.

mod energy_terms;

pub use energy_terms::{EnergyTerm, QuadraticObservation};

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::{from_points, to_points, Precision};
use crate::potential::Potential;
use crate::rng::{fill_normal, stream, Purpose, Rng};
use crate::schedule::Schedule;
use crate::{EmError, Points, Result};

/// The integration rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Euler–Maruyama: x ← x − Δt ∇E(x) + √(2ε(t)Δt) ξ.
    EulerMaruyama,
    /// Stochastic Heun (Euler–Heun): predictor x̃ = x − Δt∇E(x) + σξ, then
    /// x ← x − Δt/2 (∇E(x) + ∇E(x̃)) + σξ with the same ξ.
    Heun,
    /// Deterministic gradient flow (ε ≡ 0), Euler steps.
    FlowEuler,
    /// Deterministic gradient flow (ε ≡ 0), Heun steps.
    FlowHeun,
}

impl SamplerKind {
    fn stochastic(self) -> bool {
        matches!(self, SamplerKind::EulerMaruyama | SamplerKind::Heun)
    }
    fn heun(self) -> bool {
        matches!(self, SamplerKind::Heun | SamplerKind::FlowHeun)
    }
}

/// Sampler settings (the `[sample]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Integration rule.
    pub kind: SamplerKind,
    /// Step size Δt > 0.
    pub dt: f64,
    /// End time T ≥ 0 (steps = round(T/Δt)).
    pub t_end: f64,
    /// Points integrated at once.
    pub chunk: usize,
    /// Clamp the final samples to [lo, hi] (images use [−1, 1]).
    pub clamp: Option<[f64; 2]>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            kind: SamplerKind::EulerMaruyama,
            dt: 0.01,
            t_end: 2.6,
            chunk: 1024,
            clamp: None,
        }
    }
}

impl SamplerConfig {
    /// Checks Δt, T and the chunk size.
    pub fn validate(&self) -> Result<()> {
        if !(self.dt > 0.0 && self.dt.is_finite()) {
            return Err(EmError::invalid("dt", "a finite value > 0", self.dt));
        }
        if !(self.t_end >= 0.0 && self.t_end.is_finite()) {
            return Err(EmError::invalid("t_end", "a finite value >= 0", self.t_end));
        }
        if self.chunk == 0 {
            return Err(EmError::invalid("chunk", "at least 1", 0));
        }
        Ok(())
    }

    /// Number of integration steps.
    pub fn steps(&self) -> usize {
        (self.t_end / self.dt).round() as usize
    }
}

/// The drift field −∇E with E = V + Σ extra terms.
pub struct Drift<'a> {
    /// The learned potential.
    pub potential: &'a dyn Potential,
    /// Added energies (observations, guidance, interactions).
    pub extra: &'a [&'a dyn EnergyTerm],
    /// Multiply the extra terms by ε(t)/ε_max, so that they act in the Langevin stage only
    /// (the reference's convention); otherwise they act with weight 1 at all times.
    pub extra_scaled_by_temperature: bool,
}

impl<'a> Drift<'a> {
    /// Only the potential.
    pub fn new(potential: &'a dyn Potential) -> Self {
        Self {
            potential,
            extra: &[],
            extra_scaled_by_temperature: false,
        }
    }

    /// ∇E(x) at time t.
    pub fn grad(&self, x: Tensor<2>, t: f64, schedule: &Schedule) -> Tensor<2> {
        let mut g = self.potential.grad(x.clone());
        let w = if self.extra_scaled_by_temperature && schedule.epsilon_max > 0.0 {
            schedule.temperature(t) / schedule.epsilon_max
        } else {
            1.0
        };
        if w != 0.0 {
            for term in self.extra {
                g = g + term.grad(x.clone()) * w;
            }
        }
        g
    }
}

/// Per-row standard normal noise drawn from each row's own generator.
pub fn row_noise(rngs: &mut [Rng], dim: usize, like: &Tensor<2>) -> Tensor<2> {
    let mut buf = vec![0.0f32; rngs.len() * dim];
    for (r, chunk) in rngs.iter_mut().zip(buf.chunks_mut(dim)) {
        fill_normal(r, chunk);
    }
    let p = Points::new(rngs.len(), dim, buf).expect("rows·dim values");
    from_points(&p, &like.device(), precision_of(like))
}

fn precision_of(t: &Tensor<2>) -> Precision {
    if t.dtype() == burn::tensor::DType::F64 {
        Precision::F64
    } else {
        Precision::F32
    }
}

/// One integration step at time `t` for every row. `kick` is the scaled noise σ_b ξ_b,
/// σ_b = √(2 ε_b Δt) (rows may run at different temperatures, as split negatives do).
pub fn step(
    drift: &Drift,
    schedule: &Schedule,
    kind: SamplerKind,
    x: Tensor<2>,
    t: f64,
    dt: f64,
    kick: Option<Tensor<2>>,
) -> Tensor<2> {
    let g = drift.grad(x.clone(), t, schedule);
    let euler = match &kick {
        Some(k) => x.clone() - g.clone() * dt + k.clone(),
        None => x.clone() - g.clone() * dt,
    };
    if !kind.heun() {
        return euler;
    }
    let g2 = drift.grad(euler, t + dt, schedule);
    let avg = (g + g2) * (0.5 * dt);
    match kick {
        Some(k) => x - avg + k,
        None => x - avg,
    }
}

/// Everything [`sample`] needs besides the potential.
pub struct SampleRequest<'a> {
    /// Integration settings.
    pub config: &'a SamplerConfig,
    /// ε(t).
    pub schedule: Schedule,
    /// Draws one starting point from a generator (the source distribution x₀).
    pub source: &'a dyn Fn(&mut Rng) -> Vec<f32>,
    /// Number of samples.
    pub n: usize,
    /// Base seed; sample i uses stream (seed, Sample, first_index + i).
    pub seed: u64,
    /// Index of the first sample (to draw a later slice of the same set).
    pub first_index: u64,
    /// Float precision of the computation.
    pub precision: Precision,
}

/// Called after every step with (chunk start, step index, time after the step, state).
pub type Observer<'a> = dyn FnMut(usize, usize, f64, &Tensor<2>) + 'a;

/// Integrates `n` points from the source to time T, in chunks. Returns the final points.
pub fn sample(drift: &Drift, req: &SampleRequest, observer: &mut Observer) -> Result<Points> {
    req.config.validate()?;
    if req.n == 0 {
        return Err(EmError::invalid("n", "at least 1 sample", 0));
    }
    let dim = drift.potential.dim();
    let device = crate::backend::cpu();
    let steps = req.config.steps();
    let mut out = Vec::with_capacity(req.n * dim);
    let mut start = 0;
    while start < req.n {
        let len = req.config.chunk.min(req.n - start);
        let mut rngs: Vec<Rng> = (0..len)
            .map(|i| {
                stream(
                    req.seed,
                    Purpose::Sample,
                    req.first_index + (start + i) as u64,
                )
            })
            .collect();
        let mut init = Vec::with_capacity(len * dim);
        for r in rngs.iter_mut() {
            let p = (req.source)(r);
            if p.len() != dim {
                return Err(EmError::shape(
                    "sampler source",
                    format!("points of dimension {dim}"),
                    format!("dimension {}", p.len()),
                ));
            }
            init.extend(p);
        }
        let mut x = from_points(&Points::new(len, dim, init)?, &device, req.precision);
        for k in 0..steps {
            let t = k as f64 * req.config.dt;
            let eps = if req.config.kind.stochastic() {
                req.schedule.temperature(t)
            } else {
                0.0
            };
            let kick = (eps > 0.0)
                .then(|| row_noise(&mut rngs, dim, &x) * (2.0 * eps * req.config.dt).sqrt());
            x = step(
                drift,
                &req.schedule,
                req.config.kind,
                x,
                t,
                req.config.dt,
                kick,
            );
            observer(start, k, t + req.config.dt, &x);
        }
        if let Some([lo, hi]) = req.config.clamp {
            x = x.clamp(lo, hi);
        }
        out.extend(to_points(x)?.into_vec());
        start += len;
    }
    let pts = Points::new(req.n, dim, out)?;
    pts.check_finite("samples")?;
    Ok(pts)
}

/// Records every `every`-th state of the first `keep` samples of the first chunk.
pub struct TrajectoryRecorder {
    /// Record every this many steps.
    pub every: usize,
    /// Number of samples to follow.
    pub keep: usize,
    /// (time, points) snapshots.
    pub frames: Vec<(f64, Points)>,
}

impl TrajectoryRecorder {
    /// A recorder following `keep` samples every `every` steps (the start is added by the caller).
    pub fn new(every: usize, keep: usize) -> Self {
        Self {
            every: every.max(1),
            keep,
            frames: Vec::new(),
        }
    }

    /// Observer hook: call from the [`sample`] observer.
    pub fn observe(&mut self, chunk_start: usize, k: usize, t: f64, x: &Tensor<2>) {
        if chunk_start != 0 || !(k + 1).is_multiple_of(self.every) {
            return;
        }
        let [b, _] = x.dims();
        let rows = self.keep.min(b);
        if let Ok(p) = to_points(x.clone().slice(0..rows)) {
            self.frames.push((t, p));
        }
    }
}

#[cfg(test)]
mod tests;
