//! Scalar potentials V: ℝᴰ → ℝ with their input gradient ∇ₓV written as explicit forward
//! tensor operations (a hand-written backward pass, layer by layer).
//!
//! Why explicit: training differentiates a loss on ∇ₓV with respect to the parameters θ
//! ("double backward"). burn only has first-order autodiff, but differentiating the explicit
//! ∇ₓV expression once gives the exact mixed derivative ∂(∇ₓV)/∂θ. Invariant: for every
//! layer the explicit input gradient is checked against finite differences, and so is the
//! parameter gradient of a loss built on it (see the tests of each implementation).

/// The [`Model`] methods of a network whose parameters are one `params: Vec<Tensor<1>>` field
/// in canonical order (`$what` names the network in errors).
macro_rules! flat_params_model_methods {
    ($what:literal) => {
        fn flat_params(&self) -> Vec<Tensor<1>> {
            self.params.clone()
        }

        fn set_flat_params(&mut self, params: Vec<Tensor<1>>) -> Result<()> {
            super::check_flat_params(self, &params, $what)?;
            self.params = params;
            Ok(())
        }

        fn tracked(&self) -> Self {
            let mut m = self.clone();
            m.params = super::tracked_params(&self.params);
            m
        }

        fn untracked(&self) -> Self {
            let mut m = self.clone();
            m.params = super::untracked_params(&self.params);
            m
        }

        fn flat_grads(&self, grads: &Gradients) -> Vec<Option<Tensor<1>>> {
            self.params.iter().map(|p| p.grad(grads)).collect()
        }
    };
}

mod activation;
mod conv;
mod host_backprop;
mod host_conv;
mod host_mlp;
mod host_ops;
mod host_tape;
mod host_winograd;
mod mlp;
mod network;
mod quadratic;
mod tape;
mod unet_vit;

pub use activation::Activation;
pub use conv::{ConvConfig, ConvNet, Head, Pool};
pub use host_backprop::{
    add_grads, Fused, FusedBackprop, RecordedBlock, Recording, Seeds, Streamed,
};
pub use host_conv::HostConv;
pub use host_mlp::HostMlp;
pub(crate) use host_mlp::{gemm_strided, transpose};
pub use mlp::{Mlp, MlpConfig};
pub use network::{ModelConfig, ModelKind, Network};
pub use quadratic::Quadratic;
pub use unet_vit::{HostUNetVit, UNetVit, UNetVitConfig};

use burn::tensor::{Device, Gradients, Tensor};

use crate::sampler::{GradField, TensorField};
use crate::Result;

/// A batch potential with an explicit, differentiable input gradient.
///
/// # Shapes
/// `x: [batch, dim]` → energies `[batch]`, gradients `[batch, dim]`.
pub trait Potential: Send + Sync {
    /// The input dimension D.
    fn dim(&self) -> usize;

    /// The device its parameters live on, where its inputs must be too.
    fn device(&self) -> Device;

    /// V(x) for each row of `x`.
    fn energy(&self, x: Tensor<2>) -> Tensor<1>;

    /// (V(x), ∇ₓV(x)) as tensor expressions, so that autodiff through them is exact.
    fn energy_and_grad(&self, x: Tensor<2>) -> (Tensor<1>, Tensor<2>);

    /// ∇ₓV(x) only.
    fn grad(&self, x: Tensor<2>) -> Tensor<2> {
        self.energy_and_grad(x).1
    }
}

/// A potential with trainable parameters. Parameters are exchanged flattened (`[numel]`) in a
/// fixed canonical order, so that optimisers, EMA and checkpoints need not know the layer kinds.
pub trait Model: Potential + Clone {
    /// Canonical parameter names (safetensors keys), e.g. `layers.0.weight`.
    fn param_names(&self) -> Vec<String>;
    /// The shape of each parameter, in canonical order.
    fn param_shapes(&self) -> Vec<Vec<usize>>;
    /// Each parameter flattened to `[numel]`, in canonical order.
    fn flat_params(&self) -> Vec<Tensor<1>>;
    /// Replaces every parameter from flattened values (same order and sizes).
    fn set_flat_params(&mut self, params: Vec<Tensor<1>>) -> Result<()>;
    /// A copy whose parameters are autodiff leaves that retain their gradients.
    fn tracked(&self) -> Self;
    /// A copy without autodiff.
    fn untracked(&self) -> Self;
    /// The gradient of each parameter of a [`Model::tracked`] copy after `backward`, flattened;
    /// `None` where the loss does not depend on it (e.g. the last bias under the flow loss).
    fn flat_grads(&self, grads: &Gradients) -> Vec<Option<Tensor<1>>>;
    /// The form samplers integrate: a fused host kernel where the model has one, otherwise a
    /// tensor adapter.
    fn host_field(&self) -> Result<Box<dyn GradField + '_>> {
        Ok(Box::new(TensorField {
            potential: self,
            precision: crate::backend::Precision::F32,
        }))
    }
    /// The fused f32 host form that computes training-step gradients without autodiff
    /// ([`FusedBackprop::param_grads`]), where the model has one.
    fn fused_backprop(&self) -> Result<Option<Fused>> {
        Ok(None)
    }
    /// Total number of scalar parameters.
    fn num_params(&self) -> usize {
        self.param_shapes()
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }
}

/// The output head of a network: V = s·out, or the soft clamp V = c·tanh(s·out / c); with
/// `with_derivative` also dV/d out. Shapes `[B, 1]`.
pub(crate) fn output_head(
    out: Tensor<2>,
    scale: f64,
    clamp: Option<f64>,
    with_derivative: bool,
) -> (Tensor<2>, Option<Tensor<2>>) {
    match clamp {
        None => {
            let d = with_derivative.then(|| out.ones_like() * scale);
            (out * scale, d)
        }
        Some(c) => {
            let th = (out * (scale / c)).tanh();
            let d = with_derivative.then(|| (th.clone().powi_scalar(2).neg() + 1.0) * scale);
            (th * c, d)
        }
    }
}

/// Copies of parameters that are autodiff leaves retaining their gradients.
pub(crate) fn tracked_params<const D: usize>(params: &[Tensor<D>]) -> Vec<Tensor<D>> {
    params
        .iter()
        .map(|p| p.clone().without_autodiff().autodiff().require_grad())
        .collect()
}

/// Copies of parameters without autodiff.
pub(crate) fn untracked_params<const D: usize>(params: &[Tensor<D>]) -> Vec<Tensor<D>> {
    params
        .iter()
        .map(|p| p.clone().without_autodiff())
        .collect()
}

/// Checks flattened parameters against a model's canonical names and shapes (`what` names the
/// model in errors).
pub(crate) fn check_flat_params<M: Model>(
    model: &M,
    params: &[Tensor<1>],
    what: &str,
) -> Result<()> {
    let shapes = model.param_shapes();
    if params.len() != shapes.len() {
        return Err(crate::EmError::shape(
            format!("{what} parameters"),
            format!("{} tensors", shapes.len()),
            format!("{} tensors", params.len()),
        ));
    }
    for ((p, s), name) in params.iter().zip(&shapes).zip(model.param_names()) {
        let numel: usize = s.iter().product();
        if p.dims()[0] != numel {
            return Err(crate::EmError::shape(
                format!("parameter {name}"),
                format!("{numel} values ({s:?})"),
                format!("{} values", p.dims()[0]),
            ));
        }
    }
    Ok(())
}

/// Hessian-vector products H(x)·v = ∇ₓ(∇ₓV(x)·v), one per row, computed exactly by one
/// first-order backward pass through the explicit gradient.
///
/// # Shapes
/// `x, v: [batch, dim]` → `[batch, dim]` (row b is ∇²V(x_b) v_b).
pub fn hvp(potential: &dyn Potential, x: Tensor<2>, v: Tensor<2>) -> Tensor<2> {
    let x = x.without_autodiff().autodiff().require_grad();
    let v = v.without_autodiff();
    let g = potential.grad(x.clone());
    let s = (g * v).sum();
    let grads = s.backward();
    x.grad(&grads)
        .unwrap_or_else(|| x.clone().without_autodiff().zeros_like())
}

/// The full Hessian ∇²V(x) of one point (rows of the result are H e_k), by D Hessian-vector
/// products. Meant for low dimension (likelihood structure and intrinsic dimension in 2-D/3-D).
pub fn hessian(potential: &dyn Potential, x: Tensor<2>) -> Tensor<2> {
    let [b, d] = x.dims();
    assert_eq!(b, 1, "hessian takes one point");
    let xs = x.repeat_dim(0, d);
    let eye = Tensor::<2>::eye(d, &xs.device()).cast(xs.dtype());
    hvp(potential, xs, eye)
}

#[cfg(test)]
mod tests;
