//! The model's memory stays bounded over a long trace: a synthetic soak fed through the
//! model's own I/O-free API (creations with stacks, sampled writes, releases found in the
//! target's memory), checked against the bound each structure states.

use tracer_common::{kind, CreateEvent, MapEvent, FLAG_KEY_SAMPLED, STACK_DEPTH};

use super::*;
use crate::memory::release::Dropped;
use crate::writers;

const BASE: u64 = 0x00c0_0000_0000;
/// The creation sites of the synthetic program.
const SITES: u64 = 3;

fn create(addr: u64, seed: u32, at: u64, site: u64) -> CreateEvent {
    let mut stack = [0u64; STACK_DEPTH];
    stack[..3].copy_from_slice(&[0x40_1000, 0x40_2000 + site * 0x10, 0x40_3000]);
    CreateEvent {
        event: event(kind::CREATE, addr, 0, seed, at, None),
        caller: 0,
        stack_len: 3,
        gc_cycle: 0,
        stack,
    }
}

fn event(kind: u8, addr: u64, count: u64, seed: u32, at: u64, key: Option<u32>) -> MapEvent {
    MapEvent {
        ktime_ns: at,
        map: addr,
        count,
        header_word: seed as u64,
        map_type: 0x50_0000 + (addr >> 6) % 4,
        key_hash: key.unwrap_or(0),
        kind,
        flags: if key.is_some() { FLAG_KEY_SAMPLED } else { 0 },
        folded: 0,
    }
}

/// What the release detector would pass on for every map idle since `before_ns`, each
/// found freed with its last count in its header.
fn drop_idle(model: &mut Model, before_ns: u64, at_ns: u64) {
    let gone: Vec<Dropped> = model
        .live_maps()
        .filter(|record| record.last_seen_ns < before_ns)
        .map(|record| Dropped {
            addr: record.addr,
            seed: record.seed(),
            last_seen_ns: record.last_seen_ns,
            words: Some([record.live + 1, record.seed() as u64]),
            freed: true,
            reused: false,
            at_ns,
        })
        .collect();
    for dropped in &gone {
        model.dropped(dropped);
    }
}

fn check_bounds(model: &Model) {
    let live = model.maps.len();
    assert!(
        model.maps.capacity() <= MAP_TABLE_SLACK * live + MIN_MAP_CAPACITY,
        "table of {live} live maps has room for {}",
        model.maps.capacity()
    );
    assert!(model.released.len() <= model.limits.released_maps);
    assert!(model.entries.live.len() <= model.limits.sampled_entries);
    assert!(model.stacks.len() <= writers::MAX_STACKS + SITES as usize);
    assert_eq!(model.stack_ids.len(), model.stacks.len());
    assert!(model.stack_totals.len() <= model.stacks.len());
    assert!(model.types_seen.len() <= 4);
    assert!(model
        .maps
        .values()
        .all(|record| record.writers.list().len() <= writers::MAX_PER_MAP));
}

#[test]
fn a_long_trace_of_short_lived_maps_stays_within_every_bound() {
    let limits = Limits {
        released_maps: 500,
        sampled_entries: 2_000,
    };
    let mut model = Model::new(MapImplementation::Swiss, limits);
    // A cache that keeps growing, every key sampled: the sample table fills and stays full.
    let cache = BASE - 0x1000;
    model.observe_create(&create(cache, 7, 1, 0)).unwrap();
    let mut cache_count = 0;
    let mut next = 0u64;
    let mut now = 10u64;
    for round in 0..120u64 {
        // A burst first (the live count peaks), then steady rounds of 1,000 maps each.
        let maps = if round == 0 { 40_000 } else { 1_000 };
        for _ in 0..maps {
            let addr = BASE + next * 0x40;
            let seed = (next as u32).wrapping_mul(2_654_435_761) | 1;
            model
                .observe_create(&create(addr, seed, now, next % SITES))
                .unwrap();
            for count in 0..3 {
                now += 1;
                let key = Some(next as u32 * 4 + count as u32);
                model
                    .observe(&event(kind::ASSIGN, addr, count, seed, now, key))
                    .unwrap();
            }
            // A writer stack never seen before, until the stack table is full.
            let mut written = create(addr, seed, now, next % SITES);
            written.event = event(kind::ASSIGN, cache, cache_count, 7, now, Some(next as u32));
            written.stack[3] = 0x60_0000 + next;
            written.stack_len = 4;
            model.observe_create(&written).unwrap();
            cache_count += 1;
            next += 1;
            now += 1;
        }
        // The collector frees what the program dropped: everything but the last round's maps.
        drop_idle(&mut model, now - 4_000, now);
        assert!(model.maps.len() <= 4_002, "{} live", model.maps.len());
        check_bounds(&model);
    }
    assert_eq!(next, 159_000);
    let (sampled, untracked) = model.sampled_entries();
    assert_eq!(sampled as usize, limits.sampled_entries);
    assert!(untracked > 0);
    assert!(model.released_unlisted() > 0);
    assert!(model.maps().iter().all(|record| record.unexplained == 0));
}

#[test]
fn the_table_of_live_maps_shrinks_after_a_peak() {
    let mut model = Model::new(MapImplementation::Swiss, Limits::default());
    for n in 0..50_000u64 {
        model
            .observe_create(&create(BASE + n * 0x40, 1, n + 1, 0))
            .unwrap();
    }
    let peak = model.maps.capacity();
    assert!(peak >= 50_000);
    drop_idle(&mut model, 49_001, 60_000);
    assert_eq!(model.maps.len(), 1_000);
    assert!(
        model.maps.capacity() <= MAP_TABLE_SLACK * 1_000 + MIN_MAP_CAPACITY,
        "{} after a peak of {peak}",
        model.maps.capacity()
    );
}

/// The README states the bound per map the model holds from these sizes: a record of at
/// most 456 bytes on its own, and a 16-byte slot (key and pointer) in the table of maps.
#[test]
fn a_map_held_costs_its_record_and_a_pointer_sized_slot() {
    assert!(
        std::mem::size_of::<MapRecord>() <= 456,
        "{}",
        std::mem::size_of::<MapRecord>()
    );
    assert_eq!(std::mem::size_of::<(u64, Box<MapRecord>)>(), 16);
}
