//! Output: a text table, Markdown, or the JSON array of DESIGN.md.

use serde_json::{Value, json};

use super::{Row, Unit};

fn num(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

/// One JSON array; each element `{name, unit, p50, p99, p999, value}` plus
/// `gb_per_s` for streams, `floor`/`ratio` and `compared` ratios.
pub fn json(rows: &[Row]) -> String {
    let arr: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut o = json!({
                "name": r.name,
                "unit": r.unit.as_str(),
                "p50": num(r.m.p50),
                "p99": num(r.m.p99),
                "p999": num(r.m.p999),
                "value": num(r.m.value),
                "samples": r.m.samples,
            });
            if r.m.gbps.is_some() {
                o["gb_per_s"] = num(r.m.gbps);
            }
            if let Some((f, x)) = &r.floor {
                o["floor"] = json!(f);
                o["ratio"] = num(Some(*x));
            }
            if !r.also.is_empty() {
                o["compared"] = r
                    .also
                    .iter()
                    .map(|(n, x)| (n.clone(), num(Some(*x))))
                    .collect();
            }
            o
        })
        .collect();
    serde_json::to_string_pretty(&arr).unwrap_or_else(|_| "[]".into())
}

fn fmt_ns(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.2} µs", v / 1e3),
        Some(v) => format!("{v:.0} ns"),
    }
}

fn fmt_rate(r: &Row) -> String {
    match (r.m.value, r.m.gbps) {
        (Some(v), Some(g)) => format!("{:.2} M/s ({g:.2} GB/s)", v / 1e6),
        (Some(v), None) => format!("{:.2} M/s", v / 1e6),
        _ => "-".into(),
    }
}

fn cells(r: &Row) -> [String; 6] {
    let (p50, p99, p999, rate) = match r.unit {
        Unit::Ns => (
            fmt_ns(r.m.p50),
            fmt_ns(r.m.p99),
            fmt_ns(r.m.p999),
            "-".into(),
        ),
        Unit::MsgPerSec | Unit::CallPerSec => ("-".into(), "-".into(), "-".into(), fmt_rate(r)),
        Unit::Instr => (
            "-".into(),
            "-".into(),
            "-".into(),
            r.m.value.map_or("-".into(), |v| format!("{v:.0} instr")),
        ),
    };
    let mut cmp: Vec<String> = r
        .floor
        .iter()
        .map(|(n, x)| format!("{x:.2}× {n}"))
        .collect();
    cmp.extend(r.also.iter().map(|(n, x)| format!("{x:.2}× {n}")));
    [r.name.clone(), p50, p99, p999, rate, cmp.join(", ")]
}

const HEADERS: [&str; 6] = [
    "figure",
    "p50",
    "p99",
    "p99.9",
    "rate",
    "ratio (latency: lower is better; rate: higher)",
];

/// A plain text table.
pub fn table(rows: &[Row]) -> String {
    let all: Vec<[String; 6]> = rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for c in &all {
        for (w, s) in widths.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        c.iter()
            .zip(widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(&HEADERS.map(String::from))];
    out.extend(all.iter().map(|c| line(c)));
    out.join("\n")
}

/// A Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = vec![
        format!("| {} |", HEADERS.join(" | ")),
        format!("|{}|", HEADERS.map(|_| "---").join("|")),
    ];
    out.extend(rows.iter().map(|r| format!("| {} |", cells(r).join(" | "))));
    out.join("\n")
}
