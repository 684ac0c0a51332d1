//! [`HostTape`]: the host twin of [`super::tape::Tape`] — a recorded forward pass on f32
//! buffers whose reverse sweep gives the input gradient of a scalar. Samplers and Langevin
//! chains only need ∇ₓV (no parameter gradient of it), so the UNet → ViT potential runs there
//! on these fused kernels: im2col + one `gemm` per convolution and image,
//! single-pass norms and activations, and buffers reused from call to call.
//!
//! Values are rank-4 and row-major like the tensor tape's: images `[B, C, H, W]`, tokens
//! `[B, 1, N, E]`, heads `[B, H, N, d]`. A reshape is free (the same buffer under new dims).
//! Every op's value and input gradient equal the tensor tape's (tests at the end of this file).

use std::sync::{Arc, Mutex, OnceLock};

use super::host_mlp::{activate, fast_exp, gemm_into};
use super::host_ops::{lane_dot, lane_sum, ConvGeom};
use super::host_winograd::{self, WinogradKernel};
use super::tape::NORM_EPS;
use super::Activation;

mod dual;

pub(crate) use dual::ParamGrads;

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

/// The parameters a [`HostTape`] reads, by index (shared with the tapes of other blocks).
pub(crate) type HostParams = Arc<ParamStore>;

/// The parameters of a network as f32 values (indexed like a slice), with the kernels its
/// convolutions apply made once when first needed: the Winograd forms of 3×3 stride-1 pad-1
/// kernels (which also serve their transposes) and the flipped kernels of other stride-1
/// convolutions (their transposes).
pub(crate) struct ParamStore {
    values: Vec<Vec<f32>>,
    flipped: Vec<OnceLock<Vec<f32>>>,
    winograd: Vec<OnceLock<Vec<f32>>>,
}

/// The kernel a convolution applies: a `[C_out, C_in·k²]` weight for im2col + gemm, or a 3×3
/// one in Winograd form.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    Direct(&'a [f32]),
    Winograd(WinogradKernel<'a>),
}

impl ParamStore {
    /// A store of `values`, in canonical order.
    pub fn new(values: Vec<Vec<f32>>) -> Self {
        let flipped = values.iter().map(|_| OnceLock::new()).collect();
        let winograd = values.iter().map(|_| OnceLock::new()).collect();
        Self {
            values,
            flipped,
            winograd,
        }
    }

    /// The kernel that applies parameter `weight` of convolution `geom` (`flipped`: the
    /// kernel of its transpose, for stride 1), in Winograd form where `geom` is a 3×3,
    /// stride-1, pad-1 convolution (and so is its transpose).
    fn kernel(&self, weight: usize, geom: &ConvGeom, flipped: bool) -> Kernel<'_> {
        if host_winograd::applies(geom) {
            let u = self.winograd[weight].get_or_init(|| {
                let mut u = spare_form(16 * geom.c_out * geom.c_in);
                let w = &self.values[weight];
                host_winograd::kernel_transform(w, geom.c_out, geom.c_in, &mut u);
                u
            });
            return Kernel::Winograd(WinogradKernel {
                u,
                transposed: flipped,
            });
        }
        Kernel::Direct(if flipped {
            self.flipped(weight, geom)
        } else {
            &self.values[weight]
        })
    }

    /// The kernel of convolution `geom` whose weight is parameter `weight`, flipped in space
    /// and with its channel axes swapped: `[C_in, C_out·k²]`, the weight of the convolution
    /// that is its transpose (for stride 1).
    fn flipped(&self, weight: usize, geom: &ConvGeom) -> &[f32] {
        self.flipped[weight].get_or_init(|| {
            let (k, ci, co) = (geom.k, geom.c_in, geom.c_out);
            let w = &self.values[weight];
            let mut f = vec![0.0; w.len()];
            for o in 0..co {
                for i in 0..ci {
                    for t in 0..k * k {
                        f[(i * co + o) * k * k + t] = w[(o * ci + i) * k * k + (k * k - 1 - t)];
                    }
                }
            }
            f
        })
    }
}

/// The Winograd forms of dropped stores, for the next stores' (each training step makes a new
/// store, and CIFAR-10's forms are 335 MB of page faults when fresh).
static SPARE_FORMS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Most buffers [`SPARE_FORMS`] keeps.
const MAX_SPARE_FORMS: usize = 1024;

/// A spare Winograd-form buffer for `len` values ([`best_fit`]).
fn spare_form(len: usize) -> Vec<f32> {
    SPARE_FORMS
        .lock()
        .map_or_else(|_| Vec::new(), |mut pool| best_fit(&mut pool, len))
}

/// Takes out of `spare` the smallest buffer whose capacity holds `len` values (so that the
/// spares keep the sizes their users need rather than all growing to the largest), else the
/// largest, else a new one; its length and contents are as they were.
fn best_fit(spare: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let fits = (0..spare.len())
        .filter(|&i| spare[i].capacity() >= len)
        .min_by_key(|&i| spare[i].capacity());
    let pick = fits.or_else(|| (0..spare.len()).max_by_key(|&i| spare[i].capacity()));
    pick.map_or_else(Vec::new, |i| spare.swap_remove(i))
}

impl Drop for ParamStore {
    fn drop(&mut self) {
        if let Ok(mut pool) = SPARE_FORMS.lock() {
            let room = MAX_SPARE_FORMS.saturating_sub(pool.len());
            pool.extend(
                self.winograd
                    .iter_mut()
                    .filter_map(OnceLock::take)
                    .take(room),
            );
        }
    }
}

impl std::ops::Deref for ParamStore {
    type Target = [Vec<f32>];

    fn deref(&self) -> &[Vec<f32>] {
        &self.values
    }
}

/// A parameter that broadcasts over a value: its index and the shape it broadcasts as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine {
    pub index: usize,
    /// `[1, C, 1, 1]`, `[1, 1, 1, E]`, `[1, 1, N, E]`, …: each axis 1 or the value's.
    pub shape: [usize; 4],
}

/// How each recorded value was computed: what its reverse step needs. Parameters are
/// indices into the tape's [`HostParams`].
enum Op {
    Input,
    Conv {
        x: usize,
        geom: ConvGeom,
        weight: usize,
        bias: usize,
    },
    /// y = a(x); keeps a'(x), and a''(x) on a tape for training (else empty).
    Act {
        x: usize,
        deriv: Vec<f32>,
        deriv2: Vec<f32>,
    },
    Add(usize, usize),
    Scale {
        x: usize,
        s: f32,
    },
    ScaleShift {
        x: usize,
        dims: [usize; 4],
        gamma: Option<Affine>,
        beta: Affine,
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
        r: Vec<f32>,
    },
    Linear {
        x: usize,
        weight: usize,
        bias: usize,
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
    /// The convolutions' patch-matrix buffer (the largest of all: kept apart so that it is
    /// not regrown, page by page, on every pass).
    work: Vec<f32>,
}

impl Buffers {
    /// A buffer of `len` values with unspecified contents (every op writes all of its
    /// output): the best-fitting spare one ([`best_fit`]).
    fn take(&mut self, len: usize) -> Vec<f32> {
        let mut v = best_fit(&mut self.spare, len);
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

    /// a ⊙ b in a spare buffer.
    fn product(&mut self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = self.take(a.len());
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = a * b;
        }
        out
    }

    fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.spare.push(v);
        }
    }
}

/// The recorded ops of one forward pass on host buffers.
pub(crate) struct HostTape {
    params: HostParams,
    /// Whether activations keep their second derivatives (for [`HostTape::param_gradient`]).
    second_order: bool,
    values: Vec<Vec<f32>>,
    ops: Vec<Op>,
    buffers: Buffers,
    /// The convolutions' patch-matrix buffer.
    work: Vec<f32>,
}

impl HostTape {
    /// An empty tape over `params`, drawing its buffers from `buffers`; `second_order` keeps
    /// what [`HostTape::param_gradient`] needs beyond the input gradient.
    pub fn new(params: HostParams, second_order: bool, mut buffers: Buffers) -> Self {
        let work = std::mem::take(&mut buffers.work);
        Self {
            params,
            second_order,
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
                Op::Act { deriv, deriv2, .. } => {
                    self.buffers.give(deriv);
                    self.buffers.give(deriv2);
                }
                Op::Standardize { r, .. } => self.buffers.give(r),
                _ => {}
            }
        }
        self.buffers.work = std::mem::take(&mut self.work);
        self.buffers
    }

    /// Hands the tape's spare and work buffers out for `incoming` (the recorded values stay).
    pub fn swap_buffers(&mut self, mut incoming: Buffers) -> Buffers {
        let work = std::mem::replace(&mut self.work, std::mem::take(&mut incoming.work));
        let mut outgoing = std::mem::replace(&mut self.buffers, incoming);
        outgoing.work = work;
        outgoing
    }

    /// The value of `v`.
    pub fn value(&self, v: &HostVar) -> &[f32] {
        &self.values[v.id][..v.len()]
    }

    fn push(&mut self, value: Vec<f32>, dims: [usize; 4], op: Op) -> HostVar {
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
        let v = self.copy(x);
        self.push(v, dims, Op::Input)
    }

    /// 2-D convolution with parameters `weight` (`[out, in, k, k]`, flattened) and `bias`,
    /// kernel size, stride and padding.
    pub fn conv2d(
        &mut self,
        x: &HostVar,
        (weight, bias): (usize, usize),
        (k, stride, pad): (usize, usize, usize),
    ) -> HostVar {
        let [n, c, h, w] = x.dims;
        let params = Arc::clone(&self.params);
        let geom = ConvGeom::new(c, params[bias].len(), k, stride, pad, h, w);
        let kernel = (params.kernel(weight, &geom, false), Some(&params[bias][..]));
        let y = self.with_value(x.id, |t, v| t.conv_map(&geom, kernel, v, n));
        let dims = [n, geom.c_out, geom.h_out, geom.w_out];
        let op = Op::Conv {
            x: x.id,
            geom,
            weight,
            bias,
        };
        self.push(y, dims, op)
    }

    /// conv(v, W) (+ b) of the `n` row-major maps in `v`, into a fresh row-major buffer.
    fn conv_map(
        &mut self,
        geom: &ConvGeom,
        (kernel, bias): (Kernel<'_>, Option<&[f32]>),
        v: &[f32],
        n: usize,
    ) -> Vec<f32> {
        let (len_in, len_out) = (geom.c_in * geom.plane_in(), geom.c_out * geom.plane_out());
        let mut y = self.buffers.take(n * len_out);
        let work = &mut self.work;
        match kernel {
            Kernel::Direct(w) => {
                for (x, out) in v.chunks_exact(len_in).zip(y.chunks_exact_mut(len_out)) {
                    geom.conv_image((w, bias), x, work, out);
                }
            }
            Kernel::Winograd(u) => host_winograd::conv_block(geom, (u, bias), v, work, &mut y),
        }
        y
    }

    /// `f(self, value of slot x)`: lends a recorded value to a `&mut self` kernel.
    fn with_value<R>(&mut self, x: usize, f: impl FnOnce(&mut Self, &[f32]) -> R) -> R {
        let v = std::mem::take(&mut self.values[x]);
        let r = f(self, &v);
        self.values[x] = v;
        r
    }

    /// y = a(x) elementwise.
    pub fn activation(&mut self, x: &HostVar, act: Activation) -> HostVar {
        let mut y = self.buffers.take(x.len());
        y.copy_from_slice(self.value(x));
        let mut deriv = self.buffers.take(x.len());
        // no bias here: rows of 256 zeros keep the vector loop long whatever the map width
        const ZEROS: [f32; 256] = [0.0; 256];
        let zeros = &ZEROS[..x.len().min(ZEROS.len())];
        let deriv2 = if self.second_order {
            let mut d2 = self.buffers.take(x.len());
            activate::<true>(&mut y, &mut deriv, &mut d2, zeros, act);
            d2
        } else {
            activate::<false>(&mut y, &mut deriv, &mut [], zeros, act);
            Vec::new()
        };
        let op = Op::Act {
            x: x.id,
            deriv,
            deriv2,
        };
        self.push(y, x.dims, op)
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
    pub fn scale_shift(&mut self, x: &HostVar, gamma: Option<Affine>, beta: Affine) -> HostVar {
        let mut y = self.buffers.take(x.len());
        let (params, v) = (&self.params, &self.values[x.id]);
        let per_channel = |a: &Affine| a.shape == [1, x.dims[1], 1, 1];
        if gamma.as_ref().is_none_or(per_channel) && per_channel(&beta) {
            let gammas = gamma.map(|g| &params[g.index][..]);
            channel_affine(x.dims, v, gammas, Some(&params[beta.index]), &mut y);
        } else {
            y.copy_from_slice(v);
            for_each_row(x.dims, |row, p_row| {
                let y = &mut y[row];
                if let Some(g) = gamma {
                    broadcast_row(&params[g.index], g.shape, p_row, y, |y, g| *y *= g);
                }
                broadcast_row(&params[beta.index], beta.shape, p_row, y, |y, b| *y += b);
            });
        }
        let op = Op::ScaleShift {
            x: x.id,
            dims: x.dims,
            gamma,
            beta,
        };
        self.push(y, x.dims, op)
    }

    /// Concatenation along the channel axis (dim 1).
    pub fn cat_channels(&mut self, a: &HostVar, b: &HostVar) -> HostVar {
        let [n, ca, h, w] = a.dims;
        let cb = b.dims[1];
        let (per_a, per_b) = (ca * h * w, cb * h * w);
        let mut y = self.buffers.take(n * (per_a + per_b));
        cat(self.value(a), self.value(b), (per_a, per_b), &mut y);
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
        upsample(self.value(x), (h, w), &mut y);
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
            let mean = lane_sum(src) / m as f32;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v - mean;
            }
            let var = lane_dot(dst, dst) / m as f32;
            let inv = (1.0 / (var as f64 + NORM_EPS).sqrt()) as f32;
            dst.iter_mut().for_each(|d| *d *= inv);
            *r = inv;
        }
        let op = Op::Standardize { x: x.id, r };
        self.push(y, x.dims, op)
    }

    /// y = x W + b on the last axis, with parameters `weight` (`[in, out]`, flattened) and
    /// `bias`.
    pub fn linear(&mut self, x: &HostVar, (weight, bias): (usize, usize)) -> HostVar {
        let [a, b, n, d_in] = x.dims;
        let (w, bv) = (&self.params[weight], &self.params[bias]);
        let d_out = bv.len();
        let rows = a * b * n;
        let mut y = self.buffers.take(rows * d_out);
        for row in y.chunks_mut(d_out) {
            row.copy_from_slice(bv);
        }
        let xv = &self.values[x.id];
        gemm_into(&mut y, (xv, false), (w, false), rows, d_in, d_out, true);
        let op = Op::Linear {
            x: x.id,
            weight,
            bias,
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
            exp_shifted(src, max, dst);
            let inv = 1.0 / lane_sum(dst);
            dst.iter_mut().for_each(|d| *d *= inv);
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

    /// A copy of `v` in a spare buffer.
    fn copy(&mut self, v: &[f32]) -> Vec<f32> {
        let mut out = self.buffers.take(v.len());
        out.copy_from_slice(v);
        out
    }

    /// s·v in a spare buffer.
    fn scaled(&mut self, v: &[f32], s: f32) -> Vec<f32> {
        let mut out = self.buffers.take(v.len());
        out.iter_mut().zip(v).for_each(|(o, v)| *o = s * v);
        out
    }

    /// convᵀ(g, W) for a row-major `g` of a convolution's outputs (any number of maps): a
    /// fresh row-major buffer of input-sized maps. For stride 1 it is the convolution of g
    /// with the flipped kernel (padding k − 1 − p), written once by the gemm; otherwise
    /// col2im(Wᵀg).
    fn transpose_conv(&mut self, geom: &ConvGeom, weight: usize, g: &[f32]) -> Vec<f32> {
        let n = g.len() / (geom.c_out * geom.plane_out());
        if geom.stride == 1 {
            let (k, p) = (geom.k, geom.pad);
            let flip = ConvGeom::new(
                geom.c_out,
                geom.c_in,
                k,
                1,
                k - 1 - p,
                geom.h_out,
                geom.w_out,
            );
            debug_assert_eq!((flip.h_out, flip.w_out), (geom.h_in, geom.w_in));
            let params = Arc::clone(&self.params);
            let kernel = params.kernel(weight, geom, true);
            return self.conv_map(&flip, (kernel, None), g, n);
        }
        let (len_in, len_out) = (geom.c_in * geom.plane_in(), geom.c_out * geom.plane_out());
        let mut gx = self.buffers.take(n * len_in);
        let (w, work) = (&self.params[weight], &mut self.work);
        for (g, out) in g.chunks_exact(len_out).zip(gx.chunks_exact_mut(len_in)) {
            geom.transpose_conv_into(w, g, 1, work, out);
        }
        gx
    }

    /// g ⊙ γ (γ broadcast over a value of shape `dims`; a copy of g without γ).
    fn times_gamma(&mut self, g: &[f32], dims: [usize; 4], gamma: Option<Affine>) -> Vec<f32> {
        let Some(gamma) = gamma else {
            return self.copy(g);
        };
        let mut gx = self.buffers.take(g.len());
        let values = &self.params[gamma.index];
        if gamma.shape == [1, dims[1], 1, 1] {
            channel_affine(dims, g, Some(values), None, &mut gx);
            return gx;
        }
        gx.copy_from_slice(g);
        for_each_row(dims, |row, p_row| {
            broadcast_row(values, gamma.shape, p_row, &mut gx[row], |y, g| *y *= g);
        });
        gx
    }

    /// The reverse step of value `id` for its gradient `g`: (input slot, input gradient).
    fn backward(&mut self, id: usize, g: &[f32]) -> Vec<(usize, Vec<f32>)> {
        match &self.ops[id] {
            Op::Input => vec![],
            &Op::Conv {
                x, geom, weight, ..
            } => {
                let gx = self.transpose_conv(&geom, weight, g);
                vec![(x, gx)]
            }
            Op::Act { x, deriv, .. } => vec![(*x, self.buffers.product(g, deriv))],
            &Op::Add(a, b) => vec![(a, self.copy(g)), (b, self.copy(g))],
            &Op::Scale { x, s } => vec![(x, self.scaled(g, s))],
            &Op::ScaleShift { x, dims, gamma, .. } => {
                let gx = self.times_gamma(g, dims, gamma);
                vec![(x, gx)]
            }
            &Op::Cat { a, b, per_a, per_b } => {
                let n = g.len() / (per_a + per_b);
                let (mut ga, mut gb) = (self.buffers.take(n * per_a), self.buffers.take(n * per_b));
                split(g, (per_a, per_b), &mut ga, &mut gb);
                vec![(a, ga), (b, gb)]
            }
            &Op::Up { x, dims } => {
                let mut gx = self.buffers.take(dims.iter().product());
                upsample_adjoint(g, (dims[2], dims[3]), &mut gx);
                vec![(x, gx)]
            }
            &Op::Swap { x, dims, d1, d2 } => {
                let mut gx = self.buffers.take(g.len());
                permute(g, dims, d1, d2, &mut gx);
                vec![(x, gx)]
            }
            Op::Standardize { x, r, .. } => {
                let mut gx = self.buffers.take(g.len());
                standardize_jacobian(g, &self.values[id], r, &mut gx);
                vec![(*x, gx)]
            }
            &Op::Linear {
                x,
                weight,
                d_in,
                d_out,
                ..
            } => {
                let rows = g.len() / d_out;
                let mut gx = self.buffers.take(rows * d_in);
                let w = &self.params[weight];
                gemm_into(&mut gx, (g, false), (w, true), rows, d_out, d_in, false);
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
                softmax_jacobian(g, &self.values[id], width, &mut gx);
                vec![(x, gx)]
            }
        }
    }
}

/// Per image: `a`'s `per.0` values then `b`'s `per.1`, into `out`.
fn cat(a: &[f32], b: &[f32], (per_a, per_b): (usize, usize), out: &mut [f32]) {
    for (i, o) in out.chunks_mut(per_a + per_b).enumerate() {
        o[..per_a].copy_from_slice(&a[i * per_a..][..per_a]);
        o[per_a..].copy_from_slice(&b[i * per_b..][..per_b]);
    }
}

/// The inverse of [`cat`].
fn split(g: &[f32], (per_a, per_b): (usize, usize), a: &mut [f32], b: &mut [f32]) {
    for (i, src) in g.chunks(per_a + per_b).enumerate() {
        a[i * per_a..][..per_a].copy_from_slice(&src[..per_a]);
        b[i * per_b..][..per_b].copy_from_slice(&src[per_a..]);
    }
}

/// Nearest-neighbour up-sampling by 2 of `h × w` planes, into `out`.
fn upsample(v: &[f32], (h, w): (usize, usize), out: &mut [f32]) {
    for (plane, out) in v.chunks(h * w).zip(out.chunks_mut(4 * h * w)) {
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
}

/// The adjoint of [`upsample`]: each `h × w` output sums its 2×2 sources.
fn upsample_adjoint(g: &[f32], (h, w): (usize, usize), out: &mut [f32]) {
    for (src, out) in g.chunks(4 * h * w).zip(out.chunks_mut(h * w)) {
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
}

/// J·g per row for the standardisation x̂ = (x − μ)·r of rows of `r.len()` groups: J =
/// r (I − 11ᵀ/m − x̂x̂ᵀ/m) is symmetric, so this is both the input gradient and the tangent.
fn standardize_jacobian(g: &[f32], xhat: &[f32], r: &[f32], out: &mut [f32]) {
    let m = g.len() / r.len();
    for (((gr, xr), out), &ri) in g
        .chunks(m)
        .zip(xhat.chunks(m))
        .zip(out.chunks_mut(m))
        .zip(r)
    {
        let (mean_g, mean_gx) = (lane_sum(gr) / m as f32, lane_dot(gr, xr) / m as f32);
        for ((o, &gv), &xv) in out.iter_mut().zip(gr).zip(xr) {
            *o = ri * (gv - mean_g - xv * mean_gx);
        }
    }
}

/// dst = e^(src − max), elementwise; AVX2 code where the CPU has it (elsewhere the `round` in
/// [`fast_exp`] is a libm call, which keeps the loop from vectorising).
fn exp_shifted(src: &[f32], max: f32, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { exp_shifted_avx2(src, max, dst) };
    }
    exp_shifted_rows(src, max, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(src: &[f32], max: f32, dst: &mut [f32]) {
    exp_shifted_rows(src, max, dst)
}

#[inline(always)]
fn exp_shifted_rows(src: &[f32], max: f32, dst: &mut [f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = fast_exp(v - max);
    }
}

/// J·g per row of `width` for y = softmax(x): J = diag(y) − yyᵀ is symmetric, so this is both
/// the input gradient and the tangent.
fn softmax_jacobian(g: &[f32], y: &[f32], width: usize, out: &mut [f32]) {
    for ((gr, yr), out) in g
        .chunks(width)
        .zip(y.chunks(width))
        .zip(out.chunks_mut(width))
    {
        let dot = lane_dot(gr, yr);
        for ((o, &gv), &yv) in out.iter_mut().zip(gr).zip(yr) {
            *o = yv * (gv - dot);
        }
    }
}

/// y = γ_c x + β_c on every channel plane of `x: dims`, in one pass per plane (the UNet's
/// norms' per-channel affine and its γ backward); an absent γ is 1, an absent β 0.
fn channel_affine(
    dims: [usize; 4],
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
) {
    let plane = dims[2] * dims[3];
    let planes = y.chunks_exact_mut(plane).zip(x.chunks_exact(plane));
    for (i, (y, x)) in planes.enumerate() {
        let c = i % dims[1];
        let g = gamma.map_or(1.0, |g| g[c]);
        match beta.map(|b| b[c]) {
            Some(b) => y.iter_mut().zip(x).for_each(|(y, x)| *y = g * x + b),
            None => y.iter_mut().zip(x).for_each(|(y, x)| *y = x * g),
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

/// Where the parameter row of a row `(ci, hi)` starts in a parameter of shape `shape`.
fn broadcast_base([_, pc, ph, pw]: [usize; 4], (ci, hi): (usize, usize)) -> usize {
    (if pc > 1 { ci } else { 0 }) * ph * pw + (if ph > 1 { hi } else { 0 }) * pw
}

/// Applies `f(y, p)` along a row `y` with the parameter `values` (of shape `shape`)
/// broadcast over it; `(ci, hi)` are the row's channel and height indices.
fn broadcast_row(
    values: &[f32],
    shape: [usize; 4],
    p_row: (usize, usize),
    y: &mut [f32],
    f: impl Fn(&mut f32, f32),
) {
    let (base, pw) = (broadcast_base(shape, p_row), shape[3]);
    if pw > 1 {
        y.iter_mut()
            .zip(&values[base..base + pw])
            .for_each(|(y, &v)| f(y, v));
    } else {
        let v = values[base];
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
