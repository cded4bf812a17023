//! Console pages for high availability: the cluster view (host states,
//! admission control, settings), failover history with timelines, HA
//! sections of the host and VM pages, and physical machines.

use maud::{html, Markup};

use super::layout::{bytes, page, state_badge, PageCtx};
use lifeboat_core::model::rfc3339;
use lifeboat_core::model::Failover;
use lifeboat_core::model::HostEvent;
use lifeboat_core::model::Privilege;
use lifeboat_core::model::{FailoverMethod, HostHaView, HostProbe, Priority, VmHa};
use lifeboat_core::model::{HealthCheck, PhysicalMachine, PhysicalState};
use lifeboat_core::ops::ClusterView;

fn can_manage(ctx: &PageCtx) -> bool {
    ctx.who.can(Privilege::ManageHa)
}

fn ms_time(ms: u64) -> String {
    rfc3339(ms / 1000)
}

pub fn cluster(
    ctx: &PageCtx,
    c: &ClusterView,
    failovers: &[Failover],
    events: &[HostEvent],
) -> Markup {
    let s = &c.settings;
    page(
        ctx,
        "Cluster",
        "/cluster",
        Some(5),
        html! {
            @if let Some(w) = &c.admission_warning {
                p.flash.error { "Admission control: " (w) }
            }
            table {
                thead { tr { th { "Host" } th { "Agent" } th { "HA state" } th { "Why" } th { "HA VMs" } th { "Free memory" } } }
                tbody {
                    @for h in &c.hosts {
                        tr {
                            td { a href={"/hosts/" (h.view.host.id)} { (h.view.host.name) } }
                            td { (state_badge(h.view.status.as_str())) }
                            td { (state_badge(h.state.as_str())) }
                            td.muted { (h.reason) }
                            td { (h.protected_vms) }
                            td { (bytes(h.view.host.facts.memory_free_bytes)) }
                        }
                    }
                }
            }
            h2 { "Failovers" }
            (failover_table(failovers))
            h2 { "Recent events" }
            (event_table(events))
            h2 { "Settings" }
            form.stack method="post" action="/cluster/settings" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Heartbeat interval (ms) " input type="number" name="heartbeat_interval_ms" value=(s.heartbeat_interval_ms); }
                label { "Misses before suspect " input type="number" name="misses" value=(s.misses); }
                label { "Fence timeout (ms) " input type="number" name="fence_timeout_ms" value=(s.fence_timeout_ms); }
                label { "Fence margin (ms) " input type="number" name="fence_margin_ms" value=(s.fence_margin_ms); }
                label { "Host failures to tolerate " input type="number" name="tolerated_host_failures" value=(s.tolerated_host_failures); }
                label { "Shared storages (NAME=CONTROLLER PATH, one per line) "
                    textarea name="shared_storages" rows="3" { (pairs(&s.shared_storages)) } }
                label { "Isolation addresses (IP:PORT, one per line; empty: each host's gateway) "
                    textarea name="isolation_addresses" rows="2" { (s.isolation_addresses.join("\n")) } }
                @if can_manage(ctx) { button type="submit" { "Save" } }
            }
        },
    )
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn failover_table(failovers: &[Failover]) -> Markup {
    html! {
        @if failovers.is_empty() { p.muted { "No failover yet." } } @else {
            table {
                thead { tr { th { "Started" } th { "Failed" } th { "State" } th { "VMs" } th { "Why" } } }
                tbody {
                    @for f in failovers {
                        tr {
                            td { a href={"/failovers/" (f.id)} { (ms_time(f.started_at_ms())) } }
                            td { (f.source_name) }
                            td { (state_badge(&format!("{:?}", f.state).to_lowercase())) }
                            td { (f.vms.len()) }
                            td.muted { (f.reason) }
                        }
                    }
                }
            }
        }
    }
}

fn event_table(events: &[HostEvent]) -> Markup {
    html! {
        @if events.is_empty() { p.muted { "Nothing happened yet." } } @else {
            table {
                thead { tr { th { "Time" } th { "Source" } th { "State" } th { "Event" } } }
                tbody {
                    @for e in events {
                        tr {
                            td { (ms_time(e.at_ms)) }
                            td { code { (e.host_id) } }
                            td { (state_badge(&e.state)) }
                            td { (e.message) }
                        }
                    }
                }
            }
        }
    }
}

pub fn failover(ctx: &PageCtx, f: &Failover) -> Markup {
    let timeline = f.timeline();
    page(
        ctx,
        &format!("Failover of {}", f.source_name),
        "/cluster",
        (f.state == lifeboat_core::model::FailoverState::Running).then_some(2),
        html! {
            p { "Last sign of life: " (ms_time(f.last_seen_ms)) " · " (f.reason) }
            h2 { "Timeline" }
            table {
                thead { tr { th { "Seconds after last sign of life" } th { "Step" } th { "Took (s)" } } }
                tbody {
                    @for (i, (secs, what)) in timeline.iter().enumerate() {
                        @let previous = if i == 0 { 0.0 } else { timeline[i - 1].0 };
                        tr {
                            td { (format!("{secs:.1}")) }
                            td { (what) }
                            td { (format!("{:.1}", secs - previous)) }
                        }
                    }
                }
            }
            h2 { "VMs" }
            table {
                thead { tr { th { "VM" } th { "Priority" } th { "Before" } th { "Destination" } th { "State" } th { "Error" } } }
                tbody {
                    @for v in &f.vms {
                        tr {
                            td { a href={"/vms/" (v.uuid)} { (v.name) } }
                            td { (v.priority.as_str()) }
                            td { (v.prior_state.as_str()) }
                            td { (v.destination.clone().unwrap_or_default()) }
                            td { (state_badge(&format!("{:?}", v.state).to_lowercase())) }
                            td.error { (v.error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        },
    )
}

pub fn host_section(ctx: &PageCtx, host_id: &str, ha: &HostHaView, events: &[HostEvent]) -> Markup {
    let (probe, port) = match ha.probe {
        HostProbe::Icmp => ("icmp", String::new()),
        HostProbe::Tcp { port } => ("tcp", port.to_string()),
    };
    html! {
        h2 { "High availability" }
        form.stack method="post" action={"/hosts/" (host_id) "/ha"} {
            input type="hidden" name="csrf" value=(ctx.csrf);
            label { "Network probe "
                select name="probe" {
                    option value="icmp" selected[probe == "icmp"] { "ICMP echo" }
                    option value="tcp" selected[probe == "tcp"] { "TCP connect" }
                }
                " port " input type="number" name="port" value=(port);
            }
            label { "Probe address (empty: where the agent connects from) " input name="address" value=(ha.address); }
            label { "Out-of-band fence command (sh -c; exit 0 = powered off; administrators only) "
                input type="password" name="fence_command" autocomplete="off"
                    placeholder=(if ha.fence_command_set { "set — leave empty to keep it" } else { "none" }); }
            @if ha.fence_command_set {
                label { input type="checkbox" name="clear_fence_command"; " Remove the fence command" }
            }
            label { "Shared storage mounts (NAME=PATH ON THIS HOST, one per line) "
                textarea name="storage_mounts" rows="3" { (pairs(&ha.storage_mounts)) } }
            @if can_manage(ctx) { button type="submit" { "Save HA settings" } }
        }
        h2 { "History" }
        (event_table(events))
    }
}

pub fn vm_section(ctx: &PageCtx, vm_id: &str, ha: &VmHa) -> Markup {
    html! {
        h2 { "High availability" }
        form.stack method="post" action={"/vms/" (vm_id) "/ha"} {
            input type="hidden" name="csrf" value=(ctx.csrf);
            label { input type="checkbox" name="enabled" checked[ha.enabled]; " Restart elsewhere when its host fails" }
            label { "Restart priority "
                select name="priority" {
                    @for p in [Priority::High, Priority::Medium, Priority::Low] {
                        option value=(p.as_str()) selected[ha.priority == p] { (p.as_str()) }
                    }
                }
            }
            label { "Anti-affinity group " input name="anti_affinity_group" value=(ha.anti_affinity_group); }
            label { "Fail over by "
                select name="method" {
                    option value="restart" selected[ha.method == FailoverMethod::Restart] { "restart from shared storage" }
                    option value="restore" selected[ha.method == FailoverMethod::Restore] { "restore from the latest backup" }
                }
            }
            label { "Guest address to ping " input name="probe_address" value=(ha.probe_address); }
            @if can_manage(ctx) { button type="submit" { "Save HA settings" } }
        }
    }
}

pub fn physical_machines(ctx: &PageCtx, machines: &[PhysicalMachine]) -> Markup {
    page(
        ctx,
        "Physical machines",
        "/physical",
        Some(5),
        html! {
            @if machines.is_empty() { p.muted { "No physical machine is watched." } } @else {
                table {
                    thead { tr { th { "Name" } th { "Checks" } th { "Standby VM" } th { "State" } th {} } }
                    tbody {
                        @for pm in machines {
                            tr {
                                td { (pm.name) }
                                td { @for c in &pm.checks { (check_text(c)) br; } }
                                td { a href={"/vms/" (pm.standby_vm)} { code { (pm.standby_vm) } } }
                                td { (state_badge(match pm.state { PhysicalState::Monitoring => "monitoring", PhysicalState::FailedOver => "failed over" })) }
                                td {
                                    @if pm.state == PhysicalState::FailedOver && can_manage(ctx) {
                                        form.inline method="post" action={"/physical/" (pm.id) "/failback"} {
                                            input type="hidden" name="csrf" value=(ctx.csrf);
                                            label { input type="checkbox" name="confirm" required; " stop the standby VM" }
                                            button type="submit" { "Fail back" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if can_manage(ctx) {
                h2 { "Watch a physical machine" }
                form.stack method="post" action="/physical" {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    label { "Name " input name="name" required; }
                    label { "Checks, one per line: icmp ADDRESS | tcp ADDRESS PORT | http URL STATUS "
                        textarea name="checks" rows="3" required {} }
                    label { "Failed rounds before failover " input type="number" name="failed_rounds" value="3"; }
                    label { "Standby VM (UUID or name) " input name="standby_vm" required; }
                    label { "Start it on host (empty: where it is defined) " input name="standby_host"; }
                    button type="submit" { "Watch" }
                }
            }
        },
    )
}

fn check_text(c: &HealthCheck) -> String {
    match c {
        HealthCheck::Icmp { address } => format!("icmp {address}"),
        HealthCheck::Tcp { address, port } => format!("tcp {address} {port}"),
        HealthCheck::Http { url, expect_status } => format!("http {url} {expect_status}"),
    }
}

/// Parses the console's one-check-per-line form field.
pub fn parse_checks(text: &str) -> Result<Vec<HealthCheck>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["icmp", address] => Ok(HealthCheck::Icmp {
                    address: address.to_string(),
                }),
                ["tcp", address, port] => Ok(HealthCheck::Tcp {
                    address: address.to_string(),
                    port: port.parse().map_err(|_| format!("bad port in {line:?}"))?,
                }),
                ["http", url, status] => Ok(HealthCheck::Http {
                    url: url.to_string(),
                    expect_status: status
                        .parse()
                        .map_err(|_| format!("bad status in {line:?}"))?,
                }),
                _ => Err(format!("cannot read check {line:?}")),
            }
        })
        .collect()
}

/// Parses `NAME=VALUE` lines.
pub fn parse_pairs(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            line.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("expected NAME=VALUE, got {line:?}"))
        })
        .collect()
}
