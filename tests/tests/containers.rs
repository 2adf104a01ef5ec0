//! gomaptrace against Go programs in real containers: podman (with runc underneath) and a
//! plain `runc run` bundle. Named by container name, by id prefix or by host pid, every count
//! must equal the fixture's own tally and the report must say which container it ran in.
//!
//! These tests need root, podman and runc (`cargo xtask setup` installs them) and fail, never
//! skip, without them. Every container and image is removed when its guard drops, also when a
//! test fails; names carry the test's name and pid so that tests never share one.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    build, map_at, read_report, report_path, tracer_bin, Fixture, Flavor, Tracer, Truth,
};

/// The Go release the fixture is built with (statically: `CGO_ENABLED=0`).
const GO: &str = "1.24.11";

/// Maps the fixture tallies when built with [`GO`].
const FIXTURE_MAPS: usize = 16;

/// A name no other test (or run) uses.
fn unique(test: &str) -> String {
    format!("gmt-{test}-{}", std::process::id())
}

/// 64 hex digits, unique to `seed`, this run and this instant.
fn hex_id(seed: &str) -> String {
    (0..4u64)
        .map(|part| {
            let mut hasher = DefaultHasher::new();
            (seed, part, std::process::id(), Instant::now()).hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

/// A scratch directory under the target directory, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = tracer::gofixture::workspace_root()
        .join("target/tmp/containers")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Runs `command`; its stdout, or a failed test quoting its stderr.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {command:?}: {error} (run `cargo xtask setup`)")
        });
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The hard limit on open files: root here lacks CAP_SYS_RESOURCE, so podman may not raise
/// a container's limit above it.
fn hard_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and a valid out-pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_max
}

/// The static maps fixture in an image `FROM scratch`, built locally; removed on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build(test: &str) -> Image {
        let name = unique(test);
        let dir = scratch(&name);
        let binary = build("maps", GO, Flavor::Plain, &[]);
        std::fs::copy(&binary, dir.join("maps")).expect("copy the fixture");
        std::fs::write(
            dir.join("Containerfile"),
            "FROM scratch\nCOPY maps /maps\nENTRYPOINT [\"/maps\"]\n",
        )
        .expect("write the Containerfile");
        let tag = format!("localhost/{name}:latest");
        run_ok(
            Command::new("podman")
                .args(["build", "-q", "-t", &tag])
                .arg(&dir),
        );
        let _ = std::fs::remove_dir_all(&dir);
        Image { tag }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// The maps fixture running in a podman container (runtime runc); removed on drop.
struct Podman {
    name: String,
    fixture: Option<Fixture>,
}

impl Podman {
    fn run(image: &Image, name: &str) -> Podman {
        let nofile = hard_nofile();
        let mut command = Command::new("podman");
        command
            .args(["run", "-i", "--rm", "--name", name, "--runtime", "runc"])
            .args([
                "--network=none",
                "--ulimit",
                &format!("nofile={nofile}:{nofile}"),
            ])
            .args(["--ulimit", "nproc=32768:32768", &image.tag]);
        let mut guard = Podman {
            name: name.to_string(),
            fixture: None,
        };
        guard.fixture = Some(Fixture::start_command(&mut command));
        guard
    }

    fn inspect(&self, format: &str) -> String {
        run_ok(Command::new("podman").args(["inspect", "--format", format, &self.name]))
    }

    fn fixture(&mut self) -> &mut Fixture {
        self.fixture.as_mut().expect("running")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

/// A plain `runc run` container from a hand-made bundle (terminal off, stdin piped);
/// killed, deleted and its bundle removed on drop.
struct Runc {
    id: String,
    bundle: PathBuf,
    fixture: Option<Fixture>,
    child: Option<Child>,
}

impl Runc {
    /// A bundle whose root holds `program` as `/program`, run read-only.
    fn bundle(id: &str, program: &Path) -> PathBuf {
        let bundle = scratch(id);
        std::fs::create_dir_all(bundle.join("rootfs")).expect("create rootfs");
        std::fs::copy(program, bundle.join("rootfs/program")).expect("copy the program");
        run_ok(
            Command::new("runc")
                .arg("spec")
                .arg("--bundle")
                .arg(&bundle),
        );
        let path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read config.json"))
                .expect("runc spec writes JSON");
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["/program"]);
        config["process"]["rlimits"] = serde_json::json!([]);
        config["root"]["readonly"] = true.into();
        std::fs::write(&path, config.to_string()).expect("write config.json");
        bundle
    }

    fn command(id: &str, bundle: &Path) -> Command {
        let mut command = Command::new("runc");
        command.arg("run").arg("--bundle").arg(bundle).arg(id);
        command
    }

    /// The maps fixture in a runc container called `id`.
    fn maps(id: &str) -> Runc {
        let bundle = Runc::bundle(id, &build("maps", GO, Flavor::Plain, &[]));
        let mut guard = Runc {
            id: id.to_string(),
            bundle: bundle.clone(),
            fixture: None,
            child: None,
        };
        guard.fixture = Some(Fixture::start_command(&mut Runc::command(id, &bundle)));
        guard
    }

    /// A static C program that only sleeps, in a runc container called `id`.
    fn sleeper(id: &str, program: &Path) -> Runc {
        let bundle = Runc::bundle(id, program);
        let child = Runc::command(id, &bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start runc");
        let guard = Runc {
            id: id.to_string(),
            bundle,
            fixture: None,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while guard.state("status") != "running" {
            assert!(
                Instant::now() < deadline,
                "runc container {id} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        guard
    }

    fn state(&self, field: &str) -> String {
        let output = Command::new("runc")
            .args(["state", &self.id])
            .output()
            .expect("run runc state");
        let state: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        match &state[field] {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }

    fn fixture(&mut self) -> &mut Fixture {
        self.fixture.as_mut().expect("running")
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["kill", &self.id, "KILL"])
            .output();
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// A statically linked C program that sleeps forever: a container process that is not Go.
fn static_sleeper(test: &str) -> PathBuf {
    let dir = scratch(&format!("{}-sleeper", unique(test)));
    let source = dir.join("sleeper.c");
    std::fs::write(
        &source,
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )
    .expect("write sleeper.c");
    let binary = dir.join("sleeper");
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&binary)
            .arg(&source),
    );
    binary
}

/// What the container's report must say.
struct Expected<'a> {
    id: &'a str,
    name: &'a str,
    runtime: &'a str,
}

/// Traces `fixture` with `args`, and checks every count against its tally and that the JSON
/// and the text report (replayed from a recording) name the container.
fn trace_in_container(fixture: &mut Fixture, args: &[&str], test: &str, expected: &Expected) {
    let json = report_path(test);
    let record = json.with_extension("rec");
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap(), "--record"]);
    all.push(record.to_str().unwrap());
    let tracer = Tracer::attach(&all);
    let truths = Truth::parse(&fixture.run_operations());
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    let report = read_report(&json);

    let target = &report["target"];
    assert_eq!(target["exe"], format!("/{}", exe_name(expected)));
    assert_eq!(target["ns_pid"], 1, "{target}");
    assert_eq!(target["container"]["id"], expected.id, "{target}");
    assert_eq!(target["container"]["name"], expected.name, "{target}");
    assert_eq!(target["container"]["runtime"], expected.runtime, "{target}");
    assert!(
        target["container"]["cgroup"]
            .as_str()
            .is_some_and(|cgroup| cgroup.contains(expected.id)),
        "{target}"
    );

    counts_match(&report, &truths);

    let text = run_ok(Command::new(tracer_bin()).arg("replay").arg(&record));
    let first = text.lines().next().unwrap_or_default();
    let hex = expected.id.len() == 64;
    let short = if hex { &expected.id[..12] } else { expected.id };
    let label = if expected.name == expected.id {
        short.to_string()
    } else {
        format!("{} ({short})", expected.name)
    };
    let named = format!("in {} container {label}, pid 1 inside", expected.runtime);
    assert!(first.contains(&named), "`{named}` in {first}");
}

/// Every map the fixture tallied is in `report` with exactly its counts.
fn counts_match(report: &serde_json::Value, truths: &[Truth]) {
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(truths.len(), FIXTURE_MAPS, "{truths:#?}");
    for truth in truths {
        let map = map_at(report, truth.text("addr"));
        let name = truth.text("name");
        assert_eq!(map["live"], truth.number("len"), "live of {name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        assert_eq!(map["unsettled"], 0, "{name}: {map}");
        if truth.text("created") == "after" {
            for field in ["inserts", "overwrites", "deletes", "clears"] {
                assert_eq!(map[field], truth.number(field), "{field} of {name}: {map}");
            }
        } else {
            assert_eq!(map["inserts"], truth.number("inserts"), "{name}: {map}");
        }
    }
}

/// The executable's name inside the container: podman images hold `/maps`, runc bundles
/// `/program`.
fn exe_name(expected: &Expected) -> &'static str {
    if expected.runtime == "podman" {
        "maps"
    } else {
        "program"
    }
}

fn podman_case(test: &str, how: impl FnOnce(&Podman, &str) -> Vec<String>) {
    let image = Image::build(test);
    let name = unique(test);
    let mut container = Podman::run(&image, &name);
    let id = container.inspect("{{.Id}}");
    let args = how(&container, &id);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expected = Expected {
        id: &id,
        name: &name,
        runtime: "podman",
    };
    trace_in_container(container.fixture(), &args, test, &expected);
    let exit = container.fixture.take().expect("running").finish();
    assert_eq!(exit.code(), Some(3), "the fixture's own exit status");
}

#[test]
fn podman_by_name() {
    podman_case("podman_by_name", |container, _| {
        vec!["--container".into(), container.name.clone()]
    });
}

#[test]
fn podman_by_id_prefix() {
    podman_case("podman_by_id_prefix", |_, id| {
        vec!["--container".into(), id[..12].to_string()]
    });
}

#[test]
fn podman_by_host_pid() {
    podman_case("podman_by_host_pid", |container, _| {
        vec!["--pid".into(), container.inspect("{{.State.Pid}}")]
    });
}

fn runc_case(test: &str, id: &str, how: impl FnOnce(&Runc) -> Vec<String>) {
    let mut container = Runc::maps(id);
    let args = how(&container);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expected = Expected {
        id,
        name: id,
        runtime: "runc",
    };
    trace_in_container(container.fixture(), &args, test, &expected);
    let exit = container.fixture.take().expect("running").finish();
    assert_eq!(exit.code(), Some(3), "the fixture's own exit status");
}

#[test]
fn runc_by_name() {
    // A word, not an id: its cgroup (`/<id>`) carries no runtime's mark, only `runc list`
    // knows it.
    let id = unique("runc-by-name");
    runc_case("runc_by_name", &id, |container| {
        vec!["--container".into(), container.id.clone()]
    });
}

#[test]
fn runc_by_id_prefix() {
    let id = hex_id("runc_by_id_prefix");
    runc_case("runc_by_id_prefix", &id, |container| {
        vec!["--container".into(), container.id[..8].to_string()]
    });
}

#[test]
fn runc_by_host_pid() {
    let id = hex_id("runc_by_host_pid");
    runc_case("runc_by_host_pid", &id, |container| {
        vec!["--pid".into(), container.state("pid")]
    });
}

/// Runs gomaptrace to completion; (exit code, stderr lines).
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

fn assert_one_line_error(code: Option<i32>, stderr: &[String], expected: &[&str]) {
    assert_eq!(code, Some(1), "{stderr:#?}");
    assert_eq!(stderr.len(), 1, "exactly one line: {stderr:#?}");
    assert!(
        stderr[0].starts_with("gomaptrace: error: ")
            && expected.iter().all(|part| stderr[0].contains(part)),
        "expected {expected:?} in {stderr:#?}"
    );
}

#[test]
fn no_such_container_is_one_line() {
    let name = unique("no-such-container");
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args(["--container", &name]));
    assert_one_line_error(code, &stderr, &["no running container", &name, "podman"]);
    let prefix = &hex_id("no such prefix")[..16];
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args(["--container", prefix]));
    assert_one_line_error(code, &stderr, &["no running container", prefix]);
}

#[test]
fn an_ambiguous_prefix_lists_the_matches() {
    let sleeper = static_sleeper("ambiguous");
    let shared = &hex_id("ambiguous")[..16];
    let first = format!("{shared}{}", &hex_id("first")[16..]);
    let second = format!("{shared}{}", &hex_id("second")[16..]);
    let _one = Runc::sleeper(&first, &sleeper);
    let _two = Runc::sleeper(&second, &sleeper);
    let (code, stderr) =
        run_tracer(Command::new(tracer_bin()).args(["--container", &shared[..10]]));
    assert_one_line_error(
        code,
        &stderr,
        &["matches 2 containers", &first[..12], &second[..12]],
    );
}

#[test]
fn a_container_without_go_is_one_line() {
    let sleeper = static_sleeper("without-go");
    let id = unique("without-go");
    let container = Runc::sleeper(&id, &sleeper);
    let pid = container.state("pid");
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args(["--container", &id]));
    assert_one_line_error(
        code,
        &stderr,
        &["has no Go process", &id, &format!("{pid} (/program)")],
    );
}

#[test]
fn a_name_without_a_runtime_tool_is_one_line() {
    let empty = scratch(&unique("no-tools"));
    let (code, stderr) = run_tracer(
        Command::new(tracer_bin())
            .env("PATH", &empty)
            .args(["--container", "leakzoo"]),
    );
    assert_one_line_error(
        code,
        &stderr,
        &["`leakzoo` is not a container id", "no runtime tool"],
    );
}

#[test]
fn a_container_that_stops_while_traced_still_gets_its_report() {
    let test = "container_stops_while_traced";
    let image = Image::build(test);
    let name = unique(test);
    let mut container = Podman::run(&image, &name);
    let json = report_path(test);
    let tracer = Tracer::attach(&["--container", &name, "--json", json.to_str().unwrap()]);
    let truths = Truth::parse(&container.fixture().run_operations());
    assert_eq!(truths.len(), FIXTURE_MAPS);
    run_ok(Command::new("podman").args(["kill", &name]));
    let (status, stderr) = tracer.wait();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true, "{}", report["target"]);
    assert_eq!(report["target"]["container"]["name"], name.as_str());
    assert_eq!(report["events"]["lost"], 0);
    for truth in &truths {
        let map = report["maps"]
            .as_array()
            .expect("maps")
            .iter()
            .find(|map| map["addr"] == truth.text("addr"))
            .unwrap_or_else(|| panic!("{} is in the report", truth.text("name")));
        assert_eq!(map["unexplained"], 0, "{map}");
    }
}

#[test]
fn several_go_processes_are_listed_for_pid() {
    let id = unique("several-go");
    let _container = Runc::maps(&id);
    let _second = Fixture::start_command(Command::new("runc").args(["exec", &id, "/program"]));
    let pids: Vec<u64> = serde_json::from_str(&run_ok(
        Command::new("runc").args(["ps", "--format", "json", &id]),
    ))
    .expect("runc ps prints a JSON list of pids");
    assert_eq!(pids.len(), 2, "{pids:?}");
    let (code, stderr) = run_tracer(Command::new(tracer_bin()).args(["--container", &id]));
    let listed: Vec<String> = pids.iter().map(|pid| format!("{pid} (/program)")).collect();
    let mut expected = vec!["has several Go processes", "trace one with --pid PID"];
    expected.extend(listed.iter().map(String::as_str));
    assert_one_line_error(code, &stderr, &expected);
}

/// Lines of `stream`, read on a thread; `until` waits at most a minute for each.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

#[test]
fn the_gomaptrace_image_traces_a_sibling_container() {
    // gomaptrace itself in a container, as fleets run it: the image `cargo xtask image`
    // builds (static, `FROM scratch`), privileged, in the host's pid namespace.
    let test = "gomaptrace_image";
    let tracer_image = Image {
        tag: format!("localhost/{}:latest", unique("gomaptrace")),
    };
    run_ok(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(tracer::gofixture::workspace_root())
            .args(["xtask", "image", "--tag", &tracer_image.tag]),
    );
    let image = Image::build(test);
    let mut sibling = Podman::run(&image, &unique("sibling"));
    let id = sibling.inspect("{{.Id}}");
    let json = report_path(test);
    let out = json.parent().expect("reports directory");
    let nofile = hard_nofile();
    let name = unique("tracer");
    let _tracer_guard = Podman {
        name: name.clone(),
        fixture: None,
    };
    let mut tracer = Command::new("podman")
        .args([
            "run",
            "--rm",
            "--name",
            &name,
            "--runtime",
            "runc",
            "--network=none",
        ])
        .args(["--ulimit", &format!("nofile={nofile}:{nofile}")])
        .args([
            "--ulimit",
            "nproc=32768:32768",
            "--privileged",
            "--pid=host",
            "-v",
        ])
        .arg(format!("{}:/out", out.display()))
        .args([&tracer_image.tag, "--container", &id[..12], "--json"])
        .arg(format!(
            "/out/{}",
            json.file_name().unwrap().to_str().unwrap()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gomaptrace container");
    let stderr = lines_of(tracer.stderr.take().expect("piped"));
    let mut seen = Vec::new();
    while !seen
        .last()
        .is_some_and(|line: &String| line.contains("attached"))
    {
        match stderr.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => seen.push(line),
            Err(error) => panic!("the gomaptrace container did not attach ({error}): {seen:#?}"),
        }
    }
    let truths = Truth::parse(&sibling.fixture().run_operations());
    run_ok(Command::new("podman").args(["kill", "--signal", "INT", &name]));
    let status = integration_tests::wait_with_timeout(&mut tracer, "gomaptrace container");
    assert!(
        status.success(),
        "{status}: {:?}",
        stderr.try_iter().collect::<Vec<_>>()
    );
    let report = read_report(&json);
    counts_match(&report, &truths);
    assert_eq!(report["target"]["container"]["id"], id.as_str());
    assert_eq!(report["target"]["container"]["runtime"], "podman");
    assert_eq!(report["target"]["ns_pid"], 1);
}
