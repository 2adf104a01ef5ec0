//! Clones: a probe on every RET instruction of `runtime.mapclone2` or `(*Map).Clone`.
//!
//! A clone fills its map without any assign (and on Go 1.25+ without any create call), so
//! its result is reported with the count it already holds.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{
    emit::{emit, EmitError},
    go_abi,
};

#[uprobe]
pub fn map_clone_ret(ctx: ProbeContext) -> u32 {
    let _ = try_map_clone_ret(&ctx);
    0
}

fn try_map_clone_ret(ctx: &ProbeContext) -> Result<(), EmitError> {
    emit(kind::CLONE, go_abi::first_result(ctx))
}
