//! Per-map write state: which writes carry a stack, and which are folded instead of sent.
//!
//! Writer stacks say which code writes to a map, for maps whose creation was not seen: a map
//! made before the trace has no creation stack, so the only way to point at it in the
//! program's source is the code that writes to it. Taking a stack per write would cost every
//! assign a frame-pointer walk and a 320-byte record, so one entry per map address (`WRITERS`,
//! one lookup per write) picks the writes that carry one: the first few of each map, then a
//! sparse sample (`tracer_common::writers`). Creation and clone probes start their map's
//! counter past the first writes, so per-request maps never pay the dense part.
//!
//! The same entry decides which writes need no record (`tracer_common::writers::WriterState`):
//! a write of the kind of the map's last record whose header shows what the write before it
//! did (nothing, or one entry more or less, the same for the whole run), in the fold epoch
//! of that write, is folded, not sent. Its count goes to `FOLD_RUNS`, a hash the kernel never
//! evicts, so a fold is never lost with an evicted `WRITERS` entry: the map's next record, or
//! userspace once the map is quiet or gone, takes the run. Each folded write costs a few map
//! lookups (its state, the epoch, its run, the fold counter) instead of a ring-buffer record
//! and a clock read, which is most of a traced write's cost.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use tracer_common::{
    kind,
    writers::{self, FoldRun, WriterState, MAX_FOLDED},
};

use crate::{
    emit::{emit, emit_create, CarriedRun, EmitError, Observation},
    entry::read_entry,
    go_abi,
    stack_copy::StackCopy,
};

/// Map address → its write state. LRU, so that it stays bounded whatever the target does: a
/// map evicted and written again starts over with its first writes, and its next record
/// takes the run its evicted entry had open.
#[map]
static WRITERS: LruHashMap<u64, WriterState> = LruHashMap::with_max_entries(writers::MAPS, 0);

/// Map address → its open run of folded writes. Not LRU: the kernel must never drop a run,
/// so a run that cannot be stored is not folded (its write is sent).
#[map]
static FOLD_RUNS: HashMap<u64, FoldRun> = HashMap::with_max_entries(writers::RUNS, 0);

/// Maps made while tracing that have no `WRITERS` entry yet, by slot (see
/// `tracer_common::writers::STATE_AFTER`). Shared by every CPU, since a goroutine may move
/// between its map's creation and its writes: two programs racing for a slot only cost a
/// map its young-map slot, and so the earlier entry.
#[map]
static YOUNG_MAPS: Array<YoungMap> = Array::with_max_entries(writers::YOUNG_SLOTS, 0);

/// A map made while tracing, before its `WRITERS` entry: its address, and the writes
/// counted so far, which pick the writes that carry a stack.
#[repr(C)]
#[derive(Clone, Copy)]
struct YoungMap {
    addr: u64,
    writes: u32,
    _pad: u32,
}

/// See `tracer_common::maps::FOLDING`.
#[map]
static FOLDING: Array<u32> = Array::with_max_entries(1, 0);

/// See `tracer_common::maps::FOLDED`.
#[map]
static FOLDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Records an assign or delete entry of `kind`: folded when it repeats the map's last record,
/// else sent, with the writer's call stack when the map's counter samples this write.
#[inline(always)]
pub fn observe_write(ctx: &ProbeContext, kind: u8) -> Result<(), EmitError> {
    let mut observation = read_entry(ctx, kind);
    if observation.map == 0 {
        return Ok(());
    }
    let Some(state) = WRITERS.get_ptr_mut(observation.map) else {
        let seen = match young_write(observation.map) {
            Some(Young::Counted(seen)) => return send(ctx, observation, writers::sampled(seen)),
            Some(Young::Grown(seen)) => seen,
            // Not seen created: its entry may have been evicted with a run open, which this
            // record then carries.
            None => {
                observation.carried = take_run(observation.map);
                0
            }
        };
        // A failed insert only means the next write tries again.
        let state = fresh_state(&observation, seen + 1, fold_epoch());
        let _ = WRITERS.insert(observation.map, state, 0);
        return send(ctx, observation, writers::sampled(seen));
    };
    // SAFETY: the pointer is to this map's entry; Go serialises writes to one map, so no
    // other program updates it meanwhile (a racing program loses at most a sample or a fold).
    let state = unsafe { &mut *state };
    let seen = state.writes;
    state.writes = seen.wrapping_add(1);
    let with_stack = writers::sampled(seen);
    let repeat = if with_stack {
        None
    } else {
        repeats(state, &observation)
    };
    let epoch = fold_epoch();
    if let (Some(changed), Some([count, _])) = (repeat, observation.header) {
        let same_epoch = epoch != 0 && state.epoch == epoch;
        if same_epoch && extend_run(observation.map, state, changed, epoch) {
            state.folded += 1;
            state.changes = u8::from(changed);
            state.count = count;
            count_fold();
            return Ok(());
        }
    }
    // A repeat that could not extend its run found a run it did not open (left by an
    // evicted entry, or by a map that was at this address before): this record carries it.
    if state.folded > 0 || repeat.is_some() {
        observation.carried = take_run(observation.map);
    }
    *state = fresh_state(&observation, state.writes, epoch);
    send(ctx, observation, with_stack)
}

/// Counts one more folded write in the map's run, opening the run on its first fold. False
/// when the run cannot be stored (the table is full, or holds a run this state did not
/// open), and the write must be sent. The caller checked that the map's last write was of
/// this epoch, so the run is too.
#[inline(always)]
fn extend_run(map: u64, state: &WriterState, changed: bool, epoch: u32) -> bool {
    if state.folded == 0 {
        let run = FoldRun {
            folded: 1,
            changed: u8::from(changed),
            _pad: 0,
            epoch,
            count: state.count,
            header_word: state.header_word,
        };
        return FOLD_RUNS.insert(map, run, u64::from(BPF_NOEXIST)).is_ok();
    }
    let Some(run) = FOLD_RUNS.get_ptr_mut(map) else {
        // Userspace took the run (it judged the map gone): nothing to extend.
        return false;
    };
    // SAFETY: this map's run; its writes are serialised, as for `WRITERS`.
    unsafe { (*run).folded += 1 };
    true
}

/// Takes the map's open run, if any, for the record being sent: the record carries it, and
/// the run is closed.
#[inline(always)]
fn take_run(map: u64) -> CarriedRun {
    // SAFETY: the values are copied out before the entry is removed.
    let Some(run) = (unsafe { FOLD_RUNS.get(map) }).copied() else {
        return CarriedRun::default();
    };
    let _ = FOLD_RUNS.remove(map);
    CarriedRun {
        folded: run.folded,
        changed: run.changed != 0,
    }
}

/// Whether this write can fold into the map's open run (or open one): same kind as the
/// map's last record, no sampled key (whose fate userspace must learn from the next header),
/// folding on, and a header that shows what the write before it did: the same second word,
/// and the same count (it changed nothing) or one entry more for an assign, one less for a
/// delete (it changed the count), as every write before it in the run did.
/// `Some(changed)`; the caller also checks that the map's last write was of this epoch.
#[inline(always)]
fn repeats(state: &WriterState, observation: &Observation) -> Option<bool> {
    let [count, header_word] = observation.header?;
    if state.kind != observation.kind
        || state.header_word != header_word
        || state.folded == MAX_FOLDED
        || observation.key_hash.is_some()
    {
        return None;
    }
    let changed_by_one = if observation.kind == kind::ASSIGN {
        state.count.wrapping_add(1)
    } else {
        state.count.wrapping_sub(1)
    };
    let changed = if count == state.count {
        false
    } else if count == changed_by_one {
        true
    } else {
        return None;
    };
    let same_step = state.folded == 0 || state.changes == u8::from(changed);
    same_step.then_some(changed)
}

/// The state a record leaves: later writes fold into it unless it carried a sampled key or
/// no header.
#[inline(always)]
fn fresh_state(observation: &Observation, writes: u32, epoch: u32) -> WriterState {
    let ([count, header_word], kind) = match (observation.header, observation.key_hash) {
        (Some(header), None) => (header, observation.kind),
        _ => ([0, 0], 0),
    };
    WriterState {
        writes,
        folded: 0,
        kind,
        changes: 0,
        count,
        header_word,
        epoch,
        _pad: 0,
    }
}

/// Sends the write, with its stack when sampled.
#[inline(always)]
fn send(ctx: &ProbeContext, observation: Observation, with_stack: bool) -> Result<(), EmitError> {
    if !with_stack {
        return emit(observation);
    }
    // The probe sits before the callee pushes its frame (right after the stack check), so the
    // frame-pointer walk starts at the caller's caller: the direct caller is the return
    // address at `[SP]` (amd64) or in the link register (arm64).
    let caller = go_abi::return_address(ctx);
    let copy = StackCopy::read(go_abi::stack_pointer(ctx));
    emit_create(ctx, observation, caller, 0, copy.as_ref())
}

/// The current fold epoch, 0 while writes must not be folded (see
/// `tracer_common::maps::FOLDING`).
#[inline(always)]
fn fold_epoch() -> u32 {
    FOLDING.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn count_fold() {
    if let Some(folded) = FOLDED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, so no other program writes it concurrently.
        unsafe { *folded += 1 };
    }
}

/// A creation (or clone) of `map` was seen: its writes only need the sparse sample, and the
/// folds of the map that was at this address before go with this record. An entry left by
/// that map is started over in place; else the map is remembered as young, and gets its
/// entry only if it is written more than a few times.
#[inline(always)]
pub fn mark_created(map: u64) -> CarriedRun {
    if map == 0 {
        return CarriedRun::default();
    }
    match WRITERS.get_ptr_mut(map) {
        // SAFETY: as in `observe_write`; the map before at this address is gone.
        Some(state) => unsafe {
            // No run open and no record to fold into (`kind` 0 never repeats), so the other
            // fields are never read before the map's next record rewrites them. Three stores:
            // a whole fresh `WriterState` became a call to the BPF side's byte-at-a-time
            // `memset`.
            (*state).writes = writers::FIRST_WRITES;
            (*state).folded = 0;
            (*state).kind = 0;
        },
        None => {
            if let Some(slot) = YOUNG_MAPS.get_ptr_mut(young_slot(map)) {
                let young = YoungMap {
                    addr: map,
                    writes: writers::FIRST_WRITES,
                    _pad: 0,
                };
                // SAFETY: a slot of a plain array; a racing program only takes the slot.
                unsafe { *slot = young };
            }
        }
    }
    take_run(map)
}

/// What a write to a map without a `WRITERS` entry found in the young-map slots.
enum Young {
    /// A young map: the write is counted, and the map still needs no entry.
    Counted(u32),
    /// A young map that has now been written enough to get its entry.
    Grown(u32),
}

/// Counts a write to `map` in its young-map slot, if it holds that map; `seen` is the
/// writes before this one.
#[inline(always)]
fn young_write(map: u64) -> Option<Young> {
    let slot = YOUNG_MAPS.get_ptr_mut(young_slot(map))?;
    // SAFETY: a slot of a plain array; a racing program only takes the slot.
    let young = unsafe { &mut *slot };
    if young.addr != map {
        return None;
    }
    let seen = young.writes;
    if seen < writers::FIRST_WRITES + writers::STATE_AFTER {
        young.writes = seen + 1;
        return Some(Young::Counted(seen));
    }
    young.addr = 0;
    Some(Young::Grown(seen))
}

/// The young-map slot `map` uses: map headers (48 bytes, classic or swiss) made on the heap
/// come from a 16-byte-aligned size class, so the bits above those four spread them (a
/// header on a goroutine stack is only 8-byte aligned, and may share a slot a bit sooner).
#[inline(always)]
fn young_slot(map: u64) -> u32 {
    ((map >> 4) as u32) & (writers::YOUNG_SLOTS - 1)
}

/// Takes the map's folded writes for a record of another kind (a clear), which also ends the
/// fold: the next write is sent.
#[inline(always)]
pub fn take_folded(map: u64) -> CarriedRun {
    if map == 0 {
        return CarriedRun::default();
    }
    if let Some(state) = WRITERS.get_ptr_mut(map) {
        // SAFETY: as in `observe_write`.
        let state = unsafe { &mut *state };
        state.folded = 0;
        state.kind = 0;
    }
    take_run(map)
}
