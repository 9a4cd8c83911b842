//! Durable log storage for many Raft groups in one [raft-engine] instance.
//!
//! A [`Store`] is one directory:
//!
//! ```text
//! DIR/log/        raft-engine's files: every group's entries, hard state, conf state and
//!                 snapshot metadata, plus the store's write sequence number
//! DIR/synced      the sync marker: the sequence number of the last synced write (see below)
//! DIR/snap/G-I.snap the snapshot of group G at index I (metadata + state-machine bytes,
//!                 CRC32); only the one the log's metadata names is kept
//! ```
//!
//! A [`GroupStorage`] is one group's view; it implements [`raft::Storage`] and is what
//! [`RawNode`](raft::RawNode) owns. All its writes go through one store-wide write path that
//! stamps the batch with the next sequence number (recorded under the writing group's own key),
//! writes it with `fdatasync`, then raises the sync marker to the number (without fsync).
//!
//! # Why the sync marker
//! raft-engine's recovery mode `TolerateTailCorruption` truncates the newest log file at the
//! first damaged record. After a crash that is right (the damaged tail was never synced), but
//! when the damage is in the middle of the file it silently drops later records that *were*
//! synced and acknowledged — entries and votes. On open, the highest sequence number recovered
//! from the log must be at least the marker's; if it is lower, synced writes are gone and
//! [`Store::open`] fails with [`Error::DiskLost`]. The marker is written after each synced
//! write without its own fsync: after a process crash it is exact (the page cache survives);
//! after a power loss it may lag, which weakens detection but never raises a false alarm
//! (it can only be lower than the truth). Each group is also checked on load (its commit index
//! must be covered by its log or snapshot, its last entry's term must not exceed its hard
//! state's term).
//!
//! Damage to an older log file makes raft-engine refuse to open (also [`Error::DiskLost`]); we
//! never use `TolerateAnyCorruption`, which panics on such files.
//!
//! One store-wide sequence number rather than a marker per group: it only grows (a group's last
//! index can legitimately shrink when a new leader overwrites a suffix), it is one small
//! in-place write, and it covers every group in the damaged file at once.
//!
//! # Concurrency
//! Every write blocks for an `fdatasync`: an async caller must run it off the runtime
//! (a dedicated thread or `spawn_blocking`). Writes of different groups run concurrently, so
//! raft-engine's group commit merges them into one `fdatasync` (a node's groups write from
//! their own threads). Sequence numbers are taken from an atomic counter, so concurrent writes
//! may reach the log out of number order; each group records the number of its own latest
//! write under its own key (a group writes from one thread at a time, so that key only grows),
//! and recovery takes the highest over all groups: the number of the newest write the log
//! holds. Reads of entries hold a shared lock that [`Store::purge`] takes
//! exclusively: raft-engine 0.4.2 can fail `fetch_entries_to` while a purge removes the files
//! it reads (tikv/raft-engine#370).
//!
//! # Caveat: raft-engine's block cache
//! raft-engine 0.4.2 keeps the last entries block a thread decoded in a thread-local
//! (`BLOCK_CACHE` in its `src/engine.rs`, used by `read_entry_from_file` for
//! `fetch_entries_to` and by `read_entry_bytes_from_file` for a purge's rewrites) keyed by file
//! number, offset and length only, not by engine. Stores written alike (replicas of the same
//! groups) have blocks at the same places, so a thread that read one store would serve another
//! store's read from that block: raft-engine panics when the entry index differs (its
//! `engine.rs:600`) and otherwise returns the other store's entry, silently. The same holds
//! for one directory opened again after a torn tail was cut, or wiped and refilled.
//!
//! So every read of entries, and every purge, runs through one guard. Each thread records which
//! store (by a number unique to each opening) its cache may hold a block of; the first store to
//! read on a thread owns it and reads at no cost. Another store first reads the *fence*: a
//! one-entry raft-engine log, made once per process in a temporary directory (removed at once),
//! whose block lies in a log file numbered 10^15, where no store ever gets; the cache then
//! holds a block no store can ask for. Without a fence (it could not be made), that store reads
//! on a short-lived thread of its own.
//!
//! A running node takes the free path only: each group reads its node's store on its own thread
//! (the driver's). The fence serves the simulation (every node on one thread), tests, and a
//! process hosting several nodes: `leakbloom dev` opens its nodes one after the other on tokio's
//! blocking pool, and loading a group reads all its entries, so one pooled thread reads several
//! stores.
//!
//! [raft-engine]: https://docs.rs/raft-engine/0.4.2

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};

use crate::error::{Error, Result};
use crate::GroupId;

/// The raft-engine region that holds the store's own records: the top id, because shard
/// groups count up from 0. Groups may not use it.
const META_GROUP: GroupId = u64::MAX;
/// Key of the write sequence number in [`META_GROUP`], compared with the sync marker on open.
const SEQ_KEY: &[u8] = b"seq";

/// The key of group `group`'s latest write sequence number, in the store's own records.
fn seq_key(group: GroupId) -> Vec<u8> {
    let mut key = SEQ_KEY.to_vec();
    key.push(b'/');
    key.extend_from_slice(&group.to_be_bytes());
    key
}
/// Key of a group's hard state (term, vote, commit): a vote must survive a restart.
const HARD_STATE_KEY: &[u8] = b"hard_state";
/// Key of a group's conf state (voters and learners), which raft-rs needs before any entry.
const CONF_STATE_KEY: &[u8] = b"conf_state";
/// Key of a group's rejoin mark (see [`GroupStorage::set_rejoin`]): present while a replica
/// rebuilt from peers must not vote. 8 bytes, big-endian: 0 before the group re-added it, else
/// the index it must apply before it may vote again.
const REJOIN_KEY: &[u8] = b"rejoin";
/// Key of a group's newest snapshot metadata (index, term, conf state): the log starts after
/// it, and `term(index)` must still answer for it.
const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// First bytes of the sync marker, so a stray file is never taken for one.
const MARKER_MAGIC: &[u8; 8] = b"LBSYNC01";
/// First bytes of a snapshot file, so a stray file is never taken for one.
const SNAPSHOT_MAGIC: &[u8; 8] = b"LBSNAP01";
/// Entries read per call when rebuilding a group's term index on load: bounds memory.
const LOAD_CHUNK: u64 = 1024;

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

/// Entry type tag for raft-engine: raft-rs entries, indexed by their `index` field.
#[derive(Debug)]
struct RaftEntries;

impl MessageExt for RaftEntries {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Many groups' Raft logs in one directory. Share it with `Arc`.
pub struct Store {
    dir: PathBuf,
    engine: Engine,
    /// The last sequence number handed out.
    seq: AtomicU64,
    /// The sync marker, rewritten in place when a synced write raises it; the lock keeps the
    /// value it holds (and the file) from going down.
    marker: Mutex<(u64, File)>,
    /// Shared by entry reads, exclusive for purges (tikv/raft-engine#370).
    purge_lock: RwLock<()>,
    /// Unique to this opening of the store: tells which engine filled a thread's block cache
    /// (see [`Store::with_block_cache`]).
    id: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a directory so a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn encode_marker(seq: u64) -> [u8; 20] {
    let mut buf = [0u8; 20];
    buf[..8].copy_from_slice(MARKER_MAGIC);
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&buf[..16]);
    buf[16..].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// The next [`Store::id`]; 0 stands for no store.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The store (by id) whose blocks raft-engine's block cache on this thread may hold, 0
    /// while it holds no store's block (see [`Store::with_block_cache`]).
    static BLOCK_CACHE_OWNER: Cell<u64> = const { Cell::new(0) };
}

/// Number of the log file that holds the fence's entries block. A store numbers its files
/// from 1, one more per `target_file_size` bytes written: none ever gets near.
const FENCE_FILE_SEQ: u64 = 1_000_000_000_000_000;
/// The fence's one group.
const FENCE_GROUP: GroupId = 1;

/// The fence: a raft-engine log of one entry whose block lies in file number
/// [`FENCE_FILE_SEQ`], so that reading it leaves a thread's block cache holding a block no
/// store can ask for. Made once per process on first need (`None` if that failed).
fn fence() -> Option<&'static Engine> {
    static FENCE: OnceLock<Option<Engine>> = OnceLock::new();
    FENCE
        .get_or_init(|| match make_fence() {
            Ok(engine) => Some(engine),
            Err(error) => {
                tracing::warn!(%error, "cannot make the raft-engine block cache fence");
                None
            }
        })
        .as_ref()
}

/// Makes the [`fence`] in a temporary directory, removed before returning: the engine keeps
/// reading its file through the descriptor it holds, and never writes again.
fn make_fence() -> std::result::Result<Engine, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!(
        "leakbloom-raft-fence-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let made = (|| {
        fs::create_dir(&dir)?;
        let config = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            enable_log_recycle: false,
            ..Default::default()
        };
        // raft-engine numbers a new log's first file 1: renumber it while the log is closed.
        let name = |seq: u64| format!("{seq:016}.raftlog");
        drop(Engine::open(config.clone())?);
        fs::rename(dir.join(name(1)), dir.join(name(FENCE_FILE_SEQ)))?;
        let engine = Engine::open(config)?;
        let mut batch = LogBatch::default();
        let entry = Entry {
            index: 1,
            ..Default::default()
        };
        batch.add_entries::<RaftEntries>(FENCE_GROUP, &[entry])?;
        engine.write(&mut batch, false)?;
        // The entry went to the log's newest file: it must be the renumbered one, alone.
        let mut logs = Vec::new();
        for file in fs::read_dir(&dir)? {
            let file = file?.file_name().to_string_lossy().into_owned();
            if file.ends_with(".raftlog") {
                logs.push(file);
            }
        }
        if logs != [name(FENCE_FILE_SEQ)] {
            return Err(format!("unexpected log files {logs:?}").into());
        }
        Ok(engine)
    })();
    let _ = fs::remove_dir_all(&dir);
    made
}

/// Reads the fence's entry, leaving its block in this thread's block cache; false if that
/// failed.
fn read_fence(fence: &Engine) -> bool {
    let mut entries = Vec::with_capacity(1);
    let read = fence.fetch_entries_to::<RaftEntries>(FENCE_GROUP, 1, 2, None, &mut entries);
    matches!(read, Ok(1))
}

/// Runs `read` on a thread of its own, whose block cache starts empty.
fn read_on_fresh_thread<T: Send>(read: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("raft-store-read".into())
            .spawn_scoped(scope, read)
            .expect("spawning a raft store reader thread");
        match reader.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn decode_marker(buf: &[u8]) -> Option<u64> {
    if buf.len() != 20 || &buf[..8] != MARKER_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(buf[16..20].try_into().ok()?);
    (crc32fast::hash(&buf[..16]) == crc).then(|| u64::from_le_bytes(buf[8..16].try_into().unwrap()))
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
        let marker_path = dir.join("synced");
        let lost = |reason: String| Error::DiskLost {
            dir: dir.clone(),
            reason,
        };
        let fresh = !log_dir.exists();
        if fresh {
            fs::create_dir_all(&log_dir).map_err(io_err("create directory", &log_dir))?;
            fs::create_dir_all(dir.join("snap")).map_err(io_err("create directory", &dir))?;
            let mut marker = File::create(&marker_path).map_err(io_err("create", &marker_path))?;
            marker
                .write_all(&encode_marker(0))
                .and_then(|()| marker.sync_all())
                .map_err(io_err("write", &marker_path))?;
            sync_dir(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let marker = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&marker_path)
            .map_err(|e| lost(format!("sync marker {}: {e}", marker_path.display())))?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut &marker, &mut buf).map_err(io_err("read", &marker_path))?;
        let synced = decode_marker(&buf)
            .ok_or_else(|| lost(format!("sync marker {} is corrupt", marker_path.display())))?;

        let engine_config = raft_engine::Config {
            dir: log_dir.to_string_lossy().into_owned(),
            // Truncate a torn tail of the newest file (what a crash leaves); the sync marker
            // catches the case where that drops synced records.
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            target_file_size: ReadableSize(config.target_file_size),
            purge_threshold: ReadableSize(config.purge_threshold.max(config.target_file_size)),
            // Recycled files keep stale records past the tail; fresh files make the tail plain.
            enable_log_recycle: false,
            // Entries carry random 32-byte keys: compressing them costs CPU and saves nothing.
            batch_compression_threshold: ReadableSize(0),
            ..Default::default()
        };
        let opened = catch_unwind(AssertUnwindSafe(|| Engine::open(engine_config)));
        let engine = match opened {
            Ok(Ok(engine)) => engine,
            Ok(Err(raft_engine::Error::Corruption(reason))) => {
                return Err(lost(format!("log corruption: {reason}")))
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(lost("log engine panicked while recovering".into())),
        };
        let mut recovered = 0u64;
        let mut malformed = false;
        engine.scan_raw_messages(META_GROUP, Some(SEQ_KEY), None, false, |key, value| {
            if !key.starts_with(SEQ_KEY) {
                return false;
            }
            match <[u8; 8]>::try_from(value) {
                Ok(bytes) => recovered = recovered.max(u64::from_be_bytes(bytes)),
                Err(_) => malformed = true,
            }
            true
        })?;
        if malformed {
            return Err(lost("write sequence record is malformed".into()));
        }
        if recovered < synced {
            let reason = format!(
                "write #{synced} was synced but the log recovers only up to #{recovered} \
                 (a damaged log file was truncated)"
            );
            tracing::error!(dir = %dir.display(), %reason, "raft log store lost synced writes");
            return Err(lost(reason));
        }
        Ok(Arc::new(Store {
            dir,
            engine,
            seq: AtomicU64::new(recovered),
            marker: Mutex::new((recovered.max(synced), marker)),
            purge_lock: RwLock::new(()),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
        }))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `read`, which reads this store's entries through raft-engine (a purge does too: it
    /// rewrites entries), where raft-engine's per-thread block cache cannot hand it another
    /// store's block (see "Caveat: raft-engine's block cache" in the module docs).
    fn with_block_cache<T: Send>(&self, read: impl FnOnce() -> T + Send) -> T {
        let owner = BLOCK_CACHE_OWNER.get();
        if owner != self.id {
            // A thread that read no store has an empty cache (its key names file 0, which no
            // log has); one that read another store needs the fence first.
            if owner != 0 && !fence().is_some_and(read_fence) {
                return read_on_fresh_thread(read);
            }
            BLOCK_CACHE_OWNER.set(self.id);
        }
        read()
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

    /// Snapshot files are named by group and index, so a new one never replaces the one the
    /// metadata points at until the metadata moved on (a crash in between leaves a stray file,
    /// removed on the next load).
    fn snapshot_path(&self, group: GroupId, index: u64) -> PathBuf {
        self.dir
            .join("snap")
            .join(format!("{group}-{index:020}.snap"))
    }

    /// Removes group `group`'s snapshot files (and leftover temporary files) except the one
    /// at index `keep`.
    fn remove_snapshots(&self, group: GroupId, keep: Option<u64>) -> Result<()> {
        let dir = self.dir.join("snap");
        let prefix = format!("{group}-");
        let keep = keep.map(|index| self.snapshot_path(group, index));
        let mut removed = false;
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&prefix) && Some(&path) != keep.as_ref() {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Writes `batch` durably: stamps it with the next sequence number, writes it with
    /// `fdatasync`, then records the number in the sync marker. Blocks for the fsync.
    pub(crate) fn write(&self, group: GroupId, batch: &mut LogBatch) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        batch.put(META_GROUP, seq_key(group), seq.to_be_bytes().to_vec())?;
        self.engine.write(batch, true)?;
        let mut marker = self.marker.lock().expect("marker lock poisoned");
        if seq > marker.0 {
            let marker_path = self.dir.join("synced");
            marker
                .1
                .write_all_at(&encode_marker(seq), 0)
                .map_err(io_err("write", &marker_path))?;
            marker.0 = seq;
        }
        Ok(())
    }

    /// Frees log files whose entries every group has compacted away. Returns groups that
    /// hold back old files and should be compacted (snapshotted) soon.
    pub fn purge(&self) -> Result<Vec<GroupId>> {
        let _exclusive = self.purge_lock.write().expect("purge lock poisoned");
        let mut laggards = self.with_block_cache(|| self.engine.purge_expired_files())?;
        laggards.retain(|&g| g != META_GROUP);
        Ok(laggards)
    }

    /// Loads group `group`'s storage (empty if the group has no records yet). Fails with
    /// [`Error::DiskLost`] if its records are inconsistent.
    pub fn group(self: &Arc<Self>, group: GroupId) -> Result<GroupStorage> {
        if group == META_GROUP {
            return Err(Error::ReservedGroup(group));
        }
        let lost = |reason: String| Error::DiskLost {
            dir: self.dir.clone(),
            reason: format!("group {group}: {reason}"),
        };
        let hard_state: HardState = self
            .engine
            .get_message(group, HARD_STATE_KEY)?
            .unwrap_or_default();
        let conf_state: ConfState = self
            .engine
            .get_message(group, CONF_STATE_KEY)?
            .unwrap_or_default();
        let snapshot: SnapshotMetadata = self
            .engine
            .get_message(group, SNAPSHOT_KEY)?
            .unwrap_or_default();
        let rejoin = match self.engine.get(group, REJOIN_KEY) {
            None => None,
            Some(bytes) => Some(u64::from_be_bytes(bytes.as_slice().try_into().map_err(
                |_| lost(format!("rejoin mark has {} bytes, not 8", bytes.len())),
            )?)),
        };
        let mut state = GroupState {
            hard_state,
            conf_state,
            snapshot,
            terms: TermRuns::default(),
            rejoin,
        };
        // Rebuild the term index from the log.
        if let (Some(first), Some(last)) = (
            self.engine.first_index(group),
            self.engine.last_index(group),
        ) {
            if first != state.snapshot.index + 1 {
                return Err(lost(format!(
                    "log starts at {first} but the snapshot ends at {}",
                    state.snapshot.index
                )));
            }
            let terms = &mut state.terms;
            self.with_block_cache(|| -> Result<()> {
                let mut low = first;
                while low <= last {
                    let high = (low + LOAD_CHUNK).min(last + 1);
                    let mut entries = Vec::new();
                    self.engine
                        .fetch_entries_to::<RaftEntries>(group, low, high, None, &mut entries)
                        .map_err(|e| lost(format!("entries {low}..{high} unreadable: {e}")))?;
                    for e in &entries {
                        terms.push(e.index, e.term);
                    }
                    low = high;
                }
                Ok(())
            })?;
        }
        let last_index = state.last_index();
        let last_term = state.term(last_index).unwrap_or(0);
        if state.hard_state.commit > last_index {
            return Err(lost(format!(
                "commit index {} is beyond the last entry {last_index}",
                state.hard_state.commit
            )));
        }
        if last_term > state.hard_state.term {
            return Err(lost(format!(
                "last entry has term {last_term} above the hard state's term {}",
                state.hard_state.term
            )));
        }
        let snapshot_index = state.snapshot.index;
        if snapshot_index > 0 && !self.snapshot_path(group, snapshot_index).exists() {
            return Err(lost(format!(
                "snapshot at index {snapshot_index} is recorded but its file is missing"
            )));
        }
        self.remove_snapshots(group, (snapshot_index > 0).then_some(snapshot_index))?;
        Ok(GroupStorage {
            store: Arc::clone(self),
            group,
            state: Arc::new(RwLock::new(state)),
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Removes group `group` and its snapshot for good (the replica moved away).
    pub fn drop_group(&self, group: GroupId) -> Result<()> {
        if group == META_GROUP {
            return Err(Error::ReservedGroup(group));
        }
        let mut batch = LogBatch::default();
        batch.add_command(group, Command::Clean);
        self.write(group, &mut batch)?;
        self.remove_snapshots(group, None)
    }

    /// Writes a snapshot file atomically (temporary file, fsync, rename, fsync directory).
    fn write_snapshot_file(&self, group: GroupId, snapshot: &Snapshot) -> Result<()> {
        let path = self.snapshot_path(group, snapshot.get_metadata().index);
        let tmp = path.with_extension("tmp");
        let body = snapshot
            .write_to_bytes()
            .expect("encoding a snapshot cannot fail");
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(SNAPSHOT_MAGIC)
            .and_then(|()| file.write_all(&crc32fast::hash(&body).to_le_bytes()))
            .and_then(|()| file.write_all(&body))
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir.join("snap"))
    }

    /// Reads group `group`'s snapshot file for `meta` and verifies its checksum and metadata.
    fn read_snapshot_file(&self, group: GroupId, meta: &SnapshotMetadata) -> Result<Snapshot> {
        let path = self.snapshot_path(group, meta.index);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let corrupt = |reason: &str| Error::SnapshotCorrupt {
            path: path.clone(),
            reason: reason.to_string(),
        };
        if bytes.len() < 12 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt("bad header"));
        }
        let crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if crc32fast::hash(&bytes[12..]) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let snapshot =
            Snapshot::parse_from_bytes(&bytes[12..]).map_err(|e| corrupt(&e.to_string()))?;
        if snapshot.get_metadata() != meta {
            return Err(corrupt("metadata differs from the log's record"));
        }
        Ok(snapshot)
    }
}

/// The terms of a log as runs `(first index, term)`: terms only grow along a log, so a few
/// runs cover millions of entries and `term(i)` needs no disk read.
#[derive(Debug, Default, Clone)]
struct TermRuns {
    runs: VecDeque<(u64, u64)>,
    /// Index of the last entry, 0 when there are none.
    last: u64,
    /// Index of the first entry.
    first: u64,
}

impl TermRuns {
    fn push(&mut self, index: u64, term: u64) {
        if self.runs.is_empty() {
            self.first = index;
        } else {
            assert_eq!(index, self.last + 1, "log entries must be contiguous");
        }
        if self.runs.back().is_none_or(|&(_, t)| t != term) {
            self.runs.push_back((index, term));
        }
        self.last = index;
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Drops entries at `index` and after.
    fn truncate(&mut self, index: u64) {
        if self.is_empty() || index > self.last {
            return;
        }
        if index <= self.first {
            *self = TermRuns::default();
            return;
        }
        while self.runs.back().is_some_and(|&(start, _)| start >= index) {
            self.runs.pop_back();
        }
        self.last = index - 1;
    }

    /// Drops entries before `index`.
    fn compact(&mut self, index: u64) {
        if self.is_empty() || index <= self.first {
            return;
        }
        if index > self.last {
            *self = TermRuns::default();
            return;
        }
        while self.runs.len() > 1 && self.runs[1].0 <= index {
            self.runs.pop_front();
        }
        self.runs[0].0 = index;
        self.first = index;
    }

    fn term(&self, index: u64) -> Option<u64> {
        if self.is_empty() || index < self.first || index > self.last {
            return None;
        }
        let pos = self.runs.partition_point(|&(start, _)| start <= index);
        Some(self.runs[pos - 1].1)
    }
}

#[derive(Debug, Clone)]
struct GroupState {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    terms: TermRuns,
    rejoin: Option<u64>,
}

impl GroupState {
    fn first_index(&self) -> u64 {
        if self.terms.is_empty() {
            self.snapshot.index + 1
        } else {
            self.terms.first
        }
    }

    fn last_index(&self) -> u64 {
        if self.terms.is_empty() {
            self.snapshot.index
        } else {
            self.terms.last
        }
    }

    fn term(&self, index: u64) -> Option<u64> {
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

/// One group's durable log, hard state, conf state and snapshot; implements
/// [`raft::Storage`]. Cheap to clone (clones share state).
#[derive(Debug, Clone)]
pub struct GroupStorage {
    store: Arc<Store>,
    group: GroupId,
    state: Arc<RwLock<GroupState>>,
    /// Set when raft-rs asked for a snapshot the stored one cannot serve (see
    /// [`take_snapshot_wanted`](GroupStorage::take_snapshot_wanted)).
    snapshot_wanted: Arc<AtomicBool>,
}

fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.into()))
}

impl GroupStorage {
    /// The group's id.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The store this group lives in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, GroupState> {
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

    /// The rejoin mark: `None` for a normal replica; `Some(0)` for one rebuilt from peers that
    /// the group has not re-added yet; `Some(index)` once it has, until it applied `index`.
    pub fn rejoin(&self) -> Option<u64> {
        self.read().rejoin
    }

    /// Records (synced) or clears the rejoin mark. A replica whose disk lost acknowledged data
    /// must not vote until it holds everything the group committed without it, and that must
    /// survive its restarts: see [`GroupNode`](crate::GroupNode)'s rejoin docs.
    pub fn set_rejoin(&mut self, rejoin: Option<u64>) -> Result<()> {
        let mut batch = LogBatch::default();
        match rejoin {
            Some(index) => batch.put(
                self.group,
                REJOIN_KEY.to_vec(),
                index.to_be_bytes().to_vec(),
            )?,
            None => batch.delete(self.group, REJOIN_KEY.to_vec()),
        }
        self.store.write(self.group, &mut batch)?;
        self.state
            .write()
            .expect("group state lock poisoned")
            .rejoin = rejoin;
        Ok(())
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

    /// Persists what a Ready asks for in one synced write: snapshot metadata (its data goes to
    /// a snapshot file first), entries and hard state.
    pub fn persist(&mut self, persist: Persist<'_>) -> Result<()> {
        if persist.snapshot.is_none() && persist.entries.is_empty() && persist.hard_state.is_none()
        {
            return Ok(());
        }
        let mut next = self.read().clone();
        let mut batch = LogBatch::default();
        if let Some(snapshot) = persist.snapshot {
            // The file first: the metadata must never point at a snapshot that is not there.
            self.store.write_snapshot_file(self.group, snapshot)?;
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
        self.store.write(self.group, &mut batch)?;
        let snapshot_index = next.snapshot.index;
        *self.state.write().expect("group state lock poisoned") = next;
        if persist.snapshot.is_some() {
            self.store
                .remove_snapshots(self.group, Some(snapshot_index))?;
        }
        Ok(())
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
    /// then drops log entries up to `index`. `index` must be applied (so committed) and in the
    /// log.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<()> {
        let mut next = self.read().clone();
        if index <= next.snapshot.index {
            return Ok(());
        }
        let term = next
            .term(index)
            .unwrap_or_else(|| panic!("group {}: compact to {index} outside the log", self.group));
        assert!(
            index <= next.hard_state.commit,
            "group {}: compact to uncommitted index {index}",
            self.group
        );
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(next.conf_state.clone());
        self.store.write_snapshot_file(self.group, &snapshot)?;
        let mut batch = LogBatch::default();
        batch.put_message(self.group, SNAPSHOT_KEY.to_vec(), snapshot.get_metadata())?;
        batch.add_command(self.group, Command::Compact { index: index + 1 });
        self.store.write(self.group, &mut batch)?;
        next.snapshot = snapshot.take_metadata();
        next.terms.compact(index + 1);
        *self.state.write().expect("group state lock poisoned") = next;
        self.store.remove_snapshots(self.group, Some(index))
    }

    /// The newest snapshot with its data, verified against its checksum.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>> {
        let meta = self.read().snapshot.clone();
        if meta.index == 0 {
            return Ok(None);
        }
        self.store.read_snapshot_file(self.group, &meta).map(Some)
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
        self.store.with_block_cache(|| {
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
        match self.store.read_snapshot_file(self.group, &meta) {
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
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|i| entry(i, term, format!("e{i}t{term}").as_bytes()))
            .collect()
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn conf(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        }
    }

    fn all(g: &GroupStorage) -> Vec<Entry> {
        g.entries(
            g.first_index(),
            g.last_index() + 1,
            None,
            GetEntriesContext::empty(false),
        )
        .unwrap()
    }

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
    fn rejoin_mark_survives_restarts_and_a_dropped_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(3).unwrap();
        assert_eq!(g.rejoin(), None);
        g.set_rejoin(Some(0)).unwrap();
        g.set_rejoin(Some(42)).unwrap();
        drop((g, store));
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(3).unwrap();
        assert_eq!(g.rejoin(), Some(42));
        g.set_rejoin(None).unwrap();
        drop((g, store));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.group(3).unwrap().rejoin(), None);
        store.group(3).unwrap().set_rejoin(Some(7)).unwrap();
        store.drop_group(3).unwrap();
        assert_eq!(
            store.group(3).unwrap().rejoin(),
            None,
            "dropping a group clears it"
        );
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

    fn newest_log_file(dir: &Path) -> PathBuf {
        let mut files: Vec<_> = fs::read_dir(dir.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "raftlog"))
            .collect();
        files.sort();
        files.pop().expect("no log file")
    }

    /// Makes `n` synced writes (a hard state, then entries 1..n), then returns the newest log
    /// file and its length.
    fn filled_store(dir: &Path, n: u64) -> (PathBuf, u64) {
        let store = Store::open(dir).unwrap();
        let mut g = store.group(1).unwrap();
        g.set_hard_state(&hard_state(1, 1, 0)).unwrap();
        for i in 2..=n {
            g.append(&[entry(i - 1, 1, &[i as u8; 512])]).unwrap();
        }
        drop((g, store));
        let file = newest_log_file(dir);
        let len = fs::metadata(&file).unwrap().len();
        (file, len)
    }

    #[test]
    fn torn_tail_after_a_crash_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (file, len) = filled_store(dir.path(), 20);
        // A crash during a write that was never acknowledged: the last record is cut short
        // and the marker was not advanced (we emulate it by rolling the marker back one).
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(len - 100).unwrap();
        let marker = OpenOptions::new()
            .write(true)
            .open(dir.path().join("synced"))
            .unwrap();
        marker.write_all_at(&encode_marker(19), 0).unwrap();
        // Garbage (e.g. preallocated space) past the tail is fine as well.
        f.write_all_at(&[0u8; 4096], len - 100).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!(g.last_index(), 18);
    }

    #[test]
    fn damage_that_drops_synced_writes_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (file, len) = filled_store(dir.path(), 20);
        // Damage across several records in the middle of the newest file: raft-engine
        // truncates there and would silently drop the synced writes after it.
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0xAB; 4096], len / 2).unwrap();
        match Store::open(dir.path()) {
            Err(Error::DiskLost { reason, .. }) => assert!(reason.contains("synced"), "{reason}"),
            other => panic!("expected DiskLost, got {other:?}"),
        }
    }

    #[test]
    fn damaged_entry_is_detected_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let (file, len) = filled_store(dir.path(), 20);
        // A few bytes inside one record's entries: recovery only checks the last record's
        // entries, so the store opens, and loading the group reads (and verifies) every entry.
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0xAB; 64], len / 2).unwrap();
        let detected = match Store::open(dir.path()) {
            Err(Error::DiskLost { .. }) => true,
            Ok(store) => matches!(store.group(1), Err(Error::DiskLost { .. })),
            Err(e) => panic!("unexpected error {e}"),
        };
        assert!(detected, "damaged entry went unnoticed");
    }

    #[test]
    fn truncated_newest_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (file, len) = filled_store(dir.path(), 20);
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::DiskLost { .. })
        ));
    }

    #[test]
    fn damaged_older_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            target_file_size: 16 << 10,
            purge_threshold: 1 << 20,
        };
        {
            let store = Store::open_with(dir.path(), config.clone()).unwrap();
            let mut g = store.group(1).unwrap();
            for i in 1..=100u64 {
                g.append(&[entry(i, 1, &[i as u8; 1024])]).unwrap();
            }
        }
        let mut files: Vec<_> = fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "raftlog"))
            .collect();
        files.sort();
        assert!(files.len() > 2, "expected several log files");
        let f = OpenOptions::new().write(true).open(&files[0]).unwrap();
        f.write_all_at(&[0xCD; 256], 2048).unwrap();
        assert!(matches!(
            Store::open_with(dir.path(), config),
            Err(Error::DiskLost { .. })
        ));
    }

    #[test]
    fn missing_or_corrupt_marker_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        filled_store(dir.path(), 3);
        let marker = dir.path().join("synced");
        fs::write(&marker, b"garbage").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::DiskLost { .. })
        ));
        fs::remove_file(&marker).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::DiskLost { .. })
        ));
    }

    #[test]
    fn inconsistent_group_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut g = store.group(1).unwrap();
            g.append(&entries(1..=3, 1)).unwrap();
            // A commit index beyond the log can only come from lost entries.
            let mut batch = LogBatch::default();
            batch
                .put_message(1, HARD_STATE_KEY.to_vec(), &hard_state(1, 0, 9))
                .unwrap();
            store.write(1, &mut batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(store.group(1), Err(Error::DiskLost { .. })));
    }

    #[test]
    fn corrupt_snapshot_is_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(1).unwrap();
        g.append(&entries(1..=5, 1)).unwrap();
        g.set_hard_state(&hard_state(1, 0, 5)).unwrap();
        g.compact(5, vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let path = store.snapshot_path(1, 5);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(
            g.load_snapshot(),
            Err(Error::SnapshotCorrupt { .. })
        ));
        assert!(matches!(
            g.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
    }

    #[test]
    fn stray_newer_snapshot_from_a_crash_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = Store::open(dir.path()).unwrap();
            let mut g = store.group(1).unwrap();
            g.persist(Persist {
                entries: &entries(1..=10, 1),
                hard_state: Some(&hard_state(1, 1, 10)),
                ..Default::default()
            })
            .unwrap();
            g.compact(4, b"at 4".to_vec()).unwrap();
            // A crash after writing the next snapshot file, before its metadata.
            let mut stray = g.load_snapshot().unwrap().unwrap();
            stray.mut_metadata().index = 8;
            stray.data = b"at 8".to_vec().into();
            store.write_snapshot_file(1, &stray).unwrap();
            g.load_snapshot().unwrap().unwrap()
        };
        let store = Store::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!(g.load_snapshot().unwrap().unwrap(), expected);
        assert_eq!(&expected.data[..], b"at 4");
        assert!(!store.snapshot_path(1, 8).exists(), "stray file removed");
        assert_eq!((g.first_index(), g.last_index()), (5, 10));
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

    #[test]
    fn stores_read_from_one_thread_never_see_each_others_entries() {
        // Written alike, two stores hold their entries blocks at the same file, offset and
        // length: what raft-engine's per-thread block cache is keyed by.
        let fill = |dir: &Path, byte: u8| {
            let store = Store::open(dir).unwrap();
            let mut g = store.group(1).unwrap();
            g.persist(Persist {
                entries: &[entry(1, 1, &[byte; 64]), entry(2, 1, &[byte; 64])],
                hard_state: Some(&hard_state(1, 1, 0)),
                ..Default::default()
            })
            .unwrap();
            g
        };
        let expected = |byte: u8| vec![entry(1, 1, &[byte; 64]), entry(2, 1, &[byte; 64])];
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ga, gb) = (fill(a.path(), b'a'), fill(b.path(), b'b'));
        for _ in 0..2 {
            assert_eq!(all(&ga), expected(b'a'));
            assert_eq!(all(&gb), expected(b'b'));
        }
        assert!(
            fence().is_some_and(read_fence),
            "no fence: the reads took the slow path"
        );
        // The slow path, taken without a fence, is right too.
        assert_eq!(all(&ga), expected(b'a'));
        assert_eq!(read_on_fresh_thread(|| all(&gb)), expected(b'b'));
        // Same on reload (which reads every entry) and after a directory is wiped and
        // refilled with other bytes at the same places.
        drop((ga, gb));
        let reloaded = Store::open(b.path()).unwrap();
        assert_eq!(all(&reloaded.group(1).unwrap()), expected(b'b'));
        drop(reloaded);
        fs::remove_dir_all(a.path()).unwrap();
        let refilled = fill(a.path(), b'c');
        assert_eq!(all(&refilled), expected(b'c'));
    }

    #[test]
    fn term_runs() {
        let mut t = TermRuns::default();
        for (i, term) in [(5, 1), (6, 1), (7, 2), (8, 2), (9, 4)] {
            t.push(i, term);
        }
        assert_eq!(
            (4..=10).map(|i| t.term(i)).collect::<Vec<_>>(),
            [None, Some(1), Some(1), Some(2), Some(2), Some(4), None]
        );
        t.truncate(8);
        assert_eq!(
            (t.first, t.last, t.term(7), t.term(8)),
            (5, 7, Some(2), None)
        );
        t.compact(7);
        assert_eq!((t.first, t.term(6), t.term(7)), (7, None, Some(2)));
        t.compact(100);
        assert!(t.is_empty());
    }
}
