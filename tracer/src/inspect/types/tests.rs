//! Map type names against what Go itself prints (`%T` in the running fixture) and what its
//! DWARF says, for every installed toolchain, classic and swiss maps, plain, stripped and PIE
//! builds; run-time (reflect-made) types through a synthetic heap.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use super::super::elf::ElfView;
use super::super::lines::tests::{build, open, Build, VERSIONS};
use super::super::GoBinary;
use super::*;
use crate::dwarf_oracle::{each_entry, string_attr, with_dwarf, MAP_TYPE_STRUCTS};
use object::Object;

/// `DW_AT_go_runtime_type`: a type DIE's descriptor, as an offset from `runtime.types`.
const DW_AT_GO_RUNTIME_TYPE: gimli::DwAt = gimli::DwAt(0x2904);

/// The builds whose maps are classic although the release defaults to swiss ones.
const NOSWISSMAP: [&str; 2] = ["1.24.11", "1.25.5"];

/// What the running fixture says: the run-time address of `main.leaf` and, per map, its type
/// descriptor's run-time address and `%T`.
struct Printed {
    leaf: u64,
    maps: Vec<(u64, String)>,
}

fn run_fixture(path: &Path) -> Printed {
    let output = Command::new(path)
        .arg("types")
        .output()
        .expect("run fixture");
    assert!(output.status.success(), "{} types failed", path.display());
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    let hex = |text: &str| u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap();
    let leaf = hex(lines.next().unwrap().strip_prefix("leaf ").unwrap());
    let maps = lines
        .map(|line| {
            let (address, name) = line.split_once(' ').unwrap();
            (hex(address), name.to_owned())
        })
        .collect();
    Printed { leaf, maps }
}

/// The target's memory as the loader leaves it, emulated from the file: bytes at linked
/// addresses moved by `bias`, and every relatively relocated pointer moved by it too.
struct Loaded<'a> {
    binary: &'a GoBinary,
    bias: u64,
    relocations: HashMap<u64, u64>,
}

impl<'a> Loaded<'a> {
    fn new(binary: &'a GoBinary, bias: u64) -> Loaded<'a> {
        let elf = ElfView::parse(&binary.bytes).unwrap();
        Loaded {
            binary,
            bias,
            relocations: elf.relative_relocations().unwrap(),
        }
    }
}

impl ReadMemory for Loaded<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let linked = addr.checked_sub(self.bias)?;
        let mut bytes = self.binary.file_memory().read(linked, len)?;
        for (at, chunk) in (linked..).step_by(8).zip(bytes.chunks_exact_mut(8)) {
            if let Some(addend) = self.relocations.get(&at) {
                chunk.copy_from_slice(&(addend + self.bias).to_le_bytes());
            }
        }
        // Reads not aligned to 8 hold no pointer the tests look at.
        Some(bytes)
    }
}

/// Every map typedef of the binary's DWARF with a descriptor: name → offset from
/// `runtime.types`.
fn dwarf_map_types(path: &Path) -> BTreeMap<String, u64> {
    with_dwarf(path, |dwarf| {
        let mut types = BTreeMap::new();
        each_entry(dwarf, |unit, entry| {
            if entry.tag() != gimli::DW_TAG_typedef {
                return;
            }
            let name = string_attr(dwarf, unit, entry, gimli::DW_AT_name);
            // Go writes the offset with the form of an address (`DW_FORM_addr`).
            let offset = match entry.attr_value(DW_AT_GO_RUNTIME_TYPE) {
                Some(gimli::AttributeValue::Addr(offset)) => Some(offset),
                Some(value) => value.udata_value(),
                None => None,
            };
            if let (true, Some(offset)) = (name.starts_with("map["), offset) {
                types.insert(name, offset);
            }
        });
        types
    })
}

/// Member offsets of the named structs in the binary's DWARF: struct → member → offset.
fn dwarf_struct_offsets(path: &Path, wanted: &[&str]) -> HashMap<String, HashMap<String, u64>> {
    with_dwarf(path, |dwarf| {
        let mut structs = HashMap::new();
        let mut current: Option<String> = None;
        each_entry(dwarf, |unit, entry| {
            let name = string_attr(dwarf, unit, entry, gimli::DW_AT_name);
            match entry.tag() {
                gimli::DW_TAG_structure_type => {
                    current = Some(name).filter(|name| wanted.contains(&name.as_str()));
                }
                gimli::DW_TAG_member => {
                    let Some(owner) = &current else {
                        return;
                    };
                    let offset = entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|value| value.udata_value())
                        .unwrap();
                    structs
                        .entry(owner.clone())
                        .or_insert_with(HashMap::new)
                        .insert(name, offset);
                }
                _ => current = None,
            }
        });
        structs
    })
}

/// The offsets this module reads, against each release's DWARF for the type descriptor
/// structs (`runtime._type`/`runtime.maptype` in 1.19, `internal/abi.Type` and
/// `internal/abi.MapType`/`OldMapType`/`SwissMapType` after).
#[test]
fn descriptor_layouts_match_dwarf() {
    const TYPES: [&str; 2] = ["runtime._type", "internal/abi.Type"];
    for (version, build_kind, env) in builds() {
        if build_kind != Build::Plain {
            continue;
        }
        let path = build(version, build_kind, env, "amd64");
        let binary = open(&path);
        let context = format!("go{version} {env:?}");
        let wanted: Vec<&str> = TYPES.iter().chain(&MAP_TYPE_STRUCTS).copied().collect();
        let structs = dwarf_struct_offsets(&path, &wanted);
        // Field names are lower case in 1.19, exported from 1.21.
        let field = |owners: &[&str], names: [&str; 2]| {
            owners
                .iter()
                .filter_map(|owner| structs.get(*owner))
                .find_map(|members| names.iter().find_map(|name| members.get(*name)))
                .copied()
        };
        let type_field = |names| field(&TYPES, names);
        assert_eq!(
            type_field(["tflag", "TFlag"]),
            Some(TFLAG_AT as u64),
            "{context}"
        );
        assert_eq!(
            type_field(["kind", "Kind_"]),
            Some(KIND_AT as u64),
            "{context}"
        );
        assert_eq!(type_field(["str", "Str"]), Some(STR_AT as u64), "{context}");
        // The map type struct this build uses: classic and swiss ones may both be present
        // in 1.24–1.25 DWARF, so pick by the size field that exists.
        let map_field = |names| field(&MAP_TYPE_STRUCTS, names);
        assert_eq!(map_field(["key", "Key"]), Some(FIRST_FIELD_AT), "{context}");
        assert_eq!(
            map_field(["elem", "Elem"]),
            Some(SECOND_FIELD_AT),
            "{context}"
        );
        if binary.has_swiss_maps() {
            assert_eq!(
                map_field(["GroupSize", "GroupSize"]),
                Some(GROUP_SIZE_AT as u64)
            );
        } else {
            let size = map_field(["bucketsize", "BucketSize"]);
            assert_eq!(size, Some(BUCKET_SIZE_AT as u64), "{context}");
        }
    }
}

/// `name` with the package dropped from struct field names: DWARF writes the unexported
/// field `a` of a `main` struct as `main.a`, Go's own names as `a`.
fn unqualified_fields(name: &str) -> String {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find(['{', ';']) {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let Some(field) = rest.strip_prefix(' ') else {
            continue;
        };
        let package_len = field.find(|c: char| !is_ident(c)).unwrap_or(field.len());
        let after = &field[package_len..];
        let qualified = package_len > 0
            && after.starts_with('.')
            && after[1..]
                .find(|c: char| !is_ident(c))
                .is_some_and(|end| end > 0 && after[1 + end..].starts_with(' '));
        if qualified {
            out.push(' ');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Environment variables of a build.
type Env = &'static [(&'static str, &'static str)];

/// The builds checked: every toolchain's plain, stripped and PIE build, and the classic-map
/// builds of the releases that default to swiss maps.
fn builds() -> Vec<(&'static str, Build, Env)> {
    let mut builds: Vec<_> = VERSIONS
        .into_iter()
        .flat_map(|version| Build::ALL.map(|build| (version, build, &[][..])))
        .collect();
    for version in NOSWISSMAP {
        for build in Build::ALL {
            builds.push((version, build, &[("GOEXPERIMENT", "noswissmap")][..]));
        }
    }
    builds
}

#[test]
fn dwarf_field_qualifiers_are_dropped() {
    assert_eq!(
        unqualified_fields("map[string]struct { main.a int; main.b main.point }"),
        "map[string]struct { a int; b main.point }"
    );
    assert_eq!(
        unqualified_fields("map[main.point]struct {}"),
        "map[main.point]struct {}"
    );
}

#[test]
fn map_type_names_match_what_go_prints() {
    let mut checked = 0;
    for (version, build_kind, env) in builds() {
        let path = build(version, build_kind, env, "amd64");
        let binary = open(&path);
        let context = format!("go{version} {build_kind:?} {env:?}");
        let printed = run_fixture(&path);
        let bias = printed.leaf - binary.function("main.leaf").unwrap().vaddr;
        assert_eq!(
            bias == 0,
            build_kind != Build::Pie,
            "{context}: bias {bias:#x}"
        );
        let memory = Loaded::new(&binary, bias);
        let swiss = binary.has_swiss_maps();
        assert_eq!(swiss, version >= "1.24" && env.is_empty(), "{context}");
        for (maptype, expected) in &printed.maps {
            let info = map_type_info(&memory, &binary, bias, *maptype)
                .unwrap_or_else(|error| panic!("{context} {expected}: {error}"));
            assert_eq!(&info.name, expected, "{context}");
            assert_eq!(info.storage.slots_per_bucket, 8, "{context}");
            // The runtime's own bucket or group type has the same size.
            let group = memory.read(maptype + 64, 8).unwrap();
            let group = u64::from_le_bytes(group.try_into().unwrap());
            let size = memory.read(group, 8).unwrap();
            let size = u64::from_le_bytes(size.try_into().unwrap());
            assert_eq!(info.storage.bucket_bytes, size, "{context} {expected}");
            // Worked out by hand: tophash + 8 keys + 8 elems + overflow pointer (classic),
            // control word + 8 key/elem slots (swiss).
            let by_hand = match (expected.as_str(), swiss) {
                ("map[string]*bytes.Buffer" | "map[string]int", false) => Some(208),
                ("map[string]*bytes.Buffer" | "map[string]int", true) => Some(200),
                ("map[uint8]*bytes.Buffer", false) => Some(88),
                ("map[uint8]*bytes.Buffer", true) => Some(136),
                _ => None,
            };
            if let Some(by_hand) = by_hand {
                assert_eq!(info.storage.bucket_bytes, by_hand, "{context} {expected}");
            }
            checked += 1;
        }
        assert_eq!(printed.maps.len(), 14, "{context}");
    }
    assert_eq!(checked, (VERSIONS.len() + NOSWISSMAP.len()) * 3 * 14);
}

/// DWARF's map typedefs (every map type the program links, the runtime's own included) name
/// the same types as the descriptors they point at.
///
/// Some typedefs point at a descriptor the linker dropped (the offset then lands on another
/// type); those are counted, not compared. Every map the fixture prints must be compared.
#[test]
fn map_type_names_match_dwarf() {
    for (version, build_kind, env) in builds() {
        if build_kind == Build::Stripped {
            continue;
        }
        let path = build(version, build_kind, env, "amd64");
        let binary = open(&path);
        let context = format!("go{version} {build_kind:?} {env:?}");
        let types = binary.types_base().expect("types base");
        let memory = binary.file_memory();
        let mut compared = Vec::new();
        let mut dropped = 0;
        for (name, offset) in dwarf_map_types(&path) {
            // DWARF spells packages by path (`internal/abi.Type`), Go's names by name.
            if name.contains('/') {
                continue;
            }
            match map_type_info(&memory, &binary, 0, types + offset) {
                Ok(info) => {
                    assert_eq!(info.name, unqualified_fields(&name), "{context}");
                    compared.push(info.name);
                }
                Err(TypeNameError::NotAMap { .. }) => dropped += 1,
                Err(error) => panic!("{context} {name}: {error}"),
            }
        }
        for (_, name) in run_fixture(&path).maps {
            assert!(compared.contains(&name), "{context}: {name} not in DWARF");
        }
        assert!(dropped < compared.len(), "{context}: {dropped} dropped");
    }
}

/// Stripped binaries have no symbols: the types base comes from the moduledata, and must be
/// the `runtime.types` symbol of the same build with symbols.
#[test]
fn types_base_of_stripped_builds_comes_from_the_moduledata() {
    for version in VERSIONS {
        let stripped = open(&build(version, Build::Stripped, &[], "amd64"));
        let plain_path = build(version, Build::Plain, &[], "amd64");
        let plain = open(&plain_path);
        let bytes = std::fs::read(&plain_path).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        let symbol = |wanted: &str| {
            object::ObjectSymbolTable::symbols(&file.symbol_table().unwrap())
                .find(|symbol| object::ObjectSymbol::name(symbol) == Ok(wanted))
                .map(|symbol| object::ObjectSymbol::address(&symbol))
        };
        let expected = symbol("runtime.types").expect("runtime.types");
        assert_eq!(plain.types_base(), Some(expected), "go{version}");
        assert_eq!(
            plain.tables.types.unwrap().end,
            symbol("runtime.etypes"),
            "go{version}"
        );
        // Same linker, same layout; only the symbol tables are gone.
        assert_eq!(
            stripped.types_base(),
            Some(expected),
            "go{version} stripped"
        );
        assert_eq!(
            stripped.tables.types, plain.tables.types,
            "go{version} stripped"
        );
    }
}

/// A heap the tests lay out by hand, over the binary's file bytes.
struct Heap<'a> {
    file: &'a dyn ReadMemory,
    base: u64,
    bytes: Vec<u8>,
}

impl ReadMemory for Heap<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        match addr.checked_sub(self.base) {
            Some(offset) => {
                let start = usize::try_from(offset).ok()?;
                Some(self.bytes.get(start..start.checked_add(len)?)?.to_vec())
            }
            None => self.file.read(addr, len),
        }
    }
}

impl Heap<'_> {
    /// Writes a 96-byte descriptor of `kind` at `slot` with the given words at 48, 56, 64;
    /// its `Str` is a run-time name offset no other process can resolve.
    fn put(&mut self, slot: usize, kind: u8, words: [u64; 3]) -> u64 {
        let start = slot * 96;
        if self.bytes.len() < start + 96 {
            self.bytes.resize(start + 96, 0);
        }
        let descriptor = &mut self.bytes[start..start + 96];
        descriptor[23] = kind;
        descriptor[40..44].copy_from_slice(&(-7i32).to_le_bytes());
        for (index, word) in words.into_iter().enumerate() {
            let at = 48 + 8 * index;
            descriptor[at..at + 8].copy_from_slice(&word.to_le_bytes());
        }
        self.base + u64::try_from(start).unwrap()
    }
}

/// Types made by `reflect` at run time: built from their parts, with `?` for a part that
/// cannot be read.
#[test]
fn run_time_types_are_named_from_their_parts() {
    for version in ["1.19", "1.24.11", "1.27.3"] {
        let path = build(version, Build::Plain, &[], "amd64");
        let binary = open(&path);
        let file = binary.file_memory();
        let printed = run_fixture(&path);
        // map[int][]string, a static type: its key and element are static too.
        let (static_map, name) = printed.maps[1].clone();
        assert_eq!(name, "map[int][]string");
        let word = |addr: u64| u64::from_le_bytes(file.read(addr, 8).unwrap().try_into().unwrap());
        let (int, strings) = (word(static_map + 48), word(static_map + 56));
        let mut heap = Heap {
            file: &file,
            base: 0xc000_0000_0000,
            bytes: Vec::new(),
        };
        let slice = heap.put(0, kind::SLICE, [strings, 0, 0]);
        let pointer = heap.put(1, kind::POINTER, [slice, 0, 0]);
        let array = heap.put(2, kind::ARRAY, [int, 0, 3]);
        let receive = heap.put(3, kind::CHAN, [int, 1, 0]);
        let both = heap.put(4, kind::CHAN, [receive, 3, 0]);
        let unreadable = heap.put(5, kind::SLICE, [0xdead_0000, 0, 0]);
        let named = heap.put(6, 25, [0, 0, 0]); // a struct: reflect.StructOf
        let cases = [
            ([int, pointer], "map[int]*[][]string"),
            ([array, both], "map[[3]int]chan (<-chan int)"),
            ([static_map, unreadable], "map[map[int][]string]?"),
            ([named, int], "map[?]int"),
        ];
        for (slot, ([key, elem], expected)) in cases.into_iter().enumerate() {
            let map = heap.put(10 + slot, kind::MAP, [key, elem, 0]);
            let info = map_type_info(&heap, &binary, 0, map).unwrap();
            assert_eq!(info.name, expected, "go{version}");
        }
        let cyclic = heap.put(20, kind::POINTER, [heap.base + 20 * 96, 0, 0]);
        let map = heap.put(21, kind::MAP, [cyclic, int, 0]);
        assert_eq!(
            map_type_info(&heap, &binary, 0, map).unwrap().name,
            "map[?]int"
        );
    }
}

#[test]
fn refuses_what_is_not_a_map_type() {
    let path = build("1.24.11", Build::Plain, &[], "amd64");
    let binary = open(&path);
    let memory = binary.file_memory();
    let printed = run_fixture(&path);
    let (map, _) = printed.maps[0];
    let key = u64::from_le_bytes(memory.read(map + 48, 8).unwrap().try_into().unwrap());
    assert_eq!(
        map_type_info(&memory, &binary, 0, key),
        Err(TypeNameError::NotAMap {
            addr: key,
            kind: 24
        })
    );
    assert_eq!(
        map_type_info(&memory, &binary, 0, 0x10),
        Err(TypeNameError::Unreadable { addr: 0x10 })
    );
    assert_eq!(
        TypeNameError::Unreadable { addr: 0x10 }.to_string(),
        "cannot read the map type descriptor at 0x10"
    );
}

/// A reader that hands back fewer bytes than asked, or garbage: never a panic.
#[test]
fn misbehaving_readers_never_panic() {
    struct Short;
    impl ReadMemory for Short {
        fn read(&self, _: u64, len: usize) -> Option<Vec<u8>> {
            Some(vec![21; len / 2])
        }
    }
    struct Garbage(std::cell::Cell<u64>);
    impl ReadMemory for Garbage {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            let mut state = self.0.get() ^ addr;
            let bytes = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            self.0.set(state);
            Some(bytes)
        }
    }
    let binary = open(&build("1.24.11", Build::Plain, &[], "amd64"));
    assert!(map_type_info(&Short, &binary, 0, 0x1000).is_err());
    let garbage = Garbage(std::cell::Cell::new(1));
    for addr in 0..2000 {
        let _ = map_type_info(&garbage, &binary, addr, addr * 4096);
    }
}
