//! Whether the Go heap object at an address is still allocated, read from the target's own
//! heap metadata while it runs.
//!
//! The garbage collector frees a map without calling any map function, so only the heap
//! itself can say that a map is gone. This reader follows the runtime's path from an address
//! to its allocation bit, as `viewcore` (golang.org/x/debug) does on a core file:
//!
//! 1. `runtime.mheap_` (a `.symtab` data symbol) holds `arenas`, an L1 × L2 index of
//!    64 MiB heap arenas. On linux 64-bit the L1 level has one entry and the L2 level 2^22;
//!    the index of `p` is `(p - arenaBaseOffset) / 64 MiB`, where `arenaBaseOffset` is
//!    `0xffff800000000000` on amd64 and 0 on arm64 (runtime/malloc.go).
//! 2. The arena's `heapArena.spans[(p / 8 KiB) % 8192]` is the `mspan` of the page.
//! 3. The span covers `[startAddr, startAddr + npages × 8 KiB)` and holds objects of
//!    `elemsize` bytes. A span whose state is `mSpanDead` holds nothing; one in any state but
//!    `mSpanInUse` (a goroutine stack is `mSpanManual`) is not a heap object. Freeing a span
//!    leaves its pages' entries pointing at its `mspan`, which the runtime reuses for other
//!    pages (`mheap.freeSpanLocked`): an entry whose span does not cover the page is stale,
//!    and the page holds nothing.
//! 4. A swept span (`sweepgen` equal to `mheap_.sweepgen`, or 3 more: swept and cached)
//!    has object `i` allocated when `i < freeindex` (handed out since the sweep) or its bit in
//!    `allocBits` is set (it survived the last collection) — `mspan.isFree` in mbitmap.go.
//!    A span not yet swept after a collection (`sweepgen` 2 less) keeps exactly the objects
//!    whose bit in `gcmarkBits` the collector set — except under the Green Tea collector
//!    (default from Go 1.26, `GOEXPERIMENT=greenteagc` in 1.25), which keeps the marks of
//!    small-object spans at the end of the span until the sweep moves them into
//!    `gcmarkBits` (runtime/mgcmark_greenteagc.go): there an unswept span is unknown.
//!    Other states (being swept, cached before the sweep) are read as unknown.
//!    `runtime.GC()` returns with every span swept, and the background sweeper finishes
//!    soon after any collection, so unknown spans do not stay unknown.
//!
//! The target is never paused, so a read can tear. Every `Free` answer is read twice: the
//! span's fields and `mheap_.sweepgen` must be the same before and after the bit was read, or
//! the answer is [`ObjectState::Unknown`]. A torn read is never `Free`. Addresses are
//! answered in batches that read each span and its bitmap once.
//!
//! Struct layouts come from [`layout`], a table per Go release and architecture, checked
//! against every installed toolchain's runtime DWARF in the unit tests.

use std::collections::HashMap;

use crate::inspect::{Arch, GoBinary, GoVersion, ReadMemory};

/// Bytes per runtime page (`_PageSize`), the unit of `heapArena.spans`.
const PAGE_BYTES: u64 = 8 << 10;
/// Bytes per heap arena (`heapArenaBytes` on linux 64-bit).
const ARENA_BYTES: u64 = 64 << 20;
/// Pages per heap arena: entries of `heapArena.spans`.
const PAGES_PER_ARENA: u64 = ARENA_BYTES / PAGE_BYTES;
/// Entries of the L2 arena index (`1 << arenaL2Bits`; the L1 level has one entry on linux).
pub const ARENA_L2_ENTRIES: u64 = 1 << 22;
/// `mSpanDead`: the span holds no objects.
const SPAN_DEAD: u8 = 0;
/// `mSpanInUse`: a span of heap objects.
const SPAN_IN_USE: u8 = 1;
/// More objects than any span holds (a one-page span of 8-byte objects holds 1,024): a span
/// read as having more was torn or is not a span, and its bitmap is not read.
const MAX_SPAN_OBJECTS: u64 = 1 << 16;

/// What the heap says about the object at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// A heap object is allocated there: the one of `size` bytes at `start`. An object that
    /// starts elsewhere or is smaller than what lived at the address is something else.
    Allocated {
        /// Its first byte.
        start: u64,
        /// Its size class's size (`mspan.elemsize`).
        size: u64,
    },
    /// The slot was free at one moment while it was read: whatever lived there is gone.
    Free,
    /// Not a heap object (a goroutine stack, a global), unreadable, or read while the
    /// runtime was changing it.
    Unknown,
}

/// Offsets in `runtime.mspan`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLayout {
    /// `startAddr uintptr`.
    pub start_addr: u64,
    /// `npages uintptr`.
    pub npages: u64,
    /// `freeindex`: uintptr up to Go 1.21, uint16 from 1.22.
    pub freeindex: u64,
    /// Size of `freeindex` in bytes (8 or 2).
    pub freeindex_bytes: u64,
    /// `allocBits *gcBits`.
    pub alloc_bits: u64,
    /// `gcmarkBits *gcBits`.
    pub gcmark_bits: u64,
    /// `sweepgen uint32`.
    pub sweepgen: u64,
    /// `state mSpanStateBox` (one byte).
    pub state: u64,
    /// `elemsize uintptr`.
    pub elemsize: u64,
}

impl SpanLayout {
    /// Bytes to read to cover every field above.
    fn read_len(&self) -> usize {
        (self.elemsize + 8) as usize
    }
}

/// Offsets of the heap structures one Go release uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    /// `mheap.sweepgen uint32`.
    pub mheap_sweepgen: u64,
    /// `mheap.arenas [1]*[1 << 22]*heapArena`.
    pub mheap_arenas: u64,
    /// `heapArena.spans [8192]*mspan`.
    pub arena_spans: u64,
    /// `runtime.mspan`.
    pub span: SpanLayout,
}

/// The layout of Go `version` on `arch`, for binaries without DWARF; `None` for a release
/// not checked here (1.17, 1.18, 1.20, and anything after 1.27): guessing could turn a
/// live map into a freed one.
pub fn layout(version: GoVersion, arch: Arch) -> Option<HeapLayout> {
    let wide_span = SpanLayout {
        start_addr: 24,
        npages: 32,
        freeindex: 48,
        freeindex_bytes: 8,
        alloc_bits: 72,
        gcmark_bits: 80,
        sweepgen: 88,
        state: 99,
        elemsize: 104,
    };
    let (mheap_sweepgen, mheap_arenas, arena_spans, span) = match (version.major, version.minor) {
        (1, 19) => (65848, 65936, 2_097_152, wide_span),
        (1, 21) => (
            65856,
            65944,
            1_064_960,
            SpanLayout {
                sweepgen: 96,
                state: 107,
                elemsize: 112,
                ..wide_span
            },
        ),
        (1, 22..=27) => (
            65856,
            match arch {
                Arch::Amd64 => 66008,
                Arch::Arm64 => 66072,
            },
            0,
            SpanLayout {
                freeindex_bytes: 2,
                alloc_bits: 64,
                gcmark_bits: 72,
                ..wide_span
            },
        ),
        _ => return None,
    };
    Some(HeapLayout {
        mheap_sweepgen,
        mheap_arenas,
        arena_spans,
        span,
    })
}

/// Why the heap of a target cannot be read; release detection then falls back to headers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeapUnavailable {
    /// Stripped binaries have no `.symtab`, so no `runtime.mheap_`.
    #[error("no runtime.mheap_ symbol (stripped binary)")]
    NoSymbol,
    /// No checked layout for this release.
    #[error("no heap layout known for Go {0}")]
    UnknownLayout(GoVersion),
}

/// The heap of one running target.
#[derive(Clone, Debug)]
pub struct Heap {
    /// Run-time address of `runtime.mheap_`.
    mheap: u64,
    layout: HeapLayout,
    arena_base_offset: u64,
    /// Whether an unswept span's marks are all in `gcmarkBits` (not under Green Tea).
    marks_in_gcmark_bits: bool,
    /// `heapArena` addresses by arena index, once read: the runtime never moves or frees an
    /// arena's metadata. At most one entry per 64 MiB of heap the target ever had.
    arenas: HashMap<u64, u64>,
}

/// The span fields a decision depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    npages: u64,
    freeindex: u64,
    alloc_bits: u64,
    gcmark_bits: u64,
    sweepgen: u32,
    state: u8,
    elemsize: u64,
}

/// What one batch of [`Heap::object_states`] read, so each is read once.
#[derive(Default)]
struct Reads {
    /// `heapArena.spans` entry address → the span there.
    entries: HashMap<u64, Option<u64>>,
    /// Span address → its fields.
    spans: HashMap<u64, Option<Span>>,
    /// Bitmap address → the whole bitmap: one read per span, whatever number of its
    /// objects a batch asks about.
    bitmaps: HashMap<u64, Option<Vec<u8>>>,
}

/// What the span says before its bitmap is read.
enum Decision {
    Known(ObjectState),
    /// The object is allocated iff bit `index` of the bitmap at `bits`, which has a bit for
    /// each of the span's `objects`, is set.
    Bit {
        bits: u64,
        index: u64,
        objects: u64,
    },
}

impl Span {
    /// Object `index` of this span, allocated.
    fn allocated(&self, index: u64) -> ObjectState {
        ObjectState::Allocated {
            start: self.start + index * self.elemsize,
            size: self.elemsize,
        }
    }
}

impl Heap {
    /// Finds the heap of a target running `binary`, loaded `bias` bytes from its linked
    /// addresses.
    pub fn find(binary: &GoBinary, bias: u64) -> Result<Heap, HeapUnavailable> {
        let mheap = binary
            .data_symbol("runtime.mheap_")
            .ok_or(HeapUnavailable::NoSymbol)?;
        let version = *binary.go_version();
        let experiments = binary.raw_go_version();
        let green_tea = !experiments.contains("nogreenteagc")
            && (version.minor >= 26 || experiments.contains("greenteagc"));
        Heap::at(mheap.wrapping_add(bias), version, binary.arch(), green_tea)
    }

    /// The heap whose `runtime.mheap_` is at run-time address `mheap` in a target built by Go
    /// `version` for `arch`, with or without the Green Tea collector: what [`Heap::find`]
    /// makes of a binary, and how the fuzzer reaches the heap reader without one.
    pub fn at(
        mheap: u64,
        version: GoVersion,
        arch: Arch,
        green_tea: bool,
    ) -> Result<Heap, HeapUnavailable> {
        let layout = layout(version, arch).ok_or(HeapUnavailable::UnknownLayout(version))?;
        Ok(Heap {
            mheap,
            layout,
            marks_in_gcmark_bits: !green_tea,
            arenas: HashMap::new(),
            arena_base_offset: match arch {
                Arch::Amd64 => 0xffff_8000_0000_0000,
                Arch::Arm64 => 0,
            },
        })
    }

    /// The run-time address of `runtime.mheap_`, where the heap scan starts too.
    pub fn mheap_addr(&self) -> u64 {
        self.mheap
    }

    /// The layout this reader uses, so the heap scan reads spans the same way.
    pub fn heap_layout(&self) -> &HeapLayout {
        &self.layout
    }

    /// Whether the release runs the Green Tea collector, which keeps mark bits at the end
    /// of small-object spans (after their heap bits).
    pub fn green_tea(&self) -> bool {
        !self.marks_in_gcmark_bits
    }

    /// The `mspan` that covers `addr`, whatever its state; `None` outside the heap.
    pub fn span_of(&mut self, memory: &dyn ReadMemory, addr: u64) -> Option<u64> {
        let arena = self.arena(memory, addr)?;
        let page = (addr / PAGE_BYTES) % PAGES_PER_ARENA;
        nonzero(read_u64(
            memory,
            arena + self.layout.arena_spans + page * 8,
        )?)
    }

    /// Whether the heap object containing `addr` is allocated right now.
    pub fn object_state(&mut self, memory: &dyn ReadMemory, addr: u64) -> ObjectState {
        self.object_states(memory, &[addr])[0]
    }

    /// [`Heap::object_state`] of each of `addrs`, reading each span, spans entry and bitmap
    /// once for all of them. Every `Free` answer is confirmed at the end: its span's
    /// fields and `mheap_.sweepgen` must read as they did before its bit was read.
    pub fn object_states(&mut self, memory: &dyn ReadMemory, addrs: &[u64]) -> Vec<ObjectState> {
        let sweepgen_at = self.mheap.checked_add(self.layout.mheap_sweepgen);
        let Some(sweepgen) = sweepgen_at.and_then(|at| read_u32(memory, at)) else {
            return vec![ObjectState::Unknown; addrs.len()];
        };
        let mut reads = Reads::default();
        let mut states: Vec<(ObjectState, u64)> = addrs
            .iter()
            .map(|&addr| {
                self.try_state(memory, addr, sweepgen, &mut reads)
                    .unwrap_or((ObjectState::Unknown, 0))
            })
            .collect();
        if states.iter().any(|(state, _)| *state == ObjectState::Free) {
            let still = sweepgen_at.and_then(|at| read_u32(memory, at));
            let mut unchanged: HashMap<u64, bool> = HashMap::new();
            for (state, span_addr) in &mut states {
                if *state != ObjectState::Free {
                    continue;
                }
                let confirmed = still == Some(sweepgen)
                    && *unchanged.entry(*span_addr).or_insert_with(|| {
                        let before = reads.spans.get(span_addr).copied().flatten();
                        before.is_some() && self.read_span(memory, *span_addr) == before
                    });
                if !confirmed {
                    *state = ObjectState::Unknown;
                }
            }
        }
        states.into_iter().map(|(state, _)| state).collect()
    }

    /// The state of the object at `addr` and the address of its span.
    fn try_state(
        &mut self,
        memory: &dyn ReadMemory,
        addr: u64,
        sweepgen: u32,
        reads: &mut Reads,
    ) -> Option<(ObjectState, u64)> {
        let arena = self.arena(memory, addr)?;
        let page = (addr / PAGE_BYTES) % PAGES_PER_ARENA;
        let entry = arena
            .checked_add(self.layout.arena_spans)?
            .checked_add(page * 8)?;
        let span_addr = *reads
            .entries
            .entry(entry)
            .or_insert_with(|| read_u64(memory, entry).and_then(nonzero));
        let span_addr = span_addr?;
        let span = *reads
            .spans
            .entry(span_addr)
            .or_insert_with(|| self.read_span(memory, span_addr));
        let span = span?;
        let state = match decide(&span, sweepgen, addr, self.marks_in_gcmark_bits)? {
            Decision::Known(state) => state,
            Decision::Bit {
                bits,
                index,
                objects,
            } => {
                let bitmap = reads.bitmaps.entry(nonzero(bits)?).or_insert_with(|| {
                    read_exact(memory, bits, objects.div_ceil(8).try_into().ok()?)
                });
                let byte = bitmap.as_ref()?.get(usize::try_from(index / 8).ok()?)?;
                if byte & (1 << (index % 8)) != 0 {
                    span.allocated(index)
                } else {
                    ObjectState::Free
                }
            }
        };
        Some((state, span_addr))
    }

    /// The `heapArena` of the arena holding `addr`; `None` outside the heap.
    fn arena(&mut self, memory: &dyn ReadMemory, addr: u64) -> Option<u64> {
        let index = addr.wrapping_sub(self.arena_base_offset) / ARENA_BYTES;
        if index >= ARENA_L2_ENTRIES {
            return None;
        }
        if let Some(&arena) = self.arenas.get(&index) {
            return Some(arena);
        }
        let l2 = nonzero(read_u64(
            memory,
            self.mheap.checked_add(self.layout.mheap_arenas)?,
        )?)?;
        let arena = nonzero(read_u64(memory, l2.checked_add(index * 8)?)?)?;
        self.arenas.insert(index, arena);
        Some(arena)
    }

    fn read_span(&self, memory: &dyn ReadMemory, span: u64) -> Option<Span> {
        let layout = &self.layout.span;
        let bytes = read_exact(memory, span, layout.read_len())?;
        let word = |at: u64| u64_at(&bytes, at as usize);
        let freeindex = match layout.freeindex_bytes {
            2 => u64::from(u16::from_le_bytes([
                bytes[layout.freeindex as usize],
                bytes[layout.freeindex as usize + 1],
            ])),
            _ => word(layout.freeindex),
        };
        let at = layout.sweepgen as usize;
        Some(Span {
            start: word(layout.start_addr),
            npages: word(layout.npages),
            freeindex,
            alloc_bits: word(layout.alloc_bits),
            gcmark_bits: word(layout.gcmark_bits),
            sweepgen: u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]),
            state: bytes[layout.state as usize],
            elemsize: word(layout.elemsize),
        })
    }
}

/// The span-level rules of the module documentation; `None` for unknown.
fn decide(
    span: &Span,
    heap_sweepgen: u32,
    addr: u64,
    marks_in_gcmark_bits: bool,
) -> Option<Decision> {
    if span.start == 0 || span.npages == 0 || span.npages > PAGES_PER_ARENA * 64 {
        return None;
    }
    let bytes = span.npages.checked_mul(PAGE_BYTES)?;
    if addr < span.start || addr - span.start >= bytes {
        // The runtime leaves a freed span's pages pointing at its `mspan`, and hands that
        // struct out again for other pages: a span that does not cover the page was freed,
        // and so was everything that lived there.
        return Some(Decision::Known(ObjectState::Free));
    }
    match span.state {
        SPAN_DEAD => return Some(Decision::Known(ObjectState::Free)),
        SPAN_IN_USE => {}
        _ => return None,
    }
    if span.elemsize == 0 {
        return None;
    }
    let index = (addr - span.start) / span.elemsize;
    let objects = bytes / span.elemsize;
    if objects > MAX_SPAN_OBJECTS {
        return None;
    }
    if span.sweepgen == heap_sweepgen || span.sweepgen == heap_sweepgen.wrapping_add(3) {
        if index < span.freeindex {
            return Some(Decision::Known(span.allocated(index)));
        }
        return Some(Decision::Bit {
            bits: span.alloc_bits,
            index,
            objects,
        });
    }
    if marks_in_gcmark_bits && span.sweepgen == heap_sweepgen.wrapping_sub(2) {
        return Some(Decision::Bit {
            bits: span.gcmark_bits,
            index,
            objects,
        });
    }
    None
}

fn nonzero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

fn read_exact(memory: &dyn ReadMemory, addr: u64, len: usize) -> Option<Vec<u8>> {
    memory.read(addr, len).filter(|bytes| bytes.len() == len)
}

fn read_u64(memory: &dyn ReadMemory, addr: u64) -> Option<u64> {
    Some(u64_at(&read_exact(memory, addr, 8)?, 0))
}

fn read_u32(memory: &dyn ReadMemory, addr: u64) -> Option<u32> {
    let bytes = read_exact(memory, addr, 4)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests;
