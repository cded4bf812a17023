//! `appliance`: what an operator downloads and what the booted appliance
//! costs. Builds the image (`image/build`), reports the sizes of the OVA,
//! qcow2 and vmdk, then boots it several times on one data disk (the first
//! boot formats it) and measures seconds from power-on (QEMU started) to
//! the web console answering HTTPS, and, after a quiet minute, the memory
//! in use from inside (`free -m` on the console menu's status page: total
//! less available, so the in-memory root file system counts). The
//! accelerator is printed: where KVM cannot boot Linux, TCG is used and
//! the boot time is an emulated upper bound.

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

/// Memory in use (MiB) as the menu's status page shows it.
fn used_mib(appliance: &Appliance) -> u64 {
    appliance.ask("6", "the status page", Duration::from_secs(60), |text| {
        let line = text.lines().find(|l| l.trim_start().starts_with("Mem:"))?;
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        // total used free shared buff/cache available
        (n.len() >= 6).then(|| n[0] - n[5])
    })
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
    let work = ScratchDir::new("bench-appliance");
    let data = Appliance::blank_disk(work.path(), "data.qcow2", "8G");
    let system = Appliance::system_disk(&image, work.path());
    let mut boots = Vec::new();
    let mut used = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let mut appliance = Appliance::boot(&system, &data, Hardware::Virtio);
        crate::poll_fast("the console to answer", Duration::from_secs(600), || {
            console_answers(appliance.https_port()).then_some(())
        });
        let secs = started.elapsed().as_secs_f64();
        boots.push(secs);
        std::thread::sleep(Duration::from_secs(60));
        let mem = used_mib(&appliance);
        used.push(mem as f64);
        let first = if run == 1 {
            " (first boot: formats the data disk)"
        } else {
            ""
        };
        eprintln!("boot {run}: console answered after {secs:.2} s{first}; {mem} MiB in use after a minute idle");
        appliance.power_button();
        appliance.wait_powered_off(Duration::from_secs(120));
    }
    println!(
        "power-on to console: median {:.2} s over {runs} boots (first {:.2} s); memory in use idle: median {:.0} MiB",
        median(boots.clone()),
        boots[0],
        median(used)
    );
}
