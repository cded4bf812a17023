//! Watching that no VM disk is ever used by two QEMU processes at once, on
//! any host: the failover promise is "zero double-runs", and QEMU's image
//! lock must never be the only thing that keeps a second QEMU off a disk.
//! So a second QEMU counts even if it dies at once on that lock (it lives
//! about 15 ms then: less than a /proc poll interval, hence the kernel's
//! exec and exit events).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::proc_events::{ProcEvent, ProcEvents, Received};

/// How often the monitor also reads all of /proc, to see QEMUs that ran
/// before it started and to recover from lost events (or to do all the
/// work, where exec events are not available).
const SCAN_INTERVAL: Duration = Duration::from_millis(20);

/// One QEMU process using a watched disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuProcess {
    pub pid: u32,
    /// The host it runs in (`lbh1`...), `root` for the root namespace, or
    /// `net:[INODE]` for another network namespace.
    pub host: String,
}

/// A stretch of time during which more than one QEMU used a disk.
#[derive(Clone, Debug)]
pub struct DoubleRun {
    /// The disk file name.
    pub disk: String,
    pub first_seen: Instant,
    /// When the count went back below two (or was last seen at two or more).
    pub last_seen: Instant,
    /// Every process seen using the disk during the stretch.
    pub processes: Vec<QemuProcess>,
}

impl fmt::Display for DoubleRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let processes: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("pid {} on {}", p.pid, p.host))
            .collect();
        write!(
            f,
            "{} used by {} for {:?}",
            self.disk,
            processes.join(", "),
            self.last_seen - self.first_seen
        )
    }
}

/// A background thread that keeps, per watched disk file, the set of
/// running `qemu-system` processes whose command line names it (QEMU gets
/// it as `-blockdev {"driver":"file","filename":".../NAME",...}`), in any
/// namespace: from the kernel's exec and exit events as they happen, and a
/// full /proc scan every 20 ms. It records the most seen at once per disk
/// and every stretch during which there were more than one. Stops on drop.
pub struct DoubleRunMonitor {
    disks: Vec<String>,
    tracker: Arc<Mutex<Tracker>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DoubleRunMonitor {
    /// Starts watching the disk files named `disk_files` (file names, as
    /// [`crate::TinyVm::disk_file_name`]; the directory does not matter, so
    /// every host's path to the disk counts). Returns once it watches: every
    /// QEMU running then or started later is seen. Without exec events
    /// (not root), it warns and falls back to the 20 ms scans alone.
    pub fn start(disk_files: &[&str]) -> DoubleRunMonitor {
        let disks: Vec<String> = disk_files.iter().map(|d| d.to_string()).collect();
        assert!(
            disks.iter().all(|d| !d.is_empty() && !d.contains('/')),
            "watch disk file names, not paths: {disks:?}"
        );
        // Subscribed before the first scan: nothing falls in between.
        let events = ProcEvents::subscribe(SCAN_INTERVAL)
            .map_err(|e| eprintln!("double-run monitor: no exec events ({e}); polling only"))
            .ok();
        let mut tracker = Tracker::new(disks.clone(), events.is_some());
        tracker.scan();
        let tracker = Arc::new(Mutex::new(tracker));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tracker, stop) = (tracker.clone(), stop.clone());
            std::thread::Builder::new()
                .name("double-run-monitor".to_string())
                .spawn(move || watch(events, &tracker, &stop))
                .expect("spawn the double-run monitor thread")
        };
        DoubleRunMonitor {
            disks,
            tracker,
            stop,
            thread: Some(thread),
        }
    }

    /// The most QEMU processes seen on `disk` at once so far.
    pub fn max_running(&self, disk: &str) -> usize {
        let i = self.index(disk);
        lock(&self.tracker).max[i]
    }

    /// Every stretch so far during which a disk had more than one QEMU.
    pub fn doubles(&self) -> Vec<DoubleRun> {
        lock(&self.tracker).doubles.clone()
    }

    /// How many full /proc scans were made, and the longest time between
    /// two (only the scans' own latency, if exec events are seen).
    pub fn scans(&self) -> (u64, Duration) {
        let tracker = lock(&self.tracker);
        (tracker.scans, tracker.longest_gap)
    }

    /// True if the kernel's exec and exit events are watched (so even a
    /// process living a millisecond is seen), false if only polling.
    pub fn sees_every_exec(&self) -> bool {
        lock(&self.tracker).exec_events
    }

    /// Panics, listing every double run with its processes and hosts, if a
    /// disk was ever used by more than one QEMU at once.
    pub fn assert_never_doubled(&self) {
        let doubles = self.doubles();
        if !doubles.is_empty() {
            let (scans, gap) = self.scans();
            let list: Vec<String> = doubles.iter().map(|d| format!("  {d}")).collect();
            panic!(
                "a VM disk ran in more than one QEMU at once ({} times; exec events: {}, \
                 {scans} scans, longest gap {gap:?}):\n{}",
                doubles.len(),
                self.sees_every_exec(),
                list.join("\n")
            );
        }
    }

    /// Stops watching; what was recorded stays readable. Also done on drop.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                panic!("the double-run monitor thread panicked");
            }
        }
    }

    fn index(&self, disk: &str) -> usize {
        self.disks
            .iter()
            .position(|d| d == disk)
            .unwrap_or_else(|| panic!("{disk} is not watched (watched: {:?})", self.disks))
    }
}

impl Drop for DoubleRunMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The monitor thread: events as they come, a scan whenever 20 ms passed.
fn watch(mut events: Option<ProcEvents>, tracker: &Mutex<Tracker>, stop: &AtomicBool) {
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let received = match events.as_mut().map(ProcEvents::recv) {
            Some(Ok(received)) => received,
            Some(Err(e)) => {
                eprintln!("double-run monitor: {e}; polling only from now on");
                events = None;
                lock(tracker).exec_events = false;
                Received::Idle
            }
            None => {
                std::thread::sleep(SCAN_INTERVAL);
                Received::Idle
            }
        };
        match received {
            Received::Event(ProcEvent::Exec(pid)) => lock(tracker).on_exec(pid),
            Received::Event(ProcEvent::Exit(pid)) => lock(tracker).on_exit(pid),
            Received::Lost => last_scan -= SCAN_INTERVAL,
            Received::Other | Received::Idle => {}
        }
        if last_scan.elapsed() >= SCAN_INTERVAL {
            lock(tracker).scan();
            last_scan = Instant::now();
        }
    }
}

/// What the monitor knows; updated on every event and scan.
struct Tracker {
    disks: Vec<String>,
    /// Per disk, the QEMUs using it now, by pid.
    live: Vec<BTreeMap<u32, QemuProcess>>,
    max: Vec<usize>,
    doubles: Vec<DoubleRun>,
    /// Per disk, the index in `doubles` of the stretch still going on.
    open: Vec<Option<usize>>,
    exec_events: bool,
    scans: u64,
    last_scan: Option<Instant>,
    longest_gap: Duration,
}

impl Tracker {
    fn new(disks: Vec<String>, exec_events: bool) -> Tracker {
        let n = disks.len();
        Tracker {
            disks,
            live: vec![BTreeMap::new(); n],
            max: vec![0; n],
            doubles: Vec::new(),
            open: vec![None; n],
            exec_events,
            scans: 0,
            last_scan: None,
            longest_gap: Duration::ZERO,
        }
    }

    /// A process just started a program: if it is a QEMU on a watched disk,
    /// it counts from now (even if it fails a moment later).
    fn on_exec(&mut self, pid: u32) {
        let Some(qemu) = read_qemu(pid) else {
            return;
        };
        let mut names = None;
        for i in 0..self.disks.len() {
            if mentions(&qemu.cmdline, &self.disks[i]) {
                let names = names.get_or_insert_with(netns_names);
                self.live[i].insert(pid, qemu.process(names));
                self.update(i);
            }
        }
    }

    fn on_exit(&mut self, pid: u32) {
        for i in 0..self.disks.len() {
            if self.live[i].remove(&pid).is_some() {
                self.update(i);
            }
        }
    }

    /// Makes the live sets what /proc shows now.
    fn scan(&mut self) {
        let now = Instant::now();
        let qemus = qemu_processes();
        let mut names = None;
        for i in 0..self.disks.len() {
            let users: Vec<&Qemu> = qemus
                .iter()
                .filter(|q| mentions(&q.cmdline, &self.disks[i]))
                .collect();
            self.live[i].retain(|pid, _| users.iter().any(|q| q.pid == *pid));
            for qemu in users {
                if let Entry::Vacant(entry) = self.live[i].entry(qemu.pid) {
                    entry.insert(qemu.process(names.get_or_insert_with(netns_names)));
                }
            }
            self.update(i);
        }
        if let Some(last) = self.last_scan {
            self.longest_gap = self.longest_gap.max(now - last);
        }
        self.scans += 1;
        self.last_scan = Some(now);
    }

    /// Records the count of disk `i` as it is now.
    fn update(&mut self, i: usize) {
        let now = Instant::now();
        let count = self.live[i].len();
        self.max[i] = self.max[i].max(count);
        if count < 2 {
            if let Some(open) = self.open[i].take() {
                self.doubles[open].last_seen = now;
            }
            return;
        }
        let processes = self.live[i].values().cloned();
        match self.open[i] {
            Some(open) => {
                let double = &mut self.doubles[open];
                double.last_seen = now;
                for process in processes {
                    if !double.processes.contains(&process) {
                        double.processes.push(process);
                    }
                }
            }
            None => {
                self.open[i] = Some(self.doubles.len());
                self.doubles.push(DoubleRun {
                    disk: self.disks[i].clone(),
                    first_seen: now,
                    last_seen: now,
                    processes: processes.collect(),
                });
            }
        }
    }
}

/// The hosts (see [`QemuProcess::host`]) running a QEMU whose command line
/// names the disk file `disk_file`, sorted; one entry per process.
pub fn running_qemu_hosts(disk_file: &str) -> Vec<String> {
    let names = netns_names();
    let mut hosts: Vec<String> = qemu_processes()
        .iter()
        .filter(|q| mentions(&q.cmdline, disk_file))
        .map(|q| q.process(&names).host)
        .collect();
    hosts.sort();
    hosts
}

struct Qemu {
    pid: u32,
    cmdline: String,
    /// Its network namespace's inode; `None` if it exited meanwhile.
    netns: Option<u64>,
}

impl Qemu {
    fn process(&self, names: &HashMap<u64, String>) -> QemuProcess {
        let host = match self.netns {
            Some(inode) => names
                .get(&inode)
                .cloned()
                .unwrap_or_else(|| format!("net:[{inode}]")),
            None => "exited".to_string(),
        };
        QemuProcess {
            pid: self.pid,
            host,
        }
    }
}

/// Every live `qemu-system-*` process.
fn qemu_processes() -> Vec<Qemu> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_qemu)
        .collect()
}

/// Process `pid` if it is a live `qemu-system-*`. The short `comm` is read
/// first, and the command line only of QEMUs, so a scan stays cheap.
fn read_qemu(pid: u32) -> Option<Qemu> {
    let dir = Path::new("/proc").join(pid.to_string());
    let comm = std::fs::read(dir.join("comm")).ok()?;
    if !comm.starts_with(b"qemu-system") {
        return None;
    }
    // Empty for a zombie: it no longer uses anything.
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    if cmdline.is_empty() {
        return None;
    }
    Some(Qemu {
        pid,
        cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
        netns: std::fs::metadata(dir.join("ns/net")).ok().map(|m| m.ino()),
    })
}

/// Network namespace inodes to names: the named namespaces in /run/netns
/// (the cluster hosts, `lbh1`...) and `root`, this process's own.
fn netns_names() -> HashMap<u64, String> {
    let mut names = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            if let Ok(metadata) = std::fs::metadata(entry.path()) {
                names.insert(
                    metadata.ino(),
                    entry.file_name().to_string_lossy().into_owned(),
                );
            }
        }
    }
    if let Ok(metadata) = std::fs::metadata(Path::new("/proc/self/ns/net")) {
        names.insert(metadata.ino(), "root".to_string());
    }
    names
}

/// True if `cmdline` names the file `file` in some directory: `/FILE`
/// followed by something that cannot continue a file name (`"`, `,`, a
/// space, the end), so `a.qcow2` does not match `/xa.qcow2` or `/a.qcow2.1`.
fn mentions(cmdline: &str, file: &str) -> bool {
    let needle = format!("/{file}");
    cmdline.match_indices(&needle).any(|(at, _)| {
        cmdline[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_found_by_file_name_in_any_directory() {
        let blockdev = r#"-blockdev {"driver":"file","filename":"/mnt/lifeboat-shared-h2/lbe2e-1-a.qcow2","node-name":"x"}"#;
        assert!(mentions(blockdev, "lbe2e-1-a.qcow2"));
        assert!(mentions(
            "-drive file=/srv/x/lbe2e-1-a.qcow2,if=none",
            "lbe2e-1-a.qcow2"
        ));
        assert!(mentions(
            "-drive file=/srv/lbe2e-1-a.qcow2",
            "lbe2e-1-a.qcow2"
        ));
        assert!(!mentions(blockdev, "1-a.qcow2"));
        assert!(!mentions(blockdev, "lbe2e-1-a.qcow"));
        assert!(!mentions("/srv/lbe2e-1-a.qcow2.bak", "lbe2e-1-a.qcow2"));
    }
}
