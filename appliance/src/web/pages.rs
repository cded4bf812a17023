//! Page bodies of the console. Pure rendering: data comes in from `ops`.

use hyper::StatusCode;
use maud::{html, Markup};

use super::layout::{
    bare_page, bytes, downloads, jobs_table, page, progress, state_badge, PageCtx,
};
use crate::http::Req;
use lifeboat_core::model::rfc3339;
use lifeboat_core::model::EnrollmentToken;
use lifeboat_core::model::Job;
use lifeboat_core::model::{Current, Detail, MetricKind, SeriesSet, Timeframe, Unit};
use lifeboat_core::model::{HostView, Vm};
use lifeboat_core::ops::{EstateUsage, IssuedToken, Ops, Summary, Usage, VmPage, VmQuery, VmSort};
use std::collections::HashMap;

use super::charts::{format_value, gauge, object_charts, timeframe_links};
use lifeboat_proto::PowerAction;

pub const VMS_PER_PAGE: usize = 50;
const MAX_VMS_PER_PAGE: usize = 500;

pub fn error(ctx: &PageCtx, status: StatusCode, message: &str) -> Markup {
    page(
        ctx,
        status.canonical_reason().unwrap_or("Error"),
        "",
        None,
        html! { p.flash.error { (message) } p { a href="/" { "Back to the dashboard" } } },
    )
}

pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    bare_page(
        "Log in",
        html! {
            form.login method="post" action="/login" {
                h1 { img src="/assets/lifeboat.svg" alt="" width="32" height="32"; " Lifeboat" }
                @if let Some(e) = error { p.flash.error { (e) } }
                input type="hidden" name="csrf" value=(csrf);
                label { "User name" input type="text" name="username" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// How often pages with live figures reload themselves.
const LIVE_REFRESH_SECS: u32 = 30;

fn memory_detail(used: Option<f64>, total: Option<f64>) -> String {
    match (used, total) {
        (Some(u), Some(t)) => format!(
            "{} of {}",
            format_value(u, Unit::Bytes),
            format_value(t, Unit::Bytes)
        ),
        (Some(u), None) => format_value(u, Unit::Bytes),
        _ => String::new(),
    }
}

pub fn dashboard(
    ctx: &PageCtx,
    s: &Summary,
    hosts: &[HostView],
    estate: &EstateUsage,
) -> Result<Markup, lifeboat_core::ops::OpsError> {
    let total_vms: usize = s.vm_states.iter().map(|(_, n)| n).sum();
    let reporting = match estate.hosts_reporting {
        1 => "1 host reporting".to_string(),
        n => format!("{n} hosts reporting"),
    };
    Ok(page(
        ctx,
        "Dashboard",
        "/",
        Some(LIVE_REFRESH_SECS),
        html! {
            section.gauges {
                a href="/hosts?sort=cpu" { (gauge("Estate CPU", estate.cpu_percent, &reporting)) }
                a href="/hosts?sort=memory" { (gauge("Estate memory", estate.memory_percent(),
                    &memory_detail(Some(estate.memory_used_bytes), Some(estate.memory_total_bytes)))) }
                @for (id, name, u) in &estate.top_hosts {
                    a href={"/hosts/" (id)} { (gauge(&format!("{name} CPU"), u.cpu_percent,
                        &format!("memory {}", u.memory_percent().map_or("?".into(), |p| format!("{p:.0} %"))))) }
                }
            }
            section.cards {
                a.card href="/hosts" { span.big { (s.hosts_online + s.hosts_offline) } " hosts"
                    span.sub { (s.hosts_online) " online · " (s.hosts_offline) " offline" } }
                a.card href="/vms" { span.big { (total_vms) } " VMs"
                    span.sub { @for (state, n) in &s.vm_states { (n) " " (state) " " } } }
                @for (state, n) in &s.vm_states {
                    a class={"card state-" (state)} href={"/vms?state=" (state)} { span.big { (n) } " " (state) }
                }
            }
            @if hosts.len() > DASHBOARD_HOSTS {
                h2 { "Hosts: " (DASHBOARD_HOSTS) " of " (hosts.len()) ", offline first, then the busiest" }
                (hosts_table(&dashboard_hosts(hosts, &estate.hosts), &estate.hosts))
                p { a href="/hosts" { "All " (hosts.len()) " hosts" } }
            } @else {
                h2 { "Hosts" }
                (hosts_table(hosts, &estate.hosts))
            }
            h2 { "Recent jobs" }
            (jobs_table(&s.recent_jobs))
        },
    ))
}

/// Most hosts the dashboard lists; a larger estate links to the host list.
const DASHBOARD_HOSTS: usize = 20;

/// The hosts a large estate's dashboard lists: offline ones first, then
/// the highest CPU use.
fn dashboard_hosts(hosts: &[HostView], usage: &HashMap<String, Usage>) -> Vec<HostView> {
    // Each host's key once: a sort that looked usage up per comparison
    // was most of the page's cost at 2,000 hosts.
    let mut ranked: Vec<(bool, f64, &HostView)> = hosts
        .iter()
        .map(|h| {
            let cpu = usage.get(&h.host.id).and_then(|u| u.cpu_percent);
            (h.status.as_str() != "online", cpu.unwrap_or(-1.0), h)
        })
        .collect();
    let first = |a: &(bool, f64, &HostView), b: &(bool, f64, &HostView)| {
        b.0.cmp(&a.0).then_with(|| b.1.total_cmp(&a.1))
    };
    if ranked.len() > DASHBOARD_HOSTS {
        ranked.select_nth_unstable_by(DASHBOARD_HOSTS - 1, first);
        ranked.truncate(DASHBOARD_HOSTS);
    }
    ranked.sort_by(first);
    ranked.into_iter().map(|(_, _, h)| h.clone()).collect()
}

fn percent_cell(p: Option<f64>) -> Markup {
    html! { td.num { @if let Some(p) = p { (format!("{p:.0} %")) } @else { span.muted { "–" } } } }
}

fn hosts_table(hosts: &[HostView], usage: &HashMap<String, Usage>) -> Markup {
    html! {
        @if hosts.is_empty() {
            p.muted { "No hosts yet. " a href="/agents" { "Add a host" } " by installing the agent on it." }
        } @else {
            table {
                thead { tr { th { "Host" } th { "Status" } th { "Driver" } th { "CPUs" } th { "CPU use" } th { "Memory use" } th { "Memory free / total" } th { "VMs" } th { "Last seen" } } }
                tbody {
                    @for h in hosts {
                        @let u = usage.get(&h.host.id).copied().unwrap_or_default();
                        tr {
                            td { a href={"/hosts/" (h.host.id)} { (h.host.name) } }
                            td { (state_badge(h.status.as_str())) }
                            td { (h.host.facts.driver) }
                            td { (h.host.facts.cpus) }
                            (percent_cell(u.cpu_percent))
                            (percent_cell(u.memory_percent()))
                            td { (bytes(h.host.facts.memory_free_bytes)) " / " (bytes(h.host.facts.memory_total_bytes)) }
                            td { a href={"/vms?host=" (h.host.id)} { (h.vm_count) } }
                            td { (rfc3339(h.host.last_seen)) }
                        }
                    }
                }
            }
        }
    }
}

/// The host list, sortable by name (default) or current CPU or memory use.
pub fn hosts(
    ctx: &PageCtx,
    hosts: &[HostView],
    usage: &HashMap<String, Usage>,
    sort: Option<&str>,
) -> Result<Markup, lifeboat_core::ops::OpsError> {
    let mut sorted: Vec<&HostView> = hosts.iter().collect();
    let key = |h: &HostView| {
        let u = usage.get(&h.host.id);
        match sort {
            Some("cpu") => u.and_then(|u| u.cpu_percent),
            Some("memory") => u.and_then(Usage::memory_percent),
            _ => None,
        }
        .unwrap_or(-1.0)
    };
    if matches!(sort, Some("cpu" | "memory")) {
        sorted.sort_by(|a, b| key(b).total_cmp(&key(a)));
    }
    let sorted: Vec<HostView> = sorted.into_iter().cloned().collect();
    Ok(page(
        ctx,
        "Hosts",
        "/hosts",
        Some(LIVE_REFRESH_SECS),
        html! {
            p { "Sort by: " a href="/hosts" { "name" } " · " a href="/hosts?sort=cpu" { "CPU use" } " · " a href="/hosts?sort=memory" { "memory use" } }
            (hosts_table(&sorted, usage))
            (downloads("hosts", ""))
            p.downloads {
                "Every host's history (a day): "
                a href="/exports/host-metrics.csv" { "CSV" } " · " a href="/exports/host-metrics.xlsx" { "Excel" }
            }
        },
    ))
}

/// The live figures and graphs of a host or VM page.
pub struct Performance<'a> {
    pub current: Option<&'a Current>,
    pub series: &'a SeriesSet,
    pub timeframe: Timeframe,
    /// The page's own path, for the timeframe links.
    pub path: &'a str,
}

/// Used of total memory, in percent: the one formula the lists use too.
fn memory_share(used: Option<f64>, total: Option<f64>) -> Option<f64> {
    Usage {
        cpu_percent: None,
        memory_used_bytes: used,
        memory_total_bytes: total,
    }
    .memory_percent()
}

fn current_value(c: Option<&Current>, kind: MetricKind, key: &str) -> Option<f64> {
    let (i, _) = kind.metric(key)?;
    c?.values.get(i).copied().flatten()
}

fn performance_section(p: &Performance, gauges: Markup, devices: Markup) -> Markup {
    let (table, id) = match p.series.kind {
        MetricKind::Host => ("host-metrics", p.path.trim_start_matches("/hosts/")),
        MetricKind::Vm => ("vm-metrics", p.path.trim_start_matches("/vms/")),
    };
    let query = serde_urlencoded::to_string([("id", id), ("timeframe", p.timeframe.as_str())])
        .unwrap_or_default();
    html! {
        h2 { "Performance" }
        section.gauges { (gauges) }
        (devices)
        (timeframe_links(p.path, p.timeframe))
        (object_charts(p.series, p.timeframe))
        (downloads(table, &query))
    }
}

fn host_performance(p: &Performance, cpus: u32) -> Markup {
    let c = p.current;
    let kind = MetricKind::Host;
    let used = current_value(c, kind, "memory_used");
    let total = current_value(c, kind, "memory_total");
    let memory = memory_share(used, total);
    let load = current_value(c, kind, "load").map_or(String::new(), |l| format!("load {l:.2}"));
    let gauges = html! {
        (gauge("CPU", current_value(c, kind, "cpu"), &format!("{cpus} CPUs, {load}")))
        (gauge("Memory", memory, &memory_detail(used, total)))
    };
    let devices = match c.map(|c| &c.detail) {
        Some(Detail::Host { mounts }) if !mounts.is_empty() => html! {
            table {
                thead { tr { th { "VM storage" } th { "Free" } th { "Size" } } }
                tbody { @for m in mounts { tr {
                    td { code { (m.path) } } td { (bytes(m.free_bytes)) } td { (bytes(m.total_bytes)) }
                } } }
            }
        },
        _ => html! {},
    };
    performance_section(p, gauges, devices)
}

fn vm_performance(p: &Performance, memory_mib: u64) -> Markup {
    let c = p.current;
    let kind = MetricKind::Vm;
    let used = current_value(c, kind, "memory_used");
    let total = (memory_mib << 20) as f64;
    let gauges = html! {
        (gauge("CPU", current_value(c, kind, "cpu"), "of its vCPUs"))
        (gauge("Memory", memory_share(used, Some(total)), &memory_detail(used, Some(total))))
    };
    let rate = |v: Option<f64>, unit| v.map_or("–".to_string(), |v| format_value(v, unit));
    let devices = match c.map(|c| &c.detail) {
        Some(Detail::Vm { disks, nics }) => html! {
            table {
                thead { tr { th { "Device" } th { "Read" } th { "Written" } th { "Reads" } th { "Writes" } } }
                tbody {
                    @for d in disks { tr {
                        td { (d.name) }
                        td { (rate(d.rates.read_bps, Unit::BytesPerSecond)) } td { (rate(d.rates.write_bps, Unit::BytesPerSecond)) }
                        td { (rate(d.rates.read_iops, Unit::PerSecond)) } td { (rate(d.rates.write_iops, Unit::PerSecond)) }
                    } }
                    @for n in nics { tr {
                        td { (n.name) }
                        td { "received " (rate(n.rates.rx_bps, Unit::BytesPerSecond)) } td { "sent " (rate(n.rates.tx_bps, Unit::BytesPerSecond)) }
                        td {} td {}
                    } }
                }
            }
        },
        _ => html! {},
    };
    performance_section(p, gauges, devices)
}

pub fn host(ctx: &PageCtx, h: &HostView, vms: &[Vm], ha: Markup, perf: &Performance) -> Markup {
    let f = &h.host.facts;
    page(
        ctx,
        &format!("Host {}", h.host.name),
        "/hosts",
        Some(LIVE_REFRESH_SECS),
        html! {
            dl.facts {
                dt { "Status" } dd { (state_badge(h.status.as_str())) }
                dt { "ID" } dd { code { (h.host.id) } }
                dt { "Hostname" } dd { (f.hostname) }
                dt { "Hypervisor" } dd { (f.driver) " " (f.hypervisor_version) }
                dt { "Agent" } dd { (h.host.agent_version) }
                dt { "CPUs" } dd { (f.cpus) }
                dt { "Memory" } dd { (bytes(f.memory_free_bytes)) " free of " (bytes(f.memory_total_bytes)) }
                dt { "Enrolled" } dd { (rfc3339(h.host.enrolled_at)) }
                dt { "Last seen" } dd { (rfc3339(h.host.last_seen)) }
            }
            (host_performance(perf, f.cpus))
            h2 { "VMs on this host (" (vms.len()) ")" }
            (vm_table(vms, None, None))
            p.downloads {
                "These VMs' history (a day): "
                a href={"/exports/vm-metrics.csv?host=" (h.host.id)} { "CSV" } " · "
                a href={"/exports/vm-metrics.xlsx?host=" (h.host.id)} { "Excel" }
            }
            (ha)
        },
    )
}

pub fn vm_query_from(req: &Req) -> VmQuery {
    VmQuery {
        name: req.query_param("name"),
        host: req.query_param("host"),
        state: req.query_param("state"),
        sort: req
            .query_param("sort")
            .and_then(|s| VmSort::parse(&s))
            .unwrap_or_default(),
        descending: req.query_param("order").as_deref() == Some("desc"),
        page: req
            .query_param("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1),
        per_page: req
            .query_param("per_page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(VMS_PER_PAGE)
            .clamp(1, MAX_VMS_PER_PAGE),
    }
}

fn vm_link(q: &VmQuery, sort: VmSort, descending: bool, page: usize) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (k, v) in [("name", &q.name), ("host", &q.host), ("state", &q.state)] {
        if let Some(v) = v {
            pairs.push((k, v.clone()));
        }
    }
    pairs.push(("sort", sort.as_str().to_string()));
    if descending {
        pairs.push(("order", "desc".into()));
    }
    if page > 1 {
        pairs.push(("page", page.to_string()));
    }
    if q.per_page != VMS_PER_PAGE {
        pairs.push(("per_page", q.per_page.to_string()));
    }
    format!(
        "/vms?{}",
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    )
}

fn vm_table(
    vms: &[Vm],
    sorting: Option<&VmQuery>,
    usage: Option<&HashMap<String, Usage>>,
) -> Markup {
    let header = |label: &str, key: VmSort| -> Markup {
        match sorting {
            None => html! { th { (label) } },
            Some(q) => {
                let active = q.sort == key;
                let desc = active && !q.descending;
                let arrow = match (active, q.descending) {
                    (true, false) => " ▲",
                    (true, true) => " ▼",
                    _ => "",
                };
                html! { th { a href=(vm_link(q, key, desc, 1)) { (label) (arrow) } } }
            }
        }
    };
    html! {
        @if vms.is_empty() { p.muted { "No VMs match." } } @else {
            table.vms {
                thead { tr {
                    (header("Name", VmSort::Name)) (header("Host", VmSort::Host)) (header("State", VmSort::State))
                    (header("vCPUs", VmSort::Vcpus)) (header("Memory", VmSort::Memory))
                    @if usage.is_some() { (header("CPU use", VmSort::CpuUse)) (header("Memory used", VmSort::MemoryUse)) }
                    th { "Disks" }
                } }
                tbody {
                    @for vm in vms {
                        @let u = usage.and_then(|u| u.get(&vm.info.uuid)).copied().unwrap_or_default();
                        tr {
                            td { a href={"/vms/" (vm.info.uuid)} { (vm.info.name) } }
                            td { a href={"/hosts/" (vm.host_id)} { (short(&vm.host_id)) } }
                            td { (state_badge(vm.info.power_state.as_str())) }
                            td { (vm.info.vcpus) }
                            td { (vm.info.memory_mib) " MiB" }
                            @if usage.is_some() {
                                (percent_cell(u.cpu_percent))
                                td.num { (u.memory_used_bytes.map_or("–".to_string(), |b| format_value(b, Unit::Bytes))) }
                            }
                            td { (vm.info.disks.iter().filter(|d| d.device == "disk").count()) }
                        }
                    }
                }
            }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub fn vms(
    ctx: &PageCtx,
    q: &VmQuery,
    p: &VmPage,
    hosts: &[HostView],
    usage: &HashMap<String, Usage>,
) -> Markup {
    let pages = p.total.div_ceil(p.per_page).max(1);
    page(
        ctx,
        "Virtual machines",
        "/vms",
        None,
        html! {
            form.filters method="get" action="/vms" {
                input type="search" name="name" placeholder="Name contains…" value=[q.name.as_deref()];
                select name="host" {
                    option value="" { "All hosts" }
                    @for h in hosts {
                        option value=(h.host.id) selected[q.host.as_deref() == Some(h.host.id.as_str())] { (h.host.name) }
                    }
                }
                select name="state" {
                    option value="" { "Any state" }
                    @for s in ["running", "paused", "stopped", "unknown"] {
                        option value=(s) selected[q.state.as_deref() == Some(s)] { (s) }
                    }
                }
                input type="hidden" name="sort" value=(q.sort.as_str());
                @if q.per_page != VMS_PER_PAGE { input type="hidden" name="per_page" value=(q.per_page); }
                button type="submit" { "Filter" }
                span.muted { (p.total) " VMs" }
            }
            (vm_table(&p.items, Some(q), Some(usage)))
            (downloads("vms", ""))
            nav.pager {
                @if p.page > 1 { a href=(vm_link(q, q.sort, q.descending, p.page - 1)) { "‹ Previous" } }
                span { "Page " (p.page) " of " (pages) }
                @if p.page < pages { a href=(vm_link(q, q.sort, q.descending, p.page + 1)) { "Next ›" } }
            }
        },
    )
}

pub fn vm(
    ctx: &PageCtx,
    vm: &Vm,
    host: Option<&HostView>,
    jobs: &[Job],
    started_job: Option<String>,
    backups: Markup,
    perf: &Performance,
) -> Markup {
    let i = &vm.info;
    let active = jobs.iter().any(|j| !j.state.is_finished());
    let host_name = host.map(|h| h.host.name.as_str()).unwrap_or("?");
    let host_status = host.map(|h| h.status.as_str()).unwrap_or("offline");
    page(
        ctx,
        &format!("VM {}", i.name),
        "/vms",
        Some(if active { 2 } else { LIVE_REFRESH_SECS }),
        html! {
            @if let Some(id) = started_job.and_then(|j| j.parse::<u64>().ok()) {
                p.flash.ok { "Job " a href={"/jobs/" (id)} { "#" (id) } " started. It is listed below; this page refreshes until it ends." }
            }
            section.actions {
                @for a in PowerAction::ALL {
                    form method="post" action={"/vms/" (i.uuid) "/power"} {
                        input type="hidden" name="csrf" value=(ctx.csrf);
                        input type="hidden" name="action" value=(a.as_str());
                        button type="submit" disabled[lifeboat_core::ops::check_power_transition(i.power_state, a).is_err()] { (a.as_str()) }
                    }
                }
            }
            dl.facts {
                dt { "Power state" } dd { (state_badge(i.power_state.as_str())) }
                dt { "UUID" } dd { code { (i.uuid) } }
                dt { "Host" } dd { a href={"/hosts/" (vm.host_id)} { (host_name) } " " (state_badge(host_status)) }
                dt { "vCPUs" } dd { (i.vcpus) }
                dt { "Memory" } dd { (i.memory_mib) " MiB" }
                dt { "Updated" } dd { (rfc3339(vm.updated_at)) }
            }
            (vm_performance(perf, i.memory_mib))
            h2 { "Disks" }
            table {
                thead { tr { th { "Target" } th { "Device" } th { "Source" } th { "Format" } th { "Size" } } }
                tbody { @for d in &i.disks { tr {
                    td { (d.target) } td { (d.device) } td { code { (d.source.clone().unwrap_or_default()) } }
                    td { (d.format.clone().unwrap_or_default()) } td { (d.capacity_bytes.map(bytes).unwrap_or_default()) }
                } } }
            }
            h2 { "Network interfaces" }
            table {
                thead { tr { th { "MAC" } th { "Network" } th { "Model" } } }
                tbody { @for n in &i.nics { tr {
                    td { code { (n.mac) } } td { (n.network.clone().unwrap_or_default()) } td { (n.model.clone().unwrap_or_default()) }
                } } }
            }
            h2 { "Jobs" }
            (jobs_table(jobs))
            (backups)
            details { summary { "Hypervisor configuration" } pre.config { (i.config) } }
        },
    )
}

pub fn jobs(ctx: &PageCtx, jobs: &[Job]) -> Markup {
    let active = jobs.iter().any(|j| !j.state.is_finished());
    let body = html! { (downloads("jobs", "")) (jobs_table(jobs)) };
    page(ctx, "Jobs", "/jobs", active.then_some(2), body)
}

pub fn job(ctx: &PageCtx, j: &Job) -> Markup {
    page(
        ctx,
        &format!("Job {}: {}", j.id, j.description),
        "/jobs",
        (!j.state.is_finished()).then_some(2),
        html! {
            dl.facts {
                dt { "State" } dd { (state_badge(j.state.as_str())) }
                dt { "Progress" } dd { (progress(j)) }
                dt { "Kind" } dd { (j.kind) }
                dt { "User" } dd { (j.user) }
                @if let Some(vm) = &j.vm { dt { "VM" } dd { a href={"/vms/" (vm)} { (vm) } } }
                dt { "Created" } dd { (rfc3339(j.created_at)) }
                dt { "Started" } dd { (j.started_at.map(rfc3339).unwrap_or_default()) }
                dt { "Finished" } dd { (j.finished_at.map(rfc3339).unwrap_or_default()) }
                @if let Some(e) = &j.error { dt { "Error" } dd.error { (e) } }
            }
        },
    )
}

pub fn agents(
    ctx: &PageCtx,
    ops: &Ops,
    pending: &[EnrollmentToken],
    issued: Option<&IssuedToken>,
    req: &Req,
) -> Markup {
    let command = issued.map(|t| super::downloads::enroll_command(ops, t, req));
    html_agents(ctx, pending, command.as_deref())
}

fn html_agents(ctx: &PageCtx, pending: &[EnrollmentToken], command: Option<&str>) -> Markup {
    page(
        ctx,
        "Add a host",
        "/agents",
        None,
        html! {
            p { "Create a token, then run the command below as root on the virtualization host: it downloads " code { "lifeboat-agent" } " from this controller, checks it, installs it in /usr/local/bin and enrolls the host. The token works once and expires after 24 hours." }
            @if let Some(command) = command {
                p.flash.ok { "New enrollment token created. Copy the command now: the token is not shown again." }
                pre.command #enroll-command { (command) }
            }
            form method="post" action="/agents/tokens" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                button type="submit" { "Create enrollment token" }
            }
            h2 { "Unused tokens" }
            @if pending.is_empty() { p.muted { "None." } } @else {
                table {
                    thead { tr { th { "Created by" } th { "Created" } th { "Expires" } } }
                    tbody { @for t in pending { tr { td { (t.created_by) } td { (rfc3339(t.created_at)) } td { (rfc3339(t.expires_at)) } } } }
                }
            }
        },
    )
}
