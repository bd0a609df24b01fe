//! Who may be at the other end: decided from the peer's credentials, by a
//! server about its clients and by a client about its server.

use std::fmt;
use std::sync::Arc;

use crate::sys::PeerCred;

/// A custom admission check: `Err(reason)` refuses the peer, and the
/// reason reaches it.
pub type Check = Arc<dyn Fn(&PeerCred) -> Result<(), String> + Send + Sync>;

/// Decides whether a peer may be talked to. A server applies its policy
/// to each client right after `accept`, before it spends anything on it; a
/// client applies its own to the server it reached (a process squatting on
/// the server's name is refused).
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
    /// Anyone (the socket's file permissions still apply).
    Anyone,
    /// A custom decision: `Err(reason)` refuses.
    Custom(Check),
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::SameUid => write!(f, "SameUid"),
            Policy::Allow { uids, gids } => write!(f, "Allow {{ uids: {uids:?}, gids: {gids:?} }}"),
            Policy::Anyone => write!(f, "Anyone"),
            Policy::Custom(_) => write!(f, "Custom(..)"),
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
            Policy::Anyone => Ok(()),
            Policy::Custom(f) => f(peer).map_err(|reason| PolicyRefusal::Custom { reason }),
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
}
