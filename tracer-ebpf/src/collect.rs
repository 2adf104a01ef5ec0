//! Mark termination: the collector's pause, when the maps userspace listed get their header
//! read (see `tracer_common::settle`).
//!
//! The world is stopped while `runtime.gcMarkTermination` runs, and every map the sweep
//! that follows frees was found unreachable by then: a header read now is final for each of
//! them. Which of the listed maps those are is only known later, when another map appears
//! at the address before the next mark termination; the creation record carries the cycle
//! for that check.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_probe_read_user,
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};
use tracer_common::settle::{SettleSlot, CYCLES, SLOTS};

/// See `tracer_common::maps::GC_CYCLES`.
#[map]
static GC_CYCLES: Array<u32> = Array::with_max_entries(1, 0);

/// See `tracer_common::maps::SETTLE_SLOTS`. Mapped into the tracer's memory, which lists
/// maps by writing to it directly.
#[map]
static SETTLE_SLOTS: Array<SettleSlot> = Array::with_max_entries(SLOTS, BPF_F_MMAPABLE);

/// See `tracer_common::maps::SETTLE_USED`.
#[map]
static SETTLE_USED: Array<u32> = Array::with_max_entries(1, 0);

#[uprobe]
pub fn gc_collected(_ctx: ProbeContext) -> u32 {
    let _ = try_gc_collected();
    0
}

/// Counts the cycle, then reads the header of every listed map and keeps what it read
/// where the seed is still the map's.
fn try_gc_collected() -> Result<(), ()> {
    let cycles = GC_CYCLES.get_ptr_mut(CYCLES).ok_or(())?;
    // SAFETY: mark terminations run one at a time, with the world stopped.
    let cycle = unsafe { *cycles }.wrapping_add(1).max(1);
    // SAFETY: as above.
    unsafe { *cycles = cycle };
    let used = SETTLE_USED.get(0).copied().unwrap_or(0);
    for index in 0..SLOTS {
        if index >= used {
            break;
        }
        let Some(slot) = SETTLE_SLOTS.get_ptr_mut(index) else {
            break;
        };
        // SAFETY: only this program writes the result fields, and it runs once at a time;
        // userspace may rewrite the slot meanwhile, which `read_map` tells apart.
        let slot = unsafe { &mut *slot };
        let map = slot.map;
        if map == 0 {
            continue;
        }
        // SAFETY: a faulting user read returns an error.
        let Ok([count, word]) = (unsafe { bpf_probe_read_user(map as *const [u64; 2]) }) else {
            continue;
        };
        if word & slot.seed_mask != slot.seed {
            continue;
        }
        slot.count = count;
        slot.word = word;
        slot.read_map = map;
        slot.cycle = cycle;
    }
    Ok(())
}

/// The collector cycles finished so far, for a creation record.
#[inline(always)]
pub fn cycles() -> u32 {
    GC_CYCLES.get(CYCLES).copied().unwrap_or(0)
}
