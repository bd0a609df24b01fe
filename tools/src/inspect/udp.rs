//! Lossy (UDP) subscribers in `isocall inspect`: each one's counters, from
//! its memfd `isocall:udp:<bound address>`.
//!
//! Each is an element of `"udp_subscribers"`: `{"address", "pid",
//! "pid_seen_in", "alive", "type_name", "fingerprint", "label",
//! "received", "lost", "reordered", "duplicates", "late", "malformed",
//! "foreign", "restarts"}`. Every number is the subscriber's word: display
//! only.

use std::os::fd::OwnedFd;

use isocall_engine::channel::udp::stats::{UDP_MEMFD_PREFIX, read_udp_stats};
use serde_json::{Value, json};

/// Takes a memfd that is a lossy subscriber's block (an entry of `out`,
/// or of `errors` if it does not read); gives it back if it is not one.
pub fn take(
    name: &str,
    pid: u32,
    fd: OwnedFd,
    out: &mut Vec<Value>,
    errors: &mut Vec<Value>,
) -> Option<OwnedFd> {
    if !name.starts_with(UDP_MEMFD_PREFIX) {
        return Some(fd);
    }
    match read_udp_stats(fd) {
        Ok(i) => out.push(json!({
            "address": i.address,
            "pid": i.pid,
            "pid_seen_in": pid,
            "alive": super::alive(i.pid),
            "type_name": i.type_name,
            "fingerprint": i.fingerprint,
            "label": i.label,
            "received": i.stats.received,
            "lost": i.stats.lost,
            "reordered": i.stats.reordered,
            "duplicates": i.stats.duplicates,
            "late": i.stats.late,
            "malformed": i.stats.malformed,
            "foreign": i.stats.foreign,
            "restarts": i.stats.restarts,
        })),
        Err(e) => errors.push(json!({"name": name, "pid": pid, "error": e.to_string()})),
    }
    None
}

/// The readable form of `"udp_subscribers"`.
pub fn text(subs: &[Value], s: &mut String) {
    for u in subs {
        s.push_str(&format!(
            "udp subscriber udp://{} of {} {:?} (pid {}{}): received {} lost {} reordered {} duplicates {} late {} malformed {} foreign {} restarts {}\n",
            u["address"].as_str().unwrap_or("?"),
            u["type_name"].as_str().unwrap_or("?"),
            u["label"].as_str().unwrap_or(""),
            u["pid"],
            if u["alive"].as_bool() == Some(true) { "" } else { ", dead" },
            u["received"], u["lost"], u["reordered"], u["duplicates"], u["late"],
            u["malformed"], u["foreign"], u["restarts"],
        ));
    }
}
