//! Langevin negatives for the contrastive term: chains run on the host form of the potential
//! (no autodiff tape) in parallel blocks, and their end points are treated as constants by the
//! parameter update. Chain c of step s draws its noise from its own stream
//! (seed, Negative, s·2²⁰ + c), so results do not depend on the number of threads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::rng::{fill_normal, stream, Purpose, Rng};
use crate::sampler::{step, Drift, GradField, SamplerKind, Scratch};
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
    /// Chain time of a chain (`data_started` or not) at step k.
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

/// Where negative chains start and which random streams they use.
pub struct ChainSetup<'a> {
    /// Data distribution (data-started chains).
    pub target: &'a DataSource,
    /// Source distribution (noise-started chains).
    pub source: &'a DataSource,
    /// Run seed.
    pub seed: u64,
    /// Training step (selects the chains' noise streams).
    pub step: u64,
}

/// Runs `n` negative chains; returns their end points. Start points come from `rng`.
pub fn generate(
    field: &dyn GradField,
    schedule: &Schedule,
    cfg: &NegativesConfig,
    n: usize,
    setup: &ChainSetup,
    rng: &mut Rng,
) -> Result<Points> {
    let n_data = if cfg.split { n / 2 } else { 0 };
    let init = setup
        .target
        .sample(n_data, rng)
        .concat(&setup.source.sample(n - n_data, rng))?;
    let dim = init.dim();
    let threads = rayon::current_num_threads().max(1);
    let block = n.div_ceil(threads).max(1);
    let mut x = init.into_vec();
    x.par_chunks_mut(block * dim)
        .enumerate()
        .for_each(|(b, xs)| {
            let first = b * block;
            let rows = xs.len() / dim;
            let mut rngs: Vec<Rng> = (0..rows)
                .map(|i| {
                    stream(
                        setup.seed,
                        Purpose::Negative,
                        (setup.step << 20) + (first + i) as u64,
                    )
                })
                .collect();
            let drift = Drift::new(field);
            let mut scratch = Scratch::default();
            let mut kick = vec![0.0f32; rows * dim];
            for k in 0..cfg.n_gibbs {
                let sd = (2.0 * schedule.temperature(cfg.time(k, true)) * cfg.dt).sqrt() as f32;
                let sn = (2.0 * schedule.temperature(cfg.time(k, false)) * cfg.dt).sqrt() as f32;
                for (i, (r, row)) in rngs.iter_mut().zip(kick.chunks_mut(dim)).enumerate() {
                    fill_normal(r, row);
                    let s = if first + i < n_data { sd } else { sn };
                    row.iter_mut().for_each(|v| *v *= s);
                }
                step(
                    &drift,
                    schedule,
                    SamplerKind::EulerMaruyama,
                    xs,
                    rows,
                    cfg.time(k, false),
                    cfg.dt,
                    Some(&kick),
                    &mut scratch,
                );
            }
        });
    if let Some([lo, hi]) = cfg.clamp {
        x.iter_mut()
            .for_each(|v| *v = v.clamp(lo as f32, hi as f32));
    }
    Points::new(n, dim, x)
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
