//! Derivative checks in f64: explicit ∇ₓV, parameter gradients of a loss on ∇ₓV, and
//! Hessian-vector products, each against central finite differences.

use super::*;
use crate::backend::{cpu, cpu_autodiff, matrix, to_f64_vec, vector, Precision};
use crate::rng::{normal, stream, Purpose};

const P: Precision = Precision::F64;

fn randn(n: usize, seed: u64) -> Vec<f64> {
    let mut r = stream(seed, Purpose::Eval, 99);
    (0..n).map(|_| normal(&mut r)).collect()
}

fn small_mlp(act: Activation, clamp: Option<f64>) -> Mlp {
    let cfg = MlpConfig {
        dim: 3,
        hidden: vec![7, 5],
        activation: act,
        first_activation: None,
        output_scale: 1.7,
        energy_clamp: clamp,
    };
    cfg.init(4, &cpu(), P).unwrap()
}

fn energies(m: &dyn Potential, x: &[f64], b: usize, d: usize) -> Vec<f64> {
    to_f64_vec(m.energy(matrix(x.to_vec(), b, d, &cpu(), P)))
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-3)
}

/// Every entry of ∇ₓV at `x` against central finite differences of V.
fn check_input_gradient(m: &dyn Potential, x: &[f64], b: usize, label: &str) {
    let d = m.dim();
    let (_, g) = m.energy_and_grad(matrix(x.to_vec(), b, d, &cpu(), P));
    let g = to_f64_vec(g);
    let h = 1e-6;
    for k in 0..b * d {
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[k] += h;
        xm[k] -= h;
        let fd = (energies(m, &xp, b, d)[k / d] - energies(m, &xm, b, d)[k / d]) / (2.0 * h);
        assert!(rel_err(g[k], fd) < 1e-6, "{label} k={k}: {} vs {fd}", g[k]);
    }
}

#[test]
fn input_gradient_matches_finite_differences_for_every_activation() {
    let (b, d) = (4, 3);
    for act in Activation::ALL {
        for clamp in [None, Some(0.8)] {
            let m = small_mlp(act, clamp);
            check_input_gradient(&m, &randn(b * d, 1), b, &format!("{act:?} clamp {clamp:?}"));
        }
    }
}

#[test]
fn explicit_gradient_equals_autodiff_input_gradient() {
    let (b, d) = (5, 3);
    for act in Activation::ALL {
        let m = small_mlp(act, Some(2.0));
        let x = matrix(randn(b * d, 2), b, d, &cpu_autodiff(), P).require_grad();
        let grads = m.energy(x.clone()).sum().backward();
        let auto = to_f64_vec(x.grad(&grads).unwrap());
        let explicit = to_f64_vec(m.grad(x.without_autodiff()));
        for (a, e) in auto.iter().zip(&explicit) {
            assert!((a - e).abs() < 1e-12, "{act:?}: {a} vs {e}");
        }
    }
}

/// L(θ) = Σ (∇ₓV · c) + ½ Σ (∇ₓV)²: a loss on the input gradient, like the flow loss.
fn grad_loss(
    m: &dyn Potential,
    x: &[f64],
    c: &[f64],
    b: usize,
    d: usize,
    dev: &burn::tensor::Device,
) -> burn::tensor::Tensor<1> {
    let g = m.grad(matrix(x.to_vec(), b, d, dev, P));
    let c = matrix(c.to_vec(), b, d, dev, P);
    (g.clone() * c).sum() + g.powi_scalar(2).sum() * 0.5
}

/// d(loss on ∇ₓV)/dθ by autodiff against central finite differences, for the first, middle
/// and last entry of every parameter tensor (every layer kind: weights and biases).
fn check_parameter_gradient<M: Model>(m: &M, x: &[f64], c: &[f64], b: usize, label: &str) {
    let d = m.dim();
    let tracked = m.tracked();
    let grads = grad_loss(&tracked, x, c, b, d, &cpu_autodiff()).backward();
    let analytic = tracked.flat_grads(&grads);
    let params = m.flat_params();
    let h = 1e-6;
    for (pi, p) in params.iter().enumerate() {
        let values = to_f64_vec(p.clone());
        let ana = analytic[pi].clone().map(to_f64_vec);
        for &k in &[0, values.len() / 2, values.len() - 1] {
            let eval = |delta: f64| {
                let mut v = values.clone();
                v[k] += delta;
                let mut ps = params.clone();
                ps[pi] = vector(v, &cpu(), P);
                let mut mm = m.clone();
                mm.set_flat_params(ps).unwrap();
                crate::backend::scalar(grad_loss(&mm, x, c, b, d, &cpu()))
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            let a = ana.as_ref().map(|g| g[k]).unwrap_or(0.0);
            assert!(
                (a - fd).abs() < 1e-6 * fd.abs().max(1.0),
                "{label} param {pi}[{k}]: {a} vs {fd}"
            );
        }
    }
}

#[test]
fn parameter_gradient_of_a_loss_on_grad_v_matches_finite_differences() {
    let (b, d) = (6, 3);
    let x = randn(b * d, 3);
    let c = randn(b * d, 4);
    for act in Activation::ALL {
        check_parameter_gradient(&small_mlp(act, Some(1.5)), &x, &c, b, &format!("{act:?}"));
    }
}

#[test]
fn without_a_clamp_the_output_bias_gets_no_gradient_from_a_loss_on_grad_v() {
    // ∇ₓV does not depend on b_L unless the soft clamp makes V nonlinear in the output
    let (b, d) = (4, 3);
    let tracked = small_mlp(Activation::Silu, None).tracked();
    let grads = grad_loss(
        &tracked,
        &randn(b * d, 8),
        &randn(b * d, 9),
        b,
        d,
        &cpu_autodiff(),
    )
    .backward();
    let last = tracked.flat_grads(&grads).pop().unwrap().map(to_f64_vec);
    assert!(last
        .map(|g| g.iter().all(|v| v.abs() < 1e-14))
        .unwrap_or(true));
}

#[test]
fn hvp_matches_finite_differences_of_the_gradient() {
    let (b, d) = (3, 3);
    let m = small_mlp(Activation::Silu, None);
    let x = randn(b * d, 5);
    let v = randn(b * d, 6);
    let hv = to_f64_vec(hvp(
        &m,
        matrix(x.clone(), b, d, &cpu(), P),
        matrix(v.clone(), b, d, &cpu(), P),
    ));
    let h = 1e-5;
    let shifted = |s: f64| {
        let xs: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + s * b).collect();
        to_f64_vec(m.grad(matrix(xs, b, d, &cpu(), P)))
    };
    let (gp, gm) = (shifted(h), shifted(-h));
    for k in 0..b * d {
        let fd = (gp[k] - gm[k]) / (2.0 * h);
        assert!(rel_err(hv[k], fd) < 1e-6, "k={k}: {} vs {fd}", hv[k]);
    }
}

#[test]
fn quadratic_has_known_gradient_and_hessian() {
    // V = ½(2(x₀−1)² + 3(x₁+1)²) ⇒ ∇V = (2(x₀−1), 3(x₁+1)), ∇²V = diag(2, 3)
    let q = Quadratic::new(&[1.0, -1.0], &[2.0, 3.0], &cpu(), P);
    let x = matrix(vec![0.0, 0.0, 1.0, -1.0], 2, 2, &cpu(), P);
    let (v, g) = q.energy_and_grad(x.clone());
    assert_eq!(to_f64_vec(v), vec![0.5 * (2.0 + 3.0), 0.0]);
    assert_eq!(to_f64_vec(g), vec![-2.0, 3.0, 0.0, 0.0]);
    let hess = to_f64_vec(hessian(&q, matrix(vec![0.3, 0.4], 1, 2, &cpu(), P)));
    assert_eq!(hess, vec![2.0, 0.0, 0.0, 3.0]);
}

#[test]
fn mlp_hessian_is_symmetric() {
    let m = small_mlp(Activation::Gelu, Some(3.0));
    let h = to_f64_vec(hessian(&m, matrix(randn(3, 7), 1, 3, &cpu(), P)));
    for i in 0..3 {
        for j in 0..3 {
            assert!((h[i * 3 + j] - h[j * 3 + i]).abs() < 1e-10);
        }
    }
}

#[test]
fn parameter_shapes_are_checked() {
    let mut m = small_mlp(Activation::Tanh, None);
    let mut ps = m.flat_params();
    ps[0] = vector(vec![0.0; 3], &cpu(), P);
    let e = m.set_flat_params(ps).unwrap_err().to_string();
    assert!(
        e.contains("layers.0.weight") && e.contains("21 values"),
        "{e}"
    );
    assert_eq!(m.num_params(), 3 * 7 + 7 + 7 * 5 + 5 + 5 + 1);
}

#[test]
fn tutorial_network_has_the_reference_size() {
    // 2→256 (ReLU) →256→256→256 (SiLU) →1: 768 + 3·65,792 + 257 = 198,401 parameters
    assert_eq!(MlpConfig::default().num_params(), 198_401);
}

/// Coefficients of the energy part and of the gradient part of a test loss.
type LossParts<'a> = (Option<&'a [f64]>, Option<&'a [f64]>);

/// L = Σ α_b V_b + Σ c·∇ₓV + ½‖∇ₓV‖² through burn's autodiff (the reference), with either
/// part switched off.
fn mixed_loss(
    m: &dyn Potential,
    x: &[f64],
    (alpha, c): LossParts<'_>,
    b: usize,
    d: usize,
) -> burn::tensor::Tensor<1> {
    let dev = cpu_autodiff();
    let (e, g) = m.energy_and_grad(matrix(x.to_vec(), b, d, &dev, P));
    let energy_part = alpha.map(|a| (e * vector(a.to_vec(), &dev, P)).sum());
    let grad_part = c.map(|c| grad_loss_terms(g, c, b, d, &dev));
    match (energy_part, grad_part) {
        (Some(a), Some(b)) => a + b,
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => unreachable!("a loss with at least one part"),
    }
}

fn grad_loss_terms(
    g: burn::tensor::Tensor<2>,
    c: &[f64],
    b: usize,
    d: usize,
    dev: &burn::tensor::Device,
) -> burn::tensor::Tensor<1> {
    let c = matrix(c.to_vec(), b, d, dev, P);
    (g.clone() * c).sum() + g.powi_scalar(2).sum() * 0.5
}

/// The fused host backward pass of `m` (as `host`) gives the parameter gradients that
/// autodiff gives over the explicit ∇ₓV, for a loss on V and ∇ₓV, on either alone, and
/// reports no gradient for exactly the same biases.
fn check_fused_backprop<M: Model, N: FusedBackprop>(
    m: &M,
    host: &N,
    b: usize,
    seed: u64,
    label: &str,
) {
    let d = m.dim();
    let x = randn(b * d, seed);
    let c = randn(b * d, seed + 1);
    let alpha: Vec<f64> = randn(b, seed + 2);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let rec = host.record(&x32, b);
    let g_host = rec.grads();
    // seeds of the same loss: ∂L/∂V = α, ∂L/∂∇V = c + ∇V
    let d_grad: Vec<f32> = c.iter().zip(&g_host).map(|(c, g)| *c as f32 + g).collect();
    let d_energy: Vec<f32> = alpha.iter().map(|&a| a as f32).collect();
    let cases: [LossParts<'_>; 3] = [
        (Some(&alpha), Some(&c)),
        (None, Some(&c)),
        (Some(&alpha), None),
    ];
    for (a, cc) in cases {
        let tracked = m.tracked();
        let grads = mixed_loss(&tracked, &x, (a, cc), b, d).backward();
        let reference = tracked.flat_grads(&grads);
        let fused = host.param_grads(
            &rec,
            a.map(|_| d_energy.as_slice()),
            cc.map(|_| d_grad.as_slice()),
        );
        let case = format!("{label} energy {} grad {}", a.is_some(), cc.is_some());
        // streamed blocks give the same bits, whatever the grouping
        let seeds = |rows: std::ops::Range<usize>, _: &[f32], _: &[f32]| {
            let de = a.map(|_| d_energy[rows.clone()].to_vec());
            let dg = cc.map(|_| d_grad[rows.start * d..rows.end * d].to_vec());
            (de, dg)
        };
        let streamed = host.param_grads_streamed(&x32, b, seeds);
        assert_eq!(streamed.grads, fused, "{case}: streamed");
        if cc.is_none() {
            // a loss on V alone: blocks recorded without their input-gradient pass
            let energy_only = host.energy_param_grads_streamed(&x32, b, &d_energy);
            assert_eq!(energy_only, fused, "{case}: energy-only streamed");
        }
        assert_eq!(streamed.input_grads, g_host, "{case}: streamed ∇V");
        assert_eq!(streamed.energies, rec.energies(), "{case}: streamed V");
        assert_close(
            &rec.energies().iter().map(|&v| v as f64).collect::<Vec<_>>(),
            &host.energies(&x32, b),
            1e-6,
        );
        assert_eq!(reference.len(), fused.len());
        let reference: Vec<Option<Vec<f64>>> =
            reference.into_iter().map(|r| r.map(to_f64_vec)).collect();
        // f32 rounding is relative to the biggest gradients: a parameter whose own gradient
        // nearly cancels (a bias before a norm) is held to 1e-5 of the largest one
        let largest = reference
            .iter()
            .flatten()
            .flatten()
            .fold(0f64, |m, v| m.max(v.abs()));
        for (k, (r, f)) in reference.into_iter().zip(fused).enumerate() {
            match (r, f) {
                (None, None) => {}
                (Some(r), Some(f)) => {
                    assert_eq!(r.len(), f.len(), "{case}: param {k} size");
                    let floor = 1e-3f64.max(0.05 * largest);
                    let scale = r.iter().fold(floor, |m, v| m.max(v.abs()));
                    for (i, (rv, fv)) in r.iter().zip(&f).enumerate() {
                        assert!(
                            (rv - *fv as f64).abs() < 2e-4 * scale,
                            "{case}: param {k}[{i}] {rv} vs {fv} (largest {largest})"
                        );
                    }
                }
                (r, f) => panic!(
                    "{case}: param {k} has a gradient in one path only ({} vs {})",
                    r.is_some(),
                    f.is_some()
                ),
            }
        }
    }
}

/// Energies and input gradients of the host form, recorded and as a field, against the
/// tensor network.
fn check_recording<N: FusedBackprop>(m: &dyn Potential, host: &N, b: usize, seed: u64) {
    let (x32, e, g) = check_field(m, host, b, seed, 1e-5);
    let rec = host.record(&x32, b);
    assert_eq!(rec.len(), b);
    assert_close(&e, &rec.energies(), 1e-5);
    assert_close(&g, &rec.grads(), 1e-5);
}

/// V and ∇ₓV of a host field against the tensor network, within `tol` of the largest value;
/// returns the f32 input and the network's V and ∇ₓV.
fn check_field(
    m: &dyn Potential,
    field: &dyn crate::sampler::GradField,
    b: usize,
    seed: u64,
    tol: f64,
) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
    let d = m.dim();
    let x = randn(b * d, seed);
    let (e, g) = m.energy_and_grad(matrix(x.clone(), b, d, &cpu(), P));
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut field_grad = vec![0.0f32; b * d];
    let mut field_energy = vec![0.0f32; b];
    let mut scratch = crate::sampler::Scratch::default();
    field.grad(&x32, b, &mut field_grad, &mut scratch);
    field.energy(&x32, b, &mut field_energy, &mut scratch);
    let (e, g) = (to_f64_vec(e), to_f64_vec(g));
    assert_close(&e, &field_energy, tol);
    assert_close(&g, &field_grad, tol);
    (x32, e, g)
}

fn assert_close(want: &[f64], got: &[f32], tol: f64) {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = want
        .iter()
        .zip(got)
        .map(|(w, &v)| (w - v as f64).abs() / scale)
        .fold(0.0, f64::max);
    assert!(
        worst < tol,
        "largest difference {worst:e} of the largest value {scale}"
    );
}

fn mlp_host(m: &Mlp) -> HostMlp {
    match m.fused_backprop().unwrap() {
        Some(Fused::Mlp(h)) => h,
        _ => panic!("an MLP has a fused MLP form"),
    }
}

fn conv_host(m: &ConvNet) -> HostConv {
    match m.fused_backprop().unwrap() {
        Some(Fused::Conv(h)) => h,
        _ => panic!("a conv net has a fused conv form"),
    }
}

#[test]
fn fused_host_backprop_equals_autodiff_over_the_explicit_gradient() {
    // 150 rows: three blocks of work, the last one partial
    for act in Activation::ALL {
        for clamp in [None, Some(1.2)] {
            let cfg = MlpConfig {
                dim: 3,
                hidden: vec![9, 7, 6],
                activation: act,
                first_activation: Some(Activation::Relu),
                output_scale: 1.7,
                energy_clamp: clamp,
            };
            let m = cfg.init(5, &cpu(), P).unwrap();
            check_fused_backprop(
                &m,
                &mlp_host(&m),
                150,
                11,
                &format!("{act:?} clamp {clamp:?}"),
            );
        }
    }
}

#[test]
fn recorded_energies_and_gradients_match_the_tensor_mlp() {
    let m = small_mlp(Activation::Gelu, Some(0.9));
    check_recording(&m, &mlp_host(&m), 70, 21);
}

#[test]
fn fused_conv_backprop_equals_autodiff_over_the_explicit_gradient() {
    // 70 images: three blocks, the last one partial
    for act in Activation::ALL {
        for clamp in [None, Some(0.9)] {
            for m in small_convs(act, clamp) {
                let label = format!("conv {act:?} {:?} clamp {clamp:?}", m.config().pool);
                check_fused_backprop(&m, &conv_host(&m), 70, 41, &label);
            }
        }
    }
}

#[test]
fn fused_conv_energies_and_gradients_match_the_tensor_conv_net() {
    for act in [Activation::Silu, Activation::Relu] {
        for m in small_convs(act, Some(2.0)) {
            check_recording(&m, &conv_host(&m), 37, 51);
        }
    }
    let m = mnist_geometry_conv(Activation::Silu, None, 3);
    check_recording(&m, &conv_host(&m), 33, 52);
}

/// A narrow conv net in the MNIST geometry (28×28, strides 1, 2, 2, flatten + dense).
fn mnist_geometry_conv(act: Activation, clamp: Option<f64>, seed: u64) -> ConvNet {
    let cfg = ConvConfig {
        channels: vec![4, 6, 5],
        pool: Pool::Flatten,
        hidden: vec![8],
        ..ConvConfig::default()
    };
    let head = Head {
        activation: act,
        output_scale: 10.0,
        energy_clamp: clamp,
    };
    cfg.init(head, seed, &cpu(), P).unwrap()
}

#[test]
fn recycled_conv_tapes_and_work_buffers_do_not_change_results() {
    // the tapes go back to a shared pool and the work buffers stay with the thread: a block
    // recorded on a tape left by a bigger network, after other losses, must give every bit
    // of what it gave before
    let small = small_conv_with(Activation::Silu, None, Pool::Flatten);
    let big = mnist_geometry_conv(Activation::Gelu, Some(2.0), 4);
    let run = |m: &ConvNet, b: usize, energy: bool, grad: bool| {
        let host = conv_host(m);
        let d = m.dim();
        let x: Vec<f32> = randn(b * d, 61).iter().map(|&v| v as f32).collect();
        let de: Vec<f32> = randn(b, 62).iter().map(|&v| v as f32).collect();
        let dg: Vec<f32> = randn(b * d, 63).iter().map(|&v| v as f32).collect();
        let rec = host.record(&x, b);
        let out = (
            rec.energies(),
            rec.grads(),
            host.param_grads(&rec, energy.then_some(&de[..]), grad.then_some(&dg[..])),
        );
        host.recycle(rec);
        out
    };
    let cases = [(true, true), (false, true), (true, false)];
    let before: Vec<_> = cases.iter().map(|&(e, g)| run(&small, 70, e, g)).collect();
    for (&(e, g), want) in cases.iter().zip(before) {
        run(&big, 40, true, true);
        run(&small, 33, !e, !g || e);
        assert!(run(&small, 70, e, g) == want, "energy {e} grad {g}");
    }
}

/// A small conv net on 2×5×6 images (odd and even sizes, stride 1 and 2 layers): with the
/// mean pool straight into the head, or flattened through two dense layers.
fn small_conv_with(act: Activation, clamp: Option<f64>, pool: Pool) -> ConvNet {
    let cfg = ConvConfig {
        image: crate::data::ImageShape {
            channels: 2,
            height: 5,
            width: 6,
        },
        channels: vec![3, 4, 2],
        strides: vec![1, 2, 2],
        kernel: 3,
        pool,
        hidden: match pool {
            Pool::Mean => vec![],
            Pool::Flatten => vec![5, 3],
        },
    };
    let head = Head {
        activation: act,
        output_scale: 1.3,
        energy_clamp: clamp,
    };
    cfg.init(head, 6, &cpu(), P).unwrap()
}

fn small_conv(act: Activation, clamp: Option<f64>) -> ConvNet {
    small_conv_with(act, clamp, Pool::Mean)
}

/// Both pool variants of [`small_conv_with`].
fn small_convs(act: Activation, clamp: Option<f64>) -> [ConvNet; 2] {
    [Pool::Mean, Pool::Flatten].map(|pool| small_conv_with(act, clamp, pool))
}

#[test]
fn conv_input_gradient_matches_finite_differences() {
    let b = 2;
    for act in Activation::ALL {
        for clamp in [None, Some(0.7)] {
            for m in small_convs(act, clamp) {
                let x = randn(b * m.dim(), 31);
                let pool = m.config().pool;
                check_input_gradient(&m, &x, b, &format!("conv {act:?} {pool:?} clamp {clamp:?}"));
            }
        }
    }
}

#[test]
fn conv_explicit_gradient_equals_autodiff_input_gradient() {
    let b = 3;
    for act in Activation::ALL {
        for m in small_convs(act, Some(2.0)) {
            let d = m.dim();
            let x = matrix(randn(b * d, 32), b, d, &cpu_autodiff(), P).require_grad();
            let grads = m.energy(x.clone()).sum().backward();
            let auto = to_f64_vec(x.grad(&grads).unwrap());
            let explicit = to_f64_vec(m.grad(x.without_autodiff()));
            for (a, e) in auto.iter().zip(&explicit) {
                assert!((a - e).abs() < 1e-12, "{act:?}: {a} vs {e}");
            }
        }
    }
}

#[test]
fn conv_parameter_gradient_of_a_loss_on_grad_v_matches_finite_differences() {
    let b = 2;
    for act in Activation::ALL {
        for m in small_convs(act, Some(1.5)) {
            let x = randn(b * m.dim(), 33);
            let c = randn(b * m.dim(), 34);
            let pool = m.config().pool;
            check_parameter_gradient(&m, &x, &c, b, &format!("conv {act:?} {pool:?}"));
        }
    }
}

#[test]
fn conv_hvp_matches_finite_differences_of_the_gradient() {
    let m = small_conv(Activation::Silu, None);
    let (b, d) = (2, m.dim());
    let (x, v) = (randn(b * d, 35), randn(b * d, 36));
    let hv = to_f64_vec(hvp(
        &m,
        matrix(x.clone(), b, d, &cpu(), P),
        matrix(v.clone(), b, d, &cpu(), P),
    ));
    let h = 1e-6;
    let shifted = |sign: f64| {
        let xs: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + sign * h * b).collect();
        to_f64_vec(m.grad(matrix(xs, b, d, &cpu(), P)))
    };
    let (gp, gm) = (shifted(1.0), shifted(-1.0));
    for k in 0..b * d {
        let fd = (gp[k] - gm[k]) / (2.0 * h);
        assert!(rel_err(hv[k], fd) < 1e-5, "k={k}: {} vs {fd}", hv[k]);
    }
}

#[test]
fn conv_shapes_and_parameter_count_follow_the_config() {
    let m = small_conv(Activation::Silu, None);
    // 3·2·9 + 3, 4·3·9 + 4, 2·4·9 + 2, head 2 + 1
    assert_eq!(m.num_params(), 57 + 112 + 74 + 3);
    assert_eq!(m.dim(), 60);
    let mut bad = m.flat_params();
    bad[0] = vector(vec![0.0; 5], &cpu(), P);
    let err = m.clone().set_flat_params(bad).unwrap_err().to_string();
    assert!(err.contains("convs.0.weight"), "{err}");
    let cfg = ConvConfig {
        strides: vec![1],
        ..ConvConfig::default()
    };
    let err = cfg.validate("model.conv").unwrap_err().to_string();
    assert!(err.contains("model.conv.strides"), "{err}");
    // flattened 2×2×2 = 8 features → dense 5 → dense 3 → head
    let m = small_conv_with(Activation::Silu, None, Pool::Flatten);
    assert_eq!(
        m.num_params(),
        57 + 112 + 74 + (8 * 5 + 5) + (5 * 3 + 3) + 4
    );
    let names = m.param_names();
    assert_eq!(
        &names[6..10],
        [
            "dense.0.weight",
            "dense.0.bias",
            "dense.1.weight",
            "dense.1.bias"
        ]
    );
    let cfg = ConvConfig {
        hidden: vec![4, 0],
        ..ConvConfig::default()
    };
    let err = cfg.validate("model.conv").unwrap_err().to_string();
    assert!(err.contains("model.conv.hidden"), "{err}");
}

/// A small UNet → ViT on 2×4×4 images: two UNet levels with attention at 2×2, GroupNorm with
/// 2 groups, a ViT with patch 2 (4 tokens), 2 heads, 1 layer. Every parameter is drawn at random
/// (the reference's zero initialisations would hide layers from the checks).
fn small_unet_vit(clamp: Option<f64>) -> UNetVit {
    randomized(
        small_unet_vit_config()
            .init(1.3, clamp, 8, &cpu(), P)
            .unwrap(),
    )
}

/// The configuration of [`small_unet_vit`].
fn small_unet_vit_config() -> UNetVitConfig {
    UNetVitConfig {
        image: crate::data::ImageShape {
            channels: 2,
            height: 4,
            width: 4,
        },
        base_channels: 2,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        attention_resolutions: vec![2],
        head_channels: 2,
        groups: 2,
        patch: 2,
        embed_dim: 4,
        vit_layers: 1,
        vit_heads: 2,
        ff_mult: 2,
    }
}

/// `m` with every parameter drawn at random (the reference's zero initialisations would hide
/// layers from the checks).
fn randomized(mut m: UNetVit) -> UNetVit {
    let params = m
        .param_shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.iter().product();
            let v = randn(n, 100 + i as u64).iter().map(|v| 0.6 * v).collect();
            vector(v, &cpu(), P)
        })
        .collect();
    m.set_flat_params(params).unwrap();
    m
}

/// A narrow network in the MNIST geometry (28×28 → 14 → 7, attention at 14×14, 49 patches of
/// 4×4) with randomized parameters.
fn mnist_like_unet_vit() -> UNetVit {
    let mnist_like = UNetVitConfig {
        base_channels: 4,
        head_channels: 4,
        groups: 2,
        embed_dim: 8,
        vit_layers: 1,
        ff_mult: 2,
        ..UNetVitConfig::default()
    };
    randomized(mnist_like.init(3.0, None, 9, &cpu(), P).unwrap())
}

#[test]
fn host_unet_vit_matches_the_tensor_network() {
    // the tiny network, and one in the MNIST geometry (28×28 → 14 → 7, attention at 14×14,
    // 49 patches of 4×4); 10 images: two full host blocks of 4 and a partial one. Tolerance: the
    // f32 tensor network itself is 3e-5 (of the largest value) from the f64 one on the latter
    let nets = [
        small_unet_vit(None),
        small_unet_vit(Some(0.9)),
        mnist_like_unet_vit(),
    ];
    for m in &nets {
        check_field(m, &HostUNetVit::new(m), 10, 44, 2e-4);
    }
}

#[test]
fn host_unet_vit_results_do_not_depend_on_how_rows_are_split_into_calls() {
    // a block's Winograd gemms span its images: each image's ∇ₓV must still be its own, bit
    // for bit, whether it shares a block with others or not (thread counts split rows apart)
    let m = mnist_like_unet_vit();
    let host = HostUNetVit::new(&m);
    let (b, d) = (6, m.dim());
    let x: Vec<f32> = randn(b * d, 47).iter().map(|&v| v as f32).collect();
    let mut scratch = crate::sampler::Scratch::default();
    let mut together = vec![0.0f32; b * d];
    host.grad(&x, b, &mut together, &mut scratch);
    for (row, want) in x.chunks_exact(d).zip(together.chunks_exact(d)) {
        let mut alone = vec![0.0f32; d];
        host.grad(row, 1, &mut alone, &mut scratch);
        assert!(alone
            .iter()
            .zip(want)
            .all(|(a, w)| a.to_bits() == w.to_bits()));
    }
}

#[test]
fn fused_unet_vit_backprop_equals_autodiff_over_the_explicit_gradient() {
    // 6 images: a full host block and a partial one. Without the clamp a loss on ∇ₓV alone
    // gives no gradient to the energy head's bias nor to the shift of the norm before it (they
    // move V by a constant): both paths must say so
    for clamp in [None, Some(0.9)] {
        let m = small_unet_vit(clamp);
        let host = HostUNetVit::new(&m);
        assert_eq!(host.block_rows(), 4);
        let label = format!("unet_vit clamp {clamp:?}");
        check_fused_backprop(&m, &host, 6, 45, &label);
        check_recording(&m, &host, 6, 46);
    }
    // maps bigger than MNIST's go one image per block
    let big_maps = UNetVitConfig {
        image: crate::data::ImageShape {
            channels: 1,
            height: 32,
            width: 32,
        },
        channel_mult: vec![1, 1],
        attention_resolutions: vec![],
        patch: 8,
        vit_heads: 1,
        ff_mult: 1,
        ..small_unet_vit_config()
    };
    let m = randomized(big_maps.init(1.1, None, 3, &cpu(), P).unwrap());
    let host = HostUNetVit::new(&m);
    assert_eq!(host.block_rows(), 1);
    check_fused_backprop(&m, &host, 3, 47, "unet_vit 32×32");
}

#[test]
fn unet_vit_input_gradient_matches_finite_differences_and_autodiff() {
    let b = 2;
    for clamp in [None, Some(0.9)] {
        let m = small_unet_vit(clamp);
        let d = m.dim();
        let x = randn(b * d, 41);
        check_input_gradient(&m, &x, b, &format!("unet_vit clamp {clamp:?}"));
        let xa = matrix(x, b, d, &cpu_autodiff(), P).require_grad();
        let grads = m.energy(xa.clone()).sum().backward();
        let auto = to_f64_vec(xa.grad(&grads).unwrap());
        let explicit = to_f64_vec(m.grad(xa.without_autodiff()));
        for (a, e) in auto.iter().zip(&explicit) {
            assert!((a - e).abs() < 1e-11 * a.abs().max(1.0), "{a} vs {e}");
        }
    }
}

#[test]
fn unet_vit_parameter_gradient_of_a_loss_on_grad_v_matches_finite_differences() {
    let m = small_unet_vit(Some(2.5));
    let b = 2;
    let (x, c) = (randn(b * m.dim(), 42), randn(b * m.dim(), 43));
    check_parameter_gradient(&m, &x, &c, b, "unet_vit");
}

/// The tiny network of [`small_unet_vit`]'s shape with the weights, inputs, V and ∇ₓV that
/// `bench/torch_unet_vit.py fixture` computed in float64 with PyTorch (its ViT head runs on
/// `nn.TransformerEncoderLayer`, its gradient is torch autograd).
#[test]
fn unet_vit_matches_the_pytorch_twin_on_a_recorded_fixture() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet_vit_tiny.safetensors");
    let file = crate::tensor_file::TensorFile::read(&path).unwrap();
    let mut m = small_unet_vit(Some(2.5));
    let params = m
        .param_names()
        .iter()
        .map(|n| vector(file.f64(&format!("param.{n}")).unwrap().1, &cpu(), P))
        .collect();
    m.set_flat_params(params).unwrap();
    let (_, x) = file.f64("x").unwrap();
    let b = x.len() / m.dim();
    let (v, g) = m.energy_and_grad(matrix(x, b, m.dim(), &cpu(), P));
    for (name, ours) in [("v", to_f64_vec(v)), ("grad", to_f64_vec(g))] {
        let (_, theirs) = file.f64(name).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, t) in ours.iter().zip(&theirs) {
            assert!(
                (a - t).abs() < 1e-10 * t.abs().max(1.0),
                "{name}: {a} vs {t}"
            );
        }
    }
}

#[test]
fn unet_vit_reference_networks_have_the_paper_sizes() {
    // the paper: ≈2M parameters for MNIST, ≈50M for CIFAR-10
    let mnist = crate::potential::ModelConfig {
        kind: crate::potential::ModelKind::UnetVit,
        ..Default::default()
    };
    let n = mnist.num_params();
    assert!((1_500_000..2_600_000).contains(&n), "MNIST: {n}");
    let cifar = UNetVitConfig::cifar10();
    let n: usize = cifar
        .param_shapes()
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    assert!((40_000_000..60_000_000).contains(&n), "CIFAR-10: {n}");
    let m = small_unet_vit(None);
    let names = m.param_names();
    assert_eq!(names.len(), m.param_shapes().len());
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicate parameter names");
    let bad = UNetVitConfig {
        patch: 3,
        ..UNetVitConfig::default()
    };
    let err = bad.validate("model.unet_vit").unwrap_err().to_string();
    assert!(err.contains("model.unet_vit.patch"), "{err}");
}
