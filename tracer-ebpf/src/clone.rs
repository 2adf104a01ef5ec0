//! Clones: a probe on every RET instruction of `runtime.mapclone2` or `(*Map).Clone`.
//!
//! A clone fills its map without any assign (and on Go 1.25+ without any create call), so
//! its result is reported with the count it already holds, and with the call stack that
//! cloned it (the direct caller's return address is at `[SP]` at a `RET`).

use aya_ebpf::{helpers::bpf_probe_read_user, macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{
    emit::{emit_create, EmitError, Observation},
    go_abi,
};

#[uprobe]
pub fn map_clone_ret(ctx: ProbeContext) -> u32 {
    let _ = try_map_clone_ret(&ctx);
    0
}

fn try_map_clone_ret(ctx: &ProbeContext) -> Result<(), EmitError> {
    let sp = go_abi::stack_pointer(ctx);
    // SAFETY: a faulting user read returns an error.
    let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    let observation = Observation {
        kind: kind::CLONE,
        map: go_abi::first_result(ctx),
        map_type: 0,
        key_hash: None,
    };
    emit_create(ctx, observation, caller, 0)
}
