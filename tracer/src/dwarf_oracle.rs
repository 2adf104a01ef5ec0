//! The Go compiler's own DWARF, as an independent oracle for tests: what gomaptrace reads
//! from pclntabs, type descriptors and registers is checked against what the compiler wrote.

use std::path::Path;

use object::{Object, ObjectSection};

/// The DWARF of one binary, over its uncompressed sections (fixtures are built with
/// `-ldflags=-compressdwarf=false`: the `object` crate cannot inflate them).
pub type Dwarf<'a> = gimli::Dwarf<gimli::EndianSlice<'a, gimli::LittleEndian>>;

/// Runs `read` over the DWARF of the binary at `path`.
pub fn with_dwarf<T>(path: &Path, read: impl FnOnce(&Dwarf<'_>) -> T) -> T {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let file = object::File::parse(bytes.as_slice())
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let load = |id: gimli::SectionId| -> Result<_, gimli::Error> {
        let data = file
            .section_by_name(id.name())
            .and_then(|section| section.data().ok())
            .unwrap_or(&[]);
        Ok(gimli::EndianSlice::new(data, gimli::LittleEndian))
    };
    read(&gimli::Dwarf::load(load).unwrap())
}

/// A compilation unit of [`Dwarf`].
pub type Unit<'a> = gimli::Unit<gimli::EndianSlice<'a, gimli::LittleEndian>>;

/// An entry of a [`Unit`].
pub type Entry<'a> = gimli::DebuggingInformationEntry<gimli::EndianSlice<'a, gimli::LittleEndian>>;

/// Visits every entry of every unit, depth first.
pub fn each_entry<'a>(dwarf: &Dwarf<'a>, mut visit: impl FnMut(&Unit<'a>, &Entry<'a>)) {
    let mut units = dwarf.units();
    while let Some(header) = units.next().unwrap() {
        let unit = dwarf.unit(header).unwrap();
        let mut entries = unit.entries();
        while let Some(entry) = entries.next_dfs().unwrap() {
            visit(&unit, entry);
        }
    }
}

/// An entry's string attribute, empty when absent.
pub fn string_attr(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    entry: &Entry<'_>,
    at: gimli::DwAt,
) -> String {
    entry
        .attr_value(at)
        .map(|value| {
            dwarf
                .attr_string(unit, value)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

/// The DWARF names of the map type descriptor struct, across releases: `runtime.maptype`
/// (≤ 1.20), `internal/abi.MapType` (1.21+), `OldMapType` and `SwissMapType` (1.24–1.25).
pub const MAP_TYPE_STRUCTS: [&str; 4] = [
    "runtime.maptype",
    "internal/abi.MapType",
    "internal/abi.OldMapType",
    "internal/abi.SwissMapType",
];
