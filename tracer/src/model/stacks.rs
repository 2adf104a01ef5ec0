//! Call stacks, interned: creation and writer stacks are stored once and named by a
//! [`StackId`], with each creation stack's totals.

use crate::writers;

use super::Model;

/// Interned creation stack: an index into [`Model::stacks`].
pub type StackId = u32;

/// Per-stack totals that outlive the released maps they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// Maps created with this stack.
    pub created: u64,
    /// Of those, known released.
    pub released: u64,
}

impl Model {
    pub(super) fn intern(&mut self, stack: Vec<u64>) -> StackId {
        if let Some(&id) = self.stack_ids.get(&stack) {
            return id;
        }
        let id = self.stacks.len() as StackId;
        self.stacks.push(stack.clone());
        self.stack_ids.insert(stack, id);
        id
    }

    /// Interns a writer stack unless the table is full (see [`writers::MAX_STACKS`]).
    pub(super) fn intern_writer(&mut self, stack: Vec<u64>) -> Option<StackId> {
        match self.stack_ids.get(&stack) {
            Some(&id) => Some(id),
            None => (self.stacks.len() < writers::MAX_STACKS).then(|| self.intern(stack)),
        }
    }

    /// Interned creation stacks, indexed by [`StackId`]: the probed instruction, then return
    /// addresses, as runtime addresses in the target.
    pub fn stacks(&self) -> &[Vec<u64>] {
        &self.stacks
    }

    /// Creation and release totals per stack, including maps no longer listed.
    pub fn stack_totals(&self, stack: StackId) -> StackTotals {
        self.stack_totals.get(&stack).copied().unwrap_or_default()
    }
}
