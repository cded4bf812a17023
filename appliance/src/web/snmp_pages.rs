//! The SNMP agent's settings in the console: on or off, where it listens,
//! its v2c communities and v3 users, one row each with a row to add, and
//! the engine ID receivers of v3 traps need. Secrets are never shown: an
//! empty community or password keeps the stored one.

use maud::{html, Markup};

use super::fields::{Field, Form};
use super::forms::{FormReply, Submission};
use super::layout::{page, PageCtx};
use crate::http::redirect;
use lifeboat_core::model::{AuthProtocol, CommunityInput, SnmpInput, UsmUserInput};
use lifeboat_core::ops::SnmpSettingsView;

const AUTHS: [(&str, &str); 2] = [("sha256", "SHA-256"), ("sha1", "SHA-1")];

fn auth_name(a: AuthProtocol) -> &'static str {
    match a {
        AuthProtocol::Sha256 => "sha256",
        AuthProtocol::Sha1 => "sha1",
    }
}

pub fn snmp(ctx: &PageCtx, view: &SnmpSettingsView) -> Markup {
    let f = Form::new(ctx, "/snmp/settings");
    // Field names live as long as the form: c0_networks, u1_name, ...
    let community_rows = view.communities.len() + 1;
    let user_rows = view.users.len() + 1;
    let c_names: Vec<[String; 4]> = (0..community_rows)
        .map(|i| ["community", "networks", "user", "remove"].map(|n| format!("c{i}_{n}")))
        .collect();
    let u_names: Vec<[String; 6]> = (0..user_rows)
        .map(|i| {
            [
                "name",
                "auth",
                "auth_password",
                "priv_password",
                "user",
                "remove",
            ]
            .map(|n| format!("u{i}_{n}"))
        })
        .collect();
    page(
        ctx,
        "SNMP",
        "/monitoring",
        None,
        html! {
            p.muted { "LIFEBOAT-MIB (" a href="/assets/LIFEBOAT-MIB.txt" { "download" } ") over SNMP v2c and v3; see docs/snmp.md. "
                "Engine ID (for receivers of v3 traps): " code { (view.engine_id) } }
            form.stack method="post" action=(f.action()) {
                (f.head())
                fieldset {
                    legend { "Agent" }
                    (f.row(Field::checkbox("enabled", "Enabled", view.enabled)
                        .help("Answer SNMP requests. Off: the port is closed.")))
                    (f.row(Field::text("listen", "Listen on", &view.listen).required()
                        .help("UDP ADDRESS:PORT; 0.0.0.0:161 on the appliance.")))
                }
                @for (i, names) in c_names.iter().enumerate() {
                    @let stored = view.communities.get(i);
                    @if stored.is_some() { input type="hidden" name={"c" (i) "_stored"} value=(i); }
                    fieldset {
                        legend { @if stored.is_some() { "Community " (i + 1) } @else { "Add a v2c community" } }
                        (f.row(Field::password(&names[0], "Community")
                            .help(if stored.is_some() { "Empty keeps the stored one (never shown)." } else { "A shared secret, sent in clear: bind it to networks." })))
                        (f.row(Field::text(&names[1], "Source networks", stored.map(|c| c.networks.join(", ")).unwrap_or_default())
                            .placeholder("192.0.2.0/24, 2001:db8::/64")
                            .help("Only requests from these networks are answered.")))
                        (f.row(Field::text(&names[2], "Acts as", stored.map(|c| c.user.as_str()).unwrap_or_default())
                            .help("The Lifeboat user whose view it gets (roles and access policies).")))
                        @if stored.is_some() { (f.row(Field::checkbox(&names[3], "Remove", false))) }
                    }
                }
                @for (i, names) in u_names.iter().enumerate() {
                    @let stored = view.users.get(i);
                    fieldset {
                        legend { @if stored.is_some() { "v3 user " (i + 1) } @else { "Add a v3 user (authPriv, AES-128)" } }
                        (f.row(Field::text(&names[0], "User name", stored.map(|u| u.name.as_str()).unwrap_or_default())))
                        (f.row(Field::select(&names[1], "Authentication", &AUTHS,
                            auth_name(stored.map(|u| u.auth).unwrap_or_default()))))
                        (f.row(Field::password(&names[2], "Authentication password")
                            .help("At least 8 characters; empty keeps the stored one.")))
                        (f.row(Field::password(&names[3], "Privacy password")
                            .help("At least 8 characters; empty keeps the stored one.")))
                        (f.row(Field::text(&names[4], "Acts as", stored.map(|u| u.user.as_str()).unwrap_or_default())
                            .help("The Lifeboat user whose view it gets.")))
                        @if stored.is_some() { (f.row(Field::checkbox(&names[5], "Remove", false))) }
                    }
                }
                button type="submit" { "Save SNMP settings" }
            }
        },
    )
}

pub async fn set_snmp(s: Submission<'_>) -> FormReply {
    let mut communities = Vec::new();
    for i in 0.. {
        let field = |n: &str| s.field(&format!("c{i}_{n}"));
        let Some(networks) = field("networks") else {
            break;
        };
        let community = field("community").unwrap_or_default();
        let stored = field("stored").and_then(|n| n.parse().ok());
        let user = field("user").unwrap_or_default().trim().to_string();
        let blank = community.is_empty() && networks.trim().is_empty() && user.is_empty();
        if field("remove").is_some() || blank {
            continue;
        }
        communities.push(CommunityInput {
            community,
            stored,
            networks: networks
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            user,
        });
    }
    let mut users = Vec::new();
    for i in 0.. {
        let field = |n: &str| s.field(&format!("u{i}_{n}"));
        let Some(name) = field("name") else {
            break;
        };
        let name = name.trim().to_string();
        if field("remove").is_some() || name.is_empty() {
            continue;
        }
        users.push(UsmUserInput {
            name,
            auth: match field("auth").as_deref() {
                Some("sha1") => AuthProtocol::Sha1,
                _ => AuthProtocol::Sha256,
            },
            auth_password: field("auth_password").unwrap_or_default(),
            priv_password: field("priv_password").unwrap_or_default(),
            user: field("user").unwrap_or_default().trim().to_string(),
            ..Default::default()
        });
    }
    let input = SnmpInput {
        enabled: s.field("enabled").is_some(),
        listen: s.text("listen"),
        communities,
        users,
    };
    s.ops.set_snmp_settings(s.who, input).await?;
    Ok(redirect("/snmp"))
}
