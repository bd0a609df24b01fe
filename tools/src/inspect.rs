//! `isocall inspect [PID]`: every live isocall segment a process holds (or
//! every process this user may read), mapped read-only: both sides and
//! whether they live, each ring's positions, pending frames and counters,
//! and the blob pool's census. It never writes and never blocks the
//! processes it looks at; a segment that vanishes or does not check out is
//! reported and skipped. `--watch` is a live view (see `watch`).
//!
//! `--json` prints one object: `{"segments": [...], "errors": [...]}`; each
//! segment is `{"name", "pid_seen_in", "size", "layout_version",
//! "creator_pid", "sides": {"client"|"server": {"pid", "state", "alive"}},
//! "rings": {"c2s"|"s2c": {"capacity", "head", "tail", "pending_bytes",
//! "pending_frames", "first_frames": [{"kind", "kind_name", "len",
//! "call_id"?, "method"?, "method_name"?, "hex"?}] (a frame position that
//! is not on a frame boundary ends the list with {"kind_name": "corrupt",
//! "misaligned_at"}), "consumer_waiting", "producer_waiting",
//! "frames_published", "frames_consumed", "bytes_published",
//! "bytes_consumed", "producer_wakes", "consumer_wakes", "producer_sleeps",
//! "consumer_sleeps", "consumer_unwoken", "consumer_unseen",
//! "full_stalls"}}, "blobs": null | {"classes":
//! [{"slot_size", "count", "free", "held_client", "held_server",
//! "in_flight_to_client", "in_flight_to_server", "invalid",
//! "held_by_dead"}]}}`; each error is `{"name", "pid", "error"}`.
//!
//! A process that supervises a service (`isocall_engine::supervise`) holds
//! its counters in a memfd named `isocall:supervisor:<service>`; each is an
//! element of `"supervisors"`: `{"service", "pid_seen_in", "state",
//! "supervisor_pid", "service_pid", "standby", "spares_ready", "starts",
//! "exits", "crashes", "restarts", "retries", "calls_failed", "recoveries",
//! "mean_recovery_ns"}`.
//!
//! A channel's publisher and subscribers show in `"channels"`, with each
//! subscriber's counters (sent, dropped, disconnected, queue depth): see
//! `channels`.
//!
//! A lossy (UDP) subscriber keeps its counters (received, lost,
//! reordered, duplicates, malformed, foreign) in a memfd named
//! `isocall:udp:<bound address>`; each is an element of
//! `"udp_subscribers"`: see `udp`.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{Ordering, fence};

use isocall_engine::blob::census;
use isocall_engine::raw::{Direction, SIDE_ATTACHED, SIDE_CLOSED, Segment, Side};
use isocall_engine::ring::layout::{DATA, FRAME_ALIGN, FRAME_HEADER_BYTES, KIND_PAD};
use isocall_engine::ring::{ReadOnlyRegion, snapshot};
use isocall_engine::supervise;
use serde_json::{Value, json};

use crate::bench::Res;

mod channels;
mod udp;

/// Arguments of `isocall inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The process to look at (default: every process this user may read).
    pub pid: Option<u32>,
    /// Print JSON (schema in `isocall inspect --help` of the source).
    #[arg(long)]
    pub json: bool,
    /// Hex-dump the payload of up to this many pending frames per ring.
    #[arg(long, value_name = "N")]
    pub dump_frame: Option<usize>,
    /// A live view, redrawn every second, with rates (q quits).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

/// Frames shown per ring.
const FIRST_FRAMES: usize = 4;

struct Found {
    pid: u32,
    name: String,
    file: File,
}

/// The isocall memfds of `pid` (`/proc/PID/fd` links named
/// `/memfd:isocall:...`), large blobs excepted. One that is gone by the
/// time it is opened is skipped; one that cannot be opened otherwise (out
/// of descriptors, say) is an entry of `errors`.
fn memfds(pid: u32, out: &mut Vec<Found>, seen: &mut HashSet<(u64, u64)>, errors: &mut Vec<Value>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for entry in dir.flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        let Some(rest) = link.strip_prefix("/memfd:isocall:") else {
            continue;
        };
        if rest.starts_with("large:") {
            continue;
        }
        // Segments made ahead of need by a supervisor: no one uses them yet.
        if rest.contains(":premade") {
            continue;
        }
        let name = format!("isocall:{}", rest.trim_end_matches(" (deleted)"));
        // Opening the link gives our own descriptor on the same memfd; it
        // may be gone by now, which is fine.
        let file = match File::open(entry.path()) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors
                    .push(json!({"name": name, "pid": pid, "error": format!("cannot open: {e}")}));
                continue;
            }
        };
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(e) => {
                errors
                    .push(json!({"name": name, "pid": pid, "error": format!("cannot stat: {e}")}));
                continue;
            }
        };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(Found { pid, name, file });
        }
    }
}

fn alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn kind_name(kind: u16) -> &'static str {
    match kind {
        1 => "REQUEST",
        2 => "RESPONSE",
        3 => "MESSAGE",
        4 => "CANCEL",
        5 => "CLOSE",
        KIND_PAD => "PAD",
        _ => "user",
    }
}

/// The first pending frames of a ring, read from its view.
fn pending_frames(
    ring: &ReadOnlyRegion,
    head: u64,
    tail: u64,
    dump: usize,
    methods: &[String],
) -> Vec<Value> {
    let cap = (ring.len() - DATA) as u64;
    let mut out = Vec::new();
    let mut pos = head;
    let mut steps = 0;
    while pos < tail && out.len() < FIRST_FRAMES.max(dump) && steps < 64 {
        steps += 1;
        // `head` is the peer's word: a frame starts on a FRAME_ALIGN
        // boundary, and a word read elsewhere would be misaligned.
        if !pos.is_multiple_of(FRAME_ALIGN as u64) {
            out.push(json!({"kind_name": "corrupt", "misaligned_at": pos}));
            break;
        }
        let off = DATA + (pos % cap) as usize;
        let word = ring.load_u64(off);
        // Acquire, as a fence (the view is read-only: only Relaxed loads):
        // the payload read below is at least as new as the header.
        fence(Ordering::Acquire);
        if word == 0 {
            break;
        }
        let (len, kind) = (word as u32 as u64, (word >> 32) as u16);
        if kind == KIND_PAD {
            match pos.checked_add(cap - pos % cap) {
                Some(next) => pos = next,
                None => break,
            }
            continue;
        }
        let size =
            (FRAME_HEADER_BYTES as u64 + len).div_ceil(FRAME_ALIGN as u64) * FRAME_ALIGN as u64;
        if (pos % cap) + size > cap {
            out.push(json!({"kind": kind, "kind_name": "corrupt", "len": len}));
            break;
        }
        let payload_off = off + FRAME_HEADER_BYTES;
        let shown = (len as usize).min(256);
        let bytes = read_bytes(ring, payload_off, shown);
        let mut f = json!({"kind": kind, "kind_name": kind_name(kind), "len": len});
        if (1..=5).contains(&kind) && bytes.len() >= 16 {
            f["call_id"] = json!(u64::from_le_bytes(
                bytes[..8].try_into().unwrap_or_default()
            ));
            let m = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
            f["method"] = json!(m);
            if matches!(kind, 1 | 3)
                && let Some(name) = methods.get(m as usize)
            {
                f["method_name"] = json!(name);
            }
        }
        if out.len() < dump {
            f["hex"] = json!(hex(&bytes));
        }
        out.push(f);
        match pos.checked_add(size) {
            Some(next) => pos = next,
            None => break,
        }
    }
    out
}

/// Copies bytes out of the view (atomic loads: the producer may be writing
/// them), as many as lie inside it.
fn read_bytes(ring: &ReadOnlyRegion, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len.min(ring.len().saturating_sub(off))];
    ring.read_bytes(off, &mut v);
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ring_json(seg: &Segment, dir: Direction, dump: usize, methods: &[String]) -> Value {
    let Some(view) = seg.ring_view(dir) else {
        return json!({"error": "the ring does not map"});
    };
    let Ok(s) = snapshot(&view) else {
        return json!({"error": "not a ring"});
    };
    json!({
        "capacity": s.capacity,
        "head": s.head,
        "tail": s.tail,
        "pending_bytes": s.tail.saturating_sub(s.head),
        "pending_frames": s.frames_published.saturating_sub(s.frames_consumed),
        "first_frames": pending_frames(&view, s.head, s.tail, dump, methods),
        "consumer_waiting": s.consumer_waiting != 0,
        "producer_waiting": s.producer_waiting != 0,
        "frames_published": s.frames_published,
        "frames_consumed": s.frames_consumed,
        "bytes_published": s.bytes_published,
        "bytes_consumed": s.bytes_consumed,
        "producer_wakes": s.producer_wakes,
        "consumer_wakes": s.consumer_wakes,
        "producer_sleeps": s.producer_sleeps,
        "consumer_sleeps": s.consumer_sleeps,
        "consumer_unwoken": s.consumer_unwoken,
        "consumer_unseen": s.consumer_unseen,
        "full_stalls": s.full_stalls,
    })
}

fn segment_json(name: &str, pid: u32, seg: &Segment, dump: usize) -> Value {
    let h = seg.header();
    let methods = seg.method_table();
    let side = |s: Side| {
        let st = seg.side_state(s);
        json!({
            "pid": st.pid,
            "state": match st.state { SIDE_ATTACHED => "attached", SIDE_CLOSED => "closed", 0 => "absent", _ => "unknown" },
            "alive": alive(st.pid),
        })
    };
    let dead = [
        !alive(seg.side_state(Side::Client).pid),
        !alive(seg.side_state(Side::Server).pid),
    ];
    let blobs = seg.blob_view().and_then(|v| census(&v).ok()).map(|st| {
        json!({"classes": st.classes.iter().map(|c| json!({
            "slot_size": c.slot_size,
            "count": c.count,
            "free": c.free,
            "held_client": c.held[0],
            "held_server": c.held[1],
            "in_flight_to_client": c.in_flight[0],
            "in_flight_to_server": c.in_flight[1],
            "invalid": c.invalid,
            "held_by_dead": if dead[0] { c.held[0] } else { 0 } + if dead[1] { c.held[1] } else { 0 },
        })).collect::<Vec<_>>()})
    });
    json!({
        "name": name,
        "pid_seen_in": pid,
        "size": h.total_size,
        "layout_version": h.version,
        "creator_pid": h.creator_pid,
        "sides": {"client": side(Side::Client), "server": side(Side::Server)},
        "rings": {
            "c2s": ring_json(seg, Direction::ClientToServer, dump, &methods),
            "s2c": ring_json(seg, Direction::ServerToClient, dump, &methods),
        },
        "blobs": blobs,
    })
}

/// Inspects and returns the JSON document.
pub fn collect(args: &InspectArgs) -> Value {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    match args.pid {
        Some(pid) => memfds(pid, &mut found, &mut seen, &mut errors),
        None => {
            if let Ok(dir) = std::fs::read_dir("/proc") {
                for e in dir.flatten() {
                    if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                        memfds(pid, &mut found, &mut seen, &mut errors);
                    }
                }
            }
        }
    }
    let mut segments = Vec::new();
    let mut supervisors = Vec::new();
    let mut chans = channels::Channels::default();
    let mut udp_subs = Vec::new();
    for Found { pid, name, file } in found {
        // The descriptor moves into the reader: no duplicate is needed, so
        // running out of descriptors here is impossible.
        let fd = OwnedFd::from(file);
        if let Some(service) = name.strip_prefix(supervise::MEMFD_PREFIX) {
            match supervise::read_stats(fd) {
                Ok(st) => supervisors.push(supervisor_json(service, pid, &st)),
                Err(e) => errors.push(json!({"name": name, "pid": pid, "error": e.to_string()})),
            }
            continue;
        }
        let Some(fd) = chans.take(&name, pid, fd, &mut errors) else {
            continue;
        };
        let Some(fd) = udp::take(&name, pid, fd, &mut udp_subs, &mut errors) else {
            continue;
        };
        match Segment::open_read_only(fd) {
            Ok(seg) => {
                chans.subscriber(&name, pid, &seg);
                segments.push(segment_json(&name, pid, &seg, args.dump_frame.unwrap_or(0)));
            }
            Err(e) => errors.push(json!({"name": name, "pid": pid, "error": e.to_string()})),
        }
    }
    json!({
        "segments": segments,
        "supervisors": supervisors,
        "channels": chans.into_json(),
        "udp_subscribers": udp_subs,
        "errors": errors,
    })
}

fn supervisor_json(service: &str, pid: u32, st: &supervise::SupervisorStats) -> Value {
    json!({
        "service": service,
        "pid_seen_in": pid,
        "state": st.state.name(),
        "supervisor_pid": st.supervisor_pid,
        "service_pid": st.service_pid,
        "standby": st.standby,
        "spares_ready": st.spares_ready,
        "starts": st.starts,
        "exits": st.exits,
        "crashes": st.crashes,
        "restarts": st.restarts,
        "retries": st.retries,
        "calls_failed": st.calls_failed,
        "recoveries": st.recoveries,
        "mean_recovery_ns": st.mean_recovery().map(|d| d.as_nanos() as u64),
    })
}

/// Runs `isocall inspect`.
pub fn run(args: &InspectArgs) -> Res<()> {
    if args.watch {
        return crate::watch::run(args);
    }
    let doc = collect(args);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print!("{}", text(&doc));
    Ok(())
}

/// The readable form.
fn text(doc: &Value) -> String {
    let mut s = String::new();
    let empty = Vec::new();
    let segs = doc["segments"].as_array().unwrap_or(&empty);
    let sups = doc["supervisors"].as_array().unwrap_or(&empty);
    let chans = doc["channels"].as_array().unwrap_or(&empty);
    let udp_subs = doc["udp_subscribers"].as_array().unwrap_or(&empty);
    if segs.is_empty() && sups.is_empty() && chans.is_empty() && udp_subs.is_empty() {
        s.push_str("no isocall segments found\n");
    }
    channels::text(chans, &mut s);
    udp::text(udp_subs, &mut s);
    for v in sups {
        s.push_str(&format!(
            "supervisor of {} (pid {}): {}, serving pid {}, spares {}/{}  starts {} exits {} crashes {} restarts {}  retries {} calls failed {}  mean recovery {}\n",
            v["service"].as_str().unwrap_or("?"),
            v["supervisor_pid"],
            v["state"].as_str().unwrap_or("?"),
            v["service_pid"],
            v["spares_ready"],
            v["standby"],
            v["starts"],
            v["exits"],
            v["crashes"],
            v["restarts"],
            v["retries"],
            v["calls_failed"],
            v["mean_recovery_ns"]
                .as_u64()
                .map_or("-".into(), |n| format!("{:.1} µs", n as f64 / 1e3)),
        ));
    }
    for g in segs {
        let sd = |k: &str| {
            let x = &g["sides"][k];
            format!(
                "{} pid {} {}{}",
                k,
                x["pid"],
                x["state"].as_str().unwrap_or("?"),
                if x["alive"].as_bool() == Some(true) {
                    ""
                } else {
                    " (dead)"
                }
            )
        };
        s.push_str(&format!(
            "{}  ({} bytes, layout v{}; {}, {})\n",
            g["name"].as_str().unwrap_or("?"),
            g["size"],
            g["layout_version"],
            sd("client"),
            sd("server")
        ));
        for dir in ["c2s", "s2c"] {
            let r = &g["rings"][dir];
            s.push_str(&format!(
                "  ring {dir}: cap {} head {} tail {}  pending {} B / {} frames  waiting: consumer {} producer {}  frames {}/{} wakes {}/{} sleeps {}/{} (unwoken {}, unseen {}) full {}\n",
                r["capacity"], r["head"], r["tail"], r["pending_bytes"], r["pending_frames"],
                r["consumer_waiting"], r["producer_waiting"], r["frames_published"], r["frames_consumed"],
                r["producer_wakes"], r["consumer_wakes"], r["producer_sleeps"], r["consumer_sleeps"], r["consumer_unwoken"], r["consumer_unseen"], r["full_stalls"]
            ));
            for f in r["first_frames"].as_array().unwrap_or(&empty) {
                s.push_str(&format!(
                    "    {}{}{}{}\n",
                    f["kind_name"].as_str().unwrap_or("?"),
                    f.get("len")
                        .map(|l| format!(" len {l}"))
                        .or_else(|| f.get("misaligned_at").map(|p| format!(" at {p}")))
                        .unwrap_or_default(),
                    f.get("call_id")
                        .map(|c| format!(" call {c}"))
                        .unwrap_or_default(),
                    f.get("method_name")
                        .and_then(Value::as_str)
                        .map(|m| format!(" method {m}"))
                        .or_else(|| f.get("method").map(|m| format!(" method {m}")))
                        .unwrap_or_default()
                ));
                if let Some(h) = f["hex"].as_str() {
                    s.push_str(&format!("      {h}\n"));
                }
            }
        }
        if let Some(classes) = g["blobs"]["classes"].as_array() {
            for c in classes {
                s.push_str(&format!(
                    "  blobs {:>8} B: {} slots, {} free, held client {} server {}, in flight to client {} server {}, held by dead {}\n",
                    c["slot_size"], c["count"], c["free"], c["held_client"], c["held_server"],
                    c["in_flight_to_client"], c["in_flight_to_server"], c["held_by_dead"]
                ));
            }
        }
    }
    for e in doc["errors"].as_array().unwrap_or(&empty) {
        s.push_str(&format!(
            "{} (in pid {}): {}\n",
            e["name"].as_str().unwrap_or("?"),
            e["pid"],
            e["error"].as_str().unwrap_or("?")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use isocall_engine::raw::SegmentLayout;

    /// The segment's memfd mapped again, as words: what a peer writes.
    fn peer_words(seg: &Segment) -> isocall_engine::raw::sys::SharedMem {
        isocall_engine::raw::sys::SharedMem::open(seg.fd().try_clone_to_owned().unwrap()).unwrap()
    }

    fn segment() -> Segment {
        Segment::create("isocall:test:inspect", &SegmentLayout::default()).expect("segment")
    }

    #[test]
    fn a_misaligned_head_from_the_peer_is_reported_not_a_panic() {
        let seg = segment();
        let view = seg.ring_view(Direction::ClientToServer).unwrap();
        let frames = pending_frames(&view, 3, 1000, 4, &[]);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["kind_name"], "corrupt");
        assert_eq!(frames[0]["misaligned_at"], 3);
    }

    #[test]
    fn positions_at_the_end_of_the_u64_range_do_not_overflow() {
        let seg = segment();
        let view = seg.ring_view(Direction::ClientToServer).unwrap();
        let cap = (view.len() - DATA) as u64;
        let head = u64::MAX - (FRAME_ALIGN as u64 - 1);
        // A pad frame whose skip to the ring's end passes u64::MAX, written
        // as the peer would, through a mapping of its own.
        let off = DATA + (head % cap) as usize;
        let peer = peer_words(&seg);
        let at = (seg.header().ring_c2s.offset as usize + off) / 8;
        peer.u64_words().unwrap()[at].store(u64::from(KIND_PAD) << 32, Ordering::Release);
        assert!(pending_frames(&view, head, u64::MAX, 4, &[]).is_empty());
        // A frame whose size runs past u64::MAX.
        peer.u64_words().unwrap()[at].store(1 << 32 | 8, Ordering::Release);
        let frames = pending_frames(&view, head, u64::MAX, 4, &[]);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["kind_name"], "REQUEST");
    }

    #[test]
    fn a_read_only_view_gives_the_census_and_the_ring_positions() {
        use isocall_engine::blob::PoolConfig;
        let layout = SegmentLayout {
            ring_capacity: 4096,
            blobs: PoolConfig::new().class(256, 4).class(4096, 2),
        };
        let seg = Segment::create("isocall:test:inspect-census", &layout).expect("segment");
        let pool = seg.blob_pool(Side::Client).unwrap().expect("a pool");
        let _held = pool.alloc(10).unwrap();
        let _sent = pool.alloc(3000).unwrap().send().unwrap();
        let tail = (seg.header().ring_c2s.offset as usize + isocall_engine::ring::layout::TAIL) / 8;
        peer_words(&seg).u64_words().unwrap()[tail].store(128, Ordering::Release);
        // A second mapping of the memfd, read-only: only loads work on it.
        let fd = seg.fd().try_clone_to_owned().unwrap();
        let ro = Segment::open_read_only(fd).expect("read-only segment");
        let st = census(&ro.blob_view().expect("a pool view")).expect("census");
        assert_eq!(st, pool.stats());
        assert_eq!(
            (st.classes[0].held, st.classes[1].in_flight),
            ([1, 0], [0, 1])
        );
        let snap = snapshot(&ro.ring_view(Direction::ClientToServer).unwrap()).expect("snapshot");
        assert_eq!((snap.capacity, snap.tail), (4096, 128));
    }
}
