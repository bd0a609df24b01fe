//! TLS on a stream connection (feature `tls`): rustls with the `ring`
//! provider, configured from PEM files.
//!
//! A client checks the server's certificate against its CA bundle and the
//! name it dialled (or the one it was told to expect); a server that has a
//! client CA bundle requires a client certificate and checks it. Either
//! side may then narrow whom it talks to with a [`CertPolicy`] (by
//! subject, common name or key hash). The handshake runs on the
//! non-blocking socket with a deadline, before the connection becomes an
//! endpoint; afterwards each side knows the other's [`PeerIdentity`].
//!
//! In TLS 1.3 the client sends its certificate last: a server that refuses
//! it does so after the client's handshake is over, so the client learns
//! it on its first read (a [`TlsError::RefusedByPeer`] from the receiver).

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use super::identity::{CertMatch, CertPolicy, PeerIdentity};

use super::conn::Connection;
use super::error::StreamError;
use super::wire::FdIo;
use crate::sys::poll_stream;

/// Why a certificate was not trusted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Untrusted {
    /// It does not chain to a CA of the bundle.
    UnknownIssuer,
    /// It has expired.
    Expired,
    /// It is not valid yet.
    NotValidYet,
    /// It was revoked.
    Revoked,
    /// It is not valid for the name dialled.
    WrongName,
    /// It is not valid for this use (a server certificate as a client's).
    WrongPurpose,
    /// A signature in the chain is bad or of an unsupported kind.
    BadSignature,
    /// It is not a well-formed certificate.
    BadEncoding,
    /// The peer sent none, and one is required.
    NoCertificate,
    /// Another reason, in rustls's words.
    Other(String),
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Untrusted::UnknownIssuer => "it is not issued by a trusted CA",
            Untrusted::Expired => "it has expired",
            Untrusted::NotValidYet => "it is not valid yet",
            Untrusted::Revoked => "it was revoked",
            Untrusted::WrongName => "it is not valid for the name dialled",
            Untrusted::WrongPurpose => "it is not valid for this use",
            Untrusted::BadSignature => "a signature in its chain is bad or unsupported",
            Untrusted::BadEncoding => "it is not a well-formed certificate",
            Untrusted::NoCertificate => "the peer sent no certificate",
            Untrusted::Other(s) => s,
        })
    }
}

impl From<rustls::CertificateError> for Untrusted {
    fn from(e: rustls::CertificateError) -> Untrusted {
        use rustls::CertificateError as C;
        match e {
            C::UnknownIssuer => Untrusted::UnknownIssuer,
            C::Expired | C::ExpiredContext { .. } => Untrusted::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => Untrusted::NotValidYet,
            C::Revoked => Untrusted::Revoked,
            C::NotValidForName | C::NotValidForNameContext { .. } => Untrusted::WrongName,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => Untrusted::WrongPurpose,
            C::BadSignature | C::UnsupportedSignatureAlgorithmContext { .. } => {
                Untrusted::BadSignature
            }
            C::BadEncoding => Untrusted::BadEncoding,
            other => Untrusted::Other(other.to_string()),
        }
    }
}

/// Why TLS failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{}: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A PEM file holds no certificate.
    #[error("{}: no certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration (a key that does not match its
    /// certificate, an empty CA bundle, ...).
    #[error("TLS configuration: {detail}")]
    Config {
        /// rustls's words.
        detail: String,
    },
    /// The name to check the server's certificate against is not a DNS
    /// name or an IP address.
    #[error("{name:?} is not a server name (a DNS name or an IP address)")]
    BadServerName {
        /// The name.
        name: String,
    },
    /// The peer's certificate was refused.
    #[error("the peer's certificate is not trusted: {reason}")]
    Untrusted {
        /// Why.
        reason: Untrusted,
    },
    /// The peer refused this side (it sent this TLS alert): most often it
    /// did not trust this side's certificate (`UnknownCA`,
    /// `BadCertificate`, `CertificateRequired`).
    #[error("the peer refused the connection with TLS alert {alert}")]
    RefusedByPeer {
        /// The alert's name.
        alert: String,
    },
    /// The peer's certificate is trusted but the policy does not allow it.
    #[error("the policy does not allow the peer {subject:?} (key sha256 {spki_sha256})")]
    NotAllowed {
        /// Its subject.
        subject: String,
        /// Its key's SHA-256, hex.
        spki_sha256: String,
    },
    /// The policy needs the peer's certificate and it sent none.
    #[error("the policy needs the peer's certificate, and it sent none")]
    NoPeerCertificate,
    /// The peer's certificate could not be read for its identity.
    #[error("the peer's certificate cannot be read: {detail}")]
    BadCertificate {
        /// What could not be read.
        detail: String,
    },
    /// Another TLS failure, in rustls's words.
    #[error("TLS: {detail}")]
    Protocol {
        /// rustls's words.
        detail: String,
    },
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        match e {
            rustls::Error::InvalidCertificate(c) => TlsError::Untrusted { reason: c.into() },
            rustls::Error::NoCertificatesPresented => TlsError::Untrusted {
                reason: Untrusted::NoCertificate,
            },
            rustls::Error::AlertReceived(a) => TlsError::RefusedByPeer {
                alert: format!("{a:?}"),
            },
            other => TlsError::Protocol {
                detail: other.to_string(),
            },
        }
    }
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config {
        detail: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(path)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client's TLS configuration.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
    policy: CertPolicy,
}

impl TlsClient {
    /// A client that trusts the CAs of the PEM bundle `ca`, and presents
    /// the certificate chain and key of `identity` (PEM files: the leaf
    /// first, then intermediates; a PKCS#8, PKCS#1 or SEC1 key) to servers
    /// that ask for one.
    ///
    /// # Errors
    ///
    /// [`TlsError::Pem`], [`NoCertificate`](TlsError::NoCertificate) for
    /// unreadable files; [`Config`](TlsError::Config) if rustls refuses
    /// them (a key that does not match).
    pub fn from_pem(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsClient, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots(ca)?);
        let config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(certificates(chain)?, private_key(key)?)
                .map_err(config_error)?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient::from_config(Arc::new(config)))
    }

    /// A client on a rustls configuration of the caller's.
    pub fn from_config(config: Arc<ClientConfig>) -> TlsClient {
        TlsClient {
            config,
            server_name: None,
            policy: CertPolicy::AnyVerified,
        }
    }

    /// Checks the server's certificate against `name` instead of the host
    /// dialled (needed on Unix sockets, which have no host).
    #[must_use]
    pub fn server_name(mut self, name: &str) -> TlsClient {
        self.server_name = Some(name.to_string());
        self
    }

    /// Talks only to servers the policy allows (after the CA check).
    #[must_use]
    pub fn policy(mut self, policy: CertPolicy) -> TlsClient {
        self.policy = policy;
        self
    }

    /// The name the server's certificate is checked against: the one set
    /// with [`server_name`](Self::server_name), else `host`.
    pub(crate) fn name_for<'a>(&'a self, host: Option<&'a str>) -> Option<&'a str> {
        self.server_name.as_deref().or(host)
    }
}

/// A server's TLS configuration.
#[derive(Clone, Debug)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    policy: CertPolicy,
}

impl TlsServer {
    /// A server presenting the certificate chain and key of the PEM files
    /// `chain` and `key`; with `client_ca`, it requires each client to
    /// present a certificate that the CAs of that bundle issued.
    ///
    /// # Errors
    ///
    /// As [`TlsClient::from_pem`].
    pub fn from_pem(
        chain: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsServer, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .build()
                    .map_err(config_error)?,
            ),
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certificates(chain)?, private_key(key)?)
            .map_err(config_error)?;
        Ok(TlsServer::from_config(Arc::new(config)))
    }

    /// A server on a rustls configuration of the caller's.
    pub fn from_config(config: Arc<ServerConfig>) -> TlsServer {
        TlsServer {
            config,
            policy: CertPolicy::AnyVerified,
        }
    }

    /// Talks only to clients the policy allows (after the CA check). A
    /// policy other than [`CertPolicy::AnyVerified`] refuses clients that
    /// present no certificate.
    #[must_use]
    pub fn policy(mut self, policy: CertPolicy) -> TlsServer {
        self.policy = policy;
        self
    }
}

/// A connection's established TLS session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) conn: rustls::Connection,
    pub(crate) identity: Option<PeerIdentity>,
}

impl Connection {
    /// Runs a TLS client handshake on this connection (until `deadline`),
    /// checking the server's certificate against `tls`'s CAs and
    /// `server_name` (or the name set on `tls`), then `tls`'s policy.
    ///
    /// # Errors
    ///
    /// [`TlsError::Untrusted`] naming why the server's certificate was
    /// refused; [`TlsError::RefusedByPeer`] if the server refused us;
    /// [`TlsError::NotAllowed`] if the policy refuses the server;
    /// [`TlsError::BadServerName`]; [`StreamError::Timeout`];
    /// [`StreamError::PeerDied`] if the server hung up.
    pub fn tls_client(
        self,
        tls: &TlsClient,
        server_name: &str,
        deadline: Instant,
    ) -> Result<Connection, StreamError> {
        let name = tls.name_for(Some(server_name)).unwrap_or(server_name);
        let server =
            ServerName::try_from(name.to_string()).map_err(|_| TlsError::BadServerName {
                name: name.to_string(),
            })?;
        let conn =
            rustls::ClientConnection::new(tls.config.clone(), server).map_err(TlsError::from)?;
        self.establish(conn.into(), &tls.policy, deadline)
    }

    /// Runs a TLS server handshake on this connection (until `deadline`),
    /// checking the client's certificate if `tls` asks for one, then
    /// `tls`'s policy.
    ///
    /// # Errors
    ///
    /// [`TlsError::Untrusted`] naming why the client's certificate was
    /// refused (the client is told with an alert);
    /// [`TlsError::NotAllowed`], [`TlsError::NoPeerCertificate`] if the
    /// policy refuses it; [`StreamError::Timeout`];
    /// [`StreamError::PeerDied`].
    pub fn tls_server(self, tls: &TlsServer, deadline: Instant) -> Result<Connection, StreamError> {
        let conn = rustls::ServerConnection::new(tls.config.clone()).map_err(TlsError::from)?;
        self.establish(conn.into(), &tls.policy, deadline)
    }

    fn establish(
        mut self,
        mut conn: rustls::Connection,
        policy: &CertPolicy,
        deadline: Instant,
    ) -> Result<Connection, StreamError> {
        let fd = self.sock.as_fd();
        handshake(&mut conn, fd, deadline)?;
        let identity = match conn.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => Some(PeerIdentity::from_der(leaf)?),
            None => None,
        };
        match (&identity, policy) {
            (_, CertPolicy::AnyVerified) => {}
            (Some(id), p) => p.check(id)?,
            (None, _) => return Err(TlsError::NoPeerCertificate.into()),
        }
        self.tls = Some(Session { conn, identity });
        Ok(self)
    }
}

/// Drives a handshake on the non-blocking socket until it is over and
/// everything it wrote has gone (the client's last flight too), or the
/// deadline.
fn handshake(
    conn: &mut rustls::Connection,
    fd: std::os::fd::BorrowedFd<'_>,
    deadline: Instant,
) -> Result<(), StreamError> {
    loop {
        let mut write_blocked = false;
        while conn.wants_write() {
            match conn.write_tls(&mut FdIo(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    write_blocked = true;
                    break;
                }
                Err(e) => return Err(StreamError::from_io(&e)),
            }
        }
        let reading = conn.is_handshaking();
        if !reading && !write_blocked {
            return Ok(());
        }
        if reading {
            match conn.read_tls(&mut FdIo(fd)) {
                Ok(0) => {
                    // The peer hung up; an alert it sent first says why.
                    conn.process_new_packets().map_err(TlsError::from)?;
                    return Err(StreamError::PeerDied);
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // Tell the peer why (the alert rustls queued).
                        let _ = conn.write_tls(&mut FdIo(fd));
                        return Err(TlsError::from(e).into());
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(StreamError::from_io(&e)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StreamError::Timeout);
        }
        poll_stream(fd, reading, write_blocked, Some(left))
            .map_err(|e| StreamError::from_io(&e))?;
    }
}
