//! `isocall inspect` against a segment whose state the test knows: five
//! frames left pending on a ring nobody reads (a stalled consumer), three
//! blobs held by the client side, one sent to the server; and a memfd named
//! like a segment whose header is garbage, which is reported as such while
//! the good segment is still shown.

use std::process::Command;
use std::sync::Arc;

use isocall_engine::WaitStrategy;
use isocall_engine::blob::PoolConfig;
use isocall_engine::raw::Liveness;
use isocall_engine::raw::sys::{Doorbell, SharedMem};
use isocall_engine::raw::{Segment, SegmentLayout};
use isocall_engine::raw::{Side, endpoint};
use serde_json::Value;

fn inspect(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isocall"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("run isocall inspect");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn inspect_reports_pending_frames_blobs_and_garbage() {
    let layout = SegmentLayout {
        ring_capacity: 64 << 10,
        blobs: PoolConfig::new().class(256, 16).class(4096, 4),
    };
    let seg = Arc::new(Segment::create("isocall:inspect-test:7", &layout).unwrap());
    seg.attach_side(Side::Client);
    let (bell, _theirs) = Doorbell::pair().unwrap();
    let (mut tx, _rx) = endpoint(
        seg.clone(),
        Side::Client,
        Arc::new(bell),
        WaitStrategy::Adaptive,
        Liveness::new(),
    )
    .unwrap();
    // Five REQUEST-kind frames: call id 100 + i, method 7, left unread.
    for i in 0..5u64 {
        let mut payload = [0u8; 40];
        payload[..8].copy_from_slice(&(100 + i).to_le_bytes());
        payload[8..12].copy_from_slice(&7u32.to_le_bytes());
        tx.send(1, &payload, None).unwrap();
    }
    let pool = seg.blob_pool(Side::Client).unwrap().unwrap();
    let held: Vec<_> = (0..3).map(|_| pool.alloc(100).unwrap()).collect();
    let _sent = pool.alloc(3000).unwrap().send().unwrap();
    // A memfd with an isocall name and a garbage header.
    let junk = SharedMem::create("isocall:garbage:1", 8192).unwrap();
    junk.u64_words().unwrap()[0].store(0xDEAD_BEEF, std::sync::atomic::Ordering::Release);

    let pid = std::process::id().to_string();
    let (ok, out) = inspect(&[&pid, "--json", "--dump-frame", "1"]);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let segs = doc["segments"].as_array().unwrap();
    let s = segs
        .iter()
        .find(|s| s["name"] == "isocall:inspect-test:7")
        .unwrap_or_else(|| panic!("segment not found in {out}"));
    assert_eq!(s["sides"]["client"]["pid"], std::process::id());
    assert_eq!(s["sides"]["client"]["alive"], true);
    assert_eq!(s["sides"]["server"]["state"], "absent");
    let c2s = &s["rings"]["c2s"];
    assert_eq!(c2s["pending_frames"], 5);
    assert_eq!(c2s["frames_published"], 5);
    assert_eq!(c2s["frames_consumed"], 0);
    assert_eq!(c2s["pending_bytes"], 5 * 64);
    let first = c2s["first_frames"].as_array().unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(first[0]["kind_name"], "REQUEST");
    assert_eq!(first[0]["len"], 40);
    assert_eq!(first[0]["call_id"], 100);
    assert_eq!(first[3]["call_id"], 103);
    assert_eq!(first[0]["method"], 7);
    assert!(first[0]["hex"].as_str().unwrap().starts_with("64 00 00 00"));
    assert!(first[1].get("hex").is_none());
    assert_eq!(s["rings"]["s2c"]["pending_frames"], 0);
    let classes = s["blobs"]["classes"].as_array().unwrap();
    assert_eq!(classes[0]["held_client"], 3);
    assert_eq!(classes[0]["free"], 13);
    assert_eq!(classes[1]["in_flight_to_server"], 1);
    assert_eq!(classes[1]["held_by_dead"], 0);
    let errors = doc["errors"].as_array().unwrap();
    let e = errors
        .iter()
        .find(|e| e["name"] == "isocall:garbage:1")
        .unwrap_or_else(|| panic!("garbage not reported: {out}"));
    assert!(e["error"].as_str().unwrap().contains("bad magic"), "{e}");
    // The readable form says the same.
    let (ok, text) = inspect(&[&pid]);
    assert!(ok);
    assert!(text.contains("isocall:inspect-test:7"), "{text}");
    assert!(text.contains("pending 320 B / 5 frames"), "{text}");
    assert!(text.contains("REQUEST len 40 call 100 method 7"), "{text}");
    assert!(text.contains("isocall:garbage:1 (in pid"), "{text}");
    drop(held);
}

#[derive(rkyv::Archive, rkyv::Serialize, isocall_engine::Schema)]
#[schema(crate = "isocall_engine")]
struct Num {
    n: u64,
}

const ADD: isocall_engine::Method<Num, Num> = isocall_engine::Method::new("add");
const STALL: isocall_engine::Method<Num, Num> = isocall_engine::Method::new("stall");

#[test]
fn inspect_shows_calls_queued_behind_a_stalled_handler_by_method_name() {
    use isocall_engine::rpc::{CallCtx, Client, ServerBuilder, SocketName};
    use std::sync::{Condvar, Mutex};
    /// Opens the gate when dropped, so a failing assertion cannot leave the
    /// server's worker stuck in `stall` (and the test hung in its drop).
    struct Gate(Arc<(Mutex<bool>, Condvar)>);
    impl Drop for Gate {
        fn drop(&mut self) {
            *self.0.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.0.1.notify_all();
        }
    }
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g = gate.clone();
    let socket = SocketName::Abstract(format!("inspect-test-{}", std::process::id()));
    let _server = ServerBuilder::new(socket.clone())
        .method(ADD, |r: &ArchivedNum, _: &mut CallCtx<'_>| {
            Ok(Num {
                n: r.n.to_native() + 1,
            })
        })
        .method(STALL, move |_: &ArchivedNum, _: &mut CallCtx<'_>| {
            let (lock, cv) = &*g;
            let open = cv.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
            drop(open);
            Ok(Num { n: 0 })
        })
        .spawn()
        .unwrap();
    let opener = Gate(gate.clone());
    let mut c = Client::connect(&socket).unwrap();
    let (add, stall) = (c.method(ADD).unwrap(), c.method(STALL).unwrap());
    let mut pending = vec![c.start(stall, &Num { n: 0 }, &[]).unwrap()];
    for i in 0..3 {
        pending.push(c.start(add, &Num { n: i }, &[]).unwrap());
    }
    let pid = std::process::id().to_string();
    let name = format!("isocall:inspect-test-{}:1", std::process::id());
    // The worker takes the stall request at its own pace: look until the
    // server is inside the handler (its request still unreleased) and the
    // three adds wait behind it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let frames = loop {
        let (ok, out) = inspect(&[&pid, "--json"]);
        assert!(ok);
        let doc: Value = serde_json::from_str(&out).unwrap();
        let seg = doc["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned();
        if let Some(seg) = seg {
            let f = seg["rings"]["c2s"]["first_frames"]
                .as_array()
                .unwrap()
                .clone();
            if f.len() == 4 {
                break f;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no segment {name} with 4 pending frames: {out}"
        );
        std::thread::yield_now();
    };
    let names: Vec<&str> = frames
        .iter()
        .map(|f| f["method_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stall", "add", "add", "add"]);
    assert_eq!(frames[1]["call_id"], 2);
    let (_, text) = inspect(&[&pid]);
    assert!(
        text.contains("REQUEST len") && text.contains("method stall"),
        "{text}"
    );
    drop(opener);
    let got: Vec<u64> = pending
        .into_iter()
        .map(|p| c.wait(p, None).unwrap().n.to_native())
        .collect();
    assert_eq!(got, [0, 1, 2, 3]);
}

#[test]
fn inspect_shows_a_supervisors_counters() {
    use isocall_engine::supervise::{ENV_ROLE, Supervisor};
    // The service: this package's `isocall` binary in a bench role.
    let sup = Supervisor::command(
        "inspected",
        env!("CARGO_BIN_EXE_isocall"),
        Vec::<String>::new(),
    )
    .env(ENV_ROLE, "bench-crash-if")
    .spawn()
    .expect("supervisor");
    let limit = std::time::Duration::from_secs(30);
    let first = sup.wait_serving(limit).expect("serving");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    // The successor serves once the death is seen and a new one started.
    let deadline = std::time::Instant::now() + limit;
    let second = loop {
        let pid = sup.wait_serving(limit).expect("serving again");
        if pid != first && sup.stats().crashes == 1 {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "no restart");
        std::thread::yield_now();
    };
    let me = std::process::id().to_string();
    let (ok, out) = inspect(&[&me, "--json"]);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&out).expect("json");
    let sups = doc["supervisors"].as_array().expect("supervisors");
    let s = sups
        .iter()
        .find(|s| s["service"] == "inspected")
        .unwrap_or_else(|| panic!("no supervisor in {out}"));
    assert_eq!(s["state"], "running");
    assert_eq!(s["service_pid"], second);
    assert_eq!(s["starts"], 2);
    assert_eq!(s["crashes"], 1);
    assert_eq!(s["restarts"], 1);
    assert_eq!(s["supervisor_pid"], std::process::id());
    let (ok, text) = inspect(&[&me]);
    assert!(ok);
    assert!(
        text.contains("supervisor of inspected") && text.contains("crashes 1 restarts 1"),
        "{text}"
    );
}

#[test]
fn inspect_shows_each_subscribers_counters_per_channel() {
    use isocall_engine::SocketName;
    use isocall_engine::channel::{Backpressure, Publisher, Subscriber, SubscriberOptions};
    use std::time::Duration;
    let name = format!("inspect-chan-{}", std::process::id());
    let socket = SocketName::Abstract(name.clone());
    let mut publisher = Publisher::<Num>::builder(socket.clone())
        .ring_capacity(4096)
        .blobs(PoolConfig::new().class(4096, 8))
        .backpressure_with(|s| match s.label.as_str() {
            "slow" => Backpressure::DropOldest { backlog: 4 },
            "lagging" => Backpressure::Disconnect {
                after: Duration::from_secs(60),
                backlog: 1,
            },
            _ => Backpressure::Block,
        })
        .create()
        .unwrap();
    let sub = |label: &str| {
        Subscriber::<Num>::connect_with(&socket, SubscriberOptions::default().label(label)).unwrap()
    };
    let mut fast = sub("fast");
    let slow = sub("slow");
    let lagging = sub("lagging");
    assert_eq!(
        publisher.wait_for_subscribers(3, Duration::from_secs(10)),
        3
    );
    // The fast subscriber reads everything; the slow one nothing (its ring
    // fills, then its backlog, then the oldest are dropped); the lagging
    // one is disconnected once its backlog overflows.
    let n = 500u64;
    for i in 0..n {
        publisher.send(&Num { n: i }).unwrap();
        assert_eq!(fast.recv().unwrap().n, i);
    }
    // The publisher's total of messages sent is written every 256 sends
    // and at each poll.
    publisher.poll();
    let (ok, out) = inspect(&[&std::process::id().to_string(), "--json"]);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let chans = doc["channels"].as_array().unwrap();
    let c = chans
        .iter()
        .find(|c| c["channel"] == name.as_str())
        .unwrap_or_else(|| panic!("channel not found in {out}"));
    let p = &c["publisher"];
    assert_eq!(p["pid"], std::process::id());
    assert_eq!(p["type_name"], "Num");
    assert_eq!(p["sent"], n);
    assert_eq!(p["joined"], 3);
    assert_eq!(p["subscribers"], 2);
    assert_eq!(p["disconnected"], 1);
    assert_eq!(c["pool"]["classes"][0]["count"], 8);
    let subs = c["subscribers"].as_array().unwrap();
    assert_eq!(subs.len(), 3, "{out}");
    let by = |label: &str| {
        subs.iter()
            .find(|s| s["label"] == label)
            .unwrap_or_else(|| panic!("{label} not found in {out}"))
    };
    let f = by("fast");
    assert_eq!(f["policy"], "block");
    assert_eq!(
        (&f["sent"], &f["dropped"], &f["queued"]),
        (&n.into(), &0.into(), &0.into())
    );
    // What it read and has not released yet (releases are batched) is
    // still pending in its ring.
    assert_eq!(f["queue_depth"], f["ring_pending"]);
    assert!(f["ring_pending"].as_u64().unwrap() < 64, "{f}");
    assert!(f["closed"].is_null());
    assert_eq!(f["pid"], std::process::id());
    // Every message was there before its `recv`: no sleep, so no sleep
    // that a wake-up failed to end.
    assert_eq!(f["unwoken"], 0, "{f}");
    let s = by("slow");
    let in_ring = s["sent"].as_u64().unwrap();
    assert!(in_ring > 0 && in_ring < n, "{s}");
    assert_eq!(s["policy"], "drop-oldest(4)");
    assert_eq!(s["queued"], 4);
    assert_eq!(s["ring_pending"], in_ring);
    assert_eq!(s["queue_depth"], in_ring + 4);
    assert_eq!(s["dropped"], n - in_ring - 4);
    assert!(s["closed"].is_null());
    let l = by("lagging");
    assert!(l["closed"].as_str().unwrap().contains("fell behind"), "{l}");
    assert_eq!(l["dropped"], 0);
    // The readable form says the same.
    let (ok, text) = inspect(&[&std::process::id().to_string()]);
    assert!(ok);
    assert!(text.contains(&format!("channel {name} of Num")), "{text}");
    assert!(text.contains("\"slow\""), "{text}");
    assert!(
        text.contains("closed: the subscriber fell behind"),
        "{text}"
    );
    drop((slow, lagging));
}

#[test]
fn inspect_shows_a_lossy_subscribers_counters() {
    use isocall_engine::Schema;
    use isocall_engine::channel::udp::datagram::Header;
    use isocall_engine::channel::udp::{UdpPublisher, UdpSubscriber, UdpSubscriberOptions};
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};
    let label = format!("inspected-{}", std::process::id());
    let mut sub = UdpSubscriber::<Num>::bind_with(
        "udp://127.0.0.1:0",
        UdpSubscriberOptions::default().label(&label),
    )
    .unwrap();
    let to = sub.local_addr();
    let mut publisher = UdpPublisher::<Num>::connect(&format!("udp://{to}")).unwrap();
    for i in 0..3 {
        publisher.send(&Num { n: i }).unwrap();
        assert_eq!(sub.recv_timeout(Duration::from_secs(10)).unwrap().n, i);
    }
    // By hand, a stream of another publisher: 0, then 5 (4 lost), then 3
    // (reordered: 3 lost now); a datagram of another type; garbage.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in [0u64, 5, 3] {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&Num { n: 100 + seq }).unwrap();
        let h = Header {
            fingerprint: Num::FINGERPRINT,
            seq,
            stream: 77,
            body_len: body.len() as u32,
        };
        let mut d = h.encode().to_vec();
        d.extend_from_slice(&body);
        raw.send_to(&d, to).unwrap();
    }
    let other = Header {
        fingerprint: Num::FINGERPRINT ^ 1,
        seq: 0,
        stream: 1,
        body_len: 0,
    }
    .encode();
    raw.send_to(&other, to).unwrap();
    raw.send_to(b"garbage", to).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(sub.recv_deadline(deadline).unwrap().n.to_native());
    }
    assert_eq!(got, [100, 105, 103]);
    // The foreign and garbage datagrams came after: counted once read.
    while sub.stats().malformed + sub.stats().foreign < 2 {
        assert!(sub.try_recv().unwrap().is_none(), "a message delivered");
        assert!(Instant::now() < deadline, "{:?}", sub.stats());
        std::thread::yield_now();
    }
    let (ok, out) = inspect(&[&std::process::id().to_string(), "--json"]);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let u = doc["udp_subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["label"] == label.as_str())
        .unwrap_or_else(|| panic!("the lossy subscriber not found in {out}"));
    assert_eq!(u["address"], to.to_string());
    assert_eq!(u["pid"], std::process::id());
    assert_eq!(u["type_name"], "Num");
    let counts: Vec<u64> = [
        "received",
        "lost",
        "reordered",
        "duplicates",
        "late",
        "malformed",
        "foreign",
        "restarts",
    ]
    .iter()
    .map(|k| u[*k].as_u64().unwrap())
    .collect();
    assert_eq!(counts, [6, 3, 1, 0, 0, 1, 1, 1], "{u}");
    let (ok, text) = inspect(&[&std::process::id().to_string()]);
    assert!(ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(&label))
        .unwrap_or_else(|| panic!("no line for the lossy subscriber in {text}"));
    assert!(
        line.contains(&format!("udp://{to}"))
            && line.contains("received 6 lost 3 reordered 1")
            && line.contains("malformed 1 foreign 1"),
        "{line}"
    );
}
