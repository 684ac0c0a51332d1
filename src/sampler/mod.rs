//! Integrators for dx = −∇E(x) dt + √(2ε(t)) dW, where E = V + Σ extra terms, on host f32
//! buffers.
//!
//! Invariants: samplers never create entropy — sample *i* draws its start point and all its
//! noise from `rng::stream(seed, Sample, i)`, so it is the same whatever the batch or block it
//! is computed in; they build no autodiff tape. Blocks of rows are independent and run in
//! parallel (rayon), each with its own [`Scratch`].

mod energy_terms;
mod field;

pub use energy_terms::{EnergyTerm, QuadraticObservation};
pub use field::{rows_per_block, GradField, Scratch, TensorField};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
    /// Rows per block; blocks run in parallel.
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
            chunk: 256,
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
    /// The learned potential (its host form).
    pub field: &'a dyn GradField,
    /// Added energies (observations, guidance, interactions); they combine by summation.
    pub extra: &'a [&'a dyn EnergyTerm],
    /// Multiply the extra terms by ε(t)/ε_max, so that they act in the Langevin stage only
    /// (the reference's convention); otherwise they act with weight 1 at all times.
    pub extra_scaled_by_temperature: bool,
}

impl<'a> Drift<'a> {
    /// Only the potential.
    pub fn new(field: &'a dyn GradField) -> Self {
        Self {
            field,
            extra: &[],
            extra_scaled_by_temperature: false,
        }
    }

    /// ∇E at time t for `n` rows of `x` into `out`.
    pub fn grad(
        &self,
        x: &[f32],
        n: usize,
        t: f64,
        schedule: &Schedule,
        out: &mut [f32],
        s: &mut Scratch,
    ) {
        self.field.grad(x, n, out, s);
        let w = if self.extra_scaled_by_temperature && schedule.epsilon_max > 0.0 {
            schedule.temperature(t) / schedule.epsilon_max
        } else {
            1.0
        };
        if w != 0.0 {
            for term in self.extra {
                term.add_grad(x, n, self.field.dim(), w as f32, out);
            }
        }
    }
}

/// One in-place integration step of `n` rows at time `t`. `kick` is the scaled noise σ_b ξ_b
/// with σ_b = √(2 ε_b Δt) (rows may run at different temperatures, as split negatives do).
#[allow(clippy::too_many_arguments)]
pub fn step(
    drift: &Drift,
    schedule: &Schedule,
    kind: SamplerKind,
    x: &mut [f32],
    n: usize,
    t: f64,
    dt: f64,
    kick: Option<&[f32]>,
    s: &mut Scratch,
) {
    let len = n * drift.field.dim();
    let mut g = s.take(len);
    drift.grad(x, n, t, schedule, &mut g, s);
    let dt32 = dt as f32;
    if kind.heun() {
        let mut pred = s.take(len);
        for k in 0..len {
            pred[k] = x[k] - dt32 * g[k] + kick.map_or(0.0, |c| c[k]);
        }
        let mut g2 = s.take(len);
        drift.grad(&pred, n, t + dt, schedule, &mut g2, s);
        for k in 0..len {
            x[k] += -0.5 * dt32 * (g[k] + g2[k]) + kick.map_or(0.0, |c| c[k]);
        }
        s.give(pred);
        s.give(g2);
    } else {
        for k in 0..len {
            x[k] += -dt32 * g[k] + kick.map_or(0.0, |c| c[k]);
        }
    }
    s.give(g);
}

/// Everything [`sample`] needs besides the drift.
pub struct SampleRequest<'a> {
    /// Integration settings.
    pub config: &'a SamplerConfig,
    /// ε(t).
    pub schedule: Schedule,
    /// Draws one starting point from a generator (the source distribution x₀).
    pub source: &'a (dyn Fn(&mut Rng) -> Vec<f32> + Sync),
    /// Number of samples.
    pub n: usize,
    /// Base seed; sample i uses stream (seed, Sample, first_index + i).
    pub seed: u64,
    /// Index of the first sample (to draw a later slice of the same set).
    pub first_index: u64,
}

/// Called after every step of every block with (first row of the block, step index, time after
/// the step, the block's rows). Blocks run in parallel, so it must be `Sync`.
pub type Observer<'a> = dyn Fn(usize, usize, f64, &[f32]) + Sync + 'a;

fn sample_block(
    drift: &Drift,
    req: &SampleRequest,
    start: usize,
    len: usize,
    observer: &Observer,
) -> Result<Vec<f32>> {
    let dim = drift.field.dim();
    let mut rngs: Vec<Rng> = (0..len)
        .map(|i| {
            stream(
                req.seed,
                Purpose::Sample,
                req.first_index + (start + i) as u64,
            )
        })
        .collect();
    let mut x = Vec::with_capacity(len * dim);
    for r in rngs.iter_mut() {
        let p = (req.source)(r);
        if p.len() != dim {
            return Err(EmError::shape(
                "sampler source",
                format!("points of dimension {dim}"),
                format!("dimension {}", p.len()),
            ));
        }
        x.extend(p);
    }
    let mut scratch = Scratch::default();
    let mut kick = vec![0.0f32; len * dim];
    let cfg = req.config;
    for k in 0..cfg.steps() {
        let t = k as f64 * cfg.dt;
        let eps = if cfg.kind.stochastic() {
            req.schedule.temperature(t)
        } else {
            0.0
        };
        let noisy = eps > 0.0;
        if noisy {
            let sigma = (2.0 * eps * cfg.dt).sqrt() as f32;
            for (r, row) in rngs.iter_mut().zip(kick.chunks_mut(dim)) {
                fill_normal(r, row);
                row.iter_mut().for_each(|v| *v *= sigma);
            }
        }
        step(
            drift,
            &req.schedule,
            cfg.kind,
            &mut x,
            len,
            t,
            cfg.dt,
            noisy.then_some(&kick[..]),
            &mut scratch,
        );
        observer(start, k, t + cfg.dt, &x);
    }
    if let Some([lo, hi]) = cfg.clamp {
        x.iter_mut()
            .for_each(|v| *v = v.clamp(lo as f32, hi as f32));
    }
    Ok(x)
}

/// Integrates `n` points from the source to time T in parallel blocks; returns the final points.
pub fn sample(drift: &Drift, req: &SampleRequest, observer: &Observer) -> Result<Points> {
    req.config.validate()?;
    if req.n == 0 {
        return Err(EmError::invalid("n", "at least 1 sample", 0));
    }
    let dim = drift.field.dim();
    let starts: Vec<usize> = (0..req.n).step_by(req.config.chunk).collect();
    let blocks: Vec<Result<Vec<f32>>> = starts
        .par_iter()
        .map(|&s| sample_block(drift, req, s, req.config.chunk.min(req.n - s), observer))
        .collect();
    let mut out = Vec::with_capacity(req.n * dim);
    for b in blocks {
        out.extend(b?);
    }
    let pts = Points::new(req.n, dim, out)?;
    pts.check_finite("samples")?;
    Ok(pts)
}

/// Records every `every`-th state of the first `keep` samples (block starting at row 0).
pub struct TrajectoryRecorder {
    /// Record every this many steps.
    pub every: usize,
    /// Number of samples to follow.
    pub keep: usize,
    /// (time, points) snapshots.
    pub frames: std::sync::Mutex<Vec<(f64, Points)>>,
}

impl TrajectoryRecorder {
    /// A recorder following `keep` samples every `every` steps.
    pub fn new(every: usize, keep: usize) -> Self {
        Self {
            every: every.max(1),
            keep,
            frames: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Observer hook: call from the [`sample`] observer.
    pub fn observe(&self, block_start: usize, k: usize, t: f64, x: &[f32], dim: usize) {
        if block_start != 0 || !(k + 1).is_multiple_of(self.every) {
            return;
        }
        let rows = self.keep.min(x.len() / dim);
        if let (Ok(p), Ok(mut f)) = (
            Points::new(rows, dim, x[..rows * dim].to_vec()),
            self.frames.lock(),
        ) {
            f.push((t, p));
        }
    }

    /// The recorded frames.
    pub fn into_frames(self) -> Vec<(f64, Points)> {
        self.frames.into_inner().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
