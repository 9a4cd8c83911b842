//! The [`Store`]: one raft-engine instance holding every group's log on a node, and the one
//! write path all of them go through (sequence number, synced write, sync marker), plus
//! purging the log files no group needs any more.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use raft::eraftpb::Snapshot;
use raft_engine::{Command, Engine, LogBatch, ReadableSize};

use super::block_cache::BlockCacheOwner;
use super::files::{io_err, sync_dir};
use super::group::GroupStorage;
use super::marker::SyncMarker;
use super::records::{seq_key, META_GROUP};
use super::recovery;
use super::snapshot_file::SnapshotFiles;
use crate::error::{Error, Result};
use crate::GroupId;

/// Tunables of a [`Store`].
///
/// raft-engine frees a log file only once no group needs any record in it, and
/// [`Store::purge`] does anything at all only while the log is larger than `purge_threshold`:
/// then it deletes the files every group has compacted past, and first moves what stale groups
/// still hold in old files (a few entries, their hard and conf states) to its rewrite queue, or,
/// for a group with many entries there, asks for it to be compacted and after nine purges
/// rewrites it anyway. So the log holds at most about `max(purge_threshold, what the groups
/// hold since their last compaction) + target_file_size` (see the crate docs for the bound of
/// a whole data directory).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Size at which raft-engine starts a new log file; purging frees whole files, and recovery
    /// scans the newest one, so smaller files free space sooner and recover faster.
    pub target_file_size: u64,
    /// Total log size above which a purge frees files (and rewrites stale groups' records to
    /// free old ones): below it, even files no group needs stay on disk.
    pub purge_threshold: u64,
}

impl Default for StoreConfig {
    /// 16 MiB files and a 128 MiB purge threshold: the threshold is what a data directory
    /// keeps beyond its groups' own log budgets, so it is small next to the filters a node
    /// holds, yet above a node's summed byte floors (16 shards x 4 MiB), so that small filters'
    /// logs do not get their live entries rewritten on every purge.
    fn default() -> StoreConfig {
        StoreConfig {
            target_file_size: 16 << 20,
            purge_threshold: 128 << 20,
        }
    }
}

/// Records of many groups staged for one synced write ([`Store::write_batch`]).
#[derive(Debug, Default)]
pub struct WriteBatch(pub(super) LogBatch);

impl WriteBatch {
    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes staged so far (before raft-engine's framing).
    pub fn approximate_size(&self) -> usize {
        self.0.approximate_size()
    }
}

/// Many groups' Raft logs in one directory. Share it with `Arc`.
pub struct Store {
    pub(super) dir: PathBuf,
    pub(super) engine: Engine,
    /// The last sequence number handed out.
    pub(super) seq: AtomicU64,
    /// The sync marker, raised after every synced write.
    marker: SyncMarker,
    /// Shared by entry reads, exclusive for purges (tikv/raft-engine#370).
    pub(super) purge_lock: RwLock<()>,
    /// This opening of the store, as the owner of threads' block caches: every read of entries
    /// goes through it.
    pub(super) cache: BlockCacheOwner,
    /// The groups' snapshot files.
    pub(super) snapshots: SnapshotFiles,
    /// A [`SnapshotSlot`] is out: one snapshot is being taken and written.
    snapshot_busy: AtomicBool,
}

/// The right to take and write one snapshot: a store hands out one at a time
/// ([`Store::snapshot_slot`]), and takes it back when this is dropped (the file written, or
/// the job given up). So a node copies one state machine at a time for its snapshot, not every
/// shard's at once when their logs fill together (a stall of the Raft loop, and a second
/// copy of every filter in memory), and its log syncs never queue behind several snapshot
/// files' writeback.
#[derive(Debug)]
pub struct SnapshotSlot(Arc<Store>);

impl SnapshotSlot {
    /// The store the slot is of.
    pub fn store(&self) -> &Arc<Store> {
        &self.0
    }
}

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.0.snapshot_busy.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with default tunables.
    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<Store>> {
        Store::open_with(dir, StoreConfig::default())
    }

    /// Opens (or creates) the store in `dir`. Fails with [`Error::DiskLost`] if synced writes
    /// are missing or a log file is damaged beyond the torn tail a crash leaves.
    pub fn open_with(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Arc<Store>> {
        let dir = dir.as_ref().to_path_buf();
        let log_dir = dir.join("log");
        let snapshots = SnapshotFiles::new(&dir);
        let fresh = !log_dir.exists();
        if fresh {
            fs::create_dir_all(&log_dir).map_err(io_err("create directory", &log_dir))?;
            fs::create_dir_all(snapshots.dir()).map_err(io_err("create directory", &dir))?;
            SyncMarker::create(&dir)?;
            sync_dir(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let marker = SyncMarker::open(&dir)?;
        let engine_config = raft_engine::Config {
            dir: log_dir.to_string_lossy().into_owned(),
            target_file_size: ReadableSize(config.target_file_size),
            purge_threshold: ReadableSize(config.purge_threshold.max(config.target_file_size)),
            // Entries carry random 32-byte keys: compressing them costs CPU and saves nothing.
            batch_compression_threshold: ReadableSize(0),
            ..Default::default()
        };
        let engine = recovery::open_engine(&dir, engine_config)?;
        let recovered = recovery::recovered_seq(&dir, &engine, marker.synced())?;
        Ok(Arc::new(Store {
            dir,
            engine,
            seq: AtomicU64::new(recovered),
            marker,
            purge_lock: RwLock::new(()),
            cache: BlockCacheOwner::new(),
            snapshots,
            snapshot_busy: AtomicBool::new(false),
        }))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The groups that have any record in the store, in id order.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut groups: Vec<_> = self
            .engine
            .raft_groups()
            .into_iter()
            .filter(|&g| g != META_GROUP)
            .collect();
        groups.sort_unstable();
        groups
    }

    /// Writes `batch` durably: stamps it with the next sequence number (recorded under
    /// `writer`'s key), writes it with `fdatasync`, then records the number in the sync
    /// marker. Blocks for the fsync.
    pub(crate) fn write(&self, writer: GroupId, batch: &mut LogBatch) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        batch.put(META_GROUP, seq_key(writer), seq.to_be_bytes().to_vec())?;
        self.engine.write(batch, true)?;
        self.marker.raise(seq)
    }

    /// Writes every group's staged records in `batch` at once, with one `fdatasync` (see
    /// [`GroupStorage::stage`]); an empty batch writes nothing. Blocks for the fsync. Call it
    /// from one thread per store (the node's Raft loop): its sequence numbers are recorded
    /// under one key, which must only grow.
    pub fn write_batch(&self, batch: &mut WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(META_GROUP, &mut batch.0)?;
        batch.0 = LogBatch::default();
        Ok(())
    }

    /// Writes a snapshot this node took of group `group` to its file, synced, without
    /// touching the log: [`GroupStorage::stage_compaction`] points the log at it afterwards.
    /// Blocks for the write and fsync (a whole state machine): run it off the Raft loop.
    pub fn write_snapshot_file(&self, group: GroupId, snapshot: &Snapshot) -> Result<()> {
        self.snapshots.write(group, snapshot)
    }

    /// The store's one [`SnapshotSlot`], unless a snapshot holds it.
    pub fn snapshot_slot(self: &Arc<Self>) -> Option<SnapshotSlot> {
        let taken = self.snapshot_busy.swap(true, Ordering::AcqRel);
        (!taken).then(|| SnapshotSlot(Arc::clone(self)))
    }

    /// Whether [`snapshot_slot`](Self::snapshot_slot) would hand the slot out now.
    pub fn snapshot_slot_free(&self) -> bool {
        !self.snapshot_busy.load(Ordering::Acquire)
    }

    /// Frees log files whose entries every group has compacted away. Returns groups that
    /// hold back old files and should be compacted (snapshotted) soon.
    pub fn purge(&self) -> Result<Vec<GroupId>> {
        let _exclusive = self.purge_lock.write().expect("purge lock poisoned");
        let mut laggards = self.cache.read(|| self.engine.purge_expired_files())?;
        laggards.retain(|&g| g != META_GROUP);
        Ok(laggards)
    }

    /// Loads group `group`'s storage (empty if the group has no records yet). Fails with
    /// [`Error::DiskLost`] if its records are inconsistent.
    pub fn group(self: &Arc<Self>, group: GroupId) -> Result<GroupStorage> {
        if group == META_GROUP {
            return Err(Error::ReservedGroup(group));
        }
        let state = recovery::load_group(self, group)?;
        Ok(GroupStorage::new(Arc::clone(self), group, state))
    }

    /// Removes group `group` and its snapshot for good (the replica moved away).
    pub fn drop_group(&self, group: GroupId) -> Result<()> {
        if group == META_GROUP {
            return Err(Error::ReservedGroup(group));
        }
        let mut batch = LogBatch::default();
        batch.add_command(group, Command::Clean);
        self.write(group, &mut batch)?;
        self.snapshots.remove(group, None)
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{ConfState, Entry};
    use raft::{GetEntriesContext, Storage as _, StorageError};

    use super::*;
    use crate::storage::testing::{all, entries, entry, hard_state};
    use crate::storage::Persist;

    /// 64 KiB log files, purged above 256 KiB: tests fill and free several quickly.
    fn small_files() -> StoreConfig {
        StoreConfig {
            target_file_size: 64 << 10,
            purge_threshold: 256 << 10,
        }
    }

    #[test]
    fn purge_frees_files_that_idle_groups_hold_while_one_group_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files();
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        let conf = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        // Two idle groups in the first files: one with a few entries, one with more than
        // raft-engine rewrites at once (it asks for those to be compacted, then rewrites them
        // after nine purges). Neither ever compacts.
        let mut idle = Vec::new();
        for (group, count) in [(2, 5u64), (3, 60)] {
            let mut g = store.group(group).unwrap();
            g.set_conf_state(&conf).unwrap();
            let written: Vec<Entry> = (1..=count)
                .map(|i| entry(i, 1, &[group as u8; 1024]))
                .collect();
            g.append(&written).unwrap();
            g.set_hard_state(&hard_state(1, 1, count)).unwrap();
            idle.push((g, written));
        }
        // One busy group writes 100 times the purge threshold, compacting and purging as a
        // replica does.
        let mut busy = store.group(1).unwrap();
        busy.set_conf_state(&conf).unwrap();
        let payload = vec![1u8; 4096];
        let log_bytes = || -> u64 {
            fs::read_dir(dir.path().join("log"))
                .unwrap()
                .map(|f| f.unwrap().metadata().unwrap().len())
                .sum()
        };
        let mut largest = 0;
        for round in 0..800u64 {
            let first = round * 8 + 1;
            busy.append(
                &(first..first + 8)
                    .map(|i| entry(i, 1, &payload))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            busy.set_hard_state(&hard_state(1, 1, first + 7)).unwrap();
            busy.compact(first + 7, b"s".to_vec()).unwrap();
            store.purge().unwrap();
            largest = largest.max(log_bytes());
        }
        // The threshold, the file being written (preallocated up to 2 MiB ahead) and one more.
        let bound = config.purge_threshold + 2 * config.target_file_size + (2 << 20);
        assert!(
            largest <= bound,
            "the log reached {largest} bytes, over {bound}"
        );
        // The idle groups' records were moved, not lost, also across a restart.
        for (g, written) in &idle {
            assert_eq!(&all(g), written);
        }
        drop((idle, busy, store));
        let store = Store::open_with(dir.path(), config).unwrap();
        for (group, count) in [(2, 5u64), (3, 60)] {
            let g = store.group(group).unwrap();
            assert_eq!((g.first_index(), g.last_index()), (1, count));
            assert_eq!(g.hard_state().commit, count);
        }
    }

    #[test]
    fn a_store_hands_out_one_snapshot_slot_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.snapshot_slot().expect("a free slot");
        assert!(!store.snapshot_slot_free());
        assert!(store.snapshot_slot().is_none(), "one snapshot at a time");
        drop(first);
        assert!(store.snapshot_slot_free());
        assert!(store.snapshot_slot().is_some(), "free again once dropped");
    }

    #[test]
    fn compaction_drops_entries_and_purge_frees_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files();
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        let mut g = store.group(1).unwrap();
        let big = vec![7u8; 4096];
        for i in 1..=200u64 {
            g.append(&[entry(i, 1, &big)]).unwrap();
        }
        g.set_hard_state(&hard_state(1, 0, 200)).unwrap();
        let files = |d: &Path| fs::read_dir(d.join("log")).unwrap().count();
        let before = files(dir.path());
        g.compact(190, b"s".to_vec()).unwrap();
        assert_eq!(g.first_index(), 191);
        assert!(matches!(
            g.entries(150, 192, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            g.term(150),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(g.term(190).unwrap(), 1);
        store.purge().unwrap();
        assert!(files(dir.path()) < before, "purge freed no file");
        assert_eq!(
            all(&g),
            (191..=200).map(|i| entry(i, 1, &big)).collect::<Vec<_>>()
        );
        drop((g, store));
        let store = Store::open_with(dir.path(), config).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!((g.first_index(), g.last_index()), (191, 200));
    }

    #[test]
    fn groups_are_independent_and_can_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = store.group(1).unwrap();
        let mut b = store.group(2).unwrap();
        a.persist(Persist {
            entries: &entries(1..=3, 1),
            hard_state: Some(&hard_state(1, 1, 0)),
            ..Default::default()
        })
        .unwrap();
        b.append(&entries(1..=8, 5)).unwrap();
        b.set_hard_state(&hard_state(5, 2, 8)).unwrap();
        b.compact(4, b"b".to_vec()).unwrap();
        assert_eq!(all(&a), entries(1..=3, 1));
        assert_eq!((b.first_index(), b.last_index()), (5, 8));
        assert_eq!(a.hard_state(), hard_state(1, 1, 0));
        store.drop_group(2).unwrap();
        let snap_files = || fs::read_dir(dir.path().join("snap")).unwrap().count();
        assert_eq!(snap_files(), 0, "group 2's snapshot is gone");
        assert_eq!(store.groups(), vec![1]);
        drop((a, b, store));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.groups(), vec![1]);
        assert!(store.group(2).unwrap().is_empty());
        assert_eq!(all(&store.group(1).unwrap()), entries(1..=3, 1));
        assert!(matches!(
            store.group(u64::MAX),
            Err(Error::ReservedGroup(_))
        ));
    }

    #[test]
    fn groups_write_compact_and_purge_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            target_file_size: 32 << 10,
            purge_threshold: 128 << 10,
        };
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        let threads: Vec<_> = (1..=4u64)
            .map(|group| {
                let mut g = store.group(group).unwrap();
                std::thread::spawn(move || {
                    g.set_hard_state(&hard_state(1, 1, 0)).unwrap();
                    for i in 1..=300u64 {
                        g.append(&[entry(i, 1, &[group as u8; 700])]).unwrap();
                        if i % 50 == 0 {
                            g.set_hard_state(&hard_state(1, 1, i)).unwrap();
                            g.compact(i - 10, vec![group as u8]).unwrap();
                            g.store().purge().unwrap();
                        }
                        // Reads race with the other threads' purges.
                        let low = g.first_index().max(i.saturating_sub(5)).max(1);
                        let read = g
                            .entries(low, i + 1, None, GetEntriesContext::empty(false))
                            .unwrap();
                        assert_eq!(read.len() as u64, i + 1 - low);
                    }
                    (g.first_index(), g.last_index())
                })
            })
            .collect();
        let spans: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(spans.iter().all(|&span| span == (291, 300)), "{spans:?}");
        drop(store);
        let store = Store::open_with(dir.path(), config).unwrap();
        assert_eq!(store.groups(), vec![1, 2, 3, 4]);
        for group in 1..=4u64 {
            let g = store.group(group).unwrap();
            assert_eq!((g.first_index(), g.last_index()), (291, 300));
            assert!(all(&g).iter().all(|e| e.data[0] == group as u8));
            assert_eq!(
                &g.load_snapshot().unwrap().unwrap().data[..],
                &[group as u8]
            );
        }
        // Concurrent writes reach the log out of sequence order; recovery must not mistake
        // that for lost writes, and must continue numbering above every recorded write.
        let written = store.seq.load(Ordering::Relaxed);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.seq.load(Ordering::Relaxed), written);
    }
}
