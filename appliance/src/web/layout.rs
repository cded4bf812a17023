//! The page frame (header, navigation, flash messages) and small widgets
//! shared by every console page.

use maud::{html, Markup, DOCTYPE};

use lifeboat_core::model::rfc3339;
use lifeboat_core::model::Job;
use lifeboat_core::model::Principal;

pub struct PageCtx<'a> {
    pub who: &'a Principal,
    pub csrf: &'a str,
    /// The form just refused, shown again with what was entered.
    pub refused: Option<&'a super::fields::Refused>,
}

const NAV: [(&str, &str); 14] = [
    ("/", "Dashboard"),
    ("/hosts", "Hosts"),
    ("/vms", "VMs"),
    ("/cluster", "Cluster"),
    ("/physical", "Physical"),
    ("/jobs", "Jobs"),
    ("/policies", "Policies"),
    ("/datastores", "Datastores"),
    ("/monitoring", "Monitoring"),
    ("/alerts", "Alerts"),
    ("/agents", "Add host"),
    ("/users", "Users"),
    ("/audit", "Audit"),
    ("/logs", "Log"),
];

pub fn page(
    ctx: &PageCtx,
    title: &str,
    current: &str,
    refresh_secs: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // A refused form's entries must not be reloaded away.
                @if let Some(s) = refresh_secs.filter(|_| ctx.refused.is_none()) { meta http-equiv="refresh" content=(s); }
                title { (title) " · Lifeboat" }
                link rel="stylesheet" href="/assets/style.css";
                link rel="icon" href="/assets/lifeboat.svg";
            }
            body {
                header.top {
                    a.brand href="/" { img src="/assets/lifeboat.svg" alt="" width="22" height="22"; " Lifeboat" }
                    nav {
                        @for (href, label) in NAV {
                            a href=(href) class=[(href == current).then_some("active")] { (label) }
                        }
                    }
                    form.logout method="post" action="/logout" {
                        span.user { (ctx.who.user()) " · " (ctx.who.role()) }
                        input type="hidden" name="csrf" value=(ctx.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lifeboat" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body.bare { main { (body) } }
        }
    }
}

pub fn state_badge(state: &str) -> Markup {
    html! { span class={"badge state-" (state)} { (state) } }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn jobs_table(jobs: &[Job]) -> Markup {
    html! {
        @if jobs.is_empty() { p.muted { "No jobs yet." } } @else {
            table {
                thead { tr { th { "#" } th { "Job" } th { "User" } th { "State" } th { "Progress" } th { "Started" } th { "Error" } } }
                tbody {
                    @for j in jobs {
                        tr {
                            td { a href={"/jobs/" (j.id)} { (j.id) } }
                            td { (j.description) }
                            td { (j.user) }
                            td { (state_badge(j.state.as_str())) }
                            td { (progress(j)) }
                            td { (j.started_at.map(rfc3339).unwrap_or_default()) }
                            td.error { (j.error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    }
}

pub fn progress(j: &Job) -> Markup {
    html! {
        progress max="100" value=(j.percent) { (j.percent) "%" }
        " " (j.percent) "%"
        @if j.bytes_total > 0 { " · " (bytes(j.bytes_done)) " of " (bytes(j.bytes_total)) }
        @if let Some(r) = j.rate() { " · " (bytes(r)) "/s" }
        @if let Some(eta) = j.eta_secs() { " · ETA " (eta) " s" }
    }
}

/// "Download: CSV · Excel" for an export (`/exports/TABLE.EXT?QUERY`).
pub fn downloads(table: &str, query: &str) -> Markup {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    html! {
        p.downloads {
            "Download: "
            a href={"/exports/" (table) ".csv" (q)} { "CSV" }
            " · "
            a href={"/exports/" (table) ".xlsx" (q)} { "Excel" }
        }
    }
}
