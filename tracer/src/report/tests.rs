//! The report built from recorded models: JSON contract, verdicts, text.

use super::*;
use crate::inspect::SourceFrame;
use crate::model::{Limits, Model};
use crate::plan::MapImplementation;
use crate::verdict::{Storage, Thresholds, Verdict, Window};
use tracer_common::{kind, CreateEvent, MapEvent, STACK_DEPTH};

const MAP: u64 = 0x00c0_000a_0000;
const MAP_TYPE: u64 = 0x4a_b000;
const CALLER: u64 = 0x40_2000;

fn event(kind: u8, count: u64, at: u64) -> MapEvent {
    MapEvent {
        ktime_ns: 1_000_000_000 + at * 500_000_000,
        map: MAP,
        count,
        header_word: 7,
        map_type: if kind == kind::ASSIGN { MAP_TYPE } else { 0 },
        key_hash: 0,
        kind,
        flags: 0,
        folded: 0,
    }
}

fn resolved() -> Resolved {
    let frame = |function: &str, line| SourceFrame {
        function: function.into(),
        file: "/src/app/main.go".into(),
        line,
    };
    let mut resolved = Resolved::default();
    resolved
        .frames
        .insert(0x40_1000, vec![frame("runtime.makemap_small", 3)]);
    resolved.frames.insert(
        CALLER,
        vec![frame("main.newIndex", 17), frame("main.main", 40)],
    );
    resolved.types.insert(
        MAP_TYPE,
        MapTypeInfo {
            name: "map[string]int".into(),
            storage: Storage {
                bucket_bytes: 136,
                slots_per_bucket: 8,
            },
        },
    );
    resolved
}

fn sample() -> Report {
    sample_with(resolved())
}

fn sample_with(resolved: Resolved) -> Report {
    let mut model = Model::new(MapImplementation::Swiss, Limits::default());
    let mut stack = [0u64; STACK_DEPTH];
    stack[0] = 0x40_1000;
    model
        .observe_create(&CreateEvent {
            event: event(kind::CREATE, 0, 0),
            caller: CALLER,
            stack_len: 1,
            gc_cycle: 0,
            stack,
        })
        .unwrap();
    model.observe(&event(kind::ASSIGN, 0, 1)).unwrap();
    // The first insert gives the map its first group.
    model.observe(&event(kind::GROW, 0, 1)).unwrap();
    model.observe(&event(kind::ASSIGN, 1, 2)).unwrap();
    model.settle_with_read(MAP, [2, 7]);
    report_of(&model, &resolved)
}

/// The report of `model` for a swiss-map target traced from 1 s to 3 s with default
/// thresholds.
fn report_of(model: &Model, resolved: &Resolved) -> Report {
    let context = ReportContext {
        target: TargetInfo {
            pid: 42,
            exe: "/srv/app".into(),
            go_version: "go1.24.11".into(),
            exited: false,
            peak_rss_bytes: None,
            container: None,
            ns_pid: None,
        },
        window: Window {
            start_ns: 1_000_000_000,
            end_ns: 3_000_000_000,
        },
        lost: 0,
        implementation: MapImplementation::Swiss,
        thresholds: Thresholds::default(),
        sample_one_in: 0,
        resolved,
    };
    Report::new(model, &context)
}

#[test]
fn json_has_the_documented_shape() {
    let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
    let map = &json["maps"][0];
    assert_eq!(map["addr"], "0xc0000a0000");
    assert_eq!(
        (map["live"].as_u64(), map["inserts"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(map["last_seen_s"].as_f64(), Some(1.0));
    assert_eq!(
        (map["grows"].as_u64(), map["reorganisations"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(map["created"], true);
    assert_eq!(map["type"], "map[string]int");
    // The probed runtime frame is skipped; the inlined caller comes first.
    assert_eq!(map["site"]["function"], "main.newIndex");
    assert_eq!(map["site"]["line"], 17);
    assert_eq!(map["stack"].as_array().unwrap().len(), 3);
    assert_eq!(map["est_bytes"], 48 + 136);
    assert_eq!(map["lifetime_s"].as_f64(), Some(2.0));
    assert!(map["verdicts"].as_array().unwrap().is_empty());
    assert_eq!(json["target"]["go_version"], "go1.24.11");
    assert_eq!(json["events"]["received"], 4);
    assert_eq!(json["sites"][0]["maps_created"], 1);
    assert_eq!(json["sites"][0]["live_entries"], 2);
    assert_eq!(json["histograms"]["map_peak_entries"]["max"], 2.0);
    assert_eq!(json["histograms"]["map_lifetime_s"]["count"], 1);
}

#[test]
fn held_by_names_the_variable_or_says_unknown() {
    let json = serde_json::to_value(sample()).unwrap();
    assert_eq!(json["maps"][0]["held_by"], "unknown");

    let mut named = resolved();
    named.held_by.insert(MAP, "main.cache.byID".into());
    let mut report = sample_with(named);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["maps"][0]["held_by"], "main.cache.byID");

    // Under a suspect, the text names the holder; an unknown one is not printed.
    let suspect = |held_by: &str| Suspect {
        verdict: Verdict::NeverReleased,
        addr: "0xc0000a0000".into(),
        map_type: None,
        site: None,
        held_by: held_by.into(),
        written_at: None,
        live: 2,
        peak: 2,
        growth_per_s: 1.0,
        projected_growth_1h: 3600.0,
        confidence: None,
        est_bytes: None,
        reclaimable_bytes: None,
        idle: false,
        capacity: None,
    };
    report.verdicts = vec![suspect("main.cache.byID")];
    let text = report.render_text(10);
    assert!(
        text.contains("\n                    held by main.cache.byID\n"),
        "{text}"
    );
    report.verdicts = vec![suspect(UNKNOWN_HOLDER)];
    assert!(!report.render_text(10).contains("held by"));
}

#[test]
fn json_is_written_whole_and_in_place() {
    let dir = std::env::temp_dir().join(format!("gomaptrace-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.json");
    sample().write_json(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file remains");
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back["maps"][0]["peak"], 2);
    assert!(sample()
        .write_json(&dir.join("missing/report.json"))
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn text_leads_with_a_summary_then_suspects_and_sites() {
    let text = sample().render_text(10);
    assert!(text.starts_with(
        "gomaptrace: pid 42 (/srv/app, go1.24.11): 2.0 s, 1 maps (0 released), 4 events, 0 lost"
    ), "{text}");
    assert!(text.contains("SUSPECTS: none"));
    assert!(text.contains("main.newIndex (main.go:17)"));
    assert!(text.contains("0xc0000a0000"));
}

#[test]
fn folds_that_reached_no_map_are_said_in_one_line() {
    let mut report = sample();
    assert!(!report.render_text(10).contains("FOLDS"));
    report.events.folded = 40;
    report.events.folded_uncredited = 3;
    let text = report.render_text(10);
    let line = text
        .lines()
        .find(|line| line.starts_with("FOLDS: 3 of 40 writes folded"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!line.contains("  "), "{line}");
    assert!(
        line.ends_with("listed or not, are short by that many"),
        "{line}"
    );
}

#[test]
fn a_containerized_target_is_named_on_the_first_line_and_in_json() {
    let mut report = sample();
    report.target.container = Some(crate::container::ContainerInfo {
        id: "342a6fb4e6124d84dd97f8e7408b8e0e7e2f062a91e377b8bf439c864b1a940b".into(),
        name: Some("leakzoo".into()),
        runtime: Some("podman".into()),
        cgroup: "/libpod_parent/libpod-342a6fb4e612".into(),
    });
    report.target.ns_pid = Some(1);
    let text = report.render_text(10);
    assert!(
        text.starts_with(
            "gomaptrace: pid 42 (/srv/app, go1.24.11) in podman container leakzoo \
         (342a6fb4e612), pid 1 inside: 2.0 s"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["target"]["container"]["name"], "leakzoo");
    assert_eq!(json["target"]["ns_pid"], 1);
    let host = serde_json::to_value(sample()).unwrap();
    assert!(host["target"].get("container").is_none(), "{host}");
    let old: TargetInfo = serde_json::from_str(
        r#"{"pid": 1, "exe": "/a", "go_version": "go1.22.1", "exited": false}"#,
    )
    .unwrap();
    assert_eq!((old.container, old.ns_pid), (None, None));
}

/// A map made before the trace, written by `main.fill` (line 70), that keeps growing.
fn written_before_the_trace() -> Report {
    const WRITER: u64 = 0x40_5000;
    let mut model = Model::new(MapImplementation::Swiss, Limits::default());
    let mut stack = [0u64; STACK_DEPTH];
    stack[..2].copy_from_slice(&[0x40_4000, 0x40_6000]);
    // One insert every 45 ms across the 2 s window; the first four carry a stack.
    let at = |count: u64| MapEvent {
        ktime_ns: 1_000_000_000 + (count - 10) * 45_000_000,
        ..event(kind::ASSIGN, count, 0)
    };
    for count in 10..14 {
        model
            .observe_create(&CreateEvent {
                event: at(count),
                caller: WRITER,
                stack_len: 2,
                gc_cycle: 0,
                stack,
            })
            .unwrap();
    }
    for count in 14..54 {
        model.observe(&at(count)).unwrap();
    }
    model.freeze(3_000_000_000);
    model.settle_with_read(MAP, [54, 7]);
    let mut resolved = resolved();
    let frame = |function: &str, line| SourceFrame {
        function: function.into(),
        file: "/src/app/main.go".into(),
        line,
    };
    resolved
        .frames
        .insert(0x40_4000, vec![frame("runtime.mapassign_fast64", 200)]);
    resolved.frames.insert(WRITER, vec![frame("main.fill", 70)]);
    resolved
        .frames
        .insert(0x40_6000, vec![frame("main.main", 90)]);
    report_of(&model, &resolved)
}

#[test]
fn maps_made_before_the_trace_are_located_by_their_writers() {
    let report = written_before_the_trace();
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let map = &json["maps"][0];
    assert_eq!(map["created"], false);
    assert!(map["site"].is_null());
    let writers = map["writers"].as_array().unwrap();
    assert_eq!(writers.len(), 1, "{writers:#?}");
    assert_eq!(writers[0]["site"]["function"], "main.fill");
    assert_eq!(writers[0]["site"]["line"], 70);
    assert_eq!(writers[0]["stack"].as_array().unwrap().len(), 3);
    assert_eq!(
        (
            writers[0]["inserts"].as_u64(),
            writers[0]["deletes"].as_u64()
        ),
        (Some(4), Some(0))
    );
    assert_eq!(map["inserts"], 44, "{map}");

    let suspect = &json["verdicts"][0];
    assert_eq!(suspect["verdict"], "never-released");
    assert_eq!(suspect["written_at"]["line"], 70);
    let site = &json["sites"][0];
    assert_eq!(
        (site["by"].as_str(), site["site"]["line"].as_u64()),
        (Some("writer"), Some(70))
    );
    assert_eq!(
        (site["live_maps"].as_u64(), site["maps_created"].as_u64()),
        (Some(1), Some(0))
    );

    let text = report.render_text(10);
    assert!(text.contains("created before the trace"), "{text}");
    assert!(text.contains("written at main.fill (main.go:70)"), "{text}");
    assert!(text.contains("main.fill (main.go:70) (written)"), "{text}");

    // A created map's site row says so.
    let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
    assert_eq!(json["sites"][0]["by"], "creation");
    assert!(json["verdicts"].as_array().unwrap().is_empty());
}

#[test]
fn a_leak_reports_its_rate_projection_and_confidence() {
    let mut model = Model::new(MapImplementation::Swiss, Limits::default());
    // One insert every 20 ms for the whole 2 s window: 50 entries a second.
    for count in 0..100 {
        model
            .observe(&MapEvent {
                ktime_ns: 1_000_000_000 + count * 20_000_000,
                ..event(kind::ASSIGN, count, 0)
            })
            .unwrap();
    }
    model.freeze(3_000_000_000);
    model.settle_with_read(MAP, [100, 7]);
    let resolved = resolved();
    let report = report_of(&model, &resolved);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let suspect = &json["verdicts"][0];
    assert_eq!(suspect["verdict"], "never-released");
    assert_eq!(suspect["growth_per_s"], 50.0);
    assert_eq!(suspect["projected_growth_1h"], 180_000.0);
    assert_eq!(
        suspect["confidence"],
        serde_json::json!({"window_s": 2.0, "intervals": 10, "rising": 10})
    );
    let map = &json["maps"][0];
    assert_eq!(map["verdicts"], serde_json::json!(["never-released"]));
    assert_eq!(map["growth_per_s"], 50.0);
    assert_eq!(map["confidence"], suspect["confidence"]);
    let text = report.render_text(10);
    assert!(
        text.contains("+50/s (+180000 in 1 h)  holds ~")
            && text.contains("rising in 10/10 of 2.0 s"),
        "{text}"
    );
}

#[test]
fn sizes_read_like_people_write_them() {
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(5 << 20), "5.0 MiB");
}
