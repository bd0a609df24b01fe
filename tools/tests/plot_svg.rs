//! The SVG writer of `isocall bench --plot` on synthetic data: every
//! series is in the file (its legend label, a p50 line with a marker per
//! point, a p50-to-p99 band), the axes are labelled in bytes and time, and
//! data that cannot go on log axes is refused. No measurement runs.

#[path = "../src/bench/svg.rs"]
#[allow(dead_code)]
mod svg;

use svg::{Point, Series};

fn line(label: &str, scale: f64, sizes: &[u64]) -> Series {
    Series {
        label: label.into(),
        points: sizes
            .iter()
            .map(|&b| Point {
                bytes: b,
                p50_ns: scale * (100.0 + b as f64 / 10.0),
                p99_ns: 2.0 * scale * (100.0 + b as f64 / 10.0),
            })
            .collect(),
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn the_svg_has_every_series_with_its_band_and_labelled_axes() {
    let series = [
        line(
            "isocall ring round trip",
            1.0,
            &[64, 4096, 1 << 20, 16 << 20],
        ),
        line("Unix socket", 20.0, &[16 << 20, 64, 4096]),
    ];
    let out = svg::render("a synthetic plot", &series, (900, 600)).unwrap();
    assert!(out.starts_with("<svg"), "{}", &out[..out.len().min(200)]);
    for s in &series {
        assert_eq!(count(&out, &s.label), 1, "legend of {}", s.label);
    }
    assert!(out.contains("a synthetic plot"));
    assert!(out.contains("line: p50; band: p50 to p99"));
    // One band per series, a p50 and a p99 line each, a marker per point.
    assert_eq!(count(&out, "<polygon"), 2);
    assert!(count(&out, "<polyline") >= 4);
    assert_eq!(count(&out, "<circle"), 7);
    // Log axes labelled in bytes (powers of four) and in time.
    for tick in [
        "64 B", "256 B", "1 KiB", "4 KiB", "1 MiB", "16 MiB", "1 µs", "1 ms",
    ] {
        assert!(out.contains(&format!(">\n{tick}\n<")), "no tick {tick}");
    }
    assert!(out.contains("payload, each way (log scale)"));
    assert!(out.contains("round trip (log scale)"));

    let path = std::env::temp_dir().join(format!("isocall-plot-{}.svg", std::process::id()));
    svg::write(&path, "a synthetic plot", &series).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(written.contains("Unix socket") && written.trim_end().ends_with("</svg>"));
}

#[test]
fn nothing_to_plot_or_a_zero_is_an_error() {
    assert!(svg::render("empty", &[], (400, 300)).is_err());
    let mut bad = line("bad", 1.0, &[64, 256]);
    bad.points[1].p50_ns = 0.0;
    let e = svg::render("bad", &[bad], (400, 300)).unwrap_err();
    assert!(e.contains("log axes"), "{e}");
}

#[test]
fn axis_labels_name_sizes_and_times() {
    assert_eq!(svg::fmt_bytes(64.0), "64 B");
    assert_eq!(svg::fmt_bytes(1024.0), "1 KiB");
    assert_eq!(svg::fmt_bytes(262_144.0), "256 KiB");
    assert_eq!(svg::fmt_bytes(16_777_216.000_001), "16 MiB");
    assert_eq!(svg::fmt_ns(100.0), "100 ns");
    assert_eq!(svg::fmt_ns(10_000.0), "10 µs");
    assert_eq!(svg::fmt_ns(2_500_000.0), "2.5 ms");
}
