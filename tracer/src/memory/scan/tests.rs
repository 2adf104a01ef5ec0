//! The header validators on synthetic headers, the scan layout against the runtime DWARF of
//! every installed toolchain, and the whole scan against the live `hidden` fixture, whose
//! maps no package-level variable's DWARF path reaches.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::*;
use crate::dwarf_oracle::{each_entry, string_attr, with_dwarf};
use crate::gofixture::{self, Flavor, GO_VERSIONS};
use crate::target::Target;

const CLASSIC: HeaderShape = HeaderShape::Classic { size: 48 };
const CLASSIC_56: HeaderShape = HeaderShape::Classic { size: 56 };

/// A classic header: `count`, flags, `B`, seed, buckets, oldbuckets, nevacuate, extra.
fn classic(count: u64, flags: u8, log2: u8, buckets: u64) -> Vec<u64> {
    let second = (0x1234_5678u64 << 32) | (u64::from(log2) << 8) | u64::from(flags);
    vec![count, second, buckets, 0, 0, 0]
}

/// A swiss header: used, seed, dirPtr, dirLen, depth/shift/writing/tombstones, clearSeq.
fn swiss(used: u64, dir_ptr: u64, dir_len: u64, depth: u8, shift: u8) -> Vec<u64> {
    let bytes = u64::from_le_bytes([depth, shift, 0, 1, 0, 0, 0, 0]);
    vec![used, 0xfeed, dir_ptr, dir_len, bytes, 3]
}

#[test]
fn classic_headers_are_checked_field_by_field() {
    let buckets = 0xc000_1000;
    let pointees = check_fields(CLASSIC, &classic(100, 0, 5, buckets)).unwrap();
    assert_eq!(
        pointees,
        [Pointee {
            addr: buckets,
            min_bytes: 16 << 5
        }]
    );
    // An empty map made without a hint has no buckets yet.
    assert_eq!(check_fields(CLASSIC, &classic(0, 0, 0, 0)), Some(vec![]));
    // More entries than 8 slots per bucket, entries or B without buckets, unknown flags,
    // an absurd B, a zero seed: not a map.
    assert_eq!(check_fields(CLASSIC, &classic(257, 0, 5, buckets)), None);
    assert_eq!(check_fields(CLASSIC, &classic(1, 0, 0, 0)), None);
    assert_eq!(check_fields(CLASSIC, &classic(0, 0, 1, 0)), None);
    assert_eq!(check_fields(CLASSIC, &classic(1, 0x10, 0, buckets)), None);
    assert_eq!(check_fields(CLASSIC, &classic(1, 0, 60, buckets)), None);
    let mut unseeded = classic(1, 0, 0, buckets);
    unseeded[1] &= 0xffff_ffff;
    assert_eq!(check_fields(CLASSIC, &unseeded), None);
    // Evacuation cannot be past the old bucket count.
    let mut evacuated = classic(1, 0, 2, buckets);
    evacuated[4] = 5;
    assert_eq!(check_fields(CLASSIC, &evacuated), None);
    // Growing: oldbuckets and extra are heap objects too.
    let mut growing = classic(40, 8, 3, buckets);
    growing[3] = 0xc000_2000;
    growing[5] = 0xc000_3000;
    assert_eq!(check_fields(CLASSIC, &growing).unwrap().len(), 3);
    // The 56-byte header keeps extra at word 6; the slot's last word is never cleared.
    let mut wide = classic(3, 0, 0, buckets);
    wide.extend([0xc000_3000, 0xdead]);
    assert_eq!(
        check_fields(CLASSIC_56, &wide).unwrap()[1].addr,
        0xc000_3000
    );
    // The object must be the header's size class.
    assert_eq!(check_fields(CLASSIC_56, &classic(3, 0, 0, buckets)), None);
}

#[test]
fn swiss_headers_are_checked_field_by_field() {
    // Small maps: no group yet, or one group of 8 slots.
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(0, 0, 0, 0, 0)),
        Some(vec![])
    );
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(8, 0xc000_1000, 0, 0, 0)).unwrap()[0].addr,
        0xc000_1000
    );
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(9, 0xc000_1000, 0, 0, 0)),
        None
    );
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(1, 0, 0, 0, 0)),
        None
    );
    // A directory of 2^depth tables, shift 64 - depth.
    let directory = check_fields(HeaderShape::Swiss, &swiss(3000, 0xc000_1000, 4, 2, 62));
    assert_eq!(
        directory,
        Some(vec![Pointee {
            addr: 0xc000_1000,
            min_bytes: 32
        }])
    );
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(3, 0xc000_1000, 3, 2, 62)),
        None
    );
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(3, 0xc000_1000, 4, 2, 61)),
        None
    );
    assert_eq!(
        check_fields(HeaderShape::Swiss, &swiss(5000, 0xc000_1000, 4, 2, 62)),
        None
    );
    let mut unseeded = swiss(0, 0, 0, 0, 0);
    unseeded[1] = 0;
    assert_eq!(check_fields(HeaderShape::Swiss, &unseeded), None);
    let mut padded = swiss(0, 0, 0, 0, 0);
    padded[4] |= 1 << 40;
    assert_eq!(check_fields(HeaderShape::Swiss, &padded), None);
}

#[test]
fn pointers_must_start_an_allocated_object_big_enough() {
    let at = |start, size| ObjectState::Allocated { start, size };
    let pointee = Pointee {
        addr: 0x1000,
        min_bytes: 64,
    };
    assert!(points_at_start(at(0x1000, 64), pointee, false));
    assert!(!points_at_start(at(0x1000, 48), pointee, false));
    assert!(!points_at_start(at(0x0ff0, 64), pointee, false));
    assert!(!points_at_start(ObjectState::Free, pointee, false));
    assert!(!points_at_start(ObjectState::Unknown, pointee, false));
    // Go 1.22+: objects of 513 bytes to 32 KiB start with a malloc header.
    assert!(points_at_start(at(0x0ff8, 576), pointee, true));
    assert!(!points_at_start(at(0x0ff8, 576), pointee, false));
    assert!(!points_at_start(at(0x0ff8, 64), pointee, true));
    assert!(!points_at_start(at(0x0ff8, 64 << 10), pointee, true));
}

#[test]
fn heap_bits_are_read_per_word() {
    let mut body = vec![0u8; 16];
    // Words 8..14 of the span, bitmap at byte 8: bits 10, 11 and 13.
    body[9] = 0b0010_1100;
    assert_eq!(object_bits(&body, 8, 8, 6), Some(0b10_1100));
    assert_eq!(object_bits(&body, 8, 120, 6), None);
}

/// `struct.member` → offset, for the structs the scan reads.
fn runtime_offsets(path: &Path) -> BTreeMap<String, u64> {
    const STRUCTS: [&str; 4] = [
        "runtime.mheap",
        "runtime.mspan",
        "runtime.g",
        "runtime.gobuf",
    ];
    with_dwarf(path, |dwarf| {
        let mut offsets = BTreeMap::new();
        let mut current: Option<(String, isize)> = None;
        each_entry(dwarf, |unit, entry| {
            if current
                .as_ref()
                .is_some_and(|(_, depth)| entry.depth() <= *depth)
            {
                current = None;
            }
            let name = string_attr(dwarf, unit, entry, gimli::DW_AT_name);
            if entry.tag() == gimli::DW_TAG_structure_type && STRUCTS.contains(&name.as_str()) {
                current = Some((name, entry.depth()));
                return;
            }
            if let (Some((parent, _)), gimli::DW_TAG_member) = (&current, entry.tag()) {
                let offset = entry
                    .attr_value(gimli::DW_AT_data_member_location)
                    .and_then(|value| value.udata_value())
                    .expect("member offset");
                offsets.insert(format!("{parent}.{name}"), offset);
            }
        });
        offsets
    })
}

/// Every offset of the table, and the header sizes, against each toolchain's DWARF, on
/// amd64 and arm64 and in the classic-map builds of 1.24 and 1.25.
#[test]
fn scan_layout_matches_the_runtime_dwarf_of_every_toolchain() {
    const NOSWISSMAP: &[(&str, &str)] = &[("GOEXPERIMENT", "noswissmap")];
    let builds = GO_VERSIONS
        .iter()
        .flat_map(|version| [(*version, "amd64", &[][..]), (*version, "arm64", &[][..])])
        .chain([
            ("1.24.11", "amd64", NOSWISSMAP),
            ("1.25.5", "amd64", NOSWISSMAP),
        ]);
    for (version, goarch, env) in builds {
        let path = gofixture::build_with(
            "maps",
            version,
            "dwarf",
            &["-ldflags=-compressdwarf=false"],
            env,
            goarch,
        );
        let context = format!("go{version}/{goarch} {env:?}");
        let binary = GoBinary::open(&path).unwrap();
        let table = scan_layout(*binary.go_version()).unwrap();
        let offsets = runtime_offsets(&path);
        let offset = |name: &str| {
            *offsets
                .get(name)
                .unwrap_or_else(|| panic!("{context}: no {name}"))
        };
        assert_eq!(
            table.mheap_allspans,
            offset("runtime.mheap.allspans"),
            "{context}"
        );
        assert_eq!(
            table.span_spanclass,
            offset("runtime.mspan.spanclass"),
            "{context}"
        );
        assert_eq!(
            table.g_status,
            offset("runtime.g.atomicstatus"),
            "{context}"
        );
        assert_eq!(table.g_goid, offset("runtime.g.goid"), "{context}");
        assert_eq!(table.g_startpc, offset("runtime.g.startpc"), "{context}");
        assert_eq!(
            table.span_large_type,
            offsets.get("runtime.mspan.largeType").copied(),
            "{context}"
        );
        assert_eq!(
            table.g_sched_sp,
            offset("runtime.g.sched") + offset("runtime.gobuf.sp"),
            "{context}"
        );
        assert_eq!(offset("runtime.g.stack"), 0, "{context}");
        assert!(binary.data_symbol("runtime.allgs").is_some(), "{context}");
        let implementation = MapImplementation::of(&binary);
        let shape = HeaderShape::of(*binary.go_version(), implementation);
        let header = match implementation {
            MapImplementation::Classic => "runtime.hmap",
            MapImplementation::Swiss => "internal/runtime/maps.Map",
        };
        let size = with_dwarf(&path, |dwarf| {
            let mut size = None;
            each_entry(dwarf, |unit, entry| {
                if entry.tag() == gimli::DW_TAG_structure_type
                    && string_attr(dwarf, unit, entry, gimli::DW_AT_name) == header
                {
                    size = entry
                        .attr_value(gimli::DW_AT_byte_size)
                        .and_then(|value| value.udata_value());
                }
            });
            size.expect("header size")
        });
        let expected = match shape {
            HeaderShape::Classic { size } => size,
            HeaderShape::Swiss => 48,
        };
        assert_eq!(size, expected, "{context}");
    }
}

/// One line the `hidden` fixture printed.
#[derive(Debug)]
struct Truth {
    addr: u64,
    len: u64,
    holder: String,
}

/// Starts the `hidden` fixture and returns it with its maps once built.
fn run_hidden(binary: &Path) -> (std::process::Child, Vec<Truth>) {
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let mut truths = Vec::new();
    for line in lines {
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
        let holder = match field("holder=").as_str() {
            "goroutine" => format!("goroutine {} stack", field("goid=")),
            other => other.to_string(),
        };
        truths.push(Truth {
            addr: u64::from_str_radix(field("addr=").trim_start_matches("0x"), 16).unwrap(),
            len: field("len=").parse().unwrap(),
            holder,
        });
    }
    (child, truths)
}

/// The heap scan finds every map of the fixture with its count, the stack scan names the
/// goroutine holding one, and every other map found reads back as the same header.
#[test]
fn finds_the_maps_no_variable_reaches_in_a_live_process() {
    const NOSWISSMAP: &[(&str, &str)] = &[("GOEXPERIMENT", "noswissmap")];
    let builds = [
        ("1.19", &[][..]),
        ("1.21.13", &[]),
        ("1.22.10", &[]),
        ("1.24.11", &[]),
        ("1.24.11", NOSWISSMAP),
        ("1.27.3", &[]),
    ];
    for (version, env) in builds {
        let context = format!("go{version} {env:?}");
        let path = gofixture::build("hidden", version, Flavor::Plain, env);
        let binary = GoBinary::open(&path).unwrap();
        let implementation = MapImplementation::of(&binary);
        let (mut child, truths) = run_hidden(&path);
        let target = Target::open(child.id()).unwrap();
        let mut scanner = Scanner::new(&binary, 0, implementation).unwrap();
        let deadline = Instant::now() + MAX_TIME;
        let (found, mut stats) = scanner.heap_maps(&target, deadline);
        let by_addr: HashMap<u64, &HeapMap> = found.iter().map(|map| (map.addr, map)).collect();
        let addrs: HashSet<u64> = by_addr.keys().copied().collect();
        let holders = scanner.stack_holders(&target, &addrs, deadline, &mut stats);
        assert!(!stats.truncated, "{context}: {stats:?}");
        assert_eq!(truths.len(), 8, "{context}");
        for truth in &truths {
            let map = by_addr
                .get(&truth.addr)
                .unwrap_or_else(|| panic!("{context}: {truth:?} not found: {stats:?}"));
            assert_eq!(map.words[0], truth.len, "{context}: {truth:?}");
            let holder = holders.get(&truth.addr).map_or("heap", String::as_str);
            if truth.holder == "heap" {
                // Stack words are matched conservatively (no liveness maps): a stale word in
                // a live frame may name a stack for a map only the heap holds.
                assert!(
                    holder == "heap" || holder.starts_with("goroutine "),
                    "{context}: {truth:?} named {holder}"
                );
            } else {
                assert_eq!(holder, truth.holder, "{context}: {truth:?}");
            }
        }
        // No false maps: every header found still reads as what was validated (the
        // program is waiting), and passes the field checks again.
        for map in &found {
            let words: Vec<u64> = target
                .read_bytes(map.addr, map.words.len() * 8)
                .unwrap()
                .chunks_exact(8)
                .map(|word| u64_at(word, 0))
                .collect();
            assert_eq!(words, map.words, "{context}: {:#x}", map.addr);
            assert!(check_fields(scanner.shape, &words).is_some(), "{context}");
        }
        drop(child.stdin.take());
        child.wait().unwrap();
    }
}
