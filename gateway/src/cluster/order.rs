//! The order stream's reader: authority batches and colour changes, applied
//! one after the other in stream order, on every replica (the one that
//! published them too).
//!
//! An authority batch is checked here as if it had been posted to this
//! replica: the Ed25519 signature by one of *this* replica's authority keys
//! and a sequence after the last one *it* applied. NATS is not trusted: a
//! forged or replayed batch in the stream is refused and counted, and
//! changes nothing. One exception, which changes nothing either: a batch
//! byte-identical to one this replica applied (the same signed body) is a
//! copy published again after the stream lost messages, and is skipped as a
//! duplicate rather than refused. Batches are applied on the blocking pool
//! (up to 100 000 changes); the reader waits for each before the next, which
//! is the order.
//!
//! A restarted nats-server may have lost messages it acknowledged and given
//! their sequences to newer ones. So before reading, at start and whenever
//! the server changed, the reader checks that the stream still holds, where
//! it applied them, the messages it remembers by id (the last
//! [`streams::RECENT_IDS`], saved with the positions too); where it does
//! not, it reads again from the last one it does, and publishes again, from
//! its [`Ledger`] and its log, the authority batches it had applied after
//! that point.

use super::{streams, Cluster};
use crate::durability::wal::record::{Event, Record};
use crate::durability::wal::{self, SEGMENT_MAGIC};
use crate::feed::{FeedError, RevocationBatch, UpdateBatch};
use crate::gateway::replica::{AppliedBatch, AuthorityBatch};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Pause before reading again after the connection or the consumer failed.
const RETRY: Duration = Duration::from_millis(250);

/// How many applied authority batches the ledger remembers.
pub const KEPT: usize = 4096;
/// How many of them are saved with the positions.
pub const SAVED: usize = 1024;

/// An applied authority batch, and its signed body while this process has
/// it in memory (otherwise it is read from the log when needed).
struct Entry {
    batch: AppliedBatch,
    body: Option<Signed>,
}

/// A batch as published: its kind, accepted time and signed body.
#[derive(Clone)]
struct Signed {
    kind: &'static str,
    at: String,
    body: bytes::Bytes,
}

/// The authority batches this replica applied, in the order it applied
/// them (which is the authorities' sequence order).
pub struct Ledger {
    entries: VecDeque<Entry>,
    /// Every batch applied since the replica first read the order stream
    /// from its start is here (none was forgotten).
    from_start: bool,
}

impl Ledger {
    pub fn from_saved(batches: Vec<AppliedBatch>, from_start: bool) -> Ledger {
        let mut l =
            Ledger { entries: batches.into_iter().map(|batch| Entry { batch, body: None }).collect(), from_start };
        l.trim();
        l
    }

    fn trim(&mut self) {
        while self.entries.len() > KEPT {
            self.entries.pop_front();
            self.from_start = false;
        }
    }

    fn push(&mut self, batch: AppliedBatch, body: Signed) {
        // Applied again (after a restart set the sequence back): one entry.
        self.entries.retain(|e| e.batch.sha256 != batch.sha256);
        self.entries.push_back(Entry { batch, body: Some(body) });
        self.trim();
    }

    /// The batch with this body, if applied: now read at `stream`.
    fn seen(&mut self, sha256: &str, stream: u64) -> Option<u64> {
        let e = self.entries.iter_mut().rev().find(|e| e.batch.sha256 == sha256)?;
        e.batch.stream = stream;
        Some(e.batch.lsn)
    }

    /// What is saved with the positions: the last [`SAVED`] batches.
    pub fn to_save(&self) -> (Vec<AppliedBatch>, bool) {
        let skip = self.entries.len().saturating_sub(SAVED);
        let from_start = self.from_start && skip == 0;
        (self.entries.iter().skip(skip).map(|e| e.batch.clone()).collect(), from_start)
    }

    /// The batches read after stream sequence `from`, oldest first, or
    /// `None` when the ledger does not reach back to `from` (a batch before
    /// the first of them may be missing here: publishing the rest would put
    /// them before it in the stream).
    fn after(&self, from: u64) -> Option<Vec<(AppliedBatch, Option<Signed>)>> {
        let first = self.entries.iter().position(|e| e.batch.stream > from)?;
        if first == 0 && !self.from_start {
            return None;
        }
        Some(self.entries.iter().skip(first).map(|e| (e.batch.clone(), e.body.clone())).collect())
    }
}

/// Publishes again the authority batches this replica applied after stream
/// sequence `from` (the stream lost them), in the order it applied them,
/// each with the message id its first publication had: of all the replicas
/// doing so only one copy lands within the duplicate window, and a copy
/// landing twice is skipped as a duplicate by every replica that applied
/// it. Every replica that lost the same messages publishes the same
/// batches in the same order (those it applied after the same point), so
/// the first copy of each lands after the one before it, and replicas that
/// had not applied them apply them all in order.
async fn republish_lost(c: &Cluster, from: u64) -> Result<(), String> {
    let lost = c.ledger.lock().unwrap_or_else(|e| e.into_inner()).after(from);
    let Some(lost) = lost else {
        let none = c.ledger.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().all(|e| e.batch.stream <= from);
        if !none {
            ::tracing::warn!(
                from,
                "the order stream lost authority batches this replica applied, but its ledger does not reach back \
                 that far: not published again"
            );
        }
        return Ok(());
    };
    // Bodies this process no longer has in memory come from the log.
    let missing: Vec<u64> = lost.iter().filter(|(_, b)| b.is_none()).map(|(a, _)| a.lsn).filter(|l| *l > 0).collect();
    let from_log = if missing.is_empty() {
        HashMap::new()
    } else {
        let dir = c.data_dir.join("wal");
        tokio::task::spawn_blocking(move || signed_from_log(dir, &missing))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the log: {e}"))?
    };
    let mut sent = 0;
    for (batch, body) in lost {
        let Some(s) = body.or_else(|| from_log.get(&batch.lsn).cloned()) else {
            ::tracing::warn!(
                seq = batch.seq,
                lsn = batch.lsn,
                "an authority batch the stream lost is no longer in this replica's log: not published again"
            );
            continue;
        };
        streams::publish_signed(c, s.kind, &s.at, s.body).await.inspect_err(|_| c.metrics.publish_failures.inc())?;
        sent += 1;
    }
    ::tracing::warn!(from, batches = sent, "published again the authority batches the order stream lost");
    Ok(())
}

/// The signed bodies of the authority batches logged at `lsns`, by LSN.
fn signed_from_log(dir: std::path::PathBuf, lsns: &[u64]) -> std::io::Result<HashMap<u64, Signed>> {
    let (Some(&first), Some(&last)) = (lsns.iter().min(), lsns.iter().max()) else { return Ok(HashMap::new()) };
    let dir = dir.canonicalize()?;
    let mut reader = super::shipper::LogReader::new(dir, first);
    let mut out = HashMap::new();
    while reader.next() <= last {
        let records = reader.read(last, 4096)?;
        if records.is_empty() {
            break;
        }
        for r in records {
            if !lsns.contains(&r.lsn) {
                continue;
            }
            let signed = match r.event {
                Event::Updates { signed: Some(body), .. } => Signed { kind: "updates", at: r.at.to_string(), body },
                Event::Revocations { signed: Some(body), .. } => {
                    Signed { kind: "revocations", at: r.at.to_string(), body }
                }
                _ => continue,
            };
            out.insert(r.lsn, signed);
        }
    }
    Ok(out)
}

pub async fn run(c: Arc<Cluster>) {
    let durable = format!("hg-{}-order", c.settings.node);
    // The point after which batches are still to be published again.
    let mut republish_from: Option<u64> = None;
    // The server whose stream was last checked against every id.
    let mut checked: Option<String> = None;
    loop {
        let generation = c.connections.load(std::sync::atomic::Ordering::Acquire);
        let server = c.server_id();
        let (pos, _) = c.order_position();
        let (ids, quick) = c.ids_to_check(0, checked.as_deref(), &server);
        match streams::agrees_up_to(&c.js, &c.settings.order_stream, &ids, pos).await {
            Ok(agreed) if agreed < pos && quick => {
                // Something changed under a server that did not restart
                // (an operator purged the stream?): look at every id.
                ::tracing::warn!(applied = pos, agrees_up_to = agreed, "stream changed under this reader; checking");
                checked = None;
                continue;
            }
            Ok(agreed) if agreed < pos => {
                ::tracing::warn!(
                    applied = pos,
                    agrees_up_to = agreed,
                    "the order stream no longer holds what this replica applied: it lost messages; reading again"
                );
                c.metrics.refused.with_label_values(&["stream_rewound"]).inc();
                c.republishing.store(true, std::sync::atomic::Ordering::Release);
                c.order_rewound(agreed);
                republish_from = Some(republish_from.map_or(agreed, |r| r.min(agreed)));
                continue;
            }
            Ok(_) => checked = Some(server.clone()),
            Err(e) => {
                ::tracing::debug!(error = %e, "order stream unavailable");
                if e.contains("stream not found") {
                    // A restarted server that lost a stream whole: create
                    // it again (both, as at start); the check above then
                    // finds it empty and everything is published again.
                    match streams::ensure(&c.js, &c.settings).await {
                        Ok(_) => ::tracing::warn!("a stream was missing after the server restarted: created again"),
                        Err(e) => ::tracing::warn!(error = %e, "a stream is missing and cannot be created again"),
                    }
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        if let Some(from) = republish_from {
            if let Err(e) = republish_lost(&c, from).await {
                ::tracing::debug!(error = %e, "publishing lost batches again failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            republish_from = None;
            c.republishing.store(false, std::sync::atomic::Ordering::Release);
        }
        let consumer = match streams::consumer(&c.js, &c.settings.order_stream, &durable, pos + 1).await {
            Ok(x) => x,
            Err(e) => {
                ::tracing::debug!(error = %e, "order consumer unavailable");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                ::tracing::debug!(error = %e, "order messages unavailable");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            // A pull that died with its connection (a partition) may never
            // end: when nothing comes while the stream holds more than this
            // replica applied, read again from the position.
            let next = match tokio::time::timeout(super::probe::IDLE, messages.next()).await {
                Ok(next) => next,
                Err(_) if c.reader_behind(0) || c.reconnected_since(generation) || c.server_id() != server => {
                    ::tracing::info!("order reader idle while the stream holds more: reading again");
                    break;
                }
                Err(_) => continue,
            };
            let Some(Ok(m)) = next else { break };
            if c.reconnected_since(generation) || c.server_id() != server {
                // The server may have restarted without its tail: check
                // what it holds before applying anything more.
                break;
            }
            let Ok(info) = m.info() else { continue };
            let (seq, pending, published) = (info.stream_sequence, info.pending, info.published);
            if seq <= c.order_position().0 {
                // Delivered again (an acknowledgement was lost), or the
                // stream reused sequences: look again from the top.
                break;
            }
            let outcome = apply(&c, seq, &m.subject, m.headers.as_ref(), &m.payload).await;
            c.order_applied(seq, streams::message_id(m.headers.as_ref()), outcome);
            let waited = (time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0);
            // Nothing pending: caught up, whatever the last message waited.
            c.set_freshness(0, pending, if pending == 0 { 0.0 } else { waited });
            let _ = m.ack().await;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Applies one order-stream message; the outcome of an authority batch is
/// kept for the post that may be waiting on it.
async fn apply(
    c: &Arc<Cluster>,
    stream_seq: u64,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &bytes::Bytes,
) -> Option<Result<(u64, u64), FeedError>> {
    let refuse = |why: &str| {
        c.metrics.refused.with_label_values(&[why]).inc();
    };
    if subject == c.settings.authority_subject() {
        let at = streams::header(headers, streams::H_AT).and_then(|a| a.parse::<u64>().ok());
        let batch = match streams::header(headers, streams::H_KIND) {
            Some("updates") => serde_json::from_slice::<UpdateBatch>(payload).map(AuthorityBatch::Updates),
            Some("revocations") => serde_json::from_slice::<RevocationBatch>(payload).map(AuthorityBatch::Revocations),
            _ => {
                refuse("malformed");
                return Some(Err(FeedError::Malformed("unknown batch kind".into())));
            }
        };
        let (Ok(batch), Some(at)) = (batch, at) else {
            refuse("malformed");
            return Some(Err(FeedError::Malformed("undecodable batch".into())));
        };
        let (seq, kind) = match &batch {
            AuthorityBatch::Updates(b) => (b.seq, "updates"),
            AuthorityBatch::Revocations(b) => (b.seq, "revocations"),
        };
        let sha256 = streams::body_sha256(payload);
        if seq <= c.gw.last_feed_seq() {
            // Not after the last applied: a copy of one applied here (the
            // same signed bytes) is skipped; anything else is refused below.
            let seen = c.ledger.lock().unwrap_or_else(|e| e.into_inner()).seen(&sha256, stream_seq);
            if let Some(lsn) = seen {
                c.metrics.duplicates.inc();
                ::tracing::info!(seq, stream_seq, "authority batch applied here already: skipped as a duplicate");
                return Some(Ok((c.gw.store().epoch(), lsn)));
            }
        }
        let gw = c.gw.clone();
        let signed = payload.clone();
        let outcome = tokio::task::spawn_blocking(move || gw.apply_replicated(&batch, signed, at))
            .await
            .unwrap_or_else(|e| Err(FeedError::Unavailable(e.to_string())));
        if let Ok((_, lsn)) = &outcome {
            let applied = AppliedBatch { seq, stream: stream_seq, lsn: *lsn, sha256 };
            let body = Signed { kind, at: at.to_string(), body: payload.clone() };
            c.ledger.lock().unwrap_or_else(|e| e.into_inner()).push(applied, body);
        }
        match &outcome {
            Ok(_) => {}
            Err(FeedError::Unauthenticated(_)) => refuse("unauthenticated"),
            Err(FeedError::Replay { .. }) => refuse("replay"),
            Err(FeedError::Malformed(_)) => refuse("malformed"),
            Err(FeedError::Unavailable(_)) => refuse("unavailable"),
        }
        if let Err(e) = &outcome {
            ::tracing::info!(error = %e, "authority batch from the order stream refused");
        }
        return Some(outcome);
    }
    let color_prefix = format!("{}.order.color.", c.settings.subject_prefix);
    if subject.starts_with(&color_prefix) {
        match one_record(payload).map(|r| (r.at, color_of(&r.event))) {
            Some((at, Some((holder, color, steps)))) => c.gw.apply_replicated_color(&holder, color, steps, at),
            _ => refuse("malformed"),
        }
        return None;
    }
    refuse("unknown_subject");
    None
}

/// The single log record a colour message carries.
fn one_record(payload: &[u8]) -> Option<Record> {
    let mut out = None;
    let mut n = 0;
    wal::follow_frames(&SEGMENT_MAGIC, SEGMENT_MAGIC.len(), payload, |r, _| {
        n += 1;
        out = Some(r);
    });
    (n == 1).then_some(out).flatten()
}

/// The colour change a log record carries, if any.
pub fn color_of(e: &Event) -> Option<(crate::HolderId, crate::Color, Vec<crate::state::Step>)> {
    match e {
        Event::Scan(s) => {
            let (c, steps) = s.effect.color.clone()?;
            Some((s.holder?, c, steps))
        }
        Event::Checkin { holder, effect, .. } => {
            let (c, steps) = effect.color.clone()?;
            Some((*holder, c, steps))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(seq: u64, stream: u64) -> AppliedBatch {
        AppliedBatch { seq, stream, lsn: seq * 10, sha256: format!("{seq:064x}") }
    }

    fn body() -> Signed {
        Signed { kind: "updates", at: "1".into(), body: bytes::Bytes::from_static(b"{}") }
    }

    #[test]
    fn the_ledger_gives_what_was_read_after_a_point_only_if_it_reaches_back_to_it() {
        let mut l = Ledger::from_saved(vec![applied(1, 3), applied(2, 5)], false);
        l.push(applied(3, 8), body());
        l.push(applied(4, 9), body());
        let after = |l: &Ledger, from| l.after(from).map(|v| v.iter().map(|(a, _)| a.seq).collect::<Vec<_>>());
        assert_eq!(after(&l, 5), Some(vec![3, 4]));
        assert_eq!(after(&l, 3), Some(vec![2, 3, 4]));
        assert_eq!(after(&l, 9), None, "nothing after the end");
        // Batch 1 may not be the first this replica applied: a batch before
        // it could be missing here.
        assert_eq!(after(&l, 0), None);
        let whole = Ledger::from_saved(vec![applied(1, 3), applied(2, 5)], true);
        assert_eq!(after(&whole, 0), Some(vec![1, 2]));
        // Bodies: in memory for what this process applied, not for the saved.
        assert!(l.after(3).unwrap().iter().map(|(a, b)| (a.seq, b.is_some())).eq([(2, false), (3, true), (4, true)]));
    }

    #[test]
    fn a_copy_read_again_moves_its_entry_and_a_batch_applied_again_keeps_one() {
        let mut l = Ledger::from_saved(vec![applied(1, 3), applied(2, 5)], true);
        assert_eq!(l.seen(&format!("{:064x}", 2), 12), Some(20));
        assert_eq!(l.seen("unknown", 13), None);
        assert_eq!(l.after(5).map(|v| v.len()), Some(1), "batch 2 is now read at 12");
        l.push(applied(2, 14), body());
        assert_eq!(l.entries.len(), 2);
        let (saved, from_start) = l.to_save();
        assert_eq!(saved.iter().map(|a| (a.seq, a.stream)).collect::<Vec<_>>(), [(1, 3), (2, 14)]);
        assert!(from_start);
    }

    #[test]
    fn a_ledger_that_forgot_its_oldest_batches_is_no_longer_whole() {
        let mut l = Ledger::from_saved(Vec::new(), true);
        for seq in 1..=(KEPT as u64 + 1) {
            l.push(applied(seq, seq), body());
        }
        assert_eq!(l.entries.len(), KEPT);
        assert!(!l.from_start);
        let (saved, from_start) = l.to_save();
        assert_eq!((saved.len(), from_start), (SAVED, false));
        assert_eq!(saved.last().map(|a| a.seq), Some(KEPT as u64 + 1));
    }
}
