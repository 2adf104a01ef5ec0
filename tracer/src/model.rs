//! The life of every map the tracer has seen, rebuilt from events alone.
//!
//! This module does no I/O: it is fed [`MapEvent`]s (live from the ring buffer, or recorded
//! sequences in tests) and, at the end, the final element counts the caller could read from
//! the target. Everything it reports follows from those inputs.
//!
//! Probes only fire on entry, so each event carries the count *before* its operation. Go maps
//! are not safe for concurrent writes, so operations on one map are ordered, and the ring
//! buffer keeps that order: the effect of an operation shows in the count at the map's next
//! observation. An assign followed by a count one higher was an insert, by the same count an
//! overwrite; a delete followed by a count one lower removed a key. The last operation on a
//! map stays pending until [`Model::settle`] gives the final count.

use std::collections::HashMap;

use tracer_common::{kind, MapEvent, FLAG_COUNT_UNREADABLE};

/// An operation whose effect is only known once the map's count is seen again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Assign { before: u64 },
    Delete { before: u64 },
    Clear,
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
    /// Operations whose effect could not be established, and count changes no observed
    /// operation explains (lost events, or runtime paths without a probe). Zero means every
    /// number above is exact.
    pub unexplained: u64,
    /// The address was reused by a later map, so this one was freed by the GC.
    pub released: bool,
    /// Monotonic time of the first and last event, in nanoseconds.
    pub first_seen_ns: u64,
    /// See `first_seen_ns`.
    pub last_seen_ns: u64,
    pending: Option<Pending>,
}

impl MapRecord {
    fn new(addr: u64, created: bool, count: u64, now_ns: u64) -> MapRecord {
        MapRecord {
            addr,
            created,
            live: count,
            peak: count,
            inserts: 0,
            overwrites: 0,
            deletes: 0,
            clears: 0,
            unexplained: 0,
            released: false,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            pending: None,
        }
    }

    /// Accounts for the pending operation now that the count is `observed`.
    fn resolve(&mut self, observed: u64) {
        let explained = match self.pending.take() {
            Some(Pending::Assign { before }) if observed == before + 1 => {
                self.inserts += 1;
                true
            }
            Some(Pending::Assign { before }) if observed == before => {
                self.overwrites += 1;
                true
            }
            Some(Pending::Delete { before }) if observed + 1 == before => {
                self.deletes += 1;
                true
            }
            Some(Pending::Delete { before }) => observed == before,
            Some(Pending::Clear) => observed == 0,
            Some(Pending::Assign { .. }) => false,
            None => observed == self.live,
        };
        if !explained {
            self.unexplained += 1;
        }
        self.live = observed;
        self.peak = self.peak.max(observed);
    }

    /// Gives up on the pending operation: its effect can no longer be observed.
    fn abandon(&mut self) {
        if self.pending.take().is_some() {
            self.unexplained += 1;
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
}

impl Model {
    /// An empty model.
    pub fn new() -> Model {
        Model::default()
    }

    /// Applies one event. Unknown kinds are counted in [`Model::malformed`] and reported.
    pub fn observe(&mut self, event: &MapEvent) -> Result<(), ModelError> {
        self.received += 1;
        let result = self.apply(event);
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
        if event.kind == kind::CREATE {
            self.create(event.map, event.count, now);
            return Ok(());
        }
        let operation = match event.kind {
            kind::ASSIGN => Pending::Assign {
                before: event.count,
            },
            kind::DELETE => Pending::Delete {
                before: event.count,
            },
            kind::CLEAR => Pending::Clear,
            other => return Err(ModelError::UnknownKind(other)),
        };
        let record = self
            .maps
            .entry(event.map)
            .or_insert_with(|| MapRecord::new(event.map, false, event.count, now));
        record.last_seen_ns = now;
        if event.flags & FLAG_COUNT_UNREADABLE != 0 {
            record.abandon();
            record.unexplained += 1;
            return Ok(());
        }
        record.resolve(event.count);
        if operation == Pending::Clear {
            record.clears += 1;
        }
        record.pending = Some(operation);
        Ok(())
    }

    /// A create returning a known address proves the map that lived there was freed.
    fn create(&mut self, addr: u64, count: u64, now: u64) {
        let fresh = MapRecord::new(addr, true, count, now);
        if let Some(mut freed) = self.maps.insert(addr, fresh) {
            freed.abandon();
            freed.released = true;
            self.released.push(freed);
        }
    }

    /// Addresses of the maps whose last operation waits for a final count.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.maps
            .values()
            .filter(|record| record.is_pending())
            .map(|record| record.addr)
    }

    /// Resolves the map's pending operation with its count read after the probes were
    /// detached. A count that the pending operation cannot explain is counted as unexplained.
    pub fn settle(&mut self, addr: u64, count: u64) {
        if let Some(record) = self.maps.get_mut(&addr) {
            if record.is_pending() {
                record.resolve(count);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, map: u64, count: u64, ktime_ns: u64) -> MapEvent {
        MapEvent {
            ktime_ns,
            map,
            count,
            kind,
            flags: 0,
            _pad: [0; 6],
        }
    }

    fn replay(events: &[(u8, u64, u64)]) -> Model {
        let mut model = Model::new();
        for (time, &(kind, map, count)) in events.iter().enumerate() {
            model
                .observe(&event(kind, map, count, time as u64))
                .unwrap();
        }
        model
    }

    fn only(model: &Model) -> &MapRecord {
        let maps = model.maps();
        assert_eq!(maps.len(), 1);
        maps[0]
    }

    const M: u64 = 0x00c0_0001_0000;

    #[test]
    fn insert_overwrite_and_delete_are_told_apart_by_the_next_count() {
        let mut model = replay(&[
            (kind::CREATE, M, 0),
            (kind::ASSIGN, M, 0), // insert
            (kind::ASSIGN, M, 1), // overwrite
            (kind::ASSIGN, M, 1), // insert
            (kind::DELETE, M, 2), // removes
            (kind::DELETE, M, 1), // missing key
            (kind::ASSIGN, M, 1), // pending until settled
        ]);
        assert_eq!(model.pending().collect::<Vec<_>>(), vec![M]);
        model.settle(M, 2);
        let map = only(&model);
        assert!(map.created);
        assert_eq!((map.inserts, map.overwrites, map.deletes), (3, 1, 1));
        assert_eq!((map.live, map.peak, map.unexplained), (2, 2, 0));
        assert_eq!(model.pending().count(), 0);
    }

    #[test]
    fn clear_counts_once_and_expects_an_empty_map() {
        let mut model = replay(&[
            (kind::ASSIGN, M, 5),
            (kind::CLEAR, M, 6),
            (kind::ASSIGN, M, 0),
        ]);
        model.settle(M, 1);
        let map = only(&model);
        assert!(!map.created);
        assert_eq!((map.clears, map.inserts, map.live, map.peak), (1, 2, 1, 6));
        assert_eq!(map.unexplained, 0);
    }

    #[test]
    fn a_count_no_operation_explains_is_flagged() {
        let mut model = replay(&[(kind::ASSIGN, M, 0), (kind::ASSIGN, M, 7)]);
        model.settle(M, 8);
        let map = only(&model);
        assert_eq!((map.inserts, map.unexplained, map.live), (1, 1, 8));
    }

    #[test]
    fn abandoned_operations_are_unexplained_not_guessed() {
        let mut model = replay(&[(kind::ASSIGN, M, 0), (kind::ASSIGN, M, 1)]);
        model.abandon_pending();
        let map = only(&model);
        assert_eq!(
            (map.inserts, map.overwrites, map.unexplained, map.live),
            (1, 0, 1, 1)
        );
    }

    #[test]
    fn a_create_at_a_known_address_releases_the_old_map() {
        let model = replay(&[
            (kind::CREATE, M, 0),
            (kind::ASSIGN, M, 0),
            (kind::CREATE, M, 0),
            (kind::ASSIGN, M, 0),
        ]);
        let maps = model.maps();
        assert_eq!(maps.len(), 2);
        assert!(maps[0].released && !maps[1].released);
        assert_eq!(
            maps[0].unexplained, 1,
            "its last assign can no longer be resolved"
        );
    }

    #[test]
    fn unreadable_counts_and_unknown_kinds_are_counted() {
        let mut model = Model::new();
        let mut unreadable = event(kind::ASSIGN, M, 0, 1);
        unreadable.flags = FLAG_COUNT_UNREADABLE;
        model.observe(&unreadable).unwrap();
        assert_eq!(
            model.observe(&event(99, M, 0, 2)),
            Err(ModelError::UnknownKind(99))
        );
        model.observe_record(&[0; 8]);
        assert_eq!((model.received(), model.malformed()), (3, 2));
        assert_eq!(only(&model).unexplained, 1);
    }

    #[test]
    fn settling_a_map_without_pending_operation_changes_nothing() {
        let mut model = replay(&[(kind::CREATE, M, 0)]);
        model.settle(M, 42);
        assert_eq!(only(&model).live, 0);
    }
}
