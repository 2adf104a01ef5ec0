//! Once its probes are attached, gomaptrace gives up every privilege it no longer needs, in
//! every one of its threads, and the trace stays exact without them.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::time::Duration;

use integration_tests::{
    build, map_at, read_report, report_path, wait_for_report, Fixture, Flavor, Tracer, Truth,
};

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A `/proc/…/status` field: a hex capability set, or a decimal flag.
fn status_field(status: &str, name: &str, radix: u32) -> u64 {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(value.trim(), radix).unwrap()
}

/// Every thread of process `pid`: its name and status text.
fn threads(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the tracer's threads")
        .map(|task| {
            let path = task.unwrap().path();
            let status = std::fs::read_to_string(path.join("status")).unwrap();
            let name = std::fs::read_to_string(path.join("comm")).unwrap();
            (name.trim().to_string(), status)
        })
        .collect()
}

#[test]
fn every_thread_keeps_only_what_reading_needs_and_counts_stay_exact() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let json = report_path("privileges_dropped");
    let hlog = json.with_extension("hlog");
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
        "--hlog",
        hlog.to_str().unwrap(),
        "--interval",
        "1s",
    ]);
    // The export worker starts at the first interval: let it exist before looking.
    std::thread::sleep(Duration::from_millis(1500));
    let kept = [
        CAP_SYS_PTRACE,
        CAP_BPF,
        CAP_DAC_OVERRIDE,
        CAP_DAC_READ_SEARCH,
    ]
    .iter()
    .fold(0u64, |set, &cap| set | 1 << cap);
    let threads = threads(tracer.pid());
    assert!(threads.len() >= 2, "the export worker runs: {threads:?}");
    for (name, status) in &threads {
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let caps = status_field(status, set, 16);
            assert_eq!(
                caps & !kept,
                0,
                "thread {name}: {set} {caps:x} keeps too much"
            );
            assert_eq!(caps & (1 << CAP_SYS_ADMIN | 1 << CAP_PERFMON), 0);
        }
        assert_eq!(status_field(status, "CapInh:", 16), 0, "thread {name}");
        assert_eq!(status_field(status, "CapAmb:", 16), 0, "thread {name}");
        assert_eq!(status_field(status, "NoNewPrivs:", 10), 1, "thread {name}");
        assert_ne!(
            status_field(status, "CapEff:", 16) & 1 << CAP_SYS_PTRACE,
            0,
            "thread {name} still reads the target"
        );
    }
    let target_caps = status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
        "CapEff:",
        16,
    );
    assert_ne!(
        target_caps & 1 << CAP_SYS_ADMIN,
        0,
        "the target (started by root) keeps its own privileges"
    );

    let truths = Truth::parse(&fixture.run_operations());
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    assert_eq!(
        fixture.finish().code(),
        Some(3),
        "the maps fixture's own status"
    );
    let report = read_report(&json);
    assert_eq!(report["events"]["lost"], 0, "the loss counters were read");
    assert!(!truths.is_empty());
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
    }
    let log = std::fs::read_to_string(&hlog).unwrap();
    assert!(log.contains("Tag=map_peak_entries"), "{log}");
}

#[test]
fn sampled_mode_keeps_what_its_windows_need_to_attach_again_and_nothing_else() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let json = report_path("privileges_sampled");
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
        "--mode",
        "sampled",
        "--window",
        "200ms",
        "--period",
        "1s",
        "--poll",
        "500ms",
        "--interval",
        "250ms",
    ]);
    // The capabilities are looked at once a window has opened again after the drop, as the
    // interval report says.
    wait_for_report(&json, "a second window opened", |report| {
        report["sampling"]["windows"].as_u64() >= Some(2)
    });
    // This kernel (6.6+) takes the windows' probes as grouped links, which attach again with
    // the `bpf` call alone: neither perf events nor administration are kept.
    for (name, status) in threads(tracer.pid()) {
        let effective = status_field(&status, "CapEff:", 16);
        assert_ne!(effective & 1 << CAP_BPF, 0, "thread {name} attaches again");
        for gone in [
            CAP_PERFMON,
            CAP_SYS_ADMIN,
            CAP_NET_ADMIN,
            CAP_SYS_MODULE,
            CAP_SETUID,
            CAP_SYS_RAWIO,
        ] {
            assert_eq!(effective & 1 << gone, 0, "thread {name}: capability {gone}");
        }
        assert_eq!(status_field(&status, "NoNewPrivs:", 10), 1, "thread {name}");
    }
    fixture.run_operations();
    let (status, stderr) = tracer.interrupt();
    assert!(
        status.success(),
        "gomaptrace failed ({status}): {stderr:#?}"
    );
    assert_eq!(fixture.finish().code(), Some(3));
    let report = read_report(&json);
    assert_eq!(report["mode"], "sampled", "{report}");
    let windows = report["sampling"]["windows"].as_u64().unwrap();
    assert!(
        windows >= 2,
        "windows opened again after the drop: {windows}"
    );
}
