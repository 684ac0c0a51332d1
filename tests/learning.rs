//! Training actually learns: a short run moves samples from the source toward the target.

mod common;

use energy_matching::backend::{cpu, Precision};
use energy_matching::config::RunConfig;
use energy_matching::metrics::energy_distance_sq;
use energy_matching::rng::{stream, Purpose};
use energy_matching::run::{data_sources, draw_samples, trainer_for, SamplingSetup};
use energy_matching::train::Trainer;

#[test]
fn short_flow_matching_brings_samples_toward_the_target() {
    let cfg = RunConfig::from_toml_str(
        "[model]\nhidden = [64, 64]\n[train]\nbatch_size = 64\nphase1_steps = 400\nphase2_steps = 0\n[optim]\nlr = 3e-3\n[sample]\nt_end = 1.0\n",
        &[],
    )
    .unwrap();
    let (target, source) = data_sources(&cfg).unwrap();
    let model = cfg.model.init(0, &cpu(), Precision::F32).unwrap();
    let mut tr = trainer_for(&cfg, Trainer::fresh_state(model, &cfg.optim)).unwrap();
    let first = tr.step().unwrap().flow_loss;
    let mut last = Vec::new();
    while !tr.finished() {
        last.push(tr.step().unwrap().flow_loss);
    }
    let late: f64 = last[last.len() - 50..].iter().sum::<f64>() / 50.0;
    assert!(late < 0.5 * first, "flow loss {first} -> {late}");
    let setup = SamplingSetup {
        source: &source,
        schedule: cfg.schedule,
        sampler: &cfg.sample,
    };
    let samples = draw_samples(&tr.state.model, &setup, 400, 1, None, &mut |_| {}).unwrap();
    let t = target.sample(400, &mut stream(9, Purpose::Data, 0));
    let s0 = source.sample(400, &mut stream(9, Purpose::Data, 1));
    let (before, after) = (
        energy_distance_sq(&s0, &t),
        energy_distance_sq(&samples, &t),
    );
    // eight Gaussians → two moons starts at ≈ 6; 400 steps of a small net reach well below 1
    assert!(
        after < 0.15 * before,
        "energy distance² {before} -> {after}"
    );
}

/// Runs `cfg_toml` to the end on the CPU with `train.backprop = backprop`: per-step stats and
/// the final weights.
fn trajectory(
    cfg_toml: &str,
    backprop: &str,
) -> (Vec<energy_matching::train::StepStats>, Vec<Vec<f64>>) {
    let cfg = RunConfig::from_toml_str(cfg_toml, &[format!("train.backprop={backprop}")]).unwrap();
    common::trajectory(&cfg, &cpu())
}

/// The fused run and the autodiff run of `cfg_toml` agree step by step (up to f32 rounding).
/// Configs set a soft clamp: without one the CD term's gradient for the output bias is exactly
/// zero (mean V⁺ − mean V⁻ ignores a shift), and Adam would turn the two paths' different
/// rounding noise into steps of opposite sign.
fn assert_fused_matches_autodiff(cfg_toml: &str) {
    let (fused, p_fused) = trajectory(cfg_toml, "fused");
    let (auto, p_auto) = trajectory(cfg_toml, "autodiff");
    common::assert_steps_agree(&fused, &auto, ("fused", "autodiff"));
    for (k, (pf, pa)) in p_fused.iter().zip(&p_auto).enumerate() {
        for (x, y) in pf.iter().zip(pa) {
            // six Adam steps of lr 1e-4 move each weight by ≤ 6e-4; rounding differences stay far below
            assert!((x - y).abs() < 1e-6, "param {k}: fused {x} vs autodiff {y}");
        }
    }
}

/// The fused host backward pass and burn's autodiff give the same training trajectory (up to
/// f32 rounding) through both phases, clamp and trimming included.
#[test]
fn fused_and_autodiff_training_steps_agree() {
    assert_fused_matches_autodiff(
        "[model]\nhidden = [32, 24]\nenergy_clamp = 3.0\n[train]\nbatch_size = 70\nphase1_steps = 3\nphase2_steps = 3\ncd_trim = 0.1\n[negatives]\nn_gibbs = 5\n",
    );
}

/// The same for a conv potential (flattened map, a dense layer) on 1×6×6 "images": 40
/// images per batch span two fused blocks.
#[test]
fn fused_and_autodiff_conv_training_steps_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images.csv");
    let mut r = stream(5, Purpose::Data, 0);
    let rows: Vec<String> = (0..64)
        .map(|_| {
            (0..36)
                .map(|_| format!("{:.4}", energy_matching::rng::normal(&mut r).tanh()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    assert_fused_matches_autodiff(&format!(
        "[model]\nkind = \"conv\"\noutput_scale = 3.0\nenergy_clamp = 4.0\n[model.conv]\nimage = {{ channels = 1, height = 6, width = 6 }}\nchannels = [4, 5]\nstrides = [1, 2]\npool = \"flatten\"\nhidden = [8]\n[data]\ntarget = \"{}\"\nsource = \"standard_normal\"\n[train]\nbatch_size = 40\nphase1_steps = 3\nphase2_steps = 3\nsigma = 0.0\ncd_weight = 0.1\n[negatives]\nn_gibbs = 4\ndt = 0.025\nclamp = [-1.0, 1.0]\n",
        data.display()
    ));
}
