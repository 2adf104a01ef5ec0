//! Go's internal register ABI (ABIInternal), which is not the C calling convention.
//!
//! `ProbeContext::arg` follows the C ABI (RDI, RSI, …); Go passes integer arguments in
//! RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11 and returns results in the same order.

use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, programs::ProbeContext, EbpfContext};
use tracer_common::arg;

/// The second integer argument: the map header for `mapassign*`, whose first argument is the
/// map type. Read directly rather than through the attach cookie: assigns are the hottest
/// probe and this saves a helper call.
#[inline(always)]
pub fn map_argument(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` points at the pt_regs the kernel hands every uprobe program.
    unsafe { (*ctx.regs).rbx }
}

/// The argument named by the probe's attach cookie (a [`tracer_common::arg`] index): for
/// functions that take the map in different positions, such as `mapdelete*` (second) and
/// `(*Map).Delete` (receiver, first).
#[inline(always)]
pub fn map_argument_from_cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: the helper only reads the cookie of the running uprobe.
    let index = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // The verifier only accepts context reads at constant offsets, so all three registers
    // are loaded (volatile, so that LLVM cannot turn the choice into a computed offset) and
    // the value is chosen afterwards.
    // SAFETY: `regs` points at the pt_regs the kernel hands every uprobe program.
    let (first, second, third) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.regs).rax),
            core::ptr::read_volatile(&(*ctx.regs).rbx),
            core::ptr::read_volatile(&(*ctx.regs).rcx),
        )
    };
    match index {
        arg::FIRST => first,
        arg::SECOND => second,
        arg::THIRD => third,
        _ => 0,
    }
}

/// The first integer result, read at a RET instruction: the map pointer `makemap*` returns.
#[inline(always)]
pub fn first_result(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    unsafe { (*ctx.regs).rax }
}
