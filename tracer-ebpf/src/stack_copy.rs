//! A copy of the top of the probed thread's stack, so that a frame-pointer walk takes most
//! frame records from BPF memory instead of making a user read for each.
//!
//! A user read costs about 23 ns on the VMs we measure, nearly whatever its size up to a few
//! kilobytes (a second 16-byte header read added 23.5 ns to every write, measured with
//! `kernel.bpf_stats_enabled`), and a creation's walk made one per frame. One read of
//! [`WINDOW_BYTES`] from the stack pointer holds the records of the frames nearest to it
//! (Go frames sit one above another on the goroutine's stack); only the frames past it are
//! read one by one.
//!
//! The copy lives in a slot per thread, not per CPU. A uprobe program can be preempted
//! (uprobe-multi links run it under `rcu_read_lock` and `migrate_disable` only), and another
//! thread's program on this CPU would overwrite a per-CPU copy in the middle of a walk. A
//! thread runs one of these programs at a time, so its own slot is only ever its own. Slots
//! are never removed, so none is reused under a walk: once [`THREADS`] threads have one,
//! other threads' walks read every frame, as they did before.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user as read_user_raw},
    macros::map,
    maps::{Array, HashMap},
};

/// Bytes copied from the stack pointer up: the records of the nearest frames of a typical
/// Go stack (frames of a few dozen to a few hundred bytes) within one read.
const WINDOW_BYTES: usize = 4096;

const WINDOW_WORDS: usize = WINDOW_BYTES / 8;

/// Threads of the target that get a slot: 4 MiB of kernel memory, preallocated.
const THREADS: u32 = 1024;

/// One thread's copy of its stack's top.
#[repr(C)]
pub struct Window {
    words: [u64; WINDOW_WORDS],
}

/// Thread id → its copy.
#[map]
static WINDOWS: HashMap<u32, Window> = HashMap::with_max_entries(THREADS, 0);

/// A zeroed window, never written: the value a thread's slot starts from (a window does not
/// fit on the BPF stack).
#[map]
static EMPTY_WINDOW: Array<Window> = Array::with_max_entries(1, 0);

/// The stack from `base` (the stack pointer when the probe fired) up, as one read copied it.
pub struct StackCopy {
    base: u64,
    window: *const Window,
}

impl StackCopy {
    /// Copies the calling thread's stack from `stack_pointer`; `None` when the thread has no
    /// slot and none is left, or when the read fails (the window runs past the end of the
    /// stack's mapping), and the walk reads frame by frame.
    #[inline(always)]
    pub fn read(stack_pointer: u64) -> Option<StackCopy> {
        // The low half is the thread id.
        let thread = bpf_get_current_pid_tgid() as u32;
        let window = match WINDOWS.get_ptr_mut(thread) {
            Some(window) => window,
            None => {
                // The template is never written; it is only copied from.
                let empty = EMPTY_WINDOW.get(0)?;
                WINDOWS.insert(thread, empty, u64::from(BPF_NOEXIST)).ok()?;
                WINDOWS.get_ptr_mut(thread)?
            }
        };
        // SAFETY: the slot is `WINDOW_BYTES` long; a faulting read returns an error.
        let failed = unsafe {
            read_user_raw(
                window.cast(),
                WINDOW_BYTES as u32,
                stack_pointer as *const _,
            )
        };
        (failed == 0).then_some(StackCopy {
            base: stack_pointer,
            window,
        })
    }

    /// The two words at `address` (a frame record: the caller's frame pointer, then the
    /// return address), when the copy holds them; `address` is 8-byte aligned.
    #[inline(always)]
    pub fn record(&self, address: u64) -> Option<[u64; 2]> {
        let index = self.index(address, 2)?;
        // SAFETY: the window is this thread's, and nothing else writes it during the walk.
        let words = unsafe { &(*self.window).words };
        Some([*words.get(index)?, *words.get(index + 1)?])
    }

    /// The word at `address` (8-byte aligned), when the copy holds it.
    #[inline(always)]
    pub fn word(&self, address: u64) -> Option<u64> {
        let index = self.index(address, 1)?;
        // SAFETY: as in `record`.
        let words = unsafe { &(*self.window).words };
        words.get(index).copied()
    }

    /// The index of the word at `address` when the copy holds `words` words from there. The
    /// bound is on the byte offset, not only the index: the verifier does not carry the
    /// alignment check over, and must see every access end inside the window.
    #[inline(always)]
    fn index(&self, address: u64, words: u64) -> Option<usize> {
        let offset = address.wrapping_sub(self.base);
        (offset <= WINDOW_BYTES as u64 - 8 * words && offset.is_multiple_of(8))
            .then_some((offset / 8) as usize)
    }
}
