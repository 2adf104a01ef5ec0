//! Harness for the integration tests: runs Go fixtures and gomaptrace as real processes and
//! reads the fixture's own ground truth.
//!
//! Nothing here skips: a missing toolchain, binary or privilege fails the test with a
//! message saying what to do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

pub use tracer::gofixture::{build, Flavor};

/// How long any single step (a line of output, an exit) may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The gomaptrace binary under test: `$GOMAPTRACE_BIN` (set by `cargo xtask test`), else
/// the debug build.
pub fn tracer_bin() -> PathBuf {
    let path = std::env::var_os("GOMAPTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| tracer::gofixture::workspace_root().join("target/debug/gomaptrace"));
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Lines a child prints, read on a thread so that every wait has a timeout.
pub struct Lines {
    receiver: Receiver<String>,
    name: String,
}

impl Lines {
    /// Reads `stream` (called `name` in messages) line by line on a thread of its own.
    pub fn spawn(stream: impl std::io::Read + Send + 'static, name: &str) -> Lines {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            receiver,
            name: name.to_string(),
        }
    }

    /// Lines up to and including the first one for which `is_last` holds.
    pub fn until(&self, is_last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.receiver.recv_timeout(STEP_TIMEOUT) {
                Ok(line) => {
                    let last = is_last(&line);
                    seen.push(line);
                    if last {
                        return seen;
                    }
                }
                Err(error) => panic!("{}: {error} while waiting; so far: {seen:#?}", self.name),
            }
        }
    }

    /// Every remaining line, until the stream closes.
    pub fn rest(&self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = self.receiver.recv_timeout(STEP_TIMEOUT) {
            seen.push(line);
        }
        seen
    }
}

/// The maps fixture (`tests/fixtures/maps`), started and waiting for its start signal.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout.
    pub stdout: Lines,
}

impl Fixture {
    /// Starts `binary` and waits until it says `ready`.
    pub fn start(binary: &Path) -> Fixture {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(child.stdout.take().expect("piped"), "fixture stdout");
        stdout.until(|line| line == "ready");
        Fixture {
            child,
            stdin,
            stdout,
        }
    }

    /// Starts the fixture through `command` (a container runtime that relays its stdin and
    /// stdout, e.g. `podman run -i`) and waits until it says `ready`.
    pub fn start_command(command: &mut Command) -> Fixture {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(child.stdout.take().expect("piped"), "fixture stdout");
        stdout.until(|line| line == "ready");
        Fixture {
            child,
            stdin,
            stdout,
        }
    }

    /// The fixture's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the fixture run its map operations; returns everything it printed up to `done`.
    pub fn run_operations(&mut self) -> Vec<String> {
        self.signal();
        self.stdout.until(|line| line == "done")
    }

    /// Sends the start signal without waiting for anything.
    pub fn signal(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"go\n").expect("fixture stdin");
        stdin.flush().expect("fixture stdin");
    }

    /// Closes stdin, which lets the fixture exit, and returns its exit status.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        wait_with_timeout(&mut self.child, "fixture")
    }

    /// Kills the fixture with SIGKILL and reaps it.
    pub fn kill(mut self) -> ExitStatus {
        self.child.kill().expect("kill the fixture");
        wait_with_timeout(&mut self.child, "fixture")
    }
}

/// A running gomaptrace.
pub struct Tracer {
    child: Child,
    /// Its stderr.
    pub stderr: Lines,
    /// Its stdout (the text report).
    pub stdout: Lines,
}

impl Tracer {
    /// Starts gomaptrace with `args` and waits for the `attached` line.
    pub fn attach(args: &[&str]) -> Tracer {
        Tracer::attach_with_env(args, &[])
    }

    /// Starts gomaptrace with `args`.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_with_env(args, &[])
    }

    /// Like [`Tracer::attach`], with extra environment variables (hidden test settings).
    pub fn attach_with_env(args: &[&str], env: &[(&str, &str)]) -> Tracer {
        let tracer = Tracer::start_with_env(args, env);
        let lines = tracer
            .stderr
            .until(|line| line.contains("attached") || line.contains("error"));
        let last = lines.last().expect("at least one line");
        assert!(
            last.contains("attached"),
            "gomaptrace did not attach: {lines:#?}"
        );
        tracer
    }

    /// Starts gomaptrace with `args` and extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Tracer {
        let mut child = Command::new(tracer_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gomaptrace");
        let stderr = Lines::spawn(child.stderr.take().expect("piped"), "gomaptrace stderr");
        let stdout = Lines::spawn(child.stdout.take().expect("piped"), "gomaptrace stdout");
        Tracer {
            child,
            stderr,
            stdout,
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit.
    pub fn interrupt(self) -> (ExitStatus, Vec<String>) {
        // SAFETY: kill with a pid we own and a valid signal number.
        let sent = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(sent, 0, "cannot signal gomaptrace");
        self.wait()
    }

    /// gomaptrace's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills gomaptrace with SIGKILL (no chance to detach anything itself) and reaps it.
    pub fn kill(mut self) -> ExitStatus {
        self.child.kill().expect("kill gomaptrace");
        wait_with_timeout(&mut self.child, "gomaptrace")
    }

    /// Waits for the exit; returns the status and the rest of stderr.
    pub fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = wait_with_timeout(&mut self.child, "gomaptrace");
        (status, self.stderr.rest())
    }
}

/// Waits for `child` (called `name` in messages) to exit, failing the test after
/// [`STEP_TIMEOUT`] rather than hanging it.
pub fn wait_with_timeout(child: &mut Child, name: &str) -> ExitStatus {
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} did not exit within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `map name=… addr=… len=…` line of the fixture: its ground truth for one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    /// Every `key=value` pair of the line.
    pub fields: HashMap<String, String>,
}

impl Truth {
    /// Parses the fixture's `map …` lines.
    pub fn parse(lines: &[String]) -> Vec<Truth> {
        lines
            .iter()
            .filter_map(|line| line.strip_prefix("map "))
            .map(|rest| Truth {
                fields: rest
                    .split_whitespace()
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
            })
            .collect()
    }

    /// A field as text.
    pub fn text(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("fixture line has no {key}: {self:?}"))
    }

    /// A numeric field.
    pub fn number(&self, key: &str) -> u64 {
        self.text(key).parse().expect("a number")
    }
}

/// A ground-truth fixture traced through its map operations.
pub struct GroundTruthRun {
    /// What the fixture printed about its maps.
    pub truths: Vec<Truth>,
    /// gomaptrace's JSON report.
    pub report: serde_json::Value,
    /// How the fixture exited once its stdin closed.
    pub fixture_exit: ExitStatus,
    /// What gomaptrace wrote on stderr after attaching.
    pub stderr: Vec<String>,
}

/// Starts the fixture `binary`, attaches gomaptrace writing its report to `json` (with
/// `extra_args`), lets the fixture run its operations, stops the trace with Ctrl-C and lets
/// the fixture exit: the run every ground-truth test starts with.
///
/// # Panics
/// When gomaptrace fails.
pub fn trace_ground_truth(binary: &Path, json: &Path, extra_args: &[&str]) -> GroundTruthRun {
    let mut fixture = Fixture::start(binary);
    let pid = fixture.pid().to_string();
    let mut args = vec!["--pid", &pid, "--json", json.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra_args);
    let tracer = Tracer::attach(&args);
    let truths = Truth::parse(&fixture.run_operations());
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    GroundTruthRun {
        truths,
        fixture_exit: fixture.finish(),
        report: read_report(json),
        stderr,
    }
}

/// Reads a JSON report.
pub fn read_report(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_slice(&bytes).expect("the report is valid JSON")
}

/// Waits until the interval report gomaptrace rewrites at `path` (`--json` with a short
/// `--interval`) says what `ready` looks for; returns that report.
pub fn wait_for_report(
    path: &Path,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        if path.exists() {
            let report = read_report(path);
            if ready(&report) {
                return report;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no report says: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The report's suspects flagged `verdict` (e.g. `never-released`).
pub fn suspects<'a>(report: &'a serde_json::Value, verdict: &str) -> Vec<&'a serde_json::Value> {
    report["verdicts"]
        .as_array()
        .expect("verdicts array")
        .iter()
        .filter(|suspect| suspect["verdict"] == verdict)
        .collect()
}

/// The report's entry for the map at `addr` that is still alive (not known released).
pub fn map_at<'a>(report: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    report["maps"]
        .as_array()
        .expect("maps array")
        .iter()
        .find(|map| map["addr"] == addr && map["released"] == false)
        .unwrap_or_else(|| panic!("no map at {addr} in the report"))
}

/// Traces the fixture `binary` as [`trace_ground_truth`] does, listing every map and
/// recording the trace, for test `test`; checks that the fixture exited cleanly, that no
/// event was lost, and that a replay of the recording writes the same report.
///
/// # Panics
/// When any of that fails.
pub fn trace_recorded(binary: &Path, test: &str) -> GroundTruthRun {
    let json = report_path(test);
    let recording = json.with_extension("gmt");
    let all_maps = ["--max-maps", "1000000"];
    let mut args = vec!["--record", recording.to_str().expect("utf-8 path")];
    args.extend(all_maps);
    let run = trace_ground_truth(binary, &json, &args);
    assert!(run.fixture_exit.success(), "{:?}", run.fixture_exit);
    assert_eq!(run.report["events"]["lost"], 0);
    // What the trace decided from recorded inputs, a replay decides the same way.
    assert_replays_the_same(&recording, &json, &all_maps);
    run
}

/// Replays `recording` (with `extra_args`) into a JSON report next to `json` and checks that
/// it is `json` byte for byte: what the trace decided from its recorded inputs, a replay
/// decides the same way.
///
/// # Panics
/// When the replay fails or its report differs.
pub fn assert_replays_the_same(recording: &Path, json: &Path, extra_args: &[&str]) {
    let replayed = json.with_extension("replayed.json");
    let replay = Command::new(tracer_bin())
        .arg("replay")
        .arg(recording)
        .arg("--json")
        .arg(&replayed)
        .args(extra_args)
        .output()
        .expect("run gomaptrace replay");
    assert!(replay.status.success(), "{replay:?}");
    assert!(
        std::fs::read(json).expect("the traced report")
            == std::fs::read(&replayed).expect("the replayed report"),
        "{} and {} differ",
        json.display(),
        replayed.display()
    );
}

/// A fresh path for a JSON report under the target directory.
pub fn report_path(test: &str) -> PathBuf {
    let dir = tracer::gofixture::workspace_root().join("target/test-reports");
    std::fs::create_dir_all(&dir).expect("create target/test-reports");
    let path = dir.join(format!("{test}.json"));
    let _ = std::fs::remove_file(&path);
    path
}
