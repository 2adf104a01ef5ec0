//! Launch mode: start a program with every probe live before its first instruction runs, so
//! that maps made in `init()` and in package-level initialisers have creation sites.
//!
//! The program is forked while gomaptrace still has a single thread (before the event loop
//! exists) and the child waits on a pipe. Meanwhile gomaptrace inspects the program's binary
//! and attaches the uprobes to it, filtered on the child's pid: the kernel registers them on
//! the binary's inode and installs the breakpoints when the exec maps the binary into the
//! child, so they are in place before the Go runtime starts. [`Launched::release`] then lets
//! the child exec, and waits until the new image is mapped before anything is read from
//! `/proc/PID` (the load bias of a PIE only exists from then on).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::target::Target;

/// How long the exec may take to map the program once the child was released. An exec that
/// passed its point of no return maps the binary in microseconds; this only bounds the wait
/// when something else went wrong.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the program could not be started; each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Nothing of that name: no such file, or not in `PATH`.
    #[error("cannot run {program}: {reason}")]
    NotFound {
        /// The program as given.
        program: String,
        /// "no such file" or "not found in PATH".
        reason: &'static str,
    },
    /// The file exists but cannot be executed.
    #[error("cannot run {program}: not an executable file")]
    NotExecutable {
        /// The program as given.
        program: String,
    },
    /// An argument cannot be passed to exec.
    #[error("cannot run {program}: an argument contains a NUL byte")]
    NulByte {
        /// The program as given.
        program: String,
    },
    /// fork, pipe or pidfd failed.
    #[error("cannot start {program}: {source}")]
    Start {
        /// The program as given.
        program: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The exec itself failed in the child.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The program as given.
        program: String,
        /// The exec's errno.
        source: io::Error,
    },
    /// The child died before its new image could be read.
    #[error("{program} (pid {pid}) exited before gomaptrace could read its memory map")]
    Vanished {
        /// The program as given.
        program: String,
        /// The child's pid.
        pid: u32,
    },
    /// The exec never mapped the binary.
    #[error("{program} (pid {pid}) did not map its binary within {IMAGE_TIMEOUT:?} of exec")]
    NoImage {
        /// The program as given.
        program: String,
        /// The child's pid.
        pid: u32,
    },
}

/// A program to start, resolved and converted for exec before any fork (only
/// async-signal-safe calls are allowed between fork and exec: no allocation).
#[derive(Debug)]
pub struct Program {
    /// As the user typed it, for messages and `argv[0]`.
    shown: String,
    /// The file that runs, found through `PATH` like a shell does.
    path: PathBuf,
    /// `path` for execv.
    path_c: CString,
    /// The whole argv, `argv[0]` first.
    argv: Vec<CString>,
}

impl Program {
    /// Resolves `program` like a shell (a name without `/` is looked up in `PATH`) and
    /// prepares the argv `program args…`.
    pub fn resolve(program: &OsStr, args: &[OsString]) -> Result<Program, LaunchError> {
        let shown = program.to_string_lossy().into_owned();
        let path = if program.as_bytes().contains(&b'/') {
            let path = PathBuf::from(program);
            match std::fs::metadata(&path) {
                Err(_) => {
                    return Err(LaunchError::NotFound {
                        program: shown,
                        reason: "no such file",
                    })
                }
                Ok(meta) if !is_executable(&meta) => {
                    return Err(LaunchError::NotExecutable { program: shown })
                }
                Ok(_) => path,
            }
        } else {
            let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            search_path(program, &search).ok_or_else(|| LaunchError::NotFound {
                program: shown.clone(),
                reason: "not found in PATH",
            })?
        };
        let nul = || LaunchError::NulByte {
            program: shown.clone(),
        };
        let path_c = CString::new(path.as_os_str().as_bytes()).map_err(|_| nul())?;
        let argv = std::iter::once(program)
            .chain(args.iter().map(OsString::as_os_str))
            .map(|arg| CString::new(arg.as_bytes()).map_err(|_| nul()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Program {
            shown,
            path,
            path_c,
            argv,
        })
    }

    /// The file that will run: inspect it and attach the probes to it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The program as the user named it.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// The first executable regular file named `name` in the `:`-separated `search` list (an
/// empty entry is the current directory, as for a shell).
fn search_path(name: &OsStr, search: &OsStr) -> Option<PathBuf> {
    search
        .as_bytes()
        .split(|&byte| byte == b':')
        .map(|dir| match dir {
            b"" => Path::new(".").join(name),
            dir => Path::new(OsStr::from_bytes(dir)).join(name),
        })
        .find(|candidate| std::fs::metadata(candidate).is_ok_and(|meta| is_executable(&meta)))
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// Where the child is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Forked, blocked on the start pipe: still a copy of gomaptrace.
    Waiting,
    /// Exec'd: the program runs.
    Running,
    /// Waited for; its pid may already belong to another process.
    Reaped,
}

/// A forked child that becomes the program once released.
///
/// Dropping it before [`Launched::release`] kills and reaps the child: a failed set-up leaves
/// no process behind. Dropping it once the program runs waits for the program to exit:
/// gomaptrace never leaves before the program it started.
#[derive(Debug)]
pub struct Launched {
    program: Program,
    pid: u32,
    pidfd: OwnedFd,
    /// Writing one byte here lets the child exec.
    start: Option<OwnedFd>,
    /// Closes (exec done) or carries the exec's errno.
    status: Option<OwnedFd>,
    state: State,
}

impl Launched {
    /// Forks the child, which waits until [`Launched::release`].
    ///
    /// Call it while this process has a single thread: the child of a threaded process may
    /// find a lock held forever by a thread that does not exist in it. The child itself only
    /// makes async-signal-safe calls before exec.
    pub fn fork(program: Program) -> Result<Launched, LaunchError> {
        let start_error = |source| LaunchError::Start {
            program: program.shown.clone(),
            source,
        };
        let (start_read, start_write) = pipe().map_err(start_error)?;
        let (status_read, status_write) = pipe().map_err(start_error)?;
        let argv: Vec<*const libc::c_char> = program
            .argv
            .iter()
            .map(|arg| arg.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // SAFETY: fork has no preconditions; the child only runs `become_program`, which
        // makes async-signal-safe calls on memory prepared above and never returns.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(start_error(io::Error::last_os_error())),
            0 => {
                let fds = ChildFds {
                    start_read: start_read.as_raw_fd(),
                    start_write: start_write.as_raw_fd(),
                    status_read: status_read.as_raw_fd(),
                    status_write: status_write.as_raw_fd(),
                };
                // SAFETY: in the forked child, with descriptors and argv valid in its copy
                // of the memory.
                unsafe { become_program(fds, &program.path_c, &argv) }
            }
            pid => {
                drop((start_read, status_write));
                let pidfd = pidfd_open(pid as u32).map_err(|source| {
                    // SAFETY: our own unreaped child, blocked before exec.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                    start_error(source)
                })?;
                Ok(Launched {
                    program,
                    pid: pid as u32,
                    pidfd,
                    start: Some(start_write),
                    status: Some(status_read),
                    state: State::Waiting,
                })
            }
        }
    }

    /// The child's pid (the program's once released).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The program being launched.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Lets the child exec the program, waits until its binary is mapped and returns it as a
    /// [`Target`], ready for `/proc/PID` reads (load bias, memory).
    pub fn release(&mut self) -> Result<Target, LaunchError> {
        let shown = self.program.shown.clone();
        let exec_error = |source| LaunchError::Exec {
            program: shown.clone(),
            source,
        };
        let start = self.start.take().expect("released once");
        write_byte(&start).map_err(exec_error)?;
        drop(start);
        let status = self.status.take().expect("released once");
        let errno = read_errno(&status).map_err(exec_error)?;
        self.state = State::Running;
        if let Some(errno) = errno {
            self.reap();
            return Err(exec_error(io::Error::from_raw_os_error(errno)));
        }
        self.wait_for_image()
    }

    /// Waits until `/proc/PID/exe` names the program and its code is mapped: the exec closes
    /// the status pipe before it maps the new binary.
    fn wait_for_image(&self) -> Result<Target, LaunchError> {
        let expected = std::fs::canonicalize(&self.program.path).ok();
        let deadline = Instant::now() + IMAGE_TIMEOUT;
        for attempt in 0u32.. {
            if let Ok(target) = Target::open(self.pid) {
                let named = expected.as_ref().is_none_or(|path| target.exe() == path);
                if named && target.has_executable_mapping() {
                    return Ok(target);
                }
            }
            if !self.is_alive() {
                return Err(LaunchError::Vanished {
                    program: self.program.shown.clone(),
                    pid: self.pid,
                });
            }
            if Instant::now() > deadline {
                return Err(LaunchError::NoImage {
                    program: self.program.shown.clone(),
                    pid: self.pid,
                });
            }
            // The mapping follows the exec within microseconds: spin first, then sleep.
            if attempt < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        unreachable!("the loop only ends by returning")
    }

    /// Whether the child has not exited yet.
    fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut poll, 1, 0) == 0 }
    }

    /// Waits for the program to exit, reaps it and returns the exit status a shell would
    /// report: its exit code, or 128 + the signal that killed it.
    pub async fn exited(&mut self) -> io::Result<u8> {
        // SAFETY: the clone owns its descriptor, a pidfd, for as long as the AsyncFd holds it.
        let pidfd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self.pidfd.try_clone()?,
                tokio::io::Interest::READABLE,
            )
        }?;
        while self.is_alive() {
            pidfd.readable().await?.clear_ready();
        }
        self.reap()
            .map(shell_status)
            .ok_or_else(|| io::Error::other(format!("pid {} was already reaped", self.pid)))
    }

    /// Waits for the child (blocking) and returns its raw wait status, once.
    fn reap(&mut self) -> Option<i32> {
        if self.state == State::Reaped {
            return None;
        }
        self.state = State::Reaped;
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            let waited = unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            if waited == self.pid as i32 {
                return Some(status);
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return None;
            }
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.state == State::Waiting {
            // SAFETY: signals our own unreaped child, so the pid cannot have been reused.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        self.reap();
    }
}

/// The exit status a shell reports for a raw wait status.
pub fn shell_status(status: i32) -> u8 {
    if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status)) as u8
    } else {
        libc::WEXITSTATUS(status) as u8
    }
}

/// Raw descriptors the child uses, copied out of their owners before the fork.
struct ChildFds {
    start_read: RawFd,
    start_write: RawFd,
    status_read: RawFd,
    status_write: RawFd,
}

/// The child's side: restore what Rust's start-up changed, wait for the start byte, exec.
/// On any failure it exits 127 (after reporting an exec failure's errno on the status pipe).
///
/// # Safety
/// Only in the child of `fork`: it calls only async-signal-safe functions and never returns.
unsafe fn become_program(fds: ChildFds, path: &CStr, argv: &[*const libc::c_char]) -> ! {
    // SAFETY (whole body): async-signal-safe calls on valid descriptors and memory.
    unsafe {
        libc::close(fds.start_write);
        libc::close(fds.status_read);
        // Rust ignores SIGPIPE at start-up, and an ignored signal stays ignored across
        // exec: restore the default, and an empty signal mask, as std::process::Command does.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let mut byte = 0u8;
        loop {
            match libc::read(fds.start_read, (&raw mut byte).cast(), 1) {
                1 => break,
                -1 if *libc::__errno_location() == libc::EINTR => continue,
                // gomaptrace gave up (or died) before releasing the child.
                _ => libc::_exit(127),
            }
        }
        libc::execv(path.as_ptr(), argv.as_ptr());
        let errno = (*libc::__errno_location()).to_ne_bytes();
        libc::write(fds.status_write, errno.as_ptr().cast(), errno.len());
        libc::_exit(127)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a valid two-element out-array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created both descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_byte(fd: &OwnedFd) -> io::Result<()> {
    loop {
        // SAFETY: writes one byte from a valid buffer.
        match unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) } {
            1 => return Ok(()),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// Reads the status pipe to its end: `None` when the exec succeeded (the pipe closed on
/// exec with nothing written), else the errno the child reported.
fn read_errno(fd: &OwnedFd) -> io::Result<Option<i32>> {
    let mut bytes = [0u8; 4];
    let mut filled = 0;
    loop {
        // SAFETY: reads into the unfilled tail of a valid buffer.
        let read = unsafe {
            libc::read(
                fd.as_raw_fd(),
                bytes[filled..].as_mut_ptr().cast(),
                bytes.len() - filled,
            )
        };
        match read {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::Error::other("short errno from the child")),
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            -1 => return Err(io::Error::last_os_error()),
            n => {
                filled += n as usize;
                if filled == bytes.len() {
                    return Ok(Some(i32::from_ne_bytes(bytes)));
                }
            }
        }
    }
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
