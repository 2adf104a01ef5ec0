//! Source positions of code addresses, read from the pclntab so that stripped binaries (which
//! have no DWARF) still get file, line and function for every frame of a stack.
//!
//! The pclntab holds, for each function, a `_func` record followed by the offsets of its
//! "pc-value" tables. A pc-value table maps ranges of code addresses to a number; three of
//! them matter here:
//! - `pcfile`: an index into the function's compilation unit's file list (`cutab`, whose
//!   entries point into the file-name table `filetab`);
//! - `pcln`: the line;
//! - `pcdata[PCDATA_InlTreeIndex]`: which inlined call the instruction belongs to (-1: none).
//!
//! File and line are those of the innermost inlined call. The inline tree
//! (`funcdata[FUNCDATA_InlTree]`) names each inlined function and gives `parentPc`, an
//! instruction of the caller whose position is the call site; decoding again at
//! `entry + parentPc` walks out one level, as the runtime's own traceback does.
//!
//! `_func` layout (Go's `runtime/runtime2.go`), offsets from the record, with `E` the entry
//! field size (8 in Go 1.16–1.17, where entries are absolute, else 4):
//!
//! | offset  | field                                                               |
//! |---------|---------------------------------------------------------------------|
//! | 0       | entry                                                               |
//! | E       | nameOff (int32, into the function name table)                       |
//! | E+16    | pcfile, E+20 pcln, E+24 npcdata, E+28 cuOffset (uint32 each)        |
//! | E+32    | Go 1.20+: startLine (int32), shifting what follows by 4             |
//! | end − 1 | nfuncdata (uint8); the record is E+36 bytes, E+40 in Go 1.20+       |
//!
//! After the record: `npcdata` uint32 table offsets (from `pctabOffset`; 0 = no table), then
//! `nfuncdata` funcdata references: uint32 offsets from `moduledata.gofunc` in Go 1.18+
//! (`0xffffffff` = none), pointer-aligned absolute pointers in Go 1.16–1.17.
//!
//! Inline tree entries (`runtime.inlinedCall`): 20 bytes up to Go 1.19 (`nameOff` at 12,
//! `parentPc` at 16), 16 bytes from Go 1.20 (`nameOff` at 4, `parentPc` at 8).

use serde::{Deserialize, Serialize};

use super::pclntab::{read_u32, read_u64, Layout, Located};
use super::{GoBinary, GoVersion};

/// One source position of a call stack: the unit stacks are reported in.
///
/// Ordered and hashable so callers can deduplicate and sort stacks; serializable because
/// reports carry them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceFrame {
    /// The function as Go names it, e.g. `main.(*server).handle` (for an inlined frame, the
    /// inlined function).
    pub function: String,
    /// The source file as recorded at build time (`-trimpath` builds record
    /// `module/path/file.go`); `?` when the table does not say.
    pub file: String,
    /// The line in `file`; 0 when the table does not say.
    pub line: u32,
}

/// `pcdata` table holding the inline-tree index of each instruction.
const PCDATA_INL_TREE_INDEX: u64 = 2;
/// `funcdata` entry pointing at the inline tree.
const FUNCDATA_INL_TREE: u64 = 3;
/// Bound on inlined levels followed, so a corrupted tree whose `parentPc`s loop cannot hang.
const MAX_INLINE_DEPTH: usize = 256;
/// The magic of Go 1.20+ pclntabs: `_func.startLine` and the 16-byte inline entries.
const GO120_MAGIC: u32 = 0xffff_fff1;

/// What [`GoBinary::frames_at`] needs to decode the pclntab again at any time: where the
/// table is and how its records are laid out, without a copy of its bytes.
#[derive(Clone, Debug)]
pub(super) struct LineTables {
    located: Located,
    /// `moduledata.gofunc`, the base of Go 1.18+ funcdata offsets.
    gofunc: Option<u64>,
    func: FuncLayout,
    inline: InlineLayout,
}

impl LineTables {
    /// Picks the record layouts for the table's magic and, through the release, where
    /// `moduledata.gofunc` sits.
    pub(super) fn new(located: Located, version: GoVersion) -> LineTables {
        let gofunc_word = match version.minor {
            ..=17 => None,
            18..=19 => Some(38),
            20..=26 => Some(40),
            _ => Some(43),
        };
        let gofunc = located
            .moduledata
            .as_deref()
            .zip(gofunc_word)
            .and_then(|(words, word)| words.get(word).copied())
            .filter(|&gofunc| gofunc != 0);
        let go120 = located.header.magic == GO120_MAGIC;
        let func = FuncLayout {
            absolute_entries: located.header.layout == Layout::Go116,
            start_line: go120,
        };
        let inline = if go120 {
            InlineLayout {
                size: 16,
                name_at: 4,
                parent_pc_at: 8,
            }
        } else {
            InlineLayout {
                size: 20,
                name_at: 12,
                parent_pc_at: 16,
            }
        };
        LineTables {
            located,
            gofunc,
            func,
            inline,
        }
    }
}

/// How a `_func` record is laid out in this binary's Go release.
#[derive(Clone, Copy, Debug)]
struct FuncLayout {
    /// Go 1.16–1.17: pointer-sized absolute entries, absolute funcdata pointers.
    absolute_entries: bool,
    /// Go 1.20+: an extra `startLine` field before `funcID`.
    start_line: bool,
}

impl FuncLayout {
    /// Bytes of the entry field, which shifts every field after it.
    fn entry_size(self) -> u64 {
        if self.absolute_entries {
            8
        } else {
            4
        }
    }

    /// Offset of `nameOff`, `pcfile`, `pcln`, `npcdata` or `cuOffset` (4, 16, 20, 24, 28
    /// bytes after the entry).
    fn field(self, after_entry: u64) -> u64 {
        self.entry_size() + after_entry
    }

    /// Size of the fixed record: the `pcdata` offsets follow it.
    fn size(self) -> u64 {
        self.entry_size() + if self.start_line { 40 } else { 36 }
    }
}

/// Where `runtime.inlinedCall` keeps the fields the unwinding needs.
#[derive(Clone, Copy, Debug)]
struct InlineLayout {
    size: u64,
    name_at: u64,
    parent_pc_at: u64,
}

impl GoBinary {
    /// Frames at a code address as linked (not relocated), innermost inlined call first, the
    /// physical function last.
    ///
    /// Empty when the address is in no Go function. Callers pass `return_address - 1` for
    /// return addresses, so that a call at the end of an inlined body is attributed to it and
    /// not to the next line. Decoding costs a binary search and a pass over the function's
    /// tables: callers cache per stack.
    pub fn frames_at(&self, vaddr: u64) -> Vec<SourceFrame> {
        let Some(tables) = &self.tables.lines else {
            return Vec::new();
        };
        let located = &tables.located;
        let Some(data) = self
            .tables
            .segments
            .read(&self.bytes, located.vaddr, located.len)
        else {
            return Vec::new();
        };
        let decoder = Decoder {
            binary: self,
            tables,
            data,
        };
        decoder.frames_at(vaddr).unwrap_or_default()
    }

    /// The linked virtual address of a file offset in an executable `PT_LOAD` segment (the
    /// inverse of [`GoBinary::file_offset`]), so callers can compute a PIE load bias from the
    /// mapping in `/proc/PID/maps` that holds the code.
    pub fn vaddr_of_file_offset(&self, offset: u64) -> Option<u64> {
        self.tables.segments.mapped_code_vaddr(offset)
    }
}

/// A physical function found in the function table.
#[derive(Clone, Copy, Debug)]
struct Func {
    /// Its first instruction, as linked.
    entry: u64,
    /// Offset of its `_func` record from the pclntab header.
    record: u64,
}

/// One decoding pass over the borrowed pclntab bytes.
struct Decoder<'a> {
    binary: &'a GoBinary,
    tables: &'a LineTables,
    /// The pclntab, from its header to the end of its section or segment.
    data: &'a [u8],
}

impl Decoder<'_> {
    /// The frames at `pc`; `None` when no function holds it.
    fn frames_at(&self, pc: u64) -> Option<Vec<SourceFrame>> {
        let func = self.find_func(pc)?;
        let tree = self.inline_tree(func);
        let mut frames = Vec::new();
        let mut pc = pc;
        for _ in 0..MAX_INLINE_DEPTH {
            let Some(index) = self
                .pcdata_value(func, PCDATA_INL_TREE_INDEX, pc)
                .and_then(|index| u64::try_from(index).ok())
            else {
                break;
            };
            let Some((name_off, parent_pc)) = tree.and_then(|tree| self.inlined_call(tree, index))
            else {
                break;
            };
            frames.push(self.frame(self.name(name_off), func, pc));
            let Some(parent) = func.entry.checked_add(parent_pc) else {
                break;
            };
            pc = parent;
        }
        let name = self.record_u32(func, self.tables.func.field(0))?;
        frames.push(self.frame(self.name(name), func, pc));
        Some(frames)
    }

    /// File and line at `pc` of `func`, under the given function name.
    fn frame(&self, function: Option<String>, func: Func, pc: u64) -> SourceFrame {
        let file = self
            .table_value(func, self.tables.func.field(16), pc)
            .and_then(|fileno| self.file_name(func, fileno));
        let line = self
            .table_value(func, self.tables.func.field(20), pc)
            .and_then(|line| u32::try_from(line).ok());
        SourceFrame {
            function: function.unwrap_or_else(|| "?".to_owned()),
            file: file.unwrap_or_else(|| "?".to_owned()),
            line: line.unwrap_or(0),
        }
    }

    /// The function whose code holds `pc`: a binary search of the function table, whose
    /// `nfunc + 1` entries are sorted, the last one being the end of the code.
    fn find_func(&self, pc: u64) -> Option<Func> {
        let located = &self.tables.located;
        let nfunc = located.header.nfunc;
        let entry = |index: u64| {
            let relative = self.table_field(index.checked_mul(2)?)?;
            located.code_base.checked_add(relative)
        };
        if pc < entry(0)? || pc >= entry(nfunc)? {
            return None;
        }
        // Invariant: entry(low) <= pc < entry(high).
        let (mut low, mut high) = (0, nfunc);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if entry(middle)? <= pc {
                low = middle;
            } else {
                high = middle;
            }
        }
        let record = located
            .header
            .pcln_offset
            .checked_add(self.table_field(low.checked_mul(2)?.checked_add(1)?)?)?;
        Some(Func {
            entry: entry(low)?,
            record,
        })
    }

    /// Field `index` of the function table (entries and `_func` offsets alternate).
    fn table_field(&self, index: u64) -> Option<u64> {
        let at = self.tables.located.header.pcln_offset;
        if self.tables.func.absolute_entries {
            read_u64(self.data, at.checked_add(index.checked_mul(8)?)?)
        } else {
            read_u32(self.data, at.checked_add(index.checked_mul(4)?)?).map(u64::from)
        }
    }

    /// A uint32 field of `func`'s record.
    fn record_u32(&self, func: Func, at: u64) -> Option<u32> {
        read_u32(self.data, func.record.checked_add(at)?)
    }

    /// The value at `pc` of the pc-value table whose offset is the record field at `field`.
    fn table_value(&self, func: Func, field: u64, pc: u64) -> Option<i32> {
        let table = self.record_u32(func, field)?;
        self.pc_value(table, func.entry, pc)
    }

    /// The value at `pc` of `func`'s `pcdata` table `index`; `None` when it has none.
    fn pcdata_value(&self, func: Func, index: u64, pc: u64) -> Option<i32> {
        let npcdata = self.record_u32(func, self.tables.func.field(24))?;
        if index >= u64::from(npcdata) {
            return None;
        }
        let table = self.record_u32(func, self.tables.func.size().checked_add(index * 4)?)?;
        self.pc_value(table, func.entry, pc)
    }

    /// Decodes the pc-value table at `table` (from `pctabOffset`; 0 is no table) up to `pc`.
    ///
    /// The table is a sequence of (value delta, pc delta) pairs of uvarints starting from
    /// value -1 at the entry; the value delta is zig-zag encoded, the pc delta counts
    /// instruction quanta, and a zero value delta after the first pair ends the table. Each
    /// value holds up to (not including) the pc reached after its pair.
    fn pc_value(&self, table: u32, entry: u64, pc: u64) -> Option<i32> {
        if table == 0 {
            return None;
        }
        let quantum = u64::from(self.tables.located.header.quantum);
        let mut at = self
            .tables
            .located
            .header
            .pctab_offset
            .checked_add(u64::from(table))?;
        let mut value: i32 = -1;
        let mut reached = entry;
        let mut first = true;
        loop {
            let (value_delta, len) = read_uvarint(self.data, at)?;
            if value_delta == 0 && !first {
                return None;
            }
            at = at.checked_add(len)?;
            value = value.wrapping_add(zigzag(value_delta));
            let (pc_delta, len) = read_uvarint(self.data, at)?;
            at = at.checked_add(len)?;
            reached = reached.checked_add(u64::from(pc_delta).checked_mul(quantum)?)?;
            if pc < reached {
                return Some(value);
            }
            first = false;
        }
    }

    /// The name of file `fileno` of `func`'s compilation unit: `cutab[cuOffset + fileno]`
    /// is its offset in the file-name table (`0xffffffff`: none).
    fn file_name(&self, func: Func, fileno: i32) -> Option<String> {
        let header = &self.tables.located.header;
        let index = u64::from(self.record_u32(func, self.tables.func.field(28))?)
            .checked_add(u64::try_from(fileno).ok()?)?;
        let offset = read_u32(
            self.data,
            header.cu_offset.checked_add(index.checked_mul(4)?)?,
        )?;
        if offset == u32::MAX {
            return None;
        }
        c_string(
            self.data,
            header.filetab_offset.checked_add(u64::from(offset))?,
        )
    }

    /// A function name from its `nameOff` in the function-name table.
    fn name(&self, name_off: u32) -> Option<String> {
        let header = &self.tables.located.header;
        c_string(
            self.data,
            header.funcname_offset.checked_add(u64::from(name_off))?,
        )
    }

    /// The linked address of `func`'s inline tree; `None` when nothing is inlined into it.
    fn inline_tree(&self, func: Func) -> Option<u64> {
        let layout = self.tables.func;
        let nfuncdata = self
            .data
            .get(usize::try_from(func.record.checked_add(layout.size() - 1)?).ok()?)?;
        if FUNCDATA_INL_TREE >= u64::from(*nfuncdata) {
            return None;
        }
        let npcdata = u64::from(self.record_u32(func, layout.field(24))?);
        let funcdata = func
            .record
            .checked_add(layout.size())?
            .checked_add(npcdata.checked_mul(4)?)?;
        if layout.absolute_entries {
            // Pointers, aligned to 8 bytes in memory.
            let vaddr = self.tables.located.vaddr.checked_add(funcdata)?;
            let padding = if vaddr % 8 == 4 { 4 } else { 0 };
            let pointer = funcdata
                .checked_add(padding)?
                .checked_add(FUNCDATA_INL_TREE * 8)?;
            return read_u64(self.data, pointer).filter(|&tree| tree != 0);
        }
        let offset = read_u32(self.data, funcdata.checked_add(FUNCDATA_INL_TREE * 4)?)?;
        if offset == u32::MAX {
            return None;
        }
        self.tables.gofunc?.checked_add(u64::from(offset))
    }

    /// `(nameOff, parentPc)` of entry `index` of the inline tree at `tree`.
    fn inlined_call(&self, tree: u64, index: u64) -> Option<(u32, u64)> {
        let layout = self.tables.inline;
        let at = tree.checked_add(index.checked_mul(layout.size)?)?;
        let entry = self
            .binary
            .tables
            .segments
            .read(&self.binary.bytes, at, layout.size)?;
        let name_off = read_u32(entry, layout.name_at)?;
        let parent_pc = u64::try_from(read_u32(entry, layout.parent_pc_at)? as i32).ok()?;
        Some((name_off, parent_pc))
    }
}

/// Zig-zag decoding: 0, 1, 2, 3, 4 → 0, -1, 1, -2, 2.
fn zigzag(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

/// A uvarint of at most 32 bits (Go's `readvarint`) and its length in bytes.
fn read_uvarint(data: &[u8], at: u64) -> Option<(u32, u64)> {
    let start = usize::try_from(at).ok()?;
    let mut value: u32 = 0;
    for (index, &byte) in data.get(start..)?.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, u64::try_from(index).ok()? + 1));
        }
    }
    None
}

/// The NUL-terminated string at `at`, bytes that are not UTF-8 replaced.
fn c_string(data: &[u8], at: u64) -> Option<String> {
    let rest = data.get(usize::try_from(at).ok()?..)?;
    let len = rest.iter().position(|&byte| byte == 0)?;
    Some(String::from_utf8_lossy(&rest[..len]).into_owned())
}

#[cfg(test)]
pub(super) mod tests;
