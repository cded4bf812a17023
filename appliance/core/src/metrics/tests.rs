use super::archive::{Cf, Timeframe};
use super::catalog::{host, vm};
use super::*;
use lifeboat_proto::metrics::{HostSample, VmSample};

fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("lifeboat-metrics-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.redb");
    (Store::open(&path).unwrap(), path)
}

const UUID: &str = "6f1c2a9e-0000-4000-8000-000000000001";
/// A half-hour boundary (and so a minute's), in 2027.
const T0: u64 = 1_800_000_000;

fn batch(cpu: f64, read_bps: f64) -> MetricBatch {
    MetricBatch {
        interval_ms: 10_000,
        host: HostSample {
            cpu_percent: Some(cpu / 2.0),
            memory_used_bytes: 4 << 30,
            memory_total_bytes: 16 << 30,
            ..HostSample::default()
        },
        vms: vec![VmSample {
            uuid: UUID.into(),
            cpu_percent: Some(cpu),
            memory_used_bytes: Some(1 << 30),
            disks: vec![NamedDisk {
                name: "vda".into(),
                rates: DiskRates {
                    read_bps: Some(read_bps),
                    ..DiskRates::default()
                },
            }],
            ..VmSample::default()
        }],
    }
}

fn idx(kind: Kind, key: &str) -> usize {
    kind.metric(key).unwrap().0
}

fn all(_: &str) -> bool {
    true
}

#[tokio::test]
async fn a_minute_of_samples_becomes_one_row_with_average_and_maximum() {
    let (store, _) = temp_store("minute");
    let m = Metrics::load(store, T0).unwrap();
    m.ingest("h1", &batch(20.0, 1000.0), all, T0 + 5);
    m.ingest("h1", &batch(40.0, 3000.0), all, T0 + 15);
    m.ingest("h1", &batch(90.0, 0.0), all, T0 + 65);
    m.flush(T0 + 70).await.unwrap();

    let set = m
        .series(&ObjectKey::vm(UUID), Timeframe::Hour, T0 + 70)
        .unwrap();
    assert_eq!(set.rows.len(), 60);
    assert_eq!(set.step, 60);
    let cpu = set.points(vm::CPU, Cf::Avg);
    let (t, v) = cpu[58];
    assert_eq!(t, T0);
    assert!((v.unwrap() - 30.0).abs() < 0.05, "{v:?}");
    let max = set.points(vm::CPU, Cf::Max)[58].1.unwrap();
    assert!((max - 40.0).abs() < 1.5, "{max}");
    // The minute being added up is the last point.
    assert!((cpu[59].1.unwrap() - 90.0).abs() < 0.05);
    assert_eq!(cpu[0].1, None);
    let read = set.points(idx(Kind::Vm, "disk_read"), Cf::Avg)[58]
        .1
        .unwrap();
    assert!((read - 2000.0).abs() < 1.0, "{read}");

    let host = m
        .series(&ObjectKey::host("h1"), Timeframe::Hour, T0 + 70)
        .unwrap();
    assert!((host.points(host::CPU, Cf::Avg)[58].1.unwrap() - 15.0).abs() < 0.05);
    let current = m.current(&ObjectKey::vm(UUID), T0 + 70).unwrap();
    assert_eq!(current.values[vm::CPU], Some(90.0));
    assert!(
        m.current(&ObjectKey::vm(UUID), T0 + 70 + 3600).is_none(),
        "stale"
    );
}

#[tokio::test]
async fn a_host_reports_only_its_own_vms_and_hostile_figures_are_tamed() {
    let (store, _) = temp_store("hostile");
    let m = Metrics::load(store, T0).unwrap();
    let mut b = batch(1e9, -5.0);
    b.host.cpu_percent = Some(-1.0);
    b.vms.push(VmSample {
        uuid: "someone-elses".into(),
        cpu_percent: Some(50.0),
        ..VmSample::default()
    });
    m.ingest("h1", &b, |uuid| uuid == UUID, T0);
    let current = m.current(&ObjectKey::vm(UUID), T0).unwrap();
    assert_eq!(
        current.values[vm::CPU],
        None,
        "an impossible share is no share"
    );
    assert_eq!(
        current.values[idx(Kind::Vm, "disk_read")],
        None,
        "a negative rate is no rate"
    );
    assert!(m.current(&ObjectKey::vm("someone-elses"), T0).is_none());
    let h = m.current(&ObjectKey::host("h1"), T0).unwrap();
    assert_eq!(h.values[host::CPU], None);
    assert_eq!(h.values[host::MEMORY_TOTAL], Some((16u64 << 30) as f64));
    let mut jitter = batch(100.5, 0.0);
    jitter.vms[0].cpu_percent = Some(100.5);
    m.ingest("h1", &jitter, all, T0 + 1);
    let current = m.current(&ObjectKey::vm(UUID), T0 + 1).unwrap();
    assert_eq!(
        current.values[vm::CPU],
        Some(100.0),
        "a little over is the ceiling"
    );
}

#[tokio::test]
async fn coarse_archives_are_computed_from_finer_rows_and_survive_a_restart() {
    let (store, path) = temp_store("consolidate");
    {
        let m = Metrics::load(store, T0).unwrap();
        // Half an hour: 10 % for 15 minutes, then 30 % with a 70 % peak.
        for minute in 0..30u64 {
            let cpu = if minute < 15 { 10.0 } else { 30.0 };
            m.ingest("h1", &batch(cpu, 0.0), all, T0 + minute * 60 + 1);
            if minute == 20 {
                m.ingest("h1", &batch(70.0, 0.0), all, T0 + minute * 60 + 2);
                m.ingest("h1", &batch(-0.0, 0.0), all, T0 + minute * 60 + 3);
            }
            m.flush(T0 + minute * 60 + 30).await.unwrap();
        }
        m.flush(T0 + 1800 + 40).await.unwrap();
        let week = m
            .series(&ObjectKey::vm(UUID), Timeframe::Week, T0 + 1840)
            .unwrap();
        assert_eq!(week.step, 1800);
        let (t, avg) = *week.points(vm::CPU, Cf::Avg).last().unwrap();
        assert_eq!(t, T0);
        // Minute 20's row averages 100/3; the mean of the minute means:
        let expected = (15.0 * 10.0 + 14.0 * 30.0 + 100.0 / 3.0) / 30.0;
        assert!(
            (avg.unwrap() - expected).abs() < 0.05,
            "{avg:?} vs {expected}"
        );
        let max = week.points(vm::CPU, Cf::Max).last().unwrap().1.unwrap();
        assert!((max - 70.0).abs() < 2.5, "{max}");
    }
    // Reopened: the rows and the cursor are where they were.
    let m = Metrics::load(Store::open(&path).unwrap(), T0 + 1900).unwrap();
    let week = m
        .series(&ObjectKey::vm(UUID), Timeframe::Week, T0 + 1900)
        .unwrap();
    assert!(week.points(vm::CPU, Cf::Avg).last().unwrap().1.is_some());
    let day = m
        .series(&ObjectKey::vm(UUID), Timeframe::Day, T0 + 1900)
        .unwrap();
    assert_eq!(
        day.points(vm::CPU, Cf::Avg)
            .iter()
            .flat_map(|p| p.1)
            .count(),
        30
    );
}

#[tokio::test]
async fn an_object_never_takes_more_blocks_than_its_rings() {
    let (store, _) = temp_store("bounded");
    let m = Metrics::load(store.clone(), T0).unwrap();
    // Two days of minutes: the minute ring wraps once.
    for minute in 0..(2 * 1440u64) {
        m.ingest("h1", &batch(5.0, 0.0), all, T0 + minute * 60);
        if minute % 60 == 59 {
            m.flush(T0 + minute * 60 + 1).await.unwrap();
        }
    }
    let layout = Layout::of(Kind::Vm);
    let minute_blocks = store.block_keys(&format!("vm/{UUID}/0/")).unwrap();
    assert_eq!(minute_blocks.len() as u64, layout.blocks[0]);
    let day = m
        .series(&ObjectKey::vm(UUID), Timeframe::Day, T0 + 2 * 86_400 - 60)
        .unwrap();
    let filled = day
        .points(vm::CPU, Cf::Avg)
        .iter()
        .flat_map(|p| p.1)
        .count();
    assert!(
        filled >= 1380,
        "the last day is there after the wrap: {filled}"
    );
}

/// Every block of every ring written, for `vms` VMs and `hosts` hosts.
async fn fill_rings(store: &Store, vms: usize, hosts: usize) {
    let mut writes = Vec::new();
    for (kind, count) in [(Kind::Vm, vms), (Kind::Host, hosts)] {
        let layout = Layout::of(kind);
        let row: Row = vec![Some((1.0, 2.0)); kind.archived()];
        for n in 0..count {
            let object = ObjectKey {
                kind,
                id: format!("6f1c2a9e-0000-4000-8000-{n:012}"),
            };
            for a in 0..ARCHIVES.len() {
                for block in 0..layout.blocks[a] {
                    // The last row of each block: the block is full size.
                    let slot = (block + 1) * layout.rows_per_block - 1;
                    writes.push(patch(&object, a, slot, &row));
                }
            }
            if writes.len() >= 2000 {
                store.commit(std::mem::take(&mut writes)).await.unwrap();
            }
        }
    }
    store.commit(writes).await.unwrap();
}

#[tokio::test]
async fn the_store_for_25000_vms_and_2000_hosts_stays_under_4_gb() {
    let (store, path) = temp_store("size");
    let (vms, hosts) = (1000, 80);
    fill_rings(&store, vms, hosts).await;
    // Rewriting every block once more (the steady state: rings wrap)
    // reuses the freed pages instead of growing the file.
    fill_rings(&store, vms, hosts).await;
    drop(store);
    let bytes = std::fs::metadata(&path).unwrap().len() as f64;
    // Hosts take 172,000 / 124,000 of a VM's bytes; scale by object bytes.
    let (vm_bytes, host_bytes) = (
        Layout::of(Kind::Vm).object_bytes() as f64,
        Layout::of(Kind::Host).object_bytes() as f64,
    );
    let overhead = bytes / (vms as f64 * vm_bytes + hosts as f64 * host_bytes);
    let full = overhead * (25_000.0 * vm_bytes + 2_000.0 * host_bytes);
    println!(
        "store {bytes:.0} bytes for {vms} VMs + {hosts} hosts: {overhead:.3}× the blocks; \
         25,000 VMs + 2,000 hosts: {:.2} GB",
        full / 1e9
    );
    assert!(full <= 4e9, "{full}");
}

#[tokio::test]
async fn a_scripted_hour_charges_back_what_was_used() {
    use super::chargeback::{archive_for, usage, VmFacts};
    let (store, _) = temp_store("chargeback");
    let m = Metrics::load(store, T0).unwrap();
    // A VM runs 40 minutes of the hour: 25 % for 20 minutes, then 75 %;
    // samples every 10 s. Then it stops.
    for second in (0..40 * 60).step_by(10) {
        let cpu = if second < 20 * 60 { 25.0 } else { 75.0 };
        m.ingest("h1", &batch(cpu, 0.0), all, T0 + second + 5);
        if second % 60 == 55 {
            m.flush(T0 + second + 6).await.unwrap();
        }
    }
    m.flush(T0 + 3600).await.unwrap();
    let now = T0 + 3600;
    let a = archive_for(T0, now);
    assert_eq!(a, 0, "an hour ago is in the minute archive");
    let set = m
        .rows_between(&ObjectKey::vm(UUID), a, T0, T0 + 3600)
        .unwrap();
    let facts = VmFacts {
        vcpus: 4,
        memory_bytes: 8 << 30,
        disk_bytes: 73_000_000_000,
        backup_bytes: 0.0,
    };
    let u = usage(&set, T0, T0 + 3600, &facts);
    // By hand: 40 min running = 2/3 h; 4 vCPUs → 8/3 vCPU-hours; 8 GiB →
    // 16/3 GiB-hours; CPU (20 min × 25 % + 20 min × 75 %) × 4 = 4/3
    // core-hours; 73 GB for 1 of 730 hours = 0.1 GB-months.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
    assert!(close(u.running_hours, 2.0 / 3.0), "{u:?}");
    assert!(close(u.vcpu_hours, 8.0 / 3.0), "{u:?}");
    assert!(close(u.memory_gib_hours, 16.0 / 3.0), "{u:?}");
    assert!(close(u.cpu_core_hours, 4.0 / 3.0), "{u:?}");
    assert!(close(u.disk_gb_months, 0.1), "{u:?}");
}
