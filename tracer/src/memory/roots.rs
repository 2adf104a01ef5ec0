//! What holds a map: the program's package-level variables (its roots), read from DWARF, and
//! the paths from each of them to the map pointers they contain.
//!
//! A map made before the trace has no creation site; the variable that holds it is the next
//! best thing a person can act on (`main.sessionCache.byID`). As viewcore and goref do, the
//! binary's DWARF says which package-level variables exist, where they are linked and what
//! type they have; walking those types (struct fields, pointers to structs, small arrays)
//! gives every place a map pointer can sit, and reading the live process's memory along each
//! path gives the map's address. Nothing is guessed: a map no path reaches is "unknown", and
//! so is every map of a binary without DWARF.
//!
//! Bounds: at most [`MAX_PATHS`] paths are kept (each a name and at most [`MAX_DEPTH`] + 1
//! offsets), types are walked [`MAX_DEPTH`] levels deep, arrays only up to
//! [`MAX_ARRAY_LEN`] elements; resolution reads each pointer once (at most
//! `MAX_PATHS × (MAX_DEPTH + 1)` 8-byte reads, cached).

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::rc::Rc;

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{CompressionFormat, Object, ObjectSection};

use crate::inspect::ReadMemory;

/// Most paths kept for one binary: enough for every map-holding variable of a large service,
/// small enough (a few MiB) to keep for a whole trace.
pub const MAX_PATHS: usize = 100_000;

/// Most struct, pointer and array levels walked below a variable: deep enough for
/// `pkg.server.state.cache.byID`, shallow enough that linked structures stay cheap.
pub const MAX_DEPTH: u32 = 6;

/// Largest array whose elements are walked one by one (`pkg.shards[3]`); bigger arrays are
/// tables, not holders a person would name.
pub const MAX_ARRAY_LEN: u64 = 64;

/// Most paths the walk keeps in its per-type memo before it stops exploring new types: the
/// walk's own memory bound.
const MAX_MEMO_PATHS: usize = 4 * MAX_PATHS;

/// Largest DWARF section inflated: a corrupt header cannot make us allocate more.
const MAX_SECTION_BYTES: u64 = 1 << 30;

/// Go's own DWARF attribute holding a type's `reflect.Kind`.
const DW_AT_GO_KIND: gimli::DwAt = gimli::DwAt(0x2900);
/// Go's own DWARF attribute holding a type's offset from `runtime.types`: where its run-time
/// descriptor (name, bucket size) is.
const DW_AT_GO_RUNTIME_TYPE: gimli::DwAt = gimli::DwAt(0x2904);
const KIND_ARRAY: u64 = 17;
const KIND_MAP: u64 = 21;
const KIND_POINTER: u64 = 22;
const KIND_STRUCT: u64 = 25;

/// Pointers are 8 bytes, little-endian, on every architecture gomaptrace traces.
const POINTER_SIZE: usize = 8;

/// Why the roots of a binary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The binary could not be read.
    #[error("cannot read the binary: {0}")]
    Io(#[from] std::io::Error),
    /// Not an object file `object` understands.
    #[error("not an ELF file: {0}")]
    Object(#[from] object::Error),
    /// A compressed DWARF section that does not inflate.
    #[error("DWARF section {section} does not inflate: {reason}")]
    Inflate {
        /// The section.
        section: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// DWARF that gimli cannot parse.
    #[error("malformed DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
}

/// One way to reach a map from a package-level variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRoot {
    /// The Go expression naming the map, e.g. `main.sessionCache.byID` or `main.shards[3]`
    /// (pointers are dereferenced implicitly, as Go's selectors do).
    pub path: String,
    /// The variable's address as linked (add the load bias of a position-independent binary).
    pub address: u64,
    /// How to get from the variable to the map pointer: start at `address + offsets[0]`; for
    /// each later offset, read the pointer there and add the offset; the word at the last
    /// location is the map pointer (what `%p` prints).
    pub offsets: Vec<u64>,
    /// The map type's offset from `runtime.types` (DWARF's `DW_AT_go_runtime_type`): where
    /// its descriptor is, for the type's name and bucket size; `None` when DWARF omits it.
    pub runtime_type: Option<u64>,
}

impl MapRoot {
    /// How a person would rather see the map named: fewest dereferences, then shortest,
    /// then alphabetical.
    fn rank(&self) -> (usize, usize, &str) {
        (self.offsets.len(), self.path.len(), &self.path)
    }

    /// The map pointer this path leads to in the target's memory now, or `None` when a
    /// pointer on the way (or the map itself) is nil or unreadable.
    fn locate(&self, bias: u64, mut read: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
        let (first, rest) = self.offsets.split_first()?;
        let mut location = self.address.checked_add(bias)?.checked_add(*first)?;
        for offset in rest {
            let pointer = read(location).filter(|&pointer| pointer != 0)?;
            location = pointer.checked_add(*offset)?;
        }
        read(location).filter(|&map| map != 0)
    }
}

/// The map-holding paths of one binary, in a stable order (by variable name, then field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roots {
    roots: Vec<MapRoot>,
    truncated: bool,
    dwarf: bool,
    /// Every map type's offset from `runtime.types` that DWARF names, reached by a
    /// variable or not: what a map found on the heap can be typed with.
    map_types: Vec<u64>,
}

impl Roots {
    /// Reads the roots of the binary at `path`. A binary without DWARF (`-ldflags=-s -w`)
    /// has none, which is not an error.
    pub fn from_file(path: &Path) -> Result<Roots, RootsError> {
        Roots::from_elf(&std::fs::read(path)?)
    }

    /// Reads the roots of an ELF binary held in memory.
    pub fn from_elf(bytes: &[u8]) -> Result<Roots, RootsError> {
        let file = object::File::parse(bytes)?;
        let sections = DwarfSections::load(&file)?;
        if sections.is_empty() {
            return Ok(Roots::default());
        }
        let dwarf = gimli::Dwarf::load(|id| {
            Ok::<_, gimli::Error>(EndianSlice::new(sections.get(id), LittleEndian))
        })?;
        let (types, variables) = scan(&dwarf)?;
        Ok(walk(&types, variables))
    }

    /// Roots made of `paths` as if DWARF had listed them, for the fuzzer's inventory target.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn from_paths(paths: Vec<MapRoot>) -> Roots {
        Roots {
            roots: paths,
            truncated: false,
            dwarf: true,
            map_types: Vec::new(),
        }
    }

    /// Every path found.
    pub fn paths(&self) -> &[MapRoot] {
        &self.roots
    }

    /// Whether the binary has DWARF: without it, no variable can be seen.
    pub fn has_dwarf(&self) -> bool {
        self.dwarf
    }

    /// Whether paths were left out because a bound was reached.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The offsets from `runtime.types` of every map type in the binary's DWARF, sorted:
    /// the heap scan names a map's type by the one whose bucket or group type its storage
    /// has.
    pub fn map_types(&self) -> &[u64] {
        &self.map_types
    }

    /// Reads every path in `memory` and names each map `wanted` accepts by the path that
    /// reaches it: the one with fewest dereferences, then the shortest, then the first in
    /// alphabetical order, so that the answer does not depend on the walk's order. `bias` is
    /// the load bias of the binary. The target keeps running: a path torn by a concurrent
    /// write just reaches nothing, or a map `wanted` does not know.
    pub fn resolve(
        &self,
        memory: &impl ReadMemory,
        bias: u64,
        wanted: impl Fn(u64) -> bool,
    ) -> BTreeMap<u64, String> {
        self.best(memory, bias, wanted)
            .into_iter()
            .map(|(map, root)| (map, root.path.clone()))
            .collect()
    }

    /// Every map `wanted` accepts that some path reaches now, with the path that names it
    /// best (see [`Roots::resolve`]).
    pub fn best(
        &self,
        memory: &impl ReadMemory,
        bias: u64,
        wanted: impl Fn(u64) -> bool,
    ) -> BTreeMap<u64, &MapRoot> {
        let mut words: HashMap<u64, Option<u64>> = HashMap::new();
        let mut read = |addr: u64| {
            *words.entry(addr).or_insert_with(|| {
                let bytes = memory.read(addr, POINTER_SIZE)?;
                Some(u64::from_le_bytes(bytes.as_slice().try_into().ok()?))
            })
        };
        let mut best: BTreeMap<u64, &MapRoot> = BTreeMap::new();
        for root in &self.roots {
            let Some(map) = root.locate(bias, &mut read) else {
                continue;
            };
            if !wanted(map) {
                continue;
            }
            best.entry(map)
                .and_modify(|held| {
                    if root.rank() < held.rank() {
                        *held = root;
                    }
                })
                .or_insert(root);
        }
        best
    }
}

/// The DWARF sections the roots need, inflated when `go build` compressed them (its
/// default): `.debug_info`, `.debug_abbrev` and the string sections. Line, frame and location
/// tables are never inflated.
struct DwarfSections {
    data: Vec<(gimli::SectionId, Vec<u8>)>,
}

impl DwarfSections {
    const NEEDED: [gimli::SectionId; 4] = [
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugStr,
        gimli::SectionId::DebugLineStr,
    ];

    fn load(file: &object::File<'_>) -> Result<DwarfSections, RootsError> {
        let mut data = Vec::new();
        for id in Self::NEEDED {
            let section = file.section_by_name(id.name()).or_else(|| {
                id.name()
                    .strip_prefix(".debug_")
                    .and_then(|rest| file.section_by_name(&format!(".zdebug_{rest}")))
            });
            let Some(section) = section else { continue };
            data.push((id, inflate(id.name(), &section)?));
        }
        if !data
            .iter()
            .any(|(id, _)| *id == gimli::SectionId::DebugInfo)
        {
            data.clear();
        }
        Ok(DwarfSections { data })
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn get(&self, id: gimli::SectionId) -> &[u8] {
        self.data
            .iter()
            .find(|(have, _)| *have == id)
            .map_or(&[][..], |(_, bytes)| bytes.as_slice())
    }
}

/// A section's bytes, inflated if compressed (zlib: what Go writes, as `SHF_COMPRESSED` or,
/// from older linkers, `.zdebug_*`).
fn inflate(name: &'static str, section: &object::Section<'_, '_>) -> Result<Vec<u8>, RootsError> {
    let error = |reason: String| RootsError::Inflate {
        section: name,
        reason,
    };
    let compressed = section
        .compressed_data()
        .map_err(|e| error(e.to_string()))?;
    match compressed.format {
        CompressionFormat::None => Ok(compressed.data.to_vec()),
        CompressionFormat::Zlib => {
            if compressed.uncompressed_size > MAX_SECTION_BYTES {
                return Err(error(format!(
                    "{} bytes uncompressed is more than the {} allowed",
                    compressed.uncompressed_size, MAX_SECTION_BYTES
                )));
            }
            let mut out = Vec::with_capacity(compressed.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(compressed.data)
                .take(compressed.uncompressed_size)
                .read_to_end(&mut out)
                .map_err(|e| error(e.to_string()))?;
            Ok(out)
        }
        other => Err(error(format!("unsupported compression {other:?}"))),
    }
}

/// What the walk needs of one DWARF type, keyed by its `.debug_info` offset.
#[derive(Debug)]
enum TypeNode {
    /// A Go map type (a typedef of kind map): the word there is the map pointer. It holds
    /// the type's offset from `runtime.types`, when DWARF gives it.
    Map(Option<u64>),
    /// A named type: the same layout as the type it names.
    Alias(u64),
    /// A pointer: the pointee may hold maps.
    Pointer(u64),
    /// A Go struct (not a string, slice or interface, which DWARF also writes as structs).
    Struct(Vec<Member>),
    /// A fixed-size array.
    Array {
        element: u64,
        count: Option<u64>,
        byte_size: u64,
    },
}

#[derive(Debug)]
struct Member {
    name: String,
    offset: u64,
    ty: u64,
}

/// A package-level variable: name, linked address, type.
#[derive(Debug)]
struct Variable {
    name: String,
    address: u64,
    ty: u64,
}

type Dwarf<'a> = gimli::Dwarf<EndianSlice<'a, LittleEndian>>;
type Unit<'a> = gimli::UnitHeader<EndianSlice<'a, LittleEndian>>;
type Entry<'a> = gimli::DebuggingInformationEntry<EndianSlice<'a, LittleEndian>>;

/// One pass over every unit: the types the walk can go through, and the unit-level variables
/// with a static address.
fn scan(dwarf: &Dwarf<'_>) -> Result<(HashMap<u64, TypeNode>, Vec<Variable>), gimli::Error> {
    let mut types = HashMap::new();
    let mut variables = Vec::new();
    let mut units = dwarf.units();
    while let Some(unit) = units.next()? {
        // The unit header alone: `Dwarf::unit` would also parse line programs, which the
        // roots do not need and whose section is not loaded.
        let abbreviations = dwarf.abbreviations(&unit)?;
        let mut entries = unit.entries(&abbreviations);
        // The struct or array whose children are being read, with its depth.
        let mut parent: Option<(u64, isize)> = None;
        while let Some(entry) = entries.next_dfs()? {
            let Some(offset) = entry.offset().to_debug_info_offset(&unit) else {
                continue;
            };
            let offset = offset.0 as u64;
            let depth = entry.depth();
            if parent.is_some_and(|(_, at)| depth <= at) {
                parent = None;
            }
            let kind = entry
                .attr_value(DW_AT_GO_KIND)
                .and_then(|value| value.udata_value());
            match entry.tag() {
                gimli::DW_TAG_variable if depth == 1 => {
                    variables.extend(variable(dwarf, &unit, entry));
                }
                gimli::DW_TAG_typedef => match (kind, type_ref(&unit, entry)) {
                    (Some(KIND_MAP), _) => {
                        let runtime_type =
                            entry
                                .attr_value(DW_AT_GO_RUNTIME_TYPE)
                                .and_then(|value| match value {
                                    AttributeValue::Addr(offset) => Some(offset),
                                    value => value.udata_value(),
                                });
                        // 0: the linker kept no descriptor for the type.
                        let runtime_type = runtime_type.filter(|&offset| offset != 0);
                        types.insert(offset, TypeNode::Map(runtime_type));
                    }
                    (None | Some(KIND_ARRAY | KIND_POINTER | KIND_STRUCT), Some(target)) => {
                        types.insert(offset, TypeNode::Alias(target));
                    }
                    _ => {}
                },
                gimli::DW_TAG_pointer_type => {
                    if let (None | Some(KIND_POINTER), Some(target)) =
                        (kind, type_ref(&unit, entry))
                    {
                        types.insert(offset, TypeNode::Pointer(target));
                    }
                }
                gimli::DW_TAG_structure_type if matches!(kind, None | Some(KIND_STRUCT)) => {
                    types.insert(offset, TypeNode::Struct(Vec::new()));
                    parent = Some((offset, depth));
                }
                gimli::DW_TAG_array_type => {
                    if let Some(element) = type_ref(&unit, entry) {
                        let byte_size = entry
                            .attr_value(gimli::DW_AT_byte_size)
                            .and_then(|value| value.udata_value())
                            .unwrap_or(0);
                        types.insert(
                            offset,
                            TypeNode::Array {
                                element,
                                count: None,
                                byte_size,
                            },
                        );
                        parent = Some((offset, depth));
                    }
                }
                gimli::DW_TAG_member => {
                    if let Some((owner, _)) = parent.filter(|&(_, at)| depth == at + 1) {
                        let member = member(dwarf, &unit, entry);
                        if let (Some(TypeNode::Struct(members)), Some(member)) =
                            (types.get_mut(&owner), member)
                        {
                            members.push(member);
                        }
                    }
                }
                gimli::DW_TAG_subrange_type => {
                    if let Some((owner, _)) = parent.filter(|&(_, at)| depth == at + 1) {
                        if let Some(TypeNode::Array { count, .. }) = types.get_mut(&owner) {
                            *count = subrange_count(entry);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    variables.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    Ok((types, variables))
}

/// A unit-level variable whose location is one static address.
fn variable(dwarf: &Dwarf<'_>, unit: &Unit<'_>, entry: &Entry<'_>) -> Option<Variable> {
    let expression = entry.attr_value(gimli::DW_AT_location)?.exprloc_value()?;
    let mut operations = expression.operations(unit.encoding());
    let gimli::Operation::Address { address } = operations.next().ok()?? else {
        return None;
    };
    if operations.next().ok()?.is_some() {
        return None;
    }
    Some(Variable {
        name: name(dwarf, entry)?,
        address,
        ty: type_ref(unit, entry)?,
    })
}

fn member(dwarf: &Dwarf<'_>, unit: &Unit<'_>, entry: &Entry<'_>) -> Option<Member> {
    Some(Member {
        name: name(dwarf, entry)?,
        offset: entry
            .attr_value(gimli::DW_AT_data_member_location)?
            .udata_value()?,
        ty: type_ref(unit, entry)?,
    })
}

fn subrange_count(entry: &Entry<'_>) -> Option<u64> {
    if let Some(count) = entry.attr_value(gimli::DW_AT_count) {
        return count.udata_value();
    }
    entry
        .attr_value(gimli::DW_AT_upper_bound)?
        .udata_value()?
        .checked_add(1)
}

fn name(dwarf: &Dwarf<'_>, entry: &Entry<'_>) -> Option<String> {
    let name = match entry.attr_value(gimli::DW_AT_name)? {
        AttributeValue::String(name) => name,
        AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok()?,
        AttributeValue::DebugLineStrRef(offset) => dwarf.debug_line_str.get_str(offset).ok()?,
        _ => return None,
    };
    Some(name.to_string_lossy().into_owned())
}

/// The `.debug_info` offset of an entry's type.
fn type_ref(unit: &Unit<'_>, entry: &Entry<'_>) -> Option<u64> {
    match entry.attr_value(gimli::DW_AT_type)? {
        AttributeValue::UnitRef(offset) => offset
            .to_debug_info_offset(unit)
            .map(|offset| offset.0 as u64),
        AttributeValue::DebugInfoRef(offset) => Some(offset.0 as u64),
        _ => None,
    }
}

/// A path from a value of some type to a map pointer inside it (see [`MapRoot::offsets`]).
#[derive(Clone, Debug)]
struct RelativePath {
    suffix: String,
    offsets: Vec<u64>,
    runtime_type: Option<u64>,
}

/// Walks types below variables, remembering each (type, remaining depth) once.
struct Walker<'a> {
    types: &'a HashMap<u64, TypeNode>,
    memo: HashMap<(u64, u32), Rc<Vec<RelativePath>>>,
    memo_paths: usize,
    truncated: bool,
}

impl Walker<'_> {
    fn paths(&mut self, ty: u64, depth: u32) -> Rc<Vec<RelativePath>> {
        if let Some(known) = self.memo.get(&(ty, depth)) {
            return known.clone();
        }
        // A type under construction reaches nothing through itself (typedef cycles).
        self.memo.insert((ty, depth), Rc::new(Vec::new()));
        if self.memo_paths >= MAX_MEMO_PATHS {
            self.truncated = true;
            return Rc::new(Vec::new());
        }
        let mut found = Vec::new();
        match self.types.get(&ty) {
            Some(&TypeNode::Map(runtime_type)) => found.push(RelativePath {
                suffix: String::new(),
                offsets: vec![0],
                runtime_type,
            }),
            Some(&TypeNode::Alias(target)) => {
                found.extend(self.paths(target, depth).iter().cloned())
            }
            Some(&TypeNode::Pointer(target)) if depth > 0 => {
                for inner in self.paths(target, depth - 1).iter() {
                    let mut offsets = Vec::with_capacity(inner.offsets.len() + 1);
                    offsets.push(0);
                    offsets.extend_from_slice(&inner.offsets);
                    found.push(RelativePath {
                        suffix: inner.suffix.clone(),
                        offsets,
                        runtime_type: inner.runtime_type,
                    });
                }
            }
            Some(TypeNode::Struct(members)) if depth > 0 => {
                for member in members {
                    for inner in self.paths(member.ty, depth - 1).iter() {
                        found.extend(shifted(inner, &format!(".{}", member.name), member.offset));
                    }
                }
            }
            Some(&TypeNode::Array {
                element,
                count: Some(count),
                byte_size,
            }) if depth > 0 && (1..=MAX_ARRAY_LEN).contains(&count) => {
                let stride = byte_size / count;
                let inner = self.paths(element, depth - 1);
                for index in 0..count {
                    for path in inner.iter() {
                        found.extend(shifted(path, &format!("[{index}]"), index * stride));
                    }
                }
            }
            _ => {}
        }
        if found.len() > MAX_PATHS {
            found.truncate(MAX_PATHS);
            self.truncated = true;
        }
        self.memo_paths += found.len();
        let found = Rc::new(found);
        self.memo.insert((ty, depth), found.clone());
        found
    }
}

/// `inner` seen from a value that holds it at `offset`, named through `step`.
fn shifted(inner: &RelativePath, step: &str, offset: u64) -> Option<RelativePath> {
    let mut offsets = inner.offsets.clone();
    offsets[0] = offsets[0].checked_add(offset)?;
    Some(RelativePath {
        suffix: format!("{step}{}", inner.suffix),
        offsets,
        runtime_type: inner.runtime_type,
    })
}

/// Every path from every variable to a map, up to the bounds.
fn walk(types: &HashMap<u64, TypeNode>, variables: Vec<Variable>) -> Roots {
    let mut walker = Walker {
        types,
        memo: HashMap::new(),
        memo_paths: 0,
        truncated: false,
    };
    let mut roots = Vec::new();
    'variables: for variable in variables {
        for path in walker.paths(variable.ty, MAX_DEPTH).iter() {
            if roots.len() >= MAX_PATHS {
                walker.truncated = true;
                break 'variables;
            }
            roots.push(MapRoot {
                path: format!("{}{}", variable.name, path.suffix),
                address: variable.address,
                offsets: path.offsets.clone(),
                runtime_type: path.runtime_type,
            });
        }
    }
    let mut map_types: Vec<u64> = types
        .values()
        .filter_map(|node| match node {
            TypeNode::Map(runtime_type) => *runtime_type,
            _ => None,
        })
        .collect();
    map_types.sort_unstable();
    map_types.dedup();
    Roots {
        roots,
        truncated: walker.truncated,
        dwarf: true,
        map_types,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use object::ObjectSymbol;

    use super::*;
    use crate::gofixture::{self, Flavor};
    use crate::inspect::GoBinary;
    use crate::target::Target;

    /// Versions across both map implementations and both DWARF versions (5 from 1.25).
    const VERSIONS: [&str; 4] = ["1.19", "1.21.13", "1.24.11", "1.27.3"];

    fn main_paths(roots: &Roots) -> BTreeMap<String, Vec<u64>> {
        roots
            .paths()
            .iter()
            .filter(|root| root.path.starts_with("main."))
            .map(|root| (root.path.clone(), root.offsets.clone()))
            .collect()
    }

    #[test]
    fn finds_every_map_holding_path_of_the_fixture() {
        for version in VERSIONS {
            let binary = gofixture::build("roots", version, Flavor::Plain, &[]);
            let roots = Roots::from_file(&binary).unwrap();
            assert!(!roots.truncated(), "go{version}");
            let found = main_paths(&roots);
            let expected: BTreeMap<String, Vec<u64>> = [
                ("main.counts", vec![0]),
                ("main.reg.byName", vec![40]),
                ("main.reg.nested.lookup", vec![32]),
                ("main.sessionCache.byID", vec![16]),
                ("main.sessionCache.tags", vec![32]),
                ("main.settings.flags", vec![0, 0]),
                ("main.settings.parent.flags", vec![0, 8, 0]),
                ("main.settings.parent.parent.flags", vec![0, 8, 8, 0]),
                ("main.shards[0]", vec![0]),
                ("main.shards[1]", vec![8]),
                ("main.shards[2]", vec![16]),
                ("main.shards[3]", vec![24]),
            ]
            .into_iter()
            .map(|(path, offsets)| (path.to_string(), offsets))
            .collect();
            assert_eq!(found, expected, "go{version}");

            // Addresses are the linker's, as its symbol table says.
            let bytes = std::fs::read(&binary).unwrap();
            let file = object::File::parse(bytes.as_slice()).unwrap();
            let symbols: HashMap<String, u64> = file
                .symbols()
                .filter_map(|symbol| Some((symbol.name().ok()?.to_string(), symbol.address())))
                .collect();
            for root in roots.paths().iter().filter(|r| r.path.starts_with("main.")) {
                let variable: String = root
                    .path
                    .split(['.', '['])
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(".");
                assert_eq!(
                    Some(&root.address),
                    symbols.get(&variable),
                    "go{version} {}",
                    root.path
                );
            }
        }
    }

    fn variable(ty: u64) -> Vec<Variable> {
        vec![Variable {
            name: "pkg.v".into(),
            address: 0x1000,
            ty,
        }]
    }

    #[test]
    fn the_walk_is_bounded_in_depth_and_in_paths() {
        const MAP: u64 = 1;
        const NODE: u64 = 2;
        const NEXT: u64 = 3;
        let array = |element, count, element_size| TypeNode::Array {
            element,
            count: Some(count),
            byte_size: element_size * count,
        };
        let mut types = HashMap::from([
            (MAP, TypeNode::Map(None)),
            (
                NODE,
                TypeNode::Struct(vec![
                    Member {
                        name: "m".into(),
                        offset: 8,
                        ty: MAP,
                    },
                    Member {
                        name: "next".into(),
                        offset: 16,
                        ty: NEXT,
                    },
                ]),
            ),
            (NEXT, TypeNode::Pointer(NODE)),
            (10, array(MAP, 64, 8)),
            (11, array(10, 64, 8 * 64)),
            (12, array(11, 64, 8 * 64 * 64)),
            (13, array(MAP, MAX_ARRAY_LEN + 1, 8)),
        ]);
        // A linked list stops at the depth bound.
        let list = walk(&types, variable(NODE));
        let paths: Vec<(&str, &[u64])> = list
            .paths()
            .iter()
            .map(|root| (root.path.as_str(), root.offsets.as_slice()))
            .collect();
        assert_eq!(
            paths,
            [
                ("pkg.v.m", &[8][..]),
                ("pkg.v.next.m", &[16, 8][..]),
                ("pkg.v.next.next.m", &[16, 16, 8][..]),
            ]
        );
        // 64³ paths are cut at the bound, and say so.
        let cube = walk(&types, variable(12));
        assert_eq!(cube.paths().len(), MAX_PATHS);
        assert!(cube.truncated());
        assert_eq!(cube.paths()[65].path, "pkg.v[0][1][1]");
        assert_eq!(cube.paths()[65].offsets, [8 * 64 + 8]);
        // Big arrays are tables, not holders.
        assert!(walk(&types, variable(13)).paths().is_empty());
        // A typedef cycle reaches nothing and ends.
        types.insert(20, TypeNode::Alias(21));
        types.insert(21, TypeNode::Alias(20));
        assert!(walk(&types, variable(20)).paths().is_empty());
    }

    struct Words(HashMap<u64, u64>);

    impl ReadMemory for Words {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            assert_eq!(len, POINTER_SIZE);
            Some(self.0.get(&addr)?.to_le_bytes().to_vec())
        }
    }

    #[test]
    fn nil_or_unreadable_pointers_reach_nothing() {
        let root = |path: &str, offsets: Vec<u64>| MapRoot {
            path: path.into(),
            address: 0x1000,
            offsets,
            runtime_type: None,
        };
        let roots = Roots {
            roots: vec![
                root("pkg.p.m", vec![0, 8]),
                root("pkg.direct", vec![16]),
                root("pkg.nil.m", vec![24, 0]),
                root("pkg.gone.m", vec![32, 0]),
                root("pkg.alias", vec![40]),
            ],
            truncated: false,
            dwarf: true,
            map_types: Vec::new(),
        };
        let bias = 0x10_0000;
        let memory = Words(HashMap::from([
            (0x10_1000, 0xc000_0000),
            (0xc000_0008, 0xc000_1000),
            (0x10_1010, 0xc000_2000),
            (0x10_1018, 0),
            (0x10_1020, 0xdead_0000),
            (0x10_1028, 0xc000_1000),
        ]));
        let held = roots.resolve(&memory, bias, |_| true);
        assert_eq!(
            held,
            BTreeMap::from([
                (0xc000_1000, "pkg.alias".to_string()),
                (0xc000_2000, "pkg.direct".to_string()),
            ])
        );
        let held = roots.resolve(&memory, bias, |map| map == 0xc000_2000);
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn a_binary_without_dwarf_has_no_roots() {
        let binary = gofixture::build("roots", "1.24.11", Flavor::Stripped, &[]);
        assert_eq!(Roots::from_file(&binary).unwrap(), Roots::default());
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let error = Roots::from_elf(b"#!/bin/sh\necho hello\n").unwrap_err();
        assert!(matches!(error, RootsError::Object(_)), "{error}");
    }

    /// Runs the fixture up to its report and returns `addr → holder` as it printed them.
    fn run_fixture(binary: &Path) -> (std::process::Child, BTreeMap<u64, String>) {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut holders = BTreeMap::new();
        for line in lines {
            let line = line.unwrap();
            if line == "done" {
                break;
            }
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix(key))
                    .unwrap()
                    .to_string()
            };
            let addr = u64::from_str_radix(field("addr=").trim_start_matches("0x"), 16).unwrap();
            holders.insert(addr, field("holder="));
        }
        (child, holders)
    }

    #[test]
    fn resolves_the_live_fixture_to_its_own_holders() {
        let classic: &[(&str, &str)] = &[("GOEXPERIMENT", "noswissmap")];
        let builds = [
            ("1.19", Flavor::Plain, &[][..]),
            ("1.24.11", Flavor::Plain, &[]),
            ("1.24.11", Flavor::Plain, classic),
            ("1.24.11", Flavor::Pie, &[]),
            ("1.27.3", Flavor::Plain, &[]),
        ];
        for (version, flavor, env) in builds {
            let binary = gofixture::build("roots", version, flavor, env);
            let roots = Roots::from_file(&binary).unwrap();
            let (mut child, expected) = run_fixture(&binary);
            let target = Target::open(child.id()).unwrap();
            let go = GoBinary::open(&binary).unwrap();
            let bias = target
                .load_bias(|offset| go.vaddr_of_file_offset(offset))
                .unwrap();
            assert_eq!(bias != 0, flavor == Flavor::Pie, "go{version} {flavor:?}");
            let held = roots.resolve(&target, bias, |addr| expected.contains_key(&addr));
            drop(child.stdin.take());
            child.wait().unwrap();
            let named: BTreeMap<u64, String> = expected
                .keys()
                .map(|addr| {
                    let name = held.get(addr).cloned().unwrap_or("unknown".to_string());
                    (*addr, name)
                })
                .collect();
            assert_eq!(named, expected, "go{version} {flavor:?} {env:?}");
            let distinct: BTreeSet<&String> = expected.values().collect();
            assert_eq!(distinct.len(), 11, "every holder is different");
        }
    }
}
