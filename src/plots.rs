//! PNG plots: line plots (loss curves, hyper-parameter sweeps, optionally with error
//! bars) and attention heatmaps (single, or MICA vs backbone side by side), drawn with
//! `plotters`' bitmap backend.
//!
//! Fonts: no system font is assumed. The crate embeds DejaVu Sans
//! (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera licence with public-domain DejaVu
//! changes, redistribution allowed, see `assets/fonts/LICENSE-DejaVu.txt`) and registers
//! it as plotters' `sans-serif` family through the pure-Rust `ab_glyph` renderer, so text
//! renders identically on any machine.

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the embedded DejaVu Sans as the `sans-serif` family (idempotent).
pub fn ensure_font() {
    REGISTER.call_once(|| {
        // The embedded file is a valid TrueType font; a failure here is a build defect.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            panic!("embedded DejaVuSans.ttf could not be parsed");
        }
    });
}

/// A point with an error bar: (x, mean, half-width).
pub type ErrorPoint = (f64, f64, f64);

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// Finite (x, y) bounds of all points, padded a little; (0..1, 0..1) when there are none.
fn bounds(points: impl Iterator<Item = (f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = |a: f64, b: f64| {
        if b > a {
            let m = 0.05 * (b - a);
            (a - m, b + m)
        } else {
            (a - 0.5 - a.abs() * 0.05, b + 0.5 + b.abs() * 0.05)
        }
    };
    (pad(x0, x1), pad(y0, y1))
}

/// Line plot of named series of (x, y) points (e.g. train / valid loss per epoch),
/// with a legend; non-finite points are left out. Writes a 900x600 PNG to `path`.
pub fn line_plot<S: AsRef<str>>(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(S, Vec<(f64, f64)>)],
) -> Result<()> {
    let with_err: Vec<(&str, Vec<ErrorPoint>)> = series
        .iter()
        .map(|(n, pts)| (n.as_ref(), pts.iter().map(|&(x, y)| (x, y, 0.0)).collect()))
        .collect();
    draw_lines(path, title, x_label, y_label, &with_err, false)
}

/// Line plot of named series of (x, mean, err) points with vertical error bars
/// `mean ± err` (e.g. a sensitivity sweep, mean ± std over seeds). Writes a PNG.
pub fn line_plot_with_errors<S: AsRef<str>>(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(S, Vec<ErrorPoint>)],
) -> Result<()> {
    let s: Vec<(&str, Vec<ErrorPoint>)> = series
        .iter()
        .map(|(n, pts)| (n.as_ref(), pts.clone()))
        .collect();
    draw_lines(path, title, x_label, y_label, &s, true)
}

fn draw_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<ErrorPoint>)],
    error_bars: bool,
) -> Result<()> {
    ensure_font();
    let finite: Vec<Vec<ErrorPoint>> = series
        .iter()
        .map(|(_, pts)| {
            pts.iter()
                .copied()
                .filter(|(x, y, e)| x.is_finite() && y.is_finite() && e.is_finite())
                .collect()
        })
        .collect();
    let ((x0, x1), (y0, y1)) = bounds(
        finite
            .iter()
            .flatten()
            .flat_map(|&(x, y, e)| [(x, y - e.abs()), (x, y + e.abs())]),
    );
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    for (i, ((name, _), pts)) in series.iter().zip(&finite).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts.iter().map(|&(x, y, _)| (x, y)), style))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y, _)| Circle::new((x, y), 3, color.filled())),
            )
            .map_err(err)?;
        if error_bars {
            chart
                .draw_series(pts.iter().map(|&(x, y, e)| {
                    ErrorBar::new_vertical(x, y - e.abs(), y, y + e.abs(), color, 8)
                }))
                .map_err(err)?;
        }
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One attention map to draw.
#[derive(Debug, Clone, Copy)]
pub struct HeatmapPanel<'a> {
    /// Title above the map.
    pub title: &'a str,
    /// Row-major `[rows, cols]` values (e.g. attention probabilities).
    pub matrix: &'a [f32],
    /// Number of rows (target elements, drawn top to bottom).
    pub rows: usize,
    /// Number of columns (source elements, left to right).
    pub cols: usize,
    /// Optional `[rows, cols]` mask: outlined cells (ground-truth co-occurrence).
    pub outline: Option<&'a [bool]>,
    /// Axis description of the rows.
    pub row_label: &'a str,
    /// Axis description of the columns.
    pub col_label: &'a str,
}

/// Heatmap of a `[rows, cols]` matrix (row 0 at the top, viridis colours scaled from the
/// matrix minimum to its maximum, or from 0 to the value for a constant matrix; non-finite
/// cells grey; a colour bar on the right), with the cells where
/// `outline` is true framed in red. Writes a PNG.
#[allow(clippy::too_many_arguments)]
pub fn heatmap(
    path: &Path,
    title: &str,
    matrix: &[f32],
    rows: usize,
    cols: usize,
    outline: Option<&[bool]>,
    row_label: &str,
    col_label: &str,
) -> Result<()> {
    let panel = HeatmapPanel {
        title,
        matrix,
        rows,
        cols,
        outline,
        row_label,
        col_label,
    };
    draw_panels(path, None, &[panel])
}

/// Two heatmaps side by side (e.g. MICA vs backbone for the same sample and layer), each
/// with its own colour scale, under an overall `title`. Writes a PNG.
pub fn side_by_side(
    path: &Path,
    title: &str,
    left: &HeatmapPanel,
    right: &HeatmapPanel,
) -> Result<()> {
    draw_panels(path, Some(title), &[*left, *right])
}

fn check_panel(p: &HeatmapPanel) -> Result<()> {
    let n = p.rows * p.cols;
    if p.rows == 0 || p.cols == 0 || p.matrix.len() != n {
        return Err(anyhow!(
            "heatmap {:?}: {} values for a {}x{} matrix",
            p.title,
            p.matrix.len(),
            p.rows,
            p.cols
        ));
    }
    if let Some(o) = p.outline {
        if o.len() != n {
            return Err(anyhow!(
                "heatmap {:?}: outline has {} cells, matrix {}",
                p.title,
                o.len(),
                n
            ));
        }
    }
    Ok(())
}

fn draw_panels(path: &Path, title: Option<&str>, panels: &[HeatmapPanel]) -> Result<()> {
    ensure_font();
    for p in panels {
        check_panel(p)?;
    }
    let width = 700 * panels.len() as u32;
    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let area = match title {
        Some(t) => root.titled(t, ("sans-serif", 26)).map_err(err)?,
        None => root.clone(),
    };
    for (p, cell) in panels.iter().zip(area.split_evenly((1, panels.len()))) {
        draw_heatmap(&cell, p)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw_heatmap(area: &DrawingArea<BitMapBackend, Shift>, p: &HeatmapPanel) -> Result<()> {
    let finite = p.matrix.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f32::INFINITY, f32::min);
    let hi = finite.fold(f32::NEG_INFINITY, f32::max);
    let (lo, hi) = if !lo.is_finite() || (lo == hi && lo == 0.0) {
        (0.0, 1.0)
    } else if lo == hi {
        // A constant map (e.g. uniform attention): scale from 0 to the value.
        (lo.min(0.0), lo.max(0.0))
    } else {
        (lo, hi)
    };
    let (map_area, bar_area) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(90));
    let (rows, cols) = (p.rows as f64, p.cols as f64);
    let mut chart = ChartBuilder::on(&map_area)
        .caption(p.title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..cols, 0.0..rows)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(p.col_label)
        .y_desc(p.row_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_label_formatter(&|y| format!("{}", (rows - y).round() as i64))
        .draw()
        .map_err(err)?;
    let color = |v: f32| -> RGBColor {
        if v.is_finite() {
            ViridisRGB::get_color_normalized(v, lo, hi)
        } else {
            RGBColor(200, 200, 200)
        }
    };
    chart
        .draw_series((0..p.rows).flat_map(|i| {
            (0..p.cols).map(move |j| {
                let y = rows - i as f64;
                Rectangle::new(
                    [(j as f64, y - 1.0), (j as f64 + 1.0, y)],
                    color(p.matrix[i * p.cols + j]).filled(),
                )
            })
        }))
        .map_err(err)?;
    if let Some(mask) = p.outline {
        chart
            .draw_series((0..p.rows).flat_map(|i| {
                (0..p.cols)
                    .filter(move |&j| mask[i * p.cols + j])
                    .map(move |j| {
                        let y = rows - i as f64;
                        Rectangle::new(
                            [(j as f64, y - 1.0), (j as f64 + 1.0, y)],
                            ShapeStyle::from(RED).stroke_width(2),
                        )
                    })
            }))
            .map_err(err)?;
    }
    draw_colour_bar(&bar_area, lo, hi)
}

fn draw_colour_bar(area: &DrawingArea<BitMapBackend, Shift>, lo: f32, hi: f32) -> Result<()> {
    let mut bar = ChartBuilder::on(area)
        .margin_top(45)
        .margin_bottom(55)
        .margin_right(10)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0f64..1.0, lo as f64..hi as f64)
        .map_err(err)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .label_style(("sans-serif", 12))
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()
        .map_err(err)?;
    let steps = 100;
    let step = (hi - lo) as f64 / steps as f64;
    bar.draw_series((0..steps).map(|k| {
        let y = lo as f64 + k as f64 * step;
        let c = ViridisRGB::get_color_normalized(y as f32, lo, hi);
        Rectangle::new([(0.0, y), (1.0, y + step)], c.filled())
    }))
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG fully (checks signature, chunks, CRCs and pixel data) and returns its
    /// size, plus whether the image holds more than one colour.
    fn decode(path: &Path) -> (u32, u32, bool) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let px = &buf[..info.buffer_size()];
        let varied = px.chunks(3).any(|c| c != &px[..3]);
        (info.width, info.height, varied)
    }

    /// Share of dark (text / axis) pixels in a horizontal band, to check text renders.
    fn dark_share(path: &Path, y0: u32, y1: u32) -> f64 {
        let decoder = png::Decoder::new(std::io::Cursor::new(std::fs::read(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let w = info.width as usize;
        let ch = info.line_size / w;
        let mut dark = 0usize;
        for y in y0 as usize..y1 as usize {
            for x in 0..w {
                let p = &buf[y * info.line_size + x * ch..][..3];
                dark += (p.iter().map(|&v| v as u32).sum::<u32>() < 200) as usize;
            }
        }
        dark as f64 / ((y1 - y0) as usize * w) as f64
    }

    #[test]
    fn line_plots_write_valid_pngs_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(f64, f64)> = (0..20)
            .map(|e| (e as f64, 1.0 / (e as f64 + 1.0)))
            .collect();
        let mut valid: Vec<(f64, f64)> = train.iter().map(|&(x, y)| (x, y + 0.1)).collect();
        valid[3].1 = f64::NAN; // left out, not fatal
        line_plot(
            &path,
            "Loss",
            "epoch",
            "L1",
            &[("train", train), ("valid", valid)],
        )
        .unwrap();
        assert_eq!(decode(&path), (900, 600, true));
        // The caption band at the top holds dark glyph pixels.
        assert!(dark_share(&path, 5, 40) > 0.005);

        let sweep = dir.path().join("sweep.png");
        let pts = vec![(0.1, 0.80, 0.01), (0.3, 0.82, 0.02), (0.5, 0.81, 0.015)];
        line_plot_with_errors(
            &sweep,
            "alpha",
            "alpha",
            "Acc2",
            &[("mica".to_string(), pts)],
        )
        .unwrap();
        assert_eq!(decode(&sweep), (900, 600, true));

        let empty = dir.path().join("empty.png");
        line_plot::<&str>(&empty, "nothing", "x", "y", &[]).unwrap();
        assert_eq!(decode(&empty).0, 900);
    }

    #[test]
    fn heatmaps_write_valid_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (6, 10);
        let m: Vec<f32> = (0..rows * cols)
            .map(|k| ((k * 7) % 11) as f32 / 10.0)
            .collect();
        let outline: Vec<bool> = (0..rows * cols).map(|k| k % cols == k / cols).collect();
        let one = dir.path().join("attn.png");
        heatmap(
            &one,
            "attention",
            &m,
            rows,
            cols,
            Some(&outline),
            "text",
            "audio",
        )
        .unwrap();
        assert_eq!(decode(&one), (700, 600, true));
        let two = dir.path().join("pair.png");
        let left = HeatmapPanel {
            title: "MICA",
            matrix: &m,
            rows,
            cols,
            outline: Some(&outline),
            row_label: "text",
            col_label: "audio",
        };
        let right = HeatmapPanel {
            title: "backbone",
            outline: None,
            ..left
        };
        side_by_side(&two, "sample 0, layer 3", &left, &right).unwrap();
        assert_eq!(decode(&two), (1400, 600, true));
        assert!(heatmap(&one, "bad", &m[..5], rows, cols, None, "r", "c").is_err());
        let constant = vec![0.5f32; 4];
        heatmap(&one, "flat", &constant, 2, 2, None, "r", "c").unwrap();
        assert_eq!(decode(&one).0, 700);
    }
}
