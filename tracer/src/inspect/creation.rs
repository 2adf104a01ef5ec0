//! A cheap, exact place to learn a new map's address.
//!
//! The address only exists once `makemap*` has allocated the header, and the obvious place
//! to read it, the function's `RET`, is an instruction the kernel must single-step: about
//! 14 µs per hit on this project's VM, which a program creating a map per request pays in
//! full. From Go 1.22 on, every map constructor draws the map's hash seed with a call:
//! ```text
//! CALL runtime.newobject          ; AX = the new header
//! MOVQ AX, CX
//! MOVQ CX, 0x28(SP)               ; spilled across the next call
//! CALL runtime.rand               ; <- probe here: the kernel emulates CALL
//! MOVQ 0x28(SP), CX               ; reloaded from the same slot ...
//! MOVL AX, 0xc(CX)                ; ... to store the seed into the header
//! ```
//! Go's ABI keeps no register across a call, so the header lives in a stack slot during
//! the seed call, and the code right after it names that slot. A probe on the `CALL`
//! (emulated by the kernel, like the `PUSHQ BP` after the stack check) reads the slot at
//! `SP + displacement`. Only this exact shape is accepted; anything else leaves the function
//! to RET probes.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, Register};

use super::{Arch, Function, GoBinary, InspectError};

/// Instructions after the seed call within which the header is reloaded and the seed stored.
const RELOAD_WINDOW: usize = 4;

/// A `CALL` of the seed generator inside a map constructor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedCall {
    /// File offset of the `CALL` instruction, where the uprobe goes.
    pub file_offset: u64,
    /// The header's stack slot at that instruction, as a displacement from `SP`.
    pub header_slot: u32,
}

impl GoBinary {
    /// Every call from `constructor` to one of `seed_functions` (addresses as linked) after
    /// which the returned seed is stored at `seed_offset` into a header reloaded from a stack
    /// slot. Empty when the code has another shape (Go ≤ 1.21 inlines `fastrand`) or on
    /// arm64, whose callers fall back to RET probes.
    pub fn seed_calls(
        &self,
        constructor: &Function,
        seed_functions: &[u64],
        seed_offset: u64,
    ) -> Result<Vec<SeedCall>, InspectError> {
        if self.tables.arch != Arch::Amd64 {
            return Ok(Vec::new());
        }
        let (code, start) = self.code(constructor)?;
        let instructions: Vec<Instruction> =
            Decoder::with_ip(64, code, constructor.vaddr, DecoderOptions::NONE)
                .iter()
                .take_while(|instruction| !instruction.is_invalid())
                .collect();
        Ok(instructions
            .iter()
            .enumerate()
            .filter(|(_, call)| {
                call.mnemonic() == Mnemonic::Call
                    && seed_functions.contains(&call.near_branch_target())
            })
            .filter_map(|(index, call)| {
                let after = instructions.get(index + 1..)?;
                let header_slot = reloaded_header_slot(after, seed_offset)?;
                Some(SeedCall {
                    file_offset: start + (call.ip() - constructor.vaddr),
                    header_slot,
                })
            })
            .collect())
    }
}

/// The `SP` displacement of `MOVQ disp(SP), R` followed by a store of the call's result
/// (`AX`/`EAX`) to `seed_offset(R)`, looking only a few instructions ahead.
fn reloaded_header_slot(after_call: &[Instruction], seed_offset: u64) -> Option<u32> {
    let window = &after_call[..after_call.len().min(RELOAD_WINDOW)];
    window.windows(2).find_map(|pair| {
        let [load, store] = pair else { return None };
        let header = load.op0_register();
        let loads_slot = load.code() == Code::Mov_r64_rm64
            && load.memory_base() == Register::RSP
            && load.memory_index() == Register::None;
        let stores_seed = matches!(store.code(), Code::Mov_rm32_r32 | Code::Mov_rm64_r64)
            && matches!(store.op1_register(), Register::EAX | Register::RAX)
            && store.memory_base() == header
            && store.memory_index() == Register::None
            && store.memory_displacement64() == seed_offset;
        (loads_slot && stores_seed)
            .then(|| u32::try_from(load.memory_displacement64()).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(code: &[u8]) -> Vec<Instruction> {
        Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    /// What Go 1.22 emits after `CALL runtime.rand` in `makemap`:
    /// `MOVQ 0x28(SP), CX; MOVL AX, 0xc(CX); MOVQ 0x18(SP), AX`.
    const CLASSIC_RELOAD: &[u8] = &[
        0x48, 0x8b, 0x4c, 0x24, 0x28, 0x89, 0x41, 0x0c, 0x48, 0x8b, 0x44, 0x24, 0x18,
    ];
    /// Go 1.24 `NewMap`: `MOVQ 0x40(SP), CX; MOVQ AX, 0x8(CX)`.
    const SWISS_RELOAD: &[u8] = &[0x48, 0x8b, 0x4c, 0x24, 0x40, 0x48, 0x89, 0x41, 0x08];

    #[test]
    fn finds_the_slot_the_header_is_reloaded_from() {
        assert_eq!(
            reloaded_header_slot(&decode(CLASSIC_RELOAD), 12),
            Some(0x28)
        );
        assert_eq!(reloaded_header_slot(&decode(SWISS_RELOAD), 8), Some(0x40));
    }

    #[test]
    fn rejects_other_shapes() {
        // The seed stored at another offset: not this implementation's header.
        assert_eq!(reloaded_header_slot(&decode(CLASSIC_RELOAD), 8), None);
        // `MOVQ 0x28(SP), CX; MOVL BX, 0xc(CX)`: not the call's result.
        let other_source = [0x48, 0x8b, 0x4c, 0x24, 0x28, 0x89, 0x59, 0x0c];
        assert_eq!(reloaded_header_slot(&decode(&other_source), 12), None);
        // `MOVQ 0x28(BP), CX; MOVL AX, 0xc(CX)`: not a stack-pointer slot.
        let frame_slot = [0x48, 0x8b, 0x4d, 0x28, 0x89, 0x41, 0x0c];
        assert_eq!(reloaded_header_slot(&decode(&frame_slot), 12), None);
        assert_eq!(reloaded_header_slot(&[], 12), None);
    }
}
