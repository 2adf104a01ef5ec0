//! The model against recorded event sequences: every rule of the state machine.

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
        folded: 0,
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

fn header(count: u64) -> MapHeader {
    MapHeader {
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
    model.settle_with_header(M, header(2));
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
    model.settle_with_header(M, header(1));
    let map = only(&model);
    assert!(!map.created);
    assert_eq!((map.clears, map.inserts, map.live, map.peak), (1, 2, 1, 6));
    assert_eq!(map.unexplained, 0);
}

#[test]
fn a_count_no_operation_explains_is_flagged() {
    let mut model = replay(&[(kind::ASSIGN, 0), (kind::ASSIGN, 7)]);
    model.settle_with_header(M, header(8));
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
    model.settle_with_header(
        M,
        MapHeader {
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
fn once_the_probes_start_going_events_settle_nothing() {
    // Insert pending at the window's end; while the probes go one by one, the insert probe
    // is gone and two unseen inserts happen before the still-attached delete probe fires.
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0), (kind::ASSIGN, 1)]);
    model.freeze(5);
    model.detaching(6);
    model.observe(&event(kind::DELETE, 4, SEED, 7)).unwrap();
    let map = only(&model);
    assert_eq!((map.inserts, map.unexplained), (1, 0));
    assert!(map.is_pending());
    // The header read once the probes are gone settles what it can explain, nothing else.
    model.settle_with_read(M, [4, u64::from(SEED)]);
    let map = only(&model);
    assert_eq!((map.inserts, map.unexplained, map.unsettled), (1, 0, 1));
    // Before the detach started, the same event settles as any event after the window.
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0), (kind::ASSIGN, 1)]);
    model.freeze(5);
    model.observe(&event(kind::DELETE, 2, SEED, 6)).unwrap();
    model.detaching(7);
    let map = only(&model);
    assert_eq!((map.inserts, map.live, map.unexplained), (2, 2, 0));
    // A new window (sampled mode) counts again.
    model.rearm(8);
    model.observe(&event(kind::DELETE, 2, SEED, 9)).unwrap();
    model.observe(&event(kind::ASSIGN, 1, SEED, 10)).unwrap();
    assert_eq!(only(&model).deletes, 1);
}

#[test]
fn a_map_emptied_between_windows_goes_on_as_the_same_map() {
    const TYPE: u64 = 0x4a_0000;
    let typed = |kind, count, seed, at| MapEvent {
        map_type: TYPE,
        ..event(kind, count, seed, at)
    };
    let mut model = swiss();
    for (at, count) in (0..5).enumerate() {
        model
            .observe(&typed(kind::ASSIGN, count, SEED, at as u64))
            .unwrap();
    }
    model.freeze(10);
    // Between windows the map is emptied (the runtime reseeds it) and filled again: the
    // next window's first event reads a new seed on a map of the same type.
    model.rearm(20);
    model
        .observe(&typed(kind::ASSIGN, 3, SEED + 1, 21))
        .unwrap();
    model
        .observe(&typed(kind::ASSIGN, 4, SEED + 1, 22))
        .unwrap();
    let map = only(&model);
    assert_eq!((map.first_seen_ns, map.live, map.unexplained), (0, 4, 0));
    assert_eq!(map.seed, SEED + 1);
    // A map of another type at the address is another map, window or not.
    model.freeze(30);
    model.rearm(40);
    model
        .observe(&MapEvent {
            map_type: TYPE + 8,
            ..event(kind::ASSIGN, 0, SEED + 2, 41)
        })
        .unwrap();
    let maps = model.maps();
    assert_eq!(maps.len(), 2, "{maps:#?}");
    assert!(maps
        .iter()
        .any(|map| map.is_released() && map.first_seen_ns == 0));
}

#[test]
fn a_foreign_header_does_not_settle_a_map() {
    let mut model = replay(&[(kind::ASSIGN, 3)]);
    model.settle_with_header(
        M,
        MapHeader {
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
    model.settle_with_read(M, [0xc0_0000_0000, u64::from(SEED)]);
    let map = only(&model);
    assert_eq!((map.live, map.peak, map.inserts), (0, 0, 0));
    assert_eq!((map.unsettled, map.unexplained), (1, 0));
    // A header the pending insert explains settles it.
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    model.settle_with_read(M, [1, u64::from(SEED)]);
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
    model.settle_with_header(M, header(41));
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
    model.settle_with_read(M, [14, classic_word(2)]);
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
    model.settle_with_header(M, header(16));
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
    model.settle_with_header(M, header(42));
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
    model.settle_with_header(M, header(2));
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
    model.settle_with_header(M, header(0));
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
                gc_cycle: 0,
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
        gc_cycle: 0,
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
    model.settle_with_header(M, header(11));
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

    // A recursive caller returns to the same address twice: both frames are kept.
    let mut recursive = written(kind::ASSIGN, 11, 7, 0x2000);
    recursive.stack[..3].copy_from_slice(&[0x1000, 0x2000, 0x9000]);
    recursive.stack_len = 3;
    model.observe_create(&recursive).unwrap();
    assert_eq!(
        model.stacks().last(),
        Some(&vec![0x1000, 0x2000, 0x2000, 0x9000])
    );
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

/// `event` carrying `folded` writes the BPF side folded before it.
fn folding(kind: u8, count: u64, ktime_ns: u64, folded: u16) -> MapEvent {
    MapEvent {
        folded,
        ..event(kind, count, SEED, ktime_ns)
    }
}

#[test]
fn folded_writes_are_overwrites_and_the_last_of_them_is_pending() {
    let mut model = replay(&[(kind::CREATE, 0)]);
    // An insert; its next write found the same count and folded (proving it an overwrite)
    // with four more; the last folded write inserted, as the record carrying them shows.
    for event in [
        folding(kind::ASSIGN, 0, 1, 0),
        folding(kind::ASSIGN, 1, 2, 0),
        folding(kind::ASSIGN, 2, 9, 5),
        folding(kind::DELETE, 2, 10, 0),
    ] {
        model.observe(&event).unwrap();
    }
    model.settle_with_header(M, header(1));
    let map = only(&model);
    // Overwrites: the write after the insert and four folded ones, then the write that
    // carried the folds (the delete found its count unchanged).
    assert_eq!((map.inserts, map.overwrites, map.deletes), (2, 6, 1));
    assert_eq!((map.live, map.unexplained, map.unsettled), (1, 0, 0));
    assert_eq!((model.folds(), model.folds_uncredited()), (5, 0));
}

#[test]
fn folded_deletes_of_missing_keys_count_nothing() {
    let model = {
        let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
        for event in [
            folding(kind::DELETE, 1, 2, 0),
            folding(kind::DELETE, 0, 3, 0),
            folding(kind::ASSIGN, 0, 8, 4),
        ] {
            model.observe(&event).unwrap();
        }
        model
    };
    let map = only(&model);
    assert_eq!((map.inserts, map.overwrites, map.deletes), (1, 0, 1));
    assert_eq!((map.live, map.unexplained), (0, 0));
    assert_eq!(model.folds(), 4);
}

#[test]
fn a_folded_write_takes_the_pending_key_and_writer_with_it() {
    let mut model = replay(&[(kind::CREATE, 0)]);
    let mut keyed = written(kind::ASSIGN, 0, 1, 0x40);
    keyed.event.flags = FLAG_KEY_SAMPLED;
    keyed.event.key_hash = 77;
    model.observe_create(&keyed).unwrap();
    // The keyed write inserted (count 1); the BPF side never folds the write after a keyed
    // one, so this one is sent, and the ones after it fold.
    model.observe(&folding(kind::ASSIGN, 1, 2, 0)).unwrap();
    // The write after the fold found one more entry: the last folded write inserted it, not
    // the keyed write or the one after it.
    model.observe(&folding(kind::ASSIGN, 2, 5, 3)).unwrap();
    model.settle_with_header(M, header(2));
    let map = only(&model);
    // Overwrites: the write after the keyed one, two folded ones, and the last write.
    assert_eq!((map.inserts, map.overwrites), (2, 4));
    assert_eq!(map.writers.list().len(), 1);
    assert_eq!(
        map.writers.list()[0].inserts,
        1,
        "only the keyed write's own insert"
    );
}

#[test]
fn folds_carried_by_a_new_map_are_the_old_maps() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0), (kind::ASSIGN, 1)]);
    let mut created = event(kind::CREATE, 0, SEED + 1, 9);
    created.folded = 6;
    model.observe(&created).unwrap();
    let old = released(&model);
    assert_eq!((old.inserts, old.overwrites, old.unsettled), (1, 6, 1));
    assert_eq!(model.folds_uncredited(), 0);
}

#[test]
fn folds_held_at_the_end_are_credited_only_to_the_map_they_followed() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0), (kind::ASSIGN, 1)]);
    let other = M + 0x100;
    model.held_folds(
        12,
        &[
            HeldFolds {
                addr: M,
                words: [1, SEED as u64],
                folded: 7,
                changed: false,
            },
            // Its map's pending operation found another count: not its folds.
            HeldFolds {
                addr: M,
                words: [0, SEED as u64],
                folded: 2,
                changed: false,
            },
            // No map known there: its map was released beyond the listed ones (a state is
            // only made by a record), and nothing listed is short of them.
            HeldFolds {
                addr: other,
                words: [1, SEED as u64],
                folded: 3,
                changed: false,
            },
        ],
    );
    model.settle_with_header(M, header(1));
    let map = only(&model);
    assert_eq!((map.inserts, map.overwrites, map.live), (1, 8, 1));
    assert_eq!((model.folds(), model.folds_uncredited()), (12, 2));
}

/// A map made, given one entry, written again (its pending operation), then released by
/// the heap check.
fn inserted_then_freed() -> Model {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0), (kind::ASSIGN, 1)]);
    let last_seen_ns = only(&model).last_seen_ns;
    model.dropped(&crate::memory::release::Dropped {
        addr: M,
        seed: SEED,
        last_seen_ns,
        words: None,
        freed: true,
        reused: false,
        at_ns: 5,
    });
    model
}

/// The released map, once another was made at its address.
fn released(model: &Model) -> &MapRecord {
    model
        .maps()
        .into_iter()
        .find(|map| map.is_released())
        .expect("the released map")
}

#[test]
fn folds_left_by_a_map_the_heap_released_go_to_it() {
    // Insert, then overwrites the BPF side folds; the map is dropped and freed before any
    // later write, and a new map made at its address carries the folds.
    let mut model = inserted_then_freed();
    let mut created = event(kind::CREATE, 0, SEED + 1, 9);
    created.folded = 3;
    model.observe(&created).unwrap();
    // Folds the BPF side held at the end that no map explains (a lost record's are not even
    // there) are what the total says is missing.
    model.held_folds(
        5,
        &[HeldFolds {
            addr: M,
            words: [7, SEED as u64],
            folded: 2,
            changed: false,
        }],
    );
    let old = released(&model);
    // The write after the insert and two folded ones were overwrites; the last folded one
    // stays unsettled, in place of the write it followed.
    assert_eq!((old.inserts, old.overwrites, old.unsettled), (1, 3, 1));
    assert_eq!((model.folds(), model.folds_uncredited()), (5, 2));
}

#[test]
fn folds_read_at_a_release_are_counted_once() {
    let mut model = inserted_then_freed();
    let held = HeldFolds {
        addr: M,
        words: [1, SEED as u64],
        folded: 4,
        changed: false,
    };
    assert!(model.released_here(M, held.words));
    assert!(
        !model.released_here(M, [1, SEED as u64 + 1]),
        "another map's state"
    );
    model.read_run(&held);
    assert!(!model.released_here(M, held.words), "read once");
    // The same folds, carried by the next map's record (the read raced its creation).
    let mut created = event(kind::CREATE, 0, SEED + 1, 9);
    created.folded = 4;
    model.observe(&created).unwrap();
    model.held_folds(4, &[]);
    let old = released(&model);
    assert_eq!((old.inserts, old.overwrites), (1, 4));
    assert_eq!((model.folds(), model.folds_uncredited()), (4, 0));
}

/// `folding`, for a run whose writes each changed the count.
fn folding_changed(kind: u8, count: u64, ktime_ns: u64, folded: u16) -> MapEvent {
    MapEvent {
        flags: FLAG_FOLDS_CHANGED,
        ..folding(kind, count, ktime_ns, folded)
    }
}

#[test]
fn a_changed_run_of_assigns_is_inserts_and_its_last_write_stays_pending() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    // The insert at 0 and four of the five folded writes each added an entry (counts 1..5
    // as they found them); the write carrying the run found 6: the last folded one inserted.
    model
        .observe(&folding_changed(kind::ASSIGN, 6, 9, 5))
        .unwrap();
    let map = only(&model);
    assert_eq!((map.inserts, map.live, map.peak), (6, 6, 6));
    model.settle_with_header(M, header(6));
    let map = only(&model);
    assert_eq!((map.inserts, map.overwrites, map.live), (6, 1, 6));
    assert_eq!((map.unexplained, map.unsettled), (0, 0));
    assert_eq!(map.last_insert_ns, Some(9));
    assert_eq!((model.folds(), model.folds_uncredited()), (5, 0));
}

#[test]
fn a_changed_run_of_deletes_removes_one_entry_per_write() {
    let mut model = replay(&[
        (kind::CREATE, 0),
        (kind::ASSIGN, 0),
        (kind::ASSIGN, 1),
        (kind::ASSIGN, 2),
        (kind::ASSIGN, 3),
        (kind::DELETE, 4),
    ]);
    // The delete at 4 and two folded ones each removed an entry; the third folded delete
    // found 1 and missed, as the assign carrying the run (count 1) shows.
    model
        .observe(&folding_changed(kind::ASSIGN, 1, 9, 3))
        .unwrap();
    model.settle_with_header(M, header(2));
    let map = only(&model);
    assert_eq!((map.inserts, map.deletes, map.live), (5, 3, 2));
    assert_eq!((map.unexplained, map.unsettled), (0, 0));
}

#[test]
fn a_changed_run_carried_by_a_new_map_is_credited_before_the_old_one_goes() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    let mut created = folding_changed(kind::CREATE, 0, 9, 3);
    created.header_word = u64::from(SEED + 1);
    model.observe(&created).unwrap();
    let old = released(&model);
    // The first insert and two folded ones are known; the last folded write is not.
    assert_eq!((old.inserts, old.peak, old.unsettled), (3, 3, 1));
    assert_eq!(model.histograms(100).map_peak_entries.max(), 3);
    assert_eq!(model.folds_uncredited(), 0);
}

#[test]
fn a_run_read_before_a_drop_leaves_the_last_write_to_the_last_header() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    let last_seen_ns = only(&model).last_seen_ns;
    let dropped = crate::memory::release::Dropped {
        addr: M,
        seed: SEED,
        last_seen_ns,
        // The freed header still holds the count the last folded write left: it inserted.
        words: Some([5, u64::from(SEED)]),
        freed: true,
        reused: false,
        at_ns: 20,
    };
    assert!(model.releases(&dropped));
    let run = HeldFolds {
        addr: M,
        words: [0, u64::from(SEED)],
        folded: 4,
        changed: true,
    };
    assert!(model.is_run_of_map_at(M, run.words));
    assert!(
        !model.is_run_of_map_at(M, [0, u64::from(SEED + 1)]),
        "another map's run"
    );
    assert!(model.runs_from_pending(&run));
    assert!(
        !model.runs_from_pending(&HeldFolds {
            words: [1, u64::from(SEED)],
            ..run
        }),
        "not from its pending write"
    );
    model.read_run(&run);
    model.dropped(&dropped);
    let old = released(&model);
    assert_eq!((old.inserts, old.live, old.peak), (5, 5, 5));
    assert_eq!((old.unexplained, old.unsettled), (0, 0));
    // The same run carried by the next map at the address is not counted again.
    let mut created = folding_changed(kind::CREATE, 0, 30, 4);
    created.header_word = u64::from(SEED + 1);
    model.observe(&created).unwrap();
    assert_eq!(released(&model).inserts, 5);
    model.held_folds(4, &[]);
    assert_eq!(model.folds_uncredited(), 0);
}

#[test]
fn a_run_credited_whole_can_go_and_the_next_record_settles_without_it() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    let run = HeldFolds {
        addr: M,
        words: [0, u64::from(SEED)],
        folded: 3,
        changed: true,
    };
    assert!(!model.credited_whole(&run), "not credited yet");
    model.read_run(&run);
    assert!(model.credited_whole(&run));
    let longer = HeldFolds { folded: 5, ..run };
    assert!(!model.credited_whole(&longer), "writes left to credit");
    let other = HeldFolds {
        words: [0, u64::from(SEED + 1)],
        ..run
    };
    assert!(!model.credited_whole(&other), "another map's run");
    // The run is gone from the BPF side: the map's next write is sent carrying nothing.
    model.observe(&folding(kind::ASSIGN, 4, 9, 0)).unwrap();
    assert!(!model.credited_whole(&run), "its pending write is settled");
    model.held_folds(3, &[]);
    model.settle_with_header(M, header(5));
    let map = only(&model);
    assert_eq!((map.inserts, map.live), (5, 5));
    assert_eq!((map.unexplained, map.unsettled), (0, 0));
    assert_eq!(model.folds_uncredited(), 0);
}

#[test]
fn a_run_read_in_a_later_epoch_counts_once_whoever_delivers_it() {
    for changed in [false, true] {
        let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
        let run = HeldFolds {
            addr: M,
            words: [0, u64::from(SEED)],
            folded: 3,
            changed,
        };
        // Read while the map was quiet: credited at once, so its count is not left behind.
        model.read_run(&run);
        let inserts = if changed { 3 } else { 0 };
        assert_eq!(only(&model).inserts, inserts);
        // Read again a second later, then carried by the map's next write: the same run.
        model.read_run(&run);
        let count = if changed { 4 } else { 1 };
        let mut carrier = folding(kind::ASSIGN, count, 9, 3);
        if changed {
            carrier.flags = FLAG_FOLDS_CHANGED;
        }
        model.observe(&carrier).unwrap();
        model.held_folds(3, &[run]);
        model.settle_with_header(M, header(count));
        let map = only(&model);
        assert_eq!(
            (map.inserts + map.overwrites, map.unexplained, map.unsettled),
            (5, 0, 0),
            "changed: {changed}"
        );
        assert_eq!(model.folds_uncredited(), 0);
    }
}

#[test]
fn a_run_of_a_map_released_after_its_run_was_read_is_not_counted_again() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    let run = HeldFolds {
        addr: M,
        words: [0, u64::from(SEED)],
        folded: 2,
        changed: true,
    };
    model.read_run(&run);
    // The map goes, and the next map at its address carries the same run.
    let mut created = folding_changed(kind::CREATE, 0, 9, 2);
    created.header_word = u64::from(SEED + 1);
    model.observe(&created).unwrap();
    assert_eq!(released(&model).inserts, 2);
    assert_eq!(model.folds_uncredited(), 0);
}

#[test]
fn a_quiet_maps_last_write_is_settled_only_by_a_header_read_since_its_last_record() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    let seen_ns = only(&model).last_seen_ns;
    assert_eq!(model.quiet_pending(seen_ns), vec![]);
    assert_eq!(model.quiet_pending(seen_ns + 1), vec![(M, seen_ns)]);
    // A record came after the read was decided on: the read may predate its write.
    model.settle_quiet(M, [1, u64::from(SEED)], seen_ns - 1);
    // Not an outcome of the pending assign, or another map's header: left for later.
    model.settle_quiet(M, [2, u64::from(SEED)], seen_ns);
    model.settle_quiet(M, [1, u64::from(SEED + 1)], seen_ns);
    assert!(only(&model).is_pending());
    model.settle_quiet(M, [1, u64::from(SEED)], seen_ns);
    let map = only(&model);
    assert!(!map.is_pending());
    assert_eq!(
        (map.inserts, map.live, map.unexplained, map.unsettled),
        (1, 1, 0, 0)
    );
}

#[test]
fn a_run_delivered_longer_than_it_was_read_credits_only_the_writes_it_adds() {
    let mut model = replay(&[(kind::CREATE, 0), (kind::ASSIGN, 0)]);
    // Read with three writes; a fourth slipped in (its program read the epoch before it
    // changed), and the record carrying the run says four.
    model.read_run(&HeldFolds {
        addr: M,
        words: [0, u64::from(SEED)],
        folded: 3,
        changed: true,
    });
    assert_eq!(only(&model).inserts, 3);
    model
        .observe(&folding_changed(kind::ASSIGN, 5, 9, 4))
        .unwrap();
    model.held_folds(4, &[]);
    model.settle_with_header(M, header(5));
    let map = only(&model);
    assert_eq!((map.inserts, map.overwrites, map.live), (5, 1, 5));
    assert_eq!((map.unexplained, map.unsettled), (0, 0));
    assert_eq!(model.folds_uncredited(), 0);
}

#[test]
fn a_run_where_no_listed_map_was_is_credited_once_at_the_end() {
    let mut model = replay(&[(kind::CREATE, 0)]);
    let stray = HeldFolds {
        addr: M + 0x100,
        words: [3, u64::from(SEED)],
        folded: 5,
        changed: false,
    };
    // Read every second while the trace goes on: not credited each time.
    model.read_run(&stray);
    model.read_run(&stray);
    assert_eq!(model.folds(), 0);
    model.held_folds(5, &[stray]);
    assert_eq!((model.folds(), model.folds_uncredited()), (5, 0));
}

/// A creation at `M` with `seed`, made after `gc_cycle` collections, with `flags`.
fn created(seed: u32, at: u64, gc_cycle: u32, flags: u8) -> CreateEvent {
    let mut stack = [0u64; tracer_common::STACK_DEPTH];
    stack[0] = 0x1000;
    CreateEvent {
        event: MapEvent {
            flags,
            ..event(kind::CREATE, 0, seed, at)
        },
        caller: 0x2000,
        stack_len: 1,
        gc_cycle,
        stack,
    }
}

/// Makes a map at `M` (with `flags`), writes it twice (two inserts, the second pending),
/// then gives the collection's read `count` at cycle 3 and makes a map at `M` again after
/// `gc_cycle` collections: the released map.
fn released_after_collection(flags: u8, count: u64, gc_cycle: u32) -> MapRecord {
    let mut model = swiss();
    model.observe_create(&created(SEED, 1, 1, flags)).unwrap();
    model.observe(&event(kind::ASSIGN, 0, SEED, 2)).unwrap();
    model.observe(&event(kind::ASSIGN, 1, SEED, 3)).unwrap();
    assert_eq!(model.collectable(M).is_some(), flags & FLAG_ON_STACK == 0);
    model.collected(Collected {
        addr: M,
        words: [count, u64::from(SEED)],
        cycle: 3,
    });
    model
        .observe_create(&created(0xbeef, 4, gc_cycle, 0))
        .unwrap();
    let released = model.maps().into_iter().find(|map| map.is_released());
    released.expect("the first map is released").clone()
}

#[test]
fn a_collection_read_with_no_collection_since_settles_the_released_map() {
    let gone = released_after_collection(0, 2, 3);
    assert_eq!((gone.live, gone.inserts, gone.unsettled), (2, 2, 0));
    let overwrote = released_after_collection(0, 1, 3);
    assert_eq!(
        (overwrote.live, overwrote.inserts, overwrote.overwrites),
        (1, 1, 1)
    );
}

#[test]
fn a_collection_read_proves_nothing_after_a_later_collection_or_for_a_stack_map() {
    // A collection came between the read and the new map: the map may have been alive at
    // the read, and written after it.
    let later = released_after_collection(0, 2, 4);
    assert_eq!((later.live, later.unsettled), (1, 1));
    // Stack memory is freed by a return, not by the collector.
    let on_stack = released_after_collection(FLAG_ON_STACK, 2, 3);
    assert_eq!((on_stack.live, on_stack.unsettled), (1, 1));
    // A count the pending insert cannot have left is not taken.
    let impossible = released_after_collection(0, 5, 3);
    assert_eq!((impossible.live, impossible.unsettled), (1, 1));
}
