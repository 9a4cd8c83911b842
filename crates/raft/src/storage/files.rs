//! File-system helpers every part of the store shares: I/O errors that name the path they
//! failed on, and the directory fsync that makes a created or renamed file survive a crash.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Turns an I/O error into an [`Error::Io`] saying what failed on which path.
pub(super) fn io_err<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a directory so a file created or renamed in it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}
