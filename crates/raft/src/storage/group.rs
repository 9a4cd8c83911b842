//! [`GroupStorage`]: one group's durable log, hard state, conf state and snapshot, as raft-rs
//! reads them through [`raft::Storage`] and as a Ready persists them ([`Persist`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, LogBatch};

use super::records::{RaftEntries, CONF_STATE_KEY, HARD_STATE_KEY, SNAPSHOT_KEY};
use super::recovery::LOAD_CHUNK;
use super::terms::TermRuns;
use super::{Store, WriteBatch};
use crate::error::Result;
use crate::GroupId;

/// One group's state as the store holds it, with the log's terms in memory.
#[derive(Debug, Clone)]
pub(super) struct GroupState {
    /// Term, vote and commit index.
    pub(super) hard_state: HardState,
    /// Voters and learners.
    pub(super) conf_state: ConfState,
    /// The newest snapshot's metadata (index 0 if none): the log starts after it.
    pub(super) snapshot: SnapshotMetadata,
    /// The terms of the entries in the log.
    pub(super) terms: TermRuns,
    /// The rejoin mark (see [`GroupStorage::rejoin`]).
    pub(super) rejoin: Option<u64>,
}

impl GroupState {
    pub(super) fn first_index(&self) -> u64 {
        if self.terms.is_empty() {
            self.snapshot.index + 1
        } else {
            self.terms.first
        }
    }

    pub(super) fn last_index(&self) -> u64 {
        if self.terms.is_empty() {
            self.snapshot.index
        } else {
            self.terms.last
        }
    }

    pub(super) fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.terms.term(index)
    }
}

/// What one Ready asks to persist, written as one synced batch.
#[derive(Debug, Default)]
pub struct Persist<'a> {
    /// A snapshot received from the leader (replaces the whole log).
    pub snapshot: Option<&'a Snapshot>,
    /// New entries (may overwrite a conflicting suffix).
    pub entries: &'a [Entry],
    /// A changed hard state.
    pub hard_state: Option<&'a HardState>,
}

/// A group's state after the writes staged for it into a [`WriteBatch`], installed by
/// [`GroupStorage::settle`] once the batch is durable.
#[derive(Debug)]
pub struct Staged {
    next: GroupState,
    /// The snapshot the staged metadata points at, if it moved: older files go after the write.
    keep_snapshot: Option<u64>,
}

/// One group's durable log, hard state, conf state and snapshot; implements
/// [`raft::Storage`]. Cheap to clone (clones share state).
#[derive(Debug, Clone)]
pub struct GroupStorage {
    pub(super) store: Arc<Store>,
    pub(super) group: GroupId,
    pub(super) state: Arc<RwLock<GroupState>>,
    /// Set when raft-rs asked for a snapshot the stored one cannot serve (see
    /// [`take_snapshot_wanted`](GroupStorage::take_snapshot_wanted)).
    snapshot_wanted: Arc<AtomicBool>,
}

fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.into()))
}

impl GroupStorage {
    /// The storage of group `group` in `store`, whose state was just loaded.
    pub(super) fn new(store: Arc<Store>, group: GroupId, state: GroupState) -> GroupStorage {
        GroupStorage {
            store,
            group,
            state: Arc::new(RwLock::new(state)),
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The group's id.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The store this group lives in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, GroupState> {
        self.state.read().expect("group state lock poisoned")
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    /// The persisted conf state.
    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }

    /// Metadata of the newest snapshot (index 0 if none).
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.read().snapshot.clone()
    }

    /// Whether the group has no state at all (never bootstrapped nor reached by a leader).
    pub fn is_empty(&self) -> bool {
        let state = self.read();
        state.terms.is_empty()
            && state.snapshot.index == 0
            && state.conf_state.voters.is_empty()
            && state.hard_state.term == 0
    }

    /// Index of the first entry still in the log.
    pub fn first_index(&self) -> u64 {
        self.read().first_index()
    }

    /// Whether raft-rs asked for a snapshot to send that the stored one cannot serve: it
    /// predates a membership change that added the receiver (raft-rs refuses to restore a
    /// snapshot whose members leave it out), or is older than asked. The owner should take a
    /// fresh snapshot now rather than at its usual interval. Resets the flag.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Whether [`take_snapshot_wanted`](Self::take_snapshot_wanted) would return true.
    pub fn snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.load(Ordering::Relaxed)
    }
    /// Index of the last entry (the snapshot's index when the log is empty).
    pub fn last_index(&self) -> u64 {
        self.read().last_index()
    }

    /// Records the initial membership of a new group (index 0, before any entry).
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<()> {
        let mut batch = LogBatch::default();
        batch.put_message(self.group, CONF_STATE_KEY.to_vec(), &conf_state)?;
        self.store.write(self.group, &mut batch)?;
        self.state
            .write()
            .expect("group state lock poisoned")
            .conf_state = conf_state;
        Ok(())
    }

    /// Persists what a Ready asks for in one synced write of its own: snapshot metadata (its
    /// data goes to a snapshot file first), entries and hard state. A node hosting many groups
    /// stages them all into one [`WriteBatch`] instead ([`stage`](Self::stage)).
    pub fn persist(&mut self, persist: Persist<'_>) -> Result<()> {
        if persist.snapshot.is_none() && persist.entries.is_empty() && persist.hard_state.is_none()
        {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut staged = self.begin();
        self.stage(&mut staged, persist, &mut batch)?;
        self.store.write(self.group, &mut batch.0)?;
        self.settle(staged).map(drop)
    }

    /// Starts staging writes of this group into a batch: the state they lead to begins as the
    /// current one. Stage, write the batch, then [`settle`](Self::settle); nothing else may
    /// change the group's state in between.
    pub fn begin(&self) -> Staged {
        Staged {
            next: self.read().clone(),
            keep_snapshot: None,
        }
    }

    /// Adds what a Ready asks to persist to `batch`, and its effect to `staged`. A snapshot
    /// from the leader has its file written (and synced) here, before the metadata that will
    /// point at it.
    pub fn stage(
        &self,
        staged: &mut Staged,
        persist: Persist<'_>,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let next = &mut staged.next;
        let batch = &mut batch.0;
        if let Some(snapshot) = persist.snapshot {
            // The file first: the metadata must never point at a snapshot that is not there.
            self.store.snapshots.write(self.group, snapshot)?;
            let meta = snapshot.get_metadata();
            // A received snapshot replaces the whole log.
            let clear_to = next.last_index().max(meta.index) + 1;
            batch.add_command(self.group, Command::Compact { index: clear_to });
            batch.put_message(self.group, SNAPSHOT_KEY.to_vec(), meta)?;
            batch.put_message(self.group, CONF_STATE_KEY.to_vec(), meta.get_conf_state())?;
            next.terms = TermRuns::default();
            next.snapshot = meta.clone();
            next.conf_state = meta.get_conf_state().clone();
            if next.hard_state.commit < meta.index {
                next.hard_state.commit = meta.index;
                next.hard_state.term = next.hard_state.term.max(meta.term);
                batch.put_message(self.group, HARD_STATE_KEY.to_vec(), &next.hard_state)?;
            }
            staged.keep_snapshot = Some(meta.index);
        }
        if let Some(first) = persist.entries.first() {
            let first_index = next.first_index();
            assert!(
                first.index >= first_index && first.index <= next.last_index() + 1,
                "group {}: entries from {} do not fit the log [{first_index}, {}]",
                self.group,
                first.index,
                next.last_index()
            );
            batch.add_entries::<RaftEntries>(self.group, persist.entries)?;
            next.terms.truncate(first.index);
            for e in persist.entries {
                next.terms.push(e.index, e.term);
            }
        }
        if let Some(hs) = persist.hard_state {
            batch.put_message(self.group, HARD_STATE_KEY.to_vec(), hs)?;
            next.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Adds to `batch` the compaction of the log up to a snapshot this replica took and whose
    /// file is already durable ([`Store::write_snapshot_file`]): the log's metadata moves to
    /// it and the entries it covers go. Its index must be applied (so committed) and in the
    /// log; a commit index below it is raised with it. Does nothing for a snapshot no newer
    /// than the stored one.
    pub fn stage_compaction(
        &self,
        staged: &mut Staged,
        meta: &SnapshotMetadata,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let next = &mut staged.next;
        if meta.index <= next.snapshot.index {
            return Ok(());
        }
        let batch = &mut batch.0;
        if meta.index > next.hard_state.commit {
            // The snapshot holds applied (so committed) entries whose commit index is not
            // durable yet: a restart must not start below the snapshot.
            next.hard_state.commit = meta.index;
            batch.put_message(self.group, HARD_STATE_KEY.to_vec(), &next.hard_state)?;
        }
        batch.put_message(self.group, SNAPSHOT_KEY.to_vec(), meta)?;
        batch.add_command(
            self.group,
            Command::Compact {
                index: meta.index + 1,
            },
        );
        next.snapshot = meta.clone();
        next.terms.compact(meta.index + 1);
        staged.keep_snapshot = Some(meta.index);
        Ok(())
    }

    /// Installs the state a written batch led to, and removes snapshot files older than the
    /// one the log now points at (a newer one's metadata is durable now). Returns whether the
    /// log moved to a newer snapshot (so old log files may be purged).
    pub fn settle(&mut self, staged: Staged) -> Result<bool> {
        *self.state.write().expect("group state lock poisoned") = staged.next;
        if let Some(keep) = staged.keep_snapshot {
            // A request for a fresher snapshot made while this one was written is served by
            // this one or asked again.
            self.snapshot_wanted.store(false, Ordering::Relaxed);
            self.store.snapshots.remove(self.group, Some(keep))?;
        }
        Ok(staged.keep_snapshot.is_some())
    }

    /// Appends entries (a [`persist`](Self::persist) with entries only).
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.persist(Persist {
            entries,
            ..Default::default()
        })
    }

    /// Persists a hard state (a [`persist`](Self::persist) with the hard state only).
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        self.persist(Persist {
            hard_state: Some(hard_state),
            ..Default::default()
        })
    }

    /// Records a conf state that was applied from a committed conf change.
    pub fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()> {
        let mut batch = LogBatch::default();
        batch.put_message(self.group, CONF_STATE_KEY.to_vec(), conf_state)?;
        self.store.write(self.group, &mut batch)?;
        self.state
            .write()
            .expect("group state lock poisoned")
            .conf_state = conf_state.clone();
        Ok(())
    }

    /// Stores a snapshot the local state machine took at applied index `index` with `data`,
    /// then drops log entries up to `index`, all at once (a node takes snapshots in the
    /// background instead: [`snapshot_at`](Self::snapshot_at), then
    /// [`stage_compaction`](Self::stage_compaction) once its file is written). `index` must be
    /// applied (so committed) and in the log.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<()> {
        if index <= self.read().snapshot.index {
            return Ok(());
        }
        let snapshot = self.snapshot_at(index, data);
        self.store.write_snapshot_file(self.group, &snapshot)?;
        let mut batch = WriteBatch::default();
        let mut staged = self.begin();
        self.stage_compaction(&mut staged, snapshot.get_metadata(), &mut batch)?;
        self.store.write(self.group, &mut batch.0)?;
        self.settle(staged).map(drop)
    }

    /// A snapshot of this group at `index` (applied, so committed, and in the log) holding the
    /// state machine's `data`, with the metadata the log will record for it.
    pub fn snapshot_at(&self, index: u64, data: Vec<u8>) -> Snapshot {
        let state = self.read();
        let term = state
            .term(index)
            .unwrap_or_else(|| panic!("group {}: snapshot at {index} outside the log", self.group));
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(state.conf_state.clone());
        snapshot
    }

    /// The newest snapshot with its data, verified against its checksum.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>> {
        let meta = self.read().snapshot.clone();
        if meta.index == 0 {
            return Ok(None);
        }
        self.store.snapshots.read(self.group, &meta).map(Some)
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.read();
        Ok(RaftState::new(
            state.hard_state.clone(),
            state.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let (first, last) = {
            let state = self.read();
            (state.first_index(), state.last_index())
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= last + 1,
            "group {}: entries up to {high} requested, last is {last}",
            self.group
        );
        let mut entries = Vec::with_capacity((high - low).min(LOAD_CHUNK) as usize);
        if low == high {
            return Ok(entries);
        }
        let _shared = self.store.purge_lock.read().expect("purge lock poisoned");
        let limit = max_size.map(|m| m.max(1) as usize);
        let engine = &self.store.engine;
        self.store.cache.read(|| {
            engine
                .fetch_entries_to::<RaftEntries>(self.group, low, high, limit, &mut entries)
                .map_err(other)?;
            if entries.is_empty() {
                // raft-rs needs at least one entry even when the first exceeds `max_size`.
                engine
                    .fetch_entries_to::<RaftEntries>(self.group, low, low + 1, None, &mut entries)
                    .map_err(other)?;
            }
            Ok(entries)
        })
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let state = self.read();
        if let Some(term) = state.term(idx) {
            return Ok(term);
        }
        if idx < state.first_index() {
            Err(raft::Error::Store(StorageError::Compacted))
        } else {
            Err(raft::Error::Store(StorageError::Unavailable))
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.read().snapshot.clone();
        let conf = meta.get_conf_state();
        let includes_to = conf.voters.contains(&to) || conf.learners.contains(&to);
        if meta.index < request_index || meta.index == 0 || !includes_to {
            // The node takes a fresher one at its next Ready; raft-rs asks again.
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        match self.store.snapshots.read(self.group, &meta) {
            Ok(snapshot) => Ok(snapshot),
            Err(e) => {
                tracing::error!(group = self.group, error = %e, "cannot send snapshot");
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;
    use crate::storage::testing::{all, conf, entries, hard_state};

    #[test]
    fn append_fetch_term_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(1).unwrap();
        assert!(g.is_empty());
        assert_eq!((g.first_index(), g.last_index()), (1, 0));
        g.append(&entries(1..=10, 1)).unwrap();
        g.append(&entries(11..=20, 2)).unwrap();
        assert_eq!((g.first_index(), g.last_index()), (1, 20));
        assert_eq!(all(&g), [entries(1..=10, 1), entries(11..=20, 2)].concat());
        assert_eq!(g.term(0).unwrap(), 0);
        assert_eq!(g.term(10).unwrap(), 1);
        assert_eq!(g.term(11).unwrap(), 2);
        assert!(matches!(
            g.term(21),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        // max_size limits, but never below one entry.
        let one = g
            .entries(3, 10, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one, entries(3..=3, 1));
        // A conflicting suffix is overwritten.
        g.append(&entries(15..=16, 3)).unwrap();
        assert_eq!(g.last_index(), 16);
        assert_eq!(g.term(14).unwrap(), 2);
        assert_eq!(g.term(16).unwrap(), 3);
        assert_eq!(
            all(&g),
            [entries(1..=10, 1), entries(11..=14, 2), entries(15..=16, 3)].concat()
        );
    }

    #[test]
    fn restart_recovers_everything() {
        let dir = tempfile::tempdir().unwrap();
        let expected;
        {
            let store = Store::open(dir.path()).unwrap();
            let mut g = store.group(7).unwrap();
            g.bootstrap(conf(&[1, 2, 3])).unwrap();
            g.persist(Persist {
                entries: &entries(1..=30, 2),
                hard_state: Some(&hard_state(2, 1, 25)),
                ..Default::default()
            })
            .unwrap();
            g.compact(20, b"state at 20".to_vec()).unwrap();
            g.append(&entries(31..=33, 2)).unwrap();
            expected = (
                all(&g),
                g.hard_state(),
                g.conf_state(),
                g.snapshot_metadata(),
            );
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.groups(), vec![7]);
        let g = store.group(7).unwrap();
        assert_eq!(
            (
                all(&g),
                g.hard_state(),
                g.conf_state(),
                g.snapshot_metadata()
            ),
            expected
        );
        assert_eq!((g.first_index(), g.last_index()), (21, 33));
        assert_eq!(g.term(20).unwrap(), 2);
        let snap = g.snapshot(0, 2).unwrap();
        assert_eq!(&snap.data[..], b"state at 20");
        assert_eq!(snap.get_metadata().index, 20);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        let state = g.initial_state().unwrap();
        assert_eq!(state.hard_state, hard_state(2, 1, 25));
    }

    #[test]
    fn received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(1).unwrap();
        g.append(&entries(1..=5, 1)).unwrap();
        let mut snap = Snapshot {
            data: b"leader state".to_vec().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().set_conf_state(conf(&[1, 2, 3]));
        g.persist(Persist {
            snapshot: Some(&snap),
            entries: &entries(51..=52, 4),
            hard_state: Some(&hard_state(4, 0, 50)),
        })
        .unwrap();
        assert_eq!((g.first_index(), g.last_index()), (51, 52));
        assert_eq!(g.term(50).unwrap(), 4);
        assert_eq!(g.conf_state().voters, vec![1, 2, 3]);
        drop((g, store));
        let store = Store::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!((g.first_index(), g.last_index()), (51, 52));
        assert_eq!(g.load_snapshot().unwrap().unwrap(), snap);
    }

    #[test]
    fn snapshot_leaving_out_the_receiver_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(1).unwrap();
        g.bootstrap(conf(&[1, 3])).unwrap();
        g.append(&entries(1..=5, 1)).unwrap();
        g.set_hard_state(&hard_state(1, 1, 5)).unwrap();
        g.compact(4, b"state".to_vec()).unwrap();
        assert!(g.snapshot(0, 3).is_ok());
        assert!(!g.snapshot_wanted());
        // Node 2 was added after the snapshot: raft-rs would refuse it there, so the owner is
        // asked for a fresh one.
        assert!(matches!(
            g.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(g.take_snapshot_wanted());
        assert!(!g.take_snapshot_wanted(), "taking it resets it");
    }
}
