//! A convolution's geometry ([`ConvGeom`], also that of the tensor [`super::ConvNet`]) and the
//! kernels on f32 host buffers shared by [`super::HostConv`] and [`super::host_tape::HostTape`]:
//! im2col, its adjoint col2im, and the transposed convolution col2im(Wᵀ·g) that is a
//! convolution's input gradient; plus the two map layouts they read.
//!
//! A block of n maps of C channels is stored either channel-major, `[C, n, H, W]` (the layout
//! of [`super::HostConv`], one gemm per layer over the block), or image-major, `[n, C, H, W]`
//! (NCHW, the layout of the tensor networks). The patch matrix is always
//! `[C_in·k², n·H_out·W_out]`, so `W · cols` is the channel-major output.

use super::host_mlp::gemm_into;

/// How a block of maps is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// `[C, n, H, W]`.
    ChannelMajor,
    /// `[n, C, H, W]`.
    ImageMajor,
}

impl Layout {
    /// Offset of map (channel `ci` of image `b`) in a block of `n` images of `c` channels of
    /// `plane` values.
    fn offset(self, ci: usize, b: usize, n: usize, c: usize, plane: usize) -> usize {
        match self {
            Layout::ChannelMajor => (ci * n + b) * plane,
            Layout::ImageMajor => (b * c + ci) * plane,
        }
    }
}

/// The geometry of a 2-D convolution with a square k×k kernel, zero padding `pad` on every
/// side and stride `stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConvGeom {
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl ConvGeom {
    /// The geometry of a convolution of `h × w` maps (output size from the usual formula).
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        h: usize,
        w: usize,
    ) -> Self {
        Self {
            c_in,
            c_out,
            k,
            stride,
            pad,
            h_in: h,
            w_in: w,
            h_out: (h + 2 * pad - k) / stride + 1,
            w_out: (w + 2 * pad - k) / stride + 1,
        }
    }

    pub fn plane_in(&self) -> usize {
        self.h_in * self.w_in
    }

    pub fn plane_out(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Output padding of the transposed convolution that restores the input size (per axis).
    pub fn out_pad(&self) -> [usize; 2] {
        let (k, p, s) = (self.k, self.pad, self.stride);
        [
            self.h_in + 2 * p - k - (self.h_out - 1) * s,
            self.w_in + 2 * p - k - (self.w_out - 1) * s,
        ]
    }

    /// Rows of the patch matrix: C_in·k².
    pub fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// For kernel offset `off` along an axis of input size `size`: the output positions
    /// `lo..hi` whose input position o·s + off − p lies inside the map.
    fn valid(&self, off: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = p.saturating_sub(off).div_ceil(s).min(out);
        // o·s + off − p ≤ size − 1  ⇔  o ≤ (size − 1 + p − off) / s
        let hi = if size + p > off {
            ((size - 1 + p - off) / s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// cols(h): the patch matrix `[C_in·k², n·H_out·W_out]` of a block `h` of `n` maps.
    pub fn im2col(&self, h: &[f32], n: usize, layout: Layout, cols: &mut Vec<f32>) {
        let (k, p, s) = (self.k, self.pad, self.stride);
        let (pi, po) = (self.plane_in(), self.plane_out());
        // every entry is written below: a reused buffer needs no clearing
        cols.resize(self.patch() * n * po, 0.0);
        for (r, row) in cols.chunks_mut(n * po).enumerate() {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let (y_lo, y_hi) = self.valid(kh, self.h_in, self.h_out);
            let (x_lo, x_hi) = self.valid(kw, self.w_in, self.w_out);
            for (b, dst) in row.chunks_mut(po).enumerate() {
                let src = &h[layout.offset(ci, b, n, self.c_in, pi)..][..pi];
                for (yo, drow) in dst.chunks_mut(self.w_out).enumerate() {
                    if !(y_lo..y_hi).contains(&yo) {
                        drow.fill(0.0);
                        continue;
                    }
                    let srow = &src[(yo * s + kh - p) * self.w_in..][..self.w_in];
                    drow[..x_lo].fill(0.0);
                    drow[x_hi..].fill(0.0);
                    if s == 1 {
                        // a contiguous run (a memcpy)
                        drow[x_lo..x_hi].copy_from_slice(&srow[x_lo + kw - p..x_hi + kw - p]);
                    } else {
                        for xo in x_lo..x_hi {
                            drow[xo] = srow[xo * s + kw - p];
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col`]: sums patch-matrix entries back onto a block `out` of
    /// `n` input-sized maps.
    pub fn col2im(&self, cols: &[f32], n: usize, layout: Layout, out: &mut Vec<f32>) {
        let (k, p, s) = (self.k, self.pad, self.stride);
        let (pi, po) = (self.plane_in(), self.plane_out());
        out.clear();
        out.resize(self.c_in * n * pi, 0.0);
        for (r, row) in cols.chunks(n * po).take(self.patch()).enumerate() {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let (y_lo, y_hi) = self.valid(kh, self.h_in, self.h_out);
            let (x_lo, x_hi) = self.valid(kw, self.w_in, self.w_out);
            for (b, src) in row.chunks(po).enumerate() {
                let dst = &mut out[layout.offset(ci, b, n, self.c_in, pi)..][..pi];
                for yo in y_lo..y_hi {
                    let drow = &mut dst[(yo * s + kh - p) * self.w_in..][..self.w_in];
                    let srow = &src[yo * self.w_out..][..self.w_out];
                    if s == 1 {
                        let dst = &mut drow[x_lo + kw - p..x_hi + kw - p];
                        dst.iter_mut()
                            .zip(&srow[x_lo..x_hi])
                            .for_each(|(d, v)| *d += v);
                    } else {
                        for xo in x_lo..x_hi {
                            drow[xo * s + kw - p] += srow[xo];
                        }
                    }
                }
            }
        }
    }

    /// convᵀ(g, W) = col2im(Wᵀ g) for a channel-major `g: [C_out, n, H_out, W_out]` and the
    /// kernel `w: [C_out, C_in·k²]`, into `out` (laid out as `layout`).
    pub fn transpose_conv(
        &self,
        w: &[f32],
        g: &[f32],
        n: usize,
        layout: Layout,
        work: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        let m = n * self.plane_out();
        // overwritten by the product
        work.resize(self.patch() * m, 0.0);
        gemm_into(
            work,
            (w, true),
            (g, false),
            self.patch(),
            self.c_out,
            m,
            false,
        );
        self.col2im(work, n, layout, out);
    }

    /// z = W · cols + b (channel-major `[C_out, n·H_out·W_out]`) into `out`, from the patch
    /// matrix `cols` of the block.
    pub fn forward(&self, w: &[f32], bias: &[f32], cols: &[f32], n: usize, out: &mut Vec<f32>) {
        let m = n * self.plane_out();
        out.clear();
        for &b in bias {
            out.extend(std::iter::repeat_n(b, m));
        }
        gemm_into(
            out,
            (w, false),
            (cols, false),
            self.c_out,
            self.patch(),
            m,
            true,
        );
    }
}

/// `[n, C, P]` rows → `[C, n, P]`, into `out`.
pub(super) fn to_channel_major(x: &[f32], n: usize, c: usize, p: usize, out: &mut Vec<f32>) {
    // every entry is written below
    out.resize(n * c * p, 0.0);
    for i in 0..n {
        for ci in 0..c {
            out[(ci * n + i) * p..][..p].copy_from_slice(&x[(i * c + ci) * p..][..p]);
        }
    }
}

/// `[C, n, P]` → `[n, C, P]` rows, into `out`.
pub(super) fn to_row_major(h: &[f32], n: usize, c: usize, p: usize, out: &mut Vec<f32>) {
    // every entry is written below
    out.resize(n * c * p, 0.0);
    for i in 0..n {
        for ci in 0..c {
            out[(i * c + ci) * p..][..p].copy_from_slice(&h[(ci * n + i) * p..][..p]);
        }
    }
}

/// Lanes of the vectorisable sums below.
const LANES: usize = 16;

/// Σ aᵢ in [`LANES`] f32 partial sums (vectorises, unlike a serial sum; error ≈ √(n/16) ulp).
pub(super) fn lane_sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (s, v) in acc.iter_mut().zip(c) {
            *s += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ aᵢbᵢ in [`LANES`] f32 partial sums, like [`lane_sum`].
pub(super) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}
