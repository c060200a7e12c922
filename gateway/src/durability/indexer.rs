//! The tracing index follows the log: the log writer hands each durable
//! batch's visits to the indexer thread, which inserts them into the
//! [`VisitIndex`] and moves the indexed position.
//!
//! An insert error stops indexing until the next start (which catches up
//! from the log), rather than skipping visits: a later successful batch
//! would move the high-water mark past the failed one and its visits would
//! never be indexed.

use crate::durability::visits::{Visit, VisitIndex};
use crate::durability::wal::record::{Event, Record};
use crate::durability::wal::{self, Observer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most visits inserted in one index transaction.
pub const INDEX_BATCH: usize = 50_000;

/// The visit a log record registers, if it is a scan of a known holder.
pub fn visit_of(rec: &Record) -> Option<Visit> {
    match &rec.event {
        Event::Scan(s) => Some(Visit {
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

/// The index and the thread that feeds it.
pub struct Indexer {
    /// Emptied at shutdown so that the database is closed with the gateway.
    index: Mutex<Option<Arc<VisitIndex>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The indexer hit an error and stopped; queries answer 503 until a
    /// restart re-indexes from the log.
    failed: Arc<AtomicBool>,
    /// Highest LSN whose visit is in the index.
    indexed: Arc<AtomicU64>,
}

/// Statistics the log writer reports per batch.
#[derive(Clone)]
pub struct LogMetrics {
    pub batch_records: prometheus::Histogram,
    pub fsync_seconds: prometheus::Histogram,
}

/// Feeds durable records to the index thread and batch statistics to the
/// metrics. Runs on the log writer's thread.
pub struct Feeder {
    /// The last LSN of each durable batch, with its visits (possibly none:
    /// the indexer still learns how far the log has gone).
    tx: SyncSender<(u64, Vec<Visit>)>,
    metrics: LogMetrics,
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

impl Indexer {
    /// Starts the indexer thread on `index`, which already holds every
    /// visit up to `indexed_lsn`; returns it with the log writer's feeder.
    pub fn start(index: Arc<VisitIndex>, indexed_lsn: u64, metrics: LogMetrics) -> std::io::Result<(Indexer, Feeder)> {
        let indexed = Arc::new(AtomicU64::new(indexed_lsn));
        let failed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let thread = {
            let (index, indexed, failed) = (index.clone(), indexed.clone(), failed.clone());
            std::thread::Builder::new().name("healthgate-index".into()).spawn(move || {
                // Off the acknowledgement path: yield the CPU to scans.
                wal::set_thread_nice(10);
                index_loop(&index, &indexed, &failed, rx)
            })?
        };
        let indexer = Indexer { index: Mutex::new(Some(index)), thread: Mutex::new(Some(thread)), failed, indexed };
        Ok((indexer, Feeder { tx, metrics }))
    }

    /// The index, unless the indexer failed or was closed.
    pub fn index(&self) -> Option<Arc<VisitIndex>> {
        if self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.index.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn indexed_lsn(&self) -> u64 {
        self.indexed.load(Ordering::Acquire)
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Waits for the thread (its queue closes with the log writer), then
    /// closes the database.
    pub fn close(&self) {
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        self.index.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn index_loop(index: &VisitIndex, indexed: &AtomicU64, failed: &AtomicBool, rx: Receiver<(u64, Vec<Visit>)>) {
    while let Ok((mut last, mut batch)) = rx.recv() {
        while let Ok((l, more)) = rx.try_recv() {
            last = l;
            batch.extend(more);
            if batch.len() >= INDEX_BATCH {
                break;
            }
        }
        if let Err(e) = index.insert(&batch) {
            tracing::error!(error = %e, "tracing index insert failed; indexing stops until the next start, which catches up from the log");
            failed.store(true, Ordering::Release);
            // Keep draining so the log never waits.
            while rx.recv().is_ok() {}
            return;
        }
        indexed.store(last, Ordering::Release);
    }
}
