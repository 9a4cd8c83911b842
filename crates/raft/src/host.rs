//! One pass over every replica a node hosts: collect their Readies, write once, finish them.
//!
//! This is the synchronous heart of the node's Raft loop ([`crate::poller`]) and of the
//! simulation: both call [`pass`], so the simulation tests the very code that runs. A pass
//!
//! 1. collects every replica that has a Ready ([`GroupNode::collect`]): its messages that may
//!    go out before persisting, the results of applied entries, and its new entries and hard
//!    state staged into one shared [`WriteBatch`];
//! 2. writes that batch with one `fdatasync` ([`Store::write_batch`]): the fsyncs a node
//!    does per second do not grow with the replicas it hosts;
//! 3. finishes every collected replica ([`GroupNode::persisted`]), which yields the messages
//!    that had to wait for the write, read states, and what the light ready applied.
//!
//! Messages are returned, not sent: the caller sends each replica's early messages before the
//! write ([`Collected::out`]) only if it can do so without blocking, which the poller can and
//! the simulation does by returning them together.

use crate::error::Result;
use crate::node::{Collected, GroupNode, Output, StateMachine};
use crate::storage::{Store, WriteBatch};
use crate::GroupId;

/// A replica as a pass sees it: [`GroupNode`] of any state machine.
pub trait Replica {
    /// The replica's group.
    fn group(&self) -> GroupId;
    /// Whether the replica has anything for a pass to do.
    fn has_ready(&self) -> bool;
    /// The store the replica writes to (the same for every replica of a node).
    fn store(&self) -> &std::sync::Arc<Store>;
    /// See [`GroupNode::collect`].
    fn collect(&mut self, batch: &mut WriteBatch) -> Result<Collected>;
    /// See [`GroupNode::persisted`].
    fn persisted(&mut self, collected: Collected) -> Result<Output>;
}

impl<M: StateMachine> Replica for GroupNode<M> {
    fn group(&self) -> GroupId {
        GroupNode::group(self)
    }

    fn has_ready(&self) -> bool {
        GroupNode::has_ready(self)
    }

    fn store(&self) -> &std::sync::Arc<Store> {
        self.storage().store()
    }

    fn collect(&mut self, batch: &mut WriteBatch) -> Result<Collected> {
        GroupNode::collect(self, batch)
    }

    fn persisted(&mut self, collected: Collected) -> Result<Output> {
        GroupNode::persisted(self, collected)
    }
}

/// Runs one pass over `replicas` (see the [module docs](self)) and returns, per replica that
/// had a Ready, everything it produced, in `replicas` order: messages to send, results,
/// reads, leadership, a snapshot job. `before_write` gets each replica's early messages
/// (taken out of its output) before the write; pass a no-op to keep them in the output. An
/// error is a failed write: every replica in the pass is mid-Ready and must be dropped and
/// restarted from the store.
pub fn pass_with(
    replicas: &mut [&mut dyn Replica],
    mut before_write: impl FnMut(GroupId, &mut Output),
) -> Result<Vec<(GroupId, Output)>> {
    let mut batch = WriteBatch::default();
    let mut collected = Vec::new();
    for (at, replica) in replicas.iter_mut().enumerate() {
        if !replica.has_ready() {
            continue;
        }
        let mut ready = replica.collect(&mut batch)?;
        before_write(replica.group(), &mut ready.out);
        collected.push((at, ready));
    }
    if let Some(&(first, _)) = collected.first() {
        replicas[first].store().write_batch(&mut batch)?;
    }
    let mut outputs = Vec::with_capacity(collected.len());
    for (at, ready) in collected {
        let replica = &mut replicas[at];
        outputs.push((replica.group(), replica.persisted(ready)?));
    }
    Ok(outputs)
}

/// [`pass_with`], keeping every message in the outputs.
pub fn pass(replicas: &mut [&mut dyn Replica]) -> Result<Vec<(GroupId, Output)>> {
    pass_with(replicas, |_, _| {})
}
