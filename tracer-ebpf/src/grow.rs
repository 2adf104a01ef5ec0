//! Growth: a probe after the stack check of the functions that start growing a map (classic
//! `hashGrow`; swiss `growToSmall`, `growToTable`, `(*table).rehash`). The attach cookie says
//! which argument holds the map.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{
    emit::{emit, EmitError},
    go_abi,
};

#[uprobe]
pub fn map_grow(ctx: ProbeContext) -> u32 {
    let _ = try_map_grow(&ctx);
    0
}

fn try_map_grow(ctx: &ProbeContext) -> Result<(), EmitError> {
    emit(kind::GROW, go_abi::map_argument_from_cookie(ctx))
}
