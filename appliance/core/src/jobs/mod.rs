//! Jobs: every long or remote action (a power operation now; backups later)
//! is a job with a state, progress and error text that the console and API
//! show. Job records are persisted at every state change.
//!
//! A job still queued or running when the controller stopped is marked failed
//! on the next start: its outcome is unknown, and saying so is honest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::alerts::{Event, EventKind, Sink, Subject};
use crate::clock::unix_now;
use crate::store::{Store, StoreError, Table, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    /// `power`, later `backup`, `restore`, ...
    pub kind: String,
    /// Human summary, e.g. `shutdown web01`.
    pub description: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub user: String,
    pub state: JobState,
    pub percent: u8,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub error: Option<String>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}

impl Job {
    /// Bytes per second since the job started, when it moves bytes.
    pub fn rate(&self) -> Option<u64> {
        let started = self.started_at?;
        let end = self.finished_at.unwrap_or_else(unix_now);
        (self.bytes_done > 0).then(|| self.bytes_done / end.saturating_sub(started).max(1))
    }

    /// Seconds left at the current rate.
    pub fn eta_secs(&self) -> Option<u64> {
        if self.state.is_finished() {
            return None;
        }
        let rate = self.rate()?.max(1);
        Some(self.bytes_total.saturating_sub(self.bytes_done) / rate)
    }
}

fn key(id: u64) -> String {
    // Zero-padded so the store's string order is job order.
    format!("{id:020}")
}

pub struct Jobs {
    sink: Sink,
    store: Store,
    next_id: AtomicU64,
    jobs: RwLock<BTreeMap<u64, Job>>,
}

/// What a new job is about.
pub struct NewJob {
    pub kind: &'static str,
    pub description: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub user: String,
}

/// The event a finished job raises, if its kind has one.
fn outcome_event(job: &Job, result: &Result<(), String>) -> Option<Event> {
    use EventKind::*;
    let kind = match (job.kind.as_str(), result.is_ok()) {
        ("backup", true) => BackupSucceeded,
        ("backup", false) => BackupFailed,
        ("restore", true) => RestoreSucceeded,
        ("restore", false) => RestoreFailed,
        ("verify", true) => VerifySucceeded,
        ("verify", false) => VerifyFailed,
        ("boot-verify", true) => BootVerifySucceeded,
        ("boot-verify", false) => BootVerifyFailed,
        _ => return None,
    };
    let subject = match &job.vm {
        Some(uuid) => Subject {
            kind: "vm".into(),
            id: uuid.clone(),
            name: String::new(),
            vm: Some(uuid.clone()),
        },
        None => Subject {
            kind: "job".into(),
            id: job.id.to_string(),
            name: job.description.clone(),
            vm: None,
        },
    };
    let message = match result {
        Ok(()) => format!("job {} succeeded: {}", job.id, job.description),
        Err(e) => format!("job {} failed: {}: {e}", job.id, job.description),
    };
    Some(Event::new(kind, subject, message))
}

impl Jobs {
    pub fn load(store: Store, sink: Sink) -> Result<Jobs, StoreError> {
        let mut jobs: BTreeMap<u64, Job> = store
            .load::<Job>(Table::Jobs)?
            .into_iter()
            .map(|(_, j)| (j.id, j))
            .collect();
        let mut writes = Vec::new();
        for job in jobs.values_mut().filter(|j| !j.state.is_finished()) {
            job.state = JobState::Failed;
            let error = "interrupted: the controller stopped while this job ran".to_string();
            if let Some(event) = outcome_event(job, &Err(error.clone())) {
                sink.raise(event);
            }
            job.error = Some(error);
            job.finished_at = Some(unix_now());
            writes.push(Write::put(Table::Jobs, key(job.id), &*job));
        }
        if !writes.is_empty() {
            store.commit_blocking(writes)?;
        }
        let next = jobs.keys().next_back().map_or(1, |k| k + 1);
        Ok(Jobs {
            sink,
            store,
            next_id: AtomicU64::new(next),
            jobs: RwLock::new(jobs),
        })
    }

    pub async fn create(&self, new: NewJob) -> Result<Job, StoreError> {
        let job = Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            kind: new.kind.to_string(),
            description: new.description,
            vm: new.vm,
            host: new.host,
            user: new.user,
            state: JobState::Queued,
            percent: 0,
            bytes_done: 0,
            bytes_total: 0,
            error: None,
            created_at: unix_now(),
            started_at: None,
            finished_at: None,
        };
        self.save(job.clone(), |jobs, j| {
            jobs.insert(j.id, j);
        })
        .await?;
        Ok(job)
    }

    async fn save(
        &self,
        job: Job,
        apply: impl FnOnce(&mut BTreeMap<u64, Job>, Job),
    ) -> Result<(), StoreError> {
        let ack = {
            let mut jobs = self.jobs.write().expect("jobs lock");
            let ack = self
                .store
                .enqueue(vec![Write::put(Table::Jobs, key(job.id), &job)])?;
            apply(&mut jobs, job);
            ack
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)
    }

    /// Applies `change` to a job and persists it.
    pub async fn update(&self, id: u64, change: impl FnOnce(&mut Job)) -> Result<(), StoreError> {
        let Some(mut job) = self.get(id) else {
            return Ok(());
        };
        change(&mut job);
        self.save(job, |jobs, j| {
            jobs.insert(j.id, j);
        })
        .await
    }

    pub async fn start(&self, id: u64) -> Result<(), StoreError> {
        self.update(id, |j| {
            j.state = JobState::Running;
            j.started_at = Some(unix_now());
        })
        .await
    }

    /// Ends a job; a backup, restore or verification reports its outcome
    /// as an event.
    pub async fn finish(&self, id: u64, result: Result<(), String>) -> Result<(), StoreError> {
        if let Some(job) = self.get(id) {
            if let Some(event) = outcome_event(&job, &result) {
                self.sink.raise(event);
            }
        }
        self.update(id, |j| {
            j.finished_at = Some(unix_now());
            match result {
                Ok(()) => {
                    j.state = JobState::Succeeded;
                    j.percent = 100;
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(e);
                }
            }
        })
        .await
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        self.jobs.read().expect("jobs lock").get(&id).cloned()
    }

    /// The newest job of `kind` for each VM, by VM UUID.
    pub fn latest_by_vm(&self, kind: &str) -> std::collections::HashMap<String, Job> {
        let jobs = self.jobs.read().expect("jobs lock");
        let mut latest = std::collections::HashMap::new();
        for j in jobs.values().filter(|j| j.kind == kind) {
            if let Some(vm) = &j.vm {
                latest.insert(vm.clone(), j.clone());
            }
        }
        latest
    }

    /// Newest first, those `keep` accepts, at most `limit`.
    pub fn recent(&self, limit: usize, keep: impl Fn(&Job) -> bool) -> Vec<Job> {
        self.jobs
            .read()
            .expect("jobs lock")
            .values()
            .rev()
            .filter(|j| keep(j))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_bytes() {
        let now = unix_now();
        let job = Job {
            id: 1,
            kind: "backup".into(),
            description: String::new(),
            vm: None,
            host: None,
            user: "u".into(),
            state: JobState::Running,
            percent: 50,
            bytes_done: 1000,
            bytes_total: 3000,
            error: None,
            created_at: now - 10,
            started_at: Some(now - 10),
            finished_at: None,
        };
        let rate = job.rate().unwrap();
        assert!((90..=100).contains(&rate), "{rate}");
        let eta = job.eta_secs().unwrap();
        assert!((19..=23).contains(&eta), "{eta}");
    }
}
