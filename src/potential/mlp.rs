//! Fully connected potential V(x) = s · head(W_L h_{L} + b_L), h_{l+1} = a_l(W_l h_l + b_l).
//!
//! Input-gradient rule (the hand-written backward pass): with z_l = h_l W_l + b_l,
//! g_{h_L} = s·head'(·) W_Lᵀ and g_{h_l} = (g_{h_{l+1}} ⊙ a_l'(z_l)) W_lᵀ, so ∇ₓV = g_{h_0}.
//! `head` is the identity, or the soft clamp c·tanh(·/c) when `energy_clamp = c` is set.

use burn::tensor::{Device, Gradients, Tensor};
use serde::{Deserialize, Serialize};

use super::{Activation, Model, Potential};
use crate::backend::{matrix, Precision};
use crate::rng::{stream, uniform, Purpose};
use crate::{EmError, Result};

/// Architecture of an [`Mlp`]; the same struct is the `[model]` table of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Input dimension D.
    pub dim: usize,
    /// Widths of the hidden layers (the tutorial: [256, 256, 256, 256]).
    pub hidden: Vec<usize>,
    /// Activation of every hidden layer except possibly the first.
    pub activation: Activation,
    /// Activation of the first hidden layer (the tutorial uses ReLU there); `None` = `activation`.
    pub first_activation: Option<Activation>,
    /// Fixed factor s multiplying the network output.
    pub output_scale: f64,
    /// Soft clamp c: V = c·tanh(s·out / c). `None` disables it.
    pub energy_clamp: Option<f64>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            dim: 2,
            hidden: vec![256, 256, 256, 256],
            activation: Activation::Silu,
            first_activation: Some(Activation::Relu),
            output_scale: 1.0,
            energy_clamp: None,
        }
    }
}

impl MlpConfig {
    /// Checks sizes and scales, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(EmError::Config {
                key: "model.dim".into(),
                reason: "expected at least 1, found 0".into(),
            });
        }
        if let Some(k) = self.hidden.iter().position(|&w| w == 0) {
            return Err(EmError::Config {
                key: format!("model.hidden[{k}]"),
                reason: "expected a width of at least 1, found 0".into(),
            });
        }
        if !(self.output_scale.is_finite() && self.output_scale != 0.0) {
            return Err(EmError::Config {
                key: "model.output_scale".into(),
                reason: format!(
                    "expected a finite non-zero value, found {}",
                    self.output_scale
                ),
            });
        }
        if let Some(c) = self.energy_clamp {
            if !(c > 0.0 && c.is_finite()) {
                return Err(EmError::Config {
                    key: "model.energy_clamp".into(),
                    reason: format!("expected a positive value, found {c}"),
                });
            }
        }
        Ok(())
    }

    /// Layer sizes (in, out) from input to the scalar output.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        let mut sizes = vec![self.dim];
        sizes.extend(&self.hidden);
        sizes.push(1);
        sizes.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.layer_shapes().iter().map(|(i, o)| i * o + o).sum()
    }

    /// Activation of hidden layer `l`.
    pub fn activation_of(&self, l: usize) -> Activation {
        match (l, self.first_activation) {
            (0, Some(a)) => a,
            _ => self.activation,
        }
    }

    /// Builds the network with PyTorch's default `Linear` initialisation:
    /// weights and biases ~ U(−1/√fan_in, 1/√fan_in), drawn from `(seed, Init)`.
    pub fn init(&self, seed: u64, device: &Device, precision: Precision) -> Result<Mlp> {
        self.validate()?;
        let mut rng = stream(seed, Purpose::Init, 0);
        let mut params = Vec::new();
        for (fan_in, fan_out) in self.layer_shapes() {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut draw = |n: usize| -> Vec<f64> {
                (0..n)
                    .map(|_| (2.0 * uniform(&mut rng) - 1.0) * bound)
                    .collect()
            };
            let w = draw(fan_in * fan_out);
            let b = draw(fan_out);
            params.push(matrix(w, fan_in, fan_out, device, precision));
            params.push(matrix(b, 1, fan_out, device, precision));
        }
        Ok(Mlp {
            config: self.clone(),
            params,
        })
    }
}

/// A multilayer-perceptron potential. Parameters are stored as `[in, out]` weights and
/// `[1, out]` biases, named `layers.{l}.weight` / `layers.{l}.bias`.
#[derive(Debug, Clone)]
pub struct Mlp {
    config: MlpConfig,
    params: Vec<Tensor<2>>,
}

impl Mlp {
    /// The architecture.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// Parameter tensors in canonical order (weight `[in, out]`, bias `[1, out]` per layer).
    pub fn params(&self) -> &[Tensor<2>] {
        &self.params
    }

    fn layer(&self, l: usize) -> (Tensor<2>, Tensor<2>) {
        (self.params[2 * l].clone(), self.params[2 * l + 1].clone())
    }

    fn num_layers(&self) -> usize {
        self.params.len() / 2
    }

    /// Applies the output scale and soft clamp to the raw output; returns (V, dV/d out).
    fn head(&self, out: Tensor<2>, with_derivative: bool) -> (Tensor<2>, Option<Tensor<2>>) {
        let c = &self.config;
        super::output_head(out, c.output_scale, c.energy_clamp, with_derivative)
    }
}

impl Potential for Mlp {
    fn dim(&self) -> usize {
        self.config.dim
    }

    fn device(&self) -> Device {
        self.params[0].device()
    }

    fn energy(&self, x: Tensor<2>) -> Tensor<1> {
        let n = self.num_layers();
        let mut h = x;
        for l in 0..n - 1 {
            let (w, b) = self.layer(l);
            h = self.config.activation_of(l).apply(h.matmul(w) + b);
        }
        let (w, b) = self.layer(n - 1);
        let (v, _) = self.head(h.matmul(w) + b, false);
        let rows = v.dims()[0];
        v.reshape([rows])
    }

    fn energy_and_grad(&self, x: Tensor<2>) -> (Tensor<1>, Tensor<2>) {
        let n = self.num_layers();
        let mut h = x;
        let mut derivs = Vec::with_capacity(n - 1);
        for l in 0..n - 1 {
            let (w, b) = self.layer(l);
            let (a, da) = self
                .config
                .activation_of(l)
                .apply_with_derivative(h.matmul(w) + b);
            derivs.push(da);
            h = a;
        }
        let (w_out, b_out) = self.layer(n - 1);
        let (v, dv) = self.head(h.matmul(w_out.clone()) + b_out, true);
        // g_{h_L} = dV/dout · W_Lᵀ : [B,1]·[1,H] = [B,H]
        let mut g = dv.expect("derivative requested").matmul(w_out.transpose());
        for l in (0..n - 1).rev() {
            let (w, _) = self.layer(l);
            g = (g * derivs.pop().expect("one derivative per hidden layer")).matmul(w.transpose());
        }
        let rows = v.dims()[0];
        (v.reshape([rows]), g)
    }
}

impl Model for Mlp {
    fn param_names(&self) -> Vec<String> {
        (0..self.num_layers())
            .flat_map(|l| [format!("layers.{l}.weight"), format!("layers.{l}.bias")])
            .collect()
    }

    fn param_shapes(&self) -> Vec<Vec<usize>> {
        self.config
            .layer_shapes()
            .into_iter()
            .flat_map(|(i, o)| [vec![i, o], vec![1, o]])
            .collect()
    }

    fn flat_params(&self) -> Vec<Tensor<1>> {
        self.params
            .iter()
            .map(|p| {
                let n = p.dims().iter().product::<usize>();
                p.clone().reshape([n])
            })
            .collect()
    }

    fn set_flat_params(&mut self, params: Vec<Tensor<1>>) -> Result<()> {
        super::check_flat_params(self, &params, "Mlp")?;
        let out = params
            .into_iter()
            .zip(self.param_shapes())
            .map(|(p, s)| p.reshape([s[0], s[1]]))
            .collect();
        self.params = out;
        Ok(())
    }

    fn tracked(&self) -> Self {
        Mlp {
            config: self.config.clone(),
            params: super::tracked_params(&self.params),
        }
    }

    fn untracked(&self) -> Self {
        Mlp {
            config: self.config.clone(),
            params: super::untracked_params(&self.params),
        }
    }

    fn host_field(&self) -> Result<Box<dyn crate::sampler::GradField + '_>> {
        Ok(Box::new(self.host()?))
    }

    fn fused_backprop(&self) -> Result<Option<super::Fused>> {
        self.host().map(|h| Some(super::Fused::Mlp(h)))
    }

    fn flat_grads(&self, grads: &Gradients) -> Vec<Option<Tensor<1>>> {
        self.params
            .iter()
            .map(|p| {
                p.grad(grads).map(|g| {
                    let n = g.dims().iter().product::<usize>();
                    g.reshape([n])
                })
            })
            .collect()
    }
}
