//! The pclntab reader against stripped, PIE and externally linked builds of every installed
//! Go toolchain, with the same builds' `.symtab` and `go tool nm` as the reference, and
//! against corrupted tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use iced_x86::{Code, Decoder, DecoderOptions};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::super::tests::{fixture, nm, one_build_at_a_time, XorShift, MAP_FUNCTIONS};
use super::super::{Arch, GoBinary, GoVersion};
use super::*;
use crate::gofixture::{self, Flavor};

use crate::gofixture::GO_VERSIONS as VERSIONS;

/// Builds [`Flavor`] has no name for: `-ldflags` together with `-buildmode=pie`.
#[derive(Clone, Copy, Debug)]
enum PieLink {
    /// `-ldflags=-s -w`, Go's own linker.
    Stripped,
    /// `-ldflags=-linkmode=external`: gcc links, which needs cgo.
    External,
    /// Both.
    StrippedExternal,
}

impl PieLink {
    fn ldflags(self) -> &'static str {
        match self {
            PieLink::Stripped => "-ldflags=-s -w",
            PieLink::External => "-ldflags=-linkmode=external",
            PieLink::StrippedExternal => "-ldflags=-s -w -linkmode=external",
        }
    }

    fn cgo(self) -> &'static str {
        match self {
            PieLink::Stripped => "0",
            PieLink::External | PieLink::StrippedExternal => "1",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            PieLink::Stripped => "pie-stripped",
            PieLink::External => "pie-external",
            PieLink::StrippedExternal => "pie-external-stripped",
        }
    }
}

/// Builds `tests/fixtures/inspect` with `-buildmode=pie` and `link`'s flags.
fn build(version: &str, link: PieLink, goarch: &str) -> PathBuf {
    let _one_at_a_time = one_build_at_a_time();
    gofixture::build_with(
        "inspect",
        version,
        link.suffix(),
        &["-buildmode=pie", link.ldflags()],
        &[("CGO_ENABLED", link.cgo())],
        goarch,
    )
}

fn open(path: &Path) -> GoBinary {
    GoBinary::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// What the ELF file itself says, read with the `object` crate as an independent reader.
struct Facts {
    has_symtab: bool,
    /// The section holding the pclntab, when it has one.
    pclntab_section: Option<String>,
    /// Address and size of `.text`. (Its bytes can differ between builds with and without
    /// symbols: Go 1.19 lays data out differently, which changes RIP-relative operands.)
    text: (u64, u64),
    /// The `runtime.text` symbol, when there is a `.symtab`.
    runtime_text: Option<u64>,
}

impl Facts {
    fn of(path: &Path) -> Facts {
        let bytes = std::fs::read(path).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        let text = file.section_by_name(".text").unwrap();
        Facts {
            has_symtab: file.symbol_table().is_some(),
            pclntab_section: [".gopclntab", ".data.rel.ro.gopclntab"]
                .into_iter()
                .find(|name| file.section_by_name(name).is_some())
                .map(str::to_owned),
            text: (text.address(), text.size()),
            runtime_text: file
                .symbols()
                .find(|symbol| symbol.name() == Ok("runtime.text"))
                .map(|symbol| symbol.address()),
        }
    }
}

/// Whether `version` is Go 1.26 or newer, where the pclntab always has its own section and
/// its header no longer holds the code base.
fn is_go126_or_newer(version: &str) -> bool {
    GoVersion::parse(&format!("go{version}")).unwrap() >= GoVersion::parse("go1.26").unwrap()
}

/// `runtime.map*` and `runtime.makemap*`: the functions the tracer probes.
fn map_functions(binary: &GoBinary) -> Vec<&Function> {
    let functions: Vec<&Function> = binary
        .functions()
        .filter(|f| f.name.starts_with("runtime.map") || f.name.starts_with("runtime.makemap"))
        .collect();
    for name in MAP_FUNCTIONS {
        assert!(functions.iter().any(|f| f.name == name), "{name} missing");
    }
    functions
}

/// `bare` (pclntab only) lists the functions `full` (same build, with `.symtab`) lists, at
/// the same addresses, each running to the next.
///
/// A few names are spelled differently in the two tables: see [`comparable`].
fn assert_same_functions(full: &GoBinary, bare: &GoBinary, context: &str) {
    let listed: Vec<&Function> = bare.functions().collect();
    assert!(
        listed.len() > 1000,
        "{context}: only {} functions",
        listed.len()
    );
    for pair in listed.windows(2) {
        assert_eq!(pair[0].vaddr + pair[0].size, pair[1].vaddr, "{context}");
    }
    let mut by_address: HashMap<u64, Vec<&Function>> = HashMap::new();
    for f in full.functions() {
        by_address.entry(f.vaddr).or_default().push(f);
    }
    for f in &listed {
        let name = comparable(&f.name);
        let reference = by_address
            .get(&f.vaddr)
            .and_then(|there| there.iter().find(|g| comparable(&g.name) == name))
            .unwrap_or_else(|| panic!("{context}: {} {:#x} is not in .symtab", f.name, f.vaddr));
        assert!(f.size >= reference.size, "{context}: {}", f.name);
    }
    for f in map_functions(full) {
        let named: Vec<u64> = listed
            .iter()
            .filter(|g| g.name == f.name)
            .map(|g| g.vaddr)
            .collect();
        assert_eq!(named, [f.vaddr], "{context}: {}", f.name);
    }
}

/// `name` without the spelling differences between `.symtab` and the pclntab: the ELF
/// symbol of an assembly function that has an ABI wrapper ends in `.abi0` (the pclntab
/// calls both `name`), ELF symbols spell `·` as `.`, and Go 1.19's pclntab writes array
/// lengths in type-algorithm names as `[...]`.
fn comparable(name: &str) -> String {
    let name = name.strip_suffix(".abi0").unwrap_or(name).replace('·', ".");
    let mut spelled = String::with_capacity(name.len());
    let mut rest = name.as_str();
    while let Some(open) = rest.find('[') {
        spelled.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(']') {
            spelled.push_str("...");
            rest = &rest[digits..];
        }
    }
    spelled.push_str(rest);
    spelled
}

/// The probes of every fixture map function are the same with and without symbols, the entry
/// probe follows the stack-check branch, and every return offset holds a return.
fn assert_same_probes(full: &GoBinary, bare: &GoBinary, context: &str) {
    for name in MAP_FUNCTIONS {
        let (with, without) = (full.function(name).unwrap(), bare.function(name).unwrap());
        let context = format!("{context} {name}");
        let probe = bare.entry_probe_offset(without).unwrap();
        let returns = bare.return_offsets(without).unwrap();
        assert_eq!(probe, full.entry_probe_offset(with).unwrap(), "{context}");
        assert_eq!(returns, full.return_offsets(with).unwrap(), "{context}");
        assert!(!returns.is_empty(), "{context}");
        let start = bare.file_offset(without.vaddr).unwrap();
        match bare.arch() {
            Arch::Amd64 => assert_amd64_probes(bare, start, probe, &returns, &context),
            Arch::Arm64 => assert_arm64_probes(bare, probe, &returns, &context),
        }
    }
}

fn assert_amd64_probes(binary: &GoBinary, start: u64, probe: u64, returns: &[u64], context: &str) {
    let code = &binary.bytes[usize::try_from(start).unwrap()..];
    let before = Decoder::with_ip(64, code, start, DecoderOptions::NONE)
        .iter()
        .take_while(|instruction| instruction.ip() < probe)
        .last()
        .unwrap();
    assert_eq!(
        before.next_ip(),
        probe,
        "{context}: probe between instructions"
    );
    assert!(
        matches!(before.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64),
        "{context}: {before}"
    );
    for &offset in returns {
        let byte = binary.bytes[usize::try_from(offset).unwrap()];
        assert_eq!(byte, 0xc3, "{context} at {offset:#x}");
    }
}

fn assert_arm64_probes(binary: &GoBinary, probe: u64, returns: &[u64], context: &str) {
    let word = |offset: u64| {
        let at = usize::try_from(offset).unwrap();
        u32::from_le_bytes(binary.bytes[at..at + 4].try_into().unwrap())
    };
    assert_eq!(
        word(probe - 4) & 0xff00_001f,
        0x5400_0009,
        "{context}: B.LS"
    );
    for &offset in returns {
        assert_eq!(word(offset), 0xd65f_03c0, "{context} at {offset:#x}");
    }
}

#[test]
fn stripped_builds_list_the_functions_of_the_symbol_table() {
    for version in VERSIONS {
        for goarch in ["amd64", "arm64"] {
            let context = format!("go{version}/{goarch}");
            let plain = fixture(version, Flavor::Plain, &[], goarch);
            let stripped = fixture(version, Flavor::Stripped, &[], goarch);
            let (plain_facts, stripped_facts) = (Facts::of(&plain), Facts::of(&stripped));
            assert!(
                plain_facts.has_symtab && !stripped_facts.has_symtab,
                "{context}"
            );
            assert_eq!(
                plain_facts.text, stripped_facts.text,
                "{context}: same code layout"
            );
            assert_eq!(
                stripped_facts.pclntab_section.as_deref(),
                Some(".gopclntab"),
                "{context}"
            );
            let (full, bare) = (open(&plain), open(&stripped));
            assert_same_functions(&full, &bare, &context);
            let reference = nm(version, &plain);
            for f in map_functions(&full) {
                assert_eq!(reference[&f.name].0, f.vaddr, "{context}: go tool nm");
            }
            assert_same_probes(&full, &bare, &context);
        }
    }
}

#[test]
fn pie_builds_resolve_the_same_functions_with_and_without_symbols() {
    for version in VERSIONS {
        for goarch in ["amd64", "arm64"] {
            let context = format!("go{version}/{goarch} PIE");
            let pie = fixture(version, Flavor::Pie, &[], goarch);
            let stripped = build(version, PieLink::Stripped, goarch);
            let facts = Facts::of(&stripped);
            assert_eq!(
                facts.text,
                Facts::of(&pie).text,
                "{context}: same code layout"
            );
            assert!(!facts.has_symtab, "{context}");
            let section = if is_go126_or_newer(version) {
                ".gopclntab"
            } else {
                ".data.rel.ro.gopclntab"
            };
            assert_eq!(facts.pclntab_section.as_deref(), Some(section), "{context}");
            let (full, bare) = (open(&pie), open(&stripped));
            assert_same_functions(&full, &bare, &context);
            assert_same_probes(&full, &bare, &context);
        }
    }
}

/// gcc puts C start-up code before Go's: the code base is not the start of `.text`, and
/// before Go 1.26 the pclntab has no section of its own.
#[test]
fn externally_linked_pie_builds_resolve_the_same_functions() {
    for version in VERSIONS {
        let context = format!("go{version} external PIE");
        let linked = build(version, PieLink::External, "amd64");
        let stripped = build(version, PieLink::StrippedExternal, "amd64");
        let (facts, stripped_facts) = (Facts::of(&linked), Facts::of(&stripped));
        assert_eq!(
            facts.text, stripped_facts.text,
            "{context}: same code layout"
        );
        assert!(!stripped_facts.has_symtab, "{context}");
        let runtime_text = facts.runtime_text.unwrap();
        assert!(runtime_text > facts.text.0, "{context}: C code first");
        let expected_section = is_go126_or_newer(version).then(|| ".gopclntab".to_owned());
        assert_eq!(
            stripped_facts.pclntab_section, expected_section,
            "{context}"
        );
        let (full, bare) = (open(&linked), open(&stripped));
        assert_same_functions(&full, &bare, &context);
        assert_same_probes(&full, &bare, &context);
    }
}

/// A stripped non-PIE build (Go 1.18+ layout, `.gopclntab` section), and where the pclntab
/// header and the section header sit in the file.
struct Stripped {
    bytes: Vec<u8>,
    /// File offset of the pclntab header.
    header: usize,
    /// File offset of the `.gopclntab` section header's `sh_size`.
    sh_size: usize,
}

impl Stripped {
    fn build(version: &str) -> Stripped {
        let bytes = std::fs::read(fixture(version, Flavor::Stripped, &[], "amd64")).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        let section = file.section_by_name(".gopclntab").unwrap();
        let header = usize::try_from(section.file_range().unwrap().0).unwrap();
        let object::File::Elf64(elf) = &file else {
            panic!("not ELF64");
        };
        let endian = elf.endian();
        let shoff = elf.elf_header().e_shoff.get(endian);
        let sh_size = shoff + 64 * u64::try_from(section.index().0).unwrap() + 32;
        let sh_size = usize::try_from(sh_size).unwrap();
        drop(file);
        Stripped {
            bytes,
            header,
            sh_size,
        }
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let at = self.header + offset;
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(&self, offset: usize) -> usize {
        let at = self.header + offset;
        let value = u64::from_le_bytes(self.bytes[at..at + 8].try_into().unwrap());
        usize::try_from(value).unwrap()
    }

    /// Offset from the header of the function table (Go 1.18+ layout: `pclnOffset`).
    fn function_table(&self) -> usize {
        self.u64_at(64)
    }

    /// Offset from the header of the first function's `_func`.
    fn first_func(&self) -> usize {
        self.function_table() + usize::try_from(self.u32_at(self.function_table() + 4)).unwrap()
    }

    /// The error from parsing with `patch` written at `offset` from the header.
    fn corrupt(&self, offset: usize, patch: &[u8]) -> InspectError {
        self.corrupt_file(self.header + offset, patch)
    }

    /// The error from parsing with `patch` written at file offset `at`.
    fn corrupt_file(&self, at: usize, patch: &[u8]) -> InspectError {
        let mut copy = self.bytes.clone();
        copy[at..at + patch.len()].copy_from_slice(patch);
        match GoBinary::parse(copy) {
            Ok(_) => panic!("parsed despite {patch:02x?} at {at:#x}"),
            Err(error) => error,
        }
    }
}

fn is_malformed(error: &InspectError) -> bool {
    matches!(error, InspectError::MalformedPclntab { .. })
}

#[test]
fn refuses_corrupted_tables() {
    for version in ["1.19", "1.24.11", "1.26.6"] {
        let stripped = Stripped::build(version);
        assert!(GoBinary::parse(stripped.bytes.clone()).is_ok());
        let func = stripped.first_func();
        let table = stripped.function_table();
        let cases: [(&str, usize, &[u8]); 13] = [
            ("Go 1.2 magic", 0, &0xffff_fffbu32.to_le_bytes()),
            ("pad byte", 4, &[1]),
            ("quantum", 6, &[3]),
            ("pointer size", 7, &[4]),
            ("no functions", 8, &0u64.to_le_bytes()),
            ("nfunc overflows", 8, &u64::MAX.to_le_bytes()),
            ("nfunc past the end", 8, &(1u64 << 40).to_le_bytes()),
            ("table past the end", 64, &(1u64 << 40).to_le_bytes()),
            (
                "nameOff past the end",
                func + 4,
                &0x7fff_ffffu32.to_le_bytes(),
            ),
            ("negative nameOff", func + 4, &0x8000_0000u32.to_le_bytes()),
            ("funcOff past the end", table + 4, &u32::MAX.to_le_bytes()),
            ("funcOff elsewhere", table + 4, &8u32.to_le_bytes()),
            ("out of order", table + 8, &u32::MAX.to_le_bytes()),
        ];
        for (what, offset, patch) in cases {
            let error = stripped.corrupt(offset, patch);
            assert!(is_malformed(&error), "go{version} {what}: {error}");
        }
    }
}

#[test]
fn refuses_truncated_sections() {
    let stripped = Stripped::build("1.24.11");
    let whole = u64::from_le_bytes(
        stripped.bytes[stripped.sh_size..stripped.sh_size + 8]
            .try_into()
            .unwrap(),
    );
    let table = u64::try_from(stripped.function_table()).unwrap();
    let nfunc = u64::try_from(stripped.u64_at(8)).unwrap();
    let table_end = table + (2 * nfunc + 1) * 4;
    for size in [0, 7, 8, 64, 71, table, table + 16, table_end - 1, whole / 2] {
        let error = stripped.corrupt_file(stripped.sh_size, &size.to_le_bytes());
        assert!(is_malformed(&error), "sh_size {size:#x}: {error}");
    }
}

/// Without a section, a table that does not parse is not a table: nothing is found.
#[test]
fn scanning_skips_corrupted_tables() {
    let bytes = std::fs::read(build("1.24.11", PieLink::StrippedExternal, "amd64")).unwrap();
    let header = header_offset(&bytes);
    for (offset, patch) in [(0, &[0xfb][..]), (8, &[0xff; 8])] {
        let mut copy = bytes.clone();
        copy[header + offset..header + offset + patch.len()].copy_from_slice(patch);
        let error = GoBinary::parse(copy).unwrap_err();
        assert!(matches!(error, InspectError::NoSymbolTable), "{error}");
    }
}

/// File offset of the first pointer-aligned pclntab header with the Go 1.20+ magic.
fn header_offset(bytes: &[u8]) -> usize {
    (0..bytes.len())
        .step_by(8)
        .find(|&at| bytes[at..].starts_with(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]))
        .unwrap()
}

/// The address the loader maps file offset `offset` at.
fn vaddr_of_offset(bytes: &[u8], offset: usize) -> u64 {
    let file = object::File::parse(bytes).unwrap();
    let offset = u64::try_from(offset).unwrap();
    file.segments()
        .find_map(|segment| {
            let (start, size) = segment.file_range();
            (start..start + size)
                .contains(&offset)
                .then(|| segment.address() + offset - start)
        })
        .unwrap()
}

/// lld writes no pointer values into a PIE, only relocations. With every pointer to the
/// code base zeroed in the file (the header's `textStart`, `moduledata.pcHeader` and
/// `moduledata.text`), the relocations still give it; `.text` would be wrong here.
#[test]
fn reads_pointers_left_to_relocations() {
    for version in ["1.24.11", "1.26.6"] {
        let expected = open(&build(version, PieLink::External, "amd64"));
        let path = build(version, PieLink::StrippedExternal, "amd64");
        let mut bytes = std::fs::read(&path).unwrap();
        let header = header_offset(&bytes);
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let header_vaddr = vaddr_of_offset(&bytes, header);
        let funcnametab = header_vaddr + word(header + 32);
        let moduledata: Vec<usize> = (0..bytes.len() - 16)
            .step_by(8)
            .filter(|&at| word(at) == header_vaddr && word(at + 8) == funcnametab)
            .collect();
        assert_eq!(moduledata.len(), 1, "go{version}");
        for at in [header + 24, moduledata[0], moduledata[0] + 176] {
            bytes[at..at + 8].fill(0);
        }
        let binary = GoBinary::parse(bytes).unwrap();
        for f in map_functions(&expected) {
            assert_eq!(
                binary.function(&f.name).map(|g| g.vaddr),
                Some(f.vaddr),
                "go{version}"
            );
        }
    }
}

/// Go 1.26+ headers hold no code base: with the moduledata unrecognisable the start of
/// `.text` is used, which is right for Go's own linker.
#[test]
fn falls_back_to_the_text_section_without_moduledata() {
    let expected = open(&fixture("1.26.6", Flavor::Plain, &[], "amd64"));
    let path = fixture("1.26.6", Flavor::Stripped, &[], "amd64");
    let mut bytes = std::fs::read(&path).unwrap();
    let file = object::File::parse(bytes.as_slice()).unwrap();
    let module = file.section_by_name(".go.module").unwrap();
    let at = usize::try_from(module.file_range().unwrap().0).unwrap();
    drop(file);
    bytes[at..at + 8].fill(0); // moduledata.pcHeader
    let binary = GoBinary::parse(bytes).unwrap();
    for f in map_functions(&expected) {
        assert_eq!(binary.function(&f.name).map(|g| g.vaddr), Some(f.vaddr));
    }
}

/// Random changes to the header and the function table: errors or a table, never a panic.
#[test]
fn mutated_tables_never_panic() {
    let stripped = Stripped::build("1.24.11");
    let region = stripped.function_table() + 16 * 64;
    let mut random = XorShift(0x853c_49e6_748f_ea9b);
    for round in 0..300 {
        let mut copy = stripped.bytes.clone();
        for _ in 0..1 + random.below(4) {
            let offset = if round % 2 == 0 {
                random.below(72)
            } else {
                random.below(region)
            };
            copy[stripped.header + offset] = random.bytes(1)[0];
        }
        if let Ok(binary) = GoBinary::parse(copy) {
            for f in binary.functions().take(64) {
                let _ = binary.entry_probe_offset(f);
                let _ = binary.return_offsets(f);
            }
        }
    }
}

/// A pclntab of two functions, `main.a` (0x20 bytes) and `main.b` (0x10 bytes), laid out as
/// `layout` prescribes, with entries at `entry` (absolute before 1.18, offsets after).
fn synthetic(layout: Layout, entry: u64) -> Vec<u8> {
    let (magic, words): (u32, u64) = match layout {
        Layout::Go116 => (0xffff_fffa, 7),
        Layout::Go118 => (0xffff_fff1, 8),
    };
    let names = b"main.a\0main.b\0";
    let funcname = 8 + 8 * words;
    let pcln = (funcname + 14).next_multiple_of(8);
    let mut table = magic.to_le_bytes().to_vec();
    table.extend([0, 0, 1, 8]);
    let mut offsets = vec![2, 0, 0, funcname, 0, 0, 0, pcln];
    if layout == Layout::Go116 {
        offsets.remove(2); // no textStart
    }
    for word in offsets {
        table.extend(u64::to_le_bytes(word));
    }
    table.extend(names);
    table.resize(usize::try_from(pcln).unwrap(), 0);
    let field = |value: u64| match layout {
        Layout::Go116 => value.to_le_bytes().to_vec(),
        Layout::Go118 => u32::try_from(value).unwrap().to_le_bytes().to_vec(),
    };
    let size = layout.field_size();
    let funcs = 5 * size;
    let func_len = size + 8;
    for (index, at) in [entry, entry + 0x20].into_iter().enumerate() {
        table.extend(field(at));
        table.extend(field(funcs + func_len * u64::try_from(index).unwrap()));
    }
    table.extend(field(entry + 0x30));
    for (at, name) in [(entry, 0u32), (entry + 0x20, 7)] {
        table.extend(field(at));
        table.extend(name.to_le_bytes());
        table.extend([0; 4]);
    }
    table
}

#[test]
fn reads_both_layouts() {
    let expected = |base: u64| {
        vec![
            Function {
                name: "main.a".into(),
                vaddr: base,
                size: 0x20,
            },
            Function {
                name: "main.b".into(),
                vaddr: base + 0x20,
                size: 0x10,
            },
        ]
    };
    let go116 = synthetic(Layout::Go116, 0x40_1000);
    let table = Pclntab::parse(0, &go116).unwrap();
    assert_eq!(table.header.layout, Layout::Go116);
    assert_eq!(table.functions_from(0).unwrap(), expected(0x40_1000));

    let go118 = synthetic(Layout::Go118, 0);
    let table = Pclntab::parse(0, &go118).unwrap();
    assert_eq!(table.header.text_start, None, "as in Go 1.26+");
    assert_eq!(
        table.functions_from(0x40_1000).unwrap(),
        expected(0x40_1000)
    );
}

#[test]
fn scans_at_pointer_aligned_addresses() {
    let bytes = [0u8; 32];
    let addresses: Vec<u64> = aligned_tails(0x1003, &bytes).map(|(at, _)| at).collect();
    assert_eq!(addresses, [0x1008, 0x1010, 0x1018, 0x1020]);
    let tails: Vec<usize> = aligned_tails(0x1000, &bytes[..9])
        .map(|(_, tail)| tail.len())
        .collect();
    assert_eq!(tails, [9, 1]);
    assert_eq!(aligned_tails(u64::MAX - 2, &bytes).count(), 0);
}
