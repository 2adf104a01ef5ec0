//! Launch mode: start a program with every probe live before its first instruction runs, so
//! that maps made in `init()` and in package-level initialisers have creation sites.
//!
//! The program is forked while gomaptrace still has a single thread (before the event loop
//! exists) and the child waits on a pipe. Meanwhile gomaptrace inspects the program's binary
//! and attaches the uprobes to it, filtered on the child's pid: the kernel registers them on
//! the binary's inode and installs the breakpoints when the exec maps the binary into the
//! child, so they are in place before the Go runtime starts. [`Launched::release`] then lets
//! the child exec. The child asked to be traced just before (`PTRACE_TRACEME`), so the kernel
//! stops it once the exec is complete, before the program's first instruction: gomaptrace
//! reads `/proc/PID` then (the load bias of a PIE only exists from then on) and detaches at
//! once. The program cannot exit before its memory map is read, however short it runs, and
//! never sees a tracer.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::target::Target;

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
    /// The child could not ask to be held at the end of its exec.
    #[error(
        "cannot run {program}: PTRACE_TRACEME refused ({source}); is gomaptrace itself \
         traced (strace -f, a debugger), or Yama's ptrace_scope 3?"
    )]
    Trace {
        /// The program as given.
        program: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The child died before it could be traced (killed before the exec, or exited before
    /// its new image could be read).
    #[error("{program} (pid {pid}) ended before it could be traced")]
    Vanished {
        /// The program as given.
        program: String,
        /// The child's pid.
        pid: u32,
    },
    /// After the exec, the program's binary could not be found in its memory map.
    #[error("{program} (pid {pid}) does not show its binary in /proc/{pid}/maps after exec")]
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

    /// Lets the child exec the program and returns it as a [`Target`] with its load bias
    /// (see [`Target::load_bias`], which `vaddr_of` serves), both read while the program is
    /// held at the end of its exec: a program that exits at once still has them.
    pub fn release(
        &mut self,
        vaddr_of: impl Fn(u64) -> Option<u64>,
    ) -> Result<(Target, u64), LaunchError> {
        let shown = self.program.shown.clone();
        let exec_error = |source| LaunchError::Exec {
            program: shown.clone(),
            source,
        };
        if !self.is_alive() {
            return Err(self.vanished());
        }
        let start = self.start.take().expect("released once");
        write_byte(&start).map_err(|_| self.vanished())?;
        drop(start);
        let status = self.status.take().expect("released once");
        let errno = read_errno(&status).map_err(exec_error)?;
        self.state = State::Running;
        match errno {
            None => {}
            Some(refused) if refused < 0 => {
                self.reap();
                return Err(LaunchError::Trace {
                    program: shown,
                    source: io::Error::from_raw_os_error(-refused),
                });
            }
            Some(errno) => {
                self.reap();
                return Err(exec_error(io::Error::from_raw_os_error(errno)));
            }
        }
        self.stop_at_exec(vaddr_of)
    }

    /// Waits for the stop that ends the exec (the child asked to be traced, so the kernel
    /// stops it before the program's first instruction), reads the new image as a
    /// [`Target`] with its load bias, and lets the program go. Signals that stop the child
    /// on the way to the exec are passed on to it.
    fn stop_at_exec(
        &mut self,
        vaddr_of: impl Fn(u64) -> Option<u64>,
    ) -> Result<(Target, u64), LaunchError> {
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            let waited = unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            if waited != self.pid as i32 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.vanished());
            }
            if !libc::WIFSTOPPED(status) {
                self.state = State::Reaped;
                return Err(self.vanished());
            }
            let signal = match libc::WSTOPSIG(status) {
                libc::SIGTRAP => break,
                other => other,
            };
            // SAFETY: our own stopped tracee; resumes it with the signal it stopped on.
            unsafe { ptrace(libc::PTRACE_CONT, self.pid, signal as usize) };
        }
        let image = Target::open(self.pid).ok().and_then(|target| {
            let bias = target.load_bias(vaddr_of).ok()?;
            target.has_executable_mapping().then_some((target, bias))
        });
        // SAFETY: our own tracee, stopped: detaching resumes it, the exec's SIGTRAP dropped.
        unsafe { ptrace(libc::PTRACE_DETACH, self.pid, 0) };
        image.ok_or_else(|| LaunchError::NoImage {
            program: self.program.shown.clone(),
            pid: self.pid,
        })
    }

    /// The error for a child that is gone before it could be traced.
    fn vanished(&self) -> LaunchError {
        LaunchError::Vanished {
            program: self.program.shown.clone(),
            pid: self.pid,
        }
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

/// The child's side: restore what Rust's start-up changed, wait for the start byte, ask to
/// be traced (so the exec stops before the program's first instruction), exec.
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
        // exec: restore the default, as std::process::Command does. The signal mask and
        // every other disposition are left as gomaptrace inherited them (no thread and no
        // handler exists yet), so the program gets what it would have got untraced.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut byte = 0u8;
        loop {
            match libc::read(fds.start_read, (&raw mut byte).cast(), 1) {
                1 => break,
                -1 if *libc::__errno_location() == libc::EINTR => continue,
                // gomaptrace gave up (or died) before releasing the child.
                _ => libc::_exit(127),
            }
        }
        // Stopped by the kernel once the exec is complete, before the program's first
        // instruction, until gomaptrace has read its memory map and detaches.
        // A failed exec reports its errno; a refused PTRACE_TRACEME reports it negated.
        let failure = if ptrace(libc::PTRACE_TRACEME, 0, 0) == 0 {
            libc::execv(path.as_ptr(), argv.as_ptr());
            *libc::__errno_location()
        } else {
            -*libc::__errno_location()
        };
        let errno = failure.to_ne_bytes();
        libc::write(fds.status_write, errno.as_ptr().cast(), errno.len());
        libc::_exit(127)
    }
}

/// `ptrace(request, pid, NULL, data)`, with every variadic argument at the width the C
/// library reads it at (a plain integer literal would leave the upper half of a pointer
/// argument undefined).
///
/// # Safety
/// As the request requires; async-signal-safe.
unsafe fn ptrace(request: libc::c_uint, pid: u32, data: usize) -> libc::c_long {
    // SAFETY: forwarded to the caller.
    unsafe {
        libc::ptrace(
            request,
            pid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
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
/// exec with nothing written), else the errno the child reported (negated when
/// `PTRACE_TRACEME` failed).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gomaptrace-launch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_file(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn program(name: &str, args: &[&str]) -> Program {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Program::resolve(OsStr::new(name), &args).unwrap()
    }

    #[test]
    fn names_are_found_in_path_like_a_shell_does() {
        let dir = scratch("path");
        let first = dir.join("first");
        let second = dir.join("second");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        write_file(&first.join("tool"), b"text", 0o644);
        write_file(&second.join("tool"), b"#!/bin/sh\n", 0o755);
        let search = format!("{}:{}", first.display(), second.display());
        assert_eq!(
            search_path(OsStr::new("tool"), OsStr::new(&search)),
            Some(second.join("tool")),
            "a file without execute permission is passed over"
        );
        assert_eq!(search_path(OsStr::new("other"), OsStr::new(&search)), None);
        assert_eq!(
            search_path(
                OsStr::new("second"),
                OsStr::new(&format!(":{}", dir.display()))
            ),
            None,
            "a directory is not a program"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_program_that_cannot_run_is_a_clear_error() {
        let dir = scratch("resolve");
        let text = dir.join("notes.txt");
        write_file(&text, b"notes", 0o644);
        let error = Program::resolve(text.as_os_str(), &[]).unwrap_err();
        assert!(
            matches!(error, LaunchError::NotExecutable { .. }),
            "{error}"
        );
        let error = Program::resolve(dir.join("missing").as_os_str(), &[]).unwrap_err();
        assert!(
            error.to_string().ends_with("missing: no such file"),
            "{error}"
        );
        let error = Program::resolve(OsStr::new("gomaptrace-no-such-name"), &[]).unwrap_err();
        assert!(error.to_string().ends_with("not found in PATH"), "{error}");
        let error = Program::resolve(OsStr::new("/bin/sh"), &["a\0b".into()]).unwrap_err();
        assert!(matches!(error, LaunchError::NulByte { .. }), "{error}");
        let found = program("sh", &["-c", "true"]);
        assert!(found.path().is_absolute(), "{found:?}");
        assert_eq!(found.shown(), "sh");
        assert_eq!(found.argv[0].to_bytes(), b"sh", "argv[0] as typed");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn exit_statuses_read_as_a_shell_reports_them() {
        assert_eq!(shell_status(7 << 8), 7);
        assert_eq!(shell_status(0), 0);
        assert_eq!(shell_status(libc::SIGINT), 130);
        assert_eq!(shell_status(libc::SIGKILL), 137);
    }

    fn gone(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the pid exists.
        unsafe { libc::kill(pid as i32, 0) != 0 }
    }

    #[test]
    fn a_child_never_released_is_killed_and_reaped() {
        let child = Launched::fork(program("/bin/sleep", &["60"])).unwrap();
        let pid = child.pid();
        assert!(!gone(pid), "the child waits");
        drop(child);
        assert!(gone(pid), "killed and reaped: not even a zombie is left");
    }

    #[test]
    fn a_released_program_runs_and_its_status_is_kept() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut child = Launched::fork(program("/bin/sh", &["-c", "sleep 0.3; exit 3"])).unwrap();
        let (target, bias) = child.release(Some).unwrap();
        assert_ne!(bias, 0, "sh is position independent");
        assert_eq!(target.pid(), child.pid());
        assert_eq!(target.exe(), &std::fs::canonicalize("/bin/sh").unwrap());
        assert!(target.has_executable_mapping());
        assert_eq!(runtime.block_on(child.exited()).unwrap(), 3);
        let pid = child.pid();
        drop(child);
        assert!(gone(pid));
    }

    #[test]
    fn an_exec_failure_comes_back_from_the_child() {
        let dir = scratch("exec");
        let garbage = dir.join("garbage");
        write_file(&garbage, b"\x01\x02 not a binary", 0o755);
        let mut child = Launched::fork(program(garbage.to_str().unwrap(), &[])).unwrap();
        let pid = child.pid();
        let error = child.release(Some).unwrap_err();
        assert!(matches!(error, LaunchError::Exec { .. }), "{error}");
        assert!(error.to_string().contains("Exec format error"), "{error}");
        drop(child);
        assert!(gone(pid));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_child_killed_before_release_is_reported() {
        let mut child = Launched::fork(program("/bin/sleep", &["60"])).unwrap();
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(child.pid() as i32, libc::SIGKILL) };
        while child.is_alive() {
            std::thread::yield_now();
        }
        let error = child.release(Some).unwrap_err();
        assert!(matches!(error, LaunchError::Vanished { .. }), "{error}");
    }
}
