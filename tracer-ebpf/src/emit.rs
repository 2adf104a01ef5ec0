//! The one way events leave the BPF side: a compact record on the ring buffer, counted as
//! lost when the buffer is full.

use crate::{collect, diagnostics, go_abi, stack_copy::StackCopy};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use tracer_common::{
    kind, CreateEvent, MapEvent, FLAG_COUNT_UNREADABLE, FLAG_FOLDS_CHANGED, FLAG_KEY_SAMPLED,
    FLAG_ON_STACK, LOST_SLOT, RING_BYTES, STACK_DEPTH, WAKEUP_THRESHOLD_BYTES,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Why an event was not delivered; the caller has nothing to recover, but the `try_*`
/// programs still return it so that every exit path is explicit.
pub enum EmitError {
    /// The ring buffer had no room; the loss is counted in `LOST`.
    RingFull,
    /// A BPF map the program keeps its state in had no entry (never happens for arrays).
    NoState,
}

/// What one probe hit saw of a map, before it becomes a record.
pub struct Observation {
    /// One of `tracer_common::kind`.
    pub kind: u8,
    /// The map header's address.
    pub map: u64,
    /// The map-type pointer the function received, or 0.
    pub map_type: u64,
    /// The salted key hash when the key is sampled.
    pub key_hash: Option<u32>,
    /// The map's header (count and second word) when the probe fired; `None` when it could
    /// not be read.
    pub header: Option<[u64; 2]>,
    /// The run of writes folded since the map's last record, which this record carries.
    pub carried: CarriedRun,
}

/// A run of folded writes, as a record carries it (see `tracer_common::MapEvent::folded`).
#[derive(Clone, Copy, Default)]
pub struct CarriedRun {
    /// How many writes were folded.
    pub folded: u16,
    /// Whether the record before the run and each folded write but the last changed the
    /// count (`tracer_common::FLAG_FOLDS_CHANGED`).
    pub changed: bool,
}

/// Reads the map's header (count and second word), `None` when it cannot be read.
#[inline(always)]
pub fn read_header(ctx: &ProbeContext, map: u64) -> Option<[u64; 2]> {
    // SAFETY: a faulting user read returns an error instead of faulting the kernel.
    match unsafe { bpf_probe_read_user(map as *const [u64; 2]) } {
        Ok(header) => Some(header),
        Err(errno) => {
            diagnostics::header_unreadable(ctx, map, errno.into());
            None
        }
    }
}

/// Records one observation of the map: its header (count and seed) when the probe fired.
///
/// A nil map (`map == 0`) is not an observation: deletes from a nil map are no-ops and
/// assignments to one panic before touching anything.
#[inline(always)]
pub fn emit(observation: Observation) -> Result<(), EmitError> {
    if observation.map == 0 {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<MapEvent>(0) else {
        count_lost();
        return Err(EmitError::RingFull);
    };
    entry.write(event(&observation, 0));
    entry.submit(wakeup_policy());
    Ok(())
}

/// Records an event about no map (`kind` with a `value`, in `count`), and wakes the reader
/// at once: it marks a moment userspace acts on (see `tracer_common::kind::COLLECTED`).
#[inline(always)]
pub fn emit_marker(kind: u8, value: u64) -> Result<(), EmitError> {
    let Some(mut entry) = EVENTS.reserve::<MapEvent>(0) else {
        count_lost();
        return Err(EmitError::RingFull);
    };
    entry.write(MapEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        map: 0,
        count: value,
        header_word: 0,
        map_type: 0,
        key_hash: 0,
        kind,
        flags: 0,
        folded: 0,
    });
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    Ok(())
}

/// Records a creation (or clone) with the user call stack that made it. `caller` is the
/// return address into the direct caller when the frame-pointer walk cannot see it (a probe
/// on a `RET`), else 0; `flags` adds `tracer_common::FLAG_SEED_PENDING` for probes that run
/// before the seed is drawn; `copy` is the top of the stack, when the caller has copied it
/// (`StackCopy::read`), which spares the walk most of its reads.
#[inline(always)]
pub fn emit_create(
    ctx: &ProbeContext,
    observation: Observation,
    caller: u64,
    flags: u8,
    copy: Option<&StackCopy>,
) -> Result<(), EmitError> {
    if observation.map == 0 {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<CreateEvent>(0) else {
        count_lost();
        return Err(EmitError::RingFull);
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at reserved ring-buffer memory of `CreateEvent`'s size; every
    // field is written before submit, and the stack up to `stack_len` (what lies past it is
    // never read).
    unsafe {
        let stack = core::ptr::addr_of_mut!((*record).stack).cast::<u64>();
        let (frames, top) = walk_frames(ctx, observation.map, stack, copy);
        let created = matches!(observation.kind, kind::CREATE | kind::CLONE);
        let map = observation.map;
        let on_stack = if created && map >= go_abi::stack_pointer(ctx) && map < top {
            FLAG_ON_STACK
        } else {
            0
        };
        core::ptr::addr_of_mut!((*record).event).write(event(&observation, flags | on_stack));
        core::ptr::addr_of_mut!((*record).caller).write(caller);
        core::ptr::addr_of_mut!((*record).stack_len).write(frames);
        core::ptr::addr_of_mut!((*record).gc_cycle).write(collect::cycles());
    }
    entry.submit(wakeup_policy());
    Ok(())
}

/// Walks the user call stack along Go's frame-pointer chain into `stack` (which has room for
/// [`STACK_DEPTH`] addresses) and returns how many it wrote (the probed instruction, then the
/// return address of each frame record, newest first) and the end of the last record read:
/// everything between the stack pointer and there is the goroutine's stack (`u64::MAX` when
/// the chain broke before its end, so that no address above the stack pointer is taken for
/// heap).
///
/// This is the walk `bpf_get_stack` does for a user stack, at a fraction of its cost: a
/// record is taken from `copy` when it holds it, else read from the target (16 bytes, about
/// 23 ns).
/// Like the kernel's walk it stops at a null or misaligned frame pointer, or at a record it
/// cannot read. It does not add the return address at `[SP]` for a probe on a `PUSH BP` as
/// recent kernels do: the probes read that address themselves (`go_abi::return_address`).
///
/// # Safety
/// `stack` must point at [`STACK_DEPTH`] writable `u64`s.
#[inline(always)]
unsafe fn walk_frames(
    ctx: &ProbeContext,
    map: u64,
    stack: *mut u64,
    copy: Option<&StackCopy>,
) -> (u32, u64) {
    // SAFETY: the caller gives room for `STACK_DEPTH` addresses; `written` stays below it.
    unsafe { stack.write(go_abi::instruction_pointer(ctx)) };
    let mut frame = go_abi::frame_pointer(ctx);
    let mut written = 1;
    let mut top = 0;
    let mut cut = None;
    while written < STACK_DEPTH && frame != 0 && frame.is_multiple_of(8) {
        let record = match copy.and_then(|copy| copy.record(frame)) {
            Some(record) => Ok(record),
            // SAFETY: a faulting user read returns an error.
            None => unsafe { bpf_probe_read_user(frame as *const [u64; 2]) },
        };
        match record {
            Ok([caller_frame, return_address]) => {
                // SAFETY: as above.
                unsafe { stack.add(written).write(return_address) };
                written += 1;
                top = frame + 16;
                frame = caller_frame;
            }
            Err(errno) => {
                cut = Some(errno);
                break;
            }
        }
    }
    if let Some(errno) = cut {
        diagnostics::stack_cut(ctx, map, frame, errno.into());
    }
    if cut.is_some() || !frame.is_multiple_of(8) {
        // The stack goes on past what was read: anything above the stack pointer may be in it.
        top = u64::MAX;
    }
    (written as u32, top)
}

/// Fills in the record.
#[inline(always)]
fn event(observation: &Observation, flags: u8) -> MapEvent {
    let (header, unreadable) = match observation.header {
        Some(header) => (header, 0),
        None => ([0, 0], FLAG_COUNT_UNREADABLE),
    };
    let (key_hash, sampled) = match observation.key_hash {
        Some(hash) => (hash, FLAG_KEY_SAMPLED),
        None => (0, 0),
    };
    let changed = if observation.carried.changed {
        FLAG_FOLDS_CHANGED
    } else {
        0
    };
    MapEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        map: observation.map,
        count: header[0],
        header_word: header[1],
        map_type: observation.map_type,
        key_hash,
        kind: observation.kind,
        flags: flags | unreadable | sampled | changed,
        folded: observation.carried.folded,
    }
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
