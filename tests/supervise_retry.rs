//! What a supervised client promises around a crash, with real processes
//! (this test binary re-executed as the service): the blobs of a reply are
//! read from the pool of the instance that answered; a call that could not
//! be sent goes to the successor with its blobs; an idempotent call is sent
//! again until the retry budget is spent; a started call that is dropped
//! does not keep the dead instance's segment mapped.

mod common;

use std::time::Duration;

use common::calc::{Add, ArchivedAdd, Sum};
use common::services::{self, FILE, PID, SERVICE, blob_failure, supervisor, temp_file};
use common::supervised::{current_segment, holders_of, segment_at, segment_inode, wait_released};
use isocall::raw::sys::PidFd;
use isocall::{
    CallCtx, CallError, ClientOptions, Method, ServerBuilder, SupervisedClient, SupervisedError,
    SupervisorBuilder,
};
use rustix::process::{Pid, Signal, kill_process};

const LIMIT: Duration = Duration::from_secs(30);
/// This file's service.
const RETRY: &str = "retry";

/// `stamp`: writes the instance's pid and `a` into the request's blob and
/// sends it back (idempotent).
const STAMP: Method<Add, Sum> = Method::new("stamp").idempotent();
/// `sum`: the sum of the blob's bytes and who answered (not idempotent).
const SUM: Method<Add, Sum> = Method::new("sum");
/// `die_before`: instances numbered below `a` die in it (idempotent).
const DIE_BEFORE: Method<Add, Sum> = Method::new("die_before").idempotent();
/// `never`: does not answer.
const NEVER: Method<Add, Sum> = Method::new("never");

/// The entry the supervised children run: this file's service, or the
/// common ones.
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    if std::env::var(SERVICE).as_deref() == Ok(RETRY) {
        serve();
    } else {
        services::serve();
    }
}

/// The instances, one after the other, append a line to the file as they
/// start; the `n`-th (from 1) learns its number that way.
fn instance_number() -> usize {
    use std::io::Write;
    let path = std::env::var_os(FILE).expect("the test sets the file");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .expect("file");
    // One short append is atomic: the line count is the start order.
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .expect("append");
    drop(f);
    std::fs::read_to_string(&path)
        .expect("read")
        .lines()
        .position(|l| l == std::process::id().to_string())
        .expect("our line")
        + 1
}

fn serve() {
    let me = u64::from(std::process::id());
    let number = instance_number() as u64;
    ServerBuilder::supervised()
        .expect("started by a supervisor")
        // `stamp`: writes the instance's pid and `a` into the request's
        // blob and sends it back.
        .method(STAMP, move |r: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
            let mut blob = ctx.blob_mut(0).map_err(blob_failure)?;
            blob.set_len(16).map_err(blob_failure)?;
            blob[..8].copy_from_slice(&me.to_le_bytes());
            blob[8..16].copy_from_slice(&r.a.to_native().to_le_bytes());
            ctx.reply_blob(blob).map_err(blob_failure)?;
            Ok(Sum { sum: me })
        })
        // `sum`: not idempotent; the sum of the blob's bytes, and who
        // answered (in `Sum` as pid << 32 | sum).
        .method(SUM, move |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
            let blob = ctx.blob_mut(0).map_err(blob_failure)?;
            let sum: u64 = blob.iter().map(|&b| u64::from(b)).sum();
            Ok(Sum {
                sum: me << 32 | sum,
            })
        })
        // `die_before`: idempotent; instances numbered below `a` kill
        // themselves in it, the others answer with their number.
        .method(DIE_BEFORE, move |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            if number < r.a.to_native() {
                let _ = kill_process(rustix::process::getpid(), Signal::KILL);
            }
            Ok(Sum { sum: number })
        })
        // `never`: does not answer (the test kills the instance).
        .method(NEVER, |_: &ArchivedAdd, _: &mut CallCtx<'_>| {
            loop {
                std::thread::park();
            }
        })
        .method(PID, move |_: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum { sum: me })
        })
        .spawn()
        .expect("server")
        .run();
}

fn sigkill_and_reap_wait(pid: u32) {
    let fd = PidFd::open(pid).expect("pidfd");
    kill_process(Pid::from_raw(pid as i32).expect("pid"), Signal::KILL).expect("kill");
    assert!(
        fd.wait_exit(Some(LIMIT)).expect("wait"),
        "pid {pid} did not die"
    );
}

fn pid_of(c: &mut SupervisedClient) -> u32 {
    let m = c.method(PID).expect("pid method");
    c.call(m, &Add { a: 0, b: 0 })
        .expect("pid call")
        .sum
        .to_native() as u32
}

fn retry_service(tag: &str) -> (SupervisorBuilder, std::path::PathBuf) {
    let file = temp_file(tag);
    (supervisor(tag, RETRY).env(FILE, &file), file)
}

#[test]
fn a_reply_from_an_instance_that_died_since_is_read_from_its_pool() {
    let (b, file) = retry_service("retry-reply-pool");
    let sup = b.spawn().expect("supervisor");
    let mut c = sup.client();
    let stamp = c.method(STAMP).unwrap();
    let first = pid_of(&mut c);
    let pool = c.pool().unwrap().expect("a blob pool");
    let first_segment = segment_inode(&pool);
    let mut blob = pool.alloc(64).unwrap();
    blob.set_len(64).unwrap();
    let handle = blob.send().unwrap();
    drop(pool);
    let stamped = c.start(stamp, &Add { a: 77, b: 0 }, &[handle]).unwrap();
    // A later call's answer means the first one's is in the ring too: the
    // client keeps it aside (replies come in order).
    let m = c.method(PID).unwrap();
    let p = c.start(m, &Add { a: 0, b: 0 }, &[]).unwrap();
    assert_eq!(c.wait(p, None).unwrap().sum.to_native(), u64::from(first));
    sigkill_and_reap_wait(first);
    // The next call goes to the successor, whose pool is now the current
    // one.
    let second = pid_of(&mut c);
    assert_ne!(second, first);
    let current = c.pool().unwrap().expect("pool");
    let current_segment = segment_inode(&current);
    assert_ne!(current_segment, first_segment);
    drop(current);
    let mut r = c
        .wait(stamped, None)
        .expect("the reply that came before the crash");
    let out = r.blob(0).expect("the reply's blob, in its pool");
    let pid = u64::from_le_bytes(out[..8].try_into().unwrap());
    let tag = u64::from_le_bytes(out[8..16].try_into().unwrap());
    assert_eq!(r.sum.to_native(), pid);
    // Where the blob's bytes are: in the first instance's segment, which
    // this process still maps for the reply, not the successor's.
    let at = segment_at(out.as_ptr().addr());
    drop(out);
    drop(r);
    assert_eq!(
        (pid, tag),
        (u64::from(first), 77),
        "stamped by the first instance"
    );
    assert_eq!(
        at, first_segment,
        "the reply's blob is in the pool of the instance that answered"
    );
    assert_ne!(
        at, current_segment,
        "the reply's blobs are not in the successor's pool"
    );
    drop(c);
    drop(sup);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_call_that_could_not_be_sent_goes_to_the_successor_with_its_blob() {
    let (b, file) = retry_service("retry-unsent");
    let sup = b.spawn().expect("supervisor");
    let mut c = sup.client();
    let sum = c.method(SUM).unwrap();
    assert!(!sum.is_idempotent());
    let first = pid_of(&mut c);
    let pool = c.pool().unwrap().expect("pool");
    let mut blob = pool.alloc(1000).unwrap();
    blob.set_len(1000).unwrap();
    for (i, b) in blob.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let want: u64 = (0..1000u64).map(|i| i % 251).sum();
    let handle = blob.send().unwrap();
    // The instance dies with the blob sent to it, before the request is.
    sigkill_and_reap_wait(first);
    let got = c
        .call_with(sum, &Add { a: 0, b: 0 }, &[handle], None)
        .expect("sent to the successor, which never saw it: not a retry")
        .sum
        .to_native();
    assert_eq!(got & 0xffff_ffff, want, "the blob's bytes came along");
    assert_ne!(got >> 32, u64::from(first));
    assert_eq!(sup.stats().retries, 0, "nothing was sent twice");
    drop(c);
    drop(sup);
    let _ = std::fs::remove_file(file);
}

#[test]
fn an_idempotent_call_is_sent_again_until_the_retry_budget_is_spent() {
    // Instances 1 and 2 die in the call; with 3 retries the third answers.
    let (b, file) = retry_service("retry-budget-ok");
    let sup = b.retries(3).spawn().expect("supervisor");
    let mut c = sup.client();
    let m = c.method(DIE_BEFORE).unwrap();
    let n = c
        .call(m, &Add { a: 3, b: 0 })
        .expect("answered by the third instance")
        .sum
        .to_native();
    assert_eq!(n, 3);
    assert_eq!(sup.stats().retries, 2);
    drop(c);
    drop(sup);
    let _ = std::fs::remove_file(file);

    // Instances 1 to 4 die in it; with 2 retries the call is sent three
    // times and fails.
    let (b, file) = retry_service("retry-budget-spent");
    let sup = b.retries(2).spawn().expect("supervisor");
    let mut c = sup.client();
    let m = c.method(DIE_BEFORE).unwrap();
    let r = c.call(m, &Add { a: 5, b: 0 }).map(|r| r.sum.to_native());
    assert!(
        matches!(r, Err(SupervisedError::Call(CallError::PeerDied))),
        "{r:?}"
    );
    let st = sup.stats();
    assert_eq!(st.retries, 2);
    assert_eq!(st.calls_failed, 1);
    // Three instances ran it: the file names three that started and died
    // (the fourth may be starting).
    let started = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(started >= 3, "{started} instances started");
    drop(c);
    drop(sup);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_dropped_call_does_not_keep_the_dead_instance_s_segment() {
    let (b, file) = retry_service("retry-abandoned");
    let sup = b.spawn().expect("supervisor");
    let mut c = sup.client();
    let never = c.method(NEVER).unwrap();
    let first = pid_of(&mut c);
    let dead = current_segment(&mut c);
    let forgotten = c.start(never, &Add { a: 0, b: 0 }, &[]).unwrap();
    let kept = c.start(never, &Add { a: 0, b: 0 }, &[]).unwrap();
    drop(forgotten);
    sigkill_and_reap_wait(first);
    // Calls go on on the successor; the dropped call is forgotten, the
    // kept one still holds the dead connection (its reply could be there).
    let second = pid_of(&mut c);
    assert_ne!(second, first);
    assert_eq!(c.in_flight(), 1);
    assert!(
        !holders_of(dead).is_empty(),
        "kept for the call still waited for"
    );
    // Not idempotent: it fails, and nothing holds the dead segment then.
    assert!(matches!(
        c.wait(kept, None).map(|r| r.sum.to_native()),
        Err(SupervisedError::Call(CallError::PeerDied))
    ));
    assert_eq!(c.in_flight(), 0);
    wait_released(dead, "the dead instance's segment");
    assert_eq!(
        sup.stats().calls_failed,
        1,
        "the dropped call is no failure"
    );
    drop(c);
    drop(sup);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_timeout_of_duration_max_means_no_limit() {
    let (b, file) = retry_service("retry-no-limit");
    let options = ClientOptions::default()
        .call_timeout(Duration::MAX)
        .handshake_timeout(Duration::MAX);
    let sup = b.client_options(options).spawn().expect("supervisor");
    // Everything here waits without limit: a watchdog bounds the test.
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let pid = sup.wait_serving(Duration::MAX).expect("serving");
        let mut c = sup.client();
        assert_eq!(pid_of(&mut c), pid);
        assert!(sup.wait_idle(Duration::MAX));
        drop(c);
        drop(sup);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(LIMIT).is_ok(),
        "waits with a timeout of Duration::MAX did not end"
    );
    t.join().unwrap();
    let _ = std::fs::remove_file(file);
}
