//! The gateway's lifecycle: recovery at start, replay of the log,
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
//! the feed order (no authority batch half-applied), every record up to it
//! is in memory before the snapshot reads the store, and the file is renamed
//! into place only once everything it may contain is durable in the log.

use super::{Durable, Gateway};
use crate::durability::indexer::{visit_of, Indexer, LogMetrics, INDEX_BATCH};
use crate::durability::state_file::{self, Meta, SnapshotError};
use crate::durability::visits::{VisitError, VisitIndex};
use crate::durability::wal::storage::{FsStorage, Storage};
use crate::durability::wal::{self, RecoveryError, Wal};
use crate::operations::config::Config;
use crate::UnixSecs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a tracing query waits for the index to reach what was durable
/// when it arrived, before it answers 503.
pub const INDEX_WAIT: Duration = Duration::from_secs(2);

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
        self.add_revocations(&meta.revocations, now, self.live().revocation_filter);
        self.set_feed_seq_at_least(meta.feed_seq);

        let (index, indexed_lsn) = self.open_index(&log.dir.join("visits.redb"))?;
        let mut storage: Box<dyn Storage> = match storage {
            Some(s) => s,
            None => Box::new(
                FsStorage::with_preallocation(&log.dir.join("wal"), log.wal.segment_bytes).map_err(io(&log.dir))?,
            ),
        };
        // The log must continue the snapshot: its first segment starts at
        // or before the first record the snapshot lacks. (The index may be
        // further behind: retention removed what it could no longer get.)
        if let Some((first, name)) = wal::segments(&*storage)?.into_iter().next() {
            if first > meta.lsn + 1 {
                return Err(RecoveryError::Missing {
                    from: meta.lsn + 1,
                    to: first - 1,
                    why: format!(
                        "the snapshot covers the log up to LSN {} but its first segment, {name}, starts at LSN {first}",
                        meta.lsn
                    ),
                }
                .into());
            }
        }
        let mut visits = Vec::new();
        let mut index_err = None;
        let recovered = wal::recover(&mut *storage, meta.lsn.min(indexed_lsn) + 1, |rec| {
            if rec.lsn > meta.lsn {
                self.replay(rec);
                report.replayed += 1;
            }
            if rec.lsn > indexed_lsn {
                if let Some(v) = visit_of(rec) {
                    visits.push(v);
                    if visits.len() >= INDEX_BATCH {
                        report.indexed += visits.len() as u64;
                        // After a failure insert nothing more (see the indexer).
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
        // The log must reach everything the snapshot and the index have
        // seen: both saw only durable records, so a shorter log lost some.
        let end = recovered.next_lsn - 1;
        for (seen, by) in [(meta.lsn, "the snapshot"), (indexed_lsn, "the tracing index")] {
            if end < seen {
                return Err(RecoveryError::Missing {
                    from: end + 1,
                    to: seen,
                    why: format!("{by} has seen LSN {seen} but the log in {} ends at LSN {end}", log.dir.display()),
                }
                .into());
            }
        }
        let m = self.metrics();
        let log_metrics = LogMetrics {
            batch_records: m.log_batch_records.clone(),
            fsync_seconds: m.log_fsync_seconds.clone(),
            commit_wait_seconds: m.log_commit_wait_seconds.clone(),
        };
        let reader = storage.reader().map_err(io(&log.dir))?;
        let (indexer, feeder) =
            Indexer::start(index, recovered.next_lsn - 1, reader, log_metrics).map_err(io(&log.dir))?;
        self.durable_tx.send_replace(recovered.next_lsn - 1);
        let observer = super::replica::Tee { inner: feeder, durable: self.durable_tx.clone() };
        let wal = Wal::start(storage, log.wal.clone(), &recovered, observer);
        let _ = self.wal.set(wal);
        let _ = self.durable.set(Durable {
            settings: log.clone(),
            indexer,
            snapshot_lsn: AtomicU64::new(meta.lsn),
            snapshot_writer: std::sync::Mutex::new(()),
        });
        report.elapsed = started.elapsed();
        m.recovery_seconds.set(report.elapsed.as_secs_f64());
        m.recovery_replayed.set(report.replayed as i64);
        Ok(report)
    }

    /// Opens the tracing index and reads its high-water mark. A damaged
    /// index (it fails to open, to pass its checksums, or to be read) is set
    /// aside as `visits.redb.damaged-<unix time>` with a warning and a new,
    /// empty one is opened: recovery fills it from the log.
    fn open_index(&self, path: &Path) -> Result<(Arc<VisitIndex>, u64), PersistError> {
        let attempt = || {
            // A damaged file must not take the process down: redb may panic
            // on some damage its checksums do not cover.
            std::panic::catch_unwind(|| VisitIndex::open(path).and_then(|i| Ok((i.indexed_lsn()?, i))))
                .unwrap_or(Err(VisitError::Corrupt("the index panicked while opening")))
        };
        match attempt() {
            Ok((lsn, index)) => Ok((Arc::new(index), lsn)),
            Err(e) => {
                let aside = path.with_extension(format!("redb.damaged-{}", self.now()));
                std::fs::rename(path, &aside).map_err(|source| PersistError::Io { path: path.to_owned(), source })?;
                tracing::warn!(
                    error = %e, index = %path.display(), moved_to = %aside.display(),
                    "the tracing index is damaged: set aside, rebuilding it from the log"
                );
                self.metrics().index_rebuilds.inc();
                let index = VisitIndex::open(path)?;
                let lsn = index.indexed_lsn()?;
                Ok((Arc::new(index), lsn))
            }
        }
    }

    /// Writes a snapshot of the whole state into the data directory.
    /// Returns the LSN it covers. Blocking.
    pub fn write_snapshot(&self) -> Result<u64, PersistError> {
        let (Some(wal), Some(d)) = (self.wal.get(), self.durable.get()) else { return Ok(0) };
        // One writer at a time: two would write the same temporary file.
        let _writer = d.snapshot_writer.lock().unwrap_or_else(|e| e.into_inner());
        // A replica's stream positions, read before anything else: every
        // message up to them is in the store the snapshot reads.
        let positions = self.replica.get().map(|r| r.capture());
        let meta = {
            let _order = self.feed.read_order();
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
        if let (Some(r), Some(p)) = (self.replica.get(), positions) {
            r.snapshot_written(p);
        }
        Ok(meta.lsn)
    }

    /// Deletes registrations older than the retention horizon: from the
    /// tracing index, and log segments that hold nothing newer and that the
    /// last snapshot no longer needs. Blocking; never holds a lock scans use.
    pub fn purge(&self, now: UnixSecs) -> Result<(u64, u64), PersistError> {
        let Some(d) = self.durable.get() else { return Ok((0, 0)) };
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

    /// Waits (bounded, on the indexed-position watch) until every scan that
    /// was durable when the query arrived is in the tracing index, so that a
    /// query sees the scans acknowledged before it. `Err(behind)` when the
    /// index is still that many records short after [`INDEX_WAIT`]: the
    /// query must not answer short.
    pub async fn index_caught_up(&self) -> Result<(), u64> {
        let (Some(wal), Some(d)) = (self.wal.get(), self.durable.get()) else { return Ok(()) };
        let target = wal.durable_lsn();
        let mut watch = d.indexer.watch();
        let reached = tokio::time::timeout(INDEX_WAIT, watch.wait_for(|l| *l >= target)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(target.saturating_sub(d.indexer.indexed_lsn()).max(1)),
        }
    }

    /// Test seam: holds the tracing indexer (see
    /// [`crate::durability::indexer::Indexer::hold`]) so that a test can
    /// put the index behind the log; `None` when logging is off. Not
    /// reachable from the network.
    #[doc(hidden)]
    pub fn hold_indexing(&self) -> Option<crate::durability::indexer::IndexHold> {
        Some(self.durable.get()?.indexer.hold())
    }

    /// The log's and the index's gauges, read at scrape time.
    pub(crate) fn refresh_durability_gauges(&self) {
        let m = self.metrics();
        let Some(wal) = self.wal.get() else { return };
        m.log_failed.set(i64::from(wal.is_failed()));
        if let Some(d) = self.durable.get() {
            let lag = wal.durable_lsn().saturating_sub(d.indexer.indexed_lsn());
            m.index_lag_records.set(i64::try_from(lag).unwrap_or(i64::MAX));
            m.index_failed.set(i64::from(d.indexer.has_failed()));
        }
    }

    /// The tracing index, unless logging is off or the indexer failed.
    pub fn visit_index(&self) -> Option<Arc<VisitIndex>> {
        self.durable.get()?.indexer.index()
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
        if let Some(d) = self.durable.get() {
            d.indexer.close();
        }
    }
}
