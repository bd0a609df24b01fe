//! The latency-versus-size plot of `isocall bench --plot`, drawn with
//! plotters' SVG backend: payload size and round-trip time on log-log
//! axes, one line per path through its p50 points, a lighter band up to
//! its p99, axis labels and a legend. plotters is built without its font
//! features: the SVG's text is plain `<text>` left to the viewer's fonts,
//! so nothing beyond the Rust toolchain is needed to build it.
//!
//! This file uses nothing but std and plotters, so that `tools/tests/`
//! can include it and check the SVG from synthetic data.

use std::path::Path;

use plotters::prelude::*;

/// One measured size of a line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Payload bytes (each way).
    pub bytes: u64,
    /// Median round trip, ns.
    pub p50_ns: f64,
    /// 99th percentile, ns.
    pub p99_ns: f64,
}

/// One line of the plot: a path and its points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Its name in the legend.
    pub label: String,
    /// Its points, in any order (drawn by size).
    pub points: Vec<Point>,
}

/// Colours of the lines, in order (repeated past the last).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// `bytes` as the axis shows it: `64 B`, `4 KiB`, `16 MiB`.
pub fn fmt_bytes(bytes: f64) -> String {
    let b = bytes.round() as u64;
    match b {
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// `ns` as the axis shows it: `100 ns`, `10 µs`, `1 ms`.
pub fn fmt_ns(ns: f64) -> String {
    let (v, unit) = match ns {
        n if n >= 1e9 => (n / 1e9, "s"),
        n if n >= 1e6 => (n / 1e6, "ms"),
        n if n >= 1e3 => (n / 1e3, "µs"),
        n => (n, "ns"),
    };
    if (v - v.round()).abs() < 1e-6 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// The decade at or below `x` and the one at or above `y`.
fn decades(x: f64, y: f64) -> (f64, f64) {
    (10f64.powf(x.log10().floor()), 10f64.powf(y.log10().ceil()))
}

/// The plot as an SVG document of `width` x `height` pixels.
///
/// # Errors
///
/// No series has a point, a point is not positive, or plotters failed.
pub fn render(
    title: &str,
    series: &[Series],
    (width, height): (u32, u32),
) -> Result<String, String> {
    let all: Vec<&Point> = series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        return Err("nothing to plot: no series has a point".into());
    }
    if let Some(p) = all
        .iter()
        .find(|p| p.bytes == 0 || !(p.p50_ns > 0.0 && p.p99_ns > 0.0))
    {
        return Err(format!("cannot plot {p:?} on log axes"));
    }
    let fold = |f: fn(&Point) -> f64, pick: fn(f64, f64) -> f64, init: f64| {
        all.iter().map(|p| f(p)).fold(init, pick)
    };
    let (x_lo, x_hi) = (
        fold(|p| p.bytes as f64, f64::min, f64::INFINITY) / 1.25,
        fold(|p| p.bytes as f64, f64::max, 0.0) * 1.25,
    );
    let (y_lo, y_hi) = decades(
        fold(|p| p.p50_ns.min(p.p99_ns), f64::min, f64::INFINITY),
        fold(|p| p.p99_ns.max(p.p50_ns), f64::max, 0.0),
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d((x_lo..x_hi).log_scale().base(4.0), (y_lo..y_hi).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_labels(12)
            .y_labels(12)
            .x_desc("payload, each way (log scale)")
            .y_desc("round trip (log scale)")
            .x_label_formatter(&|x| fmt_bytes(*x))
            .y_label_formatter(&|y| fmt_ns(*y))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(e)?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts = s.points.clone();
            pts.sort_by_key(|p| p.bytes);
            if pts.is_empty() {
                continue;
            }
            let xy = |p: &Point, y: f64| (p.bytes as f64, y);
            // The band: up along the p50 points, back along the p99 ones.
            let band: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| xy(p, p.p50_ns))
                .chain(pts.iter().rev().map(|p| xy(p, p.p99_ns)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.15).filled(),
                )))
                .map_err(e)?;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| xy(p, p.p99_ns)),
                    color.mix(0.45).stroke_width(1),
                ))
                .map_err(e)?;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| xy(p, p.p50_ns)),
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    pts.iter()
                        .map(|p| Circle::new(xy(p, p.p50_ns), 3, color.filled())),
                )
                .map_err(e)?;
        }
        // A legend entry for the bands (no data of its own).
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())
            .map_err(e)?
            .label("line: p50; band: p50 to p99")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 24, y + 5)], BLACK.mix(0.15).filled())
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// Renders the plot (900 x 600) and writes it to `path`.
///
/// # Errors
///
/// As [`render`], or the file cannot be written.
pub fn write(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    let svg = render(title, series, (900, 600))?;
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
