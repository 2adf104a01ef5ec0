//! Addresses of the runtime's global variables, for readers of the target's memory (the heap
//! reader starts from `runtime.mheap_`).

use object::read::elf::Sym;

use super::elf::ElfView;
use super::GoBinary;

impl GoBinary {
    /// The linked address of the data symbol `name` (a global variable such as
    /// `runtime.mheap_`) from `.symtab`; `None` when the binary is stripped or lacks it.
    ///
    /// Only `.symtab` names globals: the pclntab a stripped binary keeps lists functions only.
    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        let elf = ElfView::parse(&self.bytes).ok()?;
        let endian = elf.endian();
        let table = elf.symtab().ok()?;
        table
            .iter()
            .find(|symbol| {
                symbol.st_type() == object::elf::STT_OBJECT
                    && table.symbol_name(endian, symbol).ok() == Some(name.as_bytes())
            })
            .map(|symbol| symbol.st_value(endian))
            .filter(|&value| value != 0)
    }
}
