//! Mark termination: the collector's pause, when marking is done and every map the next
//! sweep frees is already unreachable (see `tracer_common::settle`).
//!
//! The probe only counts the cycle and tells userspace, which then reads the headers of
//! the maps it listed: the target's pause is not made any longer by those reads.

use aya_ebpf::{
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};
use tracer_common::{kind, settle::CYCLES};

use crate::emit::{emit_marker, EmitError};

/// See `tracer_common::maps::GC_CYCLES`.
#[map]
static GC_CYCLES: Array<u32> = Array::with_max_entries(1, 0);

#[uprobe]
pub fn gc_collected(_ctx: ProbeContext) -> u32 {
    let _ = try_gc_collected();
    0
}

/// Counts the cycle and sends it.
fn try_gc_collected() -> Result<(), EmitError> {
    let cycles = GC_CYCLES.get_ptr_mut(CYCLES).ok_or(EmitError::NoState)?;
    // SAFETY: mark terminations run one at a time, with the world stopped.
    let cycle = unsafe { *cycles }.wrapping_add(1).max(1);
    // SAFETY: as above.
    unsafe { *cycles = cycle };
    emit_marker(kind::COLLECTED, u64::from(cycle))
}

/// The collector cycles finished so far, for a creation record.
#[inline(always)]
pub fn cycles() -> u32 {
    GC_CYCLES.get(CYCLES).copied().unwrap_or(0)
}
