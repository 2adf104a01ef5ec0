//! Launch mode: `gomaptrace [OPTIONS] -- PROGRAM [ARGS...]` starts the program with every
//! probe already live, so maps made in `init()` and in package-level initialisers are seen
//! created, with their sites. The program's stdin, stdout and exit status pass through
//! untouched; the report goes to stderr. Failures before the program runs are one line and
//! leave no process behind.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::io::{Read as _, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use integration_tests::{
    build, read_report, report_path, tracer_bin, wait_with_timeout, Flavor, Lines, Truth,
};
use serde_json::Value;
use tracer::gofixture::released_go_program;

/// What the tests type into the program; `report` makes it print its ground truth.
const INPUT: &str = "alpha\nbeta gamma\nδ, not ASCII\nreport\n";

/// How many lines of [`INPUT`] the program stores before `report`.
const INPUT_LINES: u64 = 3;

/// The exit code the program is asked to exit with.
const EXIT_CODE: &str = "7";

/// The maps the fixture makes before `main`, and the function each is made in.
const INIT_MAPS: [(&str, &str); 4] = [
    ("registry", "main.init"),
    ("index", "main.newIndex"),
    ("lines", "main.init.0"),
    ("hinted", "main.init.1"),
];

/// gomaptrace running in launch mode, its program's stdin held open.
struct Launch {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
}

impl Launch {
    /// Starts `gomaptrace args…` (in a process group of its own when `own_group`, as a shell
    /// puts a foreground job) and types [`INPUT`] into the program.
    fn start(args: &[&str], own_group: bool) -> Launch {
        let mut command = Command::new(tracer_bin());
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            command.process_group(0);
            // A shell starts a foreground job with Ctrl-C at its default, even when the shell
            // itself was started with it ignored (a background job of a script, as CI may
            // run this test); an ignored SIGINT would pass on to the program and keep it
            // alive.
            // SAFETY: signal() is async-signal-safe; nothing else runs in the child here.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_DFL);
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("start gomaptrace");
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(INPUT.as_bytes()).expect("program stdin");
        stdin.flush().expect("program stdin");
        Launch {
            stdout: Lines::spawn(child.stdout.take().expect("piped"), "program stdout"),
            stderr: Lines::spawn(child.stderr.take().expect("piped"), "gomaptrace stderr"),
            stdin: Some(stdin),
            child,
        }
    }

    /// The program's stdout up to its ground truth's last line.
    fn ground_truth(&self) -> Vec<String> {
        self.stdout.until(|line| line == "initmaps: end of report")
    }

    /// Closes the program's stdin, which lets it exit, and waits for gomaptrace; returns its
    /// status, the rest of its stderr and the rest of the program's stdout.
    fn finish(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        drop(self.stdin.take());
        let status = wait_with_timeout(&mut self.child, "gomaptrace");
        (status, self.stderr.rest(), self.stdout.rest())
    }
}

/// Runs the fixture untraced with the same arguments and input: its status and stdout.
fn untraced(binary: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(binary)
        .arg(EXIT_CODE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fixture");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(INPUT.as_bytes()).expect("fixture stdin");
    drop(stdin);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)
        .expect("fixture stdout");
    (wait_with_timeout(&mut child, "fixture"), stdout)
}

/// `text` with every map address replaced: the only bytes that differ between two runs.
fn without_addresses(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            line.split(' ')
                .map(|word| match word.strip_prefix("addr=") {
                    Some(_) => "addr=ADDR",
                    None => word,
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The report's entry for the fixture map `truth` describes.
fn reported<'a>(report: &'a Value, truth: &Truth) -> &'a Value {
    let addr = truth.text("addr");
    let mut found = report["maps"]
        .as_array()
        .expect("maps array")
        .iter()
        .filter(|map| map["addr"] == addr && map["created"] == true);
    let map = found
        .next()
        .unwrap_or_else(|| panic!("no created map at {addr} in the report: {truth:?}"));
    assert!(found.next().is_none(), "two maps created at {addr}");
    map
}

/// Every map the fixture made before `main` is in the report as created, at the line and
/// in the function that made it.
fn assert_init_maps_created(report: &Value, truths: &[Truth]) {
    assert_eq!(truths.len(), INIT_MAPS.len(), "{truths:#?}");
    for (name, function) in INIT_MAPS {
        let truth = truths
            .iter()
            .find(|truth| truth.text("name") == name)
            .unwrap_or_else(|| panic!("the fixture printed no map {name}"));
        let map = reported(report, truth);
        assert_eq!(map["site"]["function"], function, "{name}: {map:#}");
        assert_eq!(map["site"]["line"], truth.number("line"), "{name}: {map:#}");
        assert_eq!(map["unexplained"], 0, "{name}: {map:#}");
    }
}

/// Launches the fixture built by Go `version` as `flavor` with a 5 s window: the report comes
/// while the program still waits for the end of its input, so every count is settled from its
/// memory and must equal the program's own `len`. Then the program exits with its code.
fn launch_sees_init_maps(version: &str, flavor: Flavor, env: &[(&str, &str)]) {
    let binary = build("initmaps", version, flavor, env);
    let env_tag: String = env
        .iter()
        .map(|(key, value)| format!("-{key}={value}"))
        .collect();
    let json = report_path(&format!("launch-{version}-{flavor:?}{env_tag}"));
    let program = binary.to_str().expect("utf-8 path");
    let launch = Launch::start(
        &[
            "--json",
            json.to_str().expect("utf-8 path"),
            "--duration",
            "5s",
            "--",
            program,
            EXIT_CODE,
        ],
        false,
    );
    let mut stdout = launch.ground_truth();
    let stderr = launch.stderr.until(|line| line.starts_with("lost events"));
    let (status, rest, tail) = launch.finish();
    assert_eq!(status.code(), Some(7), "{stderr:#?} {rest:#?}");
    assert!(
        stderr
            .iter()
            .chain(&rest)
            .all(|line| !line.contains("error")),
        "{stderr:#?} {rest:#?}"
    );
    stdout.extend(tail);

    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], false, "the window ended first");
    assert_eq!(report["events"]["lost"], 0);
    // Armed before the exec: nothing the program does can come before it.
    assert_eq!(report["events"]["before_arming"], 0);
    let truths = Truth::parse(&stdout);
    assert_init_maps_created(&report, &truths);
    for truth in &truths {
        let map = reported(&report, truth);
        assert_eq!(map["live"], truth.number("len"), "{truth:?}: {map:#}");
        assert_eq!(map["unsettled"], 0, "{truth:?}: {map:#}");
        assert_eq!(map["released"], false, "{truth:?}: {map:#}");
    }
    let lines = truths.iter().find(|truth| truth.text("name") == "lines");
    assert_eq!(
        lines.map(|truth| truth.number("len")),
        Some(INPUT_LINES),
        "stdin reached the program"
    );

    let (untraced_status, untraced_stdout) = untraced(&binary);
    assert_eq!(untraced_status.code(), Some(7));
    let traced_stdout = stdout.join("\n") + "\n";
    assert_eq!(
        without_addresses(&traced_stdout),
        without_addresses(&untraced_stdout),
        "the program's stdout passes through unchanged"
    );
    assert!(
        traced_stdout.contains("stdin 2: δ, not ASCII\n"),
        "{traced_stdout}"
    );
    assert_eq!(
        traced_stdout.contains("cgo answer: 3\n"),
        env.contains(&("CGO_ENABLED", "1")),
        "a cgo build runs its C code, others have none: {traced_stdout}"
    );
}

#[test]
fn launched_go1_19_has_its_init_maps() {
    launch_sees_init_maps("1.19", Flavor::Plain, &[]);
}

#[test]
fn launched_go1_21_has_its_init_maps() {
    launch_sees_init_maps("1.21.13", Flavor::Plain, &[]);
}

#[test]
fn launched_go1_24_has_its_init_maps() {
    launch_sees_init_maps("1.24.11", Flavor::Plain, &[]);
}

#[test]
fn launched_go1_27_has_its_init_maps() {
    launch_sees_init_maps("1.27.3", Flavor::Plain, &[]);
}

#[test]
fn launched_pie_has_its_init_maps() {
    launch_sees_init_maps("1.24.11", Flavor::Pie, &[]);
}

/// Externally linked by the C toolchain, started by the dynamic loader.
#[test]
fn launched_cgo_pie_has_its_init_maps() {
    launch_sees_init_maps("1.27.3", Flavor::Pie, &[("CGO_ENABLED", "1")]);
}

#[test]
fn launched_stripped_go1_21_has_its_init_maps() {
    launch_sees_init_maps("1.21.13", Flavor::Stripped, &[]);
}

/// Without `--duration`, the trace lasts as long as the program: it ends when the program
/// exits, and gomaptrace exits with the program's code.
#[test]
fn the_trace_ends_with_the_program_and_keeps_its_exit_code() {
    let binary = build("initmaps", "1.27.3", Flavor::Plain, &[]);
    let json = report_path("launch-to-exit");
    let launch = Launch::start(
        &[
            "--json",
            json.to_str().expect("utf-8 path"),
            "--",
            binary.to_str().expect("utf-8 path"),
            EXIT_CODE,
        ],
        false,
    );
    let stdout = launch.ground_truth();
    let (status, stderr, _) = launch.finish();
    assert_eq!(status.code(), Some(7), "{stderr:#?}");
    assert!(
        stderr.iter().any(|line| line.starts_with("lost events")),
        "the text report is on stderr: {stderr:#?}"
    );
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true);
    assert_init_maps_created(&report, &Truth::parse(&stdout));
}

/// A program that runs for a few milliseconds (its input is empty) is still read before its
/// first instruction: a PIE's load bias, taken from its memory map, places every creation
/// site at the right line although the program is gone long before the report.
#[test]
fn a_pie_that_exits_at_once_still_has_its_init_maps() {
    let binary = build("initmaps", "1.24.11", Flavor::Pie, &[]);
    let json = report_path("launch-exits-at-once");
    let output = Command::new(tracer_bin())
        .args(["--json", json.to_str().expect("utf-8 path"), "--"])
        .arg(&binary)
        .arg(EXIT_CODE)
        .stdin(Stdio::null())
        .output()
        .expect("run gomaptrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    let stdout: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true);
    assert_init_maps_created(&report, &Truth::parse(&stdout));
}

/// When gomaptrace fails once the program runs (here: the JSON report cannot be written at
/// the end of the window), the error is printed at once, and gomaptrace still waits for the
/// program, which carries on undisturbed, before it exits with status 1.
#[test]
fn an_error_once_the_program_runs_is_printed_and_the_program_waited_for() {
    let binary = build("initmaps", "1.24.11", Flavor::Plain, &[]);
    // Writable when gomaptrace starts (it checks before attaching), gone by the time the
    // report is written, after the program ran.
    let dir = report_path("launch-unwritable");
    std::fs::create_dir_all(&dir).expect("create the report's directory");
    let json = dir.join("report.json");
    let mut launch = Launch::start(
        &[
            "--json",
            json.to_str().expect("utf-8 path"),
            "--duration",
            "1s",
            "--",
            binary.to_str().expect("utf-8 path"),
            EXIT_CODE,
        ],
        false,
    );
    let stdout = launch.ground_truth();
    std::fs::remove_dir_all(&dir).expect("remove the report's directory");
    let stderr = launch
        .stderr
        .until(|line| line.starts_with("gomaptrace: error: "));
    assert!(
        stderr
            .last()
            .is_some_and(|line| line.contains("cannot write")),
        "{stderr:#?}"
    );
    assert_eq!(
        launch.child.try_wait().expect("wait"),
        None,
        "gomaptrace waits for the program"
    );
    let (status, rest, _) = launch.finish();
    assert_eq!(status.code(), Some(1), "{rest:#?}");
    assert!(rest.is_empty(), "{rest:#?}");
    assert_eq!(Truth::parse(&stdout).len(), INIT_MAPS.len());
}

/// Runs `program args…` with [`INPUT`] and a stdout nobody reads (closed before it writes):
/// its exit status.
fn with_stdout_closed(program: &Path, args: &[&str]) -> ExitStatus {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(INPUT.as_bytes()).expect("stdin");
    drop(stdin);
    wait_with_timeout(&mut child, "program")
}

/// A program writing to a stdout nobody reads dies of SIGPIPE as it does untraced, and
/// gomaptrace reports that death as a shell does. (gomaptrace, like every Rust program,
/// ignores SIGPIPE and restores the default before exec; the Go runtime installs its own
/// handler either way, so this checks the outcome, not that restoration.)
#[test]
fn a_launched_program_dies_of_sigpipe_as_it_does_untraced() {
    let binary = build("initmaps", "1.24.11", Flavor::Plain, &[]);
    let untraced = with_stdout_closed(&binary, &[EXIT_CODE]);
    assert_eq!(untraced.signal(), Some(libc::SIGPIPE), "{untraced}");
    let program = binary.to_str().expect("utf-8 path");
    let traced = with_stdout_closed(&tracer_bin(), &["--", program, EXIT_CODE]);
    assert_eq!(traced.code(), Some(128 + libc::SIGPIPE), "{traced}");
}

/// Ctrl-C reaches the whole foreground process group: the program dies of it as it would
/// untraced, gomaptrace outlives it, reports, and exits as a shell reports a death by SIGINT.
#[test]
fn ctrl_c_stops_the_program_and_gomaptrace_reports() {
    let binary = build("initmaps", "1.24.11", Flavor::Plain, &[]);
    let json = report_path("launch-ctrl-c");
    let launch = Launch::start(
        &[
            "--json",
            json.to_str().expect("utf-8 path"),
            "--",
            binary.to_str().expect("utf-8 path"),
            EXIT_CODE,
        ],
        true,
    );
    let stdout = launch.ground_truth();
    // SAFETY: kill with a process group we created and a valid signal number.
    let sent = unsafe { libc::kill(-(launch.child.id() as i32), libc::SIGINT) };
    assert_eq!(sent, 0, "cannot signal the process group");
    // As for SIGTERM: the input ends only once the program is gone, or it could exit on its
    // own (status 7) before its runtime acted on the signal.
    let mut stderr = launch.stderr.until(|line| line.starts_with("lost events"));
    let (status, rest, _) = launch.finish();
    stderr.extend(rest);
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{stderr:#?}");
    assert!(
        stderr.iter().all(|line| !line.contains("error")),
        "{stderr:#?}"
    );
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true);
    assert_init_maps_created(&report, &Truth::parse(&stdout));
}

/// SIGTERM sent to gomaptrace alone (by a supervisor, `timeout`, `kill`) is passed on to the
/// program, which dies of it as it would untraced; gomaptrace reports and exits as a shell
/// reports a death by SIGTERM.
#[test]
fn sigterm_is_passed_on_to_the_program() {
    let binary = build("initmaps", "1.21.13", Flavor::Plain, &[]);
    let json = report_path("launch-sigterm");
    let launch = Launch::start(
        &[
            "--json",
            json.to_str().expect("utf-8 path"),
            "--",
            binary.to_str().expect("utf-8 path"),
            EXIT_CODE,
        ],
        false,
    );
    let stdout = launch.ground_truth();
    // SAFETY: kill with a pid we own and a valid signal number.
    let sent = unsafe { libc::kill(launch.child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0, "cannot signal gomaptrace");
    // The report comes once the program is gone; only then may its input end, or it could
    // exit on its own first.
    let mut stderr = launch.stderr.until(|line| line.starts_with("lost events"));
    let (status, rest, _) = launch.finish();
    stderr.extend(rest);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr:#?}");
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true);
    assert_init_maps_created(&report, &Truth::parse(&stdout));
}

/// Runs gomaptrace to completion with no input: (exit code, stderr lines).
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

/// Launches `program` with one argument that names this run, expects one error line
/// containing `expected`, and checks that no process with that argument is left: neither
/// the forked child waiting to exec nor the program.
fn assert_launch_refused(wrapper: &[&str], program: &str, expected: &str) {
    let marker = format!(
        "gomaptrace-launch-test-{}-{}",
        std::process::id(),
        line_id()
    );
    let mut command = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(tracer_bin());
            command
        }
        None => Command::new(tracer_bin()),
    };
    let (code, stderr) = run_tracer(command.args(["--", program, &marker]));
    assert_eq!(code, Some(1), "{stderr:#?}");
    assert_eq!(stderr.len(), 1, "exactly one line: {stderr:#?}");
    assert!(
        stderr[0].starts_with("gomaptrace: error: ") && stderr[0].contains(expected),
        "expected `{expected}` in {stderr:#?}"
    );
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&marker))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// A number unique to each call in this test process.
fn line_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn launching_a_program_that_is_not_go_is_refused() {
    assert_launch_refused(&[], "/bin/true", "not a Go program");
}

#[test]
fn launching_a_go_release_before_the_register_abi_is_refused() {
    let esbuild = released_go_program("0.11.23", "amd64");
    assert_launch_refused(
        &[],
        esbuild.to_str().expect("utf-8 path"),
        "go1.16.3 uses the stack-based ABI",
    );
}

#[test]
fn launching_without_privileges_says_to_use_sudo() {
    assert_launch_refused(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        "/bin/true",
        "sudo",
    );
}

#[test]
fn launching_a_missing_program_is_one_line() {
    assert_launch_refused(
        &[],
        "/nonexistent/gomaptrace-no-such-program",
        "cannot run /nonexistent/gomaptrace-no-such-program: no such file",
    );
    assert_launch_refused(
        &[],
        "gomaptrace-no-such-program",
        "cannot run gomaptrace-no-such-program: not found in PATH",
    );
}

#[test]
fn launching_a_file_that_is_not_executable_is_one_line() {
    let path = report_path("not-executable");
    std::fs::write(&path, "not a program\n").expect("write the file");
    let program = path.to_str().expect("utf-8 path");
    assert_launch_refused(&[], program, "not an executable file");
}

#[test]
fn pid_and_program_are_exclusive() {
    let (code, stderr) =
        run_tracer(Command::new(tracer_bin()).args(["--pid", "1", "--", "/bin/true"]));
    assert_eq!(code, Some(2), "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("cannot be used with")),
        "{stderr:#?}"
    );
    let (code, stderr) = run_tracer(&mut Command::new(tracer_bin()));
    assert_eq!(code, Some(2), "neither: {stderr:#?}");
}
