//! [`HostTape`]: the host twin of [`super::tape::Tape`] — a recorded forward pass on f32
//! buffers whose reverse sweep gives the input gradient of a scalar. Samplers and Langevin
//! chains only need ∇ₓV (no parameter gradient of it), so the UNet → ViT potential runs there
//! on these fused kernels: im2col + one `gemm` per convolution over the whole block,
//! single-pass norms and activations, and buffers reused from call to call.
//!
//! Values are rank-4 and row-major like the tensor tape's: images `[B, C, H, W]`, tokens
//! `[B, 1, N, E]`, heads `[B, H, N, d]`. A reshape is free (the same buffer under new dims).
//! Every op's value and input gradient equal the tensor tape's (tests at the end of this file).

use super::host_mlp::{activate, gemm_into};
use super::host_ops::{to_channel_major, to_row_major, ConvGeom, Layout};
use super::tape::NORM_EPS;
use super::Activation;

/// A value recorded on a [`HostTape`]: its slot and its shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostVar {
    id: usize,
    dims: [usize; 4],
}

impl HostVar {
    /// The shape of the value.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A parameter of the network: its values and the shape it broadcasts as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine<'p> {
    pub values: &'p [f32],
    /// `[1, C, 1, 1]`, `[1, 1, 1, E]`, `[1, 1, N, E]`, …: each axis 1 or the value's.
    pub shape: [usize; 4],
}

/// How each recorded value was computed: what its reverse step needs.
enum Op<'p> {
    Input,
    Conv {
        x: usize,
        geom: ConvGeom,
        weight: &'p [f32],
    },
    /// y = a(x); keeps a'(x).
    Act {
        x: usize,
        deriv: Vec<f32>,
    },
    Add(usize, usize),
    Scale {
        x: usize,
        s: f32,
    },
    ScaleShift {
        x: usize,
        dims: [usize; 4],
        gamma: Option<Affine<'p>>,
    },
    Cat {
        a: usize,
        b: usize,
        /// Values per image of a and of b.
        per_a: usize,
        per_b: usize,
    },
    Up {
        x: usize,
        dims: [usize; 4],
    },
    Swap {
        x: usize,
        /// The output's shape.
        dims: [usize; 4],
        d1: usize,
        d2: usize,
    },
    /// x̂ = (x − μ)·r per row; keeps r (x̂ is the value).
    Standardize {
        x: usize,
        rows: usize,
        r: Vec<f32>,
    },
    Linear {
        x: usize,
        weight: &'p [f32],
        d_in: usize,
        d_out: usize,
    },
    /// `[bh, n, k] · [bh, k, m]`.
    Matmul {
        a: usize,
        b: usize,
        shape: [usize; 4],
    },
    /// y = softmax(x) over the last axis (y is the value).
    Softmax {
        x: usize,
        width: usize,
    },
}

/// Spare buffers, kept between passes (a fresh buffer per op costs page faults).
#[derive(Default)]
pub(crate) struct Buffers {
    spare: Vec<Vec<f32>>,
    /// The convolutions' work buffers (the largest of all: kept apart so that they are not
    /// regrown, page by page, on every pass).
    work: [Vec<f32>; 2],
}

impl Buffers {
    /// A buffer of `len` values with unspecified contents (every op writes all of its
    /// output): the smallest spare one that holds `len` values (so that the spares keep the
    /// sizes the passes need rather than all growing to the largest), else the largest.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let fits = (0..self.spare.len())
            .filter(|&i| self.spare[i].capacity() >= len)
            .min_by_key(|&i| self.spare[i].capacity());
        let pick = fits.or_else(|| (0..self.spare.len()).max_by_key(|&i| self.spare[i].capacity()));
        let mut v = pick.map_or_else(Vec::new, |i| self.spare.swap_remove(i));
        // only a new tail is written
        v.resize(len, 0.0);
        v
    }

    /// A buffer of `len` zeros.
    fn zeros(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.take(len);
        v.fill(0.0);
        v
    }

    fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.spare.push(v);
        }
    }
}

/// The recorded ops of one forward pass on host buffers, over parameters borrowed for `'p`.
pub(crate) struct HostTape<'p> {
    values: Vec<Vec<f32>>,
    ops: Vec<Op<'p>>,
    buffers: Buffers,
    /// Patch-matrix and channel-major work buffers of the convolutions.
    work: [Vec<f32>; 2],
}

impl<'p> HostTape<'p> {
    /// An empty tape drawing its buffers from `buffers`.
    pub fn new(mut buffers: Buffers) -> Self {
        let work = std::mem::take(&mut buffers.work);
        Self {
            values: Vec::new(),
            ops: Vec::new(),
            buffers,
            work,
        }
    }

    /// Gives every buffer back (for the next tape).
    pub fn into_buffers(mut self) -> Buffers {
        for v in self.values.drain(..) {
            self.buffers.give(v);
        }
        for op in self.ops.drain(..) {
            match op {
                Op::Act { deriv: v, .. } | Op::Standardize { r: v, .. } => self.buffers.give(v),
                _ => {}
            }
        }
        self.buffers.work = std::mem::take(&mut self.work);
        self.buffers
    }

    /// The value of `v`.
    pub fn value(&self, v: &HostVar) -> &[f32] {
        &self.values[v.id][..v.len()]
    }

    fn push(&mut self, value: Vec<f32>, dims: [usize; 4], op: Op<'p>) -> HostVar {
        debug_assert_eq!(value.len(), dims.iter().product::<usize>());
        self.values.push(value);
        self.ops.push(op);
        HostVar {
            id: self.values.len() - 1,
            dims,
        }
    }

    /// Records an input value (a leaf of the reverse sweep).
    pub fn input(&mut self, x: &[f32], dims: [usize; 4]) -> HostVar {
        let mut v = self.buffers.take(x.len());
        v.copy_from_slice(x);
        self.push(v, dims, Op::Input)
    }

    /// 2-D convolution with weight `[out, in, k, k]` (flattened), bias, stride and padding.
    pub fn conv2d(
        &mut self,
        x: &HostVar,
        weight: &'p [f32],
        bias: &[f32],
        (k, stride, pad): (usize, usize, usize),
    ) -> HostVar {
        let [n, c, h, w] = x.dims;
        let geom = ConvGeom::new(c, bias.len(), k, stride, pad, h, w);
        let [cols, cm] = &mut self.work;
        geom.im2col(&self.values[x.id], n, Layout::ImageMajor, cols);
        geom.forward(weight, bias, cols, n, cm);
        let mut y = self.buffers.take(cm.len());
        to_row_major(cm, n, geom.c_out, geom.plane_out(), &mut y);
        let dims = [n, geom.c_out, geom.h_out, geom.w_out];
        let op = Op::Conv {
            x: x.id,
            geom,
            weight,
        };
        self.push(y, dims, op)
    }

    /// y = a(x) elementwise.
    pub fn activation(&mut self, x: &HostVar, act: Activation) -> HostVar {
        let mut y = self.buffers.take(x.len());
        y.copy_from_slice(self.value(x));
        let mut deriv = self.buffers.take(x.len());
        let width = x.dims[3];
        let zeros = self.buffers.zeros(width);
        activate::<false>(&mut y, &mut deriv, &mut [], &zeros, act);
        self.buffers.give(zeros);
        self.push(y, x.dims, Op::Act { x: x.id, deriv })
    }

    /// y = a + b.
    pub fn add(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        let mut y = self.buffers.take(a.len());
        let (va, vb) = (self.value(a), self.value(b));
        for ((y, a), b) in y.iter_mut().zip(va).zip(vb) {
            *y = a + b;
        }
        self.push(y, a.dims, Op::Add(a.id, b.id))
    }

    /// y = s·x.
    pub fn scale(&mut self, x: &HostVar, s: f64) -> HostVar {
        let s = s as f32;
        let mut y = self.buffers.take(x.len());
        for (y, v) in y.iter_mut().zip(self.value(x)) {
            *y = s * v;
        }
        self.push(y, x.dims, Op::Scale { x: x.id, s })
    }

    /// y = x ⊙ γ + β with γ and β broadcast from their shapes.
    pub fn scale_shift(
        &mut self,
        x: &HostVar,
        gamma: Option<Affine<'p>>,
        beta: Affine<'_>,
    ) -> HostVar {
        let mut y = self.buffers.take(x.len());
        y.copy_from_slice(self.value(x));
        for_each_row(x.dims, |row, p_row| {
            let y = &mut y[row];
            if let Some(g) = gamma {
                broadcast_row(g, p_row, y, |y, g| *y *= g);
            }
            broadcast_row(beta, p_row, y, |y, b| *y += b);
        });
        let op = Op::ScaleShift {
            x: x.id,
            dims: x.dims,
            gamma,
        };
        self.push(y, x.dims, op)
    }

    /// Concatenation along the channel axis (dim 1).
    pub fn cat_channels(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        let [n, ca, h, w] = a.dims;
        let cb = b.dims[1];
        let (per_a, per_b) = (ca * h * w, cb * h * w);
        let mut y = self.buffers.take(n * (per_a + per_b));
        let (va, vb) = (self.value(a), self.value(b));
        for (i, out) in y.chunks_mut(per_a + per_b).enumerate() {
            out[..per_a].copy_from_slice(&va[i * per_a..][..per_a]);
            out[per_a..].copy_from_slice(&vb[i * per_b..][..per_b]);
        }
        let op = Op::Cat {
            a: a.id,
            b: b.id,
            per_a,
            per_b,
        };
        self.push(y, [n, ca + cb, h, w], op)
    }

    /// Nearest-neighbour up-sampling by 2 in both spatial axes.
    pub fn upsample2x(&mut self, x: &HostVar) -> HostVar {
        let [n, c, h, w] = x.dims;
        let mut y = self.buffers.take(4 * x.len());
        let v = self.value(x);
        for (plane, out) in v.chunks(h * w).zip(y.chunks_mut(4 * h * w)) {
            for (i, row) in plane.chunks(w).enumerate() {
                for di in 0..2 {
                    let dst = &mut out[(2 * i + di) * 2 * w..][..2 * w];
                    for (j, &val) in row.iter().enumerate() {
                        dst[2 * j] = val;
                        dst[2 * j + 1] = val;
                    }
                }
            }
        }
        let op = Op::Up {
            x: x.id,
            dims: x.dims,
        };
        self.push(y, [n, c, 2 * h, 2 * w], op)
    }

    /// The same values under another shape (row-major): free.
    pub fn reshape(&mut self, x: &HostVar, dims: [usize; 4]) -> HostVar {
        assert_eq!(
            x.len(),
            dims.iter().product::<usize>(),
            "reshape keeps the size"
        );
        HostVar { id: x.id, dims }
    }

    /// Swaps two axes.
    pub fn swap_dims(&mut self, x: &HostVar, d1: usize, d2: usize) -> HostVar {
        let mut dims = x.dims;
        dims.swap(d1, d2);
        let mut y = self.buffers.take(x.len());
        permute(self.value(x), x.dims, d1, d2, &mut y);
        let op = Op::Swap {
            x: x.id,
            dims,
            d1,
            d2,
        };
        self.push(y, dims, op)
    }

    /// Standardises each of `rows` contiguous groups to mean 0, variance 1 (biased variance,
    /// floor [`NORM_EPS`]), like [`super::tape::Tape::standardize`].
    pub fn standardize(&mut self, x: &HostVar, rows: usize) -> HostVar {
        let m = x.len() / rows;
        let mut y = self.buffers.take(x.len());
        let mut r = self.buffers.take(rows);
        for ((src, dst), r) in self.value(x).chunks(m).zip(y.chunks_mut(m)).zip(&mut r) {
            let mean = src.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
            let var = src.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m as f64;
            let inv = 1.0 / (var + NORM_EPS).sqrt();
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = ((v as f64 - mean) * inv) as f32;
            }
            *r = inv as f32;
        }
        let op = Op::Standardize { x: x.id, rows, r };
        self.push(y, x.dims, op)
    }

    /// y = x W + b on the last axis, with W `[in, out]` (flattened).
    pub fn linear(&mut self, x: &HostVar, weight: &'p [f32], bias: &[f32]) -> HostVar {
        let [a, b, n, d_in] = x.dims;
        let d_out = bias.len();
        let rows = a * b * n;
        let mut y = self.buffers.take(rows * d_out);
        for row in y.chunks_mut(d_out) {
            row.copy_from_slice(bias);
        }
        let xv = &self.values[x.id];
        gemm_into(
            &mut y,
            (xv, false),
            (weight, false),
            rows,
            d_in,
            d_out,
            true,
        );
        let op = Op::Linear {
            x: x.id,
            weight,
            d_in,
            d_out,
        };
        self.push(y, [a, b, n, d_out], op)
    }

    /// Batched matrix product over the last two axes.
    pub fn matmul(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        let [b0, b1, n, k] = a.dims;
        let m = b.dims[3];
        assert_eq!(b.dims[2], k, "matmul: inner sizes");
        let bh = b0 * b1;
        let mut y = self.buffers.take(bh * n * m);
        let (va, vb) = (self.value(a), self.value(b));
        for (i, out) in y.chunks_mut(n * m).enumerate() {
            let (ai, bi) = (&va[i * n * k..][..n * k], &vb[i * k * m..][..k * m]);
            gemm_into(out, (ai, false), (bi, false), n, k, m, false);
        }
        let op = Op::Matmul {
            a: a.id,
            b: b.id,
            shape: [bh, n, k, m],
        };
        self.push(y, [b0, b1, n, m], op)
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: &HostVar) -> HostVar {
        let width = x.dims[3];
        let mut y = self.buffers.take(x.len());
        for (src, dst) in self.value(x).chunks(width).zip(y.chunks_mut(width)) {
            let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0f32;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - max).exp();
                sum += *d;
            }
            dst.iter_mut().for_each(|d| *d /= sum);
        }
        self.push(y, x.dims, Op::Softmax { x: x.id, width })
    }

    /// ∂(Σ seed ⊙ out)/∂wrt: the reverse sweep from `out` (zeros when `out` does not depend
    /// on `wrt`).
    pub fn gradient(&mut self, out: &HostVar, seed: &[f32], wrt: &HostVar) -> Vec<f32> {
        let mut grads: Vec<Option<Vec<f32>>> = (0..=out.id).map(|_| None).collect();
        let mut s = self.buffers.take(seed.len());
        s.copy_from_slice(seed);
        grads[out.id] = Some(s);
        for id in (wrt.id + 1..=out.id).rev() {
            let Some(g) = grads[id].take() else {
                continue;
            };
            for (input, gi) in self.backward(id, &g) {
                match grads[input].as_mut() {
                    Some(acc) => {
                        acc.iter_mut().zip(&gi).for_each(|(a, b)| *a += b);
                        self.buffers.give(gi);
                    }
                    None => grads[input] = Some(gi),
                }
            }
            self.buffers.give(g);
        }
        let wrt_len = wrt.len();
        let g = grads[wrt.id].take();
        for v in grads.into_iter().flatten() {
            self.buffers.give(v);
        }
        g.unwrap_or_else(|| vec![0.0; wrt_len])
    }

    /// The reverse step of value `id` for its gradient `g`: (input slot, input gradient).
    fn backward(&mut self, id: usize, g: &[f32]) -> Vec<(usize, Vec<f32>)> {
        match &self.ops[id] {
            Op::Input => vec![],
            &Op::Conv { x, geom, weight } => {
                let n = g.len() / (geom.c_out * geom.plane_out());
                let [cols, cm] = &mut self.work;
                to_channel_major(g, n, geom.c_out, geom.plane_out(), cm);
                let mut gx = self.buffers.take(geom.c_in * n * geom.plane_in());
                geom.transpose_conv(weight, cm, n, Layout::ImageMajor, cols, &mut gx);
                vec![(x, gx)]
            }
            Op::Act { x, deriv } => {
                let mut gx = self.buffers.take(g.len());
                for ((o, g), d) in gx.iter_mut().zip(g).zip(deriv) {
                    *o = g * d;
                }
                vec![(*x, gx)]
            }
            &Op::Add(a, b) => {
                let mut ga = self.buffers.take(g.len());
                ga.copy_from_slice(g);
                let mut gb = self.buffers.take(g.len());
                gb.copy_from_slice(g);
                vec![(a, ga), (b, gb)]
            }
            &Op::Scale { x, s } => {
                let mut gx = self.buffers.take(g.len());
                gx.iter_mut().zip(g).for_each(|(o, g)| *o = s * g);
                vec![(x, gx)]
            }
            &Op::ScaleShift { x, dims, gamma } => {
                let mut gx = self.buffers.take(g.len());
                gx.copy_from_slice(g);
                if let Some(gamma) = gamma {
                    for_each_row(dims, |row, p_row| {
                        broadcast_row(gamma, p_row, &mut gx[row], |y, g| *y *= g);
                    });
                }
                vec![(x, gx)]
            }
            &Op::Cat { a, b, per_a, per_b } => {
                let n = g.len() / (per_a + per_b);
                let (mut ga, mut gb) = (self.buffers.take(n * per_a), self.buffers.take(n * per_b));
                for (i, src) in g.chunks(per_a + per_b).enumerate() {
                    ga[i * per_a..][..per_a].copy_from_slice(&src[..per_a]);
                    gb[i * per_b..][..per_b].copy_from_slice(&src[per_a..]);
                }
                vec![(a, ga), (b, gb)]
            }
            &Op::Up { x, dims } => {
                let [_, _, h, w] = dims;
                let mut gx = self.buffers.take(dims.iter().product());
                for (src, out) in g.chunks(4 * h * w).zip(gx.chunks_mut(h * w)) {
                    for (i, row) in out.chunks_mut(w).enumerate() {
                        let (r0, r1) = (
                            &src[2 * i * 2 * w..][..2 * w],
                            &src[(2 * i + 1) * 2 * w..][..2 * w],
                        );
                        for (j, o) in row.iter_mut().enumerate() {
                            *o = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
                        }
                    }
                }
                vec![(x, gx)]
            }
            &Op::Swap { x, dims, d1, d2 } => {
                let mut gx = self.buffers.take(g.len());
                permute(g, dims, d1, d2, &mut gx);
                vec![(x, gx)]
            }
            Op::Standardize { x, rows, r } => {
                let (x, rows) = (*x, *rows);
                let m = g.len() / rows;
                let mut gx = self.buffers.take(g.len());
                let xhat = &self.values[id];
                for (((gr, xr), out), &ri) in
                    g.chunks(m).zip(xhat.chunks(m)).zip(gx.chunks_mut(m)).zip(r)
                {
                    let mean_g = gr.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
                    let mean_gx = gr
                        .iter()
                        .zip(xr)
                        .map(|(&a, &b)| (a * b) as f64)
                        .sum::<f64>()
                        / m as f64;
                    let (mean_g, mean_gx) = (mean_g as f32, mean_gx as f32);
                    for ((o, &gv), &xv) in out.iter_mut().zip(gr).zip(xr) {
                        *o = ri * (gv - mean_g - xv * mean_gx);
                    }
                }
                vec![(x, gx)]
            }
            &Op::Linear {
                x,
                weight,
                d_in,
                d_out,
            } => {
                let rows = g.len() / d_out;
                let mut gx = self.buffers.take(rows * d_in);
                gemm_into(
                    &mut gx,
                    (g, false),
                    (weight, true),
                    rows,
                    d_out,
                    d_in,
                    false,
                );
                vec![(x, gx)]
            }
            &Op::Matmul { a, b, shape } => {
                let [bh, n, k, m] = shape;
                let (mut ga, mut gb) =
                    (self.buffers.take(bh * n * k), self.buffers.take(bh * k * m));
                let (va, vb) = (&self.values[a], &self.values[b]);
                for i in 0..bh {
                    let gi = &g[i * n * m..][..n * m];
                    let (ai, bi) = (&va[i * n * k..][..n * k], &vb[i * k * m..][..k * m]);
                    gemm_into(
                        &mut ga[i * n * k..][..n * k],
                        (gi, false),
                        (bi, true),
                        n,
                        m,
                        k,
                        false,
                    );
                    gemm_into(
                        &mut gb[i * k * m..][..k * m],
                        (ai, true),
                        (gi, false),
                        k,
                        n,
                        m,
                        false,
                    );
                }
                vec![(a, ga), (b, gb)]
            }
            &Op::Softmax { x, width } => {
                let mut gx = self.buffers.take(g.len());
                let y = &self.values[id];
                for ((gr, yr), out) in g
                    .chunks(width)
                    .zip(y.chunks(width))
                    .zip(gx.chunks_mut(width))
                {
                    let dot: f32 = gr.iter().zip(yr).map(|(a, b)| a * b).sum();
                    for ((o, &gv), &yv) in out.iter_mut().zip(gr).zip(yr) {
                        *o = yv * (gv - dot);
                    }
                }
                vec![(x, gx)]
            }
        }
    }
}

/// Calls `f(row range, (parameter channel, parameter row))` for every last-axis row of a value
/// of shape `dims`.
fn for_each_row(dims: [usize; 4], mut f: impl FnMut(std::ops::Range<usize>, (usize, usize))) {
    let [n, c, h, w] = dims;
    let mut start = 0;
    for _ in 0..n {
        for ci in 0..c {
            for hi in 0..h {
                f(start..start + w, (ci, hi));
                start += w;
            }
        }
    }
}

/// Applies `f(y, p)` along a row `y` with the parameter `p` broadcast over it; `(ci, hi)` are
/// the row's channel and height indices.
fn broadcast_row(
    p: Affine<'_>,
    (ci, hi): (usize, usize),
    y: &mut [f32],
    f: impl Fn(&mut f32, f32),
) {
    let [_, pc, ph, pw] = p.shape;
    let base = (if pc > 1 { ci } else { 0 }) * ph * pw + (if ph > 1 { hi } else { 0 }) * pw;
    if pw > 1 {
        y.iter_mut()
            .zip(&p.values[base..base + pw])
            .for_each(|(y, &v)| f(y, v));
    } else {
        let v = p.values[base];
        y.iter_mut().for_each(|y| f(y, v));
    }
}

/// `out` = `x` (of shape `dims`) with axes `d1` and `d2` swapped.
fn permute(x: &[f32], dims: [usize; 4], d1: usize, d2: usize, out: &mut [f32]) {
    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let mut od = dims;
    od.swap(d1, d2);
    let mut is = strides;
    is.swap(d1, d2);
    // out index (i0, i1, i2, i3) in od reads x at Σ i_k · is[k]
    let mut o = 0;
    for i0 in 0..od[0] {
        for i1 in 0..od[1] {
            for i2 in 0..od[2] {
                let base = i0 * is[0] + i1 * is[1] + i2 * is[2];
                let row = &mut out[o..o + od[3]];
                if is[3] == 1 {
                    row.copy_from_slice(&x[base..base + od[3]]);
                } else {
                    for (i3, v) in row.iter_mut().enumerate() {
                        *v = x[base + i3 * is[3]];
                    }
                }
                o += od[3];
            }
        }
    }
}
