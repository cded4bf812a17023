//! Whether a path stays inside given directories, decided on the text
//! alone (nothing is resolved on disk).

use std::path::{Component, Path};

/// Whether `path` is absolute, plain (no `..`, no NUL) and strictly inside
/// one of `dirs`.
pub fn path_within(path: &str, dirs: &[impl AsRef<str>]) -> bool {
    let p = Path::new(path);
    let plain = p.is_absolute()
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    plain
        && dirs.iter().any(|d| {
            let d = d.as_ref().trim_end_matches('/');
            !d.is_empty() && p.starts_with(d) && p != Path::new(d)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_and_inside() {
        let dirs = ["/srv/vms/"];
        assert!(path_within("/srv/vms/a.qcow2", &dirs));
        assert!(path_within("/srv/vms/sub/a.qcow2", &dirs));
        assert!(!path_within("/srv/vms", &dirs), "the directory itself");
        assert!(!path_within("/srv/vmsX/a", &dirs));
        assert!(!path_within("/srv/vms/../etc/passwd", &dirs));
        assert!(!path_within("srv/vms/a", &dirs));
        assert!(!path_within("/srv/vms/a\0", &dirs));
        assert!(!path_within("/etc/passwd", &[""]));
    }
}
