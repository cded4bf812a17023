//! Writing a file so that after a crash it is either wholly there, with
//! the mode asked for, or not there at all: a temporary file beside it
//! (created exclusively with that mode, so it is never readable by others
//! and never follows a planted link), fsync, rename (or link, when an
//! existing file must not be replaced), fsync of the directory. On any
//! error the temporary file is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How [`AtomicWrite::write`] writes.
#[derive(Debug, Clone, Copy)]
pub struct AtomicWrite {
    mode: u32,
    replace: bool,
    drop_cache: bool,
}

impl AtomicWrite {
    /// Writes with `mode` (exactly: the umask does not narrow it),
    /// replacing any file already there.
    pub fn new(mode: u32) -> AtomicWrite {
        AtomicWrite {
            mode,
            replace: true,
            drop_cache: false,
        }
    }

    /// Refuses (`AlreadyExists`) when the target exists, also if it
    /// appears while the file is written.
    pub fn no_replace(self) -> AtomicWrite {
        AtomicWrite {
            replace: false,
            ..self
        }
    }

    /// Drops the file's pages from the page cache once they are on disk:
    /// for files written once and rarely read soon.
    pub fn drop_cache(self) -> AtomicWrite {
        AtomicWrite {
            drop_cache: true,
            ..self
        }
    }

    pub fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.write_with(path, |out| out.write_all(data))
    }

    /// Writes what `fill` writes (buffered) to `path`.
    pub fn write_with<T, E: From<io::Error>>(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<T, E> {
        let (dir, name) = split(path)?;
        if !self.replace && std::fs::symlink_metadata(path).is_ok() {
            return Err(exists(path).into());
        }
        let (tmp, file) = create_temp(dir, name, self.mode)?;
        let result = (|| {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let value = fill(&mut out)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            // The umask may have narrowed the mode given at creation.
            file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
            file.sync_all()?;
            if self.drop_cache {
                // Only advice: a file system without it loses nothing.
                let _ = nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            }
            if self.replace {
                std::fs::rename(&tmp, path)?;
            } else {
                // link(2) fails if the name exists: no race with a newcomer.
                std::fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => exists(path),
                    _ => e,
                })?;
                std::fs::remove_file(&tmp)?;
            }
            sync_dir(dir)?;
            Ok(value)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn exists(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{} already exists; not overwriting it", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file name", path.display()),
        )
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// A directory only its owner can enter (0700 whatever the umask), made
/// with its parents if missing.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A new file `.NAME.tmp-…` in `dir`, created exclusively (`O_EXCL`: never
/// an existing file, never through a planted link) with `mode`.
pub fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Makes a rename in `dir` durable. A file system that cannot sync a
/// directory (some network shares answer EINVAL or ENOTSUP) is taken as done.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lifeboat-os-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn a_file_appears_whole_with_its_mode_or_not_at_all() {
        let dir = scratch("atomic");
        let path = dir.join("key.pem");
        AtomicWrite::new(0o600).write(&path, b"one").unwrap();
        AtomicWrite::new(0o600).write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let failed: Result<(), io::Error> =
            AtomicWrite::new(0o644).write_with(&dir.join("half"), |out| {
                out.write_all(b"partial")?;
                Err(io::Error::other("source broke"))
            });
        assert!(failed.is_err());
        assert_eq!(names(&dir), ["key.pem"], "no half file, no temp file");

        let err = AtomicWrite::new(0o644)
            .no_replace()
            .write(&path, b"three")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        AtomicWrite::new(0o644)
            .no_replace()
            .drop_cache()
            .write(&dir.join("new"), b"x")
            .unwrap();
        assert_eq!(names(&dir), ["key.pem", "new"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_link_at_the_target_is_replaced_not_followed() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.join("state.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        AtomicWrite::new(0o600).write(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
