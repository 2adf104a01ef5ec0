//! The oldest kernel gomaptrace runs on, and the check that refuses an older one before any
//! BPF program is loaded.
//!
//! An old kernel otherwise fails deep inside the loader or the verifier with a message that
//! names an errno or a helper number, not what is missing. The kernel's release (`uname -r`)
//! is compared with the release that added each BPF feature the programs in `tracer-ebpf/`
//! use; the newest of them, BPF attach cookies on uprobes, makes 5.15 the minimum. A release
//! that looks older is refused only when the kernel also fails aya's own probes for the
//! features a distribution may have backported (attach cookies, global data: RHEL 9's 5.14
//! has them), so an old number alone never refuses a kernel that works. A release that
//! cannot be parsed is let through: the loader then says what it says.

/// A BPF feature the programs need, and the mainline release that added it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as the error names it.
    pub name: &'static str,
    /// The first mainline release that has it (major, minor).
    pub since: (u32, u32),
}

/// Every kernel feature the BPF programs and their attachment rely on, newest first.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "BPF attach cookies on uprobes (bpf_get_attach_cookie)",
        since: (5, 15),
    },
    Feature {
        name: "the BPF ring buffer",
        since: (5, 8),
    },
    Feature {
        name: "bpf_probe_read_user",
        since: (5, 5),
    },
    Feature {
        name: "BPF global data (.rodata)",
        since: (5, 2),
    },
];

/// The oldest release gomaptrace runs on: the newest of [`FEATURES`].
pub const MINIMUM: (u32, u32) = (5, 15);

/// The running kernel lacks features gomaptrace needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "kernel {release} is too old for gomaptrace (needs {}.{} or newer): it lacks {}",
    MINIMUM.0,
    MINIMUM.1,
    .missing.join(", ")
)]
pub struct KernelTooOld {
    /// The release, as `uname -r` says it.
    pub release: String,
    /// The missing features, newest first, each with the release that added it.
    pub missing: Vec<String>,
}

/// Checks the running kernel (`/proc/sys/kernel/osrelease`); an unreadable release passes.
pub fn check_running() -> Result<(), KernelTooOld> {
    match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => decide(release.trim(), || {
            let probed = aya::features();
            probed.bpf_cookie() && probed.bpf_global_data()
        }),
        Err(_) => Ok(()),
    }
}

/// [`check`], unless `backported` (asked only for an old release) says the kernel has the
/// features anyway.
pub fn decide(release: &str, backported: impl FnOnce() -> bool) -> Result<(), KernelTooOld> {
    match check(release) {
        Err(_) if backported() => Ok(()),
        verdict => verdict,
    }
}

/// Checks a release string such as `6.1.0-57-amd64` or `5.10.0-35-cloud-amd64` by its
/// number alone.
pub fn check(release: &str) -> Result<(), KernelTooOld> {
    let Some(version) = parse(release) else {
        return Ok(());
    };
    let missing: Vec<String> = FEATURES
        .iter()
        .filter(|feature| version < feature.since)
        .map(|feature| format!("{} ({}.{})", feature.name, feature.since.0, feature.since.1))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KernelTooOld {
            release: release.to_string(),
            missing,
        })
    }
}

/// The major and minor numbers at the start of a release string.
fn parse(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_is_the_newest_feature() {
        assert_eq!(FEATURES.iter().map(|f| f.since).max(), Some(MINIMUM));
    }

    #[test]
    fn accepts_the_minimum_and_newer() {
        for release in [
            "5.15.0-91-generic",
            "6.1.0-57-amd64",
            "6.18.44-fc-v1045",
            "10.0",
        ] {
            assert_eq!(check(release), Ok(()), "{release}");
        }
    }

    #[test]
    fn refuses_older_kernels_naming_what_is_missing() {
        let error = check("5.10.0-35-cloud-amd64").unwrap_err();
        assert_eq!(error.missing.len(), 1);
        let message = error.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("5.10.0-35-cloud-amd64"), "{message}");
        assert!(message.contains("bpf_get_attach_cookie"), "{message}");
        assert!(message.contains("5.15"), "{message}");

        let error = check("4.19.0").unwrap_err();
        assert_eq!(error.missing.len(), FEATURES.len());
        assert!(error.to_string().contains("ring buffer"));

        assert_eq!(check("5.7.1").unwrap_err().missing.len(), 2);
    }

    #[test]
    fn an_old_number_with_the_features_backported_passes() {
        assert_eq!(decide("5.14.0-427.el9.x86_64", || true), Ok(()));
        assert!(decide("5.10.0-32-amd64", || false).is_err());
        let asked = std::cell::Cell::new(false);
        assert_eq!(decide("6.1.0-57-amd64", || asked.replace(true)), Ok(()));
        assert!(!asked.get(), "a new enough kernel is not probed");
    }

    #[test]
    fn lets_unparsable_releases_through() {
        for release in ["", "linux", "5", "x.y"] {
            assert_eq!(check(release), Ok(()), "{release:?}");
        }
    }
}
