//! Langevin negatives for the contrastive term: chains run on the host form of the potential
//! (no autodiff tape) in parallel blocks, and their end points are treated as constants by the
//! parameter update. Chain c of step s draws its noise from its own stream
//! (seed, Negative, s·2²⁰ + c), so results do not depend on the number of threads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::rng::{fill_normal, stream, Purpose, Rng};
use crate::sampler::{rows_per_block, step, Drift, GradField, SamplerKind, Scratch};
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
    let block = rows_per_block(field, n);
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
    use crate::data::Toy;
    use std::sync::Mutex;

    /// V = ½|x|², recording how many rows each call saw; `whole` makes it ask for whole sets.
    struct CountingQuadratic {
        whole: bool,
        calls: Mutex<Vec<usize>>,
    }

    impl GradField for CountingQuadratic {
        fn dim(&self) -> usize {
            3
        }
        fn grad(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
            self.calls.lock().expect("lock").push(n);
            out[..n * 3].copy_from_slice(&x[..n * 3]);
        }
        fn energy(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
            for (e, r) in out.iter_mut().zip(x.chunks(3)).take(n) {
                *e = 0.5 * r.iter().map(|v| v * v).sum::<f32>();
            }
        }
        fn splits_over_threads(&self) -> bool {
            !self.whole
        }
    }

    /// A field that asks for whole sets (a GPU) gets every chain in one call per Langevin step
    /// whatever the thread count, and the chains come out bit-identical to the split run's:
    /// each chain has its own random stream.
    #[test]
    fn a_device_field_sees_all_chains_at_once_with_the_same_result() {
        let data = DataSource::Toy(Toy::StandardNormal, 3);
        let setup = ChainSetup {
            target: &data,
            source: &data,
            seed: 7,
            step: 3,
        };
        let cfg = NegativesConfig {
            n_gibbs: 5,
            ..NegativesConfig::default()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .expect("pool");
        let schedule = Schedule::new(1.0, 0.1).expect("schedule");
        let run = |whole: bool| {
            let field = CountingQuadratic {
                whole,
                calls: Mutex::new(Vec::new()),
            };
            let mut rng = stream(1, Purpose::TrainStep, 0);
            let x = pool
                .install(|| generate(&field, &schedule, &cfg, 64, &setup, &mut rng))
                .expect("negatives");
            (x.into_vec(), field.calls.into_inner().expect("lock"))
        };
        let (split, split_calls) = run(false);
        let (whole, whole_calls) = run(true);
        assert_eq!(split_calls.len(), 4 * 5);
        assert!(split_calls.iter().all(|&n| n == 16), "{split_calls:?}");
        assert_eq!(whole_calls, vec![64; 5]);
        assert_eq!(split, whole);
    }

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
