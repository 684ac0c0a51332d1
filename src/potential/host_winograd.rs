//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2016) for one image's 3×3,
//! stride-1, pad-1 convolution, the bulk of a UNet's work: each 2×2 output tile is
//! Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of its 4×4 input tile d, so the convolution becomes 16 gemms
//! `[C_out, C_in] · [C_in, tiles]`, one per point of the transformed tile, with 16 instead of
//! 36 multiplications per tile and channel pair and no patch matrix.
//!
//! Layouts: the transformed kernel is `[16, C_out, C_in]` (point-major, made once per kernel,
//! [`kernel_transform`]); the transformed input `[16, C_in, tiles]` and the product
//! `[16, C_out, tiles]` live in the caller's work buffer; tiles run row by row over the
//! ⌈H/2⌉ × ⌈W/2⌉ grid. Odd sides are padded with zeros and their extra outputs dropped.

use super::host_mlp::gemm_into;
use super::host_ops::ConvGeom;

/// Points of a transformed 4×4 tile.
const POINTS: usize = 16;

/// Whether [`conv_image`] computes the convolution `geom`: a 3×3 kernel, stride 1, padding 1.
pub(super) fn applies(geom: &ConvGeom) -> bool {
    geom.k == 3 && geom.stride == 1 && geom.pad == 1
}

/// G g Gᵀ for every kernel `g` of `w: [C_out, C_in, 3, 3]`: `[16, C_out, C_in]`.
pub(super) fn kernel_transform(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(w.len(), c_out * c_in * 9, "a [C_out, C_in, 3, 3] kernel");
    let plane = c_out * c_in;
    let mut u = vec![0.0; POINTS * plane];
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
    u
}

/// The tile grid of a geometry: (rows, columns) of 2×2 output tiles.
fn tiles(geom: &ConvGeom) -> (usize, usize) {
    (geom.h_out.div_ceil(2), geom.w_out.div_ceil(2))
}

/// One image's convolution `out = conv(x, w) (+ b)`, `[C_out, H, W]` from `x: [C_in, H, W]`,
/// for a geometry that [`applies`], with the kernel's transform `u` ([`kernel_transform`]).
/// `work` is resized as needed and its contents are not read.
pub(super) fn conv_image(
    geom: &ConvGeom,
    (u, bias): (&[f32], Option<&[f32]>),
    x: &[f32],
    work: &mut Vec<f32>,
    out: &mut [f32],
) {
    debug_assert!(applies(geom));
    let (th, tw) = tiles(geom);
    let n_tiles = th * tw;
    let (c_in, c_out) = (geom.c_in, geom.c_out);
    let scratch = 8 * (th + 1) * tw;
    work.resize(scratch + POINTS * n_tiles * (c_in + c_out), 0.0);
    let (scratch, rest) = work.split_at_mut(scratch);
    let (v, m) = rest.split_at_mut(POINTS * c_in * n_tiles);
    with_avx2(|| input_transform(geom, x, scratch, v));
    for (m, (u, v)) in m.chunks_exact_mut(c_out * n_tiles).zip(
        u.chunks_exact(c_out * c_in)
            .zip(v.chunks_exact(c_in * n_tiles)),
    ) {
        gemm_into(m, (u, false), (v, false), c_out, c_in, n_tiles, false);
    }
    with_avx2(|| output_transform(geom, m, bias, out));
}

/// Runs `f` (inlined) in code compiled for AVX2 where the CPU has it: the transforms are
/// flat elementwise loops that then run 8 lanes wide.
#[inline(always)]
fn with_avx2(f: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn run(f: impl FnOnce()) {
            f()
        }
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { run(f) };
    }
    f()
}

/// Bᵀ d B of every tile into `v: [16, C_in, tiles]`. Per channel, first d B along each
/// padded input row r (input row r − 1): the four column combinations of every tile column,
/// stored by row parity in `scratch` as `[4, 2, ⌈H/2⌉ + 1, tiles per row]`; then Bᵀ(d B)
/// down the tile rows, flat over all tiles (tile row t reads padded rows 2t … 2t + 3: the
/// even rows t, t + 1 and the odd rows t, t + 1).
#[inline(always)]
fn input_transform(geom: &ConvGeom, x: &[f32], scratch: &mut [f32], v: &mut [f32]) {
    let (th, tw) = tiles(geom);
    let (h, w) = (geom.h_in, geom.w_in);
    let n_tiles = th * tw;
    let class = (th + 1) * tw;
    let point = geom.c_in * n_tiles;
    // a padded row split into its even columns E[j] = x[2j − 1] and odd ones O[j] = x[2j]
    // (zero outside): a tile's four columns are E[t], O[t], E[t + 1], O[t + 1]
    let mut even = vec![0.0f32; tw + 1];
    let mut odd = vec![0.0f32; tw + 1];
    for (c, xc) in x.chunks_exact(h * w).enumerate() {
        for r in 0..2 * th + 2 {
            let row = (r >= 1 && r <= h).then(|| &xc[(r - 1) * w..r * w]);
            split_parity(row, &mut even, &mut odd);
            let (e0, e1, o0, o1) = (&even[..tw], &even[1..], &odd[..tw], &odd[1..]);
            let at = |b: usize| (b * 2 + r % 2) * class + (r / 2) * tw;
            let [c0, c1, c2, c3] = [0, 1, 2, 3].map(at);
            for t in 0..tw {
                scratch[c0 + t] = e0[t] - e1[t];
                scratch[c1 + t] = o0[t] + e1[t];
                scratch[c2 + t] = e1[t] - o0[t];
                scratch[c3 + t] = o0[t] - o1[t];
            }
        }
        for b in 0..4 {
            let rows = &scratch[b * 2 * class..(b * 2 + 2) * class];
            let (even_rows, odd_rows) = rows.split_at(class);
            let (d0, d1) = (&even_rows[..n_tiles], &odd_rows[..n_tiles]);
            let (d2, d3) = (&even_rows[tw..], &odd_rows[tw..]);
            let [v0, v1, v2, v3] = four_rows(v, b * point + c * n_tiles, 4 * point, n_tiles);
            for t in 0..n_tiles {
                v0[t] = d0[t] - d2[t];
                v1[t] = d1[t] + d2[t];
                v2[t] = d2[t] - d1[t];
                v3[t] = d1[t] - d3[t];
            }
        }
    }
}

/// `row` (or a zero row) split into `even[j] = row[2j − 1]` and `odd[j] = row[2j]`, zero
/// outside the row.
#[inline(always)]
fn split_parity(row: Option<&[f32]>, even: &mut [f32], odd: &mut [f32]) {
    let Some(row) = row else {
        even.fill(0.0);
        odd.fill(0.0);
        return;
    };
    even[0] = 0.0;
    let pairs = row.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    let half = row.len() / 2;
    for ((pair, o), e) in pairs.zip(odd.iter_mut()).zip(even[1..].iter_mut()) {
        *o = pair[0];
        *e = pair[1];
    }
    let mut odd_end = half;
    if let Some(last) = last {
        odd[half] = last;
        odd_end += 1;
    }
    odd[odd_end..].fill(0.0);
    even[half + 1..].fill(0.0);
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

/// Aᵀ m A (+ b) of every tile's product `m: [16, C_out, tiles]` into the `[C_out, H, W]`
/// output (the odd sides' extra row and column dropped): flat over the tiles into the four
/// outputs of each, then interleaved into the rows.
#[inline(always)]
fn output_transform(geom: &ConvGeom, m: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let (th, tw) = tiles(geom);
    let (h, w) = (geom.h_out, geom.w_out);
    let n_tiles = th * tw;
    let point = geom.c_out * n_tiles;
    let mut y = vec![0.0f32; 4 * n_tiles];
    for (o, plane) in out.chunks_exact_mut(h * w).enumerate() {
        let b_o = bias.map_or(0.0, |b| b[o]);
        let mi: [&[f32]; POINTS] =
            std::array::from_fn(|p| &m[p * point + o * n_tiles..][..n_tiles]);
        let (y0, rest) = y.split_at_mut(n_tiles);
        let (y1, rest) = rest.split_at_mut(n_tiles);
        let (y2, y3) = rest.split_at_mut(n_tiles);
        for t in 0..n_tiles {
            let col = |b: usize| {
                let (m0, m1, m2, m3) = (mi[b][t], mi[4 + b][t], mi[8 + b][t], mi[12 + b][t]);
                (m0 + m1 + m2, m1 - m2 - m3)
            };
            let (s0, s1, s2, s3) = (col(0), col(1), col(2), col(3));
            y0[t] = s0.0 + s1.0 + s2.0 + b_o;
            y1[t] = s1.0 - s2.0 - s3.0 + b_o;
            y2[t] = s0.1 + s1.1 + s2.1 + b_o;
            y3[t] = s1.1 - s2.1 - s3.1 + b_o;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    /// Winograd against the im2col convolution, with and without bias, on even, odd and
    /// one-pixel sides.
    #[test]
    fn winograd_convolution_equals_the_im2col_convolution() {
        for (c_in, c_out, h, w) in [
            (3, 5, 8, 8),
            (4, 2, 7, 5),
            (2, 3, 1, 1),
            (5, 4, 1, 6),
            (6, 7, 9, 2),
        ] {
            let geom = ConvGeom::new(c_in, c_out, 3, 1, 1, h, w);
            assert!(applies(&geom));
            let (x, k, b) = (
                values(c_in * h * w, 1),
                values(c_out * c_in * 9, 2),
                values(c_out, 3),
            );
            let u = kernel_transform(&k, c_out, c_in);
            for bias in [None, Some(&b[..])] {
                let mut want = vec![f32::NAN; c_out * h * w];
                geom.conv_image((&k, bias), &x, &mut Vec::new(), &mut want);
                let mut work = vec![f32::NAN; 3];
                let mut got = vec![f32::NAN; c_out * h * w];
                conv_image(&geom, (&u, bias), &x, &mut work, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{c_in}->{c_out} {h}x{w} at {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
