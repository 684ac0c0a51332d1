//! Where training points come from: a built-in distribution ([`Toy`]), a user file
//! (CSV / NPY), or an image dataset ([`images`]: IDX, CIFAR-10 batches, image folders), the
//! last two sampled uniformly with replacement. This is the only module, with `checkpoint`
//! and `config`, that reads user files.

pub mod files;
pub mod images;
mod toy;

pub use files::{read_points, write_points};
pub use images::{ImageSet, ImageShape};
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
    /// An image dataset (rows of C·H·W values in [−1, 1]).
    Images {
        /// The dataset spec it was read from.
        spec: String,
        /// The images and labels.
        set: ImageSet,
        /// Mirror each drawn image left–right with probability ½.
        hflip: bool,
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
        if let Some(set) = images::from_spec(spec) {
            let set = set?;
            if set.images.is_empty() {
                return Err(EmError::Config {
                    key: key.into(),
                    reason: format!("`{spec}` holds no images"),
                });
            }
            if set.shape.numel() != dim {
                return Err(EmError::Config {
                    key: key.into(),
                    reason: format!(
                        "`{spec}` holds {} images ({} values each) but model.dim is {dim}",
                        set.shape,
                        set.shape.numel()
                    ),
                });
            }
            return Ok(DataSource::Images {
                spec: spec.into(),
                set,
                hflip: false,
            });
        }
        let path = PathBuf::from(spec);
        if path.extension().is_none() {
            let names: Vec<&str> = Toy::ALL.iter().map(|t| t.name()).collect();
            return Err(EmError::Config {
                key: key.into(),
                reason: format!(
                    "unknown dataset `{spec}`{}; expected one of {}, a .csv/.npy path, or an image dataset (mnist:DIR, fashion-mnist:DIR, cifar10:DIR, images:DIR, with -test variants)",
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

    /// Turns random horizontal flips on or off (image datasets only; others ignore it).
    pub fn with_hflip(mut self, on: bool) -> Self {
        if let DataSource::Images { hflip, .. } = &mut self {
            *hflip = on;
        }
        self
    }

    /// The dimension of the points.
    pub fn dim(&self) -> usize {
        match self {
            DataSource::Toy(_, d) => *d,
            DataSource::File { points, .. } => points.dim(),
            DataSource::Images { set, .. } => set.shape.numel(),
        }
    }

    /// The image shape, for image datasets.
    pub fn image_shape(&self) -> Option<ImageShape> {
        match self {
            DataSource::Images { set, .. } => Some(set.shape),
            _ => None,
        }
    }

    /// Draws `n` points.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Points {
        match self {
            DataSource::Toy(t, d) => t.sample(n, *d, rng),
            DataSource::File { points, .. } => draw_rows(points, n, rng),
            DataSource::Images { set, hflip, .. } => {
                let mut out = draw_rows(&set.images, n, rng);
                if *hflip {
                    for i in 0..n {
                        if rng.random::<bool>() {
                            images::flip_horizontal(out.row_mut(i), set.shape);
                        }
                    }
                }
                out
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
            DataSource::Images { spec, set, .. } => {
                format!("{spec} ({} images of {})", set.images.len(), set.shape)
            }
        }
    }
}

/// `n` rows drawn uniformly with replacement.
fn draw_rows(points: &Points, n: usize, rng: &mut Rng) -> Points {
    let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..points.len())).collect();
    points.select(&idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    /// One 2×2 grey image [0, 1; 2, 3] as a CIFAR-free IDX dataset in a temp folder.
    fn one_image_dataset() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0, 0, 0x08, 3];
        for d in [1u32, 2, 2] {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend([0u8, 1, 2, 3]);
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), bytes).unwrap();
        let spec = format!("mnist:{}", dir.path().display());
        (dir, spec)
    }

    #[test]
    fn image_datasets_check_the_model_dimension() {
        let (_dir, spec) = one_image_dataset();
        let err = DataSource::from_spec(&spec, 5, "data.target")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.target") && err.contains("1×2×2") && err.contains("model.dim is 5"),
            "{err}"
        );
        let src = DataSource::from_spec(&spec, 4, "data.target").unwrap();
        assert_eq!(src.image_shape().map(|s| s.numel()), Some(4));
    }

    #[test]
    fn random_flips_give_both_orientations_and_nothing_else() {
        let (_dir, spec) = one_image_dataset();
        let px = |v: [u8; 4]| v.map(images::byte_to_unit).to_vec();
        let (plain, mirrored) = (px([0, 1, 2, 3]), px([1, 0, 3, 2]));
        let src = DataSource::from_spec(&spec, 4, "data.target")
            .unwrap()
            .with_hflip(true);
        let batch = src.sample(64, &mut stream(0, Purpose::Data, 0));
        let flipped = batch.rows().filter(|r| *r == mirrored.as_slice()).count();
        let kept = batch.rows().filter(|r| *r == plain.as_slice()).count();
        assert_eq!(flipped + kept, 64);
        assert!((16..=48).contains(&flipped), "{flipped} of 64 flipped");
        let no_flip = DataSource::from_spec(&spec, 4, "data.target").unwrap();
        let batch = no_flip.sample(16, &mut stream(0, Purpose::Data, 0));
        assert!(batch.rows().all(|r| r == plain.as_slice()));
    }
}
