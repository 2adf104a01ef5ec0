//! gomaptrace on real programs built by Go 1.17 and 1.18 (releases no toolchain here can
//! build): esbuild's stripped npm releases, fetched by `cargo xtask setup`, minifying a
//! generated JavaScript file read from stdin while traced to their exit.
//!
//! esbuild prints no ground truth about its maps, so what can be said is checked: its output
//! and exit status are byte for byte those of an untraced run; the report names the right
//! Go release, lost no event and found nothing it cannot explain; every map's numbers agree
//! with each other (a map created while traced holds exactly what its inserts, deletes and
//! clears leave); map types and creation sites are read from the stripped binary.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Instant;

use integration_tests::{read_report, report_path, wait_with_timeout, Tracer, STEP_TIMEOUT};
use serde_json::Value;
use tracer::gofixture::released_go_program;

/// A JavaScript module of 600 functions with nested scopes, object literals and classes
/// (about 7,000 names and keys): esbuild's parser makes a map per scope, keyed by the names
/// declared in it, and others to find duplicate keys in object literals, then renames and
/// minifies. That is over 6,000 maps, fewer than the 10,000 released maps a report lists one
/// by one, so that every map is checked.
fn generated_input() -> Vec<u8> {
    let mut js = String::new();
    for i in 0..600 {
        let _ = writeln!(
            js,
            "export function scope{i}(first{i}, second{i}) {{\n\
             \x20 const table{i} = {{ \"key{i}_a\": first{i}, \"key{i}_b\": second{i}, \
             nested{i}: {{ deep{i}: [first{i}, \"text {i}\"] }} }};\n\
             \x20 let total{i} = {i};\n\
             \x20 for (const name{i} in table{i}) {{ if (typeof table{i}[name{i}] === \
             \"number\") total{i} += table{i}[name{i}]; }}\n\
             \x20 class Shape{i} {{ area{i}() {{ return total{i} * second{i}; }} }}\n\
             \x20 return new Shape{i}().area{i}() + table{i}.key{i}_a;\n\
             }}"
        );
    }
    js.into_bytes()
}

/// A running esbuild minifying stdin to stdout.
struct Esbuild {
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
}

impl Esbuild {
    /// Starts `binary`; it waits for its whole input before doing anything.
    fn start(binary: &Path) -> Esbuild {
        let mut child = Command::new(binary)
            .args(["--loader=js", "--minify"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut pipe = child.stdout.take().expect("piped");
        let stdout = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("esbuild stdout");
            bytes
        });
        Esbuild { child, stdout }
    }

    /// Feeds `input`, closes stdin and returns the exit status and what esbuild printed.
    fn finish(mut self, input: &[u8]) -> (ExitStatus, Vec<u8>) {
        let mut stdin = self.child.stdin.take().expect("stdin still open");
        stdin.write_all(input).expect("esbuild stdin");
        drop(stdin);
        let status = wait_with_timeout(&mut self.child, "esbuild");
        (status, self.stdout.join().expect("stdout reader"))
    }
}

/// A JSON number that must be a non-negative integer.
fn count(value: &Value, context: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{value} is not a count: {context}"))
}

/// Traces esbuild `version` (amd64) to its exit and checks the report as the module says.
fn consistent_counts(version: &str, go: &str, test: &str) {
    let started = Instant::now();
    let binary = released_go_program(version, "amd64");
    let input = generated_input();
    let alone = Esbuild::start(&binary).finish(&input);
    assert!(alone.0.success(), "untraced esbuild failed: {:?}", alone.0);

    let esbuild = Esbuild::start(&binary);
    let json = report_path(test);
    let pid = esbuild.child.id().to_string();
    // Every map listed (not only the biggest 1000), so that every map is checked.
    let tracer = Tracer::attach(&[
        "--pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        "--max-maps",
        "1000000",
    ]);
    let traced = esbuild.finish(&input);
    let (status, stderr) = tracer.wait();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert_eq!(traced.0.code(), alone.0.code(), "exit status");
    assert!(traced.1 == alone.1, "traced output differs");

    let report = read_report(&json);
    assert_eq!(report["target"]["go_version"], go);
    assert_eq!(report["target"]["exited"], true);
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(report["events"]["malformed"], 0);
    assert_eq!(
        report["released_unlisted"], 0,
        "every map is listed, so every map is checked"
    );
    assert_eq!(report["maps_unlisted"], 0, "--max-maps lists every map");
    let maps = report["maps"].as_array().expect("maps array");
    for map in maps {
        assert_eq!(map["unexplained"], 0, "{map}");
        // The target exited: the last operation of a map may never be seen settled.
        assert!(count(&map["unsettled"], map) <= 1, "{map}");
        assert_eq!(map["released"], true, "everything is freed at exit: {map}");
        let live = count(&map["live"], map);
        assert!(count(&map["peak"], map) >= live, "{map}");
        if let Some(name) = map["type"].as_str() {
            assert!(name.starts_with("map[") && !name.contains('?'), "{map}");
        }
        if map["created"] == true && map["cloned"] == false {
            let inserts = count(&map["inserts"], map);
            let kept = inserts - count(&map["deletes"], map);
            assert!(count(&map["peak"], map) <= inserts, "{map}");
            if count(&map["clears"], map) == 0 {
                assert_eq!(live, kept, "inserts − deletes: {map}");
            } else {
                assert!(live <= kept, "clears only remove: {map}");
            }
        }
    }
    let created_and_filled = maps
        .iter()
        .filter(|map| map["created"] == true && count(&map["inserts"], map) > 0)
        .count();
    assert!(
        created_and_filled >= 1000,
        "{created_and_filled} maps created and filled while traced"
    );
    let esbuild_site = maps
        .iter()
        .filter_map(|map| map["site"].as_object())
        .any(|site| {
            site["function"]
                .as_str()
                .is_some_and(|function| function.starts_with("github.com/evanw/esbuild/"))
                && site["line"].as_u64().is_some_and(|line| line > 0)
        });
    assert!(esbuild_site, "creation sites name esbuild's own code");
    eprintln!(
        "{test}: {} maps listed ({} more released), {created_and_filled} created and filled, \
         {} events, {:.1} s",
        maps.len(),
        report["released_unlisted"],
        report["events"]["received"],
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < STEP_TIMEOUT, "too slow for a test");
}

#[test]
fn counts_agree_on_go1_17() {
    consistent_counts("0.13.15", "go1.17.2", "released_go1_17");
}

#[test]
fn counts_agree_on_go1_18() {
    consistent_counts("0.14.30", "go1.18", "released_go1_18");
}
