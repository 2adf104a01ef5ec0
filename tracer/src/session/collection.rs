//! Which maps the collection probe reads in each pause of the target's collector, and what
//! it read for a map when another map takes its address (see `tracer_common::settle`).

use std::collections::HashMap;

use tracer_common::{kind, settle, settle::SettleSlot, CreateEvent, MapEvent};

use crate::model::{Collected, Model};
use crate::probes::{Collection, ProbeError};

/// How many slots from the next one in turn a new listing looks at for one whose map can no
/// longer be settled: enough to skip the maps whose memory went to other objects, few enough
/// that the slots still go round in about the order they were taken.
const STALE_SCAN: u32 = 64;

/// The slots handed out: each listed map's slot, and each slot's map. When every slot is
/// taken, a new listing takes a slot whose map can no longer be settled (listed before the
/// last collection, whose read did not find its seed: its memory holds something else now)
/// among the next few in turn, else the next one, so that the maps listed last are read.
pub(super) struct Listings {
    collection: Collection,
    slot_of: HashMap<u64, u32>,
    map_in: Vec<u64>,
    /// Per slot: the collector cycles finished, as last read, when its map was listed.
    listed_at: Vec<u32>,
    free: Vec<u32>,
    hand: u32,
    /// The collector cycles finished, as last read.
    cycles: u32,
}

impl Listings {
    pub(super) fn new(collection: Collection) -> Listings {
        Listings {
            collection,
            slot_of: HashMap::new(),
            map_in: Vec::new(),
            listed_at: Vec::new(),
            free: Vec::new(),
            hand: 0,
            cycles: 0,
        }
    }

    /// Reads how many collections the target has finished, before a batch of records.
    pub(super) fn refresh(&mut self) -> Result<(), ProbeError> {
        self.cycles = self.collection.cycles()?;
        Ok(())
    }

    /// Before a record goes to the model: when it is a creation at a listed address, the
    /// probe's last read for the map listed there, which the creation's cycle may prove
    /// final. The slot is free again.
    pub(super) fn before(&mut self, record: &[u8]) -> Option<Collected> {
        let addr = creation_at(record)?;
        let slot = self.slot_of.remove(&addr)?;
        self.map_in[slot as usize] = 0;
        self.free.push(slot);
        let read = self.collection.read(slot);
        (read.cycle != 0 && read.read_map == addr).then_some(Collected {
            addr,
            words: [read.count, read.word],
            cycle: read.cycle,
        })
    }

    /// After a record went to the model: lists its map if a read could settle it and it is
    /// not listed yet. Fails only when a slot cannot be added to the ones the probe reads.
    pub(super) fn after(&mut self, record: &[u8], model: &Model) -> Result<(), ProbeError> {
        let Some(addr) = record_map(record) else {
            return Ok(());
        };
        if self.slot_of.contains_key(&addr) {
            return Ok(());
        }
        let Some((seed, seed_mask)) = model.collectable(addr) else {
            return Ok(());
        };
        let slot = self.take_slot()?;
        self.collection
            .list(slot, &SettleSlot::listing(addr, seed, seed_mask));
        self.slot_of.insert(addr, slot);
        self.map_in[slot as usize] = addr;
        self.listed_at[slot as usize] = self.cycles;
        Ok(())
    }

    /// A free slot, a new one, one whose map can no longer be settled among the next
    /// [`STALE_SCAN`], or the next one in turn.
    fn take_slot(&mut self) -> Result<u32, ProbeError> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        let used = self.map_in.len() as u32;
        if used < settle::SLOTS {
            self.map_in.push(0);
            self.listed_at.push(0);
            self.collection.set_used(used + 1)?;
            return Ok(used);
        }
        let slot = (0..STALE_SCAN)
            .map(|step| (self.hand + step) % settle::SLOTS)
            .find(|&slot| self.unsettleable(slot))
            .unwrap_or(self.hand);
        self.hand = (slot + 1) % settle::SLOTS;
        let evicted = std::mem::take(&mut self.map_in[slot as usize]);
        self.slot_of.remove(&evicted);
        Ok(slot)
    }

    /// Whether the map in `slot` was listed before the last collection, whose read did not
    /// find the map's seed there: its memory is another object's (or it was reseeded), and
    /// no later read can settle it.
    fn unsettleable(&self, slot: u32) -> bool {
        self.listed_at[slot as usize] < self.cycles
            && self.collection.last_read_cycle(slot) < self.cycles
    }
}

/// The address of the map a ring-buffer record is about.
fn record_map(record: &[u8]) -> Option<u64> {
    MapEvent::from_bytes(record).map(|event| event.map)
}

/// The address of a map created (or cloned) by this record.
fn creation_at(record: &[u8]) -> Option<u64> {
    if record.len() != CreateEvent::SIZE {
        return None;
    }
    let event = MapEvent::from_bytes(record)?;
    matches!(event.kind, kind::CREATE | kind::CLONE).then_some(event.map)
}
