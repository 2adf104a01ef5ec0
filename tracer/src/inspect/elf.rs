//! The few ELF structures gomaptrace needs: header, load segments, sections, symbols and
//! relative relocations.
//!
//! Parsing goes through the `object` crate, which bounds-checks every table against the file;
//! this module only turns its results into owned values and user-facing errors, so nothing
//! here can panic on a hostile file.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{
    FileHeader, ProgramHeader, Rela, SectionHeader, SectionTable, SymbolTable,
};
use object::{Endian, Endianness};

use super::{Arch, InspectError};

/// The only ELF layout Go emits for the supported architectures.
type Header = elf::FileHeader64<Endianness>;

/// Where `e_ident[EI_CLASS]` sits: checked before the 64-bit header is parsed, so 32-bit
/// binaries are reported as an unsupported architecture rather than as malformed.
const EI_CLASS: usize = 4;

/// A parsed view of the ELF file, borrowing its bytes.
pub(super) struct ElfView<'a> {
    data: &'a [u8],
    header: &'a Header,
    endian: Endianness,
    sections: SectionTable<'a, Header, &'a [u8]>,
}

impl<'a> ElfView<'a> {
    /// Parses the header and the section table, telling "not ELF" apart from "broken ELF".
    pub(super) fn parse(data: &'a [u8]) -> Result<ElfView<'a>, InspectError> {
        if !data.starts_with(&elf::ELFMAG) {
            return Err(InspectError::NotElf);
        }
        if data.get(EI_CLASS) == Some(&elf::ELFCLASS32) {
            return Err(InspectError::UnsupportedArch {
                found: "32-bit ELF".to_owned(),
            });
        }
        let header = Header::parse(data).map_err(InspectError::malformed_elf)?;
        let endian = header.endian().map_err(InspectError::malformed_elf)?;
        if endian.is_big_endian() {
            return Err(InspectError::UnsupportedArch {
                found: "big-endian ELF".to_owned(),
            });
        }
        let sections = header
            .sections(endian, data)
            .map_err(InspectError::malformed_elf)?;
        let view = ElfView {
            data,
            header,
            endian,
            sections,
        };
        view.check_complete()?;
        Ok(view)
    }

    /// Refuses a file that ends before one of its sections or segments does: a truncated copy
    /// must be reported as such, not half-read.
    fn check_complete(&self) -> Result<(), InspectError> {
        let segments = self
            .header
            .program_headers(self.endian, self.data)
            .map_err(InspectError::malformed_elf)?
            .iter()
            .map(|header| (header.p_offset(self.endian), header.p_filesz(self.endian)));
        let sections = self
            .sections
            .iter()
            .filter_map(|section| section.file_range(self.endian));
        let file_len = u64::try_from(self.data.len()).unwrap_or(u64::MAX);
        let beyond_end = segments
            .chain(sections)
            .any(|(offset, size)| offset.checked_add(size).is_none_or(|end| end > file_len));
        if beyond_end {
            return Err(InspectError::MalformedElf {
                reason: "a section or segment extends past the end of the file".to_owned(),
            });
        }
        Ok(())
    }

    /// The architecture from `e_machine`.
    pub(super) fn arch(&self) -> Result<Arch, InspectError> {
        match self.header.e_machine(self.endian) {
            elf::EM_X86_64 => Ok(Arch::Amd64),
            elf::EM_AARCH64 => Ok(Arch::Arm64),
            machine => Err(InspectError::UnsupportedArch {
                found: format!("ELF machine {machine}"),
            }),
        }
    }

    /// Every `PT_LOAD` segment: the address-to-file mapping uprobe offsets are computed from.
    pub(super) fn segments(&self) -> Result<Segments, InspectError> {
        let headers = self
            .header
            .program_headers(self.endian, self.data)
            .map_err(InspectError::malformed_elf)?;
        let loads = headers
            .iter()
            .filter(|header| header.p_type(self.endian) == elf::PT_LOAD)
            .map(|header| Segment {
                vaddr: header.p_vaddr(self.endian),
                offset: header.p_offset(self.endian),
                filesz: header.p_filesz(self.endian),
                flags: header.p_flags(self.endian),
                align: header.p_align(self.endian),
            })
            .collect();
        Ok(Segments(loads))
    }

    /// The file bytes of the named section, `None` when there is no such section.
    pub(super) fn section_data(&self, name: &[u8]) -> Result<Option<&'a [u8]>, InspectError> {
        Ok(self.section(name)?.map(|section| section.data))
    }

    /// The named section's address and file bytes, `None` when there is no such section.
    /// Tables such as Go's pclntab hold addresses, so their bytes alone are not enough.
    pub(super) fn section(&self, name: &[u8]) -> Result<Option<Section<'a>>, InspectError> {
        let Some((_, header)) = self.sections.section_by_name(self.endian, name) else {
            return Ok(None);
        };
        let data = header
            .data(self.endian, self.data)
            .map_err(InspectError::malformed_elf)?;
        Ok(Some(Section {
            vaddr: header.sh_addr(self.endian),
            data,
        }))
    }

    /// The `.symtab` symbol table; empty when the binary was stripped.
    pub(super) fn symtab(&self) -> Result<SymbolTable<'a, Header, &'a [u8]>, InspectError> {
        self.sections
            .symbols(self.endian, self.data, elf::SHT_SYMTAB)
            .map_err(InspectError::malformed_elf)
    }

    /// The byte order, for reading symbol fields.
    pub(super) fn endian(&self) -> Endianness {
        self.endian
    }

    /// Address → addend of every `R_X86_64_RELATIVE` / `R_AARCH64_RELATIVE` dynamic
    /// relocation: the pointers of a position-independent binary. Go's linker and GNU ld
    /// also write each addend into the file, but lld leaves zeros there, so a reader of such
    /// a pointer needs the relocation.
    pub(super) fn relative_relocations(&self) -> Result<HashMap<u64, u64>, InspectError> {
        let relative = match self.arch()? {
            Arch::Amd64 => elf::R_X86_64_RELATIVE,
            Arch::Arm64 => elf::R_AARCH64_RELATIVE,
        };
        let mut addends = HashMap::new();
        for section in self.sections.iter() {
            let Some((relocations, _)) = section
                .rela(self.endian, self.data)
                .map_err(InspectError::malformed_elf)?
            else {
                continue;
            };
            let relative = relocations
                .iter()
                .filter(|rela| rela.r_type(self.endian, false) == relative);
            for rela in relative {
                if let Ok(addend) = u64::try_from(rela.r_addend(self.endian)) {
                    addends.insert(rela.r_offset(self.endian), addend);
                }
            }
        }
        Ok(addends)
    }

    /// The whole file, for tables found through load segments rather than sections.
    pub(super) fn file(&self) -> &'a [u8] {
        self.data
    }
}

/// A section as linked: where it is loaded and its bytes in the file.
#[derive(Clone, Copy, Debug)]
pub(super) struct Section<'a> {
    /// Its load address (`sh_addr`).
    pub(super) vaddr: u64,
    /// Its file bytes.
    pub(super) data: &'a [u8],
}

/// One `PT_LOAD` program header: how a range of addresses maps onto file bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    flags: u32,
    /// `p_align`: the kernel maps the segment from the page holding its first byte, and a
    /// page is never larger than this.
    align: u64,
}

impl Segment {
    /// File offset of `[vaddr, vaddr + len)` when the whole range has file bytes here.
    fn file_offset(&self, vaddr: u64, len: u64) -> Option<u64> {
        let relative = vaddr.checked_sub(self.vaddr)?;
        let end = relative.checked_add(len)?;
        if end > self.filesz {
            return None;
        }
        self.offset.checked_add(relative)
    }

    fn is_executable(&self) -> bool {
        self.flags & elf::PF_X != 0
    }

    fn is_writable(&self) -> bool {
        self.flags & elf::PF_W != 0
    }
}

/// All load segments of a binary, owned so the tables outlive the parse.
#[derive(Clone, Debug)]
pub(super) struct Segments(Vec<Segment>);

impl Segments {
    /// File offset of `len` bytes at `vaddr` inside an executable segment: code is only
    /// probed where the kernel maps it executable.
    pub(super) fn code_offset(&self, vaddr: u64, len: u64) -> Option<u64> {
        self.0
            .iter()
            .filter(|segment| segment.is_executable())
            .find_map(|segment| segment.file_offset(vaddr, len))
    }

    /// The address, as linked, where a mapping of the file starting at `offset` starts, when
    /// that mapping holds an executable segment. The kernel maps a segment from the page
    /// holding its first byte, so the mapping may start before the segment itself: Go's
    /// linker aligns segments to pages in the file, external linkers (lld, gold) often do
    /// not, and then the code mapping starts up to a page before `p_offset`.
    pub(super) fn mapped_code_vaddr(&self, offset: u64) -> Option<u64> {
        self.0
            .iter()
            .filter(|segment| segment.is_executable())
            .find_map(|segment| {
                if offset >= segment.offset.checked_add(segment.filesz)? {
                    return None;
                }
                match segment.offset.checked_sub(offset) {
                    Some(lead) if lead < segment.align.max(1) => segment.vaddr.checked_sub(lead),
                    Some(_) => None,
                    None => segment.vaddr.checked_add(offset - segment.offset),
                }
            })
    }

    /// The `len` file bytes at `vaddr` in any segment (build info pointers lead into data).
    pub(super) fn read<'a>(&self, file: &'a [u8], vaddr: u64, len: u64) -> Option<&'a [u8]> {
        let offset = self
            .0
            .iter()
            .find_map(|segment| segment.file_offset(vaddr, len))?;
        slice(file, offset, len)
    }

    /// Every segment's address and file bytes, for tables that must be found by scanning
    /// (Go's pclntab has no section of its own in externally linked PIE binaries).
    pub(super) fn loaded<'a>(
        &self,
        file: &'a [u8],
    ) -> impl Iterator<Item = (u64, &'a [u8])> + use<'a, '_> {
        self.0.iter().filter_map(move |segment| {
            let bytes = slice(file, segment.offset, segment.filesz)?;
            Some((segment.vaddr, bytes))
        })
    }

    /// The file bytes of every writable segment, where the linker puts the build info.
    pub(super) fn writable<'a>(
        &self,
        file: &'a [u8],
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, '_> {
        self.0
            .iter()
            .filter(|segment| segment.is_writable())
            .filter_map(move |segment| slice(file, segment.offset, segment.filesz))
    }
}

/// `file[offset..offset + len]`, or `None` when any of it is outside the file.
pub(super) fn slice(file: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    file.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load segments of an lld-linked Go program (Docker's CLI 28): read-only data from
    /// offset 0, code from 0x2260c0, not page-aligned in the file.
    fn lld_linked() -> Segments {
        let segment = |vaddr, offset, filesz, flags| Segment {
            vaddr,
            offset,
            filesz,
            flags,
            align: 0x1000,
        };
        Segments(vec![
            segment(0x20_0000, 0, 0x22_60b4, elf::PF_R),
            segment(0x42_70c0, 0x22_60c0, 0xc5_ee3e, elf::PF_R | elf::PF_X),
            segment(0x108_6f00, 0xe8_4f00, 0xc4_01f0, elf::PF_R | elf::PF_W),
        ])
    }

    #[test]
    fn a_code_mapping_may_start_a_page_before_its_segment() {
        let segments = lld_linked();
        // `/proc/PID/maps`: 00427000-01086000 r-xp 00226000 …/docker
        assert_eq!(segments.mapped_code_vaddr(0x22_6000), Some(0x42_7000));
        assert_eq!(segments.mapped_code_vaddr(0x22_60c0), Some(0x42_70c0));
        assert_eq!(segments.mapped_code_vaddr(0x30_0000), Some(0x50_1000));
        // More than a page before, in the data, or past the code: not a code mapping.
        assert_eq!(segments.mapped_code_vaddr(0x22_5000), None);
        assert_eq!(segments.mapped_code_vaddr(0), None);
        assert_eq!(segments.mapped_code_vaddr(0xe8_5000), None);
        assert_eq!(segments.mapped_code_vaddr(u64::MAX), None);
    }
}
