//! The SQL export: its settings (administrators without access policies
//! only, since the database receives the whole estate) and the background
//! task that keeps the database up to date.

use std::sync::Arc;
use std::time::Duration;

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::clock::unix_now;
use crate::metrics::archive::Layout;
use crate::metrics::catalog::Kind;
use crate::sql_export::schema::{self, HostRow, VmRow};
use crate::sql_export::session::Session;
use crate::sql_export::{SqlExportStatus, SqlState, SqlTarget, SqlTargetInput};

/// How often the database is brought up to date.
const EXPORT_PERIOD: Duration = Duration::from_secs(5);
/// Most minutes written in one transaction while catching up.
const MINUTES_PER_COMMIT: u64 = 30;
/// Longest wait between attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The target as shown: no password, only whether one is stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SqlTargetView {
    pub url: String,
    pub tls: crate::sql_export::SqlTls,
    pub ca_pem: String,
    pub enabled: bool,
    pub password_set: bool,
}

impl Ops {
    pub fn sql_export(
        &self,
        who: &Principal,
    ) -> Result<(Option<SqlTargetView>, SqlExportStatus), OpsError> {
        require(who, Privilege::Administer, "viewing the SQL export")?;
        let view = self.sql.target().map(|t| SqlTargetView {
            url: t.url,
            tls: t.tls,
            ca_pem: t.ca_pem,
            enabled: t.enabled,
            password_set: !t.password_sealed.is_empty(),
        });
        let mut status = self.sql.status();
        if let Some(through) = status.metrics_through {
            status.lag_minutes = self.metrics.written_before().saturating_sub(through / 60);
        }
        Ok((view, status))
    }

    /// Sets the database the estate is exported to; an empty password
    /// keeps the stored one.
    pub async fn set_sql_export(
        &self,
        who: &Principal,
        input: SqlTargetInput,
    ) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::Administer, "configuring the SQL export")?;
            super::require_unrestricted(who, "configuring the SQL export")?;
            input.validate().map_err(OpsError::BadRequest)?;
            let password_sealed = if input.password.is_empty() {
                self.sql
                    .target()
                    .map(|t| t.password_sealed)
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| OpsError::BadRequest("password: required".into()))?
            } else {
                self.secrets
                    .seal(&input.password)
                    .map_err(|e| OpsError::Internal(e.to_string()))?
            };
            let target = SqlTarget {
                url: input.url,
                tls: input.tls,
                ca_pem: input.ca_pem,
                enabled: input.enabled,
                password_sealed,
            };
            self.sql.set_target(Some(target)).await?;
            Ok(())
        }
        .await;
        self.audited(who, "set SQL export", "sql-export", result)
            .await
    }

    pub async fn delete_sql_export(&self, who: &Principal) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::Administer, "configuring the SQL export")?;
            super::require_unrestricted(who, "configuring the SQL export")?;
            if self.sql.target().is_none() {
                return Err(OpsError::NotFound("no SQL export is configured".into()));
            }
            self.sql.set_target(None).await?;
            Ok(())
        }
        .await;
        self.audited(who, "delete SQL export", "sql-export", result)
            .await
    }

    /// Keeps the configured database up to date, forever.
    pub(super) async fn sql_export_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let generation = self.sql.generation();
            let Some(target) = self.sql.target().filter(|t| t.enabled) else {
                self.sql.update(|s| *s = SqlExportStatus::default());
                self.sql.changed.notified().await;
                continue;
            };
            self.sql.update(|s| {
                s.state = SqlState::Connecting;
                s.retry_in_secs = None;
            });
            match self.sql_session(&target, generation).await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err((error, was_connected)) => {
                    if was_connected {
                        backoff = Duration::from_secs(1);
                    }
                    tracing::warn!("SQL export: {error}");
                    self.sql.update(|s| {
                        s.state = SqlState::Waiting;
                        s.error = Some(error);
                        s.error_at = Some(unix_now());
                        s.connected_since = None;
                        s.retry_in_secs = Some(backoff.as_secs());
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.sql.changed.notified() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection, until it fails (the error, and whether it had
    /// connected) or the target changes.
    async fn sql_session(&self, target: &SqlTarget, generation: u64) -> Result<(), (String, bool)> {
        let password = self
            .secrets
            .open(&target.password_sealed)
            .map_err(|e| (e.to_string(), false))?;
        let mut session = Session::open(target, &password)
            .await
            .map_err(|e| (e, false))?;
        let failed = |e: String| (e, true);
        self.sql.update(|s| {
            s.state = SqlState::Exporting;
            s.connected_since = Some(unix_now());
        });
        let mut exported = session.inventory().await.map_err(failed)?;
        let mut cursor = session
            .metrics_cursor(self.metrics.written_before())
            .await
            .map_err(failed)?;
        while self.sql.generation() == generation {
            session.check().await.map_err(failed)?;
            let current = self.export_inventory();
            let changes = schema::diff(&exported, &current);
            if !changes.is_empty() {
                let count = changes.len() as u64;
                session
                    .write_inventory(&changes, unix_now())
                    .await
                    .map_err(failed)?;
                self.sql.update(|s| s.inventory_changes += count);
            }
            exported = current;
            cursor = self
                .export_minutes(&mut session, cursor)
                .await
                .map_err(failed)?;
            self.sql.update(|s| {
                s.error = None;
                s.last_export_at = Some(unix_now());
                s.metrics_through = Some(cursor * 60);
            });
            tokio::select! {
                _ = tokio::time::sleep(EXPORT_PERIOD) => {}
                _ = self.sql.changed.notified() => {}
            }
        }
        Ok(())
    }

    /// Writes every finished minute from `cursor` on; the new cursor.
    async fn export_minutes(&self, session: &mut Session, mut cursor: u64) -> Result<u64, String> {
        let written_before = self.metrics.written_before();
        while cursor < written_before {
            // Minutes the minute archive no longer holds (a few to spare
            // for the ring turning meanwhile) are skipped.
            let kept = Layout::of(Kind::Host)
                .rows(0)
                .min(Layout::of(Kind::Vm).rows(0));
            let oldest = (unix_now() / 60).saturating_sub(kept - 5);
            let skip = cursor < oldest;
            let (to, rows) = if skip {
                (oldest, Vec::new())
            } else {
                let to = written_before.min(cursor + MINUTES_PER_COMMIT);
                (to, self.minute_rows(cursor, to).await?)
            };
            match session.write_minutes(cursor, to, &rows).await? {
                Some(inserted) => {
                    self.sql.update(|s| {
                        s.sample_rows += inserted;
                        if skip {
                            s.skipped_minutes += to - cursor;
                        }
                    });
                    cursor = to;
                }
                // Another controller moved it: continue from there.
                None => cursor = session.metrics_cursor(cursor).await?,
            }
        }
        Ok(cursor)
    }

    /// The stored rows of minutes `[from, to)` of every object.
    async fn minute_rows(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(crate::metrics::ObjectKey, u64, crate::metrics::archive::Row)>, String> {
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut rows = Vec::new();
            for object in metrics.objects_between(from * 60, to * 60) {
                let set = metrics
                    .rows_between(&object, 0, from * 60, to * 60)
                    .map_err(|e| format!("reading the metric archive: {e}"))?;
                for (i, row) in set.rows.into_iter().enumerate() {
                    if row.iter().any(Option::is_some) {
                        rows.push((object.clone(), set.start / 60 + i as u64, row));
                    }
                }
            }
            Ok(rows)
        })
        .await
        .map_err(|e| format!("reading the metric archive: {e}"))?
    }

    /// The whole inventory as the export shows it.
    fn export_inventory(&self) -> schema::Inventory {
        let mut inventory = schema::Inventory::default();
        for h in self.inventory.hosts() {
            let facts = &h.host.facts;
            let row = HostRow {
                host_id: h.host.id.clone(),
                name: h.host.name.clone(),
                address: h.host.address.clone(),
                status: h.status.as_str().to_string(),
                agent_version: h.host.agent_version.clone(),
                hypervisor: format!("{} {}", facts.driver, facts.hypervisor_version)
                    .trim()
                    .to_string(),
                cpus: i32::try_from(facts.cpus).unwrap_or(i32::MAX),
                memory_bytes: i64::try_from(facts.memory_total_bytes).unwrap_or(i64::MAX),
            };
            inventory.hosts.insert(row.host_id.clone(), row);
        }
        let categories = self.categorizer();
        self.inventory.with_vms(|vms| {
            for vm in vms {
                let row = VmRow {
                    vm_uuid: vm.info.uuid.clone(),
                    name: vm.info.name.clone(),
                    host_id: vm.host_id.clone(),
                    power_state: vm.info.power_state.as_str().to_string(),
                    vcpus: i32::try_from(vm.info.vcpus).unwrap_or(i32::MAX),
                    memory_bytes: i64::try_from(vm.info.memory_mib.saturating_mul(1 << 20))
                        .unwrap_or(i64::MAX),
                    disk_bytes: i64::try_from(vm.info.provisioned_disk_bytes()).unwrap_or(i64::MAX),
                    categories: categories(vm),
                };
                inventory.vms.insert(row.vm_uuid.clone(), row);
            }
        });
        inventory
    }
}
