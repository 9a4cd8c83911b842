//! Scratch directories, removed when dropped.
//!
//! Tests that check logic (simulations, drivers, transports) put their stores on tmpfs, where
//! fsync is cheap; tests that check the disk or write much (process tests, disk bounds) put
//! them on the real disk, which is also where tmpfs is missing.

use std::path::Path;

use tempfile::TempDir;

/// Where tmpfs usually is on Linux.
const TMPFS: &str = "/dev/shm";

/// A directory on tmpfs when there is one (fsync is then cheap: the test checks logic, not the
/// disk), else on the disk.
pub fn scratch() -> TempDir {
    let tmpfs = Path::new(TMPFS);
    if tmpfs.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(tmpfs) {
            return dir;
        }
    }
    scratch_on_disk()
}

/// A directory in the system's temporary directory, on the disk: for what must be durable or
/// is too large for memory.
pub fn scratch_on_disk() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}
