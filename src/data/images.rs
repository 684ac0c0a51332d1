//! Image datasets read into rows of `C·H·W` values in [−1, 1] (channel-major, like PyTorch's
//! NCHW), with their labels: IDX files (MNIST, Fashion-MNIST; raw or `.gz`), CIFAR-10 binary
//! batches (1 label byte + 3,072 channel-major pixel bytes per record), and folders of
//! PNG/JPEG images (labels from sub-folder names, as torchvision's `ImageFolder`).
//!
//! Dataset specs (the `data.target` config value): `mnist:DIR`, `mnist-test:DIR`,
//! `fashion-mnist:DIR`, `fashion-mnist-test:DIR` (the four standard IDX files in DIR),
//! `cifar10:DIR` / `cifar10-test:DIR` (`data_batch_{1..5}.bin` / `test_batch.bin`),
//! `images:DIR` (a folder of images), or a path to one IDX image file or CIFAR `.bin` batch.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{EmError, Points, Result};

/// Channels, height and width of every image of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Colour channels (1 or 3).
    pub channels: usize,
    /// Rows of pixels.
    pub height: usize,
    /// Columns of pixels.
    pub width: usize,
}

impl ImageShape {
    /// Values per image, `C·H·W`.
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// Images as rows of `shape.numel()` values in [−1, 1], with optional labels.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Shape of each image.
    pub shape: ImageShape,
    /// One image per row, channel-major.
    pub images: Points,
    /// Class label of each image, when the format has them.
    pub labels: Option<Vec<u16>>,
}

/// A pixel byte 0..=255 as a value in [−1, 1] (x/127.5 − 1).
pub fn byte_to_unit(p: u8) -> f32 {
    p as f32 / 127.5 - 1.0
}

/// A value in [−1, 1] (clamped) as the nearest pixel byte.
pub fn unit_to_byte(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Mirrors one image (a row of `shape.numel()` values) left to right, in place.
pub fn flip_horizontal(row: &mut [f32], shape: ImageShape) {
    for line in row.chunks_mut(shape.width) {
        line.reverse();
    }
}

fn parse_err(path: &Path, reason: impl Into<String>) -> EmError {
    EmError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The bytes of a file, gunzipped when it ends in `.gz`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| EmError::io(path, e))?;
    if path.extension().and_then(|e| e.to_str()) != Some("gz") {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| parse_err(path, format!("not a readable gzip file: {e}")))?;
    Ok(out)
}

/// An unsigned-byte IDX file: its dimensions and data (magic `0x00 0x00 0x08 ndim`).
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(parse_err(
            path,
            "expected an IDX file (magic 0x0000 then type and rank), found other bytes",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(parse_err(
            path,
            format!(
                "expected IDX type 0x08 (unsigned bytes), found 0x{:02x}",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(parse_err(
            path,
            format!(
                "expected a header of {header} bytes for rank {rank}, found {} bytes",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|k| {
            let b = &bytes[4 + 4 * k..8 + 4 * k];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let want = dims.iter().product::<usize>();
    let have = bytes.len() - header;
    if have != want {
        return Err(parse_err(
            path,
            format!("expected {want} data bytes for dimensions {dims:?}, found {have} (truncated or mismatched file)"),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn to_unit_points(bytes: &[u8], n: usize, d: usize) -> Points {
    Points::new(n, d, bytes.iter().map(|&b| byte_to_unit(b)).collect())
        .expect("n·d values by construction")
}

/// An IDX image file (`[n, h, w]`), with labels from `labels` (`[n]`) when given.
pub fn read_idx_images(path: &Path, labels: Option<&Path>) -> Result<ImageSet> {
    let (dims, data) = read_idx(path)?;
    if dims.len() != 3 {
        return Err(parse_err(
            path,
            format!("expected image dimensions [n, height, width], found {dims:?}"),
        ));
    }
    let shape = ImageShape {
        channels: 1,
        height: dims[1],
        width: dims[2],
    };
    let labels = match labels {
        None => None,
        Some(lp) => {
            let (ldims, l) = read_idx(lp)?;
            if ldims != [dims[0]] {
                return Err(parse_err(
                    lp,
                    format!(
                        "expected labels of shape [{}] to match {}, found {ldims:?}",
                        dims[0],
                        path.display()
                    ),
                ));
            }
            Some(l.into_iter().map(u16::from).collect())
        }
    };
    Ok(ImageSet {
        shape,
        images: to_unit_points(&data, dims[0], shape.numel()),
        labels,
    })
}

/// CIFAR-10 binary batches concatenated: 3,073-byte records (label, then 32×32 red, green,
/// blue planes).
pub fn read_cifar10(paths: &[PathBuf]) -> Result<ImageSet> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    let shape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| EmError::io(path, e))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(parse_err(
                path,
                format!(
                    "expected a whole number of {RECORD}-byte CIFAR-10 records, found {} bytes ({} records and {} bytes over)",
                    bytes.len(),
                    bytes.len() / RECORD,
                    bytes.len() % RECORD
                ),
            ));
        }
        for rec in bytes.chunks(RECORD) {
            if rec[0] > 9 {
                return Err(parse_err(
                    path,
                    format!(
                        "expected a label 0..=9 at record {}, found {}",
                        labels.len(),
                        rec[0]
                    ),
                ));
            }
            labels.push(rec[0] as u16);
            pixels.extend(rec[1..].iter().map(|&b| byte_to_unit(b)));
        }
    }
    let n = labels.len();
    Ok(ImageSet {
        shape,
        images: Points::new(n, shape.numel(), pixels).expect("n records"),
        labels: Some(labels),
    })
}

fn is_image_file(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EmError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Every PNG/JPEG in `dir` (grey images as 1 channel, others as RGB), all of one size.
/// Images in sub-folders get the sub-folder's index (sorted by name) as label.
pub fn read_image_folder(dir: &Path) -> Result<ImageSet> {
    let entries = sorted_entries(dir)?;
    let classes: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
    let mut files: Vec<(PathBuf, Option<u16>)> = entries
        .iter()
        .filter(|p| is_image_file(p))
        .map(|p| (p.clone(), None))
        .collect();
    for (k, class) in classes.iter().enumerate() {
        for p in sorted_entries(class)?
            .into_iter()
            .filter(|p| is_image_file(p))
        {
            files.push((p, Some(k as u16)));
        }
    }
    if files.is_empty() {
        return Err(parse_err(
            dir,
            "expected PNG or JPEG images (directly or in class sub-folders), found none",
        ));
    }
    let mut shape: Option<ImageShape> = None;
    let mut pixels = Vec::new();
    for (path, _) in &files {
        let img =
            image::open(path).map_err(|e| parse_err(path, format!("unreadable image: {e}")))?;
        let grey = matches!(img.color(), image::ColorType::L8 | image::ColorType::L16);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let this = ImageShape {
            channels: if grey { 1 } else { 3 },
            height: h,
            width: w,
        };
        match shape {
            None => shape = Some(this),
            Some(s) if s != this => {
                return Err(parse_err(
                    path,
                    format!("expected every image to be {s} like the first, found {this}"),
                ))
            }
            _ => {}
        }
        if grey {
            pixels.extend(img.to_luma8().as_raw().iter().map(|&b| byte_to_unit(b)));
        } else {
            let rgb = img.to_rgb8();
            let raw = rgb.as_raw();
            // interleaved RGB → channel planes
            for c in 0..3 {
                pixels.extend(raw.iter().skip(c).step_by(3).map(|&b| byte_to_unit(b)));
            }
        }
    }
    let shape = shape.expect("at least one image");
    let labels = files.iter().map(|(_, l)| *l).collect::<Option<Vec<u16>>>();
    Ok(ImageSet {
        shape,
        images: Points::new(files.len(), shape.numel(), pixels).expect("one row per image"),
        labels,
    })
}

/// The first of `names` that exists in `dir` (also tried with `.gz`).
fn find_file(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    for name in names {
        for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(parse_err(
        dir,
        format!(
            "expected one of {} (or .gz) in this folder, found none",
            names.join(", ")
        ),
    ))
}

/// MNIST-format IDX files of a folder: (images, labels) of the train or test split.
fn read_idx_split(dir: &Path, test: bool) -> Result<ImageSet> {
    let (img, lab) = if test {
        (
            ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
            ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
        )
    } else {
        (
            ["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
            ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
        )
    };
    let images = find_file(dir, &img)?;
    let labels = find_file(dir, &lab).ok();
    read_idx_images(&images, labels.as_deref())
}

/// Reads a dataset spec (see the module docs); `None` when `spec` names no image dataset.
pub fn from_spec(spec: &str) -> Option<Result<ImageSet>> {
    if let Some((kind, dir)) = spec.split_once(':') {
        let dir = Path::new(dir);
        let set = match kind {
            "mnist" | "fashion-mnist" => read_idx_split(dir, false),
            "mnist-test" | "fashion-mnist-test" => read_idx_split(dir, true),
            "cifar10" => (1..=5)
                .map(|k| find_file(dir, &[&format!("data_batch_{k}.bin")]))
                .collect::<Result<Vec<_>>>()
                .and_then(|p| read_cifar10(&p)),
            "cifar10-test" => find_file(dir, &["test_batch.bin"]).and_then(|p| read_cifar10(&[p])),
            "images" => read_image_folder(dir),
            _ => return None,
        };
        return Some(set);
    }
    let name = Path::new(spec).file_name()?.to_str()?;
    if name.contains("idx3-ubyte") {
        let labels = PathBuf::from(spec.replace("images-idx3", "labels-idx1"));
        let labels = (labels.is_file() && labels != Path::new(spec)).then_some(labels);
        return Some(read_idx_images(Path::new(spec), labels.as_deref()));
    }
    if name.ends_with(".bin") {
        return Some(read_cifar10(&[PathBuf::from(spec)]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Three 2×3 images with pixel value 10·image + position, labels 7, 0, 3.
    fn write_mnist_like(dir: &Path, prefix: &str, gzip: bool) {
        let pixels: Vec<u8> = (0..3u8)
            .flat_map(|i| (0..6u8).map(move |p| 10 * i + p))
            .collect();
        let img = idx_bytes(&[3, 2, 3], &pixels);
        let lab = idx_bytes(&[3], &[7, 0, 3]);
        let (img, lab, ext) = if gzip {
            (gz(&img), gz(&lab), ".gz")
        } else {
            (img, lab, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
    }

    #[test]
    fn pixel_scaling_round_trips_every_byte() {
        assert_eq!(byte_to_unit(0), -1.0);
        assert_eq!(byte_to_unit(255), 1.0);
        for b in 0..=255u8 {
            assert_eq!(unit_to_byte(byte_to_unit(b)), b);
        }
        assert_eq!(unit_to_byte(3.0), 255);
        assert_eq!(unit_to_byte(-3.0), 0);
    }

    #[test]
    fn idx_images_and_labels_read_raw_and_gzipped() {
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_mnist_like(dir.path(), "train", gzip);
            let spec = format!("mnist:{}", dir.path().display());
            let set = from_spec(&spec).unwrap().unwrap();
            assert_eq!(
                set.shape,
                ImageShape {
                    channels: 1,
                    height: 2,
                    width: 3
                }
            );
            assert_eq!(set.images.len(), 3);
            assert_eq!(set.labels.as_deref(), Some(&[7u16, 0, 3][..]));
            // image 2, row 1, column 0 holds byte 20 + 3
            assert_eq!(set.images.row(2)[3], byte_to_unit(23));
            // the test split is looked up under its own name
            let err = from_spec(&format!("mnist-test:{}", dir.path().display()))
                .unwrap()
                .unwrap_err()
                .to_string();
            assert!(err.contains("t10k-images-idx3-ubyte"), "{err}");
        }
    }

    #[test]
    fn idx_file_given_directly_finds_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_like(dir.path(), "t10k", false);
        let path = dir.path().join("t10k-images-idx3-ubyte");
        let set = from_spec(path.to_str().unwrap()).unwrap().unwrap();
        assert_eq!(set.labels.as_deref(), Some(&[7u16, 0, 3][..]));
    }

    #[test]
    fn corrupt_idx_files_are_rejected_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-images-idx3-ubyte");
        let full = idx_bytes(&[3, 2, 3], &[0; 18]);
        let cases: [(Vec<u8>, &str); 4] = [
            (full[..full.len() - 1].to_vec(), "truncated"),
            (vec![1, 2, 3, 4, 5], "magic"),
            (
                idx_bytes(&[3, 2, 3], &[0; 18])
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| if i == 2 { 0x0D } else { b })
                    .collect(),
                "type 0x08",
            ),
            (idx_bytes(&[3, 6], &[0; 18]), "[n, height, width]"),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, bytes).unwrap();
            let err = read_idx_images(&p, None).unwrap_err().to_string();
            assert!(err.contains(want), "expected `{want}` in: {err}");
        }
        // not gzip although named .gz
        let pg = dir.path().join("y-images-idx3-ubyte.gz");
        std::fs::write(&pg, &full).unwrap();
        assert!(read_idx_images(&pg, None)
            .unwrap_err()
            .to_string()
            .contains("gzip"));
        // labels that do not match the images
        std::fs::write(&p, &full).unwrap();
        let pl = dir.path().join("x-labels-idx1-ubyte");
        std::fs::write(&pl, idx_bytes(&[2], &[1, 2])).unwrap();
        let err = read_idx_images(&p, Some(&pl)).unwrap_err().to_string();
        assert!(err.contains("expected labels of shape [3]"), "{err}");
    }

    fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..3072u32).map(|k| ((k * 7 + seed as u32) % 256) as u8));
        r
    }

    #[test]
    fn cifar10_batches_are_channel_major_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        for k in 1..=5u8 {
            let mut bytes = cifar_record(k, k);
            bytes.extend(cifar_record(9 - k, 100 + k));
            std::fs::write(dir.path().join(format!("data_batch_{k}.bin")), bytes).unwrap();
        }
        let set = from_spec(&format!("cifar10:{}", dir.path().display()))
            .unwrap()
            .unwrap();
        assert_eq!(set.images.len(), 10);
        assert_eq!(set.shape.numel(), 3072);
        assert_eq!(set.labels.as_ref().unwrap()[..4], [1, 8, 2, 7]);
        // record 0: green plane (c = 1), row 2, column 5 → byte at 1024 + 2·32 + 5
        let k = 1024 + 2 * 32 + 5;
        assert_eq!(
            set.images.row(0)[k],
            byte_to_unit(((k * 7 + 1) % 256) as u8)
        );
    }

    #[test]
    fn corrupt_cifar_batches_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("test_batch.bin");
        let mut bytes = cifar_record(3, 0);
        bytes.extend(&cifar_record(4, 1)[..100]);
        std::fs::write(&p, &bytes).unwrap();
        let err = read_cifar10(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 records and 100 bytes over"), "{err}");
        std::fs::write(&p, cifar_record(12, 0)).unwrap();
        let err = read_cifar10(&[p]).unwrap_err().to_string();
        assert!(err.contains("label 0..=9"), "{err}");
        let err = from_spec(&format!("cifar10:{}", dir.path().display()))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("data_batch_1.bin"), "{err}");
    }

    #[test]
    fn image_folders_give_channel_planes_and_class_labels() {
        let dir = tempfile::tempdir().unwrap();
        for (class, base) in [("cat", 10u8), ("dog", 50u8)] {
            let d = dir.path().join(class);
            std::fs::create_dir(&d).unwrap();
            // 3 wide, 2 high; pixel (x, y) = (base + x, base + 10·y, 200)
            let img = image::RgbImage::from_fn(3, 2, |x, y| {
                image::Rgb([base + x as u8, base + 10 * y as u8, 200])
            });
            img.save(d.join("a.png")).unwrap();
        }
        let set = from_spec(&format!("images:{}", dir.path().display()))
            .unwrap()
            .unwrap();
        assert_eq!(
            set.shape,
            ImageShape {
                channels: 3,
                height: 2,
                width: 3
            }
        );
        assert_eq!(set.labels.as_deref(), Some(&[0u16, 1][..]));
        let dog = set.images.row(1);
        // red plane row 0 = 50, 51, 52; green plane row 1 = 60, 60, 60; blue plane all 200
        assert_eq!(&dog[0..3], &[50, 51, 52].map(byte_to_unit));
        assert_eq!(&dog[6 + 3..6 + 6], &[60, 60, 60].map(byte_to_unit));
        assert!(dog[12..].iter().all(|&v| v == byte_to_unit(200)));
        // one image of another size is an error naming both shapes
        image::GrayImage::new(4, 4)
            .save(dir.path().join("odd.png"))
            .unwrap();
        let err = read_image_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("3×2×3") && err.contains("1×4×4"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = read_image_folder(empty.path()).unwrap_err().to_string();
        assert!(err.contains("found none"), "{err}");
    }

    #[test]
    fn horizontal_flip_mirrors_every_row_of_every_channel() {
        let shape = ImageShape {
            channels: 2,
            height: 2,
            width: 3,
        };
        let mut row: Vec<f32> = (0..12).map(|v| v as f32).collect();
        flip_horizontal(&mut row, shape);
        assert_eq!(row, [2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
    }
}
