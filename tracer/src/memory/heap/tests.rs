//! The heap reader against synthetic heaps (every rule of the module documentation, and
//! torn reads), and its layout table against the runtime DWARF of every installed toolchain.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::dwarf_oracle::{each_entry, string_attr, with_dwarf};
use crate::gofixture::{self, GO_VERSIONS};

fn go(minor: u32) -> GoVersion {
    GoVersion {
        major: 1,
        minor,
        patch: 0,
    }
}

/// A sparse little-endian memory; `after` takes effect once `reads` reads have been made,
/// to model the runtime changing the heap between two reads.
#[derive(Default)]
struct FakeMemory {
    bytes: HashMap<u64, u8>,
    after: Option<(usize, HashMap<u64, u8>)>,
    reads: Cell<usize>,
}

impl FakeMemory {
    fn put(&mut self, addr: u64, value: &[u8]) {
        for (offset, byte) in value.iter().enumerate() {
            self.bytes.insert(addr + offset as u64, *byte);
        }
    }
}

impl ReadMemory for FakeMemory {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let reads = self.reads.get();
        self.reads.set(reads + 1);
        (0..len as u64)
            .map(|offset| {
                let at = addr + offset;
                match &self.after {
                    Some((from, changed)) if reads >= *from && changed.contains_key(&at) => {
                        changed.get(&at).copied()
                    }
                    _ => self.bytes.get(&at).copied(),
                }
            })
            .collect()
    }
}

const MHEAP: u64 = 0x50_0000;
const L2: u64 = 0x7f00_0000_0000;
const ARENA: u64 = 0x7f10_0000_0000;
const SPAN: u64 = 0x7f20_0000_0000;
const ALLOC_BITS: u64 = 0x7f30_0000_0000;
const MARK_BITS: u64 = 0x7f40_0000_0000;
/// A span of 48-byte objects over one page in the first amd64 heap arena.
const START: u64 = 0x00c0_0000_2000;
const SWEEPGEN: u32 = 40;

struct Fake {
    heap: Heap,
    memory: FakeMemory,
}

/// A go1.24 amd64 heap with one span; objects 0–3 below `freeindex` (4), object 5 has its
/// alloc bit, object 6 its mark bit.
fn fake(span_sweepgen: u32, state: u8) -> Fake {
    let layout = layout(go(24), Arch::Amd64).unwrap();
    let heap = Heap {
        mheap: MHEAP,
        layout,
        arena_base_offset: 0xffff_8000_0000_0000,
        marks_in_gcmark_bits: true,
        arenas: HashMap::new(),
    };
    let mut memory = FakeMemory::default();
    memory.put(MHEAP + layout.mheap_sweepgen, &SWEEPGEN.to_le_bytes());
    memory.put(MHEAP + layout.mheap_arenas, &L2.to_le_bytes());
    let index = START.wrapping_sub(0xffff_8000_0000_0000) / ARENA_BYTES;
    memory.put(L2 + index * 8, &ARENA.to_le_bytes());
    let page = (START / PAGE_BYTES) % PAGES_PER_ARENA;
    memory.put(ARENA + layout.arena_spans + page * 8, &SPAN.to_le_bytes());
    let span = layout.span;
    memory.put(SPAN, &[0; 112]);
    memory.put(SPAN + span.start_addr, &START.to_le_bytes());
    memory.put(SPAN + span.npages, &1u64.to_le_bytes());
    memory.put(SPAN + span.freeindex, &4u16.to_le_bytes());
    memory.put(SPAN + span.alloc_bits, &ALLOC_BITS.to_le_bytes());
    memory.put(SPAN + span.gcmark_bits, &MARK_BITS.to_le_bytes());
    memory.put(SPAN + span.sweepgen, &span_sweepgen.to_le_bytes());
    memory.put(SPAN + span.state, &[state]);
    memory.put(SPAN + span.elemsize, &48u64.to_le_bytes());
    // A bit for each of the page's 170 objects.
    let mut alloc_bits = [0u8; 22];
    alloc_bits[0] = 1 << 5;
    memory.put(ALLOC_BITS, &alloc_bits);
    let mut mark_bits = [0u8; 22];
    mark_bits[0] = 1 << 6;
    memory.put(MARK_BITS, &mark_bits);
    Fake { heap, memory }
}

fn object(index: u64) -> u64 {
    START + index * 48
}

/// What the reader says of an allocated object of the fake span.
fn allocated(index: u64) -> ObjectState {
    ObjectState::Allocated {
        start: object(index),
        size: 48,
    }
}

#[test]
fn a_swept_span_answers_from_freeindex_and_alloc_bits() {
    for sweepgen in [SWEEPGEN, SWEEPGEN + 3] {
        let Fake { mut heap, memory } = fake(sweepgen, SPAN_IN_USE);
        let mut state = |index| heap.object_state(&memory, object(index));
        assert_eq!(state(0), allocated(0));
        assert_eq!(state(3), allocated(3));
        assert_eq!(state(4), ObjectState::Free);
        assert_eq!(state(5), allocated(5));
        assert_eq!(state(6), ObjectState::Free);
        // An interior address belongs to its object.
        assert_eq!(heap.object_state(&memory, object(5) + 8), allocated(5));
    }
}

#[test]
fn a_batch_reads_each_span_and_bitmap_once() {
    let Fake { mut heap, memory } = fake(SWEEPGEN, SPAN_IN_USE);
    let addrs: Vec<u64> = (0..8).map(object).collect();
    let states = heap.object_states(&memory, &addrs);
    let one_by_one: Vec<ObjectState> = addrs
        .iter()
        .map(|&addr| heap.object_state(&memory, addr))
        .collect();
    assert_eq!(states, one_by_one);
    assert_eq!(states[4], ObjectState::Free);
    let before = memory.reads.get();
    heap.object_states(&memory, &addrs);
    // sweepgen, spans entry, span, its bitmap; then sweepgen and span to confirm Free
    // (the arena is already known).
    assert_eq!(memory.reads.get() - before, 6);
}

#[test]
fn an_unswept_span_answers_from_the_mark_bits() {
    let Fake { mut heap, memory } = fake(SWEEPGEN - 2, SPAN_IN_USE);
    assert_eq!(heap.object_state(&memory, object(0)), ObjectState::Free);
    assert_eq!(heap.object_state(&memory, object(5)), ObjectState::Free);
    assert_eq!(heap.object_state(&memory, object(6)), allocated(6));
}

#[test]
fn an_unswept_span_under_green_tea_is_unknown() {
    let Fake { mut heap, memory } = fake(SWEEPGEN - 2, SPAN_IN_USE);
    heap.marks_in_gcmark_bits = false;
    assert_eq!(heap.object_state(&memory, object(0)), ObjectState::Unknown);
    assert_eq!(heap.object_state(&memory, object(6)), ObjectState::Unknown);
}

#[test]
fn spans_being_swept_cached_unswept_or_not_heap_are_unknown() {
    for sweepgen in [SWEEPGEN - 1, SWEEPGEN + 1] {
        let Fake { mut heap, memory } = fake(sweepgen, SPAN_IN_USE);
        assert_eq!(heap.object_state(&memory, object(6)), ObjectState::Unknown);
    }
    // A goroutine stack (mSpanManual).
    let Fake { mut heap, memory } = fake(SWEEPGEN, 2);
    assert_eq!(heap.object_state(&memory, object(6)), ObjectState::Unknown);
    // A page no span ever covered, outside any arena, or in an arena never mapped.
    let Fake { mut heap, memory } = fake(SWEEPGEN, SPAN_IN_USE);
    assert_eq!(
        heap.object_state(&memory, START + PAGE_BYTES),
        ObjectState::Unknown
    );
    assert_eq!(heap.object_state(&memory, 0x40_0000), ObjectState::Unknown);
    assert_eq!(
        heap.object_state(&memory, START + ARENA_BYTES),
        ObjectState::Unknown
    );
    assert_eq!(heap.object_state(&memory, u64::MAX), ObjectState::Unknown);
}

#[test]
fn a_dead_span_holds_nothing() {
    let Fake { mut heap, memory } = fake(SWEEPGEN, SPAN_DEAD);
    assert_eq!(heap.object_state(&memory, object(0)), ObjectState::Free);
}

#[test]
fn a_page_whose_span_was_freed_and_its_mspan_reused_holds_nothing() {
    // The next page's entry still names the span (now covering only `START`'s page) that
    // held it before it was freed.
    let page = ((START + PAGE_BYTES) / PAGE_BYTES) % PAGES_PER_ARENA;
    let spans = layout(go(24), Arch::Amd64).unwrap().arena_spans;
    for state in [SPAN_IN_USE, SPAN_DEAD, 2] {
        let Fake {
            mut heap,
            mut memory,
        } = fake(SWEEPGEN, state);
        memory.put(ARENA + spans + page * 8, &SPAN.to_le_bytes());
        assert_eq!(
            heap.object_state(&memory, START + PAGE_BYTES + 48),
            ObjectState::Free
        );
    }
    // A span struct that was never initialized says nothing.
    let Fake {
        mut heap,
        mut memory,
    } = fake(SWEEPGEN, SPAN_IN_USE);
    memory.put(ARENA + spans + page * 8, &SPAN.to_le_bytes());
    let npages = layout(go(24), Arch::Amd64).unwrap().span.npages;
    memory.put(SPAN + npages, &0u64.to_le_bytes());
    assert_eq!(
        heap.object_state(&memory, START + PAGE_BYTES + 48),
        ObjectState::Unknown
    );
}

#[test]
fn a_read_torn_by_the_runtime_is_never_free() {
    // A sweep starts between the first and second read of the span, or a GC cycle ends.
    let span = layout(go(24), Arch::Amd64).unwrap().span;
    let changes = [
        (SPAN + span.sweepgen, (SWEEPGEN - 1).to_le_bytes()),
        (MHEAP + 65856, (SWEEPGEN + 2).to_le_bytes()),
    ];
    for (addr, value) in changes {
        let Fake {
            mut heap,
            mut memory,
        } = fake(SWEEPGEN, SPAN_IN_USE);
        let changed = value
            .iter()
            .enumerate()
            .map(|(offset, byte)| (addr + offset as u64, *byte))
            .collect();
        // Reads: sweepgen, L2, arena, span entry, span, bit byte; then the check.
        memory.after = Some((6, changed));
        assert_eq!(heap.object_state(&memory, object(6)), ObjectState::Unknown);
    }
}

#[test]
fn releases_without_a_checked_layout_have_none() {
    for minor in [17, 18, 20, 28] {
        assert_eq!(layout(go(minor), Arch::Amd64), None, "1.{minor}");
    }
}

/// Members of the runtime structs the reader uses, as `struct.member` → (offset, byte size
/// of the member's type, type name).
type Members = BTreeMap<String, (u64, u64, String)>;

fn runtime_members(path: &std::path::Path) -> Members {
    const STRUCTS: [&str; 3] = ["runtime.mheap", "runtime.heapArena", "runtime.mspan"];
    with_dwarf(path, |dwarf| {
        // Type DIEs by their offset in .debug_info: Go refers to types across units.
        // Type DIEs: (byte size, name, what a typedef names).
        let mut types: HashMap<usize, (u64, String, Option<usize>)> = HashMap::new();
        let mut raw: Vec<(String, u64, usize)> = Vec::new();
        let mut current: Option<(String, isize)> = None;
        each_entry(dwarf, |unit, entry| {
            let Some(offset) = entry.offset().to_debug_info_offset(&unit.header) else {
                return;
            };
            let name = string_attr(dwarf, unit, entry, gimli::DW_AT_name);
            // Go writes no byte size on pointer types: they are address-sized.
            let size = entry
                .attr_value(gimli::DW_AT_byte_size)
                .and_then(|value| value.udata_value())
                .or_else(|| {
                    (entry.tag() == gimli::DW_TAG_pointer_type)
                        .then(|| u64::from(unit.header.address_size()))
                })
                .unwrap_or(0);
            types.insert(offset.0, (size, name.clone(), type_ref(unit, entry)));
            if current
                .as_ref()
                .is_some_and(|(_, depth)| entry.depth() <= *depth)
            {
                current = None;
            }
            if entry.tag() == gimli::DW_TAG_structure_type && STRUCTS.contains(&name.as_str()) {
                current = Some((name, entry.depth()));
                return;
            }
            let Some((parent, _)) = &current else {
                return;
            };
            if entry.tag() != gimli::DW_TAG_member {
                return;
            }
            let location = entry
                .attr_value(gimli::DW_AT_data_member_location)
                .and_then(|value| value.udata_value())
                .expect("member offset");
            let target = type_ref(unit, entry).expect("member type");
            raw.push((format!("{parent}.{name}"), location, target));
        });
        raw.into_iter()
            .map(|(name, offset, target)| {
                let (mut size, type_name, mut next) =
                    types.get(&target).cloned().unwrap_or_default();
                // A named type is a typedef of its underlying type, which has the size.
                while let (0, Some(underlying)) = (size, next) {
                    (size, _, next) = types.get(&underlying).cloned().unwrap_or_default();
                }
                (name, (offset, size, type_name))
            })
            .collect()
    })
}

/// The `.debug_info` offset of the type an entry refers to.
fn type_ref(
    unit: &crate::dwarf_oracle::Unit<'_>,
    entry: &crate::dwarf_oracle::Entry<'_>,
) -> Option<usize> {
    match entry.attr_value(gimli::DW_AT_type)? {
        gimli::AttributeValue::UnitRef(offset) => offset
            .to_debug_info_offset(&unit.header)
            .map(|offset| offset.0),
        gimli::AttributeValue::DebugInfoRef(offset) => Some(offset.0),
        _ => None,
    }
}

/// The table against the compiler's DWARF: every offset and size the reader uses, the
/// arena index's shape, and that `runtime.mheap_` is found — amd64 and cross-built arm64,
/// every toolchain, and the classic-map builds.
#[test]
fn layout_table_matches_the_runtime_dwarf_of_every_toolchain() {
    const NOSWISSMAP: &[(&str, &str)] = &[("GOEXPERIMENT", "noswissmap")];
    let every_release = GO_VERSIONS
        .iter()
        .flat_map(|version| [(*version, "amd64", &[][..]), (*version, "arm64", &[][..])]);
    let classic_maps = ["1.24.11", "1.25.5"].iter().flat_map(|version| {
        [
            (*version, "amd64", NOSWISSMAP),
            (*version, "arm64", NOSWISSMAP),
        ]
    });
    let mut checked = 0;
    for (version, goarch, env) in every_release.chain(classic_maps) {
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
        let table = layout(*binary.go_version(), binary.arch())
            .unwrap_or_else(|| panic!("{context}: no layout"));
        let members = runtime_members(&path);
        let member = |name: &str| {
            members
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{context}: no {name} in DWARF"))
        };
        let offset = |name: &str| member(name).0;
        assert_eq!(
            table.mheap_sweepgen,
            offset("runtime.mheap.sweepgen"),
            "{context}"
        );
        assert_eq!(member("runtime.mheap.sweepgen").1, 4, "{context}");
        assert_eq!(
            table.mheap_arenas,
            offset("runtime.mheap.arenas"),
            "{context}"
        );
        assert_eq!(
            member("runtime.mheap.arenas").2,
            format!("[1]*[{ARENA_L2_ENTRIES}]*runtime.heapArena"),
            "{context}"
        );
        assert_eq!(
            table.arena_spans,
            offset("runtime.heapArena.spans"),
            "{context}"
        );
        assert_eq!(
            member("runtime.heapArena.spans").2,
            format!("[{PAGES_PER_ARENA}]*runtime.mspan"),
            "{context}"
        );
        let span = table.span;
        for (field, expected, size) in [
            ("startAddr", span.start_addr, 8),
            ("npages", span.npages, 8),
            ("freeindex", span.freeindex, span.freeindex_bytes),
            ("allocBits", span.alloc_bits, 8),
            ("gcmarkBits", span.gcmark_bits, 8),
            ("sweepgen", span.sweepgen, 4),
            ("state", span.state, 1),
            ("elemsize", span.elemsize, 8),
        ] {
            let (at, bytes, _) = member(&format!("runtime.mspan.{field}"));
            assert_eq!((expected, size), (at, bytes), "{context}: mspan.{field}");
        }
        assert!(binary.data_symbol("runtime.mheap_").is_some(), "{context}");
        checked += 1;
    }
    assert_eq!(checked, GO_VERSIONS.len() * 2 + 4);
}

/// Found by fuzzing (`fuzz/regressions/heap/`): `runtime.mheap_` comes from the target's
/// symbol table and the heap's pointers from its memory, so an address plus an offset may
/// not fit in 64 bits. Such a heap is unreadable (`Unknown`), never an overflow.
#[test]
fn addresses_at_the_top_of_the_address_space_are_unknown() {
    let Fake { memory, .. } = fake(SWEEPGEN, SPAN_IN_USE);
    let mut heap = Heap::at(u64::MAX - 8, go(24), Arch::Amd64, false).unwrap();
    assert_eq!(heap.object_state(&memory, object(0)), ObjectState::Unknown);
    let Fake {
        mut heap,
        mut memory,
    } = fake(SWEEPGEN, SPAN_IN_USE);
    let arenas = MHEAP + layout(go(24), Arch::Amd64).unwrap().mheap_arenas;
    memory.put(arenas, &(u64::MAX - 8).to_le_bytes());
    assert_eq!(heap.object_state(&memory, object(5)), ObjectState::Unknown);
    let Fake {
        mut heap,
        mut memory,
    } = fake(SWEEPGEN, SPAN_IN_USE);
    let index = START.wrapping_sub(0xffff_8000_0000_0000) / ARENA_BYTES;
    memory.put(L2 + index * 8, &u64::MAX.to_le_bytes());
    assert_eq!(heap.object_state(&memory, object(5)), ObjectState::Unknown);
    let Fake {
        mut heap,
        mut memory,
    } = fake(SWEEPGEN, SPAN_IN_USE);
    let span = layout(go(24), Arch::Amd64).unwrap().span;
    memory.put(SPAN + span.alloc_bits, &u64::MAX.to_le_bytes());
    assert_eq!(heap.object_state(&memory, object(9)), ObjectState::Unknown);
}
