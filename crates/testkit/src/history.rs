//! Invariant checkers the seeded simulations share: what they record of a run, and the checks
//! on it that do not depend on the state machine.
//!
//! - [`AppliedStates`]: replicas at equal applied index hold byte-identical state.
//! - [`Reads`]: linearizable reads (ReadIndex) from asked to answerable: asked on a node,
//!   answered by that node with a read index, checkable once the node applied it.
//!
//! Replicas are named by their node id (`u64`, as raft-rs names them).

use std::collections::BTreeMap;
use std::fmt;

/// The first state seen at each applied index, to which every replica reaching that index must
/// be byte-identical.
#[derive(Debug, Default)]
pub struct AppliedStates {
    /// Per applied index, the state first observed there.
    first: BTreeMap<u64, Vec<u8>>,
    /// Per node, the applied index at which it was last compared.
    compared: BTreeMap<u64, u64>,
}

/// Two replicas at one applied index with different states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverged {
    /// The node whose state differs from the first seen at `applied`.
    pub node: u64,
    /// The applied index.
    pub applied: u64,
}

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} diverged at applied index {}",
            self.node, self.applied
        )
    }
}

impl std::error::Error for Diverged {}

impl AppliedStates {
    /// Compares `node`'s state at applied index `applied` with the first state seen there,
    /// unless it was compared at that index already (then `state` is not called). Returns
    /// whether it was compared now: a caller's own checks of a new state go there too.
    pub fn compare(
        &mut self,
        node: u64,
        applied: u64,
        state: impl FnOnce() -> Vec<u8>,
    ) -> Result<bool, Diverged> {
        if self.compared.insert(node, applied) == Some(applied) {
            return Ok(false);
        }
        let state = state();
        let first = self.first.entry(applied).or_insert_with(|| state.clone());
        if *first != state {
            return Err(Diverged { node, applied });
        }
        Ok(true)
    }

    /// Forgets where `node` was compared: it is compared again at its next applied index, even
    /// the same one (a replica that let go of its state meanwhile).
    pub fn forget(&mut self, node: u64) {
        self.compared.remove(&node);
    }
}

/// Linearizable reads in flight: each asked on a node with a context (a number, sent as 8
/// big-endian bytes), answered there with a read index, and checkable once that node has
/// applied the index. `T` is what the checker needs to know of each read (what was
/// acknowledged when it was asked, when it was asked).
#[derive(Debug)]
pub struct Reads<T> {
    next: u64,
    asked: BTreeMap<u64, Read<T>>,
}

#[derive(Debug)]
struct Read<T> {
    node: u64,
    index: Option<u64>,
    asked: T,
}

/// A read whose node has applied its read index: what it saw may now be checked.
#[derive(Debug)]
pub struct Answerable<T> {
    /// Its context.
    pub context: u64,
    /// The node it was asked on.
    pub node: u64,
    /// What was recorded when it was asked.
    pub asked: T,
}

impl<T> Default for Reads<T> {
    fn default() -> Reads<T> {
        Reads {
            next: 0,
            asked: BTreeMap::new(),
        }
    }
}

impl<T> Reads<T> {
    /// The context of the next read, to pass to the node's `read_index`; [`asked`](Self::asked)
    /// records it once the node took it.
    pub fn next_context(&mut self) -> Vec<u8> {
        let context = self.next;
        self.next += 1;
        context.to_be_bytes().to_vec()
    }

    /// Records that the read with `context` was asked on `node`, with what the checker needs.
    pub fn asked(&mut self, context: &[u8], node: u64, asked: T) {
        let context = decode(context).expect("a context from next_context");
        let read = Read {
            node,
            index: None,
            asked,
        };
        self.asked.insert(context, read);
    }

    /// Records `node`'s answer to the read with `context`: its read index. The first answer
    /// counts (a duplicated message may answer twice); an answer from another node than the
    /// one asked is an error.
    pub fn answered(&mut self, node: u64, context: &[u8], index: u64) -> Result<(), String> {
        let context = decode(context).ok_or_else(|| format!("a read context {context:?}"))?;
        let Some(read) = self.asked.get_mut(&context) else {
            return Ok(());
        };
        if read.node != node {
            return Err(format!(
                "read {context} asked on node {} answered by node {node}",
                read.node
            ));
        }
        read.index.get_or_insert(index);
        Ok(())
    }

    /// Takes the reads whose node has applied their read index (`applied` gives a node's
    /// applied index, `None` while it is down), in the order they were asked.
    pub fn answerable(&mut self, applied: impl Fn(u64) -> Option<u64>) -> Vec<Answerable<T>> {
        let ready: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, read)| {
                read.index
                    .is_some_and(|index| applied(read.node).is_some_and(|a| a >= index))
            })
            .map(|(&context, _)| context)
            .collect();
        ready
            .into_iter()
            .map(|context| {
                let read = self.asked.remove(&context).expect("listed just now");
                Answerable {
                    context,
                    node: read.node,
                    asked: read.asked,
                }
            })
            .collect()
    }
}

fn decode(context: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(context.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_applied_index_means_equal_state() {
        let mut states = AppliedStates::default();
        assert_eq!(states.compare(1, 5, || b"abc".to_vec()), Ok(true));
        assert_eq!(states.compare(2, 5, || b"abc".to_vec()), Ok(true));
        // Unchanged since it was compared: not looked at again.
        assert_eq!(states.compare(2, 5, || unreachable!()), Ok(false));
        assert_eq!(
            states.compare(3, 5, || b"abd".to_vec()),
            Err(Diverged {
                node: 3,
                applied: 5
            })
        );
        assert_eq!(states.compare(3, 6, || b"abcd".to_vec()), Ok(true));
        states.forget(2);
        assert_eq!(states.compare(2, 5, || b"abc".to_vec()), Ok(true));
        assert_eq!(
            Diverged {
                node: 3,
                applied: 5
            }
            .to_string(),
            "node 3 diverged at applied index 5"
        );
    }

    #[test]
    fn reads_become_answerable_once_their_node_applied_the_read_index() {
        let mut reads = Reads::default();
        let first = reads.next_context();
        let second = reads.next_context();
        reads.asked(&first, 1, "first");
        reads.asked(&second, 2, "second");
        reads.answered(1, &first, 10).unwrap();
        // A duplicate answer does not move the index; an unknown read is ignored.
        reads.answered(1, &first, 20).unwrap();
        reads.answered(1, &99u64.to_be_bytes(), 1).unwrap();
        assert!(reads.answered(3, &second, 4).is_err());
        reads.answered(2, &second, 4).unwrap();

        let applied = |node| match node {
            1 => Some(10),
            _ => None,
        };
        let ready = reads.answerable(applied);
        assert_eq!(ready.len(), 1);
        assert_eq!(
            (ready[0].context, ready[0].node, ready[0].asked),
            (0, 1, "first")
        );
        assert!(reads.answerable(applied).is_empty());
        let ready = reads.answerable(|_| Some(4));
        assert_eq!(ready[0].asked, "second");
    }
}
