//! Exact mode folds most writes on the BPF side (`tracer_common::writers`): a run of them
//! reaches the model with the map's next record, or, for a map no longer written, when the
//! tracer reads the runs of past fold epochs. A map filled in a burst and then left alone
//! must still be counted whole while the trace goes on, not only in the final report.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{
    build, map_at, report_path, wait_for_report, Fixture, Flavor, Tracer, Truth,
};

const GO: &str = "1.24.11";

#[test]
fn a_map_left_alone_after_a_burst_is_counted_whole_while_tracing() {
    let binary = build("burst", GO, Flavor::Plain, &[]);
    let json = report_path("folds_burst");
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid().to_string();
    let tracer = Tracer::attach(&[
        "--pid",
        &pid,
        "--mode",
        "exact",
        "--interval",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let truths = Truth::parse(&fixture.run_operations());
    let burst = &truths[0];
    let (addr, len) = (burst.text("addr").to_string(), burst.number("len"));
    // The fixture is idle from here: only the tracer's own reads can bring the last run in.
    let report = wait_for_report(&json, "the burst map counted whole", |report| {
        report["maps"].as_array().is_some_and(|maps| {
            maps.iter()
                .any(|map| map["addr"] == addr.as_str() && map["live"] == len)
        })
    });
    let map = map_at(&report, &addr);
    assert_eq!(map["inserts"], len, "{map}");
    assert_eq!(map["unexplained"], 0, "{map}");
    assert!(report["events"]["folded"].as_u64().unwrap() > 0, "{report}");
    let (status, stderr) = tracer.interrupt();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert!(fixture.finish().success());
}
