//! The examples are real programs: run each one (cargo test builds them) and
//! check that it succeeds and says what it did.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example {name} not built at {}",
        path.display()
    );
    path
}

#[test]
fn pingpong_runs_and_checks_every_reply() {
    for mode in ["adaptive", "blocking"] {
        let out = Command::new(example("pingpong"))
            .arg(mode)
            .output()
            .expect("run pingpong");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pingpong {mode} failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("100000 round trips"), "{stdout}");
        assert!(stdout.contains("every reply checked"), "{stdout}");
    }
}

#[test]
fn pingpong_refuses_an_unknown_mode() {
    let out = Command::new(example("pingpong"))
        .arg("sideways")
        .output()
        .expect("run pingpong");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode"));
}

#[test]
fn snprintf_formats_a_million_strings_in_another_process() {
    let out = Command::new(example("snprintf"))
        .output()
        .expect("run snprintf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "snprintf failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1000000 strings formatted in another process, every one checked"),
        "{stdout}"
    );
}

#[test]
fn snprintf_crashy_gets_every_answer_from_a_service_that_keeps_crashing() {
    let out = Command::new(example("snprintf_crashy"))
        .output()
        .expect("run snprintf_crashy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "snprintf_crashy failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("100000 of 100000 strings formatted right"),
        "{stdout}"
    );
    // About one call in forty crashed the service: thousands of crashes.
    let crashes: u64 = stdout
        .split("crashed ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no crash count in {stdout}"));
    assert!(crashes > 1000, "{stdout}");
    assert!(stdout.contains("calls/s") && stdout.contains("mean recovery"));
}

#[test]
fn pipeline_streams_frames_through_three_processes_and_a_monitor() {
    let out = Command::new(example("pipeline"))
        .arg("20000")
        .output()
        .expect("run pipeline");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pipeline failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sink: 20000 frames in") && stdout.contains("every frame checked"),
        "{stdout}"
    );
    for stage in [
        "source: 20000 frames",
        "transform: 20000 frames",
        "monitor: ",
    ] {
        assert!(stdout.contains(stage), "{stage}: {stdout}");
    }
    assert!(stdout.contains("frames/s") && stdout.contains("dropped by its drop-oldest"));
}

#[test]
fn pipeline_runs_unchanged_over_a_unix_stream_and_tcp() {
    for net in ["unix-stream", "tcp"] {
        let out = Command::new(example("pipeline"))
            .args(["5000", net])
            .output()
            .expect("run pipeline");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pipeline over {net} failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("sink: 5000 frames in")
                && stdout.contains("every frame checked")
                && stdout.contains(&format!("over {net}")),
            "{stdout}"
        );
    }
}
