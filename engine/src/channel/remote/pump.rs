//! The publisher's pump: a thread that sends what the stream subscribers'
//! sockets did not take when it was published, and finishes the
//! connections of subscribers the publisher closed.
//!
//! A ring holds what is published until the subscriber reads it, whatever
//! the publisher does next; a socket holds only what fits its buffer, and
//! the rest waits in the publisher's memory. Without the pump, bytes
//! published just before the publisher went quiet would wait for its next
//! call. The pump is woken when a publish leaves bytes behind, waits for
//! the sockets to take them (never on one socket alone: it polls them all,
//! with its doorbell), and sleeps when none is left. Each connection's
//! output is locked, so the pump and the publisher share it safely.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stream::Flusher;
use crate::sys::{EventFd, Ready, poll_ready};

use super::super::accept::lock;
use super::outlet::Closing;

/// The longest the pump sleeps between looks at a closing connection.
const CLOSING_TICK: Duration = Duration::from_millis(20);

/// What the publisher and its pump share.
pub(crate) struct Kick {
    flushers: Mutex<Vec<Flusher>>,
    closing: Mutex<Vec<Closing>>,
    bell: EventFd,
    stop: AtomicBool,
}

impl Kick {
    /// Has the pump send what `f`'s connection left unsent.
    pub(crate) fn pending(&self, f: &Flusher) {
        let mut list = lock(&self.flushers);
        if list.iter().any(|g| g.same(f)) {
            return;
        }
        list.push(f.clone());
        drop(list);
        let _ = self.bell.notify();
    }

    /// Hands a closed subscriber's connection to the pump, which sends
    /// its last frames and then closes it.
    pub(crate) fn close(&self, c: Closing) {
        lock(&self.closing).push(c);
        let _ = self.bell.notify();
    }
}

/// The pump thread, stopped and joined when dropped (closing connections
/// still held are closed at once).
pub(crate) struct Pump {
    kick: Arc<Kick>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    /// Starts the pump.
    pub(crate) fn start() -> std::io::Result<Pump> {
        let kick = Arc::new(Kick {
            flushers: Mutex::new(Vec::new()),
            closing: Mutex::new(Vec::new()),
            bell: EventFd::new()?,
            stop: AtomicBool::new(false),
        });
        let k = kick.clone();
        let thread = std::thread::Builder::new()
            .name("isocall-chan-pump".into())
            .spawn(move || run(&k))?;
        Ok(Pump {
            kick,
            thread: Some(thread),
        })
    }

    /// The handle outlets use to wake it.
    pub(crate) fn kick(&self) -> Arc<Kick> {
        self.kick.clone()
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.kick.stop.store(true, Ordering::Release);
        let _ = self.kick.bell.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in std::mem::take(&mut *lock(&self.kick.closing)) {
            c.finish();
        }
    }
}

fn run(k: &Kick) {
    while !k.stop.load(Ordering::Acquire) {
        // The closed connections first: done ones are closed.
        let closing = {
            let mut c = lock(&k.closing);
            let mut i = 0;
            let mut done = Vec::new();
            while i < c.len() {
                if c[i].progress() {
                    done.push(c.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            let left = c.len();
            drop(c);
            for d in done {
                d.finish();
            }
            left
        };
        let list: Vec<Flusher> = {
            let mut l = lock(&k.flushers);
            l.retain(Flusher::has_pending);
            l.clone()
        };
        let mut fds = vec![(k.bell.as_fd(), Ready::Readable)];
        fds.extend(list.iter().map(|f| (f.fd(), Ready::ReadWrite)));
        let timeout = (closing > 0).then_some(CLOSING_TICK);
        let Ok(ready) = poll_ready(&fds, timeout) else {
            // Cannot wait: look again shortly rather than spin.
            std::thread::park_timeout(CLOSING_TICK);
            continue;
        };
        if ready[0] {
            let _ = k.bell.wait(Some(Duration::ZERO));
        }
        let mut moved = ready[0];
        for (f, r) in list.iter().zip(&ready[1..]) {
            if *r {
                let before = f.unsent();
                f.flush();
                moved |= f.unsent() != before || !f.has_pending();
            }
        }
        if !moved && !list.is_empty() {
            // Ready but nothing went (a peer that sends instead of
            // reading: its bytes are the publisher's to read and fail):
            // look again a little later rather than spin.
            std::thread::park_timeout(CLOSING_TICK);
        }
    }
}
