//! Attaching to a program that is already busy with its maps: the probes go on one after
//! another while inserts and deletes stream past, and every count must still be exact from
//! the moment the trace is armed.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{build, map_at, report_path, trace_ground_truth, Flavor, GroundTruthRun};

fn exact_when_attached_mid_stream(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("busy", version, Flavor::Plain, env);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &report_path(test), &[]);
    assert!(fixture_exit.success());
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(truths.len(), 4, "{truths:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["created"], false, "{name}: {map}");
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        assert_eq!(map["unsettled"], 0, "{name}: {map}");
        let inserts = map["inserts"].as_u64().unwrap();
        let deletes = map["deletes"].as_u64().unwrap();
        let first = map["live"].as_u64().unwrap() + deletes - inserts;
        assert!(inserts > 1000, "{name} was busy while traced: {map}");
        assert!(
            first > 0,
            "{name} held entries when the trace was armed: {map}"
        );
    }
}

macro_rules! busy_tests {
    ($($test:ident: $version:literal $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $test() {
            exact_when_attached_mid_stream($version, &[$(($key, $value))?], stringify!($test));
        }
    )*};
}

busy_tests! {
    busy_go1_19: "1.19";
    busy_go1_21: "1.21.13";
    busy_go1_23: "1.23.9";
    busy_go1_24: "1.24.11";
    busy_go1_24_classic: "1.24.11", "GOEXPERIMENT" = "noswissmap";
    busy_go1_25: "1.25.5";
    busy_go1_27: "1.27.3";
}
