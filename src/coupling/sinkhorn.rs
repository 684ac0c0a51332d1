//! Entropic optimal transport by log-domain Sinkhorn iterations between two uniform empirical
//! measures, and sampling index pairs from the resulting plan.

use crate::rng::{uniform, Rng};

/// Log-domain Sinkhorn for uniform marginals on an `n × m` cost (row-major).
///
/// Returns the log of the transport plan, `log P[i,j] = (f_i + g_j − C[i,j]) / reg`, whose rows
/// sum to 1/n and columns to 1/m at convergence. `reg` is the entropic regularisation in cost
/// units; iterations stop after `max_iter` or when the row-marginal error is below `tol`.
pub fn log_plan(cost: &[f64], n: usize, m: usize, reg: f64, max_iter: usize, tol: f64) -> Vec<f64> {
    let log_a = -(n as f64).ln();
    let log_b = -(m as f64).ln();
    let mut f = vec![0.0f64; n];
    let mut g = vec![0.0f64; m];
    let mut buf = vec![0.0f64; n.max(m)];
    let lse = |vals: &[f64]| -> f64 {
        let mx = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if !mx.is_finite() {
            return mx;
        }
        mx + vals.iter().map(|v| (v - mx).exp()).sum::<f64>().ln()
    };
    for _ in 0..max_iter {
        // f_i = reg·log a_i − reg·LSE_j((g_j − C_ij)/reg)
        for i in 0..n {
            for j in 0..m {
                buf[j] = (g[j] - cost[i * m + j]) / reg;
            }
            f[i] = reg * (log_a - lse(&buf[..m]));
        }
        for j in 0..m {
            for i in 0..n {
                buf[i] = (f[i] - cost[i * m + j]) / reg;
            }
            g[j] = reg * (log_b - lse(&buf[..n]));
        }
        // after the g-update columns are exact; check rows
        let mut err = 0.0;
        for i in 0..n {
            for j in 0..m {
                buf[j] = (f[i] + g[j] - cost[i * m + j]) / reg;
            }
            err += (lse(&buf[..m]).exp() - 1.0 / n as f64).abs();
        }
        if err < tol {
            break;
        }
    }
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (f[i] + g[j] - cost[i * m + j]) / reg;
        }
    }
    out
}

/// Draws `k` index pairs i.i.d. from a plan given by its log-weights (normalised here).
pub fn sample_pairs(log_p: &[f64], m: usize, k: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mx = log_p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut cdf = Vec::with_capacity(log_p.len());
    let mut acc = 0.0;
    for &lp in log_p {
        acc += (lp - mx).exp();
        cdf.push(acc);
    }
    (0..k)
        .map(|_| {
            let target = uniform(rng) * acc;
            let idx = cdf.partition_point(|&c| c <= target).min(log_p.len() - 1);
            (idx / m, idx % m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    #[test]
    fn marginals_are_uniform() {
        let (n, m) = (7, 5);
        let cost: Vec<f64> = (0..n * m).map(|k| ((k * 37) % 11) as f64 * 0.3).collect();
        let lp = log_plan(&cost, n, m, 0.5, 2000, 1e-12);
        for i in 0..n {
            let r: f64 = (0..m).map(|j| lp[i * m + j].exp()).sum();
            assert!((r - 1.0 / n as f64).abs() < 1e-9);
        }
        for j in 0..m {
            let c: f64 = (0..n).map(|i| lp[i * m + j].exp()).sum();
            assert!((c - 1.0 / m as f64).abs() < 1e-9);
        }
    }

    #[test]
    fn small_regularisation_approaches_the_exact_assignment() {
        // points on a line: the monotone matching is optimal
        let xs: [f64; 4] = [0.0, 1.0, 2.0, 3.0];
        let ys: [f64; 4] = [0.1, 2.2, 0.9, 3.3];
        let n = 4;
        let cost: Vec<f64> = (0..16)
            .map(|k| (xs[k / n] - ys[k % n]).powi(2))
            .collect::<Vec<f64>>();
        let lp = log_plan(&cost, n, n, 0.01, 5000, 1e-12);
        let want = [0, 2, 1, 3];
        for i in 0..n {
            assert!(lp[i * n + want[i]].exp() > 0.24, "row {i}");
        }
    }

    #[test]
    fn sampling_follows_the_plan() {
        let lp = [0.7f64.ln(), 0.1f64.ln(), 0.0f64.ln(), 0.2f64.ln()];
        let mut r = stream(1, Purpose::Eval, 0);
        let pairs = sample_pairs(&lp, 2, 20_000, &mut r);
        let frac = |p: (usize, usize)| pairs.iter().filter(|&&q| q == p).count() as f64 / 20_000.0;
        assert!((frac((0, 0)) - 0.7).abs() < 0.015);
        assert_eq!(frac((1, 0)), 0.0);
        assert!((frac((1, 1)) - 0.2).abs() < 0.015);
    }
}
