//! [`HostMlp`]: an f32 copy of an [`Mlp`] evaluated with fused host kernels — `gemm` for the
//! matrix products, one pass per layer for bias + activation + derivative — for the loops that
//! need no autodiff tape (sampling and Langevin negatives). It computes exactly the same
//! function and input gradient as the tensor path (tested against it).

use std::cell::RefCell;

use super::{Activation, Mlp, Model};
use crate::backend::to_f32_vec;
use crate::sampler::{GradField, Scratch};
use crate::Result;

pub(super) struct Dense {
    /// `[fan_in, fan_out]`, row-major.
    pub(super) w: Vec<f32>,
    pub(super) b: Vec<f32>,
    pub(super) fan_in: usize,
    pub(super) fan_out: usize,
    pub(super) act: Activation,
}

/// The f32 inference form of an [`Mlp`].
pub struct HostMlp {
    pub(super) dim: usize,
    pub(super) hidden: Vec<Dense>,
    pub(super) out_w: Vec<f32>,
    pub(super) out_b: f32,
    pub(super) scale: f32,
    pub(super) clamp: Option<f32>,
}

/// `dst[n×m] (+)= op(a) · op(b)`, all row-major: `op(a)` is `[n×k]` (stored `[k×n]` when
/// `a_t`), `op(b)` is `[k×m]` (stored `[m×k]` when `b_t`); `accumulate` adds to `dst`.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into(
    dst: &mut [f32],
    (a, a_t): (&[f32], bool),
    (b, b_t): (&[f32], bool),
    n: usize,
    k: usize,
    m: usize,
    accumulate: bool,
) {
    let a = (a, row_major_strides(a_t, n, k));
    let b = (b, row_major_strides(b_t, k, m));
    gemm_strided((dst, (m, 1)), a, b, n, k, m, accumulate);
}

/// [`gemm_into`] for a block of a few rows (samples) times a large dense weight `b` (the
/// hidden layers of an MLP, a conv potential's 3,136 → 512 head).
///
/// Row-major, such a product is what `gemm` turns into dstᵀ = op(b)ᵀ · op(a)ᵀ with the rows
/// as its short side: a 32-row block fills 5⅓ of its 6-column tiles and reads the weight
/// unpacked with a stride per inner index. Column-major, the rows run down the 16-row
/// microkernel (two full tiles at 32) and the weight streams once. So blocks of at most
/// [`FEW_ROWS`] rows times a weight of at least 2¹⁸ values (where the transposes are cheap
/// next to the product) are computed column-major in a scratch and transposed into `dst`: the
/// mnist_conv head's forward and backward products take ≈ 25 % less time. Smaller weights (the
/// toy MLP's 256 × 256) stay on the direct product.
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_gemm_into(
    dst: &mut [f32],
    (a, a_t): (&[f32], bool),
    (b, b_t): (&[f32], bool),
    n: usize,
    k: usize,
    m: usize,
    accumulate: bool,
) {
    // the operands' and output's extents are asserted by `gemm_strided` on either path
    if n > FEW_ROWS || m < 4 * n || k * m < LARGE_WEIGHT {
        return gemm_into(dst, (a, a_t), (b, b_t), n, k, m, accumulate);
    }
    thread_local! {
        static COLUMN_MAJOR: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    COLUMN_MAJOR.with_borrow_mut(|t| {
        // every entry is written (transposed in, or overwritten by the product)
        t.resize(n * m, 0.0);
        if accumulate {
            transpose(&dst[..n * m], n, m, t);
        }
        let a = (a, row_major_strides(a_t, n, k));
        let b = (b, row_major_strides(b_t, k, m));
        // `t` holds the n×m output column-major: row stride 1, column stride n
        gemm_strided((t, (1, n)), a, b, n, k, m, accumulate);
        transpose(t, m, n, &mut dst[..n * m]);
    });
}

/// Most rows of a [`dense_gemm_into`] block computed column-major.
const FEW_ROWS: usize = 64;
/// Fewest weight values for which [`dense_gemm_into`] goes column-major.
const LARGE_WEIGHT: usize = 1 << 18;

/// `dst[c×r] = src[r×c]ᵀ` (row-major), in 16 × 16 tiles.
pub(crate) fn transpose(src: &[f32], r: usize, c: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for i0 in (0..r).step_by(TILE) {
        for j0 in (0..c).step_by(TILE) {
            for i in i0..(i0 + TILE).min(r) {
                for j in j0..(j0 + TILE).min(c) {
                    dst[j * r + i] = src[i * c + j];
                }
            }
        }
    }
}

/// A matrix operand: its values and its (row, column) strides.
pub(crate) type Strided<'a> = (&'a [f32], (usize, usize));

/// The (row, column) strides of a row-major `[r×c]` operand, or of its transpose when
/// stored `[c×r]`.
fn row_major_strides(transposed: bool, r: usize, c: usize) -> (usize, usize) {
    if transposed {
        (1, r)
    } else {
        (c, 1)
    }
}

/// `dst[n×m] (+)= a[n×k] · b[k×m]` with every operand's (row, column) strides given (a
/// block of columns of a wider matrix, a transposed view); `accumulate` adds to `dst`.
/// Panics unless each slice holds its operand.
pub(crate) fn gemm_strided(
    (dst, (dst_rs, dst_cs)): (&mut [f32], (usize, usize)),
    (a, (a_rs, a_cs)): Strided,
    (b, (b_rs, b_cs)): Strided,
    n: usize,
    k: usize,
    m: usize,
    accumulate: bool,
) {
    if n == 0 || m == 0 {
        return;
    }
    // the last value of an r×c operand with strides (rs, cs), plus one
    let extent = |(rs, cs): (usize, usize), r: usize, c: usize| (r - 1) * rs + (c - 1) * cs + 1;
    assert!(dst.len() >= extent((dst_rs, dst_cs), n, m));
    assert!(
        k == 0 || (a.len() >= extent((a_rs, a_cs), n, k) && b.len() >= extent((b_rs, b_cs), k, m))
    );
    // SAFETY: every index the product touches lies inside its slice (asserted above).
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `acc[n×k] += a[n×m] · b[k×m]ᵀ` for two row-major operands that share a long inner
/// dimension m (a weight gradient: output adjoints times patch rows). `gemm` packs (transposes)
/// an operand stored along the inner dimension into panels; computed directly that would be
/// `b`, which for a convolution is k²·C_in/C_out times larger than `a`. So the product is
/// formed as `b · aᵀ` in `work` (`[k×n]`, where only `a` gets packed and `b` is read in place)
/// and added transposed — while that product fits in cache: the strided reads of a larger
/// one's transpose cost more than the packing saves (CIFAR-10's 256 × 2,304 kernels).
pub(super) fn add_nt_product(
    acc: &mut [f32],
    (a, b): (&[f32], &[f32]),
    [n, m, k]: [usize; 3],
    work: &mut Vec<f32>,
) {
    const MOST_TRANSPOSED: usize = 1 << 16;
    if n * k > MOST_TRANSPOSED {
        gemm_into(acc, (a, false), (b, true), n, m, k, true);
        return;
    }
    // overwritten by the product
    work.resize(k * n, 0.0);
    gemm_into(work, (b, false), (a, true), k, m, n, false);
    for (i, row) in acc[..n * k].chunks_exact_mut(k).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v += work[j * n + i];
        }
    }
}

/// `dst[n×m] = a[n×k] · b` where `b` is `[k×m]` row-major, or its transpose when `b_t`
/// (then `b` is stored `[m×k]`).
fn matmul(dst: &mut [f32], a: &[f32], b: &[f32], n: usize, k: usize, m: usize, b_t: bool) {
    dense_gemm_into(dst, (a, false), (b, b_t), n, k, m, false);
}

/// Σ aᵢbᵢ.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// eˣ in f32 by Cody–Waite range reduction and a degree-6 polynomial (≈1 ulp on
/// [−87, 88]); plain arithmetic so that the compiler vectorises the loops that call it.
///
/// The exponent k = round(x·log₂e) comes from the "magic number" 1.5·2²³: adding it leaves k
/// in the low mantissa bits, so 2ᵏ is a shift of those bits. A float → int cast (`as i32`)
/// would saturate and map NaN to 0, which LLVM can only do one lane at a time.
#[inline(always)]
pub(super) fn fast_exp(x: f32) -> f32 {
    /// 1.5·2²³: f + MAGIC rounds f to an integer (ties to even) held in the mantissa.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // shifted's bits are 0x4B40_0000 + k; k + 127 ∈ [1, 254] shifted into the exponent field
    // (the high bits shift out)
    f32::from_bits(shifted.to_bits().wrapping_add(127) << 23) * p
}

/// Maps every row of `z` (width `b.len()`) through `f(z + b) = [a, a', a'']`: `z` becomes a,
/// `d` a', and (when `SECOND`) `d2` a''.
#[inline(always)]
fn map_rows<const SECOND: bool>(
    z: &mut [f32],
    d: &mut [f32],
    d2: &mut [f32],
    b: &[f32],
    f: impl Fn(f32) -> [f32; 3],
) {
    let m = b.len();
    if SECOND {
        let rows = z.chunks_mut(m).zip(d.chunks_mut(m)).zip(d2.chunks_mut(m));
        for ((zr, dr), er) in rows {
            for (((zi, di), ei), bi) in zr.iter_mut().zip(dr.iter_mut()).zip(er).zip(b) {
                let [a, da, dda] = f(*zi + bi);
                (*zi, *di, *ei) = (a, da, dda);
            }
        }
    } else {
        for (zr, dr) in z.chunks_mut(m).zip(d.chunks_mut(m)) {
            for ((zi, di), bi) in zr.iter_mut().zip(dr.iter_mut()).zip(b) {
                let [a, da, _] = f(*zi + bi);
                (*zi, *di) = (a, da);
            }
        }
    }
}

/// a = act(z + b), d = act'(z + b) and (when `SECOND`) d2 = act''(z + b), in place over `z`.
#[inline(always)]
fn activate_rows<const SECOND: bool>(
    z: &mut [f32],
    d: &mut [f32],
    d2: &mut [f32],
    b: &[f32],
    act: Activation,
) {
    match act {
        Activation::Silu => map_rows::<SECOND>(z, d, d2, b, |v| {
            let s = 1.0 / (1.0 + fast_exp(-v));
            let a = v * s;
            [
                a,
                s + a * (1.0 - s),
                s * (1.0 - s) * (2.0 + v * (1.0 - 2.0 * s)),
            ]
        }),
        Activation::Relu => map_rows::<SECOND>(z, d, d2, b, |v| {
            [v.max(0.0), if v > 0.0 { 1.0 } else { 0.0 }, 0.0]
        }),
        Activation::Softplus => map_rows::<SECOND>(z, d, d2, b, |v| {
            let s = 1.0 / (1.0 + fast_exp(-v));
            [v.max(0.0) + (-v.abs()).exp().ln_1p(), s, s * (1.0 - s)]
        }),
        Activation::Tanh => map_rows::<SECOND>(z, d, d2, b, |v| {
            let a = v.tanh();
            [a, 1.0 - a * a, -2.0 * a * (1.0 - a * a)]
        }),
        Activation::Gelu => map_rows::<SECOND>(z, d, d2, b, |v| {
            let cdf = 0.5 * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * v * v).exp() * 0.398_942_3;
            [v * cdf, cdf + v * pdf, pdf * (2.0 - v * v)]
        }),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2<const SECOND: bool>(
    z: &mut [f32],
    d: &mut [f32],
    d2: &mut [f32],
    b: &[f32],
    act: Activation,
) {
    activate_rows::<SECOND>(z, d, d2, b, act)
}

/// a = act(z + b) in place over `z`, d = act'(z + b), and (when `SECOND`) d2 = act''(z + b);
/// AVX2 code where the CPU has it.
pub(super) fn activate<const SECOND: bool>(
    z: &mut [f32],
    d: &mut [f32],
    d2: &mut [f32],
    b: &[f32],
    act: Activation,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { activate_avx2::<SECOND>(z, d, d2, b, act) };
    }
    activate_rows::<SECOND>(z, d, d2, b, act)
}

impl HostMlp {
    /// Copies the weights of `mlp` (any precision) into f32 host buffers.
    pub fn from_mlp(mlp: &Mlp) -> Result<Self> {
        let cfg = mlp.config();
        let flat: Vec<Vec<f32>> = mlp.flat_params().into_iter().map(to_f32_vec).collect();
        let shapes = cfg.layer_shapes();
        let mut hidden = Vec::new();
        for (l, &(fan_in, fan_out)) in shapes.iter().enumerate().take(shapes.len() - 1) {
            hidden.push(Dense {
                w: flat[2 * l].clone(),
                b: flat[2 * l + 1].clone(),
                fan_in,
                fan_out,
                act: cfg.activation_of(l),
            });
        }
        let last = shapes.len() - 1;
        Ok(Self {
            dim: cfg.dim,
            hidden,
            out_w: flat[2 * last].clone(),
            out_b: flat[2 * last + 1][0],
            scale: cfg.output_scale as f32,
            clamp: cfg.energy_clamp.map(|c| c as f32),
        })
    }

    /// Energies (when `energy` is given) and input gradients (when `grad` is given; without
    /// it only the forward pass runs) of `n` rows of `x`.
    pub fn energy_grad(
        &self,
        x: &[f32],
        n: usize,
        energy: Option<&mut [f32]>,
        grad: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let layers = self.hidden.len();
        s.ensure(2 * layers + 2);
        let (acts, rest) = s.bufs.split_at_mut(layers);
        let (derivs, tmp) = rest.split_at_mut(layers);
        // forward: acts[l] = a_l, derivs[l] = a_l'
        for (l, layer) in self.hidden.iter().enumerate() {
            let (done, todo) = acts.split_at_mut(l);
            let input: &[f32] = if l == 0 { x } else { &done[l - 1] };
            let a = &mut todo[0];
            a.resize(n * layer.fan_out, 0.0);
            derivs[l].resize(n * layer.fan_out, 0.0);
            matmul(a, input, &layer.w, n, layer.fan_in, layer.fan_out, false);
            activate::<false>(a, &mut derivs[l], &mut [], &layer.b, layer.act);
        }
        let h_last: &[f32] = if layers == 0 { x } else { &acts[layers - 1] };
        let width = self.out_w.len();
        // dV/d out per row (and V)
        let mut dv = vec![self.scale; n];
        if self.clamp.is_some() || energy.is_some() {
            let mut e_out = vec![0.0f32; n];
            for (i, row) in h_last.chunks(width).take(n).enumerate() {
                let o = dot(row, &self.out_w) + self.out_b;
                let [v, d, _] = self.head(o);
                e_out[i] = v;
                dv[i] = d;
            }
            if let Some(e) = energy {
                e[..n].copy_from_slice(&e_out);
            }
        }
        let Some(grad) = grad else { return };
        // backward: g = dv ⊗ w_out, then g ← (g ⊙ a_l') W_lᵀ
        let (g_a, g_b) = tmp.split_at_mut(1);
        let (g, g2) = (&mut g_a[0], &mut g_b[0]);
        g.resize(n * width.max(self.dim), 0.0);
        for (i, gr) in g.chunks_mut(width).take(n).enumerate() {
            for (gk, wk) in gr.iter_mut().zip(&self.out_w) {
                *gk = dv[i] * wk;
            }
        }
        for l in (0..layers).rev() {
            let layer = &self.hidden[l];
            for (gk, dk) in g[..n * layer.fan_out]
                .iter_mut()
                .zip(&derivs[l][..n * layer.fan_out])
            {
                *gk *= dk;
            }
            let out: &mut Vec<f32> = g2;
            out.resize(n * layer.fan_in, 0.0);
            matmul(
                out,
                &g[..n * layer.fan_out],
                &layer.w,
                n,
                layer.fan_out,
                layer.fan_in,
                true,
            );
            std::mem::swap(g, g2);
        }
        grad[..n * self.dim].copy_from_slice(&g[..n * self.dim]);
    }
}

impl Mlp {
    /// The fused f32 host form of this network.
    pub fn host(&self) -> Result<HostMlp> {
        HostMlp::from_mlp(self)
    }
}

impl GradField for HostMlp {
    fn dim(&self) -> usize {
        self.dim
    }

    fn grad(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch) {
        self.energy_grad(x, n, None, Some(out), scratch);
    }

    fn energy(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch) {
        self.energy_grad(x, n, Some(out), None, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::{dense_gemm_into, fast_exp, gemm_into, LARGE_WEIGHT};
    use crate::rng::{fill_normal, stream, Purpose};

    #[test]
    fn column_major_dense_products_equal_the_direct_ones() {
        let mut rng = stream(7, Purpose::Init, 0);
        let mut values = |len: usize| {
            let mut v = vec![0.0f32; len];
            fill_normal(&mut rng, &mut v);
            v
        };
        // (rows, inner, cols): the conv head's forward and backward shapes (column-major), a
        // ragged block, and a toy-sized weight (direct)
        for (n, k, m) in [
            (32, 3136, 512),
            (32, 512, 3136),
            (7, 600, 520),
            (32, 256, 256),
        ] {
            assert_eq!(k * m >= LARGE_WEIGHT, (n, k, m) != (32, 256, 256));
            for (a_t, b_t, accumulate) in [
                (false, false, false),
                (false, true, true),
                (true, false, true),
            ] {
                let (a, b, start) = (values(n * k), values(k * m), values(n * m));
                let mut direct = start.clone();
                gemm_into(&mut direct, (&a, a_t), (&b, b_t), n, k, m, accumulate);
                let mut dense = start.clone();
                dense_gemm_into(&mut dense, (&a, a_t), (&b, b_t), n, k, m, accumulate);
                let worst = direct
                    .iter()
                    .zip(&dense)
                    .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "{n}×{k}×{m} a_t {a_t} b_t {b_t}: {worst:e}");
            }
        }
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_exp_over_its_range_and_saturates_outside() {
        let mut worst = 0.0f64;
        let steps = 200_000;
        for i in 0..=steps {
            let x = -87.0 + 175.0 * i as f32 / steps as f32;
            let exact = (x as f64).exp();
            let rel = ((fast_exp(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
        }
        // one f32 ulp is 2⁻²³ ≈ 1.19e-7 relative
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        // exact at 0, and the integer powers keep their exponent
        assert_eq!(fast_exp(0.0), 1.0);
        assert!((fast_exp(1.0) - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
        // outside [−87, 88] it clamps instead of overflowing to inf or flushing to 0
        assert_eq!(fast_exp(-1.0e4), fast_exp(-87.0));
        assert_eq!(fast_exp(1.0e4), fast_exp(88.0));
        assert!(fast_exp(88.0).is_finite() && fast_exp(-87.0) > 0.0);
        assert!(fast_exp(f32::NAN).is_nan());
    }
}
