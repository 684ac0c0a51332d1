//! [`ModelConfig`] (the `[model]` table of a run config) and [`Network`], the potential it
//! builds: an [`Mlp`] for points, a [`ConvNet`] or a [`UNetVit`] for images, behind one
//! [`Model`].

use burn::tensor::{Device, Gradients, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    Activation, ConvConfig, ConvNet, Fused, Head, Mlp, MlpConfig, Model, Potential, UNetVit,
    UNetVitConfig,
};
use crate::backend::Precision;
use crate::sampler::GradField;
use crate::Result;

/// Which network a config builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Fully connected ([`Mlp`]), for points of any dimension.
    Mlp,
    /// Convolutional ([`ConvNet`]), for images (shape in `model.conv`).
    Conv,
    /// The paper's UNet → ViT image potential ([`UNetVit`], shape in `model.unet_vit`).
    UnetVit,
}

/// The potential network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `mlp`, `conv` or `unet_vit`.
    pub kind: ModelKind,
    /// Input dimension D of an MLP (a conv net takes C·H·W from `conv.image`).
    pub dim: usize,
    /// MLP on images: the shape of its input (C·H·W must equal `dim`), which turns on image
    /// plots and FID. `None` for points.
    pub image: Option<crate::data::ImageShape>,
    /// MLP: widths of the hidden layers (the tutorial: [256, 256, 256, 256]).
    pub hidden: Vec<usize>,
    /// Activation of every layer (MLP: except possibly the first).
    pub activation: Activation,
    /// MLP: activation of the first hidden layer (the tutorial uses ReLU); `None` = `activation`.
    pub first_activation: Option<Activation>,
    /// Fixed factor s multiplying the network output.
    pub output_scale: f64,
    /// Soft clamp c: V = c·tanh(s·out / c). `None` disables it.
    pub energy_clamp: Option<f64>,
    /// Conv: image shape, channels and strides of the convolutions, kernel size.
    pub conv: ConvConfig,
    /// UNet → ViT: image shape, UNet levels and attention, ViT head (SiLU in the UNet, GELU
    /// in the ViT; `activation` does not apply).
    pub unet_vit: UNetVitConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let m = MlpConfig::default();
        Self {
            kind: ModelKind::Mlp,
            dim: m.dim,
            image: None,
            hidden: m.hidden,
            activation: m.activation,
            first_activation: m.first_activation,
            output_scale: m.output_scale,
            energy_clamp: m.energy_clamp,
            conv: ConvConfig::default(),
            unet_vit: UNetVitConfig::default(),
        }
    }
}

impl ModelConfig {
    /// The MLP part of this config.
    pub fn mlp(&self) -> MlpConfig {
        MlpConfig {
            dim: self.dim,
            hidden: self.hidden.clone(),
            activation: self.activation,
            first_activation: self.first_activation,
            output_scale: self.output_scale,
            energy_clamp: self.energy_clamp,
        }
    }

    fn head(&self) -> Head {
        Head {
            activation: self.activation,
            output_scale: self.output_scale,
            energy_clamp: self.energy_clamp,
        }
    }

    /// The dimension of the points the network takes (C·H·W for images).
    pub fn input_dim(&self) -> usize {
        match self.kind {
            ModelKind::Mlp => self.dim,
            ModelKind::Conv => self.conv.image.numel(),
            ModelKind::UnetVit => self.unet_vit.image.numel(),
        }
    }

    /// The image shape of an image network (conv, UNet → ViT, or an MLP with `model.image`).
    pub fn image_shape(&self) -> Option<crate::data::ImageShape> {
        match self.kind {
            ModelKind::Mlp => self.image,
            ModelKind::Conv => Some(self.conv.image),
            ModelKind::UnetVit => Some(self.unet_vit.image),
        }
    }

    /// Checks sizes and scales, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        self.mlp().validate()?;
        match self.kind {
            ModelKind::Mlp => match self.image {
                Some(s) if s.numel() != self.dim => {
                    return Err(crate::EmError::config(
                        "model.image",
                        format!(
                            "expected C·H·W = model.dim = {}, found {s} ({} values)",
                            self.dim,
                            s.numel()
                        ),
                    ))
                }
                _ => {}
            },
            ModelKind::Conv => self.conv.validate("model.conv")?,
            ModelKind::UnetVit => self.unet_vit.validate("model.unet_vit")?,
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let shapes = match self.kind {
            ModelKind::Mlp => return self.mlp().num_params(),
            ModelKind::Conv => self.conv.param_shapes(),
            ModelKind::UnetVit => self.unet_vit.param_shapes(),
        };
        shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Builds the network with PyTorch's default initialisation from `(seed, Init)`.
    pub fn init(&self, seed: u64, device: &Device, precision: Precision) -> Result<Network> {
        self.validate()?;
        Ok(match self.kind {
            ModelKind::Mlp => Network::Mlp(self.mlp().init(seed, device, precision)?),
            ModelKind::Conv => {
                Network::Conv(self.conv.init(self.head(), seed, device, precision)?)
            }
            ModelKind::UnetVit => Network::UnetVit(Box::new(self.unet_vit.init(
                self.output_scale,
                self.energy_clamp,
                seed,
                device,
                precision,
            )?)),
        })
    }
}

/// The potential a [`ModelConfig`] describes.
#[derive(Debug, Clone)]
pub enum Network {
    /// Fully connected.
    Mlp(Mlp),
    /// Convolutional.
    Conv(ConvNet),
    /// UNet → ViT.
    UnetVit(Box<UNetVit>),
}

/// Calls the same method on whichever network is inside.
macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Network::Mlp($m) => $e,
            Network::Conv($m) => $e,
            Network::UnetVit($m) => $e,
        }
    };
}

impl Potential for Network {
    fn dim(&self) -> usize {
        each!(self, m => m.dim())
    }

    fn device(&self) -> Device {
        each!(self, m => m.device())
    }

    fn energy(&self, x: Tensor<2>) -> Tensor<1> {
        each!(self, m => m.energy(x))
    }

    fn energy_and_grad(&self, x: Tensor<2>) -> (Tensor<1>, Tensor<2>) {
        each!(self, m => m.energy_and_grad(x))
    }
}

impl Model for Network {
    fn param_names(&self) -> Vec<String> {
        each!(self, m => m.param_names())
    }

    fn param_shapes(&self) -> Vec<Vec<usize>> {
        each!(self, m => m.param_shapes())
    }

    fn flat_params(&self) -> Vec<Tensor<1>> {
        each!(self, m => m.flat_params())
    }

    fn set_flat_params(&mut self, params: Vec<Tensor<1>>) -> Result<()> {
        each!(self, m => m.set_flat_params(params))
    }

    fn tracked(&self) -> Self {
        match self {
            Network::Mlp(m) => Network::Mlp(m.tracked()),
            Network::Conv(m) => Network::Conv(m.tracked()),
            Network::UnetVit(m) => Network::UnetVit(Box::new(m.tracked())),
        }
    }

    fn untracked(&self) -> Self {
        match self {
            Network::Mlp(m) => Network::Mlp(m.untracked()),
            Network::Conv(m) => Network::Conv(m.untracked()),
            Network::UnetVit(m) => Network::UnetVit(Box::new(m.untracked())),
        }
    }

    fn flat_grads(&self, grads: &Gradients) -> Vec<Option<Tensor<1>>> {
        each!(self, m => m.flat_grads(grads))
    }

    fn host_field(&self) -> Result<Box<dyn GradField + '_>> {
        each!(self, m => m.host_field())
    }

    fn fused_backprop(&self) -> Result<Option<Fused>> {
        each!(self, m => m.fused_backprop())
    }
}
