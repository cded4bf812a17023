//! What the export writes, as SQL and as rows: the tables (built from the
//! metric catalog, so a new archived metric is a new pair of columns), the
//! inventory rows and the difference between what the database holds and
//! what the controller knows. Pure; `docs/sql-export.md` is its prose.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::types::Type;

use crate::inventory::categories::Categories;
use crate::metrics::catalog::Kind;

/// Written into `lifeboat_export_state`; a database holding another
/// version is refused rather than written in a shape it does not expect.
pub const SCHEMA_VERSION: i32 = 1;

/// The sample table of a kind and the name of its object column.
pub fn sample_table(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Host => ("lifeboat_host_samples", "host_id"),
        Kind::Vm => ("lifeboat_vm_samples", "vm_uuid"),
    }
}

/// The stage a transaction copies into before merging; temporary.
pub fn stage_table(table: &str) -> String {
    format!("{table}_stage")
}

/// The value columns of a kind's sample table, in archive order: for each
/// archived metric `KEY_avg` then `KEY_max`.
pub fn sample_columns(kind: Kind) -> Vec<String> {
    kind.metrics()
        .iter()
        .filter(|m| m.archived)
        .flat_map(|m| [format!("{}_avg", m.key), format!("{}_max", m.key)])
        .collect()
}

const INVENTORY_DDL: &str = "
CREATE TABLE IF NOT EXISTS lifeboat_export_state (
    id integer PRIMARY KEY CHECK (id = 1),
    schema_version integer NOT NULL,
    metrics_through timestamptz,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS lifeboat_hosts (
    host_id text PRIMARY KEY,
    name text NOT NULL,
    address text NOT NULL,
    status text NOT NULL,
    agent_version text NOT NULL,
    hypervisor text NOT NULL,
    cpus integer NOT NULL,
    memory_bytes bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    removed_at timestamptz
);
CREATE TABLE IF NOT EXISTS lifeboat_vms (
    vm_uuid text PRIMARY KEY,
    name text NOT NULL,
    host_id text NOT NULL,
    power_state text NOT NULL,
    vcpus integer NOT NULL,
    memory_bytes bigint NOT NULL,
    disk_bytes bigint NOT NULL,
    categories jsonb NOT NULL,
    updated_at timestamptz NOT NULL,
    removed_at timestamptz
);
CREATE TABLE IF NOT EXISTS lifeboat_inventory_changes (
    change_id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    object_id text NOT NULL,
    change text NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS lifeboat_inventory_changes_object
    ON lifeboat_inventory_changes (kind, object_id, at);
";

/// Everything the export needs in the database, idempotent.
pub fn ddl() -> String {
    let mut sql = INVENTORY_DDL.to_string();
    for kind in [Kind::Host, Kind::Vm] {
        let (table, id) = sample_table(kind);
        let values: String = sample_columns(kind)
            .iter()
            .map(|c| format!("    {c} double precision,\n"))
            .collect();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n    {id} text NOT NULL,\n    at timestamptz NOT NULL,\n{values}    PRIMARY KEY ({id}, at)\n);\n"
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO lifeboat_export_state (id, schema_version, updated_at) \
         VALUES (1, {SCHEMA_VERSION}, now()) ON CONFLICT (id) DO NOTHING;\n"
    ));
    sql
}

/// The session's temporary stages: emptied at every commit.
pub fn stage_ddl() -> String {
    let mut sql = String::new();
    for kind in [Kind::Host, Kind::Vm] {
        let (table, _) = sample_table(kind);
        sql.push_str(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {table}) ON COMMIT DELETE ROWS;\n",
            stage_table(table)
        ));
    }
    // An inventory stage: the record's columns and what happened to it.
    for table in ["lifeboat_hosts", "lifeboat_vms"] {
        let stage = stage_table(table);
        sql.push_str(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS;\n\
             ALTER TABLE {stage} DROP COLUMN IF EXISTS updated_at, DROP COLUMN IF EXISTS removed_at;\n\
             ALTER TABLE {stage} ADD COLUMN IF NOT EXISTS change text NOT NULL;\n"
        ));
    }
    sql
}

/// The record columns of `lifeboat_hosts` and `lifeboat_vms`, in the
/// order of [`HostRow`] and [`VmRow`] (the stages add `change`).
pub const HOST_COLUMNS: [&str; 9] = [
    "host_id",
    "name",
    "address",
    "status",
    "agent_version",
    "hypervisor",
    "cpus",
    "memory_bytes",
    "change",
];
pub const VM_COLUMNS: [&str; 9] = [
    "vm_uuid",
    "name",
    "host_id",
    "power_state",
    "vcpus",
    "memory_bytes",
    "disk_bytes",
    "categories",
    "change",
];

/// A stage's columns without `change`: the table's record columns.
pub fn record<'a>(columns: &'a [&'static str]) -> &'a [&'static str] {
    &columns[..columns.len() - 1]
}

pub fn host_types() -> [Type; 9] {
    use Type as T;
    [
        T::TEXT,
        T::TEXT,
        T::TEXT,
        T::TEXT,
        T::TEXT,
        T::TEXT,
        T::INT4,
        T::INT8,
        T::TEXT,
    ]
}

pub fn vm_types() -> [Type; 9] {
    use Type as T;
    [
        T::TEXT,
        T::TEXT,
        T::TEXT,
        T::TEXT,
        T::INT4,
        T::INT8,
        T::INT8,
        T::JSONB,
        T::TEXT,
    ]
}

/// The statements that merge the inventory stages into the tables and the
/// change log; `$1` is the time of the change.
pub fn merge_inventory() -> Vec<String> {
    let mut sql = Vec::new();
    for (table, columns, kind) in [
        ("lifeboat_hosts", &HOST_COLUMNS, "host"),
        ("lifeboat_vms", &VM_COLUMNS, "vm"),
    ] {
        let stage = stage_table(table);
        let record = record(columns);
        let id = record[0];
        let list = record.join(", ");
        let set: Vec<String> = record[1..]
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        sql.push(format!(
            "INSERT INTO {table} ({list}, updated_at, removed_at) \
             SELECT {list}, $1, NULL FROM {stage} WHERE change <> 'removed' \
             ON CONFLICT ({id}) DO UPDATE SET {}, updated_at = EXCLUDED.updated_at, removed_at = NULL",
            set.join(", ")
        ));
        sql.push(format!(
            "UPDATE {table} t SET removed_at = $1, updated_at = $1 FROM {stage} s \
             WHERE s.change = 'removed' AND t.{id} = s.{id}"
        ));
        sql.push(format!(
            "INSERT INTO lifeboat_inventory_changes (at, kind, object_id, change, record) \
             SELECT $1, '{kind}', {id}, change, to_jsonb(s) - 'change' FROM {stage} s"
        ));
    }
    sql
}

/// A host as the export shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub host_id: String,
    pub name: String,
    pub address: String,
    /// `online` or `offline`.
    pub status: String,
    pub agent_version: String,
    /// The driver and its version, e.g. `libvirt 9.0.0`.
    pub hypervisor: String,
    pub cpus: i32,
    pub memory_bytes: i64,
}

/// A VM as the export shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmRow {
    pub vm_uuid: String,
    pub name: String,
    pub host_id: String,
    pub power_state: String,
    pub vcpus: i32,
    pub memory_bytes: i64,
    /// The provisioned size of its disks.
    pub disk_bytes: i64,
    pub categories: Categories,
}

/// Hosts and VMs by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    pub hosts: BTreeMap<String, HostRow>,
    pub vms: BTreeMap<String, VmRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Changed => "changed",
            ChangeKind::Removed => "removed",
        }
    }
}

/// What changed from `old` to `new`, per kind; a removal carries the
/// record as it was last exported.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub hosts: Vec<(ChangeKind, &'a HostRow)>,
    pub vms: Vec<(ChangeKind, &'a VmRow)>,
}

impl Changes<'_> {
    pub fn len(&self) -> usize {
        self.hosts.len() + self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn diff_map<'a, V: PartialEq>(
    old: &'a BTreeMap<String, V>,
    new: &'a BTreeMap<String, V>,
) -> Vec<(ChangeKind, &'a V)> {
    let mut changes: Vec<(ChangeKind, &'a V)> = new
        .iter()
        .filter_map(|(k, v)| match old.get(k) {
            None => Some((ChangeKind::Added, v)),
            Some(o) if o != v => Some((ChangeKind::Changed, v)),
            Some(_) => None,
        })
        .collect();
    changes.extend(
        old.iter()
            .filter(|(k, _)| !new.contains_key(*k))
            .map(|(_, v)| (ChangeKind::Removed, v)),
    );
    changes
}

/// The changes that turn `old` (what the database holds) into `new`.
pub fn diff<'a>(old: &'a Inventory, new: &'a Inventory) -> Changes<'a> {
    Changes {
        hosts: diff_map(&old.hosts, &new.hosts),
        vms: diff_map(&old.vms, &new.vms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(uuid: &str, name: &str) -> VmRow {
        VmRow {
            vm_uuid: uuid.into(),
            name: name.into(),
            host_id: "h1".into(),
            power_state: "running".into(),
            vcpus: 2,
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
            categories: Categories::new(),
        }
    }

    #[test]
    fn the_difference_names_additions_changes_and_removals_once() {
        let mut old = Inventory::default();
        old.vms.insert("a".into(), vm("a", "alpha"));
        old.vms.insert("b".into(), vm("b", "beta"));
        old.vms.insert("c".into(), vm("c", "gamma"));
        let mut new = old.clone();
        new.vms.remove("a");
        new.vms.get_mut("b").unwrap().power_state = "shut off".into();
        new.vms.insert("d".into(), vm("d", "delta"));
        let changes = diff(&old, &new);
        let mut seen: Vec<(&str, &str)> = changes
            .vms
            .iter()
            .map(|(k, v)| (k.as_str(), v.vm_uuid.as_str()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [("added", "d"), ("changed", "b"), ("removed", "a")],
            "{changes:?}"
        );
        // The removal carries the record as the database had it.
        let removed = changes.vms.iter().find(|(k, _)| *k == ChangeKind::Removed);
        assert_eq!(removed.unwrap().1.name, "alpha");
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn every_archived_metric_has_an_average_and_a_maximum_column() {
        for kind in [Kind::Host, Kind::Vm] {
            let columns = sample_columns(kind);
            assert_eq!(columns.len(), 2 * kind.archived());
            let sql = ddl();
            let (table, id) = sample_table(kind);
            assert!(sql.contains(&format!("PRIMARY KEY ({id}, at)")));
            assert!(sql.contains(table));
            for c in &columns {
                assert!(sql.contains(&format!("    {c} double precision,")), "{c}");
            }
        }
    }

    #[test]
    fn the_documented_schema_names_every_table_and_column() {
        let doc = include_str!("../../../../docs/sql-export.md");
        for kind in [Kind::Host, Kind::Vm] {
            let (table, id) = sample_table(kind);
            assert!(doc.contains(table), "{table}");
            assert!(doc.contains(id), "{id}");
        }
        for m in Kind::Host.metrics().iter().chain(Kind::Vm.metrics()) {
            if m.archived {
                assert!(doc.contains(&format!("`{}`", m.key)), "{}", m.key);
            }
        }
        for line in INVENTORY_DDL.lines() {
            let Some(column) = line.split_whitespace().next() else {
                continue;
            };
            if line.starts_with("    ") && !line.contains(" ON ") {
                assert!(doc.contains(&format!("`{column}`")), "{column}");
            }
        }
    }
}
