//! Shared by the integration tests.

/// The `[model]` tables of a tiny UNet → ViT on 1×6×6 images: every layer kind of the paper's
/// networks (residual blocks, down/up-sampling, attention, the ViT head) at toy size.
#[allow(dead_code)] // not every test crate builds one
pub const TINY_UNET_VIT: &str = r#"
[model]
kind = "unet_vit"
output_scale = 2.0
[model.unet_vit]
image = { channels = 1, height = 6, width = 6 }
base_channels = 4
channel_mult = [1, 2]
res_blocks = 1
attention_resolutions = [3]
head_channels = 4
groups = 2
patch = 3
embed_dim = 8
vit_layers = 1
vit_heads = 2
ff_mult = 2
"#;

/// Per-step statistics and final weights of `cfg` trained to the end from seed 3 on `device`.
#[allow(dead_code)] // not every test crate trains
pub fn trajectory(
    cfg: &energy_matching::config::RunConfig,
    device: &burn::tensor::Device,
) -> (Vec<energy_matching::train::StepStats>, Vec<Vec<f64>>) {
    use energy_matching::potential::Model;
    let model = cfg
        .model
        .init(3, device, energy_matching::backend::Precision::F32)
        .unwrap();
    let state = energy_matching::train::Trainer::fresh_state(model, &cfg.optim);
    let mut tr = energy_matching::run::trainer_for(cfg, state).unwrap();
    let mut stats = Vec::new();
    while !tr.finished() {
        stats.push(tr.step().unwrap());
    }
    let params = tr
        .state
        .model
        .flat_params()
        .into_iter()
        .map(energy_matching::backend::to_f64_vec)
        .collect();
    (stats, params)
}

/// Two runs of the same config agree step by step (up to f32 rounding): flow loss, gradient
/// norm and CD term within 1e-4 relative, and the CD term in the same steps. `names` label the
/// runs in failures.
#[allow(dead_code)] // not every test crate trains
pub fn assert_steps_agree(
    a: &[energy_matching::train::StepStats],
    b: &[energy_matching::train::StepStats],
    names: (&str, &str),
) {
    let close = |x: f64, y: f64, what: &str| {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1e-2),
            "{what}: {} {x} vs {} {y}",
            names.0,
            names.1
        )
    };
    assert_eq!(a.len(), b.len());
    for (s, t) in a.iter().zip(b) {
        close(
            s.flow_loss,
            t.flow_loss,
            &format!("step {} flow loss", s.step),
        );
        close(
            s.grad_norm,
            t.grad_norm,
            &format!("step {} grad norm", s.step),
        );
        assert_eq!(s.cd_loss.is_some(), t.cd_loss.is_some());
        if let (Some(x), Some(y)) = (s.cd_loss, t.cd_loss) {
            close(x, y, &format!("step {} cd", s.step));
        }
    }
}
