//! AArch64 machine code: where Go's stack check ends and where functions return.
//!
//! Instructions are fixed 4-byte little-endian words, so they are matched by mask instead of
//! pulling in a disassembler. Go (1.18+, register ABI) starts functions that may grow their
//! stack with
//! ```text
//! MOVD 16(R28), R16        f9400b90   ldr x16, [x28, #16]    (g.stackguard0)
//! CMP  R16, RSP            eb3063ff   cmp sp, x16
//! BLS  morestack_call      54xxxxx9   b.ls
//! ```
//! or, for big frames, `MOVD 16(R28), R16; SUB $x, RSP, R17; CMP R16, R17 (eb10023f); BLS`
//! (huge frames add `SUBS` and `BLO`). `morestack` restarts the function at its first
//! instruction, so a probe placed after the BLS fires exactly once per call.

/// Bytes per instruction.
const WORD: usize = 4;
/// The stack check is at the very start; looking further could match ordinary code.
const PROLOGUE_WINDOW: usize = 8;
/// `ldr x16, [x28, #16]`: loads `g.stackguard0` (`g` lives in R28).
const LOAD_STACKGUARD: u32 = 0xf940_0b90;
/// The register the guard is loaded into.
const GUARD_REGISTER: u32 = 16;
/// Register number 31 as a destination: the zero register, which makes `SUBS` a `CMP`.
const ZERO_REGISTER: u32 = 31;

/// Offset (from the function start) of the instruction after the stack-check branch;
/// `None` when the function has no stack check (NOSPLIT).
pub(super) fn stack_check_end(code: &[u8]) -> Option<u64> {
    let prologue: Vec<u32> = words(code).take(PROLOGUE_WINDOW).collect();
    let load = prologue.iter().position(|&word| word == LOAD_STACKGUARD)?;
    let after_load = prologue.get(load..)?;
    let pair = after_load.windows(2).position(
        |pair| matches!(pair, [compare, branch] if compares_guard(*compare) && is_bls(*branch)),
    )?;
    let next = load + pair + 2;
    u64::try_from(next * WORD).ok()
}

/// Offsets of every `RET` (any link register) in `code`.
pub(super) fn return_offsets(code: &[u8]) -> Vec<u64> {
    words(code)
        .zip((0u64..).step_by(WORD))
        .filter(|&(word, _)| is_ret(word))
        .map(|(_, offset)| offset)
        .collect()
}

/// The instruction words of `code`; a trailing partial word is not an instruction.
fn words(code: &[u8]) -> impl Iterator<Item = u32> + '_ {
    code.chunks_exact(WORD).map(|bytes| {
        let mut word = [0u8; WORD];
        word.copy_from_slice(bytes);
        u32::from_le_bytes(word)
    })
}

/// `CMP` (64-bit `SUBS` into the zero register, shifted- or extended-register form) with
/// the guard register as an operand.
fn compares_guard(word: u32) -> bool {
    let shifted = word & 0xff20_0000 == 0xeb00_0000;
    let extended = word & 0xffe0_0000 == 0xeb20_0000;
    let rd = word & 0x1f;
    let rn = (word >> 5) & 0x1f;
    let rm = (word >> 16) & 0x1f;
    (shifted || extended) && rd == ZERO_REGISTER && (rn == GUARD_REGISTER || rm == GUARD_REGISTER)
}

/// `B.LS` (conditional branch, condition 9 = unsigned lower or same).
fn is_bls(word: u32) -> bool {
    word & 0xff00_001f == 0x5400_0009
}

/// `RET Xn` (0xd65f03c0 is the usual `RET` through X30).
fn is_ret(word: u32) -> bool {
    word & 0xffff_fc1f == 0xd65f_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|word| word.to_le_bytes()).collect()
    }

    #[test]
    fn finds_the_end_of_small_and_big_frame_checks() {
        // As Go 1.24 emits for mapassign_fast64 and mapassign_faststr.
        let small = code(&[0xf9400b90, 0xeb3063ff, 0x54001a49, 0xf81c0ffe]);
        assert_eq!(stack_check_end(&small), Some(12));
        let big = code(&[0xf9400b90, 0xd10143f1, 0xeb10023f, 0x54002389, 0xf8130ffe]);
        assert_eq!(stack_check_end(&big), Some(16));
    }

    #[test]
    fn no_stack_check_means_none() {
        // The compare and branch without the guard load.
        assert_eq!(stack_check_end(&code(&[0xeb3063ff, 0x54001a49])), None);
        // The guard load followed by a B.EQ instead of B.LS.
        assert_eq!(
            stack_check_end(&code(&[0xf9400b90, 0xeb3063ff, 0x54001a40])),
            None
        );
        assert_eq!(stack_check_end(&[0x90, 0x0b, 0x40]), None);
    }

    #[test]
    fn finds_rets_and_ignores_partial_words() {
        let mut bytes = code(&[0xd503201f, 0xd65f03c0, 0xd4200000, 0xd65f0220]);
        bytes.extend([0xc0, 0x03, 0x5f]);
        assert_eq!(return_offsets(&bytes), vec![4, 12]);
    }
}
