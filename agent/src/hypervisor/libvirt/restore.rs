//! Restores onto a libvirt host: the checks that must pass before any byte
//! is written, and the final define once every image is complete.

use std::path::{Path, PathBuf};

use lifeboat_proto::{PowerState, RestoreRequest};
use roxmltree::Document;

use super::{is_uuid, LibvirtDriver};
use crate::hypervisor::{HypervisorError, Restorer};

fn refused(msg: impl Into<String>) -> HypervisorError {
    HypervisorError::Refused(msg.into())
}

/// Networks and bridges the definition's interfaces attach to.
fn attachments(config: &str) -> Result<(Vec<String>, Vec<String>), HypervisorError> {
    let doc =
        Document::parse(config).map_err(|e| HypervisorError::Parse(format!("domain XML: {e}")))?;
    let (mut networks, mut bridges) = (Vec::new(), Vec::new());
    for iface in doc.descendants().filter(|n| n.has_tag_name("interface")) {
        let source = iface.children().find(|n| n.has_tag_name("source"));
        match (iface.attribute("type"), source) {
            (Some("network"), Some(s)) => networks.extend(s.attribute("network").map(String::from)),
            (Some("bridge"), Some(s)) => bridges.extend(s.attribute("bridge").map(String::from)),
            _ => {}
        }
    }
    Ok((networks, bridges))
}

impl LibvirtDriver {
    /// `virsh define` of `config`, through a private scratch file.
    pub(super) fn define_from(&self, config: &str) -> Result<(), HypervisorError> {
        let file = crate::host_dirs::ScratchFile::with_contents("domain.xml", config.as_bytes())
            .map_err(|e| HypervisorError::Command {
                command: "write domain XML".into(),
                message: e.to_string(),
            })?;
        self.virsh(&["define", "--file", &file.path().to_string_lossy()])
            .map(drop)
    }

    /// The disk files of an existing domain, to allow replacing them.
    fn disk_files(&self, uuid: &str) -> Vec<String> {
        self.virsh_on(uuid, "domblklist", &["--details"])
            .map(|out| {
                out.lines()
                    .filter_map(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        (cols.len() == 4 && cols[0] == "file").then(|| cols[3].to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Restorer for LibvirtDriver {
    fn check_restore(&self, r: &RestoreRequest) -> Result<(), HypervisorError> {
        if !is_uuid(&r.uuid) {
            return Err(refused(format!("invalid UUID {:?}", r.uuid)));
        }
        let mut replaceable = Vec::new();
        match self.domstate(&r.uuid) {
            Ok(state) if !r.replace => {
                return Err(refused(format!(
                    "a VM with UUID {} already exists on this host ({}); restore it as a new VM, or replace it",
                    r.uuid,
                    state.as_str()
                )))
            }
            Ok(PowerState::Stopped) => replaceable = self.disk_files(&r.uuid),
            Ok(_) => return Err(refused(format!("VM {} must be stopped before it is replaced", r.uuid))),
            Err(HypervisorError::UnknownVm(_)) => {}
            Err(e) => return Err(e),
        }
        if let Ok(out) = self.virsh(&["domuuid", "--domain", &r.name]) {
            if out.trim() != r.uuid {
                return Err(refused(format!(
                    "a VM named {:?} already exists on this host",
                    r.name
                )));
            }
        }
        let (networks, bridges) = attachments(&r.config)?;
        for n in networks {
            if self.virsh(&["net-info", "--network", &n]).is_err() {
                return Err(refused(format!(
                    "this host has no network {n:?}, which the VM needs"
                )));
            }
        }
        for b in bridges {
            if !Path::new("/sys/class/net").join(&b).exists() {
                return Err(refused(format!(
                    "this host has no bridge {b:?}, which the VM needs"
                )));
            }
        }
        let outside = |path: &str| {
            refused(format!(
                "{path:?} is outside this host's image directories ({}); start the agent with --image-dir to add one",
                crate::host_dirs::image_dirs().join(", ")
            ))
        };
        if let Some(drive) = &r.config_drive {
            if !crate::host_dirs::in_image_dirs(&drive.path) {
                return Err(outside(&drive.path));
            }
            if Path::new(&drive.path).exists() {
                return Err(refused(format!("config drive {} exists", drive.path)));
            }
        }
        for d in &r.disks {
            if !crate::host_dirs::in_image_dirs(&d.path) {
                return Err(outside(&d.path));
            }
            if Path::new(&d.path).exists() && !replaceable.contains(&d.path) {
                return Err(refused(format!(
                    "{} already exists; it is not overwritten",
                    d.path
                )));
            }
        }
        Ok(())
    }

    fn define_restored(
        &self,
        r: &RestoreRequest,
        images: &[(PathBuf, String)],
    ) -> Result<(), HypervisorError> {
        let io = |what: &str, e: std::io::Error| HypervisorError::Command {
            command: what.to_string(),
            message: e.to_string(),
        };
        if r.replace && self.domstate(&r.uuid).is_ok() {
            self.virsh_on(&r.uuid, "undefine", &["--checkpoints-metadata"])?;
        }
        for (temp, path) in images {
            std::fs::rename(temp, path).map_err(|e| io("move restored image into place", e))?;
        }
        self.define_from(&r.config)?;
        if r.start {
            self.virsh_on(&r.uuid, "start", &[])?;
        }
        Ok(())
    }

    fn start_instant(&self, r: &RestoreRequest) -> Result<(), HypervisorError> {
        self.start_instant_vm(r)
    }

    fn copy_instant_disk(
        &self,
        uuid: &str,
        target: &str,
        bandwidth_mib: Option<u64>,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(), HypervisorError> {
        self.copy_disk(uuid, target, bandwidth_mib, progress)
    }

    fn finish_instant(&self, r: &RestoreRequest) -> Result<(), HypervisorError> {
        self.finish_instant_vm(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_networks_and_bridges() {
        let xml = "<domain><devices>\
            <interface type='network'><source network='default'/></interface>\
            <interface type='bridge'><source bridge='br0'/></interface>\
            <interface type='user'/></devices></domain>";
        let (n, b) = attachments(xml).unwrap();
        assert_eq!(
            (n, b),
            (vec!["default".to_string()], vec!["br0".to_string()])
        );
    }
}
