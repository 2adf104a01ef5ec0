//! Function names and addresses from Go's own function table, the pclntab.
//!
//! The runtime needs the pclntab for stack traces and garbage collection, so the linker keeps
//! it when `-ldflags=-s -w` removes `.symtab`: it is what makes stripped binaries traceable.
//!
//! Where it is:
//! - section `.gopclntab` (every build type in Go 1.26+, non-PIE builds before);
//! - section `.data.rel.ro.gopclntab` in internally linked PIE builds of Go 1.18–1.25;
//! - no section of its own in externally linked PIE builds of Go 1.20–1.25: it sits inside
//!   `.data.rel.ro` and is found by scanning the load segments for its header at
//!   pointer-aligned addresses, keeping the first candidate whose whole table parses.
//!
//! Layout (Go's `runtime/symtab.go` `pcHeader`, 64-bit), offsets from the header:
//!
//! | offset | Go 1.16–1.17                      | Go 1.18+                              |
//! |--------|-----------------------------------|---------------------------------------|
//! | 0      | magic `0xfffffffa` (u32)          | `0xfffffff0` (1.18–1.19), `0xfffffff1`|
//! | 4      | pad 0, pad 0, quantum, ptrsize    | same                                  |
//! | 8      | nfunc                             | nfunc                                 |
//! | 16     | nfiles                            | nfiles                                |
//! | 24     | funcnameOffset                    | textStart (always 0 in 1.26+)         |
//! | 32     | cuOffset                          | funcnameOffset                        |
//! | 40–48  | filetabOffset, pctabOffset        | cuOffset, filetabOffset               |
//! | 56     | pclnOffset                        | pctabOffset                           |
//! | 64     | —                                 | pclnOffset                            |
//!
//! At `pclnOffset` the function table: `nfunc + 1` pairs (entry, funcOff), the last entry
//! being the end of the code. Go 1.18+ stores 32-bit entries relative to the code base;
//! 1.16–1.17 absolute pointer-sized ones. `funcOff` (also from `pclnOffset`) leads to the
//! function's `_func`, which repeats the entry and then holds `nameOff` (int32), the offset
//! of the NUL-terminated name from `funcnameOffset`.

mod memory;

use memory::Memory;

use super::elf::{ElfView, Segments};
use super::{Function, InspectError};

/// Sections the linker names after the table, tried in order.
const SECTIONS: [&[u8]; 2] = [b".gopclntab", b".data.rel.ro.gopclntab"];
/// Pointer size of every supported architecture, and the header's word size.
const PTR_SIZE: u8 = 8;
/// Instruction size quantum: 1 on amd64, 4 on arm64 (and other fixed-width ISAs).
const QUANTA: [u8; 2] = [1, 4];
/// The magic, two zero pad bytes, the quantum and the pointer size.
const FIXED_HEADER_LEN: u64 = 8;
/// Where `moduledata.funcnametab`'s data pointer sits (right after `pcHeader *pcHeader`).
const MODULEDATA_FUNCNAMETAB_AT: u64 = 8;
/// Where `moduledata.text` sits (Go 1.18–1.27): the pointer, six slices, `findfunctab`,
/// `minpc` and `maxpc` come first.
const MODULEDATA_TEXT_AT: u64 = 176;

/// The header layouts, told apart by the magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Go 1.16–1.17: absolute entries, no `textStart`.
    Go116,
    /// Go 1.18 and later (the 1.20 magic changed nothing read here).
    Go118,
}

impl Layout {
    fn from_magic(magic: u32) -> Option<Layout> {
        match magic {
            0xffff_fffa => Some(Layout::Go116),
            0xffff_fff0 | 0xffff_fff1 => Some(Layout::Go118),
            _ => None,
        }
    }

    /// Index (in words after the fixed part) of `funcnameOffset`; `pclnOffset` is four
    /// words later.
    fn funcname_word(self) -> u64 {
        match self {
            Layout::Go116 => 2,
            Layout::Go118 => 3,
        }
    }

    /// Index of `textStart`, which Go 1.16–1.17 do not have.
    fn text_start_word(self) -> Option<u64> {
        match self {
            Layout::Go116 => None,
            Layout::Go118 => Some(2),
        }
    }

    /// Bytes of one function-table field, and of the entry at the start of each `_func`.
    fn field_size(self) -> u64 {
        match self {
            Layout::Go116 => u64::from(PTR_SIZE),
            Layout::Go118 => 4,
        }
    }
}

/// The header fields the function list and the line tables need.
#[derive(Clone, Copy, Debug)]
pub(super) struct PclntabHeader {
    pub(super) layout: Layout,
    /// The magic itself: the line tables also tell 1.18–1.19 (`0xfffffff0`) from 1.20+.
    pub(super) magic: u32,
    /// Instruction size quantum: line-table pc deltas count in these units.
    pub(super) quantum: u8,
    pub(super) nfunc: u64,
    /// The code base of Go 1.18–1.25 (`None` before 1.18, and when 0 as in 1.26+).
    text_start: Option<u64>,
    pub(super) funcname_offset: u64,
    /// Offsets from the header of the compilation-unit file index, the file names and the
    /// pc-value tables.
    pub(super) cu_offset: u64,
    pub(super) filetab_offset: u64,
    pub(super) pctab_offset: u64,
    pub(super) pcln_offset: u64,
}

impl PclntabHeader {
    /// Checks the fixed part and reads the offsets; the tables themselves are checked as
    /// they are read.
    fn parse(data: &[u8]) -> Result<PclntabHeader, InspectError> {
        let truncated = || InspectError::malformed_pclntab("header truncated");
        let magic = read_u32(data, 0).ok_or_else(truncated)?;
        let layout = Layout::from_magic(magic)
            .ok_or_else(|| InspectError::malformed_pclntab("unknown magic"))?;
        let quantum = match data.get(4..8) {
            Some(&[0, 0, quantum, PTR_SIZE]) if QUANTA.contains(&quantum) => quantum,
            Some(_) => {
                return Err(InspectError::malformed_pclntab(
                    "bad padding, quantum or pointer size",
                ))
            }
            None => return Err(truncated()),
        };
        let word = |index: u64| read_u64(data, word_offset(index)).ok_or_else(truncated);
        let funcname = layout.funcname_word();
        let text_start = layout.text_start_word().map(word).transpose()?;
        Ok(PclntabHeader {
            layout,
            magic,
            quantum,
            nfunc: word(0)?,
            text_start: text_start.filter(|&start| start != 0),
            funcname_offset: word(funcname)?,
            cu_offset: word(funcname + 1)?,
            filetab_offset: word(funcname + 2)?,
            pctab_offset: word(funcname + 3)?,
            pcln_offset: word(funcname + 4)?,
        })
    }
}

/// Offset from the header of the word after the fixed part with this index.
fn word_offset(index: u64) -> u64 {
    FIXED_HEADER_LEN + index * u64::from(PTR_SIZE)
}

/// Every function the pclntab lists; `None` when the binary has no pclntab.
///
/// A pclntab in a named section must parse, or the binary is reported as malformed; one found
/// by scanning must parse to count as found at all, since the bytes may only look like one.
pub(super) fn read(
    elf: &ElfView<'_>,
    segments: &Segments,
) -> Result<Option<Vec<Function>>, InspectError> {
    for name in SECTIONS {
        if let Some(section) = elf.section(name)? {
            let table = Pclntab::parse(section.vaddr, section.data)?;
            return table.functions(elf, segments).map(Some);
        }
    }
    Ok(scan(elf, segments))
}

/// The first pointer-aligned header in any load segment whose whole table parses.
fn scan(elf: &ElfView<'_>, segments: &Segments) -> Option<Vec<Function>> {
    scan_tables(elf, segments).find_map(|table| table.functions(elf, segments).ok())
}

/// Every pointer-aligned pclntab header in the load segments, whatever follows it.
fn scan_tables<'a>(
    elf: &ElfView<'a>,
    segments: &'a Segments,
) -> impl Iterator<Item = Pclntab<'a>> + 'a {
    segments
        .loaded(elf.file())
        .flat_map(|(vaddr, bytes)| aligned_tails(vaddr, bytes))
        .filter(|(_, data)| read_u32(data, 0).and_then(Layout::from_magic).is_some())
        .filter_map(|(vaddr, data)| Pclntab::parse(vaddr, data).ok())
}

/// How many leading words of the moduledata [`Located`] keeps: enough for every field read
/// from it (`gofunc`, the furthest, is word 43 in Go 1.27).
pub(super) const MODULEDATA_WORDS: usize = 46;

/// Where the pclntab is, what its header says and where its code starts, kept (without the
/// bytes) so that line tables can be decoded long after parsing; and the moduledata's leading
/// words, as the loaded program sees them, for the addresses it alone records (`types`,
/// `gofunc`).
#[derive(Clone, Debug)]
pub(super) struct Located {
    /// Address of the header as linked.
    pub(super) vaddr: u64,
    /// Bytes from the header to the end of its section (or segment, when found by scanning).
    pub(super) len: u64,
    pub(super) header: PclntabHeader,
    /// What Go 1.18+ entries count from (0 for 1.16–1.17, whose entries are absolute).
    pub(super) code_base: u64,
    /// The moduledata's first [`MODULEDATA_WORDS`] words; `None` when it was not found.
    pub(super) moduledata: Option<Vec<u64>>,
}

/// The binary's pclntab, located as [`read`] does; `None` when there is none that parses.
pub(super) fn locate(elf: &ElfView<'_>, segments: &Segments) -> Option<Located> {
    let mut named = SECTIONS
        .iter()
        .filter_map(|name| elf.section(name).ok().flatten())
        .filter_map(|section| Pclntab::parse(section.vaddr, section.data).ok());
    let table = match named.next() {
        Some(table) => table,
        None => scan_tables(elf, segments).find(|table| table.functions(elf, segments).is_ok())?,
    };
    let code_base = match table.header.layout {
        Layout::Go116 => 0,
        Layout::Go118 => table.code_base(elf, segments).ok()?,
    };
    let moduledata = Memory::new(elf, segments).ok().and_then(|memory| {
        let start = table.moduledata(&memory)?;
        (0..MODULEDATA_WORDS)
            .map(|word| {
                let at = u64::try_from(word).ok()?.checked_mul(u64::from(PTR_SIZE))?;
                Some(memory.pointer(start.checked_add(at)?).unwrap_or(0))
            })
            .collect()
    });
    Some(Located {
        vaddr: table.vaddr,
        len: u64::try_from(table.data.len()).ok()?,
        header: table.header,
        code_base,
        moduledata,
    })
}

/// `(address, bytes from there on)` for every pointer-aligned address in `bytes`, which is
/// loaded at `vaddr`.
fn aligned_tails(vaddr: u64, bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let align = u64::from(PTR_SIZE);
    let first = (align - vaddr % align) % align;
    let first = usize::try_from(first).unwrap_or(usize::MAX);
    (first..bytes.len())
        .step_by(usize::from(PTR_SIZE))
        .filter_map(move |at| {
            let address = vaddr.checked_add(u64::try_from(at).ok()?)?;
            Some((address, bytes.get(at..)?))
        })
}

/// A pclntab: its header, where it is loaded, and its bytes up to the end of its section or
/// segment (its own length is not recorded anywhere).
struct Pclntab<'a> {
    vaddr: u64,
    data: &'a [u8],
    header: PclntabHeader,
}

impl<'a> Pclntab<'a> {
    fn parse(vaddr: u64, data: &'a [u8]) -> Result<Pclntab<'a>, InspectError> {
        Ok(Pclntab {
            vaddr,
            data,
            header: PclntabHeader::parse(data)?,
        })
    }

    /// Every function with its size, which runs to the next function's entry (and so
    /// includes the alignment padding after it).
    fn functions(
        &self,
        elf: &ElfView<'_>,
        segments: &Segments,
    ) -> Result<Vec<Function>, InspectError> {
        let base = match self.header.layout {
            Layout::Go116 => 0,
            Layout::Go118 => self.code_base(elf, segments)?,
        };
        self.functions_from(base)
    }

    /// Every function, Go 1.18+ entries counted from `base` (ignored before 1.18).
    fn functions_from(&self, base: u64) -> Result<Vec<Function>, InspectError> {
        let table = self.function_table()?;
        (0..self.header.nfunc)
            .map(|index| self.function(table, index, base))
            .collect()
    }

    /// The `nfunc + 1` function-table pairs, checked to lie inside the data.
    fn function_table(&self) -> Result<&'a [u8], InspectError> {
        if self.header.nfunc == 0 {
            return Err(InspectError::malformed_pclntab("no functions"));
        }
        let len = self
            .header
            .nfunc
            .checked_mul(2)
            .and_then(|fields| fields.checked_add(1))
            .and_then(|fields| fields.checked_mul(self.header.layout.field_size()))
            .ok_or_else(|| InspectError::malformed_pclntab("function count overflows"))?;
        self.bytes(self.header.pcln_offset, len)
            .ok_or_else(|| InspectError::malformed_pclntab("function table truncated"))
    }

    /// Function `index` of the table: entry and size from the table, name via its `_func`.
    fn function(&self, table: &[u8], index: u64, base: u64) -> Result<Function, InspectError> {
        let truncated = || InspectError::malformed_pclntab("function table truncated");
        let size = self.header.layout.field_size();
        let field = |number: u64| {
            number
                .checked_mul(size)
                .and_then(|at| self.read_field(table, at))
                .ok_or_else(truncated)
        };
        let entry = field(2 * index)?;
        let end = field(2 * index + 2)?;
        let func = self
            .header
            .pcln_offset
            .checked_add(field(2 * index + 1)?)
            .ok_or_else(|| InspectError::malformed_pclntab("bad function offset"))?;
        if self.read_field(self.data, func) != Some(entry) {
            return Err(InspectError::malformed_pclntab(
                "function entry disagrees with the function table",
            ));
        }
        Ok(Function {
            name: self.name(func)?,
            vaddr: base
                .checked_add(entry)
                .ok_or_else(|| InspectError::malformed_pclntab("entry address overflows"))?,
            size: end
                .checked_sub(entry)
                .ok_or_else(|| InspectError::malformed_pclntab("functions out of order"))?,
        })
    }

    /// The entry-sized value at byte `at` of `bytes`: a function-table field, or the entry
    /// a `_func` starts with.
    fn read_field(&self, bytes: &[u8], at: u64) -> Option<u64> {
        match self.header.layout {
            Layout::Go116 => read_u64(bytes, at),
            Layout::Go118 => read_u32(bytes, at).map(u64::from),
        }
    }

    /// The name of the `_func` at offset `func`: its `nameOff` (right after the entry)
    /// leads into the name table.
    fn name(&self, func: u64) -> Result<String, InspectError> {
        let out_of_range = || InspectError::malformed_pclntab("function name out of range");
        // An int32: a negative offset is as corrupt as one past the end.
        let start = func
            .checked_add(self.header.layout.field_size())
            .and_then(|at| read_u32(self.data, at))
            .filter(|&offset| i32::try_from(offset).is_ok())
            .and_then(|offset| self.header.funcname_offset.checked_add(u64::from(offset)))
            .and_then(|start| usize::try_from(start).ok())
            .ok_or_else(out_of_range)?;
        let rest = self.data.get(start..).ok_or_else(out_of_range)?;
        let len = rest
            .iter()
            .position(|&byte| byte == 0)
            .ok_or_else(out_of_range)?;
        Ok(String::from_utf8_lossy(rest.get(..len).ok_or_else(out_of_range)?).into_owned())
    }

    /// The address Go 1.18+ entries count from: the header's `textStart` (1.18–1.25), else
    /// `moduledata.text` (1.26+ always, older builds when lld left the header to a
    /// relocation), else the start of `.text`, which is right for Go's own linker only: an
    /// external linker puts C start-up code first.
    fn code_base(&self, elf: &ElfView<'_>, segments: &Segments) -> Result<u64, InspectError> {
        if let Some(start) = self.header.text_start {
            return Ok(start);
        }
        let memory = Memory::new(elf, segments)?;
        if let Some(base) = self
            .relocated_text_start(&memory)
            .or_else(|| self.moduledata_text(&memory))
        {
            return Ok(base);
        }
        elf.section(b".text")?
            .map(|section| section.vaddr)
            .ok_or_else(|| InspectError::malformed_pclntab("cannot tell where the code starts"))
    }

    /// `textStart` filled in by a relocation only (an lld-linked PIE of Go 1.18–1.25).
    fn relocated_text_start(&self, memory: &Memory<'_>) -> Option<u64> {
        let word = self.header.layout.text_start_word()?;
        let at = self.vaddr.checked_add(word_offset(word))?;
        memory.pointer(at).filter(|&start| start != 0)
    }

    /// `moduledata.text` of the module whose `pcHeader` is this table: the moduledata is
    /// recognised by its first two words pointing at the header and at the name table.
    /// Go 1.26+ gives it a section (`.go.module`); before, it lies in `.noptrdata`.
    fn moduledata_text(&self, memory: &Memory<'_>) -> Option<u64> {
        let field = |moduledata: u64, at: u64| memory.pointer(moduledata.checked_add(at)?);
        self.moduledatas(memory)
            .find_map(|moduledata| field(moduledata, MODULEDATA_TEXT_AT).filter(|&text| text != 0))
    }

    /// The address of the moduledata whose `pcHeader` is this table (see
    /// [`Pclntab::moduledata_text`]).
    fn moduledata(&self, memory: &Memory<'_>) -> Option<u64> {
        self.moduledatas(memory).next()
    }

    /// Candidate moduledata addresses: pointers to this header followed by a pointer to its
    /// name table.
    fn moduledatas<'m>(&self, memory: &'m Memory<'_>) -> impl Iterator<Item = u64> + 'm {
        let funcnametab = self.vaddr.checked_add(self.header.funcname_offset);
        let field = |moduledata: u64, at: u64| memory.pointer(moduledata.checked_add(at)?);
        memory.pointers_to(self.vaddr).filter(move |&moduledata| {
            funcnametab.is_some() && field(moduledata, MODULEDATA_FUNCNAMETAB_AT) == funcnametab
        })
    }

    /// `len` bytes at `offset` from the header.
    fn bytes(&self, offset: u64, len: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(start..end)
    }
}

/// The little-endian `u32` at `at`, if it lies within `data`.
pub(super) fn read_u32(data: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The little-endian `u64` at `at`, if it lies within `data`.
pub(super) fn read_u64(data: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests;
