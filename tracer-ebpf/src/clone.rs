//! Clones: a probe on every RET instruction of `runtime.mapclone2` or `(*Map).Clone`.
//!
//! A clone fills its map without any assign (and on Go 1.25+ without any create call), so
//! its result is reported with the count it already holds, and with the call stack that
//! cloned it (at a `RET`, the direct caller is where the instruction returns to).

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{
    emit::{emit_create, read_header, EmitError, Observation},
    go_abi,
    stack_copy::StackCopy,
    writers,
};

#[uprobe]
pub fn map_clone_ret(ctx: ProbeContext) -> u32 {
    let _ = try_map_clone_ret(&ctx);
    0
}

fn try_map_clone_ret(ctx: &ProbeContext) -> Result<(), EmitError> {
    let caller = go_abi::return_address(ctx);
    let map = go_abi::first_result(ctx);
    let carried = writers::mark_created(map);
    let observation = Observation {
        kind: kind::CLONE,
        map,
        map_type: 0,
        key_hash: None,
        header: read_header(ctx, map),
        carried,
    };
    let copy = StackCopy::read(go_abi::stack_pointer(ctx));
    emit_create(ctx, observation, caller, 0, copy.as_ref())
}
