//! Harnesses for coverage-guided fuzzing of every reader of bytes a target controls.
//!
//! gomaptrace runs as root and parses what the traced program decides: its ELF file, the
//! Go tables in it, its DWARF, type descriptors and heap metadata in its memory, and
//! recordings. Each [`Target`] turns arbitrary bytes into one reader's input and runs the
//! reader through its public entry points; the only property checked is the one every reader
//! promises: an error or an answer, never a panic, an unbounded allocation or an endless
//! loop. The same harnesses serve the libFuzzer targets in `fuzz/` (under `cargo xtask fuzz`)
//! and the unit test that replays the committed corpus in every default test run, so a
//! finding stays fixed.
//!
//! Structured inputs (sections of an ELF, regions of memory) are decoded leniently: any byte
//! string decodes to some input, so the fuzzer never wastes executions on a format error.

use std::collections::BTreeMap;

use crate::inspect::{map_type_info, Arch, GoBinary, GoVersion, ReadMemory};
use crate::memory::heap::Heap;
use crate::memory::inventory;
use crate::memory::release::Detector;
use crate::memory::roots::{MapRoot, Roots};
use crate::plan::MapImplementation;

/// One reader under fuzz; its [`Target::name`] is the libFuzzer target's and the corpus
/// directory's name (`fuzz/corpus/<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// [`GoBinary::parse`] of the raw bytes, then every per-function reader.
    Elf,
    /// The same, on an ELF assembled from fuzzed sections (see [`encode_sections`]): reaches
    /// the build info, pclntab, symbol and type readers without first having to invent a
    /// valid ELF.
    GoSections,
    /// DWARF roots ([`Roots::from_elf`]) of an ELF assembled from fuzzed sections, then
    /// resolved against the sections as memory.
    DwarfRoots,
    /// Type names and bucket sizes ([`map_type_info`]) read from fuzzed memory.
    MapTypes,
    /// Heap metadata ([`Heap::object_states`]) read from fuzzed memory.
    Heap,
    /// Map headers found through fuzzed roots ([`inventory::find`]) in fuzzed memory.
    Inventory,
    /// A recording ([`crate::pipeline::replay`]).
    Recording,
}

impl Target {
    /// Every target, in the order `cargo xtask fuzz` runs them.
    pub const ALL: [Target; 7] = [
        Target::Elf,
        Target::GoSections,
        Target::DwarfRoots,
        Target::MapTypes,
        Target::Heap,
        Target::Inventory,
        Target::Recording,
    ];

    /// The fuzz target's name, also its corpus directory's.
    pub fn name(self) -> &'static str {
        match self {
            Target::Elf => "elf",
            Target::GoSections => "go_sections",
            Target::DwarfRoots => "dwarf_roots",
            Target::MapTypes => "map_types",
            Target::Heap => "heap",
            Target::Inventory => "inventory",
            Target::Recording => "recording",
        }
    }

    /// Feeds `data` to the reader. Returns normally whatever the bytes are; a panic here is
    /// a bug in the reader.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::Elf => {
                if let Ok(binary) = GoBinary::parse(data.to_vec()) {
                    exercise(&binary);
                }
            }
            Target::GoSections => {
                let (bytes, _) = decode_sections(data);
                if let Ok(binary) = GoBinary::parse(bytes) {
                    exercise(&binary);
                }
            }
            Target::DwarfRoots => {
                let (bytes, memory) = decode_sections(data);
                if let Ok(roots) = Roots::from_elf(&bytes) {
                    let _ = roots.resolve(&memory, 0, |_| true);
                }
            }
            Target::MapTypes => map_types(data),
            Target::Heap => heap(data),
            Target::Inventory => inventory(data),
            Target::Recording => recording(data),
        }
    }
}

/// At most this many functions of a parsed binary are run through the per-function readers,
/// so one input costs milliseconds, not seconds.
const FUNCTIONS_EXERCISED: usize = 64;

/// Runs everything gomaptrace reads from a parsed binary before and while it traces.
fn exercise(binary: &GoBinary) {
    let _ = (binary.go_version(), binary.raw_go_version(), binary.arch());
    let implementation = MapImplementation::of(binary);
    let seed_functions: Vec<u64> = binary.functions().take(2).map(|f| f.vaddr).collect();
    for function in binary.functions().take(FUNCTIONS_EXERCISED) {
        let _ = binary.entry_probe_offset(function);
        let _ = binary.return_offsets(function);
        let _ = binary.seed_calls(function, &seed_functions, 8);
        if let Ok(offset) = binary.file_offset(function.vaddr) {
            let _ = binary.vaddr_of_file_offset(offset);
        }
        let _ = binary.frames_at(function.vaddr);
        let _ = binary.frames_at(function.vaddr.wrapping_add(function.size / 2));
    }
    let _ = binary.data_symbol("runtime.mheap_");
    let _ = Heap::find(binary, 0);
    let _ = Detector::new(binary, 0, implementation);
    if let Some(start) = binary.types_start() {
        let memory = binary.file_memory();
        for offset in [0, 8, 64, 4096] {
            let _ = map_type_info(&memory, binary, 0, start.wrapping_add(offset));
        }
    }
}

/// `map_types` input: flags (bit 0 swiss, bit 1 types start known, bit 2 end known), types
/// start and end, bias and the descriptor's address, then [`Regions`].
fn map_types(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let (start, end, bias, maptype) = (input.u64(), input.u64(), input.u64(), input.u64());
    let memory = Regions::decode(&mut input);
    let types = (flags & 2 != 0).then_some((start, (flags & 4 != 0).then_some(end)));
    let _ = crate::inspect::fuzz_map_type_info(&memory, types, flags & 1 != 0, bias, maptype);
}

/// Go releases the heap reader has layouts for, picked by the `heap` input's first byte.
const HEAP_RELEASES: [u32; 8] = [19, 21, 22, 23, 24, 25, 26, 27];

/// `heap` input: release and architecture (bit 7: arm64, bit 6: Green Tea), `runtime.mheap_`'s
/// address, a count and that many object addresses, then [`Regions`].
fn heap(data: &[u8]) {
    let mut input = Input(data);
    let selector = input.u8();
    let minor = HEAP_RELEASES[usize::from(selector & 7)];
    let arch = if selector & 0x80 != 0 {
        Arch::Arm64
    } else {
        Arch::Amd64
    };
    let version = GoVersion {
        major: 1,
        minor,
        patch: 0,
    };
    let mheap = input.u64();
    let addrs: Vec<u64> = (0..input.u8() % 16).map(|_| input.u64()).collect();
    let memory = Regions::decode(&mut input);
    if let Ok(mut heap) = Heap::at(mheap, version, arch, selector & 0x40 != 0) {
        let _ = heap.object_states(&memory, &addrs);
        // A second batch runs with the arenas the first one cached.
        let _ = heap.object_states(&memory, &addrs);
    }
}

/// `inventory` input: implementation (bit 0 swiss), bias, types start, a count and that many
/// roots (address, up to 7 offsets, runtime type), then [`Regions`].
fn inventory(data: &[u8]) {
    let mut input = Input(data);
    let implementation = if input.u8() & 1 != 0 {
        MapImplementation::Swiss
    } else {
        MapImplementation::Classic
    };
    let (bias, types_start) = (input.u64(), input.u64());
    let roots: Vec<MapRoot> = (0..input.u8() % 8)
        .map(|index| {
            let address = input.u64();
            let offsets = (0..input.u8() % 8).map(|_| input.u64()).collect();
            let runtime_type = input.u64();
            MapRoot {
                path: format!("main.v{index}"),
                address,
                offsets,
                runtime_type: (runtime_type != 0).then_some(runtime_type),
            }
        })
        .collect();
    let memory = Regions::decode(&mut input);
    let roots = Roots::from_paths(roots);
    let types_start = (types_start != 0).then_some(types_start);
    for sighting in inventory::find(&roots, &memory, bias, implementation, types_start) {
        if let Some(capacity) = sighting.capacity {
            let _ = (capacity.once_held(), capacity.buckets());
        }
    }
}

/// `recording` input: the file's bytes, replayed from a file of this process's own.
fn recording(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("gomaptrace-fuzz-{}.rec", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::pipeline::replay(&path);
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads fixed-size fields off the front of fuzz input; missing bytes read as zero, so every
/// input decodes.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        let mut word = [0u8; 2];
        let taken = self.bytes(2);
        word[..taken.len()].copy_from_slice(taken);
        u16::from_le_bytes(word)
    }

    fn u32(&mut self) -> u32 {
        let mut word = [0u8; 4];
        let taken = self.bytes(4);
        word[..taken.len()].copy_from_slice(taken);
        u32::from_le_bytes(word)
    }

    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let taken = self.bytes(8);
        word[..taken.len()].copy_from_slice(taken);
        u64::from_le_bytes(word)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Memory of a fuzzed target: regions `[addr u64][len u16][bytes]` until the input ends. A
/// read allocates its whole length first, as the live reader (`process_vm_readv` into a
/// buffer) does, so a reader asking for an unbounded length shows up under the fuzzer's
/// allocation limit.
#[derive(Clone, Debug, Default)]
pub struct Regions(BTreeMap<u64, Vec<u8>>);

impl Regions {
    fn decode(input: &mut Input<'_>) -> Regions {
        let mut regions = BTreeMap::new();
        while !input.is_empty() {
            let addr = input.u64();
            let len = usize::from(input.u16());
            regions.insert(addr, input.bytes(len).to_vec());
        }
        Regions(regions)
    }

    /// Adds `bytes` at `addr`, replacing a region that starts there.
    pub fn insert(&mut self, addr: u64, bytes: Vec<u8>) {
        self.0.insert(addr, bytes);
    }

    /// The regions in the fuzz input format, as [`Target::MapTypes`], [`Target::Heap`] and
    /// [`Target::Inventory`] read them after their fixed fields. Regions longer than a
    /// `u16` are cut.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (addr, bytes) in &self.0 {
            let len = bytes.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&bytes[..len]);
        }
        out
    }
}

/// How many regions starting below an address [`Regions`] looks into for it.
const REGIONS_TRIED: usize = 8;

impl ReadMemory for Regions {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; len];
        // Regions may overlap (a recorded read inside an earlier, longer one): the few that
        // start closest below `addr` are tried.
        let bytes =
            self.0
                .range(..=addr)
                .rev()
                .take(REGIONS_TRIED)
                .find_map(|(start, bytes)| {
                    let from = usize::try_from(addr - start).ok()?;
                    bytes.get(from..from.checked_add(len)?)
                })?;
        buffer.copy_from_slice(bytes);
        Some(buffer)
    }
}

/// Wraps a [`ReadMemory`] and keeps every successful read, to turn what a reader of a real
/// target read into a seed (see [`Regions::encode`]).
pub struct Recorded<'a> {
    inner: &'a dyn ReadMemory,
    reads: std::cell::RefCell<Regions>,
}

impl<'a> Recorded<'a> {
    /// Records what is read through `inner`.
    pub fn new(inner: &'a dyn ReadMemory) -> Recorded<'a> {
        Recorded {
            inner,
            reads: std::cell::RefCell::new(Regions::default()),
        }
    }

    /// Everything read so far.
    pub fn regions(&self) -> Regions {
        self.reads.borrow().clone()
    }
}

impl ReadMemory for Recorded<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let bytes = self.inner.read(addr, len)?;
        let mut reads = self.reads.borrow_mut();
        let longer = reads.0.get(&addr).is_none_or(|known| known.len() < len);
        if longer {
            reads.insert(addr, bytes.clone());
        }
        Some(bytes)
    }
}

/// Section names a `go_sections`/`dwarf_roots` input can use, by index (the record's first
/// byte, modulo the count): what the readers look up by name, and the usual neighbours.
pub const SECTION_NAMES: [&str; 22] = [
    ".text",
    ".gopclntab",
    ".data.rel.ro.gopclntab",
    ".go.buildinfo",
    ".noptrdata",
    ".data",
    ".rodata",
    ".typelink",
    ".go.type",
    ".data.rel.ro",
    ".symtab",
    ".strtab",
    ".rela.dyn",
    ".debug_info",
    ".debug_abbrev",
    ".debug_str",
    ".debug_line_str",
    ".debug_str_offsets",
    ".zdebug_info",
    ".zdebug_abbrev",
    ".zdebug_str",
    ".itablink",
];

/// One section of an assembled ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuzzSection {
    /// Index into [`SECTION_NAMES`].
    pub name: u8,
    /// Whether `SHF_COMPRESSED` is set (Go's compressed DWARF).
    pub compressed: bool,
    /// Its address as linked.
    pub vaddr: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Encodes a `go_sections`/`dwarf_roots` input: byte 0 bit 0 arm64, bit 1 position
/// independent (`ET_DYN`); then records `[name u8][flags u8][vaddr u64][len u32][bytes]`
/// (a whole pclntab or DWARF section is longer than a `u16`).
pub fn encode_sections(arch: Arch, pie: bool, sections: &[FuzzSection]) -> Vec<u8> {
    let mut out = vec![u8::from(arch == Arch::Arm64) | (u8::from(pie) << 1)];
    for section in sections {
        let len = section.data.len().min(u32::MAX as usize);
        out.push(section.name);
        out.push(u8::from(section.compressed));
        out.extend_from_slice(&section.vaddr.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&section.data[..len]);
    }
    out
}

/// Decodes [`encode_sections`]' format into an ELF file and the memory its sections load
/// into.
pub fn decode_sections(data: &[u8]) -> (Vec<u8>, Regions) {
    let mut input = Input(data);
    let flags = input.u8();
    let mut sections = Vec::new();
    let mut memory = Regions::default();
    while !input.is_empty() {
        let name = input.u8() % SECTION_NAMES.len() as u8;
        let compressed = input.u8() & 1 != 0;
        let vaddr = input.u64();
        let len = input.u32() as usize;
        let data = input.bytes(len).to_vec();
        memory.insert(vaddr, data.clone());
        sections.push(FuzzSection {
            name,
            compressed,
            vaddr,
            data,
        });
    }
    let arch = if flags & 1 != 0 {
        Arch::Arm64
    } else {
        Arch::Amd64
    };
    (assemble_elf(arch, flags & 2 != 0, &sections), memory)
}

/// Whether a section is loaded (has `SHF_ALLOC` and a `PT_LOAD`): everything but the symbol
/// table, relocations and DWARF.
fn is_loaded(name: &str) -> bool {
    !(name.starts_with(".debug") || name.starts_with(".zdebug") || name.ends_with("tab"))
        || name.ends_with("pclntab")
}

/// A little-endian ELF64 executable holding `sections` at their addresses, each loaded
/// section in a `PT_LOAD` of its own (code executable, the rest writable), `.symtab` linked
/// to `.strtab`, then a section-name table.
pub fn assemble_elf(arch: Arch, pie: bool, sections: &[FuzzSection]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const SHDR: usize = 64;
    let names: Vec<&str> = sections
        .iter()
        .map(|section| SECTION_NAMES[usize::from(section.name) % SECTION_NAMES.len()])
        .collect();
    let loaded: Vec<usize> = (0..sections.len())
        .filter(|&index| is_loaded(names[index]))
        .collect();
    let mut shstrtab = vec![0u8];
    let mut name_at = Vec::new();
    for name in names.iter().copied().chain([".shstrtab"]) {
        name_at.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let mut file = vec![0u8; EHDR + PHDR * loaded.len()];
    let mut offsets = Vec::new();
    for section in sections {
        while !file.len().is_multiple_of(16) {
            file.push(0);
        }
        offsets.push(file.len() as u64);
        file.extend_from_slice(&section.data);
    }
    let shstrtab_at = file.len() as u64;
    file.extend_from_slice(&shstrtab);
    while !file.len().is_multiple_of(8) {
        file.push(0);
    }
    let shoff = file.len() as u64;
    let strtab = names.iter().position(|name| *name == ".strtab");
    let mut shdrs = vec![0u8; SHDR];
    for (index, section) in sections.iter().enumerate() {
        let name = names[index];
        let (kind, entsize, link) = match name {
            ".symtab" => (2u32, 24u64, strtab.map_or(0, |at| at as u32 + 1)),
            ".strtab" => (3, 0, 0),
            ".rela.dyn" => (4, 24, 0),
            _ => (1, 0, 0),
        };
        let mut flags = 0u64;
        if is_loaded(name) {
            flags |= 2; // SHF_ALLOC
            flags |= if name == ".text" { 4 } else { 1 }; // SHF_EXECINSTR or SHF_WRITE
        }
        if section.compressed {
            flags |= 0x800; // SHF_COMPRESSED
        }
        push_shdr(
            &mut shdrs,
            name_at[index],
            kind,
            flags,
            section.vaddr,
            offsets[index],
            section.data.len() as u64,
            link,
            entsize,
        );
    }
    push_shdr(
        &mut shdrs,
        name_at[sections.len()],
        3,
        0,
        0,
        shstrtab_at,
        shstrtab.len() as u64,
        0,
        0,
    );
    file.extend_from_slice(&shdrs);
    let machine: u16 = match arch {
        Arch::Amd64 => 62,
        Arch::Arm64 => 183,
    };
    let mut header = Vec::with_capacity(EHDR);
    header.extend_from_slice(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    header.extend_from_slice(&(if pie { 3u16 } else { 2u16 }).to_le_bytes());
    header.extend_from_slice(&machine.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    let entry = loaded.first().map_or(0, |&index| sections[index].vaddr);
    header.extend_from_slice(&entry.to_le_bytes());
    header.extend_from_slice(&(EHDR as u64).to_le_bytes());
    header.extend_from_slice(&shoff.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    for half in [
        EHDR,
        PHDR,
        loaded.len(),
        SHDR,
        sections.len() + 2,
        sections.len() + 1,
    ] {
        header.extend_from_slice(&(half as u16).to_le_bytes());
    }
    file[..EHDR].copy_from_slice(&header);
    for (slot, &index) in loaded.iter().enumerate() {
        let section = &sections[index];
        let flags: u32 = if names[index] == ".text" { 5 } else { 6 }; // R|X or R|W
        let mut phdr = Vec::with_capacity(PHDR);
        phdr.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        phdr.extend_from_slice(&flags.to_le_bytes());
        let size = section.data.len() as u64;
        for word in [offsets[index], section.vaddr, section.vaddr, size, size, 16] {
            phdr.extend_from_slice(&word.to_le_bytes());
        }
        let at = EHDR + slot * PHDR;
        file[at..at + PHDR].copy_from_slice(&phdr);
    }
    file
}

/// Appends one `Elf64_Shdr`.
#[allow(clippy::too_many_arguments)]
fn push_shdr(
    out: &mut Vec<u8>,
    name: u32,
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
) {
    out.extend_from_slice(&name.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    for word in [flags, addr, offset, size] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&link.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // sh_info
    out.extend_from_slice(&8u64.to_le_bytes()); // sh_addralign
    out.extend_from_slice(&entsize.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` of the workspace.
    fn committed(target: Target) -> Vec<PathBuf> {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut files = Vec::new();
        for kind in ["corpus", "regressions"] {
            let dir = fuzz.join(kind).join(target.name());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            files.extend(entries.map(|entry| entry.expect("readable directory").path()));
        }
        files.sort();
        files
    }

    /// Every committed seed and every input that once crashed a reader runs through its
    /// reader again, as in a fuzzing run: none may panic.
    #[test]
    fn committed_corpus_replays_without_panics() {
        for target in Target::ALL {
            let files = committed(target);
            assert!(
                !files.is_empty(),
                "no corpus for fuzz target {}: fuzz/corpus/{} is missing",
                target.name(),
                target.name()
            );
            for file in files {
                let data = std::fs::read(&file).expect("readable corpus file");
                target.run(&data);
            }
        }
    }

    #[test]
    fn assembled_elf_parses_as_elf() {
        let text = FuzzSection {
            name: 0,
            compressed: false,
            vaddr: 0x40_1000,
            data: vec![0xc3; 32],
        };
        let bytes = assemble_elf(Arch::Amd64, false, &[text]);
        let file = object::File::parse(bytes.as_slice()).expect("a valid ELF");
        use object::{Object as _, ObjectSection as _};
        let section = file.section_by_name(".text").expect(".text is there");
        assert_eq!(section.address(), 0x40_1000);
        assert_eq!(section.data().expect("in the file"), &[0xc3; 32]);
        assert_eq!(
            GoBinary::parse(bytes).map(|_| ()).unwrap_err().to_string(),
            crate::inspect::InspectError::NotGo.to_string()
        );
    }

    #[test]
    fn regions_read_inside_one_region_only() {
        let mut regions = Regions::default();
        regions.insert(0x1000, vec![1, 2, 3, 4]);
        assert_eq!(regions.read(0x1001, 2), Some(vec![2, 3]));
        assert_eq!(regions.read(0x1003, 2), None);
        assert_eq!(regions.read(0xfff, 1), None);
        assert_eq!(regions.read(u64::MAX, 1), None);
        let decoded = Regions::decode(&mut Input(&regions.encode()));
        assert_eq!(decoded.read(0x1000, 4), Some(vec![1, 2, 3, 4]));
    }
}
