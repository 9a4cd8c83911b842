//! Snapshots off the Raft loop: the policy that decides when a replica snapshots, and the
//! [`SnapshotJob`] that writes one in the background.
//!
//! 1. [`GroupNode::persisted`] runs the policy. When a snapshot is due it takes the state
//!    machine's bytes ([`StateMachine::snapshot`], a copy of its state: for a shard, a memcpy
//!    of its filters, milliseconds for tens of MB) at its applied index,
//!    and hands out a [`SnapshotJob`] in [`Output::snapshot`]. One job per node is in flight
//!    at a time (it holds the store's [`SnapshotSlot`]; a replica whose snapshot is due while
//!    another's is written asks again at its next pass); the replica goes on applying
//!    meanwhile.
//! 2. The host runs the job on another thread ([`SnapshotJob::run`]): it encodes and
//!    checksums the snapshot and writes its file with `fsync` (the slow part: hundreds of ms
//!    for a large shard), without touching the log.
//! 3. The host reports back ([`GroupNode::snapshot_written`]); the replica stages the
//!    compaction (the log's snapshot metadata moves to the file, the entries it covers go)
//!    into its next write, and older snapshot files go once that write is durable
//!    ([`Output::compacted`]: the host then purges log files no group needs).
//!
//! A crash anywhere in between leaves the log pointing at the previous snapshot: the new file
//! is a stray that the next load removes.

use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::{GroupNode, Output, StateMachine};
use crate::error::Result;
use crate::storage::SnapshotSlot;
use crate::GroupId;

/// Log bytes an entry takes beyond its command: its index, term and proposal id, and its share
/// of a write's framing, hard state and sequence record (measured: single-key inserts, one
/// entry a write, took 200 bytes of log each on leader and follower for a 43-byte command).
/// Without it, tiny entries would fill five times the byte budget.
const ENTRY_LOG_OVERHEAD: u64 = 160;

/// A snapshot a replica took, to be written to its file off the Raft loop.
pub struct SnapshotJob {
    /// Released when the job is done or dropped.
    slot: SnapshotSlot,
    group: GroupId,
    snapshot: Snapshot,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("group", &self.group)
            .field("index", &self.snapshot.get_metadata().index)
            .field("bytes", &self.snapshot.data.len())
            .finish()
    }
}

impl SnapshotJob {
    /// The group whose snapshot this is.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Writes the snapshot's file, synced (blocking: run it off the Raft loop). Returns the
    /// metadata to hand to [`GroupNode::snapshot_written`].
    pub fn run(self) -> Result<SnapshotMetadata> {
        let store = self.slot.store();
        store.write_snapshot_file(self.group, &self.snapshot)?;
        Ok(self.snapshot.get_metadata().clone())
    }
}

impl<M: StateMachine> GroupNode<M> {
    /// The snapshot policy: a snapshot is due when a follower wants one newer than the stored
    /// one, or a new replica is being added while the log still starts at index 1, or by
    /// entries (`snapshot_entries`, once the log is `snapshot_log_ratio` times the
    /// last snapshot), or by bytes (the log reached its budget,
    /// `max(snapshot_log_ratio × last snapshot, snapshot_log_bytes)`); see
    /// [`NodeConfig`](super::NodeConfig). A due snapshot goes out as a job.
    pub(super) fn maybe_snapshot(&mut self, out: &mut Output) {
        if self.snapshotting || self.compaction.is_some() {
            return;
        }
        if self.stall.as_ref().is_some_and(|stall| stall.restore) {
            // The state machine is not at any index of this log.
            return;
        }
        let storage = self.raw.store();
        let snapshot_index = storage.snapshot_metadata().index;
        // Applied entries are committed; a commit index not yet durable is written with the
        // compaction (`stage_compaction`).
        let index = self.applied;
        let asked = storage.snapshot_wanted() && index > snapshot_index;
        if !asked {
            // Nothing newer to take than the stored snapshot: raft-rs asks again if need be.
            storage.take_snapshot_wanted();
        }
        let wanted = asked || (self.first_snapshot_due() && index > snapshot_index);
        // 0..=15 by group and node id, a different value for each of 16 groups on a node:
        // spreads the snapshots of a node's replicas (and of a group's) over the time their
        // logs take to fill. Keys are uniform hashes, so every shard's log grows at the same
        // rate: without it, every shard of a node would snapshot in the same moment (a wave
        // of whole-filter writes that stalls the disk the log syncs on).
        let spread = (self.group * 7 + self.id * 3) % 16;
        let entries = self.config.snapshot_entries.max(1);
        let ratio_bytes = self.config.snapshot_log_ratio * self.snapshot_bytes as f64;
        let by_entries = index >= snapshot_index + entries + entries * spread / 32
            && self.applied_bytes as f64 >= ratio_bytes;
        let budget = (ratio_bytes as u64).max(self.config.snapshot_log_bytes);
        let logged = self.applied_bytes + index.saturating_sub(snapshot_index) * ENTRY_LOG_OVERHEAD;
        let by_bytes = self.config.snapshot_log_bytes > 0
            && index > snapshot_index
            && logged >= budget - budget / 32 * spread;
        if !wanted && !by_entries && !by_bytes {
            return;
        }
        let Some(slot) = storage.store().snapshot_slot() else {
            // Another replica's snapshot is being written: this one is taken after it.
            return;
        };
        storage.take_snapshot_wanted();
        let data = self.machine.snapshot();
        let snapshot = storage.snapshot_at(index, data);
        self.applied_bytes = 0;
        self.snapshot_bytes = snapshot.data.len() as u64;
        self.snapshotting = true;
        tracing::debug!(
            group = self.group,
            node = self.id,
            index,
            logged,
            budget,
            by_bytes,
            "snapshot taken; writing it in the background"
        );
        out.snapshot = Some(SnapshotJob {
            slot,
            group: self.group,
            snapshot,
        });
    }

    /// On a leader whose log still starts at index 1 (it never compacted): a replica is being
    /// added (a learner, or a member missing from the configuration). A new replica can only
    /// learn the group's membership from a snapshot (the group was bootstrapped without
    /// entries), and raft-rs sends one only for entries compacted away: so the leader
    /// compacts now (once in the group's life: its log never starts at 1 again).
    fn first_snapshot_due(&self) -> bool {
        let raft = &self.raw.raft;
        let storage = self.raw.store();
        if raft.state != raft::StateRole::Leader || storage.first_index() > 1 {
            return false;
        }
        let conf = raft.prs().conf();
        !conf.learners().is_empty() || self.members.iter().any(|&id| !conf.voters().contains(id))
    }

    /// The host wrote the file of this replica's snapshot job (or failed to: the error stops
    /// the replica, like any failed write). The log is compacted to it in the next write.
    pub fn snapshot_written(&mut self, written: Result<SnapshotMetadata>) -> Result<()> {
        self.snapshotting = false;
        let meta = written?;
        if meta.index > self.raw.store().snapshot_metadata().index {
            self.compaction = Some(meta);
        }
        Ok(())
    }
}
