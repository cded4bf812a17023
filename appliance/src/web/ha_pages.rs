//! Console pages for high availability: the cluster view (host states,
//! admission control, settings), failover history with timelines, HA
//! sections of the host and VM pages, and physical machines.

use maud::{html, Markup};

use super::fields::{Field, Form};
use super::layout::{bytes, page, state_badge, PageCtx};
use lifeboat_core::model::rfc3339;
use lifeboat_core::model::Failover;
use lifeboat_core::model::HostEvent;
use lifeboat_core::model::Privilege;
use lifeboat_core::model::{ClusterHa, FailoverMethod, HostHaView, HostProbe, VmHa};
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
            (cluster_form(ctx, s))
        },
    )
}

fn cluster_form(ctx: &PageCtx, s: &ClusterHa) -> Markup {
    let f = Form::new(ctx, "/cluster/settings");
    html! {
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Failure detection" }
                (f.row(Field::number("heartbeat_interval_ms", "Heartbeat interval", s.heartbeat_interval_ms)
                    .unit("ms").range(200, 3000).required()
                    .help("How often each agent reports; 200 to 3000.")))
                (f.row(Field::number("misses", "Misses before suspect", s.misses)
                    .unit("heartbeats").range(1, 100).required()
                    .help("Heartbeats missed in a row before a host is suspect; 1 to 100.")))
            }
            fieldset {
                legend { "Fencing" }
                (f.row(Field::number("fence_timeout_ms", "Fence timeout", s.fence_timeout_ms)
                    .unit("ms").range(200, 600_000).required()
                    .help("A host cut off this long stops its own VMs; at least interval × misses.")))
                (f.row(Field::number("fence_margin_ms", "Fence margin", s.fence_margin_ms)
                    .unit("ms").range(500, 600_000).required()
                    .help("Waited on top of the timeout before VMs start elsewhere; 500 to 600000.")))
                (f.row(Field::number("tolerated_host_failures", "Host failures to tolerate", s.tolerated_host_failures)
                    .unit("hosts").range(0, 1000)
                    .help("Admission control keeps room to restart every protected VM after this many failures.")))
            }
            fieldset {
                legend { "Storage and isolation" }
                (f.row(Field::textarea("shared_storages", "Shared storages", 3, pairs(&s.shared_storages))
                    .placeholder("vmstore=/srv/vmstore")
                    .help("NAME=PATH on the controller, one per line: where the storage heartbeats are read.")))
                (f.row(Field::textarea("isolation_addresses", "Isolation addresses", 2, s.isolation_addresses.join("\n"))
                    .placeholder("10.0.0.1:53")
                    .help("IP:PORT a host must reach to know it is not isolated, one per line; empty: its gateway.")))
            }
            @if can_manage(ctx) { button type="submit" { "Save cluster settings" } }
        }
    }
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
        @let f = Form::new(ctx, format!("/hosts/{host_id}/ha"));
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Probing" }
                (f.row(Field::select("probe", "Network probe", &[("icmp", "ICMP echo"), ("tcp", "TCP connect")], probe)
                    .help("How the controller checks a silent host is really down.")))
                (f.row(Field::number("port", "TCP port", port).range(1, 65535)
                    .help("For a TCP probe: a port the host always listens on (22 for SSH).")))
                (f.row(Field::text("address", "Probe address", &ha.address).placeholder("where the agent connects from")
                    .help("The host's IP address to probe; empty: the one its agent connects from.")))
            }
            fieldset {
                legend { "Fencing" }
                (f.row(Field::password("fence_command", "Out-of-band fence command")
                    .placeholder(if ha.fence_command_set { "set — leave empty to keep it" } else { "none" })
                    .help("Run with sh -c to power the host off (IPMI, PDU); exit 0 means off. Administrators only.")))
                @if ha.fence_command_set {
                    (f.row(Field::checkbox("clear_fence_command", "Remove the fence command", false)))
                }
                (f.row(Field::textarea("storage_mounts", "Shared storage mounts", 3, pairs(&ha.storage_mounts))
                    .placeholder("vmstore=/var/lib/libvirt/shared")
                    .help("NAME=PATH on this host, one per line: where the cluster's shared storages are mounted.")))
            }
            @if can_manage(ctx) { button type="submit" { "Save HA settings" } }
        }
        h2 { "History" }
        (event_table(events))
    }
}

pub fn vm_section(ctx: &PageCtx, vm_id: &str, ha: &VmHa) -> Markup {
    html! {
        h2 { "High availability" }
        @let f = Form::new(ctx, format!("/vms/{vm_id}/ha"));
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Failover" }
                (f.row(Field::checkbox("enabled", "Protected", ha.enabled)
                    .help("Restart this VM on another host when its host fails.")))
                (f.row(Field::select("priority", "Restart priority",
                    &[("high", "high"), ("medium", "medium"), ("low", "low")], ha.priority.as_str())
                    .help("Higher priorities start first and keep their room under admission control.")))
                (f.row(Field::select("method", "Fail over by", &[
                    ("restart", "restart from shared storage"),
                    ("restore", "restore from the latest backup"),
                ], if ha.method == FailoverMethod::Restore { "restore" } else { "restart" })
                    .help("Restore needs no shared storage but loses what changed since the backup.")))
            }
            fieldset {
                legend { "Placement and checks" }
                (f.row(Field::text("anti_affinity_group", "Anti-affinity group", &ha.anti_affinity_group)
                    .help("VMs of one group are never placed on the same host; at most 64 characters.")))
                (f.row(Field::text("probe_address", "Guest address to ping", &ha.probe_address)
                    .placeholder("10.0.0.20")
                    .help("An IP address of the guest: a VM that stops answering is restarted; empty: none.")))
            }
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
                @let f = Form::new(ctx, "/physical");
                form.stack method="post" action=(f.action()) {
                    (f.head())
                    fieldset {
                        legend { "Machine" }
                        (f.row(Field::text("name", "Name", "").required()))
                        (f.row(Field::textarea("checks", "Health checks", 3, "").required()
                            .placeholder("icmp 10.0.0.7")
                            .help("One per line: icmp ADDRESS, tcp ADDRESS PORT, or http URL STATUS.")))
                        (f.row(Field::number("failed_rounds", "Failed rounds before failover", 3)
                            .unit("rounds").range(1, 100)
                            .help("Rounds (one a second) in which every check fails before the standby starts.")))
                    }
                    fieldset {
                        legend { "Standby" }
                        (f.row(Field::text("standby_vm", "Standby VM", "").required()
                            .help("UUID or name of the VM that takes over.")))
                        (f.row(Field::text("standby_host", "Start it on host", "")
                            .help("A host name; empty: where the VM is defined.")))
                    }
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
