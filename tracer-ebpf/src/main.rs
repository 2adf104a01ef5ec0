//! The BPF side of gomaptrace: one uprobe program per kind of Go map operation.
//!
//! Every program is an *entry* probe (or a probe on a `CALL` or `RET` instruction):
//! uretprobes corrupt Go stacks. Programs read the map header's count and seed, the map
//! type, a salted hash of a sample of keys and, at creation, the call stack, and append a
//! [`tracer_common::MapEvent`] or [`tracer_common::CreateEvent`] to the ring buffer; all
//! interpretation happens in userspace.
#![no_std]
#![no_main]

mod assign;
mod clear;
mod clone;
mod collect;
mod create;
mod delete;
mod diagnostics;
mod emit;
mod entry;
mod floor;
mod go_abi;
mod grow;
mod hash_grow;
mod key_hash;
mod prune;
mod stack_copy;
mod writers;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never executed.
    loop {}
}

/// The kernel only lets GPL-compatible programs call `bpf_probe_read_user`.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
