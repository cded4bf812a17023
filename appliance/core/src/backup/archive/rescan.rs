//! The drop directory: archives copied into it are imported once they have
//! settled, then filed under `done/` or `failed/`; none is ever deleted.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{import_archive, Result, ARCHIVE_EXTENSION};
use crate::backup::{fsync_dir, io_at, write_file_atomic, BackupId, Datastore, VmUuid};

/// `rescan` leaves files modified more recently alone: they may still be
/// being copied in (from tape, say).
pub const RESCAN_SETTLE_TIME: Duration = Duration::from_secs(60);

/// One archive `rescan` processed, and where it went.
#[derive(Debug)]
pub struct ImportResult {
    pub archive: PathBuf,
    /// In `done/` or `failed/` beside the archive.
    pub moved_to: PathBuf,
    pub outcome: Result<(VmUuid, BackupId)>,
}

/// Imports every `*.lbarchive` file in `drop_dir` (e.g. `<datastore>/import/`)
/// that has not been modified for [`RESCAN_SETTLE_TIME`], then moves it into
/// `done/` or `failed/` beside it; a failure gets a `<name>.error` text file
/// there. Archives are never deleted, and a moved one never replaces another.
pub fn rescan(store: &Datastore, drop_dir: &Path) -> Result<Vec<ImportResult>> {
    let entries = match fs::read_dir(drop_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(drop_dir)(e).into()),
    };
    let settled_before = SystemTime::now() - RESCAN_SETTLE_TIME;
    let mut archives = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(drop_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let candidate = !name.starts_with('.') && name.ends_with(&format!(".{ARCHIVE_EXTENSION}"));
        // symlink_metadata: a symlink in the drop dir is not followed.
        let meta = fs::symlink_metadata(entry.path()).map_err(io_at(&entry.path()))?;
        if candidate
            && meta.is_file()
            && meta.modified().map_err(io_at(&entry.path()))? < settled_before
        {
            archives.push((name, entry.path()));
        }
    }
    archives.sort();
    let mut results = Vec::new();
    for (name, path) in archives {
        let outcome = File::open(&path)
            .map_err(|e| io_at(&path)(e).into())
            .and_then(|f| import_archive(store, io::BufReader::with_capacity(1 << 20, f), &()));
        let to = drop_dir.join(if outcome.is_ok() { "done" } else { "failed" });
        fs::create_dir_all(&to).map_err(io_at(&to))?;
        let moved_name = (0..)
            .map(|n| match n {
                0 => name.clone(),
                n => format!("{name}.{n}"),
            })
            .find(|n| !to.join(n).exists() && !to.join(format!("{n}.error")).exists())
            .unwrap_or_default();
        if let Err(e) = &outcome {
            tracing::warn!(archive = %path.display(), "import failed: {e}");
            write_file_atomic(
                &to,
                &format!("{moved_name}.error"),
                format!("{e}\n").as_bytes(),
            )?;
        }
        let moved_to = to.join(&moved_name);
        fs::rename(&path, &moved_to).map_err(io_at(&moved_to))?;
        fsync_dir(&to)?;
        results.push(ImportResult {
            archive: path,
            moved_to,
            outcome,
        });
    }
    Ok(results)
}
