//! One map's life: the state machine that turns the counts an entry probe sees into
//! inserts, overwrites, deletes, growth and release (see the [parent module](super) for
//! the rules).

use tracer_common::kind;

use crate::memory::inventory::Capacity;
use crate::trend::Series;
use crate::writers::Writers;

use super::StackId;

/// An operation whose effect is only known once the map's count is seen again.
///
/// `credited` counts the writes of the run the BPF side folded after the record that made
/// the write pending, already credited (see [`MapRecord::fold`]): the same run delivered
/// again credits only the writes it adds. A run is at most `MAX_FOLDED` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pending {
    Assign {
        before: u64,
        key: Option<u32>,
        at_ns: u64,
        credited: u16,
    },
    Delete {
        before: u64,
        key: Option<u32>,
        at_ns: u64,
        credited: u16,
    },
    Clear {
        at_ns: u64,
    },
}

/// A growth whose kind is only known once the map's header is seen again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PendingGrowth {
    /// Classic `hashGrow` entered with `B` = `log2_buckets`: a doubling if the next header's
    /// `B` is higher, else a same-size reorganisation.
    Buckets { log2_buckets: u8 },
    /// Swiss `pruneTombstones` entered: tombstones were cleared in place unless the map grows
    /// before its next operation.
    Prune,
}

/// What a map header said at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapHeader {
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

/// Everything known about one map, from its first sighting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRecord {
    /// MapHeader address, equal to Go's `%p` of the map.
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
    pub(super) polled_ns: u64,
    /// `--mode sampled`: a discovery window began since its last event, so its next event
    /// is a baseline (it changed unseen between windows), not an outcome to explain.
    pub(super) baseline_due: bool,
    pub(super) seed: u32,
    pub(super) seed_pending: bool,
    /// Made in its creator's stack frame (`tracer_common::FLAG_ON_STACK`): freed by a
    /// return, so a collection proves nothing about it.
    pub(super) on_stack: bool,
    pub(super) pending: Option<Pending>,
    pub(super) growth: Option<PendingGrowth>,
    /// The kind of write given up on last (`kind::ASSIGN` or `kind::DELETE`), while no later
    /// one was seen: writes folded after it, credited once the map is gone, did what the
    /// run says to it. 0 otherwise.
    pub(super) abandoned_write: u8,
    /// Its last run of folds was credited before or as it was released: a record that
    /// carries them later brings nothing new.
    pub(super) folds_closed: bool,
}

/// A run of writes the BPF side folded, as a record or a read of the BPF side delivers it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Folds {
    /// How many writes were folded.
    pub(super) writes: u64,
    /// Whether the pending operation and each folded write but the last changed the count by
    /// one (`tracer_common::FLAG_FOLDS_CHANGED`); else none of them changed it.
    pub(super) changed: bool,
}

impl MapRecord {
    pub(super) fn new(addr: u64, created: bool, header: MapHeader, now_ns: u64) -> MapRecord {
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
            on_stack: false,
            pending: None,
            growth: None,
            abandoned_write: 0,
            folds_closed: false,
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
    pub(super) fn owns(&self, header: MapHeader) -> bool {
        let reseeded = header.count == 0
            && matches!(
                self.pending,
                Some(Pending::Delete { before: 1, .. } | Pending::Clear { .. })
            );
        self.seed_pending || header.seed == self.seed || reseeded
    }

    /// Whether `header`, the first event of a new discovery window (`--mode sampled`) on a
    /// map of `map_type`, is this map emptied and reseeded while no probe looked (the runtime
    /// reseeds a map a delete or clear empties, and a busy map fills again at once): the
    /// same type, and storage no smaller than before (Go never shrinks a map). A poll takes
    /// a new seed the same way ([`super::Model::poll`]); memory handed to another map of the
    /// same type between two looks is left to the heap check, as it is for polls.
    pub(super) fn reseeded_unseen(&self, header: MapHeader, map_type: u64) -> bool {
        self.baseline_due
            && self.map_type != 0
            && self.map_type == map_type
            && header.log2_buckets >= self.log2_buckets
    }

    /// Whether `header`, read from memory the map may no longer own, is its own last state:
    /// its exact seed, and a count its pending operation explains. Freed memory can be
    /// reused, zeroed or returned to the system at any time, so anything else is not used.
    pub(super) fn is_last_state(&self, header: MapHeader) -> bool {
        header.seed == self.seed
            && !self.seed_pending
            && self.pending.is_some()
            && self.could_follow(header)
    }

    /// Accounts for the pending operation now that the header reads `observed`, and says
    /// what happened to the sampled key it carried (and when the operation ran).
    pub(super) fn resolve(&mut self, observed: MapHeader) -> Option<(KeyChange, u64)> {
        let (inserts, deletes) = (self.inserts, self.deletes);
        self.resolve_growth(observed);
        self.log2_buckets = self.log2_buckets.max(observed.log2_buckets);
        let count = observed.count;
        let mut change = None;
        let at_ns = match self.pending {
            Some(Pending::Assign { at_ns, .. } | Pending::Delete { at_ns, .. })
            | Some(Pending::Clear { at_ns }) => at_ns,
            None => self.last_seen_ns,
        };
        let explained = match self.pending.take() {
            Some(Pending::Assign {
                before, key, at_ns, ..
            }) if count == before + 1 => {
                self.inserts += 1;
                self.last_insert_ns = Some(at_ns);
                change = key.map(|key| (KeyChange::Inserted(key), at_ns));
                true
            }
            Some(Pending::Assign { before, .. }) if count == before => {
                self.overwrites += 1;
                true
            }
            Some(Pending::Delete {
                before, key, at_ns, ..
            }) if count + 1 == before => {
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
    pub(super) fn rebase(&mut self, header: MapHeader, now: u64) {
        self.baseline_due = false;
        self.abandon();
        self.seed = header.seed;
        self.seed_pending = false;
        self.live = header.count;
        self.peak = self.peak.max(header.count);
        self.series.record(now, header.count);
        self.log2_buckets = self.log2_buckets.max(header.log2_buckets);
    }

    /// Counts the pending growth now that the header reads `observed`.
    pub(super) fn resolve_growth(&mut self, observed: MapHeader) {
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
    pub(super) fn grow(&mut self, event_kind: u8, header: MapHeader, readable: bool) {
        if event_kind == kind::GROW {
            self.cancel_prune();
            self.grows += 1;
        } else {
            // Only a lost event leaves a growth pending here; what the map says now settles it.
            self.resolve_growth(header);
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
    pub(super) fn cancel_prune(&mut self) {
        if self.growth == Some(PendingGrowth::Prune) {
            self.growth = None;
        }
    }

    /// Gives up on the pending operation, and the growth inside it: their effect can no
    /// longer be observed.
    pub(super) fn abandon(&mut self) {
        self.abandoned_write = match self.pending {
            Some(Pending::Assign { .. }) => kind::ASSIGN,
            Some(Pending::Delete { .. }) => kind::DELETE,
            Some(Pending::Clear { .. }) | None => 0,
        };
        self.folds_closed = self.run_credited() > 0;
        self.growth = None;
        self.writers.abandon();
        if self.pending.take().is_some() {
            self.unsettled += 1;
        }
    }

    /// Whether only the collector frees it, with its seed known, so that a read at a
    /// collection can prove its final count: seen created (its origin known), and outside its
    /// creator's stack frame.
    pub(super) fn freed_by_the_collector(&self) -> bool {
        self.seen == Seen::Creation && !self.on_stack && !self.seed_pending
    }

    /// Whether `header` is a possible outcome of the pending operation: an assign adds one
    /// entry or none, a delete removes one or none, a clear leaves none.
    pub(super) fn could_follow(&self, header: MapHeader) -> bool {
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

    /// A run of writes of the pending operation's kind followed it, each finding the header
    /// the write before it left (the BPF side folds such writes, see
    /// `tracer_common::MapEvent::folded`): each proves what the write before it did, all the
    /// same thing. Unchanged, they were overwrites or deletes of missing keys; changed, each
    /// added (assign) or removed (delete) one entry. The last folded write is now the pending
    /// operation, with no key (a write with a sampled key is never folded) and no writer
    /// stack, dated `at_ns` (the record that said so: a fold has no time of its own).
    ///
    /// The same run may be delivered more than once, longer each time (read from the BPF side
    /// while its map was quiet, then carried by the map's next record): only the writes not
    /// credited yet count, as more writes of the same step after the pending one. Returns
    /// how many were credited: 0 when nothing pending can take them, or all were already.
    pub(super) fn fold(&mut self, folds: Folds, at_ns: u64) -> u64 {
        let (before, key, when, credited, assign) = match &mut self.pending {
            Some(Pending::Assign {
                before,
                key,
                at_ns,
                credited,
            }) => (before, key, at_ns, credited, true),
            Some(Pending::Delete {
                before,
                key,
                at_ns,
                credited,
            }) => (before, key, at_ns, credited, false),
            Some(Pending::Clear { .. }) | None => return 0,
        };
        let fresh = folds.writes.saturating_sub(u64::from(*credited));
        if fresh == 0 {
            return 0;
        }
        *credited = u16::try_from(folds.writes).unwrap_or(u16::MAX);
        *key = None;
        *when = at_ns;
        let after = match (folds.changed, assign) {
            (false, _) => *before,
            (true, true) => before.saturating_add(fresh),
            (true, false) => match before.checked_sub(fresh) {
                Some(after) => after,
                // More deletes than entries: the run is not this map's pending one.
                None => {
                    self.unexplained += 1;
                    return fresh;
                }
            },
        };
        *before = after;
        match (folds.changed, assign) {
            (false, true) => self.overwrites += fresh,
            (false, false) => {}
            (true, true) => {
                self.inserts += fresh;
                self.last_insert_ns = Some(at_ns);
            }
            (true, false) => self.deletes += fresh,
        }
        let changed = u64::from(folds.changed);
        if assign {
            self.writers.resolve(changed, 0);
        } else {
            self.writers.resolve(0, changed);
        }
        if folds.changed {
            self.live = after;
            self.peak = self.peak.max(after);
            self.series.record(at_ns, after);
        }
        fresh
    }

    /// [`MapRecord::fold`] for a map already released, whose last write was given up on (it
    /// stays unsettled: the last folded write took its place, unseen). False while it is
    /// live, when its last operation was settled or was no write (the run cannot be that
    /// operation's), and once its last run was credited (these are the same folds, counted
    /// then). Returns how many were credited.
    pub(super) fn fold_released(&mut self, folds: Folds) -> u64 {
        if !self.is_released() || self.folds_closed || self.abandoned_write == 0 {
            return 0;
        }
        let n = folds.writes;
        match (folds.changed, self.abandoned_write == kind::ASSIGN) {
            (false, true) => self.overwrites += n,
            (false, false) => {}
            (true, true) => {
                self.inserts += n;
                self.live = self.live.saturating_add(n);
                self.peak = self.peak.max(self.live);
            }
            (true, false) => {
                self.deletes += n;
                self.live = self.live.saturating_sub(n);
            }
        }
        n
    }

    /// The count the run following the pending operation's record started from, if an
    /// assign or delete is pending: its count, less the steps of the run already credited
    /// (`changed`: the run's writes each changed the count).
    pub(super) fn run_start(&self, changed: bool) -> Option<u64> {
        let steps = if changed {
            u64::from(self.run_credited())
        } else {
            0
        };
        match self.pending {
            Some(Pending::Assign { before, .. }) => before.checked_sub(steps),
            Some(Pending::Delete { before, .. }) => before.checked_add(steps),
            Some(Pending::Clear { .. }) | None => None,
        }
    }

    /// Writes of the run following the pending operation already credited.
    pub(super) fn run_credited(&self) -> u16 {
        match self.pending {
            Some(Pending::Assign { credited, .. } | Pending::Delete { credited, .. }) => credited,
            Some(Pending::Clear { .. }) | None => 0,
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
pub(super) enum KeyChange {
    Inserted(u32),
    Deleted(u32),
    Cleared,
}
