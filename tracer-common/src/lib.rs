//! Types shared by the BPF programs and the userspace tracer.
//!
//! Both sides read and write these records byte for byte, so every type here is `#[repr(C)]`
//! with explicit padding and no pointers: a layout change is a protocol change, and it must
//! happen in this one place.
#![no_std]

/// What the target's runtime was doing when a probe fired.
///
/// Kept as plain `u8` constants rather than an enum: the BPF side writes whatever it is told,
/// and userspace must reject unknown values instead of trusting a transmute.
pub mod kind {
    /// A `runtime.makemap*` call returned this map.
    pub const CREATE: u8 = 1;
    /// A `runtime.mapassign*` call was entered: an insert or an overwrite.
    pub const ASSIGN: u8 = 2;
    /// A `runtime.mapdelete*` call was entered: a removal, or a no-op for a missing key.
    pub const DELETE: u8 = 3;
    /// A `runtime.mapclear` call was entered: every entry goes.
    pub const CLEAR: u8 = 4;
    /// A clone (`maps.Clone`) returned this map, already holding `count` entries that no
    /// assign put there.
    pub const CLONE: u8 = 5;
    /// The map started to grow (classic `hashGrow`; swiss `growToSmall`, `growToTable`,
    /// `rehash`). It happens inside an assign and changes no count.
    pub const GROW: u8 = 6;
}

/// Which Go integer argument register holds the map, as an index in ABIInternal order
/// (amd64: RAX, RBX, RCX, …). Passed to entry probes as the uprobe's attach cookie, so one
/// program serves runtime functions that take the map in different positions.
pub mod arg {
    /// First argument: the receiver of `(*Map).Delete`, `growToSmall`, `growToTable`.
    pub const FIRST: u64 = 0;
    /// Second argument: the map of `mapassign*`, `mapdelete*`, `mapclear`, `hashGrow`.
    pub const SECOND: u64 = 1;
    /// Third argument: the map of `(*table).rehash`.
    pub const THIRD: u64 = 2;
}

/// `MapEvent::flags` bit: the map header could not be read, `count` is meaningless.
pub const FLAG_COUNT_UNREADABLE: u8 = 1;

/// One observation of one Go map, as sent over the ring buffer.
///
/// `count` is the map's element count (`len(m)`) at the moment the probe fired: before the
/// operation for entry probes, after it for creation. Whether an assign inserted or
/// overwrote, or a delete removed anything, is decided in userspace from the count at the
/// map's next observation; this keeps every probe an entry probe (no return probes, which
/// the kernel must single-step) and the record small.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEvent {
    /// `bpf_ktime_get_ns()` when the probe fired (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// The map header's address in the target, as Go's `%p` prints it.
    pub map: u64,
    /// The element count read from the header's first word.
    pub count: u64,
    /// The map's hash seed (classic `hash0`, swiss `seed`, low 32 bits). A new map at an
    /// address (a stack map in a later call, a reused allocation) has a new seed, which is
    /// how userspace tells it from the map that lived there before.
    pub seed: u32,
    /// One of the [`kind`] constants.
    pub kind: u8,
    /// [`FLAG_COUNT_UNREADABLE`] and future flags.
    pub flags: u8,
    /// Explicit padding so that both sides agree on every byte.
    pub _pad: [u8; 2],
}

impl MapEvent {
    /// The record's size on the ring buffer, for capacity planning in userspace.
    pub const SIZE: usize = core::mem::size_of::<MapEvent>();

    /// Rebuilds an event from a ring-buffer record, or `None` when the record is too short.
    ///
    /// Ring-buffer records carry no alignment guarantee for `u64` reads in userspace once
    /// copied, so this decodes field by field instead of casting the pointer.
    pub fn from_bytes(bytes: &[u8]) -> Option<MapEvent> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let word = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(raw)
        };
        let mut seed = [0u8; 4];
        seed.copy_from_slice(&bytes[24..28]);
        Some(MapEvent {
            ktime_ns: word(0),
            map: word(8),
            count: word(16),
            seed: u32::from_ne_bytes(seed),
            kind: bytes[28],
            flags: bytes[29],
            _pad: [0; 2],
        })
    }
}

/// Where the hash seed sits in the second 8-byte word of a map header, as a right shift:
/// classic `hmap.hash0` is the `u32` at offset 12, swiss `Map.seed` the word at offset 8.
/// Userspace sets the BPF global [`globals::SEED_SHIFT`] to one of these before loading.
pub mod seed_shift {
    /// Classic maps (`runtime.hmap`).
    pub const CLASSIC: u64 = 32;
    /// Swiss maps (`internal/runtime/maps.Map`).
    pub const SWISS: u64 = 0;
}

/// The hash seed from a map header's second word, for the implementation whose
/// [`seed_shift`] is `shift`. The BPF side and userspace (reading headers from the target's
/// memory) must extract it identically, or a map would not recognise its own seed.
#[inline(always)]
pub fn seed_from_word(word: u64, shift: u64) -> u32 {
    (word >> (shift & 63)) as u32
}

/// Names of BPF global variables userspace sets at load time.
pub mod globals {
    /// See [`super::seed_shift`].
    pub const SEED_SHIFT: &str = "SEED_SHIFT";
}

/// Index of the single slot in the per-CPU `LOST` array that counts events the BPF side
/// could not deliver because the ring buffer was full.
pub const LOST_SLOT: u32 = 0;

/// Names of the BPF maps, shared so that a rename cannot silently break the loader.
pub mod maps {
    /// The ring buffer carrying [`super::MapEvent`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` count of events dropped because the ring buffer was full.
    pub const LOST: &str = "LOST";
}

/// Names of the BPF programs, one per probe kind.
pub mod programs {
    /// Attached to every RET of `runtime.makemap*`: reads the returned map pointer.
    pub const CREATE_RET: &str = "map_create_ret";
    /// Attached after the stack check of every `runtime.mapassign*`.
    pub const ASSIGN: &str = "map_assign";
    /// Attached after the stack check of every `runtime.mapdelete*`.
    pub const DELETE: &str = "map_delete";
    /// Attached after the stack check of `runtime.mapclear`.
    pub const CLEAR: &str = "map_clear";
    /// Attached to every RET of the clone functions: reads the returned map pointer.
    pub const CLONE_RET: &str = "map_clone_ret";
    /// Attached after the stack check of the functions that start a map's growth.
    pub const GROW: &str = "map_grow";
}

/// Ring buffer size in bytes: a power of two multiple of the page size. 16 MiB holds about
/// 400k events, several hundred milliseconds of the fastest map loop a 2-core machine runs.
pub const RING_BYTES: u32 = 16 << 20;

/// Once this many bytes wait in the ring buffer, the BPF side wakes the reader; below it,
/// records are submitted silently and the reader drains on a timer. A wakeup per event costs
/// the traced call over a microsecond; batching makes it nearly free.
pub const WAKEUP_THRESHOLD_BYTES: u64 = (RING_BYTES as u64) / 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_is_fixed() {
        assert_eq!(MapEvent::SIZE, 32);
        assert_eq!(core::mem::align_of::<MapEvent>(), 8);
    }

    #[test]
    fn seeds_come_from_where_each_implementation_keeps_them() {
        // classic: flags, B, noverflow in the low half, hash0 in the high half.
        assert_eq!(
            seed_from_word(0xdead_beef_0003_0501, seed_shift::CLASSIC),
            0xdead_beef
        );
        assert_eq!(
            seed_from_word(0x1234_5678_9abc_def0, seed_shift::SWISS),
            0x9abc_def0
        );
    }

    #[test]
    fn decodes_what_the_bpf_side_writes() {
        let event = MapEvent {
            ktime_ns: 7,
            map: 0xc000_1234_5678,
            count: 42,
            seed: 0xdead_beef,
            kind: kind::ASSIGN,
            flags: FLAG_COUNT_UNREADABLE,
            _pad: [0; 2],
        };
        // SAFETY: MapEvent is repr(C) plain data; viewing it as bytes is what the ring does.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(event) };
        assert_eq!(MapEvent::from_bytes(&bytes), Some(event));
        assert_eq!(MapEvent::from_bytes(&bytes[..31]), None);
    }
}
