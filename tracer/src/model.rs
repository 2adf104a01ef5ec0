//! The life of every map the tracer has seen, rebuilt from events alone.
//!
//! This module does no I/O: it is fed [`MapEvent`]s (live from the ring buffer, or recorded
//! sequences in tests) and, at the end, the final headers the caller could read from the
//! target. Everything it reports follows from those inputs.
//!
//! Probes only fire on entry, so each event carries the count *before* its operation. Go maps
//! are not safe for concurrent writes, so operations on one map are ordered, and the ring
//! buffer keeps that order: the effect of an operation shows in the count at the map's next
//! observation. An assign followed by a count one higher was an insert, by the same count an
//! overwrite; a delete followed by a count one lower removed a key.
//!
//! The hash seed in each event tells maps at the same address apart: a stack map made by a
//! later call, or a heap map reusing freed memory, has a new seed. The runtime also picks a
//! new seed when a map becomes empty through a delete or a clear, which is expected.
//!
//! The observation window ends with [`Model::freeze`]: events that happen after it only settle
//! the operations still pending, so that a busy map's last operation is classified by the next
//! one, exactly as during the window. [`Model::settle`] does the same with a header read from
//! the target's memory for maps that stayed quiet.

use std::collections::HashMap;

use tracer_common::{kind, MapEvent, FLAG_COUNT_UNREADABLE};

/// An operation whose effect is only known once the map's count is seen again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Assign { before: u64 },
    Delete { before: u64 },
    Clear,
}

/// What a map header said at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Element count (`len(m)`).
    pub count: u64,
    /// Hash seed (see [`MapEvent::seed`]).
    pub seed: u32,
}

impl Header {
    /// The header an event read.
    fn of(event: &MapEvent) -> Header {
        Header {
            count: event.count,
            seed: event.seed,
        }
    }
}

/// Everything known about one map, from its first sighting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRecord {
    /// Header address, equal to Go's `%p` of the map.
    pub addr: u64,
    /// Seen being created, rather than first seen already in use.
    pub created: bool,
    /// Element count after the last operation whose effect is known.
    pub live: u64,
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
    /// Times the map started to grow (more buckets, groups or tables).
    pub grows: u64,
    /// Made by a clone (`maps.Clone`): it started with the source's entries.
    pub cloned: bool,
    /// Count changes that no observed operation explains: lost events, or runtime paths
    /// without a probe. Zero means every number above is exact.
    pub unexplained: u64,
    /// Operations whose effect was never observed because the map (or the whole target) was
    /// gone before its count could be seen again. At most one per map.
    pub unsettled: u64,
    /// Known to be gone: another map now lives at its address.
    pub released: bool,
    /// Monotonic time of the first and last event, in nanoseconds.
    pub first_seen_ns: u64,
    /// See `first_seen_ns`.
    pub last_seen_ns: u64,
    seed: u32,
    pending: Option<Pending>,
}

impl MapRecord {
    fn new(addr: u64, created: bool, header: Header, now_ns: u64) -> MapRecord {
        MapRecord {
            addr,
            created,
            live: header.count,
            peak: header.count,
            inserts: 0,
            overwrites: 0,
            deletes: 0,
            clears: 0,
            grows: 0,
            cloned: false,
            unexplained: 0,
            unsettled: 0,
            released: false,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            seed: header.seed,
            pending: None,
        }
    }

    /// Whether `header` can belong to this map: the same seed, or a new one the runtime picked
    /// because the pending delete or clear left the map empty.
    fn owns(&self, header: Header) -> bool {
        let reseeded = header.count == 0
            && matches!(self.pending, Some(Pending::Delete { .. } | Pending::Clear));
        header.seed == self.seed || reseeded
    }

    /// Accounts for the pending operation now that the header reads `observed`.
    fn resolve(&mut self, observed: Header) {
        let count = observed.count;
        let explained = match self.pending.take() {
            Some(Pending::Assign { before }) if count == before + 1 => {
                self.inserts += 1;
                true
            }
            Some(Pending::Assign { before }) if count == before => {
                self.overwrites += 1;
                true
            }
            Some(Pending::Delete { before }) if count + 1 == before => {
                self.deletes += 1;
                true
            }
            Some(Pending::Delete { before }) => count == before,
            Some(Pending::Clear) => count == 0,
            Some(Pending::Assign { .. }) => false,
            None => count == self.live,
        };
        if !explained {
            self.unexplained += 1;
        }
        self.live = count;
        self.seed = observed.seed;
        self.peak = self.peak.max(count);
    }

    /// Gives up on the pending operation: its effect can no longer be observed.
    fn abandon(&mut self) {
        if self.pending.take().is_some() {
            self.unsettled += 1;
        }
    }

    /// Whether the last operation still waits for a count.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// Why an event could not be applied; the event is dropped and counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// The BPF side and userspace disagree on the event format.
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
}

/// Per-map state for one trace.
#[derive(Debug, Default)]
pub struct Model {
    maps: HashMap<u64, MapRecord>,
    released: Vec<MapRecord>,
    received: u64,
    malformed: u64,
    window_end_ns: Option<u64>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Model {
        Model::default()
    }

    /// Applies one event. Unknown kinds are counted in [`Model::malformed`] and reported.
    pub fn observe(&mut self, event: &MapEvent) -> Result<(), ModelError> {
        self.received += 1;
        let after_window = self.window_end_ns.is_some_and(|end| event.ktime_ns > end);
        let result = if after_window {
            self.settle_from(event)
        } else {
            self.apply(event)
        };
        if result.is_err() {
            self.malformed += 1;
        }
        result
    }

    /// Applies one raw ring-buffer record; a record too short to be an event is counted in
    /// [`Model::malformed`].
    pub fn observe_record(&mut self, record: &[u8]) {
        match MapEvent::from_bytes(record) {
            // An unknown kind is counted by `observe`.
            Some(event) => {
                let _ = self.observe(&event);
            }
            None => {
                self.received += 1;
                self.malformed += 1;
            }
        }
    }

    fn apply(&mut self, event: &MapEvent) -> Result<(), ModelError> {
        let now = event.ktime_ns;
        let header = Header::of(event);
        match event.kind {
            kind::CREATE => {
                self.begin(MapRecord::new(event.map, true, header, now));
                return Ok(());
            }
            kind::CLONE => {
                self.clone_filled(event.map, header, now);
                return Ok(());
            }
            kind::GROW => {
                // Inside an assign: the count has not changed yet, so nothing is resolved.
                if let Some(record) = self.maps.get_mut(&event.map) {
                    record.grows += 1;
                }
                return Ok(());
            }
            _ => {}
        }
        let operation = operation(event)?;
        let readable = event.flags & FLAG_COUNT_UNREADABLE == 0;
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
        record.resolve(header);
        if operation == Pending::Clear {
            record.clears += 1;
        }
        record.pending = Some(operation);
        Ok(())
    }

    /// A clone returned, holding entries no assign put there. On Go ≤ 1.24 its create was
    /// seen inside the clone; on 1.25+ this is its first sighting.
    fn clone_filled(&mut self, addr: u64, header: Header, now: u64) {
        let known = self
            .maps
            .get(&addr)
            .is_some_and(|record| record.seed == header.seed && record.created);
        if !known {
            self.begin(MapRecord::new(addr, true, header, now));
        }
        if let Some(record) = self.maps.get_mut(&addr) {
            record.cloned = true;
            record.live = header.count;
            record.peak = record.peak.max(header.count);
            record.last_seen_ns = now;
        }
    }

    /// After the window: an event only settles its map's pending operation.
    fn settle_from(&mut self, event: &MapEvent) -> Result<(), ModelError> {
        let is_operation = !matches!(event.kind, kind::CREATE | kind::CLONE | kind::GROW);
        if is_operation {
            operation(event)?;
        }
        if event.flags & FLAG_COUNT_UNREADABLE == 0 && is_operation {
            self.settle(event.map, Header::of(event));
        }
        Ok(())
    }

    /// Starts a new record at its address; the map that lived there before is gone.
    fn begin(&mut self, fresh: MapRecord) {
        if let Some(mut gone) = self.maps.insert(fresh.addr, fresh) {
            gone.abandon();
            gone.released = true;
            self.released.push(gone);
        }
    }

    /// Ends the observation window at monotonic time `end_ns`: events that happened later
    /// only settle pending operations. Events from before it that are still in flight apply
    /// normally.
    pub fn freeze(&mut self, end_ns: u64) {
        self.window_end_ns = Some(end_ns);
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
        if let Some(record) = self.maps.get_mut(&addr) {
            if !record.is_pending() {
                return;
            }
            if record.owns(header) {
                record.resolve(header);
            } else {
                record.abandon();
            }
        }
    }

    /// Gives up on every operation still pending: the target is gone, its counts with it.
    pub fn abandon_pending(&mut self) {
        self.maps.values_mut().for_each(MapRecord::abandon);
    }

    /// Every map seen, freed ones included, in order of first sighting.
    pub fn maps(&self) -> Vec<&MapRecord> {
        let mut all: Vec<&MapRecord> = self.released.iter().chain(self.maps.values()).collect();
        all.sort_by_key(|record| (record.first_seen_ns, record.addr));
        all
    }

    /// Events applied or rejected.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Events rejected as malformed.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

fn operation(event: &MapEvent) -> Result<Pending, ModelError> {
    match event.kind {
        kind::ASSIGN => Ok(Pending::Assign {
            before: event.count,
        }),
        kind::DELETE => Ok(Pending::Delete {
            before: event.count,
        }),
        kind::CLEAR => Ok(Pending::Clear),
        other => Err(ModelError::UnknownKind(other)),
    }
}

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
            seed,
            kind,
            flags: 0,
            _pad: [0; 2],
        }
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
        let mut model = Model::new();
        for (time, &(kind, count, seed)) in events.iter().enumerate() {
            model
                .observe(&event(kind, count, seed, time as u64))
                .unwrap();
        }
        model
    }

    fn header(count: u64) -> Header {
        Header { count, seed: SEED }
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
        assert!(maps[0].released && !maps[1].released);
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
        model.settle(M, Header { count: 1, seed: 3 });
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
                count: 4,
                seed: SEED + 1,
            },
        );
        let map = only(&model);
        assert_eq!((map.inserts, map.live, map.unsettled), (0, 3, 1));
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
        assert!(maps[0].released && !maps[1].released);
        assert_eq!(
            maps[0].unsettled, 1,
            "its last assign can no longer be resolved"
        );
    }

    #[test]
    fn unreadable_counts_and_unknown_kinds_are_counted() {
        let mut model = Model::new();
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

    #[test]
    fn settling_a_map_without_pending_operation_changes_nothing() {
        let mut model = replay(&[(kind::CREATE, 0)]);
        model.settle(M, header(42));
        assert_eq!(only(&model).live, 0);
    }
}
