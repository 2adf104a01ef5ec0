//! Maps no package-level variable reaches: found by scanning the heap for map headers, and
//! named by the goroutine stacks that point at them.
//!
//! The DWARF roots ([`crate::memory::roots`]) only see maps a path of struct fields,
//! pointers and small arrays leads to from a package-level variable. A map in a slice, in
//! another map, in an interface, deep in a linked structure or in a goroutine's local
//! variable is still a heap object, and every map header is allocated by `new(hmap)` /
//! `new(maps.Map)`: an object of the header's size class (48 bytes; 64 for the 56-byte
//! classic header of Go 1.24–1.25 `noswissmap` builds) in a span whose objects hold
//! pointers. As viewcore and goref do, the scan reads the heap itself:
//!
//! 1. `mheap_.allspans` lists every span the runtime ever made. Each span in use with the
//!    header's `elemsize` and a scan span class is read whole, in one read.
//! 2. Every object in it is checked as a header, strictly ([`check_fields`]): flags, `B`,
//!    count against capacity, the classic hash seed or swiss seed non-zero, padding zero,
//!    swiss `dirLen == 1 << globalDepth` and `globalShift == 64 - globalDepth`. From Go
//!    1.22 the span's own pointer bitmap (the heap bits at the end of a small-object span,
//!    written from the object's type at allocation) must mark exactly the header's pointer
//!    fields.
//! 3. The object must be allocated and every non-nil pointer field must be the start of an
//!    allocated heap object big enough for what it points to (2^B buckets of at least 16
//!    bytes, `dirLen` table pointers): [`Heap::object_states`], which never answers
//!    allocated for a torn read.
//! 4. The header is read again; one that changed in between is skipped, never guessed.
//!
//! Goroutine stacks (`runtime.allgs` → each `g`'s `stack.lo/hi` and `sched.sp`) are then
//! scanned word by word, conservatively, for pointers to the maps found: the heap scan
//! finds the map, the stack says what holds it (`goroutine 18 stack`). The runtime's own
//! goroutines (whose `startpc` is a `runtime.` function other than `runtime.main`) are
//! skipped: a GC worker's stack holds stale pointers to whatever it last marked.
//!
//! The scan needs `.symtab` (`runtime.mheap_`, `runtime.allgs`): a stripped binary gets
//! neither. Blind spots: a map header allocated on a goroutine's stack (a map that does
//! not escape), spans the runtime is sweeping at the moment they are read (their objects
//! answer unknown), headers written while read, and, before Go 1.22 (no heap bits in the
//! span), the pointer-bitmap check: there only the field checks stand.
//!
//! Bounds (all stop the scan early and say so): [`MAX_SPANS`] spans listed,
//! [`MAX_SCAN_BYTES`] of header-class spans read, [`MAX_CANDIDATES`] headers kept,
//! [`MAX_TIME`] in all; stacks: [`MAX_GOROUTINES`] goroutines and [`MAX_STACK_BYTES`]
//! read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::inspect::{GoBinary, GoVersion, ReadMemory};
use crate::memory::heap::{Heap, ObjectState};
use crate::plan::MapImplementation;

/// Most spans of `mheap_.allspans` read: 2^21 spans cover 16 GiB of one-page spans (the
/// list itself is then 16 MiB).
pub const MAX_SPANS: u64 = 1 << 21;
/// Most bytes of header-class spans read (each span is read once, whole).
pub const MAX_SCAN_BYTES: u64 = 1 << 30;
/// Most headers that pass the field checks kept for the allocation check (about 30 MiB of
/// bookkeeping, and each found map becomes a record of the model and the report).
pub const MAX_CANDIDATES: usize = 1 << 18;
/// Longest the heap and stack scans run together.
pub const MAX_TIME: Duration = Duration::from_secs(60);
/// Most goroutines whose stacks are read.
pub const MAX_GOROUTINES: u64 = 1 << 20;
/// Most bytes of goroutine stacks read.
pub const MAX_STACK_BYTES: u64 = 256 << 20;

/// Bytes per runtime page.
const PAGE_BYTES: u64 = 8 << 10;
/// Longest header-class span accepted (the runtime uses one page for 48- and 64-byte
/// objects; a bigger span is a torn read).
const MAX_SPAN_PAGES: u64 = 16;
/// `mSpanInUse`.
const SPAN_IN_USE: u8 = 1;
/// Objects above this size carry a malloc header (Go 1.22+), up to [`MAX_SMALL_SIZE`].
const MIN_SIZE_FOR_MALLOC_HEADER: u64 = 512;
/// Largest small object (`maxSmallSize`); bigger ones have a span of their own.
const MAX_SMALL_SIZE: u64 = 32 << 10;
/// Bytes of Green Tea's `spanInlineMarkBits`, kept after the heap bits of small spans.
const INLINE_MARK_BITS: u64 = 128;
/// Smallest classic bucket: 8 tophash bytes and the overflow pointer.
const MIN_BUCKET_BYTES: u64 = 16;
/// Largest `B` a real classic map can have: 2^48 buckets would not fit any machine.
const MAX_LOG2_BUCKETS: u8 = 48;
/// Slots of a swiss small map's one group, and of a classic bucket.
const SLOTS: u64 = 8;
/// Most slots a swiss table holds before it splits.
const MAX_TABLE_SLOTS: u64 = 1024;
/// `_Gidle` and `_Gdead`: goroutines with no stack to read.
const G_IDLE: u32 = 0;
const G_DEAD: u32 = 6;
/// The `_Gscan` bit of `atomicstatus`.
const G_SCAN: u32 = 0x1000;
/// Largest goroutine stack (`maxstacksize` on 64-bit).
const MAX_STACK: u64 = 1 << 30;

/// Offsets the scan reads beyond the heap reader's ([`crate::memory::heap::layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLayout {
    /// `mheap.allspans []*mspan`.
    pub mheap_allspans: u64,
    /// `mspan.spanclass` (one byte: size class << 1 | noscan).
    pub span_spanclass: u64,
    /// `g.atomicstatus uint32`.
    pub g_status: u64,
    /// `g.goid uint64`.
    pub g_goid: u64,
    /// `g.sched.sp`: `g.sched` is at 56 and `gobuf.sp` first, in every release.
    pub g_sched_sp: u64,
    /// `g.startpc`: the entry of the goroutine's function.
    pub g_startpc: u64,
    /// Whether small-object spans keep their pointer bitmap at their end (Go 1.22+); then
    /// objects of 513 bytes to 32 KiB start with a malloc header holding their `*_type`.
    pub heap_bits_in_span: bool,
    /// `mspan.largeType`: the type of a large object's span (Go 1.22+).
    pub span_large_type: Option<u64>,
}

/// The scan's layout for Go `version` (the same on amd64 and arm64); `None` for a release
/// not checked against its DWARF.
pub fn scan_layout(version: GoVersion) -> Option<ScanLayout> {
    let (allspans, spanclass, status, goid, startpc) = match (version.major, version.minor) {
        (1, 19) => (65856, 98, 144, 152, 312),
        (1, 21) => (65864, 106, 144, 152, 296),
        (1, 22 | 25) => (65864, 98, 144, 152, 296),
        (1, 23..=24) => (65864, 98, 152, 160, 304),
        (1, 26..=27) => (65864, 98, 144, 152, 304),
        _ => return None,
    };
    Some(ScanLayout {
        mheap_allspans: allspans,
        span_spanclass: spanclass,
        g_status: status,
        g_goid: goid,
        g_sched_sp: 56,
        g_startpc: startpc,
        heap_bits_in_span: version.minor >= 22,
        span_large_type: (version.minor >= 22).then_some(152),
    })
}

/// The map header one binary allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderShape {
    /// `runtime.hmap`: 48 bytes, or 56 (`clearSeq` at 40, `extra` at 48) in Go 1.24–1.25
    /// `noswissmap` builds.
    Classic {
        /// The struct's size.
        size: u64,
    },
    /// `internal/runtime/maps.Map`, 48 bytes.
    Swiss,
}

impl HeaderShape {
    /// The header of binaries of `version` using `implementation`.
    pub fn of(version: GoVersion, implementation: MapImplementation) -> HeaderShape {
        match implementation {
            MapImplementation::Swiss => HeaderShape::Swiss,
            MapImplementation::Classic if version.minor >= 24 => HeaderShape::Classic { size: 56 },
            MapImplementation::Classic => HeaderShape::Classic { size: 48 },
        }
    }

    /// The size class's object size that holds the header.
    pub fn elemsize(self) -> u64 {
        match self {
            HeaderShape::Classic { size: 56 } => 64,
            _ => 48,
        }
    }

    /// Which of the object's words hold pointers, as the type's GC bitmap says: classic
    /// `buckets`, `oldbuckets`, `extra`; swiss `dirPtr`.
    pub fn pointer_mask(self) -> u64 {
        match self {
            HeaderShape::Classic { size: 56 } => 1 << 2 | 1 << 3 | 1 << 6,
            HeaderShape::Classic { .. } => 1 << 2 | 1 << 3 | 1 << 5,
            HeaderShape::Swiss => 1 << 2,
        }
    }
}

/// A pointer field of a header: it must be the start of an allocated heap object with at
/// least `min_bytes` bytes after any malloc header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointee {
    /// The pointer.
    pub addr: u64,
    /// The fewest bytes the object must have.
    pub min_bytes: u64,
}

/// Checks `words` (the header-class object's words) as a map header of `shape`; the
/// pointer fields to check on the heap, or `None` when it cannot be a map header.
pub fn check_fields(shape: HeaderShape, words: &[u64]) -> Option<Vec<Pointee>> {
    if words.len() as u64 != shape.elemsize() / 8 {
        return None;
    }
    let mut pointees = Vec::new();
    match shape {
        HeaderShape::Classic { size } => {
            let [count, second, buckets, oldbuckets, nevacuate, ..] = words[..] else {
                return None;
            };
            let flags = second as u8;
            let log2 = (second >> 8) as u8;
            let hash0 = second >> 32;
            if flags & 0xf0 != 0 || log2 > MAX_LOG2_BUCKETS || hash0 == 0 {
                return None;
            }
            if count > SLOTS << log2 || nevacuate > 1 << log2 {
                return None;
            }
            // The bytes after a 56-byte header in its 64-byte slot are never cleared (the
            // allocator clears the size asked for): they are not checked.
            let extra = if size == 56 { words[6] } else { words[5] };
            if buckets == 0 {
                if count > 0 || log2 > 0 {
                    return None;
                }
            } else {
                pointees.push(Pointee {
                    addr: buckets,
                    min_bytes: MIN_BUCKET_BYTES << log2,
                });
            }
            if oldbuckets != 0 {
                pointees.push(Pointee {
                    addr: oldbuckets,
                    min_bytes: MIN_BUCKET_BYTES << log2.saturating_sub(1),
                });
            }
            if extra != 0 {
                pointees.push(Pointee {
                    addr: extra,
                    min_bytes: 24,
                });
            }
        }
        HeaderShape::Swiss => {
            let [used, seed, dir_ptr, dir_len, bytes, _clear_seq] = words[..] else {
                return None;
            };
            let [depth, shift, writing, tombstones, rest @ ..] = bytes.to_le_bytes();
            if seed == 0 || writing > 1 || tombstones > 1 || rest != [0; 4] {
                return None;
            }
            if dir_len == 0 {
                if depth != 0 || (shift != 0 && shift != 64) {
                    return None;
                }
                if dir_ptr == 0 {
                    if used != 0 {
                        return None;
                    }
                } else {
                    if used > SLOTS {
                        return None;
                    }
                    pointees.push(Pointee {
                        addr: dir_ptr,
                        min_bytes: 16,
                    });
                }
            } else {
                if depth >= 21 || dir_len != 1 << depth || u32::from(shift) + u32::from(depth) != 64
                {
                    return None;
                }
                if dir_ptr == 0 || used > dir_len * MAX_TABLE_SLOTS {
                    return None;
                }
                pointees.push(Pointee {
                    addr: dir_ptr,
                    min_bytes: dir_len * 8,
                });
            }
        }
    }
    Some(pointees)
}

/// Whether a pointer is the start of `state`'s object, with at least `min_bytes` usable.
fn points_at_start(state: ObjectState, pointee: Pointee, malloc_headers: bool) -> bool {
    let ObjectState::Allocated { start, size } = state else {
        return false;
    };
    if pointee.addr == start {
        return size >= pointee.min_bytes;
    }
    malloc_headers
        && size > MIN_SIZE_FOR_MALLOC_HEADER
        && size <= MAX_SMALL_SIZE
        && pointee.addr == start + 8
        && size - 8 >= pointee.min_bytes
}

/// A span read again: its start and bytes, and what the read gave.
type Reread = ((u64, u64), Option<Vec<u8>>);

/// An object that passed the field and heap-bits checks.
struct Candidate {
    addr: u64,
    /// Its span's start and bytes.
    span: (u64, u64),
    words: Vec<u64>,
    pointees: Vec<Pointee>,
}

/// One map header the heap scan found and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapMap {
    /// The header's address (`%p`).
    pub addr: u64,
    /// The header's words as validated (and read again, unchanged).
    pub words: Vec<u64>,
}

/// What the scans did, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Spans listed in `mheap_.allspans` that were read.
    pub spans: u64,
    /// Of those, spans of the header's size class read whole.
    pub header_spans: u64,
    /// Bytes of the target's memory read by the heap scan.
    pub bytes_read: u64,
    /// Objects that passed the field and pointer-bitmap checks.
    pub candidates: u64,
    /// Of those, objects whose allocation or pointees did not check out.
    pub rejected: u64,
    /// Of those, headers that changed between two reads (skipped).
    pub torn: u64,
    /// Maps the heap scan found.
    pub maps: u64,
    /// Goroutines whose stacks were read.
    pub goroutines: u64,
    /// Bytes of stacks read.
    pub stack_bytes: u64,
    /// A bound stopped a scan early.
    pub truncated: bool,
    /// Milliseconds the heap scan took.
    pub heap_ms: f64,
    /// Milliseconds the stack scan took.
    pub stack_ms: f64,
}

/// The heap scan of one running target.
pub struct Scanner {
    heap: Heap,
    mheap: u64,
    span_layout: crate::memory::heap::SpanLayout,
    layout: ScanLayout,
    shape: HeaderShape,
    green_tea: bool,
    allgs: Option<u64>,
    /// Run-time entries of the runtime's own goroutine functions (GC workers, sweeper,
    /// scavenger, finalizers...): their stacks hold stale pointers to what they worked on,
    /// not what the program holds, so they name nothing.
    runtime_starts: HashSet<u64>,
}

/// Why a target's heap cannot be scanned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanUnavailable {
    /// The heap reader cannot run (stripped binary, unknown release).
    #[error(transparent)]
    Heap(#[from] crate::memory::heap::HeapUnavailable),
    /// No checked scan layout for this release.
    #[error("no heap-scan layout known for Go {0}")]
    UnknownLayout(GoVersion),
}

impl Scanner {
    /// The scanner of a target running `binary` loaded `bias` bytes from its linked
    /// addresses, whose maps are `implementation`'s.
    pub fn new(
        binary: &GoBinary,
        bias: u64,
        implementation: MapImplementation,
    ) -> Result<Scanner, ScanUnavailable> {
        let heap = Heap::find(binary, bias)?;
        let version = *binary.go_version();
        let layout = scan_layout(version).ok_or(ScanUnavailable::UnknownLayout(version))?;
        Ok(Scanner {
            mheap: heap.mheap_addr(),
            span_layout: heap.heap_layout().span,
            green_tea: heap.green_tea(),
            heap,
            layout,
            shape: HeaderShape::of(version, implementation),
            allgs: binary
                .data_symbol("runtime.allgs")
                .map(|addr| addr.wrapping_add(bias)),
            runtime_starts: binary
                .functions()
                .filter(|function| {
                    function.name.starts_with("runtime.") && function.name != "runtime.main"
                })
                .map(|function| function.vaddr.wrapping_add(bias))
                .collect(),
        })
    }

    /// Every map header on the heap, validated (see the module documentation), with what
    /// the scan did. `deadline` bounds the time.
    pub fn heap_maps(
        &mut self,
        memory: &dyn ReadMemory,
        deadline: Instant,
    ) -> (Vec<HeapMap>, ScanStats) {
        let started = Instant::now();
        let mut stats = ScanStats::default();
        let mut candidates: Vec<Candidate> = Vec::new();
        let spans = self.span_list(memory, &mut stats);
        let elemsize = self.shape.elemsize();
        let words_per_object = (elemsize / 8) as usize;
        for span in spans {
            if Instant::now() > deadline || candidates.len() >= MAX_CANDIDATES {
                stats.truncated = true;
                break;
            }
            let Some((start, npages)) = self.header_span(memory, span, &mut stats) else {
                continue;
            };
            let span_bytes = npages * PAGE_BYTES;
            if stats.bytes_read + span_bytes > MAX_SCAN_BYTES {
                stats.truncated = true;
                break;
            }
            let Some(body) = read_exact(memory, start, span_bytes as usize) else {
                continue;
            };
            stats.header_spans += 1;
            stats.bytes_read += span_bytes;
            let (objects, bitmap) = self.span_geometry(span_bytes);
            for index in 0..objects {
                let at = (index * elemsize) as usize;
                let mut object = [0u64; 8];
                for (word, slot) in object.iter_mut().enumerate().take(words_per_object) {
                    *slot = u64_at(&body, at + word * 8);
                }
                let words = &object[..words_per_object];
                let Some(pointees) = check_fields(self.shape, words) else {
                    continue;
                };
                if let Some(bitmap) = bitmap {
                    let first_word = index * elemsize / 8;
                    if object_bits(&body, bitmap, first_word, words_per_object as u64)
                        != Some(self.shape.pointer_mask())
                    {
                        continue;
                    }
                }
                candidates.push(Candidate {
                    addr: start + index * elemsize,
                    span: (start, span_bytes),
                    words: words.to_vec(),
                    pointees,
                });
            }
        }
        stats.candidates = candidates.len() as u64;
        let found = self.confirm(memory, candidates, &mut stats);
        stats.maps = found.len() as u64;
        stats.heap_ms = millis(started.elapsed());
        (found, stats)
    }

    /// The span pointers of `mheap_.allspans`, up to [`MAX_SPANS`].
    fn span_list(&self, memory: &dyn ReadMemory, stats: &mut ScanStats) -> Vec<u64> {
        let at = self.mheap + self.layout.mheap_allspans;
        let (Some(array), Some(len)) = (read_u64(memory, at), read_u64(memory, at + 8)) else {
            return Vec::new();
        };
        if len > MAX_SPANS {
            stats.truncated = true;
        }
        let len = len.min(MAX_SPANS);
        let Some(bytes) = read_exact(memory, array, (len * 8) as usize) else {
            return Vec::new();
        };
        stats.bytes_read += len * 8;
        bytes
            .chunks_exact(8)
            .map(|word| u64_at(word, 0))
            .filter(|&span| span != 0)
            .collect()
    }

    /// The start and pages of `span` if it is a span in use of header-class scan objects.
    fn header_span(
        &self,
        memory: &dyn ReadMemory,
        span: u64,
        stats: &mut ScanStats,
    ) -> Option<(u64, u64)> {
        let layout = &self.span_layout;
        let len = (layout.elemsize + 8) as usize;
        let bytes = read_exact(memory, span, len)?;
        stats.spans += 1;
        stats.bytes_read += len as u64;
        let state = bytes[layout.state as usize];
        let spanclass = bytes[self.layout.span_spanclass as usize];
        let elemsize = u64_at(&bytes, layout.elemsize as usize);
        let npages = u64_at(&bytes, layout.npages as usize);
        let start = u64_at(&bytes, layout.start_addr as usize);
        let fits = state == SPAN_IN_USE
            && spanclass & 1 == 0
            && elemsize == self.shape.elemsize()
            && (1..=MAX_SPAN_PAGES).contains(&npages)
            && start.is_multiple_of(PAGE_BYTES)
            && start != 0;
        fits.then_some((start, npages))
    }

    /// How many objects a header-class span of `span_bytes` holds, and where its heap
    /// bits start (Go 1.22+): one bit per word of the span, before Green Tea's inline mark
    /// bits when those are at the very end.
    fn span_geometry(&self, span_bytes: u64) -> (u64, Option<u64>) {
        let elemsize = self.shape.elemsize();
        if !self.layout.heap_bits_in_span {
            return (span_bytes / elemsize, None);
        }
        let bitmap_bytes = span_bytes / 64;
        let inline = if self.green_tea { INLINE_MARK_BITS } else { 0 };
        let bitmap = span_bytes - bitmap_bytes - inline;
        (bitmap / elemsize, Some(bitmap))
    }

    /// The candidates whose object and pointees are allocated and whose header reads the
    /// same again.
    fn confirm(
        &mut self,
        memory: &dyn ReadMemory,
        candidates: Vec<Candidate>,
        stats: &mut ScanStats,
    ) -> Vec<HeapMap> {
        let mut addrs = Vec::new();
        for candidate in &candidates {
            addrs.push(candidate.addr);
            addrs.extend(candidate.pointees.iter().map(|pointee| pointee.addr));
        }
        let states: HashMap<u64, ObjectState> = addrs
            .iter()
            .copied()
            .zip(self.heap.object_states(memory, &addrs))
            .collect();
        let malloc_headers = self.layout.heap_bits_in_span;
        let elemsize = self.shape.elemsize();
        let mut found = Vec::new();
        // The span read again, once for all its candidates (they come in span order).
        let mut again: Option<Reread> = None;
        for Candidate {
            addr,
            span,
            words,
            pointees,
        } in candidates
        {
            let own = Pointee {
                addr,
                min_bytes: elemsize,
            };
            let allocated = std::iter::once(own).chain(pointees).all(|pointee| {
                points_at_start(
                    states[&pointee.addr],
                    pointee,
                    malloc_headers && pointee.addr != addr,
                )
            });
            if !allocated {
                stats.rejected += 1;
                continue;
            }
            if again.as_ref().is_none_or(|(read, _)| *read != span) {
                let body = read_exact(memory, span.0, span.1 as usize);
                stats.bytes_read += span.1;
                again = Some((span, body));
            }
            let at = (addr - span.0) as usize;
            let same = again
                .as_ref()
                .and_then(|(_, body)| body.as_ref())
                .is_some_and(|body| {
                    body[at..at + elemsize as usize]
                        .chunks_exact(8)
                        .zip(&words)
                        .all(|(word, &was)| u64_at(word, 0) == was)
                });
            if !same {
                stats.rejected += 1;
                stats.torn += 1;
                continue;
            }
            found.push(HeapMap { addr, words });
        }
        found
    }

    /// For each of `maps` a goroutine stack points at, `goroutine N stack` (the lowest N
    /// when several do). Each goroutine's stack is read from its saved stack pointer (the
    /// whole stack when that is outside it) to its top.
    pub fn stack_holders(
        &self,
        memory: &dyn ReadMemory,
        maps: &HashSet<u64>,
        deadline: Instant,
        stats: &mut ScanStats,
    ) -> BTreeMap<u64, String> {
        let started = Instant::now();
        let mut holders: BTreeMap<u64, u64> = BTreeMap::new();
        for g in self.goroutines(memory, stats) {
            if Instant::now() > deadline {
                stats.truncated = true;
                break;
            }
            let Some((goid, from, to)) = self.stack_range(memory, g) else {
                continue;
            };
            if stats.stack_bytes + (to - from) > MAX_STACK_BYTES {
                stats.truncated = true;
                break;
            }
            let Some(stack) = read_exact(memory, from, (to - from) as usize) else {
                continue;
            };
            stats.goroutines += 1;
            stats.stack_bytes += to - from;
            for word in stack.chunks_exact(8).map(|word| u64_at(word, 0)) {
                if maps.contains(&word) {
                    holders
                        .entry(word)
                        .and_modify(|held| *held = (*held).min(goid))
                        .or_insert(goid);
                }
            }
        }
        stats.stack_ms = millis(started.elapsed());
        holders
            .into_iter()
            .map(|(map, goid)| (map, format!("goroutine {goid} stack")))
            .collect()
    }

    /// The run-time type descriptor of the storage of the map whose header words are
    /// `words`: classic buckets, a swiss small map's group, or the groups of a swiss map's
    /// first table. Go 1.22+ records it for storage that holds pointers: in the malloc
    /// header of a 513 B–32 KiB object, in `mspan.largeType` of a larger one. It is the map
    /// type's bucket or group type (`map.bucket[K]V`, `map.group[K]V`); `None` when the
    /// heap does not say.
    pub fn storage_type(&mut self, memory: &dyn ReadMemory, words: &[u64]) -> Option<u64> {
        let large_type = self.layout.span_large_type?;
        let storage = match self.shape {
            HeaderShape::Classic { .. } => words[2],
            HeaderShape::Swiss if words[3] == 0 => words[2],
            HeaderShape::Swiss => read_u64(memory, read_u64(memory, words[2])?.checked_add(16)?)?,
        };
        match self.heap.object_state(memory, nonzero(storage)?) {
            ObjectState::Allocated { start, size }
                if size > MIN_SIZE_FOR_MALLOC_HEADER
                    && size <= MAX_SMALL_SIZE
                    && storage == start + 8 =>
            {
                nonzero(read_u64(memory, start)?)
            }
            ObjectState::Allocated { start, size } if size > MAX_SMALL_SIZE && storage == start => {
                let span = self.heap.span_of(memory, start)?;
                nonzero(read_u64(memory, span + large_type)?)
            }
            _ => None,
        }
    }

    /// The `g` pointers of `runtime.allgs`, up to [`MAX_GOROUTINES`].
    fn goroutines(&self, memory: &dyn ReadMemory, stats: &mut ScanStats) -> Vec<u64> {
        let Some(allgs) = self.allgs else {
            return Vec::new();
        };
        let (Some(array), Some(len)) = (read_u64(memory, allgs), read_u64(memory, allgs + 8))
        else {
            return Vec::new();
        };
        if len > MAX_GOROUTINES {
            stats.truncated = true;
        }
        let len = len.min(MAX_GOROUTINES);
        read_exact(memory, array, (len * 8) as usize)
            .map(|bytes| {
                bytes
                    .chunks_exact(8)
                    .map(|word| u64_at(word, 0))
                    .filter(|&g| g != 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A live goroutine's id and the stack range to read; `None` for dead goroutines and
    /// the runtime's own.
    fn stack_range(&self, memory: &dyn ReadMemory, g: u64) -> Option<(u64, u64, u64)> {
        let layout = &self.layout;
        let len = layout.g_goid.max(layout.g_startpc) + 8;
        let bytes = read_exact(memory, g, len as usize)?;
        if self
            .runtime_starts
            .contains(&u64_at(&bytes, layout.g_startpc as usize))
        {
            return None;
        }
        let (lo, hi) = (u64_at(&bytes, 0), u64_at(&bytes, 8));
        let at = layout.g_status as usize;
        let status =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) & !G_SCAN;
        if status == G_IDLE || status == G_DEAD || lo == 0 || hi <= lo || hi - lo > MAX_STACK {
            return None;
        }
        let sp = u64_at(&bytes, layout.g_sched_sp as usize);
        let from = if (lo..hi).contains(&sp) { sp & !7 } else { lo };
        Some((u64_at(&bytes, layout.g_goid as usize), from, hi))
    }
}

/// The pointer bits of `words` words from word `first` of a span whose heap bits start at
/// byte `bitmap` of `body`.
fn object_bits(body: &[u8], bitmap: u64, first: u64, words: u64) -> Option<u64> {
    let mut bits = 0;
    for word in 0..words {
        let bit = first + word;
        let byte = *body.get((bitmap + bit / 8) as usize)?;
        if byte & (1 << (bit % 8)) != 0 {
            bits |= 1 << word;
        }
    }
    Some(bits)
}

fn nonzero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

fn read_exact(memory: &dyn ReadMemory, addr: u64, len: usize) -> Option<Vec<u8>> {
    memory.read(addr, len).filter(|bytes| bytes.len() == len)
}

fn read_u64(memory: &dyn ReadMemory, addr: u64) -> Option<u64> {
    Some(u64_at(&read_exact(memory, addr, 8)?, 0))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests;
