//! The service bench's fixtures traced for real: the map-heavy HTTP service
//! (`tests/fixtures/service`) under a couple of seconds of load from the load generator
//! (`tests/fixtures/loadgen`), with every count checked against what the service says it
//! did. Correctness only: how fast it serves is `cargo xtask bench --only service`'s job,
//! never a timed assertion here.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use integration_tests::{
    build, map_at, read_report, report_path, wait_with_timeout, Flavor, Lines, Tracer, Truth,
};

/// Sessions the service's cache keeps; the client uses four times as many, so it evicts.
const CACHE: &str = "200";
const CLIENT_SESSIONS: &str = "800";

/// The service fixture running, and its load generator.
struct Service {
    child: Child,
    stdout: Lines,
    address: String,
    client: PathBuf,
}

impl Service {
    /// Builds the service and the load generator with Go `version` and starts the service.
    fn start(version: &str) -> Service {
        let server = build("service", version, Flavor::Plain, &[]);
        let client = build("loadgen", version, Flavor::Plain, &[]);
        let mut child = Command::new(&server)
            .args(["-sessions", CACHE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the service");
        let stdout = Lines::spawn(child.stdout.take().expect("piped"), "service stdout");
        let started = stdout.until(|line| line == "ready");
        let address = started
            .iter()
            .find_map(|line| line.strip_prefix("listening "))
            .unwrap_or_else(|| panic!("the service said no address: {started:?}"))
            .to_string();
        Service {
            child,
            stdout,
            address,
            client,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Runs the load generator for `duration` (e.g. `2s`); it must say it ran.
    fn load(&self, duration: &str) {
        let load = Command::new(&self.client)
            .args(["-url", &format!("http://{}", self.address), "-c", "4"])
            .args([
                "-d",
                duration,
                "-warmup",
                "0s",
                "-sessions",
                CLIENT_SESSIONS,
            ])
            .output()
            .expect("run the load generator");
        let said = String::from_utf8_lossy(&load.stdout);
        assert!(
            load.status.success(),
            "load generator failed: {said} {}",
            String::from_utf8_lossy(&load.stderr)
        );
        assert!(said.starts_with("result {"), "{said}");
    }

    /// Once the client is done and the service quiet: asks for its ground truth, then
    /// stops `tracer`, then lets the service exit. Returns the service's lines and the report.
    fn finish(mut self, tracer: Tracer, json: &Path) -> (Vec<String>, serde_json::Value) {
        let mut stdin = self.child.stdin.take().expect("piped");
        stdin.write_all(b"truth\n").expect("service stdin");
        stdin.flush().expect("service stdin");
        let lines = self.stdout.until(|line| line == "done");
        let (status, stderr) = tracer.interrupt();
        assert!(
            status.success(),
            "gomaptrace failed ({status}): {stderr:#?}"
        );
        drop(stdin);
        assert!(wait_with_timeout(&mut self.child, "service").success());
        (lines, read_report(json))
    }
}

fn service_counts_are_exact(version: &str, test: &str) {
    let service = Service::start(version);
    let json = report_path(test);
    let pid = service.pid();
    let tracer = Tracer::attach(&["--pid", &pid, "--json", json.to_str().expect("utf-8")]);
    service.load("2s");
    let (lines, report) = service.finish(tracer, &json);
    assert_eq!(report["events"]["lost"], 0);
    let requests: u64 = field(&lines, "requests ", "n").parse().expect("a number");
    assert!(
        requests > 100,
        "the load generator sent too little: {lines:?}"
    );

    let truths = Truth::parse(&lines);
    assert_eq!(truths.len(), 2, "{lines:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["inserts"], truth.number("inserts"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        assert_eq!(map["unsettled"], 0, "{name}: {map}");
        match name {
            "sessions" => {
                assert_eq!(map["deletes"], truth.number("deletes"), "{name}: {map}");
                assert!(
                    truth.number("deletes") > 0,
                    "the cache never evicted: {truth:?}"
                );
            }
            "routes" => {
                assert_eq!(
                    map["overwrites"],
                    truth.number("overwrites"),
                    "{name}: {map}"
                )
            }
            other => panic!("unexpected map {other}"),
        }
    }

    // One attribute map and one field map per request, each made at its own function.
    let created: HashMap<String, u64> = report["sites"]
        .as_array()
        .expect("sites array")
        .iter()
        .filter(|site| site["by"] == "creation")
        .filter_map(|site| {
            let function = site["site"]["function"].as_str()?.to_string();
            Some((function, site["maps_created"].as_u64()?))
        })
        .collect();
    for function in ["main.newAttrs", "main.newFields"] {
        assert_eq!(
            created.get(function).copied(),
            Some(requests),
            "maps made at {function}; sites: {created:?}"
        );
    }
}

/// `--mode sampled` on the service under load, with windows and polls far more often than
/// its defaults: the per-request maps are made in windows and freed between them, their
/// memory reused at once, and every poll must tell such memory from a map. The two maps the
/// service keeps end with their exact `len` (the last poll comes once the probes are off).
fn sampled_service_reads_only_maps(version: &str, test: &str) {
    let service = Service::start(version);
    let json = report_path(test);
    let pid = service.pid();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid,
        "--json",
        json.to_str().expect("utf-8"),
        "--max-maps",
        "1000000",
        "--mode",
        "sampled",
        "--window",
        "200ms",
        "--period",
        "500ms",
        "--poll",
        "100ms",
    ]);
    service.load("6s");
    let (lines, report) = service.finish(tracer, &json);

    // A window opens every 500 ms at the earliest: each waits for the last one's probes to
    // be gone, which takes about a second here.
    assert!(
        report["sampling"]["windows"].as_u64() >= Some(3),
        "{}",
        report["sampling"]
    );
    for map in report["maps"].as_array().unwrap() {
        let live = map["live"].as_u64().unwrap();
        assert!(live <= map["peak"].as_u64().unwrap(), "{map}");
        if let Some(slots) = map["capacity"]["slots"].as_u64() {
            assert!(live <= slots, "{map}");
        }
        // No map of this service comes near a million entries.
        assert!(live < 1 << 20, "{map}");
    }
    for truth in Truth::parse(&lines) {
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{map}");
    }
}

#[test]
fn sampled_service_go1_24() {
    sampled_service_reads_only_maps("1.24.11", "sampled_service_go1_24");
}

/// The value of `key=` on the line starting with `prefix`.
fn field<'a>(lines: &'a [String], prefix: &str, key: &str) -> &'a str {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(prefix))
        .flat_map(|rest| rest.split_whitespace())
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {prefix}{key}= in {lines:?}"))
}

#[test]
fn service_go1_24() {
    service_counts_are_exact("1.24.11", "service_go1_24");
}

#[test]
fn service_go1_21_classic_maps() {
    service_counts_are_exact("1.21.13", "service_go1_21_classic_maps");
}
