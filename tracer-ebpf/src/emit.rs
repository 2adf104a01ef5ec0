//! The one way events leave the BPF side: a compact record on the ring buffer, counted as
//! lost when the buffer is full.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{
    seed_from_word, MapEvent, FLAG_COUNT_UNREADABLE, LOST_SLOT, RING_BYTES, WAKEUP_THRESHOLD_BYTES,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Set by userspace before loading (`tracer_common::seed_shift`): where the hash seed sits in
/// the header's second word for the target's map implementation.
#[no_mangle]
static SEED_SHIFT: u64 = 0;

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Why an event was not delivered; the caller has nothing to recover, but the `try_*`
/// programs still return it so that every exit path is explicit.
pub enum EmitError {
    /// The ring buffer had no room; the loss is counted in `LOST`.
    RingFull,
}

/// Records one observation of the map at `map`: its element count right now.
///
/// A nil map (`map == 0`) is not an observation: deletes from a nil map are no-ops and
/// assignments to one panic before touching anything.
#[inline(always)]
pub fn emit(kind: u8, map: u64) -> Result<(), EmitError> {
    if map == 0 {
        return Ok(());
    }
    // SAFETY: a faulting user read returns an error instead of faulting the kernel.
    let (header, flags) = match unsafe { bpf_probe_read_user(map as *const [u64; 2]) } {
        Ok(header) => (header, 0),
        Err(_) => ([0, 0], FLAG_COUNT_UNREADABLE),
    };
    // SAFETY: a plain read of a global; volatile so the loader's value is not folded away.
    let seed_shift = unsafe { core::ptr::read_volatile(&SEED_SHIFT) };
    let Some(mut entry) = EVENTS.reserve::<MapEvent>(0) else {
        count_lost();
        return Err(EmitError::RingFull);
    };
    entry.write(MapEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        map,
        count: header[0],
        seed: seed_from_word(header[1], seed_shift),
        kind,
        flags,
        _pad: [0; 2],
    });
    entry.submit(wakeup_policy());
    Ok(())
}

/// Waking the reader per event would cost every traced call over a microsecond; the reader
/// drains on a timer and is only woken when the buffer passes a fill threshold.
#[inline(always)]
fn wakeup_policy() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_THRESHOLD_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(LOST_SLOT) {
        // SAFETY: per-CPU slot, so no other program writes it concurrently.
        unsafe { *lost += 1 };
    }
}
