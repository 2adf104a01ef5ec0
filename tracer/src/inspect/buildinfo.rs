//! Reads the Go version string from the build info the linker embeds in every binary.
//!
//! The build info is the only reliable record of which release built a binary (symbols do
//! not carry it), and the release decides every struct layout the tracer reads. Format, as
//! in Go's `debug/buildinfo`: a 32-byte header starting with the magic, then
//! - Go 1.18+ (`flags & 2`): the version and module info inline at offset 32, each a uvarint
//!   length followed by the bytes;
//! - Go 1.13–1.17: at offsets 16 and 16+ptrsize, pointers to Go string headers
//!   `(data pointer, length)` that are read by virtual address.

use super::elf::{ElfView, Segments};
use super::InspectError;

/// Starts the build info; the linker aligns it to [`ALIGN`].
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// Alignment of the magic, so a scan only looks at these offsets (as `debug/buildinfo` does).
const ALIGN: usize = 16;
/// Magic, pointer size, flags, then two pointer-sized slots, padded.
const HEADER_LEN: usize = 32;
const PTR_SIZE_AT: usize = 14;
const FLAGS_AT: usize = 15;
/// First string pointer of the pre-1.18 layout.
const POINTERS_AT: usize = 16;
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE_STRINGS: u8 = 2;
/// Bigger than any version string; bounds what a corrupted length makes us read.
const MAX_VERSION_LEN: u64 = 4096;

/// Finds the build info: the `.go.buildinfo` section, else a writable segment (binaries
/// whose section headers were removed). The result starts at the magic; `None` when absent.
pub(super) fn find<'a>(
    elf: &ElfView<'a>,
    segments: &Segments,
    file: &'a [u8],
) -> Result<Option<&'a [u8]>, InspectError> {
    if let Some(section) = elf.section_data(b".go.buildinfo")? {
        if let Some(blob) = find_magic(section) {
            return Ok(Some(blob));
        }
    }
    Ok(segments.writable(file).find_map(find_magic))
}

/// The data from the first [`ALIGN`]-aligned magic on.
fn find_magic(data: &[u8]) -> Option<&[u8]> {
    (0..data.len())
        .step_by(ALIGN)
        .filter_map(|start| data.get(start..))
        .find(|rest| rest.starts_with(MAGIC))
}

/// The version string of the build info `blob` (which starts at the magic). `read` returns
/// the file bytes at a virtual address, for the pointer-based layout.
pub(super) fn version_string<'a>(
    blob: &[u8],
    read: impl Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<String, InspectError> {
    let header = blob
        .get(..HEADER_LEN)
        .ok_or_else(|| InspectError::malformed_build_info("header truncated"))?;
    let flags = header.get(FLAGS_AT).copied().unwrap_or_default();
    let bytes = if flags & FLAG_INLINE_STRINGS != 0 {
        inline_string(blob)?
    } else {
        let ptr_size = header.get(PTR_SIZE_AT).copied().unwrap_or_default();
        let pointers = Pointers::new(ptr_size, flags & FLAG_BIG_ENDIAN != 0)?;
        pointed_string(header, pointers, read)?
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| InspectError::malformed_build_info("version is not UTF-8"))
}

/// Go 1.18+: the first uvarint-length-prefixed string after the header.
fn inline_string(blob: &[u8]) -> Result<&[u8], InspectError> {
    let strings = blob.get(HEADER_LEN..).unwrap_or_default();
    let (len, used) =
        uvarint(strings).ok_or_else(|| InspectError::malformed_build_info("bad string length"))?;
    usize::try_from(len)
        .ok()
        .and_then(|len| strings.get(used..used.checked_add(len)?))
        .ok_or_else(|| InspectError::malformed_build_info("version string truncated"))
}

/// Go 1.13–1.17: follows the header's first pointer to a string header, then to the bytes.
fn pointed_string<'a>(
    header: &[u8],
    pointers: Pointers,
    read: impl Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<&'a [u8], InspectError> {
    let dangling = || InspectError::malformed_build_info("version pointer leads outside the file");
    let string_header_at = pointers
        .read(header.get(POINTERS_AT..))
        .ok_or_else(dangling)?;
    let string_header =
        read(string_header_at, 2 * u64::from(pointers.size)).ok_or_else(dangling)?;
    let data_at = pointers.read(Some(string_header)).ok_or_else(dangling)?;
    let len = pointers
        .read(string_header.get(usize::from(pointers.size)..))
        .ok_or_else(dangling)?;
    if len > MAX_VERSION_LEN {
        return Err(InspectError::malformed_build_info(
            "version string too long",
        ));
    }
    read(data_at, len).ok_or_else(dangling)
}

/// How the pre-1.18 layout stores pointers.
#[derive(Clone, Copy)]
struct Pointers {
    size: u8,
    big_endian: bool,
}

impl Pointers {
    fn new(size: u8, big_endian: bool) -> Result<Pointers, InspectError> {
        match size {
            4 | 8 => Ok(Pointers { size, big_endian }),
            _ => Err(InspectError::malformed_build_info("bad pointer size")),
        }
    }

    /// The pointer at the start of `bytes`.
    fn read(self, bytes: Option<&[u8]>) -> Option<u64> {
        let bytes = bytes?.get(..usize::from(self.size))?;
        let mut word = [0u8; 8];
        if self.big_endian {
            word.get_mut(8 - bytes.len()..)?.copy_from_slice(bytes);
            Some(u64::from_be_bytes(word))
        } else {
            word.get_mut(..bytes.len())?.copy_from_slice(bytes);
            Some(u64::from_le_bytes(word))
        }
    }
}

/// Decodes a Go `uvarint`; returns the value and how many bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * u32::try_from(index).ok()?;
        if index == 9 && byte > 1 {
            return None; // more than 64 bits
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build-info header with the given pointer size and flags, the rest zero.
    fn header(ptr_size: u8, flags: u8) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend([ptr_size, flags]);
        blob.resize(HEADER_LEN, 0);
        blob
    }

    fn no_memory(_: u64, _: u64) -> Option<&'static [u8]> {
        None
    }

    #[test]
    fn reads_inline_strings() {
        let mut blob = header(8, FLAG_INLINE_STRINGS);
        blob.push(9);
        blob.extend(b"go1.24.11");
        blob.extend([3, b'm', b'o', b'd']);
        assert_eq!(version_string(&blob, no_memory).unwrap(), "go1.24.11");
    }

    #[test]
    fn reads_pointed_strings_of_go_1_17() {
        // Memory at 0x1000: the string header (data 0x1010, length 8), then the bytes.
        let mut memory = Vec::new();
        memory.extend(0x1010u64.to_le_bytes());
        memory.extend(8u64.to_le_bytes());
        memory.extend(b"go1.17.3");
        let read = |vaddr: u64, len: u64| {
            let start = usize::try_from(vaddr.checked_sub(0x1000)?).ok()?;
            memory.get(start..start + usize::try_from(len).ok()?)
        };
        let mut blob = header(8, 0);
        blob[POINTERS_AT..POINTERS_AT + 8].copy_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(version_string(&blob, read).unwrap(), "go1.17.3");

        let mut big_endian = header(4, FLAG_BIG_ENDIAN);
        big_endian[POINTERS_AT..POINTERS_AT + 4].copy_from_slice(&0x1000u32.to_be_bytes());
        // A big-endian header pointing at little-endian memory reads a wild pointer.
        assert!(version_string(&big_endian, read).is_err());
    }

    #[test]
    fn rejects_corrupt_headers() {
        let cases: Vec<Vec<u8>> = vec![
            MAGIC.to_vec(),                               // truncated header
            header(8, FLAG_INLINE_STRINGS),               // no string after it
            [header(8, 2), vec![0x80; 11]].concat(),      // endless uvarint
            [header(8, 2), vec![200, 1, b'g']].concat(),  // length beyond the data
            [header(8, 2), vec![2, 0xff, 0xfe]].concat(), // not UTF-8
            header(3, 0),                                 // impossible pointer size
            header(8, 0),                                 // null pointer
        ];
        for blob in cases {
            assert!(
                matches!(
                    version_string(&blob, no_memory),
                    Err(InspectError::MalformedBuildInfo { .. })
                ),
                "{blob:?}"
            );
        }
    }

    #[test]
    fn finds_only_aligned_magic() {
        let mut data = vec![0u8; 48];
        data[8..8 + MAGIC.len()].copy_from_slice(MAGIC);
        assert!(find_magic(&data).is_none());
        data[32..32 + MAGIC.len()].copy_from_slice(MAGIC);
        assert_eq!(find_magic(&data).map(<[u8]>::len), Some(16));
    }

    #[test]
    fn decodes_uvarints() {
        assert_eq!(uvarint(&[5]), Some((5, 1)));
        assert_eq!(uvarint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(
            uvarint(&[0xff; 9].iter().copied().chain([1]).collect::<Vec<_>>()),
            Some((u64::MAX, 10))
        );
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[]), None);
    }
}
