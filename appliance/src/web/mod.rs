//! The web console: server-rendered maud pages over `ops`, usable without
//! JavaScript. Sessions live in an HttpOnly, Secure, SameSite=Strict cookie;
//! every form carries the session's CSRF token and is refused without it.

mod admin_forms;
mod admin_pages;
pub mod assets;
mod backup_pages;
mod ha_pages;
mod layout;
mod pages;

use std::sync::Arc;

use hyper::header::{HeaderValue, SET_COOKIE};
use hyper::{Method, Response, StatusCode};
use lifeboat_proto::{BackupMode, PowerAction};
use maud::Markup;

use crate::http::{redirect, response, Body, Req};
use layout::PageCtx;
use lifeboat_core::model::{random_token, Principal, Privilege};
use lifeboat_core::ops::{Ops, OpsError};

const SESSION_COOKIE: &str = "lb_session";
const LOGIN_CSRF_COOKIE: &str = "lb_login_csrf";

fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut r = response(status, "text/html; charset=utf-8", markup.into_string());
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

fn set_cookie(r: &mut Response<Body>, name: &str, value: &str, max_age: Option<u64>) {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    let cookie = format!("{name}={value}; Path=/; HttpOnly; Secure; SameSite=Strict{age}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(SET_COOKIE, v);
    }
}

fn form(req: &Req) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(&req.body).unwrap_or_default()
}

fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Constant-time comparison for CSRF tokens.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn error_page(ctx: &PageCtx, e: &OpsError) -> Response<Body> {
    let status = match e {
        OpsError::NotFound(_) => StatusCode::NOT_FOUND,
        OpsError::Forbidden(_) => StatusCode::FORBIDDEN,
        OpsError::Conflict(_) => StatusCode::CONFLICT,
        OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
        OpsError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        OpsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    html(status, pages::error(ctx, status, &e.to_string()))
}

pub async fn handle(ops: &Arc<Ops>, req: Req) -> Response<Body> {
    if req.path == "/login" {
        return login(ops, &req).await;
    }
    if req.path == "/favicon.ico" {
        return assets::serve("/assets/lifeboat.svg");
    }
    let token = req.cookie(SESSION_COOKIE).map(str::to_string);
    let session = token.as_deref().and_then(|t| ops.session(t, &req.source()));
    let Some((who, csrf)) = session else {
        return redirect("/login");
    };
    let ctx = PageCtx {
        who: &who,
        csrf: &csrf,
        agent_port: ops.agent_port(),
    };
    if req.method == Method::POST {
        let form = form(&req);
        let sent = field(&form, "csrf").unwrap_or_default();
        if !same_token(&sent, &csrf) {
            tracing::warn!(
                user = who.user(),
                path = req.path,
                "form refused: bad CSRF token"
            );
            return html(
                StatusCode::FORBIDDEN,
                pages::error(&ctx, StatusCode::FORBIDDEN, "This form has expired or did not come from this console. Reload the page and try again."),
            );
        }
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        if ops.names_hidden_vm(&who, &segments) {
            let e = OpsError::NotFound(format!("no such object: {}", req.path));
            return error_page(&ctx, &e);
        }
        if let Some(privilege) = action_privilege(&req.path) {
            let action = format!("console POST {}", req.path);
            if let Err(e) = ops.require_for(&who, privilege, &action, &req.path).await {
                return error_page(&ctx, &e);
            }
        }
        return match post(
            ops,
            &req,
            &who,
            &form,
            token.as_deref().unwrap_or_default(),
            &ctx,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => error_page(&ctx, &e),
        };
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed",
        );
    }
    if req.path == "/audit.csv" {
        return match ops.audit_records(&who, &audit_filter(&req, 100_000)) {
            Ok(records) => {
                let mut r = response(
                    StatusCode::OK,
                    "text/csv; charset=utf-8",
                    lifeboat_core::ops::audit_csv(&records),
                );
                r.headers_mut().insert(
                    hyper::header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"lifeboat-audit.csv\""),
                );
                r
            }
            Err(e) => error_page(&ctx, &e),
        };
    }
    match get(ops, &req, &ctx).await {
        Ok(m) => html(StatusCode::OK, m),
        Err(e) => error_page(&ctx, &e),
    }
}

/// What each console form needs, checked before the form is even read (so
/// a role without it is refused, not told its input is wrong). Operations
/// check again; `None`: any signed-in user (logging out).
fn action_privilege(path: &str) -> Option<Privilege> {
    use Privilege::*;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["vms", _, "power"] => Some(Power),
        ["vms", _, "backups"] | ["policies", ..] | ["backups", _, "verify"] => Some(Backup),
        ["backups", _, "restore"] => Some(Restore),
        ["vms", _, "ha"] | ["hosts", _, "ha"] | ["cluster", "settings"] | ["physical", ..] => {
            Some(ManageHa)
        }
        ["datastores", ..] => Some(ManageDatastores),
        ["users", ..] | ["roles", ..] | ["access-policies", ..] | ["category-rules", ..] => {
            Some(ManageUsers)
        }
        ["directories", ..] | ["vms", _, "categories"] => Some(ManageUsers),
        ["agents", "tokens"] => Some(ManageHosts),
        _ => None,
    }
}

/// The audit filter from a page's query string.
fn audit_filter(req: &Req, limit: usize) -> lifeboat_core::ops::AuditFilter {
    lifeboat_core::ops::AuditFilter {
        user: req.query_param("user"),
        action: req.query_param("action"),
        object: req.query_param("object"),
        since: None,
        until: None,
        limit,
    }
}

async fn get(ops: &Arc<Ops>, req: &Req, ctx: &PageCtx<'_>) -> Result<Markup, OpsError> {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let who = ctx.who;
    match segments.as_slice() {
        [] => pages::dashboard(ctx, &ops.summary(who)?, &ops.hosts(who)?),
        ["hosts"] => pages::hosts(ctx, &ops.hosts(who)?),
        ["hosts", id] => {
            let host = ops.host(who, id)?;
            let vms = ops.vms(
                who,
                &lifeboat_core::ops::VmQuery {
                    host: Some(host.host.id.clone()),
                    per_page: 1000,
                    ..Default::default()
                },
            )?;
            let ha = ops.host_ha(who, id)?;
            let events = ops.ha_history(who, Some(&host.host.id), 50)?;
            let section = ha_pages::host_section(ctx, &host.host.id, &ha, &events);
            Ok(pages::host(ctx, &host, &vms.items, section))
        }
        ["cluster"] => {
            let view = ops.cluster_view(who)?;
            let failovers = ops.failovers(who)?;
            let events = ops.ha_history(who, None, 30)?;
            Ok(ha_pages::cluster(ctx, &view, &failovers, &events))
        }
        ["failovers", id] => Ok(ha_pages::failover(ctx, &ops.failover(who, id)?)),
        ["users"] => Ok(admin_pages::users(ctx, &ops.users(who)?, &ops.roles(who)?)),
        ["roles"] => Ok(admin_pages::roles(ctx, &ops.roles(who)?)),
        ["access-policies"] => Ok(admin_pages::access_policies(
            ctx,
            &ops.access_policies(who)?,
            &ops.category_rules(who)?,
        )),
        ["directories"] => Ok(admin_pages::directories(ctx, &ops.directories(who)?)),
        ["tokens"] => Ok(admin_pages::tokens(ctx, &ops.api_tokens(who), None)),
        ["audit"] => {
            let records = ops.audit_records(who, &audit_filter(req, 500))?;
            let query = req.query.clone();
            Ok(admin_pages::audit(ctx, &records, &query))
        }
        ["physical"] => Ok(ha_pages::physical_machines(
            ctx,
            &ops.physical_machines(who)?,
        )),
        ["vms"] => {
            let q = pages::vm_query_from(req);
            let page = ops.vms(who, &q)?;
            let hosts = ops.hosts(who)?;
            Ok(pages::vms(ctx, &q, &page, &hosts))
        }
        ["vms", id] => {
            let vm = ops.vm(who, id)?;
            let jobs = ops.jobs(who, Some(id), 20)?;
            let host = ops.vm_host(&vm);
            let backups = ops.vm_backups(who, id).await?;
            let hosts = ops.hosts(who)?;
            let backup_section = backup_pages::vm_backups(ctx, id, &backups, &hosts);
            let ha_section = ha_pages::vm_section(ctx, id, &ops.vm_ha(who, id)?);
            let (own, effective) = ops.vm_own_categories(who, id)?;
            let categories = admin_pages::vm_categories(ctx, id, &own, &effective);
            let backup_section = maud::html! { (backup_section) (ha_section) (categories) };
            Ok(pages::vm(
                ctx,
                &vm,
                host.as_ref(),
                &jobs,
                req.query_param("job"),
                backup_section,
            ))
        }
        ["policies"] => {
            let list = ops.policies(who)?;
            Ok(layout::page(
                ctx,
                "Backup policies",
                "/policies",
                None,
                backup_pages::policies(ctx, &list),
            ))
        }
        ["datastores"] => {
            let list = ops.datastores(who).await?;
            Ok(layout::page(
                ctx,
                "Datastores",
                "/datastores",
                None,
                backup_pages::datastores(ctx, &list),
            ))
        }
        ["backups", reference] => {
            let b = ops.backup_manifest(who, reference).await?;
            let title = format!("Backup of {}", b.manifest.vm.name);
            Ok(layout::page(
                ctx,
                &title,
                "/vms",
                None,
                backup_pages::backup_detail(&b),
            ))
        }
        ["jobs"] => Ok(pages::jobs(ctx, &ops.jobs(who, None, 200)?)),
        ["jobs", id] => {
            let id = id
                .parse()
                .map_err(|_| OpsError::NotFound(format!("no job with id {id}")))?;
            Ok(pages::job(ctx, &ops.job(who, id)?))
        }
        ["agents"] => Ok(pages::agents(
            ctx,
            &ops.pending_enrollment_tokens(who)?,
            None,
            req,
        )),
        _ => Err(OpsError::NotFound(format!("no page at {}", req.path))),
    }
}

async fn post(
    ops: &Arc<Ops>,
    req: &Req,
    who: &Principal,
    form: &[(String, String)],
    token: &str,
    ctx: &PageCtx<'_>,
) -> Result<Response<Body>, OpsError> {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["logout"] => {
            ops.logout(who, token).await?;
            let mut r = redirect("/login");
            set_cookie(&mut r, SESSION_COOKIE, "", Some(0));
            Ok(r)
        }
        ["vms", id, "power"] => {
            let action = field(form, "action")
                .and_then(|a| PowerAction::parse(&a))
                .ok_or_else(|| OpsError::BadRequest("unknown power action".into()))?;
            let job = ops.power(who, id, action, None).await?;
            Ok(redirect(&format!("/vms/{id}?job={}", job.id)))
        }
        ["vms", id, "backups"] => {
            let mode = match field(form, "mode").as_deref() {
                Some("full") => BackupMode::Full,
                _ => BackupMode::Auto,
            };
            let job = ops.backup(who, id, None, mode).await?;
            Ok(redirect(&format!("/vms/{id}?job={}", job.id)))
        }
        ["policies"] => {
            let number = |name: &str| field(form, name).and_then(|v| v.trim().parse::<u32>().ok());
            let input = lifeboat_core::ops::PolicyInput {
                name: field(form, "name").unwrap_or_default(),
                schedule: field(form, "schedule").unwrap_or_default(),
                datastore: None,
                mode: None,
                vms: Vec::new(),
                name_pattern: field(form, "name_pattern").filter(|v| !v.trim().is_empty()),
                category: field(form, "category").filter(|v| !v.trim().is_empty()),
                retention: lifeboat_core::model::PruneOptions {
                    keep_last: number("keep_last"),
                    keep_daily: number("keep_daily"),
                    keep_weekly: number("keep_weekly"),
                    keep_monthly: number("keep_monthly"),
                    ..Default::default()
                },
                verify_schedule: field(form, "verify_schedule").filter(|v| !v.trim().is_empty()),
                enabled: true,
            };
            ops.create_policy(who, input).await?;
            Ok(redirect("/policies"))
        }
        ["datastores"] => {
            let text = |name: &str| field(form, name).filter(|v| !v.trim().is_empty());
            let input = lifeboat_core::model::DatastoreInput {
                name: field(form, "name").unwrap_or_default(),
                kind: field(form, "kind").unwrap_or_default(),
                path: text("path"),
                server: text("server"),
                export: text("export"),
                share: text("share"),
                username: text("username"),
                password: text("password"),
                domain: text("domain"),
                options: text("options"),
            };
            ops.add_datastore(who, input).await?;
            Ok(redirect("/datastores"))
        }
        ["policies", id, "run"] => {
            let job = ops.run_policy(who, id).await?;
            Ok(redirect(&format!("/jobs/{}", job.id)))
        }
        ["policies", id, "delete"] => {
            ops.delete_policy(who, id).await?;
            Ok(redirect("/policies"))
        }
        ["backups", reference, "verify"] => {
            let job = ops.verify(who, reference).await?;
            Ok(redirect(&format!("/jobs/{}", job.id)))
        }
        ["backups", reference, "restore"] => {
            let host = field(form, "host");
            let checked = |name: &str| field(form, name).is_some();
            let text = |name: &str| field(form, name).filter(|v| !v.trim().is_empty());
            let as_new = text("new_name").map(|name| lifeboat_core::model::AsNew {
                name: name.trim().to_string(),
                computer_name: text("computer_name"),
                domain: text("domain"),
                hostname: text("hostname"),
            });
            let replace = checked("replace") && as_new.is_none();
            let job = ops
                .restore(
                    who,
                    reference,
                    host.as_deref(),
                    replace,
                    checked("start"),
                    as_new,
                )
                .await?;
            Ok(redirect(&format!("/jobs/{}", job.id)))
        }
        ["vms", id, "ha"] => {
            let text = |name: &str| field(form, name).unwrap_or_default().trim().to_string();
            let settings = lifeboat_core::model::VmHa {
                enabled: field(form, "enabled").is_some(),
                priority: serde_json::from_value(serde_json::json!(text("priority")))
                    .map_err(|_| OpsError::BadRequest("unknown priority".into()))?,
                anti_affinity_group: text("anti_affinity_group"),
                method: serde_json::from_value(serde_json::json!(text("method")))
                    .map_err(|_| OpsError::BadRequest("unknown failover method".into()))?,
                probe_address: text("probe_address"),
            };
            ops.set_vm_ha(who, id, settings).await?;
            Ok(redirect(&format!("/vms/{id}")))
        }
        ["hosts", id, "ha"] => {
            let text = |name: &str| field(form, name).unwrap_or_default().trim().to_string();
            let probe = match text("probe").as_str() {
                "tcp" => lifeboat_core::model::HostProbe::Tcp {
                    port: text("port")
                        .parse()
                        .map_err(|_| OpsError::BadRequest("a TCP probe needs a port".into()))?,
                },
                _ => lifeboat_core::model::HostProbe::Icmp,
            };
            let settings = lifeboat_core::model::HostHa {
                probe,
                address: text("address"),
                fence_command: text("fence_command"),
                storage_mounts: ha_pages::parse_pairs(&text("storage_mounts"))
                    .map_err(OpsError::BadRequest)?,
            };
            ops.set_host_ha(who, id, settings).await?;
            Ok(redirect(&format!("/hosts/{id}")))
        }
        ["cluster", "settings"] => {
            let text = |name: &str| field(form, name).unwrap_or_default().trim().to_string();
            let number = |name: &str| {
                text(name)
                    .parse::<u64>()
                    .map_err(|_| OpsError::BadRequest(format!("{name} must be a number")))
            };
            let settings = lifeboat_core::model::ClusterHa {
                heartbeat_interval_ms: number("heartbeat_interval_ms")?,
                misses: number("misses")? as u32,
                fence_timeout_ms: number("fence_timeout_ms")?,
                fence_margin_ms: number("fence_margin_ms")?,
                tolerated_host_failures: number("tolerated_host_failures")? as u32,
                shared_storages: ha_pages::parse_pairs(&text("shared_storages"))
                    .map_err(OpsError::BadRequest)?,
                isolation_addresses: text("isolation_addresses")
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
            };
            ops.set_cluster_ha(who, settings).await?;
            Ok(redirect("/cluster"))
        }
        ["physical"] => {
            let text = |name: &str| field(form, name).unwrap_or_default().trim().to_string();
            let pm = lifeboat_core::model::PhysicalMachine {
                id: String::new(),
                name: text("name"),
                checks: ha_pages::parse_checks(&text("checks")).map_err(OpsError::BadRequest)?,
                failed_rounds: text("failed_rounds").parse().unwrap_or(3),
                interval_ms: 1000,
                standby_vm: text("standby_vm"),
                standby_host: text("standby_host"),
                state: lifeboat_core::model::PhysicalState::Monitoring,
            };
            ops.add_physical_machine(who, pm).await?;
            Ok(redirect("/physical"))
        }
        ["physical", id, "failback"] => {
            ops.failback_physical(who, id, field(form, "confirm").is_some())
                .await?;
            Ok(redirect("/physical"))
        }
        ["agents", "tokens"] => {
            let issued = ops.issue_enrollment_token(who).await?;
            let pending = ops.pending_enrollment_tokens(who)?;
            Ok(html(
                StatusCode::OK,
                pages::agents(ctx, &pending, Some(&issued), req),
            ))
        }
        _ => match admin_forms::post(ops, who, form, &segments, ctx).await {
            Some(result) => result,
            None => Err(OpsError::NotFound(format!("no action at {}", req.path))),
        },
    }
}

async fn login(ops: &Arc<Ops>, req: &Req) -> Response<Body> {
    if req.method == Method::GET {
        // Keep a login token the browser already has: a second tab, or a
        // sub-request that landed here, must not invalidate the open form.
        let csrf = req
            .cookie(LOGIN_CSRF_COOKIE)
            .filter(|c| {
                c.len() == 43
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(str::to_string)
            .unwrap_or_else(random_token);
        let mut r = html(StatusCode::OK, pages::login(&csrf, None));
        set_cookie(&mut r, LOGIN_CSRF_COOKIE, &csrf, Some(3600));
        return r;
    }
    if req.method != Method::POST {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed",
        );
    }
    let form = form(req);
    let expected = req.cookie(LOGIN_CSRF_COOKIE).unwrap_or_default();
    let sent = field(&form, "csrf").unwrap_or_default();
    let fresh = random_token();
    let refuse = |msg: &str| {
        let mut r = html(StatusCode::UNAUTHORIZED, pages::login(&fresh, Some(msg)));
        set_cookie(&mut r, LOGIN_CSRF_COOKIE, &fresh, Some(3600));
        r
    };
    if expected.is_empty() || !same_token(expected, &sent) {
        return refuse("The login form expired. Please try again.");
    }
    let user = field(&form, "username").unwrap_or_default();
    let password = field(&form, "password").unwrap_or_default();
    match ops.login(&user, &password, &req.source()).await {
        Ok((_, token, _)) => {
            let mut r = redirect("/");
            set_cookie(&mut r, SESSION_COOKIE, &token, None);
            set_cookie(&mut r, LOGIN_CSRF_COOKIE, "", Some(0));
            r
        }
        Err(e) => refuse(&e.to_string()),
    }
}
