//! `appliance`: what an operator downloads and what the booted appliance
//! costs. Builds the image (`image/build`), reports the sizes of the OVA,
//! qcow2 and vmdk, then boots it several times on one data disk (the first
//! boot formats it) and measures seconds from power-on (QEMU started) to
//! the web console answering HTTPS, and, after a quiet minute, the memory
//! in use from inside (`free -m` on the console menu's status page; the
//! in-memory root file system counts as used). The
//! accelerator is printed: where KVM cannot boot Linux, TCG is used and
//! the boot time is an emulated upper bound. Baseline in the same run:
//! Debian's cloud kernel with a minimal initramfs (the test guest) under
//! the same accelerator, from QEMU's start to its first line from init —
//! the part of a boot no appliance avoids.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_e2e::*;

use crate::median;

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// Whether the console's login page answers over HTTPS.
fn console_answers(port: u16) -> bool {
    Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ])
        .arg(format!("https://127.0.0.1:{port}/login"))
        .output()
        .map(|o| o.stdout == b"200")
        .unwrap_or(false)
}

/// Memory (MiB) as the menu's status page shows it (`free -m`): in use by
/// programs, the kernel's own allocations and the in-memory root file
/// system (used + shared), and total less available (which also counts
/// the free pages the kernel keeps in reserve).
fn memory_mib(appliance: &Appliance) -> (u64, u64) {
    appliance.ask("6", "the status page", Duration::from_secs(60), |text| {
        let line = text.lines().find(|l| l.trim_start().starts_with("Mem:"))?;
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        // total used free shared buff/cache available
        (n.len() >= 6).then(|| (n[1] + n[3], n[0] - n[5]))
    })
}

/// Seconds from QEMU's start to the test guest's init running.
fn bare_kernel_secs() -> f64 {
    let guest = LinuxGuest::ensure();
    let dir = ScratchDir::new("bench-bare-kernel");
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            accelerator(),
            "-smp",
            "2",
            "-m",
            "1536",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", "console=ttyS0", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .spawn()
        .expect("start qemu");
    crate::poll_fast("the bare kernel's init", Duration::from_secs(300), || {
        std::fs::read_to_string(&serial)
            .ok()
            .filter(|t| t.contains("lifeboat-guest:") || t.contains("Run /init"))
            .map(|_| ())
    });
    let secs = started.elapsed().as_secs_f64();
    let _ = qemu.kill();
    let _ = qemu.wait();
    secs
}

pub fn run(args: &[String]) {
    let mut runs = 3;
    for (flag, value) in crate::flag_values(args) {
        match flag.as_str() {
            "--runs" => runs = value.max(1),
            _ => crate::usage(),
        }
    }
    let image = ApplianceImage::build("0.0.0-bench");
    println!("accelerator: {}", accelerator());
    println!(
        "sizes: OVA {:.1} MiB, qcow2 {:.1} MiB, vmdk {:.1} MiB",
        mib(&image.ova()),
        mib(&image.qcow2()),
        mib(&image.vmdk())
    );
    let bare: Vec<f64> = (0..runs).map(|_| bare_kernel_secs()).collect();
    println!(
        "baseline: a bare Debian kernel reaches init in median {:.2} s",
        median(bare.clone())
    );
    let work = ScratchDir::new("bench-appliance");
    let data = Appliance::blank_disk(work.path(), "data.qcow2", "8G");
    let system = Appliance::system_disk(&image, work.path());
    let mut boots = Vec::new();
    let mut used = Vec::new();
    let mut unavailable = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let mut appliance = Appliance::boot(&system, &data, Hardware::Virtio);
        crate::poll_fast("the console to answer", Duration::from_secs(600), || {
            console_answers(appliance.https_port()).then_some(())
        });
        let secs = started.elapsed().as_secs_f64();
        boots.push(secs);
        std::thread::sleep(Duration::from_secs(60));
        let (mem, not_available) = memory_mib(&appliance);
        used.push(mem as f64);
        unavailable.push(not_available as f64);
        let first = if run == 1 {
            " (first boot: formats the data disk)"
        } else {
            ""
        };
        eprintln!(
            "boot {run}: console answered after {secs:.2} s{first}; after a minute idle \
             {mem} MiB in use, {not_available} MiB not available"
        );
        appliance.power_button();
        appliance.wait_powered_off(Duration::from_secs(120));
    }
    println!(
        "power-on to console: median {:.2} s over {runs} boots (first {:.2} s); idle memory: \
         median {:.0} MiB in use (used + shared), {:.0} MiB total less available",
        median(boots.clone()),
        boots[0],
        median(used),
        median(unavailable)
    );
    println!(
        "boot ratio appliance / bare kernel: {:.2}",
        median(boots) / median(bare)
    );
}
