//! Maps the program drops are counted released after a garbage collection. The `release`
//! fixture makes hundreds of per-request heap maps at each of two sites, keeps 8 of each,
//! and runs `runtime.GC()` twice after each batch; the memory of the first batch ("reused")
//! is then handed out again, that of the second ("collected") is not.
//!
//! With symbols, gomaptrace reads the heap's allocation bits (`"release_detection": "heap"`):
//! both sites' `live_maps` must equal the fixture's own count.
//! A stripped binary has no `runtime.mheap_`, so it falls back to re-reading idle headers
//! (`"header"`), which sees a dropped map only once its memory holds something else: the
//! reused site's count is exact; at the collected site, maps whose memory the runtime left
//! untouched still count as live, and no map the program holds is released.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{build, map_at, trace_recorded, Flavor, GroundTruthRun, Truth};

/// Maps the fixture makes at each site.
const REQUESTS: u64 = 600;

/// What the report says about one of the fixture's sites.
struct Site {
    /// The site's `live_maps`.
    live_maps: u64,
    /// The fixture's own count of live maps made there.
    expected: u64,
    /// The site's maps the report lists as released.
    released: Vec<serde_json::Value>,
}

fn site(report: &serde_json::Value, truths: &[Truth], phase: &str, function: &str) -> Site {
    let truth = truths
        .iter()
        .find(|truth| truth.text("name") == phase)
        .expect("the fixture's count");
    let site = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| {
            site["site"]["function"] == function && site["site"]["line"] == truth.number("line")
        })
        .unwrap_or_else(|| panic!("no {function} site: {:#}", report["sites"]));
    assert_eq!(site["maps_created"], REQUESTS, "{site}");
    let ring: Vec<_> = truths
        .iter()
        .filter(|ring| ring.text("name") == format!("{phase}-ring"))
        .collect();
    assert_eq!(ring.len() as u64, truth.number("live"));
    for ring in ring {
        let map = map_at(report, ring.text("addr"));
        assert_eq!(map["live"], ring.number("len"), "{map}");
        assert_eq!(map["created"], true, "{map}");
    }
    Site {
        live_maps: site["live_maps"].as_u64().unwrap(),
        expected: truth.number("live"),
        released: report["maps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|map| map["site"]["function"] == function && map["released"] == true)
            .cloned()
            .collect(),
    }
}

fn dropped_maps_are_released(
    version: &str,
    flavor: Flavor,
    env: &[(&str, &str)],
    method: &str,
    test: &str,
) {
    let binary = build("release", version, flavor, env);
    // Every map listed, so that each site's released maps can be counted in the JSON; the
    // releases are recorded inputs, so a replay makes the same decisions.
    let GroundTruthRun { truths, report, .. } = trace_recorded(&binary, test);
    assert_eq!(
        report["release_detection"], method,
        "go{version} {flavor:?}"
    );
    for map in report["maps"].as_array().unwrap() {
        // With headers only, a freed map that still counts as live is settled at the end
        // from memory the runtime may have handed to a smaller object, which overwrote the
        // count but not the seed: the one case where a count can be off, by one operation.
        let freed_unseen = method == "header"
            && map["site"]["function"] == "main.collectedRequest"
            && map["released"] == false;
        let limit = if freed_unseen { 1 } else { 0 };
        assert!(map["unexplained"].as_u64().unwrap() <= limit, "{map}");
    }

    let reused = site(&report, &truths, "reused", "main.reusedRequest");
    assert_eq!(reused.live_maps, reused.expected);
    assert_eq!(reused.released.len() as u64, REQUESTS - reused.expected);

    let collected = site(&report, &truths, "collected", "main.collectedRequest");
    if method == "heap" {
        assert_eq!(collected.live_maps, collected.expected);
        assert_eq!(
            collected.released.len() as u64,
            REQUESTS - collected.expected
        );
        for map in &collected.released {
            // Found free within about two seconds of the fixture's collection.
            assert!(map["lifetime_s"].as_f64().unwrap() < 4.0, "{map}");
        }
    } else {
        // Freed maps whose memory still holds their header cannot be told from live ones:
        // the site keeps at least the maps the program holds, never fewer (the runtime may
        // have reused or returned some of that memory by now, so not an exact count).
        assert!(
            collected.live_maps >= collected.expected,
            "{}",
            collected.live_maps
        );
    }
}

macro_rules! release_tests {
    ($($test:ident: $version:literal, $flavor:ident, $method:literal $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $test() {
            dropped_maps_are_released(
                $version,
                Flavor::$flavor,
                &[$(($key, $value))?],
                $method,
                stringify!($test),
            );
        }
    )*};
}

release_tests! {
    released_go1_19: "1.19", Plain, "heap";
    released_go1_21: "1.21.13", Plain, "heap";
    released_go1_22: "1.22.10", Plain, "heap";
    released_go1_23: "1.23.9", Plain, "heap";
    released_go1_24: "1.24.11", Plain, "heap";
    released_go1_24_noswissmap: "1.24.11", Plain, "heap", "GOEXPERIMENT" = "noswissmap";
    released_go1_25: "1.25.5", Plain, "heap";
    released_go1_25_noswissmap: "1.25.5", Plain, "heap", "GOEXPERIMENT" = "noswissmap";
    released_go1_26: "1.26.6", Plain, "heap";
    released_go1_27: "1.27.3", Plain, "heap";
    released_go1_27_pie: "1.27.3", Pie, "heap";
    released_go1_24_stripped: "1.24.11", Stripped, "header";
}
