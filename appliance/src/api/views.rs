//! JSON shapes of hosts, VMs and jobs, shared by every API response.

use serde_json::{json, Value};

use lifeboat_core::model::rfc3339;
use lifeboat_core::model::Job;
use lifeboat_core::model::Location;
use lifeboat_core::model::{HostView, Vm};
use lifeboat_core::ops::{BackupSummary, DatastoreView};

pub fn host_json(h: &HostView) -> Value {
    let f = &h.host.facts;
    json!({
        "id": h.host.id,
        "name": h.host.name,
        "status": h.status.as_str(),
        "hostname": f.hostname,
        "driver": f.driver,
        "hypervisor_version": f.hypervisor_version,
        "agent_version": h.host.agent_version,
        "cpus": f.cpus,
        "memory_total_bytes": f.memory_total_bytes,
        "memory_free_bytes": f.memory_free_bytes,
        "vm_count": h.vm_count,
        "enrolled_at": rfc3339(h.host.enrolled_at),
        "last_seen": rfc3339(h.host.last_seen),
    })
}

pub fn vm_json(vm: &Vm, host_name: &str, detail: bool) -> Value {
    let i = &vm.info;
    let mut v = json!({
        "id": i.uuid,
        "name": i.name,
        "host": vm.host_id,
        "host_name": host_name,
        "power_state": i.power_state.as_str(),
        "vcpus": i.vcpus,
        "memory_mib": i.memory_mib,
        "updated_at": rfc3339(vm.updated_at),
    });
    if detail {
        v["disks"] = json!(i.disks);
        v["nics"] = json!(i.nics);
        v["config"] = json!(i.config);
    }
    v
}

pub fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "kind": j.kind,
        "description": j.description,
        "vm": j.vm,
        "host": j.host,
        "user": j.user,
        "state": j.state.as_str(),
        "progress": {
            "percent": j.percent,
            "bytes_done": j.bytes_done,
            "bytes_total": j.bytes_total,
            "rate_bytes_per_sec": j.rate(),
            "eta_secs": j.eta_secs(),
        },
        "error": j.error,
        "created_at": rfc3339(j.created_at),
        "started_at": j.started_at.map(rfc3339),
        "finished_at": j.finished_at.map(rfc3339),
    })
}

pub fn backup_json(b: &BackupSummary, with_manifest: bool) -> Value {
    let m = &b.manifest;
    let mut v = json!({
        "id": b.reference.to_string(),
        "datastore": b.reference.datastore,
        "vm": m.vm.uuid.as_str(),
        "vm_name": m.vm.name,
        "time": m.backup.id.as_str(),
        "mode": m.backup.mode,
        "parent": m.backup.parent.as_ref().map(|p| p.as_str()),
        "started_at": rfc3339(m.backup.started_at),
        "finished_at": rfc3339(m.backup.finished_at),
        "bytes_read": m.backup.bytes_read,
        "bytes_new": m.backup.bytes_new,
        "size_bytes": m.disks.iter().map(|d| d.size_bytes).sum::<u64>(),
        "guest_frozen": m.backup.guest_frozen,
        "checkpoint": m.backup.checkpoint,
        "protected": b.protected,
        "verify": b.verify.as_ref().map(|v| json!({
            "time": rfc3339(v.time),
            "ok": v.ok,
            "damaged_chunks": v.damaged_count,
            "missing_chunks": v.missing_count,
            "error": v.error,
        })),
        "boot_verify": b.boot_verify.as_ref().map(|v| json!({
            "time": rfc3339(v.time),
            "ok": v.ok,
            "host": v.host,
            "signal": v.signal,
            "boot_secs": v.boot_secs,
            "detail": v.detail,
            "screenshot": v.screenshot.is_some(),
        })),
        "disks": m.disks.iter().map(|d| json!({
            "target": d.target, "format": d.format, "size_bytes": d.size_bytes, "chunks": d.chunk_count,
        })).collect::<Vec<_>>(),
    });
    if with_manifest {
        v["manifest"] = json!(m);
    }
    v
}

/// A datastore's JSON. The SMB password is never in it, sealed or not:
/// `"password": "********"` only says that one is set.
pub fn datastore_json(d: &DatastoreView) -> Value {
    let mut v = json!({
        "name": d.name,
        "kind": d.location.kind(),
        "path": d.path.to_string_lossy(),
        "built_in": d.built_in,
        "backups": d.backups,
        "reachable": d.capacity.is_ok(),
    });
    match &d.location {
        Location::Local { .. } => {}
        Location::Nfs {
            server,
            export,
            options,
        } => {
            v["server"] = json!(server);
            v["export"] = json!(export);
            v["options"] = json!(options);
        }
        Location::Smb {
            server,
            share,
            username,
            domain,
            options,
            password: _,
        } => {
            v["server"] = json!(server);
            v["share"] = json!(share);
            v["username"] = json!(username);
            v["password"] = json!("********");
            v["domain"] = json!(domain);
            v["options"] = json!(options);
        }
    }
    match &d.capacity {
        Ok(c) => {
            v["total_bytes"] = json!(c.total_bytes);
            v["free_bytes"] = json!(c.free_bytes);
            v["used_bytes"] = json!(c.total_bytes.saturating_sub(c.free_bytes));
        }
        Err(e) => v["error"] = json!(e),
    }
    v
}
