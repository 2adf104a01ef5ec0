//! The quick version of `cargo xtask soak`: the soak fixture (per-request maps the program
//! drops for its collector, and a leaking cache) traced for 40 s with every export on and
//! written every 2 s. The model must hold what the target holds plus the maps dropped
//! recently, not every map ever made; every interval's JSON a reader opens must be whole;
//! the leaking cache must lead. How flat RSS stays over hours is the soak's measurement
//! (`cargo xtask soak`), never a timed assertion here.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{build, read_report, report_path, suspects, Fixture, Flavor, Tracer};
use serde_json::Value;

/// Maps a second the fixture is asked to make.
const RATE: u64 = 5_000;
/// Maps the fixture itself holds at any time (its ring of recent requests), plus its cache.
const HELD_BY_FIXTURE: u64 = 1_001;
/// How long the model may keep a map the program dropped: the program's collector frees it
/// within a cycle or two, and a check finds it within a few seconds of its last use. Ten
/// seconds of the asked rate is a bound well above both, and far below the maps made in the
/// whole run.
const DROPPED_SECONDS: u64 = 10;
const TRACE: Duration = Duration::from_secs(40);

/// A count summed over the report's sites: `live_maps` is what the model holds, listed or
/// not; `maps_created` every map seen made.
fn over_sites(report: &Value, count: &str) -> u64 {
    report["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|site| site[count].as_u64())
        .sum()
}

#[test]
fn a_quick_soak_holds_recent_maps_only_and_every_interval_is_whole() {
    let binary = build("soak", "1.24.11", Flavor::Plain, &[]);
    let fixture = Fixture::start_command(Command::new(&binary).arg(RATE.to_string()));
    let json = report_path("quick_soak");
    let outputs = [
        ("--pprof", json.with_extension("pb.gz")),
        ("--hlog", json.with_extension("hlog")),
        ("--plot", json.with_extension("svg")),
    ];
    let pid = fixture.pid().to_string();
    let mut args = vec![
        "--pid",
        &pid,
        "--interval",
        "2s",
        "--json",
        json.to_str().unwrap(),
    ];
    for (flag, path) in &outputs {
        args.extend([*flag, path.to_str().unwrap()]);
    }
    let tracer = Tracer::attach(&args);

    let started = Instant::now();
    let mut intervals = Vec::new();
    while started.elapsed() < TRACE {
        std::thread::sleep(Duration::from_secs(3));
        // Replaced atomically: whatever a reader opens is a whole report.
        if json.exists() {
            intervals.push(read_report(&json));
        }
    }
    let (status, stderr) = tracer.interrupt();
    fixture.kill();
    assert!(status.success(), "{stderr:#?}");
    let report = read_report(&json);
    for (_, path) in &outputs {
        assert!(std::fs::metadata(path).unwrap().len() > 0, "{path:?}");
    }

    assert!(
        intervals.len() >= 10,
        "{} interval reports",
        intervals.len()
    );
    let bound = HELD_BY_FIXTURE + RATE * DROPPED_SECONDS;
    for interval in &intervals {
        let held = over_sites(interval, "live_maps");
        assert!(held <= bound, "held {held} > {bound}");
    }
    // Many more maps were made than the bound: holding only recent ones is what kept it.
    let made = over_sites(&report, "maps_created");
    assert!(made > 2 * bound, "{made} maps created");
    let held = over_sites(&report, "live_maps");
    assert!(held <= bound, "held {held} at the end");
    assert_eq!(report["release_detection"], "heap");

    // The cache was made before the trace: it is named by the line that writes to it.
    let leaks: Vec<&Value> = suspects(&report, "never-released");
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    assert_eq!(
        leaks[0]["written_at"]["function"], "main.main",
        "{leaks:#?}"
    );
}
