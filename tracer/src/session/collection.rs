//! Which maps get their header read at each of the target's collections, and what was read
//! for a map when another map takes its address (see `tracer_common::settle`).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tracer_common::{kind, CreateEvent, MapEvent};

use crate::model::{Collected, Model};

/// Maps listed at once, at most: the oldest listing goes first. Each costs the tracer a
/// 16-byte read per collection (16 `process_vm_readv` calls for a full list, a few
/// milliseconds) and under 100 bytes here (its listing, and its place in the order, kept
/// below twice this many).
const MAX_LISTED: usize = 16_384;

/// The tracer spends at most one part in this many of its time reading listed headers: after
/// a read that took `t`, collections in the next `t × (READ_SHARE − 1)` are not read, so that
/// a program that collects more often than the tracer can read does not starve the event
/// loop. A map reused after a collection that was not read stays `unsettled`.
const READ_SHARE: u32 = 10;

/// One listed map: the seed bits its header must hold, and the last read that found them.
#[derive(Clone, Copy, Debug)]
struct Listing {
    seed: u64,
    seed_mask: u64,
    /// The collection cycle and header words of the last read that found the map's seed.
    read: Option<(u32, [u64; 2])>,
    /// Tells this listing from an earlier one of the same address in `order`.
    serial: u64,
}

/// The maps whose header is read at each collection, oldest listing first.
#[derive(Default)]
pub(super) struct Listings {
    listed: HashMap<u64, Listing>,
    order: VecDeque<(u64, u64)>,
    serial: u64,
    /// No collection is read before then (see [`READ_SHARE`]).
    next_read: Option<Instant>,
}

impl Listings {
    /// At a collection's record, reads the header of every listed map with `read_headers`
    /// (the target's memory) and keeps, tagged with the cycle, each read that finds the map's
    /// seed. A map whose header holds another seed is unlisted: its memory is another
    /// object's (or it was reseeded, and its next record lists it again).
    pub(super) fn read_at_collection(
        &mut self,
        record: &[u8],
        read_headers: impl FnOnce(&[u64]) -> Vec<Option<[u64; 2]>>,
    ) {
        let Some(event) = MapEvent::from_bytes(record) else {
            return;
        };
        if event.kind != kind::COLLECTED || self.listed.is_empty() {
            return;
        }
        let Ok(cycle) = u32::try_from(event.count) else {
            return;
        };
        let started = Instant::now();
        if self.next_read.is_some_and(|next| started < next) {
            return;
        }
        let addrs: Vec<u64> = self.listed.keys().copied().collect();
        for (addr, words) in addrs.iter().zip(read_headers(&addrs)) {
            let Some(listing) = self.listed.get_mut(addr) else {
                continue;
            };
            match words {
                Some(words) if words[1] & listing.seed_mask == listing.seed => {
                    listing.read = Some((cycle, words));
                }
                Some(_) => {
                    self.listed.remove(addr);
                }
                None => {}
            }
        }
        let took = started.elapsed();
        self.next_read = Some(started + took + took * (READ_SHARE - 1));
    }

    /// Before a record goes to the model: when it is a creation at a listed address, the
    /// last read of the map listed there, which the creation's cycle may prove final. The
    /// map is unlisted.
    pub(super) fn before(&mut self, record: &[u8]) -> Option<Collected> {
        if record.len() != CreateEvent::SIZE {
            return None;
        }
        let event = MapEvent::from_bytes(record)?;
        if !matches!(event.kind, kind::CREATE | kind::CLONE) {
            return None;
        }
        let (cycle, words) = self.listed.remove(&event.map)?.read?;
        Some(Collected {
            addr: event.map,
            words,
            cycle,
        })
    }

    /// After a record went to the model: lists its map if a read could settle it and it is
    /// not listed yet.
    pub(super) fn after(&mut self, record: &[u8], model: &Model) {
        let Some(event) = MapEvent::from_bytes(record) else {
            return;
        };
        if self.listed.contains_key(&event.map) {
            return;
        }
        let Some((seed, seed_mask)) = model.collectable(event.map) else {
            return;
        };
        while self.listed.len() >= MAX_LISTED {
            let Some((addr, serial)) = self.order.pop_front() else {
                break;
            };
            if self
                .listed
                .get(&addr)
                .is_some_and(|listing| listing.serial == serial)
            {
                self.listed.remove(&addr);
            }
        }
        self.serial += 1;
        self.listed.insert(
            event.map,
            Listing {
                seed,
                seed_mask,
                read: None,
                serial: self.serial,
            },
        );
        self.order.push_back((event.map, self.serial));
        // Listings end at creations and reads too: drop what they left in `order` before it
        // outgrows the listings.
        if self.order.len() > 2 * MAX_LISTED {
            let listed = &self.listed;
            self.order.retain(|(addr, serial)| {
                listed
                    .get(addr)
                    .is_some_and(|listing| listing.serial == *serial)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::STACK_DEPTH;

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
            self.listings.read_at_collection(record, |addrs| {
                addrs.iter().map(|addr| memory.get(addr).copied()).collect()
            });
            if let Some(read) = self.listings.before(record) {
                self.model.collected(read);
            }
            self.model.observe_record(record);
            self.listings.after(record, &self.model);
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
        assert!(
            traced.listings.listed.contains_key(&MAP),
            "a created map is listed"
        );
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
        assert!(traced.listings.listed.is_empty());
        traced.feed(&created(MAP, 0xbeef, 4, 1), &[]);
        assert_eq!(traced.model.settled_at_collection(), 0);
    }

    #[test]
    fn listings_stay_bounded_and_the_oldest_go_first() {
        let mut traced = Traced::new();
        let maps = MAX_LISTED as u64 + 10;
        for n in 0..maps {
            traced.fill(MAP + n * 0x40, 1, 2 * n + 1);
        }
        let listings = &traced.listings;
        assert_eq!(listings.listed.len(), MAX_LISTED);
        assert!(
            !listings.listed.contains_key(&MAP),
            "the first listed went first"
        );
        assert!(listings.listed.contains_key(&(MAP + (maps - 1) * 0x40)));
        assert!(listings.order.len() <= 2 * MAX_LISTED);
    }
}
