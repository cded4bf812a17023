//! Every console form in one table: path, who may submit it and the
//! handler, together in one entry. The console checks the session's CSRF
//! token, then hides VMs outside the caller's scope (404), then the entry's
//! privilege (audited when refused) before the handler reads a field.
//! Operations check again. Access-control forms are in `admin_forms`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::{Response, StatusCode};
use lifeboat_core::model::{
    AsNew, ClusterHa, DatastoreInput, HostHa, HostProbe, MetricsSettings, PhysicalMachine,
    PhysicalState, PolicyBootVerify, Principal, Privilege, PruneOptions, SqlTargetInput, SqlTls,
    VmHa,
};
use lifeboat_core::ops::{BootVerifyOptions, Ops, OpsError, PolicyInput, RestoreOptions};
use lifeboat_proto::BootSignal;
use lifeboat_proto::{BackupMode, PowerAction};
use Privilege::*;

use super::layout::PageCtx;
use super::{
    admin_forms, alert_forms, field, ha_pages, html, log_pages, pages, set_cookie, snmp_pages,
    SESSION_COOKIE,
};
use crate::http::routing::{self, Entry, Guard};
use crate::http::{redirect, Body, Req};

/// A submitted form, handed to its entry's handler.
pub struct Submission<'a> {
    pub ops: &'a Arc<Ops>,
    pub who: &'a Principal,
    pub req: &'a Req,
    pub form: &'a [(String, String)],
    /// The session token (to end it on logout).
    pub session: &'a str,
    pub ctx: &'a PageCtx<'a>,
    pub entry: &'static FormEntry,
    pub segments: &'a [&'a str],
}

impl<'a> Submission<'a> {
    /// The path segment that stood for `{name}` in the entry's pattern.
    pub fn arg(&self, name: &str) -> &'a str {
        routing::arg(self.entry.path, self.segments, name)
    }

    pub fn field(&self, name: &str) -> Option<String> {
        field(self.form, name)
    }

    /// A field, trimmed; empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.field(name).unwrap_or_default().trim().to_string()
    }

    /// A field with something in it, as sent.
    pub fn non_empty(&self, name: &str) -> Option<String> {
        self.field(name).filter(|v| !v.trim().is_empty())
    }

    pub fn checked(&self, name: &str) -> bool {
        self.field(name).is_some()
    }
}

pub type FormReply = Result<Response<Body>, OpsError>;
pub type FormHandler =
    for<'a> fn(Submission<'a>) -> Pin<Box<dyn Future<Output = FormReply> + Send + 'a>>;

pub struct FormEntry {
    pub path: &'static str,
    pub guard: Guard,
    pub handler: FormHandler,
    /// The page the form is on (a pattern with the form's arguments): a
    /// refused submission shows it again, entries kept, reason at the field.
    pub page: Option<&'static str>,
}

impl FormEntry {
    /// The page to show a refusal on, its arguments filled in.
    pub fn page_path(&self, segments: &[&str]) -> Option<String> {
        let page = self.page?;
        let filled: Vec<&str> = routing::segments(page)
            .into_iter()
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => routing::arg(self.path, segments, name),
                    None => s,
                },
            )
            .collect();
        Some(format!("/{}", filled.join("/")))
    }
}

impl Entry for FormEntry {
    fn method(&self) -> &'static str {
        "POST"
    }
    fn path(&self) -> &'static str {
        self.path
    }
}

/// `form!("/path", guard => handler)`, where guard is `anyone` or a
/// privilege, optionally `on "/page"`: where a refusal is shown.
macro_rules! form {
    ($path:literal, anyone => $handler:path $(, on $page:literal)?) => {
        form!(@ $path, Guard::Anyone, $handler, [$($page)?])
    };
    ($path:literal, $privilege:ident => $handler:path $(, on $page:literal)?) => {
        form!(@ $path, Guard::Requires($privilege), $handler, [$($page)?])
    };
    (@ $path:literal, $guard:expr, $handler:path, [$($page:literal)?]) => {
        FormEntry {
            path: $path,
            guard: $guard,
            handler: |submission| Box::pin($handler(submission)),
            page: form!(@page $($page)?),
        }
    };
    (@page $page:literal) => { Some($page) };
    (@page) => { None };
}

pub static FORMS: &[FormEntry] = &[
    form!("/logout", anyone => logout),
    form!("/vms/{id}/power", Power => power),
    form!("/vms/{id}/backups", Backup => backup),
    form!("/policies", Backup => create_policy, on "/policies"),
    form!("/policies/{id}/run", Backup => run_policy),
    form!("/policies/{id}/delete", Backup => delete_policy),
    form!("/backups/{ref}/verify", Backup => verify),
    form!("/backups/{ref}/restore", Restore => restore),
    form!("/backups/{ref}/boot-verify", Restore => boot_verify),
    form!("/backups/{ref}/delete", DeleteBackup => delete_backup),
    form!("/datastores", ManageDatastores => add_datastore, on "/datastores"),
    form!("/vms/{id}/ha", ManageHa => set_vm_ha, on "/vms/{id}"),
    form!("/hosts/{id}/ha", ManageHa => set_host_ha, on "/hosts/{id}"),
    form!("/cluster/settings", ManageHa => set_cluster_ha, on "/cluster"),
    form!("/physical", ManageHa => add_physical_machine, on "/physical"),
    form!("/physical/{id}/failback", ManageHa => failback),
    form!("/agents/tokens", ManageHosts => issue_enrollment_token),
    form!("/monitoring/sampling", ManageHosts => set_sampling, on "/monitoring"),
    form!("/monitoring/sql-export", Administer => set_sql_export, on "/monitoring"),
    form!("/monitoring/sql-export/delete", Administer => delete_sql_export),
    form!("/alert-rules", Administer => alert_forms::create_rule, on "/alerts"),
    form!("/alert-rules/{id}/delete", Administer => alert_forms::delete_rule),
    form!("/alert-channels/{kind}", Administer => alert_forms::create_channel, on "/alerts"),
    form!("/alert-channels/{id}/test", Administer => alert_forms::test_channel),
    form!("/alert-channels/{id}/delete", Administer => alert_forms::delete_channel),
    form!("/logs/settings", Administer => log_pages::set_logging, on "/logs"),
    form!("/snmp/settings", Administer => snmp_pages::set_snmp, on "/snmp"),
    form!("/users", ManageUsers => admin_forms::create_user, on "/users"),
    form!("/users/{name}", ManageUsers => admin_forms::update_user),
    form!("/users/{name}/delete", ManageUsers => admin_forms::delete_user),
    form!("/roles", ManageUsers => admin_forms::create_role, on "/roles"),
    form!("/roles/{name}/delete", ManageUsers => admin_forms::delete_role),
    form!("/access-policies", ManageUsers => admin_forms::create_access_policy, on "/access-policies"),
    form!("/access-policies/{name}/delete", ManageUsers => admin_forms::delete_access_policy),
    form!("/category-rules", ManageUsers => admin_forms::add_category_rule, on "/access-policies"),
    form!("/category-rules/{id}/delete", ManageUsers => admin_forms::delete_category_rule),
    form!("/vms/{id}/categories", ManageUsers => admin_forms::set_vm_categories, on "/vms/{id}"),
    form!("/directories", ManageUsers => admin_forms::create_directory, on "/directories"),
    form!("/directories/{name}/delete", ManageUsers => admin_forms::delete_directory),
    form!("/tokens", anyone => admin_forms::create_token, on "/tokens"),
    form!("/tokens/{id}/delete", anyone => admin_forms::revoke_token),
];

fn bad(msg: &str) -> OpsError {
    OpsError::BadRequest(msg.to_string())
}

async fn logout(s: Submission<'_>) -> FormReply {
    s.ops.logout(s.who, s.session).await?;
    let mut r = redirect("/login");
    set_cookie(&mut r, SESSION_COOKIE, "", Some(0));
    Ok(r)
}

async fn power(s: Submission<'_>) -> FormReply {
    let id = s.arg("id");
    let action = s
        .field("action")
        .and_then(|a| PowerAction::parse(&a))
        .ok_or_else(|| bad("unknown power action"))?;
    let job = s.ops.power(s.who, id, action, None).await?;
    Ok(redirect(&format!("/vms/{id}?job={}", job.id)))
}

async fn backup(s: Submission<'_>) -> FormReply {
    let id = s.arg("id");
    let mode = match s.field("mode").as_deref() {
        Some("full") => BackupMode::Full,
        _ => BackupMode::Auto,
    };
    let job = s.ops.backup(s.who, id, None, mode).await?;
    Ok(redirect(&format!("/vms/{id}?job={}", job.id)))
}

async fn create_policy(s: Submission<'_>) -> FormReply {
    let number = |name: &str| s.field(name).and_then(|v| v.trim().parse::<u32>().ok());
    let input = PolicyInput {
        name: s.field("name").unwrap_or_default(),
        schedule: s.field("schedule").unwrap_or_default(),
        datastore: None,
        mode: None,
        vms: Vec::new(),
        name_pattern: s.non_empty("name_pattern"),
        category: s.non_empty("category"),
        retention: PruneOptions {
            keep_last: number("keep_last"),
            keep_daily: number("keep_daily"),
            keep_weekly: number("keep_weekly"),
            keep_monthly: number("keep_monthly"),
            ..Default::default()
        },
        verify_schedule: s.non_empty("verify_schedule"),
        boot_verify: s.checked("boot_verify").then(|| PolicyBootVerify {
            serial_line: s.non_empty("boot_serial_line"),
            timeout_secs: None,
        }),
        enabled: true,
    };
    s.ops.create_policy(s.who, input).await?;
    Ok(redirect("/policies"))
}

async fn run_policy(s: Submission<'_>) -> FormReply {
    let job = s.ops.run_policy(s.who, s.arg("id")).await?;
    Ok(redirect(&format!("/jobs/{}", job.id)))
}

async fn delete_policy(s: Submission<'_>) -> FormReply {
    s.ops.delete_policy(s.who, s.arg("id")).await?;
    Ok(redirect("/policies"))
}

async fn verify(s: Submission<'_>) -> FormReply {
    let job = s.ops.verify(s.who, s.arg("ref")).await?;
    Ok(redirect(&format!("/jobs/{}", job.id)))
}

async fn boot_verify(s: Submission<'_>) -> FormReply {
    let timeout_secs = match s.non_empty("timeout_secs") {
        None => None,
        Some(t) => Some(t.trim().parse().map_err(|_| {
            OpsError::BadRequest(format!("timeout {t:?} is not a number of seconds"))
        })?),
    };
    let options = BootVerifyOptions {
        host: s.field("host"),
        signal: s
            .non_empty("serial_line")
            .map(|text| BootSignal::SerialLine { text }),
        timeout_secs,
    };
    let job = s.ops.boot_verify(s.who, s.arg("ref"), options).await?;
    Ok(redirect(&format!("/jobs/{}", job.id)))
}

async fn delete_backup(s: Submission<'_>) -> FormReply {
    let reference = s.arg("ref");
    let vm = s.ops.backup_manifest(s.who, reference).await?.reference.vm;
    s.ops.delete_backup(s.who, reference).await?;
    Ok(redirect(&format!("/vms/{vm}")))
}

async fn restore(s: Submission<'_>) -> FormReply {
    let as_new = s.non_empty("new_name").map(|name| AsNew {
        name: name.trim().to_string(),
        computer_name: s.non_empty("computer_name"),
        domain: s.non_empty("domain"),
        hostname: s.non_empty("hostname"),
    });
    let instant = s.checked("instant");
    let bandwidth_mib = match s.non_empty("bandwidth_mib") {
        None => None,
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            OpsError::BadRequest("the copy's bandwidth must be a number of MiB/s".into())
        })?),
    };
    let options = RestoreOptions {
        replace: s.checked("replace") && as_new.is_none(),
        host: s.field("host"),
        start: s.checked("start") || instant,
        as_new,
        allow_passthrough: false,
        instant,
        bandwidth_mib,
    };
    let job = s.ops.restore(s.who, s.arg("ref"), options).await?;
    Ok(redirect(&format!("/jobs/{}", job.id)))
}

async fn add_datastore(s: Submission<'_>) -> FormReply {
    let input = DatastoreInput {
        name: s.field("name").unwrap_or_default(),
        kind: s.field("kind").unwrap_or_default(),
        path: s.non_empty("path"),
        server: s.non_empty("server"),
        export: s.non_empty("export"),
        share: s.non_empty("share"),
        username: s.non_empty("username"),
        password: s.non_empty("password"),
        domain: s.non_empty("domain"),
        options: s.non_empty("options"),
    };
    s.ops.add_datastore(s.who, input).await?;
    Ok(redirect("/datastores"))
}

async fn set_vm_ha(s: Submission<'_>) -> FormReply {
    let id = s.arg("id");
    let settings = VmHa {
        enabled: s.checked("enabled"),
        priority: serde_json::from_value(serde_json::json!(s.text("priority")))
            .map_err(|_| bad("priority: unknown priority"))?,
        anti_affinity_group: s.text("anti_affinity_group"),
        method: serde_json::from_value(serde_json::json!(s.text("method")))
            .map_err(|_| bad("method: unknown failover method"))?,
        probe_address: s.text("probe_address"),
    };
    s.ops.set_vm_ha(s.who, id, settings).await?;
    Ok(redirect(&format!("/vms/{id}")))
}

async fn set_host_ha(s: Submission<'_>) -> FormReply {
    let id = s.arg("id");
    let probe = match s.text("probe").as_str() {
        "tcp" => HostProbe::Tcp {
            port: s
                .text("port")
                .parse()
                .map_err(|_| bad("port: a TCP probe needs a port"))?,
        },
        _ => HostProbe::Icmp,
    };
    let settings = HostHa {
        probe,
        address: s.text("address"),
        // Empty keeps the command set; the checkbox removes it.
        fence_command: match (s.checked("clear_fence_command"), s.text("fence_command")) {
            (true, _) => Some(String::new()),
            (false, command) if command.is_empty() => None,
            (false, command) => Some(command),
        },
        fence_command_sealed: String::new(),
        storage_mounts: ha_pages::parse_pairs(&s.text("storage_mounts"))
            .map_err(OpsError::BadRequest)?,
    };
    s.ops.set_host_ha(s.who, id, settings).await?;
    Ok(redirect(&format!("/hosts/{id}")))
}

async fn set_cluster_ha(s: Submission<'_>) -> FormReply {
    let number = |name: &str| {
        s.text(name)
            .parse::<u64>()
            .map_err(|_| OpsError::BadRequest(format!("{name} must be a number")))
    };
    let settings = ClusterHa {
        heartbeat_interval_ms: number("heartbeat_interval_ms")?,
        misses: number("misses")? as u32,
        fence_timeout_ms: number("fence_timeout_ms")?,
        fence_margin_ms: number("fence_margin_ms")?,
        tolerated_host_failures: number("tolerated_host_failures")? as u32,
        shared_storages: ha_pages::parse_pairs(&s.text("shared_storages"))
            .map_err(OpsError::BadRequest)?,
        isolation_addresses: s
            .text("isolation_addresses")
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    };
    s.ops.set_cluster_ha(s.who, settings).await?;
    Ok(redirect("/cluster"))
}

async fn add_physical_machine(s: Submission<'_>) -> FormReply {
    let pm = PhysicalMachine {
        id: String::new(),
        name: s.text("name"),
        checks: ha_pages::parse_checks(&s.text("checks")).map_err(OpsError::BadRequest)?,
        failed_rounds: s.text("failed_rounds").parse().unwrap_or(3),
        interval_ms: 1000,
        standby_vm: s.text("standby_vm"),
        standby_host: s.text("standby_host"),
        state: PhysicalState::Monitoring,
    };
    s.ops.add_physical_machine(s.who, pm).await?;
    Ok(redirect("/physical"))
}

async fn failback(s: Submission<'_>) -> FormReply {
    s.ops
        .failback_physical(s.who, s.arg("id"), s.checked("confirm"))
        .await?;
    Ok(redirect("/physical"))
}

async fn issue_enrollment_token(s: Submission<'_>) -> FormReply {
    let issued = s.ops.issue_enrollment_token(s.who).await?;
    let pending = s.ops.pending_enrollment_tokens(s.who)?;
    Ok(html(
        StatusCode::OK,
        pages::agents(s.ctx, s.ops, &pending, Some(&issued), s.req),
    ))
}

async fn set_sampling(s: Submission<'_>) -> FormReply {
    let interval_secs = s
        .text("interval_secs")
        .parse()
        .map_err(|_| bad("interval_secs must be a whole number of seconds"))?;
    s.ops
        .set_metrics_settings(s.who, MetricsSettings { interval_secs })
        .await?;
    Ok(redirect("/monitoring"))
}

async fn set_sql_export(s: Submission<'_>) -> FormReply {
    let tls = match s.text("tls").as_str() {
        "disable" => SqlTls::Disable,
        _ => SqlTls::VerifyFull,
    };
    let input = SqlTargetInput {
        url: s.text("url"),
        password: s.field("password").unwrap_or_default(),
        tls,
        ca_pem: s.text("ca_pem"),
        enabled: s.checked("enabled"),
    };
    s.ops.set_sql_export(s.who, input).await?;
    Ok(redirect("/monitoring"))
}

async fn delete_sql_export(s: Submission<'_>) -> FormReply {
    s.ops.delete_sql_export(s.who).await?;
    Ok(redirect("/monitoring"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_is_listed_once() {
        routing::check_table(FORMS);
    }

    #[test]
    fn a_refusal_is_shown_on_the_page_the_form_is_on() {
        let entry = FORMS.iter().find(|e| e.path == "/vms/{id}/ha").unwrap();
        let segments = routing::segments("/vms/abc/ha");
        assert_eq!(entry.page_path(&segments).as_deref(), Some("/vms/abc"));
        let logout = FORMS.iter().find(|e| e.path == "/logout").unwrap();
        assert_eq!(logout.page_path(&["logout"]), None);
    }
}
