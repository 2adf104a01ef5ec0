//! Temporary files written next to their destination and renamed over it once complete, so
//! that a reader sees the old file or the whole new one, never a partial file.
//!
//! gomaptrace runs as root and often writes into directories others can write to (`/tmp`):
//! a temporary file with a predictable name could be a planted symlink that redirects the
//! write anywhere. The name here carries 64 random bits and the file is created with
//! `O_CREAT | O_EXCL` (`create_new`), which never follows a symlink at the last component: a
//! name already taken, by anything, is skipped for another one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How many random names are tried before giving up: a clash of 64-bit names means the
/// directory is being flooded on purpose, not bad luck.
const ATTEMPTS: usize = 16;

/// A freshly created, empty, hidden file next to `path` (same directory, so the final rename
/// is atomic), and its name. Only this process can have opened it.
pub fn create_temporary_sibling(path: &Path) -> io::Result<(PathBuf, File)> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    for _ in 0..ATTEMPTS {
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(file_name);
        temporary_name.push(format!(".{:016x}.tmp", random_u64()?));
        let temporary = path.with_file_name(temporary_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
        {
            Ok(file) => return Ok((temporary, file)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temporary name next to {}", path.display()),
    ))
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a
/// partial file; on failure nothing is left behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (temporary, mut file) = create_temporary_sibling(path)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn random_u64() -> io::Result<u64> {
    let mut raw = [0u8; 8];
    // SAFETY: getrandom writes at most `raw.len()` bytes into `raw`.
    let filled = unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) };
    if filled != raw.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gomaptrace-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_planted_symlink_at_any_old_name_is_not_followed() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let report = dir.join("report.json");
        // The names the previous versions used: `.report.json.tmp<pid>`.
        let planted = dir.join(format!(".report.json.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();

        write_atomically(&report, b"{}").unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&report).unwrap(), b"{}");
        assert!(std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(
            left.len(),
            3,
            "only victim, report and the planted link: {left:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_unpredictable_and_exclusive() {
        let dir = scratch("names");
        let path = dir.join("out");
        let (first, _) = create_temporary_sibling(&path).unwrap();
        let (second, _) = create_temporary_sibling(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(first.parent(), Some(dir.as_path()));
        assert!(create_temporary_sibling(Path::new("/")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
