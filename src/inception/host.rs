//! Inception-v3's layers on the host, one image at a time: activations are channel-last maps
//! ([`Map`]), so a convolution is im2col + gemm in cache-sized tiles of output pixels, a 1×1
//! convolution is one gemm on the map itself, and poolings and concatenation run along
//! contiguous channel rows. This is how FID's feature extractor runs on the CPU (2.2–2.5× as
//! fast as burn's `flex` convolutions, BENCHMARKS.md); [`super::net`] holds the
//! network's structure and its burn twin, which the tests compare this with.

use super::net::{ConvBn, Engine};
use crate::potential::{gemm_strided, transpose};

/// Most patch-matrix values of one im2col tile (1 MiB): large enough that gemm's packing of
/// the weights is paid over many rows, small enough to stay in cache until gemm reads it.
const TILE_VALUES: usize = 1 << 18;

/// Fewest output pixels in one tile of a convolution.
const MIN_TILE_ROWS: usize = 128;

/// One image's activations, channel-last: value (y, x, channel) at `(y·w + x)·c + channel`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Map {
    /// The channel-last map of channel planes `[c, h, w]`.
    pub fn from_planes(planes: &[f32], c: usize, h: usize, w: usize) -> Self {
        assert_eq!(planes.len(), c * h * w, "expected {c}×{h}×{w} values");
        let mut data = vec![0.0; planes.len()];
        transpose(planes, c, h * w, &mut data);
        Self { h, w, c, data }
    }

    /// The channel planes `[c, h, w]` of the map.
    #[cfg(test)]
    pub fn to_planes(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.data.len()];
        transpose(&self.data, self.h * self.w, self.c, &mut out);
        out
    }

    /// Each channel's mean over the map (global average pooling).
    pub fn channel_means(&self) -> Vec<f32> {
        let mut sums = vec![0.0f32; self.c];
        for pixel in self.data.chunks_exact(self.c) {
            for (s, v) in sums.iter_mut().zip(pixel) {
                *s += v;
            }
        }
        let n = (self.h * self.w) as f32;
        sums.iter().map(|s| s / n).collect()
    }

    /// The channels of pixel (y, x).
    fn pixel(&self, y: usize, x: usize) -> &[f32] {
        let at = (y * self.w + x) * self.c;
        &self.data[at..at + self.c]
    }
}

/// The output positions along one axis: `(size + 2·pad − k) / stride + 1`.
fn out_size(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    assert!(
        size + 2 * pad >= k,
        "a {k}-tap window does not fit {size} + 2·{pad}"
    );
    (size + 2 * pad - k) / stride + 1
}

/// For output position `o` along an axis: the taps whose input position lies inside the
/// map, as the range of tap offsets, and the input position of the first tap of the window.
fn taps(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> (usize, usize, isize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = (-start).max(0) as usize;
    let hi = (size as isize - start).clamp(0, k as isize) as usize;
    (lo, hi.max(lo), start)
}

/// The layers of [`super::net::InceptionV3`] on channel-last host maps.
pub(super) struct HostEngine;

impl HostEngine {
    /// Patch rows of output pixels `pixels` of `conv` on `x` into `cols`, each row
    /// `kh·kw·c_in` values in (dy, dx, channel) order, zero where the window leaves the map.
    fn im2col(
        conv: &ConvBn,
        x: &Map,
        w_out: usize,
        pixels: std::ops::Range<usize>,
        cols: &mut [f32],
    ) {
        let ([kh, kw], [ph, pw], s, c) = (conv.kernel, conv.padding, conv.stride, x.c);
        let k = kh * kw * c;
        for (row, p) in cols.chunks_exact_mut(k).zip(pixels) {
            let (oy, ox) = (p / w_out, p % w_out);
            let (y_lo, y_hi, y0) = taps(oy, kh, s, ph, x.h);
            let (x_lo, x_hi, x0) = taps(ox, kw, s, pw, x.w);
            for (dy, tap_row) in row.chunks_exact_mut(kw * c).enumerate() {
                if dy < y_lo || dy >= y_hi {
                    tap_row.fill(0.0);
                    continue;
                }
                let iy = (y0 + dy as isize) as usize;
                tap_row[..x_lo * c].fill(0.0);
                tap_row[x_hi * c..].fill(0.0);
                if s == 1 {
                    // the window's inside taps are one contiguous run of the input row
                    let from = (iy * x.w + (x0 + x_lo as isize) as usize) * c;
                    tap_row[x_lo * c..x_hi * c]
                        .copy_from_slice(&x.data[from..from + (x_hi - x_lo) * c]);
                } else {
                    for dx in x_lo..x_hi {
                        let ix = (x0 + dx as isize) as usize;
                        tap_row[dx * c..(dx + 1) * c].copy_from_slice(x.pixel(iy, ix));
                    }
                }
            }
        }
    }

    /// A 3×3 pooling with `stride` and padding `pad`: `reduce(out_pixel, taps)` gets the
    /// channel rows of the window's taps inside the map (padding is never a tap).
    fn pool3(
        &self,
        x: &Map,
        stride: usize,
        pad: usize,
        reduce: impl Fn(&mut [f32], &[&[f32]]),
    ) -> Map {
        let (h, w) = (out_size(x.h, 3, stride, pad), out_size(x.w, 3, stride, pad));
        let mut data = vec![0.0; h * w * x.c];
        let mut window: Vec<&[f32]> = Vec::with_capacity(9);
        for (p, out) in data.chunks_exact_mut(x.c).enumerate() {
            let (y_lo, y_hi, y0) = taps(p / w, 3, stride, pad, x.h);
            let (x_lo, x_hi, x0) = taps(p % w, 3, stride, pad, x.w);
            window.clear();
            for dy in y_lo..y_hi {
                for dx in x_lo..x_hi {
                    let (iy, ix) = ((y0 + dy as isize) as usize, (x0 + dx as isize) as usize);
                    window.push(x.pixel(iy, ix));
                }
            }
            reduce(out, &window);
        }
        Map { h, w, c: x.c, data }
    }
}

/// `out = max(out + bias, 0)` row by row.
fn bias_relu(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}

impl Engine for HostEngine {
    type Map = Map;

    fn conv(&self, conv: &ConvBn, x: &Map) -> Map {
        assert_eq!(x.c, conv.c_in, "convolution input channels");
        let ([kh, kw], [ph, pw], s) = (conv.kernel, conv.padding, conv.stride);
        let (h, w) = (out_size(x.h, kh, s, ph), out_size(x.w, kw, s, pw));
        let (k, m, pixels) = (kh * kw * conv.c_in, conv.c_out, h * w);
        let mut out = Map {
            h,
            w,
            c: m,
            data: vec![0.0; pixels * m],
        };
        let pointwise = k == conv.c_in && s == 1 && ph == 0 && pw == 0;
        let rows = (TILE_VALUES / k).max(MIN_TILE_ROWS).min(pixels);
        let mut cols = if pointwise {
            Vec::new()
        } else {
            vec![0.0; rows * k]
        };
        for p0 in (0..pixels).step_by(rows) {
            let p1 = (p0 + rows).min(pixels);
            let patches = if pointwise {
                &x.data[p0 * k..p1 * k]
            } else {
                let cols = &mut cols[..(p1 - p0) * k];
                Self::im2col(conv, x, w, p0..p1, cols);
                cols
            };
            let tile = &mut out.data[p0 * m..p1 * m];
            gemm_strided(
                (tile, (m, 1)),
                (patches, (k, 1)),
                (&conv.weight, (m, 1)),
                p1 - p0,
                k,
                m,
                false,
            );
            bias_relu(tile, &conv.bias);
        }
        out
    }

    fn max3(&self, x: &Map, stride: usize, pad: usize) -> Map {
        self.pool3(x, stride, pad, |acc, window| {
            let (first, rest) = window.split_first().expect("a window has a tap");
            acc.copy_from_slice(first);
            for tap in rest {
                for (a, v) in acc.iter_mut().zip(*tap) {
                    *a = a.max(*v);
                }
            }
        })
    }

    fn avg3(&self, x: &Map) -> Map {
        self.pool3(x, 1, 1, |acc, window| {
            acc.fill(0.0);
            for tap in window {
                for (a, v) in acc.iter_mut().zip(*tap) {
                    *a += v;
                }
            }
            let n = window.len() as f32;
            acc.iter_mut().for_each(|a| *a /= n);
        })
    }

    fn cat(&self, parts: Vec<Map>) -> Map {
        let (h, w) = (parts[0].h, parts[0].w);
        assert!(
            parts.iter().all(|p| p.h == h && p.w == w),
            "concatenated maps differ in size"
        );
        let c = parts.iter().map(|p| p.c).sum();
        let mut data = Vec::with_capacity(h * w * c);
        for p in 0..h * w {
            for part in &parts {
                data.extend_from_slice(&part.data[p * part.c..(p + 1) * part.c]);
            }
        }
        Map { h, w, c, data }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::tensor::{DType, Tensor, TensorData};

    use super::*;
    use crate::inception::net::{InceptionV3, TensorEngine};
    use crate::rng::{fill_normal, stream, Purpose};

    fn normal(seed: u64, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        fill_normal(&mut stream(seed, Purpose::Eval, 0), &mut v);
        v
    }

    /// A random map and its burn twin `[1, c, h, w]`.
    fn random_map(seed: u64, c: usize, h: usize, w: usize) -> (Map, Tensor<4>) {
        let planes = normal(seed, c * h * w);
        let t = Tensor::from_data(
            TensorData::new(planes.clone(), [1, c, h, w]),
            (&crate::backend::cpu(), DType::F32),
        );
        (Map::from_planes(&planes, c, h, w), t)
    }

    /// A convolution with random weights and batch-norm statistics (variance in [0.5, 1.5]).
    fn random_conv(
        seed: u64,
        (c_in, c_out): (usize, usize),
        [kh, kw]: [usize; 2],
        stride: usize,
        padding: [usize; 2],
    ) -> ConvBn {
        let w = normal(seed, c_out * c_in * kh * kw);
        let stats = normal(seed + 1, 3 * c_out);
        let var: Vec<f32> = stats[c_out..2 * c_out]
            .iter()
            .map(|v| 1.0 + 0.5 * v.tanh())
            .collect();
        ConvBn::folded(
            &w,
            [c_out, c_in, kh, kw],
            (&stats[..c_out], &var, &stats[2 * c_out..]),
            stride,
            padding,
        )
    }

    /// A tensor's values in row-major order.
    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Asserts that the host map equals burn's `[1, c, h, w]` map within `tol` of its scale.
    fn assert_same(host: &Map, burn: Tensor<4>, tol: f32, what: &str) {
        let [_, c, h, w] = burn.dims();
        assert_eq!((host.c, host.h, host.w), (c, h, w), "{what}: shape");
        let want = values(burn);
        let got = host.to_planes();
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= tol * scale,
                "{what}: value {i} is {g}, burn's {e}"
            );
        }
    }

    #[test]
    fn folding_scales_each_output_channel_by_its_batch_norm() {
        let ([c_out, c_in, kh, kw], stride, padding) = ([3, 2, 2, 3], 1, [0, 1]);
        let w = normal(1, c_out * c_in * kh * kw);
        let (mean, var, beta) = ([0.5, -1.0, 2.0], [0.999, 3.999, 0.249], [1.0, 0.0, -1.0]);
        let conv = ConvBn::folded(
            &w,
            [c_out, c_in, kh, kw],
            (&mean, &var, &beta),
            stride,
            padding,
        );
        let scale = [1.0, 0.5, 2.0]; // 1/√(var + 0.001)
        let device = crate::backend::cpu();
        let (wt, bt) = conv.tensors(&device);
        for (i, (got, raw)) in values(wt.clone()).iter().zip(&w).enumerate() {
            let want = raw * scale[i / (c_in * kh * kw)];
            assert!((got - want).abs() < 1e-5, "weight {i}: {got} vs {want}");
        }
        let bt = values(bt.clone());
        for o in 0..c_out {
            let want = beta[o] - mean[o] * scale[o];
            assert!((bt[o] - want).abs() < 1e-5, "bias {o}: {} vs {want}", bt[o]);
        }
    }

    #[test]
    fn every_convolution_shape_of_the_network_matches_burns_convolution() {
        let device = crate::backend::cpu();
        let tensors = TensorEngine { device: &device };
        // (channels, kernel, stride, padding, map): the stem's 3×3 stride 2, 1×1, 3×3 and
        // 5×5 with padding, the 1×7 / 7×1 and 1×3 / 3×1 pairs, and a map of several tiles
        let cases = [
            ((3, 5), [3, 3], 2, [0, 0], (11, 9)),
            ((4, 6), [1, 1], 1, [0, 0], (7, 5)),
            ((4, 3), [3, 3], 1, [1, 1], (6, 7)),
            ((3, 4), [5, 5], 1, [2, 2], (7, 8)),
            ((5, 4), [1, 7], 1, [0, 3], (6, 9)),
            ((5, 4), [7, 1], 1, [3, 0], (9, 6)),
            ((6, 2), [1, 3], 1, [0, 1], (4, 5)),
            ((6, 2), [3, 1], 1, [1, 0], (5, 4)),
            ((4, 5), [3, 3], 2, [0, 0], (8, 8)),
            ((64, 8), [3, 3], 1, [1, 1], (30, 31)),
        ];
        for (i, (ch, kernel, stride, padding, (h, w))) in cases.into_iter().enumerate() {
            let conv = random_conv(10 + i as u64, ch, kernel, stride, padding);
            let (x, t) = random_map(i as u64, ch.0, h, w);
            let what = format!("{kernel:?} stride {stride} padding {padding:?} on {h}×{w}");
            assert_same(
                &HostEngine.conv(&conv, &x),
                tensors.conv(&conv, &t),
                1e-5,
                &what,
            );
        }
        // the last case runs in more than one tile of output pixels
        const { assert!(30 * 31 > TILE_VALUES / (9 * 64)) };
    }

    #[test]
    fn poolings_match_burns_and_never_count_padding() {
        let device = crate::backend::cpu();
        let tensors = TensorEngine { device: &device };
        // negative maps: a max pool that took zero padding for a tap would read 0 at the
        // border, and an average that counted the padding would shrink towards 0 there
        for (h, w) in [(9, 8), (7, 7), (4, 5)] {
            let (x, t) = random_map(h as u64, 3, h, w);
            let neg = |m: Map| Map {
                data: m.data.iter().map(|v| -v.abs() - 1.0).collect(),
                ..m
            };
            let x = neg(x);
            let t = -t.abs() - 1.0;
            for (stride, pad) in [(2, 0), (1, 1)] {
                let what = format!("max stride {stride} pad {pad} on {h}×{w}");
                let got = HostEngine.max3(&x, stride, pad);
                assert_same(&got, tensors.max3(&t, stride, pad), 0.0, &what);
                assert!(
                    got.data.iter().all(|v| *v <= -1.0),
                    "{what}: padding counted"
                );
            }
            let got = HostEngine.avg3(&x);
            assert_same(&got, tensors.avg3(&t), 1e-6, &format!("average on {h}×{w}"));
            assert!(
                got.data.iter().all(|v| *v <= -1.0),
                "average counted padding"
            );
        }
    }

    /// Module maps of a small block: convolutions by name, `Sequential` children, classes.
    #[derive(Default)]
    struct Parts {
        convs: HashMap<String, ConvBn>,
        children: HashMap<String, Vec<String>>,
        classes: HashMap<String, String>,
    }

    impl Parts {
        fn conv(&mut self, name: &str, ch: (usize, usize), kernel: [usize; 2], pad: [usize; 2]) {
            let seed = 100 + self.convs.len() as u64;
            let conv = random_conv(seed, ch, kernel, 1, pad);
            self.convs.insert(name.to_string(), conv);
        }

        fn sequential(&mut self, name: &str, children: &[&str]) {
            let names = children.iter().map(|c| c.to_string()).collect();
            self.children.insert(name.to_string(), names);
        }

        fn class(&mut self, name: &str, class: &str) {
            self.classes.insert(name.to_string(), class.to_string());
        }
    }

    #[test]
    fn whole_blocks_on_the_host_match_the_tensor_network() {
        let device = crate::backend::cpu();
        let tensors = TensorEngine { device: &device };
        let mut p = Parts::default();
        // an InceptionA: a 1×1 convolution, towers as Sequentials, an average-pool tower
        p.class("a", "InceptionA");
        p.conv("a.conv", (5, 2), [1, 1], [0, 0]);
        p.sequential("a.tower", &["conv", "conv_1"]);
        p.conv("a.tower.conv", (5, 3), [1, 1], [0, 0]);
        p.conv("a.tower.conv_1", (3, 2), [5, 5], [2, 2]);
        p.sequential("a.tower_1", &["conv", "conv_1", "conv_2"]);
        p.conv("a.tower_1.conv", (5, 3), [1, 1], [0, 0]);
        p.conv("a.tower_1.conv_1", (3, 3), [3, 3], [1, 1]);
        p.conv("a.tower_1.conv_2", (3, 4), [3, 3], [1, 1]);
        p.sequential("a.tower_2", &["pool", "conv"]);
        p.class("a.tower_2.pool", "AvgPool2d");
        p.conv("a.tower_2.conv", (5, 2), [1, 1], [0, 0]);
        // the last InceptionE: split 1×3 / 3×1 towers and a max-pool tower
        p.class("e", "InceptionE");
        for (name, ch) in [
            ("conv", 2),
            ("tower_conv", 3),
            ("tower_1_conv", 3),
            ("tower_2_conv", 2),
        ] {
            p.conv(&format!("e.{name}"), (5, ch), [1, 1], [0, 0]);
        }
        p.conv("e.tower_1_conv_1", (3, 3), [3, 3], [1, 1]);
        for tower in ["tower", "tower_1"] {
            p.conv(&format!("e.{tower}_mixed_conv"), (3, 2), [1, 3], [0, 1]);
            p.conv(&format!("e.{tower}_mixed_conv_1"), (3, 2), [3, 1], [1, 0]);
        }
        p.class("e.tower_2_pool", "MaxPool2d");
        let net = InceptionV3::from_parts(p.convs, p.children, p.classes);
        let (x, t) = random_map(7, 5, 6, 7);
        for (block, channels) in [("a", 10), ("e", 12)] {
            let got = net.block(&HostEngine, block, &x);
            assert_eq!(got.c, channels, "block {block}");
            assert_same(&got, net.block(&tensors, block, &t), 1e-5, block);
        }
    }

    #[test]
    fn maps_convert_between_planes_and_channel_last_and_average_per_channel() {
        let planes: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let m = Map::from_planes(&planes, 2, 2, 3);
        // pixel (0, 1) holds channel 0's value 1 and channel 1's value 7
        assert_eq!(m.pixel(0, 1), &[1.0, 7.0]);
        assert_eq!(m.to_planes(), planes);
        assert_eq!(m.channel_means(), vec![2.5, 8.5]);
    }
}
