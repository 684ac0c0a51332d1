//! PNG figures: a potential (or density) field with samples and trajectories over it, and
//! line charts of training curves. Labels use the embedded DejaVu Sans font.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{EmError, Points, Result};

static FONT: Once = Once::new();

fn ensure_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            tracing::warn!("could not register the embedded font; plot labels may be missing");
        }
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> EmError {
    EmError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A scalar field sampled on a `grid × grid` cell-centred lattice over `[lo, hi]`.
pub struct Field<'a> {
    /// Row-major values (row = y index).
    pub values: &'a [f64],
    /// Lattice size per axis.
    pub grid: usize,
    /// Lower corner.
    pub lo: [f64; 2],
    /// Upper corner.
    pub hi: [f64; 2],
    /// Colour levels (filled contours); 0 = continuous.
    pub levels: usize,
}

/// What is drawn over a field.
#[derive(Default)]
pub struct Overlay<'a> {
    /// Reference points (drawn grey).
    pub target: Option<&'a Points>,
    /// Samples (drawn as dots).
    pub samples: Option<&'a Points>,
    /// Trajectories, each a polyline.
    pub trajectories: Vec<Vec<(f64, f64)>>,
}

/// Viridis-like colour map on [0, 1].
fn colour(u: f64) -> RGBColor {
    const STOPS: [(f64, (f64, f64, f64)); 5] = [
        (0.0, (68.0, 1.0, 84.0)),
        (0.25, (59.0, 82.0, 139.0)),
        (0.5, (33.0, 145.0, 140.0)),
        (0.75, (94.0, 201.0, 98.0)),
        (1.0, (253.0, 231.0, 37.0)),
    ];
    let u = u.clamp(0.0, 1.0);
    let k = STOPS.iter().position(|s| s.0 >= u).unwrap_or(4).max(1);
    let (a, b) = (STOPS[k - 1], STOPS[k]);
    let f = (u - a.0) / (b.0 - a.0);
    let mix = |x: f64, y: f64| (x + f * (y - x)).round() as u8;
    RGBColor(
        mix(a.1 .0, b.1 .0),
        mix(a.1 .1, b.1 .1),
        mix(a.1 .2, b.1 .2),
    )
}

/// Draws a field as a (banded) heat map with overlays and a caption; values are mapped
/// through their 1st–99th percentile range.
pub fn field_png(path: &Path, caption: &str, field: &Field, overlay: &Overlay) -> Result<()> {
    ensure_font();
    let root = BitMapBackend::new(path, (720, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(field.lo[0]..field.hi[0], field.lo[1]..field.hi[1])
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let mut sorted: Vec<f64> = field
        .values
        .iter()
        .cloned()
        .filter(|v| v.is_finite())
        .collect();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * p) as usize)
            .cloned()
            .unwrap_or(0.0)
    };
    let (vmin, vmax) = (q(0.01), q(0.99).max(q(0.01) + 1e-12));
    let (dx, dy) = (
        (field.hi[0] - field.lo[0]) / field.grid as f64,
        (field.hi[1] - field.lo[1]) / field.grid as f64,
    );
    let cells = (0..field.grid * field.grid).map(|k| {
        let (ix, iy) = (k % field.grid, k / field.grid);
        let mut u = (field.values[k] - vmin) / (vmax - vmin);
        if field.levels > 0 {
            u = (u.clamp(0.0, 0.9999) * field.levels as f64).floor()
                / (field.levels - 1).max(1) as f64;
        }
        let x0 = field.lo[0] + ix as f64 * dx;
        let y0 = field.lo[1] + iy as f64 * dy;
        Rectangle::new([(x0, y0), (x0 + dx, y0 + dy)], colour(u).filled())
    });
    chart.draw_series(cells).map_err(|e| plot_err(path, e))?;
    let inside = |x: f64, y: f64| {
        x >= field.lo[0] && x <= field.hi[0] && y >= field.lo[1] && y <= field.hi[1]
    };
    if let Some(t) = overlay.target {
        let pts = t
            .rows()
            .map(|r| (r[0] as f64, r[1] as f64))
            .filter(|&(x, y)| inside(x, y));
        chart
            .draw_series(pts.map(|p| Circle::new(p, 1, RGBColor(200, 200, 200).filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    for tr in &overlay.trajectories {
        chart
            .draw_series(LineSeries::new(
                tr.iter().cloned().filter(|&(x, y)| inside(x, y)),
                RED.stroke_width(1),
            ))
            .map_err(|e| plot_err(path, e))?;
    }
    if let Some(s) = overlay.samples {
        let pts = s
            .rows()
            .map(|r| (r[0] as f64, r[1] as f64))
            .filter(|&(x, y)| inside(x, y));
        chart
            .draw_series(pts.map(|p| Circle::new(p, 1, WHITE.filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// A named series of (x, y) points.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// Line chart of several series (skipping non-finite points); `log_y` uses a log10 axis
/// (non-positive values dropped).
pub fn curves_png(
    path: &Path,
    caption: &str,
    x_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    ensure_font();
    let tf = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
                .map(|&(x, y)| (x, tf(y)))
                .collect()
        })
        .collect();
    let all: Vec<&(f64, f64)> = pts.iter().flatten().collect();
    if all.is_empty() {
        return Err(plot_err(path, "no finite points to draw"));
    }
    let (xmin, xmax) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.0), a.1.max(p.0))
    });
    let (ymin, ymax) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.1), a.1.max(p.1))
    });
    let pad = ((ymax - ymin) * 0.05).max(1e-9);
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(xmin..xmax.max(xmin + 1.0), (ymin - pad)..(ymax + pad))
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(if log_y { "log10" } else { "" })
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (k, (s, p)) in series.iter().zip(pts).enumerate() {
        let c = palette[k % palette.len()];
        chart
            .draw_series(LineSeries::new(p, c.stroke_width(1)))
            .map_err(|e| plot_err(path, e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Checks that `images` are rows of `shape.numel()` values.
fn expect_images(images: &Points, shape: crate::data::ImageShape, what: &str) -> Result<()> {
    if images.dim() != shape.numel() {
        return Err(EmError::shape(
            what,
            format!("rows of {} values ({shape})", shape.numel()),
            format!("rows of {}", images.dim()),
        ));
    }
    Ok(())
}

/// Paints one image (values in [−1, 1], channel-major) with its top-left corner at (x0, y0),
/// each pixel drawn `scale × scale`.
fn paint_tile(
    img: &mut image::RgbImage,
    row: &[f32],
    shape: crate::data::ImageShape,
    scale: usize,
    (x0, y0): (usize, usize),
) {
    use crate::data::images::unit_to_byte;
    let plane = shape.height * shape.width;
    for y in 0..shape.height * scale {
        for x in 0..shape.width * scale {
            let p = (y / scale) * shape.width + x / scale;
            let rgb = match shape.channels {
                3 => [0, 1, 2].map(|c| unit_to_byte(row[c * plane + p])),
                _ => [unit_to_byte(row[p]); 3],
            };
            img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(rgb));
        }
    }
}

/// Writes images (rows of `shape.numel()` values in [−1, 1], channel-major) as a PNG grid with
/// `cols` columns, each pixel drawn `scale × scale`, tiles separated by a 2-pixel grey border.
pub fn image_grid_png(
    path: &Path,
    images: &Points,
    shape: crate::data::ImageShape,
    cols: usize,
    scale: usize,
) -> Result<()> {
    expect_images(images, shape, "image grid")?;
    if images.is_empty() || cols == 0 || scale == 0 {
        return Err(EmError::invalid(
            "image grid",
            "at least one image, cols ≥ 1 and scale ≥ 1",
            format!("{} images, cols {cols}, scale {scale}", images.len()),
        ));
    }
    const PAD: usize = 2;
    let cols = cols.min(images.len());
    let rows = images.len().div_ceil(cols);
    let (tw, th) = (shape.width * scale, shape.height * scale);
    let (w, h) = (PAD + cols * (tw + PAD), PAD + rows * (th + PAD));
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([128, 128, 128]));
    for (k, row) in images.rows().enumerate() {
        let corner = (PAD + (k % cols) * (tw + PAD), PAD + (k / cols) * (th + PAD));
        paint_tile(&mut img, row, shape, scale, corner);
    }
    img.save(path).map_err(|e| plot_err(path, e))
}

/// Geometry of [`evolution_png`] for images of `shape`: (pixel scale, panel width, panel
/// height) in pixels, panels including their label line and padding.
pub fn evolution_panel(shape: crate::data::ImageShape) -> (usize, usize, usize) {
    let scale = (84 / shape.height.max(1)).max(1);
    let width = (shape.width * scale).max(EVOLUTION_MIN_TILE) + EVOLUTION_PAD;
    (
        scale,
        width,
        EVOLUTION_LABEL + shape.height * scale + EVOLUTION_PAD,
    )
}

const EVOLUTION_PAD: usize = 4;
const EVOLUTION_LABEL: usize = 14;
const EVOLUTION_HEADER: usize = 18;
const EVOLUTION_MIN_TILE: usize = 64;

/// A time-evolution grid, as the reference's training logs draw: one row per sample, one column
/// per sampling time (`t = …` in the header), each panel titled with that sample's energy V at
/// that time. `energies[c][r]` is V of row r of frame c. Width: 4 px + one panel per column
/// ([`evolution_panel`]).
pub fn evolution_png(
    path: &Path,
    frames: &[(f64, Points)],
    energies: &[Vec<f64>],
    shape: crate::data::ImageShape,
) -> Result<()> {
    let rows = frames.iter().map(|f| f.1.len()).min().unwrap_or(0);
    if rows == 0 || energies.len() != frames.len() || energies.iter().any(|e| e.len() < rows) {
        return Err(EmError::invalid(
            "evolution grid",
            "non-empty frames with one energy per shown sample",
            format!(
                "{} frames, {rows} rows, {} energy lists",
                frames.len(),
                energies.len()
            ),
        ));
    }
    for (_, f) in frames {
        expect_images(f, shape, "evolution grid")?;
    }
    ensure_font();
    let (scale, pw, ph) = evolution_panel(shape);
    let (w, h) = (
        EVOLUTION_PAD + frames.len() * pw,
        EVOLUTION_HEADER + rows * ph,
    );
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    let corner = |c: usize, r: usize| (EVOLUTION_PAD + c * pw, EVOLUTION_HEADER + r * ph);
    for (c, (_, f)) in frames.iter().enumerate() {
        for r in 0..rows {
            let (x, y) = corner(c, r);
            paint_tile(&mut img, f.row(r), shape, scale, (x, y + EVOLUTION_LABEL));
        }
    }
    let mut raw = img.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut raw, (w as u32, h as u32)).into_drawing_area();
        let header = ("sans-serif", 13).into_font().color(&BLACK);
        let label = ("sans-serif", 11).into_font().color(&BLACK);
        for (c, (t, _)) in frames.iter().enumerate() {
            let (x, _) = corner(c, 0);
            root.draw_text(&format!("t = {t:.2}"), &header, (x as i32, 2))
                .map_err(|e| plot_err(path, e))?;
            for (r, &v) in energies[c].iter().take(rows).enumerate() {
                let (x, y) = corner(c, r);
                root.draw_text(&format!("V = {}", short(v)), &label, (x as i32, y as i32))
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    image::RgbImage::from_raw(w as u32, h as u32, raw)
        .expect("buffer of w·h·3 bytes")
        .save(path)
        .map_err(|e| plot_err(path, e))
}

/// A number in at most ~6 characters: 1343, 12.5, 0.123, −4.2e-5.
fn short(v: f64) -> String {
    match v.abs() {
        a if !a.is_finite() => format!("{v}"),
        a if a >= 1e4 || (a > 0.0 && a < 1e-3) => format!("{v:.1e}"),
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pngs() {
        let d = tempfile::tempdir().unwrap();
        let values: Vec<f64> = (0..400)
            .map(|k| ((k % 20) as f64 - 10.0).powi(2) + ((k / 20) as f64 - 10.0).powi(2))
            .collect();
        let f = Field {
            values: &values,
            grid: 20,
            lo: [-1.0, -1.0],
            hi: [1.0, 1.0],
            levels: 10,
        };
        let s = Points::new(2, 2, vec![0.0, 0.0, 0.5, 0.5]).unwrap();
        let ov = Overlay {
            samples: Some(&s),
            trajectories: vec![vec![(0.0, 0.0), (0.5, 0.5)]],
            ..Overlay::default()
        };
        let p = d.path().join("f.png");
        field_png(&p, "V", &f, &ov).unwrap();
        let c = d.path().join("c.png");
        curves_png(
            &c,
            "loss",
            "step",
            &[Series {
                name: "a".into(),
                points: vec![(1.0, 1.0), (2.0, 0.5)],
            }],
            true,
        )
        .unwrap();
        for f in [p, c] {
            let bytes = std::fs::read(&f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
        }
        assert!(curves_png(&d.path().join("e.png"), "x", "s", &[], false).is_err());
    }

    #[test]
    fn image_grids_place_tiles_and_channels() {
        use crate::data::{images::byte_to_unit, ImageShape};
        let d = tempfile::tempdir().unwrap();
        let shape = ImageShape {
            channels: 3,
            height: 1,
            width: 2,
        };
        // image k: left pixel (10k, 20k, 30k), right pixel (255, 0, 128)
        let rows: Vec<f32> = (0..3u8)
            .flat_map(|k| [10 * k, 255, 20 * k, 0, 30 * k, 128].map(byte_to_unit))
            .collect();
        let imgs = Points::new(3, 6, rows).unwrap();
        let p = d.path().join("g.png");
        image_grid_png(&p, &imgs, shape, 2, 2).unwrap();
        let g = image::open(&p).unwrap().to_rgb8();
        // 2 columns of 4-pixel-wide tiles, 2 rows of 2-pixel-high tiles, 2-pixel borders
        assert_eq!((g.width(), g.height()), (2 + 2 * 6, 2 + 2 * 4));
        assert_eq!(g.get_pixel(0, 0).0, [128, 128, 128]);
        // image 1 is the second tile of the first row: left pixel block at x = 8..10
        assert_eq!(g.get_pixel(9, 3).0, [10, 20, 30]);
        assert_eq!(g.get_pixel(10, 2).0, [255, 0, 128]);
        // image 2 starts the second row
        assert_eq!(g.get_pixel(2, 6).0, [20, 40, 60]);
        let wrong = Points::new(1, 5, vec![0.0; 5]).unwrap();
        assert!(image_grid_png(&p, &wrong, shape, 2, 1).is_err());
    }
}
