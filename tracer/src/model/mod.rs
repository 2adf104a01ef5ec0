//! The life of every map the tracer has seen, rebuilt from events alone.
//!
//! This module does no I/O: it is fed [`MapEvent`]s and [`CreateEvent`]s (live from the ring
//! buffer, or recorded sequences in tests and `gomaptrace replay`) and, at the end, the final
//! headers the caller could read from the target. Everything it reports follows from those
//! inputs.
//!
//! Probes only fire on entry, so each event carries the count *before* its operation. Go maps
//! are not safe for concurrent writes, so operations on one map are ordered, and the ring
//! buffer keeps that order: the effect of an operation shows in the count at the map's next
//! observation. An assign followed by a count one higher was an insert, by the same count an
//! overwrite; a delete followed by a count one lower removed a key.
//!
//! Growth is settled the same way. A classic `hashGrow` either doubles the buckets or, when
//! overflow buckets piled up, moves the entries into a new array of the same size: the
//! header's `B` at the map's next observation is one higher after a doubling only. A swiss
//! `pruneTombstones` either clears tombstones in place or frees too little and does nothing,
//! and then the table grows before the assign goes on: a growth event next means nothing was
//! pruned. So growth splits exactly into capacity growth (`grows`) and reorganisation
//! without growing (`reorganisations`), with no load-factor constants (they differ between
//! releases: Go 1.21 doubles at 6 entries per bucket, the others at 6.5).
//!
//! The hash seed in each event tells maps at the same address apart: a stack map made by a
//! later call, or a heap map reusing freed memory, has a new seed. The runtime also picks a
//! new seed when a map becomes empty through a delete or a clear, which is expected. A map
//! whose creation was seen before its seed was drawn adopts the seed of its next event.
//!
//! The garbage collector frees maps without calling any map function, so a map is only
//! known to be released when another map appears at its address (or its process exits).
//! Released maps are kept individually up to [`Limits::released_maps`], then only counted,
//! so that a program creating a map per request cannot grow the tracer without bound.
//!
//! Some writes carry their writer's call stack, interned with the creation stacks; each map
//! keeps a short list of them ([`crate::writers`]), which locates maps made before the trace.
//!
//! The observation window ends with [`Model::freeze`]: events that happen after it only settle
//! the operations still pending, so that a busy map's last operation is classified by the next
//! one, exactly as during the window. [`Model::settle_with_header`] does the same with a header read from
//! the target's memory for maps that stayed quiet.
//!
//! Layout: [`record`] is one map's state machine, `distributions` the sampled keys and the
//! histograms, `stacks` the interned call stacks; this file dispatches each input to them
//! and keeps the tables of maps.

use std::collections::HashMap;

use tracer_common::{
    classic_log2_buckets, kind, seed_from_word, CreateEvent, MapEvent, FLAG_COUNT_UNREADABLE,
    FLAG_FOLDS_CHANGED, FLAG_KEY_SAMPLED, FLAG_ON_STACK, FLAG_SEED_PENDING,
};

use crate::memory::inventory::{Sighting, Summary};
use crate::memory::release::Dropped;
use crate::plan::MapImplementation;
use crate::sampled::Polled;

mod distributions;
pub mod record;
mod stacks;

pub use distributions::Histograms;
use distributions::{record_us, record_value, SampledEntries};
use record::{Folds, KeyChange, Pending};
pub use record::{MapHeader, MapRecord, Seen};
pub use stacks::{StackId, StackTotals};

/// Bounds on what the model keeps, whatever the target does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Released maps kept individually; later ones are only counted (and still feed the
    /// histograms and per-site totals).
    pub released_maps: usize,
    /// Sampled keys followed at once; keys sampled while this many are live are not
    /// followed, and counted.
    pub sampled_entries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            released_maps: 10_000,
            sampled_entries: 100_000,
        }
    }
}

/// Most map records the table of live maps has room for, per live map, before it shrinks
/// (see [`Model::dropped`]).
pub const MAP_TABLE_SLACK: usize = 8;

/// Room the table of live maps keeps whatever the count: no shrinking below it.
pub const MIN_MAP_CAPACITY: usize = 1024;

/// Why an event could not be applied; the event is dropped and counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// The BPF side and userspace disagree on the event format.
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
}

/// Per-map state for one trace. Cloned for the exports, which build their report from a
/// copy off the event loop (see [`crate::pipeline::Pipeline::snapshot`]).
#[derive(Clone, Debug)]
pub struct Model {
    implementation: MapImplementation,
    limits: Limits,
    /// Boxed, so that the table holds a pointer a slot: it doubles in small steps while the
    /// records themselves come and go one by one.
    maps: HashMap<u64, Box<MapRecord>>,
    released: Vec<MapRecord>,
    /// Address → the last map listed in `released` that lived there: folds its writes left
    /// behind in the BPF side arrive with the next map's first record.
    released_at: HashMap<u64, usize>,
    released_unlisted: u64,
    stacks: Vec<Vec<u64>>,
    stack_ids: HashMap<Vec<u64>, StackId>,
    stack_totals: HashMap<StackId, StackTotals>,
    types_seen: Vec<u64>,
    entries: SampledEntries,
    histograms: Histograms,
    received: u64,
    malformed: u64,
    before_arming: u64,
    armed_ns: u64,
    window_end_ns: Option<u64>,
    detaching_ns: Option<u64>,
    inventory: Option<Summary>,
    /// Writes the BPF side folded that reached their map (listed, or released beyond the
    /// listed ones).
    folds_credited: u64,
    /// Writes the BPF side folded, as it counted them when the probes were gone.
    folds_total: Option<u64>,
    /// The header the tracer last read at a collection for the map at an address, given just
    /// before the record of a map that replaces it (see [`Model::collected`]).
    collected: Option<Collected>,
    /// Released maps whose last operation a collection's read settled.
    settled_at_collection: u64,
}

/// A map's header as the tracer read it right after a collection's mark termination (see
/// `tracer_common::settle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Collected {
    /// The map's address.
    pub addr: u64,
    /// Its count and second word.
    pub words: [u64; 2],
    /// The collector cycle of the read (`tracer_common::settle::CYCLES`).
    pub cycle: u32,
}

/// A map's folded writes the BPF side still held when the probes were detached, or when its
/// map was released: no record carried them (see `tracer_common::writers::FoldRun`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldFolds {
    /// The map's address.
    pub addr: u64,
    /// The header (count and second word) its last record found: the folds are the map's
    /// only while its pending operation is that record's.
    pub words: [u64; 2],
    /// Writes folded since that record.
    pub folded: u64,
    /// Whether that record and each folded write but the last changed the count by one
    /// (see `tracer_common::FLAG_FOLDS_CHANGED`).
    #[serde(default)]
    pub changed: bool,
}

impl HeldFolds {
    /// The folds a BPF-side run holds for the map at `addr`.
    pub fn of_run(addr: u64, run: &tracer_common::writers::FoldRun) -> HeldFolds {
        HeldFolds {
            addr,
            words: [run.count, run.header_word],
            folded: u64::from(run.folded),
            changed: run.changed != 0,
        }
    }

    fn folds(&self) -> Folds {
        Folds {
            writes: self.folded,
            changed: self.changed,
        }
    }
}

impl Model {
    /// An empty model for a target whose maps use `implementation`.
    pub fn new(implementation: MapImplementation, limits: Limits) -> Model {
        Model {
            implementation,
            limits,
            maps: HashMap::new(),
            released: Vec::new(),
            released_at: HashMap::new(),
            released_unlisted: 0,
            stacks: Vec::new(),
            stack_ids: HashMap::new(),
            stack_totals: HashMap::new(),
            types_seen: Vec::new(),
            entries: SampledEntries::default(),
            histograms: Histograms::new(),
            received: 0,
            malformed: 0,
            before_arming: 0,
            armed_ns: 0,
            window_end_ns: None,
            detaching_ns: None,
            inventory: None,
            folds_credited: 0,
            folds_total: None,
            collected: None,
            settled_at_collection: 0,
        }
    }

    /// Takes in the maps the inventory found at `at_ns`. A map already seen by an event
    /// keeps its record (events win); the others enter idle, with their header's count as
    /// their live count and peak. An idle map's first event is its baseline, as for any
    /// map first seen in use: it continues the same record when the seed matches, and is a
    /// new map (the old one freed) when not, so counts stay exact from the arming instant.
    pub fn inventory(&mut self, at_ns: u64, summary: Summary, sightings: &[Sighting]) {
        self.inventory = Some(summary);
        for sighting in sightings {
            if self.maps.contains_key(&sighting.addr) {
                continue;
            }
            let header = self.header_from_words(sighting.words);
            let mut record = MapRecord::new(sighting.addr, false, header, at_ns);
            record.seen = Seen::Inventory;
            record.idle = true;
            record.capacity = sighting.capacity;
            record.log2_buckets = sighting
                .capacity
                .and_then(|capacity| capacity.log2_buckets)
                .unwrap_or(0);
            self.maps.insert(sighting.addr, Box::new(record));
            self.note_type(sighting.addr, sighting.map_type);
        }
    }

    /// What the inventory did, once it finished.
    pub fn inventory_summary(&self) -> Option<&Summary> {
        self.inventory.as_ref()
    }

    /// Counts only events from `at_ns` on: the monotonic time by which every probe was
    /// attached. Probes go on one after another while a busy program keeps calling map
    /// functions; before the last one is live, some operations go unseen (deletes while only
    /// assigns are probed), and a count they changed would read as unexplained. Each map's
    /// first event after arming is its baseline, so counts are exact from that instant.
    pub fn arm(&mut self, at_ns: u64) {
        self.armed_ns = at_ns;
    }

    /// A new discovery window of `--mode sampled` is armed at `at_ns`: events count again
    /// from then on, and each known map's first event is its new baseline, as at the start
    /// of the trace (see [`Model::arm`]).
    pub fn rearm(&mut self, at_ns: u64) {
        self.armed_ns = at_ns;
        self.window_end_ns = None;
        self.detaching_ns = None;
        for record in self.maps.values_mut() {
            record.baseline_due = true;
        }
    }

    /// Headers read between discovery windows (`--mode sampled`), at `at_ns`. A header with
    /// the map's seed gives its exact count and capacity at that instant. A header with
    /// another seed that still reads as a map (a non-zero seed, no more entries than its
    /// capacity holds, a capacity no smaller than before since Go never shrinks a map nor
    /// more than [`MAX_GROWTH_BETWEEN_POLLS`] times bigger, and only known classic flags) is
    /// the map emptied, as the runtime reseeds a map a delete or
    /// clear empties, and maybe filled again between two polls, which a busy map does all
    /// the time (`clear`, then new entries); anything else is no map any more: the record is
    /// released. A map freed and its memory handed to
    /// another map between two polls is left to the heap check ([`Model::dropped`]). Polls come
    /// after a window's end, when events only settle: a map's operation still pending is
    /// first settled by the header as one read after the probes are ([`Model::settle_with_read`]).
    pub fn poll(&mut self, at_ns: u64, polled: &[Polled]) {
        for header_read in polled {
            let Some(words) = header_read.words else {
                continue;
            };
            if self
                .maps
                .get(&header_read.addr)
                .is_some_and(|record| record.is_pending())
            {
                self.settle_with_read(header_read.addr, words);
            }
            let header = self.header_from_words(words);
            let Some(record) = self.maps.get_mut(&header_read.addr) else {
                continue;
            };
            // Freed, a map's header memory may hold anything by now (a swiss group's control
            // bytes read as a count of 0x8080…), its seed word included. A reading counts
            // only if it reads as a map: a seed, and no more entries than the storage it
            // points to holds. Storage that could not be read says nothing either way.
            let reads_as_a_map = reads_as_map(self.implementation, words) && header.seed != 0;
            if reads_as_a_map && header_read.capacity.is_none() {
                continue;
            }
            let is_a_map = reads_as_a_map
                && header_read
                    .capacity
                    .is_some_and(|capacity| header.count <= capacity.slots);
            // A map whose creation was seen before its seed was written takes the first seed
            // it is read with.
            let own = record.seed_pending || header.seed == record.seed;
            let reseeded = header_read.capacity.is_some_and(|capacity| {
                // What the model last knew the map's storage to be: a poll's reading, or the
                // `B` events showed (a swiss map's first group otherwise).
                let before = record.capacity.map_or_else(
                    || {
                        8u64.checked_shl(u32::from(record.log2_buckets))
                            .unwrap_or(u64::MAX)
                    },
                    |before| before.slots,
                );
                capacity.slots >= before
                    && capacity.slots <= before.saturating_mul(MAX_GROWTH_BETWEEN_POLLS)
            });
            if !is_a_map || (!own && !reseeded) {
                if let Some(gone) = self.maps.remove(&header_read.addr) {
                    self.release(*gone, at_ns);
                }
                continue;
            }
            if header.seed == record.seed {
                record.unseen_deletes += record.live.saturating_sub(header.count);
            }
            record.live = header.count;
            record.polled_ns = at_ns;
            record.peak = record.peak.max(header.count);
            record.series.record(at_ns, header.count);
            record.seed = header.seed;
            record.seed_pending = false;
            record.log2_buckets = record.log2_buckets.max(header.log2_buckets);
            if header_read.capacity.is_some() {
                record.capacity = header_read.capacity;
            }
        }
    }

    /// The header an event read.
    fn header(&self, event: &MapEvent) -> MapHeader {
        self.header_from_words([event.count, event.header_word])
    }

    /// A header's first two words (count, and the word holding the seed) as a [`MapHeader`].
    fn header_from_words(&self, words: [u64; 2]) -> MapHeader {
        MapHeader {
            count: words[0],
            seed: seed_from_word(words[1], self.implementation.seed_shift()),
            log2_buckets: match self.implementation {
                MapImplementation::Classic => classic_log2_buckets(words[1]),
                MapImplementation::Swiss => 0,
            },
        }
    }

    /// Applies one event. Unknown kinds are counted in [`Model::malformed`] and reported.
    pub fn observe(&mut self, event: &MapEvent) -> Result<(), ModelError> {
        self.observe_with_stack(event, None)
    }

    /// Applies one creation, or one write with its writer's stack (kind `ASSIGN` or
    /// `DELETE`), interning its call stack.
    pub fn observe_create(&mut self, create: &CreateEvent) -> Result<(), ModelError> {
        let frames = &create.stack[..create.stack_len as usize];
        let mut stack = Vec::with_capacity(frames.len() + 1);
        if let Some((probed, callers)) = frames.split_first() {
            stack.push(*probed);
            // The BPF side's frame-pointer walk starts at the frame record the probed
            // function has not replaced yet: the direct caller is only in `caller`.
            if create.caller != 0 {
                stack.push(create.caller);
            }
            stack.extend_from_slice(callers);
        }
        let write = matches!(create.event.kind, kind::ASSIGN | kind::DELETE);
        let id = if stack.is_empty() {
            None
        } else if write {
            self.intern_writer(stack)
        } else {
            Some(self.intern(stack))
        };
        // The read proves the released map's last count only if no mark termination came
        // between it and this map's creation at the same address.
        let collected = self.collected.take().filter(|read| {
            !write
                && read.addr == create.event.map
                && read.cycle != 0
                && read.cycle == create.gc_cycle
        });
        self.collected = collected;
        let result = self.observe_with_stack(&create.event, id);
        self.collected = None;
        result
    }

    /// The header the tracer last read at a collection for the map at `read.addr`, which the
    /// next record (a creation at that address) may prove final: see
    /// `tracer_common::settle`. Only that record uses it.
    pub fn collected(&mut self, read: Collected) {
        self.collected = Some(read);
    }

    /// The seed bits and mask a header read at a collection is checked against for the map at
    /// `addr`, when a read could settle it: a map freed only by the collector, with an
    /// operation pending.
    pub fn collectable(&self, addr: u64) -> Option<(u64, u64)> {
        let record = self.maps.get(&addr)?;
        let collectable = record.freed_by_the_collector() && record.is_pending();
        let shift = self.implementation.seed_shift();
        collectable.then(|| (u64::from(record.seed()) << shift, 0xffff_ffff << shift))
    }

    /// Released maps whose last operation a collection's read settled.
    pub fn settled_at_collection(&self) -> u64 {
        self.settled_at_collection
    }

    fn observe_with_stack(
        &mut self,
        event: &MapEvent,
        stack: Option<StackId>,
    ) -> Result<(), ModelError> {
        self.received += 1;
        // A collection's mark termination: userspace acts on it (it reads the listed maps'
        // headers, see `Model::collected`); no map changed.
        if event.kind == kind::COLLECTED {
            return Ok(());
        }
        if event.ktime_ns < self.armed_ns {
            self.before_arming += 1;
            return Ok(());
        }
        // Folds happened before folding was switched off, at the window's end at the
        // latest: credited whenever their record comes.
        let folds = Folds {
            writes: u64::from(event.folded),
            changed: event.flags & FLAG_FOLDS_CHANGED != 0,
        };
        self.credit_folds(event.map, folds, event.ktime_ns);
        if self.detaching_ns.is_some_and(|at| event.ktime_ns >= at) {
            return Ok(());
        }
        let after_window = self.window_end_ns.is_some_and(|end| event.ktime_ns > end);
        let result = if after_window {
            self.settle_with_event(event)
        } else {
            self.apply(event, stack)
        };
        if result.is_err() {
            self.malformed += 1;
        }
        result
    }

    /// Credits writes the BPF side folded to the map known at `addr`: they came after its
    /// last record and before the one that carries them, so they are that map's, even when
    /// the record carrying them turns out to be another map's at the same address. With no
    /// map known there, they are the last released one's: its memory went to the map whose
    /// first record carries them.
    fn credit_folds(&mut self, addr: u64, folds: Folds, at_ns: u64) {
        if folds.writes == 0 {
            return;
        }
        let credited = match (self.maps.get_mut(&addr), self.released_at.get(&addr)) {
            (Some(record), _) => record.fold(folds, at_ns),
            (None, Some(&index)) => self.released[index].fold_released(folds),
            // Folds follow a record of their map, so with none known here that map was
            // released beyond the listed ones: its writes are counted nowhere per map, like
            // its other operations, and nothing listed is short of them.
            (None, None) => folds.writes,
        };
        self.folds_credited += credited;
    }

    /// Credits the folds the BPF side still held once the probes were gone, each to its map
    /// if that map's pending operation is still the record the folds followed, and takes the
    /// BPF side's count of every fold (`total`). Must come before the pending operations
    /// are settled from memory.
    pub fn held_folds(&mut self, total: u64, held: &[HeldFolds]) {
        self.folds_total = Some(total);
        for folds in held {
            let at_ns = match self.maps.get(&folds.addr) {
                Some(record) => self.runs_from_pending(folds).then_some(record.last_seen_ns),
                // A released map's folds carry no time it would use.
                None => self.released_here(folds.addr, folds.words).then_some(0),
            };
            if let Some(at_ns) = at_ns {
                self.credit_folds(folds.addr, folds.folds(), at_ns);
            }
        }
    }

    /// Whether the run `words` (the header its map's last record found) is that of a map
    /// released at `addr` and known there no more, whose run no record of its own will
    /// carry. For the last map listed there, the seed must be its own, and its run not
    /// credited yet; a map released beyond the listed ones left no record to check against.
    fn released_here(&self, addr: u64, words: [u64; 2]) -> bool {
        if self.maps.contains_key(&addr) {
            return false;
        }
        match self.released_at.get(&addr) {
            Some(&index) => {
                let record = &self.released[index];
                !record.folds_closed && record.seed() == self.header_from_words(words).seed
            }
            None => true,
        }
    }

    /// Whether `run` starts (its header) where the run following the pending operation of
    /// the map known at `addr` starts: then the run is that map's. Once part of that run was
    /// credited, the pending operation is its last credited write, as many steps on.
    fn runs_from_pending(&self, run: &HeldFolds) -> bool {
        let header = self.header_from_words(run.words);
        self.maps.get(&run.addr).is_some_and(|record| {
            record.seed() == header.seed && record.run_start(run.changed) == Some(header.count)
        })
    }

    /// Whether `run` is the run following the pending operation of the map known at its
    /// address, every write of it credited: nothing in it is left to deliver.
    pub fn credited_whole(&self, run: &HeldFolds) -> bool {
        self.runs_from_pending(run)
            && self
                .maps
                .get(&run.addr)
                .is_some_and(|record| u64::from(record.run_credited()) >= run.folded)
    }

    /// Whether a run of folds that started from `words`, found at `addr` when the map known
    /// there is about to be released, is that map's (its seed is): the run can go, since no
    /// later write of that map will take it.
    pub fn is_run_of_map_at(&self, addr: u64, words: [u64; 2]) -> bool {
        let seed = self.header_from_words(words).seed;
        self.maps
            .get(&addr)
            .is_some_and(|record| record.seed() == seed)
    }

    /// Credits a run of folds userspace read from the BPF side: a run of an epoch long past,
    /// whose map has not been written since, or the run a map about to be released left
    /// behind. It counts for the map known at its address when it is the run following
    /// that map's pending operation, and for the last map listed as released there when its
    /// seed is that map's; a run at an address where no listed map was is left to the end of
    /// the trace, or to the record that carries it. Writes of the run already credited are
    /// not counted again, whoever delivers them.
    pub fn read_run(&mut self, folds: &HeldFolds) {
        if self.runs_from_pending(folds) {
            let at_ns = self
                .maps
                .get(&folds.addr)
                .map_or(0, |record| record.last_seen_ns);
            self.credit_folds(folds.addr, folds.folds(), at_ns);
            return;
        }
        let Some(&index) = self.released_at.get(&folds.addr) else {
            return;
        };
        if !self.released_here(folds.addr, folds.words) {
            return;
        }
        self.credit_folds(folds.addr, folds.folds(), 0);
        self.released[index].folds_closed = true;
    }

    /// Writes the BPF side folded: its own count once the probes are gone, the folds
    /// credited so far before that.
    pub fn folds(&self) -> u64 {
        self.folds_total.unwrap_or(self.folds_credited)
    }

    /// Folded writes no map could be credited with: the record carrying them was lost, or a
    /// new map at their map's address took over their run while userspace read it. Folds of
    /// maps released beyond the listed ones are not among them: nothing listed is short of
    /// them.
    pub fn folds_uncredited(&self) -> u64 {
        self.folds().saturating_sub(self.folds_credited)
    }

    /// Applies one raw ring-buffer record, a creation (or a write with its writer's stack) or
    /// an operation by its size; a record of neither size is counted in [`Model::malformed`].
    pub fn observe_record(&mut self, record: &[u8]) {
        // An unknown kind is counted by `observe`.
        let _ = match record.len() {
            CreateEvent::SIZE => CreateEvent::from_bytes(record).map(|c| self.observe_create(&c)),
            MapEvent::SIZE => MapEvent::from_bytes(record).map(|e| self.observe(&e)),
            _ => None,
        }
        .unwrap_or_else(|| {
            self.received += 1;
            self.malformed += 1;
            Ok(())
        });
    }

    fn apply(&mut self, event: &MapEvent, stack: Option<StackId>) -> Result<(), ModelError> {
        let now = event.ktime_ns;
        let header = self.header(event);
        match event.kind {
            kind::CREATE => {
                let mut record = MapRecord::new(event.map, true, header, now);
                record.seed_pending = event.flags & FLAG_SEED_PENDING != 0;
                record.on_stack = event.flags & FLAG_ON_STACK != 0;
                record.stack = stack;
                self.begin(record);
                return Ok(());
            }
            kind::CLONE => {
                self.clone_filled(event.map, header, now, stack);
                return Ok(());
            }
            kind::GROW | kind::HASH_GROW | kind::PRUNE => {
                // Inside an assign: the count has not changed yet, so no operation is
                // resolved; a growth seen before the assign itself is not the map's.
                let readable = event.flags & FLAG_COUNT_UNREADABLE == 0;
                if let Some(record) = self.maps.get_mut(&event.map) {
                    record.grow(event.kind, header, readable);
                }
                self.note_type(event.map, event.map_type);
                return Ok(());
            }
            _ => {}
        }
        let operation = operation(event)?;
        if self
            .maps
            .get(&event.map)
            .is_some_and(|record| now <= record.polled_ns)
        {
            return Ok(());
        }
        let readable = event.flags & FLAG_COUNT_UNREADABLE == 0;
        let known = self.maps.get(&event.map);
        if readable && known.is_some_and(|record| record.idle && record.owns(header)) {
            self.wake(event.map, header, now);
        }
        let known = self.maps.get(&event.map);
        if readable
            && known.is_some_and(|record| {
                !record.owns(header) && !record.reseeded_unseen(header, event.map_type)
            })
        {
            self.begin(MapRecord::new(event.map, false, header, now));
        }
        let record = self
            .maps
            .entry(event.map)
            .or_insert_with(|| Box::new(MapRecord::new(event.map, false, header, now)));
        record.last_seen_ns = now;
        if !readable {
            record.abandon();
            record.unexplained += 1;
            return Ok(());
        }
        if record.baseline_due {
            record.rebase(header, now);
        }
        let change = record.resolve(header);
        if matches!(operation, Pending::Clear { .. }) {
            record.clears += 1;
        }
        record.pending = Some(operation);
        record.writers.start(stack);
        let addr = event.map;
        self.follow_key(addr, change);
        self.note_type(addr, event.map_type);
        Ok(())
    }

    /// The first event on a map the inventory found idle: the same map (its seed matched)
    /// starts over from this event's header, as a map first seen in use does.
    fn wake(&mut self, addr: u64, header: MapHeader, now: u64) {
        let mut fresh = MapRecord::new(addr, false, header, now);
        fresh.seen = Seen::Inventory;
        if let Some(idle) = self.maps.insert(addr, Box::new(fresh)) {
            self.note_type(addr, idle.map_type);
        }
    }

    /// Remembers the map's type the first time an operation passes it.
    fn note_type(&mut self, addr: u64, map_type: u64) {
        if map_type == 0 {
            return;
        }
        if let Some(record) = self.maps.get_mut(&addr) {
            if record.map_type == 0 {
                record.map_type = map_type;
                if !self.types_seen.contains(&map_type) {
                    self.types_seen.push(map_type);
                }
            }
        }
    }

    /// A clone returned, holding entries no assign put there. When its create was seen
    /// inside the clone (Go ≤ 1.24) the clone completes that map; on 1.25+ this is its first
    /// sighting.
    fn clone_filled(&mut self, addr: u64, header: MapHeader, now: u64, stack: Option<StackId>) {
        let known = self
            .maps
            .get(&addr)
            .is_some_and(|record| record.created && record.owns(header));
        if !known {
            self.begin(MapRecord::new(addr, true, header, now));
        }
        if let Some(record) = self.maps.get_mut(&addr) {
            record.cloned = true;
            record.live = header.count;
            record.series.record(now, header.count);
            record.seed = header.seed;
            record.seed_pending = false;
            record.peak = record.peak.max(header.count);
            record.last_seen_ns = now;
            if let Some(stack) = stack {
                // The clone's own call site, not the constructor call inside the clone.
                if let Some(inner) = record.stack.replace(stack) {
                    self.stack_totals.entry(inner).or_default().created -= 1;
                }
                self.stack_totals.entry(stack).or_default().created += 1;
            }
        }
    }

    /// After the window: an event only settles its map's pending operation, and a growth
    /// only says that a prune inside the window cleared nothing (the growth itself is not
    /// counted).
    fn settle_with_event(&mut self, event: &MapEvent) -> Result<(), ModelError> {
        match event.kind {
            kind::CREATE | kind::CLONE => {
                // Another map at this address: the one known there is gone, and its last
                // operation can no longer be observed.
                if let Some(record) = self.maps.get_mut(&event.map) {
                    record.abandon();
                }
            }
            kind::HASH_GROW | kind::PRUNE => {}
            kind::GROW => {
                if let Some(record) = self.maps.get_mut(&event.map) {
                    record.cancel_prune();
                }
            }
            _ => {
                operation(event)?;
                if event.flags & FLAG_COUNT_UNREADABLE == 0 {
                    self.settle_with_header(event.map, self.header(event));
                }
            }
        }
        Ok(())
    }

    /// Starts a new record at its address; the map that lived there before is gone.
    fn begin(&mut self, fresh: MapRecord) {
        if let Some(stack) = fresh.stack {
            self.stack_totals.entry(stack).or_default().created += 1;
        }
        let now = fresh.first_seen_ns;
        if let Some(gone) = self.maps.insert(fresh.addr, Box::new(fresh)) {
            self.release(*gone, now);
        }
    }

    /// Files a map away as gone at `now`.
    fn release(&mut self, mut gone: MapRecord, now: u64) {
        if let Some(read) = self.collected.take_if(|read| read.addr == gone.addr) {
            self.settle_collected(&mut gone, read.words);
        }
        gone.abandon();
        gone.released_ns = Some(now);
        self.entries.take_map(gone.addr);
        if let Some(stack) = gone.stack {
            self.stack_totals.entry(stack).or_default().released += 1;
        }
        record_value(&mut self.histograms.map_peak_entries, gone.peak);
        record_us(&mut self.histograms.map_lifetime_us, gone.lifetime_ns(now));
        if self.released.len() < self.limits.released_maps {
            self.released_at.insert(gone.addr, self.released.len());
            self.released.push(gone);
        } else {
            // An older listed map at this address is not the one its successor follows.
            self.released_at.remove(&gone.addr);
            self.released_unlisted += 1;
        }
    }

    /// Settles the pending operation of a map released with the header a collection read:
    /// final, since the map was already unreachable then (the caller checked the cycle), as
    /// long as it is the map's own and a possible outcome of that operation.
    fn settle_collected(&mut self, gone: &mut MapRecord, words: [u64; 2]) {
        let header = self.header_from_words(words);
        let provable = gone.freed_by_the_collector() && gone.is_pending();
        if provable && gone.owns(header) && gone.could_follow(header) {
            let change = gone.resolve(header);
            self.follow_key(gone.addr, change);
            self.settled_at_collection += 1;
        }
    }

    /// Ends the observation window at monotonic time `end_ns`: events that happened later
    /// only settle pending operations. Events from before it that are still in flight apply
    /// normally. A window already ended earlier stays ended then (`--mode sampled` ends
    /// each discovery window, and the trace's end comes later).
    pub fn freeze(&mut self, end_ns: u64) {
        self.window_end_ns = Some(self.window_end_ns.map_or(end_ns, |ended| ended.min(end_ns)));
    }

    /// The probes start going away at `at_ns`, one after another: from then on an event may
    /// come from a probe whose siblings are already gone (an assign seen after unseen
    /// deletes), so its count proves nothing and it settles nothing. What is still pending
    /// is left to a read of the map's header, which settles only a possible outcome.
    pub fn detaching(&mut self, at_ns: u64) {
        self.detaching_ns = Some(at_ns);
    }

    /// Addresses of the maps whose last operation waits for a final count.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.maps
            .values()
            .filter(|record| record.is_pending())
            .map(|record| record.addr)
    }

    /// Maps whose last operation still waits for a count, and that had no record since
    /// `before_ns`, with the time of their last record: the ones a read of the target's
    /// memory may settle while the trace goes on (see [`Model::settle_quiet`]).
    pub fn quiet_pending(&self, before_ns: u64) -> Vec<(u64, u64)> {
        self.maps
            .values()
            .filter(|record| record.is_pending() && record.last_seen_ns < before_ns)
            .map(|record| (record.addr, record.last_seen_ns))
            .collect()
    }

    /// Settles the pending operation of a map no longer written with its header `words`,
    /// read while the probes are attached. The session reads it only when no write can have
    /// gone unseen since the map's last record (`seen_ns`), which it checks after the read:
    /// no record came, and no run of folds was opened. Even so, the header settles only an
    /// operation it is a possible outcome of, and anything else is left for later.
    pub fn settle_quiet(&mut self, addr: u64, words: [u64; 2], seen_ns: u64) {
        let header = self.header_from_words(words);
        let quiet = self.maps.get(&addr).is_some_and(|record| {
            record.last_seen_ns == seen_ns && record.owns(header) && record.could_follow(header)
        });
        if quiet {
            self.settle_with_header(addr, header);
        }
    }

    /// Resolves the map's pending operation with a header seen after the window (the next
    /// event, or a read of the target's memory). A header from another map is not used.
    pub fn settle_with_header(&mut self, addr: u64, header: MapHeader) {
        let Some(record) = self.maps.get_mut(&addr) else {
            return;
        };
        if !record.is_pending() {
            return;
        }
        if record.owns(header) {
            let change = record.resolve(header);
            self.follow_key(addr, change);
        } else {
            record.abandon();
        }
    }

    /// Settles with a raw header (count and second word) read from the target's memory.
    ///
    /// Memory is read after the probes are gone, so it proves nothing by itself: the map may
    /// have been freed and its memory reused by another object (whose first words can even
    /// keep the old seed), or it may have gone on changing unseen. Such a header settles the
    /// pending operation only when it is one of that operation's possible outcomes; anything
    /// else leaves it unsettled rather than taking a count that no observed operation made.
    pub fn settle_with_read(&mut self, addr: u64, words: [u64; 2]) {
        let header = self.header_from_words(words);
        match self.maps.get_mut(&addr) {
            Some(record) if record.is_pending() && !record.could_follow(header) => record.abandon(),
            _ => self.settle_with_header(addr, header),
        }
    }

    /// Gives up on every operation still pending: the target is gone, its counts with it.
    pub fn abandon_pending(&mut self) {
        self.maps.values_mut().for_each(|record| record.abandon());
    }

    /// The process exited at `now`: every map it held is released with it.
    pub fn release_all(&mut self, now: u64) {
        let mut gone: Vec<MapRecord> = self.maps.drain().map(|(_, record)| *record).collect();
        gone.sort_by_key(|record| (record.first_seen_ns, record.addr));
        for record in gone {
            self.release(record, now);
        }
    }

    /// Whether [`Model::dropped`] releases the map: what the session asks before it reads the
    /// map's last run of folds from the BPF side, which is safe only once no write can come.
    pub fn releases(&self, dropped: &Dropped) -> bool {
        let Some(record) = self.maps.get(&dropped.addr) else {
            return false;
        };
        if record.seed != dropped.seed || record.last_seen_ns != dropped.last_seen_ns {
            return false;
        }
        let header = dropped.words.map(|words| self.header_from_words(words));
        let owned = header.is_some_and(|header| record.owns(header));
        dropped.freed || dropped.reused || (header.is_some() && !owned)
    }

    /// Maps not known to be released, in no particular order: the ones whose memory is
    /// checked for a drop.
    pub fn live_maps(&self) -> impl Iterator<Item = &MapRecord> + '_ {
        self.maps.values().map(Box::as_ref)
    }

    /// The target's memory says the map at `dropped.addr` may be gone. It is released (at
    /// `dropped.at_ns`) only if it is still the map that was checked (same seed, no event
    /// since), and then only when the heap freed it or holds another object there, or its
    /// header now reads as another map or another object. A freed map's header still holds
    /// its last count, which settles its last operation when it reads as the map's own last
    /// state.
    pub fn dropped(&mut self, dropped: &Dropped) {
        if !self.releases(dropped) {
            return;
        }
        let header = dropped.words.map(|words| self.header_from_words(words));
        let Some(record) = self.maps.get_mut(&dropped.addr) else {
            return;
        };
        let owned = header.filter(|&header| record.owns(header));
        let other = dropped.reused || header.is_some_and(|_| owned.is_none());
        let last_state = owned.filter(|&header| !other && record.is_last_state(header));
        if let Some(header) = last_state {
            let change = record.resolve(header);
            self.follow_key(dropped.addr, change);
        }
        if let Some(gone) = self.maps.remove(&dropped.addr) {
            self.release(*gone, dropped.at_ns);
            self.shrink_maps();
        }
    }

    /// Gives back the table space of maps released since the live count peaked: a hash
    /// table keeps its largest capacity, and every interval's copy of the model is made at
    /// that capacity. Shrinks to twice the live maps once capacity exceeds eight times them,
    /// so that after a release the table has room for at most [`MAP_TABLE_SLACK`] maps per
    /// live map (plus [`MIN_MAP_CAPACITY`]), and each shrink is paid for by the releases
    /// before it. The slack is wide so that live counts rising and falling with the target's
    /// GC cycles do not make the table shrink and grow again every cycle.
    fn shrink_maps(&mut self) {
        let live = self.maps.len();
        if self.maps.capacity() > MAP_TABLE_SLACK * live + MIN_MAP_CAPACITY {
            self.maps.shrink_to(2 * live);
        }
    }

    /// Every map listed individually, freed ones included, in order of first sighting.
    pub fn maps(&self) -> Vec<&MapRecord> {
        let mut all: Vec<&MapRecord> = self
            .released
            .iter()
            .chain(self.maps.values().map(Box::as_ref))
            .collect();
        all.sort_by_key(|record| (record.first_seen_ns, record.addr));
        all
    }

    /// Released maps not listed individually (beyond [`Limits::released_maps`]).
    pub fn released_unlisted(&self) -> u64 {
        self.released_unlisted
    }

    /// Map-type pointers in order of first sighting: the caller resolves each once.
    pub fn types_seen(&self) -> &[u64] {
        &self.types_seen
    }

    /// Events applied or rejected.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Events rejected as malformed.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Events that fired while the probes were still being attached, and were not counted
    /// (see [`Model::arm`]).
    pub fn before_arming(&self) -> u64 {
        self.before_arming
    }
}

/// How much a map's storage may grow between two polls and still read as the same map after
/// a new seed: four doublings. More is a foreign header (a `B` read from a pointer), not a
/// map cleared and refilled within one `--poll`.
const MAX_GROWTH_BETWEEN_POLLS: u64 = 16;

/// Whether a header's words can be a map's: a classic header's flags byte (the low byte of
/// its second word) has only the runtime's four flag bits; a swiss header has no such byte.
fn reads_as_map(implementation: MapImplementation, words: [u64; 2]) -> bool {
    match implementation {
        MapImplementation::Classic => words[1] & 0xf0 == 0,
        MapImplementation::Swiss => true,
    }
}

fn operation(event: &MapEvent) -> Result<Pending, ModelError> {
    let key = (event.flags & FLAG_KEY_SAMPLED != 0).then_some(event.key_hash);
    let at_ns = event.ktime_ns;
    match event.kind {
        kind::ASSIGN => Ok(Pending::Assign {
            before: event.count,
            key,
            at_ns,
            credited: 0,
        }),
        kind::DELETE => Ok(Pending::Delete {
            before: event.count,
            key,
            at_ns,
            credited: 0,
        }),
        kind::CLEAR => Ok(Pending::Clear { at_ns }),
        other => Err(ModelError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod tests;
