//! Langevin negatives for the contrastive term: chains run on the untracked potential (no
//! autodiff tape), and their end points are treated as constants by the parameter update.

use serde::{Deserialize, Serialize};

use crate::backend::{from_points, to_points, Precision};
use crate::data::DataSource;
use crate::potential::Potential;
use crate::rng::{fill_normal, Rng};
use crate::sampler::{step, Drift, SamplerKind};
use crate::schedule::Schedule;
use crate::{Points, Result};

/// How chain time advances inside the negative sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// The toy tutorial: t_k = t_start + (1 − t_start)(k + 1)/n_gibbs, with t_start = 0 for
    /// noise-started and 1 for data-started chains (noise chains sweep [0, 1]).
    SweepToOne,
    /// The image code: t_k = k·Δt for noise-started chains; data-started chains run at ε_max,
    /// or on the same t_k when `same_temperature_schedule` is set.
    Linear,
}

/// Negative-sampler settings (the `[negatives]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NegativesConfig {
    /// Langevin steps per chain.
    pub n_gibbs: usize,
    /// Step size of the chains.
    pub dt: f64,
    /// Half the chains start at data, half at the source distribution; otherwise all at the source.
    pub split: bool,
    /// Chain-time rule.
    pub time_mode: TimeMode,
    /// With `linear` time: data-started chains follow the same schedule as noise-started ones.
    pub same_temperature_schedule: bool,
    /// Clamp the chains' end points to [lo, hi].
    pub clamp: Option<[f64; 2]>,
    /// Number of chains (`None` = the training batch size).
    pub batch: Option<usize>,
}

impl Default for NegativesConfig {
    fn default() -> Self {
        Self {
            n_gibbs: 200,
            dt: 0.01,
            split: true,
            time_mode: TimeMode::SweepToOne,
            same_temperature_schedule: false,
            clamp: None,
            batch: None,
        }
    }
}

impl NegativesConfig {
    /// Chain time of chain kind (`data_started`) at step k.
    pub fn time(&self, k: usize, data_started: bool) -> f64 {
        match self.time_mode {
            TimeMode::SweepToOne => {
                let t0 = if data_started { 1.0 } else { 0.0 };
                t0 + (1.0 - t0) * (k + 1) as f64 / self.n_gibbs as f64
            }
            TimeMode::Linear => {
                if data_started && !self.same_temperature_schedule {
                    f64::INFINITY // ε(∞) = ε_max
                } else {
                    k as f64 * self.dt
                }
            }
        }
    }
}

/// Runs the negative chains: returns their end points (constants for the θ-update).
pub fn generate(
    potential: &dyn Potential,
    schedule: &Schedule,
    cfg: &NegativesConfig,
    n: usize,
    (target, source): (&DataSource, &DataSource),
    precision: Precision,
    rng: &mut Rng,
) -> Result<Points> {
    let n_data = if cfg.split { n / 2 } else { 0 };
    let init = target
        .sample(n_data, rng)
        .concat(&source.sample(n - n_data, rng))?;
    let dim = init.dim();
    let device = crate::backend::cpu();
    let mut x = from_points(&init, &device, precision);
    let drift = Drift::new(potential);
    let mut noise = vec![0.0f32; n * dim];
    for k in 0..cfg.n_gibbs {
        let t_data = cfg.time(k, true);
        let t_noise = cfg.time(k, false);
        let sd = (2.0 * schedule.temperature(t_data) * cfg.dt).sqrt() as f32;
        let sn = (2.0 * schedule.temperature(t_noise) * cfg.dt).sqrt() as f32;
        fill_normal(rng, &mut noise);
        for (i, row) in noise.chunks_mut(dim).enumerate() {
            let s = if i < n_data { sd } else { sn };
            row.iter_mut().for_each(|v| *v *= s);
        }
        let kick = from_points(&Points::new(n, dim, noise.clone())?, &device, precision);
        x = step(
            &drift,
            schedule,
            SamplerKind::EulerMaruyama,
            x,
            t_noise,
            cfg.dt,
            Some(kick),
        );
    }
    if let Some([lo, hi]) = cfg.clamp {
        x = x.clamp(lo, hi);
    }
    to_points(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_times_follow_the_two_conventions() {
        let toy = NegativesConfig::default();
        assert!((toy.time(0, false) - 1.0 / 200.0).abs() < 1e-12);
        assert!((toy.time(199, false) - 1.0).abs() < 1e-12);
        assert_eq!(toy.time(0, true), 1.0);
        let img = NegativesConfig {
            time_mode: TimeMode::Linear,
            ..NegativesConfig::default()
        };
        assert_eq!(img.time(5, false), 0.05);
        assert!(img.time(5, true).is_infinite());
        let same = NegativesConfig {
            same_temperature_schedule: true,
            ..img
        };
        assert_eq!(same.time(5, true), 0.05);
    }
}
