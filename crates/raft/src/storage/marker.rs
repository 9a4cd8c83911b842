//! The sync marker: a 20-byte file beside the log holding the sequence number of the store's
//! last synced write, raised in place after every synced write. Recovery compares it with
//! what the log recovered to notice synced writes that raft-engine dropped (see
//! [`recovery`](super::recovery) for why it exists and what it can and cannot catch).
//!
//! Format: the magic `LBSYNC01`, the number (u64 little-endian), and a CRC32 of both.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::files::io_err;
use super::recovery;
use crate::error::Result;

/// First bytes of the sync marker, so a stray file is never taken for one.
const MARKER_MAGIC: &[u8; 8] = b"LBSYNC01";

/// The marker's name in the store's directory.
const MARKER_FILE: &str = "synced";

/// The sync marker of one store, open for raising.
#[derive(Debug)]
pub(super) struct SyncMarker {
    path: PathBuf,
    /// The number the file holds and the file, rewritten in place when a synced write raises
    /// it; the lock keeps the number (and the file) from going down.
    state: Mutex<(u64, File)>,
}

impl SyncMarker {
    /// Writes a new store's marker in `dir` at 0, synced (the caller syncs the directory).
    pub(super) fn create(dir: &Path) -> Result<()> {
        let path = dir.join(MARKER_FILE);
        let mut marker = File::create(&path).map_err(io_err("create", &path))?;
        marker
            .write_all(&encode(0))
            .and_then(|()| marker.sync_all())
            .map_err(io_err("write", &path))
    }

    /// Opens the marker of the store in `dir`. A missing or corrupt marker means the store
    /// cannot tell which writes were synced: [`Error::DiskLost`].
    pub(super) fn open(dir: &Path) -> Result<SyncMarker> {
        let path = dir.join(MARKER_FILE);
        let lost = recovery::lost(dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| lost(format!("sync marker {}: {e}", path.display())))?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut buf).map_err(io_err("read", &path))?;
        let synced = decode(&buf)
            .ok_or_else(|| lost(format!("sync marker {} is corrupt", path.display())))?;
        Ok(SyncMarker {
            path,
            state: Mutex::new((synced, file)),
        })
    }

    /// The number the marker holds: no write numbered above it is known to be synced.
    pub(super) fn synced(&self) -> u64 {
        self.state.lock().expect("marker lock poisoned").0
    }

    /// Raises the marker to `seq` (after write `seq` was synced), without fsync: after a
    /// process crash the page cache keeps it; after a power loss it may lag, which only
    /// weakens detection. Never lowers it.
    pub(super) fn raise(&self, seq: u64) -> Result<()> {
        let mut state = self.state.lock().expect("marker lock poisoned");
        if seq > state.0 {
            state
                .1
                .write_all_at(&encode(seq), 0)
                .map_err(io_err("write", &self.path))?;
            state.0 = seq;
        }
        Ok(())
    }
}

/// The marker's bytes for `seq`.
pub(super) fn encode(seq: u64) -> [u8; 20] {
    let mut buf = [0u8; 20];
    buf[..8].copy_from_slice(MARKER_MAGIC);
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&buf[..16]);
    buf[16..].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// The number in a marker's bytes, `None` unless they are a whole, intact marker.
fn decode(buf: &[u8]) -> Option<u64> {
    if buf.len() != 20 || &buf[..8] != MARKER_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(buf[16..20].try_into().ok()?);
    (crc32fast::hash(&buf[..16]) == crc).then(|| u64::from_le_bytes(buf[8..16].try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_decodes_to_its_number_and_damage_to_nothing() {
        let bytes = encode(42);
        assert_eq!(decode(&bytes), Some(42));
        for i in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[i] ^= 1;
            assert_eq!(decode(&damaged), None, "a flipped bit at byte {i}");
        }
        assert_eq!(decode(&bytes[..19]), None, "a short marker");
        assert_eq!(decode(b"garbage"), None);
    }

    #[test]
    fn a_marker_only_goes_up_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        SyncMarker::create(dir.path()).unwrap();
        let marker = SyncMarker::open(dir.path()).unwrap();
        assert_eq!(marker.synced(), 0);
        marker.raise(7).unwrap();
        marker.raise(5).unwrap();
        assert_eq!(marker.synced(), 7);
        drop(marker);
        assert_eq!(SyncMarker::open(dir.path()).unwrap().synced(), 7);
    }
}
