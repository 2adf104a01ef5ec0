//! gomaptrace's growth counts against the runtime's own account (the `growth` fixture reads
//! its maps' headers after every operation): capacity growth and reorganisation without
//! growing, exactly, on both map implementations.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{build, map_at, report_path, trace_ground_truth, Flavor, GroundTruthRun};

/// The map implementation a build uses, and what that implies for growth.
#[derive(Clone, Copy, Debug)]
enum Runtime {
    /// `runtime.hmap`, doubling when a map passes `load_factor_num / 2` entries per bucket
    /// (`loadFactorNum` in the release's `runtime/map.go`: 12 in Go 1.21, 13 otherwise).
    Classic { load_factor_num: u64 },
    /// Swiss tables; `prunes` when the release clears tombstones in place (Go 1.25+).
    Swiss { prunes: bool },
}

/// Buckets doublings of a classic map filled with `entries` keys from empty: Go grows while
/// `overLoadFactor(count, B)`, `count > 8 && count > loadFactorNum * (2^B / 2)`.
fn classic_doublings(entries: u64, load_factor_num: u64) -> u64 {
    let mut log2_buckets = 0;
    while entries > 8 && entries > load_factor_num * ((1 << log2_buckets) / 2) {
        log2_buckets += 1;
    }
    log2_buckets
}

/// Capacity growths of a swiss map filled with `entries` (at most 896) keys from empty: its
/// first group, its first table of 16 slots, then a doubling whenever the table is 7/8 full.
fn swiss_growths(entries: u64) -> u64 {
    let mut growths = u64::from(entries > 0) + u64::from(entries > 8);
    let mut capacity = 16;
    while entries > capacity * 7 / 8 {
        capacity *= 2;
        growths += 1;
    }
    growths
}

fn growth_matches_the_runtime(version: &str, env: &[(&str, &str)], runtime: Runtime, test: &str) {
    let binary = build("growth", version, Flavor::Plain, env);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &report_path(test), &[]);
    assert!(fixture_exit.success());

    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(report["events"]["malformed"], 0);
    let names: Vec<&str> = truths.iter().map(|truth| truth.text("name")).collect();
    assert_eq!(names, ["fill800", "churn90", "churn60"]);
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        for field in ["inserts", "deletes", "grows", "reorganisations"] {
            assert_eq!(map[field], truth.number(field), "{field} of {name}: {map}");
        }
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        assert_eq!(map["unsettled"], 0, "{name}: {map}");
    }

    // The fixture's account is itself what Go's rules predict, where they predict anything.
    let (fill, churn90, churn60) = (&truths[0], &truths[1], &truths[2]);
    assert_eq!(fill.number("reorganisations"), 0, "{fill:?}");
    match runtime {
        Runtime::Classic { load_factor_num } => {
            assert_eq!(
                fill.number("grows"),
                classic_doublings(800, load_factor_num),
                "{fill:?}"
            );
            // Churn never passes the load factor: only same-size growths.
            for churn in [churn90, churn60] {
                assert_eq!(
                    churn.number("grows"),
                    classic_doublings(churn.number("len"), load_factor_num),
                    "{churn:?}"
                );
            }
            assert!(churn90.number("reorganisations") > 0, "{churn90:?}");
        }
        Runtime::Swiss { prunes } => {
            assert_eq!(fill.number("grows"), swiss_growths(800), "{fill:?}");
            if prunes {
                assert!(churn60.number("reorganisations") > 0, "{churn60:?}");
            } else {
                // Go 1.24 cannot clear tombstones: a churned table grows instead.
                for churn in [churn90, churn60] {
                    assert_eq!(churn.number("reorganisations"), 0, "{churn:?}");
                    assert!(
                        churn.number("grows") > swiss_growths(churn.number("len")),
                        "{churn:?}"
                    );
                }
            }
        }
    }
}

macro_rules! growth_tests {
    ($($test:ident: $version:literal, $runtime:expr $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $test() {
            growth_matches_the_runtime(
                $version,
                &[$(($key, $value))?],
                $runtime,
                stringify!($test),
            );
        }
    )*};
}

const CLASSIC: Runtime = Runtime::Classic {
    load_factor_num: 13,
};

growth_tests! {
    growth_go1_19: "1.19", CLASSIC;
    growth_go1_21: "1.21.13", Runtime::Classic { load_factor_num: 12 };
    growth_go1_23: "1.23.9", CLASSIC;
    growth_go1_24: "1.24.11", Runtime::Swiss { prunes: false };
    growth_go1_24_classic: "1.24.11", CLASSIC, "GOEXPERIMENT" = "noswissmap";
    growth_go1_25: "1.25.5", Runtime::Swiss { prunes: true };
    growth_go1_25_classic: "1.25.5", CLASSIC, "GOEXPERIMENT" = "noswissmap";
    growth_go1_26: "1.26.6", Runtime::Swiss { prunes: true };
    growth_go1_27: "1.27.3", Runtime::Swiss { prunes: true };
}

#[test]
fn growth_rules_match_what_go_does() {
    // Checked against real maps filled from empty: B of 800 keys is 7 at 6.5 entries per
    // bucket, 8 at Go 1.21's 6; a swiss map of 800 keys ends in one table of 1024 slots.
    assert_eq!(classic_doublings(8, 13), 0);
    assert_eq!(classic_doublings(9, 13), 1);
    assert_eq!(classic_doublings(800, 13), 7);
    assert_eq!(classic_doublings(800, 12), 8);
    assert_eq!(classic_doublings(90, 12), 4);
    assert_eq!(
        (swiss_growths(0), swiss_growths(8), swiss_growths(9)),
        (0, 1, 2)
    );
    assert_eq!((swiss_growths(14), swiss_growths(15)), (2, 3));
    assert_eq!(swiss_growths(800), 8);
}
