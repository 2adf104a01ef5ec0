//! What a Go binary holds that the tracer needs before it can place a single probe: the Go
//! release (which decides every struct layout), the architecture, the runtime's map
//! functions, and the file offsets where uprobes go.
//!
//! Uprobes are attached by file offset, and two places per function matter:
//! - the entry probe goes after the stack-check branch, because a function whose stack has
//!   to grow runs its first instructions twice;
//! - return probes go on every `RET` instruction, because uretprobes corrupt Go stacks.
//!
//! Everything is read from an untrusted file, so every offset is checked and malformed input
//! yields an [`InspectError`], never a panic.

mod amd64;
mod arm64;
mod buildinfo;
mod creation;
mod data;
mod elf;
mod error;
mod lines;
mod pclntab;
mod symbols;
mod types;
mod version;

#[cfg(test)]
mod released_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

pub use creation::SeedCall;
pub use error::{InspectError, TypeNameError};
pub use lines::SourceFrame;
#[cfg(any(test, feature = "fuzzing"))]
pub use types::fuzz_map_type_info;
pub use types::{map_type_info, MapTypeInfo, ReadMemory, Storage};
pub use version::GoVersion;

use elf::{ElfView, Segments};
use lines::LineTables;
use symbols::FunctionTable;
use types::TypesRange;

/// A Go executable, read once and kept in memory for probe planning.
///
/// Owns the file bytes so that function code can be decoded at any time without going back
/// to the file (which may be replaced while the process runs).
pub struct GoBinary {
    bytes: Vec<u8>,
    /// What was read from `bytes`, kept as read.
    tables: Tables,
}

/// A function symbol: what a probe is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Function {
    /// The exact symbol name, e.g. `runtime.mapassign_fast64`.
    pub name: String,
    /// The address of its first instruction, as linked.
    pub vaddr: u64,
    /// Its length in bytes: exact from `.symtab`; from the pclntab of a stripped binary it
    /// runs to the next function, so it includes the alignment padding (INT3 on amd64),
    /// which holds no returns.
    pub size: u64,
}

/// The instruction sets gomaptrace can place probes in.
///
/// Registers, prologues and return instructions differ per architecture, so every stage
/// that touches machine state branches on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64 (`GOARCH=amd64`).
    Amd64,
    /// AArch64 (`GOARCH=arm64`).
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

impl GoBinary {
    /// Reads and parses the executable at `path` (typically `/proc/<pid>/exe`).
    pub fn open(path: &Path) -> Result<GoBinary, InspectError> {
        let bytes = std::fs::read(path).map_err(|source| InspectError::Io {
            path: path.to_owned(),
            source,
        })?;
        GoBinary::parse(bytes)
    }

    /// Parses an executable already in memory; separate from [`GoBinary::open`] so tests can
    /// feed corrupted bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<GoBinary, InspectError> {
        let tables = Tables::read(&bytes)?;
        Ok(GoBinary { bytes, tables })
    }

    /// Where static type descriptors start, as linked (`runtime.types`): a map type's
    /// DWARF `DW_AT_go_runtime_type` offset counts from here, which turns a package
    /// variable's type into the descriptor pointer the runtime passes to map functions.
    pub fn types_start(&self) -> Option<u64> {
        self.tables.types.map(TypesRange::start)
    }

    /// The Go release that built the binary: selects struct offsets and symbol names.
    pub fn go_version(&self) -> &GoVersion {
        &self.tables.version
    }

    /// The version string exactly as the build info holds it (e.g. `go1.24.11 X:noswissmap`),
    /// for reports: it also names pre-releases and enabled experiments.
    pub fn raw_go_version(&self) -> &str {
        &self.tables.raw_version
    }

    /// The instruction set: selects registers and prologue shapes.
    pub fn arch(&self) -> Arch {
        self.tables.arch
    }

    /// The function with exactly this symbol name, e.g. `runtime.mapassign_fast64`. `None` is
    /// normal for map variants the program never uses: the linker drops them.
    ///
    /// Names from the pclntab of a stripped binary are the runtime's: an assembly function
    /// and its ABI wrapper share one (`.symtab` calls one of them `name.abi0`), and then the
    /// lower address is returned. No map function has such a twin.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.tables.functions.get(name)
    }

    /// Every function, in address order (for stripped binaries only Go functions: the
    /// pclntab lists no C code).
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.tables.functions.iter()
    }

    /// File offset (what a uprobe attaches to) of the first instruction after the function's
    /// stack-check branch; the function start when the function has no stack check (NOSPLIT).
    ///
    /// Probing the very first instruction would count a call twice whenever the stack grows:
    /// `morestack` restarts the function from the top.
    pub fn entry_probe_offset(&self, f: &Function) -> Result<u64, InspectError> {
        let (code, start) = self.code(f)?;
        let skip = match self.tables.arch {
            Arch::Amd64 => amd64::stack_check_end(code),
            Arch::Arm64 => arm64::stack_check_end(code),
        };
        Ok(start + skip.unwrap_or(0))
    }

    /// File offsets of every RET instruction of the function (decoded, never hard-coded).
    ///
    /// These replace uretprobes, which break Go's stack walking. Empty when the function never
    /// returns normally.
    pub fn return_offsets(&self, f: &Function) -> Result<Vec<u64>, InspectError> {
        let (code, start) = self.code(f)?;
        let offsets = match self.tables.arch {
            Arch::Amd64 => {
                amd64::return_offsets(code).map_err(|bad| InspectError::Undecodable {
                    name: f.name.clone(),
                    offset: bad.offset,
                })?
            }
            Arch::Arm64 => arm64::return_offsets(code),
        };
        Ok(offsets.into_iter().map(|offset| start + offset).collect())
    }

    /// The file offset of a code address: `vaddr - p_vaddr + p_offset` of the executable
    /// `PT_LOAD` segment containing it. Uprobes take file offsets, not addresses.
    pub fn file_offset(&self, vaddr: u64) -> Result<u64, InspectError> {
        self.tables
            .segments
            .code_offset(vaddr, 1)
            .ok_or(InspectError::AddressNotInCode { vaddr })
    }

    /// The function's bytes and their file offset, checked to lie in executable file bytes.
    fn code(&self, f: &Function) -> Result<(&[u8], u64), InspectError> {
        let out_of_range = || InspectError::FunctionOutOfRange {
            name: f.name.clone(),
            vaddr: f.vaddr,
            size: f.size,
        };
        let start = self
            .tables
            .segments
            .code_offset(f.vaddr, f.size)
            .ok_or_else(out_of_range)?;
        let code = elf::slice(&self.bytes, start, f.size).ok_or_else(out_of_range)?;
        Ok((code, start))
    }
}

impl fmt::Debug for GoBinary {
    /// Summarises instead of dumping megabytes of file bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoBinary")
            .field("arch", &self.tables.arch)
            .field("go_version", &self.tables.raw_version)
            .field("bytes", &self.bytes.len())
            .field("functions", &self.tables.functions.iter().count())
            .finish_non_exhaustive()
    }
}

/// Everything [`GoBinary`] keeps besides the bytes, read while the bytes are borrowed.
struct Tables {
    arch: Arch,
    version: GoVersion,
    raw_version: String,
    segments: Segments,
    functions: FunctionTable,
    /// The pclntab's place and layout, for source lines (see [`GoBinary::frames_at`]).
    lines: Option<LineTables>,
    /// Where static type descriptors are, for type names (see [`map_type_info`]).
    types: Option<TypesRange>,
}

impl Tables {
    /// Checks, in the order that gives the most useful error: ELF, architecture, Go at all,
    /// Go release, then a usable symbol table.
    fn read(bytes: &[u8]) -> Result<Tables, InspectError> {
        let elf = ElfView::parse(bytes)?;
        let arch = elf.arch()?;
        let segments = elf.segments()?;
        let functions = FunctionTable::load(&elf, &segments)?;
        let Some(build_info) = buildinfo::find(&elf, &segments, bytes)? else {
            let is_go = functions
                .as_ref()
                .is_some_and(FunctionTable::has_go_runtime);
            return Err(if is_go {
                InspectError::MissingBuildInfo
            } else {
                InspectError::NotGo
            });
        };
        let raw_version =
            buildinfo::version_string(build_info, |vaddr, len| segments.read(bytes, vaddr, len))?;
        let version =
            GoVersion::parse(&raw_version).ok_or_else(|| InspectError::UnknownGoVersion {
                raw: raw_version.clone(),
            })?;
        version.check_register_abi(arch, &raw_version)?;
        let located = pclntab::locate(&elf, &segments);
        let types = TypesRange::find(&elf, located.as_ref(), version);
        let lines = located.map(|located| LineTables::new(located, version));
        Ok(Tables {
            arch,
            version,
            raw_version,
            segments,
            functions: functions.ok_or(InspectError::NoSymbolTable)?,
            lines,
            types,
        })
    }
}
