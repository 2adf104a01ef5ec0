//! The process being traced: finding its executable, reading its memory, noticing its exit.
//!
//! Everything goes through `/proc/<pid>` and a pidfd, which work the same for a process on
//! the host and one inside a container: `/proc/<pid>/exe` resolves to the right file in any
//! mount namespace, for reading and for attaching uprobes.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    /// address (`GoBinary::vaddr_of_file_offset`). A process whose binary has no executable
    /// mapping is an error, never a silent bias of 0 (which would misplace every address of a
    /// PIE).
    pub fn load_bias(&self, vaddr_of: impl Fn(u64) -> Option<u64>) -> io::Result<u64> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let identity = self.exe_identity();
        maps.lines()
            .filter_map(|line| executable_mapping(line, &self.exe, identity))
            .find_map(|(start, offset)| Some(start.wrapping_sub(vaddr_of(offset)?)))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no executable mapping of {} in /proc/{}/maps",
                        self.exe.display(),
                        self.pid
                    ),
                )
            })
    }

    /// Whether the executable's code is mapped yet: a freshly exec'd process names its
    /// executable in `/proc/PID/exe` a moment before the exec maps it, and [`Self::load_bias`]
    /// needs the mapping.
    pub fn has_executable_mapping(&self) -> bool {
        let identity = self.exe_identity();
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).is_ok_and(|maps| {
            maps.lines()
                .any(|line| executable_mapping(line, &self.exe, identity).is_some())
        })
    }

    /// The device and inode of the file the process runs, found through `/proc/PID/exe`, which
    /// still reaches a binary deleted or replaced on disk since the process started (a deploy).
    fn exe_identity(&self) -> Option<FileIdentity> {
        let meta = fs::metadata(self.exe_link()).ok()?;
        Some(FileIdentity {
            major: libc::major(meta.dev()),
            minor: libc::minor(meta.dev()),
            inode: meta.ino(),
        })
    }
}

impl ReadMemory for Target {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.read_bytes(addr, len).ok()
    }

    /// Up to [`IOV_MAX`] reads per `process_vm_readv`. The kernel copies whole iovecs in
    /// order and stops at the first it cannot read, so the bytes copied say which succeeded;
    /// the one that stopped the call is unreadable, and the call goes on after it.
    fn read_each(&self, reads: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        let mut answers: Vec<Option<Vec<u8>>> = Vec::with_capacity(reads.len());
        while answers.len() < reads.len() {
            let batch = &reads[answers.len()..reads.len().min(answers.len() + IOV_MAX)];
            let mut buffers: Vec<Vec<u8>> = batch.iter().map(|&(_, len)| vec![0; len]).collect();
            let local: Vec<libc::iovec> = buffers
                .iter_mut()
                .map(|buffer| libc::iovec {
                    iov_base: buffer.as_mut_ptr().cast(),
                    iov_len: buffer.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = batch
                .iter()
                .map(|&(addr, len)| libc::iovec {
                    iov_base: addr as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            // SAFETY: each local iovec describes a buffer of `buffers`, alive and of that
            // length for the whole call; the counts are those of the two vectors.
            let copied = unsafe {
                libc::process_vm_readv(
                    self.pid as i32,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if copied < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                answers.resize(reads.len(), None);
                break;
            }
            let mut left = usize::try_from(copied).unwrap_or(0);
            for buffer in buffers {
                if buffer.len() > left {
                    // This read stopped the call: the next call starts after it.
                    answers.push(None);
                    break;
                }
                left -= buffer.len();
                answers.push(Some(buffer));
            }
        }
        answers
    }
}

/// Most iovecs one `process_vm_readv` takes (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Which file a mapping maps: `/proc/PID/maps` prints the device as `major:minor` and the
/// inode, which identify the binary even when its path no longer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    major: u32,
    minor: u32,
    inode: u64,
}

/// `(start, file offset)` of an executable mapping of the binary in a `/proc/PID/maps` line.
/// The binary is recognised by its device and inode (`identity`, when known), or by its path
/// `exe` as `/proc/PID/exe` reads it (which ends in ` (deleted)` exactly when the mapping's
/// does). The path is the rest of the line after five fields, so it may contain spaces.
fn executable_mapping(
    line: &str,
    exe: &Path,
    identity: Option<FileIdentity>,
) -> Option<(u64, u64)> {
    let mut rest = line;
    let mut field = || {
        let (field, tail) = rest.trim_start().split_once(char::is_whitespace)?;
        rest = tail;
        Some(field)
    };
    let range = field()?;
    let permissions = field()?;
    let offset = field()?;
    let device = field()?;
    let inode = field()?;
    let path = rest.trim_start();
    if !permissions.contains('x') {
        return None;
    }
    let (major, minor) = device.split_once(':')?;
    let mapped = FileIdentity {
        major: u32::from_str_radix(major, 16).ok()?,
        minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
    };
    let same_file = identity == Some(mapped) || (!path.is_empty() && Path::new(path) == exe);
    if !same_file {
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
        let read = target.read_header_words(&[words.as_ptr() as u64, 8]);
        assert_eq!(read[0], Some(words));
        assert!(read[1].is_none());
        assert!(target.has_executable_mapping());
    }

    #[test]
    fn batched_reads_answer_each_read_and_go_on_after_an_unreadable_one() {
        let target = Target::open(std::process::id()).unwrap();
        let words: Vec<[u64; 2]> = (0..3000u64).map(|at| [at, !at]).collect();
        let unreadable = 0x10;
        let mut reads: Vec<(u64, usize)> = words
            .iter()
            .map(|pair| (pair.as_ptr() as u64, 16))
            .collect();
        // One in the first batch of 1024, one at the start of the second, one last.
        for at in [5, 1024, 3002] {
            reads.insert(at, (unreadable, 16));
        }
        let answers = target.read_each(&reads);
        assert_eq!(answers.len(), reads.len());
        let one_by_one: Vec<Option<Vec<u8>>> = reads
            .iter()
            .map(|&(addr, len)| target.read(addr, len))
            .collect();
        assert_eq!(answers, one_by_one);
        assert_eq!(answers.iter().filter(|answer| answer.is_none()).count(), 3);
        assert!(target.read_each(&[]).is_empty());
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
        let app = Path::new("/srv/app");
        let line = "55d0c2a00000-55d0c2b00000 r-xp 00001000 fd:01 42   /srv/app";
        assert_eq!(
            executable_mapping(line, app, None),
            Some((0x55d0_c2a0_0000, 0x1000))
        );
        let data = "55d0c2b00000-55d0c2c00000 rw-p 00101000 fd:01 42   /srv/app";
        assert_eq!(executable_mapping(data, app, None), None);
        assert_eq!(
            executable_mapping(line, Path::new("/srv/other"), None),
            None
        );
        assert_eq!(
            executable_mapping("55d0c2a00000-55d0c2b00000 r-xp", app, None),
            None
        );
    }

    #[test]
    fn finds_the_mapping_of_a_replaced_binary_with_spaces_in_its_path() {
        let line = "7f0000000000-7f0000100000 r-xp 00001000 fd:01 4242   /srv/my app/svc (deleted)";
        let exe = Path::new("/srv/my app/svc (deleted)");
        let expected = Some((0x7f00_0000_0000, 0x1000));
        assert_eq!(executable_mapping(line, exe, None), expected);
        let identity = FileIdentity {
            major: 0xfd,
            minor: 1,
            inode: 4242,
        };
        let elsewhere = Path::new("/proc/1/exe");
        assert_eq!(
            executable_mapping(line, elsewhere, Some(identity)),
            expected
        );
        let other_inode = FileIdentity {
            inode: 4243,
            ..identity
        };
        assert_eq!(executable_mapping(line, elsewhere, Some(other_inode)), None);
    }

    #[test]
    fn the_load_bias_of_a_process_is_found_or_an_error() {
        let me = Target::open(std::process::id()).unwrap();
        assert!(me.load_bias(Some).is_ok());
        assert!(me.load_bias(|_| None).is_err());
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
