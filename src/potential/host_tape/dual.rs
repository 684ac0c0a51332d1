//! The parameter gradient of a training loss on a recorded [`HostTape`], by reverse mode over
//! forward mode.
//!
//! A loss L(V, ∇ₓV) has ∂L/∂θ = ∂/∂θ [ē·V + ⟨Ḡ, ∇ₓV⟩] with the seeds ē = ∂L/∂V and
//! Ḡ = ∂L/∂∇ₓV held fixed, and ⟨Ḡ, ∇ₓV⟩ = V̇ is the tangent of V along Ḡ. So a forward-mode
//! sweep carries tangents v̇ (the directional derivative of every value along Ḡ,
//! [`HostTape::tangents`]), and one reverse sweep over the pairs (v, v̇) — adjoints v̄ of the
//! values and v̇̄ of the tangents — gives ∂θ ([`HostTape::param_gradient`]). Per op y = f(x):
//! - linear maps with parameters (convolution, linear: y = Wx + b, ẏ = Wẋ): x̄ = Wᵀȳ,
//!   ẋ̄ = Wᵀẏ̄, ∂W += ȳxᵀ + ẏ̄ẋᵀ, ∂b += Σȳ; a broadcast scale and shift likewise;
//! - activations (ẏ = a'ẋ): x̄ = a'ȳ + a''ẋẏ̄, ẋ̄ = a'ẏ̄;
//! - products (ẏ = ȦB + AḂ): Ā = ȳBᵀ + ẏ̄Ḃᵀ, Ǡ = ẏ̄Bᵀ, and the same for B;
//! - the standardisation and the softmax (ẏ = J(x)ẋ with J symmetric): ẋ̄ = Jẏ̄ and
//!   x̄ = Jȳ + ∂⟨ẏ̄, J(x)ẋ⟩/∂x (derived per op below);
//! - moves (concatenation, up-sampling, axis swaps, scales, sums): the same linear map on both.
//!
//! An adjoint is `None` until something reaches it, so a parameter the loss does not depend
//! on (e.g. the energy head's bias under a loss on ∇ₓV alone) gets no gradient, as autodiff
//! reports it.

use std::sync::Arc;

use super::{
    broadcast_base, for_each_row, gemm_into, permute, softmax_jacobian, split,
    standardize_jacobian, upsample, upsample_adjoint, Affine, Buffers, ConvGeom, HostTape, HostVar,
    Op,
};
use crate::potential::host_mlp::add_nt_product;
use crate::potential::host_ops::{lane_dot, lane_sum};
use crate::potential::host_winograd;

/// The tangent of every recorded value (`None` where it does not depend on the input).
pub(crate) struct Tangents(Vec<Option<Vec<f32>>>);

impl Tangents {
    /// The tangent of `v` (zeros' stand-in `None` when `v` does not depend on the input).
    pub fn of(&self, v: &HostVar) -> Option<&[f32]> {
        self.0.get(v.id)?.as_deref()
    }
}

/// The adjoints of one value's reverse step: (input slot, adjoint of the value, adjoint of
/// its tangent).
type Adjoints = Vec<(usize, Option<Vec<f32>>, Option<Vec<f32>>)>;

impl HostTape {
    /// The tangents of every value recorded after `input` along the direction `dir` of the
    /// input (same size as it); none at all without a direction.
    pub fn tangents(&mut self, input: &HostVar, dir: Option<&[f32]>) -> Tangents {
        let mut t: Vec<Option<Vec<f32>>> = (0..self.values.len()).map(|_| None).collect();
        if let Some(dir) = dir {
            t[input.id] = Some(self.copy(dir));
            for id in input.id + 1..self.values.len() {
                t[id] = self.tangent(id, &t);
            }
        }
        Tangents(t)
    }

    /// Hands the tangents' buffers back.
    pub fn give_tangents(&mut self, t: Tangents) {
        for v in t.0.into_iter().flatten() {
            self.buffers.give(v);
        }
    }

    /// The tangent of value `id` from those of its inputs.
    fn tangent(&mut self, id: usize, t: &[Option<Vec<f32>>]) -> Option<Vec<f32>> {
        let len = self.values[id].len();
        let params = Arc::clone(&self.params);
        let unary = |x: usize| t[x].as_deref();
        match &self.ops[id] {
            Op::Input => None,
            &Op::Conv {
                x, geom, weight, ..
            } => {
                let tx = unary(x)?;
                let n = tx.len() / (geom.c_in * geom.plane_in());
                let kernel = params.kernel(weight, &geom, false);
                Some(self.conv_map(&geom, (kernel, None), tx, n))
            }
            Op::Act { x, deriv, .. } => Some(self.buffers.product(unary(*x)?, deriv)),
            &Op::Add(a, b) => match (unary(a), unary(b)) {
                (None, None) => None,
                (Some(v), None) | (None, Some(v)) => Some(self.copy(v)),
                (Some(ta), Some(tb)) => {
                    let mut y = self.buffers.take(len);
                    for ((y, a), b) in y.iter_mut().zip(ta).zip(tb) {
                        *y = a + b;
                    }
                    Some(y)
                }
            },
            &Op::Scale { x, s } => Some(self.scaled(unary(x)?, s)),
            &Op::ScaleShift { x, dims, gamma, .. } => {
                Some(self.times_gamma(unary(x)?, dims, gamma))
            }
            &Op::Cat { a, b, per_a, per_b } => {
                if unary(a).is_none() && unary(b).is_none() {
                    return None;
                }
                let n = len / (per_a + per_b);
                let ta = self.copy_or_zeros(unary(a), n * per_a);
                let tb = self.copy_or_zeros(unary(b), n * per_b);
                let mut y = self.buffers.take(len);
                super::cat(&ta, &tb, (per_a, per_b), &mut y);
                self.buffers.give(ta);
                self.buffers.give(tb);
                Some(y)
            }
            &Op::Up { x, dims } => {
                let mut y = self.buffers.take(len);
                upsample(unary(x)?, (dims[2], dims[3]), &mut y);
                Some(y)
            }
            &Op::Swap { x, dims, d1, d2 } => {
                let mut x_dims = dims;
                x_dims.swap(d1, d2);
                let mut y = self.buffers.take(len);
                permute(unary(x)?, x_dims, d1, d2, &mut y);
                Some(y)
            }
            Op::Standardize { x, r, .. } => {
                let mut y = self.buffers.take(len);
                standardize_jacobian(unary(*x)?, &self.values[id], r, &mut y);
                Some(y)
            }
            &Op::Linear {
                x,
                weight,
                d_in,
                d_out,
                ..
            } => {
                let tx = unary(x)?;
                let rows = tx.len() / d_in;
                let mut y = self.buffers.take(len);
                let w = &params[weight];
                gemm_into(&mut y, (tx, false), (w, false), rows, d_in, d_out, false);
                Some(y)
            }
            &Op::Matmul { a, b, shape } => {
                let (ta, tb) = (unary(a), unary(b));
                if ta.is_none() && tb.is_none() {
                    return None;
                }
                let mut y = self.buffers.zeros(len);
                let [bh, n, k, m] = shape;
                let (va, vb) = (&self.values[a], &self.values[b]);
                for i in 0..bh {
                    let out = &mut y[i * n * m..][..n * m];
                    let (ai, bi) = (&va[i * n * k..][..n * k], &vb[i * k * m..][..k * m]);
                    if let Some(ta) = ta {
                        let ta = &ta[i * n * k..][..n * k];
                        gemm_into(out, (ta, false), (bi, false), n, k, m, true);
                    }
                    if let Some(tb) = tb {
                        let tb = &tb[i * k * m..][..k * m];
                        gemm_into(out, (ai, false), (tb, false), n, k, m, true);
                    }
                }
                Some(y)
            }
            &Op::Softmax { x, width } => {
                let mut y = self.buffers.take(len);
                softmax_jacobian(unary(x)?, &self.values[id], width, &mut y);
                Some(y)
            }
        }
    }

    /// Adds ∂J/∂θ into `grads` (one entry per parameter, `None` until reached) for
    /// J = Σ `seed` ⊙ out + Σ `tangent_seed` ⊙ ȯ, where ȯ is the tangent of `out` in `t`
    /// (from [`HostTape::tangents`]; `tangent_seed` needs it). Values before `input` are not
    /// visited.
    pub fn param_gradient(
        &mut self,
        (input, out): (&HostVar, &HostVar),
        t: &Tangents,
        (seed, tangent_seed): (Option<&[f32]>, Option<&[f32]>),
        grads: &mut ParamGrads,
    ) {
        let n = out.id + 1;
        let mut bar: Vec<Option<Vec<f32>>> = (0..n).map(|_| None).collect();
        let mut tbar: Vec<Option<Vec<f32>>> = (0..n).map(|_| None).collect();
        bar[out.id] = seed.map(|s| self.copy(s));
        tbar[out.id] = tangent_seed.map(|s| self.copy(s));
        for id in (input.id + 1..n).rev() {
            let (yb, tb) = (bar[id].take(), tbar[id].take());
            if yb.is_none() && tb.is_none() {
                continue;
            }
            let adjoints = self.dual_step(id, &t.0, (yb.as_deref(), tb.as_deref()), grads);
            for (slot, xb, xtb) in adjoints {
                self.accumulate(&mut bar[slot], xb);
                // a tangent's adjoint only matters where there is a tangent
                match t.0[slot] {
                    Some(_) => self.accumulate(&mut tbar[slot], xtb),
                    None => self.give_opt(xtb),
                }
            }
            self.give_opt(yb);
            self.give_opt(tb);
        }
        for v in bar.into_iter().chain(tbar).flatten() {
            self.buffers.give(v);
        }
    }

    /// The reverse step of value `id` over the pair (value, tangent) for their adjoints
    /// (ȳ, ẏ̄): adds to the parameters' gradients and returns the inputs' adjoints.
    fn dual_step(
        &mut self,
        id: usize,
        t: &[Option<Vec<f32>>],
        (yb, tb): (Option<&[f32]>, Option<&[f32]>),
        grads: &mut ParamGrads,
    ) -> Adjoints {
        let params = Arc::clone(&self.params);
        match &self.ops[id] {
            Op::Input => vec![],
            &Op::Conv {
                x,
                geom,
                weight,
                bias,
            } => {
                if let Some(yb) = yb {
                    let gb = grads.slot(bias, params[bias].len());
                    for (c, gc) in yb.chunks(geom.plane_out()).enumerate() {
                        gb[c % geom.c_out] += lane_sum(gc);
                    }
                }
                let xb = yb
                    .map(|g| self.with_value(x, |t, v| t.conv_adjoint(&geom, weight, g, v, grads)));
                let xtb = tb
                    .zip(t[x].as_deref())
                    .map(|(g, tx)| self.conv_adjoint(&geom, weight, g, tx, grads));
                vec![(x, xb, xtb)]
            }
            Op::Act { x, deriv, deriv2 } => {
                let tx = t[*x].as_deref();
                let xb = match (yb, tb.zip(tx)) {
                    (None, None) => None,
                    (yb, curv) => {
                        let mut g = self.buffers.zeros(deriv.len());
                        if let Some(yb) = yb {
                            for ((g, y), d) in g.iter_mut().zip(yb).zip(deriv) {
                                *g = y * d;
                            }
                        }
                        if let Some((tb, tx)) = curv {
                            for (((g, tb), tx), d2) in g.iter_mut().zip(tb).zip(tx).zip(deriv2) {
                                *g += tb * tx * d2;
                            }
                        }
                        Some(g)
                    }
                };
                let xtb = tb.map(|tb| self.buffers.product(tb, deriv));
                vec![(*x, xb, xtb)]
            }
            &Op::Add(a, b) => vec![
                (a, yb.map(|v| self.copy(v)), tb.map(|v| self.copy(v))),
                (b, yb.map(|v| self.copy(v)), tb.map(|v| self.copy(v))),
            ],
            &Op::Scale { x, s } => {
                vec![(
                    x,
                    yb.map(|v| self.scaled(v, s)),
                    tb.map(|v| self.scaled(v, s)),
                )]
            }
            &Op::ScaleShift {
                x,
                dims,
                gamma,
                beta,
            } => {
                if let Some(g) = gamma {
                    let gg = grads.slot(g.index, params[g.index].len());
                    if let Some(yb) = yb {
                        reduce_product(yb, &self.values[x], dims, g, gg);
                    }
                    if let Some((tb, tx)) = tb.zip(t[x].as_deref()) {
                        reduce_product(tb, tx, dims, g, gg);
                    }
                }
                if let Some(yb) = yb {
                    let gb = grads.slot(beta.index, params[beta.index].len());
                    reduce_product(yb, &[], dims, beta, gb);
                }
                let xb = yb.map(|v| self.times_gamma(v, dims, gamma));
                let xtb = tb.map(|v| self.times_gamma(v, dims, gamma));
                vec![(x, xb, xtb)]
            }
            &Op::Cat { a, b, per_a, per_b } => {
                let mut halves = |g: Option<&[f32]>| match g {
                    None => (None, None),
                    Some(g) => {
                        let n = g.len() / (per_a + per_b);
                        let (mut ga, mut gb) =
                            (self.buffers.take(n * per_a), self.buffers.take(n * per_b));
                        split(g, (per_a, per_b), &mut ga, &mut gb);
                        (Some(ga), Some(gb))
                    }
                };
                let ((ya, yb2), (ta, tb2)) = (halves(yb), halves(tb));
                vec![(a, ya, ta), (b, yb2, tb2)]
            }
            &Op::Up { x, dims } => {
                let len: usize = dims.iter().product();
                let mut down = |g: Option<&[f32]>| {
                    g.map(|g| {
                        let mut out = self.buffers.take(len);
                        upsample_adjoint(g, (dims[2], dims[3]), &mut out);
                        out
                    })
                };
                vec![(x, down(yb), down(tb))]
            }
            &Op::Swap { x, dims, d1, d2 } => {
                let mut back = |g: Option<&[f32]>| {
                    g.map(|g| {
                        let mut out = self.buffers.take(g.len());
                        permute(g, dims, d1, d2, &mut out);
                        out
                    })
                };
                vec![(x, back(yb), back(tb))]
            }
            Op::Standardize { x, r, .. } => {
                let x = *x;
                let xhat = &self.values[id];
                let buffers = &mut self.buffers;
                let mut jacobian = |g: Option<&[f32]>| {
                    g.map(|g| {
                        let mut out = buffers.take(g.len());
                        standardize_jacobian(g, xhat, r, &mut out);
                        out
                    })
                };
                let (mut xb, xtb) = (jacobian(yb), jacobian(tb));
                if let (Some(tb), Some(xtb)) = (tb, &xtb) {
                    let (tx, ty) = (t[x].as_deref(), t[id].as_deref());
                    let (tx, ty) = (tx.expect("a tangent"), ty.expect("a tangent"));
                    let acc = xb.get_or_insert_with(|| self.buffers.zeros(tb.len()));
                    standardize_curvature([tb, xhat, ty, tx, xtb], r, acc);
                }
                vec![(x, xb, xtb)]
            }
            &Op::Linear {
                x,
                weight,
                bias,
                d_in,
                d_out,
            } => {
                if let Some(yb) = yb {
                    let gb = grads.slot(bias, params[bias].len());
                    for row in yb.chunks(d_out) {
                        gb.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                    }
                }
                let w = &params[weight];
                let mut adjoint = |g: Option<&[f32]>, v: Option<&[f32]>| {
                    let (g, v) = (g?, v?);
                    let rows = g.len() / d_out;
                    let gw = grads.slot(weight, params[weight].len());
                    gemm_into(gw, (v, true), (g, false), d_in, rows, d_out, true);
                    let mut gx = self.buffers.take(rows * d_in);
                    gemm_into(&mut gx, (g, false), (w, true), rows, d_out, d_in, false);
                    Some(gx)
                };
                let xb = adjoint(yb, Some(&self.values[x]));
                let xtb = adjoint(tb, t[x].as_deref());
                vec![(x, xb, xtb)]
            }
            &Op::Matmul { a, b, shape } => self.matmul_dual((a, b), shape, t, (yb, tb)),
            &Op::Softmax { x, width } => {
                let y = &self.values[id];
                let xtb = tb.map(|g| {
                    let mut out = self.buffers.take(g.len());
                    softmax_jacobian(g, y, width, &mut out);
                    out
                });
                // x̄ = J(ȳ + w), w = ẏ̄ ⊙ (ẋ − ⟨y, ẋ⟩) − ⟨ẏ̄, y⟩ ẋ
                let curv = tb.zip(t[x].as_deref());
                let xb = if yb.is_none() && curv.is_none() {
                    None
                } else {
                    let mut sum = self.buffers.zeros(y.len());
                    if let Some(yb) = yb {
                        sum.copy_from_slice(yb);
                    }
                    if let Some((tb, tx)) = curv {
                        softmax_curvature(tb, tx, y, width, &mut sum);
                    }
                    let mut out = self.buffers.take(y.len());
                    softmax_jacobian(&sum, y, width, &mut out);
                    self.buffers.give(sum);
                    Some(out)
                };
                vec![(x, xb, xtb)]
            }
        }
    }

    /// ∂W += g colsᵀ(v) for a convolution's output adjoint `g` and input `v` (row-major maps);
    /// returns convᵀ(g), the input's adjoint.
    fn conv_adjoint(
        &mut self,
        geom: &ConvGeom,
        weight: usize,
        g: &[f32],
        v: &[f32],
        grads: &mut ParamGrads,
    ) -> Vec<f32> {
        let (len_in, len_out) = (geom.c_in * geom.plane_in(), geom.c_out * geom.plane_out());
        let gw = grads.slot(weight, self.params[weight].len());
        if host_winograd::pays_for_kernel_gradient(geom, g.len() / len_out) {
            host_winograd::add_kernel_gradient(geom, (g, v), gw, &mut self.work);
        } else {
            let mut product = self.buffers.take(geom.c_out * geom.patch());
            for (g, v) in g.chunks_exact(len_out).zip(v.chunks_exact(len_in)) {
                let patches = geom.image_patches(v, &mut self.work);
                let sizes = [geom.c_out, geom.plane_out(), geom.patch()];
                add_nt_product(gw, (g, patches), sizes, &mut product);
            }
            self.buffers.give(product);
        }
        self.transpose_conv(geom, weight, g)
    }

    /// The reverse step of a batched product y = AB over (value, tangent): Ā = ȳBᵀ + ẏ̄Ḃᵀ,
    /// B̄ = Aᵀȳ + Ȧᵀẏ̄, Ǡ = ẏ̄Bᵀ, Ḃ̄ = Aᵀẏ̄.
    fn matmul_dual(
        &mut self,
        (a, b): (usize, usize),
        [bh, n, k, m]: [usize; 4],
        t: &[Option<Vec<f32>>],
        (y_bar, y_tbar): (Option<&[f32]>, Option<&[f32]>),
    ) -> Adjoints {
        let (va, vb) = (&self.values[a][..], &self.values[b][..]);
        let (ta, tb) = (t[a].as_deref(), t[b].as_deref());
        let buffers = &mut self.buffers;
        // A-shaped [n, k]: g [n, m] · Fᵀ for F [k, m]
        let mut left = |terms: [Option<(&[f32], &[f32])>; 2]| {
            let terms = terms.map(|t| t.map(|(g, f)| ((g, false), (f, true))));
            batched_sum(buffers, terms, bh, (n, m, k))
        };
        let ab = left([y_bar.zip(Some(vb)), y_tbar.zip(tb)]);
        let atb = left([y_tbar.filter(|_| ta.is_some()).zip(Some(vb)), None]);
        // B-shaped [k, m]: Fᵀ · g [n, m] for F [n, k]
        let mut right = |terms: [Option<(&[f32], &[f32])>; 2]| {
            let terms = terms.map(|t| t.map(|(g, f)| ((f, true), (g, false))));
            batched_sum(buffers, terms, bh, (k, n, m))
        };
        let bb = right([y_bar.zip(Some(va)), y_tbar.zip(ta)]);
        let btb = right([y_tbar.filter(|_| tb.is_some()).zip(Some(va)), None]);
        vec![(a, ab, atb), (b, bb, btb)]
    }

    /// Adds `g` into the adjoint `acc` (taking it over when `acc` is empty).
    fn accumulate(&mut self, acc: &mut Option<Vec<f32>>, g: Option<Vec<f32>>) {
        let Some(g) = g else { return };
        match acc {
            Some(a) => {
                a.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                self.buffers.give(g);
            }
            None => *acc = Some(g),
        }
    }

    fn give_opt(&mut self, v: Option<Vec<f32>>) {
        if let Some(v) = v {
            self.buffers.give(v);
        }
    }

    /// A copy of `v` in a spare buffer, or `len` zeros without it.
    fn copy_or_zeros(&mut self, v: Option<&[f32]>, len: usize) -> Vec<f32> {
        match v {
            Some(v) => self.copy(v),
            None => self.buffers.zeros(len),
        }
    }
}

/// A (transposed when the flag says so) factor of a batched product.
type Factor<'a> = (&'a [f32], bool);

/// Σ over `terms` of the batched products lhs · rhs (`bh` matrices each, of shapes
/// `[rows, inner]` and `[inner, cols]` after transposition) in a fresh buffer; `None` without
/// terms.
fn batched_sum(
    buffers: &mut Buffers,
    terms: [Option<(Factor<'_>, Factor<'_>)>; 2],
    bh: usize,
    (rows, inner, cols): (usize, usize, usize),
) -> Option<Vec<f32>> {
    if terms.iter().all(Option::is_none) {
        return None;
    }
    let mut out = buffers.zeros(bh * rows * cols);
    for ((l, lt), (r, rt)) in terms.into_iter().flatten() {
        for i in 0..bh {
            let (li, ri) = (
                &l[i * rows * inner..][..rows * inner],
                &r[i * inner * cols..][..inner * cols],
            );
            let o = &mut out[i * rows * cols..][..rows * cols];
            gemm_into(o, (li, lt), (ri, rt), rows, inner, cols, true);
        }
    }
    Some(out)
}

/// The parameter gradients a dual sweep fills, in canonical order: `None` until the sweep
/// reaches a parameter, which then starts from zeros — in a spare buffer of that parameter
/// where one was handed in (a fresh gradient of the CIFAR-10 network is 188 MB of page faults).
pub(crate) struct ParamGrads {
    grads: Vec<Option<Vec<f32>>>,
    spares: Vec<Option<Vec<f32>>>,
}

impl ParamGrads {
    /// No gradient yet for any of `n` parameters; `spares` (by parameter, possibly shorter)
    /// are reused as they are reached.
    pub fn new(n: usize, mut spares: Vec<Option<Vec<f32>>>) -> Self {
        spares.resize_with(n, || None);
        Self {
            grads: (0..n).map(|_| None).collect(),
            spares,
        }
    }

    /// The gradient of parameter `index` (of `len` values), zeros when first reached.
    fn slot(&mut self, index: usize, len: usize) -> &mut [f32] {
        let spare = &mut self.spares[index];
        self.grads[index].get_or_insert_with(|| match spare.take() {
            Some(mut v) => {
                v.clear();
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        })
    }

    /// The gradients (`None` for the parameters never reached).
    pub fn into_grads(self) -> Vec<Option<Vec<f32>>> {
        self.grads
    }
}

/// Adds Σ g ⊙ v (g alone when `v` is empty) over the axes the parameter `p` broadcasts along,
/// for values of shape `dims`, into `acc`.
fn reduce_product(g: &[f32], v: &[f32], dims: [usize; 4], p: Affine, acc: &mut [f32]) {
    let pw = p.shape[3];
    for_each_row(dims, |row, p_row| {
        let base = broadcast_base(p.shape, p_row);
        let gr = &g[row.clone()];
        if pw > 1 {
            let dst = &mut acc[base..base + pw];
            if v.is_empty() {
                dst.iter_mut().zip(gr).for_each(|(a, g)| *a += g);
            } else {
                let vr = &v[row];
                for ((a, g), v) in dst.iter_mut().zip(gr).zip(vr) {
                    *a += g * v;
                }
            }
        } else if v.is_empty() {
            acc[base] += lane_sum(gr);
        } else {
            acc[base] += lane_dot(gr, &v[row]);
        }
    });
}

/// Adds ∂⟨ẏ̄, J(x)ẋ⟩/∂x of a standardisation into `acc`, per row of m values, given
/// [ẏ̄, x̂, ẏ (the output's tangent), ẋ, ẋ̄ = Jẏ̄] and r:
/// −(r⟨ẏ̄, ẏ⟩/m) x̂ − (r⟨ẏ̄, x̂⟩/m) ẏ − r·mean(x̂ ⊙ ẋ)·ẋ̄.
fn standardize_curvature(rows: [&[f32]; 5], r: &[f32], acc: &mut [f32]) {
    let m = acc.len() / r.len();
    for (i, (&ri, out)) in r.iter().zip(acc.chunks_mut(m)).enumerate() {
        let [tb, xhat, ty, tx, xtb] = rows.map(|v| &v[i * m..][..m]);
        let c_hat = ri * lane_dot(tb, ty) / m as f32;
        let c_tan = ri * lane_dot(tb, xhat) / m as f32;
        let c_bar = ri * lane_dot(xhat, tx) / m as f32;
        for (j, o) in out.iter_mut().enumerate() {
            *o -= c_hat * xhat[j] + c_tan * ty[j] + c_bar * xtb[j];
        }
    }
}

/// Adds w = ẏ̄ ⊙ (ẋ − ⟨y, ẋ⟩) − ⟨ẏ̄, y⟩ ẋ per row of `width` into `acc` (the softmax's
/// curvature term before its Jacobian).
fn softmax_curvature(tb: &[f32], tx: &[f32], y: &[f32], width: usize, acc: &mut [f32]) {
    for (((tb, tx), y), out) in tb
        .chunks(width)
        .zip(tx.chunks(width))
        .zip(y.chunks(width))
        .zip(acc.chunks_mut(width))
    {
        let (s, c) = (lane_dot(y, tx), lane_dot(tb, y));
        for ((o, &tbv), &txv) in out.iter_mut().zip(tb).zip(tx) {
            *o += tbv * (txv - s) - c * txv;
        }
    }
}
