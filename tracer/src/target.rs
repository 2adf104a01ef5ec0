//! The process being traced: finding its executable, reading its memory, noticing its exit.
//!
//! Everything goes through `/proc/<pid>` and a pidfd, which work the same for a process on
//! the host and one inside a container: `/proc/<pid>/exe` resolves to the right file in any
//! mount namespace, for reading and for attaching uprobes.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::inspect::ReadMemory;

/// Why a process cannot be traced; each message tells the user what to check.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such process, or it is gone.
    #[error("no process with pid {0}: check the pid (is the program still running?)")]
    NoSuchProcess(u32),
    /// A kernel thread or zombie has no executable to probe.
    #[error("pid {0} has no executable (a kernel thread, or a process that is exiting)")]
    NoExecutable(u32),
    /// Not allowed to look into the process.
    #[error(
        "not allowed to inspect pid {pid}: {source}; gomaptrace needs root \
         (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE): run it with sudo"
    )]
    PermissionDenied {
        /// The target.
        pid: u32,
        /// What the kernel said.
        source: io::Error,
    },
    /// Anything else the kernel refused.
    #[error("cannot open pid {pid}: {source}")]
    Io {
        /// The target.
        pid: u32,
        /// What the kernel said.
        source: io::Error,
    },
}

/// A live process that gomaptrace attaches to.
#[derive(Debug)]
pub struct Target {
    pid: u32,
    exe: PathBuf,
    pidfd: OwnedFd,
    /// The executable opened inside the target's own root (see [`crate::rootfs`]); `None`
    /// when it cannot be (deleted or replaced since it started): `/proc/PID/exe` is used.
    binary: Option<OwnedFd>,
}

impl Target {
    /// Opens the process `pid`, holding a pidfd so that its exit (and a later reuse of the
    /// pid by another process) cannot go unnoticed.
    pub fn open(pid: u32) -> Result<Target, TargetError> {
        let pidfd = pidfd_open(pid).map_err(|error| match error.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::EINVAL) => TargetError::NoSuchProcess(pid),
            Some(libc::EPERM) | Some(libc::EACCES) => {
                TargetError::PermissionDenied { pid, source: error }
            }
            _ => TargetError::Io { pid, source: error },
        })?;
        let exe =
            fs::read_link(format!("/proc/{pid}/exe")).map_err(|error| match error.kind() {
                io::ErrorKind::PermissionDenied => {
                    TargetError::PermissionDenied { pid, source: error }
                }
                io::ErrorKind::NotFound => TargetError::NoExecutable(pid),
                _ => TargetError::Io { pid, source: error },
            })?;
        let binary = crate::rootfs::open_executable(pid, &exe).ok();
        Ok(Target {
            pid,
            exe,
            pidfd,
            binary,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The executable's path as the target sees it (inside its own mount namespace), for
    /// reports.
    pub fn exe(&self) -> &PathBuf {
        &self.exe
    }

    /// A path to the executable that is valid from here whatever namespace the target is in:
    /// use it to read the binary and to attach uprobes. It is the file opened inside the
    /// target's root without following symlinks out of it (`/proc/self/fd/N`, valid while
    /// this `Target` lives), else `/proc/PID/exe`; both are the inode the target runs.
    pub fn exe_link(&self) -> PathBuf {
        match &self.binary {
            Some(binary) => PathBuf::from(format!("/proc/self/fd/{}", binary.as_raw_fd())),
            None => PathBuf::from(format!("/proc/{}/exe", self.pid)),
        }
    }

    /// The pidfd, readable once the process has exited.
    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// Reads the first two 8-byte words at `addr` in the target: a map header's count and the
    /// word holding its hash seed.
    pub fn read_words(&self, addr: u64) -> io::Result<[u64; 2]> {
        let bytes = self.read_bytes(addr, 16)?;
        let half = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(raw)
        };
        Ok([half(0), half(8)])
    }

    /// Reads `len` bytes at `addr` in the target, without stopping it.
    pub fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        let local = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: both iovecs describe valid buffers of the given length on their side.
        let copied = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        match copied {
            -1 => Err(io::Error::last_os_error()),
            n if n as usize == len => Ok(bytes),
            _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
        }
    }

    /// The most memory the process has had resident so far (`VmHWM` in
    /// `/proc/PID/status`), in bytes.
    pub fn peak_resident_bytes(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        peak_resident_from_status(&status)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmHWM in status"))
    }

    /// How far the executable was moved when loaded: run-time address − linked address (0
    /// unless it is position independent). Found from the mapping of its executable segment
    /// in `/proc/PID/maps`; `vaddr_of` turns that mapping's file offset into the linked
    /// address (`GoBinary::vaddr_of_file_offset`).
    pub fn load_bias(&self, vaddr_of: impl Fn(u64) -> Option<u64>) -> io::Result<u64> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let exe = self.exe.to_string_lossy();
        Ok(maps
            .lines()
            .filter_map(|line| executable_mapping(line, &exe))
            .find_map(|(start, offset)| Some(start.wrapping_sub(vaddr_of(offset)?)))
            .unwrap_or(0))
    }

    /// Whether the executable's code is mapped yet: a freshly exec'd process names its
    /// executable in `/proc/PID/exe` a moment before the exec maps it, and [`Self::load_bias`]
    /// needs the mapping.
    pub fn has_executable_mapping(&self) -> bool {
        let exe = self.exe.to_string_lossy();
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).is_ok_and(|maps| {
            maps.lines()
                .any(|line| executable_mapping(line, &exe).is_some())
        })
    }
}

impl ReadMemory for Target {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.read_bytes(addr, len).ok()
    }
}

/// `(start, file offset)` of an executable mapping of `exe` in a `/proc/PID/maps` line.
fn executable_mapping(line: &str, exe: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let permissions = fields.next()?;
    let offset = fields.next()?;
    let path = fields.nth(2)?;
    if path != exe || !permissions.contains('x') {
        return None;
    }
    let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
    Some((start, u64::from_str_radix(offset, 16).ok()?))
}

/// `VmHWM` of a `/proc/PID/status` text, in bytes (the kernel prints kB).
fn peak_resident_from_status(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
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
    fn opens_itself_and_reads_its_own_memory() {
        let target = Target::open(std::process::id()).unwrap();
        assert!(target.is_alive());
        assert_eq!(target.exe(), &std::env::current_exe().unwrap());
        let words: [u64; 2] = [0x1234_5678_9abc_def0, 7];
        assert_eq!(target.read_words(words.as_ptr() as u64).unwrap(), words);
        assert!(target.read_words(8).is_err());
        assert!(target.has_executable_mapping());
    }

    #[test]
    fn reads_its_own_peak_resident_memory() {
        let me = Target::open(std::process::id()).unwrap();
        let peak = me.peak_resident_bytes().unwrap();
        assert!(peak > 1 << 20, "{peak}");
        assert_eq!(
            peak_resident_from_status("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t 1 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(
            peak_resident_from_status("VmHWM:\t999999999999999999999 kB"),
            None
        );
    }

    #[test]
    fn finds_the_executable_mapping() {
        let line = "55d0c2a00000-55d0c2b00000 r-xp 00001000 fd:01 42   /srv/app";
        assert_eq!(
            executable_mapping(line, "/srv/app"),
            Some((0x55d0_c2a0_0000, 0x1000))
        );
        let data = "55d0c2b00000-55d0c2c00000 rw-p 00101000 fd:01 42   /srv/app";
        assert_eq!(executable_mapping(data, "/srv/app"), None);
        assert_eq!(executable_mapping(line, "/srv/other"), None);
    }

    #[test]
    fn a_missing_pid_is_a_clear_error() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let error = Target::open(1 << 23).unwrap_err();
        assert!(matches!(error, TargetError::NoSuchProcess(_)), "{error}");
    }

    #[test]
    fn notices_when_the_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let target = Target::open(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!target.is_alive());
    }
}
