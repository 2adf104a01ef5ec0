//! Faults gomaptrace must survive: the target killed, stopped and continued, or deployed
//! over (its binary replaced on disk); gomaptrace itself killed; a ring buffer too small for
//! the event rate; an attach that fails halfway. Each leaves the target unharmed and the
//! report right about what was seen.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::{
    build, map_at, read_report, report_path, Fixture, Flavor, Tracer, Truth, STEP_TIMEOUT,
};
use tracer::inspect::GoBinary;
use tracer::plan::{plan, ProbeKind};
use tracer::probes::{Linking, ProbeError, Probes, Programs};

/// Bytes of the executable code mapped in process `pid` that differ from its binary's file.
/// A uprobe writes a breakpoint into the process's copy of the page it probes, so this is
/// zero exactly when no probe is installed in the process, however it was attached.
fn patched_code_bytes(pid: u32) -> usize {
    let binary = std::fs::read(format!("/proc/{pid}/exe")).expect("read the target's binary");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the target's exe");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the target's maps");
    let memory = File::open(format!("/proc/{pid}/mem")).expect("open the target's memory");
    let mut compared = 0;
    let mut differing = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || Path::new(&fields[5..].join(" ")) != exe
        {
            continue;
        }
        let (start, end) = fields[0].split_once('-').expect("an address range");
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let offset = usize::from_str_radix(fields[2], 16).unwrap();
        let len = ((end - start) as usize).min(binary.len() - offset);
        let mut code = vec![0; len];
        memory
            .read_exact_at(&mut code, start)
            .expect("read the target's code");
        compared += len;
        differing += code
            .iter()
            .zip(&binary[offset..offset + len])
            .filter(|(mapped, file)| mapped != file)
            .count();
    }
    assert!(compared > 0, "no executable mapping of {exe:?} in {maps}");
    differing
}

/// How long a child forked by another test may hold this process's descriptors: from its
/// fork to its exec.
const INHERITED_DESCRIPTORS_CLOSE: Duration = Duration::from_secs(2);

/// Waits up to `within` until no probe is left in process `pid` (the kernel detaches a
/// killed tracer's probes as it closes its file descriptors, which takes a moment per probe).
fn wait_until_no_probe_is_left(pid: u32, within: Duration) {
    let start = Instant::now();
    let deadline = start + within;
    loop {
        let patched = patched_code_bytes(pid);
        if patched == 0 {
            eprintln!("no probe left in pid {pid} {:?} after", start.elapsed());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{patched} bytes of pid {pid}'s code still patched by probes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The uprobes registered through tracefs (`uprobe_events`), mounting tracefs if it is not:
/// aya falls back to those on kernels without the perf uprobe PMU, and they outlive their
/// creator unless removed.
fn tracefs_uprobes() -> String {
    let tracefs = Path::new("/sys/kernel/tracing");
    let events = tracefs.join("uprobe_events");
    if !events.exists() {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev"])
            .arg(tracefs)
            .status()
            .expect("run mount");
        assert!(mounted.success() || events.exists(), "cannot mount tracefs");
    }
    std::fs::read_to_string(&events).expect("read uprobe_events")
}

/// What the maps fixture prints, without the addresses that change between runs.
fn observable(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            line.split_whitespace()
                .filter(|field| !field.starts_with("addr="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill with a pid this test started and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

#[test]
fn the_target_killed_mid_trace_still_gets_its_report() {
    let binary = build("busy", "1.24.11", Flavor::Plain, &[]);
    let json = report_path("the_target_killed_mid_trace_still_gets_its_report");
    let fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let tracer = Tracer::attach(&["--pid", &pid, "--json", json.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(500));
    let killed = fixture.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9)
    );
    let (status, stderr) = tracer.wait();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], true, "{}", report["target"]);
    assert_eq!(report["events"]["lost"], 0);
    let maps = report["maps"].as_array().unwrap();
    assert!(
        maps.iter().any(|map| map["inserts"].as_u64() > Some(1000)),
        "the busy maps were traced until the kill"
    );
    assert!(maps.iter().all(|map| map["released"] == true));
}

#[test]
fn a_target_stopped_and_continued_keeps_exact_counts() {
    let binary = build("busy", "1.24.11", Flavor::Plain, &[]);
    let json = report_path("a_target_stopped_and_continued_keeps_exact_counts");
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    let tracer = Tracer::attach(&["--pid", &pid.to_string(), "--json", json.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    signal(pid, libc::SIGCONT);
    let truths = Truth::parse(&fixture.run_operations());
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    assert!(fixture.finish().success());
    let report = read_report(&json);
    assert_eq!(report["target"]["exited"], false);
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(truths.len(), 4, "{truths:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        assert_eq!(map["unsettled"], 0, "{name}: {map}");
        assert!(map["inserts"].as_u64() > Some(1000), "{name}: {map}");
    }
}

#[test]
fn gomaptrace_killed_leaves_the_target_unharmed_and_no_probe_behind() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let mut untraced = Fixture::start(&binary);
    let alone = observable(&untraced.run_operations());
    let alone_status = untraced.finish();

    let uprobes_before = tracefs_uprobes();
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    assert_eq!(patched_code_bytes(pid), 0, "no probe before the trace");
    let tracer = Tracer::attach(&["--pid", &pid.to_string()]);
    assert!(
        patched_code_bytes(pid) > 0,
        "the check sees the probes while they are attached"
    );
    let killed = tracer.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9)
    );
    wait_until_no_probe_is_left(pid, STEP_TIMEOUT);
    assert_eq!(tracefs_uprobes(), uprobes_before);

    let watched = observable(&fixture.run_operations());
    assert_eq!(watched, alone);
    assert_eq!(fixture.finish().code(), alone_status.code());
}

#[test]
fn a_ring_buffer_too_small_counts_and_shows_the_loss() {
    let binary = build("busy", "1.24.11", Flavor::Plain, &[]);
    let json = report_path("a_ring_buffer_too_small_counts_and_shows_the_loss");
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let tracer = Tracer::attach_with_env(
        &["--pid", &pid, "--json", json.to_str().unwrap()],
        &[(tracer::overrides::RING_BYTES_VAR, "4096")],
    );
    let truths = Truth::parse(&fixture.run_operations());
    signal(tracer.pid(), libc::SIGINT);
    let text = tracer.stdout.rest().join("\n");
    let (status, stderr) = tracer.wait();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    assert!(fixture.finish().success());
    let report = read_report(&json);
    let lost = report["events"]["lost"].as_u64().unwrap();
    let received = report["events"]["received"].as_u64().unwrap();
    eprintln!("4 KiB ring: {lost} events lost, {received} received");
    assert!(
        lost > 0,
        "a 4 KiB ring cannot keep up: {}",
        report["events"]
    );
    assert!(
        text.contains(&format!("LOST: {lost} events were lost")),
        "the text report shows the loss: {text}"
    );
    let counted: u64 = report["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|map| {
            ["inserts", "overwrites", "deletes", "clears"]
                .iter()
                .map(|field| map[field].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    // Each operation counted came as a record or as a write folded on the BPF side.
    let folded = report["events"]["folded"].as_u64().unwrap();
    assert!(
        counted <= received + folded,
        "no map counts an operation that was not received or folded: {counted} > {received} + {folded}"
    );
    assert_eq!(truths.len(), 4, "{truths:#?}");
    for truth in &truths {
        let map = map_at(&report, truth.text("addr"));
        let flagged = map["unexplained"].as_u64() > Some(0) || map["unsettled"].as_u64() > Some(0);
        assert!(
            map["live"] == truth.number("len") || flagged,
            "a map whose count is off because of the loss says so: {map}"
        );
    }
}

#[test]
fn an_attach_failing_halfway_detaches_everything_attached_so_far() {
    for linking in [Linking::PerSite, Linking::Grouped] {
        attach_fails_halfway(linking);
    }
}

/// Attaches every probe and detaches them, then attaches a plan whose last site is past the
/// end of the file: per site, every probe before it is on when the kernel refuses it;
/// grouped, the link is refused whole and the attach falls back to per-site probes.
fn attach_fails_halfway(linking: Linking) {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let go = GoBinary::open(&exe).expect("inspect the fixture");
    let good = plan(&go).expect("plan the probes");
    let programs = Programs::Tracing {
        diagnostics: false,
        key_sample_mask: u32::MAX,
        key_salt: 0,
    };

    let (probes, outputs) = Probes::attach(&good, &exe, pid, programs, linking).expect("attach");
    assert_eq!(probes.attached(), good.sites.len());
    if linking == Linking::Grouped {
        assert!(
            probes.linked().starts_with("grouped"),
            "this kernel (6.6+) takes grouped links: {}",
            probes.linked()
        );
    }
    assert!(
        patched_code_bytes(pid) > 0,
        "the check sees attached probes ({linking:?})"
    );
    probes.detach();
    drop(outputs);
    wait_until_no_probe_is_left(pid, INHERITED_DESCRIPTORS_CLOSE);

    // The last program attached gets a site past the end of the file, which the kernel
    // refuses: every other probe is on by then.
    let last_kind = ProbeKind::ALL
        .iter()
        .rev()
        .find(|kind| good.sites.iter().any(|site| site.kind == **kind))
        .expect("a planned kind");
    let mut bad = good.clone();
    let beyond = std::fs::metadata(&binary).unwrap().len() + 4096;
    let failing = bad
        .sites
        .iter()
        .rposition(|site| site.kind == *last_kind)
        .unwrap();
    bad.sites[failing].file_offset = beyond;
    assert!(bad.sites.len() > 8, "most probes go on before the failure");
    match Probes::attach(&bad, &exe, pid, programs, linking) {
        Err(ProbeError::Attach { offset, .. }) => assert_eq!(offset, beyond),
        Err(other) => panic!("failed for another reason ({linking:?}): {other}"),
        Ok(_) => panic!("a site past the end of the file was attached ({linking:?})"),
    }
    // Probes attached before the failure are gone once attach returns. Allowed a moment
    // only because this test binary is multi-threaded: a child another test forks meanwhile
    // holds copies of the probes' descriptors until it execs, and closes the last of them.
    wait_until_no_probe_is_left(pid, INHERITED_DESCRIPTORS_CLOSE);
    assert!(fixture.kill().signal_is(libc::SIGKILL));
}

/// Whether an exit status is a death by `signal`.
trait SignalIs {
    fn signal_is(&self, signal: i32) -> bool;
}

impl SignalIs for std::process::ExitStatus {
    fn signal_is(&self, signal: i32) -> bool {
        std::os::unix::process::ExitStatusExt::signal(self) == Some(signal)
    }
}

/// Copies an executable with `cp`: a file this multi-threaded process opened for writing
/// could be inherited by a child another test forks meanwhile, and exec'ing it would then
/// fail with "Text file busy".
fn copy(from: &Path, to: &Path) {
    let copied = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp {from:?} {to:?}");
}

/// When the deploy renames the new release over the running binary.
#[derive(Clone, Copy, PartialEq)]
enum Deploy {
    /// Before gomaptrace attaches: `/proc/PID/exe` already reads `… (deleted)`.
    BeforeAttach,
    /// While the probes are live, between attaching and the map operations.
    WhileTraced,
}

/// Starts the maps fixture (`flavor`) from a path with spaces, renames a different build
/// over it at `deploy`, and checks that the trace still has exact counts, types and
/// creation sites: everything must come from the binary the process runs, not the file now
/// at its path.
fn deployed_over(flavor: Flavor, deploy: Deploy, test: &str) {
    let built = build("maps", "1.24.11", flavor, &[]);
    let other = if flavor == Flavor::Pie {
        Flavor::Plain
    } else {
        Flavor::Pie
    };
    let dir = std::env::temp_dir().join(format!("gomaptrace {test} {}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let installed = dir.join("maps service");
    copy(&built, &installed);
    let next = dir.join("maps service.new");
    copy(&build("maps", "1.24.11", other, &[]), &next);
    let json = report_path(test);

    let mut fixture = Fixture::start(&installed);
    // A deploy: the new release is written next to the old one and renamed over it.
    if deploy == Deploy::BeforeAttach {
        std::fs::rename(&next, &installed).unwrap();
    }
    let pid = fixture.pid().to_string();
    let tracer = Tracer::attach(&["--pid", &pid, "--json", json.to_str().unwrap()]);
    if deploy == Deploy::WhileTraced {
        std::fs::rename(&next, &installed).unwrap();
    }
    let truths = Truth::parse(&fixture.run_operations());
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    assert_eq!(fixture.finish().code(), Some(3));
    std::fs::remove_dir_all(&dir).unwrap();

    let report = read_report(&json);
    let exe = report["target"]["exe"].as_str().unwrap();
    let expected_exe = match deploy {
        Deploy::BeforeAttach => "maps service (deleted)",
        Deploy::WhileTraced => "maps service",
    };
    assert!(exe.ends_with(expected_exe), "{exe}");
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(truths.len(), 16, "{truths:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        let map_type = map["type"].as_str().unwrap_or_default();
        assert!(map_type.starts_with("map["), "type of {name}: {map}");
        if truth.text("created") == "after" {
            for field in ["inserts", "overwrites", "deletes", "clears"] {
                assert_eq!(map[field], truth.number(field), "{field} of {name}: {map}");
            }
            let site = map["site"]["function"].as_str().unwrap_or_default();
            assert!(site.starts_with("main."), "creation site of {name}: {map}");
            assert!(map["site"]["line"].as_u64() > Some(0), "{name}: {map}");
        }
    }
}

#[test]
fn a_pie_deployed_over_before_the_trace_is_traced_through_its_old_binary() {
    deployed_over(
        Flavor::Pie,
        Deploy::BeforeAttach,
        "a_pie_deployed_over_before_the_trace",
    );
}

#[test]
fn a_static_binary_deployed_over_before_the_trace_is_traced_through_its_old_binary() {
    deployed_over(
        Flavor::Plain,
        Deploy::BeforeAttach,
        "a_static_binary_deployed_over_before_the_trace",
    );
}

#[test]
fn a_pie_deployed_over_while_traced_keeps_its_probes_and_counts() {
    deployed_over(
        Flavor::Pie,
        Deploy::WhileTraced,
        "a_pie_deployed_over_while_traced",
    );
}

#[test]
fn a_static_binary_deployed_over_while_traced_keeps_its_probes_and_counts() {
    deployed_over(
        Flavor::Plain,
        Deploy::WhileTraced,
        "a_static_binary_deployed_over_while_traced",
    );
}
