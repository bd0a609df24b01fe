//! The socket transport under TLS (feature `tls`): a CA made with rcgen,
//! client certificates checked by the server, server certificates by the
//! client, refusals that say why, and policies by subject or key.
#![cfg(feature = "tls")]

mod stream_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use isocall_engine::raw::Side;
use isocall_engine::raw::wire::kind;
use isocall_engine::stream::{
    Address, CertMatch, CertPolicy, Connection, Listener, Security, StreamConfig, StreamError,
    TlsClient, TlsError, TlsServer, Untrusted, connect_tls, endpoint,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use stream_common::*;

/// A CA that writes its certificate and the leaves it signs to files.
struct Ca {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            name: name.into(),
            issuer: Issuer::new(params, key),
        }
    }

    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A leaf for `names`, with common name `cn`: its chain and key files.
    fn leaf(&self, cn: &str, names: &[&str], client: bool) -> (PathBuf, PathBuf, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = self.dir.join(format!("{cn}.crt"));
        let keyfile = self.dir.join(format!("{cn}.key"));
        std::fs::write(&chain, cert.pem()).unwrap();
        std::fs::write(&keyfile, key.serialize_pem()).unwrap();
        (chain, keyfile, key)
    }
}

struct Pki {
    dir: PathBuf,
    ca: Ca,
    rogue: Ca,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf, [u8; 32]),
    stranger: (PathBuf, PathBuf),
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("isocall-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new(&dir, "ca");
        let rogue = Ca::new(&dir, "rogue-ca");
        let (sc, sk, _) = ca.leaf("localhost", &["localhost", "127.0.0.1"], false);
        let (cc, ck, ckey) = ca.leaf("client one", &["client.example"], true);
        let spki = rcgen::PublicKeyData::subject_public_key_info(&ckey);
        let digest = ring_sha256(&spki);
        let (xc, xk, _) = rogue.leaf("stranger", &["stranger.example"], true);
        Pki {
            dir,
            ca,
            rogue,
            server: (sc, sk),
            client: (cc, ck, digest),
            stranger: (xc, xk),
        }
    }

    fn server(&self, policy: CertPolicy) -> Arc<TlsServer> {
        Arc::new(
            TlsServer::from_pem(&self.server.0, &self.server.1, Some(&self.ca.pem()))
                .unwrap()
                .policy(policy),
        )
    }

    fn client(&self) -> TlsClient {
        TlsClient::from_pem(&self.ca.pem(), Some((&self.client.0, &self.client.1))).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ring_sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A TLS listener on loopback and the address to dial (by name).
fn listen(server: Arc<TlsServer>) -> (Listener, Address) {
    let l = Listener::bind(
        &[Address::parse("tcp://127.0.0.1:0").unwrap()],
        Security::Tls(server),
    )
    .unwrap();
    let Address::Tcp { port, .. } = l.addresses()[0] else {
        unreachable!()
    };
    (
        l,
        Address::parse(&format!("tcp://localhost:{port}")).unwrap(),
    )
}

/// The server's side of one connection, in a thread.
fn serve_one(l: Listener) -> thread::JoinHandle<Result<Connection, StreamError>> {
    thread::spawn(move || l.accept(Some(soon()))?.establish(soon()))
}

#[test]
fn tls_round_trip_with_client_certificates() {
    let pki = Pki::new("round-trip");
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let c = connect_tls(&at, &pki.client(), soon()).unwrap();
    let s = server.join().unwrap().unwrap();
    assert!(c.is_tls() && s.is_tls());
    let them = s.peer_identity().unwrap();
    assert_eq!(them.subject, "CN=client one");
    assert_eq!(them.common_name.as_deref(), Some("client one"));
    assert_eq!(
        c.peer_identity().unwrap().common_name.as_deref(),
        Some("localhost")
    );
    let config = StreamConfig::for_connection(&c).pool(Some(pool()));
    assert!(config.lz4.is_some());
    let (mut ctx, mut crx) = endpoint(c, Side::Client, &config).unwrap();
    let (mut stx, mut srx) = endpoint(s, Side::Server, &config).unwrap();
    send_and_check(&mut ctx, &mut srx, SIZES);
    send_and_check(&mut stx, &mut crx, SIZES);
    // A blob, both ways.
    let cpool = ctx.pool().unwrap().clone();
    let mut b = cpool.alloc(5000).unwrap();
    b.copy_from_slice(&pattern(5000, 9));
    let h = b.send().unwrap();
    put_call(&mut ctx, kind::REQUEST, 9, &[h], b"tls").unwrap();
    let (_, got, body) = get_call(&mut srx, kind::REQUEST);
    assert_eq!(body, b"tls");
    let spool = srx.pool().unwrap().clone();
    let b = spool.accept_mut(&got[0]).unwrap();
    assert!(b[..] == pattern(5000, 9)[..]);
    put_call(&mut stx, kind::RESPONSE, 9, &[b.send().unwrap()], b"").unwrap();
    let (_, back, _) = get_call(&mut crx, kind::RESPONSE);
    assert!(cpool.accept(&back[0]).unwrap()[..] == pattern(5000, 9)[..]);
    // Closing says goodbye: the peer reads a clean end.
    ctx.close(Some(soon())).unwrap();
    assert_eq!(srx.recv(Some(soon())).err(), Some(StreamError::PeerDied));
}

#[test]
fn an_untrusted_client_certificate_is_refused_with_a_reason() {
    let pki = Pki::new("untrusted-client");
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let stranger =
        TlsClient::from_pem(&pki.ca.pem(), Some((&pki.stranger.0, &pki.stranger.1))).unwrap();
    let client = connect_tls(&at, &stranger, soon());
    let refused = server.join().unwrap().unwrap_err();
    assert_eq!(
        refused,
        StreamError::Tls(TlsError::Untrusted {
            reason: Untrusted::UnknownIssuer
        })
    );
    assert!(
        refused.to_string().contains("not issued by a trusted CA"),
        "{refused}"
    );
    // TLS 1.3: the client finished its part first; it reads the refusal.
    let e = match client {
        Err(e) => e,
        Ok(c) => {
            let (_tx, mut rx) = endpoint(c, Side::Client, &StreamConfig::default()).unwrap();
            rx.recv(Some(soon())).err().unwrap()
        }
    };
    assert!(
        matches!(&e, StreamError::Tls(TlsError::RefusedByPeer { alert }) if alert.contains("CA") || alert.contains("Certificate")),
        "{e}"
    );
    // No certificate at all.
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let anonymous = TlsClient::from_pem(&pki.ca.pem(), None).unwrap();
    let _ = connect_tls(&at, &anonymous, soon());
    assert_eq!(
        server.join().unwrap().unwrap_err(),
        StreamError::Tls(TlsError::Untrusted {
            reason: Untrusted::NoCertificate
        })
    );
}

#[test]
fn a_server_the_client_does_not_trust_is_refused_with_a_reason() {
    let pki = Pki::new("untrusted-server");
    // A client that trusts another CA.
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let wrong_ca =
        TlsClient::from_pem(&pki.rogue.pem(), Some((&pki.client.0, &pki.client.1))).unwrap();
    assert_eq!(
        connect_tls(&at, &wrong_ca, soon()).unwrap_err(),
        StreamError::Tls(TlsError::Untrusted {
            reason: Untrusted::UnknownIssuer
        })
    );
    assert!(server.join().unwrap().is_err());
    // A certificate for another name.
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let other_name = pki.client().server_name("elsewhere.example");
    assert_eq!(
        connect_tls(&at, &other_name, soon()).unwrap_err(),
        StreamError::Tls(TlsError::Untrusted {
            reason: Untrusted::WrongName
        })
    );
    assert!(server.join().unwrap().is_err());
}

#[test]
fn the_policy_allows_peers_by_subject_or_key() {
    let pki = Pki::new("policy");
    // Learn the client's key hash from a handshake.
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let _c = connect_tls(&at, &pki.client(), soon()).unwrap();
    let spki = server
        .join()
        .unwrap()
        .unwrap()
        .peer_identity()
        .unwrap()
        .spki_sha256;
    assert_eq!(spki, pki.client.2, "the identity hashes the key's SPKI");
    for (policy, ok) in [
        (
            CertPolicy::Only(vec![CertMatch::CommonName("client one".into())]),
            true,
        ),
        (
            CertPolicy::Only(vec![CertMatch::Subject("CN=client one".into())]),
            true,
        ),
        (CertPolicy::Only(vec![CertMatch::Spki(spki)]), true),
        (CertPolicy::Only(vec![CertMatch::Spki([0; 32])]), false),
        (
            CertPolicy::Only(vec![CertMatch::CommonName("someone else".into())]),
            false,
        ),
    ] {
        let (l, at) = listen(pki.server(policy.clone()));
        let server = serve_one(l);
        let _c = connect_tls(&at, &pki.client(), soon());
        match server.join().unwrap() {
            Ok(_) => assert!(ok, "{policy:?} let the client in"),
            Err(e) => {
                assert!(!ok, "{policy:?}: {e}");
                assert!(
                    matches!(&e, StreamError::Tls(TlsError::NotAllowed { subject, .. }) if subject == "CN=client one"),
                    "{e}"
                );
            }
        }
    }
    // A client can pin its server too.
    let (l, at) = listen(pki.server(CertPolicy::AnyVerified));
    let server = serve_one(l);
    let pinned = pki
        .client()
        .policy(CertPolicy::Only(vec![CertMatch::CommonName(
            "not the server".into(),
        )]));
    assert!(matches!(
        connect_tls(&at, &pinned, soon()),
        Err(StreamError::Tls(TlsError::NotAllowed { .. }))
    ));
    let _ = server.join().unwrap();
}
