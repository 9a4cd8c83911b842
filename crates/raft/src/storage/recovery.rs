//! What a store checks when it opens and when it loads a group: the damage raft-engine's own
//! recovery would let through, reported as [`Error::DiskLost`] so that the replica is rebuilt
//! from its peers instead of serving (or voting) without writes it acknowledged.
//!
//! # Why the sync marker
//! raft-engine's recovery mode `TolerateTailCorruption` truncates the newest log file at the
//! first damaged record. After a crash that is right (the damaged tail was never synced), but
//! when the damage is in the middle of the file it silently drops later records that *were*
//! synced and acknowledged — entries and votes. On open, the highest sequence number recovered
//! from the log must be at least the [marker](super::marker)'s; if it is lower, synced writes
//! are gone and [`Store::open`] fails with [`Error::DiskLost`]. The marker is written after each
//! synced write without its own fsync: after a process crash it is exact (the page cache
//! survives); after a power loss it may lag, which weakens detection but never raises a false
//! alarm (it can only be lower than the truth). Each group is also checked on load (its commit
//! index must be covered by its log or snapshot, its last entry's term must not exceed its hard
//! state's term, the snapshot its metadata names must exist).
//!
//! Damage to an older log file makes raft-engine refuse to open (also [`Error::DiskLost`]); we
//! never use `TolerateAnyCorruption`, which panics on such files.
//!
//! One store-wide sequence number rather than a marker per group: it only grows (a group's last
//! index can legitimately shrink when a new leader overwrites a suffix), it is one small
//! in-place write, and it covers every group in the damaged file at once. Concurrent writes may
//! reach the log out of number order, so each group records the number of its own latest write
//! under its own key, and recovery takes the highest over all groups.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};
use raft_engine::{Engine, RecoveryMode};

use super::group::GroupState;
use super::records::{
    RaftEntries, CONF_STATE_KEY, HARD_STATE_KEY, META_GROUP, REJOIN_KEY, SEQ_KEY, SNAPSHOT_KEY,
};
use super::terms::TermRuns;
use super::Store;
use crate::error::{Error, Result};
use crate::GroupId;

/// Turns a reason into the [`Error::DiskLost`] of the store in `dir`.
pub(super) fn lost(dir: &Path) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::DiskLost {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Entries read per call when rebuilding a group's term index on load: bounds memory.
pub(super) const LOAD_CHUNK: u64 = 1024;

/// Opens raft-engine on the log of the store in `dir`, cutting a torn tail (what a crash
/// leaves) and refusing damage anywhere else with [`Error::DiskLost`].
pub(super) fn open_engine(dir: &Path, mut config: raft_engine::Config) -> Result<Engine> {
    // Truncate a torn tail of the newest file (what a crash leaves); the sync marker catches
    // the case where that drops synced records.
    config.recovery_mode = RecoveryMode::TolerateTailCorruption;
    // Recycled files keep stale records past the tail; fresh files make the tail plain.
    config.enable_log_recycle = false;
    let lost = lost(dir);
    match catch_unwind(AssertUnwindSafe(|| Engine::open(config))) {
        Ok(Ok(engine)) => Ok(engine),
        Ok(Err(raft_engine::Error::Corruption(reason))) => {
            Err(lost(format!("log corruption: {reason}")))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(lost("log engine panicked while recovering".into())),
    }
}

/// The number of the newest write the log of the store in `dir` recovered, checked against
/// `synced`, the sync marker's: [`Error::DiskLost`] if synced writes are missing.
pub(super) fn recovered_seq(dir: &Path, engine: &Engine, synced: u64) -> Result<u64> {
    let lost = lost(dir);
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
    Ok(recovered)
}

/// Loads group `group`'s state from `store` (empty if the group has no records yet),
/// rebuilding its term index from its entries (which reads, and so verifies, every one), and
/// removes stray snapshot files a crash left. Fails with [`Error::DiskLost`] if its records are
/// inconsistent.
pub(super) fn load_group(store: &Store, group: GroupId) -> Result<GroupState> {
    let lost = |reason: String| Error::DiskLost {
        dir: store.dir.clone(),
        reason: format!("group {group}: {reason}"),
    };
    let engine = &store.engine;
    let hard_state: HardState = engine
        .get_message(group, HARD_STATE_KEY)?
        .unwrap_or_default();
    let conf_state: ConfState = engine
        .get_message(group, CONF_STATE_KEY)?
        .unwrap_or_default();
    let snapshot: SnapshotMetadata = engine.get_message(group, SNAPSHOT_KEY)?.unwrap_or_default();
    let rejoin = match engine.get(group, REJOIN_KEY) {
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
    if let (Some(first), Some(last)) = (engine.first_index(group), engine.last_index(group)) {
        if first != state.snapshot.index + 1 {
            return Err(lost(format!(
                "log starts at {first} but the snapshot ends at {}",
                state.snapshot.index
            )));
        }
        let terms = &mut state.terms;
        store.cache.read(|| -> Result<()> {
            let mut low = first;
            while low <= last {
                let high = (low + LOAD_CHUNK).min(last + 1);
                let mut entries = Vec::new();
                engine
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
    if snapshot_index > 0 && !store.snapshots.path(group, snapshot_index).exists() {
        return Err(lost(format!(
            "snapshot at index {snapshot_index} is recorded but its file is missing"
        )));
    }
    store
        .snapshots
        .remove(group, (snapshot_index > 0).then_some(snapshot_index))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt as _;
    use std::path::PathBuf;

    use raft_engine::LogBatch;

    use super::*;
    use crate::storage::marker;
    use crate::storage::testing::{entries, entry, hard_state};
    use crate::storage::StoreConfig;

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
        marker.write_all_at(&marker::encode(19), 0).unwrap();
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
}
