use super::*;
use crate::backend::{cpu, Precision};
use crate::potential::Quadratic;
use crate::rng::normal;

fn quad() -> Quadratic {
    // V = ½·(2 (x₀ − 1)² + 0.5 (x₁ + 2)²)
    Quadratic::new(&[1.0, -2.0], &[2.0, 0.5], &cpu(), Precision::F64)
}

fn std_normal(r: &mut Rng) -> Vec<f32> {
    vec![normal(r) as f32, normal(r) as f32]
}

fn no_observer() -> impl Fn(usize, usize, f64, &[f32]) + Sync {
    |_, _, _, _| {}
}

fn run(
    kind: SamplerKind,
    n: usize,
    t_end: f64,
    dt: f64,
    chunk: usize,
    sched: Schedule,
    first: u64,
) -> Points {
    let q = quad();
    let field = TensorField {
        potential: &q,
        precision: Precision::F64,
    };
    let cfg = SamplerConfig {
        kind,
        dt,
        t_end,
        chunk,
        clamp: None,
    };
    let req = SampleRequest {
        config: &cfg,
        schedule: sched,
        source: &std_normal,
        n,
        seed: 11,
        first_index: first,
    };
    sample(&Drift::new(&field), &req, &no_observer()).unwrap()
}

#[test]
fn langevin_reaches_the_boltzmann_gaussian_of_a_quadratic() {
    // exp(−V/ε) for V = ½ Σ a_k (x_k − μ_k)² is N(μ, ε/a): with ε = 0.2 the variances are 0.1 and 0.4.
    let sched = Schedule::new(1.0, 0.2).unwrap();
    for kind in [SamplerKind::EulerMaruyama, SamplerKind::Heun] {
        let p = run(kind, 4000, 12.0, 0.01, 4000, sched, 0);
        let m = p.mean();
        let var: Vec<f64> = (0..2)
            .map(|k| p.rows().map(|r| (r[k] as f64 - m[k]).powi(2)).sum::<f64>() / p.len() as f64)
            .collect();
        assert!(
            (m[0] - 1.0).abs() < 0.03 && (m[1] + 2.0).abs() < 0.06,
            "{kind:?} mean {m:?}"
        );
        // 4000 samples: relative std error of a variance ≈ √(2/4000) ≈ 2.2 %; Euler's bias at Δt·a = 0.02 is ~1 %
        assert!((var[0] / 0.1 - 1.0).abs() < 0.1, "{kind:?} var {var:?}");
        assert!((var[1] / 0.4 - 1.0).abs() < 0.1, "{kind:?} var {var:?}");
    }
}

#[test]
fn gradient_flow_follows_the_exact_solution_and_heun_is_second_order() {
    // ε ≡ 0: x(t) = μ + (x₀ − μ) e^{−a t}
    let sched = Schedule::new(1.0, 0.0).unwrap();
    let exact = |x0: f64, mu: f64, a: f64, t: f64| mu + (x0 - mu) * (-a * t).exp();
    let err = |kind, dt| {
        let p = run(kind, 8, 1.0, dt, 8, sched, 0);
        let mut r = stream(11, Purpose::Sample, 0);
        let x0 = std_normal(&mut r);
        let want = [
            exact(x0[0] as f64, 1.0, 2.0, 1.0),
            exact(x0[1] as f64, -2.0, 0.5, 1.0),
        ];
        ((p.row(0)[0] as f64 - want[0]).abs()).max((p.row(0)[1] as f64 - want[1]).abs())
    };
    let (e1, e2) = (
        err(SamplerKind::FlowEuler, 0.02),
        err(SamplerKind::FlowEuler, 0.01),
    );
    let (h1, h2) = (
        err(SamplerKind::FlowHeun, 0.02),
        err(SamplerKind::FlowHeun, 0.01),
    );
    assert!((e1 / e2 - 2.0).abs() < 0.3, "Euler order: {e1} {e2}");
    assert!((h1 / h2 - 4.0).abs() < 0.6, "Heun order: {h1} {h2}");
    assert!(h2 < e2 / 10.0);
}

#[test]
fn sample_i_does_not_depend_on_batch_or_chunk() {
    let sched = Schedule::new(0.5, 0.3).unwrap();
    let all = run(SamplerKind::EulerMaruyama, 10, 1.0, 0.05, 10, sched, 0);
    let chunked = run(SamplerKind::EulerMaruyama, 10, 1.0, 0.05, 3, sched, 0);
    let tail = run(SamplerKind::EulerMaruyama, 4, 1.0, 0.05, 4, sched, 6);
    for i in 0..10 {
        for k in 0..2 {
            assert!((all.row(i)[k] - chunked.row(i)[k]).abs() < 1e-6);
        }
    }
    for i in 0..4 {
        assert_eq!(all.row(6 + i), tail.row(i));
    }
    assert_ne!(
        all.row(0),
        run(SamplerKind::EulerMaruyama, 1, 1.0, 0.05, 1, sched, 1).row(0)
    );
}

#[test]
fn an_observation_term_pulls_samples_to_the_posterior() {
    // prior V = ½ x² (ε = 1 ⇒ N(0,1)), observe x₀ = 2 with σ_y = 1: posterior of x₀ is N(1, ½).
    let prior = Quadratic::new(&[0.0, 0.0], &[1.0, 1.0], &cpu(), Precision::F64);
    let field = TensorField {
        potential: &prior,
        precision: Precision::F64,
    };
    let obs = QuadraticObservation {
        mask: vec![1.0, 0.0],
        y: vec![2.0, 0.0],
        sigma: 1.0,
        strength: 1.0,
    };
    let terms: [&dyn EnergyTerm; 1] = [&obs];
    let drift = Drift {
        field: &field,
        extra: &terms,
        extra_scaled_by_temperature: false,
    };
    let cfg = SamplerConfig {
        kind: SamplerKind::EulerMaruyama,
        dt: 0.01,
        t_end: 8.0,
        chunk: 3000,
        clamp: None,
    };
    let req = SampleRequest {
        config: &cfg,
        schedule: Schedule::new(1.0, 1.0).unwrap(),
        source: &std_normal,
        n: 3000,
        seed: 5,
        first_index: 0,
    };
    let p = sample(&drift, &req, &no_observer()).unwrap();
    let m = p.mean();
    let v0 = p.rows().map(|r| (r[0] as f64 - m[0]).powi(2)).sum::<f64>() / 3000.0;
    assert!((m[0] - 1.0).abs() < 0.05, "{m:?}");
    assert!(m[1].abs() < 0.07, "{m:?}");
    assert!((v0 - 0.5).abs() < 0.06, "{v0}");
    let mut e = [0.0f32];
    obs.energy(&[3.0, 7.0], 1, 2, &mut e);
    assert_eq!(e[0], 0.5); // (3 − 2)² / 2, the unobserved coordinate ignored
}

#[test]
fn bad_settings_are_rejected() {
    let q = quad();
    let field = TensorField {
        potential: &q,
        precision: Precision::F64,
    };
    let sched = Schedule::new(1.0, 0.1).unwrap();
    for (cfg, n, want) in [
        (
            SamplerConfig {
                dt: 0.0,
                ..SamplerConfig::default()
            },
            4,
            "dt",
        ),
        (
            SamplerConfig {
                dt: -1.0,
                ..SamplerConfig::default()
            },
            4,
            "dt",
        ),
        (
            SamplerConfig {
                t_end: -1.0,
                ..SamplerConfig::default()
            },
            4,
            "t_end",
        ),
        (SamplerConfig::default(), 0, "n"),
    ] {
        let req = SampleRequest {
            config: &cfg,
            schedule: sched,
            source: &std_normal,
            n,
            seed: 0,
            first_index: 0,
        };
        let e = sample(&Drift::new(&field), &req, &no_observer())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn recorder_keeps_requested_frames() {
    let q = quad();
    let field = TensorField {
        potential: &q,
        precision: Precision::F64,
    };
    let cfg = SamplerConfig {
        t_end: 0.1,
        dt: 0.01,
        ..SamplerConfig::default()
    };
    let req = SampleRequest {
        config: &cfg,
        schedule: Schedule::new(1.0, 0.0).unwrap(),
        source: &std_normal,
        n: 5,
        seed: 0,
        first_index: 0,
    };
    let rec = TrajectoryRecorder::new(2, 3);
    sample(&Drift::new(&field), &req, &|c, k, t, x| {
        rec.observe(c, k, t, x, 2)
    })
    .unwrap();
    let frames = rec.into_frames();
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[0].1.len(), 3);
    assert!((frames[4].0 - 0.1).abs() < 1e-9);
}

#[test]
fn fused_host_mlp_matches_the_tensor_mlp() {
    use crate::potential::{Activation, MlpConfig, Potential};
    let (n, d) = (37, 3);
    let mut r = stream(3, Purpose::Eval, 0);
    let x: Vec<f32> = (0..n * d).map(|_| 2.0 * normal(&mut r) as f32).collect();
    for act in Activation::ALL {
        for clamp in [None, Some(1.3)] {
            let cfg = MlpConfig {
                dim: d,
                hidden: vec![16, 9, 12],
                activation: act,
                first_activation: Some(Activation::Relu),
                output_scale: 0.7,
                energy_clamp: clamp,
            };
            let m = cfg.init(1, &cpu(), Precision::F32).unwrap();
            let host = m.host().unwrap();
            let (mut e, mut g) = (vec![0.0; n], vec![0.0; n * d]);
            host.energy_grad(&x, n, Some(&mut e), Some(&mut g), &mut Scratch::default());
            let xt = crate::backend::from_points(
                &Points::new(n, d, x.clone()).unwrap(),
                &cpu(),
                Precision::F32,
            );
            let (te, tg) = m.energy_and_grad(xt);
            let (te, tg) = (
                crate::backend::to_f64_vec(te),
                crate::backend::to_f64_vec(tg),
            );
            let scale = tg.iter().map(|v| v.abs()).fold(1e-3, f64::max);
            for k in 0..n * d {
                assert!(
                    (g[k] as f64 - tg[k]).abs() < 2e-5 * scale,
                    "{act:?} {clamp:?} grad {k}: {} vs {}",
                    g[k],
                    tg[k]
                );
            }
            for i in 0..n {
                assert!(
                    (e[i] as f64 - te[i]).abs() < 2e-5 * te[i].abs().max(1.0),
                    "{act:?} {clamp:?} energy {i}"
                );
            }
        }
    }
}

/// A tensor field evaluates a long call in blocks of `TENSOR_FIELD_ROWS` rows (a GPU cannot
/// bind one UNet feature map of thousands of images): every row still gets its own V and ∇V.
#[test]
fn tensor_field_blocks_cover_every_row_of_a_long_call() {
    let q = quad();
    let field = TensorField {
        potential: &q,
        precision: Precision::F64,
    };
    let n = 2 * super::field::TENSOR_FIELD_ROWS + 3;
    let mut r = crate::rng::stream(4, crate::rng::Purpose::Eval, 0);
    let x: Vec<f32> = (0..2 * n).map(|_| normal(&mut r) as f32).collect();
    let (mut g, mut v) = (vec![f32::NAN; 2 * n], vec![f32::NAN; n]);
    field.grad(&x, n, &mut g, &mut Scratch::default());
    field.energy(&x, n, &mut v, &mut Scratch::default());
    for (i, row) in x.chunks(2).enumerate() {
        let (d0, d1) = (row[0] as f64 - 1.0, row[1] as f64 + 2.0);
        let want_g = [2.0 * d0, 0.5 * d1];
        let want_v = 0.5 * (2.0 * d0 * d0 + 0.5 * d1 * d1);
        for k in 0..2 {
            assert!(
                (g[2 * i + k] as f64 - want_g[k]).abs() < 1e-5,
                "row {i}: ∇V {:?}",
                &g[2 * i..2 * i + 2]
            );
        }
        assert!(
            (v[i] as f64 - want_v).abs() < 1e-4 * want_v.max(1.0),
            "row {i}: V {} vs {want_v}",
            v[i]
        );
    }
}
