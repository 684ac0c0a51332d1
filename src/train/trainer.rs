//! The training loop state and one optimisation step.

use std::ops::Range;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::loss::{contrastive, flow_loss, trimmed_indices};
use super::negatives::{self, NegativesConfig};
use super::optim::{ema_update, Adam, OptimConfig};
use super::{Backprop, EnergyStats, FlowWeighting, TrainConfig};
use crate::backend::{from_points, scalar, to_f64_vec, vector_f32, Precision};
use crate::data::DataSource;
use crate::potential::{add_grads, Fused, FusedBackprop, Model};
use crate::rng::{normal, stream, uniform, Purpose, Rng};
use crate::sampler::GradField;
use crate::schedule::Schedule;
use crate::{EmError, Points, Result};

/// Models up to this input dimension run their autodiff training steps on [`serial_pool`]: for
/// point-sized models the tensor ops are tiny and one thread beats burn's threading (measured);
/// image networks use all threads.
const SERIAL_MAX_DIM: usize = 256;

/// A one-thread pool for the small autodiff tensor ops of a training step.
fn serial_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool")
    })
}

/// Training phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Flow matching only.
    Phase1,
    /// Flow matching plus the contrastive term.
    Phase2,
}

impl Phase {
    /// `phase1` / `phase2`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Phase1 => "phase1",
            Phase::Phase2 => "phase2",
        }
    }
}

/// What one step measured: the numbers an EBM practitioner watches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepStats {
    /// 1-based step over both phases.
    pub step: u64,
    /// Phase of this step.
    pub phase: Phase,
    /// Total loss.
    pub loss: f64,
    /// Flow-matching loss (unweighted by the phase-2 flow weight).
    pub flow_loss: f64,
    /// Contrastive term (phase 2), after the clamp.
    pub cd_loss: Option<f64>,
    /// Energies of the positive batch (phase 2).
    pub e_pos: Option<EnergyStats>,
    /// Energies of the negatives (phase 2).
    pub e_neg: Option<EnergyStats>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Everything that evolves during training (what a checkpoint stores besides the config).
#[derive(Debug, Clone)]
pub struct TrainerState<M: Model> {
    /// Current weights (untracked).
    pub model: M,
    /// EMA of the weights, flattened in canonical order (None when EMA is off).
    pub ema: Option<Vec<Tensor<1>>>,
    /// Adam moments.
    pub adam: Adam,
    /// Completed steps.
    pub step: u64,
}

/// A training run in memory: data, settings and state.
pub struct Trainer<M: Model> {
    /// The evolving state.
    pub state: TrainerState<M>,
    /// Loop settings.
    pub train: TrainConfig,
    /// Negative-sampler settings.
    pub negatives: NegativesConfig,
    /// Optimiser settings.
    pub optim: OptimConfig,
    /// ε(t), w(t).
    pub schedule: Schedule,
    /// Data distribution x₁.
    pub target: DataSource,
    /// Source distribution x₀.
    pub source: DataSource,
    /// Seed of every random stream.
    pub seed: u64,
    /// Float precision.
    pub precision: Precision,
}

impl<M: Model> Trainer<M> {
    /// Fresh optimiser state for `model`; EMA starts at the initial weights when enabled.
    pub fn fresh_state(model: M, optim: &OptimConfig) -> TrainerState<M> {
        let params = model.untracked().flat_params();
        TrainerState {
            adam: Adam::new(&params),
            ema: optim
                .ema_decay_phase1
                .or(optim.ema_decay_phase2)
                .map(|_| params.clone()),
            model: model.untracked(),
            step: 0,
        }
    }

    /// The phase of (1-based) step `step`.
    pub fn phase_of(&self, step: u64) -> Phase {
        if step <= self.train.phase1_steps {
            Phase::Phase1
        } else {
            Phase::Phase2
        }
    }

    /// True when every step is done.
    pub fn finished(&self) -> bool {
        self.state.step >= self.train.total_steps()
    }

    /// The model with EMA weights (or the raw weights when EMA is off).
    pub fn ema_model(&self) -> Result<M> {
        let mut m = self.state.model.clone();
        if let Some(e) = &self.state.ema {
            m.set_flat_params(e.clone())?;
        }
        Ok(m)
    }

    fn diverged(&self, step: u64, what: &str, value: f64) -> EmError {
        EmError::Diverged {
            step,
            phase: self.phase_of(step).name().into(),
            what: what.into(),
            value,
            last_good: String::new(),
        }
    }

    /// One flow-matching batch: (x_t, u, t).
    fn flow_batch(&self, rng: &mut Rng) -> Result<(Points, Points, Vec<f64>)> {
        let b = self.train.batch_size;
        let x0 = self.source.sample(b, rng);
        let x1 = self.target.sample(b, rng);
        let (x0, x1) = self.train.coupling.pair(&x0, &x1, rng)?;
        let d = x0.dim();
        let mut xt = Points::zeros(b, d);
        let mut u = Points::zeros(b, d);
        let mut ts = Vec::with_capacity(b);
        for i in 0..b {
            let t = uniform(rng);
            ts.push(t);
            for k in 0..d {
                let (a, c) = (x0.row(i)[k] as f64, x1.row(i)[k] as f64);
                xt.row_mut(i)[k] = ((1.0 - t) * a + t * c + self.train.sigma * normal(rng)) as f32;
                u.row_mut(i)[k] = (c - a) as f32;
            }
        }
        Ok((xt, u, ts))
    }

    /// Runs one optimisation step; on NaN/Inf it returns [`EmError::Diverged`] and leaves the
    /// state untouched (the weights are those of the last good step).
    ///
    /// The Langevin negatives run on all threads (independent chains); the autodiff tensor work
    /// runs on one thread, which is faster than burn's threading at these sizes (measured).
    pub fn step(&mut self) -> Result<StepStats> {
        let step = self.state.step + 1;
        let phase = self.phase_of(step);
        let mut rng = stream(self.seed, Purpose::TrainStep, step);
        let (xt, u, ts) = self.flow_batch(&mut rng)?;
        let weighted = match self.train.flow_weighting {
            FlowWeighting::Never => false,
            FlowWeighting::Phase2 => phase == Phase::Phase2,
            FlowWeighting::Always => true,
        };
        let w: Vec<f64> = ts
            .iter()
            .map(|&t| {
                if weighted {
                    self.schedule.flow_weight(t)
                } else {
                    1.0
                }
            })
            .collect();
        // one host copy of the weights serves the negatives and the fused gradient
        let fused = match (self.train.backprop, self.precision) {
            (Backprop::Fused, Precision::F32) => self.state.model.fused_backprop()?,
            _ => None,
        };
        let contrast = if phase == Phase::Phase2 {
            let n = self.negatives.batch.unwrap_or(self.train.batch_size);
            let pos = self.target.sample(self.train.batch_size, &mut rng);
            let owned;
            let field: &dyn GradField = match &fused {
                Some(host) => host,
                None => {
                    owned = self.state.model.host_field()?;
                    owned.as_ref()
                }
            };
            let setup = negatives::ChainSetup {
                target: &self.target,
                source: &self.source,
                seed: self.seed,
                step,
            };
            let neg =
                negatives::generate(field, &self.schedule, &self.negatives, n, &setup, &mut rng)?;
            Some((pos, neg))
        } else {
            None
        };
        self.update(step, phase, (&xt, &u, &w), contrast, fused)
    }

    /// The parameter update of one step, given its flow batch, (phase 2) positives/negatives,
    /// and the fused host form of the model when the fused backward pass is used.
    fn update(
        &mut self,
        step: u64,
        phase: Phase,
        flow: FlowBatch<'_>,
        contrast: Option<(Points, Points)>,
        fused: Option<Fused>,
    ) -> Result<StepStats> {
        let flow_weight = match phase {
            Phase::Phase1 => 1.0,
            Phase::Phase2 => self.train.flow_loss_weight,
        };
        let ev = match fused {
            Some(Fused::Mlp(host)) => self.evaluate_fused(&host, flow, flow_weight, contrast),
            Some(Fused::Conv(host)) => self.evaluate_fused(&host, flow, flow_weight, contrast),
            Some(Fused::UNetVit(host)) => {
                self.evaluate_fused(host.as_ref(), flow, flow_weight, contrast)
            }
            None if self.state.model.dim() <= SERIAL_MAX_DIM => {
                serial_pool().install(|| self.evaluate_autodiff(flow, flow_weight, contrast))
            }
            None => self.evaluate_autodiff(flow, flow_weight, contrast),
        };
        let cd_value = ev.cd.as_ref().map(|c| c.value);
        let loss = flow_weight * ev.flow + cd_value.map_or(0.0, |c| self.train.cd_weight * c);
        for (what, v) in [("loss", loss), ("flow loss", ev.flow)] {
            if !v.is_finite() {
                return Err(self.diverged(step, what, v));
            }
        }
        let e_pos = ev.cd.as_ref().map(|c| c.e_pos);
        let e_neg = ev.cd.as_ref().map(|c| c.e_neg);
        for (what, s) in [("positive energies", e_pos), ("negative energies", e_neg)] {
            if let Some(s) = s.filter(|s| !s.is_finite()) {
                return Err(self.diverged(step, what, s.mean));
            }
        }
        let norm = Adam::grad_norm(&ev.grads);
        if !norm.is_finite() {
            return Err(self.diverged(step, "gradient norm", norm));
        }
        let lr = self.optim.lr_at(step);
        let params = self.state.model.flat_params();
        let (new_params, report) = self.state.adam.step(params, ev.grads, &self.optim, lr);
        self.state.model.set_flat_params(new_params)?;
        let decay = match phase {
            Phase::Phase1 => self.optim.ema_decay_phase1,
            Phase::Phase2 => self.optim.ema_decay_phase2.or(self.optim.ema_decay_phase1),
        };
        if let (Some(ema), Some(d)) = (self.state.ema.as_mut(), decay) {
            ema_update(ema, &self.state.model.flat_params(), d);
        }
        self.state.step = step;
        Ok(StepStats {
            step,
            phase,
            loss,
            flow_loss: ev.flow,
            cd_loss: cd_value,
            e_pos,
            e_neg,
            grad_norm: report.grad_norm,
            lr,
        })
    }

    /// Loss terms and parameter gradients through burn's autodiff over the explicit ∇ₓV.
    fn evaluate_autodiff(
        &self,
        (xt, u, w): FlowBatch<'_>,
        flow_weight: f64,
        contrast: Option<(Points, Points)>,
    ) -> Evaluation {
        let device = self.state.model.device().autodiff();
        let p = self.precision;
        let tracked = self.state.model.tracked();
        let flow = flow_loss(
            &tracked,
            from_points(xt, &device, p),
            from_points(u, &device, p),
            w,
        );
        let flow_value = scalar(flow.clone());
        let mut cd = None;
        let mut loss = flow * flow_weight;
        if let Some((pos, neg)) = contrast {
            let ep = tracked.energy(from_points(&pos, &device, p));
            let en = tracked.energy(from_points(&neg, &device, p));
            let term = CdTerm::new(
                &to_f64_vec(ep.clone()),
                &to_f64_vec(en.clone()),
                &self.train,
            );
            // below the clamp the term is constant: it contributes no gradient
            let scale = if term.clamped {
                0.0
            } else {
                self.train.cd_weight
            };
            loss = loss + contrastive(ep, en, &term.kept) * scale;
            cd = Some(term);
        }
        let grads = loss.backward();
        Evaluation {
            flow: flow_value,
            cd,
            grads: tracked.flat_grads(&grads),
        }
    }

    /// The same loss terms and gradients by the fused host backward pass of a network.
    fn evaluate_fused<N: FusedBackprop>(
        &self,
        host: &N,
        (xt, u, w): FlowBatch<'_>,
        flow_weight: f64,
        contrast: Option<(Points, Points)>,
    ) -> Evaluation {
        let (b, d) = (xt.len(), xt.dim());
        // L_flow = mean_b w_b mean_d (g + u)²  ⇒  ∂L/∂g = 2 w_b (g + u) / (B·D), row by row
        let flow_seeds = |rows: Range<usize>, _: &[f32], g: &[f32]| {
            let mut d_grad = vec![0.0f32; g.len()];
            for (i, (gr, dr)) in rows.zip(g.chunks(d).zip(d_grad.chunks_mut(d))) {
                for ((dv, &gv), &uv) in dr.iter_mut().zip(gr).zip(u.row(i)) {
                    let r = gv as f64 + uv as f64;
                    *dv = (flow_weight * 2.0 * w[i] * r / (b * d) as f64) as f32;
                }
            }
            (None, Some(d_grad))
        };
        let streamed = host.param_grads_streamed(xt.as_slice(), b, flow_seeds);
        let mut grads = streamed.grads;
        let mut flow = 0.0;
        for (i, g) in streamed.input_grads.chunks(d).enumerate() {
            let row: f64 = g
                .iter()
                .zip(u.row(i))
                .map(|(&g, &u)| (g as f64 + u as f64).powi(2))
                .sum();
            flow += w[i] * row / d as f64;
        }
        flow /= b as f64;
        let mut cd = None;
        if let Some((pos, neg)) = contrast {
            let (np, nn) = (pos.len(), neg.len());
            let mut both = pos.as_slice().to_vec();
            both.extend_from_slice(neg.as_slice());
            // the CD term's seeds need every energy (trim, clamp): a forward pass first, then
            // the blocks streamed with fixed seeds
            let e: Vec<f64> = host
                .energies(&both, np + nn)
                .into_iter()
                .map(f64::from)
                .collect();
            let term = CdTerm::new(&e[..np], &e[np..], &self.train);
            let scale = if term.clamped {
                0.0
            } else {
                self.train.cd_weight
            };
            let mut d_energy = vec![(scale / np as f64) as f32; np];
            d_energy.resize(np + nn, 0.0);
            for &k in &term.kept {
                d_energy[np + k] = (-scale / term.kept.len() as f64) as f32;
            }
            let cd_grads = host.energy_param_grads_streamed(&both, np + nn, &d_energy);
            add_grads(&mut grads, cd_grads);
            cd = Some(term);
        }
        let device = self.state.model.device();
        Evaluation {
            flow,
            cd,
            grads: grads
                .into_iter()
                .map(|g| g.map(|g| vector_f32(g, &device)))
                .collect(),
        }
    }
}

/// A flow batch: x_t, the target velocities u, and the per-row weights w(t).
type FlowBatch<'a> = (&'a Points, &'a Points, &'a [f64]);

/// The loss terms of one step and the parameter gradient of their weighted sum.
struct Evaluation {
    /// Flow-matching loss (before the phase's flow weight).
    flow: f64,
    /// The contrastive term (phase 2).
    cd: Option<CdTerm>,
    /// ∂loss/∂θ, canonical order; `None` where the loss does not depend on a parameter.
    grads: Vec<Option<Tensor<1>>>,
}

/// The contrastive term of a phase-2 step, decided from the energies.
#[derive(Debug, Clone)]
struct CdTerm {
    /// Indices of the kept (untrimmed) negatives.
    kept: Vec<usize>,
    /// mean V⁺ − mean_kept V⁻, after the clamp.
    value: f64,
    /// True when the clamp is active (the term is constant: no gradient).
    clamped: bool,
    e_pos: EnergyStats,
    e_neg: EnergyStats,
}

impl CdTerm {
    fn new(e_pos: &[f64], e_neg: &[f64], train: &TrainConfig) -> Self {
        let kept = trimmed_indices(e_neg, train.cd_trim);
        let mean_pos = e_pos.iter().sum::<f64>() / e_pos.len() as f64;
        let mean_neg = kept.iter().map(|&k| e_neg[k]).sum::<f64>() / kept.len() as f64;
        let raw = mean_pos - mean_neg;
        let clamped = matches!(train.cd_clamp, Some(c) if raw < -c);
        Self {
            kept,
            value: if clamped {
                -train.cd_clamp.unwrap_or(0.0)
            } else {
                raw
            },
            clamped,
            e_pos: EnergyStats::of(e_pos),
            e_neg: EnergyStats::of(e_neg),
        }
    }
}
