//! Readable names and sizes of map types, from the type descriptor a map function receives
//! (`runtime.makemap(t *maptype, …)`), so a report can say `map[string]*bytes.Buffer` and
//! estimate the memory behind a map.
//!
//! A type descriptor starts with `abi.Type` (`runtime._type` before Go 1.21), 48 bytes on
//! 64-bit targets: `TFlag` at 20, `Kind_` at 23 (the low 5 bits are the kind), `Str` at 40,
//! an int32 offset of the name from the module's type data (`runtime.types`). A name is one
//! flag byte, a uvarint length and the bytes; `TFlag & ExtraStar` means the stored name has a
//! leading `*` that is not part of it (the linker shares the string with the pointer type).
//!
//! After the common part, map types hold `Key` at 48 and `Elem` at 56 in every release, and
//! then the size of what entries are stored in:
//! - classic maps (`runtime.maptype` up to Go 1.20, `abi.MapType` 1.21–1.23,
//!   `abi.OldMapType` with `GOEXPERIMENT=noswissmap` in 1.24–1.25): `BucketSize` (uint16)
//!   at 82, 8 slots a bucket;
//! - swiss maps (`abi.SwissMapType` 1.24–1.25, `abi.MapType` 1.26+): `GroupSize` (uintptr)
//!   at 80, 8 slots a group.
//!
//! Types made at run time by `reflect` (`reflect.MapOf`, `SliceOf`, …) live on the heap and
//! their `Str` is a key into a runtime table no other process can read, so their names are
//! built from their structure instead (only kinds `reflect` can make unnamed are built).

use serde::{Deserialize, Serialize};
use tracer_common::go_type::{self, KIND_AT, KIND_MASK};

use super::elf::ElfView;
use super::pclntab::Located;
use super::{GoBinary, GoVersion, TypeNameError};

/// Reads target memory; implemented by the live process (`process_vm_readv`) and in tests by
/// the binary's own file bytes, so the name reader does not care where descriptors come from.
pub trait ReadMemory {
    /// `len` bytes at `addr`, or `None` when any of them cannot be read.
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>>;

    /// Each `(addr, len)` of `reads`, answered as [`ReadMemory::read`] answers it. A live
    /// process answers many in one system call: checking thousands of small map headers a
    /// second costs a call per header otherwise.
    fn read_each(&self, reads: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        reads
            .iter()
            .map(|&(addr, len)| self.read(addr, len))
            .collect()
    }

    /// The first two 8-byte words at each of `addrs` (a map header's count and the word
    /// holding its seed), read as [`ReadMemory::read_each`] reads: many in one call.
    fn read_header_words(&self, addrs: &[u64]) -> Vec<Option<[u64; 2]>> {
        let reads: Vec<(u64, usize)> = addrs.iter().map(|&addr| (addr, 16)).collect();
        self.read_each(&reads)
            .into_iter()
            .map(|bytes| header_words(&bytes?))
            .collect()
    }
}

/// A map header's first two words (count, seed word), from the 16 bytes read at its address.
fn header_words(bytes: &[u8]) -> Option<[u64; 2]> {
    if bytes.len() != 16 {
        return None;
    }
    let word = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    Some([word(0), word(8)])
}

/// Facts about a map type that the report needs: its name as Go writes it
/// (`map[string]*bytes.Buffer`), and the size of its storage, for memory estimates. The
/// one type for them from the descriptor to the recording and the report.
///
/// Serializable because recordings and reports carry it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MapTypeInfo {
    /// The type as `%T` prints it; parts that cannot be named read `?`.
    pub name: String,
    /// Bucket or group sizes.
    pub storage: Storage,
}

/// Sizes of one map type's storage, read from its type descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Storage {
    /// Bytes of one bucket (classic) or group (swiss), slots and control bytes included.
    pub bucket_bytes: u64,
    /// Entries one bucket or group holds (8 in every release so far).
    pub slots_per_bucket: u64,
}

/// `abi.Kind` values of the kinds whose names are built from their parts.
mod kind {
    pub(super) const ARRAY: u8 = 17;
    pub(super) const CHAN: u8 = 18;
    pub(super) const MAP: u8 = 21;
    pub(super) const POINTER: u8 = 22;
    pub(super) const SLICE: u8 = 23;
}

/// `TFlagExtraStar`: the stored name carries a `*` that is not part of it.
const TFLAG_EXTRA_STAR: u8 = 2;
/// Bytes of `abi.Type`; the kind-specific fields follow.
const TYPE_SIZE: u64 = go_type::HEADER_BYTES as u64;
/// Offsets of the common fields read.
const TFLAG_AT: usize = 20;
const STR_AT: usize = 40;
/// Offsets of kind-specific fields: `Key` (maps) or `Elem` (arrays, channels, pointers,
/// slices) at 48, then `Elem` (maps), `ChanDir` (channels) at 56, `Len` (arrays) at 64.
const FIRST_FIELD_AT: u64 = TYPE_SIZE;
const SECOND_FIELD_AT: u64 = TYPE_SIZE + 8;
const ARRAY_LEN_AT: u64 = TYPE_SIZE + 16;
/// Bytes of a map type descriptor read: up to and including the bucket or group size.
const MAP_TYPE_READ: usize = 88;
/// Where the bucket or group size sits in a map type.
const BUCKET_SIZE_AT: usize = 82;
const GROUP_SIZE_AT: usize = 80;
/// Slots of a classic bucket (`abi.OldMapBucketCount`) and of a swiss group
/// (`abi.SwissMapGroupSlots`).
const SLOTS: u64 = 8;
/// Nesting followed when building names, so a corrupted descriptor that points at itself
/// cannot recurse forever.
const MAX_DEPTH: usize = 10;
/// Longest name read; real ones are far shorter, and a corrupted length must not allocate
/// gigabytes.
const MAX_NAME_LEN: u64 = 1 << 16;

/// Where a binary's static type descriptors and their names lie, as linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TypesRange {
    start: u64,
    /// End of the type data; `None` when only the start is known (descriptors are then all
    /// taken for static ones).
    end: Option<u64>,
}

impl TypesRange {
    /// The `runtime.types`/`runtime.etypes` symbols, else the moduledata's `types`/`etypes`
    /// (stripped binaries), else the `.go.type` section (Go 1.27).
    pub(super) fn find(
        elf: &ElfView<'_>,
        located: Option<&Located>,
        version: GoVersion,
    ) -> Option<TypesRange> {
        symbols(elf)
            .or_else(|| from_moduledata(located?, version))
            .or_else(|| {
                let section = elf.section(b".go.type").ok()??;
                let len = u64::try_from(section.data.len()).ok()?;
                Some(TypesRange {
                    start: section.vaddr,
                    end: section.vaddr.checked_add(len),
                })
            })
    }

    /// Where the static descriptors start, as linked: DWARF's `DW_AT_go_runtime_type`
    /// offsets count from here.
    pub(super) fn start(self) -> u64 {
        self.start
    }

    /// Whether the linked address `vaddr` holds a static descriptor.
    fn contains(self, vaddr: u64) -> bool {
        vaddr >= self.start && self.end.is_none_or(|end| vaddr < end)
    }
}

/// `runtime.types` and `runtime.etypes` from `.symtab`.
fn symbols(elf: &ElfView<'_>) -> Option<TypesRange> {
    use object::read::elf::Sym;

    let endian = elf.endian();
    let table = elf.symtab().ok()?;
    let (mut start, mut end) = (None, None);
    for symbol in table.iter() {
        match table.symbol_name(endian, symbol).ok()? {
            b"runtime.types" => start = Some(symbol.st_value(endian)),
            b"runtime.etypes" => end = Some(symbol.st_value(endian)),
            _ => continue,
        }
        if start.is_some() && end.is_some() {
            break;
        }
    }
    Some(TypesRange { start: start?, end })
}

/// `moduledata.types` and `etypes`: words 35–36 in Go 1.17–1.19 (1.18 added `rodata` and
/// `gofunc` after them); 37–38 in 1.20–1.26 (`covctrs` came before them); 37 and 39 in 1.27
/// (`typedesclen` in between). Go 1.16 is refused before types matter (stack-based ABI).
fn from_moduledata(located: &Located, version: GoVersion) -> Option<TypesRange> {
    let (start, end) = match version.minor {
        ..=16 => return None,
        17..=19 => (35, 36),
        20..=26 => (37, 38),
        _ => (37, 39),
    };
    let words = located.moduledata.as_deref()?;
    let start = *words.get(start).filter(|&&start| start != 0)?;
    Some(TypesRange {
        start,
        end: words.get(end).copied().filter(|&end| end > start),
    })
}

impl GoBinary {
    /// Linked address where runtime type descriptors start (`runtime.types` symbol, else
    /// `moduledata.types`; 1.27 start of `.go.type`), `None` if not found.
    ///
    /// Type names are stored as offsets from it, so without it no static type can be named.
    pub fn types_base(&self) -> Option<u64> {
        self.tables.types.map(|types| types.start)
    }

    /// A reader over the binary's own file-backed memory (linked addresses), for tests and as
    /// a fallback for static types.
    ///
    /// It sees what the file holds: no relocations applied, and nothing of `.bss` or the heap.
    pub fn file_memory(&self) -> impl ReadMemory + '_ {
        FileMemory(self)
    }

    /// Whether this binary's maps are swiss tables: read from the code it holds (only the
    /// classic implementation has `runtime.hashGrow`), never guessed from the version, which
    /// `GOEXPERIMENT=noswissmap` (1.24, 1.25) contradicts. The one place this is decided
    /// ([`crate::plan::MapImplementation::of`] asks it too).
    pub fn has_swiss_maps(&self) -> bool {
        self.function("runtime.hashGrow").is_none()
    }
}

/// [`ReadMemory`] over the binary's file bytes at their linked addresses.
struct FileMemory<'a>(&'a GoBinary);

impl ReadMemory for FileMemory<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let binary = self.0;
        let bytes = binary
            .tables
            .segments
            .read(&binary.bytes, addr, u64::try_from(len).ok()?)?;
        Some(bytes.to_vec())
    }
}

/// The name and bucket/group size of the map type at `maptype` (a run-time address).
///
/// `bias` = runtime address − linked address (0 unless PIE). Types created at run time by
/// reflect (heap addresses, names not in the types section) still get a name built from their
/// key and element types; a part that cannot be named reads `?`.
pub fn map_type_info(
    memory: &dyn ReadMemory,
    binary: &GoBinary,
    bias: u64,
    maptype: u64,
) -> Result<MapTypeInfo, TypeNameError> {
    describe_map_type(
        memory,
        binary.tables.types,
        binary.has_swiss_maps(),
        bias,
        maptype,
    )
}

/// [`map_type_info`] with the two facts it takes from the binary given directly, so the
/// fuzzer can reach the descriptor reader without a whole Go binary.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_map_type_info(
    memory: &dyn ReadMemory,
    types: Option<(u64, Option<u64>)>,
    swiss: bool,
    bias: u64,
    maptype: u64,
) -> Result<MapTypeInfo, TypeNameError> {
    let types = types.map(|(start, end)| TypesRange { start, end });
    describe_map_type(memory, types, swiss, bias, maptype)
}

/// [`map_type_info`] given where static types are and whether maps are swiss tables.
fn describe_map_type(
    memory: &dyn ReadMemory,
    types: Option<TypesRange>,
    swiss: bool,
    bias: u64,
    maptype: u64,
) -> Result<MapTypeInfo, TypeNameError> {
    let descriptor = read_exact(memory, maptype, MAP_TYPE_READ)
        .ok_or(TypeNameError::Unreadable { addr: maptype })?;
    let kind = descriptor[KIND_AT] & KIND_MASK;
    if kind != kind::MAP {
        return Err(TypeNameError::NotAMap {
            addr: maptype,
            kind,
        });
    }
    let namer = Namer {
        memory,
        types,
        bias,
    };
    let bucket_bytes = if swiss {
        read_u64(&descriptor, GROUP_SIZE_AT)
    } else {
        u64::from(u16::from_le_bytes([
            descriptor[BUCKET_SIZE_AT],
            descriptor[BUCKET_SIZE_AT + 1],
        ]))
    };
    Ok(MapTypeInfo {
        name: namer.map_name(maptype, 0),
        storage: Storage {
            bucket_bytes,
            slots_per_bucket: SLOTS,
        },
    })
}

/// Builds type names from descriptors in one target's memory.
struct Namer<'a> {
    memory: &'a dyn ReadMemory,
    types: Option<TypesRange>,
    bias: u64,
}

impl Namer<'_> {
    /// The name of the type at run-time address `addr`; `?` for what cannot be read.
    fn name(&self, addr: u64, depth: usize) -> String {
        self.try_name(addr, depth).unwrap_or_else(|| "?".to_owned())
    }

    fn try_name(&self, addr: u64, depth: usize) -> Option<String> {
        if depth > MAX_DEPTH {
            return None;
        }
        let header = read_exact(self.memory, addr, TYPE_SIZE as usize)?;
        match self.types {
            Some(types) if types.contains(addr.wrapping_sub(self.bias)) => {
                return self.stored_name(types, &header);
            }
            _ => {}
        }
        // Made at run time: only unnamed composite types can be, and those are spelled
        // from their parts.
        let depth = depth + 1;
        match header[KIND_AT] & KIND_MASK {
            kind::MAP => Some(self.map_name(addr, depth)),
            kind::POINTER => Some(format!("*{}", self.elem_name(addr, depth)?)),
            kind::SLICE => Some(format!("[]{}", self.elem_name(addr, depth)?)),
            kind::ARRAY => {
                let len = self.word(addr, ARRAY_LEN_AT)?;
                Some(format!("[{len}]{}", self.elem_name(addr, depth)?))
            }
            kind::CHAN => {
                let elem = self.elem_name(addr, depth)?;
                Some(match self.word(addr, SECOND_FIELD_AT)? {
                    1 => format!("<-chan {elem}"),
                    2 => format!("chan<- {elem}"),
                    // A receive-only element needs parentheses: `chan (<-chan int)`.
                    _ if elem.starts_with("<-") => format!("chan ({elem})"),
                    _ => format!("chan {elem}"),
                })
            }
            _ => None,
        }
    }

    /// `map[` + key + `]` + element, for the map type at `addr`.
    fn map_name(&self, addr: u64, depth: usize) -> String {
        let part = |at| {
            self.word(addr, at)
                .map(|part| self.name(part, depth + 1))
                .unwrap_or_else(|| "?".to_owned())
        };
        format!("map[{}]{}", part(FIRST_FIELD_AT), part(SECOND_FIELD_AT))
    }

    /// The name of the type `Elem` (at 48) of an array, channel, pointer or slice type points
    /// to.
    fn elem_name(&self, addr: u64, depth: usize) -> Option<String> {
        let elem = self.word(addr, FIRST_FIELD_AT)?;
        self.try_name(elem, depth)
    }

    /// The name a static descriptor's `Str` leads to.
    fn stored_name(&self, types: TypesRange, header: &[u8]) -> Option<String> {
        let str_off = i32::from_le_bytes(header.get(STR_AT..STR_AT + 4)?.try_into().ok()?);
        let offset = u64::try_from(str_off).ok().filter(|&offset| offset != 0)?;
        let at = types
            .start
            .checked_add(offset)?
            .wrapping_add(self.bias)
            .checked_add(1)?;
        let (len, len_bytes) = self.uvarint(at)?;
        if len > MAX_NAME_LEN {
            return None;
        }
        let bytes = read_exact(
            self.memory,
            at.checked_add(len_bytes)?,
            usize::try_from(len).ok()?,
        )?;
        let name = String::from_utf8_lossy(&bytes).into_owned();
        if header[TFLAG_AT] & TFLAG_EXTRA_STAR != 0 {
            return name.strip_prefix('*').map(str::to_owned);
        }
        Some(name)
    }

    /// A uvarint read byte by byte (names are short: one or two bytes) and its length.
    fn uvarint(&self, at: u64) -> Option<(u64, u64)> {
        let mut value = 0u64;
        for index in 0..10u64 {
            let byte = *read_exact(self.memory, at.checked_add(index)?, 1)?.first()?;
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                return Some((value, index + 1));
            }
        }
        None
    }

    /// The pointer-sized field at `offset` of the descriptor at `addr`.
    fn word(&self, addr: u64, offset: u64) -> Option<u64> {
        let bytes = read_exact(self.memory, addr.checked_add(offset)?, 8)?;
        Some(read_u64(&bytes, 0))
    }
}

/// `len` bytes at `addr`, refusing a reader that returns fewer (indexing relies on it).
fn read_exact(memory: &dyn ReadMemory, addr: u64, len: usize) -> Option<Vec<u8>> {
    memory.read(addr, len).filter(|bytes| bytes.len() == len)
}

/// The little-endian u64 at `at`; callers read buffers long enough for it.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(source) = bytes.get(at..at + 8) {
        word.copy_from_slice(source);
    }
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests;
