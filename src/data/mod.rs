//! Where training points come from: a built-in distribution ([`Toy`]) or a user file
//! (CSV / NPY, sampled uniformly with replacement). This is the only module, with
//! `checkpoint` and `config`, that reads user files.

pub mod files;
mod toy;

pub use files::{read_points, write_points};
pub use toy::Toy;

use std::path::PathBuf;

use crate::rng::{Rng, RngExt};
use crate::{EmError, Points, Result};

/// A distribution to draw batches from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A built-in generator, with its dimension.
    Toy(Toy, usize),
    /// Points loaded from a file, drawn uniformly with replacement.
    File {
        /// Where they came from.
        path: PathBuf,
        /// The points.
        points: Points,
    },
}

impl DataSource {
    /// Resolves a config value: a built-in name, or a path to a `.csv`/`.npy` file.
    /// `dim` is the model dimension (used by `standard_normal` and checked against files).
    pub fn from_spec(spec: &str, dim: usize, key: &str) -> Result<Self> {
        if let Some(t) = Toy::from_name(spec) {
            if let Some(d) = t.fixed_dim() {
                if d != dim {
                    return Err(EmError::Config {
                        key: key.into(),
                        reason: format!("`{spec}` is {d}-dimensional but model.dim is {dim}"),
                    });
                }
            }
            return Ok(DataSource::Toy(t, dim));
        }
        let path = PathBuf::from(spec);
        if path.extension().is_none() {
            let names: Vec<&str> = Toy::ALL.iter().map(|t| t.name()).collect();
            return Err(EmError::Config {
                key: key.into(),
                reason: format!(
                    "unknown dataset `{spec}`{}; expected one of {} or a .csv/.npy path",
                    crate::config::suggest(spec, &names),
                    names.join(", ")
                ),
            });
        }
        let points = read_points(&path)?;
        if points.is_empty() {
            return Err(EmError::Parse {
                path,
                reason: "expected at least one point, found none".into(),
            });
        }
        points.expect_dim(dim, &format!("{key} ({})", path.display()))?;
        Ok(DataSource::File { path, points })
    }

    /// The dimension of the points.
    pub fn dim(&self) -> usize {
        match self {
            DataSource::Toy(_, d) => *d,
            DataSource::File { points, .. } => points.dim(),
        }
    }

    /// Draws `n` points.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Points {
        match self {
            DataSource::Toy(t, d) => t.sample(n, *d, rng),
            DataSource::File { points, .. } => {
                let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..points.len())).collect();
                points.select(&idx)
            }
        }
    }

    /// A short description for logs and plots.
    pub fn describe(&self) -> String {
        match self {
            DataSource::Toy(t, _) => t.name().to_string(),
            DataSource::File { path, points } => {
                format!("{} ({} points)", path.display(), points.len())
            }
        }
    }
}
