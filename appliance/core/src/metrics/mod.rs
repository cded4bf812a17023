//! Performance metrics: ingest of the agents' samples, the round-robin
//! archives in the store, the live figures, and queries.
//!
//! Guarantees: samples are added up in memory and written once a minute
//! closes, in group commits of many objects (never an fsync per sample);
//! a `kill -9` loses at most the current minute and the flush interval
//! after it. Coarser archives are computed from the finer ones once their
//! slot has ended, so nothing of them lives only in memory. Disk use per
//! object is fixed ([`archive::Layout::object_bytes`]).

pub mod archive;
pub mod catalog;
pub mod chargeback;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lifeboat_proto::metrics::{
    DiskRates, MetricBatch, MountSpace, NamedDisk, NamedNic, NetRates, MAX_DEVICES,
    MAX_VMS_PER_BATCH,
};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, Table, Write};
use archive::{Layout, Row, Timeframe, ARCHIVES};
use catalog::Kind;

/// How often finished rows are written.
pub const FLUSH_INTERVAL_SECS: u64 = 10;
/// A coarse slot is consolidated this long after it ended, once the finer
/// rows of its last minutes are surely written.
const CONSOLIDATION_GRACE_SECS: u64 = 2 * FLUSH_INTERVAL_SECS + 5;
/// Most slots of one archive consolidated per flush, so catching up after
/// a long stop never stalls the writer.
const MAX_SLOTS_PER_FLUSH: u64 = 4;
/// Objects per group commit.
const OBJECTS_PER_COMMIT: usize = 1000;
/// An object's last-seen time in the index is refreshed this often.
const INDEX_REFRESH_SECS: u64 = 600;
/// Archives of an object that stopped reporting are kept this long after
/// its last sample (a year of charge-back, and a month more), then deleted.
pub const RETENTION_AFTER_LAST_SAMPLE_SECS: u64 = 400 * 86_400;
/// Figures older than this are not "current".
const STALE_AFTER_SECS: u64 = 120;

/// One object with archives: a host (by host id) or a VM (by UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub id: String,
}

impl ObjectKey {
    pub fn host(id: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Host,
            id: id.to_string(),
        }
    }

    pub fn vm(uuid: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Vm,
            id: uuid.to_string(),
        }
    }

    fn index_key(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.id)
    }

    fn from_index_key(key: &str) -> Option<ObjectKey> {
        let (kind, id) = key.split_once('/')?;
        let kind = match kind {
            "host" => Kind::Host,
            "vm" => Kind::Vm,
            _ => return None,
        };
        Some(ObjectKey {
            kind,
            id: id.to_string(),
        })
    }
}

/// The stored index entry of an object.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ObjectRecord {
    first_seen: u64,
    last_seen: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Cursor {
    /// Per coarse archive (1..=3), the next slot to consolidate.
    next: [u64; 3],
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MetricsSettings {
    /// How often agents sample, in seconds.
    pub interval_secs: u64,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            interval_secs: lifeboat_proto::metrics::DEFAULT_INTERVAL_MS / 1000,
        }
    }
}

/// What the archives hold and have taken in.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MetricsStatus {
    /// Values (one metric of one object) taken in since start.
    pub samples_in: u64,
    /// Hosts and VMs with archives.
    pub objects: usize,
    /// Most bytes the archives of one host or VM take.
    pub bytes_per_host: u64,
    pub bytes_per_vm: u64,
}

/// Device-level figures kept live only.
#[derive(Debug, Clone, Default)]
pub enum Detail {
    #[default]
    None,
    Host {
        mounts: Vec<MountSpace>,
    },
    Vm {
        disks: Vec<NamedDisk>,
        nics: Vec<NamedNic>,
    },
}

/// An object's latest figures.
#[derive(Debug, Clone)]
pub struct Current {
    pub at: u64,
    /// By [`Kind::metrics`] index.
    pub values: Vec<Option<f64>>,
    pub detail: Detail,
}

#[derive(Debug, Clone, Copy, Default)]
struct Accumulator {
    sum: f64,
    max: f64,
    count: u32,
}

struct Live {
    /// The absolute minute being added up.
    minute: u64,
    sums: Vec<Accumulator>,
    current: Current,
}

impl Live {
    /// The minute's row, and the sums cleared for the next one; `None` if
    /// nothing was measured.
    fn finished_row(&mut self) -> Option<Row> {
        let row = self.partial_row();
        self.sums
            .iter_mut()
            .for_each(|a| *a = Accumulator::default());
        row.iter().any(Option::is_some).then_some(row)
    }

    fn partial_row(&self) -> Row {
        self.sums
            .iter()
            .map(|a| (a.count > 0).then(|| (a.sum / f64::from(a.count), a.max)))
            .collect()
    }
}

#[derive(Default)]
struct State {
    live: HashMap<ObjectKey, Live>,
    /// Finished minute rows not yet written: (object, minute, row).
    pending: Vec<(ObjectKey, u64, Row)>,
    index: HashMap<ObjectKey, ObjectRecord>,
    /// Index entries to write at the next flush.
    index_dirty: Vec<ObjectKey>,
    cursor: Cursor,
}

pub struct Metrics {
    store: Store,
    state: Mutex<State>,
    settings: Mutex<MetricsSettings>,
    /// Samples taken in, for the benchmark and the status page.
    samples_in: AtomicU64,
    /// Every minute before this one (an absolute minute) that will ever be
    /// written is in the store.
    written_before: AtomicU64,
    /// One flush at a time, so `written_before` never runs ahead of a
    /// commit still under way.
    flushing: tokio::sync::Mutex<()>,
}

/// A stretch of one archive: `rows[i]` covers `start + i * step`.
#[derive(Debug, Clone)]
pub struct SeriesSet {
    pub kind: Kind,
    pub step: u64,
    pub start: u64,
    pub rows: Vec<Row>,
}

impl SeriesSet {
    /// One metric's points: (time, value) under `cf`, gaps as `None`.
    pub fn points(&self, metric: usize, cf: archive::Cf) -> Vec<(u64, Option<f64>)> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let v = row.get(metric).copied().flatten().map(|(a, m)| match cf {
                    archive::Cf::Avg => a,
                    archive::Cf::Max => m,
                });
                (self.start + i as u64 * self.step, v)
            })
            .collect()
    }
}

/// A figure as believed: a little over its ceiling (a share measured over
/// a jittery interval) is the ceiling; negative, or far over it, is none.
fn clean(v: f64, max: f64) -> Option<f64> {
    (v.is_finite() && (0.0..=max * 1.1).contains(&v)).then_some(v.min(max))
}

fn clean_opt(v: Option<f64>, max: f64) -> Option<f64> {
    v.and_then(|v| clean(v, max))
}

/// Largest rate believed (bytes or operations per second): more is a
/// broken or hostile agent.
const MAX_RATE: f64 = 1e12;
const MAX_BYTES: f64 = 1e15;

fn disk_values(d: &DiskRates) -> [Option<f64>; 4] {
    [d.read_bps, d.write_bps, d.read_iops, d.write_iops].map(|v| clean_opt(v, MAX_RATE))
}

fn net_values(n: &NetRates) -> [Option<f64>; 2] {
    [n.rx_bps, n.tx_bps].map(|v| clean_opt(v, MAX_RATE))
}

fn host_values(batch: &MetricBatch) -> Vec<Option<f64>> {
    let h = &batch.host;
    let [dr, dw, dri, dwi] = disk_values(&h.disk);
    let [rx, tx] = net_values(&h.net);
    let storage_free = (!h.mounts.is_empty()).then(|| {
        h.mounts
            .iter()
            .take(MAX_DEVICES)
            .map(|m| m.free_bytes as f64)
            .sum::<f64>()
    });
    vec![
        clean_opt(h.cpu_percent, 100.0),
        clean_opt(h.load1, 1e6),
        clean(h.memory_used_bytes as f64, MAX_BYTES),
        clean(h.swap_used_bytes as f64, MAX_BYTES),
        rx,
        tx,
        dr,
        dw,
        dri,
        dwi,
        clean_opt(storage_free, MAX_BYTES),
        clean(h.memory_total_bytes as f64, MAX_BYTES),
    ]
}

fn vm_values(vm: &lifeboat_proto::metrics::VmSample) -> Vec<Option<f64>> {
    let disks: Vec<&DiskRates> = vm
        .disks
        .iter()
        .take(MAX_DEVICES)
        .map(|d| &d.rates)
        .collect();
    let nics: Vec<&NetRates> = vm.nics.iter().take(MAX_DEVICES).map(|n| &n.rates).collect();
    let [dr, dw, dri, dwi] = disk_values(&DiskRates::sum(disks));
    let [rx, tx] = net_values(&NetRates::sum(nics));
    vec![
        clean_opt(vm.cpu_percent, 100.0),
        clean_opt(vm.memory_used_bytes.map(|b| b as f64), MAX_BYTES),
        dr,
        dw,
        dri,
        dwi,
        rx,
        tx,
        clean_opt(vm.balloon_bytes.map(|b| b as f64), MAX_BYTES),
    ]
}

fn truncated<T: Clone>(items: &[T]) -> Vec<T> {
    items.iter().take(MAX_DEVICES).cloned().collect()
}

impl Metrics {
    /// Loads the object index, the consolidation cursor and the settings.
    pub fn load(store: Store, now: u64) -> Result<Metrics, StoreError> {
        let mut state = State::default();
        for (key, record) in store.load::<ObjectRecord>(Table::MetricObjects)? {
            if let Some(object) = ObjectKey::from_index_key(&key) {
                state.index.insert(object, record);
            }
        }
        let mut settings = MetricsSettings::default();
        let mut cursor = None;
        for (key, value) in store.load::<serde_json::Value>(Table::Metrics)? {
            match key.as_str() {
                "settings" => settings = serde_json::from_value(value).unwrap_or_default(),
                "cursor" => cursor = serde_json::from_value(value).ok(),
                _ => {}
            }
        }
        // A new store consolidates from now on: there is nothing before.
        state.cursor = cursor.unwrap_or_else(|| Cursor {
            next: [1, 2, 3].map(|a| now / ARCHIVES[a].step),
        });
        Ok(Metrics {
            store,
            state: Mutex::new(state),
            settings: Mutex::new(settings),
            samples_in: AtomicU64::new(0),
            // What a stop left unwritten is lost: earlier minutes are final.
            written_before: AtomicU64::new(now / 60),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn settings(&self) -> MetricsSettings {
        *self.settings.lock().expect("metrics settings lock")
    }

    pub async fn set_settings(&self, settings: MetricsSettings) -> Result<(), StoreError> {
        self.store
            .commit(vec![Write::put(Table::Metrics, "settings", &settings)])
            .await?;
        *self.settings.lock().expect("metrics settings lock") = settings;
        Ok(())
    }

    pub fn status(&self) -> MetricsStatus {
        let objects = self.state.lock().expect("metrics lock").index.len();
        MetricsStatus {
            samples_in: self.samples_in.load(Ordering::Relaxed),
            objects,
            bytes_per_host: Layout::of(Kind::Host).object_bytes(),
            bytes_per_vm: Layout::of(Kind::Vm).object_bytes(),
        }
    }

    /// Adds one batch from host `host_id`; `owns` says whether a VM is that
    /// host's (an agent's figures count for its own VMs only).
    pub fn ingest(
        &self,
        host_id: &str,
        batch: &MetricBatch,
        owns: impl Fn(&str) -> bool,
        now: u64,
    ) {
        let mut state = self.state.lock().expect("metrics lock");
        let mut count = 0;
        let host = host_values(batch);
        count += host.iter().flatten().count();
        let detail = Detail::Host {
            mounts: truncated(&batch.host.mounts),
        };
        state.add(ObjectKey::host(host_id), host, detail, now);
        for vm in batch.vms.iter().take(MAX_VMS_PER_BATCH) {
            if !owns(&vm.uuid) {
                continue;
            }
            let values = vm_values(vm);
            count += values.iter().flatten().count();
            let detail = Detail::Vm {
                disks: truncated(&vm.disks),
                nics: truncated(&vm.nics),
            };
            state.add(ObjectKey::vm(&vm.uuid), values, detail, now);
        }
        self.samples_in.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Whether the object has archives (it reported at least once and its
    /// history has not expired).
    pub fn knows(&self, object: &ObjectKey) -> bool {
        self.state
            .lock()
            .expect("metrics lock")
            .index
            .contains_key(object)
    }

    /// The latest figures of an object, if recent.
    pub fn current(&self, object: &ObjectKey, now: u64) -> Option<Current> {
        let state = self.state.lock().expect("metrics lock");
        let live = state.live.get(object)?;
        (now.saturating_sub(live.current.at) <= STALE_AFTER_SECS).then(|| live.current.clone())
    }

    /// Calls `f` with every recent object of `kind` and its figures.
    pub fn with_current<R>(
        &self,
        kind: Kind,
        now: u64,
        f: impl FnOnce(&mut dyn Iterator<Item = (&str, &[Option<f64>])>) -> R,
    ) -> R {
        let state = self.state.lock().expect("metrics lock");
        let mut it = state
            .live
            .iter()
            .filter(|(k, l)| k.kind == kind && now.saturating_sub(l.current.at) <= STALE_AFTER_SECS)
            .map(|(k, l)| (k.id.as_str(), l.current.values.as_slice()));
        f(&mut it)
    }

    /// Writes finished rows, consolidates coarse slots that ended, and
    /// deletes the archives of objects gone for longer than the retention.
    pub async fn flush(&self, now: u64) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let (rows, index, cursor_before) = {
            let mut state = self.state.lock().expect("metrics lock");
            state.close_minutes(now / 60);
            let rows = std::mem::take(&mut state.pending);
            let dirty = std::mem::take(&mut state.index_dirty);
            let index: Vec<Write> = dirty
                .iter()
                .filter_map(|k| {
                    let r = state.index.get(k)?;
                    Some(Write::put(Table::MetricObjects, k.index_key(), r))
                })
                .collect();
            (rows, index, state.cursor)
        };
        let mut writes: Vec<Write> = rows
            .iter()
            .map(|(object, minute, row)| patch(object, 0, *minute, row))
            .collect();
        writes.extend(index);
        self.commit_chunked(writes).await?;
        self.written_before.fetch_max(now / 60, Ordering::AcqRel);

        let mut cursor = cursor_before;
        for a in 1..ARCHIVES.len() {
            let step = ARCHIVES[a].step;
            let ended = now.saturating_sub(CONSOLIDATION_GRACE_SECS) / step;
            let finer = &ARCHIVES[a - 1];
            // Slots the finer archive no longer holds cannot be computed.
            let oldest = (now / finer.step).saturating_sub(finer.min_rows) * finer.step / step;
            let next = &mut cursor.next[a - 1];
            *next = (*next).max(oldest);
            let mut done = 0;
            while *next < ended && done < MAX_SLOTS_PER_FLUSH {
                self.consolidate(a, *next).await?;
                *next += 1;
                done += 1;
            }
        }
        if cursor.next != cursor_before.next {
            self.store
                .commit(vec![Write::put(Table::Metrics, "cursor", &cursor)])
                .await?;
            self.state.lock().expect("metrics lock").cursor = cursor;
        }
        self.expire(now).await
    }

    async fn commit_chunked(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let chunk: Vec<Write> = writes.by_ref().take(OBJECTS_PER_COMMIT).collect();
            self.store.commit(chunk).await?;
        }
        Ok(())
    }

    /// Computes slot `slot` of coarse archive `a` from archive `a - 1` for
    /// every object that reported during it.
    async fn consolidate(&self, a: usize, slot: u64) -> Result<(), StoreError> {
        let (start, end) = (slot * ARCHIVES[a].step, (slot + 1) * ARCHIVES[a].step);
        let objects = self.objects_between(start, end);
        let finer_step = ARCHIVES[a - 1].step;
        let (first, last) = (start / finer_step, end / finer_step - 1);
        for chunk in objects.chunks(OBJECTS_PER_COMMIT) {
            let store = self.store.clone();
            let chunk = chunk.to_vec();
            let writes = tokio::task::spawn_blocking(move || -> Result<Vec<Write>, StoreError> {
                let mut writes = Vec::new();
                for object in chunk {
                    let rows = read_rows(&store, &object, a - 1, first, last)?;
                    if let Some(row) = consolidate_rows(object.kind, &rows) {
                        writes.push(patch(&object, a, slot, &row));
                    }
                }
                Ok(writes)
            })
            .await
            .map_err(|e| StoreError::CommitFailed(format!("consolidation task: {e}")))??;
            self.store.commit(writes).await?;
        }
        Ok(())
    }

    async fn expire(&self, now: u64) -> Result<(), StoreError> {
        let gone: Vec<ObjectKey> = {
            let state = self.state.lock().expect("metrics lock");
            state
                .index
                .iter()
                .filter(|(k, r)| {
                    r.last_seen + RETENTION_AFTER_LAST_SAMPLE_SECS < now
                        && !state.live.contains_key(*k)
                })
                .map(|(k, _)| k.clone())
                .take(100)
                .collect()
        };
        for object in gone {
            let store = self.store.clone();
            let prefix = format!("{}/{}/", object.kind.as_str(), object.id);
            let keys = tokio::task::spawn_blocking(move || store.block_keys(&prefix))
                .await
                .map_err(|e| StoreError::CommitFailed(format!("expiry task: {e}")))??;
            let mut writes: Vec<Write> = keys
                .into_iter()
                .map(|key| Write::DeleteBlock { key })
                .collect();
            writes.push(Write::delete(Table::MetricObjects, object.index_key()));
            self.store.commit(writes).await?;
            self.state
                .lock()
                .expect("metrics lock")
                .index
                .remove(&object);
        }
        Ok(())
    }

    /// The first minute (absolute) that may still change: every row of
    /// the minute archive before it is final.
    pub fn written_before(&self) -> u64 {
        self.written_before.load(Ordering::Acquire)
    }

    /// Objects that may have rows in `[start, end)` (UNIX seconds).
    pub fn objects_between(&self, start: u64, end: u64) -> Vec<ObjectKey> {
        let state = self.state.lock().expect("metrics lock");
        state
            .index
            .iter()
            // `last_seen` lags by up to the refresh interval.
            .filter(|(_, r)| r.last_seen + INDEX_REFRESH_SECS >= start && r.first_seen < end)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The stored rows of archive `a` covering `[start, end)`. Blocking.
    pub fn rows_between(
        &self,
        object: &ObjectKey,
        a: usize,
        start: u64,
        end: u64,
    ) -> Result<SeriesSet, StoreError> {
        let step = ARCHIVES[a].step;
        let (first, last) = (start / step, end.saturating_sub(1) / step);
        Ok(SeriesSet {
            kind: object.kind,
            step,
            start: first * step,
            rows: read_rows(&self.store, object, a, first, last)?,
        })
    }

    /// The rows of `timeframe` ending now, the current minute included.
    /// Blocking (reads the store).
    pub fn series(
        &self,
        object: &ObjectKey,
        timeframe: Timeframe,
        now: u64,
    ) -> Result<SeriesSet, StoreError> {
        let (a, count) = timeframe.span();
        let step = ARCHIVES[a].step;
        // The minute archive ends with the minute being added up; a coarse
        // one with its last consolidated slot.
        let (last, partial) = {
            let state = self.state.lock().expect("metrics lock");
            if a == 0 {
                let partial = state
                    .live
                    .get(object)
                    .filter(|l| l.minute == now / 60)
                    .map(Live::partial_row);
                (now / 60, partial)
            } else {
                (state.cursor.next[a - 1].saturating_sub(1), None)
            }
        };
        let first = (last + 1).saturating_sub(count);
        let mut rows = read_rows(&self.store, object, a, first, last)?;
        if let (Some(p), Some(slot)) = (partial, rows.last_mut()) {
            *slot = p;
        }
        Ok(SeriesSet {
            kind: object.kind,
            step,
            start: first * step,
            rows,
        })
    }
}

impl State {
    fn add(&mut self, object: ObjectKey, values: Vec<Option<f64>>, detail: Detail, now: u64) {
        let minute = now / 60;
        let archived = object.kind.archived();
        match self.index.get_mut(&object) {
            Some(r) if r.last_seen + INDEX_REFRESH_SECS > now => {}
            Some(r) => {
                r.last_seen = now;
                self.index_dirty.push(object.clone());
            }
            None => {
                self.index.insert(
                    object.clone(),
                    ObjectRecord {
                        first_seen: now,
                        last_seen: now,
                    },
                );
                self.index_dirty.push(object.clone());
            }
        }
        let live = self.live.entry(object.clone()).or_insert_with(|| Live {
            minute,
            sums: vec![Accumulator::default(); archived],
            current: Current {
                at: now,
                values: Vec::new(),
                detail: Detail::None,
            },
        });
        if live.minute != minute {
            if let Some(row) = live.finished_row() {
                self.pending.push((object, live.minute, row));
            }
            live.minute = minute;
        }
        for (acc, v) in live.sums.iter_mut().zip(&values) {
            if let Some(v) = *v {
                acc.sum += v;
                acc.max = if acc.count == 0 { v } else { acc.max.max(v) };
                acc.count += 1;
            }
        }
        live.current = Current {
            at: now,
            values,
            detail,
        };
    }

    /// Finishes the rows of objects that stopped reporting in an earlier minute.
    fn close_minutes(&mut self, minute: u64) {
        for (object, live) in &mut self.live {
            if live.minute < minute {
                if let Some(row) = live.finished_row() {
                    self.pending.push((object.clone(), live.minute, row));
                }
                live.minute = minute;
            }
        }
    }
}

/// The write that puts `row` into slot `slot` of archive `a`.
fn patch(object: &ObjectKey, a: usize, slot: u64, row: &Row) -> Write {
    let layout = Layout::of(object.kind);
    let place = layout.place(a, slot);
    let bytes = archive::encode_row(object.kind, row);
    Write::Update {
        key: archive::block_key(object.kind, &object.id, a, place.block),
        update: Box::new(move |old| layout.write_row(a, old, &place, &bytes)),
    }
}

/// Rows `first..=last` of archive `a`, reading each block once.
fn read_rows(
    store: &Store,
    object: &ObjectKey,
    a: usize,
    first: u64,
    last: u64,
) -> Result<Vec<Row>, StoreError> {
    let layout = Layout::of(object.kind);
    let empty: Row = vec![None; object.kind.archived()];
    if last < first {
        return Ok(Vec::new());
    }
    // Never more than one ring's worth: older slots are overwritten.
    let first = first.max((last + 1).saturating_sub(layout.rows(a)));
    let places: Vec<_> = (first..=last).map(|s| layout.place(a, s)).collect();
    let mut generations: Vec<u64> = places.iter().map(|p| p.generation).collect();
    generations.dedup();
    let keys: Vec<String> = generations
        .iter()
        .map(|g| archive::block_key(object.kind, &object.id, a, g % layout.blocks[a]))
        .collect();
    let blocks: HashMap<u64, Option<Vec<u8>>> = generations
        .into_iter()
        .zip(store.read_blocks(&keys)?)
        .collect();
    Ok(places
        .iter()
        .map(|p| {
            let block = blocks.get(&p.generation).and_then(|b| b.as_deref());
            layout
                .row_at(a, block, p)
                .map(|bytes| archive::decode_row(object.kind, bytes))
                .unwrap_or_else(|| empty.clone())
        })
        .collect())
}

/// A coarse row from finer ones: the mean of their averages and the
/// largest maximum, per metric; `None` if no finer row had data.
fn consolidate_rows(kind: Kind, rows: &[Row]) -> Option<Row> {
    let row: Row = (0..kind.archived())
        .map(|i| {
            let cells: Vec<(f64, f64)> = rows.iter().filter_map(|r| r[i]).collect();
            (!cells.is_empty()).then(|| {
                let avg = cells.iter().map(|c| c.0).sum::<f64>() / cells.len() as f64;
                let max = cells.iter().map(|c| c.1).fold(f64::MIN, f64::max);
                (avg, max)
            })
        })
        .collect();
    row.iter().any(Option::is_some).then_some(row)
}

#[cfg(test)]
mod tests;
