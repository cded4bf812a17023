//! Console pages for users, roles and the audit trail.

use maud::{html, Markup};

use super::layout::{page, state_badge, PageCtx};
use crate::access::audit::AuditRecord;
use crate::access::{Privilege, RoleDef};
use crate::clock::rfc3339;
use crate::ops::UserView;

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
            table {
                thead { tr { th { "User" } th { "Role" } th { "State" } th { "Created" } th {} } }
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
                            td { (state_badge(if u.disabled { "disabled" } else { "enabled" })) }
                            td { (rfc3339(u.created_at)) }
                            td {
                                form.inline method="post" action={"/users/" (u.name)} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    input type="hidden" name="disabled" value=(if u.disabled { "false" } else { "true" });
                                    button type="submit" { @if u.disabled { "Enable" } @else { "Disable (ends their sessions)" } }
                                }
                                " "
                                form.inline method="post" action={"/users/" (u.name) "/delete"} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    button type="submit" { "Delete" }
                                }
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
                                    form.inline method="post" action={"/roles/" (r.name) "/delete"} {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        button type="submit" { "Delete" }
                                    }
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
