//! BPF-side diagnostics: what a probe could not read, said in words on `--verbose`.
//!
//! Each failure here already has a visible trace in the data (an unreadable count is
//! flagged, a creation without its header is not recorded, a stack comes out short), but
//! not why. These messages go through aya-log's own ring buffer, only on those failure
//! paths, and only when userspace sets `AYA_LOG_LEVEL` above zero before loading: the
//! successful path of every probe runs no logging code at all.

use aya_ebpf::programs::ProbeContext;
use aya_log_ebpf::{debug, warn};

/// The map header at `map` could not be read when an event was recorded.
#[inline(always)]
pub fn header_unreadable(ctx: &ProbeContext, map: u64, errno: i64) {
    warn!(ctx, "map {:x}: header unreadable (error {})", map, errno);
}

/// A constructor's new header could not be read from its stack slot: the creation is lost.
#[inline(always)]
pub fn created_header_unreadable(ctx: &ProbeContext, slot: u64, errno: i64) {
    warn!(
        ctx,
        "new map header unreadable at stack slot {:x} (error {}): creation not recorded",
        slot,
        errno
    );
}

/// The frame-pointer walk of a creation's or sampled write's call stack met a frame record
/// it could not read: the stack is cut there.
#[inline(always)]
pub fn stack_cut(ctx: &ProbeContext, map: u64, frame: u64, errno: i64) {
    debug!(
        ctx,
        "map {:x}: call stack cut at frame record {:x} (error {})", map, frame, errno
    );
}
