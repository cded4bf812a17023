//! The XML splice: the backed-up domain definition with a new identity, disks
//! and an optional config-drive CD-ROM, every other byte kept verbatim.

use std::ops::Range;
use std::path::Path;

use roxmltree::{Document, Node};

use super::{beside, check_vm_name};
use crate::backup::VmUuid;

const LIBOSINFO_NS: &str = "http://libosinfo.org/xmlns/libvirt/domain/1.0";

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

pub(super) fn child<'a, 'i>(node: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
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

/// The two definitions of an instant restore of `config` (the restored VM,
/// its disks already at their new paths): the one it runs from while its
/// data is copied, each file disk `(target, socket)` becoming a qcow2 image
/// backed by the NBD export on `socket` and pausing the guest on an I/O
/// error rather than failing its read; and the one it keeps afterwards,
/// the same qcow2 images standing alone.
pub fn instant_domains(
    config: &str,
    sockets: &[(String, String)],
) -> Result<(String, String), String> {
    let doc = Document::parse(config)
        .map_err(|e| format!("the restored domain XML does not parse: {e}"))?;
    let devices =
        child(doc.root_element(), "devices").ok_or("the restored definition has no <devices>")?;
    let (mut running, mut after) = (
        Splice {
            input: config,
            edits: Vec::new(),
        },
        Splice {
            input: config,
            edits: Vec::new(),
        },
    );
    let mut done = 0;
    for disk in devices.children().filter(|n| n.has_tag_name("disk")) {
        let dev = child(disk, "target").and_then(|t| t.attribute("dev"));
        let Some((target, socket)) = sockets.iter().find(|(t, _)| Some(t.as_str()) == dev) else {
            continue;
        };
        let (Some(source), Some("file")) = (child(disk, "source"), disk.attribute("type")) else {
            return Err(format!(
                "disk {target} is not a file; it cannot run from its backup"
            ));
        };
        done += 1;
        let driver = child(disk, "driver");
        let kept: String = driver
            .map(|d| {
                d.attributes()
                    .filter(|a| !matches!(a.name(), "type" | "error_policy" | "rerror_policy"))
                    .map(|a| format!(" {}='{}'", a.name(), escape(a.value())))
                    .collect()
            })
            .unwrap_or_else(|| " name='qemu'".into());
        let plain = format!("<driver{kept} type='qcow2'/>");
        let stopping =
            format!("<driver{kept} type='qcow2' error_policy='stop' rerror_policy='stop'/>");
        match driver {
            Some(d) => {
                running.replace(d.range(), stopping);
                after.replace(d.range(), plain);
            }
            None => {
                running.insert_child(disk, &stopping, false);
                after.insert_child(disk, &plain, false);
            }
        }
        let end = source.range().end;
        running.replace(
            end..end,
            format!(
                "<backingStore type='network'><format type='raw'/><source protocol='nbd' name='{}'>\
                 <host transport='unix' socket='{}'/></source><backingStore/></backingStore>",
                escape(target),
                escape(socket)
            ),
        );
        // After the insertion above, which may touch a removed one's start.
        for backing in disk.children().filter(|n| n.has_tag_name("backingStore")) {
            running.replace(backing.range(), String::new());
            after.replace(backing.range(), String::new());
        }
    }
    if done != sockets.len() {
        return Err("the definition lacks a disk of the backup".into());
    }
    Ok((running.finish()?, after.finish()?))
}

/// The guest agent's virtio channel, which a boot verification can wait on.
const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// Whether the definition gives the guest a QEMU guest agent channel.
pub fn has_guest_agent(config: &str) -> bool {
    let Ok(doc) = Document::parse(config) else {
        return false;
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("channel"))
        .filter_map(|c| child(c, "target"))
        .any(|t| t.attribute("name") == Some(GUEST_AGENT_CHANNEL))
}

/// A restored definition made into a boot-verification sandbox: no network
/// interface at all (the copy must not reach the original's networks), and
/// the first serial console logged to `serial_log` (one is added if there
/// is none), so its output can be watched.
pub fn sandbox_domain(config: &str, serial_log: &str) -> Result<String, String> {
    if !serial_log.starts_with('/') || serial_log.chars().any(char::is_control) {
        return Err(format!("{serial_log:?} is not an absolute path"));
    }
    let doc = Document::parse(config)
        .map_err(|e| format!("the restored domain XML does not parse: {e}"))?;
    let devices =
        child(doc.root_element(), "devices").ok_or("the restored definition has no <devices>")?;
    let mut edit = Splice {
        input: config,
        edits: Vec::new(),
    };
    for iface in devices.children().filter(|n| n.has_tag_name("interface")) {
        edit.replace(iface.range(), String::new());
    }
    let log = format!("<log file='{}' append='off'/>", escape(serial_log));
    match child(devices, "serial") {
        Some(serial) => match child(serial, "log") {
            Some(old) => edit.replace(old.range(), log),
            None => edit.insert_child(serial, &log, true),
        },
        None => edit.insert_child(devices, &format!("<serial type='pty'>{log}</serial>"), true),
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
