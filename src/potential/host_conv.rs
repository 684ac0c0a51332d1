//! [`HostConv`]: an f32 copy of a [`ConvNet`] on fused host kernels — im2col + `gemm` for every
//! convolution, its transpose (gemm + col2im) for the input gradient — with the training-step
//! parameter gradient derived by hand ([`FusedBackprop`]), like [`HostMlp`] for MLPs. The
//! dense layers and the head *are* a [`HostMlp`] over the pooled features.
//!
//! Layout: inside a block of n images every map is channel-major, `[C, n, H, W]`, so that one
//! gemm per layer covers the block: z_l = W_l · cols(h_l) with W_l as `[C_out, C_in·k²]` and
//! cols(h) the `[C_in·k², n·H_out·W_out]` patch matrix.
//!
//! Notation: z_l = conv(h_l, W_l) + b_l, h_{l+1} = a(z_l), h_0 = x; u = pool(h_L) feeds the MLP.
//! Input gradient: γ_L = pool*(∇_u V), δ_l = γ_{l+1} ⊙ a'(z_l), γ_l = convᵀ(δ_l, W_l)
//! (= col2im(W_lᵀ δ_l)), ∇ₓV = γ_0.
//!
//! Reverse mode for a loss L(V, ∇ₓV) with seeds ē = ∂L/∂V and Ḡ = ∂L/∂∇ₓV:
//! - up the backward chain (Γ_l = ∂L/∂γ_l, Γ_0 = Ḡ): ∂W_l += δ_l · cols(Γ_l)ᵀ,
//!   Δ_l = W_l · cols(Γ_l) (a convolution of Γ_l), S_l = Δ_l ⊙ γ_{l+1} ⊙ a''(z_l),
//!   Γ_{l+1} = Δ_l ⊙ a'(z_l);
//! - the MLP's own reverse sweep with seeds ē and pool(Γ_L) gives its parameter gradients and
//!   H_u = ∂L/∂u;
//! - down the forward chain (H_L = pool*(H_u)): Z_l = H_{l+1} ⊙ a'(z_l) + S_l,
//!   ∂W_l += Z_l · cols(h_l)ᵀ, ∂b_l = Σ Z_l, H_l = convᵀ(Z_l, W_l).
//!
//! Invariant: energies, input gradients and parameter gradients equal those of the tensor
//! [`ConvNet`] and of autodiff over its explicit ∇ₓV (tests in `potential/tests.rs`).

use std::cell::RefCell;
use std::sync::Mutex;

use super::conv::{ConvNet, Pool};
use super::host_backprop::{weights_and_biases, ChunkTape, FusedBackprop, RecordedBlock};
use super::host_mlp::{activate, add_nt_product, gemm_into, Dense};
use super::host_ops::{to_channel_major, to_row_major, ConvGeom};
use super::{Activation, HostMlp, Model};
use crate::backend::to_f32_vec;
use crate::sampler::{GradField, Scratch};
use crate::Result;

/// One convolution on host buffers.
struct ConvLayer {
    geom: ConvGeom,
    /// `[C_out, C_in·k·k]`, row-major (the `[C_out, C_in, k, k]` kernel).
    w: Vec<f32>,
    b: Vec<f32>,
    act: Activation,
}

/// The f32 host form of a [`ConvNet`].
pub struct HostConv {
    layers: Vec<ConvLayer>,
    pool: Pool,
    /// Dense layers and head over the pooled features.
    dense: HostMlp,
    /// Zeros as wide as the widest map of a block (the activation kernel's bias row).
    zeros: Vec<f32>,
}

/// What a block's passes keep on its tape for a parameter gradient afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: an evaluation of V or ∇ₓV (the convolutions run in cache-sized tiles).
    Nothing,
    /// The forward chain (patch matrices, a'): for a loss on V.
    Forward,
    /// Also a'' and δ: for a loss on ∇ₓV.
    Everything,
}

/// Images per block: a fixed number, so that results do not depend on the thread count.
const BLOCK_IMAGES: usize = 32;

/// One block of images after the forward pass and the input-gradient pass.
#[derive(Default)]
pub struct ConvTape {
    rows: usize,
    /// cols(h_l) of each layer (left as they were by evaluations, [`Keep::Nothing`], whose
    /// convolutions run in tiles).
    cols: Vec<Vec<f32>>,
    /// a'(z_l), δ_l and γ_{l+1} ⊙ a''(z_l) of each layer (`[C_out, n, H_out, W_out]`).
    d1: Vec<Vec<f32>>,
    delta: Vec<Vec<f32>>,
    curv: Vec<Vec<f32>>,
    /// The MLP's block over the pooled features.
    dense: Option<ChunkTape>,
    grad: Vec<f32>,
}

/// One thread's work buffers, kept from block to block and step to step: a block of 32 MNIST
/// images needs tens of MB of them, and fresh ones cost more in page faults than the
/// arithmetic they hold.
#[derive(Default)]
struct Workspace {
    /// Two maps `[C, n, H, W]` (h_0 and on, or Γ and H going back), swapped layer to layer.
    maps: [Vec<f32>; 2],
    /// A patch matrix.
    work: Vec<f32>,
    /// A map-sized product (Δ_l, or convᵀ(Z_l) going down).
    up: Vec<f32>,
    /// Z_l.
    z: Vec<f32>,
    /// S_l of each layer (the reverse sweep's second-order terms).
    second: Vec<Vec<f32>>,
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Tapes of finished training steps, reused by the next ones ([`FusedBackprop::recycle`]).
static SPARE_TAPES: Mutex<Vec<ConvTape>> = Mutex::new(Vec::new());

/// A tape from [`SPARE_TAPES`], or a new one.
fn spare_tape() -> ConvTape {
    let spare = SPARE_TAPES.lock().ok().and_then(|mut pool| pool.pop());
    spare.unwrap_or_default()
}

/// Most tapes kept for reuse (training steps stream a few blocks at a time; a whole recording
/// of a phase-2 step at batch 128 is 8 blocks).
const MAX_SPARE_TAPES: usize = 16;

impl RecordedBlock for ConvTape {
    fn rows(&self) -> usize {
        self.rows
    }

    fn energy(&self) -> &[f32] {
        self.dense.as_ref().map_or(&[], |d| d.energy())
    }

    fn grad(&self) -> &[f32] {
        &self.grad
    }
}

impl HostConv {
    /// Copies the weights of `net` (any precision) into f32 host buffers.
    pub fn from_conv(net: &ConvNet) -> Result<Self> {
        let cfg = net.config();
        let head = net.head();
        let mut flat = net.flat_params().into_iter().map(to_f32_vec);
        let mut next = || flat.next().expect("one tensor per parameter");
        let geometry = cfg.geometry();
        let layers: Vec<ConvLayer> = geometry
            .iter()
            .map(|&geom| ConvLayer {
                geom,
                w: next(),
                b: next(),
                act: head.activation,
            })
            .collect();
        let dim = cfg.pooled_features(geometry.last().expect("validated: at least one layer"));
        let mut features = dim;
        let mut hidden = Vec::new();
        for &width in &cfg.hidden {
            hidden.push(Dense {
                w: next(),
                b: next(),
                fan_in: features,
                fan_out: width,
                act: head.activation,
            });
            features = width;
        }
        let out_w = next();
        let out_b = next()[0];
        let widest = layers.iter().map(|l| l.geom.plane_out()).max().unwrap_or(0) * BLOCK_IMAGES;
        Ok(Self {
            layers,
            pool: cfg.pool,
            dense: HostMlp {
                dim,
                hidden,
                out_w,
                out_b,
                scale: head.output_scale as f32,
                clamp: head.energy_clamp.map(|c| c as f32),
            },
            zeros: vec![0.0; widest],
        })
    }

    /// A zero gradient for each convolution's weight and bias.
    fn conv_zero_grads(&self) -> Vec<Vec<f32>> {
        self.layers
            .iter()
            .flat_map(|l| [vec![0.0; l.w.len()], vec![0.0; l.b.len()]])
            .collect()
    }

    fn channels_in(&self) -> usize {
        self.layers[0].geom.c_in
    }

    /// Values per image.
    fn image_len(&self) -> usize {
        self.channels_in() * self.layers[0].geom.plane_in()
    }

    /// The forward and input-gradient passes over `n ≤ BLOCK_IMAGES` images (rows of `x`),
    /// into `t`, keeping what `keep` asks for.
    fn run_block(&self, x: &[f32], n: usize, keep: Keep, t: &mut ConvTape, ws: &mut Workspace) {
        self.record_forward(x, n, keep, t, ws);
        self.record_input_gradient(keep == Keep::Everything, t, ws);
    }

    /// The forward pass over `n ≤ BLOCK_IMAGES` images (rows of `x`) into `t`, the dense
    /// part included; h_L is left in `ws.maps[0]`. `t.grad` is cleared until
    /// [`Self::record_input_gradient`] fills it.
    fn record_forward(
        &self,
        x: &[f32],
        n: usize,
        keep: Keep,
        t: &mut ConvTape,
        ws: &mut Workspace,
    ) {
        let pooled = self.conv_forward(x, n, keep, t, ws);
        t.dense = Some(self.dense.record_chunk(&pooled, n));
        t.grad.clear();
    }

    /// The convolutions' forward pass over `n ≤ BLOCK_IMAGES` images (rows of `x`) into `t`
    /// (the patch matrices unless `keep` is [`Keep::Nothing`], a'' when it is
    /// [`Keep::Everything`]): the pooled features u, rows `[n, features]` (h_L is left in
    /// `ws.maps[0]`).
    fn conv_forward(
        &self,
        x: &[f32],
        n: usize,
        keep: Keep,
        t: &mut ConvTape,
        ws: &mut Workspace,
    ) -> Vec<f32> {
        let second = keep == Keep::Everything;
        let depth = self.layers.len();
        t.rows = n;
        for v in [&mut t.cols, &mut t.d1, &mut t.delta, &mut t.curv] {
            v.resize_with(depth, Vec::new);
        }
        // h_0: rows [n, C, H·W] → [C, n, H·W]
        let plane = self.layers[0].geom.plane_in();
        to_channel_major(
            &x[..n * self.image_len()],
            n,
            self.channels_in(),
            plane,
            &mut ws.maps[0],
        );
        let [h, next] = &mut ws.maps;
        for (l, layer) in self.layers.iter().enumerate() {
            let m = n * layer.geom.plane_out();
            if keep == Keep::Nothing {
                let wb = (&layer.w[..], &layer.b[..]);
                layer.geom.forward_tiled(wb, h, n, &mut ws.work, next);
            } else {
                layer.geom.im2col(h, n, &mut t.cols[l]);
                layer.geom.forward(&layer.w, &layer.b, &t.cols[l], n, next);
            }
            let d1 = &mut t.d1[l];
            d1.resize(next.len(), 0.0);
            // one row per channel: the bias is already in
            let zeros = &self.zeros[..m];
            if second {
                let d2 = &mut t.curv[l];
                d2.resize(next.len(), 0.0);
                activate::<true>(next, d1, d2, zeros, layer.act);
            } else {
                activate::<false>(next, d1, &mut [], zeros, layer.act);
            }
            std::mem::swap(h, next);
        }
        let last = self.layers.last().expect("at least one layer");
        self.pool_forward(h, n, last.geom.c_out, last.geom.plane_out())
    }

    /// The input-gradient pass of a block recorded by [`Self::record_forward`]: δ_l, S_l (when
    /// `second`) and ∇ₓV into `t.grad`.
    fn record_input_gradient(&self, second: bool, t: &mut ConvTape, ws: &mut Workspace) {
        let n = t.rows;
        let last = self.layers.last().expect("at least one layer");
        let (c_l, p_l) = (last.geom.c_out, last.geom.plane_out());
        let dense = t.dense.as_ref().expect("a recorded forward pass");
        let [h, next] = &mut ws.maps;
        // γ_L, then δ_l, S_l and γ_l down to the input
        self.pool_adjoint(dense.grad(), n, c_l, p_l, h);
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let delta = &mut t.delta[l];
            delta.clear();
            delta.extend(h.iter().zip(&t.d1[l]).map(|(g, d)| g * d));
            if second {
                t.curv[l]
                    .iter_mut()
                    .zip(h.iter())
                    .for_each(|(e, g)| *e *= g);
            }
            let geom = &layer.geom;
            geom.transpose_conv(&layer.w, delta, n, &mut ws.work, next);
            std::mem::swap(h, next);
        }
        let plane = self.layers[0].geom.plane_in();
        to_row_major(h, n, self.channels_in(), plane, &mut t.grad);
    }

    /// u = pool(h_L) as rows `[n, features]` from `h: [C, n, P]`.
    fn pool_forward(&self, h: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
        match self.pool {
            Pool::Flatten => {
                let mut u = Vec::new();
                to_row_major(h, n, c, p, &mut u);
                u
            }
            Pool::Mean => {
                let mut u = vec![0.0; n * c];
                for (ci, maps) in h.chunks(n * p).enumerate() {
                    for (i, map) in maps.chunks(p).enumerate() {
                        u[i * c + ci] = map.iter().sum::<f32>() / p as f32;
                    }
                }
                u
            }
        }
    }

    /// pool*: a gradient with respect to u (rows `[n, features]`) as one with respect to
    /// h_L (`[C, n, P]`), into `out`.
    fn pool_adjoint(&self, gu: &[f32], n: usize, c: usize, p: usize, out: &mut Vec<f32>) {
        match self.pool {
            Pool::Flatten => to_channel_major(gu, n, c, p, out),
            Pool::Mean => {
                out.resize(c * n * p, 0.0);
                for (ci, maps) in out.chunks_mut(n * p).enumerate() {
                    for (i, map) in maps.chunks_mut(p).enumerate() {
                        map.fill(gu[i * c + ci] / p as f32);
                    }
                }
            }
        }
    }

    /// V (when `energy` is given) and ∇ₓV (when `grad` is given; without it only the forward
    /// pass runs) of `n` rows, block by block on this thread.
    fn energy_grad(
        &self,
        x: &[f32],
        n: usize,
        mut energy: Option<&mut [f32]>,
        mut grad: Option<&mut [f32]>,
        scratch: &mut Scratch,
    ) {
        thread_local! {
            static TAPE: RefCell<ConvTape> = RefCell::new(ConvTape::default());
        }
        let d = self.image_len();
        TAPE.with_borrow_mut(|t| {
            WORKSPACE.with_borrow_mut(|ws| {
                for start in (0..n).step_by(BLOCK_IMAGES) {
                    let rows = BLOCK_IMAGES.min(n - start);
                    let x = &x[start * d..];
                    let Some(grad) = grad.as_deref_mut() else {
                        let pooled = self.conv_forward(x, rows, Keep::Nothing, t, ws);
                        let e = energy.as_deref_mut().map(|e| &mut e[start..start + rows]);
                        self.dense.energy_grad(&pooled, rows, e, None, scratch);
                        continue;
                    };
                    self.run_block(x, rows, Keep::Nothing, t, ws);
                    grad[start * d..(start + rows) * d].copy_from_slice(&t.grad);
                    if let Some(e) = energy.as_deref_mut() {
                        e[start..start + rows].copy_from_slice(t.energy());
                    }
                }
            })
        });
    }

    /// ∂L/∂θ of one recorded block ([`FusedBackprop::block_param_grads`]), with `ws`'s buffers.
    fn param_grads_with(
        &self,
        t: &ConvTape,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Vec<Vec<f32>> {
        let n = t.rows;
        let Workspace {
            maps: [gamma, h_bar],
            work,
            up,
            z,
            second,
        } = ws;
        second.resize_with(self.layers.len(), Vec::new);
        // S_l exists where ∇ₓV is in the loss and the activation is curved
        let curved = |l: usize| d_grad.is_some() && self.layers[l].act != Activation::Relu;
        // the convolutions' gradients; the dense part's are appended from its own sweep
        let mut grads = self.conv_zero_grads();
        let last = self.layers.last().expect("at least one layer");
        let (c_l, p_l) = (last.geom.c_out, last.geom.plane_out());
        // up the backward chain: Γ_l → ∂W_l, S_l, Γ_{l+1}
        let mut gamma_u = None;
        if let Some(dg) = d_grad {
            let plane = self.layers[0].geom.plane_in();
            to_channel_major(dg, n, self.channels_in(), plane, gamma);
            for (l, layer) in self.layers.iter().enumerate() {
                let (c_out, m) = (layer.geom.c_out, n * layer.geom.plane_out());
                layer.geom.im2col(gamma, n, work);
                let patch = layer.geom.patch();
                let sizes = [c_out, m, patch];
                add_nt_product(&mut grads[2 * l], (&t.delta[l], work), sizes, up);
                // overwritten by the product
                up.resize(c_out * m, 0.0);
                gemm_into(up, (&layer.w, false), (work, false), c_out, patch, m, false);
                if curved(l) {
                    second[l].clear();
                    second[l].extend(up.iter().zip(&t.curv[l]).map(|(a, b)| a * b));
                }
                up.iter_mut().zip(&t.d1[l]).for_each(|(a, b)| *a *= b);
                std::mem::swap(gamma, up);
            }
            // the transpose of pool* is the (linear) pool itself
            gamma_u = Some(self.pool_forward(gamma, n, c_l, p_l));
        }
        // the dense layers and head
        let dense = t.dense.as_ref().expect("a recorded block");
        let (dense_grads, h_u) =
            self.dense
                .chunk_backprop(dense, d_energy, gamma_u.as_deref(), true);
        grads.extend(dense_grads);
        // down the forward chain
        self.pool_adjoint(&h_u.expect("requested"), n, c_l, p_l, h_bar);
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let m = n * layer.geom.plane_out();
            z.clear();
            z.extend(h_bar.iter().zip(&t.d1[l]).map(|(a, b)| a * b));
            if curved(l) {
                z.iter_mut().zip(&second[l]).for_each(|(a, b)| *a += b);
            }
            let sizes = [layer.geom.c_out, m, layer.geom.patch()];
            add_nt_product(&mut grads[2 * l], (z, &t.cols[l]), sizes, work);
            for (gb, row) in grads[2 * l + 1].iter_mut().zip(z.chunks(m)) {
                *gb += row.iter().sum::<f32>();
            }
            if l > 0 {
                layer.geom.transpose_conv(&layer.w, z, n, work, up);
                std::mem::swap(h_bar, up);
            }
        }
        grads
    }
}

impl FusedBackprop for HostConv {
    type Tape = ConvTape;
    fn block_rows(&self) -> usize {
        BLOCK_IMAGES
    }

    fn record_block(&self, x: &[f32], n: usize) -> ConvTape {
        let mut t = spare_tape();
        WORKSPACE.with_borrow_mut(|ws| self.run_block(x, n, Keep::Everything, &mut t, ws));
        t
    }

    /// The forward pass alone: the parameter gradient of a loss on V reads the forward chain
    /// only (a', the patch matrices and the dense tape), not δ or a''.
    fn record_energy_block(&self, x: &[f32], n: usize) -> ConvTape {
        let mut t = spare_tape();
        WORKSPACE.with_borrow_mut(|ws| self.record_forward(x, n, Keep::Forward, &mut t, ws));
        t
    }

    fn block_param_grads(
        &self,
        t: &ConvTape,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
    ) -> Vec<Option<Vec<f32>>> {
        let grads = WORKSPACE.with_borrow_mut(|ws| self.param_grads_with(t, d_energy, d_grad, ws));
        weights_and_biases(
            grads,
            &self.biases_reached(d_energy.is_some(), d_grad.is_some()),
        )
    }

    /// Keeps the block's tape (up to `MAX_SPARE_TAPES` = 16) for the next recordings.
    fn recycle_block(&self, block: ConvTape) {
        if let Ok(mut pool) = SPARE_TAPES.lock() {
            if pool.len() < MAX_SPARE_TAPES {
                pool.push(block);
            }
        }
    }
}

impl HostConv {
    /// A convolution's bias through V always; through ∇ₓV only via a curved map (a'' ≠ 0) at
    /// or above it: its own activation, a later one, a dense one or the clamped head.
    fn biases_reached(&self, energy: bool, grad: bool) -> Vec<bool> {
        let dense_curved = self.dense.curved_above(grad, 0);
        let mut reached: Vec<bool> = (0..self.layers.len())
            .map(|l| {
                let conv_curved = self.layers[l..].iter().any(|c| c.act != Activation::Relu);
                energy || dense_curved || (grad && conv_curved)
            })
            .collect();
        reached.extend(self.dense.biases_reached(energy, grad));
        reached
    }
}

impl GradField for HostConv {
    fn dim(&self) -> usize {
        self.image_len()
    }

    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch) {
        self.energy_grad(x, n, None, Some(out), scratch);
    }

    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch) {
        self.energy_grad(x, n, Some(out), None, scratch);
    }
}

impl ConvNet {
    /// The fused f32 host form of this network.
    pub fn host(&self) -> Result<HostConv> {
        HostConv::from_conv(self)
    }
}
