//! # energy-matching
//!
//! Energy Matching generative models (Balcerak et al., 2025): one time-independent scalar
//! potential V(x) whose negative gradient carries noise to data along optimal-transport paths
//! and then samples the Boltzmann density exp(−V/ε) by Langevin dynamics.
//!
//! See `ARCHITECTURE.md` for the code map.
#![warn(missing_docs)]

pub mod backend;
pub mod coupling;
pub mod error;
pub mod points;
pub mod potential;
pub mod rng;
pub mod schedule;

pub use error::{EmError, Result};
pub use points::Points;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod metrics;
pub mod plot;
pub mod run;
pub mod sampler;
pub mod train;
