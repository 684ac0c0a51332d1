//! [`GradField`]: the host-side interface samplers integrate — the gradient (and energy) of
//! a potential for a block of rows in f32 buffers — and [`TensorField`], which adapts any
//! tensor [`Potential`] to it.

use crate::backend::{from_points, to_f32_vec, Precision};
use crate::potential::Potential;
use crate::Points;

/// Reusable f32 buffers, so that the hot loop allocates nothing after warm-up.
#[derive(Default)]
pub struct Scratch {
    /// Buffers a field may use as it likes (grown with [`Scratch::ensure`]).
    pub bufs: Vec<Vec<f32>>,
    pool: Vec<Vec<f32>>,
}

impl Scratch {
    /// Makes sure at least `k` buffers exist in `bufs`.
    pub fn ensure(&mut self, k: usize) {
        while self.bufs.len() < k {
            self.bufs.push(Vec::new());
        }
    }

    /// A zeroed buffer of length `len` from the pool.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// Returns a buffer to the pool.
    pub fn give(&mut self, v: Vec<f32>) {
        self.pool.push(v);
    }
}

/// Gradient and energy of a potential on host buffers (`n` rows of `dim()` values). Blocks of
/// rows are evaluated on several threads at once (`Sync`).
pub trait GradField: Sync {
    /// Dimension of a row.
    fn dim(&self) -> usize;
    /// ∇ₓV for each row into `out` (`n · dim` values).
    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch);
    /// V for each row into `out` (`n` values).
    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch);
    /// Whether callers should split a set of rows into one block per thread (host code, the
    /// default) or hand it over whole: a field on a GPU is launch-bound, and 16 blocks of 8
    /// rows cost it about 16 times one block of 128.
    fn splits_over_threads(&self) -> bool {
        true
    }
}

/// Rows per block when `n` rows are evaluated with `field`: one block per thread of the
/// current rayon pool where the field splits over threads, else all of them.
pub fn rows_per_block(field: &dyn GradField, n: usize) -> usize {
    let blocks = if field.splits_over_threads() {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    n.div_ceil(blocks).max(1)
}

/// Adapts a tensor [`Potential`] (any precision) to [`GradField`]. Blocks may run on several
/// threads: burn's CPU tensors are thread-safe, and parallel blocks beat burn's own threading
/// (a conv phase-2 step: 4.7 s with parallel chain blocks vs 10.6 s with one).
pub struct TensorField<'a> {
    /// The potential.
    pub potential: &'a (dyn Potential + Sync),
    /// Precision of the tensors it is evaluated with.
    pub precision: Precision,
}

/// Rows per tensor evaluation: callers hand over whole sets (2,000 evaluation images, say), and
/// one UNet feature map of 2,000 MNIST images is 200 MB, more than a GPU buffer binding allows.
pub(super) const TENSOR_FIELD_ROWS: usize = 128;

impl TensorField<'_> {
    fn tensor(&self, x: &[f32], n: usize) -> burn::tensor::Tensor<2> {
        let p = Points::new(
            n,
            self.potential.dim(),
            x[..n * self.potential.dim()].to_vec(),
        )
        .expect("n·dim values");
        from_points(&p, &self.potential.device(), self.precision)
    }

    /// `f` on each block of at most [`TENSOR_FIELD_ROWS`] rows, its values (`width` per row) into
    /// `out`.
    fn by_blocks<const D: usize>(
        &self,
        x: &[f32],
        n: usize,
        width: usize,
        out: &mut [f32],
        f: impl Fn(burn::tensor::Tensor<2>) -> burn::tensor::Tensor<D>,
    ) {
        let dim = self.potential.dim();
        for start in (0..n).step_by(TENSOR_FIELD_ROWS) {
            let rows = TENSOR_FIELD_ROWS.min(n - start);
            let values = to_f32_vec(f(self.tensor(&x[start * dim..], rows)));
            out[start * width..(start + rows) * width].copy_from_slice(&values);
        }
    }
}

impl GradField for TensorField<'_> {
    fn dim(&self) -> usize {
        self.potential.dim()
    }

    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
        let dim = self.potential.dim();
        self.by_blocks(x, n, dim, out, |t| self.potential.grad(t));
    }

    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], _: &mut Scratch) {
        self.by_blocks(x, n, 1, out, |t| self.potential.energy(t));
    }

    fn splits_over_threads(&self) -> bool {
        crate::backend::is_cpu(&self.potential.device())
    }
}
