//! What can go wrong while reading a Go binary.
//!
//! Every message is shown to the user as is, so each one says what was wrong with the file
//! and what to do about it, in one line.

use std::path::PathBuf;

use super::Arch;

/// Why a binary cannot be inspected, or why a function in it cannot be probed.
///
/// Each variant is a distinct situation the caller may want to tell apart (for example to
/// suggest rebuilding the target), and its message is user-facing.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The file does not start with the ELF magic.
    #[error(
        "not an ELF file: gomaptrace traces Linux Go executables, point it at the program's binary"
    )]
    NotElf,

    /// The file claims to be ELF but its headers or tables do not fit in it.
    #[error(
        "malformed or truncated ELF file ({reason}): check that the binary was copied completely"
    )]
    MalformedElf {
        /// What did not parse.
        reason: String,
    },

    /// The binary was built for an architecture gomaptrace has no probes for.
    #[error("unsupported architecture ({found}): gomaptrace traces linux/amd64 and linux/arm64 Go programs")]
    UnsupportedArch {
        /// What the ELF header says.
        found: String,
    },

    /// Neither Go build info nor any `runtime.` function: not something Go linked.
    #[error("not a Go program: the binary has no Go build info and no Go runtime symbols")]
    NotGo,

    /// A Go program (it has runtime symbols) without build info, so its version is unknown.
    #[error("the Go build info is missing, so the binary was built by Go older than 1.13: gomaptrace needs Go 1.17 or newer")]
    MissingBuildInfo,

    /// The build info magic is there but what follows cannot be read.
    #[error("malformed Go build info ({reason}): check that the binary was copied completely")]
    MalformedBuildInfo {
        /// What did not parse.
        reason: String,
    },

    /// The build info holds a version string with no Go release number in it.
    #[error("cannot tell the Go version from the build info {raw:?}: rebuild the program with a released Go toolchain")]
    UnknownGoVersion {
        /// The version string as found.
        raw: String,
    },

    /// A Go release older than the register ABI on this architecture.
    #[error("{raw} uses the stack-based ABI; gomaptrace needs Go {minimum} or newer on {arch}: rebuild the program with a newer Go")]
    UnsupportedGoVersion {
        /// The version string as found.
        raw: String,
        /// The target's architecture.
        arch: Arch,
        /// The oldest supported release on that architecture, e.g. "1.17".
        minimum: &'static str,
    },

    /// Neither `.symtab` (which `-ldflags=-s` removes) nor a Go pclntab (which every Go
    /// 1.16+ linker writes) could be found, so no function can be located.
    #[error("the binary has no .symtab and no Go function table (pclntab) gomaptrace can find: rebuild it without -ldflags=-s, or with Go 1.17 or newer")]
    NoSymbolTable,

    /// The Go function table (pclntab) is there but does not hold together.
    #[error(
        "malformed Go function table (pclntab: {reason}): check that the binary was copied completely"
    )]
    MalformedPclntab {
        /// What did not parse.
        reason: String,
    },

    /// A function's address range is not backed by executable bytes of the file.
    #[error("function {name} ({vaddr:#x}, {size} bytes) lies outside the binary's executable code: the binary is corrupted")]
    FunctionOutOfRange {
        /// The function's symbol name.
        name: String,
        /// Its start address.
        vaddr: u64,
        /// Its size from the symbol table.
        size: u64,
    },

    /// An address that no executable segment of the file maps.
    #[error("address {vaddr:#x} is not in an executable segment of the binary")]
    AddressNotInCode {
        /// The address asked for.
        vaddr: u64,
    },

    /// Bytes inside a function that do not decode as an instruction.
    #[error("cannot decode the instruction at {name}+{offset:#x}: the binary is corrupted or holds code gomaptrace does not understand")]
    Undecodable {
        /// The function being decoded.
        name: String,
        /// Offset of the bad instruction from the function start.
        offset: u64,
    },
}

/// Why a map type descriptor could not be described.
///
/// Only the map type itself is required: a key or element type that cannot be named just
/// reads `?` in the name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TypeNameError {
    /// The descriptor's bytes could not be read from the target.
    #[error("cannot read the map type descriptor at {addr:#x}")]
    Unreadable {
        /// The descriptor's run-time address.
        addr: u64,
    },

    /// The descriptor is readable but does not describe a map: the address is wrong (or the
    /// target's layout is not what its Go release promises).
    #[error("the type descriptor at {addr:#x} is not a map type (kind {kind})")]
    NotAMap {
        /// The descriptor's run-time address.
        addr: u64,
        /// The kind it has instead (`reflect.Kind` numbering).
        kind: u8,
    },
}

impl InspectError {
    /// A [`InspectError::MalformedElf`] from the `object` crate's parse error.
    pub(super) fn malformed_elf(error: object::read::Error) -> InspectError {
        InspectError::MalformedElf {
            reason: error.to_string(),
        }
    }

    /// A [`InspectError::MalformedPclntab`] with a short reason.
    pub(super) fn malformed_pclntab(reason: &str) -> InspectError {
        InspectError::MalformedPclntab {
            reason: reason.to_owned(),
        }
    }

    /// A [`InspectError::MalformedBuildInfo`] with a short reason.
    pub(super) fn malformed_build_info(reason: &str) -> InspectError {
        InspectError::MalformedBuildInfo {
            reason: reason.to_owned(),
        }
    }
}
