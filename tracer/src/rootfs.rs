//! Opening a process's executable inside its own root filesystem, never outside it.
//!
//! A containerized process names its executable by a path inside the container (`/app`).
//! Resolving that path from the host under `/proc/PID/root` would follow an absolute symlink
//! in the container's image to the host's file of that name; `openat2` with
//! `RESOLVE_IN_ROOT` resolves every component, symlinks included, as if `/proc/PID/root`
//! were `/`, as Inspektor Gadget does. The result is checked against `/proc/PID/exe` (the
//! inode the kernel actually runs) so that a file replaced after the process started is
//! never read or probed in its place.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Opens `path` (as process `pid` sees it) through `/proc/PID/root` with `RESOLVE_IN_ROOT`,
/// read-only, and returns it only if it is the very file `/proc/PID/exe` runs.
pub fn open_executable(pid: u32, path: &Path) -> io::Result<OwnedFd> {
    let root = File::open(format!("/proc/{pid}/root"))?;
    let file = open_in_root(&root, path)?;
    let opened = File::from(file.try_clone()?).metadata()?;
    let running = std::fs::metadata(format!("/proc/{pid}/exe"))?;
    if (opened.dev(), opened.ino()) != (running.dev(), running.ino()) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} in the root of pid {pid} is not the file it runs (replaced since it started)",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// `openat2(root, path, O_RDONLY | O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn open_in_root(root: &File, path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: open_how is plain integers; all zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory fd, a NUL-terminated path and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_its_own_executable() {
        let exe = std::env::current_exe().unwrap();
        let fd = open_executable(std::process::id(), &exe).unwrap();
        let opened = File::from(fd).metadata().unwrap();
        assert_eq!(opened.ino(), std::fs::metadata(&exe).unwrap().ino());
    }

    #[test]
    fn refuses_a_file_that_is_not_the_one_running() {
        let error = open_executable(std::process::id(), Path::new("/proc/self/status"));
        assert!(error.is_err());
        let error = open_executable(std::process::id(), Path::new("/bin/sh")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        // An absolute symlink in a "root" directory resolves against that directory, not `/`.
        let dir = std::env::temp_dir().join(format!("gomaptrace-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hostname"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/hostname", dir.join("up")).unwrap();
        let root = File::open(&dir).unwrap();
        for link in ["link", "up"] {
            let fd = open_in_root(&root, Path::new(link)).unwrap();
            let text = io::read_to_string(File::from(fd)).unwrap();
            assert_eq!(text, "inside", "{link}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
