//! The splice against q35 and i440fx definitions, what it refuses, name
//! validation, and the config drive files.

use super::domain_xml::child;
use super::*;
use crate::backup::VmUuid;

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
    assert!(out.ends_with("<target dev='sda' bus='sata'/><readonly/></disk></devices></domain>"));
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

fn as_new(name: &str, computer: Option<&str>, domain: Option<&str>, host: Option<&str>) -> AsNew {
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
    let user = "hostname: \"web2\"\nfqdn: \"web2.corp.example.com\"\npreserve_hostname: false\n";
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
    let user = "# Joining domain corp.example.com needs credentials this drive does not carry: \
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
        instant_config: None,
        instant_bandwidth_mib: None,
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

#[test]
fn a_sandbox_has_no_network_and_a_logged_serial_console() {
    const LOG: &str = "/var/log/libvirt/qemu/lifeboat-verify-1-serial.log";
    let sandbox = sandbox_domain(Q35, LOG).unwrap();
    let doc = roxmltree::Document::parse(&sandbox).unwrap();
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("interface"))
            .count(),
        0
    );
    let serial = doc
        .descendants()
        .find(|n| n.has_tag_name("serial"))
        .unwrap();
    assert_eq!(serial.attribute("type"), Some("pty"));
    assert_eq!(
        child(serial, "log").and_then(|l| l.attribute("file")),
        Some(LOG)
    );
    // Everything else stays: the disks, the display.
    assert!(sandbox.contains("<graphics type='spice' autoport='yes'/>"));
    assert!(sandbox.contains("/var/lib/libvirt/images/web.qcow2"));

    // A serial console that logs elsewhere is pointed at the sandbox's log.
    let logged = PC.replace(
        "</devices>",
        "<serial type='pty'><log file='/var/log/old.log'/></serial></devices>",
    );
    let sandbox = sandbox_domain(&logged, LOG).unwrap();
    assert!(
        !sandbox.contains("/var/log/old.log") && sandbox.contains(LOG),
        "{sandbox}"
    );
    assert!(!sandbox.contains("<interface"));
    assert!(sandbox_domain(PC, "relative.log").is_err());
    assert!(sandbox_domain("<domain/>", LOG).is_err());
}

#[test]
fn finds_the_guest_agent_channel() {
    assert!(!has_guest_agent(Q35));
    let with = Q35.replace(
        "</devices>",
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>",
    );
    assert!(has_guest_agent(&with));
    assert!(!has_guest_agent("<not xml"));
}

#[test]
fn an_instant_restore_runs_from_nbd_and_ends_on_its_own_images() {
    let sockets = pairs(&[("vda", "/run/x/vda.sock"), ("vdb", "/run/x/vdb.sock")]);
    let (running, after) = instant_domains(Q35, &sockets).unwrap();
    let doc = roxmltree::Document::parse(&running).unwrap();
    let disks: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.attribute("device") == Some("disk"))
        .collect();
    assert_eq!(disks.len(), 2);
    for (disk, (target, socket)) in disks.iter().zip(&sockets) {
        let driver = child(*disk, "driver").unwrap();
        assert_eq!(driver.attribute("type"), Some("qcow2"));
        assert_eq!(driver.attribute("error_policy"), Some("stop"));
        assert_eq!(driver.attribute("rerror_policy"), Some("stop"));
        let backings: Vec<_> = disk
            .children()
            .filter(|n| n.has_tag_name("backingStore"))
            .collect();
        assert_eq!(backings.len(), 1, "the old backing file is gone");
        let source = child(backings[0], "source").unwrap();
        assert_eq!(source.attribute("protocol"), Some("nbd"));
        assert_eq!(source.attribute("name"), Some(target.as_str()));
        let host = child(source, "host").unwrap();
        assert_eq!(host.attribute("socket"), Some(socket.as_str()));
    }
    assert_eq!(
        child(disks[0], "driver").unwrap().attribute("discard"),
        Some("unmap"),
        "other driver settings are kept"
    );
    // Afterwards: the same disks, qcow2 and standing alone.
    assert!(!after.contains("backingStore") && !after.contains("nbd"));
    assert!(!after.contains("error_policy"));
    assert_eq!(after.matches("type='qcow2'").count(), 2);
    assert!(!after.contains("type=\"raw\""));
    assert!(after.contains("<source file=\"/srv/vm/web-data.img\"/>"));
    // Both keep everything else, the cdroms included.
    for xml in [&running, &after] {
        assert!(xml.contains("<source file='/iso/debian.iso'/>"));
        assert!(xml.contains("<mac address='52:54:00:aa:bb:cc'/>"));
    }
    assert!(instant_domains(Q35, &pairs(&[("vdz", "/s")])).is_err());
    let block = "<domain><devices><disk type='block' device='disk'><source dev='/dev/sdb'/>\
        <target dev='vda'/></disk></devices></domain>";
    assert!(instant_domains(block, &pairs(&[("vda", "/s")])).is_err());
}
