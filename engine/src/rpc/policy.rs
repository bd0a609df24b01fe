//! Who may connect: decided from the peer's credentials.

use std::fmt;
use std::sync::Arc;

use crate::sys::PeerCred;

/// A custom admission check: `Err(reason)` refuses the peer.
pub type Check = Arc<dyn Fn(&PeerCred) -> Result<(), String> + Send + Sync>;

/// Decides whether a client may connect. A refusal's reason reaches the
/// client.
#[derive(Clone, Default)]
pub enum Policy {
    /// Only processes of the server's own user (the default).
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

impl Policy {
    /// Applies the policy to a peer.
    ///
    /// # Errors
    ///
    /// The reason for refusing, naming the peer's ids.
    pub fn check(&self, peer: &PeerCred) -> Result<(), String> {
        match self {
            Policy::SameUid => {
                let me = rustix::process::getuid().as_raw();
                if peer.uid == me {
                    Ok(())
                } else {
                    Err(format!("uid {} is not the server's uid {me}", peer.uid))
                }
            }
            Policy::Allow { uids, gids } => {
                if uids.contains(&peer.uid) || gids.contains(&peer.gid) {
                    Ok(())
                } else {
                    Err(format!(
                        "uid {} / gid {} is not in the allow-lists",
                        peer.uid, peer.gid
                    ))
                }
            }
            Policy::Anyone => Ok(()),
            Policy::Custom(f) => f(peer),
        }
    }
}
