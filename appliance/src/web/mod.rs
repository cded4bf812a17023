//! The web console: server-rendered maud pages over `ops`, usable without
//! JavaScript. Sessions live in an HttpOnly, Secure, SameSite=Strict cookie;
//! every form carries the session's CSRF token and is refused without it.

mod admin_forms;
mod admin_pages;
mod alert_forms;
mod alert_pages;
pub mod assets;
mod backup_pages;
mod charts;
pub mod downloads;
mod fields;
mod forms;
mod ha_pages;
mod layout;
mod log_pages;
mod monitoring_pages;
mod pages;
mod snmp_pages;

use std::sync::Arc;

use hyper::header::{HeaderValue, SET_COOKIE};
use hyper::{Method, Response, StatusCode};
use maud::Markup;

use crate::http::routing::{self, Lookup};
use crate::http::{redirect, response, Body, Req};
use crate::reports::ExportFormat;
use fields::Refused;
use layout::PageCtx;
use lifeboat_core::model::{random_token, LogLevel};
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

/// For the fuzz target: what the console does with a request before an
/// operation runs (no session is checked).
pub(crate) fn fuzz_parse(req: &Req) {
    let fields = form(req);
    let _ = field(&fields, "csrf").map(|sent| same_token(&sent, &"0".repeat(64)));
    let _ = req.cookie(SESSION_COOKIE);
    let segments = routing::segments(&req.path);
    let _ = routing::find(forms::FORMS, req.method.as_str(), &segments);
    let _ = pages::vm_query_from(req);
    let _ = audit_filter(req, 100);
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
    let status = crate::http::status_of(e);
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
        refused: None,
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
        let segments = routing::segments(&req.path);
        let entry = match routing::find(forms::FORMS, "POST", &segments) {
            Lookup::Found(entry) => entry,
            Lookup::WrongMethod | Lookup::NotFound => {
                let e = OpsError::NotFound(format!("no action at {}", req.path));
                return error_page(&ctx, &e);
            }
        };
        if ops.names_hidden_vm(&who, &segments) {
            let e = OpsError::NotFound(format!("no such object: {}", req.path));
            return error_page(&ctx, &e);
        }
        if let Some(privilege) = entry.guard.privilege() {
            let action = format!("console POST {}", entry.path);
            if let Err(e) = ops.require_for(&who, privilege, &action, &req.path).await {
                return error_page(&ctx, &e);
            }
        }
        let submission = forms::Submission {
            ops,
            who: &who,
            req: &req,
            form: &form,
            session: token.as_deref().unwrap_or_default(),
            ctx: &ctx,
            entry,
            segments: &segments,
        };
        return match (entry.handler)(submission).await {
            Ok(r) => r,
            Err(OpsError::BadRequest(reason)) if entry.page.is_some() => {
                let refused = Refused::new(&req.path, &form, reason);
                refused_page(ops, &req, &ctx, entry, &segments, &refused).await
            }
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
        return match crate::reports::export(ops, &who, &req, "audit", ExportFormat::Csv).await {
            Ok(r) => r,
            Err(e) => error_page(&ctx, &e),
        };
    }
    // `/exports/TABLE.csv` and `/exports/TABLE.xlsx`: the console's downloads.
    if let Some(file) = req.path.strip_prefix("/exports/") {
        let (table, format) = file
            .rsplit_once('.')
            .and_then(|(t, ext)| Some((t, ExportFormat::parse(ext)?)))
            .unwrap_or((file, ExportFormat::Csv));
        return match crate::reports::export(ops, &who, &req, table, format).await {
            Ok(r) => r,
            Err(e) => error_page(&ctx, &e),
        };
    }
    if let Some(reference) = req
        .path
        .strip_prefix("/backups/")
        .and_then(|p| p.strip_suffix("/boot-screen"))
    {
        return match ops.boot_screenshot(&who, reference).await {
            Ok((media_type, bytes)) => crate::http::screenshot(&media_type, bytes),
            Err(e) => error_page(&ctx, &e),
        };
    }
    match get(ops, &req, &ctx).await {
        Ok(m) => html(StatusCode::OK, m),
        Err(e) => error_page(&ctx, &e),
    }
}

/// The page a refused form is on, again (400): the entries back in their
/// fields and the reason next to the field it names.
async fn refused_page(
    ops: &Arc<Ops>,
    req: &Req,
    ctx: &PageCtx<'_>,
    entry: &forms::FormEntry,
    segments: &[&str],
    refused: &Refused,
) -> Response<Body> {
    let path = entry.page_path(segments).unwrap_or_else(|| "/".into());
    let page = Req {
        method: Method::GET,
        path,
        query: String::new(),
        headers: req.headers.clone(),
        body: Default::default(),
        peer: req.peer,
    };
    let ctx = PageCtx {
        refused: Some(refused),
        ..*ctx
    };
    match get(ops, &page, &ctx).await {
        Ok(m) => html(StatusCode::BAD_REQUEST, m),
        Err(e) => error_page(&ctx, &e),
    }
}

/// The graphs' timeframe from a page's query string (an hour by default).
fn timeframe_of(req: &Req) -> lifeboat_core::model::Timeframe {
    req.query_param("timeframe")
        .and_then(|t| lifeboat_core::model::Timeframe::parse(&t))
        .unwrap_or(lifeboat_core::model::Timeframe::Hour)
}

/// The audit filter from a page's query string (a malformed number is
/// left out, as if not given).
fn audit_filter(req: &Req, limit: usize) -> lifeboat_core::ops::AuditFilter {
    crate::reports::audit_filter(req, limit).unwrap_or(lifeboat_core::ops::AuditFilter {
        user: req.query_param("user"),
        action: req.query_param("action"),
        object: req.query_param("object"),
        limit,
        ..Default::default()
    })
}

async fn get(ops: &Arc<Ops>, req: &Req, ctx: &PageCtx<'_>) -> Result<Markup, OpsError> {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let who = ctx.who;
    match segments.as_slice() {
        [] => pages::dashboard(
            ctx,
            &ops.summary(who)?,
            &ops.hosts(who)?,
            &ops.estate_usage(who)?,
        ),
        ["hosts"] => pages::hosts(
            ctx,
            &ops.hosts(who)?,
            &ops.host_usage(who)?,
            req.query_param("sort").as_deref(),
        ),
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
            let timeframe = timeframe_of(req);
            let series = ops.host_series(who, id, timeframe).await?;
            let current = ops.host_current(who, id)?;
            let perf = pages::Performance {
                current: current.as_ref(),
                series: &series,
                timeframe,
                path: &req.path,
            };
            Ok(pages::host(ctx, &host, &vms.items, section, &perf))
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
            Ok(pages::vms(ctx, &q, &page, &hosts, &ops.vm_usage(who)?))
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
            let timeframe = timeframe_of(req);
            let series = ops.vm_series(who, id, timeframe).await?;
            let current = ops.vm_current(who, id)?;
            let perf = pages::Performance {
                current: current.as_ref(),
                series: &series,
                timeframe,
                path: &req.path,
            };
            Ok(pages::vm(
                ctx,
                &vm,
                host.as_ref(),
                &jobs,
                req.query_param("job"),
                backup_section,
                &perf,
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
        ["monitoring"] => {
            let (settings, status) = ops.metrics_settings(who)?;
            let sql = who
                .can(lifeboat_core::model::Privilege::Administer)
                .then(|| ops.sql_export(who))
                .transpose()?;
            Ok(monitoring_pages::monitoring(ctx, &settings, &status, sql))
        }
        ["alerts"] => {
            let filter = crate::api::alert_filter(req)?;
            // Channels are for administrators without access policies.
            let channels = who
                .can(lifeboat_core::model::Privilege::Administer)
                .then(|| ops.alert_channels(who).ok())
                .flatten();
            Ok(alert_pages::alerts(
                ctx,
                &ops.alerts(who, &filter)?,
                &ops.alert_rules(who)?,
                channels.as_deref(),
            ))
        }
        ["snmp"] => Ok(snmp_pages::snmp(ctx, &ops.snmp_settings(who)?)),
        ["logs"] => {
            let shown = crate::api::log_level_param(req, LogLevel::Info)?;
            let view = ops.logging(who)?;
            let records = ops.recent_log(who, shown, 0, log_pages::SHOWN)?;
            Ok(log_pages::logs(
                ctx,
                &view,
                &ops.alert_channels(who)?,
                shown,
                &records,
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
            ops,
            &ops.pending_enrollment_tokens(who)?,
            None,
            req,
        )),
        _ => Err(OpsError::NotFound(format!("no page at {}", req.path))),
    }
}

async fn login(ops: &Arc<Ops>, req: &Req) -> Response<Body> {
    if req.method == Method::GET {
        // Keep a login token the browser already has: a second tab, or a
        // sub-request that landed here, must not invalidate the open form.
        let csrf = req
            .cookie(LOGIN_CSRF_COOKIE)
            .filter(|c| {
                // What random_token makes: 64 hex digits.
                c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit())
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
