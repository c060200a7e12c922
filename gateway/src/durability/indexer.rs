//! The tracing index follows the log: the log writer offers each durable
//! batch's visits to the indexer thread, which inserts them into the
//! [`VisitIndex`] and moves the indexed position (a watch, so that a
//! tracing query waits for a notification, never by polling).
//!
//! The writer never waits for the indexer. It hands batches over without
//! blocking while fewer than [`MAX_QUEUED_VISITS`] visits are queued (the
//! indexer's memory is bounded); past that it drops them, and the indexer,
//! once it has worked through its queue, reads what it missed back from
//! the log files. The indexed position therefore only ever moves over
//! visits that are in the index.
//!
//! Commits are paced ([`COMMIT_INTERVAL`]): batches that arrive within
//! that time of the last commit are gathered into the next one. The thread
//! sleeps out the pace and then takes all that queued, so it wakes once a
//! commit, not once per batch the writer hands over.
//!
//! An insert error stops indexing until the next start (which catches up
//! from the log), rather than skipping visits: a later successful batch
//! would move the high-water mark past the failed one and its visits would
//! never be indexed.

use crate::durability::visits::{Visit, VisitIndex};
use crate::durability::wal::record::{Event, Record};
use crate::durability::wal::storage::Storage;
use crate::durability::wal::{self, Observer};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most visits inserted in one index transaction.
pub const INDEX_BATCH: usize = 50_000;

/// Least time between two index commits while visits keep coming: what
/// arrives meanwhile is gathered into the next commit. Each commit writes
/// pages of the index file on the log's disk; pacing them keeps that
/// traffic (and the durable commits it leads to) small beside the log's
/// fsyncs, at the cost of a tracing query waiting up to this much longer
/// for the index to reach the log. A lone visit after a quiet spell is
/// committed at once. Each commit also costs CPU of its own (rewriting and
/// checksumming the pages it touched): at 5 ms the index took 14 µs of CPU
/// per scan on a ramp of scans, at 25 ms 10.5 µs (`PARTS=d
/// scripts/bench-e2e.sh`, docs/PERFORMANCE.md), while a tracing query,
/// which waits up to `gateway::lifecycle::INDEX_WAIT` (2 s) for the index,
/// waits at most 25 ms more.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(25);

/// Most visits queued for the indexer; past it the writer drops batches
/// and the indexer reads them back from the log (about 200 bytes a visit).
pub const MAX_QUEUED_VISITS: usize = 200_000;

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
    /// Highest LSN whose visit is in the index, as a watch: a tracing query
    /// waits on it.
    indexed: tokio::sync::watch::Sender<u64>,
    /// Test seam: see [`Indexer::hold`].
    gate: Arc<Gate>,
}

/// Holds the indexer thread before its next insert while closed (a test
/// seam: nothing in the product closes it, and no route reaches it).
#[derive(Default)]
struct Gate {
    held: Mutex<usize>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn wait_open(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held > 0 {
            held = self.opened.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// While this is alive the indexer inserts nothing more: the index falls
/// behind the log. Dropping it lets the indexer go on. Test seam only.
#[doc(hidden)]
#[must_use = "the indexer is held only while this lives"]
pub struct IndexHold(Arc<Gate>);

impl Drop for IndexHold {
    fn drop(&mut self) {
        let mut held = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        *held -= 1;
        if *held == 0 {
            self.0.opened.notify_all();
        }
    }
}

/// Statistics the log writer reports per batch.
#[derive(Clone)]
pub struct LogMetrics {
    pub batch_records: prometheus::Histogram,
    pub fsync_seconds: prometheus::Histogram,
    pub commit_wait_seconds: prometheus::Histogram,
}

/// One durable batch for the indexer: its LSNs and its visits, or `None`
/// when the writer dropped them (the indexer reads them from the log).
struct Batch {
    first: u64,
    last: u64,
    visits: Option<Vec<Visit>>,
}

/// What the writer and the indexer thread share.
struct Shared {
    /// Visits handed over and not yet taken by the indexer.
    queued: AtomicUsize,
    /// The last durable LSN the writer has seen, whether or not its batch
    /// was handed over: the indexer catches up to it from the log.
    durable: AtomicU64,
}

/// Feeds durable records to the index thread and batch statistics to the
/// metrics. Runs on the log writer's thread; never blocks.
pub struct Feeder {
    tx: SyncSender<Batch>,
    shared: Arc<Shared>,
    metrics: LogMetrics,
    /// [`MAX_QUEUED_VISITS`]; smaller in tests, to make the writer drop.
    max_queued: usize,
}

impl Observer for Feeder {
    fn durable(&mut self, records: &[Record]) {
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return };
        self.shared.durable.store(last.lsn, Ordering::Release);
        let visits: Vec<Visit> = records.iter().filter_map(visit_of).collect();
        let n = visits.len();
        let batch = if self.shared.queued.load(Ordering::Acquire) + n > self.max_queued {
            // Over the memory bound: only the LSNs go, as a reminder.
            Batch { first: first.lsn, last: last.lsn, visits: None }
        } else {
            self.shared.queued.fetch_add(n, Ordering::AcqRel);
            Batch { first: first.lsn, last: last.lsn, visits: Some(visits) }
        };
        match self.tx.try_send(batch) {
            Ok(()) => {}
            // Full: the indexer has a queue to work through and, once it is
            // empty, reads what it missed from the log (it knows how far
            // the log is durable). Disconnected: it stopped.
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                if let Some(v) = b.visits {
                    self.shared.queued.fetch_sub(v.len(), Ordering::AcqRel);
                }
            }
        }
    }
    fn batch(&mut self, records: usize, fsync: Duration) {
        self.metrics.batch_records.observe(records as f64);
        self.metrics.fsync_seconds.observe(fsync.as_secs_f64());
    }
    fn committed(&mut self, waited: Duration) {
        self.metrics.commit_wait_seconds.observe(waited.as_secs_f64());
    }
}

impl Indexer {
    /// Starts the indexer thread on `index`, which already holds every
    /// visit up to `indexed_lsn`; returns it with the log writer's feeder.
    /// `log` reads the log files (for batches the writer had to drop).
    pub fn start(
        index: Arc<VisitIndex>,
        indexed_lsn: u64,
        log: Box<dyn Storage>,
        metrics: LogMetrics,
    ) -> std::io::Result<(Indexer, Feeder)> {
        let indexed = tokio::sync::watch::Sender::new(indexed_lsn);
        let failed = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared { queued: AtomicUsize::new(0), durable: AtomicU64::new(indexed_lsn) });
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let gate = Arc::new(Gate::default());
        let thread = {
            let (index, indexed, failed, shared) = (index.clone(), indexed.clone(), failed.clone(), shared.clone());
            let gate = gate.clone();
            std::thread::Builder::new().name("healthgate-index".into()).spawn(move || {
                // Off the acknowledgement path: yield the CPU to scans.
                wal::set_thread_nice(10);
                index_loop(&index, &indexed, &failed, &shared, &gate, &*log, rx)
            })?
        };
        let indexer =
            Indexer { index: Mutex::new(Some(index)), thread: Mutex::new(Some(thread)), failed, indexed, gate };
        Ok((indexer, Feeder { tx, shared, metrics, max_queued: MAX_QUEUED_VISITS }))
    }

    /// The index, unless the indexer failed or was closed.
    pub fn index(&self) -> Option<Arc<VisitIndex>> {
        if self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.index.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn indexed_lsn(&self) -> u64 {
        *self.indexed.borrow()
    }

    /// A watch on the indexed position.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.indexed.subscribe()
    }

    /// Test seam: the indexer inserts nothing more (and the indexed
    /// position stays put) until the returned hold is dropped, so that a
    /// test can make the index fall behind the log for real. Not reachable
    /// from the network. A hold must be dropped before the gateway stops.
    #[doc(hidden)]
    pub fn hold(&self) -> IndexHold {
        *self.gate.held.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        IndexHold(self.gate.clone())
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

fn index_loop(
    index: &VisitIndex,
    indexed: &tokio::sync::watch::Sender<u64>,
    failed: &AtomicBool,
    shared: &Shared,
    gate: &Gate,
    log: &dyn Storage,
    rx: Receiver<Batch>,
) {
    let mut at = *indexed.borrow();
    let insert = |visits: &[Visit], last: u64, at: &mut u64| -> bool {
        gate.wait_open();
        if let Err(e) = index.insert(visits) {
            tracing::error!(error = %e, "tracing index insert failed; indexing stops until the next start, which catches up from the log");
            return false;
        }
        *at = last;
        indexed.send_replace(last);
        true
    };
    // Reads `at+1..=to` back from the log, in bounded chunks.
    let fill = |to: u64, at: &mut u64| -> bool {
        while *at < to {
            let end = to.min(*at + INDEX_BATCH as u64);
            let mut visits = Vec::new();
            if !catch_up(log, *at + 1, end, &mut visits) || !insert(&visits, end, at) {
                return false;
            }
        }
        true
    };
    // A batch taken from the queue while gathering that could not join
    // the commit being gathered (dropped, or after a gap): next in line.
    let mut next: Option<Batch> = None;
    let mut last_commit: Option<Instant> = None;
    let ok = loop {
        let batch = match next.take().map_or_else(|| rx.try_recv(), Ok) {
            Ok(b) => b,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                // The queue is empty: anything durable beyond what it held
                // was dropped by the writer; read it back from the log.
                let durable = shared.durable.load(Ordering::Acquire);
                if durable > at {
                    if !fill(durable, &mut at) {
                        break false;
                    }
                    continue;
                }
                match rx.recv() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            }
            // The writer is gone: index what it left behind, then stop.
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                break fill(shared.durable.load(Ordering::Acquire), &mut at);
            }
        };
        let Some(visits) = batch.visits else {
            // Dropped by the writer: read from the log.
            if !fill(batch.last, &mut at) {
                break false;
            }
            continue;
        };
        shared.queued.fetch_sub(visits.len(), Ordering::AcqRel);
        if batch.last <= at {
            continue;
        }
        // Batches dropped before this one: read them from the log first.
        if batch.first > at + 1 && !fill(batch.first - 1, &mut at) {
            break false;
        }
        let mut fresh: Vec<Visit> = visits.into_iter().filter(|v| v.lsn > at).collect();
        let mut last = batch.last;
        // Gather what follows on directly until the pace allows the next
        // commit (at once after a quiet spell).
        let due = last_commit.map(|t| t + COMMIT_INTERVAL);
        while fresh.len() < INDEX_BATCH {
            let more = match rx.try_recv() {
                Ok(b) => b,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    match due.and_then(|d| d.checked_duration_since(Instant::now())) {
                        // Sleep out the pace, then take everything queued:
                        // waiting on the queue instead would wake this
                        // thread for every batch the writer hands over
                        // (a log batch is a few records), and the writer
                        // to wake it; this way it wakes once a commit.
                        Some(left) if !left.is_zero() => {
                            std::thread::sleep(left);
                            continue;
                        }
                        _ => break,
                    }
                }
            };
            match more.visits {
                Some(v) if more.first == last + 1 => {
                    shared.queued.fetch_sub(v.len(), Ordering::AcqRel);
                    fresh.extend(v);
                    last = more.last;
                }
                _ => {
                    next = Some(more);
                    break;
                }
            }
        }
        if !insert(&fresh, last, &mut at) {
            break false;
        }
        last_commit = Some(Instant::now());
    };
    if !ok {
        failed.store(true, Ordering::Release);
        // Keep draining so that the queue's memory is released.
        while rx.recv().is_ok() {}
    }
}

/// Reads the visits of LSNs `from..=to` back from the log files into `out`.
fn catch_up(log: &dyn Storage, from: u64, to: u64, out: &mut Vec<Visit>) -> bool {
    match wal::read_range(log, from, to, |rec| out.extend(visit_of(rec))) {
        Ok(true) => true,
        Ok(false) => {
            tracing::error!(
                from,
                to,
                "the tracing index could not read records back from the log; indexing stops until the next start"
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, from, to, "reading the log for the tracing index failed; indexing stops until the next start");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::wal::record::ScanRecord;
    use crate::durability::wal::storage::FaultyStorage;
    use crate::durability::wal::{Recovered, Wal, WalSettings};
    use crate::policy::{Direction, Reason};
    use crate::state::Effect;
    use crate::HolderId;

    fn metrics() -> LogMetrics {
        let h = |n: &str| prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(n, n)).unwrap();
        LogMetrics { batch_records: h("records"), fsync_seconds: h("fsync"), commit_wait_seconds: h("wait") }
    }

    /// The writer never waits for the indexer: with no room in the queue at
    /// all every batch is dropped, and the indexer reads each one back from
    /// the log files; every visit ends up indexed exactly once, in order.
    #[test]
    fn batches_the_writer_drops_are_read_back_from_the_log() {
        for max_queued in [0, 7] {
            let dir = tempfile::tempdir().unwrap();
            let index = Arc::new(VisitIndex::open(&dir.path().join("visits.redb")).unwrap());
            let disk = FaultyStorage::new();
            let (indexer, mut feeder) = Indexer::start(index.clone(), 0, disk.reader().unwrap(), metrics()).unwrap();
            feeder.max_queued = max_queued;
            let recovered = Recovered { next_lsn: 1, tail: None, replayed: 0, truncated_bytes: 0 };
            let settings = WalSettings { segment_bytes: 4096, batch_max_records: 3, ..Default::default() };
            let wal = Wal::start(Box::new(disk.clone()), settings, &recovered, feeder);
            let holder = HolderId([7; 16]);
            let tickets: Vec<_> = (0..500u64)
                .map(|i| {
                    let scan = ScanRecord {
                        holder: (i % 5 != 0).then_some(holder),
                        serial: i,
                        checkpoint: "gate".into(),
                        direction: Direction::In,
                        temperature_c: None,
                        pass: true,
                        reason: Reason::Ok,
                        effect: Effect::default(),
                    };
                    wal.append(1_000 + i, Event::Scan(scan)).unwrap()
                })
                .collect();
            for t in tickets {
                t.wait_blocking().unwrap();
            }
            let mut watch = indexer.watch();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|l| *l >= 500)).await.unwrap().unwrap();
            });
            assert!(!indexer.has_failed());
            let mut lsns = Vec::new();
            index
                .by_holder(&holder, 0, u64::MAX, |v: Visit| {
                    lsns.push(v.lsn);
                    true
                })
                .unwrap();
            let expected: Vec<u64> = (1..=500).filter(|l| (l - 1) % 5 != 0).collect();
            assert_eq!(lsns, expected, "max_queued {max_queued}");
            wal.close();
            indexer.close();
        }
    }
}
