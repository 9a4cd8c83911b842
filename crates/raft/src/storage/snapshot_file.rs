//! Snapshot files: one checksummed file per group holding its newest snapshot (metadata and
//! state-machine bytes), written atomically beside the log.
//!
//! A snapshot lives in a file rather than in the log because it is as large as the group's
//! state machine (a shard's filters) and is replaced whole. Files are named by group and index
//! (`DIR/snap/G-I.snap`), so a new one never replaces the one the log's metadata points at
//! until the metadata moved on: a crash in between leaves a stray file, which the next load
//! of the group removes. Format: the magic `LBSNAP01`, a CRC32 of the body (u32
//! little-endian), and the body, the [`Snapshot`] message encoded by protobuf.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::files::{io_err, sync_dir};
use crate::error::{Error, Result};
use crate::GroupId;

/// First bytes of a snapshot file, so a stray file is never taken for one.
const SNAPSHOT_MAGIC: &[u8; 8] = b"LBSNAP01";

/// The snapshot files of one store: its `snap` directory.
#[derive(Debug)]
pub(super) struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// The snapshot files of the store in `store_dir`.
    pub(super) fn new(store_dir: &Path) -> SnapshotFiles {
        SnapshotFiles {
            dir: store_dir.join("snap"),
        }
    }

    /// The directory that holds them.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of group `group`'s snapshot at `index`.
    pub(super) fn path(&self, group: GroupId, index: u64) -> PathBuf {
        self.dir.join(format!("{group}-{index:020}.snap"))
    }

    /// Removes group `group`'s snapshot files (and leftover temporary files) except the one
    /// at index `keep`.
    pub(super) fn remove(&self, group: GroupId, keep: Option<u64>) -> Result<()> {
        let dir = &self.dir;
        let prefix = format!("{group}-");
        let keep = keep.map(|index| self.path(group, index));
        let mut removed = false;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let path = entry.map_err(io_err("list", dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&prefix) && Some(&path) != keep.as_ref() {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Writes a snapshot file atomically (temporary file, fsync, rename, fsync directory).
    pub(super) fn write(&self, group: GroupId, snapshot: &Snapshot) -> Result<()> {
        let path = self.path(group, snapshot.get_metadata().index);
        let tmp = path.with_extension("tmp");
        let body = snapshot
            .write_to_bytes()
            .expect("encoding a snapshot cannot fail");
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(SNAPSHOT_MAGIC)
            .and_then(|()| file.write_all(&crc32fast::hash(&body).to_le_bytes()))
            .and_then(|()| write_synced_in_chunks(&mut file, &body))
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)
    }

    /// Reads group `group`'s snapshot file for `meta` and verifies its checksum and metadata.
    pub(super) fn read(&self, group: GroupId, meta: &SnapshotMetadata) -> Result<Snapshot> {
        let path = self.path(group, meta.index);
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

/// Bytes of snapshot written between syncs: a sync of the log (same disk, and on ext4 the same
/// journal) then waits behind at most this much snapshot writeback, not a whole shard's.
const SYNC_CHUNK: usize = 8 << 20;

/// Writes `body` to `file`, syncing its data after every [`SYNC_CHUNK`] bytes.
fn write_synced_in_chunks(file: &mut File, body: &[u8]) -> std::io::Result<()> {
    for chunk in body.chunks(SYNC_CHUNK) {
        file.write_all(chunk)?;
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use raft::{Storage as _, StorageError};

    use super::*;
    use crate::storage::testing::{entries, hard_state};
    use crate::storage::{Persist, Store};

    #[test]
    fn corrupt_snapshot_is_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(1).unwrap();
        g.append(&entries(1..=5, 1)).unwrap();
        g.set_hard_state(&hard_state(1, 0, 5)).unwrap();
        g.compact(5, vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let path = store.snapshots.path(1, 5);
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
            store.snapshots.write(1, &stray).unwrap();
            g.load_snapshot().unwrap().unwrap()
        };
        let store = Store::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!(g.load_snapshot().unwrap().unwrap(), expected);
        assert_eq!(&expected.data[..], b"at 4");
        assert!(!store.snapshots.path(1, 8).exists(), "stray file removed");
        assert_eq!((g.first_index(), g.last_index()), (5, 10));
    }
}
