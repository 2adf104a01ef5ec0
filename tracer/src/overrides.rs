//! Hidden settings read from the environment, for tests that force a fault gomaptrace must
//! survive; none of them is a user-facing option.

/// Environment variable that shrinks the event ring buffer to this many bytes, so that a test
/// can make the kernel drop events and check that the loss is counted and shown.
pub const RING_BYTES_VAR: &str = "GOMAPTRACE_RING_BYTES";

/// A value of [`RING_BYTES_VAR`] the kernel would refuse.
#[derive(Debug, thiserror::Error)]
#[error("{RING_BYTES_VAR}={0} is not a power of two between 4096 and 2^30 bytes")]
pub struct BadRingBytes(String);

/// The ring buffer size [`RING_BYTES_VAR`] asks for, if set: a power of two, at least a page.
pub fn ring_bytes() -> Result<Option<u32>, BadRingBytes> {
    let Some(value) = std::env::var_os(RING_BYTES_VAR) else {
        return Ok(None);
    };
    let value = value.to_string_lossy().into_owned();
    parse_ring_bytes(&value)
        .map(Some)
        .ok_or(BadRingBytes(value))
}

fn parse_ring_bytes(value: &str) -> Option<u32> {
    let bytes: u32 = value.parse().ok()?;
    (bytes.is_power_of_two() && (4096..=1 << 30).contains(&bytes)).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_page_multiples_that_are_powers_of_two_are_accepted() {
        assert_eq!(parse_ring_bytes("4096"), Some(4096));
        assert_eq!(parse_ring_bytes("65536"), Some(65536));
        for bad in [
            "0",
            "4095",
            "6000",
            "2048",
            "-4096",
            "x",
            "4294967296",
            "2147483648",
        ] {
            assert_eq!(parse_ring_bytes(bad), None, "{bad}");
        }
    }
}
