//! Disk paths in a cached domain definition, rewritten for the host a VM
//! fails over to: each disk must sit on a shared storage the source host
//! mounts, and the destination must mount that storage too. Pure: XML in,
//! XML out, every other byte untouched.

use std::collections::BTreeMap;

/// Where one host mounts each shared storage (name → path).
pub type Mounts = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    #[error("domain XML: {0}")]
    Unparsable(#[from] roxmltree::Error),
    #[error("disk {0} is not on a shared storage of its host")]
    NotShared(String),
    #[error("the destination does not mount shared storage {0}")]
    NotMounted(String),
    #[error("cannot place {0} in XML")]
    Unquotable(String),
}

pub fn remap_disks(xml: &str, from: &Mounts, to: &Mounts) -> Result<String, RemapError> {
    let doc = roxmltree::Document::parse(xml)?;
    let mut edits = Vec::new();
    for source in doc
        .descendants()
        .filter(|n| n.has_tag_name("source") && n.parent().is_some_and(|p| p.has_tag_name("disk")))
    {
        let Some(attr) = source.attributes().find(|a| a.name() == "file") else {
            continue; // network or block disks are not file paths
        };
        let path = attr.value();
        let (storage, rest) = from
            .iter()
            .find_map(|(name, mount)| strip_mount(path, mount).map(|rest| (name, rest)))
            .ok_or_else(|| RemapError::NotShared(path.to_string()))?;
        let target = to
            .get(storage)
            .ok_or_else(|| RemapError::NotMounted(storage.clone()))?;
        let new_path = format!("{}/{rest}", target.trim_end_matches('/'));
        if new_path.contains(['\'', '"', '<', '&']) {
            return Err(RemapError::Unquotable(new_path));
        }
        edits.push((attr.range_value(), new_path));
    }
    let mut out = xml.to_string();
    for (range, value) in edits.into_iter().rev() {
        out.replace_range(range, &value);
    }
    Ok(out)
}

fn strip_mount<'a>(path: &'a str, mount: &str) -> Option<&'a str> {
    path.strip_prefix(mount.trim_end_matches('/'))?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain><name>db</name><devices>\
        <disk type='file' device='disk'><source file='/mnt/san-a/vms/db.qcow2'/><target dev='vda'/></disk>\
        <disk type='file' device='disk'><source file=\"/mnt/san-a/vms/log.qcow2\"/><target dev='vdb'/></disk>\
        <interface type='user'><source file='/not/a/disk'/></interface>\
        </devices></domain>";

    fn mounts(path: &str) -> Mounts {
        [("san".to_string(), path.to_string())].into()
    }

    #[test]
    fn disk_paths_move_to_the_destination_mount() {
        let out = remap_disks(XML, &mounts("/mnt/san-a/"), &mounts("/srv/san")).unwrap();
        assert!(
            out.contains("<source file='/srv/san/vms/db.qcow2'/>"),
            "{out}"
        );
        assert!(
            out.contains("<source file=\"/srv/san/vms/log.qcow2\"/>"),
            "{out}"
        );
        assert!(
            out.contains("<source file='/not/a/disk'/>"),
            "only disks move: {out}"
        );
    }

    #[test]
    fn local_disks_and_unmounted_storage_are_refused() {
        let e = remap_disks(XML, &mounts("/mnt/other"), &mounts("/srv/san")).unwrap_err();
        assert!(
            matches!(&e, RemapError::NotShared(p) if p == "/mnt/san-a/vms/db.qcow2"),
            "{e}"
        );
        let e = remap_disks(XML, &mounts("/mnt/san-a"), &Mounts::new()).unwrap_err();
        assert!(matches!(&e, RemapError::NotMounted(s) if s == "san"), "{e}");
        assert!(matches!(
            remap_disks("<domain", &Mounts::new(), &Mounts::new()),
            Err(RemapError::Unparsable(_))
        ));
        // A prefix of a longer directory name is not the mount.
        assert!(remap_disks(XML, &mounts("/mnt/san"), &mounts("/x")).is_err());
    }
}
