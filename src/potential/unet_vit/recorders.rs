//! The two recorders the [`UNetVit`] pass is written on, and its host form for samplers.
//!
//! [`Recorder`] is the op set of the network (convolutions, norms, attention's pieces). On
//! [`TensorRecorder`] the pass is a [`Tape`] of burn tensor ops whose ∇ₓV is differentiable
//! again (training); on [`HostRecorder`] it is a [`HostTape`] of fused f32 kernels, used by
//! [`HostUNetVit`] wherever only V and ∇ₓV are needed (samplers, Langevin negatives).

use std::cell::RefCell;

use burn::tensor::Device;

use super::{Conv, Linear, Norm, UNetVit};
use crate::backend::to_f64_vec;
use crate::potential::host_backprop::head_terms;
use crate::potential::host_tape::{Affine, Buffers, HostTape, HostVar};
use crate::potential::tape::{Tape, Var};
use crate::potential::{Activation, Potential};
use crate::sampler::{GradField, Scratch};

/// The ops of the UNet → ViT pass, with parameters named by their index in the network.
pub(super) trait Recorder {
    /// A recorded value.
    type Var: Clone;
    /// Its shape.
    fn dims(v: &Self::Var) -> [usize; 4];
    /// A convolution (weight, bias, kernel, stride and padding from `c`).
    fn conv(&mut self, x: &Self::Var, c: &Conv) -> Self::Var;
    /// A linear map on the last axis.
    fn linear(&mut self, x: &Self::Var, l: &Linear) -> Self::Var;
    /// GroupNorm of images (`groups > 0`) or LayerNorm of tokens, with its affine map.
    fn norm(&mut self, x: &Self::Var, n: &Norm) -> Self::Var;
    /// x + parameter `index` broadcast from `shape`.
    fn shift(&mut self, x: &Self::Var, index: usize, shape: [usize; 4]) -> Self::Var;
    fn activation(&mut self, x: &Self::Var, act: Activation) -> Self::Var;
    fn add(&mut self, a: &Self::Var, b: &Self::Var) -> Self::Var;
    fn scale(&mut self, x: &Self::Var, s: f64) -> Self::Var;
    fn cat_channels(&mut self, a: &Self::Var, b: &Self::Var) -> Self::Var;
    fn upsample2x(&mut self, x: &Self::Var) -> Self::Var;
    fn reshape(&mut self, x: &Self::Var, shape: [usize; 4]) -> Self::Var;
    fn swap_dims(&mut self, x: &Self::Var, d1: usize, d2: usize) -> Self::Var;
    fn matmul(&mut self, a: &Self::Var, b: &Self::Var) -> Self::Var;
    fn softmax(&mut self, x: &Self::Var) -> Self::Var;
}

/// Rows standardised together and the shape of the affine parameters, for a norm of a value
/// of shape `[b, c, h, w]`.
fn norm_layout(n: &Norm, [b, c, h, w]: [usize; 4]) -> (usize, [usize; 4]) {
    if n.groups > 0 {
        (b * n.groups, [1, c, 1, 1])
    } else {
        (b * c * h, [1, 1, 1, w])
    }
}

/// The pass on a burn [`Tape`], with the network's tensor parameters.
pub(super) struct TensorRecorder<'a> {
    pub tape: Tape,
    pub net: &'a UNetVit,
}

impl Recorder for TensorRecorder<'_> {
    type Var = Var;

    fn dims(v: &Var) -> [usize; 4] {
        v.dims()
    }

    fn conv(&mut self, x: &Var, c: &Conv) -> Var {
        let w = self.net.param(c.weight, [c.c_out, c.c_in, c.k, c.k]);
        let b = self.net.params[c.bias].clone();
        self.tape.conv2d(x, w, Some(b), c.stride, c.padding)
    }

    fn linear(&mut self, x: &Var, l: &Linear) -> Var {
        let w = self.net.param(l.weight, [l.d_in, l.d_out]);
        self.tape
            .linear(x, w, Some(self.net.params[l.bias].clone()))
    }

    fn norm(&mut self, x: &Var, n: &Norm) -> Var {
        let (rows, affine) = norm_layout(n, x.dims());
        let s = self.tape.standardize(x, rows);
        let gamma = self.net.param(n.gamma, affine);
        let beta = self.net.param(n.beta, affine);
        self.tape.scale_shift(&s, Some(gamma), beta)
    }

    fn shift(&mut self, x: &Var, index: usize, shape: [usize; 4]) -> Var {
        self.tape.scale_shift(x, None, self.net.param(index, shape))
    }

    fn activation(&mut self, x: &Var, act: Activation) -> Var {
        self.tape.activation(x, act)
    }

    fn add(&mut self, a: &Var, b: &Var) -> Var {
        self.tape.add(a, b)
    }

    fn scale(&mut self, x: &Var, s: f64) -> Var {
        self.tape.scale(x, s)
    }

    fn cat_channels(&mut self, a: &Var, b: &Var) -> Var {
        self.tape.cat_channels(a, b)
    }

    fn upsample2x(&mut self, x: &Var) -> Var {
        self.tape.upsample2x(x)
    }

    fn reshape(&mut self, x: &Var, shape: [usize; 4]) -> Var {
        self.tape.reshape(x, shape)
    }

    fn swap_dims(&mut self, x: &Var, d1: usize, d2: usize) -> Var {
        self.tape.swap_dims(x, d1, d2)
    }

    fn matmul(&mut self, a: &Var, b: &Var) -> Var {
        self.tape.matmul(a, b)
    }

    fn softmax(&mut self, x: &Var) -> Var {
        self.tape.softmax(x)
    }
}

/// The pass on a [`HostTape`], with f32 copies of the parameters.
struct HostRecorder<'p> {
    tape: HostTape<'p>,
    params: &'p [Vec<f32>],
}

impl<'p> HostRecorder<'p> {
    fn affine(&self, index: usize, shape: [usize; 4]) -> Affine<'p> {
        Affine {
            values: &self.params[index],
            shape,
        }
    }
}

impl Recorder for HostRecorder<'_> {
    type Var = HostVar;

    fn dims(v: &HostVar) -> [usize; 4] {
        v.dims()
    }

    fn conv(&mut self, x: &HostVar, c: &Conv) -> HostVar {
        let (w, b) = (&self.params[c.weight], &self.params[c.bias]);
        self.tape.conv2d(x, w, b, (c.k, c.stride, c.padding))
    }

    fn linear(&mut self, x: &HostVar, l: &Linear) -> HostVar {
        let (w, b) = (&self.params[l.weight], &self.params[l.bias]);
        self.tape.linear(x, w, b)
    }

    fn norm(&mut self, x: &HostVar, n: &Norm) -> HostVar {
        let (rows, shape) = norm_layout(n, x.dims());
        let s = self.tape.standardize(x, rows);
        let (gamma, beta) = (self.affine(n.gamma, shape), self.affine(n.beta, shape));
        self.tape.scale_shift(&s, Some(gamma), beta)
    }

    fn shift(&mut self, x: &HostVar, index: usize, shape: [usize; 4]) -> HostVar {
        let beta = self.affine(index, shape);
        self.tape.scale_shift(x, None, beta)
    }

    fn activation(&mut self, x: &HostVar, act: Activation) -> HostVar {
        self.tape.activation(x, act)
    }

    fn add(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        self.tape.add(a, b)
    }

    fn scale(&mut self, x: &HostVar, s: f64) -> HostVar {
        self.tape.scale(x, s)
    }

    fn cat_channels(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        self.tape.cat_channels(a, b)
    }

    fn upsample2x(&mut self, x: &HostVar) -> HostVar {
        self.tape.upsample2x(x)
    }

    fn reshape(&mut self, x: &HostVar, shape: [usize; 4]) -> HostVar {
        self.tape.reshape(x, shape)
    }

    fn swap_dims(&mut self, x: &HostVar, d1: usize, d2: usize) -> HostVar {
        self.tape.swap_dims(x, d1, d2)
    }

    fn matmul(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        self.tape.matmul(a, b)
    }

    fn softmax(&mut self, x: &HostVar) -> HostVar {
        self.tape.softmax(x)
    }
}

/// Images per host pass (bigger blocks make better gemm shapes on small maps).
const HOST_BLOCK: usize = 4;

/// The f32 host form of a [`UNetVit`]: V and ∇ₓV on host-tape kernels, for samplers and
/// Langevin chains (training steps stay on the tensor tape and autodiff). Each image is
/// computed on its own (the network mixes nothing across the batch), so results do not depend
/// on how rows are split into calls.
pub struct HostUNetVit<'a> {
    net: &'a UNetVit,
    params: Vec<Vec<f32>>,
}

impl<'a> HostUNetVit<'a> {
    /// f32 copies of the parameters of `net` (any precision).
    pub fn new(net: &'a UNetVit) -> Self {
        let params = net
            .params
            .iter()
            .map(|p| {
                to_f64_vec(p.clone())
                    .into_iter()
                    .map(|v| v as f32)
                    .collect()
            })
            .collect();
        Self { net, params }
    }

    /// V (when `energy` is given) and ∇ₓV (when `grad` is) of `n` rows, [`HOST_BLOCK`] images
    /// per pass.
    fn energy_grad(
        &self,
        x: &[f32],
        n: usize,
        mut energy: Option<&mut [f32]>,
        mut grad: Option<&mut [f32]>,
    ) {
        thread_local! {
            static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
        }
        let s = self.net.config.image;
        let d = s.numel();
        let (scale, clamp) = (
            self.net.output_scale as f32,
            self.net.energy_clamp.map(|c| c as f32),
        );
        for start in (0..n).step_by(HOST_BLOCK) {
            let rows = HOST_BLOCK.min(n - start);
            let mut t = HostRecorder {
                tape: HostTape::new(BUFFERS.take()),
                params: &self.params,
            };
            let dims = [rows, s.channels, s.height, s.width];
            let input = t.tape.input(&x[start * d..(start + rows) * d], dims);
            let out = self.net.pass(&mut t, &input);
            // V = Σ_patches head(o): seed ∂V/∂o = head'(o)
            let raw = t.tape.value(&out);
            let patches = raw.len() / rows;
            let mut seed = vec![0.0f32; raw.len()];
            for (i, (o, sd)) in raw
                .chunks(patches)
                .zip(seed.chunks_mut(patches))
                .enumerate()
            {
                let mut v = 0.0f32;
                for (&o, sd) in o.iter().zip(sd) {
                    let [value, slope, _] = head_terms(o, scale, clamp);
                    v += value;
                    *sd = slope;
                }
                if let Some(e) = energy.as_deref_mut() {
                    e[start + i] = v;
                }
            }
            if let Some(grad) = grad.as_deref_mut() {
                let g = t.tape.gradient(&out, &seed, &input);
                grad[start * d..(start + rows) * d].copy_from_slice(&g);
            }
            BUFFERS.set(t.tape.into_buffers());
        }
    }
}

impl GradField for HostUNetVit<'_> {
    fn dim(&self) -> usize {
        self.net.dim()
    }

    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
        self.energy_grad(x, n, None, Some(out));
    }

    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
        self.energy_grad(x, n, Some(out), None);
    }
}

/// Whether tensor work runs on the CPU (where the host kernels beat burn's).
pub(super) fn on_cpu(device: &Device) -> bool {
    *device == Device::flex()
}
