//! A convolution's geometry ([`ConvGeom`], also that of the tensor [`super::ConvNet`]) and the
//! kernels on f32 host buffers shared by [`super::HostConv`] and [`super::host_tape::HostTape`]:
//! im2col, its adjoint col2im, the transposed convolution col2im(Wᵀ·g) that is a
//! convolution's input gradient, and one image's convolution.
//!
//! A block of n maps of C channels is stored channel-major, `[C, n, H, W]` (the layout of
//! [`super::HostConv`], one gemm per layer over the block); the patch matrix is
//! `[C_in·k², n·H_out·W_out]`, so `W · cols` is the channel-major output. One image
//! (`[C, H, W]`, the NCHW rows of the tensor networks) is the block with n = 1.

use super::host_mlp::{gemm_into, gemm_strided};

/// Most patch-matrix values of one tile of [`ConvGeom::forward_tiled`] and
/// [`ConvGeom::transpose_conv_into`] (256 KiB): a tile stays in a core's L2 cache between
/// being written and being read.
const TILE_VALUES: usize = 1 << 16;

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

/// The images of a channel-major block `[C, n, H, W]` that a patch matrix covers: `count`
/// of them from `first` (the patch matrix then has `count·H_out·W_out` columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Images {
    /// Images in the block.
    pub n: usize,
    pub first: usize,
    pub count: usize,
}

impl Images {
    /// All `n` images of the block.
    pub fn all(n: usize) -> Self {
        Self {
            n,
            first: 0,
            count: n,
        }
    }

    /// The index of map (channel `ci`, image `first + b`) in the block.
    fn map(&self, ci: usize, b: usize) -> usize {
        ci * self.n + self.first + b
    }

    /// Asserts that the images lie in the block and the block fills `len` values of maps.
    fn check(&self, channels: usize, plane: usize, len: usize) {
        assert!(self.first + self.count <= self.n && len >= channels * self.n * plane);
    }
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

    /// cols(h): the patch matrix `[C_in·k², n·H_out·W_out]` of a channel-major block `h` of
    /// `n` maps.
    pub fn im2col(&self, h: &[f32], n: usize, cols: &mut Vec<f32>) {
        self.im2col_images(h, Images::all(n), cols)
    }

    /// The patch matrix `[C_in·k², count·H_out·W_out]` of some `images` of a channel-major
    /// block `h`.
    pub fn im2col_images(&self, h: &[f32], images: Images, cols: &mut Vec<f32>) {
        images.check(self.c_in, self.plane_in(), h.len());
        // every entry is written below: a reused buffer needs no clearing
        cols.resize(self.patch() * images.count * self.plane_out(), 0.0);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            if self.is_halving_3x3() {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { self.im2col_halving_avx2(h, images, cols) };
            }
            // SAFETY: as above.
            return unsafe { self.im2col_avx2(h, images, cols) };
        }
        self.fill_patches(h, images, cols)
    }

    /// A 3×3 convolution with stride 2 and padding 1 of even-sized maps (H_in = 2·H_out,
    /// W_in = 2·W_out): the down-sampling of the conv and UNet potentials, whose strided row
    /// gathers and scatters have AVX2 kernels of their own.
    fn is_halving_3x3(&self) -> bool {
        (self.k, self.stride, self.pad) == (3, 2, 1)
            && self.h_in == 2 * self.h_out
            && self.w_in == 2 * self.w_out
    }

    /// [`Self::im2col`] of a [`Self::is_halving_3x3`] geometry: each input row is read once,
    /// 16 values at a time, and split into its even (kw = 1) and odd (kw = 2) columns — the
    /// odd ones shifted by one are kw = 0 — for the three patch rows of its (ci, kh).
    ///
    /// # Safety
    /// The CPU must support AVX2; `h` must hold `C_in·n` input maps and `cols` the patch
    /// matrix (both asserted).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn im2col_halving_avx2(&self, h: &[f32], images: Images, cols: &mut [f32]) {
        use std::arch::x86_64::*;
        let (pi, po) = (self.plane_in(), self.plane_out());
        let (w_in, w_out) = (self.w_in, self.w_out);
        let row_len = images.count * po;
        images.check(self.c_in, pi, h.len());
        assert!(cols.len() >= self.patch() * row_len);
        let (src, dst) = (h.as_ptr(), cols.as_mut_ptr());
        // lane j of a kw = 0 vector is lane j − 1 of the odd one (lane 0: the previous chunk's
        // lane 7)
        let rotate = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
        for ci in 0..self.c_in {
            for kh in 0..3 {
                // patch rows (ci, kh, kw = 0, 1, 2)
                let rows = [0, 1, 2].map(|kw| dst.add((ci * 9 + kh * 3 + kw) * row_len));
                for b in 0..images.count {
                    let plane = src.add(images.map(ci, b) * pi);
                    for yo in 0..self.h_out {
                        let out = [0, 1, 2].map(|kw| rows[kw].add(b * po + yo * w_out));
                        // input row 2·yo + kh − 1
                        let Some(y) = (2 * yo + kh).checked_sub(1).filter(|&y| y < self.h_in)
                        else {
                            for o in out {
                                o.write_bytes(0, w_out);
                            }
                            continue;
                        };
                        let line = plane.add(y * w_in);
                        let mut prev_odd = _mm256_setzero_ps();
                        for x0 in (0..w_out).step_by(8) {
                            let have = w_in - 2 * x0;
                            let lo = _mm256_maskload_ps(line.add(2 * x0), lanes(have));
                            let hi = _mm256_maskload_ps(
                                line.wrapping_add(2 * x0 + 8),
                                lanes(have.saturating_sub(8)),
                            );
                            let even = in_order(_mm256_shuffle_ps::<0b10_00_10_00>(lo, hi));
                            let odd = in_order(_mm256_shuffle_ps::<0b11_01_11_01>(lo, hi));
                            let shifted = _mm256_blend_ps::<1>(
                                _mm256_permutevar8x32_ps(odd, rotate),
                                _mm256_permutevar8x32_ps(prev_odd, rotate),
                            );
                            prev_odd = odd;
                            let keep = w_out - x0;
                            store_first(out[0].add(x0), keep, shifted);
                            store_first(out[1].add(x0), keep, even);
                            store_first(out[2].add(x0), keep, odd);
                        }
                    }
                }
            }
        }
    }

    /// [`Self::fill_patches`] in AVX2 code (32-byte moves for the row copies).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn im2col_avx2(&self, h: &[f32], images: Images, cols: &mut [f32]) {
        self.fill_patches(h, images, cols)
    }

    /// Writes every entry of the patch matrix `cols` of [`Self::im2col`].
    #[inline(always)]
    fn fill_patches(&self, h: &[f32], images: Images, cols: &mut [f32]) {
        let (k, p, s) = (self.k, self.pad, self.stride);
        let (pi, po) = (self.plane_in(), self.plane_out());
        for (r, row) in cols.chunks_mut(images.count * po).enumerate() {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let (y_lo, y_hi) = self.valid(kh, self.h_in, self.h_out);
            let (x_lo, x_hi) = self.valid(kw, self.w_in, self.w_out);
            for (b, dst) in row.chunks_mut(po).enumerate() {
                let src = &h[images.map(ci, b) * pi..][..pi];
                for (yo, drow) in dst.chunks_mut(self.w_out).enumerate() {
                    if !(y_lo..y_hi).contains(&yo) {
                        zero_run(drow);
                        continue;
                    }
                    let srow = &src[(yo * s + kh - p) * self.w_in..][..self.w_in];
                    zero_run(&mut drow[..x_lo]);
                    zero_run(&mut drow[x_hi..]);
                    // x_lo == x_hi where no input column lies under this kernel offset (a map
                    // narrower than the kernel): then x_lo + kw − p may be negative
                    if s == 1 && x_lo < x_hi {
                        copy_run(&mut drow[x_lo..x_hi], &srow[x_lo + kw - p..]);
                    } else {
                        for xo in x_lo..x_hi {
                            drow[xo] = srow[xo * s + kw - p];
                        }
                    }
                }
            }
        }
    }

    /// col2im, the adjoint of [`Self::im2col_images`]: sums the entries of the patch matrix
    /// of some `images` back onto their input-sized maps in the channel-major block `out`
    /// (overwritten; the other images' maps are left as they are).
    pub fn col2im_images(&self, cols: &[f32], images: Images, out: &mut [f32]) {
        images.check(self.c_in, self.plane_in(), out.len());
        #[cfg(target_arch = "x86_64")]
        if self.is_halving_3x3() && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { self.col2im_halving_avx2(cols, images, out) };
        }
        self.scatter_patches(cols, images, out)
    }

    /// [`Self::col2im_images`] by scattering every patch row onto its map (any geometry).
    fn scatter_patches(&self, cols: &[f32], images: Images, out: &mut [f32]) {
        let (k, p, s) = (self.k, self.pad, self.stride);
        let (pi, po) = (self.plane_in(), self.plane_out());
        for ci in 0..self.c_in {
            out[images.map(ci, 0) * pi..][..images.count * pi].fill(0.0);
        }
        let row_len = images.count * po;
        for (r, row) in cols.chunks(row_len).take(self.patch()).enumerate() {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let (y_lo, y_hi) = self.valid(kh, self.h_in, self.h_out);
            let (x_lo, x_hi) = self.valid(kw, self.w_in, self.w_out);
            for (b, src) in row.chunks(po).enumerate() {
                let dst = &mut out[images.map(ci, b) * pi..][..pi];
                for yo in y_lo..y_hi {
                    let drow = &mut dst[(yo * s + kh - p) * self.w_in..][..self.w_in];
                    let srow = &src[yo * self.w_out..][..self.w_out];
                    if s == 1 && x_lo < x_hi {
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

    /// [`Self::col2im_images`] of a [`Self::is_halving_3x3`] geometry as a gather: input row y
    /// receives kh = 1 from output row y/2 when y is even, else kh = 0 from (y + 1)/2 (when
    /// inside) and kh = 2 from (y − 1)/2; along the row, even column 2x takes kw = 1 at x and
    /// odd column 2x + 1 takes kw = 2 at x plus kw = 0 at x + 1 (when inside). Each output
    /// value is written once (no clearing, no read-modify-write), 16 at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2; `cols` must hold the patch matrix and `out` `C_in·n` input
    /// maps (both asserted).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn col2im_halving_avx2(&self, cols: &[f32], images: Images, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (pi, po) = (self.plane_in(), self.plane_out());
        let (w_in, w_out) = (self.w_in, self.w_out);
        let row_len = images.count * po;
        images.check(self.c_in, pi, out.len());
        assert!(cols.len() >= self.patch() * row_len);
        let (src, dst) = (cols.as_ptr(), out.as_mut_ptr());
        for ci in 0..self.c_in {
            for b in 0..images.count {
                let plane = dst.add(images.map(ci, b) * pi);
                for y in 0..self.h_in {
                    // the (kh, output row) pairs that reach input row y
                    let taps = if y % 2 == 0 {
                        [Some((1, y / 2)), None]
                    } else {
                        [
                            Some((0, y.div_ceil(2))).filter(|&(_, yo)| yo < self.h_out),
                            Some((2, (y - 1) / 2)),
                        ]
                    };
                    let line = plane.add(y * w_in);
                    for x0 in (0..w_out).step_by(8) {
                        let (here, next) = (lanes(w_out - x0), lanes(w_out - x0 - 1));
                        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                        for (kh, yo) in taps.into_iter().flatten() {
                            let at = |kw: usize| {
                                src.add((ci * 9 + kh * 3 + kw) * row_len + b * po + yo * w_out)
                            };
                            even = _mm256_add_ps(even, _mm256_maskload_ps(at(1).add(x0), here));
                            let right = _mm256_maskload_ps(at(2).add(x0), here);
                            let left = _mm256_maskload_ps(at(0).add(x0 + 1), next);
                            odd = _mm256_add_ps(odd, _mm256_add_ps(right, left));
                        }
                        // [e0 o0 e1 o1 | e4 o4 e5 o5] and [e2 o2 e3 o3 | e6 o6 e7 o7]
                        let (lo, hi) =
                            (_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd));
                        let have = w_in - 2 * x0;
                        let first = _mm256_permute2f128_ps::<0x20>(lo, hi);
                        store_first(line.add(2 * x0), have, first);
                        if have > 8 {
                            let second = _mm256_permute2f128_ps::<0x31>(lo, hi);
                            store_first(line.add(2 * x0 + 8), have - 8, second);
                        }
                    }
                }
            }
        }
    }

    /// convᵀ(g, W) = col2im(Wᵀ g) for a channel-major `g: [C_out, n, H_out, W_out]` and the
    /// kernel `w: [C_out, C_in·k²]`, into the channel-major `out` (resized).
    pub fn transpose_conv(
        &self,
        w: &[f32],
        g: &[f32],
        n: usize,
        work: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        out.resize(self.c_in * n * self.plane_in(), 0.0);
        self.transpose_conv_into(w, g, n, work, out);
    }

    /// [`Self::transpose_conv`] into a slice of `C_in·n·H_in·W_in` values; with n = 1 one
    /// image's transposed convolution, `[C_in, H_in, W_in]` from `g: [C_out, H_out·W_out]`.
    /// Runs in tiles of [`Self::tile_images`] images: the tile's Wᵀg stays in cache for its
    /// col2im.
    pub fn transpose_conv_into(
        &self,
        w: &[f32],
        g: &[f32],
        n: usize,
        work: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        self.transpose_conv_in_tiles(w, g, (n, self.tile_images()), work, out)
    }

    /// [`Self::transpose_conv_into`] in tiles of `per_tile` images.
    fn transpose_conv_in_tiles(
        &self,
        w: &[f32],
        g: &[f32],
        (n, per_tile): (usize, usize),
        work: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (po, patch) = (self.plane_out(), self.patch());
        for images in tiles(n, per_tile) {
            let columns = images.count * po;
            // overwritten by the product
            work.resize(patch * columns, 0.0);
            // Wᵀ: [patch × C_out] of the row-major [C_out, patch] kernel; the tile's columns of
            // g: [C_out × columns] with g's row stride n·H_out·W_out
            let w_t = (w, (1, patch));
            let g_tile = (&g[images.first * po..], (n * po, 1));
            gemm_strided(
                (work, (columns, 1)),
                w_t,
                g_tile,
                patch,
                self.c_out,
                columns,
                false,
            );
            self.col2im_images(work, images, out);
        }
    }

    /// Images per tile: as many as keep a tile's patch matrix within [`TILE_VALUES`] (at
    /// least one).
    fn tile_images(&self) -> usize {
        (TILE_VALUES / (self.patch() * self.plane_out()).max(1)).max(1)
    }

    /// z = W · cols(h) + b like [`Self::forward`], from the block `h` of `n` maps, in tiles
    /// of [`Self::tile_images`] images whose patch matrix (in `work`) stays in cache — for
    /// evaluations that keep no patch matrix for a parameter gradient.
    pub fn forward_tiled(
        &self,
        (w, bias): (&[f32], &[f32]),
        h: &[f32],
        n: usize,
        work: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        self.forward_in_tiles((w, bias), h, (n, self.tile_images()), work, out)
    }

    /// [`Self::forward_tiled`] in tiles of `per_tile` images.
    fn forward_in_tiles(
        &self,
        (w, bias): (&[f32], &[f32]),
        h: &[f32],
        (n, per_tile): (usize, usize),
        work: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        let (po, patch) = (self.plane_out(), self.patch());
        fill_bias(bias, n * po, out);
        for images in tiles(n, per_tile) {
            let columns = images.count * po;
            self.im2col_images(h, images, work);
            let z_tile = (&mut out[images.first * po..], (n * po, 1));
            let cols = (&work[..], (columns, 1));
            gemm_strided(
                z_tile,
                (w, (patch, 1)),
                cols,
                self.c_out,
                patch,
                columns,
                true,
            );
        }
    }

    /// A 1×1 convolution without padding or stride, whose patch matrix is its input.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The patch matrix `[C_in·k², H_out·W_out]` of one image `x: [C_in, H_in, W_in]`: `x`
    /// itself for a pointwise convolution, else im2col into `cols`.
    pub fn image_patches<'a>(&self, x: &'a [f32], cols: &'a mut Vec<f32>) -> &'a [f32] {
        if self.is_pointwise() {
            return x;
        }
        self.im2col(x, 1, cols);
        cols
    }

    /// One image's convolution, `out = W · patches(x) (+ b)`: `[C_out, H_out·W_out]` from
    /// `x: [C_in, H_in, W_in]` and the kernel `w: [C_out, C_in·k²]`.
    pub fn conv_image(
        &self,
        (w, bias): (&[f32], Option<&[f32]>),
        x: &[f32],
        cols: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let po = self.plane_out();
        if let Some(bias) = bias {
            for (row, &b) in out.chunks_exact_mut(po).zip(bias) {
                row.fill(b);
            }
        }
        let patches = self.image_patches(x, cols);
        let (c_out, patch) = (self.c_out, self.patch());
        gemm_into(
            out,
            (w, false),
            (patches, false),
            c_out,
            patch,
            po,
            bias.is_some(),
        );
    }

    /// z = W · cols + b (channel-major `[C_out, n·H_out·W_out]`) into `out`, from the patch
    /// matrix `cols` of the block.
    pub fn forward(&self, w: &[f32], bias: &[f32], cols: &[f32], n: usize, out: &mut Vec<f32>) {
        let m = n * self.plane_out();
        fill_bias(bias, m, out);
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

/// Tiles of `per_tile` images (the last one shorter) covering a block of `n`.
fn tiles(n: usize, per_tile: usize) -> impl Iterator<Item = Images> {
    (0..n).step_by(per_tile).map(move |first| Images {
        n,
        first,
        count: per_tile.min(n - first),
    })
}

/// `out` = one row of `width` copies per bias value.
fn fill_bias(bias: &[f32], width: usize, out: &mut Vec<f32>) {
    out.clear();
    for &b in bias {
        out.extend(std::iter::repeat_n(b, width));
    }
}

/// An AVX2 lane mask selecting the first `count` (at most 8 used) of 8 f32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes(count: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let count = count.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(count),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Stores the first `count` lanes of `v` at `dst`: one plain store for all 8, else at most
/// three partial ones (4, 2 and 1 lanes). AMD's masked stores cost more than a dozen plain
/// ones, and a copy loop would become a memcpy call.
///
/// # Safety
/// `dst` must be valid for `count.min(8)` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_first(dst: *mut f32, count: usize, v: std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    if count >= 8 {
        return _mm256_storeu_ps(dst, v);
    }
    let (mut part, mut at) = (_mm256_castps256_ps128(v), 0);
    if count >= 4 {
        _mm_storeu_ps(dst, part);
        (part, at) = (_mm256_extractf128_ps::<1>(v), 4);
    }
    if count - at >= 2 {
        _mm_store_sd(dst.add(at).cast::<f64>(), _mm_castps_pd(part));
        (part, at) = (_mm_movehl_ps(part, part), at + 2);
    }
    if count > at {
        _mm_store_ss(dst.add(at), part);
    }
}

/// Puts the 64-bit pairs of an in-lane `_mm256_shuffle_ps` of two 8-value halves back in
/// order: [a0 a2 b0 b2 | a4 a6 b4 b6] → [a0 a2 a4 a6 b0 b2 b4 b6].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn in_order(v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
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

/// dst = src for a short run (a map row), inline with overlapping moves — a `memcpy` call per
/// row costs more than the row.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    match n {
        0 => {}
        // the indices 0, n/2 and n − 1 cover every value of a run of 1 to 3
        1..=3 => [0, n / 2, n - 1].into_iter().for_each(|i| dst[i] = src[i]),
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        _ => {
            let mut i = 0;
            while i + 8 < n {
                dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
                i += 8;
            }
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
    }
}

/// dst = 0 for a short run (a map row or its padding edge), inline like [`copy_run`].
#[inline(always)]
fn zero_run(dst: &mut [f32]) {
    const ZEROS: [f32; 8] = [0.0; 8];
    let n = dst.len();
    match n {
        0 => {}
        1..=3 => [0, n / 2, n - 1].into_iter().for_each(|i| dst[i] = 0.0),
        4..=7 => {
            dst[..4].copy_from_slice(&ZEROS[..4]);
            dst[n - 4..].copy_from_slice(&ZEROS[..4]);
        }
        _ => {
            let mut i = 0;
            while i + 8 < n {
                dst[i..i + 8].copy_from_slice(&ZEROS);
                i += 8;
            }
            dst[n - 8..].copy_from_slice(&ZEROS);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, distinct, non-zero values.
    fn values(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 - 1001.0) / 997.0)
            .collect()
    }

    /// The entry of the patch matrix at row (ci, kh, kw), image b and output (yo, xo), by
    /// the definition: the input at (yo·s + kh − p, xo·s + kw − p), zero outside the map.
    fn patch_entry(
        g: &ConvGeom,
        h: &[f32],
        n: usize,
        row: usize,
        b: usize,
        yo: usize,
        xo: usize,
    ) -> f32 {
        let (ci, kh, kw) = (row / (g.k * g.k), (row / g.k) % g.k, row % g.k);
        let y = (yo * g.stride + kh) as isize - g.pad as isize;
        let x = (xo * g.stride + kw) as isize - g.pad as isize;
        if y < 0 || x < 0 || y >= g.h_in as isize || x >= g.w_in as isize {
            return 0.0;
        }
        h[(ci * n + b) * g.plane_in() + y as usize * g.w_in + x as usize]
    }

    fn geometries() -> Vec<ConvGeom> {
        let mut all = Vec::new();
        // widths 1..=19 cover every branch of the inline row copies (runs of 1–3, 4–7, ≥ 8)
        for w in 1..=19 {
            for (k, stride, pad) in [
                (3, 1, 1),
                (3, 2, 1),
                (1, 1, 0),
                (4, 4, 0),
                (3, 2, 0),
                (5, 3, 2),
                (2, 2, 0),
                (3, 1, 2),
                (5, 1, 2),
            ] {
                let h = 3 + w % 4;
                if w + 2 * pad >= k && h + 2 * pad >= k {
                    all.push(ConvGeom::new(2, 3, k, stride, pad, h, w));
                }
            }
        }
        all
    }

    #[test]
    fn im2col_writes_every_patch_entry_by_the_definition_over_a_dirty_buffer() {
        for g in geometries() {
            let n = 2;
            let h = values(g.c_in * n * g.plane_in(), g.w_in);
            // a reused buffer full of garbage: every entry must be overwritten
            let mut cols = vec![f32::NAN; g.patch() * n * g.plane_out() + 5];
            cols.truncate(0);
            cols.resize(g.patch() * n * g.plane_out(), f32::NAN);
            g.im2col(&h, n, &mut cols);
            let po = g.plane_out();
            for row in 0..g.patch() {
                for b in 0..n {
                    for yo in 0..g.h_out {
                        for xo in 0..g.w_out {
                            let got = cols[(row * n + b) * po + yo * g.w_out + xo];
                            let want = patch_entry(&g, &h, n, row, b, yo, xo);
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{g:?} row {row} b {b} ({yo}, {xo})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// 3×3, stride-2, padding-1 convolutions of even-sized maps (the AVX2 halving kernels),
    /// from one-chunk rows to rows of several 8-wide chunks and a ragged last one.
    fn halving_geometries() -> Vec<ConvGeom> {
        let sizes = [
            (2, 2),
            (4, 6),
            (6, 18),
            (8, 16),
            (16, 2),
            (14, 14),
            (28, 28),
            (10, 34),
        ];
        let all: Vec<ConvGeom> = sizes
            .iter()
            .map(|&(h, w)| ConvGeom::new(2, 3, 3, 2, 1, h, w))
            .collect();
        assert!(all.iter().all(ConvGeom::is_halving_3x3));
        all
    }

    #[test]
    fn halving_im2col_and_col2im_equal_the_definition_and_the_scatter() {
        for g in halving_geometries() {
            let n = 3;
            let h = values(g.c_in * n * g.plane_in(), g.w_in);
            let mut cols = vec![f32::NAN; g.patch() * n * g.plane_out()];
            g.im2col(&h, n, &mut cols);
            let po = g.plane_out();
            for (i, &got) in cols.iter().enumerate() {
                let (row, b, q) = (i / (n * po), (i / po) % n, i % po);
                let want = patch_entry(&g, &h, n, row, b, q / g.w_out, q % g.w_out);
                assert_eq!(got.to_bits(), want.to_bits(), "{g:?} entry {i}");
            }
            // col2im: every value written (over NaN), equal to the plain scatter-add
            let c = values(cols.len(), 9);
            let mut fast = vec![f32::NAN; h.len()];
            g.col2im_images(&c, Images::all(n), &mut fast);
            let mut plain = vec![f32::NAN; h.len()];
            g.scatter_patches(&c, Images::all(n), &mut plain);
            for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{g:?} value {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn tiled_convolutions_equal_the_whole_block_ones_and_touch_only_their_images() {
        for g in geometries().into_iter().chain(halving_geometries()) {
            let n = 5;
            let h = values(g.c_in * n * g.plane_in(), 6);
            let (w, bias) = (values(g.c_out * g.patch(), 7), values(g.c_out, 8));
            let dz = values(g.c_out * n * g.plane_out(), 9);
            let (mut cols, mut whole) = (Vec::new(), Vec::new());
            g.im2col(&h, n, &mut cols);
            g.forward(&w, &bias, &cols, n, &mut whole);
            // convᵀ of the whole block: Wᵀ·dz then the plain scatter
            let mut wt_dz = vec![0.0; g.patch() * n * g.plane_out()];
            gemm_into(
                &mut wt_dz,
                (&w, true),
                (&dz, false),
                g.patch(),
                g.c_out,
                n * g.plane_out(),
                false,
            );
            let mut whole_t = vec![0.0; h.len()];
            g.scatter_patches(&wt_dz, Images::all(n), &mut whole_t);
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{g:?} {what} {i}: {x} vs {y}"
                    );
                }
            };
            for per_tile in [1, 2, n] {
                let (mut work, mut tiled) = (Vec::new(), vec![f32::NAN; 3]);
                g.forward_in_tiles((&w, &bias), &h, (n, per_tile), &mut work, &mut tiled);
                close(&tiled, &whole, "forward");
                let mut tiled_t = vec![f32::NAN; h.len()];
                g.transpose_conv_in_tiles(&w, &dz, (n, per_tile), &mut work, &mut tiled_t);
                close(&tiled_t, &whole_t, "transposed");
            }
            // one tile's col2im writes its images' maps and nothing else
            let images = Images {
                n,
                first: 1,
                count: 2,
            };
            let mut one = vec![f32::NAN; h.len()];
            let mut tile_cols = Vec::new();
            g.im2col_images(&h, images, &mut tile_cols);
            g.col2im_images(&tile_cols, images, &mut one);
            for ci in 0..g.c_in {
                for b in 0..n {
                    let map = &one[(ci * n + b) * g.plane_in()..][..g.plane_in()];
                    let inside = (1..3).contains(&b);
                    assert!(
                        map.iter().all(|v| v.is_nan() != inside),
                        "{g:?} map ({ci}, {b})"
                    );
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for g in geometries() {
            let n = 2;
            let h = values(g.c_in * n * g.plane_in(), 1);
            let c = values(g.patch() * n * g.plane_out(), 2);
            let mut cols = Vec::new();
            g.im2col(&h, n, &mut cols);
            let mut back = vec![f32::NAN; h.len()];
            g.col2im_images(&c, Images::all(n), &mut back);
            let lhs: f64 = cols
                .iter()
                .zip(&c)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let rhs: f64 = h
                .iter()
                .zip(&back)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn one_image_convolution_equals_the_block_convolution() {
        for g in geometries() {
            let n = 3;
            let x_rows = values(n * g.c_in * g.plane_in(), 3);
            let (w, bias) = (values(g.c_out * g.patch(), 4), values(g.c_out, 5));
            // block form: channel-major input, one gemm
            let mut cm = Vec::new();
            to_channel_major(&x_rows, n, g.c_in, g.plane_in(), &mut cm);
            let (mut cols, mut block) = (Vec::new(), Vec::new());
            g.im2col(&cm, n, &mut cols);
            g.forward(&w, &bias, &cols, n, &mut block);
            let mut want = Vec::new();
            to_row_major(&block, n, g.c_out, g.plane_out(), &mut want);
            // image form, into a dirty buffer
            let len_out = g.c_out * g.plane_out();
            let mut got = vec![f32::NAN; n * len_out];
            for (x, out) in x_rows
                .chunks(g.c_in * g.plane_in())
                .zip(got.chunks_mut(len_out))
            {
                g.conv_image((&w, Some(&bias)), x, &mut cols, out);
            }
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{g:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn transposed_outer_product_adds_a_times_b_transposed() {
        use crate::potential::host_mlp::add_nt_product;
        // the last one is past the size formed transposed
        for (n, m, k) in [(3, 17, 5), (8, 40, 72), (1, 1, 1), (6, 9, 2), (64, 3, 1025)] {
            let (a, b) = (values(n * m, 6), values(k * m, 7));
            let start = values(n * k, 8);
            let mut acc = start.clone();
            let mut work = vec![f32::NAN; 2];
            add_nt_product(&mut acc, (&a, &b), [n, m, k], &mut work);
            for i in 0..n {
                for j in 0..k {
                    let dot: f64 = (0..m)
                        .map(|t| f64::from(a[i * m + t]) * f64::from(b[j * m + t]))
                        .sum();
                    let want = f64::from(start[i * k + j]) + dot;
                    let got = f64::from(acc[i * k + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
