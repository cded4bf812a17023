//! Where a host keeps VM disks (the image directories its agent reports,
//! and the shared storages it mounts), and the check every definition and
//! disk path passes before it is sent there.

use lifeboat_proto::RestoreRequest;

use super::{Ops, OpsError};
use crate::inventory::definition::{check_definition, path_within, DefinitionRules};

/// libvirt's default storage pool: where a host keeps VM disks when its
/// agent reports nothing else (agents from before image directories).
const DEFAULT_IMAGE_DIR: &str = "/var/lib/libvirt/images";

impl Ops {
    /// The directories host `host_id` keeps VM disks in.
    pub(super) fn host_vm_storage(&self, host_id: &str) -> Vec<String> {
        let mut dirs = self
            .inventory
            .host(host_id)
            .map(|h| h.host.facts.image_dirs.clone())
            .unwrap_or_default();
        if dirs.is_empty() {
            dirs.push(DEFAULT_IMAGE_DIR.to_string());
        }
        dirs.extend(self.ha.host(host_id).storage_mounts.into_values());
        dirs
    }

    /// Refuses a definition for VM `name`/`uuid` that host `host_id` must
    /// not be sent (see `inventory::definition`).
    pub(super) fn check_definition_for(
        &self,
        host_id: &str,
        xml: &str,
        name: &str,
        uuid: &str,
        allow_passthrough: bool,
    ) -> Result<(), OpsError> {
        check_definition_in(
            &self.host_vm_storage(host_id),
            xml,
            name,
            uuid,
            allow_passthrough,
        )
    }

    /// Refuses a restore host `host_id` must not carry out: its definition
    /// (as [`Ops::check_definition_for`]), or a disk or config drive it
    /// would write outside its storage.
    pub(super) fn check_restore_for(
        &self,
        host_id: &str,
        request: &RestoreRequest,
        allow_passthrough: bool,
    ) -> Result<(), OpsError> {
        let dirs = self.host_vm_storage(host_id);
        check_definition_in(
            &dirs,
            &request.config,
            &request.name,
            &request.uuid,
            allow_passthrough,
        )?;
        let written = request.disks.iter().map(|d| &d.path);
        for path in written.chain(request.config_drive.iter().map(|c| &c.path)) {
            if !path_within(path, &dirs) {
                return Err(OpsError::BadRequest(format!(
                    "disk {path:?} is outside the host's VM storage ({}); start its agent with \
                     --image-dir for another directory",
                    dirs.join(", ")
                )));
            }
        }
        Ok(())
    }
}

fn check_definition_in(
    dirs: &[String],
    xml: &str,
    name: &str,
    uuid: &str,
    allow_passthrough: bool,
) -> Result<(), OpsError> {
    check_definition(
        xml,
        &DefinitionRules {
            name,
            uuid,
            disk_dirs: dirs,
            allow_passthrough,
        },
    )
    .map_err(|e| OpsError::BadRequest(e.to_string()))
}
