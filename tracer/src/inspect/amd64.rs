//! x86-64 machine code: where Go's stack check ends and where functions return.
//!
//! Go (1.17+, register ABI) starts every function that may grow its stack with
//! ```text
//! CMPQ SP, 0x10(R14)                           49 3b 66 10
//! JBE  morestack_call                          0f 86 rel32 (or 76 rel8)
//! ```
//! or, for frames bigger than the guard slack,
//! ```text
//! LEAQ -x(SP), R12                             4c 8d 64 24 xx
//! CMPQ R12, 0x10(R14)                          4d 3b 66 10
//! JBE  morestack_call
//! ```
//! (huge frames add `MOVQ SP, R12; SUBQ $x, R12; JCS` before the compare). `R14` holds `g`
//! and `0x10(R14)` is `g.stackguard0`, so "a CMP reading 0x10(R14) followed by JBE" covers
//! every form. When the stack must grow, `morestack` restarts the function at its first
//! instruction, so a probe placed after the JBE fires exactly once per call.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// The stack check is at the very start; looking further could match ordinary code.
const PROLOGUE_WINDOW: usize = 8;
/// Offset of `stackguard0` in `runtime.g` (after `stack.lo` and `stack.hi`).
const STACKGUARD0: u64 = 0x10;

/// Offset (from the function start) of the instruction after the stack-check branch;
/// `None` when the function has no stack check (NOSPLIT).
pub(super) fn stack_check_end(code: &[u8]) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let prologue: Vec<Instruction> = decoder
        .iter()
        .take(PROLOGUE_WINDOW)
        .take_while(|instruction| !instruction.is_invalid())
        .collect();
    prologue.windows(2).find_map(|pair| match pair {
        [compare, branch] if reads_stack_guard(compare) && is_jbe(branch) => Some(branch.next_ip()),
        _ => None,
    })
}

/// `CMP` with a `0x10(R14)` operand: a comparison against `g.stackguard0`.
fn reads_stack_guard(instruction: &Instruction) -> bool {
    instruction.mnemonic() == Mnemonic::Cmp
        && (0..instruction.op_count()).any(|operand| instruction.op_kind(operand) == OpKind::Memory)
        && instruction.memory_base() == Register::R14
        && instruction.memory_index() == Register::None
        && instruction.memory_displacement64() == STACKGUARD0
}

fn is_jbe(instruction: &Instruction) -> bool {
    matches!(instruction.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64)
}

/// An instruction that does not decode, at this offset from the function start.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Undecodable {
    pub(super) offset: u64,
}

/// Offsets of every `RET` in `code`, decoding all of it: a linear sweep is exact for Go
/// functions, which hold no data between instructions.
pub(super) fn return_offsets(code: &[u8]) -> Result<Vec<u64>, Undecodable> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut returns = Vec::new();
    for instruction in decoder.iter() {
        if instruction.is_invalid() {
            return Err(Undecodable {
                offset: instruction.ip(),
            });
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            returns.push(instruction.ip());
        }
    }
    Ok(returns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CMPQ SP, 0x10(R14); JBE +0x328; PUSHQ BP` as Go 1.24 emits for mapassign_fast64.
    const SMALL_FRAME: &[u8] = &[0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x28, 0x03, 0, 0, 0x55];
    /// `LEAQ -0x30(SP), R12; CMPQ R12, 0x10(R14); JBE +0x417; PUSHQ BP`.
    const BIG_FRAME: &[u8] = &[
        0x4c, 0x8d, 0x64, 0x24, 0xd0, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x17, 0x04, 0, 0, 0x55,
    ];

    #[test]
    fn finds_the_end_of_small_and_big_frame_checks() {
        assert_eq!(stack_check_end(SMALL_FRAME), Some(10));
        assert_eq!(stack_check_end(BIG_FRAME), Some(15));
        // The short JBE form.
        assert_eq!(
            stack_check_end(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x05, 0x55]),
            Some(6)
        );
    }

    #[test]
    fn no_stack_check_means_none() {
        // CMPB $0, 0x10(AX); JBE: compares something else at offset 0x10.
        assert_eq!(stack_check_end(&[0x80, 0x78, 0x10, 0x00, 0x76, 0x05]), None);
        // CMPQ SP, 0x10(R14) not followed by a JBE.
        assert_eq!(stack_check_end(&[0x49, 0x3b, 0x66, 0x10, 0x74, 0x05]), None);
        assert_eq!(stack_check_end(&[]), None);
        assert_eq!(stack_check_end(&[0x0f]), None);
    }

    #[test]
    fn finds_every_ret_form() {
        // PUSHQ BP; RET; INT3; RET 8; NOP
        let code = [0x55, 0xc3, 0xcc, 0xc2, 0x08, 0x00, 0x90];
        assert_eq!(return_offsets(&code), Ok(vec![1, 3]));
    }

    #[test]
    fn reports_undecodable_bytes() {
        // A truncated JBE rel32 after a RET.
        assert_eq!(
            return_offsets(&[0xc3, 0x0f, 0x86, 0x01]),
            Err(Undecodable { offset: 1 })
        );
    }
}
