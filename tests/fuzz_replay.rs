//! The fuzz corpora, replayed by an ordinary `cargo test`: every file of
//! `fuzz/corpus/<target>/` goes through the same function its `cargo fuzz`
//! target runs (`fuzz/fuzz_targets/common/`, compiled here too), so the
//! stable CI checks every input the fuzzers kept, including the crashers
//! of bugs since fixed.
//!
//! Inputs that still make a target fail, because of a bug reported but not
//! yet fixed, are listed in [`KNOWN_FAILURES`]: each must keep failing
//! (when its fix lands, the replay says so and the entry goes).
//!
//! The `seed-*` files are made by the real encoders:
//! `cargo test -p isocall --release --test fuzz_replay -- --ignored regenerate_seeds`
//! rewrites them (the files the fuzzers found, named by their hash, stay).

#[path = "../fuzz/fuzz_targets/common/mod.rs"]
mod common;
#[path = "fuzz_replay/seeds.rs"]
mod seeds;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::TARGETS;

/// A corpus file that makes its target fail today: a bug reported and not
/// yet fixed.
struct KnownFailure {
    target: &'static str,
    file: &'static str,
    /// It fails only where arithmetic overflow panics (debug builds, the
    /// fuzzers' builds); a release build wraps and passes.
    overflow_checks_only: bool,
    /// What is wrong.
    bug: &'static str,
}

/// The inputs of known bugs, whose replay must fail (where it can: see
/// `overflow_checks_only`). One that passes means the bug is fixed: remove
/// its entry, and its guard in `fuzz/fuzz_targets/common/` (`known_bug`).
const KNOWN_FAILURES: &[KnownFailure] = &[];

/// Whether this build panics on arithmetic overflow (the known failures
/// marked `overflow_checks_only` fail only then): Cargo's profiles turn
/// overflow checks on and off with debug assertions.
fn overflow_checks() -> bool {
    cfg!(debug_assertions)
}

/// Largest corpus file kept (the fuzzers' inputs are small).
const MAX_INPUT: u64 = 64 << 10;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_file_replays() {
    let mut unexpected = Vec::new();
    let mut fixed = Vec::new();
    let overflow_checks = overflow_checks();
    for (target, run) in TARGETS {
        let files = files(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes.len() as u64 <= MAX_INPUT,
                "{target}/{name}: {} bytes, keep corpus files small",
                bytes.len()
            );
            let known = KNOWN_FAILURES
                .iter()
                .find(|k| k.target == *target && k.file == name);
            let failed = catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err();
            let must_fail = known.is_some_and(|k| overflow_checks || !k.overflow_checks_only);
            match (failed, known) {
                (true, None) => unexpected.push(format!("{target}/{name}")),
                (true, Some(k)) => eprintln!("{target}/{name} fails, a known bug: {}", k.bug),
                (false, Some(_)) if must_fail => fixed.push(format!("{target}/{name}")),
                _ => {}
            }
        }
    }
    for k in KNOWN_FAILURES {
        assert!(
            corpus(k.target).join(k.file).is_file(),
            "known failure {}/{} missing",
            k.target,
            k.file
        );
    }
    assert!(
        unexpected.is_empty(),
        "fuzz inputs fail (see the panics above): {unexpected:?}"
    );
    assert!(
        fixed.is_empty(),
        "known failures now pass, remove them from KNOWN_FAILURES: {fixed:?}"
    );
}

/// Writes the seed corpora (`seed-*` files) with the real encoders.
#[test]
#[ignore = "rewrites fuzz/corpus/*/seed-*; run by hand"]
fn regenerate_seeds() {
    for (target, seeds) in seeds::all() {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for old in files(target) {
            if old
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                std::fs::remove_file(old).unwrap();
            }
        }
        for (name, bytes) in seeds {
            // Every seed passes its target (a failing one is a bug to report).
            let run = TARGETS.iter().find(|(t, _)| *t == target).unwrap().1;
            run(&bytes);
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}
