//! A cache of FID reference statistics, keyed by content: the SHA-256 of the Inception weights
//! file, the feature pipeline's version, the image shape and every pixel value of the reference
//! images. A key can only name statistics of exactly those images through exactly that network,
//! so an entry is never stale: another dataset copy, a changed file or other weights give
//! another key. Entries are the `.safetensors` files of [`GaussianStats::save`] (mean and
//! covariance in f64, ≈ 32 MB for 2048-d features), written atomically.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::data::ImageShape;
use crate::metrics::GaussianStats;
use crate::{Points, Result};

/// Version of the feature pipeline (input quantisation, resize, network); part of every key,
/// so that changing what the features are invalidates the entries made before.
const PIPELINE: &str = "fid-inception-v3/nv-bilinear-299/1";

/// Environment variable naming the cache directory (overrides the platform's cache folder).
pub const CACHE_DIR_VAR: &str = "EM_CACHE_DIR";

/// Where reference statistics come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsOrigin {
    /// Read from the statistics file given as the reference.
    File(PathBuf),
    /// Read from this cache entry.
    Cached(PathBuf),
    /// Computed, and stored in this cache entry.
    Stored(PathBuf),
    /// Computed; not stored (no cache, or the cache could not be written: the reason).
    Computed(Option<String>),
}

impl std::fmt::Display for StatsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatsOrigin::File(p) => write!(f, "read from {}", p.display()),
            StatsOrigin::Cached(p) => write!(f, "read from the cache ({})", p.display()),
            StatsOrigin::Stored(p) => write!(f, "computed and cached ({})", p.display()),
            StatsOrigin::Computed(None) => write!(f, "computed"),
            StatsOrigin::Computed(Some(why)) => write!(f, "computed, not cached ({why})"),
        }
    }
}

/// A directory of cached statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsCache {
    dir: PathBuf,
}

impl StatsCache {
    /// A cache in `dir` (created when the first entry is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The user's cache: `$EM_CACHE_DIR/fid-stats`, else `fid-stats` in the platform's cache
    /// folder (`~/.cache/energy-matching` on Linux); `None` where there is neither.
    pub fn user_default() -> Option<Self> {
        let root = match std::env::var_os(CACHE_DIR_VAR) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => dirs::cache_dir()?.join("energy-matching"),
        };
        Some(Self::new(root.join("fid-stats")))
    }

    /// The entry for `key`.
    pub fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// The statistics under `key`, computed by `compute` (and stored) when there are none.
    /// An unreadable entry is recomputed and replaced; a cache that cannot be written only
    /// loses the storing (the reason is in the returned [`StatsOrigin::Computed`]).
    pub fn get_or_compute(
        &self,
        key: &str,
        compute: impl FnOnce() -> Result<GaussianStats>,
    ) -> Result<(GaussianStats, StatsOrigin)> {
        let path = self.entry(key);
        if let Ok(stats) = GaussianStats::load(&path) {
            return Ok((stats, StatsOrigin::Cached(path)));
        }
        let stats = compute()?;
        let stored = std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("{}: {e}", self.dir.display()))
            .and_then(|()| stats.save(&path).map_err(|e| e.to_string()));
        let origin = match stored {
            Ok(()) => StatsOrigin::Stored(path),
            Err(reason) => StatsOrigin::Computed(Some(reason)),
        };
        Ok((stats, origin))
    }
}

/// The cache key of the features of `images` (of `shape`) through the weights whose file has
/// the SHA-256 `weights_sha256`: a hex SHA-256.
pub fn stats_key(weights_sha256: &str, images: &Points, shape: ImageShape) -> String {
    let mut h = Sha256::new();
    h.update(PIPELINE.as_bytes());
    h.update([0]);
    h.update(weights_sha256.as_bytes());
    for v in [shape.channels, shape.height, shape.width, images.len()] {
        h.update((v as u64).to_le_bytes());
    }
    for row in images.rows() {
        for v in row {
            h.update(v.to_le_bytes());
        }
    }
    hex(&h.finalize())
}

/// The SHA-256 of `bytes` in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(seed: f64) -> GaussianStats {
        GaussianStats {
            dim: 2,
            count: 3,
            mean: vec![seed, -seed],
            cov: vec![1.0, seed, seed, 2.0],
        }
    }

    fn shape() -> ImageShape {
        ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        }
    }

    fn images(first: f32) -> Points {
        Points::new(2, 4, vec![first, 0.5, -0.5, 1.0, 0.0, 0.25, -1.0, 0.75]).unwrap()
    }

    #[test]
    fn a_second_lookup_reads_the_entry_instead_of_computing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatsCache::new(dir.path().join("nested/fid-stats"));
        let (first, origin) = cache.get_or_compute("k1", || Ok(stats(0.5))).unwrap();
        assert_eq!(origin, StatsOrigin::Stored(cache.entry("k1")));
        let (again, origin) = cache
            .get_or_compute("k1", || panic!("computed although cached"))
            .unwrap();
        assert_eq!(origin, StatsOrigin::Cached(cache.entry("k1")));
        assert_eq!(again, first);
        // another key is another entry
        let (other, _) = cache.get_or_compute("k2", || Ok(stats(0.25))).unwrap();
        assert_eq!(other, stats(0.25));
    }

    #[test]
    fn a_corrupt_entry_is_recomputed_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatsCache::new(dir.path());
        std::fs::write(cache.entry("k"), b"not safetensors").unwrap();
        let (s, origin) = cache.get_or_compute("k", || Ok(stats(1.5))).unwrap();
        assert_eq!(
            (s, origin),
            (stats(1.5), StatsOrigin::Stored(cache.entry("k")))
        );
        assert_eq!(GaussianStats::load(&cache.entry("k")).unwrap(), stats(1.5));
    }

    #[test]
    fn an_unwritable_cache_still_gives_the_statistics_and_says_why_it_kept_none() {
        let dir = tempfile::tempdir().unwrap();
        // the cache "directory" is a file: it can be neither created nor written
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let cache = StatsCache::new(&blocker);
        let (s, origin) = cache.get_or_compute("k", || Ok(stats(2.0))).unwrap();
        assert_eq!(s, stats(2.0));
        match origin {
            StatsOrigin::Computed(Some(reason)) => {
                assert!(reason.contains(&blocker.display().to_string()), "{reason}")
            }
            other => panic!("expected a reason, found {other:?}"),
        }
    }

    #[test]
    fn a_failed_computation_is_an_error_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatsCache::new(dir.path());
        let err = cache
            .get_or_compute("k", || {
                Err(crate::EmError::invalid("features", "finite", "NaN"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(!cache.entry("k").exists());
    }

    #[test]
    fn the_key_changes_with_any_pixel_the_shape_and_the_weights() {
        let base = stats_key("w1", &images(0.0), shape());
        assert_eq!(base, stats_key("w1", &images(0.0), shape()));
        assert_eq!(base.len(), 64);
        assert_ne!(base, stats_key("w2", &images(0.0), shape()));
        // the smallest change of one value
        assert_ne!(base, stats_key("w1", &images(f32::from_bits(1)), shape()));
        let wide = ImageShape {
            channels: 1,
            height: 1,
            width: 4,
        };
        assert_ne!(base, stats_key("w1", &images(0.0), wide));
        // the first image alone
        let one = Points::new(1, 4, images(0.0).row(0).to_vec()).unwrap();
        assert_ne!(base, stats_key("w1", &one, shape()));
    }

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_cache_directory_follows_the_environment_variable() {
        // the only test that sets EM_CACHE_DIR
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var(CACHE_DIR_VAR, dir.path());
        let cache = StatsCache::user_default();
        std::env::remove_var(CACHE_DIR_VAR);
        assert_eq!(cache, Some(StatsCache::new(dir.path().join("fid-stats"))));
    }
}
