//! # energy-matching
//!
//! Energy Matching generative models (Balcerak et al., 2025): one time-independent scalar
//! potential V(x) whose negative gradient carries noise to data along optimal-transport paths
//! and then samples the Boltzmann density exp(−V/ε) by Langevin dynamics.
//!
//! # Quick start
//!
//! ```no_run
//! use energy_matching::config::RunConfig;
//! use energy_matching::run;
//!
//! // The toy tutorial (eight Gaussians → two moons), shortened.
//! let cfg = RunConfig::from_toml_str("", &["train.phase1_steps=2000".into(), "train.phase2_steps=100".into()])?;
//! let dir = std::path::Path::new("runs/quickstart");
//! let trainer = run::train(&cfg, dir, None, &mut |_| {})?;          // checkpoints + metrics.jsonl
//! let report = run::evaluate_run(&trainer, &cfg, dir, &mut |_| {})?; // samples, eval.json, plots
//! println!("energy distance² {:.4}", report.metrics.energy_distance_sq);
//! # Ok::<(), energy_matching::EmError>(())
//! ```
//!
//! # Modules
//!
//! - [`potential`]: V(x) with explicit, differentiable ∇ₓV ([`potential::Mlp`]), HVPs.
//! - [`coupling`]: exact minibatch OT, Sinkhorn, independent pairing.
//! - [`train`]: the two training phases, Langevin negatives, Adam/EMA.
//! - [`sampler`]: Euler–Maruyama, Heun and gradient-flow integrators with extra energy terms.
//! - [`data`], [`metrics`], [`checkpoint`], [`config`], [`plot`], [`run`].
//!
//! See `ARCHITECTURE.md` for the code map and invariants.
#![warn(missing_docs)]

pub mod backend;
pub mod coupling;
pub mod error;
pub mod points;
pub mod potential;
pub mod rng;
pub mod schedule;
pub mod tensor_file;

pub use error::{EmError, Result};
pub use points::Points;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod inception;
pub mod metrics;
pub mod plot;
pub mod run;
pub mod sampler;
pub mod train;
