//! Salted hashes of keys, so that userspace can follow a sample of entries from insert to
//! delete without ever seeing a key.
//!
//! The hash covers the key's length and its bytes (for strings, their contents): all of them
//! up to [`KEY_HASH_PREFIX`] bytes, else that many from its two ends. So the same key hashes
//! the same whether the runtime got it by value (`_fast64`), as a string (`_faststr`) or by
//! address (generic functions, swiss `(*Map).Delete`). It takes the bytes eight at a time:
//! every traced write hashes its key (the hash decides whether the key is sampled), so a
//! byte-at-a-time hash cost string and struct keys a multiply per byte on the target's hot
//! path. The salt is drawn per trace by userspace and never recorded: a hash of a small
//! integer key cannot be reversed by trying every integer.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw},
    macros::map,
    maps::PerCpuArray,
};
use tracer_common::{go_type, key, KEY_HASH_PREFIX};

use crate::go_abi::Arguments;

/// See `tracer_common::globals::KEY_SALT`.
#[no_mangle]
static KEY_SALT: u64 = 0;

/// See `tracer_common::globals::KEY_SAMPLE_MASK`; all ones (sampling off) until userspace
/// sets it.
#[no_mangle]
static KEY_SAMPLE_MASK: u32 = u32::MAX;

/// The key type pointer inside every map type descriptor (classic and swiss): the first
/// field after the common `abi.Type`.
const MAP_TYPE_KEY_OFFSET: u64 = go_type::HEADER_BYTES as u64;

// The read size bound in `hash_memory` is a mask: it needs a power of two, whose halves (the
// two ends of a long key) are whole words.
const _: () = assert!(KEY_HASH_PREFIX.is_power_of_two() && KEY_HASH_PREFIX >= 16);

/// The words of a key that go into its hash.
const PREFIX_WORDS: usize = KEY_HASH_PREFIX / 8;

/// The hash's starting state before the salt, and the odd multiplier of each step (the
/// 64-bit golden ratio, as in Fibonacci hashing).
const SEED: u64 = 0x243f_6a88_85a3_08d3;
const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// The key's salted hash when it falls in the sample, `None` when it does not, when
/// sampling is off, or when the key cannot be read.
#[inline(always)]
pub fn sampled_key_hash(access: u8, arguments: &Arguments, map_type: u64) -> Option<u32> {
    // SAFETY: plain reads of globals; volatile so the loader's values are not folded away.
    let (mask, salt) = unsafe {
        (
            core::ptr::read_volatile(&KEY_SAMPLE_MASK),
            core::ptr::read_volatile(&KEY_SALT),
        )
    };
    if mask == u32::MAX {
        return None;
    }
    let hash = match access {
        key::VALUE32 => hash_words(salt, &[u64::from(arguments.get(2) as u32)], 4),
        key::VALUE64 => hash_words(salt, &[arguments.get(2)], 8),
        // A string is hashed by its contents (data pointer, length).
        key::STRING => hash_memory(salt, arguments.get(2), arguments.get(3))?,
        key::POINTER => hash_by_address(salt, arguments.get(2), map_type)?,
        _ => return None,
    };
    (hash & mask == 0).then_some(hash)
}

/// Slots of [`KEY_TYPES`] (a power of two): a program has a handful of map types in its hot
/// paths.
const KEY_TYPE_SLOTS: u32 = 64;

/// What a map type says of its key, as [`key_type`] caches it.
#[derive(Clone, Copy)]
#[repr(C)]
struct KeyType {
    /// The map type it describes; 0 for an empty slot.
    map_type: u64,
    /// The key's size in bytes.
    size: u64,
    /// 1 when the key is a string (hashed by its contents), else 0.
    string: u64,
}

/// Map type → its key's size and kind, per CPU and direct-mapped by the type's address. A
/// key by address otherwise costs three dependent user-memory reads (map type, key type,
/// then its size and kind) before the key itself; a type descriptor never changes, so a
/// slot is only ever replaced by another type's.
#[map]
static KEY_TYPES: PerCpuArray<KeyType> = PerCpuArray::with_max_entries(KEY_TYPE_SLOTS, 0);

/// A key the function received by address: its size and kind come from the map type.
#[inline(always)]
fn hash_by_address(salt: u64, key: u64, map_type: u64) -> Option<u32> {
    let facts = key_type(map_type)?;
    if facts.string != 0 {
        // The key is a string header (data pointer, length): hash its contents.
        // SAFETY: a faulting user read returns an error.
        let header: [u64; 2] = unsafe { bpf_probe_read_user(key as *const [u64; 2]) }.ok()?;
        return hash_memory(salt, header[0], header[1]);
    }
    hash_memory(salt, key, facts.size)
}

/// The key facts of `map_type`, from this CPU's cache or read from the type descriptors.
#[inline(always)]
fn key_type(map_type: u64) -> Option<KeyType> {
    if map_type == 0 {
        // Unknown type; and 0 marks an empty slot.
        return None;
    }
    // Type descriptors are at least 8-byte aligned: the low bits say nothing.
    let slot = (map_type >> 3) as u32 & (KEY_TYPE_SLOTS - 1);
    let cached = KEY_TYPES.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot, so no other program touches it while this one runs.
    if unsafe { (*cached).map_type } == map_type {
        return Some(unsafe { *cached });
    }
    // SAFETY: faulting user reads return errors.
    let facts = unsafe {
        let key_type: u64 =
            bpf_probe_read_user((map_type + MAP_TYPE_KEY_OFFSET) as *const u64).ok()?;
        let size: u64 =
            bpf_probe_read_user((key_type + go_type::SIZE_AT as u64) as *const u64).ok()?;
        let kind: u8 =
            bpf_probe_read_user((key_type + go_type::KIND_AT as u64) as *const u8).ok()?;
        KeyType {
            map_type,
            size,
            string: u64::from(kind & go_type::KIND_MASK == go_type::KIND_STRING),
        }
    };
    // SAFETY: as above.
    unsafe { *cached = facts };
    Some(facts)
}

/// Bytes taken from each end of a key longer than [`KEY_HASH_PREFIX`].
const HALF: usize = KEY_HASH_PREFIX / 2;

/// Hashes the `len` bytes at `address` by their length and at most [`KEY_HASH_PREFIX`] of
/// them: all of a key that short, else its first and last [`HALF`] bytes. Long keys (paths,
/// URLs, composite ids) often share a prefix longer than that and differ only at their end,
/// or the other way round; hashing one end alone gave all of a map's keys one hash, so the
/// sample followed every key of the map or none, as one key.
#[inline(always)]
fn hash_memory(salt: u64, address: u64, len: u64) -> Option<u32> {
    // Zeroed, so that the words past `len` hash as zeros, as a key given by value is padded;
    // a word at a time, with volatile stores: LLVM makes a zeroed array a call to the BPF
    // side's `memset`, a loop that stores one byte per turn and cost more than the read.
    let mut buffer = MaybeUninit::<[u64; PREFIX_WORDS]>::uninit();
    let words = buffer.as_mut_ptr().cast::<u64>();
    for index in 0..PREFIX_WORDS {
        // SAFETY: `index` is inside the buffer.
        unsafe { words.add(index).write_volatile(0) };
    }
    let failed = if len > KEY_HASH_PREFIX as u64 {
        // SAFETY: each read fills one half of the buffer; a faulting read returns an error.
        unsafe {
            read_user_raw(words.cast(), HALF as u32, address as *const _) != 0
                || read_user_raw(
                    words.add(HALF / 8).cast(),
                    HALF as u32,
                    (address + len - HALF as u64) as *const _,
                ) != 0
        }
    } else if len > 0 {
        // `len` is 1..=KEY_HASH_PREFIX here, and for such a `len` this is `len` itself. The
        // mask and the `+ 1` make that bound hold by arithmetic alone, so the verifier sees a
        // size that fits the buffer whatever LLVM makes of the comparison above.
        let size = ((len as u32 - 1) & (KEY_HASH_PREFIX as u32 - 1)) + 1;
        // SAFETY: `size` is 1..=KEY_HASH_PREFIX, the buffer's size; a faulting read returns
        // an error.
        unsafe { read_user_raw(words.cast(), size, address as *const _) != 0 }
    } else {
        false
    };
    if failed {
        return None;
    }
    // SAFETY: every word was zeroed above.
    Some(hash_words(salt, unsafe { buffer.assume_init_ref() }, len))
}

/// Hashes a key of `len` bytes whose first bytes are `words` (little-endian, zero past the
/// key's end), seeded with the salt, folded to 32 bits; never 0, which means "no hash" on
/// the wire. Each step is a bijection of the state, so two keys of one length that differ in
/// a single word never collide before the final fold; the finaliser spreads every bit into
/// the low ones the sample mask tests.
#[inline(always)]
fn hash_words<const N: usize>(salt: u64, words: &[u64; N], len: u64) -> u32 {
    let mut state = SEED ^ salt;
    for (index, word) in words.iter().enumerate() {
        if index as u64 * 8 >= len {
            break;
        }
        state = step(state, *word);
    }
    finish(step(state, len))
}

#[inline(always)]
fn step(state: u64, word: u64) -> u64 {
    (state ^ word).wrapping_mul(STEP)
}

/// MurmurHash3's 64-bit finaliser, folded to 32 bits.
#[inline(always)]
fn finish(state: u64) -> u32 {
    let mut mixed = state ^ (state >> 33);
    mixed = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    mixed ^= mixed >> 33;
    mixed = mixed.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    mixed ^= mixed >> 33;
    let folded = (mixed ^ (mixed >> 32)) as u32;
    if folded == 0 {
        1
    } else {
        folded
    }
}
