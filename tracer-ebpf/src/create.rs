//! Map creation: a probe on every RET instruction of `runtime.makemap*`.
//!
//! The returned map pointer only exists at return, and uretprobes would corrupt Go stacks,
//! so userspace decodes each function and attaches this program to each of its RETs.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::kind;

use crate::{
    emit::{emit, EmitError},
    go_abi,
};

#[uprobe]
pub fn map_create_ret(ctx: ProbeContext) -> u32 {
    let _ = try_map_create_ret(&ctx);
    0
}

fn try_map_create_ret(ctx: &ProbeContext) -> Result<(), EmitError> {
    emit(kind::CREATE, go_abi::first_result(ctx))
}
