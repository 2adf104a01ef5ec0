//! Go release numbers, as read from a binary's build info.

use std::fmt;

use super::{Arch, InspectError};

/// The Go release that built the target.
///
/// Struct layouts, symbol names and the calling convention all change between releases, so
/// every later stage picks its offsets by comparing against this. Pre-releases count as the
/// release they lead to (`go1.21rc2` is 1.21.0): their runtime already has that release's
/// layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    /// Always 1 so far.
    pub major: u32,
    /// The release line, e.g. 24 for Go 1.24.
    pub minor: u32,
    /// The point release, 0 for the first release and for pre-releases.
    pub patch: u32,
}

impl GoVersion {
    /// Finds the release number in a build-info version string such as `go1.24.11`,
    /// `go1.24.11 X:noswissmap`, `go1.21rc2` or `devel go1.23-4f0e2a8 Tue Jan 2 …`.
    ///
    /// `None` when no word of it starts with `go` followed by a number (for example an old
    /// `devel +4f0e2a8 …` toolchain): guessing would pick the wrong layouts.
    pub(super) fn parse(raw: &str) -> Option<GoVersion> {
        raw.split_whitespace()
            .filter_map(|word| word.strip_prefix("go"))
            .find_map(parse_numbers)
    }

    /// Refuses releases that pass arguments on the stack: every probe reads registers.
    pub(super) fn check_register_abi(self, arch: Arch, raw: &str) -> Result<(), InspectError> {
        let (minimum, text) = match arch {
            Arch::Amd64 => (GoVersion::release(17), "1.17"),
            Arch::Arm64 => (GoVersion::release(18), "1.18"),
        };
        if self < minimum {
            return Err(InspectError::UnsupportedGoVersion {
                raw: raw.to_owned(),
                arch,
                minimum: text,
            });
        }
        Ok(())
    }

    fn release(minor: u32) -> GoVersion {
        GoVersion {
            major: 1,
            minor,
            patch: 0,
        }
    }
}

impl fmt::Display for GoVersion {
    /// As the toolchain names its releases: the first release of a line was `go1.18` up to
    /// Go 1.20 and is `go1.21.0` from Go 1.21 on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}", self.major, self.minor)?;
        if self.patch != 0 || (self.major, self.minor) >= (1, 21) {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// Parses `1`, `1.24`, `1.24.11`, ignoring whatever follows the numbers (`rc2`, `-4f0e2a8`).
fn parse_numbers(text: &str) -> Option<GoVersion> {
    let (major, rest) = leading_number(text)?;
    let (minor, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => leading_number(after_dot)?,
        None => (0, rest),
    };
    let patch = match rest.strip_prefix('.') {
        Some(after_dot) => leading_number(after_dot)?.0,
        None => 0,
    };
    Some(GoVersion {
        major,
        minor,
        patch,
    })
}

/// The decimal number at the start of `text` and the text after it.
fn leading_number(text: &str) -> Option<(u32, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, rest) = text.split_at_checked(digits)?;
    Some((number.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(major: u32, minor: u32, patch: u32) -> Option<GoVersion> {
        Some(GoVersion {
            major,
            minor,
            patch,
        })
    }

    #[test]
    fn parses_release_strings() {
        assert_eq!(GoVersion::parse("go1.24.11"), version(1, 24, 11));
        assert_eq!(GoVersion::parse("go1.19.8"), version(1, 19, 8));
        assert_eq!(GoVersion::parse("go1.19"), version(1, 19, 0));
        assert_eq!(GoVersion::parse("go1.21rc2"), version(1, 21, 0));
        assert_eq!(GoVersion::parse("go1.18beta1"), version(1, 18, 0));
        assert_eq!(
            GoVersion::parse("go1.24.11 X:noswissmap"),
            version(1, 24, 11)
        );
        assert_eq!(
            GoVersion::parse("devel go1.23-4f0e2a8 Tue Jan 2 10:00:00 2024 +0000"),
            version(1, 23, 0)
        );
    }

    #[test]
    fn rejects_strings_without_a_release() {
        for raw in [
            "",
            "devel +4f0e2a8 Tue Jan 2",
            "gopher",
            "go",
            "go.1",
            "1.24.11",
        ] {
            assert_eq!(GoVersion::parse(raw), None, "{raw:?}");
        }
        assert_eq!(GoVersion::parse("go99999999999.1"), None);
    }

    #[test]
    fn displays_like_the_toolchain() {
        assert_eq!(version(1, 24, 11).unwrap().to_string(), "go1.24.11");
        assert_eq!(version(1, 21, 0).unwrap().to_string(), "go1.21.0");
        assert_eq!(version(1, 18, 0).unwrap().to_string(), "go1.18");
        assert_eq!(version(1, 17, 2).unwrap().to_string(), "go1.17.2");
    }

    #[test]
    fn orders_by_release() {
        assert!(version(1, 19, 8) < version(1, 24, 0));
        assert!(version(1, 9, 0) < version(1, 17, 0));
    }

    #[test]
    fn register_abi_starts_at_1_17_on_amd64_and_1_18_on_arm64() {
        let v117 = version(1, 17, 0).unwrap();
        assert!(v117.check_register_abi(Arch::Amd64, "go1.17").is_ok());
        let error = v117.check_register_abi(Arch::Arm64, "go1.17").unwrap_err();
        assert_eq!(
            error.to_string(),
            "go1.17 uses the stack-based ABI; gomaptrace needs Go 1.18 or newer on arm64: \
             rebuild the program with a newer Go"
        );
        let v116 = version(1, 16, 15).unwrap();
        assert!(v116.check_register_abi(Arch::Amd64, "go1.16.15").is_err());
    }
}
