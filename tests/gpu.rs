//! The GPU path (cargo feature `wgpu`): a UNet → ViT trained on burn's wgpu device (explicit ∇ₓV
//! as tensor ops, parameter gradients by burn's autodiff) follows the same trajectory as on the
//! CPU (the fused host kernels), and its sampler field gives the host kernels' ∇V.
//!
//! Needs a Vulkan (or Metal / DX12) adapter. Without a GPU, Mesa's software Vulkan driver
//! (Debian: `mesa-vulkan-drivers`; `VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.json`)
//! serves: `cargo test --release --features wgpu --test gpu`. The default build (and CI) compiles
//! this file to nothing.
#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::Device;
use energy_matching::backend::{cpu, to_f64_vec, vector_f32, Accelerator, Precision};
use energy_matching::config::RunConfig;
use energy_matching::potential::{Model, Network, Potential};
use energy_matching::rng::{normal, stream, Purpose};
use energy_matching::sampler::Scratch;

/// A tiny UNet → ViT on 1×6×6 images (every layer kind of the paper's networks), both phases.
fn config(dir: &std::path::Path) -> RunConfig {
    let data = dir.join("images.csv");
    let mut r = stream(5, Purpose::Data, 0);
    let rows: Vec<String> = (0..48)
        .map(|_| {
            (0..36)
                .map(|_| format!("{:.4}", normal(&mut r).tanh()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let toml = format!(
        r#"
{model}[data]
target = "{}"
source = "standard_normal"
[train]
batch_size = 12
phase1_steps = 3
phase2_steps = 3
sigma = 0.0
cd_weight = 0.1
[optim]
lr = 1e-3
warmup_steps = 0
eps = 1e-4
[negatives]
n_gibbs = 3
dt = 0.025
clamp = [-1.0, 1.0]
"#,
        data.display(),
        model = common::TINY_UNET_VIT.replace(
            "output_scale = 2.0",
            "output_scale = 2.0\nenergy_clamp = 6.0"
        ),
    );
    RunConfig::from_toml_str(&toml, &[]).unwrap()
}

fn wgpu() -> Device {
    Accelerator::Wgpu
        .device()
        .expect("a build with the wgpu feature")
}

#[test]
fn unet_vit_trains_the_same_on_wgpu_as_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (host, p_host) = common::trajectory(&cfg, &cpu());
    let (gpu, p_gpu) = common::trajectory(&cfg, &wgpu());
    assert_eq!(host.len(), 6);
    common::assert_steps_agree(&host, &gpu, ("cpu", "wgpu"));
    assert!(host[5].cd_loss.is_some(), "phase 2 ran");
    // Adam would turn rounding differences of near-zero gradients into full steps; its eps of
    // 1e-4 (config) damps those, and weights are compared relative to how far training moved
    // their tensor: a wrong gradient moves a tensor elsewhere
    let start = cfg.model.init(3, &cpu(), Precision::F32).unwrap();
    let names = start.param_names();
    let start: Vec<Vec<f64>> = start.flat_params().into_iter().map(to_f64_vec).collect();
    let mut moved = 0.0f64;
    for (k, ((s, h), g)) in start.iter().zip(&p_host).zip(&p_gpu).enumerate() {
        let step = s
            .iter()
            .zip(h)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        moved = moved.max(step);
        for (i, (x, y)) in h.iter().zip(g).enumerate() {
            let tol = 1e-6 + 0.02 * step;
            assert!(
                (x - y).abs() <= tol,
                "{}[{i}]: cpu {x} vs wgpu {y} (tensor moved ≤ {step})",
                names[k]
            );
        }
    }
    assert!(moved > 1e-5, "training moved no weight ({moved})");
}

/// `model` with every weight drawn from N(0, 0.3²) (the initial ViT head is zero, so ∇V = 0).
fn randomized(mut model: Network, device: &Device) -> Network {
    let mut r = stream(13, Purpose::Init, 0);
    let params = model
        .param_shapes()
        .iter()
        .map(|s| {
            let n = s.iter().product();
            let v = (0..n).map(|_| 0.3 * normal(&mut r) as f32).collect();
            vector_f32(v, device)
        })
        .collect();
    model.set_flat_params(params).unwrap();
    model
}

#[test]
fn wgpu_sampler_field_matches_the_host_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let host = randomized(cfg.model.init(7, &cpu(), Precision::F32).unwrap(), &cpu());
    let gpu = randomized(cfg.model.init(7, &wgpu(), Precision::F32).unwrap(), &wgpu());
    let (n, dim) = (5, host.dim());
    let mut r = stream(11, Purpose::Eval, 0);
    let x: Vec<f32> = (0..n * dim).map(|_| normal(&mut r) as f32).collect();
    let grad = |m: &Network| {
        let field = m.host_field().unwrap();
        let (mut g, mut v) = (vec![f32::NAN; n * dim], vec![f32::NAN; n]);
        field.grad(&x, n, &mut g, &mut Scratch::default());
        field.energy(&x, n, &mut v, &mut Scratch::default());
        (g, v)
    };
    let ((gh, vh), (gg, vg)) = (grad(&host), grad(&gpu));
    let scale = gh.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "∇V is not trivially zero ({scale})");
    for (i, (a, b)) in gh.iter().zip(&gg).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "∇V[{i}]: host {a} vs wgpu {b}"
        );
    }
    for (i, (a, b)) in vh.iter().zip(&vg).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "V[{i}]: host {a} vs wgpu {b}"
        );
    }
}
