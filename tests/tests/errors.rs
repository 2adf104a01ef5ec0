//! Bad input gets one clear line on stderr and a non-zero exit, never a panic; a target that
//! exits mid-trace still gets a report.

use std::process::{Command, Stdio};

use integration_tests::{build, read_report, report_path, tracer_bin, Fixture, Flavor, Tracer};
use tracer::gofixture::released_go_program;

/// Runs gomaptrace to completion and returns (exit code, stderr lines).
fn run_tracer(command: &mut Command) -> (Option<i32>, Vec<String>) {
    let output = command
        .stdout(Stdio::null())
        .output()
        .expect("run gomaptrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code(),
        stderr.lines().map(str::to_string).collect(),
    )
}

fn assert_one_line_error(code: Option<i32>, stderr: &[String], expected: &str) {
    assert_eq!(code, Some(1), "{stderr:#?}");
    assert_eq!(stderr.len(), 1, "exactly one line: {stderr:#?}");
    assert!(
        stderr[0].starts_with("gomaptrace: error: ") && stderr[0].contains(expected),
        "expected `{expected}` in {stderr:#?}"
    );
}

#[test]
fn a_missing_pid_is_one_line() {
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args(["--pid", "4194304"]));
    assert_one_line_error(code, &stderr, "no process with pid 4194304");
}

/// Runs `tracer` against a process that is not Go (`sleep`), which it gets as its pid.
fn against_a_sleeper(tracer: impl FnOnce(&str) -> Command) -> (Option<i32>, Vec<String>) {
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let result = run_tracer(&mut tracer(&sleeper.id().to_string()));
    sleeper.kill().expect("stop sleep");
    let _ = sleeper.wait();
    result
}

/// A real Go 1.16 program (esbuild 0.11.23, go1.16.3, waiting on its stdin): its functions
/// take arguments on the stack, where no probe of gomaptrace looks.
#[test]
fn a_go_release_before_the_register_abi_is_refused() {
    let esbuild = released_go_program("0.11.23", "amd64");
    let mut target = Command::new(&esbuild)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start esbuild");
    let (code, stderr) =
        run_tracer(Command::new(tracer_bin()).args(["--pid", &target.id().to_string()]));
    drop(target.stdin.take());
    let status = target.wait().expect("esbuild exits once its stdin closes");
    assert_one_line_error(code, &stderr, "go1.16.3 uses the stack-based ABI");
    assert!(stderr[0].contains("needs Go 1.17 or newer"), "{stderr:#?}");
    assert!(status.success(), "esbuild was disturbed: {status}");
}

#[test]
fn a_program_that_is_not_go_is_refused() {
    let (code, stderr) = against_a_sleeper(|pid| {
        let mut command = Command::new(tracer_bin());
        command.args(["--pid", pid]);
        command
    });
    assert_one_line_error(code, &stderr, "not a Go program");
}

#[test]
fn without_privileges_it_says_to_use_sudo() {
    // setpriv (util-linux) drops to an unprivileged user with no capabilities.
    let (code, stderr) = against_a_sleeper(|pid| {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(tracer_bin())
            .args(["--pid", pid]);
        command
    });
    assert_one_line_error(code, &stderr, "sudo");
}

#[test]
fn a_bad_duration_is_a_usage_error() {
    let (code, stderr) =
        run_tracer(Command::new(tracer_bin()).args(["--pid", "1", "--duration", "soon"]));
    assert_eq!(code, Some(2), "{stderr:#?}");
    assert!(
        stderr.iter().any(|line| line.contains("not a duration")),
        "{stderr:#?}"
    );
}

#[test]
fn an_unwritable_json_path_fails_without_a_partial_file() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let json = report_path("unwritable").join("report.json");
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args([
        "--pid",
        &pid,
        "--duration",
        "200ms",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]));
    fixture.finish();
    assert_eq!(code, Some(1), "{stderr:#?}");
    assert!(
        stderr
            .last()
            .is_some_and(|line| line.contains("cannot write")),
        "{stderr:#?}"
    );
    assert!(!json.exists());
}

#[test]
fn a_target_that_exits_mid_trace_still_gets_its_report() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let json = report_path("exits_mid_trace");
    let tracer = Tracer::attach(&["--pid", &pid, "--json", json.to_str().expect("utf-8 path")]);
    fixture.signal();
    let status = fixture.finish();
    assert_eq!(status.code(), Some(3));
    let (status, stderr) = tracer.wait();
    assert!(status.success(), "{stderr:#?}");
    assert!(
        stderr.iter().any(|line| line.contains("exited")),
        "{stderr:#?}"
    );
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true);
    assert!(report["events"]["received"].as_u64() > Some(1000));
}

#[test]
fn replaying_something_that_is_not_a_recording_is_one_line() {
    let not_a_recording = report_path("not_a_recording");
    std::fs::write(&not_a_recording, b"{}").unwrap();
    let (code, stderr) = run_tracer(
        Command::new(tracer_bin())
            .arg("replay")
            .arg(&not_a_recording),
    );
    assert_one_line_error(code, &stderr, "not a gomaptrace recording");
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args(["replay", "/nonexistent"]));
    assert_one_line_error(code, &stderr, "/nonexistent");
}

#[test]
fn an_unwritable_recording_path_fails_before_attaching() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let fixture = Fixture::start(&binary);
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args([
        "--pid",
        &fixture.pid().to_string(),
        "--record",
        "/nonexistent/dir/trace.gmt",
    ]));
    assert_one_line_error(code, &stderr, "/nonexistent/dir/trace.gmt");
    fixture.finish();
}
