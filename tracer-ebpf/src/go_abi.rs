//! Go's internal register ABI (ABIInternal), which is not the C calling convention.
//!
//! `ProbeContext::arg` follows the C ABI (RDI, RSI, …); Go passes integer arguments in
//! RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11 and returns results in the same order.

use aya_ebpf::programs::ProbeContext;

/// The second integer argument: the map header for `mapassign*`, `mapdelete*` and
/// `mapclear`, whose first argument is the map type.
#[inline(always)]
pub fn map_argument(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` points at the pt_regs the kernel hands every uprobe program.
    unsafe { (*ctx.regs).rbx }
}

/// The first integer result, read at a RET instruction: the map pointer `makemap*` returns.
#[inline(always)]
pub fn first_result(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    unsafe { (*ctx.regs).rax }
}
