//! Console pages for users, roles and the audit trail.

use maud::{html, Markup};

use super::layout::{page, state_badge, PageCtx};
use lifeboat_core::model::rfc3339;
use lifeboat_core::model::AccessPolicy;
use lifeboat_core::model::ApiToken;
use lifeboat_core::model::AuditRecord;
use lifeboat_core::model::Directory;
use lifeboat_core::model::{Categories, CategoryRule};
use lifeboat_core::model::{Privilege, RoleDef};
use lifeboat_core::ops::UserView;

pub fn users(ctx: &PageCtx, users: &[UserView], roles: &[RoleDef]) -> Markup {
    let role_select = |current: &str| {
        html! {
            select name="role" {
                @for r in roles {
                    option value=(r.name) selected[r.name == current] { (r.name) }
                }
            }
        }
    };
    page(
        ctx,
        "Users",
        "/users",
        None,
        html! {
            p { a href="/roles" { "Roles" } " · " a href="/access-policies" { "Access policies and categories" } " · " a href="/directories" { "Directories" } " · " a href="/tokens" { "API tokens" } }
            table {
                thead { tr { th { "User" } th { "Role" } th { "Policies" } th { "State" } th { "Created" } th {} } }
                tbody {
                    @for u in users {
                        tr {
                            td { (u.name) }
                            td {
                                form.inline method="post" action={"/users/" (u.name)} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    (role_select(&u.role))
                                    button type="submit" { "Set role" }
                                }
                            }
                            td { (u.policies.join(", ")) }
                            td { (state_badge(if u.disabled { "disabled" } else { "enabled" })) }
                            td { (rfc3339(u.created_at)) }
                            td {
                                form.inline method="post" action={"/users/" (u.name)} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    input type="hidden" name="disabled" value=(if u.disabled { "false" } else { "true" });
                                    button type="submit" { @if u.disabled { "Enable" } @else { "Disable (ends their sessions)" } }
                                }
                                " "
                                (delete_button(ctx, &format!("/users/{}/delete", u.name)))
                            }
                        }
                    }
                }
            }
            h2 { "Add a local user" }
            form.stack method="post" action="/users" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Name " input name="name" required; }
                label { "Password (at least 10 characters) " input type="password" name="password" required minlength="10"; }
                label { "Role " (role_select("auditor")) }
                button type="submit" { "Add user" }
            }
        },
    )
}

pub fn roles(ctx: &PageCtx, roles: &[RoleDef]) -> Markup {
    page(
        ctx,
        "Roles",
        "/users",
        None,
        html! {
            table {
                thead { tr { th { "Role" } th { "Privileges" } th { "Description" } th {} } }
                tbody {
                    @for r in roles {
                        tr {
                            td { (r.name) @if r.builtin { " " span.muted { "(built in)" } } }
                            td { @for p in &r.privileges { code { (p.as_str()) } " " } }
                            td { (r.description) }
                            td {
                                @if !r.builtin {
                                    (delete_button(ctx, &format!("/roles/{}/delete", r.name)))
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Add a custom role" }
            form.stack method="post" action="/roles" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Name (lower-case letters, digits, '-') " input name="name" required; }
                label { "Description " input name="description"; }
                fieldset {
                    legend { "Privileges" }
                    @for p in Privilege::ALL {
                        label { input type="checkbox" name="privilege" value=(p.as_str()); " " (p.as_str()) } " "
                    }
                }
                button type="submit" { "Add role" }
            }
        },
    )
}

pub fn audit(ctx: &PageCtx, records: &[AuditRecord], query: &str) -> Markup {
    page(
        ctx,
        "Audit trail",
        "/audit",
        None,
        html! {
            form.inline method="get" action="/audit" {
                input name="user" placeholder="user";
                input name="action" placeholder="action, e.g. power";
                input name="object" placeholder="object contains";
                button type="submit" { "Filter" }
                " "
                a href={"/audit.csv?" (query)} { "Download as CSV" }
            }
            table {
                thead { tr { th { "#" } th { "Time" } th { "User" } th { "From" } th { "Action" } th { "Object" } th { "Result" } } }
                tbody {
                    @for r in records {
                        tr {
                            td { (r.seq) }
                            td { (rfc3339(r.time)) }
                            td { (r.user) }
                            td { (r.source) }
                            td { (r.action) }
                            td { (r.object) }
                            td { (r.result) }
                        }
                    }
                }
            }
        },
    )
}

pub fn access_policies(ctx: &PageCtx, policies: &[AccessPolicy], rules: &[CategoryRule]) -> Markup {
    page(
        ctx,
        "Access policies and categories",
        "/users",
        None,
        html! {
            p.muted { "A user with policies sees a VM when a rule allows it and none denies it; a user without policies sees every VM." }
            table {
                thead { tr { th { "Policy" } th { "Rules" } th { "Description" } th {} } }
                tbody {
                    @for p in policies {
                        tr {
                            td { (p.name) }
                            td { @for r in &p.rules { code { (format!("{:?}", r.effect).to_lowercase()) " " (r.key) "=" (r.value) } br; } }
                            td { (p.description) }
                            td { (delete_button(ctx, &format!("/access-policies/{}/delete", p.name))) }
                        }
                    }
                }
            }
            h2 { "Add an access policy" }
            form.stack method="post" action="/access-policies" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Name " input name="name" required; }
                label { "Rules, one per line: allow|deny KEY=VALUE (* for any) "
                    textarea name="rules" rows="3" required {} }
                button type="submit" { "Add policy" }
            }
            h2 { "Category rules" }
            table {
                thead { tr { th { "Category" } th { "VM name pattern" } th { "Host" } th {} } }
                tbody {
                    @for r in rules {
                        tr {
                            td { code { (r.key) "=" (r.value) } }
                            td { (r.name_pattern) }
                            td { (r.host) }
                            td { (delete_button(ctx, &format!("/category-rules/{}/delete", r.id))) }
                        }
                    }
                }
            }
            form.stack method="post" action="/category-rules" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Category " input name="key" placeholder="department" required; "=" input name="value" placeholder="Finance" required; }
                label { "for VMs named (glob) " input name="name_pattern" placeholder="fin-*"; }
                label { "or on host " input name="host"; }
                button type="submit" { "Add rule" }
            }
        },
    )
}

pub fn directories(ctx: &PageCtx, directories: &[Directory]) -> Markup {
    page(
        ctx,
        "Directories",
        "/users",
        None,
        html! {
            table {
                thead { tr { th { "Name" } th { "URL" } th { "Users" } th { "Groups → role, policies" } th {} } }
                tbody {
                    @for d in directories {
                        tr {
                            td { (d.name) }
                            td { (d.url) @if d.starttls { " (StartTLS)" } }
                            td { (format!("{:?}", d.user_attribute)) " in " (d.user_base) }
                            td { @for m in &d.mappings { (m.group) " → " (m.role) @if !m.policies.is_empty() { ", " (m.policies.join(", ")) } br; } }
                            td { (delete_button(ctx, &format!("/directories/{}/delete", d.name))) }
                        }
                    }
                }
            }
            h2 { "Add a directory" }
            form.stack method="post" action="/directories" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Name " input name="name" required; }
                label { "URL (ldaps://host:636 or ldap://host:389) " input name="url" required; }
                label { input type="checkbox" name="starttls"; " StartTLS" }
                label { input type="checkbox" name="allow_plain"; " allow plain LDAP (passwords in clear)" }
                label { "CA certificate (PEM; empty: system store) " textarea name="ca_pem" rows="3" {} }
                label { "Bind DN " input name="bind_dn" required; }
                label { "Bind password " input type="password" name="bind_password" required; }
                label { "User base " input name="user_base" required; }
                label { "User attribute "
                    select name="user_attribute" {
                        option value="uid" { "uid" }
                        option value="sAMAccountName" { "sAMAccountName" }
                        option value="userPrincipalName" { "userPrincipalName" }
                    }
                }
                label { "Group base " input name="group_base" required; }
                label { input type="checkbox" name="nested_groups"; " nested groups (Active Directory)" }
                label { "Mappings, one per line: GROUP=ROLE or GROUP=ROLE:POLICY,POLICY "
                    textarea name="mappings" rows="3" required {} }
                button type="submit" { "Add directory" }
            }
        },
    )
}

pub fn tokens(ctx: &PageCtx, tokens: &[ApiToken], new_token: Option<&str>) -> Markup {
    page(
        ctx,
        "API tokens",
        "/users",
        None,
        html! {
            @if let Some(t) = new_token {
                p.flash.ok { "Your new token (shown this once): " code { (t) } }
            }
            table {
                thead { tr { th { "Name" } th { "Owner" } th { "Privileges" } th { "Expires" } th {} } }
                tbody {
                    @for t in tokens {
                        tr {
                            td { (t.name) }
                            td { (t.owner) }
                            td { @for p in &t.privileges { code { (p.as_str()) } " " } }
                            td { (rfc3339(t.expires_at)) }
                            td { (delete_button(ctx, &format!("/tokens/{}/delete", t.id))) }
                        }
                    }
                }
            }
            h2 { "Make a token for yourself" }
            form.stack method="post" action="/tokens" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label { "Name " input name="name" required; }
                label { "Valid for (days) " input type="number" name="expires_in_days" value="30" min="1" max="366"; }
                fieldset {
                    legend { "Privileges (none ticked: all of yours)" }
                    @for p in ctx.who.privileges() {
                        label { input type="checkbox" name="privilege" value=(p.as_str()); " " (p.as_str()) } " "
                    }
                }
                button type="submit" { "Make token" }
            }
        },
    )
}

pub fn vm_categories(
    ctx: &PageCtx,
    vm_id: &str,
    own: &Categories,
    effective: &Categories,
) -> Markup {
    let lines: Vec<String> = own.iter().map(|(k, v)| format!("{k}={v}")).collect();
    html! {
        h2 { "Categories" }
        p { @for (k, v) in effective { code { (k) "=" (v) } " " } @if effective.is_empty() { span.muted { "none" } } }
        form.stack method="post" action={"/vms/" (vm_id) "/categories"} {
            input type="hidden" name="csrf" value=(ctx.csrf);
            label { "Own categories, one KEY=VALUE per line (rules add more) "
                textarea name="categories" rows="2" { (lines.join("\n")) } }
            @if ctx.who.can(Privilege::ManageUsers) { button type="submit" { "Save categories" } }
        }
    }
}

fn delete_button(ctx: &PageCtx, action: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(ctx.csrf);
            button type="submit" { "Delete" }
        }
    }
}
