//! Durability around the gateway: recovery at start, replay of the log,
//! periodic snapshots, the tracing index feed, and retention.
//!
//! On start ([`Gateway::recover`]): load the latest snapshot (or the seeded
//! population), replay the log after the snapshot's LSN, bring the tracing
//! index up to the log's end, then start the log writer. `/readyz` is 503
//! until this returns.
//!
//! Snapshots are fuzzy and that is fine: every log record carries absolute
//! effects, so replaying records the snapshot already reflects changes
//! nothing. What matters is the LSN a snapshot names: it is read under
//! `colour_order` (no authority batch half-applied), every record up to it
//! is in memory before the snapshot reads the store, and the file is renamed
//! into place only once everything it may contain is durable in the log.

use crate::clock::UnixSecs;
use crate::config::{Config, LogSettings};
use crate::holder::HolderId;
use crate::policy::Passback;
use crate::service::Gateway;
use crate::state::snapshot::{self as state_file, Meta, SnapshotError};
use crate::state::Update;
use crate::visits::{Visit, VisitError, VisitIndex};
use crate::wal::record::{Body, Record, StateEffect};
use crate::wal::storage::{FsStorage, Storage};
use crate::wal::{self, Observer, RecoveryError, Wal};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Log(#[from] RecoveryError),
    #[error("{0}")]
    Index(#[from] VisitError),
    #[error("data directory {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("the log failed; no snapshot")]
    LogFailed,
}

/// What recovery did, for the log line and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub holders: u64,
    pub snapshot_lsn: u64,
    pub replayed: u64,
    pub indexed: u64,
    pub truncated_bytes: u64,
    pub elapsed: Duration,
}

/// The durability pieces a gateway with logging on holds.
pub struct Durability {
    pub settings: LogSettings,
    /// Emptied at shutdown so that the database is closed with the gateway.
    index: std::sync::Mutex<Option<Arc<VisitIndex>>>,
    indexer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The indexer hit an error and stopped; queries answer 503 until a
    /// restart re-indexes from the log.
    pub index_failed: Arc<AtomicBool>,
    /// Highest LSN whose visit is in the index.
    pub indexed: Arc<AtomicU64>,
    /// LSN named by the last snapshot written (segments up to it are no
    /// longer needed for recovery).
    pub snapshot_lsn: AtomicU64,
}

/// The visit a log record registers, if it is a scan of a known holder.
pub fn visit_of(rec: &Record) -> Option<Visit> {
    match &rec.body {
        Body::Scan(s) => Some(Visit {
            lsn: rec.lsn,
            at: rec.at,
            holder: s.holder?,
            checkpoint: s.checkpoint.clone(),
            direction: s.direction,
            temperature_c: s.temperature_c,
            pass: s.pass,
            reason: s.reason,
        }),
        _ => None,
    }
}

/// Feeds durable records to the index thread and batch statistics to the
/// metrics. Runs on the log writer's thread.
struct Feeder {
    /// The last LSN of each durable batch, with its visits (possibly none:
    /// the indexer still learns how far the log has gone).
    tx: SyncSender<(u64, Vec<Visit>)>,
    metrics: LogMetrics,
}

#[derive(Clone)]
struct LogMetrics {
    batch_records: prometheus::Histogram,
    fsync_seconds: prometheus::Histogram,
}

impl Observer for Feeder {
    fn durable(&mut self, records: &[Record]) {
        let visits: Vec<Visit> = records.iter().filter_map(visit_of).collect();
        let last = records.last().map_or(0, |r| r.lsn);
        // Blocking when the indexer is far behind: backpressure on the log
        // rather than an index that silently misses visits.
        let _ = self.tx.send((last, visits));
    }
    fn batch(&mut self, records: usize, fsync: Duration) {
        self.metrics.batch_records.observe(records as f64);
        self.metrics.fsync_seconds.observe(fsync.as_secs_f64());
    }
}

fn index_loop(
    index: Arc<VisitIndex>,
    indexed: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    rx: Receiver<(u64, Vec<Visit>)>,
) {
    while let Ok((mut last, mut batch)) = rx.recv() {
        while let Ok((l, more)) = rx.try_recv() {
            last = l;
            batch.extend(more);
            if batch.len() >= 50_000 {
                break;
            }
        }
        if let Err(e) = index.insert(&batch) {
            // Stop inserting: a later successful batch would move the
            // high-water mark past this one and its visits would never be
            // indexed. The log keeps them; the next start re-indexes from the
            // index's high-water mark. Keep draining so the log never waits.
            tracing::error!(error = %e, "tracing index insert failed; indexing stops until the next start, which catches up from the log");
            failed.store(true, Ordering::Release);
            while rx.recv().is_ok() {}
            return;
        }
        indexed.store(last, Ordering::Release);
    }
}

impl Gateway {
    /// Loads state and replays the log; starts the log writer and the
    /// indexer. Blocking: run it off the async runtime.
    pub fn recover(&self, config: &Config) -> Result<RecoveryReport, PersistError> {
        self.recover_with(config, None)
    }

    /// [`Gateway::recover`] with the log on the given storage instead of
    /// `DIR/wal` (tests put a faulty disk there).
    pub fn recover_with(
        &self,
        config: &Config,
        storage: Option<Box<dyn Storage>>,
    ) -> Result<RecoveryReport, PersistError> {
        let started = Instant::now();
        let mut report = RecoveryReport::default();
        let Some(log) = &config.log else {
            if let Some(p) = &config.state_path {
                report.holders = state_file::load(p, self.store())?.holders;
            }
            report.elapsed = started.elapsed();
            return Ok(report);
        };
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PersistError::Io { path, source }
        };
        std::fs::create_dir_all(&log.dir).map_err(io(&log.dir))?;
        let snapshot = log.dir.join("state.hgs");
        let meta = if snapshot.exists() {
            let l = state_file::load(&snapshot, self.store())?;
            report.holders = l.holders;
            l.meta
        } else if let Some(p) = &config.state_path {
            let l = state_file::load(p, self.store())?;
            report.holders = l.holders;
            l.meta
        } else {
            Meta::default()
        };
        report.snapshot_lsn = meta.lsn;
        let now = self.now();
        self.add_revocations(&meta.revocations, now, self.snapshot().revocation_filter);
        self.set_feed_seq_at_least(meta.feed_seq);

        let index = Arc::new(VisitIndex::open(&log.dir.join("visits.redb"))?);
        let indexed_lsn = index.indexed_lsn()?;
        let mut storage: Box<dyn Storage> = match storage {
            Some(s) => s,
            None => Box::new(FsStorage::open(&log.dir.join("wal")).map_err(io(&log.dir))?),
        };
        let mut visits = Vec::new();
        let mut index_err = None;
        let mut recovered = wal::recover(&mut *storage, meta.lsn.min(indexed_lsn) + 1, |rec| {
            if rec.lsn > meta.lsn {
                self.replay(rec);
                report.replayed += 1;
            }
            if rec.lsn > indexed_lsn {
                if let Some(v) = visit_of(rec) {
                    visits.push(v);
                    if visits.len() >= 50_000 {
                        report.indexed += visits.len() as u64;
                        // After a failure insert nothing more (see index_loop).
                        if index_err.is_none() {
                            if let Err(e) = index.insert(&visits) {
                                index_err = Some(e);
                            }
                        }
                        visits.clear();
                    }
                }
            }
        })?;
        if let Some(e) = index_err {
            return Err(e.into());
        }
        report.indexed += visits.len() as u64;
        index.insert(&visits)?;
        report.truncated_bytes = recovered.truncated_bytes;
        if recovered.next_lsn <= meta.lsn {
            // The snapshot is ahead of the log (the log was removed): go on
            // after the snapshot in a new segment.
            recovered.next_lsn = meta.lsn + 1;
            recovered.tail = None;
        }
        let indexed = Arc::new(AtomicU64::new(recovered.next_lsn - 1));
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let index_failed = Arc::new(AtomicBool::new(false));
        let indexer = {
            let (index, indexed, failed) = (index.clone(), indexed.clone(), index_failed.clone());
            std::thread::Builder::new()
                .name("healthgate-index".into())
                .spawn(move || {
                    // Off the acknowledgement path: yield the CPU to scans.
                    wal::set_thread_nice(10);
                    index_loop(index, indexed, failed, rx)
                })
                .map_err(io(&log.dir))?
        };
        let m = self.metrics();
        let feeder = Feeder {
            tx,
            metrics: LogMetrics {
                batch_records: m.log_batch_records.clone(),
                fsync_seconds: m.log_fsync_seconds.clone(),
            },
        };
        let wal = Wal::start(storage, log.wal.clone(), &recovered, feeder);
        let _ = self.wal.set(wal);
        let _ = self.durability.set(Durability {
            settings: log.clone(),
            index: std::sync::Mutex::new(Some(index)),
            index_failed,
            indexer: std::sync::Mutex::new(Some(indexer)),
            indexed,
            snapshot_lsn: AtomicU64::new(meta.lsn),
        });
        report.elapsed = started.elapsed();
        m.recovery_seconds.set(report.elapsed.as_secs_f64());
        m.recovery_replayed.set(report.replayed as i64);
        Ok(report)
    }

    /// Applies one log record's effects (recovery).
    pub(crate) fn replay(&self, rec: &Record) {
        match &rec.body {
            Body::Scan(s) => {
                if let (Some(h), false) = (s.holder, s.effect.is_empty()) {
                    self.replay_effect(h, rec.at, &s.effect, None);
                }
            }
            Body::Updates { seq, changes } => {
                self.store().apply_changes(changes, rec.at);
                self.set_feed_seq_at_least(*seq);
                self.metrics().feed_last_batch_time.set(i64::try_from(rec.at).unwrap_or(i64::MAX));
            }
            Body::Revocations { seq, entries } => {
                self.add_revocations(entries, rec.at, self.snapshot().revocation_filter);
                self.set_feed_seq_at_least(*seq);
                self.metrics().feed_last_batch_time.set(i64::try_from(rec.at).unwrap_or(i64::MAX));
            }
            Body::Checkin { holder, day, effect, .. } => self.replay_effect(*holder, rec.at, effect, Some(*day)),
        }
    }

    fn replay_effect(&self, h: HolderId, at: UnixSecs, e: &StateEffect, day: Option<u16>) {
        self.store().update(&h, at, |entry| {
            let Some((_, st)) = entry else { return Update::Abort(()) };
            if e.health {
                st.set_health_at(at);
            }
            match e.passback {
                Passback::None => {}
                Passback::Enter(g) => st.enter(g, at),
                Passback::Exit => st.exit(),
            }
            if let Some(d) = day {
                st.set_checkin_day(d);
            }
            Update::Commit((), e.color.clone())
        });
    }

    /// Writes a snapshot of the whole state into the data directory.
    /// Returns the LSN it covers. Blocking.
    pub fn write_snapshot(&self) -> Result<u64, PersistError> {
        let (Some(wal), Some(d)) = (self.wal.get(), self.durability.get()) else { return Ok(0) };
        let meta = {
            let _order = self.colour_order.read().unwrap_or_else(|e| e.into_inner());
            Meta {
                lsn: wal.assigned_lsn(),
                feed_seq: self.last_feed_seq(),
                revocations: self.revocations().entries().collect(),
            }
        };
        let path = d.settings.dir.join("state.hgs");
        let result = state_file::write_store(&path, self.store(), &meta, || {
            // Everything the file may hold was logged by now; wait for it to
            // be durable, or give up if the log has failed.
            wal.flush_blocking(Duration::from_secs(30))
                .map_err(|_| SnapshotError::Corrupt { path: path.clone(), what: "log not durable; snapshot abandoned" })
        });
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics().snapshots.with_label_values(&[label]).inc();
        result?;
        d.snapshot_lsn.store(meta.lsn, Ordering::Release);
        Ok(meta.lsn)
    }

    /// Deletes registrations older than the retention horizon: from the
    /// tracing index, and log segments that hold nothing newer and that the
    /// last snapshot no longer needs. Blocking; never holds a lock scans use.
    pub fn purge(&self, now: UnixSecs) -> Result<(u64, u64), PersistError> {
        let Some(d) = self.durability.get() else { return Ok((0, 0)) };
        let horizon = now.saturating_sub(d.settings.retention.as_secs());
        let Some(index) = self.visit_index() else { return Ok((0, 0)) };
        let visits = index.purge_before(horizon)?;
        let wal_dir = d.settings.dir.join("wal");
        let mut storage =
            FsStorage::open(&wal_dir).map_err(|source| PersistError::Io { path: wal_dir.clone(), source })?;
        let segments: Vec<(u64, String)> = storage
            .list()
            .map_err(|source| PersistError::Io { path: wal_dir.clone(), source })?
            .into_iter()
            .filter_map(|n| Some((n.strip_suffix(".log")?.parse().ok()?, n)))
            .collect();
        // A segment may go only once both the snapshot and the index's last
        // durable commit are past it (the index re-reads the log after a crash).
        let covered = d.snapshot_lsn.load(Ordering::Acquire).min(index.durable_lsn());
        let mut removed = 0;
        for pair in segments.windows(2) {
            let ((_, name), (next_first, next_name)) = (&pair[0], &pair[1]);
            // Everything in `name` is before `next_first`; the snapshot must
            // cover it, and the next segment must start before the horizon
            // (records are appended in clock order).
            if next_first - 1 > covered {
                break;
            }
            let head = storage.read_head(next_name, 64 << 10).unwrap_or_default();
            let first_at = wal::first_record_time(&head);
            if first_at.is_none_or(|t| t >= horizon) {
                break;
            }
            storage.remove(name).map_err(|source| PersistError::Io { path: wal_dir.join(name), source })?;
            removed += 1;
        }
        let m = self.metrics();
        m.retention_purged_visits.inc_by(visits);
        m.retention_purged_segments.inc_by(removed);
        Ok((visits, removed))
    }

    /// Waits (bounded) until every durable scan is in the tracing index, so
    /// a query sees the scans acknowledged before it.
    pub async fn index_caught_up(&self) {
        let (Some(wal), Some(d)) = (self.wal.get(), self.durability.get()) else { return };
        let target = wal.durable_lsn();
        for _ in 0..2000 {
            if d.indexed.load(Ordering::Acquire) >= target || d.index_failed.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The log's and the index's gauges, read at scrape time.
    pub(crate) fn refresh_durability_gauges(&self) {
        let m = self.metrics();
        let Some(wal) = self.wal.get() else { return };
        m.log_failed.set(i64::from(wal.is_failed()));
        if let Some(d) = self.durability.get() {
            let lag = wal.durable_lsn().saturating_sub(d.indexed.load(Ordering::Acquire));
            m.index_lag_records.set(i64::try_from(lag).unwrap_or(i64::MAX));
            m.index_failed.set(i64::from(d.index_failed.load(Ordering::Acquire)));
        }
    }

    /// The tracing index, unless logging is off or the indexer failed.
    pub fn visit_index(&self) -> Option<Arc<VisitIndex>> {
        let d = self.durability.get()?;
        if d.index_failed.load(Ordering::Acquire) {
            return None;
        }
        d.index.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Final snapshot and log close at shutdown.
    pub fn close_log(&self) {
        if self.wal.get().is_some_and(|w| !w.is_failed()) {
            if let Err(e) = self.write_snapshot() {
                tracing::warn!(error = %e, "final snapshot failed; the log has everything");
            }
        }
        self.stop_log_without_snapshot();
    }

    /// Closes the log and the index without writing a snapshot (as a crash
    /// would leave them, less the lost page cache): benchmarks of recovery.
    pub fn stop_log_without_snapshot(&self) {
        if let Some(w) = self.wal.get() {
            w.close();
        }
        // The writer is gone, so the indexer's queue is closed: let it
        // finish, then close the database.
        if let Some(d) = self.durability.get() {
            if let Some(h) = d.indexer.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = h.join();
            }
            d.index.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}
