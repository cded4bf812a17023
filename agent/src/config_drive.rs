//! Config drives: the small ISO 9660 image, volume label `cidata`, that
//! carries a restored-as-new VM's identity to cloud-init (NoCloud) or
//! cloudbase-init. Guarantees: both the primary and the Joliet volume are
//! labelled `cidata`, file names survive exactly through Joliet (Windows) and
//! Rock Ridge (Linux), and the image appears complete or not at all.

use std::collections::BTreeMap;

use std::io::Cursor;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::rrip::RripOptions;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};

/// The label both cloud-init (`fs_label`, matched case-insensitively) and
/// cloudbase-init (`NoCloudConfigDriveService`) look for.
const VOLUME_LABEL: &str = "cidata";
/// Joliet stores at most 64 UCS-2 characters per name.
const MAX_NAME_CHARS: usize = 64;
/// A config drive holds a few kilobytes of YAML; anything near this is a bug.
const MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;

/// Writes `files` (name → contents, all in the root directory) to `path` as a
/// `cidata` ISO image, atomically (temp file, fsync, rename), mode 0644 so
/// QEMU can read it whichever user it runs as.
pub fn write_config_drive(path: &Path, files: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let image = build_image(files)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    lifeboat_os::durable::AtomicWrite::new(0o644)
        .write(path, &image)
        .with_context(|| format!("writing config drive {}", path.display()))
}

/// The ISO image in memory: a config drive is a few sectors.
fn build_image(files: &BTreeMap<String, String>) -> anyhow::Result<Vec<u8>> {
    let mut total = 0usize;
    for (name, contents) in files {
        check_name(name)?;
        total += contents.len();
    }
    if total > MAX_TOTAL_BYTES {
        bail!("config drive files total {total} bytes; at most {MAX_TOTAL_BYTES} allowed");
    }
    let input = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: files
            .iter()
            .map(|(name, contents)| IsoFile::File {
                name: Arc::new(name.clone()),
                contents: contents.as_bytes().to_vec(),
            })
            .collect(),
    };
    let options = IsoFormatOptions {
        volume_name: VOLUME_LABEL.to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: None,
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        // Plain ISO 9660 names are upper-case 8.3 (`META_DAT`); the real
        // names come from Rock Ridge, which Linux prefers, and Joliet, which
        // Windows reads. Both are written, as `genisoimage -J -R` would.
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level1 {
                supports_lowercase: false,
                supports_rrip: true,
            },
            joliet: Some(JolietLevel::Level3),
            rock_ridge: Some(RripOptions::default()),
            ..CreationFeatures::default()
        },
        // Not strict: the label stays lower-case `cidata`, as genisoimage
        // writes it; a strict writer would upper-case it.
        strict_charset: false,
    };
    let out = IsoImageWriter::create(Cursor::new(Vec::new()), input, options)
        .map_err(|e| anyhow::anyhow!("building the config drive image: {e}"))?;
    Ok(out.into_inner())
}

/// A name that Joliet and Rock Ridge both carry unchanged in the root.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "config drive file name {name:?} must be 1 to {MAX_NAME_CHARS} characters of \
             letters, digits, '-', '_' and '.'"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new() -> Scratch {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "lifeboat-config-drive-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        files.insert(
            "meta-data".to_string(),
            "instance-id: \"0b9f2c1e-6c4e-4f43-9a57-3f1d2a7c9e10\"\nlocal-hostname: \"web2\"\n"
                .to_string(),
        );
        files.insert(
            "user-data".to_string(),
            "#cloud-config\nhostname: \"web2\"\npreserve_hostname: false\n".to_string(),
        );
        files
    }

    /// Runs an independent reader. CI must have it (package `genisoimage`):
    /// a config drive checked only by the library that wrote it proves little.
    fn isoinfo(args: &[&str], image: &Path) -> String {
        let out = Command::new("isoinfo")
            .args(args)
            .arg("-i")
            .arg(image)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "isoinfo is needed to check config drives (apt-get install genisoimage): {e}"
                )
            });
        assert!(
            out.status.success(),
            "isoinfo {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn config_drive_reads_back_with_isoinfo_and_blkid() {
        let dir = Scratch::new();
        let image = dir.0.join("vm-cidata.iso");
        let files = sample();
        write_config_drive(&image, &files).expect("write config drive");

        let mode = std::fs::metadata(&image)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "vm-cidata.iso")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

        let info = isoinfo(&["-d"], &image);
        assert!(info.contains("Volume id: cidata\n"), "{info}");
        assert!(info.contains("Joliet with UCS level 3"), "{info}");
        assert!(info.contains("Rock Ridge signatures"), "{info}");
        for (name, contents) in &files {
            let joliet = isoinfo(&["-J", "-x", &format!("/{name}")], &image);
            assert_eq!(&joliet, contents, "Joliet {name}");
            let rock_ridge = isoinfo(&["-R", "-x", &format!("/{name}")], &image);
            assert_eq!(&rock_ridge, contents, "Rock Ridge {name}");
        }
        let listing = isoinfo(&["-J", "-f"], &image);
        assert_eq!(listing, "/meta-data\n/user-data\n");

        // blkid reads the label the way udev (and so cloud-init) sees it.
        if let Ok(out) = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "LABEL"])
            .arg(&image)
            .output()
        {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cidata");
        }
    }

    #[test]
    fn config_drive_replaces_an_older_image_whole() {
        let dir = Scratch::new();
        let image = dir.0.join("vm-cidata.iso");
        write_config_drive(&image, &sample()).expect("first");
        let mut files = sample();
        files.insert("network-config".to_string(), "version: 2\n".to_string());
        write_config_drive(&image, &files).expect("second");
        let listing = isoinfo(&["-J", "-f"], &image);
        assert_eq!(listing, "/meta-data\n/network-config\n/user-data\n");
    }

    #[test]
    fn config_drive_refuses_unsafe_names_and_leaves_nothing() {
        let dir = Scratch::new();
        let image = dir.0.join("x.iso");
        for bad in ["", "..", "a/b", "sp ace", &"n".repeat(65)] {
            let mut files = sample();
            files.insert(bad.to_string(), String::new());
            let err = write_config_drive(&image, &files).expect_err(bad);
            assert!(format!("{err:#}").contains("file name"), "{err:#}");
        }
        assert!(!image.exists());
    }
}
