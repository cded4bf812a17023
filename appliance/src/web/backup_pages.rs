//! Console widgets for backups: the VM page's backup section (back up now,
//! the list, restore forms).

use maud::{html, Markup};

use super::fields::{Field, Form};
use super::layout::{bytes, PageCtx};
use lifeboat_core::model::BackupPolicy;
use lifeboat_core::model::HostView;
use lifeboat_core::model::{rfc3339, Privilege};
use lifeboat_core::ops::{BackupSummary, DatastoreView};

pub fn vm_backups(
    ctx: &PageCtx,
    vm_id: &str,
    backups: &[BackupSummary],
    hosts: &[HostView],
) -> Markup {
    html! {
        h2 { "Backups" }
        form.inline method="post" action={"/vms/" (vm_id) "/backups"} {
            input type="hidden" name="csrf" value=(ctx.csrf);
            select name="mode" {
                option value="auto" { "Incremental when possible" }
                option value="full" { "Full" }
            }
            button type="submit" { "Back up now" }
        }
        @if backups.is_empty() { p.muted { "No backups yet." } } @else {
            table {
                thead { tr {
                    th { "Time" } th { "Mode" } th { "Datastore" } th { "Disk size" } th { "Read" } th { "New data" }
                    th { "Consistency" } th { "Verified" } th { "Boots" } th { "Restore" }
                    @if ctx.who.can(Privilege::DeleteBackup) { th { "Delete" } }
                } }
                tbody {
                    @for b in backups.iter().rev() {
                        @let m = &b.manifest;
                        tr {
                            td { a href={"/backups/" (b.reference)} { (m.backup.id.as_str()) } }
                            td { (format!("{:?}", m.backup.mode).to_lowercase()) }
                            td { (b.reference.datastore) }
                            td { (bytes(m.disks.iter().map(|d| d.size_bytes).sum())) }
                            td { (bytes(m.backup.bytes_read)) }
                            td { (bytes(m.backup.bytes_new)) }
                            td { @if m.backup.guest_frozen { "filesystems frozen" } @else { "crash-consistent" } }
                            td { (verify_cell(ctx, b)) }
                            td { (boot_cell(ctx, b, hosts)) }
                            td { (restore_form(ctx, &b.reference.to_string(), &m.vm.origin_host_id, hosts)) }
                            @if ctx.who.can(Privilege::DeleteBackup) && !b.protected {
                                td {
                                    form.inline method="post" action={"/backups/" (b.reference) "/delete"} {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        button type="submit" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn verify_cell(ctx: &PageCtx, b: &BackupSummary) -> Markup {
    html! {
        @match &b.verify {
            Some(v) if v.ok => { span class="badge state-succeeded" { "ok" } " " (rfc3339(v.time)) }
            Some(v) => { span class="badge state-failed" { "bad" } " " (v.damaged_count) " damaged, " (v.missing_count) " missing" }
            None => { span.muted { "never" } }
        }
        form.inline method="post" action={"/backups/" (b.reference) "/verify"} {
            input type="hidden" name="csrf" value=(ctx.csrf);
            button type="submit" { "Verify" }
        }
    }
}

/// The last boot verification, and the form that starts one.
fn boot_cell(ctx: &PageCtx, b: &BackupSummary, hosts: &[HostView]) -> Markup {
    html! {
        (boot_status(b))
        @if ctx.who.can(Privilege::Restore) && ctx.who.can(Privilege::Backup) {
            form.inline method="post" action={"/backups/" (b.reference) "/boot-verify"} {
                input type="hidden" name="csrf" value=(ctx.csrf);
                select name="host" {
                    @for h in hosts {
                        option value=(h.host.id) selected[h.host.id == b.manifest.vm.origin_host_id] { (h.host.name) }
                    }
                }
                input type="text" name="serial_line" placeholder="serial line (else guest agent)" size="18";
                button type="submit" { "Boot-verify" }
            }
        }
    }
}

fn boot_status(b: &BackupSummary) -> Markup {
    html! {
        @match &b.boot_verify {
            Some(v) if v.ok => {
                span class="badge state-succeeded" { "boots" } " "
                (v.boot_secs.map(|s| format!("in {s:.1} s, ")).unwrap_or_default()) (rfc3339(v.time))
            }
            Some(v) => { span class="badge state-failed" { "does not boot" } " " (v.detail) }
            None => { span.muted { "not boot-verified" } }
        }
    }
}

fn restore_form(ctx: &PageCtx, reference: &str, origin: &str, hosts: &[HostView]) -> Markup {
    html! {
        form.inline method="post" action={"/backups/" (reference) "/restore"} {
            input type="hidden" name="csrf" value=(ctx.csrf);
            select name="host" {
                @for h in hosts {
                    option value=(h.host.id) selected[h.host.id == origin] { (h.host.name) }
                }
            }
            label { input type="checkbox" name="replace" value="1"; " replace the existing VM" }
            input type="text" name="new_name" placeholder="…or as new VM named" size="16";
            input type="text" name="hostname" placeholder="hostname" size="10";
            input type="text" name="computer_name" placeholder="Windows name" size="10";
            input type="text" name="domain" placeholder="domain" size="12";
            label { input type="checkbox" name="start" value="1"; " start" }
            label title="The VM starts at once from the backup; its disks are copied in the background" {
                input type="checkbox" name="instant" value="1"; " instant"
            }
            input type="number" name="bandwidth_mib" min="0" placeholder="copy MiB/s" size="8";
            button type="submit" { "Restore" }
        }
    }
}

pub fn backup_detail(b: &BackupSummary) -> Markup {
    let m = &b.manifest;
    html! {
        dl.facts {
            dt { "Backup" } dd { code { (b.reference) } }
            dt { "VM" } dd { a href={"/vms/" (m.vm.uuid.as_str())} { (m.vm.name) } " (" code { (m.vm.uuid.as_str()) } ")" }
            dt { "Origin host" } dd { (m.vm.origin_host_name) }
            dt { "Mode" } dd { (format!("{:?}", m.backup.mode).to_lowercase())
                @if let Some(p) = &m.backup.parent { " (after " (p.as_str()) ")" } }
            dt { "Started" } dd { (rfc3339(m.backup.started_at)) }
            dt { "Finished" } dd { (rfc3339(m.backup.finished_at)) }
            dt { "Read from disk" } dd { (bytes(m.backup.bytes_read)) }
            dt { "New to the datastore" } dd { (bytes(m.backup.bytes_new)) }
            dt { "Checkpoint" } dd { (m.backup.checkpoint.clone().unwrap_or_else(|| "none".into())) }
            dt { "vCPUs / memory" } dd { (m.vm.vcpus) " / " (m.vm.memory_mib) " MiB" }
            dt { "Boot verification" } dd { (boot_status(b))
                @if let Some(v) = &b.boot_verify { " on " (v.host) ", waiting for " (v.signal.to_string()) } }
        }
        @if b.boot_verify.as_ref().is_some_and(|v| v.screenshot.is_some()) {
            figure {
                img src={"/backups/" (b.reference) "/boot-screen"} alt="The sandbox's screen at the end of its boot verification";
                figcaption { "The sandbox's screen when its boot verification ended" }
            }
        }
        h2 { "Disks" }
        table {
            thead { tr { th { "Target" } th { "Format" } th { "Size" } th { "Chunks" } th { "Index checksum" } } }
            tbody { @for d in &m.disks { tr {
                td { (d.target) } td { (d.format) } td { (bytes(d.size_bytes)) } td { (d.chunk_count) }
                td { code { (d.index_checksum) } }
            } } }
        }
        h2 { "Network interfaces" }
        table {
            thead { tr { th { "MAC" } th { "Network" } th { "Model" } } }
            tbody { @for n in &m.vm.nics { tr { td { code { (n.mac) } } td { (n.network) } td { (n.model) } } } }
        }
        details { summary { "Hypervisor configuration" } pre.config { (m.vm.hypervisor_config) } }
    }
}

pub fn datastores(ctx: &PageCtx, list: &[DatastoreView]) -> Markup {
    html! {
        table {
            thead { tr { th { "Datastore" } th { "Path" } th { "Backups" } th { "Used" } th { "Free" } th { "Capacity" } } }
            tbody { @for d in list { tr {
                td { (d.name) }
                td { code { (d.path.display()) } }
                td { (d.backups) }
                @match &d.capacity {
                    Ok(c) => {
                        td { (bytes(c.total_bytes.saturating_sub(c.free_bytes))) }
                        td { (bytes(c.free_bytes)) }
                        td {
                            progress max=(c.total_bytes.max(1)) value=(c.total_bytes.saturating_sub(c.free_bytes)) {}
                            " " (bytes(c.total_bytes))
                        }
                    }
                    Err(e) => { td.error colspan="3" { "unreachable: " (e) } }
                }
            } } }
        }
        p.downloads {
            "Every backup: "
            a href="/exports/backups.csv" { "CSV" } " · " a href="/exports/backups.xlsx" { "Excel" }
        }
        h2 { "Add a datastore" }
        p.muted { "A directory of the controller (under its allowed roots), or an NFS export or SMB share the controller mounts. Share passwords are stored encrypted and never shown again." }
        @let f = Form::new(ctx, "/datastores");
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Datastore" }
                (f.row(Field::text("name", "Name", "").required()
                    .help("Letters, digits and '-'; how backups and policies name it.")))
                (f.row(Field::select("kind", "Kind", &[
                    ("local", "local directory"), ("nfs", "NFS export"), ("smb", "SMB / Windows share"),
                ], "local")))
                (f.row(Field::text("path", "Directory", "").placeholder("/srv/lifeboat/store")
                    .help("Local only: an absolute path under the controller's allowed roots.")))
            }
            fieldset {
                legend { "Share (NFS or SMB)" }
                (f.row(Field::text("server", "Server", "").placeholder("nas.example.org")
                    .help("Host name or address of the file server.")))
                (f.row(Field::text("export", "NFS export", "").placeholder("/export/backups")
                    .help("NFS only: the exported path.")))
                (f.row(Field::text("share", "SMB share", "").placeholder("backups")
                    .help("SMB only: the share name.")))
                (f.row(Field::text("username", "SMB user", "")))
                (f.row(Field::password("password", "SMB password")
                    .help("Stored encrypted and never shown again.")))
                (f.row(Field::text("domain", "SMB domain", "").help("Optional: the user's domain or workgroup.")))
                (f.row(Field::text("options", "Mount options", "").placeholder("vers=4.2")
                    .help("Optional, comma-separated; nosuid, nodev and noexec are always set.")))
            }
            button type="submit" { "Add datastore" }
        }
    }
}

fn retention_text(p: &BackupPolicy) -> String {
    let r = &p.retention;
    let parts: Vec<String> = [
        ("last", r.keep_last),
        ("hourly", r.keep_hourly),
        ("daily", r.keep_daily),
        ("weekly", r.keep_weekly),
        ("monthly", r.keep_monthly),
        ("yearly", r.keep_yearly),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|n| format!("{k} {n}")))
    .collect();
    if parts.is_empty() {
        "keep everything".into()
    } else {
        format!("keep {}", parts.join(", "))
    }
}

pub fn policies(ctx: &PageCtx, list: &[BackupPolicy]) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No backup policies yet." } } @else {
            table {
                thead { tr { th { "Policy" } th { "Schedule (UTC)" } th { "VMs" } th { "Datastore" } th { "Retention" } th { "Checks" } th { "Last run" } th { "" } } }
                tbody { @for p in list { tr {
                    td { (p.name) @if !p.enabled { " " span.muted { "(disabled)" } } }
                    td { code { (p.schedule) } }
                    td {
                        @if !p.vms.is_empty() { (p.vms.len()) " by id" }
                        @if let Some(pat) = &p.name_pattern { " name " code { (pat) } }
                        @if let Some(c) = &p.category { " category " code { (c) } }
                    }
                    td { (p.datastore) }
                    td { (retention_text(p)) }
                    td {
                        @if let Some(v) = &p.verify_schedule { "verify " code { (v) } " " }
                        @if let Some(b) = &p.boot_verify {
                            "boot-verify each new backup"
                            @if let Some(line) = &b.serial_line { " (until " code { (line) } ")" }
                        }
                    }
                    td { (rfc3339(p.last_run)) }
                    td {
                        form.inline method="post" action={"/policies/" (p.id) "/run"} {
                            input type="hidden" name="csrf" value=(ctx.csrf);
                            button type="submit" { "Run now" }
                        }
                        form.inline method="post" action={"/policies/" (p.id) "/delete"} {
                            input type="hidden" name="csrf" value=(ctx.csrf);
                            button type="submit" { "Delete" }
                        }
                    }
                } } }
            }
        }
        h2 { "New policy" }
        @let f = Form::new(ctx, "/policies");
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Policy" }
                (f.row(Field::text("name", "Name", "").required()))
                (f.row(Field::text("schedule", "Schedule", "").required().placeholder("daily 02:00")
                    .help("When it runs, in UTC: daily HH:MM, hourly, mon,thu 22:30, …")))
            }
            fieldset {
                legend { "Which VMs" }
                (f.row(Field::text("name_pattern", "VM names", "").placeholder("fin-*")
                    .help("A glob over VM names.")))
                (f.row(Field::text("category", "or category", "").placeholder("department=Finance")
                    .help("KEY=VALUE: every VM in that category.")))
            }
            fieldset {
                legend { "Retention" }
                (f.row(Field::number("keep_last", "Keep last", "").unit("backups").range(0, 10_000)))
                (f.row(Field::number("keep_daily", "Keep daily", "").unit("days").range(0, 10_000)))
                (f.row(Field::number("keep_weekly", "Keep weekly", "").unit("weeks").range(0, 10_000)))
                (f.row(Field::number("keep_monthly", "Keep monthly", "").unit("months").range(0, 10_000)
                    .help("Empty everywhere: keep every backup.")))
                (f.row(Field::text("verify_schedule", "Verify", "").placeholder("sun 03:00")
                    .help("Optional: when to re-read and check this policy's backups.")))
                (f.row(Field::checkbox("boot_verify", "Boot-verify", false)
                    .help("After each run, boot each VM's new backup in a sandbox without network.")))
                (f.row(Field::text("boot_serial_line", "…until the serial line", "").placeholder("login:")
                    .help("Empty: until the guest agent answers.")))
            }
            button type="submit" { "Create policy" }
        }
    }
}
