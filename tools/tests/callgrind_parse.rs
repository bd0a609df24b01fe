//! The callgrind output parser of `isocall bench --instructions` on small
//! fixtures shaped like callgrind 3.19's files (no valgrind needed): the
//! thread, the trigger of a `--dump-before` part, the `Ir` count among
//! several events, and the one part each side's end marker dumped.

#[path = "../src/bench/callgrind.rs"]
#[allow(dead_code)]
mod callgrind;

/// A part dumped when the server's end marker was entered (abridged from
/// a real run of `__bench-instr baseline`).
const SERVER_PART: &str = "# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 2291
cmd:  isocall __bench-instr baseline --messages 2000 --warmup 100
part: 2
thread: 2


desc: I1 cache: 
desc: D1 cache: 
desc: LL cache: 

desc: Timerange: Basic block 190680 - 190696
desc: Trigger: --dump-before=isocall::bench::instr::instr_mark_end_server

positions: line
events: Ir
summary: 26005


ob=(7) isocall
fl=(339) std/src/sys/thread/unix.rs
fn=(2324) <std::sys::thread::unix::Thread>::new::thread_start
cfn=(2394) core::ops::function::FnOnce::call_once{{vtable.shim}}
calls=0 250 
2240 26005

totals: 26005
";

/// The client's part, with more events than `Ir` (as `--cache-sim=yes`
/// writes) and a trailing count left out.
const CLIENT_PART: &str = "# callgrind format
version: 1
part: 1
thread: 1
desc: Trigger: --dump-before=isocall::bench::instr::instr_mark_end_client
positions: line
events: Dr Ir Dw
summary: 700 32005
fn=(1) main
0 700 32005
totals: 700 32005
";

/// The part written at exit (not a marker's).
const EXIT_PART: &str = "# callgrind format
thread: 1
desc: Trigger: Program termination
events: Ir
summary: 59
totals: 59
";

#[test]
fn a_part_gives_its_thread_trigger_and_instructions() {
    let p = callgrind::parse(SERVER_PART).unwrap();
    assert_eq!(p.thread, Some(2));
    assert_eq!(p.instructions, 26005);
    assert_eq!(
        callgrind::dumped_before(&p),
        Some("isocall::bench::instr::instr_mark_end_server")
    );
    let c = callgrind::parse(CLIENT_PART).unwrap();
    assert_eq!((c.thread, c.instructions), (Some(1), 32005));
    let e = callgrind::parse(EXIT_PART).unwrap();
    assert_eq!(callgrind::dumped_before(&e), None);
    assert_eq!(e.instructions, 59);
}

#[test]
fn each_side_is_found_by_its_marker() {
    let parts: Vec<_> = [SERVER_PART, CLIENT_PART, EXIT_PART]
        .iter()
        .map(|t| callgrind::parse(t).unwrap())
        .collect();
    assert_eq!(
        callgrind::dumped_count(&parts, "instr_mark_end_client"),
        Ok(32005)
    );
    assert_eq!(
        callgrind::dumped_count(&parts, "instr_mark_end_server"),
        Ok(26005)
    );
    let missing = callgrind::dumped_count(&parts[2..], "instr_mark_end_client").unwrap_err();
    assert!(missing.contains("no callgrind dump"), "{missing}");
    let twice = [parts[0].clone(), parts[0].clone()];
    assert!(callgrind::dumped_count(&twice, "instr_mark_end_server").is_err());
}

#[test]
fn text_that_is_not_callgrind_output_is_an_error() {
    assert!(callgrind::parse("").is_err());
    assert!(callgrind::parse("events: Ir\n").is_err());
    assert!(callgrind::parse("summary: 12\nevents: Ir\n").is_err());
    assert!(callgrind::parse("events: Ir\nsummary: lots\n").is_err());
}
