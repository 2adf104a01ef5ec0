//! The slots the collection probe reads (see `tracer_common::settle`), shared with the
//! tracer as memory: listing a map costs a few stores instead of a system call, so that
//! listing every map a busy program makes costs the tracer nearly nothing.

use std::mem::offset_of;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::{Array, Map, MapData};
use aya::Ebpf;
use tracer_common::{maps, settle, settle::SettleSlot};

use super::{map_error, take_map, ProbeError};

/// The listed maps: `SETTLE_SLOTS` mapped into the tracer, and how many slots the probe
/// reads.
pub struct Collection {
    slots: NonNull<u8>,
    bytes: usize,
    used: Array<MapData, u32>,
    cycles: Array<MapData, u32>,
    /// Keeps the array (and so the mapping) alive.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value alone; the kernel's side of the sharing is
// the BPF program, which only ever sees the memory, never this pointer.
unsafe impl Send for Collection {}

/// Offsets of a slot's fields.
const MAP: usize = offset_of!(SettleSlot, map);
const SEED: usize = offset_of!(SettleSlot, seed);
const SEED_MASK: usize = offset_of!(SettleSlot, seed_mask);
const READ_MAP: usize = offset_of!(SettleSlot, read_map);
const COUNT: usize = offset_of!(SettleSlot, count);
const WORD: usize = offset_of!(SettleSlot, word);
const CYCLE: usize = offset_of!(SettleSlot, cycle);

impl Collection {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Collection, ProbeError> {
        let used = take_map(ebpf, maps::SETTLE_USED)?;
        let cycles = take_map(ebpf, maps::GC_CYCLES)?;
        let map = match ebpf.take_map(maps::SETTLE_SLOTS) {
            Some(Map::Array(map)) => map,
            Some(_) => {
                return Err(map_error(
                    maps::SETTLE_SLOTS,
                    aya::maps::MapError::InvalidMapType { map_type: 0 },
                ))
            }
            None => return Err(ProbeError::Missing(maps::SETTLE_SLOTS)),
        };
        let bytes = settle::SLOTS as usize * SettleSlot::SIZE;
        // SAFETY: a shared mapping of the array's values (the kernel lays out an mmapable
        // array's elements back to back from offset 0, each rounded up to 8 bytes, which
        // `SettleSlot` already is); the kernel checks the length and the map's flags.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(ProbeError::Mmap {
                name: maps::SETTLE_SLOTS,
                source: std::io::Error::last_os_error(),
            });
        }
        let slots =
            NonNull::new(address.cast::<u8>()).ok_or(ProbeError::Missing(maps::SETTLE_SLOTS))?;
        Ok(Collection {
            slots,
            bytes,
            used,
            cycles,
            _map: map,
        })
    }

    /// The field at `offset` of `slot` in the mapping.
    fn field(&self, slot: u32, offset: usize) -> *mut u8 {
        assert!(slot < settle::SLOTS && offset < SettleSlot::SIZE);
        // SAFETY: in bounds of the mapping, checked above.
        unsafe {
            self.slots
                .as_ptr()
                .add(slot as usize * SettleSlot::SIZE + offset)
        }
    }

    fn word(&self, slot: u32, offset: usize) -> &AtomicU64 {
        // SAFETY: 8-byte aligned (a page-aligned mapping, slots and words at multiples of
        // 8), valid while `self` is, and shared with the BPF program only through atomics
        // here.
        unsafe { AtomicU64::from_ptr(self.field(slot, offset).cast()) }
    }

    fn cycle(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: as in `word`, 4-byte aligned.
        unsafe { AtomicU32::from_ptr(self.field(slot, CYCLE).cast()) }
    }

    /// Lists `listing.map` in `slot`. The address goes in last, after the slot is emptied:
    /// a probe reading meanwhile sees an empty slot, or the new map with its own seed, or
    /// reads the old map with the new seed (which then cannot match) and records that read
    /// under the old address, which [`Collection::read`]'s caller tells apart.
    pub fn list(&mut self, slot: u32, listing: &SettleSlot) {
        self.word(slot, MAP).store(0, Ordering::Release);
        self.cycle(slot).store(0, Ordering::Release);
        self.word(slot, SEED).store(listing.seed, Ordering::Release);
        self.word(slot, SEED_MASK)
            .store(listing.seed_mask, Ordering::Release);
        self.word(slot, MAP).store(listing.map, Ordering::Release);
    }

    /// What the probe last read for `slot`: `read_map` says for which address.
    pub fn read(&self, slot: u32) -> SettleSlot {
        SettleSlot {
            cycle: self.cycle(slot).load(Ordering::Acquire),
            map: self.word(slot, MAP).load(Ordering::Acquire),
            seed: self.word(slot, SEED).load(Ordering::Acquire),
            seed_mask: self.word(slot, SEED_MASK).load(Ordering::Acquire),
            read_map: self.word(slot, READ_MAP).load(Ordering::Acquire),
            count: self.word(slot, COUNT).load(Ordering::Acquire),
            word: self.word(slot, WORD).load(Ordering::Acquire),
            _pad: 0,
        }
    }

    /// The cycle of the probe's last read with the seed of the map in `slot` (0: none).
    pub fn last_read_cycle(&self, slot: u32) -> u32 {
        self.cycle(slot).load(Ordering::Acquire)
    }

    /// The collections the target has finished since the probe was loaded (see
    /// `tracer_common::settle::CYCLES`).
    pub fn cycles(&self) -> Result<u32, ProbeError> {
        self.cycles
            .get(&settle::CYCLES, 0)
            .map_err(|source| map_error(maps::GC_CYCLES, source))
    }

    /// Tells the probe how many leading slots to read.
    pub fn set_used(&mut self, used: u32) -> Result<(), ProbeError> {
        self.used
            .set(0, used, 0)
            .map_err(|source| map_error(maps::SETTLE_USED, source))
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `take`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.bytes) };
    }
}
