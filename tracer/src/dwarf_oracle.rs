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
