//! The parameter gradient of a loss L(V, ∇ₓV) for a [`HostMlp`], derived by hand and run on
//! fused f32 host kernels: the training-step counterpart of the sampling kernel, and the same
//! numbers burn's autodiff computes over the explicit ∇ₓV (tested against it).
//!
//! Notation (hidden layer l = 0..L−1): z_l = h_l W_l + b_l, h_{l+1} = a_l(z_l), h_0 = x;
//! o = h_L w + b_o, V = head(o). The input gradient is the backward chain
//! γ_L = head'(o)·w, δ_l = γ_{l+1} ⊙ a_l'(z_l), γ_l = δ_l W_lᵀ, ∇ₓV = γ_0.
//!
//! Given seeds ē = ∂L/∂V (per row) and Ḡ = ∂L/∂∇ₓV, reverse-mode through both chains:
//! - up the backward chain (Γ = ∂L/∂γ, starting at Ḡ): ∂W_l += Γᵀ δ_l, Δ_l = Γ W_l,
//!   Γ ← Δ_l ⊙ a_l', and z_l receives S_l = Δ_l ⊙ γ_{l+1} ⊙ a_l''(z_l);
//! - at the head: ∂w += Σ head'(o)·Γ, ∂o = ē·head'(o) + (Γ·w)·head''(o), ∂w += hᵀ∂o,
//!   ∂b_o = Σ ∂o, H = ∂o ⊗ w;
//! - down the forward chain: Z_l = H ⊙ a_l' + S_l, ∂W_l += h_lᵀ Z_l, ∂b_l = Σ Z_l,
//!   H ← Z_l W_lᵀ.

use std::ops::Range;

use rayon::prelude::*;

use super::host_mlp::{activate, dense_gemm_into, dot, gemm_into};
use super::HostMlp;
use crate::sampler::{GradField, Scratch};

/// A network whose training-step gradients are derived by hand and run on f32 host buffers,
/// one block of rows at a time: the forward and input-gradient passes are recorded per block
/// ([`FusedBackprop::record`]), then reverse mode through both gives ∂L/∂θ for a loss
/// L(V, ∇ₓV) ([`FusedBackprop::param_grads`]); training steps stream the blocks instead
/// ([`FusedBackprop::param_grads_streamed`]). Blocks have a fixed size (not per thread), so the
/// summation order, and hence every bit of the result, does not depend on the thread count.
pub trait FusedBackprop: GradField + Send + Sync {
    /// What the reverse sweep needs from one block.
    type Tape: RecordedBlock + Send + Sync;
    /// Rows per block (fixed for a network, whatever the thread count).
    fn block_rows(&self) -> usize;

    /// The forward and input-gradient passes over the `n` rows of `x` (one block).
    fn record_block(&self, x: &[f32], n: usize) -> Self::Tape;

    /// ∂L/∂θ of one block in canonical order; `None` for a parameter L does not depend on
    /// (autodiff reports no gradient for it).
    fn block_param_grads(
        &self,
        tape: &Self::Tape,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
    ) -> Vec<Option<Vec<f32>>>;

    /// Runs the forward and input-gradient passes over the `n` rows of `x`, on all threads.
    fn record(&self, x: &[f32], n: usize) -> Recording<Self::Tape> {
        let d = self.dim();
        let chunks = x[..n * d]
            .par_chunks(self.block_rows() * d)
            .map(|xc| self.record_block(xc, xc.len() / d))
            .collect();
        Recording { chunks }
    }

    /// Hands a block back once its gradients are taken, so that its buffers can serve the
    /// next [`FusedBackprop::record_block`] (the default just drops it).
    fn recycle_block(&self, block: Self::Tape) {
        drop(block);
    }

    /// Hands a block's gradients back once they are summed (`None` where there is none), so
    /// that their buffers can serve the next [`FusedBackprop::block_param_grads`] (the
    /// default just drops them).
    fn recycle_grads(&self, spent: Vec<Option<Vec<f32>>>) {
        drop(spent);
    }

    /// Hands every block of a recording back ([`FusedBackprop::recycle_block`]).
    fn recycle(&self, rec: Recording<Self::Tape>) {
        for block in rec.chunks {
            self.recycle_block(block);
        }
    }

    /// V of `n` rows, on all threads, keeping nothing for a reverse sweep.
    fn energies(&self, x: &[f32], n: usize) -> Vec<f32> {
        let d = self.dim();
        x[..n * d]
            .par_chunks(self.block_rows() * d)
            .flat_map_iter(|xc| {
                let rows = xc.len() / d;
                let mut e = vec![0.0; rows];
                self.energy(xc, rows, &mut e, &mut Scratch::default());
                e
            })
            .collect()
    }

    /// The forward pass over the `n` rows of `x` (one block), for a loss on V alone: what
    /// [`FusedBackprop::block_param_grads`] needs without `d_grad`. A network may skip the
    /// input-gradient pass here (then the block's `grad()` is empty); the default records
    /// both.
    fn record_energy_block(&self, x: &[f32], n: usize) -> Self::Tape {
        self.record_block(x, n)
    }

    /// ∂L/∂θ for a loss whose derivatives for each block of rows depend only on those rows'
    /// V and ∇ₓV: `seeds(rows, energy, grad)` gives (∂L/∂V, ∂L/∂∇ₓV) of the rows `rows`
    /// (`None`: L does not depend on it). Each block is recorded, swept and recycled at once,
    /// one per thread at a time, so memory holds a few blocks whatever the batch; the sum runs
    /// in block order, as in [`FusedBackprop::param_grads`]. Also gives every row's V and ∇ₓV.
    fn param_grads_streamed<S>(&self, x: &[f32], n: usize, seeds: S) -> Streamed
    where
        S: Fn(Range<usize>, &[f32], &[f32]) -> Seeds + Sync,
    {
        stream_blocks(self, x, n, Self::record_block, seeds)
    }

    /// ∂L/∂θ for a loss on V alone, given ∂L/∂V of every row (`d_energy`, `n` values): as
    /// [`FusedBackprop::param_grads_streamed`] with energy seeds only, on blocks recorded by
    /// [`FusedBackprop::record_energy_block`] (no input-gradient pass where the network skips
    /// it). The contrastive term's gradient.
    fn energy_param_grads_streamed(
        &self,
        x: &[f32],
        n: usize,
        d_energy: &[f32],
    ) -> Vec<Option<Vec<f32>>> {
        let seeds =
            |rows: Range<usize>, _: &[f32], _: &[f32]| (Some(d_energy[rows].to_vec()), None);
        stream_blocks(self, x, n, Self::record_energy_block, seeds).grads
    }

    /// ∂L/∂θ for a loss L whose derivatives with respect to the recorded energies
    /// (`d_energy`, one per row) and input gradients (`d_grad`, `len · dim`) are given; `None`
    /// means L does not depend on them. Flattened in the [`super::Model`] canonical order; a
    /// parameter is `None` when L does not depend on it (as autodiff reports it). Every block
    /// is held at once; [`FusedBackprop::param_grads_streamed`] holds a few.
    fn param_grads(
        &self,
        rec: &Recording<Self::Tape>,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
    ) -> Vec<Option<Vec<f32>>> {
        let mut offsets = Vec::with_capacity(rec.chunks.len());
        let mut at = 0;
        for c in &rec.chunks {
            offsets.push(at);
            at += c.rows();
        }
        let d = self.dim();
        let block_grads = |&(c, r0): &(&Self::Tape, usize)| {
            let rows = r0..r0 + c.rows();
            let de = d_energy.map(|e| &e[rows.clone()]);
            let dg = d_grad.map(|g| &g[rows.start * d..rows.end * d]);
            self.block_param_grads(c, de, dg)
        };
        let blocks: Vec<(&Self::Tape, usize)> = rec.chunks.iter().zip(offsets).collect();
        let mut total = Vec::new();
        in_order_groups(&blocks, block_grads, |p| {
            self.recycle_grads(add_grads(&mut total, p));
        });
        total
    }
}

/// The body of [`FusedBackprop::param_grads_streamed`], with the blocks recorded by `record`.
fn stream_blocks<N, S>(
    net: &N,
    x: &[f32],
    n: usize,
    record: fn(&N, &[f32], usize) -> N::Tape,
    seeds: S,
) -> Streamed
where
    N: FusedBackprop + ?Sized,
    S: Fn(Range<usize>, &[f32], &[f32]) -> Seeds + Sync,
{
    let d = net.dim();
    let starts: Vec<usize> = (0..n).step_by(net.block_rows()).collect();
    let sweep = |&r0: &usize| {
        let rows = r0..(r0 + net.block_rows()).min(n);
        let block = record(net, &x[r0 * d..rows.end * d], rows.len());
        let (de, dg) = seeds(rows, block.energy(), block.grad());
        let grads = net.block_param_grads(&block, de.as_deref(), dg.as_deref());
        let values = (block.energy().to_vec(), block.grad().to_vec());
        net.recycle_block(block);
        (grads, values)
    };
    let mut out = Streamed::default();
    in_order_groups(&starts, sweep, |(grads, (e, g))| {
        net.recycle_grads(add_grads(&mut out.grads, grads));
        out.energies.extend(e);
        out.input_grads.extend(g);
    });
    out
}

/// Runs `f` on every item, as many at once as there are threads (each result may hold a whole
/// gradient), and hands the results to `sink` in item order: sums made there have the same
/// bits on any number of threads.
fn in_order_groups<I: Sync, R: Send>(
    items: &[I],
    f: impl Fn(&I) -> R + Sync,
    mut sink: impl FnMut(R),
) {
    for group in items.chunks(rayon::current_num_threads().max(1)) {
        let results: Vec<R> = group.par_iter().map(&f).collect();
        results.into_iter().for_each(&mut sink);
    }
}

/// ∂L/∂V and ∂L/∂∇ₓV of some rows (`None`: L does not depend on it).
pub type Seeds = (Option<Vec<f32>>, Option<Vec<f32>>);

/// What [`FusedBackprop::param_grads_streamed`] gives.
#[derive(Default)]
pub struct Streamed {
    /// ∂L/∂θ in canonical order (`None` where L does not depend on a parameter).
    pub grads: Vec<Option<Vec<f32>>>,
    /// V of every row.
    pub energies: Vec<f32>,
    /// ∇ₓV of every row, row-major.
    pub input_grads: Vec<f32>,
}

/// Adds the gradients `p` into `total` (taking them over when `total` is empty); `None` is
/// no gradient. Returns the buffers of `p` that were added (not taken over), by parameter,
/// for reuse.
pub fn add_grads(
    total: &mut Vec<Option<Vec<f32>>>,
    p: Vec<Option<Vec<f32>>>,
) -> Vec<Option<Vec<f32>>> {
    if total.is_empty() {
        *total = p;
        return Vec::new();
    }
    let mut spent = Vec::with_capacity(total.len());
    for (t, g) in total.iter_mut().zip(p) {
        let (sum, used) = match (t.take(), g) {
            (Some(mut a), Some(g)) => {
                a.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                (Some(a), Some(g))
            }
            (a, g) => (a.or(g), None),
        };
        *t = sum;
        spent.push(used);
    }
    spent
}

/// The gradients of a network of weight–bias pairs (in canonical order), with `None` for the
/// biases not `reached` (one flag per pair).
pub(super) fn weights_and_biases(grads: Vec<Vec<f32>>, reached: &[bool]) -> Vec<Option<Vec<f32>>> {
    grads
        .into_iter()
        .enumerate()
        .map(|(k, g)| (k % 2 == 0 || reached[k / 2]).then_some(g))
        .collect()
}

/// The per-block results every [`FusedBackprop::Tape`] carries.
pub trait RecordedBlock {
    /// Rows in the block.
    fn rows(&self) -> usize;
    /// V of every row.
    fn energy(&self) -> &[f32];
    /// ∇ₓV of every row, row-major.
    fn grad(&self) -> &[f32];
}

/// A forward pass of a [`FusedBackprop`] network over a batch, block by block, keeping what
/// [`FusedBackprop::param_grads`] needs; also the batch's energies and input gradients.
pub struct Recording<T> {
    chunks: Vec<T>,
}

impl<T: RecordedBlock> Recording<T> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.rows()).sum()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// V of every row.
    pub fn energies(&self) -> Vec<f32> {
        self.chunks
            .iter()
            .flat_map(|c| c.energy().to_vec())
            .collect()
    }

    /// ∇ₓV of every row (`len · dim` values, row-major).
    pub fn grads(&self) -> Vec<f32> {
        self.chunks.iter().flat_map(|c| c.grad().to_vec()).collect()
    }
}

/// One block of rows of a [`HostMlp`] after the forward pass and the input-gradient pass
/// (opaque outside the crate).
pub struct ChunkTape {
    rows: usize,
    x: Vec<f32>,
    /// h_{l+1} for each hidden layer.
    acts: Vec<Vec<f32>>,
    /// a_l'(z_l).
    d1: Vec<Vec<f32>>,
    /// δ_l = γ_{l+1} ⊙ a_l'.
    delta: Vec<Vec<f32>>,
    /// γ_{l+1} ⊙ a_l''(z_l).
    curv: Vec<Vec<f32>>,
    /// head'(o), head''(o) per row.
    dv: Vec<f32>,
    ddv: Vec<f32>,
    energy: Vec<f32>,
    grad: Vec<f32>,
}

impl RecordedBlock for ChunkTape {
    fn rows(&self) -> usize {
        self.rows
    }

    fn energy(&self) -> &[f32] {
        &self.energy
    }

    fn grad(&self) -> &[f32] {
        &self.grad
    }
}

impl FusedBackprop for HostMlp {
    type Tape = ChunkTape;
    fn block_rows(&self) -> usize {
        64
    }

    fn record_block(&self, x: &[f32], n: usize) -> ChunkTape {
        self.record_chunk(x, n)
    }

    fn block_param_grads(
        &self,
        tape: &ChunkTape,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
    ) -> Vec<Option<Vec<f32>>> {
        let grads = self.chunk_backprop(tape, d_energy, d_grad, false).0;
        weights_and_biases(
            grads,
            &self.biases_reached(d_energy.is_some(), d_grad.is_some()),
        )
    }
}

impl HostMlp {
    /// A zero gradient for every parameter, in canonical order.
    pub(super) fn zero_grads(&self) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for layer in &self.hidden {
            out.push(vec![0.0; layer.fan_in * layer.fan_out]);
            out.push(vec![0.0; layer.fan_out]);
        }
        out.push(vec![0.0; self.out_w.len()]);
        out.push(vec![0.0]);
        out
    }

    /// Which biases a loss reaches (one per weight–bias pair), given whether it depends on V
    /// and on ∇ₓV: all through V; through ∇ₓV only via a curved head (the clamp) or a curved
    /// activation (a'' ≠ 0, not ReLU) at or above the layer.
    pub(super) fn biases_reached(&self, energy: bool, grad: bool) -> Vec<bool> {
        let mut reached = vec![energy || self.curved_above(grad, self.hidden.len())];
        for l in (0..self.hidden.len()).rev() {
            reached.push(energy || self.curved_above(grad, l));
        }
        reached.reverse();
        reached
    }
    /// (V, head'(o), head''(o)) of a raw output o: V = s·o, or c·tanh(s·o/c) with the clamp.
    pub(super) fn head(&self, o: f32) -> [f32; 3] {
        head_terms(o, self.scale, self.clamp)
    }

    pub(super) fn record_chunk(&self, x: &[f32], n: usize) -> ChunkTape {
        let layers = self.hidden.len();
        let mut acts: Vec<Vec<f32>> = Vec::with_capacity(layers);
        let (mut d1, mut d2) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for (l, layer) in self.hidden.iter().enumerate() {
            let input: &[f32] = if l == 0 { x } else { &acts[l - 1] };
            let mut a = vec![0.0; n * layer.fan_out];
            let mut da = vec![0.0; n * layer.fan_out];
            let mut dda = vec![0.0; n * layer.fan_out];
            dense_gemm_into(
                &mut a,
                (input, false),
                (&layer.w, false),
                n,
                layer.fan_in,
                layer.fan_out,
                false,
            );
            activate::<true>(&mut a, &mut da, &mut dda, &layer.b, layer.act);
            acts.push(a);
            d1.push(da);
            d2.push(dda);
        }
        let h_last: &[f32] = if layers == 0 { x } else { &acts[layers - 1] };
        let width = self.out_w.len();
        let (mut energy, mut dv, mut ddv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for (i, row) in h_last.chunks(width).take(n).enumerate() {
            let o = dot(row, &self.out_w) + self.out_b;
            [energy[i], dv[i], ddv[i]] = self.head(o);
        }
        // γ_L = head'(o) ⊗ w, then δ_l, curvature terms and γ_l down to the input
        let mut gamma: Vec<f32> = dv
            .iter()
            .flat_map(|&s| self.out_w.iter().map(move |w| s * w))
            .collect();
        let (mut delta, mut curv) = (vec![Vec::new(); layers], vec![Vec::new(); layers]);
        for l in (0..layers).rev() {
            let layer = &self.hidden[l];
            curv[l] = gamma.iter().zip(&d2[l]).map(|(g, e)| g * e).collect();
            delta[l] = gamma.iter().zip(&d1[l]).map(|(g, e)| g * e).collect();
            gamma = vec![0.0; n * layer.fan_in];
            dense_gemm_into(
                &mut gamma,
                (&delta[l], false),
                (&layer.w, true),
                n,
                layer.fan_out,
                layer.fan_in,
                false,
            );
        }
        ChunkTape {
            rows: n,
            x: x.to_vec(),
            acts,
            d1,
            delta,
            curv,
            dv,
            ddv,
            energy,
            grad: gamma,
        }
    }

    /// Whether ∇ₓV reaches hidden layer `l`'s pre-activation through a curved map (a'' ≠ 0):
    /// a curved activation at layer `l` or above, or the soft-clamped head (`l` = the number of
    /// hidden layers asks about the head alone).
    pub(super) fn curved_above(&self, grad: bool, l: usize) -> bool {
        grad && (self.clamp.is_some()
            || self.hidden[l..]
                .iter()
                .any(|layer| layer.act != super::Activation::Relu))
    }

    /// ∂L/∂θ of one block and, when `want_input`, ∂L/∂x (what a network feeding this one
    /// continues its reverse sweep with).
    pub(super) fn chunk_backprop(
        &self,
        c: &ChunkTape,
        d_energy: Option<&[f32]>,
        d_grad: Option<&[f32]>,
        want_input: bool,
    ) -> (Vec<Vec<f32>>, Option<Vec<f32>>) {
        let n = c.rows;
        let layers = self.hidden.len();
        let width = self.out_w.len();
        let mut grads = self.zero_grads();
        // up the backward chain: Γ from Ḡ to ∂L/∂γ_L, collecting S_l
        let mut second: Vec<Option<Vec<f32>>> = vec![None; layers];
        let mut big_gamma = d_grad.map(<[f32]>::to_vec);
        if let Some(gam) = big_gamma.as_mut() {
            for (l, layer) in self.hidden.iter().enumerate() {
                let (fi, fo) = (layer.fan_in, layer.fan_out);
                gemm_into(
                    &mut grads[2 * l],
                    (gam, true),
                    (&c.delta[l], false),
                    fi,
                    n,
                    fo,
                    true,
                );
                let mut up = vec![0.0; n * fo];
                dense_gemm_into(&mut up, (gam, false), (&layer.w, false), n, fi, fo, false);
                if layer.act != super::Activation::Relu {
                    second[l] = Some(up.iter().zip(&c.curv[l]).map(|(a, b)| a * b).collect());
                }
                up.iter_mut().zip(&c.d1[l]).for_each(|(a, b)| *a *= b);
                *gam = up;
            }
        }
        // the head
        let h_last: &[f32] = if layers == 0 {
            &c.x
        } else {
            &c.acts[layers - 1]
        };
        let mut d_out = vec![0.0f32; n];
        for i in 0..n {
            let mut v = d_energy.map_or(0.0, |e| e[i] * c.dv[i]);
            if let Some(gam) = &big_gamma {
                let gi = &gam[i * width..(i + 1) * width];
                grads[2 * layers]
                    .iter_mut()
                    .zip(gi)
                    .for_each(|(a, g)| *a += c.dv[i] * g);
                v += dot(gi, &self.out_w) * c.ddv[i];
            }
            d_out[i] = v;
        }
        gemm_into(
            &mut grads[2 * layers],
            (&d_out, true),
            (h_last, false),
            1,
            n,
            width,
            true,
        );
        grads[2 * layers + 1][0] = d_out.iter().sum();
        // down the forward chain
        let mut h_bar: Vec<f32> = d_out
            .iter()
            .flat_map(|&s| self.out_w.iter().map(move |w| s * w))
            .collect();
        for l in (0..layers).rev() {
            let layer = &self.hidden[l];
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let mut z: Vec<f32> = h_bar.iter().zip(&c.d1[l]).map(|(a, b)| a * b).collect();
            if let Some(s) = &second[l] {
                z.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            }
            let input: &[f32] = if l == 0 { &c.x } else { &c.acts[l - 1] };
            gemm_into(
                &mut grads[2 * l],
                (input, true),
                (&z, false),
                fi,
                n,
                fo,
                true,
            );
            for row in z.chunks(fo) {
                grads[2 * l + 1]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, b)| *a += b);
            }
            if l > 0 || want_input {
                h_bar = vec![0.0; n * fi];
                dense_gemm_into(&mut h_bar, (&z, false), (&layer.w, true), n, fo, fi, false);
            }
        }
        (grads, want_input.then_some(h_bar))
    }
}

/// (V, V'(o), V''(o)) of a raw output o under the output head: V = s·o, or c·tanh(s·o/c)
/// with the soft clamp c.
pub(super) fn head_terms(o: f32, s: f32, clamp: Option<f32>) -> [f32; 3] {
    match clamp {
        None => [s * o, s, 0.0],
        Some(c) => {
            let th = (s * o / c).tanh();
            let sech2 = 1.0 - th * th;
            [c * th, s * sech2, -2.0 * s * s * th * sech2 / c]
        }
    }
}

/// The fused host form of a model that has one.
pub enum Fused {
    /// An [`super::Mlp`]'s.
    Mlp(HostMlp),
    /// A [`super::ConvNet`]'s.
    Conv(super::HostConv),
    /// A [`super::UNetVit`]'s.
    UNetVit(Box<super::HostUNetVit>),
}

impl GradField for Fused {
    fn dim(&self) -> usize {
        match self {
            Fused::Mlp(h) => h.dim(),
            Fused::Conv(h) => h.dim(),
            Fused::UNetVit(h) => h.dim(),
        }
    }

    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut crate::sampler::Scratch) {
        match self {
            Fused::Mlp(h) => h.grad(x, n, out, scratch),
            Fused::Conv(h) => h.grad(x, n, out, scratch),
            Fused::UNetVit(h) => h.grad(x, n, out, scratch),
        }
    }

    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut crate::sampler::Scratch) {
        match self {
            Fused::Mlp(h) => h.energy(x, n, out, scratch),
            Fused::Conv(h) => h.energy(x, n, out, scratch),
            Fused::UNetVit(h) => h.energy(x, n, out, scratch),
        }
    }
}
