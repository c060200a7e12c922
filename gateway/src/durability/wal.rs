//! The write-ahead log: every scan decision and every state change, durable
//! before it is acknowledged.
//!
//! Producers (scan handlers, the authority feed, check-ins) call
//! [`Wal::append`] while they hold whatever lock orders their change; it
//! assigns the next log sequence number (LSN) and queues the record without
//! blocking. One writer thread (group commit) takes everything queued (up to
//! `batch_max_records`), waits up to `batch_max_wait` after the first
//! record for more only while records have been arriving closer together
//! than half that window (a lone record is written at once; a wait sleeps
//! the window out and then takes what queued, one wake-up a batch), appends
//! the frames to the current segment, fdatasyncs once, and then resolves
//! each record's [`Ticket`]. In strict mode a request is answered only after
//! its ticket resolves; in async mode it is answered at once and is durable
//! within one batch window plus one fsync.
//!
//! An fsync error is fatal: the log marks itself failed, every waiting and
//! later ticket resolves to an error, and the gateway turns unready and
//! stops accepting scans. It never retries and then acknowledges: after a
//! failed fsync the kernel may have dropped the dirty pages, so nothing
//! written since the last good fsync can be vouched for.
//!
//! Segments may be preallocated (zero-filled to their full size before
//! use, see `storage::FsStorage`): the log ends at the first frame header
//! followed by nothing but zeros, which is not damage and is not cut.
//!
//! Segment (format 2): the 8-byte magic `HGWAL\0\0\x02`, then frames
//! `len u32 LE | crc32 u32 LE (of the length's 4 bytes and the payload) |
//! payload`, payload as in [`record`]. Segments are named by their first LSN
//! (`{lsn:020}.log`). Format 1 segments (no magic; the checksum covered the
//! payload alone, so a damaged length could pass as a torn tail) are still
//! read, and never appended to: the first write after a start on one opens a
//! new format 2 segment.

pub mod record;
pub mod storage;

use crate::clock::UnixSecs;
use record::{Event, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::Storage;
use thiserror::Error;
use tokio::sync::oneshot;

/// Largest payload accepted when reading (a 100 000-change batch with full
/// schedules is under 10 MiB).
pub const MAX_RECORD: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer after the fsync that covers the record (the default).
    Strict,
    /// Answer at once; durable within one batch window and one fsync.
    Async,
}

#[derive(Debug, Clone)]
pub struct WalSettings {
    pub mode: Mode,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
    pub segment_bytes: u64,
    /// Records queued and not yet written; past it appends are refused (503).
    pub queue_capacity: usize,
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            mode: Mode::Strict,
            batch_max_records: 1024,
            batch_max_wait: Duration::from_micros(100),
            segment_bytes: 64 << 20,
            queue_capacity: 65_536,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WalError {
    #[error("storage failure: the log cannot make records durable")]
    Failed,
    #[error("log queue full")]
    Overloaded,
    #[error("log is closed")]
    Closed,
}

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error("reading log segment {name}: {source}")]
    Io { name: String, source: std::io::Error },
    #[error(
        "log segment {name}: corrupt record at byte {offset} followed by valid records ({why}); refusing to skip it"
    )]
    Corrupt { name: String, offset: usize, why: &'static str },
    #[error("log segment {name}: {why}")]
    Inconsistent { name: String, why: String },
    #[error("log records {from} to {to} are missing: {why}; refusing to start without them")]
    Missing { from: u64, to: u64, why: String },
}

/// Resolves when the record is durable (or never will be).
pub struct Ticket {
    pub lsn: u64,
    rx: oneshot::Receiver<Result<(), WalError>>,
}

impl Ticket {
    pub async fn wait(self) -> Result<u64, WalError> {
        match self.rx.await {
            Ok(Ok(())) => Ok(self.lsn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WalError::Closed),
        }
    }
    /// Blocking wait, for threads outside the runtime.
    pub fn wait_blocking(self) -> Result<u64, WalError> {
        match self.rx.blocking_recv() {
            Ok(Ok(())) => Ok(self.lsn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WalError::Closed),
        }
    }
}

struct Pending {
    record: Record,
    done: oneshot::Sender<Result<(), WalError>>,
    /// When it was appended: the commit wait runs from here.
    appended: Instant,
}

/// What the writer reports after each durable batch.
pub trait Observer: Send + 'static {
    /// `records` are durable, in LSN order.
    fn durable(&mut self, records: &[Record]);
    /// `records` were written and synced in `fsync`.
    fn batch(&mut self, _records: usize, _fsync: Duration) {}
    /// One record's commit wait: from its append to its acknowledgement.
    fn committed(&mut self, _waited: Duration) {}
}

impl Observer for () {
    fn durable(&mut self, _: &[Record]) {}
}

pub struct Wal {
    /// The next LSN and the queue, under one mutex so that queue order is
    /// LSN order. A std mutex: held for an increment and a `try_send`.
    tx: Mutex<(u64, Option<SyncSender<Pending>>)>,
    durable: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    /// Set by `close`: the writer stops retrying a segment it cannot create.
    closing: Arc<AtomicBool>,
    mode: Mode,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Where a recovered log ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub next_lsn: u64,
    /// The segment to keep appending to and its length.
    pub tail: Option<(String, u64)>,
    pub replayed: u64,
    pub truncated_bytes: u64,
}

pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

fn segment_lsn(name: &str) -> Option<u64> {
    name.strip_suffix(".log")?.parse().ok()
}

/// The first bytes of a format 2 segment. Read as a format 1 frame header,
/// its length would be far over [`MAX_RECORD`], so the two never mix up.
pub const SEGMENT_MAGIC: [u8; 8] = *b"HGWAL\0\0\x02";

/// The segment formats this release reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// No magic; the checksum covers the payload only.
    V1,
    /// Magic first; the checksum covers the length too.
    V2,
}

impl Format {
    /// The format of a segment and where its first frame starts. A torn
    /// magic (a crash while a new segment's first write was under way) is
    /// read as an empty format 2 segment.
    fn of(bytes: &[u8]) -> (Format, usize) {
        if bytes.starts_with(&SEGMENT_MAGIC) {
            (Format::V2, SEGMENT_MAGIC.len())
        } else if bytes.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(bytes) {
            (Format::V2, bytes.len())
        } else if bytes.len() >= SEGMENT_MAGIC.len() && bytes[..SEGMENT_MAGIC.len()] == [0; 8] {
            // A preallocated segment whose magic was never written (a
            // format 1 segment never starts with zeros): empty.
            (Format::V2, 0)
        } else {
            (Format::V1, 0)
        }
    }

    fn checksum(self, len: &[u8], payload: &[u8]) -> u32 {
        match self {
            Format::V1 => crc32fast::hash(payload),
            Format::V2 => {
                let mut h = crc32fast::Hasher::new();
                h.update(len);
                h.update(payload);
                h.finalize()
            }
        }
    }
}

/// Appends one format 2 frame holding `record` to `buf`.
pub fn encode_frame(record: &Record, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    record.encode(buf);
    let len = ((buf.len() - start - 8) as u32).to_le_bytes();
    let crc = Format::V2.checksum(&len, &buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses the frame at `off`; `Ok(None)` when the bytes end exactly there.
fn frame_at(b: &[u8], off: usize, format: Format) -> Result<Option<(Record, usize)>, &'static str> {
    if off == b.len() {
        return Ok(None);
    }
    if b.len() - off < 8 {
        return Err("truncated frame header");
    }
    let len = u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[off + 4..off + 8].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err("frame length out of range");
    }
    let end = off + 8 + len;
    if end > b.len() {
        return Err("truncated frame");
    }
    let payload = &b[off + 8..end];
    if format.checksum(&b[off..off + 4], payload) != crc {
        return Err("checksum mismatch");
    }
    let rec = Record::decode(payload).map_err(|e| e.0)?;
    Ok(Some((rec, end)))
}

/// The time of the first record in a segment's first bytes, if whole.
pub fn first_record_time(head: &[u8]) -> Option<UnixSecs> {
    let (format, start) = Format::of(head);
    match frame_at(head, start, format) {
        Ok(Some((rec, _))) => Some(rec.at),
        _ => None,
    }
}

/// Reads the whole, valid frames of a segment for a reader that follows the
/// log while the writer appends (the cluster's shipper), and the frames of
/// a message that carries log records. `head` is the segment's first bytes
/// (its magic, if it has one), `bytes` what the segment holds from byte
/// `offset` on. Calls `f(record, end)` for each frame in order, `end` being
/// the segment offset just after it, and stops at the first frame that is
/// incomplete or does not check: the writer may be in the middle of it.
/// Never changes anything (recovery, not this, cuts torn tails).
pub fn follow_frames(head: &[u8], offset: usize, bytes: &[u8], mut f: impl FnMut(Record, usize)) {
    let (format, start) = Format::of(head);
    let mut off = start.saturating_sub(offset).min(bytes.len());
    while let Ok(Some((rec, end))) = frame_at(bytes, off, format) {
        f(rec, offset + end);
        off = end;
    }
}

/// The log's segments in LSN order, each with the LSN its name says it
/// starts at.
pub fn segments(storage: &dyn Storage) -> Result<Vec<(u64, String)>, RecoveryError> {
    Ok(storage
        .list()
        .map_err(|source| RecoveryError::Io { name: "<dir>".into(), source })?
        .into_iter()
        .filter_map(|n| segment_lsn(&n).map(|l| (l, n)))
        .collect())
}

/// Reads the durable records with LSNs `from..=to` from the log files, for a
/// reader beside the writer (the tracing index catching up). Read-only;
/// stops at the first frame that does not check. True if every LSN of the
/// range was found.
pub fn read_range(
    storage: &dyn Storage,
    from: u64,
    to: u64,
    mut f: impl FnMut(&Record),
) -> Result<bool, RecoveryError> {
    let names = segments(storage)?;
    let mut next = from;
    for (i, (first, name)) in names.iter().enumerate() {
        if names.get(i + 1).is_some_and(|(n, _)| *n <= from) || *first > to {
            continue;
        }
        let bytes = storage.read(name).map_err(|source| RecoveryError::Io { name: name.clone(), source })?;
        follow_frames(&bytes, 0, &bytes, |rec, _| {
            if rec.lsn == next && rec.lsn <= to {
                f(&rec);
                next += 1;
            }
        });
        if next > to {
            break;
        }
    }
    Ok(next > to)
}

/// Reads the log and calls `apply` for every record with LSN `>= from`, in
/// order. A torn tail of the last segment is cut off; a bad record anywhere
/// else, or followed by a valid record, stops recovery with an error.
/// Segments that end before `from` are not read at all.
pub fn recover(
    storage: &mut dyn Storage,
    from: u64,
    mut apply: impl FnMut(&Record),
) -> Result<Recovered, RecoveryError> {
    let names = segments(&*storage)?;
    let mut out = Recovered { next_lsn: 1, tail: None, replayed: 0, truncated_bytes: 0 };
    let mut expected: Option<u64> = None;
    for (i, (first, name)) in names.iter().enumerate() {
        let last_segment = i + 1 == names.len();
        // Skip a segment wholly before `from`: the next one starts at or before it.
        if let Some((next_first, _)) = names.get(i + 1) {
            if *next_first <= from {
                continue;
            }
        }
        let bytes = storage.read(name).map_err(|source| RecoveryError::Io { name: name.clone(), source })?;
        if expected.is_some_and(|e| e != *first) {
            return Err(RecoveryError::Inconsistent {
                name: name.clone(),
                why: format!("starts at LSN {first}, expected {}", expected.unwrap_or(0)),
            });
        }
        let mut next = *first;
        let (format, mut off) = Format::of(&bytes);
        loop {
            match frame_at(&bytes, off, format) {
                Ok(None) => break,
                Ok(Some((rec, end))) if rec.lsn == next => {
                    if rec.lsn >= from {
                        apply(&rec);
                        out.replayed += 1;
                    }
                    next += 1;
                    off = end;
                }
                // Zeros from here to the end: the unwritten rest of a
                // preallocated segment. The log ends here; nothing is cut.
                Err(_) if bytes[off..].iter().all(|b| *b == 0) => break,
                bad => {
                    let why = match bad {
                        Err(w) => w,
                        _ => "LSN out of sequence",
                    };
                    // A valid record later on means this is not a torn
                    // write at the end but damage in the middle.
                    let later = (off + 1..bytes.len())
                        .any(|o| matches!(frame_at(&bytes, o, format), Ok(Some((r, _))) if r.lsn >= next));
                    if !last_segment || later {
                        return Err(RecoveryError::Corrupt { name: name.clone(), offset: off, why });
                    }
                    storage
                        .truncate(name, off as u64)
                        .map_err(|source| RecoveryError::Io { name: name.clone(), source })?;
                    out.truncated_bytes = (bytes.len() - off) as u64;
                    tracing::warn!(segment = %name, offset = off, bytes = out.truncated_bytes, why, "cut a torn record off the end of the log");
                    break;
                }
            }
        }
        expected = Some(next);
        out.next_lsn = next;
        // Append only to a format 2 segment; a torn magic is written anew.
        out.tail = match format {
            Format::V2 if off >= SEGMENT_MAGIC.len() => Some((name.clone(), off as u64)),
            Format::V2 => {
                storage.truncate(name, 0).map_err(|source| RecoveryError::Io { name: name.clone(), source })?;
                Some((name.clone(), 0))
            }
            Format::V1 => None,
        };
    }
    Ok(out)
}

impl Wal {
    /// Starts the writer thread, appending after what `recover` found.
    pub fn start(
        mut storage: Box<dyn Storage>,
        settings: WalSettings,
        recovered: &Recovered,
        mut observer: impl Observer,
    ) -> Arc<Wal> {
        let (tx, rx) = mpsc::sync_channel::<Pending>(settings.queue_capacity);
        let durable = Arc::new(AtomicU64::new(recovered.next_lsn - 1));
        let failed = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let (d2, f2, c2) = (durable.clone(), failed.clone(), closing.clone());
        let mut tail = recovered.tail.clone();
        if let Some((name, len)) = &tail {
            storage.resume(name, *len);
        }
        let s = settings.clone();
        let writer = std::thread::Builder::new()
            .name("healthgate-wal".into())
            .spawn(move || {
                // Acknowledgements wait on this thread: ask for a little more
                // CPU priority than the request workers (allowed as root or
                // with CAP_SYS_NICE; otherwise it runs at normal priority).
                set_thread_nice(-5);
                let flags = Flags { durable: &d2, failed: &f2, closing: &c2 };
                write_loop(&mut *storage, &s, rx, &mut tail, flags, &mut observer)
            })
            .expect("spawn the log writer");
        Arc::new(Wal {
            tx: Mutex::new((recovered.next_lsn, Some(tx))),
            durable,
            failed,
            closing,
            mode: settings.mode,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues a record; never blocks. The caller holds the lock that orders
    /// the change it records.
    pub fn append(&self, at: UnixSecs, event: Event) -> Result<Ticket, WalError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(WalError::Failed);
        }
        let mut g = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let lsn = g.0;
        let sender = g.1.as_ref().ok_or(WalError::Closed)?;
        let (done, rx) = oneshot::channel();
        match sender.try_send(Pending { record: Record { lsn, at, event }, done, appended: Instant::now() }) {
            Ok(()) => {
                g.0 += 1;
                Ok(Ticket { lsn, rx })
            }
            Err(TrySendError::Full(_)) => Err(WalError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(WalError::Closed),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
    /// Every record up to this LSN is durable.
    pub fn durable_lsn(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }
    /// The last LSN handed out.
    pub fn assigned_lsn(&self) -> u64 {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).0 - 1
    }

    /// Waits (blocking) until everything assigned so far is durable.
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), WalError> {
        let target = self.assigned_lsn();
        let deadline = Instant::now() + timeout;
        while self.durable_lsn() < target {
            if self.is_failed() {
                return Err(WalError::Failed);
            }
            if Instant::now() > deadline {
                return Err(WalError::Overloaded);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Stops accepting records, lets the writer finish what is queued, and
    /// joins it.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        self.closing.store(true, Ordering::Release);
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// Sets the calling thread's nice value; failures are ignored (lowering
/// priority always works, raising it needs privileges).
pub fn set_thread_nice(nice: i32) {
    // SAFETY: gettid and setpriority have no memory-safety preconditions;
    // on Linux PRIO_PROCESS with a thread id applies to that thread only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// How closely records have been arriving: a moving average of the gap
/// between two records' appends.
#[derive(Default)]
struct Arrivals {
    last: Option<Instant>,
    /// Exponentially weighted mean gap, in seconds (weight 1/8 per record).
    mean_gap: f64,
}

impl Arrivals {
    /// A record appended at `at` (its [`Pending::appended`]: when it came,
    /// not when the writer took it from the queue).
    fn saw(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let gap = at.saturating_duration_since(last).as_secs_f64();
            self.mean_gap += (gap - self.mean_gap) / 8.0;
        } else {
            // Start idle: the first record is written at once.
            self.mean_gap = 1.0;
        }
        // Appenders race to the queue: a record may come appended a hair
        // before the one ahead of it.
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
    }

    /// True when another record is expected well within `window`.
    fn busy(&self, window: Duration) -> bool {
        self.mean_gap * 2.0 < window.as_secs_f64()
    }
}

/// What the writer shares with the [`Wal`] handle.
struct Flags<'a> {
    durable: &'a AtomicU64,
    failed: &'a AtomicBool,
    closing: &'a AtomicBool,
}

fn write_loop(
    storage: &mut dyn Storage,
    s: &WalSettings,
    rx: Receiver<Pending>,
    tail: &mut Option<(String, u64)>,
    flags: Flags<'_>,
    observer: &mut impl Observer,
) {
    let Flags { durable, failed, closing } = flags;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut batch: Vec<Pending> = Vec::with_capacity(s.batch_max_records);
    let mut records: Vec<Record> = Vec::with_capacity(s.batch_max_records);
    let mut arrivals = Arrivals::default();
    while let Ok(first) = rx.recv() {
        arrivals.saw(first.appended);
        batch.push(first);
        let deadline = Instant::now() + s.batch_max_wait;
        let mut waited = false;
        while batch.len() < s.batch_max_records {
            match rx.try_recv() {
                Ok(p) => {
                    arrivals.saw(p.appended);
                    batch.push(p);
                }
                // Nothing queued: wait for more only while records are
                // known to be coming (they have been arriving closer
                // together than half the window); a lone record is written
                // at once (PostgreSQL's commit_delay with commit_siblings).
                Err(_) if waited || !arrivals.busy(s.batch_max_wait) => break,
                // Sleep out the window, then take what queued meanwhile:
                // one wake-up a batch. (Waiting on the queue instead woke
                // this thread, and made each appender wake it, for every
                // record.)
                Err(_) => {
                    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
                        std::thread::sleep(left);
                    }
                    waited = true;
                }
            }
        }
        if failed.load(Ordering::Acquire) {
            for p in batch.drain(..) {
                let _ = p.done.send(Err(WalError::Failed));
            }
            continue;
        }
        buf.clear();
        let first_lsn = batch[0].record.lsn;
        if tail.as_ref().is_none_or(|(_, len)| *len >= s.segment_bytes) {
            let name = segment_name(first_lsn);
            // Creating the next segment writes nothing, so its failure is
            // not the fsync failure that ends the log: keep the batch (its
            // LSNs must be written in order) and retry, backing off, until
            // it works or the log closes. Meanwhile the queue fills and
            // appends are refused (503); nothing is acknowledged.
            let mut backoff = Duration::from_millis(1);
            let created = loop {
                match storage.create(&name) {
                    Ok(()) => break true,
                    Err(_) if closing.load(Ordering::Acquire) => break false,
                    Err(e) => {
                        tracing::warn!(error = %e, segment = %name, retry_in_ms = backoff.as_millis() as u64, "cannot create the next log segment; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            };
            if !created {
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(WalError::Closed));
                }
                return;
            }
            *tail = Some((name, 0));
        }
        let (name, len) = tail.as_mut().expect("set above");
        if *len == 0 {
            buf.extend_from_slice(&SEGMENT_MAGIC);
        }
        for p in &batch {
            encode_frame(&p.record, &mut buf);
        }
        let started = Instant::now();
        let result = storage.append(name, &buf).and_then(|()| storage.sync(name));
        let fsync = started.elapsed();
        match result {
            Ok(()) => {
                *len += buf.len() as u64;
                durable.store(batch.last().expect("non-empty").record.lsn, Ordering::Release);
                observer.batch(batch.len(), fsync);
                let now = Instant::now();
                for p in batch.drain(..) {
                    let _ = p.done.send(Ok(()));
                    observer.committed(now.saturating_duration_since(p.appended));
                    records.push(p.record);
                }
                observer.durable(&records);
                records.clear();
            }
            Err(e) => {
                tracing::error!(error = %e, segment = %name, "log write or fsync failed: no further acknowledgements");
                failed.store(true, Ordering::Release);
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(WalError::Failed));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::record::ScanRecord;
    use super::storage::FaultyStorage;
    use super::*;
    use crate::policy::{Direction, Reason};
    use crate::state::Effect;

    fn scan(serial: u64) -> Event {
        Event::Scan(ScanRecord {
            holder: None,
            serial,
            checkpoint: "gate".into(),
            direction: Direction::In,
            temperature_c: None,
            pass: true,
            reason: Reason::Ok,
            effect: Effect::default(),
        })
    }

    fn serials(disk: &FaultyStorage, from: u64) -> Result<(Vec<u64>, Recovered), RecoveryError> {
        let mut d = disk.clone();
        let mut seen = Vec::new();
        let r = recover(&mut d, from, |rec| {
            if let Event::Scan(s) = &rec.event {
                seen.push(s.serial)
            }
        })?;
        Ok((seen, r))
    }

    fn start(disk: &FaultyStorage, settings: WalSettings) -> Arc<Wal> {
        let (_, rec) = serials(disk, 1).unwrap();
        Wal::start(Box::new(disk.clone()), settings, &rec, ())
    }

    #[test]
    fn acknowledged_records_survive_a_crash() {
        let disk = FaultyStorage::new();
        let wal = start(&disk, WalSettings::default());
        let tickets: Vec<_> = (0..100).map(|i| wal.append(i, scan(i)).unwrap()).collect();
        for t in tickets {
            t.wait_blocking().unwrap();
        }
        wal.close();
        disk.crash();
        let (seen, r) = serials(&disk, 1).unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(r.next_lsn, 101);
        // Appending goes on after recovery with the next LSN.
        let wal = start(&disk, WalSettings::default());
        assert_eq!(wal.append(0, scan(100)).unwrap().wait_blocking().unwrap(), 101);
        wal.close();
    }

    #[test]
    fn segments_rotate_and_recovery_skips_old_ones() {
        let disk = FaultyStorage::new();
        let wal = start(&disk, WalSettings { segment_bytes: 200, batch_max_records: 1, ..Default::default() });
        for i in 0..50 {
            wal.append(i, scan(i)).unwrap().wait_blocking().unwrap();
        }
        wal.close();
        let names = disk.list().unwrap();
        assert!(names.len() > 5, "{names:?}");
        let (seen, _) = serials(&disk, 40).unwrap();
        assert_eq!(seen, (39..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        let disk = FaultyStorage::new();
        let wal = start(&disk, WalSettings::default());
        wal.append(0, scan(1)).unwrap().wait_blocking().unwrap();
        let name = disk.list().unwrap()[0].clone();
        let durable = disk.durable_len(&name);
        // Write a record but crash halfway through it: simulate by appending
        // the bytes of a whole frame and keeping only part of them.
        wal.close();
        let mut d = disk.clone();
        let mut frame = Vec::new();
        encode_frame(&Record { lsn: 2, at: 0, event: scan(2) }, &mut frame);
        d.append(&name, &frame).unwrap();
        disk.crash_torn(&name, frame.len() / 2);
        assert!(disk.durable_len(&name) > durable);
        let (seen, r) = serials(&disk, 1).unwrap();
        assert_eq!(seen, vec![1]);
        assert_eq!(r.truncated_bytes as usize, frame.len() / 2);
        assert_eq!(disk.durable_len(&name), durable, "the torn bytes are gone");
        assert_eq!(r.next_lsn, 2);
    }

    #[test]
    fn unsynced_records_are_lost_and_never_acknowledged() {
        let disk = FaultyStorage::new();
        disk.fail_syncs(true);
        let wal = start(&disk, WalSettings::default());
        let t = wal.append(0, scan(1)).unwrap();
        assert_eq!(t.wait_blocking(), Err(WalError::Failed));
        assert!(wal.is_failed());
        assert_eq!(wal.append(0, scan(2)).err(), Some(WalError::Failed));
        wal.close();
        disk.fail_syncs(false);
        disk.crash();
        assert_eq!(serials(&disk, 1).unwrap().0, Vec::<u64>::new());
    }

    /// A segment that cannot be created is not an fsync failure: nothing
    /// was written, so the writer retries, the log does not fail, and the
    /// record is written once the disk lets it.
    #[test]
    fn a_segment_that_cannot_be_created_is_retried_not_fatal() {
        let disk = FaultyStorage::new();
        disk.fail_creates(true);
        let wal = start(&disk, WalSettings::default());
        let t = wal.append(0, scan(1)).unwrap();
        while disk.create_attempts() < 3 {
            std::thread::yield_now();
        }
        assert!(!wal.is_failed());
        disk.fail_creates(false);
        assert_eq!(t.wait_blocking(), Ok(1));
        assert_eq!(wal.append(0, scan(2)).unwrap().wait_blocking(), Ok(2));
        wal.close();
        disk.crash();
        assert_eq!(serials(&disk, 1).unwrap().0, vec![1, 2]);
    }

    /// The zeros after the last record of a preallocated segment are the
    /// end of the log, not a torn write: nothing is cut, and appending goes
    /// on right after the last record.
    #[test]
    fn zeros_after_the_last_record_are_the_end_of_the_log() {
        let disk = FaultyStorage::new();
        let wal = start(&disk, WalSettings::default());
        for i in 1..=3 {
            wal.append(0, scan(i)).unwrap().wait_blocking().unwrap();
        }
        wal.close();
        let name = disk.list().unwrap()[0].clone();
        let end = disk.durable_len(&name);
        let mut d = disk.clone();
        d.append(&name, &[0u8; 4096]).unwrap();
        d.sync(&name).unwrap();
        let (seen, r) = serials(&disk, 1).unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!((r.truncated_bytes, r.tail.clone()), (0, Some((name.clone(), end as u64))));
        assert_eq!(disk.durable_len(&name), end + 4096, "nothing was cut");
        // A torn record in front of the zeros is still a torn record.
        let mut frame = Vec::new();
        encode_frame(&Record { lsn: 4, at: 0, event: scan(4) }, &mut frame);
        let disk2 = FaultyStorage::new();
        let mut d2 = disk2.clone();
        let mut bytes = disk.read(&name).unwrap()[..end].to_vec();
        bytes.extend_from_slice(&frame[..frame.len() / 2]);
        bytes.extend_from_slice(&[0u8; 1000]);
        d2.append(&name, &bytes).unwrap();
        d2.sync(&name).unwrap();
        let (seen, r) = serials(&disk2, 1).unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(r.truncated_bytes as usize, frame.len() / 2 + 1000);
        // And a segment that is zeros from its first byte is empty.
        let disk3 = FaultyStorage::new();
        let mut d3 = disk3.clone();
        d3.append(&segment_name(1), &[0u8; 4096]).unwrap();
        d3.sync(&segment_name(1)).unwrap();
        let (seen, r) = serials(&disk3, 1).unwrap();
        assert!(seen.is_empty());
        assert_eq!(r.next_lsn, 1);
    }

    /// On the real file system, segments are preallocated and prepared
    /// ahead: records are appended into zero-filled files, survive a
    /// restart, and appending resumes after the last record.
    #[test]
    fn preallocated_segments_on_disk_recover_and_resume() {
        use storage::FsStorage;
        let dir = tempfile::tempdir().unwrap();
        let settings = WalSettings { segment_bytes: 8192, batch_max_records: 4, ..Default::default() };
        let open = || FsStorage::with_preallocation(dir.path(), 8192).unwrap();
        let mut written = 0u64;
        for _run in 0..3 {
            let mut disk = open();
            let mut seen = Vec::new();
            let rec = recover(&mut disk, 1, |r| {
                if let Event::Scan(s) = &r.event {
                    seen.push(s.serial)
                }
            })
            .unwrap();
            assert_eq!(seen, (1..=written).collect::<Vec<_>>());
            assert_eq!(rec.truncated_bytes, 0);
            let wal = Wal::start(Box::new(disk), settings.clone(), &rec, ());
            for _ in 0..100 {
                written += 1;
                assert_eq!(wal.append(0, scan(written)).unwrap().wait_blocking(), Ok(written));
            }
            wal.close();
        }
        let segments: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap()).collect();
        let full = segments
            .iter()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter(|e| e.metadata().unwrap().len() >= 8192)
            .count();
        assert!(full >= 2, "segments were preallocated to their size");
        // The segment written last was prepared ahead: zeros follow its
        // last record, and recovery ends the log there without cutting.
        let mut disk = open();
        let rec = recover(&mut disk, 1, |_| {}).unwrap();
        let (name, end) = rec.tail.clone().unwrap();
        assert_eq!(rec.next_lsn, written + 1);
        assert!(std::fs::metadata(dir.path().join(&name)).unwrap().len() > end, "{name} is preallocated");
    }

    #[test]
    fn a_flipped_bit_in_the_middle_stops_recovery() {
        let disk = FaultyStorage::new();
        let wal = start(&disk, WalSettings { batch_max_records: 1, ..Default::default() });
        for i in 0..10 {
            wal.append(i, scan(i)).unwrap().wait_blocking().unwrap();
        }
        wal.close();
        let name = disk.list().unwrap()[0].clone();
        disk.flip_bit(&name, 30, 3);
        let err = serials(&disk, 1).unwrap_err();
        assert!(matches!(err, RecoveryError::Corrupt { offset: 8, .. }), "{err}");
        // The same damage in the very last record is indistinguishable from
        // a torn write: it is cut off.
        let disk2 = FaultyStorage::new();
        let wal = start(&disk2, WalSettings { batch_max_records: 1, ..Default::default() });
        for i in 0..3 {
            wal.append(i, scan(i)).unwrap().wait_blocking().unwrap();
        }
        wal.close();
        let len = disk2.durable_len(&name);
        disk2.flip_bit(&name, len - 3, 0);
        assert_eq!(serials(&disk2, 1).unwrap().0, vec![0, 1]);
    }

    /// The writer waits for company only while records come close together:
    /// a lone record (or a trickle) is written at once.
    #[test]
    fn waits_for_more_records_only_while_they_come_close_together() {
        let window = Duration::from_micros(100);
        let t0 = Instant::now();
        let mut a = Arrivals::default();
        a.saw(t0);
        assert!(!a.busy(window), "a first, lone record is written at once");
        // A trickle, one record a millisecond: never waits.
        for i in 1..50 {
            a.saw(t0 + Duration::from_millis(i));
        }
        assert!(!a.busy(window));
        // A burst, one record every 10 µs: others are known to be coming.
        let t1 = t0 + Duration::from_millis(50);
        for i in 0..50 {
            a.saw(t1 + Duration::from_micros(10 * i));
        }
        assert!(a.busy(window));
        // The burst ends: after a few spread-out records it stops waiting.
        let t2 = t1 + Duration::from_millis(10);
        for i in 0..30 {
            a.saw(t2 + Duration::from_millis(i));
        }
        assert!(!a.busy(window));
    }

    #[test]
    fn groups_commit_concurrent_records() {
        struct Sizes(Arc<Mutex<Vec<usize>>>);
        impl Observer for Sizes {
            fn durable(&mut self, _: &[Record]) {}
            fn batch(&mut self, n: usize, _: Duration) {
                self.0.lock().unwrap().push(n);
            }
        }
        let disk = FaultyStorage::new();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (_, rec) = serials(&disk, 1).unwrap();
        let wal = Wal::start(
            Box::new(disk.clone()),
            WalSettings { batch_max_wait: Duration::from_millis(20), ..Default::default() },
            &rec,
            Sizes(sizes.clone()),
        );
        let tickets: Vec<_> = (0..64).map(|i| wal.append(i, scan(i)).unwrap()).collect();
        for t in tickets {
            t.wait_blocking().unwrap();
        }
        wal.close();
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 64);
        assert!(sizes.len() < 64, "records were committed together: {sizes:?}");
    }
}
