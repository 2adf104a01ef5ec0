//! Which maps get their header read at each of the target's collections, and what was read
//! for a map when another map takes its address (see `tracer_common::settle`).

use std::time::Instant;

use tracer_common::{kind, MapEvent};

use crate::model::{Collected, Model};

/// Slots of the listing table (a power of two). A map is listed in the slot its address
/// picks, in place of the map listed there before: the table is a cache of the maps made
/// last, costing one hash and compare per record and no allocation. Each listed map costs
/// the tracer a 16-byte read per collection (8 `process_vm_readv` calls for a full table,
/// about a millisecond).
const SLOTS: usize = 8_192;

/// The tracer spends at most one part in this many of its time reading listed headers: after
/// a read that took `t`, collections in the next `t × (READ_SHARE − 1)` are not read, so that
/// a program that collects more often than the tracer can read does not starve the event
/// loop. A map reused after a collection that was not read stays `unsettled`.
const READ_SHARE: u32 = 50;

/// One listed map: its address (0: an empty slot), the seed bits its header must hold, and
/// the last read that found them.
#[derive(Clone, Copy, Debug, Default)]
struct Listing {
    map: u64,
    seed: u64,
    seed_mask: u64,
    /// The collection cycle and header words of the last read that found the map's seed.
    read: Option<(u32, [u64; 2])>,
}

/// The maps whose header is read at each collection.
pub(super) struct Listings {
    slots: Box<[Listing]>,
    /// No collection is read before then (see [`READ_SHARE`]).
    next_read: Option<Instant>,
}

impl Default for Listings {
    fn default() -> Listings {
        Listings {
            slots: vec![Listing::default(); SLOTS].into_boxed_slice(),
            next_read: None,
        }
    }
}

impl Listings {
    /// Before the model sees `event`: at a collection, reads the listed headers with
    /// `read_headers` (the target's memory); at a creation (or clone) at a listed address,
    /// the last read of the map listed there, which the creation's cycle may prove final
    /// (that map is unlisted).
    pub(super) fn before(
        &mut self,
        event: &MapEvent,
        read_headers: impl FnOnce(&[u64]) -> Vec<Option<[u64; 2]>>,
    ) -> Option<Collected> {
        match event.kind {
            kind::COLLECTED => {
                self.read_at_collection(event, read_headers);
                None
            }
            kind::CREATE | kind::CLONE => self.take_read(event.map),
            _ => None,
        }
    }

    fn slot(map: u64) -> usize {
        // Headers are at least 16-byte aligned; a multiplicative hash spreads the rest.
        ((map >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
    }

    /// At a collection, reads the header of every listed map and keeps, tagged with the
    /// cycle, each read that finds the map's seed. A map whose header holds another seed is
    /// unlisted: its memory is another object's (or it was reseeded, and its next record
    /// lists it again).
    fn read_at_collection(
        &mut self,
        event: &MapEvent,
        read_headers: impl FnOnce(&[u64]) -> Vec<Option<[u64; 2]>>,
    ) {
        let Ok(cycle) = u32::try_from(event.count) else {
            return;
        };
        let started = Instant::now();
        if self.next_read.is_some_and(|next| started < next) {
            return;
        }
        let listed: Vec<usize> = (0..SLOTS)
            .filter(|&slot| self.slots[slot].map != 0)
            .collect();
        if listed.is_empty() {
            return;
        }
        let addrs: Vec<u64> = listed.iter().map(|&slot| self.slots[slot].map).collect();
        for (&slot, words) in listed.iter().zip(read_headers(&addrs)) {
            let listing = &mut self.slots[slot];
            match words {
                Some(words) if words[1] & listing.seed_mask == listing.seed => {
                    listing.read = Some((cycle, words));
                }
                Some(_) => *listing = Listing::default(),
                None => {}
            }
        }
        let took = started.elapsed();
        self.next_read = Some(started + took + took * (READ_SHARE - 1));
    }

    /// Unlists the map at `map`, with its last read.
    fn take_read(&mut self, map: u64) -> Option<Collected> {
        let listing = &mut self.slots[Self::slot(map)];
        if listing.map != map {
            return None;
        }
        let (cycle, words) = std::mem::take(listing).read?;
        Some(Collected {
            addr: map,
            words,
            cycle,
        })
    }

    /// After the model saw `event`: lists its map if it is not listed yet and a read could
    /// settle it.
    pub(super) fn after(&mut self, event: &MapEvent, model: &Model) {
        let slot = Self::slot(event.map);
        if event.map == 0 || self.slots[slot].map == event.map {
            return;
        }
        if let Some((seed, seed_mask)) = model.collectable(event.map) {
            self.slots[slot] = Listing {
                map: event.map,
                seed,
                seed_mask,
                read: None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tracer_common::{CreateEvent, STACK_DEPTH};

    use super::*;
    use crate::model::Limits;
    use crate::plan::MapImplementation;

    const MAP: u64 = 0x00c0_0001_0000;
    const SEED: u64 = 0x5eed;

    fn event(kind: u8, map: u64, count: u64, seed: u64, at: u64) -> MapEvent {
        MapEvent {
            ktime_ns: at,
            map,
            count,
            header_word: seed,
            map_type: 0,
            key_hash: 0,
            kind,
            flags: 0,
            folded: 0,
        }
    }

    fn bytes(event: MapEvent) -> Vec<u8> {
        // SAFETY: `MapEvent` is plain data of exactly this size.
        let bytes: [u8; MapEvent::SIZE] = unsafe { std::mem::transmute(event) };
        bytes.to_vec()
    }

    fn created(map: u64, seed: u64, at: u64, gc_cycle: u32) -> Vec<u8> {
        let mut stack = [0u64; STACK_DEPTH];
        stack[0] = 0x1000;
        let create = CreateEvent {
            event: event(kind::CREATE, map, 0, seed, at),
            caller: 0x2000,
            stack_len: 1,
            gc_cycle,
            stack,
        };
        // SAFETY: `CreateEvent` is plain data of exactly this size.
        let bytes: [u8; CreateEvent::SIZE] = unsafe { std::mem::transmute(create) };
        bytes.to_vec()
    }

    /// A model and its listings, fed records as the session feeds them.
    struct Traced {
        listings: Listings,
        model: Model,
    }

    impl Traced {
        fn new() -> Traced {
            Traced {
                listings: Listings::default(),
                model: Model::new(MapImplementation::Swiss, Limits::default()),
            }
        }

        /// Feeds `record`: reads at a collection from `memory`, the collection's read before
        /// a creation, the record, then the listing.
        fn feed(&mut self, record: &[u8], memory: &[(u64, [u64; 2])]) {
            let memory: HashMap<u64, [u64; 2]> = memory.iter().copied().collect();
            let event = MapEvent::from_bytes(record).expect("a whole record");
            let read = self.listings.before(&event, |addrs| {
                addrs.iter().map(|addr| memory.get(addr).copied()).collect()
            });
            if let Some(read) = read {
                self.model.collected(read);
            }
            self.model.observe_record(record);
            self.listings.after(&event, &self.model);
        }

        fn listed(&self, map: u64) -> bool {
            self.listings.slots[Listings::slot(map)].map == map
        }

        /// Makes `map` with `SEED` and inserts `inserts` keys, from time `at` on.
        fn fill(&mut self, map: u64, inserts: u64, at: u64) {
            self.feed(&created(map, SEED, at, 0), &[]);
            for count in 0..inserts {
                let write = event(kind::ASSIGN, map, count, SEED, at + 1 + count);
                self.feed(&bytes(write), &[]);
            }
        }
    }

    #[test]
    fn a_map_read_at_the_last_collection_is_settled_when_its_address_is_reused() {
        let mut traced = Traced::new();
        traced.fill(MAP, 2, 1);
        assert!(traced.listed(MAP), "a created map is listed");
        // Collection 1 finds the map's two entries; the map's memory then holds a new map.
        traced.feed(
            &bytes(event(kind::COLLECTED, 0, 1, 0, 4)),
            &[(MAP, [2, SEED])],
        );
        traced.feed(&created(MAP, 0xbeef, 5, 1), &[]);
        let model = &traced.model;
        assert_eq!(model.malformed(), 0, "a collection's record is no map's");
        assert_eq!(model.settled_at_collection(), 1);
        let gone = model.maps().into_iter().find(|map| map.is_released());
        let gone = gone.expect("the first map is released");
        assert_eq!((gone.live, gone.inserts, gone.unsettled), (2, 2, 0));
    }

    #[test]
    fn a_header_holding_another_seed_unlists_its_map() {
        let mut traced = Traced::new();
        traced.fill(MAP, 1, 1);
        traced.feed(
            &bytes(event(kind::COLLECTED, 0, 1, 0, 3)),
            &[(MAP, [7, 0xf00d])],
        );
        assert!(!traced.listed(MAP));
        traced.feed(&created(MAP, 0xbeef, 4, 1), &[]);
        assert_eq!(traced.model.settled_at_collection(), 0);
    }

    #[test]
    fn a_map_takes_the_slot_of_the_one_listed_there_before() {
        let mut traced = Traced::new();
        let slot = Listings::slot(MAP);
        let rival = (1..)
            .map(|n| MAP + n * 0x40)
            .find(|&map| Listings::slot(map) == slot)
            .unwrap();
        traced.fill(MAP, 1, 1);
        traced.fill(rival, 1, 3);
        assert!(traced.listed(rival) && !traced.listed(MAP));
        // The map no longer listed is not read, so its release proves nothing.
        traced.feed(
            &bytes(event(kind::COLLECTED, 0, 1, 0, 5)),
            &[(MAP, [1, SEED])],
        );
        traced.feed(&created(MAP, 0xbeef, 6, 1), &[]);
        assert_eq!(traced.model.settled_at_collection(), 0);
    }
}
