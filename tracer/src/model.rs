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
//! one, exactly as during the window. [`Model::settle`] does the same with a header read from
//! the target's memory for maps that stayed quiet.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use tracer_common::{
    classic_log2_buckets, kind, seed_from_word, CreateEvent, MapEvent, FLAG_COUNT_UNREADABLE,
    FLAG_KEY_SAMPLED, FLAG_SEED_PENDING,
};

use crate::memory::inventory::{Capacity, Sighting, Summary};
use crate::memory::release::Dropped;
use crate::plan::MapImplementation;
use crate::sampled::Polled;
use crate::trend::Series;
use crate::writers::{self, Writers};

/// An operation whose effect is only known once the map's count is seen again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Assign {
        before: u64,
        key: Option<u32>,
        at_ns: u64,
    },
    Delete {
        before: u64,
        key: Option<u32>,
        at_ns: u64,
    },
    Clear {
        at_ns: u64,
    },
}

/// A growth whose kind is only known once the map's header is seen again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingGrowth {
    /// Classic `hashGrow` entered with `B` = `log2_buckets`: a doubling if the next header's
    /// `B` is higher, else a same-size reorganisation.
    Buckets { log2_buckets: u8 },
    /// Swiss `pruneTombstones` entered: tombstones were cleared in place unless the map grows
    /// before its next operation.
    Prune,
}

/// What a map header said at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Element count (`len(m)`).
    pub count: u64,
    /// Hash seed (see [`seed_from_word`]).
    pub seed: u32,
    /// Classic maps' `B`, log2 of the bucket count (see [`classic_log2_buckets`]); 0 for swiss
    /// maps. It tells a doubling from a same-size growth.
    pub log2_buckets: u8,
}

/// How the tracer first learned of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seen {
    /// Its creation (or clone) was probed.
    Creation,
    /// An operation on it, made before the trace (or on a stack), was probed.
    Event,
    /// The inventory at attach found it: through a package-level variable, or by scanning
    /// the heap.
    Inventory,
}

/// Interned creation stack: an index into [`Model::stacks`].
pub type StackId = u32;

/// Everything known about one map, from its first sighting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRecord {
    /// Header address, equal to Go's `%p` of the map.
    pub addr: u64,
    /// Seen being created, rather than first seen already in use.
    pub created: bool,
    /// Element count after the last operation whose effect is known.
    pub live: u64,
    /// Element count when first seen: 0 for maps seen created, else what the map already
    /// held when tracing began.
    pub first_count: u64,
    /// Highest element count seen.
    pub peak: u64,
    /// Assignments that added a key.
    pub inserts: u64,
    /// Assignments to a key that was already present.
    pub overwrites: u64,
    /// Deletes that removed a present key.
    pub deletes: u64,
    /// `mapclear` calls (`clear(m)`, the range-delete idiom).
    pub clears: u64,
    /// Times the map's capacity grew: a classic doubling of the buckets; a swiss map's first
    /// group, first table, a table doubled, or a table split in two.
    pub grows: u64,
    /// Times the map was reorganised without growing: a classic same-size growth (too many
    /// overflow buckets), or swiss tombstones cleared in place (Go 1.25+).
    pub reorganisations: u64,
    /// Made by a clone (`maps.Clone`): it started with the source's entries.
    pub cloned: bool,
    /// Count changes that no observed operation explains: lost events, or runtime paths
    /// without a probe. Zero means every number above is exact.
    pub unexplained: u64,
    /// Operations whose effect was never observed because the map (or the whole target) was
    /// gone before its count could be seen again. At most one per map.
    pub unsettled: u64,
    /// When it was known to be gone (another map appeared at its address, or the process
    /// exited), in monotonic nanoseconds.
    pub released_ns: Option<u64>,
    /// Monotonic time of the first and last event, in nanoseconds.
    pub first_seen_ns: u64,
    /// See `first_seen_ns`.
    pub last_seen_ns: u64,
    /// When an assign last added a key.
    pub last_insert_ns: Option<u64>,
    /// The map-type pointer in the target (0 until an operation that passes it is seen).
    pub map_type: u64,
    /// Where it was created, when that was seen.
    pub stack: Option<StackId>,
    /// Largest classic `B` (log2 of the bucket count) seen in its header; 0 for swiss maps.
    pub log2_buckets: u8,
    /// Its entry count over time, for the leak verdict's trend (constant size per map).
    pub series: Series,
    /// Stacks of the code that wrote to it, from the sampled writes that carried one.
    pub writers: Writers,
    /// How it was first seen.
    pub seen: Seen,
    /// Found by the inventory and not operated on since: its counts are its header's.
    pub idle: bool,
    /// The capacity its header showed when the inventory read it, while it stays idle, or
    /// at the last poll of `--mode sampled`.
    pub capacity: Option<Capacity>,
    /// `--mode sampled`: entries that polls saw go while no probe was attached (the count
    /// fell under the same seed, which only deletes do: an emptying delete or a clear draws a
    /// new one). A lower bound; not in `deletes`, which counts what the windows saw.
    pub unseen_deletes: u64,
    /// `--mode sampled`: when a poll last read its header (0: never). An event from before
    /// then that arrives later (its program was preempted before it committed the record)
    /// is already in that header, and is not applied again.
    polled_ns: u64,
    /// `--mode sampled`: a discovery window began since its last event, so its next event
    /// is a baseline (it changed unseen between windows), not an outcome to explain.
    baseline_due: bool,
    seed: u32,
    seed_pending: bool,
    pending: Option<Pending>,
    growth: Option<PendingGrowth>,
}

impl MapRecord {
    fn new(addr: u64, created: bool, header: Header, now_ns: u64) -> MapRecord {
        MapRecord {
            addr,
            created,
            live: header.count,
            first_count: header.count,
            peak: header.count,
            inserts: 0,
            overwrites: 0,
            deletes: 0,
            clears: 0,
            grows: 0,
            reorganisations: 0,
            cloned: false,
            unexplained: 0,
            unsettled: 0,
            released_ns: None,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            last_insert_ns: None,
            map_type: 0,
            stack: None,
            log2_buckets: 0,
            series: Series::new(now_ns, header.count),
            writers: Writers::default(),
            seen: if created { Seen::Creation } else { Seen::Event },
            idle: false,
            capacity: None,
            unseen_deletes: 0,
            polled_ns: 0,
            baseline_due: false,
            seed: header.seed,
            seed_pending: false,
            pending: None,
            growth: None,
        }
    }

    /// Known to be gone.
    pub fn is_released(&self) -> bool {
        self.released_ns.is_some()
    }

    /// How long the map has lived, from its creation (or first sighting) to its release or
    /// `end_ns`.
    pub fn lifetime_ns(&self, end_ns: u64) -> u64 {
        self.released_ns
            .unwrap_or(end_ns)
            .saturating_sub(self.first_seen_ns)
    }

    /// Whether `header` can belong to this map: the same seed, a map whose seed was not drawn
    /// yet when its creation was seen, or a new seed the runtime picked because the pending
    /// delete (of its last entry) or clear left the map empty. An empty header with a new seed
    /// after a delete from a bigger map is another map: one made later at the same address.
    fn owns(&self, header: Header) -> bool {
        let reseeded = header.count == 0
            && matches!(
                self.pending,
                Some(Pending::Delete { before: 1, .. } | Pending::Clear { .. })
            );
        self.seed_pending || header.seed == self.seed || reseeded
    }

    /// Whether `header`, read from memory the map may no longer own, is its own last state:
    /// its exact seed, and a count its pending operation explains. Freed memory can be
    /// reused, zeroed or returned to the system at any time, so anything else is not used.
    fn is_last_state(&self, header: Header) -> bool {
        header.seed == self.seed
            && !self.seed_pending
            && self.pending.is_some()
            && self.could_follow(header)
    }

    /// Accounts for the pending operation now that the header reads `observed`, and says
    /// what happened to the sampled key it carried (and when the operation ran).
    fn resolve(&mut self, observed: Header) -> Option<(KeyChange, u64)> {
        let (inserts, deletes) = (self.inserts, self.deletes);
        self.settle_growth(observed);
        self.log2_buckets = self.log2_buckets.max(observed.log2_buckets);
        let count = observed.count;
        let mut change = None;
        let at_ns = match self.pending {
            Some(Pending::Assign { at_ns, .. } | Pending::Delete { at_ns, .. })
            | Some(Pending::Clear { at_ns }) => at_ns,
            None => self.last_seen_ns,
        };
        let explained = match self.pending.take() {
            Some(Pending::Assign { before, key, at_ns }) if count == before + 1 => {
                self.inserts += 1;
                self.last_insert_ns = Some(at_ns);
                change = key.map(|key| (KeyChange::Inserted(key), at_ns));
                true
            }
            Some(Pending::Assign { before, .. }) if count == before => {
                self.overwrites += 1;
                true
            }
            Some(Pending::Delete { before, key, at_ns }) if count + 1 == before => {
                self.deletes += 1;
                change = key.map(|key| (KeyChange::Deleted(key), at_ns));
                true
            }
            Some(Pending::Delete { before, .. }) => count == before,
            Some(Pending::Clear { at_ns }) => {
                change = Some((KeyChange::Cleared, at_ns));
                count == 0
            }
            Some(Pending::Assign { .. }) => false,
            None => count == self.live,
        };
        if !explained {
            self.unexplained += 1;
        }
        self.writers
            .resolve(self.inserts - inserts, self.deletes - deletes);
        self.live = count;
        self.series.record(at_ns, count);
        self.seed = observed.seed;
        self.seed_pending = false;
        self.peak = self.peak.max(count);
        change
    }

    /// Takes `header`, the first of a new discovery window, as the map's state: whatever
    /// happened between windows was not observed, and is neither counted nor unexplained.
    fn rebase(&mut self, header: Header, now: u64) {
        self.baseline_due = false;
        self.abandon();
        self.live = header.count;
        self.peak = self.peak.max(header.count);
        self.series.record(now, header.count);
        self.log2_buckets = self.log2_buckets.max(header.log2_buckets);
    }

    /// Counts the pending growth now that the header reads `observed`.
    fn settle_growth(&mut self, observed: Header) {
        match self.growth.take() {
            Some(PendingGrowth::Buckets { log2_buckets })
                if observed.log2_buckets > log2_buckets =>
            {
                self.grows += 1
            }
            Some(PendingGrowth::Buckets { .. } | PendingGrowth::Prune) => self.reorganisations += 1,
            None => {}
        }
    }

    /// A growth function was entered (inside an assign, so no count changes yet).
    fn grow(&mut self, event_kind: u8, header: Header, readable: bool) {
        if event_kind == kind::GROW {
            self.cancel_prune();
            self.grows += 1;
        } else {
            // Only a lost event leaves a growth pending here; what the map says now settles it.
            self.settle_growth(header);
            self.growth = match event_kind {
                kind::HASH_GROW if readable => Some(PendingGrowth::Buckets {
                    log2_buckets: header.log2_buckets,
                }),
                kind::HASH_GROW => {
                    // Doubling or not, there is no `B` to tell.
                    self.unexplained += 1;
                    None
                }
                _ => Some(PendingGrowth::Prune),
            };
        }
        self.log2_buckets = self.log2_buckets.max(header.log2_buckets);
    }

    /// The map grew right after a prune: the prune cleared nothing, the table grew instead.
    fn cancel_prune(&mut self) {
        if self.growth == Some(PendingGrowth::Prune) {
            self.growth = None;
        }
    }

    /// Gives up on the pending operation, and the growth inside it: their effect can no
    /// longer be observed.
    fn abandon(&mut self) {
        self.growth = None;
        self.writers.abandon();
        if self.pending.take().is_some() {
            self.unsettled += 1;
        }
    }

    /// Whether `header` is a possible outcome of the pending operation: an assign adds one
    /// entry or none, a delete removes one or none, a clear leaves none.
    fn could_follow(&self, header: Header) -> bool {
        match self.pending {
            Some(Pending::Assign { before, .. }) => {
                header.count == before || Some(header.count) == before.checked_add(1)
            }
            Some(Pending::Delete { before, .. }) => {
                header.count == before || Some(header.count) == before.checked_sub(1)
            }
            Some(Pending::Clear { .. }) => header.count == 0,
            None => header.count == self.live,
        }
    }

    /// Whether the last operation still waits for a count.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The hash seed the map is known by: tells it from a later map at the same address.
    pub fn seed(&self) -> u32 {
        self.seed
    }
}

/// What a resolved operation did to the sampled keys of its map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyChange {
    Inserted(u32),
    Deleted(u32),
    Cleared,
}

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

/// Distributions over the whole trace, in the units their names say.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Peak entry count of every map.
    pub map_peak_entries: Histogram<u64>,
    /// Map lifetimes in microseconds: creation (or first sighting) to release, or to the end
    /// of the window for maps still alive.
    pub map_lifetime_us: Histogram<u64>,
    /// Lifetimes of sampled entries, insert to delete (or clear), in microseconds.
    pub entry_lifetime_us: Histogram<u64>,
}

impl Histograms {
    fn new() -> Histograms {
        let histogram = || Histogram::new(3).expect("3 significant digits is a valid precision");
        Histograms {
            map_peak_entries: histogram(),
            map_lifetime_us: histogram(),
            entry_lifetime_us: histogram(),
        }
    }
}

/// Per-stack totals that outlive the released maps they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// Maps created with this stack.
    pub created: u64,
    /// Of those, known released.
    pub released: u64,
}

/// Sampled keys followed from insert to delete.
#[derive(Clone, Debug, Default)]
struct SampledEntries {
    /// (map address, key hash) → insert time.
    live: BTreeMap<(u64, u32), u64>,
    /// Sampled inserts not followed because `live` was full.
    untracked: u64,
}

impl SampledEntries {
    /// Stops following the keys of the map at `addr`; returns their insert times.
    fn take_map(&mut self, addr: u64) -> Vec<u64> {
        let keys: Vec<(u64, u32)> = self
            .live
            .range((addr, 0)..=(addr, u32::MAX))
            .map(|(key, _)| *key)
            .collect();
        keys.iter()
            .filter_map(|key| self.live.remove(key))
            .collect()
    }
}

/// Per-map state for one trace. Cloned for the exports, which build their report from a
/// copy off the event loop (see [`crate::pipeline::Pipeline::snapshot`]).
#[derive(Clone, Debug)]
pub struct Model {
    implementation: MapImplementation,
    limits: Limits,
    maps: HashMap<u64, MapRecord>,
    released: Vec<MapRecord>,
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
    inventory: Option<Summary>,
}

impl Model {
    /// An empty model for a target whose maps use `implementation`.
    pub fn new(implementation: MapImplementation, limits: Limits) -> Model {
        Model {
            implementation,
            limits,
            maps: HashMap::new(),
            released: Vec::new(),
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
            inventory: None,
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
            self.maps.insert(sighting.addr, record);
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
    /// first settled by the header as one read after the probes are ([`Model::settle_words`]).
    pub fn poll(&mut self, at_ns: u64, polled: &[Polled]) {
        for header_read in polled {
            let Some(words) = header_read.words else {
                continue;
            };
            if self
                .maps
                .get(&header_read.addr)
                .is_some_and(MapRecord::is_pending)
            {
                self.settle_words(header_read.addr, words);
            }
            let header = self.header_from_words(words);
            let Some(record) = self.maps.get_mut(&header_read.addr) else {
                continue;
            };
            let own = record.seed_pending || header.seed == record.seed;
            let reseeded = reads_as_map(self.implementation, words)
                && header.seed != 0
                && header_read.capacity.is_some_and(|capacity| {
                    // What the model last knew the map's storage to be: a poll's reading, or
                    // the `B` events showed (a swiss map's first group otherwise).
                    let before = record.capacity.map_or_else(
                        || {
                            8u64.checked_shl(u32::from(record.log2_buckets))
                                .unwrap_or(u64::MAX)
                        },
                        |before| before.slots,
                    );
                    header.count <= capacity.slots
                        && capacity.slots >= before
                        && capacity.slots <= before.saturating_mul(MAX_GROWTH_BETWEEN_POLLS)
                });
            if !own && !reseeded {
                if let Some(gone) = self.maps.remove(&header_read.addr) {
                    self.release(gone, at_ns);
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
    fn header(&self, event: &MapEvent) -> Header {
        self.header_from_words([event.count, event.header_word])
    }

    /// A header's first two words (count, and the word holding the seed) as a [`Header`].
    fn header_from_words(&self, words: [u64; 2]) -> Header {
        Header {
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
            // Recent kernels add the return address themselves when a probe sits on a
            // function's `PUSH BP` (a write probe on Go 1.21+): it must not appear twice.
            if create.caller != 0 && callers.first() != Some(&create.caller) {
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
        self.observe_with_stack(&create.event, id)
    }

    fn observe_with_stack(
        &mut self,
        event: &MapEvent,
        stack: Option<StackId>,
    ) -> Result<(), ModelError> {
        self.received += 1;
        if event.ktime_ns < self.armed_ns {
            self.before_arming += 1;
            return Ok(());
        }
        let after_window = self.window_end_ns.is_some_and(|end| event.ktime_ns > end);
        let result = if after_window {
            self.settle_from(event)
        } else {
            self.apply(event, stack)
        };
        if result.is_err() {
            self.malformed += 1;
        }
        result
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

    fn intern(&mut self, stack: Vec<u64>) -> StackId {
        if let Some(&id) = self.stack_ids.get(&stack) {
            return id;
        }
        let id = self.stacks.len() as StackId;
        self.stacks.push(stack.clone());
        self.stack_ids.insert(stack, id);
        id
    }

    /// Interns a writer stack unless the table is full (see [`writers::MAX_STACKS`]).
    fn intern_writer(&mut self, stack: Vec<u64>) -> Option<StackId> {
        match self.stack_ids.get(&stack) {
            Some(&id) => Some(id),
            None => (self.stacks.len() < writers::MAX_STACKS).then(|| self.intern(stack)),
        }
    }

    fn apply(&mut self, event: &MapEvent, stack: Option<StackId>) -> Result<(), ModelError> {
        let now = event.ktime_ns;
        let header = self.header(event);
        match event.kind {
            kind::CREATE => {
                let mut record = MapRecord::new(event.map, true, header, now);
                record.seed_pending = event.flags & FLAG_SEED_PENDING != 0;
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
        if readable && known.is_some_and(|record| !record.owns(header)) {
            self.begin(MapRecord::new(event.map, false, header, now));
        }
        let record = self
            .maps
            .entry(event.map)
            .or_insert_with(|| MapRecord::new(event.map, false, header, now));
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
    fn wake(&mut self, addr: u64, header: Header, now: u64) {
        let mut fresh = MapRecord::new(addr, false, header, now);
        fresh.seen = Seen::Inventory;
        if let Some(idle) = self.maps.insert(addr, fresh) {
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

    fn follow_key(&mut self, addr: u64, change: Option<(KeyChange, u64)>) {
        let Some((change, now)) = change else {
            return;
        };
        let entries = &mut self.entries;
        match change {
            KeyChange::Inserted(hash) => {
                if entries.live.len() < self.limits.sampled_entries {
                    entries.live.insert((addr, hash), now);
                } else {
                    entries.untracked += 1;
                }
            }
            KeyChange::Deleted(hash) => {
                if let Some(inserted) = entries.live.remove(&(addr, hash)) {
                    record_us(
                        &mut self.histograms.entry_lifetime_us,
                        now.saturating_sub(inserted),
                    );
                }
            }
            KeyChange::Cleared => {
                for inserted in entries.take_map(addr) {
                    record_us(
                        &mut self.histograms.entry_lifetime_us,
                        now.saturating_sub(inserted),
                    );
                }
            }
        }
    }

    /// A clone returned, holding entries no assign put there. When its create was seen
    /// inside the clone (Go ≤ 1.24) the clone completes that map; on 1.25+ this is its first
    /// sighting.
    fn clone_filled(&mut self, addr: u64, header: Header, now: u64, stack: Option<StackId>) {
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
    fn settle_from(&mut self, event: &MapEvent) -> Result<(), ModelError> {
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
                    self.settle(event.map, self.header(event));
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
        if let Some(gone) = self.maps.insert(fresh.addr, fresh) {
            self.release(gone, now);
        }
    }

    /// Files a map away as gone at `now`.
    fn release(&mut self, mut gone: MapRecord, now: u64) {
        gone.abandon();
        gone.released_ns = Some(now);
        self.entries.take_map(gone.addr);
        if let Some(stack) = gone.stack {
            self.stack_totals.entry(stack).or_default().released += 1;
        }
        record_value(&mut self.histograms.map_peak_entries, gone.peak);
        record_us(&mut self.histograms.map_lifetime_us, gone.lifetime_ns(now));
        if self.released.len() < self.limits.released_maps {
            self.released.push(gone);
        } else {
            self.released_unlisted += 1;
        }
    }

    /// Ends the observation window at monotonic time `end_ns`: events that happened later
    /// only settle pending operations. Events from before it that are still in flight apply
    /// normally. A window already ended earlier stays ended then (`--mode sampled` ends
    /// each discovery window, and the trace's end comes later).
    pub fn freeze(&mut self, end_ns: u64) {
        self.window_end_ns = Some(self.window_end_ns.map_or(end_ns, |ended| ended.min(end_ns)));
    }

    /// Addresses of the maps whose last operation waits for a final count.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.maps
            .values()
            .filter(|record| record.is_pending())
            .map(|record| record.addr)
    }

    /// Resolves the map's pending operation with a header seen after the window (the next
    /// event, or a read of the target's memory). A header from another map is not used.
    pub fn settle(&mut self, addr: u64, header: Header) {
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
    pub fn settle_words(&mut self, addr: u64, words: [u64; 2]) {
        let header = self.header_from_words(words);
        match self.maps.get_mut(&addr) {
            Some(record) if record.is_pending() && !record.could_follow(header) => record.abandon(),
            _ => self.settle(addr, header),
        }
    }

    /// Gives up on every operation still pending: the target is gone, its counts with it.
    pub fn abandon_pending(&mut self) {
        self.maps.values_mut().for_each(MapRecord::abandon);
    }

    /// The process exited at `now`: every map it held is released with it.
    pub fn release_all(&mut self, now: u64) {
        let mut gone: Vec<MapRecord> = self.maps.drain().map(|(_, record)| record).collect();
        gone.sort_by_key(|record| (record.first_seen_ns, record.addr));
        for record in gone {
            self.release(record, now);
        }
    }

    /// Maps not known to be released, in no particular order: the ones whose memory is
    /// checked for a drop.
    pub fn live_maps(&self) -> impl Iterator<Item = &MapRecord> + '_ {
        self.maps.values()
    }

    /// The target's memory says the map at `dropped.addr` may be gone. It is released (at
    /// `dropped.at_ns`) only if it is still the map that was checked (same seed, no event
    /// since), and then only when the heap freed it or holds another object there, or its
    /// header now reads as another map or another object. A freed map's header still holds
    /// its last count, which settles its last operation when it reads as the map's own last
    /// state.
    pub fn dropped(&mut self, dropped: &Dropped) {
        let header = dropped.words.map(|words| self.header_from_words(words));
        let Some(record) = self.maps.get_mut(&dropped.addr) else {
            return;
        };
        if record.seed != dropped.seed || record.last_seen_ns != dropped.last_seen_ns {
            return;
        }
        let owned = header.filter(|&header| record.owns(header));
        let other = dropped.reused || header.is_some_and(|_| owned.is_none());
        if !dropped.freed && !other {
            return;
        }
        let last_state = owned.filter(|&header| !other && record.is_last_state(header));
        if let Some(header) = last_state {
            let change = record.resolve(header);
            self.follow_key(dropped.addr, change);
        }
        if let Some(gone) = self.maps.remove(&dropped.addr) {
            self.release(gone, dropped.at_ns);
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
        let mut all: Vec<&MapRecord> = self.released.iter().chain(self.maps.values()).collect();
        all.sort_by_key(|record| (record.first_seen_ns, record.addr));
        all
    }

    /// Released maps not listed individually (beyond [`Limits::released_maps`]).
    pub fn released_unlisted(&self) -> u64 {
        self.released_unlisted
    }

    /// Interned creation stacks, indexed by [`StackId`]: the probed instruction, then return
    /// addresses, as runtime addresses in the target.
    pub fn stacks(&self) -> &[Vec<u64>] {
        &self.stacks
    }

    /// Creation and release totals per stack, including maps no longer listed.
    pub fn stack_totals(&self, stack: StackId) -> StackTotals {
        self.stack_totals.get(&stack).copied().unwrap_or_default()
    }

    /// Map-type pointers in order of first sighting: the caller resolves each once.
    pub fn types_seen(&self) -> &[u64] {
        &self.types_seen
    }

    /// The trace's distributions, with the maps still alive counted up to `end_ns`.
    pub fn histograms(&self, end_ns: u64) -> Histograms {
        let mut histograms = self.histograms.clone();
        for record in self.maps.values() {
            record_value(&mut histograms.map_peak_entries, record.peak);
            record_us(&mut histograms.map_lifetime_us, record.lifetime_ns(end_ns));
        }
        histograms
    }

    /// Sampled keys still present when the trace ended, and sampled inserts not followed
    /// because the sample table was full.
    pub fn sampled_entries(&self) -> (u64, u64) {
        (self.entries.live.len() as u64, self.entries.untracked)
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

fn record_us(histogram: &mut Histogram<u64>, ns: u64) {
    record_value(histogram, ns / 1_000);
}

/// Records `value`, growing the histogram's range as needed (it starts tiny and resizes);
/// a value beyond what any histogram can hold is clamped rather than dropped.
fn record_value(histogram: &mut Histogram<u64>, value: u64) {
    if histogram.record(value).is_err() {
        histogram.saturating_record(value);
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
        }),
        kind::DELETE => Ok(Pending::Delete {
            before: event.count,
            key,
            at_ns,
        }),
        kind::CLEAR => Ok(Pending::Clear { at_ns }),
        other => Err(ModelError::UnknownKind(other)),
    }
}

#[cfg(test)]
#[path = "model_bounds_tests.rs"]
mod bounds_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 0x00c0_0001_0000;
    const SEED: u32 = 0x5eed;

    fn event(kind: u8, count: u64, seed: u32, ktime_ns: u64) -> MapEvent {
        MapEvent {
            ktime_ns,
            map: M,
            count,
            header_word: seed as u64,
            map_type: 0,
            key_hash: 0,
            kind,
            flags: 0,
            _pad: [0; 2],
        }
    }

    fn swiss() -> Model {
        Model::new(MapImplementation::Swiss, Limits::default())
    }

    /// Feeds `(kind, count)` events for map `M`, all with the same seed.
    fn replay(events: &[(u8, u64)]) -> Model {
        replay_seeded(
            &events
                .iter()
                .map(|&(kind, count)| (kind, count, SEED))
                .collect::<Vec<_>>(),
        )
    }

    fn replay_seeded(events: &[(u8, u64, u32)]) -> Model {
        let mut model = swiss();
        for (time, &(kind, count, seed)) in events.iter().enumerate() {
            model
                .observe(&event(kind, count, seed, time as u64))
                .unwrap();
        }
        model
    }

    fn header(count: u64) -> Header {
        Header {
            count,
            seed: SEED,
            log2_buckets: 0,
        }
    }

    fn only(model: &Model) -> &MapRecord {
        let maps = model.maps();
        assert_eq!(maps.len(), 1, "{maps:#?}");
        maps[0]
    }

    #[test]
    fn insert_overwrite_and_delete_are_told_apart_by_the_next_count() {
        let mut model = replay(&[
            (kind::CREATE, 0),
            (kind::ASSIGN, 0), // insert
            (kind::ASSIGN, 1), // overwrite
            (kind::ASSIGN, 1), // insert
            (kind::DELETE, 2), // removes
            (kind::DELETE, 1), // missing key
            (kind::ASSIGN, 1), // pending until settled
        ]);
        assert_eq!(model.pending().collect::<Vec<_>>(), vec![M]);
        model.settle(M, header(2));
        let map = only(&model);
        assert!(map.created);
        assert_eq!((map.inserts, map.overwrites, map.deletes), (3, 1, 1));
        assert_eq!(
            (map.live, map.peak, map.unexplained, map.unsettled),
            (2, 2, 0, 0)
        );
        assert_eq!(model.pending().count(), 0);
    }

    #[test]
    fn clear_counts_once_and_expects_an_empty_map() {
        let mut model = replay(&[(kind::ASSIGN, 5), (kind::CLEAR, 6), (kind::ASSIGN, 0)]);
        model.settle(M, header(1));
        let map = only(&model);
        assert!(!map.created);
        assert_eq!((map.clears, map.inserts, map.live, map.peak), (1, 2, 1, 6));
        assert_eq!(map.unexplained, 0);
    }

    #[test]
    fn a_count_no_operation_explains_is_flagged() {
        let mut model = replay(&[(kind::ASSIGN, 0), (kind::ASSIGN, 7)]);
        model.settle(M, header(8));
        let map = only(&model);
        assert_eq!((map.inserts, map.unexplained, map.live), (1, 1, 8));
    }

    #[test]
    fn a_new_seed_at_a_known_address_is_a_new_map() {
        // A per-request stack map: same address, new seed every call.
        let model = replay_seeded(&[
            (kind::ASSIGN, 0, 1),
            (kind::ASSIGN, 1, 1),
            (kind::ASSIGN, 0, 2),
            (kind::ASSIGN, 1, 2),
        ]);
        let maps = model.maps();
        assert_eq!(maps.len(), 2);
        assert!(maps[0].is_released() && !maps[1].is_released());
        assert_eq!(
            (maps[0].inserts, maps[0].unsettled, maps[0].unexplained),
            (1, 1, 0)
        );
        assert_eq!((maps[1].inserts, maps[1].unexplained), (1, 0));
    }

    #[test]
    fn emptying_a_map_may_change_its_seed() {
        let mut model = replay_seeded(&[
            (kind::ASSIGN, 0, 1),
            (kind::DELETE, 1, 1),
            (kind::ASSIGN, 0, 2), // the runtime reseeded the now empty map
            (kind::CLEAR, 1, 2),
            (kind::ASSIGN, 0, 3), // and again after the clear
        ]);
        model.settle(
            M,
            Header {
                seed: 3,
                ..header(1)
            },
        );
        let map = only(&model);
        assert_eq!(
            (map.inserts, map.deletes, map.clears, map.live),
            (3, 1, 1, 1)
        );
        assert_eq!((map.unexplained, map.unsettled), (0, 0));
    }

    #[test]
    fn after_the_window_events_only_settle_pending_operations() {
        let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
        model.freeze(5);
        // Drained late, but it happened inside the window.
        model.observe(&event(kind::ASSIGN, 1, SEED, 4)).unwrap();
        for (time, count) in [(10, 2), (11, 3), (12, 4)] {
            model
                .observe(&event(kind::ASSIGN, count, SEED, time))
                .unwrap();
        }
        let map = only(&model);
        assert_eq!((map.inserts, map.live, map.last_seen_ns), (2, 2, 4));
        assert!(!map.is_pending());
        assert_eq!(model.received(), 6);
    }

    #[test]
    fn a_foreign_header_does_not_settle_a_map() {
        let mut model = replay(&[(kind::ASSIGN, 3)]);
        model.settle(
            M,
            Header {
                seed: SEED + 1,
                ..header(4)
            },
        );
        let map = only(&model);
        assert_eq!((map.inserts, map.live, map.unsettled), (0, 3, 1));
    }

    #[test]
    fn a_new_map_at_the_address_after_the_window_does_not_settle_the_old_one() {
        // Dropped after a delete that left two entries; after the window a new map is made
        // at its address: its empty header with a fresh seed is not the old map emptied.
        let mut model = replay_seeded(&[
            (kind::CREATE, 0, 1),
            (kind::ASSIGN, 0, 1),
            (kind::ASSIGN, 1, 1),
            (kind::ASSIGN, 2, 1),
            (kind::DELETE, 3, 1),
        ]);
        model.freeze(10);
        model.observe(&event(kind::ASSIGN, 0, 2, 11)).unwrap();
        let map = only(&model);
        assert_eq!((map.live, map.deletes, map.unexplained), (3, 0, 0));
        assert_eq!(map.unsettled, 1);
        // The same with the new map's creation seen first.
        let mut model = replay_seeded(&[(kind::ASSIGN, 3, 1), (kind::DELETE, 4, 1)]);
        model.freeze(10);
        model.observe(&event(kind::CREATE, 0, 2, 11)).unwrap();
        model.observe(&event(kind::ASSIGN, 0, 2, 12)).unwrap();
        let map = only(&model);
        assert_eq!((map.live, map.unexplained, map.unsettled), (4, 0, 1));
    }

    #[test]
    fn memory_that_no_pending_operation_explains_does_not_settle() {
        // Freed, and its first word reused by another object; the seed word survived.
        let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
        model.settle_words(M, [0xc0_0000_0000, u64::from(SEED)]);
        let map = only(&model);
        assert_eq!((map.live, map.peak, map.inserts), (0, 0, 0));
        assert_eq!((map.unsettled, map.unexplained), (1, 0));
        // A header the pending insert explains settles it.
        let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
        model.settle_words(M, [1, u64::from(SEED)]);
        let map = only(&model);
        assert_eq!((map.live, map.inserts, map.unsettled), (1, 1, 0));
    }

    #[test]
    fn abandoned_operations_are_unsettled_not_guessed() {
        let mut model = replay(&[(kind::ASSIGN, 0), (kind::ASSIGN, 1)]);
        model.abandon_pending();
        let map = only(&model);
        assert_eq!(
            (map.inserts, map.overwrites, map.unsettled, map.live),
            (1, 0, 1, 1)
        );
    }

    #[test]
    fn a_create_at_a_known_address_releases_the_old_map() {
        let model = replay(&[
            (kind::CREATE, 0),
            (kind::ASSIGN, 0),
            (kind::CREATE, 0),
            (kind::ASSIGN, 0),
        ]);
        let maps = model.maps();
        assert_eq!(maps.len(), 2);
        assert!(maps[0].is_released() && !maps[1].is_released());
        assert_eq!(
            maps[0].unsettled, 1,
            "its last assign can no longer be resolved"
        );
    }

    #[test]
    fn unreadable_counts_and_unknown_kinds_are_counted() {
        let mut model = swiss();
        let mut unreadable = event(kind::ASSIGN, 0, SEED, 1);
        unreadable.flags = FLAG_COUNT_UNREADABLE;
        model.observe(&unreadable).unwrap();
        assert_eq!(
            model.observe(&event(99, 0, SEED, 2)),
            Err(ModelError::UnknownKind(99))
        );
        model.observe_record(&[0; 8]);
        assert_eq!((model.received(), model.malformed()), (3, 2));
        assert_eq!(only(&model).unexplained, 1);
    }

    #[test]
    fn a_clone_starts_with_its_entries_and_growth_changes_no_count() {
        // Go ≤ 1.24: the clone's create is seen first, then the clone fills it.
        let mut model = replay(&[
            (kind::CREATE, 0),
            (kind::CLONE, 40),
            (kind::ASSIGN, 40),
            (kind::GROW, 40),
        ]);
        model.settle(M, header(41));
        let map = only(&model);
        assert!(map.created && map.cloned);
        assert_eq!((map.live, map.peak, map.inserts, map.grows), (41, 41, 1, 1));
        assert_eq!((map.unexplained, map.unsettled), (0, 0));

        // Go 1.25+: no create call; the clone is the first sighting.
        let model = replay(&[(kind::CLONE, 3)]);
        let map = only(&model);
        assert!(map.created && map.cloned);
        assert_eq!(map.live, 3);
    }

    /// Feeds `(kind, count, B)` events for a classic map `M`, as the runtime emits them: the
    /// header's second word holds `B` at offset 9 and the seed in its upper half.
    fn replay_classic(events: &[(u8, u64, u8)]) -> Model {
        let mut model = Model::new(MapImplementation::Classic, Limits::default());
        for (time, &(kind, count, log2_buckets)) in events.iter().enumerate() {
            let mut event = event(kind, count, 0, time as u64);
            event.header_word = classic_word(log2_buckets);
            model.observe(&event).unwrap();
        }
        model
    }

    fn classic_word(log2_buckets: u8) -> u64 {
        u64::from(SEED) << 32 | u64::from(log2_buckets) << 8
    }

    #[test]
    fn a_classic_growth_doubles_when_the_next_header_has_more_buckets() {
        // The 9th insert into an empty map doubles 1 bucket to 2, the 14th 2 to 4.
        let mut events = vec![(kind::CREATE, 0, 0)];
        for count in 0..14 {
            let log2_buckets = if count < 9 { 0 } else { 1 };
            events.push((kind::ASSIGN, count, log2_buckets));
            if count == 8 || count == 13 {
                events.push((kind::HASH_GROW, count, log2_buckets));
            }
        }
        let mut model = replay_classic(&events);
        // The map went quiet: the header read after the window settles the last growth.
        model.freeze(100);
        model.settle_words(M, [14, classic_word(2)]);
        let map = only(&model);
        assert_eq!(
            (map.grows, map.reorganisations, map.log2_buckets),
            (2, 0, 2)
        );
        assert_eq!(
            (map.inserts, map.live, map.unexplained, map.unsettled),
            (14, 14, 0, 0)
        );
    }

    #[test]
    fn a_classic_growth_to_the_same_size_is_a_reorganisation() {
        // Too many overflow buckets at 90 entries in 16 buckets: B stays 4.
        let model = replay_classic(&[
            (kind::ASSIGN, 90, 4),
            (kind::HASH_GROW, 90, 4),
            (kind::DELETE, 91, 4),
            (kind::ASSIGN, 90, 4),
        ]);
        let map = only(&model);
        assert_eq!((map.grows, map.reorganisations), (0, 1));
        assert_eq!((map.inserts, map.deletes, map.unexplained), (1, 1, 0));
    }

    #[test]
    fn a_growth_whose_map_is_never_seen_again_is_not_guessed() {
        let mut model = replay_classic(&[(kind::ASSIGN, 8, 0), (kind::HASH_GROW, 8, 0)]);
        model.abandon_pending();
        let map = only(&model);
        assert_eq!((map.grows, map.reorganisations, map.unsettled), (0, 0, 1));

        // A growth with no readable `B` cannot be told either.
        let mut model = Model::new(MapImplementation::Classic, Limits::default());
        model.observe(&event(kind::ASSIGN, 8, 0, 1)).unwrap();
        let mut unreadable = event(kind::HASH_GROW, 0, 0, 2);
        unreadable.flags = FLAG_COUNT_UNREADABLE;
        model.observe(&unreadable).unwrap();
        model.observe(&event(kind::ASSIGN, 9, 0, 3)).unwrap();
        let map = only(&model);
        assert_eq!((map.grows, map.reorganisations, map.unexplained), (0, 0, 1));
    }

    #[test]
    fn swiss_growth_counts_at_once_and_a_prune_only_when_no_growth_follows() {
        let mut events = vec![(kind::CREATE, 0)];
        for count in 0..15 {
            events.push((kind::ASSIGN, count));
            match count {
                0 => events.push((kind::GROW, count)), // growToSmall: the first group
                8 => events.push((kind::GROW, count)), // growToTable: 16 slots
                14 => {
                    // The table is full: the prune finds nothing to clear, the table doubles.
                    events.extend([(kind::PRUNE, count), (kind::GROW, count)]);
                }
                _ => {}
            }
        }
        events.extend([
            (kind::DELETE, 15),
            // Deletes left tombstones: the prune clears them, and no growth follows.
            (kind::ASSIGN, 14),
            (kind::PRUNE, 14),
            (kind::ASSIGN, 15), // an overwrite
            (kind::ASSIGN, 15),
            (kind::PRUNE, 15),
        ]);
        let mut model = replay(&events);
        // The last prune is settled by the header read after the window.
        model.settle(M, header(16));
        let map = only(&model);
        assert_eq!((map.grows, map.reorganisations), (3, 2));
        assert_eq!((map.inserts, map.overwrites, map.deletes), (17, 1, 1));
        assert_eq!((map.unexplained, map.unsettled), (0, 0));
    }

    #[test]
    fn a_growth_after_the_window_undoes_a_prune_inside_it() {
        let mut model = replay(&[(kind::ASSIGN, 14), (kind::PRUNE, 14)]);
        model.freeze(5);
        for (time, kind, count) in [(6, kind::GROW, 14), (7, kind::ASSIGN, 15)] {
            model.observe(&event(kind, count, SEED, time)).unwrap();
        }
        let map = only(&model);
        assert_eq!((map.grows, map.reorganisations, map.inserts), (0, 0, 1));
    }

    #[test]
    fn settling_a_map_without_pending_operation_changes_nothing() {
        let mut model = replay(&[(kind::CREATE, 0)]);
        model.settle(M, header(42));
        assert_eq!(only(&model).live, 0);
    }

    #[test]
    fn a_creation_seen_before_its_seed_adopts_the_next_one() {
        let mut create = event(kind::CREATE, 0, 0, 0);
        create.flags = FLAG_SEED_PENDING;
        let mut model = swiss();
        model.observe(&create).unwrap();
        model.observe(&event(kind::ASSIGN, 0, SEED, 1)).unwrap();
        model.observe(&event(kind::ASSIGN, 1, SEED, 2)).unwrap();
        model.settle(M, header(2));
        let map = only(&model);
        assert!(map.created);
        assert_eq!((map.inserts, map.unexplained), (2, 0));
    }

    #[test]
    fn sampled_keys_give_entry_lifetimes() {
        let keyed = |kind, count, key: u32, at| {
            let mut event = event(kind, count, SEED, at);
            event.flags = FLAG_KEY_SAMPLED;
            event.key_hash = key;
            event
        };
        let mut model = swiss();
        for event in [
            keyed(kind::ASSIGN, 0, 11, 1_000_000),
            keyed(kind::ASSIGN, 1, 22, 2_000_000),
            keyed(kind::DELETE, 2, 11, 5_000_000),
            event(kind::CLEAR, 1, SEED, 9_000_000),
        ] {
            model.observe(&event).unwrap();
        }
        model.settle(M, header(0));
        let histograms = model.histograms(10_000_000);
        let lifetimes = &histograms.entry_lifetime_us;
        assert_eq!(lifetimes.len(), 2);
        assert_eq!(
            lifetimes.min(),
            4_000,
            "key 11: inserted at 1 ms, deleted at 5 ms"
        );
        assert!(
            lifetimes.equivalent(lifetimes.max(), 7_000),
            "key 22 went with the clear"
        );
        assert_eq!(model.sampled_entries(), (0, 0));
    }

    #[test]
    fn creation_stacks_are_interned_with_the_caller_the_walk_missed() {
        let mut model = swiss();
        let mut stack = [0u64; tracer_common::STACK_DEPTH];
        stack[..2].copy_from_slice(&[0x1000, 0x3000]);
        for at in 0..3 {
            model
                .observe_create(&CreateEvent {
                    event: MapEvent {
                        map: M + at * 0x100,
                        ..event(kind::CREATE, 0, SEED, at)
                    },
                    caller: 0x2000,
                    stack_len: 2,
                    _pad: 0,
                    stack,
                })
                .unwrap();
        }
        assert_eq!(model.stacks(), &[vec![0x1000, 0x2000, 0x3000]]);
        assert_eq!(model.stack_totals(0).created, 3);
        assert!(model.maps().iter().all(|map| map.stack == Some(0)));
    }

    /// A write of `kind` to `M` at `count` carrying a writer stack whose direct caller is
    /// `caller`.
    fn written(kind: u8, count: u64, at: u64, caller: u64) -> CreateEvent {
        let mut stack = [0u64; tracer_common::STACK_DEPTH];
        stack[..2].copy_from_slice(&[0x1000, 0x9000]);
        CreateEvent {
            event: event(kind, count, SEED, at),
            caller,
            stack_len: 2,
            _pad: 0,
            stack,
        }
    }

    #[test]
    fn writer_stacks_are_interned_and_credited_when_their_operation_resolves() {
        let mut model = swiss();
        model
            .observe_create(&written(kind::ASSIGN, 10, 1, 0x2000))
            .unwrap();
        model.observe(&event(kind::ASSIGN, 11, SEED, 2)).unwrap();
        model
            .observe_create(&written(kind::ASSIGN, 12, 3, 0x2000))
            .unwrap();
        model
            .observe_create(&written(kind::DELETE, 12, 4, 0x3000))
            .unwrap();
        // Deleting a missing key: listed, but credited nothing.
        model
            .observe_create(&written(kind::DELETE, 11, 5, 0x3000))
            .unwrap();
        model
            .observe_create(&written(kind::ASSIGN, 11, 6, 0x2000))
            .unwrap();
        model.settle(M, header(11));
        let map = only(&model);
        assert!(!map.created && map.stack.is_none());
        assert_eq!((map.inserts, map.overwrites, map.deletes), (2, 2, 1));
        assert_eq!(map.unexplained, 0);
        let writers: Vec<_> = map
            .writers
            .list()
            .iter()
            .map(|w| {
                (
                    model.stacks()[w.stack as usize].clone(),
                    w.inserts,
                    w.deletes,
                )
            })
            .collect();
        assert_eq!(
            writers,
            vec![
                (vec![0x1000, 0x2000, 0x9000], 1, 0),
                (vec![0x1000, 0x3000, 0x9000], 0, 1),
            ]
        );
        // Writer stacks count no creation.
        assert_eq!(model.stack_totals(0).created, 0);

        // When the kernel's walk already has the direct caller, it is not added twice.
        let mut walked = written(kind::ASSIGN, 11, 7, 0x2000);
        walked.stack[..3].copy_from_slice(&[0x1000, 0x2000, 0x9000]);
        walked.stack_len = 3;
        model.observe_create(&walked).unwrap();
        assert_eq!(model.stacks().len(), 2);
    }

    #[test]
    fn a_write_stack_whose_operation_is_never_settled_is_listed_uncredited() {
        let mut model = swiss();
        model
            .observe_create(&written(kind::ASSIGN, 0, 1, 0x2000))
            .unwrap();
        model.abandon_pending();
        let map = only(&model);
        assert_eq!(map.unsettled, 1);
        assert_eq!(map.writers.list().len(), 1);
        assert_eq!(
            (map.writers.list()[0].inserts, map.writers.list()[0].deletes),
            (0, 0)
        );
    }

    #[test]
    fn writer_stacks_stop_being_interned_when_the_table_is_full() {
        let mut model = swiss();
        for at in 0..crate::writers::MAX_STACKS as u64 {
            model
                .observe_create(&written(kind::ASSIGN, at, at, 0x10_0000 + at))
                .unwrap();
        }
        assert_eq!(model.stacks().len(), crate::writers::MAX_STACKS);
        let last = crate::writers::MAX_STACKS as u64;
        // A known stack is still recognised; a new one is not kept.
        model
            .observe_create(&written(kind::ASSIGN, last, last, 0x10_0000))
            .unwrap();
        model
            .observe_create(&written(kind::ASSIGN, last + 1, last + 1, 0x2000))
            .unwrap();
        assert_eq!(model.stacks().len(), crate::writers::MAX_STACKS);
        let map = only(&model);
        assert_eq!(map.inserts, last + 1);
        assert_eq!(map.writers.list()[0].inserts, 2);
    }

    #[test]
    fn released_maps_are_bounded_but_still_counted() {
        let limits = Limits {
            released_maps: 2,
            sampled_entries: 10,
        };
        let mut model = Model::new(MapImplementation::Swiss, limits);
        for seed in 1..=5 {
            model
                .observe(&event(kind::ASSIGN, 0, seed, seed as u64))
                .unwrap();
        }
        assert_eq!(model.maps().len(), 3);
        assert_eq!(model.released_unlisted(), 2);
        model.release_all(100);
        assert!(model.maps().iter().all(|map| map.is_released()));
        assert_eq!(model.released_unlisted(), 3);
        assert_eq!(model.histograms(100).map_lifetime_us.len(), 5);
    }
}
