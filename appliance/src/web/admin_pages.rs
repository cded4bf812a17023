//! Console pages for users, roles and the audit trail.

use maud::{html, Markup};

use super::fields::{Field, Form};
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
            @let f = Form::new(ctx, "/users");
            @let role_options: Vec<(&str, &str)> = roles.iter().map(|r| (r.name.as_str(), r.name.as_str())).collect();
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "User" }
                    (f.row(Field::text("name", "Name", "").required()
                        .help("Lower-case letters, digits, '.', '-' and '_'.")))
                    (f.row(Field::password("password", "Password").required()
                        .help("At least 10 characters.")))
                    (f.row(Field::select("role", "Role", &role_options, "auditor")
                        .help("What the user may do; access policies can narrow which VMs.")))
                }
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
            @let f = Form::new(ctx, "/roles");
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "Role" }
                    (f.row(Field::text("name", "Name", "").required()
                        .help("Lower-case letters, digits and '-'.")))
                    (f.row(Field::text("description", "Description", "")))
                }
                fieldset.choices {
                    legend { "Privileges" }
                    @for p in Privilege::ALL {
                        label { input type="checkbox" name="privilege" value=(p.as_str()) checked[f.ticked("privilege", p.as_str(), false)]; " " (p.as_str()) } " "
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
            @let f = Form::new(ctx, "/access-policies");
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "Policy" }
                    (f.row(Field::text("name", "Name", "").required()))
                    (f.row(Field::textarea("rules", "Rules", 3, "").required()
                        .placeholder("allow department=Finance")
                        .help("One per line: allow|deny KEY=VALUE (* for any value); deny wins.")))
                }
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
            @let f = Form::new(ctx, "/category-rules");
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "Category rule" }
                    (f.row(Field::text("key", "Category", "").required().placeholder("department")))
                    (f.row(Field::text("value", "Value", "").required().placeholder("Finance")))
                    (f.row(Field::text("name_pattern", "For VMs named", "").placeholder("fin-*")
                        .help("A glob over VM names.")))
                    (f.row(Field::text("host", "Or on host", "")
                        .help("A host name: every VM on it. A rule needs a name pattern, a host or both.")))
                }
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
            @let f = Form::new(ctx, "/directories");
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "Server" }
                    (f.row(Field::text("name", "Name", "").required()))
                    (f.row(Field::text("url", "URL", "").required().placeholder("ldaps://dc1.example.org:636")
                        .help("ldaps://host:636, or ldap://host:389 with StartTLS.")))
                    (f.row(Field::checkbox("starttls", "StartTLS", false).help("Upgrade an ldap:// connection to TLS.")))
                    (f.row(Field::checkbox("allow_plain", "Allow plain LDAP", false)
                        .help("Passwords cross the network in clear: test setups only.")))
                    (f.row(Field::textarea("ca_pem", "CA certificate", 3, "")
                        .help("PEM of the CA that signed the server's certificate; empty: the system's trust store.")))
                }
                fieldset {
                    legend { "Lookup" }
                    (f.row(Field::text("bind_dn", "Bind DN", "").required()
                        .placeholder("cn=lifeboat,ou=services,dc=example,dc=org")))
                    (f.row(Field::password("bind_password", "Bind password").required()
                        .help("Stored encrypted and never shown again.")))
                    (f.row(Field::text("user_base", "User base", "").required().placeholder("ou=people,dc=example,dc=org")))
                    (f.row(Field::select("user_attribute", "User attribute", &[
                        ("uid", "uid"), ("sAMAccountName", "sAMAccountName"), ("userPrincipalName", "userPrincipalName"),
                    ], "uid")))
                    (f.row(Field::text("group_base", "Group base", "").required().placeholder("ou=groups,dc=example,dc=org")))
                    (f.row(Field::checkbox("nested_groups", "Nested groups", false).help("Follow groups in groups (Active Directory).")))
                }
                fieldset {
                    legend { "Roles" }
                    (f.row(Field::textarea("mappings", "Group mappings", 3, "").required()
                        .placeholder("lifeboat-admins=administrator")
                        .help("One per line: GROUP=ROLE or GROUP=ROLE:POLICY,POLICY; the first match decides the role.")))
                }
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
            @let f = Form::new(ctx, "/tokens");
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "Token" }
                    (f.row(Field::text("name", "Name", "").required()))
                    (f.row(Field::number("expires_in_days", "Valid for", 30).unit("days").range(1, 366)))
                }
                fieldset.choices {
                    legend { "Privileges (none ticked: all of yours)" }
                    @for p in ctx.who.privileges() {
                        label { input type="checkbox" name="privilege" value=(p.as_str()) checked[f.ticked("privilege", p.as_str(), false)]; " " (p.as_str()) } " "
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
        @let f = Form::new(ctx, format!("/vms/{vm_id}/categories"));
        form.stack method="post" action=(f.action()) {
            (f.head())
            (f.row(Field::textarea("categories", "Own categories", 2, lines.join("\n"))
                .placeholder("cost-center=cc-42")
                .help("One KEY=VALUE per line; category rules add more.")))
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
