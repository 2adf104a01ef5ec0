//! Entry sampling follows one key in N, chosen on the BPF side by a salted hash of the key's
//! bytes. Keys longer than the bytes hashed whole must still spread over the sample: a hash
//! of their shared part alone gives every key of the map one hash, and the sample then holds
//! all of them or none, as if they were one key.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use integration_tests::{build, report_path, trace_ground_truth, Flavor};

const GO: &str = "1.24.11";

/// Distinct keys the fixture inserts and deletes in each of its two maps (its default).
const KEYS_PER_MAP: u64 = 4096;

#[test]
fn long_keys_sharing_a_prefix_or_a_suffix_are_sampled_one_in_n() {
    let binary = build("longkeys", GO, Flavor::Plain, &[]);
    let json = report_path("long_keys_sampled");
    let run = trace_ground_truth(&binary, &json, &["--sample-keys", "4"]);
    assert!(run.fixture_exit.success());
    assert_eq!(run.truths.len(), 2);
    for truth in &run.truths {
        assert_eq!(truth.number("keys"), KEYS_PER_MAP, "{truth:?}");
        assert_eq!(truth.number("len"), 0, "{truth:?}");
    }
    let report = &run.report;
    assert_eq!(
        report["entries"]["sample_one_in"], 4,
        "{}",
        report["entries"]
    );
    assert_eq!(report["entries"]["live"], 0, "{}", report["entries"]);
    // Every followed key is inserted and deleted while traced, so each is one lifetime.
    // Expected: a quarter of both maps' keys, 2,048, with a standard deviation of about 28.
    // With one map's keys all alike to the hash, that map adds 0 or 1 instead of about 1,024.
    let followed = report["histograms"]["entry_lifetime_s"]["count"]
        .as_u64()
        .expect("a count");
    let expected = 2 * KEYS_PER_MAP / 4;
    assert!(
        (expected * 3 / 4..=expected * 5 / 4).contains(&followed),
        "{followed} sampled lifetimes, expected about {expected}"
    );
}
