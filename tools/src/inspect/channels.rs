//! Channels in `isocall inspect`: a publisher's totals (its memfd
//! `isocall:publisher:<channel>`), its blob pool's census (the memfd
//! `isocall:chanpool:<channel>`) and each subscriber's counters (the
//! creator's words of its segment `isocall:chan:<channel>:<id>`), grouped
//! by channel and publishing process.
//!
//! Each channel is an element of `"channels"`: `{"channel", "pid_seen_in",
//! "publisher": null | {"pid", "type_name", "fingerprint", "subscribers",
//! "joined", "left", "refused", "failed", "sent", "dropped",
//! "disconnected", "history_depth", "history_held"}, "pool": null |
//! {"classes": [{"slot_size", "count", "free", "shared", "invalid"}]},
//! "subscribers": [{"id", "label", "segment", "pid", "alive", "policy",
//! "sent", "dropped", "queued", "ring_pending", "queue_depth",
//! "full_stalls", "history", "unwoken", "unseen",
//! "closed"}]}`. A subscriber's `queue_depth` is
//! what waits for it: its backlog (`queued`, outside its ring) and the
//! frames pending in its ring (`ring_pending`); `closed` is why the
//! publisher disconnected it (`null` while it is connected). Every number
//! is the writer's word (a subscriber can write its own segment's words
//! too): display only.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use isocall_engine::blob::census;
use isocall_engine::channel::stats::{
    POOL_MEMFD_PREFIX, PUBLISHER_MEMFD_PREFIX, PublisherStats, SEGMENT_PREFIX,
    read_publisher_stats, subscriber_stats,
};
use isocall_engine::raw::sys::SharedMem;
use isocall_engine::raw::{Direction, Segment, Side};
use isocall_engine::ring::snapshot;
use serde_json::{Value, json};

/// The channels found so far, by channel name and publishing process.
#[derive(Default)]
pub struct Channels {
    by_key: BTreeMap<(String, u32), Value>,
}

impl Channels {
    fn entry(&mut self, channel: &str, publisher_pid: u32, seen_in: u32) -> &mut Value {
        self.by_key
            .entry((channel.to_owned(), publisher_pid))
            .or_insert_with(|| {
                json!({
                    "channel": channel,
                    "pid_seen_in": seen_in,
                    "publisher": null,
                    "pool": null,
                    "subscribers": [],
                })
            })
    }

    /// Takes a memfd that is a publisher's block or a channel's pool;
    /// gives it back if it is neither. A block or pool that does not read
    /// is an error of `errors`.
    pub fn take(
        &mut self,
        name: &str,
        pid: u32,
        fd: OwnedFd,
        errors: &mut Vec<Value>,
    ) -> Option<OwnedFd> {
        if let Some(channel) = name.strip_prefix(PUBLISHER_MEMFD_PREFIX) {
            match read_publisher_stats(fd) {
                Ok(st) => self.entry(channel, st.pid, pid)["publisher"] = publisher_json(&st),
                Err(e) => errors.push(json!({"name": name, "pid": pid, "error": e.to_string()})),
            }
            return None;
        }
        if let Some(channel) = name.strip_prefix(POOL_MEMFD_PREFIX) {
            match pool_json(fd) {
                // The pool is seen in the publisher (first) or a
                // subscriber: it belongs to the channel of that name
                // whose publisher is `pid`, or was found in `pid`.
                Ok(v) => self.entry(channel, pid, pid)["pool"] = v,
                Err(e) => errors.push(json!({"name": name, "pid": pid, "error": e})),
            }
            return None;
        }
        Some(fd)
    }

    /// Records `seg`'s subscriber counters, if it is a channel
    /// subscriber's segment.
    pub fn subscriber(&mut self, name: &str, pid: u32, seg: &Segment) {
        let Some((channel, _id)) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|rest| rest.rsplit_once(':'))
        else {
            return;
        };
        let Some(st) = subscriber_stats(seg) else {
            return;
        };
        let pending = seg
            .ring_view(Direction::ServerToClient)
            .and_then(|v| snapshot(&v).ok())
            .map(|s| s.frames_published.saturating_sub(s.frames_consumed))
            .unwrap_or(0);
        let side = seg.side_state(Side::Client);
        let v = json!({
            "id": st.id,
            "label": st.label,
            "segment": name,
            "pid": side.pid,
            "alive": super::alive(side.pid),
            "policy": st.policy.map(|p| p.to_string()),
            "sent": st.sent,
            "dropped": st.dropped,
            "queued": st.queued,
            "ring_pending": pending,
            "queue_depth": st.queued.saturating_add(pending),
            "full_stalls": st.full,
            "history": st.history,
            "unwoken": st.unwoken,
            "unseen": st.unseen,
            "closed": st.closed.map(|r| r.to_string()),
        });
        let publisher = seg.header().creator_pid;
        if let Some(subs) = self.entry(channel, publisher, pid)["subscribers"].as_array_mut() {
            subs.push(v);
        }
    }

    /// The channels, each with its subscribers by id; a pool found only
    /// in a subscriber's process joins the channel of that name.
    pub fn into_json(self) -> Value {
        let mut out: Vec<Value> = Vec::new();
        let mut stray_pools = Vec::new();
        for (_, mut v) in self.by_key {
            if let Some(subs) = v["subscribers"].as_array_mut() {
                subs.sort_by_key(|s| s["id"].as_u64());
            }
            let empty =
                v["publisher"].is_null() && v["subscribers"].as_array().is_none_or(Vec::is_empty);
            if empty {
                stray_pools.push(v);
            } else {
                out.push(v);
            }
        }
        for p in stray_pools {
            match out
                .iter_mut()
                .find(|c| c["channel"] == p["channel"] && c["pool"].is_null())
            {
                Some(c) => c["pool"] = p["pool"].clone(),
                None => out.push(p),
            }
        }
        Value::Array(out)
    }
}

fn publisher_json(st: &PublisherStats) -> Value {
    json!({
        "pid": st.pid,
        "type_name": st.type_name,
        "fingerprint": st.fingerprint,
        "subscribers": st.subscribers,
        "joined": st.joined,
        "left": st.left,
        "refused": st.refused,
        "failed": st.failed,
        "sent": st.sent,
        "dropped": st.dropped,
        "disconnected": st.disconnected,
        "history_depth": st.history_depth,
        "history_held": st.history_held,
    })
}

/// The census of a channel's pool (the whole memfd, from offset 0).
fn pool_json(fd: OwnedFd) -> Result<Value, String> {
    let mem = SharedMem::open_read_only(fd).map_err(|e| e.to_string())?;
    let view = mem
        .region_read_only(0, mem.len())
        .ok()
        .flatten()
        .ok_or("the pool's memory does not map")?;
    let st = census(&view).map_err(|e| e.to_string())?;
    Ok(json!({"classes": st.classes.iter().map(|c| json!({
        "slot_size": c.slot_size,
        "count": c.count,
        "free": c.free,
        "shared": c.shared,
        "invalid": c.invalid,
    })).collect::<Vec<_>>()}))
}

/// The readable form of `"channels"`.
pub fn text(channels: &[Value], s: &mut String) {
    for c in channels {
        let p = &c["publisher"];
        if p.is_null() {
            s.push_str(&format!(
                "channel {} (publisher not seen)\n",
                c["channel"].as_str().unwrap_or("?")
            ));
        } else {
            s.push_str(&format!(
                "channel {} of {} (publisher pid {}): {} subscribers ({} joined, {} left, {} refused, {} failed)  sent {} dropped {} disconnected {}  history {}/{}\n",
                c["channel"].as_str().unwrap_or("?"),
                p["type_name"].as_str().unwrap_or("?"),
                p["pid"], p["subscribers"], p["joined"], p["left"], p["refused"], p["failed"],
                p["sent"], p["dropped"], p["disconnected"], p["history_held"], p["history_depth"],
            ));
        }
        for u in c["subscribers"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "  subscriber {} {:?} pid {}{}  {}  sent {} dropped {} queue {} ({} queued, {} in ring) full {} history {} unwoken {} (unseen {}){}\n",
                u["id"],
                u["label"].as_str().unwrap_or(""),
                u["pid"],
                if u["alive"].as_bool() == Some(true) { "" } else { " (dead)" },
                u["policy"].as_str().unwrap_or("?"),
                u["sent"], u["dropped"], u["queue_depth"], u["queued"], u["ring_pending"],
                u["full_stalls"], u["history"], u["unwoken"], u["unseen"],
                u["closed"].as_str().map(|r| format!("  closed: {r}")).unwrap_or_default(),
            ));
        }
        for k in c["pool"]["classes"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "  pool {:>8} B: {} slots, {} free, {} shared\n",
                k["slot_size"], k["count"], k["free"], k["shared"]
            ));
        }
    }
}
