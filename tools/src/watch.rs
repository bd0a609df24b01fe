//! `isocall inspect --watch`: the inspector's figures redrawn every second
//! (ratatui), with rates: frames per second on each ring and wake-ups per
//! second, from the difference between two looks. `q`, Esc or Ctrl-C quits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::Constraint;
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Borders, Row, Table};
use serde_json::Value;

use crate::bench::Res;
use crate::inspect::{InspectArgs, collect};

/// One ring's line in the live view.
#[derive(Clone, Debug, PartialEq)]
pub struct RingLine {
    /// `segment name` and `c2s`/`s2c`.
    pub key: String,
    /// Frames published per second since the last look.
    pub frames_per_s: f64,
    /// Wake-ups (both sides) per second since the last look.
    pub wakes_per_s: f64,
    /// Bytes pending now.
    pub pending_bytes: u64,
    /// Frames pending now.
    pub pending_frames: u64,
    /// Blob slots in use in the segment now.
    pub blobs_used: u64,
    /// Whether both sides live.
    pub alive: bool,
}

/// Turns two looks (`prev` taken `dt` before `now`) into the view's lines.
pub fn lines(prev: &Value, now: &Value, dt: Duration) -> Vec<RingLine> {
    let secs = dt.as_secs_f64().max(1e-3);
    let mut before: HashMap<String, (u64, u64)> = HashMap::new();
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    let empty = Vec::new();
    for s in prev["segments"].as_array().unwrap_or(&empty) {
        for dir in ["c2s", "s2c"] {
            let r = &s["rings"][dir];
            let key = format!("{} {dir}", s["name"].as_str().unwrap_or("?"));
            before.insert(
                key,
                (
                    num(&r["frames_published"]),
                    num(&r["producer_wakes"]) + num(&r["consumer_wakes"]),
                ),
            );
        }
    }
    let mut out = Vec::new();
    for s in now["segments"].as_array().unwrap_or(&empty) {
        let blobs_used = s["blobs"]["classes"]
            .as_array()
            .map(|cs| cs.iter().map(|c| num(&c["count"]) - num(&c["free"])).sum())
            .unwrap_or(0);
        let alive = s["sides"]["client"]["alive"] == true && s["sides"]["server"]["alive"] == true;
        for dir in ["c2s", "s2c"] {
            let r = &s["rings"][dir];
            let key = format!("{} {dir}", s["name"].as_str().unwrap_or("?"));
            let frames = num(&r["frames_published"]);
            let wakes = num(&r["producer_wakes"]) + num(&r["consumer_wakes"]);
            let (f0, w0) = before.get(&key).copied().unwrap_or((frames, wakes));
            out.push(RingLine {
                key,
                frames_per_s: frames.saturating_sub(f0) as f64 / secs,
                wakes_per_s: wakes.saturating_sub(w0) as f64 / secs,
                pending_bytes: num(&r["pending_bytes"]),
                pending_frames: num(&r["pending_frames"]),
                blobs_used,
                alive,
            });
        }
    }
    out
}

/// Draws `lines` on `terminal`.
pub fn draw<B: Backend>(terminal: &mut Terminal<B>, lines: &[RingLine], errors: usize) -> Res<()> {
    terminal.draw(|f| {
        let header = Row::new([
            "ring",
            "frames/s",
            "wakes/s",
            "pending B",
            "pending frames",
            "blobs used",
            "sides",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD));
        let rows = lines.iter().map(|l| {
            Row::new([
                l.key.clone(),
                format!("{:.0}", l.frames_per_s),
                format!("{:.0}", l.wakes_per_s),
                l.pending_bytes.to_string(),
                l.pending_frames.to_string(),
                l.blobs_used.to_string(),
                if l.alive {
                    "alive".into()
                } else {
                    "a side is dead".into()
                },
            ])
        });
        let widths = [
            Constraint::Percentage(34),
            Constraint::Percentage(11),
            Constraint::Percentage(10),
            Constraint::Percentage(11),
            Constraint::Percentage(12),
            Constraint::Percentage(10),
            Constraint::Percentage(12),
        ];
        let title = format!(
            " isocall inspect --watch: {} rings, {errors} unreadable segments (q quits) ",
            lines.len()
        );
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title(title));
        f.render_widget(table, f.area());
    })?;
    Ok(())
}

/// Runs the live view until the user quits.
pub fn run(args: &InspectArgs) -> Res<()> {
    let mut terminal = ratatui::init();
    let result = (|| -> Res<()> {
        let mut prev = collect(args);
        let mut at = Instant::now();
        loop {
            if event::poll(Duration::from_secs(1))?
                && let Event::Key(k) = event::read()?
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
            let now = collect(args);
            let dt = at.elapsed();
            at = Instant::now();
            let errors = now["errors"].as_array().map_or(0, Vec::len);
            draw(&mut terminal, &lines(&prev, &now, dt), errors)?;
            prev = now;
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn doc(frames: u64, wakes: u64) -> Value {
        json!({"segments": [{
            "name": "isocall:svc:1",
            "sides": {"client": {"alive": true}, "server": {"alive": false}},
            "rings": {
                "c2s": {"frames_published": frames, "producer_wakes": wakes, "consumer_wakes": 0, "pending_bytes": 128, "pending_frames": 1},
                "s2c": {"frames_published": 0, "producer_wakes": 0, "consumer_wakes": 0, "pending_bytes": 0, "pending_frames": 0},
            },
            "blobs": {"classes": [{"count": 10, "free": 7}]},
        }], "errors": []})
    }

    #[test]
    fn rates_come_from_two_looks() {
        let l = lines(&doc(1000, 10), &doc(3000, 30), Duration::from_secs(2));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].key, "isocall:svc:1 c2s");
        assert_eq!(l[0].frames_per_s, 1000.0);
        assert_eq!(l[0].wakes_per_s, 10.0);
        assert_eq!(
            (l[0].pending_bytes, l[0].pending_frames, l[0].blobs_used),
            (128, 1, 3)
        );
        assert!(!l[0].alive);
        // A segment seen for the first time has no rate yet.
        let fresh = lines(&json!({"segments": []}), &doc(5, 0), Duration::from_secs(1));
        assert_eq!(fresh[0].frames_per_s, 0.0);
    }

    #[test]
    fn the_view_renders() {
        let mut t = Terminal::new(TestBackend::new(120, 8)).unwrap();
        let l = lines(&doc(0, 0), &doc(500, 0), Duration::from_secs(1));
        draw(&mut t, &l, 1).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(screen.contains("isocall:svc:1 c2s"), "{screen}");
        assert!(screen.contains("500"), "{screen}");
        assert!(screen.contains("1 unreadable"), "{screen}");
    }
}
