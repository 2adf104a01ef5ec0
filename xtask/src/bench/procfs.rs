//! What the kernel says about a running tracer: CPU time, memory, open perf events, and the
//! resource usage of a child once it is reaped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// CPU time the process has used so far, summed over its threads, in nanoseconds.
///
/// Read from `/proc/PID/task/*/schedstat` (nanosecond resolution); threads that already
/// exited are missed, which for the tracers measured here (one event-loop thread, or
/// bpftrace's) is nothing.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let tasks = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("cannot read {tasks}"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let on_cpu: u64 = text
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("unexpected {}: {text:?}", path.display()))?;
        total += on_cpu;
    }
    Ok(total)
}

/// Resident memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Peak resident set size so far (`VmHWM`).
    pub peak_kib: u64,
    /// Resident set size now (`VmRSS`).
    pub now_kib: u64,
}

/// Reads `VmHWM` and `VmRSS` of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        peak_kib: field("VmHWM:")?,
        now_kib: field("VmRSS:")?,
    })
}

/// Number of perf-event descriptors `pid` holds. Each uprobe bpftrace attaches is one.
pub fn perf_event_fds(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target == Path::new("anon_inode:[perf_event]"))
        .count()
}

/// How a reaped child ended and what it used over its whole life.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Exit code, or `None` when a signal killed it.
    pub exit_code: Option<i32>,
    /// User plus system CPU time, in nanoseconds (`wait4`).
    pub cpu_ns: u64,
    /// The last `VmHWM` read before it exited, in KiB: its peak RSS over its whole life,
    /// missing at most the growth of its last [`POLL`].
    ///
    /// Not `ru_maxrss`: a child started with `vfork`/`posix_spawn` (as `std::process` does)
    /// inherits the parent's high-water mark at `exec`, so `ru_maxrss` reports the larger
    /// of the child's peak and this harness's own.
    pub peak_kib: u64,
}

/// How often a child is polled while waiting for it.
pub const POLL: Duration = Duration::from_millis(2);

/// Waits for child `pid` with `wait4`, which unlike `std::process::Child::wait` also returns
/// its CPU time, reading its `VmHWM` until it exits. The caller must not wait for the child
/// in any other way.
pub fn wait_with_usage(pid: u32, timeout: Duration) -> anyhow::Result<Usage> {
    let deadline = Instant::now() + timeout;
    let mut peak_kib = 0;
    loop {
        // Once the process has exited (a zombie until reaped) its status has no VmHWM.
        if let Ok(memory) = memory(pid) {
            peak_kib = peak_kib.max(memory.peak_kib);
        }
        let mut status = 0;
        // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointers; `pid` is our own unreaped child.
        let reaped = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if reaped < 0 {
            bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
        }
        if reaped == pid as i32 {
            let time_ns = |time: libc::timeval| {
                time.tv_sec as u64 * 1_000_000_000 + time.tv_usec as u64 * 1_000
            };
            return Ok(Usage {
                exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                cpu_ns: time_ns(usage.ru_utime) + time_ns(usage.ru_stime),
                peak_kib,
            });
        }
        if Instant::now() > deadline {
            // SAFETY: `pid` is our own child, not yet reaped, so it cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("pid {pid} did not exit within {timeout:?}; killed it");
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `signal` to our child `pid`.
pub fn signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill with our own unreaped child's pid and a valid signal number.
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        bail!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
