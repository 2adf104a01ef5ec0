//! gomaptrace's judgement on maps with known life stories (the `lifecycle` fixture), across
//! the Go releases: the leaks are flagged, the healthy maps are not, creation sites point at
//! the fixture's own lines, types read as Go writes them, the map made before the trace is
//! located by the line that writes it, and a recording replays to the same report byte for
//! byte.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::process::Command;

use integration_tests::{
    build, map_at, report_path, trace_ground_truth, tracer_bin, Flavor, GroundTruthRun,
};

fn verdicts_match_life_stories(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("lifecycle", version, Flavor::Plain, env);
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
    let expected = [
        ("before", Some("never-released"), "map[int64]int64"),
        ("cache", Some("never-released"), "map[string][]uint8"),
        ("drained", Some("retains-capacity"), "map[int64]int64"),
        ("sessions", None, "map[int64]*main.session"),
        ("emptied", None, "map[int]int"),
        ("reflected", None, "map[string]int"),
    ];
    assert_eq!(truths.len(), expected.len(), "{truths:#?}");
    for (truth, (name, verdict, map_type)) in truths.iter().zip(expected) {
        assert_eq!(truth.text("name"), name);
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["type"], map_type, "{name}: {map}");
        let verdicts: Vec<&str> = map["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(
            verdicts,
            verdict.into_iter().collect::<Vec<_>>(),
            "{name}: {map}"
        );
        if name == "before" {
            assert_eq!(map["created"], false, "{map}");
            assert_written_at(&report, map, truth.number("wrote"));
            continue;
        }
        assert_eq!(map["site"]["line"], truth.number("line"), "{name}: {map}");
        assert_eq!(map["site"]["function"], "main.main", "{name}: {map}");
        assert!(
            map["site"]["file"].as_str().unwrap().ends_with("main.go"),
            "{name}: {map}"
        );
        assert!(map["est_bytes"].as_u64().unwrap() > 0, "{name}: {map}");
    }
    let drained = map_at(&report, truths[2].text("addr"));
    assert_eq!(drained["peak"], 100_000);
    assert!(
        drained["peak_est_bytes"].as_u64() > Some(1 << 20),
        "{drained}"
    );

    // Every per-request map is released by the next one at its address, or still the last.
    let per_request = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| site["site"]["function"] == "main.perRequest")
        .expect("the per-request site");
    assert!(
        per_request["maps_created"].as_u64() > Some(100),
        "{per_request}"
    );
    assert_eq!(per_request["suspects"], 0, "{per_request}");
    // Maps seen created only get the sparse writer sample: a per-request map's three writes
    // carry no stack.
    for map in report["maps"].as_array().unwrap() {
        if map["site"]["function"] == "main.perRequest" {
            assert_eq!(map["writers"], serde_json::json!([]), "{map}");
        }
    }
    let suspects = report["verdicts"].as_array().unwrap();
    assert_eq!(suspects.len(), 3, "{suspects:#?}");
    assert!(report["histograms"]["entry_lifetime_s"]["count"].as_u64() > Some(0));

    let replay = Command::new(tracer_bin())
        .args(["replay", recording.to_str().unwrap(), "--json"])
        .arg(json.with_extension("replayed.json"))
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    let text = String::from_utf8_lossy(&replay.stdout);
    let wrote = truths[0].number("wrote");
    assert!(
        text.contains(&format!("written at main.main (main.go:{wrote})")),
        "{text}"
    );
    assert!(
        text.contains(&format!("main.main (main.go:{wrote}) (written)")),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&json).unwrap(),
        std::fs::read(json.with_extension("replayed.json")).unwrap(),
        "a replay rebuilds the JSON report byte for byte"
    );
}

/// The map made before the trace has no creation site, but every stack that wrote to it while
/// traced points at the fixture's own line, and so do its suspect entry and its site row.
fn assert_written_at(report: &serde_json::Value, map: &serde_json::Value, line: u64) {
    assert!(map["site"].is_null(), "{map}");
    let writers = map["writers"].as_array().unwrap();
    assert!(!writers.is_empty(), "{map}");
    for writer in writers {
        let site = &writer["site"];
        assert_eq!(site["function"], "main.main", "{writer}");
        assert_eq!(site["line"], line, "{writer}");
        assert!(
            site["file"].as_str().unwrap().ends_with("main.go"),
            "{writer}"
        );
        // The direct caller, read apart from the frame-pointer walk, appears once.
        let stack = writer["stack"].as_array().unwrap();
        assert!(stack.windows(2).all(|pair| pair[0] != pair[1]), "{writer}");
    }
    // The first writes seen all carry a stack, and they are inserts.
    let sampled: u64 = writers.iter().map(|w| w["inserts"].as_u64().unwrap()).sum();
    assert!(sampled >= 4, "{map}");
    let suspect = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|suspect| suspect["addr"] == map["addr"])
        .expect("the map made before the trace is a suspect");
    assert_eq!(suspect["written_at"]["line"], line, "{suspect}");
    let site = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| site["by"] == "writer" && site["site"]["line"] == line)
        .expect("a site row for the writer");
    assert_eq!(site["site"]["function"], "main.main", "{site}");
    assert!(site["live_maps"].as_u64() >= Some(1), "{site}");
    assert_eq!(site["maps_created"], 0, "{site}");
}

macro_rules! verdict_tests {
    ($($test:ident: $version:literal $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $test() {
            verdicts_match_life_stories($version, &[$(($key, $value))?], stringify!($test));
        }
    )*};
}

verdict_tests! {
    verdicts_go1_19: "1.19";
    verdicts_go1_21: "1.21.13";
    verdicts_go1_22: "1.22.10";
    verdicts_go1_23: "1.23.9";
    verdicts_go1_24: "1.24.11";
    verdicts_go1_24_classic: "1.24.11", "GOEXPERIMENT" = "noswissmap";
    verdicts_go1_25: "1.25.5";
    verdicts_go1_25_classic: "1.25.5", "GOEXPERIMENT" = "noswissmap";
    verdicts_go1_26: "1.26.6";
    verdicts_go1_27: "1.27.3";
}
