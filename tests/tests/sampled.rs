//! `--mode sampled` is correct on the fixtures, on Go 1.21 and 1.24+ (classic and swiss):
//! every map's `live` equals the fixture's own `len` (the last poll reads it), leaking maps
//! are flagged from the polled series, dropped maps are released, nothing is unexplained,
//! and the report says it is sampled and which numbers are estimated. Its cost is a
//! benchmark (`cargo xtask bench`), never a timed test here.
//!
//! The windows are shorter and more frequent than the defaults so that the fixtures, which
//! run for seconds, see several windows and many polls.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::process::Command;

use integration_tests::{
    build, map_at, read_report, report_path, suspects, trace_ground_truth, tracer_bin, Fixture,
    Flavor, GroundTruthRun, Tracer,
};
use serde_json::Value;

/// Windows of 500 ms every 2 s, polls every 100 ms: the fixtures start their work right
/// after the trace starts, in the first window even on a loaded machine.
const SAMPLED: [&str; 8] = [
    "--mode", "sampled", "--window", "500ms", "--period", "2s", "--poll", "100ms",
];

/// Every map of the fixture the report knows has the fixture's `len`, and it knows some. A
/// map whose every operation fell between two windows (a loaded machine can delay a
/// fixture's work past the first one) and that no package-level variable holds is never
/// seen: sampled mode cannot know it.
fn assert_exact_where_known(truths: &[integration_tests::Truth], report: &Value) {
    let known: Vec<_> = truths
        .iter()
        .filter(|truth| knows(report, truth.text("addr")))
        .collect();
    assert!(!known.is_empty(), "{truths:#?}");
    for truth in known {
        let map = map_at(report, truth.text("addr"));
        assert_eq!(
            map["live"],
            truth.number("len"),
            "{}: {map}",
            truth.text("name")
        );
    }
}

/// Whether the report lists a live map at `addr`.
fn knows(report: &Value, addr: &str) -> bool {
    report["maps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|map| map["addr"] == addr && map["released"] == false)
}

/// The report is labelled sampled, with windows, polls and scaled creation counts.
fn assert_labelled(report: &Value) {
    assert_eq!(report["mode"], "sampled");
    let sampling = &report["sampling"];
    assert!(sampling["windows"].as_u64() >= Some(1), "{sampling}");
    assert!(sampling["polls"].as_u64() >= Some(1), "{sampling}");
    assert!(sampling["scale"].as_f64() >= Some(1.0), "{sampling}");
    assert!(sampling["estimated"].as_str().is_some(), "{sampling}");
    assert!(
        sampling["probe_links"]
            .as_str()
            .is_some_and(|links| links.starts_with("grouped")),
        "this kernel (6.6+) takes the windows' probes as grouped links: {sampling}"
    );
    for site in report["sites"].as_array().unwrap() {
        let estimated = site["maps_created_estimated"].as_f64().unwrap();
        assert!(
            estimated >= site["maps_created"].as_f64().unwrap(),
            "{site}"
        );
    }
    for map in report["maps"].as_array().unwrap() {
        assert_eq!(map["unexplained"], 0, "{map}");
    }
}

/// The `trends` fixture: the three leaks made while traced and the one made in `init()`
/// (found by the inventory) are flagged, the four healthy maps are not, and each map's
/// `live` is its `len`.
fn trends_in_sampled_mode(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("trends", version, Flavor::Plain, env);
    let json = report_path(test);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &json, &SAMPLED);
    assert!(fixture_exit.success());
    assert_eq!(report["events"]["lost"], 0);
    assert_labelled(&report);
    assert!(report["sampling"]["windows"].as_u64() >= Some(2));
    assert_eq!(truths.len(), 8, "{truths:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        let leaks = ["startup", "slow", "evicting", "ten-per-second"].contains(&name);
        let expected: Vec<&str> = leaks.then_some("never-released").into_iter().collect();
        assert_eq!(
            map["verdicts"].as_array().unwrap(),
            &expected,
            "{name}: {map}"
        );
    }
}

/// The `release` fixture: the maps each phase dropped are released (by the heap), the 8 it
/// keeps are live with their `len`; a replay of the recording gives the same report.
fn release_in_sampled_mode(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("release", version, Flavor::Plain, env);
    let json = report_path(test);
    let recording = json.with_extension("gmt");
    let mut args = SAMPLED.to_vec();
    args.extend([
        "--max-maps",
        "1000000",
        "--record",
        recording.to_str().unwrap(),
    ]);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &json, &args);
    assert!(fixture_exit.success());
    assert_eq!(report["events"]["lost"], 0);
    assert_labelled(&report);
    assert_eq!(report["release_detection"], "heap");
    let replayed = json.with_extension("replayed.json");
    let replay = Command::new(tracer_bin())
        .args(["replay", recording.to_str().unwrap(), "--json"])
        .arg(&replayed)
        .args(["--max-maps", "1000000"])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    assert_eq!(
        std::fs::read(&json).unwrap(),
        std::fs::read(&replayed).unwrap()
    );
    for (phase, function) in [
        ("reused", "main.reusedRequest"),
        ("collected", "main.collectedRequest"),
    ] {
        let ring: Vec<_> = truths
            .iter()
            .filter(|truth| truth.text("name") == format!("{phase}-ring"))
            .collect();
        assert_eq!(ring.len(), 8);
        for kept in &ring {
            let map = map_at(&report, kept.text("addr"));
            assert_eq!(map["live"], kept.number("len"), "{phase}: {map}");
        }
        let from_site: Vec<&Value> = report["maps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|map| map["site"]["function"] == function)
            .collect();
        assert!(from_site.len() > ring.len(), "{phase}: {from_site:#?}");
        for map in from_site {
            let kept = ring.iter().any(|kept| map["addr"] == kept.text("addr"));
            if !kept {
                assert_eq!(map["released"], true, "{phase}: dropped, still live: {map}");
            }
        }
    }
}

/// The `busy` fixture, attached to while its maps stream inserts and deletes: every window
/// is armed only once all its probes are on, so nothing is unexplained, and each map's
/// `live` is its `len`.
fn busy_in_sampled_mode(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("busy", version, Flavor::Plain, env);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &report_path(test), &SAMPLED);
    assert!(fixture_exit.success());
    assert_labelled(&report);
    assert_eq!(truths.len(), 4, "{truths:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert!(map["inserts"].as_u64() > Some(0), "{name}: {map}");
    }
}

/// With the default window, period and poll, the `soak` fixture's cache, which gains ten
/// entries a second, is flagged within two windows; its per-request maps are counted in
/// the windows and their estimated total is the fixture's own rate over the trace.
fn soak_leak_found_with_defaults(version: &str, test: &str) {
    let binary = build("soak", version, Flavor::Plain, &[]);
    let fixture = Fixture::start_command(Command::new(&binary).arg("1000"));
    let json = report_path(test);
    let pid = fixture.pid().to_string();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid,
        "--mode",
        "sampled",
        "--duration",
        "41s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (status, stderr) = tracer.wait();
    assert!(status.success(), "{stderr:#?}");
    let report = read_report(&json);
    // The fixture's own count every ten seconds: its real rate on this machine.
    let created = |lines: Vec<String>| -> f64 {
        let last = lines.last().unwrap();
        last.trim_start_matches("created ").parse().unwrap()
    };
    let first = created(fixture.stdout.until(|line| line.starts_with("created")));
    let second = created(fixture.stdout.until(|line| line.starts_with("created")));
    fixture.kill();
    let rate = (second - first) / 10.0;
    assert_labelled(&report);
    let sampling = &report["sampling"];
    assert_eq!(sampling["window_s"], 0.2);
    assert_eq!(sampling["period_s"], 20.0);
    assert_eq!(sampling["poll_s"], 1.0);
    assert!(sampling["windows"].as_u64() >= Some(2), "{sampling}");
    let leaks: Vec<&Value> = suspects(&report, "never-released");
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    assert!(leaks[0]["growth_per_s"].as_f64() > Some(0.0), "{leaks:#?}");
    assert!(leaks[0]["live"].as_u64() > Some(0), "{leaks:#?}");
    let site = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| site["site"]["function"] == "main.handleRequest")
        .expect("the per-request maps' site");
    let seen = site["maps_created"].as_f64().unwrap();
    let estimated = site["maps_created_estimated"].as_f64().unwrap();
    let scale = sampling["scale"].as_f64().unwrap();
    assert!(seen > 0.0, "{site}");
    assert!(
        (estimated - seen * scale).abs() <= scale,
        "{site} {sampling}"
    );
    let made = rate * report["duration_s"].as_f64().unwrap();
    assert!(
        (0.5..2.0).contains(&(estimated / made)),
        "estimated {estimated} maps, the fixture made about {made}: {site} {sampling}"
    );
}

macro_rules! sampled_tests {
    ($($trends:ident, $release:ident: $version:literal $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $trends() {
            trends_in_sampled_mode($version, &[$(($key, $value))?], stringify!($trends));
        }

        #[test]
        fn $release() {
            release_in_sampled_mode($version, &[$(($key, $value))?], stringify!($release));
        }
    )*};
}

/// The `maps` fixture (every key class the runtime handles differently) and the
/// `lifecycle` fixture (a map filled to 100,000 entries and drained): each map's `live` is
/// its `len`, and the drained map retains capacity, from the polled headers and windows.
fn maps_and_capacity_in_sampled_mode(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("maps", version, Flavor::Plain, env);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &report_path(test), &SAMPLED);
    assert_eq!(fixture_exit.code(), Some(3));
    assert_labelled(&report);
    assert_exact_where_known(&truths, &report);

    let binary = build("lifecycle", version, Flavor::Plain, env);
    let json = report_path(&format!("{test}_lifecycle"));
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &json, &SAMPLED);
    assert!(fixture_exit.success());
    assert_labelled(&report);
    assert_exact_where_known(&truths, &report);
    for truth in &truths {
        let name = truth.text("name");
        if name == "drained" {
            let map = map_at(&report, truth.text("addr"));
            assert_eq!(map["verdicts"][0], "retains-capacity", "{map}");
            assert!(map["peak"].as_u64() >= Some(1000), "{map}");
        }
    }
}

#[test]
fn sampled_maps_go1_21() {
    maps_and_capacity_in_sampled_mode("1.21.13", &[], "sampled_maps_go1_21");
}

#[test]
fn sampled_maps_go1_27() {
    maps_and_capacity_in_sampled_mode("1.27.3", &[], "sampled_maps_go1_27");
}

#[test]
fn sampled_busy_go1_21() {
    busy_in_sampled_mode("1.21.13", &[], "sampled_busy_go1_21");
}

#[test]
fn sampled_busy_go1_27() {
    busy_in_sampled_mode("1.27.3", &[], "sampled_busy_go1_27");
}

#[test]
fn sampled_soak_defaults_go1_24() {
    soak_leak_found_with_defaults("1.24.11", "sampled_soak_defaults_go1_24");
}

sampled_tests! {
    sampled_trends_go1_21, sampled_release_go1_21: "1.21.13";
    sampled_trends_go1_24_classic, sampled_release_go1_24_classic: "1.24.11", "GOEXPERIMENT" = "noswissmap";
    sampled_trends_go1_27, sampled_release_go1_27: "1.27.3";
}

/// A schedule that cannot be followed is refused in one line, before anything is attached.
#[test]
fn sampled_schedule_errors_are_one_line() {
    for (args, expected) in [
        (
            ["--window", "2s", "--period", "1s"],
            "--period (1000 ms) must be longer than --window (2000 ms)",
        ),
        (
            ["--poll", "0s", "--period", "1s"],
            "--window, --period and --poll must be at least 1 ms",
        ),
    ] {
        let output = Command::new(tracer_bin())
            .args([
                "--pid",
                &std::process::id().to_string(),
                "--mode",
                "sampled",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr, format!("gomaptrace: error: {expected}\n"));
    }
}
