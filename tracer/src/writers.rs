//! Writer stacks: where in the program a map is written, for maps whose creation was not
//! seen (made before the trace), so that they can still be found in the source.
//!
//! The BPF side sends a stack with the first few writes of each map and then with a sparse
//! sample (`tracer_common::writers`). The model interns those stacks with the creation stacks
//! and keeps, per map, a short list of distinct writer stacks, each with the inserts and
//! deletes of the sampled operations that carried it: an operation's effect is only known at
//! the map's next count, so the pending operation holds its stack until then.
//!
//! Memory bound: at most [`MAX_PER_MAP`] writers per map (24 bytes each: 192 bytes, plus 32
//! bytes per map for the list and the pending stack), and writer stacks are only interned
//! while the stack table holds fewer than [`MAX_STACKS`] stacks (each at most 33 addresses,
//! so about 10 MiB with the interning index); later new writer stacks are not kept.

use crate::model::StackId;

/// Distinct writer stacks kept per map; later distinct stacks of that map are not listed.
pub const MAX_PER_MAP: usize = 8;

/// Size of the stack table beyond which new writer stacks are no longer interned.
pub const MAX_STACKS: usize = 16_384;

/// One writer stack of a map and what its sampled operations did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    /// The interned stack (see `Model::stacks`): the probed runtime instruction, then return
    /// addresses, the direct caller of the map function first.
    pub stack: StackId,
    /// Sampled assigns with this stack that added a key.
    pub inserts: u64,
    /// Sampled deletes with this stack that removed a key.
    pub deletes: u64,
}

/// The writer stacks of one map, in order of first sighting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writers {
    list: Vec<Writer>,
    /// The stack of the operation still waiting for the map's next count.
    pending: Option<StackId>,
}

impl Writers {
    /// The writers seen, in order of first sighting.
    pub fn list(&self) -> &[Writer] {
        &self.list
    }

    /// The map's next pending operation carries `stack` (or none): the writer is listed now,
    /// even if the operation turns out to change nothing (an overwrite, a missing key).
    pub(crate) fn start(&mut self, stack: Option<StackId>) {
        self.pending = stack;
        let Some(stack) = stack else {
            return;
        };
        if self.list.len() < MAX_PER_MAP && !self.list.iter().any(|w| w.stack == stack) {
            self.list.push(Writer {
                stack,
                inserts: 0,
                deletes: 0,
            });
        }
    }

    /// The pending operation resolved to `inserts` and `deletes` (0 or 1 each).
    pub(crate) fn resolve(&mut self, inserts: u64, deletes: u64) {
        let Some(stack) = self.pending.take() else {
            return;
        };
        if let Some(writer) = self.list.iter_mut().find(|w| w.stack == stack) {
            writer.inserts += inserts;
            writer.deletes += deletes;
        }
    }

    /// The pending operation's effect will never be known.
    pub(crate) fn abandon(&mut self) {
        self.pending = None;
    }

    /// The writer whose sampled operations changed the map most (inserts plus deletes), the
    /// earliest seen on a tie: where a person should look first.
    pub fn main(&self) -> Option<&Writer> {
        self.list
            .iter()
            .rev()
            .max_by_key(|w| w.inserts.saturating_add(w.deletes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_credit_the_stack_they_carried() {
        let mut writers = Writers::default();
        writers.start(Some(3));
        writers.resolve(1, 0);
        writers.start(None);
        writers.resolve(1, 0); // no stack: nobody is credited
        writers.start(Some(5));
        writers.resolve(0, 1);
        writers.start(Some(3));
        writers.resolve(1, 0);
        writers.start(Some(5));
        writers.abandon();
        writers.resolve(0, 1); // nothing pending any more
        let list = writers.list();
        assert_eq!(
            list,
            &[
                Writer {
                    stack: 3,
                    inserts: 2,
                    deletes: 0
                },
                Writer {
                    stack: 5,
                    inserts: 0,
                    deletes: 1
                }
            ]
        );
        assert_eq!(writers.main().map(|w| w.stack), Some(3));
    }

    #[test]
    fn the_list_is_bounded_and_ties_go_to_the_first() {
        let mut writers = Writers::default();
        for stack in 0..20 {
            writers.start(Some(stack));
            writers.resolve(0, 0);
        }
        assert_eq!(writers.list().len(), MAX_PER_MAP);
        assert_eq!(writers.main().map(|w| w.stack), Some(0));
        // A stack beyond the bound is not credited to anyone.
        writers.start(Some(19));
        writers.resolve(1, 0);
        assert!(writers.list().iter().all(|w| w.inserts == 0));
    }
}
