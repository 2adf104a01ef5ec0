//! Types shared by the BPF programs and the userspace tracer.
//!
//! Both sides read and write these records byte for byte, so every type here is `#[repr(C)]`
//! with explicit padding and no pointers: a layout change is a protocol change, and it must
//! happen in this one place.
#![no_std]

pub mod registers;

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
    /// A swiss map's storage grew: its first group (`(*Map).growToSmall`), its first table
    /// (`(*Map).growToTable`), a table twice as big (`(*table).grow`) or a full table split in
    /// two (`(*table).split`). It happens inside an assign and changes no count.
    pub const GROW: u8 = 6;
    /// A classic map started to move to a new bucket array (`runtime.hashGrow`): twice as big
    /// when the load factor is reached, or the same size when overflow buckets piled up (a
    /// reorganisation: no more room, the entries packed again). The header's `B` at the map's
    /// next observation tells which, in userspace. Inside an assign; changes no count.
    pub const HASH_GROW: u8 = 7;
    /// A swiss table with no room left is about to clear tombstones in place
    /// (`(*table).pruneTombstones`, Go 1.25+). When too few can go it does nothing and the
    /// table grows at once: a [`GROW`] of the same map before its next operation. Inside an
    /// assign; changes no count.
    pub const PRUNE: u8 = 8;
    /// The target's collector reached mark termination (`runtime.gcMarkTermination`): its
    /// `count` is the cycle number (see [`super::settle`]); its `map` is 0. Not about any map.
    pub const COLLECTED: u8 = 9;
}

/// Which Go integer argument register holds a value, as an index in ABIInternal order
/// (amd64: RAX, RBX, RCX, RDI, …). Entry probes get these in their attach cookie (see
/// [`cookie`]), so one program serves runtime functions that take the map, its type and the
/// key in different positions.
pub mod arg {
    /// First argument: the type of `mapassign*`/`mapdelete*`/`mapclear`/`hashGrow`; the
    /// receiver of `(*Map).Delete`, `(*Map).Clear`, `growToSmall`, `growToTable`, and of the
    /// `(*table)` methods.
    pub const FIRST: u8 = 0;
    /// Second argument: the map of `mapassign*`, `mapdelete*`, `mapclear`, `hashGrow`; the
    /// type of the swiss `(*Map)` and `(*table)` methods.
    pub const SECOND: u8 = 1;
    /// Third argument: the key (or its address) of `mapassign*`/`mapdelete*`; the map of
    /// `(*table).grow`, `(*table).split` and `(*table).pruneTombstones`.
    pub const THIRD: u8 = 2;
    /// Fourth argument: a string key's length, after its data pointer.
    pub const FOURTH: u8 = 3;
    /// The function has no such argument (no map type for `makemap_small`, no key for a
    /// clear).
    pub const NONE: u8 = 0xff;
}

/// How an entry probe finds the key, so that a sample of keys can be followed from insert to
/// delete by a hash of their bytes. The bytes themselves never leave the BPF side.
pub mod key {
    /// The function takes no key (clear, growth).
    pub const NONE: u8 = 0;
    /// The key is the low 4 bytes of the third argument (`_fast32`).
    pub const VALUE32: u8 = 1;
    /// The key is the third argument's 8 bytes (`_fast64`, `_fast64ptr`).
    pub const VALUE64: u8 = 2;
    /// A string key: data pointer in the third argument, length in the fourth (`_faststr`).
    pub const STRING: u8 = 3;
    /// The third argument points at the key; its size and kind come from the map type
    /// (generic `mapassign`/`mapdelete`, swiss `(*Map).Delete`).
    pub const POINTER: u8 = 4;
}

/// The attach cookie of an entry probe: which arguments hold the map and its type, and how
/// to find the key. Packed into the one `u64` the kernel hands back to the program.
pub mod cookie {
    /// Packs the argument positions ([`super::arg`]) and key access ([`super::key`]).
    pub const fn entry(map: u8, map_type: u8, key: u8) -> u64 {
        map as u64 | (map_type as u64) << 8 | (key as u64) << 16
    }

    /// The argument holding the map.
    pub const fn map(cookie: u64) -> u8 {
        cookie as u8
    }

    /// The argument holding the map type, or [`super::arg::NONE`].
    pub const fn map_type(cookie: u64) -> u8 {
        (cookie >> 8) as u8
    }

    /// How to find the key ([`super::key`]).
    pub const fn key(cookie: u64) -> u8 {
        (cookie >> 16) as u8
    }

    /// Marks a creation probe placed on the seed call of a map constructor: the new header
    /// is read from the stack slot `SP + (cookie & 0xffff_ffff)` (see
    /// `tracer::inspect::SeedCall`). Without it, a creation probe sits on a `RET` and reads
    /// the header from the first result register.
    pub const HEADER_IN_SLOT: u64 = 1 << 32;

    /// The cookie of a creation probe on a seed call whose header is at `SP + slot`.
    pub const fn header_slot(slot: u32) -> u64 {
        HEADER_IN_SLOT | slot as u64
    }
}

/// The Go runtime's type descriptors as both sides read them (64-bit targets, every
/// supported release): the BPF side sizes and classifies sampled keys, userspace names map
/// types and sizes their buckets.
pub mod go_type {
    /// `abi.Type.Size_` (`runtime._type.size` before Go 1.21): the type's size in bytes.
    pub const SIZE_AT: usize = 0;
    /// `abi.Type.Kind_`, whose low bits ([`KIND_MASK`]) are the `abi.Kind`.
    pub const KIND_AT: usize = 23;
    /// The kind bits of `Kind_` (Go 1.26 dropped the flag bits above them; masking is
    /// harmless).
    pub const KIND_MASK: u8 = 0x1f;
    /// `abi.Kind` of `string`.
    pub const KIND_STRING: u8 = 24;
    /// Bytes of `abi.Type`: where the kind-specific fields start, such as a map type's key
    /// type pointer.
    pub const HEADER_BYTES: usize = 48;
}

/// `MapEvent::flags` bit: the map header could not be read, `count` is meaningless.
pub const FLAG_COUNT_UNREADABLE: u8 = 1;
/// `MapEvent::flags` bit: the key was chosen for entry-lifetime sampling and `key_hash` holds
/// its salted hash.
pub const FLAG_KEY_SAMPLED: u8 = 2;
/// `MapEvent::flags` bit: the creation was seen before the runtime drew the map's hash seed,
/// so `header_word` is not the map's yet; the next event at this address carries it.
pub const FLAG_SEED_PENDING: u8 = 4;
/// `MapEvent::flags` bit: the writes in `folded` each changed the count by one (inserts of an
/// assign run, deletes of a delete run); without it, none did (overwrites, missing keys).
pub const FLAG_FOLDS_CHANGED: u8 = 8;
/// `MapEvent::flags` bit of a creation: the new header lies in the creating goroutine's
/// stack (a map the compiler proved does not escape), between the stack pointer and the
/// frame records the creation's stack walk read. Stack memory is reused when the function
/// returns, not by the collector, so a collection proves nothing about such a map (see
/// [`settle`]).
pub const FLAG_ON_STACK: u8 = 16;

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
    /// The header's second word: the hash seed (see [`seed_from_word`]) and, for classic
    /// maps, the bucket count's log2 `B` (see [`classic_log2_buckets`]).
    pub header_word: u64,
    /// The map-type pointer the runtime function received (0 when it takes none): names
    /// the map's type and sizes its buckets, read once per type in userspace.
    pub map_type: u64,
    /// Salted hash of the key when [`FLAG_KEY_SAMPLED`] is set, else 0.
    pub key_hash: u32,
    /// One of the [`kind`] constants.
    pub kind: u8,
    /// [`FLAG_COUNT_UNREADABLE`], [`FLAG_KEY_SAMPLED`], [`FLAG_SEED_PENDING`],
    /// [`FLAG_FOLDS_CHANGED`].
    pub flags: u8,
    /// Writes to this map the BPF side folded since its previous record: calls of the kind of
    /// that record, without a sampled key, each finding the header the write before it left
    /// (same second word; the same count, or one more for assigns and one less for deletes,
    /// the same step for the whole run). Each proves what the write before it did, so no
    /// record is needed for it: with [`FLAG_FOLDS_CHANGED`], the map's last record and all
    /// but the last folded write each added (assign) or removed (delete) one entry; without
    /// it, none did. The last folded write is then the pending one. See
    /// [`writers::WriterState`].
    pub folded: u16,
}

/// How many return addresses a creation records: enough to get past the runtime's and a
/// decoder's frames to the program's own code.
pub const STACK_DEPTH: usize = 32;

/// A map creation or clone, or a sampled write (see [`writers`]): the event, plus the call
/// stack that says where in the program it happened.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateEvent {
    /// The observation of the new map (kind [`kind::CREATE`] or [`kind::CLONE`]), or of the
    /// written map (kind [`kind::ASSIGN`] or [`kind::DELETE`]).
    pub event: MapEvent,
    /// The return address into the constructor's direct caller, read at `[SP]` by a probe on
    /// a `RET`, where the frame-pointer walk no longer sees that frame; 0 when `stack` is
    /// complete. Write probes, which fire before the callee pushes its frame, read it the
    /// same way.
    pub caller: u64,
    /// How many entries of `stack` are valid.
    pub stack_len: u32,
    /// The collector cycles the target had finished when the record was made, as
    /// [`settle::CYCLES`] counts them (0 before the first, or with no collection probe).
    pub gc_cycle: u32,
    /// User stack by frame pointers, innermost first: the probed instruction, then return
    /// addresses.
    pub stack: [u64; STACK_DEPTH],
}

/// Reads a native-endian `u64` at `at`; callers have checked the length.
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(raw)
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
        let mut key_hash = [0u8; 4];
        key_hash.copy_from_slice(&bytes[40..44]);
        Some(MapEvent {
            ktime_ns: word(bytes, 0),
            map: word(bytes, 8),
            count: word(bytes, 16),
            header_word: word(bytes, 24),
            map_type: word(bytes, 32),
            key_hash: u32::from_ne_bytes(key_hash),
            kind: bytes[44],
            flags: bytes[45],
            folded: u16::from_ne_bytes([bytes[46], bytes[47]]),
        })
    }
}

impl CreateEvent {
    /// The record's size on the ring buffer; records of this size are creations.
    pub const SIZE: usize = core::mem::size_of::<CreateEvent>();

    /// Rebuilds a creation record, or `None` when it is too short; a `stack_len` beyond
    /// [`STACK_DEPTH`] is clamped, and the frames past it are zero whatever the ring held
    /// there (the BPF side writes only the frames it walked).
    pub fn from_bytes(bytes: &[u8]) -> Option<CreateEvent> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let event = MapEvent::from_bytes(bytes)?;
        let at = MapEvent::SIZE;
        let mut stack_len = [0u8; 4];
        stack_len.copy_from_slice(&bytes[at + 8..at + 12]);
        let stack_len = u32::from_ne_bytes(stack_len).min(STACK_DEPTH as u32);
        let mut gc_cycle = [0u8; 4];
        gc_cycle.copy_from_slice(&bytes[at + 12..at + 16]);
        let mut stack = [0u64; STACK_DEPTH];
        for (index, slot) in stack.iter_mut().enumerate().take(stack_len as usize) {
            *slot = word(bytes, at + 16 + index * 8);
        }
        Some(CreateEvent {
            event,
            caller: word(bytes, at),
            stack_len,
            gc_cycle: u32::from_ne_bytes(gc_cycle),
            stack,
        })
    }
}

/// Where the hash seed sits in the second 8-byte word of a map header, as a right shift:
/// classic `hmap.hash0` is the `u32` at offset 12, swiss `Map.seed` the word at offset 8.
pub mod seed_shift {
    /// Classic maps (`runtime.hmap`).
    pub const CLASSIC: u64 = 32;
    /// Swiss maps (`internal/runtime/maps.Map`).
    pub const SWISS: u64 = 0;
}

/// The hash seed from a map header's second word, for the implementation whose
/// [`seed_shift`] is `shift`. Events and headers read from the target's memory after the
/// trace must extract it identically, or a map would not recognise its own seed.
#[inline(always)]
pub fn seed_from_word(word: u64, shift: u64) -> u32 {
    (word >> (shift & 63)) as u32
}

/// A classic header's `B` (log2 of its bucket count, offset 9), from the second word.
#[inline(always)]
pub fn classic_log2_buckets(word: u64) -> u8 {
    (word >> 8) as u8
}

/// Names of BPF global variables userspace sets at load time.
pub mod globals {
    /// `u64` secret mixed into every key hash, drawn per trace: hashes of small keys (ids,
    /// ports) cannot be reversed by trying every value, and differ between traces.
    pub const KEY_SALT: &str = "KEY_SALT";
    /// `u32`: a key is sampled when `hash & mask == 0`; `u32::MAX` turns sampling (and key
    /// hashing, with its user-memory reads) off.
    pub const KEY_SAMPLE_MASK: &str = "KEY_SAMPLE_MASK";
}

/// Bytes of a key that go into its hash; a longer key is hashed by half this many from each
/// of its ends, and its length.
pub const KEY_HASH_PREFIX: usize = 64;

/// Index of the single slot in the per-CPU `LOST` array that counts events the BPF side
/// could not deliver because the ring buffer was full.
pub const LOST_SLOT: u32 = 0;

/// Names of the BPF maps, shared so that a rename cannot silently break the loader.
pub mod maps {
    /// The ring buffer carrying [`super::MapEvent`] and [`super::CreateEvent`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` count of events dropped because the ring buffer was full.
    pub const LOST: &str = "LOST";
    /// LRU hash: map address → [`super::writers::WriterState`], which decides the writes
    /// that carry a stack and the writes that are folded.
    pub const WRITERS: &str = "WRITERS";
    /// Array of one `u32`: the fold epoch while writes may be folded (exact mode, from once
    /// the probes are attached until the trace's window ends), else 0. Userspace advances
    /// it every [`super::writers::EPOCH_MS`]; a write folds only in the epoch of its map's
    /// last write, so the runs of past epochs stop growing and userspace can read them.
    pub const FOLDING: &str = "FOLDING";
    /// Per-CPU `u64` count of every write folded, so that userspace can tell how many
    /// folds no record or final read credited.
    pub const FOLDED: &str = "FOLDED";
    /// Hash (never evicting): map address → [`super::writers::FoldRun`], the writes folded
    /// into the map's last record and not yet carried by a later one.
    pub const FOLD_RUNS: &str = "FOLD_RUNS";
    /// Array of one `u32`: see [`super::settle::CYCLES`].
    pub const GC_CYCLES: &str = "GC_CYCLES";
}

/// Names of the BPF programs, one per probe kind.
pub mod programs {
    /// Attached to every RET of a map constructor, or to its seed call.
    pub const CREATE: &str = "map_create";
    /// Attached after the stack check of every `runtime.mapassign*`.
    pub const ASSIGN: &str = "map_assign";
    /// Attached after the stack check of every `runtime.mapdelete*`.
    pub const DELETE: &str = "map_delete";
    /// Attached after the stack check of `runtime.mapclear`.
    pub const CLEAR: &str = "map_clear";
    /// Attached to every RET of the clone functions: reads the returned map pointer.
    pub const CLONE_RET: &str = "map_clone_ret";
    /// Attached after the stack check of the swiss functions that give a map more room:
    /// `growToSmall`, `growToTable`, `(*table).grow`, `(*table).split`.
    pub const GROW: &str = "map_grow";
    /// Attached after the stack check of classic `runtime.hashGrow`.
    pub const HASH_GROW: &str = "map_hash_grow";
    /// Attached after the stack check of swiss `(*table).pruneTombstones`.
    pub const PRUNE: &str = "map_prune";
    /// Attached after the stack check of `runtime.gcMarkTermination`: counts the cycle and
    /// tells userspace (see [`super::settle`]).
    pub const COLLECTED: &str = "gc_collected";
    /// Does nothing: attached at every site instead of the real programs, it measures the
    /// cost of the uprobe itself (`gomaptrace --floor`, used by `cargo xtask bench`).
    pub const FLOOR: &str = "floor";
}

/// Settling a released map's last write from the collector's own proof that it was dead.
///
/// An entry probe sees each write's count *before* the write, so a map's last write is
/// proven only by a later look at its header. A per-request map is often dropped and its
/// memory reused for a new map long before any quiet-map read. But Go frees a heap object
/// only in the sweep after a mark phase found it unreachable. A probe at the start of mark
/// termination (`runtime.gcMarkTermination`, after marking is done) counts the cycle in
/// [`CYCLES`] and sends a [`super::kind::COLLECTED`] record; on it, userspace reads the
/// header of every map it listed, and keeps each read whose seed is still the map's, tagged
/// with that cycle. If a new map then appears at that address before the next mark
/// termination (the creation record carries the cycle, [`super::CreateEvent::gc_cycle`]),
/// the old map was freed by a sweep no later than that cycle's, so it was already
/// unreachable when its header was read: nothing wrote to it after, and the read is its
/// final count. Maps on a goroutine's stack ([`super::FLAG_ON_STACK`]) are freed by
/// returning, not by the collector, and are never settled this way.
pub mod settle {
    /// Index of the single `u32` in [`super::maps::GC_CYCLES`]: mark terminations seen by
    /// the probe since it was loaded.
    pub const CYCLES: u32 = 0;
}

/// Which writes to a map carry the call stack of the code that writes (a "writer stack"), so
/// that a map whose creation was not seen can still be found in the program's source.
///
/// The BPF side keeps one counter per map address (an LRU hash of [`writers::MAPS`] entries)
/// and sends the write with a stack, as a [`CreateEvent`] of kind [`kind::ASSIGN`] or
/// [`kind::DELETE`], when [`writers::sampled`] says so: the first [`writers::FIRST_WRITES`]
/// writes of a map, then one in [`writers::SAMPLE_EVERY`]. A creation (or clone) probe starts
/// its map's counter at [`writers::FIRST_WRITES`], so maps whose creation was seen (per-request
/// maps above all) only pay the sparse sample.
pub mod writers {
    /// Map addresses whose writes are counted at once; the least recently written go first.
    pub const MAPS: u32 = 32_768;
    /// Writes of a map seen before its creation that all carry a stack.
    pub const FIRST_WRITES: u32 = 4;
    /// After the first writes, one write in this many (a power of two) carries a stack.
    pub const SAMPLE_EVERY: u32 = 1024;

    /// Writes a map seen created makes before it gets a `WRITERS` entry: inserting into the
    /// full LRU costs about as much as the rest of a creation's probe, and most maps made
    /// while tracing (per-request maps) are written a few times and dropped. Until then its
    /// writes are all sent, none folded, and counted in a young-map slot instead.
    pub const STATE_AFTER: u32 = 8;
    /// Young-map slots (a power of two): a map made while tracing is remembered in the slot
    /// its address picks until its entry is made, or another young map takes the slot
    /// (then its next write makes its entry, as for a map not seen created).
    pub const YOUNG_SLOTS: u32 = 4096;

    /// Most writes one record can say were folded (see [`super::MapEvent::folded`]); the
    /// write after that many is sent.
    pub const MAX_FOLDED: u16 = u16::MAX;

    /// What the BPF side keeps per map address (the value of the `WRITERS` LRU hash).
    ///
    /// Besides the write counter that picks the writes with a stack, it holds the header
    /// the map's last write found and the kind of its last record: a write of the same kind
    /// whose header shows what the write before it did (nothing, or one entry more or less)
    /// proves that write's effect, and is folded instead of being sent, as long as every
    /// write in the run did the same (see [`super::MapEvent::folded`]). The folds themselves
    /// are counted in a [`FoldRun`], which the kernel never evicts; `folded` here only says
    /// how long the open run is, so that the map's next record knows to take it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct WriterState {
        /// Writes seen: decides the writes that carry a stack.
        pub writes: u32,
        /// Writes folded since the map's last record (0: no run open).
        pub folded: u16,
        /// Kind of the map's last record when later writes may fold into it, else 0.
        pub kind: u8,
        /// 1 when the open run's writes each changed the count, 0 when none did.
        pub changes: u8,
        /// The element count the map's last write (sent or folded) found.
        pub count: u64,
        /// The header's second word the map's last write found.
        pub header_word: u64,
        /// The fold epoch of the map's last write: a write folds only in the same epoch,
        /// so the first write after a pause is always sent, and a run never spans epochs.
        pub epoch: u32,
        /// Explicit padding.
        pub _pad: u32,
    }

    /// How often userspace advances the fold epoch. A run takes the writes of one epoch
    /// only, so the next write of a map in a later epoch is sent with the run: a map that
    /// goes on being written is known by a count at most about this late, which is the
    /// resolution of its count over time. (A map no longer written is caught up by
    /// userspace reading the runs of older epochs, less often.) And since the first write
    /// of an epoch is never folded, userspace may settle a map left alone for a while from
    /// its header without missing a later write: that write is sent.
    pub const EPOCH_MS: u64 = 100;

    /// Map addresses that can hold an open run of folded writes at once (the `FOLD_RUNS`
    /// hash). When it is full, writes that would start a run are sent instead, so a full
    /// table costs records, never counts.
    pub const RUNS: u32 = 32_768;

    /// The writes folded into a map's last record and not yet delivered (the value of the
    /// `FOLD_RUNS` hash, see [`super::maps::FOLD_RUNS`]).
    ///
    /// It lives apart from the evicting [`WriterState`] so that no fold is ever dropped by
    /// the kernel: the map's next record takes the run and carries its length
    /// ([`super::MapEvent::folded`]). Userspace reads the runs of past epochs (see
    /// [`super::maps::FOLDING`]), so that a map no longer written is not left behind, and
    /// takes a dropped map's run when it sees the map released, and reads every run left when
    /// the trace ends.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FoldRun {
        /// Writes folded since the map's last record.
        pub folded: u16,
        /// 1 when the record and each folded write but the last changed the count by one,
        /// 0 when none did (see [`super::FLAG_FOLDS_CHANGED`]).
        pub changed: u8,
        /// Explicit padding.
        pub _pad: u8,
        /// The fold epoch the run was opened in, the only one whose writes it takes.
        pub epoch: u32,
        /// The element count the map's last record found, where the run starts: with
        /// `header_word`, it tells userspace which map (which seed, which pending operation)
        /// the run belongs to.
        pub count: u64,
        /// The header's second word the folded writes found.
        pub header_word: u64,
    }

    impl FoldRun {
        /// The entry's size in the BPF map.
        pub const SIZE: usize = core::mem::size_of::<FoldRun>();

        /// Rebuilds an entry from the bytes userspace read out of the BPF map.
        pub fn from_bytes(bytes: &[u8; FoldRun::SIZE]) -> FoldRun {
            FoldRun {
                folded: u16::from_ne_bytes([bytes[0], bytes[1]]),
                changed: bytes[2],
                _pad: 0,
                epoch: u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                count: super::word(bytes, 8),
                header_word: super::word(bytes, 16),
            }
        }
    }

    /// Whether the write that finds the map's counter at `seen` carries a stack.
    #[inline(always)]
    pub const fn sampled(seen: u32) -> bool {
        seen < FIRST_WRITES || seen & (SAMPLE_EVERY - 1) == 0
    }
}

/// Ring buffer size in bytes: a power of two multiple of the page size. 16 MiB holds about
/// 300k events, several hundred milliseconds of the fastest map loop a 2-core machine runs.
pub const RING_BYTES: u32 = 16 << 20;

/// Once this many bytes wait in the ring buffer, the BPF side wakes the reader; below it,
/// records are submitted silently and the reader drains on a timer. A wakeup per event costs
/// the traced call over a microsecond; batching makes it nearly free.
pub const WAKEUP_THRESHOLD_BYTES: u64 = (RING_BYTES as u64) / 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layouts_are_fixed() {
        assert_eq!(MapEvent::SIZE, 48);
        assert_eq!(CreateEvent::SIZE, 48 + 16 + 8 * STACK_DEPTH);
        assert_eq!(core::mem::align_of::<MapEvent>(), 8);
    }

    #[test]
    fn seeds_and_bucket_counts_come_from_where_each_implementation_keeps_them() {
        // classic: flags, B, noverflow in the low half, hash0 in the high half.
        assert_eq!(
            seed_from_word(0xdead_beef_0003_0501, seed_shift::CLASSIC),
            0xdead_beef
        );
        assert_eq!(classic_log2_buckets(0xdead_beef_0003_0501), 5);
        assert_eq!(
            seed_from_word(0x1234_5678_9abc_def0, seed_shift::SWISS),
            0x9abc_def0
        );
    }

    #[test]
    fn writes_carry_stacks_first_then_sparsely() {
        let sampled: [bool; 6] = [0, 3, 4, 1023, 1024, 2048].map(writers::sampled);
        assert_eq!(sampled, [true, true, false, false, true, true]);
        assert!(writers::SAMPLE_EVERY.is_power_of_two());
        // A map seen created starts past its first writes.
        assert!(!writers::sampled(writers::FIRST_WRITES));
    }

    #[test]
    fn cookies_round_trip() {
        let packed = cookie::entry(arg::SECOND, arg::FIRST, key::STRING);
        assert_eq!(cookie::map(packed), arg::SECOND);
        assert_eq!(cookie::map_type(packed), arg::FIRST);
        assert_eq!(cookie::key(packed), key::STRING);
        assert_eq!(packed & cookie::HEADER_IN_SLOT, 0);
        assert_eq!(cookie::header_slot(0x28) & 0xffff_ffff, 0x28);
        assert_ne!(cookie::header_slot(0x28) & cookie::HEADER_IN_SLOT, 0);
    }

    fn sample_event() -> MapEvent {
        MapEvent {
            ktime_ns: 7,
            map: 0xc000_1234_5678,
            count: 42,
            header_word: 0xdead_beef_0000_0300,
            map_type: 0x4a_b000,
            key_hash: 0x1234,
            kind: kind::ASSIGN,
            flags: FLAG_COUNT_UNREADABLE | FLAG_KEY_SAMPLED,
            folded: 0x1234,
        }
    }

    #[test]
    fn decodes_fold_runs() {
        let run = writers::FoldRun {
            folded: 0x0102,
            changed: 1,
            _pad: 0,
            epoch: 0x0304_0506,
            count: 9,
            header_word: 0xdead_beef,
        };
        // SAFETY: FoldRun is repr(C) plain data without padding.
        let bytes: [u8; writers::FoldRun::SIZE] = unsafe { core::mem::transmute(run) };
        assert_eq!(writers::FoldRun::from_bytes(&bytes), run);
    }

    #[test]
    fn decodes_what_the_bpf_side_writes() {
        let event = sample_event();
        // SAFETY: MapEvent is repr(C) plain data; viewing it as bytes is what the ring does.
        let bytes: [u8; MapEvent::SIZE] = unsafe { core::mem::transmute(event) };
        assert_eq!(MapEvent::from_bytes(&bytes), Some(event));
        assert_eq!(MapEvent::from_bytes(&bytes[..MapEvent::SIZE - 1]), None);
    }

    #[test]
    fn decodes_creations_with_their_stacks() {
        let mut stack = [0u64; STACK_DEPTH];
        stack[0] = 0x40_1000;
        stack[1] = 0x40_2000;
        let create = CreateEvent {
            event: MapEvent {
                kind: kind::CREATE,
                ..sample_event()
            },
            caller: 0x40_3000,
            stack_len: 2,
            gc_cycle: 7,
            stack,
        };
        // SAFETY: as above.
        let bytes: [u8; CreateEvent::SIZE] = unsafe { core::mem::transmute(create) };
        assert_eq!(CreateEvent::from_bytes(&bytes), Some(create));
        assert_eq!(CreateEvent::from_bytes(&bytes[..MapEvent::SIZE]), None);
        // What the ring held past the walked frames is not part of the record.
        let stale = CreateEvent {
            stack: {
                let mut stale = stack;
                stale[2] = 0xdead;
                stale
            },
            ..create
        };
        // SAFETY: as above.
        let stale: [u8; CreateEvent::SIZE] = unsafe { core::mem::transmute(stale) };
        assert_eq!(CreateEvent::from_bytes(&stale), Some(create));
    }
}
