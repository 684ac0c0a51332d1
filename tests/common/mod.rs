//! Shared by the integration tests.

/// The `[model]` tables of a tiny UNet → ViT on 1×6×6 images: every layer kind of the paper's
/// networks (residual blocks, down/up-sampling, attention, the ViT head) at toy size.
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
