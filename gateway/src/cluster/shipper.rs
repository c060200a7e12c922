//! The shipper: follows this replica's durable log and publishes what the
//! other replicas need, at least once, in LSN order.
//!
//! * Records that register a passage or change a holder (scans of a known
//!   holder, check-ins) go to the records stream, subject
//!   `<prefix>.records.<node>`, in runs of up to [`RUN_RECORDS`] records
//!   (`Nats-Msg-Id: <node>:<first lsn>-<last lsn>`).
//! * Records that change a colour also go, one a message, to the order
//!   stream, subject `<prefix>.order.color.<node>`
//!   (`Nats-Msg-Id: <node>:<lsn>:color`).
//!
//! The local log is the buffer: nothing is held in memory that the log does
//! not hold, so NATS may be away for as long as the log keeps its segments.
//! Where to resume is asked of the stream itself (the last message of this
//! node's subject), at start and after any failure; and every publish says
//! which message of the subject it expects to follow
//! (`Nats-Expected-Last-Subject-Sequence`), so a stream that lost its tail
//! (nats-server killed before its own fsync) refuses the next publish and
//! the shipper goes back to what the stream really holds.

use super::order::color_of;
use super::{streams, Cluster};
use crate::durability::wal::record::{Event, Record};
use crate::durability::wal::{self, encode_frame};
use async_nats::HeaderMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most records in one records-stream message.
pub const RUN_RECORDS: usize = 256;
/// Most records read from the log in one go.
const READ_RECORDS: usize = 4096;
const RETRY: Duration = Duration::from_millis(250);

/// Whether a record goes to the records stream.
fn ships(r: &Record) -> bool {
    match &r.event {
        Event::Scan(s) => s.holder.is_some(),
        Event::Checkin { .. } => true,
        Event::Updates { .. } | Event::Revocations { .. } => false,
    }
}

/// Where the stream says this node's subject ends: (next LSN to publish,
/// stream sequence of the subject's last message, 0 if none).
async fn resume_point(c: &Cluster, stream: &str, subject: &str) -> Result<Option<(u64, u64)>, String> {
    let st = c.js.get_stream(stream).await.map_err(|e| e.to_string())?;
    match st.get_last_raw_message_by_subject(subject).await {
        Ok(m) => {
            let last = streams::header(Some(&m.headers), streams::H_LAST_LSN)
                .and_then(|l| l.parse::<u64>().ok())
                .ok_or_else(|| format!("the last message of {subject} has no {} header", streams::H_LAST_LSN))?;
            Ok(Some((last + 1, m.sequence)))
        }
        Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A reader that follows the log's segment files (the shipper; the order
/// reader when it publishes again batches the stream lost).
pub(super) struct LogReader {
    dir: PathBuf,
    /// The segment being read: its name, its first bytes, the next offset.
    seg: Option<(String, Vec<u8>, u64)>,
    next: u64,
}

impl LogReader {
    /// Reads `dir` from LSN `next` on.
    pub(super) fn new(dir: PathBuf, next: u64) -> LogReader {
        LogReader { dir, seg: None, next }
    }

    /// The next LSN it will return.
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Reads the records with LSN in `next..=upto` (at most `max`); moves on
    /// to the next segment when this one holds no more.
    pub(super) fn read(&mut self, upto: u64, max: usize) -> std::io::Result<Vec<Record>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut out = Vec::new();
        let mut moved = false;
        while self.next <= upto && out.len() < max {
            if self.seg.is_none() {
                let mut names: Vec<(u64, String)> = std::fs::read_dir(&self.dir)?
                    .flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        Some((n.strip_suffix(".log")?.parse().ok()?, n))
                    })
                    .collect();
                names.sort();
                let Some(pick) = names.iter().rev().find(|(f, _)| *f <= self.next).or(names.first()) else {
                    return Ok(out);
                };
                if pick.0 > self.next {
                    ::tracing::warn!(
                        from = self.next,
                        to = pick.0,
                        "log segments before this were purged; they are not shipped"
                    );
                    self.next = pick.0;
                }
                let mut head = vec![0u8; wal::SEGMENT_MAGIC.len()];
                let mut f = std::fs::File::open(self.dir.join(&pick.1))?;
                let n = f.read(&mut head)?;
                head.truncate(n);
                self.seg = Some((pick.1.clone(), head, 0));
            }
            let (name, head, offset) = self.seg.as_mut().expect("set above");
            let mut f = std::fs::File::open(self.dir.join(&*name))?;
            f.seek(SeekFrom::Start(*offset))?;
            // Up to 16 MiB, in blocks, stopping at a block of zeros: the
            // unwritten rest of a preallocated segment (no record holds
            // 256 KiB of zeros: every change names a random holder id).
            let mut bytes = Vec::new();
            let mut f = f.take(16 << 20);
            loop {
                let start = bytes.len();
                let n = (&mut f).take(256 << 10).read_to_end(&mut bytes)?;
                if n == 0 || bytes[start..].iter().all(|b| *b == 0) {
                    break;
                }
            }
            let before = out.len();
            let (next, upto_) = (&mut self.next, upto);
            let mut new_offset = *offset;
            wal::follow_frames(head, *offset as usize, &bytes, |r, end| {
                if r.lsn > upto_ || out.len() >= max {
                    return;
                }
                if r.lsn >= *next {
                    *next = r.lsn + 1;
                    out.push(r);
                }
                new_offset = end as u64;
            });
            *offset = new_offset;
            if out.len() == before {
                // Nothing more here although more is durable: the writer
                // has moved to the segment that starts at `next`.
                let following = wal::segment_name(self.next);
                if moved || !self.dir.join(&following).exists() {
                    return Ok(out);
                }
                self.seg = None;
                moved = true;
            }
        }
        Ok(out)
    }
}

pub async fn run(c: Arc<Cluster>) {
    let node = c.settings.node.clone();
    let (rec_subject, color_subject) = (c.settings.records_subject(&node), c.settings.color_subject(&node));
    let mut durable = c.gw.durable_watch();
    let Some(log_dir) = c.data_dir.join("wal").canonicalize().ok() else {
        ::tracing::error!("the log directory is missing; nothing is shipped");
        return;
    };
    'resync: loop {
        let generation = c.connections.load(Ordering::Acquire);
        let (rec, col) = match (
            resume_point(&c, &c.settings.records_stream, &rec_subject).await,
            resume_point(&c, &c.settings.order_stream, &color_subject).await,
        ) {
            (Ok(r), Ok(o)) => (r, o),
            (Err(e), _) | (_, Err(e)) => {
                ::tracing::debug!(error = %e, "shipper cannot read the streams yet");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // Nothing of ours in a stream yet: from the start of the log.
        let (mut rec_next, mut rec_last_seq) = rec.unwrap_or((1, 0));
        let (mut col_next, mut col_last_seq) = col.unwrap_or((1, 0));
        let mut reader = LogReader { dir: log_dir.clone(), seg: None, next: rec_next.min(col_next) };
        loop {
            let shipped = rec_next.min(col_next) - 1;
            c.shipped.store(shipped, Ordering::Release);
            let upto = *durable.borrow_and_update();
            c.metrics.shipper_backlog.set(upto.saturating_sub(shipped) as i64);
            if c.connections.load(Ordering::Acquire) != generation {
                // Reconnected: the server may have come back without the
                // messages it had not yet written to disk.
                continue 'resync;
            }
            if reader.next > upto {
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    // Idle: look at the connection again now and then.
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let (r, batch) = tokio::task::spawn_blocking(move || {
                let b = reader.read(upto, READ_RECORDS);
                (reader, b)
            })
            .await
            .expect("log reader task");
            reader = r;
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    ::tracing::warn!(error = %e, "shipper cannot read the log");
                    tokio::time::sleep(RETRY).await;
                    continue 'resync;
                }
            };
            if batch.is_empty() {
                // Durable but not readable yet (a new segment on its way).
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let last_lsn = batch.last().map_or(0, |r| r.lsn);
            // Colour changes first: they are what other gates decide on.
            for r in &batch {
                if r.lsn < col_next || color_of(&r.event).is_none() {
                    continue;
                }
                let mut payload = Vec::new();
                encode_frame(r, &mut payload);
                let id = format!("{node}:{}:color", r.lsn);
                match publish(&c, &color_subject, &id, r.lsn, r.lsn, 1, col_last_seq, payload).await {
                    Ok(seq) => col_last_seq = seq,
                    Err(e) => {
                        fail(&c, &e);
                        continue 'resync;
                    }
                }
                col_next = r.lsn + 1;
            }
            col_next = col_next.max(last_lsn + 1);
            let to_ship: Vec<&Record> = batch.iter().filter(|r| r.lsn >= rec_next && ships(r)).collect();
            for run in to_ship.chunks(RUN_RECORDS) {
                let mut payload = Vec::new();
                for r in run {
                    encode_frame(r, &mut payload);
                }
                let (first, last) = (run[0].lsn, run[run.len() - 1].lsn);
                let id = format!("{node}:{first}-{last}");
                match publish(&c, &rec_subject, &id, first, last, run.len(), rec_last_seq, payload).await {
                    Ok(seq) => rec_last_seq = seq,
                    Err(e) => {
                        fail(&c, &e);
                        continue 'resync;
                    }
                }
                rec_next = last + 1;
            }
            rec_next = rec_next.max(last_lsn + 1);
        }
    }
}

fn fail(c: &Cluster, e: &str) {
    c.metrics.publish_failures.inc();
    ::tracing::debug!(error = %e, "shipping failed; resuming from what the stream holds");
}

/// Publishes one message and waits for JetStream's acknowledgement;
/// returns its stream sequence.
#[allow(clippy::too_many_arguments)]
async fn publish(
    c: &Cluster,
    subject: &str,
    id: &str,
    first: u64,
    last: u64,
    count: usize,
    expect_last_subject_seq: u64,
    payload: Vec<u8>,
) -> Result<u64, String> {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    h.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expect_last_subject_seq.to_string().as_str());
    h.insert(streams::H_NODE, c.settings.node.as_str());
    h.insert(streams::H_FIRST_LSN, first.to_string().as_str());
    h.insert(streams::H_LAST_LSN, last.to_string().as_str());
    h.insert("Hg-Count", count.to_string().as_str());
    let ack = c.js.publish_with_headers(subject.to_owned(), h, payload.into()).await.map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .map_err(|_| "no acknowledgement from JetStream".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}
