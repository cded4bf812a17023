//! Restore as a new VM beside the original: a new name, UUID, MACs and disk
//! paths spliced into the backed-up domain XML (every other byte is kept
//! verbatim), plus the NoCloud files that give the guest a new name. Pure.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use lifeboat_proto::{ConfigDrive, RestoreRequest};
use roxmltree::{Document, Node};
use serde::Deserialize;

use super::VmUuid;

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

const LIBOSINFO_NS: &str = "http://libosinfo.org/xmlns/libvirt/domain/1.0";

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

/// Windows guests, by libvirt's libosinfo metadata (`http://microsoft.com/win/…`)
/// or, when that is absent, by Hyper-V enlightenments, which only Windows
/// templates turn on.
pub fn is_windows(config: &str) -> bool {
    let Ok(doc) = Document::parse(config) else {
        return false;
    };
    let os_id = doc
        .descendants()
        .find(|n| n.tag_name().namespace() == Some(LIBOSINFO_NS) && n.has_tag_name("os"))
        .and_then(|n| n.attribute("id"));
    match os_id {
        Some(id) => id.contains("microsoft.com/win"),
        None => child(doc.root_element(), "features").is_some_and(|f| child(f, "hyperv").is_some()),
    }
}

fn child<'a, 'i>(node: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(tag))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Byte-range replacements on the original text, applied in one pass.
struct Splice<'i> {
    input: &'i str,
    edits: Vec<(Range<usize>, String)>,
}

impl<'i> Splice<'i> {
    fn replace(&mut self, range: Range<usize>, text: String) {
        self.edits.push((range, text));
    }

    /// Replaces an element's content, keeping its tag and attributes.
    fn set_text(&mut self, node: Node, text: &str) {
        let r = node.range();
        let raw = &self.input[r.clone()];
        if let (Some(first), Some(last)) = (node.first_child(), node.last_child()) {
            self.replace(first.range().start..last.range().end, escape(text));
        } else if let Some(open) = raw.strip_suffix("/>") {
            let tag = node.tag_name().name();
            let new = format!("{}>{}</{tag}>", open.trim_end(), escape(text));
            self.replace(r, new);
        } else if let Some(close) = raw.rfind("</") {
            self.replace(r.start + close..r.start + close, escape(text));
        }
    }

    /// Inserts `xml` as the first (or last) element child, indented like the
    /// element it lands next to.
    fn insert_child(&mut self, parent: Node, xml: &str, last: bool) {
        let elements: Vec<Node> = parent.children().filter(|n| n.is_element()).collect();
        let anchor = if last {
            elements.last()
        } else {
            elements.first()
        };
        if let Some(anchor) = anchor {
            let indent = anchor
                .prev_sibling()
                .filter(|p| p.is_text())
                .and_then(|p| p.text())
                .filter(|t| t.trim().is_empty())
                .unwrap_or("");
            let at = anchor.range();
            if last {
                self.replace(at.end..at.end, format!("{indent}{xml}"));
            } else {
                self.replace(at.start..at.start, format!("{xml}{indent}"));
            }
            return;
        }
        let r = parent.range();
        let raw = &self.input[r.clone()];
        if let Some(open) = raw.strip_suffix("/>") {
            let tag = parent.tag_name().name();
            self.replace(r, format!("{}>{xml}</{tag}>", open.trim_end()));
        } else if let Some(close) = raw.rfind("</") {
            self.replace(r.start + close..r.start + close, xml.to_string());
        }
    }

    fn finish(mut self) -> Result<String, String> {
        self.edits.sort_by_key(|(r, _)| r.start);
        let mut out = String::with_capacity(self.input.len() + 512);
        let mut at = 0;
        for (r, text) in &self.edits {
            if r.start < at {
                return Err("overlapping edits of the domain XML".into());
            }
            out.push_str(&self.input[at..r.start]);
            out.push_str(text);
            at = r.end;
        }
        out.push_str(&self.input[at..]);
        Ok(out)
    }
}

/// The definition of the new VM. `macs` go to the `<interface>`s in order;
/// `disk_paths` (target → new file) must cover every disk, so the new VM
/// never shares a writable file with the original. With `config_drive` (an
/// ISO path) a read-only CD-ROM is added at a free slot (see [`cdrom_bus`]).
/// A fixed `<genid>` is reset so Windows sees a clone; the UEFI NVRAM file
/// gets a name of its own; the SMBIOS UUID follows `<uuid>`.
pub fn rewrite_domain(
    config: &str,
    new_name: &str,
    new_uuid: &str,
    macs: &[String],
    disk_paths: &[(String, String)],
    config_drive: Option<&str>,
) -> Result<String, String> {
    check_vm_name(new_name)?;
    let uuid: VmUuid = new_uuid.parse().map_err(|e| format!("{e}"))?;
    for mac in macs {
        let ok = mac.len() == 17
            && mac.bytes().enumerate().all(|(i, b)| match i % 3 {
                2 => b == b':',
                _ => b.is_ascii_hexdigit(),
            })
            && u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 0);
        if !ok {
            return Err(format!("{mac:?} is not a unicast MAC address"));
        }
    }
    for path in disk_paths
        .iter()
        .map(|(_, p)| p.as_str())
        .chain(config_drive)
    {
        if !path.starts_with('/') || path.chars().any(char::is_control) {
            return Err(format!("{path:?} is not an absolute path"));
        }
    }
    let doc = Document::parse(config)
        .map_err(|e| format!("the backed-up domain XML does not parse: {e}"))?;
    let domain = doc.root_element();
    let missing = |tag: &str| format!("the backed-up definition has no <{tag}>");
    let mut edit = Splice {
        input: config,
        edits: Vec::new(),
    };
    edit.set_text(
        child(domain, "name").ok_or_else(|| missing("name"))?,
        new_name,
    );
    edit.set_text(
        child(domain, "uuid").ok_or_else(|| missing("uuid"))?,
        uuid.as_str(),
    );
    let devices = child(domain, "devices").ok_or_else(|| missing("devices"))?;
    // libvirt refuses an SMBIOS system UUID that differs from <uuid>.
    let systems = domain
        .children()
        .filter(|n| n.has_tag_name("sysinfo"))
        .filter_map(|s| child(s, "system"));
    for system in systems {
        for entry in system
            .children()
            .filter(|n| n.attribute("name") == Some("uuid"))
        {
            edit.set_text(entry, uuid.as_str());
        }
    }
    if let Some(genid) = child(domain, "genid").filter(|g| g.has_children()) {
        edit.replace(genid.range(), "<genid/>".into());
    }
    let os = child(domain, "os");
    if let Some(nvram) = os.and_then(|o| child(o, "nvram")) {
        if let Some(old) = nvram.text().map(str::trim).filter(|t| !t.is_empty()) {
            // libvirt's own naming, `<name>_VARS.fd`; it copies the template
            // into a missing file at first start.
            let ext = Path::new(old).extension().map(|e| e.to_string_lossy());
            let file = format!("{new_name}_VARS.{}", ext.as_deref().unwrap_or("fd"));
            edit.set_text(nvram, &beside(old, &file));
        }
    }

    let interfaces: Vec<Node> = devices
        .children()
        .filter(|n| n.has_tag_name("interface"))
        .collect();
    if interfaces.len() != macs.len() {
        return Err(format!(
            "the definition has {} network interfaces, but {} MAC addresses were given",
            interfaces.len(),
            macs.len()
        ));
    }
    for (iface, mac) in interfaces.iter().zip(macs) {
        let mac = mac.to_ascii_lowercase();
        let attr =
            child(*iface, "mac").and_then(|m| m.attributes().find(|a| a.name() == "address"));
        match attr {
            Some(a) => edit.replace(a.range_value(), mac),
            None => edit.insert_child(*iface, &format!("<mac address='{mac}'/>"), false),
        }
    }

    let mut used = vec![false; disk_paths.len()];
    let mut names = Vec::new();
    let mut slots = Vec::new();
    for disk in devices.children().filter(|n| n.has_tag_name("disk")) {
        let target = child(disk, "target");
        let dev = target.and_then(|t| t.attribute("dev")).unwrap_or("");
        names.push(dev.to_string());
        if let Some(a) = child(disk, "address").filter(|a| a.attribute("type") == Some("drive")) {
            let num = |k: &str| a.attribute(k).and_then(|v| v.parse().ok()).unwrap_or(0u32);
            let bus = target.and_then(|t| t.attribute("bus")).unwrap_or("");
            slots.push((bus.to_string(), num("controller"), num("bus"), num("unit")));
        }
        if !matches!(disk.attribute("device").unwrap_or("disk"), "disk" | "lun") {
            continue;
        }
        let file = child(disk, "source").and_then(|s| s.attributes().find(|a| a.name() == "file"));
        let (Some(file), Some(k)) = (file, disk_paths.iter().position(|(t, _)| t == dev)) else {
            return Err(format!(
                "disk {dev:?} is not restored from a file; the new VM would share it with the original"
            ));
        };
        used[k] = true;
        edit.replace(file.range_value(), escape(&disk_paths[k].1));
        // The restored image is flat: a stated backing chain would point the
        // new VM at the original's base images.
        for backing in disk.children().filter(|n| n.has_tag_name("backingStore")) {
            edit.replace(backing.range(), String::new());
        }
    }
    if let Some(k) = used.iter().position(|u| !u) {
        return Err(format!("the definition has no disk {}", disk_paths[k].0));
    }

    if let Some(iso) = config_drive {
        let machine = os
            .and_then(|o| child(o, "type"))
            .and_then(|t| t.attribute("machine"))
            .unwrap_or("");
        let (bus, prefix, count, slot) = cdrom_bus(machine)?;
        let free = (0..count).find_map(|i| {
            let name = format!("{prefix}{}", char::from(b'a' + i as u8));
            let (c, b, u) = slot(i);
            let taken = names.contains(&name) || slots.contains(&(bus.to_string(), c, b, u));
            (!taken).then_some(name)
        });
        let dev = free.ok_or_else(|| format!("no free {bus} slot for the config drive"))?;
        let cdrom = format!(
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{}'/>\
             <target dev='{dev}' bus='{bus}'/><readonly/></disk>",
            escape(iso)
        );
        edit.insert_child(devices, &cdrom, true);
    }
    edit.finish()
}

/// Where a CD-ROM goes on `machine`: (bus, target prefix, slots, slot index →
/// (controller, bus, unit) as libvirt derives a drive address from a target
/// name). q35 has an AHCI controller built in; i440fx has IDE only (libvirt
/// would add an AHCI controller there: a new PCI device the guest never saw).
type Slot = fn(u32) -> (u32, u32, u32);
fn cdrom_bus(machine: &str) -> Result<(&'static str, &'static str, u32, Slot), String> {
    if machine.contains("q35") {
        Ok(("sata", "sd", 26, |i| (i / 6, 0, i % 6)))
    } else if machine == "pc" || machine.starts_with("pc-") {
        Ok(("ide", "hd", 4, |i| (0, i / 2, i % 2)))
    } else {
        Err(format!(
            "cannot attach a config drive to machine type {machine:?}: only q35 and i440fx"
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_UUID: &str = "6f1c2b7e-1111-4a5b-9c3d-0123456789ab";
    const NEW_UUID: &str = "0b9f2c1e-6c4e-4f43-9a57-3f1d2a7c9e10";
    const ISO: &str = "/var/lib/libvirt/images/web-copy-cidata.iso";
    const Q35: &str = r#"<domain type='kvm'>
  <name>web</name>
  <uuid>6f1c2b7e-1111-4a5b-9c3d-0123456789ab</uuid>
  <genid>2f4a1a9e-2222-4b1c-8d2e-abcdefabcdef</genid>
  <title>Web &amp; API</title>
  <description>production web server</description>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>Lifeboat</entry>
      <entry name='uuid'>6f1c2b7e-1111-4a5b-9c3d-0123456789ab</entry>
    </system>
  </sysinfo>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram>
  </os>
  <features><acpi/><hyperv mode='custom'><relaxed state='on'/></hyperv></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw"/>
      <source file="/srv/vm/web-data.img"/>
      <target dev="vdb" bus="virtio"/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sdc' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='1'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <graphics type='spice' autoport='yes'/>
  </devices>
</domain>
"#;
    const PC: &str = "<domain><name>old</name><uuid>6f1c2b7e-1111-4a5b-9c3d-0123456789ab</uuid>\
        <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os><devices>\
        <disk type='file' device='disk'><source file='/img/old.qcow2'/><target dev='hda' bus='ide'/></disk>\
        <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>\
        <interface type='network'><source network='default'/></interface></devices></domain>";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn q35_paths() -> Vec<(String, String)> {
        pairs(&[
            ("vda", "/var/lib/libvirt/images/web-copy-vda.qcow2"),
            ("vdb", "/srv/vm/web-copy-vdb.img"),
        ])
    }

    /// Rewrites with as many of two fixed MACs as `xml` has interfaces.
    fn rewrite(xml: &str, paths: &[(String, String)], iso: Option<&str>) -> Result<String, String> {
        let macs = [
            "52:54:00:12:34:56".to_string(),
            "52:54:00:ab:cd:ef".to_string(),
        ];
        let n = xml.matches("<interface").count();
        rewrite_domain(xml, "web-copy", NEW_UUID, &macs[..n], paths, iso)
    }

    #[test]
    fn rewrites_identity_and_keeps_every_other_byte() {
        let out = rewrite(Q35, &q35_paths(), Some(ISO)).unwrap();
        // The only differences allowed; sdb is free by name but its slot is
        // taken by sdc's explicit address, so the config drive gets sdd.
        let graphics = "<graphics type='spice' autoport='yes'/>";
        let cdrom = format!(
            "{graphics}\n    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
             <source file='{ISO}'/><target dev='sdd' bus='sata'/><readonly/></disk>"
        );
        let backing = "<backingStore type='file'><format type='qcow2'/>\
            <source file='/var/lib/libvirt/images/base.qcow2'/></backingStore>";
        let expected = Q35
            .replace("<name>web</name>", "<name>web-copy</name>")
            .replace(OLD_UUID, NEW_UUID)
            .replace(
                "<genid>2f4a1a9e-2222-4b1c-8d2e-abcdefabcdef</genid>",
                "<genid/>",
            )
            .replace("nvram/web_VARS.fd", "nvram/web-copy_VARS.fd")
            .replace("52:54:00:aa:bb:cc", "52:54:00:12:34:56")
            .replace(
                "'bridge'>",
                "'bridge'>\n      <mac address='52:54:00:ab:cd:ef'/>",
            )
            .replace("images/web.qcow2", "images/web-copy-vda.qcow2")
            .replace(backing, "")
            .replace("/srv/vm/web-data.img", "/srv/vm/web-copy-vdb.img")
            .replace(graphics, &cdrom);
        assert_eq!(out, expected);

        let doc = Document::parse(&out).unwrap();
        let root = doc.root_element();
        let text = |tag| child(root, tag).and_then(|n| n.text());
        assert_eq!(
            (text("name"), text("uuid")),
            (Some("web-copy"), Some(NEW_UUID))
        );
        let devices = child(root, "devices").unwrap();
        let macs: Vec<_> = devices
            .descendants()
            .filter(|n| n.has_tag_name("mac"))
            .collect();
        let macs: Vec<_> = macs.iter().filter_map(|n| n.attribute("address")).collect();
        assert_eq!(macs, ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]);
        assert_eq!(
            super::super::restore::disk_paths(&out).unwrap(),
            q35_paths()
        );
        let added = devices
            .children()
            .rfind(|n| n.has_tag_name("disk"))
            .unwrap();
        let target = child(added, "target").unwrap();
        assert_eq!(added.attribute("device"), Some("cdrom"));
        assert_eq!(
            (target.attribute("dev"), target.attribute("bus")),
            (Some("sdd"), Some("sata"))
        );
        assert_eq!(
            child(added, "source").and_then(|s| s.attribute("file")),
            Some(ISO)
        );
        assert!(child(added, "readonly").is_some());
    }

    #[test]
    fn i440fx_gets_an_ide_cdrom_in_a_free_slot() {
        let paths = pairs(&[("hda", "/img/web-copy-hda.qcow2")]);
        let out = rewrite(PC, &paths, Some(ISO)).unwrap();
        let tail = format!(
            "<interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/>\
             </interface><disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
             <source file='{ISO}'/><target dev='hdb' bus='ide'/><readonly/></disk></devices></domain>"
        );
        assert!(out.ends_with(&tail), "{out}");
        // hdb's slot (bus 0, unit 1) taken by an explicit address: no room.
        let full = PC.replace(
            "</devices>",
            "<disk type='file' device='cdrom'><target dev='hdd' bus='ide'/>\
             <address type='drive' controller='0' bus='0' unit='1'/></disk></devices>",
        );
        let err = rewrite(&full, &paths, Some(ISO)).unwrap_err();
        assert_eq!(err, "no free ide slot for the config drive");
        let arm = PC.replace("pc-i440fx-7.2", "virt");
        let err = rewrite(&arm, &paths, Some(ISO)).unwrap_err();
        assert!(err.contains("machine type \"virt\""), "{err}");
        assert!(
            rewrite(&arm, &paths, None).is_ok(),
            "no config drive, no bus to pick"
        );
        let bare = "<domain><name>a</name><uuid>6f1c2b7e-1111-4a5b-9c3d-0123456789ab</uuid>\
            <os><type machine='q35'>hvm</type></os><devices/></domain>";
        let out = rewrite(bare, &[], Some(ISO)).unwrap();
        assert!(
            out.ends_with("<target dev='sda' bus='sata'/><readonly/></disk></devices></domain>")
        );
    }

    #[test]
    fn refuses_what_it_cannot_rewrite_safely() {
        let err = |xml: &str, paths: &[(String, String)]| rewrite(xml, paths, None).unwrap_err();
        let no_uuid = Q35.replace("<uuid>", "<id>").replace("</uuid>", "</id>");
        assert!(err(&Q35.replace("<name>web</name>", ""), &q35_paths()).contains("no <name>"));
        assert!(err(&no_uuid, &q35_paths()).contains("no <uuid>"));
        assert!(err("<domain><name>a</name><uuid>x</uuid></domain>", &[]).contains("no <devices>"));
        let shared = err(Q35, &q35_paths()[..1]);
        assert!(shared.contains("disk \"vdb\" is not restored"), "{shared}");
        let mut extra = q35_paths();
        extra.push(("vdz".into(), "/x.img".into()));
        assert_eq!(err(Q35, &extra), "the definition has no disk vdz");
        let bad = |uuid: &str, mac: &str, path: &str| {
            let paths = pairs(&[("hda", path)]);
            rewrite_domain(PC, "web-copy", uuid, &[mac.to_string()], &paths, None).unwrap_err()
        };
        assert!(bad("nope", "52:54:00:00:00:01", "/a").contains("invalid VM uuid"));
        assert!(bad(NEW_UUID, "53:54:00:00:00:01", "/a").contains("not a unicast MAC"));
        assert!(bad(NEW_UUID, "52:54:00:00:00:01", "rel/a").contains("not an absolute path"));
        let macs = [new_mac(), new_mac()];
        let two = rewrite_domain(PC, "web-copy", NEW_UUID, &macs, &[], None).unwrap_err();
        assert_eq!(
            two,
            "the definition has 1 network interfaces, but 2 MAC addresses were given"
        );
        assert!(rewrite_domain(PC, "bad name", NEW_UUID, &[], &[], None).is_err());
    }

    fn as_new(
        name: &str,
        computer: Option<&str>,
        domain: Option<&str>,
        host: Option<&str>,
    ) -> AsNew {
        let s = |v: Option<&str>| v.map(String::from);
        AsNew {
            name: name.into(),
            computer_name: s(computer),
            domain: s(domain),
            hostname: s(host),
        }
    }

    #[test]
    fn validates_names() {
        let domain = Some("corp.example.com");
        assert!(
            as_new("Web_Shop.copy-2", Some("WEB2"), domain, Some("web2"))
                .validate()
                .is_ok()
        );
        assert!(as_new("a", None, domain, Some("web2.corp.example.com"))
            .validate()
            .is_ok());
        for (bad, expect) in [
            (as_new("web copy", None, None, None), "VM name"),
            (as_new(&"a".repeat(65), None, None, None), "VM name"),
            (as_new(".hidden", None, None, None), "VM name"),
            (
                as_new("a", Some("WEBSERVER-COPY-2"), None, None),
                "computer name",
            ),
            (as_new("a", Some("1234"), None, None), "computer name"),
            (as_new("a", Some("WEB_2"), None, None), "computer name"),
            (as_new("a", None, Some("corp_example.com"), None), "domain"),
            (as_new("a", None, Some("example.com."), None), "domain"),
            (as_new("a", None, None, Some("-web")), "hostname"),
            (
                as_new("a", None, domain, Some("web.other.org")),
                "not inside domain",
            ),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.contains(expect), "{bad:?}: {err}");
        }
        let unknown = serde_json::from_str::<AsNew>(r#"{"name":"a","password":"x"}"#);
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `password`"));
        let minimal: AsNew = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert_eq!(minimal, as_new("a", None, None, None));
    }

    #[test]
    fn config_drive_files_for_linux_and_windows() {
        let head = "#cloud-config\n# Written by Lifeboat: this VM was restored as a new copy.\n";
        let domain = Some("corp.example.com");
        let linux = config_drive_files(
            &as_new("web-copy", None, domain, Some("web2")),
            NEW_UUID,
            false,
        );
        let meta = format!("instance-id: \"{NEW_UUID}\"\nlocal-hostname: \"web2\"\n");
        let user =
            "hostname: \"web2\"\nfqdn: \"web2.corp.example.com\"\npreserve_hostname: false\n";
        assert_eq!(linux.len(), 2, "no network-config");
        assert_eq!(
            (&linux["meta-data"], &linux["user-data"]),
            (&meta, &format!("{head}{user}"))
        );

        let win = config_drive_files(
            &as_new("web-copy", Some("WEB2"), domain, None),
            NEW_UUID,
            true,
        );
        let meta = format!(
            "instance-id: \"{NEW_UUID}\"\nlocal-hostname: \"WEB2\"\nlifeboat-domain: \"corp.example.com\"\n"
        );
        let user =
            "# Joining domain corp.example.com needs credentials this drive does not carry: \
            it is left\n# to the operator's own script, which finds the domain in meta-data\n\
            # (lifeboat-domain).\nset_hostname: \"WEB2\"\n";
        assert_eq!(
            (&win["meta-data"], &win["user-data"]),
            (&meta, &format!("{head}{user}"))
        );

        let derived = as_new("Web_Shop.Frontend-Copy", None, None, None);
        assert_eq!(derived.host_label(), "web-shop-frontend-copy");
        assert_eq!(
            derived.computer_name(),
            "web-shop-fronte",
            "cut to 15 for NetBIOS"
        );
        assert_eq!(as_new("2024", None, None, None).computer_name(), "vm-2024");
        assert_eq!(yaml("a\"b\\c\n"), "\"a\\\"b\\\\c\\x0a\"");
    }

    #[test]
    fn helpers() {
        let path = new_disk_path("/var/lib/libvirt/images/web.qcow2", "n", "vda");
        assert_eq!(path, "/var/lib/libvirt/images/n-vda.qcow2");
        assert_eq!(new_disk_path("/srv/disk", "n", "sdb"), "/srv/n-sdb");
        let mac = new_mac();
        assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
        assert!(
            !is_windows(Q35),
            "libosinfo says Debian, despite Hyper-V features"
        );
        assert!(is_windows(
            &Q35.replace("debian.org/debian/12", "microsoft.com/win/2k22")
        ));
        let unknown = Q35.replace("<libosinfo:os id=\"http://debian.org/debian/12\"/>", "");
        assert!(
            is_windows(&unknown),
            "no libosinfo: Hyper-V features decide"
        );
        assert!(!is_windows(PC) && !is_windows("<domain"));
    }

    #[test]
    fn as_new_request_renames_everything() {
        let disk = |target: &str, path: &str| lifeboat_proto::RestoreDisk {
            target: target.into(),
            path: path.into(),
            format: "qcow2".into(),
            size_bytes: 1 << 20,
            digests: vec![],
        };
        let exact = RestoreRequest {
            job_token: String::new(),
            uuid: OLD_UUID.into(),
            name: "web".into(),
            config: Q35.into(),
            disks: vec![
                disk("vda", "/var/lib/libvirt/images/web.qcow2"),
                disk("vdb", "/srv/vm/web-data.img"),
            ],
            replace: true,
            start: true,
            config_drive: None,
        };
        let r = as_new_request(exact.clone(), &as_new("web-copy", None, None, None)).unwrap();
        assert!(r.uuid.parse::<VmUuid>().is_ok() && r.uuid != OLD_UUID);
        assert_eq!(
            (r.name.as_str(), r.replace, r.start),
            ("web-copy", false, true)
        );
        let disks: Vec<_> = r
            .disks
            .iter()
            .map(|d| (d.target.clone(), d.path.clone()))
            .collect();
        assert_eq!(disks, q35_paths());
        let drive = r.config_drive.as_ref().unwrap();
        assert_eq!(drive.path, ISO);
        assert!(drive.files["meta-data"].contains(&r.uuid));
        assert!(r.config.contains(&r.uuid) && r.config.contains(ISO));
        assert!(!r.config.contains("52:54:00:aa:bb:cc"));
        let no_disks = RestoreRequest {
            disks: vec![],
            ..exact
        };
        assert!(as_new_request(no_disks, &as_new("x", None, None, None)).is_err());
    }
}
