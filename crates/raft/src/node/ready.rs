//! One Ready, in two halves around a write shared with the node's other groups.
//!
//! [`GroupNode::collect`] runs raft-rs's order up to the write: it takes the messages that may
//! go out before persisting, applies a snapshot from the leader and the committed entries,
//! notes leadership, and *stages* the new entries and hard state into a [`WriteBatch`] that
//! many groups share. The caller writes that batch once, with one `fdatasync`
//! ([`Store::write_batch`](crate::Store::write_batch)), then calls [`GroupNode::persisted`],
//! which installs the state the write led to and runs the rest of the order: messages that
//! had to wait for the write, read states, `advance_append`, the light ready's messages and
//! committed entries, and the snapshot policy. [`crate::host::pass`] does this for every
//! replica a node hosts; [`GroupNode::handle_ready`] for one.

use raft::eraftpb::{HardState, Snapshot, SnapshotMetadata};
use raft::{Ready, StateRole};

use super::{ApplyError, GroupNode, Leadership, Output, StateMachine};
use crate::error::{Error, Result};
use crate::storage::{Persist, Staged, WriteBatch};

/// A Ready whose writes are staged into a batch that is not yet durable: what
/// [`GroupNode::collect`] hands to [`GroupNode::persisted`].
#[derive(Debug)]
pub struct Collected {
    /// What the Ready produced before the write. Its `messages` may (and should) be sent
    /// before the batch is written: a leader's appends overlap the followers' writes with
    /// ours. Nothing in `results` depends on the write (committed entries are durable).
    pub out: Output,
    ready: Option<Ready>,
    staged: Staged,
}

impl<M: StateMachine> GroupNode<M> {
    /// The first half of a Ready, up to the write (see `node/ready.rs`): stages this
    /// replica's records into `batch`. Nothing may touch this replica until
    /// [`persisted`](Self::persisted) gets the result, after `batch` was written.
    pub fn collect(&mut self, batch: &mut WriteBatch) -> Result<Collected> {
        let mut out = Output::default();
        if std::mem::take(&mut self.retry_due) {
            self.resume(&mut out)?;
        }
        let ready = if self.raw.has_ready() {
            Some(self.ready_until_write(&mut out)?)
        } else {
            None
        };
        // Staging starts from the state the steps above left (a snapshot from the leader and
        // applied membership changes write on their own).
        let storage = self.raw.store();
        let mut staged = storage.begin();
        // 4 + 5. New entries and a changed hard state. A commit index the last light ready
        //    advanced rides along: it need not be durable before anything (raft learns the
        //    commit index from the leader again), only eventually, so that a restart does not
        //    re-apply from far back.
        let unsaved = self.unsaved_commit.take();
        let hard_state: Option<HardState> = match (ready.as_ref().and_then(Ready::hs), unsaved) {
            (Some(hs), _) => Some(hs.clone()),
            (None, Some(commit)) => {
                let mut hs = storage.hard_state();
                (commit > hs.commit).then(|| {
                    hs.commit = commit;
                    hs
                })
            }
            (None, None) => None,
        };
        storage.stage(
            &mut staged,
            Persist {
                snapshot: None,
                entries: ready.as_ref().map_or(&[], |ready| ready.entries()),
                hard_state: hard_state.as_ref(),
            },
            batch,
        )?;
        // A snapshot written in the background: the log moves to it.
        if let Some(meta) = self.compaction.take() {
            storage.stage_compaction(&mut staged, &meta, batch)?;
        }
        Ok(Collected { out, ready, staged })
    }

    /// Steps 1-3 of raft-rs's order and leadership, for a Ready there is.
    fn ready_until_write(&mut self, out: &mut Output) -> Result<Ready> {
        let mut ready = self.raw.ready();

        // Role and leader as of this Ready; handled after the committed entries so proposals
        // that did commit get their real result.
        let soft = ready.ss().map(|soft| (soft.raft_state, soft.leader_id));

        // 1. Messages that may be sent before persisting (a leader's appends and heartbeats):
        //    sending them now overlaps the followers' writes with ours.
        out.messages.extend(ready.take_messages());

        // 2. A snapshot from the leader: restore the state machine and persist the snapshot
        //    (it replaces the log) before applying anything after it. Rare (a replica far
        //    behind), so it writes on its own.
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.apply_snapshot(&snapshot, out)?;
        }

        // 3. Committed entries (already durable in the log): apply them in order.
        let committed = ready.take_committed_entries();
        self.apply_entries(committed, out)?;

        // Leadership: note role and leader changes; a leader that lost its role fails all its
        // pending proposals (they may still commit under the next leader; callers retry,
        // commands are idempotent).
        if let Some((role, leader)) = soft {
            self.note_leadership(role, leader, out);
        }
        Ok(ready)
    }

    /// The second half of a Ready, once the batch [`collect`](Self::collect) staged into is
    /// durable: returns everything the Ready produced that is not yet sent or answered.
    pub fn persisted(&mut self, collected: Collected) -> Result<Output> {
        let Collected {
            mut out,
            ready,
            staged,
        } = collected;
        let compacted = self.raw.mut_store().settle(staged)?;
        out.compacted |= compacted;
        if let Some(mut ready) = ready {
            // 6. Messages that must wait until the write is durable (votes, append responses).
            out.messages.extend(ready.take_persisted_messages());

            // Read states: the caller answers each once `applied` reaches its index.
            out.reads.extend(
                ready
                    .take_read_states()
                    .into_iter()
                    .map(|rs| (rs.request_ctx, rs.index)),
            );

            // 7. Advance, then handle the light ready: a commit index advanced by our own
            //    write (staged into the next batch), more messages and more committed entries.
            let mut light = self.raw.advance_append(ready);
            if let Some(commit) = light.commit_index() {
                self.unsaved_commit = Some(commit);
            }
            out.messages.extend(light.take_messages());
            self.apply_entries(light.take_committed_entries(), &mut out)?;
        }
        self.advance_apply();
        self.readd_removed(&mut out);
        self.finish_rejoin()?;

        // 8. Snapshot policy: hand out a snapshot to write in the background when one is due
        //    (see `snapshot.rs`).
        self.maybe_snapshot(&mut out);
        Ok(out)
    }

    /// Processes one Ready of this replica alone, in raft-rs's documented order, writing with
    /// its own `fdatasync` (blocking: call it off any async runtime), and writes a snapshot
    /// the policy asks for in place. A node hosting many replicas runs
    /// [`crate::host::pass`] over all of them instead (one write for all). An error (a failed
    /// write) leaves the node mid-Ready: drop it and restart it from its store.
    pub fn handle_ready(&mut self) -> Result<Output> {
        let mut outputs = crate::host::pass(&mut [self as &mut dyn crate::host::Replica])?;
        let (_, mut out) = outputs.pop().unwrap_or_default();
        if let Some(job) = out.snapshot.take() {
            let written = job.run();
            self.snapshot_written(written)?;
        }
        if std::mem::take(&mut out.compacted) {
            self.raw.store().store().purge()?;
        }
        Ok(out)
    }

    pub(super) fn note_leadership(&mut self, role: StateRole, leader: u64, out: &mut Output) {
        let now = Leadership {
            role,
            leader: (leader != 0).then_some(leader),
            term: self.raw.raft.term,
        };
        if now.role == self.leadership.role && now.leader == self.leadership.leader {
            return;
        }
        if self.leadership.role == StateRole::Leader && role != StateRole::Leader {
            let pending = std::mem::take(&mut self.pending);
            for p in pending.into_values() {
                out.results.push((
                    p.id,
                    Err(Error::NotLeader {
                        group: self.group,
                        leader: now.leader,
                    }),
                ));
            }
        }
        // Operators hear of a replica taking or losing leadership after its group had a leader
        // (a failover, a handover): a group's first election, followers learning of a new
        // leader, and the candidate steps in between are routine.
        let was_leader = self.leadership.role == StateRole::Leader;
        let news = self.leadership.leader.is_some()
            && now.leader.is_some()
            && (was_leader || role == StateRole::Leader);
        if news {
            tracing::info!(
                group = self.group,
                node = self.id,
                role = ?role,
                leader,
                term = now.term,
                "leadership changed"
            );
        } else {
            tracing::debug!(
                group = self.group,
                node = self.id,
                role = ?role,
                term = now.term,
                "leadership changed"
            );
        }
        self.leadership = now;
        out.leadership = Some(now);
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot, out: &mut Output) -> Result<()> {
        let meta: &SnapshotMetadata = snapshot.get_metadata();
        // A corrupt snapshot is refused before it replaces the log; one this replica cannot
        // hold now is stored all the same (it is the leader's, and valid) and restored later.
        let restored = match self.machine.restore(&snapshot.data) {
            Ok(()) => Ok(()),
            Err(ApplyError::Rejected(reason)) => {
                return Err(Error::SnapshotCorrupt {
                    path: self.raw.store().store().dir().join("snap"),
                    reason: format!("snapshot from the leader at index {}: {reason}", meta.index),
                })
            }
            Err(ApplyError::Stalled(reason)) => Err(reason),
        };
        // Our own snapshot in progress is older than the leader's: it must not move the log
        // back when it completes.
        self.compaction = None;
        self.raw.mut_store().persist(Persist {
            snapshot: Some(snapshot),
            ..Default::default()
        })?;
        self.snapshot_bytes = snapshot.data.len() as u64;
        match restored {
            Ok(()) => self.restored(meta.index, out),
            Err(reason) => {
                self.stall_at(reason, true);
                // Nothing at or below the snapshot will be applied from the log any more.
                self.fail_pending_to(meta.index, out);
            }
        }
        Ok(())
    }
}
