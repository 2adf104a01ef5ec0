//! Which maps the program has dropped: checked about once a second for maps idle long
//! enough, so that `live_maps`, `released` and `lifetime_s` hold after a garbage collection
//! and the model forgets maps that are gone.
//!
//! Two methods, chosen once per trace ([`ReleaseDetection`]):
//! - **heap**: the map header's heap object is free ([`Heap::object_state`]). This sees every
//!   heap map the collector freed, as soon as its span is swept or its mark bits say so
//!   (`runtime.GC()` returns after both), whether or not the memory was reused. It cannot
//!   see maps that are not heap objects (on a goroutine stack): those fall back to the
//!   header check below.
//! - **header** (no `runtime.mheap_`: stripped binaries, or a release without a checked
//!   layout): the map header is re-read, and a hash seed that is no longer the map's means the
//!   memory now holds something else, so the map is gone. This sees only maps whose memory
//!   was reused (the allocator zeroes or overwrites it then); a freed map whose memory was not
//!   yet handed out again still reads as itself and stays live.
//!
//! The decision that a map is released is the model's ([`crate::model::Model::dropped`]),
//! from a recorded [`Dropped`] input, so a replay makes the same decisions.

use serde::{Deserialize, Serialize};
use tracer_common::seed_from_word;

use super::heap::{Heap, ObjectState};
use crate::inspect::{GoBinary, ReadMemory};
use crate::model::Model;
use crate::plan::MapImplementation;

/// A map must have had no event for this long before its memory is checked: a map in use is
/// not dropped, and its header is not read while an operation may be changing it.
pub const IDLE_NS: u64 = 1_000_000_000;

/// At most this many maps are picked per tick (their headers read 1,024 to a system call,
/// each span and bitmap once: 1.7 µs of CPU a map in a debug build on this VM, 1,203 maps
/// checked in 2.0 ms); the caller may stop earlier (see [`BUDGET`]), and the next pick goes
/// on after the last map inspected, so every idle map is reached in turn.
pub const BATCH: usize = 65_536;

/// The caller stops inspecting once a tick has spent this much CPU time, which bounds the
/// cost of release detection to about a tenth of a core at one tick a second.
pub const BUDGET: std::time::Duration = std::time::Duration::from_millis(100);

/// The caller drains events between chunks of this many checks, so that a long check never
/// lets the ring buffer fill.
pub const CHUNK: usize = 512;

/// How dropped maps are noticed in this trace; the report names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseDetection {
    /// From the heap's allocation and mark bits.
    Heap,
    /// From a changed hash seed in a re-read header only.
    Header,
}

/// The target's memory says the map at `addr` may be gone: a recorded pipeline input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The map's address.
    pub addr: u64,
    /// The seed the model knew it by when it was picked: only that map is released.
    pub seed: u32,
    /// Its last event when it was picked: an event since means it is in use after all.
    pub last_seen_ns: u64,
    /// Its header's first two words as read (count, seed word), when readable.
    pub words: Option<[u64; 2]>,
    /// The heap said the object is free.
    pub freed: bool,
    /// The heap said another object is there (one that starts elsewhere, or is smaller than
    /// a map header): the map is gone and its words are not its own.
    #[serde(default)]
    pub reused: bool,
    /// When the check began (monotonic ns): the release time.
    pub at_ns: u64,
}

/// Checks idle maps against the target's memory.
#[derive(Debug)]
pub struct Detector {
    heap: Option<Heap>,
    implementation: MapImplementation,
    /// Bytes of a map header (`hmap`, or swiss `Map`) in this target.
    header_bytes: u64,
    /// The last map inspected: the next pick starts after it.
    cursor: u64,
}

impl Detector {
    /// Reads the heap of `binary` (loaded `bias` from its linked addresses) when it can,
    /// else falls back to headers.
    pub fn new(binary: &GoBinary, bias: u64, implementation: MapImplementation) -> Detector {
        // Classic `hmap` gained `clearSeq` in 1.24 (noswissmap builds): 56 bytes, else 48;
        // the swiss `Map` is 48 bytes (go-map-runtime.md §3, read from each release's DWARF).
        let header_bytes = match implementation {
            MapImplementation::Classic if binary.go_version().minor >= 24 => 56,
            _ => 48,
        };
        Detector {
            heap: Heap::find(binary, bias).ok(),
            implementation,
            header_bytes,
            cursor: 0,
        }
    }

    /// Which method this trace uses.
    pub fn method(&self) -> ReleaseDetection {
        match self.heap {
            Some(_) => ReleaseDetection::Heap,
            None => ReleaseDetection::Header,
        }
    }

    /// Picks up to [`BATCH`] maps of `model` idle since `now_ns - IDLE_NS`, in address order
    /// starting after the last map inspected.
    pub fn pick(&self, model: &Model, now_ns: u64) -> Vec<Candidate> {
        let mut idle: Vec<Candidate> = model
            .live_maps()
            .filter(|record| record.last_seen_ns.saturating_add(IDLE_NS) <= now_ns)
            .map(|record| Candidate {
                addr: record.addr,
                seed: record.seed(),
                last_seen_ns: record.last_seen_ns,
            })
            .collect();
        idle.sort_unstable_by_key(|candidate| candidate.addr);
        let next = idle.partition_point(|candidate| candidate.addr <= self.cursor);
        idle.rotate_left(next);
        idle.truncate(BATCH);
        idle
    }

    /// Reads the memory of each candidate, and returns those it says may be gone, for the
    /// model to decide; `now_ns` is when the check began. The next pick goes on after the
    /// last of them.
    pub fn inspect(
        &mut self,
        memory: &dyn ReadMemory,
        candidates: &[Candidate],
        now_ns: u64,
    ) -> Vec<Dropped> {
        if let Some(last) = candidates.last() {
            self.cursor = last.addr;
        }
        let addrs: Vec<u64> = candidates.iter().map(|candidate| candidate.addr).collect();
        let words = memory.read_header_words(&addrs);
        let states = match self.heap.as_mut() {
            Some(heap) => heap.object_states(memory, &addrs),
            None => vec![ObjectState::Unknown; candidates.len()],
        };
        candidates
            .iter()
            .zip(words)
            .zip(states)
            .filter_map(|((candidate, words), state)| {
                let freed = state == ObjectState::Free;
                let reused = matches!(state, ObjectState::Allocated { start, size }
                    if start != candidate.addr || size < self.header_bytes);
                let reseeded = words.is_some_and(|words| {
                    seed_from_word(words[1], self.implementation.seed_shift()) != candidate.seed
                });
                (freed || reused || reseeded).then_some(Dropped {
                    addr: candidate.addr,
                    seed: candidate.seed,
                    last_seen_ns: candidate.last_seen_ns,
                    words,
                    freed,
                    reused,
                    at_ns: now_ns,
                })
            })
            .collect()
    }
}

/// An idle map to check, as the model knew it when picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its address.
    pub addr: u64,
    /// Its seed.
    pub seed: u32,
    /// Its last event.
    pub last_seen_ns: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tracer_common::{kind, MapEvent};

    use super::*;
    use crate::model::{Limits, MapRecord};

    const SEED: u32 = 0x5eed;
    const SECOND: u64 = 1_000_000_000;

    fn event(map: u64, kind: u8, count: u64, seed: u32, ktime_ns: u64) -> MapEvent {
        MapEvent {
            ktime_ns,
            map,
            count,
            header_word: u64::from(seed),
            map_type: 0,
            key_hash: 0,
            kind,
            flags: 0,
            folded: 0,
        }
    }

    /// A swiss map at `addr`, created at 0 and given two inserts (the second pending).
    fn model_with(addrs: &[u64]) -> Model {
        let mut model = Model::new(MapImplementation::Swiss, Limits::default());
        for &addr in addrs {
            for (kind, count, at) in [
                (kind::CREATE, 0, 0),
                (kind::ASSIGN, 0, 1),
                (kind::ASSIGN, 1, 2),
            ] {
                model.observe(&event(addr, kind, count, SEED, at)).unwrap();
            }
        }
        model
    }

    fn record(model: &Model, addr: u64) -> &MapRecord {
        let maps = model.maps();
        maps.into_iter().find(|record| record.addr == addr).unwrap()
    }

    fn dropped(words: Option<[u64; 2]>, freed: bool) -> Dropped {
        Dropped {
            addr: 0xc000,
            seed: SEED,
            last_seen_ns: 2,
            words,
            freed,
            reused: false,
            at_ns: 3 * SECOND,
        }
    }

    #[test]
    fn a_freed_map_is_released_and_settled_from_its_last_header() {
        let mut model = model_with(&[0xc000]);
        model.dropped(&dropped(Some([2, u64::from(SEED)]), true));
        let gone = record(&model, 0xc000);
        assert_eq!(gone.released_ns, Some(3 * SECOND));
        assert_eq!((gone.inserts, gone.unsettled, gone.unexplained), (2, 0, 0));
        assert_eq!(model.live_maps().count(), 0);
    }

    #[test]
    fn freed_memory_that_no_longer_reads_as_the_map_settles_nothing() {
        // Zeroed (reused, or returned to the system), or unreadable.
        for words in [Some([0, 0]), Some([0, u64::from(SEED)]), None] {
            let mut model = model_with(&[0xc000]);
            model.dropped(&dropped(words, true));
            let gone = record(&model, 0xc000);
            assert!(gone.is_released(), "{words:?}");
            assert_eq!((gone.inserts, gone.unsettled, gone.unexplained), (1, 1, 0));
        }
    }

    #[test]
    fn only_the_map_that_was_checked_is_released() {
        // Another map at the address (another seed), or an event since the check.
        for check in [
            Dropped {
                seed: SEED + 1,
                ..dropped(None, true)
            },
            Dropped {
                last_seen_ns: 1,
                ..dropped(None, true)
            },
        ] {
            let mut model = model_with(&[0xc000]);
            model.dropped(&check);
            assert!(!record(&model, 0xc000).is_released(), "{check:?}");
        }
    }

    #[test]
    fn an_allocated_header_releases_the_map_only_when_it_reads_as_something_else() {
        let mut model = model_with(&[0xc000]);
        model.dropped(&dropped(Some([2, u64::from(SEED)]), false));
        model.dropped(&dropped(None, false));
        assert!(!record(&model, 0xc000).is_released());
        model.dropped(&dropped(Some([7, 0xdead]), false));
        let gone = record(&model, 0xc000);
        assert!(gone.is_released());
        assert_eq!(gone.unsettled, 1);
    }

    /// Map headers in a fake target: address → first two words.
    struct Headers(HashMap<u64, [u64; 2]>);

    impl ReadMemory for Headers {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            let words = self.0.get(&addr)?;
            let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_le_bytes()).collect();
            Some(bytes[..len.min(16)].to_vec())
        }
    }

    fn header_detector() -> Detector {
        Detector {
            heap: None,
            implementation: MapImplementation::Swiss,
            header_bytes: 48,
            cursor: 0,
        }
    }

    #[test]
    fn a_smaller_object_at_the_address_releases_the_map_without_settling_it() {
        // An 8-byte object took the first word: the seed word is still the map's.
        let mut model = model_with(&[0xc000]);
        model.dropped(&Dropped {
            reused: true,
            ..dropped(Some([2, u64::from(SEED)]), false)
        });
        let gone = record(&model, 0xc000);
        assert!(gone.is_released());
        assert_eq!((gone.inserts, gone.unsettled, gone.unexplained), (1, 1, 0));
    }

    #[test]
    fn headers_say_which_idle_maps_were_replaced() {
        let mut model = model_with(&[0xc000, 0xd000, 0xe000]);
        model
            .observe(&event(0xe000, kind::ASSIGN, 2, SEED, 2 * SECOND))
            .unwrap();
        let mut detector = header_detector();
        assert_eq!(detector.method(), ReleaseDetection::Header);
        // 0xe000 was used within the last second: not checked.
        let picked = detector.pick(&model, 2 * SECOND + 10);
        let addrs: Vec<u64> = picked.iter().map(|candidate| candidate.addr).collect();
        assert_eq!(addrs, [0xc000, 0xd000]);
        let memory = Headers(HashMap::from([
            (0xc000, [2, u64::from(SEED)]),
            (0xd000, [0, 0]),
        ]));
        let found = detector.inspect(&memory, &picked, 5);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].addr, found[0].freed), (0xd000, false));
        assert_eq!(found[0].words, Some([0, 0]));
    }

    #[test]
    fn picks_are_bounded_and_go_round() {
        let addrs: Vec<u64> = (0..BATCH as u64 + 10)
            .map(|i| 0xc000_0000 + i * 64)
            .collect();
        let model = model_with(&addrs);
        let memory = Headers(HashMap::new());
        let mut detector = header_detector();
        let first = detector.pick(&model, 10 * SECOND);
        assert_eq!(first.len(), BATCH);
        assert_eq!(first[0].addr, addrs[0]);
        // Only part of it is inspected: the next pick goes on after that part.
        detector.inspect(&memory, &first[..100], 10 * SECOND);
        let second = detector.pick(&model, 10 * SECOND);
        assert_eq!(second[0].addr, addrs[100]);
        // Inspected to the end of the addresses: the next pick wraps round.
        detector.inspect(&memory, &second[..BATCH - 90], 10 * SECOND);
        let third = detector.pick(&model, 10 * SECOND);
        assert_eq!(third[0].addr, addrs[0]);
    }

    #[test]
    fn a_dropped_note_survives_a_recording() {
        let note = crate::pipeline::SessionInput::Dropped(dropped(Some([1, 2]), true));
        let json = serde_json::to_string(&note).unwrap();
        assert_eq!(
            serde_json::from_str::<crate::pipeline::SessionInput>(&json).unwrap(),
            note
        );
    }
}
