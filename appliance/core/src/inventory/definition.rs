//! A VM definition (libvirt domain XML) about to be sent to a host, checked
//! first: it comes from an agent's report, a manifest in a datastore or an
//! imported archive, all untrusted. It must be the VM the plan names (name
//! and UUID), must not make QEMU or libvirt run, read or write anything of
//! the host's beyond that host's VM storage (no `qemu:commandline`, no
//! interface scripts, no foreign emulator, no kernel or firmware from an
//! odd place), and must not hand host devices to the guest unless an
//! administrator allowed it for this one action. Pure: text in, verdict out.

pub use lifeboat_os::paths::path_within;
use roxmltree::{Document, Node};

/// The namespace of libvirt's QEMU pass-through elements.
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Where libvirt itself keeps per-VM files (NVRAM, channel sockets, logs)
/// and where distributions ship firmware: paths a definition may name
/// besides the host's VM storage.
const SYSTEM_DIRS: &[&str] = &[
    "/var/lib/libvirt/qemu",
    "/run/libvirt",
    "/var/run/libvirt",
    "/var/log/libvirt",
    "/usr/share/OVMF",
    "/usr/share/ovmf",
    "/usr/share/AAVMF",
    "/usr/share/qemu",
    "/usr/share/seabios",
];

/// The emulators a definition may name; any other binary would be run by
/// libvirt as the VM's process.
const EMULATORS: &[&str] = &[
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-i386",
    "/usr/bin/qemu-system-aarch64",
    "/usr/bin/qemu-kvm",
    "/usr/libexec/qemu-kvm",
    "/usr/bin/kvm",
];

/// Attributes whose value is a path on the host.
const PATH_ATTRIBUTES: &[&str] = &["file", "path", "socket", "dir", "dev"];

/// Elements whose text is a path on the host.
const PATH_ELEMENTS: &[&str] = &["kernel", "initrd", "dtb", "loader", "nvram", "path"];

/// What the definition must match and may use.
pub struct DefinitionRules<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    /// Directories the target host keeps VM disks in (its image
    /// directories and shared-storage mounts).
    pub disk_dirs: &'a [String],
    /// Host devices (PCI/USB, block devices, directories) for the guest.
    pub allow_passthrough: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("the domain XML does not parse: {0}")]
    Unparsable(String),
    #[error("the definition is for {found:?}, not {expected:?}")]
    Mismatch { found: String, expected: String },
    #[error(
        "the definition carries QEMU pass-through (<qemu:{0}>), which is never sent to a host"
    )]
    QemuPassthrough(String),
    #[error("the definition hands a host device to the guest (<{0}>); an administrator must allow passthrough for this restore")]
    Passthrough(String),
    #[error("the definition runs a host program (<{0}>)")]
    HostProgram(String),
    #[error("the definition names emulator {0:?}, not a known QEMU")]
    Emulator(String),
    #[error("disk {path:?} is outside the host's VM storage ({dirs})")]
    DiskOutside { path: String, dirs: String },
    #[error("<{element}> names host path {path:?}, outside the host's VM storage and libvirt's own directories")]
    HostPath { element: String, path: String },
    #[error("the definition turns off the guest's confinement (<seclabel type='none'>)")]
    Unconfined,
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn text<'a>(node: Option<Node<'a, '_>>) -> &'a str {
    node.and_then(|n| n.text()).unwrap_or("").trim()
}

pub fn check_definition(xml: &str, rules: &DefinitionRules) -> Result<(), DefinitionError> {
    let doc = Document::parse(xml).map_err(|e| DefinitionError::Unparsable(e.to_string()))?;
    let domain = doc.root_element();
    if !domain.has_tag_name("domain") {
        return Err(DefinitionError::Unparsable(
            "the root is not <domain>".into(),
        ));
    }
    let name = text(child(domain, "name"));
    if name != rules.name {
        return Err(DefinitionError::Mismatch {
            found: format!("name {name}"),
            expected: format!("name {}", rules.name),
        });
    }
    let uuid = text(child(domain, "uuid"));
    if !uuid.eq_ignore_ascii_case(rules.uuid) {
        return Err(DefinitionError::Mismatch {
            found: format!("UUID {uuid}"),
            expected: format!("UUID {}", rules.uuid),
        });
    }
    for node in domain.descendants().filter(|n| n.is_element()) {
        if node.tag_name().namespace() == Some(QEMU_NS) {
            return Err(DefinitionError::QemuPassthrough(
                node.tag_name().name().into(),
            ));
        }
        if node.ancestors().any(|a| a.has_tag_name("metadata")) {
            continue; // applications' own notes; libvirt does not act on them
        }
        check_element(node, rules)?;
    }
    Ok(())
}

fn check_element(node: Node, rules: &DefinitionRules) -> Result<(), DefinitionError> {
    let tag = node.tag_name().name();
    let passthrough = || {
        if rules.allow_passthrough {
            Ok(())
        } else {
            Err(DefinitionError::Passthrough(tag.to_string()))
        }
    };
    match (tag, node.attribute("type")) {
        ("hostdev" | "filesystem" | "redirdev", _) => passthrough()?,
        ("disk", Some("block" | "dir" | "volume")) => passthrough()?,
        ("disk", _) if node.attribute("device") == Some("lun") => passthrough()?,
        ("serial" | "parallel" | "console" | "channel", Some("dev")) => passthrough()?,
        ("backend", Some("passthrough")) => passthrough()?,
        ("script", _) => return Err(DefinitionError::HostProgram(tag.into())),
        ("seclabel", Some("none")) => return Err(DefinitionError::Unconfined),
        ("emulator", _) => {
            let emulator = text(Some(node));
            if !EMULATORS.contains(&emulator) {
                return Err(DefinitionError::Emulator(emulator.into()));
            }
        }
        _ => {}
    }
    let in_disk = node.ancestors().any(|a| a.has_tag_name("disk"));
    let check = |path: &str| -> Result<(), DefinitionError> {
        if in_disk {
            if path_within(path, rules.disk_dirs) {
                return Ok(());
            }
            return Err(DefinitionError::DiskOutside {
                path: path.into(),
                dirs: rules.disk_dirs.join(", "),
            });
        }
        if path_within(path, rules.disk_dirs) || path_within(path, SYSTEM_DIRS) {
            return Ok(());
        }
        // A passthrough the administrator allowed names host devices.
        if rules.allow_passthrough && path_within(path, &["/dev"]) {
            return Ok(());
        }
        Err(DefinitionError::HostPath {
            element: tag.into(),
            path: path.into(),
        })
    };
    for attribute in node.attributes() {
        // `<target dev='vda'>` and `<target dir=...>` name guest devices.
        if tag == "target" || !PATH_ATTRIBUTES.contains(&attribute.name()) {
            continue;
        }
        if attribute.name() == "dev" && tag != "source" {
            continue; // e.g. <boot dev='hd'>, <interface><target dev='vnet0'>
        }
        check(attribute.value())?;
    }
    if PATH_ELEMENTS.contains(&tag) {
        let path = text(Some(node));
        if !path.is_empty() {
            check(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162";

    fn domain(devices: &str) -> String {
        format!(
            "<domain type='kvm' xmlns:qemu='{QEMU_NS}'><name>web01</name><uuid>{UUID}</uuid>\
             <os><type>hvm</type><boot dev='hd'/></os>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices></domain>"
        )
    }

    fn check(xml: &str) -> Result<(), DefinitionError> {
        let dirs = ["/var/lib/libvirt/images".to_string()];
        check_definition(
            xml,
            &DefinitionRules {
                name: "web01",
                uuid: UUID,
                disk_dirs: &dirs,
                allow_passthrough: false,
            },
        )
    }

    const DISK: &str = "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
        <source file='/var/lib/libvirt/images/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>";

    #[test]
    fn an_ordinary_definition_passes() {
        let channel = "<channel type='unix'><source mode='bind' \
            path='/var/lib/libvirt/qemu/channel/target/org.qemu.guest_agent.0'/>\
            <target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
            <interface type='network'><source network='default'/><target dev='vnet3'/></interface>\
            <serial type='pty'><target port='0'/></serial>";
        check(&domain(&format!("{DISK}{channel}"))).unwrap();
        let upper = domain(DISK).replace(UUID, &UUID.to_uppercase());
        check(&upper).unwrap();
    }

    #[test]
    fn another_vm_or_a_malformed_one_is_refused() {
        let other = domain(DISK).replace("<name>web01</name>", "<name>db01</name>");
        assert!(matches!(
            check(&other),
            Err(DefinitionError::Mismatch { .. })
        ));
        let other = domain(DISK).replace(UUID, "00000000-0000-4000-8000-000000000001");
        assert!(matches!(
            check(&other),
            Err(DefinitionError::Mismatch { .. })
        ));
        assert!(matches!(
            check("<domain"),
            Err(DefinitionError::Unparsable(_))
        ));
        assert!(matches!(
            check("<network><name>web01</name></network>"),
            Err(DefinitionError::Unparsable(_))
        ));
    }

    #[test]
    fn host_reaching_parts_are_refused() {
        let cases = [
            "<qemu:commandline><qemu:arg value='-run-with'/></qemu:commandline>",
            "<hostdev mode='subsystem' type='pci'><source><address bus='0x01'/></source></hostdev>",
            "<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdb'/></disk>",
            "<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdb'/></disk>",
            "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/../../../etc/passwd'/><target dev='vdb'/></disk>",
            "<disk type='file' device='cdrom'><source file='/root/secret.iso'/><target dev='sda'/></disk>",
            "<filesystem type='mount'><source dir='/'/><target dir='host'/></filesystem>",
            "<interface type='ethernet'><script path='/bin/evil'/></interface>",
            "<serial type='file'><source path='/etc/cron.d/x'/><target port='0'/></serial>",
            "<serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>",
            "<emulator>/tmp/not-qemu</emulator>",
        ];
        for devices in cases {
            assert!(
                check(&domain(&format!("{DISK}{devices}"))).is_err(),
                "{devices}"
            );
        }
        let kernel = domain(DISK).replace("<boot dev='hd'/>", "<kernel>/etc/shadow</kernel>");
        assert!(matches!(
            check(&kernel),
            Err(DefinitionError::HostPath { .. })
        ));
        let unconfined = domain(DISK).replace("</devices>", "</devices><seclabel type='none'/>");
        assert_eq!(check(&unconfined), Err(DefinitionError::Unconfined));
    }

    #[test]
    fn passthrough_is_allowed_only_when_asked() {
        let xml = domain(
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>",
        );
        let dirs: [String; 0] = [];
        let rules = |allow| DefinitionRules {
            name: "web01",
            uuid: UUID,
            disk_dirs: &dirs,
            allow_passthrough: allow,
        };
        assert!(check_definition(&xml, &rules(false)).is_err());
        check_definition(&xml, &rules(true)).unwrap();
    }
}
