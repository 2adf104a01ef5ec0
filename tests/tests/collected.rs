//! A released map's last write is settled from its header as read right after a collection's
//! mark termination (`tracer_common::settle`). The `collected` fixture makes 100 per-request
//! heap maps a round, each ending on an insert or an overwrite, drops them, pauses 100 ms,
//! collects and pauses 50 ms: the next round's maps take the freed addresses, so no later
//! operation of a released map shows what its last write did, and the quiet-map read (a
//! second after the last record) would come too late. Every released map settled must have
//! ended as the fixture says its maps end, nearly all of them must be settled, and maps on a
//! goroutine's stack (which the collector does not free) never are.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::collections::HashMap;

use integration_tests::{build, trace_recorded, Flavor, GroundTruthRun};

/// The fixture's rounds and maps per round at each site.
const ROUNDS: u64 = 10;
const REQUESTS: u64 = 100;

fn released_maps_are_settled_at_collections(version: &str, flavor: Flavor, test: &str) {
    let binary = build("collected", version, flavor, &[]);
    let GroundTruthRun { truths, report, .. } = trace_recorded(&binary, test);

    let line = |name: &str| {
        truths
            .iter()
            .find(|truth| truth.text("name") == name)
            .unwrap_or_else(|| panic!("no {name} line"))
            .number("line")
    };
    let expected: HashMap<(u64, u64), u64> = truths
        .iter()
        .filter(|truth| truth.text("name") == "outcome")
        .map(|truth| {
            (
                (truth.number("live"), truth.number("overwrites")),
                truth.number("maps"),
            )
        })
        .collect();
    assert_eq!(expected.values().sum::<u64>(), ROUNDS * REQUESTS);
    let at = |function: &str, name: &str| -> Vec<&serde_json::Value> {
        report["maps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|map| map["site"]["function"] == function && map["site"]["line"] == line(name))
            .collect()
    };

    let heap = at("main.heapRequest", "heap");
    assert_eq!(heap.len() as u64, ROUNDS * REQUESTS, "every map is listed");
    let released: Vec<_> = heap.iter().filter(|map| map["released"] == true).collect();
    // All but the last round's maps, give or take the few whose memory went elsewhere.
    assert!(
        released.len() as u64 >= (ROUNDS - 2) * REQUESTS,
        "{} released",
        released.len()
    );
    let mut settled: HashMap<(u64, u64), u64> = HashMap::new();
    for map in &released {
        assert_eq!(map["unexplained"], 0, "{map}");
        if map["unsettled"] == 0 {
            assert_eq!(map["live"], map["inserts"], "{map}");
            let outcome = (
                map["live"].as_u64().unwrap(),
                map["overwrites"].as_u64().unwrap(),
            );
            *settled.entry(outcome).or_default() += 1;
        }
    }
    // A settled map ended as some map of the fixture did: no outcome more often than the
    // fixture made it.
    for (outcome, maps) in &settled {
        assert!(
            *maps <= expected.get(outcome).copied().unwrap_or(0),
            "{outcome:?}: {maps} settled, the fixture made {:?}",
            expected.get(outcome)
        );
    }
    let settled_total: u64 = settled.values().sum();
    assert!(
        settled_total * 10 >= released.len() as u64 * 9,
        "{settled_total} of {} released maps settled",
        released.len()
    );
    let at_collection = report["events"]["settled_at_collection"].as_u64().unwrap();
    assert!(
        at_collection * 10 >= released.len() as u64 * 9,
        "{at_collection} settled at collections"
    );

    // Stack maps are freed by returning: only a read after the trace (of the last one)
    // may settle one.
    let stack = at("main.stackRequest", "stack");
    assert_eq!(stack.len() as u64, ROUNDS * REQUESTS, "every map is listed");
    let stack_settled = stack
        .iter()
        .filter(|map| map["released"] == true && map["unsettled"] == 0)
        .count();
    assert!(stack_settled <= 1, "{stack_settled} stack maps settled");
}

macro_rules! collected_tests {
    ($($test:ident: $version:literal, $flavor:ident;)*) => {$(
        #[test]
        fn $test() {
            released_maps_are_settled_at_collections($version, Flavor::$flavor, stringify!($test));
        }
    )*};
}

collected_tests! {
    collected_go1_19: "1.19", Plain;
    collected_go1_22: "1.22.10", Plain;
    collected_go1_27: "1.27.3", Plain;
    collected_go1_27_stripped: "1.27.3", Stripped;
}
