//! Map creation, with the call stack that created the map.
//!
//! Two placements, chosen per constructor by userspace (`tracer::inspect::SeedCall`):
//! - the constructor's call that draws the hash seed (Go 1.22+): the kernel emulates a
//!   `CALL`, so this costs about as much as an entry probe; the new header waits in the stack
//!   slot the cookie names, and its seed is not drawn yet;
//! - every `RET` otherwise: the header is the first result, but the kernel single-steps the
//!   `RET`, and the frame-pointer walk no longer sees the direct caller, whose return address
//!   is read instead (at `[SP]` on amd64, in the link register on arm64).

use aya_ebpf::{helpers::bpf_probe_read_user, macros::uprobe, programs::ProbeContext};
use tracer_common::{cookie, kind, FLAG_SEED_PENDING};

use crate::{
    diagnostics,
    emit::{emit_create, read_header, EmitError, Observation},
    go_abi,
    stack_copy::StackCopy,
    writers,
};

#[uprobe]
pub fn map_create(ctx: ProbeContext) -> u32 {
    let _ = try_map_create(&ctx);
    0
}

fn try_map_create(ctx: &ProbeContext) -> Result<(), EmitError> {
    let cookie = go_abi::cookie(ctx);
    let stack_pointer = go_abi::stack_pointer(ctx);
    let copy = StackCopy::read(stack_pointer);
    let (map, caller, flags) = if cookie & cookie::HEADER_IN_SLOT != 0 {
        let slot = stack_pointer + (cookie & 0xffff_ffff);
        let map = match copy.as_ref().and_then(|copy| copy.word(slot)) {
            Some(map) => Ok(map),
            // SAFETY: a faulting user read returns an error.
            None => unsafe { bpf_probe_read_user(slot as *const u64) },
        };
        let map = match map {
            Ok(map) => map,
            Err(errno) => {
                diagnostics::created_header_unreadable(ctx, slot, errno.into());
                0
            }
        };
        (map, 0, FLAG_SEED_PENDING)
    } else {
        (go_abi::first_result(ctx), go_abi::return_address(ctx), 0)
    };
    let carried = writers::mark_created(map);
    let observation = Observation {
        kind: kind::CREATE,
        map,
        map_type: 0,
        key_hash: None,
        header: read_header(ctx, map),
        carried,
    };
    emit_create(ctx, observation, caller, flags, copy.as_ref())
}
