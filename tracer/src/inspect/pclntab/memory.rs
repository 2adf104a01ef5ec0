//! Pointers as the loaded program sees them, for the few the code base is read from
//! (`pcHeader.textStart`, the moduledata's first fields and `moduledata.text`).
//!
//! In a position-independent binary the dynamic loader fixes up every pointer through a
//! relative relocation. Go's linker and GNU ld also write the final value into the file, but
//! lld writes zero and keeps the value only as the relocation's addend.

use std::collections::HashMap;

use super::super::elf::{ElfView, Segments};
use super::super::InspectError;
use super::{aligned_tails, read_u64};

/// The file's load segments and its relative relocations.
pub(super) struct Memory<'a> {
    file: &'a [u8],
    segments: &'a Segments,
    /// Address → addend of every relative relocation.
    relocated: HashMap<u64, u64>,
}

impl<'a> Memory<'a> {
    pub(super) fn new(
        elf: &ElfView<'a>,
        segments: &'a Segments,
    ) -> Result<Memory<'a>, InspectError> {
        Ok(Memory {
            file: elf.file(),
            segments,
            relocated: elf.relative_relocations()?,
        })
    }

    /// The pointer at `vaddr`: its value in the file or, where the file holds zero, the
    /// addend of the relocation that fills it at load time.
    pub(super) fn pointer(&self, vaddr: u64) -> Option<u64> {
        let in_file = self
            .segments
            .read(self.file, vaddr, 8)
            .and_then(|bytes| read_u64(bytes, 0));
        match in_file {
            Some(0) | None => self.relocated.get(&vaddr).copied(),
            value => value,
        }
    }

    /// The addresses of pointer-aligned pointers to `target`, written in the file or left to
    /// a relocation.
    pub(super) fn pointers_to(&self, target: u64) -> impl Iterator<Item = u64> + '_ {
        let in_file = self
            .segments
            .loaded(self.file)
            .flat_map(|(vaddr, bytes)| aligned_tails(vaddr, bytes))
            .filter(move |(_, words)| read_u64(words, 0) == Some(target))
            .map(|(vaddr, _)| vaddr);
        let relocated = self
            .relocated
            .iter()
            .filter(move |&(_, &addend)| addend == target)
            .map(|(&vaddr, _)| vaddr);
        in_file.chain(relocated)
    }
}
