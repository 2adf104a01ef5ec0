//! What holds a map (the `roots` fixture): every map reachable from a package-level variable
//! is named by its path (`main.sessionCache.byID`, `main.settings.flags`, `main.shards[2]`),
//! read from DWARF and the live process's memory, across the Go releases and both map
//! implementations; maps no variable reaches are named by the goroutine stack holding them
//! (`goroutine 1 stack`), every map of a stripped binary is "unknown"; a recording replays
//! the names byte for byte.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::process::Command;

use integration_tests::{
    build, map_at, report_path, trace_ground_truth, tracer_bin, Flavor, GroundTruthRun,
};

/// Maps the fixture prints: 6 named holders, 4 shards, a local and a late map.
const MAPS: usize = 12;

fn holders_are_named(version: &str, flavor: Flavor, test: &str) {
    let binary = build("roots", version, flavor, &[]);
    let json = report_path(test);
    let recording = json.with_extension("gmt");
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &json, &["--record", recording.to_str().unwrap()]);
    assert!(fixture_exit.success());
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(truths.len(), MAPS, "{truths:#?}");
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        // The maps no variable reaches are main's locals: the stack scan names the main
        // goroutine (goid 1); a stripped binary has no symbols to find the goroutines.
        let expected = match (flavor, truth.text("holder")) {
            (Flavor::Stripped, _) => "unknown",
            (_, "unknown") => "goroutine 1 stack",
            (_, holder) => holder,
        };
        assert_eq!(map["held_by"], expected, "{name}: {map}");
    }
    for map in report["maps"].as_array().unwrap() {
        assert!(map["held_by"].is_string(), "{map}");
    }

    let replayed = json.with_extension("replayed.json");
    let replay = Command::new(tracer_bin())
        .args(["replay", recording.to_str().unwrap(), "--json"])
        .arg(&replayed)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    assert_eq!(
        std::fs::read(&json).unwrap(),
        std::fs::read(&replayed).unwrap(),
        "a replay rebuilds the JSON report byte for byte"
    );
}

macro_rules! roots_tests {
    ($($test:ident: $version:literal, $flavor:ident;)*) => {$(
        #[test]
        fn $test() {
            holders_are_named($version, Flavor::$flavor, stringify!($test));
        }
    )*};
}

roots_tests! {
    roots_go1_19: "1.19", Plain;
    roots_go1_21: "1.21.13", Plain;
    roots_go1_24: "1.24.11", Plain;
    roots_go1_24_pie: "1.24.11", Pie;
    roots_go1_27: "1.27.3", Plain;
    roots_go1_27_stripped: "1.27.3", Stripped;
}
