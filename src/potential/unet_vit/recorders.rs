//! The two recorders the [`UNetVit`] pass is written on, and its host form for samplers.
//!
//! [`Recorder`] is the op set of the network (convolutions, norms, attention's pieces). On
//! [`TensorRecorder`] the pass is a [`Tape`] of burn tensor ops whose ∇ₓV is differentiable
//! again by autodiff (training on a GPU); on [`HostRecorder`] it is a [`HostTape`] of fused f32
//! kernels, which [`HostUNetVit`] runs on the CPU: for V and ∇ₓV (samplers, Langevin
//! negatives) and for the parameter gradient of a training loss (reverse over forward mode).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use super::{Conv, Linear, Norm, UNetVit};
use crate::backend::to_f32_vec;
use crate::potential::host_backprop::head_terms;
use crate::potential::host_tape::{
    Affine, Buffers, HostParams, HostTape, HostVar, ParamGrads, ParamStore,
};
use crate::potential::tape::{Tape, Var};
use crate::potential::{Activation, Potential};
use crate::potential::{FusedBackprop, RecordedBlock};
use crate::sampler::{GradField, Scratch};

/// The ops of the UNet → ViT pass, with parameters named by their index in the network.
pub(super) trait Recorder {
    /// A recorded value.
    type Var: Clone;
    /// Its shape.
    fn dims(v: &Self::Var) -> [usize; 4];
    /// A convolution (weight, bias, kernel, stride and padding from `c`).
    fn conv(&mut self, x: &Self::Var, c: &Conv) -> Self::Var;
    /// A linear map on the last axis.
    fn linear(&mut self, x: &Self::Var, l: &Linear) -> Self::Var;
    /// GroupNorm of images (`groups > 0`) or LayerNorm of tokens, with its affine map.
    fn norm(&mut self, x: &Self::Var, n: &Norm) -> Self::Var;
    /// x + parameter `index` broadcast from `shape`.
    fn shift(&mut self, x: &Self::Var, index: usize, shape: [usize; 4]) -> Self::Var;
    fn activation(&mut self, x: &Self::Var, act: Activation) -> Self::Var;
    fn add(&mut self, a: &Self::Var, b: &Self::Var) -> Self::Var;
    fn scale(&mut self, x: &Self::Var, s: f64) -> Self::Var;
    fn cat_channels(&mut self, a: &Self::Var, b: &Self::Var) -> Self::Var;
    fn upsample2x(&mut self, x: &Self::Var) -> Self::Var;
    fn reshape(&mut self, x: &Self::Var, shape: [usize; 4]) -> Self::Var;
    fn swap_dims(&mut self, x: &Self::Var, d1: usize, d2: usize) -> Self::Var;
    fn matmul(&mut self, a: &Self::Var, b: &Self::Var) -> Self::Var;
    fn softmax(&mut self, x: &Self::Var) -> Self::Var;
}

/// Rows standardised together and the shape of the affine parameters, for a norm of a value
/// of shape `[b, c, h, w]`.
fn norm_layout(n: &Norm, [b, c, h, w]: [usize; 4]) -> (usize, [usize; 4]) {
    if n.groups > 0 {
        (b * n.groups, [1, c, 1, 1])
    } else {
        (b * c * h, [1, 1, 1, w])
    }
}

/// The pass on a burn [`Tape`], with the network's tensor parameters.
pub(super) struct TensorRecorder<'a> {
    pub tape: Tape,
    pub net: &'a UNetVit,
}

impl Recorder for TensorRecorder<'_> {
    type Var = Var;

    fn dims(v: &Var) -> [usize; 4] {
        v.dims()
    }

    fn conv(&mut self, x: &Var, c: &Conv) -> Var {
        let w = self.net.param(c.weight, [c.c_out, c.c_in, c.k, c.k]);
        let b = self.net.params[c.bias].clone();
        self.tape.conv2d(x, w, Some(b), c.stride, c.padding)
    }

    fn linear(&mut self, x: &Var, l: &Linear) -> Var {
        let w = self.net.param(l.weight, [l.d_in, l.d_out]);
        self.tape
            .linear(x, w, Some(self.net.params[l.bias].clone()))
    }

    fn norm(&mut self, x: &Var, n: &Norm) -> Var {
        let (rows, affine) = norm_layout(n, x.dims());
        let s = self.tape.standardize(x, rows);
        let gamma = self.net.param(n.gamma, affine);
        let beta = self.net.param(n.beta, affine);
        self.tape.scale_shift(&s, Some(gamma), beta)
    }

    fn shift(&mut self, x: &Var, index: usize, shape: [usize; 4]) -> Var {
        self.tape.scale_shift(x, None, self.net.param(index, shape))
    }

    fn activation(&mut self, x: &Var, act: Activation) -> Var {
        self.tape.activation(x, act)
    }

    fn add(&mut self, a: &Var, b: &Var) -> Var {
        self.tape.add(a, b)
    }

    fn scale(&mut self, x: &Var, s: f64) -> Var {
        self.tape.scale(x, s)
    }

    fn cat_channels(&mut self, a: &Var, b: &Var) -> Var {
        self.tape.cat_channels(a, b)
    }

    fn upsample2x(&mut self, x: &Var) -> Var {
        self.tape.upsample2x(x)
    }

    fn reshape(&mut self, x: &Var, shape: [usize; 4]) -> Var {
        self.tape.reshape(x, shape)
    }

    fn swap_dims(&mut self, x: &Var, d1: usize, d2: usize) -> Var {
        self.tape.swap_dims(x, d1, d2)
    }

    fn matmul(&mut self, a: &Var, b: &Var) -> Var {
        self.tape.matmul(a, b)
    }

    fn softmax(&mut self, x: &Var) -> Var {
        self.tape.softmax(x)
    }
}

/// The pass on a [`HostTape`] (whose parameters are f32 copies of the network's).
struct HostRecorder {
    tape: HostTape,
}

impl Recorder for HostRecorder {
    type Var = HostVar;

    fn dims(v: &HostVar) -> [usize; 4] {
        v.dims()
    }

    fn conv(&mut self, x: &HostVar, c: &Conv) -> HostVar {
        self.tape
            .conv2d(x, (c.weight, c.bias), (c.k, c.stride, c.padding))
    }

    fn linear(&mut self, x: &HostVar, l: &Linear) -> HostVar {
        self.tape.linear(x, (l.weight, l.bias))
    }

    fn norm(&mut self, x: &HostVar, n: &Norm) -> HostVar {
        let (rows, shape) = norm_layout(n, x.dims());
        let s = self.tape.standardize(x, rows);
        let (gamma, beta) = (
            Affine {
                index: n.gamma,
                shape,
            },
            Affine {
                index: n.beta,
                shape,
            },
        );
        self.tape.scale_shift(&s, Some(gamma), beta)
    }

    fn shift(&mut self, x: &HostVar, index: usize, shape: [usize; 4]) -> HostVar {
        self.tape.scale_shift(x, None, Affine { index, shape })
    }

    fn activation(&mut self, x: &HostVar, act: Activation) -> HostVar {
        self.tape.activation(x, act)
    }

    fn add(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        self.tape.add(a, b)
    }

    fn scale(&mut self, x: &HostVar, s: f64) -> HostVar {
        self.tape.scale(x, s)
    }

    fn cat_channels(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        self.tape.cat_channels(a, b)
    }

    fn upsample2x(&mut self, x: &HostVar) -> HostVar {
        self.tape.upsample2x(x)
    }

    fn reshape(&mut self, x: &HostVar, shape: [usize; 4]) -> HostVar {
        self.tape.reshape(x, shape)
    }

    fn swap_dims(&mut self, x: &HostVar, d1: usize, d2: usize) -> HostVar {
        self.tape.swap_dims(x, d1, d2)
    }

    fn matmul(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        self.tape.matmul(a, b)
    }

    fn softmax(&mut self, x: &HostVar) -> HostVar {
        self.tape.softmax(x)
    }
}

/// Images per host pass on maps of at most [`SMALL_MAP`] pixels (bigger blocks make better
/// gemm shapes on small maps); one image per pass on bigger maps, whose gemms are big enough
/// alone and whose training steps then spread over threads even at small batches.
const HOST_BLOCK: usize = 4;

/// The largest input map (pixels) that gets [`HOST_BLOCK`] images per pass.
const SMALL_MAP: usize = 28 * 28;

thread_local! {
    /// Work buffers of the passes run on this thread.
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Buffers of recorded blocks whose training step is done, for the next step's blocks.
static SPARE_BUFFERS: Mutex<Vec<Buffers>> = Mutex::new(Vec::new());

/// Most buffer sets kept for reuse (training steps stream their blocks, a few at a time).
const MAX_SPARE_BUFFERS: usize = 16;

/// Spent block gradients (one buffer per parameter, by index), reused by the next blocks'
/// sweeps — also those of the next training steps, whose `HostUNetVit` is new (a fresh
/// gradient of the CIFAR-10 network is 188 MB of page faults): at most one set per thread. A
/// set of another network's shapes is only capacity (`ParamGrads` resizes what it reuses).
static SPARE_GRADS: Mutex<Vec<Vec<Option<Vec<f32>>>>> = Mutex::new(Vec::new());

/// The f32 host form of a [`UNetVit`]: V and ∇ₓV on host-tape kernels (samplers, Langevin
/// chains), and the parameter gradient of a training loss on them by reverse mode over
/// forward mode ([`FusedBackprop`]), with no autodiff. Each image is computed on its own (the
/// network mixes nothing across the batch), so results do not depend on how rows are split
/// into calls.
pub struct HostUNetVit {
    /// The architecture (its tensor parameters left out).
    net: UNetVit,
    params: HostParams,
    /// Images per pass.
    block: usize,
}

/// One block of images recorded for a training step: the tape of its pass, V and ∇ₓV.
pub struct UNetVitBlock {
    /// Locked only by the one thread that sweeps the block.
    tape: Mutex<HostTape>,
    input: HostVar,
    out: HostVar,
    energy: Vec<f32>,
    grad: Vec<f32>,
}

impl RecordedBlock for UNetVitBlock {
    fn rows(&self) -> usize {
        self.energy.len()
    }

    fn energy(&self) -> &[f32] {
        &self.energy
    }

    fn grad(&self) -> &[f32] {
        &self.grad
    }
}

impl HostUNetVit {
    /// f32 copies of the parameters of `net` (any precision).
    pub fn new(net: &UNetVit) -> Self {
        let params: Vec<Vec<f32>> = net.params.iter().cloned().map(to_f32_vec).collect();
        let skeleton = UNetVit {
            config: net.config.clone(),
            output_scale: net.output_scale,
            energy_clamp: net.energy_clamp,
            plan: net.plan.clone(),
            names: net.names.clone(),
            shapes: net.shapes.clone(),
            params: Vec::new(),
        };
        let s = net.config.image;
        let block = if s.height * s.width <= SMALL_MAP {
            HOST_BLOCK
        } else {
            1
        };
        Self {
            net: skeleton,
            params: Arc::new(ParamStore::new(params)),
            block,
        }
    }

    /// The head's scale and clamp in f32.
    fn head(&self) -> (f32, Option<f32>) {
        let clamp = self.net.energy_clamp.map(|c| c as f32);
        (self.net.output_scale as f32, clamp)
    }

    /// Records the pass over the `rows` images in `x` on `tape`, then ∇ₓV when `grad` is asked
    /// for: (input, per-patch raw energies, V per image, ∇ₓV).
    fn run(
        &self,
        t: &mut HostRecorder,
        x: &[f32],
        rows: usize,
        grad: bool,
    ) -> (HostVar, HostVar, Vec<f32>, Option<Vec<f32>>) {
        let s = self.net.config.image;
        let input = t.tape.input(x, [rows, s.channels, s.height, s.width]);
        let out = self.net.pass(t, &input);
        // V = Σ_patches head(o): seed ∂V/∂o = head'(o)
        let (scale, clamp) = self.head();
        let raw = t.tape.value(&out);
        let patches = raw.len() / rows;
        let mut seed = vec![0.0f32; raw.len()];
        let mut energy = vec![0.0f32; rows];
        for ((o, sd), e) in raw
            .chunks(patches)
            .zip(seed.chunks_mut(patches))
            .zip(&mut energy)
        {
            for (&o, sd) in o.iter().zip(sd) {
                let [value, slope, _] = head_terms(o, scale, clamp);
                *e += value;
                *sd = slope;
            }
        }
        let g = grad.then(|| t.tape.gradient(&out, &seed, &input));
        (input, out, energy, g)
    }

    /// V (when `energy` is given) and ∇ₓV (when `grad` is) of `n` rows, `block` images per
    /// pass.
    fn energy_grad(
        &self,
        x: &[f32],
        n: usize,
        mut energy: Option<&mut [f32]>,
        mut grad: Option<&mut [f32]>,
    ) {
        let d = self.net.config.image.numel();
        for start in (0..n).step_by(self.block) {
            let rows = self.block.min(n - start);
            let tape = HostTape::new(self.params.clone(), false, BUFFERS.take());
            let mut t = HostRecorder { tape };
            let xs = &x[start * d..(start + rows) * d];
            let (_, _, e, g) = self.run(&mut t, xs, rows, grad.is_some());
            if let Some(out) = energy.as_deref_mut() {
                out[start..start + rows].copy_from_slice(&e);
            }
            if let (Some(out), Some(g)) = (grad.as_deref_mut(), g) {
                out[start * d..(start + rows) * d].copy_from_slice(&g);
            }
            BUFFERS.set(t.tape.into_buffers());
        }
    }
}

impl HostUNetVit {
    /// A block's recording: the forward pass, and the input-gradient pass when `grad` (else
    /// the block's `grad()` is empty).
    fn record_with(&self, x: &[f32], n: usize, grad: bool) -> UNetVitBlock {
        let spare = SPARE_BUFFERS.lock().ok().and_then(|mut pool| pool.pop());
        let tape = HostTape::new(self.params.clone(), true, spare.unwrap_or_default());
        let mut t = HostRecorder { tape };
        let (input, out, energy, grad) = self.run(&mut t, x, n, grad);
        UNetVitBlock {
            tape: Mutex::new(t.tape),
            input,
            out,
            energy,
            grad: grad.unwrap_or_default(),
        }
    }
}

impl FusedBackprop for HostUNetVit {
    type Tape = UNetVitBlock;
    fn block_rows(&self) -> usize {
        self.block
    }

    fn record_block(&self, x: &[f32], n: usize) -> UNetVitBlock {
        self.record_with(x, n, true)
    }

    /// The forward pass alone: the sweep of a loss on V reads no input-gradient values.
    fn record_energy_block(&self, x: &[f32], n: usize) -> UNetVitBlock {
        self.record_with(x, n, false)
    }

    fn block_param_grads(
        &self,
        block: &UNetVitBlock,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
    ) -> Vec<Option<Vec<f32>>> {
        let mut tape = block.tape.lock().unwrap_or_else(|e| e.into_inner());
        // the sweep's temporaries come from this thread's buffers, not the block's
        let own = tape.swap_buffers(BUFFERS.take());
        let t = tape.tangents(&block.input, d_grad);
        // J = Σ_rows ē·V + ⟨Ḡ, ∇ₓV⟩ with V = Σ_patches head(o) and ⟨Ḡ, ∇ₓV⟩ = Σ head'(o)·ȯ:
        // ∂J/∂o = ē·head'(o) + head''(o)·ȯ, ∂J/∂ȯ = head'(o)
        let (scale, clamp) = self.head();
        let raw = tape.value(&block.out);
        let patches = raw.len() / block.rows();
        let terms: Vec<[f32; 3]> = raw.iter().map(|&o| head_terms(o, scale, clamp)).collect();
        let curved = clamp.is_some() && d_grad.is_some();
        let seed = (d_energy.is_some() || curved).then(|| {
            let tangent = t.of(&block.out);
            (0..raw.len())
                .map(|i| {
                    let [_, slope, curv] = terms[i];
                    let e = d_energy.map_or(0.0, |e| e[i / patches] * slope);
                    e + tangent.map_or(0.0, |t| curv * t[i])
                })
                .collect::<Vec<f32>>()
        });
        let tangent_seed = d_grad.is_some().then(|| {
            terms
                .iter()
                .map(|[_, slope, _]| *slope)
                .collect::<Vec<f32>>()
        });
        let spares = SPARE_GRADS.lock().ok().and_then(|mut pool| pool.pop());
        let mut grads = ParamGrads::new(self.params.len(), spares.unwrap_or_default());
        tape.param_gradient(
            (&block.input, &block.out),
            &t,
            (seed.as_deref(), tangent_seed.as_deref()),
            &mut grads,
        );
        tape.give_tangents(t);
        BUFFERS.set(tape.swap_buffers(own));
        grads.into_grads()
    }

    fn recycle_grads(&self, spent: Vec<Option<Vec<f32>>>) {
        // a set without a buffer (the block whose gradients became the total) is no spare
        if spent.iter().all(Option::is_none) {
            return;
        }
        if let Ok(mut pool) = SPARE_GRADS.lock() {
            if pool.len() < rayon::current_num_threads().max(1) {
                pool.push(spent);
            }
        }
    }

    /// Keeps the block's buffers (up to `MAX_SPARE_BUFFERS`) for the next recordings.
    fn recycle_block(&self, block: UNetVitBlock) {
        if let Ok(mut pool) = SPARE_BUFFERS.lock() {
            if pool.len() < MAX_SPARE_BUFFERS {
                let tape = block.tape.into_inner().unwrap_or_else(|e| e.into_inner());
                pool.push(tape.into_buffers());
            }
        }
    }
}

impl GradField for HostUNetVit {
    fn dim(&self) -> usize {
        self.net.dim()
    }

    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
        self.energy_grad(x, n, None, Some(out));
    }

    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
        self.energy_grad(x, n, Some(out), None);
    }
}
