//! [`Points`]: a host-side row-major matrix of `n` points in ℝᴰ (f32), the currency between
//! data readers, couplings, samplers, metrics and plots.

use crate::{EmError, Result};

/// `n` points of dimension `dim`, stored row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    n: usize,
    dim: usize,
    data: Vec<f32>,
}

impl Points {
    /// Wraps a row-major buffer; its length must be `n · dim`.
    pub fn new(n: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        if dim == 0 {
            return Err(EmError::invalid("dim", "at least 1", dim));
        }
        if data.len() != n * dim {
            return Err(EmError::shape(
                "Points::new",
                format!("{n}×{dim} = {} values", n * dim),
                format!("{} values", data.len()),
            ));
        }
        Ok(Self { n, dim, data })
    }

    /// `n` points at the origin.
    pub fn zeros(n: usize, dim: usize) -> Self {
        Self {
            n,
            dim,
            data: vec![0.0; n * dim],
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Dimension of each point.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Point `i` as a slice.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Point `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The row-major buffer.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The row-major buffer, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the matrix into its buffer.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Iterates over rows.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks(self.dim)
    }

    /// The rows with the given indices, in that order.
    pub fn select(&self, idx: &[usize]) -> Points {
        let mut data = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Points {
            n: idx.len(),
            dim: self.dim,
            data,
        }
    }

    /// Rows `start..end`.
    pub fn slice_rows(&self, start: usize, end: usize) -> Points {
        Points {
            n: end - start,
            dim: self.dim,
            data: self.data[start * self.dim..end * self.dim].to_vec(),
        }
    }

    /// Stacks `self` on top of `other` (same dimension).
    pub fn concat(&self, other: &Points) -> Result<Points> {
        self.expect_dim(other.dim, "Points::concat")?;
        let mut data = self.data.clone();
        data.extend_from_slice(&other.data);
        Ok(Points {
            n: self.n + other.n,
            dim: self.dim,
            data,
        })
    }

    /// Errors unless the dimension is `dim`.
    pub fn expect_dim(&self, dim: usize, context: &str) -> Result<()> {
        if self.dim != dim {
            return Err(EmError::shape(
                context,
                format!("points of dimension {dim}"),
                format!("dimension {}", self.dim),
            ));
        }
        Ok(())
    }

    /// Errors on the first NaN or infinite entry, naming where it is.
    pub fn check_finite(&self, context: &str) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(k) => Err(EmError::NonFinite {
                context: context.to_string(),
                row: k / self.dim,
                col: k % self.dim,
                value: self.data[k] as f64,
            }),
        }
    }

    /// Per-coordinate mean.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0f64; self.dim];
        for r in self.rows() {
            for (a, &b) in m.iter_mut().zip(r) {
                *a += b as f64;
            }
        }
        let n = self.n.max(1) as f64;
        m.iter_mut().for_each(|a| *a /= n);
        m
    }
}

/// Squared Euclidean distance between two equally long slices, accumulated in f64.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked() {
        let e = Points::new(3, 2, vec![0.0; 5]).unwrap_err().to_string();
        assert!(
            e.contains("3×2 = 6 values") && e.contains("5 values"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_is_located() {
        let p = Points::new(2, 2, vec![0.0, 1.0, f32::NAN, 3.0]).unwrap();
        let e = p.check_finite("data").unwrap_err().to_string();
        assert!(e.contains("row 1, column 0"), "{e}");
    }

    #[test]
    fn select_and_concat() {
        let p = Points::new(3, 1, vec![1.0, 2.0, 3.0]).unwrap();
        assert_eq!(p.select(&[2, 0]).as_slice(), &[3.0, 1.0]);
        assert_eq!(p.concat(&p).unwrap().len(), 6);
        assert_eq!(p.mean(), vec![2.0]);
    }
}
