//! Inserts and overwrites: a probe after the stack check of every `runtime.mapassign*`.
//!
//! Insert and overwrite are the same call; userspace tells them apart by the count at the
//! map's next observation.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{emit::EmitError, writers::observe_write};

#[uprobe]
pub fn map_assign(ctx: ProbeContext) -> u32 {
    let _ = try_map_assign(&ctx);
    0
}

fn try_map_assign(ctx: &ProbeContext) -> Result<(), EmitError> {
    observe_write(ctx, kind::ASSIGN)
}
