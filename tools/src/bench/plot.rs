//! `isocall bench --plot FILE.svg`: round trip against payload size, from
//! 64 B to 16 MiB, between two pinned processes, each payload written
//! whole by its sender and read whole by its receiver, measured by the
//! figures' own code at each size:
//!
//! - isocall ring: `ring.rtt.busy.<len>` while a message fits one frame of
//!   the bench's 1 MiB ring; past that the line goes on with the blob
//!   figure of the same size (how isocall moves those bytes);
//! - isocall call: `call.rtt.busy.<len>` (the body in the frame up to the
//!   frame limit, then a blob);
//! - blob end to end: `blob.rtt.e2e.<len>`;
//! - UDS: `uds.rtt.<len>`, the same bytes through a Unix socket.
//!
//! At 64 B the figures are those of the table (`ring.rtt.busy.64`,
//! `call.rtt.busy.64`, `uds.rtt.64`). Each figure is measured briefly, at
//! least [`Budget::min_samples`] round trips; the plot is the median over
//! rounds (one with `--quick`). The figures also print as a table (or
//! `--json`), each beside `uds.rtt` of its size.

use std::path::Path;
use std::time::Duration;

use isocall_engine::WaitStrategy;

use super::measure::{Budget, Measured};
use super::peer::Control;
use super::svg::{self, Point, Series};
use super::{BenchArgs, Res, Spec, Unit, blob, call, glob_match, ring, sockets};

/// The payload sizes of the plot.
pub const SIZES: [usize; 10] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
];

/// The way a figure of the plot moves its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Ring,
    Call,
    Blob,
    Uds,
}

/// One figure of the plot.
struct PlotFigure {
    name: String,
    route: Route,
    len: usize,
}

/// The plot's figures, by size and then path.
fn plot_figures() -> Vec<PlotFigure> {
    let mut out = Vec::new();
    for len in SIZES {
        let mut add = |route, name: String| out.push(PlotFigure { name, route, len });
        if len <= ring::max_frame_payload() {
            add(Route::Ring, format!("ring.rtt.busy.{len}"));
        }
        add(Route::Call, format!("call.rtt.busy.{len}"));
        add(Route::Blob, format!("blob.rtt.e2e.{len}"));
        add(Route::Uds, format!("uds.rtt.{len}"));
    }
    out
}

/// Measures one figure of the plot with the figures' own code.
fn measure(f: &PlotFigure, budget: &Budget) -> Res<Measured> {
    match f.route {
        Route::Ring => ring::rtt(budget, WaitStrategy::BusySpin, f.len),
        Route::Call => call::rtt_sized(budget, f.len),
        Route::Blob => blob::rtt(budget, f.len, true),
        Route::Uds if f.len == 64 => sockets::uds_rtt(budget),
        Route::Uds => sockets::uds_rtt_bytes(budget, f.len),
    }
}

/// The peer of a plot figure that is not in the table's registry (which
/// is looked up first).
pub fn peer_of(name: &str) -> Option<fn(Control) -> Res<()>> {
    let sized = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| n.parse::<usize>().is_ok())
    };
    if sized("ring.rtt.busy.") {
        Some(ring::rtt_peer)
    } else if sized("call.rtt.busy.") {
        Some(call::server_peer)
    } else if sized("blob.rtt.e2e.") {
        Some(blob::rtt_peer)
    } else if sized("uds.rtt.") {
        Some(sockets::uds_bytes_peer)
    } else {
        None
    }
}

/// The plot's budget: short measurements, with enough round trips for a
/// p99 at the large sizes.
fn budget(quick: bool) -> Budget {
    let base = if quick {
        Budget::quick()
    } else {
        Budget::full()
    };
    Budget {
        warmup: Duration::from_millis(if quick { 20 } else { 50 }),
        measure: Duration::from_millis(if quick { 60 } else { 250 }),
        min_samples: if quick { 30 } else { 100 },
        rounds: if quick { 1 } else { 3 },
        ..base
    }
}

/// Runs `isocall bench --plot PATH`.
pub fn run(args: &BenchArgs, path: &Path) -> Res<()> {
    let all = plot_figures();
    let chosen: Vec<&PlotFigure> = all
        .iter()
        .filter(|f| {
            args.pattern
                .as_deref()
                .is_none_or(|p| glob_match(p, &f.name))
        })
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
        return Err(format!(
            "no figure of the plot matches {:?}; figures: {}",
            args.pattern.as_deref().unwrap_or(""),
            names.join(", ")
        )
        .into());
    }
    let budget = budget(args.quick);
    let specs: Vec<Spec> = chosen
        .iter()
        .map(|f| {
            let uds = format!("uds.rtt.{}", f.len);
            Spec {
                floor: (f.route != Route::Uds).then_some(uds),
                name: f.name.clone(),
                unit: Unit::Ns,
                also: Vec::new(),
            }
        })
        .collect();
    let rows = super::measure_rounds(&specs, budget.rounds, |i| measure(chosen[i], &budget))?;
    let point = |name: &str, len: usize| {
        let r = rows.iter().find(|r| r.name == name)?;
        Some(Point {
            bytes: len as u64,
            p50_ns: r.m.p50?,
            p99_ns: r.m.p99?,
        })
    };
    let line = |label: &str, name: &dyn Fn(usize) -> String| Series {
        label: label.to_string(),
        points: SIZES.iter().filter_map(|&n| point(&name(n), n)).collect(),
    };
    let max_frame = ring::max_frame_payload();
    let series = [
        line(
            &format!(
                "isocall ring round trip (frames up to {}, then blobs)",
                svg::fmt_bytes(
                    SIZES
                        .iter()
                        .copied()
                        .filter(|&n| n <= max_frame)
                        .max()
                        .unwrap_or(0) as f64
                )
            ),
            &|n| {
                if n <= max_frame {
                    format!("ring.rtt.busy.{n}")
                } else {
                    format!("blob.rtt.e2e.{n}")
                }
            },
        ),
        line(
            &format!(
                "isocall call round trip (body in the frame up to {}, then a blob)",
                svg::fmt_bytes(
                    SIZES
                        .iter()
                        .copied()
                        .filter(|&n| call::body_fits_frame(n))
                        .max()
                        .unwrap_or(0) as f64
                )
            ),
            &|n| format!("call.rtt.busy.{n}"),
        ),
        line("blob end to end (written and read whole)", &|n| {
            format!("blob.rtt.e2e.{n}")
        }),
        line("Unix socket (the same bytes copied)", &|n| {
            format!("uds.rtt.{n}")
        }),
    ];
    let series: Vec<Series> = series
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    svg::write(
        path,
        "Round trip between two processes against payload size",
        &series,
    )?;
    eprintln!("isocall bench: plot written to {}", path.display());
    super::print_rows(args, &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plot_figure_has_a_peer_and_a_unique_name() {
        let all = plot_figures();
        let table = super::super::figures();
        for f in &all {
            assert_eq!(all.iter().filter(|g| g.name == f.name).count(), 1);
            assert!(
                table.iter().any(|g| g.name == f.name) || peer_of(&f.name).is_some(),
                "{} has no peer",
                f.name
            );
        }
        assert!(all.iter().any(|f| f.name == "ring.rtt.busy.262144"));
        assert!(!all.iter().any(|f| f.name == "ring.rtt.busy.1048576"));
        assert!(peer_of("ring.rtt.busy.x").is_none());
    }
}
