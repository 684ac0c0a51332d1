//! Convolutional potential for images: V(x) = s · head(w · u_M + b), with
//! h_{l+1} = a(conv2d(h_l, W_l, b_l; stride s_l, padding k/2)), h_0 = x as `[B, C, H, W]`,
//! u_0 = pool(h_L) (the spatial mean, or all of h_L flattened) and dense layers
//! u_{m+1} = a(u_m A_m + c_m).
//!
//! Input-gradient rule (the hand-written backward pass, as tensor ops so that autodiff over it
//! gives the exact parameter gradient of losses on ∇ₓV):
//! - dense layer: g_{u_m} = (g_{u_{m+1}} ⊙ a'(u_m A_m + c_m)) A_mᵀ, starting from head'(o) wᵀ;
//! - mean pool: g_{h_L} = g_{u_0} / (H_L W_L), broadcast over the spatial positions; flatten:
//!   g_{h_L} = g_{u_0} reshaped to `[B, C, H, W]`;
//! - convolution: the input gradient of y = conv2d(x, W) is the transposed convolution
//!   `conv_transpose2d(g_y, W)` with the same stride and padding, and the output padding that
//!   restores the input size ((H_in + 2p − k) mod s);
//! - activation: δ_l = g_{h_{l+1}} ⊙ a'(z_l).

use burn::tensor::module::{conv2d, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Gradients, Tensor};
use serde::{Deserialize, Serialize};

use super::host_ops::ConvGeom;
use super::{Activation, Model, Potential};
use crate::backend::{vector, Precision};
use crate::data::ImageShape;
use crate::rng::{stream, uniform, Purpose};
use crate::{EmError, Result};

/// Architecture of a [`ConvNet`] (the `[model.conv]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvConfig {
    /// Shape of the input images.
    pub image: ImageShape,
    /// Output channels of each convolution.
    pub channels: Vec<usize>,
    /// Stride of each convolution (same length as `channels`).
    pub strides: Vec<usize>,
    /// Square kernel size (odd; padding k/2 keeps the size at stride 1).
    pub kernel: usize,
    /// How the last feature map becomes a vector: its spatial mean (a translation-invariant
    /// sum of local energies) or all of it flattened (position-aware, like the encoders of
    /// image EBMs).
    pub pool: Pool,
    /// Widths of the dense layers between the pooled features and the scalar output.
    pub hidden: Vec<usize>,
}

/// Reduction of the last feature map `[B, C, H, W]` to the dense layers' input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// Mean over the spatial positions: `C` features.
    Mean,
    /// Every value: `C·H·W` features.
    Flatten,
}

impl Default for ConvConfig {
    /// The small CPU-friendly MNIST potential: 1→32 →(/2) 64 →(/2) 64, 3×3 kernels.
    fn default() -> Self {
        Self {
            image: ImageShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            channels: vec![32, 64, 64],
            strides: vec![1, 2, 2],
            kernel: 3,
            pool: Pool::Mean,
            hidden: Vec::new(),
        }
    }
}

impl ConvConfig {
    /// Checks sizes, naming the offending key (under `prefix`, e.g. `model.conv`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad =
            |key: &str, reason: String| Err(EmError::config(format!("{prefix}.{key}"), reason));
        let s = self.image;
        if s.channels == 0 || s.height == 0 || s.width == 0 {
            return bad(
                "image",
                format!("expected a non-empty image shape, found {s}"),
            );
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            return bad(
                "channels",
                format!(
                    "expected at least one layer, each with ≥ 1 channel, found {:?}",
                    self.channels
                ),
            );
        }
        if self.strides.len() != self.channels.len() || self.strides.contains(&0) {
            return bad(
                "strides",
                format!(
                    "expected {} strides ≥ 1 (one per entry of channels), found {:?}",
                    self.channels.len(),
                    self.strides
                ),
            );
        }
        if self.kernel.is_multiple_of(2) {
            return bad(
                "kernel",
                format!("expected an odd kernel size, found {}", self.kernel),
            );
        }
        if self.hidden.contains(&0) {
            return bad(
                "hidden",
                format!("expected widths ≥ 1, found {:?}", self.hidden),
            );
        }
        Ok(())
    }

    /// Each convolution's geometry, in order.
    pub(super) fn geometry(&self) -> Vec<ConvGeom> {
        let (k, p) = (self.kernel, self.kernel / 2);
        let (mut c, mut h, mut w) = (self.image.channels, self.image.height, self.image.width);
        let mut out = Vec::new();
        for (&c_out, &s) in self.channels.iter().zip(&self.strides) {
            let g = ConvGeom::new(c, c_out, k, s, p, h, w);
            (c, h, w) = (c_out, g.h_out, g.w_out);
            out.push(g);
        }
        out
    }

    /// Number of features after the pool of the last layer's output.
    pub(super) fn pooled_features(&self, last: &ConvGeom) -> usize {
        match self.pool {
            Pool::Mean => last.c_out,
            Pool::Flatten => last.c_out * last.h_out * last.w_out,
        }
    }

    /// Parameter shapes in canonical order: per convolution `[out, in, k, k]` and `[out]`,
    /// per dense layer `[in, out]` and `[out]`, then the head `[features, 1]` and `[1]`.
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        let k = self.kernel;
        let geometry = self.geometry();
        let mut v: Vec<Vec<usize>> = geometry
            .iter()
            .flat_map(|g| [vec![g.c_out, g.c_in, k, k], vec![g.c_out]])
            .collect();
        let mut features = self.pooled_features(geometry.last().expect("validated"));
        for &width in &self.hidden {
            v.push(vec![features, width]);
            v.push(vec![width]);
            features = width;
        }
        v.push(vec![features, 1]);
        v.push(vec![1]);
        v
    }

    /// Builds the network with PyTorch's default initialisation (U(±1/√fan_in) for weights
    /// and biases, fan_in = C_in·k² for convolutions), drawn from `(seed, Init)`.
    pub fn init(
        &self,
        head: Head,
        seed: u64,
        device: &Device,
        precision: Precision,
    ) -> Result<ConvNet> {
        self.validate("model.conv")?;
        let mut rng = stream(seed, Purpose::Init, 0);
        let shapes = self.param_shapes();
        let mut params = Vec::new();
        for pair in shapes.chunks(2) {
            let fan_in = match pair[0].as_slice() {
                [_, c_in, kh, kw] => c_in * kh * kw,
                [c, _] => *c,
                other => unreachable!("weight shape {other:?}"),
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            for shape in pair {
                let n: usize = shape.iter().product();
                let values = (0..n)
                    .map(|_| (2.0 * uniform(&mut rng) - 1.0) * bound)
                    .collect();
                params.push(vector(values, device, precision));
            }
        }
        Ok(ConvNet {
            config: self.clone(),
            head,
            geometry: self.geometry(),
            params,
        })
    }
}

/// Activation, output scale and soft clamp: the parts of a potential outside its layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    /// Activation after every layer.
    pub activation: Activation,
    /// Fixed factor s multiplying the network output.
    pub output_scale: f64,
    /// Soft clamp c: V = c·tanh(s·out / c).
    pub energy_clamp: Option<f64>,
}

impl Head {
    /// (V, dV/d out when `with_derivative`) of raw outputs `out: [B, 1]`.
    fn apply(&self, out: Tensor<2>, with_derivative: bool) -> (Tensor<2>, Option<Tensor<2>>) {
        super::output_head(out, self.output_scale, self.energy_clamp, with_derivative)
    }
}

/// A convolutional potential over images given as rows of `C·H·W` values.
#[derive(Debug, Clone)]
pub struct ConvNet {
    config: ConvConfig,
    head: Head,
    geometry: Vec<ConvGeom>,
    /// Flattened parameters in canonical order (see [`ConvConfig::param_shapes`]).
    params: Vec<Tensor<1>>,
}

impl ConvNet {
    /// The architecture.
    pub fn config(&self) -> &ConvConfig {
        &self.config
    }

    /// Activation, output scale and clamp.
    pub fn head(&self) -> Head {
        self.head
    }

    fn kernel(&self, l: usize) -> Tensor<4> {
        let g = self.geometry[l];
        let k = self.config.kernel;
        self.params[2 * l].clone().reshape([g.c_out, g.c_in, k, k])
    }

    fn conv_options(&self, l: usize) -> ConvOptions<2> {
        let (s, p) = (self.geometry[l].stride, self.config.kernel / 2);
        ConvOptions::new([s, s], [p, p], [1, 1], 1)
    }

    fn images(&self, x: Tensor<2>) -> Tensor<4> {
        let s = self.config.image;
        let b = x.dims()[0];
        x.reshape([b, s.channels, s.height, s.width])
    }

    /// Index of dense layer m's weight in `params` (its bias follows).
    fn dense_index(&self, m: usize) -> usize {
        2 * (self.geometry.len() + m)
    }

    /// Activation derivatives of every convolution and dense layer (when `derivatives`), then
    /// the raw head output `[B, 1]`.
    fn forward(&self, x: Tensor<2>, derivatives: bool) -> (Derivatives, Tensor<2>) {
        let mut h = self.images(x);
        let mut derivs = Vec::new();
        for l in 0..self.geometry.len() {
            let z = conv2d(
                h,
                self.kernel(l),
                Some(self.params[2 * l + 1].clone()),
                self.conv_options(l),
            );
            h = self.activate(z, derivatives.then_some(&mut derivs));
        }
        let [b, c, hh, ww] = h.dims();
        let mut u = match self.config.pool {
            Pool::Mean => h.mean_dim(3).mean_dim(2).reshape([b, c]),
            Pool::Flatten => h.reshape([b, c * hh * ww]),
        };
        let mut dense_derivs = Vec::new();
        for m in 0..self.config.hidden.len() {
            let i = self.dense_index(m);
            let z = self.affine(u, i);
            u = self.activate(z, derivatives.then_some(&mut dense_derivs));
        }
        let out = self.affine(u, self.params.len() - 2);
        (
            Derivatives {
                conv: derivs,
                dense: dense_derivs,
            },
            out,
        )
    }

    /// a(z), pushing a'(z) onto `derivs` when given.
    fn activate<const D: usize>(
        &self,
        z: Tensor<D>,
        derivs: Option<&mut Vec<Tensor<D>>>,
    ) -> Tensor<D> {
        match derivs {
            Some(derivs) => {
                let (a, d) = self.head.activation.apply_with_derivative(z);
                derivs.push(d);
                a
            }
            None => self.head.activation.apply(z),
        }
    }

    /// u · W + c with W = params[i] as `[in, out]` and c = params[i + 1].
    fn affine(&self, u: Tensor<2>, i: usize) -> Tensor<2> {
        let n_in = u.dims()[1];
        let n_out = self.params[i + 1].dims()[0];
        let w = self.params[i].clone().reshape([n_in, n_out]);
        u.matmul(w) + self.params[i + 1].clone().reshape([1, n_out])
    }

    /// g_u · Wᵀ for W = params[i] as `[in, out]`: the input gradient of [`Self::affine`].
    fn affine_vjp(&self, g: Tensor<2>, i: usize) -> Tensor<2> {
        let n_out = g.dims()[1];
        let n_in = self.params[i].dims()[0] / n_out;
        g.matmul(self.params[i].clone().reshape([n_in, n_out]).transpose())
    }

    /// The input gradient of the raw output from g_{u_M} = dV/d out · wᵀ down to the pool.
    fn pooled_vjp(&self, dv: Tensor<2>, dense: &mut Vec<Tensor<2>>) -> Tensor<2> {
        let mut g = self.affine_vjp(dv, self.params.len() - 2);
        for m in (0..self.config.hidden.len()).rev() {
            let delta = g * dense.pop().expect("one derivative per dense layer");
            g = self.affine_vjp(delta, self.dense_index(m));
        }
        g
    }
}

/// Activation derivatives a'(z) of the layers, in forward order.
struct Derivatives {
    conv: Vec<Tensor<4>>,
    dense: Vec<Tensor<2>>,
}

impl Potential for ConvNet {
    fn dim(&self) -> usize {
        self.config.image.numel()
    }

    fn device(&self) -> Device {
        self.params[0].device()
    }

    fn energy(&self, x: Tensor<2>) -> Tensor<1> {
        let (_, out) = self.forward(x, false);
        let (v, _) = self.head.apply(out, false);
        let b = v.dims()[0];
        v.reshape([b])
    }

    fn energy_and_grad(&self, x: Tensor<2>) -> (Tensor<1>, Tensor<2>) {
        let b = x.dims()[0];
        let (mut derivs, out) = self.forward(x, true);
        let (v, dv) = self.head.apply(out, true);
        let dv = dv.expect("derivative requested");
        let last = *self.geometry.last().expect("at least one layer");
        let (c_l, h_l, w_l) = (last.c_out, last.h_out, last.w_out);
        let g_pooled = self.pooled_vjp(dv, &mut derivs.dense);
        let mut g: Tensor<4> = match self.config.pool {
            // the mean pool spreads its gradient evenly over the H_L·W_L positions
            Pool::Mean => (g_pooled * (1.0 / (h_l * w_l) as f64))
                .reshape([b, c_l, 1, 1])
                .expand([b, c_l, h_l, w_l]),
            Pool::Flatten => g_pooled.reshape([b, c_l, h_l, w_l]),
        };
        for l in (0..self.geometry.len()).rev() {
            let geo = self.geometry[l];
            let delta = g * derivs.conv.pop().expect("one derivative per layer");
            let p = self.config.kernel / 2;
            g = conv_transpose2d(
                delta,
                self.kernel(l),
                None,
                ConvTransposeOptions::new(
                    [geo.stride, geo.stride],
                    [p, p],
                    geo.out_pad(),
                    [1, 1],
                    1,
                ),
            );
        }
        (v.reshape([b]), g.reshape([b, self.dim()]))
    }
}

impl Model for ConvNet {
    fn param_names(&self) -> Vec<String> {
        let mut v: Vec<String> = (0..self.geometry.len())
            .flat_map(|l| [format!("convs.{l}.weight"), format!("convs.{l}.bias")])
            .collect();
        for m in 0..self.config.hidden.len() {
            v.push(format!("dense.{m}.weight"));
            v.push(format!("dense.{m}.bias"));
        }
        v.push("head.weight".into());
        v.push("head.bias".into());
        v
    }

    fn param_shapes(&self) -> Vec<Vec<usize>> {
        self.config.param_shapes()
    }

    flat_params_model_methods!("ConvNet");

    fn host_field(&self) -> Result<Box<dyn crate::sampler::GradField + '_>> {
        Ok(Box::new(self.host()?))
    }

    fn fused_backprop(&self) -> Result<Option<super::Fused>> {
        self.host().map(|h| Some(super::Fused::Conv(h)))
    }
}
