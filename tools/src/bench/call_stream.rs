//! RPC figures over the socket transport: the 64-byte call of
//! `call.rtt.*.64` over a Unix stream socket (`unix_stream.call.rtt.64`),
//! TCP on loopback (`tcp.call.rtt.64`), TCP under TLS (`tls.call.rtt.64`,
//! feature `tls`), and 64 calls in flight over TCP
//! (`tcp.call.pipelined.64`). The server is the one of the shared-memory
//! call figures (see `call.rs`), in the peer process, listening on a
//! stream address too. Each is compared to the kernel baseline of its
//! socket (`uds.rtt.64`, `tcp.rtt.64`) or to the plain TCP call.
//!
//! Both sides wait the `Blocking` way, as the baselines do: a caller
//! sleeps in `poll` on the socket, the server's worker too.

use std::time::Instant;

use isocall_engine::WaitStrategy;
use isocall_engine::rpc::{Client, ClientOptions, Endpoint, Policy, SocketName};

use super::Res;
use super::call::{Bytes64, ECHO64, check, request, server};
use super::measure::{Budget, Measured, latency, rate};
use super::peer::{Control, Peer};

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
}

impl Net {
    fn code(self) -> u64 {
        match self {
            Net::Unix => 0,
            Net::Tcp => 1,
            Net::Tls => 2,
        }
    }

    fn from_code(n: u64) -> Net {
        match n {
            0 => Net::Unix,
            1 => Net::Tcp,
            _ => Net::Tls,
        }
    }
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
    let mut peer = Peer::start(
        figure,
        &format!("socket_pid={} net={}", std::process::id(), net.code()),
        &[],
    )?;
    let line = peer.read_line()?;
    let bound = line
        .strip_prefix("ready ")
        .ok_or_else(|| format!("{figure}: the server peer did not start: {line:?}"))?;
    let at = Endpoint::parse(bound)?;
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
    let b = server(SocketName::Abstract(name.clone()), STRATEGY, 0);
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

fn finish(mut peer: Peer, client: Client) -> Res<()> {
    drop(client);
    peer.write_line("stop")?;
    peer.finish()
}

/// `unix_stream.call.rtt.64`, `tcp.call.rtt.64`, `tls.call.rtt.64`.
pub fn rtt(budget: &Budget, net: Net) -> Res<Measured> {
    let name = match net {
        Net::Unix => "unix_stream.call.rtt.64",
        Net::Tcp => "tcp.call.rtt.64",
        Net::Tls => "tls.call.rtt.64",
    };
    let (peer, mut c) = connect(name, net)?;
    let m = c.method(ECHO64)?;
    let mut wrong = None;
    let out = latency(budget, |seq| {
        if check(&c.call(m, &request(seq))?.data, seq).is_err() {
            wrong = Some(seq);
        }
        Ok(())
    })?;
    if let Some(seq) = wrong {
        return Err(format!("{name}: wrong reply to call {seq}").into());
    }
    finish(peer, c)?;
    Ok(out)
}

/// `tcp.call.pipelined.64`: calls per second over TCP with 64 in flight.
pub fn pipelined(budget: &Budget) -> Res<Measured> {
    let figure = "tcp.call.pipelined.64";
    let (peer, mut c) = connect(figure, Net::Tcp)?;
    let m = c.method(ECHO64)?;
    let n = (budget.stream_msgs / 40).max(10_000);
    let mut reps = Vec::new();
    for _ in 0..budget.stream_reps {
        let start = Instant::now();
        let mut window = std::collections::VecDeque::with_capacity(64);
        for seq in 0..n {
            if window.len() == 64 {
                let (p, s) = window.pop_front().ok_or("empty window")?;
                let r: isocall_engine::Reply<'_, Bytes64> = c.wait(p, None)?;
                if check(&r.data, s).is_err() {
                    return Err(format!("{figure}: wrong reply to {s}").into());
                }
            }
            window.push_back((c.start(m, &request(seq), &[])?, seq));
        }
        for (p, s) in window {
            if check(&c.wait(p, None)?.data, s).is_err() {
                return Err(format!("{figure}: wrong reply to {s}").into());
            }
        }
        reps.push((n, start.elapsed()));
    }
    finish(peer, c)?;
    Ok(rate(&mut reps, 64))
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
