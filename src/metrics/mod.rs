//! Sample-quality metrics: squared energy distance, sliced Wasserstein-2, MMD with an RBF
//! kernel (median heuristic), and — in 2-D, given a potential — the mean negative
//! log-likelihood of held-out points under the normalised Boltzmann density exp(−V/ε)/Z
//! with Z computed on a grid.

use serde::{Deserialize, Serialize};

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rayon::prelude::*;

use crate::points::sq_dist;
use crate::rng::{normal, stream, Purpose, RngExt};
use crate::sampler::{GradField, Scratch};
use crate::{EmError, Points, Result};

pub mod classifier;
pub mod frechet;
pub use frechet::{frechet_distance, GaussianStats};

/// Metric values comparing samples with target points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleMetrics {
    /// Number of samples.
    pub n_samples: usize,
    /// Number of target points.
    pub n_target: usize,
    /// Squared energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ (V-statistics over all pairs).
    pub energy_distance_sq: f64,
    /// Sliced Wasserstein-2: √(mean over directions of W₂² of the 1-D projections).
    pub sliced_w2: f64,
    /// Number of random directions used.
    pub projections: usize,
    /// Squared MMD with a Gaussian kernel whose bandwidth is the median pairwise distance.
    pub mmd_rbf_sq: f64,
    /// The bandwidth used.
    pub mmd_bandwidth: f64,
}

/// Rows at least this wide have their pairwise sums computed from Gram tiles.
const GRAM_MIN_DIM: usize = 16;

/// Rows per Gram tile (a 256 × 256 f64 tile is 512 KB).
const GRAM_TILE: usize = 256;

/// Σ f(‖aᵢ − bⱼ‖²) over all ordered pairs of rows of `a` and `b` (`b = None`: `a` with itself,
/// the diagonal at exactly 0). Narrow rows take one difference per coordinate; rows of at
/// least [`GRAM_MIN_DIM`] values take ‖aᵢ‖² + ‖bⱼ‖² − 2 aᵢ·bⱼ in f64 from Gram tiles — a
/// matrix product, ≈ 50× faster on images — on all threads, summed in a fixed order so that the
/// result does not depend on the thread count.
fn pairwise_sum(a: &Points, b: Option<&Points>, f: &(dyn Fn(f64) -> f64 + Sync)) -> f64 {
    let other = b.unwrap_or(a);
    if a.dim() < GRAM_MIN_DIM {
        let mut s = 0.0;
        for ra in a.rows() {
            for rb in other.rows() {
                s += f(sq_dist(ra, rb));
            }
        }
        return s;
    }
    let (ta, tb) = (gram_tiles(a), gram_tiles(other));
    let pairs: Vec<(usize, usize)> = (0..ta.len())
        .flat_map(|i| (0..tb.len()).map(move |j| (i, j)))
        .collect();
    let sums: Vec<f64> = pairs
        .par_iter()
        .map(|&(i, j)| {
            let ((x, nx), (y, ny)) = (&ta[i], &tb[j]);
            let mut g = Mat::<f64>::zeros(x.nrows(), y.nrows());
            matmul(&mut g, Accum::Replace, x, y.transpose(), 1.0, Par::Seq);
            let diagonal = b.is_none() && i == j;
            let mut s = 0.0;
            for (r, &n_r) in nx.iter().enumerate() {
                for (c, &n_c) in ny.iter().enumerate() {
                    let d2 = if diagonal && r == c {
                        0.0
                    } else {
                        (n_r + n_c - 2.0 * g[(r, c)]).max(0.0)
                    };
                    s += f(d2);
                }
            }
            s
        })
        .collect();
    sums.iter().sum()
}

/// The rows of `p` in f64 tiles of [`GRAM_TILE`] rows, with their squared norms.
fn gram_tiles(p: &Points) -> Vec<(Mat<f64>, Vec<f64>)> {
    (0..p.len())
        .step_by(GRAM_TILE)
        .map(|start| {
            let rows = GRAM_TILE.min(p.len() - start);
            let m = Mat::from_fn(rows, p.dim(), |r, c| p.row(start + r)[c] as f64);
            let norms = (0..rows)
                .map(|r| p.row(start + r).iter().map(|&v| (v as f64).powi(2)).sum())
                .collect();
            (m, norms)
        })
        .collect()
}

/// Mean f(‖aᵢ − bⱼ‖²) over all pairs (`b = None`: `a` with itself), by [`pairwise_sum`].
fn pairwise_mean(a: &Points, b: Option<&Points>, f: &(dyn Fn(f64) -> f64 + Sync)) -> f64 {
    let m = b.map_or(a.len(), Points::len);
    pairwise_sum(a, b, f) / (a.len() as f64 * m as f64)
}

/// Mean ‖aᵢ − bⱼ‖ over all pairs (`b = None`: `a` with itself).
fn mean_pairwise_distance(a: &Points, b: Option<&Points>) -> f64 {
    pairwise_mean(a, b, &f64::sqrt)
}

/// Squared energy distance (V-statistics, all pairs).
pub fn energy_distance_sq(x: &Points, y: &Points) -> f64 {
    2.0 * mean_pairwise_distance(x, Some(y))
        - mean_pairwise_distance(x, None)
        - mean_pairwise_distance(y, None)
}

/// W₂² between two 1-D empirical measures with uniform weights, from their sorted values:
/// ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du computed exactly by merging the quantile steps.
pub fn w2_sq_1d(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut u, mut acc) = (0usize, 0usize, 0.0f64, 0.0);
    while i < a.len() && j < b.len() {
        let next_a = (i + 1) as f64 / na;
        let next_b = (j + 1) as f64 / nb;
        let next = next_a.min(next_b);
        acc += (next - u) * (a[i] - b[j]).powi(2);
        u = next;
        if next_a <= next {
            i += 1;
        }
        if next_b <= next {
            j += 1;
        }
    }
    acc
}

fn random_directions(dim: usize, count: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = stream(seed, Purpose::Eval, 0x5_12);
    (0..count)
        .map(|_| {
            let v: Vec<f64> = (0..dim).map(|_| normal(&mut rng)).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

fn project(p: &Points, dir: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = p
        .rows()
        .map(|r| r.iter().zip(dir).map(|(&a, b)| a as f64 * b).sum())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Sliced Wasserstein-2 over `count` random directions drawn from `seed`.
pub fn sliced_w2(x: &Points, y: &Points, count: usize, seed: u64) -> f64 {
    let dirs = random_directions(x.dim(), count, seed);
    let total: f64 = dirs
        .iter()
        .map(|d| w2_sq_1d(&project(x, d), &project(y, d)))
        .sum();
    (total / count as f64).sqrt()
}

/// Median pairwise distance over at most 1,000 points of `x ∪ y`.
pub fn median_distance(x: &Points, y: &Points) -> f64 {
    let take = |p: &Points, k: usize| p.slice_rows(0, p.len().min(k));
    let z = take(x, 500).concat(&take(y, 500)).expect("same dimension");
    let mut d = Vec::new();
    for i in 0..z.len() {
        for j in i + 1..z.len() {
            d.push(sq_dist(z.row(i), z.row(j)).sqrt());
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    d.sort_by(f64::total_cmp);
    d[d.len() / 2].max(1e-12)
}

/// Squared MMD (V-statistics) with k(a,b) = exp(−‖a−b‖²/(2h²)).
pub fn mmd_rbf_sq(x: &Points, y: &Points, h: f64) -> f64 {
    let g = 1.0 / (2.0 * h * h);
    let kernel = |d2: f64| (-g * d2).exp();
    let k = |a: &Points, b: Option<&Points>| pairwise_mean(a, b, &kernel);
    k(x, None) + k(y, None) - 2.0 * k(x, Some(y))
}

/// Evenly spaced subsample of at most `k` rows.
fn thin(p: &Points, k: usize) -> Points {
    if p.len() <= k {
        return p.clone();
    }
    let idx: Vec<usize> = (0..k).map(|i| i * p.len() / k).collect();
    p.select(&idx)
}

/// All sample metrics. The O(n·m) ones run on evenly thinned sets: energy distance on up to
/// `max_pairwise` samples and `4·max_pairwise` target points (all of them at the defaults
/// 5,000 / 20,000), MMD on up to `min(max_pairwise, 2000)` of each; sliced W2 uses every point.
pub fn compare(
    samples: &Points,
    target: &Points,
    projections: usize,
    max_pairwise: usize,
    seed: u64,
) -> Result<SampleMetrics> {
    if samples.is_empty() || target.is_empty() {
        return Err(EmError::invalid(
            "metrics input",
            "non-empty sample and target sets",
            format!("{} and {} points", samples.len(), target.len()),
        ));
    }
    target.expect_dim(samples.dim(), "metrics (target vs samples)")?;
    samples.check_finite("samples")?;
    target.check_finite("target")?;
    let (xs, ys) = (
        thin(samples, max_pairwise),
        thin(target, max_pairwise.max(1) * 4),
    );
    let h = median_distance(samples, target);
    let (xm, ym) = (
        thin(samples, max_pairwise.min(2000)),
        thin(target, max_pairwise.min(2000)),
    );
    Ok(SampleMetrics {
        n_samples: samples.len(),
        n_target: target.len(),
        energy_distance_sq: energy_distance_sq(&xs, &ys),
        sliced_w2: sliced_w2(samples, target, projections, seed),
        projections,
        mmd_rbf_sq: mmd_rbf_sq(&xm, &ym, h),
        mmd_bandwidth: h,
    })
}

/// Mean NLL of `points` under exp(−V/ε)/Z in 2-D, Z by a `grid × grid` Riemann sum over the
/// bounding box of `points` widened by `margin` on each side.
pub fn grid_nll_2d(
    potential: &dyn GradField,
    epsilon: f64,
    points: &Points,
    grid: usize,
    margin: f64,
) -> Result<f64> {
    points.expect_dim(2, "grid NLL (2-D only)")?;
    if potential.dim() != 2 {
        return Err(EmError::shape(
            "grid NLL",
            "a 2-D potential",
            format!("dimension {}", potential.dim()),
        ));
    }
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(EmError::invalid("epsilon", "a temperature > 0", epsilon));
    }
    let (lo, hi) = bounds_2d(points, margin);
    let (grid_pts, cell) = grid_points(lo, hi, grid);
    let v = energies(potential, &grid_pts)?;
    let logits: Vec<f64> = v.iter().map(|e| -e / epsilon).collect();
    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_z = mx + logits.iter().map(|l| (l - mx).exp()).sum::<f64>().ln() + cell.ln();
    let vp = energies(potential, points)?;
    Ok(vp.iter().map(|e| e / epsilon + log_z).sum::<f64>() / vp.len() as f64)
}

/// Bounding box (lower, upper corner) of 2-D points, widened by `margin` on each side.
pub fn bounds_2d(points: &Points, margin: f64) -> ([f64; 2], [f64; 2]) {
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for r in points.rows() {
        for k in 0..2 {
            lo[k] = lo[k].min(r[k] as f64 - margin);
            hi[k] = hi[k].max(r[k] as f64 + margin);
        }
    }
    (lo, hi)
}

/// Cell-centred grid over [lo, hi]; returns the points and the cell area.
pub fn grid_points(lo: [f64; 2], hi: [f64; 2], grid: usize) -> (Points, f64) {
    let (dx, dy) = ((hi[0] - lo[0]) / grid as f64, (hi[1] - lo[1]) / grid as f64);
    let mut data = Vec::with_capacity(grid * grid * 2);
    for iy in 0..grid {
        for ix in 0..grid {
            data.push((lo[0] + (ix as f64 + 0.5) * dx) as f32);
            data.push((lo[1] + (iy as f64 + 0.5) * dy) as f32);
        }
    }
    (
        Points::new(grid * grid, 2, data).expect("grid·grid·2 values"),
        dx * dy,
    )
}

/// V at every point, in blocks of 4,096 rows (on all threads when the field allows it).
pub fn energies(field: &dyn GradField, points: &Points) -> Result<Vec<f64>> {
    points.expect_dim(field.dim(), "points for energies")?;
    let d = field.dim();
    let block = |x: &[f32]| {
        let n = x.len() / d;
        let mut e = vec![0.0f32; n];
        field.energy(x, n, &mut e, &mut Scratch::default());
        e
    };
    let out: Vec<Vec<f32>> = points.as_slice().par_chunks(4096 * d).map(block).collect();
    Ok(out.into_iter().flatten().map(f64::from).collect())
}

/// Normalised histogram of `values` over `bins` equal bins spanning [lo, hi]: (bin centre,
/// density) pairs, the densities integrating to the fraction of values inside the range.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64)> {
    let width = (hi - lo) / bins.max(1) as f64;
    let mut counts = vec![0usize; bins.max(1)];
    for &v in values {
        if v >= lo && v <= hi && width > 0.0 {
            counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
        }
    }
    let n = values.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(k, &c)| (lo + (k as f64 + 0.5) * width, c as f64 / (n * width)))
        .collect()
}

/// A random subset of `k` indices (for plots).
pub fn subsample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = stream(seed, Purpose::Eval, 7);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = rng.random_range(i..n);
        idx.swap(i, j);
    }
    idx.truncate(k.min(n));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{cpu, Precision};
    use crate::potential::Quadratic;
    use crate::rng::fill_normal;
    use crate::sampler::TensorField;

    fn gauss(n: usize, seed: u64, shift: f32, scale: f32) -> Points {
        let mut r = stream(seed, Purpose::Data, 1);
        let mut v = vec![0.0; n * 2];
        fill_normal(&mut r, &mut v);
        Points::new(n, 2, v.into_iter().map(|x| x * scale + shift).collect()).unwrap()
    }

    #[test]
    fn w2_1d_of_a_shift_is_the_squared_shift() {
        let a = [0.0, 1.0, 2.0, 3.0];
        let b: Vec<f64> = a.iter().map(|x| x + 0.5).collect();
        assert!((w2_sq_1d(&a, &b) - 0.25).abs() < 1e-12);
        // unequal sizes: {0, 1} vs {0, 0, 1, 1} are the same measure
        assert!(w2_sq_1d(&[0.0, 1.0], &[0.0, 0.0, 1.0, 1.0]).abs() < 1e-12);
    }

    #[test]
    fn metrics_are_small_for_same_law_and_grow_with_a_shift() {
        let x = gauss(1500, 1, 0.0, 1.0);
        let y = gauss(1500, 2, 0.0, 1.0);
        let z = gauss(1500, 3, 1.0, 1.0);
        let same = compare(&x, &y, 100, 5000, 0).unwrap();
        let diff = compare(&x, &z, 100, 5000, 0).unwrap();
        assert!(same.energy_distance_sq < 0.01, "{same:?}");
        assert!(diff.energy_distance_sq > 0.3, "{diff:?}");
        // projections of a shift by (1,1): mean W2² over directions = E[(u·(1,1))²] = 1
        assert!((diff.sliced_w2 - 1.0).abs() < 0.12, "{diff:?}");
        assert!(same.sliced_w2 < 0.1);
        assert!(diff.mmd_rbf_sq > 10.0 * same.mmd_rbf_sq.max(1e-4));
    }

    /// `n` rows of `dim` normal values, the last `dup` rows repeating the first ones.
    fn wide(n: usize, dim: usize, seed: u64, dup: usize) -> Points {
        let mut r = stream(seed, Purpose::Data, 2);
        let mut v = vec![0.0; n * dim];
        fill_normal(&mut r, &mut v);
        v.copy_within(0..dup * dim, (n - dup) * dim);
        Points::new(n, dim, v).unwrap()
    }

    /// Σ f(‖aᵢ − bⱼ‖²) one coordinate difference at a time: the narrow-row rule.
    fn direct_sum(a: &Points, b: &Points, f: impl Fn(f64) -> f64) -> f64 {
        a.rows()
            .flat_map(|ra| b.rows().map(move |rb| sq_dist(ra, rb)))
            .map(f)
            .sum()
    }

    #[test]
    fn gram_tiled_pairwise_sums_equal_the_direct_ones() {
        // several tiles on each side, ragged last tiles, duplicate rows (distance 0); values
        // from f32 make the Gram form almost exact at this width
        let (x, y) = (wide(600, 40, 1, 7), wide(300, 40, 2, 3));
        assert!(x.dim() >= GRAM_MIN_DIM && x.len() > 2 * GRAM_TILE);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * b.abs().max(1.0);
        for (a, b) in [(&x, &y), (&y, &x), (&x, &x)] {
            let direct = direct_sum(a, b, f64::sqrt);
            let tiled = pairwise_sum(a, Some(b), &f64::sqrt);
            assert!(close(tiled, direct), "{tiled} vs {direct}");
            let k = |d2: f64| (-d2 / 80.0).exp();
            assert!(close(pairwise_sum(a, Some(b), &k), direct_sum(a, b, k)));
        }
        // a set with itself: the diagonal is exactly 0, the rest as before
        let direct = direct_sum(&x, &x, f64::sqrt);
        assert!(close(pairwise_sum(&x, None, &f64::sqrt), direct));
        // on rows as wide as MNIST's, ‖a‖² + ‖a‖² − 2a·a leaves rounding residues (≈ 1e-5
        // in a distance); the diagonal must be 0 all the same
        let mnist_wide = wide(20, 784, 5, 0);
        let self_pairs = direct_sum(&mnist_wide, &mnist_wide, f64::sqrt);
        let tiled = pairwise_sum(&mnist_wide, None, &f64::sqrt);
        assert!(close(tiled, self_pairs));
        let e = energy_distance_sq(&x, &x);
        assert!(e.abs() < 1e-9, "{e}");
    }

    #[test]
    fn wide_metrics_do_not_depend_on_the_thread_count() {
        let (x, y) = (wide(700, 20, 3, 0), wide(500, 20, 4, 0));
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| (energy_distance_sq(&x, &y), mmd_rbf_sq(&x, &y, 3.0)))
        };
        let one = on(1);
        assert_eq!(on(3), one);
        assert!(one.0 > 0.0 && one.1 > 0.0, "{one:?}");
    }

    #[test]
    fn energy_distance_of_two_points_is_analytic() {
        // X = δ₀, Y = δ₁ on the line: 2·1 − 0 − 0 = 2
        let x = Points::new(1, 1, vec![0.0]).unwrap();
        let y = Points::new(1, 1, vec![1.0]).unwrap();
        assert!((energy_distance_sq(&x, &y) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn histograms_are_densities_over_the_range() {
        let h = histogram(&[0.1, 0.2, 0.6, 0.9, 5.0], 0.0, 1.0, 2);
        // bins [0, 0.5), [0.5, 1]: 2 and 2 of 5 values, width 0.5 → densities 0.8 and 0.8
        assert_eq!(h, vec![(0.25, 0.8), (0.75, 0.8)]);
        let h = histogram(&[1.0, 1.0], 0.0, 1.0, 4);
        assert_eq!(h[3], (0.875, 4.0));
        assert!((h.iter().map(|(_, d)| d * 0.25).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn grid_nll_of_a_quadratic_is_the_gaussian_nll() {
        // V = ½‖x‖², ε = 0.5 ⇒ p = N(0, 0.5 I); NLL(0) = log(2π·0.5)
        let q = Quadratic::new(&[0.0, 0.0], &[1.0, 1.0], &cpu(), Precision::F64);
        let field = TensorField {
            potential: &q,
            precision: Precision::F64,
        };
        let at_origin = Points::new(1, 2, vec![0.0, 0.0]).unwrap();
        let nll = grid_nll_2d(&field, 0.5, &at_origin, 400, 6.0).unwrap();
        assert!((nll - (std::f64::consts::PI).ln()).abs() < 1e-3, "{nll}");
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let x = gauss(3, 1, 0.0, 1.0);
        let y3 = Points::new(1, 3, vec![0.0; 3]).unwrap();
        assert!(compare(&x, &y3, 10, 10, 0).is_err());
        let nan = Points::new(1, 2, vec![f32::NAN, 0.0]).unwrap();
        assert!(compare(&x, &nan, 10, 10, 0)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
    }
}
