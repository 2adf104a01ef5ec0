//! Function names and address ranges, from whichever table the binary carries.
//!
//! The ELF `.symtab` is preferred (exact sizes, and it names non-Go code too); stripped
//! binaries (`-ldflags=-s`) keep only Go's pclntab, the second [`SymbolSource`]. The rest of
//! the tracer never needs to know where a name came from.

use std::collections::HashMap;

use object::elf;
use object::read::elf::Sym;

use super::elf::{ElfView, Segments};
use super::{pclntab, Function, InspectError};

/// A table of functions a binary may carry, in order of preference.
#[derive(Clone, Copy, Debug)]
enum SymbolSource {
    /// ELF `.symtab`: exact names and sizes, removed by stripping.
    ElfSymtab,
    /// Go's pclntab: kept by stripping; sizes run to the next function.
    Pclntab,
}

impl SymbolSource {
    /// Every source, best first.
    const ALL: [SymbolSource; 2] = [SymbolSource::ElfSymtab, SymbolSource::Pclntab];

    /// The functions this source lists; `None` when the binary does not carry it.
    fn read(
        self,
        elf: &ElfView<'_>,
        segments: &Segments,
    ) -> Result<Option<Vec<Function>>, InspectError> {
        match self {
            SymbolSource::ElfSymtab => read_symtab(elf),
            SymbolSource::Pclntab => pclntab::read(elf, segments),
        }
    }
}

/// The binary's functions, by address and by name.
#[derive(Clone, Debug)]
pub(super) struct FunctionTable {
    by_address: Vec<Function>,
    by_name: HashMap<String, usize>,
}

impl FunctionTable {
    /// Reads the first available [`SymbolSource`]; `None` when the binary has none.
    pub(super) fn load(
        elf: &ElfView<'_>,
        segments: &Segments,
    ) -> Result<Option<FunctionTable>, InspectError> {
        for source in SymbolSource::ALL {
            if let Some(functions) = source.read(elf, segments)? {
                return Ok(Some(FunctionTable::new(functions)));
            }
        }
        Ok(None)
    }

    /// Indexes `functions`; when a name repeats, the lowest address wins.
    fn new(mut functions: Vec<Function>) -> FunctionTable {
        functions.sort_by(|a, b| (a.vaddr, &a.name).cmp(&(b.vaddr, &b.name)));
        let mut by_name = HashMap::with_capacity(functions.len());
        for (index, function) in functions.iter().enumerate() {
            by_name.entry(function.name.clone()).or_insert(index);
        }
        FunctionTable {
            by_address: functions,
            by_name,
        }
    }

    /// The function with exactly this symbol name.
    pub(super) fn get(&self, name: &str) -> Option<&Function> {
        self.by_name
            .get(name)
            .and_then(|&index| self.by_address.get(index))
    }

    /// All functions in address order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Function> {
        self.by_address.iter()
    }

    /// Whether the Go runtime is linked in: tells a Go program from any other ELF.
    pub(super) fn has_go_runtime(&self) -> bool {
        self.by_name.keys().any(|name| name.starts_with("runtime."))
    }
}

/// Defined `STT_FUNC` symbols of `.symtab`; `None` when there is no `.symtab` or it lists
/// no function (which leaves nothing to probe either).
fn read_symtab(elf: &ElfView<'_>) -> Result<Option<Vec<Function>>, InspectError> {
    let endian = elf.endian();
    let table = elf.symtab()?;
    let mut functions = Vec::new();
    for symbol in table.iter() {
        if symbol.st_type() != elf::STT_FUNC || symbol.st_shndx(endian) == elf::SHN_UNDEF {
            continue;
        }
        let name = table
            .symbol_name(endian, symbol)
            .map_err(InspectError::malformed_elf)?;
        functions.push(Function {
            name: String::from_utf8_lossy(name).into_owned(),
            vaddr: symbol.st_value(endian),
            size: symbol.st_size(endian),
        });
    }
    Ok((!functions.is_empty()).then_some(functions))
}
