//! Checking, before touching anything, that this process may load BPF programs and read the
//! target's memory, so that a missing `sudo` is one clear line instead of a kernel error;
//! and giving up, once the probes are attached, every privilege the rest of the trace does
//! not use.
//!
//! After the attach, gomaptrace spends its time parsing bytes the target controls (map
//! headers, type descriptors, heap metadata, DWARF). A bug there should not hand anyone the
//! power to load kernel modules or new BPF tracing programs, so [`drop_after_attach`] keeps
//! only what reading and reporting need ([`KEPT_AFTER_ATTACH`]), empties the bounding,
//! inheritable and ambient sets (no exec can get the rest back) and sets `no_new_privs`.

/// What is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "gomaptrace needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE \
     (missing: {missing}): run it with sudo"
)]
pub struct PrivilegeError {
    missing: String,
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities the trace keeps once its probes are attached, and why:
/// - `CAP_SYS_PTRACE`: reading the target's memory (`process_vm_readv`: release detection,
///   inventory, names of what holds a map) and its `/proc/PID` files;
/// - `CAP_BPF`: reading the per-CPU loss counters at the end (a `bpf()` call, refused
///   without it when unprivileged BPF is disabled, as it is by default);
/// - `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`: writing the reports where root could (a
///   user's directory under `sudo`) and reading the target's files through `/proc/PID/root`.
///
/// Gone: `CAP_SYS_ADMIN`, `CAP_PERFMON` (no new probe or perf event), module loading,
/// network administration, changing uids, and every other capability.
pub const KEPT_AFTER_ATTACH: [u32; 4] = [
    CAP_SYS_PTRACE,
    CAP_BPF,
    CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH,
];

/// What `--mode sampled` keeps besides [`KEPT_AFTER_ATTACH`] when its windows fall back to
/// per-site uprobes (a kernel without uprobe-multi links): it attaches them again at every
/// discovery window, and the kernel refuses the uprobe perf event (`EACCES`) without
/// `CAP_SYS_ADMIN` as well as `CAP_PERFMON` (measured on 6.18). Grouped links need only
/// `CAP_BPF` (`tests/tests/privileges.rs`). Module loading, raw I/O, network
/// administration, uid changes and the rest still go.
pub const KEPT_TO_REATTACH: [u32; 2] = [CAP_PERFMON, CAP_SYS_ADMIN];

/// Why privileges could not be dropped: the kernel refused a call.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop privileges after attaching ({call}): {source}")]
pub struct DropError {
    call: &'static str,
    source: std::io::Error,
}

/// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(63)
}

/// The capability sets after the drop: what is kept of `effective`, nothing else.
fn kept(effective: u64, reattaching: bool) -> u64 {
    let extra: &[u32] = if reattaching { &KEPT_TO_REATTACH } else { &[] };
    KEPT_AFTER_ATTACH
        .iter()
        .chain(extra)
        .fold(0, |kept, &cap| kept | (1 << cap))
        & effective
}

/// Drops every capability but [`KEPT_AFTER_ATTACH`] (and [`KEPT_TO_REATTACH`] when the
/// trace will attach probes again) from this thread (and so from every thread it starts
/// afterwards), for good. Capabilities belong to threads, not processes:
/// call it before the trace starts its other threads (the session does, right after the
/// attach; the export worker and the inventory start after it).
pub fn drop_after_attach(reattaching: bool) -> Result<(), DropError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = effective_capabilities(&status);
    let kept = kept(effective, reattaching);
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, "PR_SET_NO_NEW_PRIVS")?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
        "PR_CAP_AMBIENT_CLEAR_ALL",
    )?;
    if effective & (1 << CAP_SETPCAP) != 0 {
        for cap in (0..=last_capability()).filter(|&cap| kept & (1 << cap) == 0) {
            prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
                0,
                "PR_CAPBSET_DROP",
            )?;
        }
    }
    set_capabilities(kept).map_err(|source| DropError {
        call: "capset",
        source,
    })
}

/// `prctl(option, arg2, arg3, 0, 0)`, its failure named by `call`.
fn prctl(
    option: libc::c_int,
    arg2: libc::c_ulong,
    arg3: libc::c_ulong,
    call: &'static str,
) -> Result<(), DropError> {
    // SAFETY: integer arguments only; a failure is reported through errno.
    if unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) } == 0 {
        Ok(())
    } else {
        Err(DropError {
            call,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// `capset(2)` with version 3 (64-bit sets): effective = permitted = `kept`, inheritable
/// empty.
fn set_capabilities(kept: u64) -> std::io::Result<()> {
    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct CapabilityCallHeader {
        version: u32,
        pid: libc::c_int,
    }
    /// `struct __user_cap_data_struct`, one per 32 capabilities.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapabilitySets {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = CapabilityCallHeader {
        version: VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| CapabilitySets {
        effective: (kept >> shift) as u32,
        permitted: (kept >> shift) as u32,
        inheritable: 0,
    };
    let data = [half(0), half(32)];
    // SAFETY: both pointers are to live, correctly laid out structs for the whole call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Succeeds when the effective capabilities allow loading uprobes and reading the target.
pub fn check() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_effective(effective_capabilities(&status))
}

fn effective_capabilities(status: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

fn check_effective(effective: u64) -> Result<(), PrivilegeError> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .into_iter()
    .filter(|&(cap, _)| !(has(cap) || admin && cap != CAP_SYS_PTRACE))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), 0x1ff_ffff_ffff);
        assert_eq!(effective_capabilities("garbage"), 0);
    }

    #[test]
    fn keeps_only_what_reading_and_reporting_need() {
        let all = kept(u64::MAX, false);
        assert_eq!(all.count_ones(), 4);
        assert_eq!(all & (1 << CAP_SYS_ADMIN), 0);
        assert_eq!(all & (1 << CAP_PERFMON), 0);
        assert_ne!(all & (1 << CAP_SYS_PTRACE), 0);
        assert_eq!(
            kept(1 << CAP_SYS_PTRACE, true),
            1 << CAP_SYS_PTRACE,
            "never adds one"
        );
        let sampled = kept(u64::MAX, true);
        assert_eq!(
            sampled,
            all | 1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN,
            "sampled mode attaches again"
        );
    }

    #[test]
    fn names_what_is_missing() {
        assert!(check_effective(u64::MAX).is_ok());
        let bpf_only = 1 << CAP_BPF | 1 << CAP_PERFMON;
        let message = check_effective(bpf_only).unwrap_err().to_string();
        assert!(message.contains("missing: CAP_SYS_PTRACE"), "{message}");
        assert!(message.contains("sudo"));
        let admin = 1 << CAP_SYS_ADMIN | 1 << CAP_SYS_PTRACE;
        assert!(
            check_effective(admin).is_ok(),
            "CAP_SYS_ADMIN covers BPF and perf"
        );
        assert!(check_effective(0)
            .unwrap_err()
            .to_string()
            .contains("CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE"));
    }
}
