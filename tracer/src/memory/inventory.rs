//! Every map the program holds in view at attach, busy or idle: found from the package-level
//! variables ([`crate::memory::roots`]), from the heap itself and the goroutine stacks
//! ([`crate::memory::scan`]), and sized from the headers in the live process.
//!
//! The probes only see maps that the program uses while traced. A map filled long ago and
//! drained, idle since, still holds the storage of its peak (Go never shrinks a map), and is
//! exactly what a capacity review looks for. The inventory reads, for each map found: the
//! count and hash seed (the same two words an event carries, so a map that later gets
//! events continues as the same map), the capacity (the classic header's `B`; the swiss
//! directory and the capacity of each distinct table), and the map type's descriptor pointer
//! from the variable's DWARF type (its name and bucket size are read like the types of
//! events). A map a package-level variable reaches is named by it; one only the heap scan
//! finds is named by the goroutine stack that points at it (`goroutine 18 stack`), or
//! `heap`. Nothing is paused: a header torn by a concurrent write gives an unknown
//! capacity or is skipped, never a wrong count that counts (a map that gets events takes
//! its first event as its baseline).
//!
//! What it cannot see: see [`Summary::blind_to`], which says it per target.
//!
//! Bounds: at most [`crate::memory::roots::MAX_PATHS`] paths are read; a swiss directory is
//! read only up to [`MAX_DIRECTORY`] entries (8 MiB); the heap and stack scans have their
//! own ([`crate::memory::scan`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::inspect::{GoBinary, ReadMemory};
use crate::memory::roots::{Roots, RootsError};
use crate::memory::scan::{self, HeapMap, ScanStats, Scanner};
use crate::plan::MapImplementation;
use crate::target::Target;

/// How the inventory finds maps from package-level variables, as the report names it; the
/// heap and stack scans add `+heap` and `+stacks` when they ran.
pub const METHOD: &str = "dwarf-roots";

/// `held_by` of a map only the heap scan found, and no goroutine stack points at.
pub const HEAP_HOLDER: &str = "heap";

/// Largest swiss directory read: 2^20 tables would hold about 900 million entries; a bigger
/// `dirLen` is a torn or foreign header, not a map to read 8 MiB+ of.
pub const MAX_DIRECTORY: u64 = 1 << 20;

/// Slots in one classic bucket or swiss group, in every release.
const SLOTS_PER_BUCKET: u64 = 8;

/// The capacity a map's header says it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Entry slots the map's storage has (classic: 8 × 2^B; swiss: the summed capacity of
    /// its distinct tables, or the 8 slots of a small map's one group).
    pub slots: u64,
    /// Classic maps' `B` (log2 of the bucket count).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log2_buckets: Option<u8>,
    /// Swiss maps' directory length (0 for a small map).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub directory_len: Option<u64>,
    /// Swiss maps' distinct tables.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tables: Option<u64>,
}

impl Capacity {
    /// The fewest entries a map must have held for its storage to grow to this capacity:
    /// half what the capacity holds before growing again (every growth doubles), at the
    /// lowest load factor of any release (classic 6 of 8 slots per bucket in Go 1.21; swiss
    /// 7/8 of a table). Unless a size hint (`make(map…, n)`) sized it, a map with this
    /// capacity once held at least this many entries: an idle map's peak.
    pub fn once_held(&self) -> u64 {
        match (self.log2_buckets, self.tables) {
            (Some(0), _) => 0,
            (Some(_), _) => self.slots / 8 * 3,
            (None, Some(_)) => self.slots / 16 * 7,
            (None, None) => 0,
        }
    }

    /// Buckets (classic) or groups (swiss) the storage has.
    pub fn buckets(&self) -> u64 {
        self.slots / SLOTS_PER_BUCKET
    }
}

/// One map found by the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The map's address (`%p`).
    pub addr: u64,
    /// Its header's first two words, as an event carries them: the count and the word
    /// holding the hash seed.
    pub words: [u64; 2],
    /// Its capacity; `None` when the storage could not be read consistently.
    pub capacity: Option<Capacity>,
    /// Its type descriptor's run-time address, from the variable's DWARF type; 0 unknown.
    pub map_type: u64,
    /// The variable path that reaches it (see [`Roots::resolve`]).
    pub held_by: String,
}

/// What the inventory did: how it looked, what it found, what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How maps were found ([`METHOD`]).
    pub method: String,
    /// Whether the binary has DWARF: without it, no package-level variable is visible.
    pub dwarf: bool,
    /// Maps found.
    pub found: u64,
    /// Paths from package-level variables to map slots that were read.
    pub paths: u64,
    /// Paths were left out at the roots walk's bounds.
    pub truncated: bool,
    /// Milliseconds from start to end: reading DWARF, walking it, reading the target.
    pub time_ms: f64,
    /// Of those, reading the target's memory.
    pub read_ms: f64,
    /// What the inventory cannot see in this target, in one line.
    pub blind_to: String,
    /// What the heap and stack scans did, when they ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scan: Option<ScanStats>,
}

/// What the inventory cannot see when the heap scan ran.
const BLIND_WITH_SCAN: &str = "maps whose header is on a goroutine stack (maps that do not \
                               escape), headers the program was writing or the runtime \
                               sweeping while read";
/// What the heap scan cannot check before Go 1.22.
const BLIND_BEFORE_HEAP_BITS: &str = "; before Go 1.22 heap objects are checked as map \
                                      headers by their fields only (no heap bits in spans)";
/// What it cannot see when only the DWARF roots ran.
const BLIND_WITH_DWARF: &str = "maps held only by goroutine stacks, inside other maps, \
                                slices or interfaces, or more than 6 levels below a variable";
/// What it cannot see without DWARF nor `.symtab`.
const BLIND_WITHOUT_DWARF: &str = "every map: the binary has no DWARF and no symbol table \
                                   (stripped), so neither package-level variables nor the \
                                   heap (runtime.mheap_) can be found";

/// A finished inventory: the roots it read (kept for naming maps at the end of a trace),
/// what it says, and the maps.
pub struct Taken {
    /// The binary's roots; an error when its DWARF could not be read.
    pub roots: Result<Roots, RootsError>,
    /// The summary for the report.
    pub summary: Summary,
    /// Every map found, by address.
    pub sightings: Vec<Sighting>,
}

/// Takes the inventory of process `pid`, whose executable is at `exe`, loaded with `bias`;
/// `types_start` is where its static type descriptors are linked (see
/// [`crate::inspect::GoBinary::types_start`]). The target keeps running.
pub fn take(
    exe: &Path,
    pid: u32,
    bias: u64,
    implementation: MapImplementation,
    types_start: Option<u64>,
) -> Taken {
    let started = Instant::now();
    let roots = Roots::from_file(exe);
    let reading = Instant::now();
    let target = Target::open(pid);
    let mut sightings = match (&roots, &target) {
        (Ok(roots), Ok(target)) => find(roots, target, bias, implementation, types_start),
        _ => Vec::new(),
    };
    let scanner = GoBinary::open(exe)
        .ok()
        .and_then(|binary| Scanner::new(&binary, bias, implementation).ok());
    let bucket_types = match (&roots, &target, types_start) {
        (Ok(roots), Ok(target), Some(start)) => bucket_types(roots, target, bias, start),
        _ => HashMap::new(),
    };
    let scan = match (scanner, &target) {
        (Some(mut scanner), Ok(target)) => Some(scan_heap(
            &mut scanner,
            target,
            implementation,
            &bucket_types,
            &mut sightings,
        )),
        _ => None,
    };
    let done = Instant::now();
    let (dwarf, paths, truncated) = match &roots {
        Ok(roots) => (
            roots.has_dwarf(),
            roots.paths().len() as u64,
            roots.truncated(),
        ),
        Err(_) => (false, 0, false),
    };
    let go_version = GoBinary::open(exe).ok().map(|binary| *binary.go_version());
    let method = match &scan {
        Some(_) => format!("{METHOD}+heap+stacks"),
        None => METHOD.to_string(),
    };
    let blind_to = match (&scan, dwarf) {
        (Some(_), _) => {
            let mut blind = BLIND_WITH_SCAN.to_string();
            if go_version.is_some_and(|version| version.minor < 22) {
                blind.push_str(BLIND_BEFORE_HEAP_BITS);
            }
            if !dwarf {
                blind.push_str("; no DWARF: maps are named by stacks or \"heap\", never by variable, and have no type");
            }
            blind
        }
        (None, true) => BLIND_WITH_DWARF.to_string(),
        (None, false) => BLIND_WITHOUT_DWARF.to_string(),
    };
    Taken {
        summary: Summary {
            method,
            dwarf,
            found: sightings.len() as u64,
            paths,
            truncated,
            time_ms: millis(done - started),
            read_ms: millis(done - reading),
            blind_to,
            scan,
        },
        roots,
        sightings,
    }
}

/// Offset of the bucket (classic) or group (swiss) type pointer in a map type descriptor,
/// in every release (`go-map-runtime.md` §3).
const MAP_TYPE_BUCKET: u64 = 64;

/// The run-time map type descriptor of each bucket or group type, for every map type the
/// binary's DWARF names: what types a map found on the heap by its storage's type.
fn bucket_types(
    roots: &Roots,
    memory: &impl ReadMemory,
    bias: u64,
    types_start: u64,
) -> HashMap<u64, u64> {
    roots
        .map_types()
        .iter()
        .filter_map(|&offset| {
            let map_type = types_start.checked_add(offset)?.checked_add(bias)?;
            let bucket = read_u64(memory, map_type.checked_add(MAP_TYPE_BUCKET)?)?;
            (bucket != 0).then_some((bucket, map_type))
        })
        .collect()
}

/// Whether `held_by` names a holder found by the heap and stack scans rather than a
/// package-level variable: such a holder cannot be read again at the end of a trace from
/// the roots, so the trace keeps the inventory's.
pub fn is_scanned_holder(held_by: &str) -> bool {
    held_by == HEAP_HOLDER || (held_by.starts_with("goroutine ") && held_by.ends_with(" stack"))
}

/// Adds to `sightings` every map the heap scan finds that no package-level variable
/// reaches, named by the goroutine stack that points at it, or [`HEAP_HOLDER`].
fn scan_heap(
    scanner: &mut Scanner,
    memory: &impl ReadMemory,
    implementation: MapImplementation,
    bucket_types: &HashMap<u64, u64>,
    sightings: &mut Vec<Sighting>,
) -> ScanStats {
    let deadline = Instant::now() + scan::MAX_TIME;
    let (found, mut stats) = scanner.heap_maps(memory, deadline);
    let known: HashSet<u64> = sightings.iter().map(|sighting| sighting.addr).collect();
    let fresh: Vec<HeapMap> = found
        .into_iter()
        .filter(|map| !known.contains(&map.addr))
        .collect();
    let addrs: HashSet<u64> = fresh.iter().map(|map| map.addr).collect();
    let holders = scanner.stack_holders(memory, &addrs, deadline, &mut stats);
    for map in fresh {
        let words = [map.words[0], map.words[1]];
        let capacity = capacity(memory, map.addr, words, implementation);
        // A swiss map's tables must hold its entries: otherwise the directory read is not
        // the one the header was validated with.
        if implementation == MapImplementation::Swiss
            && capacity.is_none_or(|capacity| capacity.slots < words[0])
        {
            stats.rejected += 1;
            stats.maps -= 1;
            continue;
        }
        let map_type = if bucket_types.is_empty() {
            0
        } else {
            scanner
                .storage_type(memory, &map.words)
                .and_then(|storage| bucket_types.get(&storage).copied())
                .unwrap_or(0)
        };
        sightings.push(Sighting {
            addr: map.addr,
            words,
            capacity,
            map_type,
            held_by: holders
                .get(&map.addr)
                .cloned()
                .unwrap_or_else(|| HEAP_HOLDER.to_string()),
        });
    }
    stats
}

fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Reads every map the roots reach in `memory`: header words, capacity, type.
pub fn find(
    roots: &Roots,
    memory: &impl ReadMemory,
    bias: u64,
    implementation: MapImplementation,
    types_start: Option<u64>,
) -> Vec<Sighting> {
    let best = roots.best(memory, bias, |_| true);
    let mut sightings = Vec::with_capacity(best.len());
    for (addr, root) in best {
        let Some(words) = read_words(memory, addr) else {
            continue;
        };
        let map_type = match (root.runtime_type, types_start) {
            (Some(offset), Some(start)) => start
                .checked_add(offset)
                .and_then(|linked| linked.checked_add(bias))
                .unwrap_or(0),
            _ => 0,
        };
        sightings.push(Sighting {
            addr,
            words,
            capacity: capacity(memory, addr, words, implementation),
            map_type,
            held_by: root.path.clone(),
        });
    }
    sightings
}

/// The header of the map at `addr`: its count and seed word, and its capacity when its
/// storage reads consistently. The same reads as the inventory's, for the polls of
/// `--mode sampled` ([`crate::sampled`]).
pub fn read_header(
    memory: &impl ReadMemory,
    addr: u64,
    implementation: MapImplementation,
) -> Option<([u64; 2], Option<Capacity>)> {
    let words = read_words(memory, addr)?;
    Some((words, capacity(memory, addr, words, implementation)))
}

fn read_u64(memory: &impl ReadMemory, addr: u64) -> Option<u64> {
    let bytes = memory.read(addr, 8)?;
    Some(u64::from_le_bytes(bytes.as_slice().try_into().ok()?))
}

fn read_words(memory: &impl ReadMemory, addr: u64) -> Option<[u64; 2]> {
    Some([
        read_u64(memory, addr)?,
        read_u64(memory, addr.checked_add(8)?)?,
    ])
}

/// The capacity of the map at `addr`, whose first words are `words` (see the layouts in
/// `go-map-runtime.md` §3).
fn capacity(
    memory: &impl ReadMemory,
    addr: u64,
    words: [u64; 2],
    implementation: MapImplementation,
) -> Option<Capacity> {
    match implementation {
        MapImplementation::Classic => {
            let log2_buckets = tracer_common::classic_log2_buckets(words[1]);
            Some(Capacity {
                slots: SLOTS_PER_BUCKET.checked_shl(u32::from(log2_buckets))?,
                log2_buckets: Some(log2_buckets),
                directory_len: None,
                tables: None,
            })
        }
        MapImplementation::Swiss => {
            let directory = read_u64(memory, addr.checked_add(16)?)?;
            let directory_len = read_u64(memory, addr.checked_add(24)?)?;
            if directory_len == 0 {
                return Some(Capacity {
                    slots: if directory == 0 { 0 } else { SLOTS_PER_BUCKET },
                    log2_buckets: None,
                    directory_len: Some(0),
                    tables: Some(0),
                });
            }
            if directory_len > MAX_DIRECTORY {
                return None;
            }
            let bytes = memory.read(directory, (directory_len * 8) as usize)?;
            let mut tables: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")))
                .collect();
            tables.sort_unstable();
            tables.dedup();
            let mut slots = 0u64;
            for &table in &tables {
                let header = memory.read(table, 4)?;
                slots = slots.checked_add(u64::from(u16::from_le_bytes([header[2], header[3]])))?;
            }
            Some(Capacity {
                slots,
                log2_buckets: None,
                directory_len: Some(directory_len),
                tables: Some(tables.len() as u64),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tracer_common::{kind, MapEvent};

    use super::*;
    use crate::model::{Limits, Model, Seen};
    use crate::verdict::{self, Thresholds, Verdict, Window};

    const MAP: u64 = 0x00c0_0001_0000;
    const SEED: u64 = 7;

    fn summary(found: u64) -> Summary {
        Summary {
            method: METHOD.to_string(),
            dwarf: true,
            found,
            paths: found,
            truncated: false,
            time_ms: 1.0,
            read_ms: 0.5,
            blind_to: BLIND_WITH_DWARF.to_string(),
            scan: None,
        }
    }

    /// A swiss map drained to `count` in 128 tables of 1024 slots.
    fn drained(count: u64) -> Sighting {
        Sighting {
            addr: MAP,
            words: [count, SEED],
            capacity: Some(Capacity {
                slots: 128 * 1024,
                log2_buckets: None,
                directory_len: Some(128),
                tables: Some(128),
            }),
            map_type: 0x4a_0000,
            held_by: "main.idle".to_string(),
        }
    }

    fn event(kind: u8, count: u64, seed: u64, ktime_ns: u64) -> MapEvent {
        MapEvent {
            ktime_ns,
            map: MAP,
            count,
            header_word: seed,
            map_type: 0,
            key_hash: 0,
            kind,
            flags: 0,
            folded: 0,
        }
    }

    fn model() -> Model {
        let mut model = Model::new(MapImplementation::Swiss, Limits::default());
        model.arm(100);
        model
    }

    const WINDOW: Window = Window {
        start_ns: 100,
        end_ns: 10_000,
    };

    #[test]
    fn an_idle_map_is_judged_by_its_capacity() {
        let mut model = model();
        model.inventory(500, summary(1), &[drained(10)]);
        model.freeze(WINDOW.end_ns);
        let maps = model.maps();
        let record = maps[0];
        assert_eq!(
            (record.seen, record.idle, record.created),
            (Seen::Inventory, true, false)
        );
        assert_eq!((record.live, record.peak, record.unexplained), (10, 10, 0));
        assert_eq!(record.map_type, 0x4a_0000);
        assert_eq!(model.types_seen(), [0x4a_0000]);
        let thresholds = Thresholds::default();
        assert_eq!(
            verdict::judge(record, WINDOW, &thresholds),
            Some(Verdict::RetainsCapacity)
        );
        // Not when the capacity says it never held retain_min_peak entries...
        let strict = Thresholds {
            retain_min_peak: 100_000,
            ..thresholds
        };
        assert_eq!(verdict::judge(record, WINDOW, &strict), None);
        // ...nor when it is still full enough.
        let mut model = self::model();
        model.inventory(500, summary(1), &[drained(50_000)]);
        assert_eq!(verdict::judge(model.maps()[0], WINDOW, &thresholds), None);
    }

    #[test]
    fn an_idle_map_that_gets_events_continues_from_its_first_event() {
        let mut model = model();
        model.inventory(500, summary(1), &[drained(10)]);
        // It changed between the inventory's read and its first probed event.
        model.observe(&event(kind::ASSIGN, 12, SEED, 600)).unwrap();
        model.observe(&event(kind::DELETE, 13, SEED, 700)).unwrap();
        model.freeze(WINDOW.end_ns);
        model.settle_with_read(MAP, [12, SEED]);
        let maps = model.maps();
        assert_eq!(maps.len(), 1, "the same map, not a new one");
        let record = maps[0];
        assert_eq!((record.seen, record.idle), (Seen::Inventory, false));
        assert_eq!((record.inserts, record.deletes, record.live), (1, 1, 12));
        assert_eq!(record.unexplained, 0);
        assert_eq!(
            record.map_type, 0x4a_0000,
            "the type found by the inventory stays"
        );
        assert!(!record.is_released());
    }

    #[test]
    fn another_seed_at_an_idle_maps_address_is_another_map() {
        let mut model = model();
        model.inventory(500, summary(1), &[drained(10)]);
        model
            .observe(&event(kind::ASSIGN, 0, SEED + 1, 600))
            .unwrap();
        let maps = model.maps();
        assert_eq!(maps.len(), 2);
        assert!(maps[0].is_released() && maps[0].seen == Seen::Inventory);
        assert_eq!((maps[1].seen, maps[1].unexplained), (Seen::Event, 0));
    }

    #[test]
    fn a_map_seen_by_an_event_first_keeps_its_record() {
        let mut model = model();
        model.observe(&event(kind::ASSIGN, 10, SEED, 400)).unwrap();
        model.inventory(500, summary(1), &[drained(11)]);
        let maps = model.maps();
        assert_eq!(maps.len(), 1);
        assert_eq!((maps[0].seen, maps[0].idle), (Seen::Event, false));
        assert!(maps[0].is_pending());
        assert_eq!(
            model.inventory_summary().map(|summary| summary.found),
            Some(1)
        );
    }

    /// Target memory as a byte map.
    struct Bytes(HashMap<u64, u8>);

    impl Bytes {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (index, byte) in bytes.iter().enumerate() {
                self.0.insert(addr + index as u64, *byte);
            }
        }
    }

    impl ReadMemory for Bytes {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            (0..len as u64)
                .map(|index| self.0.get(&(addr + index)).copied())
                .collect()
        }
    }

    #[test]
    fn the_report_lists_idle_maps_with_what_they_would_give_back() {
        use crate::pipeline::{Pipeline, SessionInput, Setup};
        use crate::report::{MapTypeInfo, Resolved, TargetInfo};
        use crate::verdict::Storage;

        let mut pipeline = Pipeline::new(
            Setup {
                target: TargetInfo {
                    pid: 7,
                    exe: "/srv/app".into(),
                    go_version: "go1.24.11".into(),
                    exited: false,
                    peak_rss_bytes: None,
                    container: None,
                    ns_pid: None,
                },
                implementation: MapImplementation::Swiss,
                start_ns: 100,
                thresholds: Thresholds::default(),
                sample_one_in: 0,
                sampling: None,
                probe_links: None,
            },
            None,
        );
        pipeline.note(SessionInput::Inventory {
            at_ns: 500,
            summary: summary(1),
            sightings: vec![drained(10)],
        });
        pipeline.note(SessionInput::Type {
            map_type: 0x4a_0000,
            facts: MapTypeInfo {
                name: "map[int64][]uint8".into(),
                storage: Storage {
                    bucket_bytes: 264,
                    slots_per_bucket: 8,
                },
            },
        });
        pipeline.note(SessionInput::Freeze { end_ns: 10_000 });
        pipeline.note(SessionInput::Finish {
            lost: 0,
            resolved: Resolved {
                held_by: [(MAP, "main.idle".to_string())].into(),
                ..Resolved::default()
            },
        });
        let report = pipeline.finish().unwrap();
        let json = serde_json::to_value(&report).unwrap();
        let map = &json["maps"][0];
        assert_eq!(map["seen"], "inventory");
        assert_eq!(map["idle"], true);
        assert_eq!(map["capacity"]["slots"], 131_072);
        // 16,384 groups of 264 bytes and the header; 10 entries need 2 groups.
        assert_eq!(map["peak_est_bytes"], 16_384 * 264 + 48);
        assert_eq!(map["reclaimable_bytes"], 16_382 * 264);
        assert_eq!(json["verdicts"][0]["verdict"], "retains-capacity");
        assert_eq!(json["verdicts"][0]["reclaimable_bytes"], 16_382 * 264);
        assert_eq!(json["inventory"]["found"], 1);
        let text = report.render_text(10);
        assert!(
            text.contains("INVENTORY (dwarf-roots): 1 maps in view at attach"),
            "{text}"
        );
        assert!(
            text.contains("idle at attach: 131072 slots, once held ≥ 57344"),
            "{text}"
        );
        assert!(
            text.contains("map[int64][]uint8 / main.idle"),
            "the idle table names type and holder: {text}"
        );
    }

    #[test]
    fn classic_capacity_is_read_from_b() {
        let mut memory = Bytes(HashMap::new());
        // count 10, flags 0, B 14, seed 0xabcd at 12.
        memory.put(0x1000, &10u64.to_le_bytes());
        memory.put(0x1008, &((0xabcdu64 << 32) | (14 << 8)).to_le_bytes());
        let words = read_words(&memory, 0x1000).unwrap();
        let capacity = capacity(&memory, 0x1000, words, MapImplementation::Classic).unwrap();
        assert_eq!(capacity.slots, 8 << 14);
        assert_eq!(capacity.log2_buckets, Some(14));
        assert_eq!(capacity.buckets(), 1 << 14);
        // It grew past half of 6.5 × 2^14: 100,000 entries make a B of 14.
        assert_eq!(capacity.once_held(), 3 << 14);
    }

    #[test]
    fn swiss_capacity_sums_distinct_tables() {
        let mut memory = Bytes(HashMap::new());
        memory.put(0x1000, &10u64.to_le_bytes());
        memory.put(0x1008, &7u64.to_le_bytes());
        memory.put(0x1010, &0x2000u64.to_le_bytes());
        memory.put(0x1018, &4u64.to_le_bytes());
        // Directory of 4 entries, two tables (one repeated twice).
        for (index, table) in [0x3000u64, 0x3000, 0x4000, 0x4000].iter().enumerate() {
            memory.put(0x2000 + 8 * index as u64, &table.to_le_bytes());
        }
        memory.put(0x3000, &[3, 0, 0, 4]); // used 3, capacity 1024
        memory.put(0x4000, &[2, 0, 0, 2]); // used 2, capacity 512
        let words = read_words(&memory, 0x1000).unwrap();
        let capacity = capacity(&memory, 0x1000, words, MapImplementation::Swiss).unwrap();
        assert_eq!(capacity.slots, 1536);
        assert_eq!(capacity.tables, Some(2));
        assert_eq!(capacity.directory_len, Some(4));
        assert_eq!(capacity.once_held(), 1536 / 16 * 7);
        // A directory whose tables cannot be read has no capacity.
        memory.put(0x1018, &5u64.to_le_bytes());
        assert_eq!(
            super::capacity(&memory, 0x1000, words, MapImplementation::Swiss),
            None
        );
        // A small map: one group once it has had an entry.
        memory.put(0x1018, &0u64.to_le_bytes());
        let small = super::capacity(&memory, 0x1000, words, MapImplementation::Swiss).unwrap();
        assert_eq!((small.slots, small.once_held()), (8, 0));
        // An absurd directory length is not read.
        memory.put(0x1018, &(MAX_DIRECTORY + 1).to_le_bytes());
        assert_eq!(
            super::capacity(&memory, 0x1000, words, MapImplementation::Swiss),
            None
        );
    }

    /// A binary with a symbol table but no DWARF (`-ldflags=-w`): no variable is visible,
    /// but the heap scan still finds every map of the `hidden` fixture with its count, and
    /// the summary says what ran and what it cannot do.
    #[test]
    fn the_heap_scan_needs_symbols_not_dwarf() {
        use std::io::{BufRead, BufReader, Write};
        use std::process::{Command, Stdio};

        use crate::gofixture;

        let path = gofixture::build_with(
            "hidden",
            "1.27.3",
            "nodwarf",
            &["-ldflags=-w"],
            &[],
            "amd64",
        );
        let mut child = Command::new(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut printed: HashMap<u64, u64> = HashMap::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line == "done" {
                break;
            }
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix(key))
                    .unwrap()
                    .to_string()
            };
            let addr = u64::from_str_radix(field("addr=").trim_start_matches("0x"), 16).unwrap();
            printed.insert(addr, field("len=").parse().unwrap());
        }
        let binary = GoBinary::open(&path).unwrap();
        let taken = take(
            &path,
            child.id(),
            0,
            MapImplementation::of(&binary),
            binary.types_start(),
        );
        drop(child.stdin.take());
        child.wait().unwrap();
        let summary = &taken.summary;
        assert_eq!(summary.method, "dwarf-roots+heap+stacks", "{summary:?}");
        assert!(!summary.dwarf);
        assert!(summary.blind_to.contains("no DWARF"), "{summary:?}");
        assert_eq!(printed.len(), 8);
        for (addr, len) in printed {
            let sighting = taken
                .sightings
                .iter()
                .find(|sighting| sighting.addr == addr)
                .unwrap_or_else(|| panic!("{addr:#x} not found: {summary:?}"));
            assert_eq!(sighting.words[0], len, "{sighting:?}");
            assert!(is_scanned_holder(&sighting.held_by), "{sighting:?}");
            assert_eq!(sighting.map_type, 0, "no DWARF, no map types: {sighting:?}");
        }
    }
}
