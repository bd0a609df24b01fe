//! Building a [`Publisher`]: its name, who may subscribe, backpressure,
//! history, rings, blob pool and limits.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use isocall_blob::{Party, Pool, PoolConfig};

use crate::WaitStrategy;
use crate::rpc::body::Body;
use crate::rpc::{
    Admission, Compression, Endpoint, IntoEndpoint, Limits, Policy, TypeSig, push_endpoint,
};
use crate::segment::SegmentLayout;
use crate::stream::{AddressError, Listener, Security};
use crate::sys::{SharedMem, SocketName, listen_seqpacket, unlink_socket};

use super::accept::{self, Chooser, MAX_SUBSCRIBERS, Setup, Shared, SubscriberInfo};
use super::error::PublishError;
use super::policy::Backpressure;
use super::publisher::Publisher;
use super::remote::accept::StreamSetup;
use super::stats::PubBlock;

/// Builds a [`Publisher`]: its name, who may subscribe, backpressure,
/// history, rings and limits.
pub struct PublisherBuilder<T> {
    socket: SocketName,
    channel: String,
    policy: Policy,
    backpressure: Backpressure,
    choose: Option<Chooser>,
    strategy: WaitStrategy,
    ring_capacity: usize,
    history: usize,
    send_timeout: Duration,
    linger: Duration,
    handshake_timeout: Duration,
    max_subscribers: usize,
    max_subscribers_per_uid: usize,
    max_handshakes: usize,
    max_handshakes_per_uid: usize,
    blobs: PoolConfig,
    /// Stream addresses to listen on too.
    listen: Vec<Endpoint>,
    /// The first address that did not parse.
    bad_address: Option<AddressError>,
    compression: Compression,
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::stream::TlsServer>>,
    _t: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for PublisherBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("socket", &self.socket)
            .field("backpressure", &self.backpressure)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl<T: Body> PublisherBuilder<T> {
    /// A publisher of `T` listening on `socket`, with the defaults:
    /// same-uid policy, [`Backpressure::Block`] for every subscriber with
    /// a 5 s send timeout, `Adaptive` waits, 1 MiB rings, no history, at
    /// most [`MAX_SUBSCRIBERS`] subscribers, 5 s handshakes, and a drop
    /// that lingers up to 1 s to deliver what is queued.
    pub fn new(socket: SocketName) -> Self {
        // Register for membarrier now, while the process most likely has
        // one thread (see `ServerBuilder::with_source`).
        crate::sys::heavy_barrier_available();
        let channel = match &socket {
            SocketName::Path(p) => p
                .file_name()
                .map_or("channel".into(), |n| n.to_string_lossy().into_owned()),
            SocketName::Abstract(n) => n.clone(),
            #[allow(unreachable_patterns)]
            other => other.to_string(),
        };
        PublisherBuilder {
            socket,
            channel,
            policy: Policy::default(),
            backpressure: Backpressure::Block,
            choose: None,
            strategy: WaitStrategy::Adaptive,
            ring_capacity: 1 << 20,
            history: 0,
            send_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            max_subscribers: MAX_SUBSCRIBERS,
            max_subscribers_per_uid: MAX_SUBSCRIBERS,
            max_handshakes: 16,
            max_handshakes_per_uid: 8,
            blobs: PoolConfig::new(),
            listen: Vec::new(),
            bad_address: None,
            compression: Compression::Auto,
            #[cfg(feature = "tls")]
            tls: None,
            _t: PhantomData,
        }
    }

    /// Who may subscribe (checked right after `accept`, before anything
    /// is spent on the subscriber).
    #[must_use]
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }

    /// The backpressure policy of every subscriber (default
    /// [`Backpressure::Block`]).
    #[must_use]
    pub fn backpressure(mut self, b: Backpressure) -> Self {
        self.backpressure = b;
        self.choose = None;
        self
    }

    /// Chooses each subscriber's backpressure policy when it joins, from
    /// who it is (its credentials and the label it gave itself).
    #[must_use]
    pub fn backpressure_with(
        mut self,
        choose: impl Fn(&SubscriberInfo) -> Backpressure + Send + Sync + 'static,
    ) -> Self {
        self.choose = Some(Arc::new(choose));
        self
    }

    /// How the publisher waits for room in a [`Backpressure::Block`]
    /// subscriber's ring.
    #[must_use]
    pub fn wait_strategy(mut self, s: WaitStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// The capacity of each subscriber's ring: a power of two from 4 KiB
    /// to 1 GiB (default 1 MiB). The largest message is a little less.
    #[must_use]
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// Keeps the last `depth` messages, for subscribers that join late
    /// and ask for them (default 0: none; each kept message costs a copy
    /// at its send).
    #[must_use]
    pub fn history(mut self, depth: usize) -> Self {
        self.history = depth;
        self
    }

    /// How long [`Publisher::send`] waits for room in a blocking
    /// subscriber's ring (default 5 s).
    #[must_use]
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }

    /// How long dropping the publisher waits to deliver what is still
    /// queued for its subscribers (default 1 s).
    #[must_use]
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }

    /// How long a subscriber's handshake may take (default 5 s).
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Most subscribers at once, in all and from one user id (each at
    /// most [`MAX_SUBSCRIBERS`]).
    #[must_use]
    pub fn max_subscribers(mut self, total: usize, per_uid: usize) -> Self {
        self.max_subscribers = total;
        self.max_subscribers_per_uid = per_uid;
        self
    }

    /// Most handshakes under way at once, in all and from one user id
    /// (default 16 and 8).
    #[must_use]
    pub fn max_handshakes(mut self, total: usize, per_uid: usize) -> Self {
        self.max_handshakes = total;
        self.max_handshakes_per_uid = per_uid;
        self
    }

    /// Gives the channel a blob pool of these classes, shared by the
    /// publisher and every subscriber (default: none). A message sent with
    /// blobs ([`Publisher::loan_blob`]) is written once into it and shared
    /// with every subscriber: the fan-out copies no byte of it.
    #[must_use]
    pub fn blobs(mut self, classes: PoolConfig) -> Self {
        self.blobs = classes;
        self
    }

    /// Listens on the stream address `address` too (`tcp://host:port`,
    /// `unix:/path`, `unix-stream:@name`; a TCP port 0 picks a free port,
    /// see [`Publisher::addresses`]), beside the shared-memory name; may
    /// be called for several. A [`Subscriber`](super::Subscriber) that
    /// connects there gets the same messages, copied over the socket
    /// (blobs inline), under the same policy, caps and backpressure.
    ///
    /// A TCP subscriber has no credentials: without TLS (`tls`, with the
    /// feature of that name) a TCP address needs the policy
    /// [`Policy::Anyone`], said explicitly, or [`create`](Self::create)
    /// refuses to start.
    #[must_use]
    pub fn listen(mut self, address: impl IntoEndpoint) -> Self {
        push_endpoint(&mut self.listen, &mut self.bad_address, address);
        self
    }

    /// TLS on the publisher's TCP addresses (feature `tls`): it presents
    /// the certificate of `tls`, and requires and checks subscribers'
    /// certificates if `tls` has a client CA; the policy then sees each
    /// subscriber's certificate ([`Policy::Certificate`]).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: crate::stream::TlsServer) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Whether lz4 is granted to stream subscribers that ask for it
    /// (default [`Compression::Auto`]: granted; `Off`: refused).
    #[must_use]
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Listens, and starts the accept thread.
    ///
    /// # Errors
    ///
    /// [`PublishError::Listen`] if the name is taken;
    /// [`PublishError::BadLimit`] for a limit of 0 or above
    /// [`MAX_SUBSCRIBERS`]; [`PublishError::Layout`] for a ring capacity
    /// that is not a power of two from 4 KiB to 1 GiB;
    /// [`PublishError::Blobs`] for a blob pool configuration that is not
    /// valid; [`PublishError::Io`] if the OS refuses a thread or memory;
    /// for stream addresses, [`PublishError::Address`],
    /// [`PublishError::TcpPolicy`] and [`PublishError::Stream`] (an
    /// address that cannot be listened on).
    pub fn create(mut self) -> Result<Publisher<T>, PublishError> {
        if let Some(e) = self.bad_address.take() {
            return Err(e.into());
        }
        #[cfg(feature = "tls")]
        let tls = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        let mut stream_addresses = Vec::new();
        for e in std::mem::take(&mut self.listen) {
            let Some(a) = e.stream_address() else {
                return Err(PublishError::Address(AddressError::UnknownScheme {
                    address: format!("{e} (a publisher listens on one shared-memory name)"),
                }));
            };
            if a.is_tcp() && !self.policy.admits(false, tls) {
                return Err(PublishError::TcpPolicy {
                    address: a.to_string(),
                    tls,
                });
            }
            stream_addresses.push(a.clone());
        }
        let bad = |what| Err(PublishError::BadLimit { what });
        if !(1..=MAX_SUBSCRIBERS).contains(&self.max_subscribers)
            || !(1..=MAX_SUBSCRIBERS).contains(&self.max_subscribers_per_uid)
        {
            return bad("subscribers: from 1 to 30, in all and per uid");
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_uid == 0 {
            return bad("handshakes: at least 1, in all and per uid");
        }
        let cap = self.ring_capacity;
        if !(4096..=1 << 30).contains(&cap) || !cap.is_power_of_two() {
            return Err(crate::segment::SegmentError::BadCapacity { capacity: cap }.into());
        }
        let ty = TypeSig::of::<T>();
        let block = PubBlock::create(&self.channel, &ty.name, ty.fingerprint, self.history)?;
        let pool = if self.blobs.is_empty() {
            None
        } else {
            let len = self.blobs.region_size()?;
            let mem = SharedMem::create_with_regions(&pool_name(&self.channel), len, 0)?;
            let region = mem.region(0, len).ok_or(PublishError::BadLimit {
                what: "the blob pool's memory is not writable",
            })?;
            let pool = Pool::create_as(region, &self.blobs, Party::PUBLISHER)?;
            Some((Arc::new(mem), Arc::new(pool)))
        };
        let listener = listen_seqpacket(&self.socket).map_err(|source| PublishError::Listen {
            socket: self.socket.to_string(),
            source,
        })?;
        let limits = Limits {
            max_connections: self.max_subscribers,
            max_connections_per_uid: self.max_subscribers_per_uid,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_uid: self.max_handshakes_per_uid,
            ..Limits::default()
        };
        let fixed = self.backpressure;
        let pool_handle = pool.as_ref().map(|(_, p)| p.clone());
        let shared = Arc::new(Shared::new(Setup {
            channel: self.channel,
            socket: self.socket.clone(),
            policy: self.policy,
            choose: self.choose.unwrap_or_else(|| Arc::new(move |_| fixed)),
            ty,
            layout: SegmentLayout {
                ring_capacity: cap,
                ..SegmentLayout::default()
            },
            strategy: self.strategy,
            handshake_timeout: self.handshake_timeout,
            admission: Admission::new(&limits),
            block,
            pool,
        })?);
        let stream = if stream_addresses.is_empty() {
            None
        } else {
            #[cfg(feature = "tls")]
            let security = match &self.tls {
                Some(t) => Security::Tls(t.clone()),
                None => Security::Anyone,
            };
            #[cfg(not(feature = "tls"))]
            let security = Security::Anyone;
            let listener = match Listener::bind(&stream_addresses, security) {
                Ok(l) => l,
                Err(e) => {
                    unlink_socket(&self.socket);
                    return Err(e.into());
                }
            };
            let bound: Vec<Endpoint> = listener
                .addresses()
                .into_iter()
                .map(Endpoint::stream)
                .collect();
            let setup = StreamSetup {
                listener,
                compression: self.compression,
                max_payload: isocall_ringbuf::max_payload(cap),
                pool: (!self.blobs.is_empty()).then_some(self.blobs),
                send_buffer: cap,
                tcp_tls: tls,
            };
            let spawned = super::remote::pump::Pump::start()
                .and_then(|p| Ok((super::remote::accept::spawn(shared.clone(), setup)?, p)));
            match spawned {
                Ok((t, pump)) => Some((t, bound, pump)),
                Err(e) => {
                    unlink_socket(&self.socket);
                    return Err(e.into());
                }
            }
        };
        let accept = match accept::spawn(shared.clone(), listener) {
            Ok(t) => t,
            Err(e) => {
                // The stream listener's thread stops too.
                shared
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Release);
                let _ = shared.stop.notify();
                unlink_socket(&self.socket);
                return Err(e.into());
            }
        };
        tracing::debug!(channel = %shared.channel, "publisher listening");
        Ok(Publisher::new(
            shared,
            accept,
            stream,
            pool_handle,
            self.history,
            cap,
            self.send_timeout,
            self.linger,
        ))
    }
}

/// The name of a channel's blob pool memfd.
fn pool_name(channel: &str) -> String {
    let mut name = format!("{}{channel}", super::stats::POOL_MEMFD_PREFIX);
    let mut n = name.len().min(249);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    name.truncate(n);
    name
}
