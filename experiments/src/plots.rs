//! Line charts with error bars, written as SVG and PNG (plotters, no system font library: the
//! DejaVu Sans font in `experiments/assets/` is compiled into the binary and registered as
//! `sans-serif`).
//!
//! [`LineChart`] holds the data, [`write_chart`] draws it into `<stem>.svg` and `<stem>.png`,
//! each written atomically (a reader sees the previous file or the new one, never a torn one).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use datasets::atomic::{temp_path, write_atomic};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

/// The embedded font (DejaVu Sans 2.37; license in `experiments/assets/`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Line colours (Tableau 10: distinguishable, and none too light to read on white).
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (127, 127, 127),
];

/// Picture size in pixels (SVG user units).
const SIZE: (u32, u32) = (900, 560);

/// One point of a series: the mean of `n` values at `x`, with their standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Position on the x axis (data units, before any log scale).
    pub x: f64,
    /// Mean of the values.
    pub mean: f64,
    /// Sample standard deviation of the values (0 for a single value); drawn as ± error bars.
    pub std: f64,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points, any order (drawn sorted by `x`); non-finite means are skipped.
    pub points: Vec<Point>,
    /// A reference line: grey and dashed (for example the policy before training).
    pub reference: bool,
}

/// A chart of lines with error bars.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Caption above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Log base 2 x axis, ticks at the points' x values (token budgets are powers of two).
    pub log2_x: bool,
    /// Fixed y range; `None` fits the data (from 0, or below 0 if a value is).
    pub y_range: Option<(f64, f64)>,
    /// Draw ± std as a shaded band around each line instead of error bars, with about six
    /// evenly spaced x ticks (learning curves, where points are many and dense); with `false`
    /// the ticks are the points' x values (budgets).
    pub band: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// Registers the embedded font once; plotters looks fonts up by family name.
fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded plot font could not be read"))
    }
}

/// Draws `chart` into `<stem>.svg` and `<stem>.png` (the directory must exist) and returns the
/// two paths.
pub fn write_chart(chart: &LineChart, stem: &Path) -> anyhow::Result<[PathBuf; 2]> {
    register_font()?;
    let svg_path = stem.with_extension("svg");
    let png_path = stem.with_extension("png");

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(chart, &root).with_context(|| format!("drawing {}", svg_path.display()))?;
        root.present()
            .map_err(|e| anyhow!("drawing {}: {e}", svg_path.display()))?;
    }
    write_atomic(&svg_path, svg.as_bytes())
        .with_context(|| format!("writing {}", svg_path.display()))?;

    // The bitmap backend encodes PNG only into a file (its format chosen by the extension):
    // render beside the target, then publish the bytes atomically.
    let render = temp_path(&png_path).with_extension("render.png");
    let result = (|| -> anyhow::Result<()> {
        {
            let root = BitMapBackend::new(&render, SIZE).into_drawing_area();
            draw(chart, &root)?;
            root.present().map_err(|e| anyhow!("{e}"))?;
        }
        let bytes = std::fs::read(&render)?;
        write_atomic(&png_path, &bytes)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&render);
    result.with_context(|| format!("writing {}", png_path.display()))?;
    Ok([svg_path, png_path])
}

/// A linear axis whose ticks are exactly the given values (the budgets of a sweep), labelled
/// by the mesh's formatter.
struct TickedAxis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// About six round tick values covering `[lo, hi]` (steps of 1, 2 or 5 times a power of ten).
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + f64::from(i) * step)
        .take_while(|&t| t <= hi + step * 1e-9)
        .collect()
}

/// Draws the chart on any plotters backend.
fn draw<DB: DrawingBackend>(chart: &LineChart, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;

    let tx = |x: f64| if chart.log2_x { x.log2() } else { x };
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.x > 0.0 || !chart.log2_x)
            .filter(|p| p.mean.is_finite())
    };
    let mut ticks: Vec<f64> = points().map(|p| tx(p.x)).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let (x0, x1) = match (ticks.first(), ticks.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0.0, 1.0),
    };
    if chart.band {
        ticks = nice_ticks(x0, x1);
    }
    let pad = if x1 > x0 { (x1 - x0) * 0.08 } else { 0.5 };
    let (y0, y1) = chart.y_range.unwrap_or_else(|| {
        let std = |p: &Point| if p.std.is_finite() { p.std } else { 0.0 };
        let hi = points().map(|p| p.mean + std(p)).fold(0.0, f64::max);
        let lo = points().map(|p| p.mean - std(p)).fold(0.0, f64::min);
        let hi = if hi > lo { hi } else { lo + 1.0 };
        (lo, hi + (hi - lo) * 0.08)
    });

    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            TickedAxis {
                range: (x0 - pad)..(x1 + pad),
                ticks,
            },
            y0..y1,
        )
        .map_err(err)?;
    let log2 = chart.log2_x;
    let x_fmt = move |x: &f64| {
        let v = if log2 { x.exp2() } else { *x };
        if v.abs() >= 10_000.0 {
            format!("{:.0}k", v / 1000.0)
        } else if (v - v.round()).abs() < 1e-6 {
            format!("{}", v.round() as i64)
        } else {
            format!("{v:.3}")
        }
    };
    let x_desc = if log2 {
        format!("{} (log scale)", chart.x_label)
    } else {
        chart.x_label.clone()
    };
    let y_decimals = if y1 - y0 > 20.0 { 0 } else { 1 };
    let y_fmt = move |y: &f64| format!("{y:.y_decimals$}");
    ctx.configure_mesh()
        .max_light_lines(1)
        .x_desc(x_desc)
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(err)?;

    // Dodge the series sideways a little so that error bars at one x do not hide each other.
    let k = chart.series.len();
    let dodge_step = if k > 1 { (pad * 0.25) / k as f64 } else { 0.0 };
    let cap = pad * 0.06;
    let mut colors = 0;
    for (i, series) in chart.series.iter().enumerate() {
        let color = if series.reference {
            RGBAColor(110, 110, 110, 1.0)
        } else {
            colors += 1;
            let (r, g, b) = PALETTE[(colors - 1) % PALETTE.len()];
            RGBAColor(r, g, b, 1.0)
        };
        let offset = (i as f64 - (k as f64 - 1.0) / 2.0) * dodge_step;
        let mut pts: Vec<Point> = series
            .points
            .iter()
            .copied()
            .filter(|p| p.mean.is_finite() && (p.x > 0.0 || !log2))
            .collect();
        pts.sort_by(|a, b| a.x.total_cmp(&b.x));
        let offset = if chart.band { 0.0 } else { offset };
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| (tx(p.x) + offset, p.mean)).collect();
        if chart.band && pts.len() > 1 {
            let sd = |p: &Point| if p.std.is_finite() { p.std } else { 0.0 };
            let mut outline: Vec<(f64, f64)> =
                pts.iter().map(|p| (tx(p.x), p.mean + sd(p))).collect();
            outline.extend(pts.iter().rev().map(|p| (tx(p.x), p.mean - sd(p))));
            ctx.draw_series([Polygon::new(outline, color.mix(0.18).filled())])
                .map_err(err)?;
        }
        let line = color.stroke_width(2);
        let drawn = if series.reference {
            ctx.draw_series(DashedLineSeries::new(xy.clone(), 8, 5, line))
        } else {
            ctx.draw_series(LineSeries::new(xy.clone(), line))
        };
        drawn
            .map_err(err)?
            .label(series.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        ctx.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
        let bars = pts
            .iter()
            .zip(&xy)
            .filter(|(p, _)| !chart.band && p.std > 0.0 && p.std.is_finite());
        for (p, &(x, m)) in bars {
            let (lo, hi) = (m - p.std, m + p.std);
            let style = color.stroke_width(1);
            ctx.draw_series([
                PathElement::new(vec![(x, lo), (x, hi)], style),
                PathElement::new(vec![(x - cap, lo), (x + cap, lo)], style),
                PathElement::new(vec![(x - cap, hi), (x + cap, hi)], style),
            ])
            .map_err(err)?;
        }
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 15))
        // Learning curves rise from the lower left: keep the legend out of their way.
        .position(if chart.band {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("arbor-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let series = |label: &str, scale: f64| Series {
            label: label.into(),
            points: [256.0, 512.0, 1024.0]
                .iter()
                .map(|&x| Point {
                    x,
                    mean: scale * x.log2() / 10.0,
                    std: 0.05,
                })
                .collect(),
            reference: label == "before",
        };
        let chart = LineChart {
            title: "success vs budget".into(),
            x_label: "budget".into(),
            y_label: "success".into(),
            log2_x: true,
            y_range: Some((0.0, 1.0)),
            band: false,
            series: vec![
                series("chain", 0.8),
                series("tree", 1.0),
                series("before", 0.5),
            ],
        };
        let [svg, png] = write_chart(&chart, &dir.join("chart")).unwrap();
        let banded = LineChart {
            log2_x: false,
            band: true,
            ..chart.clone()
        };
        let [band_svg, _] = write_chart(&banded, &dir.join("band")).unwrap();
        assert!(
            std::fs::read_to_string(&band_svg)
                .unwrap()
                .contains("<polygon")
        );
        assert_eq!(nice_ticks(0.0, 61_000.0)[..3], [0.0, 20_000.0, 40_000.0]);
        assert_eq!(nice_ticks(0.0, 50.0), [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert!(text.contains("chain") && text.contains("1024"), "{text}");
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
