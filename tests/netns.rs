//! Across hosts for real: the server process runs in its own network
//! namespace behind a veth pair (`ip netns exec`), listening on the
//! namespace's address only, and a client in the default namespace calls
//! it over plain TCP, TCP with lz4 and TCP + TLS (feature `tls`; the test
//! PKI of `common::pki`, the server's certificate checked by the client
//! and the client's by the server). Skipped, with the reason printed, when
//! not root, without `ip`, or where a namespace cannot be made (a
//! container without `CAP_NET_ADMIN`). The namespace and the pair are
//! removed and the server reaped whatever happens (drop guards).

mod common;

use std::time::{Duration, Instant};

use common::calc::*;
use common::netns::Netns;
use common::transport::{Transport, serve_transport_for_parent, server_process_via};
use isocall::{CallCtx, Client, Method};

/// A text.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
#[rkyv(derive(Debug))]
struct Text {
    text: String,
}

/// `upper`: the text in capitals.
const UPPER: Method<Text, Text> = Method::new("upper");

#[test]
#[ignore = "entry point of the server process that the test starts in the namespace"]
fn netns_server_entry() {
    serve_transport_for_parent(|b, _| {
        b.method(ADD, serve_add)
            .method(UPPER, |r: &ArchivedText, _: &mut CallCtx<'_>| {
                Ok(Text {
                    text: r.text.as_str().to_uppercase(),
                })
            })
    });
}

/// How long any call may take (a hung server fails the test, and the
/// guards still clean up).
const LIMIT: Duration = Duration::from_secs(30);

/// The transports that cross the veth pair.
const OVER_TCP: &[Transport] = &[
    Transport::Tcp,
    Transport::TcpLz4,
    #[cfg(feature = "tls")]
    Transport::Tls,
];

#[test]
fn calls_reach_a_server_in_another_network_namespace() {
    let ns = match Netns::create("netns") {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!(
                "skipped: netns: no network namespace to put the server in: {why} \
                 (needs root, with CAP_NET_ADMIN and `ip`)"
            );
            return;
        }
    };
    for &t in OVER_TCP {
        // Declared after `ns`: the server is killed and reaped before the
        // namespace goes.
        let (_server, at) = server_process_via(
            &ns.launcher(),
            "netns_server_entry",
            t,
            &format!("tcp://{}:0", ns.ns_addr),
            "",
        );
        let addr = at.to_string();
        assert!(
            addr.contains(&ns.ns_addr),
            "{t:?}: the server listens at {addr}, not in the namespace"
        );
        let started = Instant::now();
        let mut c = Client::connect(&at).unwrap_or_else(|e| panic!("{t:?}: connect {addr}: {e}"));
        assert_eq!(add(&mut c, 2, 40).unwrap(), 42, "{t:?}");
        // Pipelined across the link.
        let m = c.method(ADD).unwrap();
        let pending: Vec<_> = (0..100u64)
            .map(|i| c.start(m, &Add { a: i, b: 7 }, &[]).unwrap())
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            let r = c.wait(p, Some(Instant::now() + LIMIT)).unwrap();
            assert_eq!(r.sum.to_native(), i as u64 + 7);
        }
        // A body larger than a segment of the link, compressible text.
        let upper = c.method(UPPER).unwrap();
        let text: String = (0..2_000)
            .map(|i| format!("line {i} of the log "))
            .collect();
        let r = c
            .call_with(
                upper,
                &Text { text: text.clone() },
                &[],
                Some(Instant::now() + LIMIT),
            )
            .unwrap();
        assert_eq!(r.text.as_str(), text.to_uppercase(), "{t:?}");
        drop(r);
        eprintln!(
            "{t:?}: calls to {addr} in namespace {} answered in {:?}",
            ns.name,
            started.elapsed()
        );
    }
}
