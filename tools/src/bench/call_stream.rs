//! RPC figures over the socket transport: the 64-byte call of
//! `call.rtt.*.64` over a Unix stream socket (`unix_stream.call.rtt.64`),
//! TCP on loopback (`tcp.call.rtt.64`), TCP under TLS (`tls.call.rtt.64`,
//! feature `tls`), and 64 calls in flight over TCP
//! (`tcp.call.pipelined.64`). The server is the one of the shared-memory
//! call figures (see `call.rs`), in the peer process, listening on a
//! stream address too. Each is compared to the kernel baseline of its
//! socket (`uds.rtt.64`, `tcp.rtt.64`) or to the plain TCP call.
//!
//! `isocall bench --netem` adds `tcp.call.1048576.text.{plain,lz4}`: a
//! call carrying 1 MiB of log text as a blob, with the server in a network
//! namespace behind a link limited to 100 Mbit/s (see `netns.rs`), lz4
//! off and on.
//!
//! Both sides wait the `Blocking` way, as the baselines do: a caller
//! sleeps in `poll` on the socket, the server's worker too.

use std::fmt::Write as _;

use isocall_engine::WaitStrategy;
use isocall_engine::rpc::{Client, ClientOptions, Compression, Endpoint, Policy, SocketName};

use super::Res;
use super::call::{TEXT, finish, pipelined_through, request, rtt_through, server};
use super::measure::{Budget, Measured, latency};
use super::netns::Link;
use super::peer::{Control, Peer};
use super::sockets::sum_words;

/// How both sides wait.
const STRATEGY: WaitStrategy = WaitStrategy::Blocking;

/// The stream socket of a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// A Unix stream socket (abstract name).
    Unix,
    /// TCP on 127.0.0.1.
    Tcp,
    /// TCP under TLS (server certificate checked by the client).
    Tls,
    /// TCP to the peer's network namespace (`--netem`), the server's pool
    /// holding 1 MiB blobs.
    Remote,
}

impl Net {
    fn code(self) -> u64 {
        match self {
            Net::Unix => 0,
            Net::Tcp => 1,
            Net::Tls => 2,
            Net::Remote => 3,
        }
    }

    fn from_code(n: u64) -> Net {
        match n {
            0 => Net::Unix,
            1 => Net::Tcp,
            2 => Net::Tls,
            _ => Net::Remote,
        }
    }
}

/// Starts the server peer of `figure` through `launcher` (see
/// [`Peer::start_via`]) with `params`; returns it and the stream address
/// it listens on, once it does.
fn start_server(figure: &str, launcher: &[String], params: &str) -> Res<(Peer, Endpoint)> {
    let mut peer = Peer::start_via(launcher, figure, params, &[])?;
    let line = peer.read_line()?;
    let bound = line
        .strip_prefix("ready ")
        .ok_or_else(|| format!("{figure}: the server peer did not start: {line:?}"))?;
    let at = Endpoint::parse(bound)?;
    Ok((peer, at))
}

/// Starts the server peer of `figure` on `net` and connects to it.
fn connect(figure: &str, net: Net) -> Res<(Peer, Client)> {
    #[cfg(feature = "tls")]
    let pki = (net == Net::Tls)
        .then(|| pki::Pki::make(std::process::id()))
        .transpose()?;
    #[cfg(not(feature = "tls"))]
    if net == Net::Tls {
        return Err(format!("{figure}: isocall was built without the feature tls").into());
    }
    let (peer, at) = start_server(
        figure,
        &[],
        &format!("socket_pid={} net={}", std::process::id(), net.code()),
    )?;
    #[cfg(feature = "tls")]
    let at = match &pki {
        Some(p) => at.tls(p.client()?),
        None => at,
    };
    let client = Client::connect_with(at, ClientOptions::default().strategy(STRATEGY))?;
    #[cfg(feature = "tls")]
    drop(pki);
    Ok((peer, client))
}

/// Peer of every figure here: [`server`] on a fresh abstract socket and
/// on the figure's stream address; says where, then serves until the
/// parent closes the control socket.
pub fn server_peer(mut ctl: Control) -> Res<()> {
    let figure = std::env::args().nth(2).unwrap_or_default();
    let parent = ctl.param("socket_pid")?;
    let name = format!("isocall-bench-{parent}-{figure}");
    let net = Net::from_code(ctl.param("net")?);
    let blob_len = if net == Net::Remote { TEXT_LEN } else { 0 };
    let b = server(SocketName::Abstract(name.clone()), STRATEGY, blob_len);
    let b = match net {
        Net::Unix => b.add_listener(format!("unix-stream:@{name}-stream").as_str()),
        Net::Tcp => b.add_listener("tcp://127.0.0.1:0").policy(Policy::Anyone),
        #[cfg(feature = "tls")]
        Net::Tls => b
            .add_listener("tcp://127.0.0.1:0")
            .policy(Policy::Anyone)
            .tls(pki::Pki::at(parent as u32).server()?),
        #[cfg(not(feature = "tls"))]
        Net::Tls => return Err("built without the feature tls".into()),
        Net::Remote => {
            let addr = std::net::Ipv4Addr::from(u32::try_from(ctl.param("addr")?)?);
            b.add_listener(format!("tcp://{addr}:0").as_str())
                .policy(Policy::Anyone)
        }
    };
    let server = b.spawn()?;
    let at = server
        .addresses()
        .into_iter()
        .find(|e| e.is_stream())
        .ok_or("the server has no stream address")?;
    ctl.write_line(&format!("ready {at}"))?;
    let _ = ctl.read_line();
    drop(server);
    Ok(())
}

/// `unix_stream.call.rtt.64`, `tcp.call.rtt.64`, `tls.call.rtt.64`.
pub fn rtt(budget: &Budget, net: Net) -> Res<Measured> {
    let name = match net {
        Net::Unix => "unix_stream.call.rtt.64",
        Net::Tcp => "tcp.call.rtt.64",
        Net::Tls => "tls.call.rtt.64",
        Net::Remote => return Err("the remote link has its own figures".into()),
    };
    let (peer, c) = connect(name, net)?;
    rtt_through(budget, name, peer, c)
}

/// `tcp.call.pipelined.64`: calls per second over TCP with 64 in flight.
pub fn pipelined(budget: &Budget) -> Res<Measured> {
    let figure = "tcp.call.pipelined.64";
    let (peer, c) = connect(figure, Net::Tcp)?;
    let n = (budget.stream_msgs / 40).max(10_000);
    pipelined_through(budget, figure, n, 64, peer, c)
}

/// Bytes of text a `--netem` call carries.
pub const TEXT_LEN: usize = 1 << 20;

/// `len` bytes of log lines (timestamps, levels, module paths, messages,
/// `key=value` fields with numbers from a PRNG): text as services write
/// it, which lz4 compresses a few times, not a run of one byte.
pub fn log_text(len: usize) -> Vec<u8> {
    const LEVELS: [&str; 5] = ["INFO", "DEBUG", "INFO", "WARN", "TRACE"];
    const MODULES: [&str; 6] = [
        "isocall::server",
        "isocall::client",
        "app::cache",
        "app::http",
        "app::db::pool",
        "isocall::supervise",
    ];
    const EVENTS: [&str; 8] = [
        "request served",
        "connection accepted",
        "cache miss, loading from the database",
        "query done",
        "retrying an idempotent call",
        "blob released",
        "handshake done",
        "slow request",
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::with_capacity(len + 256);
    let mut ms = 0u64;
    while out.len() < len {
        let r = next();
        ms += r % 40;
        let pick = |n: usize, shift: u32| (r >> shift) as usize % n;
        let _ = writeln!(
            out,
            "2026-12-02T01:{:02}:{:02}.{:03}Z {:5} {}: {} user={} conn={} bytes={} took={}us status={}",
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            LEVELS[pick(LEVELS.len(), 8)],
            MODULES[pick(MODULES.len(), 12)],
            EVENTS[pick(EVENTS.len(), 16)],
            (r >> 20) % 5000,
            (r >> 32) % 300,
            (r >> 40) % 70_000,
            (r >> 24) % 20_000,
            if (r >> 60) == 0 { 500 } else { 200 },
        );
    }
    out.truncate(len);
    out.into_bytes()
}

/// `tcp.call.1048576.text.{plain,lz4}`: a 64-byte call carrying
/// [`TEXT_LEN`] bytes of [`log_text`] in a blob (written into the blob
/// for each call), which the server, in `link`'s namespace, reads whole
/// and answers with its sum; lz4 negotiated or off.
pub fn text_rtt(budget: &Budget, link: &Link, lz4: bool) -> Res<Measured> {
    let figure = if lz4 {
        "tcp.call.1048576.text.lz4"
    } else {
        "tcp.call.1048576.text.plain"
    };
    let (peer, at) = start_server(
        figure,
        &link.launcher(),
        &format!(
            "socket_pid={} net={} addr={}",
            std::process::id(),
            Net::Remote.code(),
            u32::from(link.ns_addr)
        ),
    )?;
    let at = at.compression(if lz4 {
        Compression::Lz4
    } else {
        Compression::Off
    });
    let mut c = Client::connect_with(at, ClientOptions::default().strategy(STRATEGY))?;
    let m = c.method(TEXT)?;
    let pool = c.pool().ok_or("the server gave no blob pool")?.clone();
    let text = log_text(TEXT_LEN);
    let want = sum_words(&text);
    let mut wrong = None;
    let out = latency(budget, |seq| {
        let mut blob = pool.alloc(TEXT_LEN)?;
        blob.copy_from_slice(&text);
        let r = c.call_with(m, &request(seq), &[blob.send()?], None)?;
        if r.data[..8] != want.to_le_bytes() {
            wrong = Some(seq);
        }
        Ok(())
    })?;
    if let Some(seq) = wrong {
        return Err(format!("{figure}: wrong reply to call {seq}").into());
    }
    finish(peer, c)?;
    Ok(out)
}

/// Certificates for `tls.call.rtt.64`: a CA and a server certificate for
/// localhost, made with rcgen into a directory named after the bench's
/// pid (the peer reads them there), removed when dropped.
#[cfg(feature = "tls")]
mod pki {
    use std::path::PathBuf;

    use isocall_engine::stream::{TlsClient, TlsServer};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::Res;

    pub struct Pki {
        dir: PathBuf,
        owned: bool,
    }

    fn dir(pid: u32) -> PathBuf {
        std::env::temp_dir().join(format!("isocall-bench-pki-{pid}"))
    }

    impl Pki {
        /// Makes the files (the bench process).
        pub fn make(pid: u32) -> Res<Pki> {
            let dir = dir(pid);
            std::fs::create_dir_all(&dir)?;
            let mut ca = CertificateParams::new(Vec::<String>::new())?;
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, "isocall bench CA");
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca.self_signed(&ca_key)?;
            std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
            let issuer = Issuer::new(ca, ca_key);
            let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
            leaf.distinguished_name
                .push(DnType::CommonName, "localhost");
            let key = KeyPair::generate()?;
            let cert = leaf.signed_by(&key, &issuer)?;
            std::fs::write(dir.join("server.crt"), cert.pem())?;
            std::fs::write(dir.join("server.key"), key.serialize_pem())?;
            Ok(Pki { dir, owned: true })
        }

        /// The files the bench process made (the peer).
        pub fn at(pid: u32) -> Pki {
            Pki {
                dir: dir(pid),
                owned: false,
            }
        }

        pub fn server(&self) -> Res<TlsServer> {
            Ok(TlsServer::from_pem(
                &self.dir.join("server.crt"),
                &self.dir.join("server.key"),
                None,
            )?)
        }

        pub fn client(&self) -> Res<TlsClient> {
            Ok(TlsClient::from_pem(&self.dir.join("ca.pem"), None)?.server_name("localhost"))
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            if self.owned {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}
