//! Checking, before touching anything, that this process may load BPF programs and read the
//! target's memory, so that a missing `sudo` is one clear line instead of a kernel error.

/// What is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "gomaptrace needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE \
     (missing: {missing}): run it with sudo"
)]
pub struct PrivilegeError {
    missing: String,
}

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
