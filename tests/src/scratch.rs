//! Scratch directories under `$TMPDIR/lifeboat-e2e/`, one per controller,
//! agent or test. Removed on drop unless the test is failing or
//! `LIFEBOAT_E2E_KEEP=1`: then kept, and their path printed, for post-mortems.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a new, empty directory whose name starts with `label`.
    pub fn new(label: &str) -> ScratchDir {
        let root = std::env::temp_dir().join("lifeboat-e2e");
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        loop {
            let path = root.join(unique_name(label));
            match std::fs::create_dir(&path) {
                Ok(()) => return ScratchDir { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("LIFEBOAT_E2E_KEEP").is_some() {
            eprintln!("kept scratch directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `<label>-<pid>-<n>-<time>`: unique among the processes on this machine and
/// across runs; `label` is reduced to characters safe in any name we build.
pub(crate) fn unique_name(label: &str) -> String {
    format!("{}-{}", safe_label(label), unique_suffix())
}

/// `<pid>-<n>-<time>`, where `n` counts the calls in this process.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() % 1_000_000_000)
        .unwrap_or(0);
    format!("{}-{n}-{micros}", std::process::id())
}

/// Keeps ASCII letters, digits, `-` and `_`; anything else becomes `_`.
pub(crate) fn safe_label(label: &str) -> String {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "x".to_string()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_become_safe_names() {
        assert_eq!(safe_label("host a/../b"), "host_a____b");
        assert_eq!(safe_label(""), "x");
        let name = unique_name("vm 1");
        assert!(
            name.starts_with(&format!("vm_1-{}-", std::process::id())),
            "{name}"
        );
        assert_ne!(unique_name("a"), unique_name("a"));
    }
}
