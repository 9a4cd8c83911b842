//! Reads of entries that raft-engine's per-thread block cache cannot answer with another
//! store's block.
//!
//! raft-engine 0.4.2 keeps the last entries block a thread decoded in a thread-local
//! (`BLOCK_CACHE` in its `src/engine.rs`, used by `read_entry_from_file` for
//! `fetch_entries_to` and by `read_entry_bytes_from_file` for a purge's rewrites) keyed by file
//! number, offset and length only, not by engine. Stores written alike (replicas of the same
//! groups) have blocks at the same places, so a thread that read one store would serve another
//! store's read from that block: raft-engine panics when the entry index differs (its
//! `engine.rs:600`) and otherwise returns the other store's entry, silently. The same holds
//! for one directory opened again after a torn tail was cut, or wiped and refilled.
//!
//! So every read of entries, and every purge, runs through one guard,
//! [`BlockCacheOwner::read`]. Each thread records which store (by a number unique to each
//! opening) its cache may hold a block of; the first store to read on a thread owns it and
//! reads at no cost. Another store first reads the *fence*: a one-entry raft-engine log, made
//! once per process in a temporary directory (removed at once), whose block lies in a log file
//! numbered 10^15, where no store ever gets; the cache then holds a block no store can ask for.
//! Without a fence (it could not be made), that store reads on a short-lived thread of its own.
//!
//! A running node takes the free path only: every replica reads its node's store on the node's
//! Raft loop thread. The fence serves the simulation (every node on one thread), tests, and a
//! process hosting several nodes: `leakbloom dev` opens its nodes one after the other on tokio's
//! blocking pool, and loading a group reads all its entries, so one pooled thread reads several
//! stores.

use std::cell::Cell;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use raft::eraftpb::Entry;
use raft_engine::{Engine, LogBatch};

use super::records::RaftEntries;
use crate::GroupId;

/// The next [`BlockCacheOwner`]'s number; 0 stands for no store.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The store (by id) whose blocks raft-engine's block cache on this thread may hold, 0
    /// while it holds no store's block (see [`BlockCacheOwner::read`]).
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

/// One opening of a store, as an owner of threads' block caches.
#[derive(Debug)]
pub(super) struct BlockCacheOwner {
    /// Unique to this opening of the store: tells which engine filled a thread's block cache.
    id: u64,
}

impl BlockCacheOwner {
    /// A new owner, for a store just opened.
    pub(super) fn new() -> BlockCacheOwner {
        BlockCacheOwner {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Runs `read`, which reads this store's entries through raft-engine (a purge does too: it
    /// rewrites entries), where raft-engine's per-thread block cache cannot hand it another
    /// store's block (see the module docs).
    pub(super) fn read<T: Send>(&self, read: impl FnOnce() -> T + Send) -> T {
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::storage::testing::{all, entry, hard_state};
    use crate::storage::{Persist, Store};

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
}
