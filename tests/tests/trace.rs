//! gomaptrace against real Go programs: every count it reports must equal what the program
//! itself did, and the program must not notice it was traced.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{
    build, map_at, report_path, trace_ground_truth, Fixture, Flavor, GroundTruthRun, Tracer,
};

/// Traces the maps fixture built with Go `version` (and `env`, e.g. a `GOEXPERIMENT`) and
/// compares every map with the fixture's own ground truth.
fn counts_match_ground_truth(version: &str, flavor: Flavor, env: &[(&str, &str)], test: &str) {
    let binary = build("maps", version, flavor, env);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &report_path(test), &[]);
    assert_eq!(fixture_exit.code(), Some(3));

    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(report["events"]["malformed"], 0);
    // The fixture's mix repeats overwrites and deletes of missing keys: the BPF side folds
    // them, and every fold reaches its map (the overwrites below are compared exactly).
    assert!(
        report["events"]["folded"].as_u64() > Some(0),
        "{}",
        report["events"]
    );
    assert_eq!(report["events"]["folded_uncredited"], 0);
    let go_version = report["target"]["go_version"].as_str().unwrap_or_default();
    assert!(
        go_version.starts_with(&format!("go{version}")),
        "{go_version}"
    );
    let expected_maps = if version == "1.19" { 13 } else { 16 };
    let peak_rss = report["target"]["peak_rss_bytes"]
        .as_u64()
        .expect("the target's peak resident memory was read");
    assert_eq!(truths.len(), expected_maps, "{truths:#?}");
    for truth in &truths {
        let map = map_at(&report, truth.text("addr"));
        let name = truth.text("name");
        assert_eq!(map["live"], truth.number("len"), "live of {name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        assert_eq!(map["unsettled"], 0, "{name}: {map}");
        for estimate in ["est_bytes", "peak_est_bytes"] {
            let bytes = map[estimate].as_u64();
            assert!(
                bytes.is_some_and(|bytes| bytes >= 48 && bytes <= peak_rss),
                "{estimate} of {name} within what the target had resident: {map}"
            );
        }
        if truth.text("created") == "after" {
            assert_eq!(map["created"], true, "{name}: {map}");
            assert_eq!(
                map["cloned"].to_string(),
                truth.text("cloned"),
                "{name}: {map}"
            );
            for field in ["inserts", "overwrites", "deletes", "clears"] {
                assert_eq!(map[field], truth.number(field), "{field} of {name}: {map}");
            }
        } else {
            assert_eq!(map["created"], false, "{name} existed before attach: {map}");
            assert_eq!(map["inserts"], truth.number("inserts"), "{name}: {map}");
        }
    }
}

macro_rules! ground_truth_tests {
    ($($test:ident: $version:literal, $flavor:ident $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $test() {
            counts_match_ground_truth(
                $version,
                Flavor::$flavor,
                &[$(($key, $value))?],
                stringify!($test),
            );
        }
    )*};
}

ground_truth_tests! {
    counts_go1_19: "1.19", Plain;
    counts_go1_19_pie: "1.19", Pie;
    counts_go1_19_stripped: "1.19", Stripped;
    counts_go1_21: "1.21.13", Plain;
    counts_go1_21_pie: "1.21.13", Pie;
    counts_go1_21_stripped: "1.21.13", Stripped;
    counts_go1_21_cgo_pie: "1.21.13", Pie, "CGO_ENABLED" = "1";
    counts_go1_22: "1.22.10", Plain;
    counts_go1_22_pie: "1.22.10", Pie;
    counts_go1_22_stripped: "1.22.10", Stripped;
    counts_go1_23: "1.23.9", Plain;
    counts_go1_23_pie: "1.23.9", Pie;
    counts_go1_23_stripped: "1.23.9", Stripped;
    counts_go1_24: "1.24.11", Plain;
    counts_go1_24_pie: "1.24.11", Pie;
    counts_go1_24_stripped: "1.24.11", Stripped;
    counts_go1_24_cgo: "1.24.11", Plain, "CGO_ENABLED" = "1";
    counts_go1_24_lld: "1.24.11", Lld, "CGO_ENABLED" = "1";
    counts_go1_24_classic: "1.24.11", Plain, "GOEXPERIMENT" = "noswissmap";
    counts_go1_25: "1.25.5", Plain;
    counts_go1_25_pie: "1.25.5", Pie;
    counts_go1_25_stripped: "1.25.5", Stripped;
    counts_go1_25_classic: "1.25.5", Plain, "GOEXPERIMENT" = "noswissmap";
    counts_go1_26: "1.26.6", Plain;
    counts_go1_26_pie: "1.26.6", Pie;
    counts_go1_26_stripped: "1.26.6", Stripped;
    counts_go1_27: "1.27.3", Plain;
    counts_go1_27_pie: "1.27.3", Pie;
    counts_go1_27_stripped: "1.27.3", Stripped;
    counts_go1_27_cgo_pie: "1.27.3", Pie, "CGO_ENABLED" = "1";
}

/// What the fixture prints, without the addresses that legitimately change between runs.
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

#[test]
fn tracing_does_not_change_the_target() {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);

    let mut untraced = Fixture::start(&binary);
    let alone = observable(&untraced.run_operations());
    let alone_status = untraced.finish();

    let mut traced = Fixture::start(&binary);
    let pid = traced.pid().to_string();
    let tracer = Tracer::attach(&["--pid", &pid]);
    let watched = observable(&traced.run_operations());
    let watched_status = traced.finish();
    let (status, stderr) = tracer.wait();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");

    assert_eq!(alone, watched);
    assert_eq!(alone_status.code(), watched_status.code());
}
