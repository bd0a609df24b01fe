//! Who may be at the other end: decided from the peer's credentials (on
//! shared memory and Unix sockets, from `SO_PEERCRED`) or, over TCP, from
//! the certificate it presented in TLS; by a server about its clients and
//! by a client about its server.

use std::fmt;
use std::sync::Arc;

use crate::sys::PeerCred;

/// A custom admission check: `Err(reason)` refuses the peer, and the
/// reason reaches it.
pub type Check = Arc<dyn Fn(&PeerCred) -> Result<(), String> + Send + Sync>;

/// Decides whether a peer may be talked to. A server applies its policy
/// to each client right after `accept`, before it spends anything on it
/// (over TLS, right after the TLS handshake); a client applies its own to
/// the server it reached (a process squatting on the server's name is
/// refused).
///
/// A peer on shared memory or a Unix socket is known by its credentials; a
/// peer over TCP has none, only the certificate it presented if the
/// connection runs TLS. The variants that read credentials (`SameUid`,
/// `Allow`, `Custom`) refuse a TCP peer ([`PolicyRefusal::NoCredentials`]);
/// `Certificate` refuses a peer without a verified certificate
/// ([`PolicyRefusal::NoCertificate`]); [`AnyOf`](Policy::AnyOf) combines
/// them for a server that listens on both.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Only processes of this process's own user (the default).
    #[default]
    SameUid,
    /// Processes whose uid is in the first list or whose gid is in the
    /// second.
    Allow {
        /// Allowed user ids.
        uids: Vec<u32>,
        /// Allowed group ids.
        gids: Vec<u32>,
    },
    /// Anyone (the socket's file permissions still apply). The only
    /// policy under which a server listens on TCP without TLS: anyone who
    /// reaches the port may call.
    Anyone,
    /// A custom decision on the peer's credentials: `Err(reason)` refuses.
    Custom(Check),
    /// Peers over TLS whose verified certificate (checked against the
    /// CA bundle first) matches one of the rules: by subject, common name
    /// or the SHA-256 of its key (feature `tls`).
    #[cfg(feature = "tls")]
    Certificate(Vec<crate::stream::CertMatch>),
    /// Peers that any of these policies allow (e.g. `SameUid` for local
    /// clients and `Certificate` for remote ones). Empty: nobody.
    AnyOf(Vec<Policy>),
}

/// Who a peer is, as far as its connection tells.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Who<'a> {
    /// Its credentials, on shared memory and Unix sockets.
    pub(crate) cred: Option<&'a PeerCred>,
    /// Its verified certificate, over TLS.
    #[cfg(feature = "tls")]
    pub(crate) identity: Option<&'a crate::stream::PeerIdentity>,
}

impl<'a> Who<'a> {
    /// A peer known by its credentials.
    pub(crate) fn local(cred: &'a PeerCred) -> Who<'a> {
        Who {
            cred: Some(cred),
            #[cfg(feature = "tls")]
            identity: None,
        }
    }

    /// The peer of a stream connection that has no credentials (TCP):
    /// known by its verified certificate over TLS, else not at all.
    pub(crate) fn remote(conn: &'a crate::stream::Connection) -> Who<'a> {
        let _ = conn;
        Who {
            cred: None,
            #[cfg(feature = "tls")]
            identity: conn.peer_identity(),
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::SameUid => write!(f, "SameUid"),
            Policy::Allow { uids, gids } => write!(f, "Allow {{ uids: {uids:?}, gids: {gids:?} }}"),
            Policy::Anyone => write!(f, "Anyone"),
            Policy::Custom(_) => write!(f, "Custom(..)"),
            #[cfg(feature = "tls")]
            Policy::Certificate(rules) => write!(f, "Certificate({rules:?})"),
            Policy::AnyOf(ps) => write!(f, "AnyOf({ps:?})"),
        }
    }
}

/// Why a policy refused a peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// The peer runs as another user.
    #[error("uid {uid} is not the expected uid {expected}")]
    NotSameUid {
        /// The peer's uid.
        uid: u32,
        /// The uid required.
        expected: u32,
    },
    /// Neither the peer's uid nor its gid is allowed.
    #[error("uid {uid} / gid {gid} is not in the allow-lists")]
    NotAllowed {
        /// The peer's uid.
        uid: u32,
        /// The peer's gid.
        gid: u32,
    },
    /// A custom check refused it.
    #[error("{reason}")]
    Custom {
        /// The check's reason.
        reason: String,
    },
    /// The policy reads credentials, and the peer has none: it came over
    /// TCP (allow it by its TLS certificate, or allow anyone).
    #[error("the peer came over TCP and has no credentials; the policy needs them")]
    NoCredentials,
    /// The policy allows peers by certificate, and the peer presented none
    /// (it is not on a TLS connection, or sent no certificate).
    #[error("the policy allows peers by certificate, and the peer presented none")]
    NoCertificate,
    /// The peer's verified certificate matches no rule of the policy.
    #[error("the certificate {subject:?} (key sha256 {spki_sha256}) is not allowed")]
    Certificate {
        /// Its subject.
        subject: String,
        /// Its key's SHA-256, hex.
        spki_sha256: String,
    },
}

impl Policy {
    /// A policy that allows only `uid`.
    pub fn uid(uid: u32) -> Policy {
        Policy::Allow {
            uids: vec![uid],
            gids: Vec::new(),
        }
    }

    /// Applies the policy to a peer.
    ///
    /// # Errors
    ///
    /// The reason for refusing, naming the peer's ids.
    pub fn check(&self, peer: &PeerCred) -> Result<(), PolicyRefusal> {
        self.decide(&Who::local(peer))
    }

    /// Applies the policy to a peer known as `who`.
    pub(crate) fn decide(&self, who: &Who<'_>) -> Result<(), PolicyRefusal> {
        match self {
            Policy::Anyone => Ok(()),
            Policy::AnyOf(ps) => {
                let mut last = PolicyRefusal::Custom {
                    reason: "the policy allows nobody (AnyOf of no policy)".into(),
                };
                for p in ps {
                    match p.decide(who) {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            #[cfg(feature = "tls")]
            Policy::Certificate(rules) => {
                let id = who.identity.ok_or(PolicyRefusal::NoCertificate)?;
                crate::stream::CertPolicy::Only(rules.clone())
                    .check(id)
                    .map_err(|_| PolicyRefusal::Certificate {
                        subject: id.subject.clone(),
                        spki_sha256: id.spki_hex(),
                    })
            }
            _ => match who.cred {
                Some(c) => self.check_cred(c),
                None => Err(PolicyRefusal::NoCredentials),
            },
        }
    }

    /// Whether some peer could pass: one with credentials (`cred`), or one
    /// with a verified certificate (`cert`).
    #[cfg_attr(not(feature = "tls"), allow(clippy::only_used_in_recursion))]
    pub(crate) fn admits(&self, cred: bool, cert: bool) -> bool {
        match self {
            Policy::Anyone => true,
            Policy::AnyOf(ps) => ps.iter().any(|p| p.admits(cred, cert)),
            #[cfg(feature = "tls")]
            Policy::Certificate(_) => cert,
            _ => cred,
        }
    }

    /// Whether it decides only by certificates (or allows anyone): what a
    /// client applies to a server over TCP, which has no credentials.
    pub(crate) fn without_credentials(&self) -> bool {
        match self {
            Policy::Anyone => true,
            Policy::AnyOf(ps) => ps.iter().all(Policy::without_credentials),
            #[cfg(feature = "tls")]
            Policy::Certificate(_) => true,
            _ => false,
        }
    }

    fn check_cred(&self, peer: &PeerCred) -> Result<(), PolicyRefusal> {
        match self {
            Policy::SameUid => {
                let me = rustix::process::getuid().as_raw();
                if peer.uid == me {
                    Ok(())
                } else {
                    Err(PolicyRefusal::NotSameUid {
                        uid: peer.uid,
                        expected: me,
                    })
                }
            }
            Policy::Allow { uids, gids } => {
                if uids.contains(&peer.uid) || gids.contains(&peer.gid) {
                    Ok(())
                } else {
                    Err(PolicyRefusal::NotAllowed {
                        uid: peer.uid,
                        gid: peer.gid,
                    })
                }
            }
            Policy::Custom(f) => f(peer).map_err(|reason| PolicyRefusal::Custom { reason }),
            _ => self.decide(&Who::local(peer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(uid: u32, gid: u32) -> PeerCred {
        PeerCred {
            pid: None,
            uid,
            gid,
        }
    }

    #[test]
    fn each_policy_names_its_reason() {
        let me = rustix::process::getuid().as_raw();
        assert!(Policy::SameUid.check(&cred(me, 0)).is_ok());
        assert_eq!(
            Policy::SameUid.check(&cred(me + 1, 0)),
            Err(PolicyRefusal::NotSameUid {
                uid: me + 1,
                expected: me
            })
        );
        let allow = Policy::Allow {
            uids: vec![5],
            gids: vec![7],
        };
        assert!(allow.check(&cred(5, 0)).is_ok());
        assert!(allow.check(&cred(6, 7)).is_ok());
        assert_eq!(
            allow.check(&cred(6, 8)),
            Err(PolicyRefusal::NotAllowed { uid: 6, gid: 8 })
        );
        assert!(Policy::uid(9).check(&cred(9, 0)).is_ok());
        assert!(Policy::Anyone.check(&cred(1, 1)).is_ok());
        let custom = Policy::Custom(Arc::new(|p| {
            if p.uid == 0 {
                Err("no root".into())
            } else {
                Ok(())
            }
        }));
        assert_eq!(
            custom.check(&cred(0, 0)).unwrap_err().to_string(),
            "no root"
        );
    }

    #[test]
    fn a_peer_without_credentials_passes_only_what_needs_none() {
        let me = rustix::process::getuid().as_raw();
        let remote = Who::default();
        assert_eq!(
            Policy::SameUid.decide(&remote),
            Err(PolicyRefusal::NoCredentials)
        );
        assert!(Policy::Anyone.decide(&remote).is_ok());
        let both = Policy::AnyOf(vec![Policy::SameUid, Policy::Anyone]);
        assert!(both.decide(&remote).is_ok());
        assert!(both.check(&cred(me, 0)).is_ok());
        assert!(Policy::AnyOf(vec![]).check(&cred(me, 0)).is_err());
        assert!(Policy::SameUid.admits(true, false) && !Policy::SameUid.admits(false, true));
        assert!(Policy::Anyone.admits(false, false));
        assert!(!Policy::SameUid.without_credentials() && Policy::Anyone.without_credentials());
    }
}
