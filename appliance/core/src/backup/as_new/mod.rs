//! Restore as a new VM beside the original: a new name, UUID, MACs and disk
//! paths spliced into the backed-up domain XML (every other byte is kept
//! verbatim), plus the NoCloud files that give the guest a new name. Pure.
//! This file holds the request and the guest's files; `domain_xml` does the splice.

mod domain_xml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use lifeboat_proto::{ConfigDrive, RestoreRequest};
use roxmltree::Document;
use serde::Deserialize;

pub use domain_xml::{
    has_guest_agent, instant_domains, is_windows, rewrite_domain, sandbox_domain,
};

/// What the operator asks for. Unset names are derived from `name`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsNew {
    /// The new libvirt domain name.
    pub name: String,
    /// Windows computer (NetBIOS) name; default: the host name, cut to 15.
    pub computer_name: Option<String>,
    /// DNS domain: the Linux FQDN's suffix; for Windows, the AD domain.
    pub domain: Option<String>,
    /// Guest host name, a label or an FQDN; default: derived from `name`.
    pub hostname: Option<String>,
}

impl AsNew {
    pub fn validate(&self) -> Result<(), String> {
        check_vm_name(&self.name)?;
        if let Some(c) = &self.computer_name {
            let ok = (1..=15).contains(&c.len())
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
                && !c.bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return Err(format!(
                    "computer name {c:?} must be 1 to 15 letters, digits and inner '-', not all digits"
                ));
            }
        }
        if let Some(d) = &self.domain {
            check_dns_name("domain", d)?;
        }
        if let Some(h) = &self.hostname {
            check_dns_name("hostname", h)?;
            if let (true, Some(d)) = (h.contains('.'), &self.domain) {
                let suffix = format!(".{}", d.to_ascii_lowercase());
                if !h.to_ascii_lowercase().ends_with(&suffix) {
                    return Err(format!("hostname {h:?} is not inside domain {d:?}"));
                }
            }
        }
        Ok(())
    }

    /// The short host name (first label).
    fn host_label(&self) -> String {
        if let Some(h) = &self.hostname {
            return h.split('.').next().unwrap_or(h).to_string();
        }
        let mapped: String = self
            .name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(63)
            .collect();
        let label = mapped.trim_matches('-');
        if label.is_empty() { "vm" } else { label }.to_string()
    }

    fn fqdn(&self) -> Option<String> {
        match (&self.hostname, &self.domain) {
            (Some(h), _) if h.contains('.') => Some(h.clone()),
            (_, Some(d)) => Some(format!("{}.{d}", self.host_label())),
            _ => None,
        }
    }

    /// cloudbase-init would cut a longer name itself; cutting it here keeps
    /// the name we report equal to the one Windows ends up with.
    fn computer_name(&self) -> String {
        if let Some(c) = &self.computer_name {
            return c.clone();
        }
        let mut name: String = self.host_label().chars().take(15).collect();
        if name.bytes().all(|b| b.is_ascii_digit()) {
            name = format!("vm-{name}").chars().take(15).collect();
        }
        name.trim_end_matches('-').to_string()
    }
}

fn check_vm_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "VM name {name:?} must be 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -"
        ))
    }
}

fn check_dns_name(what: &str, name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not a DNS name: dot-separated labels of 1 to 63 letters, digits \
             and inner '-', 253 characters at most, no trailing dot"
        ))
    }
}

/// A random locally administered MAC in QEMU's `52:54:00` range.
pub fn new_mac() -> String {
    let [a, b, c]: [u8; 3] = rand::random();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

/// `<dir of old_path>/<new_name>-<target>.<old extension>`.
pub fn new_disk_path(old_path: &str, new_name: &str, target: &str) -> String {
    match Path::new(old_path).extension() {
        Some(ext) => beside(
            old_path,
            &format!("{new_name}-{target}.{}", ext.to_string_lossy()),
        ),
        None => beside(old_path, &format!("{new_name}-{target}")),
    }
}

/// `file` in the directory of `old_path`.
fn beside(old_path: &str, file: &str) -> String {
    match Path::new(old_path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(file).to_string_lossy().into_owned(),
        _ => file.to_string(),
    }
}

/// A YAML double-quoted scalar: no value is ever read as a number or bool.
fn yaml(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32 & 0xff)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The NoCloud files. Readers:
/// - `meta-data`: cloud-init (Linux) and cloudbase-init (Windows) both read
///   `instance-id` (a new one makes each re-run its per-instance steps) and
///   `local-hostname` (cloudbase-init's SetHostNamePlugin uses it).
/// - `user-data` (`#cloud-config`): cloud-init reads `hostname`, `fqdn` and
///   `preserve_hostname`; cloudbase-init knows only a few keys (`set_hostname`,
///   `hostname`, `write_files`, `runcmd`, `users`, ...) and logs the rest.
/// - No `network-config`: without it cloud-init renders its fallback (DHCP on
///   the first NIC) for a new instance, while one from us could override a
///   network setup the guest manages itself.
pub fn config_drive_files(
    as_new: &AsNew,
    instance_id: &str,
    windows: bool,
) -> BTreeMap<String, String> {
    let header = "#cloud-config\n# Written by Lifeboat: this VM was restored as a new copy.\n";
    let (host, user_data) = if windows {
        let name = as_new.computer_name();
        let mut u = header.to_string();
        if let Some(d) = &as_new.domain {
            u.push_str(&format!(
                "# Joining domain {d} needs credentials this drive does not carry: it is left\n\
                 # to the operator's own script, which finds the domain in meta-data\n\
                 # (lifeboat-domain).\n"
            ));
        }
        u.push_str(&format!("set_hostname: {}\n", yaml(&name)));
        (name, u)
    } else {
        let label = as_new.host_label();
        let mut u = format!("{header}hostname: {}\n", yaml(&label));
        if let Some(fqdn) = as_new.fqdn() {
            u.push_str(&format!("fqdn: {}\n", yaml(&fqdn)));
        }
        u.push_str("preserve_hostname: false\n");
        (label, u)
    };
    let mut meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml(instance_id),
        yaml(&host)
    );
    if let (true, Some(d)) = (windows, &as_new.domain) {
        meta.push_str(&format!("lifeboat-domain: {}\n", yaml(d)));
    }
    BTreeMap::from([
        ("meta-data".to_string(), meta),
        ("user-data".to_string(), user_data),
    ])
}

/// Turns the request for an exact restore into one for a new VM: new UUID,
/// MACs and disk files beside the old ones, and a config drive
/// `<name>-cidata.iso` next to the first disk.
pub fn as_new_request(exact: RestoreRequest, as_new: &AsNew) -> Result<RestoreRequest, String> {
    as_new.validate()?;
    let uuid = uuid::Uuid::new_v4().to_string();
    let nics = Document::parse(&exact.config)
        .map_err(|e| format!("the backed-up domain XML does not parse: {e}"))?
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children().filter(|n| n.has_tag_name("interface")))
        .count();
    let macs: Vec<String> = (0..nics).map(|_| new_mac()).collect();
    let mut disks = exact.disks;
    for d in &mut disks {
        d.path = new_disk_path(&d.path, &as_new.name, &d.target);
    }
    let first = disks.first().ok_or("the backup has no disk to restore")?;
    let iso = beside(&first.path, &format!("{}-cidata.iso", as_new.name));
    let paths: Vec<(String, String)> = disks
        .iter()
        .map(|d| (d.target.clone(), d.path.clone()))
        .collect();
    let config = rewrite_domain(
        &exact.config,
        &as_new.name,
        &uuid,
        &macs,
        &paths,
        Some(&iso),
    )?;
    let files = config_drive_files(as_new, &uuid, is_windows(&exact.config));
    Ok(RestoreRequest {
        uuid,
        name: as_new.name.clone(),
        config,
        disks,
        replace: false,
        config_drive: Some(ConfigDrive { path: iso, files }),
        ..exact
    })
}
