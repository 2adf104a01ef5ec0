//! Writer stacks: which code writes to a map, for maps whose creation was not seen.
//!
//! A map made before the trace has no creation stack, so the only way to point at it in the
//! program's source is the code that writes to it. Taking a stack per write would cost every
//! assign a `bpf_get_stack` and a 320-byte record, so one counter per map address (`WRITERS`,
//! one lookup per write) picks the writes that carry one: the first few of each map, then a
//! sparse sample (`tracer_common::writers`). Creation and clone probes start their map's
//! counter past the first writes, so per-request maps never pay the dense part.

use aya_ebpf::{macros::map, maps::LruHashMap, programs::ProbeContext};
use tracer_common::writers;

use crate::{
    emit::{emit, emit_create, EmitError},
    entry::read_entry,
    go_abi,
};

/// Map address → writes seen. LRU, so that it stays bounded whatever the target does: a map
/// evicted and written again starts over with its first writes.
#[map]
static WRITERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(writers::MAPS, 0);

/// Records an assign or delete entry of `kind`, with the writer's call stack when the map's
/// counter samples this write.
#[inline(always)]
pub fn observe_write(ctx: &ProbeContext, kind: u8) -> Result<(), EmitError> {
    let observation = read_entry(ctx, kind);
    if observation.map == 0 || !count_write(observation.map) {
        return emit(ctx, observation);
    }
    // The probe sits before the callee pushes its frame (right after the stack check), so the
    // frame-pointer walk starts at the caller's caller: the direct caller is the return
    // address at `[SP]` (amd64) or in the link register (arm64).
    let caller = go_abi::return_address(ctx);
    emit_create(ctx, observation, caller, 0)
}

/// Counts one write to `map`; true when it carries a stack.
#[inline(always)]
fn count_write(map: u64) -> bool {
    match WRITERS.get_ptr_mut(map) {
        Some(seen) => {
            // SAFETY: the pointer is to this map's value; Go serialises writes to one map, and
            // a lost increment would only move the sample by one write.
            let previous = unsafe { *seen };
            unsafe { *seen = previous.wrapping_add(1) };
            writers::sampled(previous)
        }
        None => {
            // A failed insert only means the next write tries again.
            let _ = WRITERS.insert(map, 1, 0);
            writers::sampled(0)
        }
    }
}

/// A creation (or clone) of `map` was seen: its writes only need the sparse sample.
#[inline(always)]
pub fn mark_created(map: u64) {
    if map != 0 {
        let _ = WRITERS.insert(map, writers::FIRST_WRITES, 0);
    }
}
