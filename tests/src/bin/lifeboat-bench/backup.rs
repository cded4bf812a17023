//! `backup`: full backup and restore of a running VM's multi-GiB disk against
//! the tools operators use today, on the same VM in the same run:
//! `virtnbdbackup -l full -z` and `virtnbdrestore`, `qemu-img convert` of the
//! same bytes (compressed, as a backup; plain, as a restore writes them),
//! `zstd -1 -T0` and one core's SHA-256; then incremental backups after
//! changing 1 % and 10 % of it, with `virtnbdbackup -l inc` beside each (of
//! a twin VM with the same disk and the same changes: it refuses a VM
//! with another tool's checkpoints).

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
    let job = wait_job(api, &answer["job"]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, list) = api.get(&format!("/api/v1/vms/{}/backups", vm.uuid()));
    let last = list
        .as_array()
        .and_then(|l| l.last().cloned())
        .unwrap_or_default();
    (secs, last)
}

/// Restores `backup` as a new, stopped VM beside the original and times the
/// job to its end; the copy is removed again.
fn restore_once(api: &Api, libvirt: &Libvirt, vm: &TinyVm, backup: &str, run: usize) -> f64 {
    let name = format!("{}-r{run}", vm.name());
    let dir = vm.disk().parent().expect("image dir").to_path_buf();
    let _copy = RestoredVm {
        libvirt,
        name: name.clone(),
        files: vec![
            dir.join(format!("{name}-vda.qcow2")),
            dir.join(format!("{name}-cidata.iso")),
        ],
    };
    let t = Instant::now();
    let (status, answer) = api.post(
        &format!("/api/v1/backups/{backup}/restore"),
        &json!({"start": false, "as_new": {"name": name}}),
    );
    assert_eq!(status, 202, "{answer}");
    let job = wait_job(api, &answer["job"]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(job["state"], "succeeded", "{job}");
    secs
}

fn wait_job(api: &Api, id: &Value) -> Value {
    let path = format!("/api/v1/jobs/{id}");
    crate::poll_fast("the job", Duration::from_secs(1800), || {
        let (_, job) = api.get(&path);
        matches!(job["state"].as_str(), Some("succeeded" | "failed")).then_some(job)
    })
}

/// One `virtnbdbackup` run of the VM into `dir` (`full` starts a chain
/// there, `inc` adds to it), compressed (`-z`, lz4) as its docs advise.
fn virtnbdbackup(libvirt: &Libvirt, vm: &TinyVm, level: &str, dir: &Path) -> f64 {
    let mut c = Command::new("virtnbdbackup");
    c.args([
        "-U",
        libvirt.uri(),
        "-d",
        vm.name(),
        "-l",
        level,
        "-z",
        "--noprogress",
    ])
    .arg("-o")
    .arg(dir);
    timed(&format!("virtnbdbackup -l {level} -z"), c)
}

/// Bytes of the files under `dir`: what a `virtnbdbackup` run stored.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
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
    let times = |what: &str, make: &dyn Fn() -> Command| -> f64 {
        median(
            (0..runs)
                .map(|_| {
                    let _ = std::fs::remove_file(&out);
                    timed(what, make())
                })
                .collect(),
        )
    };

    let zstd = times("zstd -1 -T0", &|| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("zstd -1 -T0 -q -c {} > /dev/null", raw.display()));
        c
    });
    // The floor under any chunk store that names chunks by SHA-256 and
    // verifies uploads: each byte hashed twice, on these same cores.
    let sha = times("openssl dgst -sha256", &|| {
        let mut c = Command::new("openssl");
        c.args(["dgst", "-sha256"]).arg(&raw);
        c
    });
    // Writing the same bytes into a new image: what a restore must approach.
    let convert = times("qemu-img convert -O qcow2", &|| {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&out);
        c
    });
    // `--full-only 1` skips the slow baselines and the incrementals, for
    // quick comparisons while working on the data path.
    let compressed = (!full_only).then(|| {
        times("qemu-img convert -c", &|| {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-c", "-O", "qcow2"]).arg(&raw).arg(&out);
            c
        })
    });
    let _ = std::fs::remove_file(&out);

    // Two VMs with the same disk, changed alike: virtnbdbackup refuses to
    // build incrementals on a VM that has another tool's checkpoints, so
    // it backs up its twin.
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("bench");
    let twin = libvirt.define_tiny_vm("bench-peer");
    for disk in [vm.disk(), twin.disk()] {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(disk);
        timed("prepare the VM disks", c);
    }
    let _ = std::fs::remove_file(&raw);
    for v in [&vm, &twin] {
        v.start();
        wait_idle(&libvirt, v);
    }

    let peer_dir = |r: usize| work.path().join(format!("virtnbd{r}"));
    let peer_full = median(
        (0..runs)
            .map(|r| virtnbdbackup(&libvirt, &twin, "full", &peer_dir(r)))
            .collect(),
    );
    let peer_chain = peer_dir(runs - 1);
    let peer_restore = median(
        (0..runs)
            .map(|r| {
                let target = work.path().join(format!("virtnbdrestore{r}"));
                let mut c = Command::new("virtnbdrestore");
                c.args(["-U", libvirt.uri(), "--noprogress", "-i"])
                    .arg(&peer_chain)
                    .arg("-L")
                    .arg(target.with_extension("log"))
                    .arg("-o")
                    .arg(&target);
                let secs = timed("virtnbdrestore", c);
                let _ = std::fs::remove_dir_all(&target);
                secs
            })
            .collect(),
    );

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
        last = Some((controller, agent, b));
    }
    let (controller, _agent, backup) = last.expect("at least one run");
    let api = controller.api();
    let backup_id = backup["id"].as_str().unwrap_or_default().to_string();
    let restore: Vec<f64> = (0..runs)
        .map(|r| {
            let secs = restore_once(&api, &libvirt, &vm, &backup_id, r);
            eprintln!("restore run {r}: {secs:.2} s");
            secs
        })
        .collect();
    let (z, h, c, f, rs) = (zstd, sha, convert, median(full), median(restore));
    let mb = |secs: f64| size as f64 / MIB as f64 / secs;
    println!("image: {size_mib} MiB (¼ zeros, ¼ text, ½ random), {runs} runs each, medians");
    println!();
    println!("| what | seconds | MiB/s | Lifeboat against it (time ratio) |");
    println!("|---|---|---|---|");
    let row = |what: &str, secs: f64, ours: f64| {
        println!(
            "| {what} | {secs:.2} | {:.0} | {:.2}× |",
            mb(secs),
            secs / ours
        );
    };
    row("`virtnbdbackup -l full -z`, running VM", peer_full, f);
    row("`zstd -1 -T0` of the raw image", z, f);
    if let Some(q) = compressed {
        row("`qemu-img convert -c -O qcow2`", q, f);
    }
    row("`openssl dgst -sha256` of the raw image (one core)", h, f);
    println!(
        "| **Lifeboat full backup, running VM** | {f:.2} | {:.0} | — |",
        mb(f)
    );
    row("`virtnbdrestore` of that backup", peer_restore, rs);
    row("`qemu-img convert -O qcow2` of the raw image", c, rs);
    println!(
        "| **Lifeboat restore (as a new VM)** | {rs:.2} | {:.0} | — |",
        mb(rs)
    );
    if full_only {
        return;
    }

    let mut incremental = Vec::new();
    let cases = [
        (0.01, true, 0xa1u8),
        (0.01, false, 0xa2),
        (0.10, true, 0xa3),
    ];
    for (fraction, clustered, pattern) in cases {
        change(&vm, size, fraction, pattern, clustered);
        change(&twin, size, fraction, pattern, clustered);
        let (secs, b) = backup_once(&api, &vm, "auto");
        assert_eq!(b["mode"], "incremental", "{b}");
        let before = dir_bytes(&peer_chain);
        let peer = virtnbdbackup(&libvirt, &twin, "inc", &peer_chain);
        let peer_bytes = dir_bytes(&peer_chain) - before;
        let how = if clustered {
            "clustered"
        } else {
            "scattered (256 KiB pieces)"
        };
        let read = b["bytes_read"].as_u64().unwrap_or(0);
        incremental.push((fraction, how, secs, read, peer, peer_bytes));
    }
    println!();
    println!(
        "| changed | Lifeboat seconds | bytes read | % of disk read | `virtnbdbackup -l inc -z` seconds | its bytes stored | time ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (fraction, how, secs, read, peer, peer_bytes) in incremental {
        println!(
            "| {:.0} % {how} | {secs:.2} | {read} | {:.1} % | {peer:.2} | {peer_bytes} | {:.2}× |",
            fraction * 100.0,
            read as f64 * 100.0 / size as f64,
            peer / secs
        );
    }
}
