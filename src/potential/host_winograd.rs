//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2016) for 3×3, stride-1, pad-1
//! convolutions, the bulk of a UNet's work: each 2×2 output tile is
//! Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of its 4×4 input tile d, so the convolution becomes 16 gemms
//! `[C_out, C_in] · [C_in, tiles]`, one per point of the transformed tile, with 16 instead of
//! 36 multiplications per tile and channel pair and no patch matrix. The kernel gradient is
//! the same in reverse: 16 gemms `[C_out, tiles] · [tiles, C_in]` of the transformed output
//! adjoints and inputs.
//!
//! Layouts: the transformed kernel is `[16, C_out, C_in]` (point-major, made once per kernel,
//! [`kernel_transform`]); the transformed inputs `[16, C_in, n·tiles]` and the products
//! `[16, C_out, n·tiles]` of a block of n images live in the caller's work buffer (the tiles
//! of image i of a channel at i·tiles, so that each gemm spans the block); tiles run row by
//! row over the ⌈H/2⌉ × ⌈W/2⌉ grid. Odd sides are padded with zeros and their extra outputs
//! dropped.

use super::host_mlp::gemm_into;
use super::host_ops::ConvGeom;

/// Points of a transformed 4×4 tile.
const POINTS: usize = 16;

/// Whether [`conv_block`] computes the convolution `geom`: a 3×3 kernel, stride 1, padding 1.
pub(super) fn applies(geom: &ConvGeom) -> bool {
    geom.k == 3 && geom.stride == 1 && geom.pad == 1
}

/// Whether [`add_kernel_gradient`] beats im2col for the kernel gradient of `images` images
/// of `geom`: it [`applies`] and they have at least 16 tiles in all (below that, the
/// transforms' fixed cost per kernel outweighs the fewer multiplications: 0.5× the speed of
/// im2col on CIFAR-10's 4×4 maps, 4 tiles per image; 1.06× at 16 tiles, 1.4–2.3× beyond).
pub(super) fn pays_for_kernel_gradient(geom: &ConvGeom, images: usize) -> bool {
    applies(geom) && images * tile_count(geom) >= 16
}

/// G g Gᵀ for every kernel `g` of `w: [C_out, C_in, 3, 3]` into `u: [16, C_out, C_in]`
/// (resized; every value written).
pub(super) fn kernel_transform(w: &[f32], c_out: usize, c_in: usize, u: &mut Vec<f32>) {
    assert_eq!(w.len(), c_out * c_in * 9, "a [C_out, C_in, 3, 3] kernel");
    let plane = c_out * c_in;
    u.resize(POINTS * plane, 0.0);
    // G's rows applied to a triple (a, b, c)
    let g_rows = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    for (oc, g) in w.chunks_exact(9).enumerate() {
        // G g: 4 rows of 3, then (G g) Gᵀ row by row
        let cols: [[f32; 4]; 3] = std::array::from_fn(|j| g_rows(g[j], g[3 + j], g[6 + j]));
        for a in 0..4 {
            let row = g_rows(cols[0][a], cols[1][a], cols[2][a]);
            for (b, value) in row.into_iter().enumerate() {
                u[(4 * a + b) * plane + oc] = value;
            }
        }
    }
}

/// The tile grid of a geometry: (rows, columns) of 2×2 output tiles.
fn tiles(geom: &ConvGeom) -> (usize, usize) {
    (geom.h_out.div_ceil(2), geom.w_out.div_ceil(2))
}

/// A kernel in Winograd form, `u` from [`kernel_transform`], applied as it is or, `transposed`,
/// as the kernel of the transposed convolution (flipped in space, channel axes swapped; for
/// `geom` the transposed convolution's geometry). G·rot180(g)·Gᵀ is G g Gᵀ with the points
/// 0 and 3 of each axis swapped (G J = P G for the tap reversal J), so one form serves both.
#[derive(Clone, Copy)]
pub(super) struct WinogradKernel<'a> {
    pub u: &'a [f32],
    pub transposed: bool,
}

impl WinogradKernel<'_> {
    /// Point ξ of the kernel applied: `[C_out, C_in]` values, read transposed when
    /// `self.transposed` (then they are point P(ξ) of `u`, `[C_in, C_out]` of the forward
    /// convolution).
    fn point(&self, xi: usize, plane: usize) -> &[f32] {
        const SWAP_ENDS: [usize; 4] = [3, 1, 2, 0];
        let source = if self.transposed {
            4 * SWAP_ENDS[xi / 4] + SWAP_ENDS[xi % 4]
        } else {
            xi
        };
        &self.u[source * plane..(source + 1) * plane]
    }
}

/// The convolutions `out = conv(x, w) (+ b)` of a block of n images, `[n, C_out, H, W]` from
/// `x: [n, C_in, H, W]`, for a geometry that [`applies`], with the kernel in Winograd form:
/// 16 gemms over the tiles of all the images. `work` is resized as needed and its contents
/// are not read.
pub(super) fn conv_block(
    geom: &ConvGeom,
    (kernel, bias): (WinogradKernel<'_>, Option<&[f32]>),
    x: &[f32],
    work: &mut Vec<f32>,
    out: &mut [f32],
) {
    debug_assert!(applies(geom));
    let (c_in, c_out) = (geom.c_in, geom.c_out);
    let n = x.len() / (c_in * geom.plane_in());
    let columns = n * tile_count(geom);
    let sizes = [
        scratch_len(geom),
        POINTS * c_in * columns,
        POINTS * c_out * columns,
    ];
    let [scratch, v, m] = split_work(work, sizes);
    for (image, x) in x.chunks_exact(c_in * geom.plane_in()).enumerate() {
        transform_input(geom, x, (image, n), scratch, v);
    }
    let points = m
        .chunks_exact_mut(c_out * columns)
        .zip(v.chunks_exact(c_in * columns));
    for (xi, (m, v)) in points.enumerate() {
        let u = (kernel.point(xi, c_out * c_in), kernel.transposed);
        gemm_into(m, u, (v, false), c_out, c_in, columns, false);
    }
    for (image, out) in out.chunks_exact_mut(c_out * geom.plane_out()).enumerate() {
        transform_output(geom, m, (image, n), bias, scratch, out);
    }
}

/// ∂W += Σ over the images of g ⋆ x, the gradient of a loss with output adjoints
/// `g: [n, C_out, H, W]` with respect to the `[C_out, C_in, 3, 3]` kernel `gw` of the
/// convolution `geom` (which [`applies`]) of the inputs `x: [n, C_in, H, W]`. In the
/// transformed domain it is 16 gemms over the tiles of all the images,
/// ∂U = (A ḡ Aᵀ) (Bᵀ d B)ᵀ, then ∂W += Gᵀ ∂U G. `work` is resized as needed; its contents
/// are not read.
pub(super) fn add_kernel_gradient(
    geom: &ConvGeom,
    (g, x): (&[f32], &[f32]),
    gw: &mut [f32],
    work: &mut Vec<f32>,
) {
    debug_assert!(applies(geom));
    let (c_in, c_out) = (geom.c_in, geom.c_out);
    let n = x.len() / (c_in * geom.plane_in());
    let columns = n * tile_count(geom);
    let kernels = c_out * c_in;
    let sizes = [
        POINTS * kernels,
        scratch_len(geom),
        POINTS * c_in * columns,
        POINTS * c_out * columns,
    ];
    let [du, scratch, v, m] = split_work(work, sizes);
    let pairs = g
        .chunks_exact(c_out * geom.plane_out())
        .zip(x.chunks_exact(c_in * geom.plane_in()));
    for (image, (g, x)) in pairs.enumerate() {
        transform_input(geom, x, (image, n), scratch, v);
        transform_output_adjoint(geom, g, (image, n), scratch, m);
    }
    for (du, (m, v)) in du.chunks_exact_mut(kernels).zip(
        m.chunks_exact(c_out * columns)
            .zip(v.chunks_exact(c_in * columns)),
    ) {
        gemm_into(du, (m, false), (v, true), c_out, columns, c_in, false);
    }
    add_kernel_transform_adjoint(du, kernels, gw);
}

/// gw += Gᵀ ∂U G for every kernel: the adjoint of [`kernel_transform`], from
/// `du: [16, kernels]` into `gw: [kernels, 3, 3]`, in flat passes over chunks of kernels.
fn add_kernel_transform_adjoint(du: &[f32], kernels: usize, gw: &mut [f32]) {
    const CHUNK: usize = 256;
    // Gᵀ ∂U (rows i = 0 … 2 of each column b, at 4i + b), then its product with G
    let mut left = [[0.0f32; CHUNK]; 12];
    let mut full = [[0.0f32; CHUNK]; 9];
    for start in (0..kernels).step_by(CHUNK) {
        let len = CHUNK.min(kernels - start);
        let at = |a: usize, b: usize| &du[(4 * a + b) * kernels + start..][..len];
        for b in 0..4 {
            let (d0, d1, d2, d3) = (at(0, b), at(1, b), at(2, b), at(3, b));
            let [l0, l1, l2] = gt_rows(&mut left, [b, 4 + b, 8 + b]);
            for k in 0..len {
                l0[k] = d0[k] + 0.5 * (d1[k] + d2[k]);
                l1[k] = 0.5 * (d1[k] - d2[k]);
                l2[k] = 0.5 * (d1[k] + d2[k]) + d3[k];
            }
        }
        for i in 0..3 {
            let row = |b: usize| &left[4 * i + b][..len];
            let (q0, q1, q2, q3) = (row(0), row(1), row(2), row(3));
            let [f0, f1, f2] = gt_rows(&mut full, [3 * i, 3 * i + 1, 3 * i + 2]);
            for k in 0..len {
                f0[k] = q0[k] + 0.5 * (q1[k] + q2[k]);
                f1[k] = 0.5 * (q1[k] - q2[k]);
                f2[k] = 0.5 * (q1[k] + q2[k]) + q3[k];
            }
        }
        for (k, gw) in gw[9 * start..9 * (start + len)]
            .chunks_exact_mut(9)
            .enumerate()
        {
            for (g, row) in gw.iter_mut().zip(&full) {
                *g += row[k];
            }
        }
    }
}

/// Three distinct rows of `rows` (indices increasing), mutably.
fn gt_rows<const N: usize>(rows: &mut [[f32; N]], [i, j, k]: [usize; 3]) -> [&mut [f32; N]; 3] {
    let (head, tail) = rows.split_at_mut(j);
    let (mid, tail) = tail.split_at_mut(k - j);
    [&mut head[i], &mut mid[0], &mut tail[0]]
}

/// `work` resized to hold parts of the lengths `lens` (its contents kept), split into them.
fn split_work<const N: usize>(work: &mut Vec<f32>, lens: [usize; N]) -> [&mut [f32]; N] {
    work.resize(lens.iter().sum(), 0.0);
    let mut rest = &mut work[..];
    lens.map(|len| {
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        part
    })
}

/// Tiles per image: ⌈H/2⌉·⌈W/2⌉.
fn tile_count(geom: &ConvGeom) -> usize {
    let (th, tw) = tiles(geom);
    th * tw
}

/// The work values the transforms take besides their outputs: [`transform_input`]
/// 12·(⌈H/2⌉ + 1)·⌈W/2⌉ + 1, [`transform_output`] 12 and [`transform_output_adjoint`] 4 per
/// tile.
fn scratch_len(geom: &ConvGeom) -> usize {
    let (th, tw) = tiles(geom);
    12 * (th + 1) * tw + 1
}

/// `$name(args)` runs the `#[inline(always)]` kernel `$kernel` compiled for AVX2 where the
/// CPU has it (the transforms are flat elementwise loops that then run 8 lanes wide).
macro_rules! avx2_dispatch {
    ($name:ident => $kernel:ident($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $kernel($($arg),*)
                }
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { avx2($($arg),*) };
            }
            $kernel($($arg),*)
        }
    };
}

avx2_dispatch!(transform_input => input_transform(geom: &ConvGeom, x: &[f32], slot: (usize, usize), scratch: &mut [f32], v: &mut [f32]));
avx2_dispatch!(transform_output => output_transform(geom: &ConvGeom, m: &[f32], slot: (usize, usize), bias: Option<&[f32]>, scratch: &mut [f32], out: &mut [f32]));
avx2_dispatch!(transform_output_adjoint => output_adjoint(geom: &ConvGeom, g: &[f32], slot: (usize, usize), scratch: &mut [f32], m: &mut [f32]));

/// Bᵀ d B of every tile of one image into its slot `image` of a block of `images` in
/// `v: [16, C_in, images·tiles]`, one channel at a time, in flat passes over a split copy of
/// the channel (rows of `tw = ⌈W/2⌉` values, `⌈H/2⌉ + 1` rows per class):
/// 1. Each padded input row r (input row r − 1, zero outside) is split into `O[t] = x[2t]`
///    and `E[t] = x[2t + 1]` (the padded row's odd and even columns; zero outside), stored by
///    row parity: class r mod 2, row r / 2. Tile t of the row has the columns
///    x[2t − 1], x[2t], x[2t + 1], x[2t + 2] = E[t − 1], O[t], E[t], O[t + 1].
/// 2. d B, the four column combinations of every tile column, flat over the rows (the
///    shifted reads E[t − 1] and O[t + 1] are fixed up at the row ends, where they are
///    padding).
/// 3. Bᵀ(d B) down the tile rows, flat over all tiles: tile row k reads padded rows 2k … 2k + 3,
///    the rows k and k + 1 of both classes.
#[inline(always)]
fn input_transform(
    geom: &ConvGeom,
    x: &[f32],
    (image, images): (usize, usize),
    scratch: &mut [f32],
    v: &mut [f32],
) {
    let (th, tw) = tiles(geom);
    let (h, w) = (geom.h_in, geom.w_in);
    let n_tiles = th * tw;
    let class = (th + 1) * tw;
    let split = 2 * class;
    let point = geom.c_in * images * n_tiles;
    let (odd_cols, rest) = scratch.split_at_mut(split + 1);
    let (even_cols, columns) = rest.split_at_mut(split);
    odd_cols[split] = 0.0;
    for (c, xc) in x.chunks_exact(h * w).enumerate() {
        for r in 0..2 * th + 2 {
            let at = (r % 2) * class + (r / 2) * tw;
            let (o, e) = (&mut odd_cols[at..at + tw], &mut even_cols[at..at + tw]);
            if r == 0 || r > h {
                o.fill(0.0);
                e.fill(0.0);
            } else {
                // the input's even columns are the padded row's odd ones
                split_row(&xc[(r - 1) * w..r * w], o, e);
            }
        }
        column_combinations(tw, odd_cols, even_cols, columns);
        for b in 0..4 {
            let rows = &columns[b * split..(b + 1) * split];
            let (even_rows, odd_rows) = rows.split_at(class);
            let d = [
                &even_rows[..n_tiles],
                &odd_rows[..n_tiles],
                &even_rows[tw..],
                &odd_rows[tw..],
            ];
            let [v0, v1, v2, v3] = four_rows(
                v,
                b * point + (c * images + image) * n_tiles,
                4 * point,
                n_tiles,
            );
            let [d0, d1, d2, d3] = d.map(|d| &d[..n_tiles]);
            for t in 0..n_tiles {
                v0[t] = d0[t] - d2[t];
                v1[t] = d1[t] + d2[t];
                v2[t] = d2[t] - d1[t];
                v3[t] = d1[t] - d3[t];
            }
        }
    }
}

/// `evens[t] = row[2t]`, `odds[t] = row[2t + 1]` (zero past the row's end).
#[inline(always)]
fn split_row(row: &[f32], evens: &mut [f32], odds: &mut [f32]) {
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        evens[row.len() / 2] = *last;
        odds[row.len() / 2] = 0.0;
    }
    for ((pair, e), o) in pairs.zip(evens.iter_mut()).zip(odds.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// d B for every tile column of the split rows (rows of `tw`; `odd` holds one extra zero):
/// `columns[b]` (each as long as `even`) = E[t − 1] − E[t], O[t] + E[t], E[t] − O[t],
/// O[t] − O[t + 1] for b = 0 … 3, with E[−1] and O[tw] the zero padding.
#[inline(always)]
fn column_combinations(tw: usize, odd: &[f32], even: &[f32], columns: &mut [f32]) {
    let n = even.len();
    let [c0, c1, c2, c3] = four_rows(columns, 1, n, n - 1);
    let (e_prev, e, o, o_next) = (&even[..n - 1], &even[1..n], &odd[1..n], &odd[2..n + 1]);
    for q in 0..n - 1 {
        c0[q] = e_prev[q] - e[q];
        c1[q] = o[q] + e[q];
        c2[q] = e[q] - o[q];
        c3[q] = o[q] - o_next[q];
    }
    columns[n] = odd[0] + even[0];
    columns[2 * n] = even[0] - odd[0];
    for start in (0..n).step_by(tw) {
        columns[start] = -even[start];
        let end = start + tw - 1;
        columns[3 * n + end] = odd[end];
    }
    // the column t = 0 of the first row, unless it is also the row's end (fixed above)
    if tw > 1 {
        columns[3 * n] = odd[0] - odd[1];
    }
}

/// Four disjoint `len`-value rows of `v` at `start`, `start + stride`, … (stride ≥ len).
fn four_rows(v: &mut [f32], start: usize, stride: usize, len: usize) -> [&mut [f32]; 4] {
    let (_, rest) = v.split_at_mut(start);
    let (r0, rest) = rest.split_at_mut(stride);
    let (r1, rest) = rest.split_at_mut(stride);
    let (r2, rest) = rest.split_at_mut(stride);
    [
        &mut r0[..len],
        &mut r1[..len],
        &mut r2[..len],
        &mut rest[..len],
    ]
}

/// Aᵀ m A (+ b) of every tile's product, read from slot `image` of a block of `images` in
/// `m: [16, C_out, images·tiles]`, into one image's `[C_out, H, W]` output (the odd sides'
/// extra row and column dropped): flat over the tiles into the four outputs of each (in
/// `scratch`), then interleaved into the rows.
#[inline(always)]
fn output_transform(
    geom: &ConvGeom,
    m: &[f32],
    (image, images): (usize, usize),
    bias: Option<&[f32]>,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let (th, tw) = tiles(geom);
    let (h, w) = (geom.h_out, geom.w_out);
    let n_tiles = th * tw;
    let point = geom.c_out * images * n_tiles;
    // Aᵀ m (8 rows) and the tiles' four outputs (4 rows), flat over the tiles
    let (s, rest) = scratch.split_at_mut(8 * n_tiles);
    let y = &mut rest[..4 * n_tiles];
    for (o, plane) in out.chunks_exact_mut(h * w).enumerate() {
        let b_o = bias.map_or(0.0, |b| b[o]);
        let at = |p: usize| &m[p * point + (o * images + image) * n_tiles..][..n_tiles];
        // Aᵀ m: rows 0 and 1 of each column b, at s[b] and s[4 + b]
        let (row0s, row1s) = s.split_at_mut(4 * n_tiles);
        let [s0, s1, s2, s3] = four_rows(row0s, 0, n_tiles, n_tiles);
        let [s4, s5, s6, s7] = four_rows(row1s, 0, n_tiles, n_tiles);
        for (b, (row0, row1)) in [(s0, s4), (s1, s5), (s2, s6), (s3, s7)]
            .into_iter()
            .enumerate()
        {
            let (m0, m1, m2, m3) = (at(b), at(4 + b), at(8 + b), at(12 + b));
            for t in 0..n_tiles {
                row0[t] = m0[t] + m1[t] + m2[t];
                row1[t] = m1[t] - m2[t] - m3[t];
            }
        }
        // (Aᵀ m) A: the tile's outputs (0, 0), (0, 1) from row 0, (1, 0), (1, 1) from row 1
        let [y0, y1, y2, y3] = four_rows(&mut *y, 0, n_tiles, n_tiles);
        for (i, (left, right)) in [(y0, y1), (y2, y3)].into_iter().enumerate() {
            let row = |b: usize| &s[(4 * i + b) * n_tiles..][..n_tiles];
            let (q0, q1, q2, q3) = (row(0), row(1), row(2), row(3));
            for t in 0..n_tiles {
                left[t] = q0[t] + q1[t] + q2[t] + b_o;
                right[t] = q1[t] - q2[t] - q3[t] + b_o;
            }
        }
        let (y0, rest) = y.split_at(n_tiles);
        let (y1, rest) = rest.split_at(n_tiles);
        let (y2, y3) = rest.split_at(n_tiles);
        for (r, row) in plane.chunks_exact_mut(w).enumerate() {
            let (ty, i) = (r / 2, r % 2);
            let tiles = ty * tw..(ty + 1) * tw;
            let (left, right) = if i == 0 {
                (&y0[tiles.clone()], &y1[tiles])
            } else {
                (&y2[tiles.clone()], &y3[tiles])
            };
            let mut pairs = row.chunks_exact_mut(2);
            for ((pair, l), r) in (&mut pairs).zip(left).zip(right) {
                pair[0] = *l;
                pair[1] = *r;
            }
            if let [last] = pairs.into_remainder() {
                *last = left[tw - 1];
            }
        }
    }
}

/// A ḡ Aᵀ of every tile's output adjoint ḡ (2×2, zero past odd sides) of one image into its
/// slot `image` of a block of `images` in `m: [16, C_out, images·tiles]`: the adjoint of
/// [`output_transform`] (without the bias). Per channel the adjoint is split into the even
/// and odd columns of its even and odd rows (ḡ₀₀, ḡ₀₁, ḡ₁₀, ḡ₁₁ of every tile, flat over the
/// tiles, in `scratch`), then combined.
#[inline(always)]
fn output_adjoint(
    geom: &ConvGeom,
    g: &[f32],
    (image, images): (usize, usize),
    scratch: &mut [f32],
    m: &mut [f32],
) {
    let (th, tw) = tiles(geom);
    let (h, w) = (geom.h_out, geom.w_out);
    let n_tiles = th * tw;
    let point = geom.c_out * images * n_tiles;
    for (o, plane) in g.chunks_exact(h * w).enumerate() {
        let [g00, g01, g10, g11] = four_rows(scratch, 0, n_tiles, n_tiles);
        for (r, row) in plane.chunks_exact(w).enumerate() {
            let tiles = (r / 2) * tw..(r / 2 + 1) * tw;
            if r % 2 == 0 {
                split_row(row, &mut g00[tiles.clone()], &mut g01[tiles]);
            } else {
                split_row(row, &mut g10[tiles.clone()], &mut g11[tiles]);
            }
        }
        if h % 2 == 1 {
            g10[(th - 1) * tw..].fill(0.0);
            g11[(th - 1) * tw..].fill(0.0);
        }
        let (g00, g01, g10, g11) = (
            &g00[..n_tiles],
            &g01[..n_tiles],
            &g10[..n_tiles],
            &g11[..n_tiles],
        );
        // A ḡ: rows (ḡ₀, ḡ₀ + ḡ₁, ḡ₀ − ḡ₁, −ḡ₁); then each row (r₀, r₁) times Aᵀ:
        // (r₀, r₀ + r₁, r₀ − r₁, −r₁)
        for a in 0..4 {
            let [m0, m1, m2, m3] = four_rows(
                m,
                4 * a * point + (o * images + image) * n_tiles,
                point,
                n_tiles,
            );
            for t in 0..n_tiles {
                let (r0, r1) = match a {
                    0 => (g00[t], g01[t]),
                    1 => (g00[t] + g10[t], g01[t] + g11[t]),
                    2 => (g00[t] - g10[t], g01[t] - g11[t]),
                    _ => (-g10[t], -g11[t]),
                };
                m0[t] = r0;
                m1[t] = r0 + r1;
                m2[t] = r0 - r1;
                m3[t] = -r1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (C_in, C_out, H, W): even, odd and one-pixel sides, and 17 × 16 kernels (more than one
    /// chunk of the kernel transform's adjoint).
    const SHAPES: [(usize, usize, usize, usize); 6] = [
        (3, 5, 8, 8),
        (4, 2, 7, 5),
        (2, 3, 1, 1),
        (5, 4, 1, 6),
        (6, 7, 9, 2),
        (17, 16, 5, 3),
    ];

    /// |got − want| ≤ tol·(1 + |want|) entry by entry.
    fn assert_close(got: &[f32], want: &[f32], tol: f32, label: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{label} at {i}: {g} vs {w}"
            );
        }
    }

    fn transformed(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
        let mut u = vec![f32::NAN; 5];
        kernel_transform(w, c_out, c_in, &mut u);
        u
    }

    fn values(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    /// The transposed kernel (U read at swapped points, transposed) against the explicitly
    /// flipped kernel through im2col.
    #[test]
    fn transposed_winograd_kernel_is_the_flipped_kernel() {
        for (c_in, c_out, h, w) in SHAPES {
            // the forward convolution c_in → c_out; its transpose maps c_out → c_in
            let k = values(c_out * c_in * 9, 7);
            let mut flipped = vec![0.0; k.len()];
            for o in 0..c_out {
                for i in 0..c_in {
                    for t in 0..9 {
                        flipped[(i * c_out + o) * 9 + t] = k[(o * c_in + i) * 9 + 8 - t];
                    }
                }
            }
            let geom = ConvGeom::new(c_out, c_in, 3, 1, 1, h, w);
            let x = values(c_out * h * w, 8);
            let mut want = vec![f32::NAN; c_in * h * w];
            geom.conv_image((&flipped, None), &x, &mut Vec::new(), &mut want);
            let u = transformed(&k, c_out, c_in);
            let kernel = WinogradKernel {
                u: &u,
                transposed: true,
            };
            let mut got = vec![f32::NAN; c_in * h * w];
            conv_block(
                &geom,
                (kernel, None),
                &x,
                &mut vec![f32::NAN; 20_000],
                &mut got,
            );
            assert_close(&got, &want, 1e-5, &format!("{c_in}<-{c_out}"));
        }
    }

    /// The Winograd kernel gradient of two images against Σ g · patchesᵀ (im2col), added
    /// to a non-zero gradient, over a NaN-filled work buffer.
    #[test]
    fn winograd_kernel_gradient_equals_the_im2col_product() {
        for (c_in, c_out, h, w) in SHAPES {
            let geom = ConvGeom::new(c_in, c_out, 3, 1, 1, h, w);
            let n = 2;
            let (x, g) = (values(n * c_in * h * w, 4), values(n * c_out * h * w, 5));
            let start = values(c_out * c_in * 9, 6);
            let mut want = start.clone();
            for (gi, xi) in g
                .chunks_exact(c_out * h * w)
                .zip(x.chunks_exact(c_in * h * w))
            {
                let mut cols = Vec::new();
                geom.im2col(xi, 1, &mut cols);
                for (o, g_row) in gi.chunks_exact(h * w).enumerate() {
                    for (r, col_row) in cols.chunks_exact(h * w).enumerate() {
                        let dot: f32 = g_row.iter().zip(col_row).map(|(a, b)| a * b).sum();
                        want[o * geom.patch() + r] += dot;
                    }
                }
            }
            let mut got = start;
            let mut work = vec![f32::NAN; 20_000];
            add_kernel_gradient(&geom, (&g, &x), &mut got, &mut work);
            assert_close(&got, &want, 1e-4, &format!("{c_in}->{c_out} {h}x{w}"));
        }
    }

    /// Winograd against the im2col convolution, with and without bias, on even, odd and
    /// one-pixel sides, for a block of two images, over a NaN-filled output and work buffer.
    #[test]
    fn winograd_convolution_equals_the_im2col_convolution() {
        for (c_in, c_out, h, w) in SHAPES {
            let geom = ConvGeom::new(c_in, c_out, 3, 1, 1, h, w);
            assert!(applies(&geom));
            let (x, k, b) = (
                values(2 * c_in * h * w, 1),
                values(c_out * c_in * 9, 2),
                values(c_out, 3),
            );
            let u = transformed(&k, c_out, c_in);
            for bias in [None, Some(&b[..])] {
                // two images: the block's gemms span both
                let mut want = vec![f32::NAN; 2 * c_out * h * w];
                for (x, want) in x
                    .chunks_exact(c_in * h * w)
                    .zip(want.chunks_exact_mut(c_out * h * w))
                {
                    geom.conv_image((&k, bias), x, &mut Vec::new(), want);
                }
                // a dirty work buffer larger than needed: no stale value may be read
                let mut work = vec![f32::NAN; 20_000];
                let mut got = vec![f32::NAN; 2 * c_out * h * w];
                let kernel = WinogradKernel {
                    u: &u,
                    transposed: false,
                };
                conv_block(&geom, (kernel, bias), &x, &mut work, &mut got);
                assert_close(&got, &want, 1e-5, &format!("{c_in}->{c_out} {h}x{w}"));
            }
        }
    }
}
