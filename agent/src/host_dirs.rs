//! The host directories the agent works in: where VM disks may be written
//! (`--image-dir`, reported to the controller) and its private scratch
//! directory (`STATE_DIR/tmp`, 0700), where temporary files are created
//! exclusively and removed when dropped, never at guessable paths in a
//! shared `/tmp`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lifeboat_os::durable::{create_temp, private_dir};

/// libvirt's default storage pool.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/libvirt/images";

static IMAGE_DIRS: OnceLock<Vec<String>> = OnceLock::new();
static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// Sets the image directories and prepares the scratch directory (made
/// 0700; files left by an earlier run are removed). Call once at start.
pub fn init(image_dirs: &[PathBuf], state_dir: &Path) -> io::Result<()> {
    let dirs = image_dirs
        .iter()
        .map(|d| d.to_string_lossy().trim_end_matches('/').to_string())
        .filter(|d| !d.is_empty())
        .collect();
    let _ = IMAGE_DIRS.set(dirs);
    let scratch = state_dir.join("tmp");
    private_dir(&scratch)?;
    for entry in std::fs::read_dir(&scratch)?.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let _ = SCRATCH.set(scratch);
    Ok(())
}

/// Where VM disks may be written on this host.
pub fn image_dirs() -> Vec<String> {
    IMAGE_DIRS
        .get()
        .cloned()
        .unwrap_or_else(|| vec![DEFAULT_IMAGE_DIR.to_string()])
}

/// Whether a disk path lies in one of the image directories.
pub fn in_image_dirs(path: &str) -> bool {
    lifeboat_os::paths::path_within(path, &image_dirs())
}

/// A private temporary file, removed when dropped.
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    /// A new file holding `contents`, created exclusively (O_EXCL) with
    /// mode 0600 in the scratch directory.
    pub fn with_contents(prefix: &str, contents: &[u8]) -> io::Result<ScratchFile> {
        let dir = match SCRATCH.get() {
            Some(dir) => dir.clone(),
            None => {
                // Tests and tools that skipped `init`: still private.
                let dir = std::env::temp_dir().join("lifeboat-agent");
                private_dir(&dir)?;
                dir
            }
        };
        let (path, mut file) = create_temp(&dir, prefix, 0o600)?;
        let scratch = ScratchFile(path);
        file.write_all(contents)?;
        Ok(scratch)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_files_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let a = ScratchFile::with_contents("x", b"<domain/>").unwrap();
        let b = ScratchFile::with_contents("x", b"").unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::read(a.path()).unwrap(), b"<domain/>");
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(a.path().parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn disks_go_only_into_image_directories() {
        assert!(in_image_dirs("/var/lib/libvirt/images/web01.qcow2"));
        assert!(!in_image_dirs("/etc/passwd"));
        assert!(!in_image_dirs(
            "/var/lib/libvirt/images/../../../etc/passwd"
        ));
    }
}
