//! Exact linear assignment: the permutation π minimising Σᵢ C[i, π(i)] for a dense square cost
//! matrix, by shortest augmenting paths with dual potentials (the Jonker–Volgenant family),
//! warm-started with a column reduction and a greedy tight matching.
//!
//! Invariant kept throughout: the reduced costs C[i,j] − u[i] − v[j] are ≥ 0 and are 0 on every
//! assigned pair, so a complete assignment is optimal (LP duality). Works in `f32` or `f64`;
//! ties and duplicate points are handled (any optimal permutation may be returned).

/// Float types the solver accepts.
pub trait CostFloat:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
{
    /// A value larger than any reduced cost.
    const INF: Self;
    /// Zero.
    const ZERO: Self;
    /// Conversion for checks and reporting.
    fn to_f64(self) -> f64;
}

impl CostFloat for f32 {
    const INF: Self = f32::INFINITY;
    const ZERO: Self = 0.0;
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl CostFloat for f64 {
    const INF: Self = f64::INFINITY;
    const ZERO: Self = 0.0;
    fn to_f64(self) -> f64 {
        self
    }
}

/// Solves the assignment problem for the row-major `n × n` matrix `cost` (finite entries).
///
/// Returns `assign` with `assign[row] = column`. Panics if `cost.len() != n * n`; callers
/// validate shapes and finiteness first (see [`super::OtCoupling`]).
pub fn solve<T: CostFloat>(cost: &[T], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "assignment cost must be n×n");
    if n == 0 {
        return Vec::new();
    }
    let c = |i: usize, j: usize| cost[i * n + j];
    const FREE: usize = usize::MAX;
    // Column reduction: v[j] = min_i C[i,j], u = 0 keeps all reduced costs ≥ 0.
    let mut u = vec![T::ZERO; n];
    let mut v = vec![T::INF; n];
    let mut argmin = vec![0usize; n];
    for i in 0..n {
        let row = &cost[i * n..(i + 1) * n];
        for j in 0..n {
            if row[j] < v[j] {
                v[j] = row[j];
                argmin[j] = i;
            }
        }
    }
    // Greedy tight matching: column j takes its argmin row if that row is still free.
    let mut row_of = vec![FREE; n];
    let mut col_of = vec![FREE; n];
    for j in 0..n {
        let i = argmin[j];
        if col_of[i] == FREE {
            col_of[i] = j;
            row_of[j] = i;
        }
    }
    // Shortest augmenting path (Dijkstra on reduced costs) from each free row.
    let mut min_slack = vec![T::INF; n];
    let mut prev_col = vec![FREE; n];
    let mut used = vec![false; n];
    let mut used_cols: Vec<usize> = Vec::with_capacity(n);
    for start in 0..n {
        if col_of[start] != FREE {
            continue;
        }
        min_slack.iter_mut().for_each(|m| *m = T::INF);
        used.iter_mut().for_each(|b| *b = false);
        used_cols.clear();
        let mut row = start;
        let mut prev = FREE; // column through which `row` was reached (FREE for the start row)
        let mut acc = T::ZERO; // total delta so far: distances are measured from the start row
        let end_col;
        loop {
            let ui = u[row];
            let mut best = T::INF;
            let mut best_j = FREE;
            for j in 0..n {
                if used[j] {
                    continue;
                }
                let cur = acc + (c(row, j) - ui - v[j]);
                if cur < min_slack[j] {
                    min_slack[j] = cur;
                    prev_col[j] = prev;
                }
                if min_slack[j] < best {
                    best = min_slack[j];
                    best_j = j;
                }
            }
            // Every column reachable: costs are finite, so best_j is set.
            let j = best_j;
            used[j] = true;
            used_cols.push(j);
            acc = best;
            if row_of[j] == FREE {
                end_col = j;
                break;
            }
            prev = j;
            row = row_of[j];
        }
        // Update duals: rows and columns on the tree move by (acc − their distance).
        for &j in &used_cols {
            let dj = min_slack[j];
            // the row matched to j (if any) was reached at distance dj
            v[j] -= acc - dj;
            let r = row_of[j];
            if r != FREE {
                u[r] += acc - dj;
            }
        }
        u[start] += acc;
        // Augment along prev_col links.
        let mut j = end_col;
        loop {
            let pj = prev_col[j];
            let r = if pj == FREE { start } else { row_of[pj] };
            row_of[j] = r;
            col_of[r] = j;
            if pj == FREE {
                break;
            }
            j = pj;
        }
    }
    col_of
}

/// Total cost of an assignment.
pub fn assignment_cost<T: CostFloat>(cost: &[T], n: usize, assign: &[usize]) -> f64 {
    assign
        .iter()
        .enumerate()
        .map(|(i, &j)| cost[i * n + j].to_f64())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose, RngExt};
    use proptest::prelude::*;

    fn brute_force(cost: &[f64], n: usize) -> f64 {
        fn rec(cost: &[f64], n: usize, i: usize, used: &mut Vec<bool>, acc: f64, best: &mut f64) {
            if acc >= *best {
                return;
            }
            if i == n {
                *best = acc;
                return;
            }
            for j in 0..n {
                if !used[j] {
                    used[j] = true;
                    rec(cost, n, i + 1, used, acc + cost[i * n + j], best);
                    used[j] = false;
                }
            }
        }
        let mut best = f64::INFINITY;
        rec(cost, n, 0, &mut vec![false; n], 0.0, &mut best);
        best
    }

    fn is_permutation(a: &[usize]) -> bool {
        let mut seen = vec![false; a.len()];
        a.iter()
            .all(|&j| j < a.len() && !std::mem::replace(&mut seen[j], true))
    }

    fn random_cost(n: usize, seed: u64, levels: Option<u32>) -> Vec<f64> {
        let mut r = stream(seed, Purpose::Eval, n as u64);
        (0..n * n)
            .map(|_| match levels {
                // few distinct values: many ties
                Some(k) => (r.random::<u32>() % k) as f64,
                None => r.random::<f64>() * 10.0,
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_for_all_small_n() {
        for n in 0..=8 {
            for seed in 0..30 {
                for levels in [None, Some(3), Some(1)] {
                    let c = random_cost(n, seed, levels);
                    let a = solve(&c, n);
                    assert!(is_permutation(&a));
                    let got = assignment_cost(&c, n, &a);
                    let want = brute_force(&c, n);
                    assert!(
                        (got - want).abs() < 1e-9,
                        "n={n} seed={seed} {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn f32_agrees_with_f64() {
        let n = 64;
        let c = random_cost(n, 3, None);
        let c32: Vec<f32> = c.iter().map(|&x| x as f32).collect();
        let a64 = solve(&c, n);
        let a32 = solve(&c32, n);
        let (k64, k32) = (assignment_cost(&c, n, &a64), assignment_cost(&c, n, &a32));
        assert!((k64 - k32).abs() < 1e-3 * k64.abs().max(1.0));
    }

    #[test]
    fn identity_is_optimal_for_diagonal_dominant_cost() {
        // C[i,j] = (i − j)²: the identity has cost 0 and is the unique optimum.
        let n = 50;
        let c: Vec<f64> = (0..n * n)
            .map(|k| ((k / n) as f64 - (k % n) as f64).powi(2))
            .collect();
        assert_eq!(solve(&c, n), (0..n).collect::<Vec<_>>());
    }

    fn no_improving_two_swap(c: &[f64], n: usize, a: &[usize]) -> bool {
        for i in 0..n {
            for k in i + 1..n {
                let now = c[i * n + a[i]] + c[k * n + a[k]];
                let swapped = c[i * n + a[k]] + c[k * n + a[i]];
                if swapped < now - 1e-9 {
                    return false;
                }
            }
        }
        true
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn result_is_a_permutation_with_no_improving_swap(
            n in 1usize..40,
            pts in proptest::collection::vec(-3i32..3, 160),
            dup in any::<bool>(),
        ) {
            // Squared distances between integer points in ℝ²: many ties; optionally duplicate rows.
            let p = |k: usize| (pts[(2 * k) % 160] as f64, pts[(2 * k + 1) % 160] as f64);
            let q = |k: usize| (pts[(2 * k + 80) % 160] as f64, pts[(2 * k + 81) % 160] as f64);
            let c: Vec<f64> = (0..n * n).map(|idx| {
                let (i, j) = (idx / n, idx % n);
                let i = if dup { i / 2 } else { i };
                let (a, b) = (p(i), q(j));
                (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)
            }).collect();
            let a = solve(&c, n);
            prop_assert!(is_permutation(&a));
            prop_assert!(no_improving_two_swap(&c, n, &a));
            if n <= 7 {
                prop_assert!((assignment_cost(&c, n, &a) - brute_force(&c, n)).abs() < 1e-9);
            }
        }
    }
}
