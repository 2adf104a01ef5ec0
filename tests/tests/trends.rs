//! The leak verdict reads the shape of each map's count, across the Go releases (the
//! `trends` fixture): slow leaks and leaks whose eviction cannot keep up are flagged, with
//! their rate, a one-hour projection and the evidence behind them; a map filled at warm-up,
//! one that stopped growing, a balanced one and one emptied again and again are not. Every
//! map's `live` equals the fixture's own `len`.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{build, map_at, report_path, trace_ground_truth, Flavor, GroundTruthRun};

/// Each map of the fixture, whether it leaks, and the rate it was written to grow at
/// (entries per second; the fixture's sleeps make the real rate a little lower).
const EXPECTED: [(&str, bool, f64); 8] = [
    ("startup", true, 20.0),
    ("slow", true, 20.0),
    ("evicting", true, 20.0),
    ("ten-per-second", true, 10.0),
    ("warm-up", false, 0.0),
    ("stopped", false, 0.0),
    ("balanced", false, 0.0),
    ("cleared", false, 0.0),
];

fn trends_are_judged(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("trends", version, Flavor::Plain, env);
    let json = report_path(test);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        ..
    } = trace_ground_truth(&binary, &json, &[]);
    assert!(fixture_exit.success());
    assert_eq!(report["events"]["lost"], 0);

    assert_eq!(truths.len(), EXPECTED.len(), "{truths:#?}");
    for (truth, (name, leaks, rate)) in truths.iter().zip(EXPECTED) {
        assert_eq!(truth.text("name"), name);
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
        let verdicts = map["verdicts"].as_array().unwrap();
        let expected: Vec<&str> = leaks.then_some("never-released").into_iter().collect();
        assert_eq!(verdicts, &expected, "{name}: {map}");
        if !leaks {
            continue;
        }
        let growth = map["growth_per_s"].as_f64().unwrap();
        assert!(
            growth > rate * 0.4 && growth <= rate * 1.05,
            "{name}: {growth}/s, written at {rate}/s (less when its sleeps overshoot): {map}"
        );
        let window_s = map["confidence"]["window_s"].as_f64().unwrap();
        let initial = truth
            .fields
            .get("initial")
            .map_or(0, |_| truth.number("initial"));
        let net = (truth.number("len") - initial) as f64;
        assert!(
            (growth - net / window_s).abs() < 1e-6 * growth,
            "{name}: made empty, so its rate is its len over its window: {map}"
        );
        let projected = map["projected_growth_1h"].as_f64().unwrap();
        assert!(
            (projected - growth * 3600.0).abs() < 1e-6 * projected,
            "{map}"
        );
        let confidence = &map["confidence"];
        assert_eq!(confidence["intervals"], 10, "{name}: {map}");
        assert!(confidence["rising"].as_u64() >= Some(8), "{name}: {map}");
        assert!((4.5..7.0).contains(&window_s), "{name}: {map}");

        let suspect = report["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|suspect| suspect["addr"] == truth.text("addr"))
            .unwrap_or_else(|| panic!("{name} is not among the suspects"));
        assert_eq!(suspect["verdict"], "never-released");
        assert_eq!(suspect["growth_per_s"], map["growth_per_s"]);
        assert_eq!(suspect["projected_growth_1h"], map["projected_growth_1h"]);
        assert_eq!(suspect["confidence"], map["confidence"]);
        if truth.fields.contains_key("wrote") {
            // Made in init(): located by the line that writes to it.
            assert_eq!(map["created"], false, "{name}: {map}");
            assert!(map["site"].is_null(), "{name}: {map}");
            assert_eq!(
                suspect["written_at"]["line"],
                truth.number("wrote"),
                "{name}: {suspect}"
            );
            assert_eq!(suspect["written_at"]["function"], "main.main", "{suspect}");
        } else {
            assert_eq!(map["created"], true, "{name}: {map}");
        }
    }
    let suspects = report["verdicts"].as_array().unwrap();
    assert_eq!(suspects.len(), 4, "{suspects:#?}");
}

macro_rules! trend_tests {
    ($($test:ident: $version:literal $(, $key:literal = $value:literal)?;)*) => {$(
        #[test]
        fn $test() {
            trends_are_judged($version, &[$(($key, $value))?], stringify!($test));
        }
    )*};
}

trend_tests! {
    trends_go1_19: "1.19";
    trends_go1_21: "1.21.13";
    trends_go1_22: "1.22.10";
    trends_go1_23: "1.23.9";
    trends_go1_24: "1.24.11";
    trends_go1_24_classic: "1.24.11", "GOEXPERIMENT" = "noswissmap";
    trends_go1_25: "1.25.5";
    trends_go1_26: "1.26.6";
    trends_go1_27: "1.27.3";
}
