//! The paper's image potential: a UNet (the guided-diffusion layout the reference uses, without
//! a time input) whose image-shaped output feeds a ViT head that gives one energy per patch;
//! V(x) = Σ_patches head(s · linear(token)), where head is the identity or the soft clamp.
//!
//! The forward pass is written on a [`Tape`], whose reverse sweep gives ∇ₓV as explicit tensor
//! ops; each op's input-gradient rule is tested in `tape.rs`, the whole network in `tests.rs`.
//!
//! Differences from the reference, on purpose:
//! - no time embedding: the reference feeds a constant dummy time, which only adds a constant
//!   per-channel shift after each residual block's first convolution, and that convolution's
//!   bias already provides it;
//! - no dropout: the potential is a deterministic function of x;
//! - `attention_resolutions` lists feature-map side lengths (16 = the 16×16 maps of a 32×32
//!   image), not down-sampling factors;
//! - attention projections are separate q, k, v matrices rather than one fused `qkv` matrix.

use burn::tensor::{Device, Gradients, Tensor};
use serde::{Deserialize, Serialize};

use super::tape::{Tape, Var};

mod recorders;

use super::{Activation, Model, Potential};
use crate::backend::{vector, Precision};
use crate::data::ImageShape;
use crate::rng::{stream, uniform, Purpose};
use crate::{EmError, Result};
pub use recorders::HostUNetVit;
use recorders::{Recorder, TensorRecorder};

/// Architecture of a [`UNetVit`] potential (the `[model.unet_vit]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetVitConfig {
    /// Shape of the input images (height and width divisible by 2^(levels − 1) and by `patch`).
    pub image: ImageShape,
    /// Channels of the first UNet level.
    pub base_channels: usize,
    /// Channel multiplier of each UNet level (one level per entry; each level but the last
    /// halves the resolution).
    pub channel_mult: Vec<usize>,
    /// Residual blocks per UNet level (the decoder has one more per level).
    pub res_blocks: usize,
    /// Feature-map side lengths at which UNet levels add self-attention (the middle block
    /// always has it).
    pub attention_resolutions: Vec<usize>,
    /// Channels per attention head in the UNet (heads = channels / head_channels, at least 1).
    pub head_channels: usize,
    /// Groups of every GroupNorm (channel counts must be multiples of it).
    pub groups: usize,
    /// ViT patch size (the patch embedding is a convolution with kernel = stride = patch).
    pub patch: usize,
    /// ViT embedding width.
    pub embed_dim: usize,
    /// ViT encoder layers (post-norm, as PyTorch's `TransformerEncoderLayer`).
    pub vit_layers: usize,
    /// ViT attention heads.
    pub vit_heads: usize,
    /// Width of the ViT feed-forward layer as a multiple of `embed_dim`.
    pub ff_mult: usize,
}

impl Default for UNetVitConfig {
    /// The paper's MNIST potential: UNet base 32, mult [1, 2, 2], 2 residual blocks per level,
    /// ViT with embedding 128, 2 layers, 2 heads, patch 4.
    fn default() -> Self {
        Self {
            image: ImageShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            res_blocks: 2,
            attention_resolutions: vec![14],
            head_channels: 64,
            groups: 32,
            patch: 4,
            embed_dim: 128,
            vit_layers: 2,
            vit_heads: 2,
            ff_mult: 4,
        }
    }
}

impl UNetVitConfig {
    /// The paper's CIFAR-10 potential (≈50M parameters): UNet base 128, mult [1, 2, 2, 2],
    /// attention at 16×16 with heads of 64 channels; ViT patch 4, embedding 384, 8 layers,
    /// 4 heads.
    pub fn cifar10() -> Self {
        Self {
            image: ImageShape {
                channels: 3,
                height: 32,
                width: 32,
            },
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            res_blocks: 2,
            attention_resolutions: vec![16],
            head_channels: 64,
            groups: 32,
            patch: 4,
            embed_dim: 384,
            vit_layers: 8,
            vit_heads: 4,
            ff_mult: 4,
        }
    }

    /// Checks sizes, naming the offending key (under `prefix`, e.g. `model.unet_vit`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad =
            |key: &str, reason: String| Err(EmError::config(format!("{prefix}.{key}"), reason));
        let s = self.image;
        let levels = self.channel_mult.len();
        if levels == 0 || self.channel_mult.contains(&0) {
            return bad(
                "channel_mult",
                format!(
                    "expected at least one level, each ≥ 1, found {:?}",
                    self.channel_mult
                ),
            );
        }
        let factor = 1usize << (levels - 1);
        if s.channels == 0
            || !s.height.is_multiple_of(factor)
            || !s.width.is_multiple_of(factor)
            || s.height == 0
        {
            return bad(
                "image",
                format!(
                    "expected a non-empty image whose sides are multiples of {factor} \
                     (2^(levels − 1)), found {s}"
                ),
            );
        }
        if self.groups == 0
            || self.base_channels == 0
            || !self.base_channels.is_multiple_of(self.groups)
        {
            return bad(
                "base_channels",
                format!(
                    "expected a positive multiple of groups = {}, found {}",
                    self.groups, self.base_channels
                ),
            );
        }
        if self.res_blocks == 0 {
            return bad("res_blocks", "expected at least 1, found 0".into());
        }
        if self.head_channels == 0 {
            return bad("head_channels", "expected at least 1, found 0".into());
        }
        for m in &self.channel_mult {
            let c = m * self.base_channels;
            if c >= self.head_channels && !c.is_multiple_of(self.head_channels) {
                return bad(
                    "head_channels",
                    format!("expected a divisor of every level's channels, found {c} channels"),
                );
            }
        }
        if self.patch == 0
            || !s.height.is_multiple_of(self.patch)
            || !s.width.is_multiple_of(self.patch)
        {
            return bad(
                "patch",
                format!(
                    "expected a divisor of the image sides of {s}, found {}",
                    self.patch
                ),
            );
        }
        if self.vit_heads == 0
            || self.embed_dim == 0
            || !self.embed_dim.is_multiple_of(self.vit_heads)
        {
            return bad(
                "vit_heads",
                format!(
                    "expected a divisor of embed_dim = {}, found {}",
                    self.embed_dim, self.vit_heads
                ),
            );
        }
        if self.vit_layers == 0 || self.ff_mult == 0 {
            return bad(
                "vit_layers",
                "expected at least one ViT layer and ff_mult ≥ 1".into(),
            );
        }
        Ok(())
    }

    /// Parameter shapes in canonical order (without building the network).
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        Plan::build(self).1.shapes
    }

    /// Builds the network with the reference's initialisation (PyTorch defaults; zero-initialised
    /// last convolution of each residual block, UNet attention output and UNet output; Xavier
    /// patch embedding and attention input projections; zero positional embedding), drawn from
    /// `(seed, Init)`.
    pub fn init(
        &self,
        output_scale: f64,
        energy_clamp: Option<f64>,
        seed: u64,
        device: &Device,
        precision: Precision,
    ) -> Result<UNetVit> {
        self.validate("model.unet_vit")?;
        let (plan, registry) = Plan::build(self);
        let mut rng = stream(seed, Purpose::Init, 0);
        let params = registry
            .shapes
            .iter()
            .zip(&registry.inits)
            .map(|(shape, init)| {
                let n: usize = shape.iter().product();
                let values = (0..n)
                    .map(|_| match *init {
                        Init::Uniform(bound) => (2.0 * uniform(&mut rng) - 1.0) * bound,
                        Init::Const(c) => c,
                    })
                    .collect();
                vector(values, device, precision)
            })
            .collect();
        Ok(UNetVit {
            config: self.clone(),
            output_scale,
            energy_clamp,
            plan,
            names: registry.names,
            shapes: registry.shapes,
            params,
        })
    }
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// U(−bound, bound).
    Uniform(f64),
    /// A constant (0 for biases and zero-initialised layers, 1 for norm scales).
    Const(f64),
}

/// Names, shapes and initialisations of the parameters, in the order the plan registers them.
#[derive(Default)]
struct Registry {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    inits: Vec<Init>,
}

impl Registry {
    fn add(&mut self, name: String, shape: Vec<usize>, init: Init) -> usize {
        self.names.push(name);
        self.shapes.push(shape);
        self.inits.push(init);
        self.names.len() - 1
    }

    /// A k×k convolution (PyTorch default init, or all zeros).
    fn conv(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        zero: bool,
    ) -> Conv {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let init = if zero {
            Init::Const(0.0)
        } else {
            Init::Uniform(bound)
        };
        Conv {
            weight: self.add(format!("{name}.weight"), vec![c_out, c_in, k, k], init),
            bias: self.add(format!("{name}.bias"), vec![c_out], init),
            c_in,
            c_out,
            k,
            stride,
            padding: if k == stride { 0 } else { k / 2 },
        }
    }

    /// A linear map with weight `[in, out]`.
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        weight: Init,
        bias: Init,
    ) -> Linear {
        Linear {
            weight: self.add(format!("{name}.weight"), vec![d_in, d_out], weight),
            bias: self.add(format!("{name}.bias"), vec![d_out], bias),
            d_in,
            d_out,
        }
    }

    /// GroupNorm (`groups > 0`) or LayerNorm over the last axis (`groups == 0`).
    fn norm(&mut self, name: &str, channels: usize, groups: usize) -> Norm {
        Norm {
            gamma: self.add(format!("{name}.weight"), vec![channels], Init::Const(1.0)),
            beta: self.add(format!("{name}.bias"), vec![channels], Init::Const(0.0)),
            groups,
        }
    }

    /// Multi-head self-attention over `dim`-wide tokens.
    fn attention(&mut self, name: &str, dim: usize, heads: usize, vit: bool) -> Attention {
        let default = Init::Uniform(1.0 / (dim as f64).sqrt());
        let (qkv_w, qkv_b, out_w, out_b) = if vit {
            // PyTorch MultiheadAttention: Xavier over the fused [3E, E] matrix, zero biases
            let xavier = Init::Uniform((6.0 / (4 * dim) as f64).sqrt());
            (xavier, Init::Const(0.0), default, Init::Const(0.0))
        } else {
            (default, default, Init::Const(0.0), Init::Const(0.0))
        };
        Attention {
            q: self.linear(&format!("{name}.q"), dim, dim, qkv_w, qkv_b),
            k: self.linear(&format!("{name}.k"), dim, dim, qkv_w, qkv_b),
            v: self.linear(&format!("{name}.v"), dim, dim, qkv_w, qkv_b),
            out: self.linear(&format!("{name}.out"), dim, dim, out_w, out_b),
            heads,
        }
    }
}

/// Parameter indices and geometry of a convolution.
#[derive(Debug, Clone)]
struct Conv {
    weight: usize,
    bias: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

/// Parameter indices of a linear map on the last axis.
#[derive(Debug, Clone)]
struct Linear {
    weight: usize,
    bias: usize,
    d_in: usize,
    d_out: usize,
}

/// Parameter indices of a normalisation (`groups == 0`: LayerNorm over the last axis).
#[derive(Debug, Clone)]
struct Norm {
    gamma: usize,
    beta: usize,
    groups: usize,
}

/// Multi-head self-attention: q, k, v projections, softmax(q kᵀ/√d) v per head, output map.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

/// x + conv₂(SiLU(GN₂(conv₁(SiLU(GN₁(x)))))), with a 1×1 convolution on the skip path when the
/// channel count changes.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    skip: Option<Conv>,
}

/// One UNet stage.
#[derive(Debug, Clone)]
enum Block {
    Res(ResBlock),
    /// x + attention(GN(x)) over the H·W positions.
    Attn(Norm, Attention),
    /// Stride-2 3×3 convolution.
    Down(Conv),
    /// Nearest-neighbour ×2, then a 3×3 convolution.
    Up(Conv),
}

/// A post-norm transformer encoder layer: x ← LN₁(x + MHA(x)); x ← LN₂(x + W₂ GELU(W₁ x)).
#[derive(Debug, Clone)]
struct EncoderLayer {
    attn: Attention,
    norm1: Norm,
    ff1: Linear,
    ff2: Linear,
    norm2: Norm,
}

/// The network as parameter indices and geometry, interpreted by [`UNetVit::forward`].
#[derive(Debug, Clone)]
struct Plan {
    input_conv: Conv,
    /// Encoder stages; the output of each is kept for a skip connection.
    encoder: Vec<Vec<Block>>,
    middle: Vec<Block>,
    /// Decoder stages; each first concatenates the latest unused skip.
    decoder: Vec<Vec<Block>>,
    out_norm: Norm,
    out_conv: Conv,
    patch_embed: Conv,
    pos_embed: usize,
    layers: Vec<EncoderLayer>,
    energy: Linear,
}

impl Plan {
    fn build(cfg: &UNetVitConfig) -> (Plan, Registry) {
        let mut r = Registry::default();
        let (base, g) = (cfg.base_channels, cfg.groups);
        let heads = |c: usize| (c / cfg.head_channels).max(1);
        let attends = |ds: usize| cfg.attention_resolutions.contains(&(cfg.image.height / ds));
        let res = |r: &mut Registry, name: &str, c_in: usize, c_out: usize| {
            Block::Res(ResBlock {
                norm1: r.norm(&format!("{name}.norm1"), c_in, g),
                conv1: r.conv(&format!("{name}.conv1"), c_in, c_out, 3, 1, false),
                norm2: r.norm(&format!("{name}.norm2"), c_out, g),
                conv2: r.conv(&format!("{name}.conv2"), c_out, c_out, 3, 1, true),
                skip: (c_in != c_out)
                    .then(|| r.conv(&format!("{name}.skip"), c_in, c_out, 1, 1, false)),
            })
        };
        let attn = |r: &mut Registry, name: &str, c: usize| {
            Block::Attn(
                r.norm(&format!("{name}.norm"), c, g),
                r.attention(name, c, heads(c), false),
            )
        };

        let input_conv = r.conv("unet.input", cfg.image.channels, base, 3, 1, false);
        let mut skips = vec![base];
        let (mut ch, mut ds) = (base, 1);
        let mut encoder = Vec::new();
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            for i in 0..cfg.res_blocks {
                let name = format!("unet.down.{level}.{i}");
                let mut stage = vec![res(&mut r, &format!("{name}.res"), ch, mult * base)];
                ch = mult * base;
                if attends(ds) {
                    stage.push(attn(&mut r, &format!("{name}.attn"), ch));
                }
                encoder.push(stage);
                skips.push(ch);
            }
            if level + 1 < levels {
                encoder.push(vec![Block::Down(r.conv(
                    &format!("unet.down.{level}.downsample"),
                    ch,
                    ch,
                    3,
                    2,
                    false,
                ))]);
                skips.push(ch);
                ds *= 2;
            }
        }
        let middle = vec![
            res(&mut r, "unet.middle.res1", ch, ch),
            attn(&mut r, "unet.middle.attn", ch),
            res(&mut r, "unet.middle.res2", ch, ch),
        ];
        let mut decoder = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.res_blocks {
                let name = format!("unet.up.{level}.{i}");
                let skip = skips.pop().expect("one skip per encoder stage");
                let mut stage = vec![res(&mut r, &format!("{name}.res"), ch + skip, mult * base)];
                ch = mult * base;
                if attends(ds) {
                    stage.push(attn(&mut r, &format!("{name}.attn"), ch));
                }
                if level > 0 && i == cfg.res_blocks {
                    stage.push(Block::Up(r.conv(
                        &format!("{name}.upsample"),
                        ch,
                        ch,
                        3,
                        1,
                        false,
                    )));
                    ds /= 2;
                }
                decoder.push(stage);
            }
        }
        let out_norm = r.norm("unet.out.norm", ch, g);
        let out_conv = r.conv("unet.out.conv", ch, cfg.image.channels, 3, 1, true);

        let (e, p) = (cfg.embed_dim, cfg.patch);
        let tokens = (cfg.image.height / p) * (cfg.image.width / p);
        let patch_embed = r.conv("vit.patch_embed", cfg.image.channels, e, p, p, false);
        // Xavier-uniform patch embedding weight (fan_in = C·p², fan_out = E·p²)
        r.inits[patch_embed.weight] =
            Init::Uniform((6.0 / ((cfg.image.channels + e) * p * p) as f64).sqrt());
        let pos_embed = r.add("vit.pos_embed".into(), vec![tokens, e], Init::Const(0.0));
        let default = |d: usize| Init::Uniform(1.0 / (d as f64).sqrt());
        let ff = cfg.ff_mult * e;
        let layers = (0..cfg.vit_layers)
            .map(|l| {
                let name = format!("vit.layers.{l}");
                EncoderLayer {
                    attn: r.attention(&format!("{name}.attn"), e, cfg.vit_heads, true),
                    norm1: r.norm(&format!("{name}.norm1"), e, 0),
                    ff1: r.linear(&format!("{name}.ff1"), e, ff, default(e), default(e)),
                    ff2: r.linear(&format!("{name}.ff2"), ff, e, default(ff), default(ff)),
                    norm2: r.norm(&format!("{name}.norm2"), e, 0),
                }
            })
            .collect();
        let energy = r.linear("vit.energy", e, 1, default(e), default(e));
        let plan = Plan {
            input_conv,
            encoder,
            middle,
            decoder,
            out_norm,
            out_conv,
            patch_embed,
            pos_embed,
            layers,
            energy,
        };
        (plan, r)
    }
}

/// The UNet → ViT potential over images given as rows of `C·H·W` values.
#[derive(Debug, Clone)]
pub struct UNetVit {
    config: UNetVitConfig,
    output_scale: f64,
    energy_clamp: Option<f64>,
    plan: Plan,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    /// Flattened parameters in canonical order.
    params: Vec<Tensor<1>>,
}

impl UNetVit {
    /// The architecture.
    pub fn config(&self) -> &UNetVitConfig {
        &self.config
    }

    fn param<const D: usize>(&self, i: usize, shape: [usize; D]) -> Tensor<D> {
        self.params[i].clone().reshape(shape)
    }

    /// Multi-head self-attention over tokens `[B, 1, N, E]`.
    fn attention<R: Recorder>(&self, t: &mut R, x: &R::Var, a: &Attention) -> R::Var {
        let [b, _, n, e] = R::dims(x);
        let d = e / a.heads;
        let split = |t: &mut R, l: &Linear| {
            let y = t.linear(x, l);
            let y = t.reshape(&y, [b, n, a.heads, d]);
            t.swap_dims(&y, 1, 2)
        };
        let (q, k, v) = (split(t, &a.q), split(t, &a.k), split(t, &a.v));
        let kt = t.swap_dims(&k, 2, 3);
        let scores = t.matmul(&q, &kt);
        let scores = t.scale(&scores, 1.0 / (d as f64).sqrt());
        let weights = t.softmax(&scores);
        let o = t.matmul(&weights, &v);
        let o = t.swap_dims(&o, 1, 2);
        let o = t.reshape(&o, [b, 1, n, e]);
        t.linear(&o, &a.out)
    }

    fn block<R: Recorder>(&self, t: &mut R, x: &R::Var, block: &Block) -> R::Var {
        match block {
            Block::Res(r) => {
                let h = t.norm(x, &r.norm1);
                let h = t.activation(&h, Activation::Silu);
                let h = t.conv(&h, &r.conv1);
                let h = t.norm(&h, &r.norm2);
                let h = t.activation(&h, Activation::Silu);
                let h = t.conv(&h, &r.conv2);
                let skip = match &r.skip {
                    Some(c) => t.conv(x, c),
                    None => x.clone(),
                };
                t.add(&skip, &h)
            }
            Block::Attn(norm, a) => {
                let [b, c, h, w] = R::dims(x);
                let y = t.norm(x, norm);
                let y = t.reshape(&y, [b, 1, c, h * w]);
                let y = t.swap_dims(&y, 2, 3);
                let y = self.attention(t, &y, a);
                let y = t.swap_dims(&y, 2, 3);
                let y = t.reshape(&y, [b, c, h, w]);
                t.add(x, &y)
            }
            Block::Down(c) => t.conv(x, c),
            Block::Up(c) => {
                let y = t.upsample2x(x);
                t.conv(&y, c)
            }
        }
    }

    fn stage<R: Recorder>(&self, t: &mut R, x: R::Var, blocks: &[Block]) -> R::Var {
        blocks.iter().fold(x, |h, b| self.block(t, &h, b))
    }

    /// The UNet: images `[B, C, H, W]` to images of the same shape.
    fn unet<R: Recorder>(&self, t: &mut R, x: &R::Var) -> R::Var {
        let p = &self.plan;
        let mut h = t.conv(x, &p.input_conv);
        let mut skips = vec![h.clone()];
        for stage in &p.encoder {
            h = self.stage(t, h, stage);
            skips.push(h.clone());
        }
        h = self.stage(t, h, &p.middle);
        for stage in &p.decoder {
            let skip = skips.pop().expect("one skip per decoder stage");
            h = t.cat_channels(&h, &skip);
            h = self.stage(t, h, stage);
        }
        let h = t.norm(&h, &p.out_norm);
        let h = t.activation(&h, Activation::Silu);
        t.conv(&h, &p.out_conv)
    }

    /// The ViT head: images to per-patch raw energies `[B, 1, N, 1]`.
    fn vit<R: Recorder>(&self, t: &mut R, x: &R::Var) -> R::Var {
        let p = &self.plan;
        let e = self.config.embed_dim;
        let y = t.conv(x, &p.patch_embed);
        let [b, _, hp, wp] = R::dims(&y);
        let n = hp * wp;
        let y = t.reshape(&y, [b, 1, e, n]);
        let y = t.swap_dims(&y, 2, 3);
        let mut h = t.shift(&y, p.pos_embed, [1, 1, n, e]);
        for layer in &p.layers {
            let a = self.attention(t, &h, &layer.attn);
            let s = t.add(&h, &a);
            h = t.norm(&s, &layer.norm1);
            let f = t.linear(&h, &layer.ff1);
            let f = t.activation(&f, Activation::Gelu);
            let f = t.linear(&f, &layer.ff2);
            let s = t.add(&h, &f);
            h = t.norm(&s, &layer.norm2);
        }
        t.linear(&h, &p.energy)
    }

    /// The whole network on a recorder: images `[B, C, H, W]` to per-patch raw energies
    /// `[B, 1, N, 1]`.
    fn pass<R: Recorder>(&self, t: &mut R, x: &R::Var) -> R::Var {
        let u = self.unet(t, x);
        self.vit(t, &u)
    }

    /// Records the forward pass: (tape, input value, per-patch raw energies `[B, 1, N, 1]`).
    fn forward(&self, x: Tensor<2>) -> (Tape, Var, Var) {
        let s = self.config.image;
        let b = x.dims()[0];
        let mut t = TensorRecorder {
            tape: Tape::new(),
            net: self,
        };
        let input = t.tape.input(x.reshape([b, s.channels, s.height, s.width]));
        let out = self.pass(&mut t, &input);
        (t.tape, input, out)
    }

    /// (V, dV/d raw energies) from per-patch raw energies: V = Σ_patches head(out).
    fn energies(&self, out: &Var, with_derivative: bool) -> (Tensor<1>, Option<Tensor<4>>) {
        let [b, _, n, _] = out.dims();
        let flat: Tensor<2> = out.value.clone().reshape([b * n, 1]);
        let (v, d) =
            super::output_head(flat, self.output_scale, self.energy_clamp, with_derivative);
        let v: Tensor<2> = v.reshape([b, n]);
        (
            v.sum_dim(1).reshape([b]),
            d.map(|d| d.reshape([b, 1, n, 1])),
        )
    }
}

impl Potential for UNetVit {
    fn dim(&self) -> usize {
        self.config.image.numel()
    }

    fn device(&self) -> Device {
        self.params[0].device()
    }

    fn energy(&self, x: Tensor<2>) -> Tensor<1> {
        let (_, _, out) = self.forward(x);
        self.energies(&out, false).0
    }

    fn energy_and_grad(&self, x: Tensor<2>) -> (Tensor<1>, Tensor<2>) {
        let b = x.dims()[0];
        let (tape, input, out) = self.forward(x);
        let (v, seed) = self.energies(&out, true);
        let g = tape.gradient(&out, seed.expect("derivative requested"), &input);
        (v, g.reshape([b, self.dim()]))
    }
}

impl Model for UNetVit {
    fn param_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn param_shapes(&self) -> Vec<Vec<usize>> {
        self.shapes.clone()
    }

    flat_params_model_methods!("UNetVit");

    /// On the CPU the host kernels ([`HostUNetVit`]); on a GPU the tensor tape.
    fn host_field(&self) -> Result<Box<dyn crate::sampler::GradField + '_>> {
        if crate::backend::is_cpu(&self.device()) {
            Ok(Box::new(HostUNetVit::new(self)))
        } else {
            Ok(Box::new(crate::sampler::TensorField {
                potential: self,
                precision: Precision::F32,
            }))
        }
    }

    /// On the CPU the host kernels ([`HostUNetVit`]); on a GPU none (autodiff on the tensor
    /// tape).
    fn fused_backprop(&self) -> Result<Option<super::Fused>> {
        let on_cpu = crate::backend::is_cpu(&self.device());
        Ok(on_cpu.then(|| super::Fused::UNetVit(Box::new(HostUNetVit::new(self)))))
    }
}
