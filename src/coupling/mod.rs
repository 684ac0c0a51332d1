//! Couplings pair a source batch x₀ with a data batch x₁ before the flow-matching regression.
//!
//! - [`CouplingKind::Independent`]: pairs as drawn.
//! - [`CouplingKind::ExactOt`]: the permutation minimising Σ‖x₀ᵢ − x₁π(i)‖² (exact minibatch
//!   OT, [`assignment::solve`]); optionally the pairs are then drawn i.i.d. from that plan with
//!   replacement, as torchcfm's exact-OT matcher (and the toy tutorial) does.
//! - [`CouplingKind::Sinkhorn`]: entropic OT in the log domain, pairs drawn from the plan.

pub mod assignment;
pub mod sinkhorn;

use serde::{Deserialize, Serialize};

use crate::points::sq_dist;
use crate::rng::{Rng, RngExt};
use crate::{EmError, Points, Result};

/// Which coupling to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouplingKind {
    /// Identity pairing.
    Independent,
    /// Exact optimal assignment on squared Euclidean costs.
    ExactOt,
    /// Entropic OT (log-domain Sinkhorn).
    Sinkhorn,
}

/// A configured coupling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Coupling {
    /// The pairing rule.
    pub kind: CouplingKind,
    /// For `exact_ot`: draw the n pairs i.i.d. from the optimal plan (with replacement)
    /// instead of using the permutation itself.
    pub resample: bool,
    /// For `sinkhorn`: regularisation relative to the largest cost in the batch.
    pub sinkhorn_reg: f64,
    /// For `sinkhorn`: maximal number of iterations.
    pub sinkhorn_iters: usize,
}

impl Default for Coupling {
    fn default() -> Self {
        Self {
            kind: CouplingKind::ExactOt,
            resample: false,
            sinkhorn_reg: 0.05,
            sinkhorn_iters: 200,
        }
    }
}

/// Squared Euclidean cost matrix `C[i,j] = ‖aᵢ − bⱼ‖²` (row-major, f32).
pub fn sq_euclidean_cost(a: &Points, b: &Points) -> Vec<f32> {
    let mut c = Vec::with_capacity(a.len() * b.len());
    for ra in a.rows() {
        for rb in b.rows() {
            c.push(sq_dist(ra, rb) as f32);
        }
    }
    c
}

impl Coupling {
    /// Pairs `x0` with `x1` (equal sizes and dimensions); returns the paired batches.
    pub fn pair(&self, x0: &Points, x1: &Points, rng: &mut Rng) -> Result<(Points, Points)> {
        if x0.len() != x1.len() {
            return Err(EmError::shape(
                "coupling",
                format!(
                    "{} target points to match {} source points",
                    x0.len(),
                    x0.len()
                ),
                format!("{}", x1.len()),
            ));
        }
        x1.expect_dim(x0.dim(), "coupling")?;
        let n = x0.len();
        match self.kind {
            CouplingKind::Independent => Ok((x0.clone(), x1.clone())),
            CouplingKind::ExactOt => {
                let cost = sq_euclidean_cost(x0, x1);
                let assign = assignment::solve(&cost, n);
                if self.resample {
                    let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
                    let cols: Vec<usize> = rows.iter().map(|&i| assign[i]).collect();
                    Ok((x0.select(&rows), x1.select(&cols)))
                } else {
                    Ok((x0.clone(), x1.select(&assign)))
                }
            }
            CouplingKind::Sinkhorn => {
                let cost: Vec<f64> = sq_euclidean_cost(x0, x1)
                    .into_iter()
                    .map(f64::from)
                    .collect();
                let max = cost.iter().cloned().fold(0.0, f64::max).max(1e-12);
                let lp = sinkhorn::log_plan(
                    &cost,
                    n,
                    n,
                    self.sinkhorn_reg * max,
                    self.sinkhorn_iters,
                    1e-9,
                );
                let pairs = sinkhorn::sample_pairs(&lp, n, n, rng);
                let (r, c): (Vec<usize>, Vec<usize>) = pairs.into_iter().unzip();
                Ok((x0.select(&r), x1.select(&c)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{fill_normal, stream, Purpose};

    fn gauss(n: usize, seed: u64) -> Points {
        let mut r = stream(seed, Purpose::Data, 0);
        let mut v = vec![0.0; n * 2];
        fill_normal(&mut r, &mut v);
        Points::new(n, 2, v).unwrap()
    }

    fn total_cost(a: &Points, b: &Points) -> f64 {
        a.rows().zip(b.rows()).map(|(x, y)| sq_dist(x, y)).sum()
    }

    #[test]
    fn exact_ot_never_costs_more_than_independent_and_keeps_the_multiset() {
        let (x0, x1) = (gauss(64, 1), gauss(64, 2));
        let mut rng = stream(0, Purpose::TrainStep, 0);
        let ot = Coupling::default();
        let (a, b) = ot.pair(&x0, &x1, &mut rng).unwrap();
        assert_eq!(a, x0);
        assert!(total_cost(&a, &b) < total_cost(&x0, &x1));
        let mut s1: Vec<_> = x1.as_slice().to_vec();
        let mut s2: Vec<_> = b.as_slice().to_vec();
        s1.sort_by(f32::total_cmp);
        s2.sort_by(f32::total_cmp);
        assert_eq!(s1, s2);
    }

    #[test]
    fn resampled_pairs_are_pairs_of_the_plan() {
        let (x0, x1) = (gauss(32, 3), gauss(32, 4));
        let mut rng = stream(0, Purpose::TrainStep, 1);
        let exact = Coupling::default().pair(&x0, &x1, &mut rng).unwrap();
        let c = Coupling {
            resample: true,
            ..Coupling::default()
        };
        let (a, b) = c.pair(&x0, &x1, &mut rng).unwrap();
        for (ra, rb) in a.rows().zip(b.rows()) {
            let i = x0.rows().position(|r| r == ra).unwrap();
            assert_eq!(rb, exact.1.row(i));
        }
    }

    #[test]
    fn sinkhorn_with_small_reg_is_close_to_exact() {
        let (x0, x1) = (gauss(16, 5), gauss(16, 6));
        let mut rng = stream(0, Purpose::TrainStep, 2);
        let exact = Coupling::default().pair(&x0, &x1, &mut rng).unwrap();
        let c = Coupling {
            kind: CouplingKind::Sinkhorn,
            sinkhorn_reg: 0.002,
            sinkhorn_iters: 3000,
            ..Coupling::default()
        };
        let (a, b) = c.pair(&x0, &x1, &mut rng).unwrap();
        let k_exact = total_cost(&exact.0, &exact.1);
        let k_sink = total_cost(&a, &b);
        let k_ind = total_cost(&x0, &x1);
        // sampled pairs from a near-deterministic plan cost about as much as the exact plan
        assert!(
            k_sink < k_exact + 0.25 * (k_ind - k_exact),
            "{k_sink} {k_exact} {k_ind}"
        );
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut rng = stream(0, Purpose::TrainStep, 0);
        let e = Coupling::default()
            .pair(&gauss(3, 1), &gauss(4, 1), &mut rng)
            .unwrap_err();
        assert!(e.to_string().contains("coupling"));
    }
}
