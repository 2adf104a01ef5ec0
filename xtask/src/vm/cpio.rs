//! A minimal writer of the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! The guests need only directories, regular files no links, one device, so a few dozen
//! lines replace an external `cpio`/`gen_init_cpio` (and the question of which one is
//! installed). Every entry belongs to root; the archive is written uncompressed, which every
//! kernel unpacks.

use std::io::Write;

/// An initramfs being assembled in memory, written out by [`Archive::finish`].
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    inode: u32,
    directories: std::collections::BTreeSet<String>,
    files: std::collections::BTreeSet<String>,
}

const DIRECTORY: u32 = 0o040_000;
const REGULAR: u32 = 0o100_000;
const CHARACTER: u32 = 0o020_000;

impl Archive {
    /// Adds `path` (absolute, `/`-separated) with `mode`'s permission bits and `content`,
    /// creating its parent directories first.
    /// A path added twice keeps its first content (a loader both the tracer and a PIE need).
    pub fn file(&mut self, path: &str, mode: u32, content: &[u8]) {
        if !self.files.insert(path.trim_start_matches('/').to_string()) {
            return;
        }
        self.parents(path);
        self.entry(path, REGULAR | mode, content);
    }

    /// Adds a directory and its parents (once each).
    pub fn directory(&mut self, path: &str) {
        self.parents(path);
        let name = path.trim_start_matches('/').to_string();
        if self.directories.insert(name) {
            self.entry(path, DIRECTORY | 0o755, &[]);
        }
    }

    /// Adds a character device node: the kernel opens `/dev/console` for init before anything
    /// could mount devtmpfs, and without it init's output goes nowhere.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.inode += 1;
        let name = path.trim_start_matches('/').to_string();
        self.header(self.inode, CHARACTER | mode, 1, 0, &name, (major, minor));
    }

    fn parents(&mut self, path: &str) {
        let trimmed = path.trim_start_matches('/');
        let mut prefix = String::new();
        let components: Vec<&str> = trimmed.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            prefix.push('/');
            prefix.push_str(component);
            let name = prefix.trim_start_matches('/').to_string();
            if self.directories.insert(name) {
                self.entry(&prefix.clone(), DIRECTORY | 0o755, &[]);
            }
        }
    }

    fn entry(&mut self, path: &str, mode: u32, content: &[u8]) {
        self.inode += 1;
        let name = path.trim_start_matches('/');
        let links = if mode & DIRECTORY != 0 { 2 } else { 1 };
        self.header(self.inode, mode, links, content.len(), name, (0, 0));
        self.bytes.extend_from_slice(content);
        self.pad();
    }

    fn header(
        &mut self,
        inode: u32,
        mode: u32,
        links: u32,
        size: usize,
        name: &str,
        (major, minor): (u32, u32),
    ) {
        let size = u32::try_from(size).expect("initramfs files are smaller than 4 GiB");
        let name_size = u32::try_from(name.len() + 1).expect("short names");
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: every number as eight hex digits.
        write!(self.bytes, "070701").expect("writing to memory");
        for field in [
            inode, mode, 0, 0, links, 0, size, 0, 0, major, minor, name_size, 0,
        ] {
            write!(self.bytes, "{field:08x}").expect("writing to memory");
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, "TRAILER!!!", (0, 0));
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel is the real reader (every guest boot); this checks the layout against the
    /// format's fixed offsets, so that a mistake shows here rather than as a guest that hangs.
    #[test]
    fn entries_are_aligned_and_parents_come_first() {
        let mut archive = Archive::default();
        archive.file("/a/b/c", 0o755, b"hello");
        archive.directory("/a");
        let bytes = archive.finish();
        let mut offset = 0;
        let mut names = Vec::new();
        while offset < bytes.len() {
            assert_eq!(&bytes[offset..offset + 6], b"070701");
            let field = |index: usize| {
                let start = offset + 6 + index * 8;
                u32::from_str_radix(std::str::from_utf8(&bytes[start..start + 8]).unwrap(), 16)
                    .unwrap() as usize
            };
            let (size, name_size) = (field(6), field(11));
            let name_start = offset + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + name_size - 1])
                .unwrap()
                .to_string();
            let data = (name_start + name_size).next_multiple_of(4);
            if name == "a/b/c" {
                assert_eq!(&bytes[data..data + size], b"hello");
                assert_eq!(field(1), 0o100_755);
            }
            names.push(name);
            offset = (data + size).next_multiple_of(4);
        }
        assert_eq!(names, ["a", "a/b", "a/b/c", "TRAILER!!!"]);
    }
}
