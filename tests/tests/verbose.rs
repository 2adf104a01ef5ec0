//! `--verbose` loads the BPF programs with their diagnostics on and reads them, and the trace
//! stays exact; without it, the programs say nothing.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{build, map_at, report_path, trace_ground_truth, Flavor, GroundTruthRun};

/// Traces the maps fixture once with `extra` arguments; returns gomaptrace's stderr and
/// checks every map's count against the fixture's.
fn trace_maps(test: &str, extra: &[&str]) -> Vec<String> {
    let binary = build("maps", "1.24.11", Flavor::Plain, &[]);
    let GroundTruthRun {
        truths,
        report,
        fixture_exit,
        stderr,
    } = trace_ground_truth(&binary, &report_path(test), extra);
    assert_eq!(
        fixture_exit.code(),
        Some(3),
        "the maps fixture's own status"
    );
    assert!(!truths.is_empty());
    for truth in &truths {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["unexplained"], 0, "{name}: {map}");
    }
    stderr
}

#[test]
fn verbose_reads_the_programs_diagnostics_and_counts_stay_exact() {
    let stderr = trace_maps("verbose_on", &["--verbose"]);
    // Every map here is readable, so the programs have nothing to explain; what they would
    // say is a `gomaptrace: bpf <level>:` line, and nothing else may look like one.
    for line in &stderr {
        if let Some(message) = line.strip_prefix("gomaptrace: bpf ") {
            assert!(
                ["error:", "warn:", "info:", "debug:", "trace:"]
                    .iter()
                    .any(|level| message.starts_with(level)),
                "{line}"
            );
        }
    }
}

#[test]
fn without_verbose_the_programs_say_nothing() {
    let stderr = trace_maps("verbose_off", &[]);
    assert!(
        !stderr
            .iter()
            .any(|line| line.starts_with("gomaptrace: bpf ")),
        "{stderr:#?}"
    );
}
