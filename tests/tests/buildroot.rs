//! The Buildroot external tree cannot be built here (a Buildroot build
//! downloads its sources); what can be checked is that it names nothing
//! that does not exist: every file it points at through
//! `BR2_EXTERNAL_LIFEBOAT_PATH`, every package it sources or includes, and
//! the scripts it runs, executable, and that it shares the appliance's
//! overlay and disk assembly with image/build rather than copies of them.

use std::path::{Path, PathBuf};

fn tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildroot")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read buildroot/").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every path written after `$(BR2_EXTERNAL_LIFEBOAT_PATH)/`,
/// `${BR2_EXTERNAL_LIFEBOAT_PATH}/` or `$BR2_EXTERNAL_LIFEBOAT_PATH/`.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("BR2_EXTERNAL_LIFEBOAT_PATH") {
        let rest = &text[at + "BR2_EXTERNAL_LIFEBOAT_PATH".len()..];
        let rest = rest.trim_start_matches([')', '}']);
        let Some(rest) = rest.strip_prefix('/') else {
            continue;
        };
        let path: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && !"\"'):;$".contains(*c))
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// The paths under `dir` matching `pattern`, whose segments may hold one
/// `*` each (as make's `wildcard` takes them).
fn glob(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    for segment in pattern.split('/') {
        let mut next = Vec::new();
        for base in &found {
            match segment.split_once('*') {
                None => {
                    let p = base.join(segment);
                    if p.exists() {
                        next.push(p);
                    }
                }
                Some((prefix, suffix)) => {
                    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with(prefix) && name.ends_with(suffix) {
                            next.push(entry.path());
                        }
                    }
                }
            }
        }
        found = next;
    }
    found
}

#[test]
fn every_file_the_buildroot_tree_names_exists() {
    let tree = tree();
    let mut checked = 0;
    for file in files_under(&tree) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for path in named_paths(&text) {
            assert!(
                !glob(&tree, &path).is_empty(),
                "{} names {path}, which does not exist",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} paths named: is the tree there?"
    );

    for required in [
        "external.desc",
        "external.mk",
        "Config.in",
        "configs/lifeboat_defconfig",
        "package/lifeboat/Config.in",
        "package/lifeboat/lifeboat.mk",
        "README.md",
    ] {
        assert!(
            tree.join(required).is_file(),
            "buildroot/{required} is missing"
        );
    }
    let desc = std::fs::read_to_string(tree.join("external.desc")).unwrap();
    assert!(desc.lines().any(|l| l.trim() == "name: LIFEBOAT"), "{desc}");

    // The scripts the defconfig runs are executable.
    use std::os::unix::fs::PermissionsExt;
    let defconfig = std::fs::read_to_string(tree.join("configs/lifeboat_defconfig")).unwrap();
    for key in [
        "BR2_ROOTFS_POST_BUILD_SCRIPT",
        "BR2_ROOTFS_POST_IMAGE_SCRIPT",
    ] {
        let line = defconfig
            .lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} is not set"));
        for path in named_paths(line) {
            let mode = std::fs::metadata(tree.join(&path))
                .unwrap()
                .permissions()
                .mode();
            assert!(mode & 0o111 != 0, "{path} is not executable");
        }
    }
    // One copy of the overlay, the boot files and the disk assembly.
    let overlay = defconfig
        .lines()
        .find(|l| l.starts_with("BR2_ROOTFS_OVERLAY="))
        .expect("an overlay");
    assert!(overlay.contains("/../image/rootfs"), "{overlay}");
    let post_image = std::fs::read_to_string(tree.join("board/lifeboat/post-image.sh")).unwrap();
    assert!(
        post_image.contains("image/assemble"),
        "post-image.sh does not use image/assemble"
    );
    assert!(
        !tree.join("board/lifeboat/rootfs").exists(),
        "a second copy of the overlay"
    );
}

#[test]
fn named_paths_are_found_in_every_spelling() {
    let text = "A=\"$(BR2_EXTERNAL_LIFEBOAT_PATH)/a/b.sh\" source \"$BR2_EXTERNAL_LIFEBOAT_PATH/c/Config.in\"\n\
                include ${BR2_EXTERNAL_LIFEBOAT_PATH}/d.mk $(sort $(wildcard $(BR2_EXTERNAL_LIFEBOAT_PATH)))";
    assert_eq!(named_paths(text), ["a/b.sh", "c/Config.in", "d.mk"]);
    let tree = tree();
    assert_eq!(glob(&tree, "package/*/*.mk").len(), 1);
    assert!(glob(&tree, "package/*/nothing.mk").is_empty());
}
