//! Every map in view at attach, idle ones too (the `idle` fixture): a map filled to 100,000
//! entries and drained to 10 before the trace, never touched while traced, is in the report
//! with its entries and capacity equal to what the fixture reads from its own runtime
//! header, `retains-capacity`, and named by the variable that holds it; a map found idle and
//! written later is the same map, exact from its first event; a map churned while the probes
//! go on stays exact; `gomaptrace inventory` alone finds the same entries; and a
//! stripped binary's report says the inventory could not see package-level variables.
//!
//! The `hidden` fixture holds idle maps no package-level variable's DWARF path reaches (in
//! a slice, in another map, in an interface, eight pointers deep, and one only in a blocked
//! goroutine's local variable): the heap scan finds each with its entries and capacity, the
//! stack scan names the goroutine, in a trace and in `gomaptrace inventory` alone; from Go
//! 1.22 maps whose storage holds pointers are typed from the heap.
//!
//! These tests load BPF programs: they need root and fail (never skip) without it.

use std::process::Command;
use std::time::Duration;

use integration_tests::{
    assert_replays_the_same, build, map_at, read_report, report_path, tracer_bin, wait_for_report,
    Fixture, Flavor, Tracer, Truth,
};

/// Runs `gomaptrace inventory` on `pid` and returns its JSON report.
fn inventory_alone(pid: u32, test: &str) -> serde_json::Value {
    let json = report_path(&format!("{test}-alone"));
    let output = Command::new(tracer_bin())
        .args(["inventory", "--pid", &pid.to_string(), "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    read_report(&json)
}

/// The capacity fields the fixture printed, as the report writes them.
fn assert_capacity(truth: &Truth, capacity: &serde_json::Value, what: &str) {
    match truth.fields.get("b") {
        Some(b) => assert_eq!(
            capacity["log2_buckets"].to_string(),
            *b,
            "{what}: {capacity}"
        ),
        None => {
            assert_eq!(
                capacity["directory_len"].to_string(),
                truth.text("dirlen"),
                "{what}: {capacity}"
            );
            assert_eq!(
                capacity["slots"].to_string(),
                truth.text("slots"),
                "{what}: {capacity}"
            );
        }
    }
}

fn idle_maps_are_inventoried(version: &str, flavor: Flavor, env: &[(&str, &str)], test: &str) {
    let binary = build("idle", version, flavor, env);
    let json = report_path(test);
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    let recording = json.with_extension("gmt");
    let tracer = Tracer::attach(&[
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
        "--record",
        recording.to_str().unwrap(),
        "--interval",
        "250ms",
    ]);
    // The busy map is churned while the probes go on and for a while after; the fixture
    // writes to `woken` only once the inventory (a background thread) has found it, as the
    // interval report says.
    std::thread::sleep(Duration::from_millis(1500));
    wait_for_report(&json, "the inventory is in", |report| {
        !report["inventory"].is_null()
    });
    let truths = Truth::parse(&fixture.run_operations());
    let alone = inventory_alone(pid, test);
    let (status, stderr) = tracer.interrupt();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert!(fixture.finish().success());
    let report = read_report(&json);
    assert_eq!(report["events"]["lost"], 0);
    // A replay rebuilds the inventory's maps byte for byte.
    assert_replays_the_same(&recording, &json, &[]);
    for map in report["maps"].as_array().unwrap() {
        assert_eq!(map["unexplained"], 0, "{map}");
    }
    let truth = |name: &str| {
        truths
            .iter()
            .find(|truth| truth.text("name") == name)
            .unwrap_or_else(|| panic!("no {name} line: {truths:#?}"))
            .clone()
    };
    let (idle, small, busy) = (truth("idle"), truth("small"), truth("busy"));

    let woken = truth("woken");
    let busy_map = map_at(&report, busy.text("addr"));
    assert_eq!(busy_map["live"], busy.number("len"), "{busy_map}");
    assert_eq!(busy_map["idle"], false, "{busy_map}");

    let inventory = &report["inventory"];
    if flavor == Flavor::Stripped {
        assert_eq!(inventory["dwarf"], false, "{inventory}");
        assert_eq!(inventory["found"], 0, "{inventory}");
        assert!(
            inventory["blind_to"].as_str().unwrap().contains("no DWARF"),
            "{inventory}"
        );
        assert_eq!(alone["inventory"]["found"], 0, "{alone}");
        return;
    }
    assert_eq!(inventory["dwarf"], true, "{inventory}");
    assert!(inventory["found"].as_u64().unwrap() >= 4, "{inventory}");

    // Found idle, then written: the same map, exact from its first event.
    let woken_map = map_at(&report, woken.text("addr"));
    assert_eq!(woken_map["seen"], "inventory", "{woken_map}");
    assert_eq!(woken_map["idle"], false, "{woken_map}");
    assert_eq!(woken_map["live"], woken.number("len"), "{woken_map}");
    assert_eq!(woken_map["inserts"], 5, "{woken_map}");
    assert_eq!(woken_map["deletes"], 2, "{woken_map}");
    assert_eq!(woken_map["held_by"], "main.woken", "{woken_map}");

    for (truth, retains) in [(&idle, true), (&small, false)] {
        let name = truth.text("name");
        let map = map_at(&report, truth.text("addr"));
        assert_eq!(map["live"], truth.number("len"), "{name}: {map}");
        assert_eq!(map["seen"], "inventory", "{name}: {map}");
        assert_eq!(map["created"], false, "{name}: {map}");
        assert_eq!(map["idle"], true, "{name}: {map}");
        assert_eq!(map["held_by"], truth.text("holder"), "{name}: {map}");
        assert_capacity(truth, &map["capacity"], name);
        let verdicts = map["verdicts"].as_array().unwrap();
        assert_eq!(
            verdicts.iter().any(|verdict| verdict == "retains-capacity"),
            retains,
            "{name}: {map}"
        );

        let alone_map = map_at(&alone, truth.text("addr"));
        assert_eq!(
            alone_map["live"],
            truth.number("len"),
            "{name}: {alone_map}"
        );
        assert_eq!(
            alone_map["held_by"],
            truth.text("holder"),
            "{name}: {alone_map}"
        );
        assert_capacity(truth, &alone_map["capacity"], name);
        assert_eq!(
            alone_map["verdicts"], map["verdicts"],
            "{name}: {alone_map}"
        );
    }
    let idle_map = map_at(&report, idle.text("addr"));
    assert!(
        idle_map["type"].as_str().unwrap().starts_with("map[int64]"),
        "{idle_map}"
    );
    let held = idle_map["peak_est_bytes"].as_u64().unwrap();
    let reclaimable = idle_map["reclaimable_bytes"].as_u64().unwrap();
    assert!(reclaimable > held / 2 && reclaimable < held, "{idle_map}");
    let suspect = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|suspect| suspect["addr"] == idle.text("addr"))
        .expect("the idle map is a suspect");
    assert_eq!(suspect["held_by"], "main.idle");
}

macro_rules! inventory_tests {
    ($($test:ident: $version:literal, $flavor:ident, $env:expr;)*) => {$(
        #[test]
        fn $test() {
            idle_maps_are_inventoried($version, Flavor::$flavor, $env, stringify!($test));
        }
    )*};
}

inventory_tests! {
    inventory_go1_19: "1.19", Plain, &[];
    inventory_go1_21: "1.21.13", Plain, &[];
    inventory_go1_24: "1.24.11", Plain, &[];
    inventory_go1_24_noswissmap: "1.24.11", Plain, &[("GOEXPERIMENT", "noswissmap")];
    inventory_go1_27: "1.27.3", Plain, &[];
    inventory_go1_27_stripped: "1.27.3", Stripped, &[];
}

fn hidden_maps_are_inventoried(version: &str, env: &[(&str, &str)], test: &str) {
    let binary = build("hidden", version, Flavor::Plain, env);
    let json = report_path(test);
    let mut fixture = Fixture::start(&binary);
    let pid = fixture.pid();
    let tracer = Tracer::attach(&["--pid", &pid.to_string(), "--json", json.to_str().unwrap()]);
    let alone = inventory_alone(pid, test);
    let truths = Truth::parse(&fixture.run_operations());
    let (status, stderr) = tracer.interrupt();
    assert!(status.success(), "gomaptrace failed: {stderr:#?}");
    assert!(fixture.finish().success());
    let report = read_report(&json);
    assert_eq!(truths.len(), 8, "{truths:#?}");
    for (which, report) in [("trace", &report), ("alone", &alone)] {
        let inventory = &report["inventory"];
        assert_eq!(
            inventory["method"], "dwarf-roots+heap+stacks",
            "{which}: {inventory}"
        );
        assert_eq!(
            inventory["scan"]["truncated"], false,
            "{which}: {inventory}"
        );
        for truth in &truths {
            let name = truth.text("name");
            let map = map_at(report, truth.text("addr"));
            assert_eq!(map["live"], truth.number("len"), "{which} {name}: {map}");
            assert_eq!(map["seen"], "inventory", "{which} {name}: {map}");
            assert_eq!(map["idle"], true, "{which} {name}: {map}");
            assert_eq!(map["unexplained"], 0, "{which} {name}: {map}");
            let named = map["held_by"].as_str().unwrap_or_default();
            match truth.text("holder") {
                "goroutine" => assert_eq!(
                    named,
                    format!("goroutine {} stack", truth.text("goid")),
                    "{which} {name}: {map}"
                ),
                // Stack words are matched conservatively (no liveness maps): a stale word in
                // a live frame may name a stack for a map only the heap holds.
                "heap" => assert!(
                    named == "heap" || named.starts_with("goroutine "),
                    "{which} {name}: {map}"
                ),
                other => assert_eq!(named, other, "{which} {name}: {map}"),
            }
            assert_capacity(truth, &map["capacity"], name);
            let retains = map["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|verdict| verdict == "retains-capacity");
            assert_eq!(
                retains,
                ["stack", "inslice1", "deepdrained"].contains(&name),
                "{which} {name}: {map}"
            );
        }
        // From Go 1.22 the heap records the type of storage that holds pointers: it names
        // the map's type.
        if !["1.19", "1.21.13"].contains(&version) {
            for (name, expected) in [
                ("inner1", "map[int32][]uint8"),
                ("deepdrained", "map[int64]string"),
            ] {
                let truth = truths
                    .iter()
                    .find(|truth| truth.text("name") == name)
                    .unwrap();
                let map = map_at(report, truth.text("addr"));
                assert_eq!(map["type"], expected, "{which} {name}: {map}");
            }
        }
        // No false maps: every map the inventory found holds no more entries than its
        // capacity, and every map of the fixture is one of them, exactly once.
        let maps = report["maps"].as_array().unwrap();
        for map in maps {
            assert_eq!(map["unexplained"], 0, "{which}: {map}");
            if let Some(slots) = map["capacity"]["slots"].as_u64() {
                assert!(map["live"].as_u64().unwrap() <= slots, "{which}: {map}");
            }
        }
        for truth in &truths {
            let same = maps
                .iter()
                .filter(|map| map["addr"] == truth.text("addr"))
                .count();
            assert_eq!(same, 1, "{which}: {truth:?}");
        }
    }
}

macro_rules! hidden_tests {
    ($($test:ident: $version:literal, $env:expr;)*) => {$(
        #[test]
        fn $test() {
            hidden_maps_are_inventoried($version, $env, stringify!($test));
        }
    )*};
}

hidden_tests! {
    hidden_go1_19: "1.19", &[];
    hidden_go1_21: "1.21.13", &[];
    hidden_go1_24: "1.24.11", &[];
    hidden_go1_24_noswissmap: "1.24.11", &[("GOEXPERIMENT", "noswissmap")];
    hidden_go1_27: "1.27.3", &[];
}
