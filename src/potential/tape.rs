//! A recorded forward pass whose reverse sweep is itself made of differentiable tensor ops.
//!
//! Networks with skip connections, normalisation and attention (the UNet/ViT potential) are
//! written as a sequence of [`Tape`] ops. Each op computes its output and records its
//! vector-Jacobian product (VJP) — the op's input-gradient rule — as a closure over burn tensor
//! ops. [`Tape::gradient`] runs those closures in reverse, summing where a value feeds several
//! ops, and so yields ∇ₓ of a scalar as an explicit tensor expression. burn's first-order
//! autodiff over that expression then gives the exact parameter gradient of losses on ∇ₓV.
//!
//! Parameters enter ops as constants from the tape's point of view: the tape only propagates
//! gradients to its own values (the input and what is computed from it).
//!
//! Invariant: every op's VJP is checked against central finite differences in f64, and so is
//! the parameter gradient of a loss on the VJP (tests at the end of this file).

use burn::tensor::module::{conv2d, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{activation, Tensor};

use super::Activation;

/// The VJP of one op: output gradient → (input value id, input gradient) pairs.
type Backward = Box<dyn FnOnce(Tensor<4>) -> Vec<(usize, Tensor<4>)>>;

/// A value recorded on a [`Tape`]. Every value is a rank-4 tensor: images `[B, C, H, W]`,
/// token sequences `[B, 1, N, E]`, attention heads `[B, H, N, d]`.
#[derive(Clone)]
pub(crate) struct Var {
    /// The forward value.
    pub value: Tensor<4>,
    id: usize,
}

impl Var {
    /// The shape of the value.
    pub fn dims(&self) -> [usize; 4] {
        self.value.dims()
    }
}

/// The recorded ops of one forward pass, in order.
#[derive(Default)]
pub(crate) struct Tape {
    /// One entry per value; `None` for inputs.
    backward: Vec<Option<Backward>>,
}

/// Variance floor of the normalisations (PyTorch's GroupNorm/LayerNorm default).
pub(crate) const NORM_EPS: f64 = 1e-5;

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an input value (a leaf of the reverse sweep).
    pub fn input(&mut self, value: Tensor<4>) -> Var {
        self.backward.push(None);
        Var {
            value,
            id: self.backward.len() - 1,
        }
    }

    fn push(&mut self, value: Tensor<4>, back: Backward) -> Var {
        self.backward.push(Some(back));
        Var {
            value,
            id: self.backward.len() - 1,
        }
    }

    /// ∂(Σ seed ⊙ out)/∂wrt as a tensor expression: the reverse sweep from `out` (zeros when
    /// `out` does not depend on `wrt`).
    pub fn gradient(mut self, out: &Var, seed: Tensor<4>, wrt: &Var) -> Tensor<4> {
        let mut grads: Vec<Option<Tensor<4>>> = vec![None; out.id + 1];
        grads[out.id] = Some(seed);
        for id in (wrt.id + 1..=out.id).rev() {
            let (Some(g), Some(back)) = (grads[id].take(), self.backward[id].take()) else {
                continue;
            };
            for (input, gi) in back(g) {
                grads[input] = Some(match grads[input].take() {
                    Some(acc) => acc + gi,
                    None => gi,
                });
            }
        }
        grads[wrt.id]
            .take()
            .unwrap_or_else(|| wrt.value.zeros_like())
    }

    /// 2-D convolution with weight `[out, in, k, k]`, optional bias, stride s and padding p.
    /// VJP: the transposed convolution with the same kernel, stride and padding, and the output
    /// padding that restores the input size.
    pub fn conv2d(
        &mut self,
        x: &Var,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        stride: usize,
        padding: usize,
    ) -> Var {
        let [_, _, h, w] = x.dims();
        let k = weight.dims()[2];
        let y = conv2d(
            x.value.clone(),
            weight.clone(),
            bias,
            ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
        );
        let [_, _, ho, wo] = y.dims();
        let out_pad = [
            h + 2 * padding - k - (ho - 1) * stride,
            w + 2 * padding - k - (wo - 1) * stride,
        ];
        let id = x.id;
        self.push(
            y,
            Box::new(move |g| {
                if stride == 1 && 2 * padding + 1 == k {
                    // a "same" stride-1 convolution's VJP is the convolution with the kernel
                    // flipped in space and transposed in channels (faster than the scatter
                    // of a transposed convolution)
                    let flipped = weight.flip([2, 3]).swap_dims(0, 1);
                    let opts = ConvOptions::new([1, 1], [padding, padding], [1, 1], 1);
                    return vec![(id, conv2d(g, flipped, None, opts))];
                }
                let opts = ConvTransposeOptions::new(
                    [stride, stride],
                    [padding, padding],
                    out_pad,
                    [1, 1],
                    1,
                );
                vec![(id, conv_transpose2d(g, weight, None, opts))]
            }),
        )
    }

    /// y = a(x) elementwise. VJP: g ⊙ a'(x).
    pub fn activation(&mut self, x: &Var, act: Activation) -> Var {
        let (y, d) = act.apply_with_derivative(x.value.clone());
        let id = x.id;
        self.push(y, Box::new(move |g| vec![(id, g * d)]))
    }

    /// y = a + b. VJP: g to both.
    pub fn add(&mut self, a: &Var, b: &Var) -> Var {
        let (ia, ib) = (a.id, b.id);
        self.push(
            a.value.clone() + b.value.clone(),
            Box::new(move |g| vec![(ia, g.clone()), (ib, g)]),
        )
    }

    /// y = s·x. VJP: s·g.
    pub fn scale(&mut self, x: &Var, s: f64) -> Var {
        let id = x.id;
        self.push(x.value.clone() * s, Box::new(move |g| vec![(id, g * s)]))
    }

    /// y = x ⊙ γ + β with parameters broadcast from shapes such as `[1, C, 1, 1]` (per channel)
    /// or `[1, 1, 1, E]` (per feature). VJP: g ⊙ γ.
    pub fn scale_shift(&mut self, x: &Var, gamma: Option<Tensor<4>>, beta: Tensor<4>) -> Var {
        let id = x.id;
        match gamma {
            Some(gamma) => self.push(
                x.value.clone() * gamma.clone() + beta,
                Box::new(move |g| vec![(id, g * gamma)]),
            ),
            None => self.push(x.value.clone() + beta, Box::new(move |g| vec![(id, g)])),
        }
    }

    /// Concatenation along the channel axis (dim 1). VJP: the matching slices of g.
    pub fn cat_channels(&mut self, a: &Var, b: &Var) -> Var {
        let (ia, ib) = (a.id, b.id);
        let (ca, cb) = (a.dims()[1], b.dims()[1]);
        self.push(
            Tensor::cat(vec![a.value.clone(), b.value.clone()], 1),
            Box::new(move |g| vec![(ia, g.clone().narrow(1, 0, ca)), (ib, g.narrow(1, ca, cb))]),
        )
    }

    /// Nearest-neighbour up-sampling by 2 in both spatial axes. VJP: the sum over each 2×2 block.
    pub fn upsample2x(&mut self, x: &Var) -> Var {
        let [b, c, h, w] = x.dims();
        let y: Tensor<6> = x
            .value
            .clone()
            .reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2]);
        let id = x.id;
        self.push(
            y.reshape([b, c, 2 * h, 2 * w]),
            Box::new(move |g| {
                let g: Tensor<6> = g.reshape([b, c, h, 2, w, 2]);
                vec![(id, g.sum_dim(5).sum_dim(3).reshape([b, c, h, w]))]
            }),
        )
    }

    /// A view with another shape (same number of elements, row-major). VJP: the inverse view.
    pub fn reshape(&mut self, x: &Var, shape: [usize; 4]) -> Var {
        let (id, old) = (x.id, x.dims());
        self.push(
            x.value.clone().reshape(shape),
            Box::new(move |g| vec![(id, g.reshape(old))]),
        )
    }

    /// Swaps two axes. VJP: the same swap.
    pub fn swap_dims(&mut self, x: &Var, d1: usize, d2: usize) -> Var {
        let id = x.id;
        self.push(
            x.value.clone().swap_dims(d1, d2),
            Box::new(move |g| vec![(id, g.swap_dims(d1, d2))]),
        )
    }

    /// Standardises each of `rows` contiguous row-major groups of x to mean 0 and variance 1:
    /// x̂ = (x − μ)·r with r = 1/√(σ² + eps) (biased variance). Group norm is rows = B·G,
    /// layer norm over the last axis is rows = (number of tokens).
    /// VJP: r·(g − mean(g) − x̂·mean(g ⊙ x̂)) per row.
    pub fn standardize(&mut self, x: &Var, rows: usize) -> Var {
        let shape = x.dims();
        let m = shape.iter().product::<usize>() / rows;
        let flat: Tensor<2> = x.value.clone().reshape([rows, m]);
        let centred = flat.clone() - flat.mean_dim(1);
        let var = centred.clone().powi_scalar(2).mean_dim(1);
        let r = (var + NORM_EPS).sqrt().recip();
        let xhat = centred * r.clone();
        let id = x.id;
        self.push(
            xhat.clone().reshape(shape),
            Box::new(move |g| {
                let g: Tensor<2> = g.reshape([rows, m]);
                let mean_g = g.clone().mean_dim(1);
                let mean_gx = (g.clone() * xhat.clone()).mean_dim(1);
                let gx = (g - mean_g - xhat * mean_gx) * r;
                vec![(id, gx.reshape(shape))]
            }),
        )
    }

    /// y = x W + b on the last axis, with W `[in, out]`. VJP: g Wᵀ.
    pub fn linear(&mut self, x: &Var, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Var {
        let [a, b, n, d_in] = x.dims();
        let d_out = weight.dims()[1];
        let mut y = x
            .value
            .clone()
            .reshape([a * b * n, d_in])
            .matmul(weight.clone());
        if let Some(bias) = bias {
            y = y + bias.reshape([1, d_out]);
        }
        let id = x.id;
        self.push(
            y.reshape([a, b, n, d_out]),
            Box::new(move |g| {
                let g: Tensor<2> = g.reshape([a * b * n, d_out]);
                vec![(id, g.matmul(weight.transpose()).reshape([a, b, n, d_in]))]
            }),
        )
    }

    /// Batched matrix product over the last two axes. VJP: (g Bᵀ, Aᵀ g).
    pub fn matmul(&mut self, a: &Var, b: &Var) -> Var {
        let (ia, ib) = (a.id, b.id);
        let (av, bv) = (a.value.clone(), b.value.clone());
        self.push(
            av.clone().matmul(bv.clone()),
            Box::new(move |g| {
                vec![
                    (ia, g.clone().matmul(bv.swap_dims(2, 3))),
                    (ib, av.swap_dims(2, 3).matmul(g)),
                ]
            }),
        )
    }

    /// Softmax over the last axis. VJP: y ⊙ (g − Σ_last g ⊙ y).
    pub fn softmax(&mut self, x: &Var) -> Var {
        let y = activation::softmax(x.value.clone(), 3);
        let id = x.id;
        self.push(
            y.clone(),
            Box::new(move |g| {
                let dot = (g.clone() * y.clone()).sum_dim(3);
                vec![(id, y * (g - dot))]
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{cpu, cpu_autodiff, scalar, to_f64_vec, Precision};
    use crate::rng::{normal, stream, Purpose};
    use burn::tensor::{Device, TensorData};

    fn randn(n: usize, seed: u64) -> Vec<f64> {
        let mut r = stream(seed, Purpose::Eval, 7);
        (0..n).map(|_| normal(&mut r)).collect()
    }

    fn t4(values: Vec<f64>, shape: [usize; 4], dev: &Device) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(values, shape),
            (dev, Precision::F64.dtype()),
        )
    }

    /// An op under test: builds its output from the input and a parameter tensor.
    type Op = dyn Fn(&mut Tape, &Var, Tensor<4>) -> Var;

    /// f(x, θ) = Σ c ⊙ op(x; θ): its tape gradient, and a loss on that gradient.
    fn value_and_grad(
        op: &Op,
        x: Tensor<4>,
        theta: Tensor<4>,
        c: Tensor<4>,
    ) -> (Tensor<1>, Tensor<4>) {
        let mut tape = Tape::new();
        let xv = tape.input(x);
        let y = op(&mut tape, &xv, theta);
        let c = c.reshape(y.dims());
        let f = (y.value.clone() * c.clone()).sum();
        (f, tape.gradient(&y, c, &xv))
    }

    /// Checks an op's VJP against central differences of Σ c ⊙ op, and the θ-gradient of the loss
    /// L = Σ d ⊙ ∇ₓf + ½‖∇ₓf‖² (autodiff through the VJP) against central differences in θ.
    fn check_op(
        label: &str,
        op: &Op,
        x_shape: [usize; 4],
        theta_shape: [usize; 4],
        out_len: usize,
    ) {
        let dev = cpu();
        let nx: usize = x_shape.iter().product();
        let nt: usize = theta_shape.iter().product();
        let x = randn(nx, 1);
        let theta: Vec<f64> = randn(nt, 2).iter().map(|v| 0.5 * v + 0.3).collect();
        let c = randn(out_len, 3);
        let d = randn(nx, 4);
        let c_shape = [out_len, 1, 1, 1];
        let f_at = |x: &[f64]| {
            let (f, _) = value_and_grad(
                op,
                t4(x.to_vec(), x_shape, &dev),
                t4(theta.clone(), theta_shape, &dev),
                t4(c.clone(), c_shape, &dev),
            );
            scalar(f)
        };
        let (_, g) = value_and_grad(
            op,
            t4(x.clone(), x_shape, &dev),
            t4(theta.clone(), theta_shape, &dev),
            t4(c.clone(), c_shape, &dev),
        );
        let g = to_f64_vec(g);
        let h = 1e-6;
        for k in 0..nx {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += h;
            xm[k] -= h;
            let fd = (f_at(&xp) - f_at(&xm)) / (2.0 * h);
            assert!(
                (g[k] - fd).abs() < 1e-6 * fd.abs().max(1.0),
                "{label} ∂x[{k}]: {} vs {fd}",
                g[k]
            );
        }
        // the loss on the gradient, differentiated in θ by autodiff through the VJP
        let loss = |theta: Tensor<4>, dev: &Device| {
            let (_, g) = value_and_grad(
                op,
                t4(x.clone(), x_shape, dev),
                theta,
                t4(c.clone(), c_shape, dev),
            );
            let dt = t4(d.clone(), x_shape, dev);
            (g.clone() * dt).sum() + g.powi_scalar(2).sum() * 0.5
        };
        let th = t4(theta.clone(), theta_shape, &cpu_autodiff()).require_grad();
        let grads = loss(th.clone(), &cpu_autodiff()).backward();
        let ana = th
            .grad(&grads)
            .map(to_f64_vec)
            .unwrap_or_else(|| vec![0.0; nt]);
        for k in 0..nt {
            let at = |delta: f64| {
                let mut v = theta.clone();
                v[k] += delta;
                scalar(loss(t4(v, theta_shape, &dev), &dev))
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (ana[k] - fd).abs() < 1e-6 * fd.abs().max(1.0),
                "{label} ∂θ[{k}]: {} vs {fd}",
                ana[k]
            );
        }
    }

    #[test]
    fn conv2d_vjp_and_its_parameter_gradient_match_finite_differences() {
        // odd and even sizes, stride 1 and 2 (output padding), 3×3 and 1×1 kernels
        for (shape, stride, k, pad) in [
            ([2, 2, 5, 6], 1, 3, 1),
            ([1, 2, 5, 6], 2, 3, 1),
            ([1, 2, 4, 4], 2, 2, 0),
            ([1, 2, 3, 3], 1, 1, 0),
        ] {
            let [b, _, h, w] = shape;
            let (ho, wo) = (
                (h + 2 * pad - k) / stride + 1,
                (w + 2 * pad - k) / stride + 1,
            );
            let op = move |t: &mut Tape, x: &Var, th: Tensor<4>| {
                let th = th.reshape([3, 2, k, k]);
                let y = t.conv2d(x, th, None, stride, pad);
                // a nonlinearity after the conv makes the θ-gradient of the loss non-trivial
                t.activation(&y, Activation::Silu)
            };
            check_op(
                &format!("conv s{stride} k{k}"),
                &op,
                shape,
                [3, 2, k, k],
                b * 3 * ho * wo,
            );
        }
    }

    #[test]
    fn activation_vjp_matches_finite_differences() {
        for act in Activation::ALL
            .into_iter()
            .filter(|a| *a != Activation::Relu)
        {
            let op = move |t: &mut Tape, x: &Var, th: Tensor<4>| {
                let y = t.scale_shift(x, Some(th.clone()), th);
                t.activation(&y, act)
            };
            check_op(&format!("{act:?}"), &op, [2, 3, 1, 1], [1, 3, 1, 1], 6);
        }
    }

    #[test]
    fn standardize_vjp_matches_finite_differences_for_group_and_layer_norm() {
        // group norm: 2 images × 2 groups of (2 channels × 2×2 pixels); then a per-channel affine
        let gn = |t: &mut Tape, x: &Var, th: Tensor<4>| {
            let s = t.standardize(x, 2 * 2);
            let y = t.scale_shift(&s, Some(th.clone()), th * 0.5);
            t.activation(&y, Activation::Silu)
        };
        check_op("group norm", &gn, [2, 4, 2, 2], [1, 4, 1, 1], 32);
        // layer norm over E = 5 for 2 × 3 tokens
        let ln = |t: &mut Tape, x: &Var, th: Tensor<4>| {
            let s = t.standardize(x, 2 * 3);
            let y = t.scale_shift(&s, Some(th.clone()), th);
            t.activation(&y, Activation::Gelu)
        };
        check_op("layer norm", &ln, [2, 1, 3, 5], [1, 1, 1, 5], 30);
    }

    #[test]
    fn linear_matmul_softmax_vjps_match_finite_differences() {
        // self-attention in miniature: q = x Wq, s = q xᵀ, p = softmax(s), o = p x
        let op = |t: &mut Tape, x: &Var, th: Tensor<4>| {
            let w: Tensor<2> = th.reshape([4, 4]);
            let q = t.linear(x, w, None);
            let kt = t.swap_dims(x, 2, 3);
            let s = t.matmul(&q, &kt);
            let s = t.scale(&s, 0.5);
            let p = t.softmax(&s);
            t.matmul(&p, x)
        };
        check_op("attention core", &op, [2, 1, 3, 4], [1, 1, 4, 4], 24);
    }

    #[test]
    fn shape_ops_vjps_match_finite_differences() {
        let op = |t: &mut Tape, x: &Var, th: Tensor<4>| {
            let y = t.scale_shift(x, Some(th.clone()), th);
            let y = t.activation(&y, Activation::Tanh);
            let up = t.upsample2x(&y);
            let skip = t.upsample2x(x);
            let cat = t.cat_channels(&up, &skip);
            let r = t.reshape(&cat, [2, 1, 4, 12]);
            let r = t.swap_dims(&r, 1, 2);
            let s = t.add(&r, &r);
            t.activation(&s, Activation::Silu)
        };
        check_op(
            "upsample/cat/reshape/swap/add",
            &op,
            [1, 2, 3, 2],
            [1, 2, 1, 1],
            96,
        );
    }

    #[test]
    fn a_value_used_twice_gets_both_gradients_and_unrelated_inputs_get_zeros() {
        let dev = cpu();
        let mut tape = Tape::new();
        let x = tape.input(t4(vec![1.0, 2.0], [1, 2, 1, 1], &dev));
        let y = tape.add(&x, &x);
        let y = tape.scale(&y, 3.0);
        let g = tape.gradient(&y, t4(vec![1.0, -1.0], [1, 2, 1, 1], &dev), &x);
        assert_eq!(to_f64_vec(g), vec![6.0, -6.0]);
        let mut tape = Tape::new();
        let x = tape.input(t4(vec![1.0, 2.0], [1, 2, 1, 1], &dev));
        let z = tape.input(t4(vec![5.0, 6.0], [1, 2, 1, 1], &dev));
        let y = tape.scale(&z, 2.0);
        let g = tape.gradient(&y, t4(vec![1.0, 1.0], [1, 2, 1, 1], &dev), &x);
        assert_eq!(to_f64_vec(g), vec![0.0, 0.0]);
    }
}
