//! `backup`: full-backup throughput of a running VM's multi-GiB disk against
//! `zstd -1 -T0` and `qemu-img convert -c -O qcow2` of the same image in the
//! same run, then incremental backups after changing 1 % and 10 % of it.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_e2e::*;

use crate::median;

const MIB: u64 = 1024 * 1024;
const BLOCK: usize = 4 * MIB as usize;

/// Mixed content, 4 MiB blocks in turn: random, text-like, zeros, random.
/// Deterministic (xorshift), so every run backs up the same bytes.
fn write_image(path: &Path, size_mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create image"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let words = b"virtual machine backup restore failover controller agent chunk index manifest ";
    let mut block = vec![0u8; BLOCK];
    for i in 0..(size_mib * MIB) as usize / BLOCK {
        match i % 4 {
            0 | 3 => {
                for b in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
                }
            }
            1 => {
                for (k, b) in block.iter_mut().enumerate() {
                    *b = words[(k + i) % words.len()];
                }
            }
            _ => block.fill(0),
        }
        f.write_all(&block).expect("write image");
    }
    f.flush().expect("flush image");
}

fn timed(what: &str, mut cmd: Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// Starts a backup and times it to its end.
fn backup_once(api: &Api, vm: &TinyVm, mode: &str) -> (f64, Value) {
    let t = Instant::now();
    let (status, answer) = api.post(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": mode}),
    );
    assert_eq!(status, 202, "{answer}");
    let path = format!("/api/v1/jobs/{}", answer["job"]);
    let job = crate::poll_fast("the backup job", Duration::from_secs(1800), || {
        let (_, job) = api.get(&path);
        matches!(job["state"].as_str(), Some("succeeded" | "failed")).then_some(job)
    });
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, list) = api.get(&format!("/api/v1/vms/{}/backups", vm.uuid()));
    let last = list
        .as_array()
        .and_then(|l| l.last().cloned())
        .unwrap_or_default();
    (secs, last)
}

/// Writes `fraction` of the disk from inside the running VM, in 256 KiB
/// pieces: one after the other from the middle of the disk (`clustered`,
/// like a growing file), or spread evenly over the whole disk.
fn change(vm: &TinyVm, size: u64, fraction: f64, pattern: u8, clustered: bool) {
    let piece = 256 * 1024u64;
    let pieces = ((size as f64 * fraction) / piece as f64).ceil() as u64;
    let stride = if clustered {
        piece
    } else {
        size / pieces.max(1)
    };
    let start = if clustered { size / 2 } else { 0 };
    for k in 0..pieces {
        vm.write_pattern(pattern, start + k * stride, "256K");
    }
}

/// Waits until the VM's firmware has booted and its vCPU idles (under 5 %
/// of a core over half a second), so a backup is not timed against a boot.
fn wait_idle(libvirt: &Libvirt, vm: &TinyVm) {
    let cpu_ns = || -> u64 {
        libvirt
            .virsh(&["domstats", "--cpu-total", vm.name()])
            .lines()
            .find_map(|l| l.trim().strip_prefix("cpu.time=")?.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = cpu_ns();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_ns();
        if now.saturating_sub(before) < 25_000_000 {
            return;
        }
        before = now;
    }
    panic!("{} kept its vCPU busy for a minute", vm.name());
}

pub fn run(flags: &[String]) {
    let (mut size_mib, mut runs, mut full_only) = (2048u64, 3usize, false);
    for (flag, value) in super::flag_values(flags) {
        match flag.as_str() {
            "--size-mib" => size_mib = value as u64,
            "--runs" => runs = value,
            "--full-only" => full_only = value != 0,
            _ => super::usage(),
        }
    }
    let size = size_mib * MIB;
    let work = ScratchDir::new("bench-backup");
    let raw = work.path().join("data.raw");
    write_image(&raw, size_mib);
    let out = work.path().join("out.qcow2");

    let zstd: Vec<f64> = (0..runs)
        .map(|_| {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("zstd -1 -T0 -q -c {} > /dev/null", raw.display()));
            timed("zstd -1 -T0", c)
        })
        .collect();
    // The floor under any chunk store that names chunks by SHA-256 and
    // verifies uploads: each byte hashed twice, on these same cores.
    let sha: Vec<f64> = (0..runs)
        .map(|_| {
            let mut c = Command::new("openssl");
            c.args(["dgst", "-sha256"]).arg(&raw);
            timed("openssl dgst -sha256", c)
        })
        .collect();
    // `--full-only 1` skips the slow baseline and the incrementals, for
    // quick comparisons while working on the data path.
    let qemu: Vec<f64> = (0..if full_only { 0 } else { runs })
        .map(|_| {
            let _ = std::fs::remove_file(&out);
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-c", "-O", "qcow2"]).arg(&raw).arg(&out);
            timed("qemu-img convert -c", c)
        })
        .collect();
    let _ = std::fs::remove_file(&out);

    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("bench");
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(vm.disk());
    timed("prepare the VM disk", c);
    let _ = std::fs::remove_file(&raw);
    vm.start();
    wait_idle(&libvirt, &vm);

    let mut full = Vec::new();
    let mut last = None;
    for r in 0..runs {
        // A fresh controller and datastore each run: nothing to deduplicate against.
        let controller = Controller::start();
        let agent = Agent::start(&controller, &format!("bench{r}"), Some(libvirt.uri()));
        let api = controller.api();
        api.wait_host_with_vm(agent.name(), vm.name());
        let (secs, b) = backup_once(&api, &vm, "full");
        eprintln!("full run {r}: {secs:.2} s, read {} bytes", b["bytes_read"]);
        full.push(secs);
        last = Some((controller, agent));
    }
    let (controller, _agent) = last.expect("at least one run");
    let h = median(sha);
    if full_only {
        let (z, f) = (median(zstd), median(full));
        println!(
            "full backup {f:.2} s, zstd -1 -T0 {z:.2} s: {:.2}×; SHA-256 {h:.2} s",
            z / f
        );
        return;
    }
    let api = controller.api();
    let mut incremental = Vec::new();
    let cases = [
        (0.01, true, 0xa1u8),
        (0.01, false, 0xa2),
        (0.10, true, 0xa3),
    ];
    for (fraction, clustered, pattern) in cases {
        change(&vm, size, fraction, pattern, clustered);
        let (secs, b) = backup_once(&api, &vm, "auto");
        assert_eq!(b["mode"], "incremental", "{b}");
        let how = if clustered {
            "clustered"
        } else {
            "scattered (256 KiB pieces)"
        };
        incremental.push((fraction, how, secs, b["bytes_read"].as_u64().unwrap_or(0)));
    }

    let (z, q, f) = (median(zstd), median(qemu), median(full));
    let mb = |secs: f64| size as f64 / MIB as f64 / secs;
    println!("image: {size_mib} MiB (¼ zeros, ¼ text, ½ random), {runs} runs each, medians");
    println!();
    println!("| what | seconds | MiB/s | Lifeboat's throughput against it |");
    println!("|---|---|---|---|");
    println!(
        "| `zstd -1 -T0` of the raw image | {z:.2} | {:.0} | {:.2}× |",
        mb(z),
        z / f
    );
    println!(
        "| `qemu-img convert -c -O qcow2` | {q:.2} | {:.0} | {:.2}× |",
        mb(q),
        q / f
    );
    println!(
        "| `openssl dgst -sha256` of the raw image (one core) | {h:.2} | {:.0} | {:.2}× |",
        mb(h),
        h / f
    );
    println!(
        "| Lifeboat full backup, running VM | {f:.2} | {:.0} | — |",
        mb(f)
    );
    println!();
    println!("| changed | incremental seconds | bytes read | % of disk read | vs full time |");
    println!("|---|---|---|---|---|");
    for (fraction, how, secs, read) in incremental {
        println!(
            "| {:.0} % {how} | {secs:.2} | {read} | {:.1} % | {:.2}× |",
            fraction * 100.0,
            read as f64 * 100.0 / size as f64,
            secs / f
        );
    }
}
